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
        let (header, file) = backup::encode(&data, &self.name(), now_ms());
        let at = path.clone();
        tokio::task::spawn_blocking(move || crate::config::write_durably(&at, &file))
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
    /// has other members or services.
    pub(super) async fn snapshot_restore(
        self: &Arc<Self>,
        o: SnapshotRestore,
    ) -> Result<SnapshotRestored> {
        let path = absolute(&o.path)?;
        let (header, data) = read_backup(&path).await?;
        let node = self.node()?;
        let me = self.name();
        if !o.force {
            refuse_replacing(&node, &me)?;
        }
        let _guard = self.membership_guard()?;
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
        tracing::warn!(
            path = %path.display(),
            index = header.index,
            removed = ?done.removed,
            "restoring a backup: this node's store is replaced and it leaves its cluster"
        );
        self.wipe_raft().await?;
        let fail = |what: &str, e: String| {
            ActionError::new(Status::Error, format!("restore: {what}: {e}"))
        };
        super::write_store_id(&self.paths, id)
            .map_err(|e| fail("cannot record the new raft id", e.to_string()))?;
        self.edit_config(|doc| doc.set("cluster", "nodes", &me))?;
        self.start_raft(Some(data))
            .await
            .map_err(|e| fail("cannot start raft on the restored store", e.to_string()))?;
        self.refresh_members();
        // Answered once the node leads its new cluster: the operator's next command commits.
        let node = self.node()?;
        let elected = node
            .raft
            .wait(Some(Duration::from_secs(10)))
            .current_leader(node.id, "the restored node elects itself")
            .await;
        if let Err(e) = elected {
            tracing::warn!("the restored node does not lead yet: {e}");
        }
        Ok(SnapshotRestored {
            cluster: cfg.cluster_name.clone(),
            renamed_from: done.renamed_from,
            node: me,
            raft_id: id.to_string(),
            index: header.index,
            services,
            removed: done.removed,
        })
    }
}

/// Refuses to replace a state that holds more than this node alone, empty: what a restore
/// would drop from this node.
fn refuse_replacing(node: &raft::Node, me: &str) -> Result<()> {
    let (others, services) = node.read(|s| {
        let others: Vec<String> = s.nodes.keys().filter(|n| *n != me).cloned().collect();
        (others, s.services.len())
    });
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
             cluster for a new one of its own. Add --force to do it; then stop the other \
             members or wipe them and `om node daemon join --node {me}` each",
            held.join(" and ")
        ),
    ))
}

/// Reads and checks the backup at `path`.
async fn read_backup(path: &Path) -> Result<(backup::Header, raft::MachineData)> {
    let at = path.to_path_buf();
    let bytes = tokio::task::spawn_blocking(move || read_limited(&at))
        .await
        .map_err(|e| ActionError::new(Status::Error, e.to_string()))?
        .map_err(|e| ActionError::bad(format!("cannot read {}: {e}", path.display())))?;
    backup::decode(&bytes).map_err(|e| ActionError::bad(format!("{}: {e}", path.display())))
}

fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    let len = std::fs::metadata(path)?.len();
    if len > MAX_BACKUP_BYTES {
        return Err(std::io::Error::other(format!(
            "it is {len} bytes, more than a backup can be ({MAX_BACKUP_BYTES})"
        )));
    }
    std::fs::read(path)
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
