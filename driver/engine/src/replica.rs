//! The DR side of one volume: staging apart from the consistent image,
//! manifest checks, folds decided by the group coordinator, promote.
//!
//! The image only ever changes by a fold of a complete, verified, durably
//! staged epoch that the coordinator committed, so at every instant the image
//! (plus, after a crash, the redo of a decided fold) is a freeze point.

use std::collections::BTreeMap;

use crate::coordinator::DecisionRecord;
use crate::error::{EngineError, StoreError};
use crate::frame::{FromCoordinator, MemberIndex, Payload, Reply, ToCoordinator, ToPrimary, ToReplica};
use crate::primary::Primary;
use crate::store::{Role, StagedRecord, VolumeMeta, VolumeStore};
use crate::types::{
    hash_block, BlockIndex, Geometry, GroupEpoch, LocalEpoch, ManifestEntry, Mode, RoleGeneration, SendSeq,
};

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

    /// Reopen after a restart or crash: unsealed staging is dropped (the
    /// primary re-sends it), a staged epoch is re-reported to the coordinator,
    /// which answers with the fold (redo) or the drop it decided.
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
        for e in store.stage_epochs()? {
            if Some(e) != keep {
                store.stage_drop(e)?;
            }
        }
        let mut me = Self::assemble(store, geo, member, meta);
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
        }
    }

    /// Turn a fenced or retiring primary into the replica of the new one.
    ///
    /// Its failback candidates are the blocks its write-intent record cannot
    /// rule out (everything it wrote after the last epoch it knows committed).
    /// Unless `discard_strays`, the image as it stands — stray writes included —
    /// is kept as a local snapshot first.
    pub fn from_demotion(primary: Primary<S>, member: MemberIndex, discard_strays: bool) -> Result<Self, EngineError> {
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
        store.put_meta(&meta)?;
        store.sync()?;
        Ok(Self::assemble(store, geo, member, meta))
    }

    /// Promote this replica (failover): finish the staged epoch if the group
    /// decided it, drop it otherwise, and become primary under a generation
    /// newer than any the old primary can hold.
    pub fn promote(mut self, decision: &DecisionRecord, site: u64, mode: Mode) -> Result<Primary<S>, EngineError> {
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
        for e in self.store.stage_epochs()? {
            self.store.stage_drop(e)?;
        }
        let mut meta = self.meta;
        meta.role = Role::Primary;
        meta.generation = meta.generation.promoted_by(site);
        meta.last_sealed = meta.committed;
        meta.last_sealed_group = meta.committed_group;
        meta.resync_candidates = None;
        self.store.put_meta(&meta)?;
        self.store.sync()?;
        Ok(Primary::from_promotion(self.store, self.geo, mode, meta))
    }

    /// A frame from the primary.
    pub fn on_frame(&mut self, frame: ToReplica) -> Result<(), EngineError> {
        match frame {
            ToReplica::Hello {
                generation,
                incarnation,
                session,
            } => self.on_hello(generation, incarnation, session),
            ToReplica::Blocks {
                generation,
                session,
                local,
                blocks,
            } => {
                if !self.accepts(generation) || session != self.session || self.session_closed {
                    return Ok(());
                }
                if local <= self.floor || self.staged_local() == Some(local) {
                    return Ok(());
                }
                for sb in blocks {
                    let foreign = sb.seq.incarnation != self.meta.peer_incarnation
                        && !cfg!(feature = "bug-accept-old-incarnation");
                    if foreign || sb.index >= self.geo.blocks() {
                        self.stats.fenced_frames += 1;
                        continue;
                    }
                    let idx = self.stream.entry(local).or_default();
                    if let Some(old) = idx.get(&sb.index) {
                        let stale = if cfg!(feature = "bug-accept-lower-seq") {
                            *old == sb.seq
                        } else {
                            *old >= sb.seq
                        };
                        if stale {
                            self.stats.stale_dropped += 1;
                            continue;
                        }
                    }
                    match &sb.payload {
                        Payload::Zero => {
                            self.buf.fill(0);
                            self.store.stage_put(local, sb.index, &self.buf)?;
                        }
                        Payload::Data(d) if d.len() == self.buf.len() => self.store.stage_put(local, sb.index, d)?,
                        Payload::Data(_) => {
                            self.stats.fenced_frames += 1;
                            continue;
                        }
                    }
                    idx.insert(sb.index, sb.seq);
                    self.stats.blocks_staged += 1;
                }
                if self.pending_seal.as_ref().is_some_and(|p| p.local == local) {
                    self.try_stage()?;
                }
                Ok(())
            }
            ToReplica::Sealed {
                generation,
                incarnation,
                session,
                local,
                group,
                manifest,
                covers_resync,
            } => {
                let foreign =
                    incarnation != self.meta.peer_incarnation && !cfg!(feature = "bug-accept-old-incarnation");
                if !self.accepts(generation) || foreign || session != self.session || self.session_closed {
                    return Ok(());
                }
                if self.meta.resync_candidates.is_some() && !covers_resync {
                    // Our image is not a freeze point of this primary yet;
                    // only an epoch that carries the failback may fold.
                    return Ok(());
                }
                if local <= self.meta.committed {
                    if local == self.meta.committed {
                        self.reply(Reply::Consistent {
                            local,
                            group: self.meta.committed_group,
                        });
                    }
                    return Ok(());
                }
                match self.staged_local() {
                    Some(s) if s == local => self.reply(Reply::StagedAck { local }),
                    // An earlier incarnation's epoch awaits its decision:
                    // this seal waits for it (staged after the fold or drop).
                    Some(s) if local > s => self.hold_seal(PendingSeal { local, group, manifest }),
                    Some(_) => {}
                    None if local > self.floor => {
                        self.hold_seal(PendingSeal { local, group, manifest });
                        self.try_stage()?;
                    }
                    // Dropped here by an abort: say so again, to both.
                    None => {
                        self.reply(Reply::Aborted { group });
                        self.to_coordinator.push(ToCoordinator::Abort {
                            member: self.member,
                            group,
                        });
                    }
                }
                Ok(())
            }
            ToReplica::EpochAborted {
                generation,
                incarnation,
                local,
                group,
            } => {
                if !self.accepts(generation) || incarnation != self.meta.peer_incarnation {
                    return Ok(());
                }
                if self.meta.staged.as_ref().is_some_and(|s| s.group == group) {
                    // Too late to drop on our own: the coordinator decides.
                    self.to_coordinator.push(ToCoordinator::Abort {
                        member: self.member,
                        group,
                    });
                    return Ok(());
                }
                if let Some(l) = local {
                    if self.stream.remove(&l).is_some() {
                        self.store.stage_drop(l)?;
                    }
                    if self.pending_seal.as_ref().is_some_and(|p| p.local == l) {
                        self.pending_seal = None;
                    }
                    self.floor = self.floor.max(l);
                }
                self.to_coordinator.push(ToCoordinator::Abort {
                    member: self.member,
                    group,
                });
                Ok(())
            }
            ToReplica::ResyncHashRequest { generation, blocks } => {
                if !self.accepts(generation) || self.meta.resync_candidates.is_none() {
                    return Ok(());
                }
                // A staged, undecided epoch may still change the image: the
                // hashes wait for its drop (a fold ends the failback).
                self.hash_request = Some(blocks);
                self.answer_hash_request()
            }
        }
    }

    fn on_hello(&mut self, generation: RoleGeneration, incarnation: u64, session: u64) -> Result<(), EngineError> {
        if generation < self.meta.generation {
            self.stats.fenced_frames += 1;
            self.reply(Reply::Fenced {
                generation: self.meta.generation,
            });
            return Ok(());
        }
        if generation > self.meta.generation {
            self.meta.generation = generation;
            self.meta.peer_incarnation = 0;
        }
        if incarnation < self.meta.peer_incarnation && !cfg!(feature = "bug-accept-old-incarnation") {
            return Ok(());
        }
        if incarnation > self.meta.peer_incarnation {
            // A restarted primary reuses the numbers of epochs it never sealed.
            self.meta.peer_incarnation = incarnation;
            self.session = 0;
            self.floor = self.meta.committed.max(self.staged_local().unwrap_or(0));
        }
        if session <= self.session {
            return Ok(());
        }
        self.session = session;
        self.session_closed = false;
        self.store.put_meta(&self.meta)?;
        self.store.sync()?;
        // Resume from what is durable: unsealed staging is re-sent by the primary.
        for (e, _) in std::mem::take(&mut self.stream) {
            self.store.stage_drop(e)?;
        }
        self.pending_seal = None;
        self.reply(Reply::Welcome {
            for_incarnation: incarnation,
            for_session: session,
            incarnation: self.meta.incarnation,
            committed: self.meta.committed,
            committed_group: self.meta.committed_group,
            staged: self.meta.staged.as_ref().map(|s| (s.local, s.group)),
            resync_candidates: self.meta.resync_candidates.clone(),
        });
        Ok(())
    }

    fn answer_hash_request(&mut self) -> Result<(), EngineError> {
        if self.meta.staged.is_some() || self.meta.resync_candidates.is_none() {
            return Ok(());
        }
        let Some(blocks) = self.hash_request.take() else {
            return Ok(());
        };
        let mut entries = Vec::with_capacity(blocks.len());
        for b in blocks.into_iter().filter(|&b| b < self.geo.blocks()) {
            self.store.read_image(b, &mut self.buf)?;
            entries.push((b, hash_block(&self.buf)));
        }
        self.reply(Reply::ResyncHashes { entries });
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

    /// Keep the newest seal of the session. A primary seals an epoch only
    /// once the one before it is resolved, so a seal older than the one held
    /// is a late copy of an epoch already committed or dropped: it must not
    /// displace the newer seal, which nothing would ever send again.
    fn hold_seal(&mut self, seal: PendingSeal) {
        if self.pending_seal.as_ref().is_some_and(|held| held.local > seal.local) {
            self.stats.stale_seals += 1;
            return;
        }
        self.pending_seal = Some(seal);
    }

    fn staged_local(&self) -> Option<LocalEpoch> {
        self.meta.staged.as_ref().map(|s| s.local)
    }

    /// Stage the pending seal if every manifest entry is here at exactly its
    /// sequence and hashes right; durable before the staged-ack.
    fn try_stage(&mut self) -> Result<(), EngineError> {
        if self.meta.staged.is_some() {
            return Ok(());
        }
        let Some(seal) = self.pending_seal.take() else {
            return Ok(());
        };
        let complete = {
            let idx = self.stream.get(&seal.local);
            seal.manifest
                .iter()
                .all(|e| idx.and_then(|i| i.get(&e.index)).is_some_and(|s| *s == e.seq))
        };
        if !complete {
            self.pending_seal = Some(seal);
            return Ok(());
        }
        for e in &seal.manifest {
            let present = self.store.stage_get(seal.local, e.index, &mut self.buf)?;
            let intact = cfg!(feature = "bug-skip-manifest-hash") || hash_block(&self.buf) == e.hash;
            if !present || !intact {
                // Same sequence, other bytes: corruption on the way or at rest.
                // Nothing of it is used; the session closes and the primary
                // re-sends the whole epoch on its next one.
                self.stats.manifest_mismatches += 1;
                self.stream.remove(&seal.local);
                self.store.stage_drop(seal.local)?;
                self.session_closed = true;
                self.link_reset = true;
                return Ok(());
            }
        }
        self.store.sync()?;
        let record = StagedRecord {
            local: seal.local,
            group: seal.group,
            manifest: seal.manifest,
        };
        self.meta.staged = Some(record.clone());
        self.store.put_meta(&self.meta)?;
        self.store.sync()?;
        // Older unsealed streams can never seal now.
        let older: Vec<LocalEpoch> = self.stream.range(..=seal.local).map(|(e, _)| *e).collect();
        for e in older {
            self.stream.remove(&e);
            if e != seal.local {
                self.store.stage_drop(e)?;
            }
        }
        self.reply(Reply::StagedAck { local: record.local });
        self.to_coordinator.push(ToCoordinator::Staged {
            member: self.member,
            group: record.group,
        });
        if cfg!(feature = "bug-fold-before-decision") {
            self.fold_staged(&record)?;
            self.reply(Reply::Consistent {
                local: record.local,
                group: record.group,
            });
        }
        Ok(())
    }

    /// A decision of the group coordinator.
    pub fn on_coordinator(&mut self, msg: FromCoordinator) -> Result<(), EngineError> {
        match msg {
            FromCoordinator::Fold { group } => {
                if let Some(st) = self.meta.staged.clone().filter(|s| s.group == group) {
                    // A refused fold says nothing now: the closed session's
                    // next Welcome tells the primary what stands.
                    if self.fold_staged(&st)? {
                        self.reply(Reply::Consistent { local: st.local, group });
                    }
                    self.try_stage()?;
                } else if self.meta.committed_group == group && self.meta.resync_candidates.is_none() {
                    self.reply(Reply::Consistent {
                        local: self.meta.committed,
                        group,
                    });
                }
            }
            FromCoordinator::Drop { group } => {
                if let Some(st) = self.meta.staged.clone().filter(|s| s.group == group) {
                    self.drop_staged(&st)?;
                }
                self.reply(Reply::Aborted { group });
                self.answer_hash_request()?;
                self.try_stage()?;
            }
        }
        Ok(())
    }

    /// Apply a staged epoch to the image. Redo-able: until the metadata says
    /// committed, the staging stays and a restart folds it again.
    /// Whether it folded (false: refused, see `refuse_fold`).
    fn fold_staged(&mut self, st: &StagedRecord) -> Result<bool, EngineError> {
        // Verify everything before writing anything: a block that rotted at
        // rest since the staged-ack must never reach the image.
        let mut rotten = 0;
        for e in &st.manifest {
            self.read_staged(st.local, e.index)?;
            if hash_block(&self.buf) != e.hash && !cfg!(feature = "bug-fold-skips-check") {
                rotten += 1;
            }
        }
        if rotten > 0 {
            self.refuse_fold(st)?;
            return Ok(false);
        }
        for e in &st.manifest {
            self.read_staged(st.local, e.index)?;
            self.store.write_image(e.index, &self.buf)?;
        }
        // The image is durable before the record says it is committed.
        if !cfg!(feature = "bug-fold-skips-sync") {
            self.store.sync()?;
        }
        self.meta.committed = st.local;
        self.meta.committed_group = st.group;
        self.meta.staged = None;
        self.meta.resync_candidates = None;
        self.store.put_meta(&self.meta)?;
        self.store.sync()?;
        self.store.stage_drop(st.local)?;
        self.floor = self.floor.max(st.local);
        self.stats.folds += 1;
        Ok(true)
    }

    fn read_staged(&mut self, local: LocalEpoch, b: BlockIndex) -> Result<(), EngineError> {
        if !self.store.stage_get(local, b, &mut self.buf)? {
            return Err(StoreError {
                op: "read staged block for fold",
                source: "staged block missing".into(),
            }
            .into());
        }
        Ok(())
    }

    /// A decided epoch whose staging rotted: the image stays as it is (the
    /// last committed one), the record takes the epoch as committed with
    /// every block of its manifest still to resync, and the session closes
    /// so the primary's next Welcome compares and re-sends those blocks.
    /// Until an epoch that carries them folds, promote refuses.
    fn refuse_fold(&mut self, st: &StagedRecord) -> Result<(), EngineError> {
        self.stats.folds_refused += 1;
        let mut pending = self.meta.resync_candidates.take().unwrap_or_default();
        pending.extend(st.manifest.iter().map(|e| e.index));
        pending.sort_unstable();
        pending.dedup();
        self.meta.resync_candidates = Some(pending);
        self.meta.committed = st.local;
        self.meta.committed_group = st.group;
        self.meta.staged = None;
        self.store.put_meta(&self.meta)?;
        self.store.sync()?;
        self.store.stage_drop(st.local)?;
        self.floor = self.floor.max(st.local);
        self.session_closed = true;
        self.link_reset = true;
        Ok(())
    }

    /// The store, for a shell's scrubber and for the simulator's faults at
    /// rest. Whatever writes through it must be something a disk could do.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    fn drop_staged(&mut self, st: &StagedRecord) -> Result<(), EngineError> {
        self.meta.staged = None;
        self.store.put_meta(&self.meta)?;
        self.store.sync()?;
        self.store.stage_drop(st.local)?;
        self.floor = self.floor.max(st.local);
        Ok(())
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
}
