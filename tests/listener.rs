//! Listener: the handshake and its refusals, per-kind rejection counters, blacklist,
//! pipelining, dequeue, stop/restart, connection caps, deadlines, the handshake rate, replays,
//! and the client against it. Real TCP on loopback; raw sessions are driven byte by byte.

use om::listener::{BoxFuture, Handler, Listener, ListenerConfig, ListenerHandle, RequestCtx};
use om::wire::{
    parse_answer, read_frame, Body, ClientError, ClientOptions, ErrorKind, HelloAnswer, Initiator,
    Keyring, Message, Opener, RefusalCode, ReqId, Request, Response, Sealer, Status, EMPTY_PACKET,
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
            let options = req.options.to_value().unwrap_or_default();
            match req.action.as_str() {
                "sleep" => {
                    let ms = options["ms"].as_u64().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Response::ok(json!({"reqid": ctx.reqid.to_string(), "options": options}))
                }
                "panic" => panic!("handler exploded"),
                "whoami" => Response::ok(json!({
                    "sender": ctx.sender,
                    "ip": ctx.peer.ip().to_string(),
                    "member": ctx.member,
                })),
                _ => Response::ok(json!({"action": req.action, "options": options})),
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
const SECRET: &str = "good-secret-good-secret-good-secret";

impl Fixture {
    async fn start() -> Fixture {
        Fixture::start_with(config(0)).await
    }

    async fn start_with(cfg: ListenerConfig) -> Fixture {
        Fixture::named("me", cfg).await
    }

    async fn named(name: &str, cfg: ListenerConfig) -> Fixture {
        let keyring = Keyring::new("test", SECRET);
        let members: BTreeSet<String> = ["n1", "n2", "n3", "me", "other"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let members = Arc::new(RwLock::new(members));
        let handler = Arc::new(TestHandler::default());
        let listener = Listener::new(name, keyring.clone(), members.clone(), handler.clone());
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

    fn handled(&self) -> u64 {
        self.handler.handled.load(Ordering::SeqCst)
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

fn data(r: &Response) -> Value {
    r.data.to_value().unwrap()
}

/// What a node answered to a hello.
enum Answer {
    Session(Raw),
    Refused(Option<RefusalCode>, String),
    Closed,
    Nothing,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Session(_) => f.write_str("Session"),
            Answer::Refused(c, r) => write!(f, "Refused({c:?}, {r})"),
            Answer::Closed => f.write_str("Closed"),
            Answer::Nothing => f.write_str("Nothing"),
        }
    }
}

/// A session driven by hand, so a test can send exactly the bytes it wants.
struct Raw {
    s: BufReader<TcpStream>,
    sealer: Sealer,
    opener: Opener,
}

/// Sends `bytes` on `s` and reads the node's answer to the hello in them.
async fn hello_with(
    mut s: BufReader<TcpStream>,
    init: Initiator,
    bytes: &[u8],
    wait: Duration,
) -> Answer {
    if s.get_mut().write_all(bytes).await.is_err() {
        return Answer::Closed;
    }
    match tokio::time::timeout(wait, read_frame(&mut s, 1 << 16)).await {
        Err(_) => Answer::Nothing,
        Ok(Ok(None)) | Ok(Err(_)) => Answer::Closed,
        Ok(Ok(Some(f))) => match parse_answer(f.body()).unwrap() {
            HelloAnswer::Welcome(noise) => {
                let (sealer, opener, name) = init.finish(noise).expect("the welcome opens");
                assert!(!name.is_empty());
                Answer::Session(Raw { s, sealer, opener })
            }
            HelloAnswer::Refused(r) => Answer::Refused(r.code, r.reason),
        },
    }
}

/// Opens a connection from `src` and says hello as `sender` toward `receiver` with `k`.
async fn hello(
    fx: &Fixture,
    src: IpAddr,
    k: &Keyring,
    sender: &str,
    receiver: &str,
    wait: Duration,
) -> Answer {
    let s = BufReader::new(connect_from(fx.addr(), src).await);
    let (init, bytes) = Initiator::start(k, sender, receiver).unwrap();
    hello_with(s, init, &bytes, wait).await
}

/// A session as member `sender` from `src`.
async fn session(fx: &Fixture, src: IpAddr, sender: &str) -> Raw {
    match hello(fx, src, &fx.keyring, sender, "", T).await {
        Answer::Session(r) => r,
        other => panic!("no session: {other:?}"),
    }
}

fn refused(a: &Answer, code: RefusalCode) -> bool {
    matches!(a, Answer::Refused(Some(c), _) if *c == code)
}

enum Read {
    Frame(ReqId, Response),
    Closed,
    Nothing,
}

impl Raw {
    /// The records of one request.
    fn request(&mut self, reqid: u64, action: &str, options: Value) -> Vec<u8> {
        self.message(
            &Message::request(ReqId::Int(reqid), Request::new(action, options))
                .encode()
                .unwrap(),
        )
    }

    /// The records of one message's plaintext.
    fn message(&mut self, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.sealer.seal(plain, &mut out).unwrap();
        out
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.get_mut().write_all(bytes).await.unwrap();
    }

    /// Reads one response, or reports a close or silence within `wait`.
    async fn read(&mut self, wait: Duration) -> Read {
        loop {
            match tokio::time::timeout(wait, read_frame(&mut self.s, 1 << 16)).await {
                Err(_) => return Read::Nothing,
                Ok(Ok(None)) | Ok(Err(_)) => return Read::Closed,
                Ok(Ok(Some(f))) => {
                    let Some(plain) = self
                        .opener
                        .open(f.body(), u32::MAX)
                        .expect("the node's records open")
                    else {
                        continue;
                    };
                    let m = Message::decode(&plain).unwrap();
                    let Body::Response(r) = m.body else {
                        panic!("a request from the node")
                    };
                    return Read::Frame(m.reqid, r);
                }
            }
        }
    }
}

fn id(n: u64) -> ReqId {
    ReqId::Int(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_responses_come_back_out_of_order_matched_by_reqid() {
    let fx = Fixture::start().await;
    let mut r = session(&fx, LO1, "n1").await;
    let mut both = r.request(1, "sleep", json!({"ms": 400}));
    both.extend(r.request(2, "sleep", json!({"ms": 0})));
    r.send(&both).await;
    let Read::Frame(first, r1) = r.read(T).await else {
        panic!("no first response")
    };
    let Read::Frame(second, r2) = r.read(T).await else {
        panic!("no second response")
    };
    assert_eq!(
        (first, second),
        (id(2), id(1)),
        "the fast request overtakes the slow one"
    );
    assert_eq!(data(&r1)["reqid"], "2");
    assert_eq!(data(&r2)["options"]["ms"], 400);

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
            assert_eq!(data(&r)["options"]["i"], i);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(fx.listener.metrics().connections.load(Ordering::SeqCst), 2);
    assert_eq!(fx.listener.metrics().sessions.load(Ordering::SeqCst), 2);
    assert_eq!(fx.listener.metrics().rejected_total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_at_once_and_messages_larger_than_a_record() {
    let fx = Fixture::start_with(ListenerConfig {
        max_frame: 4 << 20,
        ..config(0)
    })
    .await;
    let mut tasks = Vec::new();
    for c in 0..32u64 {
        let client = fx.client(["n1", "n2", "n3"][c as usize % 3], LO1);
        tasks.push(tokio::spawn(async move {
            for i in 0..20u64 {
                let r = client
                    .request("echo", json!({"c": c, "i": i}), T)
                    .await
                    .unwrap();
                assert_eq!(data(&r)["options"], json!({"c": c, "i": i}));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(fx.handled(), 640);
    assert_eq!(fx.listener.metrics().connections.load(Ordering::SeqCst), 32);
    // 300 KB each way: chunked into 5 records each.
    let c = fx.client("n1", LO1);
    let pad = "x".repeat(300_000);
    let r = c.request("echo", json!({"pad": pad}), T).await.unwrap();
    assert_eq!(
        data(&r)["options"]["pad"].as_str().map(str::len),
        Some(300_000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_own_code_and_is_counted() {
    let fx = Fixture::start().await;
    let k = &fx.keyring;

    // Another secret, another cluster name: Auth, counted toward the blacklist.
    let a = hello(&fx, LO1, &Keyring::new("test", "bad-secret"), "n1", "", T).await;
    assert!(refused(&a, RefusalCode::Auth), "{a:?}");
    let a = hello(&fx, LO1, &Keyring::new("other", SECRET), "n2", "", T).await;
    assert!(refused(&a, RefusalCode::Auth), "{a:?}");
    assert_eq!(fx.rejected(ErrorKind::Auth), 2);

    // A stranger asking for a member session is refused before any crypto.
    let attempts = fx.decrypts();
    let a = hello(&fx, LO1, k, "stranger", "", T).await;
    assert!(refused(&a, RefusalCode::NotMember), "{a:?}");
    assert_eq!(fx.decrypts(), attempts);
    // A join session: only join is served, flagged as from a non-member.
    let Answer::Session(mut j) = hello(&fx, LO1, &k.joining(), "stranger", "", T).await else {
        panic!("no join session")
    };
    let bytes = j.request(10, "daemon_status", json!({}));
    j.send(&bytes).await;
    assert!(
        matches!(j.read(T).await, Read::Frame(i, r) if i == id(10) && r.status == Status::Forbidden.wire())
    );
    let bytes = j.request(11, "join", json!({"node": "stranger"}));
    j.send(&bytes).await;
    let Read::Frame(_, r) = j.read(T).await else {
        panic!("join not served")
    };
    assert_eq!(data(&r)["action"], "join");
    assert_eq!(fx.rejected(ErrorKind::UnknownSender), 2);

    // The hello names another receiver: misaddressed; naming this node is fine.
    let a = hello(&fx, LO1, k, "n1", "n9", T).await;
    assert!(refused(&a, RefusalCode::Misaddressed), "{a:?}");
    assert!(matches!(
        hello(&fx, LO1, k, "n1", "me", T).await,
        Answer::Session(_)
    ));

    // v1 frames, short and long, are told the node speaks v2.
    let mut v1 = vec![0, 0, 0, 100, 1, 2, b'n', b'1'];
    v1.extend([7u8; 96]);
    let mut long_v1 = vec![0, 0, 4, 0, 1, 2, b'n', b'1'];
    long_v1.extend([7u8; 1020]);
    for frame in [v1, long_v1] {
        let (init, _) = Initiator::start(k, "n1", "").unwrap();
        let s = BufReader::new(connect_from(fx.addr(), LO1).await);
        let a = hello_with(s, init, &frame, T).await;
        assert!(refused(&a, RefusalCode::Version), "{a:?}");
        let Answer::Refused(_, why) = a else {
            unreachable!()
        };
        assert!(why.contains("v2") && why.contains("v1"), "{why}");
    }
    assert_eq!(fx.rejected(ErrorKind::BadVersion), 2);

    // Malformed hellos: another kind byte, a sender that is not UTF-8.
    let (init, mut bad) = Initiator::start(k, "n1", "").unwrap();
    bad[5] = 2;
    let a = hello_with(
        BufReader::new(connect_from(fx.addr(), LO1).await),
        init,
        &bad,
        T,
    )
    .await;
    assert!(refused(&a, RefusalCode::Malformed), "{a:?}");
    let (init, mut bad) = Initiator::start(k, "n1", "").unwrap();
    bad[8] = 0xff;
    let a = hello_with(
        BufReader::new(connect_from(fx.addr(), LO1).await),
        init,
        &bad,
        T,
    )
    .await;
    assert!(refused(&a, RefusalCode::Malformed), "{a:?}");
    // A first frame longer than any hello is refused on its length alone.
    let (init, _) = Initiator::start(k, "n1", "").unwrap();
    let a = hello_with(
        BufReader::new(connect_from(fx.addr(), LO1).await),
        init,
        &10_000u32.to_be_bytes(),
        T,
    )
    .await;
    assert!(matches!(a, Answer::Closed), "{a:?}");
    assert_eq!(fx.rejected(ErrorKind::Oversize), 1);

    // Inside a session: garbage (no reqid: no answer), a bad body with a reqid (answered
    // BAD_PAYLOAD), a string reqid (echoed as sent), a response sent to the node (ignored).
    let mut r = session(&fx, LO1, "n2").await;
    let garbage = r.message(b"\xc1 not msgpack");
    r.send(&garbage).await;
    // {"reqid": 13, "action": 1}, in that order.
    let mut bad_body = vec![0x82, 0xa5];
    bad_body.extend_from_slice(b"reqid");
    bad_body.extend_from_slice(&[13, 0xa6]);
    bad_body.extend_from_slice(b"action");
    bad_body.push(1);
    let bad = r.message(&bad_body);
    r.send(&bad).await;
    assert!(
        matches!(r.read(T).await, Read::Frame(i, r) if i == id(13) && r.status == Status::BadPayload.wire())
    );
    let zeek = Message::request(
        ReqId::Str("zeek-1f".into()),
        Request::new("echo", json!({})),
    )
    .encode()
    .unwrap();
    let bytes = r.message(&zeek);
    r.send(&bytes).await;
    assert!(
        matches!(r.read(T).await, Read::Frame(ReqId::Str(s), resp) if s == "zeek-1f" && resp.is_ok())
    );
    let resp = Message::response(id(14), Response::ok(json!(1)))
        .encode()
        .unwrap();
    let bytes = r.message(&resp);
    r.send(&bytes).await;
    wait_for("bad payloads", || fx.rejected(ErrorKind::BadPayload) == 4).await;
    // A record changed on the way ends the session.
    let mut tampered = r.request(15, "echo", json!({}));
    tampered[10] ^= 1;
    r.send(&tampered).await;
    assert!(matches!(r.read(T).await, Read::Closed));
    assert_eq!(fx.rejected(ErrorKind::Auth), 3);

    // Truncated: the stream ends inside a hello.
    let mut s = connect_from(fx.addr(), LO1).await;
    let (_, h) = Initiator::start(k, "n1", "").unwrap();
    s.write_all(&h[..h.len() - 3]).await.unwrap();
    s.shutdown().await.unwrap();
    wait_for("truncated", || fx.rejected(ErrorKind::Truncated) == 1).await;

    let m = fx.listener.metrics();
    let expected = [
        (ErrorKind::Auth, 3),
        (ErrorKind::UnknownSender, 2),
        (ErrorKind::BadSender, 1),
        (ErrorKind::Misaddressed, 1),
        (ErrorKind::BadVersion, 2),
        (ErrorKind::BadPayload, 4),
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
    // Served: join, echo with the string reqid.
    assert_eq!(fx.handled(), 2);
    // No pair reached 5 invalid handshakes.
    assert_eq!(fx.listener.blacklist().blacklisted_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_invalid_handshakes_blacklist_the_pair_and_the_sixth_costs_no_crypto() {
    let fx = Fixture::start().await;
    let bad = Keyring::new("test", "wrong-secret");
    for i in 1..=5u64 {
        let a = hello(&fx, LO1, &bad, "n2", "", T).await;
        assert!(refused(&a, RefusalCode::Auth), "{a:?}");
        assert_eq!(fx.rejected(ErrorKind::Auth), i);
    }
    assert!(fx.listener.blacklist().is_blacklisted("n2", LO1));
    assert_eq!(fx.listener.metrics().blacklisted.load(Ordering::SeqCst), 1);
    let attempts = fx.decrypts();
    assert_eq!(attempts, 5);

    // The 6th hello, even a valid one, is refused before any crypto, and told why.
    let a = hello(&fx, LO1, &fx.keyring, "n2", "", T).await;
    let Answer::Refused(Some(RefusalCode::Blacklisted), why) = a else {
        panic!("{a:?}")
    };
    assert!(why.contains("blacklist clear"), "{why}");
    assert_eq!(fx.dropped(), 1);
    assert_eq!(
        fx.decrypts(),
        attempts,
        "no handshake for a blacklisted pair"
    );
    assert_eq!(fx.handled(), 0);
    // The client reports it as a refusal with the node's reason.
    let e = fx
        .client("n2", LO1)
        .request("echo", json!({}), T)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused { refusal, .. } if refusal.code == Some(RefusalCode::Blacklisted)),
        "{e}"
    );

    let st = serde_json::to_value(fx.listener.blacklist().status()).unwrap();
    assert_eq!(st["n2"]["count"], 5);
    assert_eq!(st["n2"]["blacklisted"], true);
    assert_eq!(st["n2"]["addrs"]["127.0.0.1"]["count"], 5);
    assert_eq!(
        serde_json::to_value(fx.listener.blacklist().summary()).unwrap(),
        json!({"n2": 5})
    );
    // Other members and other addresses are unaffected.
    let c = fx.client("n1", LO1);
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
    let c = fx.client("n2", LO2);
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());

    // clear empties it; the pair is served again.
    fx.listener.blacklist().clear();
    assert_eq!(
        serde_json::to_value(fx.listener.blacklist().status()).unwrap(),
        json!({})
    );
    let c = fx.client("n2", LO1);
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forger_from_another_address_cannot_blacklist_a_member() {
    let fx = Fixture::start().await;
    let forged = Keyring::new("test", "guess");
    for _ in 1..=8u64 {
        hello(&fx, LO2, &forged, "n1", "", T).await;
    }
    assert!(fx.listener.blacklist().is_blacklisted("n1", LO2));
    assert_eq!(fx.dropped(), 3);
    assert!(!fx.listener.blacklist().is_blacklisted("n1", LO1));
    let st = serde_json::to_value(fx.listener.blacklist().status()).unwrap();
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
        data(&r),
        json!({"sender": "n1", "ip": "127.0.0.1", "member": true})
    );
    // Even with the right key, n1 from the forger's address stays refused.
    let e = fx
        .client("n1", LO2)
        .request("whoami", json!({}), T)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Refused { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_handshake_resets_the_consecutive_count() {
    let fx = Fixture::start().await;
    let bad = Keyring::new("test", "wrong-secret");
    for _ in 0..4 {
        hello(&fx, LO1, &bad, "n3", "", T).await;
    }
    assert_eq!(fx.rejected(ErrorKind::Auth), 4);
    // A welcome alone proves nothing (a replayed hello gets one): the count is reset once
    // the session's first record opens.
    let Answer::Session(mut r) = hello(&fx, LO1, &fx.keyring, "n3", "", T).await else {
        panic!("no session")
    };
    assert_eq!(
        serde_json::to_value(fx.listener.blacklist().status()).unwrap()["n3"]["count"],
        4
    );
    let bytes = r.request(1, "echo", json!({}));
    r.send(&bytes).await;
    assert!(matches!(r.read(T).await, Read::Frame(..)));
    assert_eq!(fx.listener.blacklist().get("n3", LO1), None);
    for _ in 0..4 {
        hello(&fx, LO1, &bad, "n3", "", T).await;
    }
    assert!(!fx.listener.blacklist().is_blacklisted("n3", LO1));
    assert_eq!(
        serde_json::to_value(fx.listener.blacklist().status()).unwrap()["n3"]["count"],
        4
    );
    hello(&fx, LO1, &bad, "n3", "", T).await;
    assert!(fx.listener.blacklist().is_blacklisted("n3", LO1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_packets_dequeue_actions_before_and_inside_a_session() {
    let fx = Fixture::start().await;
    let c = fx.client("n1", LO1);
    c.send_empty().await.unwrap();
    c.send_empty().await.unwrap();
    wait_for("two dequeues", || {
        fx.handler.dequeued.load(Ordering::SeqCst) == 2
    })
    .await;
    // A raw empty packet before the hello and one between two requests.
    let s = BufReader::new(connect_from(fx.addr(), LO1).await);
    let (init, h) = Initiator::start(&fx.keyring, "n1", "").unwrap();
    let mut bytes = EMPTY_PACKET.to_vec();
    bytes.extend(h);
    let Answer::Session(mut r) = hello_with(s, init, &bytes, T).await else {
        panic!("no session")
    };
    let mut bytes = r.request(1, "echo", json!({}));
    bytes.extend_from_slice(&EMPTY_PACKET);
    bytes.extend(r.request(2, "echo", json!({})));
    r.send(&bytes).await;
    assert!(matches!(r.read(T).await, Read::Frame(..)));
    assert!(matches!(r.read(T).await, Read::Frame(..)));
    assert_eq!(fx.handler.dequeued.load(Ordering::SeqCst), 4);
    assert_eq!(
        fx.listener.metrics().empty_packets.load(Ordering::SeqCst),
        4
    );
    assert_eq!(fx.handled(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_closes_the_port_and_start_rebinds() {
    let mut fx = Fixture::start().await;
    let addr = fx.addr();
    let c = fx.client("n1", LO1);
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
    // Put n2 on the blacklist: it must survive the restart.
    for _ in 0..5 {
        hello(&fx, LO1, &Keyring::new("test", "x"), "n2", "", T).await;
    }
    assert!(fx.listener.blacklist().is_blacklisted("n2", LO1));

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
    let r = match c.request("echo", json!({"again": true}), T).await {
        Ok(r) => r,
        // The first request may still see the old, closed connection.
        Err(ClientError::Closed { .. }) => {
            c.request("echo", json!({"again": true}), T).await.unwrap()
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(data(&r)["options"]["again"], true);
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
    // Asking for a receiver by name: another node's welcome fails the handshake.
    let wrong = ClientOptions::new(fx.addr().to_string(), fx.keyring.clone(), "n1")
        .receiver("n2")
        .build();
    let e = wrong.request("echo", json!({}), T).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused { refusal, .. } if refusal.code == Some(RefusalCode::Misaddressed)),
        "{e}"
    );
    let right = ClientOptions::new(fx.addr().to_string(), fx.keyring.clone(), "n1")
        .receiver("me")
        .build();
    assert!(right.request("echo", json!({}), T).await.unwrap().is_ok());
    assert_eq!(right.node_name().as_deref(), Some("me"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_internal() {
    let fx = Fixture::start().await;
    let c = fx.client("n1", LO1);
    let r = c.request("panic", json!({}), T).await.unwrap();
    assert_eq!(r.status, Status::Internal.wire());
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_applies_to_the_next_handshake_and_the_next_request() {
    let fx = Fixture::start().await;
    let c = fx.client("n4", LO1);
    let e = c.request("echo", json!({}), T).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused { refusal, .. } if refusal.code == Some(RefusalCode::NotMember)),
        "{e}"
    );
    fx.members.write().unwrap().insert("n4".into());
    let r = c.request("whoami", json!({}), T).await.unwrap();
    assert_eq!(data(&r)["member"], true);
    // Removed while its session is open: it may only ask to join from then on.
    fx.members.write().unwrap().remove("n4");
    let r = c.request("whoami", json!({}), T).await.unwrap();
    assert_eq!(r.status, Status::Forbidden.wire());
    let r = c.request("join", json!({}), T).await.unwrap();
    assert_eq!(data(&r)["action"], "join");
}

/// Whether the listener closed `s` within `wait` (end of stream or reset).
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A refusal frame before the close.
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
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
async fn a_connection_that_never_completes_a_handshake_is_closed_after_handshake_timeout() {
    let fx = Fixture::start_with(ListenerConfig {
        handshake_timeout: Duration::from_millis(300),
        ..config(0)
    })
    .await;
    let started = tokio::time::Instant::now();
    let mut idle = connect_from(fx.addr(), LO1).await;
    // Empty packets are not a handshake: they do not keep a connection open.
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
    // A welcomed hello is not a session yet: without a record it is closed on time too
    // (a replayed hello gets this far).
    let mut replayed = connect_from(fx.addr(), LO1).await;
    let (_, h) = Initiator::start(&fx.keyring, "n1", "").unwrap();
    replayed.write_all(&h).await.unwrap();
    assert!(closed_within(&mut replayed, Duration::from_secs(2)).await);
    assert_eq!(counter(&fx, |m| &m.closed_handshake_timeout), 3);
    assert_eq!(counter(&fx, |m| &m.sessions), 0);

    // A session outlives the handshake timeout.
    let c = fx.client("n1", LO2);
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
    let local = c.local_addr();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
    assert_eq!(c.local_addr(), local, "the connection was kept");
    assert_eq!(counter(&fx, |m| &m.closed_handshake_timeout), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_frame_is_closed_by_frame_timeout() {
    let fx = Fixture::start_with(ListenerConfig {
        frame_timeout: Duration::from_millis(300),
        ..config(0)
    })
    .await;
    // In a session: a record of 60000 bytes of which 100 arrive.
    let mut r = session(&fx, LO1, "n1").await;
    let bytes = r.request(1, "echo", json!({}));
    r.send(&bytes).await;
    assert!(matches!(r.read(T).await, Read::Frame(..)));
    let started = tokio::time::Instant::now();
    let mut half = 60_000u32.to_be_bytes().to_vec();
    half.extend([7u8; 100]);
    r.send(&half).await;
    assert!(matches!(r.read(Duration::from_secs(3)).await, Read::Closed));
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(280),
        "closed after {after:?}"
    );

    // Before the session too, well before the 10 s handshake timeout: half a hello.
    let mut s = connect_from(fx.addr(), LO1).await;
    let mut half = 500u32.to_be_bytes().to_vec();
    half.extend([2u8; 100]);
    s.write_all(&half).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    assert_eq!(counter(&fx, |m| &m.closed_frame_timeout), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_idle_for_idle_timeout_is_closed_and_the_client_reconnects() {
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
        counter(&fx, |m| &m.closed_idle_timeout) == 1
    })
    .await;
    wait_for("client sees the close", || !c.is_connected()).await;
    assert!(c.request("echo", json!({}), T).await.unwrap().is_ok());
    assert_ne!(c.local_addr(), first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_limited_to_one_noise_message_and_messages_to_max_frame() {
    let fx = Fixture::start().await;
    // A record length over 65535 closes the session on the length alone.
    let mut r = session(&fx, LO1, "n1").await;
    r.send(&70_000u32.to_be_bytes()).await;
    assert!(matches!(r.read(T).await, Read::Closed));
    assert_eq!(fx.rejected(ErrorKind::Oversize), 1);
    // A message over max_frame (64 KiB here), in records of a valid size, closes it too.
    let mut r = session(&fx, LO1, "n1").await;
    let pad = "x".repeat(MAX_FRAME as usize + 10);
    let bytes = r.request(1, "echo", json!({"pad": pad}));
    r.send(&bytes).await;
    assert!(matches!(r.read(T).await, Read::Closed));
    assert_eq!(fx.rejected(ErrorKind::Oversize), 2);
    assert_eq!(fx.handled(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_buffers_share_one_budget() {
    let fx = Fixture::start_with(ListenerConfig {
        unauth_budget: 1500,
        ..config(0)
    })
    .await;
    // Each connection declares a 500-byte hello and sends 100 bytes of it: its buffer is
    // charged 500, so a budget of 1500 holds three and the fourth is closed.
    let mut held = Vec::new();
    for i in 0..4 {
        let mut s = connect_from(fx.addr(), LO1).await;
        let mut part = 500u32.to_be_bytes().to_vec();
        part.extend([2u8; 100]);
        let wrote = s.write_all(&part).await;
        if i < 3 {
            wrote.unwrap();
            wait_for("buffer charged", || {
                fx.handle.as_ref().unwrap().unauth_buffered() == (i + 1) * 500
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_past_the_rate_are_refused_before_any_crypto() {
    let fx = Fixture::start_with(ListenerConfig {
        handshake_rate: 2,
        ..config(0)
    })
    .await;
    let started = std::time::Instant::now();
    let mut refusals = 0;
    for _ in 0..10 {
        if refused(
            &hello(&fx, LO1, &fx.keyring, "n1", "", T).await,
            RefusalCode::RateLimited,
        ) {
            refusals += 1;
        }
    }
    // A burst of 2, then 2 a second.
    let allowed = 2.0 + 2.0 * started.elapsed().as_secs_f64();
    assert!(
        10 - refusals <= allowed.ceil() as u64,
        "{refusals} refused, {allowed} allowed"
    );
    assert!(refusals >= 1);
    assert_eq!(fx.decrypts(), 10 - refusals);
    assert_eq!(counter(&fx, |m| &m.refused_handshake_rate), refusals);
    // Another address has its own allowance; refusals do not blacklist.
    assert!(matches!(
        hello(&fx, LO2, &fx.keyring, "n1", "", T).await,
        Answer::Session(_)
    ));
    assert_eq!(
        serde_json::to_value(fx.listener.blacklist().summary()).unwrap(),
        json!({})
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(matches!(
        hello(&fx, LO1, &fx.keyring, "n1", "", T).await,
        Answer::Session(_)
    ));
}

/// Requests timed right at the node's idle close: without `idle_reconnect` about one in
/// five of these was written to a connection the node had just closed (measured: 51 and
/// 66 of 300 failed with "connection closed by the node").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_does_not_race_the_idle_close() {
    let fx = Fixture::start_with(ListenerConfig {
        idle_timeout: Duration::from_millis(30),
        handshake_rate: 0,
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
async fn a_forger_at_a_members_address_cannot_cut_its_established_session() {
    let fx = Fixture::start_with(ListenerConfig {
        blacklist_ttl: Duration::from_millis(800),
        ..config(0)
    })
    .await;
    // The real n1, connected and authenticated.
    let n1 = fx.client("n1", LO1);
    assert!(n1.request("echo", json!({}), T).await.unwrap().is_ok());
    // Someone on the same address sends bad hellos under n1's name until it is blacklisted.
    let forged = Keyring::new("test", "guess");
    for _ in 1..=6 {
        hello(&fx, LO1, &forged, "n1", "", T).await;
    }
    assert!(fx.listener.blacklist().is_blacklisted("n1", LO1));
    // n1's established session is still served...
    for _ in 0..3 {
        assert!(n1.request("echo", json!({}), T).await.unwrap().is_ok());
    }
    // ...a new session under its name from that address is not, until the entry expires.
    assert!(refused(
        &hello(&fx, LO1, &fx.keyring, "n1", "", T).await,
        RefusalCode::Blacklisted
    ));
    tokio::time::sleep(Duration::from_millis(900)).await;
    let Answer::Session(mut r) = hello(&fx, LO1, &fx.keyring, "n1", "", T).await else {
        panic!("not served after expiry")
    };
    let bytes = r.request(1, "echo", json!({}));
    r.send(&bytes).await;
    assert!(matches!(r.read(T).await, Read::Frame(..)));
    assert_eq!(
        serde_json::to_value(fx.listener.blacklist().summary()).unwrap(),
        json!({})
    );
}

/// Records a session's stream as an attacker on the wire would: the hello, then the
/// records of one request.
async fn record_stream(fx: &Fixture, receiver: &str) -> Vec<u8> {
    let s = BufReader::new(connect_from(fx.addr(), LO1).await);
    let (init, mut stream) = Initiator::start(&fx.keyring, "n2", receiver).unwrap();
    let Answer::Session(mut r) = hello_with(s, init, &stream, T).await else {
        panic!("no session")
    };
    let req = r.request(7, "echo", json!({"stop": "the daemon"}));
    r.send(&req).await;
    assert!(matches!(r.read(T).await, Read::Frame(i, _) if i == id(7)));
    stream.extend(req);
    stream
}

/// Sends a captured stream on a new connection; whether the connection was closed (the
/// node may first answer the replayed hello with a welcome).
async fn replay(addr: SocketAddr, stream: &[u8]) -> bool {
    let mut s = connect_from(addr, LO1).await;
    s.write_all(stream).await.unwrap();
    closed_within(&mut s, T).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_stream_replayed_anywhere_executes_nothing() {
    let mut fx = Fixture::start().await;
    let to_me = record_stream(&fx, "me").await;
    let to_anyone = record_stream(&fx, "").await;
    assert_eq!(fx.handled(), 2);
    let auth = fx.rejected(ErrorKind::Auth);

    // To the same node: the hello gets a fresh welcome, the request does not open.
    assert!(replay(fx.addr(), &to_me).await);
    assert!(replay(fx.addr(), &to_anyone).await);
    assert_eq!(fx.handled(), 2, "a replayed request ran");
    assert_eq!(fx.rejected(ErrorKind::Auth), auth + 2);

    // To the same node after a restart of its listener.
    let port = fx.addr().port();
    fx.handle.take().unwrap().shutdown().await;
    fx.handle = Some(fx.listener.start(&config(port)).await.unwrap());
    assert!(replay(fx.addr(), &to_me).await);
    assert_eq!(fx.handled(), 2);

    // To another member with the same secret: refused as misaddressed, or not opened.
    let other = Fixture::named("other", config(0)).await;
    assert!(replay(other.addr(), &to_me).await);
    assert!(replay(other.addr(), &to_anyone).await);
    assert_eq!(other.handled(), 0);
    assert_eq!(other.listener.metrics().sessions.load(Ordering::SeqCst), 0);

    // Reflected: the node's own welcome and response sent back to it.
    let mut s = connect_from(fx.addr(), LO1).await;
    let (_, h) = Initiator::start(&fx.keyring, "n1", "").unwrap();
    s.write_all(&h).await.unwrap();
    use tokio::io::AsyncReadExt;
    let mut welcome = vec![0u8; 64];
    let n = s.read(&mut welcome).await.unwrap();
    assert!(replay(fx.addr(), &welcome[..n]).await);
    assert_eq!(fx.handled(), 2);
    // None of it counts toward the blacklist: anyone can replay what they captured.
    assert_eq!(
        serde_json::to_value(fx.listener.blacklist().summary()).unwrap(),
        json!({})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_names_take_one_entry_per_address() {
    let fx = Fixture::start_with(ListenerConfig {
        handshake_rate: 0,
        ..config(0)
    })
    .await;
    // Join sessions: a made-up name in a member session is refused before any crypto
    // and not counted at all.
    let forged = Keyring::new("test", "guess").joining();
    for i in 0..200u64 {
        hello(&fx, LO2, &forged, &format!("fake{i}"), "", T).await;
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
