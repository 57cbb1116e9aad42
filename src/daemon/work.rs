//! Work units across the cluster: a unit runs on the node it was submitted to, reached
//! through the daemon's peer connections with the `work_*` actions; the submitting node keeps
//! a record of it (`remote`) so that every `work` command works from there too.
//!
//! This is where a submission is checked against the executing node's work types and the
//! limits, where payloads and stdout chunks are base64 on the wire, and where the `work_*`
//! actions are served.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::wire::Doc;
use base64::Engine;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;

use crate::api;
use crate::api::options;
use crate::api::Action;
use crate::api::ApiError;
use crate::api::Status;
use crate::daemon::Daemon;
use crate::work::core::State;
use crate::work::Submission;
use crate::work::UnitRecord;
use crate::work::UnitStatus;
use crate::work::WorkError;

type Result<T> = std::result::Result<T, ApiError>;

/// Bytes of stdout per `work_results` answer.
pub const CHUNK: usize = 256 * 1024;
/// How long a results stream keeps trying a node it cannot reach before it ends.
pub const UNREACHABLE_GIVE_UP: Duration = Duration::from_secs(60);
/// How long a peer has to answer a `work_status`, `work_cancel` or `work_release`.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl From<WorkError> for ApiError {
    fn from(e: WorkError) -> ApiError {
        let status = match e {
            WorkError::Bad(_) | WorkError::NotFound(_) => Status::BadRequest,
            WorkError::Full(_) => Status::Unavailable,
            WorkError::Io(_) => Status::Error,
        };
        ApiError::new(status, e.to_string())
    }
}

/// Checks a submission against this node's work types; the command it will run.
pub fn check_local(daemon: &Daemon, worktype: &str, params: &[String]) -> Result<String> {
    let cfg = daemon.config();
    let Some(wt) = cfg.worktypes.get(worktype) else {
        let known: Vec<&str> = cfg.worktypes.keys().map(String::as_str).collect();
        return Err(ApiError::bad(format!(
            "worktype {worktype:?} is not offered by {}; its work types: {}",
            cfg.name,
            if known.is_empty() {
                "none (declare [worktype#<name>] sections in node.conf)".to_string()
            } else {
                known.join(", ")
            }
        )));
    };
    if !params.is_empty() && !wt.params {
        return Err(ApiError::bad(format!(
            "params: work type {worktype} takes none (its node.conf section has no `params = true`)"
        )));
    }
    if params.len() > crate::work::MAX_PARAMS {
        return Err(ApiError::bad(format!(
            "params: {} words, more than {}",
            params.len(),
            crate::work::MAX_PARAMS
        )));
    }
    if let Some(p) = params
        .iter()
        .find(|p| p.len() > crate::work::MAX_PARAM_LEN || p.contains('\0'))
    {
        return Err(ApiError::bad(format!(
            "params: a word of {} bytes (at most {}, no NUL byte)",
            p.len(),
            crate::work::MAX_PARAM_LEN
        )));
    }
    Ok(wt.command.clone())
}

/// The largest payload that can reach another node in one frame.
pub fn max_remote_payload(daemon: &Daemon) -> u64 {
    let frame = daemon.config().max_frame as u64;
    let room = frame.saturating_sub(64 * 1024) / 4 * 3;
    room.min(daemon.work.limits().max_payload)
}

/// What a submitter asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The unit id.
    pub id: String,
    /// The executing node (already resolved: never `localhost`).
    pub node: String,
    /// The work type.
    pub worktype: String,
    /// Extra arguments.
    pub params: Vec<String>,
    /// Ttl in ms.
    pub ttl_ms: Option<u64>,
    /// Keep a record of a remote unit here (not for a session connected to its node, whose
    /// unit it is).
    pub record_here: bool,
}

