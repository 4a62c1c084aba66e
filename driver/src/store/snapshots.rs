//! Local snapshots of the image: `snapshots/<name>.img`, a reflink
//! (`FICLONE`) where the filesystem shares extents, else a sparse copy;
//! fsynced before it is renamed into place, so a snapshot that has a name is
//! never partial. The directory entry is made durable by the next sync.

use floe_engine::BlockIndex;

use super::error::{check_name, Error};
use super::FileStore;

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

    pub(super) fn patch_snapshot(&mut self, name: &str, b: BlockIndex, data: &[u8]) -> Result<(), Error> {
        check_name(name)?;
        self.check(b, data.len())?;
        if !self.patched.contains_key(name) {
            let path = self.paths.snapshot(name);
            let f = self.fs.open(&path).map_err(Error::io("open snapshot", &path))?;
            self.patched.insert(name.to_owned(), f);
        }
        let f = self.patched.get(name).expect("inserted above when missing");
        f.write_at(data, self.offset(b))
            .map_err(Error::io_at("write snapshot", || self.paths.snapshot(name)))
    }
}
