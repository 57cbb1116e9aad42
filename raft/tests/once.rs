//! `Command::Once` through the state machine: a proposal applied twice takes effect once
//! and answers the second copy with the first one's reply, refusals included; a session's
//! floor forgets answered proposals and refuses their late copies; sessions and replies
//! are bounded, survive a snapshot, and the digest covers them.

mod common;

use openraft::Entry;
use openraft::EntryPayload;
use openraft::LogId;
use raft::command::ProposalId;
use raft::machine::MAX_PER_SESSION;
use raft::machine::MAX_SESSIONS;
use raft::Command;
use raft::MachineData;
use raft::TypeConfig;

fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn id(seq: u64) -> ProposalId {
    ProposalId { session: 7, seq }
}

/// A machine holding a bootstrapped cluster.
fn machine() -> MachineData {
    MachineData {
        cluster: common::bootstrapped(),
        ..MachineData::default()
    }
}

fn set(value: &str) -> Command {
    Command::SetClusterParam {
        key: "x.y".into(),
        value: Some(value.into()),
    }
}

fn param(m: &MachineData) -> Option<&str> {
    m.cluster.params.get("x.y").map(String::as_str)
}

#[test]
fn a_retried_proposal_takes_effect_once() {
    let mut m = machine();
    let first = m.apply_entry(&entry(2, set("a").once(id(1), 0))).0;
    assert_eq!(first.as_ref().unwrap().changed, 1);
    m.apply_entry(&entry(3, set("b"))).0.unwrap();
    // The copy of the first proposal, committed after the write of "b": "a" must not come back.
    let (again, events) = m.apply_entry(&entry(4, set("a").once(id(1), 0)));
    assert_eq!(again, first, "the second copy gets the first one's reply");
    assert_eq!(param(&m), Some("b"));
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(format!("{events:?}").contains("was applied before"));
    // Another id is another proposal.
    m.apply_entry(&entry(5, set("a").once(id(2), 0))).0.unwrap();
    assert_eq!(param(&m), Some("a"));
}

#[test]
fn a_refused_proposal_is_refused_again_even_if_it_would_pass_now() {
    let mut m = machine();
    let leave = Command::Leave { node: "n2".into() }.once(id(1), 0);
    let refused = m.apply_entry(&entry(2, leave.clone())).0;
    assert!(refused.is_err());
    let join = Command::Join {
        node: "n2".into(),
        addr: "h:2".into(),
        at_ms: 0,
        id: None,
    };
    m.apply_entry(&entry(3, join)).0.unwrap();
    assert_eq!(m.apply_entry(&entry(4, leave)).0, refused);
    assert!(
        m.cluster.nodes.contains_key("n2"),
        "the copy changed nothing"
    );
}

#[test]
fn the_floor_forgets_answered_proposals_and_refuses_their_late_copies() {
    let mut m = machine();
    m.apply_entry(&entry(2, set("a").once(id(0), 0))).0.unwrap();
    m.apply_entry(&entry(3, set("b").once(id(1), 0))).0.unwrap();
    assert_eq!(m.proposals.len(), 2);
    // Seq 2 says 0 and 1 were answered: their replies go.
    m.apply_entry(&entry(4, set("c").once(id(2), 2))).0.unwrap();
    assert_eq!(m.proposals.len(), 1);
    // A late copy of 1 (a duplicate delivered after its proposer moved on) changes nothing.
    let (late, events) = m.apply_entry(&entry(5, set("b").once(id(1), 0)));
    assert!(
        matches!(late, Err(raft::CommandError::StaleProposal { .. })),
        "{late:?}"
    );
    assert!(format!("{events:?}").contains("answered already"));
    assert_eq!(param(&m), Some("c"));
    // A floor never goes down.
    m.apply_entry(&entry(6, set("d").once(id(3), 0))).0.unwrap();
    assert!(m.apply_entry(&entry(7, set("b").once(id(1), 0))).0.is_err());
}

#[test]
fn a_session_keeps_at_most_its_bound_and_refuses_what_it_forgot() {
    let mut m = machine();
    let n = MAX_PER_SESSION as u64 + 1;
    for seq in 0..n {
        m.apply_entry(&entry(2 + seq, set(&format!("v{seq}")).once(id(seq), 0)))
            .0
            .unwrap();
    }
    assert_eq!(m.proposals.len(), MAX_PER_SESSION);
    assert!(m.proposals.get(&id(0)).is_none(), "the oldest is forgotten");
    let (late, _) = m.apply_entry(&entry(2 + n, set("v0").once(id(0), 0)));
    assert!(
        late.is_err(),
        "forgotten means refused, never applied twice"
    );
    assert_eq!(param(&m), Some(format!("v{}", n - 1).as_str()));
}

#[test]
fn sessions_are_bounded_and_the_least_recently_used_goes() {
    let mut m = machine();
    let mut index = 2;
    let mut propose = |m: &mut MachineData, session: u64| {
        let pid = ProposalId { session, seq: 0 };
        let r = m.apply_entry(&entry(index, set("x").once(pid, 0))).0;
        index += 1;
        r
    };
    for session in 0..MAX_SESSIONS as u64 {
        propose(&mut m, session).unwrap();
    }
    // Session 0 used again (a copy), so session 1 is now the least recently used.
    propose(&mut m, 0).unwrap();
    propose(&mut m, MAX_SESSIONS as u64).unwrap();
    assert_eq!(m.proposals.len(), MAX_SESSIONS);
    assert!(m
        .proposals
        .get(&ProposalId { session: 0, seq: 0 })
        .is_some());
    assert!(m
        .proposals
        .get(&ProposalId { session: 1, seq: 0 })
        .is_none());
    // A snapshot keeps what is remembered.
    let restored = MachineData::from_bytes(&m.to_bytes()).unwrap();
    assert_eq!(restored, m);
    assert_eq!(restored.digest(), m.digest());
}

#[test]
fn the_digest_covers_the_proposals() {
    let mut a = machine();
    let mut b = machine();
    a.apply_entry(&entry(2, set("a").once(id(1), 0))).0.unwrap();
    b.apply_entry(&entry(2, set("a"))).0.unwrap();
    assert_eq!(a.cluster, b.cluster);
    assert_ne!(
        a.digest(),
        b.digest(),
        "same state, different proposals remembered"
    );
}

#[test]
fn an_older_snapshot_without_proposals_still_loads() {
    #[derive(serde::Serialize)]
    struct Old<'a> {
        last_applied: &'a Option<LogId<u64>>,
        membership: &'a openraft::StoredMembership<u64, raft::Member>,
        cluster: &'a raft::ClusterState,
    }
    let m = machine();
    let old = rmp_serde::to_vec_named(&Old {
        last_applied: &m.last_applied,
        membership: &m.membership,
        cluster: &m.cluster,
    })
    .unwrap();
    let loaded = MachineData::from_bytes(&old).unwrap();
    assert_eq!(loaded, m);
    assert!(loaded.proposals.is_empty());
}

#[test]
#[ignore = "prints the snapshot cost"]
fn snapshot_cost() {
    let mut m = machine();
    let before = m.to_bytes().len();
    // 10,000 proposals of one session, 4 waiting at a time.
    for seq in 0..10_000u64 {
        let cmd = set("v").once(id(seq), seq.saturating_sub(3));
        m.apply_entry(&entry(2 + seq, cmd)).0.unwrap();
    }
    let after = m.to_bytes().len();
    eprintln!("snapshot {before} -> {after} bytes after 10,000 proposals, 4 in flight");
}
