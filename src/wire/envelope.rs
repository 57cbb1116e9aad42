//! The plaintext of a frame: a MessagePack envelope around a request or a response.
//!
//! Exact shape (MessagePack maps with string keys, as `rmp_serde::to_vec_named` writes them):
//!
//! ```text
//! envelope = { "ts_ms": uint, "msg_id": uint, "reqid": uint, "body": body }
//! body     = request | response
//! request  = { "action": str, "options": any }          options: a map, {} if absent
//! response = { "status": int, "data": any, "error": str | nil }
//! ```
//!
//! `any` is whatever JSON can hold (nil, bool, int, float, str, array, map with string keys);
//! MessagePack `bin` and `ext` values are refused. A body is a request when it has an
//! `action` key and a response when it has a `status` key; a body with both kinds of keys,
//! or neither, is refused. Unknown keys are ignored (forward compatibility). A response
//! `status` of 0 means success; other values are the codes of [`status`].

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::WireError;

/// Maximum nesting depth accepted when decoding an envelope.
pub const MAX_DEPTH: usize = 128;

/// Response status codes on the wire; 0 is success, anything else is an error. The typed
/// view is [`crate::api::Status`], which documents each.
pub mod status {
    use crate::api::Status;

    /// See [`Status::Ok`].
    pub const OK: i32 = Status::Ok.wire();
    /// See [`Status::Error`].
    pub const ERROR: i32 = Status::Error.wire();
    /// See [`Status::UnknownAction`].
    pub const UNKNOWN_ACTION: i32 = Status::UnknownAction.wire();
    /// See [`Status::BadRequest`].
    pub const BAD_REQUEST: i32 = Status::BadRequest.wire();
    /// See [`Status::Forbidden`].
    pub const FORBIDDEN: i32 = Status::Forbidden.wire();
    /// See [`Status::Stale`].
    pub const STALE: i32 = Status::Stale.wire();
    /// See [`Status::BadPayload`].
    pub const BAD_PAYLOAD: i32 = Status::BadPayload.wire();
    /// See [`Status::Internal`].
    pub const INTERNAL: i32 = Status::Internal.wire();
    /// See [`Status::Unavailable`].
    pub const UNAVAILABLE: i32 = Status::Unavailable.wire();
    /// See [`Status::Misaddressed`].
    pub const MISADDRESSED: i32 = Status::Misaddressed.wire();
}

/// The plaintext of every frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Sender's wall clock when sealing, in milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// Random per message; `(sender, msg_id)` is unique inside the replay window.
    pub msg_id: u64,
    /// Chosen by the requester, echoed by the response.
    pub reqid: u64,
    /// A request or a response.
    pub body: Body,
}

/// The envelope timestamps and ids, decoded without the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct EnvelopeHead {
    /// See [`Envelope::ts_ms`].
    pub ts_ms: u64,
    /// See [`Envelope::msg_id`].
    pub msg_id: u64,
    /// See [`Envelope::reqid`].
    pub reqid: u64,
}

/// A request or a response; serializes as the bare inner map (no tag).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Body {
    /// `{action, options}`.
    Request(Request),
    /// `{status, data, error}`.
    Response(Response),
}

/// A request body: an action name and its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Action name, e.g. `daemon_status` or `raft_append`.
    pub action: String,
    /// Action options, a map.
    #[serde(default = "empty_object")]
    pub options: Value,
}

/// A response body: a status code, data, and an error message when status is not 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// 0 for success, else one of the [`status`] codes or a handler-specific code.
    pub status: i32,
    /// The result; `nil` when there is none.
    #[serde(default)]
    pub data: Value,
    /// A human-readable error message, `nil` on success.
    #[serde(default)]
    pub error: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// Current wall clock in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Request {
    /// Builds a request.
    pub fn new(action: impl Into<String>, options: Value) -> Request {
        Request {
            action: action.into(),
            options,
        }
    }
}

impl Response {
    /// A success response carrying `data`.
    pub fn ok(data: Value) -> Response {
        Response {
            status: status::OK,
            data,
            error: None,
        }
    }

    /// An error response with a status `code` (not 0) and a message.
    pub fn err(code: i32, msg: impl Into<String>) -> Response {
        Response {
            status: code,
            data: Value::Null,
            error: Some(msg.into()),
        }
    }

    /// Whether the status is 0.
    pub fn is_ok(&self) -> bool {
        self.status == status::OK
    }
}

impl Envelope {
    /// A request envelope stamped with the current time and a random `msg_id`.
    pub fn request(reqid: u64, req: Request) -> Envelope {
        Envelope {
            ts_ms: now_ms(),
            msg_id: rand::random(),
            reqid,
            body: Body::Request(req),
        }
    }

    /// A response envelope stamped with the current time and a random `msg_id`.
    pub fn response(reqid: u64, resp: Response) -> Envelope {
        Envelope {
            ts_ms: now_ms(),
            msg_id: rand::random(),
            reqid,
            body: Body::Response(resp),
        }
    }

