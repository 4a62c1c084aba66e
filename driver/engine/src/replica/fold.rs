//! The group coordinator's decisions: a fold verifies every staged block
//! before it writes any, a refused fold fails closed until a resync, a drop
//! forgets the staging.

use super::*;

impl<S: VolumeStore> Replica<S> {
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
    pub(super) fn fold_staged(&mut self, st: &StagedRecord) -> Result<bool, EngineError> {
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
        // Retaining points: the versions this fold replaces are kept first,
        // durable before the image changes.
        let keeps_point = self.keeps_point();
        let captured = self.meta.undo_captured == Some(st.local) && !cfg!(feature = "bug-undo-recaptured");
        if keeps_point && !captured {
            self.capture_undo(st)?;
        }
        for e in &st.manifest {
            self.read_staged(st.local, e.index)?;
            self.store.write_image(e.index, &self.buf)?;
        }
        // The image is durable before the record says it is committed.
        if !cfg!(feature = "bug-fold-skips-sync") {
            self.store.sync()?;
        }
        if keeps_point {
            self.meta.retained.push(RetainedPoint {
                local: self.meta.committed,
                group: self.meta.committed_group,
                undo: st.local,
            });
        }
        let trimmed = self.meta.retained.len().saturating_sub(self.retain);
        let expired: Vec<RetainedPoint> = self.meta.retained.drain(..trimmed).collect();
        self.meta.undo_captured = None;
        self.meta.committed = st.local;
        self.meta.committed_group = st.group;
        self.meta.staged = None;
        self.meta.resync_candidates = None;
        // The sync above made the stream durable too: record it.
        self.note_stream_synced();
        self.store.put_meta(&self.meta)?;
        self.store.sync()?;
        self.store.stage_drop(st.local)?;
        for p in expired {
            self.store.undo_drop(p.undo)?;
        }
        self.floor = self.floor.max(st.local);
        self.stats.folds += 1;
        Ok(true)
    }

    /// Whether the fold about to happen leaves a point to retain: K > 0 and
    /// the image is a committed freeze point (not a new replica's zeroes, nor
    /// a failback's or a refused fold's image awaiting its resync).
    fn keeps_point(&self) -> bool {
        self.retain > 0 && self.meta.committed_group > 0 && self.meta.resync_candidates.is_none()
    }

    /// Keep the image's versions of the blocks `st` folds as its undo set,
    /// durable, and record that before any of them is overwritten. A capture
    /// cut short is taken again whole (its blocks may be torn).
    fn capture_undo(&mut self, st: &StagedRecord) -> Result<(), EngineError> {
        self.store.undo_drop(st.local)?;
        for e in &st.manifest {
            self.store.read_image(e.index, &mut self.buf)?;
            self.store.undo_put(st.local, e.index, &self.buf)?;
        }
        self.store.sync()?;
        self.meta.undo_captured = Some(st.local);
        self.store.put_meta(&self.meta)?;
        self.store.sync()?;
        Ok(())
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
    /// The retained points go too: the image no longer is the committed
    /// epoch's, so no chain of undo sets starts from a known point.
    fn refuse_fold(&mut self, st: &StagedRecord) -> Result<(), EngineError> {
        self.stats.folds_refused += 1;
        self.meta.retained.clear();
        self.meta.undo_captured = None;
        let mut pending = self.meta.resync_candidates.take().unwrap_or_default();
        pending.extend(st.manifest.iter().map(|e| e.index));
        pending.sort_unstable();
        pending.dedup();
        self.meta.resync_candidates = Some(pending);
        self.meta.committed = st.local;
        self.meta.committed_group = st.group;
        self.meta.staged = None;
        self.store.sync()?;
        self.note_stream_synced();
        self.store.put_meta(&self.meta)?;
        self.store.sync()?;
        self.store.stage_drop(st.local)?;
        for e in self.store.undo_epochs()? {
            self.store.undo_drop(e)?;
        }
        self.floor = self.floor.max(st.local);
        self.session_closed = true;
        self.link_reset = true;
        Ok(())
    }

    pub(super) fn drop_staged(&mut self, st: &StagedRecord) -> Result<(), EngineError> {
        self.meta.staged = None;
        self.store.sync()?;
        self.note_stream_synced();
        self.store.put_meta(&self.meta)?;
        self.store.sync()?;
        self.store.stage_drop(st.local)?;
        self.floor = self.floor.max(st.local);
        Ok(())
    }
}
