//! Work units on this node: the thin runtime around [`core`]. It owns the files under
//! `<root>/var/work/<unitid>/` (`unit.json`, `stdin`, `stdout`, `stderr`) and the processes
//! of the units that run here; [`core::step`] and [`core::plan`] decide every state change.
//!
//! A unit submitted here to run on another node has a record here too (`remote`), so that
//! `work list`, `results`, `cancel` and `release` work from the node it was submitted on, as
//! in Receptor; its payload and stdout live on the executing node only ([`remote`]).
//! Records and stdout survive a restart: the scan at start fails what was running (its
//! process group is killed if it is still the same process) and keeps what was pending.

pub mod core;

use std::collections::BTreeMap;
use std::io::Read;
use std::io::Seek;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::Weak;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;

use crate::clock::now_ms;
use core::Effect;
use core::Event;
use core::Life;
use core::State;

/// Largest payload a submitter may send, in bytes.
pub const MAX_PAYLOAD: u64 = 8 << 20;
/// Most unit records one node keeps (its own units and those it submitted elsewhere).
pub const MAX_UNITS: usize = 256;
/// Most units running at once on one node; the others wait, `Pending`.
pub const MAX_RUNNING: usize = 8;
/// Largest stdout a unit may produce, in bytes; past it the command is killed.
pub const MAX_RESULT: u64 = 64 << 20;
/// Most `params` words a submitter may give.
pub const MAX_PARAMS: usize = 32;
/// Longest `params` word, in bytes.
pub const MAX_PARAM_LEN: usize = 1024;
/// Longest ttl.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The limits a node's work units live within (the constants above by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload, bytes.
    pub max_payload: u64,
    /// Most unit records.
    pub max_units: usize,
    /// Most units running at once.
    pub max_running: usize,
    /// Largest stdout, bytes.
    pub max_result: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_payload: MAX_PAYLOAD,
            max_units: MAX_UNITS,
            max_running: MAX_RUNNING,
            max_result: MAX_RESULT,
        }
    }
}

/// How often a running unit's stdout size is checked, and pending ttls too.
const TICK: Duration = Duration::from_millis(200);

/// A unit as stored in `unit.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRecord {
    /// Its id (also its directory's name).
    pub id: String,
    /// Its work type.
    pub worktype: String,
    /// The node that executes it.
    pub node: String,
    /// This record is the submitting node's: the unit runs on `node`.
    #[serde(default)]
    pub remote: bool,
    /// The command line, as the work type said at submission.
    #[serde(default)]
    pub command: String,
    /// The submitter's extra arguments.
    #[serde(default)]
    pub params: Vec<String>,
    /// Its state.
    pub state: State,
    /// Why it is in that state.
    #[serde(default)]
    pub detail: String,
    /// Its process while it runs.
    #[serde(default)]
    pub pid: Option<u32>,
    /// That process's start time (clock ticks since boot), to recognize it after a restart.
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// When it was submitted (ms since the epoch).
    pub submitted_ms: u64,
    /// When it finished.
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// It fails if it has not started this long after submission (ms).
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// The payload's size in bytes.
    #[serde(default)]
    pub payload_size: u64,
    /// Where it was submitted from.
    #[serde(default)]
    pub submitter: String,
}

impl UnitRecord {
    fn life(&self) -> Life {
        Life {
            state: self.state,
            detail: self.detail.clone(),
            pid: self.pid,
        }
    }
}

/// A unit as `work list` shows it.
pub use crate::api::options::WorkUnitStatus as UnitStatus;

/// Why a work request failed; the message names the parameter and the allowed values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkError {
    /// The request is wrong.
    #[error("{0}")]
    Bad(String),
    /// No such unit.
    #[error("unknown unitid {0:?}; `work list` shows the units of this node")]
    NotFound(String),
    /// A limit was reached.
    #[error("{0}")]
    Full(String),
    /// The store failed.
    #[error("work store: {0}")]
    Io(String),
}

impl From<core::Refused> for WorkError {
    fn from(r: core::Refused) -> WorkError {
        WorkError::Bad(r.0)
    }
}

fn io(e: std::io::Error) -> WorkError {
    WorkError::Io(e.to_string())
}

