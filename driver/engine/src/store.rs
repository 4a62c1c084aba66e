//! The one narrow trait through which a state machine reaches storage.
//!
//! A volume's store holds four areas and a metadata record:
//! - the **image**: the live volume on a primary, the consistent image on a DR replica;
//! - the **side** area: copy-on-write preserved blocks (continuous, interval) or the
//!   redirect-on-write freeze log (log) of the closing epoch, on a primary;
//! - the **staging** area: blocks received per local epoch, on a DR replica;
//! - the **write-intent** record: one bit per region, on a primary;
//! - **snapshots**: named point-in-time copies of the image, each filled
//!   block by block while pending (`snapshot_begin`, `snapshot_put`,
//!   `snapshot_finish`);
//! - the **metadata** record ([`VolumeMeta`]).
//!
//! Every mutation is buffered until [`VolumeStore::sync`], which makes all of
//! them durable at once. A crash loses what was not synced and may keep any
//! part of it (torn writes). The engine calls `sync` exactly where the
//! durability rules of `docs/protocol.md` require it, and nowhere else.

use crate::error::StoreError;
use crate::types::{BlockIndex, GroupEpoch, LocalEpoch, ManifestEntry, RoleGeneration, SendSeq};

/// Storage of one volume, whatever its role.
pub trait VolumeStore {
    /// Read block `b` of the image into `buf` (one block long).
    fn read_image(&self, b: BlockIndex, buf: &mut [u8]) -> Result<(), StoreError>;
    /// Write block `b` of the image.
    fn write_image(&mut self, b: BlockIndex, data: &[u8]) -> Result<(), StoreError>;

    /// Put block `b` into the side area, replacing any earlier copy.
    fn side_put(&mut self, b: BlockIndex, data: &[u8]) -> Result<(), StoreError>;
    /// Read block `b` from the side area; `false` if it holds none.
    fn side_get(&self, b: BlockIndex, buf: &mut [u8]) -> Result<bool, StoreError>;
    /// Blocks held in the side area, ascending.
    fn side_blocks(&self) -> Result<Vec<BlockIndex>, StoreError>;
    /// Empty the side area.
    fn side_clear(&mut self) -> Result<(), StoreError>;

    /// Stage block `b` of local epoch `epoch`, replacing any earlier version.
    fn stage_put(&mut self, epoch: LocalEpoch, b: BlockIndex, data: &[u8]) -> Result<(), StoreError>;
    /// Read a staged block; `false` if it is not staged.
    fn stage_get(&self, epoch: LocalEpoch, b: BlockIndex, buf: &mut [u8]) -> Result<bool, StoreError>;
    /// Drop every staged block of `epoch`.
    fn stage_drop(&mut self, epoch: LocalEpoch) -> Result<(), StoreError>;
    /// Local epochs with anything staged, ascending.
    fn stage_epochs(&self) -> Result<Vec<LocalEpoch>, StoreError>;

    /// Set or clear write-intent bit `region`.
    fn intent_set(&mut self, region: u64, on: bool) -> Result<(), StoreError>;
    /// Regions whose write-intent bit is set, ascending.
    fn intent_regions(&self) -> Result<Vec<u64>, StoreError>;

    /// Replace the metadata record.
    fn put_meta(&mut self, meta: &VolumeMeta) -> Result<(), StoreError>;
    /// The metadata record; `None` for a volume never initialised.
    fn get_meta(&self) -> Result<Option<VolumeMeta>, StoreError>;

    /// Keep a named point-in-time copy of the image, whole, at once (the
    /// strays snapshot of a demotion).
    fn snapshot_image(&mut self, name: &str) -> Result<(), StoreError>;

    /// The first run of blocks at or after `from` that may hold anything but
    /// zeroes, as `start..end` (`end` may lie past the volume); `None` when
    /// every block from `from` on reads as zeroes. A snapshot's copy skips
    /// the holes between runs. The default claims everything may be data.
    fn image_data_from(&self, from: BlockIndex) -> Result<Option<(BlockIndex, BlockIndex)>, StoreError> {
        Ok(Some((from, BlockIndex::MAX)))
    }

    /// Start snapshot `name` of the image's size, every block zero, pending:
    /// not a snapshot until [`VolumeStore::snapshot_finish`] and a sync.
    fn snapshot_begin(&mut self, name: &str) -> Result<(), StoreError>;

    /// Write block `b` of pending snapshot `name` (each block at most once).
    fn snapshot_put(&mut self, name: &str, b: BlockIndex, data: &[u8]) -> Result<(), StoreError>;

    /// Record how far the copy of pending snapshot `name` has gone (every
    /// block below `next` is in it); for progress reports only, never read
    /// back by the engine.
    fn snapshot_progress(&mut self, name: &str, next: BlockIndex) -> Result<(), StoreError> {
        let _ = (name, next);
        Ok(())
    }

