//! Epochs: the open epoch receiving writes, the closing epoch from `freeze`
//! to the group's decision, and its freeze window, open until the replica
//! holds the epoch durably (or the epoch ends): while it is open the closing
//! epoch's version of every member block stays readable.

use std::collections::{BTreeMap, BTreeSet};

use crate::bitmap::Bitmap;
use crate::error::EngineError;
use crate::frame::ToReplica;
use crate::store::VolumeStore;
use crate::types::{BlockHash, BlockIndex, GroupEpoch, LocalEpoch, Mode};

use super::{AbortOutcome, ClosingState, Primary, PrimaryEvent};

/// A version of a block shipped in an epoch, as the manifest will list it.
/// The block is the key of the map holding it, and the generation and
/// incarnation of its send sequence are the primary's own, fixed for its
/// lifetime: only the counter and the hash are kept (48 bytes an entry with
/// the key, instead of 72).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Shipped {
    /// Counter of the version's send sequence.
    pub(super) counter: u64,
    /// Hash of the version's content.
    pub(super) hash: BlockHash,
}

/// The epoch receiving host writes.
#[derive(Clone, Debug)]
pub(super) struct OpenEpoch {
    /// Its local epoch number.
    pub(super) local: LocalEpoch,
    /// Blocks written in it and not shipped since.
    pub(super) dirty: Bitmap,
    /// Versions of it already shipped, with their manifest entries.
    pub(super) shipped: BTreeMap<BlockIndex, Shipped>,
    /// The keys of `shipped` as bits, kept beside it so that the flip can
    /// move them into the closing epoch instead of copying them.
    pub(super) shipped_blocks: Bitmap,
    /// Where the streaming sweep goes on.
    pub(super) cursor: BlockIndex,
}

impl OpenEpoch {
    pub(super) fn new(local: LocalEpoch, blocks: u64) -> Self {
        OpenEpoch {
            local,
            dirty: Bitmap::new(blocks),
            shipped: BTreeMap::new(),
            shipped_blocks: Bitmap::new(blocks),
            cursor: 0,
        }
    }
}

/// The frozen epoch, from `freeze` until the group commits or aborts it.
#[derive(Clone, Debug)]
pub(super) struct Closing {
    pub(super) local: LocalEpoch,
    pub(super) group: GroupEpoch,
    pub(super) state: ClosingState,
    /// Blocks still to ship (taken from `dirty` at the flip).
    pub(super) pending: Bitmap,
    /// Blocks of the epoch no longer pending: shipped before the flip (taken
    /// from `open.shipped_blocks`) or since. The epoch's members are
    /// `pending ∪ sent`, a set that never changes while the epoch lives.
    pub(super) sent: Bitmap,
    /// Copy-on-write modes: the old version was copied aside; log mode: new
    /// writes of the block go to the freeze log.
    pub(super) preserved: Bitmap,
    /// The manifest being built: last version shipped per member.
    pub(super) shipped: BTreeMap<BlockIndex, Shipped>,
    /// Frozen after the failback comparison began: carries the candidates.
    pub(super) covers_resync: bool,
}

impl Closing {
    pub(super) fn window_open(&self) -> bool {
        self.state != ClosingState::Staged
    }

    /// Whether block `b` belongs to the epoch.
    pub(super) fn is_member(&self, b: BlockIndex) -> bool {
        self.pending.get(b) || self.sent.get(b)
    }

    /// Every block of the epoch, ascending within `pending` then within
    /// `sent` (a block may come twice).
    pub(super) fn members(&self) -> impl Iterator<Item = BlockIndex> + '_ {
        self.pending.iter_ones().chain(self.sent.iter_ones())
    }
}

/// Group epochs as this primary knows them.
#[derive(Clone, Debug)]
pub(super) struct Progress {
    /// The last group epoch frozen: a freeze must name a later one.
    pub(super) last_frozen_group: GroupEpoch,
    /// The last local epoch the DR reported folded.
    pub(super) committed: LocalEpoch,
    /// The last group epoch reported consistent.
    pub(super) consistent_group: GroupEpoch,
    /// Group epochs given up here that the replica has not answered yet.
    pub(super) abort_requests: BTreeSet<GroupEpoch>,
}

