//! The agent API's declarative configuration (Zeek's `get_configuration` and
//! `set_configuration`): every service's config text and the cluster parameters as one
//! document. A deployment is validated in full before anything commits, runs on the
//! leader one at a time, commits the difference through Raft (parameters, then created
//! and updated services, then deletions, which are orchestrated: `global_expect =
//! deleted` stops the instances first), and is answered with one result per member: did
//! it apply the last change within the timeout.
//!
//! The changes are separate Raft commands: a failure part-way says which committed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use raft::state::GlobalExpect;
use raft::ClusterState;
use raft::Command;

use super::actions::ActionError;
use super::Daemon;
use crate::api;
use crate::api::options;
use crate::api::options::Configuration;
use crate::api::status::OwnStatus;
use crate::api::status::OwnView;
use crate::api::Action;
use crate::model::service::ServiceConfig;
use crate::wire::Status;

/// The longest a deployment waits for the members to apply it.
const MAX_DEPLOY_WAIT: Duration = Duration::from_secs(60);

/// The most services one document may hold (every one is a Raft command).
const MAX_SERVICES: usize = 1024;

impl Daemon {
    /// `get_configuration`: the document as this node has applied it.
    pub(super) fn get_configuration(&self) -> Result<options::ConfigurationReport, ActionError> {
        let node = self.node()?;
        let applied = node.metrics().last_applied.map_or(0, |l| l.index);
        Ok(node.read(|s| {
            let mut r = options::ConfigurationReport {
                applied,
                ..Default::default()
            };
            r.config.params = s.params.clone();
            for (name, svc) in &s.services {
                if svc.global_expect == GlobalExpect::Deleted {
                    r.deleting.push(name.clone());
                    continue;
                }
                r.config.services.insert(name.clone(), svc.config.clone());
                r.versions.insert(name.clone(), svc.version);
            }
            r
        }))
    }

    /// `set_configuration`: on the leader (forwarded there), one deployment at a time.
    pub(super) async fn set_configuration(
        self: &Arc<Self>,
        o: options::SetConfiguration,
    ) -> Result<options::Deployment, ActionError> {
        validate(&o.config).map_err(ActionError::bad)?;
        let wait = Duration::from_millis(o.timeout_ms.unwrap_or(10_000)).min(MAX_DEPLOY_WAIT);
        let node = self.node()?;
        if let Some(leader) = self.leader_elsewhere(&node)? {
            let data = self
                .ask_leader(
                    &leader,
                    Action::SetConfiguration.as_str(),
                    api::reply(&o)?,
                    wait + Duration::from_secs(30),
                )
                .await?;
            return api::decode_reply(Action::SetConfiguration, data);
        }
        let Ok(_one) = self.deploying.try_lock() else {
            return Err(ActionError::new(
                Status::Unavailable,
                "another set_configuration is being deployed: retry once it answered",
            ));
        };
        let (mut report, cmds) = node.read(|s| diff(s, &o.config));
        report.dry_run = o.dry_run;
        if o.dry_run {
            return Ok(report);
        }
        for (i, cmd) in cmds.iter().enumerate() {
            match self.propose(cmd.clone()).await {
                Ok(c) => report.index = c.index,
                Err(e) => {
                    let done: Vec<&str> = cmds[..i].iter().map(Command::name).collect();
                    return Err(ActionError::new(
                        e.status,
                        format!(
                            "set_configuration stopped at change {} of {} ({}): {}; committed \
                             before it: {}",
                            i + 1,
                            cmds.len(),
                            cmd.name(),
                            e.message,
                            if done.is_empty() {
                                "nothing".into()
                            } else {
                                done.join(", ")
                            }
                        ),
                    ));
                }
            }
        }
        report.results = self.applied_everywhere(report.index, wait).await;
        Ok(report)
    }

