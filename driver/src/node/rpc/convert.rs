//! The domain types of [`crate::node::volumes`] to and from their
//! `floe.node.v1` messages.
//!
//! Outgoing is total (`From`); incoming is checked once, here (`TryFrom`):
//! a message that does not make a valid domain value is refused with
//! [`Error::Invalid`] naming the field. The server answers that with
//! `INVALID_ARGUMENT`; the client turns it into an internal error, since
//! then the node, not the CO, sent something wrong.

use floe_engine::Mode;
use floe_proto::node as wire;

use crate::dataplane::mount::FsType;
use crate::model::{BlockSize, ObjectId};
use crate::node::error::{Error, Result};
use crate::node::params::{VolumeParams, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
use crate::node::volumes::{
    Attachment, Capacity, GroupSnapshot, GroupSpec, Snapshot, SnapshotSpec, Source, Time, Volume, VolumeSpec,
};

/// A required string: present and not empty (names, device paths).
fn nonempty(field: &'static str, value: String) -> Result<String> {
    if value.is_empty() {
        return Err(Error::Invalid {
            field,
            value,
            expected: "a non-empty string".into(),
        });
    }
    Ok(value)
}

/// A required id: one this driver could have made, never a path
/// ([`ObjectId`]).
pub(super) fn id(field: &'static str, value: String) -> Result<String> {
    ObjectId::parse(field, &value)?;
    Ok(value)
}

/// A required sub-message.
fn present<T>(field: &'static str, value: Option<T>) -> Result<T> {
    value.ok_or_else(|| Error::Invalid {
        field,
        value: "unset".into(),
        expected: "the message to be set".into(),
    })
}

fn time(field: &'static str, t: Option<prost_types::Timestamp>) -> Result<Time> {
    let t = present(field, t)?;
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Error::Invalid {
            field,
            value: format!("{}s {}ns", t.seconds, t.nanos),
            expected: "nanoseconds from 0 to 999999999".into(),
        });
    }
    Ok(Time {
        secs: t.seconds,
        nanos: t.nanos,
    })
}

impl From<VolumeParams> for wire::VolumeParams {
    fn from(p: VolumeParams) -> Self {
        let fs_type = match p.fs_type {
            FsType::Ext4 => wire::FsType::Ext4,
            FsType::Xfs => wire::FsType::Xfs,
        };
        wire::VolumeParams {
            fs_type: fs_type.into(),
            block_size: p.block_size,
            replication_mode: mode_to_wire(p.mode).into(),
        }
    }
}

/// A replication mode as it travels.
pub(crate) fn mode_to_wire(mode: Mode) -> wire::ReplicationMode {
    match mode {
        Mode::Continuous => wire::ReplicationMode::Continuous,
        Mode::Log => wire::ReplicationMode::Log,
        Mode::Interval => wire::ReplicationMode::Interval,
    }
}

impl TryFrom<wire::VolumeParams> for VolumeParams {
    type Error = Error;
    fn try_from(p: wire::VolumeParams) -> Result<Self> {
        let fs_type = match wire::FsType::try_from(p.fs_type) {
            Ok(wire::FsType::Ext4) => FsType::Ext4,
            Ok(wire::FsType::Xfs) => FsType::Xfs,
            _ => {
                return Err(Error::Invalid {
                    field: "params.fs_type",
                    value: p.fs_type.to_string(),
                    expected: "FS_TYPE_EXT4 or FS_TYPE_XFS".into(),
                })
            }
        };
        let mode = match wire::ReplicationMode::try_from(p.replication_mode) {
            Ok(wire::ReplicationMode::Continuous) => Mode::Continuous,
            Ok(wire::ReplicationMode::Log) => Mode::Log,
            Ok(wire::ReplicationMode::Interval) => Mode::Interval,
            _ => {
                return Err(Error::Invalid {
                    field: "params.replication_mode",
                    value: p.replication_mode.to_string(),
                    expected: "REPLICATION_MODE_CONTINUOUS, _LOG or _INTERVAL".into(),
                })
            }
        };
        if BlockSize::new(p.block_size).is_none() {
            return Err(Error::Invalid {
                field: "params.block_size",
                value: p.block_size.to_string(),
                expected: format!("a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"),
            });
        }
        Ok(VolumeParams {
            fs_type,
            block_size: p.block_size,
            mode,
        })
    }
}

fn source_to_wire(s: Option<&Source>) -> Option<wire::Source> {
    s.map(|s| wire::Source {
        kind: Some(match s {
            Source::Snapshot(id) => wire::source::Kind::Snapshot(id.clone()),
            Source::Volume(id) => wire::source::Kind::Volume(id.clone()),
        }),
    })
}

fn source_from_wire(s: Option<wire::Source>) -> Result<Option<Source>> {
    Ok(match s.and_then(|s| s.kind) {
        None => None,
        Some(wire::source::Kind::Snapshot(id)) => Some(Source::Snapshot(self::id("source.snapshot", id)?)),
        Some(wire::source::Kind::Volume(id)) => Some(Source::Volume(self::id("source.volume", id)?)),
    })
}

