//! Killing `floe-csi` — not the data plane — in the middle of storms of
//! NodeStageVolume and NodePublishVolume calls leaves no half-done mount,
//! the retried calls succeed, and the I/O of volumes already in use goes on
//! without an error through every kill.
//!
//! The node runs as in production: `floe-dataplane holder`, `floe-dataplane
//! serve` and `floe-csi --mode=all`, three processes; the test talks gRPC to
//! `floe-csi`'s socket as kubelet does. Each round creates fresh volumes
//! (half ext4, half xfs, so the storm runs mkfs), fires every stage and
//! publish at once, and SIGKILLs `floe-csi` as soon as a set number of
//! calls has completed — a different number each round, so the kill lands
//! in a different phase (attach, mkfs, mount, bind). Then, before any
//! retry: every staging path is either not a mount or a whole file system
//! of the volume's own device, every target either not a mount or a bind of
//! that file system, and no floe device is mounted anywhere else. Then
//! `floe-csi` restarts, every call is retried and must succeed, data
//! written through one target reads back through the other, and after
//! unmounting, `e2fsck -fn` / `xfs_repair -n` find each file system clean.
//!
//! A second test restarts the data plane (SIGTERM, successor) under a
//! volume staged through CSI: its fsynced writer sees no error and the
//! volume, now served by the successor, still grows online.
//!
//! Needs root, /dev/fuse, loop devices, mkfs.ext4 and mkfs.xfs: in CI
//! (`CI` set) their absence is a failure, elsewhere the test is skipped.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use floe_driver::dataplane::mounttable::{self, MountEntry};
use floe_proto::csi;
use floe_proto::csi::controller_client::ControllerClient;
use floe_proto::csi::node_client::NodeClient;
use tonic::transport::{Channel, Endpoint};

mod common;

use common::csi::{create_req, mount_cap, start_holder, sweep, unpublish_req, unstage_req, wait_for_socket, DATAPLANE};

const CSI_BIN: &str = env!("CARGO_BIN_EXE_floe-csi");
const VOLUMES_PER_ROUND: usize = 4;
const SIZE: i64 = 300 << 20;
/// Completed calls before the kill, per round.
const KILL_AFTER: [usize; 3] = [1, 4, 8];

/// The three processes of a node on a scratch dir.
struct Node {
    dir: tempfile::TempDir,
    holder: Option<Child>,
    serve: Option<Child>,
    csi: Option<Child>,
    csi_starts: usize,
}

impl Node {
    fn start() -> Result<Self> {
        let dir = common::scratch("csi-kill")?;
        let mut node = Node {
            holder: Some(start_holder(&dir.path().join("run"), &dir.path().join("holder.log"))?),
            dir,
            serve: None,
            csi: None,
            csi_starts: 0,
        };
        node.serve = Some(node.spawn_serve()?);
        wait_for_socket(&node.path("run/dataplane.sock"))?;
        node.start_csi()?;
        Ok(node)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn socket(&self) -> PathBuf {
        self.path("csi.sock")
    }

    fn start_csi(&mut self) -> Result<()> {
        // The socket of a killed plugin stays behind: wait for the new one.
        let _ = std::fs::remove_file(self.socket());
        self.csi_starts += 1;
        let log = std::fs::File::create(self.path(&format!("csi-{}.log", self.csi_starts)))?;
        let child = Command::new(CSI_BIN)
            .arg("--mode=all")
            .arg("--endpoint")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("--dataplane-socket")
            .arg(self.path("run/dataplane.sock"))
            .arg("--node-id")
            .arg("floe-kill-node")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.csi = Some(child);
        wait_for_socket(&self.socket())
    }

    /// SIGTERM to `serve`, then a successor, which takes every attached
    /// volume over from the holder.
    fn restart_serve(&mut self) -> Result<()> {
        let mut old = self.serve.take().context("serve is running")?;
        rustix::process::kill_process(rustix::process::Pid::from_child(&old), rustix::process::Signal::TERM)?;
        old.wait()?;
        // Its socket file may outlive it: wait for the successor's own.
        let _ = std::fs::remove_file(self.path("run/dataplane.sock"));
        self.serve = Some(self.spawn_serve()?);
        wait_for_socket(&self.path("run/dataplane.sock"))
    }

    fn spawn_serve(&self) -> Result<Child> {
        let n = std::fs::read_dir(self.dir.path())?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("serve"))
            .count();
        Ok(Command::new(DATAPLANE)
            .arg("serve")
            .arg("--data-dir")
            .arg(self.path("data"))
            .arg("--run-dir")
            .arg(self.path("run"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path(&format!("serve-{n}.log")))?)
            .spawn()?)
    }

