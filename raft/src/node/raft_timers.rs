//! Raft's heartbeats and elections for every group on the node, from one task.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::RaftNode;
use crate::consensus::Role;

/// How often the Raft timer task looks at every group: a third of a heartbeat interval.
const RAFT_TIMER_STEPS_PER_HEARTBEAT: u32 = 3;

impl RaftNode {
    /// Raft's timers for every group from one task, in place of openraft's per-group tick
    /// (which wakes each group about five times per heartbeat interval, most of an idle
    /// node's CPU with many groups). A group this node leads heartbeats every
    /// `heartbeat_ms`; all of them at the same moment, so the frames for one peer leave in one
    /// write. A group that has heard from no leader or candidate for its election timeout
    /// (drawn anew from `[election_min_ms, election_max_ms)` after each attempt) starts a
    /// Pre-Vote, as openraft's own timer would.
    pub(super) async fn run_raft_timers(self: Arc<Self>) {
        use rand::Rng;
        let timing = self.config.timing;
        let heartbeat = Duration::from_millis(timing.heartbeat_ms);
        let draw = || {
            Duration::from_millis(
                rand::thread_rng().gen_range(timing.election_min_ms..timing.election_max_ms),
            )
        };
        let mut step = tokio::time::interval(heartbeat / RAFT_TIMER_STEPS_PER_HEARTBEAT);
        step.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_heartbeat = tokio::time::Instant::now();
        // Per group: the election timeout in force and when this node last campaigned.
        let mut timeouts: BTreeMap<u64, (Duration, Option<tokio::time::Instant>)> = BTreeMap::new();
        loop {
            step.tick().await;
            let now = tokio::time::Instant::now();
            let beat = now >= next_heartbeat;
            if beat {
                next_heartbeat = now + heartbeat;
            }
            for (group, raft, contact) in self.registry.all_with_contact() {
                match raft.role() {
                    Role::Leader => {
                        // A leader hears from itself: when it steps down, its silence starts
                        // now, not when it last followed someone.
                        contact.touch();
                        if beat {
                            raft.heartbeat().await;
                        }
                    }
                    Role::Follower | Role::Candidate => {
                        let (timeout, campaigned) = timeouts.entry(group).or_insert((draw(), None));
                        let quiet = contact.silence() >= *timeout
                            && campaigned.is_none_or(|t| now.duration_since(t) >= *timeout);
                        if quiet {
                            tracing::debug!(group, "no leader heard within the election timeout");
                            *campaigned = Some(now);
                            *timeout = draw();
                            raft.elect().await;
                        }
                    }
                    Role::Learner | Role::Shutdown => {}
                }
            }
        }
    }
}
