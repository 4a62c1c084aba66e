//! Copies of volumes: local snapshots, restores, creations filled from an
//! image, and the cut across volumes under freeze.
//!
//! A snapshot of a served volume is marked under the engine's lock (O(1):
//! while frozen, in a cut) and copied afterwards by the calling thread, one
//! bounded step at a time with the lock released between steps, so the
//! volume's I/O goes on during the copy; the engine keeps every block's
//! version at the mark until the copy has passed it (`floe_engine`'s
//! `primary/snapshot.rs`). The call returns once the copy is durable, so a
//! snapshot reported taken is whole; a data plane that dies during a copy
//! takes the call with it, and the next open of the volume drops the
//! partial copy and logs the snapshot failed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use floe_engine::{EngineError, Primary, SnapshotStep};

use super::{lock, Slot, Volumes};
use crate::dataplane::fsfreeze::FrozenFs;
use crate::dataplane::mounttable;
use crate::dataplane::{EngineBackend, SizedBackend};
use crate::node::plane::attachment::open_engine;
use crate::node::plane::error::PlaneError;
use crate::node::plane::types::{self, Name, Shape, VolumeInfo};
use crate::store::FileStore;

impl Volumes {
    /// Creates `id` for `owner` with a store of `reserve` bytes (at least
    /// its size, so it grows online up to that), filled by `fill` through
    /// its engine before the record makes it exist. An id that exists is
    /// refused: the owner keeps its own catalog of what it made.
    pub(crate) fn create_filled<E: From<PlaneError>>(
        &self,
        id: &Name,
        shape: Shape,
        reserve: u64,
        owner: &str,
        fill: impl FnOnce(&mut Primary<FileStore>) -> Result<(), E>,
    ) -> Result<VolumeInfo, E> {
        let arc = self.slot(id.as_str());
        let mut slot = lock(&arc);
        if let Some(spec) = &slot.spec {
            return Err(PlaneError::AlreadyExists {
                volume: id.to_string(),
                existing: spec.shape_words(),
            }
            .into());
        }
        if slot.unreadable {
            return Err(PlaneError::Unreadable(self.volume_dir(id.as_str())).into());
        }
        let reserve = reserve.max(shape.size_bytes).div_ceil(shape.block_size) * shape.block_size;
        let mut primary = self.new_store(id, shape, reserve)?;
        let filled = fill(&mut primary).and_then(|()| {
            primary.flush().map_err(|source| {
                PlaneError::Engine {
                    op: "flush the new volume",
                    volume: id.to_string(),
                    source,
                }
                .into()
            })
        });
        drop(primary);
        let committed = filled.and_then(|()| Ok(self.commit_record(id, shape, None, Some((reserve, owner)))?));
        let spec = match committed {
            Ok(spec) => spec,
            Err(e) => {
                let dir = self.volume_dir(id.as_str());
                if let Err(r) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %r, "remove a creation that failed (cleared at the next create)");
                }
                return Err(e);
            }
        };
        tracing::info!(volume = %id, size = shape.size_bytes, reserve, owner, "volume created");
        let info = self.info(&spec, &slot);
        slot.spec = Some(spec);
        Ok(info)
    }

    /// One cut across `members` (volume, snapshot name): the file system on
    /// each attached member's device is flushed and frozen, then each
    /// member's engine is taken in turn and cut while the ones before it
    /// stay held, so no member moves on before the last is cut (the cut is
    /// consistent across the members even for raw block volumes); then
    /// everything is released and thawed, also on error. `delay` is a test
    /// hook: sleep before cutting the member at that index. Returns the
    /// snapshot images, `<volume dir>/snapshots/<name>.img`, in order.
    ///
    /// The members' slots are held for the cut (a few milliseconds plus
    /// the freeze); I/O never takes a slot, so nothing waits on a frozen
    /// file system while holding one.
    pub(crate) fn cut(
        &self,
        members: &[(Name, Name)],
        delay: Option<(usize, Duration)>,
    ) -> Result<Vec<PathBuf>, PlaneError> {
        let mut order: Vec<usize> = (0..members.len()).collect();
        order.sort_by(|a, b| members[*a].0.as_str().cmp(members[*b].0.as_str()));
        order.dedup_by(|a, b| members[*a].0 == members[*b].0);
        if order.len() != members.len() {
            return Err(PlaneError::Request(types::RequestError::Duplicate("volume in one cut")));
        }
        let arcs: Vec<Arc<Mutex<Slot>>> = order.iter().map(|i| self.slot(members[*i].0.as_str())).collect();
        let guards: Vec<MutexGuard<'_, Slot>> = arcs.iter().map(|a| lock(a)).collect();
        let mut by_member: Vec<Option<&MutexGuard<'_, Slot>>> = vec![None; members.len()];
        for (k, i) in order.iter().enumerate() {
            by_member[*i] = Some(&guards[k]);
        }
        let mut engines = Vec::with_capacity(members.len());
        let mut to_freeze = Vec::new();
        for ((id, _), slot) in members.iter().zip(by_member) {
            let slot = slot.expect("every member has its slot");
            let spec = self.spec(id, slot)?;
            match &slot.attached {
                Some(a) => {
                    let Some(b) = a.sized() else {
                        return Err(PlaneError::NotServed(id.to_string()));
                    };
                    let targets = mounttable::mount_points_of(a.device())
                        .map_err(PlaneError::io("find the mounts of", a.device()))?;
                    // One freeze per device: it holds the whole superblock.
                    to_freeze.extend(targets.into_iter().take(1));
                    engines.push(CutEngine::Served(Arc::clone(b)));
                }
                None => engines.push(CutEngine::Opened(Box::new(EngineBackend::new(open_engine(
                    &self.data_dir,
                    id.as_str(),
                    spec.mode,
                )?)))),
            }
        }
        let started = Instant::now();
        let frozen = freeze_all(&to_freeze)?;
        let froze = started.elapsed();
        let names: Vec<&Name> = members.iter().map(|(_, n)| n).collect();
        let cut = hold_and_cut(&engines, &names, 0, delay);
        let marked = started.elapsed();
        let mut thawed = Ok(());
        for mut f in frozen {
            if let Err(e) = f.thaw() {
                tracing::error!(path = %f.path().display(), error = %e, "thaw after the cut");
                thawed = Err(PlaneError::Freeze(e));
            }
        }
        let window = started.elapsed();
        // Thawed: now the copies, one member after the other, I/O going on.
        let copied = cut.and_then(|()| {
            members.iter().zip(&engines).try_for_each(|((id, name), e)| {
                copy_marked(e.get(), &self.snapshot_part(id.as_str(), name.as_str()), id.as_str())
            })
        });
        let cut = match copied {
            Ok(()) => Ok(()),
            Err(e) => {
                for engine in &engines {
                    give_up(engine.get(), "the cut failed");
                }
                Err(e)
            }
        };
        drop(engines);
        drop(guards);
        cut?;
        thawed?;
        let paths: Vec<PathBuf> = members
            .iter()
            .map(|(id, name)| self.snapshot_path(id.as_str(), name.as_str()))
            .collect();
        tracing::info!(
            members = members.len(),
            frozen = to_freeze.len(),
            freeze_ms = ms(froze),
            mark_ms = ms(marked - froze),
            frozen_ms = ms(window),
            copy_ms = ms(started.elapsed() - window),
            "cut taken"
        );
        Ok(paths)
    }
}

