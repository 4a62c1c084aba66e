//! Engine frames ↔ `replication.proto`.
//!
//! - [`encode`]: [`encode_to_replica`] and [`encode_to_primary`] turn one
//!   engine frame into one or more wire frames. Encoding cannot fail: engine
//!   frames are local values the engine made.
//! - [`decode`]: [`ReplicaInbox`] (at the DR) and [`PrimaryInbox`] (at the
//!   primary) take wire frames one at a time and give back engine frames,
//!   refusing anything outside the volume's geometry or the limits below
//!   with a [`Malformed`] that names the field.
//!
//! # Limits
//!
//! No wire frame grows with the volume. Lists that can (seal manifests,
//! failback candidates, the resume point's held versions, hash requests and
//! replies) travel as parts of at most [`MAX_PART_BYTES`], every part but
//! the last flagged `more`; a batch of blocks carries at most [`MAX_BATCH_DATA`] bytes of data (or one block,
//! if blocks are larger) and [`MAX_BATCH_BLOCKS`] block versions, zero
//! ranges counted block by block. [`MAX_FRAME_BYTES`] bounds any encoded
//! frame; the transport gives it to tonic as its message limit.

pub mod decode;
pub mod encode;

pub use decode::{Malformed, PrimaryInbox, ReplicaInbox};
pub use encode::{encode_to_primary, encode_to_replica, manifest_digest};

use floe_engine::{RoleGeneration, SendSeq};
use floe_proto::replication as pb;

/// Largest encoded list part (manifest, candidates, hashes, held versions).
pub const MAX_PART_BYTES: usize = 1 << 20;
/// Most data bytes in one batch, unless one block is larger.
pub const MAX_BATCH_DATA: usize = 1 << 20;
/// Most block versions in one batch (zero-range blocks included).
pub const MAX_BATCH_BLOCKS: usize = 1 << 16;
/// Most `Block` and `ZeroRange` records in one batch.
pub const MAX_BATCH_RECORDS: usize = 4096;
/// Largest encoded frame of any kind: a batch of one 1 MiB block and its
/// records, or a list part, with room for the headers.
pub const MAX_FRAME_BYTES: usize = 2 << 20;

/// Manifest entries in one part: 82 bytes each at most (index, three-field
/// sequence, 32-byte hash, framing), so a part stays under 1 MiB.
pub(crate) const MANIFEST_PER_PART: usize = 12_000;
/// Block indexes in one part: 10 bytes each at most, packed.
pub(crate) const INDEXES_PER_PART: usize = 100_000;
/// Block hashes in one part: 47 bytes each at most.
pub(crate) const HASHES_PER_PART: usize = 20_000;
/// Held versions of a resume point in one part: 50 bytes each at most
/// (epoch, index, three-field sequence, framing).
pub(crate) const HELD_PER_PART: usize = 20_000;

pub(crate) fn generation_to_wire(g: RoleGeneration) -> pb::RoleGeneration {
    pb::RoleGeneration {
        counter: g.counter,
        site_id: g.site,
    }
}

pub(crate) fn generation_from_wire(g: pb::RoleGeneration) -> RoleGeneration {
    RoleGeneration {
        counter: g.counter,
        site: g.site_id,
    }
}

pub(crate) fn seq_to_wire(s: SendSeq) -> pb::SendSeq {
    pb::SendSeq {
        generation_counter: s.generation,
        incarnation: s.incarnation,
        counter: s.counter,
    }
}

pub(crate) fn seq_from_wire(s: pb::SendSeq) -> SendSeq {
    SendSeq {
        generation: s.generation_counter,
        incarnation: s.incarnation,
        counter: s.counter,
    }
}

#[cfg(test)]
mod tests;
