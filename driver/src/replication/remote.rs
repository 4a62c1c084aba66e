//! A group coordinator on another node of the site (`node.proto`'s
//! `GroupCoordinator`): reports, decisions and the record in their wire
//! form, and the client a member node runs.
//!
//! # What a member node guarantees
//!
//! The engine's model drives these rules through every interleaving
//! (`floe-engine`'s spanning schedules):
//! - a report is kept and sent again until the coordinator answers it, so
//!   none is lost while the member's node lives (a report the coordinator
//!   took twice is answered the same way);
//! - the answer carries the reporter's own decisions; the decisions for the
//!   node's other members come on the `Decisions` stream, which loses what
//!   was in flight when it breaks;
//! - each time the stream (re)starts, the node catches up: every member
//!   that staged an epoch reports it again (a coordinator that restarted
//!   forgot who staged) and takes the record's decision for it
//!   ([`DecisionRecord::decision_for`]), which is what the coordinator
//!   answers such a report; delivering a decision twice is harmless.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use floe_engine::{DecisionRecord, FromCoordinator, MemberIndex, ToCoordinator};
use floe_proto::node as wire;
use floe_proto::node::group_coordinator_client::GroupCoordinatorClient;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::endpoint::{CoordinatorError, CoordinatorPort, ReplicaEnd};
use super::tls::{dial, TlsSource};

/// Most aborted epochs a record may list (the coordinator keeps those after
/// its last commit only).
pub const MAX_ABORTED: usize = 4096;
/// Most members a group may have.
pub const MAX_MEMBERS: usize = 4096;
/// Longest a report or a subscription may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a report may wait for its answer.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the coordinator's node sends the record on a quiet decision
/// stream; a follower that hears nothing for three of them subscribes
/// again (a partition that closes no connection).
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// A wire message that is not a valid report, decision or record.
#[derive(Debug, thiserror::Error)]
#[error("{field} = {value}: expected {expected}")]
pub struct WireError {
    /// The field.
    pub field: &'static str,
    /// What it held.
    pub value: String,
    /// What it may hold.
    pub expected: &'static str,
}

fn invalid(field: &'static str, value: impl ToString, expected: &'static str) -> WireError {
    WireError {
        field,
        value: value.to_string(),
        expected,
    }
}

fn epoch(field: &'static str, e: u64) -> Result<u64, WireError> {
    if e == 0 {
        return Err(invalid(field, e, "a group epoch, at least 1"));
    }
    Ok(e)
}

/// `msg` of `group` as a `Report` request.
pub fn report_to_wire(group: &str, msg: &ToCoordinator) -> wire::ReportRequest {
    let (member, kind, epoch) = match *msg {
        ToCoordinator::Staged { member, group } => (member, wire::ReportKind::Staged, group),
        ToCoordinator::Abort { member, group } => (member, wire::ReportKind::Abort, group),
    };
    wire::ReportRequest {
        group: group.to_owned(),
        member,
        kind: kind.into(),
        epoch,
    }
}

/// The report a `Report` request carries (its group is the caller's to
/// check; `members` bounds the member index).
pub fn report_from_wire(req: &wire::ReportRequest, members: usize) -> Result<ToCoordinator, WireError> {
    if req.member as usize >= members {
        return Err(invalid("member", req.member, "a member index of the group"));
    }
    let group = epoch("epoch", req.epoch)?;
    let member = req.member;
    match wire::ReportKind::try_from(req.kind) {
        Ok(wire::ReportKind::Staged) => Ok(ToCoordinator::Staged { member, group }),
        Ok(wire::ReportKind::Abort) => Ok(ToCoordinator::Abort { member, group }),
        _ => Err(invalid("kind", req.kind, "REPORT_KIND_STAGED or REPORT_KIND_ABORT")),
    }
}

/// A decision for `member` in its wire form.
pub fn decision_to_wire(member: MemberIndex, d: &FromCoordinator) -> wire::Decision {
    let (kind, epoch) = match *d {
        FromCoordinator::Fold { group } => (wire::DecisionKind::Fold, group),
        FromCoordinator::Drop { group } => (wire::DecisionKind::Drop, group),
    };
    wire::Decision {
        member,
        kind: kind.into(),
        epoch,
    }
}

/// A decision from the wire, for one of `members`.
pub fn decision_from_wire(
    d: &wire::Decision,
    members: &[MemberIndex],
) -> Result<(MemberIndex, FromCoordinator), WireError> {
    if !members.contains(&d.member) {
        return Err(invalid("decision.member", d.member, "a member this node holds"));
    }
    let group = epoch("decision.epoch", d.epoch)?;
    match wire::DecisionKind::try_from(d.kind) {
        Ok(wire::DecisionKind::Fold) => Ok((d.member, FromCoordinator::Fold { group })),
        Ok(wire::DecisionKind::Drop) => Ok((d.member, FromCoordinator::Drop { group })),
        _ => Err(invalid(
            "decision.kind",
            d.kind,
            "DECISION_KIND_FOLD or DECISION_KIND_DROP",
        )),
    }
}