    /// Pending snapshot `name` is complete. At the next sync the store makes
    /// every block put into it durable *before* the snapshot gets its name,
    /// so a snapshot that has a name after a crash is whole.
    fn snapshot_finish(&mut self, name: &str) -> Result<(), StoreError>;

    /// Drop pending snapshot `name` and what was put into it.
    fn snapshot_abandon(&mut self, name: &str) -> Result<(), StoreError>;

    /// Snapshots begun and neither finished nor abandoned (after a crash: the
    /// copies it interrupted).
    fn snapshots_pending(&self) -> Result<Vec<String>, StoreError>;

    /// Keep `data` as block `b`'s version before the fold of local epoch
    /// `epoch`: the fold's undo set, which returns the image to the point
    /// before it (a retained point of a replica).
    fn undo_put(&mut self, epoch: LocalEpoch, b: BlockIndex, data: &[u8]) -> Result<(), StoreError>;
    /// Read block `b` of the undo set of `epoch`; false if it holds none.
    fn undo_get(&self, epoch: LocalEpoch, b: BlockIndex, buf: &mut [u8]) -> Result<bool, StoreError>;
    /// The blocks the undo set of `epoch` holds, ascending.
    fn undo_blocks(&self, epoch: LocalEpoch) -> Result<Vec<BlockIndex>, StoreError>;
    /// Forget the undo set of `epoch`.
    fn undo_drop(&mut self, epoch: LocalEpoch) -> Result<(), StoreError>;
    /// Epochs that have an undo set, ascending.
    fn undo_epochs(&self) -> Result<Vec<LocalEpoch>, StoreError>;

    /// Make every earlier mutation durable.
    fn sync(&mut self) -> Result<(), StoreError>;
}

/// The role a volume's metadata records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Owns the live volume and ships its changes.
    Primary,
    /// Holds the consistent image and stages incoming epochs.
    Replica,
}

/// An epoch sealed and staged at a replica, durable before its staged-ack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedRecord {
    /// The primary's local epoch.
    pub local: LocalEpoch,
    /// The group epoch it closes.
    pub group: GroupEpoch,
    /// The seal's manifest: exactly the blocks a fold applies.
    pub manifest: Vec<ManifestEntry>,
}

/// A committed epoch a replica can still return its image to: the image
/// then, before the fold of local epoch `undo`, whose undo set (with those
/// of every later retained point) holds the versions that fold replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetainedPoint {
    /// The point's local epoch.
    pub local: LocalEpoch,
    /// The point's group epoch.
    pub group: GroupEpoch,
    /// The fold that left the point, keying its undo set.
    pub undo: LocalEpoch,
}

/// The durable metadata record of a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeMeta {
    /// Current role.
    pub role: Role,
    /// Role generation this volume serves (primary) or accepts (replica).
    pub generation: RoleGeneration,
    /// Own incarnation; bumped and synced at every start.
    pub incarnation: u64,
    /// Primary: last local epoch sealed (persisted before its seal goes out).
    pub last_sealed: LocalEpoch,
    /// Primary: group epoch of `last_sealed`.
    pub last_sealed_group: GroupEpoch,
    /// Replica: last local epoch folded into the image.
    pub committed: LocalEpoch,
    /// Replica: group epoch of `committed`.
    pub committed_group: GroupEpoch,
    /// Replica: the epoch sealed and staged, awaiting the group decision.
    pub staged: Option<StagedRecord>,
    /// Replica: incarnation of the primary whose frames are accepted.
    pub peer_incarnation: u64,
    /// Replica: blocks of a failback still to be compared (the old primary's
    /// write-intent blocks), until the first fold from the new primary.
    pub resync_candidates: Option<Vec<BlockIndex>>,
    /// Replica: the resume point. Block versions of unsealed epochs of
    /// `peer_incarnation` whose staged bytes were synced before this record
    /// was written, as (local epoch, block, send sequence), ascending; at
    /// most the two newest unsealed epochs.
    pub resume: Vec<HeldVersion>,
    /// Replica: the retained points, oldest first (at most the pairing's K).
    pub retained: Vec<RetainedPoint>,
    /// Replica: the fold whose undo set is complete and durable while its
    /// blocks are being written into the image (a redo must not capture
    /// them again: the image may already hold the new versions).
    pub undo_captured: Option<LocalEpoch>,
}

/// A block version a replica holds durably staged: (local epoch, block,
/// exact send sequence).
pub type HeldVersion = (LocalEpoch, BlockIndex, SendSeq);

impl VolumeMeta {
    /// Metadata of a freshly created volume.
    pub fn new(role: Role, generation: RoleGeneration) -> Self {
        VolumeMeta {
            role,
            generation,
            incarnation: 0,
            last_sealed: 0,
            last_sealed_group: 0,
            committed: 0,
            committed_group: 0,
            staged: None,
            peer_incarnation: 0,
            resync_candidates: None,
            resume: Vec::new(),
            retained: Vec::new(),
            undo_captured: None,
        }
    }
}
