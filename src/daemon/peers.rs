//! Talking to other nodes: one long-lived encrypted connection per peer address, the
//! keyring frames are sealed with, and when each peer was last heard from.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::RwLock;
use std::time::Duration;
use std::time::Instant;

use crate::api::options::Hello;
use crate::api::options::API_VERSIONS;
use crate::api::ApiRequest;
use crate::wire::Client;
use crate::wire::ClientOptions;
use crate::wire::Doc;
use crate::wire::Keyring;
use crate::wire::Status;

/// Why a call to a peer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
// Each variant's `#[error]` text is its documentation, naming every field.
#[allow(missing_docs)]
pub enum PeerError {
    /// No answer: connection refused or closed, or timed out.
    #[error("{addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// The peer answered with an error status.
    #[error("{addr} answered {action} with status {status}: {message}")]
    Failed {
        addr: String,
        action: String,
        status: i32,
        message: String,
    },
}

/// The `hello` a member sends on each session it opens to a peer (Zeek's
/// `notify_agent_hello`): the peer learns that this node (re)connected and which API
/// version it speaks, and refuses a version it does not.
fn check_in() -> Doc {
    let newest = API_VERSIONS.last().copied();
    Doc::pack(&Hello {
        api_version: newest,
    })
    .expect("a hello always packs")
}

/// The connections to the other nodes.
pub struct Peers {
    me: RwLock<String>,
    keyring: RwLock<Keyring>,
    /// One session per (address, node meant): a Raft RPC names its target, so that an
    /// address that reaches another node fails the handshake instead of reaching it.
    clients: Mutex<BTreeMap<(String, String), Client>>,
    seen: Mutex<BTreeMap<String, Instant>>,
}

impl Peers {
    /// Peers seen from node `me`, sealing with `keyring`.
    pub fn new(me: String, keyring: Keyring) -> Peers {
        Peers {
            me: RwLock::new(me),
            keyring: RwLock::new(keyring),
            clients: Mutex::new(BTreeMap::new()),
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    /// Replaces the keyring (join, secret change); open connections are dropped.
    pub fn set_keyring(&self, keyring: Keyring) {
        *self.keyring.write().unwrap() = keyring;
        self.clients.lock().unwrap().clear();
    }

    /// The keyring frames are sealed with.
    pub fn keyring(&self) -> Keyring {
        self.keyring.read().unwrap().clone()
    }

    /// This node's name.
    pub fn me(&self) -> String {
        self.me.read().unwrap().clone()
    }

    fn client(&self, addr: &str, receiver: &str) -> Client {
        let mut clients = self.clients.lock().unwrap();
        clients
            .entry((addr.to_string(), receiver.to_string()))
            .or_insert_with(|| {
                ClientOptions::new(addr, self.keyring(), self.me())
                    .receiver(receiver)
                    .greeting(Hello::ACTION.as_str(), check_in())
                    .build()
            })
            .clone()
    }

    /// Sends `action` to node `receiver` (empty: whoever listens) at `addr` and returns
    /// the data of a successful answer as it arrived (to be decoded into its type).
    pub async fn call_doc(
        &self,
        addr: &str,
        receiver: &str,
        action: &str,
        options: impl Into<Doc>,
        timeout: Duration,
    ) -> Result<Doc, PeerError> {
        let client = self.client(addr, receiver);
        let resp = client
            .request(action, options, timeout)
            .await
            .map_err(|e| PeerError::Unreachable {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        if resp.is_ok() {
            Ok(resp.data)
        } else {
            Err(PeerError::Failed {
                addr: addr.to_string(),
                action: action.to_string(),
                status: resp.status,
                message: resp.error.unwrap_or_default(),
            })
        }
    }

    /// Sends the typed request `req` to whoever listens at `addr` and decodes the answer
    /// into its reply type.
    pub async fn call_typed<R: ApiRequest>(
        &self,
        addr: &str,
        req: &R,
        timeout: Duration,
    ) -> Result<R::Reply, PeerError> {
        let action = R::ACTION.as_str();
        let failed = |message: String| PeerError::Failed {
            addr: addr.to_string(),
            action: action.to_string(),
            status: Status::Error.wire(),
            message,
        };
        let options = Doc::pack(req).map_err(failed)?;
        let data = self.call_doc(addr, "", action, options, timeout).await?;
        data.decode()
            .map_err(|e| failed(format!("bad answer to {action}: {e}")))
    }

    /// Records that `node` was heard from now.
    pub fn saw(&self, node: &str) {
        self.seen
            .lock()
            .unwrap()
            .insert(node.to_string(), Instant::now());
    }

    /// How long ago `node` was last heard from.
    pub fn last_seen(&self, node: &str) -> Option<Duration> {
        self.seen.lock().unwrap().get(node).map(|t| t.elapsed())
    }
}
