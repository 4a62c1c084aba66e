//! [`DaemonVolumes`]: [`NodeVolumes`] of a node plugin, served by the
//! data-plane daemon through its local API; and the one place a
//! [`NodeReply`] becomes a trait method's result ([`CallNode`]).
//!
//! The node plugin keeps no volume: killing or restarting `floe-csi`
//! touches neither a volume's I/O nor its bookkeeping, because both live in
//! `floe-dataplane serve`. Every call opens a connection (a unix socket on
//! the same node: microseconds), sends one [`NodeCall`] and waits for its
//! answer on tokio's blocking pool. A call cut short when this process dies
//! completes or not in the daemon as a whole; the retry that kubelet or a
//! sidecar makes finds its result (every call is idempotent by id).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::Code;

use crate::daemon::api::{Reply, Request};
use crate::daemon::client::{Client, ClientError};
use crate::node::error::{Error, Result};
use crate::node::local::LocalVolumes;
use crate::node::volumes::{
    Attachment, Capacity, GroupSnapshot, GroupSpec, NodeVolumes, Snapshot, SnapshotSpec, Volume, VolumeSpec,
};
use crate::node::wire::{NodeCall, NodeReply};

/// Something that carries out [`NodeCall`]s: every such thing is a
/// [`NodeVolumes`].
#[tonic::async_trait]
pub trait CallNode: Send + Sync + 'static {
    /// Carries out one call.
    async fn send(&self, call: NodeCall) -> Result<NodeReply>;
}

/// The node's volumes, through the data-plane daemon's API socket.
#[derive(Clone, Debug)]
pub struct DaemonVolumes {
    socket: Arc<PathBuf>,
}

impl DaemonVolumes {
    /// The daemon listening on `socket` (`<run-dir>/dataplane.sock`).
    pub fn new(socket: &Path) -> Self {
        DaemonVolumes {
            socket: Arc::new(socket.to_owned()),
        }
    }

    fn call_blocking(socket: &Path, call: NodeCall) -> Result<NodeReply> {
        let unreachable = |e: ClientError| Error::Remote {
            code: Code::Unavailable,
            message: format!(
                "the data plane at {} cannot be reached ({}): is floe-dataplane serve running on this node?",
                socket.display(),
                crate::daemon::chain(&e)
            ),
        };
        let mut client = Client::connect(socket).map_err(unreachable)?;
        match client.call(&Request::Csi { call }) {
            Ok(Reply::Csi(reply)) => Ok(reply),
            Ok(_) => Err(Error::Internal(
                "the data plane answered a CSI call with another reply".into(),
            )),
            Err(ClientError::Api(w)) => Err(Error::Remote {
                code: w.kind.code(),
                message: w.message,
            }),
            Err(e) => Err(unreachable(e)),
        }
    }
}

#[tonic::async_trait]
impl CallNode for DaemonVolumes {
    async fn send(&self, call: NodeCall) -> Result<NodeReply> {
        let socket = Arc::clone(&self.socket);
        tokio::task::spawn_blocking(move || Self::call_blocking(&socket, call))
            .await
            .map_err(|e| Error::Internal(format!("a data-plane call panicked or was cancelled: {e}")))?
    }
}

#[tonic::async_trait]
impl CallNode for LocalVolumes {
    async fn send(&self, call: NodeCall) -> Result<NodeReply> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.call(call))
            .await
            .map_err(|e| Error::Internal(format!("a volume operation panicked or was cancelled: {e}")))?
    }
}

fn unexpected<T>(call: &'static str, got: NodeReply) -> Result<T> {
    Err(Error::Internal(format!("the data plane answered {call} with {got:?}")))
}

#[tonic::async_trait]
impl<T: CallNode> NodeVolumes for T {
    async fn create(&self, spec: VolumeSpec) -> Result<Volume> {
        match self.send(NodeCall::Create { spec }).await? {
            NodeReply::Volume(v) => Ok(v),
            r => unexpected("create", r),
        }
    }
    async fn delete(&self, id: &str) -> Result<()> {
        match self.send(NodeCall::Delete { id: id.to_owned() }).await? {
            NodeReply::Done => Ok(()),
            r => unexpected("delete", r),
        }
    }
    async fn volume(&self, id: &str) -> Result<Option<Volume>> {
        match self.send(NodeCall::Volume { id: id.to_owned() }).await? {
            NodeReply::MaybeVolume(v) => Ok(v),
            r => unexpected("volume", r),
        }
    }
    async fn volumes(&self) -> Result<Vec<Volume>> {
        match self.send(NodeCall::Volumes).await? {
            NodeReply::Volumes(v) => Ok(v),
            r => unexpected("volumes", r),
        }
    }
    async fn expand(&self, id: &str, size_bytes: u64) -> Result<Volume> {
        match self
            .send(NodeCall::Expand {
                id: id.to_owned(),
                size_bytes,
            })
            .await?
        {
            NodeReply::Volume(v) => Ok(v),
            r => unexpected("expand", r),
        }
    }
    async fn attach(&self, id: &str) -> Result<Attachment> {
        match self.send(NodeCall::Attach { id: id.to_owned() }).await? {
            NodeReply::Attachment(a) => Ok(a),
            r => unexpected("attach", r),
        }
    }
    async fn detach(&self, id: &str) -> Result<()> {
        match self.send(NodeCall::Detach { id: id.to_owned() }).await? {
            NodeReply::Done => Ok(()),
            r => unexpected("detach", r),
        }
    }
    async fn snapshot(&self, spec: SnapshotSpec) -> Result<Snapshot> {
        match self.send(NodeCall::Snapshot { spec }).await? {
            NodeReply::Snapshot(s) => Ok(s),
            r => unexpected("snapshot", r),
        }
    }
    async fn delete_snapshot(&self, id: &str) -> Result<()> {
        match self.send(NodeCall::DeleteSnapshot { id: id.to_owned() }).await? {
            NodeReply::Done => Ok(()),
            r => unexpected("delete_snapshot", r),
        }
    }
    async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        match self.send(NodeCall::Snapshots).await? {
            NodeReply::Snapshots(s) => Ok(s),
            r => unexpected("snapshots", r),
        }
    }
    async fn create_group(&self, spec: GroupSpec) -> Result<GroupSnapshot> {
        match self.send(NodeCall::CreateGroup { spec }).await? {
            NodeReply::Group(g) => Ok(g),
            r => unexpected("create_group", r),
        }
    }
    async fn delete_group(&self, id: &str) -> Result<()> {
        match self.send(NodeCall::DeleteGroup { id: id.to_owned() }).await? {
            NodeReply::Done => Ok(()),
            r => unexpected("delete_group", r),
        }
    }
    async fn group(&self, id: &str) -> Result<Option<GroupSnapshot>> {
        match self.send(NodeCall::Group { id: id.to_owned() }).await? {
            NodeReply::MaybeGroup(g) => Ok(g),
            r => unexpected("group", r),
        }
    }
    async fn capacity(&self) -> Result<Capacity> {
        match self.send(NodeCall::Capacity).await? {
            NodeReply::Capacity(c) => Ok(c),
            r => unexpected("capacity", r),
        }
    }
}
