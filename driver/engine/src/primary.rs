//! The primary side of one volume: host I/O, epochs, shipping, resume.
//!
//! Bitmaps (see `docs/protocol.md` for the diagrams):
//! - `dirty`: blocks written in the open epoch and not shipped since;
//! - `Closing::pending`: blocks of the closing epoch still to ship;
//! - `Closing::members`: every block of the closing epoch (shipped or not);
//! - `Closing::preserved`: continuous/interval — blocks whose closing-epoch
//!   version was copied aside before an overwrite (copy-on-write); log — blocks
//!   whose new writes are redirected into the freeze log (redirect-on-write);
//! - `intent`: the durable write-intent record, one bit per region.
//!
//! The closing epoch's window stays open until the replica acknowledges it
//! durably staged: until then a lost shipment can always be re-read.

use std::collections::{BTreeMap, BTreeSet};

use crate::bitmap::Bitmap;
use crate::error::{EngineError, StoreError};
use crate::frame::{Payload, Reply, ShippedBlock, ToPrimary, ToReplica};
use crate::store::{Role, VolumeMeta, VolumeStore};
use crate::types::{
    hash_block, BlockHash, BlockIndex, Geometry, GroupEpoch, LocalEpoch, ManifestEntry, Mode, RoleGeneration, SendSeq,
};

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

#[derive(Clone, Debug)]
struct Closing {
    local: LocalEpoch,
    group: GroupEpoch,
    state: ClosingState,
    pending: Bitmap,
    members: Bitmap,
    preserved: Bitmap,
    shipped: BTreeMap<BlockIndex, ManifestEntry>,
    covers_resync: bool,
}

impl Closing {
    fn window_open(&self) -> bool {
        self.state != ClosingState::Staged
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Down,
    AwaitingWelcome,
    Up,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Resync {
    /// Not in a failback pairing, or it is done.
    Idle,
    /// Asked the replica for hashes; nothing ships until they arrive.
    AwaitingHashes,
    /// Comparing: each candidate is hashed once before it may ship.
    Comparing(BTreeMap<BlockIndex, BlockHash>),
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
    counter: u64,
    open: LocalEpoch,
    last_frozen_group: GroupEpoch,
    committed: LocalEpoch,
    consistent_group: GroupEpoch,
    dirty: Bitmap,
    send_cursor: BlockIndex,
    open_shipped: BTreeMap<BlockIndex, ManifestEntry>,
    closing: Option<Closing>,
    abort_requests: BTreeSet<GroupEpoch>,
    intent: Bitmap,
    region_epoch: Vec<LocalEpoch>,
    since_promote: Option<Bitmap>,
    resync: Resync,
    link: Link,
    session: u64,
    fenced_by: Option<RoleGeneration>,
    outbox: Vec<ToReplica>,
    events: Vec<PrimaryEvent>,
    last_preserve_error: Option<String>,
    buf: Vec<u8>,
    aux: Vec<u8>,
    stats: PrimaryStats,
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
    /// the freeze log (log mode) or drop preserved copies, and mark every block
    /// of every write-intent region dirty.
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
        for r in me.store.intent_regions()? {
            if r < me.geo.regions() {
                me.intent.set(r, true);
                me.region_epoch[r as usize] = me.open;
                me.dirty.set_range(me.geo.region_range(r), true);
            }
        }
        Ok(me)
    }

    /// A primary made from a promoted replica's store (see `Replica::promote`).
    pub(crate) fn from_promotion(store: S, geo: Geometry, mode: Mode, meta: VolumeMeta) -> Self {
        Self::assemble(store, geo, mode, meta, Some(Bitmap::new(geo.blocks())))
    }

    fn assemble(store: S, geo: Geometry, mode: Mode, meta: VolumeMeta, since_promote: Option<Bitmap>) -> Self {
        let n = geo.blocks();
        Primary {
            store,
            geo,
            mode,
            counter: 0,
            open: meta.last_sealed + 1,
            last_frozen_group: meta.last_sealed_group,
            committed: 0,
            consistent_group: 0,
            meta,
            dirty: Bitmap::new(n),
            send_cursor: 0,
            open_shipped: BTreeMap::new(),
            closing: None,
            abort_requests: BTreeSet::new(),
            intent: Bitmap::new(geo.regions()),
            region_epoch: vec![0; geo.regions() as usize],
            since_promote,
            resync: Resync::Idle,
            link: Link::Down,
            session: 0,
            fenced_by: None,
            outbox: Vec::new(),
            events: Vec::new(),
            last_preserve_error: None,
            buf: vec![0; geo.block_size()],
            aux: vec![0; geo.block_size()],
            stats: PrimaryStats::default(),
        }
    }

    // ----- host I/O -------------------------------------------------------

    /// Host write of `data` at byte `offset` (any alignment).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), EngineError> {
        self.write_range(offset, data.len() as u64, Some(data))
    }

