//! Sites as separate process trees, each node in a network namespace of its
//! own, joined by veth pairs, for the tests that need the kernel between the
//! sites: a link that goes down, a link with a rate limit, processes that die.
//!
//! Layout: one namespace per node and one hub namespace that holds the
//! switches.
//!
//! ```text
//!   s0n0 ─veth─┐                                           ┌─veth─ s1n0
//!              floe-br-s0 ══uplink══ floe-br-core ══uplink══ floe-br-s1
//!   s0n1 ─veth─┘                  (hub namespace)          └─veth─ s1n1
//! ```
//!
//! Node `n` of site `s` has 198.18.<s+1>.<n+1>/16 on its veth end: every node
//! is on one link-layer segment and needs no route. A site's switch reaches
//! the others only through its uplink, a veth pair inside the hub
//! (`floe-s<s>-up` on the site's bridge, `floe-s<s>-core` on the core
//! bridge). [`Net::link_down`] takes both ends down, so the site is cut off
//! while its nodes still reach each other; [`Net::limit`] puts a tbf qdisc on
//! both ends (each shapes one direction).
//!
//! Addresses come from 198.18.0.0/15 only (RFC 2544's benchmarking range) and
//! IPv6 is switched off in every namespace, so no link-local address appears
//! either. The veths are created inside the namespaces, never in the root
//! one, so the host's own network never sees them.
//!
//! Namespaces are named `floe-rig-<pid>-<seq>-<test>-<role>`. `Drop` kills
//! every process in them (the tracked ones and anything they started) and
//! deletes them, on success and on a panic alike; [`sweep_stale`], run by
//! [`Net::new`], removes the ones a crashed run left (their pid is gone), and
//! `scripts/check-leftovers.sh` flags any `floe*` namespace or root link.
//!
//! Waits poll a condition the kernel shows (`ip link`, `ip netns pids`, an
//! accepted connection) with a deadline; nothing sleeps instead of checking.

use std::fs::{File, OpenOptions};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use rustix::process::{Pid, Signal};
use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

/// Start of every namespace name this rig makes.
pub const PREFIX: &str = "floe-rig-";
/// Where `ip netns` keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// The core bridge in the hub, where the sites' uplinks meet.
const CORE_BRIDGE: &str = "floe-br-core";
/// Most sites, and most nodes per site (interface names stay < 16 bytes).
pub const MAX: usize = 99;
/// Smallest tbf burst: one full Ethernet frame.
pub const MIN_BURST: u32 = 1600;
/// Longest wait for a link to settle or processes to go.
pub const SETTLE: Duration = Duration::from_secs(10);

/// Rigs made by this process so far (names stay unique when one test
/// makes several).
static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Sites of nodes in network namespaces, removed on drop.
pub struct Net {
    /// `floe-rig-<pid>-<seq>-<test>`: the start of each namespace's name.
    tag: String,
    sites: usize,
    nodes: usize,
    /// Where the spawned processes write their stdout and stderr.
    logs: PathBuf,
    /// Namespaces created so far, the hub first.
    made: Vec<String>,
    procs: Mutex<Vec<Child>>,
}

