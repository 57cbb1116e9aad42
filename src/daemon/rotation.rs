//! Secret rotation without downtime: `cluster_secret_add|use|remove|list`.
//!
//! The plan (`ClusterState.secrets`) is committed through Raft; every node follows it
//! ([`Daemon::sync_secrets`]): it writes `cluster.secret` (the one it uses) and
//! `cluster.secrets_accepted` (the others) into node.conf (0600) and installs the keyring.
//! `list` asks each member which fingerprints it has installed, so an operator sees
//! convergence; `use` and `remove` refuse while a reachable member has not converged on
//! the step before, unless forced. Secrets are only ever shown as fingerprints.

use std::sync::Arc;
use std::time::Duration;

use raft::secrets::SecretValue;
use raft::secrets::Secrets;
use raft::Command;

use super::actions::ActionError;
use super::Daemon;
use crate::api;
use crate::api::options::NodeSecrets;
use crate::api::options::RotationStep;
use crate::api::options::SecretPlan;
use crate::api::options::SecretStepDone;
use crate::api::options::SecretsReport;
use crate::api::Action;
use crate::wire::Status;

/// How long a member has to say which secrets it has installed.
const PEER_TIMEOUT: Duration = Duration::from_millis(1500);

type Result<T> = std::result::Result<T, ActionError>;

/// Which step a convergence check is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Use,
    Remove,
}

impl Daemon {
    /// Makes node.conf and the keyring follow the committed plan (nothing before the first
    /// rotation). Logs fingerprints only.
    pub(crate) fn sync_secrets(&self) {
        let Ok(node) = self.node() else { return };
        let Some((used, others)) = node.read(|s| s.secrets.materialize()) else {
            return;
        };
        let cfg = self.config();
        if cfg.secret != used || cfg.secrets_accepted != others {
            let edit =
                self.try_edit_config(|doc| crate::config::place_secrets(doc, &used, &others));
            if let Err(e) = edit {
                tracing::warn!("cannot write the rotated secrets into node.conf: {e}");
                return;
            }
        }
        let keyring = self.config().keyring();
        if keyring.fingerprints() != self.peers.keyring().fingerprints() {
            let fps = keyring.fingerprints();
            tracing::info!(uses = %fps[0], accepts = ?fps, "cluster secrets installed from the rotation plan");
            self.set_keyring(keyring);
        }
    }

    /// This node's installed fingerprints, judged against `plan`.
    fn own_secrets(&self, plan: &Secrets) -> NodeSecrets {
        let fps = self.peers.keyring().fingerprints();
        let mut accepts = fps.clone();
        accepts.sort();
        accepts.dedup();
        let mut node = NodeSecrets {
            node: self.name(),
            reachable: true,
            uses: fps.first().cloned(),
            accepts,
            ..NodeSecrets::default()
        };
        node.converged = converged(&node, plan);
        node
    }

    /// `cluster_secret_list`: the plan and each member's installed fingerprints.
    pub async fn secret_list(self: &Arc<Self>, local: bool) -> Result<SecretsReport> {
        let node = self.node()?;
        let (plan, members) = node.read(|s| {
            let members: Vec<(String, String)> = s
                .nodes
                .iter()
                .map(|(n, r)| (n.clone(), r.addr.clone()))
                .collect();
            (s.secrets.clone(), members)
        });
        let me = self.name();
        let mut nodes = vec![self.own_secrets(&plan)];
        if !local {
            let asks = members
                .into_iter()
                .filter(|(n, _)| *n != me)
                .map(|(n, addr)| {
                    let d = self.clone();
                    let plan = plan.clone();
                    tokio::spawn(async move { d.peer_secrets(n, &addr, &plan).await })
                });
            for h in asks.collect::<Vec<_>>() {
                if let Ok(n) = h.await {
                    nodes.push(n);
                }
            }
            nodes.sort_by(|a, b| a.node.cmp(&b.node));
        }
        Ok(SecretsReport {
            node: me,
            converged: nodes.iter().all(|n| n.reachable && n.converged),
            plan: SecretPlan {
                uses: plan.used.clone(),
                accepts: plan.accepted_ids(),
                removed: plan.removed.iter().cloned().collect(),
            },
            nodes,
        })
    }

