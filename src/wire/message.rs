//! The plaintext of a session's messages: one MessagePack map, a request or a response.
//!
//! ```text
//! request  = { "reqid": uint | str, "action": str, "options": any }   options absent = {}
//! response = { "reqid": <as sent>, "status": int, "data": any, "error": str | nil }
//! ```
//!
//! `any` is any MessagePack value but `ext`, nested at most [`MAX_DEPTH`] deep; `bin` is
//! allowed (Raft snapshot chunks travel as bytes). A map with `action` is a request, one
//! with `status` a response; one with keys of both, or neither, is refused. Unknown keys
//! are skipped (forward compatibility); a key given twice is refused.
//!
//! The decoder walks the map once and keeps `options` and `data` as the MessagePack bytes
//! they arrived as ([`Doc::Packed`]): a handler decodes them straight into its own typed
//! options with `rmp_serde`, so no generic value tree is built between the socket and the
//! handler (the Raft RPCs are decoded into openraft's types this way).

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::fmt;

use super::error::WireError;

/// Deepest nesting accepted in `options` or `data`.
pub const MAX_DEPTH: usize = 128;
/// Longest string `reqid`.
pub const MAX_REQID_LEN: usize = 1024;

/// Response status codes (docs/PROTOCOL.md section 11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(i32)]
pub enum Status {
    /// The request succeeded.
    Ok = 0,
    /// The handler failed; `error` says why.
    Error = 1,
    /// The action is not known to the receiver.
    UnknownAction = 2,
    /// The options are missing a field or hold a bad value.
    BadRequest = 3,
    /// The sender may not run this action.
    Forbidden = 4,
    /// The request timestamp is outside the receiver's replay window.
    Stale = 5,
    /// The envelope decrypted but its body could not be decoded.
    BadPayload = 6,
    /// The handler panicked or the response could not be encoded.
    Internal = 7,
    /// The receiver cannot serve the request now; retry later.
    Unavailable = 8,
    /// A Raft RPC or forwarded proposal named another cluster or target than the receiver.
    Misaddressed = 9,
    /// The request waits for an operator (a join under `cluster.join = approve`): retry
    /// once `error`'s instruction is done.
    Pending = 10,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: &'static [Status] = &[
        Status::Ok,
        Status::Error,
        Status::UnknownAction,
        Status::BadRequest,
        Status::Forbidden,
        Status::Stale,
        Status::BadPayload,
        Status::Internal,
        Status::Unavailable,
        Status::Misaddressed,
        Status::Pending,
    ];

    /// The code on the wire.
    pub const fn wire(self) -> i32 {
        self as i32
    }

    /// The status of a wire code; `None` for a handler-specific code.
    pub fn from_code(code: i32) -> Option<Status> {
        Status::ALL.iter().copied().find(|s| s.wire() == code)
    }
}

/// A status as a [`Status`] or as a raw wire code (a peer's answer, kept as it came).
pub trait StatusCode {
    /// The code on the wire.
    fn code(self) -> i32;
}

impl StatusCode for Status {
    fn code(self) -> i32 {
        self as i32
    }
}

impl StatusCode for i32 {
    fn code(self) -> i32 {
        self
    }
}

/// A request id, echoed by the response exactly as the requester chose it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReqId {
    /// A non-negative integer (what om's own clients send).
    Int(u64),
    /// A string (what Zeek's clients send), at most [`MAX_REQID_LEN`] bytes.
    Str(String),
}

impl fmt::Display for ReqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReqId::Int(n) => write!(f, "{n}"),
            ReqId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// A document carried in `options` or `data`: MessagePack bytes from the wire, or a JSON
/// value (from the control socket, or built by a handler).
#[derive(Debug, Clone, PartialEq)]
pub enum Doc {
    /// One MessagePack value, as received or as packed by [`Doc::pack`].
    Packed(Vec<u8>),
    /// A JSON value.
    Json(Value),
}

impl Default for Doc {
    fn default() -> Doc {
        Doc::Json(Value::Null)
    }
}

impl From<Value> for Doc {
    fn from(v: Value) -> Doc {
        Doc::Json(v)
    }
}

