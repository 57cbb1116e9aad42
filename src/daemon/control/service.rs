//! Receptor's control service commands, served on the control socket: `status`, `ping`,
//! `traceroute`, `reload` and the `work` commands (docs/CONTROL.md).
//!
//! Each command is answered with one JSON line, Receptor's field names where it has
//! them, or one `ERROR: ...` line. `work submit` reads the payload up to EOF after its
//! first answer; `work results` streams raw stdout bytes after its first line; both end the
//! connection, as Receptor's do. Peers are reached with the daemon's peer connections;
//! a peer the direct link does not reach is pinged through another member (one relay
//! hop), and `connect <node> control` makes the rest of a connection that node's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use serde_json::Value;

use crate::wire::Doc;
use tokio::io::AsyncBufRead;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;

use crate::api::options;
use crate::api::receptor::Advertisement;
use crate::api::receptor::Connection;
use crate::api::receptor::Hop;
use crate::api::receptor::PingFailed;
use crate::api::receptor::PingReply;
use crate::api::receptor::Pong;
use crate::api::receptor::ReceptorStatus;
use crate::api::receptor::Reloaded;
use crate::api::receptor::Unreachable;
use crate::api::receptor::WorkCancelled;
use crate::api::receptor::WorkCommand;
use crate::api::receptor::WorkReleased;
use crate::api::receptor::WorkStarted;
use crate::api::Action;
use crate::api::ApiError;
use crate::api::Status;
use crate::control::command::Command;
use crate::control::command::NodeRef;
use crate::daemon::work as remote;
use crate::daemon::Daemon;
use crate::work;

/// Whether the connection goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next command.
    Continue,
    /// The command consumed the stream (submit, results): close.
    Close,
}

/// How long a peer has to answer a ping (also in `status`).
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a submitter has to send its payload and EOF.
pub const PAYLOAD_TIMEOUT: Duration = Duration::from_secs(600);

type Result<T> = std::result::Result<T, ApiError>;

/// The line an error answer is.
pub fn error_line(message: &str) -> String {
    let one_line = message.replace(['\n', '\r'], " ");
    format!("ERROR: {one_line}\n")
}

fn json_line<T: serde::Serialize>(v: &T) -> String {
    let mut s = serde_json::to_string(v).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

/// Serves one command; writes its answer to `wr`.
pub async fn run<R, W>(daemon: &Arc<Daemon>, cmd: Command, rd: &mut R, wr: &mut W) -> Flow
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let answer = match cmd {
        Command::Connect { node } => return connect(daemon, node, rd, wr).await,
        Command::WorkSubmit {
            node,
            worktype,
            ttl_ms,
            params,
        } => {
            let ask = (node, worktype, ttl_ms, params);
            return submit(daemon, ask, rd, wr, None).await;
        }
        Command::WorkResults { unitid, startpos } => {
            return results(daemon, &unitid, startpos, wr).await
        }
        other => one_answer(daemon, other).await,
    };
    let line = match answer {
        Ok(v) => json_line(&v),
        Err(e) => error_line(&e.message),
    };
    if wr.write_all(line.as_bytes()).await.is_err() {
        return Flow::Close;
    }
    Flow::Continue
}

