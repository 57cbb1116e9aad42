//! The local control socket (`<root>/var/run/om.sock`, mode 0600) as its clients see it:
//! the greeting and line limits both ends share, the command forms parsed once
//! ([`command`]), the typed agent API call ([`ControlClient`]) and the session of
//! `om node control` ([`session`]). The server is the daemon's (`daemon::control`).
//!
//! On connect the server greets with one line, `Receptor Control, node <name>`; then each
//! line is an agent API request `{action, options}` (answered `{status, data, error}`, the
//! wire's bodies) or a Receptor command, text or JSON ([`command`], served by [`service`]).
//! Lines are bounded ([`MAX_LINE`]); a longer one is answered with an error and closes the
//! connection.

pub mod command;
pub mod session;

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::net::UnixStream;

use crate::config::Paths;
use crate::wire::Doc;
use crate::wire::Request;
use crate::wire::Response;

/// Largest request line accepted on the control socket (a service config travels in one).
pub const MAX_LINE: usize = 4 << 20;

/// Most control connections served at once; one more is answered with an error.
pub const MAX_CONNS: usize = 256;
/// A connection that sends no line for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// How the greeting line starts (Receptor's, so that receptorctl recognizes the socket).
pub const GREETING: &str = "Receptor Control, node ";

/// Why the CLI could not get an answer from its daemon.
#[derive(Debug, thiserror::Error)]
// Each variant's `#[error]` text is its documentation, naming every field.
#[allow(missing_docs)]
pub enum ControlError {
    #[error("the om daemon is not running on this node (no answer on {path}); start it with `om node daemon start`")]
    NotRunning { path: String },
    #[error("control socket {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("no answer from the daemon within {0:?}")]
    Timeout(Duration),
    #[error("bad answer from the daemon: {0}")]
    BadAnswer(String),
    /// The control service answered `ERROR: ...`.
    #[error("{0}")]
    Refused(String),
}

/// One line read from a client, bounded by [`MAX_LINE`].
pub(crate) enum ReadLine {
    /// A whole line (without its newline).
    Line(String),
    /// The client closed the connection (or it failed).
    Closed,
    /// The line is longer than [`MAX_LINE`].
    TooLong,
    /// The line is not UTF-8.
    NotText,
}

/// Reads one line of at most [`MAX_LINE`] bytes.
pub(crate) async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(rd: &mut R) -> ReadLine {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut limited = rd.take(MAX_LINE as u64 + 1);
    let read = limited.read_until(b'\n', &mut buf);
    match tokio::time::timeout(IDLE_TIMEOUT, read).await {
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return ReadLine::Closed,
        Ok(Ok(_)) => {}
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_LINE {
        return ReadLine::TooLong;
    }
    match String::from_utf8(buf) {
        Ok(s) => ReadLine::Line(s),
        Err(_) => ReadLine::NotText,
    }
}

/// A connection to the local daemon's control socket.
pub struct ControlClient {
    path: PathBuf,
}

impl ControlClient {
    /// A client for the daemon under `paths`.
    pub fn new(paths: &Paths) -> ControlClient {
        ControlClient {
            path: paths.control_socket(),
        }
    }

    /// Sends a typed request and decodes its reply; an error answer keeps its status.
    pub async fn call<R: crate::api::ApiRequest>(
        &self,
        req: &R,
        timeout: Duration,
    ) -> Result<R::Reply, crate::api::ApiError> {
        use crate::api::ApiError;
        use crate::api::Status;
        let options = crate::api::reply(req)?;
        let resp = self
            .request(R::ACTION.as_str(), options, timeout)
            .await
            .map_err(|e| {
                let status = match e {
                    ControlError::NotRunning { .. } | ControlError::Timeout(_) => {
                        Status::Unavailable
                    }
                    _ => Status::Error,
                };
                ApiError::new(status, e.to_string())
            })?;
        if !resp.is_ok() {
            let message = resp
                .error
                .unwrap_or_else(|| format!("{} failed with status {}", R::ACTION, resp.status));
            return Err(ApiError::new(resp.status, message));
        }
        crate::api::decode_reply(R::ACTION, resp.data)
    }

    /// Sends one request and waits up to `timeout` for its answer.
    pub async fn request(
        &self,
        action: &str,
        options: impl Into<Doc>,
        timeout: Duration,
    ) -> Result<Response, ControlError> {
        let options = options.into();
        let path = self.path.display().to_string();
        let stream = UnixStream::connect(&self.path)
            .await
            .map_err(|_| ControlError::NotRunning { path: path.clone() })?;
        let io = |e: std::io::Error| ControlError::Io {
            path: path.clone(),
            reason: e.to_string(),
        };
        let work = async {
            let (rd, mut wr) = stream.into_split();
            let mut line =
                serde_json::to_vec(&Request::new(action, options)).expect("request serializes");
            line.push(b'\n');
            wr.write_all(&line).await.map_err(io)?;
            // A daemon greets first (an older one does not): skip the greeting.
            let mut rd = BufReader::new(rd);
            let mut answer = String::new();
            rd.read_line(&mut answer).await.map_err(io)?;
            if answer.starts_with(GREETING) {
                answer.clear();
                rd.read_line(&mut answer).await.map_err(io)?;
            }
            if answer.is_empty() {
                return Err(ControlError::BadAnswer(
                    "the daemon closed the connection".into(),
                ));
            }
            serde_json::from_str::<Response>(&answer)
                .map_err(|e| ControlError::BadAnswer(e.to_string()))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ControlError::Timeout(timeout))?
    }
}
