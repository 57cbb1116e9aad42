//! Human tables for `om node daemon status`, in the layout of OpenSVC's `om daemon status`:
//! a threads block, a nodes block with one column per node, and an objects block.

use std::fmt::Write;

use serde_json::Value;

use crate::api::status::ClusterStatus;
use crate::api::status::MemberView;
use crate::api::status::Membership;
use crate::api::status::RaftView;
use crate::api::status::ServiceSummary;

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An optional value as a cell: `-` when absent.
fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Renders the `daemon_status` reply as text, reading the clock for the age of stale rows.
pub fn status_table(st: &ClusterStatus) -> String {
    status_table_at(st, crate::clock::now_ms())
}

/// `ms` as a short age: 42s, 3m, 5h, 2d.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The quorum line: how many voters answered, of how many, and the majority needed.
pub(super) fn quorum_line(st: &ClusterStatus) -> String {
    let voters: Vec<&MemberView> = st
        .nodes
        .values()
        .filter(|v| v.membership == Membership::Voter)
        .collect();
    let up = voters.iter().filter(|v| !v.stale()).count();
    let need = voters.len() / 2 + 1;
    let verdict = if up >= need { "ok" } else { "LOST" };
    let leader = st.cluster.leader.as_deref().unwrap_or("none");
    format!(
        "quorum {verdict}: {up}/{} voters up, {need} needed; leader {leader}",
        voters.len()
    )
}

const LEGEND: &str = "\
Legend: n1* the leader; NO not answering; an instance is avail [* frozen] [status when not idle];
(stale, AGE) the last report of a node that is down or not answering, AGE ago.
";

/// What the row of service `svc` shows under `node` (whose status entry is `v`).
fn instance_cell(svc: &ServiceSummary, node: &str, v: &MemberView, now_ms: u64) -> String {
    let Some(i) = svc.instances.get(node) else {
        return String::new();
    };
    let mut c = i.avail.to_string();
    if i.frozen {
        c.push_str(" *");
    }
    if i.status != raft::state::MonitorStatus::Idle {
        let _ = write!(c, " {}", i.status);
    }
    if v.stale() {
        let _ = write!(
            c,
            " (stale, {})",
            age(now_ms.saturating_sub(i.updated_at_ms))
        );
    }
    c
}

/// The width of a node column: its widest cell, at least 10, and a gap of 2.
fn column_width(st: &ClusterStatus, now_ms: u64) -> usize {
    let cells = st.services.values().flat_map(|svc| {
        st.nodes
            .iter()
            .map(move |(n, v)| instance_cell(svc, n, v, now_ms).len())
    });
    st.nodes
        .iter()
        .map(|(n, v)| n.len().max(v.address.len()))
        .chain(cells)
        .max()
        .unwrap_or(4)
        .max(10)
        + 2
}

const LABEL: usize = 22;

fn threads_block(out: &mut String, st: &ClusterStatus) {
    let _ = writeln!(
        out,
        "{:<w$}{:<10}{:>9}  last error",
        "Threads",
        "state",
        "restarts",
        w = LABEL + 1
    );
    for (id, t) in &st.threads {
        let _ = writeln!(
            out,
            " {id:<LABEL$}{:<10}{:>9}  {}",
            t.state.as_str(),
            t.restarts,
            t.last_error.as_deref().unwrap_or("")
        );
    }
    out.push('\n');
}

