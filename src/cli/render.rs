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

/// Renders the `daemon_status` data as text.
pub fn status_table(st: &Value) -> String {
    let mut out = String::new();
    let empty = serde_json::Map::new();
    let nodes = st["nodes"].as_object().unwrap_or(&empty);
    let names: Vec<&String> = nodes.keys().collect();
    let leader = s(&st["cluster"]["leader"]);
    let col = nodes
        .iter()
        .map(|(n, v)| n.len().max(v["address"].as_str().map_or(0, str::len)))
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
    match st["services"].as_object() {
        Some(svcs) if !svcs.is_empty() => {
            for (name, svc) in svcs {
                let title = format!("{name} ({})", s(&svc["global_expect"]));
                let _ = write!(out, " {title:<label$}");
                for n in &names {
                    let i = &svc["instances"][n.as_str()];
                    let cell = if i.is_null() {
                        "".to_string()
                    } else {
                        let mut c = s(&i["avail"]);
                        if i["frozen"].as_bool() == Some(true) {
                            c.push_str(" *");
                        }
                        if i["status"].as_str().is_some_and(|st| st != "idle") {
                            c.push_str(&format!(" {}", s(&i["status"])));
                        }
                        c
                    };
                    let _ = write!(out, "{cell:<col$}");
                }
                out.push('\n');
            }
        }
        _ => out.push_str(" (no services)\n"),
    }
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
