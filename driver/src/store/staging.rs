//! The staging area of a DR replica: per local epoch a sparse data file
//! `stage/<epoch>.data` (block `b` at `b * block_size`) and a bitmap
//! `stage/<epoch>.map` of the blocks staged. The undo sets of retained
//! points (`undo/<epoch>.{data,map}`, the image's versions a fold replaced)
//! are kept the same way.
//!
//! A map bit reaches the disk only in [`Staging::persist_maps`], after the
//! data files and the directory were synced, so a durable bit always names
//! durable data. An epoch found with only one of its two files is an
//! unfinished drop or creation: [`Staging::load`] removes the lone file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use floe_engine::LocalEpoch;

use super::backend::{Backend, BackendFile};
use super::bitfile::{bytes_for, BitFile};
use super::error::Error;

#[derive(Debug)]
struct Epoch {
    data: Box<dyn BackendFile>,
    map: BitFile,
    data_dirty: bool,
}

#[derive(Debug)]
pub(crate) struct Staging {
    dir: PathBuf,
    blocks: u64,
    block_size: u64,
    epochs: BTreeMap<LocalEpoch, Epoch>,
    /// Entries created or removed since the directory was last synced.
    dir_dirty: bool,
    /// Epochs whose files were unlinked since the directory was last synced.
    unlinked: BTreeSet<LocalEpoch>,
}

fn data_name(e: LocalEpoch) -> String {
    format!("{e}.data")
}

fn map_name(e: LocalEpoch) -> String {
    format!("{e}.map")
}

impl Staging {
    /// Read the staging directory (which exists).
    pub(crate) fn load(fs: &dyn Backend, dir: PathBuf, blocks: u64, block_size: u64) -> Result<Self, Error> {
        let names = fs.list_dir(&dir).map_err(Error::io("list staging directory", &dir))?;
        let mut found: BTreeMap<LocalEpoch, (bool, bool)> = BTreeMap::new();
        for name in &names {
            let (stem, is_map) = if let Some(s) = name.strip_suffix(".data") {
                (s, false)
            } else if let Some(s) = name.strip_suffix(".map") {
                (s, true)
            } else {
                continue;
            };
            // Only canonical numbers are ours ("007.data" is not).
            if let Ok(e) = stem.parse::<LocalEpoch>() {
                if e.to_string() == stem {
                    let f = found.entry(e).or_default();
                    if is_map {
                        f.1 = true;
                    } else {
                        f.0 = true;
                    }
                }
            }
        }
        let mut me = Staging {
            dir,
            blocks,
            block_size,
            epochs: BTreeMap::new(),
            dir_dirty: false,
            unlinked: BTreeSet::new(),
        };
        let mut repaired = false;
        for (e, (has_data, has_map)) in found {
            if has_data && has_map {
                let data_path = me.dir.join(data_name(e));
                let map_path = me.dir.join(map_name(e));
                let data = fs.open(&data_path).map_err(Error::io("open staged data", &data_path))?;
                let map = fs.open(&map_path).map_err(Error::io("open staging map", &map_path))?;
                let map = BitFile::load(map, blocks).map_err(Error::io("read staging map", &map_path))?;
                me.epochs.insert(
                    e,
                    Epoch {
                        data,
                        map,
                        data_dirty: false,
                    },
                );
            } else {
                let lone = me.dir.join(if has_data { data_name(e) } else { map_name(e) });
                fs.remove_file(&lone)
                    .map_err(Error::io("remove half-dropped staging file", &lone))?;
                repaired = true;
            }
        }
        if repaired {
            fs.sync_dir(&me.dir)
                .map_err(Error::io("sync staging directory", &me.dir))?;
        }
        Ok(me)
    }

