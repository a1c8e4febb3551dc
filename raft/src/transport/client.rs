//! This node's connections to its peers: one multiplexed TCP connection to each, re-established
//! on demand, shared by every group. The writer flushes only when its queue is empty, so a
//! burst of RPCs leaves in few system calls.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::BufReader;
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, oneshot};

use super::tls::PeerTls;

use super::frames::{
    encode_frame, read_frame, write_frames, Envelope, Forward, ForwardError, ForwardReply, Frame,
    PeerReply, PeerRpc, READ_BUFFER_BYTES, WRITE_QUEUE_FRAMES,
};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed connect, calls fail fast for this long instead of each trying again.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// The most calls to one peer waiting for their answers. Beyond it a call fails at once (a
/// forwarded client request becomes a 503) instead of adding to a map that a silent peer
/// would let grow until each call's timeout.
pub const MAX_PENDING_CALLS_PER_PEER: usize = 16384;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<PeerReply, String>>>>>;

struct Live {
    tx: mpsc::Sender<Vec<u8>>,
    pending: Pending,
}

/// This node's connection to one peer, re-established on demand.
pub(crate) struct PeerConn {
    target: u64,
    addr: String,
    local_ip: Option<IpAddr>,
    tls: Option<PeerTls>,
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
        let (rd, wr) = match &self.tls {
            Some(tls) => tls.connect(&self.addr, stream).await?,
            None => super::tls::plain(stream),
        };
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

    /// Calls waiting for their answers on the live connection (none while it is being made).
    #[cfg(test)]
    pub(crate) fn pending_calls(&self) -> usize {
        let Ok(live) = self.live.try_lock() else {
            return 0;
        };
        live.as_ref()
            .map_or(0, |l| l.pending.lock().expect("lock").len())
    }

    pub(crate) async fn call(
        &self,
        group: u64,
        rpc: PeerRpc,
        timeout: Duration,
    ) -> Result<PeerReply, CallError> {
        let live = self.live().await.map_err(CallError::NotSent)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_frame(Frame::Request { id, group, rpc }).map_err(CallError::Network)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = live.pending.lock().expect("lock");
            if pending.len() >= MAX_PENDING_CALLS_PER_PEER {
                return Err(CallError::Network(io::Error::other(format!(
                    "{MAX_PENDING_CALLS_PER_PEER} calls to node {} are waiting for answers",
                    self.target
                ))));
            }
            pending.insert(id, tx);
        }
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

pub(crate) enum CallError {
    /// No connection could be made: the request was not sent.
    NotSent(io::Error),
    Unreachable(io::Error),
    Network(io::Error),
    Remote(String),
}

/// Connections to every peer, shared by all groups of this node.
pub struct PeerClients {
    local_ip: Option<IpAddr>,
    /// Mutual TLS to every peer, when the cluster has certificates.
    tls: Option<PeerTls>,
    conns: Mutex<HashMap<u64, Arc<PeerConn>>>,
}

impl PeerClients {
    pub fn new(local_ip: Option<IpAddr>, tls: Option<PeerTls>) -> Arc<Self> {
        Arc::new(PeerClients {
            local_ip,
            tls,
            conns: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn conn(&self, target: u64, addr: &str) -> Arc<PeerConn> {
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
            tls: self.tls.clone(),
            next_id: AtomicU64::new(1),
            live: tokio::sync::Mutex::new(None),
            last_failed_connect: Mutex::new(None),
        })
    }

    /// Asks `addr` whether it has Raft state for `group`.
    pub async fn is_initialized(&self, target: u64, addr: &str, group: u64) -> io::Result<bool> {
        match self
            .setup_call(target, addr, group, PeerRpc::Initialized)
            .await?
        {
            PeerReply::Initialized(b) => Ok(b),
            _ => Err(io::Error::other("unexpected reply")),
        }
    }

    /// Asks node `target` to create `group` with `members` as its voters (unless it has).
    pub async fn initialize(
        &self,
        target: u64,
        addr: &str,
        group: u64,
        members: std::collections::BTreeMap<u64, crate::NodeAddr>,
    ) -> io::Result<()> {
        match self
            .setup_call(target, addr, group, PeerRpc::Initialize { members })
            .await?
        {
            PeerReply::Initialized(true) => Ok(()),
            _ => Err(io::Error::other("unexpected reply")),
        }
    }

    /// One of cluster creation's calls to node `target`, any failure as an `io::Error`.
    async fn setup_call(
        &self,
        target: u64,
        addr: &str,
        group: u64,
        rpc: PeerRpc,
    ) -> io::Result<PeerReply> {
        self.conn(target, addr)
            .call(group, rpc, CONNECT_TIMEOUT * 2)
            .await
            .map_err(|e| match e {
                CallError::NotSent(e) | CallError::Unreachable(e) | CallError::Network(e) => e,
                CallError::Remote(m) => io::Error::other(m),
            })
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
            Err(CallError::NotSent(e)) => Err(ForwardError::NotSent(format!(
                "node {target} is unreachable: {e}"
            ))),
            Err(CallError::Unreachable(e) | CallError::Network(e)) => {
                Err(ForwardError::Unavailable(format!(
                    "the leader (node {target}) is unreachable: {e}"
                )))
            }
            Err(CallError::Remote(m)) => Err(ForwardError::Unavailable(m)),
        }
    }
}
