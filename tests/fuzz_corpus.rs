//! Replays the saved fuzz corpus (fuzz/corpus/<target>/*) through the same entry points
//! the fuzz targets call, and checks that the deterministic seeds are present and current.
//!
//! Regenerate the seeds after a deliberate format change with
//! `OM_REGEN_FUZZ_CORPUS=1 cargo test --test fuzz_corpus`.

use om::wire::fuzz::{fuzz_keyring, FrameReport, HandshakeReport, FUZZ_NODE};
use om::wire::{
    accept_for_testing, encode_refusal, fuzz_frame, fuzz_handshake, parse_hello, Doc, Initiator,
    Keyring, Message, RefusalCode, ReqId, Request, Response, EMPTY_PACKET, LEN_SIZE,
};
use serde_json::json;
use std::fs;
use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

const E_CLIENT: [u8; 32] = [1; 32];
const E_NODE: [u8; 32] = [2; 32];

fn hello(k: &Keyring, sender: &str, receiver: &str) -> Vec<u8> {
    Initiator::start_for_testing(k, sender, receiver, &E_CLIENT)
        .unwrap()
        .1[LEN_SIZE..]
        .to_vec()
}

fn request(reqid: u64, action: &str, options: impl Into<Doc>) -> Vec<u8> {
    Message::request(ReqId::Int(reqid), Request::new(action, options))
        .encode()
        .unwrap()
}

fn handshake_seeds() -> Vec<(String, Vec<u8>)> {
    let k = fuzz_keyring();
    let mut out = vec![
        ("valid-hello.bin".to_string(), hello(k, "n9", FUZZ_NODE)),
        ("valid-hello-any-receiver.bin".into(), hello(k, "n9", "")),
        (
            "valid-hello-255.bin".into(),
            hello(k, &"n".repeat(255), FUZZ_NODE),
        ),
        ("valid-hello-utf8.bin".into(), hello(k, "nœud-ü", "")),
        (
            "valid-hello-join.bin".into(),
            hello(&k.joining(), "joiner", ""),
        ),
    ];
    let h = hello(k, "n9", FUZZ_NODE);
    let acc = accept_for_testing(k, &parse_hello(&h).unwrap(), FUZZ_NODE, &E_NODE).unwrap();
    out.push((
        "answer-welcome.bin".into(),
        acc.welcome[LEN_SIZE..].to_vec(),
    ));
    out.push((
        "answer-refusal.bin".into(),
        encode_refusal(RefusalCode::Blacklisted, "blacklisted")[LEN_SIZE..].to_vec(),
    ));
    let edge = |name: &str, f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = h.clone();
        f(&mut v);
        (format!("edge-{name}.bin"), v)
    };
    out.push(edge("v1-version", &|v| v[0] = 1));
    out.push(edge("bad-kind", &|v| v[1] = 9));
    out.push(edge("bad-mode", &|v| v[2] = 0));
    out.push(edge("empty-sender", &|v| v[3] = 0));
    out.push(edge("sender-past-end", &|v| v[3] = 200));
    out.push(edge("bad-utf8", &|v| v[4] = 0xff));
    out.push(edge("truncated", &|v| {
        v.pop();
    }));
    out.push(edge("trailing", &|v| v.push(0)));
    out.push(edge("bad-tag", &|v| {
        let last = v.len() - 1;
        v[last] ^= 1;
    }));
    out.push(edge("changed-name", &|v| v[5] ^= 0x20));
    out.push((
        "edge-wrong-secret.bin".into(),
        hello(&Keyring::new("fuzz", "another secret"), "n9", ""),
    ));
    out.push(("edge-empty.bin".into(), vec![]));
    out
}

