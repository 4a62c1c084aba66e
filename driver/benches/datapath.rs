//! Data-path benchmarks: fio on the block device of a floe volume, of a plain
//! loop device and of a pass-through FUSE+loop device, in one run; then the
//! engine's copy-on-write amplification during a freeze window.
//!
//! `cargo bench -p floe-driver --bench datapath` (as root, with fio) prints a
//! markdown section on stdout (progress goes to stderr); `scripts/bench.sh`
//! appends it to `docs/benchmarks.md`.
//!
//! The three block devices, with the same caching at the device (fio
//! `--direct=1`, every loop device in direct-I/O mode, no filesystem):
//! - `plain`: `losetup --direct-io=on` over a file;
//! - `fuse`: our FUSE file over a pass-through [`FileBackend`], loop on it;
//! - `floe`: our FUSE file over an [`EngineBackend`] (continuous mode, 4 KiB
//!   tracking blocks, no replica connected, so nothing is shipped).
//!
//! Below the FUSE server the backends write their files through the page
//! cache (the store's durability point is fsync), while the plain loop
//! device writes its file with `O_DIRECT`. So the three devices run twice:
//! with their backing files on a tmpfs (everyone's bytes in RAM: the cost of
//! the data path itself) and on ext4 on the disk, where every backing file is
//! written back and dropped from the page cache after each run (the time
//! that write-back takes is reported).
//!
//! Then floe's device once more with the engine's lock timed, and, in
//! process, the copy-on-write amplification in a freeze window at 4 KiB and
//! 64 KiB tracking blocks; last, a paragraph on what limits floe, written
//! from this run's numbers.
//!
//! Everything lives under `/tmp/floe-bench-datapath-<pid>-*`; loop devices,
//! FUSE mounts and files are torn down by guards on every exit path, and the
//! leftovers of a run that was killed are swept at the start of the next one.
//!
//! Knobs (environment), defaults in brackets: `FLOE_BENCH_RUNTIME` seconds
//! per fio run, plus 1 s of ramp [8]; `FLOE_BENCH_REPS` repetitions per cell
//! [3]; `FLOE_BENCH_SIZE_MIB` device size [1024]; `FLOE_BENCH_MEDIA` where
//! the backing files live [tmpfs,ext4]; `FLOE_BENCH_WORKLOADS` a subset of
//! randwrite,randread,seqwrite,fsync [all]; `FLOE_BENCH_PROBE` 0 to skip the
//! lock probe [1]; `FLOE_BENCH_COW_WRITES` 4 KiB writes per phase of the
//! freeze-window test, 0 to skip it [16384]; `FLOE_BENCH_FUSE_THREADS` [the
//! default `FuseConfig`]; `FLOE_BENCH_COMMAND` the command line to report.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use floe_driver::dataplane::fuse::{abort_connection, FuseConfig};
use floe_driver::dataplane::loopdev::LoopDevice;
use floe_driver::dataplane::{AttachedVolume, BackendError, BlockBackend, EngineBackend, FileBackend};
use floe_driver::store::FileStore;
use floe_engine::{Geometry, Mode, Primary, RoleGeneration};

const PREFIX: &str = "floe-bench-datapath-";
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("datapath bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Settings {
    runtime_s: u64,
    reps: usize,
    size: u64,
    cow_writes: usize,
    media: Vec<Medium>,
    /// Whether to run the engine-lock probe.
    probe: bool,
    /// Indexes into [`WORKLOADS`].
    workloads: Vec<usize>,
    fuse: FuseConfig,
    /// How the bench was started, for the report.
    command: String,
}

impl Settings {
    fn from_env() -> Result<Self> {
        fn var(name: &str, default: u64) -> Result<u64> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .with_context(|| format!("{name}={v:?} is not a number")),
                Err(_) => Ok(default),
            }
        }
        let s = Settings {
            runtime_s: var("FLOE_BENCH_RUNTIME", 8)?,
            reps: var("FLOE_BENCH_REPS", 3)? as usize,
            size: var("FLOE_BENCH_SIZE_MIB", 1024)? * MIB,
            cow_writes: var("FLOE_BENCH_COW_WRITES", 16384)? as usize,
            media: match std::env::var("FLOE_BENCH_MEDIA") {
                Ok(v) => v
                    .split(',')
                    .filter(|m| !m.trim().is_empty())
                    .map(Medium::parse)
                    .collect::<Result<_>>()?,
                Err(_) => vec![Medium::Ram, Medium::Disk],
            },
            probe: var("FLOE_BENCH_PROBE", 1)? != 0,
            workloads: match std::env::var("FLOE_BENCH_WORKLOADS") {
                Ok(v) => v
                    .split(',')
                    .map(|k| {
                        WORKLOADS
                            .iter()
                            .position(|w| w.key == k.trim())
                            .with_context(|| format!("FLOE_BENCH_WORKLOADS: unknown workload {k:?}"))
                    })
                    .collect::<Result<_>>()?,
                Err(_) => (0..WORKLOADS.len()).collect(),
            },
            fuse: FuseConfig {
                threads: var("FLOE_BENCH_FUSE_THREADS", FuseConfig::default().threads as u64)? as usize,
                ..FuseConfig::default()
            },
            command: std::env::var("FLOE_BENCH_COMMAND")
                .unwrap_or_else(|_| "cargo bench -p floe-driver --bench datapath".to_owned()),
        };
        ensure!(
            s.runtime_s >= 1 && s.reps >= 1,
            "runtime and repetitions must be at least 1"
        );
        ensure!(s.size >= 64 * MIB, "the device must be at least 64 MiB");
        s.fuse.validate()?;
        Ok(s)
    }
}

