//! The daemon's log: where it goes (stderr, which is om.log in the background), its level
//! (`node.log_level`, changed live by the watcher) and what it keeps quiet (openraft's and
//! sled's chatter below warnings).
//!
//! Its own module so that the daemon's watcher can change the level without reaching up
//! into the CLI, which sets the log up once at `om node daemon run`.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// `node.log_level`: the least severe records the daemon writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// And what the daemon does (the default).
    #[default]
    Info,
    /// And why.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// Every level, least verbose first.
    pub const ALL: [LogLevel; 5] = [
        LogLevel::Error,
        LogLevel::Warn,
        LogLevel::Info,
        LogLevel::Debug,
        LogLevel::Trace,
    ];

    /// The node.conf spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    fn filter(self) -> EnvFilter {
        EnvFilter::new(format!("{},openraft=warn,sled=warn", self.as_str()))
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<LogLevel, String> {
        LogLevel::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| "allowed values are error, warn, info, debug, trace".to_string())
    }
}

type ReloadHandle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Set once by [`init`]: a process has one log.
static RELOAD: OnceLock<ReloadHandle> = OnceLock::new();

/// Sends the log to stderr at `level` (or at `RUST_LOG`, when set); a second call does
/// nothing.
pub fn init(level: LogLevel) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| level.filter());
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // In the background stderr is om.log: colour codes there would only garble it.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = RELOAD.set(handle);
    }
}

/// Changes the level of a log set up by [`init`] (node.log_level changed in node.conf).
pub fn set_level(level: LogLevel) {
    if let Some(h) = RELOAD.get() {
        let _ = h.reload(level.filter());
    }
}

/// Largest `om.log` a background start appends to; a larger one is rotated first.
pub const ROTATE_AT: u64 = 16 << 20;
/// Rotated logs kept (`om.log.1` is the newest).
pub const KEEP_ROTATED: u32 = 3;

/// Rotates `log` when it holds more than `max` bytes: `log.N` becomes `log.N+1` (the
/// oldest past `keep` is deleted) and `log` becomes `log.1`, so the next writer starts a
/// new file. Called before each background start: the daemon writes its log through its
/// inherited stderr, which a rename under it would not follow. A missing `log` is fine.
pub fn rotate(log: &std::path::Path, max: u64, keep: u32) -> std::io::Result<bool> {
    let Ok(meta) = std::fs::metadata(log) else {
        return Ok(false);
    };
    if meta.len() <= max || keep == 0 {
        return Ok(false);
    }
    let nth = |n: u32| {
        let mut name = log.as_os_str().to_owned();
        name.push(format!(".{n}"));
        std::path::PathBuf::from(name)
    };
    let _ = std::fs::remove_file(nth(keep));
    for n in (1..keep).rev() {
        if nth(n).exists() {
            std::fs::rename(nth(n), nth(n + 1))?;
        }
    }
    std::fs::rename(log, nth(1))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_parses_back_and_others_are_refused_naming_the_allowed_ones() {
        for l in LogLevel::ALL {
            assert_eq!(l.as_str().parse::<LogLevel>(), Ok(l));
        }
        for bad in ["", "INFO", "verbose", "info "] {
            let e = bad.parse::<LogLevel>().unwrap_err();
            assert!(e.contains("error, warn, info, debug, trace"), "{e}");
        }
    }

    #[test]
    fn a_large_log_is_rotated_keeping_the_newest_ones() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("om.log");
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).ok();
        assert!(!rotate(&log, 4, 2).unwrap(), "no log yet: nothing to do");
        for run in ["first run\n", "second\n", "third!\n"] {
            std::fs::write(&log, run).unwrap();
            assert!(rotate(&log, 4, 2).unwrap(), "{run} is over the limit");
        }
        assert_eq!(read("om.log"), None, "the next start writes a new file");
        assert_eq!(read("om.log.1").as_deref(), Some("third!\n"));
        assert_eq!(read("om.log.2").as_deref(), Some("second\n"));
        assert_eq!(read("om.log.3"), None, "only two are kept");
        std::fs::write(&log, "tiny").unwrap();
        assert!(!rotate(&log, 4, 2).unwrap(), "at the limit: kept as it is");
        assert_eq!(read("om.log").as_deref(), Some("tiny"));
    }
}
