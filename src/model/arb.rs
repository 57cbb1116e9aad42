//! proptest strategies for the replicated state's records, shared by the property tests of
//! `model` and of the monitor's decisions.

use std::collections::BTreeMap;

use proptest::prelude::*;
use raft::state::Avail;
use raft::state::Instance;
use raft::state::LocalExpect;
use raft::state::MonitorStatus;

/// Any instance: any status, expectation, availability and frozen flag, and restart counts
/// of 0..3 for some of the resources `rids`.
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
    )
        .prop_map(|(status, local_expect, avail, frozen, restarts)| Instance {
            status,
            local_expect,
            avail,
            frozen,
            restarts: restarts
                .into_iter()
                .map(|(r, n): (&str, u32)| (r.to_string(), n))
                .collect(),
            updated_at_ms: 0,
        })
}
