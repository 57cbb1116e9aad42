//! The snapshot file: the one value too big for a log record, replaced whole.
//!
//! `snapshot` holds `MAGIC`, the length (u64 LE), the crc (u32 LE) and the bytes. It is
//! written as `snapshot.tmp`, synced, renamed over `snapshot`, and the directory synced: a
//! crash leaves the old snapshot or the new one, never a mix. A `snapshot` that fails its
//! check is an error, not an absent snapshot: the log before it may have been purged.

use std::io;

use super::disk::Disk;
use super::disk::DiskFile;
use super::record::checksum;

/// The file name of the snapshot.
pub(super) const SNAPSHOT: &str = "snapshot";
/// Where a new snapshot is written before it replaces the old one.
pub(super) const SNAPSHOT_TMP: &str = "snapshot.tmp";
const MAGIC: [u8; 8] = *b"omsnap\0\x01";
const HEAD: usize = 8 + 8 + 4;
/// The largest snapshot: the cluster state is kept in memory, this is far above it.
pub(super) const MAX_SNAPSHOT: u64 = 1 << 32;

/// Writes `data` as the snapshot, durably.
pub(super) async fn write<D: Disk>(disk: &D, data: &[u8]) -> io::Result<()> {
    if data.len() as u64 > MAX_SNAPSHOT {
        return Err(io::Error::other(format!(
            "snapshot of {} bytes over the limit",
            data.len()
        )));
    }
    if disk.list()?.iter().any(|n| n == SNAPSHOT_TMP) {
        disk.remove(SNAPSHOT_TMP)?;
    }
    let f = disk.create(SNAPSHOT_TMP)?;
    let mut buf = Vec::with_capacity(HEAD + data.len());
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&(data.len() as u64).to_le_bytes());
    buf.extend_from_slice(&checksum(0, data).to_le_bytes());
    buf.extend_from_slice(data);
    f.write_at(0, &buf)?;
    f.sync().await?;
    disk.rename(SNAPSHOT_TMP, SNAPSHOT)?;
    disk.sync_dir().await
}

/// Reads the snapshot, if there is one.
pub(super) fn read<D: Disk>(disk: &D) -> io::Result<Option<Vec<u8>>> {
    if !disk.list()?.iter().any(|n| n == SNAPSHOT) {
        return Ok(None);
    }
    let f = disk.open(SNAPSHOT)?;
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the snapshot file is damaged ({why}); the node must be rebuilt"),
        )
    };
    let len = f.size()?;
    if len < HEAD as u64 {
        return Err(bad("shorter than its header"));
    }
    let mut head = [0; HEAD];
    f.read_at(0, &mut head)?;
    let size = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    if head[..8] != MAGIC || size > MAX_SNAPSHOT || size != len - HEAD as u64 {
        return Err(bad("bad header"));
    }
    let mut data = vec![0; size as usize];
    f.read_at(HEAD as u64, &mut data)?;
    let crc = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes"));
    if checksum(0, &data) != crc {
        return Err(bad("checksum mismatch"));
    }
    Ok(Some(data))
}
