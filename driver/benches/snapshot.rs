//! Writer stall of CSI snapshots (issue 13): how long an application's
//! fsync-per-record writer stands still while a CreateSnapshot or a
//! three-volume CreateVolumeGroupSnapshot runs, at 1 GiB and at 64 GiB
//! (sparse backing files), side by side in one run.
//!
//! `cargo bench -p floe-driver --bench snapshot` (as root, with mkfs.ext4)
//! prints a markdown section on stdout (progress on stderr);
//! `scripts/bench.sh` appends it to `docs/benchmarks.md`.
//!
//! The node is the CSI tests' harness (`tests/common/csi.rs`): the fd holder
//! as a child process, the data-plane daemon and the CSI services in this
//! process, everything under a scratch dir in /tmp, the data dir an ext4 on
//! a sparse file (8 times the largest size, so that the node's capacity
//! check lets 64 GiB volumes be made on a small disk). Per size, three ext4
//! volumes are created and staged through CSI. For each cell a writer
//! appends numbered records round-robin across the three volumes of that
//! size, each record fsynced before the next; after 20 records the call is
//! made, and the cell's sample is the longest latency of any record write
//! (write + fsync) that overlapped the call. A *snapshot* is of the first
//! volume (the writer stalls when it reaches it), a *group* of all three.
//! The *idle* cell is the same writer over a one-second window without a
//! call: what the disk alone costs; *freeze + thaw alone* is `syncfs`,
//! `FIFREEZE`, `FITHAW` of the first volume without a snapshot: what every
//! snapshot pays before anything of floe's runs. The file systems are
//! mounted `noinit_itable` (no background zeroing of inode tables). Cells are interleaved: repetition r of
//! every cell runs before repetition r+1 of any.
//!
//! Knobs (environment), defaults in brackets: `FLOE_BENCH_SNAP_REPS`
//! repetitions per cell [5]; `FLOE_BENCH_SNAP_SIZES_GIB` the sizes [1,64];
//! `FLOE_BENCH_COMMAND` the command line to report.

// A bench binary reads its knobs from the environment.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::csi::{create_req, unstage_req, Harness};
use floe_driver::dataplane::fsfreeze::FrozenFs;
use floe_proto::csi;
use floe_proto::csi::controller_server::Controller;
use floe_proto::csi::group_controller_server::GroupController;
use floe_proto::csi::node_server::Node;
use tonic::Request;

const GIB: u64 = 1 << 30;
/// The targets of issue 13.
const TARGET_P99_MS: f64 = 50.0;
const TARGET_RATIO: f64 = 1.5;

fn main() -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snapshot bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The data plane's "cut taken" events, as (when logged, frozen window ms,
/// mark ms, copy ms): the window the file systems stood frozen, the part of
/// it floe's mark took, and the copy after the thaw.
#[derive(Clone, Default)]
struct Cuts(Arc<Mutex<Vec<Cut>>>);

/// When a cut was logged, its frozen window, mark and copy (ms).
type Cut = (Instant, f64, f64, f64);

