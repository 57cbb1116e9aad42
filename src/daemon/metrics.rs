//! The HTTP endpoints of `metrics.addr` (off by default): `/metrics` in Prometheus' text
//! format, `/livez` and `/readyz`. Served by `tiny_http` on threads of its own, from the
//! daemon's snapshots (Raft metrics, listener counters, threads, the replicated state), read
//! at scrape time; the text format is written here, as it is three lines per metric.

use std::fmt::Write;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::Daemon;
use crate::api::status::ThreadState;

/// The running endpoints; dropping it stops them.
pub(super) struct MetricsServer {
    server: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
}

/// Threads answering scrapes: a slow scraper holds one.
const WORKERS: usize = 2;

impl MetricsServer {
    /// Serves the endpoints of `daemon` on `addr`.
    pub(super) fn start(
        daemon: &Arc<Daemon>,
        addr: std::net::SocketAddr,
    ) -> Result<MetricsServer, String> {
        let server = tiny_http::Server::http(addr)
            .map(Arc::new)
            .map_err(|e| format!("metrics.addr {addr}: {e}"))?;
        // The threads hold a weak handle: the daemon's lifetime is not theirs to extend.
        let threads = (0..WORKERS)
            .map(|_| {
                let (server, daemon) = (server.clone(), Arc::downgrade(daemon));
                std::thread::spawn(move || {
                    for request in server.incoming_requests() {
                        let Some(d) = daemon.upgrade() else { return };
                        let (code, body) = answer(&d, request.url());
                        let response = tiny_http::Response::from_string(body)
                            .with_status_code(code)
                            .with_header(content_type());
                        let _ = request.respond(response);
                    }
                })
            })
            .collect();
        Ok(MetricsServer { server, threads })
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        // Each call wakes one thread waiting for a request, which then ends.
        for _ in 0..WORKERS {
            self.server.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn content_type() -> tiny_http::Header {
    "Content-Type: text/plain; version=0.0.4; charset=utf-8"
        .parse()
        .expect("a valid header")
}

/// The status code and body for `url`.
fn answer(d: &Daemon, url: &str) -> (u16, String) {
    match url.split('?').next().unwrap_or("") {
        "/livez" => (200, "ok\n".into()),
        "/readyz" => match not_ready(d) {
            None => (200, "ok\n".into()),
            Some(why) => (503, format!("{why}\n")),
        },
        "/metrics" => (200, exposition(d)),
        _ => (404, "not found: /metrics, /livez, /readyz\n".into()),
    }
}

/// Why this node cannot serve the cluster now, if it cannot.
fn not_ready(d: &Daemon) -> Option<String> {
    let Ok(node) = d.node() else {
        return Some("raft is not running".into());
    };
    let m = node.metrics();
    if m.current_leader.is_none() {
        return Some("no leader".into());
    }
    if !node.read(|s| s.nodes.contains_key(&d.name())) {
        return Some("not a member".into());
    }
    d.addr_problem()
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

/// `{k="v",...}` with the values escaped as the text format wants.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Every metric, in the text exposition format.
fn exposition(d: &Daemon) -> String {
    let mut out = String::new();
    raft_metrics(&mut out, d);
    listener_metrics(&mut out, d);
    let threads = d.threads.status();
    let running: Vec<(String, u64)> = threads
        .iter()
        .map(|(id, t)| {
            (
                labels(&[("thread", id)]),
                u64::from(t.state == ThreadState::Running),
            )
        })
        .collect();
    metric(
        &mut out,
        "om_thread_running",
        "gauge",
        "1 when the daemon thread runs",
        &running,
    );
    let restarts: Vec<(String, u64)> = threads
        .iter()
        .map(|(id, t)| (labels(&[("thread", id)]), u64::from(t.restarts)))
        .collect();
    metric(
        &mut out,
        "om_thread_restarts_total",
        "counter",
        "unclean exits restarted",
        &restarts,
    );
    state_metrics(&mut out, d);
    out
}

fn raft_metrics(out: &mut String, d: &Daemon) {
    let Ok(node) = d.node() else { return };
    let m = node.metrics();
    let one = |v: u64| vec![(String::new(), v)];
    let last_log = m.last_log_index.unwrap_or(0);
    let applied = m.last_applied.map_or(0, |l| l.index);
    metric(
        out,
        "om_raft_term",
        "gauge",
        "current Raft term",
        &one(m.current_term),
    );
    metric(
        out,
        "om_raft_last_log_index",
        "gauge",
        "last index in this node's log",
        &one(last_log),
    );
    metric(
        out,
        "om_raft_last_applied",
        "gauge",
        "last index applied here",
        &one(applied),
    );
    let lag = last_log.saturating_sub(applied);
    metric(
        out,
        "om_raft_apply_lag",
        "gauge",
        "log entries not applied yet",
        &one(lag),
    );
    let leader = u64::from(m.current_leader == Some(node.id));
    metric(
        out,
        "om_raft_is_leader",
        "gauge",
        "1 on the leader",
        &one(leader),
    );
    let known = u64::from(m.current_leader.is_some());
    metric(
        out,
        "om_raft_leader_known",
        "gauge",
        "1 when this node knows a leader",
        &one(known),
    );
}

fn listener_metrics(out: &mut String, d: &Daemon) {
    let snap = d.listener.metrics().snapshot();
    let fields = serde_json::to_value(&snap).unwrap_or_default();
    for (name, v) in fields.as_object().into_iter().flatten() {
        let Some(v) = v.as_u64() else { continue };
        let sample = vec![(String::new(), v)];
        if name == "open_connections" {
            metric(
                out,
                "om_listener_open_connections",
                "gauge",
                "open connections",
                &sample,
            );
        } else {
            let help = format!("listener {}", name.replace('_', " "));
            metric(
                out,
                &format!("om_listener_{name}_total"),
                "counter",
                &help,
                &sample,
            );
        }
    }
    let rejected: Vec<(String, u64)> = snap
        .rejected
        .iter()
        .map(|(kind, n)| (labels(&[("kind", kind)]), *n))
        .collect();
    metric(
        out,
        "om_listener_rejected_total",
        "counter",
        "frames rejected, by kind",
        &rejected,
    );
}

fn state_metrics(out: &mut String, d: &Daemon) {
    let Ok(node) = d.node() else { return };
    let (monitors, instances) = node.read(|s| {
        let monitors: Vec<(String, u64)> = s
            .node_monitors
            .iter()
            .map(|(n, m)| (labels(&[("node", n), ("status", m.status.as_str())]), 1))
            .collect();
        let instances: Vec<(String, u64)> = s
            .services
            .iter()
            .flat_map(|(svc, v)| {
                v.instances.iter().map(move |(n, i)| {
                    let l = [
                        ("service", svc.as_str()),
                        ("node", n.as_str()),
                        ("avail", i.avail.as_str()),
                    ];
                    (labels(&l), 1)
                })
            })
            .collect();
        (monitors, instances)
    });
    metric(
        out,
        "om_node_monitor",
        "gauge",
        "1 for each node's monitor status",
        &monitors,
    );
    metric(
        out,
        "om_instance",
        "gauge",
        "1 for each instance's availability",
        &instances,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&[("a", "x\"y\\z\nw")]), r#"{a="x\"y\\z\nw"}"#);
        let mut out = String::new();
        metric(
            &mut out,
            "om_x_total",
            "counter",
            "an x",
            &[(String::new(), 3)],
        );
        assert_eq!(
            out,
            "# HELP om_x_total an x\n# TYPE om_x_total counter\nom_x_total 3\n"
        );
    }
}
