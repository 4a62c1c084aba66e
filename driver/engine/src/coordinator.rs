//! The DR site's group coordinator: an epoch folds only once every member
//! has staged it, and the decision is durable before any member folds.
//!
//! Hosted by the DR cluster's controller; promote consults its record with
//! the primary site gone.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::StoreError;
use crate::frame::{FromCoordinator, MemberIndex, ToCoordinator};
use crate::types::GroupEpoch;

/// From group epoch `from` on, the group is `members` (ascending).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// The first group epoch of this membership.
    pub from: GroupEpoch,
    /// The member indexes in the group, ascending.
    pub members: Vec<MemberIndex>,
}

/// The coordinator's durable record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecisionRecord {
    /// Last group epoch committed (every member folds it).
    pub committed: GroupEpoch,
    /// Group epochs after `committed` that were aborted.
    pub aborted: Vec<GroupEpoch>,
    /// The memberships in force at `committed` and after, ascending by
    /// `from`. Empty in a record no membership change ever touched: the
    /// coordinator's open count of members, from epoch 0.
    pub membership: Vec<Membership>,
}

impl DecisionRecord {
    /// The members of group epoch `g` (none before the first membership).
    pub fn members_at(&self, g: GroupEpoch) -> &[MemberIndex] {
        self.membership
            .iter()
            .rev()
            .find(|m| m.from <= g)
            .map_or(&[], |m| m.members.as_slice())
    }

    /// The decision this record holds for `member`, which staged `staged`:
    /// fold it if the group committed it, drop it if the group moved past
    /// it or aborted it, or if `member` is not in the group at that epoch;
    /// none while the group has not decided.
    ///
    /// A member that lost a decision in flight (a coordinator on another
    /// node, a stream that broke) catches up from the record with it; the
    /// answer is the one the coordinator gives a `Staged` report, so
    /// delivering it again, late or twice is harmless.
    pub fn decision_for(&self, member: MemberIndex, staged: GroupEpoch) -> Option<FromCoordinator> {
        if cfg!(feature = "bug-catch-up-folds-undecided") && staged > self.committed {
            return Some(FromCoordinator::Fold { group: staged });
        }
        self.answer(member, staged)
    }

    /// The coordinator's answer to `member`'s `Staged` report of `staged`.
    fn answer(&self, member: MemberIndex, staged: GroupEpoch) -> Option<FromCoordinator> {
        if !self.members_at(staged).contains(&member) {
            Some(FromCoordinator::Drop { group: staged })
        } else if staged == self.committed {
            Some(FromCoordinator::Fold { group: staged })
        } else if staged < self.committed || self.aborted.contains(&staged) {
            Some(FromCoordinator::Drop { group: staged })
        } else {
            None
        }
    }

    /// Forgets the memberships no epoch from `committed` on can use.
    fn prune_membership(&mut self) {
        let keep_from = self
            .membership
            .iter()
            .rposition(|m| m.from <= self.committed)
            .unwrap_or(0);
        self.membership.drain(..keep_from);
    }
}

/// A membership change the coordinator refused.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The epoch is one a member already staged or the group decided.
    #[error("group epoch {from} is taken already: a membership change takes effect after epoch {after}")]
    TooLate {
        /// The epoch asked for.
        from: GroupEpoch,
        /// The last epoch staged, decided or changed at.
        after: GroupEpoch,
    },
    /// No member, or members not ascending.
    #[error("members {0:?}: expected at least one member index, ascending, each once")]
    BadMembers(Vec<MemberIndex>),
    /// The record could not be written.
    #[error("record the membership")]
    Log(#[source] StoreError),
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
    record: DecisionRecord,
    staged: BTreeMap<GroupEpoch, BTreeSet<MemberIndex>>,
    out: Vec<(MemberIndex, FromCoordinator)>,
}

impl<L: DecisionLog> Coordinator<L> {
    /// Start (or restart) a coordinator for `members` volumes (members 0 to
    /// `members - 1`, unless the record holds a membership change).
    pub fn open(log: L, members: MemberIndex) -> Result<Self, StoreError> {
        let mut record = log.load()?;
        if record.membership.is_empty() {
            record.membership.push(Membership {
                from: 0,
                members: (0..members).collect(),
            });
        }
        Ok(Coordinator {
            log,
            record,
            staged: BTreeMap::new(),
            out: Vec::new(),
        })
    }

