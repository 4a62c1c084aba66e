//! What the CSI services need from the node that holds the volumes.
//!
//! [`NodeVolumes`] is the seam between the gRPC services and the data plane.
//! The data-plane daemon implements it with [`super::local::LocalVolumes`],
//! which keeps the node's CSI objects next to the volumes' I/O, and serves
//! it as `node.proto`'s `NodeVolumes` ([`super::rpc`]); a node plugin
//! reaches it over the daemon's unix socket, a controller in split mode
//! over mutual TLS (`csi::remote`), both with
//! [`super::rpc::client::RemoteVolumes`].
//!
//! # Shape
//!
//! - **Volume lifecycle and data path, not file systems.** The trait hands
//!   out a block device (`attach`) and takes it back (`detach`); mkfs, mount,
//!   bind mounts and statvfs stay in the node service, because their paths
//!   come from kubelet and they are the same whichever process serves the
//!   device. The one exception is the group cut, below.
//! - **Idempotent by id.** Ids are chosen by the caller (derived from the CSI
//!   name), so a retried `create`, `snapshot` or `create_group` finds its
//!   earlier result: the same spec returns it, a different spec is
//!   `AlreadyExists`; a creation interrupted by a crash is started over.
//!   Deletes of what is not there succeed.
//! - **The cut is one call.** `create_group` freezes every file system
//!   mounted from the members' devices, cuts each volume while holding all of
//!   their I/O, and thaws — inside the implementation, so the freeze never
//!   outlives the process that holds it and never waits on the network. A
//!   group spanning nodes will need the controller's quiesce/freeze/thaw
//!   sequence over `node.proto` instead (the replication issue).
//! - **Coarse, async.** One call per CSI-visible step, so a remote
//!   implementation costs one round trip per RPC.
//! - **Placement is the implementation's.** An in-process implementation
//!   holds the volumes of this plugin's node; a controller in split mode
//!   holds those of several nodes (`csi::remote::Cluster`) and says
//!   which through [`NodeVolumes::nodes`], [`NodeVolumes::volume_node`],
//!   [`NodeVolumes::snapshot_node`] and [`NodeVolumes::capacity_of`], whose
//!   defaults describe the one-node case.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::Result;
use super::params::VolumeParams;

/// Where a new volume's content comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A copy of a snapshot (restore).
    Snapshot(String),
    /// A copy of a volume as it is now (clone).
    Volume(String),
}

/// A volume to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// Id (derived from the name).
    pub id: String,
    /// The CO's name for it.
    pub name: String,
    /// Capacity in bytes, a multiple of the block size.
    pub size_bytes: u64,
    /// File system, block size, replication mode.
    pub params: VolumeParams,
    /// Initial content.
    pub source: Option<Source>,
    /// Placement hint: the node to make it on, chosen by the controller from
    /// the request's topology among [`NodeVolumes::nodes`]. `None`: no
    /// preference (and always `None` for an in-process implementation, whose
    /// one node is this plugin's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The block device of an attached volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// `/dev/loopN`.
    pub device: PathBuf,
}

/// A volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Id.
    pub id: String,
    /// The CO's name for it.
    pub name: String,
    /// Capacity in bytes.
    pub size_bytes: u64,
    /// File system, block size, replication mode.
    pub params: VolumeParams,
    /// What it was made from.
    pub source: Option<Source>,
    /// Its block device, when attached.
    #[serde(default)]
    pub attachment: Option<Attachment>,
}

impl Volume {
    /// Whether `spec` asks for exactly this volume.
    pub fn matches(&self, spec: &VolumeSpec) -> bool {
        self.id == spec.id
            && self.name == spec.name
            && self.size_bytes == spec.size_bytes
            && self.params == spec.params
            && self.source == spec.source
    }

    /// The volume's properties in words, for error messages.
    pub fn describe(&self) -> String {
        describe(self.size_bytes, &self.params, self.source.as_ref())
    }
}

impl VolumeSpec {
    /// The spec's properties in words, for error messages.
    pub fn describe(&self) -> String {
        describe(self.size_bytes, &self.params, self.source.as_ref())
    }
}

fn describe(size: u64, p: &VolumeParams, source: Option<&Source>) -> String {
    let mut s = format!(
        "{size} bytes, fsType {}, blockSize {}, replicationMode {}",
        p.fs_type.name(),
        p.block_size,
        p.mode.name()
    );
    match source {
        Some(Source::Snapshot(id)) => s.push_str(&format!(", from snapshot {id:?}")),
        Some(Source::Volume(id)) => s.push_str(&format!(", cloned from volume {id:?}")),
        None => {}
    }
    s
}