    fn kill_csi(&mut self) -> Result<()> {
        let mut c = self.csi.take().context("floe-csi is running")?;
        c.kill()?;
        c.wait()?;
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.csi.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // File systems first, while the data plane still serves them.
        sweep(self.dir.path());
        for mut c in [self.serve.take(), self.holder.take()].into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        sweep(self.dir.path());
    }
}

async fn connect(socket: &Path) -> Result<Channel> {
    let path = socket.to_owned();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let p = path.clone();
        async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
    });
    Ok(Endpoint::try_from("http://floe.invalid")?
        .connect_with_connector(connector)
        .await?)
}

/// One volume's paths and file system.
#[derive(Clone)]
struct Vol {
    id: String,
    fs: &'static str,
    staging: PathBuf,
    targets: [PathBuf; 2],
}

fn stage_req(v: &Vol) -> csi::NodeStageVolumeRequest {
    csi::NodeStageVolumeRequest {
        volume_id: v.id.clone(),
        staging_target_path: v.staging.display().to_string(),
        volume_capability: Some(mount_cap(v.fs)),
        ..Default::default()
    }
}

fn publish_req(v: &Vol, target: &Path) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: v.id.clone(),
        staging_target_path: v.staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_cap(v.fs)),
        ..Default::default()
    }
}

/// Stage, then publish to both targets; each completed call counts.
async fn stage_and_publish(channel: Channel, v: Vol, done: Arc<AtomicUsize>, kick: Arc<tokio::sync::Notify>) {
    let mut node = NodeClient::new(channel);
    let count = || {
        done.fetch_add(1, Ordering::SeqCst);
        kick.notify_one();
    };
    if node.node_stage_volume(stage_req(&v)).await.is_err() {
        count();
        return;
    }
    count();
    for t in &v.targets {
        let ok = node.node_publish_volume(publish_req(&v, t)).await.is_ok();
        count();
        if !ok {
            return;
        }
    }
}

fn mounts() -> Result<Vec<MountEntry>> {
    Ok(mounttable::table()?)
}

/// The loop device of a volume from the data plane's own answer.
fn device_of(node: &Node, id: &str) -> Result<Option<PathBuf>> {
    let c = common::plane::PlaneClient::new(&node.path("run/dataplane.sock"))?;
    Ok(c.volume(id)?.and_then(|v| v.attachment).map(|a| a.device))
}

/// No half-done mount: what is mounted of each volume is whole and where
/// it belongs, and nothing of it is mounted anywhere else.
fn check_no_half_done(node: &Node, vols: &[Vol]) -> Result<()> {
    let table = mounts()?;
    let mut owned: HashMap<(u32, u32), &Vol> = HashMap::new();
    for v in vols {
        let staged: Vec<&MountEntry> = table.iter().filter(|m| m.mount_point == v.staging).collect();
        let device = device_of(node, &v.id)?;
        if let Some(s) = staged.last() {
            let device = device.with_context(|| format!("{} is mounted but its volume is not attached", v.id))?;
            ensure!(
                (s.major, s.minor) == mounttable::device_number(&device)? && s.fs_type == v.fs && s.root == "/",
                "{}: the staging mount {s:?} is not the whole {} file system of {}",
                v.id,
                v.fs,
                device.display()
            );
            owned.insert((s.major, s.minor), v);
        }
        for t in &v.targets {
            if let Some(m) = table.iter().rfind(|m| &m.mount_point == t) {
                let s = staged
                    .last()
                    .with_context(|| format!("{}: {} is published but not staged", v.id, t.display()))?;
                ensure!(
                    (m.major, m.minor) == (s.major, s.minor) && m.fs_type == v.fs,
                    "{}: the target mount {m:?} is not a bind of the staged file system {s:?}",
                    v.id
                );
            }
        }
    }
    // A floe device mounted anywhere but its staging path and targets.
    for m in table.iter().filter(|m| m.source.starts_with("/dev/loop")) {
        if let Some(v) = owned.get(&(m.major, m.minor)) {
            ensure!(
                m.mount_point == v.staging || v.targets.contains(&m.mount_point),
                "{}: its file system is also mounted at {}",
                v.id,
                m.mount_point.display()
            );
        }
    }
    Ok(())
}

