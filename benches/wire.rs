//! Wire protocol benchmark: `cargo bench --bench wire`.
//!
//! Part 1 measures on one thread: a handshake (both sides, and the node's side alone), a
//! forged hello refused, MessagePack encoding, and seal+open of messages of about 200 B and
//! 64 KiB.
//! Part 2 runs a listener with an echo handler on loopback, on a single-threaded runtime in
//! its own OS thread (one core), and drives it from a client runtime on another thread:
//! one connection with one request in flight, one connection pipelining 64, and 32
//! connections with 8 each. The server thread's CPU time is read from /proc, which gives
//! the cost of one request on the server and so its capacity per core.
//! Every loop is bounded in time; traffic stays on 127.0.0.1.

use om::listener::{BoxFuture, Handler, Listener, ListenerConfig, RequestCtx};
use om::wire::{
    accept, parse_hello, ClientOptions, Initiator, Keyring, Message, Opener, ReqId, Request,
    Response, Sealer, LEN_SIZE,
};
use serde_json::json;
use std::collections::BTreeSet;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const MEASURE: Duration = Duration::from_millis(1500);
const LOAD: Duration = Duration::from_secs(3);

struct Rate {
    ops: u64,
    secs: f64,
}

impl Rate {
    fn per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    fn ns(&self) -> f64 {
        self.secs * 1e9 / self.ops as f64
    }
}

/// Runs `f` repeatedly for about `MEASURE` (after a short warm-up).
fn measure(mut f: impl FnMut()) -> Rate {
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(200) {
        f();
    }
    let start = Instant::now();
    let mut ops = 0u64;
    loop {
        for _ in 0..16 {
            f();
        }
        ops += 16;
        if start.elapsed() >= MEASURE {
            break;
        }
    }
    Rate {
        ops,
        secs: start.elapsed().as_secs_f64(),
    }
}

fn message_of_size(plaintext: usize) -> Vec<u8> {
    let mut pad = plaintext;
    loop {
        let m = Message::request(
            ReqId::Int(7),
            Request::new("raft_append", json!({"term": 3, "data": "x".repeat(pad)})),
        );
        let bytes = m.encode().unwrap();
        if bytes.len() <= plaintext {
            return bytes;
        }
        pad -= bytes.len() - plaintext;
    }
}

fn row(name: &str, r: &Rate, bytes: Option<usize>) {
    let mbs = bytes
        .map(|b| format!("{:>10.1}", r.per_sec() * b as f64 / 1e6))
        .unwrap_or_else(|| format!("{:>10}", "-"));
    println!("  {name:<34} {:>12.0} {:>10.0} {mbs}", r.per_sec(), r.ns());
}

/// A client sealer and the node's opener of one fresh session.
fn session(keyring: &Keyring) -> (Sealer, Opener) {
    let (init, hello) = Initiator::start(keyring, "node1", "").unwrap();
    let h = parse_hello(&hello[LEN_SIZE..]).unwrap();
    let acc = accept(keyring, &h, "node2").unwrap();
    let (sealer, _, _) = init.finish(&acc.welcome[LEN_SIZE + 2..]).unwrap();
    (sealer, acc.opener)
}

fn crypto_part() {
    println!("crypto and encoding, one thread");
    println!(
        "  {:<34} {:>12} {:>10} {:>10}",
        "operation", "ops/s", "ns/op", "MB/s"
    );
    let keyring = Keyring::new("bench", "a-cluster-secret-of-some-length");
    let r = measure(|| {
        black_box(session(black_box(&keyring)));
    });
    row("handshake, both sides (2 messages)", &r, None);
    let (init, hello) = Initiator::start(&keyring, "node1", "").unwrap();
    drop(init);
    let r = measure(|| {
        let h = parse_hello(black_box(&hello[LEN_SIZE..])).unwrap();
        black_box(accept(&keyring, &h, "node2").unwrap());
    });
    row("handshake, node side", &r, None);
    let forged = Initiator::start(&Keyring::new("bench", "wrong"), "node1", "")
        .unwrap()
        .1;
    let r = measure(|| {
        let h = parse_hello(black_box(&forged[LEN_SIZE..])).unwrap();
        black_box(accept(&keyring, &h, "node2").unwrap_err());
    });
    row("forged hello refused (no DH)", &r, None);
    for (label, size) in [("200 B", 200usize), ("64 KiB", 64 * 1024)] {
        let pt = message_of_size(size);
        let m = Message::decode(&pt).unwrap();
        let r = measure(|| {
            black_box(black_box(&m).encode().unwrap());
        });
        row(&format!("msgpack encode {label}"), &r, Some(pt.len()));
        let r = measure(|| {
            black_box(Message::decode(black_box(&pt)).unwrap());
        });
        row(&format!("msgpack decode {label}"), &r, Some(pt.len()));
        let (mut sealer, mut opener) = session(&keyring);
        let mut out = Vec::with_capacity(2 * size);
        let r = measure(|| {
            out.clear();
            sealer.seal(black_box(&pt), &mut out).unwrap();
            let mut rest = &out[..];
            while !rest.is_empty() {
                let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                black_box(opener.open(&rest[4..4 + len], u32::MAX).unwrap());
                rest = &rest[4 + len..];
            }
        });
        row(
            &format!("seal+open {label} ({} B on the wire)", out.len()),
            &r,
            Some(out.len()),
        );
    }
    println!();
}

