//! Agent-layer safety with real `om` processes: a listener address another member holds is
//! refused wherever an operator can type it; if one is forced into the cluster's records
//! anyway, Raft RPCs reach the wrong node, are refused as misaddressed, and nothing commits
//! without a real majority, until the member, hearing from no leader, announces its real
//! address again; a join that fails after its learner was added leaves no learner
//! behind; a dead member is removed from another node with `leave --node`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use om::cli::local::LocalCluster;
use om::wire::ClientOptions;
use om::wire::Keyring;
use serde_json::json;
use serde_json::Value;

const T: Duration = Duration::from_secs(15);

fn om(root: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_om"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("run om");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

async fn three() -> LocalCluster {
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 3, None).unwrap();
    c.start_all().await.unwrap();
    c.join_all(&mut |_| {}).await.unwrap();
    c
}

async fn status(c: &LocalCluster, i: usize) -> Value {
    c.nodes[i]
        .call("daemon_status", json!({}), T)
        .await
        .unwrap()
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn secret(c: &LocalCluster) -> (String, String) {
    let cfg = om::config::NodeConfig::load(&c.nodes[0].paths.node_conf())
        .unwrap()
        .1;
    (cfg.cluster_name, cfg.secret)
}

/// A write that only commits with a majority (the node monitor's frozen flag).
async fn freeze(c: &LocalCluster, i: usize, frozen: bool, t: Duration) -> Result<Value, String> {
    let name = c.nodes[i].name.clone();
    c.nodes[i]
        .call(
            "set_node_monitor",
            json!({"node": name, "frozen": frozen}),
            t,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_listener_address_is_refused_and_a_forced_one_commits_nothing_alone() {
    let mut c = three().await;
    let (n1_port, n3_port) = (c.nodes[0].port, c.nodes[2].port);
    let root3 = c.nodes[2].paths.root.clone();
    let conf3 = c.nodes[2].paths.node_conf();

    // The port typo, through the CLI: refused, naming the member; node.conf untouched.
    let before = std::fs::read_to_string(&conf3).unwrap();
    let (code, out) = om(
        &root3,
        &[
            "node",
            "set",
            "--param",
            "listener.port",
            "--value",
            &n1_port.to_string(),
        ],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("member n1's"), "{out}");
    assert_eq!(std::fs::read_to_string(&conf3).unwrap(), before);

    // The same typo made by hand in node.conf: the watcher refuses it, n3 keeps its port,
    // and status says why.
    std::fs::write(
        &conf3,
        before.replace(&format!("port = {n3_port}"), &format!("port = {n1_port}")),
    )
    .unwrap();
    eventually("status shows the refused address", T, || async {
        let st = status(&c, 2).await;
        st["nodes"]["n3"]["listener_problem"]
            .as_str()
            .is_some_and(|p| p.contains("member n1's"))
    })
    .await;
    assert_eq!(
        status(&c, 0).await["nodes"]["n3"]["address"],
        c.nodes[2].addr()
    );
    std::fs::write(&conf3, &before).unwrap();

    // Forced past every check: a frame signed as n3 (the secret is root: a member can do
    // this) tells the leader that n3 listens at n1's port, spelled differently. n3 is
    // paused first: awake, it would soon notice that no leader reaches it and announce its
    // real address again (below).
    c.nodes[2].pause(true);
    let (cluster, secret) = secret(&c);
    let forger = ClientOptions::new(c.nodes[0].addr(), Keyring::new(cluster, secret), "n3").build();
    let spoofed = format!("localhost:{n1_port}");
    let r = forger
        .request("join", json!({"node": "n3", "addr": spoofed}), T)
        .await
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    // The RPCs for n3 now reach n1's listener, whose handshake names the node meant (n3):
    // n1 refuses the session as misaddressed, before the Raft core sees anything. (A
    // receiver that did not check would be caught by the Raft id in every RPC: the
    // simulator's `rpc-target-unchecked` bug.)
    eventually("n1 refuses the sessions meant for n3", T, || async {
        let n1 = &status(&c, 0).await["nodes"]["n1"];
        n1["listener_metrics"]["rejected"]["misaddressed"].as_u64() > Some(0)
            || n1["rpc_refused"].as_u64() > Some(0)
    })
    .await;
    let st = status(&c, 0).await;
    assert_ne!(
        st["nodes"]["n3"]["reachable"],
        json!(true),
        "{}",
        st["nodes"]["n3"]
    );

    // With n2 dead, n1 is one live voter of three (n3 is alive but unreachable at the
    // recorded address): nothing may commit.
    c.nodes[1].kill();
    let applied = status(&c, 0).await["nodes"]["n1"]["last_applied"].as_u64();
    let r = freeze(&c, 0, true, Duration::from_secs(4)).await;
    assert!(
        r.is_err(),
        "a write committed with one voter of three alive: {r:?}"
    );
    let st = status(&c, 0).await;
    assert_eq!(
        st["nodes"]["n1"]["last_applied"].as_u64(),
        applied,
        "n1 applied an entry without a majority"
    );

    // n3 wakes up, hears from no leader (n1's RPCs still go to the forged address) and
    // announces its real address again, without a restart: the cluster recovers and commits.
    c.nodes[2].pause(false);
    eventually(
        "n3's real address is recorded",
        Duration::from_secs(20),
        || async { status(&c, 0).await["nodes"]["n3"]["address"] == json!(c.nodes[2].addr()) },
    )
    .await;
    freeze(&c, 0, false, T)
        .await
        .expect("commits once n3 is reachable again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_that_fails_after_the_learner_was_added_leaves_no_learner() {
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 1, None).unwrap();
    let conf = c.nodes[0].paths.node_conf();
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        text.replace("[node]\n", "[node]\njoin_timeout = 2s\n"),
    )
    .unwrap();
    c.start_all().await.unwrap();

    // "ghost" asks to join with an address where nothing listens: it is admitted as a
    // learner, never catches up, and must be removed again.
    let (_, secret) = secret(&c);
    let dead = om::cli::local::free_port().unwrap();
    let ghost = ClientOptions::new(c.nodes[0].addr(), Keyring::new("", secret), "ghost").build();
    let r = ghost
        .request(
            "join",
            json!({"node": "ghost", "addr": format!("127.0.0.1:{dead}")}),
            T,
        )
        .await
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    let st = status(&c, 0).await;
    assert_eq!(st["nodes"]["ghost"]["membership"], "learner", "{st}");
    eventually(
        "the learner is rolled back",
        Duration::from_secs(15),
        || async { status(&c, 0).await["nodes"].get("ghost").is_none() },
    )
    .await;
    assert!(
        c.nodes[0].log_tail().contains("ghost removed"),
        "{}",
        c.nodes[0].log_tail()
    );
    // The membership lock was released: a write and another change go through.
    freeze(&c, 0, true, T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_member_is_removed_from_another_node_and_the_last_voters_are_kept() {
    let mut c = three().await;
    c.nodes[2].kill();
    let root1 = c.nodes[0].paths.root.clone();
    let root2 = c.nodes[1].paths.root.clone();
    // From a follower or the leader alike: whoever leads does it.
    let (code, out) = om(&root2, &["node", "daemon", "leave", "--node", "n3"]);
    assert_eq!(code, 0, "{out}");
    let st = status(&c, 0).await;
    assert_eq!(st["cluster"]["nodes"], json!(["n1", "n2"]), "{st}");
    assert!(st["nodes"].get("n3").is_none(), "{}", st["nodes"]);

    // Two voters left: removing one more needs --force.
    let (code, out) = om(&root1, &["node", "daemon", "leave", "--node", "n2"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("--force"), "{out}");
    assert_eq!(status(&c, 0).await["cluster"]["nodes"], json!(["n1", "n2"]));
    freeze(&c, 0, true, T)
        .await
        .expect("the two voters still commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_left_comes_back_under_its_name_as_a_new_raft_member() {
    let c = three().await;
    let root3 = c.nodes[2].paths.root.clone();
    let before = status(&c, 2).await["nodes"]["n3"]["raft_id"].clone();
    let (code, out) = om(&root3, &["node", "daemon", "leave"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(status(&c, 0).await["cluster"]["nodes"], json!(["n1", "n2"]));

    // Same name, new store: a new Raft id, admitted (it used to be refused for good).
    let (_, secret) = secret(&c);
    if let Err(e) =
        om::cli::local::join(&c.nodes[2], &secret, &c.nodes[0].addr(), &mut |_| {}).await
    {
        panic!(
            "rejoin under the old name: {e}\nall nodes:\n{}",
            c.log_tails()
        );
    }
    let st = status(&c, 0).await;
    assert_eq!(st["cluster"]["nodes"], json!(["n1", "n2", "n3"]));
    let after = st["nodes"]["n3"]["raft_id"].clone();
    assert!(after.is_string() && after != before, "{before} -> {after}");
    // The old incarnation's id stays departed; the cluster commits with the new one.
    freeze(&c, 2, true, T)
        .await
        .expect("a write through the rejoined node");
}

/// A leader whose own record is overwritten (a frame signed as n1 tells n1 that it
/// listens at a dead port) always knows a leader (itself), so only its view of its own
/// record shows it: it announces its real address again within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_own_record_is_wrong_announces_its_address_again() {
    let c = three().await;
    let leader = c.leader().await.expect("a leader");
    let i = c.nodes.iter().position(|n| n.name == leader).unwrap();
    let real = c.nodes[i].addr();
    let dead = format!("127.0.0.1:{}", om::cli::local::free_port().unwrap());
    let (cluster, secret) = secret(&c);
    let forger = ClientOptions::new(real.clone(), Keyring::new(cluster, secret), &leader).build();
    let r = forger
        .request("join", json!({"node": leader, "addr": dead}), T)
        .await
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    // The log line is the watchdog's, once the cluster recorded the real address again.
    eventually(
        "the leader announces its address again",
        Duration::from_secs(20),
        || async {
            c.nodes[i]
                .log_tail()
                .contains("record was stale: announced its address")
        },
    )
    .await;
    // A follower's write reaches the leader at its record (forwarded proposals go there).
    freeze(&c, (i + 1) % 3, true, T)
        .await
        .expect("a follower's write commits through the leader's repaired record");
}
