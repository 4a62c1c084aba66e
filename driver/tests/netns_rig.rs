//! The network-namespace rig (`common/netns.rs`) on its own: the sites reach
//! each other only over their veths, a cut link is cut and comes back, a
//! rate limit limits, two nodes of a site share it, and nothing of a rig
//! outlives it, not even after a panic.
//!
//! The processes in the namespaces are this test binary again, running the
//! ignored `echo_server` test with `FLOE_RIG_ECHO_PORT` set.
//!
//! Needs root, `ip` and `tc`: in CI (`CI` set) their absence is a failure,
//! elsewhere the test is skipped with a note.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rustix::process::Signal;

mod common;

use common::netns::{self, wait_until, Net, Proc};

/// The environment variable that makes `echo_server` serve.
const ECHO_PORT_ENV: &str = "FLOE_RIG_ECHO_PORT";
/// The echo server's port (each namespace has its own ports).
const PORT: u16 = 7000;
/// How long a connection that must succeed may take.
const REACH: Duration = Duration::from_secs(5);
/// How long a connection that must fail is given.
const CUT: Duration = Duration::from_millis(700);

fn ready(test: &str) -> bool {
    if !rustix::process::geteuid().is_root() {
        common::skip_or_fail(&format!("{test}: needs root for network namespaces"));
        return false;
    }
    for tool in ["ip", "tc"] {
        if !common::tool_present(tool) {
            common::skip_or_fail(&format!("{test}: needs {tool} (iproute2)"));
            return false;
        }
    }
    true
}

/// Not a test of its own: the echo server the other tests start in a
/// namespace. Without `FLOE_RIG_ECHO_PORT` it does nothing.
#[test]
#[ignore = "a helper process the other tests start"]
fn echo_server() {
    let Some(port) = std::env::var(ECHO_PORT_ENV).ok() else {
        return;
    };
    let port: u16 = port.parse().expect("FLOE_RIG_ECHO_PORT is a port number");
    let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind the echo port");
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || echo(conn));
    }
}

/// Sends back what arrives until the peer closes its side.
fn echo(conn: TcpStream) {
    let Ok(mut reader) = conn.try_clone() else { return };
    let mut writer = conn;
    let _ = std::io::copy(&mut reader, &mut writer);
    let _ = writer.shutdown(Shutdown::Write);
}

/// Starts an echo server on the node and waits until it accepts.
fn start_echo(net: &Net, site: usize, node: usize) -> Result<Proc> {
    let mut cmd = Command::new(std::env::current_exe().context("find this test binary")?);
    cmd.args(["echo_server", "--exact", "--ignored", "--test-threads=1"])
        .env(ECHO_PORT_ENV, PORT.to_string());
    let p = net.spawn(site, node, "echo", cmd)?;
    let to = net.socket(site, node, PORT);
    wait_until(
        &format!("the echo server on {to} accepts"),
        Duration::from_secs(20),
        || {
            if let Some(status) = net.try_wait(&p)? {
                anyhow::bail!("the echo server exited ({status}); {}", net.output(&p));
            }
            Ok(net.connect(site, node, to, REACH)?.is_ok())
        },
    )?;
    Ok(p)
}

/// One line there and back from node (`site`, `node`) to the echo server
/// at the other node.
fn round_trip(net: &Net, from: (usize, usize), to: (usize, usize)) -> Result<()> {
    let target = net.socket(to.0, to.1, PORT);
    let mut conn = net
        .connect(from.0, from.1, target, REACH)?
        .with_context(|| format!("connect from s{}n{} to {target}", from.0, from.1))?;
    ensure!(
        conn.local_addr()?.ip() == net.addr(from.0, from.1),
        "the connection left from {}, not from the node's veth address",
        conn.local_addr()?
    );
    line_echoed(&mut conn, "ping")
}

