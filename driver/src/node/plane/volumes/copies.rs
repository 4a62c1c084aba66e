//! Copies of volumes: local snapshots, restores, creations filled from an
//! image, and the cut across volumes under freeze.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use floe_engine::Primary;

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
        let mut frozen = Vec::with_capacity(to_freeze.len());
        for path in &to_freeze {
            frozen.push(FrozenFs::freeze(path).map_err(PlaneError::Freeze)?);
        }
        let names: Vec<&Name> = members.iter().map(|(_, n)| n).collect();
        let cut = hold_and_cut(&engines, &names, 0, delay);
        let mut thawed = Ok(());
        for mut f in frozen {
            if let Err(e) = f.thaw() {
                tracing::error!(path = %f.path().display(), error = %e, "thaw after the cut");
                thawed = Err(PlaneError::Freeze(e));
            }
        }
        drop(engines);
        drop(guards);
        cut?;
        thawed?;
        let paths: Vec<PathBuf> = members
            .iter()
            .map(|(id, name)| self.snapshot_path(id.as_str(), name.as_str()))
            .collect();
        tracing::info!(members = members.len(), frozen = to_freeze.len(), "cut taken");
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
        p.snapshot(names[i].as_str()).map_err(|source| PlaneError::Engine {
            op: "cut the volume",
            volume: names[i].to_string(),
            source,
        })?;
        hold_and_cut(engines, names, i + 1, delay)
    })
}
