//! Sessions of wire protocol v2: the Noise handshake and the records that follow it.
//!
//! Handshake: `Noise_NNpsk0_25519_AESGCM_SHA256` through the `snow` crate, with the cluster
//! pre-shared key ([`Keyring::psk`]) and a prologue binding the protocol version, the
//! session mode, both nodenames and the cluster name. Two messages, one each way:
//!
//! ```text
//! client -> node   hello:   -> psk, e        (empty payload: replayable, so it asks nothing)
//! node -> client   welcome: <- e, ee          payload: the node's name
//! ```
//!
//! Both sides then hold two AES-256-GCM keys (one per direction) that depend on fresh
//! ephemeral keys from both: a recorded stream replayed to any node (the same one after a
//! restart, another member, or reflected to the sender) meets a new ephemeral key, so its
//! records do not decrypt, and executes nothing. Forward secrecy comes from the `ee`
//! Diffie-Hellman: the secret alone does not open a recorded session.
//!
//! Records: each frame after the welcome is one Noise transport message (at most 65535
//! bytes), encrypted under the direction's key with an implicit counter nonce (0, 1, 2, ...
//! per direction), so a record dropped, repeated or reordered fails to decrypt. A record's
//! plaintext is `flags | chunk`; flag [`LAST`] ends a message, and a message is its chunks
//! concatenated (so messages larger than one Noise message are chunked).

use snow::{HandshakeState, StatelessTransportState};
use std::sync::Arc;

use super::error::WireError;
use super::frame::{
    encode_hello, encode_welcome, Hello, Mode, LEN_SIZE, MAX_NAME_LEN, MAX_RECORD, NOISE1_LEN,
};
use super::keyring::Keyring;

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// The first bytes of every prologue.
pub const PROLOGUE_PREFIX: &[u8] = b"om/v2";
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Flag of the record that ends a message.
pub const LAST: u8 = 1;
/// The most message bytes one record carries.
pub const MAX_CHUNK: usize = MAX_RECORD - TAG_LEN - 1;

/// The prologue both sides feed Noise: any difference makes the handshake fail.
///
/// `"om/v2" | mode | u8 len | sender | u8 len | receiver | u16 BE len | cluster_name`.
pub fn prologue(mode: Mode, sender: &str, receiver: &str, cluster: &str) -> Vec<u8> {
    assert!(sender.len() <= MAX_NAME_LEN && receiver.len() <= MAX_NAME_LEN);
    let cluster = &cluster.as_bytes()[..cluster.len().min(u16::MAX as usize)];
    let mut p = PROLOGUE_PREFIX.to_vec();
    p.push(mode as u8);
    p.push(sender.len() as u8);
    p.extend_from_slice(sender.as_bytes());
    p.push(receiver.len() as u8);
    p.extend_from_slice(receiver.as_bytes());
    p.extend_from_slice(&(cluster.len() as u16).to_be_bytes());
    p.extend_from_slice(cluster);
    p
}

fn handshake(
    psk: &[u8; 32],
    prologue: &[u8],
    initiator: bool,
    e: Option<&[u8; 32]>,
) -> HandshakeState {
    let params = NOISE_PARAMS.parse().expect("a valid Noise protocol name");
    let mut b = snow::Builder::new(params)
        .psk(0, psk)
        .and_then(|b| b.prologue(prologue))
        .expect("psk and prologue are accepted before build");
    if let Some(e) = e {
        b = b.fixed_ephemeral_key_for_testing_only(e);
    }
    let hs = if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    };
    hs.expect("NNpsk0 needs no static key; ring with RustCrypto as fallback has every primitive")
}

fn noise_err(e: snow::Error) -> WireError {
    match e {
        snow::Error::Decrypt => WireError::Auth,
        other => WireError::BadPayload(format!("noise: {other}")),
    }
}

/// A client's half-done handshake: it sent its hello and waits for the welcome.
pub struct Initiator {
    hs: HandshakeState,
    receiver: String,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("receiver", &self.receiver)
            .finish()
    }
}

impl Initiator {
    /// Starts a session as `sender` toward `receiver` (empty: whoever listens there);
    /// returns the hello frame to send.
    pub fn start(
        keyring: &Keyring,
        sender: &str,
        receiver: &str,
    ) -> Result<(Initiator, Vec<u8>), WireError> {
        Initiator::start_inner(keyring, sender, receiver, None)
    }

    /// [`Initiator::start`] with a fixed ephemeral private key: for known-answer tests
    /// and reproducible fuzz seeds only (a fixed key gives up forward secrecy).
    #[doc(hidden)]
    pub fn start_for_testing(
        keyring: &Keyring,
        sender: &str,
        receiver: &str,
        e: &[u8; 32],
    ) -> Result<(Initiator, Vec<u8>), WireError> {
        Initiator::start_inner(keyring, sender, receiver, Some(e))
    }

