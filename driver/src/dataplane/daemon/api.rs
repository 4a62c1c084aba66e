//! The local API's wire format, and its parsing into strict domain types.
//!
//! One request per line, one response per line, both JSON objects:
//!
//! ```text
//! → {"op":"create","volume":"pvc-1","size_bytes":1073741824,"block_size":4096,"mode":"continuous"}
//! ← {"ok":{"volume":{"volume":"pvc-1","size_bytes":1073741824,...}}}
//! → {"op":"attach","volume":"pvc-2"}
//! ← {"error":{"kind":"not_found","message":"volume \"pvc-2\" does not exist: create it first"}}
//! ```
//!
//! [`Request`] is what travels; [`Command`] is what the daemon acts on, made
//! by [`Command::parse`], which is the only place input is validated (sizes,
//! block sizes, names, modes, paths, timeouts). Unknown fields are refused
//! rather than ignored, so a misspelt `block_sise` is an error instead of a
//! silent default. [`ErrorKind`] follows the gRPC codes, so the CSI server
//! maps it to a `tonic::Status` one to one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use floe_engine::{ConfigError, Geometry, Mode};
use serde::{Deserialize, Serialize};

/// Version of this API, reported by `status`. Bumped on incompatible change.
pub const API_VERSION: u32 = 1;
/// Smallest tracking block size the data plane accepts.
pub const MIN_BLOCK_SIZE: u64 = 4096;
/// Largest tracking block size (the engine's limit).
pub const MAX_BLOCK_SIZE: u64 = floe_engine::types::MAX_BLOCK_SIZE as u64;
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
/// Longest request line the server reads.
pub const MAX_REQUEST_BYTES: usize = 64 << 10;

/// A request as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Create an empty volume.
    Create {
        /// Volume id.
        volume: String,
        /// Size in bytes, a multiple of the block size.
        size_bytes: u64,
        /// Tracking block size (default 4096).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        block_size: Option<u64>,
        /// Replication mode: continuous (default), log or interval.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<String>,
    },
    /// Delete a detached volume and its snapshots.
    Delete {
        /// Volume id.
        volume: String,
    },
    /// Expose a volume as a block device.
    Attach {
        /// Volume id.
        volume: String,
    },
    /// Tear the block device down (its file system must be unmounted).
    Detach {
        /// Volume id.
        volume: String,
    },
    /// Grow a volume.
    Expand {
        /// Volume id.
        volume: String,
        /// New size in bytes.
        size_bytes: u64,
    },
    /// Every volume.
    List,
    /// The data plane itself: pid, holder, volumes, frozen file systems.
    Status,
    /// `syncfs` then `FIFREEZE` a mounted file system until `thaw` or the
    /// deadline.
    Quiesce {
        /// Mount point.
        path: PathBuf,
        /// Milliseconds until the watchdog thaws it (default 30000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Thaw what a quiesce froze.
    Thaw {
        /// The quiesce's token.
        token: String,
    },
    /// A local point-in-time copy of a volume.
    Snapshot {
        /// Volume id.
        volume: String,
        /// Snapshot name.
        name: String,
    },
    /// Create a new volume holding a snapshot's content.
    Restore {
        /// The new volume's id.
        volume: String,
        /// Volume the snapshot was taken of.
        from_volume: String,
        /// Snapshot name.
        snapshot: String,
        /// Size of the new volume (default: the snapshot's); not smaller.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size_bytes: Option<u64>,
        /// Replication mode (default: the source volume's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<String>,
    },
    /// A call of the CSI layer (`floe-csi`'s node and controller services)
    /// on the node's CSI catalog, which this process keeps.
    Csi {
        /// The call.
        call: crate::csi::wire::NodeCall,
    },
}

/// A response as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The request was carried out.
    Ok(Reply),
    /// It was not.
    Error(WireError),
}

/// What a successful request returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// One volume (create, attach, expand, restore).
    Volume(VolumeInfo),
    /// Every volume.
    Volumes(Vec<VolumeInfo>),
    /// The volume is gone.
    Deleted {
        /// Volume id.
        volume: String,
    },
    /// The block device is gone (or was not there).
    Detached {
        /// Volume id.
        volume: String,
        /// Whether anything was attached.
        was_attached: bool,
    },
    /// The data plane's state.
    Status(Status),
    /// A file system is frozen.
    Quiesced(Quiesced),
    /// A file system is thawed.
    Thawed {
        /// The quiesce's token.
        token: String,
        /// Its mount point.
        path: PathBuf,
    },
    /// A snapshot exists.
    Snapshot(SnapshotInfo),
    /// The answer to a CSI call.
    Csi(crate::csi::wire::NodeReply),
}

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

