//! Cluster secrets committed through Raft: the rotation plan every node converges on.
//!
//! Before any rotation the plan is empty and each node uses node.conf's `cluster.secret`.
//! The first `AddSecret` records the proposer's secret in use together with the new one;
//! from then on the plan holds every accepted secret (by fingerprint), which one clients
//! use, and the fingerprints removed for good. A secret is only ever shown as its
//! [`fingerprint`]: [`SecretValue`]'s `Debug` is redacted, and events name fingerprints.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use serde::Serialize;
use sha2::Digest;

use crate::apply::CommandError;
use crate::command::Command;
use crate::event::Event;
use crate::event::Field;
use crate::event::FieldValue;
use crate::event::Subject;

/// The fewest characters a cluster secret may have (16 random bytes in hex).
pub const MIN_SECRET_LEN: usize = 32;
/// The most characters a cluster secret may have.
pub const MAX_SECRET_LEN: usize = 1024;

/// A secret's public name: the first 8 hex digits of its SHA-256.
pub fn fingerprint(secret: &[u8]) -> String {
    let digest = sha2::Sha256::digest(secret);
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// A cluster secret's value; serialized as is (it travels in the log), never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValue(pub String);

impl SecretValue {
    /// The value.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its fingerprint.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.0.as_bytes())
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<secret {}>", self.fingerprint())
    }
}

