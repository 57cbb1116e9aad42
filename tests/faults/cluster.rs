//! A cluster of [`FaultNode`]s on a private [`Net`]: node.conf for each, start, join with
//! the real `join` request (as `om node daemon join` sends it), the leader, convergence of
//! the applied states, and teardown. Dropping it kills every daemon, unmounts the small
//! disk, deletes the namespaces and the directory; after a panic the directory (logs,
//! stores, history) is kept and its path printed.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use serde_json::json;

use crate::net;
use crate::net::Net;
use crate::node::FaultNode;

/// How a cluster is made.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Number of nodes.
    pub nodes: usize,
    /// A node (index) whose `var/` is a small tmpfs of this many MiB (the full-disk fault).
    pub small_disk: Option<(usize, u32)>,
    /// Whether the daemons run under libfaketime (the clock faults).
    pub fake_clock: bool,
}

/// The running cluster.
pub(crate) struct FaultCluster {
    /// The `om` binary.
    pub bin: PathBuf,
    /// The nodes, `n1`, `n2`, ... (dropped before the network).
    pub nodes: Vec<FaultNode>,
    /// The directory shared by the nodes' services (the failover app's beats).
    pub shared: PathBuf,
    /// The node whose `var/` is a tmpfs, if any.
    pub small_disk: Option<usize>,
    mounts: Vec<PathBuf>,
    keep: bool,
    net: Net,
    dir: Option<tempfile::TempDir>,
}

