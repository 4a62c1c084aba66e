//! One node of a site as real processes: `floe-dataplane holder` and
//! `floe-dataplane serve` with its own run and data directories, driven
//! over its socket ([`super::plane::PlaneClient`],
//! [`floe_driver::node::rpc::member::AdminClient`]). Everything it started
//! and mounted is undone on drop, pass or fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use floe_driver::dataplane::fsfreeze;
use floe_driver::dataplane::mount::{self, FsType};
use floe_driver::node::rpc::member::AdminClient;

use super::csi::{sweep, wait_for_socket, DATAPLANE};
use super::plane::PlaneClient;

/// Starts a command somewhere (e.g. inside a network namespace).
pub type Launch = std::sync::Arc<dyn Fn(&mut Command) -> std::io::Result<Child> + Send + Sync>;

/// One node's data plane.
pub struct Node {
    /// The node's name.
    pub name: String,
    /// Its directory (run, data, logs).
    pub dir: PathBuf,
    /// `serve`'s extra flags (replication).
    pub serve_args: Vec<String>,
    /// `serve`'s extra environment (`FLOE_POWER_CUT`).
    pub serve_env: Vec<(String, String)>,
    launch: Option<Launch>,
    holder: Option<Child>,
    serve: Option<Child>,
    mounts: Vec<PathBuf>,
}

impl Node {
    /// A node under `dir/name`; nothing started yet.
    pub fn new(dir: &Path, name: &str, serve_args: Vec<String>) -> Result<Self> {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(Node {
            name: name.into(),
            dir,
            serve_args,
            serve_env: Vec::new(),
            launch: None,
            holder: None,
            serve: None,
            mounts: Vec::new(),
        })
    }

    /// Starts this node's processes with `launch` (before [`Node::start`]).
    pub fn launch_with(&mut self, launch: Launch) {
        self.launch = Some(launch);
    }

    fn spawn(&self, cmd: &mut Command) -> std::io::Result<Child> {
        match &self.launch {
            Some(l) => l(cmd),
            None => cmd.spawn(),
        }
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/dataplane.sock")
    }

    /// A client of the node's socket.
    pub fn client(&self) -> Result<PlaneClient> {
        Ok(PlaneClient::new(&self.socket())?)
    }

    /// The node's `NodeAdmin`.
    pub fn admin(&self) -> AdminClient {
        AdminClient::local(&self.name, &self.socket())
    }

