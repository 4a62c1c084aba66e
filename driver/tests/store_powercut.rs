//! Power cuts against the on-disk store: a seeded script of mutations and
//! syncs runs on the crashing backend, which loses power at every one of
//! its operations in turn (every fsync boundary and every write between);
//! after a restart that keeps an arbitrary, possibly torn, part of what was
//! not synced, the reopened store must hold, for every block, region and
//! record, either what the last completed sync made durable or one of the
//! values written since — never garbage, never a hole named by an index;
//! and a snapshot filled while pending has its name only whole.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use floe_driver::store::{CrashingBackend, Error, FileStore};
use floe_engine::{Geometry, Role, RoleGeneration, VolumeMeta, VolumeStore};

const BS: usize = 512;
const BLOCKS: u64 = 12;
const REGION_BLOCKS: u64 = 2;
const EPOCHS: u64 = 3;
const CRASH_SEEDS: u64 = 4;
const SCRIPTS: u64 = 24;

fn geo() -> Geometry {
    Geometry::new(BS, BLOCKS, REGION_BLOCKS).expect("geometry")
}

fn data(tag: u64) -> Vec<u8> {
    (0..BS as u64)
        .map(|i| (tag.wrapping_mul(31) ^ (i * 7)) as u8 | 1)
        .collect()
}

fn meta(incarnation: u64) -> VolumeMeta {
    let mut m = VolumeMeta::new(Role::Primary, RoleGeneration { counter: 1, site: 1 });
    m.incarnation = incarnation;
    m.resync_candidates = Some((0..incarnation % 5).collect());
    m
}

#[derive(Clone, Debug)]
enum Step {
    Write(u64, u64),
    Zero(u64),
    SidePut(u64, u64),
    SideClear,
    Stage(u64, u64, u64),
    StageDrop(u64),
    Intent(u64, bool),
    Meta(u64),
    Snapshot(u64),
    /// Begin pending snapshot `p<n>`, put a block into it, finish it.
    SnapBegin(u64),
    SnapPut(u64, u64, u64),
    SnapFinish(u64),
    Sync,
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn script(seed: u64) -> Vec<Step> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut steps = vec![Step::Meta(1), Step::Sync];
    let mut tag = 10;
    let mut snaps = 0;
    let mut pending = None;
    for _ in 0..48 {
        tag += 1;
        let step = match rng.below(22) {
            0..=4 => Step::Write(rng.below(BLOCKS), tag),
            5 => Step::Zero(rng.below(BLOCKS)),
            6..=7 => Step::SidePut(rng.below(BLOCKS), tag),
            8 => Step::SideClear,
            9..=10 => Step::Stage(1 + rng.below(EPOCHS), rng.below(BLOCKS), tag),
            11 => Step::StageDrop(1 + rng.below(EPOCHS)),
            12..=13 => Step::Intent(rng.below(BLOCKS / REGION_BLOCKS), rng.below(3) != 0),
            14 => Step::Meta(tag),
            15 => {
                snaps += 1;
                Step::Snapshot(snaps)
            }
            16 => match pending.take() {
                Some(n) => Step::SnapFinish(n),
                None => {
                    snaps += 1;
                    pending = Some(snaps);
                    Step::SnapBegin(snaps)
                }
            },
            17..=18 if pending.is_some() => Step::SnapPut(pending.expect("checked"), rng.below(BLOCKS), tag),
            _ => Step::Sync,
        };
        steps.push(step);
    }
    steps.push(Step::Sync);
    steps
}

/// A value's history since the last completed sync.
#[derive(Clone, Debug)]
struct Hist<V> {
    synced: V,
    since: Vec<V>,
}

impl<V: Clone + PartialEq> Hist<V> {
    fn new(v: V) -> Self {
        Hist {
            synced: v,
            since: vec![],
        }
    }
    fn cur(&self) -> &V {
        self.since.last().unwrap_or(&self.synced)
    }
    fn push(&mut self, v: V) {
        self.since.push(v);
    }
    fn commit(&mut self) {
        self.synced = self.cur().clone();
        self.since.clear();
    }
    fn all(&self) -> Vec<V> {
        std::iter::once(self.synced.clone())
            .chain(self.since.iter().cloned())
            .collect()
    }
}

