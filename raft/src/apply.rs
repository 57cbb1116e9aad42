//! `apply`: the pure transition function of the cluster state.
//!
//! A command is validated in full before anything is written, so a refused command leaves the
//! state exactly as it was; an accepted one reports every field it changed as an event.

use serde::Deserialize;
use serde::Serialize;

use crate::command::Command;
use crate::event::Event;
use crate::event::Field;
use crate::event::FieldValue;
use crate::event::Subject;
use crate::state::ClusterState;
use crate::state::GlobalExpect;
use crate::state::Instance;
use crate::state::LocalExpect;
use crate::state::MonitorStatus;
use crate::state::NodeMonitor;
use crate::state::NodeRecord;
use crate::state::NodeRole;
use crate::state::Service;
use crate::types::node_id;
use crate::types::NodeId;

/// Largest service config text accepted, in bytes.
pub const MAX_CONFIG_LEN: usize = 1 << 20;
/// Largest cluster parameter value accepted, in bytes.
pub const MAX_PARAM_LEN: usize = 4096;

/// What an accepted command did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// How many fields changed (the number of change events).
    pub changed: usize,
    /// The service config version after a create or update.
    pub version: Option<u64>,
}

/// Why a command was refused; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
// Each variant's `#[error]` text is its documentation, naming every field.
#[allow(missing_docs)]
pub enum CommandError {
    #[error("the cluster is not bootstrapped yet")]
    NotBootstrapped,
    #[error("the cluster is already bootstrapped as {cluster:?}")]
    AlreadyBootstrapped { cluster: String },
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        kind: String,
        name: String,
        reason: String,
    },
    #[error("invalid address {addr:?}: expected host:port with a port in 1..=65535")]
    InvalidAddr { addr: String },
    #[error("node {node:?} is not a cluster member")]
    NodeNotFound { node: String },
    #[error("node {node:?} is already a cluster member")]
    NodeExists { node: String },
    #[error("node {node:?} is a witness (node.role = witness) and runs no service instance: pick a service node")]
    Witness { node: String },
    #[error("node name {node:?} belonged to a member that left; a node rejoins under a new name (its Raft id is a hash of the name, and its log was wiped)")]
    NameDeparted { node: String },
    #[error(
        "node name {node:?} hashes to the same raft id as member {other:?}; pick another name"
    )]
    NodeIdCollision { node: String, other: String },
    #[error("node {node:?} is the last member: a cluster cannot be left empty")]
    LastNode { node: String },
    #[error("address {addr} is member {holder:?}'s listener; two members cannot share one address (pick a free port)")]
    AddrTaken { addr: String, holder: String },
    #[error("service {svc:?} does not exist")]
    ServiceNotFound { svc: String },
    #[error("service {svc:?} already exists")]
    ServiceExists { svc: String },
    #[error(
        "service {svc:?} config is at version {actual}, not {expected}: reload and edit again"
    )]
    VersionConflict {
        svc: String,
        expected: u64,
        actual: u64,
    },
    #[error("invalid config for service {svc:?}: {reason}")]
    InvalidConfig { svc: String, reason: String },
    #[error("service {svc:?}: setting {field} needs a node")]
    MissingNode { svc: String, field: String },
    #[error("invalid cluster parameter {key:?}: {reason}")]
    InvalidParam { key: String, reason: String },
    #[error("invalid secret: {reason}")]
    InvalidSecret { reason: String },
    #[error("no accepted secret has key id {key_id:?}; accepted: {accepted}")]
    UnknownSecret { key_id: String, accepted: String },
    #[error(
        "secret {key_id} was removed; a removed secret is never accepted again: generate a new one"
    )]
    SecretRemoved { key_id: String },
    #[error("secret {key_id} is the one nodes use; `use` another one before removing it")]
    SecretInUse { key_id: String },
    #[error("{max} joins are approved and not used yet; let those nodes join first")]
    TooManyApprovals { max: usize },
    #[error("proposal {id} was answered already; it is not applied again")]
    StaleProposal { id: String },
}

