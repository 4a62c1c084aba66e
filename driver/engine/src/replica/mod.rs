//! The DR side of one volume: staging apart from the consistent image,
//! manifest checks, folds decided by the group coordinator, promote.
//!
//! The image only ever changes by a fold of a complete, verified, durably
//! staged epoch that the coordinator committed, so at every instant the image
//! (plus, after a crash, the redo of a decided fold) is a freeze point.
//!
//! # Layout
//! - `mod.rs`: the state, its lifecycle (create, reopen, demotion into a
//!   replica, promote) and what the shell reads;
//! - `stream.rs`: frames from the primary: sessions, blocks into staging,
//!   seals checked against their manifest, the staged-ack, failback hashes;
//! - `fold.rs`: the coordinator's decisions: verified folds (each keeping an
//!   undo set when points are retained), refused folds (fail closed until a
//!   resync), drops.
//!
//! # Retained points
//! With K > 0 ([`Replica::set_retention`]) a fold first keeps the image's
//! versions of the blocks it replaces (its undo set, durable before the image
//! changes), so the replica can return to each of its last K committed
//! epochs: applying the undo sets newest first. A promote may choose such a
//! point ([`Replica::promote_at`]); the blocks it rolls back join the new
//! primary's failback candidates, since neither side's write record covers
//! them. The cost is one read and one write per folded block, and the space
//! of K epochs' blocks.

mod fold;
mod stream;

use std::collections::{BTreeMap, BTreeSet};
use std::mem::size_of;

use crate::coordinator::DecisionRecord;
use crate::error::{EngineError, StoreError};
use crate::frame::{FromCoordinator, MemberIndex, Payload, Reply, ToCoordinator, ToPrimary, ToReplica};
use crate::mem;
use crate::primary::Primary;
use crate::store::{HeldVersion, RetainedPoint, Role, StagedRecord, VolumeMeta, VolumeStore};
use crate::types::{
    hash_block, BlockHash, BlockIndex, Geometry, GroupEpoch, LocalEpoch, ManifestEntry, Mode, RoleGeneration, SendSeq,
};

/// Payload bytes staged since the last checkpoint after which the replica
/// makes its stream durable on its own (the shell's timer covers the rest).
pub const CHECKPOINT_BYTES: u64 = 64 << 20;

/// Counters a replica keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Block versions staged.
    pub blocks_staged: u64,
    /// Versions dropped because a newer one was already staged.
    pub stale_dropped: u64,
    /// Frames refused for an older generation or incarnation.
    pub fenced_frames: u64,
    /// Seals whose staged data did not hash to the manifest.
    pub manifest_mismatches: u64,
    /// Epochs folded into the image.
    pub folds: u64,
    /// Late seals ignored because a newer seal of the session was held.
    pub stale_seals: u64,
    /// Decided epochs not folded because a staged block no longer matched
    /// its manifest entry (rot at rest after the staged-ack).
    pub folds_refused: u64,
    /// Checkpoints that made the received stream durable.
    pub checkpoints: u64,
}

#[derive(Clone, Debug)]
struct PendingSeal {
    local: LocalEpoch,
    group: GroupEpoch,
    manifest: Vec<ManifestEntry>,
}

/// A volume in the replica role.
#[derive(Clone, Debug)]
pub struct Replica<S: VolumeStore> {
    store: S,
    geo: Geometry,
    member: MemberIndex,
    meta: VolumeMeta,
    /// Unsealed staging: local epoch → block → highest sequence staged.
    stream: BTreeMap<LocalEpoch, BTreeMap<BlockIndex, SendSeq>>,
    pending_seal: Option<PendingSeal>,
    /// A failback hash request held back while an epoch is staged.
    hash_request: Option<Vec<BlockIndex>>,
    /// Payload bytes staged since the stream was last made durable.
    unsynced_bytes: u64,
    /// Frames for local epochs at or below this are dropped.
    floor: LocalEpoch,
    /// Current session of the primary (set by its Hello); frames of others are dropped.
    session: u64,
    /// The current session carried bytes that failed the manifest check: its
    /// frames are dropped and the shell must close it (`take_link_reset`),
    /// so the primary re-sends the epoch on a fresh session.
    session_closed: bool,
    /// `session_closed` not yet reported to the shell.
    link_reset: bool,
    to_primary: Vec<ToPrimary>,
    to_coordinator: Vec<ToCoordinator>,
    buf: Vec<u8>,
    stats: ReplicaStats,
    /// Points to retain (K of the pairing; not durable: the shell sets it).
    retain: usize,
}

