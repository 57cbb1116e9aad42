//! Cluster keyring: the cluster name and the secrets a node accepts, and the Noise
//! pre-shared key derived from them.
//!
//! `psk = HKDF-SHA256(ikm = secret, salt = "om/v2/psk", info = cluster_name)`, 32 bytes: the
//! cluster name is bound into every session key, so a member of another cluster with the
//! same secret cannot open a session. A node outside any cluster (a joiner) has the empty
//! cluster name ([`Keyring::joining`]).
//!
//! A keyring may hold several secrets (rotation): a client uses the first; a node tries
//! each when it reads a hello. Trying is cheap: Noise's first `NNpsk0` message costs no
//! Diffie-Hellman, only hashing and one AES-GCM tag check over an empty payload.

use hkdf::Hkdf;
use sha2::Sha256;
use std::fmt;
use std::sync::Arc;

use super::frame::Mode;

/// The HKDF salt of the pre-shared key.
pub const PSK_SALT: &[u8] = b"om/v2/psk";

/// A Noise pre-shared key.
pub type Psk = [u8; 32];

/// Cluster name and secrets; cheap to clone (shared inside).
#[derive(Clone)]
pub struct Keyring {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    cluster_name: String,
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

impl Keyring {
    /// A keyring for `cluster_name` with one `secret`.
    pub fn new(cluster_name: impl Into<String>, secret: impl AsRef<[u8]>) -> Keyring {
        Keyring {
            inner: Arc::new(Inner {
                cluster_name: cluster_name.into(),
                secrets: vec![secret.as_ref().to_vec()],
            }),
        }
    }

    /// Adds a secret accepted from clients but never used as a client (rotation).
    pub fn with_secret(self, secret: impl AsRef<[u8]>) -> Keyring {
        let mut inner = (*self.inner).clone();
        inner.secrets.push(secret.as_ref().to_vec());
        Keyring {
            inner: Arc::new(inner),
        }
    }

    /// The keyring of a node outside any cluster: the same secrets, an empty cluster name.
    pub fn joining(&self) -> Keyring {
        Keyring {
            inner: Arc::new(Inner {
                cluster_name: String::new(),
                secrets: self.inner.secrets.clone(),
            }),
        }
    }

    /// The cluster name bound into every key.
    pub fn cluster_name(&self) -> &str {
        &self.inner.cluster_name
    }

    /// The session a client with this keyring asks for: a joiner's when the cluster name
    /// is empty, a member's otherwise.
    pub fn mode(&self) -> Mode {
        if self.inner.cluster_name.is_empty() {
            Mode::Join
        } else {
            Mode::Member
        }
    }

    /// Number of secrets held (the first is the one a client uses).
    pub fn secret_count(&self) -> usize {
        self.inner.secrets.len()
    }

    /// The fingerprint of each secret (first 8 hex of SHA-256), the one a client uses first.
    pub fn fingerprints(&self) -> Vec<String> {
        self.inner
            .secrets
            .iter()
            .map(|s| raft::secrets::fingerprint(s))
            .collect()
    }

    /// The pre-shared key of secret number `index` (0 = the current one).
    pub fn psk(&self, index: usize) -> Psk {
        let hk = Hkdf::<Sha256>::new(Some(PSK_SALT), &self.inner.secrets[index]);
        let mut okm = [0u8; 32];
        hk.expand(self.inner.cluster_name.as_bytes(), &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_psk_binds_secret_and_cluster_name() {
        let k = Keyring::new("c1", "s").with_secret("t");
        assert_eq!(k.psk(0), Keyring::new("c1", "s").psk(0));
        assert_ne!(k.psk(0), k.psk(1));
        assert_ne!(k.psk(0), Keyring::new("c2", "s").psk(0));
        assert_ne!(k.psk(0), k.joining().psk(0));
        assert_eq!(k.joining().mode(), Mode::Join);
        assert_eq!(k.mode(), Mode::Member);
    }

    #[test]
    fn debug_redacts_secrets() {
        let k = Keyring::new("c", "hunter2-secret");
        let s = format!("{k:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("1 redacted"), "{s}");
    }
}