    /// Member `name`'s own answer to `cluster_secret_list`.
    async fn peer_secrets(&self, name: String, addr: &str, plan: &Secrets) -> NodeSecrets {
        let answer = self
            .peers
            .call_typed(
                addr,
                &api::options::SecretList { local: true },
                PEER_TIMEOUT,
            )
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| {
                r.nodes
                    .into_iter()
                    .find(|n| n.node == name)
                    .ok_or_else(|| format!("{addr} is answered by {}, not {name}", r.node))
            });
        match answer {
            Ok(mut n) => {
                n.converged = converged(&n, plan);
                n
            }
            Err(e) => NodeSecrets {
                node: name,
                error: Some(e),
                ..NodeSecrets::default()
            },
        }
    }

    /// `cluster_secret_add`: commits a new accepted secret (given, or generated here).
    pub async fn secret_add(self: &Arc<Self>, given: Option<String>) -> Result<SecretStepDone> {
        let secret = given.unwrap_or_else(super::random_secret);
        raft::secrets::check_secret(&secret)
            .map_err(|e| ActionError::bad(format!("option secret: {e}")))?;
        let first = self.node()?.read(|s| s.secrets.used.is_none());
        let current = first.then(|| SecretValue(self.config().secret));
        let secret = SecretValue(secret);
        let key_id = secret.fingerprint();
        let committed = self.propose(Command::AddSecret { secret, current }).await?;
        tracing::info!(%key_id, "secret rotation: new secret added (accepted, not used yet)");
        Ok(SecretStepDone {
            step: RotationStep::Add,
            key_id,
            committed,
            unreachable: Vec::new(),
        })
    }

    /// `cluster_secret_use` and `cluster_secret_remove`: checks that the reachable members
    /// converged on the step before (unless `force`), then commits.
    pub async fn secret_step(
        self: &Arc<Self>,
        action: Action,
        o: api::options::SecretStep,
    ) -> Result<SecretStepDone> {
        let (step, cmd) = match action {
            Action::ClusterSecretUse => (
                Step::Use,
                Command::UseSecret {
                    key_id: o.key_id.clone(),
                },
            ),
            _ => (
                Step::Remove,
                Command::RemoveSecret {
                    key_id: o.key_id.clone(),
                },
            ),
        };
        // Refused early on this node's copy of the plan (the leader checks again).
        let plan = self.node()?.read(|s| s.secrets.clone());
        raft::secrets::validate(&plan, &cmd).map_err(|e| ActionError::bad(e.to_string()))?;
        let report = self.secret_list(false).await?;
        let lagging = lagging(&report, step, &o.key_id);
        if !lagging.is_empty() && !o.force {
            return Err(ActionError::new(
                Status::Error,
                refusal(step, &o.key_id, &lagging),
            ));
        }
        let committed = self.propose(cmd).await?;
        let (name, done) = match step {
            Step::Use => ("use", RotationStep::Use),
            Step::Remove => ("remove", RotationStep::Remove),
        };
        tracing::info!(key_id = %o.key_id, forced = o.force && !lagging.is_empty(), "secret rotation: {name} committed");
        Ok(SecretStepDone {
            step: done,
            key_id: o.key_id,
            committed,
            unreachable: report
                .nodes
                .iter()
                .filter(|n| !n.reachable)
                .map(|n| n.node.clone())
                .collect(),
        })
    }
}

/// Whether `n` uses and accepts exactly what `plan` says (any secret before a rotation).
fn converged(n: &NodeSecrets, plan: &Secrets) -> bool {
    match &plan.used {
        None => n.reachable,
        Some(used) => {
            n.reachable && n.uses.as_ref() == Some(used) && n.accepts == plan.accepted_ids()
        }
    }
}

/// Reachable members not ready for `step` on `key_id`: for `use`, those that do not
/// accept it yet; for `remove`, those that do not use the plan's secret yet.
fn lagging(report: &SecretsReport, step: Step, key_id: &str) -> Vec<String> {
    report
        .nodes
        .iter()
        .filter(|n| n.reachable)
        .filter(|n| match step {
            Step::Use => !n.accepts.iter().any(|k| k == key_id),
            Step::Remove => n.uses != report.plan.uses,
        })
        .map(|n| n.node.clone())
        .collect()
}

fn refusal(step: Step, key_id: &str, lagging: &[String]) -> String {
    let nodes = lagging.join(", ");
    match step {
        Step::Use => format!(
            "not using secret {key_id}: node(s) {nodes} do not accept it yet (om cluster secret \
             list shows each node); wait for them, or pass --force"
        ),
        Step::Remove => format!(
            "not removing secret {key_id}: node(s) {nodes} do not use the current secret yet \
             (om cluster secret list shows each node); wait for them, or pass --force"
        ),
    }
}
