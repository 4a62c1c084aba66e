//! The data-plane daemon: `floe-dataplane serve`, the long-lived process
//! that serves every attached volume's I/O on a node, apart from the CSI
//! server, and survives its own restarts without an I/O error.
//!
//! # Processes
//! ```text
//!  floe-csi (node)  ──dataplane.sock──▶  floe-dataplane serve  ──holder.sock──▶  floe-dataplane holder
//!   (not in the I/O path)                 FUSE workers, engines,                  keeps every /dev/fuse fd
//!                                         the CSI catalog
//! ```
//! Killing or restarting `floe-csi` touches no I/O and no bookkeeping: it
//! only calls this process's API, whose `NodeVolumes` service runs the
//! node's operations on [`crate::node::local::LocalVolumes`] over this
//! process's own `Volumes` (a CSI volume is one of them, owned by `csi`).
//! `serve` hands every `/dev/fuse` fd to the holder before the fd's
//! first read ([`crate::dataplane::handover`]), so when `serve` dies, by
//! SIGTERM or SIGKILL, the kernel keeps every connection and queues the
//! requests, and the next `serve` takes the connections over.
//!
//! # The API
//! A unix socket, `<run-dir>/dataplane.sock` (mode 0600 whatever the
//! umask; peers other than root and this process's uid are refused,
//! connections bounded in number and idle time: see `server`), serving
//! gRPC (`proto/node.proto`): `NodeVolumes`, the node's operations — the
//! one service definition `floe-csi` calls here and a controller in split
//! mode calls over TLS — `DataPlane` ([`service`]), this process's
//! state and the freeze of a volume's file system, and `NodeAdmin`
//! ([`replicate::admin`]), pairing for replication and the node's steps of
//! a group freeze ([`replicate`] hosts the streams and DR groups). The FUSE workers stay
//! plain threads; the API runs on a small tokio runtime of its own (two
//! workers, a bounded blocking pool, 1 MiB stacks: the process locks its
//! memory), so a slow or hostile client costs a task, never an I/O thread.
//! `grpcurl -plaintext -unix /run/floe/dataplane.sock list` shows it by
//! hand (with the protos, as the server has no reflection). Clients:
//! [`client`] and `node::rpc::client::RemoteVolumes::local`.
//!
//! # Operations
//! Per-volume serialisation (`volumes`): every operation takes its
//! volume's slot lock and no other, except the cut across volumes (a group
//! snapshot), which takes its members' slots in id order and holds them
//! through its freeze (an O(1) mark per member while frozen) and the copy
//! that follows the thaw (I/O never takes a slot, so the volumes' I/O goes
//! on during the copy). Quiesce and thaw (`freeze`) take no volume lock at
//! all.
//!
//! # Restart without I/O errors
//! At start `serve`:
//! 1. takes `flock` on `<run-dir>/serve.lock`, waiting for a predecessor
//!    that is still exiting (two processes never serve one connection or
//!    open one store);
//! 2. reads `<run-dir>/attached.json` (volume → FUSE mount point, loop
//!    device; rewritten durably at every attach and detach, and before an
//!    attach starts, so an attach cut short by a crash is found and undone,
//!    and the next attach of the volume clears its leftovers) and, for each
//!    volume, takes its fds and `INIT` parameters from the holder, reopens
//!    the engine from disk (`Primary::open`: the incarnation is bumped and
//!    every write-intent region is dirty again), starts its own request
//!    loop from the saved parameters and sends `FUSE_NOTIFY_RESEND`, so the
//!    requests the dead process had read are queued again and replayed
//!    (block reads and writes are idempotent at the same offset);
//! 3. thaws every file system a predecessor left frozen
//!    (`<run-dir>/frozen/`), only now, because thawing a floe volume's file
//!    system needs its FUSE connection served;
//! 4. starts the freeze watchdog and the API.
//!
//! On SIGTERM, `serve` thaws what it froze, stops taking API requests
//! (waiting for those under way), flushes every engine and holds its lock so
//! that it stops between two requests, abandons its FUSE servers without
//! unmounting (`FuseServer::abandon`) and exits. Requests it read but did
//! not answer are resent to the successor. A SIGKILL skips all of that and
//! costs nothing more: acknowledged writes are in the store's files (a
//! flush made them durable), requests in flight are resent, and the engine
//! recovers its dirty set from its write-intent record.
//!
//! # If the holder dies
//! While `serve` lives, nothing happens to I/O: `serve` holds its own fds.
//! Only the safety net is gone: `status` reports `holder_reachable: false`
//! and `serve` logs it. Attach refuses to attach without a holder. If
//! `serve` then stops, by SIGTERM or crash, the last fd of each connection
//! closes, the kernel aborts the connection, and every filesystem on a floe
//! loop device gets I/O errors (ext4 remounts read-only or shuts down): the
//! next `serve` finds the connections gone and reports those volumes
//! `broken`. Recovery: restart the holder first; then each volume must be
//! unstaged and staged again (kubelet does that when the pod is recreated):
//! unmount the file system, `detach` (which cleans the dead FUSE mount and
//! the loop device), `attach`, mount — the data is intact on disk, only the
//! running pods saw errors. To avoid it: never restart the holder while
//! volumes are attached (it is a few hundred lines with nothing to
//! upgrade), and drain the node before touching it; a holder restarted
//! while `serve` runs does not get the running connections' fds back (the
//! FUSE workers own them), so restart `serve` only after the volumes were
//! re-staged.

