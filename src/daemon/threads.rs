//! The supervisor of the daemon's named threads (tokio tasks).
//!
//! Each thread has a state shown in `om node daemon status`. A thread that exits with an
//! error or panics is restarted with exponential backoff and the restart is counted; a thread
//! stopped on purpose (`om node daemon stop --thread-id ID`) stays stopped until started.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

pub use crate::api::status::ThreadState;
pub use crate::api::status::ThreadStatus;
use tokio::sync::watch;

/// The names of the daemon's threads, in display order.
pub const THREAD_IDS: &[&str] = &[
    "listener",
    "raft",
    "monitor",
    "scheduler",
    "watcher",
    "control",
];

/// A thread body: runs until `stop` turns true, returns Err on failure.
pub type ThreadBody = Arc<
    dyn Fn(watch::Receiver<bool>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

struct Entry {
    status: ThreadStatus,
    body: ThreadBody,
    stop: Option<watch::Sender<bool>>,
    /// Aborts the body's current task (fault injection).
    abort: Option<tokio::task::AbortHandle>,
    /// Bumped on every (re)start, so an old incarnation's exit cannot overwrite a newer state.
    generation: u64,
}

/// Why a thread command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
// Each variant's `#[error]` text is its documentation, naming every field.
#[allow(missing_docs)]
pub enum ThreadError {
    #[error("unknown thread id {id:?}; valid thread ids are: {valid}")]
    Unknown { id: String, valid: String },
    #[error("thread {id} is not running")]
    NotRunning { id: String },
}

/// Owns the threads and their states.
#[derive(Clone, Default)]
pub struct Supervisor {
    threads: Arc<Mutex<BTreeMap<String, Entry>>>,
}

impl Supervisor {
    /// An empty supervisor.
    pub fn new() -> Supervisor {
        Supervisor::default()
    }

    /// Registers `id` with its body and starts it.
    pub fn spawn(&self, id: &str, body: ThreadBody) {
        self.threads.lock().unwrap().insert(
            id.to_string(),
            Entry {
                status: ThreadStatus {
                    state: ThreadState::Stopped,
                    restarts: 0,
                    last_error: None,
                },
                body,
                stop: None,
                abort: None,
                generation: 0,
            },
        );
        self.start(id).expect("just registered");
    }

    /// Starts a stopped thread; a running one is left alone.
    pub fn start(&self, id: &str) -> Result<(), ThreadError> {
        let mut threads = self.threads.lock().unwrap();
        let valid = threads.keys().cloned().collect::<Vec<_>>().join(", ");
        let entry = threads.get_mut(id).ok_or_else(|| ThreadError::Unknown {
            id: id.to_string(),
            valid,
        })?;
        if matches!(
            entry.status.state,
            ThreadState::Running | ThreadState::Restarting
        ) {
            return Ok(());
        }
        entry.generation += 1;
        let (tx, rx) = watch::channel(false);
        entry.stop = Some(tx);
        entry.status.state = ThreadState::Running;
        let generation = entry.generation;
        let this = self.clone();
        let id = id.to_string();
        let body = entry.body.clone();
        tokio::spawn(async move { this.run(id, body, rx, generation).await });
        Ok(())
    }

    /// Stops a thread and waits (up to 5 s) until it has exited.
    pub async fn stop(&self, id: &str) -> Result<(), ThreadError> {
        {
            let mut threads = self.threads.lock().unwrap();
            let valid = threads.keys().cloned().collect::<Vec<_>>().join(", ");
            let entry = threads.get_mut(id).ok_or_else(|| ThreadError::Unknown {
                id: id.to_string(),
                valid,
            })?;
            match entry.stop.take() {
                Some(tx) => {
                    entry.status.state = ThreadState::Stopping;
                    let _ = tx.send(true);
                }
                None => return Ok(()),
            }
        }
        for _ in 0..100 {
            if self.state(id) == Some(ThreadState::Stopped) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Kills a running thread's task as a crash would (testing aid): the supervisor sees an
    /// unclean exit and restarts it.
    pub fn inject_fault(&self, id: &str) -> Result<(), ThreadError> {
        let threads = self.threads.lock().unwrap();
        let valid = threads.keys().cloned().collect::<Vec<_>>().join(", ");
        let entry = threads.get(id).ok_or_else(|| ThreadError::Unknown {
            id: id.to_string(),
            valid,
        })?;
        match (&entry.abort, entry.status.state) {
            (Some(a), ThreadState::Running) => {
                a.abort();
                Ok(())
            }
            _ => Err(ThreadError::NotRunning { id: id.to_string() }),
        }
    }

    /// A thread's current state.
    pub fn state(&self, id: &str) -> Option<ThreadState> {
        self.threads.lock().unwrap().get(id).map(|e| e.status.state)
    }

    /// Every thread's status, by id.
    pub fn status(&self) -> BTreeMap<String, ThreadStatus> {
        self.threads
            .lock()
            .unwrap()
            .iter()
            .map(|(k, e)| (k.clone(), e.status.clone()))
            .collect()
    }

    /// Records how a thread's body ended; returns whether it should run again.
    fn record_exit(
        &self,
        id: &str,
        generation: u64,
        outcome: Option<String>,
        stopping: bool,
        backoff: Duration,
    ) -> bool {
        let mut threads = self.threads.lock().unwrap();
        let Some(entry) = threads.get_mut(id) else {
            return false;
        };
        if entry.generation != generation {
            return false;
        }
        match outcome {
            None if stopping => {
                entry.status.state = ThreadState::Stopped;
                return false;
            }
            // A clean exit that nobody asked for is still a failure: the daemon needs it.
            None => entry.status.last_error = Some("exited".into()),
            Some(e) => entry.status.last_error = Some(e),
        }
        if stopping {
            entry.status.state = ThreadState::Stopped;
            return false;
        }
        entry.status.restarts += 1;
        entry.status.state = ThreadState::Restarting;
        tracing::warn!(
            thread = %id,
            restarts = entry.status.restarts,
            error = entry.status.last_error.as_deref().unwrap_or(""),
            "thread exited uncleanly, restarting in {backoff:?}"
        );
        true
    }

    async fn run(self, id: String, body: ThreadBody, stop: watch::Receiver<bool>, generation: u64) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let task = tokio::spawn((body)(stop.clone()));
            if let Some(e) = self.threads.lock().unwrap().get_mut(&id) {
                if e.generation == generation {
                    e.abort = Some(task.abort_handle());
                }
            }
            let outcome = match task.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(join) if join.is_cancelled() => Some("killed (injected fault)".to_string()),
                Err(join) => Some(format!("panicked: {join}")),
            };
            let stopping = *stop.borrow();
            if !self.record_exit(&id, generation, outcome, stopping, backoff) {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            let mut threads = self.threads.lock().unwrap();
            let Some(entry) = threads.get_mut(&id) else {
                return;
            };
            if entry.generation != generation || *stop.borrow() {
                entry.status.state = ThreadState::Stopped;
                return;
            }
            entry.status.state = ThreadState::Running;
        }
    }
}
