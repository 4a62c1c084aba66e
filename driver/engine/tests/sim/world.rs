//! Two sites, one replication group, a lossy network and a controller, driven
//! by a seeded schedule; every invariant is checked as the schedule runs.

use std::collections::{BTreeMap, BTreeSet};

use floe_engine::{
    Coordinator, DecisionRecord, EngineError, FromCoordinator, Geometry, GroupEpoch, Mode, Payload, Primary,
    PrimaryEvent, Replica, ReplicaStats, Reply, RoleGeneration, SendSeq, ToCoordinator, ToPrimary, ToReplica,
    VolumeStore,
};

use super::reference::Reference;
use super::rng::Rng;
use super::store::{arm_cut, disarm_cut, CutAt, SimLog, SimStore};

pub type Outcome = Result<(), String>;

/// Healthy steps in a row after which a pending group epoch must resolve
/// under an in-order delivery of every frame (`World::probe_liveness`).
const LIVENESS_STEPS: usize = 30;

/// Shape of a schedule.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub mode: Mode,
    pub members: usize,
    pub block_size: usize,
    pub blocks: u64,
    pub region_blocks: u64,
    pub steps: usize,
}

impl Config {
    pub fn small(mode: Mode) -> Self {
        Config {
            mode,
            members: 3,
            block_size: 8,
            blocks: 24,
            region_blocks: 4,
            steps: 600,
        }
    }
}

#[allow(clippy::large_enum_variant)] // a test harness; boxing the store buys nothing
#[derive(Clone)]
enum Vol {
    Primary(Box<Primary<SimStore>>),
    Replica(Box<Replica<SimStore>>),
    Down(SimStore, bool),
}

#[derive(Clone)]
enum Coord {
    Up(Coordinator<SimLog>),
    Down(SimLog),
}

impl Coord {
    fn log(&self) -> SimLog {
        match self {
            Coord::Up(c) => SimLog {
                record: c.record().clone(),
                version: 0,
            },
            Coord::Down(l) => l.clone(),
        }
    }
}

#[derive(Clone, Default)]
struct Net {
    to_replica: Vec<ToReplica>,
    to_primary: Vec<ToPrimary>,
    connected: bool,
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Phase {
    /// Primary site serves; the other site is a replica site with a
    /// consistent image of the current pairing.
    Paired,
    /// The DR site was promoted; the old site is down or fenced.
    FailedOver,
    /// The old site is the new replica site; its first fold is pending.
    FailingBack,
}

#[derive(Clone)]
struct Failback {
    /// Per member: blocks the new primary wrote since promotion.
    n_written: Vec<BTreeSet<u64>>,
    /// Per member: `n_written` when the new primary last took a Welcome
    /// (what the hash request it builds then must cover).
    n_at_welcome: Vec<BTreeSet<u64>>,
    /// Per member: blocks of new-primary writes a power cut interrupted.
    n_maybe: Vec<BTreeSet<u64>>,
    /// Per member: blocks the old primary wrote (or tried to) after the last
    /// epoch it knew committed, plus strays: what candidates may include.
    o_written: Vec<BTreeSet<u64>>,
    /// Per member: blocks the old primary wrote after the DR's last committed
    /// epoch, plus strays: what candidates must include.
    o_required: Vec<BTreeSet<u64>>,
    /// Per member: its failback ended (a fold cleared its candidates); a
    /// hash request after it repairs a refused fold and owes the failback
    /// nothing.
    done: Vec<bool>,
}

/// The last version of a block the primary shipped in an epoch.
#[derive(Clone)]
struct Sent {
    seq: SendSeq,
    bytes: Vec<u8>,
    /// Host writes of the block when it left.
    writes: u64,
    /// Bytes of the earlier versions of the block shipped in the epoch.
    earlier: BTreeSet<Vec<u8>>,
}

impl Sent {
    /// An earlier version had these bytes too.
    fn ambiguous(&self) -> bool {
        self.earlier.contains(&self.bytes)
    }
}

/// What the primary may re-send after a reconnect `Welcome`.
#[derive(Clone)]
struct ResumeWatch {
    /// Versions sent before the Welcome, of epochs still open at the DR:
    /// whether the DR held them durably then, and the host writes of the
    /// block when they were sent.
    outstanding: BTreeMap<(u64, u64), (bool, u64)>,
    /// Of those, how many the DR did not hold.
    missing: u64,
    /// Re-sends counted so far.
    resent: u64,
}

/// Most blocks a `poll_send` of the simulation puts in one frame.
const BATCH: u64 = 4;

/// A membership change of a schedule: the slot leaves or joins the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reshape {
    Leave(usize),
    Join(usize),
}

#[derive(Clone)]
pub struct World {
    cfg: Config,
    geo: Geometry,
    /// Points each replica retains (K), from the seed: 0, 1 or 2.
    retain: usize,
    rng: Rng,
    sites: [Vec<Vol>; 2],
    coords: [Option<Coord>; 2],
    prim: usize,
    site_ids: [u64; 2],
    net: Vec<Net>,
    to_coord: Vec<ToCoordinator>,
    /// Decisions on their way to members; with the report they answer
    /// when they travel back in that report's reply (spanning groups).
    from_coord: Vec<(u32, FromCoordinator, Option<ToCoordinator>)>,
    reference: Reference,
    next_group: GroupEpoch,
    pending: Option<GroupEpoch>,
    abort_needed: Option<GroupEpoch>,
    consistent: Vec<GroupEpoch>,
    /// Per member: the consistent epoch known at its last flush; write-intent
    /// clears for it are durable since (they are lazy, made durable by any sync).
    flushed_known: Vec<GroupEpoch>,
    aborted: Vec<BTreeSet<GroupEpoch>>,
    reported: GroupEpoch,
    phase: Phase,
    failovers: u32,
    failback: Option<Failback>,
    ships: Vec<Vec<u64>>,
    base: Vec<(Vec<u64>, Vec<u64>)>,
    epoch_ships: Vec<BTreeMap<(u64, u64), u32>>,
    /// Per member and block: re-sends I3 allows on top of the writes since
    /// the last rebase (one per version the DR did not hold at a reconnect).
    allowed: Vec<Vec<u64>>,
    /// Per member: the last version its primary (this incarnation) shipped
    /// of each (local epoch, block), with its bytes as they left.
    /// Also the host writes of the block then: a block written since has a
    /// new version, and shipping it is no re-send.
    /// And whether an earlier version of it had the same bytes (a zeroed
    /// block zeroed again): then bytes alone cannot tell which of them the
    /// DR holds, and the model counts it as not held.
    sent: Vec<BTreeMap<(u64, u64), Sent>>,
    /// Per member: versions whose bytes were flipped on the way.
    corrupted: Vec<BTreeSet<SendSeq>>,
    /// Per member: the re-sends since the last reconnect Welcome.
    resume: Vec<Option<ResumeWatch>>,
    dr_fingerprint: u64,
    last_out: Vec<Option<ToReplica>>,
    /// Faults on the bytes themselves, from a stream of their own so that
    /// schedules drawn without them replay exactly as before they existed.
    rot: Rng,
    /// Chance that a data block in a delivered frame has a bit flipped.
    corrupt_in_flight: f64,
    /// Chance that an engine call gets a power cut armed inside it.
    cut_in_call: f64,
    /// Per member: the replica's image when the latest resync hashes arrived
    /// (failback or the repair of rotted blocks); it does not change before
    /// the next fold.
    compare: Vec<Option<Vec<u8>>>,
    /// Per member: the old site's image when it was demoted for a failback
    /// (a legitimate content of its blocks until the first fold).
    demoted: Vec<Option<Vec<u8>>>,
    /// Chance per step that a staged block rots at rest at the DR.
    rot_at_rest: f64,
    /// Per member: blocks of epochs whose staging rotted (the replica may
    /// name them as resync candidates and refuse promote until they fold).
    rotted: Vec<BTreeSet<u64>>,
    /// Frames of an earlier incarnation come back from the network.
    replay_ghosts: bool,
    /// The group's replicas span DR nodes: the coordinator runs on one of
    /// them and crashes alone, reports and decisions cross a network that
    /// loses them, and a member node catches up from the decision record
    /// (re-reports its staged epoch, takes the record's decision for it).
    spanning: bool,
    /// Per member: its node lost a report or a decision and catches up at
    /// its next subscription (the shell's reconnect).
    catch_up: Vec<bool>,
    /// The group's one membership change in this schedule, if any, and the
    /// group epoch it took effect at once made.
    reshape: Option<Reshape>,
    reshaped_at: Option<GroupEpoch>,
    /// Members the coordinator is opened with (the slot that joins later is
    /// not one).
    initial_members: usize,
    /// Per member: the last frames its primary sent (kept when ghosts replay).
    recent: Vec<Vec<ToReplica>>,
    /// Per member: frames of a crashed incarnation still out there.
    ghosts: Vec<Vec<ToReplica>>,
    /// Off while the sites are drained (healing is fault-free).
    cuts_enabled: bool,
    /// The pending group epoch and the healthy steps in a row it has been
    /// pending through (see `probe_liveness`).
    stalled: Option<(GroupEpoch, usize)>,
    pub trace: Vec<String>,
    pub stats: RunStats,
}

/// What a schedule exercised, summed over a run to show the tests reach the
/// interesting paths.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunStats {
    pub commits: u64,
    pub aborts: u64,
    pub primary_crashes: u64,
    pub dr_crashes: u64,
    pub failovers: u64,
    pub failbacks_done: u64,
    pub resync_skipped: u64,
    pub dr_checks: u64,
    pub blocks_written: u64,
    pub blocks_shipped: u64,
    pub liveness_probes: u64,
    /// Bits flipped in block payloads on the way to a replica.
    pub corruptions_injected: u64,
    /// Seals a replica refused because a block failed its manifest hash.
    pub corruptions_detected: u64,
    /// Power cuts that fell inside an engine call.
    pub cuts_in_calls: u64,
    /// Frames of an earlier incarnation delivered after its restart.
    pub ghosts_replayed: u64,
    /// Failback hash requests checked to cover the whole I5 union.
    pub failback_coverage_checks: u64,
    /// Staged blocks rotted at rest after their staged-ack.
    pub rot_injected: u64,
    /// Decided folds a replica refused because staging no longer matched.
    pub folds_refused: u64,
    /// Writes the old site took after a failover (kept as a snapshot or
    /// discarded at failback).
    pub stray_writes: u64,
    /// Old primaries that reached the promoted site and were fenced.
    pub old_primaries_fenced: u64,
    /// Reconnect Welcomes a primary took with versions outstanding.
    pub resumes: u64,
    /// Outstanding versions the DR held durably at those Welcomes.
    pub resume_held: u64,
    /// Outstanding versions the DR did not hold.
    pub resume_missing: u64,
    /// Versions shipped again after those Welcomes.
    pub resume_resent: u64,
    /// Failovers that promoted to a retained point older than the last commit.
    pub retained_promotes: u64,
    /// Retained points promoted (on copies) and checked against the model.
    pub retained_checks: u64,
    /// Schedules whose replicas span DR nodes.
    pub spanning: u64,
    /// Reports and decisions lost between DR nodes.
    pub coordinator_messages_lost: u64,
    /// Crashes of the coordinator's node alone.
    pub coordinator_crashes: u64,
    /// Member nodes that caught up from the decision record.
    pub catch_ups: u64,
    /// Membership changes recorded (a member left or joined).
    pub membership_changes: u64,
    /// Epochs committed after a membership change.
    pub commits_after_change: u64,
}

