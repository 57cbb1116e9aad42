//! `cluster_snapshot_save` and `cluster_snapshot_restore`: the daemon's side of backups
//! ([`raft::backup`] has the file and the restored state). Both take a path on the daemon's
//! host and are control-socket actions only: a peer never makes a node read or write files.
//!
//! Save writes this node's applied state, with no quorum needed: after losing a majority,
//! the survivor's state is what there is to rebuild from. Restore replaces this node's store
//! with a new one holding the backup, this node its only member and voter; the daemon keeps
//! running, and the other nodes come back with `join`.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use raft::backup;

use super::actions::ActionError;
use super::Daemon;
use crate::api::options::SnapshotRestore;
use crate::api::options::SnapshotRestored;
use crate::api::options::SnapshotSave;
use crate::api::options::SnapshotSaved;
use crate::clock::now_ms;
use crate::wire::Status;

type Result<T> = std::result::Result<T, ActionError>;

/// The largest backup read: the store's own limit on a snapshot.
const MAX_BACKUP_BYTES: u64 = 4 << 30;

impl Daemon {
    /// `cluster_snapshot_save`: this node's applied state into a backup at `o.path`.
    pub(super) async fn snapshot_save(&self, o: SnapshotSave) -> Result<SnapshotSaved> {
        let path = absolute(&o.path)?;
        check_save_path(&self.paths.root, &path)?;
        let node = self.node()?;
        let data = node.read_machine(|d| d.clone());
        if !data.cluster.is_bootstrapped() {
            return Err(ActionError::new(
                Status::Unavailable,
                "this node holds no cluster state yet (its cluster is not bootstrapped): \
                 nothing to save",
            ));
        }
        let m = node.metrics();
        let leader = m.current_leader.and_then(|id| {
            let members = m.membership_config.membership();
            members.get_node(&id).map(|mb| mb.name.clone())
        });
        let (me, at) = (self.name(), path.clone());
        let header = tokio::task::spawn_blocking(move || {
            let (header, file) = backup::encode(&data, &me, now_ms());
            crate::config::write_durably(&at, &file).map(|()| header)
        })
        .await
        .map_err(|e| ActionError::new(Status::Error, e.to_string()))?
        .map_err(|e| {
            ActionError::new(
                Status::Error,
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
        tracing::info!(path = %path.display(), index = header.index, "cluster state saved");
        Ok(SnapshotSaved {
            path: path.display().to_string(),
            leader,
            header,
        })
    }

    /// `cluster_snapshot_restore`: a new store holding the backup at `o.path`, this node the
    /// only member of the new cluster. Refused without `force` when the state it replaces
    /// has other members or services. The new store is written and synced next to the old
    /// one before the old one goes: a bad file or a full disk leave the node as it was.
    pub(super) async fn snapshot_restore(
        self: &Arc<Self>,
        o: SnapshotRestore,
    ) -> Result<SnapshotRestored> {
        let path = absolute(&o.path)?;
        let _guard = self.membership_guard()?;
        let (header, data) = read_backup(&path).await?;
        let me = self.name();
        if !o.force {
            self.refuse_replacing(&me)?;
        }
        let cfg = self.config();
        let id = super::new_raft_id();
        let addr = self.advertised_addr();
        let to = backup::NewCluster {
            cluster: &cfg.cluster_name,
            node: &me,
            id,
            addr: &addr,
            at_ms: now_ms(),
        };
        let (data, done) = backup::restore(data, &to)
            .map_err(|e| ActionError::bad(format!("{}: cannot restore it: {e}", path.display())))?;
        let services: Vec<String> = data.cluster.services.keys().cloned().collect();
        let index = data.last_applied.map_or(0, |l| l.index);
        let staged = self.stage_store(&data).await?;
        tracing::warn!(
            path = %path.display(),
            index,
            removed = ?done.removed,
            "restoring a backup: this node's store is replaced and it leaves its cluster"
        );
        self.swap_in_store(&staged, id).await?;
        let leading = self.await_leading().await;
        Ok(SnapshotRestored {
            cluster: cfg.cluster_name.clone(),
            renamed_from: done.renamed_from,
            node: me,
            raft_id: id.to_string(),
            index,
            services,
            removed: done.removed,
            secret_in_use: done.secret_in_use,
            leading,
            taken_on: header.node,
        })
    }

    /// Writes `data` into a new store at `var/raft.restore`, synced.
    async fn stage_store(&self, data: &raft::MachineData) -> Result<PathBuf> {
        let staged = self.paths.root.join("var/raft.restore");
        let fail = |e: std::io::Error| {
            ActionError::new(
                Status::Error,
                format!(
                    "cannot write the restored store in {}: {e}",
                    staged.display()
                ),
            )
        };
        if staged.exists() {
            std::fs::remove_dir_all(&staged).map_err(fail)?;
        }
        let backend = storage::open_dir(&staged).await.map_err(fail)?;
        storage::seed(&backend, data).await.map_err(fail)?;
        Ok(staged)
    }

    /// Stops Raft, replaces its store with `staged` (Raft id `id`) and starts it again.
    /// A failure from here on leaves the node without a store; the restore can be run again.
    async fn swap_in_store(&self, staged: &Path, id: raft::NodeId) -> Result<()> {
        let fail = |what: &str, e: String| {
            ActionError::new(
                Status::Error,
                format!(
                    "restore: {what}: {e}; this node has no Raft store now: run the restore again"
                ),
            )
        };
        self.wipe_raft().await?;
        std::fs::rename(staged, self.paths.raft_dir())
            .map_err(|e| fail("cannot move the restored store into place", e.to_string()))?;
        super::write_store_id(&self.paths, id)
            .map_err(|e| fail("cannot record the new raft id", e.to_string()))?;
        let me = self.name();
        self.edit_config(|doc| doc.set("cluster", "nodes", &me))?;
        self.start_raft(None)
            .await
            .map_err(|e| fail("cannot start raft on the restored store", e.to_string()))?;
        self.refresh_members();
        Ok(())
    }

    /// Whether this node leads within 10 s (a one-voter cluster elects itself at once).
    async fn await_leading(&self) -> bool {
        let Ok(node) = self.node() else { return false };
        let t = Some(Duration::from_secs(10));
        let why = "the restored node elects itself";
        node.raft.wait(t).current_leader(node.id, why).await.is_ok()
    }

    /// Refuses to replace a state that holds more than this node alone, empty: what a
    /// restore would drop from this node. Nothing to drop without a store.
    fn refuse_replacing(&self, me: &str) -> Result<()> {
        let Ok(node) = self.node() else {
            return Ok(());
        };
        let (mut others, services) = node.read(|s| {
            let others: Vec<String> = s.nodes.keys().filter(|n| *n != me).cloned().collect();
            (others, s.services.len())
        });
        // A member still catching up (an empty store) is listed in node.conf only.
        others.extend(self.config().nodes.into_iter().filter(|n| n != me));
        others.sort();
        others.dedup();
        if others.is_empty() && services == 0 {
            return Ok(());
        }
        let mut held = Vec::new();
        if !others.is_empty() {
            held.push(format!("other members ({})", others.join(", ")));
        }
        if services > 0 {
            held.push(format!("{services} service(s)"));
        }
        Err(ActionError::new(
            Status::Error,
            format!(
                "{me}'s cluster state has {}: restoring replaces it, and {me} leaves that \
                 cluster for a new one of its own. Add --force to do it (fence the other \
                 members first: they must not go on as the old cluster)",
                held.join(" and ")
            ),
        ))
    }
}

/// Reads and checks the backup at `path` (off the async threads: hashing gigabytes).
async fn read_backup(path: &Path) -> Result<(backup::Header, raft::MachineData)> {
    let at = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let bytes = read_backup_file(&at)
            .map_err(|e| ActionError::bad(format!("cannot read {}: {e}", at.display())))?;
        backup::decode(&bytes).map_err(|e| ActionError::bad(format!("{}: {e}", at.display())))
    })
    .await
    .map_err(|e| ActionError::new(Status::Error, e.to_string()))?
}

/// A backup file's bytes: a regular file (not a FIFO or a device, which would block or
/// never end) of at most [`MAX_BACKUP_BYTES`], read once.
pub(crate) fn read_backup_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    f.take(MAX_BACKUP_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_BACKUP_BYTES {
        return Err(std::io::Error::other(format!(
            "it is more than a backup can be ({MAX_BACKUP_BYTES} bytes)"
        )));
    }
    Ok(bytes)
}

/// Refuses a save that would write over what is not a backup: a directory, this node's
/// own config or store, or another file.
fn check_save_path(root: &Path, path: &Path) -> Result<()> {
    let bad = |why: String| Err(ActionError::bad(format!("{}: {why}", path.display())));
    if path.is_dir() {
        return bad("is a directory: name a file in it".into());
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    let parent = std::fs::canonicalize(parent)
        .map_err(|e| ActionError::bad(format!("{}: {e}", parent.display())))?;
    let own = ["etc", "var"].map(|d| std::fs::canonicalize(root.join(d)).ok());
    if own.iter().flatten().any(|d| parent.starts_with(d)) {
        return bad(
            "is inside this node's etc/ or var/ (its config and store): save elsewhere".into(),
        );
    }
    if path.exists() && !is_backup(path) {
        return bad("exists and is not an om snapshot: remove it or name another file".into());
    }
    Ok(())
}

fn is_backup(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 32];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    head[..n].starts_with(format!("{{\"format\":\"{}\"", backup::FORMAT).as_bytes())
}

/// The daemon runs in `/`: a relative path would not mean what the operator typed.
fn absolute(path: &str) -> Result<PathBuf> {
    let p = PathBuf::from(path);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(ActionError::bad(format!(
            "option path must be absolute, got {path:?} (the CLI makes it absolute)"
        )))
    }
}
