//! The primary side of one volume: host I/O, epochs, shipping, resume.
//!
//! Bitmaps (see `docs/protocol.md` for the diagrams), all sparse
//! ([`crate::bitmap`]): their memory follows the blocks set, not the volume:
//! - `open.dirty`: blocks written in the open epoch and not shipped since;
//! - `open.shipped_blocks`: the blocks of `open.shipped`, the open epoch's
//!   versions already shipped;
//! - `Closing::pending`: blocks of the closing epoch still to ship;
//! - `Closing::sent`: blocks of the closing epoch no longer pending; the
//!   epoch's members, fixed from the flip on, are `pending ∪ sent`;
//! - `Closing::preserved`: continuous/interval — blocks whose closing-epoch
//!   version was copied aside before an overwrite (copy-on-write); log — blocks
//!   whose new writes are redirected into the freeze log (redirect-on-write);
//! - `intent.regions`: the durable write-intent record, one bit per region.
//!
//! The closing epoch's window stays open until the replica acknowledges it
//! durably staged: until then a lost shipment can always be re-read.
//!
//! The freeze flip moves `dirty`, `shipped_blocks` and `shipped` into the
//! closing epoch and leaves empty ones behind: O(1), no allocation.
//! [`Primary::footprint`] bounds the memory the volume's state takes.
//!
//! One concern per file, each adding methods to [`Primary`]:
//! - this file: the state, the public types, construction, introspection;
//! - `host.rs`: host reads and writes, copy-on-write and redirect-on-write,
//!   the write-intent record;
//! - `snapshot.rs`: local snapshots, marked in O(1) and copied after in
//!   bounded steps, copy-before-overwrite meanwhile;
//! - `epoch.rs`: the open and the closing epoch: freeze, abort, the freeze
//!   window, the replica's staged-ack and the group's decision;
//! - `ship.rs`: `poll_send`, the closing epoch's blocks and seal, then the
//!   open epoch's blocks;
//! - `session.rs`: the link to the replica: connect, disconnect, the replies,
//!   resume after a `Welcome`;
//! - `resync.rs`: failback: the candidates, the replica's hashes, the
//!   comparison that keeps equal blocks from shipping.

mod epoch;
mod host;
mod resync;
mod session;
mod ship;
mod snapshot;

use std::mem::size_of;

use crate::bitmap::Bitmap;
use crate::error::{EngineError, StoreError};
use crate::mem;
use crate::store::{Role, VolumeMeta, VolumeStore};
use crate::types::{BlockIndex, Geometry, GroupEpoch, LocalEpoch, Mode, RoleGeneration};

use epoch::{Closing, OpenEpoch, Progress, Shipped};
use host::Intent;
use resync::Failback;
use session::Session;
use snapshot::SnapshotCopy;

pub use resync::ResyncPhase;
pub use snapshot::SnapshotStep;

/// Where the closing epoch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosingState {
    /// Blocks still to ship, then the seal.
    Shipping,
    /// Seal sent; waiting for the staged-ack.
    Sealed,
    /// Replica holds it durably; waiting for the group decision.
    Staged,
}

/// Something the controller (or the model test) must hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrimaryEvent {
    /// The DR site folded this group epoch for this volume.
    Consistent(GroupEpoch),
    /// The group epoch was aborted; its blocks travel in a later epoch.
    Aborted(GroupEpoch),
    /// A newer generation serves this volume elsewhere: stop being primary.
    Fenced(RoleGeneration),
    /// Failback compared a candidate block with the replica's copy.
    ResyncCompared {
        /// Block compared.
        block: BlockIndex,
        /// Whether it differed and therefore shipped.
        shipped: bool,
    },
}

/// Counters a primary keeps; exported as metrics by the driver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrimaryStats {
    /// Host block writes (after splitting into tracking blocks).
    pub blocks_written: u64,
    /// Block versions shipped, data or zero.
    pub blocks_shipped: u64,
    /// Payload bytes shipped (zero blocks count nothing).
    pub bytes_shipped: u64,
    /// Old blocks copied aside before an overwrite.
    pub cow_copies: u64,
    /// Writes redirected into the freeze log.
    pub redirected_writes: u64,
    /// Failback candidates found equal at the replica and not shipped.
    pub resync_skipped: u64,
    /// Closing epochs aborted because an old version could not be kept.
    pub preserve_failures: u64,
    /// Blocks put into a snapshot being copied before a host write replaced them.
    pub snapshot_copies: u64,
    /// Snapshots given up: a version could not be kept, or a crash cut the copy short.
    pub snapshot_failures: u64,
    /// Block versions shipped again because a Welcome did not name them as
    /// held durably (the resume bound: what the DR had not made durable,
    /// or never received).
    pub blocks_resent: u64,
}

