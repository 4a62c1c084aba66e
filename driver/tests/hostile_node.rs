//! A node that a hostile neighbour cannot abuse: each defect of issue 8 as
//! a case that failed on the code before its fix.
//!
//! The hostile local user is an unprivileged uid (`nobody`, or a system
//! user the test creates when there is none). Its connections are made
//! from a thread of this test that dropped its own credentials
//! (`setresuid` on the thread, as the kernel does it: the rest of the
//! process stays root), so the kernel checks the socket's mode and the
//! server sees that uid in `SO_PEERCRED`, exactly as for a separate
//! process of that user.
//!
//! Needs root, /dev/fuse, loop devices, mkfs.ext4 and unshare: in CI (`CI`
//! set) their absence is a failure, elsewhere the test is skipped with a
//! note. Every mount and loop device under the scratch dirs is swept even
//! when a case fails; child processes are killed by their guards.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use floe_driver::cli::PluginMode;
use floe_driver::csi::controller::ControllerService;
use floe_driver::csi::node::NodeService;
use floe_driver::csi::Plugin;
use floe_driver::node::rpc::client::RemoteVolumes;
use floe_driver::node::volumes::{GroupSpec, NodeVolumes, SnapshotSpec, Source, VolumeSpec};
use floe_proto::csi;
use floe_proto::csi::controller_server::Controller;
use floe_proto::csi::node_server::Node;
use tonic::{Code, Request};

mod common;

use common::csi::{block_cap, create_req, mount_cap, sweep, unpublish_req, unstage_req, wait_for_socket};
use common::csi::{Harness, DATAPLANE};
use common::plane::PlaneClient;

const MIB: i64 = 1 << 20;
const CSI_BIN: &str = env!("CARGO_BIN_EXE_floe-csi");

fn ready(test: &str) -> bool {
    if !common::privileged(test) {
        return false;
    }
    for tool in ["mkfs.ext4", "unshare", "losetup"] {
        if !common::tool_present(tool) {
            common::skip_or_fail(&format!("{test}: needs {tool}"));
            return false;
        }
    }
    true
}

// ---------------------------------------------------------------------------
// The hostile user.

/// The uid and gid of an unprivileged user: `nobody`, or `floe-hostile`
/// (created as a system user when neither exists).
fn hostile_user() -> Result<(u32, u32)> {
    fn id_of(user: &str) -> Option<(u32, u32)> {
        let q = |flag: &str| -> Option<u32> {
            let out = Command::new("id").arg(flag).arg(user).output().ok()?;
            out.status.success().then_some(())?;
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        Some((q("-u")?, q("-g")?))
    }
    if let Some(ids) = id_of("nobody").filter(|(u, _)| *u != 0) {
        return Ok(ids);
    }
    if id_of("floe-hostile").is_none() {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "floe-hostile",
            ])
            .output()?;
        ensure!(
            out.status.success() || id_of("floe-hostile").is_some(),
            "useradd: {out:?}"
        );
    }
    id_of("floe-hostile").context("the hostile user exists")
}

/// Runs `f` on a thread whose credentials are the hostile user's (the
/// process stays root). The thread ends with `f`.
fn as_hostile<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    use rustix::process::{Gid, Uid};
    let (uid, gid) = hostile_user()?;
    std::thread::spawn(move || -> Result<T> {
        let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
        rustix::thread::set_thread_groups(&[]).context("drop the supplementary groups")?;
        rustix::thread::set_thread_res_gid(gid, gid, gid).context("setresgid on the thread")?;
        rustix::thread::set_thread_res_uid(uid, uid, uid).context("setresuid on the thread")?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the hostile thread panicked"))?
}

fn mode_of(path: &Path) -> Result<u32> {
    Ok(std::fs::symlink_metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .permissions()
        .mode()
        & 0o7777)
}

/// Polls `cond` every 20 ms until it holds, for at most `limit`.
fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if cond()? {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// A node of separate processes (holder, serve, optionally floe-csi).

struct Procs {
    dir: tempfile::TempDir,
    holder: Option<Child>,
    serve: Option<Child>,
    csi: Option<Child>,
    serves: usize,
}

/// `bin args…` under `umask`, through `sh` (the umask is the process's).
fn under_umask(umask: u32, bin: &str, args: &[&str], log: &Path) -> Result<Child> {
    Ok(Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask:03o} && exec \"$0\" \"$@\""))
        .arg(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?)
}

impl Procs {
    fn start(prefix: &str, umask: u32) -> Result<Self> {
        let dir = common::scratch(prefix)?;
        let mut p = Procs {
            dir,
            holder: None,
            serve: None,
            csi: None,
            serves: 0,
        };
        p.start_holder(umask)?;
        p.start_serve(umask)?;
        Ok(p)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn start_holder(&mut self, umask: u32) -> Result<()> {
        let run = self.path("run");
        let child = under_umask(
            umask,
            DATAPLANE,
            &["holder", "--run-dir", &run.display().to_string()],
            &self.path(&format!("holder-{}.log", self.serves)),
        )?;
        self.holder = Some(child);
        wait_for_socket(&run.join("holder.sock"))
    }

    fn start_serve(&mut self, umask: u32) -> Result<()> {
        let _ = std::fs::remove_file(self.path("run/dataplane.sock"));
        self.serves += 1;
        let (run, data) = (self.path("run"), self.path("data"));
        let child = under_umask(
            umask,
            DATAPLANE,
            &[
                "serve",
                "--run-dir",
                &run.display().to_string(),
                "--data-dir",
                &data.display().to_string(),
            ],
            &self.path(&format!("serve-{}.log", self.serves)),
        )?;
        self.serve = Some(child);
        wait_for_socket(&run.join("dataplane.sock"))
    }

    /// `floe-csi --mode=node` on `endpoint` under `umask`.
    fn start_csi(&mut self, umask: u32, endpoint: &Path) -> Result<()> {
        let child = under_umask(
            umask,
            CSI_BIN,
            &[
                "--mode=node",
                "--endpoint",
                &format!("unix://{}", endpoint.display()),
                "--dataplane-socket",
                &self.path("run/dataplane.sock").display().to_string(),
                "--node-id",
                "floe-hostile-node",
            ],
            &self.path("csi.log"),
        )?;
        self.csi = Some(child);
        wait_for_socket(endpoint)
    }

    /// SIGKILL to `serve` and the holder: every connection ends.
    fn kill_both(&mut self) -> Result<()> {
        for c in [self.serve.take(), self.holder.take()].into_iter().flatten() {
            let mut c = c;
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// A plugin in `--mode=all` in this process over the daemon's socket.
    fn plugin(&self) -> Arc<Plugin> {
        let volumes = RemoteVolumes::local(&self.path("run/dataplane.sock"));
        Arc::new(Plugin::new(PluginMode::All, "floe-hostile-node", 8, Arc::new(volumes)))
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        if let Some(mut c) = self.csi.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        sweep(self.dir.path());
        for mut c in [self.serve.take(), self.holder.take()].into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        sweep(self.dir.path());
    }
}

fn stage_req(id: &str, staging: &Path, cap: csi::VolumeCapability) -> csi::NodeStageVolumeRequest {
    csi::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap),
        ..Default::default()
    }
}

fn publish_req(id: &str, staging: &Path, target: &Path, cap: csi::VolumeCapability) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap),
        ..Default::default()
    }
}

