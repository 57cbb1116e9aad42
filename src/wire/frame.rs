//! Frame layout of wire protocol v1 and the header-only parser.
//!
//! ```text
//! u32 BE  len      length of everything after this field; 0 = empty packet
//! u8      version  = 1
//! u8      n        sender nodename length, 1..=255
//! n       sender   UTF-8 nodename, in clear
//! 16      salt     HKDF salt, random per message
//! 12      nonce    AES-GCM nonce, random per message
//! rest    AES-256-GCM ciphertext || 16-byte tag
//! ```
//!
//! Parsing the header needs no key, so the listener can read the sender name and check
//! its blacklist before spending any crypto on a frame.

use super::error::WireError;

/// Protocol version carried in every frame.
pub const VERSION: u8 = 1;
/// Size of the big-endian length prefix.
pub const LEN_SIZE: usize = 4;
/// Size of the HKDF salt.
pub const SALT_LEN: usize = 16;
/// Size of the AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Size of the AES-GCM authentication tag.
pub const TAG_LEN: usize = 16;
/// Longest sender nodename, in bytes.
pub const MAX_SENDER_LEN: usize = 255;
/// Smallest non-empty frame body: version, n, a 1-byte name, salt, nonce and tag.
pub const MIN_BODY_LEN: usize = 2 + 1 + SALT_LEN + NONCE_LEN + TAG_LEN;
/// Default `listener.max_frame`: 16 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;
/// Default `listener.port`.
pub const DEFAULT_PORT: u16 = 1214;

/// The clear part of a frame body, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Sender nodename.
    pub sender: &'a str,
    /// Per-message HKDF salt.
    pub salt: &'a [u8; SALT_LEN],
    /// Per-message AES-GCM nonce.
    pub nonce: &'a [u8; NONCE_LEN],
    /// Length of the header (version through nonce): the AAD, and where the ciphertext starts.
    pub len: usize,
}

/// Length of the header (version through nonce) for a sender name of `n` bytes.
pub const fn header_len(n: usize) -> usize {
    2 + n + SALT_LEN + NONCE_LEN
}

/// Parses the clear header of a frame body (the bytes after the length field).
///
/// Checks, in this order: version, sender length, length of the body, sender UTF-8,
/// room for the authentication tag. Never panics.
pub fn parse_header(body: &[u8]) -> Result<Header<'_>, WireError> {
    let Some(&version) = body.first() else {
        return Err(WireError::TooShort { len: 0 });
    };
    if version != VERSION {
        return Err(WireError::BadVersion(version));
    }
    let Some(&n) = body.get(1) else {
        return Err(WireError::TooShort { len: body.len() });
    };
    let n = n as usize;
    if n == 0 {
        return Err(WireError::BadSender("empty nodename"));
    }
    let hlen = header_len(n);
    if body.len() < hlen + TAG_LEN {
        return Err(WireError::TooShort { len: body.len() });
    }
    let sender = std::str::from_utf8(&body[2..2 + n])
        .map_err(|_| WireError::BadSender("nodename is not UTF-8"))?;
    let salt: &[u8; SALT_LEN] = body[2 + n..2 + n + SALT_LEN]
        .try_into()
        .expect("slice length is SALT_LEN");
    let nonce: &[u8; NONCE_LEN] = body[2 + n + SALT_LEN..hlen]
        .try_into()
        .expect("slice length is NONCE_LEN");
    Ok(Header {
        sender,
        salt,
        nonce,
        len: hlen,
    })
}

/// Splits a complete frame (length prefix included) into its body, checking the length.
///
/// Returns `Ok(None)` for the empty packet.
pub fn split_frame(frame: &[u8], max_frame: u32) -> Result<Option<&[u8]>, WireError> {
    if frame.len() < LEN_SIZE {
        return Err(WireError::Truncated {
            expected: LEN_SIZE,
            got: frame.len(),
        });
    }
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
    if len > max_frame {
        return Err(WireError::Oversize {
            len: len as u64,
            max: max_frame,
        });
    }
    let len = len as usize;
    let rest = &frame[LEN_SIZE..];
    if rest.len() < len {
        return Err(WireError::Truncated {
            expected: len,
            got: rest.len(),
        });
    }
    if rest.len() > len {
        return Err(WireError::Trailing {
            declared: len,
            actual: rest.len(),
        });
    }
    Ok(if len == 0 { None } else { Some(rest) })
}

