//! [`RemoteMember`]: a volume of a group freeze on whichever node holds it,
//! driven over that node's `floe.node.v1.NodeAdmin`; and [`AdminClient`],
//! the other `NodeAdmin` calls (pairing, status, verification, promotion,
//! demotion).

use std::path::Path;
use std::time::{Instant, SystemTime};

use floe_engine::GroupEpoch;
use floe_proto::node as wire;
use floe_proto::node::node_admin_client::NodeAdminClient;
use tonic::transport::Channel;

use super::{refusal, LocalChannel};
use crate::node::error::{chain, Result};
use crate::replication::freeze::{FreezeMember, MemberError, Token};

/// One node's `NodeAdmin` (for now on its data plane's unix socket).
#[derive(Clone, Debug)]
pub struct AdminClient {
    node: String,
    url: String,
    channel: LocalChannel,
}

impl AdminClient {
    /// The data plane of node `node` serving on `socket`.
    pub fn local(node: &str, socket: &Path) -> Self {
        AdminClient {
            node: node.to_owned(),
            url: format!("unix:{}", socket.display()),
            channel: LocalChannel::new(socket),
        }
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn client(&self) -> NodeAdminClient<Channel> {
        NodeAdminClient::new(self.channel.get())
    }

    fn refused(&self, s: tonic::Status) -> crate::node::error::Error {
        refusal(&format!("node {:?}", self.node), &self.url, s)
    }

    /// `Pair`.
    pub async fn pair(&self, req: wire::PairRequest) -> Result<wire::PairResponse> {
        let r = self.client().pair(req).await.map_err(|s| self.refused(s))?;
        Ok(r.into_inner())
    }

    /// `Status` of `volume`.
    pub async fn status(&self, volume: &str) -> Result<wire::StatusResponse> {
        let req = wire::StatusRequest { volume: volume.into() };
        let r = self.client().status(req).await.map_err(|s| self.refused(s))?;
        Ok(r.into_inner())
    }

    /// `Verify` of the first `bytes` (0: all) of a DR replica at its
    /// committed epoch (`epoch` 0: any).
    pub async fn verify(&self, volume: &str, epoch: u64, bytes: u64) -> Result<wire::VerifyResponse> {
        let req = wire::VerifyRequest {
            volume: volume.into(),
            epoch,
            bytes,
        };
        let r = self.client().verify(req).await.map_err(|s| self.refused(s))?;
        Ok(r.into_inner())
    }

    /// `Promote` of `group` by site `site`: the group's last committed
    /// epoch, which every member now stands at.
    pub async fn promote(&self, group: &str, site: u64) -> Result<u64> {
        self.promote_at(group, site, 0).await
    }

    /// `Promote` of `group` by site `site` at retained point `point` (0: the
    /// last committed epoch): the epoch every member now stands at.
    pub async fn promote_at(&self, group: &str, site: u64, point: u64) -> Result<u64> {
        let req = wire::PromoteRequest {
            group: group.into(),
            generation: Some(floe_proto::replication::RoleGeneration {
                counter: 0,
                site_id: site,
            }),
            point,
        };
        let r = self.client().promote(req).await.map_err(|s| self.refused(s))?;
        Ok(r.into_inner().consistent_epoch)
    }

    /// `Demote` of `group` to the new primary's `generation` (failback).
    pub async fn demote(
        &self,
        group: &str,
        generation: floe_proto::replication::RoleGeneration,
        discard_strays: bool,
    ) -> Result<wire::DemoteResponse> {
        let req = wire::DemoteRequest {
            group: group.into(),
            generation: Some(generation),
            discard_strays,
        };
        let r = self.client().demote(req).await.map_err(|s| self.refused(s))?;
        Ok(r.into_inner())
    }

    /// `Rehearse` of DR group `group`: the epoch and the clones' ids.
    pub async fn rehearse(&self, group: &str) -> Result<wire::RehearseResponse> {
        let req = wire::RehearseRequest { group: group.into() };
        let r = self.client().rehearse(req).await.map_err(|s| self.refused(s))?;
        Ok(r.into_inner())
    }

    /// Volume `volume` of this node as a group-freeze member.
    pub fn member(&self, volume: &str) -> RemoteMember {
        RemoteMember {
            admin: self.clone(),
            volume: volume.to_owned(),
        }
    }
}

/// A volume on some node, as a member of a group freeze.
#[derive(Clone, Debug)]
pub struct RemoteMember {
    admin: AdminClient,
    volume: String,
}

fn member_error(e: crate::node::error::Error) -> MemberError {
    MemberError(chain(&e))
}

/// `deadline` as Unix milliseconds (a deadline in the past is now).
fn unix_ms(deadline: Instant) -> u64 {
    let left = deadline.saturating_duration_since(Instant::now());
    let at = SystemTime::now() + left;
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[tonic::async_trait]
impl FreezeMember for RemoteMember {
    fn name(&self) -> String {
        format!("{}/{}", self.admin.node, self.volume)
    }

    async fn ready(&self, epoch: GroupEpoch) -> std::result::Result<(), MemberError> {
        let req = wire::ReadyRequest {
            volume: self.volume.clone(),
            epoch,
        };
        let a = &self.admin;
        a.client().ready(req).await.map_err(|s| member_error(a.refused(s)))?;
        Ok(())
    }

    async fn quiesce(&self, token: &Token, deadline: Instant) -> std::result::Result<(), MemberError> {
        let req = wire::QuiesceRequest {
            volumes: vec![self.volume.clone()],
            token: token.0.clone(),
            deadline_unix_ms: unix_ms(deadline),
        };
        let a = &self.admin;
        a.client().quiesce(req).await.map_err(|s| member_error(a.refused(s)))?;
        Ok(())
    }

    async fn freeze(&self, epoch: GroupEpoch, token: &Token) -> std::result::Result<(), MemberError> {
        let req = wire::FreezeRequest {
            volume: self.volume.clone(),
            epoch,
            token: token.0.clone(),
        };
        let a = &self.admin;
        a.client().freeze(req).await.map_err(|s| member_error(a.refused(s)))?;
        Ok(())
    }

    async fn thaw(&self, token: &Token) -> std::result::Result<(), MemberError> {
        let req = wire::ThawRequest { token: token.0.clone() };
        let a = &self.admin;
        a.client().thaw(req).await.map_err(|s| member_error(a.refused(s)))?;
        Ok(())
    }

    async fn abort(&self, epoch: GroupEpoch) -> std::result::Result<(), MemberError> {
        let req = wire::AbortRequest {
            volume: self.volume.clone(),
            epoch,
        };
        let a = &self.admin;
        a.client().abort(req).await.map_err(|s| member_error(a.refused(s)))?;
        Ok(())
    }
}