/// A record in its wire form.
pub fn record_to_wire(r: &DecisionRecord) -> wire::DecisionRecord {
    wire::DecisionRecord {
        committed: r.committed,
        aborted: r.aborted.clone(),
        membership: r
            .membership
            .iter()
            .map(|m| wire::Membership {
                from: m.from,
                members: m.members.clone(),
            })
            .collect(),
    }
}

/// A record from the wire: every aborted epoch after the committed one,
/// at most [`MAX_ABORTED`] of them.
pub fn record_from_wire(r: Option<&wire::DecisionRecord>) -> Result<DecisionRecord, WireError> {
    let r = r.ok_or_else(|| invalid("record", "none", "the decision record"))?;
    if r.aborted.len() > MAX_ABORTED {
        return Err(invalid("record.aborted", r.aborted.len(), "at most 4096 epochs"));
    }
    if let Some(&bad) = r.aborted.iter().find(|&&a| a <= r.committed) {
        return Err(invalid("record.aborted", bad, "epochs after the committed one"));
    }
    if r.membership.len() > MAX_ABORTED {
        return Err(invalid("record.membership", r.membership.len(), "at most 4096 changes"));
    }
    if !r.membership.windows(2).all(|w| w[0].from < w[1].from) {
        return Err(invalid(
            "record.membership",
            "out of order",
            "changes ascending by epoch",
        ));
    }
    let mut membership = Vec::with_capacity(r.membership.len());
    for m in &r.membership {
        let ascending = m.members.windows(2).all(|w| w[0] < w[1]);
        if m.members.is_empty() || m.members.len() > MAX_MEMBERS || !ascending {
            return Err(invalid(
                "record.membership.members",
                m.members.len(),
                "1 to 4096 member indexes, ascending",
            ));
        }
        membership.push(floe_engine::Membership {
            from: m.from,
            members: m.members.clone(),
        });
    }
    Ok(DecisionRecord {
        committed: r.committed,
        aborted: r.aborted.clone(),
        membership,
    })
}

/// Where a member node's coordinator is, and what it holds.
pub struct RemoteConfig {
    /// The group.
    pub group: String,
    /// The coordinator listener of the node running the coordinator.
    pub address: String,
    /// This site's identity, trusting this site's CA and name.
    pub tls: Arc<TlsSource>,
    /// This node's members of the group.
    pub members: Vec<(MemberIndex, Arc<dyn ReplicaEnd>)>,
}

struct Shared {
    cfg: RemoteConfig,
    /// The last record heard of.
    record: watch::Sender<DecisionRecord>,
    /// Held while a decision is applied (one cut of this node's members).
    deliver: Mutex<()>,
}

/// The coordinator of a group, on another node, as a member node sees it:
/// reports queue and are sent until answered, decisions are applied as
/// they come. Its two tasks end when it is dropped.
pub struct RemoteCoordinator {
    shared: Arc<Shared>,
    reports: mpsc::UnboundedSender<ToCoordinator>,
    cancel: CancellationToken,
}

impl RemoteCoordinator {
    /// Starts reporting and following the decisions of `cfg.group` on `rt`.
    pub fn start(cfg: RemoteConfig, rt: &tokio::runtime::Handle) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            cfg,
            record: watch::channel(DecisionRecord::default()).0,
            deliver: Mutex::new(()),
        });
        let cancel = CancellationToken::new();
        rt.spawn(report_all(Arc::clone(&shared), tx.clone(), rx, cancel.clone()));
        rt.spawn(follow(Arc::clone(&shared), tx.clone(), cancel.clone()));
        Arc::new(RemoteCoordinator {
            shared,
            reports: tx,
            cancel,
        })
    }

    /// Runs `f` on the last record heard of while no decision is applied
    /// to this node's members (one cut of them).
    pub fn with_decisions_held<R>(&self, f: impl FnOnce(&DecisionRecord) -> R) -> R {
        let _held = hold(&self.shared.deliver);
        f(&self.shared.record.borrow())
    }
}

impl Drop for RemoteCoordinator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl CoordinatorPort for RemoteCoordinator {
    /// Queues the report; it is sent, again if need be, until answered.
    fn report(&self, msg: ToCoordinator) -> Result<(), CoordinatorError> {
        // The queue lives as long as the coordinator handle.
        let _ = self.reports.send(msg);
        Ok(())
    }
}

