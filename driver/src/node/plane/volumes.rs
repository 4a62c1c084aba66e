//! The volumes of a node: what exists under `<data-dir>/volumes/`, what is
//! attached, and every operation on them, serialised per volume.
//!
//! Each volume has a slot behind its own mutex; an operation holds only its
//! volume's slot (never the freeze table; the cut across volumes holds its
//! members', see [`copies`]), so a slow snapshot of one volume does not
//! hold up another. A volume exists when its record,
//! `<data-dir>/volumes/<id>/volume.json`, does: it is written last at create
//! and restore and removed first at delete, so a directory without it is a
//! creation that did not finish, removed at the next start (or when the id
//! is created again).
//!
//! - this file: records, slots, create, delete, attach, detach, expand;
//! - [`copies`]: snapshots, restores, creations filled from an image, the
//!   cut across volumes;
//! - [`handover`]: taking volumes over at start, leaving them at exit.

mod copies;
mod handover;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::SystemTime;

use floe_engine::{Mode, Primary, RoleGeneration};
use serde::{Deserialize, Serialize};

use super::attachment::{AttachedFile, AttachedRecord, Attachment};
use super::error::{chain, PlaneError};
use super::files::{self, RunPaths};
use super::types::{self, Name, Shape, VolumeInfo};
use crate::dataplane::fuse::FuseConfig;
use crate::dataplane::mounttable;
use crate::replication::endpoint::HostedPrimary;
use crate::store::FileStore;

/// `<data-dir>/volumes/<id>/volume.json`: what a volume was created as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Volume id.
    pub volume: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Tracking block size.
    pub block_size: u64,
    /// Replication mode.
    pub mode: String,
    /// When it was created (Unix milliseconds).
    pub created_unix_ms: u64,
    /// The snapshot it was restored from, as `volume/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// Bytes the store has room for (its engine's geometry) when more than
    /// the size: the volume grows online up to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_bytes: Option<u64>,
    /// Who manages the volume: `csi` for volumes of the CSI catalog
    /// (`crate::node::local`), absent for volumes made through this API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl VolumeRecord {
    /// The record of volume `id` of `shape`, made now; `sized`: its store's
    /// bytes and its owner, when it is managed (`crate::node::local`).
    fn new(id: &Name, shape: Shape, restored_from: Option<String>, sized: Option<(u64, &str)>) -> Self {
        VolumeRecord {
            volume: id.to_string(),
            size_bytes: shape.size_bytes,
            block_size: shape.block_size,
            mode: shape.mode.name().to_owned(),
            created_unix_ms: files::unix_ms(SystemTime::now()),
            restored_from,
            reserve_bytes: sized.map(|(r, _)| r).filter(|r| *r > shape.size_bytes),
            owner: sized.map(|(_, o)| o.to_owned()),
        }
    }
}

/// Writes `record` as `dir/volume.json`.
fn write_record(dir: &Path, record: &VolumeRecord) -> Result<(), PlaneError> {
    let file = dir.join("volume.json");
    files::write_json(&file, record).map_err(PlaneError::io("write the volume record", &file))
}

#[derive(Debug, Clone)]
struct Spec {
    record: VolumeRecord,
    mode: Mode,
}

impl Spec {
    /// The most the volume grows to without a copy.
    fn reserve(&self) -> u64 {
        self.record
            .reserve_bytes
            .unwrap_or(self.record.size_bytes)
            .max(self.record.size_bytes)
    }

    fn shape_words(&self) -> String {
        format!(
            "size {} bytes, block size {}, mode {}",
            self.record.size_bytes, self.record.block_size, self.record.mode
        )
    }
}

#[derive(Default)]
struct Slot {
    spec: Option<Spec>,
    /// The directory holds a record that could not be read at start.
    unreadable: bool,
    attached: Option<Attachment>,
}

/// Every volume of the node.
pub(crate) struct Volumes {
    data_dir: PathBuf,
    run: RunPaths,
    fuse: FuseConfig,
    slots: Mutex<BTreeMap<String, Arc<Mutex<Slot>>>>,
    /// What `attached.json` holds; its lock orders the file's rewrites.
    index: Mutex<AttachedFile>,
    /// Told of engines starting and stopping here (the replication host).
    observer: OnceLock<Arc<dyn AttachObserver>>,
}

