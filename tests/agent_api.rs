//! The agent API of the Zeek seed on real processes: `hello` with its version check, and
//! `get_nodes` with one result per node, a dead node giving a failed result inside a
//! successful answer.

use std::time::Duration;

use om::cli::local::LocalCluster;
use serde_json::json;

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
