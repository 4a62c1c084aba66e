//! Frames from the primary: sessions, blocks into staging, seals checked
//! against their manifest before the staged-ack, failback hashes.

use super::*;

impl<S: VolumeStore> Replica<S> {
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
                data,
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
                    match sb.payload {
                        Payload::Zero => {
                            self.buf.fill(0);
                            self.store.stage_put(local, sb.index, &self.buf)?;
                        }
                        Payload::Data { at } => {
                            let at = at as usize;
                            let Some(bytes) = data.get(at..at + self.buf.len()) else {
                                self.stats.fenced_frames += 1;
                                continue;
                            };
                            self.store.stage_put(local, sb.index, bytes)?;
                        }
                    }
                    idx.insert(sb.index, sb.seq);
                    self.stats.blocks_staged += 1;
                    self.unsynced_bytes += self.buf.len() as u64;
                }
                if self.unsynced_bytes >= CHECKPOINT_BYTES {
                    self.checkpoint()?;
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
                    self.forget_stream(l)?;
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
            // Its send sequences and epoch numbers are new: nothing of the
            // older incarnation's streams can match its manifests.
            let epochs: Vec<LocalEpoch> = self.stream.keys().copied().collect();
            for e in epochs {
                self.forget_stream(e)?;
            }
            self.meta.resume.clear();
        }
        if session <= self.session {
            return Ok(());
        }
        self.session = session;
        self.session_closed = false;
        // Resume from what is durable: the stream received so far is synced
        // and recorded with the session, and the Welcome names it; the
        // primary re-sends only what it does not name.
        self.unsynced_bytes = self.unsynced_bytes.max(1);
        self.checkpoint()?;
        self.pending_seal = None;
        self.reply(Reply::Welcome {
            for_incarnation: incarnation,
            for_session: session,
            incarnation: self.meta.incarnation,
            committed: self.meta.committed,
            committed_group: self.meta.committed_group,
            staged: self.meta.staged.as_ref().map(|s| (s.local, s.group)),
            resync_candidates: self.meta.resync_candidates.clone(),
            held: self.meta.resume.clone(),
        });
        Ok(())
    }

    pub(super) fn answer_hash_request(&mut self) -> Result<(), EngineError> {
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

    /// Stage the pending seal if every manifest entry is here at exactly its
    /// sequence and hashes right; durable before the staged-ack.
    pub(super) fn try_stage(&mut self) -> Result<(), EngineError> {
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
                self.forget_stream(seal.local)?;
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
        // Older unsealed streams can never seal now; the newer ones were
        // synced just above, so the record names them as held.
        let older: Vec<LocalEpoch> = self.stream.range(..=seal.local).map(|(e, _)| *e).collect();
        for &e in &older {
            self.stream.remove(&e);
        }
        self.meta.staged = Some(record.clone());
        self.note_stream_synced();
        self.store.put_meta(&self.meta)?;
        self.store.sync()?;
        for e in older {
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
}
