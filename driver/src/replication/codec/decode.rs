//! Wire frames → engine frames, validated against the volume's geometry.
//!
//! Each side of a stream keeps one inbox. An inbox takes the wire frames in
//! the order they arrived and returns an engine frame once one is whole: at
//! once for most kinds, at the last part for lists sent in parts. A part of
//! another message in the middle of a list is refused, since one stream
//! carries the parts of one message back to back. Every count is checked
//! against the limits of [`super`] and the geometry before anything is
//! allocated for it.

use floe_engine::{
    BlockIndex, Geometry, HeldVersion, ManifestEntry, Payload, Reply, RoleGeneration, SendSeq, ShippedBlock, ToPrimary,
    ToReplica,
};
use floe_proto::replication::{self as pb, frame::Kind};

use super::encode::manifest_digest;
use super::{
    generation_from_wire, seq_from_wire, HASHES_PER_PART, HELD_PER_PART, INDEXES_PER_PART, MANIFEST_PER_PART,
    MAX_BATCH_BLOCKS, MAX_BATCH_DATA, MAX_BATCH_RECORDS,
};

/// A wire frame the inbox refuses. The stream that carried it is closed with
/// a `Refusal` naming the reason; nothing of it reaches the engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// A frame with no message in it.
    #[error("a frame with no message")]
    Empty,
    /// A required field is absent.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A message that does not travel this way, or not after the handshake.
    #[error("{0} is not expected here")]
    Unexpected(&'static str),
    /// A block index at or past the end of the volume.
    #[error("{field} {index} is outside the volume's {blocks} blocks")]
    OutOfRange {
        /// Field holding the index.
        field: &'static str,
        /// The index.
        index: u64,
        /// Blocks in the volume.
        blocks: u64,
    },
    /// A zero range that is empty, runs past the volume or past the last
    /// sequence number.
    #[error("zero range of {count} blocks from block {first}: must be 1 to the end of the volume ({blocks} blocks)")]
    ZeroRange {
        /// First block.
        first: u64,
        /// Blocks in the range.
        count: u64,
        /// Blocks in the volume.
        blocks: u64,
    },
    /// Batch data whose length does not match its data blocks.
    #[error("batch data of {got} bytes for {data_blocks} data blocks of {block_size} bytes")]
    DataLength {
        /// Bytes received.
        got: usize,
        /// Data blocks in the batch.
        data_blocks: usize,
        /// Block size of the volume.
        block_size: usize,
    },
    /// A hash that is not 32 bytes.
    #[error("{field}: a hash is 32 bytes, not {got}")]
    HashLength {
        /// Field holding the hash.
        field: &'static str,
        /// Its length.
        got: usize,
    },
    /// More of something than a frame or a message may hold.
    #[error("{what}: {got} is more than the limit of {limit}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// How many came.
        got: u64,
        /// How many may come.
        limit: u64,
    },
    /// A batch with no block version.
    #[error("a block batch with no block")]
    EmptyBatch,
    /// Another message arrived while a list sent in parts was unfinished.
    #[error("{got} arrived between the parts of a {pending}")]
    Interleaved {
        /// The unfinished message.
        pending: &'static str,
        /// What came instead.
        got: &'static str,
    },
    /// The parts of one message do not carry the same header.
    #[error("the parts of one {0} carry different headers")]
    PartsDisagree(&'static str),
    /// A seal whose manifest does not have the length its last part declares.
    #[error("the seal declares {declared} manifest entries; {got} arrived")]
    ManifestLength {
        /// Declared by the last part.
        declared: u64,
        /// Received.
        got: u64,
    },
    /// A seal whose manifest does not hash to the digest it carries.
    #[error("the seal's manifest does not match its digest")]
    ManifestDigest,
    /// A list that must be strictly ascending is not.
    #[error("{0} is not strictly ascending")]
    Unordered(&'static str),
}

/// One item of a `Welcome` sent in parts.
enum WelcomeItem {
    Candidate(BlockIndex),
    Held(HeldVersion),
}

type Result<T> = std::result::Result<T, Malformed>;

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Open(_) => "open",
        Kind::Accept(_) => "accept",
        Kind::Refusal(_) => "refusal",
        Kind::Hello(_) => "hello",
        Kind::Welcome(_) => "welcome",
        Kind::BlockBatch(_) => "block_batch",
        Kind::EpochSealed(_) => "epoch_sealed",
        Kind::EpochAborted(_) => "epoch_aborted",
        Kind::ResyncHashRequest(_) => "resync_hash_request",
        Kind::StagedAck(_) => "staged_ack",
        Kind::ConsistentAck(_) => "consistent_ack",
        Kind::AbortedAck(_) => "aborted_ack",
        Kind::Fenced(_) => "fenced",
        Kind::ResyncHashes(_) => "resync_hashes",
    }
}

