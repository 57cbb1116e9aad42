//! The node listener: one TCP port serving wire protocol v2 sessions.
//!
//! Connections are long-lived and carry many requests both ways. Each connection opens with
//! a hello (see [`crate::wire::session`]); then a reader opens the client's records in
//! order and a writer seals the answers, batching them. Requests run as separate tasks, so
//! a session pipelines: many requests in flight, responses in completion order, matched by
//! the `reqid` they echo. At most [`ListenerConfig::max_inflight`] requests run per
//! connection; past that the reader stops reading (TCP backpressure).
//!
//! # Limits (what a peer without the secret can cost)
//!
//! - Connections: at most [`ListenerConfig::max_conns`] in all and
//!   [`ListenerConfig::max_conns_per_addr`] per source IP; one over a cap is accepted and
//!   closed at once, counted, and logged at most once per 5 s (with the count held back).
//!   The global cap is lowered to the soft RLIMIT_NOFILE minus [`fdlimit::FD_RESERVE`] and
//!   a spare descriptor; when descriptors run out anyway, the accept loop closes the spare,
//!   accepts and drops one pending connection and reopens it, so the backlog drains.
//! - Handshakes: at most [`ListenerConfig::handshake_rate`] a second per source IP (each
//!   costs a Diffie-Hellman); past it a hello is refused before any crypto.
//! - Until the session is proven (its first record opened: a replayed hello is welcomed but
//!   proves nothing) a connection has [`ListenerConfig::handshake_timeout`] in all, its
//!   first frame may be at most [`MAX_HELLO_LEN`] bytes, at most
//!   [`MAX_EMPTY_BEFORE_HELLO`] empty packets come before it, and its buffers are charged
//!   to a budget shared by all such connections ([`ListenerConfig::unauth_budget`]); past
//!   it the connection is closed. Its writer task starts only with a first answer.
//! - A record is at most 65535 bytes (one Noise message), a message at most
//!   [`ListenerConfig::max_frame`]; once any byte of a frame has arrived, the whole frame
//!   must arrive within [`ListenerConfig::frame_timeout`].
//! - A proven session without a frame for [`ListenerConfig::idle_timeout`] is closed
//!   gracefully, unless requests of it are still running.
//!
//! # The hello, in order
//!
//! 1. framing: the length is checked before the body is read; a first frame longer than a
//!    hello is refused (a v1 frame is told that this node speaks v2). The empty packet
//!    calls [`Handler::dequeue_actions`].
//! 2. the handshake rate of the source IP.
//! 3. parsing: version, kind, mode, names (a v1 frame is a `version` refusal).
//! 4. blacklist: a blacklisted (sender, source address) pair is refused here, before any
//!    crypto.
//! 5. receiver: a hello naming another node is `misaddressed`.
//! 6. membership: a member session from a name outside `cluster.nodes` is `not_member`;
//!    a join session (empty cluster name in the key) is open to anyone, and serves `join`
//!    only.
//! 7. the Noise handshake with each secret of the keyring: failure is `auth`, and counts
//!    toward the blacklist of the pair. Success queues the welcome; the pair's count is
//!    reset when the session's first record opens.
//!
//! Refusals are answered with a clear refusal frame naming the reason (see
//! [`crate::wire::RefusalCode`]), then the connection is closed. Inside a session, a record
//! that does not open (forged, replayed, reordered, cut) closes it; a message that does
//! not decode is answered [`Status::BadPayload`] when its `reqid` is readable; a request
//! from a non-member session for anything but `join`, or from a member removed since the
//! session opened, is answered [`Status::Forbidden`]. Every refusal is counted in
//! [`Metrics`] by kind.
//!
//! The [`Listener`] holds the state that survives restarts (blacklist, metrics, keyring);
//! [`Listener::start`] binds a port and returns a [`ListenerHandle`] whose
//! [`ListenerHandle::shutdown`] closes the port and every connection. Start again, maybe on
//! another port, with the same `Listener`.

pub mod blacklist;
pub mod fdlimit;
mod limits;
pub mod metrics;

pub use blacklist::{Blacklist, BlacklistEntry, PairState, BLACKLIST_THRESHOLD};
pub use metrics::Metrics;

use limits::{Budget, Charge, Gate, HandshakeRate, Refusal, Slot, WarnLimit};
use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::wire::frame::MAX_RECORD;
use crate::wire::{
    accept, check_len, encode_refusal, parse_hello, read_body, read_len, Accepted, Body, Frame,
    Keyring, Message, Mode, Opener, Outgoing, RefusalCode, ReqId, Request, Response, Sealer,
    Status, WireError, DEFAULT_MAX_FRAME, DEFAULT_PORT, MAX_HELLO_LEN,
};

/// The only action accepted from a sender that is not in `cluster.nodes`.
pub const JOIN_ACTION: &str = "join";

