//! Service configuration: the INI text an operator commits with `om <svc> create`, parsed and
//! validated into a [`ServiceConfig`].
//!
//! ```ini
//! [DEFAULT]
//! nodes = n1 n2 n3          # preference order; `*` = every cluster node
//! topology = failover       # failover | flex
//! flex_target = 2           # flex only: how many instances run
//! orchestrate = ha          # ha | start | no
//! check_interval = 5s       # how often the scheduler runs the checks
//!
//! [app#1]
//! start = /usr/bin/myapp --daemon
//! stop = pkill -f myapp
//! check = pgrep -f myapp
//! restart = 2               # restarts of a resource found down, before "start failed"
//! restart_delay = 500ms
//! timeout = 60s             # of each start, stop and check command
//!
//! [task#compliance]         # a service-defined action: `om <svc> run compliance fix ...`
//! command = /usr/bin/comply # its arguments follow as "$@"
//! timeout = 5m
//! ```
//!
//! Every error names the section and the key, so `om <svc> create` can say what to fix.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use crate::config::ini::IniDoc;

/// How many instances of a service run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Exactly one instance runs, on the first usable node of `nodes`.
    Failover,
    /// `flex_target` instances run at once.
    Flex,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Topology::Failover => "failover",
            Topology::Flex => "flex",
        })
    }
}

/// What the orchestrator does on its own, without a `global_expect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orchestrate {
    /// Nothing: the service only moves on operator requests.
    No,
    /// Starts the service when it is placed nowhere; never moves it afterwards.
    Start,
    /// Keeps it running: starts it, and moves it off failed and down nodes.
    Ha,
}

impl fmt::Display for Orchestrate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Orchestrate::No => "no",
            Orchestrate::Start => "start",
            Orchestrate::Ha => "ha",
        })
    }
}

/// One `[app#N]` resource: three shell commands and a restart policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// The section name, e.g. `app#1`.
    pub rid: String,
    /// Starts the resource; must return (background long-running processes yourself).
    pub start: String,
    /// Stops the resource.
    pub stop: String,
    /// Exit 0 when the resource is up, anything else when it is down.
    pub check: String,
    /// How many times the monitor restarts the resource when found down.
    pub restart: u32,
    /// Wait before each restart.
    pub restart_delay: Duration,
    /// Limit of each start, stop or check command.
    pub timeout: Duration,
}

/// A parsed, valid service configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Nodes in preference order, as written (without `*`).
    pub nodes: Vec<String>,
    /// `nodes = *`: every cluster member, in name order.
    pub all_nodes: bool,
    /// `topology`.
    pub topology: Topology,
    /// `flex_target` (flex only); `None` means every node of `nodes`.
    pub flex_target: Option<usize>,
    /// `orchestrate`.
    pub orchestrate: Orchestrate,
    /// `check_interval`.
    pub check_interval: Duration,
    /// The resources, in file order (started in this order, stopped in reverse).
    pub resources: Vec<Resource>,
    /// The service-defined actions (`[task#<name>]`), by name.
    pub tasks: BTreeMap<String, Task>,
}

/// A `[task#<name>]` section: an action the service defines, run by `service_action`
/// with `command = ["<name>", args...]` (`om <svc> run <name> args...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The task's name.
    pub name: String,
    /// The command, run with `sh -c`; the action's arguments are passed as `"$@"`.
    pub command: String,
    /// Limit of the command.
    pub timeout: Duration,
}

const TASK_KEYS: &[&str] = &["command", "timeout"];

/// Parses a `[task#<name>]` section.
fn parse_task(
    doc: &IniDoc,
    entries: &[(String, String, String)],
    section: &str,
    name: &str,
) -> Result<Task, ConfigError> {
    check_keys(entries, section, TASK_KEYS)?;
    if name.parse::<super::action::Verb>().is_ok() {
        return Err(ConfigError::Section {
            section: section.to_string(),
            reason: format!(
                "a task cannot be named after an instance action ({})",
                super::action::Verb::list()
            ),
        });
    }
    let command = match doc.get(section, "command").map(str::trim) {
        Some(c) if !c.is_empty() => c.to_string(),
        _ => {
            return Err(key_err(
                section,
                "command",
                "is required (what the task runs)".into(),
            ))
        }
    };
    Ok(Task {
        name: name.to_string(),
        command,
        timeout: duration(section, "timeout", doc.get(section, "timeout"))?
            .unwrap_or(DEFAULT_TIMEOUT),
    })
}

