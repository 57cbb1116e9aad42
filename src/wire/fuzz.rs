//! Entry points of the fuzz targets, shared with the corpus replay test.
//!
//! `fuzz/fuzz_targets/frame_decoder.rs` calls [`fuzz_frame`] and
//! `fuzz/fuzz_targets/request_decoder.rs` calls [`fuzz_request`]; `tests/fuzz_corpus.rs`
//! replays every saved input through the same functions. Both must never panic; they
//! assert internal consistency (round trips) and panic only when it is violated.

use std::future::Future;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use super::envelope::{Envelope, EnvelopeHead};
use super::error::WireError;
use super::frame::{parse_header, peek_sender, split_frame, NONCE_LEN, SALT_LEN};
use super::io::read_frame;
use super::keyring::Keyring;
use super::replay::ReplayGuard;

/// Cluster name of the fuzzing keyring (corpus frames are sealed with it).
pub const FUZZ_CLUSTER: &str = "fuzz";
/// Secret of the fuzzing keyring.
pub const FUZZ_SECRET: &str = "fuzz-secret";
/// `max_frame` used by [`fuzz_frame`], small enough to reach the oversize path.
pub const FUZZ_MAX_FRAME: u32 = 1 << 20;

/// The keyring fuzz inputs are opened with.
pub fn fuzz_keyring() -> &'static Keyring {
    static K: OnceLock<Keyring> = OnceLock::new();
    K.get_or_init(|| Keyring::new(FUZZ_CLUSTER, FUZZ_SECRET))
}

/// What [`fuzz_frame`] saw in its input.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrameReport {
    /// Complete frames read from the input taken as a stream.
    pub frames: usize,
    /// Empty packets among them.
    pub empty: usize,
    /// Frames that decrypted and decoded into an envelope.
    pub opened: usize,
    /// Whether the stream ended with an error (truncated, oversize).
    pub stream_error: bool,
}

fn poll_ready<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Feeds arbitrary bytes to the frame layer: as a stream of frames through [`read_frame`],
/// header parsing and decryption, and as one complete frame through [`Keyring::open`].
pub fn fuzz_frame(data: &[u8]) -> FrameReport {
    let keyring = fuzz_keyring();
    let mut report = FrameReport::default();
    let mut stream = data;
    loop {
        // A slice never returns Pending.
        let Some(res) = poll_ready(read_frame(&mut stream, FUZZ_MAX_FRAME)) else {
            unreachable!("reading from a slice is always ready");
        };
        let mut frame = match res {
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
        let body_len = frame.body().len();
        let sender = match parse_header(frame.body()) {
            Ok(h) => {
                assert!(!h.sender.is_empty() && h.len < body_len);
                h.sender.to_owned()
            }
            Err(_) => continue,
        };
        if let Ok(d) = keyring.decrypt(frame.body_mut()) {
            assert_eq!(d.sender, sender);
            if Envelope::decode(d.plaintext).is_ok() {
                report.opened += 1;
            }
        }
    }
    // The whole input as one frame.
    let whole = keyring.open(data);
    if let Ok(Some(body)) = split_frame(data, u32::MAX) {
        match (parse_header(body), peek_sender(data)) {
            (Ok(h), Ok(s)) => assert_eq!(h.sender, s),
            (Err(a), Err(b)) => assert_eq!(a.kind(), b.kind()),
            (a, b) => panic!("parse_header {a:?} and peek_sender {b:?} disagree"),
        }
    } else {
        assert!(whole.is_err());
    }
    report
}

/// Feeds arbitrary bytes to the envelope decoder, as a receiver would after decryption.
///
/// When they decode, checks that re-encoding is stable, that a seal/open round trip gives
/// the same envelope, and that the replay guard refuses the same message twice. Also seals
/// the raw bytes and checks that opening them fails or succeeds exactly like decoding.
pub fn fuzz_request(data: &[u8]) -> Result<Envelope, WireError> {
    let keyring = fuzz_keyring();
    let decoded = Envelope::decode(data);
    let head = EnvelopeHead::decode(data);
    if let Ok(env) = &decoded {
        let head = head.expect("a decodable envelope has a decodable head");
        assert_eq!(
            (head.ts_ms, head.msg_id, head.reqid),
            (env.ts_ms, env.msg_id, env.reqid)
        );
        let again = Envelope::decode(&env.encode().expect("a decoded envelope re-encodes"))
            .expect("a re-encoded envelope decodes");
        assert_eq!(&again, env, "re-encoding changed the envelope");
        let frame = keyring
            .seal_with("fuzz-node", env, &[1; SALT_LEN], &[2; NONCE_LEN])
            .expect("seal");
        let opened = keyring.open(&frame).expect("open what was just sealed");
        assert_eq!(opened.sender, "fuzz-node");
        assert_eq!(&opened.envelope, env);
        let mut guard = ReplayGuard::new(60_000);
        let first = guard.check("fuzz-node", env.ts_ms, env.msg_id, env.ts_ms);
        assert!(first.is_ok(), "fresh message refused: {first:?}");
        let second = guard.check("fuzz-node", env.ts_ms, env.msg_id, env.ts_ms);
        assert!(matches!(second, Err(WireError::Replayed { .. })));
    }
    let raw = keyring
        .seal_plaintext("fuzz-node", data)
        .expect("seal raw bytes");
    match (keyring.open(&raw), &decoded) {
        (Ok(o), Ok(env)) => assert_eq!(&o.envelope, env),
        (Err(a), Err(b)) => assert_eq!(a.kind(), b.kind()),
        (a, b) => panic!("open {a:?} and decode {b:?} disagree"),
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::envelope::Request;
    use serde_json::json;

    #[test]
    fn entry_points_accept_valid_and_garbage_input() {
        let env = Envelope::request(1, Request::new("join", json!({"node": "n9"})));
        let f = fuzz_keyring().seal("n9", &env).unwrap();
        let mut two = f.clone();
        two.extend_from_slice(&[0, 0, 0, 0]);
        two.extend_from_slice(&f);
        let r = fuzz_frame(&two);
        assert_eq!(
            (r.frames, r.empty, r.opened, r.stream_error),
            (3, 1, 2, false)
        );
        let r = fuzz_frame(&f[..f.len() - 1]);
        assert_eq!((r.frames, r.opened, r.stream_error), (0, 0, true));
        assert_eq!(fuzz_request(&env.encode().unwrap()).unwrap(), env);
        assert!(fuzz_request(b"\xc1garbage").is_err());
        assert_eq!(fuzz_frame(b"").frames, 0);
    }
}
