//! The node side of split mode: the node's `floe.node.v1.NodeVolumes`
//! service ([`crate::node::rpc::server`]) served on TCP with mutual TLS,
//! and only to the controller's certificate.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tonic::transport::server::Router;
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Request, Status};

use super::TlsFiles;
use crate::model::PeerName;
use crate::node::error::{chain, Error, Result};
use crate::node::rpc::server::{NodeVolumesServer, NodeVolumesService};
use crate::node::volumes::NodeVolumes;

/// Serves `volumes` on `addr` with mutual TLS until `shutdown` resolves:
/// the server shows `tls.cert`, a client must show a certificate that
/// `tls.ca` signed or its handshake is refused, and one without `peer`
/// among its names is refused every call.
pub async fn serve_tls(
    addr: SocketAddr,
    tls: &TlsFiles,
    peer: &PeerName,
    volumes: Arc<dyn NodeVolumes>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let listener = bind(addr).await?;
    serve_tls_on(listener, tls, peer, volumes, shutdown).await
}

/// Binds the TCP listener [`serve_tls_on`] takes.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Internal(format!("listen on {addr} for NodeVolumes: {e}")))
}

/// [`serve_tls`] on a listener already bound (port 0 in tests).
pub async fn serve_tls_on(
    listener: tokio::net::TcpListener,
    tls: &TlsFiles,
    peer: &PeerName,
    volumes: Arc<dyn NodeVolumes>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let router = tls_router(tls, peer, volumes)?;
    serve(listener, router, shutdown)?.1.await
}

/// Serves `router` on `listener` until `shutdown` resolves: the address it
/// listens on, and the serving to await.
pub(super) fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(SocketAddr, impl Future<Output = Result<()>>)> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("address of the NodeVolumes listener: {e}")))?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tracing::info!(%addr, "serving NodeVolumes over mutual TLS");
    let serving = async move {
        router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|e| Error::Internal(format!("serve NodeVolumes on {addr}: {}", chain(&e))))
    };
    Ok((addr, serving))
}

/// Lets a call through only when the client's certificate (already
/// verified against the CA by the handshake) carries `peer` among its DNS
/// names: the CA signs nodes' certificates too, and a node must not drive
/// another node's volumes.
// tonic's interceptor signature fixes the error type to `Status`.
#[allow(clippy::result_large_err)]
fn authorise(peer: PeerName) -> impl FnMut(Request<()>) -> std::result::Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let shown = req.peer_certs();
        match shown.as_deref().and_then(|certs| certs.first()) {
            Some(leaf) if peer.is_in(leaf) => Ok(req),
            Some(_) => {
                tracing::warn!(peer = %peer, "NodeVolumes: refused a client certificate of another name");
                Err(Error::PermissionDenied(format!(
                    "this node serves NodeVolumes only to a client certificate for {peer:?} (--peer-name)"
                ))
                .into())
            }
            None => Err(Error::PermissionDenied("NodeVolumes needs a client certificate".into()).into()),
        }
    }
}

/// The NodeVolumes service behind mutual TLS, ready to serve: the files
/// are read and parsed here; only a client certificate for `peer` is
/// served.
pub fn tls_router(tls: &TlsFiles, peer: &PeerName, volumes: Arc<dyn NodeVolumes>) -> Result<Router> {
    let config = ServerTlsConfig::new()
        .identity(tls.identity()?)
        .client_ca_root(tls.ca_certificate()?);
    Ok(Server::builder()
        .tls_config(config)
        .map_err(|e| {
            Error::Internal(format!(
                "TLS set-up of NodeVolumes with {}, {} and {}: {}",
                tls.cert.display(),
                tls.key.display(),
                tls.ca.display(),
                chain(&e)
            ))
        })?
        .add_service(NodeVolumesServer::with_interceptor(
            NodeVolumesService::new(volumes),
            authorise(peer.clone()),
        )))
}
