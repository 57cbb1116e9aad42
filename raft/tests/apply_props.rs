//! Properties of `apply` over random command sequences.

mod common;

use common::bootstrapped;
use proptest::prelude::*;
use raft::apply;
use raft::state::Avail;
use raft::state::GlobalExpect;
use raft::state::LocalExpect;
use raft::state::MonitorStatus;
use raft::state::NodeExpect;
use raft::state::NodeStatus;
use raft::ClusterState;
use raft::Command;
use raft::Event;

fn node() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("n1"),
        Just("n2"),
        Just("n3"),
        Just("n4"),
        Just(""),
        Just("bad name")
    ]
    .prop_map(String::from)
}

fn svc() -> impl Strategy<Value = String> {
    prop_oneof![Just("web"), Just("db"), Just("-x")].prop_map(String::from)
}

fn opt<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    prop::option::of(s).boxed()
}

fn global() -> impl Strategy<Value = GlobalExpect> {
    prop_oneof![
        Just(GlobalExpect::None),
        Just(GlobalExpect::Started),
        Just(GlobalExpect::Stopped),
        Just(GlobalExpect::Frozen),
        Just(GlobalExpect::Placed),
        node().prop_map(GlobalExpect::PlacedAt),
        Just(GlobalExpect::Deleted),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    let addr =
        prop_oneof![Just("127.0.0.1:1214"), Just("h:0"), Just("nohost")].prop_map(String::from);
    prop_oneof![
        (node(), addr.clone()).prop_map(|(node, addr)| Command::Bootstrap {
            id: None,
            cluster: "c1".into(),
            node,
            addr,
            at_ms: 1
        }),
        (node(), addr.clone(), any::<u64>()).prop_map(|(node, addr, at_ms)| Command::Join {
            id: None,
            node,
            addr,
            at_ms
        }),
        node().prop_map(|node| Command::Leave { node }),
        (node(), addr).prop_map(|(node, addr)| Command::SetNodeAddr { node, addr }),
        (
            node(),
            opt(prop::sample::select(NodeStatus::ALL)),
            opt(prop::sample::select(NodeExpect::ALL)),
            opt(any::<bool>())
        )
            .prop_map(
                |(node, status, local_expect, frozen)| Command::SetNodeMonitor {
                    node,
                    status,
                    local_expect,
                    frozen
                }
            ),
        (
            svc(),
            opt(node()),
            opt(prop::sample::select(MonitorStatus::ALL)),
            opt(prop::sample::select(LocalExpect::ALL)),
            opt(global()),
            any::<bool>()
        )
            .prop_map(
                |(svc, node, status, local_expect, global_expect, reset_retries)| {
                    Command::SetServiceMonitor {
                        svc,
                        node,
                        status,
                        local_expect,
                        global_expect,
                        reset_retries,
                    }
                }
            ),
        (svc(), opt(node())).prop_map(|(svc, node)| Command::Clear { svc, node }),
        (svc(), "[a-z =\n]{0,20}").prop_map(|(svc, config)| Command::CreateService { svc, config }),
        (svc(), "[a-z =\n]{0,20}", opt(0u64..4)).prop_map(|(svc, config, expected_version)| {
            Command::UpdateService {
                svc,
                config,
                expected_version,
            }
        }),
        svc().prop_map(|svc| Command::DeleteService { svc }),
        (
            prop_oneof![
                Just("x.k1"),
                Just("x.k2"),
                Just("node.split_action"),
                Just("cluster.name"),
                Just("cluster.join"),
                Just("nodot")
            ],
            opt(prop_oneof![
                Just("stop"),
                Just("v"),
                Just(""),
                Just("approve")
            ])
        )
            .prop_map(|(k, value)| Command::SetClusterParam {
                key: k.into(),
                value: value.map(String::from)
            }),
        (node(), any::<u64>()).prop_map(|(node, at_ms)| Command::ApproveJoin { node, at_ms }),
        (
            svc(),
            node(),
            prop::sample::select(Avail::ALL),
            opt(prop::sample::select(MonitorStatus::ALL)),
            opt(any::<bool>()),
            prop::collection::btree_map("app#[0-2]", 0u32..5, 0..3),
            any::<u64>(),
            opt(0u64..4),
        )
            .prop_map(
                |(svc, node, avail, status, frozen, restarts, at_ms, started_gen)| {
                    Command::ReportInstance {
                        svc,
                        node,
                        avail,
                        status,
                        frozen,
                        restarts,
                        at_ms,
                        started_gen,
                    }
                }
            ),
    ]
}

/// Commands that start by bootstrapping, so most of the sequence exercises a live cluster.
fn history() -> impl Strategy<Value = Vec<Command>> {
    prop::collection::vec(command(), 0..80).prop_map(|mut cmds| {
        cmds.insert(
            0,
            Command::Bootstrap {
                id: None,
                cluster: "c1".into(),
                node: "n1".into(),
                addr: "127.0.0.1:1214".into(),
                at_ms: 0,
            },
        );
        cmds
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Never panics (apply also checks the state invariants after every command in debug),
    /// a refused command changes nothing and says why, an accepted one counts its changes.
    #[test]
    fn apply_is_total_and_atomic(cmds in history()) {
        let mut state = ClusterState::default();
        for cmd in &cmds {
            let before = state.clone();
            let (result, events) = apply(&mut state, cmd);
            match result {
                Err(_) => {
                    prop_assert_eq!(&state, &before);
                    let is_error = matches!(events.as_slice(), [Event::Error { .. }]);
                    prop_assert!(is_error, "a refusal emits exactly one error event");
                }
                Ok(outcome) => {
                    let changes = events.iter().filter(|e| matches!(e, Event::Change { .. })).count();
                    prop_assert_eq!(outcome.changed, changes);
                    if changes == 0 {
                        // Nothing reported means nothing but timestamps moved.
                        let mut a = before.clone();
                        let mut b = state.clone();
                        for s in a.services.values_mut().chain(b.services.values_mut()) {
                            for i in s.instances.values_mut() { i.updated_at_ms = 0; }
                        }
                        prop_assert_eq!(a, b);
                    }
                }
            }
        }
    }

    /// Replaying the same log gives the same state and events (determinism), and a snapshot
    /// taken at any point restores to an equal state that continues identically.
    #[test]
    fn replay_and_snapshot_restore_agree(cmds in history(), cut in 0usize..80) {
        let mut a = ClusterState::default();
        let mut b = ClusterState::default();
        let cut = cut.min(cmds.len());
        let mut events_a = Vec::new();
        for cmd in &cmds[..cut] {
            events_a.push(apply(&mut a, cmd));
        }
        for (i, cmd) in cmds[..cut].iter().enumerate() {
            prop_assert_eq!(&apply(&mut b, cmd), &events_a[i]);
        }
        let bytes = rmp_serde::to_vec_named(&a).unwrap();
        let mut restored: ClusterState = rmp_serde::from_slice(&bytes).unwrap();
        prop_assert_eq!(&restored, &a);
        for cmd in &cmds[cut..] {
            prop_assert_eq!(apply(&mut restored, cmd), apply(&mut a, cmd));
        }
        prop_assert_eq!(restored, a);
    }
}

#[test]
fn leave_of_last_node_is_refused() {
    let mut s = bootstrapped();
    let (r, _) = apply(&mut s, &Command::Leave { node: "n1".into() });
    assert_eq!(
        r.unwrap_err().to_string(),
        "node \"n1\" is the last member: a cluster cannot be left empty"
    );
    assert_eq!(s.nodes.len(), 1);
}

#[test]
fn leave_cleans_instances_and_placement() {
    let mut s = ClusterState::default();
    for cmd in [
        Command::Bootstrap {
            id: None,
            cluster: "c".into(),
            node: "n1".into(),
            addr: "h:1".into(),
            at_ms: 0,
        },
        Command::Join {
            id: None,
            node: "n2".into(),
            addr: "h:2".into(),
            at_ms: 0,
        },
        Command::CreateService {
            svc: "web".into(),
            config: "[DEFAULT]\nnodes = n1 n2\n".into(),
        },
        Command::SetServiceMonitor {
            svc: "web".into(),
            node: Some("n2".into()),
            status: None,
            local_expect: Some(LocalExpect::Started),
            global_expect: Some(GlobalExpect::PlacedAt("n2".into())),
            reset_retries: false,
        },
    ] {
        assert!(apply(&mut s, &cmd).0.is_ok(), "{cmd:?}");
    }
    let (r, events) = apply(&mut s, &Command::Leave { node: "n2".into() });
    assert!(r.is_ok());
    assert_eq!(s.services["web"].global_expect, GlobalExpect::None);
    assert!(s.services["web"].instances.is_empty());
    assert!(events
        .iter()
        .any(|e| e.to_string() == "services.web.global_expect placed@n2 -> none"));
}

#[test]
fn update_with_stale_version_is_refused() {
    let mut s = bootstrapped();
    assert_eq!(
        apply(
            &mut s,
            &Command::CreateService {
                svc: "db".into(),
                config: "a".into()
            }
        )
        .0
        .unwrap()
        .version,
        Some(1)
    );
    assert_eq!(
        apply(
            &mut s,
            &Command::UpdateService {
                svc: "db".into(),
                config: "b".into(),
                expected_version: Some(1)
            }
        )
        .0
        .unwrap()
        .version,
        Some(2)
    );
    let (r, _) = apply(
        &mut s,
        &Command::UpdateService {
            svc: "db".into(),
            config: "c".into(),
            expected_version: Some(1),
        },
    );
    assert!(matches!(
        r,
        Err(raft::CommandError::VersionConflict {
            expected: 1,
            actual: 2,
            ..
        })
    ));
    assert_eq!(s.services["db"].config, "b");
}

#[test]
fn an_approval_lets_one_join_in_and_is_used_up_by_it() {
    use raft::state::JOIN_APPROVAL_TTL_MS;
    let mut s = bootstrapped();
    assert!(s.join_allowed("n2", 5), "open by default");
    let approve = Command::SetClusterParam {
        key: "cluster.join".into(),
        value: Some("approve".into()),
    };
    assert!(apply(&mut s, &approve).0.is_ok());
    assert!(
        !s.join_allowed("n2", 5),
        "approve: nobody without an approval"
    );
    let bad = Command::SetClusterParam {
        key: "cluster.join".into(),
        value: Some("closed".into()),
    };
    let e = apply(&mut s, &bad).0.unwrap_err().to_string();
    assert!(e.contains("open, approve"), "{e}");

    let ok = Command::ApproveJoin {
        node: "n2".into(),
        at_ms: 1_000,
    };
    assert!(apply(&mut s, &ok).0.is_ok());
    assert!(s.join_allowed("n2", 1_000 + JOIN_APPROVAL_TTL_MS - 1));
    assert!(
        !s.join_allowed("n2", 1_000 + JOIN_APPROVAL_TTL_MS),
        "expired"
    );
    assert!(!s.join_allowed("n3", 1_000), "an approval names one node");
    let join = Command::Join {
        node: "n2".into(),
        addr: "h:2".into(),
        at_ms: 2_000,
        id: None,
    };
    assert!(apply(&mut s, &join).0.is_ok());
    assert!(s.join_approvals.is_empty(), "used up by the join");
    let member = Command::ApproveJoin {
        node: "n2".into(),
        at_ms: 3_000,
    };
    assert!(
        apply(&mut s, &member).0.is_err(),
        "a member needs no approval"
    );
    for i in 0..raft::state::MAX_JOIN_APPROVALS {
        let cmd = Command::ApproveJoin {
            node: format!("x{i}"),
            at_ms: 0,
        };
        assert!(apply(&mut s, &cmd).0.is_ok());
    }
    let over = Command::ApproveJoin {
        node: "y".into(),
        at_ms: 0,
    };
    let e = apply(&mut s, &over).0.unwrap_err().to_string();
    assert!(e.contains("approved and not used"), "{e}");
}
