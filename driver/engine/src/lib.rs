//! floe-engine: the pure core of floe's asynchronous, freeze-consistent
//! replication. No filesystem, network, clock, thread or randomness: inputs
//! are method calls (host I/O, freezes, frames, decisions, crashes as
//! re-opens), outputs are frames, events and calls on [`store::VolumeStore`].
//!
//! # Layout
//! - [`types`]: epochs, send sequences, role generations, geometry, hashes.
//! - [`bitmap`]: the block bitmaps, sparse and two-level: memory follows the
//!   bits set, not the volume; made, moved and swapped in O(1), so a freeze
//!   flips in O(1).
//! - `mem`: upper bounds on the heap bytes of the engine's structures, for
//!   [`Primary::footprint`] and [`Replica::footprint`]
//!   (`docs/engine-memory.md` states the bound).
//! - [`store`]: the one narrow trait to storage and the durable metadata record.
//! - [`frame`]: messages between primary, replica and coordinator.
//! - [`primary`]: a volume in the primary role (three modes), one concern per
//!   file: `mod.rs` the state and the public API, `host.rs` host I/O,
//!   copy-on-write and write intent, `snapshot.rs` local snapshots (an O(1)
//!   mark, the copy after in bounded steps), `epoch.rs` freeze, abort and the freeze
//!   window, `ship.rs` what `poll_send` sends, `session.rs` the link and
//!   resume, `resync.rs` the failback comparison.
//! - [`replica`]: a volume in the DR role: staging, manifest check, fold, promote.
//! - [`coordinator`]: the DR site's group commit.
//!
//! # Invariants (proved by `tests/model.rs` against an independent model)
//! - **I1** the DR side alone can always produce, for every member, the image
//!   of one and the same committed freeze point, at least the last one any
//!   primary reported consistent;
//! - **I2** a flushed write survives a crash of the primary;
//! - **I3** steady state ships no more block versions than were written
//!   (interval: at most one per block per epoch);
//! - **I4** reconnects and restarts resume from what the DR holds durably:
//!   after a reconnect or a DR restart the primary re-sends at most the
//!   block versions the DR's resume point does not name (the model allows
//!   one batch more); a restarted primary re-sends only its write-intent
//!   regions;
//! - **I5** promote yields the newest group-committed image; failback ships
//!   only candidate blocks whose hashes differ, as a staged epoch.
//!
//! `docs/protocol.md` has the state machines, the frame sequences, the
//! durability points and where floe departs from the patent's flowcharts.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod bitmap;
pub mod coordinator;
pub mod error;
pub mod frame;
mod mem;
pub mod primary;
pub mod replica;
pub mod store;
pub mod types;

pub use coordinator::{Coordinator, DecisionLog, DecisionRecord, Membership, MembershipError};
pub use error::{ConfigError, EngineError, StoreError};
pub use frame::{FromCoordinator, MemberIndex, Payload, Reply, ShippedBlock, ToCoordinator, ToPrimary, ToReplica};
pub use primary::{
    AbortOutcome, ClosingState, Primary, PrimaryEvent, PrimaryStats, ResyncPhase, SnapshotMark, SnapshotStep,
};
pub use replica::{Replica, ReplicaStats};
pub use store::{HeldVersion, RetainedPoint, Role, StagedRecord, VolumeMeta, VolumeStore};
pub use types::{BlockIndex, Geometry, GroupEpoch, LocalEpoch, ManifestEntry, Mode, RoleGeneration, SendSeq};
