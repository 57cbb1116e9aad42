//! Backups of the replicated state (`om cluster snapshot save|status|restore`): the file
//! format, and the first state of the new cluster a backup is restored into.
//!
//! A backup is one JSON line, its [`Header`], then the state machine's data as a Raft
//! snapshot holds it ([`MachineData`] in MessagePack). The header says what the backup is of
//! (`head -1 FILE` shows it) and carries the body's length and SHA-256: a truncated or
//! damaged file is refused before any of it is used, and so is a body that breaks the
//! state's invariants.
//!
//! Restoring does what etcd's `snapshot restore` does, for the same reason: a state taken
//! from one cluster cannot rejoin that cluster's log, so it becomes the first state of a new
//! cluster. Its only member is the restoring node, with its new store's Raft id and its
//! listener address; every other member is removed as `leave` removes it (its store id
//! departs, so an old store never joins again), and comes back with `join`, on a new store.
//! This module is pure; the daemon writes the result into an empty store.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use openraft::Membership;
use openraft::StoredMembership;
use serde::Deserialize;
use serde::Serialize;
use sha2::Digest;

use crate::machine::MachineData;
use crate::machine::Proposals;
use crate::state::NodeExpect;
use crate::state::NodeRecord;
use crate::Command;
use crate::Member;
use crate::NodeId;

/// What the header's `format` says.
pub const FORMAT: &str = "om-snapshot";

/// The format version this code writes and reads.
pub const VERSION: u32 = 1;

/// The largest header line read: a header lists the members and services by name.
const MAX_HEADER: usize = 1 << 20;

/// The highest term or index a backup may hold: openraft adds to both, and a crafted file
/// must not make it overflow once the store is replaced.
const MAX_LOG_ID: u64 = 1 << 62;

/// The first line of a backup: what it is of, and how to check its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// The format version ([`VERSION`]).
    pub version: u32,
    /// The cluster the state is of.
    pub cluster: String,
    /// The node whose applied state it is.
    pub node: String,
    /// That node's wall clock when it was taken (ms since the epoch).
    pub taken_at_ms: u64,
    /// The Raft term of the last entry applied.
    pub term: u64,
    /// The Raft index of the last entry applied.
    pub index: u64,
    /// The members then.
    pub members: Vec<String>,
    /// The services then.
    pub services: Vec<String>,
    /// [`MachineData::digest`] of the state.
    pub digest: String,
    /// The body's length in bytes.
    pub bytes: u64,
    /// The body's SHA-256, in hex.
    pub sha256: String,
    /// The om version that wrote it.
    #[serde(default)]
    pub written_by: String,
}

/// Why a file is not a backup this code can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    /// The first line is not a backup header.
    #[error(
        "not an om snapshot: its first line is not an `{FORMAT}` header ({why}); \
         `om cluster snapshot save FILE` writes one"
    )]
    NotABackup {
        /// What was wrong with the first line.
        why: String,
    },
    /// A format version this code does not read.
    #[error(
        "snapshot format version {found}: this om reads version {VERSION}; restore it with \
         the om that wrote it (its header's written_by)"
    )]
    Version {
        /// The version in the header.
        found: u32,
    },
    /// The body is shorter or longer than the header says.
    #[error("the snapshot is truncated or has trailing bytes: its header says {expected} bytes of state, the file has {found}")]
    Length {
        /// What the header says.
        expected: u64,
        /// What the file holds after the header.
        found: u64,
    },
    /// The body's checksum differs from the header's.
    #[error("the snapshot is damaged: its state's SHA-256 is {found}, its header says {expected}")]
    Checksum {
        /// What the header says.
        expected: String,
        /// What the body hashes to.
        found: String,
    },
    /// The body does not decode, breaks an invariant, or contradicts its header.
    #[error("the snapshot's state is not usable: {0}")]
    State(String),
}

