//! The reference model: acknowledged writes replayed into flat images, with a
//! copy kept at every freeze point. It shares no code with the engine.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone)]
pub struct Reference {
    pub block_size: usize,
    pub blocks: u64,
    /// Per member: content as the host was told it is.
    pub live: Vec<Vec<u8>>,
    /// Per member: blocks written since the member's last flush.
    pub unflushed: Vec<BTreeSet<u64>>,
    /// Group epoch → every member's image at that freeze point.
    pub freezes: BTreeMap<u64, Vec<Vec<u8>>>,
    /// Per member and block: the group epoch that was open at its last write.
    pub write_group: Vec<Vec<u64>>,
    /// Per member and block: number of writes (for the coalescing bound).
    pub writes: Vec<Vec<u64>>,
    /// Per member and block: the group epoch open at its last write that a
    /// power cut interrupted (never acknowledged; it may or may not have
    /// reached the disk or the write-intent record).
    pub attempted_group: Vec<Vec<u64>>,
}

impl Reference {
    pub fn new(members: usize, block_size: usize, blocks: u64) -> Self {
        let size = block_size * blocks as usize;
        Reference {
            block_size,
            blocks,
            live: vec![vec![0; size]; members],
            unflushed: vec![BTreeSet::new(); members],
            freezes: BTreeMap::new(),
            write_group: vec![vec![0; blocks as usize]; members],
            writes: vec![vec![0; blocks as usize]; members],
            attempted_group: vec![vec![0; blocks as usize]; members],
        }
    }

    fn touched(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let bs = self.block_size as u64;
        offset / bs..(offset + len).div_ceil(bs)
    }

    /// An acknowledged write (`None` = zeroes) while group epoch `open` is open.
    pub fn write(&mut self, m: usize, offset: u64, len: u64, data: Option<&[u8]>, open: u64) {
        let range = offset as usize..(offset + len) as usize;
        match data {
            Some(d) => self.live[m][range].copy_from_slice(d),
            None => self.live[m][range].fill(0),
        }
        for b in self.touched(offset, len) {
            self.unflushed[m].insert(b);
            self.write_group[m][b as usize] = open;
            self.writes[m][b as usize] += 1;
        }
    }

    pub fn flush(&mut self, m: usize) {
        self.unflushed[m].clear();
    }

    /// Freeze point `group` (the caller flushed every member that is up).
    pub fn freeze(&mut self, group: u64) {
        self.freezes.insert(group, self.live.clone());
    }

    /// Image of every member at `group` (0: the empty volumes).
    pub fn image_at(&self, group: u64) -> Option<Vec<Vec<u8>>> {
        if group == 0 {
            return Some(vec![vec![0; self.block_size * self.blocks as usize]; self.live.len()]);
        }
        self.freezes.get(&group).cloned()
    }

    /// I2 after a primary crash: every block not written since the last flush
    /// must read back as acknowledged. Blocks written since may hold anything
    /// (a torn write); the model adopts what the volume now holds for them.
    pub fn adopt_after_crash(&mut self, m: usize, actual: &[u8], open: u64) -> Result<(), String> {
        let bs = self.block_size;
        for b in 0..self.blocks as usize {
            let r = b * bs..(b + 1) * bs;
            if self.unflushed[m].contains(&(b as u64)) {
                if self.live[m][r.clone()] != actual[r.clone()] {
                    self.live[m][r.clone()].copy_from_slice(&actual[r]);
                    self.write_group[m][b] = open;
                    self.writes[m][b] += 1;
                }
            } else if self.live[m][r.clone()] != actual[r.clone()] {
                return Err(format!("I2: member {m} block {b} lost a flushed write across a crash"));
            }
        }
        self.unflushed[m].clear();
        Ok(())
    }
}
