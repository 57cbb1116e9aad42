//! One `om` daemon of the suite, in its node's network namespace and in a PID namespace of
//! its own, so that killing the node kills everything it runs (daemon and services), as a
//! machine that dies would. The daemon runs under `bash` as the PID namespace's init (bash
//! reaps the services' orphaned processes); the harness holds the `unshare` process, whose
//! SIGKILL takes the namespace down (`--kill-child`).
//!
//! Requests go through the node's control socket, a file under its root: the harness, in the
//! root network namespace, reaches every node whatever the network faults.

use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use om::config::Paths;
use om::control::ControlClient;
use om::control::ControlError;
use serde_json::json;
use serde_json::Value;

use crate::net::Host;

/// libfaketime, for the clock faults (Debian's `libfaketime`); without it there are none.
pub(crate) const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// A failed request.
#[derive(Debug, Clone)]
pub(crate) struct CallError {
    /// What went wrong.
    pub message: String,
    /// Whether the request may have reached the daemon (false: the socket refused it).
    pub sent: bool,
}

/// One daemon of a fault cluster.
pub(crate) struct FaultNode {
    /// `n1`, `n2`, ...
    pub name: String,
    /// Its namespace and address.
    pub host: Host,
    /// Its root.
    pub paths: Paths,
    /// Whether its wall clock can be moved ([`FaultNode::set_clock_offset`]).
    pub fake_clock: bool,
    child: Option<Child>,
    paused: bool,
}

impl FaultNode {
    /// A node under `root` (its node.conf written by the caller).
    pub(crate) fn new(name: String, host: Host, root: PathBuf, fake_clock: bool) -> FaultNode {
        FaultNode {
            name,
            host,
            paths: Paths::new(root),
            fake_clock,
            child: None,
            paused: false,
        }
    }

    /// `ip:1214`, the listener address.
    pub(crate) fn addr(&self) -> String {
        format!("{}:1214", self.host.ip)
    }

    fn faketime_file(&self) -> PathBuf {
        self.paths.root.join("faketime")
    }

    /// Starts the daemon inside the node's namespaces.
    pub(crate) fn start(&mut self, bin: &Path) -> Result<(), String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host.ns])
            .args(["unshare", "--pid", "--fork", "--kill-child", "--"])
            .args(["bash", "-c", r#""$@" & wait $!"#, "om-node"])
            .arg(bin);
        om::cli::local::daemon_run(&mut cmd, &self.paths.root).map_err(|e| e.to_string())?;
        if self.fake_clock {
            if !self.faketime_file().exists() {
                std::fs::write(self.faketime_file(), "+0\n").map_err(|e| e.to_string())?;
            }
            cmd.env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME_TIMESTAMP_FILE", self.faketime_file())
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("DONT_FAKE_MONOTONIC", "1");
        }
        self.child = Some(
            cmd.spawn()
                .map_err(|e| format!("spawn {}: {e}", self.name))?,
        );
        self.paused = false;
        Ok(())
    }

    /// Whether the node's processes run (they may be paused).
    pub(crate) fn is_up(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL to the node: the daemon and everything it started die at once.
    /// Returns once the daemon is gone (its lock on the root released).
    pub(crate) fn kill(&mut self) {
        let daemon = self.daemon_pid();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The namespace's processes die after `unshare`: wait for the daemon's exit.
        if let Some(pid) = daemon {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.paused = false;
    }

    /// The daemon's process id in the root PID namespace.
    pub(crate) fn daemon_pid(&self) -> Option<u32> {
        let unshare = self.child.as_ref()?.id();
        let init = children(unshare).into_iter().next()?;
        children(init).into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "om")
        })
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) to the daemon only: its services keep running.
    pub(crate) fn pause(&mut self, stop: bool) -> Result<(), String> {
        let pid = self
            .daemon_pid()
            .ok_or_else(|| format!("{}: no daemon process to signal", self.name))?;
        let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill has no memory preconditions; pid is the daemon's.
        if unsafe { libc::kill(pid as i32, sig) } != 0 {
            return Err(format!(
                "{}: kill: {}",
                self.name,
                std::io::Error::last_os_error()
            ));
        }
        self.paused = stop;
        Ok(())
    }

    /// Moves the daemon's wall clock `offset_s` seconds from the real one (libfaketime
    /// rereads the file within a second); the monotonic clock is untouched.
    pub(crate) fn set_clock_offset(&self, offset_s: i64) -> Result<(), String> {
        std::fs::write(self.faketime_file(), format!("{offset_s:+}\n")).map_err(|e| e.to_string())
    }

    /// Sends a control request; the answer's data, or what went wrong.
    pub(crate) async fn call(
        &self,
        action: &str,
        options: Value,
        t: Duration,
    ) -> Result<Value, CallError> {
        call(&self.paths, action, options, t).await
    }

    /// This node's own status (`daemon_status` with `local`).
    pub(crate) async fn local_status(&self) -> Option<Value> {
        let st = self
            .call(
                "daemon_status",
                json!({"local": true}),
                Duration::from_secs(5),
            )
            .await
            .ok()?;
        Some(st["self"].clone())
    }

    /// Waits until the daemon answers.
    pub(crate) async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while self.local_status().await.is_none() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} not ready after {timeout:?}; log:\n{}",
                    self.name,
                    self.log_tail(20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The last `n` lines of the daemon's log.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.paths.root.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for FaultNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one control request to the daemon under `paths`.
pub(crate) async fn call(
    paths: &Paths,
    action: &str,
    options: Value,
    t: Duration,
) -> Result<Value, CallError> {
    match ControlClient::new(paths).request(action, options, t).await {
        Ok(resp) if resp.is_ok() => resp.data.into_value().map_err(|e| CallError {
            message: e,
            sent: true,
        }),
        Ok(resp) => Err(CallError {
            message: resp
                .error
                .unwrap_or_else(|| format!("status {}", resp.status)),
            sent: true,
        }),
        Err(e) => Err(CallError {
            sent: !matches!(e, ControlError::NotRunning { .. }),
            message: e.to_string(),
        }),
    }
}

/// The children of process `pid` (its main thread's).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
