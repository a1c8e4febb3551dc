//! The peer protocol's frames: `len (u32 BE) ‖ codec(Envelope)`. Requests carry an id and a
//! group; responses carry the id back, so many RPCs of many groups are in flight on one
//! connection at once.
//!
//! The encoded bytes are pinned by golden tests (`raft/tests/golden.rs`): variants and fields
//! are only ever appended, and a change that cannot be an append raises
//! [`PEER_PROTOCOL_VERSION`].

use std::io;

use raftflow_storage::codec;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use crate::command::{Command, Outcome};
use crate::consensus::{RaftReply, RaftRequest};

/// Sent in every frame; a peer speaking another version is refused.
pub const PEER_PROTOCOL_VERSION: u16 = 3;
/// Largest frame accepted (snapshots travel in one frame).
pub const MAX_FRAME_BYTES: usize = codec::MAX_VALUE_BYTES;
/// Frames queued for one connection's writer before senders wait.
pub(crate) const WRITE_QUEUE_FRAMES: usize = 4096;
/// A connection's reads go through a buffer this large, so one system call takes in every
/// frame that has arrived instead of two calls per frame (length, then body).
pub(crate) const READ_BUFFER_BYTES: usize = 64 << 10;

#[derive(Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub(crate) version: u16,
    pub(crate) frame: Frame,
}

#[derive(Serialize, Deserialize)]
pub(crate) enum Frame {
    Request {
        id: u64,
        group: u64,
        rpc: PeerRpc,
    },
    Response {
        id: u64,
        reply: Result<PeerReply, String>,
    },
}

#[derive(Serialize, Deserialize)]
pub(crate) enum PeerRpc {
    /// One of Raft's own messages for the group.
    Raft(RaftRequest),
    /// Whether the group exists here and has Raft state (used before bootstrapping a cluster).
    Initialized,
    /// Client work for the group's leader.
    Forward(Forward),
    /// One of Raft's own messages for replica `replica` of the group: refused unless that is
    /// the replica this node holds (an old incarnation never gets a new one's messages).
    RaftFor { replica: u64, request: RaftRequest },
    /// Create the group here with `members` (replica id to address) as its voters, unless it
    /// has Raft state already: what the member creating a cluster asks of a group's first
    /// voters. Answered with `Initialized(true)`.
    Initialize {
        members: std::collections::BTreeMap<u64, crate::NodeAddr>,
    },
}

/// Client work a node hands to the leader of a group over the peer connection.
#[derive(Debug, Serialize, Deserialize)]
pub enum Forward {
    /// Propose `command` and answer its outcome; give up after `timeout_ms`.
    Propose { command: Command, timeout_ms: u64 },
    /// Confirm leadership with a quorum and answer the log index a linearizable read must see
    /// applied (etcd's ReadIndex, served to a follower).
    ReadIndex { timeout_ms: u64 },
    /// Run `query` on the leader's replica, after a read index when `linearizable`.
    Query {
        query: crate::query::Query,
        linearizable: bool,
        timeout_ms: u64,
    },
    /// Change the group's members (the membership driver's steps), as its leader.
    Membership {
        change: MembershipChange,
        timeout_ms: u64,
    },
}

/// A change of a group's members, made by its leader. Each is idempotent: made again after
/// it was made, it changes nothing and answers the same. Variants are only ever appended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add `replica` (on the node at `addr`) as a learner unless it is in the group, and say
    /// whether it has caught up.
    AddLearner { replica: u64, addr: crate::NodeAddr },
    /// Make `voters` the voters, through a joint configuration; others leave the group.
    SetVoters { voters: Vec<u64> },
    /// Remove learners that are no longer wanted.
    RemoveLearners { replicas: Vec<u64> },
}

/// The leader's answer to a [`Forward`].
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardReply {
    Outcome(Box<Outcome>),
    ReadIndex(u64),
    Answer(crate::query::Answer),
    /// The group's members after a [`MembershipChange`] (replica ids), and whether the
    /// replica it added has caught up.
    Members {
        voters: Vec<u64>,
        learners: Vec<u64>,
        caught_up: bool,
    },
}

/// Why a [`Forward`] was not served.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardError {
    /// The receiver does not lead the group; it names the node it believes does.
    NotLeader(Option<u64>),
    /// No leader, no quorum, a timeout or an unreachable peer: retry later.
    Unavailable(String),
    /// The leader's data disk is (nearly) full.
    StorageFull(String),
    Failed(String),
    /// No connection to the node asked could be made: the work was not sent (only ever
    /// made by the sender, never sent).
    NotSent(String),
}

#[derive(Serialize, Deserialize)]
pub(crate) enum PeerReply {
    Raft(RaftReply),
    Initialized(bool),
    Forward(Result<ForwardReply, ForwardError>),
}

pub(crate) fn encode_frame(frame: Frame) -> io::Result<Vec<u8>> {
    let envelope = Envelope {
        version: PEER_PROTOCOL_VERSION,
        frame,
    };
    let mut out = codec::encode_after(4, &envelope)?;
    let len = out.len() - 4;
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::other(format!(
            "frame of {len} bytes is too large"
        )));
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

pub(crate) async fn read_frame(
    rd: &mut (impl tokio::io::AsyncRead + Unpin),
) -> io::Result<Envelope> {
    let len = rd.read_u32().await? as usize;
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::other(format!(
            "frame of {len} bytes is too large"
        )));
    }
    // Grow the buffer as bytes arrive: a peer that only claims a huge frame gets no memory.
    let mut buf = Vec::with_capacity(len.min(1 << 20));
    let read = (&mut *rd).take(len as u64).read_to_end(&mut buf).await?;
    if read != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "frame cut short",
        ));
    }
    Ok(codec::decode(&buf)?)
}

pub(crate) async fn write_frames(wr: impl AsyncWriteExt + Unpin, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut wr = BufWriter::with_capacity(64 << 10, wr);
    while let Some(frame) = rx.recv().await {
        if wr.write_all(&frame).await.is_err() {
            return;
        }
        // Keep writing while more frames wait; flush when the queue runs dry.
        while let Ok(frame) = rx.try_recv() {
            if wr.write_all(&frame).await.is_err() {
                return;
            }
        }
        if wr.flush().await.is_err() {
            return;
        }
    }
}
