//! Power cuts of either site's data plane at named failpoints, in every
//! mode, between two sites as real process trees (`common::sites`).
//!
//! Every data plane runs with `FLOE_POWER_CUT=1`: its store holds unsynced
//! writes in process memory (`store/volatile.rs`), so a SIGKILL loses
//! exactly what a power cut loses. A trial restarts one data plane with one
//! failpoint armed (`FLOE_FAILPOINT=<point>@<n>`, `floe_driver::failpoint`),
//! drives group epochs as a controller would under fsyncing writers until
//! the process kills itself there, starts it again and goes on. Checked
//! throughout:
//! - **I1**: every epoch that commits is, on every member, the primary's
//!   image read while that epoch was frozen (BLAKE3 of O_DIRECT reads); an
//!   epoch that is dropped is dropped on every member;
//! - **no regression**: after a restart the DR stands at an epoch at least
//!   the last one it committed, with that epoch's image;
//! - **no stall**: each trial's epochs resolve, and a last epoch commits
//!   exact.
//!
//! The primary's file systems are not checked with `e2fsck` here: a power
//! cut of the primary's data plane loses writes the kernel above it was
//! told were done (a disk's volatile cache lost under a running host), which
//! a file system may not survive. The bytes are what the DR must match.
//!
//! The matrix is (mode × side × point), six points per side
//! ([`PRIMARY_POINTS`], [`DR_POINTS`]). `FLOE_POWER_CUTS` is the number of
//! trials: below the matrix's 36 cells, that many cells are drawn by a
//! printed seed (`FLOE_POWER_CUT_SEED`, else `FLOE_MODEL_SEED_BASE`, else
//! the day); from 36 on every cell runs, each as often as the count allows,
//! with a different hit count each time. `FLOE_POWER_CUT_CASES` runs named
//! trials alone: `log/dr/decided@2,interval/primary/sealed@1`.
//!
//! Needs root, `/dev/fuse`, loop devices and `mkfs.ext4`.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use floe_driver::failpoint as fp;
use floe_driver::replication::freeze::{FreezeMember, Token};
use floe_engine::Mode;
use rustix::process::Signal;

mod common;

use common::site::Node;
use common::sites::*;

/// The primary's points: a batch taken but not sent, a seal sent and not
/// acked, between the members' staged-acks, a commit heard, mid host write,
/// mid-handover (the successor took a connection).
const PRIMARY_POINTS: [&str; 6] = [
    fp::BATCH_IN_FLIGHT,
    fp::SEALED,
    fp::STAGED_ACKED,
    fp::CONSISTENT,
    fp::IMAGE_WRITE,
    fp::HANDOVER_TAKEN,
];

/// The DR's points: mid-batch, staged but unreported, between two members'
/// staged reports, decided before any fold, mid-fold, mid-handover (the
/// leaving process, before its exit).
const DR_POINTS: [&str; 6] = [
    fp::STAGE_WRITE,
    fp::STAGED_UNREPORTED,
    fp::BETWEEN_STAGED,
    fp::DECIDED,
    fp::IMAGE_WRITE,
    fp::HANDOVER_LEAVING,
];

const MODES: [Mode; 3] = [Mode::Continuous, Mode::Log, Mode::Interval];

/// Epochs a trial may take to reach its point before that is a failure.
const MAX_EPOCHS: u64 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Primary,
    Dr,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Primary => "primary",
            Side::Dr => "dr",
        }
    }
}

/// One kill: data plane `side` of a `mode` group, at the `n`th hit of `point`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Trial {
    mode: Mode,
    side: Side,
    point: &'static str,
    n: u64,
}

impl std::fmt::Display for Trial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}@{}", self.mode.name(), self.side.name(), self.point, self.n)
    }
}