fn run() -> Result<()> {
    let settings = Settings::from_env()?;
    preflight()?;
    sweep_stale();
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", std::process::id()))
        .tempdir_in("/tmp")
        .context("create the bench directory")?;
    let mut out = String::new();
    // Declared after `dir`, so dropped (loop devices detached, FUSE
    // unmounted) before the directory is removed.
    let mut results = Vec::new();
    for &medium in &settings.media {
        results.push(run_matrix(dir.path(), medium, &settings)?);
    }
    if !results.is_empty() {
        out.push_str(&render_fio(&results, &settings));
    }
    let probe = if settings.probe {
        probe_rows(dir.path(), &settings)?
    } else {
        Vec::new()
    };
    let cow = cow_rows(dir.path(), &settings)?;
    if !probe.is_empty() {
        out.push_str(&render_probe(&probe, &settings));
    }
    if !cow.is_empty() {
        out.push_str(&render_cow(&cow, &settings));
    }
    if !results.is_empty() || !probe.is_empty() {
        out.push_str(&render_limits(&results, &probe, &cow, &settings));
    }
    let _ = writeln!(
        out,
        "\nData-path bench wall time: {:.0} s (`FLOE_BENCH_RUNTIME={}`, `FLOE_BENCH_REPS={}`, \
         `FLOE_BENCH_SIZE_MIB={}`).",
        started.elapsed().as_secs_f64(),
        settings.runtime_s,
        settings.reps,
        settings.size / MIB
    );
    print!("{out}");
    Ok(())
}

fn preflight() -> Result<()> {
    ensure!(
        rustix::process::geteuid().is_root(),
        "needs root (loop devices, FUSE mounts)"
    );
    for dev in ["/dev/fuse", "/dev/loop-control"] {
        ensure!(Path::new(dev).exists(), "needs {dev}");
    }
    let fio = Command::new("fio").arg("--version").output();
    ensure!(
        fio.is_ok_and(|o| o.status.success()),
        "needs fio (apt-get install -y fio)"
    );
    Ok(())
}

/// Tears down what a killed earlier run of this bench left: its loop devices,
/// its FUSE mounts and its directory, for runs whose process is gone.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/tmp") else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().filter(|p| p.parse::<u32>().is_ok()) else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let dir = e.path();
        eprintln!("bench: sweeping {} (left by a dead run)", dir.display());
        let mounts: Vec<PathBuf> = std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(PathBuf::from))
            .filter(|m| m.starts_with(&dir))
            .collect();
        for m in &mounts {
            abort_connection(m);
        }
        for (dev, backing) in loop_devices() {
            if backing.starts_with(&dir) {
                let _ = Command::new("losetup").arg("-d").arg(&dev).status();
            }
        }
        for m in mounts.iter().rev() {
            let _ = rustix::mount::unmount(m, rustix::mount::UnmountFlags::DETACH);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Every loop device with its backing file, from sysfs.
fn loop_devices() -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let backing = backing.trim();
            let backing = backing.strip_suffix(" (deleted)").unwrap_or(backing);
            Some((Path::new("/dev").join(e.file_name()), PathBuf::from(backing)))
        })
        .collect()
}

// ----- the three block devices ---------------------------------------------

/// Where the backing files of the three devices live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Medium {
    /// A tmpfs: every side's bytes are in RAM, no page cache on one side and
    /// a disk on the other; what is left is the cost of the data path.
    Ram,
    /// The root filesystem (ext4 on the machine's disk), as in production.
    Disk,
}

impl Medium {
    fn parse(s: &str) -> Result<Medium> {
        match s.trim() {
            "tmpfs" => Ok(Medium::Ram),
            "ext4" | "disk" => Ok(Medium::Disk),
            other => bail!("FLOE_BENCH_MEDIA: unknown medium {other:?} (tmpfs, ext4)"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Medium::Ram => "tmpfs",
            Medium::Disk => "ext4",
        }
    }
}

/// A tmpfs mounted for the bench; unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, bytes: u64) -> Result<Tmpfs> {
        std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))?;
        let opts = format!("size={}k,mode=0700", bytes / KIB);
        let opts = std::ffi::CString::new(opts).context("tmpfs options")?;
        rustix::mount::mount(
            "floe-bench",
            path,
            "tmpfs",
            rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
            opts.as_c_str(),
        )
        .with_context(|| format!("mount a tmpfs at {}", path.display()))?;
        Ok(Tmpfs { path: path.to_owned() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        use rustix::mount::{unmount, UnmountFlags};
        for _ in 0..100 {
            match unmount(&self.path, UnmountFlags::empty()) {
                Err(rustix::io::Errno::BUSY) => std::thread::sleep(std::time::Duration::from_millis(20)),
                _ => return,
            }
        }
        eprintln!("bench: {} busy, detaching it", self.path.display());
        let _ = unmount(&self.path, UnmountFlags::DETACH);
    }
}

/// What keeps a device alive; dropping it detaches the loop device and
/// unmounts the FUSE file.
enum Guard {
    Loop(#[allow(dead_code)] LoopDevice),
    Volume(#[allow(dead_code)] AttachedVolume),
}

struct Target {
    /// Short name used in the tables.
    name: &'static str,
    device: PathBuf,
    /// Files the backend writes through the page cache of a disk filesystem.
    cached: Vec<PathBuf>,
    _guard: Guard,
}

fn make_targets(dir: &Path, size: u64, medium: Medium, fuse: &FuseConfig) -> Result<Vec<Target>> {
    let cached = |files: Vec<PathBuf>| if medium == Medium::Disk { files } else { Vec::new() };
    let mut targets = Vec::new();

    let plain_file = dir.join("plain.img");
    File::create(&plain_file)
        .and_then(|f| f.set_len(size))
        .context("create the plain loop file")?;
    let plain = LoopDevice::attach(&plain_file).context("attach the plain loop device")?;
    targets.push(Target {
        name: "plain",
        device: plain.path().to_owned(),
        cached: Vec::new(),
        _guard: Guard::Loop(plain),
    });

    let pass_file = dir.join("pass.img");
    let pass = Arc::new(FileBackend::create(&pass_file, size)?);
    let vol = AttachedVolume::attach_with(pass, &dir.join("fuse-pass"), fuse, None)
        .context("attach the pass-through volume")?;
    targets.push(Target {
        name: "fuse",
        device: vol.device().to_owned(),
        cached: cached(vec![pass_file]),
        _guard: Guard::Volume(vol),
    });

    let geo = Geometry::new(4096, size / 4096, 256)?;
    let store = FileStore::create(&dir.join("engine"), "bench", geo)?;
    let image = store.dir().join("image");
    let side = store.dir().join("side");
    let gen = RoleGeneration { counter: 1, site: 1 };
    let engine = Arc::new(EngineBackend::new(Primary::create(store, geo, Mode::Continuous, gen)?));
    let vol = AttachedVolume::attach_with(engine, &dir.join("fuse-engine"), fuse, None)
        .context("attach the engine volume")?;
    targets.push(Target {
        name: "floe",
        device: vol.device().to_owned(),
        cached: cached(vec![image, side]),
        _guard: Guard::Volume(vol),
    });
    Ok(targets)
}

/// Writes back and drops from the page cache every file a backend writes
/// through it; returns the seconds the write-back took.
fn evict(t: &Target) -> Result<f64> {
    let start = Instant::now();
    drop_cache(&t.cached)?;
    Ok(start.elapsed().as_secs_f64())
}

/// Writes `files` back and drops them from the page cache.
fn drop_cache(files: &[PathBuf]) -> Result<()> {
    for f in files {
        let file = File::open(f).with_context(|| format!("open {}", f.display()))?;
        file.sync_data()
            .with_context(|| format!("write back {}", f.display()))?;
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)
            .with_context(|| format!("drop {} from the page cache", f.display()))?;
    }
    Ok(())
}

/// Share of `t`'s cached files resident in the page cache (via `fincore`).
fn resident(t: &Target) -> Option<f64> {
    let f = t.cached.first()?;
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES,SIZE"])
        .arg(f)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|x| x.parse::<f64>().ok());
    let (res, size) = (it.next()??, it.next()??);
    (size > 0.0).then(|| res / size)
}

