//! A `VolumeStore` that keeps no block data: the image reads as zeroes,
//! writes to it, the side area and the write-intent record vanish, and the
//! staging remembers only which blocks are staged, reading them back as
//! zeroes (what a primary on this store ships). The metadata record is kept.
//! For measuring the engine's own time and memory on volumes far larger than
//! the machine's RAM; a volume on it cannot be reopened.

use std::collections::BTreeSet;

use floe_engine::{BlockIndex, LocalEpoch, StoreError, VolumeMeta, VolumeStore};

/// The store; see the module doc.
#[derive(Clone, Debug, Default)]
pub struct NullStore {
    meta: Option<VolumeMeta>,
    staged: BTreeSet<(LocalEpoch, BlockIndex)>,
}

impl VolumeStore for NullStore {
    fn read_image(&self, _b: BlockIndex, buf: &mut [u8]) -> Result<(), StoreError> {
        buf.fill(0);
        Ok(())
    }
    fn write_image(&mut self, _b: BlockIndex, _data: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    fn side_put(&mut self, _b: BlockIndex, _data: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    fn side_get(&self, _b: BlockIndex, _buf: &mut [u8]) -> Result<bool, StoreError> {
        Ok(false)
    }
    fn side_blocks(&self) -> Result<Vec<BlockIndex>, StoreError> {
        Ok(Vec::new())
    }
    fn side_clear(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    fn stage_put(&mut self, epoch: LocalEpoch, b: BlockIndex, _data: &[u8]) -> Result<(), StoreError> {
        self.staged.insert((epoch, b));
        Ok(())
    }
    fn stage_get(&self, epoch: LocalEpoch, b: BlockIndex, buf: &mut [u8]) -> Result<bool, StoreError> {
        buf.fill(0);
        Ok(self.staged.contains(&(epoch, b)))
    }
    fn stage_drop(&mut self, epoch: LocalEpoch) -> Result<(), StoreError> {
        self.staged.retain(|&(e, _)| e != epoch);
        Ok(())
    }
    fn stage_epochs(&self) -> Result<Vec<LocalEpoch>, StoreError> {
        let mut epochs: Vec<LocalEpoch> = self.staged.iter().map(|&(e, _)| e).collect();
        epochs.dedup();
        Ok(epochs)
    }
    // Retained points are not measured on this store: it keeps no undo set.
    fn undo_put(&mut self, _epoch: LocalEpoch, _b: BlockIndex, _data: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    fn undo_get(&self, _epoch: LocalEpoch, _b: BlockIndex, _buf: &mut [u8]) -> Result<bool, StoreError> {
        Ok(false)
    }
    fn undo_blocks(&self, _epoch: LocalEpoch) -> Result<Vec<BlockIndex>, StoreError> {
        Ok(Vec::new())
    }
    fn undo_drop(&mut self, _epoch: LocalEpoch) -> Result<(), StoreError> {
        Ok(())
    }
    fn undo_epochs(&self) -> Result<Vec<LocalEpoch>, StoreError> {
        Ok(Vec::new())
    }
    fn intent_set(&mut self, _region: u64, _on: bool) -> Result<(), StoreError> {
        Ok(())
    }
    fn intent_regions(&self) -> Result<Vec<u64>, StoreError> {
        Ok(Vec::new())
    }
    fn put_meta(&mut self, meta: &VolumeMeta) -> Result<(), StoreError> {
        self.meta = Some(meta.clone());
        Ok(())
    }
    fn get_meta(&self) -> Result<Option<VolumeMeta>, StoreError> {
        Ok(self.meta.clone())
    }
    fn snapshot_image(&mut self, _name: &str) -> Result<(), StoreError> {
        Ok(())
    }
    fn image_data_from(&self, _from: BlockIndex) -> Result<Option<(BlockIndex, BlockIndex)>, StoreError> {
        Ok(None)
    }
    fn snapshot_begin(&mut self, _name: &str) -> Result<(), StoreError> {
        Ok(())
    }
    fn snapshot_put(&mut self, _name: &str, _b: BlockIndex, _data: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    fn snapshot_finish(&mut self, _name: &str) -> Result<(), StoreError> {
        Ok(())
    }
    fn snapshot_abandon(&mut self, _name: &str) -> Result<(), StoreError> {
        Ok(())
    }
    fn snapshots_pending(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

use floe_engine::{Primary, Replica, Reply, ToPrimary, ToReplica};

/// Open a session and answer it as a replica that holds nothing yet.
#[allow(dead_code)] // not every user connects
pub fn connect(p: &mut Primary<NullStore>) {
    let ToReplica::Hello {
        generation,
        incarnation,
        session,
    } = p.connect()
    else {
        panic!("a session opens with Hello");
    };
    let welcome = Reply::Welcome {
        for_incarnation: incarnation,
        for_session: session,
        incarnation: 1,
        committed: 0,
        committed_group: 0,
        staged: None,
        resync_candidates: None,
        held: Vec::new(),
    };
    p.on_frame(ToPrimary {
        generation,
        reply: welcome,
    })
    .expect("the null store cannot fail");
}

/// Send frames of up to 256 blocks until `limit` blocks went out or nothing
/// is left to send; the blocks sent and whether a seal went out.
#[allow(dead_code)] // not every user ships
pub fn ship(p: &mut Primary<NullStore>, limit: u64) -> (u64, bool) {
    let (mut sent, mut sealed) = (0, false);
    while sent < limit {
        let max = (limit - sent).min(256) as usize;
        match p.poll_send(max).expect("the null store cannot fail") {
            Some(ToReplica::Blocks { blocks, .. }) => sent += blocks.len() as u64,
            Some(ToReplica::Sealed { .. }) => sealed = true,
            Some(_) => {}
            None => break,
        }
    }
    (sent, sealed)
}

/// Pair `p` with replica `r` and carry every frame across, both ways, until
/// neither has anything more to say; the blocks carried.
#[allow(dead_code)] // not every user pairs
pub fn pair(p: &mut Primary<NullStore>, r: &mut Replica<NullStore>) -> u64 {
    let mut blocks = 0;
    let mut next = Some(p.connect());
    loop {
        if let Some(frame) = next.take() {
            if let ToReplica::Blocks { blocks: b, .. } = &frame {
                blocks += b.len() as u64;
            }
            r.on_frame(frame).expect("the null store cannot fail");
        }
        for reply in r.take_to_primary() {
            p.on_frame(reply).expect("the null store cannot fail");
        }
        next = p.poll_send(256).expect("the null store cannot fail");
        if next.is_none() {
            return blocks;
        }
    }
}
