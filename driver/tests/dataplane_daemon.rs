//! The data-plane daemon end to end: `floe-dataplane holder` and
//! `floe-dataplane serve` as real processes, `floe-csi` in node mode, the
//! gRPC API (`node.proto`) over its unix socket, engine-backed volumes with ext4 on them.
//!
//! Needs root, `/dev/fuse`, loop devices, `mkfs.ext4`/`e2fsck`, and for the
//! restart tests `fio` and Linux >= 6.9 (`FUSE_NOTIFY_RESEND`). Outside CI a
//! missing prerequisite skips a test with a note; in CI it fails it.
//!
//! Every test holds what it set up in a [`Rig`] whose `Drop` tears it all
//! down, pass or fail: fio, file systems (thawed first), volumes (through
//! the API while a `serve` runs, then by hand), FUSE connections (aborted
//! when nobody serves them), loop devices, and every process it started.
//! The tests take one lock: they share two cores and the loop devices.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use floe_driver::daemon::files::RunPaths;
use floe_driver::daemon::FrozenRecord;
use floe_driver::dataplane::fsfreeze;
use floe_driver::dataplane::fuse::abort_connection;
use floe_driver::dataplane::loopdev;
use floe_driver::dataplane::mount::{self, FsType};
use floe_driver::node::error::Error as NodeError;
use floe_driver::node::params::VolumeParams;
use floe_engine::Mode;
use floe_proto::node::AttachState;
use rustix::mount::{MountFlags, UnmountFlags};
use rustix::process::{Pid, Signal};
use tonic::Code;

mod common;

use common::plane::PlaneClient;
use common::{skip_or_fail, tool_present};

const DATAPLANE: &str = env!("CARGO_BIN_EXE_floe-dataplane");
const CSI: &str = env!("CARGO_BIN_EXE_floe-csi");
const MIB: u64 = 1 << 20;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ----- prerequisites ---------------------------------------------------------

fn kernel_has_notify_resend() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    matches!((parts.next(), parts.next()), (Some(major), Some(minor)) if (major, minor) >= (6, 9))
}

/// Whether `test` can run: root, FUSE, loop devices, ext4 tools, plus
/// `fio` and `FUSE_NOTIFY_RESEND` when `restarts`.
fn can_run(test: &str, restarts: bool) -> bool {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root");
    }
    for dev in ["/dev/fuse", "/dev/loop-control"] {
        if !Path::new(dev).exists() {
            missing.push(dev);
        }
    }
    for tool in ["mkfs.ext4", "e2fsck", "losetup", "blkid"] {
        if !tool_present(tool) {
            missing.push(tool);
        }
    }
    if restarts {
        if !tool_present("fio") {
            missing.push("fio");
        }
        if !kernel_has_notify_resend() {
            missing.push("Linux >= 6.9 (FUSE_NOTIFY_RESEND)");
        }
    }
    if missing.is_empty() {
        true
    } else {
        skip_or_fail(&format!("{test}: needs {}", missing.join(", ")));
        false
    }
}

// ----- the rig ---------------------------------------------------------------

/// Everything a test started, torn down on drop.
struct Rig {
    dir: tempfile::TempDir,
    run: RunPaths,
    holder: Option<Child>,
    /// Every `serve` started, the current one last.
    serves: Vec<Child>,
    csi: Option<Child>,
    fio: Option<Child>,
    /// File systems mounted on floe devices.
    mounts: Vec<PathBuf>,
    /// Volumes created (deleted at teardown).
    volumes: Vec<String>,
    logs: Vec<PathBuf>,
}