// ----- fio -------------------------------------------------------------------

struct Workload {
    /// Name for `FLOE_BENCH_WORKLOADS`.
    key: &'static str,
    title: &'static str,
    rw: &'static str,
    bs: u64,
    iodepth: u32,
    fsync: bool,
    /// Share of the plain loop device the issue asks floe to reach.
    target: Option<f64>,
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        key: "randwrite",
        title: "4 KiB random write, QD32",
        rw: "randwrite",
        bs: 4 * KIB,
        iodepth: 32,
        fsync: false,
        target: Some(0.5),
    },
    Workload {
        key: "randread",
        title: "4 KiB random read, QD32",
        rw: "randread",
        bs: 4 * KIB,
        iodepth: 32,
        fsync: false,
        target: None,
    },
    Workload {
        key: "seqwrite",
        title: "1 MiB sequential write, QD8",
        rw: "write",
        bs: MIB,
        iodepth: 8,
        fsync: false,
        target: Some(0.7),
    },
    Workload {
        key: "fsync",
        title: "4 KiB random write, QD1, fsync=1",
        rw: "randwrite",
        bs: 4 * KIB,
        iodepth: 1,
        fsync: true,
        target: None,
    },
];

#[derive(Clone, Debug, Default)]
struct Sample {
    iops: f64,
    mbps: f64,
    p99_us: f64,
    /// p99 of fio's fsync calls (fsync workload only).
    sync_p99_us: f64,
    /// CPU of this process (FUSE server, engine), per I/O.
    server_cpu_us: f64,
    /// CPU of fio itself (user and system), per I/O.
    fio_cpu_us: f64,
    /// CPU of the whole machine busy, share of all cores.
    busy: f64,
    /// Write-back and cache drop of the backing files after the run.
    flush_s: f64,
    /// Share of the backing file in the page cache at the end of the run.
    resident: Option<f64>,
}

fn fio_args(device: &Path, rw: &str, bs: u64, iodepth: u32) -> Vec<String> {
    vec![
        "--name=bench".into(),
        format!("--filename={}", device.display()),
        "--direct=1".into(),
        "--ioengine=libaio".into(),
        format!("--rw={rw}"),
        format!("--bs={bs}"),
        format!("--iodepth={iodepth}"),
        "--numjobs=1".into(),
        "--output-format=json".into(),
    ]
}

fn run_fio(args: &[String]) -> Result<Json> {
    let out = Command::new("fio").args(args).output().context("run fio")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "fio {} failed: {}{}",
        args.join(" "),
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    // fio may print notes before the JSON document.
    let start = stdout.find('{').context("no JSON in fio's output")?;
    let doc = Json::parse(&stdout[start..]).context("parse fio's JSON")?;
    let job = doc
        .get("jobs")
        .and_then(|j| j.index(0))
        .context("fio JSON has no job")?;
    let err = job.get("error").and_then(Json::num).unwrap_or(0.0);
    ensure!(err == 0.0, "fio job reported error {err}");
    Ok(job.clone())
}

fn precondition(t: &Target) -> Result<f64> {
    let start = Instant::now();
    let mut args = fio_args(&t.device, "write", MIB, 8);
    args.push("--randrepeat=0".into());
    run_fio(&args).with_context(|| format!("precondition {}", t.name))?;
    evict(t)?;
    Ok(start.elapsed().as_secs_f64())
}

fn measure(t: &Target, w: &Workload, s: &Settings) -> Result<Sample> {
    let mut args = fio_args(&t.device, w.rw, w.bs, w.iodepth);
    args.extend([
        "--time_based".into(),
        format!("--runtime={}", s.runtime_s),
        "--ramp_time=1".into(),
        "--norandommap".into(),
        "--randrepeat=0".into(),
    ]);
    if w.fsync {
        args.push("--fsync=1".into());
    }
    let (cpu0, proc0, t0) = (system_cpu()?, process_cpu()?, Instant::now());
    let job = run_fio(&args).with_context(|| format!("{} on {}", w.title, t.name))?;
    let wall = t0.elapsed().as_secs_f64();
    let (cpu1, proc1) = (system_cpu()?, process_cpu()?);
    let resident = resident(t);
    let flush_s = evict(t)?;

    let dir = if w.rw.contains("read") { "read" } else { "write" };
    let d = job.get(dir).context("fio JSON has no data direction")?;
    let num = |v: Option<&Json>, what: &str| v.and_then(Json::num).with_context(|| format!("fio JSON lacks {what}"));
    let iops = num(d.get("iops"), "iops")?;
    let bw = num(d.get("bw_bytes"), "bw_bytes")?;
    let p99 = num(d.path(&["clat_ns", "percentile", "99.000000"]), "clat p99")?;
    let sync_p99 = if w.fsync {
        num(job.path(&["sync", "lat_ns", "percentile", "99.000000"]), "sync p99")?
    } else {
        0.0
    };
    ensure!(iops > 0.0, "{} on {}: no I/O completed", w.title, t.name);
    // fio's own CPU, in percent of one core over the job's run.
    let usr = num(job.get("usr_cpu"), "usr_cpu")?;
    let sys = num(job.get("sys_cpu"), "sys_cpu")?;
    let busy_s = cpu1.busy_s - cpu0.busy_s;
    let total_s = cpu1.total_s - cpu0.total_s;
    let ios = iops * wall;
    Ok(Sample {
        iops,
        mbps: bw / 1e6,
        p99_us: p99 / 1e3,
        sync_p99_us: sync_p99 / 1e3,
        server_cpu_us: (proc1 - proc0) / ios * 1e6,
        fio_cpu_us: (usr + sys) / 100.0 / iops * 1e6,
        busy: if total_s > 0.0 { busy_s / total_s } else { 0.0 },
        flush_s,
        resident,
    })
}