/// Whether `got` is one of `versions` or a torn write of a later version
/// over an earlier one (a prefix of the later, the rest of the earlier).
fn one_of_or_torn(versions: &[Vec<u8>], got: &[u8]) -> bool {
    if versions.iter().any(|v| v == got) {
        return true;
    }
    for (j, later) in versions.iter().enumerate() {
        let p = later.iter().zip(got).take_while(|(a, b)| a == b).count();
        if versions[..j].iter().any(|earlier| earlier[p..] == got[p..]) {
            return true;
        }
    }
    false
}

fn allowed(h: &Block, got: &Option<Vec<u8>>) -> bool {
    let all = h.all();
    match got {
        None => all.contains(&None),
        Some(d) => one_of_or_torn(&all.into_iter().flatten().collect::<Vec<_>>(), d),
    }
}

/// A block's versions since the last sync; `None`: not held.
type Block = Hist<Option<Vec<u8>>>;

struct Model {
    image: Vec<Block>,
    side: Vec<Block>,
    stage: BTreeMap<(u64, u64), Block>,
    intent: Vec<Hist<bool>>,
    meta: Hist<Option<VolumeMeta>>,
    /// Snapshot → (its blocks, its name synced).
    snapshots: BTreeMap<String, (Vec<Block>, bool)>,
    /// Pending snapshots begun: what was put into each.
    begun: BTreeMap<String, Vec<Vec<u8>>>,
}

impl Model {
    fn new() -> Self {
        let zero = Some(vec![0; BS]);
        let mut stage = BTreeMap::new();
        for e in 1..=EPOCHS {
            for b in 0..BLOCKS {
                stage.insert((e, b), Hist::new(None));
            }
        }
        Model {
            image: vec![Hist::new(zero); BLOCKS as usize],
            side: vec![Hist::new(None); BLOCKS as usize],
            stage,
            intent: vec![Hist::new(false); (BLOCKS / REGION_BLOCKS) as usize],
            meta: Hist::new(None),
            snapshots: BTreeMap::new(),
            begun: BTreeMap::new(),
        }
    }

    /// Record a mutation as issued (it may land even if its call fails).
    fn issue(&mut self, step: &Step) {
        match *step {
            Step::Write(b, t) => self.image[b as usize].push(Some(data(t))),
            Step::Zero(b) => self.image[b as usize].push(Some(vec![0; BS])),
            Step::SidePut(b, t) => self.side[b as usize].push(Some(data(t))),
            Step::SideClear => self.side.iter_mut().for_each(|h| h.push(None)),
            Step::Stage(e, b, t) => self.stage.get_mut(&(e, b)).expect("modelled").push(Some(data(t))),
            Step::StageDrop(e) => self
                .stage
                .iter_mut()
                .filter(|((ee, _), _)| *ee == e)
                .for_each(|(_, h)| h.push(None)),
            Step::Intent(r, on) => self.intent[r as usize].push(on),
            Step::Meta(i) => self.meta.push(Some(meta(i))),
            Step::Snapshot(n) => {
                // The copy is synced before its name appears.
                let image = self.image.iter().map(|h| Hist::new(h.cur().clone())).collect();
                self.snapshots.insert(format!("s{n}"), (image, false));
            }
            Step::SnapBegin(n) => {
                self.begun.insert(format!("p{n}"), vec![vec![0; BS]; BLOCKS as usize]);
            }
            Step::SnapPut(n, b, t) => {
                self.begun.get_mut(&format!("p{n}")).expect("begun")[b as usize] = data(t);
            }
            Step::SnapFinish(n) => {
                // Named at the next sync, whole: all of it or nothing.
                let name = format!("p{n}");
                let blocks = self.begun[&name].iter().map(|d| Hist::new(Some(d.clone()))).collect();
                self.snapshots.insert(name, (blocks, false));
            }
            Step::Sync => {}
        }
    }

