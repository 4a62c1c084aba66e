//! The data path against the real kernel: FUSE file, direct-I/O loop device,
//! ext4 and XFS on top. Needs root, `/dev/fuse` and loop devices; skips
//! (saying so) otherwise.
//!
//! Every test puts its files under a temp dir whose name contains `floe`, and
//! holds its mounts and devices in guards declared in set-up order, so they
//! are torn down in reverse (file system, loop device, FUSE) even when an
//! assertion fails; `scripts/check-leftovers.sh` flags anything left behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use floe_driver::dataplane::fsfreeze::{self, FrozenFs};
use floe_driver::dataplane::mount::{self, FsType, MountedFs};
use floe_driver::dataplane::{AttachedVolume, BackendError, BlockBackend, FileBackend};
use rustix::fs::FallocateFlags;
use rustix::mount::MountFlags;

mod common;

const MIB: u64 = 1 << 20;

use common::{privileged, tool_present};

/// A temp dir whose name contains `floe`.
fn scratch() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("floe-dataplane-")
        .tempdir_in("/tmp")
        .context("create the scratch dir")
}

/// A file backend that counts what reaches it.
struct Counting {
    inner: FileBackend,
    flushes: AtomicU64,
    zero_calls: AtomicU64,
    zeroed_bytes: AtomicU64,
}

impl Counting {
    fn create(path: &Path, size: u64) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            inner: FileBackend::create(path, size)?,
            flushes: AtomicU64::new(0),
            zero_calls: AtomicU64::new(0),
            zeroed_bytes: AtomicU64::new(0),
        }))
    }
    fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }
    fn zero_calls(&self) -> u64 {
        self.zero_calls.load(Ordering::SeqCst)
    }
}

impl BlockBackend for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BackendError> {
        self.inner.write_at(offset, buf)
    }
    fn zero_range(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.zero_calls.fetch_add(1, Ordering::SeqCst);
        self.zeroed_bytes.fetch_add(len, Ordering::SeqCst);
        self.inner.zero_range(offset, len)
    }
    fn flush(&self) -> Result<(), BackendError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.inner.flush()
    }
    fn set_size(&self, new_size: u64) -> Result<(), BackendError> {
        self.inner.set_size(new_size)
    }
}

