//! Human tables for `om node daemon status`, in the layout of OpenSVC's `om daemon status`:
//! a threads block, a nodes block with one column per node, and an objects block.

use std::fmt::Write;

use serde_json::Value;

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Renders the `daemon_status` data as text, reading the clock for the age of stale rows.
pub fn status_table(st: &Value) -> String {
    status_table_at(st, crate::clock::now_ms())
}

/// Whether what the state says of node `v` may be out of date: it does not answer, or
/// the leader marked it down. Its instances show their last report, not what runs there.
fn stale(v: &Value) -> bool {
    v["reachable"].as_bool() != Some(true) || v["monitor"]["status"] == "down"
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
fn quorum(nodes: &serde_json::Map<String, Value>, leader: &str) -> String {
    let voters: Vec<&Value> = nodes
        .values()
        .filter(|v| v["membership"] == "voter")
        .collect();
    let up = voters.iter().filter(|v| !stale(v)).count();
    let need = voters.len() / 2 + 1;
    let verdict = if up >= need { "ok" } else { "LOST" };
    let leader = if leader == "-" { "none" } else { leader };
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
fn instance_cell(svc: &Value, node: &str, v: &Value, now_ms: u64) -> String {
    let i = &svc["instances"][node];
    if i.is_null() {
        return String::new();
    }
    let mut c = s(&i["avail"]);
    if i["frozen"].as_bool() == Some(true) {
        c.push_str(" *");
    }
    if i["status"].as_str().is_some_and(|st| st != "idle") {
        let _ = write!(c, " {}", s(&i["status"]));
    }
    if stale(v) {
        let at = i["updated_at_ms"].as_u64().unwrap_or(0);
        let _ = write!(c, " (stale, {})", age(now_ms.saturating_sub(at)));
    }
    c
}

fn status_table_at(st: &Value, now_ms: u64) -> String {
    let mut out = String::new();
    let empty = serde_json::Map::new();
    let nodes = st["nodes"].as_object().unwrap_or(&empty);
    let names: Vec<&String> = nodes.keys().collect();
    let leader = s(&st["cluster"]["leader"]);
    let services = st["services"].as_object();
    let all_cells: Vec<String> = services
        .into_iter()
        .flat_map(|svcs| svcs.values())
        .flat_map(|svc| names.iter().map(move |n| (svc, *n)))
        .map(|(svc, n)| instance_cell(svc, n, &nodes[n.as_str()], now_ms))
        .collect();
    let cells = all_cells.iter().map(String::as_str);
    let col = nodes
        .iter()
        .map(|(n, v)| n.len().max(v["address"].as_str().map_or(0, str::len)))
        .chain(cells.map(str::len))
        .max()
        .unwrap_or(4)
        .max(10)
        + 2;
    let label = 22;
    let row = |out: &mut String, title: &str, f: &dyn Fn(&Value) -> String| {
        let _ = write!(out, " {title:<label$}");
        for n in &names {
            let _ = write!(out, "{:<col$}", f(&nodes[n.as_str()]));
        }
        out.push('\n');
    };

    let _ = writeln!(
        out,
        "Cluster {}  leader {}  term {}  (seen from {})",
        s(&st["cluster"]["name"]),
        leader,
        s(&st["cluster"]["term"]),
        s(&st["node"])
    );
    let _ = writeln!(out, "{}", quorum(nodes, &leader));
    out.push('\n');

    let _ = writeln!(
        out,
        "{:<w$}{:<10}{:>9}  last error",
        "Threads",
        "state",
        "restarts",
        w = label + 1
    );
    if let Some(threads) = st["threads"].as_object() {
        for (id, t) in threads {
            let _ = writeln!(
                out,
                " {id:<label$}{:<10}{:>9}  {}",
                s(&t["state"]),
                s(&t["restarts"]),
                t["last_error"].as_str().unwrap_or("")
            );
        }
    }
    out.push('\n');

    let _ = write!(out, "{:<w$}", "Nodes", w = label + 1);
    for n in &names {
        let mark = if **n == leader {
            format!("{n}*")
        } else {
            (*n).clone()
        };
        let _ = write!(out, "{mark:<col$}");
    }
    out.push('\n');
    row(&mut out, "role", &|v| s(&v["role"]));
    row(&mut out, "reachable", &|v| {
        if v["reachable"].as_bool() == Some(true) {
            "yes".into()
        } else {
            "NO".into()
        }
    });
    row(&mut out, "address", &|v| s(&v["address"]));
    row(&mut out, "membership", &|v| s(&v["membership"]));
    row(&mut out, "term", &|v| s(&v["term"]));
    row(&mut out, "last log", &|v| s(&v["last_log_index"]));
    row(&mut out, "last applied", &|v| s(&v["last_applied"]));
    row(&mut out, "monitor status", &|v| s(&v["monitor"]["status"]));
    row(
        &mut out,
        "frozen",
        &|v| match v["monitor"]["frozen"].as_bool() {
            Some(true) => "frozen".into(),
            Some(false) => "thawed".into(),
            None => "-".into(),
        },
    );
    out.push('\n');
    let problems: Vec<String> = nodes
        .iter()
        .flat_map(|(n, v)| {
            let listener = v["listener_problem"].as_str().map(|p| format!(" {n}: {p}"));
            let unreachable = v["error"]
                .as_str()
                .map(|e| format!(" {n}: unreachable: {e}"));
            listener.into_iter().chain(unreachable)
        })
        .collect();
    if !problems.is_empty() {
        let _ = writeln!(out, "Problems\n{}\n", problems.join("\n"));
    }

    let _ = write!(out, "{:<w$}", "Objects", w = label + 1);
    for n in &names {
        let _ = write!(out, "{n:<col$}");
    }
    out.push('\n');
    match services {
        Some(svcs) if !svcs.is_empty() => {
            for (name, svc) in svcs {
                let title = format!("{name} ({})", s(&svc["global_expect"]));
                let _ = write!(out, " {title:<label$}");
                for n in &names {
                    let cell = instance_cell(svc, n, &nodes[n.as_str()], now_ms);
                    let _ = write!(out, "{cell:<col$}");
                }
                out.push('\n');
            }
        }
        _ => out.push_str(" (no services)\n"),
    }
    out.push('\n');
    out.push_str(LEGEND);
    out
}

/// Renders a flat JSON object as `key  value` lines.
pub fn kv(v: &Value) -> String {
    match v.as_object() {
        Some(obj) => {
            let w = obj.keys().map(|k| k.len()).max().unwrap_or(0);
            obj.iter()
                .map(|(k, v)| format!("{k:<w$}  {}\n", s(v)))
                .collect()
        }
        None => format!("{}\n", s(v)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// n2 is down and silent since its last report, 95 s ago, that its instance was up;
    /// n3 now runs the service.
    fn after_failover() -> Value {
        let node = |reachable: bool, status: &str| {
            json!({"role": "follower", "reachable": reachable, "membership": "voter",
                   "address": "127.0.0.1:1", "monitor": {"status": status, "frozen": false}})
        };
        let inst = |avail: &str, at: u64| json!({"avail": avail, "status": "idle", "frozen": false, "updated_at_ms": at});
        json!({
            "node": "n1",
            "cluster": {"name": "c", "leader": "n1", "term": 3},
            "nodes": {"n1": node(true, "idle"), "n2": node(false, "down"), "n3": node(true, "idle")},
            "services": {"web": {"global_expect": "placed", "instances": {
                "n1": inst("down", 999_000), "n2": inst("up", 905_000), "n3": inst("up", 999_000),
            }}},
        })
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
        st["nodes"]["n3"]["reachable"] = json!(false);
        st["cluster"]["leader"] = Value::Null;
        let t = status_table_at(&st, 1_000_000);
        assert!(
            t.contains("quorum LOST: 1/3 voters up, 2 needed; leader none"),
            "{t}"
        );
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
