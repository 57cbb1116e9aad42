//! Replays the saved fuzz corpus (fuzz/corpus/<target>/*) through the same entry points
//! the fuzz targets call, and checks that the deterministic seeds are present and current.
//!
//! Regenerate the seeds after a deliberate format change with
//! `OM_REGEN_FUZZ_CORPUS=1 cargo test --test fuzz_corpus`.

use om::wire::fuzz::{fuzz_keyring, FrameReport};
use om::wire::{fuzz_frame, fuzz_request, Envelope, Request, Response, EMPTY_PACKET};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

const TS: u64 = 1_700_000_000_000;

fn env(reqid: u64, action: &str, options: Value) -> Envelope {
    Envelope {
        ts_ms: TS,
        msg_id: 1000 + reqid,
        reqid,
        body: om::wire::Body::Request(Request::new(action, options)),
    }
}

fn seal(sender: &str, e: &Envelope, seed: u8) -> Vec<u8> {
    fuzz_keyring()
        .seal_with(sender, e, &[seed; 16], &[seed ^ 0x5a; 12])
        .unwrap()
}

/// The deterministic seeds: (target, file name, bytes).
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let join = env(1, "join", json!({"node": "n9", "port": 1214, "addr": null}));
    let status = env(2, "daemon_status", json!({}));
    let monitor = env(
        3,
        "set_service_monitor",
        json!({"svcname": "svc1", "local_expect": "started", "global_expect": "started", "reset_retries": true}),
    );
    let action = env(
        4,
        "service_action",
        json!({"svcname": "svc1", "command": ["compliance", "fix", "--moduleset", "foo"], "sync": true}),
    );
    let append = env(
        5,
        "raft_append",
        json!({"vote": {"term": 3, "node": "n1"}, "entries": [{"index": 7, "payload": [1, 2, 3]}], "f": 1.5, "neg": -42}),
    );
    let ok = Envelope {
        ts_ms: TS,
        msg_id: 77,
        reqid: 2,
        body: om::wire::Body::Response(Response::ok(json!({"cluster": {"name": "c1"}}))),
    };
    let err = Envelope {
        ts_ms: TS,
        msg_id: 78,
        reqid: 3,
        body: om::wire::Body::Response(Response::err(4, "sender \"x\" is not a cluster node")),
    };

    // frame_decoder: valid frames, a stream of several, and header/framing edge cases.
    let f = "frame_decoder";
    out.push((f, "valid-join.bin".into(), seal("n9", &join, 1)));
    out.push((f, "valid-response.bin".into(), seal("n1", &ok, 2)));
    out.push((
        f,
        "valid-sender-255.bin".into(),
        seal(&"n".repeat(255), &status, 3),
    ));
    out.push((
        f,
        "valid-sender-utf8.bin".into(),
        seal("nœud-ü", &monitor, 4),
    ));
    let mut stream = seal("n1", &append, 5);
    stream.extend_from_slice(&EMPTY_PACKET);
    stream.extend(seal("n2", &action, 6));
    out.push((f, "valid-stream.bin".into(), stream));
    out.push((f, "empty-packet.bin".into(), EMPTY_PACKET.to_vec()));
    out.push((f, "edge-short-length.bin".into(), vec![0, 0]));
    out.push((
        f,
        "edge-oversize.bin".into(),
        vec![0xff, 0xff, 0xff, 0xff, 1, 1, b'n'],
    ));
    let valid = seal("n1", &status, 7);
    let mut v = valid.clone();
    v[4] = 2;
    out.push((f, "edge-bad-version.bin".into(), v));
    let mut v = valid.clone();
    v[5] = 0;
    out.push((f, "edge-empty-sender.bin".into(), v));
    let mut v = valid.clone();
    v[6] = 0xc3;
    out.push((f, "edge-bad-utf8.bin".into(), v));
    let mut v = valid.clone();
    v[5] = 200;
    out.push((f, "edge-sender-past-end.bin".into(), v));
    out.push((
        f,
        "edge-truncated.bin".into(),
        valid[..valid.len() - 1].to_vec(),
    ));
    let mut v = valid.clone();
    let last = v.len() - 1;
    v[last] ^= 1;
    out.push((f, "edge-bad-tag.bin".into(), v));
    out.push((f, "edge-no-ciphertext.bin".into(), {
        let mut b = vec![0, 0, 0, 47, 1, 1, b'n'];
        b.extend_from_slice(&[0; 44]);
        b
    }));

    // request_decoder: plaintext envelopes and decoder edge cases.
    let r = "request_decoder";
    for (name, e) in [
        ("valid-join", &join),
        ("valid-daemon-status", &status),
        ("valid-set-service-monitor", &monitor),
        ("valid-service-action", &action),
        ("valid-raft-append", &append),
        ("valid-response-ok", &ok),
        ("valid-response-err", &err),
    ] {
        out.push((r, format!("{name}.bin"), e.encode().unwrap()));
    }
    // The envelope as msgpack arrays instead of maps: bodies must be maps.
    out.push((
        r,
        "edge-tuple-envelope.bin".into(),
        rmp_serde::to_vec(&status).unwrap(),
    ));
    out.push((r, "edge-empty.bin".into(), vec![]));
    out.push((r, "edge-reserved-c1.bin".into(), vec![0xc1]));
    let mut v = status.encode().unwrap();
    v.push(0xc0);
    out.push((r, "edge-trailing.bin".into(), v));
    out.push((
        r,
        "edge-mixed-body.bin".into(),
        rmp_serde::to_vec_named(&json!({"ts_ms": TS, "msg_id": 1, "reqid": 1,
            "body": {"action": "x", "status": 0}}))
        .unwrap(),
    ));
    out.push((r, "edge-bin-option.bin".into(), {
        let mut b =
            rmp_serde::to_vec_named(&json!({"ts_ms": TS, "msg_id": 1, "reqid": 1})).unwrap();
        b[0] = 0x84;
        b.extend_from_slice(b"\xa4body\x82\xa6action\xa1x\xa7options\xc4\x02\x01\x02");
        b
    }));
    out.push((
        r,
        "edge-huge-str-len.bin".into(),
        vec![
            0x84, 0xa5, b't', b's', b'_', b'm', b's', 0xdb, 0xff, 0xff, 0xff, 0xff, 0x41,
        ],
    ));
    let mut deep = json!(0);
    for _ in 0..200 {
        deep = json!([deep]);
    }
    out.push((
        r,
        "edge-deep-nesting.bin".into(),
        env(9, "clear", deep).encode().unwrap(),
    ));
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
    let mut n = 0;
    let mut entries: Vec<_> = fs::read_dir(corpus_dir(target))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = fs::read(&path).unwrap();
        f(&name, &data);
        n += 1;
    }
    n
}

#[test]
fn frame_corpus_replays_through_the_fuzz_entry_point() {
    let n = replay("frame_decoder", |name, data| {
        let r: FrameReport = fuzz_frame(data);
        if name.starts_with("valid-") {
            assert!(r.opened >= 1 && !r.stream_error, "{name}: {r:?}");
        }
        if name.starts_with("edge-") {
            assert_eq!(r.opened, 0, "{name}: {r:?}");
        }
    });
    assert!(n >= 15, "only {n} frame seeds");
}

#[test]
fn request_corpus_replays_through_the_fuzz_entry_point() {
    let n = replay("request_decoder", |name, data| {
        let r = fuzz_request(data);
        if name.starts_with("valid-") {
            assert!(r.is_ok(), "{name}: {r:?}");
        }
        if name.starts_with("edge-") {
            assert!(r.is_err(), "{name}: decoded {r:?}");
        }
    });
    assert!(n >= 15, "only {n} request seeds");
}