/// What a submitter asks this node to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The unit id (made by the submitting node).
    pub id: String,
    /// The work type.
    pub worktype: String,
    /// Its command (from this node's node.conf).
    pub command: String,
    /// Extra arguments (checked against the work type by the caller).
    pub params: Vec<String>,
    /// Ttl in ms.
    pub ttl_ms: Option<u64>,
    /// Where it came from.
    pub submitter: String,
}

/// The work units of one node.
pub struct Work {
    dir: PathBuf,
    me: String,
    limits: Limits,
    units: Mutex<BTreeMap<String, UnitRecord>>,
    changed: tokio::sync::watch::Sender<u64>,
    /// Held by one `pump` at a time: two would start the same unit twice.
    pumping: Mutex<()>,
}

impl Work {
    /// Opens `<var>/work`, recovers the units a previous daemon left, and starts the
    /// ticker (ttl expiry, queued starts) for as long as the returned handle lives.
    pub fn open(var_dir: PathBuf, me: String) -> Arc<Work> {
        Work::open_with(var_dir, me, Limits::default())
    }

    /// [`Work::open`] with other limits (tests).
    pub fn open_with(var_dir: PathBuf, me: String, limits: Limits) -> Arc<Work> {
        let work = Arc::new(Work {
            dir: var_dir.join("work"),
            me,
            limits,
            units: Mutex::new(BTreeMap::new()),
            changed: tokio::sync::watch::channel(0).0,
            pumping: Mutex::new(()),
        });
        work.recover();
        let weak = Arc::downgrade(&work);
        tokio::spawn(ticker(weak));
        work
    }

