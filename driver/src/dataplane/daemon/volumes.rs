//! The volumes of a node: what exists under `<data-dir>/volumes/`, what is
//! attached, and every operation on them, serialised per volume.
//!
//! Each volume has a slot behind its own mutex; an operation holds only its
//! volume's slot (never two, never the freeze table), so a slow snapshot of
//! one volume does not hold up another. A volume exists when its record,
//! `<data-dir>/volumes/<id>/volume.json`, does: it is written last at create
//! and restore and removed first at delete, so a directory without it is a
//! creation that did not finish, cleared when the id is created again.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use floe_engine::{Mode, Primary, RoleGeneration};
use rustix::fs::SeekFrom;
use serde::{Deserialize, Serialize};

use super::api::{self, Name, Shape, SnapshotInfo, VolumeInfo};
use super::attachment::{open_engine, AttachedFile, AttachedRecord, Attachment};
use super::error::{chain, DaemonError};
use super::files::{self, RunPaths};
use crate::dataplane::fsfreeze::FrozenFs;
use crate::dataplane::fuse::FuseConfig;
use crate::dataplane::{EngineBackend, SizedBackend};
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
    /// (`crate::csi::local`), absent for volumes made through this API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Volumes {
    /// Loads every volume record under `data_dir`.
    pub(super) fn load(data_dir: &Path, run: &RunPaths, fuse: FuseConfig) -> Result<Self, DaemonError> {
        let root = data_dir.join("volumes");
        std::fs::create_dir_all(&root).map_err(DaemonError::io("create the volumes directory", &root))?;
        let mut slots = BTreeMap::new();
        for entry in std::fs::read_dir(&root).map_err(DaemonError::io("list the volumes directory", &root))? {
            let entry = entry.map_err(DaemonError::io("list the volumes directory", &root))?;
            let id = entry.file_name().to_string_lossy().into_owned();
            let file = entry.path().join("volume.json");
            let mut slot = Slot::default();
            match files::read_json::<VolumeRecord>(&file) {
                Ok(Some(record)) => match api::parse_mode(&record.mode) {
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
                    tracing::warn!(dir = %entry.path().display(), "volume directory without a record: a creation that did not finish (cleared if the id is created again)");
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
        })
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

    fn spec<'a>(&self, id: &Name, slot: &'a Slot) -> Result<&'a Spec, DaemonError> {
        if slot.unreadable {
            return Err(DaemonError::Unreadable(self.volume_dir(id.as_str())));
        }
        slot.spec.as_ref().ok_or_else(|| DaemonError::NotFound(id.to_string()))
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
    fn record_attached(&self, volume: &str, rec: Option<AttachedRecord>) -> Result<(), DaemonError> {
        let mut index = lock(&self.index);
        let mut next = index.clone();
        match rec {
            Some(r) => next.volumes.insert(volume.to_owned(), r),
            None => next.volumes.remove(volume),
        };
        let path = self.run.attached();
        files::write_json(&path, &next).map_err(DaemonError::io("write the attached-volumes record", &path))?;
        *index = next;
        Ok(())
    }

    // ----- operations ------------------------------------------------------

    /// Creates an empty volume; the same request again returns it.
    pub(super) fn create(&self, id: &Name, shape: Shape) -> Result<VolumeInfo, DaemonError> {
        let slot = self.slot(id.as_str());
        let mut slot = lock(&slot);
        if let Some(spec) = &slot.spec {
            let r = &spec.record;
            if r.size_bytes == shape.size_bytes && r.block_size == shape.block_size && spec.mode == shape.mode {
                return Ok(self.info(spec, &slot));
            }
            return Err(DaemonError::AlreadyExists {
                volume: id.to_string(),
                existing: spec.shape_words(),
            });
        }
        if slot.unreadable {
            return Err(DaemonError::Unreadable(self.volume_dir(id.as_str())));
        }
        let primary = self.new_store(id, shape, shape.size_bytes)?;
        drop(primary);
        let spec = self.commit_record(id, shape, None, None)?;
        tracing::info!(volume = %id, size = shape.size_bytes, block_size = shape.block_size, mode = shape.mode.name(), "volume created");
        let info = self.info(&spec, &slot);
        slot.spec = Some(spec);
        Ok(info)
    }

    /// A fresh store and engine for `id`, clearing a creation that did not
    /// finish.
    fn new_store(&self, id: &Name, shape: Shape, reserve: u64) -> Result<Primary<FileStore>, DaemonError> {
        let dir = self.volume_dir(id.as_str());
        if dir.exists() {
            tracing::warn!(dir = %dir.display(), "clearing a creation that did not finish");
            std::fs::remove_dir_all(&dir).map_err(DaemonError::io("clear an unfinished volume directory", &dir))?;
        }
        let geo = Shape {
            size_bytes: reserve.max(shape.size_bytes),
            ..shape
        }
        .geometry();
        let store = FileStore::create(&self.data_dir, id.as_str(), geo).map_err(|source| DaemonError::Store {
            op: "create the store",
            volume: id.to_string(),
            source,
        })?;
        Primary::create(store, geo, shape.mode, RoleGeneration::default()).map_err(|source| DaemonError::Engine {
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
    ) -> Result<Spec, DaemonError> {
        let record = VolumeRecord {
            volume: id.to_string(),
            size_bytes: shape.size_bytes,
            block_size: shape.block_size,
            mode: shape.mode.name().to_owned(),
            created_unix_ms: files::unix_ms(SystemTime::now()),
            restored_from,
            reserve_bytes: sized.map(|(r, _)| r).filter(|r| *r > shape.size_bytes),
            owner: sized.map(|(_, o)| o.to_owned()),
        };
        let file = self.volume_dir(id.as_str()).join("volume.json");
        files::write_json(&file, &record).map_err(DaemonError::io("write the volume record", &file))?;
        Ok(Spec {
            record,
            mode: shape.mode,
        })
    }

    /// Deletes a detached volume with its snapshots.
    pub(crate) fn delete(&self, id: &Name) -> Result<(), DaemonError> {
        let arc = self.slot(id.as_str());
        let mut slot = lock(&arc);
        self.spec(id, &slot)?;
        if let Some(a) = &slot.attached {
            return Err(DaemonError::Attached {
                volume: id.to_string(),
                device: a.device().to_owned(),
            });
        }
        let dir = self.volume_dir(id.as_str());
        files::remove_durably(&dir.join("volume.json"))
            .map_err(DaemonError::io("remove the volume record in", &dir))?;
        slot.spec = None;
        std::fs::remove_dir_all(&dir).map_err(DaemonError::io("remove the volume directory", &dir))?;
        // The empty slot stays: an operation waiting on it (a create of the
        // same id) must find it, not an orphan taken out of the map.
        tracing::info!(volume = %id, "volume deleted");
        Ok(())
    }

    /// Attaches a volume: engine, FUSE file, loop device; recorded in
    /// `attached.json` before the answer.
    pub(crate) fn attach(&self, id: &Name) -> Result<VolumeInfo, DaemonError> {
        let arc = self.slot(id.as_str());
        let mut slot = lock(&arc);
        let (mode, size) = {
            let spec = self.spec(id, &slot)?;
            (spec.mode, spec.record.size_bytes)
        };
        if let Some(a) = &slot.attached {
            return Err(DaemonError::AlreadyAttached {
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
        slot.attached = Some(a);
        let spec = self.spec(id, &slot)?;
        Ok(self.info(spec, &slot))
    }

    /// Detaches a volume whose device is not mounted; detaching a detached
    /// volume is not an error.
    pub(crate) fn detach(&self, id: &Name) -> Result<bool, DaemonError> {
        let arc = self.slot(id.as_str());
        let mut slot = lock(&arc);
        self.spec(id, &slot)?;
        let Some(a) = slot.attached.as_mut() else {
            return Ok(false);
        };
        let targets = files::mounts_of(a.device()).map_err(DaemonError::io("read", "/proc/self/mountinfo"))?;
        if !targets.is_empty() {
            return Err(DaemonError::Mounted {
                volume: id.to_string(),
                device: a.device().to_owned(),
                targets,
            });
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
    pub(crate) fn expand(&self, id: &Name, size_bytes: u64) -> Result<VolumeInfo, DaemonError> {
        let arc = self.slot(id.as_str());
        let mut slot = lock(&arc);
        let spec = self.spec(id, &slot)?;
        if size_bytes <= spec.record.size_bytes {
            return Ok(self.info(spec, &slot));
        }
        if size_bytes > spec.reserve() {
            return Err(DaemonError::CannotGrow {
                volume: id.to_string(),
                size: spec.reserve(),
                requested: size_bytes,
            });
        }
        let block_size = spec.record.block_size;
        if !size_bytes.is_multiple_of(block_size) {
            return Err(DaemonError::NotWholeBlocks {
                requested: size_bytes,
                block_size,
            });
        }
        let mut next = spec.clone();
        next.record.size_bytes = size_bytes;
        let file = self.volume_dir(id.as_str()).join("volume.json");
        files::write_json(&file, &next.record).map_err(DaemonError::io("write the volume record", &file))?;
        slot.spec = Some(next);
        if let Some(a) = &slot.attached {
            a.grow(size_bytes)?;
        }
        tracing::info!(volume = %id, size = size_bytes, "volume grown");
        let spec = self.spec(id, &slot)?;
        Ok(self.info(spec, &slot))
    }

    /// Every volume.
    pub(super) fn list(&self) -> Vec<VolumeInfo> {
        let slots: Vec<Arc<Mutex<Slot>>> = lock(&self.slots).values().cloned().collect();
        slots
            .iter()
            .filter_map(|s| {
                let slot = lock(s);
                slot.spec.as_ref().map(|spec| self.info(spec, &slot))
            })
            .collect()
    }

    /// A local point-in-time snapshot through the engine (of the attached
    /// volume's live engine, or of one opened for the purpose). The caller
    /// quiesced the file system. An existing snapshot of that name is
    /// returned as it is.
    pub(super) fn snapshot(&self, id: &Name, name: &Name) -> Result<SnapshotInfo, DaemonError> {
        let arc = self.slot(id.as_str());
        let slot = lock(&arc);
        let spec = self.spec(id, &slot)?;
        let path = self.snapshot_path(id.as_str(), name.as_str());
        let mut info = SnapshotInfo {
            volume: id.to_string(),
            name: name.to_string(),
            path: path.clone(),
            size_bytes: spec.record.size_bytes,
            created: false,
            open_local_epoch: None,
            last_frozen_group: None,
        };
        if path.exists() {
            return Ok(info);
        }
        let engine_err = |source| DaemonError::Engine {
            op: "take a snapshot",
            volume: id.to_string(),
            source,
        };
        let mark = match slot.attached.as_ref().and_then(Attachment::backend) {
            Some(b) => b.with_primary(|p| p.snapshot(name.as_str())).map_err(engine_err)?,
            None if slot.attached.is_some() => return Err(DaemonError::NotServed(id.to_string())),
            None => open_engine(&self.data_dir, id.as_str(), spec.mode)?
                .snapshot(name.as_str())
                .map_err(engine_err)?,
        };
        info.created = true;
        info.open_local_epoch = Some(mark.open_local);
        info.last_frozen_group = Some(mark.last_frozen_group);
        tracing::info!(volume = %id, snapshot = %name, path = %path.display(), "snapshot taken");
        Ok(info)
    }

    /// Creates `id` holding snapshot `snapshot` of `from`: same block size,
    /// the source's mode unless another is asked, at least the snapshot's
    /// size. The data goes through the engine, so the new volume's blocks
    /// are all dirty (to be shipped) like any written block.
    pub(super) fn restore(
        &self,
        id: &Name,
        from: &Name,
        snapshot: &Name,
        size_bytes: Option<u64>,
        mode: Option<Mode>,
    ) -> Result<VolumeInfo, DaemonError> {
        let source = {
            let arc = self.slot(from.as_str());
            let slot = lock(&arc);
            self.spec(from, &slot)?.clone()
        };
        let file = self.snapshot_path(from.as_str(), snapshot.as_str());
        let snap_len = match std::fs::metadata(&file) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DaemonError::SnapshotNotFound {
                    volume: from.to_string(),
                    name: snapshot.to_string(),
                    path: file,
                })
            }
            Err(e) => return Err(DaemonError::io("look at the snapshot", &file)(e)),
        };
        let bs = source.record.block_size;
        let size = size_bytes.unwrap_or(snap_len);
        if size < snap_len {
            return Err(DaemonError::TooSmall {
                snapshot: snapshot.to_string(),
                size: snap_len,
                requested: size,
            });
        }
        if !size.is_multiple_of(bs) {
            return Err(DaemonError::NotWholeBlocks {
                requested: size,
                block_size: bs,
            });
        }
        let shape = Shape::parse(size, Some(bs), Some(mode.unwrap_or(source.mode).name()))?;

        let arc = self.slot(id.as_str());
        let mut slot = lock(&arc);
        if slot.spec.is_some() || slot.unreadable {
            return Err(DaemonError::AlreadyExists {
                volume: id.to_string(),
                existing: slot
                    .spec
                    .as_ref()
                    .map_or("an unreadable record".into(), Spec::shape_words),
            });
        }
        let mut primary = self.new_store(id, shape, shape.size_bytes)?;
        let copied = copy_into(&mut primary, &file, snap_len).map_err(|e| match e {
            CopyError::Io(source) => DaemonError::Io {
                op: "read the snapshot",
                path: file.clone(),
                source,
            },
            CopyError::Engine(source) => DaemonError::Engine {
                op: "write the restored data",
                volume: id.to_string(),
                source,
            },
        })?;
        drop(primary);
        let spec = self.commit_record(id, shape, Some(format!("{from}/{snapshot}")), None)?;
        tracing::info!(volume = %id, from = %from, snapshot = %snapshot, bytes = copied, "volume restored from a snapshot");
        let info = self.info(&spec, &slot);
        slot.spec = Some(spec);
        Ok(info)
    }

    /// One volume.
    pub(crate) fn info_of(&self, id: &Name) -> Result<VolumeInfo, DaemonError> {
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

    /// Creates `id` for `owner` with a store of `reserve` bytes (at least
    /// its size, so it grows online up to that), filled by `fill` through
    /// its engine before the record makes it exist. An id that exists is
    /// refused: the owner keeps its own catalog of what it made.
    pub(crate) fn create_filled<E: From<DaemonError>>(
        &self,
        id: &Name,
        shape: Shape,
        reserve: u64,
        owner: &str,
        fill: impl FnOnce(&mut Primary<FileStore>) -> Result<(), E>,
    ) -> Result<VolumeInfo, E> {
        let arc = self.slot(id.as_str());
        let mut slot = lock(&arc);
        if let Some(spec) = &slot.spec {
            return Err(DaemonError::AlreadyExists {
                volume: id.to_string(),
                existing: spec.shape_words(),
            }
            .into());
        }
        if slot.unreadable {
            return Err(DaemonError::Unreadable(self.volume_dir(id.as_str())).into());
        }
        let reserve = reserve.max(shape.size_bytes).div_ceil(shape.block_size) * shape.block_size;
        let mut primary = self.new_store(id, shape, reserve)?;
        let filled = fill(&mut primary).and_then(|()| {
            primary.flush().map_err(|source| {
                DaemonError::Engine {
                    op: "flush the new volume",
                    volume: id.to_string(),
                    source,
                }
                .into()
            })
        });
        drop(primary);
        let committed = filled.and_then(|()| Ok(self.commit_record(id, shape, None, Some((reserve, owner)))?));
        let spec = match committed {
            Ok(spec) => spec,
            Err(e) => {
                let dir = self.volume_dir(id.as_str());
                if let Err(r) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %r, "remove a creation that failed (cleared at the next create)");
                }
                return Err(e);
            }
        };
        tracing::info!(volume = %id, size = shape.size_bytes, reserve, owner, "volume created");
        let info = self.info(&spec, &slot);
        slot.spec = Some(spec);
        Ok(info)
    }

    /// One cut across `members` (volume, snapshot name): the file system on
    /// each attached member's device is flushed and frozen, then each
    /// member's engine is taken in turn and cut while the ones before it
    /// stay held, so no member moves on before the last is cut (the cut is
    /// consistent across the members even for raw block volumes); then
    /// everything is released and thawed, also on error. `delay` is a test
    /// hook: sleep before cutting the member at that index. Returns the
    /// snapshot images, `<volume dir>/snapshots/<name>.img`, in order.
    ///
    /// The members' slots are held for the cut (a few milliseconds plus
    /// the freeze); I/O never takes a slot, so nothing waits on a frozen
    /// file system while holding one.
    pub(crate) fn cut(
        &self,
        members: &[(Name, Name)],
        delay: Option<(usize, Duration)>,
    ) -> Result<Vec<PathBuf>, DaemonError> {
        let mut order: Vec<usize> = (0..members.len()).collect();
        order.sort_by(|a, b| members[*a].0.as_str().cmp(members[*b].0.as_str()));
        order.dedup_by(|a, b| members[*a].0 == members[*b].0);
        if order.len() != members.len() {
            return Err(DaemonError::Request(api::RequestError::Duplicate("volume in one cut")));
        }
        let arcs: Vec<Arc<Mutex<Slot>>> = order.iter().map(|i| self.slot(members[*i].0.as_str())).collect();
        let guards: Vec<MutexGuard<'_, Slot>> = arcs.iter().map(|a| lock(a)).collect();
        let mut by_member: Vec<Option<&MutexGuard<'_, Slot>>> = vec![None; members.len()];
        for (k, i) in order.iter().enumerate() {
            by_member[*i] = Some(&guards[k]);
        }
        let mut engines = Vec::with_capacity(members.len());
        let mut to_freeze = Vec::new();
        for ((id, _), slot) in members.iter().zip(by_member) {
            let slot = slot.expect("every member has its slot");
            let spec = self.spec(id, slot)?;
            match &slot.attached {
                Some(a) => {
                    let Some(b) = a.sized() else {
                        return Err(DaemonError::NotServed(id.to_string()));
                    };
                    let targets =
                        files::mounts_of(a.device()).map_err(DaemonError::io("read", "/proc/self/mountinfo"))?;
                    // One freeze per device: it holds the whole superblock.
                    to_freeze.extend(targets.into_iter().take(1));
                    engines.push(CutEngine::Served(Arc::clone(b)));
                }
                None => engines.push(CutEngine::Opened(Box::new(EngineBackend::new(open_engine(
                    &self.data_dir,
                    id.as_str(),
                    spec.mode,
                )?)))),
            }
        }
        let mut frozen = Vec::with_capacity(to_freeze.len());
        for path in &to_freeze {
            frozen.push(FrozenFs::freeze(path).map_err(DaemonError::Freeze)?);
        }
        let names: Vec<&Name> = members.iter().map(|(_, n)| n).collect();
        let cut = hold_and_cut(&engines, &names, 0, delay);
        let mut thawed = Ok(());
        for mut f in frozen {
            if let Err(e) = f.thaw() {
                tracing::error!(path = %f.path().display(), error = %e, "thaw after the cut");
                thawed = Err(DaemonError::Freeze(e));
            }
        }
        drop(engines);
        drop(guards);
        cut?;
        thawed?;
        let paths: Vec<PathBuf> = members
            .iter()
            .map(|(id, name)| self.snapshot_path(id.as_str(), name.as_str()))
            .collect();
        tracing::info!(members = members.len(), frozen = to_freeze.len(), "cut taken");
        Ok(paths)
    }

    // ----- start and exit ----------------------------------------------------

    /// Takes over every volume `attached.json` names (see
    /// [`Attachment::take_over`]) and rewrites it with what is attached now.
    /// Returns the volumes now served.
    pub(super) fn take_over(&self) -> Result<Vec<String>, DaemonError> {
        let path = self.run.attached();
        let file = match files::read_json::<AttachedFile>(&path) {
            Ok(f) => f.unwrap_or_default(),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "unreadable attached-volumes record: nothing taken over");
                AttachedFile::default()
            }
        };
        let mut served = Vec::new();
        let mut now = AttachedFile::default();
        for (id, rec) in &file.volumes {
            let arc = self.slot(id);
            let mut slot = lock(&arc);
            let Some(spec) = slot.spec.clone() else {
                tracing::error!(volume = %id, "attached volume without a volume record: left alone");
                continue;
            };
            let size = spec.record.size_bytes;
            if let Some(a) = Attachment::take_over(id, spec.mode, size, rec, &self.data_dir, &self.run) {
                if a.backend().is_some() {
                    served.push(id.clone());
                }
                now.volumes.insert(id.clone(), a.record());
                slot.attached = Some(a);
            }
        }
        files::write_json(&path, &now).map_err(DaemonError::io("write the attached-volumes record", &path))?;
        *lock(&self.index) = now;
        Ok(served)
    }

    /// For a process about to exit in favour of a successor: waits for every
    /// operation under way (and lets no other start), flushes every engine
    /// and holds its lock (so the process stops at a request boundary),
    /// leaves mounts, loop devices and the holder's fds in place, and exits.
    pub(super) fn hand_over(&self) -> ! {
        let slots: Vec<Arc<Mutex<Slot>>> = lock(&self.slots).values().cloned().collect();
        let mut guards: Vec<MutexGuard<'_, Slot>> = slots.iter().map(|s| lock(s)).collect();
        let attachments: Vec<Attachment> = guards.iter_mut().filter_map(|g| g.attached.take()).collect();
        for a in attachments.iter().filter(|a| a.backend().is_some()) {
            if let Err(e) = crate::dataplane::handover::take(&self.run.holder_socket(), a.volume()) {
                tracing::error!(volume = a.volume(), error = %chain(&e), "the holder does not keep this volume's connection: it ends with this process");
            }
        }
        let backends: Vec<Arc<SizedBackend>> = attachments.iter().filter_map(|a| a.sized().cloned()).collect();
        hold_all(
            &backends,
            Box::new(move || {
                let n = attachments.len();
                for a in attachments {
                    a.abandon();
                }
                tracing::info!(volumes = n, "volumes left to the successor; exiting");
                std::process::exit(0)
            }),
        );
        drop(guards);
        std::process::exit(0)
    }
}

/// Flushes each engine and keeps its lock while `last` runs (it exits).
fn hold_all(backends: &[Arc<SizedBackend>], last: Box<dyn FnOnce() + '_>) {
    match backends.split_first() {
        None => last(),
        Some((b, rest)) => b.engine().with_primary(move |p| {
            if let Err(e) = p.flush() {
                tracing::error!(error = %chain(&e), "flush an engine before handing over");
            }
            hold_all(rest, last)
        }),
    }
}

/// A member's engine in a cut: the attached volume's, or one opened for it.
enum CutEngine {
    Served(Arc<SizedBackend>),
    Opened(Box<EngineBackend>),
}

impl CutEngine {
    fn get(&self) -> &EngineBackend {
        match self {
            CutEngine::Served(b) => b.engine(),
            CutEngine::Opened(e) => e,
        }
    }
}

/// Cuts `engines[i..]` in order, holding each one's lock until all are cut.
fn hold_and_cut(
    engines: &[CutEngine],
    names: &[&Name],
    i: usize,
    delay: Option<(usize, Duration)>,
) -> Result<(), DaemonError> {
    let Some(engine) = engines.get(i) else {
        return Ok(());
    };
    engine.get().with_primary(|p| {
        if let Some((_, d)) = delay.filter(|(at, _)| *at == i) {
            tracing::warn!(member = i, delay = ?d, "failpoint: delaying the cut");
            std::thread::sleep(d);
        }
        p.snapshot(names[i].as_str()).map_err(|source| DaemonError::Engine {
            op: "cut the volume",
            volume: names[i].to_string(),
            source,
        })?;
        hold_and_cut(engines, names, i + 1, delay)
    })
}

enum CopyError {
    Io(std::io::Error),
    Engine(floe_engine::EngineError),
}

/// Writes the data extents of `file` (its first `len` bytes) into the
/// engine, skipping holes and all-zero chunks, then flushes. Returns the
/// bytes written.
fn copy_into(primary: &mut Primary<FileStore>, file: &Path, len: u64) -> Result<u64, CopyError> {
    const CHUNK: usize = 1 << 20;
    let f = File::open(file).map_err(CopyError::Io)?;
    let mut buf = vec![0u8; CHUNK];
    let (mut at, mut written) = (0u64, 0u64);
    while at < len {
        let data = match rustix::fs::seek(&f, SeekFrom::Data(at)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(CopyError::Io(e.into())),
        };
        let hole = rustix::fs::seek(&f, SeekFrom::Hole(data))
            .map_err(|e| CopyError::Io(e.into()))?
            .min(len);
        let mut pos = data;
        while pos < hole {
            let n = (hole - pos).min(CHUNK as u64) as usize;
            f.read_exact_at(&mut buf[..n], pos).map_err(CopyError::Io)?;
            if buf[..n].iter().any(|&b| b != 0) {
                primary.write(pos, &buf[..n]).map_err(CopyError::Engine)?;
                written += n as u64;
            }
            pos += n as u64;
        }
        at = hole;
    }
    primary.flush().map_err(CopyError::Engine)?;
    Ok(written)
}
