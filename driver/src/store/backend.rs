//! The file operations the store is built from, behind a narrow trait, so a
//! test can put a backend underneath that loses unsynced writes at a power
//! cut (`CrashingBackend`, feature `test-hooks`).
//!
//! [`RealBackend`] is `std::fs` plus, through `rustix`, `FICLONE` reflinks,
//! `SEEK_DATA`/`SEEK_HOLE` sparse copies and hole punching.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{FallocateFlags, SeekFrom};
use rustix::io::Errno;

/// An open file: positioned I/O, length, fsync.
pub trait BackendFile: fmt::Debug + Send + Sync {
    /// Fill `buf` from `offset`; bytes past the end of the file read as zeroes.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `data` at `offset`, extending the file if needed.
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Make `len` bytes at `offset` read as zeroes, freeing their space where
    /// the filesystem can (the file keeps its length).
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Truncate or extend (sparsely) to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Current length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Make every write, punch and length change of this file durable (fsync).
    fn sync(&self) -> io::Result<()>;
    /// The first range of bytes at or after `offset` that may hold data, as
    /// `start..end`; `None` when only holes (zeroes) follow. The default
    /// knows no holes.
    fn data_from(&self, offset: u64) -> io::Result<Option<(u64, u64)>> {
        Ok(Some((offset, u64::MAX)))
    }
}

/// Files and directories.
pub trait Backend: fmt::Debug + Send + Sync {
    /// Open an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn BackendFile>>;
    /// Create a file, or truncate it to nothing if it exists.
    fn create(&self, path: &Path) -> io::Result<Box<dyn BackendFile>>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Create a directory; an existing one is fine.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Names in a directory.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Remove a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Rename within one directory, replacing `to` atomically.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Make the entries of a directory durable (fsync of the directory).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Create `dst` (replacing it) as a point-in-time copy of `src`'s current
    /// content, written but not yet synced.
    fn clone_file(&self, src: &Path, dst: &Path) -> io::Result<Box<dyn BackendFile>>;
}

/// The real filesystem.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealBackend;

#[derive(Debug)]
struct RealFile(File);

impl BackendFile for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf[done..].fill(0);
        Ok(())
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.0, flags, offset, len) {
            Ok(()) => Ok(()),
            // No hole punching here: write the zeroes.
            Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
                let zeroes = vec![0u8; len.min(1 << 20) as usize];
                let mut at = offset;
                while at < offset + len {
                    let n = (offset + len - at).min(zeroes.len() as u64) as usize;
                    self.0.write_all_at(&zeroes[..n], at)?;
                    at += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn sync(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn data_from(&self, offset: u64) -> io::Result<Option<(u64, u64)>> {
        match rustix::fs::seek(&self.0, SeekFrom::Data(offset)) {
            Ok(start) => Ok(Some((start, rustix::fs::seek(&self.0, SeekFrom::Hole(start))?))),
            // Nothing but holes from `offset` on (or past the end).
            Err(Errno::NXIO) => Ok(None),
            // No SEEK_DATA here: everything may be data.
            Err(Errno::INVAL | Errno::OPNOTSUPP) => Ok(Some((offset, u64::MAX))),
            Err(e) => Err(e.into()),
        }
    }
}

fn open_rw(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(create)
        .open(path)
}

impl Backend for RealBackend {
    fn open(&self, path: &Path) -> io::Result<Box<dyn BackendFile>> {
        Ok(Box::new(RealFile(open_rw(path, false)?)))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn BackendFile>> {
        Ok(Box::new(RealFile(open_rw(path, true)?)))
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        match std::fs::create_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
            other => other,
        }
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            // Names that are not UTF-8 are none of ours.
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn clone_file(&self, src: &Path, dst: &Path) -> io::Result<Box<dyn BackendFile>> {
        let src = File::open(src)?;
        let dst = open_rw(dst, true)?;
        // A reflink shares the extents (btrfs, xfs with reflink=1); the kernel
        // writes the source's dirty pages back first. Anything else copies.
        if rustix::fs::ioctl_ficlone(&dst, &src).is_err() {
            copy_sparse(&src, &dst)?;
        }
        Ok(Box::new(RealFile(dst)))
    }
}

/// Copy `src` into the empty `dst`, leaving holes where `src` has them.
pub(crate) fn copy_sparse(src: &File, dst: &File) -> io::Result<()> {
    let len = src.metadata()?.len();
    dst.set_len(len)?;
    for_each_data_chunk(src, len, |at, chunk| dst.write_all_at(chunk, at))
}

/// Calls `each` with every chunk (at most 1 MiB) of the first `len` bytes
/// of `src` that holds a non-zero byte, and its offset: holes and all-zero
/// chunks are skipped.
pub fn for_each_data_chunk(src: &File, len: u64, mut each: impl FnMut(u64, &[u8]) -> io::Result<()>) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < len {
        let (start, end) = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(start) => (start, rustix::fs::seek(src, SeekFrom::Hole(start))?),
            // No data past `pos`.
            Err(Errno::NXIO) => break,
            // No SEEK_DATA here: everything is data.
            Err(Errno::INVAL | Errno::OPNOTSUPP) => (pos, len),
            Err(e) => return Err(e.into()),
        };
        let end = end.min(len);
        let mut at = start;
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            src.read_exact_at(&mut buf[..n], at)?;
            if buf[..n].iter().any(|&b| b != 0) {
                each(at, &buf[..n])?;
            }
            at += n as u64;
        }
        pos = end.max(start + 1);
    }
    Ok(())
}

