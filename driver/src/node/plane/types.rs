//! The data plane's validated values: volume ids and snapshot names,
//! volume shapes, quiesce tokens, and what the plane reports about its
//! volumes. Every value that reaches the plane from outside is parsed into
//! these once, by whoever receives it.

use std::path::PathBuf;
use std::time::Duration;

use floe_engine::{ConfigError, Geometry, Mode};
use serde::{Deserialize, Serialize};

/// Smallest tracking block size the data plane accepts.
pub const MIN_BLOCK_SIZE: u64 = crate::model::BlockSize::MIN;
/// Largest tracking block size (the engine's limit).
pub const MAX_BLOCK_SIZE: u64 = crate::model::BlockSize::MAX;
/// Block size of a volume created without one.
pub const DEFAULT_BLOCK_SIZE: u64 = 4096;
/// Bytes covered by one write-intent region (DRBD's activity-log extent).
pub const REGION_BYTES: u64 = 4 << 20;
/// How long a quiesce lasts when the request does not say.
pub const DEFAULT_QUIESCE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest quiesce the watchdog allows.
pub const MAX_QUIESCE_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest volume id or snapshot name.
pub const MAX_NAME: usize = 128;

/// A volume as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Volume id.
    pub volume: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Tracking block size.
    pub block_size: u64,
    /// Replication mode.
    pub mode: String,
    /// Local snapshots, by name.
    pub snapshots: Vec<String>,
    /// The block device, when attached.
    pub attachment: Option<AttachmentInfo>,
}

/// How an attached volume is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachState {
    /// Attached by this process.
    Serving,
    /// Taken over from a predecessor through the holder.
    Resumed,
    /// Found attached at start but its FUSE connection could not be taken
    /// over: I/O fails; unmount the file system on the device, then detach.
    Broken,
}

/// An attached volume's block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentInfo {
    /// The loop device, `/dev/loopN`.
    pub device: PathBuf,
    /// The FUSE mount whose one file the loop device sits on.
    pub fuse_dir: PathBuf,
    /// How it is served.
    pub state: AttachState,
    /// Why it is broken, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The engine's incarnation (bumped by every open, so by every restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<u64>,
    /// Blocks written and not yet shipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_blocks: Option<u64>,
}

/// A frozen file system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenInfo {
    /// The quiesce's token.
    pub token: String,
    /// Mount point.
    pub path: PathBuf,
    /// When the watchdog thaws it (Unix milliseconds).
    pub deadline_unix_ms: u64,
}

/// The answer to a quiesce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quiesced {
    /// Pass it to `thaw`.
    pub token: String,
    /// Mount point.
    pub path: PathBuf,
    /// When the watchdog thaws it (Unix milliseconds).
    pub deadline_unix_ms: u64,
    /// The timeout that deadline came from.
    pub timeout_ms: u64,
}

