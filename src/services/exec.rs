//! Running resource commands: `sh -c CMD` in its own process group, detached from the
//! daemon, so what a start command leaves running survives a daemon restart.
//!
//! Output goes to unnamed temporary files rather than pipes: a start command that puts a
//! long-running process in the background would otherwise keep the pipe open, and reading
//! it would block until that process exits.

use std::io::Read;
use std::io::Seek;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

/// Output kept from each stream of a command.
pub const MAX_OUTPUT: u64 = 256 * 1024;

/// What a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Exit status; 128 + signal when killed by a signal; -1 when it could not run.
    pub ret: i32,
    /// Standard output (the first [`MAX_OUTPUT`] bytes).
    pub out: String,
    /// Standard error (the first [`MAX_OUTPUT`] bytes), plus our own notes (timeout).
    pub err: String,
    /// Whether it was killed for running longer than its timeout.
    pub timed_out: bool,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Output {
    /// Whether it exited 0.
    pub fn ok(&self) -> bool {
        self.ret == 0
    }
}

/// Where a running command's process group id is published, so it can be cancelled.
pub type PidSlot = Arc<Mutex<Option<u32>>>;

/// Runs `cmd` with `sh -c` in `cwd` with `env`, killing its process group after `timeout`.
pub async fn run_sh(
    cmd: &str,
    env: &[(String, String)],
    cwd: &Path,
    timeout: Duration,
    slot: Option<&PidSlot>,
) -> Output {
    run_sh_args(cmd, &[], env, cwd, timeout, slot).await
}

/// [`run_sh`] with positional arguments: `sh -c CMD om ARGS...`, so `CMD` sees them as
/// `"$@"` and the shell never parses them.
pub async fn run_sh_args(
    cmd: &str,
    args: &[String],
    env: &[(String, String)],
    cwd: &Path,
    timeout: Duration,
    slot: Option<&PidSlot>,
) -> Output {
    let started = Instant::now();
    let failed = |e: String| Output {
        ret: -1,
        err: e,
        elapsed: started.elapsed(),
        ..Output::default()
    };
    let (mut out_f, mut err_f) = match (tempfile::tempfile(), tempfile::tempfile()) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => return failed(format!("cannot create an output file: {e}")),
    };
    let (out_w, err_w) = match (out_f.try_clone(), err_f.try_clone()) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => return failed(format!("cannot create an output file: {e}")),
    };
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(cmd)
        .arg("om")
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .process_group(0)
        .kill_on_drop(false);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot run /bin/sh: {e}")),
    };
    let pid = child.id();
    if let (Some(slot), Some(pid)) = (slot, pid) {
        *slot.lock().unwrap() = Some(pid);
    }
    let (ret, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => (exit_code(status), false),
        Ok(Err(e)) => return failed(format!("waiting for the command: {e}")),
        Err(_) => {
            if let Some(pid) = pid {
                kill_group(pid);
            }
            let status = child.wait().await.ok();
            (status.map_or(-1, exit_code), true)
        }
    };
    if let Some(slot) = slot {
        *slot.lock().unwrap() = None;
    }
    let mut err = read_all(&mut err_f);
    if timed_out {
        if !err.is_empty() && !err.ends_with('\n') {
            err.push('\n');
        }
        err.push_str(&format!("om: killed after the {timeout:?} timeout\n"));
    }
    Output {
        ret,
        out: read_all(&mut out_f),
        err,
        timed_out,
        elapsed: started.elapsed(),
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn read_all(f: &mut std::fs::File) -> String {
    let mut buf = Vec::new();
    if f.rewind().is_ok() {
        let _ = f.take(MAX_OUTPUT).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Sends SIGKILL to the process group `pgid` (with kill(1): no libc binding needed).
pub fn kill_group(pgid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn captures_output_and_status_without_waiting_for_background_children() {
        let dir = tempfile::tempdir().unwrap();
        let env = vec![("OM_X".to_string(), "42".to_string())];
        let t0 = Instant::now();
        let o = run_sh(
            "echo out $OM_X; echo err >&2; sleep 30 & echo $! > bg.pid; exit 3",
            &env,
            dir.path(),
            Duration::from_secs(10),
            None,
        )
        .await;
        assert_eq!(o.ret, 3);
        assert_eq!(o.out, "out 42\n");
        assert_eq!(o.err, "err\n");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "did not wait for the background sleep"
        );
        let pid = std::fs::read_to_string(dir.path().join("bg.pid")).unwrap();
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }

    #[tokio::test]
    async fn a_timeout_kills_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let o = run_sh(
            "sleep 20; echo never",
            &[],
            dir.path(),
            Duration::from_millis(300),
            None,
        )
        .await;
        assert!(o.timed_out);
        assert_ne!(o.ret, 0);
        assert!(o.err.contains("timeout"), "{o:?}");
        assert!(o.elapsed < Duration::from_secs(5));
    }
}
