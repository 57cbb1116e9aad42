//! Frame layouts of wire protocol v2 and their parsers: what travels in clear.
//!
//! Every frame is `u32 BE len | body`; `len` 0 is the empty packet. A connection opens with
//! one [`Hello`] from the client, answered by a welcome (Noise's second handshake message)
//! or a [`Refusal`]; after the welcome every frame is a record (one Noise transport
//! message, see [`super::session`]).
//!
//! ```text
//! hello    = version=2 | kind=1 | mode | n | sender[n] | m | receiver[m] | noise1[48]
//! welcome  = version=2 | kind=2 | noise2 (e[32] | ENCRYPT(responder name) )
//! refusal  = version=2 | kind=3 | code | UTF-8 reason
//! ```
//!
//! Parsing needs no key, so the listener reads the sender name and checks its blacklist
//! before it spends any crypto on a connection.

use super::error::WireError;

/// Protocol version carried in every clear frame.
pub const VERSION: u8 = 2;
/// Size of the big-endian length prefix.
pub const LEN_SIZE: usize = 4;
/// Longest sender or receiver nodename, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Size of Noise's first message for `NNpsk0` with an empty payload: `e` and a tag.
pub const NOISE1_LEN: usize = 32 + 16;
/// Longest hello body: both names at their longest.
pub const MAX_HELLO_LEN: usize = 5 + 2 * MAX_NAME_LEN + NOISE1_LEN;
/// Longest Noise message, hence longest record body.
pub const MAX_RECORD: usize = 65535;
/// Default `listener.max_frame`: the longest message (request or response), 16 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;
/// Default `listener.port`.
pub const DEFAULT_PORT: u16 = 1214;

/// The `kind` byte of a clear frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Client to node: opens a session.
    Hello = 1,
    /// Node to client: the session is open.
    Welcome = 2,
    /// Node to client: no session; the node closes the connection.
    Refusal = 3,
}

/// Which session a client asks for; it decides the key and what may be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// A member of the cluster: the key binds the cluster name; every action it may ask.
    Member = 1,
    /// A node outside the cluster, which knows the secret but not the cluster name: the key
    /// binds an empty cluster name and only `join` is served.
    Join = 2,
}

/// A parsed hello, borrowed from the frame body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello<'a> {
    /// The session asked for.
    pub mode: Mode,
    /// The client's nodename, in clear and bound into the handshake.
    pub sender: &'a str,
    /// The node the client means to reach; empty when it knows only an address.
    pub receiver: &'a str,
    /// Noise's first handshake message.
    pub noise: &'a [u8; NOISE1_LEN],
}

/// Why a node refused a hello (the `code` byte of a refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RefusalCode {
    /// Not a v2 hello (a v1 frame, or an unknown version).
    Version = 1,
    /// A v2 hello that does not parse.
    Malformed = 2,
    /// The hello names another node as its receiver.
    Misaddressed = 3,
    /// A member session asked by a name that is not in `cluster.nodes`.
    NotMember = 4,
    /// The handshake did not authenticate: another secret or cluster name.
    Auth = 5,
    /// This (sender, address) pair is blacklisted.
    Blacklisted = 6,
    /// Too many handshakes from this address; retry later.
    RateLimited = 7,
}

impl RefusalCode {
    /// The code for a byte, if it is one.
    pub fn from_byte(b: u8) -> Option<RefusalCode> {
        use RefusalCode::*;
        [
            Version,
            Malformed,
            Misaddressed,
            NotMember,
            Auth,
            Blacklisted,
            RateLimited,
        ]
        .into_iter()
        .find(|c| *c as u8 == b)
    }
}

/// A parsed refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why; `None` for a code this client does not know.
    pub code: Option<RefusalCode>,
    /// The node's explanation.
    pub reason: String,
}