/// A snapshot to take.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSpec {
    /// Id (derived from the name).
    pub id: String,
    /// The CO's name for it.
    pub name: String,
    /// The volume to copy.
    pub volume: String,
}

/// A point in time, as the CSI timestamp wants it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Time {
    /// Seconds since the Unix epoch.
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: i32,
}

impl Time {
    /// Now.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Time {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }
    }
}

impl From<Time> for prost_types::Timestamp {
    fn from(t: Time) -> Self {
        prost_types::Timestamp {
            seconds: t.secs,
            nanos: t.nanos,
        }
    }
}

/// A snapshot: a retained local point-in-time copy of a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Id.
    pub id: String,
    /// The CO's name for it.
    pub name: String,
    /// The volume it copies.
    pub source_volume: String,
    /// Bytes of the volume at the cut.
    pub size_bytes: u64,
    /// When the cut was taken.
    pub created: Time,
    /// The group snapshot it belongs to.
    pub group: Option<String>,
}

/// A group snapshot to take: one cut across the members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    /// Id (derived from the name).
    pub id: String,
    /// The CO's name for it.
    pub name: String,
    /// One snapshot per volume.
    pub members: Vec<SnapshotSpec>,
}

/// A group snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSnapshot {
    /// Id.
    pub id: String,
    /// The CO's name for it.
    pub name: String,
    /// Member snapshot ids, in the order of the request.
    pub members: Vec<String>,
    /// Source volume of each member, same order.
    pub volumes: Vec<String>,
    /// When the cut was taken.
    pub created: Time,
}

/// Space on the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Bytes free for new volumes.
    pub available_bytes: u64,
    /// Largest volume the node could hold now.
    pub max_volume_bytes: u64,
}

/// What the CSI services need from the node holding the volumes.
#[tonic::async_trait]
pub trait NodeVolumes: Send + Sync + 'static {
    /// Creates a volume (empty, restored or cloned). Idempotent by id.
    async fn create(&self, spec: VolumeSpec) -> Result<Volume>;
    /// Deletes a detached volume; its snapshots stay. Absent is success.
    async fn delete(&self, id: &str) -> Result<()>;
    /// One volume, with its attachment.
    async fn volume(&self, id: &str) -> Result<Option<Volume>>;
    /// Every volume, by id.
    async fn volumes(&self) -> Result<Vec<Volume>>;
    /// Grows a volume to `size_bytes` (a multiple of its block size); a
    /// smaller or equal size is a no-op. An attached volume's device grows
    /// too; its file system is the caller's.
    async fn expand(&self, id: &str, size_bytes: u64) -> Result<Volume>;
    /// Exposes the volume as a block device. Idempotent.
    async fn attach(&self, id: &str) -> Result<Attachment>;
    /// Tears the block device down; its file systems must be unmounted.
    /// Idempotent.
    async fn detach(&self, id: &str) -> Result<()>;
    /// Takes a snapshot (its file system frozen for the cut when mounted).
    /// Idempotent by id.
    async fn snapshot(&self, spec: SnapshotSpec) -> Result<Snapshot>;
    /// Deletes a snapshot that is not a group member. Absent is success.
    async fn delete_snapshot(&self, id: &str) -> Result<()>;
    /// Every snapshot, by id.
    async fn snapshots(&self) -> Result<Vec<Snapshot>>;
    /// Takes one cut across several volumes. Idempotent by id.
    async fn create_group(&self, spec: GroupSpec) -> Result<GroupSnapshot>;
    /// Deletes a group snapshot and its members. Absent is success.
    async fn delete_group(&self, id: &str) -> Result<()>;
    /// One group snapshot.
    async fn group(&self, id: &str) -> Result<Option<GroupSnapshot>>;
    /// Space left for volumes.
    async fn capacity(&self) -> Result<Capacity>;

    /// The nodes whose volumes this implementation holds, by node id. Empty
    /// (the default): only this plugin's own node.
    fn nodes(&self) -> Vec<String> {
        Vec::new()
    }
    /// The node holding volume `id`, `None` when it is this plugin's own
    /// node (the default) or no node holds it.
    async fn volume_node(&self, id: &str) -> Result<Option<String>> {
        let _ = id;
        Ok(None)
    }
    /// The node holding snapshot `id`, as [`NodeVolumes::volume_node`].
    async fn snapshot_node(&self, id: &str) -> Result<Option<String>> {
        let _ = id;
        Ok(None)
    }
    /// Space on `node`, one of [`NodeVolumes::nodes`]. The default: this
    /// plugin's own node, [`NodeVolumes::capacity`].
    async fn capacity_of(&self, node: &str) -> Result<Capacity> {
        let _ = node;
        self.capacity().await
    }
}
