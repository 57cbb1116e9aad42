//! Client side of wire protocol v2: one long-lived, pipelined session to one node.
//!
//! A [`Client`] is a cheap, cloneable handle. Every request gets a fresh `reqid`; requests
//! from any number of tasks share the connection, a writer task coalesces their frames,
//! and a reader task hands each response to the waiting request by `reqid`, so responses
//! may come back in any order. No lock is held across an await on the request path (a
//! short mutex guards the pending map; an async mutex serializes only reconnects).
//!
//! When the connection breaks, the requests waiting on it fail with
//! [`ClientError::Closed`] and the next request reconnects. Requests are never retried
//! behind the caller's back, because an action may not be idempotent.
//!
//! A node closes a connection that sent no frame for its `listener.idle_timeout` (default
//! 300 s). A request sent just as that close happens would be written and lost, so the
//! client does not reuse a connection it sent nothing on for
//! [`ClientOptions::idle_reconnect`] (default 150 s, half the node's default) and has no
//! request running on: it connects anew instead, well before the node's timer can fire.
//!
//! Each connection opens with the Noise handshake of [`super::session`] (within the connect
//! timeout); a node's refusal is [`ClientError::Refused`], with the node's reason. The
//! writer task seals messages in the order it writes them (record nonces count), and the
//! reader opens them in the order they arrive; a record that does not open ends the
//! connection.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use super::error::WireError;
use super::frame::{
    parse_answer, HelloAnswer, Refusal, RefusalCode, DEFAULT_MAX_FRAME, MAX_RECORD,
};
use super::io::{read_frame, EMPTY_PACKET};
use super::keyring::Keyring;
use super::message::{Body, Doc, Message, ReqId, Request, Response};
use super::session::{Initiator, Opener, Outgoing, Sealer};

/// Frames queued for the writer task before `request` waits (backpressure).
const WRITE_QUEUE: usize = 1024;
/// Size of the socket read and write buffers.
const IO_BUF: usize = 64 * 1024;

/// Why a request did not get a response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be established.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The node address.
        addr: String,
        /// The underlying error.
        source: io::Error,
    },
    /// No response within the timeout (connecting included).
    #[error("request `{action}` to {addr} timed out after {after:?}")]
    Timeout {
        /// The node address.
        addr: String,
        /// The action requested.
        action: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The connection broke or was refused before the response arrived.
    #[error("connection to {addr} lost before `{action}` was answered: {reason}")]
    Closed {
        /// The node address.
        addr: String,
        /// The action requested.
        action: String,
        /// What broke the connection.
        reason: String,
    },
    /// The node refused the session (wrong secret or cluster, blacklisted, not a member, ...).
    #[error("{addr} refused the session: {}", .refusal.reason)]
    Refused {
        /// The node address.
        addr: String,
        /// The node's refusal.
        refusal: Refusal,
    },
    /// The handshake failed on this side (a welcome that does not authenticate, another
    /// node than the one asked for answered).
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The node address.
        addr: String,
        /// What failed.
        source: WireError,
    },
    /// The request could not be sealed (bad nodename, too large, ...).
    #[error("cannot encode `{action}` for {addr}: {source}")]
    Encode {
        /// The node address.
        addr: String,
        /// The action requested.
        action: String,
        /// The sealing error.
        source: WireError,
    },
}

/// How to reach a node; build a [`Client`] with [`ClientOptions::connect`] or
/// [`ClientOptions::build`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    addr: String,
    keyring: Keyring,
    nodename: String,
    bind: Option<IpAddr>,
    max_frame: u32,
    connect_timeout: Duration,
    idle_reconnect: Duration,
    stall_timeout: Duration,
    receiver: String,
    greeting: Option<(String, Doc)>,
}

/// Default of [`ClientOptions::idle_reconnect`].
pub const DEFAULT_IDLE_RECONNECT: Duration = Duration::from_secs(150);

/// Default of [`ClientOptions::stall_timeout`]: a few Raft election timeouts. A healthy
/// link acknowledges within a round trip; a link that does not for this long is cut.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(2);

impl ClientOptions {
    /// Options to reach `addr` ("host:port") as `nodename`, sealing with `keyring`.
    pub fn new(addr: impl Into<String>, keyring: Keyring, nodename: impl Into<String>) -> Self {
        ClientOptions {
            addr: addr.into(),
            keyring,
            nodename: nodename.into(),
            bind: None,
            max_frame: DEFAULT_MAX_FRAME,
            connect_timeout: Duration::from_secs(5),
            idle_reconnect: DEFAULT_IDLE_RECONNECT,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            receiver: String::new(),
            greeting: None,
        }
    }