fn name<'a>(body: &'a [u8], at: usize, what: &'static str) -> Result<(&'a str, usize), WireError> {
    let n = *body
        .get(at)
        .ok_or(WireError::TooShort { len: body.len() })? as usize;
    let end = at + 1 + n;
    let bytes = body
        .get(at + 1..end)
        .ok_or(WireError::TooShort { len: body.len() })?;
    let s = std::str::from_utf8(bytes).map_err(|_| WireError::BadSender(what))?;
    Ok((s, end))
}

/// Parses a hello body (the bytes after the length field). Never panics.
///
/// Checks, in order: version (a v1 frame is [`WireError::BadVersion`]`(1)`), kind, mode,
/// sender (1..=255 bytes of UTF-8), receiver (0..=255), the Noise message's exact length.
pub fn parse_hello(body: &[u8]) -> Result<Hello<'_>, WireError> {
    match body.first() {
        None => return Err(WireError::TooShort { len: 0 }),
        Some(&VERSION) => {}
        Some(&v) => return Err(WireError::BadVersion(v)),
    }
    if body.get(1) != Some(&(Kind::Hello as u8)) {
        return Err(WireError::BadPayload(
            "the first frame is not a hello".into(),
        ));
    }
    let mode = match body.get(2) {
        Some(1) => Mode::Member,
        Some(2) => Mode::Join,
        Some(m) => return Err(WireError::BadPayload(format!("unknown session mode {m}"))),
        None => return Err(WireError::TooShort { len: body.len() }),
    };
    let (sender, at) = name(body, 3, "sender nodename is not UTF-8")?;
    if sender.is_empty() {
        return Err(WireError::BadSender("empty sender nodename"));
    }
    let (receiver, at) = name(body, at, "receiver nodename is not UTF-8")?;
    let noise: &[u8; NOISE1_LEN] = body[at..].try_into().map_err(|_| {
        WireError::BadPayload(format!(
            "the handshake message is {} bytes, not {NOISE1_LEN}",
            body.len() - at
        ))
    })?;
    Ok(Hello {
        mode,
        sender,
        receiver,
        noise,
    })
}

/// A hello frame (length prefix included).
pub fn encode_hello(
    mode: Mode,
    sender: &str,
    receiver: &str,
    noise: &[u8],
) -> Result<Vec<u8>, WireError> {
    if sender.is_empty() || sender.len() > MAX_NAME_LEN {
        return Err(WireError::BadSender(
            "sender nodename must be 1..=255 bytes",
        ));
    }
    if receiver.len() > MAX_NAME_LEN {
        return Err(WireError::BadSender(
            "receiver nodename must be at most 255 bytes",
        ));
    }
    assert_eq!(
        noise.len(),
        NOISE1_LEN,
        "NNpsk0 message 1 with an empty payload"
    );
    let mut body = vec![VERSION, Kind::Hello as u8, mode as u8, sender.len() as u8];
    body.extend_from_slice(sender.as_bytes());
    body.push(receiver.len() as u8);
    body.extend_from_slice(receiver.as_bytes());
    body.extend_from_slice(noise);
    Ok(with_len(body))
}

/// A welcome frame around Noise's second message.
pub fn encode_welcome(noise: &[u8]) -> Vec<u8> {
    let mut body = vec![VERSION, Kind::Welcome as u8];
    body.extend_from_slice(noise);
    with_len(body)
}

/// A refusal frame; the reason is cut to 1 KiB at a character boundary.
pub fn encode_refusal(code: RefusalCode, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(1024);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut body = vec![VERSION, Kind::Refusal as u8, code as u8];
    body.extend_from_slice(&reason.as_bytes()[..end]);
    with_len(body)
}

/// What a node answered to a hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloAnswer<'a> {
    /// Noise's second message.
    Welcome(&'a [u8]),
    /// No session.
    Refused(Refusal),
}