    fn synced(&mut self) {
        self.image.iter_mut().for_each(Hist::commit);
        self.side.iter_mut().for_each(Hist::commit);
        self.stage.values_mut().for_each(Hist::commit);
        self.intent.iter_mut().for_each(Hist::commit);
        self.meta.commit();
        for (blocks, synced) in self.snapshots.values_mut() {
            blocks.iter_mut().for_each(Hist::commit);
            *synced = true;
        }
    }

    fn check(&self, s: &FileStore) -> Result<(), String> {
        let mut buf = vec![0; BS];
        for b in 0..BLOCKS {
            s.read_image(b, &mut buf).map_err(|e| format!("read image: {e}"))?;
            if !allowed(&self.image[b as usize], &Some(buf.clone())) {
                return Err(format!("image block {b} holds bytes never written there"));
            }
            let got = s.side_get(b, &mut buf).map_err(|e| format!("side get: {e}"))?;
            let got = got.then(|| buf.clone());
            if !allowed(&self.side[b as usize], &got) {
                return Err(format!("side block {b}: {:?}", got.map(|d| d[..4].to_vec())));
            }
        }
        for (&(e, b), h) in &self.stage {
            let got = s.stage_get(e, b, &mut buf).map_err(|e| format!("stage get: {e}"))?;
            let got = got.then(|| buf.clone());
            if !allowed(h, &got) {
                return Err(format!("staged block {e}/{b}: {:?}", got.map(|d| d[..4].to_vec())));
            }
        }
        let epochs = s.stage_epochs().map_err(|e| format!("stage epochs: {e}"))?;
        if epochs.iter().any(|&e| e == 0 || e > EPOCHS) {
            return Err(format!("unknown staged epochs {epochs:?}"));
        }
        let intent: BTreeSet<u64> = s
            .intent_regions()
            .map_err(|e| format!("intent: {e}"))?
            .into_iter()
            .collect();
        for (r, h) in self.intent.iter().enumerate() {
            if !h.all().contains(&intent.contains(&(r as u64))) {
                return Err(format!(
                    "intent bit {r} is {}, history {:?}",
                    intent.contains(&(r as u64)),
                    h
                ));
            }
        }
        let m = s
            .get_meta()
            .map_err(|e| format!("metadata must never be garbage: {e:?}"))?;
        let newest = self.meta.since.last();
        if m != self.meta.synced && Some(&m) != newest {
            return Err(format!(
                "metadata {:?} is neither the synced {:?} nor the newest {:?}",
                m.map(|m| m.incarnation),
                self.meta.synced.as_ref().map(|m| m.incarnation),
                newest.map(|m| m.as_ref().map(|m| m.incarnation))
            ));
        }
        let names = s.snapshots().map_err(|e| format!("snapshots: {e}"))?;
        for (name, (blocks, synced)) in &self.snapshots {
            let listed = names.contains(name);
            if *synced && !listed {
                return Err(format!("synced snapshot {name} lost"));
            }
            if listed {
                for (b, h) in blocks.iter().enumerate() {
                    s.read_snapshot(name, b as u64, &mut buf)
                        .map_err(|e| format!("snapshot: {e}"))?;
                    if !allowed(h, &Some(buf.clone())) {
                        return Err(format!(
                            "snapshot {name} block {b} is neither the image at its time nor a patch"
                        ));
                    }
                }
            }
        }
        if let Some(stray) = names.iter().find(|n| !self.snapshots.contains_key(*n)) {
            return Err(format!(
                "unknown snapshot {stray} (a pending one named before its finish?)"
            ));
        }
        let pending = s.pending_snapshots().map_err(|e| format!("pending snapshots: {e}"))?;
        if let Some(stray) = pending.iter().find(|n| !self.begun.contains_key(*n)) {
            return Err(format!("unknown pending snapshot {stray}"));
        }
        if let Some(both) = pending.iter().find(|n| names.contains(*n)) {
            return Err(format!("snapshot {both} is both named and pending"));
        }
        Ok(())
    }
}

