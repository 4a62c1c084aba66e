//! Local snapshots: a mark while the file system is frozen, the copy after.
//!
//! [`Primary::snapshot_mark`] only notes the point: the store starts an empty
//! pending snapshot and the engine a cursor at block 0, O(1) whatever the
//! volume holds. [`Primary::snapshot_step`] then copies a bounded number of
//! blocks per call, in the order of the volume, skipping the holes the store
//! reports, until the cursor reaches the end; the last step makes the
//! snapshot durable and gives it its name. Until the cursor has passed a
//! block, a host write to it first puts the block's current version (the
//! host's view, which in log mode may live in the freeze log) into the
//! snapshot: copy-before-overwrite, like the closing epoch's copy-on-write.
//! So every block of the snapshot is the host's view at the mark, whatever
//! the host writes during the copy and whatever the freeze window does
//! (a log-mode merge moves a block from the freeze log to the image without
//! changing the host's view of it).
//!
//! A crash before the last step fails the snapshot: nothing of it was synced
//! on purpose, and [`Primary::open`] drops what the store still holds of it
//! and lists it in [`Primary::take_failed_snapshots`]. A snapshot reported
//! done is whole on disk under its name.

use crate::bitmap::Bitmap;
use crate::error::{EngineError, StoreError};
use crate::store::VolumeStore;
use crate::types::{BlockIndex, Mode};

use super::{Primary, SnapshotMark};

/// A snapshot marked and not yet copied whole.
#[derive(Clone, Debug)]
pub(super) struct SnapshotCopy {
    pub(super) name: String,
    pub(super) mark: SnapshotMark,
    /// Every block below it is in the snapshot.
    pub(super) next: BlockIndex,
    /// Blocks at or past `next` already in the snapshot: a host write
    /// displaced them and their version at the mark was put first.
    pub(super) ahead: Bitmap,
}

impl SnapshotCopy {
    fn holds(&self, b: BlockIndex) -> bool {
        b < self.next || self.ahead.get(b)
    }
}

/// What one call of [`Primary::snapshot_step`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotStep {
    /// No snapshot is being copied (none was marked, it is done, or it failed:
    /// see [`Primary::take_failed_snapshots`]).
    Idle,
    /// Still copying: every block below `next` is in the snapshot. When
    /// `next == blocks` every block is, and the next step makes it durable.
    Copying {
        /// The cursor.
        next: BlockIndex,
        /// The volume's blocks.
        blocks: u64,
    },
    /// The snapshot is whole and durable under its name.
    Done {
        /// Its name.
        name: String,
        /// Where it falls in the epoch sequence.
        mark: SnapshotMark,
    },
}

impl<S: VolumeStore> Primary<S> {
    /// Take a local point-in-time snapshot of the volume as the host sees it
    /// now, copied whole before this returns and durable on return (the
    /// caller has quiesced the file system). Under a freeze, prefer
    /// [`Primary::snapshot_mark`] and copy after the thaw.
    pub fn snapshot(&mut self, name: &str) -> Result<SnapshotMark, EngineError> {
        let mark = self.snapshot_mark(name)?;
        self.complete_snapshot()?;
        Ok(mark)
    }

    /// Mark a local snapshot of the volume as the host sees it now: O(1), no
    /// block is copied (the caller may hold the file system frozen). The copy
    /// follows in [`Primary::snapshot_step`]; the snapshot exists only once a
    /// step returns [`SnapshotStep::Done`]. One snapshot is copied at a time.
    pub fn snapshot_mark(&mut self, name: &str) -> Result<SnapshotMark, EngineError> {
        if let Some(s) = &self.snap {
            return Err(EngineError::SnapshotBusy {
                pending: s.name.clone(),
            });
        }
        self.store.snapshot_begin(name)?;
        let mark = SnapshotMark {
            open_local: self.open.local,
            last_frozen_group: self.progress.last_frozen_group,
        };
        self.snap = Some(SnapshotCopy {
            name: name.to_owned(),
            mark,
            next: 0,
            ahead: Bitmap::new(self.geo.blocks()),
        });
        Ok(mark)
    }

    /// Copy up to `max_blocks` blocks of the marked snapshot (holes skipped
    /// cost one unit each), or, once every block is in, make it durable and
    /// name it (one sync). An error leaves the snapshot pending; the caller
    /// may step again or give it up ([`Primary::snapshot_abandon`]).
    pub fn snapshot_step(&mut self, max_blocks: u64) -> Result<SnapshotStep, EngineError> {
        let Some(mut s) = self.snap.take() else {
            return Ok(SnapshotStep::Idle);
        };
        let blocks = self.geo.blocks();
        if s.next >= blocks {
            let finished = self.store.snapshot_finish(&s.name).and_then(|()| self.store.sync());
            if let Err(e) = finished {
                self.snap = Some(s);
                return Err(e.into());
            }
            return Ok(SnapshotStep::Done {
                name: s.name,
                mark: s.mark,
            });
        }
        let mut buf = std::mem::take(&mut self.buf);
        let copied = self
            .copy_some(&mut s, max_blocks.max(1), &mut buf)
            .and_then(|()| self.store.snapshot_progress(&s.name, s.next));
        self.buf = buf;
        let next = s.next;
        self.snap = Some(s);
        copied?;
        Ok(SnapshotStep::Copying { next, blocks })
    }

