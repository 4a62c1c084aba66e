//! Snapshots and group snapshots of [`super::local::LocalVolumes`]: the cut.
//!
//! A cut across volumes (one volume is a group of one) is the data plane's
//! (`plane::volumes::Volumes::cut`): every file system mounted
//! from a member's device is flushed and frozen (all at once), each
//! member's engine marks its snapshot while the ones before it stay held
//! (no block is copied while frozen), then all is released and thawed, and
//! each member's snapshot is copied with the volumes' I/O going on; the
//! cut returns once every copy is durable. This module names the cuts,
//! moves each image out of its store into `csi/snapshots/`, fsyncs, and
//! only then records it in the catalog, so a snapshot the catalog names is
//! whole (a data plane that dies during a copy records nothing).

use std::path::PathBuf;

use super::catalog::{sync_dir, GroupRecord, State, VolumeRecord};
use super::error::{Error, Result};
use super::local::{cut_name, lock, store, Inner};
use super::locks::{group_key, group_keys, snapshot_key, volume_key};
use super::volumes::{GroupSnapshot, GroupSpec, Snapshot, SnapshotSpec, Time};
use crate::model::ObjectId;

impl Inner {
    /// One cut across `members`: (volume, id of the cut, where its image goes).
    pub(super) fn cut(&self, members: &[(VolumeRecord, String, PathBuf)]) -> Result<()> {
        let names = members
            .iter()
            .map(|(r, id, _)| Ok((store(r)?, cut_name(id))))
            .collect::<Result<Vec<_>>>()?;
        let delay = *lock(&self.failpoints.cut_delay);
        let images = self.plane.cut(&names, delay)?;
        let mut dirs: Vec<PathBuf> = Vec::new();
        for ((_, _, dest), src) in members.iter().zip(&images) {
            std::fs::rename(src, dest).map_err(Error::io("move the cut out of its store to", dest))?;
            if let Some(dir) = src.parent() {
                dirs.push(dir.to_owned());
            }
        }
        for dir in dirs {
            sync_dir(&dir)?;
        }
        sync_dir(&self.snap_dir)
    }

    /// Cuts one volume into a scratch image (for a clone or a copy into a
    /// larger store); the caller removes the file.
    pub(super) fn cut_one(&self, r: &VolumeRecord, name: &str) -> Result<PathBuf> {
        let dest = self.snap_dir.join(format!(".{}.img", cut_name(name)));
        self.cut(&[(r.clone(), name.to_owned(), dest.clone())])?;
        Ok(dest)
    }

    pub(super) fn snapshot(&self, spec: SnapshotSpec) -> Result<Snapshot> {
        let _busy = self
            .locks
            .try_lock(&[snapshot_key(&spec.id), volume_key(&spec.volume)])?;
        if let Some(s) = self.read(|c| c.snapshots.get(&spec.id).cloned()) {
            if s.source_volume == spec.volume && s.group.is_none() {
                return Ok(s);
            }
            return Err(Error::AlreadyExists {
                kind: "snapshot",
                name: spec.name,
                existing: match &s.group {
                    Some(g) => format!("source volume {:?} in group snapshot {g:?}", s.source_volume),
                    None => format!("source volume {:?}", s.source_volume),
                },
                requested: format!("source volume {:?}", spec.volume),
            });
        }
        let r = self.ready(&spec.volume)?;
        let created = Time::now();
        let file = self.snapshot_file(&ObjectId::parse("snapshot_id", &spec.id)?);
        self.cut(&[(r.clone(), spec.id.clone(), file)])?;
        let snap = Snapshot {
            id: spec.id.clone(),
            name: spec.name,
            source_volume: spec.volume,
            size_bytes: r.volume.size_bytes,
            created,
            group: None,
        };
        self.write(|c| c.snapshots.insert(spec.id, snap.clone()))?;
        tracing::info!(snapshot = %snap.id, volume = %snap.source_volume, "snapshot taken");
        Ok(snap)
    }