    fn epoch(&mut self, fs: &dyn Backend, e: LocalEpoch) -> Result<&mut Epoch, Error> {
        if !self.epochs.contains_key(&e) {
            if self.unlinked.contains(&e) {
                // Make the old files' removal durable before names are
                // reused, so a power cut cannot pair an old map with new data.
                fs.sync_dir(&self.dir)
                    .map_err(Error::io("sync staging directory", &self.dir))?;
                self.unlinked.clear();
            }
            let data_path = self.dir.join(data_name(e));
            let map_path = self.dir.join(map_name(e));
            let data = fs
                .create(&data_path)
                .map_err(Error::io("create staged data", &data_path))?;
            let map = fs
                .create(&map_path)
                .map_err(Error::io("create staging map", &map_path))?;
            map.set_len(bytes_for(self.blocks))
                .map_err(Error::io("size staging map", &map_path))?;
            self.dir_dirty = true;
            self.epochs.insert(
                e,
                Epoch {
                    data,
                    map: BitFile::new(map, self.blocks),
                    data_dirty: false,
                },
            );
        }
        Ok(self.epochs.get_mut(&e).expect("inserted above when missing"))
    }

    pub(crate) fn put(&mut self, fs: &dyn Backend, e: LocalEpoch, b: u64, data: &[u8]) -> Result<(), Error> {
        let at = b * self.block_size;
        let ep = self.epoch(fs, e)?;
        let written = ep.data.write_at(data, at);
        if written.is_ok() {
            ep.data_dirty = true;
            ep.map.set(b, true);
        }
        written.map_err(Error::io_at("write staged block", || self.dir.join(data_name(e))))
    }

    pub(crate) fn get(&self, e: LocalEpoch, b: u64, buf: &mut [u8]) -> Result<bool, Error> {
        let Some(ep) = self.epochs.get(&e).filter(|ep| ep.map.get(b)) else {
            return Ok(false);
        };
        ep.data
            .read_at(buf, b * self.block_size)
            .map_err(Error::io_at("read staged block", || self.dir.join(data_name(e))))?;
        Ok(true)
    }

    /// Unlink the epoch's files, the map first.
    pub(crate) fn drop_epoch(&mut self, fs: &dyn Backend, e: LocalEpoch) -> Result<(), Error> {
        if self.epochs.remove(&e).is_none() {
            return Ok(());
        }
        for name in [map_name(e), data_name(e)] {
            let path = self.dir.join(name);
            fs.remove_file(&path).map_err(Error::io("remove staging file", &path))?;
        }
        self.unlinked.insert(e);
        self.dir_dirty = true;
        Ok(())
    }

    /// The blocks held for epoch `e`, ascending.
    pub(crate) fn blocks(&self, e: LocalEpoch) -> Vec<u64> {
        self.epochs.get(&e).map_or_else(Vec::new, |ep| ep.map.ones())
    }

    pub(crate) fn epochs(&self) -> Vec<LocalEpoch> {
        self.epochs.keys().copied().collect()
    }

    /// First step of a sync: the staged data.
    pub(crate) fn sync_data(&mut self) -> Result<(), Error> {
        for (e, ep) in self.epochs.iter_mut().filter(|(_, ep)| ep.data_dirty) {
            ep.data
                .sync()
                .map_err(Error::io_at("sync staged data", || self.dir.join(data_name(*e))))?;
            ep.data_dirty = false;
        }
        Ok(())
    }

    /// Second step: the directory entries (new and removed files).
    pub(crate) fn sync_dir(&mut self, fs: &dyn Backend) -> Result<(), Error> {
        if self.dir_dirty {
            fs.sync_dir(&self.dir)
                .map_err(Error::io("sync staging directory", &self.dir))?;
            self.dir_dirty = false;
            self.unlinked.clear();
        }
        Ok(())
    }

    /// Third step: the maps, naming only data made durable above.
    pub(crate) fn persist_maps(&mut self) -> Result<(), Error> {
        for (e, ep) in &mut self.epochs {
            ep.map
                .persist()
                .map_err(Error::io_at("write staging map", || self.dir.join(map_name(*e))))?;
        }
        Ok(())
    }
}
