//! Cluster keyring: seals envelopes into frames and opens frames back into envelopes.
//!
//! Per message: `key = HKDF-SHA256(ikm = secret, salt = salt, info = "om/v1/" + cluster_name)`,
//! then AES-256-GCM with the 12-byte nonce and `AAD = header bytes version..=nonce`.
//! Salt and nonce are fresh random bytes for every frame, so a key is never used twice and
//! nothing derived from a secret is cached across messages.
//!
//! A keyring may hold several secrets (for rotation): the first seals, all are tried when
//! opening, in order. A failed try leaves the ciphertext untouched (AES-GCM checks the tag
//! before decrypting), so trying the next secret is sound.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use std::fmt;
use std::sync::Arc;

use super::envelope::Envelope;
use super::error::WireError;
use super::frame::{
    header_len, parse_header, split_frame, LEN_SIZE, MAX_SENDER_LEN, NONCE_LEN, SALT_LEN, TAG_LEN,
    VERSION,
};

/// Prefix of the HKDF `info` string; the cluster name follows it.
pub const INFO_PREFIX: &str = "om/v1/";

/// Cluster name and secrets; cheap to clone (shared inside).
#[derive(Clone)]
pub struct Keyring {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    cluster_name: String,
    info: Vec<u8>,
    secrets: Vec<Vec<u8>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("cluster_name", &self.inner.cluster_name)
            .field(
                "secrets",
                &format_args!("<{} redacted>", self.inner.secrets.len()),
            )
            .finish()
    }
}

/// A decrypted frame body, borrowed from the buffer it was decrypted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decrypted<'a> {
    /// Sender nodename from the clear header (authenticated as AAD).
    pub sender: &'a str,
    /// The MessagePack envelope bytes.
    pub plaintext: &'a [u8],
    /// Index of the secret that opened the frame (0 = the current secret).
    pub secret_index: usize,
}

/// A frame opened and decoded (no replay check: that needs the receiver's state).
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    /// Sender nodename.
    pub sender: String,
    /// The decoded envelope.
    pub envelope: Envelope,
}

impl Keyring {
    /// A keyring for `cluster_name` that seals and opens with `secret`.
    pub fn new(cluster_name: impl Into<String>, secret: impl AsRef<[u8]>) -> Keyring {
        let cluster_name = cluster_name.into();
        let info = format!("{INFO_PREFIX}{cluster_name}").into_bytes();
        Keyring {
            inner: Arc::new(Inner {
                cluster_name,
                info,
                secrets: vec![secret.as_ref().to_vec()],
            }),
        }
    }

    /// Adds a secret accepted when opening but never used to seal (rotation).
    pub fn with_secret(self, secret: impl AsRef<[u8]>) -> Keyring {
        let mut inner = (*self.inner).clone();
        inner.secrets.push(secret.as_ref().to_vec());
        Keyring {
            inner: Arc::new(inner),
        }
    }

    /// The keyring of a node outside any cluster: the same secrets, an empty cluster name.
    ///
    /// A joiner knows the secret but not the cluster name; its `join` request and the
    /// answer to it are sealed with this keyring.
    pub fn joining(&self) -> Keyring {
        Keyring {
            inner: Arc::new(Inner {
                cluster_name: String::new(),
                info: INFO_PREFIX.as_bytes().to_vec(),
                secrets: self.inner.secrets.clone(),
            }),
        }
    }

    /// The cluster name bound into every key.
    pub fn cluster_name(&self) -> &str {
        &self.inner.cluster_name
    }

    /// Number of secrets held (the first seals).
    pub fn secret_count(&self) -> usize {
        self.inner.secrets.len()
    }

