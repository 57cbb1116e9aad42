//! Wire protocol v2 against its specification: the worked example of docs/PROTOCOL.md
//! (computed independently in Python and with snow, in clients/python/kat.json), every
//! single-byte change of a record refused, and round trips of arbitrary messages through
//! real sessions.

use om::wire::{
    accept_for_testing, parse_hello, Body, Doc, Initiator, Keyring, Message, ReqId, Request,
    Response, LEN_SIZE,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex32(s: &str) -> [u8; 32] {
    let v: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

fn kat() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python/kat.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_worked_example_of_the_protocol_doc() {
    let kat = kat();
    let (i, x) = (&kat["inputs"], &kat["expected"]);
    let s = |v: &Value| v.as_str().unwrap().to_string();
    let k = Keyring::new(s(&i["cluster"]), s(&i["secret"]));
    assert_eq!(hex(&k.psk(0)), s(&x["psk"]));
    let (init, hello) = Initiator::start_for_testing(
        &k,
        &s(&i["sender"]),
        &s(&i["receiver"]),
        &unhex32(&s(&i["initiator_ephemeral_private"])),
    )
    .unwrap();
    assert_eq!(hex(&hello), s(&x["hello_frame"]));
    let h = parse_hello(&hello[LEN_SIZE..]).unwrap();
    let acc = accept_for_testing(
        &k,
        &h,
        &s(&i["responder_name"]),
        &unhex32(&s(&i["responder_ephemeral_private"])),
    )
    .unwrap();
    assert_eq!(hex(&acc.welcome), s(&x["welcome_frame"]));
    let (mut cs, mut co, name) = init.finish(&acc.welcome[LEN_SIZE + 2..]).unwrap();
    assert_eq!(name, s(&i["responder_name"]));

    let req = Message::request(
        ReqId::Int(i["reqid"].as_u64().unwrap()),
        Request::new(s(&i["action"]), i["options"].clone()),
    );
    let plain = req.encode().unwrap();
    assert_eq!(hex(&plain), s(&x["request_message"]));
    let mut record = Vec::new();
    cs.seal(&plain, &mut record).unwrap();
    assert_eq!(hex(&record), s(&x["request_record"]));
    let mut opener = acc.opener;
    assert_eq!(
        opener.open(&record[LEN_SIZE..], 1 << 20).unwrap().unwrap(),
        plain
    );

    let r = &i["response"];
    let resp = Response {
        status: r["status"].as_i64().unwrap() as i32,
        data: r["data"].clone().into(),
        error: r["error"].as_str().map(str::to_owned),
    };
    let plain = Message::response(ReqId::Int(1), resp).encode().unwrap();
    assert_eq!(hex(&plain), s(&x["response_message"]));
    let mut sealer = acc.sealer;
    let mut record = Vec::new();
    sealer.seal(&plain, &mut record).unwrap();
    assert_eq!(hex(&record), s(&x["response_record"]));
    assert_eq!(
        co.open(&record[LEN_SIZE..], 1 << 20).unwrap().unwrap(),
        plain
    );
}

/// A client sealer and the node's opener of a fresh session.
fn pair(k: &Keyring) -> (om::wire::Sealer, om::wire::Opener) {
    let (init, hello) = Initiator::start(k, "n1", "").unwrap();
    let h = parse_hello(&hello[LEN_SIZE..]).unwrap();
    let acc = om::wire::accept(k, &h, "n2").unwrap();
    let (sealer, _, _) = init.finish(&acc.welcome[LEN_SIZE + 2..]).unwrap();
    (sealer, acc.opener)
}

#[test]
fn changing_any_single_byte_of_a_record_is_refused() {
    let k = Keyring::new("c", "s");
    let plain = Message::request(ReqId::Int(7), Request::new("daemon_stop", json!({})))
        .encode()
        .unwrap();
    let (mut sealer, _) = pair(&k);
    let mut record = Vec::new();
    sealer.seal(&plain, &mut record).unwrap();
    for at in LEN_SIZE..record.len() {
        for bit in [0x01, 0x80] {
            let (mut sealer, mut opener) = pair(&k);
            let mut r = Vec::new();
            sealer.seal(&plain, &mut r).unwrap();
            r[at] ^= bit;
            assert!(
                opener.open(&r[LEN_SIZE..], 1 << 20).is_err(),
                "byte {at} bit {bit:#x}"
            );
        }
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

fn reqid() -> impl Strategy<Value = ReqId> {
    prop_oneof![
        any::<u64>().prop_map(ReqId::Int),
        ".{0,40}".prop_map(ReqId::Str)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn every_action_round_trips_through_a_session(
        action in prop::sample::select(om::api::Action::ALL).prop_map(|a| a.as_str()),
        options in json_value(),
        sender in nodename(),
        reqid in reqid(),
        secret in prop::collection::vec(any::<u8>(), 1..64),
        cluster in ".{0,40}",
    ) {
        let k = Keyring::new(cluster, &secret);
        let (init, hello) = Initiator::start(&k, &sender, "n2").unwrap();
        let h = parse_hello(&hello[LEN_SIZE..]).unwrap();
        prop_assert_eq!(h.sender, sender.as_str());
        let acc = om::wire::accept(&k, &h, "n2").unwrap();
        let (mut sealer, _, _) = init.finish(&acc.welcome[LEN_SIZE + 2..]).unwrap();
        let m = Message::request(reqid, Request::new(action, options.clone()));
        let mut records = Vec::new();
        sealer.seal(&m.encode().unwrap(), &mut records).unwrap();
        let mut opener = acc.opener;
        let plain = opener.open(&records[LEN_SIZE..], u32::MAX).unwrap().unwrap();
        let back = Message::decode(&plain).unwrap();
        prop_assert_eq!(&back.reqid, &m.reqid);
        let Body::Request(r) = back.body else { panic!("not a request") };
        prop_assert_eq!(r.action, action);
        prop_assert_eq!(r.options.to_value().unwrap(), options);
    }

    #[test]
    fn responses_round_trip(data in json_value(), code in any::<i32>(), error in proptest::option::of(".*"), reqid in reqid()) {
        let m = Message::response(reqid, Response { status: code, data: Doc::Json(data.clone()), error: error.clone() });
        let back = Message::decode(&m.encode().unwrap()).unwrap();
        let Body::Response(r) = back.body else { panic!("not a response") };
        prop_assert_eq!((r.status, r.error, r.data.to_value().unwrap()), (code, error, data));
        prop_assert_eq!(back.reqid, m.reqid);
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Message::decode(&bytes);
        let _ = parse_hello(&bytes);
        let _ = om::wire::parse_answer(&bytes);
        let (_, mut opener) = pair(&Keyring::new("c", "s"));
        prop_assert!(opener.open(&bytes, 1 << 20).is_err());
    }
}
