//! Shipping: `poll_send` hands out the next frame when the link has room —
//! control frames first, then the closing epoch's blocks and its seal, then
//! (modes that stream) the open epoch's blocks. A block's content is read
//! when it is sent, not when it was written: overwrites in between coalesce.

use crate::error::EngineError;
use crate::frame::{Payload, ShippedBlock, ToReplica};
use crate::store::VolumeStore;
use crate::types::{hash_block, BlockIndex, ManifestEntry, Mode, SendSeq};

use super::epoch::{Closing, Shipped};
use super::{ClosingState, Primary};

impl<S: VolumeStore> Primary<S> {
    /// Next frame to send, if any: control frames, then the closing epoch's
    /// blocks and its seal, then (modes that stream) the open epoch's blocks.
    pub fn poll_send(&mut self, max_blocks: usize) -> Result<Option<ToReplica>, EngineError> {
        if !self.session.is_up() || self.session.fenced_by.is_some() {
            return Ok(None);
        }
        if let Some(frame) = self.session.outbox.pop_front() {
            return Ok(Some(frame));
        }
        if self.failback.awaiting_hashes() {
            return Ok(None);
        }
        if let Some(mut c) = self.closing.take() {
            let frame = self.ship_closing(&mut c, max_blocks);
            self.closing = Some(c);
            if let Some(f) = frame? {
                return Ok(Some(f));
            }
        }
        if self.mode.streams_open_epoch() {
            return self.ship_open(max_blocks);
        }
        Ok(None)
    }

    fn ship_closing(&mut self, c: &mut Closing, max: usize) -> Result<Option<ToReplica>, EngineError> {
        if c.state != ClosingState::Shipping {
            return Ok(None);
        }
        let mut blocks = Vec::new();
        let mut out = Vec::new();
        // Pending bits below `from` were all cleared by this loop.
        let mut from = 0;
        while blocks.len() < max {
            let Some(b) = c.pending.next_one(from) else { break };
            from = b + 1;
            c.pending.set(b, false);
            c.sent.set(b, true);
            // The closing epoch's version: preserved aside (copy-on-write
            // modes) or still in the image (log mode redirects new writes).
            let mut data = std::mem::take(&mut self.buf);
            let aside = self.mode != Mode::Log && c.preserved.get(b) && self.store.side_get(b, &mut data)?;
            if !aside {
                self.store.read_image(b, &mut data)?;
            }
            let compare = c.covers_resync && !c.shipped.contains_key(&b);
            let shipped = self.ship_block(b, &data, compare, &mut out, max);
            self.buf = data;
            if let Some((sb, entry)) = shipped {
                c.shipped.insert(b, entry);
                blocks.push(sb);
            }
        }
        if !blocks.is_empty() {
            return Ok(Some(ToReplica::Blocks {
                generation: self.meta.generation,
                session: self.session.number,
                local: c.local,
                blocks,
                data: out,
            }));
        }
        // Everything sent: the seal point is durable before the seal leaves,
        // so a restarted primary never reuses this local epoch.
        self.meta.last_sealed = c.local;
        self.meta.last_sealed_group = c.group;
        self.store.put_meta(&self.meta)?;
        self.store.sync()?;
        c.state = ClosingState::Sealed;
        Ok(Some(ToReplica::Sealed {
            generation: self.meta.generation,
            incarnation: self.meta.incarnation,
            session: self.session.number,
            local: c.local,
            group: c.group,
            manifest: c.shipped.iter().map(|(&b, s)| self.manifest_entry(b, s)).collect(),
            covers_resync: c.covers_resync,
        }))
    }

    fn ship_open(&mut self, max: usize) -> Result<Option<ToReplica>, EngineError> {
        // Once an epoch carrying the failback is frozen, the replica's image
        // may change under the hashes: only that epoch's blocks compare.
        let may_compare = self.closing.as_ref().is_none_or(|c| !c.covers_resync);
        let mut blocks = Vec::new();
        let mut out = Vec::new();
        while blocks.len() < max {
            // A rotating cursor: every dirty block waits at most one sweep,
            // and hot blocks coalesce while the sweep is elsewhere.
            let found = self
                .open
                .dirty
                .next_one(self.open.cursor)
                .or_else(|| self.open.dirty.next_one(0));
            let Some(b) = found else { break };
            self.open.cursor = b + 1;
            self.open.dirty.set(b, false);
            let mut data = std::mem::take(&mut self.buf);
            self.read_current(b, &mut data)?;
            // A block already shipped in this epoch must ship again: the
            // replica will fold the staged version, not its image's.
            let compare = may_compare && !self.open.shipped.contains_key(&b);
            let shipped = self.ship_block(b, &data, compare, &mut out, max);
            self.buf = data;
            if let Some((sb, entry)) = shipped {
                self.open.shipped.insert(b, entry);
                self.open.shipped_blocks.set(b, true);
                blocks.push(sb);
            }
        }
        if blocks.is_empty() {
            return Ok(None);
        }
        Ok(Some(ToReplica::Blocks {
            generation: self.meta.generation,
            session: self.session.number,
            local: self.open.local,
            blocks,
            data: out,
        }))
    }

    /// Turn one block version into a shipment, unless failback found the
    /// replica already holds the same bytes. Its bytes join the frame's
    /// buffer `out`, sized once for `max` blocks.
    fn ship_block(
        &mut self,
        b: BlockIndex,
        data: &[u8],
        compare: bool,
        out: &mut Vec<u8>,
        max: usize,
    ) -> Option<(ShippedBlock, Shipped)> {
        let hash = hash_block(data);
        if compare && self.replica_holds(b, &hash) {
            return None;
        }
        self.counter += 1;
        let seq = SendSeq {
            generation: self.meta.generation.counter,
            incarnation: self.meta.incarnation,
            counter: self.counter,
        };
        let payload = if data.iter().all(|&x| x == 0) {
            Payload::Zero
        } else {
            self.stats.bytes_shipped += data.len() as u64;
            if out.capacity() == 0 {
                out.reserve_exact(max * data.len());
            }
            let at = u32::try_from(out.len()).expect("a frame holds far less than 4 GiB of blocks");
            out.extend_from_slice(data);
            Payload::Data { at }
        };
        self.stats.blocks_shipped += 1;
        Some((
            ShippedBlock { index: b, seq, payload },
            Shipped {
                counter: self.counter,
                hash,
            },
        ))
    }

    /// The manifest entry of a version this primary shipped: the generation
    /// and incarnation of its sequence are this primary's own.
    fn manifest_entry(&self, index: BlockIndex, s: &Shipped) -> ManifestEntry {
        let seq = SendSeq {
            generation: self.meta.generation.counter,
            incarnation: self.meta.incarnation,
            counter: s.counter,
        };
        ManifestEntry {
            index,
            seq,
            hash: s.hash,
        }
    }
}