/// What is wrong with a request. Every message names what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// A volume id or snapshot name that cannot be one.
    #[error("{what} {name:?} is not valid: use 1 to {MAX_NAME} characters from A-Z a-z 0-9 . _ -, starting with a letter or digit")]
    Name {
        /// "volume id" or "snapshot name".
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// A block size the engine or the data path cannot use.
    #[error(
        "block_size {0} is not allowed: use a power of two from {MIN_BLOCK_SIZE} (4 KiB) to {MAX_BLOCK_SIZE} (1 MiB)"
    )]
    BlockSize(u64),
    /// A size of zero.
    #[error("size_bytes is 0: a volume needs at least one block")]
    ZeroSize,
    /// A size that is not a whole number of blocks.
    #[error("size_bytes {size} is not a multiple of the block size {block_size}: round it up to {rounded}")]
    SizeNotMultiple {
        /// The size given.
        size: u64,
        /// The block size.
        block_size: u64,
        /// The next multiple.
        rounded: u64,
    },
    /// A replication mode the engine does not know.
    #[error("mode: {0}")]
    Mode(#[source] ConfigError),
    /// A quiesce timeout out of range.
    #[error("timeout_ms {0} is out of range: use 1 to {max}", max = MAX_QUIESCE_TIMEOUT.as_millis())]
    Timeout(u64),
    /// A token that no quiesce can have returned.
    #[error("token {0:?} is not a quiesce token (32 hexadecimal digits)")]
    Token(String),
    /// An id that cannot be one (a CSI call's ids, checked on receipt).
    #[error(transparent)]
    Id(#[from] crate::model::Invalid),
    /// The same object twice where each must be distinct.
    #[error("the same {0} given twice: name each once")]
    Duplicate(&'static str),
}

/// A volume id or snapshot name, checked: also a file name, a FUSE mount
/// directory name and a holder key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    fn parse(what: &'static str, name: String) -> Result<Self, RequestError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Name(name))
        } else {
            Err(RequestError::Name { what, name })
        }
    }

    /// A volume id, checked.
    pub fn volume(id: impl Into<String>) -> Result<Self, RequestError> {
        Self::parse("volume id", id.into())
    }

    /// A snapshot name, checked.
    pub fn snapshot(name: impl Into<String>) -> Result<Self, RequestError> {
        Self::parse("snapshot name", name.into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Shape of a volume: checked size, block size and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Size in bytes, a whole number of blocks.
    pub size_bytes: u64,
    /// Tracking block size.
    pub block_size: u64,
    /// Replication mode.
    pub mode: Mode,
}

impl Shape {
    /// Checks a requested shape (the API's form: defaults and a mode name).
    pub fn parse(size_bytes: u64, block_size: Option<u64>, mode: Option<&str>) -> Result<Self, RequestError> {
        let shape = Self::new(size_bytes, block_size.unwrap_or(DEFAULT_BLOCK_SIZE), Mode::Continuous)?;
        Ok(Shape {
            mode: parse_mode(mode.unwrap_or("continuous"))?,
            ..shape
        })
    }

    /// Checks a shape whose mode is already parsed.
    pub fn new(size_bytes: u64, block_size: u64, mode: Mode) -> Result<Self, RequestError> {
        if crate::model::BlockSize::new(block_size).is_none() {
            return Err(RequestError::BlockSize(block_size));
        }
        if size_bytes == 0 {
            return Err(RequestError::ZeroSize);
        }
        if !size_bytes.is_multiple_of(block_size) {
            return Err(RequestError::SizeNotMultiple {
                size: size_bytes,
                block_size,
                rounded: size_bytes.div_ceil(block_size).saturating_mul(block_size),
            });
        }
        Ok(Shape {
            size_bytes,
            block_size,
            mode,
        })
    }

    /// The engine's geometry: one write-intent region per [`REGION_BYTES`].
    pub fn geometry(&self) -> Geometry {
        let region_blocks = (REGION_BYTES / self.block_size).max(1);
        Geometry::new(
            self.block_size as usize,
            self.size_bytes / self.block_size,
            region_blocks,
        )
        .expect("a checked shape is a valid geometry")
    }
}

/// Parses a replication mode name.
pub fn parse_mode(s: &str) -> Result<Mode, RequestError> {
    s.parse::<Mode>().map_err(RequestError::Mode)
}

/// Whether `token` has the shape of a quiesce token.
pub fn is_token(token: &str) -> bool {
    token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_must_be_powers_of_two_from_4k_to_1m() {
        for bs in [4096u64, 8192, 65536, 1 << 20] {
            assert!(Shape::parse(1 << 21, Some(bs), None).is_ok(), "{bs}");
        }
        for bs in [0u64, 512, 2048, 3000, 4097, 12288, 2 << 20] {
            let e = Shape::parse(1 << 21, Some(bs), None).expect_err("refused");
            assert!(matches!(e, RequestError::BlockSize(b) if b == bs));
            assert!(e.to_string().contains("power of two"), "{e}");
        }
        // A 1 MiB block is its own write-intent region's quarter.
        let shape = Shape::parse(8 << 20, Some(1 << 20), Some("log")).expect("valid");
        assert_eq!(shape.geometry().region_blocks(), 4);
    }

    #[test]
    fn sizes_must_be_whole_blocks_and_not_zero() {
        let e = Shape::parse(0, None, None).expect_err("zero");
        assert!(matches!(e, RequestError::ZeroSize));
        let e = Shape::parse(10_000, None, None).expect_err("partial block");
        assert!(e.to_string().contains("round it up to 12288"), "{e}");
        let e = Shape::parse(u64::MAX, Some(8192), None).expect_err("partial block at the top");
        assert!(matches!(e, RequestError::SizeNotMultiple { .. }));
    }

    #[test]
    fn modes_are_the_engines() {
        for m in ["continuous", "log", "interval"] {
            assert!(Shape::parse(4096, None, Some(m)).is_ok());
        }
        let e = Shape::parse(4096, None, Some("sync")).expect_err("unknown");
        assert!(e.to_string().contains("expected continuous, log or interval"), "{e}");
    }

    #[test]
    fn names_are_file_names_and_holder_keys() {
        for ok in ["pvc-1", "a", "Vol_2.x", &"x".repeat(MAX_NAME)] {
            assert!(Name::volume(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "a b", "é", &"x".repeat(MAX_NAME + 1), "a\0"] {
            let e = Name::volume(bad).expect_err("refused");
            assert!(e.to_string().contains("volume id"), "{e}");
        }
    }
}