/// Why a service config cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
// Each variant's `#[error]` text is its documentation, naming every field.
#[allow(missing_docs)]
pub enum ConfigError {
    /// Not INI.
    #[error("{0}")]
    Syntax(String),
    /// A key is wrong, missing or has a bad value.
    #[error("section [{section}]: key {key}: {reason}")]
    Key {
        section: String,
        key: String,
        reason: String,
    },
    /// A whole section is wrong.
    #[error("section [{section}]: {reason}")]
    Section { section: String, reason: String },
}

const DEFAULT_KEYS: &[&str] = &[
    "nodes",
    "topology",
    "flex_target",
    "orchestrate",
    "check_interval",
];
const APP_KEYS: &[&str] = &[
    "start",
    "stop",
    "check",
    "restart",
    "restart_delay",
    "timeout",
];

/// Default `check_interval`.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Default `restart_delay`.
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_millis(500);
/// Default `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

impl ServiceConfig {
    /// Parses and validates `text`.
    pub fn parse(text: &str) -> Result<ServiceConfig, ConfigError> {
        let doc = IniDoc::parse(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let entries = doc.entries();
        let mut seen = BTreeSet::new();
        let mut sections: Vec<String> = Vec::new();
        for (section, key, _) in &entries {
            if !seen.insert((section.clone(), key.clone())) {
                return Err(key_err(section, key, "is set twice".into()));
            }
            if !sections.contains(section) {
                sections.push(section.clone());
            }
        }
        // Sections without keys still count (an empty [app#1] is an error below).
        for line in text.lines() {
            let t = line.trim();
            if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                let name = name.trim().to_string();
                if !sections.contains(&name) {
                    sections.push(name);
                }
            }
        }
        let get = |section: &str, key: &str| doc.get(section, key).map(str::trim);

        let mut resources = Vec::new();
        let mut tasks = BTreeMap::new();
        for section in &sections {
            if section == "DEFAULT" {
                check_keys(&entries, section, DEFAULT_KEYS)?;
                continue;
            }
            if let Some(name) = section.strip_prefix("task#") {
                check_rid_name(section, name)?;
                tasks.insert(name.to_string(), parse_task(&doc, &entries, section, name)?);
                continue;
            }
            let Some((kind, index)) = section.split_once('#') else {
                return Err(ConfigError::Section {
                    section: section.clone(),
                    reason: "unknown section: expected [DEFAULT] or a resource such as [app#1]"
                        .into(),
                });
            };
            if kind != "app" {
                return Err(ConfigError::Section {
                    section: section.clone(),
                    reason: format!("unknown resource type {kind:?}; supported: app, task"),
                });
            }
            check_rid_name(section, index)?;
            check_keys(&entries, section, APP_KEYS)?;
            let required = |key: &str| -> Result<String, ConfigError> {
                match get(section, key) {
                    Some(v) if !v.is_empty() => Ok(v.to_string()),
                    _ => Err(key_err(
                        section,
                        key,
                        format!("is required ({})", required_why(key)),
                    )),
                }
            };
            resources.push(Resource {
                rid: section.clone(),
                start: required("start")?,
                stop: required("stop")?,
                check: required("check")?,
                restart: match get(section, "restart") {
                    None => 0,
                    Some(v) => v.parse::<u32>().map_err(|_| {
                        key_err(
                            section,
                            "restart",
                            format!("invalid value {v:?}: expected a non-negative integer"),
                        )
                    })?,
                },
                restart_delay: duration(section, "restart_delay", get(section, "restart_delay"))?
                    .unwrap_or(DEFAULT_RESTART_DELAY),
                timeout: duration(section, "timeout", get(section, "timeout"))?
                    .unwrap_or(DEFAULT_TIMEOUT),
            });
        }

        let nodes_text = get("DEFAULT", "nodes").ok_or_else(|| {
            key_err(
                "DEFAULT",
                "nodes",
                "is required: the nodes the service may run on, in preference order, or *".into(),
            )
        })?;
        let mut nodes = Vec::new();
        let mut all_nodes = false;
        for n in nodes_text.split_whitespace() {
            if n == "*" {
                all_nodes = true;
                continue;
            }
            raft::apply::check_name("node", n)
                .map_err(|e| key_err("DEFAULT", "nodes", e.to_string()))?;
            if nodes.iter().any(|x| x == n) {
                return Err(key_err(
                    "DEFAULT",
                    "nodes",
                    format!("node {n} is listed twice"),
                ));
            }
            nodes.push(n.to_string());
        }
        if nodes.is_empty() && !all_nodes {
            return Err(key_err("DEFAULT", "nodes", "lists no node".into()));
        }
        let topology = match get("DEFAULT", "topology") {
            None | Some("failover") => Topology::Failover,
            Some("flex") => Topology::Flex,
            Some(v) => {
                return Err(key_err(
                    "DEFAULT",
                    "topology",
                    format!("invalid value {v:?}: allowed values are failover, flex"),
                ))
            }
        };
        let orchestrate = match get("DEFAULT", "orchestrate") {
            None | Some("no") => Orchestrate::No,
            Some("start") => Orchestrate::Start,
            Some("ha") => Orchestrate::Ha,
            Some(v) => {
                return Err(key_err(
                    "DEFAULT",
                    "orchestrate",
                    format!("invalid value {v:?}: allowed values are ha, start, no"),
                ))
            }
        };
        let flex_target = match get("DEFAULT", "flex_target") {
            None => None,
            Some(_) if topology != Topology::Flex => {
                return Err(key_err(
                    "DEFAULT",
                    "flex_target",
                    "is only valid with topology = flex".into(),
                ))
            }
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    return Err(key_err(
                        "DEFAULT",
                        "flex_target",
                        format!("invalid value {v:?}: expected an integer >= 1"),
                    ))
                }
            },
        };
        let check_interval = duration(
            "DEFAULT",
            "check_interval",
            get("DEFAULT", "check_interval"),
        )?
        .unwrap_or(DEFAULT_CHECK_INTERVAL);
        if check_interval < Duration::from_millis(100) {
            return Err(key_err(
                "DEFAULT",
                "check_interval",
                "must be at least 100ms".into(),
            ));
        }
        Ok(ServiceConfig {
            nodes,
            all_nodes,
            topology,
            flex_target,
            orchestrate,
            check_interval,
            resources,
            tasks,
        })
    }

    /// The nodes the service may run on, in preference order, given the cluster members.
    /// Listed nodes that are not members are left out; `*` adds the other members by name.
    pub fn candidates<'a>(&self, members: impl Iterator<Item = &'a String>) -> Vec<String> {
        let members: Vec<&String> = members.collect();
        let mut out: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| members.contains(n))
            .cloned()
            .collect();
        if self.all_nodes {
            for m in members {
                if !out.contains(m) {
                    out.push(m.clone());
                }
            }
        }
        out
    }

    /// Whether `node` is one of the service's nodes (`*` matches every member).
    pub fn lists(&self, node: &str) -> bool {
        self.all_nodes || self.nodes.iter().any(|n| n == node)
    }

    /// How many instances should run, given how many candidate nodes there are.
    pub fn target(&self, candidates: usize) -> usize {
        match self.topology {
            Topology::Failover => 1,
            Topology::Flex => self.flex_target.unwrap_or(candidates.max(1)),
        }
    }

    /// The resource called `rid`.
    pub fn resource(&self, rid: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.rid == rid)
    }
}