impl FaultCluster {
    /// Makes the namespaces and the roots; nothing runs yet.
    pub(crate) fn create(bin: PathBuf, opts: &Options) -> Result<FaultCluster, String> {
        net::remove_stale();
        remove_stale_mounts();
        let net = Net::create(opts.nodes)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}{}-", net::PREFIX, std::process::id()))
            .tempdir()
            .map_err(|e| e.to_string())?;
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(&shared).map_err(|e| e.to_string())?;
        let mut c = FaultCluster {
            bin,
            nodes: Vec::new(),
            shared,
            small_disk: opts.small_disk.map(|(i, _)| i),
            mounts: Vec::new(),
            keep: false,
            net,
            dir: Some(dir),
        };
        for (i, host) in c.net.hosts.clone().into_iter().enumerate() {
            let name = format!("n{}", i + 1);
            let root = c.base().join(&name);
            write_conf(&root, &name, &host.ip)?;
            if let Some((_, mib)) = opts.small_disk.filter(|(d, _)| *d == i) {
                let var = root.join("var");
                std::fs::create_dir_all(&var).map_err(|e| e.to_string())?;
                let size = format!("size={mib}m");
                net::run(
                    "mount",
                    &["-t", "tmpfs", "-o", &size, "tmpfs", path_str(&var)],
                )?;
                c.mounts.push(var);
            }
            c.nodes
                .push(FaultNode::new(name, host, root, opts.fake_clock));
        }
        Ok(c)
    }

    /// The directory holding the roots and the shared directory.
    pub(crate) fn base(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the directory is kept until drop")
            .path()
    }

    /// Keeps the directory (logs, stores, the app's heartbeats) when the cluster is dropped.
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }

    /// The network, for its faults.
    pub(crate) fn net(&self) -> &Net {
        &self.net
    }

    /// Starts every daemon, joins nodes 2.. to node 1, one at a time.
    pub(crate) async fn form(&mut self) -> Result<(), String> {
        let bin = self.bin.clone();
        for n in &mut self.nodes {
            n.start(&bin)?;
        }
        for n in &self.nodes {
            n.wait_ready(Duration::from_secs(60)).await?;
        }
        let secret = om::config::NodeConfig::load(&self.nodes[0].paths.node_conf())
            .map_err(|e| e.to_string())?
            .1
            .secret;
        let target = self.nodes[0].addr();
        for n in &self.nodes[1..] {
            n.call(
                "join",
                json!({"secret": secret, "node": target}),
                Duration::from_secs(60),
            )
            .await
            .map_err(|e| format!("{} join: {}\n{}", n.name, e.message, n.log_tail(20)))?;
            om::cli::local::wait_joined(&n.paths, &n.name, Duration::from_secs(90), &mut |_| {})
                .await
                .map_err(|e| format!("{e}\n{}", n.log_tail(20)))?;
        }
        Ok(())
    }

    /// The leader as the first node that knows one says, with its index.
    pub(crate) async fn leader(&self) -> Option<usize> {
        for n in &self.nodes {
            let Ok(st) = n
                .call("daemon_status", json!({}), Duration::from_secs(5))
                .await
            else {
                continue;
            };
            if let Some(l) = st["cluster"]["leader"].as_str() {
                return self.nodes.iter().position(|n| n.name == l);
            }
        }
        None
    }

    /// Waits until every node has applied the same index with the same state digest, and
    /// checks on the way that no two nodes ever showed different digests at one index.
    pub(crate) async fn converge(&self, timeout: Duration) -> Result<(u64, String), String> {
        let deadline = Instant::now() + timeout;
        let mut seen: std::collections::BTreeMap<u64, (String, String)> = Default::default();
        loop {
            let mut now = Vec::new();
            for n in &self.nodes {
                let st = n.local_status().await;
                let a = st.as_ref().map(|s| s["applied_state"].clone());
                let index = a.as_ref().and_then(|a| a["index"].as_u64());
                let digest = a
                    .as_ref()
                    .and_then(|a| a["digest"].as_str().map(String::from));
                if let (Some(i), Some(d)) = (index, digest.clone()) {
                    match seen.get(&i) {
                        Some((other, who)) if *other != d => {
                            return Err(format!(
                                "state divergence at index {i}: {who} has {other}, {} has {d}",
                                n.name
                            ))
                        }
                        _ => {
                            seen.insert(i, (d, n.name.clone()));
                        }
                    }
                }
                now.push((n.name.clone(), index, digest));
            }
            let first = &now[0];
            if let (Some(i), Some(d)) = (first.1, &first.2) {
                if now.iter().all(|x| x.1 == first.1 && x.2 == first.2) {
                    return Ok((i, d.clone()));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("no convergence within {timeout:?}: {now:?}"));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The nodes whose Raft thread cannot reopen its store because an earlier instance in
    /// the same process still holds sled's lock (after a disk error: docs/OPERATIONS.md,
    /// "Faults"); only a restart of the daemon frees it.
    pub(crate) async fn stuck_stores(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let st = n.local_status().await.unwrap_or_default();
            let err = st["threads"]["raft"]["last_error"].as_str().unwrap_or("");
            if st["role"] == "shutdown" && err.contains("could not acquire lock") {
                out.push(i);
            }
        }
        out
    }

    /// Restarts the nodes of [`FaultCluster::stuck_stores`]; returns what it did.
    pub(crate) async fn restart_stuck(&mut self) -> Result<Vec<String>, String> {
        let bin = self.bin.clone();
        let mut notes = Vec::new();
        for i in self.stuck_stores().await {
            let n = &mut self.nodes[i];
            notes.push(format!(
                "known: {}'s raft store stayed locked by the instance that hit the disk error;                  the daemon was restarted",
                n.name
            ));
            n.kill();
            n.start(&bin)?;
            n.wait_ready(Duration::from_secs(60)).await?;
        }
        Ok(notes)
    }

    /// Every node's last log lines, for a failure message.
    pub(crate) fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}\n", n.name, n.log_tail(25)))
            .collect()
    }
}

impl Drop for FaultCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        for m in &self.mounts {
            let _ = net::run("umount", &["-l", path_str(m)]);
        }
        if self.keep || std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("faults: kept {} (logs, stores, history)", kept.display());
            }
        }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// node.conf: the node's name, its listener on its private address, the defaults otherwise.
fn write_conf(root: &Path, name: &str, ip: &str) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    let etc = root.join("etc");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&etc)
        .map_err(|e| e.to_string())?;
    let conf = format!("[node]\nname = {name}\n\n[listener]\naddr = {ip}\nport = 1214\n");
    std::fs::write(etc.join("node.conf"), conf).map_err(|e| e.to_string())
}

/// Unmounts tmpfs mounts under a directory of the suite's prefix whose process is gone.
fn remove_stale_mounts() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let tmp = std::env::temp_dir();
    for line in mounts.lines() {
        let Some(point) = line.split_whitespace().nth(1) else {
            continue;
        };
        let Some(rest) = Path::new(point)
            .strip_prefix(&tmp)
            .ok()
            .and_then(|r| r.to_str())
            .and_then(|r| r.strip_prefix(net::PREFIX))
        else {
            continue;
        };
        let owner: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            eprintln!("faults: unmounting stale {point}");
            let _ = net::run("umount", &["-l", point]);
        }
    }
}
