//! Mutual TLS on the peer port: every node presents a certificate signed by the cluster's CA
//! and accepts only peers that do the same, so a process without one cannot send Raft messages,
//! forward requests or join (etcd's `--peer-client-cert-auth`).

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A handshake that takes longer than this is dropped: a peer port is not held open by a
/// client that connects and says nothing.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Either half of a peer connection, plain or TLS.
pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// This node's certificate and the cluster's CA, for both ends of peer connections.
#[derive(Clone)]
pub struct PeerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

/// rustls over *ring*: it builds with the C compiler alone (aws-lc-rs needs cmake and several
/// more minutes on two cores). rustls 0.23.48 deprecates it for lacking post-quantum key
/// exchange; see docs/API.md, Authentication.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl PeerTls {
    /// Reads the CA certificate, this node's certificate chain and its private key (PEM).
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<PeerTls, String> {
        let named = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
            format!("{what} {}: {e}", path.display())
        };
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).map_err(|e| named("the CA file", ca, &e))? {
            let c = c.map_err(|e| named("the CA file", ca, &e))?;
            roots
                .add(c)
                .map_err(|e| named("the CA certificate", ca, &e))?;
        }
        if roots.is_empty() {
            return Err(format!("the CA file {} holds no certificate", ca.display()));
        }
        let (chain, key) = identity(cert, key)?;
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| format!("the peer CA: {e}"))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("this node's certificate and key: {e}"))?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("this node's certificate and key: {e}"))?;
        Ok(PeerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        })
    }

    /// The server side of a peer connection: the peer must present a certificate of the CA.
    pub(crate) async fn accept(&self, stream: TcpStream) -> io::Result<(ReadHalf, WriteHalf)> {
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let (rd, wr) = tokio::io::split(tls);
        Ok((Box::new(rd), Box::new(wr)))
    }

    /// The client side: the peer at `addr` (`host:port`) must present a certificate of the CA
    /// naming that host.
    pub(crate) async fn connect(
        &self,
        addr: &str,
        stream: TcpStream,
    ) -> io::Result<(ReadHalf, WriteHalf)> {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector.connect(name, stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let (rd, wr) = tokio::io::split(tls);
        Ok((Box::new(rd), Box::new(wr)))
    }
}

/// A certificate chain and its private key, from PEM files.
fn identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let named = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        format!("{what} {}: {e}", path.display())
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| named("the certificate file", cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| named("the certificate file", cert, &e))?;
    if chain.is_empty() {
        return Err(format!(
            "the certificate file {} holds no certificate",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| named("the key file", key, &e))?;
    Ok((chain, key))
}

/// TLS for the client port (HTTPS): this node's certificate and key (PEM). Clients are not
/// asked for a certificate (API tokens say who they are); HTTP/1.1 is the one protocol.
pub fn client_port_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    let (chain, key) = identity(cert, key)?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the client port's certificate and key: {e}"))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// A plain TCP connection's halves.
pub(crate) fn plain(stream: TcpStream) -> (ReadHalf, WriteHalf) {
    let (rd, wr) = stream.into_split();
    (Box::new(rd), Box::new(wr))
}