fn frame_seeds() -> Vec<(String, Vec<u8>)> {
    let addressed = raft::rpc::Addressed {
        cluster: "fuzz".to_string(),
        from: 1,
        to: 2,
        rpc: raft::rpc::Rpc::Vote(openraft::raft::VoteRequest::new(
            openraft::Vote::new(3, 1),
            None,
        )),
    };
    let mut out = vec![
        (
            "valid-join.bin".to_string(),
            request(1, "join", json!({"node": "n9", "port": 1214, "id": "77"})),
        ),
        (
            "valid-daemon-status.bin".into(),
            request(2, "daemon_status", json!({})),
        ),
        (
            "valid-set-service-monitor.bin".into(),
            request(
                3,
                "set_service_monitor",
                json!({"svcname": "svc1", "local_expect": "started", "global_expect": "started"}),
            ),
        ),
        (
            "valid-service-action.bin".into(),
            request(
                4,
                "service_action",
                json!({"svcname": "svc1", "command": ["compliance", "fix", "--moduleset", "foo"], "sync": true}),
            ),
        ),
        (
            "valid-raft-vote.bin".into(),
            request(5, "raft_vote", Doc::pack(&addressed).unwrap()),
        ),
        (
            "valid-string-reqid.bin".into(),
            Message::request(
                ReqId::Str("zeek-7".into()),
                Request::new("get_nodes", json!({})),
            )
            .encode()
            .unwrap(),
        ),
        (
            "valid-response-ok.bin".into(),
            Message::response(
                ReqId::Int(2),
                Response::ok(json!({"cluster": {"name": "c1"}})),
            )
            .encode()
            .unwrap(),
        ),
        (
            "valid-response-err.bin".into(),
            Message::response(ReqId::Int(3), Response::err(4, "only join"))
                .encode()
                .unwrap(),
        ),
        ("valid-bin-option.bin".into(), {
            let mut b = vec![0x83, 0xa5];
            b.extend_from_slice(b"reqid\x01\xa6action\xa1x\xa7options\xc4\x02\x01\x02");
            b
        }),
    ];
    let status = request(2, "daemon_status", json!({}));
    let mut trailing = status.clone();
    trailing.push(0xc0);
    let mut deep = json!(0);
    for _ in 0..200 {
        deep = json!([deep]);
    }
    out.extend([
        ("edge-trailing.bin".to_string(), trailing),
        ("edge-empty.bin".into(), vec![]),
        ("edge-reserved-c1.bin".into(), vec![0xc1]),
        (
            "edge-array-message.bin".into(),
            rmp_serde::to_vec(&(1, "daemon_status", json!({}))).unwrap(),
        ),
        (
            "edge-mixed.bin".into(),
            rmp_serde::to_vec_named(&json!({"reqid": 1, "action": "x", "status": 0})).unwrap(),
        ),
        (
            "edge-no-reqid.bin".into(),
            rmp_serde::to_vec_named(&json!({"action": "x"})).unwrap(),
        ),
        ("edge-ext-option.bin".into(), {
            let mut b = vec![0x83, 0xa5];
            b.extend_from_slice(b"reqid\x01\xa6action\xa1x\xa7options\xd4\x01\x00");
            b
        }),
        (
            "edge-huge-str-len.bin".into(),
            vec![
                0x83, 0xa5, b'r', b'e', b'q', b'i', b'd', 0xdb, 0xff, 0xff, 0xff, 0xff, 0x41,
            ],
        ),
        ("edge-deep-nesting.bin".into(), request(9, "clear", deep)),
        (
            "edge-stream-empty-packets.bin".into(),
            [EMPTY_PACKET, EMPTY_PACKET].concat(),
        ),
        ("edge-stream-short-length.bin".into(), vec![0, 0]),
        (
            "edge-stream-oversize.bin".into(),
            vec![0xff, 0xff, 0xff, 0xff, 1],
        ),
    ]);
    out
}

fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out: Vec<_> = handshake_seeds()
        .into_iter()
        .map(|(n, b)| ("handshake_decoder", n, b))
        .collect();
    out.extend(
        frame_seeds()
            .into_iter()
            .map(|(n, b)| ("frame_decoder", n, b)),
    );
    out
}

#[test]
fn seeds_are_committed_and_current() {
    let regen = std::env::var_os("OM_REGEN_FUZZ_CORPUS").is_some();
    for (target, name, bytes) in seeds() {
        let path = corpus_dir(target).join(&name);
        if regen {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &bytes).unwrap();
            continue;
        }
        let saved = fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (regenerate with OM_REGEN_FUZZ_CORPUS=1)",
                path.display()
            )
        });
        assert_eq!(saved, bytes, "{} is stale", path.display());
    }
}

fn replay(target: &str, f: impl Fn(&str, &[u8])) -> usize {
    let mut entries: Vec<_> = fs::read_dir(corpus_dir(target))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in &entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        f(&name, &fs::read(path).unwrap());
    }
    entries.len()
}

#[test]
fn handshake_corpus_replays_through_the_fuzz_entry_point() {
    let n = replay("handshake_decoder", |name, data| {
        let r: HandshakeReport = fuzz_handshake(data);
        if name.starts_with("valid-hello") {
            assert!(r.hello && r.accepted, "{name}: {r:?}");
        }
        if name.starts_with("answer-") {
            assert!(r.answer && !r.hello, "{name}: {r:?}");
        }
        if name.starts_with("edge-") {
            assert!(!r.accepted, "{name}: {r:?}");
        }
    });
    assert!(n >= 15, "only {n} handshake seeds");
}

#[test]
fn frame_corpus_replays_through_the_fuzz_entry_point() {
    let n = replay("frame_decoder", |name, data| {
        let r: FrameReport = fuzz_frame(data);
        let _ = om::api::fuzz_options(data);
        if name.starts_with("valid-") {
            assert!(r.message, "{name}: {r:?}");
        }
        if name.starts_with("edge-") {
            assert!(!r.message, "{name}: {r:?}");
        }
        if name.starts_with("edge-stream-") {
            assert!(r.frames > 0 || r.stream_error, "{name}: {r:?}");
        }
    });
    assert!(n >= 15, "only {n} frame seeds");
}
