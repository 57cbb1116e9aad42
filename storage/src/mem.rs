//! `MemBackend`: an in-memory backend that knows which writes a crash would lose.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use crate::backend::Backend;
use crate::backend::MetaKey;
use crate::backend::Op;

/// Faults a simulator can turn on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemFaults {
    /// Each `sync` takes this long (tokio time), so crashes can land while writes are unsynced.
    pub sync_delay: Duration,
    /// A deliberate bug: `sync` returns at once without making anything durable.
    pub lying_sync: bool,
}

#[derive(Debug, Clone, Default)]
struct Image {
    meta: BTreeMap<MetaKey, Vec<u8>>,
    log: BTreeMap<u64, Vec<u8>>,
}

impl Image {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::PutMeta(k, v) => {
                self.meta.insert(*k, v.clone());
            }
            Op::PutEntries(es) => {
                for (i, e) in es {
                    self.log.insert(*i, e.clone());
                }
            }
            Op::RemoveFrom(i) => {
                self.log.split_off(i);
            }
            Op::RemoveUpTo(i) => {
                self.log = self.log.split_off(&(i + 1));
            }
        }
    }
}

#[derive(Debug, Default)]
struct Disk {
    /// What reads see: every write.
    visible: Image,
    /// What survives a crash: writes up to the last completed sync.
    durable: Image,
    /// Writes since the last sync, in order.
    unsynced: Vec<Op>,
    /// Bumped by every crash, so a sync that started before it does not complete after it.
    epoch: u64,
    faults: MemFaults,
    syncs: u64,
}

/// An in-memory [`Backend`] whose [`crash`](MemBackend::crash) drops unsynced writes.
#[derive(Debug, Clone, Default)]
pub struct MemBackend {
    disk: Arc<Mutex<Disk>>,
}

impl MemBackend {
    /// An empty disk with no faults.
    pub fn new() -> MemBackend {
        MemBackend::default()
    }

    /// Sets the faults for later operations.
    pub fn set_faults(&self, faults: MemFaults) {
        self.lock().faults = faults;
    }

    /// Simulates a power cut: every write since the last completed sync is lost, and syncs in
    /// flight will fail. Returns how many writes were dropped.
    pub fn crash(&self) -> usize {
        let mut d = self.lock();
        let lost = d.unsynced.len();
        d.unsynced.clear();
        d.visible = d.durable.clone();
        d.epoch += 1;
        lost
    }

    /// How many syncs completed.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Disk> {
        self.disk.lock().expect("mem disk lock poisoned")
    }
}

impl Backend for MemBackend {
    fn write(&self, ops: Vec<Op>) -> io::Result<()> {
        let mut d = self.lock();
        for op in ops {
            d.visible.apply(&op);
            d.unsynced.push(op);
        }
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        let (epoch, faults) = {
            let d = self.lock();
            (d.epoch, d.faults.clone())
        };
        if faults.lying_sync {
            return Ok(());
        }
        if !faults.sync_delay.is_zero() {
            tokio::time::sleep(faults.sync_delay).await;
        }
        let mut d = self.lock();
        if d.epoch != epoch {
            return Err(io::Error::other("the disk crashed during sync"));
        }
        let ops = std::mem::take(&mut d.unsynced);
        for op in &ops {
            d.durable.apply(op);
        }
        d.syncs += 1;
        Ok(())
    }

    fn meta(&self, key: MetaKey) -> io::Result<Option<Vec<u8>>> {
        Ok(self.lock().visible.meta.get(&key).cloned())
    }

    fn entries(&self, start: u64, end: u64) -> io::Result<Vec<(u64, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let d = self.lock();
        Ok(d.visible
            .log
            .range(start..end)
            .map(|(i, e)| (*i, e.clone()))
            .collect())
    }

    fn last_entry(&self) -> io::Result<Option<(u64, Vec<u8>)>> {
        Ok(self
            .lock()
            .visible
            .log
            .last_key_value()
            .map(|(i, e)| (*i, e.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn crash_drops_only_unsynced_writes() {
        let b = MemBackend::new();
        b.write(vec![Op::PutEntries(vec![(1, vec![1]), (2, vec![2])])])
            .unwrap();
        b.sync().await.unwrap();
        b.write(vec![Op::PutEntries(vec![(3, vec![3])]), Op::RemoveUpTo(1)])
            .unwrap();
        assert_eq!(b.entries(0, 10).unwrap().len(), 2);
        assert_eq!(b.crash(), 2);
        let left: Vec<u64> = b.entries(0, 10).unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(left, vec![1, 2]);
    }

    #[tokio::test]
    async fn lying_sync_loses_acknowledged_writes() {
        let b = MemBackend::new();
        b.set_faults(MemFaults {
            lying_sync: true,
            ..MemFaults::default()
        });
        b.write(vec![Op::PutMeta(MetaKey::Vote, vec![9])]).unwrap();
        b.sync().await.unwrap();
        b.crash();
        assert_eq!(b.meta(MetaKey::Vote).unwrap(), None);
    }
}
