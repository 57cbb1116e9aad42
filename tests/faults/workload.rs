//! The clients: several at once, each through its own node's control socket, writing and
//! reading registers (service configs whose text carries a unique value), and switching the
//! failover service between nodes. Every operation's call and return (microseconds since
//! the run started) and outcome is recorded for the checkers.
//!
//! Outcomes: `Ok`; `Failed` when the request never reached a daemon (nothing can have
//! happened); `Unknown` for every other error, since a write refused with a timeout or an
//! unavailable leader may still have been committed (om forwards and retries proposals).

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use om::config::Paths;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use serde_json::json;

/// The failover service the clients switch around.
pub(crate) const GUARD: &str = "guard";
/// How long a client waits for one answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What an operation asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum What {
    /// Set register `key` to `value`.
    Write { key: String, value: String },
    /// Read register `key` (linearizable).
    Read { key: String },
    /// Move the failover service to node `to`.
    Switch { to: String },
}

/// How it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Done; a write's commit index and the register's version after it; a read's value.
    Ok {
        index: Option<u64>,
        version: Option<u64>,
        value: Option<String>,
    },
    /// Never reached a daemon: no effect.
    Failed(String),
    /// May or may not have taken effect.
    Unknown(String),
}

/// One recorded operation.
#[derive(Debug, Clone)]
pub(crate) struct Op {
    pub client: usize,
    pub node: String,
    pub what: What,
    pub call_us: u64,
    pub ret_us: u64,
    pub outcome: Outcome,
}

/// The history, shared by the clients.
#[derive(Clone)]
pub(crate) struct History {
    pub t0: Instant,
    pub ops: Arc<Mutex<Vec<Op>>>,
}

impl History {
    pub(crate) fn new() -> History {
        History {
            t0: Instant::now(),
            ops: Arc::default(),
        }
    }

    /// Microseconds since the run started.
    pub(crate) fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }
}

/// The register names.
pub(crate) fn registers(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("reg{i}")).collect()
}

/// A register's config text: a valid service that runs nowhere, carrying `value`.
pub(crate) fn register_config(value: &str) -> String {
    format!("[DEFAULT]\nnodes = nobody\n# value {value}\n")
}

/// The value a register's config text carries.
pub(crate) fn register_value(config: &str) -> Option<String> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("# value "))
        .map(String::from)
}

/// The least time between two switches of the failover service: a switch issued while
/// the previous one is still being carried out can run it twice (docs/OPERATIONS.md,
/// "Faults"), which `OM_FAULT_RAPID_SWITCHES=1` shows.
const SWITCH_GAP: Duration = Duration::from_secs(3);

/// One client's target and identity.
pub(crate) struct Client {
    pub id: usize,
    pub node: String,
    pub paths: Paths,
    /// Whether this client switches the failover service (one client does).
    pub switches: bool,
    /// The failover service's nodes, where switches send it.
    pub nodes: Vec<String>,
    pub keys: Vec<String>,
    pub seed: u64,
}

/// Runs one client until `stop`; its operations go to `history`.
pub(crate) async fn run_client(c: Client, history: History, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(c.seed ^ (c.id as u64).wrapping_mul(0x9e37_79b9));
    let mut seq = 0u64;
    let mut last_switch = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let key = c.keys[rng.gen_range(0..c.keys.len())].clone();
        let what = if c.switches && last_switch.elapsed() >= SWITCH_GAP && rng.gen_bool(0.2) {
            last_switch = Instant::now();
            What::Switch {
                to: c.nodes[rng.gen_range(0..c.nodes.len())].clone(),
            }
        } else if rng.gen_bool(0.5) {
            What::Write {
                key,
                value: format!("c{}-{seq}", c.id),
            }
        } else {
            What::Read { key }
        };
        let call_us = history.now_us();
        let outcome = perform(&c.paths, &what).await;
        let ret_us = history.now_us();
        let failed = !matches!(outcome, Outcome::Ok { .. });
        history.ops.lock().unwrap().push(Op {
            client: c.id,
            node: c.node.clone(),
            what,
            call_us,
            ret_us,
            outcome,
        });
        let pause = if failed { 200 } else { rng.gen_range(5..60) };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Sends one operation.
pub(crate) async fn perform(paths: &Paths, what: &What) -> Outcome {
    let (action, options) = match what {
        What::Write { key, value } => (
            "set_service_config",
            json!({"svcname": key, "config": register_config(value)}),
        ),
        What::Read { key } => (
            "get_service_config",
            json!({"svcname": key, "linearizable": true}),
        ),
        What::Switch { to } => (
            "set_service_monitor",
            json!({"svcname": GUARD, "global_expect": format!("placed@{to}")}),
        ),
    };
    match crate::node::call(paths, action, options, CALL_TIMEOUT).await {
        Ok(v) => match what {
            What::Read { .. } => Outcome::Ok {
                index: None,
                version: v["version"].as_u64(),
                value: v["config"].as_str().and_then(register_value),
            },
            _ => Outcome::Ok {
                index: v["index"].as_u64(),
                version: v["outcome"]["version"].as_u64(),
                value: None,
            },
        },
        // The registers exist from the start: a linearizable read that finds none saw it
        // absent (the leader answered so).
        Err(e) if matches!(what, What::Read { .. }) && e.message.contains("does not exist") => {
            Outcome::Ok {
                index: None,
                version: None,
                value: None,
            }
        }
        Err(e) if !e.sent => Outcome::Failed(e.message),
        Err(e) => Outcome::Unknown(e.message),
    }
}