/// Deterministic content of test file `i`: xorshift bytes, a size that
/// varies from a few bytes to a few MiB.
fn content(i: u64) -> Vec<u8> {
    let len = match i % 4 {
        0 => 3 * MIB as usize + 17,
        1 => 4096,
        2 => 123_457,
        _ => 1,
    };
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

fn write_files(dir: &Path, range: std::ops::Range<u64>) -> Result<()> {
    for i in range {
        let mut f = File::create(dir.join(format!("file-{i}"))).with_context(|| format!("create file {i}"))?;
        f.write_all(&content(i))?;
        f.sync_all().with_context(|| format!("fsync file {i}"))?;
    }
    Ok(())
}

fn verify_files(dir: &Path, range: std::ops::Range<u64>) -> Result<()> {
    for i in range {
        let mut got = Vec::new();
        File::open(dir.join(format!("file-{i}")))?.read_to_end(&mut got)?;
        ensure!(
            got == content(i),
            "file-{i} differs after remount ({} bytes read)",
            got.len()
        );
    }
    Ok(())
}

fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .unwrap_or("0");
    u64::from_str_radix(eff, 16).is_ok_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

fn run(tool: &str, args: &[&str], device: &Path) -> Result<()> {
    let out = Command::new(tool)
        .args(args)
        .arg(device)
        .output()
        .with_context(|| format!("run {tool}"))?;
    ensure!(
        out.status.success(),
        "{tool} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn fs_size(dir: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_blocks * st.f_frsize)
}

/// The whole life of a file system on a volume: attach, mkfs, mount, write,
/// fsync, trim, grow online, unmount, remount, read back, check, detach, and
/// the bytes are still in the backend after detach.
fn file_system_survives_its_life_cycle(fs: FsType) -> Result<()> {
    let dir = scratch()?;
    let backing = dir.path().join("backing.img");
    let backend = Counting::create(&backing, 300 * MIB)?;
    let mut vol = AttachedVolume::attach(backend.clone(), &dir.path().join("fuse"))?;
    ensure!(vol.loop_device().direct_io()?, "loop device without direct I/O");
    ensure!(vol.loop_device().size()? == 300 * MIB);

    ensure!(
        mount::format_if_empty(vol.device(), fs)?,
        "an empty device is formatted"
    );
    ensure!(
        !mount::format_if_empty(vol.device(), fs)?,
        "a formatted device is left alone"
    );
    let target = dir.path().join("mnt");
    let mut mounted = MountedFs::mount(vol.device(), &target, fs, MountFlags::NOATIME, "")?;

    let flushes = backend.flushes();
    write_files(&target, 0..24)?;
    ensure!(
        backend.flushes() > flushes,
        "fsync in the file system reaches backend.flush()"
    );

    // Delete a few big files, then trim: the freed extents reach zero_range.
    for i in (0..24).step_by(8) {
        std::fs::remove_file(target.join(format!("file-{i}")))?;
    }
    rustix::fs::sync();
    let zero_calls = backend.zero_calls();
    mounted.trim()?;
    ensure!(backend.zero_calls() > zero_calls, "fstrim reaches backend.zero_range()");

    // Grow online: the volume file, the loop device, the file system.
    let before = fs_size(&target)?;
    vol.grow(400 * MIB)?;
    ensure!(backend.size() == 400 * MIB);
    if fs == FsType::Ext4 && !has_cap_sys_resource() {
        // EXT4_IOC_RESIZE_FS needs CAP_SYS_RESOURCE (a privileged node
        // plugin has it; some sandboxes drop it): grow offline instead.
        eprintln!("no CAP_SYS_RESOURCE: growing ext4 offline");
        mounted.unmount()?;
        run("e2fsck", &["-f", "-p"], vol.device())?;
        run("resize2fs", &[], vol.device())?;
        mounted = MountedFs::mount(vol.device(), &target, fs, MountFlags::NOATIME, "")?;
    } else {
        mounted.grow()?;
    }
    let after = fs_size(&target)?;
    ensure!(
        after > before + 80 * MIB,
        "file system grew from {before} to only {after} bytes"
    );
    write_files(&target, 24..40)?;

    mounted.unmount()?;
    mount::check(vol.device(), fs)?;
    let mut mounted = MountedFs::mount(vol.device(), &target, fs, MountFlags::NOATIME, "")?;
    let kept = (0..40).filter(|i| i % 8 != 0);
    for i in kept {
        verify_files(&target, i..i + 1)?;
    }
    mounted.unmount()?;
    mount::check(vol.device(), fs)?;
    vol.detach()?;
    vol.detach()?; // idempotent

    // The bytes live in the backend: serve the backing file again and read.
    let backend = Arc::new(FileBackend::open(&backing)?);
    ensure!(backend.size() == 400 * MIB);
    let vol = AttachedVolume::attach(backend, &dir.path().join("fuse"))?;
    let mounted = MountedFs::mount(
        vol.device(),
        &target,
        fs,
        MountFlags::RDONLY,
        if fs == FsType::Xfs { "norecovery" } else { "noload" },
    )?;
    verify_files(&target, 1..8)?;
    verify_files(&target, 33..40)?;
    drop(mounted);
    drop(vol);
    Ok(())
}

#[test]
fn ext4_survives_its_life_cycle_on_a_fuse_loop_volume() -> Result<()> {
    if !privileged("ext4") {
        return Ok(());
    }
    file_system_survives_its_life_cycle(FsType::Ext4)
}

#[test]
fn xfs_survives_its_life_cycle_on_a_fuse_loop_volume() -> Result<()> {
    if !privileged("xfs") {
        return Ok(());
    }
    ensure!(
        tool_present("mkfs.xfs"),
        "xfsprogs is not installed (scripts/deps.sh installs it)"
    );
    file_system_survives_its_life_cycle(FsType::Xfs)
}

#[test]
fn fsync_in_the_file_system_reaches_backend_flush() -> Result<()> {
    if !privileged("fsync") {
        return Ok(());
    }
    let dir = scratch()?;
    let backend = Counting::create(&dir.path().join("backing.img"), 64 * MIB)?;
    let vol = AttachedVolume::attach(backend.clone(), &dir.path().join("fuse"))?;
    mount::format_if_empty(vol.device(), FsType::Ext4)?;
    let target = dir.path().join("mnt");
    let mounted = MountedFs::mount(vol.device(), &target, FsType::Ext4, MountFlags::empty(), "")?;
    let mut f = File::create(target.join("f"))?;
    for round in 0..5u8 {
        f.write_all(&[round; 8192])?;
        let before = backend.flushes();
        f.sync_all()?;
        ensure!(
            backend.flushes() > before,
            "fsync round {round} did not reach the backend"
        );
    }
    drop(f);
    drop(mounted);
    drop(vol);
    Ok(())
}

#[test]
fn freeze_flushes_to_the_backend_and_thaws_on_drop() -> Result<()> {
    if !privileged("freeze") {
        return Ok(());
    }
    let dir = scratch()?;
    let backend = Counting::create(&dir.path().join("backing.img"), 64 * MIB)?;
    let vol = AttachedVolume::attach(backend.clone(), &dir.path().join("fuse"))?;
    mount::format_if_empty(vol.device(), FsType::Ext4)?;
    let target = dir.path().join("mnt");
    let mounted = MountedFs::mount(vol.device(), &target, FsType::Ext4, MountFlags::empty(), "")?;
    std::fs::write(target.join("dirty"), content(0))?;
    let flushes = backend.flushes();
    let frozen = FrozenFs::freeze(&target)?;
    ensure!(backend.flushes() > flushes, "syncfs + FIFREEZE reach backend.flush()");
    ensure!(
        FrozenFs::freeze(&target).is_err(),
        "a frozen file system cannot be frozen again"
    );
    drop(frozen); // thaws
    ensure!(
        FrozenFs::freeze(&target)?.thaw().is_ok(),
        "thawed, it freezes and thaws again"
    );
    fsfreeze::thaw(&target)?; // not frozen: fine
    write_files(&target, 1..2)?;
    drop(mounted);
    drop(vol);
    Ok(())
}

#[test]
fn punch_hole_and_discard_reach_backend_zero_range() -> Result<()> {
    if !privileged("punch-hole") {
        return Ok(());
    }
    let dir = scratch()?;
    let backend = Counting::create(&dir.path().join("backing.img"), 16 * MIB)?;
    let vol = AttachedVolume::attach(backend.clone(), &dir.path().join("fuse"))?;

    // Straight on the FUSE file.
    let file = OpenOptions::new().read(true).write(true).open(vol.fuse_file())?;
    file.write_all_at(&[0xAB; 65536], MIB)?;
    let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    rustix::fs::fallocate(&file, punch, MIB + 4096, 8192)?;
    ensure!(
        backend.zero_calls() == 1,
        "punch hole reached zero_range {} times",
        backend.zero_calls()
    );
    let mut buf = vec![0u8; 65536];
    file.read_exact_at(&mut buf, MIB)?;
    ensure!(buf[..4096].iter().all(|&b| b == 0xAB));
    ensure!(
        buf[4096..12288].iter().all(|&b| b == 0),
        "punched range reads back zeros"
    );
    ensure!(buf[12288..].iter().all(|&b| b == 0xAB));
    rustix::fs::fallocate(&file, FallocateFlags::ZERO_RANGE, 2 * MIB, 4096)?;
    ensure!(backend.zero_calls() == 2, "zero range reaches zero_range");
    // Plain preallocation inside the file is accepted (a no-op), never ENOSYS.
    rustix::fs::fallocate(&file, FallocateFlags::KEEP_SIZE, 0, 4096)?;
    drop(file);

    // Through the loop device: a discard becomes a punch hole.
    let before = backend.zero_calls();
    let out = Command::new("blkdiscard")
        .args(["-o", "4194304", "-l", "1048576"])
        .arg(vol.device())
        .output()?;
    ensure!(
        out.status.success(),
        "blkdiscard: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        backend.zero_calls() > before,
        "a discard on the loop device reaches zero_range"
    );
    drop(vol);
    Ok(())
}

/// 4 KiB random writes at queue depth 32, direct I/O, with crc32c
/// verification, on ext4 on the volume: no error.
#[test]
fn fio_randwrite_qd32_verifies_clean() -> Result<()> {
    if !privileged("fio") {
        return Ok(());
    }
    if !tool_present("fio") {
        common::skip_or_fail("fio: fio is not installed");
        return Ok(());
    }
    let dir = scratch()?;
    let backend = Arc::new(FileBackend::create(&dir.path().join("backing.img"), 300 * MIB)?);
    let vol = AttachedVolume::attach(backend, &dir.path().join("fuse"))?;
    mount::format_if_empty(vol.device(), FsType::Ext4)?;
    let target = dir.path().join("mnt");
    let mounted = MountedFs::mount(vol.device(), &target, FsType::Ext4, MountFlags::NOATIME, "")?;
    // Sample how many requests the FUSE connection has in flight: with the
    // kernel's default max_background (12) async direct I/O would stall there.
    let waiting = vol
        .fuse()
        .connection_dir()
        .context("fusectl connection dir")?
        .join("waiting");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut max = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n = std::fs::read_to_string(&waiting)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                max = max.max(n);
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            max
        })
    };
    let started = Instant::now();
    let out = Command::new("fio")
        .args([
            "--name=floe-randwrite",
            "--rw=randwrite",
            "--bs=4k",
            "--size=128M",
            "--iodepth=32",
            "--ioengine=libaio",
            "--direct=1",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            // Five seconds of writes; every 1024 writes are read back and
            // checked while the job runs (a time-based job has no final
            // verification pass).
            "--time_based",
            "--runtime=5",
            "--verify_backlog=1024",
            "--output-format=terse",
            "--terse-version=3",
        ])
        .arg(format!("--filename={}", target.join("fio.dat").display()))
        .output()?;
    stop.store(true, Ordering::Relaxed);
    let max_waiting = sampler.join().expect("sampler thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "fio failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Terse v3: field 5 is the job's error, 49 the write IOPS.
    let fields: Vec<&str> = stdout.lines().last().unwrap_or_default().split(';').collect();
    ensure!(fields.get(4) == Some(&"0"), "fio reported error {:?}", fields.get(4));
    let verified_kib: u64 = fields.get(5).and_then(|f| f.parse().ok()).unwrap_or(0);
    ensure!(verified_kib > 0, "fio verified nothing");
    eprintln!(
        "fio randwrite 4k QD32 through FUSE+loop+ext4: {} write IOPS, {verified_kib} KiB verified, {:.1} s, \
         up to {max_waiting} FUSE requests in flight",
        fields.get(48).unwrap_or(&"?"),
        started.elapsed().as_secs_f64()
    );
    ensure!(
        max_waiting > 12,
        "queue depth capped at {max_waiting} FUSE requests in flight"
    );
    drop(mounted);
    drop(vol);
    Ok(())
}