struct Echo;

impl Handler for Echo {
    fn handle(&self, _ctx: RequestCtx, req: Request) -> BoxFuture<Response> {
        Box::pin(async move { Response::ok(req.options) })
    }
}

/// utime + stime of the calling thread, in seconds (from /proc, 10 ms resolution).
fn thread_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the ")" that ends the command name: state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f
        .get(11)
        .zip(f.get(12))
        .map(|(u, s)| u.parse::<f64>().unwrap_or(0.0) + s.parse::<f64>().unwrap_or(0.0))
        .unwrap_or(0.0);
    ticks / 100.0
}

enum ServerCmd {
    Cpu(mpsc::Sender<f64>),
    Stop,
}

fn listener_part() {
    println!("listener on loopback: echo handler, ~40 B options");
    println!("  server: one thread (current-thread runtime); clients: one other thread");
    println!(
        "  {:<28} {:>10} {:>12} {:>14} {:>16}",
        "scenario", "req/s", "mean lat", "server CPU/req", "req/s per core"
    );
    let keyring = Keyring::new("bench", "a-cluster-secret-of-some-length");
    let (addr_tx, addr_rx) = mpsc::channel();
    let (cmd_tx, cmd_rx) = mpsc::channel::<ServerCmd>();
    let server_keyring = keyring.clone();
    let server = std::thread::Builder::new()
        .name("bench-server".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let members: BTreeSet<String> = ["client".to_string()].into();
                let listener =
                    Listener::new("server", server_keyring, Arc::new(members), Arc::new(Echo));
                let cfg = ListenerConfig {
                    addr: "127.0.0.1".into(),
                    port: 0,
                    ..ListenerConfig::default()
                };
                let handle = listener.start(&cfg).await.unwrap();
                addr_tx.send(handle.local_addr()).unwrap();
                loop {
                    // Poll for commands without blocking the runtime.
                    match cmd_rx.try_recv() {
                        Ok(ServerCmd::Cpu(reply)) => {
                            let _ = reply.send(thread_cpu_secs());
                        }
                        Ok(ServerCmd::Stop) | Err(mpsc::TryRecvError::Disconnected) => break,
                        Err(mpsc::TryRecvError::Empty) => {
                            tokio::time::sleep(Duration::from_millis(5)).await
                        }
                    }
                }
                handle.shutdown().await;
            });
        })
        .unwrap();
    let addr = addr_rx.recv().unwrap();
    let server_cpu = || {
        let (tx, rx) = mpsc::channel();
        cmd_tx.send(ServerCmd::Cpu(tx)).unwrap();
        rx.recv().unwrap()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (name, conns, inflight) in [
        ("1 conn, 1 in flight", 1usize, 1usize),
        ("1 conn, 64 in flight", 1, 64),
        ("32 conns, 8 in flight each", 32, 8),
    ] {
        let done = Arc::new(AtomicU64::new(0));
        let lat_ns = Arc::new(AtomicU64::new(0));
        let cpu0 = server_cpu();
        let elapsed = rt.block_on(async {
            let mut clients = Vec::new();
            for _ in 0..conns {
                let c = ClientOptions::new(addr.to_string(), keyring.clone(), "client")
                    .connect()
                    .await
                    .unwrap();
                // Warm the connection.
                c.request("echo", json!({}), Duration::from_secs(5))
                    .await
                    .unwrap();
                clients.push(c);
            }
            let start = Instant::now();
            let deadline = start + LOAD;
            let mut tasks = Vec::new();
            for c in &clients {
                for t in 0..inflight {
                    let c = c.clone();
                    let done = done.clone();
                    let lat_ns = lat_ns.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut i = 0u64;
                        while Instant::now() < deadline {
                            let t0 = Instant::now();
                            let r = c
                                .request(
                                    "echo",
                                    json!({"task": t, "i": i, "k": "v"}),
                                    Duration::from_secs(10),
                                )
                                .await
                                .expect("echo request");
                            debug_assert!(r.is_ok());
                            lat_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                            done.fetch_add(1, Ordering::Relaxed);
                            i += 1;
                        }
                    }));
                }
            }
            for t in tasks {
                t.await.unwrap();
            }
            start.elapsed()
        });
        let cpu = server_cpu() - cpu0;
        let n = done.load(Ordering::Relaxed);
        let rps = n as f64 / elapsed.as_secs_f64();
        let mean_us = lat_ns.load(Ordering::Relaxed) as f64 / n as f64 / 1e3;
        let cpu_us = cpu * 1e6 / n as f64;
        println!(
            "  {name:<28} {rps:>10.0} {:>10.1}us {:>12.2}us {:>16.0}",
            mean_us,
            cpu_us,
            if cpu > 0.0 { n as f64 / cpu } else { f64::NAN }
        );
    }
    cmd_tx.send(ServerCmd::Stop).unwrap();
    server.join().unwrap();
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: keep it short then.
    let quick = !std::env::args().any(|a| a == "--bench");
    println!(
        "om wire protocol v2 benchmark ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if quick {
        println!("(not run with --bench: skipping measurements)");
        return;
    }
    println!();
    crypto_part();
    listener_part();
}