impl<S: VolumeStore> Replica<S> {
    /// Initialise a new replica (empty image) accepting `generation` and newer.
    pub fn create(
        mut store: S,
        geo: Geometry,
        member: MemberIndex,
        generation: RoleGeneration,
    ) -> Result<Self, EngineError> {
        let mut meta = VolumeMeta::new(Role::Replica, generation);
        meta.incarnation = 1;
        store.put_meta(&meta)?;
        store.sync()?;
        Ok(Self::assemble(store, geo, member, meta))
    }

    /// Reopen after a restart or crash: the unsealed staging named by the
    /// durable resume point is kept, the rest dropped (the primary re-sends
    /// it); a staged epoch is re-reported to the coordinator, which answers
    /// with the fold (redo) or the drop it decided.
    pub fn open(mut store: S, geo: Geometry, member: MemberIndex) -> Result<Self, EngineError> {
        let mut meta = store.get_meta()?.ok_or_else(|| StoreError {
            op: "load volume metadata",
            source: "volume was never initialised".into(),
        })?;
        if meta.role != Role::Replica {
            return Err(EngineError::WrongRole {
                needed: "replica",
                actual: "primary",
            });
        }
        meta.incarnation += 1;
        store.put_meta(&meta)?;
        store.sync()?;
        let keep = meta.staged.as_ref().map(|s| s.local);
        let floor = meta.committed.max(keep.unwrap_or(0));
        // An epoch dropped after the record was written (an abort) may be
        // gone from staging: claim nothing of it.
        let present = store.stage_epochs()?;
        meta.resume
            .retain(|v| v.0 > floor && v.1 < geo.blocks() && present.contains(&v.0));
        for e in present {
            if Some(e) != keep && !meta.resume.iter().any(|v| v.0 == e) {
                store.stage_drop(e)?;
            }
        }
        // Undo sets of points no longer retained (a crash between the record
        // and their removal), or of a capture that never reached the record.
        for e in store.undo_epochs()? {
            let named = meta.retained.iter().any(|p| p.undo == e) || meta.undo_captured == Some(e) || keep == Some(e);
            if !named {
                store.undo_drop(e)?;
            }
        }
        let mut me = Self::assemble(store, geo, member, meta);
        for &(e, b, seq) in &me.meta.resume {
            me.stream.entry(e).or_default().insert(b, seq);
        }
        if let Some(st) = &me.meta.staged {
            me.to_coordinator.push(ToCoordinator::Staged {
                member,
                group: st.group,
            });
        }
        Ok(me)
    }

    fn assemble(store: S, geo: Geometry, member: MemberIndex, meta: VolumeMeta) -> Self {
        Replica {
            store,
            geo,
            member,
            floor: meta.committed,
            unsynced_bytes: 0,
            session: 0,
            session_closed: false,
            link_reset: false,
            meta,
            stream: BTreeMap::new(),
            pending_seal: None,
            hash_request: None,
            to_primary: Vec::new(),
            to_coordinator: Vec::new(),
            buf: vec![0; geo.block_size()],
            stats: ReplicaStats::default(),
            retain: 0,
        }
    }