fn line_echoed(conn: &mut TcpStream, text: &str) -> Result<()> {
    conn.set_read_timeout(Some(REACH))?;
    conn.write_all(format!("{text}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(conn.try_clone()?)
        .read_line(&mut line)
        .context("read the echo")?;
    ensure!(line == format!("{text}\n"), "echo sent back {line:?} for {text:?}");
    Ok(())
}

/// Whether a new connection from (`site`, `node`) to `to` fails.
fn cut_off(net: &Net, from: (usize, usize), to: (usize, usize)) -> Result<bool> {
    Ok(net.connect(from.0, from.1, net.socket(to.0, to.1, PORT), CUT)?.is_err())
}

fn logs(test: &str) -> Result<tempfile::TempDir> {
    common::scratch(test).context("make a scratch dir under /tmp")
}

#[test]
fn a_site_reaches_the_other_over_its_veth_and_the_host_does_not() -> Result<()> {
    let test = "netns-reach";
    if !ready(test) {
        return Ok(());
    }
    let dir = logs(test)?;
    let net = Net::pair(test, dir.path())?;
    let echo = start_echo(&net, 1, 0)?;
    round_trip(&net, (0, 0), (1, 0))?;

    // The echo server runs in site B's namespace, not the test's.
    let ns = std::fs::metadata(Path::new("/run/netns").join(net.namespace(1, 0)))?.ino();
    let its = std::fs::metadata(format!("/proc/{}/ns/net", echo.pid))?.ino();
    ensure!(
        its == ns,
        "the echo server (pid {}) is not in site B's namespace",
        echo.pid
    );

    // The root namespace has no address in 198.18.0.0/15 and no link of
    // the rig; what it routes there goes out its default route, if any (a
    // sandbox's gateway may even accept the connection), never to site B.
    let out = Command::new("ip").args(["-o", "-4", "addr", "show"]).output()?;
    let host = String::from_utf8_lossy(&out.stdout);
    ensure!(
        !host.contains(" 198.18.") && !host.contains(" 198.19."),
        "the host has a rig address: {host}"
    );
    let route = Command::new("ip").args(["route", "get", "198.18.2.1"]).output()?;
    let route = String::from_utf8_lossy(&route.stdout);
    ensure!(
        !route.contains("floe"),
        "the host routes to site B over a rig link: {route}"
    );
    let to = net.socket(1, 0, PORT);
    let echoed = TcpStream::connect_timeout(&to, CUT).map(|mut conn| line_echoed(&mut conn, "from the host"));
    ensure!(
        !matches!(echoed, Ok(Ok(()))),
        "the host reached site B's echo server at {to}"
    );
    Ok(())
}

#[test]
fn a_spawned_process_logs_to_the_scratch_dir_and_ends_by_signal() -> Result<()> {
    let test = "netns-signal";
    if !ready(test) {
        return Ok(());
    }
    let dir = logs(test)?;
    let net = Net::pair(test, dir.path())?;
    let first = start_echo(&net, 0, 0)?;
    net.signal(&first, Signal::TERM)?;
    let status = net.wait_exit(&first, Duration::from_secs(10))?;
    ensure!(
        status.signal() == Some(15),
        "the echo server ended with {status} after SIGTERM"
    );
    ensure!(
        first.stdout.starts_with(dir.path()),
        "stdout went to {}",
        first.stdout.display()
    );
    ensure!(
        net.output(&first).contains("running 1 test"),
        "the log lacks libtest's header: {}",
        net.output(&first)
    );
    ensure!(
        net.pids(0, 0)?.is_empty(),
        "processes left in s0n0: {:?}",
        net.pids(0, 0)?
    );

    let second = start_echo(&net, 0, 0)?;
    let status = net.kill(&second)?;
    ensure!(
        status.signal() == Some(9),
        "the echo server ended with {status} after kill"
    );
    Ok(())
}

#[test]
fn every_address_in_the_rig_is_loopback_or_in_198_18_0_0_15() -> Result<()> {
    let test = "netns-addresses";
    if !ready(test) {
        return Ok(());
    }
    let dir = logs(test)?;
    let net = Net::new(test, 2, 2, dir.path())?;
    for ns in net.namespaces() {
        let out = Command::new("ip").args(["-n", &ns, "-o", "addr", "show"]).output()?;
        ensure!(out.status.success(), "ip -n {ns} addr show failed");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let addr = line.split_whitespace().nth(3).context("an address column")?;
            let ours = addr.starts_with("198.18.") || addr.starts_with("198.19.") || addr == "127.0.0.1/8";
            ensure!(ours, "namespace {ns} has address {addr}: {line}");
        }
    }
    Ok(())
}

#[test]
fn link_down_cuts_a_site_off_and_link_up_restores_it_three_times() -> Result<()> {
    let test = "netns-link-cycles";
    if !ready(test) {
        return Ok(());
    }
    let dir = logs(test)?;
    let net = Net::pair(test, dir.path())?;
    start_echo(&net, 1, 0)?;
    let (a, b) = ((0, 0), (1, 0));
    // Open across the first cut: it stalls, then carries on.
    let mut open = net.connect(0, 0, net.socket(1, 0, PORT), REACH)??;
    line_echoed(&mut open, "before")?;

    for cycle in 0..3 {
        let site = cycle % 2;
        round_trip(&net, a, b)?;
        net.link_down(site)?;
        ensure!(
            cut_off(&net, a, b)?,
            "cycle {cycle}: a connection crossed site {site}'s cut link"
        );
        if cycle == 0 {
            open.set_read_timeout(Some(CUT))?;
            open.write_all(b"during\n")?;
            let mut byte = [0u8; 1];
            let stalled = open.read(&mut byte);
            ensure!(
                stalled.is_err(),
                "cycle 0: an open connection carried data across the cut"
            );
        }
        net.link_up(site)?;
        round_trip(&net, a, b).with_context(|| format!("cycle {cycle}: after link_up({site})"))?;
    }
    // The stalled line arrives once the link is back (retransmission).
    open.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut line = String::new();
    BufReader::new(open).read_line(&mut line)?;
    ensure!(line == "during\n", "the stalled connection delivered {line:?}");
    Ok(())
}

/// Sends `bytes` through the echo server on site B from site A and reads
/// them back; returns how long that took.
fn echo_transfer(net: &Net, bytes: usize) -> Result<Duration> {
    let mut conn = net.connect(0, 0, net.socket(1, 0, PORT), REACH)??;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = conn.try_clone()?;
    let started = Instant::now();
    let sent = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&vec![0x5a; bytes])?;
        writer.shutdown(Shutdown::Write)
    });
    let mut back = Vec::with_capacity(bytes);
    conn.read_to_end(&mut back).context("read the echoed bytes")?;
    let took = started.elapsed();
    sent.join()
        .expect("the writer does not panic")
        .context("send the bytes")?;
    ensure!(back.len() == bytes, "{} of {bytes} bytes came back", back.len());
    Ok(took)
}