    fn unit_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn recover(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut units = self.units.lock().unwrap();
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if core::check_unit_id(&id).is_err() {
                continue;
            }
            let Ok(text) = std::fs::read(e.path().join("unit.json")) else {
                continue;
            };
            let Ok(mut rec) = serde_json::from_slice::<UnitRecord>(&text) else {
                tracing::warn!(unit = %id, "unreadable unit.json: unit ignored");
                continue;
            };
            if !rec.remote {
                if let Ok((life, effect)) = core::step(&rec.life(), &Event::Recovered) {
                    if effect == Effect::Kill {
                        kill_if_same(rec.pid, rec.pid_start);
                        rec.finished_ms = Some(now_ms());
                    }
                    apply_life(&mut rec, life);
                    let _ = self.persist(&rec);
                }
            }
            units.insert(id, rec);
        }
    }

    fn persist(&self, rec: &UnitRecord) -> Result<(), WorkError> {
        let dir = self.unit_dir(&rec.id);
        let text = serde_json::to_vec_pretty(rec).map_err(|e| WorkError::Io(e.to_string()))?;
        crate::config::write_durably(&dir.join("unit.json"), &text).map_err(io)
    }

    fn make_dir(&self, id: &str) -> Result<PathBuf, WorkError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.unit_dir(id);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io)?;
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(WorkError::Bad(
                format!("unitid {id:?} is taken on this node"),
            )),
            Err(e) => Err(io(e)),
        }
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Refuses a new record when the node holds [`Limits::max_units`] already.
    pub(crate) fn check_room(&self) -> Result<(), WorkError> {
        let n = self.units.lock().unwrap().len();
        let max = self.limits.max_units;
        if n >= max {
            return Err(WorkError::Full(format!(
                "this node holds {n} work units, the most it keeps ({max}); \
                 `work release` finished ones first"
            )));
        }
        Ok(())
    }

    /// Stores a unit that runs here with its payload, and starts it when a slot is free.
    pub fn submit(
        self: &Arc<Self>,
        s: Submission,
        payload: &[u8],
    ) -> Result<UnitRecord, WorkError> {
        core::check_unit_id(&s.id)?;
        self.check_room()?;
        let max = self.limits.max_payload;
        if payload.len() as u64 > max {
            return Err(WorkError::Bad(format!(
                "payload: {} bytes, more than the {max}-byte limit",
                payload.len()
            )));
        }
        let dir = self.make_dir(&s.id)?;
        let rec = UnitRecord {
            id: s.id,
            worktype: s.worktype,
            node: self.me.clone(),
            remote: false,
            command: s.command,
            params: s.params,
            state: State::Pending,
            detail: "waiting for a slot".into(),
            pid: None,
            pid_start: None,
            submitted_ms: now_ms(),
            finished_ms: None,
            ttl_ms: s.ttl_ms,
            payload_size: payload.len() as u64,
            submitter: s.submitter,
        };
        let stored = crate::config::write_durably(&dir.join("stdin"), payload)
            .map_err(io)
            .and_then(|()| self.persist(&rec));
        if let Err(e) = stored {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        self.units
            .lock()
            .unwrap()
            .insert(rec.id.clone(), rec.clone());
        self.pump();
        Ok(self.record(&rec.id).unwrap_or(rec))
    }

    /// Records a unit submitted from here that runs on `rec.node`.
    pub fn add_remote(&self, rec: UnitRecord) -> Result<(), WorkError> {
        core::check_unit_id(&rec.id)?;
        self.check_room()?;
        self.make_dir(&rec.id)?;
        self.persist(&rec)?;
        self.units.lock().unwrap().insert(rec.id.clone(), rec);
        self.bump();
        Ok(())
    }

    /// Updates the stored view of a remote unit (what its node said last).
    pub fn update_remote(&self, id: &str, st: &UnitStatus) {
        let mut units = self.units.lock().unwrap();
        let Some(rec) = units.get_mut(id).filter(|r| r.remote) else {
            return;
        };
        let state = [
            State::Pending,
            State::Running,
            State::Succeeded,
            State::Failed,
            State::Canceled,
        ]
        .into_iter()
        .find(|s| s.code() == st.state);
        if let Some(state) = state.filter(|s| *s != rec.state || st.detail != rec.detail) {
            rec.state = state;
            rec.detail = st.detail.clone();
            let rec = rec.clone();
            drop(units);
            let _ = self.persist(&rec);
        }
    }

    /// One unit's record.
    pub fn record(&self, id: &str) -> Option<UnitRecord> {
        self.units.lock().unwrap().get(id).cloned()
    }

    /// Every record, by id.
    pub fn records(&self) -> BTreeMap<String, UnitRecord> {
        self.units.lock().unwrap().clone()
    }

    /// A unit's status as `work list` shows it.
    pub fn status(&self, rec: &UnitRecord) -> UnitStatus {
        let stdout_size = std::fs::metadata(self.unit_dir(&rec.id).join("stdout"))
            .map(|m| m.len())
            .unwrap_or(0);
        UnitStatus {
            state: rec.state.code(),
            state_name: rec.state.name().into(),
            detail: rec.detail.clone(),
            stdout_size,
            work_type: rec.worktype.clone(),
            node: rec.node.clone(),
            submitted_ms: rec.submitted_ms,
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    /// Applies `ev` to unit `id` (a local one) through the core, doing its effect.
    fn apply(&self, id: &str, ev: &Event) -> Result<UnitRecord, WorkError> {
        let mut units = self.units.lock().unwrap();
        let rec = units
            .get_mut(id)
            .ok_or_else(|| WorkError::NotFound(id.to_string()))?;
        let (life, effect) = core::step(&rec.life(), ev)?;
        if effect == Effect::Kill {
            if let Some(pid) = rec.pid {
                crate::services::exec::kill_group(pid);
            }
        }
        apply_life(rec, life);
        if rec.state.is_final() {
            rec.finished_ms = Some(now_ms());
        }
        let rec = rec.clone();
        drop(units);
        self.persist(&rec)?;
        self.bump();
        Ok(rec)
    }

    /// Cancels a local unit (kills its command if it runs).
    pub fn cancel(self: &Arc<Self>, id: &str) -> Result<UnitRecord, WorkError> {
        core::check_unit_id(id)?;
        let rec = self.apply(id, &Event::Cancel)?;
        self.pump();
        Ok(rec)
    }

    /// Forgets a unit: cancels it if it is not over, then deletes its files.
    pub fn release(self: &Arc<Self>, id: &str) -> Result<(), WorkError> {
        core::check_unit_id(id)?;
        let rec = self
            .record(id)
            .ok_or_else(|| WorkError::NotFound(id.to_string()))?;
        if !rec.remote && !rec.state.is_final() {
            self.apply(id, &Event::Cancel)?;
        }
        self.units.lock().unwrap().remove(id);
        std::fs::remove_dir_all(self.unit_dir(id)).map_err(io)?;
        self.bump();
        self.pump();
        Ok(())
    }

    /// Up to `max` bytes of a unit's stdout from `startpos`: the bytes, and whether the
    /// unit is over and nothing follows them.
    pub fn read_results(
        &self,
        id: &str,
        startpos: u64,
        max: usize,
    ) -> Result<(Vec<u8>, bool), WorkError> {
        let rec = self
            .record(id)
            .ok_or_else(|| WorkError::NotFound(id.to_string()))?;
        // The state first: no byte written before the unit ended is missed.
        let over = rec.state.is_final();
        let mut buf = Vec::new();
        if let Ok(mut f) = std::fs::File::open(self.unit_dir(id).join("stdout")) {
            f.seek(std::io::SeekFrom::Start(startpos)).map_err(io)?;
            f.take(max as u64).read_to_end(&mut buf).map_err(io)?;
        }
        let done = over && buf.len() < max;
        Ok((buf, done))
    }

    /// Waits until a unit changes or `timeout` passes.
    pub async fn changed(&self, timeout: Duration) {
        let mut rx = self.changed.subscribe();
        let _ = tokio::time::timeout(timeout, rx.changed()).await;
    }

    /// Starts the pending units that have a slot; fails those whose ttl ran out.
    fn pump(self: &Arc<Self>) {
        let _one = self.pumping.lock().unwrap();
        let (waiting, running) = {
            let units = self.units.lock().unwrap();
            let local = units.values().filter(|r| !r.remote);
            let waiting: Vec<core::Waiting> = local
                .clone()
                .filter(|r| r.state == State::Pending)
                .map(|r| core::Waiting {
                    id: r.id.clone(),
                    submitted_ms: r.submitted_ms,
                    ttl_ms: r.ttl_ms,
                })
                .collect();
            (waiting, local.filter(|r| r.state == State::Running).count())
        };
        let plan = core::plan(&waiting, running, self.limits.max_running, now_ms());
        for id in plan.expire {
            let _ = self.apply(&id, &Event::TtlExpired);
        }
        for id in plan.start {
            self.start(&id);
        }
    }

    /// Starts unit `id`'s command: stdin from its payload, stdout and stderr to files.
    fn start(self: &Arc<Self>, id: &str) {
        let Some(rec) = self.record(id) else { return };
        let dir = self.unit_dir(id);
        let spawned = spawn(&rec, &dir);
        let (child, pid) = match spawned {
            Ok(x) => x,
            Err(e) => {
                let _ = self.apply(id, &Event::SpawnFailed(e.to_string()));
                return;
            }
        };
        if self.apply(id, &Event::Started { pid }).is_err() {
            crate::services::exec::kill_group(pid);
            return;
        }
        // The command holds it open; nothing reads it again (a restart fails a unit that
        // had started).
        let _ = std::fs::remove_file(dir.join("stdin"));
        if let Some(rec) = self.units.lock().unwrap().get_mut(id) {
            rec.pid_start = proc_start(pid);
        }
        if let Some(rec) = self.record(id) {
            let _ = self.persist(&rec);
        }
        tokio::spawn(watch_unit(Arc::downgrade(self), id.to_string(), child, dir));
    }
}

fn apply_life(rec: &mut UnitRecord, life: Life) {
    rec.state = life.state;
    rec.detail = life.detail;
    rec.pid = life.pid;
    if life.pid.is_none() {
        rec.pid_start = None;
    }
}

/// `sh -c '<command> "$@"' om-work <params>...`: the params are arguments, never shell text.
fn spawn(rec: &UnitRecord, dir: &std::path::Path) -> std::io::Result<(tokio::process::Child, u32)> {
    let open_out = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))
    };
    let stdin = std::fs::File::open(dir.join("stdin"))?;
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("{} \"$@\"", rec.command))
        .arg("om-work")
        .args(&rec.params)
        .current_dir(dir)
        .env("OM_UNIT_ID", &rec.id)
        .env("OM_WORKTYPE", &rec.worktype)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(open_out("stdout")?))
        .stderr(Stdio::from(open_out("stderr")?))
        .process_group(0)
        .kill_on_drop(false);
    let child = cmd.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("the command exited before its pid was read"))?;
    Ok((child, pid))
}