impl Doc {
    /// The MessagePack encoding of `v`: maps with field names, and values in their
    /// readable form (an address is a string, as in JSON and as other languages send it).
    pub fn pack<T: Serialize + ?Sized>(v: &T) -> Result<Doc, String> {
        let mut out = Vec::new();
        let mut ser = rmp_serde::Serializer::new(&mut out)
            .with_struct_map()
            .with_human_readable();
        v.serialize(&mut ser).map_err(|e| e.to_string())?;
        Ok(Doc::Packed(out))
    }

    /// Whether this is nil / null (absent options, no data).
    pub fn is_null(&self) -> bool {
        match self {
            Doc::Packed(b) => b.as_slice() == [0xc0],
            Doc::Json(v) => v.is_null(),
        }
    }

    /// Decodes into `T`; nil decodes as an empty map (options that were not given).
    pub fn decode<T: DeserializeOwned>(self) -> Result<T, String> {
        match self {
            Doc::Packed(b) if b.as_slice() == [0xc0] => {
                rmp_serde::from_slice(&[0x80]).map_err(|e| e.to_string())
            }
            // The error names the option it is about (`kind: unknown variant ...`).
            Doc::Packed(b) => {
                let mut de = rmp_serde::Deserializer::from_read_ref(&b).with_human_readable();
                serde_path_to_error::deserialize(&mut de).map_err(|e| e.to_string())
            }
            Doc::Json(Value::Null) => {
                serde_json::from_value(Value::Object(Default::default())).map_err(|e| e.to_string())
            }
            Doc::Json(v) => serde_path_to_error::deserialize(v).map_err(|e| e.to_string()),
        }
    }

    /// The document as a JSON value (`bin` values have no JSON form and are refused).
    pub fn to_value(&self) -> Result<Value, String> {
        match self {
            Doc::Packed(b) => rmp_serde::from_slice(b).map_err(|e| e.to_string()),
            Doc::Json(v) => Ok(v.clone()),
        }
    }

    /// Like [`Doc::to_value`], consuming the document.
    pub fn into_value(self) -> Result<Value, String> {
        match self {
            Doc::Json(v) => Ok(v),
            packed => packed.to_value(),
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        match self {
            Doc::Packed(b) => {
                out.extend_from_slice(b);
                Ok(())
            }
            Doc::Json(v) => {
                rmp_serde::encode::write_named(out, v).map_err(|e| WireError::Encode(e.to_string()))
            }
        }
    }
}

impl Serialize for Doc {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Doc::Json(v) => v.serialize(s),
            Doc::Packed(_) => self
                .to_value()
                .map_err(serde::ser::Error::custom)?
                .serialize(s),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Doc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
        Value::deserialize(d).map(Doc::Json)
    }
}

/// A request: an action name and its options (also a control socket line's JSON form).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Request {
    /// Action name, e.g. `daemon_status` or `raft_append`.
    pub action: String,
    /// Action options; absent or nil means none.
    #[serde(default)]
    pub options: Doc,
}

impl Request {
    /// Builds a request.
    pub fn new(action: impl Into<String>, options: impl Into<Doc>) -> Request {
        Request {
            action: action.into(),
            options: options.into(),
        }
    }
}

/// A response: a status code, data, and an error message when status is not 0.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Response {
    /// 0 for success, else one of the [`Status`] codes or a handler-specific code.
    pub status: i32,
    /// The result; nil when there is none.
    #[serde(default)]
    pub data: Doc,
    /// A human-readable error message, nil on success.
    #[serde(default)]
    pub error: Option<String>,
}

impl Response {
    /// A success response carrying `data`.
    pub fn ok(data: impl Into<Doc>) -> Response {
        Response {
            status: Status::Ok.wire(),
            data: data.into(),
            error: None,
        }
    }

    /// An error response with a status `code` (not 0) and a message.
    pub fn err(code: impl StatusCode, msg: impl Into<String>) -> Response {
        Response {
            status: code.code(),
            data: Doc::default(),
            error: Some(msg.into()),
        }
    }

    /// Whether the status is 0.
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok.wire()
    }
}

/// A request or a response.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// `{reqid, action, options}`.
    Request(Request),
    /// `{reqid, status, data, error}`.
    Response(Response),
}

/// One message of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Chosen by the requester, echoed by the response.
    pub reqid: ReqId,
    /// A request or a response.
    pub body: Body,
}

