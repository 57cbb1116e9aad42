//! `MemDisk`: a [`Disk`] in memory that knows what a power cut keeps, for the simulator and
//! the adversarial tests.
//!
//! Every file keeps its durable bytes and the writes since its last sync; the directory
//! keeps its durable names. [`MemDisk::crash`] then decides, from a seed, what the cut
//! leaves: each unsynced write survives or not independently (pages reach the platter in
//! any order), the last one may survive torn (a prefix), a bit of what survived unsynced may
//! be flipped, and names created, renamed or removed since the last directory sync revert.
//! Synced bytes are never touched by a crash; [`MemDisk::flip_bit`] corrupts them on
//! purpose. Handles opened before a crash fail afterwards.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;

use super::disk::Disk;
use super::disk::DiskFile;

/// What a simulated disk does wrong, and how slow it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemDiskFaults {
    /// Each file or directory sync takes this long (tokio time).
    pub sync_delay: Duration,
    /// A deliberate bug: syncs return at once and make nothing durable.
    pub lying_sync: bool,
    /// Probability that an unsynced write survives a crash (each on its own).
    pub keep_unsynced: f64,
    /// Whether the last unsynced write of a file may survive torn.
    pub tear: bool,
    /// Probability that a crash flips one bit in the unsynced bytes that survived.
    pub flip: f64,
}

/// What one crash did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Unsynced writes lost whole.
    pub lost: usize,
    /// Unsynced writes that survived (whole or torn).
    pub kept: usize,
    /// Whether a write survived torn.
    pub torn: bool,
    /// Whether a bit was flipped.
    pub flipped: bool,
    /// Names whose creation, rename or removal was undone.
    pub names_reverted: usize,
}

/// An unsynced change of a file.
#[derive(Debug, Clone)]
enum Change {
    Write {
        off: u64,
        data: Vec<u8>,
    },
    /// Extension to this size (zeros), as `allocate` does.
    Size(u64),
}

/// A file: its bytes as reads see them and as a crash would leave them. Sizes are kept
/// apart from the bytes, so a preallocated segment costs nothing until written.
#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    size: u64,
    durable: Vec<u8>,
    durable_size: u64,
    /// Changes since the last sync, in order.
    unsynced: Vec<Change>,
}

impl Inode {
    fn apply(data: &mut Vec<u8>, size: &mut u64, c: &Change) {
        match c {
            Change::Write { off, data: d } => {
                put(data, *off, d);
                *size = (*size).max(off + d.len() as u64);
            }
            Change::Size(n) => *size = (*size).max(*n),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    epoch: u64,
    faults: MemDiskFaults,
    syncs: u64,
}

/// A crashable directory in memory; clones share it.
#[derive(Debug, Clone, Default)]
pub struct MemDisk {
    state: Arc<Mutex<State>>,
}

/// A file of a [`MemDisk`], valid until the next crash.
#[derive(Debug, Clone)]
pub struct MemFile {
    disk: MemDisk,
    inode: u64,
    epoch: u64,
}

/// SplitMix64: the crash's own small generator (no thread RNG: runs must replay); the
/// model test draws its operations from it too.
pub(super) struct Mix(pub(super) u64);

impl Mix {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next() % n
    }
}

fn put(buf: &mut Vec<u8>, off: u64, data: &[u8]) {
    let off = off as usize;
    if buf.len() < off + data.len() {
        buf.resize(off + data.len(), 0);
    }
    buf[off..off + data.len()].copy_from_slice(data);
}

fn crashed() -> io::Error {
    io::Error::other("the disk lost power")
}

impl MemDisk {
    /// An empty disk without faults.
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    /// Sets the faults for later operations and crashes.
    pub fn set_faults(&self, faults: MemDiskFaults) {
        self.lock().faults = faults;
    }

    /// Whether `other` is a handle to this same disk.
    pub fn is_same(&self, other: &MemDisk) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    /// How many syncs (file or directory) completed.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("mem disk lock poisoned")
    }

    /// A power cut, its outcome drawn from `seed` and the faults.
    pub fn crash(&self, seed: u64) -> CrashReport {
        let mut st = self.lock();
        let mut rng = Mix(seed);
        let mut report = CrashReport::default();
        let faults = st.faults.clone();
        for inode in st.inodes.values_mut() {
            crash_inode(inode, &faults, &mut rng, &mut report);
        }
        report.names_reverted = st
            .names
            .iter()
            .filter(|(n, i)| st.durable_names.get(*n) != Some(*i))
            .count()
            + st.durable_names
                .keys()
                .filter(|n| !st.names.contains_key(*n))
                .count();
        st.names = st.durable_names.clone();
        let live: Vec<u64> = st.names.values().copied().collect();
        st.inodes.retain(|i, _| live.contains(i));
        st.epoch += 1;
        report
    }

