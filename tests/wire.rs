//! Wire protocol v1: round trips, tampering, keys, the known-answer vector of PROTOCOL.md.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use om::wire::{
    peek_sender, status, Body, Envelope, ErrorKind, Keyring, Request, Response, WireError,
    LEN_SIZE, NONCE_LEN, SALT_LEN, TAG_LEN,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use sha2::Sha256;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The worked example of docs/PROTOCOL.md.
fn example() -> (Keyring, Envelope, [u8; SALT_LEN], [u8; NONCE_LEN]) {
    let keyring = Keyring::new("demo", "s3cr3t");
    let env = Envelope {
        ts_ms: 1_700_000_000_000,
        msg_id: 42,
        reqid: 1,
        body: Body::Request(Request::new("daemon_status", json!({}))),
    };
    let salt: [u8; SALT_LEN] = std::array::from_fn(|i| i as u8);
    let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| 0xa0 + i as u8);
    (keyring, env, salt, nonce)
}

const EXAMPLE_PLAINTEXT: &str = "84a574735f6d73cf0000018bcfe56800a66d73675f69642aa57265716964\
01a4626f647982a6616374696f6ead6461656d6f6e5f737461747573a76f7074696f6e7380";

const EXAMPLE_KEY: &str = "5bcf7a8a0ac6bddb31d95ddcaebb6dc7969d93d0bff8cc7a50a5c7941aa04ddd";
const EXAMPLE_FRAME: &str = "0000007601056e6f646531000102030405060708090a0b0c0d0e0fa0a1a2a3a4\
a5a6a7a8a9aaabdfeca7b13c01c672ddc99aa3b91eb9acb6886940de091cac9d\
6174f6a6bd890cd98dfa956ba8f0e2eaebc15a06cbe8fb5430798019582e8ba0\
87c371b73533c00be4e3ab298c99e872ab6cf6899503d3619321";

#[test]
fn known_answer_vector_of_the_protocol_doc() {
    let (keyring, env, salt, nonce) = example();
    let plaintext = env.encode().unwrap();
    let frame = keyring.seal_with("node1", &env, &salt, &nonce).unwrap();
    let mut okm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&salt), b"s3cr3t")
        .expand(b"om/v1/demo", &mut okm)
        .unwrap();
    println!("plaintext {}", hex(&plaintext));
    println!("key       {}", hex(&okm));
    println!("frame     {}", hex(&frame));
    assert_eq!(hex(&plaintext), EXAMPLE_PLAINTEXT);
    assert_eq!(hex(&okm), EXAMPLE_KEY);
    assert_eq!(hex(&frame), EXAMPLE_FRAME);
}

#[test]
fn frame_matches_an_independent_implementation_of_the_spec() {
    let (keyring, env, salt, nonce) = example();
    let frame = keyring.seal_with("node1", &env, &salt, &nonce).unwrap();
    // Parse by hand, following the doc.
    let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - LEN_SIZE);
    assert_eq!(frame[4], 1, "version");
    let n = frame[5] as usize;
    assert_eq!(&frame[6..6 + n], b"node1");
    let salt_at = 6 + n;
    assert_eq!(&frame[salt_at..salt_at + SALT_LEN], &salt);
    let nonce_at = salt_at + SALT_LEN;
    assert_eq!(&frame[nonce_at..nonce_at + NONCE_LEN], &nonce);
    let ct_at = nonce_at + NONCE_LEN;
    let mut okm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&salt), b"s3cr3t")
        .expand(b"om/v1/demo", &mut okm)
        .unwrap();
    let cipher = Aes256Gcm::new(&okm.into());
    let plaintext = cipher
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &frame[ct_at..],
                aad: &frame[4..ct_at],
            },
        )
        .expect("decrypts with the documented key and AAD");
    assert_eq!(frame.len() - ct_at, plaintext.len() + TAG_LEN);
    let v: Value = rmp_serde::from_slice(&plaintext).unwrap();
    assert_eq!(
        v,
        json!({"ts_ms": 1_700_000_000_000u64, "msg_id": 42, "reqid": 1,
               "body": {"action": "daemon_status", "options": {}}})
    );
    // And the reverse: a frame built by hand opens.
    let opened = keyring.open(&frame).unwrap();
    assert_eq!(opened.envelope, env);
}

#[test]
fn peek_sender_needs_no_key() {
    let (keyring, env, salt, nonce) = example();
    let frame = keyring.seal_with("node1", &env, &salt, &nonce).unwrap();
    assert_eq!(peek_sender(&frame).unwrap(), "node1");
    assert!(matches!(
        peek_sender(&frame[..10]),
        Err(WireError::Truncated { .. })
    ));
}