/// Why a secret value cannot be used; never contains the value.
pub fn check_secret(value: &str) -> Result<(), String> {
    if value.len() < MIN_SECRET_LEN {
        return Err(format!(
            "a secret has at least {MIN_SECRET_LEN} characters (16 random bytes in hex), this one has {}",
            value.len()
        ));
    }
    if value.len() > MAX_SECRET_LEN {
        return Err(format!(
            "a secret has at most {MAX_SECRET_LEN} characters, this one has {}",
            value.len()
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a secret is printable ASCII without spaces".into());
    }
    Ok(())
}

/// The rotation plan (`ClusterState.secrets`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secrets {
    /// Every secret nodes accept, by fingerprint.
    #[serde(default)]
    pub accepted: BTreeMap<String, SecretValue>,
    /// The fingerprint of the secret nodes use as clients; `None`: no rotation yet, each
    /// node uses its node.conf `cluster.secret`.
    #[serde(default)]
    pub used: Option<String>,
    /// Fingerprints removed: never accepted again, never added again.
    #[serde(default)]
    pub removed: BTreeSet<String>,
}

impl Secrets {
    /// What a node installs: the secret it uses and the others it accepts (fingerprint
    /// order), or `None` before the first rotation.
    pub fn materialize(&self) -> Option<(String, Vec<String>)> {
        let used = self.used.as_ref()?;
        let value = self.accepted.get(used)?.expose().to_string();
        let others = self
            .accepted
            .iter()
            .filter(|(fp, _)| *fp != used)
            .map(|(_, v)| v.expose().to_string())
            .collect();
        Some((value, others))
    }

    /// The accepted fingerprints.
    pub fn accepted_ids(&self) -> Vec<String> {
        self.accepted.keys().cloned().collect()
    }
}

/// Validates a rotation command against the plan (`Command::AddSecret`, `UseSecret`,
/// `RemoveSecret`; any other command is accepted here). `apply` runs it; a proposer may
/// run it first on its own copy of the plan, to refuse early.
pub fn validate(plan: &Secrets, cmd: &Command) -> Result<(), CommandError> {
    match cmd {
        Command::AddSecret { secret, current } => {
            check_value(secret)?;
            let fp = secret.fingerprint();
            if plan.removed.contains(&fp) {
                return Err(CommandError::SecretRemoved { key_id: fp });
            }
            if plan.accepted.get(&fp).is_some_and(|v| v != secret) {
                return Err(invalid(format!(
                    "its key id {fp} is another secret's: generate another one"
                )));
            }
            if plan.used.is_none() {
                let current = current.as_ref().ok_or_else(|| {
                    invalid("the first rotation needs the secret in use (option current)".into())
                })?;
                check_value(current)?;
                if current.fingerprint() == fp {
                    return Err(invalid(format!("secret {fp} is already the one in use")));
                }
            }
            Ok(())
        }
        Command::UseSecret { key_id } => accepted(plan, key_id),
        Command::RemoveSecret { key_id } => {
            accepted(plan, key_id)?;
            if plan.used.as_ref() == Some(key_id) {
                return Err(CommandError::SecretInUse {
                    key_id: key_id.clone(),
                });
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Applies a validated rotation command; events name fingerprints only.
pub(crate) fn mutate(plan: &mut Secrets, cmd: &Command, ev: &mut Vec<Event>) {
    match cmd {
        Command::AddSecret { secret, current } => {
            if plan.used.is_none() {
                let current = current.clone().expect("validated");
                let fp = current.fingerprint();
                accept(plan, current, ev);
                ev.push(Event::change(
                    Subject::Secrets,
                    Some(Field::Used),
                    None,
                    Some(fp.clone().into()),
                ));
                plan.used = Some(fp);
            }
            accept(plan, secret.clone(), ev);
        }
        Command::UseSecret { key_id } if plan.used.as_ref() != Some(key_id) => {
            let old = plan.used.replace(key_id.clone());
            ev.push(Event::change(
                Subject::Secrets,
                Some(Field::Used),
                old.map(FieldValue::Text),
                Some(key_id.clone().into()),
            ));
        }
        Command::RemoveSecret { key_id } => {
            plan.accepted.remove(key_id);
            plan.removed.insert(key_id.clone());
            ev.push(Event::change(
                Subject::Secrets,
                Some(Field::Accepted(key_id.clone())),
                Some(accepted_marker()),
                None,
            ));
        }
        _ => {}
    }
}

fn accept(plan: &mut Secrets, value: SecretValue, ev: &mut Vec<Event>) {
    let fp = value.fingerprint();
    if plan.accepted.insert(fp.clone(), value).is_none() {
        ev.push(Event::change(
            Subject::Secrets,
            Some(Field::Accepted(fp.clone())),
            None,
            Some(accepted_marker()),
        ));
    }
}

fn accepted(plan: &Secrets, key_id: &str) -> Result<(), CommandError> {
    if plan.accepted.contains_key(key_id) {
        return Ok(());
    }
    if plan.removed.contains(key_id) {
        return Err(CommandError::SecretRemoved {
            key_id: key_id.to_string(),
        });
    }
    let list = plan.accepted_ids();
    Err(CommandError::UnknownSecret {
        key_id: key_id.to_string(),
        accepted: if list.is_empty() {
            "none (no rotation yet: `add` a secret first)".into()
        } else {
            list.join(", ")
        },
    })
}

fn check_value(v: &SecretValue) -> Result<(), CommandError> {
    check_secret(v.expose()).map_err(invalid)
}

fn invalid(reason: String) -> CommandError {
    CommandError::InvalidSecret { reason }
}

/// The value an accepted secret has, and a removed one had.
fn accepted_marker() -> FieldValue {
    FieldValue::Text("accepted".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_and_redaction() {
        let v = SecretValue("0123456789abcdef0123456789abcdef".into());
        assert_eq!(v.fingerprint().len(), 8);
        assert_eq!(fingerprint(b"abc"), "ba7816bf");
        let shown = format!("{v:?}");
        assert!(!shown.contains("0123456789"), "{shown}");
        assert!(check_secret("short").is_err());
        assert!(check_secret(&"a b".repeat(20)).is_err());
        assert!(check_secret(v.expose()).is_ok());
    }

    fn value(c: char) -> SecretValue {
        SecretValue(std::iter::repeat_n(c, 40).collect())
    }

    #[test]
    fn add_use_remove() {
        let mut p = Secrets::default();
        let (old, new) = (value('a'), value('b'));
        let add = Command::AddSecret {
            secret: new.clone(),
            current: None,
        };
        assert!(validate(&p, &add).is_err(), "the first add needs current");
        let add = Command::AddSecret {
            secret: new.clone(),
            current: Some(old.clone()),
        };
        validate(&p, &add).unwrap();
        let mut ev = Vec::new();
        mutate(&mut p, &add, &mut ev);
        assert_eq!(p.used, Some(old.fingerprint()));
        assert_eq!(p.materialize().unwrap().1, vec![new.expose().to_string()]);
        let shown = format!("{ev:?}");
        assert!(!shown.contains(new.expose()) && !shown.contains(old.expose()));
        let rm_old = Command::RemoveSecret {
            key_id: old.fingerprint(),
        };
        assert!(matches!(
            validate(&p, &rm_old),
            Err(CommandError::SecretInUse { .. })
        ));
        let use_new = Command::UseSecret {
            key_id: new.fingerprint(),
        };
        validate(&p, &use_new).unwrap();
        mutate(&mut p, &use_new, &mut ev);
        validate(&p, &rm_old).unwrap();
        mutate(&mut p, &rm_old, &mut ev);
        assert_eq!(p.materialize().unwrap(), (new.expose().to_string(), vec![]));
        let again = Command::AddSecret {
            secret: old,
            current: None,
        };
        assert!(matches!(
            validate(&p, &again),
            Err(CommandError::SecretRemoved { .. })
        ));
        let e = validate(
            &p,
            &Command::UseSecret {
                key_id: "zz".into(),
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains(&new.fingerprint()), "{e}");
    }
}
