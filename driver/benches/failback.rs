//! Failback between real sites (issue 11): how many blocks the delta resync
//! of the old site ships, against the blocks that really differ (an
//! O_DIRECT comparison of the two images) and against a full copy, per
//! replication mode, side by side in one run.
//!
//! `cargo bench -p floe-driver --bench failback` (as root, with mkfs.ext4
//! and network namespaces) prints a markdown section on stdout (progress
//! on stderr); `scripts/bench.sh` appends it to `docs/benchmarks.md`.
//!
//! Each run is the failover test's scenario (`tests/common/sites.rs`,
//! `tests/common/failback.rs`): two sites in network namespaces, a group of
//! two 64 MiB ext4 volumes under fsynced record writers, three committed
//! epochs, the primary site lost mid-epoch, the DR promoted, records
//! written on the new primary, the old site back, demoted and resynced
//! with the new primary's file systems frozen from the comparison to the
//! checked epoch (so what ships can be told apart from what is written).
//!
//! Knobs (environment), defaults in brackets: `FLOE_BENCH_FAILBACK_REPS`
//! runs per mode [3]; `FLOE_BENCH_COMMAND` the command line to report.

// A bench binary reads its knobs from the environment.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::ExitCode;

use anyhow::{ensure, Context, Result};
use common::failback::{fail_back, old_site_back, Failback, BLOCK};
use common::sites::*;
use floe_engine::Mode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("failback bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    ensure!(
        ready("failback bench"),
        "needs root, /dev/fuse, loop devices, mkfs.ext4 and e2fsck"
    );
    let reps: usize = std::env::var("FLOE_BENCH_FAILBACK_REPS")
        .ok()
        .map(|v| v.parse())
        .transpose()
        .context("FLOE_BENCH_FAILBACK_REPS")?
        .unwrap_or(3);
    ensure!(reps > 0, "FLOE_BENCH_FAILBACK_REPS must be at least 1");
    let modes = [Mode::Continuous, Mode::Log, Mode::Interval];
    let mut runs: Vec<(Mode, Failback)> = Vec::new();
    // Interleaved: repetition r of every mode before repetition r + 1.
    for r in 0..reps {
        for mode in modes {
            eprintln!("failback bench: {mode:?}, run {} of {reps}", r + 1);
            let fb = one(mode).with_context(|| format!("{mode:?} run {}", r + 1))?;
            eprintln!("failback bench: {fb:?}");
            runs.push((mode, fb));
        }
    }
    let cmd =
        std::env::var("FLOE_BENCH_COMMAND").unwrap_or_else(|_| "cargo bench -p floe-driver --bench failback".into());
    println!();
    println!("## Failback: blocks shipped by the delta resync vs blocks that differ vs a full copy");
    println!();
    println!(
        "Two sites in network namespaces, a group of {MEMBERS} ext4 volumes of {} MiB, the primary lost \
         mid-epoch after 3 committed epochs, records written on the promoted site, then the old site demoted \
         and resynced (issue 11). *Differing*: 4 KiB blocks that differ between the two images before the \
         resync, by an O_DIRECT comparison; *written since*: blocks the new primary changed meanwhile (the \
         superblock a thaw rewrites); *full copy*: every block of every member. Medians of {reps} runs per \
         mode, interleaved. Command: `{cmd}`.",
        VOLUME_BYTES >> 20
    );
    println!();
    println!("| mode | differing (KiB) | shipped (KiB) | shipped / differing | written since | full copy (KiB) | shipped / full copy | candidates compared | demote to checked epoch (s) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let kib = |blocks: f64| blocks * BLOCK as f64 / 1024.0;
    for mode in modes {
        let of: Vec<&Failback> = runs.iter().filter(|(m, _)| *m == mode).map(|(_, f)| f).collect();
        let med = |f: &dyn Fn(&Failback) -> f64| {
            let mut v: Vec<f64> = of.iter().map(|fb| f(fb)).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let differing = med(&|f| f.differing as f64);
        let shipped = med(&|f| f.shipped as f64);
        let full = med(&|f| f.full_copy as f64);
        println!(
            "| {} | {:.0} | {:.0} | {:.3} | {:.0} | {:.0} | {:.4} | {:.0} | {:.2} |",
            mode.name(),
            kib(differing),
            kib(shipped),
            med(&|f| f.shipped as f64 / f.differing.max(1) as f64),
            med(&|f| f.written_since as f64),
            kib(full),
            med(&|f| f.shipped as f64 / f.full_copy as f64),
            med(&|f| f.candidates as f64),
            med(&|f| f.took.as_secs_f64()),
        );
    }
    Ok(())
}

/// One failover and failback in `mode`.
fn one(mode: Mode) -> Result<Failback> {
    let mut s = start(&format!("bench-failback-{}", mode.name()), mode, Place::Namespaces)?;
    let client = s.primary.client()?;
    let dadmin = s.dr.admin();
    let committed = commit_then_lose_the_primary(&mut s, 3)?;
    let epoch = client.block_on(dadmin.promote(GROUP, 2))?;
    check_promoted(&mut s, &committed.acked[(epoch - 1) as usize])?;
    write_records(&s, 50)?;
    old_site_back(&mut s)?;
    fail_back(&mut s, epoch + 1, false, true, |step| {
        eprintln!("failback bench: {step}")
    })
}
