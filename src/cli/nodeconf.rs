//! `om node set|get|unset`, `om node print|edit config`, `om node dequeue actions`: node.conf
//! edits, validated before anything is written; the running daemon's watcher applies them.

use std::time::Duration;

use super::CliError;
use super::Exit;
use super::Format;
use crate::api::Action;
use crate::api::Call;
use crate::config;
use crate::config::IniDoc;
use crate::config::NodeConfig;
use crate::config::Paths;

type Result<T> = std::result::Result<T, CliError>;

fn split(param: &str) -> Result<(&str, &str)> {
    param.split_once('.').ok_or_else(|| {
        CliError::new(format!(
            "--param {param:?}: expected SECTION.KEY, e.g. listener.port"
        ))
    })
}

fn load(paths: &Paths) -> Result<IniDoc> {
    NodeConfig::load(&paths.node_conf())
        .map(|(doc, _)| doc)
        .map_err(|e| CliError::new(e.to_string()))
}

/// Sets (`Some`) or unsets (`None`) a parameter; the file is untouched if the result is invalid.
pub(super) async fn set(
    paths: &Paths,
    param: &str,
    value: Option<&str>,
    format: Format,
) -> Result<()> {
    let (section, key) = split(param)?;
    let edit = |doc: &mut IniDoc| -> Result<()> {
        match value {
            Some(v) => doc.set(section, key, v),
            None if !doc.unset(section, key) => {
                return Err(CliError::new(format!(
                    "{param} is not set in {}",
                    paths.node_conf().display()
                )))
            }
            None => {}
        }
        Ok(())
    };
    match value {
        Some(v) => {
            config::validate(param, v).map_err(|e| CliError::of(Exit::Usage, e.to_string()))?
        }
        None => config::validate(param, "").or_else(|e| match e {
            config::ConfigError::UnknownKey { .. } => Err(CliError::of(Exit::Usage, e.to_string())),
            _ => Ok(()),
        })?,
    }
    let mut doc = load(paths)?;
    edit(&mut doc)?;
    let new = NodeConfig::from_doc(&doc).map_err(|e| CliError::new(e.to_string()))?;
    // Asked before the lock is taken: the daemon may be waiting for it to record a member.
    check_listener_addr(paths, &new).await?;
    let _lock = config::lock_conf(&paths.node_conf()).map_err(|e| CliError::new(e.to_string()))?;
    let mut doc = load(paths)?;
    edit(&mut doc)?;
    NodeConfig::from_doc(&doc).map_err(|e| CliError::new(e.to_string()))?;
    config::save(&paths.node_conf(), &doc).map_err(|e| CliError::new(e.to_string()))?;
    #[derive(serde::Serialize)]
    struct ParamSet<'a> {
        param: &'a str,
        value: Option<String>,
    }
    let out = ParamSet {
        param,
        value: value.map(|v| config::shown_value(param, v)),
    };
    super::print(format, &out, |_| String::new());
    Ok(())
}

/// Asks the running daemon whether `new`'s listener address is free in its cluster (no
/// other member holds it), before anything is written. Without a daemon there is nothing
/// to ask: the cluster's leader refuses the address when the node announces it.
async fn check_listener_addr(paths: &Paths, new: &NodeConfig) -> Result<()> {
    let old = NodeConfig::load(&paths.node_conf())
        .map(|(_, c)| c.advertised_addr())
        .ok();
    let addr = new.advertised_addr();
    if old.as_deref() == Some(addr.as_str()) {
        return Ok(());
    }
    let client = crate::control::ControlClient::new(paths);
    let req = crate::api::options::CheckListenerAddr { addr: addr.clone() };
    let options = crate::api::reply(&req).map_err(|e| CliError::new(e.message))?;
    // Not through `call`: a daemon that is not running is not a refusal.
    match client
        .request(
            Action::CheckListenerAddr.as_str(),
            options,
            Duration::from_secs(5),
        )
        .await
    {
        Err(crate::control::ControlError::NotRunning { .. }) => Ok(()),
        Err(e) => Err(CliError::new(format!(
            "cannot check {addr} with the daemon: {e}"
        ))),
        Ok(r) if r.is_ok() => Ok(()),
        Ok(r) => Err(CliError::new(format!(
            "refused, node.conf untouched: {}",
            r.error.unwrap_or_default()
        ))),
    }
}

/// `om node get`'s answer.
#[derive(serde::Serialize)]
struct ParamShown {
    param: String,
    value: String,
    /// Whether node.conf leaves it unset (the value is the default).
    default: bool,
}

