//! The backend of a replicated volume: every FUSE request goes through the
//! engine's primary state machine, which keeps the bitmaps, the freeze
//! window and the write-intent record, and reaches the disk through a
//! [`FileStore`].
//!
//! The engine is single-threaded, so one mutex serialises a volume's
//! requests; the FUSE threads of other volumes are not affected. Holding it
//! across the store's `pwrite` is the price of copy-on-write being exact
//! (the old version is read and kept before the new one lands).

use std::io;
use std::sync::Arc;

use floe_engine::{EngineError, Primary};

use super::backend::{BackendError, BlockBackend};
use crate::replication::endpoint::HostedPrimary;
use crate::store::FileStore;

/// A volume whose I/O passes through `floe_engine::Primary`.
pub struct EngineBackend {
    size: u64,
    primary: Arc<HostedPrimary<FileStore>>,
}

impl EngineBackend {
    /// Wrap a primary (created or reopened by the caller).
    pub fn new(primary: Primary<FileStore>) -> Self {
        EngineBackend {
            size: primary.geometry().bytes(),
            primary: Arc::new(HostedPrimary::new(primary)),
        }
    }

    /// Run `f` on the primary under the volume's lock (freeze, snapshot,
    /// replication frames); its sender, if any, looks for work after.
    pub fn with_primary<R>(&self, f: impl FnOnce(&mut Primary<FileStore>) -> R) -> R {
        self.primary.with(f)
    }

    /// The hosted engine, shared with the volume's replication sender.
    pub fn hosted(&self) -> &Arc<HostedPrimary<FileStore>> {
        &self.primary
    }
}

fn engine_error(op: &'static str) -> impl FnOnce(EngineError) -> BackendError {
    move |e| match e {
        EngineError::OutOfRange { offset, len, size } => BackendError::OutOfRange { offset, len, size },
        other => BackendError::Engine {
            op,
            errno: errno_in(&other),
            source: other,
        },
    }
}

/// The errno of the first OS error among `e`'s causes (the store's failed
/// `pwrite` or `fsync`), so a full disk reaches the writer as ENOSPC;
/// EIO when there is none.
fn errno_in(e: &(dyn std::error::Error + 'static)) -> i32 {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(errno) = c.downcast_ref::<io::Error>().and_then(io::Error::raw_os_error) {
            return errno;
        }
        cause = c.source();
    }
    rustix::io::Errno::IO.raw_os_error()
}

impl BlockBackend for EngineBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.primary
            .peek(|p| p.read(offset, buf))
            .map_err(engine_error("read volume through the engine"))
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
        self.with_primary(|p| p.write(offset, buf))
            .map_err(engine_error("write volume through the engine"))
    }

    fn zero_range(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.with_primary(|p| p.zero(offset, len))
            .map_err(engine_error("zero a range through the engine"))
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.primary
            .peek(|p| p.flush())
            .map_err(engine_error("flush volume through the engine"))
    }
}

#[cfg(test)]
mod tests {
    use floe_engine::StoreError;

    use super::*;

    #[test]
    fn the_stores_errno_reaches_the_writer() {
        let full = crate::store::Error::Io {
            op: "write block",
            path: "/data/v/image".into(),
            source: io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()),
        };
        let e = EngineError::Store(StoreError {
            op: "write through",
            source: Box::new(full),
        });
        assert_eq!(
            engine_error("write")(e).errno(),
            rustix::io::Errno::NOSPC.raw_os_error()
        );
        let e = EngineError::Store(StoreError {
            op: "write through",
            source: Box::new(io::Error::other("no errno")),
        });
        assert_eq!(engine_error("write")(e).errno(), rustix::io::Errno::IO.raw_os_error());
    }
}
