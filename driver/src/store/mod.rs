//! The on-disk volume store: [`FileStore`] implements the engine's
//! [`VolumeStore`] over a directory of plain files, [`FileDecisionLog`] its
//! [`floe_engine::DecisionLog`].
//!
//! # Layout
//! ```text
//! <data_dir>/volumes/<volume-id>/
//!     layout  meta  image  side  side.map  intent  stage/<epoch>.{data,map}
//!     undo/<epoch>.{data,map}   (a replica's retained points)
//!     snapshots/<name>.img  snapshots/.<name>.img.part  snapshots/.<name>.progress
//! <data_dir>/groups/<group>/decisions
//! ```
//!
//! # Durability
//! Every mutation lands in the page cache at once (reads see it) and is
//! durable after [`VolumeStore::sync`], as the engine's contract says; a
//! power cut keeps an arbitrary part of what was not synced. `sync` fsyncs
//! only what changed since the last one, in this order:
//! 1. data: `image`, `side`, the staged and undo data files, snapshots whose copy
//!    is finished (a snapshot still being copied is never fsynced: a crash
//!    fails it, `store/snapshots.rs`);
//! 2. directory entries: new or removed staging and undo files; finished snapshots
//!    renamed to their names, then the directory fsynced;
//! 3. indexes: the dirty 4 KiB pages of `side.map`, the staging maps and
//!    the undo maps and `intent`, written only now, so a durable bit always
//!    names durable data;
//! 4. the metadata record, into the slot not holding the newest valid one.
//!
//! Two mutations sync early, because the next step could not be undone by a
//! power cut otherwise: [`VolumeStore::side_clear`] makes `side.map` empty on
//! disk before it truncates `side` (a stale bit must never name a hole that
//! a log-mode recovery would merge into the image), and a snapshot is
//! fsynced before it is renamed into place. The first metadata record and
//! the layout record are written to a temporary file, fsynced, renamed and
//! their directory fsynced, so a record file exists only with a record in it.
//!
//! Records (layout, metadata, decisions) are checksummed A/B slots
//! (`store/record.rs`); a torn write leaves the other slot, and a record that is
//! corrupt in both slots or of an unknown format version is an error, never
//! a guess.

mod backend;
mod bitfile;
mod codec;
#[cfg(any(test, feature = "test-hooks"))]
pub mod crash;
mod decisions;
mod error;
mod layout;
mod meta;
mod record;
mod snapshots;
mod staging;
#[cfg(any(test, feature = "test-hooks"))]
pub mod volatile;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use floe_engine::{BlockIndex, Geometry, LocalEpoch, StoreError, VolumeMeta, VolumeStore};

pub use backend::{for_each_data_chunk, Backend, BackendFile, RealBackend};
pub use codec::DecodeError;
#[cfg(any(test, feature = "test-hooks"))]
pub use crash::CrashingBackend;
pub use decisions::FileDecisionLog;
pub use error::{Error, SlotState};
pub use meta::MAX_RETAINED;

/// The backend of [`FileStore::open`], [`FileStore::create`] and
/// [`FileDecisionLog::open`]: the real filesystem, or in a test build run
/// with `FLOE_POWER_CUT=1` the one that holds unsynced writes in memory
/// (`store/volatile.rs`).
pub(crate) fn default_backend() -> Arc<dyn Backend> {
    #[cfg(any(test, feature = "test-hooks"))]
    if let Some(v) = volatile::from_env() {
        return v;
    }
    Arc::new(RealBackend)
}

/// At a graceful exit of `serve`: what the store holds in memory in a
/// power-cut test build goes to the page cache, as a real exit leaves it.
/// Does nothing otherwise.
pub fn exiting() {
    #[cfg(any(test, feature = "test-hooks"))]
    volatile::spill();
}

/// The file, in a volume's `snapshots/`, that snapshot `name` is copied into
/// until its copy is done.
pub fn pending_snapshot_file(name: &str) -> String {
    snapshots::part_name(name)
}

use backend::ensure_dir;
use bitfile::{bytes_for, BitFile};
use error::check_name;
use layout::{Layout, Paths, LAYOUT_VERSION};
use record::{Kind, Slots};
use staging::Staging;

