//! The DR site's group coordinator: an epoch folds only once every member
//! has staged it, and the decision is durable before any member folds.
//!
//! Hosted by the DR cluster's controller; promote consults its record with
//! the primary site gone.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::StoreError;
use crate::frame::{FromCoordinator, MemberIndex, ToCoordinator};
use crate::types::GroupEpoch;

/// The coordinator's durable record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecisionRecord {
    /// Last group epoch committed (every member folds it).
    pub committed: GroupEpoch,
    /// Group epochs after `committed` that were aborted.
    pub aborted: Vec<GroupEpoch>,
}

impl DecisionRecord {
    /// The decision this record holds for a member that staged `staged`:
    /// fold it if the group committed it, drop it if the group moved past
    /// it or aborted it, none while the group has not decided.
    ///
    /// A member that lost a decision in flight (a coordinator on another
    /// node, a stream that broke) catches up from the record with it; the
    /// answer is the one the coordinator gives a `Staged` report, so
    /// delivering it again, late or twice is harmless.
    pub fn decision_for(&self, staged: GroupEpoch) -> Option<FromCoordinator> {
        if cfg!(feature = "bug-catch-up-folds-undecided") && staged > self.committed {
            return Some(FromCoordinator::Fold { group: staged });
        }
        self.answer(staged)
    }

    /// The coordinator's answer to a `Staged` report of `staged`.
    fn answer(&self, staged: GroupEpoch) -> Option<FromCoordinator> {
        if staged == self.committed {
            Some(FromCoordinator::Fold { group: staged })
        } else if staged < self.committed || self.aborted.contains(&staged) {
            Some(FromCoordinator::Drop { group: staged })
        } else {
            None
        }
    }
}

/// Durable storage of the decision record.
pub trait DecisionLog {
    /// Replace the record; durable when this returns.
    fn record(&mut self, rec: &DecisionRecord) -> Result<(), StoreError>;
    /// The record, or the default for a new group.
    fn load(&self) -> Result<DecisionRecord, StoreError>;
}

/// Coordinator of one replication group at the DR site.
#[derive(Clone, Debug)]
pub struct Coordinator<L: DecisionLog> {
    log: L,
    members: MemberIndex,
    record: DecisionRecord,
    staged: BTreeMap<GroupEpoch, BTreeSet<MemberIndex>>,
    out: Vec<(MemberIndex, FromCoordinator)>,
}

impl<L: DecisionLog> Coordinator<L> {
    /// Start (or restart) a coordinator for `members` volumes.
    pub fn open(log: L, members: MemberIndex) -> Result<Self, StoreError> {
        let record = log.load()?;
        Ok(Coordinator {
            log,
            members,
            record,
            staged: BTreeMap::new(),
            out: Vec::new(),
        })
    }

    /// A report from a member.
    pub fn on_message(&mut self, msg: ToCoordinator) -> Result<(), StoreError> {
        match msg {
            ToCoordinator::Staged { member, group } => {
                if let Some(answer) = self.record.answer(group) {
                    self.out.push((member, answer));
                    return Ok(());
                }
                let set = self.staged.entry(group).or_default();
                set.insert(member);
                if set.len() as MemberIndex == self.members {
                    self.record.committed = group;
                    self.record.aborted.retain(|&g| g > group);
                    self.log.record(&self.record)?;
                    self.staged = self.staged.split_off(&(group + 1));
                    for m in 0..self.members {
                        self.out.push((m, FromCoordinator::Fold { group }));
                    }
                }
            }
            ToCoordinator::Abort { member, group } => {
                if group == self.record.committed {
                    self.out.push((member, FromCoordinator::Fold { group }));
                    return Ok(());
                }
                if group < self.record.committed {
                    return Ok(());
                }
                if self.record.aborted.contains(&group) {
                    self.out.push((member, FromCoordinator::Drop { group }));
                    return Ok(());
                }
                self.record.aborted.push(group);
                self.log.record(&self.record)?;
                self.staged.remove(&group);
                for m in 0..self.members {
                    self.out.push((m, FromCoordinator::Drop { group }));
                }
            }
        }
        Ok(())
    }

    /// Drain decisions for the members.
    pub fn take_out(&mut self) -> Vec<(MemberIndex, FromCoordinator)> {
        std::mem::take(&mut self.out)
    }

    /// The durable record (what promote consults).
    pub fn record(&self) -> &DecisionRecord {
        &self.record
    }

    /// Give up the coordinator (crash), keeping its log.
    pub fn into_log(self) -> L {
        self.log
    }
}
