//! node.conf: where it lives, what keys it may hold, and their typed, validated values.

pub mod ini;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

pub use ini::IniDoc;
pub use ini::SyntaxError;

/// Default listener port.
pub const DEFAULT_PORT: u16 = 1214;
/// Default largest accepted frame, in bytes.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// Every path of one node, all under a single root (`--root` / `OSVC_ROOT`, default `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The root everything else is under.
    pub root: PathBuf,
}

impl Paths {
    /// Paths under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Paths {
        Paths { root: root.into() }
    }

    /// `<root>/etc/node.conf`.
    pub fn node_conf(&self) -> PathBuf {
        self.root.join("etc/node.conf")
    }

    /// `<root>/var/raft`: the Raft store (the write-ahead log: segments and the snapshot).
    pub fn raft_dir(&self) -> PathBuf {
        self.root.join("var/raft")
    }

    /// `<root>/var/raft.id`: the Raft id of the store in `var/raft` (a new one for every
    /// new store: a node that left and comes back under its name is a new Raft member).
    pub fn raft_id_file(&self) -> PathBuf {
        self.root.join("var/raft.id")
    }

    /// `<root>/var/run`: control socket and pid file.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("var/run")
    }

    /// `<root>/var/run/om.sock`: the local control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.run_dir().join("om.sock")
    }

    /// `<root>/var/run/om.pid`.
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir().join("om.pid")
    }

    /// `<root>/var/log/om.log`: the daemon's log when started in the background.
    pub fn log_file(&self) -> PathBuf {
        self.root.join("var/log/om.log")
    }

    /// `<root>/var`: daemon data (jobs, service logs).
    pub fn var_dir(&self) -> PathBuf {
        self.root.join("var")
    }
}

/// A node.conf that cannot be used, naming the line or key and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
// Each variant's `#[error]` text is its documentation, naming every field.
#[allow(missing_docs)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Syntax { path: String, source: SyntaxError },
    #[error("unknown parameter {key:?}; known parameters: {known}")]
    UnknownKey { key: String, known: String },
    #[error("invalid value {value:?} for {key}: {reason}")]
    BadValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("{path} holds the cluster secret but its mode is {mode:04o} (group or others can access it); run: chmod 600 {path}")]
    InsecureMode { path: String, mode: u32 },
}

/// One known parameter: its `section.key`, its default (as text) and what it means.
pub struct Param {
    /// `section.key`.
    pub key: &'static str,
    /// Default, as written in node.conf; empty when there is none.
    pub default: &'static str,
    /// One line of help.
    pub help: &'static str,
}

