//! Why an operation of the plane failed.

use std::path::PathBuf;

use floe_engine::EngineError;

use tonic::Code;

use super::types::RequestError;
use crate::dataplane::fsfreeze::FreezeError;
use crate::dataplane::fuse::FuseError;
use crate::dataplane::handover::HandoverError;
use crate::dataplane::loopdev::LoopError;
use crate::dataplane::AttachError;
use crate::store;

/// Why an operation on the node's volumes failed. Messages say what to do when the caller
/// can do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlaneError {
    /// The request itself is wrong.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// No such volume.
    #[error("volume {0:?} does not exist: create it first")]
    NotFound(String),
    /// A volume of that id exists with another shape.
    #[error("volume {volume:?} exists already with {existing}: delete it or choose another id")]
    AlreadyExists {
        /// Volume id.
        volume: String,
        /// Its shape, in words.
        existing: String,
    },
    /// The volume's directory holds a record this process cannot read.
    #[error("volume directory {0} holds a volume record that could not be read at start: inspect it, or remove the directory to reuse the id")]
    Unreadable(PathBuf),
    /// Attach of an attached volume.
    #[error("volume {volume:?} is attached already as {device}: detach it first")]
    AlreadyAttached {
        /// Volume id.
        volume: String,
        /// Its loop device.
        device: PathBuf,
    },
    /// An attached volume whose connection could not be taken over.
    #[error("volume {0:?} is attached but not served (broken, see its status): unmount its file system and detach it")]
    NotServed(String),
    /// Delete of an attached volume.
    #[error("volume {volume:?} is attached as {device}: detach it before deleting it")]
    Attached {
        /// Volume id.
        volume: String,
        /// Its loop device.
        device: PathBuf,
    },
    /// Detach while a file system on the device is mounted.
    #[error("volume {volume:?}: {device} is mounted at {}: unmount it before detaching", targets.iter().map(|t| t.display().to_string()).collect::<Vec<_>>().join(", "))]
    Mounted {
        /// Volume id.
        volume: String,
        /// Its loop device.
        device: PathBuf,
        /// Where it is mounted.
        targets: Vec<PathBuf>,
    },
    /// A loop device left by an attach that did not finish is in use.
    #[error("volume {volume:?}: {device}, left by an attach that did not finish, is mounted at {}: unmount it, then attach again", targets.iter().map(|t| t.display().to_string()).collect::<Vec<_>>().join(", "))]
    StaleMounted {
        /// Volume id.
        volume: String,
        /// The stale loop device.
        device: PathBuf,
        /// Where it is mounted.
        targets: Vec<PathBuf>,
    },
    /// Growing past the store's geometry.
    #[error("volume {volume:?} grows in place only up to {size} bytes, the room its store was made with (the engine's geometry is fixed at create); growing it to {requested} bytes needs a copy into a larger store")]
    CannotGrow {
        /// Volume id.
        volume: String,
        /// The most it grows to in place.
        size: u64,
        /// Size asked for.
        requested: u64,
    },
    /// Restore into a size that is not a whole number of blocks.
    #[error("size_bytes {requested} is not a multiple of the source's block size {block_size}")]
    NotWholeBlocks {
        /// Size asked for.
        requested: u64,
        /// The block size.
        block_size: u64,
    },
    /// The fd holder is not there: attaching without it would make the next
    /// restart of the data plane fatal to the volume.
    #[error("the fd holder at {path} does not answer: start `floe-dataplane holder --run-dir {run_dir}` first")]
    HolderUnavailable {
        /// The holder's socket.
        path: PathBuf,
        /// The run directory.
        run_dir: String,
        /// The failure.
        #[source]
        source: HandoverError,
    },
    /// Quiesce of something that is not a mount point.
    #[error("{0} is not a mount point: quiesce the directory a file system is mounted on")]
    NotMounted(PathBuf),
    /// Quiesce of a mount point whose file system is not on a floe volume.
    #[error("{path} holds {what}, not the file system of a volume this data plane serves: quiesce freezes only floe volumes")]
    NotAFloeVolume {
        /// The mount point.
        path: PathBuf,
        /// What is mounted there.
        what: String,
    },
    /// Quiesce of a file system frozen already.
    #[error("{path} is frozen already under token {token}: thaw it first")]
    AlreadyFrozen {
        /// Mount point.
        path: PathBuf,
        /// The earlier token.
        token: String,
    },
    /// Thaw of a token not known.
    #[error("no file system is frozen under token {0}")]
    UnknownToken(String),
    /// Thaw of a quiesce whose deadline passed.
    #[error("the quiesce {token} of {path} passed its deadline and the watchdog thawed it: the cut is not consistent, abort the epoch")]
    Expired {
        /// The token.
        token: String,
        /// Mount point.
        path: PathBuf,
    },
    /// Thaw while the freeze is still under way.
    #[error("the quiesce {0} is still freezing: thaw it once the quiesce returned")]
    StillFreezing(String),
    /// Freezing took longer than the quiesce's own timeout.
    #[error(
        "freezing {path} took longer than its timeout ({timeout_ms} ms): thawed again, retry with a longer timeout"
    )]
    FreezeTooSlow {
        /// Mount point.
        path: PathBuf,
        /// The timeout.
        timeout_ms: u64,
    },
    /// The volume's store failed.
    #[error("{op} of volume {volume:?}")]
    Store {
        /// What was being done.
        op: &'static str,
        /// Volume id.
        volume: String,
        /// The failure.
        #[source]
        source: store::Error,
    },
    /// The engine refused or its store failed.
    #[error("{op} of volume {volume:?}")]
    Engine {
        /// What was being done.
        op: &'static str,
        /// Volume id.
        volume: String,
        /// The failure.
        #[source]
        source: EngineError,
    },
    /// FUSE plus loop device failed.
    #[error("attach volume {volume:?}")]
    Attach {
        /// Volume id.
        volume: String,
        /// The failure.
        #[source]
        source: AttachError,
    },
    /// The FUSE server failed.
    #[error("{op} of volume {volume:?}")]
    Fuse {
        /// What was being done.
        op: &'static str,
        /// Volume id.
        volume: String,
        /// The failure.
        #[source]
        source: FuseError,
    },
    /// A loop device failed.
    #[error("{op} of volume {volume:?}")]
    Loop {
        /// What was being done.
        op: &'static str,
        /// Volume id.
        volume: String,
        /// The failure.
        #[source]
        source: LoopError,
    },
    /// The holder failed.
    #[error("{op} of volume {volume:?}")]
    Handover {
        /// What was being done.
        op: &'static str,
        /// Volume id.
        volume: String,
        /// The failure.
        #[source]
        source: HandoverError,
    },
    /// A freeze or thaw failed.
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    /// A file operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