/// A boxed, sendable future (what [`Handler::handle`] returns).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Size of the per-connection read and write buffers.
const IO_BUF: usize = 64 * 1024;
/// Response frames queued per connection before handler tasks wait.
const WRITE_QUEUE: usize = 1024;

/// Default of [`ListenerConfig::unauth_budget`]: 64 MiB.
pub const DEFAULT_UNAUTH_BUDGET: usize = 64 << 20;

/// Listener settings (`listener.*` in node.conf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Address to bind (`listener.addr`), an IP or a host name; `0.0.0.0` or `::` for all.
    pub addr: String,
    /// Port to bind (`listener.port`); 0 picks a free port (tests).
    pub port: u16,
    /// Largest message accepted from a session (`listener.max_frame`, default 16 MiB).
    pub max_frame: u32,
    /// Requests running at once per connection before the reader waits (default 1024).
    pub max_inflight: usize,
    /// Connections open at once (`listener.max_conns`, default 1024); lowered at start when
    /// the file-descriptor limit is smaller (see [`fdlimit::effective_cap`]).
    pub max_conns: usize,
    /// Connections open at once from one source IP (`listener.max_conns_per_addr`,
    /// default 64).
    pub max_conns_per_addr: usize,
    /// Handshakes accepted per second from one source IP, with a burst as large
    /// (`listener.handshake_rate`, default 50; 0 = no limit).
    pub handshake_rate: u32,
    /// Time a connection has to complete its handshake (`listener.handshake_timeout`,
    /// default 10 s).
    pub handshake_timeout: Duration,
    /// Time a frame has to arrive whole once its first byte has
    /// (`listener.frame_timeout`, default 10 s).
    pub frame_timeout: Duration,
    /// Time without any frame after which an authenticated connection is closed, unless
    /// requests of it are running (`listener.idle_timeout`, default 300 s).
    pub idle_timeout: Duration,
    /// How long a blacklist entry lives after its last invalid frame
    /// (`listener.blacklist_ttl`, default 10 minutes).
    pub blacklist_ttl: Duration,
    /// Bytes the frame buffers of all not-yet-authenticated connections may hold together
    /// (default [`DEFAULT_UNAUTH_BUDGET`]; not a node.conf parameter).
    pub unauth_budget: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            addr: "0.0.0.0".into(),
            port: DEFAULT_PORT,
            max_frame: DEFAULT_MAX_FRAME,
            max_inflight: 1024,
            max_conns: 1024,
            max_conns_per_addr: 64,
            handshake_rate: 50,
            handshake_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            blacklist_ttl: blacklist::DEFAULT_TTL,
            unauth_budget: DEFAULT_UNAUTH_BUDGET,
        }
    }
}

/// Who sent a request, handed to the [`Handler`] with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestCtx {
    /// Sender nodename (authenticated: it is bound into the session's handshake).
    pub sender: String,
    /// Source address and port of the connection.
    pub peer: SocketAddr,
    /// The request id the response will echo.
    pub reqid: ReqId,
    /// Whether the sender was in `cluster.nodes` (false only for `join`).
    pub member: bool,
}

/// What the daemon plugs into the listener to execute requests.
pub trait Handler: Send + Sync + 'static {
    /// Executes one valid request; the returned response is sent back with the same reqid.
    fn handle(&self, ctx: RequestCtx, req: Request) -> BoxFuture<Response>;

    /// Called on an empty packet ("dequeue actions"); must not block (signal a task).
    fn dequeue_actions(&self) {}
}

/// Which nodenames are in `cluster.nodes`.
pub trait Membership: Send + Sync + 'static {
    /// Whether `nodename` is a cluster member.
    fn is_member(&self, nodename: &str) -> bool;
}

impl Membership for RwLock<BTreeSet<String>> {
    fn is_member(&self, nodename: &str) -> bool {
        self.read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(nodename)
    }
}

impl Membership for BTreeSet<String> {
    fn is_member(&self, nodename: &str) -> bool {
        self.contains(nodename)
    }
}

/// Listener state kept across restarts; cheap to clone.
#[derive(Clone)]
pub struct Listener {
    shared: Arc<Shared>,
}

struct Shared {
    nodename: String,
    keyring: RwLock<Keyring>,
    members: Arc<dyn Membership>,
    handler: Arc<dyn Handler>,
    blacklist: Blacklist,
    metrics: Metrics,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("nodename", &self.shared.nodename)
            .finish_non_exhaustive()
    }
}

