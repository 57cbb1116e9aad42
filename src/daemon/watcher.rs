//! The `watcher` thread: notices any change of node.conf (editor save, `om node set`, touch)
//! or of the secret file it names, and applies the modified parameters live.
//!
//! notify reports the change within milliseconds; a 1 s mtime poll backs it up on file
//! systems where inotify says nothing. A node.conf that does not parse or validate is
//! refused with the line and reason logged, and the running configuration is kept; so is
//! a listener address that another member holds. A new address is announced to the
//! cluster by the listener thread once it is bound, never before.

use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use notify::RecursiveMode;
use notify::Watcher;
use tokio::sync::mpsc;
use tokio::sync::watch;

use super::Daemon;
use crate::config::NodeConfig;

fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Runs until `stop`: reloads node.conf whenever its mtime changes.
pub async fn run(daemon: Arc<Daemon>, mut stop: watch::Receiver<bool>) -> Result<(), String> {
    let path = daemon.paths.node_conf();
    let dir = path
        .parent()
        .expect("node.conf has a directory")
        .to_path_buf();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let _ = tx.send(ev.is_ok());
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    // The secret file (`cluster.secret_file`) may live elsewhere: the poll covers it.
    let stamp = |d: &Daemon| (mtime(&path), d.config().secret_file.and_then(|f| mtime(&f)));
    let mut seen = stamp(&daemon);
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            ev = rx.recv() => {
                if ev.is_none() {
                    return Err("the file watcher stopped".into());
                }
                // Let the writer finish (editors write then rename).
                tokio::time::sleep(Duration::from_millis(50)).await;
                while rx.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = stamp(&daemon);
        if now != seen {
            seen = now;
            reload(&daemon).await;
        }
    }
}

/// What a reload did: the parameters it applied, those that need a restart, or why the
/// whole file was refused (the running configuration is kept then).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// `section.key` of every parameter that changed and took effect.
    pub applied: Vec<String>,
    /// `section.key` of every parameter that changed but takes effect at the next start.
    pub needs_restart: Vec<String>,
    /// Why node.conf was refused, if it was.
    pub refused: Option<String>,
}

/// Parameters that take effect only when the daemon starts.
const RESTART_ONLY: &[&str] = &["node.name", "metrics.addr"];

/// The `section.key` of every entry that differs between two documents (added, removed
/// or changed), in order.
fn changed_keys(old: &crate::config::IniDoc, new: &crate::config::IniDoc) -> Vec<String> {
    use std::collections::BTreeMap;
    let map = |d: &crate::config::IniDoc| -> BTreeMap<String, String> {
        d.entries()
            .into_iter()
            .map(|(s, k, v)| (format!("{s}.{k}"), v))
            .collect()
    };
    let (a, b) = (map(old), map(new));
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Reads node.conf again and applies what changed.
pub async fn reload(daemon: &Arc<Daemon>) -> ReloadReport {
    let report = reload_report(daemon);
    if let Some(why) = &report.refused {
        tracing::error!("{why}");
    }
    report
}

fn reload_report(daemon: &Arc<Daemon>) -> ReloadReport {
    let path = daemon.paths.node_conf();
    let _writer = daemon.conf_writer.lock().unwrap();
    let refused = |why: String| ReloadReport {
        refused: Some(why),
        ..ReloadReport::default()
    };
    let (doc, new) = match NodeConfig::load(&path) {
        Ok(x) => x,
        Err(e) => {
            return refused(format!(
                "node.conf refused, keeping the running configuration: {e}"
            ))
        }
    };
    let old = daemon.config();
    let keys = changed_keys(&daemon.config.read().unwrap().0, &doc);
    let (needs_restart, mut applied): (Vec<String>, Vec<String>) = keys
        .into_iter()
        .partition(|k| RESTART_ONLY.contains(&k.as_str()));
    let file_changed = new.secret_file.is_some()
        && (new.secret != old.secret || new.secrets_accepted != old.secrets_accepted);
    if file_changed && !applied.iter().any(|k| k == "cluster.secret_file") {
        applied.push("cluster.secret_file".into());
    }
    if old == new {
        *daemon.config.write().unwrap() = (doc, new);
        return ReloadReport {
            applied,
            ..ReloadReport::default()
        };
    }
    if new.name != old.name {
        return ReloadReport {
            needs_restart,
            refused: Some(format!(
                "node.name changed from {} to {}: a rename needs a daemon restart; keeping the running configuration",
                old.name, new.name
            )),
            ..ReloadReport::default()
        };
    }
    let addr_changed =
        new.listener_addr != old.listener_addr || new.listener_port != old.listener_port;
    if addr_changed {
        if let Err(e) = daemon.check_addr_free(&new.advertised_addr()) {
            daemon.set_addr_problem(Some(format!("node.conf refused: {e}")));
            return refused(format!(
                "node.conf refused, keeping the running configuration: {e}"
            ));
        }
    }
    *daemon.config.write().unwrap() = (doc, new.clone());
    tracing::info!(changed = ?applied, "node.conf changed; applying");
    apply(daemon, &old, &new);
    ReloadReport {
        applied,
        needs_restart,
        refused: None,
    }
}

/// Applies the parameters that need an action (the others are read where they are used).
fn apply(daemon: &Arc<Daemon>, old: &NodeConfig, new: &NodeConfig) {
    if new.log_level != old.log_level {
        crate::logging::set_level(new.log_level);
        tracing::info!(level = %new.log_level, "log level changed");
    }
    if new.secret != old.secret
        || new.secrets_accepted != old.secrets_accepted
        || new.cluster_name != old.cluster_name
    {
        daemon.set_keyring(new.keyring());
        tracing::info!("cluster keyring changed");
    }
    // Every listener.* parameter (caps and timeouts included) takes effect by a rebind.
    if new.nodes != old.nodes {
        daemon.refresh_members();
    }
    if super::listener_config(new) != super::listener_config(old) {
        daemon.rebind_listener();
        tracing::info!(
            addr = %new.listener_addr,
            port = new.listener_port,
            max_frame = new.max_frame,
            "listener rebinding"
        );
    }
}
