//! Peer transport: one multiplexed TCP connection from this node to each peer, shared by every
//! group (like etcd's peer URLs, separate from the client API).
//!
//! A frame is `len (u32 BE) ‖ codec(Envelope)`. Requests carry an id and a group; responses
//! carry the id back, so many RPCs of many groups are in flight on one connection at once. The
//! writer flushes only when its queue is empty, so a burst of RPCs leaves in few syscalls.
//!
//! Besides Raft's own RPCs, the connection carries client work a node hands to a group's
//! leader ([`Forward`]): a command to propose, or a request for a read index. So a request that
//! lands on a follower costs one more bincode frame each way, not a second HTTP request.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use raftflow_storage::codec;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::{NodeAddr, Raft, SnapshotMeta, TypeConfig, Vote};
use crate::command::{Command, Outcome};

/// Sent in every frame; a peer speaking another version is refused.
pub const PEER_PROTOCOL_VERSION: u16 = 2;
/// Largest frame accepted (snapshots travel in one frame).
pub const MAX_FRAME_BYTES: usize = 512 << 20;
/// Frames queued for one connection's writer before senders wait.
const WRITE_QUEUE_FRAMES: usize = 4096;
/// A connection's reads go through a buffer this large, so one system call takes in every
/// frame that has arrived instead of two calls per frame (length, then body).
const READ_BUFFER_BYTES: usize = 64 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed connect, calls fail fast for this long instead of each trying again.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Serialize, Deserialize)]
struct Envelope {
    version: u16,
    frame: Frame,
}

#[derive(Serialize, Deserialize)]
enum Frame {
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
#[serde(bound = "")]
enum PeerRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        data: Vec<u8>,
    },
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// Whether the group exists here and has Raft state (used before bootstrapping a cluster).
    Initialized,
    /// Client work for the group's leader.
    Forward(Forward),
}

/// Client work a node hands to the leader of a group over the peer connection.
#[derive(Debug, Serialize, Deserialize)]
pub enum Forward {
    /// Propose `command` and answer its outcome; give up after `timeout_ms`.
    Propose { command: Command, timeout_ms: u64 },
    /// Confirm leadership with a quorum and answer the log index a linearizable read must see
    /// applied (etcd's ReadIndex, served to a follower).
    ReadIndex { timeout_ms: u64 },
}

/// The leader's answer to a [`Forward`].
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardReply {
    Outcome(Box<Outcome>),
    ReadIndex(u64),
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
}

/// Serves forwarded client work on the leader (implemented by the node).
pub trait Forwarder: Send + Sync + 'static {
    fn serve(
        &self,
        group: u64,
        work: Forward,
    ) -> futures::future::BoxFuture<'static, Result<ForwardReply, ForwardError>>;
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
enum PeerReply {
    Append(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    Snapshot(SnapshotResponse<TypeConfig>),
    TransferLeader(TransferLeaderResponse<TypeConfig>),
    Initialized(bool),
    Forward(Result<ForwardReply, ForwardError>),
}

/// The groups this node runs, by id, and who serves forwarded work: where incoming peer RPCs
/// go. It also notes when each group last heard from a leader or candidate (for the node's
/// election timers).
#[derive(Default)]
pub struct Registry {
    groups: RwLock<BTreeMap<u64, (Raft, Arc<Contact>)>>,
    forwarder: std::sync::OnceLock<Arc<dyn Forwarder>>,
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

    pub fn insert(&self, group: u64, raft: Raft) {
        self.groups
            .write()
            .expect("registry lock")
            .insert(group, (raft, Arc::new(Contact::new())));
    }

    pub fn get(&self, group: u64) -> Option<Raft> {
        self.get_with_contact(group).map(|(r, _)| r)
    }

    pub fn all(&self) -> Vec<(u64, Raft)> {
        self.all_with_contact()
            .into_iter()
            .map(|(g, r, _)| (g, r))
            .collect()
    }

