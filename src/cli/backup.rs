//! `om cluster snapshot save|status|restore`: backups of the cluster state, and the way
//! back from losing a majority (docs/OPERATIONS.md, "Backup and recovery"). The daemon
//! reads and writes the file; `status` reads it here, without a daemon.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use raft::backup::Header;

use super::call_typed;
use super::print;
use super::CliError;
use super::Exit;
use super::Format;
use crate::api::options;
use crate::api::options::SnapshotRestored;
use crate::api::options::SnapshotSaved;
use crate::config::Paths;

type Result<T> = std::result::Result<T, CliError>;

/// `om cluster snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Write this node's applied cluster state to FILE (mode 0600: it holds the rotated
    /// secrets). Needs no quorum: after losing a majority, save on a survivor.
    Save {
        /// Where to write the backup (replaced if it exists).
        file: PathBuf,
    },
    /// Check FILE (length, checksum, state) and show what it holds; needs no daemon.
    Status {
        /// A backup written by `save`.
        file: PathBuf,
    },
    /// Make this node the only member of a new cluster holding FILE's state; the other
    /// nodes then join it. Refused without --force when this node's state has other
    /// members or services.
    Restore {
        /// A backup written by `save`.
        file: PathBuf,
        /// Replace a state with other members or services (they are dropped from this node).
        #[arg(long)]
        force: bool,
    },
}

/// Runs one `om cluster snapshot` command.
pub(super) async fn run(paths: &Paths, cmd: SnapshotCmd, format: Format) -> Result<()> {
    let t = Duration::from_secs(60);
    match cmd {
        SnapshotCmd::Save { file } => {
            let req = options::SnapshotSave {
                path: absolute(&file)?,
            };
            let saved = call_typed(paths, &req, t).await?;
            print(format, &saved, saved_text);
        }
        SnapshotCmd::Status { file } => {
            let bytes = crate::daemon::backup::read_backup_file(&file).map_err(|e| {
                CliError::of(Exit::Usage, format!("cannot read {}: {e}", file.display()))
            })?;
            // The exit code `restore` gives the same file.
            let (header, _) = raft::backup::decode(&bytes)
                .map_err(|e| CliError::of(Exit::Usage, format!("{}: {e}", file.display())))?;
            print(format, &header, header_table);
        }
        SnapshotCmd::Restore { file, force } => {
            let req = options::SnapshotRestore {
                path: absolute(&file)?,
                force,
            };
            let restored = call_typed(paths, &req, t).await?;
            print(format, &restored, restored_text);
        }
    }
    Ok(())
}

/// The daemon runs in `/`: the path is made absolute here, where the operator typed it.
fn absolute(file: &Path) -> Result<String> {
    std::path::absolute(file)
        .map(|p| p.display().to_string())
        .map_err(|e| CliError::of(Exit::Usage, format!("FILE {}: {e}", file.display())))
}

fn when(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

fn list(names: &[String]) -> String {
    match names {
        [] => "(none)".to_string(),
        _ => names.join(" "),
    }
}

fn header_table(h: &Header) -> String {
    let rows = [
        ("cluster", h.cluster.clone()),
        ("taken", format!("on {} at {}", h.node, when(h.taken_at_ms))),
        ("applied", format!("index {}, term {}", h.index, h.term)),
        ("members", list(&h.members)),
        ("services", list(&h.services)),
        ("state", format!("{} bytes, digest {}", h.bytes, h.digest)),
        ("sha256", format!("{} (checked)", h.sha256)),
    ];
    rows.iter().map(|(k, v)| format!("{k:<9} {v}\n")).collect()
}

fn saved_text(s: &SnapshotSaved) -> String {
    let h = &s.header;
    let mut out = format!(
        "saved {}'s cluster state to {}: index {}, term {}, {} member(s), {} service(s), \
         {} bytes\n",
        h.node,
        s.path,
        h.index,
        h.term,
        h.members.len(),
        h.services.len(),
        h.bytes
    );
    if s.leader.is_none() {
        out += &format!(
            "warning: {} knew no leader: what the cluster committed after index {} \
             elsewhere is not in it\n",
            h.node, h.index
        );
    }
    out
}

fn restored_text(r: &SnapshotRestored) -> String {
    let mut out = format!(
        "restored cluster state at index {} into cluster {}: {} is its only member \
         (raft id {}), with {} service(s): {}\n",
        r.index,
        r.cluster,
        r.node,
        r.raft_id,
        r.services.len(),
        list(&r.services)
    );
    if let Some(old) = &r.renamed_from {
        out += &format!(
            "the backup (taken on {}) was of cluster {old}\n",
            r.taken_on
        );
    }
    match &r.secret_in_use {
        Some(key) => {
            out +=
                &format!("secret: the backup's rotated secret {key} is in use, now in node.conf\n")
        }
        None => out += "secret: node.conf's cluster.secret, unchanged\n",
    }
    out += &format!(
        "{} is frozen: it starts no service until `om node thaw`\n",
        r.node
    );
    if !r.leading {
        out += &format!(
            "warning: {} does not lead yet; see `om node daemon status` and its log\n",
            r.node
        );
    }
    if !r.removed.is_empty() {
        out += &format!(
            "no longer members: {}. None may start on its old store (with another, it \
             would go on as the old cluster); on each, with its daemon stopped:\n  \
             rm -r ROOT/var/raft ROOT/var/raft.id; om node daemon start; \
             om node daemon join --node {} --secret-file SECRET_FILE\n\
             (SECRET_FILE holds the secret {} uses: its cluster.secret)\n",
            r.removed.join(", "),
            r.node,
            r.node
        );
    }
    out
}