/// One volume's files.
#[derive(Debug)]
pub struct FileStore {
    fs: Arc<dyn Backend>,
    paths: Paths,
    geo: Geometry,
    image: Box<dyn BackendFile>,
    side: Box<dyn BackendFile>,
    side_map: BitFile,
    /// Whether `side.map` on disk may hold a set bit.
    side_map_on_disk: bool,
    stage: Staging,
    undo: Staging,
    intent: BitFile,
    meta: Slots,
    /// Put but not yet synced: the record and its encoding.
    meta_pending: Option<(VolumeMeta, Vec<u8>)>,
    image_dirty: bool,
    side_dirty: bool,
    snapshots_dirty: bool,
    /// Snapshots being copied.
    pending: BTreeMap<String, snapshots::Pending>,
}

impl FileStore {
    /// Create volume `volume` under `data_dir` with an empty (sparse) image.
    pub fn create(data_dir: &Path, volume: &str, geo: Geometry) -> Result<Self, Error> {
        Self::create_with(default_backend(), data_dir, volume, geo)
    }

    /// Open volume `volume` under `data_dir`; its geometry is the one it was created with.
    pub fn open(data_dir: &Path, volume: &str) -> Result<Self, Error> {
        Self::open_with(default_backend(), data_dir, volume)
    }

    /// [`FileStore::create`] on another backend.
    pub fn create_with(fs: Arc<dyn Backend>, data_dir: &Path, volume: &str, geo: Geometry) -> Result<Self, Error> {
        check_name(volume)?;
        let p = Paths::new(data_dir, volume);
        if fs
            .exists(&p.layout)
            .map_err(Error::io("look for volume layout", &p.layout))?
        {
            return Err(Error::AlreadyExists(p.dir));
        }
        // A creation that did not finish is started over.
        ensure_dir(fs.as_ref(), &p.dir).map_err(Error::io("create volume directory", &p.dir))?;
        for dir in [&p.stage, &p.undo, &p.snapshots] {
            fs.create_dir(dir).map_err(Error::io("create volume directory", dir))?;
        }
        for dir in [&p.stage, &p.undo] {
            for name in fs.list_dir(dir).map_err(Error::io("list staging directory", dir))? {
                let path = dir.join(name);
                fs.remove_file(&path)
                    .map_err(Error::io("remove leftover staging file", &path))?;
            }
        }
        if fs
            .exists(&p.meta)
            .map_err(Error::io("look for volume metadata", &p.meta))?
        {
            fs.remove_file(&p.meta)
                .map_err(Error::io("remove leftover metadata", &p.meta))?;
        }
        let sizes = [
            (&p.image, geo.bytes()),
            (&p.side, geo.bytes()),
            (&p.side_map, bytes_for(geo.blocks())),
            (&p.intent, bytes_for(geo.regions())),
        ];
        for (path, len) in sizes {
            let f = fs.create(path).map_err(Error::io("create volume file", path))?;
            f.set_len(len).map_err(Error::io("size volume file", path))?;
            f.sync().map_err(Error::io("sync volume file", path))?;
        }
        for dir in [&p.stage, &p.undo, &p.snapshots, &p.dir] {
            fs.sync_dir(dir).map_err(Error::io("sync volume directory", dir))?;
        }
        // Last: the layout record says the volume exists.
        let layout = Layout::for_geometry(geo);
        Slots::open(fs.as_ref(), p.layout.clone(), Kind::Layout, LAYOUT_VERSION, 4096)?
            .write(fs.as_ref(), &layout.encode())?;
        Self::open_with(fs, data_dir, volume)
    }