/// A backup of `data`, the applied state of `node`, taken at `taken_at_ms`: the file's bytes
/// and its header.
pub fn encode(data: &MachineData, node: &str, taken_at_ms: u64) -> (Header, Vec<u8>) {
    let body = data.to_bytes();
    let last = data.last_applied.unwrap_or_default();
    let header = Header {
        format: FORMAT.to_string(),
        version: VERSION,
        cluster: data.cluster.name.clone(),
        node: node.to_string(),
        taken_at_ms,
        term: last.leader_id.term,
        index: last.index,
        members: data.cluster.nodes.keys().cloned().collect(),
        services: data.cluster.services.keys().cloned().collect(),
        digest: data.digest(),
        bytes: body.len() as u64,
        sha256: sha256_hex(&body),
        written_by: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut out = serde_json::to_vec(&header).expect("a header always serializes");
    out.push(b'\n');
    out.extend_from_slice(&body);
    (header, out)
}

/// The header and the state of a backup, each checked: format, version, length, checksum,
/// the state decoding, its invariants, its names, addresses and secrets being ones `apply`
/// accepts, and the header agreeing with it.
pub fn decode(file: &[u8]) -> Result<(Header, MachineData), BackupError> {
    let (header, body) = split(file)?;
    let data = MachineData::from_bytes(body).map_err(|e| BackupError::State(e.to_string()))?;
    let checked = match data.cluster.broken_invariant() {
        Some(broken) => Err(broken),
        None => check_values(&data),
    };
    checked.map_err(BackupError::State)?;
    let stated = Header {
        written_by: header.written_by.clone(),
        ..encode(&data, &header.node, header.taken_at_ms).0
    };
    if stated != header {
        let from = match header.written_by.as_str() {
            env!("CARGO_PKG_VERSION") => String::new(),
            v => format!(
                " (written by om {v:?}, this is om {})",
                env!("CARGO_PKG_VERSION")
            ),
        };
        return Err(BackupError::State(format!(
            "its header does not describe its state{from}"
        )));
    }
    Ok((header, data))
}

/// What `apply` would have refused to write: a state from a file is checked as commands are.
fn check_values(data: &MachineData) -> Result<(), String> {
    let s = &data.cluster;
    let unborn = "it was taken before its cluster was bootstrapped: there is nothing to restore";
    let last = data.last_applied.ok_or(unborn)?;
    if !s.is_bootstrapped() {
        return Err(unborn.into());
    }
    if last.leader_id.term > MAX_LOG_ID || last.index > MAX_LOG_ID {
        return Err(format!("its last log id {last} is beyond {MAX_LOG_ID}"));
    }
    let named =
        |kind: &str, name: &str| crate::apply::check_name(kind, name).map_err(|e| e.to_string());
    named("cluster", &s.name)?;
    for (node, rec) in &s.nodes {
        named("node", node)?;
        crate::apply::check_addr(&rec.addr).map_err(|e| e.to_string())?;
    }
    for svc in s.services.keys() {
        named("service", svc)?;
    }
    for (fp, value) in &s.secrets.accepted {
        crate::secrets::check_secret(value.expose())
            .map_err(|e| format!("accepted secret {fp}: {e}"))?;
    }
    Ok(())
}

/// The header line parsed and the body's length and checksum checked against it.
fn split(file: &[u8]) -> Result<(Header, &[u8]), BackupError> {
    let not = |why: String| BackupError::NotABackup { why };
    if file.is_empty() {
        return Err(not("the file is empty".into()));
    }
    let end = file
        .iter()
        .take(MAX_HEADER)
        .position(|b| *b == b'\n')
        .ok_or_else(|| not("no line break in its first MiB".into()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&file[..end]).map_err(|e| not(format!("not JSON: {e}")))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(not(format!("its \"format\" is not {FORMAT:?}")));
    }
    if let Some(found) = value.get("version").and_then(|v| v.as_u64()) {
        if found != u64::from(VERSION) {
            return Err(BackupError::Version {
                found: u32::try_from(found).unwrap_or(u32::MAX),
            });
        }
    }
    let header: Header = serde_json::from_value(value).map_err(|e| not(e.to_string()))?;
    let body = &file[end + 1..];
    if body.len() as u64 != header.bytes {
        return Err(BackupError::Length {
            expected: header.bytes,
            found: body.len() as u64,
        });
    }
    let found = sha256_hex(body);
    if found != header.sha256 {
        return Err(BackupError::Checksum {
            expected: header.sha256,
            found,
        });
    }
    Ok((header, body))
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The node a backup is restored on: the only member of the new cluster.
#[derive(Debug, Clone)]
pub struct NewCluster<'a> {
    /// The new cluster's name (the restoring node's `cluster.name`).
    pub cluster: &'a str,
    /// The restoring node's name.
    pub node: &'a str,
    /// The Raft id of its new store.
    pub id: NodeId,
    /// Its listener address.
    pub addr: &'a str,
    /// Its wall clock now (ms), recorded as its join time if the backup did not know it.
    pub at_ms: u64,
}

/// What restoring changed, beyond the state itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// The members of the backup that are no longer members (they rejoin with `join`).
    pub removed: Vec<String>,
    /// The backup's cluster name, when the new cluster has another one.
    pub renamed_from: Option<String>,
    /// The key id of the backup's rotated secret, which the new cluster uses (and the
    /// node installs in node.conf); `None`: the node keeps its node.conf secret.
    pub secret_in_use: Option<String>,
}

