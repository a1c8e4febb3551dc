//! Peer transport: one multiplexed TCP connection from this node to each peer, shared by every
//! group (like etcd's peer URLs, separate from the client API).
//!
//! Besides Raft's own RPCs, the connection carries client work a node hands to a group's
//! leader ([`Forward`]): a command to propose, or a request for a read index. So a request that
//! lands on a follower costs one more bincode frame each way, not a second HTTP request.
//!
//! Raft's messages travel as [`crate::consensus::RaftRequest`]: this module moves them and
//! never looks inside.

mod client;
pub(crate) mod frames;
mod registry;
mod server;
mod tls;

pub(crate) use client::{CallError, PeerClients, PeerConn};
pub(crate) use frames::{Forward, ForwardError, ForwardReply, MembershipChange};
pub(crate) use frames::{PeerReply, PeerRpc};
pub(crate) use registry::{Forwarder, Registry};
pub(crate) use server::serve_peers;
pub use tls::{client_port_acceptor, PeerTls};

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::client::MAX_PENDING_CALLS_PER_PEER;
    use super::frames::{encode_frame, read_frame, Frame, PeerReply, PEER_PROTOCOL_VERSION};
    use super::server::MAX_INFLIGHT_RPCS_PER_CONNECTION;
    use super::*;
    use crate::command::Command;

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
                    Forward::Query { .. } => Ok(ForwardReply::Answer(
                        crate::query::Answer::HasReady(group == 7),
                    )),
                    Forward::Membership { .. } => Err(ForwardError::Unavailable("not here".into())),
                }
            })
        }
    }

    #[tokio::test]
    async fn forwarded_work_reaches_the_forwarder_and_its_answer_comes_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let registry = Arc::new(Registry::default());
        let server = tokio::spawn(serve_peers(listener, registry.clone(), None));
        let clients = PeerClients::new(None, None);
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
        let query = ask(Forward::Query {
            query: crate::query::Query::HasReady { types: vec![] },
            linearizable: false,
            timeout_ms: 5,
        })
        .await;
        assert!(
            matches!(
                query,
                Ok(ForwardReply::Answer(crate::query::Answer::HasReady(true)))
            ),
            "{query:?}"
        );
        // Nothing listens here: the work was never sent, and the error says so.
        let nobody = format!("127.0.0.1:{}", crate::transport::tests::closed_port());
        let unsent = clients
            .forward(
                3,
                &nobody,
                7,
                Forward::ReadIndex { timeout_ms: 5 },
                Duration::from_secs(5),
            )
            .await;
        assert!(
            matches!(unsent, Err(ForwardError::NotSent(_))),
            "{unsent:?}"
        );
        server.abort();
    }

    /// A port on 127.0.0.1 nothing listens on.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    /// Holds every `ReadIndex` with `timeout_ms == 0` until released; answers others at once.
    struct Gate {
        held: std::sync::atomic::AtomicUsize,
        release: tokio::sync::Semaphore,
    }

    impl Forwarder for Arc<Gate> {
        fn serve(
            &self,
            group: u64,
            work: Forward,
        ) -> futures::future::BoxFuture<'static, Result<ForwardReply, ForwardError>> {
            let gate = self.clone();
            Box::pin(async move {
                if let Forward::ReadIndex { timeout_ms: 0 } = work {
                    gate.held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    gate.release.acquire().await.expect("open").forget();
                }
                Ok(ForwardReply::ReadIndex(group))
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_flooded_past_its_bound_is_refused_at_once_and_others_are_served() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let registry = Arc::new(Registry::default());
        let gate = Arc::new(Gate {
            held: Default::default(),
            release: tokio::sync::Semaphore::new(0),
        });
        registry.set_forwarder(Arc::new(gate.clone()));
        let server = tokio::spawn(serve_peers(listener, registry, None));
        let flooder = PeerClients::new(None, None);
        let extra = 50;
        let calls: Vec<_> = (0..MAX_INFLIGHT_RPCS_PER_CONNECTION + extra)
            .map(|_| {
                let (flooder, addr) = (flooder.clone(), addr.clone());
                tokio::spawn(async move {
                    flooder
                        .forward(
                            2,
                            &addr,
                            1,
                            Forward::ReadIndex { timeout_ms: 0 },
                            Duration::from_secs(30),
                        )
                        .await
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while gate.held.load(std::sync::atomic::Ordering::SeqCst) < MAX_INFLIGHT_RPCS_PER_CONNECTION
        {
            assert!(
                Instant::now() < deadline,
                "the flood never filled the connection"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The bound holds: no more than it are being served.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            gate.held.load(std::sync::atomic::Ordering::SeqCst),
            MAX_INFLIGHT_RPCS_PER_CONNECTION
        );
        // Another peer's connection is served meanwhile.
        let other = PeerClients::new(None, None);
        let answer = other
            .forward(
                3,
                &addr,
                7,
                Forward::ReadIndex { timeout_ms: 5 },
                Duration::from_secs(5),
            )
            .await;
        assert!(
            matches!(answer, Ok(ForwardReply::ReadIndex(7))),
            "{answer:?}"
        );
        gate.release.add_permits(MAX_INFLIGHT_RPCS_PER_CONNECTION);
        let mut refused = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok(ForwardReply::ReadIndex(1)) => {}
                Err(ForwardError::Unavailable(m)) if m.contains("limit") => refused += 1,
                other => panic!("unexpected answer {other:?}"),
            }
        }
        assert_eq!(
            refused, extra,
            "exactly the calls beyond the bound are refused"
        );
        // The flooded connection serves again once the flood is over.
        let after = flooder
            .forward(
                2,
                &addr,
                4,
                Forward::ReadIndex { timeout_ms: 5 },
                Duration::from_secs(5),
            )
            .await;
        assert!(matches!(after, Ok(ForwardReply::ReadIndex(4))), "{after:?}");
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_beyond_the_pending_bound_fail_at_once() {
        // A peer that takes frames and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let silent = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
        });
        let clients = PeerClients::new(None, None);
        let calls: Vec<_> = (0..MAX_PENDING_CALLS_PER_PEER)
            .map(|_| {
                let (clients, addr) = (clients.clone(), addr.clone());
                tokio::spawn(async move {
                    clients
                        .forward(
                            2,
                            &addr,
                            1,
                            Forward::ReadIndex { timeout_ms: 0 },
                            Duration::from_secs(60),
                        )
                        .await
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while clients.conn(2, &addr).pending_calls() < MAX_PENDING_CALLS_PER_PEER {
            assert!(Instant::now() < deadline, "the pending map never filled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = Instant::now();
        let one_more = clients
            .forward(
                2,
                &addr,
                1,
                Forward::ReadIndex { timeout_ms: 0 },
                Duration::from_secs(5),
            )
            .await;
        assert!(
            matches!(&one_more, Err(ForwardError::Unavailable(m)) if m.contains("waiting for answers")),
            "{one_more:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused at once"
        );
        assert!(
            calls.iter().all(|c| !c.is_finished()),
            "the flood itself waits"
        );
        for call in calls {
            call.abort();
        }
        silent.abort();
    }
}