impl From<&VolumeSpec> for wire::VolumeSpec {
    fn from(s: &VolumeSpec) -> Self {
        wire::VolumeSpec {
            id: s.id.clone(),
            name: s.name.clone(),
            size_bytes: s.size_bytes,
            params: Some(s.params.into()),
            source: source_to_wire(s.source.as_ref()),
        }
    }
}

impl TryFrom<wire::VolumeSpec> for VolumeSpec {
    type Error = Error;
    fn try_from(s: wire::VolumeSpec) -> Result<Self> {
        Ok(VolumeSpec {
            id: id("spec.id", s.id)?,
            name: nonempty("spec.name", s.name)?,
            size_bytes: s.size_bytes,
            params: present("spec.params", s.params)?.try_into()?,
            source: source_from_wire(s.source)?,
            node: None,
        })
    }
}

impl From<&Volume> for wire::Volume {
    fn from(v: &Volume) -> Self {
        wire::Volume {
            id: v.id.clone(),
            name: v.name.clone(),
            size_bytes: v.size_bytes,
            params: Some(v.params.into()),
            source: source_to_wire(v.source.as_ref()),
            attachment: v.attachment.as_ref().map(Into::into),
        }
    }
}

impl TryFrom<wire::Volume> for Volume {
    type Error = Error;
    fn try_from(v: wire::Volume) -> Result<Self> {
        Ok(Volume {
            id: id("volume.id", v.id)?,
            name: nonempty("volume.name", v.name)?,
            size_bytes: v.size_bytes,
            params: present("volume.params", v.params)?.try_into()?,
            source: source_from_wire(v.source)?,
            attachment: v.attachment.map(TryInto::try_into).transpose()?,
        })
    }
}

impl From<&Attachment> for wire::Attachment {
    fn from(a: &Attachment) -> Self {
        wire::Attachment {
            device: a.device.to_string_lossy().into_owned(),
        }
    }
}

impl TryFrom<wire::Attachment> for Attachment {
    type Error = Error;
    fn try_from(a: wire::Attachment) -> Result<Self> {
        Ok(Attachment {
            device: nonempty("attachment.device", a.device)?.into(),
        })
    }
}

impl From<&SnapshotSpec> for wire::SnapshotSpec {
    fn from(s: &SnapshotSpec) -> Self {
        wire::SnapshotSpec {
            id: s.id.clone(),
            name: s.name.clone(),
            volume: s.volume.clone(),
        }
    }
}

impl TryFrom<wire::SnapshotSpec> for SnapshotSpec {
    type Error = Error;
    fn try_from(s: wire::SnapshotSpec) -> Result<Self> {
        Ok(SnapshotSpec {
            id: id("snapshot.id", s.id)?,
            name: nonempty("snapshot.name", s.name)?,
            volume: id("snapshot.volume", s.volume)?,
        })
    }
}

impl From<&Snapshot> for wire::Snapshot {
    fn from(s: &Snapshot) -> Self {
        wire::Snapshot {
            id: s.id.clone(),
            name: s.name.clone(),
            source_volume: s.source_volume.clone(),
            size_bytes: s.size_bytes,
            created: Some(s.created.into()),
            group: s.group.clone().unwrap_or_default(),
        }
    }
}

impl TryFrom<wire::Snapshot> for Snapshot {
    type Error = Error;
    fn try_from(s: wire::Snapshot) -> Result<Self> {
        Ok(Snapshot {
            id: id("snapshot.id", s.id)?,
            name: nonempty("snapshot.name", s.name)?,
            source_volume: id("snapshot.source_volume", s.source_volume)?,
            size_bytes: s.size_bytes,
            created: time("snapshot.created", s.created)?,
            group: Some(s.group).filter(|g| !g.is_empty()),
        })
    }
}

