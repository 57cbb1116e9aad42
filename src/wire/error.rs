//! Errors of the wire layer: one variant per reason a frame is refused.
//!
//! The listener counts rejections per [`ErrorKind`], so every refusal reason that an
//! operator may need to tell apart (a peer with the wrong secret, a non-member,
//! an oversize frame, ...) has its own kind.

use std::fmt;

/// Why a frame, a message or a stream of frames was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The stream or buffer ended inside a frame (fewer bytes than the length field says).
    #[error("truncated frame: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes the frame needs.
        expected: usize,
        /// Bytes actually available.
        got: usize,
    },
    /// A frame is too short for what it must hold (a hello, a record and its tag).
    #[error("frame too short: {len} bytes")]
    TooShort {
        /// The declared length of the frame.
        len: usize,
    },
    /// The declared frame length exceeds the configured maximum.
    #[error("oversize frame: {len} bytes > max_frame {max}")]
    Oversize {
        /// The declared length.
        len: u64,
        /// The configured maximum.
        max: u32,
    },
    /// A complete buffer holds bytes past the end of the frame its length field declares.
    #[error("trailing bytes: frame declares {declared} bytes but {actual} follow the length")]
    Trailing {
        /// The length the frame declares.
        declared: usize,
        /// The bytes available after the length field.
        actual: usize,
    },
    /// The version byte is not 2.
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    /// The sender nodename is empty, too long or not UTF-8.
    #[error("bad sender nodename: {0}")]
    BadSender(&'static str),
    /// A handshake or a record did not authenticate: another secret or cluster name, or a
    /// forged, replayed, reordered or cut record.
    #[error(
        "authentication failed (wrong cluster secret or name, or a forged or replayed record)"
    )]
    Auth,
    /// The sender is not in cluster.nodes and the request is not a `join`.
    #[error("sender {0:?} is not a cluster node (only `join` is accepted from non-members)")]
    UnknownSender(String),
    /// A hello names another node as its receiver.
    #[error("misaddressed: this is node {me:?}, the hello is for {asked:?}")]
    Misaddressed {
        /// This node's name.
        me: String,
        /// The receiver the hello names.
        asked: String,
    },
    /// The plaintext is not a valid MessagePack envelope of the expected kind.
    #[error("bad payload: {0}")]
    BadPayload(String),
    /// The message could not be encoded (sealing side).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// An I/O error on the underlying stream.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// A field-less copy of [`WireError`]'s variant, used as a metrics index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// See [`WireError::Truncated`].
    Truncated,
    /// See [`WireError::TooShort`].
    TooShort,
    /// See [`WireError::Oversize`].
    Oversize,
    /// See [`WireError::Trailing`].
    Trailing,
    /// See [`WireError::BadVersion`].
    BadVersion,
    /// See [`WireError::BadSender`].
    BadSender,
    /// See [`WireError::Auth`].
    Auth,
    /// See [`WireError::UnknownSender`].
    UnknownSender,
    /// See [`WireError::Misaddressed`].
    Misaddressed,
    /// See [`WireError::BadPayload`].
    BadPayload,
    /// See [`WireError::Encode`].
    Encode,
    /// See [`WireError::Io`].
    Io,
}

impl ErrorKind {
    /// Every kind, in index order.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::Truncated,
        ErrorKind::TooShort,
        ErrorKind::Oversize,
        ErrorKind::Trailing,
        ErrorKind::BadVersion,
        ErrorKind::BadSender,
        ErrorKind::Auth,
        ErrorKind::UnknownSender,
        ErrorKind::Misaddressed,
        ErrorKind::BadPayload,
        ErrorKind::Encode,
        ErrorKind::Io,
    ];

    /// Number of kinds (the length of [`ErrorKind::ALL`]).
    pub const COUNT: usize = Self::ALL.len();

    /// Position of this kind in [`ErrorKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Stable snake_case name, used in metrics and status output.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Truncated => "truncated",
            ErrorKind::TooShort => "too_short",
            ErrorKind::Oversize => "oversize",
            ErrorKind::Trailing => "trailing",
            ErrorKind::BadVersion => "bad_version",
            ErrorKind::BadSender => "bad_sender",
            ErrorKind::Auth => "auth",
            ErrorKind::UnknownSender => "unknown_sender",
            ErrorKind::Misaddressed => "misaddressed",
            ErrorKind::BadPayload => "bad_payload",
            ErrorKind::Encode => "encode",
            ErrorKind::Io => "io",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl WireError {
    /// The field-less kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            WireError::Truncated { .. } => ErrorKind::Truncated,
            WireError::TooShort { .. } => ErrorKind::TooShort,
            WireError::Oversize { .. } => ErrorKind::Oversize,
            WireError::Trailing { .. } => ErrorKind::Trailing,
            WireError::BadVersion(_) => ErrorKind::BadVersion,
            WireError::BadSender(_) => ErrorKind::BadSender,
            WireError::Auth => ErrorKind::Auth,
            WireError::UnknownSender(_) => ErrorKind::UnknownSender,
            WireError::Misaddressed { .. } => ErrorKind::Misaddressed,
            WireError::BadPayload(_) => ErrorKind::BadPayload,
            WireError::Encode(_) => ErrorKind::Encode,
            WireError::Io(_) => ErrorKind::Io,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_index_matches_all_order() {
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k}");
        }
        let mut names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::COUNT);
    }
}