/// Submits a unit with its payload, here or on `ask.node`.
pub async fn submit(daemon: &Arc<Daemon>, ask: Ask, payload: Vec<u8>) -> Result<UnitRecord> {
    let me = daemon.name();
    if ask.node == me {
        let command = check_local(daemon, &ask.worktype, &ask.params)?;
        let s = Submission {
            id: ask.id,
            worktype: ask.worktype,
            command,
            params: ask.params,
            ttl_ms: ask.ttl_ms,
            submitter: me,
        };
        return Ok(daemon.work.submit(s, &payload)?);
    }
    let limit = max_remote_payload(daemon);
    if payload.len() as u64 > limit {
        return Err(ApiError::bad(format!(
            "payload: {} bytes; a payload for another node travels in one frame \
             (listener.max_frame = {}): at most {limit} bytes",
            payload.len(),
            daemon.config().max_frame
        )));
    }
    let req = options::WorkSubmit {
        unitid: ask.id.clone(),
        worktype: ask.worktype.clone(),
        params: ask.params.clone(),
        ttl_ms: ask.ttl_ms,
        payload: b64().encode(&payload),
        submitter: me,
    };
    let st = daemon
        .ask_member::<options::WorkUnitStatus>(
            &ask.node,
            Action::WorkSubmit,
            &req,
            Duration::from_secs(30),
        )
        .await?;
    let rec = UnitRecord {
        id: ask.id,
        worktype: ask.worktype,
        node: ask.node,
        remote: true,
        command: String::new(),
        params: ask.params,
        state: State::Pending,
        detail: st.detail.clone(),
        pid: None,
        pid_start: None,
        submitted_ms: st.submitted_ms,
        finished_ms: None,
        ttl_ms: ask.ttl_ms,
        payload_size: payload.len() as u64,
        submitter: daemon.name(),
    };
    if ask.record_here {
        daemon.work.add_remote(rec.clone())?;
        daemon.work.update_remote(&rec.id, &st);
    }
    Ok(rec)
}

/// Refuses a submission that cannot be stored here (checked before the payload is read).
pub fn check_room(daemon: &Daemon) -> Result<()> {
    Ok(daemon.work.check_room()?)
}

