//! The lines a control-socket client may send, parsed once into [`Line`]: an agent API
//! request (`{"action": ..., "options": ...}`, as before) or one of Receptor's control
//! service commands, as a space-delimited string (`work submit n2 cat`) or as JSON
//! (`{"command": "work", "subcommand": "submit", "node": "n2", "worktype": "cat"}`).
//!
//! The two JSON forms are told apart by their keys (`action` or `command`); anything not
//! starting with `{` is the text form. Parameters come in the seed's order
//! (receptor-interacting-with-nodes.rst); the json-only ones (`ttl`, `params`, `tlsclient`)
//! exist only in the JSON form. Every error names the parameter and what it allows.

use serde_json::Map;
use serde_json::Value;

use crate::wire::Request;
use crate::work::core::check_unit_id;

/// The keyword Receptor accepts wherever a node is expected: the node that answers.
pub const LOCALHOST: &str = "localhost";

/// A node named in a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRef {
    /// `localhost`: the node whose control socket this is.
    Localhost,
    /// A member, by name.
    Named(String),
}

impl NodeRef {
    /// The node's name, `me` for [`NodeRef::Localhost`].
    pub fn resolve(&self, me: &str) -> String {
        match self {
            NodeRef::Localhost => me.to_string(),
            NodeRef::Named(n) => n.clone(),
        }
    }
}

/// A Receptor control service command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `status` (json-only: `requested_fields`, `exclude_fields`, lists of top-level keys).
    Status {
        /// Only these keys (all when `None`).
        fields: Option<Vec<String>>,
        /// Without these keys.
        exclude: Vec<String>,
    },
    /// `reload`.
    Reload,
    /// `ping <target>`.
    Ping {
        /// The node to ping.
        target: NodeRef,
    },
    /// `traceroute <target>`.
    Traceroute {
        /// The node to trace the path to.
        target: NodeRef,
    },
    /// `connect <node> <service>`: the rest of the connection talks to that node's control
    /// service.
    Connect {
        /// The node whose control service the connection reaches.
        node: NodeRef,
    },
    /// `work list [unitid]`.
    WorkList {
        /// Only this unit.
        unitid: Option<String>,
    },
    /// `work submit <node> <worktype>` (json-only: `ttl`, `params`); the payload follows.
    WorkSubmit {
        /// The node that runs the unit.
        node: NodeRef,
        /// A `[worktype#<name>]` of that node's node.conf.
        worktype: String,
        /// Cancel the unit if it has not started within this time.
        ttl_ms: Option<u64>,
        /// Extra arguments for the command, where the work type allows them.
        params: Vec<String>,
    },
    /// `work cancel <unitid>`.
    WorkCancel {
        /// The unit.
        unitid: String,
    },
    /// `work release <unitid>`.
    WorkRelease {
        /// The unit.
        unitid: String,
    },
    /// `work force-release <unitid>`.
    WorkForceRelease {
        /// The unit.
        unitid: String,
    },
    /// `work results <unitid> <startpos>`.
    WorkResults {
        /// The unit.
        unitid: String,
        /// The byte offset of its output to start from.
        startpos: u64,
    },
}

/// One line from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// An agent API request, answered with `{status, data, error}`.
    Api(Request),
    /// A Receptor command, answered with one JSON line or `ERROR: ...`.
    Command(Command),
}

/// A line that cannot be served, and in which form to say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// A malformed agent API request (answered as one).
    Api(String),
    /// A malformed command (answered `ERROR: ...`).
    Command(String),
}

/// How one command is spelled: its words, parameters in order, and json-only ones.
struct Spec {
    command: &'static str,
    sub: Option<&'static str>,
    required: &'static [&'static str],
    optional: &'static [&'static str],
    json_only: &'static [&'static str],
}

const SPECS: &[Spec] = &[
    spec(
        "status",
        None,
        &[],
        &[],
        &["requested_fields", "exclude_fields"],
    ),
    spec("reload", None, &[], &[], &[]),
    spec("ping", None, &["target"], &[], &[]),
    spec("traceroute", None, &["target"], &[], &[]),
    spec("connect", None, &["node", "service"], &["tlsclient"], &[]),
    spec("work", Some("list"), &[], &["unitid"], &[]),
    spec("work", Some("status"), &["unitid"], &[], &[]),
    spec(
        "work",
        Some("submit"),
        &["node", "worktype"],
        &[],
        &["ttl", "params", "tlsclient", "signwork"],
    ),
    spec("work", Some("cancel"), &["unitid"], &[], &[]),
    spec("work", Some("release"), &["unitid"], &[], &[]),
    spec("work", Some("force-release"), &["unitid"], &[], &[]),
    spec("work", Some("results"), &["unitid", "startpos"], &[], &[]),
];