    fn start_inner(
        keyring: &Keyring,
        sender: &str,
        receiver: &str,
        e: Option<&[u8; 32]>,
    ) -> Result<(Initiator, Vec<u8>), WireError> {
        if sender.is_empty() || sender.len() > MAX_NAME_LEN || receiver.len() > MAX_NAME_LEN {
            return Err(WireError::BadSender("nodenames must be 1..=255 bytes"));
        }
        let mode = keyring.mode();
        let p = prologue(mode, sender, receiver, keyring.cluster_name());
        let mut hs = handshake(&keyring.psk(0), &p, true, e);
        let mut msg = [0u8; NOISE1_LEN];
        let n = hs.write_message(&[], &mut msg).map_err(noise_err)?;
        assert_eq!(n, NOISE1_LEN, "NNpsk0 message 1 is e and a tag");
        let hello = encode_hello(mode, sender, receiver, &msg)?;
        let receiver = receiver.to_owned();
        Ok((Initiator { hs, receiver }, hello))
    }

    /// Reads the welcome's Noise message; returns the session and the node's name.
    pub fn finish(mut self, welcome: &[u8]) -> Result<(Sealer, Opener, String), WireError> {
        if welcome.len() > MAX_RECORD {
            return Err(WireError::BadPayload("oversize welcome".into()));
        }
        let mut payload = vec![0u8; welcome.len()];
        let n = self
            .hs
            .read_message(welcome, &mut payload)
            .map_err(noise_err)?;
        let name = String::from_utf8(payload[..n].to_vec())
            .map_err(|_| WireError::BadPayload("the node's name is not UTF-8".into()))?;
        if !self.receiver.is_empty() && name != self.receiver {
            return Err(WireError::BadPayload(format!(
                "expected node {:?}, {name:?} answered",
                self.receiver
            )));
        }
        let (s, o) = split(self.hs)?;
        Ok((s, o, name))
    }
}

/// A session a node accepted.
#[derive(Debug)]
pub struct Accepted {
    /// The welcome frame to send (length prefix included).
    pub welcome: Vec<u8>,
    /// Seals the node's messages.
    pub sealer: Sealer,
    /// Opens the client's records.
    pub opener: Opener,
    /// Which of the keyring's secrets the client used (0 = the current one).
    pub secret_index: usize,
}

/// Node side: answers a parsed hello as node `me`, trying each secret of `keyring`.
///
/// [`WireError::Auth`] when no secret opens the hello (another secret or cluster name).
/// The caller has checked the receiver name and the mode already.
pub fn accept(keyring: &Keyring, hello: &Hello<'_>, me: &str) -> Result<Accepted, WireError> {
    accept_inner(keyring, hello, me, None)
}

/// [`accept`] with a fixed ephemeral private key: for known-answer tests and
/// reproducible fuzz seeds only.
#[doc(hidden)]
pub fn accept_for_testing(
    keyring: &Keyring,
    hello: &Hello<'_>,
    me: &str,
    e: &[u8; 32],
) -> Result<Accepted, WireError> {
    accept_inner(keyring, hello, me, Some(e))
}

fn accept_inner(
    keyring: &Keyring,
    hello: &Hello<'_>,
    me: &str,
    e: Option<&[u8; 32]>,
) -> Result<Accepted, WireError> {
    let p = prologue(
        hello.mode,
        hello.sender,
        hello.receiver,
        keyring.cluster_name(),
    );
    for secret_index in 0..keyring.secret_count() {
        let mut hs = handshake(&keyring.psk(secret_index), &p, false, e);
        let mut empty = [0u8; NOISE1_LEN];
        match hs.read_message(hello.noise, &mut empty) {
            Ok(0) => {}
            Ok(_) => return Err(WireError::BadPayload("the hello carries a payload".into())),
            Err(snow::Error::Decrypt) => continue,
            Err(e) => return Err(noise_err(e)),
        }
        let mut msg = vec![0u8; 32 + me.len() + TAG_LEN];
        let n = hs
            .write_message(me.as_bytes(), &mut msg)
            .map_err(noise_err)?;
        msg.truncate(n);
        let (sealer, opener) = split(hs)?;
        return Ok(Accepted {
            welcome: encode_welcome(&msg),
            sealer,
            opener,
            secret_index,
        });
    }
    Err(WireError::Auth)
}