/// The status of some or all units known here, asking executing nodes about theirs.
pub async fn list(
    daemon: &Arc<Daemon>,
    only: Option<&str>,
) -> Result<BTreeMap<String, UnitStatus>> {
    let mut recs = daemon.work.records();
    if let Some(id) = only {
        crate::work::core::check_unit_id(id).map_err(WorkError::from)?;
        recs.retain(|k, _| k == id);
        if recs.is_empty() {
            return Err(WorkError::NotFound(id.to_string()).into());
        }
    }
    let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in recs.values().filter(|r| r.remote) {
        by_node
            .entry(r.node.clone())
            .or_default()
            .push(r.id.clone());
    }
    let asks = by_node.into_iter().map(|(node, unitids)| {
        let d = daemon.clone();
        async move {
            let req = options::WorkStatus { unitids };
            let r = d
                .ask_member::<BTreeMap<String, options::WorkUnitStatus>>(
                    &node,
                    Action::WorkStatus,
                    &req,
                    PEER_TIMEOUT,
                )
                .await;
            (node, r)
        }
    });
    let answers = futures_join(asks.collect()).await;
    let mut out = BTreeMap::new();
    let mut unreachable = BTreeMap::new();
    for (node, r) in answers {
        match r {
            Ok(map) => {
                for (id, st) in map {
                    daemon.work.update_remote(&id, &st);
                    out.insert(id, st);
                }
            }
            Err(e) => {
                unreachable.insert(node, e.message);
            }
        }
    }
    for (id, rec) in daemon.work.records() {
        if !recs.contains_key(&id) || out.contains_key(&id) {
            continue;
        }
        let mut st = daemon.work.status(&rec);
        if let Some(why) = unreachable.get(&rec.node) {
            st.detail = format!("{} (last known; {why})", st.detail);
        } else if rec.remote {
            st.detail = format!("{} (unknown to {})", st.detail, rec.node);
        }
        out.insert(id, st);
    }
    Ok(out)
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join<T: Send + 'static>(
    futs: Vec<impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

fn known(daemon: &Daemon, id: &str) -> Result<UnitRecord> {
    crate::work::core::check_unit_id(id).map_err(WorkError::from)?;
    daemon
        .work
        .record(id)
        .ok_or_else(|| WorkError::NotFound(id.to_string()).into())
}

/// `work cancel`.
pub async fn cancel(daemon: &Arc<Daemon>, id: &str) -> Result<UnitStatus> {
    let rec = known(daemon, id)?;
    if !rec.remote {
        let rec = daemon.work.cancel(id)?;
        return Ok(daemon.work.status(&rec));
    }
    let req = options::WorkUnit { unitid: id.into() };
    let st = daemon
        .ask_member::<options::WorkUnitStatus>(&rec.node, Action::WorkCancel, &req, PEER_TIMEOUT)
        .await?;
    daemon.work.update_remote(id, &st);
    Ok(st)
}

/// `work release` (`force`: `work force-release`, which forgets a unit whose node cannot
/// be reached).
pub async fn release(daemon: &Arc<Daemon>, id: &str, force: bool) -> Result<()> {
    let rec = known(daemon, id)?;
    if rec.remote {
        let req = options::WorkUnit { unitid: id.into() };
        let r = daemon
            .ask_member::<options::WorkUnitStatus>(
                &rec.node,
                Action::WorkRelease,
                &req,
                PEER_TIMEOUT,
            )
            .await;
        match r {
            Ok(_) => {}
            Err(e) if e.message.contains("unknown unitid") => {}
            Err(e) if force => tracing::warn!(unit = %id, "force-release: {e}"),
            Err(e) if e.is(Status::Unavailable) => {
                return Err(ApiError::new(
                    Status::Unavailable,
                    format!(
                        "{}; `work force-release {id}` forgets it here anyway",
                        e.message
                    ),
                ))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(daemon.work.release(id)?)
}

/// Checks that unit `id` is known here (before a results stream starts).
pub fn check_known(daemon: &Daemon, id: &str) -> Result<()> {
    known(daemon, id).map(drop)
}

/// Streams unit `id`'s stdout from `startpos` into `out` until the unit is over.
pub async fn stream_results<W: AsyncWrite + Unpin>(
    daemon: &Arc<Daemon>,
    id: &str,
    startpos: u64,
    out: &mut W,
) -> Result<()> {
    let rec = known(daemon, id)?;
    let from = rec.remote.then_some(rec.node.as_str());
    stream_from(daemon, from, id, startpos, out).await
}

/// Checks that member `node` runs unit `id` (before a results stream from it starts).
pub async fn check_runs_on(daemon: &Daemon, node: &str, id: &str) -> Result<()> {
    crate::work::core::check_unit_id(id).map_err(WorkError::from)?;
    let req = options::WorkStatus {
        unitids: vec![id.to_string()],
    };
    let units = daemon
        .ask_member::<BTreeMap<String, options::WorkUnitStatus>>(
            node,
            Action::WorkStatus,
            &req,
            PEER_TIMEOUT,
        )
        .await?;
    if units.contains_key(id) {
        return Ok(());
    }
    Err(ApiError::bad(format!("unknown unitid {id:?} on {node}")))
}

/// Streams unit `id`'s stdout from member `from` (`None`: this node's own unit).
pub async fn stream_from<W: AsyncWrite + Unpin>(
    daemon: &Arc<Daemon>,
    from: Option<&str>,
    id: &str,
    mut startpos: u64,
    out: &mut W,
) -> Result<()> {
    let io = |e: std::io::Error| ApiError::new(Status::Error, e.to_string());
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        let (bytes, done) = match from {
            None => local_chunk(daemon, id, startpos, Duration::from_secs(5)).await?,
            Some(node) => match remote_chunk(daemon, node, id, startpos).await {
                Ok(chunk) => {
                    failing_since = None;
                    chunk
                }
                Err(e) if e.is(Status::Unavailable) => {
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > UNREACHABLE_GIVE_UP {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        out.write_all(&bytes).await.map_err(io)?;
        startpos += bytes.len() as u64;
        if done {
            return out.flush().await.map_err(io);
        }
    }
}

/// One `work_results` chunk from `node`.
async fn remote_chunk(
    daemon: &Daemon,
    node: &str,
    id: &str,
    startpos: u64,
) -> Result<(Vec<u8>, bool)> {
    let req = options::WorkResults {
        unitid: id.into(),
        startpos,
        wait_ms: Some(5000),
    };
    let chunk = daemon
        .ask_member::<options::WorkChunk>(node, Action::WorkResults, &req, Duration::from_secs(15))
        .await?;
    let bytes = b64()
        .decode(chunk.data.as_bytes())
        .map_err(|e| ApiError::new(Status::Error, format!("{node}: bad chunk: {e}")))?;
    Ok((bytes, chunk.done))
}

/// A chunk of a local unit's stdout, waiting up to `wait` for one when none is there yet.
async fn local_chunk(
    daemon: &Daemon,
    id: &str,
    pos: u64,
    wait: Duration,
) -> Result<(Vec<u8>, bool)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (bytes, done) = daemon.work.read_results(id, pos, CHUNK)?;
        if !bytes.is_empty() || done || tokio::time::Instant::now() >= deadline {
            return Ok((bytes, done));
        }
        daemon.work.changed(Duration::from_millis(200)).await;
    }
}

/// Serves the `work_*` actions for the units that run on this node.
pub async fn serve(daemon: &Arc<Daemon>, action: Action, o: crate::wire::Doc) -> Result<Doc> {
    match action {
        Action::WorkSubmit => {
            let req: options::WorkSubmit = api::parse(action, o)?;
            let payload = b64()
                .decode(req.payload.as_bytes())
                .map_err(|e| ApiError::bad(format!("payload: not base64: {e}")))?;
            let command = check_local(daemon, &req.worktype, &req.params)?;
            let s = Submission {
                id: req.unitid,
                worktype: req.worktype,
                command,
                params: req.params,
                ttl_ms: req
                    .ttl_ms
                    .map(|t| t.min(crate::work::MAX_TTL.as_millis() as u64)),
                submitter: req.submitter,
            };
            let rec = daemon.work.submit(s, &payload)?;
            api::reply(&daemon.work.status(&rec))
        }
        Action::WorkStatus => {
            let req: options::WorkStatus = api::parse(action, o)?;
            let mut out = BTreeMap::new();
            for (id, rec) in daemon.work.records() {
                if !rec.remote && (req.unitids.is_empty() || req.unitids.contains(&id)) {
                    out.insert(id, daemon.work.status(&rec));
                }
            }
            api::reply(&out)
        }
        Action::WorkResults => {
            let req: options::WorkResults = api::parse(action, o)?;
            let local = known(daemon, &req.unitid)?;
            if local.remote {
                return Err(ApiError::bad(format!(
                    "unit {} runs on {}",
                    req.unitid, local.node
                )));
            }
            let wait = Duration::from_millis(req.wait_ms.unwrap_or(0).min(10_000));
            let (bytes, done) = local_chunk(daemon, &req.unitid, req.startpos, wait).await?;
            api::reply(&options::WorkChunk {
                data: b64().encode(bytes),
                done,
            })
        }
        Action::WorkCancel | Action::WorkRelease => {
            let req: options::WorkUnit = api::parse(action, o)?;
            let rec = known(daemon, &req.unitid)?;
            if action == Action::WorkRelease {
                let st = daemon.work.status(&rec);
                daemon.work.release(&req.unitid)?;
                return api::reply(&st);
            }
            let rec = daemon.work.cancel(&req.unitid)?;
            api::reply(&daemon.work.status(&rec))
        }
        other => Err(ApiError::new(
            Status::UnknownAction,
            format!("{other} is not a work action"),
        )),
    }
}