/// A process started with [`Net::spawn`]; the rig owns (and reaps) it.
#[derive(Debug, Clone)]
pub struct Proc {
    index: usize,
    pub pid: u32,
    pub label: String,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Net {
    /// `sites` sites of `nodes` nodes each, named after `test`; the spawned
    /// processes log under `logs`. Removes stale namespaces first.
    pub fn new(test: &str, sites: usize, nodes: usize, logs: &Path) -> Result<Net> {
        ensure!(
            (1..=MAX).contains(&sites) && (1..=MAX).contains(&nodes),
            "a rig has 1..={MAX} sites of 1..={MAX} nodes, not {sites} × {nodes}"
        );
        match sweep_stale() {
            Ok(swept) if !swept.is_empty() => eprintln!("netns rig: removed stale namespaces {swept:?}"),
            Ok(_) => {}
            // Not fatal for this test; check-leftovers reports what stays.
            Err(e) => eprintln!("netns rig: sweeping stale namespaces failed: {e:#}"),
        }
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut net = Net {
            tag: format!("{PREFIX}{}-{seq}-{}", std::process::id(), slug(test)),
            sites,
            nodes,
            logs: logs.to_path_buf(),
            made: Vec::new(),
            procs: Mutex::default(),
        };
        // On an error `net` drops here and removes what was made.
        net.build().with_context(|| {
            format!("set up the network namespaces of {test} (needs root and iproute2's ip and tc)")
        })?;
        Ok(net)
    }

    /// Two sites of one node each.
    pub fn pair(test: &str, logs: &Path) -> Result<Net> {
        Net::new(test, 2, 1, logs)
    }

    fn build(&mut self) -> Result<()> {
        let hub = self.add_namespace("hub")?;
        ip(&["-n", &hub, "link", "add", CORE_BRIDGE, "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", CORE_BRIDGE, "up"])?;
        for site in 0..self.sites {
            self.add_site(site)?;
            for node in 0..self.nodes {
                self.add_node(site, node)?;
            }
        }
        wait_until("every link of the rig is up and forwarding", SETTLE, || self.all_up())
    }

    /// A namespace `<tag>-<role>` with IPv6 off and `lo` up.
    fn add_namespace(&mut self, role: &str) -> Result<String> {
        let name = format!("{}-{role}", self.tag);
        ip(&["netns", "add", &name])?;
        self.made.push(name.clone());
        enter(&name, ipv6_off)??;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// The site's bridge in the hub and its uplink to the core bridge.
    fn add_site(&self, site: usize) -> Result<()> {
        let hub = self.hub();
        let bridge = site_bridge(site);
        let [up, core] = uplink(site);
        ip(&["-n", hub, "link", "add", &bridge, "type", "bridge"])?;
        ip(&["-n", hub, "link", "set", &bridge, "up"])?;
        ip(&["-n", hub, "link", "add", &up, "type", "veth", "peer", "name", &core])?;
        ip(&["-n", hub, "link", "set", &up, "master", &bridge, "up"])?;
        ip(&["-n", hub, "link", "set", &core, "master", CORE_BRIDGE, "up"])?;
        Ok(())
    }

    /// The node's namespace and its veth to the site's bridge.
    fn add_node(&mut self, site: usize, node: usize) -> Result<()> {
        let ns = self.add_namespace(&node_role(site, node))?;
        let hub = self.hub().to_owned();
        let dev = node_dev(site, node);
        ip(&[
            "-n", &hub, "link", "add", &dev, "type", "veth", "peer", "name", &dev, "netns", &ns,
        ])?;
        ip(&["-n", &hub, "link", "set", &dev, "master", &site_bridge(site), "up"])?;
        let cidr = format!("{}/16", self.addr(site, node));
        ip(&["-n", &ns, "addr", "add", &cidr, "dev", &dev])?;
        ip(&["-n", &ns, "link", "set", &dev, "up"])?;
        Ok(())
    }

    /// Whether every veth end is up and every bridge port forwards.
    fn all_up(&self) -> Result<bool> {
        for site in 0..self.sites {
            if !self.uplink_up(site)? {
                return Ok(false);
            }
            for node in 0..self.nodes {
                let dev = node_dev(site, node);
                let port = link_state(self.hub(), &dev)?;
                let end = link_state(&self.namespace(site, node), &dev)?;
                if !(port.up && port.forwarding && end.up) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn uplink_up(&self, site: usize) -> Result<bool> {
        for dev in uplink(site) {
            let s = link_state(self.hub(), &dev)?;
            if !(s.up && s.forwarding) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn hub(&self) -> &str {
        &self.made[0]
    }

    fn check(&self, site: usize, node: usize) {
        assert!(
            site < self.sites && node < self.nodes,
            "node {node} of site {site} is outside this rig of {} sites × {} nodes",
            self.sites,
            self.nodes
        );
    }

    /// The address of node `node` of site `site`: 198.18.<site+1>.<node+1>.
    pub fn addr(&self, site: usize, node: usize) -> IpAddr {
        self.check(site, node);
        let octet = |i: usize| u8::try_from(i + 1).expect("at most MAX sites and nodes");
        IpAddr::V4(Ipv4Addr::new(198, 18, octet(site), octet(node)))
    }

    /// `addr(site, node)` with `port`.
    pub fn socket(&self, site: usize, node: usize, port: u16) -> SocketAddr {
        SocketAddr::new(self.addr(site, node), port)
    }

    /// The name of the node's namespace (`ip netns` knows it).
    pub fn namespace(&self, site: usize, node: usize) -> String {
        self.check(site, node);
        format!("{}-{}", self.tag, node_role(site, node))
    }

    /// Every namespace of the rig, the hub first.
    pub fn namespaces(&self) -> Vec<String> {
        self.made.clone()
    }

    /// The names of every link the rig makes (inside its namespaces).
    pub fn link_names(&self) -> Vec<String> {
        let mut names = vec![CORE_BRIDGE.to_owned()];
        for site in 0..self.sites {
            names.push(site_bridge(site));
            names.extend(uplink(site));
            names.extend((0..self.nodes).map(|node| node_dev(site, node)));
        }
        names
    }

    /// Cuts the site off from the others (its nodes still reach each
    /// other): both ends of its uplink go down. Open connections across
    /// stall, new ones fail.
    pub fn link_down(&self, site: usize) -> Result<()> {
        self.check(site, 0);
        for dev in uplink(site) {
            ip(&["-n", self.hub(), "link", "set", &dev, "down"])?;
        }
        wait_until(&format!("site {site}'s uplink is down"), SETTLE, || {
            Ok(uplink(site)
                .iter()
                .map(|dev| link_state(self.hub(), dev))
                .collect::<Result<Vec<_>>>()?
                .iter()
                .all(|s| !s.up))
        })
    }

    /// Cuts node `node` of `site` off from every other node, its own site's
    /// included: its bridge port goes down (its end stays up, so its open
    /// connections stall without a word).
    pub fn node_down(&self, site: usize, node: usize) -> Result<()> {
        self.check(site, node);
        let dev = node_dev(site, node);
        ip(&["-n", self.hub(), "link", "set", &dev, "down"])?;
        wait_until(&format!("node {node} of site {site} is cut off"), SETTLE, || {
            Ok(!link_state(self.hub(), &dev)?.up)
        })
    }

    /// Joins node `node` of `site` again; returns once its port forwards.
    pub fn node_up(&self, site: usize, node: usize) -> Result<()> {
        self.check(site, node);
        let dev = node_dev(site, node);
        ip(&["-n", self.hub(), "link", "set", &dev, "up"])?;
        wait_until(&format!("node {node} of site {site} forwards"), SETTLE, || {
            let s = link_state(self.hub(), &dev)?;
            Ok(s.up && s.forwarding)
        })
    }

    /// Joins the site again; returns once the uplink forwards.
    pub fn link_up(&self, site: usize) -> Result<()> {
        self.check(site, 0);
        for dev in uplink(site) {
            ip(&["-n", self.hub(), "link", "set", &dev, "up"])?;
        }
        wait_until(&format!("site {site}'s uplink forwards"), SETTLE, || {
            self.uplink_up(site)
        })
    }

    /// Limits the site's link to `rate_bits_per_s` each way, with a token
    /// bucket of `burst_bytes` (a tbf qdisc on both uplink ends; packets
    /// wait up to 100 ms, then drop). Replaces an earlier limit.
    pub fn limit(&self, site: usize, rate_bits_per_s: u64, burst_bytes: u32) -> Result<()> {
        self.check(site, 0);
        ensure!(
            rate_bits_per_s > 0,
            "a rate limit of 0 bit/s: use link_down to cut the link"
        );
        ensure!(
            burst_bytes >= MIN_BURST,
            "a burst of {burst_bytes} bytes cannot pass one frame: give at least {MIN_BURST}"
        );
        let rate = format!("{rate_bits_per_s}bit");
        let burst = burst_bytes.to_string();
        for dev in uplink(site) {
            let args = ["-n", self.hub(), "qdisc", "replace", "dev", &dev, "root", "tbf"];
            tc(&[&args[..], &["rate", &rate, "burst", &burst, "latency", "100ms"]].concat())?;
        }
        Ok(())
    }

    /// Lifts the site's rate limit (nothing to do when there is none).
    pub fn unlimit(&self, site: usize) -> Result<()> {
        self.check(site, 0);
        for dev in uplink(site) {
            let shown = tc(&["-n", self.hub(), "qdisc", "show", "dev", &dev, "root"])?;
            if shown.contains("tbf") {
                tc(&["-n", self.hub(), "qdisc", "del", "dev", &dev, "root"])?;
            }
        }
        Ok(())
    }

    /// Runs `f` on a new thread inside the node's namespace and waits for
    /// it (a panic in `f` goes on in the caller). Sockets made there stay in
    /// that namespace when used from any other thread (tokio takes them with
    /// `from_std` after `set_nonblocking`); a process spawned there starts
    /// in it.
    pub fn within<R: Send>(&self, site: usize, node: usize, f: impl FnOnce() -> R + Send) -> Result<R> {
        enter(&self.namespace(site, node), f)
    }

    /// A TCP connection from the node to `to`. The outer error is the rig's,
    /// the inner one the connection's outcome.
    pub fn connect(
        &self,
        site: usize,
        node: usize,
        to: SocketAddr,
        timeout: Duration,
    ) -> Result<std::io::Result<TcpStream>> {
        self.within(site, node, || TcpStream::connect_timeout(&to, timeout))
    }

    /// Starts `cmd` in the node's namespace, in a process group of its own,
    /// stdin from /dev/null, stdout and stderr appended to
    /// `<logs>/s<site>n<node>-<label>.stdout` and `.stderr`. The rig keeps
    /// the child: [`Net::kill`], [`Net::try_wait`], and on drop SIGKILL.
    /// Only the network namespace differs from the test's (mounts are
    /// shared). The child's parent thread is a short-lived one: a
    /// `pre_exec` that sets a parent-death signal would kill it at once.
    pub fn spawn(&self, site: usize, node: usize, label: &str, mut cmd: Command) -> Result<Proc> {
        let ns = self.namespace(site, node);
        let base = format!("{}-{label}", node_role(site, node));
        let stdout = self.logs.join(format!("{base}.stdout"));
        let stderr = self.logs.join(format!("{base}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(log_file(&stdout)?)
            .stderr(log_file(&stderr)?)
            .process_group(0);
        let program = cmd.get_program().to_owned();
        let child = self
            .within(site, node, move || cmd.spawn())?
            .with_context(|| format!("start {label} ({program:?}) in namespace {ns}"))?;
        let pid = child.id();
        let mut procs = self.procs.lock().unwrap_or_else(PoisonError::into_inner);
        procs.push(child);
        Ok(Proc {
            index: procs.len() - 1,
            pid,
            label: label.to_owned(),
            stdout,
            stderr,
        })
    }

    /// The process's exit status if it ended (reaping it).
    pub fn try_wait(&self, p: &Proc) -> Result<Option<ExitStatus>> {
        let mut procs = self.procs.lock().unwrap_or_else(PoisonError::into_inner);
        procs[p.index]
            .try_wait()
            .with_context(|| format!("check whether {} (pid {}) ended", p.label, p.pid))
    }

    /// Sends `sig` to the process (not to its group); nothing once it was
    /// reaped.
    pub fn signal(&self, p: &Proc, sig: Signal) -> Result<()> {
        let mut procs = self.procs.lock().unwrap_or_else(PoisonError::into_inner);
        let child = &mut procs[p.index];
        if child.try_wait()?.is_none() {
            rustix::process::kill_process(Pid::from_child(child), sig)
                .with_context(|| format!("send {sig:?} to {} (pid {})", p.label, p.pid))?;
        }
        Ok(())
    }

    /// Waits up to `limit` for the process to end, reaping it.
    pub fn wait_exit(&self, p: &Proc, limit: Duration) -> Result<ExitStatus> {
        let mut status = None;
        wait_until(&format!("{} (pid {}) ends", p.label, p.pid), limit, || {
            status = self.try_wait(p)?;
            Ok(status.is_some())
        })
        .with_context(|| self.output(p))?;
        Ok(status.expect("wait_until returned once the status was there"))
    }

    /// SIGKILLs the process's group and reaps the process.
    pub fn kill(&self, p: &Proc) -> Result<ExitStatus> {
        let mut procs = self.procs.lock().unwrap_or_else(PoisonError::into_inner);
        let child = &mut procs[p.index];
        kill_tree(child);
        child
            .wait()
            .with_context(|| format!("reap {} (pid {})", p.label, p.pid))
    }

    /// What the process wrote so far (stdout, then stderr), for messages.
    pub fn output(&self, p: &Proc) -> String {
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_else(|e| format!("<{}: {e}>", path.display()));
        format!("stdout:\n{}\nstderr:\n{}", read(&p.stdout), read(&p.stderr))
    }

    /// Pids of the processes in the node's namespace now.
    pub fn pids(&self, site: usize, node: usize) -> Result<Vec<i32>> {
        netns_pids(&self.namespace(site, node))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let mut procs = std::mem::take(self.procs.get_mut().unwrap_or_else(PoisonError::into_inner));
        procs.iter_mut().for_each(kill_tree);
        for ns in &self.made {
            if let Err(e) = kill_everything_in(ns) {
                eprintln!("netns rig: {e:#}");
            }
        }
        for child in &mut procs {
            if let Err(e) = child.wait() {
                eprintln!("netns rig: reap pid {}: {e}", child.id());
            }
        }
        for ns in self.made.iter().rev() {
            if let Err(e) = remove_namespace(ns) {
                eprintln!("netns rig: {e:#}; remove it with `ip netns del {ns}`");
            }
        }
    }
}

/// Removes the namespaces of rigs whose process is gone (a run that
/// crashed or was killed), with whatever still runs in them. Returns their
/// names. A namespace another process removes meanwhile is no error.
pub fn sweep_stale() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("list {NETNS_DIR}")),
    };
    let mut swept = Vec::new();
    for entry in entries {
        let name = entry.with_context(|| format!("list {NETNS_DIR}"))?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = owner_pid(name) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_everything_in(name)?;
        if remove_namespace(name)? {
            swept.push(name.to_owned());
        }
    }
    Ok(swept)
}

/// The pid in a rig namespace's name (`floe-rig-<pid>-…`); None for any
/// other name (e2e clusters have `floe-e2e-…`).
pub fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Polls `cond` every 10 ms until it holds, for at most `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if cond()? {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `f` on a new thread moved into the named namespace (setns affects
/// only the calling thread, so the caller's thread stays where it is).
fn enter<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> Result<R> {
    let path = Path::new(NETNS_DIR).join(ns);
    let file = File::open(&path).with_context(|| format!("open {} (does the namespace exist?)", path.display()))?;
    std::thread::scope(|s| {
        let thread = s.spawn(move || {
            move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                .with_context(|| format!("setns into {} (needs CAP_SYS_ADMIN)", path.display()))?;
            Ok(f())
        });
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Switches IPv6 off in the calling thread's namespace (so no link-local
/// address appears); nothing to do when the kernel has no IPv6.
fn ipv6_off() -> Result<()> {
    for scope in ["all", "default"] {
        let key = format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6");
        match std::fs::write(&key, "1") {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            r => r.with_context(|| format!("write 1 to {key}"))?,
        }
    }
    Ok(())
}

/// SIGKILLs a child that was not reaped yet, and its process group (the
/// pid cannot have been reused while the child is unreaped).
fn kill_tree(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let pid = Pid::from_child(child);
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        let _ = rustix::process::kill_process(pid, Signal::KILL);
    }
}

/// SIGKILLs every process in the namespace until none is left.
fn kill_everything_in(ns: &str) -> Result<()> {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + SETTLE;
    loop {
        let pids: Vec<i32> = netns_pids(ns)?.into_iter().filter(|&p| p != me).collect();
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "processes {pids:?} are still in network namespace {ns} after SIGKILL: \
                 look at /proc/<pid>/stack for where they hang, then `ip netns del {ns}`"
            );
        }
        for pid in pids {
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Pids in the namespace (`ip netns pids`); none when it is gone.
fn netns_pids(ns: &str) -> Result<Vec<i32>> {
    if !Path::new(NETNS_DIR).join(ns).exists() {
        return Ok(Vec::new());
    }
    ip(&["netns", "pids", ns])?
        .split_whitespace()
        .map(|p| {
            p.parse()
                .with_context(|| format!("parse pid {p:?} from `ip netns pids {ns}`"))
        })
        .collect()
}

/// Deletes the namespace; false when another process deleted it first.
fn remove_namespace(ns: &str) -> Result<bool> {
    match ip(&["netns", "del", ns]) {
        Ok(_) => Ok(true),
        Err(_) if !Path::new(NETNS_DIR).join(ns).exists() => Ok(false),
        Err(e) => Err(e),
    }
}

/// What `ip -d link show` says of one link.
struct LinkState {
    /// Operationally up (for a veth: both ends are up).
    up: bool,
    /// A bridge port in state forwarding.
    forwarding: bool,
}

fn link_state(ns: &str, dev: &str) -> Result<LinkState> {
    let shown = ip(&["-n", ns, "-d", "-o", "link", "show", "dev", dev])?;
    Ok(LinkState {
        up: shown.contains(" state UP "),
        forwarding: shown.contains("bridge_slave state forwarding"),
    })
}

fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

fn tc(args: &[&str]) -> Result<String> {
    run("tc", args)
}

/// Runs a tool to its end; its stdout, or an error with its stderr.
fn run(tool: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run `{tool}` (is iproute2 installed?)"))?;
    if !out.status.success() {
        return Err(anyhow!(
            "`{tool} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn log_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("open log {} (does the scratch dir exist?)", path.display()))
}

/// The test's name as it can appear in a namespace name.
fn slug(test: &str) -> String {
    let s: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if s.is_empty() {
        "test".into()
    } else {
        s
    }
}

fn node_role(site: usize, node: usize) -> String {
    format!("s{site}n{node}")
}

/// The veth between a node and its site's bridge (same name at both ends).
fn node_dev(site: usize, node: usize) -> String {
    format!("floe-s{site}n{node}")
}

fn site_bridge(site: usize) -> String {
    format!("floe-br-s{site}")
}

/// The site's uplink: the end on its bridge, the end on the core bridge.
fn uplink(site: usize) -> [String; 2] {
    [format!("floe-s{site}-up"), format!("floe-s{site}-core")]
}