/// Every parameter node.conf may hold.
pub const PARAMS: &[Param] = &[
    Param {
        key: "node.name",
        default: "",
        help: "node name (default: the hostname)",
    },
    Param {
        key: "node.down_timeout",
        default: "5s",
        help: "a peer unreachable this long is marked down",
    },
    Param {
        key: "node.join_timeout",
        default: "60s",
        help:
            "on the leader: how long a joining node has to catch up before its join is rolled back",
    },
    Param {
        key: "node.split_action",
        default: "stop",
        help: "stop|none: what a node cut off from the majority does to its failover instances",
    },
    Param {
        key: "node.role",
        default: "normal",
        help: "normal|witness: a witness votes and keeps the log but runs no service instance",
    },
    Param {
        key: "node.log_level",
        default: "info",
        help: "error|warn|info|debug|trace",
    },
    Param {
        key: "listener.addr",
        default: "0.0.0.0",
        help: "listener IP address",
    },
    Param {
        key: "listener.port",
        default: "1214",
        help: "listener TCP port",
    },
    Param {
        key: "listener.max_frame",
        default: "16777216",
        help: "largest frame accepted, in bytes (1024..=1073741824)",
    },
    Param {
        key: "listener.max_conns",
        default: "1024",
        help: "connections open at once (1..=1048576; lowered to the fd limit minus a reserve)",
    },
    Param {
        key: "listener.max_conns_per_addr",
        default: "64",
        help: "connections open at once from one source IP (1..=1048576)",
    },
    Param {
        key: "listener.handshake_rate",
        default: "50",
        help: "handshakes accepted per second from one source IP, with a burst as large (0..=100000; 0 = no limit)",
    },
    Param {
        key: "listener.handshake_timeout",
        default: "10s",
        help: "a connection that has not completed its handshake after this long is closed",
    },
    Param {
        key: "listener.frame_timeout",
        default: "10s",
        help: "a frame not complete this long after its first byte closes the connection",
    },
    Param {
        key: "listener.blacklist_ttl",
        default: "10m",
        help: "a blacklisted (sender, address) pair is served again this long after its last invalid frame",
    },
    Param {
        key: "listener.idle_timeout",
        default: "300s",
        help: "a connection without any frame for this long is closed",
    },
    Param {
        key: "metrics.addr",
        default: "",
        help: "host:port serving /metrics (Prometheus), /livez and /readyz over HTTP; empty: off (read at start)",
    },
    Param {
        key: "cluster.name",
        default: "",
        help: "cluster name (set by bootstrap or join)",
    },
    Param {
        key: "cluster.secret",
        default: "",
        help: "shared secret the frames are encrypted with",
    },
    Param {
        key: "cluster.secret_file",
        default: "",
        help: "absolute path of a file (mode 0600) whose first line is the cluster secret, in place of cluster.secret; om writes the secret there (bootstrap, join, rotation)",
    },
    Param {
        key: "cluster.secrets_accepted",
        default: "",
        help: "space-separated secrets accepted besides cluster.secret (written by `om cluster secret`: rotation)",
    },
    Param {
        key: "cluster.nodes",
        default: "",
        help: "space-separated member names",
    },
];

/// `value` of parameter `key` as errors and outputs show it: a secret as its length only,
/// since what is printed or logged may be read by others.
pub fn shown_value(key: &str, value: &str) -> String {
    if matches!(key, "cluster.secret" | "cluster.secrets_accepted") {
        format!("<{} characters>", value.len())
    } else {
        value.to_string()
    }
}

/// The typed view of node.conf that the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// `node.name`.
    pub name: String,
    /// `node.down_timeout`.
    pub down_timeout: Duration,
    /// `node.join_timeout`.
    pub join_timeout: Duration,
    /// `node.split_action` is `stop`.
    pub split_stop: bool,
    /// `node.role`.
    pub role: raft::state::NodeRole,
    /// `node.log_level`.
    pub log_level: crate::logging::LogLevel,
    /// `listener.addr`.
    pub listener_addr: IpAddr,
    /// `listener.port`.
    pub listener_port: u16,
    /// `listener.max_frame`.
    pub max_frame: usize,
    /// `listener.max_conns`.
    pub max_conns: usize,
    /// `listener.max_conns_per_addr`.
    pub max_conns_per_addr: usize,
    /// `listener.handshake_rate`.
    pub handshake_rate: u32,
    /// `listener.handshake_timeout`.
    pub handshake_timeout: Duration,
    /// `listener.frame_timeout`.
    pub frame_timeout: Duration,
    /// `listener.idle_timeout`.
    pub idle_timeout: Duration,
    /// `listener.blacklist_ttl`.
    pub blacklist_ttl: Duration,
    /// `metrics.addr`: where the HTTP metrics and health endpoints listen (`None`: off).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `cluster.name` (empty before bootstrap or join).
    pub cluster_name: String,
    /// The cluster secret: `cluster.secret`, or the first line of `cluster.secret_file`
    /// (empty before bootstrap or join).
    pub secret: String,
    /// `cluster.secret_file`: where the secret is kept when node.conf does not hold it.
    pub secret_file: Option<PathBuf>,
    /// `cluster.secrets_accepted`: secrets accepted besides `secret` (rotation).
    pub secrets_accepted: Vec<String>,
    /// `cluster.nodes`.
    pub nodes: Vec<String>,
    /// The `[worktype#<name>]` sections: what `work submit` may run on this node.
    pub worktypes: BTreeMap<String, WorkType>,
}

