//! The membership protocol: join, leave, eviction of another node, address change, and the
//! rollback of each. One piece of code, run on the leader's [`Node`] by the daemon and by
//! the simulator alike.
//!
//! Raft's membership (who votes, where each member listens) and the replicated
//! `ClusterState.nodes` (who is a member for the agent) are two records; every operation
//! here changes them in one order, so that a crash between the two steps leaves a state the
//! next attempt completes or undoes:
//! - join: learner (Raft) -> caught up -> voter (Raft) -> `Join` (state). A failure after
//!   the learner was added removes the learner again before the error is returned.
//! - leave / evict: voter removed (Raft) -> `Leave` (state).
//! - address change: refused when another member holds the address (in both records),
//!   then Raft's record (so RPCs go there) -> `SetNodeAddr` (state).
//!
//! Waiting uses openraft's metrics wait, on the runtime's clock: the simulator's is virtual.
//! Forwarding to the leader is the caller's business (it needs a transport).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::apply::CommandError;
use crate::command::Command;
use crate::node::Committed;
use crate::node::Node;
use crate::node::ProposeError;
use crate::types::Member;
use crate::types::NodeId;

/// Why a membership operation was refused or did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// Refused by the rules (name taken, address taken, departed name...): nothing changed.
    #[error(transparent)]
    Refused(#[from] CommandError),
    /// Another node already has this name (the joiner must pick another `node.name`).
    #[error("node name {node:?} is already taken in this cluster; pick another node.name")]
    NameTaken {
        /// The name asked for.
        node: String,
    },
    /// The node to remove is not a member.
    #[error("node {node:?} is not a cluster member")]
    NotMember {
        /// The name asked for.
        node: String,
    },
    /// Removing this voter would leave fewer voters than the operator allowed.
    #[error("removing {node:?} would leave {left} voter(s) ({voters}); a cluster that size loses its quorum with any failure: add a node first, or pass --force")]
    LastVoters {
        /// The node to remove.
        node: String,
        /// Voters left after the removal.
        left: usize,
        /// Those voters' names.
        voters: String,
    },
    /// The leader cannot remove itself from a configuration of two voters.
    #[error("{node:?} leads a configuration of two voters; removing itself could lose the quorum for good: move the leadership to {voters} (or stop {node}) and leave through the new leader")]
    LeaderSelfRemoval {
        /// The leader asked to remove itself.
        node: String,
        /// The other voter.
        voters: String,
    },
    /// The new configuration would have no quorum among the voters the leader reaches.
    #[error("the new configuration would have no quorum among the members this leader reaches (not replicating: {lagging}); bring them back, or fix their address, first")]
    Unreachable {
        /// The voters the leader does not replicate to.
        lagging: String,
    },
    /// The learner did not catch up in time; it was removed again.
    #[error("{node} did not catch up within {after:?}; the learner was removed ({rollback})")]
    CatchUp {
        /// The joining node.
        node: String,
        /// How long it was given.
        after: Duration,
        /// What the rollback did.
        rollback: String,
    },
    /// Raft refused or could not complete a step (not leader, busy, stopped).
    #[error(transparent)]
    Raft(#[from] ProposeError),
}

/// A node admitted as a learner, waiting to be promoted by [`Admission::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "an admitted learner must be completed (promoted) or rolled back"]
pub struct Admission {
    /// The joining node's name.
    pub name: String,
    /// Its Raft id.
    pub id: NodeId,
    /// Its listener address.
    pub addr: String,
    /// The log index of the membership entry that added the learner.
    pub learner_at: u64,
}

/// Where Raft's membership says member `id` listens (where its RPCs go).
pub fn recorded_addr(node: &Node, id: NodeId) -> Option<String> {
    node.metrics()
        .membership_config
        .membership()
        .get_node(&id)
        .map(|mb| mb.addr.clone())
}

/// Who listens at `addr` among the members, other than `except`, in either record.
pub fn addr_holder(node: &Node, addr: &str, except: &str) -> Option<String> {
    let in_state = node.read(|s| {
        s.nodes
            .iter()
            .find(|(n, r)| n.as_str() != except && r.addr == addr)
            .map(|(n, _)| n.clone())
    });
    in_state.or_else(|| {
        node.metrics()
            .membership_config
            .nodes()
            .find(|(_, m)| m.name != except && m.addr == addr)
            .map(|(_, m)| m.name.clone())
    })
}

/// The Raft id of member `name`: from Raft's membership (learners included), else from
/// the replicated node list.
pub fn member_id(node: &Node, name: &str) -> Option<NodeId> {
    let m = node.metrics();
    let in_raft = m
        .membership_config
        .nodes()
        .find(|(_, mb)| mb.name == name)
        .map(|(id, _)| *id);
    in_raft.or_else(|| node.read(|s| s.nodes.get(name).map(|r| r.id)))
}

/// Checks that `name`, whose store has Raft id `id`, may join at `addr` (on the leader),
/// without changing anything.
pub fn check_join(node: &Node, name: &str, id: NodeId, addr: &str) -> Result<(), MembershipError> {
    crate::apply::check_name("node", name)?;
    let refusal = node.read(|s| {
        if crate::apply::departed(s, name, id) {
            return Some(CommandError::NameDeparted { node: name.into() });
        }
        s.nodes
            .iter()
            .find(|(n, r)| r.id == id && n.as_str() != name)
            .map(|(other, _)| CommandError::NodeIdCollision {
                node: name.into(),
                other: other.clone(),
            })
    });
    if let Some(e) = refusal {
        return Err(e.into());
    }
    if member_id(node, name).is_some() {
        return Err(MembershipError::NameTaken { node: name.into() });
    }
    let id_taken = node
        .metrics()
        .membership_config
        .membership()
        .get_node(&id)
        .cloned();
    if let Some(other) = id_taken {
        return Err(CommandError::NodeIdCollision {
            node: name.into(),
            other: other.name,
        }
        .into());
    }
    if let Some(holder) = addr_holder(node, addr, name) {
        return Err(CommandError::AddrTaken {
            addr: addr.into(),
            holder,
        }
        .into());
    }
    Ok(())
}

/// Join, step 1 (on the leader): checks, then adds `name` (Raft id `id`) as a learner.
pub async fn admit(
    node: &Node,
    name: &str,
    id: NodeId,
    addr: &str,
) -> Result<Admission, MembershipError> {
    check_join(node, name, id, addr)?;
    let learner_at = node.add_learner_nowait(id, Member::new(name, addr)).await?;
    Ok(Admission {
        name: name.into(),
        id,
        addr: addr.into(),
        learner_at,
    })
}

impl Admission {
    /// Join, step 2: waits until the learner has caught up (at most `catch_up`), makes it
    /// a voter and commits `Join` (stamped `at_ms`). On any failure the learner is removed
    /// again, and awaited, before the error is returned.
    pub async fn complete(
        self,
        node: &Node,
        at_ms: u64,
        catch_up: Duration,
    ) -> Result<Committed, MembershipError> {
        let result = self.promote(node, at_ms, catch_up).await;
        if let Err(e) = &result {
            let rollback = self.rollback(node).await;
            tracing::warn!(node = %self.name, "join failed ({e}); rollback: {rollback}");
            if let MembershipError::CatchUp { node, after, .. } = e {
                return Err(MembershipError::CatchUp {
                    node: node.clone(),
                    after: *after,
                    rollback,
                });
            }
        }
        result
    }

    async fn promote(
        &self,
        node: &Node,
        at_ms: u64,
        catch_up: Duration,
    ) -> Result<Committed, MembershipError> {
        let (id, at) = (self.id, self.learner_at);
        node.raft
            .wait(Some(catch_up))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .is_some_and(|l| l.index >= at)
                },
                "learner caught up",
            )
            .await
            .map_err(|_| MembershipError::CatchUp {
                node: self.name.clone(),
                after: catch_up,
                rollback: String::new(),
            })?;
        let base: BTreeSet<NodeId> = node
            .metrics()
            .membership_config
            .membership()
            .get_joint_config()
            .last()
            .cloned()
            .unwrap_or_default();
        let mut after = base.clone();
        after.insert(id);
        wait_reachable(node, &[base, after], Some(id), catch_up).await?;
        node.add_voters(BTreeSet::from([id])).await?;
        let cmd = Command::Join {
            node: self.name.clone(),
            addr: self.addr.clone(),
            at_ms,
            id: Some(self.id),
        };
        Ok(node.propose(cmd).await?)
    }

    /// Undoes the admission: removes the learner (or voter, if promotion got that far)
    /// from Raft's membership. Says what it did; never fails silently.
    pub async fn rollback(&self, node: &Node) -> String {
        let in_state = node.read(|s| s.nodes.contains_key(&self.name));
        if in_state {
            return format!("{} had joined: kept", self.name);
        }
        match node.remove_members(BTreeSet::from([self.id])).await {
            Ok(at) => format!("{} removed at index {at}", self.name),
            Err(e) => format!("removing {} failed: {e}", self.name),
        }
    }
}