pub mod client;
mod metrics;
pub mod replicate;
mod server;
mod service;

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use rustix::fs::FlockOperation;

use floe_proto::node as wire;
pub use replicate::{Replication, ReplicationConfig};
pub use server::ApiLimits;
use tonic::service::Routes;

use crate::node::rpc::server::{NodeVolumesServer, NodeVolumesService};

use crate::dataplane::fuse::FuseConfig;
use crate::dataplane::handover::HolderLink;
use crate::dataplane::{localsock, mounttable};
use crate::node::error::Error as NodeError;
use crate::node::local::LocalVolumes;
pub use crate::node::plane::attachment::{AttachedFile, AttachedRecord};
pub use crate::node::plane::error::{chain, PlaneError};
pub use crate::node::plane::files;
use crate::node::plane::files::RunPaths;
pub use crate::node::plane::freeze::FrozenRecord;
use crate::node::plane::freeze::{self, Freezer};
pub use crate::node::plane::volumes::VolumeRecord;
use crate::node::plane::volumes::Volumes;

/// How `serve` is set up.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Volumes' data and metadata (`<data-dir>/volumes/<id>`).
    pub data_dir: PathBuf,
    /// Sockets, locks and run-time records (see [`files::RunPaths`]).
    pub run_dir: PathBuf,
    /// FUSE settings of every volume.
    pub fuse: FuseConfig,
    /// Bounds of the API's connections.
    pub api: ApiLimits,
    /// How this node replicates.
    pub replication: ReplicationConfig,
    /// Where to serve the Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// A configuration `serve` cannot run with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A directory given as a relative path.
    #[error("{flag} {path} must be an absolute path")]
    Relative {
        /// The flag.
        flag: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// FUSE settings out of range.
    #[error("FUSE settings")]
    Fuse(#[source] crate::dataplane::fuse::FuseError),
    /// API limits of zero.
    #[error("API limits {0:?}: at least one connection and a non-zero idle timeout")]
    Api(ApiLimits),
}

impl ServeConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (flag, path) in [("--data-dir", &self.data_dir), ("--run-dir", &self.run_dir)] {
            if !path.is_absolute() {
                return Err(ConfigError::Relative {
                    flag,
                    path: path.clone(),
                });
            }
        }
        if self.api.max_connections == 0 || self.api.idle_timeout.is_zero() {
            return Err(ConfigError::Api(self.api));
        }
        self.fuse.validate().map_err(ConfigError::Fuse)
    }
}

/// A serving data plane.
pub struct Daemon {
    run: RunPaths,
    volumes: Arc<Volumes>,
    csi: LocalVolumes,
    freezer: Arc<Freezer>,
    started: SystemTime,
    took_over: Vec<String>,
    holder_ok: AtomicBool,
    api: ApiLimits,
    replication_cfg: ReplicationConfig,
    metrics_listen: Option<std::net::SocketAddr>,
    replication: OnceLock<Arc<Replication>>,
    /// The process's metrics (replication links so far).
    registry: prometheus::Registry,
    data_dir: PathBuf,
    /// Holds `serve.lock` for the life of the process.
    _lock: File,
}