async fn create(c: &ControllerService, name: &str, size: i64, cap: csi::VolumeCapability) -> Result<String> {
    Ok(c.create_volume(Request::new(create_req(name, size, cap)))
        .await?
        .into_inner()
        .volume
        .context("a volume")?
        .volume_id)
}

// ---------------------------------------------------------------------------
// Defect 1: modes from the umask; peers not checked.

/// Under umask 000 the holder, the daemon and `floe-csi` still make their
/// sockets 0600 and their directories 0700, so the hostile user cannot
/// even connect (before the fix: an unprivileged user took a volume's
/// `/dev/fuse` fds from the holder and deleted a root-owned file through
/// the CSI socket).
#[test]
fn defect1_sockets_and_directories_are_private_whatever_the_umask() -> Result<()> {
    if !ready("defect1_sockets_and_directories_are_private_whatever_the_umask") {
        return Ok(());
    }
    let mut p = Procs::start("hostile-umask", 0)?;
    let endpoint = p.path("plugins/floe/csi.sock");
    p.start_csi(0, &endpoint)?;
    for (path, want) in [
        (p.path("run"), 0o700),
        (p.path("data"), 0o700),
        (p.path("run/holder.sock"), 0o600),
        (p.path("run/dataplane.sock"), 0o600),
        (p.path("plugins/floe"), 0o700),
        (endpoint.clone(), 0o600),
    ] {
        let got = mode_of(&path)?;
        ensure!(got == want, "{} has mode {got:o}, not {want:o}", path.display());
    }
    for sock in [p.path("run/dataplane.sock"), endpoint] {
        let s = sock.clone();
        let refused = as_hostile(move || UnixStream::connect(&s).err().map(|e| e.kind()))?;
        ensure!(
            refused == Some(std::io::ErrorKind::PermissionDenied),
            "the hostile user connected to {} ({refused:?})",
            sock.display()
        );
    }
    let holder = p.path("run/holder.sock");
    let refused = as_hostile(move || seqpacket_connect(&holder).err().map(|e| e.kind()))?;
    ensure!(
        refused == Some(std::io::ErrorKind::PermissionDenied),
        "the hostile user connected to the holder ({refused:?})"
    );
    Ok(())
}

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn seqpacket_connect(path: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let sock = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
    rustix::net::connect(&sock, &SocketAddrUnix::new(path)?)?;
    Ok(sock)
}

