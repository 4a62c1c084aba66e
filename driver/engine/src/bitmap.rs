//! Block bitmaps: dirty, pending, sent, preserved, write intent, since-promotion.
//!
//! Sparse and two-level, so that memory follows the bits set, not the
//! volume's size. The index space is cut into chunks of 2^16 bits (256 MiB of
//! volume at 4 KiB blocks); an ordered map keyed by chunk number holds only
//! the chunks with a bit set. A chunk is a sorted list of 16-bit offsets while
//! it has at most 4,096 bits set — the list is then no larger than the bits —
//! and a `bitvec` bit box of 8 KiB above that; it turns back into a list
//! below 2,048 bits (the gap keeps a bit toggling at the edge from converting
//! every time) and is freed when it empties.
//!
//! So a bitmap of any length is made, moved and swapped in O(1) without
//! allocating ([`Bitmap::take_into`] is how an epoch flips), `count` and
//! `any` are O(1), `get` is O(log chunks), and `set` is O(log chunks) plus a
//! list shift of at most 8 KiB; it allocates only when a chunk appears, grows
//! its list or changes form. Heap use is at most about 2 bytes per bit set
//! plus one map entry and one allocation per chunk in use, and never more
//! than a dense bitmap's 8 KiB per chunk plus that entry
//! ([`SparseBitmap::heap_bytes`]).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::mem::size_of;
use std::ops::Range;

use bitvec::boxed::BitBox;
use bitvec::prelude::{BitVec, Lsb0};

use crate::mem;
use crate::types::BlockIndex;

/// The engine's block bitmap: chunks of 2^16 bits.
pub type Bitmap = SparseBitmap<16>;

/// A fixed-length bitmap indexed by block (or region) number, stored in
/// chunks of `2^SHIFT` bits (`4 <= SHIFT <= 16`); only chunks with a bit set
/// take memory. Tests use small chunks to reach every change of form.
#[derive(Clone, Debug, Default)]
pub struct SparseBitmap<const SHIFT: u32> {
    /// Number of bits.
    len: u64,
    /// Number of set bits.
    ones: u64,
    /// Chunks with at least one bit set, by chunk number.
    chunks: BTreeMap<u64, Chunk>,
}

/// The bits of one chunk; never empty while in the map.
#[derive(Clone, Debug)]
enum Chunk {
    /// Offsets of the set bits, ascending.
    List(Vec<u16>),
    /// One bit per offset, and how many are set.
    Bits { bits: BitBox<u64, Lsb0>, ones: u32 },
}

impl<const SHIFT: u32> SparseBitmap<SHIFT> {
    const CHUNK_BITS: u64 = 1 << SHIFT;
    /// A list this long takes as many bytes as the chunk's bits.
    const LIST_MAX: usize = (1usize << SHIFT) / 16;
    /// A bit box with fewer bits set turns back into a list.
    const LIST_MIN: usize = Self::LIST_MAX / 2;
    const SHAPE: () = assert!(
        SHIFT >= 4 && SHIFT <= 16,
        "chunk offsets are 16-bit and lists need room"
    );

    /// An all-clear bitmap of `len` bits; allocates nothing.
    pub fn new(len: u64) -> Self {
        let () = Self::SHAPE;
        SparseBitmap {
            len,
            ones: 0,
            chunks: BTreeMap::new(),
        }
    }

    /// Number of bits.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the bitmap has no bits at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bit `i`; out of range reads as clear.
    pub fn get(&self, i: BlockIndex) -> bool {
        if i >= self.len {
            return false;
        }
        let (k, off) = split::<SHIFT>(i);
        self.chunks.get(&k).is_some_and(|c| c.get(off))
    }

    /// Set or clear bit `i`, returning its previous value.
    ///
    /// Panics if `i` is out of range: callers validate indices at the edge.
    pub fn set(&mut self, i: BlockIndex, on: bool) -> bool {
        assert!(i < self.len, "bit {i} is outside a bitmap of {} bits", self.len);
        let (k, off) = split::<SHIFT>(i);
        let prev = if on {
            let c = self.chunks.entry(k).or_insert_with(|| Chunk::List(Vec::new()));
            c.insert(off, Self::LIST_MAX, Self::CHUNK_BITS)
        } else {
            let Some(c) = self.chunks.get_mut(&k) else {
                return false;
            };
            let prev = c.remove(off, Self::LIST_MIN);
            if c.count() == 0 {
                self.chunks.remove(&k);
            }
            prev
        };
        if prev != on {
            if on {
                self.ones += 1;
            } else {
                self.ones -= 1;
            }
        }
        prev
    }

