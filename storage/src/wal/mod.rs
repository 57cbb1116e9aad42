//! The write-ahead log: om's Raft log on a store made for it (replaces sled in the daemon).
//!
//! A directory holds numbered segments `00000000000000000001.wal`, ..., the `snapshot`
//! file and a `LOCK` file. Each segment is preallocated (`WalOptions::segment_size`, 8 MiB
//! by default) and filled front to back with records ([`record`]): a header naming the
//! segment and the crc of the previous segment's last record, a checkpoint (the vote, the
//! committed id, the last purged id and the purge point, as they stand when the segment is
//! started), then one record per [`Op`](crate::Op): an entry, a metadata value, a truncation
//! (entries >= i go) or a purge (entries <= i go). Nothing already written is ever written
//! again; a record is appended with one positioned write and made durable by `fdatasync` of
//! its segment (plus `fsync` of the directory when the segment is new) before `sync`
//! returns, so an acknowledged vote or entry survives a power cut, not only a killed
//! process.
//!
//! Reading the log back replays the records in order: the result is what the writes made
//! visible. Every record's crc is chained to the previous record's, so recovery knows where
//! the log ends ([`scan`]): at the first torn or corrupt record, or at the first segment
//! that does not continue the previous one where it ends; everything after is dropped and
//! never served, and the store starts a new segment on every open (the damaged tail is
//! never written over). Entries are read from the segments when asked for, and their crc
//! is checked again then.
//!
//! Purge removes whole segments, oldest first, once every entry in them is purged and the
//! purge record is durable; each segment's checkpoint carries the metadata that the removed
//! segments held. The snapshot is one file replaced whole ([`snapshot`]).
//!
//! Designs read: etcd's WAL (segments, chained crc, fdatasync), TiKV's raft-engine (a log
//! of Raft state and entries, files purged whole), TigerBeetle's journal (a disk model that
//! tears and corrupts, in the simulator). See docs/STORAGE.md for the decisions.

mod disk;
mod mem_disk;
mod record;
mod scan;
mod snapshot;
mod store;

pub use disk::Disk;
pub use disk::DiskFile;
pub use disk::FsDisk;
pub use disk::FsFile;
pub use mem_disk::CrashReport;
pub use mem_disk::MemDisk;
pub use mem_disk::MemDiskFaults;
pub use mem_disk::MemFile;
pub use scan::segment_name;
pub use store::WalBackend;
pub use store::WalOptions;

#[cfg(test)]
mod tests;
