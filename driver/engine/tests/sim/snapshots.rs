//! The snapshot schedule: one primary under seeded host I/O, its closing
//! epochs frozen and given up (so log mode's freeze log fills and is merged
//! back while copies run), local snapshots marked mid-workload and copied in
//! random steps interleaved with the writes, power cuts between calls and
//! inside them (inside a copy step, a copy-before-overwrite, the last step's
//! sync).
//!
//! What must hold, checked against a flat image of the host's view kept
//! apart from the engine:
//! - while a copy runs, the blocks below its cursor already equal the host's
//!   view at the mark;
//! - a snapshot reported done equals the host's view at its mark, byte for
//!   byte, and still does after every later crash;
//! - a snapshot a crash cut short is, after the restart, either whole and
//!   equal (the crash fell after its last sync had made it so) or gone:
//!   reported failed by `Primary::open`, or never durable at all; nothing of
//!   it stays pending.

use floe_engine::{Geometry, GroupEpoch, Mode, Primary, RoleGeneration, SnapshotStep};

use super::rng::Rng;
use super::store::{arm_cut, disarm_cut, CutAt, SimStore};

/// Counters over snapshot schedules.
#[derive(Clone, Debug, Default)]
pub struct SnapStats {
    pub marked: u64,
    pub marked_in_window: u64,
    pub done: u64,
    pub failed_at_open: u64,
    pub lost_before_durable: u64,
    pub finished_by_crash: u64,
    pub copies_before_overwrite: u64,
    pub crashes: u64,
    pub cuts_in_steps: u64,
}

impl SnapStats {
    pub fn add(&mut self, o: &SnapStats) {
        self.marked += o.marked;
        self.marked_in_window += o.marked_in_window;
        self.done += o.done;
        self.failed_at_open += o.failed_at_open;
        self.lost_before_durable += o.lost_before_durable;
        self.finished_by_crash += o.finished_by_crash;
        self.copies_before_overwrite += o.copies_before_overwrite;
        self.crashes += o.crashes;
        self.cuts_in_steps += o.cuts_in_steps;
    }
}

/// One schedule.
pub struct SnapWorld {
    mode: Mode,
    geo: Geometry,
    rng: Rng,
    p: Option<Primary<SimStore>>,
    /// The host's view, as the reference keeps it.
    host: Vec<u8>,
    /// The snapshot being copied and the host's view at its mark.
    pending: Option<(String, Vec<u8>)>,
    /// Snapshots reported done, with their expected bytes.
    done: Vec<(String, Vec<u8>)>,
    group: GroupEpoch,
    closing: Option<GroupEpoch>,
    names: u64,
    pub trace: Vec<String>,
    pub stats: SnapStats,
}

type Outcome = Result<(), String>;

impl SnapWorld {
    pub fn new(mode: Mode, seed: u64) -> Self {
        let geo = Geometry::new(8, 24, 4).expect("valid test geometry");
        let generation = RoleGeneration { counter: 1, site: 1 };
        let p = Primary::create(SimStore::new(geo.block_size()), geo, mode, generation).expect("create primary");
        SnapWorld {
            mode,
            geo,
            rng: Rng::new(seed ^ 0x5A47_5348_4F54),
            p: Some(p),
            host: vec![0; geo.bytes() as usize],
            pending: None,
            done: Vec::new(),
            group: 0,
            closing: None,
            names: 0,
            trace: Vec::new(),
            stats: SnapStats::default(),
        }
    }

    fn p(&mut self) -> &mut Primary<SimStore> {
        self.p.as_mut().expect("the primary is up between steps")
    }

    fn note(&mut self, line: String) {
        self.trace.push(line);
    }

    pub fn run(&mut self) -> Outcome {
        for step in 0..300 {
            self.step(step)?;
        }
        // The end: finish the copy under way, then one more crash.
        self.finish_pending()?;
        self.crash()?;
        self.check_done()
    }

    fn step(&mut self, step: usize) -> Outcome {
        let roll = self.rng.below(100);
        // A power cut inside the call, now and then.
        let cut = self.rng.chance(0.04);
        if cut {
            let (at, after) = if self.rng.chance(0.3) {
                (CutAt::Sync, self.rng.below(2) as u32)
            } else {
                (CutAt::AnyOp, self.rng.below(6) as u32)
            };
            arm_cut(at, after);
        }
        let out = match roll {
            0..=29 => self.write(step),
            30..=34 => self.zero(step),
            35..=40 => self.call(step, "flush", |p| p.flush()).map(|_| ()),
            41..=48 => self.mark(step),
            49..=76 => self.copy_step(step, cut),
            77..=82 => self.freeze(step),
            83..=87 => self.abort(step),
            88..=89 => {
                disarm_cut();
                self.crash()
            }
            _ => Ok(()),
        };
        disarm_cut();
        out?;
        if self.p.as_ref().is_some_and(|p| p.store().was_cut()) {
            self.crash()?;
        }
        Ok(())
    }

