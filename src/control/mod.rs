//! The local control socket (`<root>/var/run/om.sock`, mode 0600): the server, its
//! connection loop, and the client the CLI uses.
//!
//! On connect the server greets with one line, `Receptor Control, node <name>`; then each
//! line is an agent API request `{action, options}` (answered `{status, data, error}`, the
//! wire's bodies) or a Receptor command, text or JSON ([`command`], served by [`service`]).
//! Lines are bounded ([`MAX_LINE`]); a longer one is answered with an error and closes the
//! connection.

pub mod command;
pub mod service;
pub mod session;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::net::UnixListener;
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::config::Paths;
use crate::daemon::actions::Origin;
use crate::daemon::Daemon;
use crate::daemon::DaemonError;
use crate::wire::Request;
use crate::wire::Response;
use crate::wire::Status;

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

/// Takes this root for one daemon: an exclusive lock on `var/run/om.pid`, which then holds
/// this process's id. Held until the returned file is dropped (or the process dies, so a
/// killed daemon leaves no stale lock). Taken before the store is opened: a second daemon
/// is told who holds the root instead of failing on the store's own lock seconds later.
pub fn lock_root(paths: &Paths) -> Result<std::fs::File, DaemonError> {
    use std::io::Read;
    use std::io::Seek;
    use std::io::Write;
    let file = paths.pid_file();
    let err = |e: std::io::Error| DaemonError::Control {
        path: file.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(paths.run_dir()).map_err(err)?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&file)
        .map_err(err)?;
    // A holder that answers on the control socket is running: refused at once. One that
    // does not is starting or stopping (`restart` starts us while the old process still
    // closes its store after removing its socket): give it a few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match f.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                let answers =
                    std::os::unix::net::UnixStream::connect(paths.control_socket()).is_ok();
                if answers || std::time::Instant::now() >= deadline {
                    let mut text = String::new();
                    let _ = f.read_to_string(&mut text);
                    let pid = text.trim().parse().unwrap_or(0);
                    return Err(DaemonError::AlreadyRunning { pid });
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
        }
    }
    f.set_len(0).map_err(err)?;
    f.rewind().map_err(err)?;
    write!(f, "{}", std::process::id()).map_err(err)?;
    Ok(f)
}

/// Refuses to start a second daemon on the same root; removes a stale socket.
pub fn check_not_running(paths: &Paths) -> Result<(), DaemonError> {
    let sock = paths.control_socket();
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        let pid = std::fs::read_to_string(paths.pid_file())
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0);
        return Err(DaemonError::AlreadyRunning { pid });
    }
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

/// The bound control socket.
#[derive(Clone)]
pub struct ControlServer {
    listener: Arc<UnixListener>,
    conns: Arc<tokio::sync::Semaphore>,
}

impl ControlServer {
    /// Binds `path` with mode 0600.
    pub fn bind(path: &Path) -> std::io::Result<ControlServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(ControlServer {
            listener: Arc::new(listener),
            conns: Arc::new(tokio::sync::Semaphore::new(MAX_CONNS)),
        })
    }

    /// Accepts connections until `stop` turns true.
    pub async fn serve(
        &self,
        daemon: Arc<Daemon>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        loop {
            tokio::select! {
                r = self.listener.accept() => {
                    let (mut stream, _) = r.map_err(|e| format!("accept: {e}"))?;
                    let Ok(permit) = self.conns.clone().try_acquire_owned() else {
                        let why = format!("ERROR: {MAX_CONNS} control connections are open, the most served at once\n");
                        tokio::spawn(async move { let _ = stream.write_all(why.as_bytes()).await; });
                        continue;
                    };
                    let d = daemon.clone();
                    tokio::spawn(async move {
                        serve_conn(d, stream).await;
                        drop(permit);
                    });
                }
                _ = stop.changed() => {
                    if *stop.borrow() { return Ok(()); }
                }
            }
        }
    }
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

async fn serve_conn(daemon: Arc<Daemon>, stream: UnixStream) {
    use command::Line;
    use command::LineError;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let hello = format!("{GREETING}{}\n", daemon.name());
    if wr.write_all(hello.as_bytes()).await.is_err() {
        return;
    }
    loop {
        let line = match read_line(&mut rd).await {
            ReadLine::Line(l) => l,
            ReadLine::Closed => return,
            ReadLine::TooLong => {
                let why = format!("line longer than {MAX_LINE} bytes; closing the connection");
                let _ = wr.write_all(service::error_line(&why).as_bytes()).await;
                return;
            }
            ReadLine::NotText => {
                let _ = wr
                    .write_all(service::error_line("the line is not UTF-8").as_bytes())
                    .await;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let out = match command::parse(&line) {
            Ok(Line::Api(req)) => api_line(&daemon.handle(Origin::Control, req).await),
            Err(LineError::Api(e)) => api_line(&Response::err(Status::BadPayload, e)),
            Err(LineError::Command(e)) => service::error_line(&e).into_bytes(),
            Ok(Line::Command(cmd)) => match service::run(&daemon, cmd, &mut rd, &mut wr).await {
                service::Flow::Continue => continue,
                service::Flow::Close => return,
            },
        };
        if wr.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn api_line(resp: &Response) -> Vec<u8> {
    let mut out = serde_json::to_vec(resp).unwrap_or_default();
    out.push(b'\n');
    out
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
        options: Value,
        timeout: Duration,
    ) -> Result<Response, ControlError> {
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
