//! Local snapshots of the image, `snapshots/<name>.img`.
//!
//! A snapshot the engine copies after its mark is pending until its copy is
//! done: `snapshots/.<name>.img.part`, created sparse at the image's size and
//! filled block by block, beside `snapshots/.<name>.progress`, a one-line
//! record of how far the copy has gone (`<next block> <blocks>`, rewritten in
//! place after every step; read by operators and tests, never trusted for
//! recovery). Neither is fsynced while the copy runs: a crash fails the
//! snapshot, and the engine drops what is left of it at the next open
//! ([`FileStore::pending_snapshots`]). The sync after
//! `snapshot_finish` fsyncs the part file, renames it to its name and fsyncs
//! the directory, so a snapshot that has a name is never partial.
//!
//! The strays snapshot of a demotion is taken whole at once
//! (`snapshot_image`): a reflink (`FICLONE`) where the file system shares
//! extents, else a sparse copy, fsynced before it is renamed into place.

use std::io;

use floe_engine::BlockIndex;

use super::backend::BackendFile;
use super::error::{check_name, Error};
use super::FileStore;

/// A snapshot being filled.
#[derive(Debug)]
pub(super) struct Pending {
    data: Box<dyn BackendFile>,
    progress: Box<dyn BackendFile>,
    /// Complete: the next sync makes it durable and names it.
    finishing: bool,
}

const PART: &str = ".img.part";

