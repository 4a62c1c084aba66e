//! A replicated volume end to end on one machine: ext4 on the FUSE+loop
//! device whose I/O passes through the engine's primary, a freeze taken the
//! way the controller will take it (syncfs + FIFREEZE, then the engine flip),
//! writes after the freeze, shipping to a replica on its own FileStore, the
//! group decision and the fold — then the DR image must be byte-identical to
//! the primary at the freeze and pass `e2fsck -fn`, in every mode.
//!
//! Needs root, /dev/fuse and loop devices: in CI (`CI` set) their absence is a
//! failure, elsewhere the test is skipped with a note.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use floe_driver::dataplane::fsfreeze::FrozenFs;
use floe_driver::dataplane::mount::{self, FsType, MountedFs};
use floe_driver::dataplane::{AttachedVolume, BlockBackend, EngineBackend};
use floe_driver::store::{FileDecisionLog, FileStore};
use floe_engine::{Coordinator, Geometry, Mode, Primary, Replica, RoleGeneration, ToReplica};
use rustix::mount::MountFlags;

mod common;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 256 * MIB;
const BLOCK: usize = 4096;

fn write_file(dir: &Path, name: &str, byte: u8, len: usize) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.join(name))?;
    f.write_all(&vec![byte; len])?;
    f.sync_all()?;
    Ok(())
}

/// Pass every frame the primary has to the replica, and every reply, decision
/// and report back, until both sides are quiet.
fn pump(
    backend: &EngineBackend,
    replica: &mut Replica<FileStore>,
    coord: &mut Coordinator<FileDecisionLog>,
) -> Result<()> {
    loop {
        let frame: Option<ToReplica> = backend.with_primary(|p| p.poll_send(256))?;
        let Some(frame) = frame else { return Ok(()) };
        replica.on_frame(frame)?;
        loop {
            let reports = replica.take_to_coordinator();
            let replies = replica.take_to_primary();
            if reports.is_empty() && replies.is_empty() {
                break;
            }
            for r in reports {
                coord.on_message(r)?;
                for (_, d) in coord.take_out() {
                    replica.on_coordinator(d)?;
                }
            }
            for reply in replies {
                backend.with_primary(|p| p.on_frame(reply))?;
            }
        }
    }
}

fn replicate_ext4(mode: Mode) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("floe-engine-volume-")
        .tempdir_in("/tmp")?;
    let geo = Geometry::new(BLOCK, SIZE / BLOCK as u64, 256)?;
    let gen = RoleGeneration { counter: 1, site: 1 };
    let primary_store = FileStore::create(&dir.path().join("primary"), "vol-1", geo)?;
    let replica_store = FileStore::create(&dir.path().join("dr"), "vol-1", geo)?;
    let replica_image = replica_store.dir().join("image");
    let mut replica = Replica::create(replica_store, geo, 0, gen)?;
    let log = FileDecisionLog::open(&dir.path().join("dr"), "group-1")?;
    let mut coord = Coordinator::open(log, 1)?;
    let backend = Arc::new(EngineBackend::new(Primary::create(primary_store, geo, mode, gen)?));

    let mut vol = AttachedVolume::attach(backend.clone(), &dir.path().join("fuse"))?;
    mount::format_if_empty(vol.device(), FsType::Ext4)?;
    let target = dir.path().join("mnt");
    let mut fs = MountedFs::mount(vol.device(), &target, FsType::Ext4, MountFlags::NOATIME, "")?;
    for i in 0..8u8 {
        write_file(&target, &format!("before-{i}"), b'a' + i, 700_000)?;
    }
    let hello = backend.with_primary(|p| p.connect());
    replica.on_frame(hello)?;
    for reply in replica.take_to_primary() {
        backend.with_primary(|p| p.on_frame(reply))?;
    }
    pump(&backend, &mut replica, &mut coord)?;

    // The freeze sequence: quiesce, flip, read the freeze point, thaw.
    let mut frozen = FrozenFs::freeze(&target)?;
    backend.with_primary(|p| p.freeze(1))?;
    let mut at_freeze = vec![0u8; SIZE as usize];
    for (i, chunk) in at_freeze.chunks_mut(MIB as usize).enumerate() {
        backend.read_at(i as u64 * MIB, chunk)?;
    }
    frozen.thaw()?;

    // Writes after the freeze overwrite blocks of the closing epoch.
    for i in 0..8u8 {
        write_file(&target, &format!("before-{i}"), b'z', 300_000)?;
        write_file(&target, &format!("after-{i}"), b'A' + i, 500_000)?;
    }
    pump(&backend, &mut replica, &mut coord)?;
    ensure!(replica.committed_group() == 1, "{mode:?}: epoch 1 committed at the DR");
    let stats = backend.with_primary(|p| p.stats().clone());
    ensure!(
        stats.cow_copies + stats.redirected_writes > 0 || mode == Mode::Continuous,
        "{mode:?}: post-freeze writes met the freeze window: {stats:?}"
    );

    let dr = std::fs::read(&replica_image).context("read the DR image")?;
    ensure!(dr.len() as u64 == SIZE, "DR image size");
    let first_diff = dr.iter().zip(&at_freeze).position(|(a, b)| a != b);
    ensure!(
        first_diff.is_none(),
        "{mode:?}: DR image differs from the freeze point at byte {first_diff:?}"
    );
    mount::check(&replica_image, FsType::Ext4).context("e2fsck -fn on the DR image")?;

    fs.unmount()?;
    vol.detach()?;
    Ok(())
}

#[test]
fn the_dr_image_of_an_ext4_volume_is_its_freeze_point_in_every_mode() -> Result<()> {
    if !common::privileged("replicated ext4") {
        return Ok(());
    }
    for mode in Mode::ALL {
        replicate_ext4(mode)?;
    }
    Ok(())
}
