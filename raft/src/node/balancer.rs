//! Leader balancing: every node leads about G/N data groups.

use std::sync::Arc;
use std::time::Duration;

use super::RaftNode;

/// How often the balancer looks at leadership.
const BALANCE_EVERY: Duration = Duration::from_secs(1);

impl RaftNode {
    /// Moves leadership of each data group to its preferred node, so that every node leads
    /// about G/N groups. A group's preferred node is the one its placement names (the
    /// membership driver spreads them), else voter `(group - 1) mod R` of its R voters in id
    /// order; leadership moves only to a preferred replica whose log has caught up.
    pub(super) async fn balance_leaders(self: Arc<Self>) {
        let mut tick = tokio::time::interval(BALANCE_EVERY);
        loop {
            tick.tick().await;
            for group in self.data_groups() {
                let Some(raft) = self.registry.get(group) else {
                    continue;
                };
                let placement = self.placement(group);
                // A replica on its way out is not handed the group (see `change_members_here`).
                let leaving = placement
                    .as_ref()
                    .and_then(|p| p.moving.as_ref())
                    .and_then(|m| m.from);
                let voters: Vec<u64> = raft
                    .membership()
                    .voters
                    .into_iter()
                    .filter(|r| Some(*r) != leaving)
                    .collect();
                if voters.is_empty() || raft.role() != crate::consensus::Role::Leader {
                    continue;
                }
                let named = placement
                    .and_then(|p| p.leader)
                    .and_then(|node| voters.iter().copied().find(|r| crate::node_of(*r) == node));
                let preferred =
                    named.unwrap_or(voters[((group - 1) % voters.len() as u64) as usize]);
                if preferred == raft.replica_id() {
                    continue;
                }
                let caught_up = raft.has_caught_up(preferred);
                if caught_up {
                    tracing::info!(
                        group,
                        to = preferred,
                        "transferring leadership to the preferred node"
                    );
                    raft.transfer_leader(preferred).await;
                }
            }
        }
    }
}
