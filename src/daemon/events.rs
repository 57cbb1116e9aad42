//! The daemon's recent applied events, numbered, for `om node events` long-polls: filtered
//! by kind, node, service or path prefix, bounded per answer, and resumable within one
//! daemon run (its `epoch`; a reader from another epoch is told to start again).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use raft::Event;
use raft::EventRecord;
use tokio::sync::Notify;

use crate::api::options::EventKind;

/// How many events are kept for late readers.
const KEEP: usize = 10_000;

/// An event with its local sequence number (what `events` answers).
pub type Numbered = crate::api::options::NumberedEvent;

/// A bounded ring of recent events with a wake-up for waiting readers.
pub struct EventLog {
    ring: Mutex<(u64, VecDeque<Numbered>)>,
    notify: Notify,
    epoch: String,
}

impl Default for EventLog {
    fn default() -> EventLog {
        EventLog {
            ring: Mutex::default(),
            notify: Notify::new(),
            epoch: format!("{:016x}", rand::random::<u64>()),
        }
    }
}

impl EventLog {
    /// Appends an event.
    pub fn push(&self, record: EventRecord) {
        let mut g = self.ring.lock().unwrap();
        g.0 += 1;
        let seq = g.0;
        g.1.push_back(Numbered { seq, record });
        if g.1.len() > KEEP {
            g.1.pop_front();
        }
        drop(g);
        self.notify.notify_waiters();
    }

    /// The last sequence number given out.
    pub fn last_seq(&self) -> u64 {
        self.ring.lock().unwrap().0
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
                for e in g.1.iter().filter(|e| e.seq > start) {
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

    /// This daemon run's id: sequence numbers are only comparable within one epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
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

    fn change(service: &str, node: &str) -> EventRecord {
        let subject = Subject::Instance {
            service: service.into(),
            node: node.into(),
        };
        EventRecord {
            index: 1,
            event: Event::change(
                subject,
                Some(Field::Status),
                None,
                Some(MonitorStatus::Idle.into()),
            ),
        }
    }

    #[tokio::test]
    async fn readers_get_what_their_filter_keeps_and_where_to_go_on() {
        let log = EventLog::default();
        log.push(change("web", "n1"));
        log.push(change("web.front", "n2"));
        log.push(EventRecord {
            index: 2,
            event: Event::Log {
                message: "m".into(),
            },
        });
        let none = Duration::ZERO;
        let web = Filter {
            service: Some("web".into()),
            ..Filter::default()
        };
        let (got, next) = log.since(0, none, &web, 1000).await;
        assert_eq!(
            (got.len(), got[0].seq, next),
            (1, 1, 3),
            "a dotted name is not a prefix"
        );
        let n2 = Filter {
            node: Some("n2".into()),
            ..Filter::default()
        };
        assert_eq!(log.since(0, none, &n2, 1000).await.0[0].seq, 2);
        let logs = Filter {
            kind: Some(EventKind::Log),
            ..Filter::default()
        };
        assert_eq!(log.since(0, none, &logs, 1000).await.0[0].seq, 3);
        let (got, next) = log.since(0, none, &Filter::default(), 2).await;
        assert_eq!(
            (got.len(), next),
            (2, 2),
            "the limit, and where the next read starts"
        );
        assert!(log
            .since(3, none, &Filter::default(), 10)
            .await
            .0
            .is_empty());
        assert_ne!(
            EventLog::default().epoch(),
            log.epoch(),
            "each run has its own epoch"
        );
    }
}
