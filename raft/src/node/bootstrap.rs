//! A cluster's first start: the lowest-id node initialises every group once no peer has Raft
//! state, and every start checks that the data directory belongs to this cluster's shape.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use raftflow_storage::Store;

use super::{RaftNode, META_GROUP};
use crate::command::Command;
use crate::tables::Placement;
use crate::transport::PeerClients;
use crate::{node_of, Error, NodeAddr, Result};

/// How often bootstrap asks peers whether the cluster already exists.
const BOOTSTRAP_RETRY: Duration = Duration::from_millis(300);
/// How long one step of creating a group may take before it is tried again.
const BOOTSTRAP_STEP: Duration = Duration::from_secs(5);

/// Where a node records the number of data groups its cluster was created with.
const GROUPS_KEY: &str = "data-groups";
/// Where a member the cluster was created with records the cluster's replication factor.
const FACTOR_KEY: &str = "replication-factor";
/// Where a node records the format of its data directory.
const FORMAT_KEY: &str = "data-format";
/// The format of the rows this version writes and reads: the key layout and the encodings of
/// `raft/tests/golden.rs`. It changes only with a change those tests pin; a node refuses a
/// data directory of another format rather than misread it.
pub const DATA_FORMAT: u32 = 1;

/// Checks, on every start, that the data directory is one this node can serve, and records
/// what a brand-new one is: its format and its number of data groups.
/// A node that joined a running cluster checks the format only: the groups it learns when it
/// joins are the cluster's at that moment, which adding and retiring groups changes.
pub(super) fn check_data_dir(store: &Store, groups: u64, joined: bool) -> Result<()> {
    check_format(store)?;
    if joined {
        return Ok(());
    }
    check_group_count(store, groups)
}

/// The format is stored as four little-endian bytes, not through the codec, so that any
/// version can read it whatever else changed.
fn check_format(store: &Store) -> Result<()> {
    match store.get_raft_meta(META_GROUP, FORMAT_KEY)? {
        Some(bytes) => {
            let found = <[u8; 4]>::try_from(bytes.as_slice()).map(u32::from_le_bytes);
            match found {
                Ok(DATA_FORMAT) => Ok(()),
                Ok(other) => Err(Error::Config(format!(
                    "this data directory is in data format {other}; this raftflow reads format \
                     {DATA_FORMAT} only. Start the raftflow version that wrote it, or start \
                     this one on an empty directory"
                ))),
                Err(_) => Err(Error::Config(format!(
                    "this data directory's format marker is {} bytes long, not 4: it was not \
                     written by raftflow",
                    bytes.len()
                ))),
            }
        }
        None => {
            // Directories made before the marker existed are format 1 too.
            let mut batch = raftflow_storage::Batch::default();
            store.put_raft_meta(
                &mut batch,
                META_GROUP,
                FORMAT_KEY,
                &DATA_FORMAT.to_le_bytes(),
            );
            Ok(store.write_synced(batch)?)
        }
    }
}

/// The number of data groups is fixed when a cluster is created: workflows hash to groups by
/// it, so a node started with another number would look for them in the wrong groups (and
/// groups it never had would wait for a leader forever). The first start records the number;
/// later starts must match it.
fn check_group_count(store: &Store, groups: u64) -> Result<()> {
    check_fixed(store, GROUPS_KEY, groups, |created| {
        format!(
            "this data directory belongs to a cluster created with {created} data groups, not \
             {groups}: the number of groups is fixed when a cluster is created"
        )
    })
}

/// Records `value` under `key` on a brand-new data directory; later, refuses another value
/// with the message `differs` makes of the recorded one.
fn check_fixed(
    store: &Store,
    key: &str,
    value: u64,
    differs: impl FnOnce(u64) -> String,
) -> Result<()> {
    match store.get_raft_meta(META_GROUP, key)? {
        Some(bytes) => {
            let created: u64 = raftflow_storage::codec::decode(&bytes)?;
            if created != value {
                return Err(Error::Config(differs(created)));
            }
            Ok(())
        }
        None => {
            let mut batch = raftflow_storage::Batch::default();
            store.put_raft_meta(
                &mut batch,
                META_GROUP,
                key,
                &raftflow_storage::codec::encode(&value)?,
            );
            Ok(store.write_synced(batch)?)
        }
    }
}

/// The voters a brand-new cluster gives data group `group`: `factor` of the `members`, each
/// group starting one member further along, so that replicas (and first leaders) spread evenly.
pub(crate) fn initial_voters(group: u64, members: &[u64], factor: u64) -> Vec<u64> {
    let n = members.len();
    let start = (group.saturating_sub(1) as usize) % n.max(1);
    (0..(factor as usize).min(n))
        .map(|i| members[(start + i) % n])
        .collect()
}

