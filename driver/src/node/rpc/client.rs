//! [`RemoteVolumes`]: one node's [`NodeVolumes`] reached over
//! `floe.node.v1.NodeVolumes`: the node's own data plane on its unix socket
//! ([`RemoteVolumes::local`]), or a node plugin over mutual TLS
//! (`csi::remote`).
//!
//! The channel connects lazily and reconnects by itself, so a node that is
//! down at start or restarts costs the calls made meanwhile, not the
//! caller. A refusal by the node comes back as [`Error::Remote`] with the
//! node's code and message untouched; a node that cannot be reached
//! (connection, TLS handshake or transport failure) as `UNAVAILABLE`
//! naming the node and its address.

use std::path::Path;

use floe_proto::node as wire;
use floe_proto::node::node_volumes_client::NodeVolumesClient;
use tonic::transport::Channel;
use tonic::Status;

use crate::node::error::{Error, Result};
use crate::node::volumes::{
    Attachment, Capacity, GroupSnapshot, GroupSpec, NodeVolumes, Snapshot, SnapshotSpec, Volume, VolumeSpec,
};

/// The volumes of one node, over a gRPC channel.
#[derive(Clone)]
pub struct RemoteVolumes {
    node: String,
    url: String,
    channel: Via,
}

/// How a [`RemoteVolumes`] reaches its node.
#[derive(Clone)]
enum Via {
    /// A channel made by the caller (TLS).
    Channel(Channel),
    /// The data plane's unix socket, dialled at the first call.
    Local(super::LocalChannel),
}

impl RemoteVolumes {
    /// The volumes of node `node` over `channel`; `url` says where the
    /// channel goes, for messages. Nothing is dialled yet.
    pub fn over(node: &str, url: &str, channel: Channel) -> Self {
        RemoteVolumes {
            node: node.to_owned(),
            url: url.to_owned(),
            channel: Via::Channel(channel),
        }
    }

    /// This node's volumes, served by the data-plane daemon on `socket`
    /// (`<run-dir>/dataplane.sock`). Nothing is dialled yet; every call
    /// that finds no daemon is `UNAVAILABLE`, naming the socket.
    pub fn local(socket: &Path) -> Self {
        RemoteVolumes {
            node: "this node's data plane".into(),
            url: format!("unix:{}", socket.display()),
            channel: Via::Local(super::LocalChannel::new(socket)),
        }
    }

    /// The node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Where the node serves.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn client(&self) -> NodeVolumesClient<Channel> {
        match &self.channel {
            Via::Channel(c) => NodeVolumesClient::new(c.clone()),
            Via::Local(l) => NodeVolumesClient::new(l.get()),
        }
    }

    /// The error of a failed call.
    fn refused(&self, s: Status) -> Error {
        super::refusal(&format!("node {:?}", self.node), &self.url, s)
    }

    /// A field of an answer, checked.
    fn parse<W, T: TryFrom<W, Error = Error>>(&self, field: &str, value: Option<W>) -> Result<T> {
        let value = value.ok_or_else(|| Error::Internal(format!("node {:?} answered without {field}", self.node)))?;
        T::try_from(value)
            .map_err(|e| Error::Internal(format!("node {:?} answered with a bad {field}: {e}", self.node)))
    }

    fn parse_all<W, T: TryFrom<W, Error = Error>>(&self, field: &str, values: Vec<W>) -> Result<Vec<T>> {
        values.into_iter().map(|v| self.parse(field, Some(v))).collect()
    }
}

#[tonic::async_trait]
impl NodeVolumes for RemoteVolumes {
    async fn create(&self, spec: VolumeSpec) -> Result<Volume> {
        let req = wire::CreateVolumeRequest {
            spec: Some((&spec).into()),
        };
        let r = self.client().create_volume(req).await.map_err(|s| self.refused(s))?;
        self.parse("volume", r.into_inner().volume)
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let req = wire::DeleteVolumeRequest { id: id.to_owned() };
        self.client().delete_volume(req).await.map_err(|s| self.refused(s))?;
        Ok(())
    }

    async fn volume(&self, id: &str) -> Result<Option<Volume>> {
        let req = wire::GetVolumeRequest { id: id.to_owned() };
        let r = self.client().get_volume(req).await.map_err(|s| self.refused(s))?;
        r.into_inner().volume.map(|v| self.parse("volume", Some(v))).transpose()
    }

