//! The replication link on a zipf workload: bytes on the wire per byte
//! written, per mode, against shipping every write, and the rate the link
//! keeps up with — two sites in one process (real engines on `FileStore`s,
//! sender and receiver over mutual TLS on loopback).
//!
//! `cargo bench -p floe-driver --bench replication` prints a markdown
//! section on stdout (progress on stderr); `scripts/bench.sh` appends it to
//! `docs/benchmarks.md`. No privileges needed.
//!
//! Knobs (environment), defaults in brackets: `FLOE_BENCH_LINK_WRITES`
//! 4 KiB writes per mode [40000]; `FLOE_BENCH_LINK_EPOCH` writes between
//! group freezes [4000]; `FLOE_BENCH_LINK_BLOCKS` blocks per volume [16384,
//! 64 MiB]; `FLOE_BENCH_COMMAND` the command line to report.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use common::link::{pattern, start, Rng, Zipf, BS, MEMBERS};
use floe_driver::replication::freeze::group_freeze;
use floe_engine::Mode;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Row {
    mode: Mode,
    writes: u64,
    epochs: u64,
    wire_bytes: u64,
    versions: u64,
    seconds: f64,
}

async fn run(mode: Mode, writes: u64, per_epoch: u64, blocks: u64) -> Result<Row> {
    let dir = tempfile::Builder::new().prefix("floe-bench-link-").tempdir()?;
    let sites = start(dir.path(), mode, blocks).await?;
    let members = sites.engine_members();
    let zipf = Zipf::new(blocks);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let mut epoch = 0;
    for i in 1..=writes {
        let m = rng.below(MEMBERS as u64) as usize;
        let b = zipf.sample(&mut rng);
        let data = pattern(&mut rng);
        sites.primaries[m].with(|p| p.write(b * BS as u64, &data))?;
        if i % per_epoch == 0 || i == writes {
            // A freeze waits for the last epoch to resolve (the group
            // freeze's readiness check would refuse it otherwise).
            sites.wait_resolved().await?;
            epoch += 1;
            let report = group_freeze(&members, epoch, Duration::from_secs(30)).await;
            if !report.committed_to_flip {
                bail!("{}: freeze {epoch} failed: {:?}", mode.name(), report.failures);
            }
        }
    }
    sites.wait_committed(epoch).await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Row {
        mode,
        writes,
        epochs: epoch,
        wire_bytes: sites.links.iter().map(|l| l.stats.bytes_sent.get()).sum(),
        versions: sites.links.iter().map(|l| l.stats.blocks_sent.get()).sum(),
        seconds,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let writes = knob("FLOE_BENCH_LINK_WRITES", 40_000);
    let per_epoch = knob("FLOE_BENCH_LINK_EPOCH", 4_000).max(1);
    let blocks = knob("FLOE_BENCH_LINK_BLOCKS", 16_384);
    let command =
        std::env::var("FLOE_BENCH_COMMAND").unwrap_or_else(|_| "cargo bench -p floe-driver --bench replication".into());
    let mut rows = Vec::new();
    for mode in Mode::ALL {
        eprintln!("bench replication: {} ({writes} writes)", mode.name());
        rows.push(run(mode, writes, per_epoch, blocks).await?);
    }
    let written = |r: &Row| r.writes * BS as u64;
    println!();
    println!("## Replication link: bytes on the wire per byte written");
    println!();
    println!(
        "Two sites in one process (engines on `FileStore`s in a temporary directory, sender and receiver over \
         mutual TLS on loopback), a group of {MEMBERS} volumes of {} MiB, {writes} writes of 4 KiB with zipf(1.1) \
         block choice, a group freeze every {per_epoch} writes, all in one run. Wire bytes are the encoded frames \
         the senders sent (TLS framing not counted). A journal ships every write: at least the 4 KiB, so its \
         ratio is ≥ 1.00. Command: `{command}`.",
        (blocks * BS as u64) >> 20
    );
    println!();
    println!("| mode | epochs | MiB written | MiB on the wire | wire / written | versions sent / writes | journal | MiB/s written (incl. replication) |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.3} | {:.3} | ≥ 1.000 | {:.1} |",
            r.mode.name(),
            r.epochs,
            written(r) as f64 / 1048576.0,
            r.wire_bytes as f64 / 1048576.0,
            r.wire_bytes as f64 / written(r) as f64,
            r.versions as f64 / r.writes as f64,
            written(r) as f64 / 1048576.0 / r.seconds,
        );
    }
    Ok(())
}