impl std::str::FromStr for Trial {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (cell, n) = s.split_once('@').context("expected <mode>/<side>/<point>@<n>")?;
        let mut parts = cell.split('/');
        let (Some(mode), Some(side), Some(point), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!("{s:?}: expected <mode>/<side>/<point>@<n>");
        };
        let mode = MODES
            .into_iter()
            .find(|m| m.name() == mode)
            .with_context(|| format!("{s:?}: no mode {mode:?}"))?;
        let (side, points) = match side {
            "primary" => (Side::Primary, PRIMARY_POINTS),
            "dr" => (Side::Dr, DR_POINTS),
            other => bail!("{s:?}: no side {other:?} (primary, dr)"),
        };
        let point = points.into_iter().find(|p| *p == point).with_context(|| {
            format!(
                "{s:?}: the {} side has no point {point:?} (it has {points:?})",
                side.name()
            )
        })?;
        let n: u64 = n.parse().with_context(|| format!("{s:?}: hit count"))?;
        ensure!(n >= 1, "{s:?}: hit counts start at 1");
        Ok(Trial { mode, side, point, n })
    }
}

/// The highest hit count drawn for `point`: points reached once per block
/// go deep into a batch or a fold, once-per-epoch points stay near the
/// start (each epoch reaches them about once per member).
fn max_hits(point: &str) -> u64 {
    match point {
        fp::STAGE_WRITE | fp::IMAGE_WRITE => 48,
        fp::HANDOVER_LEAVING => 1,
        _ => 2,
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Every (mode, side, point) cell.
fn cells() -> Vec<(Mode, Side, &'static str)> {
    let mut out = Vec::new();
    for mode in MODES {
        for (side, points) in [(Side::Primary, PRIMARY_POINTS), (Side::Dr, DR_POINTS)] {
            for point in points {
                out.push((mode, side, point));
            }
        }
    }
    out
}

/// `trials` trials from `seed`: a seeded draw of cells below the matrix's
/// size, every cell round-robin from it on; hit counts from the seed.
fn plan(seed: u64, trials: usize) -> Vec<Trial> {
    let mut cells = cells();
    let full = trials >= cells.len();
    if !full {
        // A seeded shuffle (Fisher-Yates), then the first `trials`.
        for i in (1..cells.len()).rev() {
            let j = (splitmix(seed ^ (i as u64) << 32) % (i as u64 + 1)) as usize;
            cells.swap(i, j);
        }
    }
    (0..trials)
        .map(|k| {
            let (mode, side, point) = cells[k % cells.len()];
            let n = 1 + splitmix(seed.wrapping_mul(31).wrapping_add(k as u64)) % max_hits(point);
            Trial { mode, side, point, n }
        })
        .collect()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn power_cuts_at_every_failpoint_keep_the_dr_exact() -> Result<()> {
    if !ready("power_cuts_at_every_failpoint_keep_the_dr_exact") {
        return Ok(());
    }
    let trials: Vec<Trial> = match std::env::var("FLOE_POWER_CUT_CASES") {
        Ok(list) => list.split(',').map(str::parse).collect::<Result<_>>()?,
        Err(_) => {
            let seed = env_u64("FLOE_POWER_CUT_SEED")
                .or_else(|| env_u64("FLOE_MODEL_SEED_BASE"))
                .unwrap_or_else(|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() / 86_400)
                });
            let n = env_u64("FLOE_POWER_CUTS").unwrap_or(12) as usize;
            eprintln!(
                "power cuts: {n} trials from seed {seed} (FLOE_POWER_CUT_SEED={seed} FLOE_POWER_CUTS={n} replays them)"
            );
            plan(seed, n)
        }
    };
    let mut kills = 0;
    for mode in MODES {
        let mine: Vec<&Trial> = trials.iter().filter(|t| t.mode == mode).collect();
        if !mine.is_empty() {
            kills += run_mode(mode, &mine).with_context(|| format!("{mode:?} mode"))?;
        }
    }
    eprintln!("power cuts: {kills} kills at failpoints, every one recovered exact");
    ensure!(kills == trials.len(), "{kills} kills for {} trials", trials.len());
    Ok(())
}

/// What the controller has seen so far.
struct Seen {
    /// The last epoch taken.
    epoch: u64,
    /// The last epoch the DR committed.
    committed: u64,
    /// Each flipped epoch's member digests, read while frozen.
    digests: HashMap<u64, Vec<Vec<u8>>>,
    /// The side armed, and whether it has died since.
    armed: Option<(Side, &'static str)>,
    died: bool,
    /// Whether the primary restarted during the current epoch.
    primary_restarted: bool,
}

fn run_mode(mode: Mode, trials: &[&Trial]) -> Result<usize> {
    let opts = Options {
        power_cut: true,
        ..Options::default()
    };
    let mut s = start_with(&format!("powercut-{}", mode.name()), mode, Place::Loopback, opts)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (_acked, writers) = s.record_writers(&stop);
    let mut seen = Seen {
        epoch: 0,
        committed: 0,
        digests: HashMap::new(),
        armed: None,
        died: false,
        primary_restarted: false,
    };
    let mut kills = 0;
    let result = (|| -> Result<()> {
        for t in trials {
            eprintln!("trial {t}");
            trial(&mut s, &mut seen, t).with_context(|| format!("trial {t}\n{}", s.logs()))?;
            kills += 1;
        }
        // Nothing is left pending: one more epoch commits, exact.
        ensure!(
            epoch_step(&mut s, &mut seen)?,
            "the last epoch {} did not commit",
            seen.epoch
        );
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    // A writer blocked on a file system left frozen never stops: reported,
    // not waited for.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while writers.iter().any(|w| !w.is_finished()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stuck = writers.iter().filter(|w| !w.is_finished()).count();
    let blocked = || format!("{stuck} record writers still blocked 60 s after the end");
    let result = match (result, stuck) {
        (Ok(()), 0) => Ok(()),
        (Ok(()), _) => Err(anyhow::anyhow!(blocked())),
        (Err(e), 0) => Err(e),
        (Err(e), _) => Err(e.context(blocked())),
    };
    if let Err(e) = result {
        // The whole logs outlive the sites' directory, for the post-mortem.
        let mut kept = Vec::new();
        for node in [&s.primary, &s.dr] {
            let to = std::env::temp_dir().join(format!("floe-powercut-{}-{}.log", mode.name(), node.name));
            if std::fs::copy(node.dir.join("serve.log"), &to).is_ok() {
                kept.push(to.display().to_string());
            }
        }
        return Err(e.context(format!("whole serve logs: {}", kept.join(", "))));
    }
    Ok(kills)
}

fn node(s: &mut Sites, side: Side) -> &mut Node {
    match side {
        Side::Primary => &mut s.primary,
        Side::Dr => &mut s.dr,
    }
}

/// Arms `t`'s point on its side (a handover to a process started with it),
/// then drives epochs until that process has killed itself there.
fn trial(s: &mut Sites, seen: &mut Seen, t: &Trial) -> Result<()> {
    let spec = format!("{}@{}", t.point, t.n);
    seen.armed = Some((t.side, t.point));
    seen.died = false;
    let n = node(s, t.side);
    n.stop_serve(Signal::TERM)?;
    if let Some(status) = n.start_serve_armed(Some(&spec))? {
        died(s, seen, status)?;
    }
    if t.point == fp::HANDOVER_LEAVING && !seen.died {
        let status = node(s, t.side).stop_serve(Signal::TERM)?;
        died(s, seen, status)?;
    }
    ensure!(
        t.point != fp::HANDOVER_TAKEN || seen.died,
        "the successor answered without reaching {}",
        t.point
    );
    let mut epochs = 0;
    while !seen.died {
        ensure!(
            epochs < MAX_EPOCHS,
            "{} was not reached in {MAX_EPOCHS} epochs",
            t.point
        );
        epoch_step(s, seen)?;
        epochs += 1;
    }
    // The epoch after the kill resolves, and I1 holds for it.
    seen.armed = None;
    epoch_step(s, seen)?;
    Ok(())
}

/// The armed process exited with `status`: it must have been the
/// failpoint's SIGKILL. Starts it again, unarmed, and checks that the DR
/// has not gone back.
fn died(s: &mut Sites, seen: &mut Seen, status: std::process::ExitStatus) -> Result<()> {
    let (side, point) = seen.armed.context("a data plane exited with no point armed")?;
    let n = node(s, side);
    ensure!(
        status.signal() == Some(Signal::KILL.as_raw()),
        "the {} data plane exited with {status}, not by its failpoint's SIGKILL",
        side.name()
    );
    let log = std::fs::read_to_string(n.dir.join("serve.log"))?;
    ensure!(
        log.contains(&format!("failpoint {point} reached")),
        "the {} data plane was killed, but not at {point}",
        side.name()
    );
    n.start_serve()?;
    seen.died = true;
    seen.armed = None;
    if side == Side::Primary {
        seen.primary_restarted = true;
    }
    dr_not_behind(s, seen)
}

/// The DR stands at least at the last epoch it committed, with that
/// epoch's image where the epoch is known.
fn dr_not_behind(s: &Sites, seen: &Seen) -> Result<()> {
    let client = s.primary.client()?;
    let dadmin = s.dr.admin();
    for m in 0..MEMBERS {
        let mut got = None;
        wait_until("the DR answers Verify", Duration::from_secs(60), || {
            got = exact_or_lost(bounded(&client, dadmin.verify(&volume(m), 0, VOLUME_BYTES)), m)?;
            Ok(got.is_some())
        })?;
        let got = got.context("verified")?;
        ensure!(
            got.epoch >= seen.committed,
            "{}: the DR stands at epoch {} after a restart, behind its committed epoch {}",
            volume(m),
            got.epoch,
            seen.committed
        );
        if let Some(want) = seen.digests.get(&got.epoch) {
            ensure!(
                got.hash == want[m],
                "{}: the DR's image at epoch {} differs from the primary's frozen image",
                volume(m),
                got.epoch
            );
        }
    }
    Ok(())
}

/// `f` on `client`'s runtime, given up after 20 s: a call to a data plane
/// killed mid-call must fail, never hang the test.
fn bounded<T: Send, E: std::fmt::Display + Send>(
    client: &common::plane::PlaneClient,
    f: impl std::future::Future<Output = std::result::Result<T, E>> + Send,
) -> Result<T> {
    match client.block_on(async move { tokio::time::timeout(Duration::from_secs(20), f).await }) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow::anyhow!("{e:#}")),
        Err(_) => bail!("no answer in 20 s"),
    }
}

/// A `Verify` answer, `None` while the member is not ready to answer (a
/// fold under way); an error when the member lost its committed image (it
/// folded a staged epoch it found corrupt and awaits a resync from the
/// primary): the group then cannot produce its committed point, which I1
/// forbids.
fn exact_or_lost(
    answer: Result<floe_proto::node::VerifyResponse>,
    m: usize,
) -> Result<Option<floe_proto::node::VerifyResponse>> {
    match answer {
        Ok(v) => Ok(Some(v)),
        Err(e) if format!("{e:#}").contains("awaiting a resync") => {
            bail!("{} lost its committed image: {e:#}", volume(m))
        }
        Err(_) => Ok(None),
    }
}

/// Restarts the armed process if it has died.
fn reap(s: &mut Sites, seen: &mut Seen) -> Result<()> {
    if let Some((side, _)) = seen.armed {
        if let Some(status) = node(s, side).serve_exited()? {
            died(s, seen, status)?;
        }
    }
    Ok(())
}

/// `cond`, polled until it holds, restarting the armed process if it dies.
fn wait_reaping(
    s: &mut Sites,
    seen: &mut Seen,
    what: &str,
    mut cond: impl FnMut(&Sites) -> Result<bool>,
) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        reap(s, seen)?;
        if cond(s)? {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{what}: not after 120 s{}{}{}",
            statuses(s),
            s.primary.serve_blocked_threads(),
            s.dr.serve_blocked_threads()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every member's status on both sides, for a failure's context.
fn statuses(s: &Sites) -> String {
    let Ok(client) = s.primary.client() else {
        return String::new();
    };
    let mut out = String::new();
    for m in 0..MEMBERS {
        out += &format!(
            "\nprimary {}: {:?}\nDR {}: {:?}",
            volume(m),
            bounded(&client, s.primary.admin().status(&volume(m))),
            volume(m),
            bounded(&client, s.dr.admin().status(&volume(m)))
        );
    }
    out
}

/// One group epoch as a controller takes it: ready, quiesce, flip (the
/// primary's devices read while frozen), thaw on every path; abort where the
/// controller must (a failed step, a primary restarted during the epoch);
/// then the epoch committed exact on every member or dropped on every one.
/// Whether it committed.
fn epoch_step(s: &mut Sites, seen: &mut Seen) -> Result<bool> {
    let epoch = seen.epoch + 1;
    seen.epoch = epoch;
    seen.primary_restarted = false;
    let client = s.primary.client()?;
    let members: Vec<Arc<dyn FreezeMember>> = s.members();
    wait_reaping(s, seen, &format!("the members are ready for epoch {epoch}"), |_| {
        Ok(members.iter().all(|m| bounded(&client, m.ready(epoch)).is_ok()))
    })?;
    let token = Token::fresh()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut failed = false;
    for m in &members {
        failed |= bounded(&client, m.quiesce(&token, deadline)).is_err();
    }
    for m in &members {
        failed = failed || bounded(&client, m.freeze(epoch, &token)).is_err();
    }
    if !failed {
        // Read in a thread: a primary killed now leaves its devices'
        // reads waiting for the successor this thread starts.
        let devices = s.devices.clone();
        let reader = std::thread::spawn(move || {
            devices
                .iter()
                .map(|dev| device_digest(dev, VOLUME_BYTES))
                .collect::<Result<Vec<_>>>()
        });
        wait_reaping(s, seen, "the frozen devices read", |_| Ok(reader.is_finished()))?;
        let digests = reader.join().map_err(|_| anyhow::anyhow!("the reader panicked"))??;
        seen.digests.insert(epoch, digests);
    }
    for m in &members {
        wait_reaping(s, seen, "the thaw answered", |_| {
            Ok(bounded(&client, m.thaw(&token)).is_ok())
        })?;
    }
    // The controller's part: a failed step, or a primary restarted during
    // the epoch (its restart gave up the closing epoch), is aborted on
    // every member, also when the restart comes after the thaw.
    let dadmin = s.dr.admin();
    let mut aborted = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let committed = loop {
        reap(s, seen)?;
        if (failed || seen.primary_restarted) && !aborted {
            for m in &members {
                wait_reaping(s, seen, "the abort answered", |_| {
                    Ok(bounded(&client, m.abort(epoch)).is_ok())
                })?;
            }
            aborted = true;
            continue;
        }
        let committed = (0..MEMBERS).any(|m| bounded(&client, dadmin.verify(&volume(m), epoch, VOLUME_BYTES)).is_ok());
        if committed || members.iter().all(|m| bounded(&client, m.ready(epoch + 1)).is_ok()) {
            break committed;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "epoch {epoch} committed or dropped: not after 120 s{}",
            statuses(s)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    if committed {
        let want = seen
            .digests
            .get(&epoch)
            .with_context(|| format!("epoch {epoch} committed, but its freeze failed"))?
            .clone();
        for (m, want) in want.iter().enumerate() {
            let mut got = None;
            wait_reaping(s, seen, &format!("{} at epoch {epoch}", volume(m)), |_| {
                got = exact_or_lost(bounded(&client, dadmin.verify(&volume(m), epoch, VOLUME_BYTES)), m)?;
                Ok(got.is_some())
            })?;
            let got = got.context("verified")?;
            ensure!(
                got.hash == *want,
                "epoch {epoch}: the DR's {} differs from the primary's frozen image",
                volume(m)
            );
        }
        seen.committed = epoch;
    } else {
        for m in 0..MEMBERS {
            ensure!(
                bounded(&client, dadmin.verify(&volume(m), epoch, VOLUME_BYTES)).is_err(),
                "epoch {epoch} was dropped, yet {} committed it",
                volume(m)
            );
        }
    }
    Ok(committed)
}

#[test]
fn the_plan_covers_every_cell_and_names_replay() -> Result<()> {
    let all = plan(7, 36 * 3);
    for cell in cells() {
        let n: Vec<u64> = all
            .iter()
            .filter(|t| (t.mode, t.side, t.point) == cell)
            .map(|t| t.n)
            .collect();
        ensure!(n.len() == 3, "{cell:?}: {} trials", n.len());
    }
    let sample = plan(7, 12);
    ensure!(sample == plan(7, 12), "the same seed draws the same trials");
    ensure!(sample != plan(8, 12), "another seed draws others");
    for t in &sample {
        let back: Trial = t.to_string().parse()?;
        ensure!(back == *t, "{t} reads back as {back}");
    }
    ensure!(
        "log/dr/sealed@1".parse::<Trial>().is_err(),
        "the DR has no sealed point"
    );
    ensure!("log/dr/decided@0".parse::<Trial>().is_err(), "hit counts start at 1");
    Ok(())
}
