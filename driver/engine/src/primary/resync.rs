//! Failback: after a promotion the old site's image is not one of this
//! primary's freeze points until its first fold. The candidates (the blocks
//! either side may have changed) are hashed at the replica, and each one is
//! compared once before it may ship: only those that differ travel.

use std::collections::{BTreeMap, BTreeSet};

use crate::bitmap::Bitmap;
use crate::error::EngineError;
use crate::frame::ToReplica;
use crate::store::VolumeStore;
use crate::types::{BlockHash, BlockIndex};

use super::{Primary, PrimaryEvent};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Resync {
    /// Not in a failback pairing, or it is done.
    Idle,
    /// Asked the replica for hashes; nothing ships until they arrive.
    AwaitingHashes,
    /// Comparing: each candidate is hashed once before it may ship.
    Comparing(BTreeMap<BlockIndex, BlockHash>),
}

/// Where the failback of a promoted primary stands, for its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResyncPhase {
    /// No failback comparison under way (none needed, or not begun: the
    /// replica has not welcomed this primary yet).
    Idle,
    /// The replica's hashes of the candidates were asked for; an epoch
    /// frozen now would not carry the resync and is given up when they come.
    AwaitingHashes,
    /// Comparing: `left` candidates not yet compared.
    Comparing {
        /// Candidates whose hash has not been compared yet.
        left: u64,
    },
}

/// Failback state of a promoted primary.
#[derive(Clone, Debug)]
pub(super) struct Failback {
    /// After a promotion, until failback ends: blocks written since the
    /// promotion (lost at a restart; the write-intent record covers them).
    pub(super) since_promote: Option<Bitmap>,
    pub(super) resync: Resync,
}

impl Failback {
    pub(super) fn new(since_promote: Option<Bitmap>) -> Self {
        Failback {
            since_promote,
            resync: Resync::Idle,
        }
    }

    /// Heap bytes held: the blocks written since promotion, the hashes.
    pub(super) fn heap_bytes(&self) -> u64 {
        let since = self.since_promote.as_ref().map_or(0, Bitmap::heap_bytes);
        let hashes = match &self.resync {
            Resync::Comparing(theirs) => crate::mem::map_bytes::<BlockIndex, BlockHash>(theirs.len()),
            _ => 0,
        };
        since + hashes
    }

    /// A host write of block `b`.
    pub(super) fn note_write(&mut self, b: BlockIndex) {
        if let Some(sp) = &mut self.since_promote {
            sp.set(b, true);
        }
    }

    pub(super) fn awaiting_hashes(&self) -> bool {
        self.resync == Resync::AwaitingHashes
    }

    pub(super) fn comparing(&self) -> bool {
        matches!(self.resync, Resync::Comparing(_))
    }

    pub(super) fn phase(&self) -> ResyncPhase {
        match &self.resync {
            Resync::Idle => ResyncPhase::Idle,
            Resync::AwaitingHashes => ResyncPhase::AwaitingHashes,
            Resync::Comparing(theirs) => ResyncPhase::Comparing {
                left: theirs.len() as u64,
            },
        }
    }

    /// The replica folded one of our freeze points: a failback under way is over.
    pub(super) fn end(&mut self) {
        if self.resync != Resync::Idle {
            self.since_promote = None;
            self.resync = Resync::Idle;
        }
    }
}

impl<S: VolumeStore> Primary<S> {
    /// The replica's image is not one of our freeze points yet: ask for the
    /// hashes of its candidates and ours. Ours are the blocks written since
    /// promotion, or after a restart the write-intent record (no epoch has
    /// committed since promotion, so it covers them).
    pub(super) fn request_hashes(&mut self, theirs: Vec<BlockIndex>) {
        let mut all: BTreeSet<BlockIndex> = theirs.into_iter().filter(|&b| b < self.geo.blocks()).collect();
        match &self.failback.since_promote {
            Some(_) if cfg!(feature = "bug-candidates-miss-since-promotion") => {}
            Some(sp) => all.extend(sp.iter_ones()),
            None => all.extend(self.intent_blocks()),
        }
        self.failback.resync = Resync::AwaitingHashes;
        self.session.outbox.push_back(ToReplica::ResyncHashRequest {
            generation: self.meta.generation,
            blocks: all.into_iter().collect(),
        });
    }

    /// The replica's hashes of the candidates.
    pub(super) fn on_hashes(&mut self, entries: Vec<(BlockIndex, BlockHash)>) -> Result<(), EngineError> {
        if !self.failback.awaiting_hashes() {
            return Ok(());
        }
        // With an epoch carrying the failback already frozen, the hashes
        // serve its re-send; otherwise every candidate joins the open epoch,
        // to be compared as it ships.
        let covered = self.closing.as_ref().is_some_and(|c| c.covers_resync);
        let mut theirs = BTreeMap::new();
        for (b, h) in entries {
            if b < self.geo.blocks() {
                if !covered {
                    self.open.dirty.set(b, true);
                }
                theirs.insert(b, h);
            }
        }
        self.failback.resync = Resync::Comparing(theirs);
        // An epoch frozen before the comparison lacks the candidates: the
        // replica will not stage it, so give it up.
        if let Some(g) = self.closing.as_ref().filter(|c| !c.covers_resync).map(|c| c.group) {
            self.abort(g)?;
        }
        Ok(())
    }

    /// Whether the replica already holds block `b` with this hash (compared
    /// once per candidate; an equal block is not shipped).
    pub(super) fn replica_holds(&mut self, b: BlockIndex, hash: &BlockHash) -> bool {
        let Resync::Comparing(theirs) = &mut self.failback.resync else {
            return false;
        };
        let Some(h) = theirs.remove(&b) else {
            return false;
        };
        let same = h == *hash;
        self.events.push(PrimaryEvent::ResyncCompared {
            block: b,
            shipped: !same,
        });
        if same {
            self.stats.resync_skipped += 1;
        }
        same
    }
}
