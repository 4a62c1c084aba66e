//! The Identity service, and the capability sets every service advertises.
//!
//! The sets are fixed (issue: "the capability set is fixed, not optional"):
//! a test holds them to the list, so no csi-sanity group can be skipped by
//! dropping one.

use std::sync::Arc;

use floe_proto::csi;
use floe_proto::csi::identity_server::Identity;

use super::Plugin;
use crate::node::error::{grpc_service, Result};

/// Plugin capabilities: controller, topology, group controller, online expansion.
pub fn plugin_capabilities() -> Vec<csi::PluginCapability> {
    use csi::plugin_capability::{service, volume_expansion, Service, Type, VolumeExpansion};
    let service = |t: service::Type| csi::PluginCapability {
        r#type: Some(Type::Service(Service { r#type: t as i32 })),
    };
    vec![
        service(service::Type::ControllerService),
        service(service::Type::VolumeAccessibilityConstraints),
        service(service::Type::GroupControllerService),
        csi::PluginCapability {
            r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                r#type: volume_expansion::Type::Online as i32,
            })),
        },
    ]
}

/// Controller capabilities. No PUBLISH_UNPUBLISH: node-local volumes need no
/// attach (`attachRequired: false`).
pub fn controller_capabilities() -> Vec<csi::ControllerServiceCapability> {
    use csi::controller_service_capability::{rpc::Type as T, Rpc, Type};
    [
        T::CreateDeleteVolume,
        T::GetCapacity,
        T::ListVolumes,
        T::CreateDeleteSnapshot,
        T::ListSnapshots,
        T::GetSnapshot,
        T::CloneVolume,
        T::ExpandVolume,
        // SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod) and
        // SINGLE_NODE_MULTI_WRITER access modes.
        T::SingleNodeMultiWriter,
    ]
    .into_iter()
    .map(|t| csi::ControllerServiceCapability {
        r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
    })
    .collect()
}

/// Node capabilities.
pub fn node_capabilities() -> Vec<csi::NodeServiceCapability> {
    use csi::node_service_capability::{rpc::Type as T, Rpc, Type};
    [
        T::StageUnstageVolume,
        T::GetVolumeStats,
        T::VolumeCondition,
        T::ExpandVolume,
        T::SingleNodeMultiWriter,
    ]
    .into_iter()
    .map(|t| csi::NodeServiceCapability {
        r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
    })
    .collect()
}

/// Group controller capabilities.
pub fn group_capabilities() -> Vec<csi::GroupControllerServiceCapability> {
    use csi::group_controller_service_capability::{rpc::Type as T, Rpc, Type};
    vec![csi::GroupControllerServiceCapability {
        r#type: Some(Type::Rpc(Rpc {
            r#type: T::CreateDeleteGetVolumeGroupSnapshot as i32,
        })),
    }]
}

/// The Identity service.
#[derive(Clone)]
pub struct IdentityService {
    plugin: Arc<Plugin>,
}

impl IdentityService {
    /// The service of `plugin`.
    pub fn new(plugin: Arc<Plugin>) -> Self {
        IdentityService { plugin }
    }

    async fn info(&self, _: csi::GetPluginInfoRequest) -> Result<csi::GetPluginInfoResponse> {
        Ok(csi::GetPluginInfoResponse {
            name: self.plugin.driver.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest: [("mode".to_owned(), format!("{:?}", self.plugin.mode).to_lowercase())].into(),
        })
    }

    async fn capabilities(&self, _: csi::GetPluginCapabilitiesRequest) -> Result<csi::GetPluginCapabilitiesResponse> {
        Ok(csi::GetPluginCapabilitiesResponse {
            capabilities: plugin_capabilities(),
        })
    }

    async fn probe(&self, _: csi::ProbeRequest) -> Result<csi::ProbeResponse> {
        Ok(csi::ProbeResponse { ready: Some(true) })
    }
}

grpc_service! {
    Identity for IdentityService {
        get_plugin_info(csi::GetPluginInfoRequest) -> csi::GetPluginInfoResponse => info;
        get_plugin_capabilities(csi::GetPluginCapabilitiesRequest) -> csi::GetPluginCapabilitiesResponse => capabilities;
        probe(csi::ProbeRequest) -> csi::ProbeResponse => probe;
    }
}