    /// Give up the snapshot being copied, if any; returns its name.
    pub fn snapshot_abandon(&mut self) -> Result<Option<String>, EngineError> {
        let Some(s) = self.snap.take() else { return Ok(None) };
        self.store.snapshot_abandon(&s.name)?;
        Ok(Some(s.name))
    }

    /// The snapshot being copied: its name and cursor.
    pub fn snapshot_pending(&self) -> Option<(&str, BlockIndex)> {
        self.snap.as_ref().map(|s| (s.name.as_str(), s.next))
    }

    /// Snapshots given up since the last call: marked, but a crash came
    /// before their copy finished (found at [`Primary::open`]), or a version
    /// could not be kept before a host write. None of them exists.
    pub fn take_failed_snapshots(&mut self) -> Vec<String> {
        std::mem::take(&mut self.failed_snapshots)
    }

    /// Copy the marked snapshot to its end, if one is pending.
    pub(crate) fn complete_snapshot(&mut self) -> Result<(), EngineError> {
        let name = self.snap.as_ref().map(|s| s.name.clone());
        loop {
            match self.snapshot_step(u64::MAX)? {
                SnapshotStep::Copying { .. } => {}
                SnapshotStep::Done { .. } => return Ok(()),
                SnapshotStep::Idle => {
                    return match name {
                        Some(name) => Err(EngineError::SnapshotFailed { name }),
                        None => Ok(()),
                    }
                }
            }
        }
    }

    fn copy_some(&mut self, s: &mut SnapshotCopy, budget: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let blocks = self.geo.blocks();
        let mut work = 0;
        while s.next < blocks && work < budget {
            let b = s.next;
            // The next block that may not read as zeroes: the image's next
            // run of data, or a block whose newest version is in the freeze log.
            let (start, end) = self.store.image_data_from(b)?.unwrap_or((blocks, blocks));
            let logged = self.logged_from(b).unwrap_or(blocks);
            let at = start.max(b).min(logged).min(blocks);
            if at > b {
                s.ahead.set_range(b..at, false);
                s.next = at;
                work += 1;
                continue;
            }
            let run_end = if start <= b { end.min(blocks) } else { b + 1 };
            while s.next < run_end && work < budget {
                let b = s.next;
                if s.ahead.get(b) {
                    s.ahead.set(b, false);
                } else {
                    self.read_current(b, buf)?;
                    if buf.iter().any(|&x| x != 0) {
                        self.store.snapshot_put(&s.name, b, buf)?;
                    }
                }
                s.next += 1;
                work += 1;
            }
        }
        Ok(())
    }

    /// Log mode: the first block at or after `from` whose newest version is
    /// in the freeze log.
    fn logged_from(&self, from: BlockIndex) -> Option<BlockIndex> {
        if self.mode != Mode::Log {
            return None;
        }
        self.closing.as_ref().and_then(|c| c.preserved.next_one(from))
    }

    /// Before a host write changes block `b`: put its version at the mark
    /// into the snapshot being copied, unless the snapshot holds it already.
    /// A version that cannot be kept gives the snapshot up, never the write.
    pub(super) fn keep_for_snapshot(&mut self, b: BlockIndex) {
        if cfg!(feature = "bug-snapshot-no-cow") {
            return;
        }
        let Some(s) = self.snap.as_ref().filter(|s| !s.holds(b)) else {
            return;
        };
        let name = s.name.clone();
        let mut buf = std::mem::take(&mut self.buf);
        let kept = self.read_current(b, &mut buf).and_then(|()| {
            if buf.iter().any(|&x| x != 0) {
                self.store.snapshot_put(&name, b, &buf)
            } else {
                Ok(())
            }
        });
        self.buf = buf;
        match kept {
            Ok(()) => {
                if let Some(s) = self.snap.as_mut() {
                    s.ahead.set(b, true);
                }
                self.stats.snapshot_copies += 1;
            }
            Err(e) => {
                self.snap = None;
                // What the store keeps of it is dropped at the next open.
                let _ = self.store.snapshot_abandon(&name);
                self.stats.snapshot_failures += 1;
                self.last_preserve_error = Some(e.to_string());
                self.failed_snapshots.push(name);
            }
        }
    }

    /// After a restart: every snapshot still pending was cut short by the
    /// crash; drop it and report it failed.
    pub(super) fn recover_snapshots(&mut self) -> Result<(), EngineError> {
        let pending = self.store.snapshots_pending()?;
        if pending.is_empty() {
            return Ok(());
        }
        for name in pending {
            self.store.snapshot_abandon(&name)?;
            self.stats.snapshot_failures += 1;
            self.failed_snapshots.push(name);
        }
        self.store.sync()?;
        Ok(())
    }

    /// Heap bytes of the snapshot being copied and of the failed names.
    pub(super) fn snapshot_heap_bytes(&self) -> u64 {
        let names = self
            .failed_snapshots
            .iter()
            .map(|n| crate::mem::alloc_bytes(n.capacity()))
            .sum::<u64>()
            + crate::mem::vec_bytes::<String>(self.failed_snapshots.capacity());
        names
            + self
                .snap
                .as_ref()
                .map_or(0, |s| s.ahead.heap_bytes() + crate::mem::alloc_bytes(s.name.capacity()))
    }
}