    /// A connection that sent nothing for this long and has no request running is replaced
    /// by a new one on the next request (default 150 s). Keep it well below the node's
    /// `listener.idle_timeout`, so that the node never closes a connection as idle while a
    /// request is on its way.
    pub fn idle_reconnect(mut self, t: Duration) -> Self {
        self.idle_reconnect = t;
        self
    }

    /// The connection is closed when data it sent stays unacknowledged this long (Linux's
    /// `TCP_USER_TIMEOUT`; default [`DEFAULT_STALL_TIMEOUT`]), and the next request
    /// connects anew. Without it, a connection that carried data across a partition
    /// waits for the kernel's doubling retransmission timer after the heal: 12 s after a
    /// 14 s cut (`tests/faults/heal.rs`), during which every request on it times out.
    pub fn stall_timeout(mut self, t: Duration) -> Self {
        self.stall_timeout = t;
        self
    }

    /// Binds the local end of the connection to `ip` (source address selection).
    pub fn bind(mut self, ip: IpAddr) -> Self {
        self.bind = Some(ip);
        self
    }

    /// Largest response frame accepted (default 16 MiB).
    pub fn max_frame(mut self, max_frame: u32) -> Self {
        self.max_frame = max_frame;
        self
    }

    /// Upper bound on connecting (default 5 s); a request's own timeout also applies.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// The node meant to answer (bound into the handshake; another node's answer fails
    /// it). Default: whichever node listens at the address.
    pub fn receiver(mut self, nodename: impl Into<String>) -> Self {
        self.receiver = nodename.into();
        self
    }

    /// A request sent on every new session as soon as it opens (a member's `hello`
    /// check-in, which tells the node it reconnected). Its answer is not waited for: an
    /// error status is logged as a warning, naming the action and the node.
    pub fn greeting(mut self, action: impl Into<String>, options: impl Into<Doc>) -> Self {
        self.greeting = Some((action.into(), options.into()));
        self
    }

    /// A client that connects on its first request.
    pub fn build(self) -> Client {
        Client {
            inner: Arc::new(Inner {
                next_reqid: AtomicU64::new(u64::from(rand::random::<u32>()) + 1),
                conn: Mutex::new(None),
                connect_lock: tokio::sync::Mutex::new(()),
                opts: self,
            }),
        }
    }

    /// A client connected now (fails if the node is unreachable).
    pub async fn connect(self) -> Result<Client, ClientError> {
        let client = self.build();
        client.connection().await?;
        Ok(client)
    }
}

/// A cloneable handle on one pipelined connection to one node.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    opts: ClientOptions,
    next_reqid: AtomicU64,
    conn: Mutex<Option<Arc<Conn>>>,
    connect_lock: tokio::sync::Mutex<()>,
}

/// One session; dropping the last handle ends its writer, which ends its reader.
#[derive(Debug)]
struct Conn {
    tx: mpsc::Sender<Outgoing>,
    shared: Arc<ConnShared>,
}

impl Conn {
    /// Queues an encoded request for sending; `false` once the writer stopped.
    async fn send(&self, plain: Vec<u8>) -> bool {
        if self.tx.send(Outgoing::Message(plain)).await.is_err() {
            return false;
        }
        self.shared.touch();
        true
    }
}

type Waiter = oneshot::Sender<Result<Response, String>>;

#[derive(Debug)]
struct ConnShared {
    closed: AtomicBool,
    pending: Mutex<Pending>,
    close_notify: Notify,
    local: SocketAddr,
    /// When the connection was made; `last_sent_ms` counts from it.
    born: Instant,
    last_sent_ms: AtomicU64,
    /// The name the node gave in its welcome.
    node: String,
}

#[derive(Debug, Default)]
struct Pending {
    closed: Option<String>,
    waiters: HashMap<u64, Waiter>,
}

impl ConnShared {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Records that a frame was just queued for sending.
    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_sent_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether the connection may carry a new request: open, and either used within
    /// `idle` or busy with a request (a node does not close a busy connection as idle).
    fn reusable(&self, idle: Duration) -> bool {
        if self.is_closed() {
            return false;
        }
        let since = Duration::from_millis(self.last_sent_ms.load(Ordering::Relaxed));
        if self.born.elapsed().saturating_sub(since) < idle {
            return true;
        }
        let p = self.pending.lock().expect("pending lock");
        !p.waiters.is_empty()
    }

