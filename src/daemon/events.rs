//! The daemon's applied events, numbered from the log, for `om node events` long-polls:
//! filtered by kind, node, service or path prefix, bounded per answer, and resumable
//! across daemon restarts.
//!
//! An event's sequence number is its entry's log index and its place among that entry's
//! events (`index << 16 | n`), so the same event has the same number in every run. On
//! start the ring is rebuilt from the store ([`history`]: the committed entries after the
//! last snapshot applied again to it, which the state machine's determinism makes the same
//! events), so a reader that asks `since` a number from before the restart goes on where
//! it was. What cannot be rebuilt (entries the snapshot covers, the oldest events evicted
//! from the ring, a snapshot installed from the leader, a lagging pump) is a gap, and a
//! reader from before a gap is told to start again (`reset`). The `epoch` is the store's
//! Raft id: a new store (join, leave, restore) starts a new numbering.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use openraft::Entry;
use raft::Event;
use raft::EventRecord;
use raft::MachineData;
use raft::TypeConfig;
use tokio::sync::Notify;

use crate::api::options::EventKind;

/// How many events are kept for late readers.
const KEEP: usize = 10_000;

/// Events one entry may have numbers for (its `n` in `index << 16 | n`); later ones are
/// numbered as the last.
const PER_ENTRY: u64 = 1 << 16;

/// An event with its sequence number (what `events` answers).
pub type Numbered = crate::api::options::NumberedEvent;

/// The events applying `entries` (the committed ones after `base`'s last applied) to
/// `base` produces, in order: what a run before a restart published for them.
pub fn history(mut base: MachineData, entries: &[Entry<TypeConfig>]) -> Vec<EventRecord> {
    let mut out = Vec::new();
    for entry in entries {
        let (_, events) = base.apply_entry(entry);
        out.extend(events.into_iter().map(|event| EventRecord {
            index: entry.log_id.index,
            event,
            replaced: false,
        }));
    }
    out
}

/// The numbered events and what readers need to know of their completeness.
#[derive(Default)]
struct Ring {
    events: VecDeque<Numbered>,
    /// The store's Raft id: numbers are comparable within one.
    epoch: String,
    /// Events numbered up to here may be missing (a reader from before it starts again).
    gap: u64,
    /// Records of entries up to here are in the ring already (the rebuilt history):
    /// openraft applies them again on start, and the copies are dropped.
    floor: u64,
    /// The last number given out.
    last: u64,
}

impl Ring {
    fn push(&mut self, record: EventRecord) {
        let copy = record.index <= self.floor && !record.replaced;
        if copy || record.index < self.last >> 16 {
            return;
        }
        let first = record.index << 16;
        let seq = if self.last >= first {
            (self.last + 1).min(first + PER_ENTRY - 1)
        } else {
            first
        };
        if record.replaced {
            self.gap = self.gap.max(seq);
        }
        self.last = seq;
        self.events.push_back(Numbered { seq, record });
        if self.events.len() > KEEP {
            let evicted = self.events.pop_front().expect("not empty");
            self.gap = self.gap.max(evicted.seq);
        }
    }
}

/// A bounded ring of recent events with a wake-up for waiting readers.
#[derive(Default)]
pub struct EventLog {
    ring: Mutex<Ring>,
    notify: Notify,
}

impl EventLog {
    /// Starts the numbering of store `epoch` again after a (re)start of Raft on it: the
    /// events of `history`, rebuilt from entries after `base` (the snapshot's last index).
    /// A new epoch empties the ring; the same one keeps what it holds.
    pub fn reopen(&self, epoch: &str, base: u64, history: Vec<EventRecord>) {
        let mut g = self.ring.lock().unwrap();
        if g.epoch != epoch {
            // Nothing of the entries up to `base` can be numbered again.
            let gap = ((base + 1) << 16) - 1;
            *g = Ring {
                epoch: epoch.to_string(),
                gap,
                last: gap,
                ..Ring::default()
            };
        }
        let end = history.last().map_or(base, |r| r.index);
        for record in history {
            g.push(record);
        }
        g.floor = g.floor.max(end);
        drop(g);
        self.notify.notify_waiters();
    }