impl Daemon {
    /// Starts serving: waits for a predecessor to exit, takes its volumes
    /// over, thaws leftovers, starts the watchdog. The API starts with
    /// [`Daemon::serve_api`].
    pub fn start(cfg: &ServeConfig) -> Result<Arc<Self>, NodeError> {
        let run = RunPaths::new(&cfg.run_dir);
        for dir in [
            run.dir.clone(),
            run.dir.join("fuse"),
            run.frozen(),
            cfg.data_dir.clone(),
        ] {
            localsock::private_dir(&dir).map_err(PlaneError::io("create (mode 0700)", &dir))?;
        }
        let lock = take_lock(&run)?;
        let volumes = Arc::new(Volumes::load(&cfg.data_dir, &run, cfg.fuse.clone())?);
        let took_over = volumes.take_over()?;
        if !took_over.is_empty() {
            tracing::info!(volumes = ?took_over, "took over from the previous data plane");
        }
        let csi = LocalVolumes::open(&cfg.data_dir, Arc::clone(&volumes))?;
        let thawed = freeze::thaw_leftovers(&run.frozen());
        if !thawed.is_empty() {
            tracing::warn!(paths = ?thawed, "thawed file systems left frozen");
        }
        let daemon = Arc::new(Daemon {
            freezer: Freezer::new(&run.frozen())?,
            holder_ok: AtomicBool::new(holder_reachable(&run)),
            run,
            volumes,
            csi,
            started: SystemTime::now(),
            took_over,
            api: cfg.api,
            replication_cfg: cfg.replication.clone(),
            metrics_listen: cfg.metrics_listen,
            replication: OnceLock::new(),
            registry: prometheus::Registry::new(),
            data_dir: cfg.data_dir.clone(),
            _lock: lock,
        });
        let d = Arc::clone(&daemon);
        std::thread::Builder::new()
            .name("floe-watchdog".into())
            .spawn(move || d.freezer.watchdog())
            .map_err(PlaneError::io("start the freeze watchdog", "thread"))?;
        let d = Arc::clone(&daemon);
        std::thread::Builder::new()
            .name("floe-holder-watch".into())
            .spawn(move || d.watch_holder())
            .map_err(PlaneError::io("start the holder watch", "thread"))?;
        Ok(daemon)
    }

    /// Binds `<run-dir>/dataplane.sock` and serves the API from a runtime
    /// of its own.
    pub fn serve_api(self: &Arc<Self>) -> Result<(), NodeError> {
        let path = self.run.api_socket();
        let runtime = server::runtime().map_err(PlaneError::io("start the API runtime", &path))?;
        let hub = Replication::start(
            &self.data_dir,
            &self.replication_cfg,
            self.csi.clone(),
            Arc::clone(&self.volumes),
            runtime.handle().clone(),
            &self.registry,
        )?;
        let _ = self.replication.set(Arc::clone(&hub));
        if let Some(addr) = self.metrics_listen {
            metrics::serve(addr, self.registry.clone(), runtime.handle())
                .map_err(PlaneError::io("serve the metrics on", addr.to_string()))?;
        }
        let routes = Routes::new(NodeVolumesServer::new(NodeVolumesService::new(Arc::new(
            self.csi.clone(),
        ))))
        .add_service(service::DataPlaneService::server(Arc::clone(self)))
        .add_service(replicate::admin::AdminService::server(hub, Arc::clone(&self.freezer)));
        Ok(server::listen(routes, &path, self.api, runtime)?)
    }

    /// The node's replication, once the API serves.
    pub fn replication(&self) -> Option<&Arc<Replication>> {
        self.replication.get()
    }

    /// Refuses a quiesce of anything but the file system of a volume this
    /// data plane has attached (a foreign mount, `/`).
    fn check_floe_mount(&self, path: &std::path::Path) -> Result<(), PlaneError> {
        let table = mounttable::table().map_err(PlaneError::io("read the mount table", "/proc/self/mountinfo"))?;
        let devices: Vec<(u32, u32)> = self
            .volumes
            .list()
            .iter()
            .filter_map(|v| v.attachment.as_ref())
            .filter_map(|a| mounttable::device_number(&a.device).ok())
            .collect();
        floe_mount(&table, path, &devices)
    }