/// Where a local snapshot falls in the epoch sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMark {
    /// The local epoch that was open when the snapshot was taken.
    pub open_local: LocalEpoch,
    /// The last group epoch frozen before it.
    pub last_frozen_group: GroupEpoch,
}

/// Outcome of [`Primary::abort`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortOutcome {
    /// Aborted here; the replica is told.
    Aborted,
    /// Already sealed: the DR site decides; an event follows.
    Requested,
    /// Already known consistent; nothing to abort.
    AlreadyConsistent,
}

/// A volume in the primary role.
#[derive(Clone, Debug)]
pub struct Primary<S: VolumeStore> {
    store: S,
    geo: Geometry,
    mode: Mode,
    meta: VolumeMeta,
    /// The epoch receiving host writes.
    open: OpenEpoch,
    /// The frozen epoch on its way to the DR site, until the group decides.
    closing: Option<Closing>,
    /// Group epochs frozen, decided, and given up without an answer yet.
    progress: Progress,
    /// The write-intent record.
    intent: Intent,
    /// Failback after a promotion.
    failback: Failback,
    /// The link to the replica.
    session: Session,
    /// Counter of the send sequences; restarts at every start.
    counter: u64,
    events: Vec<PrimaryEvent>,
    /// The local snapshot being copied, if any.
    snap: Option<SnapshotCopy>,
    /// Snapshots given up, until the shell takes the list.
    failed_snapshots: Vec<String>,
    last_preserve_error: Option<String>,
    stats: PrimaryStats,
    /// Scratch block for old versions and shipping.
    buf: Vec<u8>,
    /// Scratch block for host reads and writes.
    aux: Vec<u8>,
}

impl<S: VolumeStore> Primary<S> {
    /// Initialise a new, empty primary volume on `store`.
    pub fn create(mut store: S, geo: Geometry, mode: Mode, generation: RoleGeneration) -> Result<Self, EngineError> {
        let mut meta = VolumeMeta::new(Role::Primary, generation);
        meta.incarnation = 1;
        store.put_meta(&meta)?;
        store.sync()?;
        Ok(Self::assemble(store, geo, mode, meta, None))
    }

    /// Reopen a primary after a restart or crash: bump the incarnation, recover
    /// the freeze log (log mode) or drop preserved copies, mark every block
    /// of every write-intent region dirty, and give up every snapshot whose
    /// copy the crash cut short ([`Primary::take_failed_snapshots`]).
    pub fn open(mut store: S, geo: Geometry, mode: Mode) -> Result<Self, EngineError> {
        let mut meta = store
            .get_meta()?
            .ok_or_else(|| store_err("load volume metadata", "volume was never initialised"))?;
        if meta.role != Role::Primary {
            return Err(EngineError::WrongRole {
                needed: "primary",
                actual: "replica",
            });
        }
        meta.incarnation += 1;
        store.put_meta(&meta)?;
        store.sync()?;
        let mut me = Self::assemble(store, geo, mode, meta, None);
        me.recover_side()?;
        me.recover_intent()?;
        me.recover_snapshots()?;
        // Undo sets left by a promotion cut short after its record.
        for e in me.store.undo_epochs()? {
            me.store.undo_drop(e)?;
        }
        Ok(me)
    }

    /// A primary made from a promoted replica's store (see `Replica::promote`).
    /// Blocks `rolled_back` to a retained point count as written since the
    /// promotion (their write-intent bits are already durable): a failback
    /// compares them.
    pub(crate) fn from_promotion(
        store: S,
        geo: Geometry,
        mode: Mode,
        meta: VolumeMeta,
        rolled_back: &[BlockIndex],
    ) -> Self {
        let mut since = Bitmap::new(geo.blocks());
        for &b in rolled_back {
            since.set(b, true);
        }
        let mut me = Self::assemble(store, geo, mode, meta, Some(since));
        for &b in rolled_back {
            let r = geo.region_of(b);
            me.intent.regions.set(r, true);
            me.intent.note_epoch(r, me.open.local);
        }
        me
    }

