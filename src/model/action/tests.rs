//! The decisions of an instance action, on every verb and any instance state.

use proptest::prelude::*;
use raft::state::NodeMonitor;
use raft::state::Service;

use super::*;

const NODES: [&str; 3] = ["n1", "n2", "n3"];

fn arb_instance() -> impl Strategy<Value = Instance> {
    crate::model::arb::instance(&[])
}

/// Three members with any node statuses, each with or without any instance of `svc`.
fn arb_state() -> impl Strategy<Value = ClusterState> {
    (
        prop::collection::vec(prop::sample::select(NodeStatus::ALL), 3),
        prop::collection::vec(prop::option::of(arb_instance()), 3),
    )
        .prop_map(|(statuses, insts)| {
            let mut s = ClusterState::default();
            let mut svc = Service::default();
            for (i, n) in NODES.iter().enumerate() {
                let monitor = NodeMonitor {
                    status: statuses[i],
                    ..NodeMonitor::default()
                };
                s.node_monitors.insert(n.to_string(), monitor);
                if let Some(inst) = &insts[i] {
                    svc.instances.insert(n.to_string(), inst.clone());
                }
            }
            s.services.insert("svc".into(), svc);
            s
        })
}

fn arb_cmd() -> impl Strategy<Value = ActionCmd> {
    (
        prop::sample::select(Verb::ALL.to_vec()),
        prop::option::of(prop::sample::subsequence(vec!["a", "b"], 1..=2)),
        any::<bool>(),
    )
        .prop_map(|(verb, rids, force)| ActionCmd {
            verb,
            rids: rids.map(|r| r.into_iter().map(String::from).collect()),
            force,
        })
}