    /// Set or clear every bit in `range`, clamped to the bitmap.
    pub fn set_range(&mut self, range: Range<BlockIndex>, on: bool) {
        let end = range.end.min(self.len);
        let start = range.start.min(end);
        if start == end {
            return;
        }
        let keys: Vec<u64> = if on {
            (start >> SHIFT..=(end - 1) >> SHIFT).collect()
        } else {
            // Clearing touches only the chunks that exist.
            self.chunks
                .range(start >> SHIFT..=(end - 1) >> SHIFT)
                .map(|(k, _)| *k)
                .collect()
        };
        for k in keys {
            let base = k << SHIFT;
            let lo = start.max(base) - base;
            let hi = end.min(base + Self::CHUNK_BITS) - base;
            let (lo, hi) = (to_usize(lo), to_usize(hi));
            let c = self.chunks.entry(k).or_insert_with(|| Chunk::List(Vec::new()));
            let before = c.count();
            c.set_range(lo..hi, on, Self::LIST_MAX, Self::LIST_MIN, Self::CHUNK_BITS);
            let after = c.count();
            self.ones = self.ones + after - before;
            if after == 0 {
                self.chunks.remove(&k);
            }
        }
    }

    /// Whether any bit is set.
    pub fn any(&self) -> bool {
        self.ones > 0
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.ones
    }

    /// Clear every bit, freeing every chunk.
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.ones = 0;
    }

    /// Set bits, ascending.
    pub fn iter_ones(&self) -> impl Iterator<Item = BlockIndex> + '_ {
        self.chunks.iter().flat_map(|(&k, c)| {
            let base = k << SHIFT;
            c.iter_ones().map(move |off| base + off as u64)
        })
    }

    /// First set bit at or after `from`.
    pub fn next_one(&self, from: BlockIndex) -> Option<BlockIndex> {
        if from >= self.len {
            return None;
        }
        let (k, off) = split::<SHIFT>(from);
        let mut rest = self.chunks.range(k..);
        let (&first_key, first) = rest.next()?;
        if first_key == k {
            if let Some(o) = first.next_one(usize::from(off)) {
                return Some((k << SHIFT) + o as u64);
            }
            let (&next_key, next) = rest.next()?;
            return Some((next_key << SHIFT) + next.first() as u64);
        }
        Some((first_key << SHIFT) + first.first() as u64)
    }

    /// `self |= other` (same length). O(chunks of `other`), plus their bits.
    pub fn union_with(&mut self, other: &Self) {
        debug_assert_eq!(self.len(), other.len());
        for (&k, theirs) in &other.chunks {
            match self.chunks.entry(k) {
                Entry::Vacant(e) => {
                    self.ones += theirs.count();
                    e.insert(theirs.clone());
                }
                Entry::Occupied(mut e) => {
                    let c = e.get_mut();
                    let before = c.count();
                    c.union(theirs, Self::LIST_MAX, Self::CHUNK_BITS);
                    self.ones = self.ones + c.count() - before;
                }
            }
        }
    }

    /// Move this bitmap's bits into `dest` (which takes this length) and
    /// leave `self` all clear: O(1) plus freeing what `dest` held, no
    /// allocation.
    pub fn take_into(&mut self, dest: &mut Self) {
        std::mem::swap(&mut self.chunks, &mut dest.chunks);
        std::mem::swap(&mut self.ones, &mut dest.ones);
        dest.len = self.len;
        self.clear();
    }

    /// Number of chunks in use (each costs a map entry and one allocation).
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// An upper bound on the heap bytes held (the struct itself excluded):
    /// the map's nodes and each chunk's list or bits. O(chunks).
    pub fn heap_bytes(&self) -> u64 {
        mem::map_bytes::<u64, Chunk>(self.chunks.len()) + self.chunks.values().map(Chunk::heap_bytes).sum::<u64>()
    }
}

impl<const SHIFT: u32> PartialEq for SparseBitmap<SHIFT> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.ones == other.ones && self.iter_ones().eq(other.iter_ones())
    }
}

impl<const SHIFT: u32> Eq for SparseBitmap<SHIFT> {}

impl Chunk {
    fn count(&self) -> u64 {
        match self {
            Chunk::List(v) => v.len() as u64,
            Chunk::Bits { ones, .. } => u64::from(*ones),
        }
    }