struct Cpu {
    busy_s: f64,
    total_s: f64,
}

fn clock_ticks() -> f64 {
    // USER_HZ; 100 on every Linux architecture that matters here.
    100.0
}

/// Whole-machine CPU time from `/proc/stat`.
fn system_cpu() -> Result<Cpu> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    ensure!(v.len() >= 5, "unexpected /proc/stat: {line}");
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let total: f64 = v.iter().take(8).sum();
    let idle = v[3] + v[4];
    Ok(Cpu {
        busy_s: (total - idle) / clock_ticks(),
        total_s: total / clock_ticks(),
    })
}

/// CPU seconds of this process (every thread), from `/proc/self/stat`.
fn process_cpu() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("read /proc/self/stat")?;
    let after = stat.rsplit_once(')').context("unexpected /proc/self/stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
    let utime: f64 = f.get(11).and_then(|x| x.parse().ok()).context("utime")?;
    let stime: f64 = f.get(12).and_then(|x| x.parse().ok()).context("stime")?;
    Ok((utime + stime) / clock_ticks())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The samples of one medium: `samples[workload][device]`, one per repetition.
struct Matrix {
    medium: Medium,
    names: Vec<&'static str>,
    cached: Vec<bool>,
    precondition_s: Vec<f64>,
    samples: Vec<Vec<Vec<Sample>>>,
}

fn run_matrix(dir: &Path, medium: Medium, s: &Settings) -> Result<Matrix> {
    let base = dir.join(medium.name());
    std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    // Three devices, the engine's side file stays empty: room for 3 and a bit.
    let _ram = match medium {
        Medium::Ram => Some(Tmpfs::mount(&base, 3 * s.size + 256 * MIB)?),
        Medium::Disk => None,
    };
    // Declared after the tmpfs: dropped (devices detached) before it unmounts.
    let targets = make_targets(&base, s.size, medium, &s.fuse)?;
    let mut m = Matrix {
        medium,
        names: targets.iter().map(|t| t.name).collect(),
        cached: targets.iter().map(|t| !t.cached.is_empty()).collect(),
        precondition_s: Vec::new(),
        samples: vec![vec![Vec::new(); targets.len()]; WORKLOADS.len()],
    };
    for t in &targets {
        eprintln!(
            "bench: {}: writing {} ({}) end to end",
            medium.name(),
            t.name,
            t.device.display()
        );
        m.precondition_s.push(precondition(t)?);
    }
    for rep in 0..s.reps {
        for &wi in &s.workloads {
            let w = &WORKLOADS[wi];
            // Rotate the order of the devices between repetitions.
            for k in 0..targets.len() {
                let ti = (k + rep) % targets.len();
                let t = &targets[ti];
                eprint!(
                    "bench: {} rep {}/{}: {} on {} ... ",
                    medium.name(),
                    rep + 1,
                    s.reps,
                    w.title,
                    t.name
                );
                let sample = measure(t, w, s)?;
                eprintln!(
                    "{:.0} IOPS, {:.0} MB/s, p99 {:.0} us",
                    sample.iops, sample.mbps, sample.p99_us
                );
                m.samples[wi][ti].push(sample);
            }
        }
    }
    Ok(m)
}

fn med(v: &[Sample], f: fn(&Sample) -> f64) -> f64 {
    median(v.iter().map(f).collect())
}

fn render_fio(results: &[Matrix], s: &Settings) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "\n## Data path: fio on the block device\n");
    let _ = writeln!(
        o,
        "Produced by `{}` (as root), which also writes the sections below. Same run, same machine, {} MiB devices, no filesystem. Every cell is the median of {} runs of \
         {} s (after 1 s of ramp; IOPS also shows the lowest and highest run), the devices taking turns \
         in an order rotated between repetitions. Per run: `fio --name=bench --filename=/dev/loopN \
         --direct=1 --ioengine=libaio --rw=RW --bs=BS --iodepth=QD --numjobs=1 --time_based \
         --runtime={} --ramp_time=1 --norandommap --randrepeat=0 --output-format=json [--fsync=1]`, \
         on a device first written end to end.\n",
        s.command,
        s.size / MIB,
        s.reps,
        s.runtime_s,
        s.runtime_s
    );
    let _ = writeln!(
        o,
        "- **plain**: `losetup --direct-io=on` over a file;\n\
         - **fuse**: our FUSE file ({} server threads, `max_background` {}) over a pass-through \
         `FileBackend`, with a direct-I/O loop device on it: the data path without the engine;\n\
         - **floe**: the same over an `EngineBackend`: continuous mode, 4 KiB tracking blocks, \
         1 MiB write-intent regions, no replica connected (so nothing is shipped, only tracked).\n",
        s.fuse.threads, s.fuse.max_background
    );
    let _ = writeln!(
        o,
        "Caching. At the block device everything is direct I/O (fio `--direct=1`, every loop device in \
         direct-I/O mode, the FUSE file opened `FOPEN_DIRECT_IO`). Below the FUSE server, though, both \
         backends write their files through the page cache (the store's durability point is fsync), \
         whereas the plain loop device reads and writes its file with `O_DIRECT`. So the devices run \
         twice: with the backing files on a **tmpfs** (every side's bytes in RAM, no side has a disk in \
         its path: what differs is the cost of the data path itself), \
         and on **ext4** on the machine's disk, as in production, where after each run the backing files \
         of fuse and floe are written back and dropped from the page cache (*flush after*: the write-back \
         the run left behind, which plain never has; *resident*: how much of the backing file the run had \
         pulled into the page cache by its end).\n"
    );
    for m in results {
        let _ = writeln!(o, "### Backing files on {}\n", m.medium.name());
        let pre: Vec<String> = m
            .names
            .iter()
            .zip(&m.precondition_s)
            .map(|(n, t)| format!("{n} {t:.1} s"))
            .collect();
        let _ = writeln!(
            o,
            "Writing each device end to end first (1 MiB, QD8) took {} (floe also syncs its write-intent \
             record at the first write to each region).\n",
            pre.join(", ")
        );
        let disk = m.medium == Medium::Disk;
        let _ = write!(
            o,
            "| workload | device | IOPS (lowest–highest) | MB/s | p99 latency (µs) | server CPU µs/IO | \
             fio CPU µs/IO | machine busy |"
        );
        let _ = writeln!(o, "{}", if disk { " flush after (s) | resident |" } else { "" });
        let _ = writeln!(
            o,
            "|---|---|--:|--:|--:|--:|--:|--:|{}",
            if disk { "--:|--:|" } else { "" }
        );
        for &wi in &s.workloads {
            let w = &WORKLOADS[wi];
            for (ti, name) in m.names.iter().enumerate() {
                let v = &m.samples[wi][ti];
                let p99 = if w.fsync {
                    format!(
                        "{:.0} write + {:.0} fsync",
                        med(v, |x| x.p99_us),
                        med(v, |x| x.sync_p99_us)
                    )
                } else {
                    format!("{:.0}", med(v, |x| x.p99_us))
                };
                let server = if *name == "plain" {
                    "–".to_owned()
                } else {
                    format!("{:.1}", med(v, |x| x.server_cpu_us))
                };
                let lo = v.iter().map(|x| x.iops).fold(f64::INFINITY, f64::min);
                let hi = v.iter().map(|x| x.iops).fold(0.0, f64::max);
                let _ = write!(
                    o,
                    "| {} | {} | {:.0} ({:.0}–{:.0}) | {:.1} | {} | {} | {:.1} | {:.0}% |",
                    w.title,
                    name,
                    med(v, |x| x.iops),
                    lo,
                    hi,
                    med(v, |x| x.mbps),
                    p99,
                    server,
                    med(v, |x| x.fio_cpu_us),
                    med(v, |x| x.busy) * 100.0
                );
                if disk {
                    let res: Vec<f64> = v.iter().filter_map(|x| x.resident).collect();
                    if m.cached[ti] && !res.is_empty() {
                        let _ = write!(o, " {:.2} | {:.0}% |", med(v, |x| x.flush_s), median(res) * 100.0);
                    } else {
                        let _ = write!(o, " – | – |");
                    }
                }
                let _ = writeln!(o);
            }
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(
        o,
        "*server CPU*: CPU time of the bench process (the FUSE server threads and the engine) per I/O; \
         *fio CPU*: fio's own user and system time per I/O (it submits, and in the plain case the kernel \
         does most of the loop work in its context or in loop workers); *machine busy*: share of all {} \
         cores busy during the run, whoever used them (the machine is shared: a busy machine means noisy \
         numbers).\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let _ = writeln!(
        o,
        "Ratios of the medians (IOPS; MB/s is proportional) to the plain loop device, same run:\n"
    );
    let _ = writeln!(
        o,
        "| workload | backing files | fuse / plain | floe / plain | floe / fuse | target floe / plain |"
    );
    let _ = writeln!(o, "|---|---|--:|--:|--:|---|");
    for &wi in &s.workloads {
        let w = &WORKLOADS[wi];
        for m in results {
            let (Some(a), Some(b), Some(c)) = (m.iops(w.key, 0), m.iops(w.key, 1), m.iops(w.key, 2)) else {
                continue;
            };
            let target = match w.target {
                Some(t) if c / a >= t => format!("≥ {t}: met"),
                Some(t) => format!("≥ {t}: **not met**"),
                None => "–".to_owned(),
            };
            let _ = writeln!(
                o,
                "| {} | {} | {:.2} | {:.2} | {:.2} | {} |",
                w.title,
                m.medium.name(),
                b / a,
                c / a,
                c / b,
                target
            );
        }
    }
    o
}

impl Matrix {
    fn cell(&self, key: &str, device: usize) -> Option<&[Sample]> {
        let wi = WORKLOADS.iter().position(|w| w.key == key)?;
        let v = self.samples.get(wi)?.get(device)?;
        (!v.is_empty()).then_some(v.as_slice())
    }

    /// Median IOPS of a workload on a device (0 plain, 1 fuse, 2 floe).
    fn iops(&self, key: &str, device: usize) -> Option<f64> {
        self.cell(key, device).map(|v| med(v, |x| x.iops))
    }

    /// `device` / `base` median IOPS.
    fn ratio(&self, key: &str, device: usize, base: usize) -> Option<f64> {
        Some(self.iops(key, device)? / self.iops(key, base)?)
    }
}

// ----- where the time goes: the engine lock, timed ----------------------------

/// The engine backend with its lock waits and holds timed: what
/// [`EngineBackend`]'s `read_at`/`write_at` do, plus four clock reads.
struct TimedEngine {
    inner: EngineBackend,
    calls: AtomicU64,
    wait_ns: AtomicU64,
    hold_ns: AtomicU64,
}

impl TimedEngine {
    fn timed<R>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Primary<FileStore>) -> Result<R, floe_engine::EngineError>,
    ) -> Result<R, BackendError> {
        let asked = Instant::now();
        let (got, done, r) = self.inner.with_primary(|p| {
            let got = Instant::now();
            let r = f(p);
            (got, Instant::now(), r)
        });
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.wait_ns
            .fetch_add((got - asked).as_nanos() as u64, Ordering::Relaxed);
        self.hold_ns
            .fetch_add((done - got).as_nanos() as u64, Ordering::Relaxed);
        r.map_err(|e| BackendError::Io {
            op,
            source: std::io::Error::other(e),
        })
    }

    fn take(&self) -> (u64, u64, u64) {
        (
            self.calls.swap(0, Ordering::Relaxed),
            self.wait_ns.swap(0, Ordering::Relaxed),
            self.hold_ns.swap(0, Ordering::Relaxed),
        )
    }
}