#[test]
fn tampering_any_single_byte_is_rejected() {
    let keyring = Keyring::new("c", "secret");
    let env = Envelope::request(
        5,
        Request::new("set_node_monitor", json!({"local_expect": "frozen"})),
    );
    let frame = keyring.seal("node1", &env).unwrap();
    let header_end = LEN_SIZE + 2 + 5 + SALT_LEN + NONCE_LEN;
    let mut kinds = std::collections::BTreeMap::new();
    for i in 0..frame.len() {
        for mask in [0x01u8, 0x80] {
            let mut t = frame.clone();
            t[i] ^= mask;
            let e = keyring
                .open(&t)
                .expect_err(&format!("byte {i} ^ {mask:#x} accepted"));
            let expected: &[ErrorKind] = match i {
                0..=3 => &[ErrorKind::Truncated, ErrorKind::Trailing],
                4 => &[ErrorKind::BadVersion],
                5 => &[ErrorKind::TooShort, ErrorKind::Auth],
                6..=10 => &[ErrorKind::BadSender, ErrorKind::Auth],
                _ => &[ErrorKind::Auth],
            };
            assert!(
                expected.contains(&e.kind()),
                "byte {i} ^ {mask:#x}: {e} (header ends at {header_end})"
            );
            *kinds.entry(e.kind()).or_insert(0) += 1;
        }
    }
    // Every body byte (ciphertext and tag) is covered by authentication.
    assert!(kinds[&ErrorKind::Auth] >= 2 * (frame.len() - header_end));
}

#[test]
fn wrong_secret_and_wrong_cluster_name_fail_authentication() {
    let env = Envelope::request(1, Request::new("daemon_status", json!({})));
    let frame = Keyring::new("c1", "secret").seal("n1", &env).unwrap();
    for k in [
        Keyring::new("c1", "Secret"),
        Keyring::new("c2", "secret"),
        Keyring::new("c1", ""),
    ] {
        assert!(matches!(k.open(&frame), Err(WireError::Auth)), "{k:?}");
    }
    // The joining keyring (empty cluster name) is a different key too.
    let k = Keyring::new("c1", "secret");
    assert!(matches!(k.joining().open(&frame), Err(WireError::Auth)));
    let frame = k.joining().seal("n1", &env).unwrap();
    assert!(matches!(k.open(&frame), Err(WireError::Auth)));
    assert_eq!(k.joining().open(&frame).unwrap().envelope, env);
}

#[test]
fn truncated_and_trailing_frames_are_refused() {
    let k = Keyring::new("c", "s");
    let frame = k
        .seal("n", &Envelope::request(1, Request::new("leave", json!({}))))
        .unwrap();
    for cut in 0..frame.len() {
        let e = k.open(&frame[..cut]).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::Truncated | ErrorKind::TooShort),
            "cut at {cut}: {e}"
        );
    }
    let mut long = frame.clone();
    long.push(0);
    assert!(matches!(k.open(&long), Err(WireError::Trailing { .. })));
}

#[test]
fn responses_round_trip_with_constructors() {
    let k = Keyring::new("c", "s");
    for resp in [
        Response::ok(json!({"nodes": ["n1", "n2"]})),
        Response::ok(Value::Null),
        Response::err(status::UNKNOWN_ACTION, "unknown action foo"),
        Response::err(-7, "negative codes are fine"),
    ] {
        let env = Envelope::response(99, resp.clone());
        let o = k.open(&k.seal("responder", &env).unwrap()).unwrap();
        assert_eq!(o.envelope.as_response(), Some(&resp));
        assert_eq!(o.envelope.reqid, 99);
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<u64>().prop_map(|u| json!(u)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".*".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(".*", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn nodename() -> impl Strategy<Value = String> {
    "\\PC{1,80}".prop_filter("at most 255 bytes", |s| s.len() <= 255)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_action_round_trips(
        action in prop::sample::select(om::api::Action::ALL).prop_map(|a| a.as_str()),
        options in json_value(),
        sender in nodename(),
        reqid in any::<u64>(),
        secret in prop::collection::vec(any::<u8>(), 0..64),
        cluster in ".{0,40}",
    ) {
        let k = Keyring::new(cluster, &secret);
        let env = Envelope::request(reqid, Request::new(action, options));
        let frame = k.seal(&sender, &env).unwrap();
        prop_assert_eq!(peek_sender(&frame).unwrap(), sender.as_str());
        let o = k.open(&frame).unwrap();
        prop_assert_eq!(o.sender, sender);
        prop_assert_eq!(o.envelope, env);
    }

    #[test]
    fn arbitrary_action_names_and_responses_round_trip(
        action in ".*",
        data in json_value(),
        code in any::<i32>(),
        error in proptest::option::of(".*"),
    ) {
        let k = Keyring::new("c", "s");
        let req = Envelope::request(1, Request::new(action, data.clone()));
        prop_assert_eq!(k.open(&k.seal("n", &req).unwrap()).unwrap().envelope, req);
        let resp = Envelope::response(2, Response { status: code, data, error });
        prop_assert_eq!(k.open(&k.seal("n", &resp).unwrap()).unwrap().envelope, resp);
    }

    #[test]
    fn open_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let k = Keyring::new("c", "s");
        prop_assert!(k.open(&bytes).is_err());
        let _ = peek_sender(&bytes);
        let _ = Envelope::decode(&bytes);
    }
}
