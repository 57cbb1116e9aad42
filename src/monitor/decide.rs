//! The decisions of an instance's worker ([`super::worker`]), as pure functions of what it
//! read: whether the worker is done with the instance, whether its restart budget starts
//! afresh, what freezing the service's target asks, whether a cut-off node stops it, what
//! to do about a resource found down, whether a stop is needed, and what to report.
//!
//! The worker reads the state and its memory, calls these, and does what they return
//! (checks, starts, stops, reports); the property tests below try them on any input.

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use raft::state::Avail;
use raft::state::GlobalExpect;
use raft::state::Instance;
use raft::state::LocalExpect;
use raft::state::MonitorStatus;

/// Whether anything of the instance may be running: its last check found it up or warn,
/// or one of its resources up.
pub(crate) fn maybe_running(avail: Avail, res: &BTreeMap<String, Avail>) -> bool {
    matches!(avail, Avail::Up | Avail::Warn) || res.values().any(|a| *a == Avail::Up)
}

/// Whether the worker is done: the service no longer lists this node and the instance is
/// gone from the state, or is not meant to start and was checked not running.
/// Not before it has reported on the last order to start: the leader waits for that.
pub(crate) fn leaves(listed: bool, inst: Option<&Instance>, avail: Avail, checked: bool) -> bool {
    let maybe_up = matches!(avail, Avail::Up | Avail::Warn);
    let done = |i: &Instance| {
        i.local_expect != LocalExpect::Started && !maybe_up && checked && !i.start_unreported()
    };
    !listed && inst.is_none_or(done)
}

/// What the worker remembers of the instance's failure flags and restart counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Seen {
    /// The instance was `start failed` or `stop failed` on the last pass.
    pub(crate) failed: bool,
    /// It had restart counts on the last pass.
    pub(crate) restarts: bool,
}

/// The restart budget's bookkeeping for one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// An operator cleared the failure flags or the restart counts since the last pass.
    pub(crate) cleared: bool,
    /// Forget the first start and the pending restarts: the instance is not meant to run,
    /// or was cleared.
    pub(crate) reset: bool,
    /// What to remember for the next pass.
    pub(crate) seen: Seen,
}

/// Whether `inst` is `start failed` or `stop failed`.
pub(crate) fn failed(inst: &Instance) -> bool {
    matches!(
        inst.status,
        MonitorStatus::StartFailed | MonitorStatus::StopFailed
    )
}

/// The budget's bookkeeping, from what the last pass saw and the instance now.
pub(crate) fn budget(last: Seen, inst: &Instance) -> Budget {
    let seen = Seen {
        failed: failed(inst),
        restarts: !inst.restarts.is_empty(),
    };
    let cleared = (last.failed && !seen.failed) || (last.restarts && !seen.restarts);
    Budget {
        cleared,
        reset: inst.local_expect != LocalExpect::Started || cleared,
        seen,
    }
}

/// The frozen state the service's target asks of every instance (`None`: none).
pub(crate) fn frozen_target(ge: &GlobalExpect) -> Option<bool> {
    match ge {
        GlobalExpect::Frozen | GlobalExpect::Stopped => Some(true),
        GlobalExpect::Thawed | GlobalExpect::Started => Some(false),
        _ => None,
    }
}

/// Whether a node cut off from the majority stops its instance: a failover one that may
/// run, with `node.split_action = stop` (another node may take it over).
pub(crate) fn split_stops(failover: bool, split_stop: bool, running: bool) -> bool {
    failover && split_stop && running
}

/// What to do about resource `rid`, found down while the instance is meant to run and
/// was started once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Restart {
    /// Its `budget` restarts are used up: the instance is `start failed`.
    Exhausted {
        /// The resource's restart budget.
        budget: u32,
    },
    /// First seen down: restart it after its delay (`restart n/budget`).
    Schedule {
        /// The restart this will be (1-based).
        n: u32,
        /// When it is due.
        at: Instant,
    },
    /// A restart is scheduled and not due yet.
    Wait(Duration),
    /// Due: restart it now, as restart `n`.
    Now {
        /// The restart this is (1-based).
        n: u32,
    },
}

