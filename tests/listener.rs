//! Listener: validation order, per-kind rejection counters, blacklist, pipelining,
//! dequeue, stop/restart, connection caps, deadlines and the unauthenticated frame limit,
//! and the client against it. Real TCP on loopback.

use om::listener::{BoxFuture, Handler, Listener, ListenerConfig, ListenerHandle, RequestCtx};
use om::wire::{
    now_ms, read_frame, status, ClientError, ClientOptions, Envelope, ErrorKind, Keyring, Request,
    Response, EMPTY_PACKET,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

const LO1: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const LO2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const T: Duration = Duration::from_secs(5);

#[derive(Default)]
struct TestHandler {
    dequeued: AtomicU64,
    handled: AtomicU64,
}

impl Handler for TestHandler {
    fn handle(&self, ctx: RequestCtx, req: Request) -> BoxFuture<Response> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            match req.action.as_str() {
                "sleep" => {
                    let ms = req.options["ms"].as_u64().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Response::ok(json!({"reqid": ctx.reqid, "options": req.options}))
                }
                "panic" => panic!("handler exploded"),
                "whoami" => Response::ok(json!({
                    "sender": ctx.sender,
                    "ip": ctx.peer.ip().to_string(),
                    "member": ctx.member,
                })),
                _ => Response::ok(json!({"action": req.action, "options": req.options})),
            }
        })
    }

    fn dequeue_actions(&self) {
        self.dequeued.fetch_add(1, Ordering::SeqCst);
    }
}

struct Fixture {
    listener: Listener,
    handle: Option<ListenerHandle>,
    handler: Arc<TestHandler>,
    keyring: Keyring,
    members: Arc<RwLock<BTreeSet<String>>>,
}

const MAX_FRAME: u32 = 64 * 1024;

impl Fixture {
    async fn start() -> Fixture {
        Fixture::start_with(config(0)).await
    }