impl PlaneError {
    /// The gRPC code a caller answers with.
    pub fn code(&self) -> Code {
        use PlaneError as E;
        match self {
            E::Request(_) | E::NotWholeBlocks { .. } | E::NotMounted(_) => Code::InvalidArgument,
            E::NotFound(_) | E::UnknownToken(_) => Code::NotFound,
            E::AlreadyExists { .. } => Code::AlreadyExists,
            E::Unreadable(_)
            | E::AlreadyAttached { .. }
            | E::Attached { .. }
            | E::Mounted { .. }
            | E::StaleMounted { .. }
            | E::NotServed(_)
            | E::NotAFloeVolume { .. }
            | E::AlreadyFrozen { .. }
            | E::StillFreezing(_) => Code::FailedPrecondition,
            E::CannotGrow { .. } => Code::Unimplemented,
            E::HolderUnavailable { .. } => Code::Unavailable,
            E::Expired { .. } | E::FreezeTooSlow { .. } => Code::DeadlineExceeded,
            E::Store { .. }
            | E::Engine { .. }
            | E::Attach { .. }
            | E::Fuse { .. }
            | E::Loop { .. }
            | E::Handover { .. }
            | E::Freeze(_)
            | E::Io { .. } => Code::Internal,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| PlaneError::Io { op, path, source }
    }
}

pub use crate::model::error_chain as chain;