impl BlockBackend for TimedEngine {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.timed("read through the engine", |p| p.read(offset, buf))
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
        self.timed("write through the engine", |p| p.write(offset, buf))
    }

    fn zero_range(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.inner.zero_range(offset, len)
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.inner.flush()
    }
}

struct ProbeRow {
    medium: Medium,
    key: &'static str,
    workload: &'static str,
    iops: f64,
    lock_wait_us: f64,
    lock_hold_us: f64,
    lock_busy: f64,
}

/// floe's device with the engine lock timed, on each medium.
fn probe_rows(dir: &Path, s: &Settings) -> Result<Vec<ProbeRow>> {
    let mut rows = Vec::new();
    for &medium in &s.media {
        let base = dir.join(format!("probe-{}", medium.name()));
        std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
        let _ram = match medium {
            Medium::Ram => Some(Tmpfs::mount(&base, s.size + 256 * MIB)?),
            Medium::Disk => None,
        };
        let geo = Geometry::new(4096, s.size / 4096, 256)?;
        let store = FileStore::create(&base.join("engine"), "probe", geo)?;
        let cached = match medium {
            Medium::Ram => Vec::new(),
            Medium::Disk => vec![store.dir().join("image"), store.dir().join("side")],
        };
        let gen = RoleGeneration { counter: 1, site: 1 };
        let engine = Arc::new(TimedEngine {
            inner: EngineBackend::new(Primary::create(store, geo, Mode::Continuous, gen)?),
            calls: AtomicU64::new(0),
            wait_ns: AtomicU64::new(0),
            hold_ns: AtomicU64::new(0),
        });
        let vol = AttachedVolume::attach_with(engine.clone(), &base.join("fuse"), &s.fuse, None)
            .context("attach the probed engine volume")?;
        let t = Target {
            name: "floe (lock timed)",
            device: vol.device().to_owned(),
            cached,
            _guard: Guard::Volume(vol),
        };
        precondition(&t)?;
        for key in ["randwrite", "randread", "seqwrite"] {
            let w = WORKLOADS.iter().find(|w| w.key == key).context("workload")?;
            eprint!("bench: {} lock probe: {} ... ", medium.name(), w.title);
            engine.take();
            let start = Instant::now();
            let sample = measure(&t, w, s)?;
            // The calls of the run; the cache drop after it made none.
            let wall = start.elapsed().as_secs_f64() - sample.flush_s;
            let (calls, wait, hold) = engine.take();
            eprintln!("{:.0} IOPS", sample.iops);
            let calls = calls.max(1) as f64;
            rows.push(ProbeRow {
                medium,
                key: w.key,
                workload: w.title,
                iops: sample.iops,
                lock_wait_us: wait as f64 / calls / 1e3,
                lock_hold_us: hold as f64 / calls / 1e3,
                lock_busy: hold as f64 / 1e9 / wall,
            });
        }
    }
    Ok(rows)
}

