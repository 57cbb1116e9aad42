//! `om cluster config get|set`: the cluster's declarative configuration (the agent API's
//! `get_configuration` and `set_configuration`) as one JSON document,
//! `{"params": {...}, "services": {"<name>": "<config text>"}}`, so that `get > f`, an
//! edit, and `set f` round-trip.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use serde_json::json;
use serde_json::Value;

use super::call;
use super::print;
use super::CliError;
use super::Format;
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
            let data = call(
                paths,
                "get_configuration",
                json!({}),
                Duration::from_secs(10),
            )
            .await?;
            print(format, &data, |d| {
                serde_json::to_string_pretty(&d["config"]).unwrap_or_default() + "\n"
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
            .map_err(|e| CliError(format!("{}: {e}", file.display())))?;
            let config: Value = serde_json::from_str(&text)
                .map_err(|e| CliError(format!("{}: not a JSON document: {e}", file.display())))?;
            let options = json!({"config": config, "dry_run": dry_run, "timeout_ms": wait * 1000});
            let data = call(
                paths,
                "set_configuration",
                options,
                Duration::from_secs(wait + 40),
            )
            .await?;
            print(format, &data, deployment_table);
            let failed = data["results"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["success"] != true);
            if failed {
                return Err(CliError(
                    "committed, but not every node applied it in time (see above)".into(),
                ));
            }
        }
    }
    Ok(())
}

fn deployment_table(d: &Value) -> String {
    let list = |k: &str| {
        let v: Vec<&str> = d[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(" ")
        }
    };
    let mut out = String::new();
    if d["dry_run"] == true {
        out.push_str("dry run: nothing committed\n");
    }
    for (label, key) in [
        ("created", "created"),
        ("updated", "updated"),
        ("deleted", "deleted"),
        ("params set", "params_set"),
        ("params unset", "params_unset"),
    ] {
        out.push_str(&format!("{label:<13} {}\n", list(key)));
    }
    if d["dry_run"] != true {
        out.push_str(&format!("index         {}\n", d["index"]));
    }
    for r in d["results"].as_array().into_iter().flatten() {
        let ok = if r["success"] == true {
            "applied"
        } else {
            "FAILED"
        };
        let why = r["error"]
            .as_str()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<13} {ok}{why}\n",
            r["node"].as_str().unwrap_or("?")
        ));
    }
    out
}
