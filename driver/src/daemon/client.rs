//! A blocking client of the local API, for the CSI server and tests.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::api::{Quiesced, Reply, Request, Response, SnapshotInfo, Status, VolumeInfo, WireError};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket failed (the data plane is not running, or restarting).
    #[error("{op} the data-plane socket {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The socket.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not a response of this API.
    #[error("the data plane answered something that is not a response")]
    Decode(#[source] serde_json::Error),
    /// The data plane refused or failed the request.
    #[error("the data plane refused the request")]
    Api(#[source] WireError),
    /// A response of another request's kind.
    #[error("the data plane answered {0} to a request expecting another reply")]
    Unexpected(&'static str),
}

impl ClientError {
    /// The API's error, when the data plane answered one.
    pub fn api(&self) -> Option<&WireError> {
        match self {
            ClientError::Api(w) => Some(w),
            _ => None,
        }
    }
}

/// A connection to `<run-dir>/dataplane.sock`.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// How long a call may take by default (attach runs mkfs-free but may wait
/// on a loop device; restore copies a whole snapshot).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

impl Client {
    /// Connects to the API socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let io = |op| {
            move |source| ClientError::Io {
                op,
                path: path.to_owned(),
                source,
            }
        };
        let stream = UnixStream::connect(path).map_err(io("connect to"))?;
        stream
            .set_read_timeout(Some(DEFAULT_TIMEOUT))
            .map_err(io("set a timeout on"))?;
        let writer = stream.try_clone().map_err(io("clone"))?;
        Ok(Client {
            path: path.to_owned(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sets how long a call may wait for its answer.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.writer
            .set_read_timeout(Some(timeout))
            .map_err(|source| ClientError::Io {
                op: "set a timeout on",
                path: self.path.clone(),
                source,
            })
    }

    /// Sends one raw line and reads the response (tests of bad input).
    pub fn call_line(&mut self, line: &str) -> Result<Response, ClientError> {
        let io = |op| {
            let path = self.path.clone();
            move |source| ClientError::Io { op, path, source }
        };
        let mut out = line.trim_end().as_bytes().to_vec();
        out.push(b'\n');
        self.writer.write_all(&out).map_err(io("write to"))?;
        let mut answer = String::new();
        let n = self.reader.read_line(&mut answer).map_err(io("read from"))?;
        if n == 0 {
            return Err(io("read from")(std::io::ErrorKind::UnexpectedEof.into()));
        }
        serde_json::from_str(&answer).map_err(ClientError::Decode)
    }

    /// Sends a request and returns its reply.
    pub fn call(&mut self, req: &Request) -> Result<Reply, ClientError> {
        let line = serde_json::to_string(req).expect("requests always encode");
        match self.call_line(&line)? {
            Response::Ok(r) => Ok(r),
            Response::Error(e) => Err(ClientError::Api(e)),
        }
    }

    fn volume(&mut self, req: &Request) -> Result<VolumeInfo, ClientError> {
        match self.call(req)? {
            Reply::Volume(v) => Ok(v),
            _ => Err(ClientError::Unexpected("another reply than a volume")),
        }
    }

    /// Creates a volume.
    pub fn create(
        &mut self,
        volume: &str,
        size_bytes: u64,
        block_size: Option<u64>,
        mode: Option<&str>,
    ) -> Result<VolumeInfo, ClientError> {
        self.volume(&Request::Create {
            volume: volume.into(),
            size_bytes,
            block_size,
            mode: mode.map(Into::into),
        })
    }

    /// Deletes a volume.
    pub fn delete(&mut self, volume: &str) -> Result<(), ClientError> {
        self.call(&Request::Delete { volume: volume.into() }).map(|_| ())
    }

    /// Attaches a volume; its `attachment.device` is the block device.
    pub fn attach(&mut self, volume: &str) -> Result<VolumeInfo, ClientError> {
        self.volume(&Request::Attach { volume: volume.into() })
    }

    /// Detaches a volume; whether it was attached.
    pub fn detach(&mut self, volume: &str) -> Result<bool, ClientError> {
        match self.call(&Request::Detach { volume: volume.into() })? {
            Reply::Detached { was_attached, .. } => Ok(was_attached),
            _ => Err(ClientError::Unexpected("another reply than detached")),
        }
    }

    /// Grows a volume.
    pub fn expand(&mut self, volume: &str, size_bytes: u64) -> Result<VolumeInfo, ClientError> {
        self.volume(&Request::Expand {
            volume: volume.into(),
            size_bytes,
        })
    }

    /// Every volume.
    pub fn list(&mut self) -> Result<Vec<VolumeInfo>, ClientError> {
        match self.call(&Request::List {})? {
            Reply::Volumes(v) => Ok(v),
            _ => Err(ClientError::Unexpected("another reply than volumes")),
        }
    }

    /// The data plane's state.
    pub fn status(&mut self) -> Result<Status, ClientError> {
        match self.call(&Request::Status {})? {
            Reply::Status(s) => Ok(s),
            _ => Err(ClientError::Unexpected("another reply than status")),
        }
    }

    /// Freezes the file system mounted at `path`.
    pub fn quiesce(&mut self, path: &Path, timeout_ms: Option<u64>) -> Result<Quiesced, ClientError> {
        match self.call(&Request::Quiesce {
            path: path.to_owned(),
            timeout_ms,
        })? {
            Reply::Quiesced(q) => Ok(q),
            _ => Err(ClientError::Unexpected("another reply than quiesced")),
        }
    }

    /// Thaws a quiesce; the mount point.
    pub fn thaw(&mut self, token: &str) -> Result<PathBuf, ClientError> {
        match self.call(&Request::Thaw { token: token.into() })? {
            Reply::Thawed { path, .. } => Ok(path),
            _ => Err(ClientError::Unexpected("another reply than thawed")),
        }
    }

    /// Takes a local snapshot.
    pub fn snapshot(&mut self, volume: &str, name: &str) -> Result<SnapshotInfo, ClientError> {
        match self.call(&Request::Snapshot {
            volume: volume.into(),
            name: name.into(),
        })? {
            Reply::Snapshot(s) => Ok(s),
            _ => Err(ClientError::Unexpected("another reply than a snapshot")),
        }
    }

    /// Creates `volume` from snapshot `snapshot` of `from_volume`.
    pub fn restore(&mut self, volume: &str, from_volume: &str, snapshot: &str) -> Result<VolumeInfo, ClientError> {
        self.volume(&Request::Restore {
            volume: volume.into(),
            from_volume: from_volume.into(),
            snapshot: snapshot.into(),
            size_bytes: None,
            mode: None,
        })
    }
}

/// Starts a thread that asks the data plane at `socket` for its status every
/// `interval` and logs it (or that it is unreachable): what a node plugin
/// does to show the data plane's health, never in the I/O path.
pub fn spawn_status_watch(socket: PathBuf, interval: Duration) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("floe-dataplane-watch".into()).spawn(move || {
        let mut was_up = None;
        loop {
            match Client::connect(&socket).and_then(|mut c| c.status()) {
                Ok(s) => {
                    let attached = s.volumes.iter().filter(|v| v.attachment.is_some()).count();
                    tracing::info!(
                        pid = s.pid,
                        api_version = s.api_version,
                        volumes = s.volumes.len(),
                        attached,
                        frozen = s.frozen.len(),
                        holder_reachable = s.holder_reachable,
                        "data plane status"
                    );
                    was_up = Some(true);
                }
                Err(e) => {
                    if was_up != Some(false) {
                        tracing::warn!(socket = %socket.display(), error = %crate::node::plane::error::chain(&e), "data plane not reachable");
                    }
                    was_up = Some(false);
                }
            }
            std::thread::sleep(interval);
        }
    })
}
