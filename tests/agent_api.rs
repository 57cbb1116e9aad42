//! The agent API of the Zeek seed on real processes: `hello` with its version check, and
//! `get_nodes` with one result per node, a dead node giving a failed result inside a
//! successful answer.

use std::time::Duration;

use om::cli::local::LocalCluster;
use serde_json::json;
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_and_get_nodes() {
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 2, None).unwrap();
    c.start_all().await.unwrap();
    c.join_all(&mut |_| {}).await.unwrap();
    let n1 = &c.nodes[0];

    let h = n1
        .call("hello", json!({"api_version": 1}), T)
        .await
        .unwrap();
    assert_eq!(h["instance"], "n1", "{h}");
    assert_eq!(h["api_version"], 1);
    assert_eq!(h["api_versions"], json!([1]));
    assert_eq!(h["host"], n1.addr());
    let h = n1.call("hello", json!({}), T).await.unwrap();
    assert_eq!(h["api_version"], 1);
    let e = n1
        .call("hello", json!({"api_version": 7}), T)
        .await
        .unwrap_err();
    assert!(e.contains("api_version 7") && e.contains("[1]"), "{e}");
    let e = n1
        .call("hello", json!({"api_version": "one"}), T)
        .await
        .unwrap_err();
    assert!(e.contains("hello"), "{e}");

    let nodes = n1.call("get_nodes", json!({}), T).await.unwrap();
    let list = nodes.as_array().unwrap();
    assert_eq!(list.len(), 2, "{nodes}");
    for (r, name) in list.iter().zip(["n1", "n2"]) {
        assert_eq!(r["node"], name, "{nodes}");
        assert_eq!(r["success"], true, "{nodes}");
        assert!(
            r["data"]["role"] == "leader" || r["data"]["role"] == "follower",
            "{nodes}"
        );
    }

    // Members check in with `hello` on each session they open (Zeek's
    // notify_agent_hello): n1 heard n2, and hears it again once n2 restarted.
    let before = check_ins(&c.nodes[0], "n2", 1).await;
    assert_eq!(before["api_version"], 1, "{before}");
    let n = before["count"].as_u64().unwrap();
    c.nodes[1].kill();
    let bin = c.bin.clone();
    c.nodes[1].start(&bin).unwrap();
    c.nodes[1].wait_ready(T).await.unwrap();
    let after = check_ins(&c.nodes[0], "n2", n + 1).await;
    assert!(after["ago_ms"].as_u64().unwrap() < 30_000, "{after}");
    check_ins(&c.nodes[1], "n1", 1).await;

    // A dead node: its own result fails, the request does not.
    c.nodes[1].kill();
    let nodes = c.nodes[0]
        .call("get_nodes", json!({"timeout_ms": 300}), T)
        .await
        .unwrap();
    let list = nodes.as_array().unwrap();
    assert_eq!(list[0]["success"], true, "{nodes}");
    assert_eq!(list[1]["node"], "n2");
    assert_eq!(list[1]["success"], false, "{nodes}");
    assert!(
        list[1]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{nodes}"
    );
}