fn nodes_block(out: &mut String, st: &ClusterStatus, col: usize) {
    let leader = st.cluster.leader.as_deref();
    let _ = write!(out, "{:<w$}", "Nodes", w = LABEL + 1);
    for n in st.nodes.keys() {
        let mark = if Some(n.as_str()) == leader {
            format!("{n}*")
        } else {
            n.clone()
        };
        let _ = write!(out, "{mark:<col$}");
    }
    out.push('\n');
    let row = |out: &mut String, title: &str, f: &dyn Fn(&MemberView) -> String| {
        let _ = write!(out, " {title:<LABEL$}");
        for v in st.nodes.values() {
            let _ = write!(out, "{:<col$}", f(v));
        }
        out.push('\n');
    };
    let raft =
        |f: fn(&RaftView) -> Option<u64>| move |v: &MemberView| opt(v.raft.as_ref().and_then(f));
    row(out, "role", &|v| v.role.as_str().into());
    row(out, "reachable", &|v| {
        if v.reachable { "yes" } else { "NO" }.into()
    });
    row(out, "address", &|v| v.address.clone());
    row(out, "membership", &|v| v.membership.as_str().into());
    row(out, "term", &raft(|r| Some(r.term)));
    row(out, "last log", &raft(|r| r.last_log_index));
    row(out, "last applied", &raft(|r| r.last_applied));
    let head = st
        .cluster
        .leader
        .as_ref()
        .and_then(|l| st.nodes.get(l))
        .and_then(|v| v.raft.as_ref())
        .and_then(|r| r.last_log_index);
    row(out, "behind leader", &|v| {
        let applied = v.raft.as_ref().and_then(|r| r.last_applied);
        opt(head.zip(applied).map(|(h, a)| h.saturating_sub(a)))
    });
    row(out, "version", &|v| {
        let version = v.raft.as_ref().map(|r| r.version.as_str());
        version.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
    });
    row(out, "node role", &|v| v.node_role.to_string());
    row(out, "monitor status", &|v| {
        opt(v.monitor.as_ref().map(|m| m.status))
    });
    row(
        out,
        "frozen",
        &|v| match v.monitor.as_ref().map(|m| m.frozen) {
            Some(true) => "frozen".into(),
            Some(false) => "thawed".into(),
            None => "-".into(),
        },
    );
    out.push('\n');
}

fn problems_block(out: &mut String, st: &ClusterStatus) {
    let problems: Vec<String> = st
        .nodes
        .iter()
        .flat_map(|(n, v)| {
            let listener = v.raft.as_ref().and_then(|r| r.listener_problem.as_ref());
            let listener = listener.map(|p| format!(" {n}: {p}"));
            let unreachable = v.error.as_ref().map(|e| format!(" {n}: unreachable: {e}"));
            listener.into_iter().chain(unreachable)
        })
        .collect();
    if !problems.is_empty() {
        let _ = writeln!(out, "Problems\n{}\n", problems.join("\n"));
    }
}

fn objects_block(out: &mut String, st: &ClusterStatus, col: usize, now_ms: u64) {
    let _ = write!(out, "{:<w$}", "Objects", w = LABEL + 1);
    for n in st.nodes.keys() {
        let _ = write!(out, "{n:<col$}");
    }
    out.push('\n');
    if st.services.is_empty() {
        out.push_str(" (no services)\n");
    }
    for (name, svc) in &st.services {
        let title = format!("{name} ({})", svc.global_expect);
        let _ = write!(out, " {title:<LABEL$}");
        for (n, v) in &st.nodes {
            let cell = instance_cell(svc, n, v, now_ms);
            let _ = write!(out, "{cell:<col$}");
        }
        out.push('\n');
    }
    out.push('\n');
}

fn status_table_at(st: &ClusterStatus, now_ms: u64) -> String {
    let mut out = String::new();
    let col = column_width(st, now_ms);
    let _ = writeln!(
        out,
        "Cluster {}  leader {}  term {}  (seen from {})",
        st.cluster.name,
        st.cluster.leader.as_deref().unwrap_or("-"),
        st.cluster.term,
        st.node
    );
    let _ = writeln!(out, "{}", quorum_line(st));
    out.push('\n');
    threads_block(&mut out, st);
    nodes_block(&mut out, st, col);
    problems_block(&mut out, st);
    objects_block(&mut out, st, col, now_ms);
    out.push_str(LEGEND);
    out
}