/// A message that did not decode, with its `reqid` when that much was readable (so the
/// node can answer with [`Status::BadPayload`]).
#[derive(Debug)]
pub struct Undecodable {
    /// The request id, if found.
    pub reqid: Option<ReqId>,
    /// Why the message was refused.
    pub error: WireError,
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    let n = s.len();
    match n {
        0..=31 => out.push(0xa0 | n as u8),
        32..=255 => out.extend_from_slice(&[0xd9, n as u8]),
        256..=65535 => {
            out.push(0xda);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0xdb);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(s.as_bytes());
}

fn write_int(out: &mut Vec<u8>, v: i64) {
    rmp_serde::encode::write(out, &v).expect("writing to a Vec cannot fail");
}

impl Message {
    /// A request message.
    pub fn request(reqid: ReqId, req: Request) -> Message {
        Message {
            reqid,
            body: Body::Request(req),
        }
    }

    /// A response message.
    pub fn response(reqid: ReqId, resp: Response) -> Message {
        Message {
            reqid,
            body: Body::Response(resp),
        }
    }

    /// Appends the MessagePack encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let reqid = |out: &mut Vec<u8>| match &self.reqid {
            ReqId::Int(n) => rmp_serde::encode::write(out, n).expect("writing to a Vec"),
            ReqId::Str(s) => write_str(out, s),
        };
        match &self.body {
            Body::Request(r) => {
                out.push(0x83);
                write_str(out, "reqid");
                reqid(out);
                write_str(out, "action");
                write_str(out, &r.action);
                write_str(out, "options");
                r.options.encode_into(out)
            }
            Body::Response(r) => {
                out.push(0x84);
                write_str(out, "reqid");
                reqid(out);
                write_str(out, "status");
                write_int(out, i64::from(r.status));
                write_str(out, "data");
                r.data.encode_into(out)?;
                write_str(out, "error");
                match &r.error {
                    Some(e) => write_str(out, e),
                    None => out.push(0xc0),
                }
                Ok(())
            }
        }
    }

    /// The MessagePack encoding.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Decodes a whole plaintext: one map, nothing after it.
    pub fn decode(plain: &[u8]) -> Result<Message, Undecodable> {
        let mut fields = Fields::default();
        let r = read_fields(plain, &mut fields);
        let reqid = fields.reqid.clone();
        r.and_then(|()| fields.into_message())
            .map_err(|e| Undecodable {
                reqid,
                error: WireError::BadPayload(e),
            })
    }
}

#[derive(Default)]
struct Fields<'a> {
    reqid: Option<ReqId>,
    action: Option<&'a str>,
    options: Option<&'a [u8]>,
    status: Option<i64>,
    data: Option<&'a [u8]>,
    error: Option<Option<&'a str>>,
}

fn once<T>(slot: &mut Option<T>, v: T, key: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("key {key:?} given twice"));
    }
    *slot = Some(v);
    Ok(())
}

fn read_fields<'a>(plain: &'a [u8], f: &mut Fields<'a>) -> Result<(), String> {
    let mut c = Cursor { buf: plain, pos: 0 };
    let n = c.map_len()?;
    for _ in 0..n {
        let key = c.str()?;
        match key {
            "reqid" => {
                let id = c.reqid()?;
                once(&mut f.reqid, id, key)?
            }
            "action" => {
                let a = c.str()?;
                once(&mut f.action, a, key)?
            }
            "options" => {
                let v = c.value()?;
                once(&mut f.options, v, key)?
            }
            "status" => {
                let s = c.int()?;
                once(&mut f.status, s, key)?
            }
            "data" => {
                let v = c.value()?;
                once(&mut f.data, v, key)?
            }
            "error" => {
                let e = c.opt_str()?;
                once(&mut f.error, e, key)?
            }
            _ => {
                c.value()?;
            }
        }
    }
    if c.pos != plain.len() {
        return Err(format!(
            "{} trailing bytes after the message",
            plain.len() - c.pos
        ));
    }
    Ok(())
}

