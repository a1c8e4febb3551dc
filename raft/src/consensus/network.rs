//! openraft's side of the peer transport: Raft's messages as the frames carry them, the
//! network factory and client openraft sends through, and the serving of a peer's message.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use raftflow_storage::{IncomingSnapshot, SnapshotFile};
use tokio::io::AsyncReadExt;

use super::{GroupRaft, NodeAddr, SnapshotData, SnapshotMeta, TypeConfig, Vote};
use crate::transport::{CallError, PeerClients, PeerConn, PeerReply, PeerRpc};

/// One of Raft's messages to a group's replica on a peer. Variants are only ever appended
/// (the bytes are pinned by `raft/tests/golden.rs`).
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub enum RaftRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        data: Vec<u8>,
    },
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// Bytes `offset..offset + data.len()` of the snapshot file of transfer `transfer` (a
    /// number the sender picks per transfer; offset 0 starts one, replacing any other).
    SnapshotChunk {
        transfer: u64,
        offset: u64,
        data: Vec<u8>,
    },
    /// The end of transfer `transfer`, `len` bytes in all: install it as the snapshot `meta`
    /// from the leader of `vote`.
    SnapshotEnd {
        vote: Vote,
        meta: SnapshotMeta,
        transfer: u64,
        len: u64,
    },
}

/// The bytes of a snapshot file per [`RaftRequest::SnapshotChunk`]: what a transfer holds in
/// memory at a time on either side.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

impl RaftRequest {
    /// Whether the message comes from a leader (an append) or a candidate (a vote): what
    /// resets a follower's election timer.
    pub(crate) fn is_from_leader_or_candidate(&self) -> bool {
        matches!(self, RaftRequest::Append(_) | RaftRequest::Vote(_))
    }
}

