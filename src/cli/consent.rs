//! `om cluster set|unset|get`, `om cluster approve` and `om cluster join-requests`: the
//! cluster parameters (committed through Raft) and join consent (`cluster.join = approve`).

use std::time::Duration;

use clap::Subcommand;
use raft::node::Committed;

use super::call_typed;
use super::print;
use super::CliError;
use super::Format;
use crate::api::options;
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

/// `om cluster get`'s answer.
#[derive(serde::Serialize)]
struct ParamValue {
    param: String,
    value: Option<String>,
}

/// Runs one of these commands.
pub(super) async fn run(paths: &Paths, cmd: ParamCmd, format: Format) -> Result<()> {
    let t = Duration::from_secs(20);
    let committed = |data: &Committed| format!("committed at index {}\n", data.index);
    match cmd {
        ParamCmd::Set { param, value } => {
            let req = options::ClusterSet {
                param,
                value: Some(value),
            };
            print(format, &call_typed(paths, &req, t).await?, committed);
        }
        ParamCmd::Unset { param } => {
            let req = options::ClusterSet { param, value: None };
            print(format, &call_typed(paths, &req, t).await?, committed);
        }
        ParamCmd::Get { param } => {
            let st = call_typed(paths, &options::DaemonStatus::default(), t).await?;
            let value = st.cluster.params.get(&param).cloned();
            let data = ParamValue { param, value };
            print(format, &data, |d| {
                format!("{}\n", d.value.as_deref().unwrap_or(""))
            });
        }
        ParamCmd::Approve { node } => {
            let req = options::ClusterApprove { node: node.clone() };
            let data = call_typed(paths, &req, t).await?;
            print(format, &data, |d| {
                format!(
                    "{node} may join for the next hour (committed at index {})\n",
                    d.index
                )
            });
        }
        ParamCmd::JoinRequests => {
            let data = call_typed(paths, &options::JoinRequests {}, t).await?;
            print(format, &data, requests_table);
        }
    }
    Ok(())
}

fn requests_table(d: &options::JoinRequestsReport) -> String {
    let mut out = format!("cluster.join = {} (leader {})\n", d.policy, d.leader);
    if d.pending.is_empty() {
        out.push_str("no join waits for an approval\n");
    } else {
        out.push_str(&format!(
            "{:<24} {:<24} {:<24} {:>8}\n",
            "NODE", "ADDR", "FROM", "ATTEMPTS"
        ));
        for r in &d.pending {
            out.push_str(&format!(
                "{:<24} {:<24} {:<24} {:>8}\n",
                r.node, r.addr, r.peer, r.attempts
            ));
        }
    }
    for a in &d.approved {
        out.push_str(&format!(
            "approved: {} (until {} ms)\n",
            a.node, a.expires_ms
        ));
    }
    out
}
