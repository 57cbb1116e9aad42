//! The Python client of clients/python, written from docs/PROTOCOL.md alone, against a
//! real node: its known-answer test, a member session, a string reqid, a refusal, and the
//! empty packet. Needs python3 with the `cryptography` package (.ci/run installs it).

use std::path::Path;
use std::process::Command;

use om::cli::local::LocalCluster;
use serde_json::Value;

fn python(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("python3")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("python3 runs (install python3 and its `cryptography` package)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_python_client_reproduces_the_worked_example() {
    let (code, out, err) = python(&["clients/python/test_kat.py"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_talks_to_a_real_node() {
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 1, None).unwrap();
    c.start_all().await.unwrap();
    let conf = c.nodes[0].paths.node_conf();
    let conf = conf.to_str().unwrap();
    let port = c.nodes[0].port.to_string();
    let client = |extra: &[&str]| {
        let mut args = vec!["clients/python/om_wire.py", "--conf", conf, "--port", &port];
        args.extend_from_slice(extra);
        python(&args)
    };

    let (code, out, err) = client(&[
        "--name",
        "n1",
        "--empty",
        "daemon_status",
        r#"{"local": true}"#,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["node"], "n1", "{v}");
    assert_eq!(v["status"], 0, "{v}");
    assert_eq!(v["data"]["self"]["role"], "leader", "{v}");
    assert_eq!(
        v["data"]["self"]["listener_metrics"]["empty_packets"], 1,
        "{v}"
    );

    // A name outside cluster.nodes is refused a member session, with the code.
    let (code, out, _) = client(&["--name", "stranger", "daemon_status"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("not_member"), "{out}");
    // Naming another receiver is refused as misaddressed.
    let (code, out, _) = client(&["--name", "n1", "--receiver", "n9", "daemon_status"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("misaddressed"), "{out}");
    // An unknown action is an error status from a working session.
    let (code, out, _) = client(&["--name", "n1", "no_such_action"]);
    assert_eq!(code, 1, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], 2, "{v}");
    assert!(Path::new(conf).exists());
}