/// The replication factor is fixed when a cluster is created: a member restarted with another
/// `--replication-factor` is refused rather than left to believe it changed anything.
pub(super) fn check_replication_factor(store: &Store, factor: u64) -> Result<()> {
    check_fixed(store, FACTOR_KEY, factor, |created| {
        format!(
            "this data directory belongs to a cluster created with replication factor \
             {created}, not {factor}: it is fixed when a cluster is created"
        )
    })
}

impl RaftNode {
    /// On the lowest-id member of a cluster that does not exist yet: initialise the metadata
    /// group with every member as a voter, record each data group's placement on
    /// `replication_factor` members ([`initial_voters`]), and have one of those voters
    /// initialise it. A node never initialises while any peer reports Raft state, so a node
    /// whose data directory was wiped rejoins instead of forking the cluster. A restart of the
    /// lowest member finishes a creation a crash interrupted: a group whose first placement
    /// is recorded but which none of its voters holds is initialised then.
    pub(super) async fn bootstrap(self: Arc<Self>, clients: Arc<PeerClients>) {
        if self.config.joined {
            return;
        }
        let lowest = *self
            .config
            .members
            .keys()
            .next()
            .expect("members not empty");
        if self.id != lowest {
            return;
        }
        let Ok(meta) = self.raft(META_GROUP) else {
            return;
        };
        if !meta.is_initialized().await.unwrap_or(true) {
            if !self.cluster_is_fresh(&clients).await {
                tracing::info!(
                    "a peer already has cluster state; joining it instead of initialising"
                );
                return;
            }
            match meta.initialize(self.config.members.clone()).await {
                Ok(()) => tracing::info!(group = META_GROUP, "initialised group"),
                Err(e) => {
                    tracing::warn!(group = META_GROUP, error = %e, "initialise failed");
                    return;
                }
            }
        }
        let members: Vec<u64> = self.config.members.keys().copied().collect();
        for group in 1..=self.config.groups {
            let voters = initial_voters(group, &members, self.config.replication_factor);
            while let Err(e) = self.create_group(&clients, group, &voters).await {
                tracing::debug!(group, error = %e, "creating the group did not complete; retrying");
                tokio::time::sleep(BOOTSTRAP_RETRY).await;
            }
        }
    }

    /// Whether every other member answers that it has no Raft state.
    async fn cluster_is_fresh(&self, clients: &PeerClients) -> bool {
        loop {
            let mut all_answered = true;
            for (id, addr) in &self.config.members {
                if *id == self.id {
                    continue;
                }
                match clients.is_initialized(*id, &addr.peer, META_GROUP).await {
                    Ok(true) => return false,
                    Ok(false) => {}
                    Err(_) => all_answered = false,
                }
            }
            if all_answered {
                return true;
            }
            tokio::time::sleep(BOOTSTRAP_RETRY).await;
        }
    }

    /// Records `group`'s first placement (unless one is recorded) and, while it is that first
    /// placement and none of its voters holds the group, initialises it on them.
    pub(super) async fn create_group(
        &self,
        clients: &PeerClients,
        group: u64,
        voters: &[u64],
    ) -> Result<()> {
        let placement = match self.placement(group) {
            Some(p) => p,
            None => {
                let first = Placement {
                    group,
                    voters: voters.to_vec(),
                    leader: voters.first().copied(),
                    moving: None,
                    epoch: 0,
                };
                let set = Command::SetPlacement {
                    placement: first.clone(),
                    expected: None,
                };
                self.commit(META_GROUP, set, BOOTSTRAP_STEP).await?;
                self.linearize(META_GROUP, BOOTSTRAP_STEP).await?;
                self.placement(group)
                    .ok_or_else(|| Error::Unavailable("placement not applied yet".into()))?
            }
        };
        if placement.epoch != 0 || placement.moving.is_some() {
            return Ok(()); // moved since: it exists
        }
        let members: BTreeMap<u64, NodeAddr> = placement
            .voters
            .iter()
            .map(|r| {
                let addr = self.book.get(node_of(*r)).ok_or_else(|| {
                    Error::Unavailable(format!("no address for node {}", node_of(*r)))
                })?;
                Ok((*r, addr))
            })
            .collect::<Result<_>>()?;
        // This node's replica is asked through its own peer listener, like the others'.
        for (replica, addr) in &members {
            let held = clients
                .is_initialized(node_of(*replica), &addr.peer, group)
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?;
            if held {
                return Ok(());
            }
        }
        // openraft allows the same first membership to be initialised on several voters: on
        // every one that answers, so that a quorum holds it even if one is not up yet (it
        // gets the log from the leader once it is).
        let mut created = Vec::new();
        let mut last_error = None;
        for (replica, addr) in &members {
            let node = node_of(*replica);
            match clients
                .initialize(node, &addr.peer, group, members.clone())
                .await
            {
                Ok(()) => created.push(node),
                Err(e) => last_error = Some(Error::Unavailable(e.to_string())),
            }
        }
        if created.is_empty() {
            return Err(last_error.unwrap_or_else(|| Error::Unavailable("no voters".into())));
        }
        tracing::info!(group, on = ?created, "initialised group");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_keeps_the_group_count_it_was_created_with() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            check_group_count(&store, 4).unwrap();
            check_group_count(&store, 4).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        check_group_count(&store, 4).expect("the same number after a reopen");
        let err = check_group_count(&store, 8).unwrap_err().to_string();
        assert!(err.contains("created with 4 data groups, not 8"), "{err}");
        assert!(check_group_count(&store, 2).is_err());
    }

