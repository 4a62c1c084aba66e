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

use floe_engine::Mode;
use serde::{Deserialize, Serialize};

pub use crate::node::plane::types::*;

/// Version of this API, reported by `status`. Bumped on incompatible change.
pub const API_VERSION: u32 = 1;

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
    /// Every volume. (An empty struct, not a unit variant: serde ignores
    /// extra fields after the tag of a unit variant, and this API refuses
    /// unknown fields.)
    List {},
    /// The data plane itself: pid, holder, volumes, frozen file systems.
    Status {},
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
        call: crate::node::wire::NodeCall,
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
    Csi(crate::node::wire::NodeReply),
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

impl From<&crate::node::error::Error> for WireError {
    fn from(e: &crate::node::error::Error) -> Self {
        WireError {
            kind: ErrorKind::of_code(e.code()),
            message: crate::node::error::chain(e),
        }
    }
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
    /// A CSI call, its ids checked.
    Csi(crate::node::wire::NodeCall),
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
            Request::List {} => Command::List,
            Request::Status {} => Command::Status,
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
                    return Err(RequestError::RestoreOntoSource(volume.as_str().to_owned()));
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
            Request::Csi { call } => {
                call.check_ids()?;
                Command::Csi(call)
            }
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
    fn unknown_ops_and_fields_are_refused_with_the_list_of_ops() {
        let e = parse(r#"{"op":"format","volume":"x"}"#).expect_err("unknown op");
        assert!(e.to_string().contains("unknown variant"), "{e}");
        assert!(e.to_string().contains("create, delete"), "{e}");
        let e = parse(r#"{"op":"create","volume":"x","size_bytes":4096,"block_sise":4096}"#).expect_err("typo");
        assert!(e.to_string().contains("block_sise"), "{e}");
        assert!(parse("not json").is_err());
        for line in [r#"{"op":"list","volume":"x"}"#, r#"{"op":"status","verbose":true}"#] {
            let e = parse(line).expect_err("an unknown field on a request without fields");
            assert!(e.to_string().contains("unknown field"), "{line}: {e}");
        }
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
            Request::List {},
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
            serde_json::to_string(&Request::List {}).expect("encode"),
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

    #[test]
    fn wire_errors_carry_the_chain_and_the_kind() {
        use crate::node::error::Error as NodeError;
        use crate::node::plane::error::PlaneError;
        let e = NodeError::from(PlaneError::Io {
            op: "read",
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(2),
        });
        let w = WireError::from(&e);
        assert_eq!(w.kind, ErrorKind::Internal);
        assert!(w.message.contains("read /x: No such file"), "{}", w.message);
        let e = PlaneError::from(RequestError::BlockSize(3000));
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(WireError::from(&NodeError::from(e)).message.contains("3000"));
    }
}
