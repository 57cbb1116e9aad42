//! The failover service the suite runs, and what its processes say about themselves.
//!
//! Its one resource is a shell loop that, while it runs, appends a heartbeat line
//! `node run-id nanoseconds` to `beats.<node>` in the cluster's shared directory every 50 ms,
//! with the real wall clock (libfaketime is dropped from its environment). The run id is
//! the process id and its start time: PID namespaces start again at 1 when a node restarts. A run of the app
//! is the span between the first and the last heartbeat of one process: two runs on
//! different nodes that overlap are two instances at once, whatever om's status said.

use std::path::Path;

/// One process of the app, from its heartbeats (times relative to the run's start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Run {
    pub node: String,
    pub id: String,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// The app's script, for the shared directory `shared`.
pub(crate) fn script(shared: &Path) -> String {
    format!(
        r#"#!/bin/sh
# The fault suite's failover app (tests/faults/app.rs). start|stop|check|run.
unset LD_PRELOAD
pidf="$OM_VAR/guard.pid"
case "$1" in
start) setsid /bin/sh "$0" run </dev/null >/dev/null 2>&1 & echo $! > "$pidf" ;;
run) id="$$.$(date +%s%N)"; while :; do echo "$OM_NODENAME $id $(date +%s%N)" >> "{shared}/beats.$OM_NODENAME"; sleep 0.05; done ;;
stop) pid=$(cat "$pidf" 2>/dev/null) && kill -9 "$pid" 2>/dev/null; rm -f "$pidf"; true ;;
check) pid=$(cat "$pidf" 2>/dev/null) && kill -0 "$pid" 2>/dev/null ;;
esac
"#,
        shared = shared.display()
    )
}

/// The service config: failover, kept placed by the orchestrator, on every node.
pub(crate) fn config(script: &Path, nodes: &[String]) -> String {
    let s = script.display();
    format!(
        "[DEFAULT]\nnodes = {}\ntopology = failover\norchestrate = ha\ncheck_interval = 1s\n\n\
         [app#1]\nstart = /bin/sh {s} start\nstop = /bin/sh {s} stop\ncheck = /bin/sh {s} check\n\
         timeout = 10s\n",
        nodes.join(" ")
    )
}

/// The runs recorded in `shared`, with times relative to `t0_ns` (wall clock, ns).
pub(crate) fn runs(shared: &Path, t0_ns: u64) -> Vec<Run> {
    let mut by_id: std::collections::BTreeMap<(String, String), Run> = Default::default();
    let Ok(dir) = std::fs::read_dir(shared) else {
        return Vec::new();
    };
    let mut files: Vec<_> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("beats."))
        })
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(node), Some(id), Some(ns)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(ns) = ns.parse::<u64>() else {
                continue;
            };
            let t = ns.saturating_sub(t0_ns);
            let run = by_id
                .entry((node.to_string(), id.to_string()))
                .or_insert(Run {
                    node: node.to_string(),
                    id: id.to_string(),
                    first_ns: t,
                    last_ns: t,
                });
            run.first_ns = run.first_ns.min(t);
            run.last_ns = run.last_ns.max(t);
        }
    }
    by_id.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_make_runs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("beats.n1"),
            "n1 7.1 1000\nn1 7.1 2000\nn1 7.4 5000\ngarbage\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("beats.n2"), "n2 7.1 3000\n").unwrap();
        let r = runs(dir.path(), 1000);
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].first_ns, r[0].last_ns), (0, 1000));
        assert_eq!(r[1].id, "7.4", "the same pid restarted is another run");
        assert_eq!(r[2].node, "n2");
    }
}