    /// Appends an applied event (a copy of one already in the ring is dropped).
    pub fn push(&self, record: EventRecord) {
        self.ring.lock().unwrap().push(record);
        self.notify.notify_waiters();
    }

    /// The pump missed events (it lagged) before `next`, the first it got after. Nothing
    /// is lost while those were copies of the rebuilt history (Raft's start applies the
    /// log again faster than the pump reads).
    pub fn lost_before(&self, next: &EventRecord) {
        let mut g = self.ring.lock().unwrap();
        if next.index <= g.floor {
            return;
        }
        let to = ((next.index + 1) << 16).saturating_sub(1);
        g.gap = g.gap.max(to);
    }

    /// The last sequence number given out.
    pub fn last_seq(&self) -> u64 {
        self.ring.lock().unwrap().last
    }

    /// This store's numbering: sequence numbers are comparable within one epoch.
    pub fn epoch(&self) -> String {
        self.ring.lock().unwrap().epoch.clone()
    }

    /// Whether a reader that has seen every event up to `since` of `epoch` missed some.
    pub fn missed(&self, epoch: Option<&str>, since: u64) -> bool {
        let g = self.ring.lock().unwrap();
        epoch.is_some_and(|e| e != g.epoch) || (since > 0 && since < g.gap)
    }

    /// Events after `since` that `filter` keeps (at most `limit`), waiting up to `wait`
    /// for the first one; and the last sequence number looked at (where to go on from).
    pub async fn since(
        &self,
        since: u64,
        wait: Duration,
        filter: &Filter,
        limit: usize,
    ) -> (Vec<Numbered>, u64) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut from = since;
        loop {
            let notified = self.notify.notified();
            {
                let g = self.ring.lock().unwrap();
                let mut out = Vec::new();
                let start = from;
                for e in g.events.iter().filter(|e| e.seq > start) {
                    if out.len() == limit {
                        break;
                    }
                    from = e.seq;
                    if filter.keeps(&e.record.event) {
                        out.push(e.clone());
                    }
                }
                if !out.is_empty() {
                    return (out, from);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return (Vec::new(), from);
            }
        }
    }
}

/// Which events a reader wants (`events` options); empty: all.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this kind.
    pub kind: Option<EventKind>,
    /// Only changes about this node.
    pub node: Option<String>,
    /// Only changes about this service.
    pub service: Option<String>,
    /// Only changes whose path starts with this.
    pub prefix: Option<String>,
}