/// A replica's answer to a [`RaftRequest`].
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub enum RaftReply {
    Append(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    Snapshot(SnapshotResponse<TypeConfig>),
    TransferLeader(TransferLeaderResponse<TypeConfig>),
    /// How many bytes of the transfer the replica holds.
    SnapshotChunk {
        received: u64,
    },
}

impl GroupRaft {
    /// Serves a peer's Raft message to this replica.
    pub(crate) async fn serve_rpc(&self, req: RaftRequest) -> Result<RaftReply, String> {
        let s = |e: &dyn std::fmt::Display| e.to_string();
        let raft = &self.raft;
        Ok(match req {
            RaftRequest::Append(req) => {
                RaftReply::Append(raft.append_entries(req).await.map_err(|e| s(&e))?)
            }
            RaftRequest::Vote(req) => RaftReply::Vote(raft.vote(req).await.map_err(|e| s(&e))?),
            RaftRequest::PreVote(req) => {
                RaftReply::Vote(raft.pre_vote(req).await.map_err(|e| s(&e))?)
            }
            RaftRequest::Snapshot { .. } => {
                return Err(
                    "a snapshot in one message is no longer taken: this node receives \
                            snapshots in chunks (a newer raftflow)"
                        .into(),
                )
            }
            RaftRequest::TransferLeader(req) => RaftReply::TransferLeader(
                raft.handle_transfer_leader(req).await.map_err(|e| s(&e))?,
            ),
            RaftRequest::SnapshotChunk {
                transfer,
                offset,
                data,
            } => RaftReply::SnapshotChunk {
                received: self.receive_chunk(transfer, offset, data).await?,
            },
            RaftRequest::SnapshotEnd {
                vote,
                meta,
                transfer,
                len,
            } => {
                let file = self.finish_transfer(transfer, len).await?;
                let snapshot = openraft::alias::SnapshotOf::<TypeConfig, SnapshotData> {
                    meta,
                    snapshot: Some(file),
                };
                RaftReply::Snapshot(
                    raft.install_full_snapshot(vote, snapshot)
                        .await
                        .map_err(|e| s(&e))?,
                )
            }
        })
    }

    /// Appends a chunk to the snapshot this replica is receiving; returns the bytes it holds.
    async fn receive_chunk(
        &self,
        transfer: u64,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<u64, String> {
        let mut slot = self.incoming.lock().await;
        if offset == 0 {
            let file = self
                .store
                .receive_snapshot(self.group)
                .map_err(|e| e.to_string())?;
            *slot = Some(Incoming { transfer, file });
        }
        let incoming = match slot.as_mut() {
            Some(i) if i.transfer == transfer => i,
            _ => return Err(format!("no snapshot transfer {transfer} under way here")),
        };
        if incoming.file.received() != offset {
            return Err(format!(
                "snapshot chunk at byte {offset}, but {} bytes were received",
                incoming.file.received()
            ));
        }
        incoming.file.append(&data).map_err(|e| e.to_string())?;
        Ok(incoming.file.received())
    }

    /// The whole file of `transfer`, synced, once all `len` bytes are here.
    async fn finish_transfer(&self, transfer: u64, len: u64) -> Result<SnapshotFile, String> {
        let incoming = match self.incoming.lock().await.take() {
            Some(i) if i.transfer == transfer && i.file.received() == len => i,
            _ => return Err(format!("snapshot transfer {transfer} is not complete here")),
        };
        tokio::task::spawn_blocking(move || incoming.file.finish())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

/// A snapshot a replica is receiving.
pub(crate) struct Incoming {
    transfer: u64,
    file: IncomingSnapshot,
}

fn into_rpc(e: CallError) -> RPCError<TypeConfig> {
    match e {
        CallError::NotSent(e) | CallError::Unreachable(e) => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        CallError::Network(e) => RPCError::Network(NetworkError::new(&e)),
        // A remote failure (group not there yet, node shutting down): back off and retry.
        CallError::Remote(m) => RPCError::Unreachable(Unreachable::new(&io::Error::other(m))),
    }
}

fn into_streaming(e: CallError) -> StreamingError<TypeConfig> {
    match e {
        CallError::NotSent(e) | CallError::Unreachable(e) => {
            StreamingError::Unreachable(Unreachable::new(&e))
        }
        CallError::Network(e) => StreamingError::Network(NetworkError::new(&e)),
        CallError::Remote(m) => StreamingError::Unreachable(Unreachable::new(&io::Error::other(m))),
    }
}

/// openraft's network factory for one group.
pub struct GroupNetwork {
    pub group: u64,
    pub clients: Arc<PeerClients>,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> PeerNetwork {
        PeerNetwork {
            group: self.group,
            target,
            conn: self.clients.conn(crate::node_of(target), &node.peer),
        }
    }
}

/// One group's view of the connection to one peer.
pub struct PeerNetwork {
    group: u64,
    /// The replica messages are for.
    target: u64,
    conn: Arc<PeerConn>,
}

fn unexpected<T>() -> Result<T, CallError> {
    Err(CallError::Remote("unexpected reply kind".into()))
}

impl PeerNetwork {
    async fn send_snapshot(
        &self,
        vote: Vote,
        meta: SnapshotMeta,
        file: SnapshotFile,
        ttl: Duration,
    ) -> Result<SnapshotResponse<TypeConfig>, CallError> {
        let started = std::time::Instant::now();
        let transfer: u64 = rand::random();
        let mut reader = tokio::fs::File::open(file.path())
            .await
            .map_err(CallError::NotSent)?;
        let chunk_ttl = ttl.max(Duration::from_secs(10));
        let mut offset = 0u64;
        loop {
            let mut data = Vec::with_capacity(SNAPSHOT_CHUNK_BYTES);
            (&mut reader)
                .take(SNAPSHOT_CHUNK_BYTES as u64)
                .read_to_end(&mut data)
                .await
                .map_err(CallError::NotSent)?;
            if data.is_empty() {
                break;
            }
            let len = data.len() as u64;
            let rpc = self.to_target(RaftRequest::SnapshotChunk {
                transfer,
                offset,
                data,
            });
            match self.conn.call(self.group, rpc, chunk_ttl).await? {
                PeerReply::Raft(RaftReply::SnapshotChunk { received })
                    if received == offset + len => {}
                _ => return unexpected(),
            }
            offset += len;
        }
        let rpc = self.to_target(RaftRequest::SnapshotEnd {
            vote,
            meta,
            transfer,
            len: offset,
        });
        // Installing rewrites every row of the group on the replica: give it time.
        let reply = self
            .conn
            .call(self.group, rpc, ttl.max(Duration::from_secs(120)))
            .await?;
        let PeerReply::Raft(RaftReply::Snapshot(r)) = reply else {
            return unexpected();
        };
        tracing::info!(
            group = self.group,
            replica = self.target,
            bytes = offset,
            ms = started.elapsed().as_millis() as u64,
            "sent a snapshot"
        );
        Ok(r)
    }

    /// `request` for the target replica.
    fn to_target(&self, request: RaftRequest) -> PeerRpc {
        PeerRpc::RaftFor {
            replica: self.target,
            request,
        }
    }

    /// Sends `rpc` within the option's deadline and takes the reply `pick` expects.
    async fn rpc<T>(
        &self,
        rpc: PeerRpc,
        option: &RPCOption,
        pick: fn(PeerReply) -> Option<T>,
    ) -> Result<T, RPCError<TypeConfig>> {
        match self.conn.call(self.group, rpc, option.hard_ttl()).await {
            Ok(reply) => pick(reply).map_or_else(unexpected, Ok),
            Err(e) => Err(e),
        }
        .map_err(into_rpc)
    }
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(
            self.to_target(RaftRequest::Append(rpc)),
            &option,
            |r| match r {
                PeerReply::Raft(RaftReply::Append(r)) => Some(r),
                _ => None,
            },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(
            self.to_target(RaftRequest::Vote(rpc)),
            &option,
            |r| match r {
                PeerReply::Raft(RaftReply::Vote(r)) => Some(r),
                _ => None,
            },
        )
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(
            self.to_target(RaftRequest::PreVote(rpc)),
            &option,
            |r| match r {
                PeerReply::Raft(RaftReply::Vote(r)) => Some(r),
                _ => None,
            },
        )
        .await
    }

    /// Streams the snapshot file in chunks of [`SNAPSHOT_CHUNK_BYTES`], then asks the replica
    /// to install it: neither side holds more than a chunk of it in memory.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let Some(file) = snapshot.snapshot else {
            let e = io::Error::other("a snapshot without rows cannot be sent");
            return Err(StreamingError::Network(NetworkError::new(&e)));
        };
        let send = self.send_snapshot(vote, snapshot.meta, file, option.hard_ttl());
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send => r.map_err(into_streaming),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(
            self.to_target(RaftRequest::TransferLeader(req)),
            &option,
            |r| match r {
                PeerReply::Raft(RaftReply::TransferLeader(r)) => Some(r),
                _ => None,
            },
        )
        .await
    }
}
