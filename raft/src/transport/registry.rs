//! Where incoming peer RPCs go: the groups this node runs, and who serves forwarded client
//! work.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::frames::{Forward, ForwardError, ForwardReply};
use crate::consensus::GroupRaft;

/// Serves forwarded client work on the leader (implemented by the node).
pub trait Forwarder: Send + Sync + 'static {
    fn serve(
        &self,
        group: u64,
        work: Forward,
    ) -> futures::future::BoxFuture<'static, Result<ForwardReply, ForwardError>>;
}

/// The groups this node runs, by id, and who serves forwarded work: where incoming peer RPCs
/// go. It also notes when each group last heard from a leader or candidate (for the node's
/// election timers).
#[derive(Default)]
pub struct Registry {
    groups: RwLock<BTreeMap<u64, (GroupRaft, Arc<Contact>)>>,
    pub(crate) forwarder: std::sync::OnceLock<Arc<dyn Forwarder>>,
}

/// When a group last received an append (a leader's) or a vote request (a candidate's).
#[derive(Debug)]
pub struct Contact {
    epoch: Instant,
    /// Milliseconds since `epoch`.
    at_ms: AtomicU64,
}

impl Contact {
    fn new() -> Self {
        Contact {
            epoch: Instant::now(),
            at_ms: AtomicU64::new(0),
        }
    }

    /// Records contact now: a message from a leader or candidate, or this node leading.
    pub(crate) fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.at_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Time since the last contact (or since the group started here).
    pub fn silence(&self) -> Duration {
        let last = Duration::from_millis(self.at_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

impl Registry {
    /// Sets who serves forwarded work; until then it is refused as unavailable.
    pub fn set_forwarder(&self, f: Arc<dyn Forwarder>) {
        let _ = self.forwarder.set(f);
    }

    pub fn insert(&self, group: u64, raft: GroupRaft) {
        self.groups
            .write()
            .expect("registry lock")
            .insert(group, (raft, Arc::new(Contact::new())));
    }

    /// Forgets `group`, returning its replica.
    pub fn remove(&self, group: u64) -> Option<GroupRaft> {
        self.groups
            .write()
            .expect("registry lock")
            .remove(&group)
            .map(|(r, _)| r)
    }

    pub fn get(&self, group: u64) -> Option<GroupRaft> {
        self.get_with_contact(group).map(|(r, _)| r)
    }

    pub fn all(&self) -> Vec<(u64, GroupRaft)> {
        self.all_with_contact()
            .into_iter()
            .map(|(g, r, _)| (g, r))
            .collect()
    }

    /// Every group with its contact record.
    pub fn all_with_contact(&self) -> Vec<(u64, GroupRaft, Arc<Contact>)> {
        self.groups
            .read()
            .expect("registry lock")
            .iter()
            .map(|(g, (r, c))| (*g, r.clone(), c.clone()))
            .collect()
    }

    /// Time since this node last heard from a leader or candidate of `group`, or led it.
    pub fn silence(&self, group: u64) -> Option<Duration> {
        let groups = self.groups.read().expect("registry lock");
        groups.get(&group).map(|(_, contact)| contact.silence())
    }

    pub(crate) fn get_with_contact(&self, group: u64) -> Option<(GroupRaft, Arc<Contact>)> {
        self.groups
            .read()
            .expect("registry lock")
            .get(&group)
            .cloned()
    }
}
