//! Wire protocol v1: frames, crypto, envelopes, replay protection, async I/O and a client.
//!
//! See `docs/PROTOCOL.md` for the byte-level description. In short, every message is
//! `len | version | n | sender | salt | nonce | AES-256-GCM(MessagePack envelope) | tag`,
//! with a per-message key `HKDF-SHA256(secret, salt, "om/v1/" + cluster_name)`.
//!
//! - [`frame`] — layout constants, the header-only parser ([`parse_header`],
//!   [`peek_sender`]) and [`Frame`].
//! - [`keyring`] — [`Keyring::seal`] and [`Keyring::open`] / [`Keyring::decrypt`].
//! - [`envelope`] — [`Envelope`], [`Request`], [`Response`] and the [`status`] codes.
//! - [`replay`] — [`ReplayGuard`].
//! - [`io`] — [`read_frame`] and [`write_frame`] for tokio streams.
//! - [`client`] — [`Client`], a pipelined connection to one node.
//! - [`fuzz`] — the entry points shared by the fuzz targets and the corpus test.

pub mod client;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod fuzz;
pub mod io;
pub mod keyring;
pub mod replay;

pub use client::{Client, ClientError, ClientOptions};
pub use envelope::{now_ms, status, Body, Envelope, EnvelopeHead, Request, Response};
pub use error::{ErrorKind, WireError};
pub use frame::{
    parse_header, peek_sender, split_frame, Frame, Header, DEFAULT_MAX_FRAME, DEFAULT_PORT,
    LEN_SIZE, NONCE_LEN, SALT_LEN, TAG_LEN, VERSION,
};
pub use fuzz::{fuzz_frame, fuzz_request};
pub use io::{check_len, read_body, read_frame, read_len, write_empty, write_frame, EMPTY_PACKET};
pub use keyring::{Decrypted, Keyring, Opened};
pub use replay::{ReplayGuard, DEFAULT_REPLAY_WINDOW_MS};
