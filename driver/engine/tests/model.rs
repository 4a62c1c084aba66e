//! Model tests: random schedules in every mode against the reference model.
//!
//! `FLOE_MODEL_SCHEDULES` (default 10,000) schedules per mode, seeds from
//! `FLOE_MODEL_SEED_BASE` on; `FLOE_MODEL_SEED` (with `FLOE_MODEL_MODE`)
//! replays one schedule and prints its trace.

// The test reads its knobs from the environment; the engine itself may not.
#![allow(clippy::disallowed_methods)]

mod sim;

use floe_engine::Mode;
use sim::snapshots::{SnapStats, SnapWorld};
use sim::{Config, RunStats, World};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn run_mode(mode: Mode) {
    if let Some(want) = std::env::var("FLOE_MODEL_MODE").ok().filter(|m| !m.is_empty()) {
        if want != mode.name() {
            println!("{}: skipped by FLOE_MODEL_MODE={want}", mode.name());
            return;
        }
    }
    if let Some(seed) = env_u64("FLOE_MODEL_SEED") {
        let mut w = World::new(Config::small(mode), seed);
        let out = w.run();
        for line in &w.trace {
            println!("  {line}");
        }
        if let Err(e) = out {
            panic!("{} seed {seed}: {e}", mode.name());
        }
        println!("{} seed {seed}: ok", mode.name());
        return;
    }
    let n = env_u64("FLOE_MODEL_SCHEDULES").unwrap_or(10_000);
    let base = env_u64("FLOE_MODEL_SEED_BASE").unwrap_or(0);
    let mut total = RunStats::default();
    for i in 0..n {
        let seed = base.wrapping_mul(1_000_003).wrapping_add(i);
        let mut w = World::new(Config::small(mode), seed);
        if let Err(e) = w.run() {
            let tail: Vec<&String> = w.trace.iter().rev().take(25).collect();
            for line in tail.into_iter().rev() {
                eprintln!("  {line}");
            }
            panic!(
                "{} schedule {i} failed: {e}\nreplay: FLOE_MODEL_SEED={seed} FLOE_MODEL_MODE={} cargo test -p floe-engine --test model -- --nocapture",
                mode.name(),
                mode.name()
            );
        }
        total.add(&w.stats);
    }
    println!("{}: {n} schedules from seed base {base}: {total:?}", mode.name());
    assert!(
        n < 100 || total.commits > n,
        "schedules commit too rarely to prove anything: {total:?}"
    );
    assert!(
        n < 100 || total.failbacks_done > 0,
        "no schedule completed a failback: {total:?}"
    );
    assert!(
        n < 100 || total.corruptions_detected > 0,
        "bits were flipped on the way but no replica's manifest check refused a seal: {total:?}"
    );
    assert!(
        n < 100 || total.folds_refused > 0,
        "staged blocks rotted at rest but no fold was refused: {total:?}"
    );
    assert!(
        n < 100 || (total.cuts_in_calls > 0 && total.ghosts_replayed > 0 && total.failback_coverage_checks > 0),
        "a fault class was never exercised: {total:?}"
    );
    assert!(
        n < 100
            || (total.spanning > 0
                && total.coordinator_crashes > 0
                && total.coordinator_messages_lost > 0
                && total.catch_ups > 0),
        "no schedule spanning DR nodes crashed the coordinator alone, lost a report or decision, or caught up: {total:?}"
    );
    assert!(
        n < 100 || (total.membership_changes > 0 && total.commits_after_change > 0),
        "no schedule changed the group's membership and committed after: {total:?}"
    );
    assert!(
        n < 100 || (total.resume_held > 0 && total.resume_missing > 0),
        "no reconnect found the DR holding part of what was sent and missing part: {total:?}"
    );
}

/// Schedules that once failed, each replayed in every run under what it found.
const REGRESSIONS: &[(Mode, u64, &str)] = &[
    (
        Mode::Continuous,
        777_779_431_652,
        "a late seal of a dropped epoch displaced the next epoch's seal, which then never resolved",
    ),
    (
        Mode::Interval,
        3_353_099_182_291_875,
        "the failback coverage check demanded writes of an epoch the replica records committed (its fold refused after rot)",
    ),
];

#[test]
fn model_regression_schedules_stay_green() {
    for &(mode, seed, found) in REGRESSIONS {
        let mut w = World::new(Config::small(mode), seed);
        if let Err(e) = w.run() {
            panic!(
                "{} seed {seed} ({found}) fails again: {e}\nreplay: FLOE_MODEL_SEED={seed} FLOE_MODEL_MODE={} cargo test -p floe-engine --test model -- --nocapture",
                mode.name(),
                mode.name()
            );
        }
    }
}

#[test]
fn model_continuous_holds_i1_to_i5() {
    run_mode(Mode::Continuous);
}

#[test]
fn model_log_holds_i1_to_i5() {
    run_mode(Mode::Log);
}

#[test]
fn model_interval_holds_i1_to_i5() {
    run_mode(Mode::Interval);
}

/// Local snapshots: marked mid-workload (inside freeze windows too), copied
/// in random steps between host writes, cut short by power cuts inside the
/// copy; each one done equals the host's view at its mark, byte for byte,
/// and each one cut short is whole or reported failed (`tests/sim/snapshots.rs`).
#[test]
fn model_snapshots_equal_the_host_view_at_their_mark() {
    let want_mode = std::env::var("FLOE_MODEL_MODE").ok().filter(|m| !m.is_empty());
    for mode in [Mode::Continuous, Mode::Log, Mode::Interval] {
        if want_mode.as_deref().is_some_and(|m| m != mode.name()) {
            continue;
        }
        if let Some(seed) = env_u64("FLOE_MODEL_SEED") {
            let mut w = SnapWorld::new(mode, seed);
            let out = w.run();
            for line in &w.trace {
                println!("  {line}");
            }
            if let Err(e) = out {
                panic!("snapshots, {} seed {seed}: {e}", mode.name());
            }
            continue;
        }
        let n = env_u64("FLOE_MODEL_SCHEDULES").unwrap_or(10_000);
        let base = env_u64("FLOE_MODEL_SEED_BASE").unwrap_or(0);
        let mut total = SnapStats::default();
        for i in 0..n {
            let seed = base.wrapping_mul(1_000_003).wrapping_add(i);
            let mut w = SnapWorld::new(mode, seed);
            if let Err(e) = w.run() {
                let tail: Vec<&String> = w.trace.iter().rev().take(25).collect();
                for line in tail.into_iter().rev() {
                    eprintln!("  {line}");
                }
                panic!(
                    "snapshots, {} schedule {i} failed: {e}\nreplay: FLOE_MODEL_SEED={seed} FLOE_MODEL_MODE={} cargo test -p floe-engine --test model model_snapshots -- --nocapture",
                    mode.name(),
                    mode.name()
                );
            }
            total.add(&w.stats);
        }
        println!(
            "snapshots, {}: {n} schedules from seed base {base}: {total:?}",
            mode.name()
        );
        assert!(
            n < 100
                || (total.done > n
                    && total.failed_at_open > 0
                    && total.finished_by_crash > 0
                    && total.copies_before_overwrite > 0
                    && total.cuts_in_steps > 0
                    && (mode != Mode::Log || total.marked_in_window > 0)),
            "a snapshot case was never exercised: {total:?}"
        );
    }
}