    /// Every group with its contact record.
    pub fn all_with_contact(&self) -> Vec<(u64, Raft, Arc<Contact>)> {
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

    fn get_with_contact(&self, group: u64) -> Option<(Raft, Arc<Contact>)> {
        self.groups
            .read()
            .expect("registry lock")
            .get(&group)
            .cloned()
    }
}

// ---- server --------------------------------------------------------------------------------

/// Serves peer connections on `listener` until the task is dropped.
pub async fn serve_peers(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                let registry = registry.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, registry).await {
                        tracing::debug!(peer = %addr, error = %e, "peer connection closed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, registry: Arc<Registry>) -> io::Result<()> {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(READ_BUFFER_BYTES, rd);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE_FRAMES);
    let writer = tokio::spawn(write_frames(wr, rx));
    let result = loop {
        let env = match read_frame(&mut rd).await {
            Ok(env) => env,
            Err(e) => break Err(e),
        };
        if env.version != PEER_PROTOCOL_VERSION {
            break Err(io::Error::other(format!(
                "peer speaks protocol {}, this node {PEER_PROTOCOL_VERSION}",
                env.version
            )));
        }
        let Frame::Request { id, group, rpc } = env.frame else {
            break Err(io::Error::other(
                "peer sent a response on a server connection",
            ));
        };
        let registry = registry.clone();
        let tx = tx.clone();
        // The RPC's future (openraft's append or a forwarded command) is large: boxed, it is
        // copied once, not on every move of the task that runs it.
        tokio::spawn(async move {
            let reply = Box::pin(handle(&registry, group, rpc)).await;
            if let Ok(bytes) = encode_frame(Frame::Response { id, reply }) {
                let _ = tx.send(bytes).await;
            }
        });
    };
    drop(tx);
    writer.abort();
    result
}

async fn handle(registry: &Registry, group: u64, rpc: PeerRpc) -> Result<PeerReply, String> {
    if let PeerRpc::Forward(work) = rpc {
        let reply = match registry.forwarder.get() {
            Some(f) => f.serve(group, work).await,
            None => Err(ForwardError::Unavailable("node is starting".into())),
        };
        return Ok(PeerReply::Forward(reply));
    }
    let Some((raft, contact)) = registry.get_with_contact(group) else {
        if matches!(rpc, PeerRpc::Initialized) {
            return Ok(PeerReply::Initialized(false));
        }
        return Err(format!("group {group} is not served by this node"));
    };
    if matches!(rpc, PeerRpc::Append(_) | PeerRpc::Vote(_)) {
        contact.touch();
    }
    let s = |e: &dyn std::fmt::Display| e.to_string();
    Ok(match rpc {
        PeerRpc::Append(req) => {
            PeerReply::Append(raft.append_entries(req).await.map_err(|e| s(&e))?)
        }
        PeerRpc::Vote(req) => PeerReply::Vote(raft.vote(req).await.map_err(|e| s(&e))?),
        PeerRpc::PreVote(req) => PeerReply::Vote(raft.pre_vote(req).await.map_err(|e| s(&e))?),
        PeerRpc::Snapshot { vote, meta, data } => {
            let snapshot = openraft::alias::SnapshotOf::<TypeConfig, Vec<u8>> {
                meta,
                snapshot: data,
            };
            PeerReply::Snapshot(
                raft.install_full_snapshot(vote, snapshot)
                    .await
                    .map_err(|e| s(&e))?,
            )
        }
        PeerRpc::TransferLeader(req) => {
            PeerReply::TransferLeader(raft.handle_transfer_leader(req).await.map_err(|e| s(&e))?)
        }
        PeerRpc::Initialized => {
            PeerReply::Initialized(raft.is_initialized().await.map_err(|e| s(&e))?)
        }
        PeerRpc::Forward(_) => unreachable!("served above"),
    })
}

// ---- framing -------------------------------------------------------------------------------

fn encode_frame(frame: Frame) -> io::Result<Vec<u8>> {
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

async fn read_frame(rd: &mut (impl tokio::io::AsyncRead + Unpin)) -> io::Result<Envelope> {
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

async fn write_frames(wr: impl AsyncWriteExt + Unpin, mut rx: mpsc::Receiver<Vec<u8>>) {
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

// ---- client --------------------------------------------------------------------------------

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<PeerReply, String>>>>>;

struct Live {
    tx: mpsc::Sender<Vec<u8>>,
    pending: Pending,
}

/// This node's connection to one peer, re-established on demand.
struct PeerConn {
    target: u64,
    addr: String,
    local_ip: Option<IpAddr>,
    next_id: AtomicU64,
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
    last_failed_connect: Mutex<Option<Instant>>,
}

impl PeerConn {
    async fn live(&self) -> io::Result<Arc<Live>> {
        let mut guard = self.live.lock().await;
        if let Some(live) = guard.as_ref() {
            if !live.tx.is_closed() {
                return Ok(live.clone());
            }
        }
        if let Some(t) = *self.last_failed_connect.lock().expect("lock") {
            if t.elapsed() < RECONNECT_BACKOFF {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "peer recently unreachable",
                ));
            }
        }
        match self.connect().await {
            Ok(live) => {
                *guard = Some(live.clone());
                Ok(live)
            }
            Err(e) => {
                *self.last_failed_connect.lock().expect("lock") = Some(Instant::now());
                *guard = None;
                Err(e)
            }
        }
    }

    async fn connect(&self) -> io::Result<Arc<Live>> {
        let addr: SocketAddr = tokio::net::lookup_host(&self.addr)
            .await?
            .next()
            .ok_or_else(|| io::Error::other(format!("{} resolves to nothing", self.addr)))?;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = self.local_ip {
            // Fault tests cut links between 127.0.0.x addresses: traffic must leave from ours.
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let mut rd = BufReader::with_capacity(READ_BUFFER_BYTES, rd);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_FRAMES);
        let pending: Pending = Arc::default();
        let live = Arc::new(Live {
            tx,
            pending: pending.clone(),
        });
        let writer = tokio::spawn(write_frames(wr, rx));
        let target = self.target;
        let weak = Arc::downgrade(&live);
        tokio::spawn(async move {
            loop {
                match read_frame(&mut rd).await {
                    Ok(Envelope {
                        frame: Frame::Response { id, reply },
                        ..
                    }) => {
                        if let Some(tx) = pending.lock().expect("lock").remove(&id) {
                            let _ = tx.send(reply);
                        }
                    }
                    Ok(_) => {
                        tracing::warn!(
                            target_node = target,
                            "peer sent a request on a client connection"
                        );
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(target_node = target, error = %e, "peer connection lost");
                        break;
                    }
                }
            }
            // Fail everything in flight; the next call reconnects.
            writer.abort();
            pending.lock().expect("lock").clear();
            drop(weak);
        });
        Ok(live)
    }

    async fn call(
        &self,
        group: u64,
        rpc: PeerRpc,
        timeout: Duration,
    ) -> Result<PeerReply, CallError> {
        let live = self.live().await.map_err(CallError::Unreachable)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_frame(Frame::Request { id, group, rpc }).map_err(CallError::Network)?;
        let (tx, rx) = oneshot::channel();
        live.pending.lock().expect("lock").insert(id, tx);
        let sent = async {
            live.tx
                .send(frame)
                .await
                .map_err(|_| CallError::Unreachable(io::Error::other("connection closed")))?;
            match rx.await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(remote)) => Err(CallError::Remote(remote)),
                Err(_) => Err(CallError::Unreachable(io::Error::other("connection lost"))),
            }
        };
        let result = tokio::time::timeout(timeout, sent).await;
        match result {
            Ok(r) => r,
            Err(_) => {
                live.pending.lock().expect("lock").remove(&id);
                Err(CallError::Network(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "rpc timed out",
                )))
            }
        }
    }
}

enum CallError {
    Unreachable(io::Error),
    Network(io::Error),
    Remote(String),
}

impl CallError {
    fn into_rpc(self) -> RPCError<TypeConfig> {
        match self {
            CallError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Network(e) => RPCError::Network(NetworkError::new(&e)),
            // A remote failure (group not there yet, node shutting down): back off and retry.
            CallError::Remote(m) => RPCError::Unreachable(Unreachable::new(&io::Error::other(m))),
        }
    }

