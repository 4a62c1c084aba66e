//! Host I/O: the volume as the host sees it, the closing epoch's versions
//! kept readable while its window is open (copy-on-write, or redirect-on-write
//! into the freeze log), and the write-intent record. Local snapshots are
//! `snapshot.rs`'s; a host write gives them their copy-before-overwrite first.
//!
//! Nothing here allocates per block: partial blocks go through the scratch
//! block `aux`, old versions through `buf`; the sparse bitmaps allocate only
//! when a chunk appears, grows its list or changes form.

use std::collections::BTreeMap;

use crate::bitmap::Bitmap;
use crate::error::{EngineError, StoreError};
use crate::store::VolumeStore;
use crate::types::{BlockIndex, LocalEpoch, Mode};

use super::Primary;

/// The write-intent record: one durable bit per region, set and synced before
/// the first write into a clean region, cleared lazily once every write of the
/// region is in an epoch the DR committed.
#[derive(Clone, Debug)]
pub(super) struct Intent {
    /// The bits, as this primary believes they are stored.
    pub(super) regions: Bitmap,
    /// The open epoch of each region's last write (memory only), as one
    /// region bitmap per epoch: a region is in at most one. Only a few epochs
    /// are ever present (those not yet committed), so this costs about two
    /// bytes per region written instead of a word per region of the volume.
    /// A region leaves when its bit is cleared and is noted again before
    /// its bit is next set.
    by_epoch: BTreeMap<LocalEpoch, Bitmap>,
}

impl Intent {
    pub(super) fn new(regions: u64) -> Self {
        Intent {
            regions: Bitmap::new(regions),
            by_epoch: BTreeMap::new(),
        }
    }

    /// Region `r` was last written in open epoch `epoch`.
    pub(super) fn note_epoch(&mut self, r: u64, epoch: LocalEpoch) {
        if self.by_epoch.get(&epoch).is_some_and(|m| m.get(r)) {
            return;
        }
        self.forget(r);
        let n = self.regions.len();
        self.by_epoch
            .entry(epoch)
            .or_insert_with(|| Bitmap::new(n))
            .set(r, true);
    }

    /// The open epoch of region `r`'s last write, if noted.
    pub(super) fn epoch_of(&self, r: u64) -> Option<LocalEpoch> {
        self.by_epoch.iter().find(|(_, m)| m.get(r)).map(|(&e, _)| e)
    }

    /// Drop region `r`'s epoch (its bit was cleared).
    pub(super) fn forget(&mut self, r: u64) {
        let Some((&e, m)) = self.by_epoch.iter_mut().find(|(_, m)| m.get(r)) else {
            return;
        };
        m.set(r, false);
        if !m.any() {
            self.by_epoch.remove(&e);
        }
    }

    /// Heap bytes held: the bits and the epochs' region bitmaps.
    pub(super) fn heap_bytes(&self) -> u64 {
        let epochs = self.by_epoch.values().map(Bitmap::heap_bytes).sum::<u64>();
        self.regions.heap_bytes() + crate::mem::map_bytes::<LocalEpoch, Bitmap>(self.by_epoch.len()) + epochs
    }
}

