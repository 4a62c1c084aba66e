//! Mutual TLS between sites: certificates from files, as a Kubernetes Secret
//! mounts them, read again whenever they change, and the peer authorised by
//! name — a certificate of the right CA is not enough, it must carry the
//! paired site's name.
//!
//! [`TlsSource`] checks the three files' identity (inode, size, modification
//! time) before every handshake, so a rotated Secret takes effect on the
//! next connection without a restart. A rotation that leaves unreadable or
//! mismatched files keeps the last good configuration and logs why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::model::PeerName;

/// The files of one site's identity and whom it talks to.
#[derive(Clone, Debug)]
pub struct SiteTls {
    /// This site's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The peer site's CA (PEM).
    pub ca: PathBuf,
    /// The name the peer's certificate must carry.
    pub peer: PeerName,
}

/// A TLS configuration that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("read {what} from {path}: {message}")]
    File {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// rustls refused the certificates or key.
    #[error("build the TLS configuration")]
    Config(#[source] rustls::Error),
    /// The CA could not verify client certificates.
    #[error("build the client-certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// What makes a file "changed": inode, length, modification time.
type Stamp = Vec<Option<(u64, u64, i64, i64)>>;

fn stamp(files: &SiteTls) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    [&files.cert, &files.key, &files.ca]
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
        })
        .collect()
}

struct Loaded {
    stamp: Stamp,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// One site's TLS configurations, kept in step with its files.
pub struct TlsSource {
    // (Debug shows the files, not the keys.)
    files: SiteTls,
    loaded: Mutex<Loaded>,
}

fn file_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(String) -> TlsError + 'a {
    move |message| TlsError::File {
        what,
        path: path.to_owned(),
        message,
    }
}

fn load(files: &SiteTls) -> Result<Loaded, TlsError> {
    let stamp = stamp(files);
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error("the certificate", &files.cert)(e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error("the certificate", &files.cert)(
            "no certificate in the file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error("the key", &files.key)(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&files.ca)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error("the CA", &files.ca)(e.to_string()))?;
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| file_error("the CA", &files.ca)(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(file_error("the CA", &files.ca)("no certificate in the file".into()));
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
        .build()
        .map_err(TlsError::Verifier)?;
    let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(TlsError::Config)?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(TlsError::Config)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        stamp,
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

impl std::fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSource")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsSource {
    /// Reads `files` (all three must be good now).
    pub fn load(files: SiteTls) -> Result<Arc<Self>, TlsError> {
        let loaded = load(&files)?;
        Ok(Arc::new(TlsSource {
            files,
            loaded: Mutex::new(loaded),
        }))
    }

    /// The name the peer must carry.
    pub fn peer(&self) -> &PeerName {
        &self.files.peer
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Loaded> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(&self.files);
        if now != loaded.stamp {
            match load(&self.files) {
                Ok(fresh) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS files changed: reloaded");
                    *loaded = fresh;
                }
                Err(e) => {
                    // Keep serving with the last good files; try again next time.
                    tracing::warn!(error = %super::chain(&e), "TLS files changed but do not load: the last good ones stay");
                    loaded.stamp = now;
                }
            }
        }
        loaded
    }

    /// The server side's configuration as the files are now.
    pub fn server(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current().server)
    }

    /// The client side's configuration as the files are now.
    pub fn client(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.current().client)
    }

    /// Whether a verified peer chain carries the peer's name.
    pub fn authorised(&self, chain: Option<&[CertificateDer<'_>]>) -> bool {
        chain
            .and_then(|c| c.first())
            .is_some_and(|leaf| self.files.peer.is_in(leaf))
    }
}

/// Dials `addr` over TLS as this site: the peer must show a certificate of
/// the CA for the peer's name (checked by the handshake itself), HTTP/2
/// negotiated by ALPN, windows adapting to the bandwidth-delay product.
pub async fn dial(
    addr: &str,
    tls: &Arc<TlsSource>,
    timeout: std::time::Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let tls = Arc::clone(tls);
    let target = addr.to_owned();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let (tls, target) = (Arc::clone(&tls), target.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&target).await?;
            let name = tls.peer().subject();
            let stream = tokio_rustls::TlsConnector::from(tls.client())
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(timeout)
        .http2_adaptive_window(true)
        .connect_with_connector(connector)
        .await
}
