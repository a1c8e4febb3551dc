//! The peer listener: serves the RPCs other nodes send over their connections to this one.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

use super::frames::{
    encode_frame, read_frame, write_frames, ForwardError, Frame, PeerReply, PeerRpc,
    PEER_PROTOCOL_VERSION, READ_BUFFER_BYTES, WRITE_QUEUE_FRAMES,
};
use super::registry::Registry;
use super::tls::{PeerTls, ReadHalf, WriteHalf};

/// The most RPCs of one peer connection served at once. Beyond it a request is answered at
/// once with an error (the sender backs off, a forwarded client request becomes a 503) rather
/// than queued, so a flooding peer costs this node bounded memory and the connection keeps
/// moving: Raft's heartbeats on it are not stuck behind the flood. A node forwards at most
/// its `max_inflight_requests` (4096 by default) client requests, and Raft has a few RPCs per
/// group in flight, so a well-behaved peer stays far below it.
pub const MAX_INFLIGHT_RPCS_PER_CONNECTION: usize = 8192;

/// Serves peer connections on `listener` until the task is dropped; with `tls`, only those of
/// peers that present a certificate of the cluster's CA.
pub async fn serve_peers(listener: TcpListener, registry: Arc<Registry>, tls: Option<PeerTls>) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                let registry = registry.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let halves = match &tls {
                        Some(tls) => match tls.accept(stream).await {
                            Ok(halves) => halves,
                            Err(e) => {
                                tracing::warn!(peer = %addr, error = %e, "peer refused: TLS handshake failed");
                                return;
                            }
                        },
                        None => super::tls::plain(stream),
                    };
                    if let Err(e) = serve_connection(halves, registry).await {
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

async fn serve_connection(
    (rd, wr): (ReadHalf, WriteHalf),
    registry: Arc<Registry>,
) -> io::Result<()> {
    let mut rd = BufReader::with_capacity(READ_BUFFER_BYTES, rd);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE_FRAMES);
    let writer = tokio::spawn(write_frames(wr, rx));
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT_RPCS_PER_CONNECTION));
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
        let tx = tx.clone();
        let Ok(permit) = inflight.clone().try_acquire_owned() else {
            let reply = overloaded(rpc);
            if let Ok(bytes) = encode_frame(Frame::Response { id, reply }) {
                let _ = tx.send(bytes).await;
            }
            continue;
        };
        let registry = registry.clone();
        // The RPC's future (openraft's append or a forwarded command) is large: boxed, it is
        // copied once, not on every move of the task that runs it.
        tokio::spawn(async move {
            let reply = Box::pin(handle(&registry, group, rpc)).await;
            drop(permit);
            if let Ok(bytes) = encode_frame(Frame::Response { id, reply }) {
                let _ = tx.send(bytes).await;
            }
        });
    };
    drop(tx);
    writer.abort();
    result
}

/// The answer to an RPC beyond [`MAX_INFLIGHT_RPCS_PER_CONNECTION`].
fn overloaded(rpc: PeerRpc) -> Result<PeerReply, String> {
    let message = format!(
        "the peer is serving its limit of {MAX_INFLIGHT_RPCS_PER_CONNECTION} RPCs on this connection; retry"
    );
    match rpc {
        PeerRpc::Forward(_) => Ok(PeerReply::Forward(Err(ForwardError::Unavailable(message)))),
        _ => Err(message),
    }
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
    match rpc {
        PeerRpc::Raft(req) => {
            if req.is_from_leader_or_candidate() {
                contact.touch();
            }
            raft.serve_rpc(req).await.map(PeerReply::Raft)
        }
        PeerRpc::RaftFor { replica, request } => {
            if replica != raft.replica_id() {
                return Err(format!(
                    "group {group} has replica {:#x} here, not {replica:#x}",
                    raft.replica_id()
                ));
            }
            if request.is_from_leader_or_candidate() {
                contact.touch();
            }
            raft.serve_rpc(request).await.map(PeerReply::Raft)
        }
        PeerRpc::Initialized => raft.is_initialized().await.map(PeerReply::Initialized),
        PeerRpc::Initialize { members } => {
            if !members.contains_key(&raft.replica_id()) {
                return Err(format!(
                    "group {group} has replica {:#x} here, which is not among the voters to create",
                    raft.replica_id()
                ));
            }
            if !raft.is_initialized().await? {
                raft.initialize(members).await?;
            }
            Ok(PeerReply::Initialized(true))
        }
        PeerRpc::Forward(_) => unreachable!("served above"),
    }
}
