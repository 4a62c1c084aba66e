//! What the CSI tests share: a node as in production — the fd holder
//! (`floe-dataplane holder`, a child process), the data-plane daemon (in
//! this process, so the tests reach its hooks) and the four CSI services in
//! `--mode=all` calling the daemon over its API socket — on a scratch dir;
//! request builders; and a sweep that tears down every mount and loop
//! device under the scratch dir even when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use floe_driver::cli::PluginMode;
use floe_driver::csi::controller::ControllerService;
use floe_driver::csi::group::GroupService;
use floe_driver::csi::identity::IdentityService;
use floe_driver::csi::node::NodeService;
use floe_driver::csi::Plugin;
use floe_driver::daemon::{ApiLimits, Daemon, ServeConfig};
use floe_driver::dataplane::fuse::FuseConfig;
use floe_driver::node::local::Failpoints;
use floe_driver::node::rpc::client::RemoteVolumes;
use floe_proto::csi;

/// The node id the harness plugin reports.
pub const NODE: &str = "floe-test-node";

/// The data-plane binary.
pub const DATAPLANE: &str = env!("CARGO_BIN_EXE_floe-dataplane");

/// A node: holder, daemon, and a plugin in `--mode=all` with its services.
pub struct Harness {
    /// The scratch dir (its name contains `floe`).
    pub dir: tempfile::TempDir,
    /// The data-plane daemon.
    pub daemon: Arc<Daemon>,
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
    holder: Child,
}

/// Starts `floe-dataplane holder --run-dir run` and waits for its socket.
pub fn start_holder(run: &Path, log: &Path) -> anyhow::Result<Child> {
    std::fs::create_dir_all(run)?;
    let child = Command::new(DATAPLANE)
        .arg("holder")
        .arg("--run-dir")
        .arg(run)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    wait_for_socket(&run.join("holder.sock"))?;
    Ok(child)
}

/// Polls until `path` is a socket, for at most 20 s.
pub fn wait_for_socket(path: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::metadata(path).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())) {
        anyhow::ensure!(Instant::now() < deadline, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

impl Harness {
    /// A fresh node on a scratch dir.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        Self::new_with(prefix, |_| Ok(()))
    }

    /// A fresh node on a scratch dir; `prepare` runs on the scratch dir
    /// before the data plane starts (to mount a small file system at
    /// `data`, say). Whatever it mounts under the dir is swept on drop.
    pub fn new_with(prefix: &str, prepare: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<Self> {
        let dir = super::scratch(prefix)?;
        if let Err(e) = prepare(dir.path()) {
            sweep(dir.path());
            return Err(e);
        }
        let run = dir.path().join("run");
        let holder = start_holder(&run, &dir.path().join("holder.log"))?;
        let cfg = ServeConfig {
            data_dir: dir.path().join("data"),
            run_dir: run.clone(),
            fuse: FuseConfig::default(),
            api: ApiLimits::default(),
            replication: Default::default(),
            metrics_listen: None,
        };
        let daemon = Daemon::start(&cfg).map_err(|e| anyhow::anyhow!("start the data plane: {e}"))?;
        daemon
            .serve_api()
            .map_err(|e| anyhow::anyhow!("start the data plane's API: {e}"))?;
        let volumes = RemoteVolumes::local(&run.join("dataplane.sock"));
        let plugin = Arc::new(Plugin::new(PluginMode::All, NODE, 8, Arc::new(volumes)));
        Ok(Harness {
            identity: IdentityService::new(Arc::clone(&plugin)),
            controller: ControllerService::new(Arc::clone(&plugin)),
            node: NodeService::new(Arc::clone(&plugin)),
            group: GroupService::new(Arc::clone(&plugin)),
            dir,
            daemon,
            plugin,
            holder,
        })
    }

    /// A path under the scratch dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The daemon's test hooks.
    pub fn failpoints(&self) -> &Failpoints {
        self.daemon.csi().failpoints()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        sweep(self.dir.path());
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Unmounts everything under `dir` (deepest first) and detaches loop
/// devices whose backing file is under it.
pub fn sweep(dir: &Path) {
    let prefix = dir.display().to_string();
    for _ in 0..3 {
        // The loop devices first, while their FUSE files are still mounted:
        // once a FUSE mount is detached, the kernel names its file from the
        // detached root ("/volume") and the prefix no longer finds it.
        let loops: Vec<std::path::PathBuf> = std::fs::read_dir("/sys/block")
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| {
                        std::fs::read_to_string(e.path().join("loop/backing_file"))
                            .is_ok_and(|b| b.starts_with(&prefix))
                    })
                    .map(|e| Path::new("/dev").join(e.file_name()))
                    .collect()
            })
            .unwrap_or_default();
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
        for dev in &loops {
            let _ = Command::new("losetup").arg("-d").arg(dev).output();
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

/// [`create_req`] for a volume restored from snapshot `snapshot_id`.
pub fn restore_req(name: &str, size: i64, cap: csi::VolumeCapability, snapshot_id: &str) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        volume_content_source: Some(csi::VolumeContentSource {
            r#type: Some(csi::volume_content_source::Type::Snapshot(
                csi::volume_content_source::SnapshotSource {
                    snapshot_id: snapshot_id.into(),
                },
            )),
        }),
        ..create_req(name, size, cap)
    }
}

/// A NodeUnpublishVolume request.
pub fn unpublish_req(id: &str, target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
    }
}

/// A NodeUnstageVolume request.
pub fn unstage_req(id: &str, staging: &Path) -> csi::NodeUnstageVolumeRequest {
    csi::NodeUnstageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
    }
}
