//! The block store behind a volume's FUSE file.
//!
//! [`BlockBackend`] is the narrow trait the FUSE server calls for every
//! request: byte-addressed reads and writes, zeroing a range (what a discard
//! or a `WRITE_ZEROES` from the loop device becomes), a flush that is the
//! durability point (there is no FUA on this path), and growing. It is
//! `Send + Sync` and takes `&self`: implementations lock inside, because the
//! server calls them from several threads at once.
//!
//! [`FileBackend`] passes through to a plain file; the engine-backed one lives
//! with the engine.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::FallocateFlags;

/// What can go wrong in a backend; [`BackendError::errno`] is what the FUSE
/// server answers the kernel with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The range does not fit in the volume.
    #[error("range {offset}+{len} is past the end of the volume ({size} bytes)")]
    OutOfRange {
        /// First byte of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// Size of the volume.
        size: u64,
    },
    /// The backend cannot do this operation (for example shrinking).
    #[error("{0} is not supported by this backend")]
    Unsupported(&'static str),
    /// An I/O error from the store underneath.
    #[error("{op}")]
    Io {
        /// What the backend was doing, as a verb phrase.
        op: &'static str,
        /// The error from the store.
        #[source]
        source: io::Error,
    },
    /// The engine failed; `errno` is the one its store's I/O failed with
    /// (ENOSPC for a full disk), or EIO.
    #[error("{op}")]
    Engine {
        /// What the backend was doing, as a verb phrase.
        op: &'static str,
        /// The errno to answer with.
        errno: i32,
        /// The engine's error.
        #[source]
        source: floe_engine::EngineError,
    },
}

impl BackendError {
    /// The errno (positive) to report to the kernel for this error.
    pub fn errno(&self) -> i32 {
        match self {
            BackendError::OutOfRange { .. } => rustix::io::Errno::NOSPC.raw_os_error(),
            BackendError::Unsupported(_) => rustix::io::Errno::OPNOTSUPP.raw_os_error(),
            BackendError::Io { source, .. } => source.raw_os_error().unwrap_or(rustix::io::Errno::IO.raw_os_error()),
            BackendError::Engine { errno, .. } => *errno,
        }
    }

    fn io(op: &'static str) -> impl FnOnce(io::Error) -> BackendError {
        move |source| BackendError::Io { op, source }
    }
}

/// A volume's bytes, as the data path sees them.
///
/// Every method may be called concurrently from several threads.
pub trait BlockBackend: Send + Sync {
    /// Size of the volume in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` with the bytes at `offset`. The range must lie inside the
    /// volume.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError>;

    /// Writes `buf` at `offset`. The range must lie inside the volume.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BackendError>;

    /// Makes `len` bytes at `offset` read back as zeros (punch-hole or
    /// zero-range semantics: the backend may free the space).
    fn zero_range(&self, offset: u64, len: u64) -> Result<(), BackendError>;

    /// Makes every write completed before this call durable.
    fn flush(&self) -> Result<(), BackendError>;

    /// Grows the volume to `new_size` bytes; the new range reads as zeros.
    /// Backends that cannot grow keep the default, which refuses.
    fn set_size(&self, new_size: u64) -> Result<(), BackendError> {
        let _ = new_size;
        Err(BackendError::Unsupported("resize"))
    }
}

/// Checks that `offset..offset+len` lies inside a volume of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<(), BackendError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BackendError::OutOfRange { offset, len, size }),
    }
}

/// A volume kept in a plain file: `pread`/`pwrite`, `fallocate` to punch
/// holes, `fdatasync` to flush.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    path: PathBuf,
    size: AtomicU64,
}

impl FileBackend {
    /// Creates (or truncates) a sparse file of `size` bytes at `path`.
    pub fn create(path: &Path, size: u64) -> Result<Self, BackendError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(BackendError::io("create the backing file"))?;
        file.set_len(size).map_err(BackendError::io("size the backing file"))?;
        Ok(Self {
            file,
            path: path.to_owned(),
            size: AtomicU64::new(size),
        })
    }

    /// Opens an existing file; the volume is as large as the file.
    pub fn open(path: &Path) -> Result<Self, BackendError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(BackendError::io("open the backing file"))?;
        let size = file
            .metadata()
            .map_err(BackendError::io("stat the backing file"))?
            .len();
        Ok(Self {
            file,
            path: path.to_owned(),
            size: AtomicU64::new(size),
        })
    }

    /// Where the bytes live.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl BlockBackend for FileBackend {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        check_range(offset, buf.len() as u64, self.size())?;
        // A file shorter than the volume reads as zeros past its end.
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BackendError::io("read the backing file")(e)),
            }
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
        check_range(offset, buf.len() as u64, self.size())?;
        self.file
            .write_all_at(buf, offset)
            .map_err(BackendError::io("write the backing file"))
    }

    fn zero_range(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        check_range(offset, len, self.size())?;
        if len == 0 {
            return Ok(());
        }
        let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, punch, offset, len) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP) => {}
            Err(e) => return Err(BackendError::io("punch a hole in the backing file")(e.into())),
        }
        // A file system without hole punching: write zeros.
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(zeros.len() as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], at)
                .map_err(BackendError::io("zero the backing file"))?;
            at += n as u64;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.file
            .sync_data()
            .map_err(BackendError::io("fdatasync the backing file"))
    }

    fn set_size(&self, new_size: u64) -> Result<(), BackendError> {
        if new_size < self.size() {
            return Err(BackendError::Unsupported("shrinking"));
        }
        self.file
            .set_len(new_size)
            .map_err(BackendError::io("grow the backing file"))?;
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_edges() {
        assert!(check_range(0, 0, 0).is_ok());
        assert!(check_range(10, 0, 10).is_ok());
        assert!(check_range(0, 10, 10).is_ok());
        assert!(check_range(1, 10, 10).is_err());
        assert!(check_range(u64::MAX, 2, u64::MAX).is_err());
    }

    #[test]
    fn file_backend_round_trip_zero_and_grow() {
        let dir = tempfile::Builder::new()
            .prefix("floe-backend")
            .tempdir()
            .expect("tempdir");
        let b = FileBackend::create(&dir.path().join("vol"), 1 << 20).expect("create");
        b.write_at(4096, &[7u8; 8192]).expect("write");
        let mut buf = vec![0u8; 8192];
        b.read_at(4096, &mut buf).expect("read");
        assert!(buf.iter().all(|&x| x == 7));
        b.zero_range(8192, 4096).expect("zero");
        b.read_at(4096, &mut buf).expect("read");
        assert!(buf[..4096].iter().all(|&x| x == 7));
        assert!(buf[4096..].iter().all(|&x| x == 0));
        assert!(b.write_at((1 << 20) - 1, &[1, 2]).is_err());
        b.set_size(2 << 20).expect("grow");
        assert_eq!(b.size(), 2 << 20);
        b.write_at((1 << 20) - 1, &[1, 2]).expect("write across the old end");
        assert!(b.set_size(1 << 20).is_err(), "shrinking is refused");
        b.flush().expect("flush");
    }
}
