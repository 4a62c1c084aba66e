//! The GroupController service: group snapshots, one cut across volumes
//! taken under freeze (see [`crate::node::cut`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use floe_proto::csi;
use floe_proto::csi::group_controller_server::GroupController;

use super::identity::group_capabilities;
use super::params::{self, Rpc};
use super::{csi_snapshot, Plugin};
use crate::node::error::{grpc_service, Error, Result};
use crate::node::locks::{group_key, group_keys};
use crate::node::volumes::{GroupSnapshot, GroupSpec, SnapshotSpec};

/// The GroupController service.
#[derive(Clone)]
pub struct GroupService {
    plugin: Arc<Plugin>,
}

/// The id of the member of group `group` that copies `volume`.
pub fn member_id(group: &str, volume: &str) -> String {
    params::id_for_name(&format!("{group}-{volume}"))
}

impl GroupService {
    /// The service of `plugin`.
    pub fn new(plugin: Arc<Plugin>) -> Self {
        GroupService { plugin }
    }

    async fn csi_group(&self, g: &GroupSnapshot) -> Result<csi::VolumeGroupSnapshot> {
        let snaps = self.plugin.volumes.snapshots().await?;
        let snapshots = g
            .members
            .iter()
            .filter_map(|id| snaps.iter().find(|s| &s.id == id))
            .map(csi_snapshot)
            .collect();
        Ok(csi::VolumeGroupSnapshot {
            group_snapshot_id: g.id.clone(),
            snapshots,
            creation_time: Some(g.created.into()),
            ready_to_use: true,
        })
    }

    /// Refuses a snapshot list that is not the group's.
    fn check_members(g: &GroupSnapshot, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let asked: BTreeSet<&String> = ids.iter().collect();
        let have: BTreeSet<&String> = g.members.iter().collect();
        if asked != have {
            return Err(Error::Contradiction(format!(
                "group snapshot {:?} holds snapshots {:?}, not {:?}: pass its own snapshot_ids or none",
                g.id, g.members, ids
            )));
        }
        Ok(())
    }

    async fn capabilities(
        &self,
        _: csi::GroupControllerGetCapabilitiesRequest,
    ) -> Result<csi::GroupControllerGetCapabilitiesResponse> {
        Ok(csi::GroupControllerGetCapabilitiesResponse {
            capabilities: group_capabilities(),
        })
    }

    async fn create(
        &self,
        req: csi::CreateVolumeGroupSnapshotRequest,
    ) -> Result<csi::CreateVolumeGroupSnapshotResponse> {
        let rpc = Rpc("CreateVolumeGroupSnapshot");
        let id = rpc.name(&req.name)?;
        if req.source_volume_ids.is_empty() {
            return Err(rpc.missing("source_volume_ids", "the volumes to cut together"));
        }
        let mut seen = BTreeSet::new();
        let mut members = Vec::with_capacity(req.source_volume_ids.len());
        for v in &req.source_volume_ids {
            rpc.required("source_volume_ids[]", v, "a volume id")?;
            if !seen.insert(v) {
                return Err(Error::Contradiction(format!(
                    "source_volume_ids names volume {v:?} twice: name each volume once"
                )));
            }
            let mid = member_id(&id, v);
            members.push(SnapshotSpec {
                name: mid.clone(),
                id: mid,
                volume: v.clone(),
            });
        }
        params::no_parameters(&req.parameters)?;
        let spec = GroupSpec {
            id,
            name: req.name,
            members,
        };
        let _guard = self.plugin.locks.try_lock(&group_keys(&spec))?;
        let g = self.plugin.volumes.create_group(spec).await?;
        Ok(csi::CreateVolumeGroupSnapshotResponse {
            group_snapshot: Some(self.csi_group(&g).await?),
        })
    }

    async fn delete(
        &self,
        req: csi::DeleteVolumeGroupSnapshotRequest,
    ) -> Result<csi::DeleteVolumeGroupSnapshotResponse> {
        let rpc = Rpc("DeleteVolumeGroupSnapshot");
        let hint = "the group snapshot to delete";
        let id = rpc.required("group_snapshot_id", &req.group_snapshot_id, hint)?;
        let _guard = self.plugin.locks.try_lock(&[group_key(id)])?;
        if let Some(g) = self.plugin.volumes.group(id).await? {
            Self::check_members(&g, &req.snapshot_ids)?;
        }
        self.plugin.volumes.delete_group(id).await?;
        Ok(csi::DeleteVolumeGroupSnapshotResponse {})
    }

    async fn get(&self, req: csi::GetVolumeGroupSnapshotRequest) -> Result<csi::GetVolumeGroupSnapshotResponse> {
        let rpc = Rpc("GetVolumeGroupSnapshot");
        let hint = "the group snapshot to show";
        let id = rpc.required("group_snapshot_id", &req.group_snapshot_id, hint)?;
        let g = self
            .plugin
            .volumes
            .group(id)
            .await?
            .ok_or_else(|| Error::GroupNotFound(id.to_owned()))?;
        Self::check_members(&g, &req.snapshot_ids)?;
        Ok(csi::GetVolumeGroupSnapshotResponse {
            group_snapshot: Some(self.csi_group(&g).await?),
        })
    }
}

grpc_service! {
    GroupController for GroupService {
        group_controller_get_capabilities(csi::GroupControllerGetCapabilitiesRequest)
            -> csi::GroupControllerGetCapabilitiesResponse => capabilities;
        create_volume_group_snapshot(csi::CreateVolumeGroupSnapshotRequest)
            -> csi::CreateVolumeGroupSnapshotResponse => create;
        delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest)
            -> csi::DeleteVolumeGroupSnapshotResponse => delete;
        get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest)
            -> csi::GetVolumeGroupSnapshotResponse => get;
    }
}