impl Rig {
    fn new(name: &str) -> Result<Self> {
        let dir = common::scratch(&format!("daemon-{name}")).context("create the scratch dir")?;
        let run = RunPaths::new(&dir.path().join("run"));
        Ok(Rig {
            dir,
            run,
            holder: None,
            serves: Vec::new(),
            csi: None,
            fio: None,
            mounts: Vec::new(),
            volumes: Vec::new(),
            logs: Vec::new(),
        })
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self, program: &str, args: &[&str], log: &str) -> Result<Child> {
        let path = self.dir.path().join(log);
        let file = std::fs::File::create(&path)?;
        self.logs.push(path);
        Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("start {program} {}", args.join(" ")))
    }

    fn start_holder(&mut self) -> Result<()> {
        let run = self.run.dir.to_string_lossy().into_owned();
        let child = self.spawn(DATAPLANE, &["holder", "--run-dir", &run], "holder.log")?;
        self.holder = Some(child);
        let sock = self.run.holder_socket();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            ensure!(Instant::now() < deadline, "the holder did not bind {}", sock.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts a `serve` and waits until it answers (its own pid in status).
    fn start_serve(&mut self) -> Result<u32> {
        let (run, data) = (
            self.run.dir.to_string_lossy().into_owned(),
            self.data_dir().to_string_lossy().into_owned(),
        );
        let log = format!("serve-{}.log", self.serves.len() + 1);
        let child = self.spawn(DATAPLANE, &["serve", "--run-dir", &run, "--data-dir", &data], &log)?;
        let pid = child.id();
        self.serves.push(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = self.client()?;
        loop {
            if let Ok(s) = client.status() {
                if s.pid == pid {
                    return Ok(pid);
                }
            }
            if let Some(status) = self.serves.last_mut().expect("just pushed").try_wait()? {
                bail!("serve exited with {status} before answering\n{}", self.log_tail());
            }
            ensure!(
                Instant::now() < deadline,
                "serve does not answer after 30 s\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn serving(&mut self) -> bool {
        self.serves.last_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn client(&self) -> Result<PlaneClient> {
        Ok(PlaneClient::new(&self.run.api_socket())?)
    }

    /// Sends `sig` to the current `serve`.
    fn signal_serve(&mut self, sig: Signal) -> Result<()> {
        let child = self.serves.last().context("no serve")?;
        rustix::process::kill_process(Pid::from_child(child), sig)?;
        Ok(())
    }

    /// Mounts ext4 on `device` at `<dir>/<name>`.
    fn mount(&mut self, device: &Path, name: &str) -> Result<PathBuf> {
        let target = self.dir.path().join(name);
        let fs = mount::MountedFs::mount(device, &target, FsType::Ext4, MountFlags::NOATIME, "")?;
        // Unmounted by `unmount` or the teardown, never by the guard.
        std::mem::forget(fs);
        self.mounts.push(target.clone());
        Ok(target)
    }

    fn unmount(&mut self, target: &Path) -> Result<()> {
        mount::unmount_path(target)?;
        self.mounts.retain(|m| m != target);
        Ok(())
    }

    /// The last lines of every log, for failure messages.
    fn log_tail(&self) -> String {
        let mut out = String::new();
        for path in &self.logs {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {}\n", path.display()));
            for l in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    fn teardown(&mut self) {
        let fuse_dirs: Vec<PathBuf> = std::fs::read_dir(self.run.dir.join("fuse"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let serving = self.serving();
        // Nobody serves the connections: end them, so that nothing below
        // waits forever on their I/O.
        if !serving {
            for d in &fuse_dirs {
                abort_connection(d);
            }
        }
        // First thaw: a writer blocked on a frozen file system cannot even
        // be killed.
        for target in &self.mounts {
            let _ = fsfreeze::thaw(target);
        }
        if let Some(mut fio) = self.fio.take() {
            let _ = fio.kill();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(fio.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(fio.try_wait(), Ok(None)) {
                // Its I/O hangs in an unserved connection.
                for d in &fuse_dirs {
                    abort_connection(d);
                }
            }
            let _ = fio.wait();
        }
        for target in std::mem::take(&mut self.mounts) {
            if mount::unmount_path(&target).is_err() {
                for d in &fuse_dirs {
                    abort_connection(d);
                }
                if mount::unmount_path(&target).is_err() {
                    let _ = rustix::mount::unmount(&target, UnmountFlags::DETACH);
                }
            }
        }
        if self.serving() {
            if let Ok(c) = self.client() {
                for v in &self.volumes {
                    if let Err(e) = c.detach(v) {
                        eprintln!("teardown: detach {v}: {e:#}");
                    }
                    let _ = c.delete(v);
                }
            }
            let _ = self.signal_serve(Signal::TERM);
        }
        for mut s in self.serves.drain(..) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(s.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = s.kill();
            let _ = s.wait();
        }
        // Whatever is still attached: nobody serves it any more.
        for d in &fuse_dirs {
            let file = d.join("volume");
            let devices = loopdev::devices_backed_by(&file);
            if devices.is_empty() && !is_mounted(d) {
                continue;
            }
            abort_connection(d);
            for dev in devices {
                let _ = Command::new("losetup").arg("-d").arg(&dev).status();
                let backing = Path::new("/sys/block")
                    .join(dev.file_name().unwrap_or_default())
                    .join("loop/backing_file");
                let deadline = Instant::now() + Duration::from_secs(10);
                while backing.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            if mount::unmount_path(d).is_err() {
                let _ = rustix::mount::unmount(d, UnmountFlags::DETACH);
            }
        }
        for mut c in [self.csi.take(), self.holder.take()].into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn is_mounted(path: &Path) -> bool {
    let want = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&want))
}

/// The code and message of a failed call, or a failure of the test.
fn api_error<T: std::fmt::Debug>(res: Result<T, NodeError>, what: &str) -> Result<(Code, String)> {
    match res {
        Ok(v) => bail!("{what}: succeeded ({v:?}), expected an error"),
        Err(e) => Ok((e.code(), e.to_string())),
    }
}

/// Writes `bytes` to a new file under `dir` and fsyncs it, on a thread;
/// the receiver gets the result when it completed.
fn write_in_background(path: PathBuf, bytes: Vec<u8>) -> mpsc::Receiver<std::io::Result<Instant>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let res = (|| {
            let mut f = std::fs::File::create(&path)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            Ok(Instant::now())
        })();
        let _ = tx.send(res);
    });
    rx
}

fn content(i: u64, len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

// ----- kernel log ------------------------------------------------------------

fn dmesg() -> Option<Vec<String>> {
    let out = Command::new("dmesg").output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    })
}

/// Lines of `after` that came after the last line of `before`.
fn new_lines(before: &[String], after: &[String]) -> Vec<String> {
    let start = before
        .last()
        .and_then(|last| after.iter().rposition(|l| l == last))
        .map_or(0, |p| p + 1);
    after[start..].to_vec()
}

// ----- tests -----------------------------------------------------------------

/// DESIGN §4 "Data path": with fio writing and verifying on an
/// engine-backed ext4 volume, the CSI server is SIGKILLed, then the data
/// plane is restarted gracefully (SIGTERM and a successor), then the
/// successor is SIGKILLed and another one started: fio finishes with no I/O
/// and no verify error, and the kernel logs no file system error.
#[test]
fn restarts_of_the_csi_server_and_the_data_plane_cost_a_running_filesystem_no_io_error() -> Result<()> {
    if !can_run("daemon restart", true) {
        return Ok(());
    }
    let _serial = serial();
    let t0 = Instant::now();
    let mut rig = Rig::new("restart")?;
    rig.start_holder()?;
    let first = rig.start_serve()?;
    let sock = rig.run.api_socket().to_string_lossy().into_owned();
    // Its own endpoint; it holds no data of its own.
    let csi_dir = rig.dir.path().join("csi");
    std::fs::create_dir_all(&csi_dir)?;
    let endpoint = format!("unix://{}", csi_dir.join("csi.sock").display());
    let csi = rig.spawn(
        CSI,
        &[
            "--mode",
            "node",
            "--node-id",
            "floe-test-node",
            "--endpoint",
            &endpoint,
            "--dataplane-socket",
            &sock,
        ],
        "csi.log",
    )?;
    rig.csi = Some(csi);

    let c = rig.client()?;
    rig.volumes.push("pvc-fio".into());
    c.create("pvc-fio", 512 * MIB, Some(4096), Some(Mode::Continuous))?;
    let dev = c.attach("pvc-fio")?;
    ensure!(mount::format_if_empty(&dev, FsType::Ext4)?, "a new volume reads empty");
    let mnt = rig.mount(&dev, "mnt")?;
    let devname = dev.file_name().unwrap_or_default().to_string_lossy().into_owned();

    let before = dmesg();
    if before.is_none() {
        skip_or_fail("daemon restart: dmesg is not readable, the kernel log check is skipped");
    }
    let fio_out = rig.dir.path().join("fio.json");
    let fio = Command::new("fio")
        .args([
            "--name=floe-daemon",
            "--rw=randwrite",
            "--bs=4k",
            "--size=256M",
            "--iodepth=16",
            "--ioengine=libaio",
            "--direct=1",
            "--verify=crc32c",
            "--verify_backlog=1024",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--time_based",
            "--runtime=20",
            "--output-format=json",
        ])
        .arg(format!("--filename={}", mnt.join("fio.dat").display()))
        .arg(format!("--output={}", fio_out.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start fio")?;
    rig.fio = Some(fio);
    // Each step waits until fio has written 8 MiB more through the device
    // (its /sys/block stat), not on a clock.
    let stat = Path::new("/sys/block").join(&devname).join("stat");
    let written = || -> Result<u64> {
        let text = std::fs::read_to_string(&stat).with_context(|| format!("read {}", stat.display()))?;
        let sectors = text.split_whitespace().nth(6).and_then(|s| s.parse::<u64>().ok());
        Ok(sectors.context("sectors written in the device's stat")? * 512)
    };
    let fio_writes_on = |step: &str| -> Result<()> {
        let from = written()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while written()? < from + (8 << 20) {
            ensure!(
                Instant::now() < deadline,
                "fio wrote less than 8 MiB in 60 s before {step}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    };

    // 1. SIGKILL the CSI server (after it logged at least one status).
    let csi_log_path = rig.dir.path().join("csi.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let csi_log = std::fs::read_to_string(&csi_log_path).unwrap_or_default();
        if csi_log.contains("data plane status") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "floe-csi did not reach the data plane in 30 s:\n{csi_log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    fio_writes_on("the kill of floe-csi")?;
    let mut csi = rig.csi.take().context("csi")?;
    csi.kill()?;
    csi.wait()?;

    // 2. Graceful restart: SIGTERM, and a successor started at once (it
    //    waits for the old one to let go of the serve lock).
    fio_writes_on("the graceful restart")?;
    rig.signal_serve(Signal::TERM)?;
    let graceful = Instant::now();
    let second = rig.start_serve()?;
    let handover_ms = graceful.elapsed().as_millis();
    let old = rig.serves.first_mut().context("first serve")?;
    let status = old.wait()?;
    ensure!(status.success(), "the old serve exited with {status} on SIGTERM");

    // 3. SIGKILL the successor, start another.
    fio_writes_on("the SIGKILL of serve")?;
    rig.signal_serve(Signal::KILL)?;
    let killed = Instant::now();
    let third = rig.start_serve()?;
    let takeover_ms = killed.elapsed().as_millis();
    ensure!(first != second && second != third);

    let deadline = Instant::now() + Duration::from_secs(120);
    let fio = rig.fio.as_mut().context("fio")?;
    while fio.try_wait()?.is_none() {
        ensure!(
            Instant::now() < deadline,
            "fio did not finish within 120 s of its start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = rig.fio.take().context("fio")?.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = std::fs::read_to_string(&fio_out).unwrap_or_default();
    ensure!(
        out.status.success(),
        "fio failed ({}): {stderr}\n{}",
        out.status,
        rig.log_tail()
    );
    let json: serde_json::Value = serde_json::from_str(&report).with_context(|| format!("fio report: {report}"))?;
    let job = &json["jobs"][0];
    ensure!(job["error"] == 0, "fio reported error {}", job["error"]);
    let written = job["write"]["io_bytes"].as_u64().unwrap_or(0);
    let verified = job["read"]["io_bytes"].as_u64().unwrap_or(0);
    ensure!(
        written > 0 && verified > 0,
        "fio wrote {written} and verified {verified} bytes"
    );
    ensure!(
        !stderr.contains("verify") && !stderr.contains("io_u error"),
        "fio: {stderr}"
    );

    let s = rig.client()?.status()?;
    ensure!(
        s.took_over.len() == 1 && s.took_over[0] == s.volumes[0].store,
        "the last serve took over {:?}",
        s.took_over
    );
    let a = s.volumes[0].attachment.as_ref().context("still attached")?;
    ensure!(a.state() == AttachState::Resumed, "{a:?}");
    // create 1, attach 2, each takeover one more.
    ensure!(a.incarnation == Some(4), "engine incarnation {:?}", a.incarnation);

    if let Some(before) = before {
        let after = dmesg().context("dmesg became unreadable")?;
        let bad: Vec<String> = new_lines(&before, &after)
            .into_iter()
            .filter(|l| l.contains(&devname) && (l.contains("EXT4-fs error") || l.contains("I/O error")))
            .collect();
        ensure!(bad.is_empty(), "kernel log:\n{}", bad.join("\n"));
    }

    rig.unmount(&mnt)?;
    mount::check(&dev, FsType::Ext4)?;
    let c = rig.client()?;
    c.detach("pvc-fio")?;
    c.delete("pvc-fio")?;
    rig.volumes.clear();
    eprintln!(
        "restart: fio wrote {} MiB and verified {} MiB; graceful handover {handover_ms} ms, takeover after SIGKILL {takeover_ms} ms; {:.1} s in all",
        written / MIB,
        verified / MIB,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// DESIGN §4 "Freeze sequence": a quiesce thaws at its deadline even if
/// nobody calls thaw; the late thaw learns the cut is void.
#[test]
fn a_quiesce_past_its_deadline_is_thawed_by_the_watchdog() -> Result<()> {
    if !can_run("daemon watchdog", false) {
        return Ok(());
    }
    let _serial = serial();
    let mut rig = Rig::new("watchdog")?;
    rig.start_holder()?;
    rig.start_serve()?;
    let c = rig.client()?;
    rig.volumes.push("pvc-freeze".into());
    c.create("pvc-freeze", 64 * MIB, None, None)?;
    let dev = c.attach("pvc-freeze")?;
    mount::format_if_empty(&dev, FsType::Ext4)?;
    let mnt = rig.mount(&dev, "mnt")?;

    // A quiesce thawed on request.
    let q = c.quiesce(&mnt, None)?;
    let now_ms = u64::try_from(std::time::UNIX_EPOCH.elapsed()?.as_millis())?;
    let left = q.deadline_unix_ms.saturating_sub(now_ms);
    ensure!(
        (25_000..=30_000).contains(&left),
        "the default deadline is {left} ms away"
    );
    let (kind, msg) = api_error(c.quiesce(&mnt, None), "second quiesce")?;
    ensure!(
        kind == Code::FailedPrecondition && msg.contains(&q.token),
        "{kind:?}: {msg}"
    );
    ensure!(c.thaw(&q.token)? == mnt);
    let done = write_in_background(mnt.join("a"), vec![1; 4096]);
    done.recv_timeout(Duration::from_secs(10))
        .context("a write after thaw")??;

    // A quiesce left to its deadline.
    let timeout = Duration::from_millis(1500);
    let frozen_at = Instant::now();
    let q = c.quiesce(&mnt, Some(timeout))?;
    let record = FrozenRecord::path_in(&rig.run.frozen(), &q.token);
    ensure!(record.exists(), "no freeze record at {}", record.display());
    ensure!(c.status()?.frozen.len() == 1);
    let done = write_in_background(mnt.join("b"), vec![2; 4096]);
    ensure!(
        done.recv_timeout(Duration::from_millis(500)).is_err(),
        "a write completed on a frozen file system"
    );
    let completed = done
        .recv_timeout(Duration::from_secs(10))
        .context("the write did not complete after the deadline: the watchdog did not thaw")??;
    let waited = completed - frozen_at;
    ensure!(
        waited >= timeout - Duration::from_millis(100),
        "the write completed {waited:?} after the quiesce, before its deadline"
    );
    ensure!(!record.exists(), "the freeze record outlived the thaw");
    ensure!(c.status()?.frozen.is_empty());
    let (kind, msg) = api_error(c.thaw(&q.token), "late thaw")?;
    ensure!(
        kind == Code::DeadlineExceeded && msg.contains("watchdog"),
        "{kind:?}: {msg}"
    );

    let (kind, _) = api_error(
        c.quiesce(rig.dir.path(), Some(Duration::from_secs(1))),
        "quiesce of a plain directory",
    )?;
    ensure!(kind == Code::InvalidArgument);
    eprintln!("watchdog: the write waited {waited:?} for a {timeout:?} deadline");
    Ok(())
}

/// A file system frozen by a data plane that was then SIGKILLed is thawed
/// by the next one as it starts, long before the quiesce's deadline.
#[test]
fn a_file_system_left_frozen_by_a_killed_data_plane_is_thawed_at_start() -> Result<()> {
    if !can_run("daemon leftover freeze", true) {
        return Ok(());
    }
    let _serial = serial();
    let mut rig = Rig::new("leftover")?;
    rig.start_holder()?;
    rig.start_serve()?;
    let c = rig.client()?;
    rig.volumes.push("pvc-left".into());
    c.create("pvc-left", 64 * MIB, None, None)?;
    let dev = c.attach("pvc-left")?;
    mount::format_if_empty(&dev, FsType::Ext4)?;
    let mnt = rig.mount(&dev, "mnt")?;

    let q = c.quiesce(&mnt, Some(Duration::from_secs(120)))?;
    rig.signal_serve(Signal::KILL)?;
    rig.serves.last_mut().context("serve")?.wait()?;
    let record = FrozenRecord::path_in(&rig.run.frozen(), &q.token);
    ensure!(record.exists(), "the freeze record is gone with its process");
    let done = write_in_background(mnt.join("c"), vec![3; 4096]);
    ensure!(
        done.recv_timeout(Duration::from_millis(300)).is_err(),
        "the file system is not frozen"
    );
    let restarted = Instant::now();
    rig.start_serve()?;
    done.recv_timeout(Duration::from_secs(10))
        .context("the leftover freeze was not thawed at start")??;
    ensure!(!record.exists(), "the leftover freeze record was not removed");
    ensure!(rig.client()?.status()?.frozen.is_empty());
    eprintln!("leftover: thawed {:?} after the restart", restarted.elapsed());
    Ok(())
}

/// What the module doc says of a holder that dies: with the holder and the
/// data plane gone at once the connection ends, the next data plane reports
/// the volume broken (never serves it, never forgets it), and detach then
/// attach recovers it with its data.
#[test]
fn a_volume_whose_holder_died_with_the_data_plane_is_reported_broken_and_recovers_by_reattach() -> Result<()> {
    if !can_run("daemon holder death", true) {
        return Ok(());
    }
    let _serial = serial();
    let mut rig = Rig::new("holder-death")?;
    rig.start_holder()?;
    rig.start_serve()?;
    let c = rig.client()?;
    rig.volumes.push("pvc-h".into());
    c.create("pvc-h", 32 * MIB, None, None)?;
    let dev = c.attach("pvc-h")?;
    let data = content(7, 1 << 20);
    {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new().write(true).open(&dev)?;
        f.write_all_at(&data, 4 * MIB)?;
        f.sync_all()?;
    }
    let mut holder = rig.holder.take().context("holder")?;
    holder.kill()?;
    holder.wait()?;
    rig.signal_serve(Signal::KILL)?;
    rig.serves.last_mut().context("serve")?.wait()?;

    rig.start_holder()?;
    rig.start_serve()?;
    let c = rig.client()?;
    let s = c.status()?;
    ensure!(s.took_over.is_empty(), "took over {:?}", s.took_over);
    let a = s.volumes[0]
        .attachment
        .as_ref()
        .context("the volume is still listed as attached")?;
    ensure!(a.state() == AttachState::Broken && Path::new(&a.device) == dev, "{a:?}");
    ensure!(a.detail.contains("detach"), "{:?}", a.detail);
    let store = s.volumes[0].store.clone();
    let (kind, _) = api_error(c.attach("pvc-h"), "attach of a broken volume")?;
    ensure!(kind == Code::FailedPrecondition);
    c.detach("pvc-h")?;
    let fuse_dir = rig.run.fuse_dir(&store);
    ensure!(!is_mounted(&fuse_dir), "the dead FUSE mount is gone");
    ensure!(loopdev::devices_backed_by(&fuse_dir.join("volume")).is_empty());

    let dev = c.attach("pvc-h")?;
    let mut got = vec![0u8; data.len()];
    {
        use std::os::unix::fs::FileExt as _;
        std::fs::File::open(&dev)?.read_exact_at(&mut got, 4 * MIB)?;
    }
    ensure!(
        got == data,
        "the data written before the crash reads back after re-attach"
    );
    c.detach("pvc-h")?;
    Ok(())
}

/// A local snapshot restores into a new volume that mounts and holds the
/// files as they were at the snapshot, and not what was written after.
#[test]
fn a_snapshot_restores_into_a_new_volume_holding_its_files() -> Result<()> {
    if !can_run("daemon snapshot", false) {
        return Ok(());
    }
    let _serial = serial();
    let mut rig = Rig::new("snapshot")?;
    rig.start_holder()?;
    rig.start_serve()?;
    let c = rig.client()?;
    rig.volumes.extend(["pvc-a".to_owned(), "pvc-b".to_owned()]);
    c.create("pvc-a", 64 * MIB, Some(8192), Some(Mode::Log))?;
    let dev_a = c.attach("pvc-a")?;
    mount::format_if_empty(&dev_a, FsType::Ext4)?;
    let mnt_a = rig.mount(&dev_a, "a")?;
    let sizes = [1usize, 4096, 123_457, 3 << 20];
    for (i, &len) in sizes.iter().enumerate() {
        std::fs::write(mnt_a.join(format!("file-{i}")), content(i as u64, len))?;
    }
    // The snapshot freezes the mounted file system itself.
    let snap = c.snapshot("pvc-a", "snap-1")?;
    ensure!(snap.size_bytes == 64 * MIB && snap.source_volume == "pvc-a", "{snap:?}");
    std::fs::write(mnt_a.join("after"), b"written after the snapshot")?;
    let again = c.snapshot("pvc-a", "snap-1")?;
    ensure!(again == snap, "the same snapshot again: {again:?}");

    let params = c.volume("pvc-a")?.context("pvc-a")?.params;
    ensure!(params.block_size == 8192 && params.mode == Mode::Log, "{params:?}");
    let b = c.restore("pvc-b", "snap-1", 64 * MIB, params)?;
    ensure!(b.size_bytes == 64 * MIB && b.params == params, "{b:?}");
    let dev_b = c.attach("pvc-b")?;
    mount::check(&dev_b, FsType::Ext4)?;
    let mnt_b = rig.mount(&dev_b, "b")?;
    for (i, &len) in sizes.iter().enumerate() {
        let got = std::fs::read(mnt_b.join(format!("file-{i}")))?;
        ensure!(got == content(i as u64, len), "file-{i} differs in the restored volume");
    }
    ensure!(
        !mnt_b.join("after").exists(),
        "a file written after the snapshot was restored"
    );

    let (kind, _) = api_error(c.snapshot("pvc-none", "s"), "snapshot of an unknown volume")?;
    ensure!(kind == Code::NotFound);
    let (kind, msg) = api_error(
        c.restore("pvc-c", "nope", 64 * MIB, params),
        "restore of an unknown snapshot",
    )?;
    ensure!(kind == Code::NotFound && msg.contains("nope"), "{kind:?}: {msg}");
    let other = VolumeParams {
        block_size: 4096,
        ..params
    };
    let (kind, _) = api_error(
        c.restore("pvc-b", "snap-1", 64 * MIB, other),
        "restore onto an existing volume of other parameters",
    )?;
    ensure!(kind == Code::AlreadyExists);

    for (m, v) in [(mnt_a, "pvc-a"), (mnt_b, "pvc-b")] {
        rig.unmount(&m)?;
        c.detach(v)?;
        c.delete(v)?;
    }
    rig.volumes.clear();
    Ok(())
}

/// Bad requests get errors of the right kind that name what to fix.
#[test]
fn bad_requests_get_errors_that_name_what_to_fix() -> Result<()> {
    if !can_run("daemon bad requests", false) {
        return Ok(());
    }
    let _serial = serial();
    let mut rig = Rig::new("errors")?;
    rig.start_holder()?;
    rig.start_serve()?;
    let c = rig.client()?;

    let cases: Vec<(Result<(), NodeError>, Code, &[&str])> = vec![
        (c.attach("pvc-nope").map(drop), Code::NotFound, &["pvc-nope"]),
        (
            c.create("v", 64 * MIB, Some(3000), None).map(drop),
            Code::InvalidArgument,
            &["3000", "power of two"],
        ),
        (c.create("v", 0, None, None).map(drop), Code::InvalidArgument, &["size"]),
        (
            c.create("../x", 4096, None, None).map(drop),
            Code::InvalidArgument,
            &["spec.id", "../x"],
        ),
        (
            c.thaw("0123456789abcdef0123456789abcdef").map(drop),
            Code::NotFound,
            &["no file system is frozen"],
        ),
        (
            c.thaw("../../etc").map(drop),
            Code::InvalidArgument,
            &["32 hexadecimal digits"],
        ),
        (
            c.quiesce(Path::new("mnt/relative"), None).map(drop),
            Code::InvalidArgument,
            &["absolute"],
        ),
        (
            c.quiesce(Path::new("/mnt"), Some(Duration::from_secs(3600))).map(drop),
            Code::InvalidArgument,
            &["timeout_ms 3600000", "600000"],
        ),
    ];
    for (i, (res, kind, words)) in cases.into_iter().enumerate() {
        let (got, msg) = api_error(res, &format!("case {i}"))?;
        ensure!(got == kind, "case {i}: {got:?} ({msg}), expected {kind:?}");
        for w in words {
            ensure!(msg.contains(w), "case {i}: {msg:?} does not say {w:?}");
        }
    }
    // A replication mode no build knows, as a newer or hostile client could
    // send it: refused at the edge.
    let raw = floe_proto::node::VolumeSpec {
        id: "v".into(),
        name: "v".into(),
        size_bytes: 4096,
        params: Some(floe_proto::node::VolumeParams {
            fs_type: floe_proto::node::FsType::Ext4.into(),
            block_size: 4096,
            replication_mode: 99,
        }),
        source: None,
    };
    let (kind, msg) = c.block_on(async {
        let channel = floe_driver::node::rpc::LocalChannel::new(&rig.run.api_socket()).get();
        let mut client = floe_proto::node::node_volumes_client::NodeVolumesClient::new(channel);
        let req = floe_proto::node::CreateVolumeRequest { spec: Some(raw) };
        match client.create_volume(req).await {
            Ok(r) => (Code::Ok, format!("{:?}", r.into_inner())),
            Err(s) => (s.code(), s.message().to_owned()),
        }
    });
    ensure!(
        kind == Code::InvalidArgument && msg.contains("99"),
        "mode 99: {kind:?}: {msg}"
    );
    // Bytes that are not HTTP/2: the connection is closed, and the next
    // client is served.
    {
        let mut raw = std::os::unix::net::UnixStream::connect(rig.run.api_socket())?;
        raw.set_read_timeout(Some(Duration::from_secs(20)))?;
        raw.write_all(b"{\"op\":\"status\"}\n")?;
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut raw, &mut answer);
    }
    c.status().context("status after a connection of garbage")?;
    // Deleting what is not there succeeds (a retried delete).
    c.delete("pvc-nope")?;

    rig.volumes.push("pvc-x".into());
    c.create("pvc-x", 16 * MIB, None, None)?;
    let again = c.create("pvc-x", 16 * MIB, None, None)?;
    ensure!(again.size_bytes == 16 * MIB, "the same create again returns the volume");
    let (kind, msg) = api_error(c.create("pvc-x", 32 * MIB, None, None), "create with another size")?;
    ensure!(kind == Code::AlreadyExists, "{kind:?}: {msg}");
    let dev = c.attach("pvc-x")?;
    ensure!(c.attach("pvc-x")? == dev, "attach again returns the same device");
    let (kind, msg) = api_error(c.delete("pvc-x"), "delete while attached")?;
    ensure!(kind == Code::FailedPrecondition, "{kind:?}: {msg}");
    let mnt = {
        mount::format_if_empty(&dev, FsType::Ext4)?;
        rig.mount(&dev, "mnt")?
    };
    let (kind, msg) = api_error(c.detach("pvc-x"), "detach while mounted")?;
    ensure!(
        kind == Code::FailedPrecondition && msg.contains("still mounted") && msg.contains("unstage"),
        "{kind:?}: {msg}"
    );
    rig.unmount(&mnt)?;
    c.detach("pvc-x")?;
    c.detach("pvc-x")
        .context("a second detach finds nothing attached and succeeds")?;

    // Without the holder, a restart would kill the volume: attach refuses.
    let mut holder = rig.holder.take().context("holder")?;
    holder.kill()?;
    holder.wait()?;
    let (kind, msg) = api_error(c.attach("pvc-x"), "attach without a holder")?;
    ensure!(
        kind == Code::Unavailable && msg.contains("floe-dataplane holder"),
        "{kind:?}: {msg}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.status()?.holder_reachable {
        ensure!(Instant::now() < deadline, "status still says the holder is reachable");
        std::thread::sleep(Duration::from_millis(100));
    }
    c.delete("pvc-x")?;
    rig.volumes.clear();
    let listed = c.list()?;
    ensure!(listed.is_empty(), "{listed:?}");
    Ok(())
}
