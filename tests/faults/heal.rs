//! The healed-partition scenario: a link that drops everything for a while leaves the TCP
//! connections across it holding unacknowledged data, and the kernel's retransmission
//! timer doubles on each try (0.2 s, 0.6 s, 1.4 s, 3 s, 6.2 s, 12.6 s, 25.4 s, ...). Once
//! the link is back, Raft must not wait for that timer: the follower behind the cut
//! catches up within seconds of the heal, not when the kernel next retries (found by
//! `full_disk` in CI: a leader's appends kept timing out for 6 s after a heal).

use std::time::Duration;
use std::time::Instant;

use serde_json::json;

use crate::cluster::FaultCluster;
use crate::cluster::Options;
use crate::workload;

/// How long the link is cut: long enough that the next retransmission after the heal is
/// more than 10 s away (the one at 25.4 s).
const CUT: Duration = Duration::from_secs(14);
/// The bound on catching up after the heal: a new election and an append, with room for
/// a loaded machine, and well under the 11 s the retransmission timer would take.
const CATCH_UP: Duration = Duration::from_secs(7);

/// The whole scenario (see the module header).
pub(crate) async fn healed_partition(bin: std::path::PathBuf) {
    let opts = Options {
        nodes: 3,
        small_disk: None,
        fake_clock: false,
    };
    let mut c = FaultCluster::create(bin, &opts).expect("cluster");
    c.form().await.unwrap_or_else(|e| panic!("form: {e}"));
    c.converge(Duration::from_secs(60)).await.unwrap();
    let leader = c.leader().await.expect("a leader");
    let cut = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    c.net().block(leader, cut).unwrap();
    c.net().block(cut, leader).unwrap();
    let started = Instant::now();
    let mut i = 0;
    // Writes through the node that still reaches the leader keep data in flight on the
    // leader's connection to the cut follower (its appends), so that connection backs off.
    while started.elapsed() < CUT {
        let config = workload::register_config(&format!("cut-{i}"));
        let r = c.nodes[other]
            .call(
                "set_service_config",
                json!({"svcname": "reg0", "config": config}),
                Duration::from_secs(10),
            )
            .await;
        if let Err(e) = r {
            eprintln!(
                "faults: healed partition: write {i} during the cut: {}",
                e.message
            );
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.net().heal().unwrap();
    let healed = Instant::now();
    let converged = c.converge(Duration::from_secs(60)).await;
    let took = healed.elapsed();
    eprintln!(
        "faults: healed partition: {} writes during a {CUT:?} cut of {} from leader {}; \
         converged {took:?} after the heal: {converged:?}",
        i, c.nodes[cut].name, c.nodes[leader].name
    );
    converged.unwrap_or_else(|e| panic!("{e}\n{}", c.log_tails()));
    assert!(
        took < CATCH_UP,
        "{} caught up {took:?} after the heal (bound {CATCH_UP:?})\n{}",
        c.nodes[cut].name,
        c.log_tails()
    );
}