/// Decides for a down resource with restart budget `budget` and `delay`, `used` restarts
/// used, and a restart scheduled at `scheduled` (if any), at `now`.
pub(crate) fn restart(
    budget: u32,
    delay: Duration,
    used: u32,
    scheduled: Option<Instant>,
    now: Instant,
) -> Restart {
    match scheduled {
        _ if used >= budget => Restart::Exhausted { budget },
        None => Restart::Schedule {
            n: used + 1,
            at: now + delay,
        },
        Some(at) if now < at => Restart::Wait(at - now),
        Some(_) => Restart::Now { n: used + 1 },
    }
}

/// Whether an instance meant to be stopped needs its stop commands: it has resources and
/// any may run (unknown counts: the stop commands are safe to run on a stopped resource).
pub(crate) fn needs_stop(avail: Avail, res: &BTreeMap<String, Avail>, has_resources: bool) -> bool {
    let up = res.values().any(|a| *a == Avail::Up)
        || matches!(avail, Avail::Up | Avail::Warn | Avail::Unknown);
    up && has_resources
}

/// A report of the instance's state: the fields that change (`None`: as they are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    /// The new monitor status.
    pub(crate) status: Option<MonitorStatus>,
    /// The new frozen state.
    pub(crate) frozen: Option<bool>,
    /// The restart counts.
    pub(crate) restarts: BTreeMap<String, u32>,
}

/// What the pass found, for the report at its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    /// The availability of the last check.
    pub(crate) avail: Avail,
    /// The status the pass decided (`None`: none).
    pub(crate) status: Option<MonitorStatus>,
    /// The frozen state the service's target asks.
    pub(crate) frozen: Option<bool>,
    /// The restart counts, when the pass restarted a resource.
    pub(crate) restarts: Option<BTreeMap<String, u32>>,
    /// The instance's `started_gen` the pass read.
    pub(crate) started_gen: u64,
}

