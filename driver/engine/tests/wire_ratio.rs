//! Wire efficiency of the three modes on an overwrite-heavy (zipf) workload,
//! against shipping every write (a journal) and an rsync-style per-interval
//! image diff. `make bench` runs it with `--nocapture` and appends the table
//! to docs/benchmarks.md; as a test it asserts coalescing (I3) holds in sum.

#![allow(clippy::disallowed_methods)]

mod sim;

use floe_engine::{Coordinator, Geometry, Mode, Primary, Replica, RoleGeneration, ToPrimary, ToReplica};
use sim::rng::Rng;
use sim::store::{SimLog, SimStore};

const BLOCK: usize = 4096;
const BLOCKS: u64 = 4096; // 16 MiB volume
const WRITES: u64 = 60_000;
const FREEZE_EVERY: u64 = 5_000;

/// Zipf-like: block k with weight ~ 1/(k+1)^1.1, drawn by inverse CDF.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: u64) -> Self {
        let mut acc = 0.0;
        let mut cdf = Vec::with_capacity(n as usize);
        for k in 0..n {
            acc += 1.0 / ((k + 1) as f64).powf(1.1);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }
    fn sample(&self, rng: &mut Rng) -> u64 {
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        self.cdf.partition_point(|&c| c < u) as u64
    }
}

struct Outcome {
    written_bytes: u64,
    shipped_bytes: u64,
    shipped_blocks: u64,
    written_blocks: u64,
    rsync_bytes: u64,
}

/// One primary and one replica, lossless in-order link; the link carries
/// `per100` blocks per 100 host writes between freezes (a freeze drains all).
fn run(mode: Mode, per100: usize) -> Outcome {
    let geo = Geometry::new(BLOCK, BLOCKS, 64).expect("geometry");
    let gen0 = RoleGeneration { counter: 1, site: 1 };
    let mut p = Primary::create(SimStore::new(BLOCK), geo, mode, gen0).expect("primary");
    let mut r = Replica::create(SimStore::new(BLOCK), geo, 0, gen0).expect("replica");
    let mut c = Coordinator::open(SimLog::default(), 1).expect("coordinator");
    let mut rng = Rng::new(7);
    let zipf = Zipf::new(BLOCKS);
    let mut to_primary: Vec<ToPrimary> = Vec::new();
    let mut deliver = |p: &mut Primary<SimStore>, r: &mut Replica<SimStore>, f: ToReplica, out: &mut Vec<ToPrimary>| {
        r.on_frame(f).expect("replica");
        out.extend(r.take_to_primary());
        for msg in r.take_to_coordinator() {
            c.on_message(msg).expect("coordinator");
            for (_, d) in c.take_out() {
                r.on_coordinator(d).expect("fold");
                out.extend(r.take_to_primary());
            }
        }
        for f in out.drain(..) {
            p.on_frame(f).expect("primary");
        }
    };
    let hello = p.connect();
    deliver(&mut p, &mut r, hello, &mut to_primary);
    let mut data = vec![0u8; BLOCK];
    let mut group = 0;
    let mut changed = std::collections::BTreeSet::new();
    let mut rsync_bytes = 0;
    let mut credit = 0usize; // in hundredths of a block
    for i in 1..=WRITES {
        let b = zipf.sample(&mut rng);
        rng.fill(&mut data[..64]);
        p.write(b * BLOCK as u64, &data).expect("write");
        changed.insert(b);
        credit += per100;
        while credit >= 100 {
            let Some(f) = p.poll_send(credit / 100).expect("send") else {
                break;
            };
            if let ToReplica::Blocks { blocks, .. } = &f {
                credit = credit.saturating_sub(blocks.len() * 100);
            }
            deliver(&mut p, &mut r, f, &mut to_primary);
        }
        credit = credit.min(per100.max(100) * 4);
        if i % FREEZE_EVERY == 0 {
            group += 1;
            p.freeze(group).expect("freeze");
            while let Some(f) = p.poll_send(256).expect("send") {
                deliver(&mut p, &mut r, f, &mut to_primary);
            }
            assert!(p.closing().is_none(), "epoch {group} did not commit");
            // rsync of the image each interval: changed blocks plus a
            // rolling-checksum signature (~20 bytes) for every block.
            rsync_bytes += changed.len() as u64 * BLOCK as u64 + BLOCKS * 20;
            changed.clear();
        }
    }
    let s = p.stats();
    Outcome {
        written_bytes: s.blocks_written * BLOCK as u64,
        shipped_bytes: s.bytes_shipped,
        shipped_blocks: s.blocks_shipped,
        written_blocks: s.blocks_written,
        rsync_bytes,
    }
}

#[test]
fn coalescing_ships_fewer_bytes_than_a_journal() {
    println!("| mode | link (blocks per 100 writes) | written MiB | shipped MiB | shipped / written | journal / floe | rsync-per-interval / floe |");
    println!("|---|---|---|---|---|---|---|");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut interval_bytes = 0;
    for (mode, per100) in [
        (Mode::Continuous, 200),
        (Mode::Continuous, 50),
        (Mode::Continuous, 20),
        (Mode::Log, 50),
        (Mode::Interval, 0),
    ] {
        let o = run(mode, per100);
        assert!(
            o.shipped_blocks <= o.written_blocks,
            "I3 in sum: shipped more blocks than written"
        );
        if mode == Mode::Interval {
            interval_bytes = o.shipped_bytes;
        }
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.3} | {:.2}× | {:.2}× |",
            mode.name(),
            if mode == Mode::Interval {
                "at freezes".to_owned()
            } else {
                per100.to_string()
            },
            mib(o.written_bytes),
            mib(o.shipped_bytes),
            o.shipped_bytes as f64 / o.written_bytes as f64,
            o.written_bytes as f64 / o.shipped_bytes as f64,
            o.rsync_bytes as f64 / o.shipped_bytes as f64,
        );
    }
    assert!(interval_bytes > 0);
    println!(
        "\n{WRITES} writes of 4 KiB over a {} MiB volume, zipf(1.1) block choice, a freeze every {FREEZE_EVERY} writes; \
         between freezes the link carries the given number of blocks per 100 host writes (continuous, log); \
         interval ships only at freezes. A freeze drains everything.",
        (BLOCKS * BLOCK as u64) >> 20
    );
}