impl Fields<'_> {
    fn into_message(self) -> Result<Message, String> {
        let reqid = self.reqid.ok_or("the message has no reqid")?;
        let response_keys = self.status.is_some() || self.data.is_some() || self.error.is_some();
        let body = match (self.action, self.status) {
            (Some(action), None) if !response_keys => Body::Request(Request {
                action: action.to_owned(),
                options: Doc::Packed(self.options.unwrap_or(&[0x80]).to_vec()),
            }),
            (None, Some(status)) if self.options.is_none() => Body::Response(Response {
                status: i32::try_from(status).map_err(|_| format!("status {status} is not an i32"))?,
                data: Doc::Packed(self.data.unwrap_or(&[0xc0]).to_vec()),
                error: self.error.flatten().map(str::to_owned),
            }),
            (None, None) => {
                return Err("the message has neither `action` (request) nor `status` (response)".into())
            }
            _ => {
                return Err(
                    "the message mixes request keys (action, options) and response keys (status, data, error)"
                        .into(),
                )
            }
        };
        Ok(Message { reqid, body })
    }
}

/// A bounded MessagePack reader over a slice: every length is checked against what is
/// left, so a length marker never makes it allocate or loop past the input.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end =
            end.ok_or_else(|| format!("truncated: {n} bytes needed at offset {}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Result<u64, String> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn map_len(&mut self) -> Result<usize, String> {
        match self.byte()? {
            m @ 0x80..=0x8f => Ok(usize::from(m & 0x0f)),
            0xde => Ok(self.be(2)? as usize),
            0xdf => Ok(self.be(4)? as usize),
            _ => Err("the message is not a map".into()),
        }
    }

    fn str_len(&mut self, m: u8) -> Result<Option<usize>, String> {
        Ok(Some(match m {
            0xa0..=0xbf => usize::from(m & 0x1f),
            0xd9 => self.be(1)? as usize,
            0xda => self.be(2)? as usize,
            0xdb => self.be(4)? as usize,
            _ => return Ok(None),
        }))
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let m = self.byte()?;
        let n = self.str_len(m)?.ok_or("expected a string")?;
        std::str::from_utf8(self.take(n)?).map_err(|_| "a string is not UTF-8".into())
    }

    fn opt_str(&mut self) -> Result<Option<&'a str>, String> {
        if self.buf.get(self.pos) == Some(&0xc0) {
            self.pos += 1;
            return Ok(None);
        }
        self.str().map(Some)
    }

    /// The unsigned integer marked `m` (already read), or `None` for another marker.
    fn uint(&mut self, m: u8) -> Result<Option<u64>, String> {
        Ok(Some(match m {
            0x00..=0x7f => u64::from(m),
            0xcc => self.be(1)?,
            0xcd => self.be(2)?,
            0xce => self.be(4)?,
            0xcf => self.be(8)?,
            _ => return Ok(None),
        }))
    }

    fn int(&mut self) -> Result<i64, String> {
        let m = self.byte()?;
        if let Some(u) = self.uint(m)? {
            return i64::try_from(u).map_err(|_| "integer out of range".into());
        }
        Ok(match m {
            0xe0..=0xff => i64::from(m as i8),
            0xd0 => i64::from(self.be(1)? as u8 as i8),
            0xd1 => i64::from(self.be(2)? as u16 as i16),
            0xd2 => i64::from(self.be(4)? as u32 as i32),
            0xd3 => self.be(8)? as i64,
            _ => return Err("expected an integer".into()),
        })
    }

    fn reqid(&mut self) -> Result<ReqId, String> {
        let m = *self.buf.get(self.pos).ok_or("truncated reqid")?;
        if matches!(m, 0xa0..=0xbf | 0xd9..=0xdb) {
            let s = self.str()?;
            if s.len() > MAX_REQID_LEN {
                return Err(format!("a reqid string is at most {MAX_REQID_LEN} bytes"));
            }
            return Ok(ReqId::Str(s.to_owned()));
        }
        let m = self.byte()?;
        self.uint(m)?
            .map(ReqId::Int)
            .ok_or_else(|| "reqid must be a non-negative integer or a string".into())
    }

    /// Skips one value and returns its bytes.
    fn value(&mut self) -> Result<&'a [u8], String> {
        let start = self.pos;
        self.skip(0)?;
        Ok(&self.buf[start..self.pos])
    }

    fn skip(&mut self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH}"));
        }
        let m = self.byte()?;
        let (items, bytes) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (2 * u64::from(m & 0x0f), 0),
            0x90..=0x9f => (u64::from(m & 0x0f), 0),
            0xa0..=0xbf => (0, u64::from(m & 0x1f)),
            0xc4 | 0xd9 => (0, self.be(1)?),
            0xc5 | 0xda => (0, self.be(2)?),
            0xc6 | 0xdb => (0, self.be(4)?),
            0xca => (0, 4),
            0xcb => (0, 8),
            0xcc | 0xd0 => (0, 1),
            0xcd | 0xd1 => (0, 2),
            0xce | 0xd2 => (0, 4),
            0xcf | 0xd3 => (0, 8),
            0xdc => (self.be(2)?, 0),
            0xdd => (self.be(4)?, 0),
            0xde => (2 * self.be(2)?, 0),
            0xdf => (2 * self.be(4)?, 0),
            0xc1 => return Err("byte 0xc1 is never used in MessagePack".into()),
            _ => return Err("MessagePack ext values are not accepted".into()),
        };
        if (0xd9..=0xdb).contains(&m) || (0xa0..=0xbf).contains(&m) {
            let s = self.take(bytes as usize)?;
            std::str::from_utf8(s).map_err(|_| "a string is not UTF-8")?;
        } else {
            self.take(usize::try_from(bytes).map_err(|_| "length out of range")?)?;
        }
        for _ in 0..items {
            self.skip(depth + 1)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(m: &Message) -> Message {
        Message::decode(&m.encode().unwrap()).unwrap()
    }

    #[test]
    fn a_request_is_a_flat_map_and_round_trips() {
        let m = Message::request(
            ReqId::Int(3),
            Request::new("daemon_status", json!({"a": 1})),
        );
        let bytes = m.encode().unwrap();
        let v: Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            json!({"reqid": 3, "action": "daemon_status", "options": {"a": 1}})
        );
        let back = round_trip(&m);
        let Body::Request(r) = back.body else {
            panic!()
        };
        assert_eq!(r.options.to_value().unwrap(), json!({"a": 1}));
        assert_eq!(back.reqid, ReqId::Int(3));
    }

    #[test]
    fn reqids_take_the_whole_u64_range() {
        for n in [0, 127, 128, 1 << 40, u64::MAX] {
            let m = Message::request(ReqId::Int(n), Request::new("x", json!({})));
            assert_eq!(round_trip(&m).reqid, ReqId::Int(n));
        }
    }

    #[test]
    fn a_string_reqid_is_echoed_as_sent() {
        let m = Message::response(ReqId::Str("zeek-17".into()), Response::err(3, "no svcname"));
        let bytes = m.encode().unwrap();
        let v: Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            json!({"reqid": "zeek-17", "status": 3, "data": null, "error": "no svcname"})
        );
        assert_eq!(round_trip(&m).reqid, ReqId::Str("zeek-17".into()));
    }

    #[test]
    fn bin_travels_and_decodes_into_types() {
        #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Chunk {
            #[serde(with = "serde_bytes")]
            data: Vec<u8>,
        }
        let c = Chunk {
            data: vec![1, 2, 3],
        };
        let m = Message::request(
            ReqId::Int(1),
            Request::new("raft_snapshot", Doc::pack(&c).unwrap()),
        );
        let bytes = m.encode().unwrap();
        assert!(bytes.windows(2).any(|w| w == [0xc4, 3]), "bin8 of 3 bytes");
        let Body::Request(r) = round_trip(&m).body else {
            panic!()
        };
        assert_eq!(r.options.decode::<Chunk>().unwrap(), c);
    }

    fn packed(v: Value) -> Vec<u8> {
        rmp_serde::to_vec_named(&v).unwrap()
    }

    #[test]
    fn malformed_messages_are_refused_with_the_reqid_when_known() {
        for (body, has_reqid) in [
            (json!({"reqid": 1, "action": "x", "status": 0}), true),
            (json!({"reqid": 1, "action": "x", "data": 1}), true),
            (json!({"reqid": 1, "status": 0, "options": {}}), true),
            (json!({"reqid": 1}), true),
            // keys in sorted order: the bad action comes before the reqid is read
            (json!({"reqid": 1, "action": 5}), false),
            (json!({"reqid": 1, "status": "ok"}), true),
            (json!({"reqid": 1, "status": 1u64 << 40}), true),
            (json!({"action": "x"}), false),
            (json!({"reqid": -1, "action": "x"}), false),
            (json!({"reqid": [1], "action": "x"}), false),
            (json!([1, 2]), false),
        ] {
            let e = Message::decode(&packed(body.clone())).unwrap_err();
            assert!(matches!(e.error, WireError::BadPayload(_)), "{body}");
            assert_eq!(e.reqid.is_some(), has_reqid, "{body}");
        }
        let mut twice = vec![0x83];
        for _ in 0..2 {
            twice.extend_from_slice(&[0xa5, b'r', b'e', b'q', b'i', b'd', 1]);
        }
        twice.extend_from_slice(&[0xa6, b'a', b'c', b't', b'i', b'o', b'n', 0xa1, b'x']);
        assert!(Message::decode(&twice).is_err());
    }

    #[test]
    fn trailing_bytes_deep_nesting_ext_and_huge_lengths_are_refused() {
        let ok = Message::request(ReqId::Int(9), Request::new("x", json!({})))
            .encode()
            .unwrap();
        let mut trailing = ok.clone();
        trailing.push(0xc0);
        assert!(Message::decode(&trailing).is_err());
        let mut deep = json!(1);
        for _ in 0..(MAX_DEPTH + 5) {
            deep = json!([deep]);
        }
        let m = Message::request(ReqId::Int(9), Request::new("x", deep))
            .encode()
            .unwrap();
        assert!(Message::decode(&m).is_err());
        let head = |tail: &[u8]| {
            let mut b = vec![0x83, 0xa5, b'r', b'e', b'q', b'i', b'd', 1];
            b.extend_from_slice(&[0xa6, b'a', b'c', b't', b'i', b'o', b'n', 0xa1, b'x']);
            b.extend_from_slice(&[0xa7, b'o', b'p', b't', b'i', b'o', b'n', b's']);
            b.extend_from_slice(tail);
            b
        };
        assert!(Message::decode(&head(&[0x80])).is_ok());
        for tail in [
            &[0xd4, 1, 0][..],                            // fixext
            &[0xdb, 0xff, 0xff, 0xff, 0xff, 1, 2, 3][..], // str32 of 4 GiB
            &[0xdd, 0xff, 0xff, 0xff, 0xff, 1][..],       // array32 of 4 G items
            &[0xc6, 0xff, 0xff, 0xff, 0xff][..],          // bin32 of 4 GiB
            &[0xc1][..],
            &[0xa2, 0xff, 0xfe][..], // invalid UTF-8
        ] {
            assert!(Message::decode(&head(tail)).is_err(), "{tail:?}");
        }
        for cut in 0..ok.len() {
            assert!(Message::decode(&ok[..cut]).is_err());
        }
    }

    #[test]
    fn docs_decode_absent_options_as_empty_maps() {
        #[derive(serde::Deserialize, Debug, Default)]
        struct O {
            #[serde(default)]
            local: bool,
        }
        assert!(!Doc::Packed(vec![0xc0]).decode::<O>().unwrap().local);
        assert!(!Doc::Json(Value::Null).decode::<O>().unwrap().local);
        assert!(
            Doc::Json(json!({"local": true}))
                .decode::<O>()
                .unwrap()
                .local
        );
        assert!(
            Doc::pack(&json!({"local": true}))
                .unwrap()
                .decode::<O>()
                .unwrap()
                .local
        );
        let d = Doc::pack(&json!({"a": [1, "b"]})).unwrap();
        assert_eq!(serde_json::to_value(&d).unwrap(), json!({"a": [1, "b"]}));
    }

    /// Values with a readable form travel in it, as JSON has them and as a client in
    /// another language sends them: an address is a string, not bytes.
    #[test]
    fn packed_documents_use_the_readable_forms() {
        #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
        struct Hit {
            addr: std::net::IpAddr,
        }
        let hit = Hit {
            addr: "10.0.0.2".parse().unwrap(),
        };
        let d = Doc::pack(&hit).unwrap();
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            json!({"addr": "10.0.0.2"})
        );
        let Doc::Packed(bytes) = &d else {
            unreachable!()
        };
        let raw: Value = rmp_serde::from_slice(bytes).unwrap();
        assert_eq!(raw, json!({"addr": "10.0.0.2"}));
        assert_eq!(d.decode::<Hit>().unwrap(), hit);
    }
}
