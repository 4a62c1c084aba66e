//! The engine on the on-disk store: a primary and a replica on `FileStore`s
//! in two data directories, frames passed by hand, the group decision made
//! by a `Coordinator` on a `FileDecisionLog`. After the fold, both sides are
//! reopened from disk and the replica's image must be the primary's image
//! at the freeze, byte for byte — in every mode.

use std::path::Path;

use floe_driver::store::{FileDecisionLog, FileStore};
use floe_engine::{
    Coordinator, DecisionLog, EngineError, Geometry, Mode, Primary, PrimaryEvent, Replica, RoleGeneration,
    SnapshotStep, VolumeStore,
};

const BS: usize = 4096;
const VOLUME: &str = "pvc-a";
const GROUP: &str = "group-1";
const GENERATION: RoleGeneration = RoleGeneration { counter: 1, site: 1 };

fn geo() -> Geometry {
    Geometry::new(BS, 32, 4).expect("geometry")
}

fn pattern(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| tag.wrapping_add((i % 253) as u8) | 1).collect()
}

/// One primary, one replica, the DR site's coordinator, and a wire between them.
struct Pair {
    primary: Primary<FileStore>,
    replica: Replica<FileStore>,
    coord: Coordinator<FileDecisionLog>,
    events: Vec<PrimaryEvent>,
    /// Hold the replica's reports to the coordinator (no decision yet).
    hold_coordinator: bool,
}

impl Pair {
    /// Deliver replies and decisions until nothing moves; `true` if anything did.
    fn route(&mut self) -> Result<bool, EngineError> {
        let mut moved = false;
        loop {
            let to_primary = self.replica.take_to_primary();
            let to_coord = if self.hold_coordinator {
                Vec::new()
            } else {
                self.replica.take_to_coordinator()
            };
            if to_primary.is_empty() && to_coord.is_empty() {
                break;
            }
            moved = true;
            for f in to_primary {
                self.primary.on_frame(f)?;
            }
            for m in to_coord {
                self.coord.on_message(m)?;
                for (member, decision) in self.coord.take_out() {
                    assert_eq!(member, 0);
                    self.replica.on_coordinator(decision)?;
                }
            }
        }
        self.events.extend(self.primary.take_events());
        Ok(moved)
    }

    fn connect(&mut self) -> Result<(), EngineError> {
        let hello = self.primary.connect();
        self.replica.on_frame(hello)?;
        self.route()?;
        assert!(self.primary.is_connected(), "welcome answered");
        Ok(())
    }

    /// Ship until the link is idle.
    fn pump(&mut self) -> Result<(), EngineError> {
        loop {
            let mut moved = self.route()?;
            if let Some(frame) = self.primary.poll_send(5)? {
                self.replica.on_frame(frame)?;
                moved = true;
            }
            if !moved {
                return Ok(());
            }
        }
    }

    fn into_stores(self) -> (FileStore, FileStore, FileDecisionLog) {
        (
            self.primary.into_store(),
            self.replica.into_store(),
            self.coord.into_log(),
        )
    }
}

fn host_image(p: &mut Primary<FileStore>) -> Vec<u8> {
    let mut out = vec![0; geo().bytes() as usize];
    p.read(0, &mut out).expect("host read");
    out
}

fn store_image(s: &FileStore) -> Vec<u8> {
    let mut out = vec![0; geo().bytes() as usize];
    for (b, chunk) in out.chunks_mut(BS).enumerate() {
        s.read_image(b as u64, chunk).expect("read image");
    }
    out
}

/// Host writes of one epoch: whole blocks, an unaligned span and a zeroed range.
fn write_epoch(p: &mut Primary<FileStore>, tag: u8) {
    for b in [0u64, 3, 4, 9, 31] {
        p.write(b * BS as u64, &pattern(tag.wrapping_add(b as u8), BS))
            .expect("write");
    }
    p.write(10 * BS as u64 + 100, &pattern(tag ^ 0x55, 2 * BS))
        .expect("unaligned write");
    p.zero(4 * BS as u64 + 8, 16).expect("zero range");
    p.flush().expect("flush");
}