/// Told when a volume's engine starts or stops being served by this
/// process: the replication host starts and stops the volume's sender.
/// Called under the volume's slot lock; `detaching` returns only once
/// nothing but the attachment holds the engine.
pub(crate) trait AttachObserver: Send + Sync {
    /// Volume `store` was attached: its engine is `primary`.
    fn attached(&self, store: &str, primary: &Arc<HostedPrimary<FileStore>>);
    /// Volume `store` is about to be detached.
    fn detaching(&self, store: &str);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Volumes {
    /// Loads every volume record under `data_dir`.
    pub(crate) fn load(data_dir: &Path, run: &RunPaths, fuse: FuseConfig) -> Result<Self, PlaneError> {
        let root = data_dir.join("volumes");
        std::fs::create_dir_all(&root).map_err(PlaneError::io("create the volumes directory", &root))?;
        let mut slots = BTreeMap::new();
        for entry in std::fs::read_dir(&root).map_err(PlaneError::io("list the volumes directory", &root))? {
            let entry = entry.map_err(PlaneError::io("list the volumes directory", &root))?;
            let id = entry.file_name().to_string_lossy().into_owned();
            let file = entry.path().join("volume.json");
            let mut slot = Slot::default();
            match files::read_json::<VolumeRecord>(&file) {
                Ok(Some(record)) => match types::parse_mode(&record.mode) {
                    Ok(mode) if record.volume == id => slot.spec = Some(Spec { record, mode }),
                    Ok(_) => {
                        tracing::error!(file = %file.display(), "volume record names another volume");
                        slot.unreadable = true;
                    }
                    Err(e) => {
                        tracing::error!(file = %file.display(), error = %e, "volume record with an unknown mode");
                        slot.unreadable = true;
                    }
                },
                Ok(None) => {
                    // Only this process (it holds the serve lock) creates
                    // volumes, and none is under way at start.
                    tracing::warn!(dir = %entry.path().display(), "remove a volume directory without a record: a creation that did not finish");
                    if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                        tracing::error!(dir = %entry.path().display(), error = %e, "remove an unfinished volume directory (cleared when the id is created again)");
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(file = %file.display(), error = %e, "unreadable volume record");
                    slot.unreadable = true;
                }
            }
            slots.insert(id, Arc::new(Mutex::new(slot)));
        }
        tracing::info!(volumes = slots.len(), data_dir = %data_dir.display(), "volumes loaded");
        Ok(Volumes {
            data_dir: data_dir.to_owned(),
            run: run.clone(),
            fuse,
            slots: Mutex::new(slots),
            index: Mutex::default(),
            observer: OnceLock::new(),
        })
    }

    /// Makes the store in directory `from` (a promoted DR replica, whose
    /// engine is a primary now) volume `id` of `owner`, `shape` its size,
    /// `reserve` its store's bytes: its record is written inside it, then
    /// the directory is renamed into `<data-dir>/volumes/` (atomic; synced).
    /// Done already (`from` gone, the volume there) is not an error.
    pub(crate) fn adopt(
        &self,
        from: &Path,
        id: &Name,
        shape: Shape,
        reserve: u64,
        owner: &str,
    ) -> Result<(), PlaneError> {
        let arc = self.slot(id.as_str());
        let mut slot = lock(&arc);
        let target = self.volume_dir(id.as_str());
        if slot.spec.is_some() && !from.exists() {
            return Ok(());
        }
        if target.exists() {
            return Err(PlaneError::AlreadyExists {
                volume: id.to_string(),
                existing: "a store of that name".into(),
            });
        }
        let record = VolumeRecord::new(id, shape, None, Some((reserve, owner)));
        write_record(from, &record)?;
        std::fs::rename(from, &target).map_err(PlaneError::io("move the promoted store to", &target))?;
        for dir in [target.parent(), from.parent()].into_iter().flatten() {
            files::sync_dir(dir).map_err(PlaneError::io("sync the directory", dir))?;
        }
        slot.spec = Some(Spec {
            record,
            mode: shape.mode,
        });
        slot.unreadable = false;
        tracing::info!(volume = %id, from = %from.display(), "promoted store adopted");
        Ok(())
    }

    /// Gives volume `id`'s store up (a demotion, the reverse of
    /// [`Volumes::adopt`]): with the volume detached and held so that
    /// nothing attaches it, `prepare` runs (it turns the store into a
    /// replica), then the directory is renamed to `to` (atomic; synced) and
    /// the volume is no longer this plane's. Done already (the volume gone,
    /// `to` there) is not an error.
    pub(crate) fn release<E: From<PlaneError>>(
        &self,
        id: &Name,
        to: &Path,
        prepare: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let arc = self.slot(id.as_str());
        let mut slot = lock(&arc);
        if slot.spec.is_none() && to.exists() {
            return Ok(());
        }
        self.spec(id, &slot)?;
        if let Some(a) = &slot.attached {
            return Err(PlaneError::Attached {
                volume: id.to_string(),
                device: a.device().to_owned(),
            }
            .into());
        }
        prepare()?;
        let from = self.volume_dir(id.as_str());
        std::fs::rename(&from, to).map_err(PlaneError::io("move the demoted store to", to))?;
        for dir in [to.parent(), from.parent()].into_iter().flatten() {
            files::sync_dir(dir).map_err(PlaneError::io("sync the directory", dir))?;
        }
        files::remove_durably(&to.join("volume.json")).map_err(PlaneError::io("remove the volume record in", to))?;
        slot.spec = None;
        tracing::info!(volume = %id, to = %to.display(), "demoted store given up");
        Ok(())
    }

    /// Sets the one observer of attaches and detaches (later calls are
    /// ignored).
    pub(crate) fn observe(&self, observer: Arc<dyn AttachObserver>) {
        let _ = self.observer.set(observer);
    }

    /// The engines of every volume attached now, by store.
    pub(crate) fn hosted(&self) -> Vec<(String, Arc<HostedPrimary<FileStore>>)> {
        let slots: Vec<(String, Arc<Mutex<Slot>>)> = lock(&self.slots)
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        slots
            .into_iter()
            .filter_map(|(id, slot)| {
                let slot = lock(&slot);
                let b = slot.attached.as_ref().and_then(Attachment::backend)?;
                Some((id, Arc::clone(b.hosted())))
            })
            .collect()
    }

    fn slot(&self, id: &str) -> Arc<Mutex<Slot>> {
        lock(&self.slots).entry(id.to_owned()).or_default().clone()
    }

    fn volume_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("volumes").join(id)
    }

