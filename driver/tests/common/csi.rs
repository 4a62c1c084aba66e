//! What the CSI tests share: a plugin in `--mode=all` on a scratch data dir,
//! its four services, request builders, and a sweep that tears down every
//! mount and loop device under the scratch dir even when a test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use floe_driver::cli::PluginMode;
use floe_driver::csi::controller::ControllerService;
use floe_driver::csi::group::GroupService;
use floe_driver::csi::identity::IdentityService;
use floe_driver::csi::local::LocalVolumes;
use floe_driver::csi::node::NodeService;
use floe_driver::csi::Plugin;
use floe_proto::csi;

/// The node id the harness plugin reports.
pub const NODE: &str = "floe-test-node";

/// A plugin in `--mode=all` with its services.
pub struct Harness {
    /// The scratch dir (its name contains `floe`).
    pub dir: tempfile::TempDir,
    /// The node's volumes.
    pub volumes: LocalVolumes,
    /// The shared plugin state.
    pub plugin: Arc<Plugin>,
    /// Identity service.
    pub identity: IdentityService,
    /// Controller service.
    pub controller: ControllerService,
    /// Node service.
    pub node: NodeService,
    /// GroupController service.
    pub group: GroupService,
}

impl Harness {
    /// A fresh plugin on a scratch data dir.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let dir = super::scratch(prefix)?;
        let volumes = LocalVolumes::open(&dir.path().join("data"))?;
        let plugin = Arc::new(Plugin::new(PluginMode::All, NODE, 8, Arc::new(volumes.clone())));
        Ok(Harness {
            identity: IdentityService::new(Arc::clone(&plugin)),
            controller: ControllerService::new(Arc::clone(&plugin)),
            node: NodeService::new(Arc::clone(&plugin)),
            group: GroupService::new(Arc::clone(&plugin)),
            dir,
            volumes,
            plugin,
        })
    }

    /// A path under the scratch dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        sweep(self.dir.path());
    }
}

/// Unmounts everything under `dir` (deepest first) and detaches loop
/// devices whose backing file is under it.
pub fn sweep(dir: &Path) {
    let prefix = dir.display().to_string();
    for _ in 0..3 {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| p.replace("\\040", " "))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort();
        for p in points.iter().rev() {
            let _ = rustix::mount::unmount(p.as_str(), rustix::mount::UnmountFlags::DETACH);
        }
        if let Ok(entries) = std::fs::read_dir("/sys/block") {
            for e in entries.flatten() {
                let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).unwrap_or_default();
                if backing.starts_with(&prefix) {
                    let _ = Command::new("losetup")
                        .arg("-d")
                        .arg(Path::new("/dev").join(e.file_name()))
                        .output();
                }
            }
        }
    }
}

/// A single-node-writer mount capability with `fs` ("" for the volume's own).
pub fn mount_cap(fs: &str) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume {
                fs_type: fs.into(),
                mount_flags: vec![],
                volume_mount_group: String::new(),
            },
        )),
    }
}

/// A single-node-writer block capability.
pub fn block_cap() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(csi::volume_capability::AccessType::Block(
            csi::volume_capability::BlockVolume {},
        )),
    }
}

/// A CreateVolume request for `size` bytes exactly.
pub fn create_req(name: &str, size: i64, cap: csi::VolumeCapability) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: size,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap],
        ..Default::default()
    }
}
