//! The suite's private network: one namespace per node (`ip netns`), each with a veth pair
//! whose other end is on a bridge in a hub namespace the harness owns, addresses on
//! 10.213.K.0/24. Nothing is added to the root namespace (no interface, route or rule), so
//! traffic only ever flows between the test's own namespaces.
//!
//! It also owns the network faults, applied inside the node namespaces: drops with nftables
//! (one-way or both ways, per peer), and a degraded link on a node's veth: `tc netem` when the
//! kernel has it, else loss with nftables' `numgen` and a slow, reordering link with an htb
//! class that a random share of packets bypasses. Dropping the [`Net`] deletes the namespaces
//! (their veths go with them); namespaces left by a process that died are removed when the
//! next [`Net`] is made.

use std::process::Command;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

/// Every namespace the suite makes starts with this, then the owning process id.
pub(crate) const PREFIX: &str = "omf-";

/// One node's namespace and address.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    /// Its namespace (`ip netns` name).
    pub ns: String,
    /// Its address on the private subnet.
    pub ip: String,
}

/// How a node's link is degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Degrade {
    /// Outgoing packets lost, percent.
    pub loss_pct: u32,
    /// Added delay (netem), or how slow the link is (the fallback's htb rate follows it).
    pub delay_ms: u32,
    /// Outgoing packets sent out of order, percent.
    pub reorder_pct: u32,
}

/// The namespaces of one cluster.
pub(crate) struct Net {
    hub: String,
    /// The nodes' namespaces, in order.
    pub hosts: Vec<Host>,
}

/// Runs `cmd args`, returning stdout or a message with stderr.
pub(crate) fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `args` inside namespace `ns`.
pub(crate) fn in_ns(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Why the suite cannot run here, if it cannot: not root, or no `ip netns`, or no `nft`.
pub(crate) fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network namespaces need root".into());
    }
    if let Err(e) = run("ip", &["netns", "list"]) {
        return Some(format!("`ip netns` is unavailable: {e}"));
    }
    if let Err(e) = run("nft", &["--version"]) {
        return Some(format!(
            "`nft` is unavailable ({e}): apt-get install nftables"
        ));
    }
    if let Err(e) = run("unshare", &["--version"]) {
        return Some(format!("`unshare` is unavailable: {e}"));
    }
    None
}

/// Deletes namespaces (and kills their processes) that a process no longer alive made.
pub(crate) fn remove_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let owner = rest.split('-').next().unwrap_or("");
        let alive = owner
            .parse::<u32>()
            .is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists() && pid != 0);
        if !alive {
            eprintln!("faults: removing stale namespace {name}");
            kill_all_in(name);
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

fn kill_all_in(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = run("kill", &["-9", pid]);
        }
    }
}

/// Whether this kernel has `tc netem` (probed once, on a namespace's loopback).
fn has_netem(probe_ns: &str) -> bool {
    static NETEM: OnceLock<bool> = OnceLock::new();
    *NETEM.get_or_init(|| {
        let ok = in_ns(
            probe_ns,
            &[
                "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
            ],
        )
        .is_ok();
        let _ = in_ns(probe_ns, &["tc", "qdisc", "del", "dev", "lo", "root"]);
        if !ok {
            eprintln!(
                "faults: this kernel has no tc netem: loss through nftables numgen, delay and \
                 reordering through an htb slow class"
            );
        }
        ok
    })
}