    fn into_streaming(self) -> StreamingError<TypeConfig> {
        match self {
            CallError::Unreachable(e) => StreamingError::Unreachable(Unreachable::new(&e)),
            CallError::Network(e) => StreamingError::Network(NetworkError::new(&e)),
            CallError::Remote(m) => {
                StreamingError::Unreachable(Unreachable::new(&io::Error::other(m)))
            }
        }
    }
}

/// Connections to every peer, shared by all groups of this node.
pub struct PeerClients {
    local_ip: Option<IpAddr>,
    conns: Mutex<HashMap<u64, Arc<PeerConn>>>,
}

impl PeerClients {
    pub fn new(local_ip: Option<IpAddr>) -> Arc<Self> {
        Arc::new(PeerClients {
            local_ip,
            conns: Mutex::new(HashMap::new()),
        })
    }

    fn conn(&self, target: u64, addr: &str) -> Arc<PeerConn> {
        let mut conns = self.conns.lock().expect("lock");
        let conn = conns
            .entry(target)
            .or_insert_with(|| self.new_conn(target, addr));
        if conn.addr != addr {
            *conn = self.new_conn(target, addr);
        }
        conn.clone()
    }

    fn new_conn(&self, target: u64, addr: &str) -> Arc<PeerConn> {
        Arc::new(PeerConn {
            target,
            addr: addr.to_string(),
            local_ip: self.local_ip,
            next_id: AtomicU64::new(1),
            live: tokio::sync::Mutex::new(None),
            last_failed_connect: Mutex::new(None),
        })
    }

