//! [`LocalVolumes`]: the node's CSI objects, kept by the data-plane daemon.
//!
//! ```text
//! <data_dir>/volumes/<store>/         one data-plane volume per CSI volume (owner "csi")
//! <data_dir>/csi/catalog.json         volumes, snapshots, group snapshots
//! <data_dir>/csi/snapshots/<id>.img   snapshot images, apart from their volume
//! ```
//!
//! It runs inside `floe-dataplane serve` ([`crate::daemon`]),
//! next to the volumes it names, so that the processes kubelet talks to
//! (`floe-csi`) can die at any time without touching a volume's I/O; they
//! reach it through the daemon's API socket (`node.proto`'s
//! `NodeVolumes`, [`super::rpc`]).
//! The daemon's volumes (`Volumes`) do the physical work: stores,
//! engines, attach and detach with the fd holder (so a restart of the
//! daemon costs no I/O error either), growth within a store's reserve, and
//! the cut across volumes under freeze. This module adds the CSI layer:
//! names, file system and replication parameters, content sources,
//! snapshots that outlive their volume, group snapshots, idempotency by
//! name.
//!
//! Each CSI volume has a store of its own name ([`store_name`]): a hash of
//! the CSI id and a generation, bumped when an offline expansion copies
//! the volume into a larger store.
//!
//! Crash safety: see [`super::catalog`]. At start, `LocalVolumes::open`
//! drops unfinished creations and removes the stores and files no catalog
//! entry names. Attachments are the daemon's: it takes them over at its
//! own start.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::catalog::{Catalog, CatalogFile, State, VolumeRecord};
use super::error::{Error, Result};
use super::locks::{creation_keys, volume_key, Locks};
use super::mounts;
use super::volumes::{
    Attachment, Capacity, GroupSnapshot, GroupSpec, NodeVolumes, Snapshot, SnapshotSpec, Source, Volume, VolumeSpec,
};
use crate::dataplane::sized::{copy_into, reserve_for};
use crate::model::ObjectId;
use crate::node::plane::types::{AttachState, Name, Shape};
use crate::node::plane::volumes::Volumes;

/// Who the data plane's volumes of the CSI catalog belong to.
pub const OWNER: &str = "csi";

/// Test hooks: delays injected into the group cut.
#[derive(Debug, Default)]
pub struct Failpoints {
    /// Sleep this long before cutting the member at this index.
    pub cut_delay: Mutex<Option<(usize, std::time::Duration)>>,
}

pub(super) struct Inner {
    pub(super) snap_dir: PathBuf,
    data_dir: PathBuf,
    file: CatalogFile,
    catalog: Mutex<Catalog>,
    /// Per-object guards of the catalog's operations.
    pub(super) locks: Locks,
    /// Held from a capacity check to the catalog write of the claim it
    /// allowed, so two creations cannot both take the same free bytes.
    claims: Mutex<()>,
    pub(super) failpoints: Failpoints,
    pub(super) plane: Arc<Volumes>,
}