/// A work type: a `[worktype#<name>]` section of node.conf (docs/CONTROL.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkType {
    /// The command, run with `sh -c`; the payload is its stdin.
    pub command: String,
    /// Whether a submitter may append its own `params` to the command's arguments.
    pub params: bool,
}

/// The prefix of a work type section.
pub const WORKTYPE_PREFIX: &str = "worktype#";
/// The keys a work type section may hold.
pub const WORKTYPE_KEYS: &[&str] = &["command", "params"];
/// Most work types one node.conf may declare.
pub const MAX_WORKTYPES: usize = 64;
/// Longest work type command, in bytes.
pub const MAX_WORKTYPE_COMMAND: usize = 4096;

/// The work types declared in `doc` (already validated key by key).
fn worktypes(doc: &IniDoc) -> Result<BTreeMap<String, WorkType>, ConfigError> {
    let mut out = BTreeMap::new();
    for (section, _, _) in doc.entries() {
        let Some(name) = section.strip_prefix(WORKTYPE_PREFIX) else {
            continue;
        };
        if out.contains_key(name) {
            continue;
        }
        let command = doc.get(&section, "command").unwrap_or_default();
        if command.is_empty() {
            return Err(ConfigError::BadValue {
                key: format!("{section}.command"),
                value: String::new(),
                reason: "a work type needs a command".into(),
            });
        }
        let params = doc.get(&section, "params") == Some("true");
        out.insert(
            name.to_string(),
            WorkType {
                command: command.to_string(),
                params,
            },
        );
    }
    if out.len() > MAX_WORKTYPES {
        return Err(ConfigError::BadValue {
            key: WORKTYPE_PREFIX.to_string(),
            value: out.len().to_string(),
            reason: format!("at most {MAX_WORKTYPES} work types per node"),
        });
    }
    Ok(out)
}