    async fn volumes(&self) -> Result<Vec<Volume>> {
        let req = wire::ListVolumesRequest {};
        let r = self.client().list_volumes(req).await.map_err(|s| self.refused(s))?;
        self.parse_all("volume", r.into_inner().volumes)
    }

    async fn expand(&self, id: &str, size_bytes: u64) -> Result<Volume> {
        let req = wire::ExpandVolumeRequest {
            id: id.to_owned(),
            size_bytes,
        };
        let r = self.client().expand_volume(req).await.map_err(|s| self.refused(s))?;
        self.parse("volume", r.into_inner().volume)
    }

    async fn attach(&self, id: &str) -> Result<Attachment> {
        let req = wire::AttachVolumeRequest { id: id.to_owned() };
        let r = self.client().attach_volume(req).await.map_err(|s| self.refused(s))?;
        self.parse("attachment", r.into_inner().attachment)
    }

    async fn detach(&self, id: &str) -> Result<()> {
        let req = wire::DetachVolumeRequest { id: id.to_owned() };
        self.client().detach_volume(req).await.map_err(|s| self.refused(s))?;
        Ok(())
    }

    async fn snapshot(&self, spec: SnapshotSpec) -> Result<Snapshot> {
        let req = wire::CreateSnapshotRequest {
            spec: Some((&spec).into()),
        };
        let r = self.client().create_snapshot(req).await.map_err(|s| self.refused(s))?;
        self.parse("snapshot", r.into_inner().snapshot)
    }

    async fn delete_snapshot(&self, id: &str) -> Result<()> {
        let req = wire::DeleteSnapshotRequest { id: id.to_owned() };
        self.client().delete_snapshot(req).await.map_err(|s| self.refused(s))?;
        Ok(())
    }

    async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let req = wire::ListSnapshotsRequest {};
        let r = self.client().list_snapshots(req).await.map_err(|s| self.refused(s))?;
        self.parse_all("snapshot", r.into_inner().snapshots)
    }

    async fn create_group(&self, spec: GroupSpec) -> Result<GroupSnapshot> {
        let req = wire::CreateGroupRequest {
            spec: Some((&spec).into()),
        };
        let r = self.client().create_group(req).await.map_err(|s| self.refused(s))?;
        self.parse("group snapshot", r.into_inner().group)
    }

    async fn delete_group(&self, id: &str) -> Result<()> {
        let req = wire::DeleteGroupRequest { id: id.to_owned() };
        self.client().delete_group(req).await.map_err(|s| self.refused(s))?;
        Ok(())
    }

    async fn group(&self, id: &str) -> Result<Option<GroupSnapshot>> {
        let req = wire::GetGroupRequest { id: id.to_owned() };
        let r = self.client().get_group(req).await.map_err(|s| self.refused(s))?;
        r.into_inner()
            .group
            .map(|g| self.parse("group snapshot", Some(g)))
            .transpose()
    }

    // The node's own data plane is the one-node case: the trait's
    // defaults. A node plugin reached over TLS is a node of a cluster.
    fn nodes(&self) -> Vec<String> {
        match self.channel {
            Via::Local(_) => Vec::new(),
            Via::Channel(_) => vec![self.node.clone()],
        }
    }

    async fn volume_node(&self, id: &str) -> Result<Option<String>> {
        if let Via::Local(_) = self.channel {
            return Ok(None);
        }
        Ok(self.volume(id).await?.map(|_| self.node.clone()))
    }

    async fn snapshot_node(&self, id: &str) -> Result<Option<String>> {
        if let Via::Local(_) = self.channel {
            return Ok(None);
        }
        let held = self.snapshots().await?.iter().any(|s| s.id == id);
        Ok(held.then(|| self.node.clone()))
    }

    async fn capacity_of(&self, node: &str) -> Result<Capacity> {
        if let Via::Local(_) = self.channel {
            return self.capacity().await;
        }
        if node != self.node {
            return Err(Error::Invalid {
                field: "node",
                value: node.to_owned(),
                expected: format!("{:?}, the one node this client reaches", self.node),
            });
        }
        self.capacity().await
    }

    async fn capacity(&self) -> Result<Capacity> {
        let req = wire::GetCapacityRequest {};
        let r = self.client().get_capacity(req).await.map_err(|s| self.refused(s))?;
        let c = r
            .into_inner()
            .capacity
            .ok_or_else(|| Error::Internal(format!("node {:?} answered without capacity", self.node)))?;
        Ok(c.into())
    }
}
