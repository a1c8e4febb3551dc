//! Raft for raftflow: a metadata group and many data groups per node on openraft, the state
//! machine that applies workflow commands, the peer transport, and placement of workflows on
//! groups (the hash ring).
//!
//! The crate's rooms:
//! - [`command`] and [`tables`]: what the log carries and what the state rows hold;
//! - `apply`: the apply logic, a pure function of the rows and a command (no openraft, no
//!   RocksDB: it reads through a trait and returns the rows to write);
//! - `consensus`: openraft, and only there; `GroupRaft` is the handle to one replica;
//! - `transport`: frames, connections and the server between nodes;
//! - `proposer`: a leader's batching of client commands into entries;
//! - `node`: routing, the leaders' clock, Raft timers, bootstrap, balancing;
//! - [`ring`]: which group a workflow lives in.
//!
//! The API layer uses [`RaftNode`], [`Command`] and [`Outcome`].

mod apply;
pub mod command;
mod consensus;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod golden;
pub mod mutant;
mod node;
mod proposer;
pub mod query;
pub mod ring;
pub mod signals;
pub mod tables;
mod transport;

pub use command::{Command, DefinitionVersion, LeasedTask, Outcome, Refusal};
pub use consensus::{
    GroupStatus, NodeAddr, RaftReply, RaftRequest, Timing, LOG_KEPT_BEHIND_SNAPSHOT,
    SNAPSHOT_EVERY_ENTRIES,
};
pub use node::{
    NodeConfig, NodeView, RaftCounters, RaftNode, SlotMoveView, COPY_CHUNK_BYTES, DATA_FORMAT,
    DEFAULT_MIN_FREE_DISK_BYTES, META_GROUP, SLOTS_PER_MOVE,
};
pub use query::{Answer, HistoryEntry, Query};
pub use raftflow_storage::{Store, SyncStats};
pub use transport::{client_port_acceptor, PeerTls};

/// Errors of the raft layer; each maps to one API error code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This node does not lead the group; `leader` is who does, if known.
    #[error("not the leader; leader is {leader:?}")]
    NotLeader { leader: Option<(u64, NodeAddr)> },
    /// No leader or no quorum right now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The leader's data disk is (nearly) full: writes are refused.
    #[error("storage full: {0}")]
    StorageFull(String),
    #[error("storage: {0}")]
    Storage(#[from] raftflow_storage::StorageError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// This node holds no replica of the group (or no such group exists).
    #[error("no group {0} on this node")]
    NoSuchGroup(u64),
    #[error("configuration: {0}")]
    Config(String),
    /// A node cannot be removed: the rest could not hold every group's replicas.
    #[error("{0}")]
    NotEnoughNodes(String),
    /// The only serving data group cannot be retired.
    #[error("{0}")]
    LastGroup(String),
    #[error("fatal: {0}")]
    Fatal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The node id part of a replica id.
const NODE_BITS: u64 = 0xFFFF_FFFF;

/// The id of a group's replica on `node` in its `incarnation`: the node's id in the low 32
/// bits, the incarnation above. The replicas a cluster is created with are incarnation 0 (their
/// ids are their nodes' ids); a replica added later gets the group's next incarnation, so a
/// group that returns to a node it left starts a new replica there (openraft's docs warn that a
/// reused identity can elect a leader on an old configuration).
pub fn replica_id(node: u64, incarnation: u64) -> u64 {
    (incarnation << 32) | (node & NODE_BITS)
}

/// The node a replica id belongs to.
pub fn node_of(replica: u64) -> u64 {
    replica & NODE_BITS
}

/// RFC 3339 UTC with millisecond precision: how the API (and engine history payloads) write
/// times.
pub fn rfc3339(ms: u64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}