/// Checks a key of a `[worktype#<name>]` section.
fn validate_worktype(section: &str, key: &str, value: &str) -> Result<(), ConfigError> {
    let full = format!("{section}.{key}");
    let bad = |reason: String| {
        Err(ConfigError::BadValue {
            key: full.clone(),
            value: value.to_string(),
            reason,
        })
    };
    let name = section.strip_prefix(WORKTYPE_PREFIX).unwrap_or_default();
    if raft::apply::check_name("work type", name).is_err() {
        return bad(format!(
            "work type name {name:?}: 1 to 64 of [A-Za-z0-9_.-], starting with a letter or digit"
        ));
    }
    if !ini::value_survives(value) {
        return bad("a value cannot contain ' #' or ' ;' (they start a comment) nor begin or end with spaces".into());
    }
    match key {
        "command" if value.is_empty() || value.len() > MAX_WORKTYPE_COMMAND => bad(format!(
            "expected a command of 1..={MAX_WORKTYPE_COMMAND} bytes"
        )),
        "params" if !matches!(value, "true" | "false") => {
            bad("allowed values are true, false".into())
        }
        "command" | "params" => Ok(()),
        _ => Err(ConfigError::UnknownKey {
            key: full.clone(),
            known: WORKTYPE_KEYS
                .iter()
                .map(|k| format!("{section}.{k}"))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

impl NodeConfig {
    /// Reads and validates `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<(IniDoc, NodeConfig), ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        };
        let doc = IniDoc::parse(&text).map_err(|source| ConfigError::Syntax {
            path: path.display().to_string(),
            source,
        })?;
        let cfg = NodeConfig::from_doc(&doc)?;
        Ok((doc, cfg))
    }

    /// Validates every entry of `doc` and builds the typed config.
    pub fn from_doc(doc: &IniDoc) -> Result<NodeConfig, ConfigError> {
        for (section, key, value) in doc.entries() {
            validate(&format!("{section}.{key}"), &value)?;
        }
        let get = |key: &str| -> String {
            let (s, k) = key.split_once('.').expect("known keys have a section");
            doc.get(s, k)
                .map(str::to_string)
                .unwrap_or_else(|| default_of(key).to_string())
        };
        let (secret, secrets_accepted) = secrets(doc)?;
        let name = match get("node.name") {
            n if n.is_empty() => hostname(),
            n => n,
        };
        Ok(NodeConfig {
            name,
            down_timeout: duration(&get("node.down_timeout")).expect("validated"),
            join_timeout: duration(&get("node.join_timeout")).expect("validated"),
            split_stop: get("node.split_action") == "stop",
            role: get("node.role").parse().expect("validated"),
            log_level: get("node.log_level").parse().expect("validated"),
            listener_addr: get("listener.addr").parse().expect("validated"),
            listener_port: get("listener.port").parse().expect("validated"),
            max_frame: get("listener.max_frame").parse().expect("validated"),
            max_conns: get("listener.max_conns").parse().expect("validated"),
            max_conns_per_addr: get("listener.max_conns_per_addr")
                .parse()
                .expect("validated"),
            handshake_rate: get("listener.handshake_rate").parse().expect("validated"),
            handshake_timeout: duration(&get("listener.handshake_timeout")).expect("validated"),
            frame_timeout: duration(&get("listener.frame_timeout")).expect("validated"),
            idle_timeout: duration(&get("listener.idle_timeout")).expect("validated"),
            blacklist_ttl: duration(&get("listener.blacklist_ttl")).expect("validated"),
            metrics_addr: get("metrics.addr").parse().ok(),
            cluster_name: get("cluster.name"),
            secret,
            secret_file: secret_file(doc),
            secrets_accepted,
            nodes: get("cluster.nodes")
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            worktypes: worktypes(doc)?,
        })
    }

    /// The address peers reach this node's listener at: `listener.addr:listener.port`, or
    /// the node name for the host when the listener binds every address.
    pub fn advertised_addr(&self) -> String {
        let host = if self.listener_addr.is_unspecified() {
            self.name.clone()
        } else {
            self.listener_addr.to_string()
        };
        format!("{host}:{}", self.listener_port)
    }

    /// The keyring of this config: `cluster.secret` first (what a client uses), then each
    /// of `cluster.secrets_accepted`.
    pub fn keyring(&self) -> crate::wire::Keyring {
        let first = crate::wire::Keyring::new(self.cluster_name.clone(), self.secret.as_bytes());
        self.secrets_accepted
            .iter()
            .fold(first, |k, s| k.with_secret(s.as_bytes()))
    }

    /// Whether this node has a cluster identity (name and secret).
    pub fn has_cluster(&self) -> bool {
        !self.cluster_name.is_empty() && !self.secret.is_empty()
    }
}

fn default_of(key: &str) -> &'static str {
    PARAMS
        .iter()
        .find(|p| p.key == key)
        .map_or("", |p| p.default)
}

/// Parameters that older versions had and this one ignores: `(key, why)`. A node.conf that
/// still has one loads (the daemon logs a warning), so an upgrade does not stop a node.
pub const RETIRED: &[(&str, &str)] = &[(
    "listener.replay_window",
    "wire protocol v2 sessions refuse replays by construction; the line can be deleted",
)];

/// Why `key` is ignored, if it is a retired parameter.
pub fn retired(key: &str) -> Option<&'static str> {
    RETIRED.iter().find(|(k, _)| *k == key).map(|(_, why)| *why)
}

/// Checks that `key` is a known parameter and `value` a valid value for it.
pub fn validate(key: &str, value: &str) -> Result<(), ConfigError> {
    if retired(key).is_some() {
        return Ok(());
    }
    if let Some((section, k)) = key
        .rsplit_once('.')
        .filter(|(s, _)| s.starts_with(WORKTYPE_PREFIX))
    {
        return validate_worktype(section, k, value);
    }
    if !PARAMS.iter().any(|p| p.key == key) {
        return Err(ConfigError::UnknownKey {
            key: key.to_string(),
            known: PARAMS.iter().map(|p| p.key).collect::<Vec<_>>().join(", "),
        });
    }
    let bad = |reason: &str| {
        Err(ConfigError::BadValue {
            key: key.to_string(),
            value: shown_value(key, value),
            reason: reason.to_string(),
        })
    };
    if !ini::value_survives(value) {
        // Written as is, the file would read back as another value.
        return bad("a value cannot contain ' #' or ' ;' (they start a comment) nor begin or end with spaces");
    }
    let name_ok = |v: &str| raft::apply::check_name("node", v).is_ok();
    match key {
        "node.name" if !value.is_empty() && !name_ok(value) => {
            bad("1 to 64 of [A-Za-z0-9_.-], starting with a letter or digit")
        }
        "node.down_timeout" | "node.join_timeout"
            if duration(value).is_none() =>
        {
            bad("expected a duration such as 5s, 500ms or 1m")
        }
        "listener.handshake_timeout"
        | "listener.frame_timeout"
        | "listener.idle_timeout"
        | "listener.blacklist_ttl"
            if duration(value).is_none_or(|d| d.is_zero()) =>
        {
            bad("expected a positive duration such as 10s, 500ms or 5m")
        }
        "listener.max_conns" | "listener.max_conns_per_addr"
            if !value
                .parse::<usize>()
                .is_ok_and(|n| (1..=1 << 20).contains(&n)) =>
        {
            bad("expected a connection count in 1..=1048576")
        }
        "listener.handshake_rate"
            if !value.parse::<u32>().is_ok_and(|n| n <= 100_000) =>
        {
            bad("expected a number of handshakes per second in 0..=100000")
        }
        "node.split_action" if !matches!(value, "stop" | "none") => {
            bad("allowed values are stop, none")
        }
        "node.role" if value.parse::<raft::state::NodeRole>().is_err() => {
            bad("allowed values are normal, witness")
        }
        "node.log_level" => match value.parse::<crate::logging::LogLevel>() {
            Ok(_) => Ok(()),
            Err(why) => bad(&why),
        },
        "metrics.addr"
            if !value.is_empty() && value.parse::<std::net::SocketAddr>().is_err() =>
        {
            bad("expected ip:port, such as 127.0.0.1:9464 (empty: off)")
        }
        "listener.addr" if value.parse::<IpAddr>().is_err() => bad("expected an IP address"),
        "listener.port" if !value.parse::<u16>().is_ok_and(|p| p > 0) => {
            bad("expected a port in 1..=65535")
        }
        "listener.max_frame"
            if !value
                .parse::<usize>()
                .is_ok_and(|n| (1024..=1 << 30).contains(&n)) =>
        {
            bad("expected a byte count in 1024..=1073741824")
        }
        "cluster.name" if !value.is_empty() && !name_ok(value) => {
            bad("1 to 64 of [A-Za-z0-9_.-], starting with a letter or digit")
        }
        "cluster.secret" if !value.is_empty() && value.len() < MIN_SECRET_LEN => {
            bad("a secret has at least 32 characters (16 random bytes in hex); generate one with: head -c 32 /dev/urandom | xxd -p -c 64")
        }
        "cluster.secret_file" if !value.is_empty() && !Path::new(value).is_absolute() => {
            bad("expected an absolute path (a file of mode 0600 holding the secret)")
        }
        "cluster.secrets_accepted"
            if value
                .split_whitespace()
                .any(|v| raft::secrets::check_secret(v).is_err()) =>
        {
            bad("space-separated secrets of at least 32 printable characters each")
        }
        "cluster.nodes" => match value.split_whitespace().find(|n| !name_ok(n)) {
            Some(_) => bad("expected space-separated node names"),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// `cluster.secret_file`, if set.
fn secret_file(doc: &IniDoc) -> Option<PathBuf> {
    doc.get("cluster", "secret_file")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The cluster secret of `doc` and the secrets accepted besides it: `cluster.secret` and
/// `cluster.secrets_accepted`, or the lines of `cluster.secret_file` (the secret first),
/// which must be private to its owner. A missing file is no secret yet: the daemon makes
/// one there. A secret in both places is refused: which one wins would be a guess.
fn secrets(doc: &IniDoc) -> Result<(String, Vec<String>), ConfigError> {
    let inline = |key: &str| doc.get("cluster", key).unwrap_or_default().to_string();
    let Some(path) = secret_file(doc) else {
        let accepted = inline("secrets_accepted");
        return Ok((inline("secret"), words(&accepted)));
    };
    if let Some(key) = ["secret", "secrets_accepted"]
        .into_iter()
        .find(|k| !inline(k).is_empty())
    {
        return Err(ConfigError::BadValue {
            key: format!("cluster.{key}"),
            value: format!("<{} characters>", inline(key).len()),
            reason: format!(
                "cluster.secret_file ({}) holds the secrets: remove cluster.{key} from node.conf",
                path.display()
            ),
        });
    }
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((String::new(), vec![])),
        Err(e) => {
            return Err(ConfigError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        }
    };
    check_secret_mode(&path)?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let used = lines.next().unwrap_or_default().to_string();
    let accepted: Vec<String> = lines.map(str::to_string).collect();
    let in_file = |e: ConfigError| match e {
        ConfigError::BadValue { value, reason, .. } => ConfigError::BadValue {
            key: format!("cluster.secret_file ({})", path.display()),
            value,
            reason,
        },
        other => other,
    };
    validate("cluster.secret", &used).map_err(in_file)?;
    validate("cluster.secrets_accepted", &accepted.join(" ")).map_err(in_file)?;
    Ok((used, accepted))
}

fn words(v: &str) -> Vec<String> {
    v.split_whitespace().map(str::to_string).collect()
}

/// Puts the secret in use and those accepted besides it where this config keeps them:
/// into `cluster.secret_file` when one is set (one per line, the one in use first; written
/// durably, 0600), else into `cluster.secret` and `cluster.secrets_accepted` of `doc`.
pub fn place_secrets(doc: &mut IniDoc, used: &str, accepted: &[String]) -> Result<(), ConfigError> {
    let Some(path) = secret_file(doc) else {
        doc.set("cluster", "secret", used);
        if accepted.is_empty() {
            doc.unset("cluster", "secrets_accepted");
        } else {
            doc.set("cluster", "secrets_accepted", &accepted.join(" "));
        }
        return Ok(());
    };
    let text: String = std::iter::once(used)
        .chain(accepted.iter().map(String::as_str))
        .map(|s| format!("{s}\n"))
        .collect();
    write_durably(&path, text.as_bytes()).map_err(|e| ConfigError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn duration(v: &str) -> Option<Duration> {
    raft::apply::parse_duration_ms(v).map(Duration::from_millis)
}

/// This machine's hostname, or `localhost` if it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Held while node.conf is read, changed and written back: the daemon (which records
/// members, secrets and its role there) and `om node set|unset|edit` take it, so neither
/// writes over a change the other made in between. An exclusive `flock` on node.conf's
/// directory (the file itself is replaced by a rename on every save).
#[derive(Debug)]
pub struct ConfLock {
    /// The locked directory; unlocked when dropped.
    _dir: std::fs::File,
}

/// Waits for and takes the [`ConfLock`] of the node.conf at `path`.
pub fn lock_conf(path: &Path) -> Result<ConfLock, ConfigError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let err = |e: std::io::Error| ConfigError::Write {
        path: path.display().to_string(),
        reason: format!("cannot lock {}: {e}", dir.display()),
    };
    let f = std::fs::File::open(dir).map_err(err)?;
    f.lock().map_err(err)?;
    Ok(ConfLock { _dir: f })
}

/// Writes `doc` to `path` atomically and durably: a temp file created 0600 (node.conf holds
/// the cluster secret, which is root on every node), fsynced, renamed over `path`, then the
/// directory fsynced so the rename survives a power cut. A directory this creates is 0700;
/// an existing one keeps its mode (the root may be `/`, whose `etc/` is not ours).
pub fn save(path: &Path, doc: &IniDoc) -> Result<(), ConfigError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |e: std::io::Error| ConfigError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    write_durably(path, doc.to_string().as_bytes()).map_err(err)
}

/// Replaces `path` with `contents` so that a crash leaves the old file or the new one,
/// and the new one survives a power cut: a `<name>.tmp` created 0600, fsynced, renamed
/// over `path`, then the directory fsynced. The directory must exist.
pub fn write_durably(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::PermissionsExt;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let written = (|| {
        // Not through a link someone planted at the temp name.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        // A temp file left by an older version may exist with a wider mode.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        // It may hold a secret: no copy is left behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Refuses a file that holds the cluster secret when group or others may read or write it:
/// whoever reads the secret can run commands as root on every node.
pub fn check_secret_mode(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::InsecureMode {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// The fewest characters a cluster secret may have: 16 random bytes written in hex.
pub const MIN_SECRET_LEN: usize = raft::secrets::MIN_SECRET_LEN;

#[cfg(test)]
mod tests {
    use super::*;

    fn with_secret_file(dir: &Path, extra: &str) -> (PathBuf, Result<NodeConfig, ConfigError>) {
        let file = dir.join("secret");
        let text = format!(
            "[cluster]\nname = c\nsecret_file = {}\n{extra}",
            file.display()
        );
        (file, NodeConfig::from_doc(&IniDoc::parse(&text).unwrap()))
    }

    #[test]
    fn the_secrets_can_live_in_a_private_file_of_their_own() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        let (file, missing) = with_secret_file(dir.path(), "");
        assert_eq!(missing.unwrap().secret, "", "no file yet: no secret yet");

        let text = format!("[cluster]\nsecret_file = {}\n", file.display());
        let mut doc = IniDoc::parse(&text).unwrap();
        place_secrets(&mut doc, &a, std::slice::from_ref(&b)).unwrap();
        assert_eq!(
            doc.get("cluster", "secret"),
            None,
            "node.conf holds no secret"
        );
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let cfg = with_secret_file(dir.path(), "").1.unwrap();
        assert_eq!(
            (cfg.secret.as_str(), cfg.secrets_accepted),
            (a.as_str(), vec![b.clone()])
        );
        assert_eq!(cfg.secret_file.as_deref(), Some(file.as_path()));

        // Readable by others: refused with the chmod to run.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = with_secret_file(dir.path(), "").1.unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();

        // A secret in node.conf as well: refused, naming the file, never showing the secret.
        let e = with_secret_file(dir.path(), &format!("secret = {a}\n"))
            .1
            .unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("remove cluster.secret") && !e.contains(&a),
            "{e}"
        );

        // A weak secret in the file is refused the way a weak cluster.secret is.
        std::fs::write(&file, "short\n").unwrap();
        let e = with_secret_file(dir.path(), "").1.unwrap_err().to_string();
        assert!(
            e.contains("cluster.secret_file") && e.contains("32 characters"),
            "{e}"
        );

        let e = validate("cluster.secret_file", "etc/secret")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("absolute path") && e.contains("etc/secret"),
            "{e}"
        );
    }

    #[test]
    fn defaults_and_validation() {
        let doc = IniDoc::parse("[node]\nname = n1\n[listener]\nport = 1300\n").unwrap();
        let cfg = NodeConfig::from_doc(&doc).unwrap();
        assert_eq!(cfg.name, "n1");
        assert_eq!(cfg.listener_port, 1300);
        assert_eq!(cfg.max_frame, DEFAULT_MAX_FRAME);
        assert_eq!(cfg.down_timeout, Duration::from_secs(5));
        assert!(!cfg.has_cluster());

        let doc = IniDoc::parse("[listener]\nport = 70000\n").unwrap();
        assert_eq!(
            NodeConfig::from_doc(&doc).unwrap_err().to_string(),
            "invalid value \"70000\" for listener.port: expected a port in 1..=65535"
        );
        assert_eq!(cfg.max_conns, 1024);
        assert_eq!(cfg.max_conns_per_addr, 64);
        assert_eq!(cfg.handshake_timeout, Duration::from_secs(10));
        assert_eq!(cfg.frame_timeout, Duration::from_secs(10));
        assert_eq!(cfg.idle_timeout, Duration::from_secs(300));

        let doc = IniDoc::parse("[listener]\nmax_conns = 0\n").unwrap();
        assert_eq!(
            NodeConfig::from_doc(&doc).unwrap_err().to_string(),
            "invalid value \"0\" for listener.max_conns: expected a connection count in 1..=1048576"
        );
        let doc = IniDoc::parse("[listener]\nidle_timeout = 0s\n").unwrap();
        assert_eq!(
            NodeConfig::from_doc(&doc).unwrap_err().to_string(),
            "invalid value \"0s\" for listener.idle_timeout: expected a positive duration such as 10s, 500ms or 5m"
        );
        let doc =
            IniDoc::parse("[listener]\nmax_conns_per_addr = 8\nframe_timeout = 250ms\n").unwrap();
        let cfg = NodeConfig::from_doc(&doc).unwrap();
        assert_eq!(cfg.max_conns_per_addr, 8);
        assert_eq!(cfg.frame_timeout, Duration::from_millis(250));

        let doc = IniDoc::parse(
            "[worktype#cat]\ncommand = cat\n[worktype#echo]\ncommand = echo\nparams = true\n",
        )
        .unwrap();
        let cfg = NodeConfig::from_doc(&doc).unwrap();
        assert_eq!(cfg.worktypes.len(), 2);
        assert!(cfg.worktypes["echo"].params && !cfg.worktypes["cat"].params);
        for (text, want) in [
            ("[worktype#cat]\nparams = true\n", "needs a command"),
            (
                "[worktype#cat]\ncommand = cat\nparams = yes\n",
                "true, false",
            ),
            (
                "[worktype#cat]\ncommand = cat\nuser = x\n",
                "worktype#cat.command",
            ),
            ("[worktype#../x]\ncommand = cat\n", "work type name"),
        ] {
            let e = NodeConfig::from_doc(&IniDoc::parse(text).unwrap()).unwrap_err();
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
        let (a, b) = ("a".repeat(32), "b".repeat(40));
        let doc = IniDoc::parse(&format!(
            "[cluster]\nname = c\nsecret = {a}\nsecrets_accepted = {b}\n"
        ))
        .unwrap();
        let cfg = NodeConfig::from_doc(&doc).unwrap();
        assert_eq!(cfg.secrets_accepted, vec![b.clone()]);
        let fps = cfg.keyring().fingerprints();
        assert_eq!(
            fps[0],
            raft::secrets::fingerprint(a.as_bytes()),
            "the client uses cluster.secret"
        );
        assert_eq!(fps.len(), 2);
        let e = validate("cluster.secrets_accepted", &format!("{b} short-one")).unwrap_err();
        assert!(!e.to_string().contains(&b), "a secret is never shown: {e}");

        let doc = IniDoc::parse("[listener]\nprot = 1\n").unwrap();
        assert!(matches!(
            NodeConfig::from_doc(&doc).unwrap_err(),
            ConfigError::UnknownKey { .. }
        ));
    }
}
