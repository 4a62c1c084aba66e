//! In-memory `VolumeStore` with a durable layer and buffered mutations: `sync`
//! applies them; `crash` keeps an arbitrary subset of them (and may tear a
//! block write), as a power cut would.

use std::collections::{BTreeMap, BTreeSet};

use floe_engine::{BlockIndex, DecisionLog, DecisionRecord, LocalEpoch, StoreError, VolumeMeta, VolumeStore};

use super::rng::Rng;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layer {
    pub image: BTreeMap<BlockIndex, Vec<u8>>,
    pub side: BTreeMap<BlockIndex, Vec<u8>>,
    pub stage: BTreeMap<(LocalEpoch, BlockIndex), Vec<u8>>,
    pub intent: BTreeSet<u64>,
    pub meta: Option<VolumeMeta>,
    pub snapshots: BTreeMap<String, BTreeMap<BlockIndex, Vec<u8>>>,
}

#[derive(Clone, Debug)]
enum Op {
    Image(BlockIndex, Vec<u8>),
    SidePut(BlockIndex, Vec<u8>),
    SideClear,
    StagePut(LocalEpoch, BlockIndex, Vec<u8>),
    StageDrop(LocalEpoch),
    Intent(u64, bool),
    Meta(VolumeMeta),
    Snapshot(String),
    SnapshotPatch(String, BlockIndex, Vec<u8>),
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
            Op::SnapshotPatch(name, b, d) => {
                if let Some(snap) = self.snapshots.get_mut(name) {
                    snap.insert(*b, d.clone());
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct SimStore {
    block_size: usize,
    durable: Layer,
    view: Layer,
    pending: Vec<Op>,
    /// Bumped by every sync that made something durable.
    pub durable_version: u64,
}

impl SimStore {
    pub fn new(block_size: usize) -> Self {
        SimStore {
            block_size,
            durable: Layer::default(),
            view: Layer::default(),
            pending: Vec::new(),
            durable_version: 0,
        }
    }

    fn push(&mut self, op: Op) {
        self.view.apply(&op);
        self.pending.push(op);
    }

    /// A power cut: each unsynced mutation independently reached the disk or
    /// not; a block write that did may be torn (a prefix of the new bytes).
    pub fn crash(&mut self, rng: &mut Rng) {
        for op in std::mem::take(&mut self.pending) {
            if !rng.chance(0.5) {
                continue;
            }
            let op = match op {
                Op::Image(b, mut d) if rng.chance(0.3) => {
                    let old = self
                        .durable
                        .image
                        .get(&b)
                        .cloned()
                        .unwrap_or_else(|| vec![0; self.block_size]);
                    let cut = rng.below(d.len() as u64 + 1) as usize;
                    d[cut..].copy_from_slice(&old[cut..]);
                    Op::Image(b, d)
                }
                other => other,
            };
            self.durable.apply(&op);
        }
        self.view = self.durable.clone();
        self.durable_version += 1;
    }

    /// The durable state alone, as a restart after a clean power cut sees it.
    pub fn durable_copy(&self) -> SimStore {
        SimStore {
            block_size: self.block_size,
            durable: self.durable.clone(),
            view: self.durable.clone(),
            pending: Vec::new(),
            durable_version: self.durable_version,
        }
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
        match self.view.image.get(&b) {
            Some(d) => buf.copy_from_slice(d),
            None => buf.fill(0),
        }
        Ok(())
    }
    fn write_image(&mut self, b: BlockIndex, data: &[u8]) -> Result<(), StoreError> {
        self.push(Op::Image(b, data.to_vec()));
        Ok(())
    }
    fn side_put(&mut self, b: BlockIndex, data: &[u8]) -> Result<(), StoreError> {
        self.push(Op::SidePut(b, data.to_vec()));
        Ok(())
    }
    fn side_get(&self, b: BlockIndex, buf: &mut [u8]) -> Result<bool, StoreError> {
        Ok(self.view.side.get(&b).map(|d| buf.copy_from_slice(d)).is_some())
    }
    fn side_blocks(&self) -> Result<Vec<BlockIndex>, StoreError> {
        Ok(self.view.side.keys().copied().collect())
    }
    fn side_clear(&mut self) -> Result<(), StoreError> {
        self.push(Op::SideClear);
        Ok(())
    }
    fn stage_put(&mut self, epoch: LocalEpoch, b: BlockIndex, data: &[u8]) -> Result<(), StoreError> {
        self.push(Op::StagePut(epoch, b, data.to_vec()));
        Ok(())
    }
    fn stage_get(&self, epoch: LocalEpoch, b: BlockIndex, buf: &mut [u8]) -> Result<bool, StoreError> {
        Ok(self
            .view
            .stage
            .get(&(epoch, b))
            .map(|d| buf.copy_from_slice(d))
            .is_some())
    }
    fn stage_drop(&mut self, epoch: LocalEpoch) -> Result<(), StoreError> {
        self.push(Op::StageDrop(epoch));
        Ok(())
    }
    fn stage_epochs(&self) -> Result<Vec<LocalEpoch>, StoreError> {
        let set: BTreeSet<LocalEpoch> = self.view.stage.keys().map(|(e, _)| *e).collect();
        Ok(set.into_iter().collect())
    }
    fn intent_set(&mut self, region: u64, on: bool) -> Result<(), StoreError> {
        self.push(Op::Intent(region, on));
        Ok(())
    }
    fn intent_regions(&self) -> Result<Vec<u64>, StoreError> {
        Ok(self.view.intent.iter().copied().collect())
    }
    fn put_meta(&mut self, meta: &VolumeMeta) -> Result<(), StoreError> {
        self.push(Op::Meta(meta.clone()));
        Ok(())
    }
    fn get_meta(&self) -> Result<Option<VolumeMeta>, StoreError> {
        Ok(self.view.meta.clone())
    }
    fn snapshot_image(&mut self, name: &str) -> Result<(), StoreError> {
        self.push(Op::Snapshot(name.to_owned()));
        Ok(())
    }
    fn snapshot_patch(&mut self, name: &str, b: BlockIndex, data: &[u8]) -> Result<(), StoreError> {
        self.push(Op::SnapshotPatch(name.to_owned(), b, data.to_vec()));
        Ok(())
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        if !self.pending.is_empty() {
            for op in std::mem::take(&mut self.pending) {
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