/// Reads the sender nodename of a complete frame (length prefix included) without any crypto.
///
/// This is what a receiver checks against its blacklist before decrypting.
pub fn peek_sender(frame: &[u8]) -> Result<&str, WireError> {
    let body = split_frame(frame, u32::MAX)?.ok_or(WireError::TooShort { len: 0 })?;
    Ok(parse_header(body)?.sender)
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

    /// Mutable body bytes (decryption happens in place).
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.body
    }

    /// Gives the body buffer back.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Parses the clear header.
    pub fn header(&self) -> Result<Header<'_>, WireError> {
        parse_header(&self.body)
    }

    /// The clear sender nodename.
    pub fn sender(&self) -> Result<&str, WireError> {
        Ok(self.header()?.sender)
    }

    /// The frame as bytes on the wire (length prefix included).
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LEN_SIZE + self.body.len());
        out.extend_from_slice(&(self.body.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(sender: &[u8], extra: usize) -> Vec<u8> {
        let mut b = vec![VERSION, sender.len() as u8];
        b.extend_from_slice(sender);
        b.extend(std::iter::repeat_n(
            7u8,
            SALT_LEN + NONCE_LEN + TAG_LEN + extra,
        ));
        b
    }

    #[test]
    fn parses_a_minimal_header() {
        let b = body(b"n1", 0);
        let h = parse_header(&b).unwrap();
        assert_eq!(h.sender, "n1");
        assert_eq!(h.len, header_len(2));
        assert_eq!(h.salt, &[7u8; SALT_LEN]);
    }

    #[test]
    fn rejects_each_header_defect_distinctly() {
        let mut b = body(b"n1", 0);
        b[0] = 2;
        assert!(matches!(parse_header(&b), Err(WireError::BadVersion(2))));
        let mut b = body(b"n1", 0);
        b[1] = 0;
        assert!(matches!(parse_header(&b), Err(WireError::BadSender(_))));
        let b = body(&[0xff, 0xfe], 0);
        assert!(matches!(parse_header(&b), Err(WireError::BadSender(_))));
        let b = body(b"n1", 0);
        assert!(matches!(
            parse_header(&b[..b.len() - 1]),
            Err(WireError::TooShort { .. })
        ));
        assert!(matches!(parse_header(&[]), Err(WireError::TooShort { .. })));
        assert!(matches!(
            parse_header(&[1]),
            Err(WireError::TooShort { .. })
        ));
        // n claims 200 bytes of name that are not there
        let mut b = body(b"n1", 0);
        b[1] = 200;
        assert!(matches!(parse_header(&b), Err(WireError::TooShort { .. })));
    }

    #[test]
    fn split_frame_checks_length() {
        assert!(matches!(
            split_frame(&[0, 0], 100),
            Err(WireError::Truncated { .. })
        ));
        assert_eq!(split_frame(&[0, 0, 0, 0], 100).unwrap(), None);
        assert!(matches!(
            split_frame(&[0, 0, 1, 0], 100),
            Err(WireError::Oversize { len: 256, max: 100 })
        ));
        assert!(matches!(
            split_frame(&[0, 0, 0, 2, 9], 100),
            Err(WireError::Truncated {
                expected: 2,
                got: 1
            })
        ));
        assert!(matches!(
            split_frame(&[0, 0, 0, 1, 9, 9], 100),
            Err(WireError::Trailing {
                declared: 1,
                actual: 2
            })
        ));
        assert_eq!(
            split_frame(&[0, 0, 0, 1, 9], 100).unwrap(),
            Some(&[9u8][..])
        );
    }

    #[test]
    fn frame_to_wire_prefixes_length() {
        let f = Frame::from_body(body(b"abc", 3));
        let w = f.to_wire();
        assert_eq!(peek_sender(&w).unwrap(), "abc");
        assert_eq!(split_frame(&w, u32::MAX).unwrap(), Some(f.body()));
    }
}