    /// Appends the MessagePack encoding (named fields) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        rmp_serde::encode::write_named(out, self).map_err(|e| WireError::Encode(e.to_string()))
    }

    /// The MessagePack encoding (named fields).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Decodes a whole plaintext; trailing bytes, excess nesting or a bad body are refused.
    pub fn decode(plaintext: &[u8]) -> Result<Envelope, WireError> {
        decode_all(plaintext)
    }

    /// The request body, if this is a request.
    pub fn as_request(&self) -> Option<&Request> {
        match &self.body {
            Body::Request(r) => Some(r),
            Body::Response(_) => None,
        }
    }

    /// The response body, if this is a response.
    pub fn as_response(&self) -> Option<&Response> {
        match &self.body {
            Body::Response(r) => Some(r),
            Body::Request(_) => None,
        }
    }
}

impl EnvelopeHead {
    /// Decodes `ts_ms`, `msg_id` and `reqid`, skipping over the body whatever it holds.
    pub fn decode(plaintext: &[u8]) -> Result<EnvelopeHead, WireError> {
        decode_all(plaintext)
    }
}

fn decode_all<T: de::DeserializeOwned>(plaintext: &[u8]) -> Result<T, WireError> {
    // Only the map form: serde would also take a struct as an array of its fields.
    if !matches!(plaintext.first(), Some(0x80..=0x8f | 0xde | 0xdf)) {
        return Err(WireError::BadPayload("the envelope is not a map".into()));
    }
    // ReadReader over a slice: string lengths are bounded by the input (no up-front
    // allocation from a length marker), and the remaining slice tells about trailing bytes.
    let mut de = rmp_serde::Deserializer::new(plaintext);
    de.set_max_depth(MAX_DEPTH);
    let v = T::deserialize(&mut de).map_err(|e| WireError::BadPayload(e.to_string()))?;
    let rest = de.get_ref().len();
    if rest != 0 {
        return Err(WireError::BadPayload(format!(
            "{rest} trailing bytes after the envelope"
        )));
    }
    Ok(v)
}

enum BodyField {
    Action,
    Options,
    Status,
    Data,
    Error,
    Other,
}

impl<'de> Deserialize<'de> for BodyField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = BodyField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a body field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BodyField, E> {
                Ok(match v {
                    "action" => BodyField::Action,
                    "options" => BodyField::Options,
                    "status" => BodyField::Status,
                    "data" => BodyField::Data,
                    "error" => BodyField::Error,
                    _ => BodyField::Other,
                })
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<BodyField, E> {
                match std::str::from_utf8(v) {
                    Ok(s) => self.visit_str(s),
                    Err(_) => Ok(BodyField::Other),
                }
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<BodyField, E> {
                Ok(BodyField::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<BodyField, E> {
                Ok(BodyField::Other)
            }
        }
        d.deserialize_identifier(FieldVisitor)
    }
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(BodyVisitor)
    }
}

struct BodyVisitor;

