//! `make demo`: floe's main job on one machine, step by step.
//!
//! Two sites as separate process trees, each in a network namespace of its
//! own joined by veth pairs (198.18.0.0/15); a group of two replicated ext4
//! volumes on the primary site under a workload of fsynced numbered
//! records; group freezes on a schedule, each checked at the DR; the
//! primary site lost mid-epoch (its link cut, every process killed); the
//! DR promoted and its volumes mounted and checked; a workload on the new
//! primary; the old site back, demoted (fenced by the new generation, its
//! stray writes kept as a snapshot) and resynced with only the blocks that
//! differ, then checked O_DIRECT-equal at the new primary's next freeze.
//! It prints each step, then a report, removes everything it made, and
//! exits non-zero when a check fails. `make test` runs it too (a test
//! target without harness).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use floe_driver::replication::freeze::group_freeze;
use floe_engine::Mode;

mod common;

use common::sites::*;

/// Freezes before the primary site is lost.
const FREEZES: u64 = 6;
/// One freeze every this long.
const SCHEDULE: Duration = Duration::from_millis(700);

fn step(n: u32, text: &str) {
    println!("[{n}/8] {text}");
}

fn main() -> ExitCode {
    println!("floe demo: two sites on one machine, a replicated group, a failover and a failback\n");
    if !ready("demo") {
        return ExitCode::SUCCESS;
    }
    match demo() {
        Ok(()) => {
            println!("\ndemo: every check passed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("\ndemo FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> Result<()> {
    let t0 = Instant::now();
    step(1, "sites: a primary and a DR node, each in a network namespace of its own, joined by veth pairs on 198.18.0.0/15; each node runs floe-dataplane holder + serve");
    step(
        2,
        &format!(
            "a group {GROUP:?} of {MEMBERS} ext4 volumes of {} MiB on the primary, paired with the DR (mutual TLS)",
            VOLUME_BYTES >> 20
        ),
    );
    let s = start("demo", Mode::Continuous, Place::Namespaces)?;
    let client = s.primary.client()?;
    let dadmin = s.dr.admin();
    let members = s.members();

    step(3, "workload: each volume appends fsynced numbered records");
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, writers) = s.record_writers(&stop);

    step(
        4,
        &format!(
            "group freezes every {} ms, each waited for at the DR",
            SCHEDULE.as_millis()
        ),
    );
    let mut stalls = Vec::new();
    let mut acked_at = Vec::new();
    let mut committed_at = Instant::now();
    for epoch in 1..=FREEZES {
        let due = Instant::now() + SCHEDULE;
        wait_until("the members are ready", Duration::from_secs(120), || {
            Ok(members.iter().all(|m| client.block_on(m.ready(epoch)).is_ok()))
        })?;
        let before: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
        let report = client.block_on(group_freeze(&members, epoch, Duration::from_secs(20)));
        ensure!(report.committed_to_flip, "freeze {epoch} failed: {:?}", report.failures);
        acked_at.push(before);
        stalls.push(report.stall);
        wait_until(
            &format!("epoch {epoch} committed at the DR"),
            Duration::from_secs(120),
            || Ok(client.block_on(dadmin.verify(&volume(0), epoch, VOLUME_BYTES)).is_ok()),
        )?;
        committed_at = Instant::now();
        println!(
            "      epoch {epoch}: applications stalled {:.1} ms; committed at the DR; {} records acknowledged",
            report.stall.as_secs_f64() * 1e3,
            acked.iter().map(|a| a.load(Ordering::SeqCst)).sum::<u64>()
        );
        if let Some(left) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
    }
    let metrics = s.scrape_primary()?;
    let shipped: u64 = (0..MEMBERS)
        .filter_map(|m| {
            metric(
                &metrics,
                &format!("floe_sender_sent_bytes_total{{volume=\"{}\"}}", volume(m)),
            )
        })
        .sum();

    step(
        5,
        "the primary site is lost mid-epoch: its link cut, every process killed",
    );
    let net = s.net.clone().context("namespaces")?;
    net.link_down(0)?;
    let mut s = s;
    s.primary.kill_all()?;
    let lost_at = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    let written_records: u64 = acked.iter().map(|a| a.load(Ordering::SeqCst)).sum();

    step(
        6,
        "failover: the DR is promoted, its volumes attached, checked and mounted",
    );
    let epoch = client.block_on(dadmin.promote(GROUP, 2))?;
    println!("      promoted at epoch {epoch}, the group's last committed cut");
    let acked = &acked_at[(epoch - 1) as usize];
    let held = check_promoted(&mut s, acked)?;
    for (m, (n, want)) in held.iter().zip(acked).enumerate() {
        println!(
            "      {}: e2fsck clean; {n} records, gap-free, every one of the {want} acknowledged before the cut's freeze",
            volume(m)
        );
    }
    let kept: u64 = held.iter().sum();

    step(
        7,
        "failback: a workload on the new primary; the old site back, demoted, resynced with the blocks that differ",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (acked_new, writers) = s.record_writers(&stop);
    let fb = common::failback::old_site_back(&mut s).and_then(|()| {
        println!("      old site back: processes restarted, broken attachments cleared");
        common::failback::fail_back(&mut s, epoch + 1, false, false, |p| println!("      {p}"))
    });
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    let fb = fb?;
    let new_records = acked_new.iter().map(|a| a.load(Ordering::SeqCst)).sum::<u64>() - kept;
    for (m, mnt) in s.mounts.iter().enumerate() {
        let n = gap_free_records(&mnt.join("log"))?;
        println!("      {}: {n} records on the new primary, gap-free", volume(m));
    }
    println!(
        "      epoch {} committed at the old site: its images O_DIRECT-equal to the new primary's at that freeze",
        fb.epoch
    );

    step(8, "report");
    stalls.sort();
    let p50 = stalls[stalls.len() / 2];
    let max = stalls.last().copied().unwrap_or_default();
    let written_bytes = written_records * RECORD_BYTES;
    println!("      epochs committed      {FREEZES}");
    println!(
        "      freeze stall          p50 {:.1} ms, max {:.1} ms",
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    println!(
        "      bytes                 {:.2} MiB of records written, {:.1} MiB shipped (mkfs, journal and metadata included)",
        mib(written_bytes),
        mib(shipped)
    );
    println!(
        "      RPO at the loss       {:.1} s since the last committed cut",
        lost_at.duration_since(committed_at).as_secs_f64()
    );
    println!(
        "      records after failover {kept} (of {written_records} written in all; those after the cut are the RPO)"
    );
    println!(
        "      failback              {} blocks shipped for {} that differed ({} changed meanwhile by {new_records} new records); a full copy is {} blocks ({:.1}%); {:.1} s",
        fb.shipped,
        fb.differing,
        fb.written_since,
        fb.full_copy,
        100.0 * fb.shipped as f64 / fb.full_copy as f64,
        fb.took.as_secs_f64()
    );
    println!("      took                  {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
