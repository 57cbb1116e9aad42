//! `Disk`: the few file system calls the write-ahead log makes, so that one log runs on a
//! real directory ([`FsDisk`]) and on the simulator's crashable disk
//! ([`MemDisk`](super::MemDisk)) alike.
//!
//! The contract is POSIX's, without its comforts: a write is durable only after
//! [`DiskFile::sync`] of its file; a created, renamed or removed name only after
//! [`Disk::sync_dir`].

use std::fs::File;
use std::fs::OpenOptions;
use std::future::Future;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

/// A directory of files.
pub trait Disk: Send + Sync + 'static {
    /// An open file.
    type File: DiskFile;

    /// The names in the directory, sorted.
    fn list(&self) -> io::Result<Vec<String>>;

    /// Creates `name`, empty, failing if it exists.
    fn create(&self, name: &str) -> io::Result<Self::File>;

    /// Opens an existing `name` for reading and writing.
    fn open(&self, name: &str) -> io::Result<Self::File>;

    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;

    /// Removes `name`.
    fn remove(&self, name: &str) -> io::Result<()>;

    /// Makes the directory's names durable (`fsync` of the directory).
    fn sync_dir(&self) -> impl Future<Output = io::Result<()>> + Send;
}

/// An open file; clones are handles to the same file.
pub trait DiskFile: Clone + Send + Sync + 'static {
    /// Its length in bytes.
    fn size(&self) -> io::Result<u64>;

    /// Fills `buf` from `off`; fails if the file is shorter.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Writes all of `data` at `off`.
    fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()>;

    /// Extends the file to at least `len` bytes of zeros, with the blocks reserved.
    fn allocate(&self, len: u64) -> io::Result<()>;

    /// Makes the file's data and length durable (`fdatasync`).
    fn sync(&self) -> impl Future<Output = io::Result<()>> + Send;
}

/// A real directory. Holds an exclusive lock on `LOCK` in it while open, so a second store
/// (another process, or a handle not yet dropped) cannot write the same log.
#[derive(Debug)]
pub struct FsDisk {
    dir: PathBuf,
    dir_handle: Arc<File>,
    _lock: File,
}

/// A file of an [`FsDisk`].
#[derive(Debug, Clone)]
pub struct FsFile(Arc<File>);

impl FsDisk {
    /// Opens the directory `dir` (creating it 0700 if missing, narrowing it to 0700 if
    /// not: the log and snapshots carry the cluster's rotated secrets) and locks it.
    pub fn open(dir: &Path) -> io::Result<FsDisk> {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            if let Some(parent) = dir.parent() {
                File::open(parent)?.sync_all()?;
            }
        } else {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join("LOCK"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{} is locked by another store", dir.display()),
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        Ok(FsDisk {
            dir: dir.to_path_buf(),
            dir_handle: Arc::new(File::open(dir)?),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// Runs a blocking sync off the async threads.
async fn blocking_sync(f: Arc<File>, data_only: bool) -> io::Result<()> {
    tokio::task::spawn_blocking(move || {
        if data_only {
            f.sync_data()
        } else {
            f.sync_all()
        }
    })
    .await
    .map_err(|e| io::Error::other(format!("sync task: {e}")))?
}

impl Disk for FsDisk {
    type File = FsFile;

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            if let Ok(name) = e?.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn create(&self, name: &str) -> io::Result<FsFile> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.dir.join(name))?;
        Ok(FsFile(Arc::new(f)))
    }

    fn open(&self, name: &str) -> io::Result<FsFile> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join(name))?;
        Ok(FsFile(Arc::new(f)))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }

    async fn sync_dir(&self) -> io::Result<()> {
        blocking_sync(self.dir_handle.clone(), false).await
    }
}

impl DiskFile for FsFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(buf, off)
    }

    fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_all_at(data, off)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let len_off = libc::off_t::try_from(len)
            .map_err(|_| io::Error::other(format!("allocation of {len} bytes")))?;
        // SAFETY: posix_fallocate on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::posix_fallocate(self.0.as_raw_fd(), 0, len_off) };
        match rc {
            0 => Ok(()),
            // File systems without fallocate (some tmpfs, NFS): a sparse file still reads zeros.
            libc::EOPNOTSUPP | libc::EINVAL => self.0.set_len(len.max(self.size()?)),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    async fn sync(&self) -> io::Result<()> {
        blocking_sync(self.0.clone(), true).await
    }
}