impl Net {
    /// Makes the hub and `count` node namespaces, wired and addressed.
    pub(crate) fn create(count: usize) -> Result<Net, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("{PREFIX}{}-{k}", std::process::id());
        let subnet = 10 + (k % 240);
        let mut net = Net {
            hub: format!("{base}-hub"),
            hosts: Vec::new(),
        };
        run("ip", &["netns", "add", &net.hub])?;
        in_ns(&net.hub, &["ip", "link", "set", "lo", "up"])?;
        in_ns(&net.hub, &["ip", "link", "add", "br0", "type", "bridge"])?;
        in_ns(&net.hub, &["ip", "link", "set", "br0", "up"])?;
        for i in 1..=count {
            let host = Host {
                ns: format!("{base}-n{i}"),
                ip: format!("10.213.{subnet}.{i}"),
            };
            // Listed first, so that a failure below still deletes it.
            net.hosts.push(host.clone());
            net.wire(&host, i)?;
        }
        Ok(net)
    }

    fn wire(&self, host: &Host, i: usize) -> Result<(), String> {
        let ns = host.ns.as_str();
        run("ip", &["netns", "add", ns])?;
        let hub_end = format!("veth-n{i}");
        run(
            "ip",
            &[
                "link", "add", &hub_end, "netns", &self.hub, "type", "veth", "peer", "name",
                "eth0", "netns", ns,
            ],
        )?;
        in_ns(
            &self.hub,
            &["ip", "link", "set", &hub_end, "master", "br0", "up"],
        )?;
        in_ns(ns, &["ip", "link", "set", "lo", "up"])?;
        in_ns(
            ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/24", host.ip),
                "dev",
                "eth0",
            ],
        )?;
        in_ns(ns, &["ip", "link", "set", "eth0", "up"])?;
        in_ns(ns, &["nft", "add", "table", "inet", "omf"])?;
        let hook = "{ type filter hook output priority 0; }";
        in_ns(ns, &["nft", "add", "chain", "inet", "omf", "out", hook])?;
        Ok(())
    }

    /// Drops every packet from node `from` to node `to` (one way), in `from`'s namespace.
    pub(crate) fn block(&self, from: usize, to: usize) -> Result<(), String> {
        let (src, dst) = (&self.hosts[from], &self.hosts[to]);
        in_ns(
            &src.ns,
            &[
                "nft", "add", "rule", "inet", "omf", "out", "ip", "daddr", &dst.ip, "drop",
            ],
        )
        .map(|_| ())
    }

    /// Degrades node `i`'s outgoing link.
    pub(crate) fn degrade(&self, i: usize, d: Degrade) -> Result<(), String> {
        let ns = &self.hosts[i].ns;
        if has_netem(ns) {
            let (loss, delay, jitter, reorder) = (
                format!("{}%", d.loss_pct),
                format!("{}ms", d.delay_ms.max(1)),
                format!("{}ms", d.delay_ms / 2),
                format!("{}%", d.reorder_pct),
            );
            let args = [
                "tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "loss", &loss, "delay",
                &delay, &jitter, "reorder", &reorder,
            ];
            return in_ns(ns, &args).map(|_| ());
        }
        if d.loss_pct > 0 {
            let pct = d.loss_pct.to_string();
            in_ns(
                ns,
                &[
                    "nft", "add", "rule", "inet", "omf", "out", "oifname", "eth0", "numgen",
                    "random", "mod", "100", "<", &pct, "drop",
                ],
            )?;
        }
        if d.delay_ms > 0 || d.reorder_pct > 0 {
            self.slow_link(ns, d)?;
        }
        Ok(())
    }

    /// The fallback for netem's delay and reordering: packets go to a slow htb class (a
    /// queue that delays them more the more traffic there is), except a random share that
    /// bypasses it through a fast class and so overtakes them.
    fn slow_link(&self, ns: &str, d: Degrade) -> Result<(), String> {
        let kbit = (64_000 / d.delay_ms.max(10)).clamp(64, 4_000);
        let slow = format!("{kbit}kbit");
        let tc = |args: &[&str]| {
            let mut all = vec!["tc"];
            all.extend_from_slice(args);
            in_ns(ns, &all)
        };
        tc(&[
            "qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "htb", "default", "10",
        ])?;
        tc(&[
            "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:10", "htb", "rate", &slow,
        ])?;
        tc(&[
            "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:20", "htb", "rate",
            "1gbit",
        ])?;
        let pct = d.reorder_pct.to_string();
        in_ns(
            ns,
            &[
                "nft", "add", "rule", "inet", "omf", "out", "oifname", "eth0", "numgen", "random",
                "mod", "100", "<", &pct, "meta", "priority", "set", "1:20",
            ],
        )
        .map(|_| ())
    }

    /// Removes every network fault: drop rules and link degradation on every node.
    pub(crate) fn heal(&self) -> Result<(), String> {
        for h in &self.hosts {
            in_ns(&h.ns, &["nft", "flush", "chain", "inet", "omf", "out"])?;
            // No qdisc to delete is fine.
            let _ = in_ns(&h.ns, &["tc", "qdisc", "del", "dev", "eth0", "root"]);
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            kill_all_in(&h.ns);
            let _ = run("ip", &["netns", "del", &h.ns]);
        }
        let _ = run("ip", &["netns", "del", &self.hub]);
    }
}