/// `data`, a decoded backup, as the first state of the cluster `to` founds: `to.node` its
/// only member and voter (with `to.id` and `to.addr`; the store id it had in the backup
/// retired, as every other member's), the other members removed as by `leave`, join
/// approvals and remembered proposals dropped (they belonged to the old cluster's
/// clients). `to.node` is frozen (`local_expect = frozen`): a restored state starts no
/// service until an operator thaws the node, since a clone on another site must not take
/// the original's addresses and disks by itself. Services, their configs and targets,
/// instances on `to.node`, parameters and the secret rotation plan are kept.
pub fn restore(mut data: MachineData, to: &NewCluster) -> Result<(MachineData, Restored), String> {
    let s = &mut data.cluster;
    if s.departed_ids.contains(&to.id) || s.nodes.values().any(|r| r.id == to.id) {
        return Err(format!(
            "raft id {} is one the backup's cluster used or retired; a new store has a new one",
            to.id
        ));
    }
    let renamed_from =
        (s.name != to.cluster).then(|| std::mem::replace(&mut s.name, to.cluster.into()));
    let kept = s.nodes.remove(to.node);
    s.nodes.insert(
        to.node.to_string(),
        NodeRecord {
            addr: to.addr.to_string(),
            joined_at_ms: kept.as_ref().map_or(to.at_ms, |r| r.joined_at_ms),
            id: to.id,
            role: kept.as_ref().map(|r| r.role).unwrap_or_default(),
        },
    );
    if let Some(old) = &kept {
        s.departed_ids.insert(old.id);
    }
    let monitor = s.node_monitors.entry(to.node.to_string()).or_default();
    monitor.local_expect = NodeExpect::Frozen;
    s.departed.remove(to.node);
    let removed: Vec<String> = s.nodes.keys().filter(|n| *n != to.node).cloned().collect();
    for node in &removed {
        let leave = Command::Leave { node: node.clone() };
        crate::apply(s, &leave)
            .0
            .map_err(|e| format!("removing {node}: {e}"))?;
    }
    s.join_approvals.clear();
    data.proposals = Proposals::default();
    let voters = BTreeSet::from([to.id]);
    let nodes = BTreeMap::from([(to.id, Member::new(to.node, to.addr))]);
    data.membership =
        StoredMembership::new(data.last_applied, Membership::new(vec![voters], nodes));
    if let Some(broken) = data.cluster.broken_invariant() {
        return Err(format!("the restored state breaks an invariant: {broken}"));
    }
    let rotated = data.cluster.secrets.materialize().is_some();
    let done = Restored {
        removed,
        renamed_from,
        secret_in_use: data.cluster.secrets.used.clone().filter(|_| rotated),
    };
    Ok((data, done))
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;
    use openraft::LogId;

    use super::*;
    use crate::apply::departed;
    use crate::state::GlobalExpect;
    use crate::ClusterState;

    fn must(s: &mut ClusterState, cmd: Command) {
        crate::apply(s, &cmd).0.unwrap();
    }

    /// A 3-member cluster with two services, one placed on n3, as applied at index 40.
    fn backup_of_three() -> MachineData {
        let mut s = ClusterState::default();
        let node = |n: &str| n.to_string();
        must(
            &mut s,
            Command::Bootstrap {
                cluster: "c1".into(),
                node: node("n1"),
                addr: "10.0.0.1:1215".into(),
                at_ms: 1,
                id: Some(11),
            },
        );
        for (n, id) in [("n2", 12), ("n3", 13)] {
            let addr = format!("10.0.0.{}:1215", id - 10);
            must(
                &mut s,
                Command::Join {
                    node: node(n),
                    addr,
                    at_ms: 2,
                    id: Some(id),
                },
            );
        }
        for svc in ["web", "db"] {
            let config = "[DEFAULT]\nnodes = *\n".to_string();
            must(
                &mut s,
                Command::CreateService {
                    svc: svc.into(),
                    config,
                },
            );
        }
        must(
            &mut s,
            Command::SetServiceMonitor {
                svc: "db".into(),
                node: None,
                status: None,
                local_expect: None,
                global_expect: Some(GlobalExpect::PlacedAt("n3".into())),
                reset_retries: false,
            },
        );
        let last = LogId::new(CommittedLeaderId::new(7, 11), 40);
        MachineData {
            last_applied: Some(last),
            cluster: s,
            ..MachineData::default()
        }
    }

    #[test]
    fn a_backup_decodes_to_the_state_it_was_made_of() {
        let data = backup_of_three();
        let (written, file) = encode(&data, "n1", 99);
        let (header, back) = decode(&file).unwrap();
        assert_eq!(back, data);
        assert_eq!(header, written);
        assert_eq!(
            (header.term, header.index, header.node.as_str()),
            (7, 40, "n1")
        );
        assert_eq!(header.members, ["n1", "n2", "n3"]);
        assert_eq!(header.services, ["db", "web"]);
    }

    #[test]
    fn a_damaged_or_cut_backup_is_refused() {
        let (_, file) = encode(&backup_of_three(), "n1", 99);
        let body_at = file.iter().position(|b| *b == b'\n').unwrap() + 1;
        let mut flipped = file.clone();
        flipped[body_at + 10] ^= 0x40;
        assert!(matches!(
            decode(&flipped),
            Err(BackupError::Checksum { .. })
        ));
        let cut = &file[..file.len() - 1];
        assert!(matches!(decode(cut), Err(BackupError::Length { .. })));
        assert!(matches!(
            decode(&file[..body_at - 1]),
            Err(BackupError::NotABackup { .. })
        ));
        let conf = b"[node]\nname = n1\n";
        let e = decode(conf).unwrap_err();
        assert!(e.to_string().contains("not an om snapshot"), "{e}");
        let v2 = String::from_utf8_lossy(&file).replacen("\"version\":1", "\"version\":2", 1);
        assert_eq!(
            decode(v2.as_bytes()),
            Err(BackupError::Version { found: 2 })
        );
    }

    #[test]
    fn a_backup_whose_checksum_matches_but_whose_state_is_broken_is_refused() {
        let mut data = backup_of_three();
        data.cluster.node_monitors.remove("n2");
        let e = decode(&encode(&data, "n1", 1).1).unwrap_err();
        assert!(matches!(e, BackupError::State(_)), "{e}");
        let (_, mut header_lies) = encode(&backup_of_three(), "n1", 1);
        let at = header_lies
            .windows(8)
            .position(|w| w == b"\"digest\"")
            .unwrap()
            + 10;
        header_lies[at] = if header_lies[at] == b'0' { b'1' } else { b'0' };
        assert!(matches!(decode(&header_lies), Err(BackupError::State(_))));
    }

    /// A file whose checksum is right (anyone can compute one) but whose content `apply`
    /// would never have written.
    #[test]
    fn a_crafted_backup_is_refused() {
        let forged = |edit: fn(&mut MachineData)| {
            let mut data = backup_of_three();
            edit(&mut data);
            decode(&encode(&data, "n1", 1).1).unwrap_err().to_string()
        };
        let e =
            forged(|d| d.last_applied = Some(LogId::new(CommittedLeaderId::new(u64::MAX, 11), 40)));
        assert!(e.contains("beyond"), "{e}");
        let e = forged(|d| {
            let rec = d.cluster.nodes.remove("n2").unwrap();
            let monitor = d.cluster.node_monitors.remove("n2").unwrap();
            d.cluster.nodes.insert("n 2\n".into(), rec);
            d.cluster.node_monitors.insert("n 2\n".into(), monitor);
        });
        assert!(e.contains("node"), "{e}");
        let e = forged(|d| d.cluster.nodes.get_mut("n3").unwrap().addr = "nowhere".into());
        assert!(e.contains("nowhere"), "{e}");
        let (_, mut lying) = encode(&backup_of_three(), "n1", 1);
        let at = lying
            .windows(10)
            .position(|w| w == b"\"index\":40")
            .unwrap();
        lying[at + 9] = b'1';
        let e = decode(&lying).unwrap_err().to_string();
        assert!(e.contains("header does not describe"), "{e}");
        assert!(decode(b"").unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn restoring_founds_a_cluster_of_the_restoring_node_alone() {
        let to = NewCluster {
            cluster: "c2",
            node: "n1",
            id: 21,
            addr: "10.0.1.1:1215",
            at_ms: 5,
        };
        let (data, done) = restore(backup_of_three(), &to).unwrap();
        assert_eq!(done.removed, ["n2", "n3"]);
        assert_eq!(done.renamed_from.as_deref(), Some("c1"));
        let s = &data.cluster;
        assert_eq!(s.name, "c2");
        assert_eq!(s.nodes.keys().collect::<Vec<_>>(), ["n1"]);
        let rec = &s.nodes["n1"];
        assert_eq!(
            (rec.id, rec.addr.as_str(), rec.joined_at_ms),
            (21, "10.0.1.1:1215", 1)
        );
        assert_eq!(s.services.keys().collect::<Vec<_>>(), ["db", "web"]);
        assert_eq!(
            s.services["db"].global_expect,
            GlobalExpect::None,
            "placed on a removed member"
        );
        let voters: Vec<_> = data.membership.membership().voter_ids().collect();
        assert_eq!(voters, [21]);
        assert_eq!(data.membership.log_id(), &data.last_applied);
        // The old stores never join again (the restoring node's own old one neither); the
        // names come back on new stores.
        assert!(departed(s, "n1", 11) && departed(s, "n2", 12) && departed(s, "n3", 13));
        assert_eq!(
            s.node_monitors["n1"].local_expect,
            NodeExpect::Frozen,
            "until thawed"
        );
        assert!(!departed(s, "n2", 32));
        let mut s = data.cluster.clone();
        let rejoin = Command::Join {
            node: "n2".into(),
            addr: "10.0.0.2:1215".into(),
            at_ms: 6,
            id: Some(32),
        };
        must(&mut s, rejoin);
    }

    #[test]
    fn a_backup_restores_on_a_node_it_never_had() {
        let to = NewCluster {
            cluster: "c1",
            node: "fresh",
            id: 31,
            addr: "10.0.0.1:1215",
            at_ms: 5,
        };
        let (data, done) = restore(backup_of_three(), &to).unwrap();
        assert_eq!(done.removed, ["n1", "n2", "n3"]);
        assert_eq!(done.renamed_from, None);
        assert_eq!(data.cluster.nodes.keys().collect::<Vec<_>>(), ["fresh"]);
        assert_eq!(data.cluster.nodes["fresh"].joined_at_ms, 5);
        let retired = NewCluster { id: 12, ..to };
        assert!(restore(backup_of_three(), &retired)
            .unwrap_err()
            .contains("used or retired"));
    }
}