    /// Asks `addr` whether it has Raft state for `group`.
    pub async fn is_initialized(&self, target: u64, addr: &str, group: u64) -> io::Result<bool> {
        match self
            .conn(target, addr)
            .call(group, PeerRpc::Initialized, CONNECT_TIMEOUT * 2)
            .await
        {
            Ok(PeerReply::Initialized(b)) => Ok(b),
            Ok(_) => Err(io::Error::other("unexpected reply")),
            Err(CallError::Unreachable(e) | CallError::Network(e)) => Err(e),
            Err(CallError::Remote(m)) => Err(io::Error::other(m)),
        }
    }

    /// Hands `work` for `group` to node `target` (its leader, as far as this node knows).
    pub async fn forward(
        &self,
        target: u64,
        addr: &str,
        group: u64,
        work: Forward,
        timeout: Duration,
    ) -> Result<ForwardReply, ForwardError> {
        match self
            .conn(target, addr)
            .call(group, PeerRpc::Forward(work), timeout)
            .await
        {
            Ok(PeerReply::Forward(r)) => r,
            Ok(_) => Err(ForwardError::Failed("unexpected reply kind".into())),
            Err(CallError::Unreachable(e) | CallError::Network(e)) => {
                Err(ForwardError::Unavailable(format!(
                    "the leader (node {target}) is unreachable: {e}"
                )))
            }
            Err(CallError::Remote(m)) => Err(ForwardError::Unavailable(m)),
        }
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
            conn: self.clients.conn(target, &node.peer),
        }
    }
}

/// One group's view of the connection to one peer.
pub struct PeerNetwork {
    group: u64,
    conn: Arc<PeerConn>,
}

