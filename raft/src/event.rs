//! Events: what applying a command changed, as `om node events` and subscribers see it.
//!
//! A change names its [`Subject`] (the cluster, a node, a service, an instance, ...), the
//! [`Field`] of it that changed, and the old and new [`FieldValue`]s, typed, so that
//! consumers never parse a path back (service and node names may contain dots). The `path`
//! string is derived from them and kept in the serialized form and in `Display`:
//! `services.web.instances.n1.status idle -> starting`; values travel in their wire
//! spelling and are typed again on decoding, by their subject and field.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

use crate::state::Avail;
use crate::state::GlobalExpect;
use crate::state::LocalExpect;
use crate::state::MonitorStatus;
use crate::state::NodeExpect;
use crate::state::NodeStatus;

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

/// A field of a subject, as `om node events` spells it after the subject's path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// `cluster.name`.
    Name,
    /// A member's listener address.
    Addr,
    /// A node monitor's or an instance's status.
    Status,
    /// A node monitor's or an instance's `local_expect`.
    LocalExpect,
    /// A node monitor's or an instance's frozen flag.
    Frozen,
    /// A service's `global_expect`.
    GlobalExpect,
    /// A service's config version.
    Version,
    /// An instance's availability.
    Avail,
    /// An instance's restarts, summed over its resources.
    Restarts,
    /// The secret in use (`secrets.used`).
    Used,
    /// A member's role (`normal`, `witness`).
    Role,
    /// An accepted secret (`secrets.accepted.<key id>`).
    Accepted(String),
    /// A cluster parameter (`params.<section.key>`).
    Param(String),
    /// A field this version does not know (from a newer node), as it was spelled.
    Other(String),
}

impl Field {
    const NAMED: [(Field, &'static str); 11] = [
        (Field::Name, "name"),
        (Field::Addr, "addr"),
        (Field::Status, "status"),
        (Field::LocalExpect, "local_expect"),
        (Field::Frozen, "frozen"),
        (Field::GlobalExpect, "global_expect"),
        (Field::Version, "version"),
        (Field::Avail, "avail"),
        (Field::Restarts, "restarts"),
        (Field::Used, "used"),
        (Field::Role, "role"),
    ];

    /// The field spelled `text` in a change of `subject`.
    pub fn parse(subject: &Subject, text: &str) -> Field {
        match subject {
            Subject::Param => return Field::Param(text.to_string()),
            Subject::Secrets => {
                if let Some(key) = text.strip_prefix("accepted.") {
                    return Field::Accepted(key.to_string());
                }
            }
            _ => {}
        }
        Field::NAMED
            .iter()
            .find(|(_, name)| *name == text)
            .map_or_else(|| Field::Other(text.to_string()), |(f, _)| f.clone())
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Accepted(key) => write!(f, "accepted.{key}"),
            Field::Param(key) | Field::Other(key) => f.write_str(key),
            named => {
                let (_, name) = Field::NAMED
                    .iter()
                    .find(|(n, _)| n == named)
                    .expect("every other field is named");
                f.write_str(name)
            }
        }
    }
}

/// A value before or after a change, typed by its subject and field; it prints (and
/// travels) in its wire spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    /// A name, an address, a fingerprint, a parameter's value, a time, or a marker of
    /// a subject's existence (`present`, `accepted`).
    Text(String),
    /// A version or a number of restarts.
    Count(u64),
    /// A frozen flag.
    Flag(bool),
    /// A node monitor's status.
    NodeStatus(NodeStatus),
    /// A node monitor's `local_expect`.
    NodeExpect(NodeExpect),
    /// An instance's status.
    MonitorStatus(MonitorStatus),
    /// An instance's `local_expect`.
    LocalExpect(LocalExpect),
    /// A service's `global_expect`.
    GlobalExpect(GlobalExpect),
    /// An instance's availability.
    Avail(Avail),
}

impl FieldValue {
    /// The value spelled `text` of `field` of `subject` (text when it does not parse as
    /// the field's type: a newer node's value).
    pub fn parse(subject: &Subject, field: Option<&Field>, text: &str) -> FieldValue {
        let node = matches!(subject, Subject::NodeMonitor { .. });
        let typed = match field {
            Some(Field::Status) if node => text.parse().ok().map(FieldValue::NodeStatus),
            Some(Field::Status) => text.parse().ok().map(FieldValue::MonitorStatus),
            Some(Field::LocalExpect) if node => text.parse().ok().map(FieldValue::NodeExpect),
            Some(Field::LocalExpect) => text.parse().ok().map(FieldValue::LocalExpect),
            Some(Field::GlobalExpect) => text.parse().ok().map(FieldValue::GlobalExpect),
            Some(Field::Avail) => text.parse().ok().map(FieldValue::Avail),
            Some(Field::Frozen) => text.parse().ok().map(FieldValue::Flag),
            Some(Field::Version | Field::Restarts) => text.parse().ok().map(FieldValue::Count),
            _ => None,
        };
        typed.unwrap_or_else(|| FieldValue::Text(text.to_string()))
    }
}

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldValue::Text(t) => f.write_str(t),
            FieldValue::Count(n) => write!(f, "{n}"),
            FieldValue::Flag(b) => write!(f, "{b}"),
            FieldValue::NodeStatus(v) => write!(f, "{v}"),
            FieldValue::NodeExpect(v) => write!(f, "{v}"),
            FieldValue::MonitorStatus(v) => write!(f, "{v}"),
            FieldValue::LocalExpect(v) => write!(f, "{v}"),
            FieldValue::GlobalExpect(v) => write!(f, "{v}"),
            FieldValue::Avail(v) => write!(f, "{v}"),
        }
    }
}

