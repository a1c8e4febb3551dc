//! Everything that names openraft's types lives under this module, so an openraft upgrade
//! touches one place: the type configuration, the log store, the state machine and the peer
//! transport.

pub(crate) mod engine;
pub(crate) mod log_store;
pub(crate) mod network;
pub(crate) mod state_machine;
pub(crate) mod tx;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::command::{Outcome, Stamped};

/// Addresses of a node, as stored in Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The HTTP API address (host:port).
    pub client: String,
    /// The peer (Raft) address (host:port).
    pub peer: String,
}

openraft::declare_raft_types!(
    /// raftflow's Raft types.
    pub TypeConfig:
        D = Stamped,
        R = Outcome,
        NodeId = u64,
        Node = NodeAddr,
);

pub type Raft = openraft::Raft<TypeConfig, state_machine::GroupStateMachine>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub use openraft::ServerState;

/// Timing of every group, chosen for many groups on few cores: a leader sends a heartbeat
/// every `heartbeat_ms`, a follower that hears nothing for a random time in
/// `[election_min_ms, election_max_ms)` starts an election.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_ms: 150,
            election_min_ms: 750,
            election_max_ms: 1500,
        }
    }
}

/// Log entries after which a group builds a snapshot and purges the log behind it.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 20_000;
/// Entries kept in the log behind a snapshot, so briefly lagging followers catch up from the
/// log instead of a snapshot.
pub const LOG_KEPT_BEHIND_SNAPSHOT: u64 = 5_000;

/// The log index in an encoded applied-state row.
pub(crate) fn applied_index(row: &[u8]) -> crate::Result<Option<u64>> {
    state_machine::applied_index(row)
}

pub(crate) fn raft_config(
    group: u64,
    timing: Timing,
    snapshot_every: u64,
    keep_behind: u64,
) -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: format!("group-{group}"),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_min_ms,
        election_timeout_max: timing.election_max_ms,
        install_snapshot_timeout: 10_000,
        max_payload_entries: 512,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: keep_behind,
        enable_pre_vote: Some(true),
        // A leader sends entries to followers before its own fsync covers them, so after a
        // crash its log may lack a tail that a follower holds. Resuming leadership in the same
        // term would then write different entries under the same log ids, and that follower
        // would keep (and apply) the old ones. A restarted node always stands for a new term.
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    Arc::new(config.validate().expect("raft config is valid"))
}

#[cfg(test)]
mod conformance {
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::StorageError;
    use raftflow_storage::Store;

    use super::log_store::GroupLogStore;
    use super::state_machine::GroupStateMachine;
    use super::TypeConfig;

    struct Builder;

    impl StoreBuilder<TypeConfig, GroupLogStore, GroupStateMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, GroupLogStore, GroupStateMachine), StorageError<TypeConfig>>
        {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(dir.path()).expect("open store");
            // A neighbour group with its own rows proves ranges stay apart.
            let group = 7;
            let log = GroupLogStore::new(group, store.clone());
            let sm = GroupStateMachine::open(group, store, Default::default())
                .expect("open state machine");
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage conformance suite against the multi-group RocksDB store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite_passes() {
        Suite::test_all(Builder).await.expect("storage suite");
    }

    /// The snapshot openraft builds (only for its meta) has the current position but no rows,
    /// and installing it fails instead of wiping a replica; the one a follower gets has both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_built_snapshot_is_meta_only_and_cannot_be_installed() {
        use openraft::entry::RaftEntry;
        use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
        let log_id = openraft::testing::log_id::<TypeConfig>;

        let (_dir, _log, mut sm) = Builder.build().await.unwrap();
        let entry = super::Entry::new_blank(log_id(1, 1, 1));
        let stream = futures::stream::iter([Ok((entry, None))]);
        sm.apply(stream).await.unwrap();

        let built = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(built.meta.last_log_id, Some(log_id(1, 1, 1)));
        assert!(built.snapshot.is_empty());
        let full = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a snapshot");
        assert_eq!(full.meta, built.meta);
        assert!(!full.snapshot.is_empty());

        let (_dir2, _log2, mut other) = Builder.build().await.unwrap();
        assert!(other
            .install_snapshot(&built.meta, built.snapshot)
            .await
            .is_err());
        other
            .install_snapshot(&full.meta, full.snapshot)
            .await
            .unwrap();
        assert_eq!(
            other.applied_state().await.unwrap().0,
            Some(log_id(1, 1, 1))
        );
    }
}