const fn spec(
    command: &'static str,
    sub: Option<&'static str>,
    required: &'static [&'static str],
    optional: &'static [&'static str],
    json_only: &'static [&'static str],
) -> Spec {
    Spec {
        command,
        sub,
        required,
        optional,
        json_only,
    }
}

impl Spec {
    fn name(&self) -> String {
        match self.sub {
            Some(s) => format!("{} {s}", self.command),
            None => self.command.to_string(),
        }
    }

    fn usage(&self) -> String {
        let mut u = self.name();
        for r in self.required {
            u.push_str(&format!(" <{r}>"));
        }
        for o in self.optional {
            u.push_str(&format!(" [{o}]"));
        }
        u
    }
}

fn find_spec(command: &str, sub: Option<&str>) -> Result<&'static Spec, String> {
    let of_command: Vec<&Spec> = SPECS.iter().filter(|s| s.command == command).collect();
    if of_command.is_empty() {
        return Err(format!(
            "unknown command {command:?}; commands: status, reload, ping, traceroute, connect, work"
        ));
    }
    if of_command[0].sub.is_none() {
        return Ok(of_command[0]);
    }
    let subs: Vec<&str> = of_command.iter().filter_map(|s| s.sub).collect();
    match sub {
        None => Err(format!(
            "{command}: missing subcommand; subcommands: {}",
            subs.join(", ")
        )),
        Some(sub) => of_command
            .iter()
            .find(|s| s.sub == Some(sub))
            .copied()
            .ok_or_else(|| {
                format!(
                    "{command}: unknown subcommand {sub:?}; subcommands: {}",
                    subs.join(", ")
                )
            }),
    }
}

/// Parses one line (without its newline).
pub fn parse(line: &str) -> Result<Line, LineError> {
    let t = line.trim();
    if t.starts_with('{') {
        let map: Map<String, Value> = serde_json::from_str(t)
            .map_err(|e| LineError::Api(format!("bad request line: {e}")))?;
        if map.contains_key("action") {
            return serde_json::from_value(Value::Object(map))
                .map(Line::Api)
                .map_err(|e| LineError::Api(format!("bad request line: {e}")));
        }
        if map.contains_key("command") {
            return from_json(map)
                .map(Line::Command)
                .map_err(LineError::Command);
        }
        return Err(LineError::Command(
            "a JSON line names a \"command\" (Receptor form) or an \"action\" (agent API)".into(),
        ));
    }
    from_text(t).map(Line::Command).map_err(LineError::Command)
}

fn from_text(t: &str) -> Result<Command, String> {
    let mut words = t.split_whitespace();
    let Some(command) = words.next() else {
        return Err(
            "empty command; commands: status, reload, ping, traceroute, connect, work".into(),
        );
    };
    let first_is_sub = SPECS
        .iter()
        .any(|s| s.command == command && s.sub.is_some());
    let sub = if first_is_sub { words.next() } else { None };
    let spec = find_spec(command, sub)?;
    let mut params = Map::new();
    let names = spec.required.iter().chain(spec.optional);
    for (name, word) in names.zip(words.by_ref()) {
        params.insert(name.to_string(), Value::String(word.to_string()));
    }
    if words.next().is_some() {
        return Err(format!(
            "{}: too many parameters; usage: {}",
            spec.name(),
            spec.usage()
        ));
    }
    build(spec, &params)
}

fn from_json(mut map: Map<String, Value>) -> Result<Command, String> {
    let word = |v: Option<Value>, key: &str| match v {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("{key}: expected a string, got {other}")),
    };
    let command = word(map.remove("command"), "command")?.unwrap_or_default();
    let sub = word(map.remove("subcommand"), "subcommand")?;
    let spec = find_spec(&command, sub.as_deref())?;
    let allowed: Vec<&str> = spec
        .required
        .iter()
        .chain(spec.optional)
        .chain(spec.json_only)
        .copied()
        .collect();
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "{}: unknown parameter {k:?}; parameters: {}",
            spec.name(),
            if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(", ")
            }
        ));
    }
    build(spec, &map)
}

