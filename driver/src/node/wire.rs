//! The CSI layer's calls as they travel to the data-plane daemon, and the
//! daemon's side of them.
//!
//! `floe-csi` holds no volume: every [`NodeVolumes`](super::volumes::NodeVolumes) call it makes becomes
//! one [`NodeCall`] on the daemon's local API (`{"op":"csi","call":…}`,
//! see `csi::daemon_volumes`), which the daemon carries out on its
//! [`LocalVolumes`] ([`LocalVolumes::call`]) and answers with one
//! [`NodeReply`]. Errors travel as the API's errors: their kind is the
//! gRPC code the CSI services return, their message the whole chain.

use serde::{Deserialize, Serialize};

use super::catalog::State;
use super::error::Result;
use super::local::LocalVolumes;
use super::volumes::{
    Attachment, Capacity, GroupSnapshot, GroupSpec, Snapshot, SnapshotSpec, Source, Volume, VolumeSpec,
};
use crate::model::{Invalid, ObjectId};

/// One [`NodeVolumes`](super::volumes::NodeVolumes) call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeCall {
    /// `create`.
    Create {
        /// The volume to create.
        spec: VolumeSpec,
    },
    /// `delete`.
    Delete {
        /// Volume id.
        id: String,
    },
    /// `volume`.
    Volume {
        /// Volume id.
        id: String,
    },
    /// `volumes`.
    Volumes,
    /// `expand`.
    Expand {
        /// Volume id.
        id: String,
        /// New size.
        size_bytes: u64,
    },
    /// `attach`.
    Attach {
        /// Volume id.
        id: String,
    },
    /// `detach`.
    Detach {
        /// Volume id.
        id: String,
    },
    /// `snapshot`.
    Snapshot {
        /// The snapshot to take.
        spec: SnapshotSpec,
    },
    /// `delete_snapshot`.
    DeleteSnapshot {
        /// Snapshot id.
        id: String,
    },
    /// `snapshots`.
    Snapshots,
    /// `create_group`.
    CreateGroup {
        /// The group snapshot to take.
        spec: GroupSpec,
    },
    /// `delete_group`.
    DeleteGroup {
        /// Group snapshot id.
        id: String,
    },
    /// `group`.
    Group {
        /// Group snapshot id.
        id: String,
    },
    /// `capacity`.
    Capacity,
}

/// The answer to a [`NodeCall`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", content = "value", rename_all = "snake_case")]
pub enum NodeReply {
    /// Done, nothing to return (delete, detach).
    Done,
    /// One volume.
    Volume(Volume),
    /// A volume, if it exists.
    MaybeVolume(Option<Volume>),
    /// Every volume.
    Volumes(Vec<Volume>),
    /// A block device.
    Attachment(Attachment),
    /// One snapshot.
    Snapshot(Snapshot),
    /// Every snapshot.
    Snapshots(Vec<Snapshot>),
    /// One group snapshot.
    Group(GroupSnapshot),
    /// A group snapshot, if it exists.
    MaybeGroup(Option<GroupSnapshot>),
    /// Space on the node.
    Capacity(Capacity),
}

impl NodeCall {
    /// Checks every id the call carries ([`ObjectId`]): the daemon is the
    /// node's one entry for these calls, local or from a remote controller.
    pub fn check_ids(&self) -> std::result::Result<(), Invalid> {
        let id = |field, v: &str| ObjectId::parse(field, v).map(drop);
        let snapshot = |s: &SnapshotSpec| -> std::result::Result<(), Invalid> {
            id("snapshot.id", &s.id)?;
            id("snapshot.volume", &s.volume)?;
            Ok(())
        };
        match self {
            NodeCall::Create { spec } => {
                id("spec.id", &spec.id)?;
                match &spec.source {
                    Some(Source::Snapshot(s)) => id("source.snapshot", s)?,
                    Some(Source::Volume(v)) => id("source.volume", v)?,
                    None => {}
                }
            }
            NodeCall::Delete { id: v }
            | NodeCall::Volume { id: v }
            | NodeCall::Expand { id: v, .. }
            | NodeCall::Attach { id: v }
            | NodeCall::Detach { id: v } => id("volume_id", v)?,
            NodeCall::Snapshot { spec } => snapshot(spec)?,
            NodeCall::DeleteSnapshot { id: s } => id("snapshot_id", s)?,
            NodeCall::CreateGroup { spec } => {
                id("group.id", &spec.id)?;
                for m in &spec.members {
                    snapshot(m)?;
                }
            }
            NodeCall::DeleteGroup { id: g } | NodeCall::Group { id: g } => id("group_snapshot_id", g)?,
            NodeCall::Volumes | NodeCall::Snapshots | NodeCall::Capacity => {}
        }
        Ok(())
    }
}