impl From<&GroupSpec> for wire::GroupSpec {
    fn from(g: &GroupSpec) -> Self {
        wire::GroupSpec {
            id: g.id.clone(),
            name: g.name.clone(),
            members: g.members.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<wire::GroupSpec> for GroupSpec {
    type Error = Error;
    fn try_from(g: wire::GroupSpec) -> Result<Self> {
        Ok(GroupSpec {
            id: id("group.id", g.id)?,
            name: nonempty("group.name", g.name)?,
            members: g.members.into_iter().map(TryInto::try_into).collect::<Result<_>>()?,
        })
    }
}

impl From<&GroupSnapshot> for wire::GroupSnapshot {
    fn from(g: &GroupSnapshot) -> Self {
        wire::GroupSnapshot {
            id: g.id.clone(),
            name: g.name.clone(),
            members: g.members.clone(),
            volumes: g.volumes.clone(),
            created: Some(g.created.into()),
        }
    }
}

impl TryFrom<wire::GroupSnapshot> for GroupSnapshot {
    type Error = Error;
    fn try_from(g: wire::GroupSnapshot) -> Result<Self> {
        if g.members.len() != g.volumes.len() {
            return Err(Error::Invalid {
                field: "group.volumes",
                value: format!("{} volumes for {} members", g.volumes.len(), g.members.len()),
                expected: "one source volume per member".into(),
            });
        }
        Ok(GroupSnapshot {
            id: id("group.id", g.id)?,
            name: nonempty("group.name", g.name)?,
            members: g
                .members
                .into_iter()
                .map(|m| id("group.members", m))
                .collect::<Result<_>>()?,
            volumes: g
                .volumes
                .into_iter()
                .map(|v| id("group.volumes", v))
                .collect::<Result<_>>()?,
            created: time("group.created", g.created)?,
        })
    }
}

impl From<Capacity> for wire::Capacity {
    fn from(c: Capacity) -> Self {
        wire::Capacity {
            available_bytes: c.available_bytes,
            max_volume_bytes: c.max_volume_bytes,
        }
    }
}

impl From<wire::Capacity> for Capacity {
    fn from(c: wire::Capacity) -> Self {
        Capacity {
            available_bytes: c.available_bytes,
            max_volume_bytes: c.max_volume_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> VolumeParams {
        VolumeParams {
            fs_type: FsType::Xfs,
            block_size: 65536,
            mode: Mode::Interval,
        }
    }

    #[test]
    fn every_domain_value_survives_the_wire() {
        let spec = VolumeSpec {
            id: "pvc-1".into(),
            name: "pvc-1".into(),
            size_bytes: 1 << 30,
            params: params(),
            source: Some(Source::Snapshot("snap-1".into())),
            node: None,
        };
        assert_eq!(VolumeSpec::try_from(wire::VolumeSpec::from(&spec)).ok(), Some(spec));
        let volume = Volume {
            id: "pvc-2".into(),
            name: "claim two".into(),
            size_bytes: 4096,
            params: params(),
            source: Some(Source::Volume("pvc-1".into())),
            attachment: Some(Attachment {
                device: "/dev/loop7".into(),
            }),
        };
        assert_eq!(Volume::try_from(wire::Volume::from(&volume)).ok(), Some(volume));
        for group in [None, Some("g".to_owned())] {
            let snap = Snapshot {
                id: "s".into(),
                name: "s".into(),
                source_volume: "pvc-1".into(),
                size_bytes: 8192,
                created: Time { secs: 5, nanos: 7 },
                group,
            };
            assert_eq!(Snapshot::try_from(wire::Snapshot::from(&snap)).ok(), Some(snap));
        }
        let spec = GroupSpec {
            id: "g".into(),
            name: "g".into(),
            members: vec![SnapshotSpec {
                id: "m".into(),
                name: "m".into(),
                volume: "pvc-1".into(),
            }],
        };
        assert_eq!(GroupSpec::try_from(wire::GroupSpec::from(&spec)).ok(), Some(spec));
        let group = GroupSnapshot {
            id: "g".into(),
            name: "g".into(),
            members: vec!["m".into()],
            volumes: vec!["pvc-1".into()],
            created: Time { secs: 1, nanos: 0 },
        };
        assert_eq!(
            GroupSnapshot::try_from(wire::GroupSnapshot::from(&group)).ok(),
            Some(group)
        );
    }

    #[test]
    fn malformed_messages_are_refused_naming_the_field() {
        let good = wire::VolumeParams::from(params());
        let bad = [
            wire::VolumeParams { fs_type: 0, ..good },
            wire::VolumeParams { fs_type: 9, ..good },
            wire::VolumeParams {
                replication_mode: 0,
                ..good
            },
            wire::VolumeParams {
                block_size: 4097,
                ..good
            },
            wire::VolumeParams { block_size: 0, ..good },
        ];
        for p in bad {
            let e = VolumeParams::try_from(p).expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{p:?}");
            assert!(e.to_string().starts_with("params."), "{e}");
        }
        let spec = wire::VolumeSpec {
            id: "v".into(),
            name: "v".into(),
            size_bytes: 4096,
            params: None,
            source: None,
        };
        assert!(VolumeSpec::try_from(spec.clone()).is_err(), "no params");
        let spec = wire::VolumeSpec {
            params: Some(good),
            id: String::new(),
            ..spec
        };
        assert!(VolumeSpec::try_from(spec).is_err(), "no id");
        let g = wire::GroupSnapshot {
            id: "g".into(),
            name: "g".into(),
            members: vec!["a".into(), "b".into()],
            volumes: vec!["v".into()],
            created: Some(prost_types::Timestamp::default()),
        };
        assert!(
            GroupSnapshot::try_from(g).is_err(),
            "members and volumes differ in length"
        );
    }
}
