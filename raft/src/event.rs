//! Events: what applying a command changed, as `om node events` and subscribers see it.

use serde::Deserialize;
use serde::Serialize;

/// One observable effect of applying a log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A field changed; `None` means absent (created or removed).
    Change {
        path: String,
        old: Option<String>,
        new: Option<String>,
    },
    /// A command was refused.
    Error { command: String, message: String },
    /// Something worth a log line that is not a field change (membership, snapshot install).
    Log { message: String },
}

impl Event {
    /// A change event of `path` from `old` to `new`.
    pub fn change(path: impl Into<String>, old: Option<String>, new: Option<String>) -> Event {
        Event::Change {
            path: path.into(),
            old,
            new,
        }
    }
}

/// An event with the log index of the entry that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Log index of the applied entry.
    pub index: u64,
    /// What happened.
    pub event: Event,
}