/// Applies `cmd` to `state`: the result, and the events describing what changed. A
/// [`Command::Once`] is applied as its command: whether it was applied before is known
/// to [`crate::MachineData`], which keeps the proposals it applied.
///
/// Pure and deterministic: the same state and command give the same result everywhere.
pub fn apply(
    state: &mut ClusterState,
    cmd: &Command,
) -> (Result<Outcome, CommandError>, Vec<Event>) {
    // Whether an entry takes effect at all (a `Once` seen before) is the machine's call.
    let cmd = cmd.inner();
    let mut events = Vec::new();
    let result = match validate(state, cmd) {
        Ok(()) => {
            let version = mutate(state, cmd, &mut events);
            Ok(Outcome {
                changed: events.len(),
                version,
            })
        }
        Err(e) => {
            events.push(Event::Error {
                command: cmd.name().to_string(),
                message: e.to_string(),
            });
            Err(e)
        }
    };
    if cfg!(debug_assertions) {
        state.check_invariants();
    }
    (result, events)
}

fn validate(s: &ClusterState, cmd: &Command) -> Result<(), CommandError> {
    if !s.is_bootstrapped() && !matches!(cmd, Command::Bootstrap { .. }) {
        return Err(CommandError::NotBootstrapped);
    }
    match cmd {
        Command::Once { .. } => unreachable!("apply() validates the inner command"),
        Command::Bootstrap {
            cluster,
            node,
            addr,
            ..
        } => {
            if s.is_bootstrapped() {
                return Err(CommandError::AlreadyBootstrapped {
                    cluster: s.name.clone(),
                });
            }
            check_name("cluster", cluster)?;
            check_name("node", node)?;
            check_addr(addr)
        }
        Command::Join { node, addr, id, .. } => {
            check_name("node", node)?;
            check_addr(addr)?;
            if s.nodes.contains_key(node) {
                return Err(CommandError::NodeExists { node: node.clone() });
            }
            let id = id.unwrap_or_else(|| node_id(node));
            if departed(s, node, id) {
                return Err(CommandError::NameDeparted { node: node.clone() });
            }
            addr_free(s, node, addr)?;
            if let Some((other, _)) = s.nodes.iter().find(|(_, r)| r.id == id) {
                return Err(CommandError::NodeIdCollision {
                    node: node.clone(),
                    other: other.clone(),
                });
            }
            Ok(())
        }
        Command::Leave { node } => {
            member(s, node)?;
            if s.nodes.len() == 1 {
                return Err(CommandError::LastNode { node: node.clone() });
            }
            Ok(())
        }
        Command::SetNodeAddr { node, addr } => {
            member(s, node)?;
            check_addr(addr)?;
            addr_free(s, node, addr)
        }
        Command::SetNodeMonitor { node, .. } | Command::SetNodeRole { node, .. } => member(s, node),
        Command::SetServiceMonitor {
            svc,
            node,
            status,
            local_expect,
            global_expect,
            ..
        } => {
            service(s, svc)?;
            match node {
                Some(n) => member(s, n)?,
                None if status.is_some() => return Err(missing_node(svc, "status")),
                None if local_expect.is_some() => return Err(missing_node(svc, "local_expect")),
                None => {}
            }
            if let Some(GlobalExpect::PlacedAt(n)) = global_expect {
                member(s, n)?;
                if s.is_witness(n) {
                    return Err(CommandError::Witness { node: n.clone() });
                }
            }
            Ok(())
        }
        Command::Clear { svc, node } => {
            service(s, svc)?;
            node.as_ref().map_or(Ok(()), |n| member(s, n))
        }
        Command::CreateService { svc, config } => {
            check_name("service", svc)?;
            if s.services.contains_key(svc) {
                return Err(CommandError::ServiceExists { svc: svc.clone() });
            }
            check_config(svc, config)
        }
        Command::UpdateService {
            svc,
            config,
            expected_version,
        } => {
            let current = service(s, svc)?;
            if let Some(expected) = expected_version {
                if *expected != current.version {
                    return Err(CommandError::VersionConflict {
                        svc: svc.clone(),
                        expected: *expected,
                        actual: current.version,
                    });
                }
            }
            check_config(svc, config)
        }
        Command::DeleteService { svc } => service(s, svc).map(|_| ()),
        Command::SetClusterParam { key, value } => check_param(key, value.as_deref()),
        Command::ReportInstance { svc, node, .. } => {
            service(s, svc)?;
            member(s, node)
        }
        Command::AddSecret { .. } | Command::UseSecret { .. } | Command::RemoveSecret { .. } => {
            crate::secrets::validate(&s.secrets, cmd)
        }
        Command::ApproveJoin { node, .. } => {
            check_name("node", node)?;
            if s.nodes.contains_key(node) {
                return Err(CommandError::NodeExists { node: node.clone() });
            }
            let max = crate::state::MAX_JOIN_APPROVALS;
            if s.join_approvals.len() >= max && !s.join_approvals.contains_key(node) {
                return Err(CommandError::TooManyApprovals { max });
            }
            Ok(())
        }
    }
}