/// A running listener: its bound address, and the way to stop it.
///
/// Dropping the handle also stops the listener.
#[derive(Debug)]
pub struct ListenerHandle {
    local_addr: SocketAddr,
    budget: Arc<Budget>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ListenerHandle {
    /// Bytes the frame buffers of unauthenticated connections hold now.
    pub fn unauth_buffered(&self) -> usize {
        self.budget.used()
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether the accept loop has ended.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Closes the port and every connection, and waits until they are closed.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Listener {
    /// Listener state for node `nodename` (the name its welcome gives).
    pub fn new(
        nodename: impl Into<String>,
        keyring: Keyring,
        members: Arc<dyn Membership>,
        handler: Arc<dyn Handler>,
    ) -> Listener {
        Listener {
            shared: Arc::new(Shared {
                nodename: nodename.into(),
                keyring: RwLock::new(keyring),
                members,
                handler,
                blacklist: Blacklist::default(),
                metrics: Metrics::default(),
            }),
        }
    }

    /// Replaces the keyring (cluster secret or name change); applies to the next handshake
    /// (sessions already open keep their keys until they close).
    pub fn set_keyring(&self, keyring: Keyring) {
        *self
            .shared
            .keyring
            .write()
            .unwrap_or_else(|p| p.into_inner()) = keyring;
    }

    /// The blacklist (`blacklist_status` and `blacklist_clear` use it).
    pub fn blacklist(&self) -> &Blacklist {
        &self.shared.blacklist
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The responder nodename.
    pub fn nodename(&self) -> &str {
        &self.shared.nodename
    }

    /// Binds `config.addr:config.port` and serves until the handle is shut down or dropped.
    pub async fn start(&self, config: &ListenerConfig) -> io::Result<ListenerHandle> {
        let tcp = TcpListener::bind((config.addr.as_str(), config.port)).await?;
        let local_addr = tcp.local_addr()?;
        self.shared.blacklist.set_ttl(config.blacklist_ttl);
        let max_conns = conn_cap(config.max_conns);
        let run = Arc::new(Run {
            gate: Gate::new(max_conns, config.max_conns_per_addr),
            rate: HandshakeRate::new(config.handshake_rate),
            budget: Budget::new(config.unauth_budget),
            limits: ConnLimits {
                max_frame: config.max_frame,
                max_inflight: config.max_inflight.max(1),
                handshake_timeout: config.handshake_timeout,
                frame_timeout: config.frame_timeout,
                idle_timeout: config.idle_timeout,
            },
            max_conns_per_addr: config.max_conns_per_addr,
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let budget = run.budget.clone();
        let task = tokio::spawn(accept_loop(self.shared.clone(), tcp, stop_rx, run));
        tracing::info!(addr = %local_addr, max_conns, "listener started");
        Ok(ListenerHandle {
            local_addr,
            budget,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

/// `max_conns`, lowered when the file-descriptor limit would not hold that many.
fn conn_cap(max_conns: usize) -> usize {
    let Ok(limit) = fdlimit::nofile() else {
        return max_conns;
    };
    let cap = fdlimit::effective_cap(max_conns, limit.soft);
    if cap < max_conns {
        tracing::warn!(
            "listener.max_conns {max_conns} lowered to {cap}: the file-descriptor limit is {} and {} descriptors are kept for the rest of the daemon",
            limit.soft,
            fdlimit::FD_RESERVE + 1
        );
    }
    cap
}

/// Per-connection limits of one listener run.
#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    max_frame: u32,
    max_inflight: usize,
    handshake_timeout: Duration,
    frame_timeout: Duration,
    idle_timeout: Duration,
}

/// What the connections of one run of the accept loop share.
struct Run {
    gate: Arc<Gate>,
    rate: HandshakeRate,
    budget: Arc<Budget>,
    limits: ConnLimits,
    max_conns_per_addr: usize,
}

/// At most one warning per this long for each kind of refused connection.
const WARN_EVERY: Duration = Duration::from_secs(5);

async fn accept_loop(
    shared: Arc<Shared>,
    tcp: TcpListener,
    mut stop: oneshot::Receiver<()>,
    run: Arc<Run>,
) {
    let mut conns = JoinSet::new();
    let mut spare = fdlimit::open_spare();
    let mut cap_warn = WarnLimit::new(WARN_EVERY);
    let mut fd_warn = WarnLimit::new(WARN_EVERY);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    admit(&shared, &run, &mut conns, &mut cap_warn, stream, peer);
                }
                Err(e) if fdlimit::is_fd_exhaustion(&e) => {
                    shed(&shared, &tcp, &mut spare, &mut fd_warn).await;
                }
                Err(e) => {
                    // Transient accept errors (ECONNABORTED, ENOBUFS): back off, do not spin.
                    tracing::warn!(error = %e, "listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(tcp);
    conns.shutdown().await;
    tracing::info!("listener stopped");
}

/// Serves an accepted connection if the caps allow it, else closes it at once.
fn admit(
    shared: &Arc<Shared>,
    run: &Arc<Run>,
    conns: &mut JoinSet<()>,
    warn: &mut WarnLimit,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let ip = peer.ip().to_canonical();
    match run.gate.admit(ip) {
        Ok(slot) => {
            conns.spawn(serve_conn(shared.clone(), run.clone(), stream, peer, slot));
        }
        Err(why) => {
            drop(stream);
            Metrics::incr(&shared.metrics.refused_conn_cap);
            if let Some(suppressed) = warn.hit(std::time::Instant::now()) {
                let cap = match why {
                    Refusal::Global => ("listener.max_conns", run.gate.max()),
                    Refusal::PerAddr => ("listener.max_conns_per_addr", run.max_conns_per_addr),
                };
                tracing::warn!(
                    %ip,
                    suppressed,
                    "connection refused: {} ({}) reached; {suppressed} more refusals not logged since the last warning",
                    cap.0,
                    cap.1
                );
            }
        }
    }
}

/// Out of descriptors with connections waiting in the backlog: gives back the spare
/// descriptor, accepts one pending connection and closes it, and takes the spare again.
/// Without this the backlog stays full and every peer's connect hangs.
async fn shed(
    shared: &Shared,
    tcp: &TcpListener,
    spare: &mut Option<std::fs::File>,
    warn: &mut WarnLimit,
) {
    if let Some(suppressed) = warn.hit(std::time::Instant::now()) {
        tracing::warn!(
            suppressed,
            "out of file descriptors: shedding new connections; {suppressed} more not logged"
        );
    }
    if spare.take().is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    } else if let Ok(Ok((stream, _))) =
        tokio::time::timeout(Duration::from_millis(10), tcp.accept()).await
    {
        drop(stream);
        Metrics::incr(&shared.metrics.refused_no_fd);
    }
    *spare = fdlimit::open_spare();
}

/// Aborts a task when dropped (the writer of a connection whose reader was aborted).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Decrements the open-connections gauge when the connection ends, however it ends.
struct OpenGauge<'a>(&'a Metrics);

impl Drop for OpenGauge<'_> {
    fn drop(&mut self) {
        self.0
            .open_connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How a connection's frame loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// A v1 client's first frame: tell it this node speaks v2, then close.
    V1,
    /// Stop reading; answer the requests running, then close.
    Graceful,
    /// Close at once.
    Abort,
}

async fn serve_conn(
    shared: Arc<Shared>,
    run: Arc<Run>,
    stream: TcpStream,
    peer: SocketAddr,
    _slot: Slot,
) {
    let m = &shared.metrics;
    Metrics::incr(&m.connections);
    Metrics::incr(&m.open_connections);
    let _gauge = OpenGauge(m);
    let _ = stream.set_nodelay(true);
    // Answers stuck behind a partition free their connection slot when the link stays
    // silent, as the client's side does (`ClientOptions::stall_timeout`).
    let _ = socket2::SockRef::from(&stream)
        .set_tcp_user_timeout(Some(crate::wire::client::DEFAULT_STALL_TIMEOUT));
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(IO_BUF, rd);
    let mut conn = Conn {
        inflight: Arc::new(Semaphore::new(run.limits.max_inflight)),
        shared: shared.clone(),
        run,
        peer,
        wr: Some(wr),
        tx: None,
        writer: None,
    };
    let deadline = Instant::now() + conn.run.limits.handshake_timeout;
    let end = match conn.handshake(&mut rd, deadline).await {
        Ok((session, opener)) => conn.records(&mut rd, &session, opener, deadline).await,
        Err(end) => end,
    };
    drop(rd);
    conn.finish(end == End::Graceful).await;
}

/// One connection's state while its frames are read.
struct Conn {
    shared: Arc<Shared>,
    run: Arc<Run>,
    peer: SocketAddr,
    /// The write half until the writer task is started (with the first answer).
    wr: Option<OwnedWriteHalf>,
    tx: Option<mpsc::Sender<Outgoing>>,
    writer: Option<AbortOnDrop>,
    inflight: Arc<Semaphore>,
}

/// Who opened a session.
#[derive(Debug, Clone)]
struct Session {
    sender: String,
    /// A member session (else a joiner's: only `join` is served).
    member: bool,
}

impl Conn {
    /// Reads frames until a hello and answers it: `Ok` with the session and its opener
    /// once the welcome is queued, `Err` when the connection is to close. Empty packets
    /// before the hello are served. All of it within `handshake_timeout`.
    async fn handshake(
        &mut self,
        rd: &mut BufReader<OwnedReadHalf>,
        deadline: Instant,
    ) -> Result<(Session, Opener), End> {
        let m = &self.shared.metrics;
        let mut empties = 0;
        loop {
            let frame = match self.next_frame(rd, Phase::Hello, deadline).await {
                Ok(Some((frame, _charge))) => frame,
                Ok(None) => return Err(End::Graceful),
                Err(End::V1) => {
                    let refusal = encode_refusal(RefusalCode::Version, V1_REFUSAL);
                    let _ = self.sender(None).send(Outgoing::Clear(refusal)).await;
                    return Err(End::Graceful);
                }
                Err(end) => return Err(end),
            };
            Metrics::incr(&m.frames);
            if frame.is_empty() {
                empties += 1;
                if empties > MAX_EMPTY_BEFORE_HELLO {
                    tracing::debug!(peer = %self.peer, "closing connection: empty packets and no hello");
                    return Err(End::Abort);
                }
                Metrics::incr(&m.empty_packets);
                self.shared.handler.dequeue_actions();
                continue;
            }
            if !self
                .run
                .rate
                .allow(self.peer.ip(), std::time::Instant::now())
            {
                Metrics::incr(&m.refused_handshake_rate);
                let why = "too many handshakes from this address; retry in a second (listener.handshake_rate)";
                let _ = self
                    .sender(None)
                    .send(Outgoing::Clear(encode_refusal(
                        RefusalCode::RateLimited,
                        why,
                    )))
                    .await;
                return Err(End::Graceful);
            }
            return match self.shared.answer_hello(frame.body(), self.peer) {
                Ok((session, acc)) => {
                    let tx = self.sender(Some(acc.sealer));
                    if tx.send(Outgoing::Clear(acc.welcome)).await.is_err() {
                        return Err(End::Abort);
                    }
                    Ok((session, acc.opener))
                }
                Err(Some(refusal)) => {
                    let _ = self.sender(None).send(Outgoing::Clear(refusal)).await;
                    Err(End::Graceful)
                }
                Err(None) => Err(End::Abort),
            };
        }
    }

    /// Reads the records of an open session and runs its requests, until the connection
    /// ends.
    ///
    /// A hello proves nothing (anyone can replay a recorded one): until its first record
    /// opens, the session keeps the handshake deadline and the unauthenticated budget, and
    /// the sender's blacklist count is not reset.
    async fn records(
        &mut self,
        rd: &mut BufReader<OwnedReadHalf>,
        session: &Session,
        mut opener: Opener,
        handshake: Instant,
    ) -> End {
        let shared = self.shared.clone();
        let m = &shared.metrics;
        let mut phase = Phase::Unproven;
        loop {
            let frame = match self.next_frame(rd, phase, handshake).await {
                Ok(Some((f, _))) => f,
                Ok(None) => return End::Graceful,
                Err(end) => return end,
            };
            Metrics::incr(&m.frames);
            if frame.is_empty() {
                Metrics::incr(&m.empty_packets);
                self.shared.handler.dequeue_actions();
                continue;
            }
            let opened = opener.open(frame.body(), self.run.limits.max_frame);
            if opened.is_ok() && phase == Phase::Unproven {
                phase = Phase::Proven;
                Metrics::incr(&m.sessions);
                shared
                    .blacklist
                    .record_valid(&session.sender, self.peer.ip());
            }
            let plain = match opened {
                Ok(None) => continue,
                Ok(Some(p)) => p,
                Err(e) => {
                    // Only the session's peer holds its key: a record that does not open is
                    // an injected, replayed or cut one, and nothing after it can be trusted.
                    m.reject(e.kind());
                    tracing::warn!(sender = %session.sender, peer = %self.peer, error = %e, "closing session: bad record");
                    return End::Graceful;
                }
            };
            let (ctx, req) = match self.shared.request(plain, session, self.peer) {
                Ok(r) => r,
                Err(Some((reqid, resp))) => {
                    if self.reply(reqid, resp).await.is_err() {
                        return End::Abort;
                    }
                    continue;
                }
                Err(None) => continue,
            };
            if !self.dispatch(ctx, req).await {
                return End::Abort;
            }
        }
    }

    async fn reply(&mut self, reqid: ReqId, resp: Response) -> Result<(), ()> {
        let plain = self.shared.encode_response(reqid, resp);
        Metrics::incr(&self.shared.metrics.responses);
        self.sender(None)
            .send(Outgoing::Message(plain))
            .await
            .map_err(|_| ())
    }

    /// Waits for the next frame (until `handshake` before the session, for `idle_timeout`
    /// after), then reads it whole within `frame_timeout`.
    async fn next_frame(
        &self,
        rd: &mut BufReader<OwnedReadHalf>,
        phase: Phase,
        handshake: Instant,
    ) -> Result<Option<ReadFrame>, End> {
        let authed = phase == Phase::Proven;
        let limits = &self.run.limits;
        if !self.wait_for_data(rd, authed, handshake).await? {
            return Ok(None);
        }
        let mut frame_deadline = Instant::now() + limits.frame_timeout;
        if !authed {
            frame_deadline = frame_deadline.min(handshake);
        }
        match tokio::time::timeout_at(frame_deadline, self.read_one(rd, phase)).await {
            Ok(r) => r.map(Some),
            Err(_) => {
                let m = &self.shared.metrics;
                if authed || frame_deadline < handshake {
                    Metrics::incr(&m.closed_frame_timeout);
                    tracing::debug!(peer = %self.peer, "closing connection: frame_timeout");
                } else {
                    Metrics::incr(&m.closed_handshake_timeout);
                    tracing::debug!(peer = %self.peer, "closing connection: handshake_timeout");
                }
                Err(End::Abort)
            }
        }
    }

    /// Waits until a byte is buffered (`true`) or the stream ended (`false`). Before the
    /// session the wait ends at `handshake`; after it, at `idle_timeout` without a frame,
    /// unless requests are still running (their answers are not idleness).
    async fn wait_for_data(
        &self,
        rd: &mut BufReader<OwnedReadHalf>,
        authed: bool,
        handshake: Instant,
    ) -> Result<bool, End> {
        let m = &self.shared.metrics;
        loop {
            let until = if authed {
                Instant::now() + self.run.limits.idle_timeout
            } else {
                handshake
            };
            // fill_buf keeps what it read in the buffer, so timing it out loses nothing.
            match tokio::time::timeout_at(until, rd.fill_buf()).await {
                Ok(Ok(buf)) => return Ok(!buf.is_empty()),
                Ok(Err(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "connection failed");
                    m.reject(crate::wire::ErrorKind::Io);
                    return Err(End::Abort);
                }
                Err(_) if !authed => {
                    Metrics::incr(&m.closed_handshake_timeout);
                    tracing::debug!(peer = %self.peer, "closing connection: handshake_timeout");
                    return Err(End::Abort);
                }
                Err(_) if self.busy() => continue,
                Err(_) => {
                    Metrics::incr(&m.closed_idle_timeout);
                    tracing::debug!(peer = %self.peer, "closing connection: idle_timeout");
                    return Err(End::Graceful);
                }
            }
        }
    }

    /// Whether requests of this connection are running.
    fn busy(&self) -> bool {
        self.inflight.available_permits() < self.run.limits.max_inflight
    }

    /// Reads one frame whose first byte is buffered: a hello (at most [`MAX_HELLO_LEN`]
    /// bytes) or a record (at most [`MAX_RECORD`]), its buffer charged to the run's budget
    /// until the session is proven.
    async fn read_one(
        &self,
        rd: &mut BufReader<OwnedReadHalf>,
        phase: Phase,
    ) -> Result<ReadFrame, End> {
        let m = &self.shared.metrics;
        let fail = |e: WireError| {
            if matches!(e, WireError::Io(_)) {
                tracing::debug!(peer = %self.peer, error = %e, "connection failed");
            } else {
                tracing::debug!(peer = %self.peer, error = %e, "closing connection");
            }
            m.reject(e.kind());
            End::Abort
        };
        let Some(len) = read_len(rd).await.map_err(fail)? else {
            return Err(End::Graceful);
        };
        if phase != Phase::Hello {
            check_len(len, MAX_RECORD as u32).map_err(fail)?;
        }
        if phase == Phase::Proven {
            let frame = read_body(rd, len, |_| Ok(())).await.map_err(fail)?;
            return Ok((frame, None));
        }
        if phase == Phase::Hello && len as usize > MAX_HELLO_LEN {
            // A v1 frame is longer than any hello: read its version byte to say so.
            return Err(self.refuse_long_first_frame(rd, len).await);
        }
        let mut charge = Charge::new(&self.run.budget);
        match read_body(rd, len, |n| charge.grow(n)).await {
            Ok(frame) => Ok((frame, Some(charge))),
            Err(_) if charge.refused() => {
                Metrics::incr(&m.closed_unauth_budget);
                tracing::warn!(peer = %self.peer, "closing unauthenticated connection: buffer budget spent");
                Err(End::Abort)
            }
            Err(e) => Err(fail(e)),
        }
    }

    /// A first frame longer than a hello: a v1 client (version byte 1) is to be told that
    /// this node speaks v2 ([`End::V1`]); anything else is closed as oversize.
    async fn refuse_long_first_frame(&self, rd: &mut BufReader<OwnedReadHalf>, len: u32) -> End {
        let m = &self.shared.metrics;
        // A v1 client writes a frame at once: its version byte is there or about to be.
        // A peer that sent only a length is not waited for.
        let first = match rd.buffer().first() {
            Some(b) => Some(*b),
            None => match tokio::time::timeout(Duration::from_millis(100), rd.fill_buf()).await {
                Ok(Ok(buf)) => buf.first().copied(),
                _ => None,
            },
        };
        if first == Some(1) {
            m.reject(crate::wire::ErrorKind::BadVersion);
            return End::V1;
        }
        m.reject(crate::wire::ErrorKind::Oversize);
        tracing::debug!(peer = %self.peer, len, "closing connection: first frame larger than a hello");
        End::Abort
    }

    /// The sender of the answer queue; starts the writer task on first use, with the
    /// session's sealer when there is one.
    fn sender(&mut self, sealer: Option<Sealer>) -> mpsc::Sender<Outgoing> {
        if let Some(tx) = &self.tx {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel::<Outgoing>(WRITE_QUEUE);
        let wr = self
            .wr
            .take()
            .expect("the write half is there until the writer starts");
        self.writer = Some(AbortOnDrop(tokio::spawn(conn_writer(rx, wr, sealer))));
        self.tx = Some(tx.clone());
        tx
    }

    /// Runs a valid request as its own task; `false` if the connection is closing.
    async fn dispatch(&mut self, ctx: RequestCtx, req: Request) -> bool {
        let Ok(permit) = self.inflight.clone().acquire_owned().await else {
            return false;
        };
        Metrics::incr(&self.shared.metrics.requests);
        let shared = self.shared.clone();
        let tx = self.sender(None);
        tokio::spawn(async move {
            let reqid = ctx.reqid.clone();
            let mut guard = PanicGuard {
                shared: &shared,
                tx: &tx,
                reqid: Some(reqid.clone()),
            };
            let resp = shared.handler.handle(ctx, req).await;
            guard.reqid = None;
            let plain = shared.encode_response(reqid, resp);
            Metrics::incr(&shared.metrics.responses);
            let _ = tx.send(Outgoing::Message(plain)).await;
            drop(permit);
        });
        true
    }

    /// Closes the connection: `graceful` lets the answers of running requests go out
    /// first (the writer closes the socket when the last one is sent); otherwise dropping
    /// the writer aborts it and closes at once.
    async fn finish(mut self, graceful: bool) {
        self.tx = None;
        if let (true, Some(writer)) = (graceful, self.writer.as_mut()) {
            let _ = (&mut writer.0).await;
        }
    }
}

/// A frame read, with what it holds of the unauthenticated budget.
type ReadFrame = (Frame, Option<Charge>);

/// Where a connection is: what its next frame may be and which limits apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the hello: empty packets or a hello, within the handshake deadline.
    Hello,
    /// Welcomed, but no record of the client has opened yet: a replayed hello gets this
    /// far. Records, still within the handshake deadline and the unauthenticated budget.
    Unproven,
    /// A record opened: the peer holds the session keys. Idle timeout, no budget.
    Proven,
}

/// Empty packets a connection may send before its hello.
const MAX_EMPTY_BEFORE_HELLO: u32 = 64;

/// What a v1 client is told.
const V1_REFUSAL: &str = "om wire protocol v1 is not spoken here: this node speaks v2 only (a Noise handshake first; see docs/PROTOCOL.md)";

/// Answers `INTERNAL` if a handler panics before producing its response.
struct PanicGuard<'a> {
    shared: &'a Shared,
    tx: &'a mpsc::Sender<Outgoing>,
    reqid: Option<ReqId>,
}

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if let (Some(reqid), true) = (self.reqid.take(), std::thread::panicking()) {
            let resp = Response::err(Status::Internal, "request handler panicked");
            let plain = self.shared.encode_response(reqid, resp);
            Metrics::incr(&self.shared.metrics.responses);
            let _ = self.tx.try_send(Outgoing::Message(plain));
        }
    }
}

async fn conn_writer(
    mut rx: mpsc::Receiver<Outgoing>,
    wr: OwnedWriteHalf,
    mut sealer: Option<Sealer>,
) {
    let mut w = BufWriter::with_capacity(IO_BUF, wr);
    let mut buf = Vec::with_capacity(IO_BUF);
    while let Some(out) = rx.recv().await {
        buf.clear();
        if out.write_into(sealer.as_mut(), &mut buf).is_err() {
            return;
        }
        while buf.len() < IO_BUF {
            let Ok(out) = rx.try_recv() else { break };
            if out.write_into(sealer.as_mut(), &mut buf).is_err() {
                return;
            }
        }
        if w.write_all(&buf).await.is_err() {
            return;
        }
        if rx.is_empty() && w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

impl Shared {
    fn keyring(&self) -> Keyring {
        self.keyring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn encode_response(&self, reqid: ReqId, resp: Response) -> Vec<u8> {
        match Message::response(reqid.clone(), resp).encode() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(%reqid, error = %e, "cannot encode response");
                let resp = Response::err(Status::Internal, format!("cannot encode response: {e}"));
                Message::response(reqid, resp)
                    .encode()
                    .expect("a small error response always encodes")
            }
        }
    }

    /// Counts a refusal that can be blamed on a (sender, address) pair.
    fn invalid(&self, sender: &str, ip: IpAddr, e: &WireError) {
        self.metrics.reject(e.kind());
        tracing::debug!(sender, %ip, error = %e, "invalid hello");
        let member = self.members.is_member(sender);
        if self.blacklist.record_invalid(sender, ip, member) {
            Metrics::incr(&self.metrics.blacklisted);
            tracing::warn!(
                sender,
                %ip,
                "blacklisted after {BLACKLIST_THRESHOLD} consecutive invalid handshakes; its new \
                 connections are refused until the entry expires or `om node daemon \
                 blacklist clear` is run on {}",
                self.nodename
            );
        }
    }

    /// Checks a hello and runs the node's half of the handshake: the session, or the
    /// refusal frame to send (`None`: close without a word).
    fn answer_hello(
        &self,
        body: &[u8],
        peer: SocketAddr,
    ) -> Result<(Session, Accepted), Option<Vec<u8>>> {
        let ip = peer.ip();
        let refuse = |code, reason: String| Some(encode_refusal(code, &reason));
        let hello = match parse_hello(body) {
            Ok(h) => h,
            Err(WireError::BadVersion(v)) => {
                self.metrics.reject(crate::wire::ErrorKind::BadVersion);
                let why = if v == 1 {
                    V1_REFUSAL.to_string()
                } else {
                    format!("unknown protocol version {v}: this node speaks v2")
                };
                return Err(refuse(RefusalCode::Version, why));
            }
            Err(e) => {
                self.metrics.reject(e.kind());
                return Err(refuse(
                    RefusalCode::Malformed,
                    format!("malformed hello: {e}"),
                ));
            }
        };
        let sender = hello.sender;
        let member = self.members.is_member(sender);
        if self.blacklist.check_and_count_drop(sender, ip, member) {
            Metrics::incr(&self.metrics.dropped_blacklisted);
            tracing::debug!(sender, %ip, "refused a blacklisted sender");
            return Err(refuse(RefusalCode::Blacklisted, format!(
                "{sender} from {ip} is blacklisted on {} after {BLACKLIST_THRESHOLD} invalid handshakes; \
                 the entry expires, or run `om node daemon blacklist clear` on {}",
                self.nodename, self.nodename
            )));
        }
        if !hello.receiver.is_empty() && hello.receiver != self.nodename {
            self.metrics.reject(crate::wire::ErrorKind::Misaddressed);
            return Err(refuse(
                RefusalCode::Misaddressed,
                format!(
                    "this is node {:?}, not {:?}: the address book that sent you here is stale",
                    self.nodename, hello.receiver
                ),
            ));
        }
        let keyring = match hello.mode {
            Mode::Member if !member => {
                self.metrics.reject(crate::wire::ErrorKind::UnknownSender);
                return Err(refuse(
                    RefusalCode::NotMember,
                    format!(
                    "{sender:?} is not in cluster.nodes of {}: a node outside the cluster may only \
                     open a join session (om node daemon join)",
                    self.nodename
                ),
                ));
            }
            Mode::Member => self.keyring(),
            Mode::Join => self.keyring().joining(),
        };
        Metrics::incr(&self.metrics.decrypt_attempts);
        match accept(&keyring, &hello, &self.nodename) {
            Ok(acc) => {
                let session = Session {
                    sender: sender.to_owned(),
                    member: hello.mode == Mode::Member,
                };
                Ok((session, acc))
            }
            Err(e) => {
                self.invalid(sender, ip, &e);
                Err(refuse(
                    RefusalCode::Auth,
                    format!(
                        "the handshake did not authenticate on {}: the cluster secret{} differs",
                        self.nodename,
                        if hello.mode == Mode::Member {
                            " or the cluster name"
                        } else {
                            ""
                        }
                    ),
                ))
            }
        }
    }

    /// Decodes a session's message into a request to run, or the answer to give instead
    /// (`None`: no answer, the reqid was unreadable or it was not a request).
    #[allow(clippy::type_complexity)]
    fn request(
        &self,
        plain: Vec<u8>,
        session: &Session,
        peer: SocketAddr,
    ) -> Result<(RequestCtx, Request), Option<(ReqId, Response)>> {
        let msg = match Message::decode(&plain) {
            Ok(m) => m,
            Err(u) => {
                self.metrics.reject(u.error.kind());
                tracing::debug!(sender = %session.sender, error = %u.error, "undecodable message");
                return Err(u
                    .reqid
                    .map(|id| (id, Response::err(Status::BadPayload, u.error.to_string()))));
            }
        };
        let req = match msg.body {
            Body::Request(r) => r,
            Body::Response(_) => {
                self.metrics.reject(crate::wire::ErrorKind::BadPayload);
                return Err(None);
            }
        };
        // Membership is looked up per request: a member removed while its session is open
        // keeps only what a non-member may ask.
        let member = session.member && self.members.is_member(&session.sender);
        if !member && req.action != JOIN_ACTION {
            let e = WireError::UnknownSender(session.sender.clone());
            self.metrics.reject(e.kind());
            return Err(Some((
                msg.reqid,
                Response::err(Status::Forbidden, e.to_string()),
            )));
        }
        let ctx = RequestCtx {
            sender: session.sender.clone(),
            peer,
            reqid: msg.reqid,
            member,
        };
        Ok((ctx, req))
    }
}