/// Prints a parameter's value, or its default when unset.
pub(super) fn get(paths: &Paths, param: &str, format: Format) -> Result<()> {
    let (section, key) = split(param)?;
    let p = config::PARAMS
        .iter()
        .find(|p| p.key == param)
        .ok_or_else(|| {
            let unknown = config::validate(param, "").unwrap_err().to_string();
            CliError::of(Exit::Usage, unknown)
        })?;
    let doc = load(paths)?;
    let shown = |value: String, default: bool| {
        let data = ParamShown {
            param: param.to_string(),
            value,
            default,
        };
        super::print(format, &data, |d| format!("{}\n", d.value));
        Ok(())
    };
    if doc.get("cluster", "secret_file").is_some() && param.starts_with("cluster.secret") {
        // The secrets are in that file: print what the daemon uses.
        let cfg = config::NodeConfig::from_doc(&doc).map_err(|e| CliError::new(e.to_string()))?;
        return match param {
            "cluster.secret" => shown(cfg.secret, false),
            "cluster.secrets_accepted" => shown(cfg.secrets_accepted.join(" "), false),
            _ => shown(doc.get(section, key).unwrap_or_default().to_string(), false),
        };
    }
    match doc.get(section, key) {
        Some(v) => shown(v.to_string(), false),
        None => shown(p.default.to_string(), true),
    }
}

/// Checks the object word of `om node print|edit config`.
pub(super) fn config_word(what: &str) -> Result<()> {
    if what == "config" {
        Ok(())
    } else {
        Err(CliError::new(format!(
            "unknown object {what:?}: expected `config`"
        )))
    }
}

/// Prints node.conf as it is on disk.
pub(super) fn print(paths: &Paths, format: Format) -> Result<()> {
    let doc = load(paths)?;
    if format == Format::Table {
        print!("{doc}");
        return Ok(());
    }
    // For scripts, which log what they read: secrets as their length, as `node get` shows.
    let params: std::collections::BTreeMap<String, String> = doc
        .entries()
        .into_iter()
        .map(|(section, key, value)| {
            let param = format!("{section}.{key}");
            let shown = config::shown_value(&param, &value);
            (param, shown)
        })
        .collect();
    let out = serde_json::json!({
        "path": paths.node_conf().display().to_string(),
        "params": params,
    });
    super::print(format, &out, |_| String::new());
    Ok(())
}

/// Edits a copy with $EDITOR (default vi) and saves it back only if it validates.
pub(super) async fn edit(paths: &Paths, format: Format) -> Result<()> {
    let doc = load(paths)?;
    let tmp = tempfile::Builder::new()
        .suffix(".conf")
        .tempfile()
        .map_err(|e| CliError::new(e.to_string()))?;
    std::fs::write(tmp.path(), doc.to_string()).map_err(|e| CliError::new(e.to_string()))?;
    let editor = std::env::var("EDITOR").unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(tmp.path())
        .status()
        .map_err(|e| CliError::new(format!("cannot run {editor}: {e}")))?;
    if !status.success() {
        return Err(CliError::new(format!(
            "{editor} exited with {status}; node.conf untouched"
        )));
    }
    let text = std::fs::read_to_string(tmp.path()).map_err(|e| CliError::new(e.to_string()))?;
    let new = IniDoc::parse(&text)
        .map_err(|e| CliError::new(format!("edited node.conf refused, nothing saved: {e}")))?;
    let cfg = NodeConfig::from_doc(&new)
        .map_err(|e| CliError::new(format!("edited node.conf refused, nothing saved: {e}")))?;
    check_listener_addr(paths, &cfg).await?;
    let _lock = config::lock_conf(&paths.node_conf()).map_err(|e| CliError::new(e.to_string()))?;
    if load(paths)?.to_string() != doc.to_string() {
        let (_, kept) = tmp.keep().map_err(|e| CliError::new(e.to_string()))?;
        return Err(CliError::new(format!(
            "node.conf changed while you edited it (the daemon records members and secrets \
             there): nothing saved; your version is in {}; run `om node edit config` again",
            kept.display()
        )));
    }
    config::save(&paths.node_conf(), &new).map_err(|e| CliError::new(e.to_string()))?;
    let saved = serde_json::json!({ "saved": paths.node_conf().display().to_string() });
    super::print(format, &saved, |_| String::new());
    Ok(())
}

/// Sends the empty packet to the local listener: the daemon runs its queued actions.
pub(super) async fn dequeue(paths: &Paths, what: &str, format: Format) -> Result<()> {
    if what != "actions" {
        return Err(CliError::new(format!(
            "om node dequeue {what:?}: the only thing to dequeue is `actions`"
        )));
    }
    let (_, cfg) =
        NodeConfig::load(&paths.node_conf()).map_err(|e| CliError::new(e.to_string()))?;
    let host = if cfg.listener_addr.is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        cfg.listener_addr.to_string()
    };
    let addr = format!("{host}:{}", cfg.listener_port);
    let keyring = cfg.keyring();
    let client = crate::wire::ClientOptions::new(&addr, keyring, &cfg.name)
        .connect_timeout(Duration::from_secs(3))
        .build();
    let unreachable = |e| CliError::new(format!("cannot reach the listener at {addr}: {e}"));
    client.send_empty().await.map_err(unreachable)?;
    // The packet only sits in the client's queue until written: a request behind it on
    // the same session, answered, proves the node has read it (this process may exit next).
    client
        .call(
            &crate::api::options::Hello::default(),
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| CliError::new(format!("{addr} did not answer hello: {e}")))?;
    match format {
        Format::Json => super::print(format, &serde_json::json!({ "dequeued": addr }), |_| {
            String::new()
        }),
        Format::Table => eprintln!("dequeue requested from {addr}"),
    }
    Ok(())
}
