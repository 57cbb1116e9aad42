//! Real `om` daemons on loopback: forming a cluster by join, growing and shrinking it,
//! writing through followers, losing the leader, restarting a node, refusing a bad secret.

use std::time::Duration;

use om::cli::local::join;
use om::cli::local::wait_member;
use om::cli::local::LocalCluster;
use serde_json::json;
use serde_json::Value;

const T: Duration = Duration::from_secs(15);
/// A valid service config (set_service_config validates it).
const AFTER: &str = "[DEFAULT]\nnodes = n1 n2 n3\n";

fn cluster(n: usize) -> LocalCluster {
    LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), n, None).expect("prepare cluster")
}

fn quiet(_: &str) {}

async fn status(c: &LocalCluster, i: usize) -> Value {
    c.nodes[i]
        .call("daemon_status", json!({}), T)
        .await
        .expect("status")
}

fn secret_of(c: &LocalCluster) -> String {
    om::config::NodeConfig::load(&c.nodes[0].paths.node_conf())
        .unwrap()
        .1
        .secret
}

fn members(st: &Value) -> Vec<String> {
    st["cluster"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Waits until node `i` has applied at least `index`.
/// Writes service `after` through survivor `via` of a leader loss, retrying while the
/// survivors elect a leader (up to 100 tries of 3 s); returns the write's index.
async fn write_after_leader_loss(c: &LocalCluster, via: usize) -> u64 {
    for _ in 0..100 {
        let r = c.nodes[via]
            .call(
                "set_service_config",
                json!({"svcname": "after", "config": AFTER}),
                Duration::from_secs(3),
            )
            .await;
        if let Ok(r) = r {
            return r["index"].as_u64().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the survivors do not commit after losing the leader");
}

async fn wait_applied(c: &LocalCluster, i: usize, index: u64) {
    c.nodes[i]
        .wait_applied(index, Duration::from_secs(10))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_grow_shrink_and_write_through_followers() {
    let mut c = cluster(5);
    c.start_all().await.unwrap();
    let secret = secret_of(&c);
    let first = c.nodes[0].addr();
    for i in 1..3 {
        join(&c.nodes[i], &secret, &first, &mut quiet)
            .await
            .unwrap();
    }
    let st = status(&c, 0).await;
    assert_eq!(members(&st), ["n1", "n2", "n3"]);
    assert_eq!(st["cluster"]["leader"], "n1");
    for n in ["n1", "n2", "n3"] {
        assert_eq!(st["nodes"][n]["reachable"], true, "{n}: {st}");
        assert_eq!(st["nodes"][n]["membership"], "voter");
    }

    // Writes through a follower are forwarded to the leader and committed.
    let r = c.nodes[2]
        .call(
            "set_service_config",
            json!({"svcname": "web", "config": "[DEFAULT]\nnodes = n1 n2\n"}),
            T,
        )
        .await
        .unwrap();
    let idx = r["index"].as_u64().unwrap();
    for i in 0..3 {
        wait_applied(&c, i, idx).await;
        let cfg = c.nodes[i]
            .call("get_service_config", json!({"svcname": "web"}), T)
            .await
            .unwrap();
        assert_eq!(cfg["version"], 1);
    }

    // A 4th joins through a follower; a 5th joins, then leaves.
    join(&c.nodes[3], &secret, &c.nodes[1].addr(), &mut quiet)
        .await
        .unwrap();
    join(&c.nodes[4], &secret, &first, &mut quiet)
        .await
        .unwrap();
    assert_eq!(
        members(&status(&c, 0).await),
        ["n1", "n2", "n3", "n4", "n5"]
    );
    c.nodes[4]
        .call("leave", json!({}), Duration::from_secs(40))
        .await
        .unwrap();
    let st = status(&c, 0).await;
    assert_eq!(members(&st), ["n1", "n2", "n3", "n4"]);
    assert!(
        st["nodes"].get("n5").is_none(),
        "n5 is gone from the raft membership: {st}"
    );
    // node.conf follows the replicated member list on every remaining node.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..4 {
        let cfg = om::config::NodeConfig::load(&c.nodes[i].paths.node_conf())
            .unwrap()
            .1;
        assert_eq!(cfg.nodes, ["n1", "n2", "n3", "n4"], "{}", c.nodes[i].name);
    }
    // The node that left is a cluster of its own again.
    let alone = status(&c, 4).await;
    assert_eq!(members(&alone), ["n5"]);
    assert_eq!(alone["cluster"]["leader"], "n5");
    // Its log is gone, but it comes back as n5 with a new store, hence a new Raft id.
    join(&c.nodes[4], &secret, &first, &mut quiet)
        .await
        .unwrap();
    assert_eq!(
        members(&status(&c, 0).await),
        ["n1", "n2", "n3", "n4", "n5"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_keeps_acknowledged_writes_and_restart_catches_up() {
    let mut c = cluster(3);
    c.start_all().await.unwrap();
    c.join_all(&mut quiet).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..30 {
        let via = i % 3;
        let svc = format!("svc{i}");
        let r = c.nodes[via]
            .call(
                "set_service_config",
                json!({"svcname": svc, "config": format!("# v{i}\n[DEFAULT]\nnodes = *\n")}),
                T,
            )
            .await
            .unwrap();
        acked.push((svc, r["index"].as_u64().unwrap()));
    }
    let leader = c.leader().await.unwrap();
    c.node(&leader).unwrap().kill();
    let survivors: Vec<usize> = (0..3).filter(|&i| c.nodes[i].name != leader).collect();

    // A new leader commits new writes.
    let new_write = write_after_leader_loss(&c, survivors[0]).await;
    let st = status(&c, survivors[1]).await;
    assert_ne!(st["cluster"]["leader"], json!(leader));
    assert!(st["cluster"]["leader"].is_string());
    for &i in &survivors {
        wait_applied(&c, i, new_write).await;
        for (svc, _) in &acked {
            let cfg = c.nodes[i]
                .call("get_service_config", json!({"svcname": svc}), T)
                .await;
            assert!(
                cfg.is_ok(),
                "acknowledged {svc} lost on {}",
                c.nodes[i].name
            );
        }
    }

    // The killed node restarts from its store and catches up.
    let bin = c.bin.clone();
    let node = c.node(&leader).unwrap();
    node.start(&bin).unwrap();
    node.wait_ready(T).await.unwrap();
    let i = c.nodes.iter().position(|n| n.name == leader).unwrap();
    wait_applied(&c, i, new_write).await;
    wait_member(&c.nodes[i], T, &mut quiet).await.unwrap();
    let cfg = c.nodes[i]
        .call("get_service_config", json!({"svcname": "after"}), T)
        .await
        .unwrap();
    assert_eq!(cfg["config"], AFTER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_with_wrong_secret_is_refused_and_changes_nothing() {
    let mut c = cluster(2);
    c.start_all().await.unwrap();
    let before = status(&c, 0).await;
    let err = c.nodes[1]
        .call(
            "join",
            json!({"secret": "not-the-secret-but-long-enough-0123456789", "node": c.nodes[0].addr()}),
            Duration::from_secs(40),
        )
        .await
        .unwrap_err();
    assert!(err.contains("check the secret"), "{err}");
    let after = status(&c, 0).await;
    assert_eq!(members(&after), members(&before));
    assert_eq!(members(&after), ["n1"]);
    // The joiner is still a working cluster of its own.
    assert_eq!(members(&status(&c, 1).await), ["n2"]);
    // And a join under a taken name is refused by name.
    let secret = secret_of(&c);
    let st = c.nodes[0]
        .call("blacklist_status", json!({}), T)
        .await
        .unwrap();
    assert!(
        st.to_string().contains("n2"),
        "the bad frames were counted: {st}"
    );
    c.nodes[0]
        .call("blacklist_clear", json!({}), T)
        .await
        .unwrap();
    join(&c.nodes[1], &secret, &c.nodes[0].addr(), &mut quiet)
        .await
        .unwrap();
    assert_eq!(members(&status(&c, 0).await), ["n1", "n2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_names_and_concurrent_membership_changes_are_refused_clearly() {
    let mut c = cluster(3);
    c.start_all().await.unwrap();
    let secret = secret_of(&c);
    let first = c.nodes[0].addr();
    join(&c.nodes[1], &secret, &first, &mut quiet)
        .await
        .unwrap();

    // Another machine also called n2 asks to join: refused by name, nothing changes.
    let i = c.add_node("n2").unwrap();
    let bin = c.bin.clone();
    c.nodes[i].start(&bin).unwrap();
    c.nodes[i].wait_ready(T).await.unwrap();
    let err = c.nodes[i]
        .call("join", json!({"secret": secret, "node": first}), T)
        .await
        .unwrap_err();
    assert!(err.contains("node name \"n2\" is already taken"), "{err}");
    let st = status(&c, 0).await;
    assert_eq!(members(&st), ["n1", "n2"]);
    assert_eq!(
        st["nodes"]["n2"]["address"],
        c.nodes[1].addr(),
        "the member is untouched"
    );

    // Two joins at once: one membership change at a time; the other is refused clearly
    // (or, if the first finished already, accepted). Either way the list matches.
    let (a, b) = tokio::join!(
        c.nodes[2].call("join", json!({"secret": secret, "node": first}), T),
        c.nodes[3].call("join", json!({"secret": secret, "node": first}), T),
    );
    let mut expect = vec!["n1".to_string(), "n2".to_string()];
    for (r, name) in [(a, "n3"), (b, "n2")] {
        match r {
            Ok(_) if name == "n3" => expect.push(name.to_string()),
            Ok(v) => panic!("the second n2 was admitted: {v}"),
            Err(e) => assert!(
                e.contains("in progress") || e.contains("already taken"),
                "{name}: {e}"
            ),
        }
    }
    if expect.len() == 3 {
        wait_member(&c.nodes[2], T, &mut quiet).await.unwrap();
    }
    expect.sort();
    assert_eq!(members(&status(&c, 0).await), expect);
}

/// A config of `kib` KiB that set_service_config accepts.
fn big_config(kib: usize) -> String {
    format!("[DEFAULT]\nnodes = *\n# {}\n", "x".repeat(kib << 10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_catches_followers_up_on_large_entries_and_oversized_commands_are_refused() {
    let mut c = cluster(3);
    c.start_all().await.unwrap();
    c.join_all(&mut quiet).await.unwrap();
    // 24 configs near the 1 MiB limit: a new leader's first probe of a follower carries
    // half the log (12 MiB in one append) unless appends are cut to a byte budget, and
    // that append cannot be answered within openraft's deadline (one heartbeat).
    let leader = c.leader().await.unwrap();
    let via = c.nodes.iter().position(|n| n.name == leader).unwrap();
    for i in 0..24 {
        let svc = format!("big{i}");
        let config = big_config(900);
        let r = c.nodes[via]
            .call(
                "set_service_config",
                json!({"svcname": svc, "config": config}),
                T,
            )
            .await;
        r.unwrap_or_else(|e| panic!("{svc}: {e}"));
    }
    c.node(&leader).unwrap().kill();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != via).collect();
    let new_write = write_after_leader_loss(&c, survivors[0]).await;
    // The old leader restarts and is caught up by the new one, large entries and all.
    let bin = c.bin.clone();
    c.nodes[via].start(&bin).unwrap();
    c.nodes[via].wait_ready(T).await.unwrap();
    for i in 0..3 {
        wait_applied(&c, i, new_write).await;
    }

    // Over the config limit: committed, then refused by the state machine.
    let err = c.nodes[survivors[1]]
        .call(
            "set_service_config",
            json!({"svcname": "huge", "config": big_config(1536)}),
            T,
        )
        .await
        .unwrap_err();
    assert!(err.contains("the limit is 1048576"), "{err}");
    // Over what one log entry may hold: refused before it is proposed, as a bad request.
    let err = c.nodes[survivors[1]]
        .call(
            "set_service_config",
            json!({"svcname": "huge", "config": big_config(3 << 10)}),
            T,
        )
        .await
        .unwrap_err();
    assert!(
        err.contains("more than a log entry may hold (2097152)"),
        "{err}"
    );
    let r = c.nodes[survivors[1]]
        .call("get_service_config", json!({"svcname": "huge"}), T)
        .await;
    assert!(r.is_err(), "nothing was stored: {r:?}");
}