/// Leave or eviction (on the leader): removes `name` from Raft's voters and learners, then
/// commits `Leave`. Refuses to go below two voters unless `force`, never removes the last
/// voter, never lets the leader remove itself from a two-voter configuration, and refuses a
/// removal whose new configuration has no quorum among the members the leader reaches.
///
/// The voters counted are those of the configuration the change starts from: openraft
/// computes a removal from the *last* half of a joint configuration (a change still in
/// progress), so `[n1,n2,n3] + [n1,n3]` minus n1 is `[n1,n3] + [n3]`, one voter, although
/// the union has three.
pub async fn evict(node: &Node, name: &str, force: bool) -> Result<(), MembershipError> {
    let Some(id) = member_id(node, name) else {
        return Err(MembershipError::NotMember { node: name.into() });
    };
    let m = node.metrics();
    let membership = m.membership_config.membership();
    let in_raft = membership.get_node(&id).is_some();
    let in_state = node.read(|s| s.nodes.contains_key(name));
    let joint = membership.get_joint_config();
    let base: BTreeSet<NodeId> = joint.last().cloned().unwrap_or_default();
    let voter_name = |v: &NodeId| {
        membership
            .get_node(v)
            .map_or(v.to_string(), |n| n.name.clone())
    };
    let voters: Vec<(NodeId, String)> = base
        .iter()
        .filter(|v| **v != id)
        .map(|v| (*v, voter_name(v)))
        .collect();
    let removes_voter = base.contains(&id);
    let names = |vs: &[(NodeId, String)]| {
        vs.iter()
            .map(|(_, n)| n.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    if removes_voter && (voters.is_empty() || (voters.len() < 2 && !force)) {
        if voters.is_empty() {
            return Err(CommandError::LastNode { node: name.into() }.into());
        }
        return Err(MembershipError::LastVoters {
            node: name.into(),
            left: voters.len(),
            voters: names(&voters),
        });
    }
    // The leader removing itself appends the final configuration, in which it is no voter,
    // before anyone else has it. If it then loses power, it never campaigns again (it is not
    // a voter in its own latest configuration), and it refuses its vote to the others (its
    // log is longer); with two voters the other one cannot win without it: quorum lost for
    // good (simulator seed 3708). With three or more, the others are a majority of the old
    // configuration and elect a leader without it.
    if removes_voter && id == node.id && voters.len() < 2 {
        return Err(MembershipError::LeaderSelfRemoval {
            node: name.into(),
            voters: names(&voters),
        });
    }
    if removes_voter {
        let after: BTreeSet<NodeId> = voters.iter().map(|(v, _)| *v).collect();
        wait_reachable(node, &[base, after], None, REACH_WAIT).await?;
    }
    if in_raft {
        node.remove_members(BTreeSet::from([id])).await?;
    }
    if in_state {
        match node.propose(Command::Leave { node: name.into() }).await {
            Ok(_) | Err(ProposeError::Rejected(CommandError::NodeNotFound { .. })) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// How long `evict` waits for the members it needs to be caught up (a follower briefly
/// behind under load is not a reason to refuse).
const REACH_WAIT: Duration = Duration::from_secs(2);

/// [`check_reachable`], retried for up to `within`: lag under load passes, a member that is
/// down or misaddressed does not.
async fn wait_reachable(
    node: &Node,
    configs: &[BTreeSet<NodeId>],
    caught_up: Option<NodeId>,
    within: Duration,
) -> Result<(), MembershipError> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check_reachable(node, configs, caught_up) {
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("membership change waits: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            done => return done,
        }
    }
}

/// Refuses a voter change whose configurations (both halves of the joint configuration
/// openraft goes through) would not each have a majority among the voters the leader
/// currently replicates to: itself, those that have acknowledged everything it applied, and
/// `caught_up` (a learner the caller has just seen catch up).
///
/// openraft uses a configuration from the moment it is appended and accepts no other change
/// until it commits. A change that needs a member the leader cannot reach (down, cut off, or
/// recorded at a wrong address) never commits, and blocks every later change, the address
/// repair included: the cluster is wedged for good.
fn check_reachable(
    node: &Node,
    configs: &[BTreeSet<NodeId>],
    caught_up: Option<NodeId>,
) -> Result<(), MembershipError> {
    let m = node.metrics();
    let applied = m.last_applied.map(|l| l.index);
    let healthy = |v: &NodeId| {
        *v == node.id
            || Some(*v) == caught_up
            || m.replication.as_ref().is_some_and(|r| {
                r.get(v)
                    .cloned()
                    .flatten()
                    .is_some_and(|l| Some(l.index) >= applied)
            })
    };
    let membership = m.membership_config.membership();
    for config in configs {
        let reached = config.iter().filter(|v| healthy(v)).count();
        if reached * 2 <= config.len() {
            let lagging: Vec<String> = config
                .iter()
                .filter(|v| !healthy(v))
                .map(|v| {
                    membership
                        .get_node(v)
                        .map_or(v.to_string(), |n| n.name.clone())
                })
                .collect();
            return Err(MembershipError::Unreachable {
                lagging: lagging.join(" "),
            });
        }
    }
    Ok(())
}

/// A member announced (to this node, leader or not) that it listens at `addr`: route its
/// RPCs there now. Without this, a member whose record is wrong on every node and whose
/// vote the others need could not be reached by any candidate, so no leader would ever be
/// elected to record its address. Ignored for non-members. An address that another
/// member's record holds is taken too: with two records swapped, each member's real address
/// is the other's record, and refusing both announcements left no candidate able to reach
/// either (simulator seed 19553). Routing there is safe: a receiver that is not the member
/// meant refuses the session as misaddressed. Only the leader's `set_addr` refuses a taken
/// address, for the record itself.
pub fn note_announcement(node: &Node, name: &str, addr: &str) {
    let Some(id) = member_id(node, name) else {
        return;
    };
    if let Some(recorded) = recorded_addr(node, id) {
        node.address_book().announce(id, addr, &recorded);
    }
}

/// When a member announces its address again: when it hears from no leader, or its own
/// view of the membership records another address for it (fed in as not fine).
///
/// A leader holding a wrong address for a member (a typo forced past the checks, a record
/// set while the member was away, or a repair that a newer leader's log overwrote) never
/// reaches it, and nothing in Raft tells the member why: it only sees its elections fail.
/// The announcement at start is then not enough, so a member that has known no leader for
/// [`Reannounce::AFTER`] announces again, and again after each wait, doubling up to
/// [`Reannounce::WAIT_MAX`] (an outage of the majority costs one request per wait). An
/// announcement of the address already recorded commits nothing. Pure: the daemon's
/// listener thread and the simulator feed it their clock and their view of the leader.
#[derive(Debug, Clone, Default)]
pub struct Reannounce {
    /// Since when this member has not been fine (no leader known, or its record stale).
    unsettled_since: Option<tokio::time::Instant>,
    /// When the next announcement is due, once one was made in this unsettled period.
    next: Option<tokio::time::Instant>,
    /// The wait after the next announcement.
    wait: Duration,
}

impl Reannounce {
    /// How long without a leader before the first announcement: several election timeouts,
    /// so that an ordinary election never triggers one.
    pub const AFTER: Duration = Duration::from_secs(3);
    /// The longest wait between two announcements.
    pub const WAIT_MAX: Duration = Duration::from_secs(30);

    /// Whether to announce now, given whether all is fine at `now` (this member knows a
    /// leader, and its record is its address).
    pub fn due(&mut self, now: tokio::time::Instant, fine: bool) -> bool {
        if fine {
            *self = Self::default();
            return false;
        }
        let since = *self.unsettled_since.get_or_insert(now);
        if now < self.next.unwrap_or(since + Self::AFTER) {
            return false;
        }
        let wait = self.wait.max(Self::AFTER);
        self.next = Some(now + wait);
        self.wait = (wait * 2).min(Self::WAIT_MAX);
        true
    }
}

/// What [`Reannounce::due`] is fed by the daemon and the simulator alike: whether member `id`
/// (this node, listening at `addr`) knows a leader and its own view records `addr` for it.
pub fn announcement_settled(node: &Node, id: NodeId, addr: &str) -> bool {
    node.metrics().current_leader.is_some() && recorded_addr(node, id).is_none_or(|a| a == addr)
}

/// Address change (on the leader): records that member `name` now listens at `addr`, in
/// Raft's membership (where RPCs go) and then in the state. Refused when another member
/// holds `addr`.
pub async fn set_addr(node: &Node, name: &str, addr: &str) -> Result<(), MembershipError> {
    if let Some(holder) = addr_holder(node, addr, name) {
        return Err(CommandError::AddrTaken {
            addr: addr.into(),
            holder,
        }
        .into());
    }
    let Some(id) = member_id(node, name) else {
        return Err(MembershipError::NotMember { node: name.into() });
    };
    let current = recorded_addr(node, id);
    let in_state = node.read(|s| s.nodes.get(name).map(|r| r.addr.clone()));
    match current {
        None => return Err(MembershipError::NotMember { node: name.into() }),
        // Announced again (every start does): nothing to record.
        Some(a) if a == addr && in_state.as_ref().is_none_or(|s| s == addr) => {
            node.address_book().forget(id);
            return Ok(());
        }
        Some(a) if a == addr => {}
        Some(recorded) => {
            // RPCs go to the announced address at once: a membership change waiting for this
            // member (which would block the record below) can then complete.
            node.address_book().announce(id, addr, &recorded);
            node.set_member(id, Member::new(name, addr)).await?;
            node.address_book().forget(id);
        }
    }
    let cmd = Command::SetNodeAddr {
        node: name.into(),
        addr: addr.into(),
    };
    match node.propose(cmd).await {
        // A learner that has not committed its `Join` yet is only in Raft's record.
        Ok(_) | Err(ProposeError::Rejected(CommandError::NodeNotFound { .. })) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::Reannounce;
    use std::time::Duration;

    /// The announcements (in seconds after the leader was lost) over `secs`, ticking each
    /// 500 ms, with a leader known again during `back`.
    fn announcements(secs: u64, back: std::ops::Range<u64>) -> Vec<f64> {
        let t0 = tokio::time::Instant::now();
        let mut r = Reannounce::default();
        (0..secs * 2)
            .map(|tick| Duration::from_millis(500 * tick))
            .filter(|at| r.due(t0 + *at, back.contains(&at.as_secs())))
            .map(|at| at.as_secs_f64())
            .collect()
    }

    #[test]
    fn a_leaderless_member_announces_after_three_seconds_then_backs_off_to_thirty() {
        assert_eq!(
            announcements(120, 0..0),
            [3.0, 6.0, 12.0, 24.0, 48.0, 78.0, 108.0]
        );
    }

    #[test]
    fn a_leader_heard_from_starts_the_count_again() {
        // Leaderless from 0, a leader during 10..20 s, leaderless again from 20 s.
        assert_eq!(announcements(40, 10..20), [3.0, 6.0, 23.0, 26.0, 32.0]);
    }

    #[test]
    fn a_member_that_knows_its_leader_never_announces() {
        assert!(announcements(300, 0..300).is_empty());
    }
}