    /// [`FileStore::open`] on another backend.
    pub fn open_with(fs: Arc<dyn Backend>, data_dir: &Path, volume: &str) -> Result<Self, Error> {
        check_name(volume)?;
        let p = Paths::new(data_dir, volume);
        if !fs
            .exists(&p.layout)
            .map_err(Error::io("look for volume layout", &p.layout))?
        {
            return Err(Error::NotAVolume(p.dir));
        }
        let slots = Slots::open(fs.as_ref(), p.layout.clone(), Kind::Layout, LAYOUT_VERSION, 4096)?;
        let payload = slots.read()?.ok_or_else(|| Error::NotAVolume(p.dir.clone()))?;
        let layout = Layout::decode(&payload).map_err(|source| Error::Decode {
            path: p.layout.clone(),
            source,
        })?;
        let geo = layout.geometry;
        let image = fs.open(&p.image).map_err(Error::io("open image", &p.image))?;
        layout.check_image_len(&p.dir, image.size().map_err(Error::io("stat image", &p.image))?)?;
        let side = fs.open(&p.side).map_err(Error::io("open side area", &p.side))?;
        let side_map = fs.open(&p.side_map).map_err(Error::io("open side map", &p.side_map))?;
        let side_map = BitFile::load(side_map, geo.blocks()).map_err(Error::io("read side map", &p.side_map))?;
        let intent = fs
            .open(&p.intent)
            .map_err(Error::io("open write-intent record", &p.intent))?;
        let intent = BitFile::load(intent, geo.regions()).map_err(Error::io("read write-intent record", &p.intent))?;
        let stage = Staging::load(fs.as_ref(), p.stage.clone(), geo.blocks(), geo.block_size() as u64)?;
        // Stores created before retained points have no undo directory.
        if !fs
            .exists(&p.undo)
            .map_err(Error::io("look for undo directory", &p.undo))?
        {
            fs.create_dir(&p.undo)
                .map_err(Error::io("create volume directory", &p.undo))?;
            fs.sync_dir(&p.dir)
                .map_err(Error::io("sync volume directory", &p.dir))?;
        }
        let undo = Staging::load(fs.as_ref(), p.undo.clone(), geo.blocks(), geo.block_size() as u64)?;
        let meta = Slots::open(
            fs.as_ref(),
            p.meta.clone(),
            Kind::VolumeMeta,
            meta::META_VERSION,
            layout.meta_slot_bytes,
        )?;
        Ok(FileStore {
            side_map_on_disk: side_map.any(),
            fs,
            paths: p,
            geo,
            image,
            side,
            side_map,
            stage,
            undo,
            intent,
            meta,
            meta_pending: None,
            image_dirty: false,
            side_dirty: false,
            snapshots_dirty: false,
            pending: BTreeMap::new(),
        })
    }

    /// The volume's geometry, as created.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// The volume's directory.
    pub fn dir(&self) -> &Path {
        &self.paths.dir
    }

    /// The image file (a copy of it made while nothing folds is the image
    /// at one epoch).
    pub fn image_file(&self) -> &Path {
        &self.paths.image
    }

    pub(crate) fn offset(&self, b: BlockIndex) -> u64 {
        b * self.geo.block_size() as u64
    }

    pub(crate) fn check(&self, b: BlockIndex, len: usize) -> Result<(), Error> {
        if b >= self.geo.blocks() {
            return Err(Error::BlockOutOfRange {
                block: b,
                blocks: self.geo.blocks(),
            });
        }
        if len != self.geo.block_size() {
            return Err(Error::BufferSize {
                len,
                block_size: self.geo.block_size(),
            });
        }
        Ok(())
    }

    fn read_image_block(&self, b: BlockIndex, buf: &mut [u8]) -> Result<(), Error> {
        self.check(b, buf.len())?;
        self.image
            .read_at(buf, self.offset(b))
            .map_err(Error::io("read", &self.paths.image))
    }

    fn write_image_block(&mut self, b: BlockIndex, data: &[u8]) -> Result<(), Error> {
        self.check(b, data.len())?;
        crate::failpoint::hit(crate::failpoint::IMAGE_WRITE);
        let at = self.offset(b);
        let done = if data.iter().all(|&x| x == 0) {
            self.image.punch_hole(at, data.len() as u64)
        } else {
            self.image.write_at(data, at)
        };
        done.map_err(Error::io("write", &self.paths.image))?;
        self.image_dirty = true;
        Ok(())
    }

    fn side_put_block(&mut self, b: BlockIndex, data: &[u8]) -> Result<(), Error> {
        self.check(b, data.len())?;
        self.side
            .write_at(data, self.offset(b))
            .map_err(Error::io("write", &self.paths.side))?;
        self.side_dirty = true;
        self.side_map.set(b, true);
        Ok(())
    }

    fn side_get_block(&self, b: BlockIndex, buf: &mut [u8]) -> Result<bool, Error> {
        self.check(b, buf.len())?;
        if !self.side_map.get(b) {
            return Ok(false);
        }
        self.side
            .read_at(buf, self.offset(b))
            .map_err(Error::io("read", &self.paths.side))?;
        Ok(true)
    }

    fn clear_side(&mut self) -> Result<(), Error> {
        if self.side_map_on_disk {
            let (f, path) = (self.side_map.file(), &self.paths.side_map);
            f.set_len(0).map_err(Error::io("truncate", path))?;
            f.set_len(bytes_for(self.geo.blocks()))
                .map_err(Error::io("size", path))?;
            f.sync().map_err(Error::io("sync", path))?;
            self.side_map_on_disk = false;
        }
        self.side_map.forget_all();
        let path = &self.paths.side;
        self.side.set_len(0).map_err(Error::io("truncate", path))?;
        self.side.set_len(self.geo.bytes()).map_err(Error::io("size", path))?;
        self.side_dirty = true;
        Ok(())
    }