    fn assemble(store: S, geo: Geometry, mode: Mode, meta: VolumeMeta, since_promote: Option<Bitmap>) -> Self {
        Primary {
            store,
            geo,
            mode,
            open: OpenEpoch::new(meta.last_sealed + 1, geo.blocks()),
            closing: None,
            progress: Progress::new(meta.last_sealed_group),
            meta,
            intent: Intent::new(geo.regions()),
            failback: Failback::new(since_promote),
            session: Session::new(),
            counter: 0,
            events: Vec::new(),
            snap: None,
            failed_snapshots: Vec::new(),
            last_preserve_error: None,
            stats: PrimaryStats::default(),
            buf: vec![0; geo.block_size()],
            aux: vec![0; geo.block_size()],
        }
    }

    // ----- introspection ----------------------------------------------------

    /// Drain events for the controller.
    pub fn take_events(&mut self) -> Vec<PrimaryEvent> {
        std::mem::take(&mut self.events)
    }

    /// Counters.
    pub fn stats(&self) -> &PrimaryStats {
        &self.stats
    }

    /// Why the last closing epoch was given up for lack of room to keep an
    /// old version, if that happened (for status and events).
    pub fn last_preserve_error(&self) -> Option<&str> {
        self.last_preserve_error.as_deref()
    }

    /// The volume's geometry.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Replication mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Role generation served.
    pub fn generation(&self) -> RoleGeneration {
        self.meta.generation
    }

    /// Generation that fenced this primary, if any.
    pub fn fenced_by(&self) -> Option<RoleGeneration> {
        self.session.fenced_by
    }

    /// Group epoch being closed and its state, if any.
    pub fn closing(&self) -> Option<(GroupEpoch, ClosingState)> {
        self.closing.as_ref().map(|c| (c.group, c.state))
    }

    /// Where a failback comparison stands.
    pub fn resync_phase(&self) -> ResyncPhase {
        self.failback.phase()
    }

    /// Blocks not yet shipped in the open epoch.
    pub fn dirty_blocks(&self) -> u64 {
        self.open.dirty.count()
    }

    /// Whether a session is established.
    pub fn is_connected(&self) -> bool {
        self.session.is_up()
    }

    /// Regions whose write-intent bit is set, as this primary believes.
    pub fn intent_regions(&self) -> Vec<u64> {
        self.intent.regions.iter_ones().collect()
    }

    /// Blocks the write-intent record cannot rule out as changed since the
    /// last committed epoch: the failback candidates of a demoted primary.
    pub fn intent_blocks(&self) -> Vec<BlockIndex> {
        self.intent
            .regions
            .iter_ones()
            .flat_map(|r| self.geo.region_range(r))
            .collect()
    }

    /// The store, for inspection.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Give up the volume (crash or shutdown), keeping its store.
    pub fn into_store(self) -> S {
        self.store
    }

    pub(crate) fn into_parts(self) -> (S, VolumeMeta, Mode, Geometry) {
        (self.store, self.meta, self.mode, self.geo)
    }

    /// An upper bound on the bytes this volume's state takes in memory, the
    /// store aside: bitmaps, manifests being built, the write-intent record,
    /// failback state, queued frames and events, scratch blocks. O(chunks +
    /// entries), not for a hot path. `docs/engine-memory.md` gives the bound
    /// per dirty block and checks it against resident memory.
    pub fn footprint(&self) -> u64 {
        let open = self.open.dirty.heap_bytes()
            + self.open.shipped_blocks.heap_bytes()
            + mem::map_bytes::<BlockIndex, Shipped>(self.open.shipped.len());
        let closing = self.closing.as_ref().map_or(0, |c| {
            c.pending.heap_bytes()
                + c.sent.heap_bytes()
                + c.preserved.heap_bytes()
                + mem::map_bytes::<BlockIndex, Shipped>(c.shipped.len())
        });
        let intent = self.intent.heap_bytes();
        let failback = self.failback.heap_bytes();
        let queues = self.session.heap_bytes()
            + mem::vec_bytes::<PrimaryEvent>(self.events.capacity())
            + mem::map_bytes::<GroupEpoch, ()>(self.progress.abort_requests.len())
            + self
                .last_preserve_error
                .as_ref()
                .map_or(0, |e| mem::alloc_bytes(e.capacity()));
        let scratch = mem::vec_bytes::<u8>(self.buf.capacity()) + mem::vec_bytes::<u8>(self.aux.capacity());
        size_of::<Self>() as u64 + open + closing + intent + failback + queues + scratch + self.snapshot_heap_bytes()
    }

    pub(crate) fn closing_window_open(&self) -> bool {
        self.closing.as_ref().is_some_and(|c| c.window_open())
    }
}

fn store_err(op: &'static str, msg: &'static str) -> StoreError {
    StoreError { op, source: msg.into() }
}
