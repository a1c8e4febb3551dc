//! How applied state reaches the tasks that wait on it: long polls wait for a task to become
//! ready, and each group leader's clock waits for the group's next deadline.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::{watch, Notify};

#[derive(Debug)]
pub struct Signals {
    /// Bumped whenever an apply on this node made a task ready, in any group.
    ready: watch::Sender<u64>,
    /// Each group's earliest deadline on this replica.
    deadlines: Mutex<BTreeMap<u64, u64>>,
    deadlines_changed: Notify,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            ready: watch::Sender::new(0),
            deadlines: Mutex::new(BTreeMap::new()),
            deadlines_changed: Notify::new(),
        }
    }
}

impl Signals {
    pub fn task_ready(&self) {
        self.ready.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every later [`Signals::task_ready`].
    pub fn subscribe_ready(&self) -> watch::Receiver<u64> {
        self.ready.subscribe()
    }

    pub fn set_deadline(&self, group: u64, due_ms: Option<u64>) {
        let mut d = self.deadlines.lock().expect("deadlines lock");
        let changed = match due_ms {
            Some(due) => d.insert(group, due) != Some(due),
            None => d.remove(&group).is_some(),
        };
        drop(d);
        if changed {
            self.deadlines_changed.notify_one();
        }
    }

    /// `(group, earliest deadline)` of every group that has one.
    pub fn deadlines(&self) -> Vec<(u64, u64)> {
        let d = self.deadlines.lock().expect("deadlines lock");
        d.iter().map(|(g, due)| (*g, *due)).collect()
    }

    /// Resolves at the next change of any deadline (or at once if one changed unobserved).
    pub async fn deadlines_changed(&self) {
        self.deadlines_changed.notified().await
    }
}