    fn set_intent(&mut self, region: u64, on: bool) -> Result<(), Error> {
        if region >= self.geo.regions() {
            return Err(Error::RegionOutOfRange {
                region,
                regions: self.geo.regions(),
            });
        }
        self.intent.set(region, on);
        Ok(())
    }

    fn prepare_meta(&mut self, meta: &VolumeMeta) -> Result<(), Error> {
        let bytes = meta::encode(meta);
        if bytes.len() as u64 > self.meta.capacity() {
            return Err(Error::RecordTooLarge {
                path: self.paths.meta.clone(),
                len: bytes.len() as u64,
                capacity: self.meta.capacity(),
            });
        }
        self.meta_pending = Some((meta.clone(), bytes));
        Ok(())
    }

    fn load_meta(&self) -> Result<Option<VolumeMeta>, Error> {
        if let Some((m, _)) = &self.meta_pending {
            return Ok(Some(m.clone()));
        }
        let Some(payload) = self.meta.read()? else {
            return Ok(None);
        };
        meta::decode(&payload).map(Some).map_err(|source| Error::Decode {
            path: self.paths.meta.clone(),
            source,
        })
    }

    fn sync_files(&mut self) -> Result<(), Error> {
        // 1. Data.
        if self.image_dirty {
            self.image.sync().map_err(Error::io("sync", &self.paths.image))?;
            self.image_dirty = false;
        }
        if self.side_dirty {
            self.side.sync().map_err(Error::io("sync", &self.paths.side))?;
            self.side_dirty = false;
        }
        // The deliberate bug of `make test-bugs`: the staged data is never
        // fsynced, though its map is (the power-cut matrix must see it).
        #[cfg(not(feature = "bug-skip-staging-sync"))]
        self.stage.sync_data()?;
        self.undo.sync_data()?;
        self.sync_finished_snapshots()?;
        // 2. Directory entries.
        self.stage.sync_dir(self.fs.as_ref())?;
        self.undo.sync_dir(self.fs.as_ref())?;
        self.name_finished_snapshots()?;
        if self.snapshots_dirty {
            let dir = &self.paths.snapshots;
            self.fs.sync_dir(dir).map_err(Error::io("sync directory", dir))?;
            self.snapshots_dirty = false;
        }
        // 3. Indexes, naming only data made durable above.
        if self
            .side_map
            .persist()
            .map_err(Error::io("write", &self.paths.side_map))?
        {
            self.side_map_on_disk = true;
        }
        self.stage.persist_maps()?;
        self.undo.persist_maps()?;
        self.intent.persist().map_err(Error::io("write", &self.paths.intent))?;
        // 4. The metadata record.
        if let Some((_, bytes)) = &self.meta_pending {
            self.meta.write(self.fs.as_ref(), bytes)?;
            self.meta_pending = None;
        }
        Ok(())
    }
}

impl VolumeStore for FileStore {
    fn read_image(&self, b: BlockIndex, buf: &mut [u8]) -> Result<(), StoreError> {
        self.read_image_block(b, buf).map_err(|e| e.at("read image block"))
    }

    fn write_image(&mut self, b: BlockIndex, data: &[u8]) -> Result<(), StoreError> {
        self.write_image_block(b, data).map_err(|e| e.at("write image block"))
    }

    fn side_put(&mut self, b: BlockIndex, data: &[u8]) -> Result<(), StoreError> {
        self.side_put_block(b, data).map_err(|e| e.at("put side block"))
    }

    fn side_get(&self, b: BlockIndex, buf: &mut [u8]) -> Result<bool, StoreError> {
        self.side_get_block(b, buf).map_err(|e| e.at("read side block"))
    }

    fn side_blocks(&self) -> Result<Vec<BlockIndex>, StoreError> {
        Ok(self.side_map.ones())
    }

    fn side_clear(&mut self) -> Result<(), StoreError> {
        self.clear_side().map_err(|e| e.at("clear side area"))
    }