    /// One result per member: whether it has applied `index`, asked until `wait` is over.
    async fn applied_everywhere(
        self: &Arc<Self>,
        index: u64,
        wait: Duration,
    ) -> Vec<options::DeployResult> {
        let members: Vec<String> = self
            .node()
            .map(|n| n.read(|s| s.nodes.keys().cloned().collect()))
            .unwrap_or_default();
        let asks = members.into_iter().map(|m| {
            let d = self.clone();
            async move { d.applied_on(m, index, wait).await }
        });
        super::status::futures_join_all(asks).await
    }

    async fn applied_on(&self, m: String, index: u64, wait: Duration) -> options::DeployResult {
        let deadline = Instant::now() + wait;
        let mut last: (Option<u64>, Option<String>) = (None, None);
        loop {
            last = if m == self.name() {
                let applied = self
                    .node()
                    .ok()
                    .and_then(|n| n.metrics().last_applied)
                    .map(|l| l.index);
                (applied, None)
            } else {
                let ask = OwnStatus::ASK;
                match self
                    .ask_member::<OwnView>(&m, Action::DaemonStatus, &ask, Duration::from_secs(2))
                    .await
                {
                    Ok(v) => (v.view.raft.last_applied, None),
                    Err(e) => (last.0, Some(e.message)),
                }
            };
            let success = last.0.is_some_and(|a| a >= index);
            if success || Instant::now() >= deadline {
                let error = (!success).then(|| {
                    last.1
                        .clone()
                        .unwrap_or_else(|| format!("index {index} not applied within {wait:?}"))
                });
                return options::DeployResult {
                    node: m,
                    success,
                    error,
                    applied: last.0,
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every problem of `config`, one per line: names, service configs, parameters.
fn validate(config: &Configuration) -> Result<(), String> {
    let mut problems = Vec::new();
    if config.services.len() > MAX_SERVICES {
        problems.push(format!(
            "{} services: at most {MAX_SERVICES}",
            config.services.len()
        ));
    }
    for (name, text) in &config.services {
        if let Err(e) = raft::apply::check_name("service", name) {
            problems.push(e.to_string());
        } else if let Err(e) = ServiceConfig::parse(text) {
            problems.push(format!("service {name}: {e}"));
        }
    }
    for (k, v) in &config.params {
        if let Err(e) = super::consent::check_cluster_param(k, Some(v)) {
            problems.push(e);
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the configuration is refused, nothing was committed:\n- {}",
        problems.join("\n- ")
    ))
}

/// What makes `state` hold `config`: the report of the changes and their commands, in
/// the order they commit.
fn diff(state: &ClusterState, config: &Configuration) -> (options::Deployment, Vec<Command>) {
    let mut r = options::Deployment::default();
    let mut cmds = Vec::new();
    for (k, v) in &config.params {
        if state.params.get(k) != Some(v) {
            r.params_set.push(k.clone());
            cmds.push(Command::SetClusterParam {
                key: k.clone(),
                value: Some(v.clone()),
            });
        }
    }
    for k in state
        .params
        .keys()
        .filter(|k| !config.params.contains_key(*k))
    {
        r.params_unset.push(k.clone());
        cmds.push(Command::SetClusterParam {
            key: k.clone(),
            value: None,
        });
    }
    let current: BTreeMap<&String, &raft::state::Service> = state.services.iter().collect();
    for (name, text) in &config.services {
        match current.get(name) {
            None => {
                r.created.push(name.clone());
                cmds.push(Command::CreateService {
                    svc: name.clone(),
                    config: text.clone(),
                });
            }
            Some(svc) if svc.config != *text => {
                r.updated.push(name.clone());
                cmds.push(Command::UpdateService {
                    svc: name.clone(),
                    config: text.clone(),
                    expected_version: Some(svc.version),
                });
            }
            Some(_) => {}
        }
    }
    for (name, svc) in &current {
        if config.services.contains_key(*name) || svc.global_expect == GlobalExpect::Deleted {
            continue;
        }
        r.deleted.push((*name).clone());
        cmds.push(Command::SetServiceMonitor {
            svc: (*name).clone(),
            node: None,
            status: None,
            local_expect: None,
            global_expect: Some(GlobalExpect::Deleted),
            reset_retries: false,
        });
    }
    (r, cmds)
}