fn required_why(key: &str) -> &'static str {
    match key {
        "start" => "the command that starts the resource",
        "stop" => "the command that stops the resource",
        _ => "the command whose exit status tells whether the resource is up (0) or down",
    }
}

/// A resource or task name: `[A-Za-z0-9_]`, not empty.
fn check_rid_name(section: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(ConfigError::Section {
            section: section.to_string(),
            reason: "a resource id is <type>#<name> with a name of [A-Za-z0-9_]".into(),
        });
    }
    Ok(())
}

fn key_err(section: &str, key: &str, reason: String) -> ConfigError {
    ConfigError::Key {
        section: section.to_string(),
        key: key.to_string(),
        reason,
    }
}

fn check_keys(
    entries: &[(String, String, String)],
    section: &str,
    known: &[&str],
) -> Result<(), ConfigError> {
    for (s, k, _) in entries {
        if s == section && !known.contains(&k.as_str()) {
            return Err(key_err(
                section,
                k,
                format!("unknown key; known keys: {}", known.join(", ")),
            ));
        }
    }
    Ok(())
}

fn duration(section: &str, key: &str, v: Option<&str>) -> Result<Option<Duration>, ConfigError> {
    match v {
        None => Ok(None),
        Some(v) => raft::apply::parse_duration_ms(v)
            .map(|ms| Some(Duration::from_millis(ms)))
            .ok_or_else(|| {
                key_err(
                    section,
                    key,
                    format!("invalid value {v:?}: expected a duration such as 500ms, 5s or 1m"),
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[DEFAULT]\nnodes = n1 n2\ntopology = failover\norchestrate = ha\n\n\
        [app#1]\nstart = a\nstop = b\ncheck = c\nrestart = 2\nrestart_delay = 1s\n";

    #[test]
    fn parses_a_good_config() {
        let c = ServiceConfig::parse(GOOD).unwrap();
        assert_eq!(c.nodes, ["n1", "n2"]);
        assert_eq!(c.topology, Topology::Failover);
        assert_eq!(c.orchestrate, Orchestrate::Ha);
        assert_eq!(c.resources.len(), 1);
        assert_eq!(c.resources[0].restart, 2);
        assert_eq!(c.resources[0].restart_delay, Duration::from_secs(1));
        assert_eq!(c.resources[0].timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.target(2), 1);
    }

    #[test]
    fn errors_name_section_and_key() {
        let e = |t: &str| ServiceConfig::parse(t).unwrap_err().to_string();
        assert_eq!(
            e(&GOOD.replace("restart = 2", "restart = two")),
            "section [app#1]: key restart: invalid value \"two\": expected a non-negative integer"
        );
        assert_eq!(
            e(&GOOD.replace("check = c\n", "")),
            "section [app#1]: key check: is required (the command whose exit status tells \
             whether the resource is up (0) or down)"
        );
        assert!(e(&GOOD.replace("topology = failover", "topology = ring"))
            .starts_with("section [DEFAULT]: key topology: invalid value \"ring\""));
        assert!(e(&GOOD.replace("[app#1]", "[fs#1]"))
            .starts_with("section [fs#1]: unknown resource type"));
        assert!(e(&GOOD.replace("stop = b", "stop = b\nstpo = x"))
            .starts_with("section [app#1]: key stpo: unknown key"));
        assert!(e("[DEFAULT]\ntopology = flex\n")
            .starts_with("section [DEFAULT]: key nodes: is required"));
        assert!(e(&GOOD.replace("nodes = n1 n2", "nodes = n1 n1")).contains("listed twice"));
        assert!(
            e(&GOOD.replace("nodes = n1 n2", "nodes = n1 n2\nflex_target = 2"))
                .contains("only valid with topology = flex")
        );
        assert_eq!(
            e("x"),
            "line 1: expected '[section]', 'key = value' or a comment"
        );
        assert!(e(&GOOD.replace("restart = 2", "restart = 2\nrestart = 3"))
            .contains("key restart: is set twice"));
    }

    #[test]
    fn tasks_are_named_actions_with_a_command() {
        let text = format!("{GOOD}[task#compliance]\ncommand = comply\ntimeout = 5m\n");
        let cfg = ServiceConfig::parse(&text).unwrap();
        let t = &cfg.tasks["compliance"];
        assert_eq!(
            (t.command.as_str(), t.timeout),
            ("comply", Duration::from_secs(300))
        );
        assert_eq!(cfg.resources.len(), 1, "a task is not a resource");
        let e = |t: &str| {
            ServiceConfig::parse(&format!("{GOOD}{t}"))
                .unwrap_err()
                .to_string()
        };
        assert!(e("[task#start]\ncommand = x\n").contains("named after an instance action"));
        assert!(e("[task#c]\ntimeout = 1s\n").contains("key command: is required"));
        assert!(e("[task#c]\ncommand = x\nuser = root\n").contains("known keys: command, timeout"));
        assert!(e("[task#a/b]\ncommand = x\n").contains("[A-Za-z0-9_]"));
    }

    #[test]
    fn candidates_follow_preference_and_membership() {
        let c = ServiceConfig::parse("[DEFAULT]\nnodes = n3 n1 *\n").unwrap();
        let members: Vec<String> = ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
        assert_eq!(c.candidates(members.iter()), ["n3", "n1", "n2"]);
        let c = ServiceConfig::parse("[DEFAULT]\nnodes = n9 n2\n").unwrap();
        assert_eq!(c.candidates(members.iter()), ["n2"]);
        assert!(c.resources.is_empty());
    }
}