#[test]
fn a_tbf_limit_slows_a_transfer_and_unlimit_lifts_it() -> Result<()> {
    let test = "netns-tbf";
    if !ready(test) {
        return Ok(());
    }
    let dir = logs(test)?;
    let net = Net::pair(test, dir.path())?;
    start_echo(&net, 1, 0)?;
    const BYTES: usize = 2 << 20;
    // 2 MiB each way at 8 Mbit/s: about 2.1 s when the limit holds.
    net.limit(0, 8_000_000, 32 * 1024)?;
    let limited = echo_transfer(&net, BYTES)?;
    ensure!(
        limited >= Duration::from_millis(1500),
        "2 MiB passed 8 Mbit/s in {limited:?}"
    );
    net.unlimit(0)?;
    net.unlimit(0)?; // nothing left to lift: no error
    let free = echo_transfer(&net, BYTES)?;
    ensure!(
        free < limited,
        "without the limit 2 MiB took {free:?}, with it {limited:?}"
    );
    eprintln!("2 MiB echoed: {limited:?} at 8 Mbit/s, {free:?} unlimited");
    Ok(())
}

#[test]
fn two_nodes_per_site_reach_each_other_within_and_across_sites() -> Result<()> {
    let test = "netns-two-nodes";
    if !ready(test) {
        return Ok(());
    }
    let dir = logs(test)?;
    let net = Net::new(test, 2, 2, dir.path())?;
    let nodes = [(0, 0), (0, 1), (1, 0), (1, 1)];
    for &(s, n) in &nodes {
        start_echo(&net, s, n)?;
    }
    for &from in &nodes {
        for &to in nodes.iter().filter(|&&to| to != from) {
            round_trip(&net, from, to).with_context(|| format!("{from:?} to {to:?}"))?;
        }
    }
    // Cut site 0 off: its two nodes still reach each other, as do site 1's.
    net.link_down(0)?;
    round_trip(&net, (0, 0), (0, 1))?;
    round_trip(&net, (1, 1), (1, 0))?;
    ensure!(
        cut_off(&net, (0, 1), (1, 0))?,
        "site 0 reached site 1 through its cut link"
    );
    ensure!(
        cut_off(&net, (1, 0), (0, 0))?,
        "site 1 reached site 0 through its cut link"
    );
    net.link_up(0)?;
    round_trip(&net, (0, 1), (1, 1))?;
    Ok(())
}

/// What a rig leaves to check after it is gone.
#[derive(Default)]
struct Trace {
    namespaces: Vec<String>,
    links: Vec<String>,
    pids: Vec<i32>,
}

