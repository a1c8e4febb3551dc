//! The client port's HTTP server: axum's router behind hyper's HTTP/1 connection handling,
//! with the bounds a public port needs against slow and greedy clients.
//!
//! - **Connections are bounded** (`--max-connections`): past the bound the node stops
//!   accepting until one closes, so new ones wait in the kernel's queue (Go's
//!   `netutil.LimitListener`) instead of costing the node file descriptors it needs for its
//!   data and peers.
//! - **Headers must arrive in time** (`--header-timeout`): a request's headers, and the first
//!   byte of the next request on a kept-alive connection, within it, or the connection closes.
//!   A client sending a byte a second holds a connection for that long, not for ever.
//! - **Bodies must arrive in time** (`--body-timeout`, in [`crate::extract`]): 408
//!   `request_timeout`, and the connection closes.
//! - **TLS, when the node has a client certificate** (`--client-cert`): the handshake runs on
//!   the connection's own task, within the header timeout, so a client that starts one and
//!   stalls holds only its own connection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
pub use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How long in-flight requests get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The client port's bounds.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Connections the kernel completes and queues before the node accepts them (Linux caps it at
/// `net.core.somaxconn`, 4096 by default; Go's servers ask for that much too). Tokio's default of
/// 1024 overflowed under a burst of 2,000 connections while the node was busy: the kernel
/// dropped the handshakes past it and the clients retried them seconds later.
pub const ACCEPT_BACKLOG: u32 = 4096;

/// A listener on `addr` (an `ip:port` or `host:port`) with [`ACCEPT_BACKLOG`].
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As TcpListener::bind does: a restarted node rebinds at once.
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(ACCEPT_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr} resolves to no address"),
        )
    }))
}

/// Lifts this process's soft limit on open files to its hard limit (many systems start
/// services at 1,024), and warns when even that leaves too little room for `limits`' connections
/// beside the data files and peer connections. Returns the limit in force.
pub fn raise_open_files_limit(limits: &ServeLimits) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    let current = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
        lim.rlim_cur
    };
    // RocksDB's files, peer connections and the like: a generous allowance.
    let wanted = limits.max_connections as u64 + 1_024;
    if current < wanted {
        tracing::warn!(
            open_files = current,
            max_connections = limits.max_connections,
            "the limit on open files is below --max-connections plus room for the data and \
             peers: raise it (ulimit -n, LimitNOFILE=) or lower --max-connections"
        );
    }
    current
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown` resolves, then lets the
/// requests in flight finish (for up to [`DRAIN_TIMEOUT`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a moment rather than spin (as axum and Go's http do).
                    tracing::warn!(error = %e, "accepting a client connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = app
            .clone()
            .map_request(|req: Request<Incoming>| req.map(axum::body::Body::new));
        let service = TowerToHyperService::new(service);
        let (http, watcher, tls) = (http.clone(), graceful.watcher(), tls.clone());
        let handshake_timeout = limits.header_timeout;
        tokio::spawn(async move {
            // A client that goes away or breaks the protocol ends its connection; that is
            // the client's business, not the node's.
            match tls {
                None => {
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn).await;
                }
                Some(tls) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(handshake_timeout, tls.accept(stream)).await
                    else {
                        return;
                    };
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn).await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; closing them");
    }
}