fn render_probe(rows: &[ProbeRow], s: &Settings) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "\n## Where floe's time goes: the engine lock\n");
    let _ = writeln!(
        o,
        "floe's device again, one run per medium, its engine calls wrapped to time the wait for the \
         volume's mutex and how long each call holds it (four clock reads per request; {} FUSE threads). \
         *lock busy*: share of the run's wall time some FUSE thread held the lock.\n",
        s.fuse.threads
    );
    let _ = writeln!(
        o,
        "| workload | backing files | IOPS | lock wait (µs/request) | lock held (µs/request) | lock busy |"
    );
    let _ = writeln!(o, "|---|---|--:|--:|--:|--:|");
    for r in rows {
        let _ = writeln!(
            o,
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.0}% |",
            r.workload,
            r.medium.name(),
            r.iops,
            r.lock_wait_us,
            r.lock_hold_us,
            r.lock_busy * 100.0
        );
    }
    o
}

// ----- copy-on-write in a freeze window -------------------------------------

/// A small deterministic generator (xorshift64*) for offsets and data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = self.next().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }
}

struct CowRow {
    name: String,
    /// Tracking block size; `None` for the pass-through backend.
    engine_block: Option<u64>,
    /// µs per 1 MiB sequential `write_at`.
    seq_1m_us: f64,
    /// µs per 4 KiB random `write_at` before the freeze.
    outside_us: f64,
    /// µs per 4 KiB random `write_at` in the freeze window.
    inside_us: f64,
    host_bytes: u64,
    copied_bytes: Option<u64>,
    copies: Option<u64>,
}

/// Writes the whole device, then times 1 MiB sequential writes, then `n`
/// random 4 KiB writes; freezes (engine only) and times `n` more.
fn cow_run(
    name: String,
    backend: &dyn BlockBackend,
    engine: Option<&EngineBackend>,
    fill_chunk: u64,
    n: usize,
) -> Result<CowRow> {
    let size = backend.size();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut big = vec![0u8; MIB as usize];
    rng.fill(&mut big);
    for at in (0..size).step_by(fill_chunk as usize) {
        big[0] = big[0].wrapping_add(1);
        backend.write_at(at, &big[..fill_chunk as usize])?;
    }
    // Each timed phase starts with nothing dirty.
    backend.flush()?;
    let seq_n = (size / MIB).min(256);
    let start = Instant::now();
    for i in 0..seq_n {
        big[0] = big[0].wrapping_add(1);
        backend.write_at(i * MIB, &big)?;
    }
    let seq_1m_us = start.elapsed().as_secs_f64() * 1e6 / seq_n as f64;
    backend.flush()?;

    let blocks = size / (4 * KIB);
    let mut small = vec![0u8; 4 * KIB as usize];
    rng.fill(&mut small);
    let mut timed = |rng: &mut Rng| -> Result<f64> {
        let start = Instant::now();
        for _ in 0..n {
            small[0] = small[0].wrapping_add(1);
            backend.write_at((rng.next() % blocks) * 4 * KIB, &small)?;
        }
        Ok(start.elapsed().as_secs_f64() * 1e6 / n as f64)
    };
    let outside_us = timed(&mut rng)?;
    backend.flush()?;
    let (mut copies, mut block_size) = (None, 0);
    if let Some(e) = engine {
        let before = e.with_primary(|p| p.stats().cow_copies);
        e.with_primary(|p| p.freeze(1))?;
        block_size = e.with_primary(|p| p.geometry().block_size()) as u64;
        copies = Some(before);
    }
    let inside_us = timed(&mut rng)?;
    let copies = match (copies, engine) {
        (Some(before), Some(e)) => Some(e.with_primary(|p| p.stats().cow_copies) - before),
        _ => None,
    };
    Ok(CowRow {
        name,
        engine_block: engine.map(|_| block_size),
        seq_1m_us,
        outside_us,
        inside_us,
        host_bytes: n as u64 * 4 * KIB,
        copied_bytes: copies.map(|c| c * block_size),
        copies,
    })
}

