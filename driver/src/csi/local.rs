//! [`LocalVolumes`]: [`NodeVolumes`] in-process, on the node's data dir.
//!
//! ```text
//! <data_dir>/volumes/<store>/         one FileStore per volume (store::layout)
//! <data_dir>/csi/catalog.json         volumes, snapshots, group snapshots
//! <data_dir>/csi/snapshots/<id>.img   snapshot images, apart from their volume
//! <data_dir>/csi/fuse/<volume>/       FUSE mount of an attached volume
//! ```
//!
//! Every volume's I/O goes through `floe_engine::Primary` on its
//! `FileStore` ([`EngineBackend`]), shown at its capacity by
//! [`SizedBackend`], served by FUSE with a loop device on top
//! ([`AttachedVolume`]). Snapshots are the engine's own
//! (`Primary::snapshot`), renamed out of the volume's store so they outlive
//! it. Blocking work runs on tokio's blocking pool.
//!
//! Crash safety: see [`super::catalog`]. At start, [`LocalVolumes::open`]
//! drops unfinished creations, removes files no catalog entry names, and
//! tears down attachments a crashed predecessor left (their FUSE server died
//! with it). Re-staging those volumes is the data-plane daemon's job once it
//! serves them; until then kubelet sees the error on the next publish.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use floe_engine::{Geometry, Primary, RoleGeneration};

use super::catalog::{Catalog, CatalogFile, State, VolumeRecord};
use super::error::{Error, Result};
use super::mounts;
use super::sized::{copy_into, reserve_for, SizedBackend};
use super::volumes::{Attachment, Capacity, Source, Volume, VolumeSpec};
use crate::dataplane::{AttachedVolume, BlockBackend, EngineBackend};
use crate::store::FileStore;

/// Bytes covered by one write-intent region.
const REGION_BYTES: u64 = 4 << 20;

/// A volume served on this node.
pub(super) struct Attached {
    pub(super) backend: Arc<SizedBackend>,
    pub(super) volume: Mutex<AttachedVolume>,
}

/// Test hooks: delays injected into the group cut.
#[derive(Debug, Default)]
pub struct Failpoints {
    /// Sleep this long before cutting the member at this index.
    pub cut_delay: Mutex<Option<(usize, std::time::Duration)>>,
}

pub(super) struct Inner {
    pub(super) data_dir: PathBuf,
    pub(super) snap_dir: PathBuf,
    fuse_dir: PathBuf,
    file: CatalogFile,
    catalog: Mutex<Catalog>,
    pub(super) attached: Mutex<HashMap<String, Arc<Attached>>>,
    busy: Mutex<HashSet<String>>,
    pub(super) failpoints: Failpoints,
}

/// [`NodeVolumes`](super::volumes::NodeVolumes) in this process.
#[derive(Clone)]
pub struct LocalVolumes {
    pub(super) inner: Arc<Inner>,
}

/// Marks objects busy for the life of the guard.
pub(super) struct Busy<'a> {
    inner: &'a Inner,
    keys: Vec<String>,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut busy = lock(&self.inner.busy);
        for k in &self.keys {
            busy.remove(k);
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn store_err(op: &'static str) -> impl FnOnce(crate::store::Error) -> Error {
    move |source| Error::Store { op, source }
}

pub(super) fn engine_err(op: &'static str) -> impl FnOnce(floe_engine::EngineError) -> Error {
    move |source| Error::Engine { op, source }
}

impl LocalVolumes {
    /// Opens (creating if needed) the volumes under `data_dir` and recovers
    /// from a crash of the previous process.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let csi = data_dir.join("csi");
        let (snap_dir, fuse_dir) = (csi.join("snapshots"), csi.join("fuse"));
        for d in [&snap_dir, &fuse_dir, &data_dir.join("volumes")] {
            std::fs::create_dir_all(d).map_err(Error::io("create directory", d))?;
        }
        let file = CatalogFile::new(&csi)?;
        let catalog = file.load()?;
        let inner = Inner {
            data_dir: data_dir.to_owned(),
            snap_dir,
            fuse_dir,
            file,
            catalog: Mutex::new(catalog),
            attached: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            failpoints: Failpoints::default(),
        };
        inner.recover()?;
        Ok(LocalVolumes { inner: Arc::new(inner) })
    }

    /// The test hooks.
    pub fn failpoints(&self) -> &Failpoints {
        &self.inner.failpoints
    }

    /// Runs blocking work on the blocking pool.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| Error::Internal(format!("a volume operation panicked or was cancelled: {e}")))?
    }
}

