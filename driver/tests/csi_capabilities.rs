//! The capability set is fixed, not optional (issue: "no group of csi-sanity
//! tests can be skipped by dropping one"): every service advertises exactly
//! the set the issue lists, nothing less and nothing more.

use std::collections::BTreeSet;

use anyhow::Result;
use floe_driver::csi::{DRIVER_NAME, TOPOLOGY_KEY};
use floe_proto::csi;
use floe_proto::csi::controller_server::Controller;
use floe_proto::csi::group_controller_server::GroupController;
use floe_proto::csi::identity_server::Identity;
use floe_proto::csi::node_server::Node;
use tonic::Request;

mod common;

use common::csi::{Harness, NODE};

#[tokio::test]
async fn the_plugin_advertises_exactly_the_fixed_capability_set() -> Result<()> {
    use csi::plugin_capability::{service, volume_expansion, Type};
    let h = Harness::new("csi-caps")?;
    let caps = h
        .identity
        .get_plugin_capabilities(Request::new(csi::GetPluginCapabilitiesRequest {}))
        .await?
        .into_inner()
        .capabilities;
    let mut services = BTreeSet::new();
    let mut expansion = BTreeSet::new();
    for c in caps {
        match c.r#type {
            Some(Type::Service(s)) => assert!(services.insert(s.r#type), "service capability listed twice"),
            Some(Type::VolumeExpansion(e)) => assert!(expansion.insert(e.r#type), "expansion listed twice"),
            None => panic!("a plugin capability without a type"),
        }
    }
    let want: BTreeSet<i32> = [
        service::Type::ControllerService,
        service::Type::VolumeAccessibilityConstraints,
        service::Type::GroupControllerService,
    ]
    .into_iter()
    .map(|t| t as i32)
    .collect();
    assert_eq!(services, want, "plugin service capabilities");
    assert_eq!(
        expansion,
        BTreeSet::from([volume_expansion::Type::Online as i32]),
        "online expansion"
    );
    Ok(())
}

#[tokio::test]
async fn the_controller_advertises_exactly_the_fixed_capability_set() -> Result<()> {
    use csi::controller_service_capability::{rpc::Type as T, Type};
    let h = Harness::new("csi-caps")?;
    let got: Vec<i32> = h
        .controller
        .controller_get_capabilities(Request::new(csi::ControllerGetCapabilitiesRequest {}))
        .await?
        .into_inner()
        .capabilities
        .into_iter()
        .map(|c| match c.r#type {
            Some(Type::Rpc(r)) => r.r#type,
            None => panic!("a controller capability without a type"),
        })
        .collect();
    let want: BTreeSet<i32> = [
        T::CreateDeleteVolume,
        T::GetCapacity,
        T::ListVolumes,
        T::CreateDeleteSnapshot,
        T::ListSnapshots,
        T::GetSnapshot,
        T::CloneVolume,
        T::ExpandVolume,
        T::SingleNodeMultiWriter,
    ]
    .into_iter()
    .map(|t| t as i32)
    .collect();
    assert_eq!(got.len(), want.len(), "no capability listed twice");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
    Ok(())
}

#[tokio::test]
async fn the_node_advertises_exactly_the_fixed_capability_set_and_its_topology() -> Result<()> {
    use csi::node_service_capability::{rpc::Type as T, Type};
    let h = Harness::new("csi-caps")?;
    let got: Vec<i32> = h
        .node
        .node_get_capabilities(Request::new(csi::NodeGetCapabilitiesRequest {}))
        .await?
        .into_inner()
        .capabilities
        .into_iter()
        .map(|c| match c.r#type {
            Some(Type::Rpc(r)) => r.r#type,
            None => panic!("a node capability without a type"),
        })
        .collect();
    let want: BTreeSet<i32> = [
        T::StageUnstageVolume,
        T::GetVolumeStats,
        T::VolumeCondition,
        T::ExpandVolume,
        T::SingleNodeMultiWriter,
    ]
    .into_iter()
    .map(|t| t as i32)
    .collect();
    assert_eq!(got.len(), want.len(), "no capability listed twice");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);

    let info = h
        .node
        .node_get_info(Request::new(csi::NodeGetInfoRequest {}))
        .await?
        .into_inner();
    assert_eq!(info.node_id, NODE);
    assert!(info.max_volumes_per_node > 0);
    let topo = info.accessible_topology.expect("topology is advertised");
    assert_eq!(topo.segments.get(TOPOLOGY_KEY).map(String::as_str), Some(NODE));
    Ok(())
}

#[tokio::test]
async fn the_group_controller_advertises_group_snapshots_and_the_name_is_floe() -> Result<()> {
    use csi::group_controller_service_capability::{rpc::Type as T, Type};
    let h = Harness::new("csi-caps")?;
    let got: Vec<i32> = h
        .group
        .group_controller_get_capabilities(Request::new(csi::GroupControllerGetCapabilitiesRequest {}))
        .await?
        .into_inner()
        .capabilities
        .into_iter()
        .map(|c| match c.r#type {
            Some(Type::Rpc(r)) => r.r#type,
            None => panic!("a group capability without a type"),
        })
        .collect();
    assert_eq!(got, vec![T::CreateDeleteGetVolumeGroupSnapshot as i32]);
    let info = h
        .identity
        .get_plugin_info(Request::new(csi::GetPluginInfoRequest {}))
        .await?
        .into_inner();
    assert_eq!(info.name, DRIVER_NAME);
    assert_eq!(info.name, "floe.csi.dev");
    let probe = h.identity.probe(Request::new(csi::ProbeRequest {})).await?.into_inner();
    assert_eq!(probe.ready, Some(true));
    Ok(())
}