    fn stage_put(&mut self, epoch: LocalEpoch, b: BlockIndex, data: &[u8]) -> Result<(), StoreError> {
        crate::failpoint::hit(crate::failpoint::STAGE_WRITE);
        self.check(b, data.len())
            .and_then(|()| self.stage.put(self.fs.as_ref(), epoch, b, data))
            .map_err(|e| e.at("stage block"))
    }

    fn stage_get(&self, epoch: LocalEpoch, b: BlockIndex, buf: &mut [u8]) -> Result<bool, StoreError> {
        self.check(b, buf.len())
            .and_then(|()| self.stage.get(epoch, b, buf))
            .map_err(|e| e.at("read staged block"))
    }

    fn stage_drop(&mut self, epoch: LocalEpoch) -> Result<(), StoreError> {
        self.stage
            .drop_epoch(self.fs.as_ref(), epoch)
            .map_err(|e| e.at("drop staged epoch"))
    }

    fn stage_epochs(&self) -> Result<Vec<LocalEpoch>, StoreError> {
        Ok(self.stage.epochs())
    }

    fn undo_put(&mut self, epoch: LocalEpoch, b: BlockIndex, data: &[u8]) -> Result<(), StoreError> {
        self.check(b, data.len())
            .and_then(|()| self.undo.put(self.fs.as_ref(), epoch, b, data))
            .map_err(|e| e.at("keep block for a retained point"))
    }

    fn undo_get(&self, epoch: LocalEpoch, b: BlockIndex, buf: &mut [u8]) -> Result<bool, StoreError> {
        self.check(b, buf.len())
            .and_then(|()| self.undo.get(epoch, b, buf))
            .map_err(|e| e.at("read block of a retained point"))
    }

    fn undo_blocks(&self, epoch: LocalEpoch) -> Result<Vec<BlockIndex>, StoreError> {
        Ok(self.undo.blocks(epoch))
    }

    fn undo_drop(&mut self, epoch: LocalEpoch) -> Result<(), StoreError> {
        self.undo
            .drop_epoch(self.fs.as_ref(), epoch)
            .map_err(|e| e.at("drop a retained point's blocks"))
    }

    fn undo_epochs(&self) -> Result<Vec<LocalEpoch>, StoreError> {
        Ok(self.undo.epochs())
    }

    fn intent_set(&mut self, region: u64, on: bool) -> Result<(), StoreError> {
        self.set_intent(region, on).map_err(|e| e.at("set write-intent bit"))
    }

    fn intent_regions(&self) -> Result<Vec<u64>, StoreError> {
        Ok(self.intent.ones())
    }

    fn put_meta(&mut self, meta: &VolumeMeta) -> Result<(), StoreError> {
        self.prepare_meta(meta).map_err(|e| e.at("prepare volume metadata"))
    }

    fn get_meta(&self) -> Result<Option<VolumeMeta>, StoreError> {
        self.load_meta().map_err(|e| e.at("load volume metadata"))
    }

    fn snapshot_image(&mut self, name: &str) -> Result<(), StoreError> {
        self.take_snapshot(name).map_err(|e| e.at("snapshot image"))
    }

    fn image_data_from(&self, from: BlockIndex) -> Result<Option<(BlockIndex, BlockIndex)>, StoreError> {
        self.data_run_from(from).map_err(|e| e.at("look for data in the image"))
    }

    fn snapshot_begin(&mut self, name: &str) -> Result<(), StoreError> {
        self.begin_snapshot(name).map_err(|e| e.at("begin snapshot"))
    }

    fn snapshot_put(&mut self, name: &str, b: BlockIndex, data: &[u8]) -> Result<(), StoreError> {
        self.put_snapshot_block(name, b, data)
            .map_err(|e| e.at("put snapshot block"))
    }

    fn snapshot_progress(&mut self, name: &str, next: BlockIndex) -> Result<(), StoreError> {
        self.write_progress(name, next)
            .map_err(|e| e.at("record snapshot progress"))
    }

    fn snapshot_finish(&mut self, name: &str) -> Result<(), StoreError> {
        self.finish_snapshot(name).map_err(|e| e.at("finish snapshot"))
    }

    fn snapshot_abandon(&mut self, name: &str) -> Result<(), StoreError> {
        self.abandon_snapshot(name).map_err(|e| e.at("abandon snapshot"))
    }

    fn snapshots_pending(&self) -> Result<Vec<String>, StoreError> {
        self.pending_snapshots().map_err(|e| e.at("list pending snapshots"))
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.sync_files().map_err(|e| e.at("sync volume files"))
    }
}