    /// Turn a fenced or retiring primary into the replica of the new one.
    ///
    /// Its failback candidates are the blocks its write-intent record cannot
    /// rule out (everything it wrote after the last epoch it knows committed).
    /// Unless `discard_strays`, the image as it stands — stray writes included —
    /// is kept as a local snapshot first.
    pub fn from_demotion(
        mut primary: Primary<S>,
        member: MemberIndex,
        discard_strays: bool,
    ) -> Result<Self, EngineError> {
        // A local snapshot still being copied is finished first.
        primary.complete_snapshot()?;
        let candidates = primary.intent_blocks();
        let regions = primary.intent_regions();
        let window_open = primary.closing_window_open();
        let (mut store, mut meta, mode, geo) = primary.into_parts();
        // A log-mode freeze log still holds the newest writes: merge it first.
        if window_open && mode == Mode::Log {
            let mut buf = vec![0; geo.block_size()];
            for b in store.side_blocks()? {
                if store.side_get(b, &mut buf)? {
                    store.write_image(b, &buf)?;
                }
            }
        }
        store.side_clear()?;
        store.sync()?;
        if !discard_strays {
            let name = format!("pre-failback-g{}-i{}", meta.generation.counter, meta.incarnation);
            store.snapshot_image(&name)?;
        }
        for r in regions {
            store.intent_set(r, false)?;
        }
        meta.role = Role::Replica;
        meta.committed = 0;
        meta.committed_group = 0;
        meta.staged = None;
        meta.peer_incarnation = 0;
        meta.resync_candidates = Some(candidates);
        meta.resume.clear();
        meta.retained.clear();
        meta.undo_captured = None;
        store.put_meta(&meta)?;
        store.sync()?;
        Ok(Self::assemble(store, geo, member, meta))
    }

    /// Promote this replica (failover) at its last committed epoch; see
    /// [`Replica::promote_at`].
    pub fn promote(self, decision: &DecisionRecord, site: u64, mode: Mode) -> Result<Primary<S>, EngineError> {
        self.promote_at(decision, site, mode, None)
    }

    /// Promote this replica (failover): finish the staged epoch if the group
    /// decided it, drop it otherwise, return the image to retained point
    /// `point` if one is named (and not the last committed epoch), and
    /// become primary under a generation newer than any the old primary can
    /// hold. Redo-able: a crash before the new record leaves the replica as
    /// it was, and the undo sets applied again give the same image.
    pub fn promote_at(
        mut self,
        decision: &DecisionRecord,
        site: u64,
        mode: Mode,
        point: Option<GroupEpoch>,
    ) -> Result<Primary<S>, EngineError> {
        // The fold below must not trim away the point asked for.
        self.retain = self.retain.max(self.meta.retained.len() + 1);
        if let Some(st) = self.meta.staged.clone() {
            if decision.committed == st.group {
                self.fold_staged(&st)?;
            } else {
                self.drop_staged(&st)?;
            }
        }
        if let Some(pending) = &self.meta.resync_candidates {
            return Err(EngineError::NotConsistent { blocks: pending.len() });
        }
        let rolled_back = match point.filter(|&p| p != self.meta.committed_group) {
            Some(p) => self.roll_back_to(p)?,
            None => Vec::new(),
        };
        for e in self.store.stage_epochs()? {
            self.store.stage_drop(e)?;
        }
        let mut meta = self.meta;
        meta.role = Role::Primary;
        meta.generation = meta.generation.promoted_by(site);
        meta.last_sealed = meta.committed;
        meta.last_sealed_group = meta.committed_group;
        meta.resync_candidates = None;
        meta.resume.clear();
        meta.retained.clear();
        meta.undo_captured = None;
        self.store.put_meta(&meta)?;
        self.store.sync()?;
        for e in self.store.undo_epochs()? {
            self.store.undo_drop(e)?;
        }
        Ok(Primary::from_promotion(self.store, self.geo, mode, meta, &rolled_back))
    }