    fn get(&self, off: u16) -> bool {
        match self {
            Chunk::List(v) => v.binary_search(&off).is_ok(),
            Chunk::Bits { bits, .. } => bits[usize::from(off)],
        }
    }

    /// Set bit `off`, returning its previous value.
    fn insert(&mut self, off: u16, list_max: usize, chunk_bits: u64) -> bool {
        match self {
            Chunk::List(v) => {
                let Err(at) = v.binary_search(&off) else {
                    return true;
                };
                if v.len() < list_max {
                    v.insert(at, off);
                } else {
                    let mut bits = to_bits(v, chunk_bits);
                    bits.set(usize::from(off), true);
                    let ones = count_u32(v.len() + 1);
                    *self = Chunk::Bits { bits, ones };
                }
                false
            }
            Chunk::Bits { bits, ones } => {
                let prev = bits.replace(usize::from(off), true);
                if !prev {
                    *ones += 1;
                }
                prev
            }
        }
    }

    /// Clear bit `off`, returning its previous value.
    fn remove(&mut self, off: u16, list_min: usize) -> bool {
        let prev = match self {
            Chunk::List(v) => match v.binary_search(&off) {
                Ok(at) => {
                    v.remove(at);
                    true
                }
                Err(_) => false,
            },
            Chunk::Bits { bits, ones } => {
                let prev = bits.replace(usize::from(off), false);
                if prev {
                    *ones -= 1;
                }
                prev
            }
        };
        if prev {
            self.settle(list_min);
        }
        prev
    }

    fn set_range(&mut self, r: Range<usize>, on: bool, list_max: usize, list_min: usize, chunk_bits: u64) {
        if let Chunk::List(v) = self {
            let a = v.partition_point(|&o| usize::from(o) < r.start);
            let b = v.partition_point(|&o| usize::from(o) < r.end);
            if !on {
                v.drain(a..b);
            } else if v.len() - (b - a) + r.len() <= list_max {
                v.splice(a..b, r.clone().map(to_offset));
            } else {
                let bits = to_bits(v, chunk_bits);
                let ones = count_u32(v.len());
                *self = Chunk::Bits { bits, ones };
            }
        }
        if let Chunk::Bits { bits, ones } = self {
            let had = count_u32(bits[r.clone()].count_ones());
            bits[r.clone()].fill(on);
            *ones = *ones - had + if on { count_u32(r.len()) } else { 0 };
        }
        self.settle(list_min);
    }

    fn union(&mut self, other: &Chunk, list_max: usize, chunk_bits: u64) {
        if let (Chunk::List(mine), Chunk::List(theirs)) = (&*self, other) {
            let merged = merge(mine, theirs);
            if merged.len() <= list_max {
                *self = Chunk::List(merged);
                return;
            }
        }
        if let Chunk::List(v) = self {
            let bits = to_bits(v, chunk_bits);
            *self = Chunk::Bits { bits, ones: 0 };
        }
        if let Chunk::Bits { bits, ones } = self {
            match other {
                Chunk::List(theirs) => theirs.iter().for_each(|&o| bits.set(usize::from(o), true)),
                Chunk::Bits { bits: theirs, .. } => *bits |= theirs.as_bitslice(),
            }
            *ones = count_u32(bits.count_ones());
        }
    }

    /// After bits were cleared: a sparse bit box becomes a list again, and a
    /// list much shorter than its allocation gives the room back.
    fn settle(&mut self, list_min: usize) {
        match self {
            Chunk::Bits { bits, ones } if (*ones as usize) < list_min => {
                let mut v = Vec::with_capacity(*ones as usize);
                v.extend(bits.iter_ones().map(to_offset));
                *self = Chunk::List(v);
            }
            Chunk::List(v) if v.capacity() > 8 && v.len() <= v.capacity() / 4 => v.shrink_to(v.len() * 2),
            _ => {}
        }
    }

    fn iter_ones(&self) -> ChunkOnes<'_> {
        match self {
            Chunk::List(v) => ChunkOnes::List(v.iter()),
            Chunk::Bits { bits, .. } => ChunkOnes::Bits(bits.iter_ones()),
        }
    }

    fn first(&self) -> usize {
        self.next_one(0).expect("a chunk in the map has a bit set")
    }

    fn next_one(&self, from: usize) -> Option<usize> {
        match self {
            Chunk::List(v) => v[v.partition_point(|&o| usize::from(o) < from)..]
                .first()
                .map(|&o| usize::from(o)),
            Chunk::Bits { bits, .. } => bits[from..].first_one().map(|o| o + from),
        }
    }

    fn heap_bytes(&self) -> u64 {
        match self {
            Chunk::List(v) => mem::alloc_bytes(v.capacity() * size_of::<u16>()),
            Chunk::Bits { bits, .. } => mem::alloc_bytes(std::mem::size_of_val(bits.as_raw_slice())),
        }
    }
}

