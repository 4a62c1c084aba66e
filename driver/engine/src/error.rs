//! Errors of the engine, one enum per concern.

pub use crate::types::ConfigError;
use crate::types::{GroupEpoch, RoleGeneration};

/// The store underneath a state machine failed.
#[derive(Debug, thiserror::Error)]
#[error("{op}")]
pub struct StoreError {
    /// What the engine was doing, as a verb phrase.
    pub op: &'static str,
    /// The underlying failure.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Why the engine refused a command or an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A freeze while the previous epoch is not yet committed or aborted.
    #[error("epoch {pending} is still being replicated; the freeze merges into the next one")]
    FreezeBusy {
        /// Group epoch still in flight.
        pending: GroupEpoch,
    },
    /// A freeze whose group epoch does not increase.
    #[error("group epoch {requested} is not after the last one, {last}")]
    StaleEpoch {
        /// Epoch asked for.
        requested: GroupEpoch,
        /// Last epoch this volume closed.
        last: GroupEpoch,
    },
    /// A command or frame from an older role generation.
    #[error("generation {theirs:?} is older than ours, {ours:?}: refused (fencing)")]
    Fenced {
        /// Generation carried by the refused input.
        theirs: RoleGeneration,
        /// Our generation.
        ours: RoleGeneration,
    },
    /// A host I/O outside the volume.
    #[error("I/O at byte {offset} of length {len} runs past the end of the volume ({size} bytes)")]
    OutOfRange {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// Volume size.
        size: u64,
    },
    /// The operation needs another role.
    #[error("volume is {actual}, the operation needs {needed}")]
    WrongRole {
        /// Role needed.
        needed: &'static str,
        /// Role held.
        actual: &'static str,
    },
    /// Promote of a replica whose image is not one freeze point of its group:
    /// blocks of a committed epoch failed their check at the fold (or a
    /// failback is still under way). Fail closed: a resync must fold first.
    #[error(
        "the replica's image is not a consistent point of its group: {blocks} blocks await a resync from the primary; promote refused"
    )]
    NotConsistent {
        /// Blocks still to be compared and re-sent.
        blocks: usize,
    },
    /// Promote to a group epoch the replica does not retain.
    #[error(
        "group epoch {wanted} is not a retained point of this replica (committed {committed}, retained {retained:?}); promote refused"
    )]
    NotRetained {
        /// The point asked for.
        wanted: GroupEpoch,
        /// The replica's committed group epoch.
        committed: GroupEpoch,
        /// The older points it can return to.
        retained: Vec<GroupEpoch>,
    },
    /// A snapshot while another one is still being copied.
    #[error("snapshot {pending:?} is still being copied; one snapshot at a time")]
    SnapshotBusy {
        /// The snapshot being copied.
        pending: String,
    },
    /// A snapshot was given up before its copy finished; it does not exist.
    #[error("snapshot {name:?} failed before its copy finished")]
    SnapshotFailed {
        /// The snapshot's name.
        name: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
