//! A data-plane process dies under load and a successor takes its FUSE
//! connection over: the I/O above never sees an error.
//!
//! The test binary plays three parts: this process is the holder and the
//! orchestrator (file system, fio); the serving processes are this same
//! binary re-run with `FLOE_DP_HANDOVER_ROLE` set, entering through
//! [`handover_child_process_entry_point`]. Needs root, `/dev/fuse`, loop
//! devices, fio and Linux ≥ 6.9 (`FUSE_NOTIFY_RESEND`); skips otherwise.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use floe_driver::dataplane::fuse::{abort_connection, connection_dir, FuseConfig, FuseServer};
use floe_driver::dataplane::handover::{self, Holder, HolderLink};
use floe_driver::dataplane::loopdev::LoopDevice;
use floe_driver::dataplane::mount::{self, FsType, MountedFs};
use floe_driver::dataplane::FileBackend;
use rustix::mount::MountFlags;

mod common;

const ROLE: &str = "FLOE_DP_HANDOVER_ROLE";
const DIR: &str = "FLOE_DP_HANDOVER_DIR";
const KEY: &str = "pvc-handover";
const THREADS: usize = 4;
const FIO_DEADLINE: Duration = Duration::from_secs(120);

fn backing(dir: &Path) -> PathBuf {
    dir.join("backing.img")
}
fn fuse_dir(dir: &Path) -> PathBuf {
    dir.join("fuse")
}
fn holder_sock(dir: &Path) -> PathBuf {
    dir.join("holder.sock")
}

/// Not a test: where a re-run of this binary starts a serving process
/// (`spawn_role` runs it with `--ignored --exact` and
/// `FLOE_DP_HANDOVER_ROLE` set). Ignored in a plain run, and it fails when
/// run without its variables, so it can never pass for a test.
#[test]
#[ignore = "a helper process of io_survives_sigkill_of_the_data_plane_with_a_successor"]
fn handover_child_process_entry_point() -> Result<()> {
    let role = std::env::var(ROLE)
        .context("FLOE_DP_HANDOVER_ROLE is unset: this helper is started by io_survives_sigkill_of_the_data_plane_with_a_successor")?;
    let dir = PathBuf::from(std::env::var(DIR).context("FLOE_DP_HANDOVER_DIR")?);
    let backend = Arc::new(FileBackend::open(&backing(&dir))?);
    let ready = match role.as_str() {
        "server" => {
            let link = HolderLink::connect(&holder_sock(&dir), KEY)?;
            let config = FuseConfig {
                threads: THREADS,
                ..FuseConfig::default()
            };
            let server = FuseServer::mount(backend, &fuse_dir(&dir), &config, Some(&link))?;
            let lo = LoopDevice::attach(&server.file_path())?;
            let ready = lo.path().display().to_string();
            // Killed, never dropped: the loop device and the mount outlive us.
            std::mem::forget(lo);
            std::mem::forget(server);
            ready
        }
        "successor" => {
            let conn = handover::take(&holder_sock(&dir), KEY)?;
            let server = FuseServer::resume(backend, &fuse_dir(&dir), conn)?;
            std::mem::forget(server);
            String::from("serving")
        }
        other => bail!("unknown role {other}"),
    };
    let tmp = dir.join(format!("ready-{role}.tmp"));
    std::fs::write(&tmp, ready)?;
    std::fs::rename(&tmp, dir.join(format!("ready-{role}")))?;
    // Serves until killed: the FUSE workers run on their own threads.
    loop {
        std::thread::park();
    }
}