/// Applies a validated command; returns the service version it set, if any.
fn mutate(s: &mut ClusterState, cmd: &Command, ev: &mut Vec<Event>) -> Option<u64> {
    match cmd {
        Command::Once { .. } => unreachable!("apply() mutates by the inner command"),
        Command::Bootstrap {
            cluster,
            node,
            addr,
            at_ms,
            id,
        } => {
            ev.push(Event::change(
                Subject::Cluster,
                Some(Field::Name),
                None,
                Some(cluster.clone().into()),
            ));
            s.name = cluster.clone();
            add_node(
                s,
                node,
                addr,
                *at_ms,
                id.unwrap_or_else(|| node_id(node)),
                ev,
            );
        }
        Command::Join {
            node,
            addr,
            at_ms,
            id,
        } => {
            let id = id.unwrap_or_else(|| node_id(node));
            // A new store incarnation brings a departed name back.
            s.departed.remove(node);
            if let Some(at) = s.join_approvals.remove(node) {
                ev.push(Event::change(
                    Subject::JoinApproval { node: node.clone() },
                    None,
                    Some(at.to_string().into()),
                    None,
                ));
            }
            add_node(s, node, addr, *at_ms, id, ev)
        }
        Command::Leave { node } => {
            let rec = s.nodes.remove(node).expect("validated");
            s.departed_ids.insert(rec.id);
            ev.push(Event::change(
                node_subject(node),
                None,
                Some(rec.addr.into()),
                None,
            ));
            s.departed.insert(node.clone());
            s.node_monitors.remove(node);
            for (svc, service) in s.services.iter_mut() {
                if service.instances.remove(node).is_some() {
                    ev.push(Event::change(
                        instance_subject(svc, node),
                        None,
                        Some(present()),
                        None,
                    ));
                }
                if service.global_expect == GlobalExpect::PlacedAt(node.clone()) {
                    let subject = service_subject(svc);
                    let slot = &mut service.global_expect;
                    set(ev, &subject, Field::GlobalExpect, slot, GlobalExpect::None);
                }
            }
        }
        Command::SetNodeAddr { node, addr } => {
            let rec = s.nodes.get_mut(node).expect("validated");
            set(
                ev,
                &node_subject(node),
                Field::Addr,
                &mut rec.addr,
                addr.clone(),
            );
        }
        Command::SetNodeRole { node, role } => {
            let rec = s.nodes.get_mut(node).expect("validated");
            set(ev, &node_subject(node), Field::Role, &mut rec.role, *role);
        }
        Command::SetNodeMonitor {
            node,
            status,
            local_expect,
            frozen,
        } => {
            let m = s.node_monitors.get_mut(node).expect("validated");
            let p = Subject::NodeMonitor { node: node.clone() };
            set_opt(ev, &p, Field::Status, &mut m.status, *status);
            set_opt(
                ev,
                &p,
                Field::LocalExpect,
                &mut m.local_expect,
                *local_expect,
            );
            set_opt(ev, &p, Field::Frozen, &mut m.frozen, *frozen);
        }
        Command::SetServiceMonitor {
            svc,
            node,
            status,
            local_expect,
            global_expect,
            reset_retries,
        } => {
            let service = s.services.get_mut(svc).expect("validated");
            set_opt(
                ev,
                &service_subject(svc),
                Field::GlobalExpect,
                &mut service.global_expect,
                global_expect.clone(),
            );
            if let Some(n) = node {
                let inst = instance(service, svc, n, ev);
                let ip = instance_subject(svc, n);
                set_opt(ev, &ip, Field::Status, &mut inst.status, *status);
                let starts = inst.local_expect != LocalExpect::Started
                    && *local_expect == Some(LocalExpect::Started);
                inst.started_gen += u64::from(starts);
                set_opt(
                    ev,
                    &ip,
                    Field::LocalExpect,
                    &mut inst.local_expect,
                    *local_expect,
                );
            }
            if *reset_retries {
                for (n, inst) in service.instances.iter_mut() {
                    if node.as_ref().is_none_or(|want| want == n) {
                        reset_restarts(ev, &instance_subject(svc, n), inst);
                    }
                }
            }
        }
        Command::Clear { svc, node } => {
            let service = s.services.get_mut(svc).expect("validated");
            for (n, inst) in service.instances.iter_mut() {
                if node.as_ref().is_some_and(|want| want != n) {
                    continue;
                }
                let ip = instance_subject(svc, n);
                if matches!(
                    inst.status,
                    MonitorStatus::StartFailed | MonitorStatus::StopFailed
                ) {
                    set(
                        ev,
                        &ip,
                        Field::Status,
                        &mut inst.status,
                        MonitorStatus::Idle,
                    );
                }
                reset_restarts(ev, &ip, inst);
            }
        }
        Command::CreateService { svc, config } => {
            ev.push(Event::change(
                service_subject(svc),
                Some(Field::Version),
                None,
                Some(1u64.into()),
            ));
            s.services.insert(
                svc.clone(),
                Service {
                    config: config.clone(),
                    version: 1,
                    ..Service::default()
                },
            );
            return Some(1);
        }
        Command::UpdateService { svc, config, .. } => {
            let service = s.services.get_mut(svc).expect("validated");
            if service.config == *config {
                return Some(service.version);
            }
            service.config = config.clone();
            let next = service.version + 1;
            set(
                ev,
                &service_subject(svc),
                Field::Version,
                &mut service.version,
                next,
            );
            return Some(next);
        }
        Command::DeleteService { svc } => {
            let old = s.services.remove(svc).expect("validated");
            ev.push(Event::change(
                service_subject(svc),
                Some(Field::Version),
                Some(old.version.into()),
                None,
            ));
        }
        Command::SetClusterParam { key, value } => {
            let old = match value {
                Some(v) => s.params.insert(key.clone(), v.clone()),
                None => s.params.remove(key),
            };
            if old != *value {
                ev.push(Event::change(
                    Subject::Param,
                    Some(Field::Param(key.clone())),
                    old.map(FieldValue::Text),
                    value.clone().map(FieldValue::Text),
                ));
            }
        }
        Command::ReportInstance {
            svc,
            node,
            avail,
            status,
            frozen,
            restarts,
            at_ms,
            started_gen,
        } => {
            let service = s.services.get_mut(svc).expect("validated");
            let inst = instance(service, svc, node, ev);
            if let Some(seen) = started_gen {
                inst.reported_gen = Some(inst.reported_gen.map_or(*seen, |g| g.max(*seen)));
            }
            let ip = instance_subject(svc, node);
            set(ev, &ip, Field::Avail, &mut inst.avail, *avail);
            set_opt(ev, &ip, Field::Status, &mut inst.status, *status);
            set_opt(ev, &ip, Field::Frozen, &mut inst.frozen, *frozen);
            if inst.restarts != *restarts {
                ev.push(Event::change(
                    ip,
                    Some(Field::Restarts),
                    Some(total(&inst.restarts).into()),
                    Some(total(restarts).into()),
                ));
                inst.restarts = restarts.clone();
            }
            inst.updated_at_ms = *at_ms;
        }
        Command::AddSecret { .. } | Command::UseSecret { .. } | Command::RemoveSecret { .. } => {
            crate::secrets::mutate(&mut s.secrets, cmd, ev)
        }
        Command::ApproveJoin { node, at_ms } => {
            let old = s.join_approvals.insert(node.clone(), *at_ms);
            ev.push(Event::change(
                Subject::JoinApproval { node: node.clone() },
                None,
                old.map(|t| t.to_string().into()),
                Some(at_ms.to_string().into()),
            ));
        }
    }
    None
}