impl std::io::Write for Cuts {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        if line.contains("cut taken") {
            let field = |k: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(f64::NAN)
            };
            let cut = (
                Instant::now(),
                field("frozen_ms="),
                field("mark_ms="),
                field("copy_ms="),
            );
            self.0.lock().expect("cuts").push(cut);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Cuts {
    fn last(&self) -> Option<Cut> {
        self.0.lock().expect("cuts").last().copied()
    }
}

fn env_list(name: &str, default: &[u64]) -> Vec<u64> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<u64>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// One record write: when it started and how long write + fsync took.
type Lat = (Instant, Duration);

/// Appends numbered records round-robin across files, fsyncing each.
struct Writer {
    stop: Arc<AtomicBool>,
    lat: Arc<Mutex<Vec<Lat>>>,
    handle: std::thread::JoinHandle<Result<()>>,
}

impl Writer {
    fn start(dirs: &[PathBuf]) -> Result<Self> {
        let mut files = dirs
            .iter()
            .map(|d| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(d.join("log"))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let lat = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (Arc::clone(&stop), Arc::clone(&lat));
        let handle = std::thread::spawn(move || -> Result<()> {
            let mut k = 0u64;
            while !s.load(Ordering::SeqCst) {
                let n = files.len() as u64;
                let f = &mut files[(k % n) as usize];
                let t = Instant::now();
                f.write_all(format!("{k}\n").as_bytes())?;
                f.sync_all()?;
                l.lock().expect("latencies").push((t, t.elapsed()));
                k += 1;
            }
            Ok(())
        });
        Ok(Writer { stop, lat, handle })
    }

    fn records(&self) -> usize {
        self.lat.lock().expect("latencies").len()
    }

    /// Waits until `n` more records are done (the writer's own progress).
    async fn wait_records(&self, n: usize) -> Result<()> {
        let want = self.records() + n;
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.records() < want {
            ensure!(!self.handle.is_finished(), "the writer stopped");
            ensure!(Instant::now() < deadline, "the writer made no progress for 120 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// Longest record write that overlapped `from..to`, in ms.
    fn stall(&self, from: Instant, to: Instant) -> f64 {
        self.lat
            .lock()
            .expect("latencies")
            .iter()
            .filter(|(t, d)| *t <= to && *t + *d >= from)
            .map(|(_, d)| d.as_secs_f64() * 1e3)
            .fold(0.0, f64::max)
    }

    fn stop(self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().map_err(|_| anyhow::anyhow!("writer panicked"))?
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Idle,
    Freeze,
    Snapshot,
    Group,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Idle => "idle (no call, 1 s)",
            Kind::Freeze => "freeze + thaw alone (first volume)",
            Kind::Snapshot => "CreateSnapshot",
            Kind::Group => "CreateVolumeGroupSnapshot (3 volumes)",
        }
    }
}

struct Size {
    gib: u64,
    ids: Vec<String>,
    dirs: Vec<PathBuf>,
}

/// Samples of one cell.
#[derive(Default)]
struct Cell {
    /// Longest record write overlapping the call.
    stall: Vec<f64>,
    /// Longest record write that began before the thaw.
    frozen_stall: Vec<f64>,
    /// The file systems' frozen window, and floe's mark inside it.
    window: Vec<f64>,
    mark: Vec<f64>,
    call: Vec<f64>,
}

struct Sample {
    stall: f64,
    frozen_stall: f64,
    window: f64,
    mark: f64,
    call: f64,
}

async fn measure(h: &Harness, cuts: &Cuts, size: &Size, kind: Kind, tag: &str) -> Result<Sample> {
    let writer = Writer::start(&size.dirs)?;
    writer.wait_records(20).await?;
    let from = Instant::now();
    match kind {
        Kind::Idle => tokio::time::sleep(Duration::from_secs(1)).await,
        Kind::Freeze => {
            // What every snapshot pays: syncfs, FIFREEZE, FITHAW.
            let dir = size.dirs[0].clone();
            tokio::task::spawn_blocking(move || -> Result<()> {
                let mut f = FrozenFs::freeze(&dir)?;
                f.thaw()?;
                Ok(())
            })
            .await??;
        }
        Kind::Snapshot => {
            let s = h
                .controller
                .create_snapshot(Request::new(csi::CreateSnapshotRequest {
                    name: tag.into(),
                    source_volume_id: size.ids[0].clone(),
                    ..Default::default()
                }))
                .await?
                .into_inner()
                .snapshot
                .context("snapshot")?;
            ensure!(s.ready_to_use, "the snapshot is not ready to use");
        }
        Kind::Group => {
            let g = h
                .group
                .create_volume_group_snapshot(Request::new(csi::CreateVolumeGroupSnapshotRequest {
                    name: tag.into(),
                    source_volume_ids: size.ids.clone(),
                    ..Default::default()
                }))
                .await?
                .into_inner()
                .group_snapshot
                .context("group snapshot")?;
            ensure!(g.ready_to_use, "the group snapshot is not ready to use");
        }
    }
    let to = Instant::now();
    // The record in flight at the end counts too.
    writer.wait_records(3).await?;
    let stall = writer.stall(from, to);
    // The cut's own account: logged after its copy, so the thaw was
    // `copy_ms` before the line.
    let (thaw, window, mark) = match cuts
        .last()
        .filter(|c| c.0 >= from && kind != Kind::Idle && kind != Kind::Freeze)
    {
        Some((logged, window, mark, copy)) => (
            logged.checked_sub(Duration::from_secs_f64(copy / 1e3)).unwrap_or(from),
            window,
            mark,
        ),
        None => (to, f64::NAN, f64::NAN),
    };
    let frozen_stall = writer.stall(from, thaw);
    writer.stop()?;
    // Delete what was made, as a CO would, outside the measured window.
    let snaps = h
        .controller
        .list_snapshots(Request::new(csi::ListSnapshotsRequest::default()))
        .await?
        .into_inner()
        .entries;
    match kind {
        Kind::Group => {
            let id = snaps
                .iter()
                .filter_map(|e| e.snapshot.as_ref())
                .find_map(|s| (!s.group_snapshot_id.is_empty()).then(|| s.group_snapshot_id.clone()))
                .context("the group snapshot is listed")?;
            h.group
                .delete_volume_group_snapshot(Request::new(csi::DeleteVolumeGroupSnapshotRequest {
                    group_snapshot_id: id,
                    ..Default::default()
                }))
                .await?;
        }
        _ => {
            for s in snaps.into_iter().filter_map(|e| e.snapshot) {
                h.controller
                    .delete_snapshot(Request::new(csi::DeleteSnapshotRequest {
                        snapshot_id: s.snapshot_id,
                        ..Default::default()
                    }))
                    .await?;
            }
        }
    }
    Ok(Sample {
        stall,
        frozen_stall,
        window,
        mark,
        call: (to - from).as_secs_f64() * 1e3,
    })
}

/// ext4, mounted without the lazy inode-table zeroing, which on a fresh
/// 64 GiB file system writes in the background for minutes and would be
/// measured as the writer's stall.
fn ext4() -> csi::VolumeCapability {
    let mut cap = common::csi::mount_cap("ext4");
    if let Some(csi::volume_capability::AccessType::Mount(m)) = cap.access_type.as_mut() {
        m.mount_flags = vec!["noinit_itable".into()];
    }
    cap
}

fn pct(v: &[f64], p: f64) -> f64 {
    common::percentile(v, p)
}

async fn run() -> Result<()> {
    if !common::privileged("snapshot bench") || !common::tool_present("mkfs.ext4") {
        anyhow::bail!("needs root, /dev/fuse, loop devices and mkfs.ext4");
    }
    let reps = env_list("FLOE_BENCH_SNAP_REPS", &[5])[0].max(1) as usize;
    let sizes_gib = env_list("FLOE_BENCH_SNAP_SIZES_GIB", &[1, 64]);
    // The node's data dir: ext4 on a sparse file big enough for the largest
    // size (the capacity check counts free bytes), on a loop device the
    // harness sweeps away with everything else under its dir.
    let disk_gib = sizes_gib.iter().max().copied().unwrap_or(1) * 8;
    let cuts = Cuts::default();
    let sink = cuts.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("floe_driver=info"))
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .init();
    let h = Harness::new_with("bench-snapshot", |dir| {
        let (disk, data) = (dir.join("data.ext4"), dir.join("data"));
        std::fs::File::create(&disk)?.set_len(disk_gib * GIB)?;
        std::fs::create_dir_all(&data)?;
        // A loop device first, then mkfs and mount on it: mkfs on a file
        // and `mount -o loop` ask every loop device for its backing file,
        // which hangs on one whose FUSE server is gone.
        let run = |tool: &str, args: &[&str]| -> Result<String> {
            let out = std::process::Command::new(tool).args(args).output()?;
            ensure!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        let dev = run("losetup", &["--find", "--show", &disk.display().to_string()])?;
        run(
            "mkfs.ext4",
            &["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", &dev],
        )?;
        run("mount", &[&dev, &data.display().to_string()])?;
        Ok(())
    })?;
    let mut sizes = Vec::new();
    for &gib in &sizes_gib {
        let mut size = Size {
            gib,
            ids: Vec::new(),
            dirs: Vec::new(),
        };
        for i in 0..3 {
            let t = Instant::now();
            let name = format!("bench-{gib}g-{i}");
            let v = h
                .controller
                .create_volume(Request::new(create_req(&name, (gib * GIB) as i64, ext4())))
                .await?
                .into_inner()
                .volume
                .context("volume")?;
            let staging = h.path(&format!("staging-{name}"));
            h.node
                .node_stage_volume(Request::new(csi::NodeStageVolumeRequest {
                    volume_id: v.volume_id.clone(),
                    staging_target_path: staging.display().to_string(),
                    volume_capability: Some(ext4()),
                    ..Default::default()
                }))
                .await?;
            eprintln!(
                "bench: {name} created and staged (ext4) in {:.1} s",
                t.elapsed().as_secs_f64()
            );
            size.ids.push(v.volume_id);
            size.dirs.push(staging);
        }
        sizes.push(size);
    }
    let kinds = [Kind::Idle, Kind::Freeze, Kind::Snapshot, Kind::Group];
    let mut cells: Vec<Vec<Cell>> = sizes
        .iter()
        .map(|_| kinds.iter().map(|_| Cell::default()).collect())
        .collect();
    for rep in 0..reps {
        for (si, size) in sizes.iter().enumerate() {
            for (ki, kind) in kinds.iter().enumerate() {
                let tag = format!("bench-{}g-{ki}-{rep}", size.gib);
                let m = measure(&h, &cuts, size, *kind, &tag).await?;
                eprintln!(
                    "bench: rep {rep}, {} GiB, {}: stall {:.1} ms (before the thaw {:.1}), frozen {:.1} ms (mark {:.2}), call {:.0} ms",
                    size.gib,
                    kind.name(),
                    m.stall,
                    m.frozen_stall,
                    m.window,
                    m.mark,
                    m.call
                );
                let c = &mut cells[si][ki];
                c.stall.push(m.stall);
                c.frozen_stall.push(m.frozen_stall);
                c.window.push(m.window);
                c.mark.push(m.mark);
                c.call.push(m.call);
            }
        }
    }
    for size in &sizes {
        for (id, dir) in size.ids.iter().zip(&size.dirs) {
            h.node.node_unstage_volume(Request::new(unstage_req(id, dir))).await?;
            h.controller
                .delete_volume(Request::new(csi::DeleteVolumeRequest {
                    volume_id: id.clone(),
                    ..Default::default()
                }))
                .await?;
        }
    }
    print!("{}", render(&sizes, &kinds, &cells, reps));
    Ok(())
}

fn render(sizes: &[Size], kinds: &[Kind], cells: &[Vec<Cell>], reps: usize) -> String {
    let mut o = String::new();
    let cmd = std::env::var("FLOE_BENCH_COMMAND")
        .unwrap_or_else(|_| "cargo bench -p floe-driver --locked --bench snapshot".into());
    let _ = writeln!(o);
    let _ = writeln!(o, "## Snapshot writer stall (issue 13)");
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Command: `{cmd}` (`driver/benches/snapshot.rs`); machine: {} cores. Three ext4 volumes per size, staged through CSI on \
         sparse stores; a writer appends records round-robin across them, fsyncing each. A sample is the longest record \
         write (write + fsync) overlapping the call; *idle* is a 1 s window without a call. {reps} interleaved repetitions \
         per cell; p99 by nearest rank (with fewer than 100 samples, the largest). *stall before the thaw*: the longest \
         record write that began before the thaw; *frozen window*: from the first `syncfs`/`FIFREEZE` to the last \
         `FITHAW`, as the data plane logs it, and *mark* the part of it floe's engines took; *call*: the whole call, \
         the copy after the thaw included (the call waits for it).",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "| call | size | stall p50 (ms) | stall p99 (ms) | stall before the thaw p50 / p99 (ms) | frozen window p50 / p99 (ms) | mark p99 (ms) | call p50 (ms) |"
    );
    let _ = writeln!(o, "|---|--:|--:|--:|--:|--:|--:|--:|");
    let num = |v: f64, digits: usize| {
        if v.is_nan() {
            "–".to_owned()
        } else {
            format!("{v:.digits$}")
        }
    };
    for (ki, kind) in kinds.iter().enumerate() {
        for (si, size) in sizes.iter().enumerate() {
            let c = &cells[si][ki];
            let _ = writeln!(
                o,
                "| {} | {} GiB | {:.1} | {:.1} | {} / {} | {} / {} | {} | {:.0} |",
                kind.name(),
                size.gib,
                pct(&c.stall, 0.5),
                pct(&c.stall, 0.99),
                num(pct(&c.frozen_stall, 0.5), 1),
                num(pct(&c.frozen_stall, 0.99), 1),
                num(pct(&c.window, 0.5), 1),
                num(pct(&c.window, 0.99), 1),
                num(pct(&c.mark, 0.99), 2),
                pct(&c.call, 0.5)
            );
        }
    }
    let _ = writeln!(o);
    let (small, large) = (0, sizes.len() - 1);
    for (ki, kind) in kinds
        .iter()
        .enumerate()
        .filter(|(_, k)| matches!(k, Kind::Snapshot | Kind::Group))
    {
        let p99: Vec<f64> = sizes
            .iter()
            .enumerate()
            .map(|(si, _)| pct(&cells[si][ki].stall, 0.99))
            .collect();
        let worst = p99.iter().copied().fold(0.0, f64::max);
        let ratio = p99[large] / p99[small];
        let _ = writeln!(
            o,
            "- {}: p99 ≤ {TARGET_P99_MS} ms at every size: **{}** (worst {worst:.1} ms); p99 {} GiB / {} GiB = {ratio:.2} ≤ {TARGET_RATIO}: **{}**.",
            kind.name(),
            if worst <= TARGET_P99_MS { "met" } else { "not met" },
            sizes[large].gib,
            sizes[small].gib,
            if ratio <= TARGET_RATIO { "met" } else { "not met" },
        );
    }
    // What bounds the stall, from this run's own numbers.
    let cell = |k: Kind, si: usize| kinds.iter().position(|x| *x == k).map(|ki| &cells[si][ki]);
    for (si, size) in sizes.iter().enumerate() {
        let (Some(idle), Some(bare), Some(snap), Some(group)) = (
            cell(Kind::Idle, si),
            cell(Kind::Freeze, si),
            cell(Kind::Snapshot, si),
            cell(Kind::Group, si),
        ) else {
            continue;
        };
        let _ = writeln!(
            o,
            "- What bounds it at {} GiB: the file systems' frozen window (`syncfs`, `FIFREEZE`, mark, `FITHAW`) took p50 {:.1} ms \
             for one volume and {:.1} ms for three, of which floe's mark took at most {:.2} ms; a bare freeze and thaw without \
             a snapshot stalls the writer p50 {:.1} ms (p99 {:.1}), and the writer alone, with no call, sees p99 {:.1} ms.",
            size.gib,
            pct(&snap.window, 0.5),
            pct(&group.window, 0.5),
            pct(&snap.mark, 0.99).max(pct(&group.mark, 0.99)),
            pct(&bare.stall, 0.5),
            pct(&bare.stall, 0.99),
            pct(&idle.stall, 0.99),
        );
    }
    o
}
