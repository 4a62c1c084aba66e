//! What a stream needs from the volume at each end, and the group
//! coordinator the DR's replicas report to.
//!
//! The engine is single-threaded and its calls touch the store, so each end
//! is a volume behind a mutex, called from a blocking thread. The data
//! plane implements these traits for the volumes it hosts, or hosts its
//! engines in [`HostedPrimary`] and [`HostedReplica`].

use std::sync::{Arc, Mutex, MutexGuard};

use floe_engine::{
    Coordinator, DecisionLog, DecisionRecord, EngineError, FromCoordinator, GroupEpoch, MemberIndex, Primary, Replica,
    StoreError, ToCoordinator, ToPrimary, ToReplica, VolumeStore,
};
use tokio::sync::{broadcast, watch, Notify};

/// The primary volume a sender streams.
pub trait PrimaryEnd: Send + Sync + 'static {
    /// Opens an engine session: the `Hello` to send first.
    fn connect(&self) -> ToReplica;
    /// The link is gone: what was sent and not acknowledged goes again.
    fn disconnect(&self);
    /// The next frame to send, at most `max_blocks` block versions.
    fn poll_send(&self, max_blocks: usize) -> Result<Option<ToReplica>, EngineError>;
    /// A reply from the DR.
    fn on_frame(&self, frame: ToPrimary) -> Result<(), EngineError>;
    /// Poked (`notify_one`) whenever the volume may have something new to
    /// send: a host write, a freeze, an abort.
    fn changed(&self) -> &Notify;
}

/// What the engine asked for after a frame reached a replica.
#[derive(Debug, Default)]
pub struct ReplicaEffects {
    /// Replies for the primary.
    pub to_primary: Vec<ToPrimary>,
    /// Reports for the group coordinator.
    pub to_coordinator: Vec<ToCoordinator>,
    /// The replica closed the session (a seal failed its check): the stream
    /// must end so the primary starts a new one.
    pub reset: bool,
}

/// The DR volume a receiver feeds.
pub trait ReplicaEnd: Send + Sync + 'static {
    /// A frame from the primary.
    fn on_frame(&self, frame: ToReplica) -> Result<ReplicaEffects, EngineError>;
    /// Replies the replica made since (after a coordinator decision).
    fn take_to_primary(&self) -> Vec<ToPrimary>;
    /// A decision of the group coordinator.
    fn on_decision(&self, msg: FromCoordinator) -> Result<(), EngineError>;
    /// Poked (`notify_one`) when a decision made replies to send.
    fn replies(&self) -> &Notify;
    /// Makes what the replica received durable as its resume point (the
    /// receiver calls it every [`super::receiver::CHECKPOINT_EVERY`]).
    fn checkpoint(&self) -> Result<(), EngineError>;
    /// The group epoch staged and awaiting its decision, if any.
    fn staged_group(&self) -> Option<GroupEpoch>;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic under the lock leaves the engine as the last call left it;
    // every call is atomic with respect to the store, so it stays usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A primary volume behind its lock, with the poke its sender waits on.
pub struct HostedPrimary<S: VolumeStore> {
    engine: Mutex<Primary<S>>,
    changed: Notify,
    closing: watch::Sender<Option<GroupEpoch>>,
}

impl<S: VolumeStore + Send + 'static> HostedPrimary<S> {
    /// Hosts `engine`.
    pub fn new(engine: Primary<S>) -> Self {
        let (closing, _) = watch::channel(engine.closing().map(|(g, _)| g));
        HostedPrimary {
            engine: Mutex::new(engine),
            changed: Notify::new(),
            closing,
        }
    }

    /// Runs `f` on the engine (host I/O, freeze, abort) and pokes the sender.
    pub fn with<R>(&self, f: impl FnOnce(&mut Primary<S>) -> R) -> R {
        let mut engine = lock(&self.engine);
        let r = f(&mut engine);
        self.publish(&engine);
        drop(engine);
        self.changed.notify_one();
        r
    }

    /// Runs `f` on the engine without waking the sender (reads, flushes:
    /// nothing new to send).
    pub fn peek<R>(&self, f: impl FnOnce(&mut Primary<S>) -> R) -> R {
        f(&mut lock(&self.engine))
    }

    /// The engine, given back (detach).
    pub fn into_engine(self) -> Primary<S> {
        self.engine.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    /// The group epoch still closing (frozen, not yet resolved), updated
    /// after every call: a freeze waits for `None`, or the engine refuses it.
    pub fn watch_closing(&self) -> watch::Receiver<Option<GroupEpoch>> {
        self.closing.subscribe()
    }

    fn publish(&self, engine: &Primary<S>) {
        let now = engine.closing().map(|(g, _)| g);
        self.closing.send_if_modified(|c| std::mem::replace(c, now) != now);
    }
}