    #[test]
    fn data_groups_start_spread_over_the_members() {
        let members = [1, 2, 3, 4, 5];
        assert_eq!(initial_voters(1, &members, 3), vec![1, 2, 3]);
        assert_eq!(initial_voters(2, &members, 3), vec![2, 3, 4]);
        assert_eq!(initial_voters(5, &members, 3), vec![5, 1, 2]);
        assert_eq!(initial_voters(6, &members, 3), vec![1, 2, 3]);
        assert_eq!(initial_voters(3, &[1, 2, 3], 3), vec![3, 1, 2]);
        assert_eq!(initial_voters(7, &[4], 1), vec![4]);
        // Ten groups on five nodes: six replicas each, two first voters each.
        let mut load = BTreeMap::<u64, (usize, usize)>::new();
        for g in 1..=10 {
            let v = initial_voters(g, &members, 3);
            load.entry(v[0]).or_default().1 += 1;
            for n in v {
                load.entry(n).or_default().0 += 1;
            }
        }
        assert!(load.values().all(|&l| l == (6, 2)), "{load:?}");
    }

    #[test]
    fn a_data_directory_keeps_the_replication_factor_it_was_created_with() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        check_replication_factor(&store, 3).unwrap();
        check_replication_factor(&store, 3).unwrap();
        let err = check_replication_factor(&store, 5).unwrap_err().to_string();
        assert!(err.contains("replication factor 3, not 5"), "{err}");
    }

    #[test]
    fn a_data_directory_of_another_format_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        check_data_dir(&store, 2, false).expect("a new directory takes this format");
        check_data_dir(&store, 2, false).expect("and keeps it");
        assert_eq!(
            store.get_raft_meta(META_GROUP, FORMAT_KEY).unwrap(),
            Some(DATA_FORMAT.to_le_bytes().to_vec())
        );

        for (marker, expected) in [
            ((DATA_FORMAT + 1).to_le_bytes().to_vec(), "data format 2"),
            (b"garbage".to_vec(), "not written by raftflow"),
        ] {
            let mut batch = raftflow_storage::Batch::default();
            store.put_raft_meta(&mut batch, META_GROUP, FORMAT_KEY, &marker);
            store.write_synced(batch).unwrap();
            let err = check_data_dir(&store, 2, false).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    /// Through the front door: the node does not start, and says why.
    #[tokio::test]
    async fn a_node_refuses_to_start_on_a_data_directory_of_another_format() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(&dir.path().join("db")).unwrap();
            let mut batch = raftflow_storage::Batch::default();
            store.put_raft_meta(&mut batch, META_GROUP, FORMAT_KEY, &99u32.to_le_bytes());
            store.write_synced(batch).unwrap();
        }
        let addr = crate::NodeAddr {
            client: "127.0.0.1:1".into(),
            peer: "127.0.0.1:0".into(),
        };
        let config = crate::NodeConfig {
            id: 1,
            data_dir: dir.path().to_path_buf(),
            peer_listen: "127.0.0.1:0".into(),
            members: [(1, addr)].into(),
            groups: 2,
            replication_factor: 1,
            timing: Default::default(),
            snapshot_every: crate::SNAPSHOT_EVERY_ENTRIES,
            log_kept_behind_snapshot: crate::LOG_KEPT_BEHIND_SNAPSHOT,
            bind_source_ip: None,
            min_free_disk_bytes: 0,
            joined: false,
            peer_tls: None,
        };
        let err = match RaftNode::start(config).await {
            Ok(_) => panic!("a node started on a directory of format 99"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("data format 99"), "{err}");
        assert!(err.contains("reads format 1 only"), "{err}");
    }
}