/// A member's engine in a cut: the attached volume's, or one opened for it.
enum CutEngine {
    Served(Arc<SizedBackend>),
    Opened(Box<EngineBackend>),
}

impl CutEngine {
    fn get(&self) -> &EngineBackend {
        match self {
            CutEngine::Served(b) => b.engine(),
            CutEngine::Opened(e) => e,
        }
    }
}

/// Cuts `engines[i..]` in order, holding each one's lock until all are cut.
fn hold_and_cut(
    engines: &[CutEngine],
    names: &[&Name],
    i: usize,
    delay: Option<(usize, Duration)>,
) -> Result<(), PlaneError> {
    let Some(engine) = engines.get(i) else {
        return Ok(());
    };
    engine.get().with_primary(|p| {
        if let Some((_, d)) = delay.filter(|(at, _)| *at == i) {
            tracing::warn!(member = i, delay = ?d, "failpoint: delaying the cut");
            std::thread::sleep(d);
        }
        p.snapshot_mark(names[i].as_str())
            .map_err(|source| PlaneError::Engine {
                op: "cut the volume",
                volume: names[i].to_string(),
                source,
            })?;
        hold_and_cut(engines, names, i + 1, delay)
    })
}

/// Blocks copied per step of a snapshot's copy (1 MiB at 4 KiB blocks; holes
/// are skipped in a call each). A host write waits for at most one step.
const COPY_STEP_BLOCKS: u64 = 256;

