//! In-memory `VolumeStore` with a durable layer and buffered mutations: `sync`
//! applies them; `crash` keeps an arbitrary subset of them (and may tear a
//! block write), as a power cut would. A cut can also be armed to fall at the
//! k-th mutation or sync *inside* the next engine call (`arm_cut`): that
//! operation and every later one on the store fail, and the caller crashes
//! the volume.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use floe_engine::{BlockIndex, DecisionLog, DecisionRecord, LocalEpoch, StoreError, VolumeMeta, VolumeStore};

use super::rng::Rng;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layer {
    pub image: BTreeMap<BlockIndex, Vec<u8>>,
    pub side: BTreeMap<BlockIndex, Vec<u8>>,
    pub stage: BTreeMap<(LocalEpoch, BlockIndex), Vec<u8>>,
    pub undo: BTreeMap<(LocalEpoch, BlockIndex), Vec<u8>>,
    pub intent: BTreeSet<u64>,
    pub meta: Option<VolumeMeta>,
    pub snapshots: BTreeMap<String, BTreeMap<BlockIndex, Vec<u8>>>,
    /// Snapshots begun and not finished: what was put into each.
    pub pending_snaps: BTreeMap<String, BTreeMap<BlockIndex, Vec<u8>>>,
}

#[derive(Clone, Debug)]
enum Op {
    Image(BlockIndex, Vec<u8>),
    SidePut(BlockIndex, Vec<u8>),
    SideClear,
    StagePut(LocalEpoch, BlockIndex, Vec<u8>),
    StageDrop(LocalEpoch),
    UndoPut(LocalEpoch, BlockIndex, Vec<u8>),
    UndoDrop(LocalEpoch),
    Intent(u64, bool),
    Meta(VolumeMeta),
    Snapshot(String),
    SnapBegin(String),
    SnapPut(String, BlockIndex, Vec<u8>),
    /// Carries the whole content: the store makes the blocks durable before
    /// the name (the trait's promise), so a crash keeps all or nothing.
    SnapFinish(String, BTreeMap<BlockIndex, Vec<u8>>),
    SnapAbandon(String),
}

impl Layer {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Image(b, d) => {
                self.image.insert(*b, d.clone());
            }
            Op::SidePut(b, d) => {
                self.side.insert(*b, d.clone());
            }
            Op::SideClear => self.side.clear(),
            Op::StagePut(e, b, d) => {
                self.stage.insert((*e, *b), d.clone());
            }
            Op::StageDrop(e) => self.stage.retain(|(ee, _), _| ee != e),
            Op::UndoPut(e, b, d) => {
                self.undo.insert((*e, *b), d.clone());
            }
            Op::UndoDrop(e) => self.undo.retain(|(ee, _), _| ee != e),
            Op::Intent(r, on) => {
                if *on {
                    self.intent.insert(*r);
                } else {
                    self.intent.remove(r);
                }
            }
            Op::Meta(m) => self.meta = Some(m.clone()),
            Op::Snapshot(name) => {
                self.snapshots.insert(name.clone(), self.image.clone());
            }
            Op::SnapBegin(name) => {
                self.pending_snaps.insert(name.clone(), BTreeMap::new());
            }
            Op::SnapPut(name, b, d) => {
                if let Some(snap) = self.pending_snaps.get_mut(name) {
                    snap.insert(*b, d.clone());
                }
            }
            Op::SnapFinish(name, content) => {
                self.pending_snaps.remove(name);
                self.snapshots.insert(name.clone(), content.clone());
            }
            Op::SnapAbandon(name) => {
                self.pending_snaps.remove(name);
            }
        }
    }
}

/// Which store operations an armed cut counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutAt {
    /// Every mutation and every sync.
    AnyOp,
    /// Syncs only: the cut falls partway through the `after`-th sync.
    Sync,
}

thread_local! {
    /// An armed power cut: what it counts and how many are left before it.
    static FUSE: Cell<Option<(CutAt, u32)>> = const { Cell::new(None) };
}