    fn log(&self, name: &str) -> Result<std::fs::File> {
        Ok(std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))?)
    }

    /// Starts the holder and `serve`, and waits until `serve` answers.
    pub fn start(&mut self) -> Result<()> {
        let run = self.dir.join("run");
        std::fs::create_dir_all(&run)?;
        let mut holder = Command::new(DATAPLANE);
        holder
            .arg("holder")
            .arg("--run-dir")
            .arg(&run)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log("holder.log")?);
        self.holder = Some(self.spawn(&mut holder).context("start the holder")?);
        wait_for_socket(&run.join("holder.sock"))?;
        self.start_serve()
    }

    /// Starts `serve` (again) and waits until this one answers.
    pub fn start_serve(&mut self) -> Result<()> {
        match self.start_serve_armed(None)? {
            None => Ok(()),
            Some(status) => bail!("serve of {} exited with {status}:\n{}", self.name, self.log_tail()),
        }
    }

    /// Starts `serve` (again), with failpoint `point` (`<name>@<n>`,
    /// `floe_driver::failpoint`) armed if given, and waits until this one
    /// answers (`None`) or has exited (its status: an armed point may be
    /// reached before it answers).
    pub fn start_serve_armed(&mut self, point: Option<&str>) -> Result<Option<std::process::ExitStatus>> {
        let mut serve = Command::new(DATAPLANE);
        serve
            .arg("serve")
            .arg("--run-dir")
            .arg(self.dir.join("run"))
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(&self.serve_args)
            .env("RUST_LOG", "info")
            .envs(self.serve_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log("serve.log")?);
        if let Some(point) = point {
            serve.env(floe_driver::failpoint::ENV, point);
        }
        let child = self.spawn(&mut serve).context("start serve")?;
        let pid = child.id();
        self.serve = Some(child);
        let client = self.client()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if client.status().is_ok_and(|s| s.pid == pid) {
                return Ok(None);
            }
            if let Some(status) = self.serve_exited()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                bail!(
                    "serve of {} does not answer after 30 s:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops `serve` with `signal` (SIGTERM: a handover; SIGKILL: a crash)
    /// and waits for it to exit.
    pub fn stop_serve(&mut self, signal: rustix::process::Signal) -> Result<std::process::ExitStatus> {
        let mut s = self.serve.take().context("serve is not running")?;
        rustix::process::kill_process(rustix::process::Pid::from_child(&s), signal)?;
        Ok(s.wait()?)
    }

    /// The threads of `serve` blocked in the kernel (state `D`), with their
    /// kernel stacks: what keeps a killed `serve` from exiting.
    pub fn serve_blocked_threads(&self) -> String {
        let Some(s) = self.serve.as_ref() else {
            return String::new();
        };
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", s.id())) else {
            return String::new();
        };
        let mut out = String::new();
        for t in tasks.flatten() {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // The state follows the parenthesised name.
            let state = stat
                .rsplit_once(") ")
                .map_or("", |(_, rest)| &rest[..1.min(rest.len())]);
            if state == "D" {
                let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                let stack = std::fs::read_to_string(t.path().join("stack")).unwrap_or_default();
                out += &format!("\n{} thread {:?} blocked in:\n{stack}", self.name, comm.trim());
            }
        }
        out
    }

    /// If `serve` was killed but cannot exit (a thread of its waits in the
    /// kernel on its own FUSE server: `docs/replication.md`, "Power
    /// cuts"), aborts this node's FUSE connections so every waiting call
    /// fails and the teardown can go on.
    fn abort_fuse_if_wedged(&self) {
        let Some(s) = self.serve.as_ref() else { return };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", s.id())).unwrap_or_default();
        if stat.rsplit_once(") ").is_none_or(|(_, rest)| !rest.starts_with('Z')) {
            return;
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let ours = fields.get(4).is_some_and(|m| Path::new(m).starts_with(&self.dir));
            let fuse = line.contains(" - fuse.floe ");
            if let (true, true, Some((_, minor))) = (ours, fuse, fields.get(2).and_then(|d| d.split_once(':'))) {
                let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
            }
        }
    }

    /// Whether `serve` has exited, with its status (it is then no longer
    /// this node's `serve`).
    pub fn serve_exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        let Some(s) = self.serve.as_mut() else {
            bail!("serve of {} is not running", self.name)
        };
        let status = s.try_wait()?;
        if status.is_some() {
            self.serve = None;
        }
        Ok(status)
    }

    /// SIGKILLs `serve` and the holder at once (the site is gone): the
    /// FUSE connections end, I/O on the volumes fails.
    pub fn kill_all(&mut self) -> Result<()> {
        for c in [self.serve.take(), self.holder.take()].into_iter().flatten() {
            let mut c = c;
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// The last lines of `serve`'s log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Formats ext4 on `device` and mounts it at `<dir>/mnt-<name>`.
    pub fn mount_ext4(&mut self, device: &Path, name: &str) -> Result<PathBuf> {
        self.mount_fs(device, name, FsType::Ext4)
    }

    /// [`Node::mount_ext4`] for file system `fs` (xfs with `nouuid`, as
    /// the node plugin stages it: a clone beside its source shares its UUID).
    pub fn mount_fs(&mut self, device: &Path, name: &str, fs: FsType) -> Result<PathBuf> {
        mount::format_if_empty(device, fs)?;
        let target = self.dir.join(format!("mnt-{name}"));
        let data = if fs == FsType::Xfs { "nouuid" } else { "" };
        let fs = mount::MountedFs::mount(device, &target, fs, rustix::mount::MountFlags::NOATIME, data)?;
        // Unmounted by the teardown, never by the guard.
        std::mem::forget(fs);
        self.mounts.push(target.clone());
        Ok(target)
    }

    /// Unmounts the file system at `target` (one [`Node::mount_ext4`] made).
    pub fn unmount(&mut self, target: &Path) -> Result<()> {
        mount::unmount_path(target)?;
        self.mounts.retain(|m| m != target);
        Ok(())
    }

    /// After [`Node::kill_all`]: detaches the file systems left on the
    /// dead volumes (their I/O fails) so the node can start again.
    pub fn drop_dead_mounts(&mut self) {
        for m in self.mounts.drain(..).rev() {
            let _ = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH);
        }
    }

    /// Stops everything: thaws and unmounts the file systems, stops
    /// `serve` (SIGTERM, then SIGKILL), the holder, and sweeps what is left.
    pub fn teardown(&mut self) {
        self.abort_fuse_if_wedged();
        for m in &self.mounts {
            let _ = fsfreeze::thaw(m);
        }
        for m in self.mounts.drain(..).rev() {
            if mount::unmount_path(&m).is_err() {
                let _ = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH);
            }
        }
        if let Some(mut s) = self.serve.take() {
            let _ = rustix::process::kill_process(rustix::process::Pid::from_child(&s), rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(s.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = s.kill();
            let _ = s.wait();
        }
        sweep(&self.dir);
        if let Some(mut h) = self.holder.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
        sweep(&self.dir);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.teardown();
    }
}
