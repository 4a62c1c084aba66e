//! Replication under a real file system: ext4 on each member's FUSE+loop
//! device, I/O through the engine, the stream to the DR over mutual TLS
//! (through a proxy the test cuts), group freezes with real `syncfs` +
//! `FIFREEZE` while a writer appends fsynced records to both volumes. At
//! every commit, with decisions held, each DR image passes `e2fsck -fn`;
//! after the writer stops and a last freeze commits, each DR image equals
//! its primary byte for byte. No write of the writer may fail. Every mode.
//!
//! Needs root, /dev/fuse and loop devices: in CI (`CI` set) their absence is
//! a failure, elsewhere the test is skipped with a note.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::link::{dr_image, geometry, pairing, start_with, BS, GENERATION, MEMBERS};
use floe_driver::dataplane::freeze_member::LocalMember;
use floe_driver::dataplane::mount::{self, FsType, MountedFs};
use floe_driver::dataplane::{AttachedVolume, BlockBackend, EngineBackend};
use floe_driver::replication::freeze::{group_freeze, FreezeMember};
use floe_driver::store::FileStore;
use floe_engine::{Mode, Primary};
use rustix::mount::MountFlags;
use tokio::sync::watch;

const BLOCKS: u64 = 16_384; // 64 MiB
const EPOCHS: u64 = 6;

/// Appends numbered, fsynced records to a file on each volume, in turn,
/// until told to stop; counts what was acknowledged; any error is kept.
fn writer(mounts: Vec<PathBuf>, stop: Arc<AtomicBool>, acked: watch::Sender<u64>) -> Result<()> {
    let mut files = mounts
        .iter()
        .map(|m| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(m.join("records"))
                .with_context(|| format!("open records on {}", m.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut n = 0u64;
    let count = files.len();
    while !stop.load(Ordering::Relaxed) {
        let f = &mut files[n as usize % count];
        writeln!(f, "record {n:08} {}", "x".repeat(200)).context("append a record")?;
        f.sync_data().context("fsync a record")?;
        n += 1;
        acked.send_replace(n);
    }
    Ok(())
}

struct Member {
    fs: Option<MountedFs>,
    vol: Option<AttachedVolume>,
    backend: Arc<EngineBackend>,
    mount: PathBuf,
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut fs) = self.fs.take() {
            let _ = fs.unmount();
        }
        if let Some(mut vol) = self.vol.take() {
            let _ = vol.detach();
        }
    }
}

async fn replicate_under_ext4(dir: &Path, mode: Mode) -> Result<()> {
    let geo = geometry(BLOCKS);
    let mut members = Vec::new();
    for m in 0..MEMBERS {
        let volume = pairing(m, mode, geo).volume;
        let store = FileStore::create(&dir.join("primary"), &volume, geo)?;
        let backend = Arc::new(EngineBackend::new(Primary::create(store, geo, mode, GENERATION)?));
        let vol = AttachedVolume::attach(backend.clone(), &dir.join(format!("fuse-{m}")))?;
        mount::format_if_empty(vol.device(), FsType::Ext4)?;
        let mount = dir.join(format!("mnt-{m}"));
        let fs = MountedFs::mount(vol.device(), &mount, FsType::Ext4, MountFlags::NOATIME, "")?;
        members.push(Member {
            fs: Some(fs),
            vol: Some(vol),
            backend,
            mount,
        });
    }
    let hosted = members.iter().map(|m| Arc::clone(m.backend.hosted())).collect();
    let sites = start_with(dir, mode, geo, hosted, None).await?;
    let freeze_members: Vec<Arc<dyn FreezeMember>> = members
        .iter()
        .enumerate()
        .map(|(m, v)| {
            Arc::new(LocalMember::new(
                format!("pvc-{m}"),
                Arc::clone(v.backend.hosted()),
                Some(v.mount.clone()),
            )) as Arc<dyn FreezeMember>
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let (acked_tx, mut acked) = watch::channel(0u64);
    let mounts = members.iter().map(|m| m.mount.clone()).collect();
    let writing = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || writer(mounts, stop, acked_tx))
    };
    let mut last = 0;
    for epoch in 1..=EPOCHS {
        // Let the writer get ahead of the last freeze before the next one.
        let floor = *acked.borrow() + 50;
        // The guard `wait_for` returns would block the writer: dropped here.
        let ahead = tokio::time::timeout(Duration::from_secs(60), acked.wait_for(|n| *n >= floor))
            .await
            .map(|r| r.map(|_| ()));
        ensure!(
            matches!(ahead, Ok(Ok(_))),
            "{}: the writer stalled before epoch {epoch}",
            mode.name()
        );
        if epoch % 2 == 0 {
            sites.proxy.cut();
        }
        sites.wait_resolved().await?;
        let report = group_freeze(&freeze_members, epoch, Duration::from_secs(30)).await;
        ensure!(report.committed_to_flip, "{}: freeze {epoch}: {report:?}", mode.name());
        sites.wait_committed(epoch).await?;
        sites.coordinator.with_decisions_held(|record| -> Result<()> {
            ensure!(record.committed == epoch);
            for m in 0..MEMBERS {
                mount::check(&dr_image(dir, m), FsType::Ext4)
                    .with_context(|| format!("{}: e2fsck -fn of member {m} at epoch {epoch}", mode.name()))?;
            }
            Ok(())
        })?;
        last = epoch;
    }
    stop.store(true, Ordering::Relaxed);
    writing.join().map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    let records = *acked.borrow();

    // A last cut with the file systems unmounted (a mounted ext4 still
    // writes its journal after a thaw): the DR must equal the primaries.
    for member in &mut members {
        if let Some(mut fs) = member.fs.take() {
            fs.unmount()?;
        }
    }
    let engines_only = sites.engine_members();
    let epoch = last + 1;
    sites.wait_resolved().await?;
    let report = group_freeze(&engines_only, epoch, Duration::from_secs(30)).await;
    ensure!(report.committed_to_flip, "{}: last freeze: {report:?}", mode.name());
    sites.wait_committed(epoch).await?;
    for (m, member) in members.iter().enumerate() {
        let dr = std::fs::read(dr_image(dir, m)).context("read a DR image")?;
        let mut primary = vec![0u8; geo.bytes() as usize];
        for (i, chunk) in primary.chunks_mut(1 << 20).enumerate() {
            member.backend.read_at(i as u64 * (1 << 20), chunk)?;
        }
        let first = dr.chunks(BS).zip(primary.chunks(BS)).position(|(a, b)| a != b);
        ensure!(
            first.is_none(),
            "{}: member {m} differs from block {first:?}",
            mode.name()
        );
    }
    let reconnects: u64 = sites.links.iter().map(|l| l.stats.reconnects.get()).sum();
    println!(
        "{}: {epoch} epochs, {records} fsynced records, {reconnects} reconnects, DR images equal and e2fsck-clean at every cut",
        mode.name()
    );
    sites.cancel.cancel();
    drop(sites);
    drop(members);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ext4_volumes_replicate_to_clean_cuts_through_link_cuts_in_every_mode() -> Result<()> {
    if !common::privileged("replication under ext4") {
        return Ok(());
    }
    for mode in Mode::ALL {
        let dir = tempfile::Builder::new()
            .prefix("floe-replication-ext4-")
            .tempdir_in("/tmp")?;
        replicate_under_ext4(dir.path(), mode).await?;
    }
    Ok(())
}