    fn snapshot_path(&self, id: &str, name: &str) -> PathBuf {
        self.volume_dir(id).join("snapshots").join(format!("{name}.img"))
    }

    /// Where snapshot `name` of `id` is copied until it is done.
    fn snapshot_part(&self, id: &str, name: &str) -> PathBuf {
        self.volume_dir(id)
            .join("snapshots")
            .join(crate::store::pending_snapshot_file(name))
    }

    fn spec<'a>(&self, id: &Name, slot: &'a Slot) -> Result<&'a Spec, PlaneError> {
        if slot.unreadable {
            return Err(PlaneError::Unreadable(self.volume_dir(id.as_str())));
        }
        slot.spec.as_ref().ok_or_else(|| PlaneError::NotFound(id.to_string()))
    }

    fn snapshots_of(&self, id: &str) -> Vec<String> {
        let dir = self.volume_dir(id).join("snapshots");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        (!n.starts_with('.')).then(|| n.strip_suffix(".img").map(str::to_owned))?
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn info(&self, spec: &Spec, slot: &Slot) -> VolumeInfo {
        let r = &spec.record;
        VolumeInfo {
            volume: r.volume.clone(),
            size_bytes: r.size_bytes,
            block_size: r.block_size,
            mode: r.mode.clone(),
            snapshots: self.snapshots_of(&r.volume),
            attachment: slot.attached.as_ref().map(Attachment::info),
        }
    }

    /// Rewrites `attached.json` with `volume` set to `rec` (or removed).
    fn record_attached(&self, volume: &str, rec: Option<AttachedRecord>) -> Result<(), PlaneError> {
        let mut index = lock(&self.index);
        let mut next = index.clone();
        match rec {
            Some(r) => next.volumes.insert(volume.to_owned(), r),
            None => next.volumes.remove(volume),
        };
        let path = self.run.attached();
        files::write_json(&path, &next).map_err(PlaneError::io("write the attached-volumes record", &path))?;
        *index = next;
        Ok(())
    }

    // ----- operations ------------------------------------------------------

    /// A fresh store and engine for `id`, clearing a creation that did not
    /// finish.
    fn new_store(&self, id: &Name, shape: Shape, reserve: u64) -> Result<Primary<FileStore>, PlaneError> {
        let dir = self.volume_dir(id.as_str());
        if dir.exists() {
            tracing::warn!(dir = %dir.display(), "clearing a creation that did not finish");
            std::fs::remove_dir_all(&dir).map_err(PlaneError::io("clear an unfinished volume directory", &dir))?;
        }
        let geo = Shape {
            size_bytes: reserve.max(shape.size_bytes),
            ..shape
        }
        .geometry();
        let store = FileStore::create(&self.data_dir, id.as_str(), geo).map_err(|source| PlaneError::Store {
            op: "create the store",
            volume: id.to_string(),
            source,
        })?;
        Primary::create(store, geo, shape.mode, RoleGeneration::default()).map_err(|source| PlaneError::Engine {
            op: "initialise the engine",
            volume: id.to_string(),
            source,
        })
    }

    /// Writes the record that makes the volume exist.
    fn commit_record(
        &self,
        id: &Name,
        shape: Shape,
        restored_from: Option<String>,
        sized: Option<(u64, &str)>,
    ) -> Result<Spec, PlaneError> {
        let record = VolumeRecord::new(id, shape, restored_from, sized);
        write_record(&self.volume_dir(id.as_str()), &record)?;
        Ok(Spec {
            record,
            mode: shape.mode,
        })
    }

    /// Deletes a detached volume with its snapshots.
    pub(crate) fn delete(&self, id: &Name) -> Result<(), PlaneError> {
        let arc = self.slot(id.as_str());
        let mut slot = lock(&arc);
        self.spec(id, &slot)?;
        if let Some(a) = &slot.attached {
            return Err(PlaneError::Attached {
                volume: id.to_string(),
                device: a.device().to_owned(),
            });
        }
        let dir = self.volume_dir(id.as_str());
        files::remove_durably(&dir.join("volume.json")).map_err(PlaneError::io("remove the volume record in", &dir))?;
        slot.spec = None;
        std::fs::remove_dir_all(&dir).map_err(PlaneError::io("remove the volume directory", &dir))?;
        // The empty slot stays: an operation waiting on it (a create of the
        // same id) must find it, not an orphan taken out of the map.
        tracing::info!(volume = %id, "volume deleted");
        Ok(())
    }

    /// Attaches a volume: engine, FUSE file, loop device; recorded in
    /// `attached.json` before the answer.
    pub(crate) fn attach(&self, id: &Name) -> Result<VolumeInfo, PlaneError> {
        let arc = self.slot(id.as_str());
        let mut slot = lock(&arc);
        let (mode, size) = {
            let spec = self.spec(id, &slot)?;
            (spec.mode, spec.record.size_bytes)
        };
        if let Some(a) = &slot.attached {
            return Err(PlaneError::AlreadyAttached {
                volume: id.to_string(),
                device: a.device().to_owned(),
            });
        }
        // Recorded before anything exists, so a successor finds (and undoes)
        // an attach this process dies in the middle of.
        let pending = AttachedRecord {
            fuse_dir: self.run.fuse_dir(id.as_str()),
            device: None,
        };
        self.record_attached(id.as_str(), Some(pending))?;
        let mut a = match Attachment::attach(id.as_str(), mode, size, &self.data_dir, &self.run, &self.fuse) {
            Ok(a) => a,
            Err(e) => {
                if let Err(r) = self.record_attached(id.as_str(), None) {
                    tracing::error!(volume = %id, error = %chain(&r), "forget a failed attach");
                }
                return Err(e);
            }
        };
        if let Err(e) = self.record_attached(id.as_str(), Some(a.record())) {
            if let Err(d) = a.detach() {
                tracing::error!(volume = %id, error = %chain(&d), "detach after failing to record the attach");
            }
            return Err(e);
        }
        tracing::info!(volume = %id, device = %a.device().display(), "volume attached");
        if let (Some(o), Some(b)) = (self.observer.get(), a.backend()) {
            o.attached(id.as_str(), b.hosted());
        }
        slot.attached = Some(a);
        let spec = self.spec(id, &slot)?;
        Ok(self.info(spec, &slot))
    }

    /// Detaches a volume whose device is not mounted; detaching a detached
    /// volume is not an error.
    pub(crate) fn detach(&self, id: &Name) -> Result<bool, PlaneError> {
        let arc = self.slot(id.as_str());
        let mut slot = lock(&arc);
        self.spec(id, &slot)?;
        let Some(a) = slot.attached.as_mut() else {
            return Ok(false);
        };
        let targets =
            mounttable::mount_points_of(a.device()).map_err(PlaneError::io("find the mounts of", a.device()))?;
        if !targets.is_empty() {
            return Err(PlaneError::Mounted {
                volume: id.to_string(),
                device: a.device().to_owned(),
                targets,
            });
        }
        if let Some(o) = self.observer.get() {
            o.detaching(id.as_str());
        }
        a.detach()?;
        slot.attached = None;
        self.record_attached(id.as_str(), None)?;
        Ok(true)
    }

    /// Grows a volume up to its reserve (the store's geometry): the record
    /// first, so a crash never shows it smaller than a file system on it
    /// may already be, then the attached device. A size it already has is
    /// fine; past the reserve it needs a copy into a larger store.
    pub(crate) fn expand(&self, id: &Name, size_bytes: u64) -> Result<VolumeInfo, PlaneError> {
        let arc = self.slot(id.as_str());
        let mut slot = lock(&arc);
        let spec = self.spec(id, &slot)?;
        if size_bytes <= spec.record.size_bytes {
            return Ok(self.info(spec, &slot));
        }
        if size_bytes > spec.reserve() {
            return Err(PlaneError::CannotGrow {
                volume: id.to_string(),
                size: spec.reserve(),
                requested: size_bytes,
            });
        }
        let block_size = spec.record.block_size;
        if !size_bytes.is_multiple_of(block_size) {
            return Err(PlaneError::NotWholeBlocks {
                requested: size_bytes,
                block_size,
            });
        }
        let mut next = spec.clone();
        next.record.size_bytes = size_bytes;
        write_record(&self.volume_dir(id.as_str()), &next.record)?;
        slot.spec = Some(next);
        if let Some(a) = &slot.attached {
            a.grow(size_bytes)?;
        }
        tracing::info!(volume = %id, size = size_bytes, "volume grown");
        let spec = self.spec(id, &slot)?;
        Ok(self.info(spec, &slot))
    }

    /// Every volume.
    pub(crate) fn list(&self) -> Vec<VolumeInfo> {
        let slots: Vec<Arc<Mutex<Slot>>> = lock(&self.slots).values().cloned().collect();
        slots
            .iter()
            .filter_map(|s| {
                let slot = lock(s);
                slot.spec.as_ref().map(|spec| self.info(spec, &slot))
            })
            .collect()
    }

    /// One volume.
    pub(crate) fn info_of(&self, id: &Name) -> Result<VolumeInfo, PlaneError> {
        let arc = self.slot(id.as_str());
        let slot = lock(&arc);
        let spec = self.spec(id, &slot)?;
        Ok(self.info(spec, &slot))
    }

    /// The record of every volume `owner` manages.
    pub(crate) fn records_of(&self, owner: &str) -> Vec<VolumeRecord> {
        let slots: Vec<Arc<Mutex<Slot>>> = lock(&self.slots).values().cloned().collect();
        slots
            .iter()
            .filter_map(|s| lock(s).spec.as_ref().map(|spec| spec.record.clone()))
            .filter(|r| r.owner.as_deref() == Some(owner))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_creation_that_did_not_finish_is_removed_at_load_and_a_finished_one_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let unfinished = data.join("volumes").join("half");
        std::fs::create_dir_all(&unfinished).expect("mkdir");
        std::fs::write(unfinished.join("image"), b"partial").expect("write");
        let finished = data.join("volumes").join("whole");
        std::fs::create_dir_all(&finished).expect("mkdir");
        let record = VolumeRecord {
            volume: "whole".into(),
            size_bytes: 4096,
            block_size: 4096,
            mode: "continuous".into(),
            created_unix_ms: 0,
            restored_from: None,
            reserve_bytes: None,
            owner: None,
        };
        files::write_json(&finished.join("volume.json"), &record).expect("record");
        let run = RunPaths::new(&dir.path().join("run"));
        let volumes = Volumes::load(&data, &run, FuseConfig::default()).expect("load");
        assert!(!unfinished.exists(), "the unfinished directory is gone");
        assert!(finished.join("volume.json").exists());
        assert_eq!(volumes.records_of("nobody").len(), 0);
        let listed: Vec<String> = lock(&volumes.slots).keys().cloned().collect();
        assert_eq!(listed, ["whole"]);
    }
}