impl<S: VolumeStore + Send + 'static> PrimaryEnd for HostedPrimary<S> {
    fn connect(&self) -> ToReplica {
        lock(&self.engine).connect()
    }
    fn disconnect(&self) {
        lock(&self.engine).disconnect()
    }
    fn poll_send(&self, max_blocks: usize) -> Result<Option<ToReplica>, EngineError> {
        lock(&self.engine).poll_send(max_blocks)
    }
    fn on_frame(&self, frame: ToPrimary) -> Result<(), EngineError> {
        let mut engine = lock(&self.engine);
        let r = engine.on_frame(frame);
        self.publish(&engine);
        r
    }
    fn changed(&self) -> &Notify {
        &self.changed
    }
}

/// A replica volume behind its lock, with the poke its receiver waits on.
pub struct HostedReplica<S: VolumeStore> {
    engine: Mutex<Replica<S>>,
    replies: Notify,
}

impl<S: VolumeStore + Send + 'static> HostedReplica<S> {
    /// Hosts `engine`.
    pub fn new(engine: Replica<S>) -> Self {
        HostedReplica {
            engine: Mutex::new(engine),
            replies: Notify::new(),
        }
    }

    /// Runs `f` on the engine (status, reading the image).
    pub fn with<R>(&self, f: impl FnOnce(&mut Replica<S>) -> R) -> R {
        f(&mut lock(&self.engine))
    }

    /// The engine, given back (promotion).
    pub fn into_engine(self) -> Replica<S> {
        self.engine.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S: VolumeStore + Send + 'static> ReplicaEnd for HostedReplica<S> {
    fn on_frame(&self, frame: ToReplica) -> Result<ReplicaEffects, EngineError> {
        let mut r = lock(&self.engine);
        r.on_frame(frame)?;
        Ok(ReplicaEffects {
            to_primary: r.take_to_primary(),
            to_coordinator: r.take_to_coordinator(),
            reset: r.take_link_reset(),
        })
    }
    fn take_to_primary(&self) -> Vec<ToPrimary> {
        lock(&self.engine).take_to_primary()
    }
    fn on_decision(&self, msg: FromCoordinator) -> Result<(), EngineError> {
        lock(&self.engine).on_coordinator(msg)
    }
    fn replies(&self) -> &Notify {
        &self.replies
    }
    fn checkpoint(&self) -> Result<(), EngineError> {
        lock(&self.engine).checkpoint()
    }
    fn staged_group(&self) -> Option<GroupEpoch> {
        lock(&self.engine).staged_group()
    }
}

/// Where a receiver sends its replica's reports.
pub trait CoordinatorPort: Send + Sync + 'static {
    /// Delivers one report; decisions come back through
    /// [`ReplicaEnd::on_decision`] of the members.
    fn report(&self, msg: ToCoordinator) -> Result<(), CoordinatorError>;
}

/// A report the coordinator could not take.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The decision log failed.
    #[error("record the group decision")]
    Log(#[source] StoreError),
    /// A member failed to apply a decision.
    #[error("member {member} applies the group decision")]
    Member {
        /// The member.
        member: u32,
        /// Why.
        #[source]
        source: EngineError,
    },
    /// A report from a member the group does not have.
    #[error("member {0} is not in the group")]
    NoMember(u32),
    /// The coordinator decides no more: the group is being promoted.
    #[error("the group's coordinator is closed: the group is being promoted")]
    Closed,
}

/// Where a member of a group lives, seen from its coordinator.
#[derive(Clone)]
pub enum MemberSink {
    /// In this process: decisions are applied to it at once.
    Here(Arc<dyn ReplicaEnd>),
    /// On another node of the site: its decisions go out to the
    /// subscribers of [`LocalCoordinator::subscribe`], or in the reply to
    /// its own report.
    Away,
}

/// A decision for a member on another node, with the record after it.
pub type AwayDecision = (MemberIndex, FromCoordinator, DecisionRecord);

/// Decisions a subscriber may fall behind by before it is dropped (and
/// subscribes again, catching up from the record).
const AWAY_BACKLOG: usize = 1024;