/// Waits for a unit's command; kills it if its stdout outgrows [`Limits::max_result`].
async fn watch_unit(work: Weak<Work>, id: String, mut child: tokio::process::Child, dir: PathBuf) {
    let stdout = dir.join("stdout");
    let code = loop {
        tokio::select! {
            status = child.wait() => break status.map(exit_code).unwrap_or(-1),
            _ = tokio::time::sleep(TICK) => {
                let size = std::fs::metadata(&stdout).map(|m| m.len()).unwrap_or(0);
                let Some(w) = work.upgrade() else { return };
                let limit = w.limits.max_result;
                if size > limit {
                    // Killed and cut before the unit is over: a reader never sees more.
                    if let Some(pid) = child.id() {
                        crate::services::exec::kill_group(pid);
                    }
                    let _ = child.wait().await;
                    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&stdout) {
                        let _ = f.set_len(limit);
                    }
                    let _ = w.apply(&id, &Event::ResultTooLarge { limit });
                    w.pump();
                    return;
                }
            }
        }
    };
    let Some(w) = work.upgrade() else { return };
    if let Ok(rec) = w.apply(&id, &Event::Exited(code)) {
        if rec.state == State::Failed {
            note_stderr(&w, &rec, &dir);
        }
    }
    w.pump();
}

