//! Replication between real processes (issue 10), three sections from one
//! run: what crosses the wire per byte written, how long a group freeze
//! stands the writers still for 1, 4 and 16 volumes, and the RPO under a
//! `tbf`-limited link.
//!
//! `cargo bench -p floe-driver --bench sites` (as root, with mkfs.ext4,
//! loop devices, /dev/fuse and network namespaces) prints a markdown
//! section on stdout (progress on stderr); `scripts/bench.sh` appends it
//! to `docs/benchmarks.md`.
//!
//! Every run is the site tests' harness (`tests/common/sites.rs`): each
//! site a process tree (`holder`, `serve`) of its own, the sites joined by
//! mutual TLS, a group paired between them, freezes taken through the
//! group-freeze library (`replication::freeze::group_freeze`) as the
//! controller takes them.
//!
//! - **Wire**: two raw 64 MiB volumes on loopback, written by this process
//!   with O_DIRECT, 4 KiB blocks drawn zipf(1.1), a group freeze every
//!   `FLOE_BENCH_SITES_EPOCH` writes; per mode with the link unlimited and
//!   with the primary's bandwidth limited to 4 MiB/s. Wire bytes and block
//!   versions are the primary's `floe_sender_sent_*` counters after the
//!   last epoch committed.
//! - **Freeze stall**: 1, 4 and 16 ext4 volumes on loopback, each with a
//!   writer appending fsynced records; a sample is, per freeze and writer,
//!   the longest record write (write + fsync) that overlapped the freeze.
//! - **RPO**: two raw volumes, the sites in network namespaces, the link
//!   limited by a `tbf` qdisc, a paced writer of uniform random blocks at
//!   half the link's rate, a freeze scheduled every interval; every 100 ms
//!   the RPO is sampled as the age of the freeze of the newest epoch every
//!   member has committed at the DR.
//!
//! Knobs (environment), defaults in brackets: `FLOE_BENCH_SITES_WRITES`
//! writes per wire run [16000]; `FLOE_BENCH_SITES_EPOCH` writes between
//! freezes [2000]; `FLOE_BENCH_SITES_FREEZES` freezes per stall cell [20];
//! `FLOE_BENCH_SITES_RPO_SECONDS` length of an RPO run [20];
//! `FLOE_BENCH_COMMAND` the command line to report.

// A bench binary reads its knobs from the environment.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::link::{Rng, Zipf};
use common::percentile;
use common::plane::PlaneClient;
use common::sites::{metric, start_with, volume, wait_until, Options, Place, RawWriter, Sites, MEMBERS};
use floe_driver::replication::freeze::{group_freeze, FreezeMember, FreezeReport};
use floe_engine::Mode;

const MIB: u64 = 1 << 20;
/// The primary's bandwidth in the limited wire rows.
const WIRE_LIMIT: u64 = 4 * MIB;
/// The `tbf` rate of the RPO runs, and the writer's rate (half of it).
const RPO_LINK_BITS: u64 = 16_000_000;
const RPO_WRITE_BYTES: u64 = RPO_LINK_BITS / 8 / 2;
const RPO_INTERVALS: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(5)];
const STALL_VOLUMES: [usize; 3] = [1, 4, 16];

fn knob(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?}: not a number")),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sites bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Waits until every member can take group epoch `epoch`.
fn wait_ready(client: &PlaneClient, members: &[Arc<dyn FreezeMember>], epoch: u64) -> Result<()> {
    wait_until("the members are ready", Duration::from_secs(120), || {
        Ok(members.iter().all(|m| client.block_on(m.ready(epoch)).is_ok()))
    })
}

/// Takes group epoch `epoch`, which every member is ready for.
fn freeze(client: &PlaneClient, members: &[Arc<dyn FreezeMember>], epoch: u64) -> Result<FreezeReport> {
    let report = client.block_on(group_freeze(members, epoch, Duration::from_secs(30)));
    ensure!(report.committed_to_flip, "freeze {epoch} failed: {:?}", report.failures);
    Ok(report)
}