/// A parameter as text (JSON numbers are accepted where a number is meant).
fn text(params: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(format!("{key}: expected a string, got {other}")),
    }
}

fn build(spec: &Spec, params: &Map<String, Value>) -> Result<Command, String> {
    for r in spec.required {
        if text(params, r)?.is_none() {
            return Err(format!(
                "{}: missing parameter {r}; usage: {}",
                spec.name(),
                spec.usage()
            ));
        }
    }
    let get = |k: &str| text(params, k).map(Option::unwrap_or_default);
    let unit = |k: &str| -> Result<String, String> {
        let id = get(k)?;
        check_unit_id(&id).map_err(|e| e.0)?;
        Ok(id)
    };
    Ok(match (spec.command, spec.sub) {
        ("status", _) => Command::Status {
            fields: fields(params, "requested_fields")?,
            exclude: fields(params, "exclude_fields")?.unwrap_or_default(),
        },
        ("reload", _) => Command::Reload,
        ("ping", _) => Command::Ping {
            target: node(&get("target")?, "target")?,
        },
        ("traceroute", _) => Command::Traceroute {
            target: node(&get("target")?, "target")?,
        },
        ("connect", _) => {
            no_tls(params)?;
            let service = get("service")?;
            if service != "control" {
                return Err(format!(
                    "service {service:?}: a node offers one service, control"
                ));
            }
            Command::Connect {
                node: node(&get("node")?, "node")?,
            }
        }
        (_, Some("status")) => Command::WorkList {
            unitid: Some(unit("unitid")?),
        },
        (_, Some("list")) => Command::WorkList {
            unitid: match text(params, "unitid")? {
                Some(_) => Some(unit("unitid")?),
                None => None,
            },
        },
        (_, Some("submit")) => submit(params)?,
        (_, Some("cancel")) => Command::WorkCancel {
            unitid: unit("unitid")?,
        },
        (_, Some("release")) => Command::WorkRelease {
            unitid: unit("unitid")?,
        },
        (_, Some("force-release")) => Command::WorkForceRelease {
            unitid: unit("unitid")?,
        },
        (_, Some("results")) => {
            let pos = get("startpos")?;
            let startpos = pos.parse::<u64>().map_err(|_| {
                format!("startpos {pos:?}: expected a byte offset (an integer, 0 or more)")
            })?;
            Command::WorkResults {
                unitid: unit("unitid")?,
                startpos,
            }
        }
        (c, sub) => return Err(format!("{c} {}: not served", sub.unwrap_or_default())),
    })
}

/// A json-only list of field names.
fn fields(params: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>, String> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) if a.len() <= 64 => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| format!("{key}: expected a list of field names")),
        Some(_) => Err(format!("{key}: expected a list of at most 64 field names")),
    }
}

/// Refuses a TLS client config: receptorctl sends `None` when it has none.
fn no_tls(params: &Map<String, Value>) -> Result<(), String> {
    if text(params, "tlsclient")?.is_some_and(|t| !t.is_empty() && t != "None") {
        return Err(
            "tlsclient: not supported: om carries work over the cluster's encrypted \
                    connections, authenticated by the cluster secret"
                .into(),
        );
    }
    Ok(())
}

fn submit(params: &Map<String, Value>) -> Result<Command, String> {
    if text(params, "signwork")?.is_some_and(|t| t == "true") {
        return Err(
            "signwork: not supported: a unit is as trusted as the cluster secret that \
                    authenticated its submitter"
                .into(),
        );
    }
    no_tls(params)?;
    let worktype = text(params, "worktype")?.unwrap_or_default();
    raft::apply::check_name("work type", &worktype)
        .map_err(|e| format!("worktype {worktype:?}: {e}"))?;
    let ttl_ms = match text(params, "ttl")? {
        Some(t) => Some(crate::work::parse_ttl(&t).map_err(|e| e.to_string())?),
        None => None,
    };
    let params_list = match params.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or("params: expected a string or a list of strings")?,
        Some(other) => {
            return Err(format!(
                "params: expected a string or a list of strings, got {other}"
            ))
        }
    };
    Ok(Command::WorkSubmit {
        node: node(&text(params, "node")?.unwrap_or_default(), "node")?,
        worktype,
        ttl_ms,
        params: params_list,
    })
}