/// The node's CSI objects on the data plane's volumes.
#[derive(Clone)]
pub struct LocalVolumes {
    pub(super) inner: Arc<Inner>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The data-plane volume holding generation `generation` of CSI volume
/// `id`: a name the data plane takes whatever the CSI id is.
pub fn store_name(id: &str, generation: u64) -> String {
    let hash = blake3::hash(id.as_bytes());
    format!("csi-{}-{generation}", &hash.to_hex()[..24])
}

/// The data plane's name of the cut `id` takes in a store.
pub(super) fn cut_name(id: &str) -> Name {
    let hash = blake3::hash(id.as_bytes());
    Name::snapshot(format!("cut-{}", &hash.to_hex()[..32])).expect("hex names are valid")
}

/// The data plane's name of a store the catalog names.
pub(super) fn store(r: &VolumeRecord) -> Result<Name> {
    Name::volume(r.store.clone()).map_err(|e| Error::Internal(format!("the catalog names store {:?}: {e}", r.store)))
}

fn generation(store: &str) -> u64 {
    store.rsplit_once('-').and_then(|(_, n)| n.parse().ok()).unwrap_or(0)
}

impl LocalVolumes {
    /// Opens (creating if needed) the catalog under `data_dir` over the
    /// data plane's `plane`, and recovers from a crash of the previous
    /// process.
    pub(crate) fn open(data_dir: &Path, plane: Arc<Volumes>) -> Result<Self> {
        let csi = data_dir.join("csi");
        let snap_dir = csi.join("snapshots");
        std::fs::create_dir_all(&snap_dir).map_err(Error::io("create directory", &snap_dir))?;
        let file = CatalogFile::new(&csi)?;
        let catalog = file.load()?;
        let inner = Inner {
            data_dir: data_dir.to_owned(),
            snap_dir,
            file,
            catalog: Mutex::new(catalog),
            locks: Locks::default(),
            claims: Mutex::new(()),
            failpoints: Failpoints::default(),
            plane,
        };
        inner.recover()?;
        Ok(LocalVolumes { inner: Arc::new(inner) })
    }

    /// The test hooks.
    pub fn failpoints(&self) -> &Failpoints {
        &self.inner.failpoints
    }
}

impl Inner {
    /// Reads the catalog under its lock.
    pub(super) fn read<T>(&self, f: impl FnOnce(&Catalog) -> T) -> T {
        f(&lock(&self.catalog))
    }

    /// Changes the catalog and saves it; the change is kept in memory only
    /// if it is durable.
    pub(super) fn write<T>(&self, f: impl FnOnce(&mut Catalog) -> T) -> Result<T> {
        let mut guard = lock(&self.catalog);
        let mut next = guard.clone();
        let out = f(&mut next);
        self.file.save(&next)?;
        *guard = next;
        Ok(out)
    }

    /// The image of snapshot `id`: a file directly in the snapshot dir,
    /// whatever the id (an [`ObjectId`] is one safe component).
    pub(super) fn snapshot_file(&self, id: &ObjectId) -> PathBuf {
        self.snap_dir.join(format!("{id}.img"))
    }

