//! The Controller service: volumes and snapshots.
//!
//! Volumes are node-local: in `--mode=all` the controller provisions on this
//! node, and a topology requirement that excludes it is refused
//! (`RESOURCE_EXHAUSTED`, as the spec says for an unsatisfiable topology).
//! In split mode the volumes' implementation names the nodes it reaches
//! ([`NodeVolumes::nodes`](crate::node::volumes::NodeVolumes::nodes)): the
//! controller picks one from the request's topology (preferred first, then
//! requisite; a restore or clone goes where its source is), reports each
//! volume's own node as its topology, and answers GetCapacity per node.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use floe_proto::csi;
use floe_proto::csi::controller_server::Controller;

use super::identity::controller_capabilities;
use super::params::{self, Access, Capability, Rpc, VolumeParams, XFS_MIN_BYTES};
use super::{csi_snapshot, topology, Plugin, TOPOLOGY_KEY};
use crate::dataplane::mount::FsType;
use crate::node::error::{grpc_service, Error, Result};
use crate::node::locks::{creation_keys, snapshot_key, volume_key};
use crate::node::volumes::{Snapshot, SnapshotSpec, Source, Volume, VolumeSpec};

/// The Controller service.
#[derive(Clone)]
pub struct ControllerService {
    plugin: Arc<Plugin>,
}

impl ControllerService {
    /// The service of `plugin`.
    pub fn new(plugin: Arc<Plugin>) -> Self {
        ControllerService { plugin }
    }

    /// The topology segment of the node holding volume `id`.
    async fn topology_of(&self, id: &str) -> Result<csi::Topology> {
        let node = self.plugin.volumes.volume_node(id).await?;
        Ok(topology(node.as_deref().unwrap_or(&self.plugin.node_id)))
    }