/// Arm a power cut at the `after`-th counted store operation from now (0:
/// the next one), on whichever store the next engine call of this thread uses.
pub fn arm_cut(at: CutAt, after: u32) {
    FUSE.set(Some((at, after)));
}

/// Disarm the cut if it did not fall.
pub fn disarm_cut() {
    FUSE.set(None);
}

fn power_cut() -> StoreError {
    StoreError {
        op: "reach the disk",
        source: "power cut (simulated)".into(),
    }
}

#[derive(Clone, Debug)]
pub struct SimStore {
    block_size: usize,
    durable: Layer,
    view: Layer,
    pending: Vec<Op>,
    /// An armed cut fell on this store: every operation fails until `crash`.
    cut: bool,
    /// Bumped by every sync that made something durable.
    pub durable_version: u64,
    /// Staged blocks whose durable bytes an unsynced write a crash kept
    /// decided: no completed sync vouches for them until the next write of
    /// the block is synced.
    tainted: BTreeSet<(LocalEpoch, BlockIndex)>,
    /// Staged blocks not written and synced since the last crash: their
    /// bytes may be durable, but the volume's state machine, restarted,
    /// knows only what its own record names.
    stale: BTreeSet<(LocalEpoch, BlockIndex)>,
}

impl SimStore {
    pub fn new(block_size: usize) -> Self {
        SimStore {
            block_size,
            durable: Layer::default(),
            view: Layer::default(),
            pending: Vec::new(),
            cut: false,
            durable_version: 0,
            tainted: BTreeSet::new(),
            stale: BTreeSet::new(),
        }
    }