fn split(hs: HandshakeState) -> Result<(Sealer, Opener), WireError> {
    let t = Arc::new(hs.into_stateless_transport_mode().map_err(noise_err)?);
    Ok((
        Sealer {
            t: t.clone(),
            nonce: 0,
        },
        Opener {
            t,
            nonce: 0,
            message: Vec::new(),
        },
    ))
}

/// The sending half of a session.
pub struct Sealer {
    t: Arc<StatelessTransportState>,
    nonce: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("nonce", &self.nonce)
            .finish()
    }
}

impl Sealer {
    /// Appends the record frames of one message to `out`.
    pub fn seal(&mut self, message: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        let mut chunks = message.chunks(MAX_CHUNK).peekable();
        let mut plain = Vec::with_capacity(1 + message.len().min(MAX_CHUNK));
        loop {
            let chunk = chunks.next().unwrap_or(&[]);
            let last = chunks.peek().is_none();
            plain.clear();
            plain.push(if last { LAST } else { 0 });
            plain.extend_from_slice(chunk);
            let len = plain.len() + TAG_LEN;
            out.extend_from_slice(&(len as u32).to_be_bytes());
            let at = out.len();
            out.resize(at + len, 0);
            let n = self
                .t
                .write_message(self.nonce, &plain, &mut out[at..])
                .map_err(noise_err)?;
            debug_assert_eq!(n, len);
            self.nonce += 1;
            if last {
                return Ok(());
            }
        }
    }
}

/// The receiving half of a session, with the message being reassembled.
pub struct Opener {
    t: Arc<StatelessTransportState>,
    nonce: u64,
    message: Vec<u8>,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("nonce", &self.nonce)
            .finish()
    }
}

impl Opener {
    /// Opens one record body; returns the message it completes, if it is the last chunk.
    ///
    /// [`WireError::Auth`] for a record that does not decrypt (forged, replayed, reordered
    /// or cut): the session is over. [`WireError::Oversize`] when the message would pass
    /// `max_message`.
    pub fn open(&mut self, record: &[u8], max_message: u32) -> Result<Option<Vec<u8>>, WireError> {
        if record.len() > MAX_RECORD {
            return Err(WireError::Oversize {
                len: record.len() as u64,
                max: MAX_RECORD as u32,
            });
        }
        if record.len() < 1 + TAG_LEN {
            return Err(WireError::TooShort { len: record.len() });
        }
        let mut plain = vec![0u8; record.len()];
        let n = self
            .t
            .read_message(self.nonce, record, &mut plain)
            .map_err(noise_err)?;
        self.nonce += 1;
        let (flags, chunk) = (plain[0], &plain[1..n]);
        if flags & !LAST != 0 {
            return Err(WireError::BadPayload(format!(
                "unknown record flags {flags:#x}"
            )));
        }
        let total = self.message.len() as u64 + chunk.len() as u64;
        if total > u64::from(max_message) {
            return Err(WireError::Oversize {
                len: total,
                max: max_message,
            });
        }
        self.message.extend_from_slice(chunk);
        if flags & LAST == 0 {
            return Ok(None);
        }
        Ok(Some(std::mem::take(&mut self.message)))
    }

    /// Bytes of a message received so far (its chunks before the last).
    pub fn pending(&self) -> usize {
        self.message.len()
    }
}

/// What a connection's writer task sends, in order: clear frames (welcome, refusal, the
/// empty packet) as they are, messages sealed by the writer, so that record nonces follow
/// the order of the bytes on the wire.
#[derive(Debug)]
pub enum Outgoing {
    /// A whole clear frame, length prefix included.
    Clear(Vec<u8>),
    /// A message's plaintext.
    Message(Vec<u8>),
}

impl Outgoing {
    /// Appends the bytes to write to `buf`: a message needs the session's sealer.
    pub fn write_into(
        self,
        sealer: Option<&mut Sealer>,
        buf: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        match (self, sealer) {
            (Outgoing::Clear(frame), _) => {
                buf.extend_from_slice(&frame);
                Ok(())
            }
            (Outgoing::Message(plain), Some(s)) => s.seal(&plain, buf),
            (Outgoing::Message(_), None) => {
                debug_assert!(false, "a message is only queued on an open session");
                Err(WireError::Encode("no session to seal a message in".into()))
            }
        }
    }
}