    /// From group epoch `from` on, the group is `members`: recorded before
    /// this returns. Refused unless `from` is after every epoch a member
    /// staged, the group decided or an earlier change took.
    pub fn change_membership(&mut self, from: GroupEpoch, members: Vec<MemberIndex>) -> Result<(), MembershipError> {
        if members.is_empty() || !members.windows(2).all(|w| w[0] < w[1]) {
            return Err(MembershipError::BadMembers(members));
        }
        let after = [
            Some(self.record.committed),
            self.record.aborted.iter().max().copied(),
            self.staged.keys().next_back().copied(),
            self.record.membership.last().map(|m| m.from),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        if from <= after {
            return Err(MembershipError::TooLate { from, after });
        }
        self.record.membership.push(Membership { from, members });
        if let Err(e) = self.log.record(&self.record) {
            self.record.membership.pop();
            return Err(MembershipError::Log(e));
        }
        Ok(())
    }

    /// A report from a member.
    pub fn on_message(&mut self, msg: ToCoordinator) -> Result<(), StoreError> {
        match msg {
            ToCoordinator::Staged { member, group } => {
                if let Some(answer) = self.record.answer(member, group) {
                    self.out.push((member, answer));
                    return Ok(());
                }
                let set = self.staged.entry(group).or_default();
                set.insert(member);
                let members = if cfg!(feature = "bug-membership-ignored") {
                    self.record
                        .membership
                        .first()
                        .map(|m| m.members.clone())
                        .unwrap_or_default()
                } else {
                    self.record.members_at(group).to_vec()
                };
                if members.iter().all(|m| set.contains(m)) {
                    self.record.committed = group;
                    self.record.aborted.retain(|&g| g > group);
                    self.record.prune_membership();
                    self.log.record(&self.record)?;
                    self.staged = self.staged.split_off(&(group + 1));
                    for m in members {
                        self.out.push((m, FromCoordinator::Fold { group }));
                    }
                }
            }
            ToCoordinator::Abort { member, group } => {
                if group < self.record.committed {
                    return Ok(());
                }
                let members = self.record.members_at(group).to_vec();
                if !members.contains(&member) {
                    self.out.push((member, FromCoordinator::Drop { group }));
                    return Ok(());
                }
                if group == self.record.committed {
                    self.out.push((member, FromCoordinator::Fold { group }));
                    return Ok(());
                }
                if self.record.aborted.contains(&group) {
                    self.out.push((member, FromCoordinator::Drop { group }));
                    return Ok(());
                }
                self.record.aborted.push(group);
                self.log.record(&self.record)?;
                self.staged.remove(&group);
                for m in members {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct MemLog(Option<DecisionRecord>);

    impl DecisionLog for MemLog {
        fn record(&mut self, rec: &DecisionRecord) -> Result<(), StoreError> {
            self.0 = Some(rec.clone());
            Ok(())
        }
        fn load(&self) -> Result<DecisionRecord, StoreError> {
            Ok(self.0.clone().unwrap_or_default())
        }
    }

    fn staged(
        c: &mut Coordinator<MemLog>,
        member: MemberIndex,
        group: GroupEpoch,
    ) -> Vec<(MemberIndex, FromCoordinator)> {
        c.on_message(ToCoordinator::Staged { member, group }).expect("recorded");
        c.take_out()
    }

    #[test]
    fn a_member_that_leaves_is_not_waited_for_and_one_that_joins_is() {
        let mut c = Coordinator::open(MemLog::default(), 2).expect("open");
        assert!(staged(&mut c, 0, 1).is_empty());
        let fold1 = staged(&mut c, 1, 1);
        assert_eq!(fold1.len(), 2, "both members fold epoch 1: {fold1:?}");
        // Member 1 leaves at epoch 2: epoch 2 commits with member 0 alone.
        c.change_membership(2, vec![0]).expect("change");
        assert_eq!(staged(&mut c, 0, 2), vec![(0, FromCoordinator::Fold { group: 2 })]);
        assert_eq!(
            staged(&mut c, 1, 3),
            vec![(1, FromCoordinator::Drop { group: 3 })],
            "a member outside the group drops what it staged"
        );
        // Member 2 joins at epoch 4: epoch 4 waits for it.
        c.change_membership(4, vec![0, 2]).expect("change");
        assert_eq!(staged(&mut c, 0, 3), vec![(0, FromCoordinator::Fold { group: 3 })]);
        assert!(
            staged(&mut c, 0, 4).is_empty(),
            "epoch 4 waits for the member that joined"
        );
        assert_eq!(staged(&mut c, 2, 4).len(), 2);
        // The record survives a restart with whatever count open is given.
        let again = Coordinator::open(c.into_log(), 2).expect("reopen");
        assert_eq!(again.record().committed, 4);
        assert_eq!(again.record().members_at(5), &[0, 2]);
        assert_eq!(again.record().membership.len(), 1, "older memberships are pruned");
    }

    #[test]
    fn a_change_must_come_after_every_epoch_staged_or_decided() {
        let mut c = Coordinator::open(MemLog::default(), 2).expect("open");
        staged(&mut c, 0, 3);
        for (from, members) in [(3, vec![0]), (2, vec![0]), (0, vec![0])] {
            assert!(matches!(
                c.change_membership(from, members),
                Err(MembershipError::TooLate { .. })
            ));
        }
        for members in [vec![], vec![1, 0], vec![0, 0]] {
            assert!(matches!(
                c.change_membership(9, members),
                Err(MembershipError::BadMembers(_))
            ));
        }
        c.change_membership(4, vec![0]).expect("after everything");
        assert!(c.change_membership(4, vec![1]).is_err(), "one change per epoch");
        let record = c.record();
        assert_eq!(record.decision_for(1, 4), Some(FromCoordinator::Drop { group: 4 }));
        assert_eq!(record.decision_for(0, 4), None);
    }
}