fn cow_rows(dir: &Path, s: &Settings) -> Result<Vec<CowRow>> {
    let n = s.cow_writes;
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    {
        eprintln!("bench: in-process pass-through backend");
        let path = dir.join("inproc.img");
        let b = FileBackend::create(&path, s.size)?;
        rows.push(cow_run("`FileBackend` (pass-through)".into(), &b, None, 4 * KIB, n)?);
        drop(b);
        std::fs::remove_file(&path).context("remove the in-process file")?;
    }
    for bs in [4 * KIB, 64 * KIB] {
        eprintln!("bench: copy-on-write at {} KiB tracking blocks", bs / KIB);
        let sub = dir.join(format!("cow-{}k", bs / KIB));
        let geo = Geometry::new(bs as usize, s.size / bs, (MIB / bs).max(1))?;
        let store = FileStore::create(&sub, "cow", geo)?;
        let gen = RoleGeneration { counter: 1, site: 1 };
        let e = EngineBackend::new(Primary::create(store, geo, Mode::Continuous, gen)?);
        let name = format!("`EngineBackend`, {} KiB blocks", bs / KIB);
        rows.push(cow_run(name, &e, Some(&e), MIB, n)?);
        drop(e);
        std::fs::remove_dir_all(&sub).context("remove the copy-on-write volume")?;
    }

    Ok(rows)
}