    /// Run `f` on the primary; an error is fine only when a cut fell.
    fn call(
        &mut self,
        step: usize,
        what: &str,
        f: impl FnOnce(&mut Primary<SimStore>) -> Result<(), floe_engine::EngineError>,
    ) -> Result<bool, String> {
        match f(self.p()) {
            Ok(()) => Ok(true),
            Err(_) if self.p().store().was_cut() => {
                self.note(format!("{step}: {what}: power cut inside the call"));
                Ok(false)
            }
            Err(e) => Err(format!("step {step}: {what}: {e}")),
        }
    }

    fn write(&mut self, step: usize) -> Outcome {
        let bytes = self.host.len() as u64;
        let hot = self.rng.chance(0.6);
        let span = if hot { bytes / 3 } else { bytes };
        let offset = self.rng.below(span);
        let len = (1 + self.rng.below(3 * self.geo.block_size() as u64)).min(bytes - offset);
        let mut data = vec![0; len as usize];
        self.rng.fill(&mut data);
        self.note(format!("{step}: write {len} bytes at {offset}"));
        if self.call(step, "write", |p| p.write(offset, &data))? {
            self.host[offset as usize..(offset + len) as usize].copy_from_slice(&data);
        }
        Ok(())
    }

    fn zero(&mut self, step: usize) -> Outcome {
        let bytes = self.host.len() as u64;
        let offset = self.rng.below(bytes);
        let len = (1 + self.rng.below(4 * self.geo.block_size() as u64)).min(bytes - offset);
        self.note(format!("{step}: zero {len} bytes at {offset}"));
        if self.call(step, "zero", |p| p.zero(offset, len))? {
            self.host[offset as usize..(offset + len) as usize].fill(0);
        }
        Ok(())
    }

    fn mark(&mut self, step: usize) -> Outcome {
        if self.pending.is_some() {
            return Ok(());
        }
        self.names += 1;
        let name = format!("s{}", self.names);
        self.note(format!("{step}: mark {name} (closing epoch {:?})", self.closing));
        let n = name.clone();
        if self.call(step, "mark", |p| p.snapshot_mark(&n).map(|_| ()))? {
            self.stats.marked += 1;
            if self.closing.is_some() {
                self.stats.marked_in_window += 1;
            }
            self.pending = Some((name, self.host.clone()));
        } else {
            // Cut inside the mark: whatever the store kept of it must be
            // resolved at the restart like any pending snapshot.
            self.pending = Some((name, self.host.clone()));
        }
        Ok(())
    }

    fn copy_step(&mut self, step: usize, cut: bool) -> Outcome {
        let max = 1 + self.rng.below(3);
        let out = match self.p().snapshot_step(max) {
            Ok(s) => s,
            Err(_) if self.p().store().was_cut() => {
                self.note(format!("{step}: copy step: power cut inside the call"));
                self.stats.cuts_in_steps += 1;
                return Ok(());
            }
            Err(e) => return Err(format!("step {step}: copy step: {e}")),
        };
        if cut {
            // Armed but did not fall: the step made fewer operations.
            self.note(format!("{step}: copy step ran under an armed cut that did not fall"));
        }
        self.after_step(step, out)
    }

    fn after_step(&mut self, step: usize, out: SnapshotStep) -> Outcome {
        match out {
            SnapshotStep::Idle => {
                if let Some(name) = self.pending.as_ref().map(|(n, _)| n.clone()) {
                    let failed = self.p().take_failed_snapshots();
                    if !failed.contains(&name) {
                        return Err(format!(
                            "step {step}: snapshot {name} is pending here but the engine copies nothing and reports no failure"
                        ));
                    }
                    self.note(format!("{step}: {name} given up"));
                    self.pending = None;
                }
                Ok(())
            }
            SnapshotStep::Copying { next, blocks } => {
                self.note(format!("{step}: copied below {next} of {blocks}"));
                let Some((name, want)) = &self.pending else {
                    return Err(format!("step {step}: a copy runs with no snapshot marked"));
                };
                let got = self
                    .p
                    .as_ref()
                    .expect("up")
                    .store()
                    .pending_snapshot_bytes(name, self.geo.blocks())
                    .ok_or_else(|| format!("step {step}: pending snapshot {name} is not in the store"))?;
                let upto = next as usize * self.geo.block_size();
                if got[..upto] != want[..upto] {
                    let b = first_diff(&got, want, self.geo.block_size());
                    return Err(format!(
                        "step {step}: snapshot {name}: block {b} below the cursor ({next}) differs from the host's view at the mark"
                    ));
                }
                Ok(())
            }
            SnapshotStep::Done { name, .. } => {
                let Some((pname, want)) = self.pending.take() else {
                    return Err(format!("step {step}: snapshot {name} done but none was marked"));
                };
                if pname != name {
                    return Err(format!("step {step}: snapshot {name} done, {pname} was marked"));
                }
                self.note(format!("{step}: {name} done"));
                self.stats.done += 1;
                self.done.push((name, want));
                self.check_done().map_err(|e| format!("step {step}: {e}"))
            }
        }
    }