    /// Flips bit `bit` of byte `off` of `name`, durable bytes included (a disk that rots).
    pub fn flip_bit(&self, name: &str, off: u64, bit: u8) -> io::Result<()> {
        let mut st = self.lock();
        let inode = *st.names.get(name).ok_or_else(|| not_found(name))?;
        let node = st.inodes.get_mut(&inode).expect("named inode exists");
        for buf in [&mut node.data, &mut node.durable] {
            if buf.len() <= off as usize {
                buf.resize(off as usize + 1, 0);
            }
            buf[off as usize] ^= 1 << (bit % 8);
        }
        Ok(())
    }

    /// Cuts `name` to `len` bytes, durably (a torn write the test places itself).
    pub fn cut(&self, name: &str, len: u64) -> io::Result<()> {
        let mut st = self.lock();
        let inode = *st.names.get(name).ok_or_else(|| not_found(name))?;
        let node = st.inodes.get_mut(&inode).expect("named inode exists");
        node.data.truncate(len as usize);
        node.durable.truncate(len as usize);
        node.size = node.size.min(len);
        node.durable_size = node.durable_size.min(len);
        node.unsynced.clear();
        Ok(())
    }

    /// The current bytes of `name`.
    pub fn contents(&self, name: &str) -> io::Result<Vec<u8>> {
        let st = self.lock();
        let inode = st.names.get(name).ok_or_else(|| not_found(name))?;
        let node = &st.inodes[inode];
        let mut out = node.data.clone();
        out.resize(node.size as usize, 0);
        Ok(out)
    }

    fn file(&self, st: &State, inode: u64) -> MemFile {
        MemFile {
            disk: self.clone(),
            inode,
            epoch: st.epoch,
        }
    }

    async fn delay(&self) -> io::Result<(u64, bool)> {
        let (epoch, faults) = {
            let st = self.lock();
            (st.epoch, st.faults.clone())
        };
        if !faults.sync_delay.is_zero() && !faults.lying_sync {
            tokio::time::sleep(faults.sync_delay).await;
        }
        Ok((epoch, faults.lying_sync))
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
}

fn crash_inode(inode: &mut Inode, faults: &MemDiskFaults, rng: &mut Mix, r: &mut CrashReport) {
    let mut data = inode.durable.clone();
    let mut size = inode.durable_size;
    let n = inode.unsynced.len();
    let mut survived: Vec<(u64, u64)> = Vec::new();
    for (k, c) in inode.unsynced.iter().enumerate() {
        if rng.chance(faults.keep_unsynced) {
            Inode::apply(&mut data, &mut size, c);
            if let Change::Write { off, data: d } = c {
                survived.push((*off, d.len() as u64));
            }
            r.kept += 1;
            continue;
        }
        match c {
            Change::Write { off, data: d } if k + 1 == n && faults.tear && !d.is_empty() => {
                if rng.chance(0.5) {
                    let part = rng.below(d.len() as u64) as usize;
                    let torn = Change::Write {
                        off: *off,
                        data: d[..part].to_vec(),
                    };
                    Inode::apply(&mut data, &mut size, &torn);
                    survived.push((*off, part as u64));
                    r.kept += 1;
                    r.torn = true;
                } else {
                    r.lost += 1;
                }
            }
            _ => r.lost += 1,
        }
    }
    survived.retain(|(_, len)| *len > 0);
    if !survived.is_empty() && rng.chance(faults.flip) {
        let (off, len) = survived[rng.below(survived.len() as u64) as usize];
        let at = (off + rng.below(len)) as usize;
        data[at] ^= 1 << rng.below(8);
        r.flipped = true;
    }
    inode.data = data.clone();
    inode.size = size;
    inode.durable = data;
    inode.durable_size = size;
    inode.unsynced.clear();
}

impl Disk for MemDisk {
    type File = MemFile;

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.lock().names.keys().cloned().collect())
    }

    fn create(&self, name: &str) -> io::Result<MemFile> {
        let mut st = self.lock();
        if st.names.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{name} exists"),
            ));
        }
        st.next_inode += 1;
        let inode = st.next_inode;
        st.inodes.insert(inode, Inode::default());
        st.names.insert(name.to_string(), inode);
        Ok(self.file(&st, inode))
    }

    fn open(&self, name: &str) -> io::Result<MemFile> {
        let st = self.lock();
        let inode = *st.names.get(name).ok_or_else(|| not_found(name))?;
        Ok(self.file(&st, inode))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut st = self.lock();
        let inode = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_string(), inode);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut st = self.lock();
        st.names.remove(name).ok_or_else(|| not_found(name))?;
        Ok(())
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let (epoch, lying) = self.delay().await?;
        let mut st = self.lock();
        if st.epoch != epoch {
            return Err(crashed());
        }
        if !lying {
            st.durable_names = st.names.clone();
            st.syncs += 1;
            // Removed files no name can bring back are gone for good.
            let named: Vec<u64> = st.names.values().copied().collect();
            st.inodes.retain(|i, _| named.contains(i));
        }
        Ok(())
    }
}

