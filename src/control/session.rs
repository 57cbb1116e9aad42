//! A client session on a control socket in Receptor's protocol: the greeting, one command
//! per line (sent in the JSON form), one JSON or `ERROR:` line back; `work submit` and
//! `work results`, which take the connection over. The CLI's `om node control` speaks it.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::net::unix::OwnedReadHalf;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;

use super::ControlError;
use super::GREETING;
use crate::config::Paths;

/// An open session, past the greeting.
pub struct Session {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    /// The node whose control service answers (changed by [`Session::connect`]).
    pub node: String,
    timeout: Duration,
}

impl Session {
    /// Connects to the daemon under `paths` and reads its greeting; every answer must come
    /// within `timeout`.
    pub async fn open(paths: &Paths, timeout: Duration) -> Result<Session, ControlError> {
        let path = paths.control_socket();
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|_| ControlError::NotRunning {
                path: path.display().to_string(),
            })?;
        let (rd, wr) = stream.into_split();
        let mut s = Session {
            rd: BufReader::new(rd),
            wr,
            node: String::new(),
            timeout,
        };
        s.node = s.greeting().await?;
        Ok(s)
    }

    async fn line(&mut self) -> Result<String, ControlError> {
        let mut line = String::new();
        let n = tokio::time::timeout(self.timeout, self.rd.read_line(&mut line))
            .await
            .map_err(|_| ControlError::Timeout(self.timeout))?
            .map_err(|e| ControlError::BadAnswer(e.to_string()))?;
        if n == 0 {
            return Err(ControlError::BadAnswer(
                "the daemon closed the connection".into(),
            ));
        }
        Ok(line.trim_end().to_string())
    }

    async fn greeting(&mut self) -> Result<String, ControlError> {
        let hello = self.line().await?;
        match hello.strip_prefix(GREETING) {
            Some(node) => Ok(node.to_string()),
            None if hello.starts_with("ERROR: ") => {
                Err(ControlError::Refused(hello[7..].to_string()))
            }
            None => Err(ControlError::BadAnswer(format!(
                "not a control service greeting: {hello:?}"
            ))),
        }
    }

    async fn send(&mut self, cmd: &Value) -> Result<(), ControlError> {
        let mut line = serde_json::to_vec(cmd).expect("a JSON value serializes");
        line.push(b'\n');
        self.wr
            .write_all(&line)
            .await
            .map_err(|e| ControlError::BadAnswer(e.to_string()))
    }

    /// Makes the rest of the session talk to `node`'s control service.
    pub async fn connect(&mut self, node: &str) -> Result<(), ControlError> {
        let cmd = serde_json::json!({"command": "connect", "node": node, "service": "control"});
        self.send(&cmd).await?;
        let first = self.line().await?;
        if let Some(e) = first.strip_prefix("ERROR: ") {
            return Err(ControlError::Refused(e.to_string()));
        }
        if first != "Connecting" {
            return Err(ControlError::BadAnswer(format!("connect: {first:?}")));
        }
        self.node = self.greeting().await?;
        Ok(())
    }

    fn answer(line: String) -> Result<Value, ControlError> {
        if let Some(e) = line.strip_prefix("ERROR: ") {
            return Err(ControlError::Refused(e.to_string()));
        }
        serde_json::from_str(&line).map_err(|e| ControlError::BadAnswer(format!("{e}: {line}")))
    }

    /// Sends a one-answer command (JSON form) and returns its answer.
    pub async fn command(&mut self, cmd: &Value) -> Result<Value, ControlError> {
        self.send(cmd).await?;
        let line = self.line().await?;
        Session::answer(line)
    }

    /// `work submit`: the command, then `payload` up to its end; the last answer
    /// (`{result, unitid}`).
    pub async fn submit<P: AsyncRead + Unpin>(
        mut self,
        cmd: &Value,
        payload: &mut P,
    ) -> Result<Value, ControlError> {
        self.send(cmd).await?;
        let first = self.line().await?;
        if let Some(e) = first.strip_prefix("ERROR: ") {
            return Err(ControlError::Refused(e.to_string()));
        }
        // The daemon may refuse the payload while it is sent: its answer says why.
        let sent = tokio::io::copy(payload, &mut self.wr).await;
        let _ = self.wr.shutdown().await;
        let last = self.line().await;
        match (sent, last) {
            (_, Ok(line)) => Session::answer(line),
            (Err(e), Err(_)) => Err(ControlError::BadAnswer(format!("sending the payload: {e}"))),
            (Ok(_), Err(e)) => Err(e),
        }
    }

    /// `work results`: writes the unit's stdout from `startpos` to `out` until it ends.
    pub async fn results<W: AsyncWrite + Unpin>(
        mut self,
        unitid: &str,
        startpos: u64,
        out: &mut W,
    ) -> Result<(), ControlError> {
        let cmd = serde_json::json!({"command": "work", "subcommand": "results", "unitid": unitid, "startpos": startpos});
        self.send(&cmd).await?;
        let head = self.line().await?;
        if let Some(e) = head.strip_prefix("ERROR: ") {
            return Err(ControlError::Refused(e.to_string()));
        }
        tokio::io::copy(&mut self.rd, out)
            .await
            .map_err(|e| ControlError::BadAnswer(e.to_string()))?;
        out.flush()
            .await
            .map_err(|e| ControlError::BadAnswer(e.to_string()))
    }
}