fn open_pair(primary_dir: &Path, dr_dir: &Path, mode: Mode) -> Pair {
    let pstore = FileStore::open(primary_dir, VOLUME).expect("open primary store");
    let rstore = FileStore::open(dr_dir, VOLUME).expect("open replica store");
    let log = FileDecisionLog::open(dr_dir, GROUP).expect("open decision log");
    Pair {
        primary: Primary::open(pstore, geo(), mode).expect("reopen primary"),
        replica: Replica::open(rstore, geo(), 0).expect("reopen replica"),
        coord: Coordinator::open(log, 1).expect("reopen coordinator"),
        events: Vec::new(),
        hold_coordinator: false,
    }
}

fn epoch_through_fold(pair: &mut Pair, group: u64, tag: u8) -> Vec<u8> {
    write_epoch(&mut pair.primary, tag);
    pair.pump().expect("stream");
    let frozen = host_image(&mut pair.primary);
    pair.primary.freeze(group).expect("freeze");
    // Overwrites during the freeze window: copy-on-write or the freeze log.
    for b in [0u64, 3, 20] {
        pair.primary
            .write(b * BS as u64, &pattern(tag ^ 0xA0 ^ b as u8, BS))
            .expect("write after freeze");
    }
    pair.primary.flush().expect("flush");
    pair.pump().expect("ship, seal, decide, fold");
    assert!(
        pair.events.contains(&PrimaryEvent::Consistent(group)),
        "epoch {group} consistent: {:?}",
        pair.events
    );
    frozen
}

fn replicate_reopen_and_compare(mode: Mode) {
    let primary_dir = tempfile::tempdir().expect("tempdir");
    let dr_dir = tempfile::tempdir().expect("tempdir");
    let pstore = FileStore::create(primary_dir.path(), VOLUME, geo()).expect("create primary store");
    let rstore = FileStore::create(dr_dir.path(), VOLUME, geo()).expect("create replica store");
    let log = FileDecisionLog::open(dr_dir.path(), GROUP).expect("decision log");
    let mut pair = Pair {
        primary: Primary::create(pstore, geo(), mode, GENERATION).expect("primary"),
        replica: Replica::create(rstore, geo(), 0, GENERATION).expect("replica"),
        coord: Coordinator::open(log, 1).expect("coordinator"),
        events: Vec::new(),
        hold_coordinator: false,
    };
    pair.connect().expect("connect");

    let frozen1 = epoch_through_fold(&mut pair, 1, 0x10);
    let live1 = host_image(&mut pair.primary);
    assert_ne!(frozen1, live1, "writes after the freeze are not in the epoch");
    let (p, r, log) = pair.into_stores();
    drop((p, r));
    assert_eq!(log.load().expect("decisions").committed, 1);
    drop(log);

    // Both sites restart from what is on disk.
    let r = FileStore::open(dr_dir.path(), VOLUME).expect("reopen replica store");
    assert!(
        store_image(&r) == frozen1,
        "{}: DR image is the primary at freeze 1",
        mode.name()
    );
    // Local epoch 1 carried freeze 1; what is staged now is the open epoch's stream.
    assert!(
        !r.stage_epochs().expect("epochs").contains(&1),
        "folded staging is gone"
    );
    drop(r);
    let mut pair = open_pair(primary_dir.path(), dr_dir.path(), mode);
    assert_eq!(pair.replica.committed_group(), 1);
    assert!(
        host_image(&mut pair.primary) == live1,
        "flushed writes survive the restart"
    );

    // The next epoch resumes on the reopened stores.
    pair.connect().expect("reconnect");
    let frozen2 = epoch_through_fold(&mut pair, 2, 0x40);
    let (p, r, _) = pair.into_stores();
    drop(p);
    assert!(
        store_image(&r) == frozen2,
        "{}: DR image is the primary at freeze 2",
        mode.name()
    );
    drop(r);
    let r = FileStore::open(dr_dir.path(), VOLUME).expect("reopen replica store");
    assert!(
        store_image(&r) == frozen2,
        "{}: and stays so across a reopen",
        mode.name()
    );
}

#[test]
fn replica_image_equals_primary_at_the_freeze_continuous() {
    replicate_reopen_and_compare(Mode::Continuous);
}

#[test]
fn replica_image_equals_primary_at_the_freeze_log() {
    replicate_reopen_and_compare(Mode::Log);
}

