//! Adversarial tests of the write-ahead log: torn and rotten records, crashes between a
//! segment's creation and the directory sync, purge and truncation across segments, and a
//! randomized model check of every crash outcome; each followed by a reopen.

use std::collections::BTreeMap;

use super::mem_disk::Mix;
use super::*;
use crate::backend::Backend;
use crate::backend::MetaKey;
use crate::backend::Op;

fn data(i: u64, tag: &str) -> Vec<u8> {
    format!("entry-{i:06}-{tag}").into_bytes()
}

fn batch(range: std::ops::Range<u64>, tag: &str) -> Op {
    Op::PutEntries(range.map(|i| (i, data(i, tag))).collect())
}

fn small() -> WalOptions {
    WalOptions { segment_size: 4096 }
}

fn indexes<B: Backend>(b: &B) -> Vec<u64> {
    b.entries(0, u64::MAX)
        .unwrap()
        .into_iter()
        .map(|(i, _)| i)
        .collect()
}

/// The offset of `needle` in `hay` (test payloads are unique).
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("payload on disk")
}

#[tokio::test]
async fn a_synced_log_survives_reopen_on_a_real_directory() {
    let dir = tempfile::tempdir().unwrap();
    let b = crate::open_dir(dir.path()).await.unwrap();
    b.write(vec![
        Op::PutMeta(MetaKey::Vote, b"v1".to_vec()),
        batch(1..50, "a"),
    ])
    .unwrap();
    b.write(vec![Op::PutMeta(MetaKey::Snapshot, b"snap".to_vec())])
        .unwrap();
    b.sync().await.unwrap();
    assert!(
        crate::open_dir(dir.path()).await.is_err(),
        "a second store on the same directory is refused"
    );
    drop(b);
    let b = crate::open_dir(dir.path()).await.unwrap();
    assert_eq!(indexes(&b), (1..50).collect::<Vec<_>>());
    assert_eq!(b.meta(MetaKey::Vote).unwrap(), Some(b"v1".to_vec()));
    assert_eq!(b.meta(MetaKey::Snapshot).unwrap(), Some(b"snap".to_vec()));
    assert_eq!(b.last_entry().unwrap().unwrap(), (49, data(49, "a")));
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let mode = e.unwrap().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "store files are private");
    }
}

#[tokio::test]
async fn a_torn_last_record_is_cut_on_open_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let b = crate::open_dir(dir.path()).await.unwrap();
    b.write(vec![batch(1..11, "a")]).unwrap();
    b.write(vec![batch(11..12, "a")]).unwrap();
    b.sync().await.unwrap();
    let seg = dir.path().join(segment_name(b.segments()[0]));
    drop(b);
    // Tear entry 11: its record keeps its first half, the rest reads as zeros.
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = find(&bytes, &data(11, "a"));
    bytes[at..at + 20].fill(0);
    std::fs::write(&seg, &bytes).unwrap();

    let b = crate::open_dir(dir.path()).await.unwrap();
    assert_eq!(indexes(&b), (1..11).collect::<Vec<_>>());
    b.write(vec![batch(11..13, "b")]).unwrap();
    b.sync().await.unwrap();
    drop(b);
    let b = crate::open_dir(dir.path()).await.unwrap();
    assert_eq!(indexes(&b), (1..13).collect::<Vec<_>>());
    assert_eq!(b.entries(11, 12).unwrap()[0].1, data(11, "b"));
}

