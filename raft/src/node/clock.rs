//! The leaders' clock: where time enters the state machine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{now_ms, RaftNode, META_GROUP};
use crate::command::Command;

/// How often the clock looks at leadership and deadlines when nothing wakes it sooner; a
/// group whose leadership this node just won is ticked within this time.
const CLOCK_IDLE_CHECK: Duration = Duration::from_millis(100);
/// How soon the clock retries a tick that failed (lost leadership, no quorum).
const TICK_RETRY: Duration = Duration::from_millis(50);

impl RaftNode {
    /// The leaders' clock: for every data group this node leads, proposes a `Tick` once the
    /// group's earliest deadline (lease expiry, retry backoff, timer) has passed on this
    /// node's clock. Time thus enters the state machine only through log entries, and a new
    /// leader picks up the deadlines its replica already holds.
    pub(super) async fn run_clock(self: Arc<Self>) {
        let mut in_flight: BTreeMap<u64, JoinHandle<()>> = BTreeMap::new();
        // Per group, the group time before which a failed or slow tick is not proposed again.
        let mut retry_at: BTreeMap<u64, u64> = BTreeMap::new();
        loop {
            in_flight.retain(|_, h| !h.is_finished());
            let now = now_ms();
            let mut wake = now + CLOCK_IDLE_CHECK.as_millis() as u64;
            for (group, due) in self.signals.deadlines() {
                if group == META_GROUP || !self.is_leader(group) {
                    continue;
                }
                let due = due.max(retry_at.get(&group).copied().unwrap_or(0));
                // The group's time as a tick would be stamped now (see `Signals::stamp`).
                let group_now = self.signals.stamp(group, now);
                if due > group_now {
                    wake = wake.min(now + (due - group_now));
                    continue;
                }
                if in_flight.contains_key(&group) {
                    wake = wake.min(now + TICK_RETRY.as_millis() as u64);
                    continue;
                }
                // In group time, like `due`: this node's wall clock may be far from it.
                retry_at.insert(group, group_now + TICK_RETRY.as_millis() as u64);
                let node = self.clone();
                in_flight.insert(
                    group,
                    tokio::spawn(async move {
                        if let Err(e) = node.propose(group, Command::Tick).await {
                            tracing::debug!(group, error = %e, "tick failed");
                        }
                    }),
                );
            }
            let sleep = Duration::from_millis(wake.saturating_sub(now_ms()));
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.signals.deadlines_changed() => {}
            }
        }
    }
}