/// Adds the last line of a failed unit's stderr to its detail.
fn note_stderr(w: &Work, rec: &UnitRecord, dir: &std::path::Path) {
    let text = std::fs::read(dir.join("stderr")).unwrap_or_default();
    let tail = &text[text.len().saturating_sub(4096)..];
    let last = String::from_utf8_lossy(tail);
    let Some(line) = last.lines().rev().find(|l| !l.trim().is_empty()) else {
        return;
    };
    let line: String = line.chars().take(200).collect();
    let mut units = w.units.lock().unwrap();
    if let Some(r) = units.get_mut(&rec.id) {
        r.detail = format!("{}: {line}", r.detail);
        let r = r.clone();
        drop(units);
        let _ = w.persist(&r);
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// A process's start time (field 22 of `/proc/<pid>/stat`), or `None` if it is gone.
fn proc_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Kills process group `pid` if `pid` is still the process that was recorded.
fn kill_if_same(pid: Option<u32>, start: Option<u64>) {
    if let (Some(pid), Some(start)) = (pid, start) {
        if proc_start(pid) == Some(start) {
            crate::services::exec::kill_group(pid);
        }
    }
}

async fn ticker(work: Weak<Work>) {
    loop {
        tokio::time::sleep(TICK * 5).await;
        let Some(w) = work.upgrade() else { return };
        w.pump();
    }
}

/// A new random unit id: 8 letters and digits, as Receptor's.
pub fn new_unit_id() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..8)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// Parses a ttl: `90s`, `500ms`, `10m`, `2h` or a number of seconds, up to [`MAX_TTL`].
pub fn parse_ttl(v: &str) -> Result<u64, WorkError> {
    let ms = match v.trim().strip_suffix('h') {
        Some(h) => h
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|h| h.checked_mul(3_600_000)),
        None => raft::apply::parse_duration_ms(v),
    };
    match ms {
        Some(ms) if ms > 0 && ms <= MAX_TTL.as_millis() as u64 => Ok(ms),
        _ => Err(WorkError::Bad(format!(
            "ttl {v:?}: expected a duration such as 500ms, 90s, 10m or 2h, at most {}h",
            MAX_TTL.as_secs() / 3600
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: &str, command: &str) -> Submission {
        Submission {
            id: id.into(),
            worktype: "t".into(),
            command: command.into(),
            params: vec!["a b".into(), "$HOME".into()],
            ttl_ms: None,
            submitter: "n1".into(),
        }
    }

    async fn until_final(w: &Work, id: &str) -> UnitRecord {
        for _ in 0..200 {
            let r = w.record(id).unwrap();
            if r.state.is_final() {
                return r;
            }
            w.changed(Duration::from_millis(50)).await;
        }
        panic!("unit {id} did not end: {:?}", w.record(id));
    }

    #[tokio::test]
    async fn units_run_with_their_payload_and_params_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let w = Work::open(dir.path().to_path_buf(), "n1".into());
        w.submit(sub("u1", "cat; printf '[%s]'"), b"hello ")
            .unwrap();
        let done = until_final(&w, "u1").await;
        assert_eq!(done.state, State::Succeeded, "{done:?}");
        // Params are arguments: no shell expansion of the submitter's words.
        let (out, over) = w.read_results("u1", 0, 1024).unwrap();
        assert_eq!(String::from_utf8_lossy(&out), "hello [a b][$HOME]");
        assert!(over);
        assert_eq!(
            w.read_results("u1", 6, 3).unwrap(),
            (b"[a ".to_vec(), false)
        );
        w.submit(sub("u2", "echo boom >&2; exit 4"), b"").unwrap();
        let failed = until_final(&w, "u2").await;
        assert_eq!(failed.state, State::Failed);
        assert!(
            failed.detail.contains("exit status 4: boom"),
            "{}",
            failed.detail
        );
        let mut sleeper = sub("u3", "sleep 30");
        sleeper.params.clear();
        w.submit(sleeper, b"").unwrap();
        assert!(w
            .submit(sub("u3", "true"), b"")
            .unwrap_err()
            .to_string()
            .contains("taken"));
        // A new daemon on the same root: the sleeper was running, so it failed.
        let again = Work::open(dir.path().to_path_buf(), "n1".into());
        let r = again.record("u3").unwrap();
        assert_eq!(r.state, State::Failed);
        assert!(r.detail.contains("daemon stopped"), "{}", r.detail);
        assert_eq!(again.read_results("u1", 6, 100).unwrap().0, b"[a b][$HOME]");
        again.release("u1").unwrap();
        assert!(!dir.path().join("work/u1").exists());
        assert!(matches!(again.release("u1"), Err(WorkError::NotFound(_))));
        drop(w);
    }

    #[tokio::test]
    async fn limits_refuse_or_fail_what_exceeds_them() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_payload: 10,
            max_units: 2,
            max_running: 1,
            max_result: 1000,
        };
        let w = Work::open_with(dir.path().to_path_buf(), "n1".into(), limits);
        let e = w.submit(sub("p", "cat"), &[b'x'; 11]).unwrap_err();
        assert!(e.to_string().contains("more than the 10-byte limit"), "{e}");
        let mut big = sub("big", "head -c 5000 /dev/zero; sleep 30");
        big.params.clear();
        w.submit(big, b"").unwrap();
        let r = until_final(&w, "big").await;
        assert_eq!(r.state, State::Failed);
        assert!(r.detail.contains("1000-byte result limit"), "{}", r.detail);
        assert_eq!(w.status(&r).stdout_size, 1000, "stdout is cut at the limit");
        w.submit(sub("two", "true"), b"").unwrap();
        let e = w.submit(sub("three", "true"), b"").unwrap_err();
        assert!(e.to_string().contains("the most it keeps (2)"), "{e}");
        assert!(!dir.path().join("work/p").exists() && !dir.path().join("work/three").exists());
    }

    #[tokio::test]
    async fn cancel_kills_and_ttl_expires_what_waits() {
        let dir = tempfile::tempdir().unwrap();
        let w = Work::open(dir.path().to_path_buf(), "n1".into());
        for i in 0..MAX_RUNNING {
            let mut s = sub(&format!("s{i}"), "sleep 30");
            s.params.clear();
            w.submit(s, b"").unwrap();
        }
        let mut late = sub("late", "true");
        late.ttl_ms = Some(300);
        assert_eq!(w.submit(late, b"").unwrap().state, State::Pending);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let r = w.record("late").unwrap();
        assert_eq!(
            (r.state, r.detail.contains("ttl")),
            (State::Failed, true),
            "{r:?}"
        );
        let pid = w.record("s0").unwrap().pid.unwrap();
        assert_eq!(w.cancel("s0").unwrap().state, State::Canceled);
        assert!(w.cancel("s0").unwrap_err().to_string().contains("Canceled"));
        for _ in 0..50 {
            if proc_start(pid).is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z"))
            .unwrap_or(true);
        assert!(zombie, "the canceled command still runs");
        for i in 1..MAX_RUNNING {
            w.release(&format!("s{i}")).unwrap();
        }
        assert!(w.cancel("../x").unwrap_err().to_string().contains("unitid"));
        assert!(parse_ttl("2h").is_ok() && parse_ttl("0s").is_err() && parse_ttl("1000h").is_err());
    }
}