    fn freeze(&mut self, step: usize) -> Outcome {
        if self.closing.is_some() {
            return Ok(());
        }
        let g = self.group + 1;
        self.note(format!("{step}: freeze {g}"));
        if self.call(step, "freeze", |p| p.freeze(g).map(|_| ()))? {
            self.group = g;
            self.closing = Some(g);
        }
        Ok(())
    }

    fn abort(&mut self, step: usize) -> Outcome {
        let Some(g) = self.closing else { return Ok(()) };
        self.note(format!("{step}: abort {g} (log mode merges its freeze log)"));
        if self.call(step, "abort", |p| p.abort(g).map(|_| ()))? {
            self.closing = None;
        }
        Ok(())
    }

    fn finish_pending(&mut self) -> Outcome {
        for _ in 0..=self.geo.blocks() + 2 {
            if self.pending.is_none() {
                break;
            }
            let out = self.p().snapshot_step(4).map_err(|e| format!("final copy: {e}"))?;
            self.after_step(usize::MAX, out)?;
        }
        if let Some((name, _)) = &self.pending {
            return Err(format!("snapshot {name} never finished"));
        }
        Ok(())
    }

    /// A power cut: the store keeps an arbitrary part of what was not synced.
    fn crash(&mut self) -> Outcome {
        self.stats.crashes += 1;
        if let Some(p) = self.p.as_ref() {
            self.stats.copies_before_overwrite += p.stats().snapshot_copies;
        }
        let mut store = self.p.take().expect("up").into_store();
        let mut keep = Rng::new(self.rng.next_u64());
        let mut tear = Rng::new(self.rng.next_u64());
        store.crash(&mut keep, &mut tear);
        self.note("crash".into());
        let mut p = Primary::open(store, self.geo, self.mode).map_err(|e| format!("reopen after a crash: {e}"))?;
        let failed = p.take_failed_snapshots();
        let mut view = vec![0; self.host.len()];
        p.read(0, &mut view).map_err(|e| format!("read after a crash: {e}"))?;
        let left = p.store().pending_snapshots();
        self.p = Some(p);
        // Writes since the last flush may hold anything: the reference takes
        // what survived (the main model checks that flushed writes did).
        self.host = view;
        self.closing = None;
        if !left.is_empty() {
            return Err(format!("snapshots {left:?} are still pending after the restart"));
        }
        let pending = self.pending.take();
        for name in &failed {
            if pending.as_ref().is_none_or(|(n, _)| n != name) {
                return Err(format!("snapshot {name} reported failed, but it was not being copied"));
            }
        }
        if let Some((name, want)) = pending {
            let whole = self
                .p
                .as_ref()
                .expect("up")
                .store()
                .snapshot_bytes(&name, self.geo.blocks());
            match whole {
                Some(_) if failed.contains(&name) => {
                    return Err(format!("snapshot {name} reported failed but exists"));
                }
                Some(_) => {
                    self.note(format!("{name}: its last sync made it whole before the crash"));
                    self.stats.finished_by_crash += 1;
                    self.done.push((name, want));
                }
                None if failed.contains(&name) => {
                    self.note(format!("{name}: reported failed at the restart"));
                    self.stats.failed_at_open += 1;
                }
                None => {
                    self.note(format!("{name}: nothing of it was durable"));
                    self.stats.lost_before_durable += 1;
                }
            }
        }
        self.check_done()
    }

    /// Every snapshot reported done equals the host's view at its mark.
    fn check_done(&self) -> Outcome {
        let store = self.p.as_ref().expect("up").store();
        for (name, want) in &self.done {
            let Some(got) = store.snapshot_bytes(name, self.geo.blocks()) else {
                return Err(format!("snapshot {name}, reported done, is gone"));
            };
            if &got != want {
                let b = first_diff(&got, want, self.geo.block_size());
                return Err(format!(
                    "snapshot {name}: block {b} differs from the host's view at the mark ({} mode)",
                    self.mode.name()
                ));
            }
        }
        Ok(())
    }
}

fn first_diff(a: &[u8], b: &[u8], bs: usize) -> usize {
    a.iter().zip(b).position(|(x, y)| x != y).map_or(0, |i| i / bs)
}