impl Progress {
    pub(super) fn new(last_frozen_group: GroupEpoch) -> Self {
        Progress {
            last_frozen_group,
            committed: 0,
            consistent_group: 0,
            abort_requests: BTreeSet::new(),
        }
    }
}

impl<S: VolumeStore> Primary<S> {
    /// Close the open epoch as group epoch `group` (the filesystem is frozen by
    /// the caller). An in-memory flip, O(1) whatever the volume or the epoch
    /// holds: the open epoch's bitmaps and manifest move into the closing
    /// epoch and empty ones take their place; nothing is copied, nothing is
    /// allocated, no I/O.
    pub fn freeze(&mut self, group: GroupEpoch) -> Result<LocalEpoch, EngineError> {
        if let Some(g) = self.session.fenced_by {
            return Err(EngineError::Fenced {
                theirs: self.meta.generation,
                ours: g,
            });
        }
        if let Some(c) = &self.closing {
            return Err(EngineError::FreezeBusy { pending: c.group });
        }
        if group <= self.progress.last_frozen_group {
            return Err(EngineError::StaleEpoch {
                requested: group,
                last: self.progress.last_frozen_group,
            });
        }
        let n = self.geo.blocks();
        let mut pending = Bitmap::new(n);
        self.open.dirty.take_into(&mut pending);
        let mut sent = Bitmap::new(n);
        self.open.shipped_blocks.take_into(&mut sent);
        let local = self.open.local;
        self.closing = Some(Closing {
            local,
            group,
            state: ClosingState::Shipping,
            pending,
            sent,
            preserved: Bitmap::new(n),
            shipped: std::mem::take(&mut self.open.shipped),
            covers_resync: self.failback.comparing(),
        });
        self.open.local += 1;
        self.progress.last_frozen_group = group;
        Ok(local)
    }

    /// Give up group epoch `group` (the freeze sequence failed somewhere).
    pub fn abort(&mut self, group: GroupEpoch) -> Result<AbortOutcome, EngineError> {
        if group <= self.progress.consistent_group {
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
        self.progress.abort_requests.insert(group);
        if self.session.is_up() {
            self.session.outbox.push_back(ToReplica::EpochAborted {
                generation: self.meta.generation,
                incarnation: self.meta.incarnation,
                local,
                group,
            });
        }
        Ok(outcome)
    }

    /// Fold the closing epoch back into the open one: its blocks ship again,
    /// except those whose current version the open epoch has shipped
    /// already (not dirty since): that version, staged at the DR in the
    /// open epoch, covers the dropped one, and sending it again would only
    /// re-send what the DR may hold durably (I4).
    pub(super) fn abort_closing(&mut self) -> Result<(), EngineError> {
        let Some(c) = self.closing.take() else { return Ok(()) };
        if c.window_open() {
            self.close_window(&c)?;
        }
        for b in c.members() {
            self.intent.note_epoch(self.geo.region_of(b), self.open.local);
            if self.open.shipped_blocks.get(b) && !self.open.dirty.get(b) {
                continue;
            }
            self.open.dirty.set(b, true);
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

    /// After a restart: merge the freeze log into the image (log mode) or
    /// drop the preserved copies (no closing epoch survives a restart).
    pub(super) fn recover_side(&mut self) -> Result<(), EngineError> {
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

    /// The replica holds `local` durably: the window closes.
    pub(super) fn on_staged(&mut self, local: LocalEpoch) -> Result<(), EngineError> {
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

    /// The DR folded `local` (group epoch `group`).
    pub(super) fn on_consistent(&mut self, local: LocalEpoch, group: GroupEpoch) -> Result<(), EngineError> {
        self.progress.committed = self.progress.committed.max(local);
        self.progress.abort_requests.remove(&group);
        if let Some(c) = self.closing.take() {
            if c.local <= local {
                if c.window_open() {
                    self.close_window(&c)?;
                }
            } else {
                self.closing = Some(c);
            }
        }
        if group > self.progress.consistent_group {
            self.progress.consistent_group = group;
            self.events.push(PrimaryEvent::Consistent(group));
        }
        // The replica now holds one of our freeze points: any failback is over.
        self.failback.end();
        self.clear_intent_through(self.progress.committed);
        Ok(())
    }
}