/// Even with their modes opened up (a mistake of the operator's), the
/// holder and the daemon answer only root and their own uid: the hostile
/// user's connection is closed unanswered, and the refusal is logged.
#[test]
fn defect1_holder_and_daemon_check_their_peers_credentials() -> Result<()> {
    if !ready("defect1_holder_and_daemon_check_their_peers_credentials") {
        return Ok(());
    }
    let p = Procs::start("hostile-peercred", 0o022)?;
    std::fs::set_permissions(p.path("run"), std::fs::Permissions::from_mode(0o755))?;
    for sock in ["run/holder.sock", "run/dataplane.sock"] {
        std::fs::set_permissions(p.path(sock), std::fs::Permissions::from_mode(0o666))?;
    }
    // The holder: TAKE of a key, as a thief would.
    let holder = p.path("run/holder.sock");
    let answer = as_hostile(move || -> std::io::Result<usize> {
        let sock = seqpacket_connect(&holder)?;
        rustix::net::send(&sock, b"\x03pvc-1", rustix::net::SendFlags::NOSIGNAL)?;
        let mut buf = [0u8; 64];
        Ok(rustix::net::recv(&sock, &mut buf, rustix::net::RecvFlags::empty())?.0)
    })?;
    ensure!(
        matches!(answer, Ok(0) | Err(_)),
        "the holder answered the hostile user ({answer:?} bytes)"
    );
    // The daemon: an HTTP/2 client preface, which a served connection
    // answers with the server's SETTINGS.
    let api = p.path("run/dataplane.sock");
    let answer = as_hostile(move || -> std::io::Result<Vec<u8>> {
        let mut s = UnixStream::connect(&api)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(HTTP2_PREFACE)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    })?;
    ensure!(
        answer.as_ref().map_or(true, |a| a.is_empty()),
        "the daemon answered the hostile user: {answer:?}"
    );
    // Root still gets answers.
    PlaneClient::new(&p.path("run/dataplane.sock"))?.status()?;
    seqpacket_connect(&p.path("run/holder.sock"))?;
    for log in ["holder-0.log", "serve-1.log"] {
        let path = p.path(log);
        wait_until(
            &format!("{log} names the refused peer"),
            Duration::from_secs(20),
            || Ok(std::fs::read_to_string(&path)?.contains("refused a peer")),
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Defect 2: ids with a path traversal.

const TRAVERSAL: &str = "../../../../../../../../tmp/floe-hostile-traversal";
/// Where the snapshot image of [`TRAVERSAL`] lands if it is taken as a path.
const VICTIM: &str = "/tmp/floe-hostile-traversal.img";

/// A snapshot id, a volume id, a group id and a content source that climb
/// out of the data dir are refused with INVALID_ARGUMENT on the node, over
/// mutual TLS from a CA-signed peer and locally (before the fix: the
/// snapshot's image was written to `/tmp/…-traversal.img`, and deleting
/// the snapshot removed whatever file that path named).
#[tokio::test(flavor = "multi_thread")]
async fn defect2_ids_that_climb_out_of_the_data_dir_are_refused() -> Result<()> {
    if !ready("defect2_ids_that_climb_out_of_the_data_dir_are_refused") {
        return Ok(());
    }
    let victim = Path::new(VICTIM);
    let dir = common::scratch("hostile-ids")?;
    let pki = common::tls::pki(&dir.path().join("pki"))?;
    let node = common::split::Node::start("hostile-ids", &pki.node).await?;
    let remote: Arc<dyn NodeVolumes> = Arc::new(node.remote(&pki.controller, None)?);
    let local = Arc::clone(node.local());
    let c = ControllerService::new(Arc::clone(&node.harness.plugin));
    let vol = create(&c, "hostile-src", 16 * MIB, block_cap()).await?;
    let result = async {
        for (how, volumes) in [("remote", &remote), ("local", &local)] {
            let spec = SnapshotSpec {
                id: TRAVERSAL.into(),
                name: "evil".into(),
                volume: vol.clone(),
            };
            let e = volumes.snapshot(spec).await.err();
            ensure!(
                !victim.exists(),
                "{how}: a snapshot wrote {} outside the data dir",
                victim.display()
            );
            ensure!(
                e.as_ref().map(|e| e.code()) == Some(Code::InvalidArgument),
                "{how}: snapshot {TRAVERSAL:?} answered {e:?}"
            );
            std::fs::write(victim, b"root's file")?;
            let e = volumes.delete_snapshot(TRAVERSAL).await.err();
            ensure!(victim.exists(), "{how}: delete_snapshot removed {}", victim.display());
            ensure!(
                e.as_ref().map(|e| e.code()) == Some(Code::InvalidArgument),
                "{how}: delete_snapshot answered {e:?}"
            );
            std::fs::remove_file(victim)?;
            let mut spec = VolumeSpec {
                id: "hostile-restore".into(),
                name: "hostile-restore".into(),
                size_bytes: 16 << 20,
                params: Default::default(),
                source: Some(Source::Snapshot(TRAVERSAL.into())),
                node: None,
            };
            let e = volumes.create(spec.clone()).await.err();
            ensure!(
                e.as_ref().map(|e| e.code()) == Some(Code::InvalidArgument),
                "{how}: create from snapshot {TRAVERSAL:?} answered {e:?}"
            );
            spec.source = None;
            spec.id = TRAVERSAL.into();
            let e = volumes.create(spec).await.err();
            ensure!(
                e.as_ref().map(|e| e.code()) == Some(Code::InvalidArgument),
                "{how}: create of volume {TRAVERSAL:?} answered {e:?}"
            );
            let group = GroupSpec {
                id: "hostile-group".into(),
                name: "hostile-group".into(),
                members: vec![SnapshotSpec {
                    id: TRAVERSAL.into(),
                    name: "m".into(),
                    volume: vol.clone(),
                }],
            };
            let e = volumes.create_group(group).await.err();
            ensure!(!victim.exists(), "{how}: a group snapshot wrote {}", victim.display());
            ensure!(
                e.as_ref().map(|e| e.code()) == Some(Code::InvalidArgument),
                "{how}: group member {TRAVERSAL:?} answered {e:?}"
            );
            for id_call in ["delete", "attach", "detach", "expand", "delete_group"] {
                let e = match id_call {
                    "delete" => volumes.delete(TRAVERSAL).await.err(),
                    "attach" => volumes.attach(TRAVERSAL).await.err(),
                    "detach" => volumes.detach(TRAVERSAL).await.err(),
                    "expand" => volumes.expand(TRAVERSAL, 32 << 20).await.err(),
                    _ => volumes.delete_group(TRAVERSAL).await.err(),
                };
                ensure!(
                    e.as_ref().map(|e| e.code()) == Some(Code::InvalidArgument),
                    "{how}: {id_call} of {TRAVERSAL:?} answered {e:?}"
                );
            }
        }
        // And from the CO's side: every id field of the controller RPCs.
        let e = c
            .delete_snapshot(Request::new(csi::DeleteSnapshotRequest {
                snapshot_id: TRAVERSAL.into(),
                ..Default::default()
            }))
            .await
            .err();
        ensure!(
            e.as_ref().map(|e| e.code()) == Some(Code::InvalidArgument),
            "DeleteSnapshot answered {e:?}"
        );
        let e = c
            .delete_volume(Request::new(csi::DeleteVolumeRequest {
                volume_id: TRAVERSAL.into(),
                ..Default::default()
            }))
            .await
            .err();
        ensure!(
            e.as_ref().map(|e| e.code()) == Some(Code::InvalidArgument),
            "DeleteVolume answered {e:?}"
        );
        Ok(())
    }
    .await;
    let _ = std::fs::remove_file(victim);
    result
}

// ---------------------------------------------------------------------------
// Defect 3: NodeUnpublishVolume deletes what it is given.

/// NodeUnpublishVolume of a volume that does not exist is NOT_FOUND and
/// touches nothing; of a real volume, it unmounts and removes only its own
/// publication (before the fix: it deleted a root-owned file named as the
/// target, for any volume id).
#[tokio::test(flavor = "multi_thread")]
async fn defect3_unpublish_touches_only_a_publication_of_that_volume() -> Result<()> {
    if !ready("defect3_unpublish_touches_only_a_publication_of_that_volume") {
        return Ok(());
    }
    let h = Harness::new("hostile-unpublish")?;
    let precious = h.path("precious");
    std::fs::write(&precious, b"root's file")?;
    let e = h
        .node
        .node_unpublish_volume(Request::new(unpublish_req("no-such-volume", &precious)))
        .await
        .err();
    ensure!(
        precious.exists(),
        "unpublish of an unknown volume deleted {}",
        precious.display()
    );
    ensure!(
        e.as_ref().map(|e| e.code()) == Some(Code::NotFound),
        "unpublish of an unknown volume answered {e:?}"
    );
    // A known volume, but the target is not its publication.
    let id = create(&h.controller, "hostile-unpub", 16 * MIB, block_cap()).await?;
    let e = h
        .node
        .node_unpublish_volume(Request::new(unpublish_req(&id, &precious)))
        .await
        .err();
    ensure!(
        precious.exists(),
        "unpublish deleted {}, not a publication",
        precious.display()
    );
    ensure!(
        e.as_ref().map(|e| e.code()) == Some(Code::FailedPrecondition),
        "unpublish of a foreign file answered {e:?}"
    );
    // A foreign mount at the target stays mounted.
    let foreign = h.path("foreign");
    std::fs::create_dir_all(&foreign)?;
    rustix::mount::mount("tmpfs", &foreign, "tmpfs", rustix::mount::MountFlags::empty(), None)?;
    let e = h
        .node
        .node_unpublish_volume(Request::new(unpublish_req(&id, &foreign)))
        .await
        .err();
    ensure!(
        floe_driver::dataplane::mounttable::is_mount_point(&foreign)?,
        "unpublish unmounted a foreign tmpfs"
    );
    ensure!(
        e.as_ref().map(|e| e.code()) == Some(Code::FailedPrecondition),
        "unpublish of a foreign mount answered {e:?}"
    );
    // Its own publication goes, and a retry is fine.
    let (staging, target) = (h.path("staging"), h.path("pod/dev"));
    h.node
        .node_stage_volume(Request::new(stage_req(&id, &staging, block_cap())))
        .await?;
    h.node
        .node_publish_volume(Request::new(publish_req(&id, &staging, &target, block_cap())))
        .await?;
    for _ in 0..2 {
        h.node
            .node_unpublish_volume(Request::new(unpublish_req(&id, &target)))
            .await?;
        ensure!(!target.exists(), "the publication is still there");
    }
    h.node
        .node_unstage_volume(Request::new(unstage_req(&id, &staging)))
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Defect 4: NodeStageVolume says OK for a broken attachment.

/// Holder and data plane both killed: the connection is gone and the next
/// data plane finds the volume broken. A retried NodeStageVolume must say
/// so (FAILED_PRECONDITION), not OK (before the fix: OK, so kubelet took a
/// dead device for a healthy one).
#[tokio::test(flavor = "multi_thread")]
async fn defect4_stage_refuses_a_broken_attachment() -> Result<()> {
    if !ready("defect4_stage_refuses_a_broken_attachment") {
        return Ok(());
    }
    let mut p = Procs::start("hostile-broken", 0o022)?;
    let plugin = p.plugin();
    let (c, n) = (ControllerService::new(Arc::clone(&plugin)), NodeService::new(plugin));
    let id = create(&c, "hostile-broken", 64 * MIB, mount_cap("ext4")).await?;
    let staging = p.path("staging");
    n.node_stage_volume(Request::new(stage_req(&id, &staging, mount_cap("ext4"))))
        .await?;
    p.kill_both()?;
    p.start_holder(0o022)?;
    p.start_serve(0o022)?;
    let e = n
        .node_stage_volume(Request::new(stage_req(&id, &staging, mount_cap("ext4"))))
        .await
        .err();
    ensure!(
        e.as_ref().map(|e| e.code()) == Some(Code::FailedPrecondition),
        "stage of a broken volume answered {e:?}"
    );
    let target = p.path("pod");
    let e = n
        .node_publish_volume(Request::new(publish_req(&id, &staging, &target, mount_cap("ext4"))))
        .await
        .err();
    ensure!(
        e.as_ref().map(|e| e.code()) == Some(Code::FailedPrecondition),
        "publish of a broken volume answered {e:?}"
    );
    // Recovery as documented: unmount, unstage, stage again.
    rustix::mount::unmount(&staging, rustix::mount::UnmountFlags::DETACH)?;
    n.node_unstage_volume(Request::new(unstage_req(&id, &staging))).await?;
    n.node_stage_volume(Request::new(stage_req(&id, &staging, mount_cap("ext4"))))
        .await?;
    n.node_unstage_volume(Request::new(unstage_req(&id, &staging))).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Defect 5: one thread per connection, no cap, no idle timeout.

/// Whether the other end closed `s` (bytes it sent before are read and
/// dropped).
fn closed_by_peer(s: &UnixStream) -> Result<bool> {
    s.set_nonblocking(true)?;
    let mut buf = [0u8; 4096];
    loop {
        match (&mut &*s).read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(true),
            Err(e) => return Err(e.into()),
        }
    }
}

/// 300 idle connections to the daemon's API leave at most its cap (32)
/// open — the others are closed to make room — and a client arriving after
/// them is still answered (before the fix: one memory-locked thread each;
/// 2,000 took 4.2 GB and starved the others).
#[test]
fn defect5_idle_api_connections_are_bounded() -> Result<()> {
    if !ready("defect5_idle_api_connections_are_bounded") {
        return Ok(());
    }
    let h = Harness::new("hostile-conns")?;
    let sock = h.path("run/dataplane.sock");
    PlaneClient::new(&sock)?.status()?;
    let idle: Vec<UnixStream> = (0..300).map(|_| UnixStream::connect(&sock)).collect::<Result<_, _>>()?;
    // Accepted in order: once this one is answered, all before it were
    // accepted (and, to make room, most of them closed).
    PlaneClient::new(&sock)?
        .status()
        .context("a client after 300 idle connections")?;
    let mut open = idle.len();
    wait_until("at most 32 idle connections stay open", Duration::from_secs(30), || {
        open = idle
            .iter()
            .map(closed_by_peer)
            .filter(|c| matches!(c, Ok(false)))
            .count();
        Ok(open <= 32)
    })
    .with_context(|| format!("{open} of 300 idle connections are open"))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Defect 6: quiesce freezes any mount point.

/// Quiesce refuses a mount point that is not a floe volume's file system
/// (before the fix: a foreign ext4 was frozen, and `/` passed the same
/// check). `/` itself is not tried here: on the old code that froze the
/// machine's root file system.
#[test]
fn defect6_quiesce_refuses_file_systems_that_are_not_floe_volumes() -> Result<()> {
    if !ready("defect6_quiesce_refuses_file_systems_that_are_not_floe_volumes") {
        return Ok(());
    }
    let h = Harness::new("hostile-quiesce")?;
    let image = h.path("foreign.img");
    std::fs::File::create(&image)?.set_len(64 << 20)?;
    let out = Command::new("mkfs.ext4").arg("-q").arg("-F").arg(&image).output()?;
    ensure!(out.status.success(), "mkfs.ext4: {out:?}");
    let mnt = h.path("foreign");
    std::fs::create_dir_all(&mnt)?;
    let out = Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(&image)
        .arg(&mnt)
        .output()?;
    ensure!(out.status.success(), "mount -o loop: {out:?}");
    let client = PlaneClient::new(&h.path("run/dataplane.sock"))?;
    match client.quiesce(&mnt, Some(Duration::from_secs(2))) {
        Ok(q) => {
            let _ = client.thaw(&q.token);
            bail!("a foreign ext4 at {} was frozen", mnt.display());
        }
        Err(e) => ensure!(
            matches!(e.code(), Code::InvalidArgument | Code::FailedPrecondition),
            "quiesce of a foreign mount failed with {e:?}"
        ),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Defect 7: paths taken as given.

/// Relative staging paths, and staging or target paths through a symlink,
/// are INVALID_ARGUMENT (before the fix: a relative path was mounted
/// relative to the plugin's working directory, and a staging path that was
/// a symlink to /etc mounted the volume over /etc).
#[tokio::test(flavor = "multi_thread")]
async fn defect7_csi_paths_must_be_absolute_and_free_of_symlinks() -> Result<()> {
    if !ready("defect7_csi_paths_must_be_absolute_and_free_of_symlinks") {
        return Ok(());
    }
    let h = Harness::new("hostile-paths")?;
    let id = create(&h.controller, "hostile-paths", 64 * MIB, mount_cap("ext4")).await?;
    // Relative: it would resolve into the scratch dir, from the cwd.
    let cwd = std::env::current_dir()?;
    let up = "../".repeat(cwd.components().count().saturating_sub(1));
    let relative = format!(
        "{up}{}",
        h.path("rel-stage").display().to_string().trim_start_matches('/')
    );
    let e = h
        .node
        .node_stage_volume(Request::new(stage_req(&id, Path::new(&relative), mount_cap("ext4"))))
        .await
        .err();
    ensure!(
        e.as_ref().map(|e| e.code()) == Some(Code::InvalidArgument),
        "stage at the relative path {relative:?} answered {e:?}"
    );
    // Through a symlink.
    let elsewhere = h.path("elsewhere");
    std::fs::create_dir_all(&elsewhere)?;
    let link = h.path("link");
    std::os::unix::fs::symlink(&elsewhere, &link)?;
    for staging in [link.clone(), link.join("stage")] {
        let e = h
            .node
            .node_stage_volume(Request::new(stage_req(&id, &staging, mount_cap("ext4"))))
            .await
            .err();
        ensure!(
            !floe_driver::dataplane::mounttable::is_mount_point(&elsewhere)?,
            "the volume was mounted through the symlink at {}",
            elsewhere.display()
        );
        ensure!(
            e.as_ref().map(|e| e.code()) == Some(Code::InvalidArgument),
            "stage at {} answered {e:?}",
            staging.display()
        );
    }
    let dotted = format!("{}/./x/../stage", h.path("").display());
    let e = h
        .node
        .node_stage_volume(Request::new(stage_req(&id, Path::new(&dotted), mount_cap("ext4"))))
        .await
        .err();
    ensure!(
        e.as_ref().map(|e| e.code()) == Some(Code::InvalidArgument),
        "stage at {dotted:?} answered {e:?}"
    );
    // A good stage, then a publish whose target is a symlink.
    let staging = h.path("staging");
    h.node
        .node_stage_volume(Request::new(stage_req(&id, &staging, mount_cap("ext4"))))
        .await?;
    let e = h
        .node
        .node_publish_volume(Request::new(publish_req(&id, &staging, &link, mount_cap("ext4"))))
        .await
        .err();
    ensure!(
        !floe_driver::dataplane::mounttable::is_mount_point(&elsewhere)?,
        "the volume was published through the symlink"
    );
    ensure!(
        e.as_ref().map(|e| e.code()) == Some(Code::InvalidArgument),
        "publish at a symlink answered {e:?}"
    );
    h.node
        .node_unstage_volume(Request::new(unstage_req(&id, &staging)))
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Defect 8: EIO for a full disk; volumes overcommitted.

/// Mounts a fresh `mb`-MiB ext4 at `<dir>/data` (on a loop device over a
/// file in the dir, both swept with it).
fn small_data_fs(dir: &Path, mb: u64) -> Result<()> {
    let image = dir.join("data.img");
    std::fs::File::create(&image)?.set_len(mb << 20)?;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0"])
        .arg(&image)
        .output()?;
    ensure!(out.status.success(), "mkfs.ext4: {out:?}");
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let out = Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(&image)
        .arg(&data)
        .output()?;
    ensure!(out.status.success(), "mount -o loop: {out:?}");
    Ok(())
}

/// On a 256 MiB data disk, a second 150 MiB volume is refused (before the
/// fix: both were made, each checked alone against the free space); and a
/// writer that fills the disk gets ENOSPC, not EIO.
#[tokio::test(flavor = "multi_thread")]
async fn defect8_full_data_disk_is_enospc_and_volumes_are_not_overcommitted() -> Result<()> {
    if !ready("defect8_full_data_disk_is_enospc_and_volumes_are_not_overcommitted") {
        return Ok(());
    }
    let h = Harness::new_with("hostile-space", |dir| small_data_fs(dir, 256))?;
    let a = create(&h.controller, "hostile-space-a", 150 * MIB, block_cap()).await?;
    let e = create(&h.controller, "hostile-space-b", 150 * MIB, block_cap())
        .await
        .err();
    let code = e
        .as_ref()
        .and_then(|e| e.downcast_ref::<tonic::Status>())
        .map(|s| s.code());
    ensure!(
        code == Some(Code::ResourceExhausted),
        "a second 150 MiB volume on a 256 MiB disk answered {e:?}"
    );
    // Fill the disk, then write where the volume has no block yet.
    let staging = h.path("staging");
    h.node
        .node_stage_volume(Request::new(stage_req(&a, &staging, block_cap())))
        .await?;
    let device = h
        .plugin
        .volumes
        .volume(&a)
        .await?
        .and_then(|v| v.attachment)
        .context("attached")?
        .device;
    let filler = h.path("data/filler");
    {
        let mut f = std::fs::File::create(&filler)?;
        let chunk = vec![0x5au8; 1 << 20];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let _ = f.sync_all();
    }
    let got = direct_write(&device, 100 << 20, 1 << 20);
    let _ = std::fs::remove_file(&filler);
    let errno = got.err().and_then(|e| e.raw_os_error());
    ensure!(
        errno == Some(libc_enospc()),
        "a write to a volume on a full disk got errno {errno:?}, not ENOSPC"
    );
    h.node
        .node_unstage_volume(Request::new(unstage_req(&a, &staging)))
        .await?;
    Ok(())
}

fn libc_enospc() -> i32 {
    rustix::io::Errno::NOSPC.raw_os_error()
}

/// `len` bytes at `offset` of `device`, with O_DIRECT, then fsync.
fn direct_write(device: &Path, offset: u64, len: usize) -> std::io::Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(device)?;
    // O_DIRECT wants an aligned buffer: a 4 KiB-aligned slice of a larger one.
    let mut raw = vec![0xa5u8; len + 4096];
    let skip = raw.as_ptr().align_offset(4096);
    f.write_all_at(&raw[skip..skip + len], offset)?;
    raw.clear();
    f.sync_all()
}

// ---------------------------------------------------------------------------
// Defect 9: unstage blocks while another mount namespace holds the FUSE mount.

/// A process in its own mount namespace (`unshare -m`, as containerd makes
/// for every pod) holds a copy of the volume's FUSE mount. NodeUnstageVolume
/// still ends within a bound (before the fix: it waited for the FUSE
/// workers without bound, 133 s until that process went).
#[tokio::test(flavor = "multi_thread")]
async fn defect9_unstage_is_bounded_when_another_namespace_holds_the_fuse_mount() -> Result<()> {
    if !ready("defect9_unstage_is_bounded_when_another_namespace_holds_the_fuse_mount") {
        return Ok(());
    }
    let h = Harness::new("hostile-unshare")?;
    let id = create(&h.controller, "hostile-unshare", 16 * MIB, block_cap()).await?;
    let staging = h.path("staging");
    h.node
        .node_stage_volume(Request::new(stage_req(&id, &staging, block_cap())))
        .await?;
    let holder = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()?;
    let holder = KillOnDrop(holder);
    let pid = holder.0.id();
    let ours = std::fs::read_link("/proc/self/ns/mnt")?;
    wait_until("the unshared process runs sleep", Duration::from_secs(20), || {
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt"))?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        Ok(ns != ours && exe.file_name().is_some_and(|n| n == "sleep"))
    })?;
    let started = Instant::now();
    let unstaged = tokio::time::timeout(
        Duration::from_secs(60),
        h.node.node_unstage_volume(Request::new(unstage_req(&id, &staging))),
    )
    .await;
    let took = started.elapsed();
    drop(holder);
    match unstaged {
        Ok(r) => {
            r?;
        }
        Err(_) => bail!("NodeUnstageVolume still blocked after {took:?}"),
    }
    let v = h.plugin.volumes.volume(&id).await?.context("the volume")?;
    ensure!(v.attachment.is_none(), "still attached after unstage: {v:?}");
    Ok(())
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------
// Defect 10: mount options checked only after attach and mkfs.

/// An unknown mount option is INVALID_ARGUMENT, and nothing was attached or
/// formatted for it (before the fix: the volume was attached and formatted,
/// then the mount failed and came back INTERNAL).
#[tokio::test(flavor = "multi_thread")]
async fn defect10_bad_mount_options_are_refused_before_attach() -> Result<()> {
    if !ready("defect10_bad_mount_options_are_refused_before_attach") {
        return Ok(());
    }
    let h = Harness::new("hostile-options")?;
    let id = create(&h.controller, "hostile-options", 64 * MIB, mount_cap("ext4")).await?;
    let staging = h.path("staging");
    for bad in ["nosuchoption", "data=nonsense", "errors=explode", "context=\"x\""] {
        let mut cap = mount_cap("ext4");
        if let Some(csi::volume_capability::AccessType::Mount(m)) = cap.access_type.as_mut() {
            m.mount_flags = vec![bad.into()];
        }
        let e = h
            .node
            .node_stage_volume(Request::new(stage_req(&id, &staging, cap)))
            .await
            .err();
        ensure!(
            e.as_ref().map(|e| e.code()) == Some(Code::InvalidArgument),
            "mount option {bad:?} answered {e:?}"
        );
        let v = h.plugin.volumes.volume(&id).await?.context("the volume")?;
        ensure!(v.attachment.is_none(), "mount option {bad:?}: the volume was attached");
    }
    // Good options still work.
    let mut cap = mount_cap("ext4");
    if let Some(csi::volume_capability::AccessType::Mount(m)) = cap.access_type.as_mut() {
        m.mount_flags = vec![
            "noatime".into(),
            "data=ordered,errors=remount-ro".into(),
            "discard".into(),
        ];
    }
    h.node
        .node_stage_volume(Request::new(stage_req(&id, &staging, cap)))
        .await?;
    h.node
        .node_unstage_volume(Request::new(unstage_req(&id, &staging)))
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Path traversal in every id and name field of the CSI services.

/// Every id field of every RPC of the Controller, GroupController and Node
/// services refuses a path with INVALID_ARGUMENT (list filters may answer
/// an empty list instead), and names that are paths become safe ids.
#[tokio::test(flavor = "multi_thread")]
async fn every_id_field_of_every_csi_rpc_refuses_a_path() -> Result<()> {
    use floe_proto::csi::group_controller_server::GroupController;
    if !ready("every_id_field_of_every_csi_rpc_refuses_a_path") {
        return Ok(());
    }
    let h = Harness::new("hostile-rpcs")?;
    let vol = create(&h.controller, "hostile-rpcs", 16 * MIB, block_cap()).await?;
    let bad = TRAVERSAL.to_owned();
    let (c, g, n) = (&h.controller, &h.group, &h.node);
    let dir = h.path("paths");
    let (staging, target) = (dir.join("staging"), dir.join("target"));
    let code = |r: std::result::Result<(), tonic::Status>| r.err().map(|s| s.code());
    let mut results: Vec<(&str, Option<Code>)> = Vec::new();
    results.push((
        "DeleteVolume.volume_id",
        code(
            c.delete_volume(Request::new(csi::DeleteVolumeRequest {
                volume_id: bad.clone(),
                ..Default::default()
            }))
            .await
            .map(drop),
        ),
    ));
    results.push((
        "ControllerExpandVolume.volume_id",
        code(
            c.controller_expand_volume(Request::new(csi::ControllerExpandVolumeRequest {
                volume_id: bad.clone(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 32 * MIB,
                    limit_bytes: 0,
                }),
                ..Default::default()
            }))
            .await
            .map(drop),
        ),
    ));
    results.push((
        "ValidateVolumeCapabilities.volume_id",
        code(
            c.validate_volume_capabilities(Request::new(csi::ValidateVolumeCapabilitiesRequest {
                volume_id: bad.clone(),
                volume_capabilities: vec![block_cap()],
                ..Default::default()
            }))
            .await
            .map(drop),
        ),
    ));
    results.push((
        "CreateSnapshot.source_volume_id",
        code(
            c.create_snapshot(Request::new(csi::CreateSnapshotRequest {
                name: "hostile-snap".into(),
                source_volume_id: bad.clone(),
                ..Default::default()
            }))
            .await
            .map(drop),
        ),
    ));
    results.push((
        "DeleteSnapshot.snapshot_id",
        code(
            c.delete_snapshot(Request::new(csi::DeleteSnapshotRequest {
                snapshot_id: bad.clone(),
                ..Default::default()
            }))
            .await
            .map(drop),
        ),
    ));
    results.push((
        "GetSnapshot.snapshot_id",
        code(
            c.get_snapshot(Request::new(csi::GetSnapshotRequest {
                snapshot_id: bad.clone(),
                ..Default::default()
            }))
            .await
            .map(drop),
        ),
    ));
    for source in [
        csi::volume_content_source::Type::Snapshot(csi::volume_content_source::SnapshotSource {
            snapshot_id: bad.clone(),
        }),
        csi::volume_content_source::Type::Volume(csi::volume_content_source::VolumeSource { volume_id: bad.clone() }),
    ] {
        let mut req = create_req("hostile-restore", 16 * MIB, block_cap());
        req.volume_content_source = Some(csi::VolumeContentSource { r#type: Some(source) });
        results.push((
            "CreateVolume.volume_content_source",
            code(c.create_volume(Request::new(req)).await.map(drop)),
        ));
    }
    results.push((
        "CreateVolumeGroupSnapshot.source_volume_ids",
        code(
            g.create_volume_group_snapshot(Request::new(csi::CreateVolumeGroupSnapshotRequest {
                name: "hostile-group".into(),
                source_volume_ids: vec![vol.clone(), bad.clone()],
                ..Default::default()
            }))
            .await
            .map(drop),
        ),
    ));
    results.push((
        "DeleteVolumeGroupSnapshot.group_snapshot_id",
        code(
            g.delete_volume_group_snapshot(Request::new(csi::DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: bad.clone(),
                ..Default::default()
            }))
            .await
            .map(drop),
        ),
    ));
    results.push((
        "GetVolumeGroupSnapshot.group_snapshot_id",
        code(
            g.get_volume_group_snapshot(Request::new(csi::GetVolumeGroupSnapshotRequest {
                group_snapshot_id: bad.clone(),
                ..Default::default()
            }))
            .await
            .map(drop),
        ),
    ));
    results.push((
        "NodeStageVolume.volume_id",
        code(
            n.node_stage_volume(Request::new(stage_req(&bad, &staging, block_cap())))
                .await
                .map(drop),
        ),
    ));
    results.push((
        "NodeUnstageVolume.volume_id",
        code(
            n.node_unstage_volume(Request::new(unstage_req(&bad, &staging)))
                .await
                .map(drop),
        ),
    ));
    results.push((
        "NodePublishVolume.volume_id",
        code(
            n.node_publish_volume(Request::new(publish_req(&bad, &staging, &target, block_cap())))
                .await
                .map(drop),
        ),
    ));
    results.push((
        "NodeUnpublishVolume.volume_id",
        code(
            n.node_unpublish_volume(Request::new(unpublish_req(&bad, &target)))
                .await
                .map(drop),
        ),
    ));
    results.push((
        "NodeGetVolumeStats.volume_id",
        code(
            n.node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
                volume_id: bad.clone(),
                volume_path: target.display().to_string(),
                ..Default::default()
            }))
            .await
            .map(drop),
        ),
    ));
    results.push((
        "NodeExpandVolume.volume_id",
        code(
            n.node_expand_volume(Request::new(csi::NodeExpandVolumeRequest {
                volume_id: bad.clone(),
                volume_path: target.display().to_string(),
                ..Default::default()
            }))
            .await
            .map(drop),
        ),
    ));
    let wrong: Vec<String> = results
        .iter()
        .filter(|(_, c)| *c != Some(Code::InvalidArgument))
        .map(|(f, c)| format!("{f}: {c:?}"))
        .collect();
    ensure!(wrong.is_empty(), "a path as an id was not refused: {wrong:?}");
    // List filters find nothing.
    let listed = c
        .list_snapshots(Request::new(csi::ListSnapshotsRequest {
            snapshot_id: bad.clone(),
            source_volume_id: String::new(),
            ..Default::default()
        }))
        .await;
    ensure!(
        listed.as_ref().map_or_else(
            |s| s.code() == Code::InvalidArgument,
            |l| l.get_ref().entries.is_empty()
        ),
        "ListSnapshots by a path answered {listed:?}"
    );
    // Names are the CO's free text: a path as a name gives a safe id.
    let id = create(&h.controller, TRAVERSAL, 16 * MIB, block_cap()).await?;
    ensure!(
        floe_driver::model::ObjectId::parse("id", &id).is_ok(),
        "the name {TRAVERSAL:?} gave the id {id:?}"
    );
    let snap = c
        .create_snapshot(Request::new(csi::CreateSnapshotRequest {
            name: TRAVERSAL.into(),
            source_volume_id: id.clone(),
            ..Default::default()
        }))
        .await?
        .into_inner()
        .snapshot
        .context("a snapshot")?;
    ensure!(
        floe_driver::model::ObjectId::parse("id", &snap.snapshot_id).is_ok(),
        "the snapshot name {TRAVERSAL:?} gave the id {:?}",
        snap.snapshot_id
    );
    ensure!(!Path::new(VICTIM).exists(), "something wrote {VICTIM}");
    Ok(())
}

/// The API's bounds themselves, with small limits: a connection left idle
/// is closed after the idle timeout, and past the cap the connection idle
/// the longest is closed to make room for a caller.
#[test]
fn defect5_idle_connections_time_out_and_the_longest_idle_makes_room() -> Result<()> {
    use floe_driver::daemon::{ApiLimits, Daemon, ServeConfig};
    if !ready("defect5_idle_connections_time_out_and_the_longest_idle_makes_room") {
        return Ok(());
    }
    let dir = common::scratch("hostile-limits")?;
    let run = dir.path().join("run");
    let mut holder = KillOnDrop(common::csi::start_holder(&run, &dir.path().join("holder.log"))?);
    let idle_timeout = Duration::from_millis(1500);
    let cfg = ServeConfig {
        data_dir: dir.path().join("data"),
        run_dir: run.clone(),
        fuse: Default::default(),
        api: ApiLimits {
            max_connections: 4,
            idle_timeout,
        },
        replication: Default::default(),
        metrics_listen: None,
    };
    let daemon = Daemon::start(&cfg).map_err(|e| anyhow::anyhow!("start the data plane: {e}"))?;
    daemon
        .serve_api()
        .map_err(|e| anyhow::anyhow!("start the data plane's API: {e}"))?;
    let sock = run.join("dataplane.sock");
    let result = (|| -> Result<()> {
        // Idle: closed by the daemon after the timeout, not before.
        let opened = Instant::now();
        let mut idle = UnixStream::connect(&sock)?;
        idle.set_read_timeout(Some(Duration::from_secs(30)))?;
        idle.write_all(HTTP2_PREFACE)?;
        idle.read_to_end(&mut Vec::new())?;
        let after = opened.elapsed();
        ensure!(
            after >= idle_timeout - Duration::from_millis(100),
            "an idle connection was closed after {after:?}, before the {idle_timeout:?} timeout"
        );
        // Four idle connections fill the slots; a fifth caller is served,
        // and the first of the four is closed to make room.
        let mut first = UnixStream::connect(&sock)?;
        first.set_read_timeout(Some(Duration::from_secs(30)))?;
        // Answered with the server's SETTINGS: the daemon has accepted it
        // before the next ones.
        first.write_all(HTTP2_PREFACE)?;
        let n = first.read(&mut [0u8; 64])?;
        ensure!(n > 0, "the daemon closed a new connection unanswered");
        let others: Vec<UnixStream> = (0..3).map(|_| UnixStream::connect(&sock)).collect::<Result<_, _>>()?;
        PlaneClient::new(&sock)?.status().context("a caller past the cap")?;
        first
            .read_to_end(&mut Vec::new())
            .context("the longest-idle connection was not closed")?;
        drop(others);
        Ok(())
    })();
    drop(daemon);
    let _ = holder.0.kill();
    sweep(dir.path());
    result
}

/// Every id, name and token field of every `NodeAdmin` RPC (pairing, the
/// group freeze's steps, status, promote, demote, verify, rehearse) refuses
/// a path with INVALID_ARGUMENT, before anything is looked up or made; so
/// does a pairing that would retain more than 64 epochs.
#[tokio::test(flavor = "multi_thread")]
async fn every_id_field_of_every_node_admin_rpc_refuses_a_path() -> Result<()> {
    use floe_proto::node as wire;
    use floe_proto::replication::RoleGeneration;
    if !ready("every_id_field_of_every_node_admin_rpc_refuses_a_path") {
        return Ok(());
    }
    let h = Harness::new("hostile-admin")?;
    let channel = floe_driver::node::rpc::LocalChannel::new(&h.path("run/dataplane.sock")).get();
    let mut a = wire::node_admin_client::NodeAdminClient::new(channel);
    let bad = TRAVERSAL.to_owned();
    let generation = Some(RoleGeneration { counter: 9, site_id: 9 });
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64
        + 10_000;
    let member = |volume: &str| wire::GroupMember {
        volume: volume.into(),
        ..Default::default()
    };
    let pair = |group: &str, volume: &str| wire::PairRequest {
        group: group.into(),
        role: wire::Role::Primary.into(),
        members: vec![member(volume)],
        peer_address: "198.18.0.1:7443".into(),
        generation: None,
        retained_points: 0,
        ..Default::default()
    };
    // A DR pairing of one member, with a coordinator or hosted members.
    let dr_pair = |coordinator: &str, hosted: Vec<u32>| wire::PairRequest {
        role: wire::Role::Secondary.into(),
        peer_address: String::new(),
        generation,
        members: vec![wire::GroupMember {
            volume: "v".into(),
            block_size: 4096,
            blocks: 256,
            region_blocks: 64,
            mode: wire::ReplicationMode::Continuous.into(),
            ..Default::default()
        }],
        coordinator_address: coordinator.into(),
        hosted_members: hosted,
        ..pair("g", "v")
    };
    let code = |e: Option<tonic::Status>| e.map(|s| s.code());
    let results: Vec<(&str, Option<Code>)> = vec![
        ("Pair.group", code(a.pair(pair(&bad, "v")).await.err())),
        ("Pair.members.volume", code(a.pair(pair("g", &bad)).await.err())),
        (
            "Pair.members.peer_address",
            code(
                a.pair(wire::PairRequest {
                    members: vec![wire::GroupMember {
                        peer_address: bad.clone(),
                        ..member("v")
                    }],
                    ..pair("g", "v")
                })
                .await
                .err(),
            ),
        ),
        (
            "Pair.members.peer_address on a DR",
            code(
                a.pair(wire::PairRequest {
                    members: vec![wire::GroupMember {
                        peer_address: "198.18.0.2:7443".into(),
                        ..dr_pair("", Vec::new()).members[0].clone()
                    }],
                    ..dr_pair("", Vec::new())
                })
                .await
                .err(),
            ),
        ),
        (
            "Pair.coordinator_address",
            code(a.pair(dr_pair(&bad, Vec::new())).await.err()),
        ),
        (
            "Pair.coordinator_address without a port",
            code(a.pair(dr_pair("198.18.0.2", Vec::new())).await.err()),
        ),
        (
            "Pair.hosted_members past the members",
            code(a.pair(dr_pair("", vec![1])).await.err()),
        ),
        (
            "Pair.hosted_members twice",
            code(a.pair(dr_pair("", vec![0, 0])).await.err()),
        ),
        (
            "Pair.coordinator_address on a primary",
            code(
                a.pair(wire::PairRequest {
                    coordinator_address: "198.18.0.2:7444".into(),
                    ..pair("g", "v")
                })
                .await
                .err(),
            ),
        ),
        (
            "Pair.retained_points past 64",
            code(
                a.pair(wire::PairRequest {
                    retained_points: 65,
                    ..pair("g", "v")
                })
                .await
                .err(),
            ),
        ),
        (
            "Ready.volume",
            code(
                a.ready(wire::ReadyRequest {
                    volume: bad.clone(),
                    epoch: 1,
                })
                .await
                .err(),
            ),
        ),
        (
            "Quiesce.volumes",
            code(
                a.quiesce(wire::QuiesceRequest {
                    volumes: vec![bad.clone()],
                    token: "t1".into(),
                    deadline_unix_ms: deadline,
                })
                .await
                .err(),
            ),
        ),
        (
            "Quiesce.token",
            code(
                a.quiesce(wire::QuiesceRequest {
                    volumes: vec!["v".into()],
                    token: bad.clone(),
                    deadline_unix_ms: deadline,
                })
                .await
                .err(),
            ),
        ),
        (
            "Freeze.volume",
            code(
                a.freeze(wire::FreezeRequest {
                    volume: bad.clone(),
                    epoch: 1,
                    token: "t1".into(),
                })
                .await
                .err(),
            ),
        ),
        (
            "Freeze.token",
            code(
                a.freeze(wire::FreezeRequest {
                    volume: "v".into(),
                    epoch: 1,
                    token: bad.clone(),
                })
                .await
                .err(),
            ),
        ),
        (
            "Thaw.token",
            code(a.thaw(wire::ThawRequest { token: bad.clone() }).await.err()),
        ),
        (
            "Abort.volume",
            code(
                a.abort(wire::AbortRequest {
                    volume: bad.clone(),
                    epoch: 1,
                })
                .await
                .err(),
            ),
        ),
        (
            "Status.volume",
            code(a.status(wire::StatusRequest { volume: bad.clone() }).await.err()),
        ),
        (
            "Promote.group",
            code(
                a.promote(wire::PromoteRequest {
                    group: bad.clone(),
                    generation,
                    point: 0,
                })
                .await
                .err(),
            ),
        ),
        (
            "Demote.group",
            code(
                a.demote(wire::DemoteRequest {
                    group: bad.clone(),
                    generation,
                    discard_strays: false,
                })
                .await
                .err(),
            ),
        ),
        (
            "Verify.volume",
            code(
                a.verify(wire::VerifyRequest {
                    volume: bad.clone(),
                    epoch: 0,
                    bytes: 0,
                })
                .await
                .err(),
            ),
        ),
        (
            "Rehearse.group",
            code(a.rehearse(wire::RehearseRequest { group: bad.clone() }).await.err()),
        ),
    ];
    let wrong: Vec<&(&str, Option<Code>)> = results
        .iter()
        .filter(|(_, c)| *c != Some(Code::InvalidArgument))
        .collect();
    ensure!(wrong.is_empty(), "not refused as INVALID_ARGUMENT: {wrong:?}");
    ensure!(
        !Path::new("/tmp/floe-hostile-traversal").exists() && !Path::new(VICTIM).exists(),
        "a NodeAdmin call wrote outside the data dir"
    );
    Ok(())
}
