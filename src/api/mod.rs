//! The agent API as types, shared by the daemon (which serves it) and the CLI and peers
//! (which call it), the way openraft's examples share their request types.
//!
//! - [`Action`]: every action name of the protocol, parsed once at the edge.
//! - [`Status`]: the response status codes.
//! - [`ApiError`]: a failed call: a status and a message for the operator.
//! - [`options`]: one options struct per action, decoded with serde so that a missing or
//!   malformed option is a `BAD_REQUEST` naming the option.
//! - [`receptor`]: the answers of Receptor's control service, in its spelling.
//! - [`status`]: the replies of `daemon_status` and `get_nodes`.
//! - [`ApiRequest`]: ties an options struct to its action and its reply type, for the
//!   typed calls ([`crate::control::ControlClient::call`], [`crate::daemon::peers::Peers::call_typed`], [`Call::call`] on a [`crate::wire::Client`]).
//!
//! The bytes on the wire do not change: a request is still `{action, options}` and a
//! response `{status, data, error}` (docs/PROTOCOL.md).

pub mod action;
pub mod options;
pub mod receptor;
pub mod status;

pub use action::Action;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::wire::Doc;
pub use crate::wire::Status;
pub use crate::wire::StatusCode;

/// A failed call: a status code and a message for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// Response status code (see [`Status`]).
    pub status: i32,
    /// What went wrong, and what to do about it when we know.
    pub message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: impl StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: status.code(),
            message: message.into(),
        }
    }

    /// A `BAD_REQUEST`.
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(Status::BadRequest, message)
    }

    /// Whether this error has status `s`.
    pub fn is(&self, s: Status) -> bool {
        self.status == s.wire()
    }
}

impl From<raft::ProposeError> for ApiError {
    fn from(e: raft::ProposeError) -> ApiError {
        use raft::ProposeError as P;
        let status = match &e {
            P::NotLeader { .. } | P::Stopped(_) | P::MembershipBusy(_) => Status::Unavailable,
            P::Rejected(_) | P::Membership(_) => Status::Error,
            P::TooLarge { .. } => Status::BadRequest,
        };
        ApiError::new(status, e.to_string())
    }
}

/// An options struct that is the request of one action, with the type of its reply.
pub trait ApiRequest: Serialize {
    /// The action this request is sent as.
    const ACTION: Action;
    /// What a successful answer's `data` decodes to.
    type Reply: DeserializeOwned;
}

/// The typed call on a peer connection: `client.call(&req, timeout)` sends `req` as its
/// action and decodes the answer into its reply type; an error answer keeps its status.
pub trait Call {
    /// Sends `req` and waits up to `timeout` for its reply.
    fn call<R: ApiRequest + Sync>(
        &self,
        req: &R,
        timeout: std::time::Duration,
    ) -> impl std::future::Future<Output = Result<R::Reply, ApiError>> + Send;
}

impl Call for crate::wire::Client {
    async fn call<R: ApiRequest + Sync>(
        &self,
        req: &R,
        timeout: std::time::Duration,
    ) -> Result<R::Reply, ApiError> {
        let options = Doc::pack(req).map_err(|e| ApiError::new(Status::Internal, e))?;
        let resp = self
            .request(R::ACTION.as_str(), options, timeout)
            .await
            .map_err(|e| ApiError::new(Status::Unavailable, e.to_string()))?;
        if !resp.is_ok() {
            let message = resp
                .error
                .unwrap_or_else(|| format!("{} failed with status {}", R::ACTION, resp.status));
            return Err(ApiError {
                status: resp.status,
                message,
            });
        }
        decode_reply(R::ACTION, resp.data)
    }
}

/// Decodes the options of `action` into its struct; a serde error (which names the field)
/// becomes a `BAD_REQUEST`.
pub fn parse<T: DeserializeOwned>(action: Action, options: Doc) -> Result<T, ApiError> {
    options
        .decode()
        .map_err(|e| ApiError::bad(format!("{action}: {e}")))
}

/// Encodes a reply (or the options of a request) as the `data` (`options`) of a message:
/// MessagePack, sent as is on the wire, written as JSON on the control socket.
pub fn reply<T: Serialize + ?Sized>(v: &T) -> Result<Doc, ApiError> {
    Doc::pack(v).map_err(|e| ApiError::new(Status::Internal, e))
}

/// The answer `data` to `action`, read as its reply type.
pub fn decode_reply<T: DeserializeOwned>(action: Action, data: Doc) -> Result<T, ApiError> {
    data.decode()
        .map_err(|e| ApiError::new(Status::Error, format!("bad answer to {action}: {e}")))
}

