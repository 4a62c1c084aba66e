//! The node side of split mode: `floe.node.v1.NodeVolumes` over whatever
//! [`NodeVolumes`] the node plugin holds, served on TCP with mutual TLS.
//!
//! Every handler reads the same way: convert the request
//! ([`super::convert`]), call the node, convert the answer; a refusal
//! becomes a `Status` through the one `From<Error>` of
//! [`crate::node::error`], so the controller sees the code and message the
//! CSI services would have given.

use std::net::SocketAddr;
use std::sync::Arc;

use floe_proto::node as wire;
use floe_proto::node::node_volumes_server::{NodeVolumes as NodeVolumesRpc, NodeVolumesServer};
use tonic::transport::server::Router;
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use super::convert::id;
use super::TlsFiles;
use crate::model::PeerName;
use crate::node::error::{chain, Error, Result};
use crate::node::volumes::NodeVolumes;

/// `NodeVolumes` over gRPC, in front of a node's volumes.
#[derive(Clone)]
pub struct NodeVolumesService {
    volumes: Arc<dyn NodeVolumes>,
}

impl NodeVolumesService {
    /// The service in front of `volumes`.
    pub fn new(volumes: Arc<dyn NodeVolumes>) -> Self {
        NodeVolumesService { volumes }
    }
}

/// A required message of a request.
fn required<T>(field: &'static str, value: Option<T>) -> Result<T> {
    value.ok_or(Error::Missing {
        rpc: "NodeVolumes",
        field,
        hint: "the message to act on",
    })
}

type Answer<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl NodeVolumesRpc for NodeVolumesService {
    async fn create_volume(&self, request: Request<wire::CreateVolumeRequest>) -> Answer<wire::CreateVolumeResponse> {
        let spec = required("spec", request.into_inner().spec)?.try_into()?;
        let v = self.volumes.create(spec).await?;
        Ok(Response::new(wire::CreateVolumeResponse {
            volume: Some((&v).into()),
        }))
    }

    async fn delete_volume(&self, request: Request<wire::DeleteVolumeRequest>) -> Answer<wire::DeleteVolumeResponse> {
        self.volumes.delete(&id("id", request.into_inner().id)?).await?;
        Ok(Response::new(wire::DeleteVolumeResponse {}))
    }

    async fn get_volume(&self, request: Request<wire::GetVolumeRequest>) -> Answer<wire::GetVolumeResponse> {
        let v = self.volumes.volume(&id("id", request.into_inner().id)?).await?;
        Ok(Response::new(wire::GetVolumeResponse {
            volume: v.as_ref().map(Into::into),
        }))
    }

    async fn list_volumes(&self, _: Request<wire::ListVolumesRequest>) -> Answer<wire::ListVolumesResponse> {
        let all = self.volumes.volumes().await?;
        Ok(Response::new(wire::ListVolumesResponse {
            volumes: all.iter().map(Into::into).collect(),
        }))
    }

    async fn expand_volume(&self, request: Request<wire::ExpandVolumeRequest>) -> Answer<wire::ExpandVolumeResponse> {
        let req = request.into_inner();
        let v = self.volumes.expand(&id("id", req.id)?, req.size_bytes).await?;
        Ok(Response::new(wire::ExpandVolumeResponse {
            volume: Some((&v).into()),
        }))
    }

    async fn attach_volume(&self, request: Request<wire::AttachVolumeRequest>) -> Answer<wire::AttachVolumeResponse> {
        let a = self.volumes.attach(&id("id", request.into_inner().id)?).await?;
        Ok(Response::new(wire::AttachVolumeResponse {
            attachment: Some((&a).into()),
        }))
    }

    async fn detach_volume(&self, request: Request<wire::DetachVolumeRequest>) -> Answer<wire::DetachVolumeResponse> {
        self.volumes.detach(&id("id", request.into_inner().id)?).await?;
        Ok(Response::new(wire::DetachVolumeResponse {}))
    }

    async fn create_snapshot(
        &self,
        request: Request<wire::CreateSnapshotRequest>,
    ) -> Answer<wire::CreateSnapshotResponse> {
        let spec = required("spec", request.into_inner().spec)?.try_into()?;
        let s = self.volumes.snapshot(spec).await?;
        Ok(Response::new(wire::CreateSnapshotResponse {
            snapshot: Some((&s).into()),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<wire::DeleteSnapshotRequest>,
    ) -> Answer<wire::DeleteSnapshotResponse> {
        self.volumes
            .delete_snapshot(&id("id", request.into_inner().id)?)
            .await?;
        Ok(Response::new(wire::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(&self, _: Request<wire::ListSnapshotsRequest>) -> Answer<wire::ListSnapshotsResponse> {
        let all = self.volumes.snapshots().await?;
        Ok(Response::new(wire::ListSnapshotsResponse {
            snapshots: all.iter().map(Into::into).collect(),
        }))
    }

    async fn create_group(&self, request: Request<wire::CreateGroupRequest>) -> Answer<wire::CreateGroupResponse> {
        let spec = required("spec", request.into_inner().spec)?.try_into()?;
        let g = self.volumes.create_group(spec).await?;
        Ok(Response::new(wire::CreateGroupResponse {
            group: Some((&g).into()),
        }))
    }

    async fn delete_group(&self, request: Request<wire::DeleteGroupRequest>) -> Answer<wire::DeleteGroupResponse> {
        self.volumes.delete_group(&id("id", request.into_inner().id)?).await?;
        Ok(Response::new(wire::DeleteGroupResponse {}))
    }

    async fn get_group(&self, request: Request<wire::GetGroupRequest>) -> Answer<wire::GetGroupResponse> {
        let g = self.volumes.group(&id("id", request.into_inner().id)?).await?;
        Ok(Response::new(wire::GetGroupResponse {
            group: g.as_ref().map(Into::into),
        }))
    }

    async fn get_capacity(&self, _: Request<wire::GetCapacityRequest>) -> Answer<wire::GetCapacityResponse> {
        let c = self.volumes.capacity().await?;
        Ok(Response::new(wire::GetCapacityResponse {
            capacity: Some(c.into()),
        }))
    }
}

/// Serves `volumes` on `addr` with mutual TLS until `shutdown` resolves:
/// the server shows `tls.cert`, a client must show a certificate that
/// `tls.ca` signed or its handshake is refused, and one without `peer`
/// among its names is refused every call.
pub async fn serve_tls(
    addr: SocketAddr,
    tls: &TlsFiles,
    peer: &PeerName,
    volumes: Arc<dyn NodeVolumes>,
    shutdown: impl std::future::Future<Output = ()> + Send,
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
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("address of the NodeVolumes listener: {e}")))?;
    let router = tls_router(tls, peer, volumes)?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tracing::info!(%addr, "serving NodeVolumes over mutual TLS");
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Internal(format!("serve NodeVolumes on {addr}: {}", chain(&e))))
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