/// The commands answered with one line.
pub async fn one_answer(daemon: &Arc<Daemon>, cmd: Command) -> Result<Doc> {
    let me = daemon.name();
    match cmd {
        Command::Status { fields, exclude } => {
            // `requested_fields` and `exclude_fields` pick keys of the answer: by their
            // Receptor spelling, on its JSON form.
            let mut st = serde_json::to_value(status(daemon).await?)
                .map_err(|e| ApiError::new(Status::Internal, e.to_string()))?;
            if let Value::Object(map) = &mut st {
                map.retain(|k, _| {
                    fields.as_ref().is_none_or(|f| f.contains(k)) && !exclude.contains(k)
                });
            }
            Ok(Doc::from(st))
        }
        Command::Reload => crate::api::reply(&reload(daemon).await?),
        Command::Ping { target } => crate::api::reply(&ping(daemon, &target.resolve(&me)).await),
        Command::Traceroute { target } => {
            crate::api::reply(&traceroute(daemon, &target.resolve(&me)).await)
        }
        Command::WorkList { unitid } => {
            let list = remote::list(daemon, unitid.as_deref()).await?;
            match unitid {
                Some(id) => crate::api::reply(&list.get(&id)),
                None => crate::api::reply(&list),
            }
        }
        Command::WorkCancel { unitid } => {
            remote::cancel(daemon, &unitid).await?;
            crate::api::reply(&WorkCancelled { cancelled: unitid })
        }
        Command::WorkRelease { unitid } => {
            remote::release(daemon, &unitid, false).await?;
            crate::api::reply(&WorkReleased { released: unitid })
        }
        Command::WorkForceRelease { unitid } => {
            remote::release(daemon, &unitid, true).await?;
            crate::api::reply(&WorkReleased { released: unitid })
        }
        Command::WorkSubmit { .. } | Command::WorkResults { .. } | Command::Connect { .. } => {
            Err(ApiError::bad(
                "work submit, work results and connect take over the connection: they are not \
                 relayed by connect (submit with `work submit <node> <worktype>` instead, and \
                 read results on the node the unit was submitted on)",
            ))
        }
    }
}

/// The listener address of member `node`, or an error naming the members.
fn member_addr(daemon: &Daemon, node: &str) -> Result<String> {
    daemon.member_addr(node).map_err(|mut e| {
        e.message.push_str(" (or localhost)");
        e
    })
}

/// One `control_ping` round trip to `node`: its answer and the time it took.
async fn round_trip(daemon: &Daemon, node: &str) -> Result<(options::Pong, Duration)> {
    let (pong, took) = ping_call(daemon, node, None, PING_TIMEOUT).await?;
    if pong.node != node {
        return Err(ApiError::new(
            Status::Error,
            format!("{node}'s address is answered by {}", pong.node),
        ));
    }
    let ms = took.as_secs_f64() * 1000.0;
    daemon
        .rtt
        .lock()
        .unwrap()
        .insert(node.to_string(), (ms, crate::clock::now_ms()));
    Ok((pong, took))
}

/// Sends `control_ping` (with `target`: a relay request) to `node`.
async fn ping_call(
    daemon: &Daemon,
    node: &str,
    target: Option<&str>,
    timeout: Duration,
) -> Result<(options::Pong, Duration)> {
    member_addr(daemon, node)?;
    let req = options::ControlPing {
        target: target.map(str::to_string),
    };
    let t0 = Instant::now();
    let pong = daemon
        .ask_member(node, Action::ControlPing, &req, timeout)
        .await?;
    Ok((pong, t0.elapsed()))
}

/// `control_ping` with a target, on the relaying node: a direct round trip to it.
pub async fn relay_ping(daemon: &Daemon, target: &str) -> Result<options::Pong> {
    let (mut pong, took) = round_trip(daemon, target).await?;
    pong.relayed_ms = Some(ms(took));
    Ok(pong)
}