/// Steps between two starts of the copy's write-back.
const WRITE_BACK_EVERY: u64 = 16;

/// Copies the snapshot marked on `engine` to its end, a step at a time under
/// the volume's lock and nothing held between steps, then makes it durable.
/// `part` is the file it is being copied into: it is written back outside
/// the lock before the last step, so the fsync under the lock finds little
/// to do. On failure the snapshot is given up.
fn copy_marked(engine: &EngineBackend, part: &Path, volume: &str) -> Result<(), PlaneError> {
    let engine_err = |source| PlaneError::Engine {
        op: "copy a snapshot",
        volume: volume.to_owned(),
        source,
    };
    let file = std::fs::File::open(part);
    let mut steps = 0u64;
    loop {
        steps += 1;
        if steps.is_multiple_of(WRITE_BACK_EVERY) {
            // Start writing the copy back, a little at a time, and drop it
            // from the page cache: no burst for the host's fsyncs to queue
            // behind at the end, no volume's worth of cache pushed out.
            if let Ok(f) = &file {
                let _ = rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed);
            }
        }
        match engine.with_primary(|p| p.snapshot_step(COPY_STEP_BLOCKS)) {
            Ok(SnapshotStep::Copying { next, blocks }) if next >= blocks => {
                let synced = std::fs::File::open(part).and_then(|f| f.sync_data());
                if let Err(e) = synced {
                    // The last step fsyncs it anyway, under the lock.
                    tracing::warn!(path = %part.display(), error = %e, "write a snapshot back before naming it");
                }
            }
            Ok(SnapshotStep::Copying { .. }) => {}
            Ok(SnapshotStep::Done { name, .. }) => {
                tracing::debug!(volume, snapshot = %name, "snapshot copied");
                return Ok(());
            }
            Ok(SnapshotStep::Idle) => {
                let failed = engine.with_primary(|p| p.take_failed_snapshots());
                let name = failed.into_iter().next().unwrap_or_default();
                return Err(engine_err(EngineError::SnapshotFailed { name }));
            }
            Err(source) => {
                give_up(engine, "its copy failed");
                return Err(engine_err(source));
            }
        }
        // Let the volume's I/O, woken by the unlock, take the lock first.
        std::thread::yield_now();
    }
}

/// Gives up the snapshot being copied on `engine`, if any.
fn give_up(engine: &EngineBackend, why: &str) {
    match engine.with_primary(|p| p.snapshot_abandon()) {
        Ok(Some(name)) => tracing::warn!(snapshot = %name, why, "snapshot given up"),
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, why, "give up a snapshot (its partial copy goes at the next open)"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `syncfs` and `FIFREEZE` on every file system at once, one thread each,
/// so the first one frozen waits for the slowest, not for the sum; all
/// thawed again (on drop) if one fails.
fn freeze_all(paths: &[PathBuf]) -> Result<Vec<FrozenFs>, PlaneError> {
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = paths.iter().map(|p| s.spawn(move || FrozenFs::freeze(p))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a freeze thread does not panic"))
            .collect()
    });
    results
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(PlaneError::Freeze)
}