    fn cipher(&self, secret: &[u8], salt: &[u8; SALT_LEN]) -> Aes256Gcm {
        let hk = Hkdf::<Sha256>::new(Some(salt), secret);
        let mut okm = [0u8; 32];
        hk.expand(&self.inner.info, &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let cipher = Aes256Gcm::new(&okm.into());
        okm.fill(0);
        cipher
    }

    /// Seals `env` from `sender` into a complete frame (length prefix included), with a
    /// fresh random salt and nonce.
    pub fn seal(&self, sender: &str, env: &Envelope) -> Result<Vec<u8>, WireError> {
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        let mut rng = rand::thread_rng();
        rng.fill_bytes(&mut salt);
        rng.fill_bytes(&mut nonce);
        self.seal_with(sender, env, &salt, &nonce)
    }

    /// Seals with a caller-chosen salt and nonce: for known-answer tests and documentation
    /// only; reusing a (salt, nonce) pair with a secret breaks AES-GCM.
    pub fn seal_with(
        &self,
        sender: &str,
        env: &Envelope,
        salt: &[u8; SALT_LEN],
        nonce: &[u8; NONCE_LEN],
    ) -> Result<Vec<u8>, WireError> {
        self.seal_inner(sender, salt, nonce, |buf| env.encode_into(buf))
    }

    /// Seals arbitrary plaintext bytes (not necessarily an envelope) with a fresh salt and
    /// nonce: for tests and fuzzing of the payload decoder behind valid crypto.
    pub fn seal_plaintext(&self, sender: &str, plaintext: &[u8]) -> Result<Vec<u8>, WireError> {
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        let mut rng = rand::thread_rng();
        rng.fill_bytes(&mut salt);
        rng.fill_bytes(&mut nonce);
        self.seal_inner(sender, &salt, &nonce, |buf| {
            buf.extend_from_slice(plaintext);
            Ok(())
        })
    }

    fn seal_inner(
        &self,
        sender: &str,
        salt: &[u8; SALT_LEN],
        nonce: &[u8; NONCE_LEN],
        write_plaintext: impl FnOnce(&mut Vec<u8>) -> Result<(), WireError>,
    ) -> Result<Vec<u8>, WireError> {
        let n = sender.len();
        if n == 0 {
            return Err(WireError::BadSender("empty nodename"));
        }
        if n > MAX_SENDER_LEN {
            return Err(WireError::BadSender("nodename longer than 255 bytes"));
        }
        let hlen = header_len(n);
        let mut buf = Vec::with_capacity(LEN_SIZE + hlen + 192 + TAG_LEN);
        buf.extend_from_slice(&[0u8; LEN_SIZE]);
        buf.push(VERSION);
        buf.push(n as u8);
        buf.extend_from_slice(sender.as_bytes());
        buf.extend_from_slice(salt);
        buf.extend_from_slice(nonce);
        write_plaintext(&mut buf)?;
        let body_len = buf.len() - LEN_SIZE + TAG_LEN;
        let len = u32::try_from(body_len).map_err(|_| WireError::Oversize {
            len: body_len as u64,
            max: u32::MAX,
        })?;
        let cipher = self.cipher(&self.inner.secrets[0], salt);
        let (head, plaintext) = buf.split_at_mut(LEN_SIZE + hlen);
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(nonce), &head[LEN_SIZE..], plaintext)
            .map_err(|_| WireError::Encode("AES-GCM refused the plaintext".into()))?;
        buf.extend_from_slice(&tag);
        buf[..LEN_SIZE].copy_from_slice(&len.to_be_bytes());
        Ok(buf)
    }

    /// Decrypts a frame body (the bytes after the length field) in place.
    ///
    /// On success the plaintext is the part of `body` between the header and the tag.
    pub fn decrypt<'a>(&self, body: &'a mut [u8]) -> Result<Decrypted<'a>, WireError> {
        let hlen = parse_header(body)?.len;
        let (head, rest) = body.split_at_mut(hlen);
        let head: &'a [u8] = head;
        let hdr = parse_header_prefix(head);
        let (ct, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        let tag = Tag::from_slice(tag);
        let nonce = Nonce::from_slice(hdr.nonce);
        for (i, secret) in self.inner.secrets.iter().enumerate() {
            let cipher = self.cipher(secret, hdr.salt);
            if cipher
                .decrypt_in_place_detached(nonce, head, ct, tag)
                .is_ok()
            {
                return Ok(Decrypted {
                    sender: hdr.sender,
                    plaintext: ct,
                    secret_index: i,
                });
            }
        }
        Err(WireError::Auth)
    }

    /// Opens a complete frame (length prefix included): framing, header, decryption and
    /// envelope decoding. Replay is not checked here (see [`super::ReplayGuard`]).
    pub fn open(&self, frame: &[u8]) -> Result<Opened, WireError> {
        let body = split_frame(frame, u32::MAX)?.ok_or(WireError::TooShort { len: 0 })?;
        // Check the header before copying anything.
        parse_header(body)?;
        let mut buf = body.to_vec();
        let d = self.decrypt(&mut buf)?;
        let envelope = Envelope::decode(d.plaintext)?;
        Ok(Opened {
            sender: d.sender.to_owned(),
            envelope,
        })
    }
}

