//! Mutual TLS between peers against real nodes: a cluster whose nodes hold certificates of
//! one CA serves; its peer port refuses a process without a certificate, one with a
//! certificate of another CA, one sending plain frames, and one replaying the bytes of a
//! member's captured TLS session; and the cluster keeps serving.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use raftflow_client::types::CreateWorkflow;
use raftflow_cluster_tests::{binary, order_definition, Cluster, Spec};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

const READY: Duration = Duration::from_secs(30);

/// `raftflow certs` for nodes 1-3 on 127.0.0.1 into `dir`.
fn certs(dir: &Path) {
    let out = std::process::Command::new(binary())
        .args(["certs", "--dir"])
        .arg(dir)
        .args(["--node", "1=127.0.0.1", "--node", "2=127.0.0.1"])
        .args(["--node", "3=127.0.0.1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn secure_spec(dir: &Path) -> Spec {
    let file = |f: &str| dir.join(f).to_str().unwrap().to_string();
    Spec {
        env: vec![("RAFTFLOW_PEER_CA".into(), file("ca.pem"))],
        node_env: (1..=3)
            .map(|id| {
                (
                    id,
                    vec![
                        ("RAFTFLOW_PEER_CERT".into(), file(&format!("node-{id}.pem"))),
                        (
                            "RAFTFLOW_PEER_KEY".into(),
                            file(&format!("node-{id}-key.pem")),
                        ),
                    ],
                )
            })
            .collect(),
        ..Spec::default()
    }
}

/// A TLS client config trusting `ca` and presenting `identity` (certificate, key), if any.
fn tls_client(ca: &Path, identity: Option<(&Path, &Path)>) -> tokio_rustls::TlsConnector {
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Whether the peer at `peer` keeps a TLS connection from a client with `connector` open,
/// waiting for frames. A server that refuses the client's certificate fails the handshake,
/// or (TLS 1.3) sends its alert at the client's first read, which then ends at once.
async fn tls_peer_accepts(peer: &str, connector: tokio_rustls::TlsConnector) -> bool {
    let tcp = TcpStream::connect(peer).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return false;
    };
    let mut buf = [0u8; 16];
    // Still open after a second: the peer is waiting for this client's first frame.
    tokio::time::timeout(Duration::from_secs(1), tls.read(&mut buf))
        .await
        .is_err()
}

/// A TCP stream that keeps a copy of every byte written to it: the capture of a session.
struct Recording {
    tcp: TcpStream,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = std::task::ready!(Pin::new(&mut self.tcp).poll_write(cx, buf))?;
        self.sent.lock().unwrap().extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A real peer frame: the pinned "is this group initialised here?" request.
fn initialized_frame() -> Vec<u8> {
    let pinned = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../raft/golden/encodings.txt"),
    )
    .unwrap();
    let hex = pinned
        .lines()
        .find_map(|l| l.strip_prefix("frame/initialized "))
        .expect("the pinned frame")
        .trim()
        .to_string();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// A member's session to `peer` (a real request, and its answer read), captured; then its
/// bytes sent again on a new connection. Returns whether the original got an answer and
/// whether the node ended the replayed connection.
async fn replay_a_members_session(peer: &str, member: tokio_rustls::TlsConnector) -> (bool, bool) {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let tcp = TcpStream::connect(peer).await.unwrap();
    let recording = Recording {
        tcp,
        sent: sent.clone(),
    };
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = member.connect(name, recording).await.unwrap();
    tls.write_all(&initialized_frame()).await.unwrap();
    tls.flush().await.unwrap();
    let mut answer = [0u8; 4];
    let answered = tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut answer))
        .await
        .is_ok_and(|r| r.is_ok());
    drop(tls);
    let captured = sent.lock().unwrap().clone();
    let mut replay = TcpStream::connect(peer).await.unwrap();
    let _ = replay.write_all(&captured).await;
    // The node answers the replayed hello with a new handshake of its own, then finds the
    // replayed client keys do not match it and closes: no request of the capture is served.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match replay.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok();
    (answered, ended)
}

async fn write_through_every_node(c: &Cluster, tag: &str) {
    for id in 1..=3 {
        let client = c.client(id);
        client
            .create_workflow(&CreateWorkflow {
                id: Some(format!("{tag}-{id}")),
                definition: "order".into(),
                version: None,
                context: None,
            })
            .await
            .unwrap_or_else(|e| panic!("create through node {id}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_the_clusters_certificates_serve_and_strangers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    certs(&ours);
    certs(&theirs);
    let c = Cluster::launch(secure_spec(&ours));
    c.wait_ready(READY).await.unwrap();
    c.client(1)
        .put_definition("order", &order_definition())
        .await
        .unwrap();
    // Every node forwards to leaders elsewhere over TLS.
    write_through_every_node(&c, "before").await;
    let peer = c.node(1).peer.clone();

    // No certificate at all: the handshake is refused.
    assert!(!tls_peer_accepts(&peer, tls_client(&ours.join("ca.pem"), None)).await);
    // A certificate of another CA: refused.
    let foreign = tls_client(
        &ours.join("ca.pem"),
        Some((&theirs.join("node-2.pem"), &theirs.join("node-2-key.pem"))),
    );
    assert!(!tls_peer_accepts(&peer, foreign).await);
    // Plain frames (what a peer without TLS sends, or bytes captured and replayed): the
    // connection ends without an answer.
    let mut plain = TcpStream::connect(&peer).await.unwrap();
    let _ = plain.write_all(&5u32.to_be_bytes()).await;
    let _ = plain.write_all(&[1, 0, 0, 0, 0]).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), plain.read(&mut buf))
        .await
        .expect("the node ends the connection");
    // A TLS server may answer a plain client with an alert record (type 21), never a frame.
    match read {
        Ok(0) | Err(_) => {}
        Ok(n) => assert_eq!(buf[0], 21, "answered plain bytes with {:?}", &buf[..n]),
    }
    // A member's own certificate does get through: the refusals above are the CA's doing.
    let member = tls_client(
        &ours.join("ca.pem"),
        Some((&ours.join("node-3.pem"), &ours.join("node-3-key.pem"))),
    );
    assert!(tls_peer_accepts(&peer, member).await);
    // The bytes of a member's whole session, captured and sent again: refused.
    let member = tls_client(
        &ours.join("ca.pem"),
        Some((&ours.join("node-3.pem"), &ours.join("node-3-key.pem"))),
    );
    let (answered, ended) = replay_a_members_session(&peer, member).await;
    assert!(
        answered,
        "the captured session got no answer: nothing worth replaying"
    );
    assert!(ended, "the node kept a replayed session open");

    // The cluster kept serving, and logged each refusal.
    write_through_every_node(&c, "after").await;
    let log = std::fs::read_to_string(c.log_path(1)).unwrap();
    let refusals = log.matches("peer refused: TLS handshake failed").count();
    assert!(refusals >= 4, "{refusals} refusals logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_cas_certificate_cannot_reach_its_peers() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    certs(&ours);
    certs(&theirs);
    let mut spec = secure_spec(&ours);
    // Node 3 holds a certificate of another CA (and trusts only that one).
    let file = |f: &str| theirs.join(f).to_str().unwrap().to_string();
    spec.node_env.insert(
        3,
        vec![
            ("RAFTFLOW_PEER_CA".into(), file("ca.pem")),
            ("RAFTFLOW_PEER_CERT".into(), file("node-3.pem")),
            ("RAFTFLOW_PEER_KEY".into(), file("node-3-key.pem")),
        ],
    );
    let c = Cluster::launch(spec);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ready = c.probe(1).get_text("/readyz").await.map(|r| r.0);
    assert_eq!(ready.ok(), Some(503));
    // Node 3 refuses node 1 (whose certificate its CA did not sign) asking whether it has
    // Raft state; the cluster waits for every member and so never forms.
    let log = std::fs::read_to_string(c.log_path(3)).unwrap();
    assert!(
        log.contains("peer refused: TLS handshake failed"),
        "node 3 did not refuse its peers"
    );
}

/// TLS on the client port as well: the API answers over HTTPS only, to every client that
/// trusts the cluster's CA — the harness, the CLI (`RAFTFLOW_CA`), a worker, a node joining
/// through it, and the nodes' probes of each other (`/v1/cluster` shows them reachable). A
/// client that does not trust the CA gets a certificate error; plain HTTP gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_port_serves_https_to_every_client_that_trusts_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours");
    certs(&ours);
    let four = std::process::Command::new(binary())
        .args(["certs", "--dir"])
        .arg(&ours)
        .args(["--node", "4=127.0.0.1"])
        .output()
        .unwrap();
    assert!(four.status.success(), "{four:?}");
    let file = |f: &str| ours.join(f).to_str().unwrap().to_string();
    let mut spec = secure_spec(&ours);
    for id in 1..=4 {
        let env = spec.node_env.entry(id).or_default();
        if id == 4 {
            env.push(("RAFTFLOW_PEER_CERT".into(), file("node-4.pem")));
            env.push(("RAFTFLOW_PEER_KEY".into(), file("node-4-key.pem")));
        }
        env.push((
            "RAFTFLOW_CLIENT_CERT".into(),
            file(&format!("node-{id}.pem")),
        ));
        env.push((
            "RAFTFLOW_CLIENT_KEY".into(),
            file(&format!("node-{id}-key.pem")),
        ));
    }
    spec.https_ca = Some(ours.join("ca.pem"));
    let mut c = Cluster::launch(spec);
    c.wait_ready(READY).await.unwrap();

    c.client(1)
        .put_definition("order", &order_definition())
        .await
        .unwrap();
    let create = CreateWorkflow {
        id: Some("o-1".into()),
        definition: "order".into(),
        version: None,
        context: None,
    };
    c.client(2).create_workflow(&create).await.unwrap();
    let view = c.client(3).cluster().await.unwrap();
    assert!(
        view.nodes.iter().all(|n| n.reachable),
        "every node probes the others over HTTPS: {:?}",
        view.nodes
    );

    // Plain HTTP to the port gets no answer; HTTPS without the CA a certificate error.
    let plain = raftflow_client::Client::new(&c.node(1).client, Duration::from_secs(3));
    assert!(plain.get_text("/healthz").await.is_err());
    let untrusting = raftflow_client::Client::new(&c.url(1), Duration::from_secs(3));
    let refused = untrusting
        .get_text("/healthz")
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("certificate"), "{refused}");

    // The CLI, with the CA and without.
    let cli = |args: &[&str], ca: bool| {
        let mut cmd = std::process::Command::new(binary());
        cmd.args(args)
            .env("RAFTFLOW_ADDR", format!("{},{}", c.url(2), c.url(3)))
            .env_remove("RAFTFLOW_CA")
            .env_remove("RAFTFLOW_TOKEN");
        if ca {
            cmd.env("RAFTFLOW_CA", file("ca.pem"));
        }
        cmd.output().unwrap()
    };
    let got = cli(&["workflow", "send", "o-1", "pay"], true);
    assert!(got.status.success(), "{got:?}");
    assert!(String::from_utf8_lossy(&got.stdout).contains("paid"));
    let health = cli(&["cluster", "health"], true);
    assert!(health.status.success(), "{health:?}");
    let blind = cli(&["workflow", "get", "o-1"], false);
    assert!(!blind.status.success());
    assert!(
        String::from_utf8_lossy(&blind.stderr).contains("certificate"),
        "{blind:?}"
    );

    // A worker over HTTPS ships the order.
    let mut worker = std::process::Command::new(binary())
        .args([
            "worker",
            "--type",
            "ship",
            "--exec",
            r#"echo '{"tracking": "T-1"}'"#,
        ])
        .args(["--nodes", &c.url(1), "--ca-file", &file("ca.pem")])
        .env_remove("RAFTFLOW_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let shipped = raftflow_cluster_tests::eventually(Duration::from_secs(20), || async {
        let wf = c.client(3).get_workflow("o-1", false).await?;
        anyhow::ensure!(wf.state == "shipped", "still {}", wf.state);
        Ok(())
    })
    .await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    shipped.unwrap();

    // A node joins through a member's HTTPS port, trusting the peer CA, and serves HTTPS.
    c.join(4, 1);
    raftflow_cluster_tests::eventually(Duration::from_secs(30), || async {
        anyhow::ensure!(c.probe(4).ready().await, "node 4 not ready");
        let view = c.client(4).cluster().await?;
        anyhow::ensure!(
            view.nodes.iter().any(|n| n.id == 4 && n.reachable),
            "node 4 not registered"
        );
        Ok(())
    })
    .await
    .unwrap();
    c.kill9(4);
}