fn add_node(
    s: &mut ClusterState,
    node: &str,
    addr: &str,
    at_ms: u64,
    id: NodeId,
    ev: &mut Vec<Event>,
) {
    s.nodes.insert(
        node.to_string(),
        NodeRecord {
            addr: addr.to_string(),
            joined_at_ms: at_ms,
            id,
            role: NodeRole::Normal,
        },
    );
    s.node_monitors
        .insert(node.to_string(), NodeMonitor::default());
    ev.push(Event::change(
        node_subject(node),
        None,
        None,
        Some(addr.to_string().into()),
    ));
}

/// The instance of `svc` on `node`, created (with an event) if the node had none.
fn instance<'a>(
    service: &'a mut Service,
    svc: &str,
    node: &str,
    ev: &mut Vec<Event>,
) -> &'a mut Instance {
    if !service.instances.contains_key(node) {
        ev.push(Event::change(
            instance_subject(svc, node),
            None,
            None,
            Some(present()),
        ));
    }
    service.instances.entry(node.to_string()).or_default()
}

fn reset_restarts(ev: &mut Vec<Event>, instance: &Subject, inst: &mut Instance) {
    if !inst.restarts.is_empty() {
        ev.push(Event::change(
            instance.clone(),
            Some(Field::Restarts),
            Some(total(&inst.restarts).into()),
            Some(0u64.into()),
        ));
        inst.restarts.clear();
    }
}

