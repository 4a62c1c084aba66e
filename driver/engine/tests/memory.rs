//! Issue #13, the engine half: memory follows what is dirty, not the
//! volume's size, and the freeze flip moves structures instead of making
//! volume-sized ones. Checked on 1 TiB volumes (2^28 blocks of 4 KiB) through
//! the engine's own upper bound on its bytes, `Primary::footprint`: no
//! timings here (`benches/freeze.rs` times the flip).

mod null_store;

use floe_engine::{Geometry, Mode, Primary, Replica, RoleGeneration};
use null_store::{connect, pair, ship, NullStore};

const BLOCK: usize = 4096;
const TIB_BLOCKS: u64 = 1 << 28;
/// 4 MiB write-intent regions, as the driver makes them.
const REGION_BLOCKS: u64 = 1024;

/// The bound `docs/engine-memory.md` states: a volume holds at most this
/// many bytes per dirty block above its fixed part, whatever the spread of
/// the blocks, through the peak of an epoch (frozen, shipped whole, its
/// manifest complete).
const C_BYTES_PER_DIRTY_BLOCK: u64 = 400;
/// The fixed part: the primary's own struct and two scratch blocks, and the
/// first node of each map once anything is dirty.
const FIXED_BYTES: u64 = 16 * 1024;

fn primary(blocks: u64, mode: Mode) -> Primary<NullStore> {
    let geo = Geometry::new(BLOCK, blocks, REGION_BLOCKS).expect("a valid geometry");
    Primary::create(NullStore::default(), geo, mode, RoleGeneration::default()).expect("the null store cannot fail")
}

fn write(p: &mut Primary<NullStore>, blocks: impl IntoIterator<Item = u64>) {
    let data = [0x5au8; BLOCK];
    for b in blocks {
        p.write(b * BLOCK as u64, &data).expect("in range");
    }
}

/// `n` blocks as far apart as they can be: each in its own bitmap chunk and
/// write-intent region while there are enough of those, the worst spread
/// for memory.
fn spread(n: u64) -> impl Iterator<Item = u64> {
    (0..n).map(move |i| i * (TIB_BLOCKS / n))
}

#[test]
fn a_terabyte_volume_with_nothing_dirty_holds_only_its_fixed_part() {
    for mode in Mode::ALL {
        let p = primary(TIB_BLOCKS, mode);
        assert!(
            p.footprint() <= FIXED_BYTES,
            "{}: {} bytes for an idle 1 TiB volume",
            mode.name(),
            p.footprint()
        );
    }
}

#[test]
fn freeze_moves_the_epoch_and_allocates_nothing() {
    for mode in Mode::ALL {
        let mut p = primary(TIB_BLOCKS, mode);
        write(&mut p, spread(1_000));
        if mode.streams_open_epoch() {
            // Half the epoch went out before the flip: its manifest entries
            // and shipped bits move too.
            connect(&mut p);
            assert_eq!(ship(&mut p, 500), (500, false));
        }
        let before = p.footprint();
        p.freeze(1).expect("no epoch is closing");
        assert_eq!(
            p.footprint(),
            before,
            "{}: the flip changed the volume's memory",
            mode.name()
        );
        assert_eq!(p.dirty_blocks(), 0);
    }
}

#[test]
fn memory_is_fixed_plus_c_per_dirty_block_at_the_worst_spread() {
    for n in [1, 64, 1_024, 4_096, 16_384] {
        let mut p = primary(TIB_BLOCKS, Mode::Continuous);
        write(&mut p, spread(n));
        p.freeze(1).expect("no epoch is closing");
        let frozen = p.footprint();
        connect(&mut p);
        assert_eq!(
            ship(&mut p, u64::MAX),
            (n, true),
            "the closing epoch ships whole and seals"
        );
        let sealed = p.footprint();
        for (state, bytes) in [("frozen", frozen), ("sealed", sealed)] {
            assert!(
                bytes <= FIXED_BYTES + C_BYTES_PER_DIRTY_BLOCK * n,
                "{n} dirty blocks, {state}: {bytes} bytes > {FIXED_BYTES} + {C_BYTES_PER_DIRTY_BLOCK} × {n}"
            );
        }
    }
}

#[test]
fn memory_does_not_grow_with_the_volume() {
    // The same 4,096 dirty blocks (one per 64 MiB) on a 1 TiB and a 1 PiB volume.
    let footprint = |blocks: u64| {
        let mut p = primary(blocks, Mode::Interval);
        write(&mut p, (0..4_096u64).map(|i| i << 14));
        p.freeze(1).expect("no epoch is closing");
        p.footprint()
    };
    assert_eq!(footprint(TIB_BLOCKS), footprint(TIB_BLOCKS << 10));
}

#[test]
fn a_replica_holds_a_fixed_part_plus_c_per_staged_block() {
    for n in [1, 1_024, 16_384] {
        let geo = Geometry::new(BLOCK, TIB_BLOCKS, REGION_BLOCKS).expect("a valid geometry");
        let mut p = primary(TIB_BLOCKS, Mode::Interval);
        let mut r = Replica::create(NullStore::default(), geo, 0, RoleGeneration::default())
            .expect("the null store cannot fail");
        write(&mut p, spread(n));
        p.freeze(1).expect("no epoch is closing");
        assert_eq!(pair(&mut p, &mut r), n);
        assert_eq!(r.staged_group(), Some(1), "the epoch is staged, awaiting the group");
        let bytes = r.footprint();
        assert!(
            bytes <= FIXED_BYTES + C_BYTES_PER_DIRTY_BLOCK * n,
            "{n} staged blocks: {bytes} bytes > {FIXED_BYTES} + {C_BYTES_PER_DIRTY_BLOCK} × {n}"
        );
    }
}
