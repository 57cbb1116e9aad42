//! A cluster of real `om` daemons on loopback, each under its own root: what `om demo`,
//! `om bench --nodes N` and the integration tests run.

use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use serde_json::Value;

use crate::api::options::DaemonStatus;
use crate::api::options::JoinCluster;
use crate::api::status::OwnStatus;
use crate::api::status::Role;
use crate::api::ApiRequest;
use crate::config::Paths;
use crate::control::ControlClient;

/// One daemon process of a local cluster.
pub struct LocalNode {
    /// Its node name.
    pub name: String,
    /// Its listener port on 127.0.0.1.
    pub port: u16,
    /// Its root directory.
    pub paths: Paths,
    child: Option<Child>,
}

impl LocalNode {
    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends a control request and returns the data, or the error message.
    pub async fn call(
        &self,
        action: &str,
        options: Value,
        timeout: Duration,
    ) -> Result<Value, String> {
        let resp = ControlClient::new(&self.paths)
            .request(action, options, timeout)
            .await
            .map_err(|e| e.to_string())?;
        if resp.is_ok() {
            resp.data.into_value()
        } else {
            Err(resp
                .error
                .unwrap_or_else(|| format!("status {}", resp.status)))
        }
    }

    /// Sends the typed request `req` on the control socket and decodes its reply.
    pub async fn ask<R: ApiRequest>(&self, req: &R, timeout: Duration) -> Result<R::Reply, String> {
        ControlClient::new(&self.paths)
            .call(req, timeout)
            .await
            .map_err(|e| e.message)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the daemon with SIGKILL (no goodbye to the cluster).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.paths.control_socket());
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) the daemon: alive to the kernel, silent to
    /// the cluster.
    pub fn pause(&mut self, paused: bool) {
        let sig = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid, which `wait` has not reaped yet.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    /// Starts the daemon process (again).
    pub fn start(&mut self, bin: &Path) -> std::io::Result<()> {
        self.spawn(Command::new(bin))
    }

    /// Starts the daemon process with its file-descriptor limits (soft and hard) set to
    /// `nofile`, through `sh -c 'ulimit -n'` (tests of descriptor exhaustion).
    pub fn start_with_nofile(&mut self, bin: &Path, nofile: u64) -> std::io::Result<()> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"ulimit -n "$1" || exit 111; shift; exec "$@""#)
            .arg("sh")
            .arg(nofile.to_string())
            .arg(bin);
        self.spawn(cmd)
    }

    fn spawn(&mut self, mut cmd: Command) -> std::io::Result<()> {
        daemon_run(&mut cmd, &self.paths.root)?;
        self.child = Some(cmd.spawn()?);
        Ok(())
    }

    /// Waits until the daemon answers `daemon_status` (up to `timeout`).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.ask(&OwnStatus::ASK, Duration::from_secs(2)).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "{} not ready after {timeout:?}: {e}; log: {}",
                        self.name,
                        self.log_tail()
                    ))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits until the daemon has applied log index `index` (up to `timeout`).
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(own) = self.ask(&OwnStatus::ASK, Duration::from_secs(3)).await {
                if own.view.raft.last_applied.unwrap_or(0) >= index {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not apply index {index} within {timeout:?}",
                    self.name
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the daemon's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.paths.root.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// Makes `cmd` (the `om` binary, or a wrapper that runs it last) run the daemon of the
/// node under `root` in the foreground, its output appended to `root/daemon.log`.
pub fn daemon_run(cmd: &mut Command, root: &std::path::Path) -> std::io::Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("daemon.log"))?;
    cmd.arg("--root")
        .arg(root)
        .args(["node", "daemon", "run"])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    Ok(())
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A set of local daemons under one base directory.
pub struct LocalCluster {
    /// The `om` binary the daemons run.
    pub bin: PathBuf,
    /// The nodes, `n1`, `n2`, ...
    pub nodes: Vec<LocalNode>,
    /// The directory holding every node's root.
    pub base: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// A free TCP port on 127.0.0.1, never handed out twice by this process.
///
/// Ports come from below the kernel's ephemeral range, from an offset derived from the
/// process id, so neither another test of the same run nor a daemon's outgoing connection
/// gets one of them. A port handed out twice would let a test's leader, still sending to
/// a member it killed, reach another test's node of the same name on the reused port and
/// get itself blacklisted there under the name that cluster's own leader uses.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const HIGH: u32 = 32_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = HIGH - LOW;
    let start = (std::process::id() * 97) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        if n >= span {
            break;
        }
        let port = (LOW + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port left in {LOW}..{HIGH} for this process"),
    ))
}

/// Creates a node root's `etc/` as the daemon would: 0700, since node.conf holds the secret.
fn create_etc(paths: &Paths) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(paths.root.join("etc"))
}

