//! Memory accounting: upper bounds on the heap bytes of the engine's
//! structures, summed by `Primary::footprint` and `Replica::footprint`.
//!
//! Bounds, not exact figures: the standard library does not expose its
//! allocations, so each structure is charged the most its shape can take
//! (nodes at their minimum fill, every allocation rounded up and given an
//! allocator header). `docs/engine-memory.md` checks them against the
//! process's resident memory.

use std::mem::size_of;

/// Allocation granularity and per-allocation header assumed (glibc malloc:
/// 16-byte chunks, an 8-byte header rounded up).
const GRAIN: u64 = 16;

/// Bytes one heap allocation of `n` bytes may take.
pub(crate) fn alloc_bytes(n: usize) -> u64 {
    if n == 0 {
        return 0;
    }
    (n as u64).next_multiple_of(GRAIN) + GRAIN
}

/// Bytes of a `Vec<T>` or `VecDeque<T>` buffer of `capacity` elements.
pub(crate) fn vec_bytes<T>(capacity: usize) -> u64 {
    alloc_bytes(capacity * size_of::<T>())
}

/// Bytes the nodes of a `BTreeMap<K, V>` (or `BTreeSet<K>`, `V = ()`) with
/// `n` entries may take. The standard B-tree keeps at most 11 entries per
/// node and, the root aside, at least 5; a leaf holds a parent pointer, two
/// 16-bit counters and the key and value arrays, an internal node also 12
/// child pointers.
pub(crate) fn map_bytes<K, V>(n: usize) -> u64 {
    if n == 0 {
        return 0;
    }
    let leaf = alloc_bytes(32 + 11 * (size_of::<K>() + size_of::<V>()));
    let internal = leaf + 12 * size_of::<usize>() as u64;
    let leaves = n.div_ceil(5) as u64;
    let mut level = leaves;
    let mut internals = 0;
    while level > 1 {
        level = level.div_ceil(6);
        internals += level;
    }
    leaves * leaf + internals * internal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_costs_nothing() {
        assert_eq!(alloc_bytes(0), 0);
        assert_eq!(map_bytes::<u64, u64>(0), 0);
        assert_eq!(vec_bytes::<u64>(0), 0);
    }

    #[test]
    fn map_bound_grows_linearly() {
        let one = map_bytes::<u64, u64>(1);
        assert!(one >= 32 + 11 * 16);
        let big = map_bytes::<u64, u64>(1_000_000);
        // A fifth of a leaf per entry, plus at most a fifth more above.
        assert!(big <= 200_000 * (one + 96) * 6 / 5);
        assert!(big >= 1_000_000 * 16);
    }
}
