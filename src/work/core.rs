//! The pure core of work units: states, the events that move a unit between them, what
//! the runtime must do about each, and which pending units to start. No files, processes
//! or clocks here (the time is a parameter), so every rule is a unit test, the way
//! `model::placement::plan` decides placement and the monitor only enacts it.

use serde::Deserialize;
use serde::Serialize;

/// A unit's state, numbered as Receptor numbers them (`State` in `work list`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum State {
    /// Submitted, waiting for a slot to run in (or its ttl runs out first).
    Pending = 0,
    /// Its command runs.
    Running = 1,
    /// Its command exited 0.
    Succeeded = 2,
    /// Its command failed, could not start, outgrew a limit, outlived its ttl, or the
    /// daemon stopped while it ran; `detail` says which.
    Failed = 3,
    /// Canceled by `work cancel`.
    Canceled = 4,
}

impl State {
    /// Receptor's number for it.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Its name (`StateName` in `work list`).
    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "Pending",
            State::Running => "Running",
            State::Succeeded => "Succeeded",
            State::Failed => "Failed",
            State::Canceled => "Canceled",
        }
    }

    /// Whether the unit is over (its stdout will not grow any more).
    pub fn is_final(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Canceled)
    }
}

/// What happened to a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Its command was started with this process id.
    Started {
        /// The process (and process group) id.
        pid: u32,
    },
    /// Its command could not be started.
    SpawnFailed(String),
    /// Its command exited with this status (128 + signal when killed by one).
    Exited(i32),
    /// Its stdout grew past the result limit.
    ResultTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// `work cancel`.
    Cancel,
    /// Its ttl ran out before it started.
    TtlExpired,
    /// A new daemon found it in this state on disk.
    Recovered,
}

/// What the runtime must do after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond recording the new state.
    Record,
    /// Kill the unit's process group, then record.
    Kill,
}

/// A transition the core refuses, with the reason for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The part of a unit the core decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Life {
    /// Its state.
    pub state: State,
    /// Why it is in that state (empty when it says it all).
    pub detail: String,
    /// Its process while it runs (or ran, when a new daemon finds it `Running`).
    pub pid: Option<u32>,
}

/// Applies `ev` to a unit: its new life and what the runtime must do, or a refusal.
pub fn step(life: &Life, ev: &Event) -> Result<(Life, Effect), Refused> {
    use State::*;
    let to = |state: State, detail: String, effect: Effect| {
        let pid = if state == Running { life.pid } else { None };
        Ok((Life { state, detail, pid }, effect))
    };
    match (life.state, ev) {
        (Pending, Event::Started { pid }) => Ok((
            Life {
                state: Running,
                detail: format!("running, pid {pid}"),
                pid: Some(*pid),
            },
            Effect::Record,
        )),
        (Pending, Event::SpawnFailed(why)) => {
            to(Failed, format!("cannot start: {why}"), Effect::Record)
        }
        (Pending, Event::TtlExpired) => to(
            Failed,
            "ttl expired before the unit could start".into(),
            Effect::Record,
        ),
        (Pending, Event::Cancel) => to(
            Canceled,
            "canceled before it started".into(),
            Effect::Record,
        ),
        (Running, Event::Exited(0)) => to(Succeeded, "exit status 0".into(), Effect::Record),
        (Running, Event::Exited(code)) => to(Failed, exit_detail(*code), Effect::Record),
        (Running, Event::ResultTooLarge { limit }) => to(
            Failed,
            format!("stdout grew past the {limit}-byte result limit; the command was killed"),
            Effect::Kill,
        ),
        (Running, Event::Cancel) => to(Canceled, "canceled while running".into(), Effect::Kill),
        (Running, Event::Recovered) => to(
            Failed,
            match life.pid {
                Some(pid) => format!("the daemon stopped while the unit ran (pid {pid})"),
                None => "the daemon stopped while the unit ran".into(),
            },
            Effect::Kill,
        ),
        (Pending, Event::Recovered) => Ok((life.clone(), Effect::Record)),
        (s, Event::Recovered) if s.is_final() => Ok((life.clone(), Effect::Record)),
        (s, Event::Cancel) if s.is_final() => Err(Refused(format!(
            "the unit is {}: only a pending or running unit can be canceled",
            s.name()
        ))),
        (s, ev) => Err(Refused(format!("a {} unit cannot take {ev:?}", s.name()))),
    }
}

fn exit_detail(code: i32) -> String {
    if code > 128 {
        format!("killed by signal {}", code - 128)
    } else if code < 0 {
        "the command's status could not be read".into()
    } else {
        format!("exit status {code}")
    }
}

/// A pending unit, as `plan` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// Its id.
    pub id: String,
    /// When it was submitted (ms since the epoch).
    pub submitted_ms: u64,
    /// Its ttl, if it has one (ms).
    pub ttl_ms: Option<u64>,
}

/// What to do with the pending units now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Start these, in this order.
    pub start: Vec<String>,
    /// Their ttl ran out: fail these.
    pub expire: Vec<String>,
}

