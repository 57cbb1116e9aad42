//! Jobs: asynchronous service actions (`service_action` with `sync: false`).
//!
//! Each job lives in `<root>/var/jobs/<id>/`: `job.json` (what, when, state, exit code),
//! `out` and `err`. Results outlive the daemon; a job that was running when the daemon
//! stopped is marked `lost` at the next start (its commands may have finished on their own).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use super::exec;
use super::instance::InstanceRt;
use super::instance::Transcript;

/// Jobs kept on disk; older ones are purged.
pub const KEEP: usize = 200;
/// Finished jobs older than this are purged.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

pub use crate::api::options::JobRecord;
pub use crate::api::options::JobState;

struct Running {
    abort: tokio::task::AbortHandle,
    holds_lock: Arc<AtomicBool>,
    rt: Arc<InstanceRt>,
}

/// The jobs of this node.
pub struct Jobs {
    dir: PathBuf,
    running: Mutex<BTreeMap<String, Running>>,
}

/// Why a job request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
// Each variant's `#[error]` text is its documentation, naming every field.
#[allow(missing_docs)]
pub enum JobError {
    #[error("no job {0:?} on this node; `om node jobs list` shows the known ones")]
    NotFound(String),
    #[error("job {id} is {state}: only a running job can be canceled")]
    NotRunning { id: String, state: JobState },
    #[error("job store: {0}")]
    Io(String),
}

