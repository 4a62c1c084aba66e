//! A volume smaller than its store: online growth within a fixed geometry.
//!
//! The engine's geometry is fixed when its store is created. A CSI volume is
//! therefore created with a store larger than its capacity (the reserve, see
//! [`reserve_for`]) and exposed through [`SizedBackend`], whose size is the
//! capacity; growing the volume online moves that size up to the reserve
//! (the FUSE file, then the loop device, then the file system follow).
//! Growing past the reserve copies the volume into a larger store, which
//! needs it detached (`node::local`).

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use floe_engine::Primary;

use crate::dataplane::backend::check_range;
use crate::dataplane::{BackendError, BlockBackend, EngineBackend};
use crate::store::{for_each_data_chunk, FileStore};

/// The extra room a new store gets beyond the capacity: as much again, at
/// least 1 GiB, at most 64 GiB; so a volume grows online to twice its size
/// (or by 1 GiB) without a copy.
pub fn reserve_for(size: u64, block_size: u64) -> u64 {
    let extra = size.clamp(1 << 30, 64 << 30);
    size.saturating_add(extra).div_ceil(block_size) * block_size
}

/// A [`BlockBackend`] showing the first `size` bytes of an engine volume.
pub struct SizedBackend {
    engine: EngineBackend,
    size: AtomicU64,
}

impl SizedBackend {
    /// `engine`, shown as `size` bytes (at most its geometry).
    pub fn new(engine: EngineBackend, size: u64) -> Self {
        let size = size.min(engine.size());
        SizedBackend {
            engine,
            size: AtomicU64::new(size),
        }
    }

    /// The engine underneath (snapshots, freezes).
    pub fn engine(&self) -> &EngineBackend {
        &self.engine
    }

    /// The most this volume can grow to without a copy.
    pub fn reserve(&self) -> u64 {
        self.engine.size()
    }
}

impl BlockBackend for SizedBackend {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        check_range(offset, buf.len() as u64, self.size())?;
        self.engine.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
        check_range(offset, buf.len() as u64, self.size())?;
        self.engine.write_at(offset, buf)
    }

    fn zero_range(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        check_range(offset, len, self.size())?;
        self.engine.zero_range(offset, len)
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.engine.flush()
    }

    fn set_size(&self, new_size: u64) -> Result<(), BackendError> {
        if new_size < self.size() {
            return Err(BackendError::Unsupported("shrinking"));
        }
        if new_size > self.reserve() {
            return Err(BackendError::Unsupported("growing past the store's geometry"));
        }
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }
}

/// Copies the first `len` bytes of the image file `src` into `primary`,
/// through the engine, skipping holes and all-zero chunks (a new volume
/// reads as zeros already). Flushes at the end. Returns the bytes written.
pub fn copy_into(src: &Path, len: u64, primary: &mut Primary<FileStore>) -> io::Result<u64> {
    let f = File::open(src)?;
    let len = len.min(f.metadata()?.len());
    let mut written = 0;
    for_each_data_chunk(&f, len, |at, chunk| {
        primary.write(at, chunk).map_err(io::Error::other)?;
        written += chunk.len() as u64;
        Ok(())
    })?;
    primary.flush().map_err(io::Error::other)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_doubles_small_volumes_within_bounds() {
        assert_eq!(reserve_for(300 << 20, 4096), (300 << 20) + (1 << 30));
        assert_eq!(reserve_for(4 << 30, 4096), 8 << 30);
        assert_eq!(reserve_for(1 << 40, 4096), (1 << 40) + (64 << 30));
        assert_eq!(reserve_for(4096, 1 << 20) % (1 << 20), 0);
    }
}
