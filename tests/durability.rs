//! Real `om` daemons on the real file system, killed with SIGKILL at random points of a
//! write burst: every write the cluster acknowledged is on every node after the restarts.
//! The last round kills all three nodes at once, so the acknowledged writes can only come
//! back from the nodes' own write-ahead logs.
//!
//! The seed of the kill schedule is printed; `OM_TEST_SEED=N` replays a schedule.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use om::cli::local::LocalCluster;
use om::config::Paths;
use om::control::ControlClient;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use serde_json::json;

const T: Duration = Duration::from_secs(15);
const WRITERS: usize = 6;
const ROUNDS: usize = 4;

type Acked = Arc<Mutex<Vec<(String, u64)>>>;

/// Writes new services through `paths`' daemon until `stop`; records what was acknowledged.
async fn writer(roots: Vec<Paths>, w: usize, stop: Arc<AtomicBool>, acked: Acked) {
    let mut k = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let paths = &roots[(w + k) % roots.len()];
        let svc = format!("w{w}-{k}");
        k += 1;
        let opts = json!({"svcname": svc, "config": "[DEFAULT]\nnodes = *\n"});
        let r = ControlClient::new(paths)
            .request("set_service_config", opts, Duration::from_secs(2))
            .await;
        match r {
            Ok(resp) if resp.is_ok() => {
                let data = resp.data.to_value().expect("a JSON reply");
                let index = data["index"].as_u64().expect("an index");
                acked.lock().unwrap().push((svc, index));
            }
            // Down, or no leader yet: the outcome is unknown, nothing is claimed.
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Runs a burst of writers; `during` does the killing meanwhile.
async fn burst(c: &mut LocalCluster, acked: &Acked, during: impl AsyncFnOnce(&mut LocalCluster)) {
    let stop = Arc::new(AtomicBool::new(false));
    let roots: Vec<Paths> = c.nodes.iter().map(|n| n.paths.clone()).collect();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(roots.clone(), w, stop.clone(), acked.clone())))
        .collect();
    during(c).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer");
    }
}

/// Commits one more write through any node, retrying until a leader takes it.
async fn final_write(c: &LocalCluster) -> u64 {
    for attempt in 0..150 {
        let n = &c.nodes[attempt % c.nodes.len()];
        let opts = json!({"svcname": "final", "config": "[DEFAULT]\nnodes = *\n"});
        if let Ok(r) = n
            .call("set_service_config", opts, Duration::from_secs(2))
            .await
        {
            return r["index"].as_u64().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no write committed after the restarts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_kill_9_at_random_points_of_a_burst() {
    let seed: u64 = std::env::var("OM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("kill schedule seed {seed} (OM_TEST_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 3, None).unwrap();
    c.start_all().await.unwrap();
    c.join_all(&mut |_| {}).await.unwrap();
    let bin = c.bin.clone();
    let acked: Acked = Arc::default();

    for round in 0..ROUNDS {
        let delay = Duration::from_millis(rng.gen_range(100..600));
        let all = round == ROUNDS - 1;
        let victim = if round == 1 {
            c.leader().await
        } else {
            Some(c.nodes[rng.gen_range(0..3)].name.clone())
        };
        let mut killed = Vec::new();
        burst(&mut c, &acked, async |c: &mut LocalCluster| {
            tokio::time::sleep(delay).await;
            for n in c.nodes.iter_mut() {
                if all || victim.as_deref() == Some(n.name.as_str()) {
                    n.kill();
                    killed.push(n.name.clone());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
        eprintln!("round {round}: killed {killed:?} after {delay:?}");
        for name in &killed {
            c.node(name).unwrap().start(&bin).unwrap();
        }
        for n in &c.nodes {
            n.wait_ready(T).await.unwrap();
        }
    }

    let last = final_write(&c).await;
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the burst wrote too little: {}",
        acked.len()
    );
    for n in &c.nodes {
        n.wait_applied(last, T).await.unwrap();
        for (svc, index) in &acked {
            let r = n
                .call("get_service_config", json!({"svcname": svc}), T)
                .await;
            assert!(
                r.is_ok(),
                "{svc}, acknowledged at index {index}, is missing on {} (seed {seed}): {r:?}",
                n.name
            );
        }
    }
    eprintln!(
        "{} acknowledged writes, all present on every node",
        acked.len()
    );
}