/// A role travels as its spelling: events name no type for it (older readers see text).
impl From<crate::state::NodeRole> for FieldValue {
    fn from(v: crate::state::NodeRole) -> FieldValue {
        FieldValue::Text(v.as_str().to_string())
    }
}

macro_rules! field_value_from {
    ($($t:ty => $variant:ident),+ $(,)?) => {
        $(impl From<$t> for FieldValue {
            fn from(v: $t) -> FieldValue {
                FieldValue::$variant(v)
            }
        })+
    };
}

field_value_from!(
    String => Text,
    u64 => Count,
    bool => Flag,
    NodeStatus => NodeStatus,
    NodeExpect => NodeExpect,
    MonitorStatus => MonitorStatus,
    LocalExpect => LocalExpect,
    GlobalExpect => GlobalExpect,
    Avail => Avail,
);

/// One observable effect of applying a log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Spelled", into = "Spelled")]
pub enum Event {
    /// `field` of `subject` changed (no field: the subject itself was created or
    /// removed); `None` means absent.
    Change {
        /// What changed.
        subject: Subject,
        /// Which field of it.
        field: Option<Field>,
        /// The value before.
        old: Option<FieldValue>,
        /// The value after.
        new: Option<FieldValue>,
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

/// An [`Event`] as it travels: fields and values in their wire spelling, and the `path`
/// of a change (`services.web.instances.n1.status`) for consumers that match on it.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Spelled {
    Change {
        path: String,
        subject: Subject,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
        old: Option<String>,
        new: Option<String>,
    },
    Error {
        command: String,
        message: String,
    },
    Log {
        message: String,
    },
}

impl From<Event> for Spelled {
    fn from(e: Event) -> Spelled {
        let path = e.path();
        match e {
            Event::Change {
                subject,
                field,
                old,
                new,
            } => Spelled::Change {
                path: path.unwrap_or_default(),
                subject,
                field: field.map(|f| f.to_string()),
                old: old.map(|v| v.to_string()),
                new: new.map(|v| v.to_string()),
            },
            Event::Error { command, message } => Spelled::Error { command, message },
            Event::Log { message } => Spelled::Log { message },
        }
    }
}

impl From<Spelled> for Event {
    fn from(s: Spelled) -> Event {
        match s {
            // The path is derived from the subject and the field; the one sent is not
            // needed to rebuild the change.
            Spelled::Change {
                subject,
                field,
                old,
                new,
                ..
            } => {
                let field = field.map(|f| Field::parse(&subject, &f));
                let value =
                    |v: Option<String>| v.map(|t| FieldValue::parse(&subject, field.as_ref(), &t));
                let (old, new) = (value(old), value(new));
                Event::Change {
                    subject,
                    field,
                    old,
                    new,
                }
            }
            Spelled::Error { command, message } => Event::Error { command, message },
            Spelled::Log { message } => Event::Log { message },
        }
    }
}

impl Event {
    /// A change of `field` (or of the whole `subject`) from `old` to `new`.
    pub fn change(
        subject: Subject,
        field: Option<Field>,
        old: Option<FieldValue>,
        new: Option<FieldValue>,
    ) -> Event {
        Event::Change {
            subject,
            field,
            old,
            new,
        }
    }

    /// A change's subject and field as one dotted path
    /// (`services.web.instances.n1.status`); `None` for other events.
    pub fn path(&self) -> Option<String> {
        let Event::Change { subject, field, .. } = self else {
            return None;
        };
        Some(match field {
            Some(f) => format!("{}.{f}", subject.prefix()),
            None => subject.prefix(),
        })
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<FieldValue>| v.as_ref().map_or("-".into(), |v| v.to_string());
        match self {
            Event::Change { old, new, .. } => {
                let path = self.path().unwrap_or_default();
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
    /// The whole state was replaced by a snapshot at `index`: the events of the entries it
    /// covers were never produced here (readers of a numbered history have a gap).
    #[serde(skip)]
    pub replaced: bool,
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
            Some(Field::Status),
            Some(MonitorStatus::Idle.into()),
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
        assert_eq!(field, &Some(Field::Status));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["path"], "services.web.front.instances.n1.dc.status");
        assert_eq!(json["subject"]["of"], "instance");
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), e);
    }