/// The data plane's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// [`API_VERSION`].
    pub api_version: u32,
    /// Process id of the serving process.
    pub pid: u32,
    /// When it started (Unix milliseconds).
    pub started_unix_ms: u64,
    /// Whether the fd holder answers on its socket.
    pub holder_reachable: bool,
    /// Volumes this process took over from a predecessor at start.
    pub took_over: Vec<String>,
    /// Every volume.
    pub volumes: Vec<VolumeInfo>,
    /// File systems frozen now.
    pub frozen: Vec<FrozenInfo>,
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

/// A local snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Volume id.
    pub volume: String,
    /// Snapshot name.
    pub name: String,
    /// Where the snapshot file lives.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// False when a snapshot of that name existed already (and is returned).
    pub created: bool,
    /// The local epoch open when it was taken (absent for an existing one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_local_epoch: Option<u64>,
    /// The last group epoch frozen before it (absent for an existing one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_frozen_group: Option<u64>,
}

/// A failed request as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct WireError {
    /// What kind of failure, for callers that branch.
    pub kind: ErrorKind,
    /// What went wrong and what to do about it.
    pub message: String,
}

/// Kinds of failure, named after the gRPC codes the CSI server maps them to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed or out of range.
    InvalidArgument,
    /// No such volume, snapshot or token.
    NotFound,
    /// A volume or snapshot of that name exists with other parameters.
    AlreadyExists,
    /// The request does not fit the current state (attached, mounted, frozen).
    FailedPrecondition,
    /// Not possible yet.
    Unimplemented,
    /// A dependency (the fd holder) is not there.
    Unavailable,
    /// A deadline passed (a quiesce thawed by the watchdog).
    DeadlineExceeded,
    /// Anything else: I/O, the kernel, the store.
    Internal,
    /// A size or range that cannot be met.
    OutOfRange,
    /// The node is full.
    ResourceExhausted,
    /// Another operation on the same object is in progress: retry.
    Aborted,
}

impl ErrorKind {
    /// The gRPC code of this kind.
    pub fn code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::Unimplemented => Code::Unimplemented,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
            ErrorKind::Internal => Code::Internal,
            ErrorKind::OutOfRange => Code::OutOfRange,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::Aborted => Code::Aborted,
        }
    }

    /// The kind of a gRPC code (codes without a kind of their own are
    /// internal).
    pub fn of_code(code: tonic::Code) -> Self {
        use tonic::Code;
        match code {
            Code::InvalidArgument => ErrorKind::InvalidArgument,
            Code::NotFound => ErrorKind::NotFound,
            Code::AlreadyExists => ErrorKind::AlreadyExists,
            Code::FailedPrecondition => ErrorKind::FailedPrecondition,
            Code::Unimplemented => ErrorKind::Unimplemented,
            Code::Unavailable => ErrorKind::Unavailable,
            Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            Code::OutOfRange => ErrorKind::OutOfRange,
            Code::ResourceExhausted => ErrorKind::ResourceExhausted,
            Code::Aborted => ErrorKind::Aborted,
            _ => ErrorKind::Internal,
        }
    }
}

