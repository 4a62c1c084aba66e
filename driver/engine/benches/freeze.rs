//! Freeze flip time and engine memory on a 1 TiB volume (issue #13).
//!
//! A primary over a store that keeps no block data (`tests/null_store`), 2^28
//! tracking blocks of 4 KiB, 4 MiB write-intent regions as the driver uses.
//! Prints a markdown section for `docs/benchmarks.md` on stdout (progress on
//! stderr): the freeze flip (`Primary::freeze`, the one engine call made
//! while the file systems are frozen) timed over many freezes, and the
//! volume's memory (`Primary::footprint`, checked against the process's
//! resident memory) at several dirty counts and spreads, from which the
//! constant `c` of `memory <= fixed + c × dirty blocks` is read.
//!
//! `cargo bench -p floe-engine --bench freeze`; `FLOE_BENCH_FREEZES` sets the
//! number of timed freezes per row (default 200).

// A benchmark reads the clock, the environment and /proc; the engine may not.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

#[path = "../tests/null_store/mod.rs"]
mod null_store;

use std::time::{Duration, Instant};

use floe_engine::{Geometry, Mode, Primary, Replica, RoleGeneration};
use null_store::{connect, pair, ship, NullStore};

const BLOCK: usize = 4096;
const BLOCKS: u64 = 1 << 28;
const REGION_BLOCKS: u64 = 1024;
/// 1 GiB of 4 KiB blocks.
const GIB_DIRTY: u64 = 1 << 18;
const TARGET_FLIP_P99: Duration = Duration::from_millis(1);
const TARGET_MEMORY: u64 = 64 << 20;
const MIB: f64 = 1024.0 * 1024.0;

/// How the dirty blocks lie on the volume.
#[derive(Clone, Copy)]
enum Spread {
    /// Uniformly at random, distinct.
    Uniform,
    /// Evenly strided: as many bitmap chunks and intent regions as can be.
    Strided,
    /// Runs of 256 blocks (1 MiB extents) at random places.
    Extents,
}

impl Spread {
    fn name(self) -> &'static str {
        match self {
            Spread::Uniform => "uniform",
            Spread::Strided => "strided",
            Spread::Extents => "1 MiB extents",
        }
    }

    /// `n` distinct blocks of the volume, ascending.
    fn blocks(self, n: u64, seed: u64) -> Vec<u64> {
        let mut rng = SplitMix(seed);
        let mut out: Vec<u64> = match self {
            Spread::Uniform => {
                let mut v = Vec::with_capacity(n as usize);
                while (v.len() as u64) < n {
                    let missing = n - v.len() as u64;
                    v.extend((0..missing).map(|_| rng.below(BLOCKS)));
                    v.sort_unstable();
                    v.dedup();
                }
                return v;
            }
            Spread::Strided => (0..n).map(|i| i * (BLOCKS / n)).collect(),
            Spread::Extents => {
                let runs = n.div_ceil(256);
                let slots = BLOCKS / 256;
                let mut starts: Vec<u64> = Vec::new();
                while (starts.len() as u64) < runs {
                    starts.extend((0..runs - starts.len() as u64).map(|_| rng.below(slots)));
                    starts.sort_unstable();
                    starts.dedup();
                }
                starts.iter().flat_map(|s| s * 256..s * 256 + 256).collect()
            }
        };
        out.truncate(n as usize);
        out
    }
}

/// splitmix64: a small, seeded, reproducible generator.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

fn primary(mode: Mode) -> Primary<NullStore> {
    let geo = Geometry::new(BLOCK, BLOCKS, REGION_BLOCKS).expect("a valid geometry");
    Primary::create(NullStore::default(), geo, mode, RoleGeneration::default()).expect("the null store cannot fail")
}

fn write(p: &mut Primary<NullStore>, blocks: &[u64]) {
    let data = [0xa5u8; BLOCK];
    for &b in blocks {
        p.write(b * BLOCK as u64, &data).expect("in range");
    }
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn micros(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e6)
}