    /// Every field with a value of its type: the spelled form decodes to the same typed
    /// change, and prints as before.
    #[test]
    fn typed_changes_survive_their_spelled_form() {
        let inst = Subject::Instance {
            service: "web".into(),
            node: "n1".into(),
        };
        let mon = Subject::NodeMonitor { node: "n1".into() };
        let svc = Subject::Service {
            service: "web".into(),
        };
        let text = |t: &str| Some(FieldValue::Text(t.into()));
        let cases = [
            (
                Subject::Cluster,
                Some(Field::Name),
                None,
                text("c1"),
                "cluster.name - -> c1",
            ),
            (
                mon.clone(),
                Some(Field::Status),
                Some(NodeStatus::Idle.into()),
                Some(NodeStatus::Down.into()),
                "node_monitors.n1.status idle -> down",
            ),
            (
                mon.clone(),
                Some(Field::LocalExpect),
                Some(NodeExpect::Thawed.into()),
                Some(NodeExpect::Frozen.into()),
                "node_monitors.n1.local_expect thawed -> frozen",
            ),
            (
                mon,
                Some(Field::Frozen),
                Some(false.into()),
                Some(true.into()),
                "node_monitors.n1.frozen false -> true",
            ),
            (
                inst.clone(),
                Some(Field::Status),
                Some(MonitorStatus::Idle.into()),
                Some(MonitorStatus::StartFailed.into()),
                "services.web.instances.n1.status idle -> start failed",
            ),
            (
                inst.clone(),
                Some(Field::LocalExpect),
                Some(LocalExpect::None.into()),
                Some(LocalExpect::Started.into()),
                "services.web.instances.n1.local_expect none -> started",
            ),
            (
                inst.clone(),
                Some(Field::Avail),
                Some(Avail::Down.into()),
                Some(Avail::Up.into()),
                "services.web.instances.n1.avail down -> up",
            ),
            (
                inst.clone(),
                Some(Field::Restarts),
                Some(3u64.into()),
                Some(0u64.into()),
                "services.web.instances.n1.restarts 3 -> 0",
            ),
            (
                inst,
                None,
                None,
                text("present"),
                "services.web.instances.n1 - -> present",
            ),
            (
                svc.clone(),
                Some(Field::GlobalExpect),
                Some(GlobalExpect::None.into()),
                Some(GlobalExpect::PlacedAt("n2.dc".into()).into()),
                "services.web.global_expect none -> placed@n2.dc",
            ),
            (
                svc,
                Some(Field::Version),
                Some(1u64.into()),
                Some(2u64.into()),
                "services.web.version 1 -> 2",
            ),
            (
                Subject::Param,
                Some(Field::Param("node.down_timeout".into())),
                None,
                text("3s"),
                "params.node.down_timeout - -> 3s",
            ),
            (
                Subject::Secrets,
                Some(Field::Accepted("ab12".into())),
                None,
                text("accepted"),
                "secrets.accepted.ab12 - -> accepted",
            ),
            (
                Subject::Secrets,
                Some(Field::Used),
                text("ab12"),
                text("cd34"),
                "secrets.used ab12 -> cd34",
            ),
            (
                Subject::Node { node: "n1".into() },
                Some(Field::Addr),
                text("h:1"),
                text("h:2"),
                "nodes.n1.addr h:1 -> h:2",
            ),
        ];
        for (subject, field, old, new, shown) in cases {
            let e = Event::change(subject, field, old, new);
            assert_eq!(e.to_string(), shown);
            let json = serde_json::to_value(&e).unwrap();
            assert_eq!(json["kind"], "change");
            assert_eq!(json["path"], shown.split(' ').next().unwrap());
            assert_eq!(serde_json::from_value::<Event>(json).unwrap(), e, "{shown}");
            let packed = rmp_serde::to_vec_named(&e).unwrap();
            assert_eq!(
                rmp_serde::from_slice::<Event>(&packed).unwrap(),
                e,
                "{shown}"
            );
        }
    }

    /// A newer node's field or value this version does not know still decodes, as text.
    #[test]
    fn unknown_fields_and_values_decode_as_text() {
        let json = serde_json::json!({"kind": "change", "path": "services.web.colour",
            "subject": {"of": "service", "service": "web"}, "field": "colour",
            "old": null, "new": "blue"});
        let e: Event = serde_json::from_value(json).unwrap();
        assert_eq!(e.to_string(), "services.web.colour - -> blue");
        let Event::Change { field, new, .. } = e else {
            unreachable!()
        };
        assert_eq!(field, Some(Field::Other("colour".into())));
        assert_eq!(new, Some(FieldValue::Text("blue".into())));
        let odd = serde_json::json!({"kind": "change", "path": "x",
            "subject": {"of": "node_monitor", "node": "n1"}, "field": "status",
            "old": "sleeping", "new": "idle"});
        let Event::Change { old, new, .. } = serde_json::from_value(odd).unwrap() else {
            unreachable!()
        };
        assert_eq!(old, Some(FieldValue::Text("sleeping".into())));
        assert_eq!(new, Some(FieldValue::NodeStatus(NodeStatus::Idle)));
    }
}