fn arb_ran() -> impl Strategy<Value = Ran> {
    (
        any::<bool>(),
        prop::sample::select(Avail::ALL),
        prop::sample::select(Avail::ALL),
        prop::sample::select(Avail::ALL),
    )
        .prop_map(|(commands_ok, avail, a, b)| Ran {
            commands_ok,
            avail,
            res: [("a".to_string(), a), ("b".to_string(), b)].into(),
        })
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

#[test]
fn every_verb_parses_back_and_a_bad_command_names_what_is_allowed() {
    for v in Verb::ALL {
        assert_eq!(ActionCmd::parse(&argv(&[v.as_str()])).unwrap().verb, v);
    }
    let cmd = ActionCmd::parse(&argv(&["stop", "--rid", "a,b", "--force"])).unwrap();
    assert_eq!(cmd.rids, Some(argv(&["a", "b"])));
    assert!(cmd.force);
    assert_eq!(cmd.to_string(), "stop --rid a,b");
    let e = ActionCmd::parse(&argv(&["strat"])).unwrap_err();
    assert!(e.contains("\"strat\"") && e.contains(&Verb::list()), "{e}");
    let e = ActionCmd::parse(&[]).unwrap_err();
    assert!(
        e.contains("empty command") && e.contains(&Verb::list()),
        "{e}"
    );
    let e = ActionCmd::parse(&argv(&["start", "--rid"])).unwrap_err();
    assert!(e.contains("--rid needs a value"), "{e}");
    let e = ActionCmd::parse(&argv(&["start", "--now"])).unwrap_err();
    assert!(e.contains("\"--now\"") && e.contains("start"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The safety rule: an unforced whole start of a failover service is allowed only when
    /// no other node that is not down runs the service or is meant to.
    #[test]
    fn a_failover_start_is_refused_while_another_live_node_holds_the_service(
        s in arb_state(), me in prop::sample::select(NODES.to_vec()),
    ) {
        let cmd = ActionCmd { verb: Verb::Start, rids: None, force: false };
        let held_elsewhere = s.services["svc"].instances.iter().any(|(n, i)| {
            n != me
                && s.node_monitors[n].status != NodeStatus::Down
                && (i.local_expect == LocalExpect::Started
                    || matches!(i.avail, Avail::Up | Avail::Warn))
        });
        match before(&cmd, Topology::Failover, &s, "svc", me) {
            Ok(pre) => {
                prop_assert!(!held_elsewhere);
                prop_assert_eq!(pre, vec![Before::Expect(LocalExpect::Started)]);
            }
            Err(e) => {
                prop_assert!(held_elsewhere);
                prop_assert!(e.contains("switch --to") && e.contains("--force"), "{}", e);
            }
        }
        // Forced, or a flex service: never refused.
        let forced = ActionCmd { force: true, ..cmd.clone() };
        prop_assert!(before(&forced, Topology::Failover, &s, "svc", me).is_ok());
        prop_assert!(before(&cmd, Topology::Flex, &s, "svc", me).is_ok());
    }

    /// Only a whole start or stop commits before running; a stop freezes first unless the
    /// instance is frozen already; nothing else is ever refused.
    #[test]
    fn what_is_committed_before_the_commands(
        s in arb_state(), cmd in arb_cmd(), me in prop::sample::select(NODES.to_vec()),
        flex in any::<bool>(),
    ) {
        let topology = if flex { Topology::Flex } else { Topology::Failover };
        let got = before(&cmd, topology, &s, "svc", me);
        let frozen = instance(&s, "svc", me).frozen;
        match (cmd.verb, cmd.whole()) {
            (Verb::Start, true) => {
                if let Ok(pre) = got {
                    prop_assert_eq!(pre, vec![Before::Expect(LocalExpect::Started)]);
                }
            }
            (Verb::Stop, true) if frozen => {
                prop_assert_eq!(got, Ok(vec![Before::Expect(LocalExpect::Stopped)]));
            }
            (Verb::Stop, true) => prop_assert_eq!(
                got,
                Ok(vec![Before::Freeze, Before::Expect(LocalExpect::Stopped)])
            ),
            _ => prop_assert_eq!(got, Ok(Vec::new())),
        }
    }

    /// A verdict is coherent: a note only on failure; an action on some resources never
    /// touches the instance's monitor fields; a failed whole start or stop says so in the
    /// status, a successful one thaws (start) or freezes (stop) the instance, and a stop
    /// never hides an earlier start failure.
    #[test]
    fn verdicts(
        cmd in arb_cmd(), ran in arb_ran(), was in prop::sample::select(MonitorStatus::ALL),
    ) {
        let rids = argv(&["a", "b"]);
        let v = judge(&cmd, &rids, was, &ran);
        prop_assert!(v.ret == 0 || v.ret == 1);
        prop_assert!(v.note.is_none() || v.ret == 1);
        if !cmd.whole() {
            prop_assert!(v.status.is_none());
            prop_assert!(v.frozen.is_none() || matches!(cmd.verb, Verb::Freeze | Verb::Thaw));
        }
        let up = matches!(ran.avail, Avail::Up | Avail::NotApplicable);
        match cmd.verb {
            Verb::Status | Verb::Check => prop_assert_eq!(v.ret == 0, up),
            Verb::Freeze | Verb::Thaw => {
                prop_assert_eq!(v.frozen, Some(cmd.verb == Verb::Freeze));
                prop_assert_eq!(v.ret, 0);
            }
            Verb::Start if cmd.whole() => {
                let ok = ran.commands_ok && up;
                prop_assert_eq!(v.ret == 0, ok);
                let (status, frozen) = if ok {
                    (MonitorStatus::Idle, Some(false))
                } else {
                    (MonitorStatus::StartFailed, None)
                };
                prop_assert_eq!(v.status, Some(status));
                prop_assert_eq!(v.frozen, frozen);
            }
            Verb::Stop if cmd.whole() => {
                let down = ran.res.values().all(|a| *a == Avail::Down);
                prop_assert_eq!(v.ret == 0, ran.commands_ok && down);
                if v.ret == 1 {
                    prop_assert_eq!(v.status, Some(MonitorStatus::StopFailed));
                } else {
                    prop_assert_eq!(v.frozen, Some(true));
                    prop_assert!(was != MonitorStatus::StartFailed || v.status.is_none());
                }
            }
            Verb::Restart => {
                prop_assert_eq!(v.ret == 0, ran.commands_ok && up);
                prop_assert!(v.status.is_none() && v.frozen.is_none());
            }
            _ => {}
        }
    }
}
