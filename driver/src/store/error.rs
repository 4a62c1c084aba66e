//! Errors of the on-disk store, converted to [`floe_engine::StoreError`] at
//! the trait boundary.

use std::io;
use std::path::{Path, PathBuf};

use super::codec::DecodeError;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done, as a verb phrase.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// Neither slot of a record file holds a record whose checksum matches.
    #[error("{path}: neither record slot holds a valid record (slot A: {a}, slot B: {b})")]
    NoValidRecord {
        /// The record file.
        path: PathBuf,
        /// What slot A holds.
        a: SlotState,
        /// What slot B holds.
        b: SlotState,
    },
    /// A record with a valid checksum in a format this build does not read.
    #[error("{path}: record format version {found} is not known to this build (it reads version {known})")]
    UnknownVersion {
        /// The record file.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Version this build reads.
        known: u32,
    },
    /// A record of another kind than the file should hold (a file copied to the wrong place).
    #[error("{path}: holds a record of kind {found}, expected kind {expected}")]
    WrongKind {
        /// The record file.
        path: PathBuf,
        /// Kind found.
        found: u32,
        /// Kind expected.
        expected: u32,
    },
    /// A record whose checksum matches but whose payload does not decode.
    #[error("{path}: record payload does not decode")]
    Decode {
        /// The record file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: DecodeError,
    },
    /// A record larger than its slot.
    #[error("{path}: record of {len} bytes does not fit a slot of {capacity} bytes")]
    RecordTooLarge {
        /// The record file.
        path: PathBuf,
        /// Encoded record length.
        len: u64,
        /// Slot capacity.
        capacity: u64,
    },
    /// The volume directory has no layout record: never created, or its creation did not finish.
    #[error("{0}: no volume here (missing layout record)")]
    NotAVolume(PathBuf),
    /// The volume exists already.
    #[error("{0}: a volume exists here already")]
    AlreadyExists(PathBuf),
    /// The layout record does not describe a usable geometry, or the files disagree with it.
    #[error("{path}: {what}")]
    Layout {
        /// The volume directory.
        path: PathBuf,
        /// What disagrees.
        what: String,
    },
    /// A block index past the end of the volume.
    #[error("block {block} is outside the volume of {blocks} blocks")]
    BlockOutOfRange {
        /// Block asked for.
        block: u64,
        /// Blocks in the volume.
        blocks: u64,
    },
    /// A write-intent region past the end of the record.
    #[error("write-intent region {region} is outside the record of {regions} regions")]
    RegionOutOfRange {
        /// Region asked for.
        region: u64,
        /// Regions in the record.
        regions: u64,
    },
    /// A buffer whose length is not the block size.
    #[error("buffer of {len} bytes where a block of {block_size} bytes is expected")]
    BufferSize {
        /// Buffer length.
        len: usize,
        /// Block size.
        block_size: usize,
    },
    /// A volume, group or snapshot name that cannot be a file name.
    #[error("{0:?} is not a valid name: it must be non-empty, at most 200 bytes, without '/', NUL or a leading '.'")]
    InvalidName(String),
}

/// What one slot of a record file holds, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Nothing was ever written there.
    Empty,
    /// Something was, but it is torn or corrupt.
    Corrupt,
}

impl std::fmt::Display for SlotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SlotState::Empty => "empty",
            SlotState::Corrupt => "torn or corrupt",
        })
    }
}

impl Error {
    /// An I/O error with what was done and where. The path is copied only
    /// when the error happens: this runs for every block read and write.
    pub(crate) fn io<P: AsRef<Path>>(op: &'static str, path: P) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// [`Error::io`] for a path that must first be built (joined): built only
    /// when the error happens.
    pub(crate) fn io_at(op: &'static str, path: impl FnOnce() -> PathBuf) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io {
            op,
            path: path(),
            source,
        }
    }

    /// Convert at the `VolumeStore` / `DecisionLog` boundary.
    pub(crate) fn at(self, op: &'static str) -> floe_engine::StoreError {
        floe_engine::StoreError {
            op,
            source: Box::new(self),
        }
    }
}

/// A file or directory name for a volume, group or snapshot.
pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty() && name.len() <= 200 && !name.starts_with('.') && !name.contains(['/', '\0']);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_the_directory_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"x".repeat(201)).is_err());
        for good in ["pvc-1234", "pre-failback-g1-i2", "a.b"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn io_context_names_the_path_it_was_given_or_builds() {
        let e = Error::io("read", Path::new("/v/image"))(io::Error::other("boom"));
        assert!(matches!(&e, Error::Io { op: "read", path, .. } if path == Path::new("/v/image")));
        let e = Error::io_at("write staged block", || Path::new("/v/stage").join("3.data"))(io::Error::other("boom"));
        assert!(matches!(&e, Error::Io { path, .. } if path == Path::new("/v/stage/3.data")));
    }

    #[test]
    fn boundary_conversion_keeps_the_cause() {
        let e = Error::BlockOutOfRange { block: 9, blocks: 4 }.at("write image block");
        assert_eq!(e.op, "write image block");
        assert!(e.source.to_string().contains("block 9"));
    }
}