/// Create `path` and any missing parents, making each new entry durable in
/// its parent directory.
pub(crate) fn ensure_dir(fs: &dyn Backend, path: &Path) -> io::Result<()> {
    if fs.exists(path)? {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure_dir(fs, parent)?;
        fs.create_dir(path)?;
        fs.sync_dir(parent)?;
    } else {
        fs.create_dir(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_zeroes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = RealBackend.create(&dir.path().join("f")).expect("create");
        f.write_at(b"abc", 0).expect("write");
        let mut buf = [9u8; 6];
        f.read_at(&mut buf, 1).expect("read");
        assert_eq!(buf, [b'b', b'c', 0, 0, 0, 0]);
    }

    #[test]
    fn punched_ranges_read_as_zeroes_and_keep_the_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = RealBackend.create(&dir.path().join("f")).expect("create");
        f.write_at(&[7u8; 3 * 4096], 0).expect("write");
        f.punch_hole(4096, 4096).expect("punch");
        assert_eq!(f.size().expect("len"), 3 * 4096);
        let mut buf = vec![1u8; 3 * 4096];
        f.read_at(&mut buf, 0).expect("read");
        assert!(buf[..4096].iter().all(|&b| b == 7));
        assert!(buf[4096..8192].iter().all(|&b| b == 0));
        assert!(buf[8192..].iter().all(|&b| b == 7));
    }

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let src = open_rw(&a, true).expect("create a");
        src.set_len(64 << 20).expect("size");
        src.write_all_at(b"head", 0).expect("write");
        src.write_all_at(b"middle", 20 << 20).expect("write");
        src.write_all_at(b"tail", (64 << 20) - 4).expect("write");
        let dst = open_rw(&b, true).expect("create b");
        copy_sparse(&src, &dst).expect("copy");
        assert_eq!(std::fs::read(&a).expect("read a"), std::fs::read(&b).expect("read b"));
        // The hole in the middle stayed a hole (ext4, xfs, tmpfs all report them).
        use std::os::unix::fs::MetadataExt;
        let used = dst.metadata().expect("stat").blocks() * 512;
        assert!(used < 8 << 20, "copy allocated {used} bytes");
    }

    #[test]
    fn clone_file_copies_the_current_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let src = RealBackend.create(&a).expect("create");
        src.set_len(1 << 20).expect("size");
        src.write_at(b"point in time", 4096).expect("write");
        let copy = RealBackend.clone_file(&a, &b).expect("clone");
        src.write_at(b"later", 4096).expect("write");
        let mut buf = [0u8; 13];
        copy.read_at(&mut buf, 4096).expect("read");
        assert_eq!(&buf, b"point in time");
        assert_eq!(copy.size().expect("len"), 1 << 20);
    }

    #[test]
    fn ensure_dir_creates_every_missing_parent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a/b/c");
        ensure_dir(&RealBackend, &deep).expect("ensure");
        assert!(deep.is_dir());
        ensure_dir(&RealBackend, &deep).expect("idempotent");
    }
}