fn hold(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

async fn client(shared: &Shared) -> Result<GroupCoordinatorClient<tonic::transport::Channel>, String> {
    let channel = dial(&shared.cfg.address, &shared.cfg.tls, CONNECT_TIMEOUT)
        .await
        .map_err(|e| {
            format!(
                "connect to the coordinator at {}: {}",
                shared.cfg.address,
                super::chain(&e)
            )
        })?;
    Ok(GroupCoordinatorClient::new(channel))
}

/// Applies `decisions` and takes `record`, on a blocking thread (a fold
/// writes the image).
async fn apply(shared: &Arc<Shared>, decisions: Vec<(MemberIndex, FromCoordinator)>, record: DecisionRecord) {
    let group = shared.cfg.group.clone();
    let shared = Arc::clone(shared);
    let done = tokio::task::spawn_blocking(move || {
        let _held = hold(&shared.deliver);
        for (member, d) in decisions {
            let Some((_, end)) = shared.cfg.members.iter().find(|(m, _)| *m == member) else {
                continue;
            };
            match end.on_decision(d.clone()) {
                Ok(()) => end.replies().notify_one(),
                Err(e) => tracing::error!(
                    group = %shared.cfg.group,
                    member,
                    decision = ?d,
                    error = %super::chain(&e),
                    "the replica failed to apply the group's decision (it takes it again at the next catch-up)"
                ),
            }
        }
        // A reply may overtake a stream message: keep the newer record (the
        // committed epoch only grows; the aborted ones after it only grow
        // until the next commit).
        shared.record.send_if_modified(|r| {
            let newer = (record.committed, record.aborted.len()) > (r.committed, r.aborted.len());
            if newer {
                *r = record;
            }
            newer
        });
    })
    .await;
    if let Err(e) = done {
        tracing::error!(%group, error = %e, "applying a decision panicked");
    }
}

/// Sends the queued reports in order, each until it is answered.
async fn report_all(
    shared: Arc<Shared>,
    _keep: mpsc::UnboundedSender<ToCoordinator>,
    mut queue: mpsc::UnboundedReceiver<ToCoordinator>,
    cancel: CancellationToken,
) {
    let members: Vec<MemberIndex> = shared.cfg.members.iter().map(|(m, _)| *m).collect();
    let mut conn = None;
    loop {
        let msg = tokio::select! {
            m = queue.recv() => match m { Some(m) => m, None => return },
            () = cancel.cancelled() => return,
        };
        let req = report_to_wire(&shared.cfg.group, &msg);
        let mut delays = backoff();
        loop {
            let answered = async {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => conn.insert(client(&shared).await?),
                };
                let resp = tokio::time::timeout(REPORT_TIMEOUT, c.report(req.clone()))
                    .await
                    .map_err(|_| "the coordinator did not answer in time".to_owned())?
                    .map_err(|s| format!("the coordinator refused the report: {}", s.message()))?
                    .into_inner();
                let record = record_from_wire(resp.record.as_ref()).map_err(|e| e.to_string())?;
                let decisions = resp
                    .decisions
                    .iter()
                    .map(|d| decision_from_wire(d, &members))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((decisions, record))
            };
            let outcome = tokio::select! {
                r = answered => r,
                () = cancel.cancelled() => return,
            };
            match outcome {
                Ok((decisions, record)) => {
                    apply(&shared, decisions, record).await;
                    break;
                }
                Err(e) => {
                    conn = None;
                    tracing::warn!(group = %shared.cfg.group, report = ?msg, error = %e, "report to the group coordinator failed: sending it again");
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = cancel.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// Follows the decisions for this node's members, catching up at every
/// (re)subscription.
async fn follow(shared: Arc<Shared>, reports: mpsc::UnboundedSender<ToCoordinator>, cancel: CancellationToken) {
    let mut delays = backoff();
    loop {
        let mut subscribed = false;
        let ended = tokio::select! {
            r = follow_once(&shared, &reports, &mut subscribed) => r,
            () = cancel.cancelled() => return,
        };
        if subscribed {
            delays = backoff();
        }
        let Err(e) = ended;
        {
            tracing::warn!(group = %shared.cfg.group, error = %e, "following the group coordinator: subscribing again");
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// One subscription, until it breaks.
async fn follow_once(
    shared: &Arc<Shared>,
    reports: &mpsc::UnboundedSender<ToCoordinator>,
    subscribed: &mut bool,
) -> Result<std::convert::Infallible, String> {
    let members: Vec<MemberIndex> = shared.cfg.members.iter().map(|(m, _)| *m).collect();
    let mut c = client(shared).await?;
    let mut stream = c
        .decisions(wire::DecisionsRequest {
            group: shared.cfg.group.clone(),
            members: members.clone(),
        })
        .await
        .map_err(|s| format!("the coordinator refused the subscription: {}", s.message()))?
        .into_inner();
    loop {
        let update = tokio::time::timeout(3 * HEARTBEAT, stream.message())
            .await
            .map_err(|_| format!("no word from the coordinator in {:?}", 3 * HEARTBEAT))?
            .map_err(|s| format!("the decision stream broke: {}", s.message()))?
            .ok_or_else(|| "the coordinator ended the decision stream".to_owned())?;
        let record = record_from_wire(update.record.as_ref()).map_err(|e| e.to_string())?;
        let mut decisions = update
            .decisions
            .iter()
            .map(|d| decision_from_wire(d, &members))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        if !*subscribed {
            // Catch up: what a staged member missed, from the record, and
            // its report again for a coordinator that may have forgotten.
            *subscribed = true;
            for (m, end) in &shared.cfg.members {
                let Some(staged) = end.staged_group() else { continue };
                let _ = reports.send(ToCoordinator::Staged {
                    member: *m,
                    group: staged,
                });
                if let Some(d) = record.decision_for(*m, staged) {
                    decisions.push((*m, d));
                }
            }
            tracing::info!(group = %shared.cfg.group, address = %shared.cfg.address, committed = record.committed, "following the group coordinator");
        }
        apply(shared, decisions, record).await;
    }
}

/// The record group `group` was promoted at on its coordinator's node at
/// `address` (`GroupCoordinator.FinalRecord`), as a message on failure.
pub async fn final_record(address: &str, tls: &Arc<TlsSource>, group: &str) -> Result<DecisionRecord, String> {
    let channel = dial(address, tls, CONNECT_TIMEOUT)
        .await
        .map_err(|e| format!("connect to the coordinator at {address}: {}", super::chain(&e)))?;
    let answer = tokio::time::timeout(
        REPORT_TIMEOUT,
        GroupCoordinatorClient::new(channel).final_record(wire::FinalRecordRequest {
            group: group.to_owned(),
        }),
    )
    .await
    .map_err(|_| format!("the coordinator at {address} did not answer in time"))?
    .map_err(|s| format!("the coordinator at {address} answers {:?}: {}", s.code(), s.message()))?;
    record_from_wire(answer.into_inner().record.as_ref()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_and_decisions_travel_both_ways() {
        for msg in [
            ToCoordinator::Staged { member: 1, group: 7 },
            ToCoordinator::Abort { member: 0, group: 3 },
        ] {
            assert_eq!(report_from_wire(&report_to_wire("g", &msg), 2).expect("valid"), msg);
        }
        for d in [FromCoordinator::Fold { group: 4 }, FromCoordinator::Drop { group: 9 }] {
            assert_eq!(
                decision_from_wire(&decision_to_wire(1, &d), &[1]).expect("valid"),
                (1, d)
            );
        }
        let r = DecisionRecord {
            committed: 5,
            aborted: vec![6, 8],
            membership: vec![
                floe_engine::Membership {
                    from: 0,
                    members: vec![0, 1],
                },
                floe_engine::Membership {
                    from: 9,
                    members: vec![0, 1, 2],
                },
            ],
        };
        assert_eq!(record_from_wire(Some(&record_to_wire(&r))).expect("valid"), r);
    }

    #[test]
    fn bad_reports_decisions_and_records_are_refused() {
        let ok = report_to_wire("g", &ToCoordinator::Staged { member: 1, group: 2 });
        for bad in [
            wire::ReportRequest {
                member: 2,
                ..ok.clone()
            },
            wire::ReportRequest { epoch: 0, ..ok.clone() },
            wire::ReportRequest { kind: 0, ..ok.clone() },
            wire::ReportRequest { kind: 9, ..ok.clone() },
        ] {
            assert!(report_from_wire(&bad, 2).is_err(), "{bad:?}");
        }
        let d = decision_to_wire(1, &FromCoordinator::Fold { group: 2 });
        assert!(decision_from_wire(&d, &[0]).is_err(), "another node's member");
        assert!(decision_from_wire(&wire::Decision { epoch: 0, ..d }, &[1]).is_err());
        assert!(decision_from_wire(&wire::Decision { kind: 7, ..d }, &[1]).is_err());
        assert!(record_from_wire(None).is_err());
        let stale = wire::DecisionRecord {
            committed: 5,
            aborted: vec![5],
            ..Default::default()
        };
        assert!(record_from_wire(Some(&stale)).is_err());
        let huge = wire::DecisionRecord {
            committed: 0,
            aborted: (1..=MAX_ABORTED as u64 + 1).collect(),
            ..Default::default()
        };
        assert!(record_from_wire(Some(&huge)).is_err());
        let change = |from, members: Vec<u32>| wire::Membership { from, members };
        for membership in [
            vec![change(3, vec![0]), change(3, vec![1])],
            vec![change(0, vec![])],
            vec![change(0, vec![1, 0])],
        ] {
            let bad = wire::DecisionRecord {
                membership,
                ..Default::default()
            };
            assert!(record_from_wire(Some(&bad)).is_err(), "{bad:?}");
        }
    }
}