fn render_cow(rows: &[CowRow], s: &Settings) -> String {
    let n = s.cow_writes;
    let mut o = String::new();
    let _ = writeln!(o, "\n## Copy-on-write during a freeze window\n");
    let _ = writeln!(
        o,
        "In process, one thread, no FUSE: each backend is a {} MiB volume written end to end \
         (so every block belongs to the epoch that the freeze closes, as when no replica is \
         connected), then 256 sequential 1 MiB `write_at`, then {} random 4 KiB `write_at` (*outside*); \
         then `with_primary(|p| p.freeze(1))` and {} more random 4 KiB `write_at` (*inside* the window, \
         which stays open because no replica acknowledges the epoch). Continuous mode; nothing is \
         shipped. Files on ext4 through the page cache, as in production, and fsynced before each timed \
         phase: the blocks a window copies were written recently and are still in the page cache, so a \
         copy aside reads from memory (from a cold cache it would add a disk read per copy). The \
         pass-through file is filled with 4 KiB writes, so that its page cache holds the same small \
         folios as the engine's image.\n",
        s.size / MIB,
        n,
        n
    );
    let _ = writeln!(
        o,
        "| backend | 1 MiB write (µs) | 4 KiB write outside (µs) | writes/s outside | writes/s inside | \
         inside / outside | host bytes in window | blocks copied aside | bytes copied aside | copied / host |"
    );
    let _ = writeln!(o, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in rows {
        let (copies, copied, amp) = match (r.copies, r.copied_bytes) {
            (Some(c), Some(b)) => (
                c.to_string(),
                format!("{:.1} MiB", b as f64 / MIB as f64),
                format!("{:.2}×", b as f64 / r.host_bytes as f64),
            ),
            _ => ("–".into(), "–".into(), "–".into()),
        };
        let _ = writeln!(
            o,
            "| {} | {:.0} | {:.1} | {:.0} | {:.0} | {:.2} | {:.1} MiB | {} | {} | {} |",
            r.name,
            r.seq_1m_us,
            r.outside_us,
            1e6 / r.outside_us,
            1e6 / r.inside_us,
            r.outside_us / r.inside_us,
            r.host_bytes as f64 / MIB as f64,
            copies,
            copied,
            amp
        );
    }
    o
}

// ----- what limits floe: the paragraph, from this run's numbers ---------------

fn render_limits(results: &[Matrix], probe: &[ProbeRow], cow: &[CowRow], s: &Settings) -> String {
    let ram = results.iter().find(|m| m.medium == Medium::Ram);
    let disk = results.iter().find(|m| m.medium == Medium::Disk);
    let lock = |medium, key| probe.iter().find(|r| r.medium == medium && r.key == key);
    let server = |m: &Matrix, key, device| m.cell(key, device).map(|v| med(v, |x| x.server_cpu_us));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut o = String::new();
    let _ = writeln!(o, "\n## What limits floe's numbers\n");
    let _ = writeln!(o, "From the tables above (this run):\n");

    // The targets, on both media.
    let mut reached = Vec::new();
    for (key, what, target) in [
        ("randwrite", "4 KiB random writes", 0.5),
        ("seqwrite", "1 MiB writes", 0.7),
    ] {
        let per: Vec<String> = results
            .iter()
            .filter_map(|m| m.ratio(key, 2, 0).map(|r| format!("{r:.2}× on {}", m.medium.name())))
            .collect();
        if !per.is_empty() {
            reached.push(format!("{what} {} (target ≥ {target})", per.join(", ")));
        }
    }
    if !reached.is_empty() {
        let _ = writeln!(
            o,
            "- **Targets.** floe against the plain loop device: {}. On tmpfs both sides run from RAM and \
             the whole gap is the data path's CPU; on ext4 floe's backend writes into the page cache \
             while the plain device writes through to the disk.",
            reached.join("; ")
        );
    }
    if let Some(m) = ram {
        if let (Some(rw), Some(rr), Some(sw), Some(cpu_rw), Some(cpu_sw)) = (
            m.ratio("randwrite", 1, 0),
            m.ratio("randread", 1, 0),
            m.ratio("seqwrite", 1, 0),
            server(m, "randwrite", 1),
            server(m, "seqwrite", 1),
        ) {
            let busy = m.cell("randwrite", 1).map(|v| med(v, |x| x.busy)).unwrap_or(0.0);
            let _ = writeln!(
                o,
                "- **The FUSE round trip, on {cores} cores.** With every byte in RAM the pass-through FUSE \
                 device, without the engine, reaches {rw:.2}× the plain loop device on 4 KiB random writes, \
                 {rr:.2}× on random reads and {sw:.2}× on 1 MiB writes, the machine {:.0}% busy. Each \
                 request crosses to user space and back (a read of `/dev/fuse` that copies a write's data \
                 in, a `pwrite` that copies it again, the reply, two wake-ups): {cpu_rw:.1} µs of server \
                 CPU per 4 KiB write and {cpu_sw:.0} µs per MiB, on the same cores that fio and the loop \
                 workers need. Only a cheaper crossing moves this: FUSE over io_uring (off on this kernel, \
                 and its requests cannot be handed over at a restart) or ublk.",
                busy * 100.0
            );
        }
        if let (Some(e_rw), Some(e_sw)) = (m.ratio("randwrite", 2, 1), m.ratio("seqwrite", 2, 1)) {
            let inproc = match (
                cow.iter().find(|r| r.engine_block.is_none()),
                cow.iter().find(|r| r.engine_block == Some(4 * KIB)),
            ) {
                (Some(f), Some(e)) => format!(
                    " (in process, {:.0} µs per 1 MiB `write_at` through the engine against {:.0} µs as one \
                     `pwrite`)",
                    e.seq_1m_us, f.seq_1m_us
                ),
                _ => String::new(),
            };
            let held = lock(Medium::Ram, "seqwrite")
                .map(|r| {
                    format!(
                        ": the lock is held {:.0} µs per 1 MiB request and busy {:.0}% of the run",
                        r.lock_hold_us,
                        r.lock_busy * 100.0
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "- **The engine writes block by block, under the volume's one mutex.** On 4 KiB writes floe \
                 reaches {e_rw:.2}× the pass-through device (one block: a few bitmap bits and an all-zero \
                 check). A 1 MiB write becomes 256 blocks, each copied into a block buffer and written with \
                 its own `pwrite`{inproc}, all under the lock, so one volume's large writes go one at a \
                 time{held}; floe reaches {e_sw:.2}× the pass-through device. Writing each run of whole \
                 blocks with one `pwrite` straight from the request, and the data I/O outside the lock \
                 (ordered per block against the copy-on-write), are engine and store changes."
            );
        }
    }
    if let (Some(w), Some(r)) = (lock(Medium::Ram, "randwrite"), lock(Medium::Disk, "randread")) {
        let bound = if w.lock_busy < 0.5 {
            "far from saturated"
        } else {
            "close to saturated"
        };
        let rr = disk
            .and_then(|m| m.ratio("randread", 2, 1))
            .map(|x| format!(" (floe reaches {x:.2}× the pass-through device on ext4 random reads)"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "- **The same lock across a disk read.** With the data in memory the engine holds it {:.1} µs \
             per 4 KiB write, {bound} ({:.0}% of the run on tmpfs). A read that misses the page cache \
             holds it for the whole disk read: on ext4 {:.0} µs held and {:.0} µs waited per request, \
             lock busy {:.0}%, so floe's 32 queued reads reach the disk one at a time{rr}. In continuous \
             and interval modes a read needs no engine state: a `&self` read path (a shared lock, or a read \
             handle from the store) would let them run in parallel. The lock also makes floe sensitive to \
             a busy CPU: a FUSE thread preempted while holding it stalls the other {}.",
            w.lock_hold_us,
            w.lock_busy * 100.0,
            r.lock_hold_us,
            r.lock_wait_us,
            r.lock_busy * 100.0,
            s.fuse.threads.saturating_sub(1)
        );
    }
    if let Some(m) = disk {
        if let (Some(v), Some(fs)) = (m.cell("randwrite", 2), m.ratio("fsync", 2, 0)) {
            let _ = writeln!(
                o,
                "- **On ext4, the page cache.** fuse and floe write their files through the page cache and \
                 pay the write-back after the run ({:.2} s after each {} s random-write run on floe), while \
                 the plain device writes through: their ext4 write rates are above their durable rates. The \
                 fsync=1 row is the like-for-like durable comparison: floe {fs:.2}× plain.",
                med(v, |x| x.flush_s),
                s.runtime_s
            );
        }
    }
    let _ = writeln!(
        o,
        "\n`EngineBackend` itself has nothing cheap left to remove: it allocates nothing per request (the \
         engine reuses its block buffers), it only takes the lock and maps errors. What is left is in the \
         FUSE path, the engine's per-block writes and the scope of the lock, which belong to the FUSE, \
         engine and store code."
    );
    o
}

// ----- a minimal JSON reader for fio's output --------------------------------

#[derive(Clone, Debug)]
enum Json {
    Null,
    Bool(#[allow(dead_code)] bool),
    Num(f64),
    Str(#[allow(dead_code)] String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Result<Json> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        p.value()
    }

    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(kv) => kv.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn path(&self, keys: &[&str]) -> Option<&Json> {
        keys.iter().try_fold(self, |v, k| v.get(k))
    }

    fn index(&self, i: usize) -> Option<&Json> {
        match self {
            Json::Arr(v) => v.get(i),
            _ => None,
        }
    }

    fn num(&self) -> Option<f64> {
        match self {
            Json::Num(x) => Some(*x),
            _ => None,
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<()> {
        self.ws();
        if self.s.get(self.i) != Some(&c) {
            bail!("expected {:?} at byte {}", c as char, self.i);
        }
        self.i += 1;
        Ok(())
    }

    fn value(&mut self) -> Result<Json> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut kv = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(kv));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.eat(b':')?;
                    kv.push((k, self.value()?));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(kv));
                        }
                        _ => bail!("expected , or }} at byte {}", self.i),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut v = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(v));
                }
                loop {
                    v.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(v));
                        }
                        _ => bail!("expected , or ] at byte {}", self.i),
                    }
                }
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') => self.word("true", Json::Bool(true)),
            Some(b'f') => self.word("false", Json::Bool(false)),
            Some(b'n') => self.word("null", Json::Null),
            Some(_) => {
                let start = self.i;
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|c| c.is_ascii_digit() || b"+-.eE".contains(c))
                {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i])?;
                let x = text
                    .parse()
                    .with_context(|| format!("bad number {text:?} at byte {start}"))?;
                Ok(Json::Num(x))
            }
            None => bail!("unexpected end of JSON"),
        }
    }

    fn word(&mut self, w: &str, v: Json) -> Result<Json> {
        ensure!(
            self.s[self.i..].starts_with(w.as_bytes()),
            "bad literal at byte {}",
            self.i
        );
        self.i += w.len();
        Ok(v)
    }

    fn string(&mut self) -> Result<String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let c = *self.s.get(self.i).context("unterminated string")?;
            self.i += 1;
            match c {
                b'"' => return Ok(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => {
                    let e = *self.s.get(self.i).context("unterminated escape")?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        // Keep \uXXXX as is: fio's keys and numbers never need it.
                        b'u' => out.extend_from_slice(b"\\u"),
                        other => out.push(other),
                    }
                }
                _ => out.push(c),
            }
        }
    }
}