/// The set bits of one chunk, as offsets.
enum ChunkOnes<'a> {
    List(std::slice::Iter<'a, u16>),
    Bits(bitvec::slice::IterOnes<'a, u64, Lsb0>),
}

impl Iterator for ChunkOnes<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            ChunkOnes::List(it) => it.next().map(|&o| usize::from(o)),
            ChunkOnes::Bits(it) => it.next(),
        }
    }
}

fn split<const SHIFT: u32>(i: u64) -> (u64, u16) {
    (i >> SHIFT, to_offset(to_usize(i & ((1 << SHIFT) - 1))))
}

fn to_bits(list: &[u16], chunk_bits: u64) -> BitBox<u64, Lsb0> {
    let mut bits = BitVec::<u64, Lsb0>::repeat(false, to_usize(chunk_bits));
    for &o in list {
        bits.set(usize::from(o), true);
    }
    bits.into_boxed_bitslice()
}

fn merge(a: &[u16], b: &[u16]) -> Vec<u16> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        out.push(x.min(y));
        i += usize::from(x <= y);
        j += usize::from(y <= x);
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

fn to_offset(o: usize) -> u16 {
    u16::try_from(o).expect("chunk offsets are below 2^16")
}

fn count_u32(n: usize) -> u32 {
    u32::try_from(n).expect("a chunk holds at most 2^16 bits")
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
        Union(Vec<u64>),
    }

    /// Indices drawn near chunk edges and at random, so that chunks fill up,
    /// change form and empty again.
    fn index(len: u64, chunk: u64) -> impl Strategy<Value = u64> {
        let hi = len.max(1);
        prop_oneof![
            0..hi,
            (0..hi.div_ceil(chunk), 0..8u64).prop_map(move |(k, d)| (k * chunk + d).min(hi - 1)),
            (1..=hi.div_ceil(chunk), 1..8u64).prop_map(move |(k, d)| (k * chunk).saturating_sub(d).min(hi - 1)),
        ]
    }

    fn op(len: u64, chunk: u64) -> impl Strategy<Value = Op> {
        let hi = len + 3;
        prop_oneof![
            6 => (index(len, chunk), any::<bool>()).prop_map(|(i, b)| Op::Set(i, b)),
            2 => (0..hi, 0..hi, any::<bool>()).prop_map(|(a, b, on)| Op::Range(a, b, on)),
            2 => (index(len, chunk), 0..chunk * 2, any::<bool>()).prop_map(|(a, n, on)| Op::Range(a, a + n, on)),
            1 => Just(Op::Clear),
            1 => Just(Op::Take),
            1 => proptest::collection::vec(index(len, chunk), 0..40).prop_map(Op::Union),
        ]
    }

    /// Runs `ops` on a sparse bitmap and on the dense `BitVec` the engine
    /// used before, comparing every observable after each step.
    fn matches_dense<const SHIFT: u32>(len: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut bm = SparseBitmap::<SHIFT>::new(len);
        let mut dense: BitVec<u64, Lsb0> = BitVec::repeat(false, len as usize);
        let mut taken = SparseBitmap::<SHIFT>::new(len);
        for o in ops {
            match o {
                Op::Set(i, on) => {
                    if i < len {
                        prop_assert_eq!(bm.set(i, on), dense.replace(i as usize, on));
                    }
                }
                Op::Range(a, b, on) => {
                    bm.set_range(a..b, on);
                    let e = (b as usize).min(dense.len());
                    let s = (a as usize).min(e);
                    dense[s..e].fill(on);
                }
                Op::Clear => {
                    bm.clear();
                    dense.fill(false);
                }
                Op::Take => {
                    let before: Vec<u64> = bm.iter_ones().collect();
                    bm.take_into(&mut taken);
                    prop_assert_eq!(taken.iter_ones().collect::<Vec<_>>(), before);
                    prop_assert_eq!(taken.count(), dense.count_ones() as u64);
                    prop_assert_eq!(taken.len(), len);
                    dense.fill(false);
                }
                Op::Union(idx) => {
                    let mut other = SparseBitmap::<SHIFT>::new(len);
                    for i in idx.into_iter().filter(|&i| i < len) {
                        other.set(i, true);
                        dense.set(i as usize, true);
                    }
                    // Each form of chunk meets each form on the other side.
                    other.union_with(&taken);
                    for i in taken.iter_ones() {
                        dense.set(i as usize, true);
                    }
                    bm.union_with(&other);
                }
            }
            let ones: Vec<u64> = dense.iter_ones().map(|i| i as u64).collect();
            prop_assert_eq!(bm.iter_ones().collect::<Vec<_>>(), ones.clone());
            prop_assert_eq!(bm.count(), ones.len() as u64);
            prop_assert_eq!(bm.any(), !ones.is_empty());
            prop_assert_eq!(bm.len(), len);
            let chunk = 1u64 << SHIFT;
            let mut probes = vec![0, len / 2, len.saturating_sub(1), len, len + 5];
            probes.extend(ones.iter().take(3).flat_map(|&i| [i, i + 1, (i | (chunk - 1)) + 1]));
            for probe in probes {
                prop_assert_eq!(bm.get(probe), dense.get(probe as usize).is_some_and(|b| *b));
                prop_assert_eq!(bm.next_one(probe), ones.iter().copied().find(|&i| i >= probe));
            }
            // No chunk outlives its last bit, and each keeps the form and the
            // room its count calls for: the memory bound rests on that.
            prop_assert_eq!(bm.chunks.values().map(Chunk::count).sum::<u64>(), bm.count());
            for c in bm.chunks.values() {
                prop_assert!(c.count() > 0);
                match c {
                    Chunk::List(v) => {
                        prop_assert!(v.len() <= SparseBitmap::<SHIFT>::LIST_MAX);
                        prop_assert!(
                            v.capacity() <= (4 * v.len()).max(8),
                            "{} slots for {}",
                            v.capacity(),
                            v.len()
                        );
                    }
                    Chunk::Bits { bits, ones } => {
                        prop_assert!(*ones as usize >= SparseBitmap::<SHIFT>::LIST_MIN);
                        prop_assert_eq!(bits.count_ones(), *ones as usize);
                    }
                }
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn sparse_bitmap_matches_the_dense_one_with_tiny_chunks(
            len in 0u64..300,
            ops in proptest::collection::vec(op(300, 16), 0..80),
        ) {
            matches_dense::<4>(len, ops)?;
        }

        #[test]
        fn sparse_bitmap_matches_the_dense_one_with_small_chunks(
            len in 0u64..2_000,
            ops in proptest::collection::vec(op(2_000, 256), 0..80),
        ) {
            matches_dense::<8>(len, ops)?;
        }

        #[test]
        fn sparse_bitmap_matches_the_dense_one_with_engine_chunks(
            len in 0u64..300_000,
            ops in proptest::collection::vec(op(300_000, 1 << 16), 0..40),
        ) {
            matches_dense::<16>(len, ops)?;
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
        assert_eq!(bm.heap_bytes(), 0);
    }

    #[test]
    fn a_volume_sized_bitmap_costs_nothing_until_bits_are_set() {
        // 1 TiB of 4 KiB blocks.
        let mut bm = Bitmap::new(1 << 28);
        assert_eq!(bm.heap_bytes(), 0);
        for i in 0..1_000u64 {
            bm.set(i * 268_435, true);
        }
        assert_eq!(bm.count(), 1_000);
        assert!(bm.chunks() <= 1_000);
        // A few bytes per bit plus one map entry and one allocation per chunk.
        assert!(bm.heap_bytes() <= 1_000 * 2 * 2 + bm.chunks() as u64 * 200);
        let mut dest = Bitmap::new(1 << 28);
        bm.take_into(&mut dest);
        assert_eq!(bm.heap_bytes(), 0);
        assert_eq!(dest.count(), 1_000);
    }

    #[test]
    fn a_full_chunk_is_bits_and_an_emptied_one_is_freed() {
        let mut bm = Bitmap::new(1 << 20);
        bm.set_range(0..(1 << 16), true);
        assert_eq!(bm.chunks(), 1);
        // 8 KiB of bits, not a 128 KiB list.
        assert!(bm.heap_bytes() < 9 * 1024);
        for i in 0..(1u64 << 16) {
            assert!(bm.set(i, false));
        }
        assert_eq!((bm.count(), bm.chunks(), bm.heap_bytes()), (0, 0, 0));
    }
}
