//! `floe.node.v1.GroupCoordinator` on a node's coordinator listener: the
//! coordinators this node runs, for the replicas the site's other nodes
//! hold (`replication::remote` is the other end).
//!
//! Only a node of this site reaches it (mutual TLS: this site's CA and
//! name). A caller may report for, and follow, only the members this node
//! does not hold itself: a member here is this node's to report.

use std::pin::Pin;
use std::sync::Arc;

use floe_engine::DecisionLog;
use floe_proto::node as wire;
use floe_proto::node::group_coordinator_server::{GroupCoordinator, GroupCoordinatorServer};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, IntervalStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::Replication;
use crate::model::ObjectId;
use crate::node::error::{Error, Result};
use crate::replication::endpoint::{CoordinatorError, LocalCoordinator};
use crate::replication::remote::{decision_to_wire, record_to_wire, report_from_wire, HEARTBEAT};
use crate::store::FileDecisionLog;

/// The service.
pub(crate) struct CoordinatorService {
    hub: Arc<Replication>,
}

impl CoordinatorService {
    /// The service over `hub`'s coordinators.
    pub(crate) fn server(hub: Arc<Replication>) -> GroupCoordinatorServer<Self> {
        GroupCoordinatorServer::new(CoordinatorService { hub })
    }

    fn coordinator(&self, group: &str) -> Result<Arc<LocalCoordinator<FileDecisionLog>>> {
        let group = ObjectId::parse("group", group)?;
        self.hub
            .coordinator_of(group.as_str())
            .ok_or_else(|| Error::FailedPrecondition(format!("this node runs no coordinator of group {group:?}")))
    }
}

fn away<L: DecisionLog + Send + 'static>(c: &LocalCoordinator<L>, member: u32) -> Result<()> {
    if (member as usize) >= c.members() {
        return Err(Error::Invalid {
            field: "member",
            value: member.to_string(),
            expected: format!("a member index below {}", c.members()),
        });
    }
    if !c.is_away(member) {
        return Err(Error::FailedPrecondition(format!(
            "member {member}'s replica is on the coordinator's node: another node cannot speak for it"
        )));
    }
    Ok(())
}

type Updates = Pin<Box<dyn Stream<Item = Result<wire::DecisionUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl GroupCoordinator for CoordinatorService {
    async fn report(
        &self,
        request: Request<wire::ReportRequest>,
    ) -> std::result::Result<Response<wire::ReportResponse>, Status> {
        let req = request.into_inner();
        let c = self.coordinator(&req.group)?;
        let msg = report_from_wire(&req, c.members()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        away(&c, req.member)?;
        let (decisions, record) = tokio::task::spawn_blocking(move || c.decide(msg))
            .await
            .map_err(|e| Status::internal(format!("the report's call panicked: {e}")))?
            .map_err(|e| match e {
                // Promoted here: the follower promotes too, or waits.
                CoordinatorError::Closed => Status::failed_precondition(e.to_string()),
                e => Status::internal(crate::model::error_chain(&e)),
            })?;
        Ok(Response::new(wire::ReportResponse {
            decisions: decisions.iter().map(|d| decision_to_wire(req.member, d)).collect(),
            record: Some(record_to_wire(&record)),
        }))
    }

    async fn final_record(
        &self,
        request: Request<wire::FinalRecordRequest>,
    ) -> std::result::Result<Response<wire::FinalRecordResponse>, Status> {
        let group = ObjectId::parse("group", &request.into_inner().group).map_err(Error::from)?;
        let hub = Arc::clone(&self.hub);
        let record = tokio::task::spawn_blocking(move || hub.final_record(group.as_str()))
            .await
            .map_err(|e| Status::internal(format!("the call panicked: {e}")))??;
        Ok(Response::new(wire::FinalRecordResponse {
            record: Some(record_to_wire(&record)),
        }))
    }

    type DecisionsStream = Updates;

    async fn decisions(
        &self,
        request: Request<wire::DecisionsRequest>,
    ) -> std::result::Result<Response<Updates>, Status> {
        let req = request.into_inner();
        let c = self.coordinator(&req.group)?;
        if req.members.is_empty() {
            return Err(Status::invalid_argument(
                "members: expected the member indexes the caller holds",
            ));
        }
        for &m in &req.members {
            away(&c, m)?;
        }
        let (record, decided) = c.subscribe();
        let members = req.members;
        let group = req.group;
        let first = wire::DecisionUpdate {
            decisions: Vec::new(),
            record: Some(record_to_wire(&record)),
        };
        // The stream ends when the group closes here (promoted, demoted,
        // gone); a subscriber that fell behind gets an error and comes back.
        let later = BroadcastStream::new(decided).filter_map(move |item| match item {
            Ok((m, d, record)) if members.contains(&m) => Some(Ok(wire::DecisionUpdate {
                decisions: vec![decision_to_wire(m, &d)],
                record: Some(record_to_wire(&record)),
            })),
            Ok(_) => None,
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                tracing::warn!(%group, missed = n, "a member node fell behind the decisions: it subscribes again");
                Some(Err(Status::resource_exhausted(format!(
                    "{n} decisions missed: subscribe again"
                ))))
            }
        });
        // A heartbeat (the record as it stands) every `HEARTBEAT` while the
        // coordinator lives, so a subscriber behind a silent partition
        // notices and subscribes again.
        let (now, alive) = (c.watch(), c.watch());
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let beats = IntervalStream::new(every)
            .take_while(move |_| alive.has_changed().is_ok())
            .map(move |_| wire::DecisionUpdate {
                decisions: Vec::new(),
                record: Some(record_to_wire(&now.borrow())),
            })
            .map(Ok);
        let updates = tokio_stream::once(Ok(first)).chain(later.merge(beats));
        Ok(Response::new(Box::pin(updates)))
    }
}