    fn recover(&self) -> Result<()> {
        let (creating, groups): (Vec<String>, Vec<String>) = self.read(|c| {
            (
                c.volumes
                    .iter()
                    .filter(|(_, r)| r.state == State::Creating)
                    .map(|(id, _)| id.clone())
                    .collect(),
                c.groups
                    .iter()
                    .filter(|(_, g)| g.state == State::Creating)
                    .map(|(id, _)| id.clone())
                    .collect(),
            )
        });
        self.write(|c| {
            for id in &creating {
                c.volumes.remove(id);
            }
            for id in &groups {
                c.groups.remove(id);
                c.snapshots.retain(|_, s| s.group.as_deref() != Some(id));
            }
        })?;
        // Stores no catalog entry names: unfinished creations, copies and
        // the old store of an expansion.
        let stores: HashSet<String> = self.read(|c| c.volumes.values().map(|r| r.store.clone()).collect());
        for rec in self.plane.records_of(OWNER) {
            let Ok(name) = Name::volume(rec.volume.clone()) else {
                continue;
            };
            if stores.contains(&rec.volume) {
                // Its own snapshot dir only ever holds cuts not yet moved out.
                remove_files_in(&self.data_dir.join("volumes").join(&rec.volume).join("snapshots"));
                continue;
            }
            tracing::info!(store = %rec.volume, "remove a store no CSI volume owns");
            if let Err(e) = self.plane.delete(&name) {
                tracing::warn!(store = %rec.volume, error = %crate::node::plane::error::chain(&e), "keep a store no CSI volume owns");
            }
        }
        let snaps: HashSet<String> = self.read(|c| c.snapshots.keys().map(|id| format!("{id}.img")).collect());
        for entry in std::fs::read_dir(&self.snap_dir)
            .map_err(Error::io("list", &self.snap_dir))?
            .flatten()
        {
            if !snaps.contains(&*entry.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// The volume with its attachment, as the data plane has it now.
    pub(super) fn volume_of(&self, r: &VolumeRecord) -> Volume {
        let mut v = r.volume.clone();
        v.attachment = store(r)
            .ok()
            .and_then(|s| self.plane.info_of(&s).ok())
            .and_then(|i| i.attachment)
            .map(|a| Attachment { device: a.device });
        v
    }

    /// The record of volume `id`, when it is ready.
    fn ready_record(&self, id: &str) -> Option<VolumeRecord> {
        self.read(|c| c.volumes.get(id).filter(|r| r.state == State::Ready).cloned())
    }

    pub(super) fn ready(&self, id: &str) -> Result<VolumeRecord> {
        self.ready_record(id)
            .ok_or_else(|| Error::VolumeNotFound(id.to_owned()))
    }

    /// Makes store `name` for `v` with room for `reserve` bytes, filled from
    /// the first `len` bytes of the image `from`.
    fn new_store(&self, name: &str, v: &Volume, reserve: u64, from: Option<(&Path, u64)>) -> Result<()> {
        let name = Name::volume(name.to_owned()).map_err(|e| Error::Internal(format!("store name: {e}")))?;
        let shape = Shape::new(v.size_bytes, v.params.block_size, v.params.mode)
            .map_err(|e| Error::Internal(format!("volume shape: {e}")))?;
        self.plane
            .create_filled(&name, shape, reserve, OWNER, |primary| match from {
                None => Ok(()),
                Some((file, len)) => copy_into(file, len, primary)
                    .map(drop)
                    .map_err(Error::io("copy into the new volume from", file)),
            })?;
        Ok(())
    }

    pub(super) fn create(&self, spec: VolumeSpec) -> Result<Volume> {
        // A size the store cannot take is the caller's error, found before
        // anything is written.
        Shape::new(spec.size_bytes, spec.params.block_size, spec.params.mode)
            .map_err(|e| Error::from(crate::node::plane::error::PlaneError::from(e)))?;
        let _busy = self.locks.try_lock(&creation_keys(&spec.id, spec.source.as_ref()))?;
        if let Some(r) = self.read(|c| c.volumes.get(&spec.id).cloned()) {
            if r.state == State::Ready {
                if r.volume.matches(&spec) {
                    return Ok(self.volume_of(&r));
                }
                return Err(Error::AlreadyExists {
                    kind: "volume",
                    name: spec.name.clone(),
                    existing: r.volume.describe(),
                    requested: spec.describe(),
                });
            }
        }
        // What to copy from, checked before anything is written: a
        // snapshot's image (with its length), or a volume to cut first.
        enum Content {
            Image(PathBuf, u64),
            Volume(VolumeRecord),
        }
        let copy_from = match &spec.source {
            None => None,
            Some(Source::Snapshot(sid)) => {
                let s = self
                    .read(|c| c.snapshots.get(sid).cloned())
                    .ok_or_else(|| Error::SnapshotNotFound(sid.clone()))?;
                check_fits(spec.size_bytes, s.size_bytes, "snapshot", sid)?;
                Some(Content::Image(
                    self.snapshot_file(&ObjectId::parse("source.snapshot", sid)?),
                    s.size_bytes,
                ))
            }
            Some(Source::Volume(vid)) => {
                let src = self.ready(vid)?;
                check_fits(spec.size_bytes, src.volume.size_bytes, "volume", vid)?;
                Some(Content::Volume(src))
            }
        };
        let claim = lock(&self.claims);
        let cap = self.capacity()?;
        if spec.size_bytes > cap.available_bytes {
            return Err(Error::ResourceExhausted(format!(
                "this node has {} bytes free for volumes; {} bytes were asked for: ask for less or free space",
                cap.available_bytes, spec.size_bytes
            )));
        }
        let volume = Volume {
            id: spec.id.clone(),
            name: spec.name.clone(),
            size_bytes: spec.size_bytes,
            params: spec.params,
            source: spec.source.clone(),
            attachment: None,
        };
        let record = VolumeRecord {
            volume: volume.clone(),
            store: store_name(&spec.id, 1),
            reserve_bytes: reserve_for(spec.size_bytes, spec.params.block_size),
            state: State::Creating,
        };
        self.write(|c| c.volumes.insert(spec.id.clone(), record.clone()))?;
        drop(claim);
        let filled = match copy_from {
            None => self.new_store(&record.store, &volume, record.reserve_bytes, None),
            Some(Content::Image(file, len)) => {
                self.new_store(&record.store, &volume, record.reserve_bytes, Some((&file, len)))
            }
            Some(Content::Volume(src)) => self.cut_one(&src, &format!("clone-{}", spec.id)).and_then(|file| {
                let len = src.volume.size_bytes;
                let res = self.new_store(&record.store, &volume, record.reserve_bytes, Some((&file, len)));
                let _ = std::fs::remove_file(&file);
                res
            }),
        };
        if let Err(e) = filled {
            let _ = self.write(|c| c.volumes.remove(&spec.id));
            return Err(e);
        }
        self.write(|c| {
            if let Some(r) = c.volumes.get_mut(&spec.id) {
                r.state = State::Ready;
            }
        })?;
        tracing::info!(volume = %spec.id, size = spec.size_bytes, source = ?spec.source, store = %record.store, "volume created");
        Ok(volume)
    }

    pub(super) fn delete(&self, id: &str) -> Result<()> {
        let _busy = self.locks.try_lock(&[volume_key(id)])?;
        let Some(r) = self.read(|c| c.volumes.get(id).cloned()) else {
            return Ok(());
        };
        if let Some(a) = self.volume_of(&r).attachment {
            return Err(Error::FailedPrecondition(format!(
                "volume {id:?} is attached as {}: unstage it (NodeUnstageVolume) before deleting it",
                a.device.display()
            )));
        }
        // The record goes first: a crash then leaves a store no one owns,
        // which the next start removes.
        self.write(|c| c.volumes.remove(id))?;
        let name = store(&r)?;
        match self.plane.delete(&name) {
            Ok(()) => {}
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(volume = %id, "volume deleted");
        Ok(())
    }

    pub(super) fn attach(&self, id: &str) -> Result<Attachment> {
        let _busy = self.locks.try_lock(&[volume_key(id)])?;
        let r = self.ready(id)?;
        let name = store(&r)?;
        let info = match self.plane.info_of(&name)?.attachment {
            Some(a) => a,
            None => self
                .plane
                .attach(&name)?
                .attachment
                .ok_or_else(|| Error::Internal(format!("the data plane attached {name} but shows no device")))?,
        };
        if info.state == AttachState::Broken {
            return Err(Error::FailedPrecondition(format!(
                "volume {id:?} is attached as {} but its FUSE connection is lost ({}): unmount what is on the \
                 device and unstage the volume, then stage it again",
                info.device.display(),
                info.detail.unwrap_or_default()
            )));
        }
        tracing::info!(volume = %id, device = %info.device.display(), "volume attached");
        Ok(Attachment { device: info.device })
    }

    pub(super) fn detach(&self, id: &str) -> Result<()> {
        let _busy = self.locks.try_lock(&[volume_key(id)])?;
        let Some(r) = self.read(|c| c.volumes.get(id).cloned()) else {
            return Ok(());
        };
        let Some(a) = self.volume_of(&r).attachment else {
            return Ok(());
        };
        let table = mounts::mount_table()?;
        let mut users: Vec<String> = mounts::mounts_of(&table, mounts::device_number(&a.device)?)
            .into_iter()
            .chain(mounts::node_binds_of(&table, &a.device))
            .map(|m| m.mount_point.display().to_string())
            .collect();
        if !users.is_empty() {
            users.sort();
            return Err(Error::FailedPrecondition(format!(
                "volume {id:?} ({}) is still mounted at {}: unpublish and unstage it first",
                a.device.display(),
                users.join(", ")
            )));
        }
        self.plane.detach(&store(&r)?)?;
        tracing::info!(volume = %id, "volume detached");
        Ok(())
    }

    pub(super) fn expand(&self, id: &str, size: u64) -> Result<Volume> {
        let _busy = self.locks.try_lock(&[volume_key(id)])?;
        let r = self.ready(id)?;
        let name = store(&r)?;
        let plane_size = self.plane.info_of(&name)?.size_bytes;
        if size <= r.volume.size_bytes && size <= plane_size {
            return Ok(self.volume_of(&r));
        }
        let mut next = r.clone();
        next.volume.size_bytes = size.max(r.volume.size_bytes);
        if size > r.reserve_bytes {
            if let Some(a) = self.volume_of(&r).attachment {
                return Err(Error::FailedPrecondition(format!(
                    "volume {id:?} is attached ({}) and grows online only up to {} bytes, the size of its store; \
                     growing it to {size} bytes copies it into a larger store: unstage it, expand, stage it again",
                    a.device.display(),
                    r.reserve_bytes
                )));
            }
            // Offline: copy into a larger store, then switch to it.
            next.store = store_name(id, generation(&r.store) + 1);
            next.reserve_bytes = reserve_for(size, r.volume.params.block_size);
            let file = self.cut_one(&r, &format!("grow-{id}"))?;
            let filled = self.new_store(
                &next.store,
                &next.volume,
                next.reserve_bytes,
                Some((&file, r.volume.size_bytes)),
            );
            let _ = std::fs::remove_file(&file);
            filled?;
            self.write(|c| c.volumes.insert(id.to_owned(), next.clone()))?;
            if let Err(e) = self.plane.delete(&name) {
                tracing::warn!(store = %name, error = %crate::node::plane::error::chain(&e), "remove the outgrown store (the next start retries)");
            }
            tracing::info!(volume = %id, size, store = %next.store, "volume grown by copying it into a larger store");
            return Ok(self.volume_of(&next));
        }
        let claim = lock(&self.claims);
        let growth = next.volume.size_bytes.saturating_sub(r.volume.size_bytes);
        let available = self.capacity()?.available_bytes;
        if growth > available {
            return Err(Error::ResourceExhausted(format!(
                "growing volume {id:?} by {growth} bytes needs more than the {available} bytes this node has free for volumes"
            )));
        }
        // Within the reserve: the catalog first, so a crash never shrinks it;
        // the data plane then grows the store's size and the attached device.
        self.write(|c| c.volumes.insert(id.to_owned(), next.clone()))?;
        drop(claim);
        self.plane.expand(&name, next.volume.size_bytes)?;
        tracing::info!(volume = %id, size, "volume grown");
        Ok(self.volume_of(&next))
    }

    /// Space left for new volumes: the data disk's free bytes less what
    /// the volumes already made are promised and have not yet taken (a
    /// store is sparse: each volume holds a claim on its capacity, less
    /// the bytes its store has allocated), so volumes are never
    /// overcommitted. Snapshots and copies take what they allocate.
    pub(super) fn capacity(&self) -> Result<Capacity> {
        let (bytes, _) = mounts::usage(&self.data_dir)?;
        let records: Vec<VolumeRecord> = self.read(|c| c.volumes.values().cloned().collect());
        let promised: u64 = records
            .iter()
            .map(|r| {
                let dir = self.data_dir.join("volumes").join(&r.store);
                r.volume.size_bytes.saturating_sub(allocated_bytes(&dir))
            })
            .sum();
        let available = bytes[1].saturating_sub(promised);
        Ok(Capacity {
            available_bytes: available,
            max_volume_bytes: available,
        })
    }
}

/// Bytes allocated on disk by the files under `dir` (recursively).
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
        .map(|(path, m)| {
            if m.is_dir() {
                allocated_bytes(&path)
            } else {
                m.blocks() * 512
            }
        })
        .sum()
}

fn check_fits(size: u64, source: u64, kind: &str, id: &str) -> Result<()> {
    if size < source {
        return Err(Error::OutOfRange(format!(
            "the new volume would hold {size} bytes but {kind} {id:?} has {source}: ask for at least {source} bytes"
        )));
    }
    Ok(())
}

fn remove_files_in(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl LocalVolumes {
    /// The store of ready volume `id` (its data-plane volume).
    pub fn store_of(&self, id: &str) -> Option<String> {
        self.inner.ready_record(id).map(|r| r.store)
    }

    /// Ready volume `id`.
    pub fn ready_volume(&self, id: &str) -> Option<Volume> {
        self.inner.ready_record(id).map(|r| self.inner.volume_of(&r))
    }

    /// The ready volume whose store is `store`.
    pub fn volume_of_store(&self, store: &str) -> Option<String> {
        self.inner.read(|c| {
            c.volumes
                .iter()
                .find(|(_, r)| r.state == State::Ready && r.store == store)
                .map(|(id, _)| id.clone())
        })
    }

    /// Makes the promoted DR store in directory `from` the CSI volume
    /// `volume` (its engine a primary already; `reserve`: its store's
    /// bytes). The catalog names the store before the directory moves, so
    /// a crash in between leaves an entry whose store the next promote
    /// step moves, never a store the start-up sweep removes. Again with the
    /// same volume is not an error.
    pub fn adopt_promoted(&self, volume: Volume, from: &Path, reserve: u64) -> Result<()> {
        let i = &self.inner;
        let store = store_name(&volume.id, 1);
        let _busy = i.locks.try_lock(&[volume_key(&volume.id)])?;
        match i.read(|c| c.volumes.get(&volume.id).cloned()) {
            Some(r) if r.store == store && r.state == State::Ready => {}
            Some(r) => {
                return Err(Error::AlreadyExists {
                    kind: "volume",
                    name: volume.id.clone(),
                    existing: r.volume.describe(),
                    requested: format!("the promoted replica of {}", volume.id),
                })
            }
            None => {
                let record = VolumeRecord {
                    volume: volume.clone(),
                    store: store.clone(),
                    reserve_bytes: reserve,
                    state: State::Ready,
                };
                i.write(|c| c.volumes.insert(volume.id.clone(), record))?;
            }
        }
        let name = Name::volume(store).map_err(|e| Error::Internal(format!("store name: {e}")))?;
        let shape = Shape::new(volume.size_bytes, volume.params.block_size, volume.params.mode)
            .map_err(|e| Error::from(crate::node::plane::error::PlaneError::from(e)))?;
        i.plane.adopt(from, &name, shape, reserve, OWNER)?;
        tracing::info!(volume = %volume.id, "promoted replica is a volume of this node");
        Ok(())
    }

    /// Gives CSI volume `volume` up to a demotion (the reverse of
    /// [`LocalVolumes::adopt_promoted`]): with it detached and held,
    /// `prepare(store)` turns its store (named `store` in the plane's data
    /// directory) into a replica, the directory moves to `to`, and only
    /// then does the catalog forget the volume, so a crash in between
    /// leaves a store the next demote step moves, never one the start-up
    /// sweep removes. Again once done is not an error.
    pub fn release_demoted(&self, volume: &str, to: &Path, prepare: impl FnOnce(&str) -> Result<()>) -> Result<()> {
        let i = &self.inner;
        let _busy = i.locks.try_lock(&[volume_key(volume)])?;
        let Some(r) = i.read(|c| c.volumes.get(volume).cloned()) else {
            return if to.exists() {
                Ok(())
            } else {
                Err(Error::VolumeNotFound(volume.to_owned()))
            };
        };
        if r.state != State::Ready {
            return Err(Error::FailedPrecondition(format!(
                "volume {volume:?} is being created or deleted: demote it once that finished"
            )));
        }
        let name = Name::volume(r.store.clone()).map_err(|e| Error::Internal(format!("store name: {e}")))?;
        i.plane.release(&name, to, || prepare(&r.store))?;
        i.write(|c| c.volumes.remove(volume))?;
        tracing::info!(volume, "demoted: no longer a volume of this node");
        Ok(())
    }

    /// Runs `op` on tokio's blocking pool: the catalog's work is file I/O,
    /// copies and freezes.
    async fn blocking<T: Send + 'static>(&self, op: impl FnOnce(&Inner) -> Result<T> + Send + 'static) -> Result<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || op(&me.inner))
            .await
            .map_err(|e| Error::Internal(format!("a volume operation panicked or was cancelled: {e}")))?
    }
}

/// `value` as an id of `field`: every entry to the catalog checks its ids
/// (the gRPC service has already, at its edge; an in-process caller has
/// not).
fn checked(field: &'static str, value: &str) -> Result<String> {
    Ok(ObjectId::parse(field, value)?.to_string())
}

fn checked_snapshot(spec: &SnapshotSpec) -> Result<()> {
    checked("snapshot.id", &spec.id)?;
    checked("snapshot.volume", &spec.volume).map(drop)
}

#[tonic::async_trait]
impl NodeVolumes for LocalVolumes {
    async fn create(&self, spec: VolumeSpec) -> Result<Volume> {
        checked("spec.id", &spec.id)?;
        match &spec.source {
            Some(Source::Snapshot(s)) => checked("source.snapshot", s).map(drop)?,
            Some(Source::Volume(v)) => checked("source.volume", v).map(drop)?,
            None => {}
        }
        self.blocking(move |i| i.create(spec)).await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let id = checked("volume_id", id)?;
        self.blocking(move |i| i.delete(&id)).await
    }