    /// Registers a waiter for the answer to `reqid`; the reason the connection closed if
    /// it did.
    fn wait_for(&self, reqid: u64) -> Result<oneshot::Receiver<Result<Response, String>>, String> {
        let (tx, rx) = oneshot::channel();
        let mut p = self.pending.lock().expect("pending lock");
        if let Some(reason) = &p.closed {
            return Err(reason.clone());
        }
        p.waiters.insert(reqid, tx);
        Ok(rx)
    }

    /// Marks the connection broken and fails every waiting request with `reason`.
    fn close(&self, reason: String) {
        let waiters = {
            let mut p = self.pending.lock().expect("pending lock");
            if p.closed.is_some() {
                return;
            }
            p.closed = Some(reason.clone());
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut p.waiters)
        };
        for (_, w) in waiters {
            let _ = w.send(Err(reason.clone()));
        }
        self.close_notify.notify_one();
    }
}

/// Removes a waiter when its request finishes or is cancelled (timeout, dropped future).
struct WaiterGuard<'a> {
    shared: &'a ConnShared,
    reqid: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.shared.pending.lock() {
            p.waiters.remove(&self.reqid);
        }
    }
}

impl Client {
    /// Connects to `addr` ("host:port") as `my_nodename`.
    pub async fn connect(
        addr: impl Into<String>,
        keyring: Keyring,
        my_nodename: impl Into<String>,
    ) -> Result<Client, ClientError> {
        ClientOptions::new(addr, keyring, my_nodename)
            .connect()
            .await
    }

    /// The node address this client talks to.
    pub fn addr(&self) -> &str {
        &self.inner.opts.addr
    }

    /// The local address of the current connection, if connected.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        let g = self.inner.conn.lock().expect("conn lock");
        g.as_ref()
            .filter(|c| !c.shared.is_closed())
            .map(|c| c.shared.local)
    }

    /// The name the node gave when the current session opened, if connected.
    pub fn node_name(&self) -> Option<String> {
        let g = self.inner.conn.lock().expect("conn lock");
        g.as_ref()
            .filter(|c| !c.shared.is_closed())
            .map(|c| c.shared.node.clone())
    }

    /// Whether a connection is currently open.
    pub fn is_connected(&self) -> bool {
        self.local_addr().is_some()
    }

    /// Sends a request and waits for its response, at most `timeout` (connecting included).
    pub async fn request(
        &self,
        action: &str,
        options: impl Into<Doc>,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let deadline = Instant::now() + timeout;
        let options = options.into();
        match tokio::time::timeout_at(deadline, self.request_inner(action, options)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                addr: self.inner.opts.addr.clone(),
                action: action.to_owned(),
                after: timeout,
            }),
        }
    }

    async fn request_inner(&self, action: &str, options: Doc) -> Result<Response, ClientError> {
        let opts = &self.inner.opts;
        let reqid = self.inner.next_reqid.fetch_add(1, Ordering::Relaxed);
        let msg = Message::request(ReqId::Int(reqid), Request::new(action, options));
        let plain = msg.encode().map_err(|source| ClientError::Encode {
            addr: opts.addr.clone(),
            action: action.to_owned(),
            source,
        })?;
        drop(msg);
        let closed = |reason: String| ClientError::Closed {
            addr: opts.addr.clone(),
            action: action.to_owned(),
            reason,
        };
        // A connection can break between taking it and registering: retry once on a new one.
        let mut attempts = 0;
        let (conn, rx) = loop {
            attempts += 1;
            let conn = self.connection_for(action).await?;
            match conn.shared.wait_for(reqid) {
                Ok(rx) => break (conn, rx),
                Err(_) if attempts < 2 => continue,
                Err(reason) => return Err(closed(reason)),
            }
        };
        let guard = WaiterGuard {
            shared: &conn.shared,
            reqid,
        };
        if !conn.send(plain).await {
            return Err(closed("writer stopped".into()));
        }
        let answer = rx.await;
        if answer.is_ok() {
            // Whoever answered already removed the waiter: skip the guard's lock.
            std::mem::forget(guard);
        }
        match answer {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(reason)) => Err(closed(reason)),
            Err(_) => Err(closed("connection dropped".into())),
        }
    }

    /// Sends the empty packet, which makes the node dequeue its actions; no response comes.
    pub async fn send_empty(&self) -> Result<(), ClientError> {
        let action = "<empty packet>";
        let conn = self.connection_for(action).await?;
        conn.tx
            .send(Outgoing::Clear(EMPTY_PACKET.to_vec()))
            .await
            .map_err(|_| ClientError::Closed {
                addr: self.inner.opts.addr.clone(),
                action: action.to_owned(),
                reason: "writer stopped".into(),
            })?;
        conn.shared.touch();
        Ok(())
    }

    /// Closes the current connection (the next request reconnects).
    pub fn disconnect(&self) {
        let conn = self.inner.conn.lock().expect("conn lock").take();
        if let Some(c) = conn {
            c.shared.close("closed by client".into());
        }
    }

    async fn connection(&self) -> Result<Arc<Conn>, ClientError> {
        self.connection_for("<connect>").await
    }

    async fn connection_for(&self, action: &str) -> Result<Arc<Conn>, ClientError> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _serial = self.inner.connect_lock.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let opts = &self.inner.opts;
        let (stream, session) =
            match tokio::time::timeout(opts.connect_timeout, open_session(opts)).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(ClientError::Timeout {
                        addr: opts.addr.clone(),
                        action: action.to_owned(),
                        after: opts.connect_timeout,
                    })
                }
            };
        let conn = spawn_conn(stream, session, opts).map_err(|source| ClientError::Connect {
            addr: opts.addr.clone(),
            source,
        })?;
        *self.inner.conn.lock().expect("conn lock") = Some(conn.clone());
        if let Some((action, options)) = &opts.greeting {
            let reqid = self.inner.next_reqid.fetch_add(1, Ordering::Relaxed);
            let msg = Message::request(ReqId::Int(reqid), Request::new(action, options.clone()));
            if let Ok(plain) = msg.encode() {
                let (addr, action) = (opts.addr.clone(), action.clone());
                tokio::spawn(greet(conn.clone(), reqid, plain, addr, action));
            }
        }
        Ok(conn)
    }

    /// The connection to send on, unless it is closed or idle for too long (see the module
    /// header); an idle one is then dropped, which closes it once nothing else holds it.
    fn current(&self) -> Option<Arc<Conn>> {
        let idle = self.inner.opts.idle_reconnect;
        let g = self.inner.conn.lock().expect("conn lock");
        g.as_ref().filter(|c| c.shared.reusable(idle)).cloned()
    }
}