/// Which pending units start now (oldest first, up to `max_running` running at once) and
/// which outlived their ttl (counted from submission, as Receptor counts it).
pub fn plan(waiting: &[Waiting], running: usize, max_running: usize, now_ms: u64) -> Plan {
    let mut queue: Vec<&Waiting> = waiting.iter().collect();
    queue.sort_by(|a, b| (a.submitted_ms, &a.id).cmp(&(b.submitted_ms, &b.id)));
    let mut out = Plan::default();
    let mut slots = max_running.saturating_sub(running);
    for w in queue {
        let expired = w
            .ttl_ms
            .is_some_and(|ttl| now_ms >= w.submitted_ms.saturating_add(ttl));
        if expired {
            out.expire.push(w.id.clone());
        } else if slots > 0 {
            slots -= 1;
            out.start.push(w.id.clone());
        }
    }
    out
}

/// Longest unit id.
pub const MAX_UNIT_ID: usize = 32;

/// Checks a unit id given by a client: 1 to 32 ASCII letters and digits (ids name
/// directories under `var/work/`: nothing else may reach the path).
pub fn check_unit_id(id: &str) -> Result<(), Refused> {
    if id.is_empty() || id.len() > MAX_UNIT_ID || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        let shown: String = id.chars().take(40).collect();
        return Err(Refused(format!(
            "unitid {shown:?}: expected 1 to {MAX_UNIT_ID} ASCII letters and digits"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life(state: State) -> Life {
        Life {
            state,
            detail: String::new(),
            pid: None,
        }
    }

    #[test]
    fn a_unit_runs_then_ends_in_one_final_state() {
        let (run, e) = step(&life(State::Pending), &Event::Started { pid: 42 }).unwrap();
        assert_eq!(
            (run.state, run.pid, e),
            (State::Running, Some(42), Effect::Record)
        );
        let (ok, _) = step(&run, &Event::Exited(0)).unwrap();
        assert_eq!(ok.state, State::Succeeded);
        assert_eq!(ok.pid, None);
        let (bad, _) = step(&run, &Event::Exited(3)).unwrap();
        assert_eq!(
            (bad.state, bad.detail.as_str()),
            (State::Failed, "exit status 3")
        );
        let (sig, _) = step(&run, &Event::Exited(137)).unwrap();
        assert_eq!(sig.detail, "killed by signal 9");
        let (big, e) = step(&run, &Event::ResultTooLarge { limit: 10 }).unwrap();
        assert_eq!((big.state, e), (State::Failed, Effect::Kill));
        assert!(big.detail.contains("10-byte"), "{}", big.detail);
        let (c, e) = step(&run, &Event::Cancel).unwrap();
        assert_eq!((c.state, e), (State::Canceled, Effect::Kill));
        // Final states refuse everything but a recovery scan.
        for s in [State::Succeeded, State::Failed, State::Canceled] {
            assert!(step(&life(s), &Event::Cancel)
                .unwrap_err()
                .0
                .contains(s.name()));
            assert!(step(&life(s), &Event::Exited(0)).is_err());
            assert!(step(&life(s), &Event::Started { pid: 1 }).is_err());
            assert_eq!(step(&life(s), &Event::Recovered).unwrap().0.state, s);
        }
        assert!(step(&life(State::Pending), &Event::Exited(0)).is_err());
        assert!(step(&run, &Event::Started { pid: 7 }).is_err());
    }

    #[test]
    fn a_restart_fails_what_ran_and_keeps_what_waited() {
        let ran = Life {
            state: State::Running,
            detail: String::new(),
            pid: Some(9),
        };
        let (after, e) = step(&ran, &Event::Recovered).unwrap();
        assert_eq!((after.state, e), (State::Failed, Effect::Kill));
        assert!(after.detail.contains("daemon stopped") && after.detail.contains('9'));
        let (p, _) = step(&life(State::Pending), &Event::Recovered).unwrap();
        assert_eq!(p.state, State::Pending);
        let (x, _) = step(&life(State::Pending), &Event::TtlExpired).unwrap();
        assert_eq!(x.state, State::Failed);
        let (x, _) = step(&life(State::Pending), &Event::Cancel).unwrap();
        assert_eq!(x.state, State::Canceled);
    }

    #[test]
    fn plan_starts_the_oldest_within_the_slots_and_expires_by_ttl() {
        let w = |id: &str, at: u64, ttl: Option<u64>| Waiting {
            id: id.into(),
            submitted_ms: at,
            ttl_ms: ttl,
        };
        let units = [w("c", 30, None), w("a", 10, Some(5)), w("b", 20, Some(100))];
        let p = plan(&units, 1, 2, 16);
        assert_eq!(p.expire, vec!["a"]);
        assert_eq!(p.start, vec!["b"]);
        let p = plan(&units, 0, 8, 12);
        assert_eq!(p.start, vec!["a", "b", "c"]);
        assert!(p.expire.is_empty());
        assert_eq!(plan(&units, 5, 2, 0).start, Vec::<String>::new());
    }

    #[test]
    fn unit_ids_cannot_reach_outside_their_directory() {
        check_unit_id("aB3x").unwrap();
        for bad in ["", "../etc", "a/b", ".", "x y", &"a".repeat(33), "é"] {
            let e = check_unit_id(bad).unwrap_err();
            assert!(e.0.starts_with("unitid"), "{e}");
        }
    }
}
