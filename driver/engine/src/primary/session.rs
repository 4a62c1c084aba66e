//! The link to the replica: sessions (`connect`, `disconnect`), the replies
//! (`on_frame`), fencing, and resume from what the replica holds durably when
//! its `Welcome` arrives.

use std::collections::{BTreeMap, VecDeque};

use crate::error::EngineError;
use crate::frame::{Reply, ToPrimary, ToReplica};
use crate::store::{HeldVersion, VolumeStore};
use crate::types::{BlockIndex, GroupEpoch, LocalEpoch, RoleGeneration, SendSeq};

use super::epoch::Shipped;
use super::{ClosingState, Primary, PrimaryEvent};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Link {
    Down,
    AwaitingWelcome,
    Up,
}

/// The current session to the replica.
#[derive(Clone, Debug)]
pub(super) struct Session {
    pub(super) link: Link,
    /// Counts the sessions of this incarnation; `Hello` and data frames carry it.
    pub(super) number: u64,
    /// A newer generation answered: nothing ships any more.
    pub(super) fenced_by: Option<RoleGeneration>,
    /// Control frames waiting for `poll_send`, sent before any block.
    pub(super) outbox: VecDeque<ToReplica>,
}

impl Session {
    pub(super) fn new() -> Self {
        Session {
            link: Link::Down,
            number: 0,
            fenced_by: None,
            outbox: VecDeque::new(),
        }
    }

    /// Heap bytes held by the queued control frames.
    pub(super) fn heap_bytes(&self) -> u64 {
        let frames = self.outbox.iter().map(|f| match f {
            ToReplica::ResyncHashRequest { blocks, .. } => crate::mem::vec_bytes::<BlockIndex>(blocks.capacity()),
            _ => 0,
        });
        crate::mem::vec_bytes::<ToReplica>(self.outbox.capacity()) + frames.sum::<u64>()
    }

    pub(super) fn is_up(&self) -> bool {
        self.link == Link::Up
    }
}

impl<S: VolumeStore> Primary<S> {
    /// A session to the replica opens: the first frame to send.
    pub fn connect(&mut self) -> ToReplica {
        self.session.link = Link::AwaitingWelcome;
        self.session.number += 1;
        self.session.outbox.clear();
        ToReplica::Hello {
            generation: self.meta.generation,
            incarnation: self.meta.incarnation,
            session: self.session.number,
        }
    }

    /// The session broke.
    pub fn disconnect(&mut self) {
        self.session.link = Link::Down;
        self.session.outbox.clear();
    }

    /// A frame from the replica.
    pub fn on_frame(&mut self, frame: ToPrimary) -> Result<(), EngineError> {
        if frame.generation != self.meta.generation && !matches!(frame.reply, Reply::Fenced { .. }) {
            return Ok(());
        }
        match frame.reply {
            Reply::Fenced { generation } => {
                if generation > self.meta.generation {
                    self.session.fenced_by = Some(generation);
                    self.session.link = Link::Down;
                    self.events.push(PrimaryEvent::Fenced(generation));
                }
            }
            // Replies other than the Welcome state durable facts about epochs:
            // they hold whichever session carried them.
            _ if self.session.fenced_by.is_some() => {}
            Reply::Welcome {
                for_incarnation,
                for_session,
                committed,
                committed_group,
                staged,
                resync_candidates,
                held,
                ..
            } => {
                if for_incarnation == self.meta.incarnation && for_session == self.session.number {
                    self.on_welcome((committed, committed_group), staged, resync_candidates, &held)?
                }
            }
            Reply::StagedAck { local } => self.on_staged(local)?,
            Reply::Consistent { local, group } => self.on_consistent(local, group)?,
            Reply::Aborted { group } => {
                let requested = self.progress.abort_requests.remove(&group);
                if self.closing.as_ref().is_some_and(|c| c.group == group) {
                    self.abort_closing()?;
                } else if requested {
                    self.events.push(PrimaryEvent::Aborted(group));
                }
            }
            Reply::ResyncHashes { entries } => self.on_hashes(entries)?,
        }
        Ok(())
    }

