//! Backups and recovery with real `om` processes: a 3-member cluster loses two members to
//! kill -9, the survivor saves its state (no quorum needed), a restore that would drop
//! members is refused without --force and a damaged backup always, the survivor founds a
//! new cluster from the backup and commits again, a lost member rejoins it on a new store;
//! the same backup restored on a fresh node of another cluster.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use om::cli::local::LocalCluster;
use om::cli::local::LocalNode;
use serde_json::json;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn om(node: &LocalNode, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_om"))
        .arg("--root")
        .arg(&node.paths.root)
        .args(args)
        .output()
        .expect("run om");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn om_ok(node: &LocalNode, args: &[&str]) -> String {
    let (code, out, err) = om(node, args);
    assert_eq!(code, 0, "om {args:?} on {}:\n{out}\n{err}", node.name);
    out
}

async fn status(node: &LocalNode) -> Value {
    node.call("daemon_status", json!({}), T)
        .await
        .unwrap_or_default()
}

async fn until(node: &LocalNode, what: &str, ok: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + T;
    loop {
        let st = status(node).await;
        if ok(&st) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {T:?}: {st}\nlog:\n{}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn members(st: &Value) -> Vec<String> {
    serde_json::from_value(st["cluster"]["nodes"].clone()).unwrap_or_default()
}

/// A write that commits only with a majority.
async fn freeze(node: &LocalNode, t: Duration) -> Result<Value, String> {
    let req = json!({"node": node.name, "local_expect": "frozen"});
    node.call("set_node_monitor", req, t).await
}

fn file_arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_lost_is_rebuilt_from_a_survivors_backup() {
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 3, None).unwrap();
    c.start_all().await.unwrap();
    c.join_all(&mut |_| {}).await.unwrap();
    let svc_conf = c.base().join("web.conf");
    std::fs::write(&svc_conf, "[DEFAULT]\nnodes = *\n").unwrap();
    om_ok(
        &c.nodes[0],
        &["web", "create", "--config", file_arg(&svc_conf)],
    );
    let secret_file = c.base().join("secret");
    let cfg = om::config::NodeConfig::load(&c.nodes[0].paths.node_conf())
        .unwrap()
        .1;
    std::fs::write(&secret_file, format!("{}\n", cfg.secret)).unwrap();

    // Two of three members die: nothing commits any more.
    c.nodes[1].kill();
    c.nodes[2].kill();
    let n1 = &c.nodes[0];
    assert!(
        freeze(n1, Duration::from_secs(3)).await.is_err(),
        "no quorum"
    );

    // The survivor saves what it has.
    let backup = c.base().join("backup.om");
    let out = om_ok(n1, &["cluster", "snapshot", "save", file_arg(&backup)]);
    assert!(out.contains("saved n1's cluster state"), "{out}");
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a backup holds the rotated secrets");
    let out = om_ok(
        n1,
        &[
            "--format",
            "json",
            "cluster",
            "snapshot",
            "status",
            file_arg(&backup),
        ],
    );
    let header: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(header["members"], json!(["n1", "n2", "n3"]));
    assert_eq!(header["services"], json!(["web"]));

    // A restore that drops members needs --force; a damaged backup is refused even then,
    // and either way nothing changed.
    let (code, _, err) = om(n1, &["cluster", "snapshot", "restore", file_arg(&backup)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("other members (n2, n3)") && err.contains("--force"),
        "{err}"
    );
    let mut bytes = std::fs::read(&backup).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let damaged = c.base().join("damaged.om");
    std::fs::write(&damaged, &bytes).unwrap();
    let args = [
        "cluster",
        "snapshot",
        "restore",
        "--force",
        file_arg(&damaged),
    ];
    let (code, _, err) = om(n1, &args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the snapshot is damaged"), "{err}");
    let (code, _, err) = om(n1, &["cluster", "snapshot", "status", file_arg(&damaged)]);
    assert_eq!(code, 2, "{err}");
    // Neither a device nor a FIFO is read (one never ends, the other blocks).
    let args = ["cluster", "snapshot", "restore", "--force", "/dev/zero"];
    let (code, _, err) = om(n1, &args);
    assert!(code == 2 && err.contains("not a regular file"), "{err}");
    // A save never writes over the node's own files, a directory or a file that is not
    // a backup.
    let conf = c.nodes[0].paths.node_conf();
    let notes = c.base().join("notes.txt");
    std::fs::write(&notes, "mine\n").unwrap();
    for (target, why) in [
        (conf.as_path(), "inside this node's etc/ or var/"),
        (c.base(), "is a directory"),
        (notes.as_path(), "is not an om snapshot"),
    ] {
        let (code, _, err) = om(n1, &["cluster", "snapshot", "save", file_arg(target)]);
        assert!(code == 2 && err.contains(why), "{target:?}: {err}");
    }
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "mine\n");
    assert_eq!(members(&status(n1).await), ["n1", "n2", "n3"]);

    // Restored: n1 alone leads a new cluster with the backup's services and commits.
    let args = [
        "cluster",
        "snapshot",
        "restore",
        "--force",
        file_arg(&backup),
    ];
    let out = om_ok(n1, &args);
    assert!(out.contains("no longer members: n2, n3"), "{out}");
    assert!(out.contains("n1 is frozen"), "{out}");
    until(n1, "n1 leads alone", |st| {
        st["cluster"]["leader"] == json!("n1") && members(st) == ["n1"]
    })
    .await;
    freeze(n1, T)
        .await
        .expect("a write commits in the new cluster");
    let raft_id = status(n1).await["nodes"]["n1"]["raft_id"].clone();
    // The restored store is the node's store from now on: it survives a kill -9.
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_om"));
    c.nodes[0].kill();
    c.nodes[0].start(&bin).unwrap();
    let n1 = &c.nodes[0];
    n1.wait_ready(T).await.unwrap();
    until(n1, "n1 leads again on its restored store", |st| {
        st["cluster"]["leader"] == json!("n1") && st["nodes"]["n1"]["raft_id"] == raft_id
    })
    .await;
    let web = n1
        .call("get_service_config", json!({"svcname": "web"}), T)
        .await;
    assert!(web.is_ok(), "{web:?}");

    // A lost member comes back on a new store and joins the new cluster.
    let n2_root = c.nodes[1].paths.root.clone();
    std::fs::remove_dir_all(n2_root.join("var/raft")).unwrap();
    std::fs::remove_file(n2_root.join("var/raft.id")).unwrap();
    c.nodes[1].start(&bin).unwrap();
    c.nodes[1].wait_ready(T).await.unwrap();
    let target = c.nodes[0].addr();
    let args = [
        "node",
        "daemon",
        "join",
        "--node",
        &target,
        "--secret-file",
        file_arg(&secret_file),
    ];
    om_ok(&c.nodes[1], &args);
    until(&c.nodes[1], "n2 is a member of the new cluster", |st| {
        members(st) == ["n1", "n2"] && st["cluster"]["leader"] == json!("n1")
    })
    .await;
    let web = c.nodes[1]
        .call("get_service_config", json!({"svcname": "web"}), T)
        .await;
    assert!(web.is_ok(), "n2 has the restored service: {web:?}");

    // The same backup founds another cluster on a fresh node: no --force needed there.
    let i = c.add_node("fresh").unwrap();
    let conf = c.nodes[i].paths.node_conf();
    let text = std::fs::read_to_string(&conf).unwrap() + "\n[cluster]\nname = clone\n";
    std::fs::write(&conf, text).unwrap();
    c.nodes[i].start(&bin).unwrap();
    c.nodes[i].wait_ready(T).await.unwrap();
    until(&c.nodes[i], "fresh bootstraps alone", |st| {
        members(st) == ["fresh"]
    })
    .await;
    let args = [
        "--format",
        "json",
        "cluster",
        "snapshot",
        "restore",
        file_arg(&backup),
    ];
    let out: Value = serde_json::from_str(&om_ok(&c.nodes[i], &args)).unwrap();
    assert_eq!(out["cluster"], json!("clone"));
    assert_eq!(out["renamed_from"], json!(cfg.cluster_name));
    assert_eq!(out["services"], json!(["web"]));
    let answer = (out["leading"].clone(), out["secret_in_use"].clone());
    assert_eq!(answer, (json!(true), Value::Null));
    let fresh = &c.nodes[i];
    until(fresh, "fresh leads the clone", |st| {
        st["cluster"]["leader"] == json!("fresh")
    })
    .await;
    freeze(fresh, T).await.expect("the clone commits");
}