/// Sends the greeting first on the session just opened and logs a refusal. It goes on
/// `conn` itself, not through [`Client::request`], which could open yet another session.
async fn greet(conn: Arc<Conn>, reqid: u64, plain: Vec<u8>, addr: String, action: String) {
    let Ok(rx) = conn.shared.wait_for(reqid) else {
        return;
    };
    if !conn.send(plain).await {
        return;
    }
    match rx.await {
        Ok(Ok(resp)) if !resp.is_ok() => tracing::warn!(
            %addr,
            %action,
            status = resp.status,
            error = resp.error.as_deref().unwrap_or(""),
            "the node refused this session's greeting"
        ),
        Ok(Ok(_)) => {}
        Ok(Err(reason)) => tracing::debug!(%addr, %action, %reason, "greeting not answered"),
        Err(_) => {}
    }
}

async fn dial(opts: &ClientOptions) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host(opts.addr.as_str()).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = opts.bind {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        match socket.connect(addr).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                socket2::SockRef::from(&s).set_tcp_user_timeout(Some(opts.stall_timeout))?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address resolved")))
}

/// A session's two halves and the node's name.
type Session = (Sealer, Opener, String);

/// Connects and runs the handshake.
async fn open_session(opts: &ClientOptions) -> Result<(TcpStream, Session), ClientError> {
    let addr = || opts.addr.clone();
    let mut stream = dial(opts).await.map_err(|source| ClientError::Connect {
        addr: addr(),
        source,
    })?;
    let handshake = |source| ClientError::Handshake {
        addr: addr(),
        source,
    };
    let (init, hello) =
        Initiator::start(&opts.keyring, &opts.nodename, &opts.receiver).map_err(handshake)?;
    stream
        .write_all(&hello)
        .await
        .map_err(|e| handshake(WireError::Io(e)))?;
    let answer = read_frame(&mut stream, MAX_RECORD as u32)
        .await
        .map_err(handshake)?
        .ok_or_else(|| {
            handshake(WireError::BadPayload(
                "the node closed without answering the hello".into(),
            ))
        })?;
    let session = match parse_answer(answer.body()).map_err(handshake)? {
        HelloAnswer::Welcome(noise) => init.finish(noise).map_err(handshake)?,
        HelloAnswer::Refused(refusal) => {
            if refusal.code == Some(RefusalCode::Blacklisted) {
                tracing::warn!(addr = %opts.addr, reason = %refusal.reason, "this node is blacklisted there");
            }
            return Err(ClientError::Refused {
                addr: addr(),
                refusal,
            });
        }
    };
    Ok((stream, session))
}