/// A route to `target` through another member, when the direct link is down: the first
/// member (asked all at once) that reaches it. Its pong, the relay, and the whole time.
async fn via_peer(daemon: &Arc<Daemon>, target: &str) -> Result<(options::Pong, String, Duration)> {
    let me = daemon.name();
    let relays: Vec<String> = daemon.node()?.read(|s| {
        s.nodes
            .keys()
            .filter(|n| **n != me && *n != target)
            .cloned()
            .collect()
    });
    let mut asks = tokio::task::JoinSet::new();
    for via in relays {
        let (d, t) = (daemon.clone(), target.to_string());
        asks.spawn(async move {
            let r = ping_call(&d, &via, Some(&t), PING_TIMEOUT * 2).await;
            (via, r)
        });
    }
    let mut last = ApiError::new(
        Status::Unavailable,
        format!("no other member reaches {target}"),
    );
    while let Some(done) = asks.join_next().await {
        let Ok((via, r)) = done else { continue };
        match r {
            Ok((pong, took)) if pong.node == target => return Ok((pong, via, took)),
            Ok((pong, _)) => {
                last = ApiError::new(
                    Status::Error,
                    format!("{via} reached {} for {target}", pong.node),
                )
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// `ping <node>`: Receptor's `{Success, From, Time}`, or `{Success: false, Error}`; a
/// node this one cannot reach is pinged through a member that can (`Via`).
async fn ping(daemon: &Arc<Daemon>, node: &str) -> PingReply {
    let answer = |pong: options::Pong, took: Duration, via: Option<String>| {
        let t = format!("{:.3}ms", ms(took));
        PingReply::Reply(Pong {
            success: true,
            from: pong.node,
            time: t.clone(),
            time_str: t,
            time_ms: ms(took),
            via,
        })
    };
    let failed = |error: String| {
        PingReply::Failed(PingFailed {
            success: false,
            from: node.to_string(),
            error,
        })
    };
    let direct = match round_trip(daemon, node).await {
        Ok((pong, took)) => return answer(pong, took, None),
        Err(e) => e,
    };
    if !direct.is(Status::Unavailable) || node == daemon.name() {
        return failed(direct.message);
    }
    match via_peer(daemon, node).await {
        Ok((pong, via, took)) => answer(pong, took, Some(via)),
        Err(e) => failed(format!(
            "{}; through the other members: {}",
            direct.message, e.message
        )),
    }
}

/// `traceroute <node>`: the hops from this node: the target, or the member that relays to
/// it when the direct link is down, then the target.
async fn traceroute(daemon: &Arc<Daemon>, node: &str) -> BTreeMap<String, Hop> {
    let me = daemon.name();
    let mut hops = BTreeMap::new();
    let hop = |from: &str, took: Duration| {
        let t = format!("{:.3}ms", ms(took));
        Hop {
            from: from.to_string(),
            time: Some(t.clone()),
            time_str: t,
            error: None,
        }
    };
    hops.insert("0".into(), hop(&me, Duration::ZERO));
    if node == me {
        return hops;
    }
    let direct = match round_trip(daemon, node).await {
        Ok((pong, took)) => {
            hops.insert("1".into(), hop(&pong.node, took));
            return hops;
        }
        Err(e) => e,
    };
    match via_peer(daemon, node).await {
        Ok((pong, via, took)) => {
            let to_via = round_trip(daemon, &via).await.map_or(took, |(_, t)| t);
            hops.insert("1".into(), hop(&via, to_via));
            hops.insert("2".into(), hop(&pong.node, took));
        }
        Err(e) => {
            let why = format!(
                "{}; through the other members: {}",
                direct.message, e.message
            );
            let failed = Hop {
                from: node.to_string(),
                time: None,
                time_str: "-".into(),
                error: Some(why),
            };
            hops.insert("1".into(), failed);
        }
    }
    hops
}

/// `reload`: re-reads node.conf now (what the watcher does on a change).
async fn reload(daemon: &Arc<Daemon>) -> Result<Reloaded> {
    let r = crate::daemon::watcher::reload(daemon).await;
    if let Some(why) = r.refused {
        return Err(ApiError::bad(why));
    }
    Ok(Reloaded {
        success: true,
        applied: r.applied,
        needs_restart: r.needs_restart,
    })
}

/// This machine's memory in MiB (`MemTotal` of /proc/meminfo), 0 if unknown.
fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn rfc3339(ms_epoch: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms_epoch as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn advertisement(node: &str, worktypes: &[String], at_ms: u64) -> Advertisement {
    let work_commands = worktypes
        .iter()
        .map(|w| WorkCommand {
            work_type: w.clone(),
            secure: false,
        })
        .collect();
    Advertisement {
        node_id: node.to_string(),
        service: "control".into(),
        conn_type: 1,
        time: rfc3339(at_ms),
        tags: None,
        work_commands,
    }
}

/// What `status` gathers about the other members.
#[derive(Default)]
struct Mesh {
    connections: Vec<Connection>,
    costs: BTreeMap<String, BTreeMap<String, f64>>,
    routes: BTreeMap<String, String>,
    ads: Vec<Advertisement>,
    unreachable: BTreeMap<String, Unreachable>,
}

impl Mesh {
    fn heard(&mut self, node: &str, pong: &options::Pong, at_ms: u64) {
        self.costs
            .insert(node.to_string(), pong.connections.clone());
        self.ads.push(advertisement(node, &pong.worktypes, at_ms));
    }
}

/// Asks every member at once, directly; those that do not answer, through the others.
async fn mesh(daemon: &Arc<Daemon>, me: &str) -> Result<Mesh> {
    let peers: Vec<String> = daemon
        .node()?
        .read(|s| s.nodes.keys().filter(|n| *n != me).cloned().collect());
    let direct: Vec<_> = peers
        .iter()
        .map(|p| {
            let (d, p) = (daemon.clone(), p.clone());
            tokio::spawn(async move { (p.clone(), round_trip(&d, &p).await) })
        })
        .collect();
    let now = crate::clock::now_ms();
    let mut m = Mesh::default();
    let mut failed = Vec::new();
    for h in direct {
        let Ok((peer, r)) = h.await else { continue };
        match r {
            Ok((pong, took)) => {
                m.connections.push(Connection {
                    node_id: peer.clone(),
                    cost: ms(took),
                });
                m.costs
                    .entry(me.to_string())
                    .or_default()
                    .insert(peer.clone(), ms(took));
                m.routes.insert(peer.clone(), peer.clone());
                m.heard(&peer, &pong, now);
            }
            Err(e) => failed.push((peer, e)),
        }
    }
    for (peer, e) in failed {
        match via_peer(daemon, &peer).await {
            Ok((pong, via, _)) => {
                m.routes.insert(peer.clone(), via);
                m.heard(&peer, &pong, now);
            }
            Err(relayed) => {
                let seen = daemon.peers.last_seen(&peer).map(|d| d.as_millis() as u64);
                let why = format!(
                    "{}; through the other members: {}",
                    e.message, relayed.message
                );
                let gone = Unreachable {
                    error: why,
                    last_seen_ms_ago: seen,
                };
                m.unreachable.insert(peer, gone);
            }
        }
    }
    Ok(m)
}

/// `status`: this node, its connections with their measured round trips, what each node
/// says of its own connections, the route to each (direct, or through a member when the
/// direct link is down), and what each node offers.
async fn status(daemon: &Arc<Daemon>) -> Result<ReceptorStatus> {
    let me = daemon.name();
    let own = daemon.pong();
    let mut m = mesh(daemon, &me).await?;
    m.ads.insert(
        0,
        advertisement(&me, &own.worktypes, crate::clock::now_ms()),
    );
    Ok(ReceptorStatus {
        node_id: me,
        version: own.version,
        system_cpu_count: std::thread::available_parallelism().map_or(0, |n| n.get()),
        system_memory_mib: memory_mib(),
        connections: m.connections,
        known_connection_costs: m.costs,
        routing_table: m.routes,
        advertisements: m.ads,
        unreachable: m.unreachable,
    })
}

async fn write_or_close<W: AsyncWrite + Unpin>(wr: &mut W, line: &str) -> Flow {
    let _ = wr.write_all(line.as_bytes()).await;
    let _ = wr.flush().await;
    Flow::Close
}

async fn write_and_go_on<W: AsyncWrite + Unpin>(wr: &mut W, line: &str) -> Flow {
    match wr.write_all(line.as_bytes()).await {
        Ok(()) => Flow::Continue,
        Err(_) => Flow::Close,
    }
}

/// `work submit`: checks, then answers Receptor's "Work unit created" line, reads the
/// payload up to EOF and submits it; the last line is `{result, unitid}` or an error.
/// In a session connected to another node (`session`), the unit is that node's: it runs
/// there and no record is kept here.
async fn submit<R, W>(
    daemon: &Arc<Daemon>,
    (node, worktype, ttl_ms, params): (NodeRef, String, Option<u64>, Vec<String>),
    rd: &mut R,
    wr: &mut W,
    session: Option<&str>,
) -> Flow
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let me = daemon.name();
    let node = node.resolve(session.unwrap_or(&me));
    let checked = (|| -> Result<u64> {
        if let Some(s) = session.filter(|s| *s != node) {
            return Err(ApiError::bad(format!(
                "node {node:?}: through `connect {s}`, a unit is submitted to {s} (localhost)"
            )));
        }
        if session.is_none() {
            remote::check_room(daemon)?;
        }
        if node == me {
            remote::check_local(daemon, &worktype, &params)?;
            Ok(daemon.work.limits().max_payload)
        } else {
            member_addr(daemon, &node)?;
            Ok(remote::max_remote_payload(daemon))
        }
    })();
    let limit = match checked {
        Ok(l) => l,
        // Nothing of the stream was taken: the connection goes on.
        Err(e) => return write_and_go_on(wr, &error_line(&e.message)).await,
    };
    let id = work::new_unit_id();
    let created = format!("Work unit created with ID {id}. Send stdin data and EOF.\n");
    if wr.write_all(created.as_bytes()).await.is_err() {
        return Flow::Close;
    }
    let mut payload = Vec::new();
    let read = tokio::time::timeout(
        PAYLOAD_TIMEOUT,
        rd.take(limit + 1).read_to_end(&mut payload),
    )
    .await;
    let failed = match read {
        Err(_) => Some(format!("payload: no EOF within {PAYLOAD_TIMEOUT:?}")),
        Ok(Err(e)) => Some(format!("payload: {e}")),
        Ok(Ok(_)) if payload.len() as u64 > limit => Some(format!(
            "payload: more than {limit} bytes, the limit for a unit on {node}"
        )),
        Ok(Ok(_)) => None,
    };
    if let Some(why) = failed {
        return write_or_close(wr, &error_line(&why)).await;
    }
    let ask = remote::Ask {
        id: id.clone(),
        node,
        worktype,
        params,
        ttl_ms,
        record_here: session.is_none(),
    };
    let line = match remote::submit(daemon, ask, payload).await {
        Ok(_) => json_line(&WorkStarted {
            result: "Job Started".into(),
            unitid: id,
        }),
        Err(e) => error_line(&e.message),
    };
    write_or_close(wr, &line).await
}

/// `work results` in a session connected to `node`: the unit runs there.
async fn results_from<W: AsyncWrite + Unpin>(
    daemon: &Arc<Daemon>,
    node: &str,
    id: &str,
    startpos: u64,
    wr: &mut W,
) -> Flow {
    if let Err(e) = remote::check_runs_on(daemon, node, id).await {
        return write_and_go_on(wr, &error_line(&e.message)).await;
    }
    let head = format!("Streaming results for work unit {id}\n");
    if wr.write_all(head.as_bytes()).await.is_err() {
        return Flow::Close;
    }
    if let Err(e) = remote::stream_from(daemon, Some(node), id, startpos, wr).await {
        tracing::warn!(unit = %id, %node, "results stream ended: {e}");
    }
    let _ = wr.flush().await;
    Flow::Close
}

/// `work results`: Receptor's "Streaming results" line, then stdout from `startpos` until
/// the unit is over, then the connection closes.
async fn results<W: AsyncWrite + Unpin>(
    daemon: &Arc<Daemon>,
    id: &str,
    startpos: u64,
    wr: &mut W,
) -> Flow {
    if let Err(e) = remote::check_known(daemon, id) {
        return write_and_go_on(wr, &error_line(&e.message)).await;
    }
    let head = format!("Streaming results for work unit {id}\n");
    if wr.write_all(head.as_bytes()).await.is_err() {
        return Flow::Close;
    }
    if let Err(e) = remote::stream_results(daemon, id, startpos, wr).await {
        tracing::warn!(unit = %id, "results stream ended: {e}");
    }
    let _ = wr.flush().await;
    Flow::Close
}

/// `connect <node> control`: answers with that node's greeting, then relays every line to
/// its control service (`control_command`) until the client closes.
async fn connect<R, W>(daemon: &Arc<Daemon>, node: NodeRef, rd: &mut R, wr: &mut W) -> Flow
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let me = daemon.name();
    let node = node.resolve(&me);
    let greeting = if node == me {
        Ok(me.clone())
    } else {
        round_trip(daemon, &node).await.map(|(pong, _)| pong.node)
    };
    // Receptor's: "Connecting", then the other side's greeting.
    let line = match greeting {
        Ok(name) => format!("Connecting\n{}{name}\n", crate::control::GREETING),
        Err(e) => return write_and_go_on(wr, &error_line(&e.message)).await,
    };
    if wr.write_all(line.as_bytes()).await.is_err() || node == me {
        return Flow::Continue;
    }
    loop {
        let line = match crate::control::read_line(rd).await {
            crate::control::ReadLine::Line(l) if l.trim().is_empty() => continue,
            crate::control::ReadLine::Line(l) => l,
            crate::control::ReadLine::Closed => return Flow::Close,
            crate::control::ReadLine::TooLong => {
                let why = format!("line longer than {} bytes", crate::control::MAX_LINE);
                return write_or_close(wr, &error_line(&why)).await;
            }
            crate::control::ReadLine::NotText => {
                if let Flow::Close = write_and_go_on(wr, &error_line("the line is not UTF-8")).await
                {
                    return Flow::Close;
                }
                continue;
            }
        };
        if let Flow::Close = session_line(daemon, &node, line, rd, wr).await {
            return Flow::Close;
        }
    }
}

/// One line of a session connected to `node`: submit and results are served here against
/// `node`, the other commands are relayed to it.
async fn session_line<R, W>(
    daemon: &Arc<Daemon>,
    node: &str,
    line: String,
    rd: &mut R,
    wr: &mut W,
) -> Flow
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match crate::control::command::parse(&line) {
        Ok(crate::control::command::Line::Command(Command::WorkSubmit {
            node: n,
            worktype,
            ttl_ms,
            params,
        })) => {
            // A refusal before the payload keeps the session.
            return submit(daemon, (n, worktype, ttl_ms, params), rd, wr, Some(node)).await;
        }
        Ok(crate::control::command::Line::Command(Command::WorkResults { unitid, startpos })) => {
            return results_from(daemon, node, &unitid, startpos, wr).await;
        }
        _ => {}
    }
    let answer = match remote_command(daemon, node, &options::ControlLine { line }).await {
        Ok(v) => json_line(&v),
        Err(e) => error_line(&e.message),
    };
    write_and_go_on(wr, &answer).await
}

async fn remote_command(daemon: &Daemon, node: &str, req: &options::ControlLine) -> Result<Doc> {
    let addr = member_addr(daemon, node)?;
    let opts = crate::api::reply(req)?;
    daemon
        .peers
        .call_doc(
            &addr,
            "",
            Action::ControlCommand.as_str(),
            opts,
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| match e {
            crate::daemon::peers::PeerError::Failed {
                status, message, ..
            } => ApiError::new(status, message),
            other => ApiError::new(
                Status::Unavailable,
                format!("{node} is unreachable: {other}"),
            ),
        })
}

/// `control_command` from a peer: runs one relayed command here.
pub async fn relayed(daemon: &Arc<Daemon>, line: &str) -> Result<Doc> {
    use crate::control::command::Line;
    use crate::control::command::LineError;
    match crate::control::command::parse(line) {
        Ok(Line::Command(cmd)) => one_answer(daemon, cmd).await,
        Ok(Line::Api(_)) => Err(ApiError::bad(
            "agent API requests are not relayed by connect: send them to the node itself",
        )),
        Err(LineError::Api(e) | LineError::Command(e)) => Err(ApiError::bad(e)),
    }
}
