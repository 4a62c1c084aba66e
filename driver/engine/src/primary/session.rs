//! The link to the replica: sessions (`connect`, `disconnect`), the replies
//! (`on_frame`), fencing, and resume from what the replica holds durably when
//! its `Welcome` arrives.

use std::collections::VecDeque;

use crate::bitmap::Bitmap;
use crate::error::EngineError;
use crate::frame::{Reply, ToPrimary, ToReplica};
use crate::store::VolumeStore;
use crate::types::{BlockIndex, GroupEpoch, LocalEpoch, RoleGeneration};

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
                ..
            } => {
                if for_incarnation == self.meta.incarnation && for_session == self.session.number {
                    self.on_welcome((committed, committed_group), staged, resync_candidates)?
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
    ) -> Result<(), EngineError> {
        if self.session.link != Link::AwaitingWelcome {
            return Ok(());
        }
        self.session.link = Link::Up;
        // Resume from what the replica holds durably: the open epoch's
        // shipments were not, so they go again.
        self.open.dirty.union_with(&self.open.shipped_blocks);
        self.open.shipped_blocks.clear();
        self.open.shipped.clear();
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
                    // Every member ships again: `sent` joins `pending`.
                    let mut sent = Bitmap::new(c.sent.len());
                    c.sent.take_into(&mut sent);
                    c.pending.union_with(&sent);
                    c.shipped.clear();
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
