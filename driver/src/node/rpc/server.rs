//! `floe.node.v1.NodeVolumes` over any [`NodeVolumes`]: the one gRPC
//! service of the node's operations, served by the data-plane daemon on its
//! unix socket (for `floe-csi` on the node) and by a node plugin over
//! mutual TLS (for a controller in split mode, `csi::remote`).
//!
//! Every handler reads the same way: convert the request
//! ([`super::convert`], which checks every id), call the node, convert the
//! answer; a refusal becomes a `Status` through the one `From<Error>` of
//! [`crate::node::error`], so the caller sees the code and message the
//! CSI services would have given.

use std::sync::Arc;

use floe_proto::node as wire;
use floe_proto::node::node_volumes_server::NodeVolumes as NodeVolumesRpc;
pub use floe_proto::node::node_volumes_server::NodeVolumesServer;
use tonic::{Request, Response, Status};

use super::convert::id;
use crate::node::error::{Error, Result};
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