    /// Return the image to retained point `p`: apply the undo sets of every
    /// fold after it, newest first; the write-intent record then names every
    /// block rolled back (durable before the caller's record), and the
    /// record in memory becomes the point's. The blocks rolled back, ascending.
    fn roll_back_to(&mut self, p: GroupEpoch) -> Result<Vec<BlockIndex>, EngineError> {
        let Some(at) = self.meta.retained.iter().position(|r| r.group == p) else {
            return Err(EngineError::NotRetained {
                wanted: p,
                committed: self.meta.committed_group,
                retained: self.retained_points(),
            });
        };
        let mut rolled = BTreeSet::new();
        for point in self.meta.retained[at..].iter().rev() {
            for b in self.store.undo_blocks(point.undo)? {
                if b >= self.geo.blocks() || !self.store.undo_get(point.undo, b, &mut self.buf)? {
                    continue;
                }
                self.store.write_image(b, &self.buf)?;
                rolled.insert(b);
            }
        }
        self.store.sync()?;
        if cfg!(feature = "bug-rollback-not-candidates") {
            rolled.clear();
        }
        let regions: BTreeSet<u64> = rolled.iter().map(|&b| self.geo.region_of(b)).collect();
        for r in regions {
            self.store.intent_set(r, true)?;
        }
        self.store.sync()?;
        let point = self.meta.retained[at];
        self.meta.committed = point.local;
        self.meta.committed_group = point.group;
        self.meta.retained.truncate(at);
        Ok(rolled.into_iter().collect())
    }

    /// Keep the last `k` committed epochs as retained points (the pairing's
    /// K). Fewer are kept from the next fold on; more start accruing from it.
    pub fn set_retention(&mut self, k: usize) {
        self.retain = k;
    }

    /// The group epochs this replica can still return its image to, oldest
    /// first (its last committed epoch aside).
    pub fn retained_points(&self) -> Vec<GroupEpoch> {
        self.meta.retained.iter().map(|p| p.group).collect()
    }

    /// Make the received stream durable and record it as the resume point.
    /// The shell calls this every 5 s; the replica calls it itself every
    /// [`CHECKPOINT_BYTES`] of staged payload. Staged bytes are synced
    /// before the record that names them, so the record never names a
    /// version whose bytes could be lost.
    pub fn checkpoint(&mut self) -> Result<(), EngineError> {
        let held = self.stream_versions();
        if held == self.meta.resume && self.unsynced_bytes == 0 {
            return Ok(());
        }
        if !cfg!(feature = "bug-resume-before-sync") {
            self.store.sync()?;
        }
        self.meta.resume = held;
        self.store.put_meta(&self.meta)?;
        self.store.sync()?;
        self.unsynced_bytes = 0;
        self.stats.checkpoints += 1;
        Ok(())
    }

    /// A sync just made every staged byte durable: the next record written
    /// names the whole stream as the resume point.
    pub(super) fn note_stream_synced(&mut self) {
        self.meta.resume = self.stream_versions();
        self.unsynced_bytes = 0;
    }

    /// The stream's versions as a resume point: the two newest unsealed
    /// epochs (a primary can seal no other), ascending.
    pub(super) fn stream_versions(&self) -> Vec<HeldVersion> {
        let mut out = Vec::new();
        for (&e, idx) in self.stream.iter().rev().take(2).rev() {
            out.extend(idx.iter().map(|(&b, &seq)| (e, b, seq)));
        }
        out
    }

    /// Forget an unsealed epoch's stream, in memory and in the resume point
    /// the next record carries (claiming less is always safe).
    pub(super) fn forget_stream(&mut self, e: LocalEpoch) -> Result<(), EngineError> {
        self.meta.resume.retain(|v| v.0 != e);
        if self.stream.remove(&e).is_some() {
            self.store.stage_drop(e)?;
        }
        Ok(())
    }

    fn reply(&mut self, reply: Reply) {
        self.to_primary.push(ToPrimary {
            generation: self.meta.generation,
            reply,
        });
    }

    fn accepts(&mut self, generation: RoleGeneration) -> bool {
        if generation < self.meta.generation {
            self.stats.fenced_frames += 1;
            self.reply(Reply::Fenced {
                generation: self.meta.generation,
            });
            return false;
        }
        generation == self.meta.generation
    }

    fn staged_local(&self) -> Option<LocalEpoch> {
        self.meta.staged.as_ref().map(|s| s.local)
    }

