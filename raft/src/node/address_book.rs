//! Where every node of the cluster can be reached: the members a node started with, every node
//! the meta group has recorded, and every node in the meta group's Raft membership. Routing
//! reads it to reach a group's leader; the membership watcher keeps it current.

use std::collections::BTreeMap;
use std::sync::RwLock;

use crate::consensus::NodeAddr;

#[derive(Debug, Default)]
pub(crate) struct AddressBook(RwLock<BTreeMap<u64, NodeAddr>>);

impl AddressBook {
    pub(crate) fn new(members: BTreeMap<u64, NodeAddr>) -> Self {
        AddressBook(RwLock::new(members))
    }

    pub(crate) fn get(&self, id: u64) -> Option<NodeAddr> {
        self.0.read().expect("address book lock").get(&id).cloned()
    }

    pub(crate) fn all(&self) -> BTreeMap<u64, NodeAddr> {
        self.0.read().expect("address book lock").clone()
    }

    /// The leader another node or openraft named, with its addresses, for a `NotLeader`
    /// answer.
    pub(crate) fn hint(&self, leader: Option<u64>) -> Option<(u64, NodeAddr)> {
        let id = leader?;
        Some((id, self.get(id)?))
    }

    /// Adds or updates `nodes`, and forgets `removed`.
    pub(crate) fn update(&self, nodes: impl IntoIterator<Item = (u64, NodeAddr)>, removed: &[u64]) {
        let mut book = self.0.write().expect("address book lock");
        for (id, addr) in nodes {
            if book.get(&id) != Some(&addr) {
                tracing::info!(node = id, client = %addr.client, peer = %addr.peer, "address book: node known");
                book.insert(id, addr);
            }
        }
        for id in removed {
            if book.remove(id).is_some() {
                tracing::info!(node = id, "address book: node removed");
            }
        }
    }
}