/// What is wrong with a request. Every message names what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// Not JSON, or not one of the requests.
    #[error("request is not valid: {0} (one JSON object per line, with \"op\" one of create, delete, attach, detach, expand, list, status, quiesce, thaw, snapshot, restore)")]
    Parse(#[source] serde_json::Error),
    /// The request line is too long.
    #[error("request is longer than {MAX_REQUEST_BYTES} bytes")]
    TooLong,
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
    /// A quiesce path that is not absolute.
    #[error("quiesce path {0:?} must be an absolute path to a mount point")]
    RelativePath(PathBuf),
    /// A quiesce timeout out of range.
    #[error("timeout_ms {0} is out of range: use 1 to {max}", max = MAX_QUIESCE_TIMEOUT.as_millis())]
    Timeout(u64),
    /// A token that no quiesce can have returned.
    #[error("token {0:?} is not a quiesce token (32 hexadecimal digits)")]
    Token(String),
    /// Restoring a snapshot into the volume it was taken of.
    #[error("restore into {0:?}, the snapshot's own volume: choose a new volume id")]
    RestoreOntoSource(String),
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
    /// Checks a requested shape.
    pub fn parse(size_bytes: u64, block_size: Option<u64>, mode: Option<&str>) -> Result<Self, RequestError> {
        let block_size = block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
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
        let mode = parse_mode(mode.unwrap_or("continuous"))?;
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

/// A request, checked: what the daemon acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Create an empty volume.
    Create {
        /// Volume id.
        volume: Name,
        /// Its shape.
        shape: Shape,
    },
    /// Delete a detached volume.
    Delete(Name),
    /// Attach a volume.
    Attach(Name),
    /// Detach a volume.
    Detach(Name),
    /// Grow a volume.
    Expand {
        /// Volume id.
        volume: Name,
        /// New size.
        size_bytes: u64,
    },
    /// Every volume.
    List,
    /// The data plane's state.
    Status,
    /// Freeze a mounted file system.
    Quiesce {
        /// Mount point (absolute).
        path: PathBuf,
        /// Until the watchdog thaws it.
        timeout: Duration,
    },
    /// Thaw a quiesce.
    Thaw(String),
    /// Snapshot a volume.
    Snapshot {
        /// Volume id.
        volume: Name,
        /// Snapshot name.
        name: Name,
    },
    /// Create a volume from a snapshot.
    Restore {
        /// New volume id.
        volume: Name,
        /// Source volume.
        from_volume: Name,
        /// Snapshot name.
        snapshot: Name,
        /// Size asked for (checked against the snapshot later).
        size_bytes: Option<u64>,
        /// Mode asked for.
        mode: Option<Mode>,
    },
    /// A CSI call (checked by the CSI layer itself).
    Csi(crate::csi::wire::NodeCall),
}

/// Whether `token` has the shape of a quiesce token.
pub fn is_token(token: &str) -> bool {
    token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Command {
    /// Parses one request line.
    pub fn parse_line(line: &str) -> Result<Self, RequestError> {
        let req: Request = serde_json::from_str(line).map_err(RequestError::Parse)?;
        Self::parse(req)
    }

    /// Checks a request.
    pub fn parse(req: Request) -> Result<Self, RequestError> {
        Ok(match req {
            Request::Create {
                volume,
                size_bytes,
                block_size,
                mode,
            } => Command::Create {
                volume: Name::volume(volume)?,
                shape: Shape::parse(size_bytes, block_size, mode.as_deref())?,
            },
            Request::Delete { volume } => Command::Delete(Name::volume(volume)?),
            Request::Attach { volume } => Command::Attach(Name::volume(volume)?),
            Request::Detach { volume } => Command::Detach(Name::volume(volume)?),
            Request::Expand { volume, size_bytes } => {
                if size_bytes == 0 {
                    return Err(RequestError::ZeroSize);
                }
                Command::Expand {
                    volume: Name::volume(volume)?,
                    size_bytes,
                }
            }
            Request::List => Command::List,
            Request::Status => Command::Status,
            Request::Quiesce { path, timeout_ms } => {
                if !path.is_absolute() {
                    return Err(RequestError::RelativePath(path));
                }
                let timeout = match timeout_ms {
                    None => DEFAULT_QUIESCE_TIMEOUT,
                    Some(ms) if ms == 0 || u128::from(ms) > MAX_QUIESCE_TIMEOUT.as_millis() => {
                        return Err(RequestError::Timeout(ms))
                    }
                    Some(ms) => Duration::from_millis(ms),
                };
                Command::Quiesce {
                    path: normalize(&path),
                    timeout,
                }
            }
            Request::Thaw { token } => {
                if !is_token(&token) {
                    return Err(RequestError::Token(token));
                }
                Command::Thaw(token.to_ascii_lowercase())
            }
            Request::Snapshot { volume, name } => Command::Snapshot {
                volume: Name::volume(volume)?,
                name: Name::snapshot(name)?,
            },
            Request::Restore {
                volume,
                from_volume,
                snapshot,
                size_bytes,
                mode,
            } => {
                let volume = Name::volume(volume)?;
                let from_volume = Name::volume(from_volume)?;
                if volume == from_volume {
                    return Err(RequestError::RestoreOntoSource(volume.0));
                }
                if size_bytes == Some(0) {
                    return Err(RequestError::ZeroSize);
                }
                Command::Restore {
                    volume,
                    from_volume,
                    snapshot: Name::snapshot(snapshot)?,
                    size_bytes,
                    mode: mode.as_deref().map(parse_mode).transpose()?,
                }
            }
            Request::Csi { call } => Command::Csi(call),
        })
    }
}

/// `path` without `.` components or trailing slashes (`..` is kept: the
/// mount-point check resolves it).
fn normalize(path: &Path) -> PathBuf {
    path.components().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Command, RequestError> {
        Command::parse_line(line)
    }

    #[test]
    fn a_create_with_defaults_is_a_continuous_4k_volume() {
        let cmd = parse(r#"{"op":"create","volume":"pvc-1","size_bytes":1048576}"#).expect("valid");
        let Command::Create { volume, shape } = cmd else {
            panic!("not a create: {cmd:?}")
        };
        assert_eq!(volume.as_str(), "pvc-1");
        assert_eq!(shape.block_size, 4096);
        assert_eq!(shape.mode, Mode::Continuous);
        let geo = shape.geometry();
        assert_eq!(geo.bytes(), 1 << 20);
        assert_eq!(geo.region_blocks(), 1024);
    }

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

    #[test]
    fn unknown_ops_and_fields_are_refused_with_the_list_of_ops() {
        let e = parse(r#"{"op":"format","volume":"x"}"#).expect_err("unknown op");
        assert!(e.to_string().contains("unknown variant"), "{e}");
        assert!(e.to_string().contains("create, delete"), "{e}");
        let e = parse(r#"{"op":"create","volume":"x","size_bytes":4096,"block_sise":4096}"#).expect_err("typo");
        assert!(e.to_string().contains("block_sise"), "{e}");
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"op":"attach"}"#).is_err(), "missing volume");
    }

    #[test]
    fn quiesce_needs_an_absolute_path_and_a_bounded_timeout() {
        let cmd = parse(r#"{"op":"quiesce","path":"/mnt/x/./y/"}"#).expect("valid");
        assert_eq!(
            cmd,
            Command::Quiesce {
                path: PathBuf::from("/mnt/x/y"),
                timeout: DEFAULT_QUIESCE_TIMEOUT
            }
        );
        assert!(matches!(
            parse(r#"{"op":"quiesce","path":"mnt"}"#),
            Err(RequestError::RelativePath(_))
        ));
        for ms in [0u64, 600_001] {
            let line = format!(r#"{{"op":"quiesce","path":"/m","timeout_ms":{ms}}}"#);
            assert!(matches!(parse(&line), Err(RequestError::Timeout(_))));
        }
        assert!(parse(r#"{"op":"quiesce","path":"/m","timeout_ms":600000}"#).is_ok());
    }

    #[test]
    fn thaw_tokens_are_32_hex_digits() {
        let t = "0123456789abcdef0123456789ABCDEF";
        assert_eq!(
            parse(&format!(r#"{{"op":"thaw","token":"{t}"}}"#)).expect("valid"),
            Command::Thaw(t.to_ascii_lowercase())
        );
        assert!(matches!(
            parse(r#"{"op":"thaw","token":"../x"}"#),
            Err(RequestError::Token(_))
        ));
    }

    #[test]
    fn restore_needs_a_new_volume() {
        let line = r#"{"op":"restore","volume":"a","from_volume":"a","snapshot":"s"}"#;
        assert!(matches!(parse(line), Err(RequestError::RestoreOntoSource(_))));
        let line = r#"{"op":"restore","volume":"b","from_volume":"a","snapshot":"s","mode":"log"}"#;
        assert!(matches!(
            parse(line),
            Ok(Command::Restore {
                mode: Some(Mode::Log),
                ..
            })
        ));
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let reqs = [
            Request::Create {
                volume: "v".into(),
                size_bytes: 4096,
                block_size: Some(8192),
                mode: None,
            },
            Request::List,
            Request::Quiesce {
                path: "/m".into(),
                timeout_ms: Some(5),
            },
        ];
        for r in reqs {
            let line = serde_json::to_string(&r).expect("encode");
            assert_eq!(serde_json::from_str::<Request>(&line).expect("decode"), r);
        }
        assert_eq!(
            serde_json::to_string(&Request::List).expect("encode"),
            r#"{"op":"list"}"#
        );
        let resp = Response::Error(WireError {
            kind: ErrorKind::NotFound,
            message: "m".into(),
        });
        let line = serde_json::to_string(&resp).expect("encode");
        assert_eq!(line, r#"{"error":{"kind":"not_found","message":"m"}}"#);
        assert_eq!(serde_json::from_str::<Response>(&line).expect("decode"), resp);
    }
}