struct HeaderPrefix<'a> {
    sender: &'a str,
    salt: &'a [u8; SALT_LEN],
    nonce: &'a [u8; NONCE_LEN],
}

/// Re-reads a header already validated by [`parse_header`] (no tag follows in `head`).
fn parse_header_prefix(head: &[u8]) -> HeaderPrefix<'_> {
    let n = head[1] as usize;
    HeaderPrefix {
        sender: std::str::from_utf8(&head[2..2 + n]).expect("validated by parse_header"),
        salt: head[2 + n..2 + n + SALT_LEN].try_into().expect("SALT_LEN"),
        nonce: head[2 + n + SALT_LEN..].try_into().expect("NONCE_LEN"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::envelope::{Request, Response};
    use serde_json::json;

    fn env() -> Envelope {
        Envelope::request(7, Request::new("daemon_status", json!({"x": 1})))
    }

    #[test]
    fn seal_open_round_trip() {
        let k = Keyring::new("c1", "s3cr3t");
        let f = k.seal("node1", &env()).unwrap();
        let o = k.open(&f).unwrap();
        assert_eq!(o.sender, "node1");
        assert_eq!(o.envelope, env_with(&o.envelope));
        let r = Envelope::response(7, Response::ok(json!("pong")));
        let f = k.seal("node2", &r).unwrap();
        assert_eq!(k.open(&f).unwrap().envelope, r);
    }

    fn env_with(e: &Envelope) -> Envelope {
        Envelope {
            ts_ms: e.ts_ms,
            msg_id: e.msg_id,
            ..env()
        }
    }

    #[test]
    fn wrong_secret_or_cluster_is_auth_failure() {
        let f = Keyring::new("c1", "a").seal("n", &env()).unwrap();
        assert!(matches!(
            Keyring::new("c1", "b").open(&f),
            Err(WireError::Auth)
        ));
        assert!(matches!(
            Keyring::new("c2", "a").open(&f),
            Err(WireError::Auth)
        ));
    }

    #[test]
    fn rotation_opens_with_any_secret_and_seals_with_first() {
        let old = Keyring::new("c", "old");
        let new = Keyring::new("c", "new").with_secret("old");
        assert_eq!(new.secret_count(), 2);
        let f = old.seal("n", &env()).unwrap();
        assert!(new.open(&f).is_ok());
        let mut body = f[LEN_SIZE..].to_vec();
        assert_eq!(new.decrypt(&mut body).unwrap().secret_index, 1);
        let f = new.seal("n", &env()).unwrap();
        assert!(matches!(old.open(&f), Err(WireError::Auth)));
    }

    #[test]
    fn seal_refuses_bad_sender_names() {
        let k = Keyring::new("c", "s");
        assert!(matches!(k.seal("", &env()), Err(WireError::BadSender(_))));
        assert!(matches!(
            k.seal(&"x".repeat(256), &env()),
            Err(WireError::BadSender(_))
        ));
        assert!(k.seal(&"x".repeat(255), &env()).is_ok());
    }

    #[test]
    fn debug_redacts_secrets() {
        let s = format!("{:?}", Keyring::new("c", "topsecret"));
        assert!(!s.contains("topsecret"), "{s}");
    }
}
