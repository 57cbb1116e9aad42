//! Per-service logs on each node: `<root>/var/services/<svc>/log`, one JSON object per line
//! (`{"t": ms, "node", "lvl", "msg"}`), rotated to `log.1` past [`ROTATE_AT`] bytes.
//!
//! Readers hold a cursor (a byte offset in the current file); `service_logs` merges the
//! lines of every node by time.

use std::io::Read;
use std::io::Seek;
use std::io::SeekFrom;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

/// Size past which the current log is renamed to `log.1`.
pub const ROTATE_AT: u64 = 4 << 20;
/// Most lines returned by one read.
pub const MAX_LINES: usize = 10_000;

pub use crate::api::options::LogLine;

/// The service logs of this node.
pub struct ServiceLogs {
    dir: PathBuf,
    node: Mutex<String>,
    write: Mutex<()>,
    notify: Notify,
}

impl ServiceLogs {
    /// Logs under `<var>/services`, written as `node`.
    pub fn new(var_dir: PathBuf, node: String) -> ServiceLogs {
        ServiceLogs {
            dir: var_dir.join("services"),
            node: Mutex::new(node),
            write: Mutex::new(()),
            notify: Notify::new(),
        }
    }

    /// The directory of `svc`'s files on this node.
    pub fn svc_dir(&self, svc: &str) -> PathBuf {
        self.dir.join(svc)
    }

    fn path(&self, svc: &str) -> PathBuf {
        self.svc_dir(svc).join("log")
    }

    /// Appends a line (best effort: a full disk must not stop the monitor).
    pub fn append(&self, svc: &str, lvl: &str, msg: impl Into<String>) {
        let line = LogLine {
            t: crate::clock::now_ms(),
            node: self.node.lock().unwrap().clone(),
            lvl: lvl.to_string(),
            msg: msg.into(),
        };
        match lvl {
            "error" => tracing::error!(svc, "{}", line.msg),
            "warn" => tracing::warn!(svc, "{}", line.msg),
            _ => tracing::info!(svc, "{}", line.msg),
        }
        let Ok(mut text) = serde_json::to_string(&line) else {
            return;
        };
        text.push('\n');
        let _guard = self.write.lock().unwrap();
        let path = self.path(svc);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if std::fs::metadata(&path).is_ok_and(|m| m.len() >= ROTATE_AT) {
            let _ = std::fs::rename(&path, path.with_extension("1"));
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        if let Ok(mut f) = file {
            let _ = f.write_all(text.as_bytes());
        }
        drop(_guard);
        self.notify.notify_waiters();
    }

    /// Info line.
    pub fn info(&self, svc: &str, msg: impl Into<String>) {
        self.append(svc, "info", msg);
    }

    /// Warning line.
    pub fn warn(&self, svc: &str, msg: impl Into<String>) {
        self.append(svc, "warn", msg);
    }

    /// Error line.
    pub fn error(&self, svc: &str, msg: impl Into<String>) {
        self.append(svc, "error", msg);
    }

    /// The last `n` lines, and the cursor after them.
    pub fn backlog(&self, svc: &str, n: usize) -> (Vec<LogLine>, u64) {
        let (text, end) = read_from(&self.path(svc), 0);
        let mut lines = parse(&text);
        if lines.len() < n {
            // Top up from the rotated file.
            let (old, _) = read_from(&self.path(svc).with_extension("1"), 0);
            let mut older = parse(&old);
            older.append(&mut lines);
            lines = older;
        }
        let skip = lines.len().saturating_sub(n.min(MAX_LINES));
        (lines.split_off(skip), end)
    }

    /// The lines after `cursor`, and the new cursor.
    pub fn after(&self, svc: &str, cursor: u64) -> (Vec<LogLine>, u64) {
        let path = self.path(svc);
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        // A file shorter than the cursor was rotated: read the new one from its start.
        let from = if len < cursor { 0 } else { cursor };
        let (text, end) = read_from(&path, from);
        let mut lines = parse(&text);
        lines.truncate(MAX_LINES);
        (lines, end)
    }

    /// Like [`Self::after`], waiting up to `wait` for a first line.
    pub async fn wait_after(&self, svc: &str, cursor: u64, wait: Duration) -> (Vec<LogLine>, u64) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            let (lines, end) = self.after(svc, cursor);
            if !lines.is_empty() || tokio::time::Instant::now() >= deadline {
                return (lines, end);
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
}

/// Reads `path` from byte `from` up to the last complete line; returns the text and the
/// offset after it.
fn read_from(path: &std::path::Path, from: u64) -> (String, u64) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (String::new(), from);
    };
    if f.seek(SeekFrom::Start(from)).is_err() {
        return (String::new(), from);
    }
    let mut buf = Vec::new();
    let _ = f.take(64 << 20).read_to_end(&mut buf);
    let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    buf.truncate(complete);
    let end = from + complete as u64;
    (String::from_utf8_lossy(&buf).into_owned(), end)
}

fn parse(text: &str) -> Vec<LogLine> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<LogLine>(l).ok())
        .collect()
}

/// Merges per-node lines in time order (node name breaks ties, each node keeps its order).
pub fn merge(mut lines: Vec<LogLine>) -> Vec<LogLine> {
    lines.sort_by(|a, b| a.t.cmp(&b.t).then_with(|| a.node.cmp(&b.node)));
    lines
}

/// `YYYY-MM-DD HH:MM:SS.mmm` (UTC) of a wall-clock time in ms.
pub fn format_ts(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_utc() {
        assert_eq!(format_ts(0), "1970-01-01 00:00:00.000");
        assert_eq!(format_ts(1_709_251_199_999), "2024-02-29 23:59:59.999");
        assert_eq!(format_ts(951_782_400_001), "2000-02-29 00:00:00.001");
    }

    #[tokio::test]
    async fn append_backlog_cursor_and_follow() {
        let dir = tempfile::tempdir().unwrap();
        let logs = ServiceLogs::new(dir.path().to_path_buf(), "n1".into());
        for i in 0..5 {
            logs.info("web", format!("line {i}"));
        }
        let (last, cursor) = logs.backlog("web", 2);
        assert_eq!(
            last.iter().map(|l| l.msg.as_str()).collect::<Vec<_>>(),
            ["line 3", "line 4"]
        );
        assert!(logs.after("web", cursor).0.is_empty());
        let waiter = logs.wait_after("web", cursor, Duration::from_secs(5));
        let writer = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            logs.warn("web", "line 5");
        };
        let ((lines, next), ()) = tokio::join!(waiter, writer);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].lvl, "warn");
        assert!(next > cursor);
        assert!(logs.backlog("nothing", 10).0.is_empty());
    }
}
