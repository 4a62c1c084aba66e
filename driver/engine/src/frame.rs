//! Messages between the state machines, independent of any wire encoding.
//!
//! The driver maps these onto `replication.proto`; the model tests pass them
//! through a simulated network that loses, duplicates and reorders them.

use crate::store::HeldVersion;
use crate::types::{BlockHash, BlockIndex, GroupEpoch, LocalEpoch, ManifestEntry, RoleGeneration, SendSeq};

/// Position of a volume in its replication group (the group spec orders its members).
pub type MemberIndex = u32;

/// Content of a shipped block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// The block is all zeroes (discard, zero-range or a zero write): no data travels.
    Zero,
    /// The block's bytes: `data[at..at + block size]` of its `Blocks` frame.
    Data {
        /// Offset of the block's bytes in the frame's `data`.
        at: u32,
    },
}

/// One block version on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShippedBlock {
    /// Block index.
    pub index: BlockIndex,
    /// Send sequence of this version.
    pub seq: SendSeq,
    /// Its content.
    pub payload: Payload,
}

/// Primary → replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToReplica {
    /// Opens a session; says which generation and incarnation is speaking.
    Hello {
        /// Sender's role generation.
        generation: RoleGeneration,
        /// Sender's incarnation.
        incarnation: u64,
        /// Session number within the incarnation, echoed by the Welcome.
        session: u64,
    },
    /// Block versions of a local epoch.
    Blocks {
        /// Sender's role generation.
        generation: RoleGeneration,
        /// Session the frame belongs to; frames of older sessions are dropped.
        session: u64,
        /// Local epoch the versions belong to.
        local: LocalEpoch,
        /// The versions.
        blocks: Vec<ShippedBlock>,
        /// The bytes of every data block of the frame, back to back: one
        /// buffer a frame, not one a block (and one AEAD seal a frame, later).
        data: Vec<u8>,
    },
    /// Every block of `local` has been sent (patent: "all freeze data transmitted").
    Sealed {
        /// Sender's role generation.
        generation: RoleGeneration,
        /// Incarnation that sealed.
        incarnation: u64,
        /// Session the seal belongs to.
        session: u64,
        /// The local epoch sealed.
        local: LocalEpoch,
        /// The group epoch it closes.
        group: GroupEpoch,
        /// Last version of every block of the epoch, with its hash.
        manifest: Vec<ManifestEntry>,
        /// The epoch was frozen after the failback comparison began, so it
        /// carries every differing candidate block. A replica that still
        /// offers candidates stages no other.
        covers_resync: bool,
    },
    /// The primary gave up group epoch `group` (refused freeze, timeout, operator).
    EpochAborted {
        /// Sender's role generation.
        generation: RoleGeneration,
        /// Sender's incarnation (local epoch numbers are per incarnation).
        incarnation: u64,
        /// Local epoch that carried it (none if this incarnation never froze it).
        local: Option<LocalEpoch>,
        /// The group epoch.
        group: GroupEpoch,
    },
    /// Failback: hashes wanted for these blocks of the replica's image.
    ResyncHashRequest {
        /// Sender's role generation.
        generation: RoleGeneration,
        /// Blocks to hash.
        blocks: Vec<BlockIndex>,
    },
}

/// Replica → primary: a reply stamped with the generation the replica serves,
/// so a primary ignores replies meant for an earlier pairing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToPrimary {
    /// Generation the replica accepts.
    pub generation: RoleGeneration,
    /// The reply.
    pub reply: Reply,
}

/// What a replica tells its primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answer to Hello: what the replica holds durably (resume point).
    Welcome {
        /// Primary incarnation this answers.
        for_incarnation: u64,
        /// Session this answers.
        for_session: u64,
        /// Replica incarnation.
        incarnation: u64,
        /// Last local epoch folded.
        committed: LocalEpoch,
        /// Its group epoch.
        committed_group: GroupEpoch,
        /// Local and group epoch staged and awaiting the group decision, if any.
        staged: Option<(LocalEpoch, GroupEpoch)>,
        /// Failback: the replica's own candidate blocks, until its first fold.
        resync_candidates: Option<Vec<BlockIndex>>,
        /// The resume point: every block version of an unsealed epoch of
        /// this primary incarnation that the replica holds durably staged,
        /// with its exact send sequence, ascending. The primary re-sends
        /// only the versions it shipped that are not listed.
        held: Vec<HeldVersion>,
    },
    /// `local` is durably staged and verified against its manifest.
    StagedAck {
        /// The local epoch.
        local: LocalEpoch,
    },
    /// `local` (group epoch `group`) is folded: the DR holds that image (patent:
    /// freezing completion report).
    Consistent {
        /// The local epoch.
        local: LocalEpoch,
        /// Its group epoch.
        group: GroupEpoch,
    },
    /// The group aborted `group`; its blocks must travel again in a later epoch.
    Aborted {
        /// The group epoch.
        group: GroupEpoch,
    },
    /// The replica serves a newer generation: the sender must stop being primary.
    Fenced {
        /// The newer generation.
        generation: RoleGeneration,
    },
    /// Failback: hashes of the replica's image.
    ResyncHashes {
        /// Block and hash of its content at the replica.
        entries: Vec<(BlockIndex, BlockHash)>,
    },
}

/// Replica → its site's group coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToCoordinator {
    /// Member staged `group` completely.
    Staged {
        /// Member.
        member: MemberIndex,
        /// Group epoch.
        group: GroupEpoch,
    },
    /// Member cannot or will not stage `group`.
    Abort {
        /// Member.
        member: MemberIndex,
        /// Group epoch.
        group: GroupEpoch,
    },
}

/// Group coordinator → a replica of its site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromCoordinator {
    /// The group committed `group`: fold it.
    Fold {
        /// Group epoch.
        group: GroupEpoch,
    },
    /// The group aborted `group`: drop it.
    Drop {
        /// Group epoch.
        group: GroupEpoch,
    },
}