    /// Count one operation against an armed cut.
    fn tick(&mut self, op: CutAt) -> Result<(), StoreError> {
        if self.cut {
            return Err(power_cut());
        }
        match FUSE.get() {
            Some((at, _)) if at != CutAt::AnyOp && at != op => Ok(()),
            Some((_, 0)) => {
                FUSE.set(None);
                self.cut = true;
                Err(power_cut())
            }
            Some((at, n)) => {
                FUSE.set(Some((at, n - 1)));
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn alive(&self) -> Result<(), StoreError> {
        if self.cut {
            return Err(power_cut());
        }
        Ok(())
    }

    fn push(&mut self, op: Op) -> Result<(), StoreError> {
        self.tick(CutAt::AnyOp)?;
        self.view.apply(&op);
        self.pending.push(op);
        Ok(())
    }

    /// Whether an armed cut fell on this store.
    pub fn was_cut(&self) -> bool {
        self.cut
    }

    /// A power cut: each unsynced mutation independently reached the disk or
    /// not; a block write that did may be torn (a prefix of the new bytes).
    /// `keep` decides what survives and tears image writes; `tear` tears the
    /// other block writes (staging, copies aside, snapshot patches), so
    /// schedules drawn before those tears existed replay unchanged.
    pub fn crash(&mut self, keep: &mut Rng, tear: &mut Rng) {
        for op in std::mem::take(&mut self.pending) {
            if !keep.chance(0.5) {
                continue;
            }
            let op = match op {
                Op::Image(b, mut d) if keep.chance(0.3) => {
                    let old = self.durable.image.get(&b).cloned();
                    Self::tear(&mut d, old, keep);
                    Op::Image(b, d)
                }
                Op::StagePut(e, b, mut d) if tear.chance(0.3) => {
                    let old = self.durable.stage.get(&(e, b)).cloned();
                    Self::tear(&mut d, old, tear);
                    Op::StagePut(e, b, d)
                }
                Op::UndoPut(e, b, mut d) if tear.chance(0.3) => {
                    let old = self.durable.undo.get(&(e, b)).cloned();
                    Self::tear(&mut d, old, tear);
                    Op::UndoPut(e, b, d)
                }
                Op::SidePut(b, mut d) if tear.chance(0.3) => {
                    let old = self.durable.side.get(&b).cloned();
                    Self::tear(&mut d, old, tear);
                    Op::SidePut(b, d)
                }
                other => other,
            };
            if let Op::StagePut(e, b, _) = &op {
                self.tainted.insert((*e, *b));
            }
            self.durable.apply(&op);
        }
        self.view = self.durable.clone();
        self.stale = self.durable.stage.keys().copied().collect();
        self.cut = false;
        self.durable_version += 1;
    }

    /// A torn block write: a prefix of the new bytes over the old ones.
    fn tear(new: &mut [u8], old: Option<Vec<u8>>, rng: &mut Rng) {
        let old = old.unwrap_or_else(|| vec![0; new.len()]);
        let at = rng.below(new.len() as u64 + 1) as usize;
        new[at..].copy_from_slice(&old[at..]);
    }

    /// Rot at rest: flip bit `bit` of staged block `b` of epoch `local`,
    /// durable and live alike. False if no such block is staged.
    pub fn rot_staged(&mut self, local: LocalEpoch, b: BlockIndex, bit: u64) -> bool {
        let mut found = false;
        for layer in [&mut self.durable, &mut self.view] {
            if let Some(d) = layer.stage.get_mut(&(local, b)) {
                let at = (bit / 8) as usize % d.len();
                d[at] ^= 1 << (bit % 8);
                found = true;
            }
        }
        found
    }

    /// The durable state alone, as a restart after a clean power cut sees it.
    pub fn durable_copy(&self) -> SimStore {
        SimStore {
            block_size: self.block_size,
            durable: self.durable.clone(),
            view: self.durable.clone(),
            pending: Vec::new(),
            cut: false,
            durable_version: self.durable_version,
            tainted: self.tainted.clone(),
            stale: self.stale.clone(),
        }
    }

    /// Whether staged block `b` of `local` holds `bytes` durably, made so by
    /// a completed sync (not by the luck of a crash), and still live.
    pub fn holds_synced(&self, local: LocalEpoch, b: BlockIndex, bytes: &[u8]) -> bool {
        !self.tainted.contains(&(local, b))
            && self.durable.stage.get(&(local, b)).is_some_and(|d| d == bytes)
            && self.view.stage.get(&(local, b)).is_some_and(|d| d == bytes)
    }

    /// [`Self::holds_synced`], and synced since the last crash.
    pub fn holds_synced_since_crash(&self, local: LocalEpoch, b: BlockIndex, bytes: &[u8]) -> bool {
        !self.stale.contains(&(local, b)) && self.holds_synced(local, b, bytes)
    }

    /// The live image as the store holds it (durable plus buffered).
    pub fn image_bytes(&self, blocks: u64) -> Vec<u8> {
        let mut out = vec![0; blocks as usize * self.block_size];
        for (b, d) in &self.view.image {
            let at = *b as usize * self.block_size;
            out[at..at + self.block_size].copy_from_slice(d);
        }
        out
    }

    pub fn durable_intent(&self) -> BTreeSet<u64> {
        self.durable.intent.clone()
    }

    pub fn snapshots(&self) -> usize {
        self.view.snapshots.len()
    }

    /// Names of the snapshots begun and not finished.
    pub fn pending_snapshots(&self) -> Vec<String> {
        self.view.pending_snaps.keys().cloned().collect()
    }

    /// Bytes put so far into pending snapshot `name` (zeroes elsewhere).
    pub fn pending_snapshot_bytes(&self, name: &str, blocks: u64) -> Option<Vec<u8>> {
        let snap = self.view.pending_snaps.get(name)?;
        let mut out = vec![0; blocks as usize * self.block_size];
        for (b, d) in snap {
            let at = *b as usize * self.block_size;
            out[at..at + self.block_size].copy_from_slice(d);
        }
        Some(out)
    }

    /// Bytes of snapshot `name`, if it exists.
    pub fn snapshot_bytes(&self, name: &str, blocks: u64) -> Option<Vec<u8>> {
        let snap = self.view.snapshots.get(name)?;
        let mut out = vec![0; blocks as usize * self.block_size];
        for (b, d) in snap {
            let at = *b as usize * self.block_size;
            out[at..at + self.block_size].copy_from_slice(d);
        }
        Some(out)
    }
}

impl VolumeStore for SimStore {
    fn read_image(&self, b: BlockIndex, buf: &mut [u8]) -> Result<(), StoreError> {
        self.alive()?;
        match self.view.image.get(&b) {
            Some(d) => buf.copy_from_slice(d),
            None => buf.fill(0),
        }
        Ok(())
    }
    fn write_image(&mut self, b: BlockIndex, data: &[u8]) -> Result<(), StoreError> {
        self.push(Op::Image(b, data.to_vec()))
    }
    fn side_put(&mut self, b: BlockIndex, data: &[u8]) -> Result<(), StoreError> {
        self.push(Op::SidePut(b, data.to_vec()))
    }
    fn side_get(&self, b: BlockIndex, buf: &mut [u8]) -> Result<bool, StoreError> {
        self.alive()?;
        Ok(self.view.side.get(&b).map(|d| buf.copy_from_slice(d)).is_some())
    }
    fn side_blocks(&self) -> Result<Vec<BlockIndex>, StoreError> {
        self.alive()?;
        Ok(self.view.side.keys().copied().collect())
    }
    fn side_clear(&mut self) -> Result<(), StoreError> {
        self.push(Op::SideClear)
    }
    fn stage_put(&mut self, epoch: LocalEpoch, b: BlockIndex, data: &[u8]) -> Result<(), StoreError> {
        self.push(Op::StagePut(epoch, b, data.to_vec()))
    }
    fn stage_get(&self, epoch: LocalEpoch, b: BlockIndex, buf: &mut [u8]) -> Result<bool, StoreError> {
        self.alive()?;
        Ok(self
            .view
            .stage
            .get(&(epoch, b))
            .map(|d| buf.copy_from_slice(d))
            .is_some())
    }
    fn stage_drop(&mut self, epoch: LocalEpoch) -> Result<(), StoreError> {
        self.push(Op::StageDrop(epoch))
    }
    fn stage_epochs(&self) -> Result<Vec<LocalEpoch>, StoreError> {
        self.alive()?;
        let set: BTreeSet<LocalEpoch> = self.view.stage.keys().map(|(e, _)| *e).collect();
        Ok(set.into_iter().collect())
    }
    fn undo_put(&mut self, epoch: LocalEpoch, b: BlockIndex, data: &[u8]) -> Result<(), StoreError> {
        self.push(Op::UndoPut(epoch, b, data.to_vec()))
    }
    fn undo_get(&self, epoch: LocalEpoch, b: BlockIndex, buf: &mut [u8]) -> Result<bool, StoreError> {
        self.alive()?;
        Ok(self
            .view
            .undo
            .get(&(epoch, b))
            .map(|d| buf.copy_from_slice(d))
            .is_some())
    }
    fn undo_blocks(&self, epoch: LocalEpoch) -> Result<Vec<BlockIndex>, StoreError> {
        self.alive()?;
        Ok(self
            .view
            .undo
            .range((epoch, 0)..=(epoch, BlockIndex::MAX))
            .map(|((_, b), _)| *b)
            .collect())
    }
    fn undo_drop(&mut self, epoch: LocalEpoch) -> Result<(), StoreError> {
        self.push(Op::UndoDrop(epoch))
    }
    fn undo_epochs(&self) -> Result<Vec<LocalEpoch>, StoreError> {
        self.alive()?;
        let set: BTreeSet<LocalEpoch> = self.view.undo.keys().map(|(e, _)| *e).collect();
        Ok(set.into_iter().collect())
    }
    fn intent_set(&mut self, region: u64, on: bool) -> Result<(), StoreError> {
        self.push(Op::Intent(region, on))
    }
    fn intent_regions(&self) -> Result<Vec<u64>, StoreError> {
        self.alive()?;
        Ok(self.view.intent.iter().copied().collect())
    }
    fn put_meta(&mut self, meta: &VolumeMeta) -> Result<(), StoreError> {
        self.push(Op::Meta(meta.clone()))
    }
    fn get_meta(&self) -> Result<Option<VolumeMeta>, StoreError> {
        self.alive()?;
        Ok(self.view.meta.clone())
    }
    fn snapshot_image(&mut self, name: &str) -> Result<(), StoreError> {
        self.push(Op::Snapshot(name.to_owned()))
    }
    fn image_data_from(&self, from: BlockIndex) -> Result<Option<(BlockIndex, BlockIndex)>, StoreError> {
        self.alive()?;
        let data = |d: &Vec<u8>| d.iter().any(|&x| x != 0);
        let Some(start) = self.view.image.range(from..).find(|(_, d)| data(d)).map(|(b, _)| *b) else {
            return Ok(None);
        };
        let mut end = start + 1;
        while self.view.image.get(&end).is_some_and(data) {
            end += 1;
        }
        Ok(Some((start, end)))
    }
    fn snapshot_begin(&mut self, name: &str) -> Result<(), StoreError> {
        if self.view.snapshots.contains_key(name) || self.view.pending_snaps.contains_key(name) {
            return Err(StoreError {
                op: "begin snapshot",
                source: "a snapshot of that name exists".into(),
            });
        }
        self.push(Op::SnapBegin(name.to_owned()))
    }
    fn snapshot_put(&mut self, name: &str, b: BlockIndex, data: &[u8]) -> Result<(), StoreError> {
        if !self.view.pending_snaps.contains_key(name) {
            return Err(StoreError {
                op: "put snapshot block",
                source: "no such pending snapshot".into(),
            });
        }
        self.push(Op::SnapPut(name.to_owned(), b, data.to_vec()))
    }
    fn snapshot_finish(&mut self, name: &str) -> Result<(), StoreError> {
        let Some(content) = self.view.pending_snaps.get(name).cloned() else {
            return Err(StoreError {
                op: "finish snapshot",
                source: "no such pending snapshot".into(),
            });
        };
        self.push(Op::SnapFinish(name.to_owned(), content))
    }
    fn snapshot_abandon(&mut self, name: &str) -> Result<(), StoreError> {
        self.push(Op::SnapAbandon(name.to_owned()))
    }
    fn snapshots_pending(&self) -> Result<Vec<String>, StoreError> {
        self.alive()?;
        Ok(self.view.pending_snaps.keys().cloned().collect())
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        // A cut here is a cut partway through the sync: `crash` then keeps
        // an arbitrary part of what it was making durable.
        self.tick(CutAt::Sync)?;
        if !self.pending.is_empty() {
            for op in std::mem::take(&mut self.pending) {
                match &op {
                    Op::StagePut(e, b, _) => {
                        self.tainted.remove(&(*e, *b));
                        self.stale.remove(&(*e, *b));
                    }
                    Op::StageDrop(e) => {
                        self.tainted.retain(|(x, _)| x != e);
                        self.stale.retain(|(x, _)| x != e);
                    }
                    _ => {}
                }
                self.durable.apply(&op);
            }
            self.durable_version += 1;
        }
        Ok(())
    }
}

/// The coordinator's decision log: durable on every record.
#[derive(Clone, Debug, Default)]
pub struct SimLog {
    pub record: DecisionRecord,
    pub version: u64,
}

impl DecisionLog for SimLog {
    fn record(&mut self, rec: &DecisionRecord) -> Result<(), StoreError> {
        self.record = rec.clone();
        self.version += 1;
        Ok(())
    }
    fn load(&self) -> Result<DecisionRecord, StoreError> {
        Ok(self.record.clone())
    }
}