impl FileStore {
    /// Names of the local snapshots, ascending.
    pub fn snapshots(&self) -> Result<Vec<String>, Error> {
        let dir = &self.paths.snapshots;
        let mut names: Vec<String> = self
            .fs
            .list_dir(dir)
            .map_err(Error::io("list snapshots", dir))?
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| n.strip_suffix(".img").map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Names of the snapshots whose copy has begun and not finished, ascending.
    pub fn pending_snapshots(&self) -> Result<Vec<String>, Error> {
        let dir = &self.paths.snapshots;
        let mut names: Vec<String> = self
            .fs
            .list_dir(dir)
            .map_err(Error::io("list snapshots", dir))?
            .into_iter()
            .filter_map(|n| n.strip_prefix('.')?.strip_suffix(PART).map(str::to_owned))
            .chain(self.pending.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Read block `b` of snapshot `name`.
    pub fn read_snapshot(&self, name: &str, b: BlockIndex, buf: &mut [u8]) -> Result<(), Error> {
        check_name(name)?;
        self.check(b, buf.len())?;
        let path = self.paths.snapshot(name);
        let f = self.fs.open(&path).map_err(Error::io("open snapshot", &path))?;
        f.read_at(buf, self.offset(b))
            .map_err(Error::io("read snapshot", &path))
    }

    pub(super) fn take_snapshot(&mut self, name: &str) -> Result<(), Error> {
        check_name(name)?;
        let (tmp, path) = (self.paths.snapshot_tmp(name), self.paths.snapshot(name));
        let copy = self
            .fs
            .clone_file(&self.paths.image, &tmp)
            .map_err(Error::io("copy image to", &tmp))?;
        // Durable before its name appears: a named snapshot is never partial.
        copy.sync().map_err(Error::io("sync", &tmp))?;
        self.fs
            .rename(&tmp, &path)
            .map_err(Error::io("rename snapshot to", &path))?;
        self.snapshots_dirty = true;
        Ok(())
    }

    pub(super) fn begin_snapshot(&mut self, name: &str) -> Result<(), Error> {
        check_name(name)?;
        let path = self.paths.snapshot(name);
        if self.pending.contains_key(name) || self.fs.exists(&path).map_err(Error::io("look for", &path))? {
            return Err(Error::AlreadyExists(path));
        }
        let (part, prog) = (self.paths.snapshot_part(name), self.paths.snapshot_progress(name));
        let data = self.fs.create(&part).map_err(Error::io("create snapshot", &part))?;
        data.set_len(self.geo.bytes())
            .map_err(Error::io("size snapshot", &part))?;
        let progress = self
            .fs
            .create(&prog)
            .map_err(Error::io("create snapshot progress record", &prog))?;
        // Neither entry is synced: a crash fails the snapshot either way.
        self.pending.insert(
            name.to_owned(),
            Pending {
                data,
                progress,
                finishing: false,
            },
        );
        self.write_progress(name, 0)
    }

    fn pending_mut(&mut self, name: &str) -> Result<&mut Pending, Error> {
        let path = self.paths.snapshot_part(name);
        self.pending.get_mut(name).ok_or_else(|| Error::Io {
            op: "find pending snapshot",
            path,
            source: io::Error::from(io::ErrorKind::NotFound),
        })
    }

    pub(super) fn put_snapshot_block(&mut self, name: &str, b: BlockIndex, data: &[u8]) -> Result<(), Error> {
        self.check(b, data.len())?;
        let at = self.offset(b);
        let path = self.paths.snapshot_part(name);
        self.pending_mut(name)?
            .data
            .write_at(data, at)
            .map_err(Error::io("write snapshot block", path))
    }

    pub(super) fn write_progress(&mut self, name: &str, next: BlockIndex) -> Result<(), Error> {
        let line = format!("{next:020} {:020}\n", self.geo.blocks());
        let path = self.paths.snapshot_progress(name);
        self.pending_mut(name)?
            .progress
            .write_at(line.as_bytes(), 0)
            .map_err(Error::io("write snapshot progress", path))
    }

    pub(super) fn finish_snapshot(&mut self, name: &str) -> Result<(), Error> {
        self.pending_mut(name)?.finishing = true;
        Ok(())
    }

    pub(super) fn abandon_snapshot(&mut self, name: &str) -> Result<(), Error> {
        check_name(name)?;
        self.pending.remove(name);
        for path in [self.paths.snapshot_part(name), self.paths.snapshot_progress(name)] {
            match self.fs.remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(Error::io("remove pending snapshot", path)(e))
                }
                _ => {}
            }
        }
        // Not synced: a removal a crash undoes is redone at the next open.
        Ok(())
    }

    /// Sync step 1: the data of every finished snapshot.
    pub(super) fn sync_finished_snapshots(&mut self) -> Result<(), Error> {
        for (name, p) in self.pending.iter().filter(|(_, p)| p.finishing) {
            p.data
                .sync()
                .map_err(Error::io("sync", self.paths.snapshot_part(name)))?;
        }
        Ok(())
    }

    /// Sync step 2, before the directory's fsync: name every finished
    /// snapshot (its data synced in step 1) and drop its progress record.
    pub(super) fn name_finished_snapshots(&mut self) -> Result<(), Error> {
        let done: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.finishing)
            .map(|(n, _)| n.clone())
            .collect();
        for name in done {
            let (part, path) = (self.paths.snapshot_part(&name), self.paths.snapshot(&name));
            self.fs
                .rename(&part, &path)
                .map_err(Error::io("rename snapshot to", &path))?;
            self.pending.remove(&name);
            let prog = self.paths.snapshot_progress(&name);
            if let Err(e) = self.fs.remove_file(&prog) {
                tracing::warn!(path = %prog.display(), error = %e, "remove a snapshot's progress record");
            }
            self.snapshots_dirty = true;
        }
        Ok(())
    }

    /// The first run of blocks at or after `from` that may hold data.
    pub(super) fn data_run_from(&self, from: BlockIndex) -> Result<Option<(BlockIndex, BlockIndex)>, Error> {
        let bs = self.geo.block_size() as u64;
        let run = self
            .image
            .data_from(self.offset(from))
            .map_err(Error::io("look for data in", &self.paths.image))?;
        Ok(run.map(|(start, end)| (start / bs, end.div_ceil(bs))))
    }
}

/// The pending part of a snapshot: `.<name>.img.part`.
pub(super) fn part_name(name: &str) -> String {
    format!(".{name}{PART}")
}
