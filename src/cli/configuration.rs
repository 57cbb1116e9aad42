//! `om cluster config get|set`: the cluster's declarative configuration (the agent API's
//! `get_configuration` and `set_configuration`) as one JSON document,
//! `{"params": {...}, "services": {"<name>": "<config text>"}}`, so that `get > f`, an
//! edit, and `set f` round-trip.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use super::call_typed;
use super::print;
use super::CliError;
use super::Format;
use crate::api::options;
use crate::config::Paths;

type Result<T> = std::result::Result<T, CliError>;

/// `om cluster config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print the configuration document (JSON; with --format json, with versions).
    Get,
    /// Make the cluster's configuration the document in FILE (`-`: stdin): services it
    /// does not name are deleted, parameters it does not name are unset.
    Set {
        /// The JSON document, as `get` prints it.
        file: PathBuf,
        /// Only print what would change.
        #[arg(long)]
        dry_run: bool,
        /// How long each node has to apply it (seconds).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=60))]
        wait: u64,
    },
}

/// Runs one `om cluster config` command.
pub(super) async fn run(paths: &Paths, cmd: ConfigCmd, format: Format) -> Result<()> {
    match cmd {
        ConfigCmd::Get => {
            let req = options::GetConfiguration {};
            let data = call_typed(paths, &req, Duration::from_secs(10)).await?;
            print(format, &data, |d| {
                serde_json::to_string_pretty(&d.config).unwrap_or_default() + "\n"
            });
        }
        ConfigCmd::Set {
            file,
            dry_run,
            wait,
        } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(&file)
            }
            .map_err(|e| CliError::new(format!("{}: {e}", file.display())))?;
            let config: options::Configuration = serde_json::from_str(&text).map_err(|e| {
                CliError::new(format!(
                    "{}: not a configuration document ({{\"params\": {{...}}, \"services\": \
                     {{...}}}}, as `om cluster config get` prints it): {e}",
                    file.display()
                ))
            })?;
            let req = options::SetConfiguration {
                config,
                dry_run,
                timeout_ms: Some(wait * 1000),
            };
            let data = call_typed(paths, &req, Duration::from_secs(wait + 40)).await?;
            print(format, &data, deployment_table);
            if data.results.iter().any(|r| !r.success) {
                return Err(CliError::new(
                    "committed, but not every node applied it in time (see above)",
                ));
            }
        }
    }
    Ok(())
}

fn deployment_table(d: &options::Deployment) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(" ")
        }
    };
    let mut out = String::new();
    if d.dry_run {
        out.push_str("dry run: nothing committed\n");
    }
    for (label, names) in [
        ("created", &d.created),
        ("updated", &d.updated),
        ("deleted", &d.deleted),
        ("params set", &d.params_set),
        ("params unset", &d.params_unset),
    ] {
        out.push_str(&format!("{label:<13} {}\n", list(names)));
    }
    if !d.dry_run {
        out.push_str(&format!("index         {}\n", d.index));
    }
    for r in &d.results {
        let ok = if r.success { "applied" } else { "FAILED" };
        let why = r
            .error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        out.push_str(&format!("{:<13} {ok}{why}\n", r.node));
    }
    out
}
