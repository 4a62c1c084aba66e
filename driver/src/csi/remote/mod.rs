//! Split mode: a controller reaching the volumes of the node plugins over
//! `floe.node.v1.NodeVolumes` (`proto/node.proto`) with mutual TLS.
//!
//! # Layout
//!
//! - [`server`]: the node side, `node.proto`'s `NodeVolumes`
//!   (`crate::node::rpc::server`) behind mutual TLS, [`serve_tls`];
//! - [`client`]: [`RemoteVolumes`] (`crate::node::rpc::client`) of a node
//!   plugin over mutual TLS;
//! - [`cluster`]: [`Cluster`], several nodes' volumes as one, what
//!   `floe-csi --mode=controller` serves;
//! - here: the TLS files, and the wiring `floe-csi` calls
//!   ([`serve_node_admin`], [`cluster_from_args`]).
//!
//! # Trust
//!
//! One CA signs every node's server certificate and the controller's client
//! certificate; both sides are given the same three flags (`--tls-cert`,
//! `--tls-key`, `--tls-ca`). A node refuses a client without a certificate
//! of that CA at the handshake, and every call of a client whose
//! certificate does not carry the controller's name (`--peer-name`, a DNS
//! subject alternative name; default `controller`) with `PERMISSION_DENIED`:
//! the CA signs the nodes' certificates too, and a node must not drive
//! another node's volumes. The controller refuses a node whose certificate
//! that CA did not sign for the host it dialled.

pub mod client;
pub mod cluster;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::transport::{Certificate, Identity};

pub use client::RemoteVolumes;
pub use cluster::Cluster;
pub use server::serve_tls;

use super::error::{Error, Result};
use super::volumes::NodeVolumes;
use crate::cli::CsiArgs;

/// The PEM files one side of a mutual TLS connection holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate this side shows (chain, leaf first).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA the other side's certificate must be signed by.
    pub ca: PathBuf,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(Error::io(what, path))
}

impl TlsFiles {
    /// This side's certificate and key.
    pub fn identity(&self) -> Result<Identity> {
        Ok(Identity::from_pem(
            read("read the TLS certificate", &self.cert)?,
            read("read the TLS key", &self.key)?,
        ))
    }

    /// The CA to check the other side against.
    pub fn ca_certificate(&self) -> Result<Certificate> {
        Ok(Certificate::from_pem(read("read the TLS CA", &self.ca)?))
    }

    /// The files `--tls-cert`, `--tls-key` and `--tls-ca` name; `for_what`
    /// says which flag needs them.
    pub fn from_args(args: &CsiArgs, for_what: &'static str) -> Result<Self> {
        let flag = |value: &Option<PathBuf>, name: &'static str| {
            value.clone().ok_or(Error::Missing {
                rpc: for_what,
                field: name,
                hint: "a PEM file: --tls-cert and --tls-key this process's certificate and key, --tls-ca the CA of the other side",
            })
        };
        Ok(TlsFiles {
            cert: flag(&args.tls_cert, "--tls-cert")?,
            key: flag(&args.tls_key, "--tls-key")?,
            ca: flag(&args.tls_ca, "--tls-ca")?,
        })
    }
}

/// NodeVolumes served next to the CSI socket; stop it with
/// [`NodeAdminServer::stop`].
pub struct NodeAdminServer {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl NodeAdminServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Stops serving (calls in flight finish) and returns how serving went.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|e| Error::Internal(format!("the NodeVolumes server task died: {e}")))?
    }
}

/// Starts serving `volumes` (the node plugin's own) over mutual TLS on
/// `--node-admin-listen`, when given. Binding and the TLS files are checked
/// before this returns, so a bad address or file fails start-up.
pub async fn serve_node_admin(args: &CsiArgs, volumes: Arc<dyn NodeVolumes>) -> Result<Option<NodeAdminServer>> {
    let Some(addr) = args.node_admin_listen else {
        return Ok(None);
    };
    let tls = TlsFiles::from_args(args, "--node-admin-listen")?;
    let router = server::tls_router(&tls, &args.peer_name, volumes)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = stopped.await;
    };
    let (addr, serving) = server::serve(server::bind(addr).await?, router, stopped)?;
    let task = tokio::spawn(serving);
    Ok(Some(NodeAdminServer { addr, stop, task }))
}

/// The [`Cluster`] of the `--node-endpoint`s, reached with the TLS files;
/// nothing is dialled yet.
pub fn cluster_from_args(args: &CsiArgs) -> Result<Cluster> {
    let tls = TlsFiles::from_args(args, "--node-endpoint")?;
    let nodes = args
        .node_endpoints
        .iter()
        .map(|e| RemoteVolumes::new(&e.node, &e.url, &tls, None))
        .collect::<Result<Vec<_>>>()?;
    Cluster::new(nodes)
}