/// A list arriving in parts, with the header of its first part.
struct Parts<H, T> {
    name: &'static str,
    header: H,
    items: Vec<T>,
}

/// A list message after one more part: whole (header and items), or still
/// waiting for parts.
type Joined<H, T> = std::result::Result<(H, Vec<T>), Parts<H, T>>;

/// Adds one part to `pending` (which must be empty or hold the same
/// message); returns the whole message at its last part.
fn join<H: PartialEq, T>(
    pending: Option<Parts<H, T>>,
    name: &'static str,
    header: H,
    items: Vec<T>,
    more: bool,
    limit: u64,
) -> Result<Joined<H, T>> {
    let mut parts = match pending {
        None => Parts {
            name,
            header,
            items: Vec::new(),
        },
        Some(p) if p.name != name => {
            return Err(Malformed::Interleaved {
                pending: p.name,
                got: name,
            })
        }
        Some(p) if p.header != header => return Err(Malformed::PartsDisagree(name)),
        Some(p) => p,
    };
    let total = (parts.items.len() + items.len()) as u64;
    if total > limit {
        return Err(Malformed::TooMany {
            what: name,
            got: total,
            limit,
        });
    }
    parts.items.extend(items);
    Ok(if more {
        Err(parts)
    } else {
        Ok((parts.header, parts.items))
    })
}

fn generation(g: Option<pb::RoleGeneration>, field: &'static str) -> Result<RoleGeneration> {
    g.map(generation_from_wire).ok_or(Malformed::Missing(field))
}

fn seq(s: Option<pb::SendSeq>, field: &'static str) -> Result<SendSeq> {
    s.map(seq_from_wire).ok_or(Malformed::Missing(field))
}

fn hash(bytes: &[u8], field: &'static str) -> Result<[u8; 32]> {
    bytes.try_into().map_err(|_| Malformed::HashLength {
        field,
        got: bytes.len(),
    })
}

fn per_part<T>(items: &[T], limit: usize, what: &'static str) -> Result<()> {
    if items.len() > limit {
        return Err(Malformed::TooMany {
            what,
            got: items.len() as u64,
            limit: limit as u64,
        });
    }
    Ok(())
}

/// What the DR side receives: the primary's frames for one volume.
pub struct ReplicaInbox {
    geometry: Geometry,
    sealed: Option<Parts<pb::EpochSealed, ManifestEntry>>,
    hash_request: Option<Parts<RoleGeneration, BlockIndex>>,
}

impl ReplicaInbox {
    /// An inbox for a volume of `geometry`.
    pub fn new(geometry: Geometry) -> Self {
        ReplicaInbox {
            geometry,
            sealed: None,
            hash_request: None,
        }
    }

    fn index(&self, index: u64, field: &'static str) -> Result<BlockIndex> {
        check_index(self.geometry, index, field)
    }