fn fsck(fs: &str, device: &Path) -> Result<()> {
    let out = match fs {
        "ext4" => Command::new("e2fsck").arg("-fn").arg(device).output()?,
        _ => Command::new("xfs_repair").arg("-n").arg(device).output()?,
    };
    ensure!(
        out.status.success(),
        "{fs} check of {} failed: {}{}",
        device.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Writes and fsyncs numbered records to `file` until `stop`; the count.
fn writer(file: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Result<u64>> {
    std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&file)?;
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            f.write_all(format!("record {n:08}\n").as_bytes())
                .with_context(|| format!("write record {n}"))?;
            f.sync_data().with_context(|| format!("fsync record {n}"))?;
            n += 1;
        }
        Ok(n)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_floe_csi_during_stage_and_publish_storms_leaves_no_half_done_mount() -> Result<()> {
    if !common::privileged("csi kill storm") {
        return Ok(());
    }
    for tool in ["mkfs.ext4", "mkfs.xfs", "e2fsck", "xfs_repair"] {
        if !common::tool_present(tool) {
            common::skip_or_fail(&format!("csi kill storm: needs {tool}"));
            return Ok(());
        }
    }
    let mut node = Node::start()?;
    let mut controller = ControllerClient::new(connect(&node.socket()).await?);

    // A volume in use through every kill: an fsynced append loop.
    let busy = Vol {
        id: "kill-busy".into(),
        fs: "ext4",
        staging: node.path("busy/staging"),
        targets: [node.path("busy/t0"), node.path("busy/t1")],
    };
    controller
        .create_volume(create_req(&busy.id, SIZE, mount_cap("ext4")))
        .await?;
    {
        let mut n = NodeClient::new(connect(&node.socket()).await?);
        n.node_stage_volume(stage_req(&busy)).await?;
        n.node_publish_volume(publish_req(&busy, &busy.targets[0])).await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let log = writer(busy.targets[0].join("log"), Arc::clone(&stop));

    for (round, kill_after) in KILL_AFTER.iter().copied().enumerate() {
        let vols: Vec<Vol> = (0..VOLUMES_PER_ROUND)
            .map(|i| Vol {
                id: format!("kill-{round}-{i}"),
                fs: if i % 2 == 0 { "ext4" } else { "xfs" },
                staging: node.path(&format!("r{round}/v{i}/staging")),
                targets: [
                    node.path(&format!("r{round}/v{i}/t0")),
                    node.path(&format!("r{round}/v{i}/t1")),
                ],
            })
            .collect();
        for v in &vols {
            controller
                .create_volume(create_req(&v.id, SIZE, mount_cap(v.fs)))
                .await?;
        }

        // The storm: every call at once, twice per volume for the stage.
        let done = Arc::new(AtomicUsize::new(0));
        let kick = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for v in vols.iter().chain(vols.iter()) {
            let ch = connect(&node.socket()).await?;
            tasks.push(tokio::spawn(stage_and_publish(
                ch,
                v.clone(),
                Arc::clone(&done),
                Arc::clone(&kick),
            )));
        }
        while done.load(Ordering::SeqCst) < kill_after {
            kick.notified().await;
        }
        node.kill_csi()?;
        let completed = done.load(Ordering::SeqCst);
        for t in tasks {
            t.await?;
        }
        eprintln!("round {round}: floe-csi killed after {completed} completed calls");
        check_no_half_done(&node, &vols).with_context(|| format!("round {round}, right after the kill"))?;

        // Retry everything on a new plugin: it all succeeds.
        node.start_csi()?;
        controller = ControllerClient::new(connect(&node.socket()).await?);
        let mut n = NodeClient::new(connect(&node.socket()).await?);
        for v in &vols {
            n.node_stage_volume(stage_req(v))
                .await
                .with_context(|| format!("round {round}: retried stage of {}", v.id))?;
            for t in &v.targets {
                n.node_publish_volume(publish_req(v, t))
                    .await
                    .with_context(|| format!("round {round}: retried publish of {}", v.id))?;
            }
        }
        check_no_half_done(&node, &vols).with_context(|| format!("round {round}, after the retries"))?;
        for v in &vols {
            let text = format!("round {round} volume {}\n", v.id);
            let mut f = std::fs::File::create(v.targets[0].join("note"))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            ensure!(
                std::fs::read_to_string(v.targets[1].join("note"))? == text,
                "{}: the two targets do not show the same file system",
                v.id
            );
        }

        // Whole file systems: unmount by hand, check, then let the plugin
        // finish (its unpublish and unstage find nothing mounted).
        for v in &vols {
            let device = device_of(&node, &v.id)?.context("staged volume has a device")?;
            for p in v.targets.iter().chain([&v.staging]) {
                rustix::mount::unmount(p, rustix::mount::UnmountFlags::empty())
                    .with_context(|| format!("unmount {}", p.display()))?;
            }
            fsck(v.fs, &device).with_context(|| format!("round {round}: {}", v.id))?;
            for t in &v.targets {
                n.node_unpublish_volume(unpublish_req(&v.id, t)).await?;
            }
            n.node_unstage_volume(unstage_req(&v.id, &v.staging)).await?;
            controller
                .delete_volume(csi::DeleteVolumeRequest {
                    volume_id: v.id.clone(),
                    ..Default::default()
                })
                .await?;
        }
    }

    // The busy volume's writer never saw an error, and every record is there.
    stop.store(true, Ordering::SeqCst);
    let written = log.join().expect("writer thread")?;
    let text = std::fs::read_to_string(busy.targets[0].join("log"))?;
    let lines: Vec<&str> = text.lines().collect();
    ensure!(
        lines.len() as u64 == written,
        "{} records read, {written} written",
        lines.len()
    );
    for (i, l) in lines.iter().enumerate() {
        ensure!(*l == format!("record {i:08}"), "record {i} reads {l:?}");
    }
    eprintln!(
        "{written} fsynced records through {} kills of floe-csi",
        KILL_AFTER.len()
    );
    let mut n = NodeClient::new(connect(&node.socket()).await?);
    n.node_unpublish_volume(unpublish_req(&busy.id, &busy.targets[0]))
        .await?;
    n.node_unstage_volume(unstage_req(&busy.id, &busy.staging)).await?;
    let leftover: Vec<MountEntry> = mounts()?
        .into_iter()
        .filter(|m| m.mount_point.starts_with(node.dir.path()))
        .collect();
    ensure!(leftover.is_empty(), "mounts left under the scratch dir: {leftover:?}");
    Ok(())
}

/// A restart of the data plane under volumes staged through CSI: their I/O
/// goes on, and a volume taken over by the successor still grows online
/// (the device of a resumed attachment, then its file system).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_restart_under_csi_volumes_keeps_their_io_and_growth() -> Result<()> {
    if !common::privileged("csi data-plane restart") {
        return Ok(());
    }
    if !common::tool_present("mkfs.xfs") {
        common::skip_or_fail("csi data-plane restart: needs mkfs.xfs");
        return Ok(());
    }
    let mut node = Node::start()?;
    let mut controller = ControllerClient::new(connect(&node.socket()).await?);
    let mut n = NodeClient::new(connect(&node.socket()).await?);
    // XFS: it grows online without CAP_SYS_RESOURCE, which ext4 needs.
    let v = Vol {
        id: "restart-xfs".into(),
        fs: "xfs",
        staging: node.path("restart/staging"),
        targets: [node.path("restart/t0"), node.path("restart/t1")],
    };
    controller
        .create_volume(create_req(&v.id, SIZE, mount_cap(v.fs)))
        .await?;
    n.node_stage_volume(stage_req(&v)).await?;
    n.node_publish_volume(publish_req(&v, &v.targets[0])).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let log = writer(v.targets[0].join("log"), Arc::clone(&stop));

    node.restart_serve()?;
    let status = common::plane::PlaneClient::new(&node.path("run/dataplane.sock"))?.status()?;
    ensure!(
        status.took_over.len() == 1,
        "the successor took the volume over: {:?}",
        status.took_over
    );

    let before = rustix::fs::statvfs(&v.targets[0])?;
    let grown = controller
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: v.id.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: SIZE + (200 << 20),
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(grown.capacity_bytes == SIZE + (200 << 20) && grown.node_expansion_required);
    n.node_expand_volume(csi::NodeExpandVolumeRequest {
        volume_id: v.id.clone(),
        volume_path: v.targets[0].display().to_string(),
        ..Default::default()
    })
    .await?;
    let after = rustix::fs::statvfs(&v.targets[0])?;
    let bytes = |s: &rustix::fs::StatVfs| s.f_blocks * s.f_frsize;
    ensure!(
        bytes(&after) > bytes(&before) + (150 << 20),
        "the file system grew on the taken-over device: {} -> {} bytes",
        bytes(&before),
        bytes(&after)
    );

    stop.store(true, Ordering::SeqCst);
    let written = log.join().expect("writer thread")?;
    let text = std::fs::read_to_string(v.targets[0].join("log"))?;
    ensure!(text.lines().count() as u64 == written, "every fsynced record is there");
    ensure!(written > 0, "the writer wrote");
    n.node_unpublish_volume(unpublish_req(&v.id, &v.targets[0])).await?;
    let device = device_of(&node, &v.id)?.context("still attached")?;
    n.node_unstage_volume(unstage_req(&v.id, &v.staging)).await?;
    ensure!(device_of(&node, &v.id)?.is_none(), "detached");
    ensure!(!device.exists() || !mounts()?.iter().any(|m| m.source == device.display().to_string()));
    controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: v.id.clone(),
            ..Default::default()
        })
        .await?;
    Ok(())
}