fn run_step(s: &mut FileStore, step: &Step) -> Result<(), floe_engine::StoreError> {
    match *step {
        Step::Write(b, t) => s.write_image(b, &data(t)),
        Step::Zero(b) => s.write_image(b, &[0; BS]),
        Step::SidePut(b, t) => s.side_put(b, &data(t)),
        Step::SideClear => s.side_clear(),
        Step::Stage(e, b, t) => s.stage_put(e, b, &data(t)),
        Step::StageDrop(e) => s.stage_drop(e),
        Step::Intent(r, on) => s.intent_set(r, on),
        Step::Meta(i) => s.put_meta(&meta(i)),
        Step::Snapshot(n) => s.snapshot_image(&format!("s{n}")),
        Step::SnapBegin(n) => s.snapshot_begin(&format!("p{n}")),
        Step::SnapPut(n, b, t) => s.snapshot_put(&format!("p{n}"), b, &data(t)),
        Step::SnapFinish(n) => s.snapshot_finish(&format!("p{n}")),
        Step::Sync => s.sync(),
    }
}

/// Run `steps` with power lost at operation `cut` (counted from the end of
/// the volume's creation); `Ok(true)` if the cut fell inside the script.
fn run(steps: &[Step], cut: u64, crash_seed: u64) -> Result<bool, String> {
    let fs = CrashingBackend::new();
    let backend = Arc::new(fs.clone());
    let mut store =
        FileStore::create_with(backend.clone(), Path::new("/data"), "v", geo()).map_err(|e| e.to_string())?;
    fs.cut_at(fs.ops() + cut);
    let mut model = Model::new();
    let mut cut_hit = false;
    for step in steps {
        model.issue(step);
        if run_step(&mut store, step).is_err() {
            cut_hit = true;
            break;
        }
        if matches!(step, Step::Sync) {
            model.synced();
        }
    }
    drop(store);
    fs.restart(crash_seed);
    let store = FileStore::open_with(backend, Path::new("/data"), "v").map_err(|e| format!("reopen: {e}"))?;
    model.check(&store)?;
    Ok(cut_hit)
}

#[test]
fn power_cut_at_every_operation_keeps_synced_state_and_never_garbage() {
    let mut runs = 0;
    for script_seed in 0..SCRIPTS {
        let steps = script(script_seed);
        let mut cut = 0;
        loop {
            let mut inside = false;
            for crash_seed in 0..CRASH_SEEDS {
                let seed = script_seed * 1_000_003 + cut * 101 + crash_seed;
                match run(&steps, cut, seed) {
                    Ok(hit) => inside |= hit,
                    Err(e) => panic!("script {script_seed}, cut at op {cut}, crash seed {seed}: {e}\n{steps:?}"),
                }
                runs += 1;
            }
            if !inside {
                break;
            }
            cut += 1;
        }
        assert!(cut > 50, "script {script_seed} ran only {cut} operations");
    }
    println!("{runs} power cuts checked");
}

#[test]
fn a_power_cut_during_creation_leaves_no_volume_or_an_empty_one() {
    let mut cut = 0;
    loop {
        let fs = CrashingBackend::new();
        let backend = Arc::new(fs.clone());
        fs.cut_at(cut);
        let created = FileStore::create_with(backend.clone(), Path::new("/data"), "v", geo()).is_ok();
        fs.restart(cut);
        match FileStore::open_with(backend.clone(), Path::new("/data"), "v") {
            Ok(s) => {
                assert_eq!(s.get_meta().expect("meta"), None);
                assert!(s.side_blocks().expect("side").is_empty());
                assert!(s.intent_regions().expect("intent").is_empty());
                assert!(s.stage_epochs().expect("stage").is_empty());
            }
            Err(Error::NotAVolume(_)) if !created => {
                FileStore::create_with(backend, Path::new("/data"), "v", geo()).expect("create again");
            }
            Err(e) => panic!("cut at {cut}: {e}"),
        }
        if created {
            break;
        }
        cut += 1;
    }
    assert!(cut > 10);
}
