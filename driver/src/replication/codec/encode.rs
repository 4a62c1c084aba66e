//! Engine frame → wire frames.

use floe_engine::{ManifestEntry, Payload, Reply, ShippedBlock, ToPrimary, ToReplica};
use floe_proto::replication::{self as pb, frame::Kind};

use super::{
    generation_to_wire, seq_to_wire, HASHES_PER_PART, HELD_PER_PART, INDEXES_PER_PART, MANIFEST_PER_PART,
    MAX_BATCH_BLOCKS, MAX_BATCH_DATA, MAX_BATCH_RECORDS,
};

fn frame(kind: Kind) -> pb::Frame {
    pb::Frame { kind: Some(kind) }
}

/// The wire frames of one primary → replica frame, in sending order.
/// `block_size` is the volume's: it says where each data block's bytes are.
pub fn encode_to_replica(msg: ToReplica, block_size: usize) -> Vec<pb::Frame> {
    match msg {
        ToReplica::Hello {
            generation,
            incarnation,
            session,
        } => vec![frame(Kind::Hello(pb::Hello {
            generation: Some(generation_to_wire(generation)),
            incarnation,
            session,
        }))],
        ToReplica::Blocks {
            generation,
            session,
            local,
            blocks,
            data,
        } => {
            let header = pb::BlockBatch {
                generation: Some(generation_to_wire(generation)),
                session,
                local_epoch: local,
                ..Default::default()
            };
            batches(header, &blocks, &data, block_size)
                .into_iter()
                .map(|b| frame(Kind::BlockBatch(b)))
                .collect()
        }
        ToReplica::Sealed {
            generation,
            incarnation,
            session,
            local,
            group,
            manifest,
            covers_resync,
        } => {
            let header = pb::EpochSealed {
                generation: Some(generation_to_wire(generation)),
                incarnation,
                session,
                local_epoch: local,
                group_epoch: group,
                covers_resync,
                ..Default::default()
            };
            let digest = manifest_digest(&manifest);
            let len = manifest.len() as u64;
            parts(&manifest, MANIFEST_PER_PART, |chunk, more| {
                let mut part = header.clone();
                part.manifest = chunk.iter().map(manifest_to_wire).collect();
                part.more = more;
                if !more {
                    part.manifest_len = len;
                    part.manifest_digest = digest.to_vec();
                }
                frame(Kind::EpochSealed(part))
            })
        }
        ToReplica::EpochAborted {
            generation,
            incarnation,
            local,
            group,
        } => vec![frame(Kind::EpochAborted(pb::EpochAborted {
            generation: Some(generation_to_wire(generation)),
            incarnation,
            local_epoch: local,
            group_epoch: group,
        }))],
        ToReplica::ResyncHashRequest { generation, blocks } => parts(&blocks, INDEXES_PER_PART, |chunk, more| {
            frame(Kind::ResyncHashRequest(pb::ResyncHashRequest {
                generation: Some(generation_to_wire(generation)),
                blocks: chunk.to_vec(),
                more,
            }))
        }),
    }
}

/// The wire frames of one replica → primary frame, in sending order.
pub fn encode_to_primary(msg: ToPrimary) -> Vec<pb::Frame> {
    let generation = Some(generation_to_wire(msg.generation));
    match msg.reply {
        Reply::Welcome {
            for_incarnation,
            for_session,
            incarnation,
            committed,
            committed_group,
            staged,
            resync_candidates,
            held,
        } => {
            let header = pb::Welcome {
                generation,
                for_incarnation,
                for_session,
                dr_incarnation: incarnation,
                committed_local_epoch: committed,
                committed_group_epoch: committed_group,
                staged: staged.map(|(local_epoch, group_epoch)| pb::StagedEpoch {
                    local_epoch,
                    group_epoch,
                }),
                has_resync_candidates: resync_candidates.is_some(),
                ..Default::default()
            };
            let candidates = resync_candidates.unwrap_or_default();
            let held: Vec<pb::HeldVersion> = held
                .into_iter()
                .map(|(local_epoch, index, seq)| pb::HeldVersion {
                    local_epoch,
                    index,
                    seq: Some(seq_to_wire(seq)),
                })
                .collect();
            // Candidates first, then the held versions; `more` on every
            // part but the last.
            let mut out = Vec::new();
            if !candidates.is_empty() || held.is_empty() {
                out = parts(&candidates, INDEXES_PER_PART, |chunk, _| {
                    let mut part = header.clone();
                    part.resync_candidates = chunk.to_vec();
                    part.more = true;
                    frame(Kind::Welcome(part))
                });
            }
            if !held.is_empty() {
                out.extend(parts(&held, HELD_PER_PART, |chunk, _| {
                    let mut part = header.clone();
                    part.held = chunk.to_vec();
                    part.more = true;
                    frame(Kind::Welcome(part))
                }));
            }
            if let Some(Kind::Welcome(last)) = out.last_mut().and_then(|f| f.kind.as_mut()) {
                last.more = false;
            }
            out
        }
        Reply::StagedAck { local } => vec![frame(Kind::StagedAck(pb::StagedAck {
            generation,
            local_epoch: local,
        }))],
        Reply::Consistent { local, group } => vec![frame(Kind::ConsistentAck(pb::ConsistentAck {
            generation,
            local_epoch: local,
            group_epoch: group,
        }))],
        Reply::Aborted { group } => vec![frame(Kind::AbortedAck(pb::AbortedAck {
            generation,
            group_epoch: group,
        }))],
        Reply::Fenced { generation: newer } => vec![frame(Kind::Fenced(pb::Fenced {
            generation,
            newer: Some(generation_to_wire(newer)),
        }))],
        Reply::ResyncHashes { entries } => parts(&entries, HASHES_PER_PART, |chunk, more| {
            frame(Kind::ResyncHashes(pb::ResyncHashes {
                generation,
                entries: chunk
                    .iter()
                    .map(|(index, hash)| pb::BlockHash {
                        index: *index,
                        hash: hash.to_vec(),
                    })
                    .collect(),
                more,
            }))
        }),
    }
}

