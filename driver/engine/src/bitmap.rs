//! Block bitmaps: dirty, closing-epoch members, pending, preserved, write intent.
//!
//! A thin layer over `bitvec` so the state machines speak in block indices and
//! never allocate on the host write path: `set`/`get` are O(1), and a
//! [`Bitmap::take_into`] swaps storage instead of cloning it.

use bitvec::prelude::{BitVec, Lsb0};

use crate::types::BlockIndex;

/// A fixed-length bitmap indexed by block (or region) number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bitmap {
    bits: BitVec<u64, Lsb0>,
}

impl Bitmap {
    /// An all-clear bitmap of `len` bits.
    pub fn new(len: u64) -> Self {
        Bitmap {
            bits: BitVec::repeat(false, to_usize(len)),
        }
    }

    /// Number of bits.
    pub fn len(&self) -> u64 {
        self.bits.len() as u64
    }

    /// Whether the bitmap has no bits at all.
    pub fn is_empty(&self) -> bool {
        self.bits.is_empty()
    }

    /// Bit `i`; out of range reads as clear.
    pub fn get(&self, i: BlockIndex) -> bool {
        self.bits.get(to_usize(i)).is_some_and(|b| *b)
    }

    /// Set or clear bit `i`, returning its previous value.
    ///
    /// Panics if `i` is out of range: callers validate indices at the edge.
    pub fn set(&mut self, i: BlockIndex, on: bool) -> bool {
        self.bits.replace(to_usize(i), on)
    }

    /// Set or clear every bit in `range`, clamped to the bitmap.
    pub fn set_range(&mut self, range: std::ops::Range<BlockIndex>, on: bool) {
        let end = to_usize(range.end).min(self.bits.len());
        let start = to_usize(range.start).min(end);
        self.bits[start..end].fill(on);
    }

    /// Whether any bit is set.
    pub fn any(&self) -> bool {
        self.bits.any()
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.bits.count_ones() as u64
    }

    /// Clear every bit.
    pub fn clear(&mut self) {
        self.bits.fill(false);
    }

    /// Set bits, ascending.
    pub fn iter_ones(&self) -> impl Iterator<Item = BlockIndex> + '_ {
        self.bits.iter_ones().map(|i| i as BlockIndex)
    }

    /// First set bit at or after `from`.
    pub fn next_one(&self, from: BlockIndex) -> Option<BlockIndex> {
        let from = to_usize(from);
        if from >= self.bits.len() {
            return None;
        }
        self.bits[from..].first_one().map(|i| (i + from) as BlockIndex)
    }

    /// `self |= other` (same length).
    pub fn union_with(&mut self, other: &Bitmap) {
        debug_assert_eq!(self.len(), other.len());
        self.bits |= other.bits.as_bitslice();
    }

    /// Move this bitmap's bits into `dest` and leave `self` all clear, without
    /// allocating when both have the same length.
    pub fn take_into(&mut self, dest: &mut Bitmap) {
        std::mem::swap(&mut self.bits, &mut dest.bits);
        self.bits.resize(dest.bits.len(), false);
        self.bits.fill(false);
    }
}

fn to_usize(i: u64) -> usize {
    usize::try_from(i).expect("block indices fit in usize on supported targets")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Set(u64, bool),
        Range(u64, u64, bool),
        Clear,
        Take,
    }

    fn op(len: u64) -> impl Strategy<Value = Op> {
        let hi = len + 3;
        prop_oneof![
            (0..len.max(1), any::<bool>()).prop_map(|(i, b)| Op::Set(i, b)),
            (0..hi, 0..hi, any::<bool>()).prop_map(|(a, b, on)| Op::Range(a, b, on)),
            Just(Op::Clear),
            Just(Op::Take),
        ]
    }

    proptest! {
        #[test]
        fn bitmap_matches_a_vec_of_bools(len in 0u64..200, ops in proptest::collection::vec(op(200), 0..60)) {
            let mut bm = Bitmap::new(len);
            let mut model = vec![false; len as usize];
            let mut taken = Bitmap::new(len);
            for o in ops {
                match o {
                    Op::Set(i, on) if i < len => {
                        let prev = bm.set(i, on);
                        prop_assert_eq!(prev, model[i as usize]);
                        model[i as usize] = on;
                    }
                    Op::Set(..) => {}
                    Op::Range(a, b, on) => {
                        bm.set_range(a..b, on);
                        let e = (b as usize).min(model.len());
                        let s = (a as usize).min(e);
                        model[s..e].iter_mut().for_each(|x| *x = on);
                    }
                    Op::Clear => { bm.clear(); model.iter_mut().for_each(|x| *x = false); }
                    Op::Take => {
                        let before: Vec<u64> = bm.iter_ones().collect();
                        bm.take_into(&mut taken);
                        prop_assert_eq!(taken.iter_ones().collect::<Vec<_>>(), before);
                        prop_assert_eq!(taken.len(), len);
                        model.iter_mut().for_each(|x| *x = false);
                    }
                }
                let ones: Vec<u64> = model.iter().enumerate().filter(|(_, b)| **b).map(|(i, _)| i as u64).collect();
                prop_assert_eq!(bm.iter_ones().collect::<Vec<_>>(), ones.clone());
                prop_assert_eq!(bm.count(), ones.len() as u64);
                prop_assert_eq!(bm.any(), !ones.is_empty());
                prop_assert_eq!(bm.len(), len);
                for probe in [0, len / 2, len.saturating_sub(1), len, len + 5] {
                    prop_assert_eq!(bm.get(probe), model.get(probe as usize).copied().unwrap_or(false));
                    prop_assert_eq!(bm.next_one(probe), ones.iter().copied().find(|&i| i >= probe));
                }
            }
        }
    }

    #[test]
    fn empty_bitmap_is_inert() {
        let mut bm = Bitmap::new(0);
        assert!(bm.is_empty() && !bm.any());
        bm.set_range(0..10, true);
        assert_eq!(bm.count(), 0);
        assert_eq!(bm.next_one(0), None);
        assert!(!bm.get(0));
    }
}