impl MemFile {
    fn with<T>(&self, f: impl FnOnce(&mut Inode) -> io::Result<T>) -> io::Result<T> {
        let mut st = self.disk.lock();
        if st.epoch != self.epoch {
            return Err(crashed());
        }
        let inode = st
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| io::Error::other("file removed and dropped"))?;
        f(inode)
    }
}

impl DiskFile for MemFile {
    fn size(&self) -> io::Result<u64> {
        self.with(|i| Ok(i.size))
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.with(|i| {
            if off + buf.len() as u64 > i.size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end",
                ));
            }
            // Bytes past the written ones are the zeros of an extension.
            let have = i.data.len().saturating_sub(off as usize).min(buf.len());
            buf[..have].copy_from_slice(&i.data[off as usize..off as usize + have]);
            buf[have..].fill(0);
            Ok(())
        })
    }

    fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()> {
        self.with(|i| {
            let c = Change::Write {
                off,
                data: data.to_vec(),
            };
            Inode::apply(&mut i.data, &mut i.size, &c);
            i.unsynced.push(c);
            Ok(())
        })
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        self.with(|i| {
            if len > i.size {
                i.size = len;
                i.unsynced.push(Change::Size(len));
            }
            Ok(())
        })
    }

    async fn sync(&self) -> io::Result<()> {
        let (epoch, lying) = self.disk.delay().await?;
        if epoch != self.epoch {
            return Err(crashed());
        }
        self.with(|i| {
            if !lying {
                for c in std::mem::take(&mut i.unsynced) {
                    Inode::apply(&mut i.durable, &mut i.durable_size, &c);
                }
            }
            Ok(())
        })?;
        if !lying {
            self.disk.lock().syncs += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_crash_keeps_synced_bytes_and_durable_names_only() {
        let d = MemDisk::new();
        let f = d.create("a").unwrap();
        f.write_at(0, b"hello").unwrap();
        f.sync().await.unwrap();
        d.sync_dir().await.unwrap();
        f.write_at(5, b" world").unwrap();
        let g = d.create("b").unwrap();
        g.write_at(0, b"x").unwrap();
        g.sync().await.unwrap();
        let r = d.crash(1);
        assert_eq!(r.lost, 1);
        assert_eq!(d.list().unwrap(), vec!["a".to_string()]);
        assert_eq!(d.contents("a").unwrap(), b"hello");
        assert!(f.size().is_err(), "a handle from before the crash is dead");
    }

    #[tokio::test]
    async fn a_crash_can_tear_and_flip_only_unsynced_bytes() {
        let mut torn = 0;
        let mut flipped = 0;
        for seed in 0..200 {
            let d = MemDisk::new();
            d.set_faults(MemDiskFaults {
                keep_unsynced: 0.5,
                tear: true,
                flip: 0.5,
                ..MemDiskFaults::default()
            });
            let f = d.create("a").unwrap();
            f.write_at(0, &[7; 64]).unwrap();
            f.sync().await.unwrap();
            d.sync_dir().await.unwrap();
            f.write_at(64, &[9; 64]).unwrap();
            let r = d.crash(seed);
            let c = d.contents("a").unwrap();
            assert_eq!(&c[..64], &[7; 64], "seed {seed}: synced bytes changed");
            torn += r.torn as u32;
            flipped += r.flipped as u32;
        }
        assert!(torn > 10 && flipped > 10, "torn {torn} flipped {flipped}");
    }
}
