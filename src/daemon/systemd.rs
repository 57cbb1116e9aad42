//! systemd integration: the readiness and watchdog notifications of a `Type=notify` unit
//! (sd_notify, through the `sd-notify` crate), and the unit `om node daemon install`
//! writes. Outside systemd (no `NOTIFY_SOCKET`) every notification is a no-op.

use std::path::Path;
use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the daemon is ready: the listener is bound and Raft runs. With a
/// watchdog (`WatchdogSec=`), pings it at half its period from the runtime, so that a
/// stalled runtime is restarted.
pub(super) fn ready() {
    notify(NotifyState::Ready);
    if let Some(period) = sd_notify::watchdog_enabled() {
        let every = (period / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                notify(NotifyState::Watchdog);
            }
        });
    }
}

/// Tells systemd the daemon is stopping.
pub(super) fn stopping() {
    notify(NotifyState::Stopping);
}

fn notify(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// The systemd unit that runs the daemon of root `root` with binary `bin`.
pub fn unit(bin: &Path, root: &Path) -> String {
    let (bin, root) = (bin.display(), root.display());
    format!(
        "\
# Written by `om node daemon install`.
[Unit]
Description=om cluster agent ({root})
Documentation=man:om(1)
After=network-online.target
Wants=network-online.target

[Service]
# READY=1 once the listener is bound and Raft runs; WATCHDOG=1 every WatchdogSec/2.
Type=notify
NotifyAccess=main
ExecStart={bin} --root {root} node daemon run
# A plain stop: the node advertises maintenance and its instances keep running.
ExecStop={bin} --root {root} node daemon stop
Restart=on-failure
RestartSec=2
WatchdogSec=30
TimeoutStopSec=60
# One descriptor per peer and client connection, and per service log.
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"
    )
}