    /// Takes the next wire frame; returns the engine frame it completes.
    pub fn push(&mut self, frame: pb::Frame) -> Result<Option<ToReplica>> {
        let kind = frame.kind.ok_or(Malformed::Empty)?;
        let name = kind_name(&kind);
        let unfinished = self
            .sealed
            .as_ref()
            .map(|p| p.name)
            .or(self.hash_request.as_ref().map(|p| p.name));
        if let Some(pending) = unfinished.filter(|p| *p != name) {
            return Err(Malformed::Interleaved { pending, got: name });
        }
        match kind {
            Kind::Hello(h) => Ok(Some(ToReplica::Hello {
                generation: generation(h.generation, "hello.generation")?,
                incarnation: h.incarnation,
                session: h.session,
            })),
            Kind::BlockBatch(b) => decode_batch(self.geometry, b).map(Some),
            Kind::EpochSealed(s) => self.sealed_part(s),
            Kind::EpochAborted(a) => Ok(Some(ToReplica::EpochAborted {
                generation: generation(a.generation, "epoch_aborted.generation")?,
                incarnation: a.incarnation,
                local: a.local_epoch,
                group: a.group_epoch,
            })),
            Kind::ResyncHashRequest(r) => {
                per_part(&r.blocks, INDEXES_PER_PART, "resync_hash_request.blocks")?;
                let generation = generation(r.generation, "resync_hash_request.generation")?;
                let blocks = r
                    .blocks
                    .iter()
                    .map(|&b| self.index(b, "resync_hash_request.blocks"))
                    .collect::<Result<Vec<_>>>()?;
                let pending = self.hash_request.take();
                match join(pending, name, generation, blocks, r.more, self.geometry.blocks())? {
                    Ok((generation, blocks)) => Ok(Some(ToReplica::ResyncHashRequest { generation, blocks })),
                    Err(parts) => {
                        self.hash_request = Some(parts);
                        Ok(None)
                    }
                }
            }
            other => Err(Malformed::Unexpected(kind_name(&other))),
        }
    }

