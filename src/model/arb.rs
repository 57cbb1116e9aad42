//! proptest strategies for the replicated state's records, shared by the property tests of
//! `model` and of the monitor's decisions.

use std::collections::BTreeMap;

use proptest::prelude::*;
use raft::state::Avail;
use raft::state::Instance;
use raft::state::LocalExpect;
use raft::state::MonitorStatus;

/// Any instance: any status, expectation, availability and frozen flag, restart counts
/// of 0..3 for some of the resources `rids`, and orders to start reported on or not.
pub(crate) fn instance(rids: &'static [&'static str]) -> impl Strategy<Value = Instance> {
    let restarts = if rids.is_empty() {
        Just(BTreeMap::new()).boxed()
    } else {
        prop::collection::btree_map(prop::sample::select(rids), 0u32..3, 0..=rids.len()).boxed()
    };
    (
        prop::sample::select(MonitorStatus::ALL),
        prop::sample::select(LocalExpect::ALL),
        prop::sample::select(Avail::ALL),
        any::<bool>(),
        restarts,
        (0u64..3, prop::option::of(0u64..3)),
    )
        .prop_map(
            |(status, local_expect, avail, frozen, restarts, (started_gen, reported_gen))| {
                Instance {
                    status,
                    local_expect,
                    avail,
                    frozen,
                    restarts: restarts
                        .into_iter()
                        .map(|(r, n): (&str, u32)| (r.to_string(), n))
                        .collect(),
                    updated_at_ms: 0,
                    started_gen,
                    reported_gen,
                }
            },
        )
}