    /// Host discard or zero-range of `len` bytes at `offset`: the blocks read
    /// back as zeroes and replicate as zero records.
    pub fn zero(&mut self, offset: u64, len: u64) -> Result<(), EngineError> {
        self.write_range(offset, len, None)
    }

    /// Host read of `buf.len()` bytes at `offset`.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), EngineError> {
        self.check_range(offset, buf.len() as u64)?;
        let bs = self.geo.block_size() as u64;
        let mut block = std::mem::take(&mut self.aux);
        let mut pos = 0u64;
        let len = buf.len() as u64;
        while pos < len {
            let abs = offset + pos;
            let (b, within) = (abs / bs, (abs % bs) as usize);
            let n = (bs - within as u64).min(len - pos) as usize;
            self.read_current(b, &mut block)?;
            buf[pos as usize..pos as usize + n].copy_from_slice(&block[within..within + n]);
            pos += n as u64;
        }
        self.aux = block;
        Ok(())
    }

    /// Host flush: everything written before is durable when this returns.
    pub fn flush(&mut self) -> Result<(), EngineError> {
        self.store.sync()?;
        Ok(())
    }

    /// Take a local point-in-time snapshot of the volume as the host sees it
    /// now (the caller has quiesced the filesystem). Durable on return; the
    /// mark says which epochs it falls between, so it can later be matched
    /// with the DR's committed epoch.
    pub fn snapshot(&mut self, name: &str) -> Result<SnapshotMark, EngineError> {
        self.store.sync()?;
        self.store.snapshot_image(name)?;
        if self.mode == Mode::Log {
            if let Some(c) = self.closing.as_ref().filter(|c| c.window_open()) {
                for b in c.preserved.iter_ones() {
                    if self.store.side_get(b, &mut self.buf)? {
                        self.store.snapshot_patch(name, b, &self.buf)?;
                    }
                }
            }
        }
        self.store.sync()?;
        Ok(SnapshotMark {
            open_local: self.open,
            last_frozen_group: self.last_frozen_group,
        })
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), EngineError> {
        let size = self.geo.bytes();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(EngineError::OutOfRange { offset, len, size });
        }
        Ok(())
    }

    fn write_range(&mut self, offset: u64, len: u64, data: Option<&[u8]>) -> Result<(), EngineError> {
        self.check_range(offset, len)?;
        let bs = self.geo.block_size() as u64;
        let mut block = std::mem::take(&mut self.aux);
        let mut pos = 0u64;
        let result = (|| {
            while pos < len {
                let abs = offset + pos;
                let (b, within) = (abs / bs, (abs % bs) as usize);
                let n = (bs - within as u64).min(len - pos) as usize;
                if n as u64 == bs {
                    match data {
                        Some(d) => block.copy_from_slice(&d[pos as usize..pos as usize + n]),
                        None => block.fill(0),
                    }
                } else {
                    self.read_current(b, &mut block)?;
                    match data {
                        Some(d) => block[within..within + n].copy_from_slice(&d[pos as usize..pos as usize + n]),
                        None => block[within..within + n].fill(0),
                    }
                }
                self.write_block(b, &block)?;
                pos += n as u64;
            }
            Ok(())
        })();
        self.aux = block;
        result
    }

    /// The block as the host sees it now.
    fn read_current(&mut self, b: BlockIndex, out: &mut [u8]) -> Result<(), StoreError> {
        if self.mode == Mode::Log {
            if let Some(c) = &self.closing {
                if c.preserved.get(b) && self.store.side_get(b, out)? {
                    return Ok(());
                }
            }
        }
        self.store.read_image(b, out)
    }

    fn write_block(&mut self, b: BlockIndex, data: &[u8]) -> Result<(), EngineError> {
        self.note_intent(b)?;
        self.stats.blocks_written += 1;
        self.dirty.set(b, true);
        if let Some(sp) = &mut self.since_promote {
            sp.set(b, true);
        }
        // The closing epoch's version of a member block must survive until
        // the replica holds the epoch durably.
        let keep_old = !cfg!(feature = "bug-no-cow");
        if let Some(c) = self
            .closing
            .as_mut()
            .filter(|c| keep_old && c.window_open() && c.members.get(b))
        {
            let group = c.group;
            let kept = if self.mode == Mode::Log {
                // Redirect-on-write: the new version goes to the freeze log.
                let put = self.store.side_put(b, data);
                if put.is_ok() {
                    c.preserved.set(b, true);
                    self.stats.redirected_writes += 1;
                    return Ok(());
                }
                put
            } else if !c.preserved.get(b) {
                // Copy-on-write: the old version moves aside first. No fsync:
                // after a crash the closing epoch is either staged at the DR
                // already or aborted and re-sent from the write-intent record.
                let copied = self
                    .store
                    .read_image(b, &mut self.buf)
                    .and_then(|()| self.store.side_put(b, &self.buf));
                if copied.is_ok() {
                    c.preserved.set(b, true);
                    self.stats.cow_copies += 1;
                }
                copied
            } else {
                Ok(())
            };
            if let Err(e) = kept {
                // No room to keep the epoch's version: the epoch is given up,
                // never the host write.
                self.stats.preserve_failures += 1;
                self.last_preserve_error = Some(e.to_string());
                self.abort(group)?;
            }
        }
        self.store.write_image(b, data)?;
        Ok(())
    }

    /// Write-intent: durable before the first write into a clean region.
    fn note_intent(&mut self, b: BlockIndex) -> Result<(), StoreError> {
        let r = self.geo.region_of(b);
        self.region_epoch[r as usize] = self.open;
        if !self.intent.get(r) {
            self.store.intent_set(r, true)?;
            self.store.sync()?;
            self.intent.set(r, true);
        }
        Ok(())
    }

    // ----- freeze and abort -----------------------------------------------

    /// Close the open epoch as group epoch `group` (the filesystem is frozen by
    /// the caller). An in-memory flip: no I/O.
    pub fn freeze(&mut self, group: GroupEpoch) -> Result<LocalEpoch, EngineError> {
        if let Some(g) = self.fenced_by {
            return Err(EngineError::Fenced {
                theirs: self.meta.generation,
                ours: g,
            });
        }
        if let Some(c) = &self.closing {
            return Err(EngineError::FreezeBusy { pending: c.group });
        }
        if group <= self.last_frozen_group {
            return Err(EngineError::StaleEpoch {
                requested: group,
                last: self.last_frozen_group,
            });
        }
        let n = self.geo.blocks();
        let mut pending = Bitmap::new(n);
        self.dirty.take_into(&mut pending);
        let mut members = pending.clone();
        for &b in self.open_shipped.keys() {
            members.set(b, true);
        }
        let local = self.open;
        self.closing = Some(Closing {
            local,
            group,
            state: ClosingState::Shipping,
            pending,
            members,
            preserved: Bitmap::new(n),
            shipped: std::mem::take(&mut self.open_shipped),
            covers_resync: matches!(self.resync, Resync::Comparing(_)),
        });
        self.open += 1;
        self.last_frozen_group = group;
        Ok(local)
    }

    /// Give up group epoch `group` (the freeze sequence failed somewhere).
    pub fn abort(&mut self, group: GroupEpoch) -> Result<AbortOutcome, EngineError> {
        if group <= self.consistent_group {
            return Ok(AbortOutcome::AlreadyConsistent);
        }
        let local = match &self.closing {
            Some(c) if c.group == group => Some(c.local),
            _ => None,
        };
        let outcome = match &self.closing {
            Some(c) if c.group == group && c.state == ClosingState::Shipping => {
                self.abort_closing()?;
                AbortOutcome::Aborted
            }
            Some(c) if c.group == group => AbortOutcome::Requested,
            _ => AbortOutcome::Aborted,
        };
        self.abort_requests.insert(group);
        if self.link == Link::Up {
            self.outbox.push(ToReplica::EpochAborted {
                generation: self.meta.generation,
                incarnation: self.meta.incarnation,
                local,
                group,
            });
        }
        Ok(outcome)
    }

    /// Fold the closing epoch back into the open one: its blocks ship again.
    fn abort_closing(&mut self) -> Result<(), EngineError> {
        let Some(c) = self.closing.take() else { return Ok(()) };
        if c.window_open() {
            self.close_window(&c)?;
        }
        for b in c.members.iter_ones() {
            self.dirty.set(b, true);
            self.region_epoch[self.geo.region_of(b) as usize] = self.open;
        }
        self.events.push(PrimaryEvent::Aborted(c.group));
        Ok(())
    }

    /// The closing epoch no longer needs its old versions: drop the preserved
    /// copies, or merge the freeze log back into the image.
    fn close_window(&mut self, c: &Closing) -> Result<(), EngineError> {
        match self.mode {
            Mode::Log => {
                for b in c.preserved.iter_ones() {
                    if self.store.side_get(b, &mut self.buf)? {
                        self.store.write_image(b, &self.buf)?;
                    }
                }
                self.store.sync()?;
                self.store.side_clear()?;
                self.store.sync()?;
            }
            Mode::Continuous | Mode::Interval => self.store.side_clear()?,
        }
        Ok(())
    }

    fn recover_side(&mut self) -> Result<(), EngineError> {
        let blocks = self.store.side_blocks()?;
        if blocks.is_empty() {
            return Ok(());
        }
        if self.mode == Mode::Log {
            for b in blocks {
                if b < self.geo.blocks() && self.store.side_get(b, &mut self.buf)? {
                    self.store.write_image(b, &self.buf)?;
                }
            }
            self.store.sync()?;
        }
        self.store.side_clear()?;
        self.store.sync()?;
        Ok(())
    }

    // ----- the link -------------------------------------------------------

    /// A session to the replica opens: the first frame to send.
    pub fn connect(&mut self) -> ToReplica {
        self.link = Link::AwaitingWelcome;
        self.session += 1;
        self.outbox.clear();
        ToReplica::Hello {
            generation: self.meta.generation,
            incarnation: self.meta.incarnation,
            session: self.session,
        }
    }

    /// The session broke.
    pub fn disconnect(&mut self) {
        self.link = Link::Down;
        self.outbox.clear();
    }

    /// Next frame to send, if any: control frames, then the closing epoch's
    /// blocks and its seal, then (modes that stream) the open epoch's blocks.
    pub fn poll_send(&mut self, max_blocks: usize) -> Result<Option<ToReplica>, EngineError> {
        if self.link != Link::Up || self.fenced_by.is_some() {
            return Ok(None);
        }
        if !self.outbox.is_empty() {
            return Ok(Some(self.outbox.remove(0)));
        }
        if self.resync == Resync::AwaitingHashes {
            return Ok(None);
        }
        if let Some(mut c) = self.closing.take() {
            let frame = self.ship_closing(&mut c, max_blocks);
            self.closing = Some(c);
            if let Some(f) = frame? {
                return Ok(Some(f));
            }
        }
        if self.mode.streams_open_epoch() {
            return self.ship_open(max_blocks);
        }
        Ok(None)
    }

    fn ship_closing(&mut self, c: &mut Closing, max: usize) -> Result<Option<ToReplica>, EngineError> {
        if c.state != ClosingState::Shipping {
            return Ok(None);
        }
        let mut blocks = Vec::new();
        while blocks.len() < max {
            let Some(b) = c.pending.next_one(0) else { break };
            c.pending.set(b, false);
            // The closing epoch's version: preserved aside (copy-on-write
            // modes) or still in the image (log mode redirects new writes).
            let mut data = std::mem::take(&mut self.buf);
            let aside = self.mode != Mode::Log && c.preserved.get(b) && self.store.side_get(b, &mut data)?;
            if !aside {
                self.store.read_image(b, &mut data)?;
            }
            let shipped = self.ship_block(b, &data, c.covers_resync && !c.shipped.contains_key(&b));
            self.buf = data;
            if let Some((sb, entry)) = shipped {
                c.shipped.insert(b, entry);
                blocks.push(sb);
            }
        }
        if !blocks.is_empty() {
            return Ok(Some(ToReplica::Blocks {
                generation: self.meta.generation,
                session: self.session,
                local: c.local,
                blocks,
            }));
        }
        // Everything sent: the seal point is durable before the seal leaves,
        // so a restarted primary never reuses this local epoch.
        self.meta.last_sealed = c.local;
        self.meta.last_sealed_group = c.group;
        self.store.put_meta(&self.meta)?;
        self.store.sync()?;
        c.state = ClosingState::Sealed;
        Ok(Some(ToReplica::Sealed {
            generation: self.meta.generation,
            incarnation: self.meta.incarnation,
            session: self.session,
            local: c.local,
            group: c.group,
            manifest: c.shipped.values().copied().collect(),
            covers_resync: c.covers_resync,
        }))
    }

    fn ship_open(&mut self, max: usize) -> Result<Option<ToReplica>, EngineError> {
        // Once an epoch carrying the failback is frozen, the replica's image
        // may change under the hashes: only that epoch's blocks compare.
        let may_compare = self.closing.as_ref().is_none_or(|c| !c.covers_resync);
        let mut blocks = Vec::new();
        while blocks.len() < max {
            // A rotating cursor: every dirty block waits at most one sweep,
            // and hot blocks coalesce while the sweep is elsewhere.
            let found = self.dirty.next_one(self.send_cursor).or_else(|| self.dirty.next_one(0));
            let Some(b) = found else { break };
            self.send_cursor = b + 1;
            self.dirty.set(b, false);
            let mut data = std::mem::take(&mut self.buf);
            self.read_current(b, &mut data)?;
            // A block already shipped in this epoch must ship again: the
            // replica will fold the staged version, not its image's.
            let compare = may_compare && !self.open_shipped.contains_key(&b);
            let shipped = self.ship_block(b, &data, compare);
            self.buf = data;
            if let Some((sb, entry)) = shipped {
                self.open_shipped.insert(b, entry);
                blocks.push(sb);
            }
        }
        if blocks.is_empty() {
            return Ok(None);
        }
        Ok(Some(ToReplica::Blocks {
            generation: self.meta.generation,
            session: self.session,
            local: self.open,
            blocks,
        }))
    }

    /// Turn one block version into a shipment, unless failback found the
    /// replica already holds the same bytes.
    fn ship_block(&mut self, b: BlockIndex, data: &[u8], compare: bool) -> Option<(ShippedBlock, ManifestEntry)> {
        let hash = hash_block(data);
        if let (true, Resync::Comparing(theirs)) = (compare, &mut self.resync) {
            if let Some(h) = theirs.remove(&b) {
                let same = h == hash;
                self.events.push(PrimaryEvent::ResyncCompared {
                    block: b,
                    shipped: !same,
                });
                if same {
                    self.stats.resync_skipped += 1;
                    return None;
                }
            }
        }
        self.counter += 1;
        let seq = SendSeq {
            generation: self.meta.generation.counter,
            incarnation: self.meta.incarnation,
            counter: self.counter,
        };
        let payload = if data.iter().all(|&x| x == 0) {
            Payload::Zero
        } else {
            self.stats.bytes_shipped += data.len() as u64;
            Payload::Data(data.to_vec())
        };
        self.stats.blocks_shipped += 1;
        Some((
            ShippedBlock { index: b, seq, payload },
            ManifestEntry { index: b, seq, hash },
        ))
    }

    /// A frame from the replica.
    pub fn on_frame(&mut self, frame: ToPrimary) -> Result<(), EngineError> {
        if frame.generation != self.meta.generation && !matches!(frame.reply, Reply::Fenced { .. }) {
            return Ok(());
        }
        match frame.reply {
            Reply::Fenced { generation } => {
                if generation > self.meta.generation {
                    self.fenced_by = Some(generation);
                    self.link = Link::Down;
                    self.events.push(PrimaryEvent::Fenced(generation));
                }
            }
            // Replies other than the Welcome state durable facts about epochs:
            // they hold whichever session carried them.
            _ if self.fenced_by.is_some() => {}
            Reply::Welcome {
                for_incarnation,
                for_session,
                committed,
                committed_group,
                staged,
                resync_candidates,
                ..
            } => {
                if for_incarnation == self.meta.incarnation && for_session == self.session {
                    self.on_welcome((committed, committed_group), staged, resync_candidates)?
                }
            }
            Reply::StagedAck { local } => self.on_staged(local)?,
            Reply::Consistent { local, group } => self.on_consistent(local, group)?,
            Reply::Aborted { group } => {
                let requested = self.abort_requests.remove(&group);
                if self.closing.as_ref().is_some_and(|c| c.group == group) {
                    self.abort_closing()?;
                } else if requested {
                    self.events.push(PrimaryEvent::Aborted(group));
                }
            }
            Reply::ResyncHashes { entries } => {
                if self.resync == Resync::AwaitingHashes {
                    // With an epoch carrying the failback already frozen, the
                    // hashes serve its re-send; otherwise every candidate
                    // joins the open epoch, to be compared as it ships.
                    let covered = self.closing.as_ref().is_some_and(|c| c.covers_resync);
                    let mut theirs = BTreeMap::new();
                    for (b, h) in entries {
                        if b < self.geo.blocks() {
                            if !covered {
                                self.dirty.set(b, true);
                            }
                            theirs.insert(b, h);
                        }
                    }
                    self.resync = Resync::Comparing(theirs);
                    // An epoch frozen before the comparison lacks the
                    // candidates: the replica will not stage it, so give it up.
                    if let Some(g) = self.closing.as_ref().filter(|c| !c.covers_resync).map(|c| c.group) {
                        self.abort(g)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn on_welcome(
        &mut self,
        (committed, committed_group): (LocalEpoch, GroupEpoch),
        staged: Option<(LocalEpoch, GroupEpoch)>,
        candidates: Option<Vec<BlockIndex>>,
    ) -> Result<(), EngineError> {
        if self.link != Link::AwaitingWelcome {
            return Ok(());
        }
        self.link = Link::Up;
        // Resume from what the replica holds durably: the open epoch's
        // shipments were not, so they go again.
        for &b in self.open_shipped.keys() {
            self.dirty.set(b, true);
        }
        self.open_shipped.clear();
        if committed > self.committed {
            self.on_consistent(committed, committed_group)?;
        }
        match self.closing.as_ref().map(|c| (c.local, c.group)) {
            Some((local, _)) if staged.is_some_and(|(l, _)| l == local) => self.on_staged(local)?,
            Some(_) => {
                let c = self.closing.as_mut().expect("matched Some above");
                if c.state == ClosingState::Staged {
                    // Staged once, neither staged nor committed now: the group dropped it.
                    self.abort_closing()?;
                } else {
                    c.pending.union_with(&c.members);
                    c.shipped.clear();
                    c.state = ClosingState::Shipping;
                }
            }
            None => {}
        }
        for &group in &self.abort_requests {
            let local = self.closing.as_ref().filter(|c| c.group == group).map(|c| c.local);
            self.outbox.push(ToReplica::EpochAborted {
                generation: self.meta.generation,
                incarnation: self.meta.incarnation,
                local,
                group,
            });
        }
        // A Welcome that predates a fold we already heard of is stale: that
        // fold ended the failback.
        let candidates = candidates.filter(|_| committed >= self.committed);
        if let Some(theirs) = candidates {
            // The replica's image is not one of our freeze points yet:
            // compare its candidates and ours. Ours are the blocks written
            // since promotion, or after a restart the write-intent record
            // (no epoch has committed since promotion, so it covers them).
            let mut all: BTreeSet<BlockIndex> = theirs.into_iter().filter(|&b| b < self.geo.blocks()).collect();
            match &self.since_promote {
                Some(_) if cfg!(feature = "bug-candidates-miss-since-promotion") => {}
                Some(sp) => all.extend(sp.iter_ones()),
                None => all.extend(self.intent_blocks()),
            }
            self.resync = Resync::AwaitingHashes;
            self.outbox.push(ToReplica::ResyncHashRequest {
                generation: self.meta.generation,
                blocks: all.into_iter().collect(),
            });
        }
        Ok(())
    }

    fn on_staged(&mut self, local: LocalEpoch) -> Result<(), EngineError> {
        let Some(mut c) = self.closing.take() else {
            return Ok(());
        };
        if c.local == local && c.state != ClosingState::Staged && c.state != ClosingState::Shipping {
            self.close_window(&c)?;
            c.preserved.clear();
            c.state = ClosingState::Staged;
            if cfg!(feature = "bug-clear-intent-on-staged") {
                self.clear_intent_through(local);
            }
        }
        self.closing = Some(c);
        Ok(())
    }

    fn on_consistent(&mut self, local: LocalEpoch, group: GroupEpoch) -> Result<(), EngineError> {
        self.committed = self.committed.max(local);
        self.abort_requests.remove(&group);
        if let Some(c) = self.closing.take() {
            if c.local <= local {
                if c.window_open() {
                    self.close_window(&c)?;
                }
            } else {
                self.closing = Some(c);
            }
        }
        if group > self.consistent_group {
            self.consistent_group = group;
            self.events.push(PrimaryEvent::Consistent(group));
        }
        if self.resync != Resync::Idle {
            // The replica now holds one of our freeze points: the failback is over.
            self.since_promote = None;
            self.resync = Resync::Idle;
        }
        self.clear_intent_through(self.committed);
        Ok(())
    }

    /// Lazily clear write-intent bits of regions whose every write is in an
    /// epoch the DR has committed (no sync: a lost clear only costs a re-send).
    fn clear_intent_through(&mut self, local: LocalEpoch) {
        let done: Vec<u64> = self
            .intent
            .iter_ones()
            .filter(|&r| self.region_epoch[r as usize] <= local)
            .collect();
        for r in done {
            // A failed clear leaves the bit set, which is always safe.
            if self.store.intent_set(r, false).is_ok() {
                self.intent.set(r, false);
            }
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
        self.fenced_by
    }

    /// Group epoch being closed and its state, if any.
    pub fn closing(&self) -> Option<(GroupEpoch, ClosingState)> {
        self.closing.as_ref().map(|c| (c.group, c.state))
    }

    /// Blocks not yet shipped in the open epoch.
    pub fn dirty_blocks(&self) -> u64 {
        self.dirty.count()
    }

    /// Whether a session is established.
    pub fn is_connected(&self) -> bool {
        self.link == Link::Up
    }

    /// Regions whose write-intent bit is set, as this primary believes.
    pub fn intent_regions(&self) -> Vec<u64> {
        self.intent.iter_ones().collect()
    }

    /// Blocks the write-intent record cannot rule out as changed since the
    /// last committed epoch: the failback candidates of a demoted primary.
    pub fn intent_blocks(&self) -> Vec<BlockIndex> {
        self.intent.iter_ones().flat_map(|r| self.geo.region_range(r)).collect()
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

    pub(crate) fn closing_window_open(&self) -> bool {
        self.closing.as_ref().is_some_and(|c| c.window_open())
    }
}

fn store_err(op: &'static str, msg: &'static str) -> StoreError {
    StoreError { op, source: msg.into() }
}