    fn sealed_part(&mut self, mut s: pb::EpochSealed) -> Result<Option<ToReplica>> {
        per_part(&s.manifest, MANIFEST_PER_PART, "epoch_sealed.manifest")?;
        let entries = std::mem::take(&mut s.manifest)
            .into_iter()
            .map(|e| {
                Ok(ManifestEntry {
                    index: self.index(e.index, "epoch_sealed.manifest.index")?,
                    seq: seq(e.seq, "epoch_sealed.manifest.seq")?,
                    hash: hash(&e.hash, "epoch_sealed.manifest.hash")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let more = s.more;
        // The header of every part, without what only the last one carries.
        let (declared, digest) = (s.manifest_len, std::mem::take(&mut s.manifest_digest));
        s.more = false;
        s.manifest_len = 0;
        let pending = self.sealed.take();
        let (header, manifest) = match join(pending, "epoch_sealed", s, entries, more, self.geometry.blocks())? {
            Ok(whole) => whole,
            Err(parts) => {
                self.sealed = Some(parts);
                return Ok(None);
            }
        };
        if declared != manifest.len() as u64 {
            return Err(Malformed::ManifestLength {
                declared,
                got: manifest.len() as u64,
            });
        }
        if hash(&digest, "epoch_sealed.manifest_digest")? != manifest_digest(&manifest) {
            return Err(Malformed::ManifestDigest);
        }
        Ok(Some(ToReplica::Sealed {
            generation: generation(header.generation, "epoch_sealed.generation")?,
            incarnation: header.incarnation,
            session: header.session,
            local: header.local_epoch,
            group: header.group_epoch,
            manifest,
            covers_resync: header.covers_resync,
        }))
    }
}

fn check_index(geometry: Geometry, index: u64, field: &'static str) -> Result<BlockIndex> {
    if index >= geometry.blocks() {
        return Err(Malformed::OutOfRange {
            field,
            index,
            blocks: geometry.blocks(),
        });
    }
    Ok(index)
}

/// A batch: every count bounded before the versions are laid out; data
/// blocks take their bytes in the order they are listed, and the versions
/// come out in send order.
fn decode_batch(geometry: Geometry, b: pb::BlockBatch) -> Result<ToReplica> {
    let generation = generation(b.generation, "block_batch.generation")?;
    let records = b.blocks.len() + b.zero_ranges.len();
    if records > MAX_BATCH_RECORDS {
        return Err(Malformed::TooMany {
            what: "block_batch records",
            got: records as u64,
            limit: MAX_BATCH_RECORDS as u64,
        });
    }
    let block_size = geometry.block_size();
    let data_blocks = b.blocks.iter().filter(|x| !x.zero).count();
    let data_limit = MAX_BATCH_DATA.max(block_size);
    if data_blocks * block_size > data_limit || b.data.len() != data_blocks * block_size {
        return Err(Malformed::DataLength {
            got: b.data.len(),
            data_blocks,
            block_size,
        });
    }
    let mut versions = b.blocks.len() as u64;
    for r in &b.zero_ranges {
        let end = r.first_block.checked_add(r.count);
        let seq_end = r.seq.map(|s| s.counter.checked_add(r.count));
        if r.count == 0 || end.is_none_or(|e| e > geometry.blocks()) || seq_end == Some(None) {
            return Err(Malformed::ZeroRange {
                first: r.first_block,
                count: r.count,
                blocks: geometry.blocks(),
            });
        }
        versions = versions.saturating_add(r.count);
    }
    if versions > MAX_BATCH_BLOCKS as u64 {
        return Err(Malformed::TooMany {
            what: "block_batch versions",
            got: versions,
            limit: MAX_BATCH_BLOCKS as u64,
        });
    }
    if versions == 0 {
        return Err(Malformed::EmptyBatch);
    }
    let mut blocks = Vec::with_capacity(versions as usize);
    let mut at = 0u32;
    for x in b.blocks {
        let payload = if x.zero {
            Payload::Zero
        } else {
            let here = at;
            at += block_size as u32;
            Payload::Data { at: here }
        };
        blocks.push(ShippedBlock {
            index: check_index(geometry, x.index, "block_batch.blocks.index")?,
            seq: seq(x.seq, "block_batch.blocks.seq")?,
            payload,
        });
    }
    for r in b.zero_ranges {
        let first = seq(r.seq, "block_batch.zero_ranges.seq")?;
        for i in 0..r.count {
            blocks.push(ShippedBlock {
                index: r.first_block + i,
                seq: SendSeq {
                    counter: first.counter + i,
                    ..first
                },
                payload: Payload::Zero,
            });
        }
    }
    blocks.sort_by_key(|x| x.seq);
    Ok(ToReplica::Blocks {
        generation,
        session: b.session,
        local: b.local_epoch,
        blocks,
        data: b.data,
    })
}

/// What the primary side receives: the DR's replies for one volume.
pub struct PrimaryInbox {
    geometry: Geometry,
    welcome: Option<Parts<pb::Welcome, WelcomeItem>>,
    hashes: Option<Parts<RoleGeneration, (BlockIndex, [u8; 32])>>,
}

impl PrimaryInbox {
    /// An inbox for a volume of `geometry`.
    pub fn new(geometry: Geometry) -> Self {
        PrimaryInbox {
            geometry,
            welcome: None,
            hashes: None,
        }
    }

    /// Takes the next wire frame; returns the engine frame it completes.
    pub fn push(&mut self, frame: pb::Frame) -> Result<Option<ToPrimary>> {
        let kind = frame.kind.ok_or(Malformed::Empty)?;
        let name = kind_name(&kind);
        let unfinished = self
            .welcome
            .as_ref()
            .map(|p| p.name)
            .or(self.hashes.as_ref().map(|p| p.name));
        if let Some(pending) = unfinished.filter(|p| *p != name) {
            return Err(Malformed::Interleaved { pending, got: name });
        }
        let (generation, reply) = match kind {
            Kind::Welcome(w) => match self.welcome_part(w)? {
                Some(whole) => whole,
                None => return Ok(None),
            },
            Kind::StagedAck(a) => (
                generation(a.generation, "staged_ack.generation")?,
                Reply::StagedAck { local: a.local_epoch },
            ),
            Kind::ConsistentAck(a) => (
                generation(a.generation, "consistent_ack.generation")?,
                Reply::Consistent {
                    local: a.local_epoch,
                    group: a.group_epoch,
                },
            ),
            Kind::AbortedAck(a) => (
                generation(a.generation, "aborted_ack.generation")?,
                Reply::Aborted { group: a.group_epoch },
            ),
            Kind::Fenced(f) => (
                generation(f.generation, "fenced.generation")?,
                Reply::Fenced {
                    generation: generation(f.newer, "fenced.newer")?,
                },
            ),
            Kind::ResyncHashes(h) => {
                per_part(&h.entries, HASHES_PER_PART, "resync_hashes.entries")?;
                let g = generation(h.generation, "resync_hashes.generation")?;
                let entries = h
                    .entries
                    .iter()
                    .map(|e| {
                        Ok((
                            check_index(self.geometry, e.index, "resync_hashes.entries.index")?,
                            hash(&e.hash, "resync_hashes.entries.hash")?,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?;
                match join(self.hashes.take(), name, g, entries, h.more, self.geometry.blocks())? {
                    Ok((g, entries)) => (g, Reply::ResyncHashes { entries }),
                    Err(parts) => {
                        self.hashes = Some(parts);
                        return Ok(None);
                    }
                }
            }
            other => return Err(Malformed::Unexpected(kind_name(&other))),
        };
        Ok(Some(ToPrimary { generation, reply }))
    }

    fn welcome_part(&mut self, mut w: pb::Welcome) -> Result<Option<(RoleGeneration, Reply)>> {
        per_part(&w.resync_candidates, INDEXES_PER_PART, "welcome.resync_candidates")?;
        per_part(&w.held, HELD_PER_PART, "welcome.held")?;
        let mut items = std::mem::take(&mut w.resync_candidates)
            .into_iter()
            .map(|b| {
                Ok(WelcomeItem::Candidate(check_index(
                    self.geometry,
                    b,
                    "welcome.resync_candidates",
                )?))
            })
            .collect::<Result<Vec<_>>>()?;
        if !w.has_resync_candidates && !items.is_empty() {
            return Err(Malformed::Unexpected(
                "welcome.resync_candidates without has_resync_candidates",
            ));
        }
        for h in std::mem::take(&mut w.held) {
            let index = check_index(self.geometry, h.index, "welcome.held.index")?;
            items.push(WelcomeItem::Held((
                h.local_epoch,
                index,
                seq(h.seq, "welcome.held.seq")?,
            )));
        }
        let more = std::mem::take(&mut w.more);
        // Candidates name each block once, held versions each block once in
        // each of at most two epochs.
        let limit = self.geometry.blocks().saturating_mul(3);
        let (w, items) = match join(self.welcome.take(), "welcome", w, items, more, limit)? {
            Ok(whole) => whole,
            Err(parts) => {
                self.welcome = Some(parts);
                return Ok(None);
            }
        };
        let mut candidates = Vec::new();
        let mut held: Vec<HeldVersion> = Vec::new();
        for item in items {
            match item {
                WelcomeItem::Candidate(b) => candidates.push(b),
                WelcomeItem::Held(v) => {
                    // The primary looks versions up by (epoch, block).
                    if held.last().is_some_and(|last| (last.0, last.1) >= (v.0, v.1)) {
                        return Err(Malformed::Unordered("welcome.held"));
                    }
                    held.push(v);
                }
            }
        }
        if candidates.len() as u64 > self.geometry.blocks() {
            return Err(Malformed::TooMany {
                what: "welcome.resync_candidates",
                got: candidates.len() as u64,
                limit: self.geometry.blocks(),
            });
        }
        let reply = Reply::Welcome {
            for_incarnation: w.for_incarnation,
            for_session: w.for_session,
            incarnation: w.dr_incarnation,
            committed: w.committed_local_epoch,
            committed_group: w.committed_group_epoch,
            staged: w.staged.map(|s| (s.local_epoch, s.group_epoch)),
            resync_candidates: w.has_resync_candidates.then_some(candidates),
            held,
        };
        Ok(Some((generation(w.generation, "welcome.generation")?, reply)))
    }
}