fn spawn_conn(stream: TcpStream, session: Session, opts: &ClientOptions) -> io::Result<Arc<Conn>> {
    let (sealer, opener, node) = session;
    let local = stream.local_addr()?;
    let (rd, wr) = stream.into_split();
    let shared = Arc::new(ConnShared {
        closed: AtomicBool::new(false),
        pending: Mutex::new(Pending::default()),
        close_notify: Notify::new(),
        local,
        born: Instant::now(),
        last_sent_ms: AtomicU64::new(0),
        node,
    });
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let reader = tokio::spawn(reader_loop(
        BufReader::with_capacity(IO_BUF, rd),
        shared.clone(),
        opener,
        opts.max_frame,
    ));
    tokio::spawn(writer_loop(
        rx,
        wr,
        sealer,
        shared.clone(),
        reader.abort_handle(),
    ));
    Ok(Arc::new(Conn { tx, shared }))
}

async fn reader_loop(
    mut rd: BufReader<OwnedReadHalf>,
    shared: Arc<ConnShared>,
    mut opener: Opener,
    max_frame: u32,
) {
    let reason = loop {
        let frame = match read_frame(&mut rd, MAX_RECORD as u32).await {
            Ok(None) => break "connection closed by the node".to_string(),
            Ok(Some(f)) if f.is_empty() => continue,
            Ok(Some(f)) => f,
            Err(e) => break e.to_string(),
        };
        let plain = match opener.open(frame.body(), max_frame) {
            Ok(None) => continue,
            Ok(Some(p)) => p,
            Err(e) => break format!("invalid record: {e}"),
        };
        match response(&plain) {
            Ok((reqid, resp)) => {
                let waiter = shared
                    .pending
                    .lock()
                    .expect("pending lock")
                    .waiters
                    .remove(&reqid);
                if let Some(w) = waiter {
                    let _ = w.send(Ok(resp));
                }
            }
            Err(e) => break format!("invalid response: {e}"),
        }
    };
    shared.close(reason);
}

fn response(plain: &[u8]) -> Result<(u64, Response), WireError> {
    let m = Message::decode(plain).map_err(|u| u.error)?;
    match (m.reqid, m.body) {
        (ReqId::Int(id), Body::Response(r)) => Ok((id, r)),
        (ReqId::Str(s), _) => Err(WireError::BadPayload(format!(
            "a response to reqid {s:?}, which this client never sends"
        ))),
        (_, Body::Request(_)) => Err(WireError::BadPayload(
            "a request arrived where a response was expected".into(),
        )),
    }
}

async fn writer_loop(
    mut rx: mpsc::Receiver<Outgoing>,
    wr: OwnedWriteHalf,
    mut sealer: Sealer,
    shared: Arc<ConnShared>,
    reader: tokio::task::AbortHandle,
) {
    let mut w = BufWriter::with_capacity(IO_BUF, wr);
    let mut client_gone = false;
    let mut buf = Vec::with_capacity(IO_BUF);
    loop {
        let out = tokio::select! {
            biased;
            _ = shared.close_notify.notified() => break,
            f = rx.recv() => match f {
                Some(f) => f,
                None => {
                    client_gone = true;
                    break;
                }
            },
        };
        buf.clear();
        let mut res = out.write_into(Some(&mut sealer), &mut buf);
        // Coalesce what is queued, up to the buffer's size, into one write.
        while res.is_ok() && buf.len() < IO_BUF {
            match rx.try_recv() {
                Ok(o) => res = o.write_into(Some(&mut sealer), &mut buf),
                Err(_) => break,
            }
        }
        let res = match res {
            Ok(()) => w.write_all(&buf).await.map_err(WireError::Io),
            Err(e) => Err(e),
        };
        let res = match res {
            Ok(()) if rx.is_empty() => w.flush().await.map_err(WireError::Io),
            other => other,
        };
        if let Err(e) = res {
            shared.close(format!("write failed: {e}"));
            break;
        }
    }
    let _ = w.shutdown().await;
    if client_gone || shared.is_closed() {
        reader.abort();
        shared.close("connection closed".into());
    }
}
