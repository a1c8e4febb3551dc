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

use super::{GroupRaft, NodeAddr, SnapshotMeta, TypeConfig, Vote};
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
}

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
            RaftRequest::Snapshot { vote, meta, data } => {
                let snapshot = openraft::alias::SnapshotOf::<TypeConfig, Vec<u8>> {
                    meta,
                    snapshot: data,
                };
                RaftReply::Snapshot(
                    raft.install_full_snapshot(vote, snapshot)
                        .await
                        .map_err(|e| s(&e))?,
                )
            }
            RaftRequest::TransferLeader(req) => RaftReply::TransferLeader(
                raft.handle_transfer_leader(req).await.map_err(|e| s(&e))?,
            ),
        })
    }
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
    type SnapshotData = Vec<u8>;

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

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let rpc = self.to_target(RaftRequest::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        });
        let call = self.conn.call(
            self.group,
            rpc,
            option.hard_ttl().max(Duration::from_secs(30)),
        );
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = call => match r {
                Ok(PeerReply::Raft(RaftReply::Snapshot(r))) => Ok(r),
                Ok(_) => Err(into_streaming(CallError::Remote("unexpected reply kind".into()))),
                Err(e) => Err(into_streaming(e)),
            },
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
