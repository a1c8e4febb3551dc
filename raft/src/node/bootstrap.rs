//! A cluster's first start: the lowest-id node initialises every group once no peer has Raft
//! state, and every start checks that the data directory belongs to this cluster's shape.

use std::sync::Arc;
use std::time::Duration;

use raftflow_storage::Store;

use super::{RaftNode, META_GROUP};
use crate::transport::PeerClients;
use crate::{Error, Result};

/// How often bootstrap asks peers whether the cluster already exists.
const BOOTSTRAP_RETRY: Duration = Duration::from_millis(300);

/// Where a node records the number of data groups its cluster was created with.
const GROUPS_KEY: &str = "data-groups";
/// Where a node records the format of its data directory.
const FORMAT_KEY: &str = "data-format";
/// The format of the rows this version writes and reads: the key layout and the encodings of
/// `raft/tests/golden.rs`. It changes only with a change those tests pin; a node refuses a
/// data directory of another format rather than misread it.
pub const DATA_FORMAT: u32 = 1;

/// Checks, on every start, that the data directory is one this node can serve, and records
/// what a brand-new one is: its format and its number of data groups.
pub(super) fn check_data_dir(store: &Store, groups: u64) -> Result<()> {
    check_format(store)?;
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
    match store.get_raft_meta(META_GROUP, GROUPS_KEY)? {
        Some(bytes) => {
            let created: u64 = raftflow_storage::codec::decode(&bytes)?;
            if created != groups {
                return Err(Error::Config(format!(
                    "this data directory belongs to a cluster created with {created} data groups, \
                     not {groups}: the number of groups is fixed when a cluster is created"
                )));
            }
            Ok(())
        }
        None => {
            let mut batch = raftflow_storage::Batch::default();
            store.put_raft_meta(
                &mut batch,
                META_GROUP,
                GROUPS_KEY,
                &raftflow_storage::codec::encode(&groups)?,
            );
            Ok(store.write_synced(batch)?)
        }
    }
}

impl RaftNode {
    /// On the lowest-id member of a cluster that does not exist yet, initialise every group
    /// with all members as voters. A node never initialises while any peer reports Raft state,
    /// so a node whose data directory was wiped rejoins instead of forking the cluster.
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
        if meta.is_initialized().await.unwrap_or(true) {
            return;
        }
        loop {
            let mut all_fresh = true;
            let mut all_answered = true;
            for (id, addr) in &self.config.members {
                if *id == self.id {
                    continue;
                }
                match clients.is_initialized(*id, &addr.peer, META_GROUP).await {
                    Ok(true) => all_fresh = false,
                    Ok(false) => {}
                    Err(_) => all_answered = false,
                }
            }
            if !all_fresh {
                tracing::info!(
                    "a peer already has cluster state; joining it instead of initialising"
                );
                return;
            }
            if all_answered {
                break;
            }
            tokio::time::sleep(BOOTSTRAP_RETRY).await;
        }
        for (group, raft) in self.registry.all() {
            match raft.initialize(self.config.members.clone()).await {
                Ok(()) => tracing::info!(group, "initialised group"),
                Err(e) => tracing::warn!(group, error = %e, "initialise failed"),
            }
        }
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
    fn a_data_directory_of_another_format_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        check_data_dir(&store, 2).expect("a new directory takes this format");
        check_data_dir(&store, 2).expect("and keeps it");
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
            let err = check_data_dir(&store, 2).unwrap_err().to_string();
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
            timing: Default::default(),
            snapshot_every: crate::SNAPSHOT_EVERY_ENTRIES,
            log_kept_behind_snapshot: crate::LOG_KEPT_BEHIND_SNAPSHOT,
            bind_source_ip: None,
            min_free_disk_bytes: 0,
            joined: false,
        };
        let err = match RaftNode::start(config).await {
            Ok(_) => panic!("a node started on a directory of format 99"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("data format 99"), "{err}");
        assert!(err.contains("reads format 1 only"), "{err}");
    }
}