    async fn csi_volume(&self, v: &Volume) -> Result<csi::Volume> {
        use csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
        Ok(csi::Volume {
            capacity_bytes: v.size_bytes as i64,
            volume_id: v.id.clone(),
            volume_context: v.params.context(),
            content_source: v.source.as_ref().map(|s| csi::VolumeContentSource {
                r#type: Some(match s {
                    Source::Snapshot(id) => Type::Snapshot(SnapshotSource {
                        snapshot_id: id.clone(),
                    }),
                    Source::Volume(id) => Type::Volume(VolumeSource { volume_id: id.clone() }),
                }),
            }),
            accessible_topology: vec![self.topology_of(&v.id).await?],
        })
    }

    /// Refuses a requisite topology this node (in split mode: every known
    /// node) is not part of.
    fn check_topology(&self, req: Option<&csi::TopologyRequirement>) -> Result<()> {
        let Some(req) = req.filter(|r| !r.requisite.is_empty()) else {
            return Ok(());
        };
        let known = self.plugin.volumes.nodes();
        let nodes = if known.is_empty() {
            std::slice::from_ref(&self.plugin.node_id)
        } else {
            &known
        };
        if nodes.iter().any(|n| req.requisite.iter().any(|t| fits(t, n))) {
            return Ok(());
        }
        Err(Error::ResourceExhausted(if known.is_empty() {
            format!(
                "floe volumes live on the node that creates them, {TOPOLOGY_KEY}={}, which no requisite topology \
                 allows",
                self.plugin.node_id
            )
        } else {
            format!(
                "floe volumes live on one node, and no requisite topology allows any of the nodes this controller \
                 reaches ({TOPOLOGY_KEY} = {})",
                known.join(", ")
            )
        }))
    }

    /// Split mode: the node a new volume goes to. The node holding its
    /// source when it has one (refused when the requisite topology excludes
    /// it); else the first preferred, then the first requisite topology that
    /// a known node fits; else no preference. Always `None` in-process.
    async fn placement(
        &self,
        req: Option<&csi::TopologyRequirement>,
        source: Option<&Source>,
    ) -> Result<Option<String>> {
        let known = self.plugin.volumes.nodes();
        if known.is_empty() {
            return Ok(None);
        }
        let requisite = req.map(|r| r.requisite.as_slice()).unwrap_or_default();
        let allowed = |n: &str| requisite.is_empty() || requisite.iter().any(|t| fits(t, n));
        let held_by = match source {
            None => None,
            Some(Source::Snapshot(s)) => Some((format!("snapshot {s:?}"), self.plugin.volumes.snapshot_node(s).await?)),
            Some(Source::Volume(v)) => Some((format!("volume {v:?}"), self.plugin.volumes.volume_node(v).await?)),
        };
        if let Some((what, Some(node))) = held_by {
            if !allowed(&node) {
                return Err(Error::ResourceExhausted(format!(
                    "{what} is on node {node:?}, which no requisite topology allows: a restore or clone is made on \
                     the node that holds its source"
                )));
            }
            return Ok(Some(node));
        }
        let preferred = req.map(|r| r.preferred.as_slice()).unwrap_or_default();
        Ok(preferred
            .iter()
            .chain(requisite)
            .find_map(|t| known.iter().find(|n| allowed(n) && fits(t, n)))
            .cloned())
    }

    async fn create(&self, req: csi::CreateVolumeRequest) -> Result<csi::CreateVolumeResponse> {
        let rpc = Rpc("CreateVolume");
        let id = rpc.name(&req.name)?;
        if req.volume_capabilities.is_empty() {
            let hint = "say how the volume is used (mount or block) and its access mode";
            return Err(rpc.missing("volume_capabilities", hint));
        }
        let caps = req
            .volume_capabilities
            .iter()
            .map(Capability::parse)
            .collect::<Result<Vec<_>>>()?;
        if let Some(key) = req.mutable_parameters.keys().next() {
            return Err(Error::UnknownParameter {
                key: key.clone(),
                accepted: "floe.csi.dev has no mutable parameters (no MODIFY_VOLUME)",
            });
        }
        let mut vp = VolumeParams::parse(&req.parameters)?;
        let asked: Vec<FsType> = caps
            .iter()
            .filter_map(|c| match c.access {
                Access::Mount { fs_type, .. } => fs_type,
                Access::Block => None,
            })
            .collect();
        if let Some(&fs) = asked.first() {
            if asked.iter().any(|&f| f != fs)
                || (req.parameters.contains_key(params::PARAM_FS_TYPE) && fs != vp.fs_type)
            {
                return Err(Error::Contradiction(format!(
                    "the capabilities and parameters ask for different file systems ({asked:?}, fsType {}): ask for one",
                    vp.fs_type.name()
                )));
            }
            vp.fs_type = fs;
        }
        self.check_topology(req.accessibility_requirements.as_ref())?;
        let source = match req.volume_content_source.as_ref().and_then(|s| s.r#type.as_ref()) {
            None => None,
            Some(csi::volume_content_source::Type::Snapshot(s)) => {
                let field = "volume_content_source.snapshot.snapshot_id";
                let id = rpc.object_id(field, &s.snapshot_id, "the snapshot to restore")?;
                Some(Source::Snapshot(id.to_owned()))
            }
            Some(csi::volume_content_source::Type::Volume(v)) => {
                let field = "volume_content_source.volume.volume_id";
                let id = rpc.object_id(field, &v.volume_id, "the volume to clone")?;
                Some(Source::Volume(id.to_owned()))
            }
        };
        let mounts = caps.iter().any(|c| !c.is_block());
        let floor = if mounts && vp.fs_type == FsType::Xfs {
            XFS_MIN_BYTES
        } else {
            0
        };
        let range = req.capacity_range.as_ref();
        let mut size = params::capacity(range, vp.block_size, floor)?;
        if let Some(src) = &source {
            let (kind, src_id, src_size) = match src {
                Source::Snapshot(s) => ("snapshot", s, self.plugin.snapshot(s).await?.size_bytes),
                Source::Volume(v) => ("volume", v, self.plugin.volume(v).await?.size_bytes),
            };
            let unsized_request = range.is_none_or(|r| r.required_bytes == 0);
            if unsized_request {
                // No size asked for: the source's.
                size = src_size.max(floor).div_ceil(vp.block_size) * vp.block_size;
            }
            if size < src_size {
                let limit = range.map(|r| r.limit_bytes).unwrap_or(0);
                if limit > 0 && (limit as u64) < src_size {
                    return Err(Error::OutOfRange(format!(
                        "{kind} {src_id:?} holds {src_size} bytes, more than limit_bytes {limit}: raise the limit"
                    )));
                }
                size = src_size.div_ceil(vp.block_size) * vp.block_size;
            }
        }
        let node = self
            .placement(req.accessibility_requirements.as_ref(), source.as_ref())
            .await?;
        let _guard = self.plugin.locks.try_lock(&creation_keys(&id, source.as_ref()))?;
        let (required, limit) = range
            .map(|r| (r.required_bytes as u64, r.limit_bytes as u64))
            .unwrap_or((0, 0));
        let v = match self.plugin.volumes.volume(&id).await? {
            Some(v)
                if v.size_bytes >= required
                    && (limit == 0 || v.size_bytes <= limit)
                    && v.params == vp
                    && v.source == source =>
            {
                v
            }
            Some(v) => {
                return Err(Error::AlreadyExists {
                    kind: "volume",
                    name: req.name,
                    existing: v.describe(),
                    requested: VolumeSpec {
                        id,
                        name: v.name.clone(),
                        size_bytes: size,
                        params: vp,
                        source,
                        node: None,
                    }
                    .describe(),
                })
            }
            None => {
                let spec = VolumeSpec {
                    id,
                    name: req.name,
                    size_bytes: size,
                    params: vp,
                    source,
                    node,
                };
                self.plugin.volumes.create(spec).await?
            }
        };
        Ok(csi::CreateVolumeResponse {
            volume: Some(self.csi_volume(&v).await?),
        })
    }

    async fn validate(
        &self,
        req: csi::ValidateVolumeCapabilitiesRequest,
    ) -> Result<csi::ValidateVolumeCapabilitiesResponse> {
        let rpc = Rpc("ValidateVolumeCapabilities");
        let id = rpc.required("volume_id", &req.volume_id, "the volume to check")?;
        if req.volume_capabilities.is_empty() {
            return Err(rpc.missing("volume_capabilities", "the capabilities to check"));
        }
        let v = self.plugin.volume(id).await?;
        let refuse = |message: String| csi::ValidateVolumeCapabilitiesResponse {
            confirmed: None,
            message,
        };
        for cap in &req.volume_capabilities {
            match Capability::parse(cap) {
                Err(e) => return Ok(refuse(e.to_string())),
                Ok(Capability {
                    access: Access::Mount { fs_type: Some(fs), .. },
                    ..
                }) if fs != v.params.fs_type => {
                    return Ok(refuse(format!(
                        "volume {id:?} is made with {}, not {}",
                        v.params.fs_type.name(),
                        fs.name()
                    )))
                }
                Ok(_) => {}
            }
        }
        if !req.parameters.is_empty() {
            match VolumeParams::parse(&req.parameters) {
                Ok(p) if p == v.params => {}
                Ok(_) => {
                    return Ok(refuse(format!(
                        "volume {id:?} was created with other parameters: {}",
                        v.describe()
                    )))
                }
                Err(e) => return Ok(refuse(e.to_string())),
            }
        }
        if !req.mutable_parameters.is_empty() {
            return Ok(refuse("floe.csi.dev has no mutable parameters".into()));
        }
        Ok(csi::ValidateVolumeCapabilitiesResponse {
            confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
                mutable_parameters: HashMap::new(),
            }),
            message: String::new(),
        })
    }

    async fn expand(&self, req: csi::ControllerExpandVolumeRequest) -> Result<csi::ControllerExpandVolumeResponse> {
        let rpc = Rpc("ControllerExpandVolume");
        let id = rpc.required("volume_id", &req.volume_id, "the volume to grow")?;
        let Some(range) = req.capacity_range.as_ref() else {
            return Err(rpc.missing("capacity_range", "the new size"));
        };
        let block = match req.volume_capability.as_ref() {
            Some(c) => Capability::parse(c)?.is_block(),
            None => false,
        };
        let _guard = self.plugin.locks.try_lock(&[volume_key(id)])?;
        let v = self.plugin.volume(id).await?;
        let size = params::capacity(Some(range), v.params.block_size, 0)?;
        let v = self.plugin.volumes.expand(id, size).await?;
        Ok(csi::ControllerExpandVolumeResponse {
            capacity_bytes: v.size_bytes as i64,
            node_expansion_required: !block,
        })
    }

    async fn delete(&self, req: csi::DeleteVolumeRequest) -> Result<csi::DeleteVolumeResponse> {
        let id = Rpc("DeleteVolume").required("volume_id", &req.volume_id, "the volume to delete")?;
        let _guard = self.plugin.locks.try_lock(&[volume_key(id)])?;
        self.plugin.volumes.delete(id).await?;
        Ok(csi::DeleteVolumeResponse {})
    }

    async fn publish(&self, _: csi::ControllerPublishVolumeRequest) -> Result<csi::ControllerPublishVolumeResponse> {
        Err(Error::Unimplemented(
            "floe volumes are node-local and need no ControllerPublishVolume (attachRequired: false)",
        ))
    }

    async fn unpublish(
        &self,
        _: csi::ControllerUnpublishVolumeRequest,
    ) -> Result<csi::ControllerUnpublishVolumeResponse> {
        Err(Error::Unimplemented(
            "floe volumes are node-local and need no ControllerUnpublishVolume (attachRequired: false)",
        ))
    }

    async fn list_volumes(&self, req: csi::ListVolumesRequest) -> Result<csi::ListVolumesResponse> {
        let start = params::decode_token("v", &req.starting_token)?;
        let items: BTreeMap<String, Volume> = self
            .plugin
            .volumes
            .volumes()
            .await?
            .into_iter()
            .map(|v| (v.id.clone(), v))
            .collect();
        let (page, next_token) = params::page(&items, start.as_deref(), req.max_entries, "v")?;
        let mut entries = Vec::with_capacity(page.len());
        for v in &page {
            entries.push(csi::list_volumes_response::Entry {
                volume: Some(self.csi_volume(v).await?),
                status: None,
            });
        }
        Ok(csi::ListVolumesResponse { entries, next_token })
    }

    async fn capacity(&self, req: csi::GetCapacityRequest) -> Result<csi::GetCapacityResponse> {
        VolumeParams::parse(&req.parameters)?;
        let usable = req.volume_capabilities.iter().all(|c| Capability::parse(c).is_ok());
        let known = self.plugin.volumes.nodes();
        // Split mode: the node the topology names, or the whole cluster.
        let cap = match req.accessible_topology.as_ref() {
            None => Some(self.plugin.volumes.capacity().await?),
            Some(t) if known.is_empty() => {
                fits(t, &self.plugin.node_id).then_some(self.plugin.volumes.capacity().await?)
            }
            Some(t) => match known.iter().find(|n| fits(t, n)) {
                Some(n) => Some(self.plugin.volumes.capacity_of(n).await?),
                None => None,
            },
        };
        let (available, max) = match cap {
            Some(cap) if usable => (cap.available_bytes, cap.max_volume_bytes),
            _ => (0, 0),
        };
        Ok(csi::GetCapacityResponse {
            available_capacity: available.min(i64::MAX as u64) as i64,
            maximum_volume_size: Some(max.min(i64::MAX as u64) as i64),
            minimum_volume_size: None,
        })
    }

    async fn capabilities(
        &self,
        _: csi::ControllerGetCapabilitiesRequest,
    ) -> Result<csi::ControllerGetCapabilitiesResponse> {
        Ok(csi::ControllerGetCapabilitiesResponse {
            capabilities: controller_capabilities(),
        })
    }

    async fn create_snapshot(&self, req: csi::CreateSnapshotRequest) -> Result<csi::CreateSnapshotResponse> {
        let rpc = Rpc("CreateSnapshot");
        let id = rpc.name(&req.name)?;
        let volume = rpc.required("source_volume_id", &req.source_volume_id, "the volume to copy")?;
        params::no_parameters(&req.parameters)?;
        let _guard = self.plugin.locks.try_lock(&[snapshot_key(&id), volume_key(volume)])?;
        let spec = SnapshotSpec {
            id,
            name: req.name.clone(),
            volume: volume.to_owned(),
        };
        let snap = self.plugin.volumes.snapshot(spec).await?;
        Ok(csi::CreateSnapshotResponse {
            snapshot: Some(csi_snapshot(&snap)),
        })
    }

    async fn delete_snapshot(&self, req: csi::DeleteSnapshotRequest) -> Result<csi::DeleteSnapshotResponse> {
        let id = Rpc("DeleteSnapshot").required("snapshot_id", &req.snapshot_id, "the snapshot to delete")?;
        let _guard = self.plugin.locks.try_lock(&[snapshot_key(id)])?;
        self.plugin.volumes.delete_snapshot(id).await?;
        Ok(csi::DeleteSnapshotResponse {})
    }

    async fn list_snapshots(&self, req: csi::ListSnapshotsRequest) -> Result<csi::ListSnapshotsResponse> {
        let start = params::decode_token("s", &req.starting_token)?;
        let items: BTreeMap<String, Snapshot> = self
            .plugin
            .volumes
            .snapshots()
            .await?
            .into_iter()
            .filter(|s| req.snapshot_id.is_empty() || s.id == req.snapshot_id)
            .filter(|s| req.source_volume_id.is_empty() || s.source_volume == req.source_volume_id)
            .map(|s| (s.id.clone(), s))
            .collect();
        let (page, next_token) = params::page(&items, start.as_deref(), req.max_entries, "s")?;
        Ok(csi::ListSnapshotsResponse {
            entries: page
                .iter()
                .map(|s| csi::list_snapshots_response::Entry {
                    snapshot: Some(csi_snapshot(s)),
                })
                .collect(),
            next_token,
        })
    }

    async fn get_snapshot(&self, req: csi::GetSnapshotRequest) -> Result<csi::GetSnapshotResponse> {
        let id = Rpc("GetSnapshot").object_id("snapshot_id", &req.snapshot_id, "the snapshot to show")?;
        let snap = self.plugin.snapshot(id).await?;
        Ok(csi::GetSnapshotResponse {
            snapshot: Some(csi_snapshot(&snap)),
        })
    }

    async fn get_volume(&self, _: csi::ControllerGetVolumeRequest) -> Result<csi::ControllerGetVolumeResponse> {
        Err(Error::Unimplemented(
            "floe.csi.dev does not advertise GET_VOLUME: use ListVolumes",
        ))
    }

    async fn modify(&self, _: csi::ControllerModifyVolumeRequest) -> Result<csi::ControllerModifyVolumeResponse> {
        Err(Error::Unimplemented(
            "floe.csi.dev has no mutable parameters (no MODIFY_VOLUME)",
        ))
    }
}