    /// The store, for a shell's scrubber and for the simulator's faults at
    /// rest. Whatever writes through it must be something a disk could do.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Drain frames for the primary.
    pub fn take_to_primary(&mut self) -> Vec<ToPrimary> {
        std::mem::take(&mut self.to_primary)
    }

    /// Drain messages for the coordinator.
    pub fn take_to_coordinator(&mut self) -> Vec<ToCoordinator> {
        std::mem::take(&mut self.to_coordinator)
    }

    /// Last group epoch folded.
    pub fn committed_group(&self) -> GroupEpoch {
        self.meta.committed_group
    }

    /// Whether the shell must close the current session now (a seal failed
    /// its manifest check); reading it clears it. The primary re-sends what
    /// is not staged when it reconnects.
    pub fn take_link_reset(&mut self) -> bool {
        std::mem::take(&mut self.link_reset)
    }

    /// Group epoch staged and awaiting the decision, if any.
    pub fn staged_group(&self) -> Option<GroupEpoch> {
        self.meta.staged.as_ref().map(|s| s.group)
    }

    /// Generation accepted.
    pub fn generation(&self) -> RoleGeneration {
        self.meta.generation
    }

    /// Failback candidates still offered, if any.
    pub fn resync_candidates(&self) -> Option<&[BlockIndex]> {
        self.meta.resync_candidates.as_deref()
    }

    /// Counters.
    pub fn stats(&self) -> &ReplicaStats {
        &self.stats
    }

    /// Member index in the group.
    pub fn member(&self) -> MemberIndex {
        self.member
    }

    /// The store, for inspection.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Give up the volume (crash or shutdown), keeping its store.
    pub fn into_store(self) -> S {
        self.store
    }

    /// An upper bound on the bytes this volume's state takes in memory, the
    /// store aside: the unsealed stream's index, the held and the staged
    /// manifests, failback candidates and hash requests, queued replies,
    /// the scratch block. O(epochs + frames), not for a hot path.
    pub fn footprint(&self) -> u64 {
        let stream = mem::map_bytes::<LocalEpoch, BTreeMap<BlockIndex, SendSeq>>(self.stream.len())
            + self
                .stream
                .values()
                .map(|m| mem::map_bytes::<BlockIndex, SendSeq>(m.len()))
                .sum::<u64>();
        let manifests = self
            .pending_seal
            .as_ref()
            .map_or(0, |s| mem::vec_bytes::<ManifestEntry>(s.manifest.capacity()))
            + self
                .meta
                .staged
                .as_ref()
                .map_or(0, |s| mem::vec_bytes::<ManifestEntry>(s.manifest.capacity()));
        let failback = self
            .meta
            .resync_candidates
            .as_ref()
            .map_or(0, |c| mem::vec_bytes::<BlockIndex>(c.capacity()))
            + self
                .hash_request
                .as_ref()
                .map_or(0, |c| mem::vec_bytes::<BlockIndex>(c.capacity()));
        let replies = self.to_primary.iter().map(|f| match &f.reply {
            Reply::Welcome {
                resync_candidates,
                held,
                ..
            } => {
                resync_candidates
                    .as_ref()
                    .map_or(0, |c| mem::vec_bytes::<BlockIndex>(c.capacity()))
                    + mem::vec_bytes::<HeldVersion>(held.capacity())
            }
            Reply::ResyncHashes { entries } => mem::vec_bytes::<(BlockIndex, BlockHash)>(entries.capacity()),
            _ => 0,
        });
        let queues = mem::vec_bytes::<ToPrimary>(self.to_primary.capacity())
            + replies.sum::<u64>()
            + mem::vec_bytes::<ToCoordinator>(self.to_coordinator.capacity());
        let scratch = mem::vec_bytes::<u8>(self.buf.capacity());
        let resume = mem::vec_bytes::<HeldVersion>(self.meta.resume.capacity());
        size_of::<Self>() as u64 + stream + manifests + failback + queues + scratch + resume
    }
}