    pub(super) fn delete_snapshot(&self, id: &str) -> Result<()> {
        let _busy = self.locks.try_lock(&[snapshot_key(id)])?;
        let Some(s) = self.read(|c| c.snapshots.get(id).cloned()) else {
            return Ok(());
        };
        if let Some(g) = s.group {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {id:?} belongs to group snapshot {g:?}: delete the group snapshot instead"
            )));
        }
        self.write(|c| c.snapshots.remove(id))?;
        let _ = std::fs::remove_file(self.snapshot_file(&ObjectId::parse("snapshot_id", id)?));
        Ok(())
    }

    pub(super) fn create_group(&self, spec: GroupSpec) -> Result<GroupSnapshot> {
        let _busy = self.locks.try_lock(&group_keys(&spec))?;
        let ids: Vec<String> = spec.members.iter().map(|m| m.id.clone()).collect();
        let volumes: Vec<String> = spec.members.iter().map(|m| m.volume.clone()).collect();
        if let Some(g) = self.read(|c| c.groups.get(&spec.id).cloned()) {
            if g.state == State::Ready {
                if g.group.volumes == volumes && g.group.members == ids {
                    return Ok(g.group);
                }
                return Err(Error::AlreadyExists {
                    kind: "group snapshot",
                    name: spec.name,
                    existing: format!("source volumes {:?}", g.group.volumes),
                    requested: format!("source volumes {volumes:?}"),
                });
            }
            self.drop_group(&spec.id)?;
        }
        let mut cuts = Vec::with_capacity(spec.members.len());
        for m in &spec.members {
            if self.read(|c| c.snapshots.contains_key(&m.id)) {
                return Err(Error::AlreadyExists {
                    kind: "snapshot",
                    name: m.name.clone(),
                    existing: "no group".into(),
                    requested: format!("membership of group snapshot {:?}", spec.name),
                });
            }
            let file = self.snapshot_file(&ObjectId::parse("snapshot_id", &m.id)?);
            cuts.push((self.ready(&m.volume)?, m.id.clone(), file));
        }
        let group = GroupSnapshot {
            id: spec.id.clone(),
            name: spec.name.clone(),
            members: ids,
            volumes,
            created: Time::now(),
        };
        let record = GroupRecord {
            group: group.clone(),
            state: State::Creating,
        };
        self.write(|c| c.groups.insert(spec.id.clone(), record))?;
        if let Err(e) = self.cut(&cuts) {
            let _ = self.drop_group(&spec.id);
            return Err(e);
        }
        self.write(|c| {
            for (r, id, _) in &cuts {
                let name = spec.members.iter().find(|m| &m.id == id).map(|m| m.name.clone());
                c.snapshots.insert(
                    id.clone(),
                    Snapshot {
                        id: id.clone(),
                        name: name.unwrap_or_else(|| id.clone()),
                        source_volume: r.volume.id.clone(),
                        size_bytes: r.volume.size_bytes,
                        created: group.created,
                        group: Some(spec.id.clone()),
                    },
                );
            }
            if let Some(g) = c.groups.get_mut(&spec.id) {
                g.state = State::Ready;
            }
        })?;
        tracing::info!(group = %spec.id, volumes = ?group.volumes, "group snapshot taken");
        Ok(group)
    }

    /// Removes a group snapshot, its members' records and their files.
    fn drop_group(&self, id: &str) -> Result<()> {
        let members = self.write(|c| {
            let g = c.groups.remove(id);
            c.snapshots.retain(|_, s| s.group.as_deref() != Some(id));
            g.map(|g| g.group.members).unwrap_or_default()
        })?;
        for m in members {
            match ObjectId::parse("snapshot_id", &m) {
                Ok(id) => {
                    let _ = std::fs::remove_file(self.snapshot_file(&id));
                }
                Err(e) => tracing::error!(error = %e, "the catalog names a snapshot that is no id: its file is left"),
            }
        }
        Ok(())
    }

    pub(super) fn delete_group(&self, id: &str) -> Result<()> {
        let _busy = self.locks.try_lock(&[group_key(id)])?;
        self.drop_group(id)
    }
}