impl RunStats {
    pub fn add(&mut self, o: &RunStats) {
        self.commits += o.commits;
        self.aborts += o.aborts;
        self.primary_crashes += o.primary_crashes;
        self.dr_crashes += o.dr_crashes;
        self.failovers += o.failovers;
        self.failbacks_done += o.failbacks_done;
        self.resync_skipped += o.resync_skipped;
        self.dr_checks += o.dr_checks;
        self.blocks_written += o.blocks_written;
        self.blocks_shipped += o.blocks_shipped;
        self.liveness_probes += o.liveness_probes;
        self.corruptions_injected += o.corruptions_injected;
        self.corruptions_detected += o.corruptions_detected;
        self.cuts_in_calls += o.cuts_in_calls;
        self.ghosts_replayed += o.ghosts_replayed;
        self.failback_coverage_checks += o.failback_coverage_checks;
        self.rot_injected += o.rot_injected;
        self.folds_refused += o.folds_refused;
        self.stray_writes += o.stray_writes;
        self.old_primaries_fenced += o.old_primaries_fenced;
        self.resumes += o.resumes;
        self.resume_held += o.resume_held;
        self.resume_missing += o.resume_missing;
        self.resume_resent += o.resume_resent;
        self.retained_promotes += o.retained_promotes;
        self.retained_checks += o.retained_checks;
        self.spanning += o.spanning;
        self.coordinator_messages_lost += o.coordinator_messages_lost;
        self.coordinator_crashes += o.coordinator_crashes;
        self.catch_ups += o.catch_ups;
        self.membership_changes += o.membership_changes;
        self.commits_after_change += o.commits_after_change;
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, String> {
    Err(msg.into())
}

impl World {
    pub fn new(cfg: Config, seed: u64) -> Self {
        let geo = Geometry::new(cfg.block_size, cfg.blocks, cfg.region_blocks).expect("valid test geometry");
        let gen0 = RoleGeneration { counter: 1, site: 1 };
        let mut prim = Vec::new();
        let mut repl = Vec::new();
        for m in 0..cfg.members {
            let p = Primary::create(SimStore::new(cfg.block_size), geo, cfg.mode, gen0).expect("create primary");
            prim.push(Vol::Primary(Box::new(p)));
            let mut r = Replica::create(SimStore::new(cfg.block_size), geo, m as u32, gen0).expect("create replica");
            r.set_retention((seed % 3) as usize);
            repl.push(Vol::Replica(Box::new(r)));
        }
        // One schedule in four changes the membership once (a stream of its
        // own: the other schedules replay unchanged): the last slot leaves
        // the group, or it joins it, having taken no part before.
        let mut shape = Rng::new(seed ^ 0x3E5A_9E00);
        let last = cfg.members - 1;
        let reshape = match (shape.chance(0.25), shape.chance(0.5)) {
            (true, true) => Some(Reshape::Leave(last)),
            (true, false) => Some(Reshape::Join(last)),
            _ => None,
        };
        let initial_members = match reshape {
            Some(Reshape::Join(_)) => last,
            _ => cfg.members,
        };
        let coord = Coordinator::open(SimLog::default(), initial_members as u32).expect("open coordinator");
        World {
            cfg,
            geo,
            retain: (seed % 3) as usize,
            rng: Rng::new(seed),
            sites: [prim, repl],
            coords: [None, Some(Coord::Up(coord))],
            prim: 0,
            site_ids: [1, 2],
            net: (0..cfg.members).map(|_| Net::default()).collect(),
            to_coord: Vec::new(),
            from_coord: Vec::new(),
            reference: Reference::new(cfg.members, cfg.block_size, cfg.blocks),
            next_group: 1,
            pending: None,
            abort_needed: None,
            consistent: vec![0; cfg.members],
            flushed_known: vec![0; cfg.members],
            aborted: vec![BTreeSet::new(); cfg.members],
            reported: 0,
            phase: Phase::Paired,
            failovers: 0,
            failback: None,
            ships: vec![vec![0; cfg.blocks as usize]; cfg.members],
            base: vec![(vec![0; cfg.blocks as usize], vec![0; cfg.blocks as usize]); cfg.members],
            epoch_ships: vec![BTreeMap::new(); cfg.members],
            allowed: vec![vec![0; cfg.blocks as usize]; cfg.members],
            sent: vec![BTreeMap::new(); cfg.members],
            corrupted: vec![BTreeSet::new(); cfg.members],
            resume: vec![None; cfg.members],
            dr_fingerprint: u64::MAX,
            last_out: vec![None; cfg.members],
            rot: Rng::new(seed ^ 0xC022_0F7E),
            corrupt_in_flight: 0.0,
            cut_in_call: 0.0,
            compare: vec![None; cfg.members],
            demoted: vec![None; cfg.members],
            rot_at_rest: 0.0,
            rotted: vec![BTreeSet::new(); cfg.members],
            replay_ghosts: false,
            // Drawn apart from both streams, so a schedule that is not
            // spanning runs exactly as before.
            spanning: Rng::new(seed ^ 0x5BA2_2100).chance(0.25),
            catch_up: vec![false; cfg.members],
            reshape,
            reshaped_at: None,
            initial_members,
            recent: vec![Vec::new(); cfg.members],
            ghosts: vec![Vec::new(); cfg.members],
            cuts_enabled: true,
            stalled: None,
            trace: Vec::new(),
            stats: RunStats::default(),
        }
    }

    fn dr(&self) -> usize {
        1 - self.prim
    }

    fn note(&mut self, s: String) {
        self.trace.push(s);
    }

    // ----- the schedule -----------------------------------------------------

    pub fn run(&mut self) -> Outcome {
        // Each schedule draws how stormy it is: calm ones commit many epochs,
        // stormy ones hit every crash point.
        let fault_rate = [0.002, 0.008, 0.025, 0.07][self.rng.below(4) as usize];
        // One schedule in four flips bits in the blocks it delivers.
        if self.rot.chance(0.25) {
            self.corrupt_in_flight = [0.005, 0.02, 0.08][self.rot.below(3) as usize];
        }
        // One in four cuts the power inside engine calls, at the k-th store
        // operation of the call (mutation or sync).
        if self.rot.chance(0.25) {
            self.cut_in_call = [0.01, 0.03, 0.1][self.rot.below(3) as usize];
        }
        // One in four replays frames of crashed incarnations.
        self.replay_ghosts = self.rot.chance(0.25);
        // One in four lets staged blocks rot at rest.
        if self.rot.chance(0.25) {
            self.rot_at_rest = [0.01, 0.05][self.rot.below(2) as usize];
        }
        if self.spanning {
            self.stats.spanning += 1;
        }
        for step in 0..self.cfg.steps {
            let fault = self.rng.chance(fault_rate);
            let roll = self.rng.below(1000);
            let result = if fault { self.fault(roll) } else { self.step(roll) };
            result.map_err(|e| format!("step {step}: {e}"))?;
            self.after_step().map_err(|e| format!("step {step}: {e}"))?;
            self.replay_ghost().map_err(|e| format!("step {step}: {e}"))?;
            self.rot_staged_block();
            self.probe_liveness().map_err(|e| format!("step {step}: {e}"))?;
        }
        self.settle().map_err(|e| format!("settle: {e}"))
    }

    fn step(&mut self, roll: u64) -> Outcome {
        let m = self.rng.below(self.cfg.members as u64) as usize;
        match roll {
            0..=219 => self.host_write(m),
            220..=249 => self.host_zero(m),
            250..=289 => self.host_flush(m),
            290..=309 if self.reshape.is_some() && self.reshaped_at.is_none() => self.reshape_now(),
            290..=339 => self.freeze(),
            340..=619 => self.pump(m),
            620..=949 => self.deliver_random(),
            950..=954 => self.duplicate_random(),
            955..=959 => self.checkpoint(m),
            980..=989 if self.spanning => self.catch_up(m),
            960..=989 => self.connect(m),
            _ => self.restart_any(m),
        }
    }

    fn fault(&mut self, roll: u64) -> Outcome {
        let m = self.rng.below(self.cfg.members as u64) as usize;
        match roll {
            0..=99 => self.controller_abort(),
            100..=399 => self.disconnect(m),
            400..=599 => self.crash_primary(m),
            600..=674 if self.spanning => self.crash_dr(),
            675..=699 if self.spanning => self.crash_coordinator(),
            700..=749 if self.spanning => self.lose_decision(),
            600..=749 => self.crash_dr(),
            750..=849 => self.failover(),
            _ => self.failback(),
        }
    }

    fn restart_any(&mut self, m: usize) -> Outcome {
        self.restart_primary(m)?;
        self.restart_dr()
    }

    // ----- host I/O -------------------------------------------------------

    /// Arm a power cut inside the next engine call, now and then (`boost`
    /// times as often for the rarer, longer calls).
    fn arm(&mut self, boost: f64) {
        if self.cuts_enabled && self.cut_in_call > 0.0 && self.rot.chance(self.cut_in_call * boost) {
            // At one of the first syncs of the call (partway through it), at
            // an early mutation, or anywhere in a long call (a fold of a
            // whole epoch, a log-mode merge).
            match self.rot.below(3) {
                0 => arm_cut(CutAt::Sync, self.rot.below(2) as u32),
                1 => arm_cut(CutAt::AnyOp, self.rot.below(4) as u32),
                _ => arm_cut(CutAt::AnyOp, self.rot.below(64) as u32),
            }
        }
    }

    /// One engine call on primary `m` (which must be up), perhaps with a
    /// power cut inside it. `Ok(None)`: the cut fell and the primary crashed.
    fn primary_call<T>(
        &mut self,
        m: usize,
        what: &str,
        call: impl FnOnce(&mut Primary<SimStore>) -> Result<T, EngineError>,
    ) -> Result<Option<T>, String> {
        self.arm(1.0);
        let prim = self.prim;
        let Vol::Primary(p) = &mut self.sites[prim][m] else {
            disarm_cut();
            return err(format!("{what}: member {m} is not a primary"));
        };
        let out = call(p);
        disarm_cut();
        let cut = p.store().was_cut();
        // The power is gone whether or not the call noticed (the engine
        // tolerates a failed lazy intent clear, for one).
        if cut {
            self.note(format!("power cut inside {what} on primary m{m}"));
            self.stats.cuts_in_calls += 1;
            self.crash_primary(m)?;
            return Ok(None);
        }
        out.map(Some).map_err(|e| format!("{what}: {e}"))
    }

    /// One engine call on replica `m` (which must be up), perhaps with a
    /// power cut inside it. `Ok(None)`: the cut fell and the replica crashed.
    fn replica_call<T>(
        &mut self,
        m: usize,
        what: &str,
        boost: f64,
        call: impl FnOnce(&mut Replica<SimStore>) -> Result<T, EngineError>,
    ) -> Result<Option<T>, String> {
        self.arm(boost);
        let dr = self.dr();
        let Vol::Replica(r) = &mut self.sites[dr][m] else {
            disarm_cut();
            return err(format!("{what}: member {m} is not a replica"));
        };
        let out = call(r);
        disarm_cut();
        let cut = r.store().was_cut();
        // The power is gone whether or not the call noticed (the engine
        // tolerates a failed lazy intent clear, for one).
        if cut {
            self.note(format!("power cut inside {what} on replica m{m}"));
            self.stats.cuts_in_calls += 1;
            self.crash_replica(m)?;
            return Ok(None);
        }
        out.map(Some).map_err(|e| format!("{what}: {e}"))
    }

    fn primary(&mut self, m: usize) -> Option<&mut Primary<SimStore>> {
        match &mut self.sites[self.prim][m] {
            Vol::Primary(p) => Some(p),
            _ => None,
        }
    }

    /// Zipf-like block choice: low blocks are hot, so overwrites coalesce.
    fn pick_offset(&mut self) -> (u64, u64) {
        let bs = self.cfg.block_size as u64;
        let size = self.cfg.blocks * bs;
        let hot = self.rng.chance(0.6);
        let block = if hot {
            self.rng.below(4)
        } else {
            self.rng.below(self.cfg.blocks)
        };
        let unaligned = self.rng.chance(0.3);
        let offset = block * bs + if unaligned { self.rng.below(bs) } else { 0 };
        let len = if unaligned {
            1 + self.rng.below(bs * 2)
        } else {
            bs * (1 + self.rng.below(3))
        };
        (offset.min(size - 1), len.min(size - offset.min(size - 1)))
    }

    fn host_write(&mut self, m: usize) -> Outcome {
        let (offset, len) = self.pick_offset();
        let mut data = vec![0; len as usize];
        self.rng.fill(&mut data);
        self.write_common(m, offset, len, Some(data))
    }

    fn host_zero(&mut self, m: usize) -> Outcome {
        let (offset, len) = self.pick_offset();
        self.write_common(m, offset, len, None)
    }

    fn write_common(&mut self, m: usize, offset: u64, len: u64, data: Option<Vec<u8>>) -> Outcome {
        let open = self.next_group;
        let strays = self.phase == Phase::FailedOver;
        let site = if strays { self.dr() } else { self.prim };
        let Vol::Primary(p) = &mut self.sites[site][m] else {
            return Ok(());
        };
        if strays && p.fenced_by().is_none() && p.generation().site != self.site_ids[site] {
            return Ok(());
        }
        let bs = self.cfg.block_size as u64;
        let blocks = offset / bs..(offset + len).div_ceil(bs);
        let write = |p: &mut Primary<SimStore>| match &data {
            Some(d) => p.write(offset, d),
            None => p.zero(offset, len),
        };
        if strays {
            write(p).map_err(|e| format!("write: {e}"))?;
        } else if self.primary_call(m, "write", write)?.is_none() {
            // Never acknowledged: after the restart its blocks may hold the
            // old bytes, the new ones or a tear of both, and the new
            // primary's record may count them as written since promotion.
            self.note(format!("  (the cut write was m{m} {offset}+{len})"));
            if let Some(fb) = &mut self.failback {
                fb.n_maybe[m].extend(blocks.clone());
            }
            for b in blocks {
                self.reference.unflushed[m].insert(b);
                self.reference.attempted_group[m][b as usize] = open;
            }
            return Ok(());
        }
        self.stats.blocks_written += 1;
        if strays {
            // The old primary, cut off by a failover, keeps taking writes.
            self.stats.stray_writes += 1;
            if let Some(fb) = &mut self.failback {
                fb.o_written[m].extend(blocks.clone());
                fb.o_required[m].extend(blocks);
            }
            return Ok(());
        }
        self.note(format!(
            "write m{m} {offset}+{len}{}",
            if data.is_none() { " zero" } else { "" }
        ));
        self.reference.write(m, offset, len, data.as_deref(), open);
        if let Some(fb) = &mut self.failback {
            fb.n_written[m].extend(blocks.clone());
        }
        Ok(())
    }

    fn host_flush(&mut self, m: usize) -> Outcome {
        if self.primary(m).is_none() {
            return Ok(());
        }
        if self.primary_call(m, "flush", |p| p.flush())?.is_some() {
            self.reference.flush(m);
            self.flushed_known[m] = self.consistent[m];
        }
        Ok(())
    }

    // ----- the controller's freeze sequence ----------------------------------

    fn freeze(&mut self) -> Outcome {
        if self.pending.is_some() || self.abort_needed.is_some() || self.phase == Phase::FailedOver {
            return Ok(());
        }
        let g = self.next_group;
        self.next_group += 1;
        // syncfs on every filesystem of the group, then the flips.
        for m in 0..self.cfg.members {
            self.host_flush(m)?;
        }
        self.reference.freeze(g);
        let mut refused = false;
        for m in 0..self.cfg.members {
            if !self.member_at(m, g) {
                continue;
            }
            match self.primary(m) {
                Some(p) => {
                    if p.freeze(g).is_err() {
                        refused = true;
                    }
                }
                None => refused = true,
            }
        }
        self.note(format!("freeze g{g}{}", if refused { " refused" } else { "" }));
        self.pending = Some(g);
        if refused {
            self.abort_everywhere(g)?;
        }
        for m in 0..self.cfg.members {
            if self.member_at(m, g) {
                self.reset_coalescing(m, false);
            }
        }
        Ok(())
    }

    fn controller_abort(&mut self) -> Outcome {
        if let Some(g) = self.pending {
            self.note(format!("controller aborts g{g}"));
            self.abort_everywhere(g)?;
        }
        Ok(())
    }

    fn abort_everywhere(&mut self, g: GroupEpoch) -> Outcome {
        self.abort_needed = Some(g);
        for m in 0..self.cfg.members {
            if !self.member_at(m, g) {
                continue;
            }
            if let Some(p) = self.primary(m) {
                p.abort(g).map_err(|e| format!("abort: {e}"))?;
            }
        }
        self.collect_events()
    }

    fn collect_events(&mut self) -> Outcome {
        for m in 0..self.cfg.members {
            let site = self.prim;
            let Vol::Primary(p) = &mut self.sites[site][m] else {
                continue;
            };
            for ev in p.take_events() {
                match ev {
                    PrimaryEvent::Consistent(g) => {
                        self.trace.push(format!("  event p{m} consistent g{g}"));
                        self.consistent[m] = self.consistent[m].max(g);
                    }
                    PrimaryEvent::Aborted(g) => {
                        self.trace.push(format!("  event p{m} aborted g{g}"));
                        self.aborted[m].insert(g);
                        self.reset_coalescing(m, true);
                    }
                    PrimaryEvent::Fenced(_) => {}
                    PrimaryEvent::ResyncCompared { block, shipped } => {
                        self.check_resync_decision(m, block, shipped)?;
                    }
                }
            }
        }
        if let Some(g) = self.pending {
            let members: Vec<usize> = (0..self.cfg.members).filter(|&m| self.member_at(m, g)).collect();
            let all_consistent = members.iter().all(|&m| self.consistent[m] >= g);
            let resolved = members
                .iter()
                .all(|&m| self.consistent[m] >= g || self.aborted[m].contains(&g));
            if resolved {
                if all_consistent {
                    self.reported = self.reported.max(g);
                    self.stats.commits += 1;
                    if self.reshaped_at.is_some_and(|e| g >= e) {
                        self.stats.commits_after_change += 1;
                    }
                } else {
                    self.stats.aborts += 1;
                }
                if members.iter().any(|&m| self.consistent[m] >= g) && !all_consistent {
                    return err(format!("group epoch {g} both committed and aborted across members"));
                }
                self.note(format!(
                    "g{g} resolved {}",
                    if all_consistent { "consistent" } else { "aborted" }
                ));
                self.pending = None;
                if self.abort_needed == Some(g) {
                    self.abort_needed = None;
                }
            }
        }
        Ok(())
    }

    // ----- the network --------------------------------------------------------

    fn pump(&mut self, m: usize) -> Outcome {
        if !self.net[m].connected {
            return Ok(());
        }
        let max = 1 + self.rng.below(4) as usize;
        if self.primary(m).is_none() {
            return Ok(());
        }
        let Some(Some(frame)) = self.primary_call(m, "poll_send", |p| p.poll_send(max))? else {
            return self.collect_events();
        };
        self.observe_outgoing(m, &frame)?;
        self.net[m].to_replica.push(frame);
        self.collect_events()
    }

    fn observe_outgoing(&mut self, m: usize, frame: &ToReplica) -> Outcome {
        self.last_out[m] = Some(frame.clone());
        if self.replay_ghosts {
            if self.recent[m].len() == 24 {
                let oldest = self.recent[m]
                    .iter()
                    .position(|f| !matches!(f, ToReplica::Hello { .. }));
                self.recent[m].remove(oldest.unwrap_or(0));
            }
            self.recent[m].push(frame.clone());
        }
        match frame {
            ToReplica::Blocks {
                local, blocks, data, ..
            } => {
                for b in blocks {
                    let i = b.index as usize;
                    let bytes = match b.payload {
                        Payload::Zero => vec![0; self.cfg.block_size],
                        Payload::Data { at } => data[at as usize..at as usize + self.cfg.block_size].to_vec(),
                    };
                    let writes = self.reference.writes[m][i];
                    let earlier = match self.sent[m].remove(&(*local, b.index)) {
                        Some(mut prev) => {
                            prev.earlier.insert(prev.bytes);
                            prev.earlier
                        }
                        None => BTreeSet::new(),
                    };
                    let sent = Sent {
                        seq: b.seq,
                        bytes,
                        writes,
                        earlier,
                    };
                    self.sent[m].insert((*local, b.index), sent);
                    // I4: after a reconnect, only what the DR did not hold
                    // durably goes again, plus at most one batch.
                    if let Some(w) = &mut self.resume[m] {
                        let again = w.outstanding.remove(&(*local, b.index)).filter(|o| o.1 == writes);
                        if let Some((held, _)) = again {
                            w.resent += 1;
                            self.stats.resume_resent += 1;
                            if held {
                                // Within the batch of slack: I3 lets it pass too.
                                self.allowed[m][i] += 1;
                            }
                            if w.resent > w.missing + BATCH {
                                return err(format!(
                                    "I4: member {m} re-sent {} block versions after a reconnect; the DR lacked only {} \
                                     (block {} of epoch {local} it held durably)",
                                    w.resent, w.missing, b.index
                                ));
                            }
                        }
                    }
                    self.ships[m][i] += 1;
                    self.stats.blocks_shipped += 1;
                    let per_epoch = self.epoch_ships[m].entry((*local, b.index)).or_default();
                    *per_epoch += 1;
                    if self.cfg.mode == Mode::Interval && *per_epoch > 1 {
                        return err(format!(
                            "I3: interval mode shipped block {} of member {m} twice in epoch {local}",
                            b.index
                        ));
                    }
                    let (bw, bs) = &self.base[m];
                    let written = self.reference.writes[m][i] - bw[i];
                    let shipped = self.ships[m][i] - bs[i];
                    let allowed = self.allowed[m][i];
                    if shipped > written + allowed {
                        return err(format!(
                            "I3: member {m} block {} shipped {shipped} times for {written} writes and {allowed} \
                             re-sends allowed since the last rebase",
                            b.index
                        ));
                    }
                }
            }
            ToReplica::ResyncHashRequest { blocks, .. } => {
                // A request sent on a Welcome that predates the first fold
                // is answered and then ignored.
                let Some(fb) = self.failback.as_ref().filter(|fb| !fb.done[m]) else {
                    // The repair of a refused fold: the comparison re-sends.
                    self.reset_coalescing(m, true);
                    return Ok(());
                };
                // Region granularity: after a restart either side knows its
                // writes only through its write-intent record.
                let regions: BTreeSet<u64> = fb.o_written[m]
                    .iter()
                    .chain(fb.n_written[m].iter())
                    .chain(fb.n_maybe[m].iter())
                    .chain(self.rotted[m].iter())
                    .map(|b| self.geo.region_of(*b))
                    .collect();
                for b in blocks {
                    if !regions.contains(&self.geo.region_of(*b)) {
                        return err(format!(
                            "I5: failback candidate block {b} of member {m} was written neither on the new primary since \
                             promotion nor (region-wise) on the old one after its last committed epoch"
                        ));
                    }
                }
                // And they cover the whole union: a block left out would
                // ship (if at all) without its comparison.
                let asked: BTreeSet<u64> = blocks.iter().copied().collect();
                if let Some(b) = fb.n_at_welcome[m].iter().find(|b| !asked.contains(b)) {
                    return err(format!(
                        "I5: failback candidates of member {m} leave out block {b}, written on the new primary since promotion"
                    ));
                }
                if let Some(b) = fb.o_required[m].iter().find(|b| !asked.contains(b)) {
                    return err(format!(
                        "I5: failback candidates of member {m} leave out block {b}, written on the old primary after the DR's last committed epoch"
                    ));
                }
                self.stats.failback_coverage_checks += 1;
                self.reset_coalescing(m, true);
            }
            _ => {}
        }
        Ok(())
    }

    /// Rebase I3's count. Versions written and not shipped yet stay owed
    /// (at most two a block: the closing and the open epoch's). An abort, a
    /// restart, a failback comparison or a failover legitimately re-send
    /// (`resend`): one more version of every block is allowed. A freeze
    /// re-sends nothing; a reconnect is no rebase (see `on_reconnect_welcome`).
    fn reset_coalescing(&mut self, m: usize, resend: bool) {
        for i in 0..self.cfg.blocks as usize {
            let written = self.reference.writes[m][i] - self.base[m].0[i];
            let shipped = self.ships[m][i] - self.base[m].1[i];
            let owed = (written + self.allowed[m][i]).saturating_sub(shipped).min(2);
            self.allowed[m][i] = owed + u64::from(resend);
        }
        self.base[m] = (self.reference.writes[m].clone(), self.ships[m].clone());
        self.epoch_ships[m].clear();
        self.resume[m] = None;
    }

    /// The primary took a reconnect `Welcome` (the DR had committed local
    /// epoch `committed` and staged `staged`): every version it sent of an
    /// epoch still open at the DR that the DR's store does not hold durably
    /// (by a completed sync) may go once more; the rest may not, beyond one
    /// batch. The DR's store decides, not the replica's claim.
    fn on_reconnect_welcome(&mut self, m: usize, committed: u64, staged: Option<u64>, named: &[(u64, u64, SendSeq)]) {
        let dr = self.dr();
        let store = match &self.sites[dr][m] {
            Vol::Replica(r) => Some(r.store()),
            _ => None,
        };
        // Only the primary's closing and open epochs can ship again: at most
        // the two newest it shipped in.
        let top = self.sent[m].keys().map(|k| k.0).max().unwrap_or(0);
        self.sent[m].retain(|k, _| k.0 + 1 >= top);
        let mut outstanding = BTreeMap::new();
        let mut missing = 0;
        for (&(e, b), sent) in &self.sent[m] {
            if e <= committed || Some(e) == staged {
                continue;
            }
            // What the replica can know it holds: synced since it last
            // restarted, or synced before and named by its record (which
            // `check_resume_point` verified against the store).
            let named = named.binary_search(&(e, b, sent.seq)).is_ok();
            let held = !sent.ambiguous()
                && store.is_some_and(|s| {
                    s.holds_synced_since_crash(e, b, &sent.bytes) || named && s.holds_synced(e, b, &sent.bytes)
                });
            if !held {
                missing += 1;
                self.allowed[m][b as usize] += 1;
            }
            outstanding.insert((e, b), (held, sent.writes));
        }
        if !outstanding.is_empty() {
            self.stats.resumes += 1;
            self.stats.resume_missing += missing;
            self.stats.resume_held += outstanding.len() as u64 - missing;
        }
        self.resume[m] = Some(ResumeWatch {
            outstanding,
            missing,
            resent: 0,
        });
        // The interval mode's once-per-epoch rule holds across sessions only
        // for versions the DR kept; the lost ones may go once more.
        self.epoch_ships[m].retain(|k, _| {
            self.resume[m]
                .as_ref()
                .is_some_and(|w| w.outstanding.get(k).is_some_and(|o| o.0))
        });
    }

    /// A resume point the replica names must be durable in its store, with
    /// the bytes the primary sent for that version (unless they were
    /// corrupted on the way; the seal's check refuses those).
    fn check_resume_point(&self, m: usize, held: &[(u64, u64, SendSeq)]) -> Outcome {
        let Vol::Replica(r) = &self.sites[self.dr()][m] else {
            return Ok(());
        };
        for &(e, b, seq) in held {
            let Some(Sent { seq: last, bytes, .. }) = self.sent[m].get(&(e, b)) else {
                continue;
            };
            if *last != seq || self.corrupted[m].contains(&seq) {
                continue;
            }
            if !r.store().holds_synced(e, b, bytes) {
                return err(format!(
                    "I4: replica m{m} names block {b} of epoch {e} at {seq:?} as held, but its store does not hold it durably"
                ));
            }
        }
        Ok(())
    }

    /// The shell's 5 s timer at a replica: make the received stream durable.
    fn checkpoint(&mut self, m: usize) -> Outcome {
        if !matches!(self.sites[self.dr()][m], Vol::Replica(_)) {
            return Ok(());
        }
        self.replica_call(m, "replica checkpoint", 1.0, |r| r.checkpoint())?;
        Ok(())
    }

    /// Deliver one frame: a random non-empty channel, a random frame in it
    /// (so frames overtake each other within a channel too).
    fn deliver_random(&mut self) -> Outcome {
        let mut channels = Vec::new();
        if !self.to_coord.is_empty() {
            channels.push(0usize);
        }
        if !self.from_coord.is_empty() {
            channels.push(1);
        }
        for m in 0..self.cfg.members {
            if !self.net[m].to_replica.is_empty() {
                channels.push(2 + 2 * m);
            }
            if !self.net[m].to_primary.is_empty() {
                channels.push(3 + 2 * m);
            }
        }
        if channels.is_empty() {
            return Ok(());
        }
        let ch = channels[self.rng.below(channels.len() as u64) as usize];
        // Mostly in order, sometimes out of it.
        let pick = |rng: &mut Rng, len: usize| {
            if rng.chance(0.7) {
                0
            } else {
                rng.below(len as u64) as usize
            }
        };
        match ch {
            0 => {
                let i = pick(&mut self.rng, self.to_coord.len());
                let msg = self.to_coord.remove(i);
                self.deliver_to_coord(msg)
            }
            1 => {
                let i = pick(&mut self.rng, self.from_coord.len());
                if self.spanning && self.rng.chance(0.05) {
                    return self.lose_decision();
                }
                let (m, msg, _) = self.from_coord.remove(i);
                self.deliver_from_coord(m as usize, msg)
            }
            c if c % 2 == 0 => {
                let m = (c - 2) / 2;
                let i = pick(&mut self.rng, self.net[m].to_replica.len());
                let f = self.net[m].to_replica.remove(i);
                self.deliver_to_replica(m, f)
            }
            c => {
                let m = (c - 3) / 2;
                let i = pick(&mut self.rng, self.net[m].to_primary.len());
                let f = self.net[m].to_primary.remove(i);
                self.deliver_to_primary(m, f)
            }
        }
    }

    fn duplicate_random(&mut self) -> Outcome {
        let m = self.rng.below(self.cfg.members as u64) as usize;
        let n = &mut self.net[m];
        if !n.to_replica.is_empty() && self.rng.chance(0.5) {
            let i = self.rng.below(n.to_replica.len() as u64) as usize;
            let f = n.to_replica[i].clone();
            n.to_replica.push(f);
        } else if !n.to_primary.is_empty() {
            let i = self.rng.below(n.to_primary.len() as u64) as usize;
            let f = n.to_primary[i].clone();
            n.to_primary.push(f);
        }
        Ok(())
    }

    fn deliver_to_replica(&mut self, m: usize, mut f: ToReplica) -> Outcome {
        self.note(format!("  -> r{m} {}", brief_to_replica(&f)));
        self.corrupt(m, &mut f);
        let dr = self.dr();
        let Vol::Replica(r) = &mut self.sites[dr][m] else {
            return Ok(());
        };
        let before = r.stats().clone();
        if self
            .replica_call(m, "replica on_frame", 1.0, |r| r.on_frame(f))?
            .is_none()
        {
            return Ok(());
        }
        let Vol::Replica(r) = &mut self.sites[dr][m] else {
            return Ok(());
        };
        let replies = r.take_to_primary();
        let to_coord = r.take_to_coordinator();
        for f in &replies {
            if let Reply::Welcome { held, .. } = &f.reply {
                self.check_resume_point(m, held)?;
            }
        }
        self.net[m].to_primary.extend(replies);
        // A coordinator in the replica's process takes the report or is down
        // with it; one on another node gets it once it is back.
        if self.coord_up() || self.spanning {
            self.to_coord.extend(to_coord);
        }
        self.after_replica_call(m, &before)
    }

    /// A bit flipped in the payload of some blocks of a frame on the way.
    fn corrupt(&mut self, m: usize, f: &mut ToReplica) {
        if self.corrupt_in_flight <= 0.0 {
            return;
        }
        let ToReplica::Blocks { blocks, data, .. } = f else {
            return;
        };
        let bs = self.cfg.block_size;
        for sb in blocks.iter() {
            if let Payload::Data { at } = sb.payload {
                if self.rot.chance(self.corrupt_in_flight) {
                    let at = at as usize + self.rot.below(bs as u64) as usize;
                    data[at] ^= 1 << self.rot.below(8);
                    self.stats.corruptions_injected += 1;
                    self.corrupted[m].insert(sb.seq);
                    self.trace
                        .push(format!("    (bit flipped in block {} to r{m})", sb.index));
                }
            }
        }
    }

    /// Count what the replica's manifest check refused, and close the
    /// session when the replica asks: the primary re-sends on a new one.
    fn after_replica_call(&mut self, m: usize, before: &ReplicaStats) -> Outcome {
        let dr = self.dr();
        let Vol::Replica(r) = &mut self.sites[dr][m] else {
            return Ok(());
        };
        self.stats.corruptions_detected += r.stats().manifest_mismatches - before.manifest_mismatches;
        self.stats.folds_refused += r.stats().folds_refused - before.folds_refused;
        if let Some(fb) = &mut self.failback {
            if r.resync_candidates().is_none() && r.committed_group() > 0 {
                fb.done[m] = true;
            }
        }
        if r.take_link_reset() {
            self.note(format!("  r{m} closes the session: a seal or a fold failed its check"));
            self.disconnect(m)?;
        }
        Ok(())
    }

    fn deliver_to_primary(&mut self, m: usize, f: ToPrimary) -> Outcome {
        self.note(format!("  -> p{m} {:?}", f.reply).chars().take(160).collect());
        let is_welcome = matches!(f.reply, Reply::Welcome { .. });
        let (welcome_committed, resume_from) = match &f.reply {
            Reply::Welcome {
                committed_group,
                committed,
                staged,
                held,
                ..
            } => (*committed_group, (*committed, staged.map(|s| s.0), held.clone())),
            _ => (0, (0, None, Vec::new())),
        };
        let is_hashes = matches!(f.reply, Reply::ResyncHashes { .. });

        let Some(p) = self.primary(m) else {
            return Ok(());
        };
        let was_connected = p.is_connected();
        if self.primary_call(m, "primary on_frame", |p| p.on_frame(f))?.is_none() {
            return self.collect_events();
        }
        let now_connected = self.primary(m).is_some_and(|p| p.is_connected());
        if is_welcome && !was_connected && now_connected {
            self.on_reconnect_welcome(m, resume_from.0, resume_from.1, &resume_from.2);
            if let Some(fb) = &mut self.failback {
                // Writes of an epoch the replica records as committed are in
                // its image, or (a fold it refused) among its own candidates.
                let after = |b: &&u64| self.reference.write_group[m][**b as usize] > welcome_committed;
                fb.n_at_welcome[m] = fb.n_written[m].iter().filter(after).copied().collect();
            }
        }
        if is_hashes {
            self.snapshot_for_compare(m);
        }
        self.collect_events()
    }

    /// Whether slot `m` is in the group at group epoch `g`.
    fn member_at(&self, m: usize, g: GroupEpoch) -> bool {
        match (self.reshape, self.reshaped_at) {
            (Some(Reshape::Join(j)), None) => m != j,
            (Some(Reshape::Join(j)), Some(e)) => m != j || g >= e,
            (Some(Reshape::Leave(l)), Some(e)) => m != l || g < e,
            _ => true,
        }
    }

    /// The controller changes the membership at the next group epoch, with
    /// nothing pending: the coordinator records it first.
    fn reshape_now(&mut self) -> Outcome {
        let dr = self.dr();
        if self.phase != Phase::Paired || self.pending.is_some() || self.abort_needed.is_some() || self.failovers > 0 {
            return Ok(());
        }
        let Some(Coord::Up(c)) = &mut self.coords[dr] else {
            return Ok(());
        };
        let e = self.next_group;
        let members: Vec<u32> = match self.reshape {
            Some(Reshape::Leave(l)) => (0..self.cfg.members).filter(|&m| m != l).map(|m| m as u32).collect(),
            Some(Reshape::Join(_)) => (0..self.cfg.members as u32).collect(),
            None => return Ok(()),
        };
        c.change_membership(e, members.clone())
            .map_err(|err| format!("membership change at g{e} refused: {err}"))?;
        self.reshaped_at = Some(e);
        self.stats.membership_changes += 1;
        self.note(format!("membership from g{e}: {members:?}"));
        Ok(())
    }

    fn coord_up(&self) -> bool {
        matches!(self.coords[self.dr()], Some(Coord::Up(_)))
    }

    fn deliver_to_coord(&mut self, msg: ToCoordinator) -> Outcome {
        self.note(format!("  -> coord {msg:?}"));
        let dr = self.dr();
        let Some(Coord::Up(c)) = &mut self.coords[dr] else {
            if self.spanning {
                // The member's node keeps the report until a coordinator
                // takes it.
                self.to_coord.push(msg);
            }
            return Ok(());
        };
        c.on_message(msg.clone()).map_err(|e| format!("coordinator: {e}"))?;
        let out = c.take_out();
        let reporter = match msg {
            ToCoordinator::Staged { member, .. } | ToCoordinator::Abort { member, .. } => member,
        };
        for (m, d) in out {
            let answers = (self.spanning && m == reporter).then(|| msg.clone());
            self.from_coord.push((m, d, answers));
        }
        Ok(())
    }

    fn deliver_from_coord(&mut self, m: usize, msg: FromCoordinator) -> Outcome {
        self.note(format!("  coord -> r{m} {msg:?}"));
        let dr = self.dr();
        let Vol::Replica(r) = &mut self.sites[dr][m] else {
            return Ok(());
        };
        let before = r.stats().clone();
        if self
            .replica_call(m, "replica on_coordinator", 5.0, |r| r.on_coordinator(msg))?
            .is_none()
        {
            return Ok(());
        }
        let Vol::Replica(r) = &mut self.sites[dr][m] else {
            return Ok(());
        };
        let replies = r.take_to_primary();
        self.net[m].to_primary.extend(replies);
        let to_coord = r.take_to_coordinator();
        self.to_coord.extend(to_coord);
        self.after_replica_call(m, &before)
    }

    fn disconnect(&mut self, m: usize) -> Outcome {
        if !self.net[m].connected {
            return Ok(());
        }
        self.note(format!("disconnect m{m}"));
        self.net[m].connected = false;
        if let Some(p) = self.primary(m) {
            p.disconnect();
        }
        // Frames on the wire are lost or delayed past the reconnect.
        let keep: Vec<bool> = (0..self.net[m].to_replica.len())
            .map(|_| self.rng.chance(0.3))
            .collect();
        let mut it = keep.into_iter();
        self.net[m].to_replica.retain(|_| it.next().unwrap_or(false));
        let keep: Vec<bool> = (0..self.net[m].to_primary.len())
            .map(|_| self.rng.chance(0.3))
            .collect();
        let mut it = keep.into_iter();
        self.net[m].to_primary.retain(|_| it.next().unwrap_or(false));
        Ok(())
    }

    fn connect(&mut self, m: usize) -> Outcome {
        if self.net[m].connected || self.phase == Phase::FailedOver {
            return Ok(());
        }
        let dr = self.dr();
        if !matches!(self.sites[dr][m], Vol::Replica(_)) {
            return Ok(());
        }
        let Some(p) = self.primary(m) else { return Ok(()) };
        if p.fenced_by().is_some() {
            return Ok(());
        }
        let hello = p.connect();
        self.net[m].connected = true;
        if self.replay_ghosts {
            // A Hello stays among the frames a dead incarnation may replay.
            self.recent[m].retain(|f| !matches!(f, ToReplica::Hello { .. }));
            self.recent[m].push(hello.clone());
        }
        self.net[m].to_replica.push(hello);
        self.note(format!("connect m{m}"));
        Ok(())
    }

    // ----- crashes and restarts ---------------------------------------------

    fn crash_primary(&mut self, m: usize) -> Outcome {
        let prim = self.prim;
        let vol = std::mem::replace(&mut self.sites[prim][m], Vol::Down(SimStore::new(1), true));
        let Vol::Primary(p) = vol else {
            self.sites[prim][m] = vol;
            return Ok(());
        };
        self.note(format!("crash primary m{m}"));
        self.stats.primary_crashes += 1;
        self.ghosts[m] = std::mem::take(&mut self.recent[m]);
        let mut store = p.into_store();
        store.crash(&mut self.rng, &mut self.rot);
        self.sites[prim][m] = Vol::Down(store, true);
        self.disconnect(m)?;
        if let Some(g) = self.pending {
            if self.consistent[m] < g {
                self.abort_everywhere(g)?;
            }
        }
        Ok(())
    }

    fn restart_primary(&mut self, m: usize) -> Outcome {
        let prim = self.prim;
        if !matches!(self.sites[prim][m], Vol::Down(_, true)) {
            return Ok(());
        }
        let Vol::Down(store, _) = std::mem::replace(&mut self.sites[prim][m], Vol::Down(SimStore::new(1), true)) else {
            unreachable!("checked above")
        };
        let mut p = Primary::open(store, self.geo, self.cfg.mode).map_err(|e| format!("reopen primary: {e}"))?;
        // I4: a restarted primary re-sends exactly its write-intent regions.
        let regions = p.store().durable_intent();
        let expect: u64 = regions.iter().map(|r| self.geo.region_range(*r).count() as u64).sum();
        if p.dirty_blocks() != expect {
            return err(format!(
                "I4: restarted member {m} re-sends {} blocks, its intent record covers {expect}",
                p.dirty_blocks()
            ));
        }
        let mut actual = vec![0; self.cfg.block_size * self.cfg.blocks as usize];
        p.read(0, &mut actual).map_err(|e| format!("read: {e}"))?;
        if self.phase != Phase::FailedOver {
            self.reference.adopt_after_crash(m, &actual, self.next_group)?;
            // What the record could not rule out is re-sent in the open
            // epoch: for failback it counts as written now.
            for r in &regions {
                for b in self.geo.region_range(*r) {
                    self.reference.write_group[m][b as usize] = self.next_group;
                }
            }
        }
        self.note(format!("restart primary m{m}"));
        if let Some(g) = self.abort_needed {
            p.abort(g).map_err(|e| format!("abort: {e}"))?;
        }
        self.sites[prim][m] = Vol::Primary(Box::new(p));
        self.reset_coalescing(m, true);
        self.sent[m].clear();
        self.corrupted[m].clear();
        self.collect_events()
    }

    /// A power cut on one DR member alone (the coordinator stays up).
    fn crash_replica(&mut self, m: usize) -> Outcome {
        let dr = self.dr();
        let vol = std::mem::replace(&mut self.sites[dr][m], Vol::Down(SimStore::new(1), false));
        let Vol::Replica(r) = vol else {
            self.sites[dr][m] = vol;
            return Ok(());
        };
        self.note(format!("crash replica m{m}"));
        self.stats.dr_crashes += 1;
        let mut store = r.into_store();
        store.crash(&mut self.rng, &mut self.rot);
        self.sites[dr][m] = Vol::Down(store, false);
        self.disconnect(m)
    }

    fn crash_dr(&mut self) -> Outcome {
        if self.phase == Phase::FailedOver {
            return Ok(());
        }
        let dr = self.dr();
        self.note("crash DR site".into());
        self.stats.dr_crashes += 1;
        for m in 0..self.cfg.members {
            let vol = std::mem::replace(&mut self.sites[dr][m], Vol::Down(SimStore::new(1), false));
            self.sites[dr][m] = match vol {
                Vol::Replica(r) => {
                    let mut s = r.into_store();
                    s.crash(&mut self.rng, &mut self.rot);
                    Vol::Down(s, false)
                }
                other => other,
            };
        }
        self.coords[dr] = match self.coords[dr].take() {
            Some(Coord::Up(c)) => Some(Coord::Down(c.into_log())),
            other => other,
        };
        self.to_coord.clear();
        self.from_coord.clear();
        // Every session to the site breaks with it.
        for m in 0..self.cfg.members {
            self.disconnect(m)?;
        }
        Ok(())
    }

    /// The coordinator's node crashes alone (spanning groups): its staged
    /// sets and every report and decision in flight are lost; the members'
    /// nodes and the primaries' sessions stay up.
    fn crash_coordinator(&mut self) -> Outcome {
        let dr = self.dr();
        if self.phase == Phase::FailedOver || !self.coord_up() {
            return Ok(());
        }
        self.note("crash the coordinator's node".into());
        self.stats.coordinator_crashes += 1;
        self.coords[dr] = match self.coords[dr].take() {
            Some(Coord::Up(c)) => Some(Coord::Down(c.into_log())),
            other => other,
        };
        // Reports stay queued at their nodes (a report is kept until a
        // coordinator answers it); the replies and the streams die.
        for (m, _, answers) in std::mem::take(&mut self.from_coord) {
            match answers {
                Some(report) => self.to_coord.push(report),
                None => self.catch_up[m as usize] = true,
            }
        }
        Ok(())
    }

    /// A decision on its way to another node is lost: a report's reply
    /// (its node sends the report again) or a decision stream that broke
    /// (its node catches up when it subscribes again).
    fn lose_decision(&mut self) -> Outcome {
        if self.from_coord.is_empty() {
            return Ok(());
        }
        let i = self.rng.below(self.from_coord.len() as u64) as usize;
        let (m, msg, answers) = self.from_coord.remove(i);
        self.note(format!("lost decision for r{m}: {msg:?}"));
        self.stats.coordinator_messages_lost += 1;
        match answers {
            Some(report) => self.to_coord.push(report),
            None => self.catch_up[m as usize] = true,
        }
        Ok(())
    }

    /// Member `m`'s node (re)subscribes to the coordinator's decisions: it
    /// reports its staged epoch again and takes the record's decision for
    /// it, both through the channels that reorder, delay and lose.
    fn catch_up(&mut self, m: usize) -> Outcome {
        let dr = self.dr();
        let Some(Coord::Up(c)) = &self.coords[dr] else {
            return Ok(());
        };
        let Vol::Replica(r) = &self.sites[dr][m] else {
            return Ok(());
        };
        self.catch_up[m] = false;
        self.stats.catch_ups += 1;
        let Some(staged) = r.staged_group() else {
            return Ok(());
        };
        let decision = c.record().decision_for(m as u32, staged);
        self.note(format!("catch up r{m}: staged g{staged}, record says {decision:?}"));
        self.to_coord.push(ToCoordinator::Staged {
            member: m as u32,
            group: staged,
        });
        if let Some(d) = decision {
            self.from_coord.push((m as u32, d, None));
        }
        Ok(())
    }

    fn restart_dr(&mut self) -> Outcome {
        let dr = self.dr();
        if let Some(Coord::Down(log)) = &self.coords[dr] {
            let c =
                Coordinator::open(log.clone(), self.initial_members as u32).map_err(|e| format!("coordinator: {e}"))?;
            self.coords[dr] = Some(Coord::Up(c));
            if self.spanning {
                // The members that stayed up learn it when their decision
                // streams come back; the others re-report as they reopen.
                self.catch_up = vec![true; self.cfg.members];
            }
        }
        for m in 0..self.cfg.members {
            if !matches!(self.sites[dr][m], Vol::Down(_, false)) {
                continue;
            }
            let Vol::Down(store, _) = std::mem::replace(&mut self.sites[dr][m], Vol::Down(SimStore::new(1), false))
            else {
                unreachable!("checked above")
            };
            let mut r = Replica::open(store, self.geo, m as u32).map_err(|e| format!("reopen replica: {e}"))?;
            r.set_retention(self.retain);
            self.to_coord.extend(r.take_to_coordinator());
            self.sites[dr][m] = Vol::Replica(Box::new(r));
            self.note(format!("restart replica m{m}"));
        }
        Ok(())
    }

    // ----- failover and failback ----------------------------------------------

    fn failover(&mut self) -> Outcome {
        // Not yet modelled: a failover of a group whose membership differs
        // from its slots (the promotion of the members of the promoted epoch
        // alone). A member that will leave may fail over before it does; the
        // membership then stays as it is.
        let full = matches!((self.reshape, self.reshaped_at), (None | Some(Reshape::Leave(_)), None));
        if self.phase != Phase::Paired || self.failovers >= 2 || !full {
            return Ok(());
        }
        if let Some((m, why)) = self.promote_refusal() {
            // Fail closed: a member's image is not the group's cut. The
            // primary site stays (this schedule's disaster is called off).
            self.note(format!("failover refused: r{m}: {why}"));
            return Ok(());
        }
        self.note("FAILOVER".into());
        self.failovers += 1;
        // The next ghosts would be the old site's: fencing is its own check.
        self.ghosts
            .iter_mut()
            .chain(self.recent.iter_mut())
            .for_each(Vec::clear);
        self.stats.failovers += 1;
        // The primary site is lost: every primary crashes.
        let prim = self.prim;
        let mut o_written = Vec::new();
        for m in 0..self.cfg.members {
            let known = self.flushed_known[m];
            let after_known = |b: &u64| {
                let b = *b as usize;
                self.reference.write_group[m][b] > known || self.reference.attempted_group[m][b] > known
            };
            o_written.push((0..self.cfg.blocks).filter(after_known).collect::<BTreeSet<_>>());
            let vol = std::mem::replace(&mut self.sites[prim][m], Vol::Down(SimStore::new(1), true));
            self.sites[prim][m] = match vol {
                Vol::Primary(p) => {
                    let mut s = p.into_store();
                    s.crash(&mut self.rng, &mut self.rot);
                    Vol::Down(s, true)
                }
                other => other,
            };
            self.net[m].connected = false;
        }
        self.restart_dr()?;
        let dr = self.dr();
        let record = match &self.coords[dr] {
            Some(c) => c.log().record,
            None => return err("no coordinator at the DR site"),
        };
        // With points retained, the promote may go back to one of them.
        let point = self.choose_retained_point();
        let k = point.unwrap_or(record.committed);
        if let Some(r) = point {
            self.note(format!(
                "promote to retained point {r} (committed {})",
                record.committed
            ));
            self.stats.retained_promotes += 1;
        }
        // The old primary's write-intent record covers every write after the
        // DR's committed epoch: none of its regions was cleared past it. A
        // point retained before it rolls back blocks that neither side's
        // write record covers: the candidates must still include them.
        for (m, o) in o_written.iter_mut().enumerate() {
            o.extend((0..self.cfg.blocks).filter(|&b| self.reference.write_group[m][b as usize] > k));
        }
        let o_required: Vec<BTreeSet<u64>> = (0..self.cfg.members)
            .map(|m| {
                (0..self.cfg.blocks)
                    .filter(|&b| self.reference.write_group[m][b as usize] > k)
                    .collect()
            })
            .collect();
        let expected = self
            .reference
            .image_at(k)
            .ok_or(format!("no freeze point {k} in the model"))?;
        let site_id = self.site_ids[dr];
        for (m, want) in expected.iter().enumerate() {
            let vol = std::mem::replace(&mut self.sites[dr][m], Vol::Down(SimStore::new(1), false));
            let Vol::Replica(r) = vol else {
                return err("DR member not a replica at failover");
            };
            let mut p = r
                .promote_at(&record, site_id, self.cfg.mode, point)
                .map_err(|e| format!("promote: {e}"))?;
            let mut img = vec![0; want.len()];
            p.read(0, &mut img).map_err(|e| format!("read: {e}"))?;
            if img != *want {
                return err(format!("I5: promoted member {m} is not the image of group epoch {k}"));
            }
            self.sites[dr][m] = Vol::Primary(Box::new(p));
        }
        self.to_coord.clear();
        self.from_coord.clear();
        self.coords[dr] = None;
        self.prim = dr;
        self.phase = Phase::FailedOver;
        // The model continues from freeze point k: later writes were lost (RPO).
        self.reference.live = expected;
        for m in 0..self.cfg.members {
            self.reference.flush(m);
            self.consistent[m] = 0;
            self.flushed_known[m] = 0;
            self.aborted[m].clear();
            self.reset_coalescing(m, true);
            self.sent[m].clear();
            self.corrupted[m].clear();
        }
        self.pending = None;
        self.abort_needed = None;
        self.reported = 0;
        self.failback = Some(Failback {
            n_written: vec![BTreeSet::new(); self.cfg.members],
            n_at_welcome: vec![BTreeSet::new(); self.cfg.members],
            n_maybe: vec![BTreeSet::new(); self.cfg.members],
            done: vec![false; self.cfg.members],
            o_written,
            o_required,
        });
        Ok(())
    }

    /// A point every DR member retains, drawn at random, or none (promote
    /// to the last committed epoch) when none is retained.
    fn choose_retained_point(&mut self) -> Option<GroupEpoch> {
        if self.retain == 0 {
            return None;
        }
        let dr = self.dr();
        let mut common: Option<BTreeSet<GroupEpoch>> = None;
        for vol in &self.sites[dr] {
            let Vol::Replica(r) = vol else { return None };
            let points: BTreeSet<GroupEpoch> = r.retained_points().into_iter().collect();
            common = Some(match common {
                None => points,
                Some(c) => c.intersection(&points).copied().collect(),
            });
        }
        let common: Vec<GroupEpoch> = common?.into_iter().collect();
        if common.is_empty() {
            return None;
        }
        Some(common[self.rot.below(common.len() as u64) as usize])
    }

    /// Would promote refuse on some DR member (a dry run on copies)?
    fn promote_refusal(&self) -> Option<(usize, String)> {
        let dr = self.dr();
        let record = self.coords[dr].as_ref()?.log().record;
        for m in 0..self.cfg.members {
            let replica = match &self.sites[dr][m] {
                Vol::Replica(r) => (**r).clone(),
                Vol::Down(s, false) => Replica::open(s.durable_copy(), self.geo, m as u32).ok()?,
                _ => return None,
            };
            if let Err(e @ EngineError::NotConsistent { .. }) = replica.promote(&record, 99, self.cfg.mode) {
                return Some((m, e.to_string()));
            }
        }
        None
    }

    fn failback(&mut self) -> Outcome {
        match self.phase {
            Phase::FailedOver => {}
            Phase::Paired | Phase::FailingBack => {
                // The old site, cut off, may come back and take stray writes first.
                return self.restart_old_site();
            }
        }
        let old = self.dr();
        if self.sites[old].iter().any(|v| matches!(v, Vol::Down(..))) {
            // The old site comes back first, fenced off but taking writes
            // (strays) until the operator fails back.
            self.note("old site back".into());
            return self.restart_old_site();
        }
        if self.rot.chance(0.5) {
            self.fence_old_site()?;
        }
        self.note("FAILBACK".into());
        for m in 0..self.cfg.members {
            let vol = std::mem::replace(&mut self.sites[old][m], Vol::Down(SimStore::new(1), false));
            let Vol::Primary(p) = vol else {
                return err("old member not a primary at failback");
            };
            let discard = self.rng.chance(0.3);
            let mut r = Replica::from_demotion(*p, m as u32, discard).map_err(|e| format!("demote: {e}"))?;
            r.set_retention(self.retain);
            self.demoted[m] = Some(r.store().image_bytes(self.cfg.blocks));
            if !discard && r.store().snapshots() == 0 {
                return err(format!("I5: member {m}'s stray writes were not kept as a snapshot"));
            }
            self.sites[old][m] = Vol::Replica(Box::new(r));
        }
        let c =
            Coordinator::open(SimLog::default(), self.cfg.members as u32).map_err(|e| format!("coordinator: {e}"))?;
        self.coords[old] = Some(Coord::Up(c));
        for n in &mut self.net {
            n.connected = false;
        }
        self.phase = Phase::FailingBack;
        self.dr_fingerprint = u64::MAX;
        Ok(())
    }

    /// The live old site reaches the promoted one, whose transport answers
    /// its Hello with the newer generation: every old primary is fenced,
    /// refuses freezes and ships nothing, and still takes host writes.
    fn fence_old_site(&mut self) -> Outcome {
        let (old, new) = (self.dr(), self.prim);
        for m in 0..self.cfg.members {
            let Vol::Primary(n) = &self.sites[new][m] else { continue };
            let newer = n.generation();
            let Vol::Primary(p) = &mut self.sites[old][m] else {
                continue;
            };
            if p.fenced_by().is_some() {
                continue;
            }
            let _hello = p.connect();
            p.on_frame(ToPrimary {
                generation: newer,
                reply: Reply::Fenced { generation: newer },
            })
            .map_err(|e| format!("fence: {e}"))?;
            if p.fenced_by() != Some(newer) {
                return err(format!(
                    "old primary m{m} was told of generation {newer:?} and is not fenced"
                ));
            }
            if !matches!(p.freeze(u64::MAX), Err(EngineError::Fenced { .. })) {
                return err(format!("fenced old primary m{m} accepted a freeze"));
            }
            if p.poll_send(8).map_err(|e| format!("poll_send: {e}"))?.is_some() {
                return err(format!("fenced old primary m{m} still ships"));
            }
            self.stats.old_primaries_fenced += 1;
            self.note(format!("old primary m{m} fenced by {newer:?}"));
        }
        Ok(())
    }

    fn restart_old_site(&mut self) -> Outcome {
        if self.phase != Phase::FailedOver {
            return Ok(());
        }
        let old = self.dr();
        for m in 0..self.cfg.members {
            if let Vol::Down(_, true) = self.sites[old][m] {
                let Vol::Down(store, _) = std::mem::replace(&mut self.sites[old][m], Vol::Down(SimStore::new(1), true))
                else {
                    unreachable!("checked above")
                };
                let p =
                    Primary::open(store, self.geo, self.cfg.mode).map_err(|e| format!("reopen old primary: {e}"))?;
                self.sites[old][m] = Vol::Primary(Box::new(p));
            }
        }
        Ok(())
    }

    fn snapshot_for_compare(&mut self, m: usize) {
        let dr = self.dr();
        let Vol::Replica(r) = &self.sites[dr][m] else { return };
        self.compare[m] = Some(r.store().image_bytes(self.cfg.blocks));
    }

    /// I5: a candidate ships only if the version shipped differs from the
    /// replica's copy (which does not change before the next fold). A candidate
    /// skipped wrongly would leave the old site's image off the freeze point,
    /// which the I1 check after the first fold catches.
    fn check_resync_decision(&mut self, m: usize, block: u64, shipped: bool) -> Outcome {
        if !shipped {
            self.stats.resync_skipped += 1;
            return Ok(());
        }
        let Some(o_img) = &self.compare[m] else {
            return err("resync decision before hashes");
        };
        let Some(ToReplica::Blocks { blocks, data, .. }) = &self.last_out[m] else {
            return err("resync shipment without a frame");
        };
        let Some(sb) = blocks.iter().find(|b| b.index == block) else {
            return err("compared block not in the frame");
        };
        let bs = self.cfg.block_size;
        let theirs = &o_img[block as usize * bs..(block as usize + 1) * bs];
        let same = match sb.payload {
            floe_engine::Payload::Zero => theirs.iter().all(|&x| x == 0),
            floe_engine::Payload::Data { at } => data[at as usize..at as usize + bs] == theirs[..],
        };
        if same {
            return err(format!(
                "I5: failback shipped block {block} of member {m}, which the old site already holds"
            ));
        }
        Ok(())
    }

    // ----- invariants ---------------------------------------------------------

    fn after_step(&mut self) -> Outcome {
        self.collect_events()?;
        if self.phase == Phase::Paired && self.failback.is_some() {
            let dr = self.dr();
            let done = self.sites[dr].iter().all(|v| match v {
                Vol::Replica(r) => r.resync_candidates().is_none(),
                Vol::Down(..) | Vol::Primary(_) => false,
            });
            if done {
                self.failback = None;
            }
        }
        if self.phase == Phase::FailedOver {
            return Ok(());
        }
        let dr = self.dr();
        let mut fp = match &self.coords[dr] {
            Some(Coord::Up(c)) => c.record().committed * 7919 + c.record().aborted.len() as u64,
            Some(Coord::Down(l)) => l.record.committed * 7919 + l.record.aborted.len() as u64,
            None => 0,
        };
        for vol in &self.sites[dr] {
            fp = fp.wrapping_mul(31).wrapping_add(match vol {
                Vol::Replica(r) => r.store().durable_version,
                Vol::Down(s, _) => s.durable_version,
                Vol::Primary(_) => 0,
            });
        }
        if fp == self.dr_fingerprint {
            return Ok(());
        }
        self.dr_fingerprint = fp;
        self.check_dr_alone()
    }

    /// I1: from its durable state alone — crash now, restart, redo decided
    /// folds, promote — the DR site yields every member at one freeze point,
    /// no older than the newest the primaries were told is consistent.
    fn check_dr_alone(&mut self) -> Outcome {
        let dr = self.dr();
        let Some(coord) = &self.coords[dr] else { return Ok(()) };
        let log = coord.log();
        if self.phase == Phase::FailingBack && log.record.committed == 0 {
            return Ok(());
        }
        if self.phase == Phase::FailingBack {
            self.phase = Phase::Paired;
            self.stats.failbacks_done += 1;
        }
        self.stats.dr_checks += 1;
        let mut replicas = Vec::new();
        for (m, vol) in self.sites[dr].iter().enumerate() {
            let store = match vol {
                Vol::Replica(r) => r.store().durable_copy(),
                Vol::Down(s, false) => s.durable_copy(),
                _ => return err("DR member in an unexpected role"),
            };
            let mut r = Replica::open(store, self.geo, m as u32).map_err(|e| format!("reopen replica: {e}"))?;
            r.set_retention(self.retain);
            replicas.push(r);
        }
        let mut c = Coordinator::open(log, self.initial_members as u32).map_err(|e| format!("coordinator: {e}"))?;
        let mut queue: Vec<ToCoordinator> = replicas.iter_mut().flat_map(|r| r.take_to_coordinator()).collect();
        while let Some(msg) = queue.pop() {
            c.on_message(msg).map_err(|e| format!("coordinator: {e}"))?;
            for (m, d) in c.take_out() {
                let r = &mut replicas[m as usize];
                r.on_coordinator(d).map_err(|e| format!("redo: {e}"))?;
                queue.extend(r.take_to_coordinator());
            }
        }
        let record: DecisionRecord = c.record().clone();
        let k = record.committed;
        if k < self.reported {
            return err(format!(
                "I1: DR site can only produce group epoch {k}, but {} was reported consistent",
                self.reported
            ));
        }
        let expected = self
            .reference
            .image_at(k)
            .ok_or(format!("I1: DR committed {k}, which the model never froze"))?;
        for (m, r) in replicas.into_iter().enumerate() {
            if !self.member_at(m, k) {
                // Not in the group at k: its image is no part of the cut.
                continue;
            }
            if r.resync_candidates().is_some() && !self.rotted[m].is_empty() && self.phase == Phase::Paired {
                // Failed closed after rot at rest: promote must refuse, and
                // no block of the image may hold bytes of no freeze point.
                let img = r.store().image_bytes(self.cfg.blocks);
                self.check_no_foreign_bytes(m, k, &img)?;
                match r.promote(&record, 99, self.cfg.mode) {
                    Err(EngineError::NotConsistent { .. }) => continue,
                    Err(e) => return err(format!("promote: {e}")),
                    Ok(_) => return err(format!("I1: member {m} awaits a resync, yet promote served its image")),
                }
            }
            self.check_retained_point(m, &r, &record)?;
            let mut p = r
                .promote(&record, 99, self.cfg.mode)
                .map_err(|e| format!("promote: {e}"))?;
            let mut img = vec![0; expected[m].len()];
            p.read(0, &mut img).map_err(|e| format!("read: {e}"))?;
            if img != expected[m] {
                let bs = self.cfg.block_size;
                let bad: Vec<usize> = (0..self.cfg.blocks as usize)
                    .filter(|b| img[b * bs..(b + 1) * bs] != expected[m][b * bs..(b + 1) * bs])
                    .collect();
                return err(format!(
                    "I1: DR member {m} is not the image of group epoch {k} (blocks {bad:?} differ)"
                ));
            }
        }
        Ok(())
    }

    // ----- frames of the dead -------------------------------------------------

    /// Now and then, deliver a frame that a crashed incarnation of a primary
    /// sent before it died (its session numbers are reused by the new one).
    /// The replica must refuse it whole; I1 shows it if it did not.
    fn replay_ghost(&mut self) -> Outcome {
        if !self.replay_ghosts || self.phase != Phase::Paired || !self.rot.chance(0.1) {
            return Ok(());
        }
        let haunted: Vec<usize> = (0..self.cfg.members).filter(|&m| !self.ghosts[m].is_empty()).collect();
        if haunted.is_empty() {
            return Ok(());
        }
        let m = haunted[self.rot.below(haunted.len() as u64) as usize];
        // Its Hello a third of the time: a reused session number is the
        // sharpest ghost.
        let hello = self.ghosts[m].iter().position(|f| matches!(f, ToReplica::Hello { .. }));
        let i = match hello {
            Some(h) if self.rot.chance(0.3) => h,
            _ => self.rot.below(self.ghosts[m].len() as u64) as usize,
        };
        let f = self.ghosts[m][i].clone();
        self.note(format!("  ghost of an earlier incarnation of p{m}:"));
        self.stats.ghosts_replayed += 1;
        self.deliver_to_replica(m, f)
    }

    /// Now and then, a bit of a staged block (of an epoch already acked as
    /// staged) flips on the DR's disk. The fold must refuse it.
    fn rot_staged_block(&mut self) {
        if self.rot_at_rest <= 0.0 || !self.rot.chance(self.rot_at_rest) {
            return;
        }
        let dr = self.dr();
        let m = self.rot.below(self.cfg.members as u64) as usize;
        let bit = self.rot.below(self.cfg.block_size as u64 * 8);
        let pick = self.rot.next_u64();
        let Vol::Replica(r) = &mut self.sites[dr][m] else {
            return;
        };
        let Some(st) = r.store().get_meta().ok().flatten().and_then(|meta| meta.staged) else {
            return;
        };
        if st.manifest.is_empty() {
            return;
        }
        let e = st.manifest[(pick % st.manifest.len() as u64) as usize];
        if r.store_mut().rot_staged(st.local, e.index, bit) {
            self.rotted[m].extend(st.manifest.iter().map(|e| e.index));
            self.stats.rot_injected += 1;
            self.note(format!("  (staged block {} of l{} rotted at r{m})", e.index, st.local));
        }
    }

    // ----- liveness while the schedule runs ----------------------------------

    /// Every member up in its role, every link up, the coordinator up.
    fn healthy(&self) -> bool {
        if self.phase == Phase::FailedOver || !self.coord_up() || self.catch_up.contains(&true) {
            return false;
        }
        let (prim, dr) = (self.prim, self.dr());
        (0..self.cfg.members).all(|m| {
            let primary_up =
                matches!(&self.sites[prim][m], Vol::Primary(p) if p.is_connected() && p.fenced_by().is_none());
            primary_up && self.net[m].connected && matches!(self.sites[dr][m], Vol::Replica(_))
        })
    }

    /// Liveness where it fails, not only at the end: each time a group epoch
    /// has been pending through `LIVENESS_STEPS` more healthy steps in a row, a copy of
    /// the world delivers every frame in order until it is quiet; the epoch
    /// must then be committed or aborted. The copy leaves the schedule (and
    /// its random stream) untouched, so a seed replays the same either way.
    fn probe_liveness(&mut self) -> Outcome {
        let Some(g) = self.pending.filter(|_| self.healthy()) else {
            self.stalled = None;
            return Ok(());
        };
        let steps = match self.stalled {
            Some((s, n)) if s == g => n + 1,
            _ => 1,
        };
        self.stalled = Some((g, steps));
        if steps % LIVENESS_STEPS != 0 {
            return Ok(());
        }
        self.stats.liveness_probes += 1;
        let trace = std::mem::take(&mut self.trace);
        let mut copy = self.clone();
        self.trace = trace;
        let drained = copy.drain();
        let stuck = copy.pending == Some(g);
        if drained.is_err() || stuck {
            self.trace.push("liveness probe: every frame delivered in order".into());
            self.trace.extend(copy.trace.into_iter().map(|l| format!("  probe{l}")));
        }
        drained.map_err(|e| format!("liveness probe: {e}"))?;
        if stuck {
            return err(format!(
                "liveness: group epoch {g} pending through {steps} healthy steps in a row, and still neither committed nor aborted after an in-order delivery of every frame"
            ));
        }
        Ok(())
    }

    /// A promote to one of the replica's retained points (a different one at
    /// each check) yields that group epoch's image, byte for byte.
    fn check_retained_point(&mut self, m: usize, r: &Replica<SimStore>, record: &DecisionRecord) -> Outcome {
        let points = r.retained_points();
        if points.is_empty() {
            return Ok(());
        }
        let point = points[self.stats.dr_checks as usize % points.len()];
        let want = self
            .reference
            .image_at(point)
            .ok_or(format!("retained point {point} was never frozen in the model"))?;
        let mut p = r
            .clone()
            .promote_at(record, 99, self.cfg.mode, Some(point))
            .map_err(|e| format!("promote to retained point {point}: {e}"))?;
        let mut img = vec![0; want[m].len()];
        p.read(0, &mut img).map_err(|e| format!("read: {e}"))?;
        if img != want[m] {
            return err(format!(
                "retained point: member {m} promoted to group epoch {point} is not that epoch's image"
            ));
        }
        self.stats.retained_checks += 1;
        Ok(())
    }

    /// Every block of `img` (member `m`) holds what the member held at some
    /// freeze point up to `k` (or at its demotion for a failback), or a tear
    /// of two such versions (a fold cut short, then refused on redo):
    /// nothing rotten was ever folded.
    fn check_no_foreign_bytes(&self, m: usize, k: GroupEpoch, img: &[u8]) -> Outcome {
        let bs = self.cfg.block_size;
        let mut images: Vec<Vec<u8>> = (0..=k)
            .filter_map(|j| self.reference.image_at(j))
            .map(|i| i[m].clone())
            .collect();
        images.extend(self.demoted[m].clone());
        let versions = |b: usize| images.iter().map(move |i| &i[b * bs..(b + 1) * bs]);
        for b in 0..self.cfg.blocks as usize {
            let got = &img[b * bs..(b + 1) * bs];
            let legit = versions(b).any(|new| {
                versions(b).any(|old| (0..=bs).any(|cut| got[..cut] == new[..cut] && got[cut..] == old[cut..]))
            });
            if !legit {
                return err(format!(
                    "I1: member {m} block {b} holds bytes of no freeze point up to {k} (a rotten block was folded)"
                ));
            }
        }
        Ok(())
    }

    // ----- the end: heal everything and demand progress ---------------------

    fn settle(&mut self) -> Outcome {
        // Healing is fault-free.
        self.cuts_enabled = false;
        while self.phase == Phase::FailedOver {
            self.failback()?;
        }
        for m in 0..self.cfg.members {
            self.restart_primary(m)?;
        }
        self.restart_dr()?;
        self.drain()?;
        if let Some(g) = self.pending {
            return err(format!(
                "group epoch {g} neither committed nor aborted after the network healed (coordinator up: {}, reports queued: {:?}, catching up: {:?})",
                self.coord_up(),
                self.to_coord,
                self.catch_up
            ));
        }
        let g = self.next_group;
        self.freeze()?;
        self.drain()?;
        if (0..self.cfg.members).any(|m| self.member_at(m, g) && self.consistent[m] < g) {
            return err(format!(
                "final group epoch {g} not consistent on every member after the network healed"
            ));
        }
        self.after_step()?;
        self.check_dr_alone()?;
        if self.reported < g {
            return err(format!("final group epoch {g} not reported consistent"));
        }
        if self.phase != Phase::Paired {
            return err("failback did not complete");
        }
        Ok(())
    }

    fn drain(&mut self) -> Outcome {
        let cuts = std::mem::replace(&mut self.cuts_enabled, false);
        let out = self.drain_quiet();
        self.cuts_enabled = cuts;
        out
    }

    /// Deliver every frame in order until the sites go quiet.
    fn drain_quiet(&mut self) -> Outcome {
        for _ in 0..20_000 {
            for m in 0..self.cfg.members {
                if self.catch_up[m] {
                    self.catch_up(m)?;
                }
            }
            for m in 0..self.cfg.members {
                self.connect(m)?;
            }
            let mut progressed = false;
            for m in 0..self.cfg.members {
                let Some(p) = self.primary(m) else { continue };
                if let Some(f) = p.poll_send(8).map_err(|e| format!("poll_send: {e}"))? {
                    self.observe_outgoing(m, &f)?;
                    self.net[m].to_replica.push(f);
                    progressed = true;
                }
            }
            self.collect_events()?;
            for m in 0..self.cfg.members {
                while !self.net[m].to_replica.is_empty() {
                    let f = self.net[m].to_replica.remove(0);
                    self.deliver_to_replica(m, f)?;
                    progressed = true;
                }
                while !self.net[m].to_primary.is_empty() {
                    let f = self.net[m].to_primary.remove(0);
                    self.deliver_to_primary(m, f)?;
                    progressed = true;
                }
            }
            while !self.to_coord.is_empty() || !self.from_coord.is_empty() {
                if !self.to_coord.is_empty() {
                    let msg = self.to_coord.remove(0);
                    self.deliver_to_coord(msg)?;
                }
                if !self.from_coord.is_empty() {
                    let (m, msg, _) = self.from_coord.remove(0);
                    self.deliver_from_coord(m as usize, msg)?;
                }
                progressed = true;
            }
            self.after_step()?;
            if !progressed {
                return Ok(());
            }
        }
        err("the sites never went quiet")
    }
}

fn brief_to_replica(f: &ToReplica) -> String {
    match f {
        ToReplica::Blocks { local, blocks, .. } => {
            let list: Vec<String> = blocks
                .iter()
                .map(|b| format!("{}@{}.{}", b.index, b.seq.incarnation, b.seq.counter))
                .collect();
            format!("Blocks l{local} [{}]", list.join(" "))
        }
        ToReplica::Sealed {
            local,
            group,
            manifest,
            incarnation,
            ..
        } => {
            format!("Sealed l{local} g{group} i{incarnation} ({} entries)", manifest.len())
        }
        other => format!("{other:?}"),
    }
}
