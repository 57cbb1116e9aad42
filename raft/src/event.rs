//! Events: what applying a command changed, as `om node events` and subscribers see it.
//!
//! A change names its [`Subject`] (the cluster, a node, a service, an instance, ...) and the
//! field of it that changed, typed, so that consumers never parse a path back (service and
//! node names may contain dots). The `path` string is derived from them and kept in the
//! serialized form and in `Display`: `services.web.instances.n1.status idle -> starting`.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

/// What a change is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "of", rename_all = "snake_case")]
pub enum Subject {
    /// The cluster itself (`cluster.name`).
    Cluster,
    /// A member's record (its address; created or removed: no field).
    Node {
        /// The member.
        node: String,
    },
    /// A member's node monitor.
    NodeMonitor {
        /// The member.
        node: String,
    },
    /// A service (`version`, `global_expect`).
    Service {
        /// The service.
        service: String,
    },
    /// A service's instance on a node (created or removed: no field).
    Instance {
        /// The service.
        service: String,
        /// The node the instance is on.
        node: String,
    },
    /// A cluster parameter (the field is its `section.key`).
    Param,
    /// The secret rotation plan.
    Secrets,
    /// An approved join (no field).
    JoinApproval {
        /// The node allowed to join.
        node: String,
    },
}

impl Subject {
    /// The path prefix of this subject, as `om node events` prints it.
    fn prefix(&self) -> String {
        match self {
            Subject::Cluster => "cluster".into(),
            Subject::Node { node } => format!("nodes.{node}"),
            Subject::NodeMonitor { node } => format!("node_monitors.{node}"),
            Subject::Service { service } => format!("services.{service}"),
            Subject::Instance { service, node } => format!("services.{service}.instances.{node}"),
            Subject::Param => "params".into(),
            Subject::Secrets => "secrets".into(),
            Subject::JoinApproval { node } => format!("join_approvals.{node}"),
        }
    }

    /// The node this subject is about, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            Subject::Node { node }
            | Subject::NodeMonitor { node }
            | Subject::Instance { node, .. }
            | Subject::JoinApproval { node } => Some(node),
            _ => None,
        }
    }

    /// The service this subject is about, if any.
    pub fn service(&self) -> Option<&str> {
        match self {
            Subject::Service { service } | Subject::Instance { service, .. } => Some(service),
            _ => None,
        }
    }
}

/// One observable effect of applying a log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// `field` of `subject` changed (no field: the subject itself was created or
    /// removed); `None` means absent. `path` is derived from both.
    Change {
        /// `subject` and `field` as one dotted path (`services.web.instances.n1.status`).
        path: String,
        /// What changed.
        subject: Subject,
        /// Which field of it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
        /// The value before, in its wire spelling.
        old: Option<String>,
        /// The value after, in its wire spelling.
        new: Option<String>,
    },
    /// A command was refused.
    Error {
        /// The command's kind (`join`, `set_node_monitor`, ...).
        command: String,
        /// Why it was refused.
        message: String,
    },
    /// Something worth a log line that is not a field change (membership, snapshot install).
    Log {
        /// The line.
        message: String,
    },
}

impl Event {
    /// A change of `field` (or of the whole `subject`) from `old` to `new`.
    pub fn change(
        subject: Subject,
        field: Option<&str>,
        old: Option<String>,
        new: Option<String>,
    ) -> Event {
        let path = match field {
            Some(f) => format!("{}.{f}", subject.prefix()),
            None => subject.prefix(),
        };
        Event::Change {
            path,
            subject,
            field: field.map(str::to_string),
            old,
            new,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        match self {
            Event::Change { path, old, new, .. } => {
                write!(f, "{path} {} -> {}", show(old), show(new))
            }
            Event::Error { command, message } => write!(f, "error {command}: {message}"),
            Event::Log { message } => f.write_str(message),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_names_its_subject_and_prints_the_path() {
        let svc = "web.front".to_string();
        let e = Event::change(
            Subject::Instance {
                service: svc.clone(),
                node: "n1.dc".into(),
            },
            Some("status"),
            Some("idle".into()),
            None,
        );
        assert_eq!(
            e.to_string(),
            "services.web.front.instances.n1.dc.status idle -> -"
        );
        let Event::Change { subject, field, .. } = &e else {
            unreachable!()
        };
        assert_eq!(
            (subject.service(), subject.node()),
            (Some("web.front"), Some("n1.dc"))
        );
        assert_eq!(field.as_deref(), Some("status"));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["path"], "services.web.front.instances.n1.dc.status");
        assert_eq!(json["subject"]["of"], "instance");
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), e);
    }
}
