//! The daemon's side of the control socket: the root lock, the server and its connection
//! loop (agent API lines go to `Daemon::handle`, Receptor commands to [`service`]).

pub mod service;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::net::UnixListener;
use tokio::net::UnixStream;
use tokio::sync::watch;

use super::actions::Origin;
use super::Daemon;
use super::DaemonError;
use crate::config::Paths;
use crate::control::command;
use crate::control::read_line;
use crate::control::ReadLine;
use crate::control::GREETING;
use crate::control::MAX_CONNS;
use crate::control::MAX_LINE;
use crate::wire::Response;
use crate::wire::Status;

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
