//! `om cluster set|unset|get`, `om cluster approve` and `om cluster join-requests`: the
//! cluster parameters (committed through Raft) and join consent (`cluster.join = approve`).

use std::time::Duration;

use clap::Subcommand;
use serde_json::json;
use serde_json::Value;

use super::call;
use super::print;
use super::CliError;
use super::Format;
use crate::api::options::DaemonStatus;
use crate::config::Paths;

type Result<T> = std::result::Result<T, CliError>;

/// `om cluster ...` commands on parameters and joins.
#[derive(Debug, Subcommand)]
pub enum ParamCmd {
    /// Set a cluster parameter on every node (committed through Raft).
    Set {
        /// `section.key`: cluster.join (open, approve).
        #[arg(long)]
        param: String,
        /// The value.
        #[arg(long)]
        value: String,
    },
    /// Remove a cluster parameter (its default applies again).
    Unset {
        /// `section.key`.
        #[arg(long)]
        param: String,
    },
    /// Print a cluster parameter (empty when it is not set).
    Get {
        /// `section.key`.
        #[arg(long)]
        param: String,
    },
    /// Let node NODE join (with `cluster.join = approve`); valid for an hour.
    Approve {
        /// The joiner's node name, as `om cluster join-requests` shows it.
        node: String,
    },
    /// The joins waiting for an approval, and the approvals not used yet.
    JoinRequests,
}

/// Runs one of these commands.
pub(super) async fn run(paths: &Paths, cmd: ParamCmd, format: Format) -> Result<()> {
    let t = Duration::from_secs(20);
    let committed = |data: &Value| format!("committed at index {}\n", data["index"]);
    match cmd {
        ParamCmd::Set { param, value } => {
            let data = call(
                paths,
                "cluster_set",
                json!({"param": param, "value": value}),
                t,
            )
            .await?;
            print(format, &data, committed);
        }
        ParamCmd::Unset { param } => {
            let data = call(paths, "cluster_set", json!({"param": param}), t).await?;
            print(format, &data, committed);
        }
        ParamCmd::Get { param } => {
            let st = super::call_typed(paths, &DaemonStatus::default(), t).await?;
            let value = st.cluster.params.get(&param).cloned();
            let data = json!({"param": param, "value": value});
            print(format, &data, |d| {
                format!("{}\n", d["value"].as_str().unwrap_or(""))
            });
        }
        ParamCmd::Approve { node } => {
            let data = call(paths, "cluster_approve", json!({"node": node}), t).await?;
            print(format, &data, |d| {
                format!(
                    "{node} may join for the next hour (committed at index {})\n",
                    d["index"]
                )
            });
        }
        ParamCmd::JoinRequests => {
            let data = call(paths, "join_requests", json!({}), t).await?;
            print(format, &data, requests_table);
        }
    }
    Ok(())
}

fn requests_table(d: &Value) -> String {
    let mut out = format!(
        "cluster.join = {} (leader {})\n",
        d["policy"].as_str().unwrap_or("?"),
        d["leader"].as_str().unwrap_or("?")
    );
    let pending = d["pending"].as_array().cloned().unwrap_or_default();
    if pending.is_empty() {
        out.push_str("no join waits for an approval\n");
    } else {
        out.push_str(&format!(
            "{:<24} {:<24} {:<24} {:>8}\n",
            "NODE", "ADDR", "FROM", "ATTEMPTS"
        ));
        for r in &pending {
            out.push_str(&format!(
                "{:<24} {:<24} {:<24} {:>8}\n",
                r["node"].as_str().unwrap_or(""),
                r["addr"].as_str().unwrap_or(""),
                r["peer"].as_str().unwrap_or(""),
                r["attempts"]
            ));
        }
    }
    for a in d["approved"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "approved: {} (until {} ms)\n",
            a["node"].as_str().unwrap_or(""),
            a["expires_ms"]
        ));
    }
    out
}