/// Whether topology `t` allows node `node`: each of its segments is the
/// node's.
fn fits(t: &csi::Topology, node: &str) -> bool {
    t.segments.iter().all(|(k, v)| k == TOPOLOGY_KEY && v == node)
}

grpc_service! {
    Controller for ControllerService {
        create_volume(csi::CreateVolumeRequest) -> csi::CreateVolumeResponse => create;
        delete_volume(csi::DeleteVolumeRequest) -> csi::DeleteVolumeResponse => delete;
        controller_publish_volume(csi::ControllerPublishVolumeRequest)
            -> csi::ControllerPublishVolumeResponse => publish;
        controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest)
            -> csi::ControllerUnpublishVolumeResponse => unpublish;
        validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest)
            -> csi::ValidateVolumeCapabilitiesResponse => validate;
        list_volumes(csi::ListVolumesRequest) -> csi::ListVolumesResponse => list_volumes;
        get_capacity(csi::GetCapacityRequest) -> csi::GetCapacityResponse => capacity;
        controller_get_capabilities(csi::ControllerGetCapabilitiesRequest)
            -> csi::ControllerGetCapabilitiesResponse => capabilities;
        create_snapshot(csi::CreateSnapshotRequest) -> csi::CreateSnapshotResponse => create_snapshot;
        delete_snapshot(csi::DeleteSnapshotRequest) -> csi::DeleteSnapshotResponse => delete_snapshot;
        list_snapshots(csi::ListSnapshotsRequest) -> csi::ListSnapshotsResponse => list_snapshots;
        get_snapshot(csi::GetSnapshotRequest) -> csi::GetSnapshotResponse => get_snapshot;
        controller_expand_volume(csi::ControllerExpandVolumeRequest)
            -> csi::ControllerExpandVolumeResponse => expand;
        controller_get_volume(csi::ControllerGetVolumeRequest) -> csi::ControllerGetVolumeResponse => get_volume;
        controller_modify_volume(csi::ControllerModifyVolumeRequest)
            -> csi::ControllerModifyVolumeResponse => modify;
    }
}
