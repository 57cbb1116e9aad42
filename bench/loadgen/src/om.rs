//! The om side: three real daemons on loopback under temporary roots (om's own
//! `LocalCluster`, as `om bench --nodes 3` starts them), and clients committing
//! `set_node_monitor` (local_expect thawed: no effect on the agent) through the wire client.
//! Clients are spread over the members, as etcd's are; a follower forwards to the leader.

use std::path::PathBuf;
use std::time::Duration;

use om::cli::local::LocalCluster;
use om::config::NodeConfig;
use om::wire::Client;
use om::wire::ClientOptions;
use om::wire::Keyring;
use serde_json::json;

use crate::stats::run_clients;
use crate::stats::Level;

/// Sessions one level opens at most by default (as `om bench`: one session per client from
/// one address would run into the listener's per-address caps, which exist to stop exactly
/// that).
pub const CONNS: usize = 16;

/// A running cluster.
pub struct Om {
    cluster: LocalCluster,
    keyring: Keyring,
    sender: String,
}

impl Om {
    /// Starts `n` daemons of `bin` and joins them into one cluster.
    pub async fn start(bin: PathBuf, n: usize, base: Option<PathBuf>) -> Result<Om, String> {
        if let Some(b) = &base {
            std::fs::create_dir_all(b).map_err(|e| format!("{}: {e}", b.display()))?;
        }
        let mut cluster = LocalCluster::prepare(bin, n, base).map_err(|e| e.to_string())?;
        cluster.start_all().await?;
        cluster.join_all(&mut |l| eprintln!("  {l}")).await?;
        let conf = cluster.nodes[0].paths.node_conf();
        let (_, cfg) = NodeConfig::load(&conf).map_err(|e| e.to_string())?;
        Ok(Om {
            cluster,
            keyring: cfg.keyring(),
            sender: cfg.name,
        })
    }

    /// The leader's name and root, once there is one.
    pub async fn leader(&self) -> Option<(String, PathBuf)> {
        let name = self.cluster.leader().await?;
        let node = self.cluster.nodes.iter().find(|n| n.name == name)?;
        Some((name, node.paths.root.clone()))
    }

    /// Runs `clients` clients over at most `conns` sessions for `secs` after `warmup`.
    pub async fn level(
        &self,
        clients: usize,
        conns: usize,
        warmup: Duration,
        secs: Duration,
    ) -> Level {
        let members: Vec<(String, String)> = self
            .cluster
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.addr()))
            .collect();
        let sessions: Vec<(Client, String)> = (0..clients.clamp(1, conns.max(1)))
            .map(|j| {
                let (name, addr) = &members[j % members.len()];
                let c = ClientOptions::new(addr, self.keyring.clone(), &self.sender).build();
                (c, name.clone())
            })
            .collect();
        run_clients(clients, warmup, secs, |i, from, until| {
            let (client, node) = sessions[i % sessions.len()].clone();
            client_loop(client, node, from, until)
        })
        .await
    }
}

/// One client: sequential committed writes until `until`, timed from `from` on.
async fn client_loop(
    client: Client,
    node: String,
    from: tokio::time::Instant,
    until: tokio::time::Instant,
) -> (Vec<Duration>, u64) {
    let mut lat = Vec::new();
    let mut errors = 0u64;
    let opts = json!({"node": node, "local_expect": "thawed"});
    loop {
        let t0 = tokio::time::Instant::now();
        if t0 >= until {
            break;
        }
        let r = client
            .request("set_node_monitor", opts.clone(), Duration::from_secs(5))
            .await;
        let ok = matches!(&r, Ok(resp) if resp.is_ok());
        if t0 >= from {
            match ok {
                true => lat.push(t0.elapsed()),
                false => errors += 1,
            }
        }
    }
    (lat, errors)
}