impl Jobs {
    /// Jobs under `<var>/jobs`; jobs left `running` by a previous daemon become `lost`.
    pub fn new(var_dir: PathBuf) -> Jobs {
        let jobs = Jobs {
            dir: var_dir.join("jobs"),
            running: Mutex::new(BTreeMap::new()),
        };
        for mut rec in jobs.list() {
            if rec.state == JobState::Running {
                rec.state = JobState::Lost;
                let _ = jobs.write(&rec);
            }
        }
        jobs
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn write(&self, rec: &JobRecord) -> std::io::Result<()> {
        let dir = self.job_dir(&rec.id);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("job.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(rec).unwrap_or_default())?;
        std::fs::rename(tmp, dir.join("job.json"))
    }

    fn read(&self, id: &str) -> Option<JobRecord> {
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return None;
        }
        let text = std::fs::read(self.job_dir(id).join("job.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Starts `work` as a job; `holds_lock` is set by `work` once it holds the instance
    /// lock (from then on, cancel kills the instance's running command).
    pub fn submit<F>(
        self: &Arc<Self>,
        node: &str,
        svc: &str,
        command: Vec<String>,
        rt: Arc<InstanceRt>,
        holds_lock: Arc<AtomicBool>,
        work: F,
    ) -> Result<JobRecord, JobError>
    where
        F: std::future::Future<Output = Transcript> + Send + 'static,
    {
        let id = loop {
            let id = format!("{:08x}", rand::random::<u32>());
            if !self.job_dir(&id).exists() {
                break id;
            }
        };
        let rec = JobRecord {
            id: id.clone(),
            node: node.to_string(),
            svc: svc.to_string(),
            command,
            state: JobState::Running,
            ret: None,
            submitted_ms: crate::clock::now_ms(),
            finished_ms: None,
        };
        self.write(&rec).map_err(|e| JobError::Io(e.to_string()))?;
        // Registered before the task runs, so a fast job's end finds its entry.
        let mut running = self.running.lock().unwrap();
        let me = self.clone();
        let mut done = rec.clone();
        let task = tokio::spawn(async move {
            let tr = work.await;
            done.ret = Some(tr.ret);
            done.state = if tr.ret == 0 {
                JobState::Succeeded
            } else {
                JobState::Failed
            };
            done.finished_ms = Some(crate::clock::now_ms());
            let dir = me.job_dir(&done.id);
            let _ = std::fs::write(dir.join("out"), &tr.out);
            let _ = std::fs::write(dir.join("err"), &tr.err);
            let mut running = me.running.lock().unwrap();
            if running.remove(&done.id).is_some() {
                let _ = me.write(&done);
            }
        });
        running.insert(
            id,
            Running {
                abort: task.abort_handle(),
                holds_lock,
                rt,
            },
        );
        Ok(rec)
    }

    /// Every job on disk, oldest first.
    pub fn list(&self) -> Vec<JobRecord> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<JobRecord> = dir
            .flatten()
            .filter_map(|e| self.read(&e.file_name().to_string_lossy()))
            .collect();
        out.sort_by(|a, b| (a.submitted_ms, &a.id).cmp(&(b.submitted_ms, &b.id)));
        out
    }

    /// A job and its output so far.
    pub fn show(&self, id: &str) -> Result<(JobRecord, String, String), JobError> {
        let rec = self
            .read(id)
            .ok_or_else(|| JobError::NotFound(id.to_string()))?;
        let dir = self.job_dir(id);
        let out = std::fs::read_to_string(dir.join("out")).unwrap_or_default();
        let err = std::fs::read_to_string(dir.join("err")).unwrap_or_default();
        Ok((rec, out, err))
    }

    /// Cancels a running job: kills its command and marks it `canceled`.
    pub fn cancel(&self, id: &str) -> Result<JobRecord, JobError> {
        let mut rec = self
            .read(id)
            .ok_or_else(|| JobError::NotFound(id.to_string()))?;
        let entry = self.running.lock().unwrap().remove(id);
        let Some(entry) = entry else {
            return Err(JobError::NotRunning {
                id: id.to_string(),
                state: rec.state,
            });
        };
        entry.abort.abort();
        if entry.holds_lock.load(Ordering::SeqCst) {
            if let Some(pgid) = entry.rt.running.lock().unwrap().take() {
                exec::kill_group(pgid);
            }
        }
        rec.state = JobState::Canceled;
        rec.finished_ms = Some(crate::clock::now_ms());
        self.write(&rec).map_err(|e| JobError::Io(e.to_string()))?;
        Ok(rec)
    }

    /// Removes finished jobs beyond the newest [`KEEP`] or older than [`MAX_AGE`].
    pub fn purge(&self) -> usize {
        let all = self.list();
        let now = crate::clock::now_ms();
        let finished: Vec<&JobRecord> = all
            .iter()
            .filter(|r| r.state != JobState::Running)
            .collect();
        let excess = finished.len().saturating_sub(KEEP);
        let mut removed = 0;
        for (i, r) in finished.iter().enumerate() {
            let old = now.saturating_sub(r.finished_ms.unwrap_or(r.submitted_ms))
                > MAX_AGE.as_millis() as u64;
            if (i < excess || old) && std::fs::remove_dir_all(self.job_dir(&r.id)).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_finish_list_show_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Arc::new(Jobs::new(dir.path().to_path_buf()));
        let rt = Arc::new(InstanceRt::new("web"));
        let flag = Arc::new(AtomicBool::new(false));
        let rec = jobs
            .submit(
                "n1",
                "web",
                vec!["status".into()],
                rt.clone(),
                flag.clone(),
                async {
                    Transcript {
                        out: "up\n".into(),
                        err: String::new(),
                        ret: 0,
                    }
                },
            )
            .unwrap();
        for _ in 0..100 {
            if jobs.show(&rec.id).unwrap().0.state != JobState::Running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (done, out, _) = jobs.show(&rec.id).unwrap();
        assert_eq!(done.state, JobState::Succeeded);
        assert_eq!(done.ret, Some(0));
        assert_eq!(out, "up\n");

        let slow = jobs
            .submit("n1", "web", vec!["start".into()], rt, flag, async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Transcript::default()
            })
            .unwrap();
        assert_eq!(jobs.list().len(), 2);
        // A new daemon finds it running on disk: lost.
        let again = Jobs::new(dir.path().to_path_buf());
        assert_eq!(again.show(&slow.id).unwrap().0.state, JobState::Lost);
        assert!(matches!(
            again.cancel(&slow.id),
            Err(JobError::NotRunning { .. })
        ));
        // The first daemon can still cancel it.
        assert_eq!(jobs.cancel(&slow.id).unwrap().state, JobState::Canceled);
        assert!(matches!(jobs.show("nope"), Err(JobError::NotFound(_))));
    }
}