#[test]
fn replica_image_equals_primary_at_the_freeze_interval() {
    replicate_reopen_and_compare(Mode::Interval);
}

#[test]
fn a_staged_epoch_survives_a_replica_restart_and_folds_after_the_decision() {
    let primary_dir = tempfile::tempdir().expect("tempdir");
    let dr_dir = tempfile::tempdir().expect("tempdir");
    let pstore = FileStore::create(primary_dir.path(), VOLUME, geo()).expect("create");
    let rstore = FileStore::create(dr_dir.path(), VOLUME, geo()).expect("create");
    let log = FileDecisionLog::open(dr_dir.path(), GROUP).expect("decision log");
    let mut pair = Pair {
        primary: Primary::create(pstore, geo(), Mode::Continuous, GENERATION).expect("primary"),
        replica: Replica::create(rstore, geo(), 0, GENERATION).expect("replica"),
        coord: Coordinator::open(log, 1).expect("coordinator"),
        events: Vec::new(),
        hold_coordinator: true,
    };
    pair.connect().expect("connect");
    write_epoch(&mut pair.primary, 0x22);
    let frozen = host_image(&mut pair.primary);
    pair.primary.freeze(1).expect("freeze");
    pair.pump().expect("ship and seal");
    assert_eq!(pair.replica.staged_group(), Some(1), "staged, no decision yet");
    assert!(
        store_image(pair.replica.store()) != frozen,
        "nothing folded before the decision"
    );

    // The DR node restarts with the epoch staged on disk.
    let Pair {
        primary,
        replica,
        coord,
        ..
    } = pair;
    drop(replica);
    let rstore = FileStore::open(dr_dir.path(), VOLUME).expect("reopen");
    assert_eq!(
        rstore.stage_epochs().expect("epochs").len(),
        1,
        "the staged epoch is on disk"
    );
    let mut pair = Pair {
        primary,
        replica: Replica::open(rstore, geo(), 0).expect("reopen replica"),
        coord,
        events: Vec::new(),
        hold_coordinator: false,
    };
    // The reopened replica re-reports the staged epoch; the coordinator decides.
    pair.route().expect("decide");
    assert_eq!(pair.replica.committed_group(), 1);
    assert!(
        store_image(pair.replica.store()) == frozen,
        "folded from the staging on disk"
    );
    pair.primary.disconnect();
    pair.connect().expect("reconnect");
    pair.pump().expect("settle");
    assert!(pair.events.contains(&PrimaryEvent::Consistent(1)), "{:?}", pair.events);
}

/// A snapshot marked on real files and copied in steps between host
/// writes, in every mode and inside a log-mode freeze window: the named
/// file equals the host's view at the mark, its holes stay holes, and a
/// snapshot still being copied when the volume is dropped (a crash) is
/// reported failed at the next open and leaves no file behind.
#[test]
fn a_snapshot_copied_after_its_mark_is_the_host_view_at_the_mark_on_real_files() {
    for mode in [Mode::Continuous, Mode::Log, Mode::Interval] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::create(dir.path(), VOLUME, geo()).expect("create");
        let mut p = Primary::create(store, geo(), mode, GENERATION).expect("primary");
        for b in [1u64, 2, 3, 9, 20] {
            p.write(b * BS as u64, &pattern(b as u8, BS)).expect("write");
        }
        p.freeze(1).expect("freeze: block 2 a member of the closing epoch");
        p.write(2 * BS as u64, &pattern(40, BS))
            .expect("write inside the window");
        let mut want = vec![0u8; 32 * BS];
        p.read(0, &mut want).expect("read the host view");
        p.snapshot_mark("s1").expect("mark");
        // Writes ahead of the copy, then the copy in steps of two blocks,
        // a write between steps, and the window's end (log: the merge).
        p.write(3 * BS as u64, &pattern(50, BS))
            .expect("write ahead of the cursor");
        p.zero(20 * BS as u64, BS as u64).expect("zero ahead of the cursor");
        let mut steps = 0;
        let done = loop {
            match p.snapshot_step(2).expect("step") {
                SnapshotStep::Copying { .. } => {}
                SnapshotStep::Done { name, .. } => break name,
                SnapshotStep::Idle => panic!("{mode:?}: the copy stopped"),
            }
            steps += 1;
            if steps == 1 {
                p.write(9 * BS as u64 + 100, b"between steps").expect("write");
                p.abort(1).expect("the window closes");
            }
        };
        assert_eq!(done, "s1");
        assert!(steps < 12, "{mode:?}: {steps} steps: the holes were not skipped");
        let file = dir.path().join("volumes").join(VOLUME).join("snapshots").join("s1.img");
        assert_eq!(std::fs::read(&file).expect("snapshot file"), want, "{mode:?}");
        use std::os::unix::fs::MetadataExt;
        let used = std::fs::metadata(&file).expect("stat").blocks() * 512;
        assert!(
            used <= 8 * BS as u64,
            "{mode:?}: the snapshot holds {used} bytes, the holes were filled"
        );

        // A copy cut short: the engine goes away mid-copy.
        p.snapshot_mark("s2").expect("mark");
        p.snapshot_step(1).expect("one step");
        let store = p.into_store();
        drop(store);
        let store = FileStore::open(dir.path(), VOLUME).expect("reopen");
        let mut p = Primary::open(store, geo(), mode).expect("open");
        assert_eq!(p.take_failed_snapshots(), vec!["s2".to_owned()], "{mode:?}");
        let left: Vec<_> = std::fs::read_dir(file.parent().expect("dir"))
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            left,
            vec!["s1.img".to_owned()],
            "{mode:?}: only the finished snapshot is left"
        );
    }
}

