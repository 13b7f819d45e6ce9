//! `wss://`: the gateway's TLS (rustls). Handshakes run in their own tasks,
//! each bounded in time, so a client that stalls its handshake holds up no
//! one; finished ones are handed to the HTTP server as its listener.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_rustls::{rustls, server::TlsStream, TlsAcceptor};

use crate::error::{Error, Result};

/// A gateway's certificate chain and key.
#[derive(Clone)]
pub struct TlsIdentity {
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsIdentity")
    }
}

impl TlsIdentity {
    /// From PEM text: the certificate chain (leaf first) and its private key.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self> {
        let bad = |what: &str, e: &dyn std::fmt::Display| Error::Config(format!("TLS {what}: {e}"));
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| bad("certificate", &e))?;
        if certs.is_empty() {
            return Err(Error::Config(
                "TLS certificate: no certificate in the PEM".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad("key", &e))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("versions", &e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad("certificate and key", &e))?;
        Ok(TlsIdentity {
            config: Arc::new(config),
        })
    }

    /// From PEM files.
    pub fn from_pem_files(cert_chain: &Path, key: &Path) -> Result<Self> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| Error::Config(format!("cannot read {}: {e}", p.display())))
        };
        TlsIdentity::from_pem(&read(cert_chain)?, &read(key)?)
    }
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Handshakes under way at once; beyond it, new connections wait in the
/// kernel's accept queue.
const HANDSHAKES: usize = 256;

/// Accepted, handshaken connections, as axum's listener.
pub(crate) struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    pub(super) fn new(tcp: TcpListener, identity: &TlsIdentity, addr: SocketAddr) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(identity.config.clone());
        let slots = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match tcp.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "gateway accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { rx, addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor ended (its socket failed): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