/// The report that brings `now` (the instance in the state at the end of the pass; `None`
/// when it has none) to what the pass found, or `None` when it holds it already. A
/// transient status (starting, stopping, restarting) left by an interrupted pass goes back
/// to idle.
pub(crate) fn report(now: Option<&Instance>, found: Found) -> Option<Report> {
    let cur = now.cloned().unwrap_or_default();
    let transient = matches!(
        cur.status,
        MonitorStatus::Starting | MonitorStatus::Stopping | MonitorStatus::Restarting
    );
    let status = match found.status {
        None if transient => Some(MonitorStatus::Idle),
        s => s,
    }
    .filter(|s| *s != cur.status);
    let frozen = found.frozen.filter(|f| *f != cur.frozen);
    let restarts = found.restarts.unwrap_or_else(|| cur.restarts.clone());
    // An order to start the state has not heard this node on yet is answered, even when
    // nothing else changed: the leader waits for it before placing the service elsewhere.
    let same = now.is_some()
        && cur.reported_gen.unwrap_or(0) >= found.started_gen
        && cur.avail == found.avail
        && status.is_none()
        && frozen.is_none()
        && restarts == cur.restarts;
    (!same).then_some(Report {
        status,
        frozen,
        restarts,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn arb_instance() -> impl Strategy<Value = Instance> {
        crate::model::arb::instance(&["a", "b"])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// A worker never leaves an instance this node lists, nor one meant to start, nor
        /// one that may still run or was never checked.
        #[test]
        fn a_worker_leaves_only_what_it_is_done_with(
            listed in any::<bool>(), inst in prop::option::of(arb_instance()),
            avail in prop::sample::select(Avail::ALL), checked in any::<bool>(),
        ) {
            let gone = leaves(listed, inst.as_ref(), avail, checked);
            if listed {
                prop_assert!(!gone);
            }
            if let Some(i) = &inst {
                if i.local_expect == LocalExpect::Started
                    || matches!(avail, Avail::Up | Avail::Warn)
                    || !checked
                {
                    prop_assert!(!gone);
                }
            } else {
                prop_assert_eq!(gone, !listed);
            }
        }

        /// The budget starts afresh exactly when the instance is not meant to run or an
        /// operator cleared it; a clear is a flag or counts going away, never appearing.
        #[test]
        fn budgets(last_failed in any::<bool>(), last_restarts in any::<bool>(), inst in arb_instance()) {
            let last = Seen { failed: last_failed, restarts: last_restarts };
            let b = budget(last, &inst);
            prop_assert_eq!(b.seen.failed, failed(&inst));
            prop_assert_eq!(b.seen.restarts, !inst.restarts.is_empty());
            if b.cleared {
                prop_assert!((last.failed && !b.seen.failed) || (last.restarts && !b.seen.restarts));
            }
            if !last.failed && !last.restarts {
                prop_assert!(!b.cleared);
            }
            prop_assert_eq!(b.reset, inst.local_expect != LocalExpect::Started || b.cleared);
            // The next pass over the same instance sees no clear.
            prop_assert!(!budget(b.seen, &inst).cleared);
        }

        /// A resource is never restarted beyond its budget, nor before its delay passed;
        /// the restart it is counted as is the next one.
        #[test]
        fn restarts_keep_the_budget_and_the_delay(
            budget in 0u32..4, delay_ms in 0u64..5000, used in 0u32..5,
            scheduled_ms in prop::option::of(0u64..10_000), now_ms in 0u64..10_000,
        ) {
            let base = Instant::now();
            let delay = Duration::from_millis(delay_ms);
            let scheduled = scheduled_ms.map(|m| base + Duration::from_millis(m));
            let now = base + Duration::from_millis(now_ms);
            match restart(budget, delay, used, scheduled, now) {
                Restart::Exhausted { budget: b } => {
                    prop_assert_eq!(b, budget);
                    prop_assert!(used >= budget);
                }
                Restart::Schedule { n, at } => {
                    prop_assert!(used < budget && scheduled.is_none());
                    prop_assert_eq!(n, used + 1);
                    prop_assert_eq!(at, now + delay);
                }
                Restart::Wait(d) => {
                    let at = scheduled.expect("waits for a scheduled restart");
                    prop_assert!(used < budget && now < at);
                    prop_assert_eq!(now + d, at);
                }
                Restart::Now { n } => {
                    prop_assert!(used < budget && scheduled.is_some_and(|at| at <= now));
                    prop_assert_eq!(n, used + 1);
                }
            }
        }

        /// A report is sent exactly when the state does not hold what the pass found, and
        /// it never names a field that already has that value.
        #[test]
        fn reports_say_what_changed_and_only_that(
            now in prop::option::of(arb_instance()),
            avail in prop::sample::select(Avail::ALL),
            status in prop::option::of(prop::sample::select(MonitorStatus::ALL)),
            frozen in prop::option::of(any::<bool>()),
            restarted in prop::option::of(
                prop::collection::btree_map(prop::sample::select(vec!["a", "b"]), 0u32..3, 0..=2)
            ),
            started_gen in 0u64..3,
        ) {
            let restarts = restarted.map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
            let found = Found { avail, status, frozen, restarts, started_gen };
            let got = report(now.as_ref(), found.clone());
            let cur = now.clone().unwrap_or_default();
            if let Some(r) = &got {
                prop_assert!(r.status.is_none_or(|s| s != cur.status));
                prop_assert!(r.frozen.is_none_or(|f| f != cur.frozen));
                let want = found.restarts.clone().unwrap_or_else(|| cur.restarts.clone());
                prop_assert_eq!(&r.restarts, &want);
            }
            let transient = matches!(
                cur.status,
                MonitorStatus::Starting | MonitorStatus::Stopping | MonitorStatus::Restarting
            );
            let differs = now.is_none()
                || cur.reported_gen.unwrap_or(0) < started_gen
                || cur.avail != avail
                || status.is_some_and(|s| s != cur.status)
                || (status.is_none() && transient)
                || frozen.is_some_and(|f| f != cur.frozen)
                || found.restarts.as_ref().is_some_and(|r| *r != cur.restarts);
            prop_assert_eq!(got.is_some(), differs);
        }
    }

    #[test]
    fn targets_and_stops() {
        assert_eq!(frozen_target(&GlobalExpect::Stopped), Some(true));
        assert_eq!(frozen_target(&GlobalExpect::Started), Some(false));
        assert_eq!(frozen_target(&GlobalExpect::Placed), None);
        assert!(split_stops(true, true, true));
        assert!(!split_stops(false, true, true) && !split_stops(true, false, true));
        let none = BTreeMap::new();
        assert!(needs_stop(Avail::Unknown, &none, true));
        assert!(!needs_stop(Avail::Up, &none, false));
        assert!(!needs_stop(Avail::Down, &none, true));
        let up: BTreeMap<String, Avail> = [("a".to_string(), Avail::Up)].into();
        assert!(needs_stop(Avail::Down, &up, true) && maybe_running(Avail::Down, &up));
    }
}