/// Parses the node's answer to a hello.
pub fn parse_answer(body: &[u8]) -> Result<HelloAnswer<'_>, WireError> {
    match body {
        [VERSION, k, rest @ ..] if *k == Kind::Welcome as u8 => Ok(HelloAnswer::Welcome(rest)),
        [VERSION, k, code, reason @ ..] if *k == Kind::Refusal as u8 => {
            Ok(HelloAnswer::Refused(Refusal {
                code: RefusalCode::from_byte(*code),
                reason: String::from_utf8_lossy(reason).into_owned(),
            }))
        }
        [v, ..] if *v != VERSION => Err(WireError::BadVersion(*v)),
        _ => Err(WireError::BadPayload("not a welcome nor a refusal".into())),
    }
}

/// Prefixes `body` with its length.
pub fn with_len(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(LEN_SIZE + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// One frame as read from a stream: the body after the length field (empty = empty packet).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    body: Vec<u8>,
}

impl Frame {
    /// Wraps a frame body (the bytes after the length field).
    pub fn from_body(body: Vec<u8>) -> Frame {
        Frame { body }
    }

    /// Whether this is the empty packet (len 0), which asks the node to dequeue actions.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The body bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Gives the body buffer back.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(sender: &str, receiver: &str) -> Vec<u8> {
        encode_hello(Mode::Member, sender, receiver, &[7; NOISE1_LEN]).unwrap()[LEN_SIZE..].to_vec()
    }

    #[test]
    fn a_hello_round_trips() {
        let b = hello("n1", "n2");
        let h = parse_hello(&b).unwrap();
        assert_eq!((h.mode, h.sender, h.receiver), (Mode::Member, "n1", "n2"));
        assert_eq!(h.noise, &[7; NOISE1_LEN]);
        let longest = hello(&"a".repeat(255), &"b".repeat(255));
        assert_eq!(longest.len(), MAX_HELLO_LEN);
        assert!(parse_hello(&longest).is_ok());
        assert!(parse_hello(&hello("n1", "")).unwrap().receiver.is_empty());
    }

    #[test]
    fn each_hello_defect_is_refused() {
        let good = hello("n1", "n2");
        let mut v1 = good.clone();
        v1[0] = 1;
        assert!(matches!(parse_hello(&v1), Err(WireError::BadVersion(1))));
        let mut kind = good.clone();
        kind[1] = 2;
        assert!(matches!(parse_hello(&kind), Err(WireError::BadPayload(_))));
        let mut mode = good.clone();
        mode[2] = 9;
        assert!(matches!(parse_hello(&mode), Err(WireError::BadPayload(_))));
        let mut empty = good.clone();
        empty[3] = 0;
        assert!(parse_hello(&empty).is_err());
        let mut utf8 = good.clone();
        utf8[4] = 0xff;
        assert!(matches!(parse_hello(&utf8), Err(WireError::BadSender(_))));
        assert!(parse_hello(&good[..good.len() - 1]).is_err());
        let mut long = good.clone();
        long.push(0);
        assert!(parse_hello(&long).is_err());
        for cut in 0..good.len() {
            assert!(parse_hello(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(encode_hello(Mode::Join, "", "", &[0; NOISE1_LEN]).is_err());
        assert!(encode_hello(Mode::Join, &"x".repeat(256), "", &[0; NOISE1_LEN]).is_err());
    }

    #[test]
    fn answers_parse() {
        let w = encode_welcome(&[1, 2, 3]);
        assert_eq!(
            parse_answer(&w[LEN_SIZE..]).unwrap(),
            HelloAnswer::Welcome(&[1, 2, 3])
        );
        let r = encode_refusal(RefusalCode::Auth, &"é".repeat(600));
        match parse_answer(&r[LEN_SIZE..]).unwrap() {
            HelloAnswer::Refused(r) => {
                assert_eq!(r.code, Some(RefusalCode::Auth));
                assert_eq!(r.reason.len(), 1024);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_answer(&[1, 3, 1]),
            Err(WireError::BadVersion(1))
        ));
        assert!(parse_answer(&[]).is_err());
        assert_eq!(RefusalCode::from_byte(7), Some(RefusalCode::RateLimited));
        assert_eq!(RefusalCode::from_byte(0), None);
    }
}