fn unexpected<T>() -> Result<T, CallError> {
    Err(CallError::Remote("unexpected reply kind".into()))
}

impl PeerNetwork {
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
        .map_err(CallError::into_rpc)
    }
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(PeerRpc::Append(rpc), &option, |r| match r {
            PeerReply::Append(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(PeerRpc::Vote(rpc), &option, |r| match r {
            PeerReply::Vote(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(PeerRpc::PreVote(rpc), &option, |r| match r {
            PeerReply::Vote(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let rpc = PeerRpc::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        let call = self.conn.call(
            self.group,
            rpc,
            option.hard_ttl().max(Duration::from_secs(30)),
        );
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = call => match r {
                Ok(PeerReply::Snapshot(r)) => Ok(r),
                Ok(_) => Err(CallError::Remote("unexpected reply kind".into()).into_streaming()),
                Err(e) => Err(e.into_streaming()),
            },
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(PeerRpc::TransferLeader(req), &option, |r| match r {
            PeerReply::TransferLeader(r) => Some(r),
            _ => None,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn a_frame_that_claims_more_than_it_sends_is_an_error_not_an_allocation() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(400u32 << 20).to_be_bytes()).await.unwrap();
        a.write_all(b"not much").await.unwrap();
        drop(a);
        let err = read_frame(&mut b)
            .await
            .err()
            .expect("a short frame is an error");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn oversized_and_garbage_frames_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        assert!(read_frame(&mut b)
            .await
            .err()
            .expect("refused")
            .to_string()
            .contains("too large"));
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&5u32.to_be_bytes()).await.unwrap();
        a.write_all(&[1, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
        assert!(read_frame(&mut b).await.is_err());
    }

    #[tokio::test]
    async fn frames_round_trip_with_the_protocol_version() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let bytes = encode_frame(Frame::Response {
            id: 42,
            reply: Ok(PeerReply::Initialized(true)),
        })
        .unwrap();
        a.write_all(&bytes).await.unwrap();
        let env = read_frame(&mut b).await.unwrap();
        assert_eq!(env.version, PEER_PROTOCOL_VERSION);
        assert!(matches!(
            env.frame,
            Frame::Response {
                id: 42,
                reply: Ok(PeerReply::Initialized(true))
            }
        ));
    }

    struct Echo;

    impl Forwarder for Echo {
        fn serve(
            &self,
            group: u64,
            work: Forward,
        ) -> futures::future::BoxFuture<'static, Result<ForwardReply, ForwardError>> {
            Box::pin(async move {
                match work {
                    Forward::ReadIndex { timeout_ms } => {
                        Ok(ForwardReply::ReadIndex(group * 1000 + timeout_ms))
                    }
                    Forward::Propose { .. } => Err(ForwardError::NotLeader(Some(group))),
                }
            })
        }
    }

    #[tokio::test]
    async fn forwarded_work_reaches_the_forwarder_and_its_answer_comes_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let registry = Arc::new(Registry::default());
        let server = tokio::spawn(serve_peers(listener, registry.clone()));
        let clients = PeerClients::new(None);
        let ask = |work| clients.forward(2, &addr, 7, work, Duration::from_secs(5));

        let early = ask(Forward::ReadIndex { timeout_ms: 5 }).await;
        assert!(
            matches!(early, Err(ForwardError::Unavailable(ref m)) if m.contains("starting")),
            "{early:?}"
        );

        registry.set_forwarder(Arc::new(Echo));
        let read = ask(Forward::ReadIndex { timeout_ms: 5 }).await;
        assert!(
            matches!(read, Ok(ForwardReply::ReadIndex(7005))),
            "{read:?}"
        );
        let write = ask(Forward::Propose {
            command: Command::Tick,
            timeout_ms: 5,
        })
        .await;
        assert!(
            matches!(write, Err(ForwardError::NotLeader(Some(7)))),
            "{write:?}"
        );
        server.abort();
    }
}
