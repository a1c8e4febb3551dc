//! Leader balancing: every node leads about G/N data groups.

use std::sync::Arc;
use std::time::Duration;

use super::RaftNode;

/// How often the balancer looks at leadership.
const BALANCE_EVERY: Duration = Duration::from_secs(1);

impl RaftNode {
    /// Moves leadership of each data group to its preferred node, so that every node leads
    /// about G/N groups. A group's preferred node is member `(group - 1) mod N` in id order;
    /// leadership moves only to a preferred node whose log has caught up.
    pub(super) async fn balance_leaders(self: Arc<Self>) {
        let ids: Vec<u64> = self.config.members.keys().copied().collect();
        let mut tick = tokio::time::interval(BALANCE_EVERY);
        loop {
            tick.tick().await;
            for group in self.data_groups() {
                let Some(raft) = self.registry.get(group) else {
                    continue;
                };
                let preferred = ids[((group - 1) % ids.len() as u64) as usize];
                if preferred == self.id {
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
