//! Join consent with real `om` processes: with `cluster.join = approve` a join waits
//! (status PENDING, shown by `om cluster join-requests` through any member) until
//! `om cluster approve` commits, the approval is used up by the join, and a joiner that is
//! never approved gives up with the reason. Bad parameters are refused naming what is
//! allowed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use om::cli::local::LocalCluster;
use serde_json::Value;

fn om(root: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_om"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("OM_SECRET")
        .output()
        .expect("run om");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn json(root: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    let (code, out) = om(root, &all);
    assert_eq!(code, 0, "om {args:?}: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("om {args:?}: {e}: {out}"))
}

fn join_cmd(root: &Path, secret_file: &Path, target: &str, wait: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_om"));
    cmd.arg("--root").arg(root).args([
        "node",
        "daemon",
        "join",
        "--secret-file",
        secret_file.to_str().unwrap(),
        "--node",
        target,
        "--approval-wait",
        wait,
    ]);
    cmd.env_remove("OM_SECRET");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_waits_for_an_approval_when_the_cluster_asks_for_one() {
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 4, None).unwrap();
    c.start_all().await.unwrap();
    let secret = om::config::NodeConfig::load(&c.nodes[0].paths.node_conf())
        .unwrap()
        .1
        .secret;
    om::cli::local::join(&c.nodes[1], &secret, &c.nodes[0].addr(), &mut |_| {})
        .await
        .unwrap();
    let (r1, r2) = (c.nodes[0].paths.root.clone(), c.nodes[1].paths.root.clone());
    let secret_file = c.base.join("secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();

    let (code, out) = om(
        &r1,
        &[
            "cluster",
            "set",
            "--param",
            "cluster.join",
            "--value",
            "closed",
        ],
    );
    assert!(code != 0 && out.contains("open, approve"), "{out}");
    let (code, out) = om(
        &r1,
        &[
            "cluster",
            "set",
            "--param",
            "cluster.jion",
            "--value",
            "approve",
        ],
    );
    assert!(code != 0 && out.contains("known: cluster.join"), "{out}");
    json(
        &r1,
        &[
            "cluster",
            "set",
            "--param",
            "cluster.join",
            "--value",
            "approve",
        ],
    );
    assert_eq!(
        json(&r2, &["cluster", "get", "--param", "cluster.join"])["value"],
        "approve"
    );

    // n3 asks; the leader refuses it until approved, and every member can see the request.
    let r3 = c.nodes[2].paths.root.clone();
    let mut joiner = join_cmd(&r3, &secret_file, &c.nodes[0].addr(), "120")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = json(&r2, &["cluster", "join-requests"]);
        assert_eq!(report["policy"], "approve");
        let pending = report["pending"].as_array().unwrap();
        if pending.iter().any(|p| p["node"] == "n3") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n3's request never showed: {report}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let st = json(&r1, &["node", "daemon", "status"]);
    assert_eq!(
        st["cluster"]["nodes"],
        serde_json::json!(["n1", "n2"]),
        "n3 is not in yet"
    );
    assert!(
        joiner.try_wait().unwrap().is_none(),
        "the joiner keeps asking"
    );

    json(&r2, &["cluster", "approve", "n3"]);
    let out = tokio::task::spawn_blocking(move || joiner.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the approved join failed: {text}");
    assert!(
        text.contains("om cluster approve n3"),
        "the joiner said what to run: {text}"
    );
    let st = json(&r1, &["node", "daemon", "status"]);
    assert_eq!(
        st["cluster"]["nodes"],
        serde_json::json!(["n1", "n2", "n3"])
    );
    let report = json(&r1, &["cluster", "join-requests"]);
    assert_eq!(
        report["approved"],
        serde_json::json!([]),
        "used up: {report}"
    );
    assert_eq!(report["pending"], serde_json::json!([]), "{report}");

    // n4 is never approved: it gives up after its wait, with the reason.
    let r4 = c.nodes[3].paths.root.clone();
    let out = join_cmd(&r4, &secret_file, &c.nodes[1].addr(), "3")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("no approval within") && text.contains("approve n4"),
        "{text}"
    );
    let st = json(&r1, &["node", "daemon", "status"]);
    assert_eq!(
        st["cluster"]["nodes"],
        serde_json::json!(["n1", "n2", "n3"])
    );
}