fn spawn_role(dir: &Path, role: &str) -> Result<Child> {
    Command::new(std::env::current_exe()?)
        .args([
            "handover_child_process_entry_point",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env(DIR, dir)
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("start the {role} process"))
}

fn wait_ready(dir: &Path, role: &str, child: &mut Child) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let path = dir.join(format!("ready-{role}"));
    loop {
        if let Ok(s) = std::fs::read_to_string(&path) {
            return Ok(s);
        }
        if let Some(status) = child.try_wait()? {
            bail!("the {role} process exited with {status} before it was ready");
        }
        ensure!(Instant::now() < deadline, "the {role} process is not ready after 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything the test set up, torn down in an order that cannot hang: with
/// no live server, the FUSE connection is aborted first so that unmounting
/// the file system above fails fast instead of waiting forever.
struct Rig {
    dir: tempfile::TempDir,
    holder: Option<Holder>,
    servers: Vec<Child>,
    fio: Option<Child>,
    fs: Option<MountedFs>,
    loopdev: Option<PathBuf>,
}

impl Rig {
    fn serving(&mut self) -> bool {
        self.servers
            .last_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let fuse = fuse_dir(self.dir.path());
        if !self.serving() {
            abort_connection(&fuse);
        }
        if let Some(mut fio) = self.fio.take() {
            let _ = fio.kill();
            // fio cannot exit while its I/O hangs in an unserved connection.
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(fio.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(fio.try_wait(), Ok(None)) {
                abort_connection(&fuse);
            }
            let _ = fio.wait();
        }
        if let Some(mut fs) = self.fs.take() {
            if fs.unmount().is_err() {
                abort_connection(&fuse);
                if fs.unmount().is_err() {
                    let _ = rustix::mount::unmount(fs.target(), rustix::mount::UnmountFlags::DETACH);
                }
            }
        }
        if let Some(dev) = self.loopdev.take() {
            let _ = Command::new("losetup").arg("-d").arg(&dev).status();
            let backing = Path::new("/sys/block")
                .join(dev.file_name().unwrap_or_default())
                .join("loop/backing_file");
            let deadline = Instant::now() + Duration::from_secs(10);
            while backing.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if mount::unmount_path(&fuse).is_err() {
            abort_connection(&fuse);
            let _ = rustix::mount::unmount(&fuse, rustix::mount::UnmountFlags::DETACH);
        }
        for mut c in self.servers.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(h) = self.holder.take() {
            h.shutdown();
        }
    }
}

fn kernel_has_notify_resend() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    matches!((parts.next(), parts.next()), (Some(major), Some(minor)) if (major, minor) >= (6, 9))
}

/// fio writes with verification while the serving process is SIGKILLed and
/// a successor takes the connection over from the holder: fio ends with no
/// error, and the file system checks clean.
#[test]
fn io_survives_sigkill_of_the_data_plane_with_a_successor() -> Result<()> {
    let has_fio = Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !rustix::process::geteuid().is_root() || !Path::new("/dev/fuse").exists() || !has_fio {
        common::skip_or_fail("handover: needs root, /dev/fuse and fio");
        return Ok(());
    }
    if !kernel_has_notify_resend() {
        common::skip_or_fail("handover: FUSE_NOTIFY_RESEND needs Linux >= 6.9");
        return Ok(());
    }
    let dir = tempfile::Builder::new().prefix("floe-handover-").tempdir_in("/tmp")?;
    drop(FileBackend::create(&backing(dir.path()), 300 << 20)?);
    let holder = Holder::bind(&holder_sock(dir.path()))?;
    let mut rig = Rig {
        dir,
        holder: Some(holder),
        servers: Vec::new(),
        fio: None,
        fs: None,
        loopdev: None,
    };
    let d = rig.dir.path().to_owned();

    rig.servers.push(spawn_role(&d, "server")?);
    let dev = PathBuf::from(wait_ready(&d, "server", rig.servers.last_mut().expect("just pushed"))?);
    rig.loopdev = Some(dev.clone());
    let held = rig.holder.as_ref().expect("holder").held_fds(KEY);
    ensure!(
        held == THREADS,
        "the holder keeps {held} fds, not one per worker ({THREADS})"
    );

    mount::format_if_empty(&dev, FsType::Ext4)?;
    let target = d.join("mnt");
    rig.fs = Some(MountedFs::mount(&dev, &target, FsType::Ext4, MountFlags::NOATIME, "")?);

    // A few seconds of writes at full queue depth, then fio reads all back.
    rig.fio = Some(
        Command::new("fio")
            .args([
                "--name=floe-handover",
                "--rw=randwrite",
                "--bs=4k",
                "--size=200M",
                "--iodepth=32",
                "--ioengine=libaio",
                "--direct=1",
                "--verify=crc32c",
                "--verify_fatal=1",
                "--verify_state_save=0",
                "--output-format=terse",
                "--terse-version=3",
            ])
            .arg(format!("--filename={}", target.join("fio.dat").display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    // Kill while fio has requests in flight on the connection.
    let conn = connection_dir(&fuse_dir(&d)).context("the connection's fusectl directory")?;
    let waiting = || -> u64 {
        std::fs::read_to_string(conn.join("waiting"))
            .ok()
            .and_then(|w| w.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while waiting() == 0 {
        ensure!(
            rig.fio.as_mut().expect("fio").try_wait()?.is_none(),
            "fio ended before it had a request in flight"
        );
        ensure!(Instant::now() < deadline, "fio had no request in flight within 30 s");
        std::thread::sleep(Duration::from_millis(5));
    }

    // SIGKILL; the child stays in `rig.servers` (reaped at teardown). The
    // kernel keeps queueing fio's requests for the successor.
    let old = rig.servers.last_mut().expect("the server");
    old.kill()?;
    old.wait()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiting() == 0 {
        ensure!(
            Instant::now() < deadline,
            "no request waits on the connection after the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let waiting = waiting().to_string();
    rig.servers.push(spawn_role(&d, "successor")?);
    wait_ready(&d, "successor", rig.servers.last_mut().expect("just pushed"))?;
    eprintln!(
        "server killed with {} requests waiting; successor serving",
        waiting.trim()
    );

    let deadline = Instant::now() + FIO_DEADLINE;
    let fio = rig.fio.as_mut().expect("fio");
    while fio.try_wait()?.is_none() {
        ensure!(
            Instant::now() < deadline,
            "fio did not finish within {} s after the handover",
            FIO_DEADLINE.as_secs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = rig.fio.take().expect("fio").wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "fio failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fields: Vec<&str> = stdout.lines().last().unwrap_or_default().split(';').collect();
    ensure!(fields.get(4) == Some(&"0"), "fio reported error {:?}", fields.get(4));

    rig.fs.take().expect("mounted").unmount()?;
    mount::check(&dev, FsType::Ext4)?;
    Ok(())
}