impl Filter {
    fn keeps(&self, e: &Event) -> bool {
        let kind = match e {
            Event::Change { .. } => EventKind::Change,
            Event::Error { .. } => EventKind::Error,
            Event::Log { .. } => EventKind::Log,
        };
        if self.kind.is_some_and(|k| k != kind) {
            return false;
        }
        let scoped = self.node.is_some() || self.service.is_some() || self.prefix.is_some();
        let Event::Change { subject, .. } = e else {
            return !scoped;
        };
        let path = e.path().unwrap_or_default();
        self.node
            .as_deref()
            .is_none_or(|n| subject.node() == Some(n))
            && self
                .service
                .as_deref()
                .is_none_or(|s| subject.service() == Some(s))
            && self.prefix.as_deref().is_none_or(|p| path.starts_with(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::event::Field;
    use raft::state::MonitorStatus;
    use raft::Subject;

    fn change(index: u64, service: &str, node: &str) -> EventRecord {
        let subject = Subject::Instance {
            service: service.into(),
            node: node.into(),
        };
        EventRecord {
            index,
            event: Event::change(
                subject,
                Some(Field::Status),
                None,
                Some(MonitorStatus::Idle.into()),
            ),
            replaced: false,
        }
    }

    fn log(index: u64) -> EventRecord {
        let message = format!("entry {index}");
        EventRecord {
            index,
            event: Event::Log { message },
            replaced: false,
        }
    }

    fn seqs(got: &[Numbered]) -> Vec<(u64, u64)> {
        got.iter().map(|e| (e.seq >> 16, e.seq & 0xffff)).collect()
    }

    #[tokio::test]
    async fn readers_get_what_their_filter_keeps_and_where_to_go_on() {
        let log = EventLog::default();
        log.reopen("1", 0, Vec::new());
        log.push(change(1, "web", "n1"));
        log.push(change(1, "web.front", "n2"));
        log.push(super::tests::log(2));
        let none = Duration::ZERO;
        let web = Filter {
            service: Some("web".into()),
            ..Filter::default()
        };
        let (got, next) = log.since(0, none, &web, 1000).await;
        assert_eq!(seqs(&got), [(1, 0)], "a dotted name is not a prefix");
        assert_eq!(next, 2 << 16, "the last one looked at");
        let n2 = Filter {
            node: Some("n2".into()),
            ..Filter::default()
        };
        assert_eq!(seqs(&log.since(0, none, &n2, 1000).await.0), [(1, 1)]);
        let logs = Filter {
            kind: Some(EventKind::Log),
            ..Filter::default()
        };
        assert_eq!(seqs(&log.since(0, none, &logs, 1000).await.0), [(2, 0)]);
        let (got, next) = log.since(0, none, &Filter::default(), 2).await;
        assert_eq!(
            (got.len(), next),
            (2, (1 << 16) + 1),
            "the limit, and where to go on"
        );
        let after = log.since(2 << 16, none, &Filter::default(), 10).await.0;
        assert!(after.is_empty());
    }

    /// A restart rebuilds the same numbers from the log; openraft's second application of
    /// the same entries is not numbered again.
    #[test]
    fn a_restart_numbers_the_same_events_alike() {
        let first = EventLog::default();
        first.reopen("7", 0, Vec::new());
        for r in [change(3, "a", "n1"), change(3, "b", "n1"), log(5)] {
            first.push(r);
        }
        let before: Vec<u64> = first
            .ring
            .lock()
            .unwrap()
            .events
            .iter()
            .map(|e| e.seq)
            .collect();
        let again = EventLog::default();
        let history = vec![change(3, "a", "n1"), change(3, "b", "n1"), log(5)];
        again.reopen("7", 0, history);
        for r in [change(3, "a", "n1"), log(5)] {
            again.push(r);
        }
        again.push(log(6));
        let after: Vec<u64> = again
            .ring
            .lock()
            .unwrap()
            .events
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(after[..3], before[..], "the same numbers, no copies");
        assert_eq!(after[3], 6 << 16);
        assert!(
            !again.missed(Some("7"), before[1]),
            "a reader goes on where it was"
        );
        assert!(again.missed(Some("8"), before[1]), "another store");
    }

    #[test]
    fn readers_from_before_a_gap_start_again() {
        let log = EventLog::default();
        // A store whose snapshot covers entries up to 40.
        log.reopen("7", 40, vec![super::tests::log(41)]);
        assert!(
            log.missed(Some("7"), 5 << 16),
            "entries the snapshot covers"
        );
        assert!(!log.missed(Some("7"), 41 << 16));
        assert!(!log.missed(Some("7"), 0), "a new reader missed nothing");
        // A snapshot installed from the leader: nothing of what it covers was numbered.
        log.push(EventRecord {
            replaced: true,
            ..super::tests::log(90)
        });
        assert!(log.missed(Some("7"), 41 << 16));
        assert!(!log.missed(Some("7"), 90 << 16));
        // The pump lagged: what came before the next record it got is lost, unless that
        // record is a copy of the history (so were the ones lost).
        log.lost_before(&super::tests::log(41));
        assert!(!log.missed(Some("7"), 90 << 16));
        log.lost_before(&super::tests::log(95));
        assert!(log.missed(Some("7"), 90 << 16));
        // Evicted from the ring.
        for i in 0..KEEP as u64 + 1 {
            log.push(super::tests::log(100 + i));
        }
        assert!(
            log.missed(Some("7"), (100 << 16) - 1),
            "entry 100's event was evicted"
        );
        assert!(
            !log.missed(Some("7"), 100 << 16),
            "a reader that had seen it"
        );
    }
}