/// A fuzz entry point (`fuzz/fuzz_targets/frame_decoder.rs`, next to
/// [`crate::wire::fuzz_frame`]): arbitrary bytes taken as a message whose options decode as
/// the `join` options a non-member may send. Whether that succeeds does not matter; it must
/// not panic. Returns whether the bytes held a request.
pub fn fuzz_options(data: &[u8]) -> bool {
    let Ok(m) = crate::wire::Message::decode(data) else {
        return false;
    };
    let crate::wire::Body::Request(r) = m.body else {
        return false;
    };
    let _ = parse::<options::Admit>(Action::Join, r.options);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_the_documented_ones() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        let table = doc.split("## 11. Status codes").nth(1).unwrap();
        let table = table.split("## 12.").next().unwrap();
        let documented: Vec<(i32, String)> = table
            .lines()
            .filter_map(|l| {
                let mut cells = l.split('|').map(str::trim).skip(1);
                let code = cells.next()?.parse().ok()?;
                Some((code, cells.next()?.to_string()))
            })
            .collect();
        let upper_snake = |s: Status| {
            let mut out = String::new();
            for (i, c) in format!("{s:?}").chars().enumerate() {
                if c.is_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        };
        let ours: Vec<(i32, String)> = Status::ALL
            .iter()
            .map(|s| (s.wire(), upper_snake(*s)))
            .collect();
        assert_eq!(ours, documented, "docs/PROTOCOL.md section 11");
        assert_eq!(Status::from_code(9), Some(Status::Misaddressed));
        assert_eq!(Status::from_code(42), None);
    }

    #[test]
    fn a_bad_option_names_the_option_from_json_and_from_messagepack() {
        let bad = serde_json::json!({"status": "sleeping"});
        let good = serde_json::json!({"status": "idle", "local_expect": "thawed"});
        for doc in [bad.clone().into(), Doc::pack(&bad).unwrap()] {
            let e = parse::<options::SetNodeMonitor>(Action::SetNodeMonitor, doc).unwrap_err();
            assert!(e.is(Status::BadRequest));
            assert!(e.message.contains("node monitor status"), "{e}");
            assert!(e.message.contains("idle"), "{e}");
        }
        for doc in [good.clone().into(), Doc::pack(&good).unwrap()] {
            parse::<options::SetNodeMonitor>(Action::SetNodeMonitor, doc).unwrap();
        }
        for doc in [
            serde_json::json!({}).into(),
            Doc::pack(&serde_json::json!({})).unwrap(),
        ] {
            let e = parse::<options::ServiceRef>(Action::GetServiceConfig, doc).unwrap_err();
            assert!(e.message.contains("svcname"), "{e}");
        }
    }

    /// `service_status` keeps its documented shape: a missing service is exactly
    /// `{svcname, exists: false}`; an existing one has its fields at the top level and
    /// each instance's record beside its node's monitor, and reads back the same.
    #[test]
    fn service_status_replies_keep_their_shape() {
        use options::{InstanceView, Progress, ServiceDetail, ServiceStatusReply};
        let gone = ServiceStatusReply {
            svcname: "web".into(),
            exists: false,
            detail: None,
        };
        let v = serde_json::to_value(&gone).unwrap();
        assert_eq!(v, serde_json::json!({"svcname": "web", "exists": false}));
        assert_eq!(
            serde_json::from_value::<ServiceStatusReply>(v).unwrap(),
            gone
        );
        let view = InstanceView {
            instance: raft::state::Instance::default(),
            node_status: Some(raft::state::NodeStatus::Down),
            node_frozen: Some(false),
        };
        let detail = ServiceDetail {
            version: 3,
            global_expect: raft::state::GlobalExpect::PlacedAt("n2".into()),
            topology: "failover".into(),
            orchestrate: "ha".into(),
            nodes: vec!["n1".into(), "n2".into()],
            avail: options::ServiceAvail::Up,
            up: vec!["n1".into()],
            instances: [("n1".to_string(), view)].into(),
            progress: Progress {
                state: options::ProgressState::Pending,
                reason: "n1 stops".into(),
            },
        };
        let here = ServiceStatusReply {
            svcname: "web".into(),
            exists: true,
            detail: Some(detail),
        };
        let v = serde_json::to_value(&here).unwrap();
        assert_eq!(v["global_expect"], "placed@n2");
        assert_eq!(v["instances"]["n1"]["node_status"], "down");
        assert_eq!(v["instances"]["n1"]["avail"], "unknown");
        assert_eq!(v["progress"]["state"], "pending");
        assert_eq!(
            serde_json::from_value::<ServiceStatusReply>(v).unwrap(),
            here
        );
    }
}
