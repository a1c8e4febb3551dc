//! How applied state reaches the tasks that wait on it: long polls wait for a task to become
//! ready, and each group leader's clock waits for the group's next deadline.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

#[derive(Debug)]
pub struct Signals {
    /// Bumped whenever an apply on this node made a task ready, in any group.
    ready: watch::Sender<u64>,
    /// Each group's earliest deadline on this replica.
    deadlines: Mutex<BTreeMap<u64, u64>>,
    deadlines_changed: Notify,
    /// Per group: a stamp this replica applied and when (on its monotonic clock).
    clocks: Mutex<BTreeMap<u64, (u64, Instant)>>,
    /// Per group and task type: where ready-queue scans start (see [`Signals::ready_floor`]).
    ready_floors: Mutex<BTreeMap<u64, HashMap<String, Vec<u8>>>>,
    /// Bumped whenever this node's meta replica applied something (or installed a snapshot):
    /// what the node caches of the meta group's rows (the slot table) is read again.
    meta_version: std::sync::atomic::AtomicU64,
}

/// How far a leader's stamp may run ahead of the group's time as this node extrapolates it
/// from the last applied stamp with its monotonic clock.
pub const MAX_CLOCK_LEAD: Duration = Duration::from_secs(1);

impl Default for Signals {
    fn default() -> Self {
        Signals {
            ready: watch::Sender::new(0),
            deadlines: Mutex::new(BTreeMap::new()),
            deadlines_changed: Notify::new(),
            clocks: Mutex::new(BTreeMap::new()),
            ready_floors: Mutex::new(BTreeMap::new()),
            meta_version: std::sync::atomic::AtomicU64::new(1),
        }
    }
}

impl Signals {
    pub fn meta_changed(&self) {
        self.meta_version
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    pub fn meta_version(&self) -> u64 {
        self.meta_version.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn task_ready(&self) {
        self.ready.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Where scans of `group`'s ready queue of `task_type` may start: just after the last key
    /// a lease took. Every key up to it is deleted, since a lease takes the queue's first keys
    /// and a key's `seq` is the log index that made its task ready, so a key queued later
    /// sorts after it. Starting there skips the deletion markers of every task leased before,
    /// which RocksDB's iterator would otherwise step over one by one until compaction.
    pub fn ready_floor(&self, group: u64, task_type: &str) -> Option<Vec<u8>> {
        let floors = self.ready_floors.lock().expect("floors lock");
        floors.get(&group)?.get(task_type).cloned()
    }

    /// Records that a lease in `group` took the ready-queue keys of `task_type` up to `last`.
    pub fn raise_ready_floor(&self, group: u64, task_type: &str, last: &[u8]) {
        let key = raftflow_storage::key_after(last);
        let mut floors = self.ready_floors.lock().expect("floors lock");
        let of_group = floors.entry(group).or_default();
        match of_group.get_mut(task_type) {
            Some(floor) if *floor >= key => {}
            Some(floor) => *floor = key,
            None => {
                of_group.insert(task_type.to_string(), key);
            }
        }
    }

    /// Forgets `group`'s floors (its state was replaced by a snapshot).
    pub fn forget_ready_floors(&self, group: u64) {
        self.ready_floors
            .lock()
            .expect("floors lock")
            .remove(&group);
    }

    /// Forgets everything this node remembered of its replica of `group`: the replica is
    /// gone, or a new one (a new incarnation, empty) takes its place. A floor of the old
    /// replica's ready queue would hide the new one's tasks from apply, and its replicas
    /// would lease differently.
    pub fn forget_group(&self, group: u64) {
        self.forget_ready_floors(group);
        self.deadlines
            .lock()
            .expect("deadlines lock")
            .remove(&group);
        self.deadlines_changed.notify_waiters();
    }

    /// A receiver that sees every later [`Signals::task_ready`].
    pub fn subscribe_ready(&self) -> watch::Receiver<u64> {
        self.ready.subscribe()
    }

    /// The stamp a leader of `group` gives a command: its wall clock, kept between the
    /// group's time as this node extrapolates it (the last stamp it applied plus its
    /// monotonic clock since) and [`MAX_CLOCK_LEAD`] beyond. So group time never goes back
    /// when leadership moves to a node whose clock is behind (deadlines set by a fast leader
    /// still come due), and a wall clock that jumps ahead (a bad NTP step) moves lease
    /// expiries, backoffs and timers by at most the lead, not by the jump.
    pub fn stamp(&self, group: u64, wall_ms: u64) -> u64 {
        let clocks = self.clocks.lock().expect("clocks lock");
        match clocks.get(&group) {
            Some((stamp, at)) => {
                let extrapolated = stamp + at.elapsed().as_millis() as u64;
                wall_ms.clamp(
                    extrapolated,
                    extrapolated + MAX_CLOCK_LEAD.as_millis() as u64,
                )
            }
            None => wall_ms,
        }
    }

    /// Records that this replica applied `stamp` in `group` just now. A stamp ahead of the
    /// extrapolated time (a leader running fast, capped by [`Signals::stamp`]) does not
    /// move the reference, so a fast clock cannot ratchet the group's time forward entry by
    /// entry.
    pub fn observe_stamp(&self, group: u64, stamp: u64) {
        let mut clocks = self.clocks.lock().expect("clocks lock");
        let now = Instant::now();
        match clocks.get(&group) {
            Some((s, at)) if stamp > s + at.elapsed().as_millis() as u64 => {}
            _ => {
                clocks.insert(group, (stamp, now));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_that_jumps_ahead_moves_group_time_by_at_most_the_lead() {
        let s = Signals::default();
        assert_eq!(s.stamp(1, 5_000), 5_000, "no reference yet: the wall clock");
        s.observe_stamp(1, 5_000);
        let hour = 3_600_000;
        // Entry after entry from a leader whose wall clock jumped an hour ahead.
        for _ in 0..100 {
            let stamp = s.stamp(1, 5_000 + hour);
            assert!(stamp <= 5_000 + 1_000 + 100, "stamp ran away to {stamp}");
            s.observe_stamp(1, stamp);
        }
        // A clock that is behind the group's time does not take it back.
        assert!(s.stamp(1, 10) >= 5_000);
        // An honest clock is taken as it is.
        let honest = 5_000 + 50;
        assert_eq!(s.stamp(1, honest), honest);
        assert_eq!(s.stamp(2, 42), 42, "groups are separate");
    }
}
