//! The cluster secret on disk and on the command line: node.conf and `etc/` are private to
//! root after start, join and `om node set`; a daemon refuses to start on a node.conf that
//! others can read; `join` takes the secret from a file or stdin and never echoes it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use om::cli::local::LocalCluster;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn om(root: &Path, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_om"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("OM_SECRET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run om");
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn secret(root: &Path) -> String {
    om::config::NodeConfig::load(&root.join("etc/node.conf"))
        .unwrap()
        .1
        .secret
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_conf_stays_private_and_the_secret_never_shows() {
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 2, None).unwrap();
    c.start_all().await.unwrap();
    let (r1, r2) = (c.nodes[0].paths.root.clone(), c.nodes[1].paths.root.clone());
    let conf1 = c.nodes[0].paths.node_conf();
    assert_eq!(mode(&conf1), 0o600, "node.conf after the first start");
    assert_eq!(
        mode(conf1.parent().unwrap()),
        0o700,
        "etc/ after the first start"
    );
    let s = secret(&r1);
    assert!(
        s.len() >= 64,
        "a generated secret is 32 bytes in hex: {}",
        s.len()
    );

    // A weak secret is refused before anything is sent, and not echoed.
    let weak = "tooshort-secret";
    let (code, out, err) = om(
        &r2,
        &[
            "node",
            "daemon",
            "join",
            "--secret",
            weak,
            "--node",
            &c.nodes[0].addr(),
        ],
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("at least 32 characters"), "{err}");
    assert!(!out.contains(weak) && !err.contains(weak), "{out}{err}");

    // Join reading the secret from stdin.
    let (code, out, err) = om(
        &r2,
        &[
            "node",
            "daemon",
            "join",
            "--secret",
            "-",
            "--node",
            &c.nodes[0].addr(),
        ],
        Some(&format!("{s}\n")),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !out.contains(&s) && !err.contains(&s),
        "the secret was printed"
    );
    let conf2 = c.nodes[1].paths.node_conf();
    assert_eq!(mode(&conf2), 0o600, "node.conf after join");
    assert_eq!(secret(&r2), s);

    // `om node set` keeps the mode, even after a chmod that widened it.
    std::fs::set_permissions(&conf1, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = om(
        &r1,
        &[
            "node",
            "set",
            "--param",
            "node.down_timeout",
            "--value",
            "7s",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(mode(&conf1), 0o600, "node.conf after om node set");

    // A daemon refuses to start on a node.conf others can read, and says what to run.
    c.nodes[0].kill();
    std::fs::set_permissions(&conf1, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, out, err) = om(&r1, &["node", "daemon", "run"], None);
    assert_ne!(code, 0, "the daemon started on a 0640 node.conf");
    let all = format!("{out}{err}");
    assert!(all.contains("chmod 600"), "{all}");
    assert!(!all.contains(&s), "the secret was printed: {all}");
    std::fs::set_permissions(&conf1, std::fs::Permissions::from_mode(0o600)).unwrap();
    c.nodes[0].start(&c.bin).unwrap();
    c.nodes[0]
        .wait_ready(Duration::from_secs(20))
        .await
        .expect("starts again once node.conf is 0600");
}

/// With `cluster.secret_file`, node.conf holds no secret: the first start makes one in the
/// file (0600), a join writes the cluster's there, and a file others can read stops the
/// daemon from starting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_can_live_in_its_own_file() {
    let mut c = LocalCluster::prepare(env!("CARGO_BIN_EXE_om").into(), 2, None).unwrap();
    let files: Vec<_> = c
        .nodes
        .iter()
        .map(|n| n.paths.root.join("etc/cluster.secret"))
        .collect();
    for (n, file) in c.nodes.iter().zip(&files) {
        let conf = n.paths.node_conf();
        let text = std::fs::read_to_string(&conf).unwrap();
        let line = format!("\n[cluster]\nsecret_file = {}\n", file.display());
        std::fs::write(&conf, text + &line).unwrap();
    }
    c.start_all().await.unwrap();
    let s = secret(&c.nodes[0].paths.root);
    assert!(s.len() >= 64, "a generated secret: {} characters", s.len());
    assert_eq!(
        std::fs::read_to_string(&files[0]).unwrap(),
        format!("{s}\n")
    );
    assert_eq!(mode(&files[0]), 0o600);
    let conf1 = std::fs::read_to_string(c.nodes[0].paths.node_conf()).unwrap();
    assert!(!conf1.contains(&s), "node.conf holds the secret: {conf1}");
    let root1 = &c.nodes[0].paths.root;
    let (code, out, _) = om(root1, &["node", "get", "--param", "cluster.secret"], None);
    assert_eq!(
        (code, out.trim()),
        (0, s.as_str()),
        "node get shows the secret in use"
    );

    let (code, out, err) = om(
        &c.nodes[1].paths.root,
        &[
            "node",
            "daemon",
            "join",
            "--secret-file",
            files[0].to_str().unwrap(),
            "--node",
            &c.nodes[0].addr(),
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        std::fs::read_to_string(&files[1]).unwrap(),
        format!("{s}\n")
    );
    assert_eq!(secret(&c.nodes[1].paths.root), s);
    let conf2 = std::fs::read_to_string(c.nodes[1].paths.node_conf()).unwrap();
    assert!(!conf2.contains(&s), "node.conf holds the secret after join");

    c.nodes[1].kill();
    std::fs::set_permissions(&files[1], std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = om(&c.nodes[1].paths.root, &["node", "daemon", "run"], None);
    let all = format!("{out}{err}");
    assert_ne!(code, 0, "the daemon started on a 0644 secret file");
    assert!(all.contains("chmod 600") && !all.contains(&s), "{all}");
}