    fn on_welcome(
        &mut self,
        (committed, committed_group): (LocalEpoch, GroupEpoch),
        staged: Option<(LocalEpoch, GroupEpoch)>,
        candidates: Option<Vec<BlockIndex>>,
        held: &[HeldVersion],
    ) -> Result<(), EngineError> {
        if self.session.link != Link::AwaitingWelcome {
            return Ok(());
        }
        self.session.link = Link::Up;
        // Resume from what the replica holds durably: of the open epoch's
        // shipments, those it does not hold at exactly their sequence go again.
        let me = (self.meta.generation.counter, self.meta.incarnation);
        let lost = not_held(me, self.open.local, &self.open.shipped, held);
        self.stats.blocks_resent += lost.len() as u64;
        for b in lost {
            self.open.shipped.remove(&b);
            self.open.shipped_blocks.set(b, false);
            self.open.dirty.set(b, true);
        }
        if committed > self.progress.committed {
            self.on_consistent(committed, committed_group)?;
        }
        match self.closing.as_ref().map(|c| (c.local, c.group)) {
            Some((local, _)) if staged.is_some_and(|(l, _)| l == local) => self.on_staged(local)?,
            Some(_) => {
                let c = self.closing.as_mut().expect("matched Some above");
                if c.state == ClosingState::Staged {
                    // Staged once, neither staged nor committed now: the group dropped it.
                    self.abort_closing()?;
                } else {
                    // Every member sent whose version the replica does not
                    // hold durably ships again, and the seal after it.
                    let lost = not_held(me, c.local, &c.shipped, held);
                    self.stats.blocks_resent += lost.len() as u64;
                    for &b in &lost {
                        c.shipped.remove(&b);
                    }
                    // Members sent but not shipped (failback found them
                    // equal) are compared again.
                    let again: Vec<BlockIndex> = c.sent.iter_ones().filter(|b| !c.shipped.contains_key(b)).collect();
                    for b in again {
                        c.sent.set(b, false);
                        c.pending.set(b, true);
                    }
                    c.state = ClosingState::Shipping;
                }
            }
            None => {}
        }
        for &group in &self.progress.abort_requests {
            let local = self.closing.as_ref().filter(|c| c.group == group).map(|c| c.local);
            self.session.outbox.push_back(ToReplica::EpochAborted {
                generation: self.meta.generation,
                incarnation: self.meta.incarnation,
                local,
                group,
            });
        }
        // A Welcome that predates a fold we already heard of is stale: that
        // fold ended the failback.
        if let Some(theirs) = candidates.filter(|_| committed >= self.progress.committed) {
            self.request_hashes(theirs);
        }
        Ok(())
    }
}

/// Blocks of `shipped` (versions of `local` this primary shipped) whose
/// exact version `held` (the replica's resume point) does not name.
fn not_held(
    (generation, incarnation): (u64, u64),
    local: LocalEpoch,
    shipped: &BTreeMap<BlockIndex, Shipped>,
    held: &[HeldVersion],
) -> Vec<BlockIndex> {
    let start = held.partition_point(|v| v.0 < local);
    let end = held.partition_point(|v| v.0 <= local);
    let mine = &held[start..end];
    shipped
        .iter()
        .filter(|(&b, s)| {
            let seq = SendSeq {
                generation,
                incarnation,
                counter: s.counter,
            };
            let pos = mine.partition_point(|v| v.1 < b);
            let hit = mine.get(pos).filter(|v| v.1 == b);
            if cfg!(feature = "bug-resume-trusts-block") {
                // Any version of the block counts, not the one shipped last.
                hit.is_none()
            } else {
                hit != Some(&(local, b, seq))
            }
        })
        .map(|(&b, _)| b)
        .collect()
}