/// Bytes a message of `len` bytes takes on the wire as records.
pub fn sealed_len(len: usize) -> usize {
    let records = len.div_ceil(MAX_CHUNK).max(1);
    len + records * (LEN_SIZE + 1 + TAG_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{parse_hello, LEN_SIZE};

    fn pair(
        client: &Keyring,
        node: &Keyring,
    ) -> Result<(Sealer, Opener, Sealer, Opener), WireError> {
        let (init, hello) = Initiator::start(client, "n1", "n2")?;
        let h = parse_hello(&hello[LEN_SIZE..])?;
        let acc = accept(node, &h, "n2")?;
        let (cs, co, name) = init.finish(&acc.welcome[LEN_SIZE + 2..])?;
        assert_eq!(name, "n2");
        Ok((cs, co, acc.sealer, acc.opener))
    }

    fn records(framed: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut rest = framed;
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            out.push(&rest[4..4 + len]);
            rest = &rest[4 + len..];
        }
        out
    }

    #[test]
    fn messages_cross_both_ways_and_large_ones_are_chunked() {
        let k = Keyring::new("c", "s");
        let (mut cs, mut co, mut ns, mut no) = pair(&k, &k).unwrap();
        for msg in [vec![], b"hello".to_vec(), vec![9u8; 3 * MAX_CHUNK + 5]] {
            let mut wire = Vec::new();
            cs.seal(&msg, &mut wire).unwrap();
            assert_eq!(wire.len(), sealed_len(msg.len()));
            let recs = records(&wire);
            assert_eq!(recs.len(), msg.len().div_ceil(MAX_CHUNK).max(1));
            let mut got = None;
            for r in recs {
                assert!(got.is_none());
                got = no.open(r, u32::MAX).unwrap();
            }
            assert_eq!(got.unwrap(), msg);
            let mut back = Vec::new();
            ns.seal(&msg, &mut back).unwrap();
            let r = records(&back);
            let last = r
                .iter()
                .map(|r| co.open(r, u32::MAX).unwrap())
                .last()
                .unwrap();
            assert_eq!(last.unwrap(), msg);
        }
    }

    #[test]
    fn replayed_reordered_or_reflected_records_do_not_open() {
        let k = Keyring::new("c", "s");
        let (mut cs, _co, mut ns, mut no) = pair(&k, &k).unwrap();
        let mut a = Vec::new();
        cs.seal(b"one", &mut a).unwrap();
        let mut b = Vec::new();
        cs.seal(b"two", &mut b).unwrap();
        // reordered
        assert!(matches!(
            no.open(records(&b)[0], 1 << 20),
            Err(WireError::Auth)
        ));
        let (mut cs, _co, _ns, mut no) = pair(&k, &k).unwrap();
        let mut a2 = Vec::new();
        cs.seal(b"one", &mut a2).unwrap();
        // a record of another session (a recorded stream) does not open in this one
        assert!(matches!(
            no.open(records(&a)[0], 1 << 20),
            Err(WireError::Auth)
        ));
        assert!(no.open(records(&a2)[0], 1 << 20).unwrap().is_some());
        // replayed within the session
        assert!(matches!(
            no.open(records(&a2)[0], 1 << 20),
            Err(WireError::Auth)
        ));
        // reflected: the node's own record sent back to it
        let mut mine = Vec::new();
        ns.seal(b"x", &mut mine).unwrap();
        assert!(no.open(records(&mine)[0], 1 << 20).is_err());
    }

    #[test]
    fn a_hello_under_another_secret_cluster_or_name_is_refused() {
        let k = Keyring::new("c", "s");
        assert!(matches!(
            pair(&Keyring::new("c", "t"), &k),
            Err(WireError::Auth)
        ));
        assert!(matches!(
            pair(&Keyring::new("d", "s"), &k),
            Err(WireError::Auth)
        ));
        assert!(matches!(pair(&k.joining(), &k), Err(WireError::Auth)));
        // rotation: the node accepts the old secret too
        let rotated = Keyring::new("c", "new").with_secret("s");
        pair(&k, &rotated).unwrap();
        // a hello whose clear names were changed no longer matches the prologue
        let (_, mut hello) = Initiator::start(&k, "n1", "n2").unwrap();
        hello[LEN_SIZE + 4] = b'x';
        let h = parse_hello(&hello[LEN_SIZE..]).unwrap();
        assert!(matches!(accept(&k, &h, "n2"), Err(WireError::Auth)));
    }

    #[test]
    fn the_client_checks_who_answered_and_the_size_limit_holds() {
        let k = Keyring::new("c", "s");
        let (init, hello) = Initiator::start(&k, "n1", "n2").unwrap();
        let h = parse_hello(&hello[LEN_SIZE..]).unwrap();
        let acc = accept(&k, &h, "n3").unwrap();
        assert!(init.finish(&acc.welcome[LEN_SIZE + 2..]).is_err());
        let (mut cs, _, _, mut no) = pair(&k, &k).unwrap();
        let mut w = Vec::new();
        cs.seal(&vec![0u8; 2 * MAX_CHUNK], &mut w).unwrap();
        let r = records(&w);
        assert!(no.open(r[0], 100).is_err());
    }
}