fn node(name: &str, key: &str) -> Result<NodeRef, String> {
    if name == LOCALHOST {
        return Ok(NodeRef::Localhost);
    }
    raft::apply::check_name("node", name)
        .map(|()| NodeRef::Named(name.to_string()))
        .map_err(|e| format!("{key} {name:?}: {e} (or {LOCALHOST})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(line: &str) -> Command {
        match parse(line).unwrap() {
            Line::Command(c) => c,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn err(line: &str) -> String {
        match parse(line).unwrap_err() {
            LineError::Command(e) | LineError::Api(e) => e,
        }
    }

    #[test]
    fn text_and_json_forms_give_the_same_commands() {
        assert_eq!(
            cmd("status"),
            Command::Status {
                fields: None,
                exclude: vec![]
            }
        );
        assert_eq!(
            cmd(r#"{"command":"status","requested_fields":["Version"]}"#),
            Command::Status {
                fields: Some(vec!["Version".into()]),
                exclude: vec![]
            }
        );
        assert_eq!(
            cmd("connect n2 control None"),
            Command::Connect {
                node: NodeRef::Named("n2".into())
            }
        );
        assert_eq!(
            cmd("work status u1"),
            Command::WorkList {
                unitid: Some("u1".into())
            }
        );
        assert_eq!(cmd("  reload \n"), Command::Reload);
        assert_eq!(
            cmd("ping localhost"),
            Command::Ping {
                target: NodeRef::Localhost
            }
        );
        let submit = Command::WorkSubmit {
            node: NodeRef::Named("n2".into()),
            worktype: "cat".into(),
            ttl_ms: None,
            params: vec![],
        };
        assert_eq!(cmd("work submit n2 cat"), submit);
        assert_eq!(
            cmd(r#"{"command":"work","subcommand":"submit","node":"n2","worktype":"cat"}"#),
            submit
        );
        assert_eq!(
            cmd(
                r#"{"command":"work","subcommand":"submit","node":"localhost","worktype":"e","ttl":"2s","params":"-n x"}"#
            ),
            Command::WorkSubmit {
                node: NodeRef::Localhost,
                worktype: "e".into(),
                ttl_ms: Some(2000),
                params: vec!["-n".into(), "x".into()],
            }
        );
        assert_eq!(cmd("work list"), Command::WorkList { unitid: None });
        assert_eq!(
            cmd("connect n2 control"),
            Command::Connect {
                node: NodeRef::Named("n2".into())
            }
        );
        assert!(err("connect n2 web").contains("one service, control"));
        assert_eq!(
            cmd("work list abc"),
            Command::WorkList {
                unitid: Some("abc".into())
            }
        );
        assert_eq!(
            cmd(r#"{"command":"work","subcommand":"results","unitid":"u1","startpos":7}"#),
            Command::WorkResults {
                unitid: "u1".into(),
                startpos: 7
            }
        );
        assert_eq!(
            cmd("work force-release u1"),
            Command::WorkForceRelease {
                unitid: "u1".into()
            }
        );
        match parse(r#"{"action":"daemon_status","options":{}}"#).unwrap() {
            Line::Api(r) => assert_eq!(r.action, "daemon_status"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_parameter_and_what_is_allowed() {
        assert!(err("fly").contains("commands: status"), "{}", err("fly"));
        assert!(err("work").contains("subcommands: list, status, submit"));
        assert!(err("work dance").contains("unknown subcommand"));
        assert!(err("ping").contains("missing parameter target"));
        assert!(err("work results u1").contains("usage: work results <unitid> <startpos>"));
        assert!(err("work results u1 -3").contains("startpos \"-3\""));
        assert!(err("work cancel ../../etc").starts_with("unitid"));
        assert!(err("status now").contains("too many parameters"));
        assert!(err("ping ../x").contains("target"));
        // json-only parameters do not exist in the text form.
        assert!(err("work submit n2 cat 10s").contains("too many"));
        let e = err(r#"{"command":"ping","target":"n2","count":3}"#);
        assert!(
            e.contains("unknown parameter \"count\"") && e.contains("target"),
            "{e}"
        );
        assert!(err(
            r#"{"command":"work","subcommand":"submit","node":"n2","worktype":"c","ttl":"soon"}"#
        )
        .contains("ttl"));
        assert!(err(
            r#"{"command":"work","subcommand":"submit","node":"n2","worktype":"c","tlsclient":"x"}"#
        )
        .contains("tlsclient"));
        assert!(err(r#"{"hello":1}"#).contains("\"command\""));
        assert!(matches!(parse("{nope"), Err(LineError::Api(_))));
        assert!(err("").contains("empty command"));
    }
}