struct FlipRow {
    what: String,
    /// Engine time of one 4 KiB host write while the dirty blocks were written.
    write: Duration,
    freezes: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// Time `freezes` flips of a volume with `dirty` blocks (uniform), each undone
/// by an abort that makes the epoch's blocks dirty again; with `shipped_first`
/// that many of them go out in the open epoch before each flip (continuous).
fn time_flips(mode: Mode, dirty: u64, shipped_first: u64, freezes: usize) -> FlipRow {
    let mut p = primary(mode);
    let blocks = Spread::Uniform.blocks(dirty, 7);
    let t = Instant::now();
    write(&mut p, &blocks);
    let write = t.elapsed() / dirty as u32;
    if shipped_first > 0 {
        connect(&mut p);
    }
    let mut times = Vec::with_capacity(freezes);
    for g in 1..=freezes as u64 {
        if shipped_first > 0 {
            let (sent, _) = ship(&mut p, shipped_first);
            assert_eq!(sent, shipped_first, "the open epoch ships before the flip");
        }
        let t = Instant::now();
        let local = p.freeze(g).expect("no epoch is closing");
        times.push(t.elapsed());
        std::hint::black_box(local);
        p.abort(g).expect("the null store cannot fail");
        p.take_events();
        assert_eq!(
            p.dirty_blocks(),
            dirty,
            "an abort makes every block of the epoch dirty again"
        );
    }
    times.sort_unstable();
    let what = if shipped_first > 0 {
        format!("{} dirty, {} of them shipped before the flip", dirty, shipped_first)
    } else {
        format!("{dirty} dirty, none shipped")
    };
    FlipRow {
        what: format!("{}: {what}", mode.name()),
        write,
        freezes,
        p50: percentile(&times, 0.50),
        p99: percentile(&times, 0.99),
        max: times[times.len() - 1],
    }
}

struct MemRow {
    spread: Spread,
    dirty: u64,
    fixed: u64,
    open: u64,
    frozen: u64,
    sealed: u64,
}

/// Footprints of a fresh volume, then with `dirty` blocks written, just after
/// the flip, and once the closing epoch went out whole and sealed (its whole
/// manifest built): the most one epoch of that many blocks holds.
fn memory(spread: Spread, dirty: u64) -> MemRow {
    let blocks = spread.blocks(dirty, 11);
    let mut p = primary(Mode::Interval);
    let fixed = p.footprint();
    write(&mut p, &blocks);
    let open = p.footprint();
    p.freeze(1).expect("no epoch is closing");
    let frozen = p.footprint();
    connect(&mut p);
    let (sent, sealed) = ship(&mut p, u64::MAX);
    assert!(sent == dirty && sealed, "the closing epoch ships whole");
    MemRow {
        spread,
        dirty,
        fixed,
        open,
        frozen,
        sealed: p.footprint(),
    }
}

/// Footprints of a fresh replica and of one holding an epoch of `dirty`
/// blocks (uniform) staged, awaiting the group's decision.
fn replica_memory(dirty: u64) -> (u64, u64) {
    let geo = Geometry::new(BLOCK, BLOCKS, REGION_BLOCKS).expect("a valid geometry");
    let mut r =
        Replica::create(NullStore::default(), geo, 0, RoleGeneration::default()).expect("the null store cannot fail");
    let fixed = r.footprint();
    let mut p = primary(Mode::Interval);
    write(&mut p, &Spread::Uniform.blocks(dirty, 13));
    p.freeze(1).expect("no epoch is closing");
    assert_eq!(pair(&mut p, &mut r), dirty, "the epoch crosses whole");
    assert_eq!(r.staged_group(), Some(1), "the epoch is staged");
    (fixed, r.footprint())
}

fn main() {
    let freezes: usize = std::env::var("FLOE_BENCH_FREEZES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
        .max(100);

    // Resident memory first, while the heap is fresh: one 1 TiB volume with
    // 1 GiB dirty (uniform), frozen and its epoch shipped whole.
    eprintln!("freeze bench: resident memory of one volume");
    let blocks = Spread::Uniform.blocks(GIB_DIRTY, 3);
    let (rss_before, _) = rss();
    let mut p = primary(Mode::Interval);
    write(&mut p, &blocks);
    p.freeze(1).expect("no epoch is closing");
    let (rss_frozen, _) = rss();
    let frozen_footprint = p.footprint();
    connect(&mut p);
    let (sent, sealed) = ship(&mut p, u64::MAX);
    assert!(sent == GIB_DIRTY && sealed, "the closing epoch ships whole");
    let (rss_sealed, hwm) = rss();
    let sealed_footprint = p.footprint();
    drop(p);
    drop(blocks);

    eprintln!("freeze bench: footprints");
    let mut mem_rows = Vec::new();
    for spread in [Spread::Uniform, Spread::Strided, Spread::Extents] {
        for dirty in [1 << 10, 1 << 14, GIB_DIRTY] {
            mem_rows.push(memory(spread, dirty));
        }
    }

    eprintln!("freeze bench: the replica");
    let replica_rows: Vec<(u64, u64, u64)> = [1 << 10, 1 << 14, GIB_DIRTY]
        .into_iter()
        .map(|n| {
            let (fixed, staged) = replica_memory(n);
            (n, fixed, staged)
        })
        .collect();

    eprintln!("freeze bench: {freezes} flips per row");
    let flips = [
        time_flips(Mode::Interval, GIB_DIRTY, 0, freezes),
        time_flips(Mode::Continuous, GIB_DIRTY, GIB_DIRTY / 2, freezes),
        time_flips(Mode::Interval, 1 << 10, 0, freezes),
    ];

    let command =
        std::env::var("FLOE_BENCH_COMMAND").unwrap_or_else(|_| "cargo bench -p floe-engine --bench freeze".into());
    println!();
    println!("## Engine: freeze flip and memory on a 1 TiB volume");
    println!();
    println!(
        "Engine only: `{command}` (`driver/engine/benches/freeze.rs`). One primary over a store that keeps \
         no block data, 2^28 blocks of 4 KiB (1 TiB), 4 MiB write-intent regions; the dirty blocks are 4 KiB \
         host writes. The flip is `Primary::freeze`, the one engine call made while the file systems are frozen; \
         each timed flip is undone by an abort (untimed) that makes the epoch's blocks dirty again. Memory is \
         `Primary::footprint`, the engine's upper bound on its bytes for the volume (bitmaps, manifests, \
         write-intent record, queues, scratch blocks), checked against the process's resident memory. \
         `docs/engine-memory.md` explains the bound."
    );
    println!();
    println!("### Freeze flip");
    println!();
    println!(
        "*host write*: the engine's time per 4 KiB host write while the dirty blocks were written \
         (store work excluded: the store keeps nothing), for scale."
    );
    println!();
    println!("| volume state at the flip | flips | p50 (µs) | p99 (µs) | max (µs) | host write (ns) |");
    println!("|---|--:|--:|--:|--:|--:|");
    for r in &flips {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.what,
            r.freezes,
            micros(r.p50),
            micros(r.p99),
            micros(r.max),
            r.write.as_nanos()
        );
    }
    println!();
    println!("### Memory of the volume (`Primary::footprint`)");
    println!();
    println!(
        "*fixed*: the fresh volume; *open*: the blocks written, nothing shipped; *frozen*: just after the flip; \
         *sealed*: the closing epoch shipped whole and sealed, its full manifest held (the peak of an epoch). \
         *c* = (sealed − fixed) / dirty blocks."
    );
    println!();
    println!("| spread | dirty blocks | fixed (KiB) | open (MiB) | frozen (MiB) | sealed (MiB) | c (bytes per dirty block) |");
    println!("|---|--:|--:|--:|--:|--:|--:|");
    for r in &mem_rows {
        println!(
            "| {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.1} |",
            r.spread.name(),
            r.dirty,
            r.fixed as f64 / 1024.0,
            r.open as f64 / MIB,
            r.frozen as f64 / MIB,
            r.sealed as f64 / MIB,
            (r.sealed - r.fixed) as f64 / r.dirty as f64
        );
    }
    println!();
    println!(
        "The replica of the same volume (`Replica::footprint`), the epoch (uniform) staged and awaiting the \
         group's decision:"
    );
    println!();
    println!("| staged blocks | fixed (KiB) | staged (MiB) | c (bytes per staged block) |");
    println!("|--:|--:|--:|--:|");
    for &(n, fixed, staged) in &replica_rows {
        println!(
            "| {n} | {:.1} | {:.2} | {:.1} |",
            fixed as f64 / 1024.0,
            staged as f64 / MIB,
            (staged - fixed) as f64 / n as f64
        );
    }
    let c_max = mem_rows
        .iter()
        .map(|r| (r.sealed - r.fixed) as f64 / r.dirty as f64)
        .fold(0.0, f64::max);
    println!();
    println!(
        "Resident memory of the process, 1 GiB dirty (uniform): frozen {:.1} MiB over the baseline (footprint \
         {:.1} MiB), sealed {:.1} MiB over it (footprint {:.1} MiB); peak {:.1} MiB over it, which includes the \
         `Sealed` frame's copy of the manifest, handed to the caller.",
        rss_frozen.saturating_sub(rss_before) as f64 / MIB,
        frozen_footprint as f64 / MIB,
        rss_sealed.saturating_sub(rss_before) as f64 / MIB,
        sealed_footprint as f64 / MIB,
        hwm.saturating_sub(rss_before) as f64 / MIB,
    );
    println!();
    println!("### Targets of issue #13");
    println!();
    let flip = &flips[0].p99.max(flips[1].p99);
    let peak = sealed_footprint.max(
        mem_rows
            .iter()
            .filter(|r| r.dirty == GIB_DIRTY)
            .map(|r| r.sealed)
            .max()
            .unwrap_or(0),
    );
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    println!("| target | measured | |");
    println!("|---|--:|---|");
    println!(
        "| freeze flip p99 ≤ {} µs, 1 TiB, 1 GiB dirty | {} µs | {} |",
        TARGET_FLIP_P99.as_micros(),
        micros(*flip),
        verdict(*flip <= TARGET_FLIP_P99)
    );
    println!(
        "| engine memory ≤ {} MiB for that volume (largest of the 1 GiB rows, sealed) | {:.1} MiB | {} |",
        TARGET_MEMORY >> 20,
        peak as f64 / MIB,
        verdict(peak <= TARGET_MEMORY)
    );
    println!(
        "| memory ≤ fixed + c × dirty blocks | c ≤ {c_max:.0} bytes over the rows above | see `docs/engine-memory.md` |"
    );
}