    /// The node's CSI objects (the test hooks of the group cut are there).
    pub fn csi(&self) -> &LocalVolumes {
        &self.csi
    }

    /// The data plane's state.
    pub fn status(&self) -> wire::GetStatusResponse {
        wire::GetStatusResponse {
            pid: std::process::id(),
            started_unix_ms: files::unix_ms(self.started),
            holder_reachable: self.holder_ok.load(Ordering::Relaxed),
            took_over: self.took_over.clone(),
            volumes: self.volumes.list().iter().map(service::volume_to_wire).collect(),
            frozen: self.freezer.list().iter().map(service::frozen_to_wire).collect(),
        }
    }

    /// Exits in favour of a successor (SIGTERM): thaws what it froze, then
    /// leaves every volume's connection to the holder.
    pub fn hand_over(&self) -> ! {
        self.freezer.thaw_all();
        self.volumes.hand_over()
    }

    fn watch_holder(&self) {
        loop {
            std::thread::sleep(Duration::from_secs(2));
            let ok = holder_reachable(&self.run);
            if self.holder_ok.swap(ok, Ordering::Relaxed) != ok {
                if ok {
                    tracing::info!(socket = %self.run.holder_socket().display(), "the fd holder answers again");
                } else {
                    tracing::error!(socket = %self.run.holder_socket().display(), "the fd holder does not answer: I/O goes on, but a restart of this process would now end every attached volume's connection");
                }
            }
        }
    }
}

/// Whether the top mount at `path` in `table` is a file system on one of
/// `devices` (the attached volumes' loop devices).
fn floe_mount(
    table: &[mounttable::MountEntry],
    path: &std::path::Path,
    devices: &[(u32, u32)],
) -> Result<(), PlaneError> {
    let m = mounttable::mount_at(table, path).ok_or_else(|| PlaneError::NotMounted(path.to_owned()))?;
    if m.mount_point != path || !devices.contains(&(m.major, m.minor)) {
        return Err(PlaneError::NotAFloeVolume {
            path: path.to_owned(),
            what: format!("{} from {} at {}", m.fs_type, m.source, m.mount_point.display()),
        });
    }
    Ok(())
}

fn holder_reachable(run: &RunPaths) -> bool {
    HolderLink::connect(&run.holder_socket(), "probe").is_ok()
}

/// `flock` on `serve.lock`, waiting for a predecessor still exiting.
fn take_lock(run: &RunPaths) -> Result<File, PlaneError> {
    let path = run.lock();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(PlaneError::io("open the serve lock", &path))?;
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            tracing::info!(pid = holder.trim(), "waiting for the previous data plane to exit");
            loop {
                match rustix::fs::flock(&file, FlockOperation::LockExclusive) {
                    Ok(()) => break,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(PlaneError::io("lock", &path)(e.into())),
                }
            }
        }
        Err(e) => return Err(PlaneError::io("lock", &path)(e.into())),
    }
    file.set_len(0).map_err(PlaneError::io("truncate", &path))?;
    std::io::Write::write_all(&mut &file, format!("{}\n", std::process::id()).as_bytes())
        .map_err(PlaneError::io("write", &path))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn quiesce_takes_only_a_floe_volumes_own_mount_point() {
        let table = mounttable::parse_mountinfo(
            "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
             40 22 7:3 / /mnt/vol rw,relatime shared:2 - ext4 /dev/loop3 rw\n\
             41 22 7:9 / /mnt/foreign rw,relatime shared:3 - ext4 /dev/loop9 rw\n",
        );
        let floe = [(7, 3)];
        assert!(floe_mount(&table, Path::new("/mnt/vol"), &floe).is_ok());
        for refused in ["/", "/mnt/foreign"] {
            let e = floe_mount(&table, Path::new(refused), &floe).expect_err(refused);
            assert!(matches!(e, PlaneError::NotAFloeVolume { .. }), "{refused}: {e}");
        }
        assert!(matches!(
            floe_mount(&table, Path::new("/nowhere"), &floe),
            Err(PlaneError::NotMounted(_))
        ));
    }
}