#[tokio::test]
async fn a_flipped_bit_is_never_served_and_the_log_is_cut_there_on_open() {
    let disk = MemDisk::new();
    let b = WalBackend::open(disk.clone(), small()).await.unwrap();
    b.write(vec![batch(1..11, "a")]).unwrap();
    b.sync().await.unwrap();
    let name = segment_name(b.segments()[0]);
    let at = find(&disk.contents(&name).unwrap(), &data(5, "a"));
    disk.flip_bit(&name, at as u64 + 3, 2).unwrap();

    let err = b.entries(1, 11).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert_eq!(
        b.entries(1, 5).unwrap().len(),
        4,
        "records before it still read"
    );
    drop(b);
    let b = WalBackend::open(disk.clone(), small()).await.unwrap();
    assert_eq!(indexes(&b), vec![1, 2, 3, 4]);
    b.write(vec![batch(5..8, "b")]).unwrap();
    b.sync().await.unwrap();
    drop(b);
    let b = WalBackend::open(disk, small()).await.unwrap();
    assert_eq!(indexes(&b), vec![1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(b.entries(5, 6).unwrap()[0].1, data(5, "b"));
}

#[tokio::test]
async fn a_crash_between_segment_creation_and_the_directory_sync_loses_only_unsynced() {
    let disk = MemDisk::new();
    disk.set_faults(MemDiskFaults {
        keep_unsynced: 1.0,
        ..MemDiskFaults::default()
    });
    let b = WalBackend::open(disk.clone(), small()).await.unwrap();
    b.write(vec![batch(1..20, "a")]).unwrap();
    b.sync().await.unwrap();
    let before = b.segments().len();
    let mut next = 20;
    while b.segments().len() == before {
        b.write(vec![batch(next..next + 10, "a")]).unwrap();
        next += 10;
    }
    // The new segment's data reached the disk; its name did not.
    let r = disk.crash(7);
    assert!(r.names_reverted >= 1, "{r:?}");
    let b = WalBackend::open(disk.clone(), small()).await.unwrap();
    let got = indexes(&b);
    assert!(
        got.len() >= 19 && got.len() < (next - 1) as usize,
        "{got:?}"
    );
    assert_eq!(got, (1..got.len() as u64 + 1).collect::<Vec<_>>());

    // Now the new segment's name is durable but nothing written in it is: it has no valid
    // header and must be dropped.
    b.write(vec![batch(got.len() as u64 + 1..next, "b")])
        .unwrap();
    disk.sync_dir().await.unwrap();
    disk.set_faults(MemDiskFaults::default());
    disk.crash(8);
    let b = WalBackend::open(disk, small()).await.unwrap();
    assert_eq!(indexes(&b), got, "nothing unsynced comes back");
}

#[tokio::test]
async fn purge_and_truncate_work_across_segments_and_survive_reopen() {
    let disk = MemDisk::new();
    let b = WalBackend::open(disk.clone(), small()).await.unwrap();
    let a = "a".repeat(100);
    for k in 0..20 {
        b.write(vec![batch(k * 10 + 1..k * 10 + 11, &a)]).unwrap();
    }
    b.sync().await.unwrap();
    let segs = b.segments().len();
    assert!(segs >= 4, "{segs} segments");
    // Truncation reaching back over a segment boundary, then new entries.
    b.write(vec![Op::RemoveFrom(120), batch(120..150, "b")])
        .unwrap();
    b.sync().await.unwrap();
    assert_eq!(indexes(&b), (1..150).collect::<Vec<_>>());
    assert_eq!(b.entries(125, 126).unwrap()[0].1, data(125, "b"));
    b.write(vec![Op::RemoveUpTo(100)]).unwrap();
    b.sync().await.unwrap();
    let after = b.segments().len();
    assert!(
        after < segs,
        "whole purged segments are removed: {segs} -> {after}"
    );
    assert_eq!(indexes(&b), (101..150).collect::<Vec<_>>());
    drop(b);

    let b = WalBackend::open(disk.clone(), small()).await.unwrap();
    assert_eq!(indexes(&b), (101..150).collect::<Vec<_>>());
    assert_eq!(b.entries(119, 121).unwrap()[1].1, data(120, "b"));
    b.write(vec![Op::RemoveUpTo(148)]).unwrap();
    b.sync().await.unwrap();
    assert!(
        b.segments().len() <= 2,
        "only the current segment and 149's are left"
    );
    drop(b);
    let b = WalBackend::open(disk.clone(), small()).await.unwrap();
    assert_eq!(indexes(&b), vec![149]);
    // Purge past the end: empty, and appends go on after it.
    b.write(vec![Op::RemoveUpTo(500), batch(501..503, "c")])
        .unwrap();
    b.sync().await.unwrap();
    drop(b);
    let b = WalBackend::open(disk, small()).await.unwrap();
    assert_eq!(indexes(&b), vec![501, 502]);
}

#[tokio::test]
async fn a_failed_sync_stops_the_store_until_it_is_reopened() {
    let disk = MemDisk::new();
    let b = WalBackend::open(disk.clone(), small()).await.unwrap();
    b.write(vec![batch(1..3, "a")]).unwrap();
    disk.crash(1);
    assert!(b.sync().await.is_err());
    assert!(b.write(vec![batch(3..4, "a")]).is_err(), "poisoned");
    assert!(b.sync().await.is_err(), "poisoned");
}

type Model = (BTreeMap<u64, Vec<u8>>, BTreeMap<MetaKey, Vec<u8>>);

/// The states after each record of `op` (an entry batch is one record per entry).
fn model_apply(m: &mut Model, op: &Op, states: &mut Vec<Model>) {
    match op {
        Op::PutEntries(es) => {
            for (i, e) in es {
                m.0.insert(*i, e.clone());
                states.push(m.clone());
            }
        }
        Op::PutMeta(k, v) => {
            m.1.insert(*k, v.clone());
            states.push(m.clone());
        }
        Op::RemoveFrom(i) => {
            m.0.split_off(i);
            states.push(m.clone());
        }
        Op::RemoveUpTo(i) => {
            m.0 = m.0.split_off(&(i + 1));
            states.push(m.clone());
        }
    }
}

/// A random op. Entries go after the last one, which may be at or below a purge (openraft
/// does not do that, its suite does).
fn random_op(r: &mut Mix, m: &Model, round: u64) -> Op {
    let last = m.0.last_key_value().map_or(0, |(i, _)| *i);
    match r.below(10) {
        0 => Op::PutMeta(MetaKey::Vote, format!("vote-{}", r.next()).into_bytes()),
        1 => Op::RemoveFrom(last.saturating_sub(r.below(5))),
        2 => Op::RemoveUpTo(last.saturating_sub(r.below(20))),
        _ => {
            let n = 1 + r.below(12);
            let tag = format!("r{round}-{}", r.below(1000));
            Op::PutEntries(
                (last + 1..last + 1 + n)
                    .map(|i| (i, data(i, &tag)))
                    .collect(),
            )
        }
    }
}

fn read_model<B: Backend>(b: &B) -> Model {
    let entries = b.entries(0, u64::MAX).unwrap().into_iter().collect();
    let meta = [MetaKey::Vote]
        .into_iter()
        .filter_map(|k| b.meta(k).unwrap().map(|v| (k, v)))
        .collect();
    (entries, meta)
}

/// Random writes, syncs and crashes (torn, lost, reordered and flipped unsynced writes,
/// reverted names): what a reopen finds is always the state after some record at or after
/// the last completed sync; nothing synced is lost, nothing torn or unwritten is served.
#[tokio::test]
async fn every_crash_leaves_a_prefix_at_least_as_long_as_what_was_synced() {
    for seed in 0..300u64 {
        let mut r = Mix(seed);
        let disk = MemDisk::new();
        disk.set_faults(MemDiskFaults {
            keep_unsynced: [0.0, 0.5, 0.9][r.below(3) as usize],
            tear: true,
            flip: 0.5,
            ..MemDiskFaults::default()
        });
        let mut model: Model = Default::default();
        for round in 0..4 {
            let b = WalBackend::open(disk.clone(), small()).await.unwrap();
            assert_eq!(read_model(&b), model, "seed {seed} round {round}: reopen");
            let mut states = vec![model.clone()];
            let mut synced = 0;
            for _ in 0..r.below(40) {
                let op = random_op(&mut r, &model, round);
                b.write(vec![op.clone()]).unwrap();
                model_apply(&mut model, &op, &mut states);
                if r.below(4) == 0 {
                    b.sync().await.unwrap();
                    synced = states.len() - 1;
                }
            }
            drop(b);
            disk.crash(r.next());
            let b = WalBackend::open(disk.clone(), small()).await.unwrap();
            let got = read_model(&b);
            let k = states[synced..].iter().position(|s| *s == got);
            assert!(
                k.is_some(),
                "seed {seed} round {round}: recovered state is no prefix at or after the last sync"
            );
            model = got;
        }
    }
}