fn total(restarts: &std::collections::BTreeMap<String, u32>) -> u64 {
    restarts.values().map(|v| u64::from(*v)).sum()
}

fn node_subject(node: &str) -> Subject {
    Subject::Node { node: node.into() }
}

fn service_subject(svc: &str) -> Subject {
    Subject::Service {
        service: svc.into(),
    }
}

fn instance_subject(svc: &str, node: &str) -> Subject {
    Subject::Instance {
        service: svc.into(),
        node: node.into(),
    }
}

/// The value a created instance has, and a removed one had.
fn present() -> FieldValue {
    FieldValue::Text("present".into())
}

fn set<T: PartialEq + Clone + Into<FieldValue>>(
    ev: &mut Vec<Event>,
    subject: &Subject,
    field: Field,
    slot: &mut T,
    new: T,
) {
    if *slot != new {
        ev.push(Event::change(
            subject.clone(),
            Some(field),
            Some(slot.clone().into()),
            Some(new.clone().into()),
        ));
        *slot = new;
    }
}

fn set_opt<T: PartialEq + Clone + Into<FieldValue>>(
    ev: &mut Vec<Event>,
    subject: &Subject,
    field: Field,
    slot: &mut T,
    new: Option<T>,
) {
    if let Some(new) = new {
        set(ev, subject, field, slot, new);
    }
}

fn member(s: &ClusterState, node: &str) -> Result<(), CommandError> {
    if s.nodes.contains_key(node) {
        Ok(())
    } else {
        Err(CommandError::NodeNotFound {
            node: node.to_string(),
        })
    }
}

fn service<'a>(s: &'a ClusterState, svc: &str) -> Result<&'a Service, CommandError> {
    s.services
        .get(svc)
        .ok_or_else(|| CommandError::ServiceNotFound {
            svc: svc.to_string(),
        })
}

