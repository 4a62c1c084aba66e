//! [`PlaneClient`]: one data plane's socket driven from plain (blocking)
//! test code — its `DataPlane` service and its `NodeVolumes`, each call
//! made on a runtime of the client's own, so it works inside and outside
//! an async test alike.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use floe_driver::daemon::client::DaemonClient;
use floe_driver::dataplane::mount::FsType;
use floe_driver::node::error::Result;
use floe_driver::node::params::VolumeParams;
use floe_driver::node::rpc::client::RemoteVolumes;
use floe_driver::node::volumes::{NodeVolumes, Snapshot, SnapshotSpec, Source, Volume, VolumeSpec};
use floe_engine::Mode;
use floe_proto::node as wire;

/// A client of the data plane at one socket.
pub struct PlaneClient {
    /// Taken in `Drop` (shut down in the background: the client may be
    /// dropped inside an async test, where a blocking shutdown panics).
    rt: Option<tokio::runtime::Runtime>,
    /// `NodeVolumes` on the socket.
    pub volumes: RemoteVolumes,
    /// `DataPlane` on the socket.
    pub daemon: DaemonClient,
}

impl PlaneClient {
    /// The data plane at `socket`; nothing is dialled yet.
    pub fn new(socket: &Path) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (volumes, daemon) = {
            let _entered = rt.enter();
            (RemoteVolumes::local(socket), DaemonClient::new(socket))
        };
        Ok(PlaneClient {
            rt: Some(rt),
            volumes,
            daemon,
        })
    }

    /// Runs `f` to completion on the client's runtime, from a thread of its
    /// own (so the caller may itself be on a runtime).
    pub fn block_on<F: Future + Send>(&self, f: F) -> F::Output
    where
        F::Output: Send,
    {
        let rt = self.rt.as_ref().expect("the runtime lives until drop");
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(f))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// `DataPlane.GetStatus`.
    pub fn status(&self) -> Result<wire::GetStatusResponse> {
        self.block_on(self.daemon.status())
    }

    /// `DataPlane.QuiesceMount`.
    pub fn quiesce(&self, path: &Path, timeout: Option<Duration>) -> Result<wire::FrozenMount> {
        self.block_on(self.daemon.quiesce(path, timeout))
    }

    /// `DataPlane.ThawMount`.
    pub fn thaw(&self, token: &str) -> Result<PathBuf> {
        self.block_on(self.daemon.thaw(token))
    }

    /// An empty ext4 volume `id` (its name too).
    pub fn create(&self, id: &str, size_bytes: u64, block_size: Option<u64>, mode: Option<Mode>) -> Result<Volume> {
        self.create_fs(id, size_bytes, block_size, mode, FsType::Ext4)
    }

    /// [`Self::create`] of a volume for file system `fs`.
    pub fn create_fs(
        &self,
        id: &str,
        size_bytes: u64,
        block_size: Option<u64>,
        mode: Option<Mode>,
        fs_type: FsType,
    ) -> Result<Volume> {
        let defaults = VolumeParams::default();
        let spec = VolumeSpec {
            id: id.into(),
            name: id.into(),
            size_bytes,
            params: VolumeParams {
                fs_type,
                block_size: block_size.unwrap_or(defaults.block_size),
                mode: mode.unwrap_or(defaults.mode),
            },
            source: None,
            node: None,
        };
        self.block_on(self.volumes.create(spec))
    }

    /// Volume `id`'s block device.
    pub fn attach(&self, id: &str) -> Result<PathBuf> {
        Ok(self.block_on(self.volumes.attach(id))?.device)
    }

    /// Tears volume `id`'s block device down.
    pub fn detach(&self, id: &str) -> Result<()> {
        self.block_on(self.volumes.detach(id))
    }

    /// Deletes volume `id`.
    pub fn delete(&self, id: &str) -> Result<()> {
        self.block_on(self.volumes.delete(id))
    }

    /// Grows volume `id`.
    pub fn expand(&self, id: &str, size_bytes: u64) -> Result<Volume> {
        self.block_on(self.volumes.expand(id, size_bytes))
    }

    /// Volume `id`, if it exists.
    pub fn volume(&self, id: &str) -> Result<Option<Volume>> {
        self.block_on(self.volumes.volume(id))
    }

    /// Every volume.
    pub fn list(&self) -> Result<Vec<Volume>> {
        self.block_on(self.volumes.volumes())
    }

    /// Snapshot `id` of `volume` (its name too).
    pub fn snapshot(&self, volume: &str, id: &str) -> Result<Snapshot> {
        let spec = SnapshotSpec {
            id: id.into(),
            name: id.into(),
            volume: volume.into(),
        };
        self.block_on(self.volumes.snapshot(spec))
    }

    /// A new volume `id` holding snapshot `snapshot`, with `params`.
    pub fn restore(&self, id: &str, snapshot: &str, size_bytes: u64, params: VolumeParams) -> Result<Volume> {
        let spec = VolumeSpec {
            id: id.into(),
            name: id.into(),
            size_bytes,
            params,
            source: Some(Source::Snapshot(snapshot.into())),
            node: None,
        };
        self.block_on(self.volumes.create(spec))
    }
}

impl Drop for PlaneClient {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