/// The lowest epoch every member has committed at the DR.
fn committed(s: &Sites, client: &PlaneClient) -> Result<u64> {
    let admin = s.dr.admin();
    let mut low = u64::MAX;
    for m in 0..s.owner.len() {
        low = low.min(client.block_on(admin.status(&volume(m)))?.committed_epoch);
    }
    Ok(low)
}

/// Sums `name{volume="pvc-m"}` over the members in the primary's metrics.
fn sum_metric(s: &Sites, name: &str) -> Result<u64> {
    let text = s.scrape_primary()?;
    Ok((0..s.owner.len())
        .map(|m| metric(&text, &format!("{name}{{volume=\"{}\"}}", volume(m))).unwrap_or(0))
        .sum())
}

struct WireRow {
    mode: Mode,
    limit: Option<u64>,
    writes: u64,
    epochs: u64,
    wire_bytes: u64,
    versions: u64,
    seconds: f64,
}

fn wire(mode: Mode, limit: Option<u64>, writes: u64, per_epoch: u64) -> Result<WireRow> {
    let name = format!("bench-wire-{}", mode.name());
    let opts = Options {
        raw: true,
        limit_bytes_per_second: limit,
        ..Options::default()
    };
    let s = start_with(&name, mode, Place::Loopback, opts)?;
    let client = s.primary.client()?;
    let members = s.members();
    let blocks = s.volume_bytes / RawWriter::BLOCK;
    let zipf = Zipf::new(blocks);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut w = RawWriter::open(&s.devices)?;
    let started = Instant::now();
    let mut epoch = 0;
    for i in 1..=writes {
        let m = rng.below(MEMBERS as u64) as usize;
        w.write(m, zipf.sample(&mut rng), i)?;
        if i % per_epoch == 0 || i == writes {
            epoch += 1;
            wait_ready(&client, &members, epoch)?;
            freeze(&client, &members, epoch)?;
        }
    }
    wait_until("the last epoch committed at the DR", Duration::from_secs(600), || {
        Ok(committed(&s, &client)? >= epoch)
    })?;
    Ok(WireRow {
        mode,
        limit,
        writes,
        epochs: epoch,
        wire_bytes: sum_metric(&s, "floe_sender_sent_bytes_total")?,
        versions: sum_metric(&s, "floe_sender_sent_blocks_total")?,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One writer's record writes, (start, end) each.
type Ops = Vec<(Instant, Instant)>;

/// Appends fsynced 125-byte records to `dir/log` until `stop`, timing each.
fn timed_writer(
    dir: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Result<Ops>> {
    std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log"))?;
        let mut ops = Vec::new();
        let record = [b'y'; 125];
        while !stop.load(Ordering::Relaxed) {
            let start = Instant::now();
            f.write_all(&record)?;
            f.sync_data()?;
            ops.push((start, Instant::now()));
            done.fetch_add(1, Ordering::Relaxed);
        }
        Ok(ops)
    })
}

struct StallRow {
    volumes: usize,
    /// Per freeze and writer, ms.
    stall: Vec<f64>,
    /// The library's own window (first quiesce to last thaw), ms.
    window: Vec<f64>,
    quiesce: Vec<f64>,
    flip: Vec<f64>,
    /// Record writes overlapping no freeze, ms.
    idle: Vec<f64>,
}

fn stall(volumes: usize, freezes: usize) -> Result<StallRow> {
    let opts = Options {
        members: volumes,
        ..Options::default()
    };
    let s = start_with(
        &format!("bench-stall-{volumes}"),
        Mode::Continuous,
        Place::Loopback,
        opts,
    )?;
    let client = s.primary.client()?;
    let members = s.members();
    let stop = Arc::new(AtomicBool::new(false));
    let done: Vec<Arc<AtomicU64>> = s.mounts.iter().map(|_| Arc::default()).collect();
    let writers: Vec<_> = s
        .mounts
        .iter()
        .zip(&done)
        .map(|(m, d)| timed_writer(m.clone(), Arc::clone(&stop), Arc::clone(d)))
        .collect();
    let mut row = StallRow {
        volumes,
        stall: Vec::new(),
        window: Vec::new(),
        quiesce: Vec::new(),
        flip: Vec::new(),
        idle: Vec::new(),
    };
    let mut windows = Vec::new();
    let result = (|| -> Result<()> {
        for epoch in 1..=freezes as u64 {
            // Every writer well under way since the last freeze.
            let from: Vec<u64> = done.iter().map(|d| d.load(Ordering::Relaxed)).collect();
            wait_until("the writers write", Duration::from_secs(60), || {
                Ok(done.iter().zip(&from).all(|(d, f)| d.load(Ordering::Relaxed) >= f + 10))
            })?;
            wait_ready(&client, &members, epoch)?;
            let t0 = Instant::now();
            let report = freeze(&client, &members, epoch)?;
            windows.push((t0, Instant::now()));
            row.window.push(report.stall.as_secs_f64() * 1e3);
            row.quiesce.push(report.quiesce.as_secs_f64() * 1e3);
            row.flip.push(report.flip.as_secs_f64() * 1e3);
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for w in writers {
        all.push(w.join().map_err(|_| anyhow::anyhow!("a writer panicked"))??);
    }
    result?;
    let ms = |(a, b): &(Instant, Instant)| b.duration_since(*a).as_secs_f64() * 1e3;
    for &(t0, t1) in &windows {
        for ops in &all {
            let longest = ops
                .iter()
                .filter(|(a, b)| *a < t1 && *b > t0)
                .map(ms)
                .fold(0.0, f64::max);
            row.stall.push(longest);
        }
    }
    for ops in &all {
        row.idle.extend(
            ops.iter()
                .filter(|(a, b)| windows.iter().all(|&(t0, t1)| *b <= t0 || *a >= t1))
                .map(ms),
        );
    }
    Ok(row)
}

struct RpoRow {
    mode: Mode,
    interval: Duration,
    /// RPO samples, seconds.
    rpo: Vec<f64>,
    freezes: u64,
    /// Ticks of the schedule that found the last epoch still unresolved.
    skipped: u64,
    written: u64,
    seconds: f64,
}

fn rpo(mode: Mode, interval: Duration, length: Duration) -> Result<RpoRow> {
    let name = format!("bench-rpo-{}-{}", mode.name(), interval.as_secs());
    let opts = Options {
        raw: true,
        ..Options::default()
    };
    let s = start_with(&name, mode, Place::Namespaces, opts)?;
    let net = s.net.as_ref().context("the sites' network")?;
    net.limit(0, RPO_LINK_BITS, 32 * 1024)?;
    let client = s.primary.client()?;
    let members = s.members();
    let blocks = s.volume_bytes / RawWriter::BLOCK;
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    // The writer: uniform random blocks, paced to RPO_WRITE_BYTES a second.
    let writer = {
        let (stop, written, devices) = (Arc::clone(&stop), Arc::clone(&written), s.devices.clone());
        std::thread::spawn(move || -> Result<()> {
            let mut w = RawWriter::open(&devices)?;
            let mut rng = Rng(0x2545_F491_4F6C_DD1D);
            let every = Duration::from_secs_f64(RawWriter::BLOCK as f64 / RPO_WRITE_BYTES as f64);
            let start = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = start + every * n as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let m = rng.below(MEMBERS as u64) as usize;
                w.write(m, rng.below(blocks), n)?;
                n += 1;
                written.store(n * RawWriter::BLOCK, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    // The flip time of every epoch taken.
    let flipped: Arc<Mutex<BTreeMap<u64, Instant>>> = Arc::default();
    let sampler = {
        let (stop, flipped) = (Arc::clone(&stop), Arc::clone(&flipped));
        let admin = s.dr.admin();
        let client = s.dr.client()?;
        std::thread::spawn(move || -> Result<Vec<f64>> {
            let mut rpo = Vec::new();
            let start = Instant::now();
            let mut n = 1u32;
            while !stop.load(Ordering::Relaxed) {
                let mut low = u64::MAX;
                for m in 0..MEMBERS {
                    low = low.min(client.block_on(admin.status(&volume(m)))?.committed_epoch);
                }
                let at = flipped
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .get(&low)
                    .copied();
                if let Some(at) = at {
                    rpo.push(at.elapsed().as_secs_f64());
                }
                if let Some(wait) = (start + Duration::from_millis(100) * n).checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                n += 1;
            }
            Ok(rpo)
        })
    };
    let start = Instant::now();
    let (mut epoch, mut skipped, mut tick) = (0u64, 0u64, 1u32);
    let result = (|| -> Result<()> {
        while start.elapsed() < length {
            let due = start + interval * tick;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            tick += 1;
            let ready = members.iter().all(|m| client.block_on(m.ready(epoch + 1)).is_ok());
            if !ready {
                skipped += 1;
                continue;
            }
            let t0 = Instant::now();
            let report = client.block_on(group_freeze(&members, epoch + 1, Duration::from_secs(30)));
            ensure!(
                report.committed_to_flip,
                "freeze {} failed: {:?}",
                epoch + 1,
                report.failures
            );
            epoch += 1;
            flipped
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .insert(epoch, t0 + report.quiesce);
        }
        Ok(())
    })();
    let seconds = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let wrote = writer.join().map_err(|_| anyhow::anyhow!("the writer panicked"))?;
    let rpo = sampler.join().map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
    result?;
    wrote?;
    Ok(RpoRow {
        mode,
        interval,
        rpo: rpo?,
        freezes: epoch,
        skipped,
        written: written.load(Ordering::Relaxed),
        seconds,
    })
}

fn run() -> Result<()> {
    ensure!(
        common::sites::ready("sites bench"),
        "needs root, /dev/fuse, loop devices, mkfs.ext4 and e2fsck"
    );
    let writes = knob("FLOE_BENCH_SITES_WRITES", 16_000)?;
    let per_epoch = knob("FLOE_BENCH_SITES_EPOCH", 2_000)?.max(1);
    let freezes = knob("FLOE_BENCH_SITES_FREEZES", 20)?.max(1) as usize;
    let rpo_len = Duration::from_secs(knob("FLOE_BENCH_SITES_RPO_SECONDS", 20)?.max(1));
    let command =
        std::env::var("FLOE_BENCH_COMMAND").unwrap_or_else(|_| "cargo bench -p floe-driver --bench sites".into());

    let mut wire_rows = Vec::new();
    for mode in Mode::ALL {
        for limit in [None, Some(WIRE_LIMIT)] {
            eprintln!("sites bench: wire, {} mode, limit {limit:?}", mode.name());
            wire_rows.push(wire(mode, limit, writes, per_epoch)?);
        }
    }
    let mut stall_rows = Vec::new();
    for n in STALL_VOLUMES {
        eprintln!("sites bench: freeze stall, {n} volumes");
        stall_rows.push(stall(n, freezes)?);
    }
    let mut rpo_rows = Vec::new();
    for interval in RPO_INTERVALS {
        for mode in Mode::ALL {
            eprintln!("sites bench: RPO, {} mode, every {interval:?}", mode.name());
            rpo_rows.push(rpo(mode, interval, rpo_len)?);
        }
    }

    println!();
    println!("## Replication between real processes (issue 10)");
    println!();
    println!(
        "Command: `{command}` (`driver/benches/sites.rs`). Each site is a process tree of its own (`holder`, \
         `serve`), the sites joined by mutual TLS; freezes go through the group-freeze library as the controller \
         takes them."
    );
    println!();
    println!("### Bytes on the wire per byte written");
    println!();
    println!(
        "Two raw volumes of 64 MiB on loopback, {writes} writes of 4 KiB by the bench itself (O_DIRECT) with \
         zipf(1.1) block choice, a group freeze every {per_epoch} writes; wire bytes are the primary's encoded \
         frames (`floe_sender_sent_bytes_total`, TLS framing not counted), counted after the last epoch \
         committed. A journal ships every write: at least the 4 KiB, ratio ≥ 1.00."
    );
    println!();
    println!("| mode | primary's bandwidth | epochs | MiB written | MiB on the wire | wire / written | versions sent / writes | journal / floe | MiB/s written |");
    println!("|---|---|--:|--:|--:|--:|--:|--:|--:|");
    for r in &wire_rows {
        let written = (r.writes * RawWriter::BLOCK) as f64;
        let ratio = r.wire_bytes as f64 / written;
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {ratio:.3} | {:.3} | {:.2}× | {:.1} |",
            r.mode.name(),
            r.limit
                .map_or("unlimited".to_string(), |l| format!("{} MiB/s", l / MIB)),
            r.epochs,
            written / MIB as f64,
            r.wire_bytes as f64 / MIB as f64,
            r.versions as f64 / r.writes as f64,
            1.0 / ratio,
            written / MIB as f64 / r.seconds
        );
    }
    println!();
    println!("### Freeze stall: writers blocked by a group freeze");
    println!();
    println!(
        "ext4 volumes of 64 MiB on loopback (continuous mode), one writer per volume appending fsynced 125-byte \
         records; {freezes} group freezes per row, each after every writer wrote 10 records since the last. A \
         *stall* sample is, per freeze and writer, the longest record write (write + fsync) that overlapped the \
         freeze; *window* is the library's own (first quiesce sent to last thaw answered), split into *quiesce* \
         (`syncfs` + `FIFREEZE` on every member in parallel) and *flip*; *idle* is a record write overlapping no \
         freeze. p99 by nearest rank."
    );
    println!();
    println!("| volumes | stall p50 (ms) | stall p99 (ms) | window p50 / p99 (ms) | quiesce p50 (ms) | flip p50 (ms) | idle write p50 / p99 (ms) |");
    println!("|--:|--:|--:|--:|--:|--:|--:|");
    for r in &stall_rows {
        let p = percentile;
        println!(
            "| {} | {:.1} | {:.1} | {:.1} / {:.1} | {:.1} | {:.1} | {:.1} / {:.1} |",
            r.volumes,
            p(&r.stall, 0.5),
            p(&r.stall, 0.99),
            p(&r.window, 0.5),
            p(&r.window, 0.99),
            p(&r.quiesce, 0.5),
            p(&r.flip, 0.5),
            p(&r.idle, 0.5),
            p(&r.idle, 0.99),
        );
    }
    println!();
    println!("### RPO under a `tbf`-limited link");
    println!();
    println!(
        "Two raw volumes of 64 MiB, the sites in network namespaces joined by veth, the link limited to {} Mbit/s \
         by a `tbf` qdisc on both ends; the bench writes uniform random 4 KiB blocks paced to {:.1} MiB/s (half \
         the link) for {} s per row and asks for a group freeze every interval (a tick that finds the last epoch \
         unresolved is skipped). Every 100 ms the RPO is sampled: the age of the flip of the newest epoch that \
         every member has committed at the DR.",
        RPO_LINK_BITS / 1_000_000,
        RPO_WRITE_BYTES as f64 / MIB as f64,
        rpo_len.as_secs()
    );
    println!();
    println!("| mode | interval (s) | RPO p50 (s) | RPO p99 (s) | RPO max (s) | p99 / interval | freezes | ticks skipped | MiB/s written |");
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in &rpo_rows {
        let p99 = percentile(&r.rpo, 0.99);
        println!(
            "| {} | {} | {:.2} | {p99:.2} | {:.2} | {:.2} | {} | {} | {:.2} |",
            r.mode.name(),
            r.interval.as_secs(),
            percentile(&r.rpo, 0.5),
            r.rpo.iter().copied().fold(0.0, f64::max),
            p99 / r.interval.as_secs_f64(),
            r.freezes,
            r.skipped,
            r.written as f64 / MIB as f64 / r.seconds
        );
    }
    Ok(())
}