/// Renders a reply with flat fields as `key  value` lines, in its JSON spelling.
pub fn kv<T: serde::Serialize + ?Sized>(reply: &T) -> String {
    let v = serde_json::to_value(reply).unwrap_or_default();
    match v.as_object() {
        Some(obj) => {
            let w = obj.keys().map(|k| k.len()).max().unwrap_or(0);
            obj.iter()
                .map(|(k, v)| format!("{k:<w$}  {}\n", s(v)))
                .collect()
        }
        None => format!("{}\n", s(&v)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// n2 is down and silent since its last report, 95 s ago, that its instance was up;
    /// n3 now runs the service.
    fn after_failover() -> ClusterStatus {
        let node = |reachable: bool, status: &str| {
            json!({"role": "follower", "reachable": reachable, "membership": "voter",
                   "in_cluster_nodes": true, "address": "127.0.0.1:1",
                   "monitor": {"status": status, "local_expect": "thawed", "frozen": false}})
        };
        let inst = |avail: &str, at: u64| {
            json!({"avail": avail, "status": "idle", "local_expect": "none", "frozen": false,
                   "restarts": {}, "updated_at_ms": at})
        };
        let st = json!({
            "node": "n1",
            "cluster": {"name": "c", "leader": "n1", "term": 3, "nodes": ["n1", "n2", "n3"],
                        "params": {}},
            "nodes": {"n1": node(true, "idle"), "n2": node(false, "down"), "n3": node(true, "idle")},
            "threads": {},
            "services": {"web": {"version": 1, "global_expect": "placed", "instances": {
                "n1": inst("down", 999_000), "n2": inst("up", 905_000), "n3": inst("up", 999_000),
            }}},
        });
        serde_json::from_value(st).expect("a daemon_status reply")
    }

    #[test]
    fn a_down_nodes_instance_is_shown_stale_with_its_age_and_the_quorum_is_stated() {
        let t = status_table_at(&after_failover(), 1_000_000);
        let web = t.lines().find(|l| l.starts_with(" web")).unwrap();
        let cells: Vec<&str> = web
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            cells,
            ["web (placed)", "down", "up (stale, 95s)", "up"],
            "{t}"
        );
        assert!(
            t.contains("quorum ok: 2/3 voters up, 2 needed; leader n1"),
            "{t}"
        );
        assert!(t.contains("Legend:") && t.contains("(stale, AGE)"), "{t}");
    }

    #[test]
    fn a_lost_quorum_says_so() {
        let mut st = after_failover();
        st.nodes.get_mut("n3").unwrap().reachable = false;
        st.cluster.leader = None;
        let t = status_table_at(&st, 1_000_000);
        assert!(
            t.contains("quorum LOST: 1/3 voters up, 2 needed; leader none"),
            "{t}"
        );
    }

    fn raft(last_log: u64, applied: u64) -> RaftView {
        RaftView {
            raft_id: "1".into(),
            term: 3,
            last_log_index: Some(last_log),
            last_applied: Some(applied),
            snapshot: None,
            purged: None,
            applied_state: crate::api::status::AppliedState {
                index: Some(applied),
                digest: String::new(),
            },
            leader_id: Some("1".into()),
            uptime_s: 1,
            listener: "127.0.0.1:1".into(),
            listener_problem: None,
            rpc_refused: 0,
            rpc_misdelivered: 0,
            listener_metrics: Default::default(),
            threads: Default::default(),
            check_ins: Default::default(),
            version: "0.1.0".into(),
        }
    }

    /// Each member's distance to the leader's log, and its version; `-` for one that
    /// did not answer.
    #[test]
    fn members_show_how_far_they_trail_the_leader() {
        let mut st = after_failover();
        st.nodes.get_mut("n1").unwrap().raft = Some(raft(30, 30));
        st.nodes.get_mut("n3").unwrap().raft = Some(raft(28, 25));
        let t = status_table_at(&st, 1_000_000);
        let cells = |title: &str| -> Vec<String> {
            let line = t
                .lines()
                .find(|l| l.trim_start().starts_with(title))
                .unwrap();
            line[title.len() + 1..]
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        assert_eq!(cells("behind leader"), ["0", "-", "5"], "{t}");
        assert_eq!(cells("version"), ["0.1.0", "-", "0.1.0"], "{t}");
    }

    #[test]
    fn ages() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(119_999), "119s");
        assert_eq!(age(120_000), "2m");
        assert_eq!(age(7_200_000), "2h");
        assert_eq!(age(3 * 86_400_000), "3d");
    }
}
