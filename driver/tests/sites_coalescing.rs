//! Coalescing between real processes (I3), counted by a tracer the engine
//! knows nothing of.
//!
//! Two sites run as process trees on loopback; the group's two volumes stay
//! raw block devices, and the test is their only writer: it writes 4 KiB
//! blocks with `O_DIRECT` (each write is in the engine when `pwrite`
//! returns), a hot set many times over and the rest spread over the volume,
//! and records every block it wrote in each epoch. Between its writes and
//! the freeze nothing else writes, so each epoch's writes are known exactly.
//! The primary's bandwidth is limited, so the hot blocks are rewritten
//! faster than they can be sent and the engine has something to coalesce.
//!
//! At each commit (every member's DR image equal to the primary's frozen
//! image), the block versions the primary sent for that epoch, from its
//! `floe_sender_sent_blocks_total` less `floe_sender_resent_blocks_total`,
//! must be at most:
//! - `interval` mode: the distinct blocks written in the epoch (each block
//!   at most once per epoch);
//! - `continuous` and `log` modes: the writes of the epoch (at most once per
//!   write that landed after the block's previous send).
//!
//! The writes come from a seeded generator; the seed is printed and
//! `FLOE_COALESCE_SEED` replays it.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Result};
use common::link::Rng;
use common::sites::{
    freeze_and_read, metric, start_with, volume, wait_until, Options, Place, RawWriter, Sites, MEMBERS,
};
use floe_engine::Mode;

const EPOCHS: u64 = 8;
/// Writes per member per epoch: three in four to the hot set.
const WRITES: usize = 400;
const HOT: u64 = 32;
/// The primary's bandwidth: 256 blocks a second.
const LIMIT: u64 = 1 << 20;

/// What the tracer saw one member receive in one epoch.
#[derive(Default)]
struct Epoch {
    writes: u64,
    distinct: BTreeSet<u64>,
}

/// Writes `WRITES` blocks of member `m`, each block's bytes unique to
/// (member, epoch, write).
fn write_epoch(w: &mut RawWriter, m: usize, rng: &mut Rng, epoch: u64, blocks: u64) -> Result<Epoch> {
    let mut seen = Epoch::default();
    for i in 0..WRITES {
        let block = if rng.below(4) == 0 {
            HOT + rng.below(blocks - HOT)
        } else {
            rng.below(HOT)
        };
        w.write(m, block, (epoch << 32) | ((m as u64) << 24) | i as u64)?;
        seen.writes += 1;
        seen.distinct.insert(block);
    }
    Ok(seen)
}

/// `floe_sender_sent_blocks_total` less `floe_sender_resent_blocks_total`
/// of every member, from the primary's metrics.
fn fresh_sent(s: &Sites) -> Result<Vec<u64>> {
    let text = s.scrape_primary()?;
    (0..MEMBERS)
        .map(|m| {
            let sent = format!("floe_sender_sent_blocks_total{{volume=\"{}\"}}", volume(m));
            let resent = format!("floe_sender_resent_blocks_total{{volume=\"{}\"}}", volume(m));
            let sent = metric(&text, &sent).unwrap_or(0);
            Ok(sent.saturating_sub(metric(&text, &resent).unwrap_or(0)))
        })
        .collect()
}

fn run(mode: Mode) -> Result<()> {
    let name = format!("coalesce-{}", mode.name());
    if !common::sites::ready(&name) {
        return Ok(());
    }
    let seed = common::link::seed("FLOE_COALESCE_SEED");
    println!("{}: seed {seed} (FLOE_COALESCE_SEED={seed} replays it)", mode.name());
    let mut rng = Rng(seed);
    let opts = Options {
        raw: true,
        limit_bytes_per_second: Some(LIMIT),
        ..Options::default()
    };
    let s = start_with(&name, mode, Place::Loopback, opts)?;
    let blocks = s.volume_bytes / RawWriter::BLOCK;
    let mut w = RawWriter::open(&s.devices)?;
    let client = s.primary.client()?;
    let members = s.members();
    let mut before = fresh_sent(&s)?;
    let (mut writes, mut distinct, mut shipped) = (0, 0, 0);
    for epoch in 1..=EPOCHS {
        wait_until("the members are ready", Duration::from_secs(120), || {
            Ok(members.iter().all(|m| client.block_on(m.ready(epoch)).is_ok()))
        })?;
        let mut traced = Vec::new();
        for m in 0..MEMBERS {
            traced.push(write_epoch(&mut w, m, &mut rng, epoch, blocks)?);
        }
        let digests = client.block_on(freeze_and_read(&s, &members, epoch))?;
        s.check_dr_exact(&client, epoch, &digests)?;
        // The epoch is committed and nothing was written since its freeze:
        // every version the primary sent since the last commit belongs to it.
        let now = fresh_sent(&s)?;
        for (m, t) in traced.iter().enumerate() {
            let sent = now[m] - before[m];
            let bound = match mode {
                Mode::Interval => t.distinct.len() as u64,
                Mode::Continuous | Mode::Log => t.writes,
            };
            ensure!(
                sent <= bound,
                "epoch {epoch}, {}: {sent} block versions sent for {} writes to {} distinct blocks (bound {bound})",
                volume(m),
                t.writes,
                t.distinct.len()
            );
            writes += t.writes;
            distinct += t.distinct.len() as u64;
            shipped += sent;
        }
        before = now;
    }
    ensure!(shipped > 0, "nothing was sent");
    println!(
        "{}: {EPOCHS} epochs, {writes} block writes, {distinct} distinct per epoch, {shipped} sent ({:.2} of the writes)",
        mode.name(),
        shipped as f64 / writes as f64
    );
    Ok(())
}

#[test]
fn interval_mode_sends_a_block_at_most_once_per_epoch() -> Result<()> {
    run(Mode::Interval)
}

#[test]
fn continuous_mode_sends_at_most_once_per_write() -> Result<()> {
    run(Mode::Continuous)
}

#[test]
fn log_mode_sends_at_most_once_per_write() -> Result<()> {
    run(Mode::Log)
}