fn missing_node(svc: &str, field: &str) -> CommandError {
    CommandError::MissingNode {
        svc: svc.to_string(),
        field: field.to_string(),
    }
}

/// Node, service and cluster names: 1 to 64 of `[A-Za-z0-9_.-]`, starting with a letter or digit.
pub fn check_name(kind: &str, name: &str) -> Result<(), CommandError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 64 {
        Some("it is longer than 64 bytes")
    } else if !name.as_bytes()[0].is_ascii_alphanumeric() {
        Some("it must start with a letter or a digit")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        Some("allowed characters are letters, digits, '_', '.' and '-'")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(r) => Err(CommandError::InvalidName {
            kind: kind.to_string(),
            name: name.to_string(),
            reason: r.to_string(),
        }),
    }
}

pub(crate) fn check_addr(addr: &str) -> Result<(), CommandError> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(CommandError::InvalidAddr {
            addr: addr.to_string(),
        })
    }
}

/// Whether the store incarnation `id` of `node` left the cluster: its id is recorded as
/// departed, or (an older proposer, whose id is the name's hash) its name is.
pub fn departed(s: &ClusterState, node: &str, id: NodeId) -> bool {
    s.departed_ids.contains(&id) || (id == node_id(node) && s.departed.contains(node))
}

/// Refuses `addr` for `node` when another member listens there: Raft RPCs meant for one
/// would reach the other.
fn addr_free(s: &ClusterState, node: &str, addr: &str) -> Result<(), CommandError> {
    match s
        .nodes
        .iter()
        .find(|(n, r)| n.as_str() != node && r.addr == addr)
    {
        Some((holder, _)) => Err(CommandError::AddrTaken {
            addr: addr.to_string(),
            holder: holder.clone(),
        }),
        None => Ok(()),
    }
}

fn check_config(svc: &str, config: &str) -> Result<(), CommandError> {
    let reason = if config.trim().is_empty() {
        "it is empty".to_string()
    } else if config.len() > MAX_CONFIG_LEN {
        format!(
            "it is {} bytes, the limit is {MAX_CONFIG_LEN}",
            config.len()
        )
    } else {
        return Ok(());
    };
    Err(CommandError::InvalidConfig {
        svc: svc.to_string(),
        reason,
    })
}

/// Cluster parameters: `section.key`, lower case; a few known keys have a closed value set.
fn check_param(key: &str, value: Option<&str>) -> Result<(), CommandError> {
    let bad = |reason: String| {
        Err(CommandError::InvalidParam {
            key: key.to_string(),
            reason,
        })
    };
    let Some((section, name)) = key.split_once('.') else {
        return bad("expected section.key".into());
    };
    let word = |w: &str| {
        !w.is_empty()
            && w.len() <= 64
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_#.-".contains(&b))
    };
    if !word(section) || !word(name) {
        return bad("section and key are 1 to 64 of [a-z0-9_#.-]".into());
    }
    if key == "cluster.name" {
        return bad("the cluster name is fixed at bootstrap".into());
    }
    let Some(v) = value else { return Ok(()) };
    if v.len() > MAX_PARAM_LEN {
        return bad(format!("value is longer than {MAX_PARAM_LEN} bytes"));
    }
    match key {
        "node.split_action" if !matches!(v, "stop" | "none") => {
            bad(format!("value {v:?} is not one of: stop, none"))
        }
        "node.down_timeout" if parse_duration_ms(v).is_none() => bad(format!(
            "value {v:?} is not a duration (e.g. 5s, 500ms, 1m)"
        )),
        "cluster.join" if !matches!(v, "open" | "approve") => {
            bad(format!("value {v:?} is not one of: open, approve"))
        }
        _ => Ok(()),
    }
}

/// Parses `500ms`, `5s`, `1m`, or a bare number of seconds, into milliseconds.
pub fn parse_duration_ms(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, mult) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000)
    } else {
        (v, 1000)
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}