    async fn volume(&self, id: &str) -> Result<Option<Volume>> {
        let id = checked("volume_id", id)?;
        self.blocking(move |i| Ok(i.ready_record(&id).map(|r| i.volume_of(&r))))
            .await
    }

    async fn volumes(&self) -> Result<Vec<Volume>> {
        self.blocking(|i| {
            let records: Vec<_> = i.read(|c| {
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
        let id = checked("volume_id", id)?;
        self.blocking(move |i| i.expand(&id, size_bytes)).await
    }

    async fn attach(&self, id: &str) -> Result<Attachment> {
        let id = checked("volume_id", id)?;
        self.blocking(move |i| i.attach(&id)).await
    }

    async fn detach(&self, id: &str) -> Result<()> {
        let id = checked("volume_id", id)?;
        self.blocking(move |i| i.detach(&id)).await
    }

    async fn snapshot(&self, spec: SnapshotSpec) -> Result<Snapshot> {
        checked_snapshot(&spec)?;
        self.blocking(move |i| i.snapshot(spec)).await
    }

    async fn delete_snapshot(&self, id: &str) -> Result<()> {
        let id = checked("snapshot_id", id)?;
        self.blocking(move |i| i.delete_snapshot(&id)).await
    }

    async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        self.blocking(|i| Ok(i.read(|c| c.snapshots.values().cloned().collect())))
            .await
    }

    async fn create_group(&self, spec: GroupSpec) -> Result<GroupSnapshot> {
        checked("group.id", &spec.id)?;
        spec.members.iter().try_for_each(checked_snapshot)?;
        self.blocking(move |i| i.create_group(spec)).await
    }

    async fn delete_group(&self, id: &str) -> Result<()> {
        let id = checked("group_snapshot_id", id)?;
        self.blocking(move |i| i.delete_group(&id)).await
    }

    async fn group(&self, id: &str) -> Result<Option<GroupSnapshot>> {
        let id = checked("group_snapshot_id", id)?;
        self.blocking(move |i| {
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
        self.blocking(|i| i.capacity()).await
    }
}