/// Waits until `node` has heard at least `count` check-ins of `member`; returns the last.
async fn check_ins(
    node: &om::cli::local::LocalNode,
    member: &str,
    count: u64,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = node
            .call("daemon_status", json!({"local": true}), T)
            .await
            .unwrap();
        let seen = st["self"]["check_ins"][member].clone();
        if seen["count"].as_u64().is_some_and(|n| n >= count) {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} heard {member} check in fewer than {count} times: {st}",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const SVC: &str = "[DEFAULT]\nnodes = n1 n2\norchestrate = no\n\n[app#1]\nstart = true\nstop = true\ncheck = true\n";

/// `set_configuration` with the whole document: refused in full when any part is wrong
/// (every problem named, nothing committed), a dry run, a deployment answered with one
/// result per node (a dead node's result fails), `get_configuration` giving back what was
/// set, and a service left out of the next document deleted. Sent to a follower: it
/// forwards to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_configuration_deploys_a_whole_document_with_a_result_per_node() {
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 3, None).unwrap();
    c.start_all().await.unwrap();
    c.join_all(&mut |_| {}).await.unwrap();
    let n2 = &c.nodes[1];
    let set = |config: serde_json::Value, dry_run: bool| json!({"config": config, "dry_run": dry_run, "timeout_ms": 5000});

    let bad = json!({
        "params": {"cluster.jion": "approve"},
        "services": {"web": SVC, "db": "[app#1]\nrestart = twice\n", "bad name!": SVC}
    });
    let e = n2
        .call("set_configuration", set(bad, false), T)
        .await
        .unwrap_err();
    for part in [
        "cluster.jion",
        "service db: section [app#1]",
        "bad name!",
        "nothing was committed",
    ] {
        assert!(e.contains(part), "{part:?} missing from: {e}");
    }
    let typo = json!({"service": {"web": SVC}});
    let e = n2
        .call("set_configuration", set(typo, false), T)
        .await
        .unwrap_err();
    assert!(e.contains("unknown field") && e.contains("service"), "{e}");
    let got = n2.call("get_configuration", json!({}), T).await.unwrap();
    assert_eq!(
        got["config"],
        json!({"params": {}, "services": {}}),
        "{got}"
    );

    let doc = json!({"params": {"cluster.join": "approve"}, "services": {"web": SVC, "db": SVC}});
    let plan = n2
        .call("set_configuration", set(doc.clone(), true), T)
        .await
        .unwrap();
    assert_eq!(plan["created"], json!(["db", "web"]), "{plan}");
    assert_eq!(plan["params_set"], json!(["cluster.join"]));
    assert_eq!(plan["results"], json!([]), "a dry run asks no node");
    let got = n2.call("get_configuration", json!({}), T).await.unwrap();
    assert_eq!(
        got["config"]["services"],
        json!({}),
        "the dry run committed nothing"
    );

    let done = n2
        .call("set_configuration", set(doc.clone(), false), T)
        .await
        .unwrap();
    let index = done["index"].as_u64().unwrap();
    assert!(index > 0, "{done}");
    let results = done["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{done}");
    assert!(
        results
            .iter()
            .all(|r| r["success"] == true && r["applied"].as_u64() >= Some(index)),
        "{done}"
    );
    for n in &c.nodes {
        let got = n.call("get_configuration", json!({}), T).await.unwrap();
        assert_eq!(got["config"], doc, "{} after the deployment", n.name);
    }
    let again = n2
        .call("set_configuration", set(doc, false), T)
        .await
        .unwrap();
    assert_eq!(
        (again["created"].clone(), again["index"].clone()),
        (json!([]), json!(0)),
        "nothing to do: {again}"
    );

    // n3 dead: its result fails; db left out is deleted, the parameter unset.
    c.nodes[2].kill();
    let next = json!({"services": {"web": SVC}});
    let done = c.nodes[0]
        .call("set_configuration", set(next, false), T)
        .await
        .unwrap();
    assert_eq!(done["deleted"], json!(["db"]), "{done}");
    assert_eq!(done["params_unset"], json!(["cluster.join"]), "{done}");
    let results = done["results"].as_array().unwrap();
    assert_eq!(
        results.iter().filter(|r| r["success"] == true).count(),
        2,
        "{done}"
    );
    let n3 = results.iter().find(|r| r["node"] == "n3").unwrap();
    assert!(
        n3["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{done}"
    );
    let got = c.nodes[0]
        .call("get_configuration", json!({}), T)
        .await
        .unwrap();
    assert_eq!(got["config"]["services"], json!({"web": SVC}), "{got}");
}

/// `events` filtered by service (a dotted name is not a prefix of another), by kind and by
/// path prefix; a reader from before a daemon restart is told `reset`; `om node events
/// --follow` waits through the restart and prints what the new run applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_filtered_and_followed_through_a_restart() {
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 1, None).unwrap();
    c.start_all().await.unwrap();
    let n1 = &c.nodes[0];
    for svc in ["web", "web.front"] {
        n1.call(
            "set_service_config",
            json!({"svcname": svc, "config": SVC}),
            T,
        )
        .await
        .unwrap();
    }
    let ev = n1
        .call("events", json!({"service": "web"}), T)
        .await
        .unwrap();
    let paths: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"services.web.version"), "{ev}");
    assert!(
        paths
            .iter()
            .all(|p| p.starts_with("services.web.") && !p.starts_with("services.web.front")),
        "only web and its instances, not web.front: {ev}"
    );
    assert_eq!(
        ev["events"][0]["event"]["subject"],
        json!({"of": "service", "service": "web"})
    );
    let ev = n1
        .call(
            "events",
            json!({"prefix": "services.web.front.", "kind": "change"}),
            T,
        )
        .await
        .unwrap();
    let front = ev["events"].as_array().unwrap();
    assert!(!front.is_empty(), "{ev}");
    assert!(
        front
            .iter()
            .all(|e| e["event"]["subject"]["service"] == "web.front"),
        "{ev}"
    );
    let e = n1
        .call("events", json!({"kind": "nonsense"}), T)
        .await
        .unwrap_err();
    assert!(e.contains("kind"), "{e}");
    let (epoch, next) = (ev["epoch"].clone(), ev["next"].clone());
    let everything = n1.call("events", json!({}), T).await.unwrap();
    let all_before: Vec<Value> = everything["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["seq"].as_u64() <= next.as_u64())
        .cloned()
        .collect();

    let mut follow = std::process::Command::new(env!("CARGO_BIN_EXE_om"))
        .arg("--root")
        .arg(&n1.paths.root)
        .args(["node", "events", "--follow", "--service", "db"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    c.nodes[0].kill();
    let bin = c.bin.clone();
    c.nodes[0].start(&bin).unwrap();
    c.nodes[0].wait_ready(T).await.unwrap();
    let n1 = &c.nodes[0];
    // The numbering survives the restart: rebuilt from the log, the events up to `next`
    // are the same ones, and a reader goes on after them.
    let ev = n1
        .call("events", json!({"since": next, "epoch": epoch}), T)
        .await
        .unwrap();
    assert_eq!(
        (ev["reset"].clone(), ev["epoch"].clone()),
        (json!(false), epoch),
        "{ev}"
    );
    let rebuilt = n1.call("events", json!({}), T).await.unwrap();
    let before: Vec<&Value> = rebuilt["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["seq"].as_u64() <= next.as_u64())
        .collect();
    assert_eq!(
        before.iter().map(|e| &e["event"]).collect::<Vec<_>>(),
        all_before.iter().map(|e| &e["event"]).collect::<Vec<_>>(),
        "the same events under the same numbers"
    );
    n1.call(
        "set_service_config",
        json!({"svcname": "db", "config": SVC}),
        T,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    follow.kill().unwrap();
    let out = follow.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("services.db.version - -> 1"), "{text}");
}