#[test]
fn retained_points_outlive_a_restart_and_promote_returns_to_one_on_real_files() {
    let primary_dir = tempfile::tempdir().expect("tempdir");
    let dr_dir = tempfile::tempdir().expect("tempdir");
    let pstore = FileStore::create(primary_dir.path(), VOLUME, geo()).expect("create primary store");
    let rstore = FileStore::create(dr_dir.path(), VOLUME, geo()).expect("create replica store");
    let log = FileDecisionLog::open(dr_dir.path(), GROUP).expect("decision log");
    let mut replica = Replica::create(rstore, geo(), 0, GENERATION).expect("replica");
    replica.set_retention(2);
    let mut pair = Pair {
        primary: Primary::create(pstore, geo(), Mode::Continuous, GENERATION).expect("primary"),
        replica,
        coord: Coordinator::open(log, 1).expect("coordinator"),
        events: Vec::new(),
        hold_coordinator: false,
    };
    pair.connect().expect("connect");
    let frozen: Vec<Vec<u8>> = (1..=4u8)
        .map(|g| epoch_through_fold(&mut pair, u64::from(g), g * 0x10))
        .collect();
    // K = 2: the two epochs before the last committed one.
    assert_eq!(pair.replica.retained_points(), vec![2, 3]);
    let (p, r, log) = pair.into_stores();
    drop((p, r));
    let record = log.load().expect("decisions");

    let reopen = || {
        let mut replica =
            Replica::open(FileStore::open(dr_dir.path(), VOLUME).expect("store"), geo(), 0).expect("reopen replica");
        replica.set_retention(2);
        replica
    };
    let replica = reopen();
    assert!(
        store_image(replica.store()) == frozen[3],
        "the image is the last committed epoch's"
    );
    assert_eq!(replica.retained_points(), vec![2, 3], "the points outlive a restart");
    let Err(e) = replica.promote_at(&record, 2, Mode::Continuous, Some(1)) else {
        panic!("promote to a point not retained must be refused")
    };
    assert!(
        matches!(
            e,
            EngineError::NotRetained {
                wanted: 1,
                committed: 4,
                ..
            }
        ),
        "{e}"
    );

    let replica = reopen();
    assert_eq!(
        replica.retained_points(),
        vec![2, 3],
        "a refused promote changes nothing"
    );
    let mut promoted = replica
        .promote_at(&record, 2, Mode::Continuous, Some(2))
        .expect("promote to retained point 2");
    assert!(
        host_image(&mut promoted) == frozen[1],
        "promote to point 2 yields epoch 2's image"
    );
    let store = promoted.into_store();
    assert!(store_image(&store) == frozen[1], "and so does the image on disk");
    assert!(store.undo_epochs().expect("undo").is_empty(), "the undo sets are gone");
    assert!(
        !store.intent_regions().expect("intent").is_empty(),
        "the blocks rolled back are in the write-intent record, for a failback"
    );
}