/// A two-by-two rig with a small process tree in every node.
fn populated_rig(test: &str, logs: &Path, trace: &mut Trace) -> Result<Net> {
    let net = Net::new(test, 2, 2, logs)?;
    trace.namespaces = net.namespaces();
    trace.links = net.link_names();
    for (s, n) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let mut tree = Command::new("sh");
        tree.args(["-c", "sleep 600 & sleep 600 & wait"]);
        net.spawn(s, n, "tree", tree)?;
        // The shell and its two sleeps.
        wait_until("the process tree runs", Duration::from_secs(10), || {
            Ok(net.pids(s, n)?.len() >= 3)
        })?;
        trace.pids.extend(net.pids(s, n)?);
    }
    Ok(net)
}

/// Nothing of the traced rig is left: namespaces, links, processes.
fn nothing_left(trace: &Trace) -> Result<()> {
    ensure!(
        !trace.namespaces.is_empty() && !trace.pids.is_empty(),
        "the trace is empty"
    );
    let listed = Command::new("ip").args(["netns", "list"]).output()?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    for ns in &trace.namespaces {
        ensure!(
            !listed.contains(ns.as_str()),
            "namespace {ns} is still listed: {listed}"
        );
        ensure!(
            !Path::new("/run/netns").join(ns).exists(),
            "/run/netns/{ns} is still there"
        );
    }
    for link in &trace.links {
        let shown = Command::new("ip").args(["-o", "link", "show", "dev", link]).output()?;
        ensure!(!shown.status.success(), "link {link} is in the root namespace");
    }
    for pid in &trace.pids {
        ensure!(!alive(*pid), "pid {pid} of the rig still runs");
    }
    Ok(())
}

/// Whether the pid runs (a zombie waiting for its reaper does not).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn dropping_the_rig_removes_its_namespaces_links_and_processes() -> Result<()> {
    let test = "netns-drop";
    if !ready(test) {
        return Ok(());
    }
    let dir = logs(test)?;
    let mut trace = Trace::default();
    let net = populated_rig(test, dir.path(), &mut trace)?;
    drop(net);
    nothing_left(&trace)
}

#[test]
fn a_panic_in_the_test_still_removes_the_rig() -> Result<()> {
    let test = "netns-panic";
    if !ready(test) {
        return Ok(());
    }
    let dir = logs(test)?;
    let mut trace = Trace::default();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _net = populated_rig(test, dir.path(), &mut trace).expect("a populated rig");
        panic!("deliberate panic with the rig alive");
    }));
    ensure!(outcome.is_err(), "the closure was meant to panic");
    nothing_left(&trace)
}

/// Removes a hand-made namespace, and what runs in it, if the test fails
/// before the sweep does.
struct Remove(String);

impl Drop for Remove {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.0]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
fn sweep_stale_removes_a_namespace_whose_owner_is_gone() -> Result<()> {
    let test = "netns-sweep";
    if !ready(test) {
        return Ok(());
    }
    // A pid that ran and ended: the "crashed" owner.
    let mut gone = Command::new("true").spawn()?;
    gone.wait()?;
    let name = format!("{}{}-0-sweep-test-hub", netns::PREFIX, gone.id());
    ensure!(netns::owner_pid(&name) == Some(gone.id()), "{name} does not parse");
    let _guard = Remove(name.clone());
    let added = Command::new("ip").args(["netns", "add", &name]).status()?;
    ensure!(added.success(), "ip netns add {name} failed");
    // A process left running in it.
    let mut left = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{name}"))
        .args(["--", "sleep", "600"])
        .spawn()
        .context("start sleep in the stale namespace with nsenter")?;
    let ns_ino = std::fs::metadata(format!("/run/netns/{name}"))?.ino();
    wait_until("sleep runs in the stale namespace", Duration::from_secs(10), || {
        Ok(std::fs::metadata(format!("/proc/{}/ns/net", left.id())).is_ok_and(|m| m.ino() == ns_ino))
    })?;

    // Another test's rig may sweep it first; either way it goes.
    netns::sweep_stale()?;
    ensure!(
        !Path::new("/run/netns").join(&name).exists(),
        "{name} survived the sweep"
    );
    let status = left.wait()?;
    ensure!(
        status.signal() == Some(9),
        "the process in the stale namespace ended with {status}, not SIGKILL"
    );
    Ok(())
}
