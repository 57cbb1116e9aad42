//! Wire protocol v2: sessions authenticated by the cluster secret, then encrypted messages.
//!
//! See `docs/PROTOCOL.md` for the byte-level description. In short, a connection opens with
//! a clear hello carrying the client's name and the first message of a
//! `Noise_NNpsk0_25519_AESGCM_SHA256` handshake keyed by the cluster secret; the node
//! answers with the second message; from then on every frame is one record encrypted
//! under a per-direction key with a counter nonce, and records carry MessagePack messages.
//!
//! - [`frame`]: clear frame layouts and their parsers ([`parse_hello`], [`parse_answer`]).
//! - [`keyring`]: [`Keyring`], the cluster name and secrets, and the pre-shared key.
//! - [`session`]: the handshake ([`Initiator`], [`accept`]) and records ([`Sealer`],
//!   [`Opener`]).
//! - [`message`]: [`Message`], [`Request`], [`Response`], [`Doc`] and the [`status`] codes.
//! - [`io`]: [`read_frame`] and friends for tokio streams.
//! - [`client`]: [`Client`], a pipelined session to one node.
//! - [`fuzz`]: the entry points shared by the fuzz targets and the corpus test.

pub mod client;
pub mod error;
pub mod frame;
pub mod fuzz;
pub mod io;
pub mod keyring;
pub mod message;
pub mod session;

pub use client::{Client, ClientError, ClientOptions};
pub use error::{ErrorKind, WireError};
pub use frame::{
    encode_refusal, parse_answer, parse_hello, Frame, Hello, HelloAnswer, Mode, Refusal,
    RefusalCode, DEFAULT_MAX_FRAME, DEFAULT_PORT, LEN_SIZE, MAX_HELLO_LEN, VERSION,
};
pub use fuzz::{fuzz_frame, fuzz_handshake};
pub use io::{check_len, read_body, read_frame, read_len, write_empty, write_frame, EMPTY_PACKET};
pub use keyring::Keyring;
pub use message::{Body, Doc, Message, ReqId, Request, Response, Status, StatusCode, Undecodable};
pub use session::{accept, accept_for_testing, Accepted, Initiator, Opener, Outgoing, Sealer};
