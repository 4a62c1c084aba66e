//! Snapshots and group snapshots of [`LocalVolumes`]: the cut.
//!
//! A cut across volumes (one volume is a group of one):
//! 1. `syncfs` + `FIFREEZE` every file system mounted from a member's device
//!    (one mount per device: a freeze holds the whole superblock);
//! 2. take each member's engine lock in turn — which holds that volume's
//!    I/O — and cut it (`Primary::snapshot`) while keeping the locks already
//!    taken, so no member moves on before the last is cut (two-phase
//!    locking: the cut is consistent even for raw block volumes);
//! 3. release the engine locks, thaw every file system (also on every error
//!    path: a [`FrozenFs`] thaws on drop);
//! 4. rename each cut out of its store into `csi/snapshots/`, fsync, and
//!    only then record it in the catalog.

use std::path::PathBuf;
use std::sync::Arc;

use super::catalog::{sync_dir, GroupRecord, State, VolumeRecord};
use super::error::{Error, Result};
use super::local::{engine_err, lock, Failpoints, Inner, LocalVolumes};
use super::mounts;
use super::sized::SizedBackend;
use super::volumes::{
    Attachment, Capacity, GroupSnapshot, GroupSpec, NodeVolumes, Snapshot, SnapshotSpec, Time, Volume, VolumeSpec,
};
use crate::dataplane::fsfreeze::FrozenFs;
use crate::dataplane::EngineBackend;

/// A member's engine: served (attached) or opened for the cut.
enum Engine {
    Served(Arc<SizedBackend>),
    Opened(Box<EngineBackend>),
}

impl Engine {
    fn get(&self) -> &EngineBackend {
        match self {
            Engine::Served(b) => b.engine(),
            Engine::Opened(e) => e,
        }
    }
}

/// Cuts `engines[i..]` in order, holding each one's lock until all are cut.
fn hold_and_cut(engines: &[Engine], names: &[String], i: usize, fp: &Failpoints) -> Result<()> {
    let Some(engine) = engines.get(i) else {
        return Ok(());
    };
    engine.get().with_primary(|p| {
        let delay = *lock(&fp.cut_delay);
        if let Some((at, d)) = delay.filter(|(at, _)| *at == i) {
            tracing::warn!(member = at, delay = ?d, "failpoint: delaying the cut");
            std::thread::sleep(d);
        }
        p.snapshot(&names[i]).map_err(engine_err("cut the volume"))?;
        hold_and_cut(engines, names, i + 1, fp)
    })
}

impl Inner {
    /// One cut across `members`: (volume, name of the cut, where its image goes).
    pub(super) fn cut(&self, members: &[(VolumeRecord, String, PathBuf)]) -> Result<()> {
        let served = lock(&self.attached).clone();
        let table = mounts::mount_table()?;
        let mut engines = Vec::with_capacity(members.len());
        let mut to_freeze: Vec<PathBuf> = Vec::new();
        for (r, _, _) in members {
            match served.get(&r.volume.id) {
                Some(a) => {
                    let device = lock(&a.volume).device().to_owned();
                    if let Some(m) = mounts::mounts_of(&table, mounts::device_number(&device)?).first() {
                        to_freeze.push(m.mount_point.clone());
                    }
                    engines.push(Engine::Served(Arc::clone(&a.backend)));
                }
                None => engines.push(Engine::Opened(Box::new(self.open_engine(r)?))),
            }
        }
        let names: Vec<String> = members.iter().map(|(_, n, _)| n.clone()).collect();
        let mut frozen = Vec::with_capacity(to_freeze.len());
        for path in &to_freeze {
            frozen.push(FrozenFs::freeze(path).map_err(Error::Freeze)?);
        }
        let cut = hold_and_cut(&engines, &names, 0, &self.failpoints);
        let mut thawed = Ok(());
        for mut f in frozen {
            if let Err(e) = f.thaw() {
                tracing::error!(path = %f.path().display(), error = %e, "thaw after the cut");
                thawed = Err(Error::Freeze(e));
            }
        }
        drop(engines);
        cut?;
        thawed?;
        for (r, name, dest) in members {
            let dir = self.store_dir(&r.store).join("snapshots");
            let src = dir.join(format!("{name}.img"));
            std::fs::rename(&src, dest).map_err(Error::io("move the cut out of its store to", dest))?;
            sync_dir(&dir)?;
        }
        sync_dir(&self.snap_dir)
    }