fn set_once<T, E: de::Error>(slot: &mut Option<T>, v: T, name: &'static str) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(v);
    Ok(())
}

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a request map {action, options} or a response map {status, data, error}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
        let mut action: Option<String> = None;
        let mut options: Option<Value> = None;
        let mut status: Option<i32> = None;
        let mut data: Option<Value> = None;
        let mut error: Option<Option<String>> = None;
        while let Some(key) = map.next_key::<BodyField>()? {
            match key {
                BodyField::Action => set_once(&mut action, map.next_value()?, "action")?,
                BodyField::Options => set_once(&mut options, map.next_value()?, "options")?,
                BodyField::Status => set_once(&mut status, map.next_value()?, "status")?,
                BodyField::Data => set_once(&mut data, map.next_value()?, "data")?,
                BodyField::Error => set_once(&mut error, map.next_value()?, "error")?,
                BodyField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let response_keys = status.is_some() || data.is_some() || error.is_some();
        match (action, status) {
            (Some(action), None) if !response_keys => Ok(Body::Request(Request {
                action,
                options: options.unwrap_or_else(empty_object),
            })),
            (None, Some(status)) if options.is_none() => Ok(Body::Response(Response {
                status,
                data: data.unwrap_or(Value::Null),
                error: error.flatten(),
            })),
            (None, None) => Err(de::Error::custom(
                "body has neither `action` (request) nor `status` (response)",
            )),
            _ => Err(de::Error::custom(
                "body mixes request keys (action, options) and response keys (status, data, error)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_body_is_a_bare_action_options_map() {
        let env = Envelope {
            ts_ms: 1,
            msg_id: 2,
            reqid: 3,
            body: Body::Request(Request::new("daemon_status", json!({"a": 1}))),
        };
        let bytes = env.encode().unwrap();
        // Decode generically: the body must be exactly {action, options}.
        let v: Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            json!({"ts_ms": 1, "msg_id": 2, "reqid": 3,
                   "body": {"action": "daemon_status", "options": {"a": 1}}})
        );
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);
    }

    #[test]
    fn response_body_is_a_bare_status_data_error_map() {
        let env = Envelope {
            ts_ms: 1,
            msg_id: 2,
            reqid: 3,
            body: Body::Response(Response::err(status::BAD_REQUEST, "no svcname")),
        };
        let bytes = env.encode().unwrap();
        let v: Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            v["body"],
            json!({"status": 3, "data": null, "error": "no svcname"})
        );
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);
        let ok = Response::ok(json!([1, 2]));
        assert!(ok.is_ok() && ok.error.is_none());
    }

    fn encode_value(v: &Value) -> Vec<u8> {
        rmp_serde::to_vec_named(v).unwrap()
    }

    #[test]
    fn missing_optional_keys_take_defaults() {
        let b =
            encode_value(&json!({"ts_ms": 1, "msg_id": 2, "reqid": 3, "body": {"action": "join"}}));
        let env = Envelope::decode(&b).unwrap();
        assert_eq!(env.as_request().unwrap().options, json!({}));
        let b = encode_value(
            &json!({"ts_ms": 1, "msg_id": 2, "reqid": 3, "body": {"status": 0, "x": 1}}),
        );
        let env = Envelope::decode(&b).unwrap();
        assert_eq!(env.as_response().unwrap(), &Response::ok(Value::Null));
    }

    #[test]
    fn ambiguous_or_malformed_bodies_are_refused() {
        for body in [
            json!({"action": "x", "status": 0}),
            json!({"action": "x", "data": 1}),
            json!({"status": 0, "options": {}}),
            json!({}),
            json!({"action": 5}),
            json!({"status": "ok"}),
            json!({"status": 1u64 << 40}),
            json!([1, 2]),
        ] {
            let b = encode_value(&json!({"ts_ms": 1, "msg_id": 2, "reqid": 3, "body": body}));
            let e = Envelope::decode(&b).unwrap_err();
            assert!(matches!(e, WireError::BadPayload(_)), "{body}: {e}");
            // The head still decodes, so the listener can answer with the reqid.
            assert_eq!(EnvelopeHead::decode(&b).unwrap().reqid, 3, "{body}");
        }
    }

    #[test]
    fn the_envelope_must_be_a_map() {
        let env = Envelope::request(9, Request::new("x", json!({})));
        let as_array =
            rmp_serde::to_vec(&(env.ts_ms, env.msg_id, env.reqid, json!({"action": "x"}))).unwrap();
        assert!(matches!(
            Envelope::decode(&as_array),
            Err(WireError::BadPayload(_))
        ));
        assert!(matches!(
            EnvelopeHead::decode(&as_array),
            Err(WireError::BadPayload(_))
        ));
        assert!(matches!(
            Envelope::decode(&[]),
            Err(WireError::BadPayload(_))
        ));
    }

    #[test]
    fn trailing_bytes_and_deep_nesting_are_refused() {
        let env = Envelope::request(9, Request::new("x", json!({})));
        let mut b = env.encode().unwrap();
        b.push(0xc0);
        assert!(matches!(
            Envelope::decode(&b),
            Err(WireError::BadPayload(_))
        ));
        assert!(matches!(
            EnvelopeHead::decode(&b),
            Err(WireError::BadPayload(_))
        ));

        let mut deep = json!(1);
        for _ in 0..(MAX_DEPTH + 5) {
            deep = json!([deep]);
        }
        let env = Envelope::request(9, Request::new("x", deep));
        let b = env.encode().unwrap();
        assert!(matches!(
            Envelope::decode(&b),
            Err(WireError::BadPayload(_))
        ));
    }

    #[test]
    fn bin_values_and_huge_length_markers_are_refused_without_allocating() {
        // body.options = bin8 of 2 bytes
        let mut b = encode_value(&json!({"ts_ms": 1, "msg_id": 2, "reqid": 3}));
        b[0] = 0x84; // fixmap of 4
        b.extend_from_slice(&[0xa4, b'b', b'o', b'd', b'y', 0x82]);
        b.extend_from_slice(&[0xa6, b'a', b'c', b't', b'i', b'o', b'n', 0xa1, b'x']);
        b.extend_from_slice(&[0xa7, b'o', b'p', b't', b'i', b'o', b'n', b's']);
        let mut bin = b.clone();
        bin.extend_from_slice(&[0xc4, 2, 1, 2]);
        assert!(matches!(
            Envelope::decode(&bin),
            Err(WireError::BadPayload(_))
        ));
        // a str32 claiming 4 GiB with 3 bytes behind it
        let mut huge = b.clone();
        huge.extend_from_slice(&[0xdb, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        assert!(matches!(
            Envelope::decode(&huge),
            Err(WireError::BadPayload(_))
        ));
        // an array32 claiming 4G elements
        let mut arr = b;
        arr.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff, 1]);
        assert!(matches!(
            Envelope::decode(&arr),
            Err(WireError::BadPayload(_))
        ));
    }
}