    async fn start_with(cfg: ListenerConfig) -> Fixture {
        let keyring = Keyring::new("test", "good-secret");
        let members: BTreeSet<String> = ["n1", "n2", "n3", "me"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let members = Arc::new(RwLock::new(members));
        let handler = Arc::new(TestHandler::default());
        let listener = Listener::new("me", keyring.clone(), members.clone(), handler.clone());
        let handle = listener.start(&cfg).await.unwrap();
        Fixture {
            listener,
            handle: Some(handle),
            handler,
            keyring,
            members,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.handle.as_ref().unwrap().local_addr()
    }

    fn client(&self, me: &str, src: IpAddr) -> om::wire::Client {
        ClientOptions::new(self.addr().to_string(), self.keyring.clone(), me)
            .bind(src)
            .build()
    }

    fn rejected(&self, kind: ErrorKind) -> u64 {
        self.listener.metrics().rejected(kind)
    }

    fn decrypts(&self) -> u64 {
        self.listener
            .metrics()
            .decrypt_attempts
            .load(Ordering::SeqCst)
    }

    fn dropped(&self) -> u64 {
        self.listener
            .metrics()
            .dropped_blacklisted
            .load(Ordering::SeqCst)
    }
}

fn config(port: u16) -> ListenerConfig {
    ListenerConfig {
        addr: "127.0.0.1".into(),
        port,
        max_frame: MAX_FRAME,
        ..ListenerConfig::default()
    }
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn connect_from(addr: SocketAddr, src: IpAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(src, 0)).unwrap();
    s.connect(addr).await.unwrap()
}

fn request_frame(k: &Keyring, sender: &str, reqid: u64, action: &str, options: Value) -> Vec<u8> {
    k.seal(
        sender,
        &Envelope::request(reqid, Request::new(action, options)),
    )
    .unwrap()
}

enum Read {
    Frame(u64, Response),
    Closed,
    Nothing,
}

/// Reads one response (opened with `k`), or reports a close or silence within `wait`.
async fn read_one(stream: &mut BufReader<TcpStream>, k: &Keyring, wait: Duration) -> Read {
    match tokio::time::timeout(wait, read_frame(stream, u32::MAX)).await {
        Err(_) => Read::Nothing,
        Ok(Ok(None)) | Ok(Err(_)) => Read::Closed,
        Ok(Ok(Some(f))) => {
            let o = k.open(&f.to_wire()).expect("listener responses open");
            assert_eq!(o.sender, "me");
            Read::Frame(o.envelope.reqid, o.envelope.as_response().unwrap().clone())
        }
    }
}

async fn send(stream: &mut BufReader<TcpStream>, bytes: &[u8]) {
    stream.get_mut().write_all(bytes).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_responses_come_back_out_of_order_matched_by_reqid() {
    let fx = Fixture::start().await;
    let mut s = BufReader::new(connect_from(fx.addr(), LO1).await);
    let mut both = request_frame(&fx.keyring, "n1", 1, "sleep", json!({"ms": 400}));
    both.extend(request_frame(
        &fx.keyring,
        "n1",
        2,
        "sleep",
        json!({"ms": 0}),
    ));
    send(&mut s, &both).await;
    let Read::Frame(first, r1) = read_one(&mut s, &fx.keyring, T).await else {
        panic!("no first response")
    };
    let Read::Frame(second, r2) = read_one(&mut s, &fx.keyring, T).await else {
        panic!("no second response")
    };
    assert_eq!(
        (first, second),
        (2, 1),
        "the fast request overtakes the slow one"
    );
    assert_eq!(r1.data["reqid"], 2);
    assert_eq!(r2.data["options"]["ms"], 400);

    // Many tasks share one client connection.
    let client = fx.client("n1", LO1);
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let ms = (i * 7919) % 23;
            let r = c
                .request("sleep", json!({"ms": ms, "i": i}), T)
                .await
                .unwrap();
            assert!(r.is_ok());
            assert_eq!(r.data["options"]["i"], i);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(fx.listener.metrics().connections.load(Ordering::SeqCst), 2);
    assert_eq!(fx.listener.metrics().rejected_total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_at_once() {
    let fx = Fixture::start().await;
    let mut tasks = Vec::new();
    for c in 0..32u64 {
        let client = fx.client(["n1", "n2", "n3"][c as usize % 3], LO1);
        tasks.push(tokio::spawn(async move {
            for i in 0..20u64 {
                let r = client
                    .request("echo", json!({"c": c, "i": i}), T)
                    .await
                    .unwrap();
                assert_eq!(r.data["options"], json!({"c": c, "i": i}));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(fx.handler.handled.load(Ordering::SeqCst), 640);
    assert_eq!(fx.listener.metrics().connections.load(Ordering::SeqCst), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_is_refused_with_its_own_kind_and_counted() {
    let fx = Fixture::start().await;
    let k = &fx.keyring;
    let open = |s: BufReader<TcpStream>| s;
    let new_conn = || async { BufReader::new(connect_from(fx.addr(), LO1).await) };

    // Wrong secret: Auth, and the connection is closed.
    let mut s = open(new_conn().await);
    send(
        &mut s,
        &request_frame(&Keyring::new("test", "bad"), "n1", 1, "x", json!({})),
    )
    .await;
    assert!(matches!(read_one(&mut s, k, T).await, Read::Closed));
    assert_eq!(fx.rejected(ErrorKind::Auth), 1);

    // Wrong cluster name: Auth too.
    let mut s = open(new_conn().await);
    send(
        &mut s,
        &request_frame(
            &Keyring::new("other", "good-secret"),
            "n2",
            1,
            "x",
            json!({}),
        ),
    )
    .await;
    assert!(matches!(read_one(&mut s, k, T).await, Read::Closed));
    assert_eq!(fx.rejected(ErrorKind::Auth), 2);

    // Replay: the same bytes twice; the first is served, the second dropped in silence.
    let mut s = open(new_conn().await);
    let f = request_frame(k, "n3", 7, "echo", json!({"a": 1}));
    send(&mut s, &f).await;
    assert!(matches!(read_one(&mut s, k, T).await, Read::Frame(7, r) if r.is_ok()));
    send(&mut s, &f).await;
    assert!(matches!(
        read_one(&mut s, k, Duration::from_millis(300)).await,
        Read::Nothing
    ));
    assert_eq!(fx.rejected(ErrorKind::Replayed), 1);

    // Stale: 61 s old, answered with STALE (the reqid is known after decryption).
    let mut env = Envelope::request(8, Request::new("echo", json!({})));
    env.ts_ms = now_ms() - 61_000;
    send(&mut s, &k.seal("n3", &env).unwrap()).await;
    assert!(matches!(read_one(&mut s, k, T).await, Read::Frame(8, r) if r.status == status::STALE));
    // and from the future
    env.ts_ms = now_ms() + 61_000;
    env.reqid = 9;
    send(&mut s, &k.seal("n3", &env).unwrap()).await;
    assert!(matches!(read_one(&mut s, k, T).await, Read::Frame(9, r) if r.status == status::STALE));
    assert_eq!(fx.rejected(ErrorKind::Stale), 2);

    // Unknown sender asking for anything but join: FORBIDDEN. Non-members use the
    // joining keyring (they do not know the cluster name).
    let joiner = k.joining();
    let mut s = open(new_conn().await);
    send(
        &mut s,
        &request_frame(&joiner, "stranger", 10, "daemon_status", json!({})),
    )
    .await;
    assert!(
        matches!(read_one(&mut s, &joiner, T).await, Read::Frame(10, r) if r.status == status::FORBIDDEN)
    );
    assert_eq!(fx.rejected(ErrorKind::UnknownSender), 1);
    // ... while join is served, flagged as from a non-member.
    send(
        &mut s,
        &request_frame(&joiner, "stranger", 11, "join", json!({"node": "stranger"})),
    )
    .await;
    let Read::Frame(11, r) = read_one(&mut s, &joiner, T).await else {
        panic!("join from a non-member not served")
    };
    assert_eq!(r.data["action"], "join");
    // A non-member sealing with the cluster name is not understood.
    send(&mut s, &request_frame(k, "stranger", 12, "join", json!({}))).await;
    assert!(matches!(read_one(&mut s, k, T).await, Read::Closed));
    assert_eq!(fx.rejected(ErrorKind::Auth), 3);

    // Bad payload behind valid crypto: garbage (dropped) and a bad body with a good head
    // (answered BAD_PAYLOAD with its reqid).
    let mut s = open(new_conn().await);
    send(
        &mut s,
        &k.seal_plaintext("n2", b"\xc1 not msgpack").unwrap(),
    )
    .await;
    let bad_body = rmp_serde::to_vec_named(&json!({
        "ts_ms": now_ms(), "msg_id": 5, "reqid": 13, "body": {"action": 1}
    }))
    .unwrap();
    let bad_frame = k.seal_plaintext("n2", &bad_body).unwrap();
    send(&mut s, &bad_frame).await;
    assert!(
        matches!(read_one(&mut s, k, T).await, Read::Frame(13, r) if r.status == status::BAD_PAYLOAD)
    );
    // Replay and staleness are judged before the payload: a replayed bad frame is a
    // replay (no answer), a stale bad frame is stale. (Sent as "me": n2 is at 3
    // consecutive invalid frames and must stay below the blacklist threshold.)
    let bad_frame = k.seal_plaintext("me", &bad_body).unwrap();
    send(&mut s, &bad_frame).await;
    assert!(
        matches!(read_one(&mut s, k, T).await, Read::Frame(13, r) if r.status == status::BAD_PAYLOAD)
    );
    send(&mut s, &bad_frame).await;
    wait_for("replayed bad payload", || {
        fx.rejected(ErrorKind::Replayed) == 2
    })
    .await;
    let stale_bad_body = rmp_serde::to_vec_named(&json!({
        "ts_ms": now_ms() - 120_000, "msg_id": 6, "reqid": 21, "body": {"action": 1}
    }))
    .unwrap();
    send(&mut s, &k.seal_plaintext("me", &stale_bad_body).unwrap()).await;
    assert!(
        matches!(read_one(&mut s, k, T).await, Read::Frame(21, r) if r.status == status::STALE)
    );
    // A response sent to the listener is a bad payload too (no answer).
    send(
        &mut s,
        &k.seal("n2", &Envelope::response(14, Response::ok(json!(1))))
            .unwrap(),
    )
    .await;
    wait_for("bad payloads", || fx.rejected(ErrorKind::BadPayload) == 4).await;

    // Header defects: bad version, empty and non-UTF-8 sender, too short.
    let mut s = open(new_conn().await);
    let mut f = request_frame(k, "n1", 15, "x", json!({}));
    f[4] = 2;
    send(&mut s, &f).await;
    let mut f = request_frame(k, "n1", 16, "x", json!({}));
    f[6] = 0xff;
    send(&mut s, &f).await;
    let mut f = request_frame(k, "n1", 17, "x", json!({}));
    f[5] = 0;
    send(&mut s, &f).await;
    send(&mut s, &[0, 0, 0, 3, 1, 1, b'x']).await;
    wait_for("header defects", || {
        fx.rejected(ErrorKind::BadVersion) == 1
            && fx.rejected(ErrorKind::BadSender) == 2
            && fx.rejected(ErrorKind::TooShort) == 1
    })
    .await;
    // Framing is intact after header defects: the connection still serves.
    send(&mut s, &request_frame(k, "n1", 18, "echo", json!({}))).await;
    assert!(matches!(read_one(&mut s, k, T).await, Read::Frame(18, _)));

    // Oversize: refused on the length alone, connection closed without reading the body.
    let mut s = open(new_conn().await);
    send(&mut s, &(MAX_FRAME + 1).to_be_bytes()).await;
    assert!(matches!(read_one(&mut s, k, T).await, Read::Closed));
    assert_eq!(fx.rejected(ErrorKind::Oversize), 1);

    // Truncated: the stream ends inside a frame.
    let mut s = open(new_conn().await);
    let f = request_frame(k, "n1", 19, "x", json!({}));
    send(&mut s, &f[..f.len() - 3]).await;
    s.get_mut().shutdown().await.unwrap();
    wait_for("truncated", || fx.rejected(ErrorKind::Truncated) == 1).await;

    let m = fx.listener.metrics();
    let expected = [
        (ErrorKind::Auth, 3),
        (ErrorKind::Replayed, 2),
        (ErrorKind::Stale, 3),
        (ErrorKind::UnknownSender, 1),
        (ErrorKind::BadPayload, 4),
        (ErrorKind::BadVersion, 1),
        (ErrorKind::BadSender, 2),
        (ErrorKind::TooShort, 1),
        (ErrorKind::Oversize, 1),
        (ErrorKind::Truncated, 1),
    ];
    for (kind, n) in expected {
        assert_eq!(m.rejected(kind), n, "{kind}");
    }
    assert_eq!(
        m.rejected_total(),
        expected.iter().map(|(_, n)| n).sum::<u64>()
    );
    // Served: echo 7, join 11, echo 18.
    assert_eq!(fx.handler.handled.load(Ordering::SeqCst), 3);
    // No pair reached 5 invalid frames.
    assert_eq!(fx.listener.blacklist().blacklisted_count(), 0);
}

/// Sends one frame on a fresh connection from `src` and returns what came back.
async fn one_shot(fx: &Fixture, src: IpAddr, frame: &[u8], wait: Duration) -> Read {
    let mut s = BufReader::new(connect_from(fx.addr(), src).await);
    send(&mut s, frame).await;
    read_one(&mut s, &fx.keyring, wait).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_invalid_frames_blacklist_the_pair_and_the_sixth_is_not_decrypted() {
    let fx = Fixture::start().await;
    let bad = Keyring::new("test", "wrong");
    for i in 1..=5u64 {
        let r = one_shot(&fx, LO1, &request_frame(&bad, "n2", i, "x", json!({})), T).await;
        assert!(matches!(r, Read::Closed));
        wait_for("auth rejections", || fx.rejected(ErrorKind::Auth) == i).await;
    }
    assert!(fx.listener.blacklist().is_blacklisted("n2", LO1));
    assert_eq!(fx.listener.metrics().blacklisted.load(Ordering::SeqCst), 1);
    let decrypts = fx.decrypts();
    assert_eq!(decrypts, 5);

    // The 6th frame, even a valid one, is dropped before decryption.
    let f = request_frame(&fx.keyring, "n2", 6, "echo", json!({}));
    let r = one_shot(&fx, LO1, &f, Duration::from_millis(300)).await;
    assert!(matches!(r, Read::Nothing));
    wait_for("drop", || fx.dropped() == 1).await;
    assert_eq!(
        fx.decrypts(),
        decrypts,
        "no decryption for a blacklisted pair"
    );
    assert_eq!(fx.rejected(ErrorKind::Auth), 5);
    assert_eq!(fx.handler.handled.load(Ordering::SeqCst), 0);

    let st = fx.listener.blacklist().status();
    assert_eq!(st["n2"]["count"], 5);
    assert_eq!(st["n2"]["blacklisted"], true);
    assert_eq!(
        st["n2"]["addrs"]["127.0.0.1"],
        json!({"count": 5, "blacklisted": true, "dropped": 1})
    );
    // Other members and other addresses are unaffected.
    let c = fx.client("n1", LO1);
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
    let c = fx.client("n2", LO2);
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());

    // clear empties it; the pair is served again.
    fx.listener.blacklist().clear();
    assert_eq!(fx.listener.blacklist().status(), json!({}));
    let c = fx.client("n2", LO1);
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
    assert_eq!(fx.dropped(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forger_from_another_address_cannot_blacklist_a_member() {
    let fx = Fixture::start().await;
    let forged = Keyring::new("test", "guess");
    for i in 1..=8u64 {
        // Once blacklisted, frames are dropped in silence: do not wait long for an answer.
        let wait = if i <= 5 {
            T
        } else {
            Duration::from_millis(100)
        };
        let frame = request_frame(&forged, "n1", i, "x", json!({}));
        one_shot(&fx, LO2, &frame, wait).await;
    }
    wait_for("forger blacklisted", || {
        fx.listener.blacklist().is_blacklisted("n1", LO2)
    })
    .await;
    wait_for("forger drops", || fx.dropped() == 3).await;
    assert!(!fx.listener.blacklist().is_blacklisted("n1", LO1));
    let st = fx.listener.blacklist().status();
    assert_eq!(
        st["n1"]["addrs"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["127.0.0.2"]
    );
    // The real n1 on 127.0.0.1 is served.
    let c = fx.client("n1", LO1);
    let r = c.request("whoami", json!({}), T).await.unwrap();
    assert_eq!(
        r.data,
        json!({"sender": "n1", "ip": "127.0.0.1", "member": true})
    );
    // Even with the right key, n1 from the forger's address stays dropped.
    let c = fx.client("n1", LO2);
    let e = c
        .request("whoami", json!({}), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_frame_resets_the_consecutive_count() {
    let fx = Fixture::start().await;
    let bad = Keyring::new("test", "wrong");
    let invalid = |i| request_frame(&bad, "n3", i, "x", json!({}));
    for i in 0..4 {
        one_shot(&fx, LO1, &invalid(i), T).await;
    }
    wait_for("4 invalid", || fx.rejected(ErrorKind::Auth) == 4).await;
    let r = one_shot(
        &fx,
        LO1,
        &request_frame(&fx.keyring, "n3", 9, "echo", json!({})),
        T,
    )
    .await;
    assert!(matches!(r, Read::Frame(9, _)));
    assert_eq!(fx.listener.blacklist().get("n3", LO1), None);
    for i in 0..4 {
        one_shot(&fx, LO1, &invalid(10 + i), T).await;
    }
    wait_for("8 invalid", || fx.rejected(ErrorKind::Auth) == 8).await;
    assert!(!fx.listener.blacklist().is_blacklisted("n3", LO1));
    assert_eq!(fx.listener.blacklist().status()["n3"]["count"], 4);
    one_shot(&fx, LO1, &invalid(20), T).await;
    wait_for("blacklisted", || {
        fx.listener.blacklist().is_blacklisted("n3", LO1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_packets_dequeue_actions() {
    let fx = Fixture::start().await;
    let c = fx.client("n1", LO1);
    c.send_empty().await.unwrap();
    c.send_empty().await.unwrap();
    wait_for("two dequeues", || {
        fx.handler.dequeued.load(Ordering::SeqCst) == 2
    })
    .await;
    // A raw empty packet between two requests on one connection.
    let mut s = BufReader::new(connect_from(fx.addr(), LO1).await);
    let mut bytes = request_frame(&fx.keyring, "n1", 1, "echo", json!({}));
    bytes.extend_from_slice(&EMPTY_PACKET);
    bytes.extend(request_frame(&fx.keyring, "n1", 2, "echo", json!({})));
    send(&mut s, &bytes).await;
    assert!(matches!(
        read_one(&mut s, &fx.keyring, T).await,
        Read::Frame(..)
    ));
    assert!(matches!(
        read_one(&mut s, &fx.keyring, T).await,
        Read::Frame(..)
    ));
    assert_eq!(fx.handler.dequeued.load(Ordering::SeqCst), 3);
    assert_eq!(
        fx.listener.metrics().empty_packets.load(Ordering::SeqCst),
        3
    );
    assert_eq!(fx.handler.handled.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_closes_the_port_and_start_rebinds() {
    let mut fx = Fixture::start().await;
    let addr = fx.addr();
    let c = fx.client("n1", LO1);
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
    // Put n2 on the blacklist: it must survive the restart.
    for i in 0..5 {
        one_shot(
            &fx,
            LO1,
            &request_frame(&Keyring::new("test", "x"), "n2", i, "x", json!({})),
            T,
        )
        .await;
    }
    wait_for("n2 blacklisted", || {
        fx.listener.blacklist().is_blacklisted("n2", LO1)
    })
    .await;

    fx.handle.take().unwrap().shutdown().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "port still open after shutdown"
    );
    let e = c.request("echo", json!({}), T).await.unwrap_err();
    assert!(
        matches!(e, ClientError::Closed { .. } | ClientError::Connect { .. }),
        "{e}"
    );
    assert!(e.to_string().contains(&addr.to_string()), "{e}");

    // Same port again: the client reconnects on its next request.
    let h = fx.listener.start(&config(addr.port())).await.unwrap();
    assert_eq!(h.local_addr(), addr);
    let r = c.request("echo", json!({"again": true}), T).await;
    let r = match r {
        Ok(r) => r,
        // The first request may still see the old, closed connection.
        Err(ClientError::Closed { .. }) => {
            c.request("echo", json!({"again": true}), T).await.unwrap()
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(r.data["options"]["again"], true);
    assert!(fx.listener.blacklist().is_blacklisted("n2", LO1));
    h.shutdown().await;

    // Another port.
    let h = fx.listener.start(&config(0)).await.unwrap();
    assert_ne!(h.local_addr(), addr);
    let c2 = ClientOptions::new(h.local_addr().to_string(), fx.keyring.clone(), "n3").build();
    assert!(c2.request("echo", json!({}), T).await.unwrap().is_ok());
    assert!(TcpStream::connect(addr).await.is_err());
    drop(h);
    // Dropping the handle stops it too.
    wait_for("port closed after drop", || {
        std::net::TcpStream::connect(h_addr(&c2)).is_err()
    })
    .await;
}

fn h_addr(c: &om::wire::Client) -> SocketAddr {
    c.addr().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_timeout_names_the_address_and_action() {
    let fx = Fixture::start().await;
    let c = fx.client("n1", LO1);
    let e = c
        .request("sleep", json!({"ms": 3000}), Duration::from_millis(200))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ClientError::Timeout { .. }), "{msg}");
    assert!(
        msg.contains(&fx.addr().to_string()) && msg.contains("`sleep`"),
        "{msg}"
    );
    // The connection is still usable; the late response is ignored.
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
    // Nobody listening: a connect error naming the address.
    let dead = ClientOptions::new("127.0.0.1:1", fx.keyring.clone(), "n1").build();
    let e = dead.request("echo", json!({}), T).await.unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_internal() {
    let fx = Fixture::start().await;
    let c = fx.client("n1", LO1);
    let r = c.request("panic", json!({}), T).await.unwrap();
    assert_eq!(r.status, status::INTERNAL);
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_apply_to_the_next_frame() {
    let fx = Fixture::start().await;
    let c = fx.client("n4", LO1);
    let e = c.request("echo", json!({}), T).await.unwrap_err();
    // n4 seals with the cluster keyring but is not a member: it is opened with the
    // joining keyring, fails authentication, and the connection is closed.
    assert!(matches!(e, ClientError::Closed { .. }), "{e}");
    fx.members.write().unwrap().insert("n4".into());
    let r = c.request("whoami", json!({}), T).await.unwrap();
    assert_eq!(r.data["member"], true);
}

/// Whether the listener closed `s` within `wait` (end of stream or reset).
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(wait, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn counter(fx: &Fixture, c: impl Fn(&om::listener::Metrics) -> &AtomicU64) -> u64 {
    c(fx.listener.metrics()).load(Ordering::SeqCst)
}

const LO3: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const LO4: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_a_cap_are_closed_at_once_and_peers_still_get_answered() {
    let fx = Fixture::start_with(ListenerConfig {
        max_conns: 6,
        max_conns_per_addr: 3,
        ..config(0)
    })
    .await;
    let peer = fx.client("n1", LO2);
    assert!(peer.request("echo", json!({}), T).await.unwrap().is_ok());

    // Per address: three idle connections from LO1 stay, the next ones are closed at once.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(fx.addr(), LO1).await);
    }
    for _ in 0..2 {
        let mut extra = connect_from(fx.addr(), LO1).await;
        assert!(closed_within(&mut extra, Duration::from_secs(1)).await);
    }
    for s in &mut held {
        assert!(!closed_within(s, Duration::from_millis(50)).await);
    }
    // Another address is not affected by LO1's cap.
    let other = fx.client("n2", LO3);
    assert!(other.request("echo", json!({}), T).await.unwrap().is_ok());

    // Globally: 3 (LO1) + 1 (LO2) + 1 (LO3) + 1 (LO4) = 6; a seventh is closed at once.
    held.push(connect_from(fx.addr(), LO4).await);
    let mut seventh = connect_from(fx.addr(), LO4).await;
    assert!(closed_within(&mut seventh, Duration::from_secs(1)).await);
    assert_eq!(counter(&fx, |m| &m.refused_conn_cap), 3);

    // The established peer connections are still answered, on the same connections.
    let before = peer.local_addr();
    assert!(peer
        .request("echo", json!({"again": 1}), T)
        .await
        .unwrap()
        .is_ok());
    assert_eq!(peer.local_addr(), before);
    assert!(other.request("echo", json!({}), T).await.unwrap().is_ok());

    // Closing held connections frees their slots.
    held.clear();
    wait_for("slots given back", || {
        fx.listener
            .metrics()
            .open_connections
            .load(Ordering::SeqCst)
            == 2
    })
    .await;
    let late = fx.client("n3", LO4);
    assert!(late.request("echo", json!({}), T).await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_authenticates_is_closed_after_handshake_timeout() {
    let fx = Fixture::start_with(ListenerConfig {
        handshake_timeout: Duration::from_millis(300),
        ..config(0)
    })
    .await;
    let started = tokio::time::Instant::now();
    let mut idle = connect_from(fx.addr(), LO1).await;
    // Empty packets are not authentication: they do not keep a connection open.
    let mut chatty = connect_from(fx.addr(), LO1).await;
    chatty.write_all(&EMPTY_PACKET).await.unwrap();
    assert!(!closed_within(&mut idle, Duration::from_millis(200)).await);
    assert!(closed_within(&mut idle, Duration::from_secs(2)).await);
    assert!(closed_within(&mut chatty, Duration::from_secs(2)).await);
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(280),
        "closed after {after:?}"
    );
    assert_eq!(counter(&fx, |m| &m.closed_handshake_timeout), 2);

    // An authenticated connection outlives the handshake timeout.
    let c = fx.client("n1", LO2);
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
    let local = c.local_addr();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
    assert_eq!(c.local_addr(), local, "the connection was kept");
    assert_eq!(counter(&fx, |m| &m.closed_handshake_timeout), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_frame_is_closed_by_frame_timeout() {
    let fx = Fixture::start_with(ListenerConfig {
        max_frame: 16 << 20,
        frame_timeout: Duration::from_millis(300),
        ..config(0)
    })
    .await;
    let k = &fx.keyring;
    // Authenticated first, so that a 16 MiB length is acceptable.
    let mut s = BufReader::new(connect_from(fx.addr(), LO1).await);
    send(&mut s, &request_frame(k, "n1", 1, "echo", json!({}))).await;
    assert!(matches!(read_one(&mut s, k, T).await, Read::Frame(1, _)));
    let started = tokio::time::Instant::now();
    let mut half = (16u32 << 20).to_be_bytes().to_vec();
    half.extend([7u8; 100]);
    send(&mut s, &half).await;
    assert!(matches!(
        read_one(&mut s, k, Duration::from_secs(3)).await,
        Read::Closed
    ));
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(280),
        "closed after {after:?}"
    );

    // Before authentication too, well before the 10 s handshake timeout.
    let mut s = connect_from(fx.addr(), LO1).await;
    let mut half = 1000u32.to_be_bytes().to_vec();
    half.extend([7u8; 100]);
    s.write_all(&half).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    assert_eq!(counter(&fx, |m| &m.closed_frame_timeout), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_connection_idle_for_idle_timeout_is_closed_and_the_client_reconnects() {
    let fx = Fixture::start_with(ListenerConfig {
        idle_timeout: Duration::from_millis(300),
        ..config(0)
    })
    .await;
    let c = fx.client("n1", LO1);
    // A request running longer than idle_timeout keeps its connection.
    let r = c.request("sleep", json!({"ms": 700}), T).await.unwrap();
    assert!(r.is_ok());
    assert_eq!(counter(&fx, |m| &m.closed_idle_timeout), 0);
    let first = c.local_addr();
    // Frames more often than idle_timeout keep it too.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
    }
    assert_eq!(c.local_addr(), first);
    // Silence closes it; the next request reconnects and is answered.
    wait_for("idle close", || {
        fx.listener
            .metrics()
            .closed_idle_timeout
            .load(Ordering::SeqCst)
            == 1
    })
    .await;
    wait_for("client sees the close", || !c.is_connected()).await;
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
    assert_ne!(c.local_addr(), first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_frame_over_1_mib_is_refused_on_its_length() {
    let fx = Fixture::start_with(ListenerConfig {
        max_frame: 16 << 20,
        ..config(0)
    })
    .await;
    let k = &fx.keyring;
    // Only the length is sent: the close cannot come from reading (or waiting for) a body.
    let mut s = connect_from(fx.addr(), LO1).await;
    let len = om::listener::UNAUTH_MAX_FRAME + 1;
    s.write_all(&len.to_be_bytes()).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(1)).await);
    assert_eq!(fx.rejected(ErrorKind::Oversize), 1);

    // A 1 MiB frame is fine before authentication, and a 2 MiB one after it.
    let mut s = BufReader::new(connect_from(fx.addr(), LO1).await);
    let pad = "x".repeat(900_000);
    send(
        &mut s,
        &request_frame(k, "n1", 1, "echo", json!({"pad": pad})),
    )
    .await;
    assert!(matches!(read_one(&mut s, k, T).await, Read::Frame(1, r) if r.is_ok()));
    let pad = "x".repeat(2 << 20);
    send(
        &mut s,
        &request_frame(k, "n1", 2, "echo", json!({"pad": pad})),
    )
    .await;
    assert!(matches!(read_one(&mut s, k, T).await, Read::Frame(2, r) if r.is_ok()));
    assert_eq!(fx.rejected(ErrorKind::Oversize), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_buffers_share_one_budget() {
    let fx = Fixture::start_with(ListenerConfig {
        max_frame: 16 << 20,
        unauth_budget: 3 << 20,
        ..config(0)
    })
    .await;
    // Each connection sends 600 KB of a 1 MiB frame: its buffer grows to 1 MiB
    // (64 KiB doubling), so the budget of 3 MiB holds three and the fourth is closed.
    let mut held = Vec::new();
    for i in 0..4 {
        let mut s = connect_from(fx.addr(), LO1).await;
        let mut part = om::listener::UNAUTH_MAX_FRAME.to_be_bytes().to_vec();
        part.extend(vec![1u8; 600_000]);
        // The fourth may be closed while it is still writing (a broken pipe).
        let wrote = s.write_all(&part).await;
        if i < 3 {
            wrote.unwrap();
            wait_for("buffer charged", || {
                fx.handle.as_ref().unwrap().unauth_buffered() == (i + 1) * (1 << 20)
            })
            .await;
            held.push(s);
        } else {
            assert!(closed_within(&mut s, Duration::from_secs(2)).await);
        }
    }
    assert_eq!(counter(&fx, |m| &m.closed_unauth_budget), 1);
    for s in &mut held {
        assert!(!closed_within(s, Duration::from_millis(50)).await);
    }
    // Closing one gives its share back.
    held.pop();
    wait_for("share given back", || {
        fx.listener
            .metrics()
            .open_connections
            .load(Ordering::SeqCst)
            == 2
    })
    .await;
    let c = fx.client("n1", LO2);
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
}

/// Requests timed right at the node's idle close: without `idle_reconnect` about one in
/// five of these was written to a connection the node had just closed (measured: 51 and
/// 66 of 300 failed with "connection closed by the node").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_does_not_race_the_idle_close() {
    let fx = Fixture::start_with(ListenerConfig {
        idle_timeout: Duration::from_millis(30),
        ..config(0)
    })
    .await;
    let c = ClientOptions::new(fx.addr().to_string(), fx.keyring.clone(), "n1")
        .idle_reconnect(Duration::from_millis(15))
        .build();
    let mut failed = Vec::new();
    for i in 0..150u64 {
        tokio::time::sleep(Duration::from_micros(29_000 + (i * 7919) % 2000)).await;
        if let Err(e) = c.request("echo", json!({}), T).await {
            failed.push(e.to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..1]
    );
    // Used again within idle_reconnect, the connection is kept.
    let local = c.local_addr();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
    }
    assert_eq!(c.local_addr(), local);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forger_at_a_members_address_cannot_cut_its_established_connection() {
    let fx = Fixture::start_with(ListenerConfig {
        blacklist_ttl: Duration::from_millis(800),
        ..config(0)
    })
    .await;
    // The real n1, connected and authenticated.
    let n1 = fx.client("n1", LO1);
    assert!(n1.request("echo", json!({}), T).await.unwrap().is_ok());
    // Someone on the same address sends garbage under n1's name until it is blacklisted.
    let forged = Keyring::new("test", "guess");
    for i in 1..=6u64 {
        let wait = if i <= 5 {
            T
        } else {
            Duration::from_millis(100)
        };
        one_shot(
            &fx,
            LO1,
            &request_frame(&forged, "n1", i, "x", json!({})),
            wait,
        )
        .await;
    }
    wait_for("the pair is blacklisted", || {
        fx.listener.blacklist().is_blacklisted("n1", LO1)
    })
    .await;
    // n1's established connection is still served...
    for _ in 0..3 {
        assert!(n1.request("echo", json!({}), T).await.unwrap().is_ok());
    }
    // ...a new connection under its name from that address is not, until the entry expires.
    let f = request_frame(&fx.keyring, "n1", 99, "echo", json!({}));
    let r = one_shot(&fx, LO1, &f, Duration::from_millis(200)).await;
    assert!(matches!(r, Read::Nothing), "dropped while blacklisted");
    tokio::time::sleep(Duration::from_millis(900)).await;
    let r = one_shot(&fx, LO1, &f, T).await;
    assert!(
        matches!(r, Read::Frame(99, ref resp) if resp.is_ok()),
        "served after expiry"
    );
    assert_eq!(fx.listener.blacklist().summary(), json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_frames_are_refused_but_do_not_blacklist_their_sender() {
    let fx = Fixture::start().await;
    let captured = request_frame(&fx.keyring, "n2", 7, "echo", json!({}));
    assert!(matches!(
        one_shot(&fx, LO1, &captured, T).await,
        Read::Frame(7, _)
    ));
    for _ in 0..10 {
        one_shot(&fx, LO1, &captured, Duration::from_millis(50)).await;
    }
    wait_for("replays refused", || fx.rejected(ErrorKind::Replayed) == 10).await;
    assert!(!fx.listener.blacklist().is_blacklisted("n2", LO1));
    assert_eq!(fx.listener.blacklist().summary(), json!({}));
    let c = fx.client("n2", LO1);
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_names_take_one_entry_per_address() {
    let fx = Fixture::start().await;
    let forged = Keyring::new("test", "guess");
    for i in 0..200u64 {
        let name = format!("fake{i}");
        let f = request_frame(&forged, &name, i, "x", json!({}));
        one_shot(&fx, LO2, &f, Duration::from_millis(20)).await;
    }
    // 16 names of their own, then everything else from 127.0.0.2 in one shared entry.
    let entries = fx.listener.blacklist().entries();
    assert_eq!(
        entries.len(),
        om::listener::blacklist::NAMES_PER_ADDR + 1,
        "{entries:?}"
    );
    assert!(fx.listener.blacklist().is_blacklisted("*", LO2));
    // Members, even from that address, are still served.
    let c = fx.client("n3", LO2);
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
}