impl<S: VolumeStore> Primary<S> {
    /// Host write of `data` at byte `offset` (any alignment).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), EngineError> {
        self.write_range(offset, data.len() as u64, Some(data))
    }

    /// Host discard or zero-range of `len` bytes at `offset`: the blocks read
    /// back as zeroes and replicate as zero records.
    pub fn zero(&mut self, offset: u64, len: u64) -> Result<(), EngineError> {
        self.write_range(offset, len, None)
    }

    /// Host read of `buf.len()` bytes at `offset`.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), EngineError> {
        self.check_range(offset, buf.len() as u64)?;
        let bs = self.geo.block_size() as u64;
        let mut block = std::mem::take(&mut self.aux);
        let mut pos = 0u64;
        let len = buf.len() as u64;
        while pos < len {
            let abs = offset + pos;
            let (b, within) = (abs / bs, (abs % bs) as usize);
            let n = (bs - within as u64).min(len - pos) as usize;
            self.read_current(b, &mut block)?;
            buf[pos as usize..pos as usize + n].copy_from_slice(&block[within..within + n]);
            pos += n as u64;
        }
        self.aux = block;
        Ok(())
    }

    /// Host flush: everything written before is durable when this returns.
    pub fn flush(&mut self) -> Result<(), EngineError> {
        self.store.sync()?;
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), EngineError> {
        let size = self.geo.bytes();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(EngineError::OutOfRange { offset, len, size });
        }
        Ok(())
    }

    fn write_range(&mut self, offset: u64, len: u64, data: Option<&[u8]>) -> Result<(), EngineError> {
        self.check_range(offset, len)?;
        let bs = self.geo.block_size() as u64;
        let mut block = std::mem::take(&mut self.aux);
        let mut pos = 0u64;
        let result = (|| {
            while pos < len {
                let abs = offset + pos;
                let (b, within) = (abs / bs, (abs % bs) as usize);
                let n = (bs - within as u64).min(len - pos) as usize;
                if n as u64 == bs {
                    match data {
                        Some(d) => block.copy_from_slice(&d[pos as usize..pos as usize + n]),
                        None => block.fill(0),
                    }
                } else {
                    self.read_current(b, &mut block)?;
                    match data {
                        Some(d) => block[within..within + n].copy_from_slice(&d[pos as usize..pos as usize + n]),
                        None => block[within..within + n].fill(0),
                    }
                }
                self.write_block(b, &block)?;
                pos += n as u64;
            }
            Ok(())
        })();
        self.aux = block;
        result
    }

    /// The block as the host sees it now.
    pub(super) fn read_current(&mut self, b: BlockIndex, out: &mut [u8]) -> Result<(), StoreError> {
        if self.mode == Mode::Log {
            if let Some(c) = &self.closing {
                if c.preserved.get(b) && self.store.side_get(b, out)? {
                    return Ok(());
                }
            }
        }
        self.store.read_image(b, out)
    }

    fn write_block(&mut self, b: BlockIndex, data: &[u8]) -> Result<(), EngineError> {
        // Before anything changes the host's view of `b`.
        self.keep_for_snapshot(b);
        self.note_intent(b)?;
        self.stats.blocks_written += 1;
        self.open.dirty.set(b, true);
        self.failback.note_write(b);
        // The closing epoch's version of a member block must survive until
        // the replica holds the epoch durably.
        let keep_old = !cfg!(feature = "bug-no-cow");
        if let Some(c) = self
            .closing
            .as_mut()
            .filter(|c| keep_old && c.window_open() && c.is_member(b))
        {
            let group = c.group;
            let kept = if self.mode == Mode::Log {
                // Redirect-on-write: the new version goes to the freeze log.
                let put = self.store.side_put(b, data);
                if put.is_ok() {
                    c.preserved.set(b, true);
                    self.stats.redirected_writes += 1;
                    return Ok(());
                }
                put
            } else if !c.preserved.get(b) {
                // Copy-on-write: the old version moves aside first. No fsync:
                // after a crash the closing epoch is either staged at the DR
                // already or aborted and re-sent from the write-intent record.
                let copied = self
                    .store
                    .read_image(b, &mut self.buf)
                    .and_then(|()| self.store.side_put(b, &self.buf));
                if copied.is_ok() {
                    c.preserved.set(b, true);
                    self.stats.cow_copies += 1;
                }
                copied
            } else {
                Ok(())
            };
            if let Err(e) = kept {
                // No room to keep the epoch's version: the epoch is given up,
                // never the host write.
                self.stats.preserve_failures += 1;
                self.last_preserve_error = Some(e.to_string());
                self.abort(group)?;
            }
        }
        self.store.write_image(b, data)?;
        Ok(())
    }

    /// Write-intent: durable before the first write into a clean region.
    fn note_intent(&mut self, b: BlockIndex) -> Result<(), StoreError> {
        let r = self.geo.region_of(b);
        self.intent.note_epoch(r, self.open.local);
        if !self.intent.regions.get(r) {
            self.store.intent_set(r, true)?;
            self.store.sync()?;
            self.intent.regions.set(r, true);
        }
        Ok(())
    }

    /// After a restart: every block of every durable intent region may differ
    /// from the DR's image, so it is dirty in the open epoch.
    pub(super) fn recover_intent(&mut self) -> Result<(), EngineError> {
        for r in self.store.intent_regions()? {
            if r < self.geo.regions() {
                self.intent.regions.set(r, true);
                self.intent.note_epoch(r, self.open.local);
                self.open.dirty.set_range(self.geo.region_range(r), true);
            }
        }
        Ok(())
    }

    /// Lazily clear write-intent bits of regions whose every write is in an
    /// epoch the DR has committed (no sync: a lost clear only costs a re-send).
    pub(super) fn clear_intent_through(&mut self, local: LocalEpoch) {
        let mut from = 0;
        while let Some(r) = self.intent.regions.next_one(from) {
            from = r + 1;
            // A failed clear leaves the bit set, which is always safe.
            let epoch = self.intent.epoch_of(r).unwrap_or(0);
            if epoch <= local && self.store.intent_set(r, false).is_ok() {
                self.intent.regions.set(r, false);
                self.intent.forget(r);
            }
        }
    }
}