impl Inner {
    pub(super) fn busy(&self, keys: &[String]) -> Result<Busy<'_>> {
        let mut busy = lock(&self.busy);
        if let Some(k) = keys.iter().find(|k| busy.contains(*k)) {
            return Err(Error::Busy(k.clone()));
        }
        busy.extend(keys.iter().cloned());
        Ok(Busy {
            inner: self,
            keys: keys.to_vec(),
        })
    }

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

    pub(super) fn store_dir(&self, store: &str) -> PathBuf {
        self.data_dir.join("volumes").join(store)
    }

    pub(super) fn snapshot_file(&self, id: &str) -> PathBuf {
        self.snap_dir.join(format!("{id}.img"))
    }

    fn recover(&self) -> Result<()> {
        let stale = mounts::teardown_stale(&self.fuse_dir)?;
        if !stale.is_empty() {
            tracing::warn!(volumes = ?stale, "tore down attachments left by a previous process; stage them again");
        }
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
        // Files no catalog entry names: unfinished creations, copies and cuts.
        let (stores, snaps): (HashSet<String>, HashSet<String>) = self.read(|c| {
            (
                c.volumes.values().map(|r| r.store.clone()).collect(),
                c.snapshots.keys().map(|id| format!("{id}.img")).collect(),
            )
        });
        let volumes_dir = self.data_dir.join("volumes");
        for entry in std::fs::read_dir(&volumes_dir)
            .map_err(Error::io("list", &volumes_dir))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stores.contains(&name) {
                // Its own snapshot dir only ever holds cuts not yet moved out.
                remove_files_in(&entry.path().join("snapshots"));
            } else {
                tracing::info!(store = %name, "remove a store no volume owns");
                std::fs::remove_dir_all(entry.path()).map_err(Error::io("remove", entry.path()))?;
            }
        }
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

    pub(super) fn volume_of(&self, r: &VolumeRecord) -> Volume {
        let mut v = r.volume.clone();
        v.attachment = lock(&self.attached).get(&v.id).map(|a| Attachment {
            device: lock(&a.volume).device().to_owned(),
        });
        v
    }

    pub(super) fn ready(&self, id: &str) -> Result<VolumeRecord> {
        self.read(|c| c.volumes.get(id).filter(|r| r.state == State::Ready).cloned())
            .ok_or_else(|| Error::VolumeNotFound(id.to_owned()))
    }

    /// Opens a detached volume's engine.
    pub(super) fn open_engine(&self, r: &VolumeRecord) -> Result<EngineBackend> {
        let store = FileStore::open(&self.data_dir, &r.store).map_err(store_err("open the volume's store"))?;
        let geo = store.geometry();
        let primary =
            Primary::open(store, geo, r.volume.params.mode).map_err(engine_err("open the volume's engine"))?;
        Ok(EngineBackend::new(primary))
    }

    /// Creates a store of `reserve` bytes named `store` with an empty primary.
    fn new_store(&self, store: &str, r: &Volume, reserve: u64) -> Result<Primary<FileStore>> {
        let dir = self.store_dir(store);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(Error::io("remove the leftover store", &dir))?;
        }
        let bs = r.params.block_size;
        let geo = Geometry::new(bs as usize, reserve / bs, (REGION_BYTES / bs).max(1))
            .map_err(|e| Error::Internal(format!("geometry for {reserve} bytes in {bs}-byte blocks: {e}")))?;
        let fs = FileStore::create(&self.data_dir, store, geo).map_err(store_err("create the volume's store"))?;
        Primary::create(fs, geo, r.params.mode, RoleGeneration { counter: 1, site: 1 })
            .map_err(engine_err("initialise the volume's engine"))
    }

    pub(super) fn create(&self, spec: VolumeSpec) -> Result<Volume> {
        let mut keys = vec![format!("volume {}", spec.id)];
        match &spec.source {
            Some(Source::Snapshot(s)) => keys.push(format!("snapshot {s}")),
            Some(Source::Volume(v)) if *v != spec.id => keys.push(format!("volume {v}")),
            _ => {}
        }
        let _busy = self.busy(&keys)?;
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
        // What to copy from, checked before anything is written.
        let copy_from = match &spec.source {
            None => None,
            Some(Source::Snapshot(sid)) => {
                let s = self
                    .read(|c| c.snapshots.get(sid).cloned())
                    .ok_or_else(|| Error::SnapshotNotFound(sid.clone()))?;
                check_fits(spec.size_bytes, s.size_bytes, "snapshot", sid)?;
                Some((self.snapshot_file(sid), s.size_bytes, None))
            }
            Some(Source::Volume(vid)) => {
                let src = self.ready(vid)?;
                check_fits(spec.size_bytes, src.volume.size_bytes, "volume", vid)?;
                let tmp = format!(".clone-{}", spec.id);
                Some((PathBuf::new(), src.volume.size_bytes, Some((src, tmp))))
            }
        };
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
            store: spec.id.clone(),
            reserve_bytes: reserve_for(spec.size_bytes, spec.params.block_size),
            state: State::Creating,
        };
        self.write(|c| c.volumes.insert(spec.id.clone(), record.clone()))?;
        let result = self.fill(&record, copy_from);
        if let Err(e) = result {
            let _ = self.write(|c| c.volumes.remove(&spec.id));
            let _ = std::fs::remove_dir_all(self.store_dir(&record.store));
            return Err(e);
        }
        self.write(|c| {
            if let Some(r) = c.volumes.get_mut(&spec.id) {
                r.state = State::Ready;
            }
        })?;
        tracing::info!(volume = %spec.id, size = spec.size_bytes, source = ?spec.source, "volume created");
        Ok(volume)
    }

    /// Makes the store of a `Creating` record and copies its content in.
    #[allow(clippy::type_complexity)]
    fn fill(&self, r: &VolumeRecord, from: Option<(PathBuf, u64, Option<(VolumeRecord, String)>)>) -> Result<()> {
        let mut primary = self.new_store(&r.store, &r.volume, r.reserve_bytes)?;
        match from {
            None => primary.flush().map_err(engine_err("flush the new volume")),
            Some((file, len, None)) => {
                copy_into(&file, len, &mut primary).map_err(Error::io("copy the snapshot from", file))
            }
            Some((_, len, Some((src, tmp)))) => {
                let file = self.cut_one(&src, &tmp)?;
                let res = copy_into(&file, len, &mut primary).map_err(Error::io("copy the volume from", &file));
                let _ = std::fs::remove_file(&file);
                res
            }
        }
    }

    pub(super) fn delete(&self, id: &str) -> Result<()> {
        let _busy = self.busy(&[format!("volume {id}")])?;
        let Some(r) = self.read(|c| c.volumes.get(id).cloned()) else {
            return Ok(());
        };
        if let Some(a) = lock(&self.attached).get(id) {
            return Err(Error::FailedPrecondition(format!(
                "volume {id:?} is attached as {}: unstage it (NodeUnstageVolume) before deleting it",
                lock(&a.volume).device().display()
            )));
        }
        // The record goes first: a crash then leaves a store no one owns,
        // which the next start removes.
        self.write(|c| c.volumes.remove(id))?;
        let dir = self.store_dir(&r.store);
        std::fs::remove_dir_all(&dir)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(Error::io("remove the volume's store", dir))?;
        tracing::info!(volume = %id, "volume deleted");
        Ok(())
    }

    pub(super) fn attach(&self, id: &str) -> Result<Attachment> {
        let _busy = self.busy(&[format!("volume {id}")])?;
        let r = self.ready(id)?;
        if let Some(a) = lock(&self.attached).get(id) {
            return Ok(Attachment {
                device: lock(&a.volume).device().to_owned(),
            });
        }
        let backend = Arc::new(SizedBackend::new(self.open_engine(&r)?, r.volume.size_bytes));
        let fuse_dir = self.fuse_dir.join(id);
        let volume = AttachedVolume::attach(backend.clone() as Arc<dyn BlockBackend>, &fuse_dir).map_err(|source| {
            Error::Attach {
                op: "attach",
                volume: id.to_owned(),
                source,
            }
        })?;
        let device = volume.device().to_owned();
        lock(&self.attached).insert(
            id.to_owned(),
            Arc::new(Attached {
                backend,
                volume: Mutex::new(volume),
            }),
        );
        tracing::info!(volume = %id, device = %device.display(), "volume attached");
        Ok(Attachment { device })
    }

    pub(super) fn detach(&self, id: &str) -> Result<()> {
        let _busy = self.busy(&[format!("volume {id}")])?;
        let Some(a) = lock(&self.attached).get(id).cloned() else {
            return Ok(());
        };
        let device = lock(&a.volume).device().to_owned();
        let table = mounts::mount_table()?;
        let mut users: Vec<String> = mounts::mounts_of(&table, mounts::device_number(&device)?)
            .into_iter()
            .chain(mounts::node_binds_of(&table, &device))
            .map(|m| m.mount_point.display().to_string())
            .collect();
        if !users.is_empty() {
            users.sort();
            return Err(Error::FailedPrecondition(format!(
                "volume {id:?} ({}) is still mounted at {}: unpublish and unstage it first",
                device.display(),
                users.join(", ")
            )));
        }
        lock(&a.volume).detach().map_err(|source| Error::Attach {
            op: "detach",
            volume: id.to_owned(),
            source,
        })?;
        lock(&self.attached).remove(id);
        let _ = std::fs::remove_dir(self.fuse_dir.join(id));
        tracing::info!(volume = %id, "volume detached");
        Ok(())
    }

    pub(super) fn expand(&self, id: &str, size: u64) -> Result<Volume> {
        let _busy = self.busy(&[format!("volume {id}")])?;
        let r = self.ready(id)?;
        if size <= r.volume.size_bytes {
            return Ok(self.volume_of(&r));
        }
        let attached = lock(&self.attached).get(id).cloned();
        let mut next = r.clone();
        next.volume.size_bytes = size;
        if size > r.reserve_bytes {
            if let Some(a) = attached {
                return Err(Error::FailedPrecondition(format!(
                    "volume {id:?} is attached ({}) and grows online only up to {} bytes, the size of its store; \
                     growing it to {size} bytes copies it into a larger store: unstage it, expand, stage it again",
                    lock(&a.volume).device().display(),
                    r.reserve_bytes
                )));
            }
            // Offline: copy into a larger store, then switch to it.
            let generation = r
                .store
                .rsplit_once('@')
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .unwrap_or(1);
            next.store = format!("{id}@{}", generation + 1);
            next.reserve_bytes = reserve_for(size, r.volume.params.block_size);
            let file = self.cut_one(&r, &format!(".grow-{id}"))?;
            let filled = self
                .new_store(&next.store, &next.volume, next.reserve_bytes)
                .and_then(|mut p| {
                    copy_into(&file, r.volume.size_bytes, &mut p).map_err(Error::io("copy the volume from", &file))
                });
            let _ = std::fs::remove_file(&file);
            if let Err(e) = filled {
                let _ = std::fs::remove_dir_all(self.store_dir(&next.store));
                return Err(e);
            }
            self.write(|c| c.volumes.insert(id.to_owned(), next.clone()))?;
            let old = self.store_dir(&r.store);
            if let Err(e) = std::fs::remove_dir_all(&old) {
                tracing::warn!(store = %old.display(), error = %e, "remove the outgrown store (the next start retries)");
            }
            tracing::info!(volume = %id, size, store = %next.store, "volume grown by copying it into a larger store");
            return Ok(self.volume_of(&next));
        }
        // Within the reserve: the catalog first, so a crash never shrinks it.
        self.write(|c| c.volumes.insert(id.to_owned(), next.clone()))?;
        if let Some(a) = attached {
            lock(&a.volume).grow(size).map_err(|source| Error::Attach {
                op: "grow the device of",
                volume: id.to_owned(),
                source,
            })?;
        }
        tracing::info!(volume = %id, size, "volume grown");
        Ok(self.volume_of(&next))
    }

    pub(super) fn capacity(&self) -> Result<Capacity> {
        let (bytes, _) = mounts::usage(&self.data_dir)?;
        Ok(Capacity {
            available_bytes: bytes[1],
            max_volume_bytes: bytes[1],
        })
    }
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
