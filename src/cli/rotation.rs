//! `om cluster secret add|use|remove|list`: the secret rotation, step by step, with each
//! node's convergence shown (fingerprints only, never a secret).

use std::time::Duration;

use clap::Subcommand;

use super::call_as;
use super::call_typed;
use super::print;
use super::CliError;
use super::Format;
use crate::api::options;
use crate::api::options::RotationStep;
use crate::api::options::SecretStepDone;
use crate::api::options::SecretsReport;
use crate::api::Action;
use crate::config::Paths;

type Result<T> = std::result::Result<T, CliError>;

/// `om cluster secret ...`
#[derive(Debug, Subcommand)]
pub enum SecretCmd {
    /// Step 1: every node accepts a new secret (generated unless given), still uses its own.
    Add {
        /// The new secret; `-` reads it from stdin. Prefer --secret-file: argv shows in `ps`.
        #[arg(long)]
        secret: Option<String>,
        /// A file whose first line is the new secret.
        #[arg(long, conflicts_with = "secret")]
        secret_file: Option<std::path::PathBuf>,
    },
    /// Step 2: every node uses secret KEY_ID as a client (and still accepts the old one).
    Use {
        /// The key id (fingerprint) that `list` shows.
        key_id: String,
        /// Even though some reachable nodes do not accept it yet.
        #[arg(long)]
        force: bool,
    },
    /// Step 3: no node accepts secret KEY_ID any more.
    Remove {
        /// The key id (fingerprint) that `list` shows.
        key_id: String,
        /// Even though some reachable nodes do not use the current secret yet.
        #[arg(long)]
        force: bool,
    },
    /// The plan and, per node, which secrets it uses and accepts.
    List,
}

/// Runs one `om cluster secret` command.
pub(super) async fn run(paths: &Paths, cmd: SecretCmd, format: Format) -> Result<()> {
    let t = Duration::from_secs(20);
    let data: SecretStepDone = match cmd {
        SecretCmd::List => {
            let req = options::SecretList { local: false };
            let data = call_typed(paths, &req, t).await?;
            print(format, &data, list_table);
            return Ok(());
        }
        SecretCmd::Add {
            secret,
            secret_file,
        } => {
            let secret = super::read_secret(secret, secret_file)?;
            if let Some(s) = &secret {
                raft::secrets::check_secret(s)
                    .map_err(|e| CliError::new(format!("--secret: {e}")))?;
            }
            call_typed(paths, &options::SecretAdd { secret }, t).await?
        }
        SecretCmd::Use { key_id, force } => {
            check_key_id(&key_id)?;
            let req = options::SecretStep { key_id, force };
            call_as(paths, Action::ClusterSecretUse, &req, t).await?
        }
        SecretCmd::Remove { key_id, force } => {
            check_key_id(&key_id)?;
            let req = options::SecretStep { key_id, force };
            call_as(paths, Action::ClusterSecretRemove, &req, t).await?
        }
    };
    print(format, &data, step_text);
    Ok(())
}

/// A key id is 8 lower-case hex digits.
fn check_key_id(key_id: &str) -> Result<()> {
    let ok = key_id.len() == 8
        && key_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CliError::new(format!(
            "KEY_ID {key_id:?}: expected 8 lower-case hex digits, as `om cluster secret list` shows"
        )))
    }
}

/// What a committed step means, and the next one.
fn step_text(d: &SecretStepDone) -> String {
    let key = &d.key_id;
    let index = d.committed.index;
    let mut out = match d.step {
        RotationStep::Add => format!(
            "secret {key} added (index {index}): every node accepts it, none uses it yet\n\
             next, once `om cluster secret list` shows it on every node: om cluster secret use {key}\n"
        ),
        RotationStep::Use => format!(
            "secret {key} in use (index {index}): every node connects with it, still accepts the old one\n\
             next, once every node uses it: om cluster secret remove <old key id>\n"
        ),
        RotationStep::Remove => {
            format!("secret {key} removed (index {index}): no node accepts it any more\n")
        }
    };
    if !d.unreachable.is_empty() {
        out.push_str(&format!(
            "warning: unreachable, convergence unknown: {}\n",
            d.unreachable.join(", ")
        ));
    }
    out
}

/// The human table of `list`.
fn list_table(r: &SecretsReport) -> String {
    let dash = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(",")
        }
    };
    let mut out = format!(
        "plan: uses {}; accepts {}; removed {}\n",
        r.plan
            .uses
            .as_deref()
            .unwrap_or("node.conf's secret (no rotation yet)"),
        dash(&r.plan.accepts),
        dash(&r.plan.removed)
    );
    out.push_str(&format!(
        "{:<16} {:<9} {:<9} {:<28} {}\n",
        "NODE", "REACHABLE", "USES", "ACCEPTS", "CONVERGED"
    ));
    for n in &r.nodes {
        let yes = |b: bool| if b { "yes" } else { "no" };
        out.push_str(&format!(
            "{:<16} {:<9} {:<9} {:<28} {}{}\n",
            n.node,
            yes(n.reachable),
            n.uses.as_deref().unwrap_or("?"),
            dash(&n.accepts),
            yes(n.converged),
            n.error
                .as_ref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        ));
    }
    out.push_str(if r.converged {
        "every node converged\n"
    } else {
        "not converged yet\n"
    });
    out
}
