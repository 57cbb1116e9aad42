//! Entry points of the fuzz targets, shared with the corpus replay test.
//!
//! `fuzz/fuzz_targets/handshake_decoder.rs` calls [`fuzz_handshake`] and
//! `fuzz/fuzz_targets/frame_decoder.rs` calls [`fuzz_frame`]; `tests/fuzz_corpus.rs` replays
//! every saved input through the same functions. Both must never panic; they assert
//! internal consistency (round trips) and panic only when it is violated.

use std::future::Future;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use super::error::WireError;
use super::frame::{parse_answer, parse_hello, HelloAnswer, Mode, LEN_SIZE};
use super::io::read_frame;
use super::keyring::Keyring;
use super::message::{Body, Message};
use super::session::{accept, Initiator};

/// Cluster name of the fuzzing keyring.
pub const FUZZ_CLUSTER: &str = "fuzz";
/// Secret of the fuzzing keyring.
pub const FUZZ_SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret";
/// Name of the fuzzed node.
pub const FUZZ_NODE: &str = "fuzz-node";
/// `max_frame` used by [`fuzz_frame`], small enough to reach the oversize path.
pub const FUZZ_MAX_FRAME: u32 = 1 << 20;

/// The keyring fuzz inputs are answered with.
pub fn fuzz_keyring() -> &'static Keyring {
    static K: OnceLock<Keyring> = OnceLock::new();
    K.get_or_init(|| Keyring::new(FUZZ_CLUSTER, FUZZ_SECRET))
}

fn poll_ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("reading from a slice is always ready"),
    }
}

/// What [`fuzz_handshake`] saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeReport {
    /// The input parsed as a hello.
    pub hello: bool,
    /// The hello authenticated (only inputs built with the fuzz keyring do).
    pub accepted: bool,
    /// The input parsed as a node's answer.
    pub answer: bool,
}

/// Arbitrary bytes as a hello body a node receives, and as the answer a client receives.
pub fn fuzz_handshake(data: &[u8]) -> HandshakeReport {
    let mut report = HandshakeReport::default();
    if let Ok(h) = parse_hello(data) {
        report.hello = true;
        assert!(!h.sender.is_empty() && h.sender.len() <= 255 && h.receiver.len() <= 255);
        // The keyring a node answers the session's mode with.
        let keyring = match h.mode {
            Mode::Member => fuzz_keyring().clone(),
            Mode::Join => fuzz_keyring().joining(),
        };
        if let Ok(acc) = accept(&keyring, &h, FUZZ_NODE) {
            report.accepted = true;
            assert!(matches!(
                parse_answer(&acc.welcome[LEN_SIZE..]),
                Ok(HelloAnswer::Welcome(_))
            ));
        }
    }
    if let Ok(a) = parse_answer(data) {
        report.answer = true;
        if let HelloAnswer::Welcome(noise) = a {
            let (init, _) = Initiator::start(fuzz_keyring(), "fuzz-client", "").expect("start");
            // A welcome from anyone but the node that saw our hello never authenticates.
            assert!(
                init.finish(noise).is_err(),
                "a forged welcome opened a session"
            );
        }
    }
    report
}

/// What [`fuzz_frame`] saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrameReport {
    /// Frames read from the input taken as a stream.
    pub frames: usize,
    /// Empty packets among them.
    pub empty: usize,
    /// Whether the stream ended with an error (truncated, oversize).
    pub stream_error: bool,
    /// Whether the input decoded as a message.
    pub message: bool,
}

/// Arbitrary bytes as the records a node reads after a handshake, and as a message's
/// plaintext: sealed through a real session (chunked), opened and decoded, the result
/// must be what decoding the bytes directly gives, and a decoded message re-encodes to
/// itself.
pub fn fuzz_frame(data: &[u8]) -> FrameReport {
    let mut report = FrameReport::default();
    let (_, mut node_opener) = session();
    let mut stream = data;
    loop {
        let frame = match poll_ready(read_frame(&mut stream, FUZZ_MAX_FRAME)) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                assert!(
                    matches!(e, WireError::Truncated { .. } | WireError::Oversize { .. }),
                    "unexpected stream error {e}"
                );
                report.stream_error = true;
                break;
            }
        };
        report.frames += 1;
        if frame.is_empty() {
            report.empty += 1;
            continue;
        }
        // Nobody but the client of this session can make a record that opens.
        assert!(node_opener.open(frame.body(), FUZZ_MAX_FRAME).is_err());
        break;
    }
    let (mut client_sealer, mut node_opener) = session();
    let mut wire = Vec::new();
    client_sealer.seal(data, &mut wire).expect("seal");
    let mut rest = &wire[..];
    let mut opened = None;
    while let Ok(Some(f)) = poll_ready(read_frame(&mut rest, u32::MAX)) {
        if let Some(m) = node_opener
            .open(f.body(), u32::MAX)
            .expect("own records open")
        {
            opened = Some(m);
        }
    }
    assert_eq!(
        opened.as_deref(),
        Some(data),
        "sealing and opening changed the bytes"
    );
    let direct = Message::decode(data);
    if let Ok(m) = &direct {
        report.message = true;
        let again = Message::decode(&m.encode().expect("a decoded message re-encodes"))
            .expect("a re-encoded message decodes");
        assert_eq!(&again, m, "re-encoding changed the message");
        if let Body::Request(r) = &m.body {
            let _ = r
                .options
                .clone()
                .decode::<raft::rpc::Addressed<raft::rpc::Rpc>>();
        }
    }
    report
}

/// A client sealer and the node opener of one fresh session.
fn session() -> (super::session::Sealer, super::session::Opener) {
    let k = fuzz_keyring();
    let (init, hello) = Initiator::start(k, "fuzz-client", FUZZ_NODE).expect("start");
    let h = parse_hello(&hello[LEN_SIZE..]).expect("own hello parses");
    let acc = accept(k, &h, FUZZ_NODE).expect("own hello is accepted");
    let (sealer, _opener, _) = init
        .finish(&acc.welcome[LEN_SIZE + 2..])
        .expect("own welcome opens");
    (sealer, acc.opener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::{ReqId, Request};
    use serde_json::json;

    #[test]
    fn entry_points_accept_valid_and_garbage_input() {
        let (_, hello) = Initiator::start(fuzz_keyring(), "n9", FUZZ_NODE).unwrap();
        let r = fuzz_handshake(&hello[LEN_SIZE..]);
        assert!(r.hello && r.accepted && !r.answer);
        let (_, other) = Initiator::start(&Keyring::new("x", "y"), "n9", "").unwrap();
        let r = fuzz_handshake(&other[LEN_SIZE..]);
        assert!(r.hello && !r.accepted);
        assert_eq!(fuzz_handshake(b""), HandshakeReport::default());

        let m = Message::request(ReqId::Int(1), Request::new("join", json!({"node": "n9"})));
        let r = fuzz_frame(&m.encode().unwrap());
        assert!(r.message);
        let r = fuzz_frame(&[0, 0, 0, 0, 0, 0, 0, 20, 1]);
        assert_eq!((r.frames, r.empty, r.stream_error), (1, 1, true));
        assert!(!fuzz_frame(b"\xc1garbage").message);
    }
}