/// A group coordinator hosted in this process: a report is recorded and
/// its decisions applied to the members here before `report` returns,
/// under one lock, so no one here sees a decision half delivered. The
/// decisions for members on other nodes leave through [`Self::subscribe`].
pub struct LocalCoordinator<L: DecisionLog> {
    /// The coordinator, and whether it was closed (decides no more).
    inner: Mutex<(Coordinator<L>, bool)>,
    members: Vec<MemberSink>,
    record: watch::Sender<DecisionRecord>,
    away: broadcast::Sender<AwayDecision>,
}

impl<L: DecisionLog + Send + 'static> LocalCoordinator<L> {
    /// A coordinator over `log` for `members`, in member order.
    pub fn open(log: L, members: Vec<MemberSink>) -> Result<Self, StoreError> {
        let inner = Coordinator::open(log, members.len() as u32)?;
        let (record, _) = watch::channel(inner.record().clone());
        Ok(LocalCoordinator {
            inner: Mutex::new((inner, false)),
            members,
            record,
            away: broadcast::channel(AWAY_BACKLOG).0,
        })
    }

    /// Members in the group.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// Whether member `m` lives on another node.
    pub fn is_away(&self, m: MemberIndex) -> bool {
        matches!(self.members.get(m as usize), Some(MemberSink::Away))
    }

    /// The record now and every decision for a member on another node from
    /// then on: none made in between is missed.
    pub fn subscribe(&self) -> (DecisionRecord, broadcast::Receiver<AwayDecision>) {
        let c = lock(&self.inner);
        (c.0.record().clone(), self.away.subscribe())
    }

    /// Decides no more (a promotion reads the record after this): waits for
    /// a decision under way, refuses every report after. Answers the final
    /// record.
    pub fn close(&self) -> DecisionRecord {
        let mut c = lock(&self.inner);
        c.1 = true;
        c.0.record().clone()
    }

    /// Takes `msg` and delivers what it decided: to the members here at
    /// once, to the reporter if it is away in the answer, to the other
    /// members away through the subscribers. Answers the reporter's
    /// decisions and the record after.
    pub fn decide(&self, msg: ToCoordinator) -> Result<(Vec<FromCoordinator>, DecisionRecord), CoordinatorError> {
        let reporter = match msg {
            ToCoordinator::Staged { member, .. } | ToCoordinator::Abort { member, .. } => member,
        };
        if reporter as usize >= self.members.len() {
            return Err(CoordinatorError::NoMember(reporter));
        }
        let mut guard = lock(&self.inner);
        let (c, closed) = &mut *guard;
        if *closed {
            return Err(CoordinatorError::Closed);
        }
        let staged = matches!(msg, ToCoordinator::Staged { .. });
        c.on_message(msg).map_err(CoordinatorError::Log)?;
        let out = c.take_out();
        if !out.is_empty() {
            crate::failpoint::hit(crate::failpoint::DECIDED);
        } else if staged {
            crate::failpoint::hit(crate::failpoint::BETWEEN_STAGED);
        }
        let record = c.record().clone();
        let mut answer = Vec::new();
        for (member, decision) in out {
            match self.members.get(member as usize) {
                None => return Err(CoordinatorError::NoMember(member)),
                Some(MemberSink::Here(end)) => {
                    end.on_decision(decision)
                        .map_err(|source| CoordinatorError::Member { member, source })?;
                    end.replies().notify_one();
                }
                Some(MemberSink::Away) if member == reporter => answer.push(decision),
                // No subscriber now: the member catches up when it subscribes.
                Some(MemberSink::Away) => drop(self.away.send((member, decision, record.clone()))),
            }
        }
        self.record.send_replace(record.clone());
        Ok((answer, record))
    }

    /// The decision record, updated at every decision.
    pub fn watch(&self) -> watch::Receiver<DecisionRecord> {
        self.record.subscribe()
    }

    /// Runs `f` while no decision can be delivered (to read every member at
    /// one cut).
    pub fn with_decisions_held<R>(&self, f: impl FnOnce(&DecisionRecord) -> R) -> R {
        let c = lock(&self.inner);
        f(c.0.record())
    }
}

impl<L: DecisionLog + Send + 'static> CoordinatorPort for LocalCoordinator<L> {
    /// A report of a member here (its decisions are applied, not answered).
    fn report(&self, msg: ToCoordinator) -> Result<(), CoordinatorError> {
        self.decide(msg).map(drop)
    }
}