/// BLAKE3 of a manifest's canonical encoding: per entry, in order, the index,
/// the sequence's generation, incarnation and counter (each u64
/// little-endian), then the 32-byte hash. Both sides compute it the same way.
pub fn manifest_digest(manifest: &[ManifestEntry]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    for e in manifest {
        digest_entry(&mut hasher, e);
    }
    *hasher.finalize().as_bytes()
}

pub(crate) fn digest_entry(hasher: &mut blake3::Hasher, e: &ManifestEntry) {
    hasher.update(&e.index.to_le_bytes());
    hasher.update(&e.seq.generation.to_le_bytes());
    hasher.update(&e.seq.incarnation.to_le_bytes());
    hasher.update(&e.seq.counter.to_le_bytes());
    hasher.update(&e.hash);
}

fn manifest_to_wire(e: &ManifestEntry) -> pb::ManifestEntry {
    pb::ManifestEntry {
        index: e.index,
        seq: Some(seq_to_wire(e.seq)),
        hash: e.hash.to_vec(),
    }
}

/// One frame per chunk of `items` (at least one frame, even for an empty
/// list, since the last part carries the message).
fn parts<T>(items: &[T], per_part: usize, mut make: impl FnMut(&[T], bool) -> pb::Frame) -> Vec<pb::Frame> {
    if items.is_empty() {
        return vec![make(&[], false)];
    }
    let n = items.len().div_ceil(per_part);
    items
        .chunks(per_part)
        .enumerate()
        .map(|(i, chunk)| make(chunk, i + 1 < n))
        .collect()
}

/// Splits one engine batch into wire batches within the limits, copying each
/// data block's bytes behind the ones before it. Runs of zero blocks with
/// consecutive indexes and sequence counters become one `ZeroRange`.
fn batches(header: pb::BlockBatch, blocks: &[ShippedBlock], data: &[u8], block_size: usize) -> Vec<pb::BlockBatch> {
    let mut out = Vec::new();
    let mut cur = header.clone();
    let mut versions = 0usize;
    for b in blocks {
        let full = versions + 1 > MAX_BATCH_BLOCKS
            || cur.blocks.len() + cur.zero_ranges.len() + 1 > MAX_BATCH_RECORDS
            || (matches!(b.payload, Payload::Data { .. })
                && !cur.data.is_empty()
                && cur.data.len() + block_size > MAX_BATCH_DATA);
        if full {
            out.push(std::mem::replace(&mut cur, header.clone()));
            versions = 0;
        }
        versions += 1;
        match b.payload {
            Payload::Data { at } => {
                let at = at as usize;
                let bytes = data
                    .get(at..at + block_size)
                    .expect("the engine puts every data block of a batch inside the batch's buffer");
                cur.data.extend_from_slice(bytes);
                cur.blocks.push(pb::Block {
                    index: b.index,
                    seq: Some(seq_to_wire(b.seq)),
                    zero: false,
                });
            }
            Payload::Zero => {
                if let Some(last) = cur.zero_ranges.last_mut() {
                    let seq = last.seq.unwrap_or_default();
                    if last.first_block + last.count == b.index
                        && seq.generation_counter == b.seq.generation
                        && seq.incarnation == b.seq.incarnation
                        && seq.counter.checked_add(last.count) == Some(b.seq.counter)
                    {
                        last.count += 1;
                        continue;
                    }
                }
                cur.zero_ranges.push(pb::ZeroRange {
                    first_block: b.index,
                    count: 1,
                    seq: Some(seq_to_wire(b.seq)),
                });
            }
        }
    }
    if versions > 0 {
        out.push(cur);
    }
    out
}