impl LocalVolumes {
    /// Carries out one call (blocking; the daemon's API threads call it).
    pub fn call(&self, call: NodeCall) -> Result<NodeReply> {
        call.check_ids()?;
        let i = &self.inner;
        Ok(match call {
            NodeCall::Create { spec } => NodeReply::Volume(i.create(spec)?),
            NodeCall::Delete { id } => {
                i.delete(&id)?;
                NodeReply::Done
            }
            NodeCall::Volume { id } => NodeReply::MaybeVolume(
                i.read(|c| c.volumes.get(&id).filter(|r| r.state == State::Ready).cloned())
                    .map(|r| i.volume_of(&r)),
            ),
            NodeCall::Volumes => {
                let records: Vec<_> = i.read(|c| {
                    c.volumes
                        .values()
                        .filter(|r| r.state == State::Ready)
                        .cloned()
                        .collect()
                });
                NodeReply::Volumes(records.iter().map(|r| i.volume_of(r)).collect())
            }
            NodeCall::Expand { id, size_bytes } => NodeReply::Volume(i.expand(&id, size_bytes)?),
            NodeCall::Attach { id } => NodeReply::Attachment(i.attach(&id)?),
            NodeCall::Detach { id } => {
                i.detach(&id)?;
                NodeReply::Done
            }
            NodeCall::Snapshot { spec } => NodeReply::Snapshot(i.snapshot(spec)?),
            NodeCall::DeleteSnapshot { id } => {
                i.delete_snapshot(&id)?;
                NodeReply::Done
            }
            NodeCall::Snapshots => NodeReply::Snapshots(i.read(|c| c.snapshots.values().cloned().collect())),
            NodeCall::CreateGroup { spec } => NodeReply::Group(i.create_group(spec)?),
            NodeCall::DeleteGroup { id } => {
                i.delete_group(&id)?;
                NodeReply::Done
            }
            NodeCall::Group { id } => NodeReply::MaybeGroup(i.read(|c| {
                c.groups
                    .get(&id)
                    .filter(|g| g.state == State::Ready)
                    .map(|g| g.group.clone())
            })),
            NodeCall::Capacity => NodeReply::Capacity(i.capacity()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_travel_as_tagged_objects_and_refuse_unknown_fields() {
        let call = NodeCall::Expand {
            id: "pvc-1".into(),
            size_bytes: 4096,
        };
        let text = serde_json::to_string(&call).expect("encode");
        assert_eq!(text, r#"{"method":"expand","id":"pvc-1","size_bytes":4096}"#);
        assert_eq!(serde_json::from_str::<NodeCall>(&text).expect("decode"), call);
        assert!(serde_json::from_str::<NodeCall>(r#"{"method":"expand","id":"a","size":1}"#).is_err());
        assert!(serde_json::from_str::<NodeCall>(r#"{"method":"format","id":"a"}"#).is_err());
    }

    #[test]
    fn ids_that_are_paths_are_refused() {
        let bad = "../../../../tmp/x";
        for call in [
            NodeCall::DeleteSnapshot { id: bad.into() },
            NodeCall::Attach { id: bad.into() },
            NodeCall::DeleteGroup { id: bad.into() },
            NodeCall::Snapshot {
                spec: SnapshotSpec {
                    id: bad.into(),
                    name: "n".into(),
                    volume: "v".into(),
                },
            },
        ] {
            let e = crate::node::error::Error::from(call.check_ids().expect_err("a path is no id"));
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{call:?}");
        }
        assert!(NodeCall::Attach { id: "pvc-1".into() }.check_ids().is_ok());
    }
}