impl LocalCluster {
    /// Writes node.conf for `count` nodes under a new temporary directory (or `base`).
    pub fn prepare(
        bin: PathBuf,
        count: usize,
        base: Option<PathBuf>,
    ) -> std::io::Result<LocalCluster> {
        let (tmp, base) = match base {
            Some(b) => (None, b),
            None => {
                let t = tempfile::Builder::new().prefix("om-cluster-").tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let mut nodes = Vec::new();
        for i in 1..=count {
            let name = format!("n{i}");
            let paths = Paths::new(base.join(&name));
            let port = free_port()?;
            create_etc(&paths)?;
            std::fs::write(
                paths.node_conf(),
                format!("[node]\nname = {name}\n\n[listener]\naddr = 127.0.0.1\nport = {port}\n"),
            )?;
            nodes.push(LocalNode {
                name,
                port,
                paths,
                child: None,
            });
        }
        Ok(LocalCluster {
            bin,
            nodes,
            base,
            _tmp: tmp,
        })
    }

    /// Prepares one more node root called `name` (names may repeat: tests of name clashes).
    pub fn add_node(&mut self, name: &str) -> std::io::Result<usize> {
        let dir = self.base.join(format!("{name}-{}", self.nodes.len() + 1));
        let paths = Paths::new(dir);
        let port = free_port()?;
        create_etc(&paths)?;
        std::fs::write(
            paths.node_conf(),
            format!("[node]\nname = {name}\n\n[listener]\naddr = 127.0.0.1\nport = {port}\n"),
        )?;
        self.nodes.push(LocalNode {
            name: name.to_string(),
            port,
            paths,
            child: None,
        });
        Ok(self.nodes.len() - 1)
    }

    /// Where the nodes' roots are.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Starts every daemon and waits until each answers.
    pub async fn start_all(&mut self) -> Result<(), String> {
        for n in &mut self.nodes {
            n.start(&self.bin)
                .map_err(|e| format!("cannot start {}: {e}", n.name))?;
        }
        for n in &self.nodes {
            n.wait_ready(Duration::from_secs(20)).await?;
        }
        Ok(())
    }

    /// Joins every node but the first to the first one's cluster, one at a time, with the
    /// real join request; `progress` is told what happens.
    pub async fn join_all(&self, progress: &mut dyn FnMut(&str)) -> Result<(), String> {
        let first = &self.nodes[0];
        let secret = crate::config::NodeConfig::load(&first.paths.node_conf())
            .map_err(|e| e.to_string())?
            .1
            .secret;
        for n in &self.nodes[1..] {
            progress(&format!("{} joins {} ...", n.name, first.name));
            join(n, &secret, &first.addr(), progress).await?;
        }
        Ok(())
    }

    /// The name of the current leader, as the first reachable node reports it.
    pub async fn leader(&self) -> Option<String> {
        for n in &self.nodes {
            if let Ok(st) = n
                .ask(&DaemonStatus::default(), Duration::from_secs(3))
                .await
            {
                if st.cluster.leader.is_some() {
                    return st.cluster.leader;
                }
            }
        }
        None
    }

    /// Every node's last log lines, each under its name (for a test's failure message).
    pub fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}\n", n.name, n.log_tail()))
            .collect()
    }

    /// The node called `name`.
    pub fn node(&mut self, name: &str) -> Option<&mut LocalNode> {
        self.nodes.iter_mut().find(|n| n.name == name)
    }
}

/// Makes `node` join the cluster reachable at `target` with `secret`, and waits until it
/// is a voting member that has applied its own `Join`.
pub async fn join(
    node: &LocalNode,
    secret: &str,
    target: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let req = JoinCluster {
        secret: secret.to_string(),
        node: target.to_string(),
    };
    node.ask(&req, Duration::from_secs(40))
        .await
        .map_err(|e| format!("{} join: {e}", node.name))?;
    progress("  join accepted, catching up with the leader");
    wait_member(node, Duration::from_secs(60), progress).await
}

/// Waits until `node` sees itself in `cluster.nodes` as a follower or leader.
pub async fn wait_member(
    node: &LocalNode,
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<(), String> {
    wait_joined(&node.paths, &node.name, timeout, progress)
        .await
        .map_err(|e| format!("{e}; log:\n{}", node.log_tail()))
}

/// Waits until the daemon under `paths`, called `name`, sees itself in `cluster.nodes` as
/// a follower or leader; tells `progress` its role and applied index as they change.
pub async fn wait_joined(
    paths: &Paths,
    name: &str,
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let control = ControlClient::new(paths);
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        if let Ok(st) = control
            .call(&DaemonStatus::default(), Duration::from_secs(3))
            .await
        {
            let me = st.nodes.get(name);
            let role = me.map_or(Role::Unknown, |m| m.role);
            let applied = me
                .and_then(|m| m.raft.as_ref())
                .and_then(|r| r.last_applied);
            let applied = applied.map_or("null".to_string(), |a| a.to_string());
            let line = format!("  {name}: role {}, applied index {applied}", role.as_str());
            if line != last {
                progress(&line);
                last = line;
            }
            let in_nodes = st.cluster.nodes.iter().any(|n| n == name);
            if in_nodes && matches!(role, Role::Follower | Role::Leader) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("{name} is not a voting member after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