    /// Cuts one volume into a scratch image (for a clone or a copy into a
    /// larger store); the caller removes the file.
    pub(super) fn cut_one(&self, r: &VolumeRecord, name: &str) -> Result<PathBuf> {
        let store_name = name.trim_start_matches('.').to_owned();
        let dest = self.snap_dir.join(format!(".{store_name}.img"));
        self.cut(&[(r.clone(), store_name, dest.clone())])?;
        Ok(dest)
    }

    fn snapshot(&self, spec: SnapshotSpec) -> Result<Snapshot> {
        let _busy = self.busy(&[format!("snapshot {}", spec.id), format!("volume {}", spec.volume)])?;
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
        self.cut(&[(r.clone(), spec.id.clone(), self.snapshot_file(&spec.id))])?;
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

    fn delete_snapshot(&self, id: &str) -> Result<()> {
        let _busy = self.busy(&[format!("snapshot {id}")])?;
        let Some(s) = self.read(|c| c.snapshots.get(id).cloned()) else {
            return Ok(());
        };
        if let Some(g) = s.group {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {id:?} belongs to group snapshot {g:?}: delete the group snapshot instead"
            )));
        }
        self.write(|c| c.snapshots.remove(id))?;
        let _ = std::fs::remove_file(self.snapshot_file(id));
        Ok(())
    }

    fn create_group(&self, spec: GroupSpec) -> Result<GroupSnapshot> {
        let mut keys = vec![format!("group {}", spec.id)];
        for m in &spec.members {
            keys.push(format!("snapshot {}", m.id));
            keys.push(format!("volume {}", m.volume));
        }
        let _busy = self.busy(&keys)?;
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
            cuts.push((self.ready(&m.volume)?, m.id.clone(), self.snapshot_file(&m.id)));
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
            let _ = std::fs::remove_file(self.snapshot_file(&m));
        }
        Ok(())
    }

    fn delete_group(&self, id: &str) -> Result<()> {
        let _busy = self.busy(&[format!("group {id}")])?;
        self.drop_group(id)
    }
}

#[tonic::async_trait]
impl NodeVolumes for LocalVolumes {
    async fn create(&self, spec: VolumeSpec) -> Result<Volume> {
        self.run(move |i| i.create(spec)).await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.run(move |i| i.delete(&id)).await
    }

    async fn volume(&self, id: &str) -> Result<Option<Volume>> {
        let id = id.to_owned();
        self.run(move |i| {
            Ok(
                i.read(|c| c.volumes.get(&id).filter(|r| r.state == State::Ready).cloned())
                    .map(|r| i.volume_of(&r)),
            )
        })
        .await
    }

    async fn volumes(&self) -> Result<Vec<Volume>> {
        self.run(|i| {
            let records: Vec<VolumeRecord> = i.read(|c| {
                c.volumes
                    .values()
                    .filter(|r| r.state == State::Ready)
                    .cloned()
                    .collect()
            });
            Ok(records.iter().map(|r| i.volume_of(r)).collect())
        })
        .await
    }

    async fn expand(&self, id: &str, size_bytes: u64) -> Result<Volume> {
        let id = id.to_owned();
        self.run(move |i| i.expand(&id, size_bytes)).await
    }

    async fn attach(&self, id: &str) -> Result<Attachment> {
        let id = id.to_owned();
        self.run(move |i| i.attach(&id)).await
    }

    async fn detach(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.run(move |i| i.detach(&id)).await
    }

    async fn snapshot(&self, spec: SnapshotSpec) -> Result<Snapshot> {
        self.run(move |i| i.snapshot(spec)).await
    }

    async fn delete_snapshot(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.run(move |i| i.delete_snapshot(&id)).await
    }

    async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        self.run(|i| Ok(i.read(|c| c.snapshots.values().cloned().collect())))
            .await
    }

    async fn create_group(&self, spec: GroupSpec) -> Result<GroupSnapshot> {
        self.run(move |i| i.create_group(spec)).await
    }

    async fn delete_group(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.run(move |i| i.delete_group(&id)).await
    }

    async fn group(&self, id: &str) -> Result<Option<GroupSnapshot>> {
        let id = id.to_owned();
        self.run(move |i| {
            Ok(i.read(|c| {
                c.groups
                    .get(&id)
                    .filter(|g| g.state == State::Ready)
                    .map(|g| g.group.clone())
            }))
        })
        .await
    }

    async fn capacity(&self) -> Result<Capacity> {
        self.run(|i| i.capacity()).await
    }
}
