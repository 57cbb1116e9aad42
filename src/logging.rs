//! The daemon's log: where it goes (stderr, which is om.log in the background), its level
//! (`node.log_level`, changed live by the watcher) and what it keeps quiet (openraft's and
//! sled's chatter below warnings) and how often their warnings may repeat ([`Repeats`]:
//! with a peer down, openraft writes five every 500 ms, and the line that matters drowns).
//!
//! Its own module so that the daemon's watcher can change the level without reaching up
//! into the CLI, which sets the log up once at `om node daemon run`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;

use tracing::callsite::Identifier;
use tracing::Event;
use tracing::Level;
use tracing::Subscriber;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::FormatEvent;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
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
        .event_format(Repeats::new(tracing_subscriber::fmt::format()))
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

/// How long a warning or error, once written, holds back the next ones from the same line
/// of code.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(30);

/// One warning or error line of code: when it was last written and how many of its events
/// were held back since.
#[derive(Debug, Clone, Copy)]
struct Repeat {
    written_at: Instant,
    held: u64,
}

/// Whether an event of a line last seen as `last` is written at `now`: `Some(held)` (the
/// number held back before it, to say so), or `None` (held back, and counted).
fn admit(last: &mut Option<Repeat>, now: Instant, window: Duration) -> Option<u64> {
    match last {
        Some(r) if now.duration_since(r.written_at) < window => {
            r.held += 1;
            None
        }
        _ => {
            let held = last.map_or(0, |r| r.held);
            *last = Some(Repeat {
                written_at: now,
                held: 0,
            });
            Some(held)
        }
    }
}

/// An event format that writes each warning or error line of a dependency's code
/// (openraft, sled: not om's own crates) at most once per [`REPEAT_WINDOW`]; the next one
/// written after a hold says how many were not. Keyed by the call site, not the text, which
/// differs in counters and request ids from one repeat to the next; a bounded map, as call
/// sites are static. om's own lines are not limited: one line of its code says different
/// things (`node n4 is down`, then `node n5 is down`, one service's error, then
/// another's), and each says it once per change. Info and below are not limited either.
pub struct Repeats<F> {
    inner: F,
    window: Duration,
    seen: Mutex<HashMap<Identifier, Repeat>>,
}

impl<F> Repeats<F> {
    /// Limits the warnings and errors that `inner` writes.
    pub fn new(inner: F) -> Repeats<F> {
        Repeats::within(inner, REPEAT_WINDOW)
    }

    fn within(inner: F, window: Duration) -> Repeats<F> {
        Repeats {
            inner,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }
}

impl<S, N, F> FormatEvent<S, N> for Repeats<F>
where
    F: FormatEvent<S, N>,
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if *meta.level() <= Level::WARN && !ours(meta.target()) {
            let held = {
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                let mut last = seen.get(&meta.callsite()).copied();
                let admitted = admit(&mut last, Instant::now(), self.window);
                seen.insert(meta.callsite(), last.expect("admit records the event"));
                admitted
            };
            match held {
                // Nothing written: the fmt layer writes an empty line buffer, i.e. nothing.
                None => return Ok(()),
                Some(0) => {}
                Some(n) => {
                    tracing_subscriber::fmt::time::SystemTime.format_time(&mut writer)?;
                    writeln!(
                        writer,
                        " {:>5} {}: {n} more like the next line were not written (at most one each {:?})",
                        meta.level(),
                        meta.target(),
                        self.window
                    )?;
                }
            }
        }
        self.inner.format_event(ctx, writer, event)
    }
}

/// Whether `target` (a module path) is in one of om's own crates.
fn ours(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    matches!(krate, "om" | "raft" | "storage")
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
    fn a_repeated_line_is_written_once_per_window_and_the_next_one_says_how_many_were_held() {
        let t0 = Instant::now();
        let w = Duration::from_secs(30);
        let mut last = None;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(admit(&mut last, at(0), w), Some(0), "the first is written");
        for tick in 1..60 {
            assert_eq!(admit(&mut last, at(tick * 500), w), None, "held at {tick}");
        }
        assert_eq!(
            admit(&mut last, at(30_000), w),
            Some(59),
            "59 held before it"
        );
        assert_eq!(admit(&mut last, at(30_500), w), None);
        assert_eq!(admit(&mut last, at(90_000), w), Some(1));
    }

    /// Warnings from one call site (`events` of them, then, after the window, one more),
    /// written through [`Repeats`] into a buffer.
    fn written(events: usize, window: Duration) -> String {
        let buf = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .event_format(Repeats::within(tracing_subscriber::fmt::format(), window))
            .with_writer(move || Sink(sink.clone()));
        let sub = tracing_subscriber::registry().with(layer);
        // One call site for every warning, as a dependency's.
        let warn = |i: usize| tracing::warn!(target: "openraft::replication", peer = "n3", "cannot reach the peer, attempt {i}");
        tracing::subscriber::with_default(sub, || {
            for i in 0..events {
                warn(i);
                tracing::info!("the daemon does its work {i}");
                tracing::warn!("node n{i} is down");
            }
            std::thread::sleep(window + Duration::from_millis(100));
            warn(events);
        });
        let out = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        out
    }

    struct Sink(std::sync::Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_burst_of_a_dependency_warning_is_written_once_and_oms_own_lines_all() {
        let out = written(100, Duration::from_secs(1));
        let warns: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("WARN openraft"))
            .collect();
        assert_eq!(warns.len(), 3, "{out}");
        let own = out
            .lines()
            .filter(|l| l.contains("WARN om::logging"))
            .count();
        assert_eq!(own, 100, "om's own warnings are all written: {out}");
        assert!(
            warns[0].contains("attempt 0") && warns[0].contains("peer=\"n3\""),
            "{out}"
        );
        assert!(
            warns[1].contains("openraft::replication: 99 more like the next line were not written (at most one each 1s)"),
            "{out}"
        );
        assert!(warns[2].contains("attempt 100"), "{out}");
        assert_eq!(out.lines().filter(|l| l.contains("INFO")).count(), 100);
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
