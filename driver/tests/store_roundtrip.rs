//! The on-disk store on a real directory: every area survives a drop and a
//! reopen, a corrupt metadata file is an error and never a record, and bad
//! input is refused.

use std::path::Path;

use floe_driver::store::{Error, FileStore};
use floe_engine::{
    Geometry, ManifestEntry, Role, RoleGeneration, SendSeq, StagedRecord, StoreError, VolumeMeta, VolumeStore,
};

const BS: usize = 4096;

fn geo() -> Geometry {
    Geometry::new(BS, 64, 8).expect("geometry")
}

fn block(tag: u8) -> Vec<u8> {
    (0..BS).map(|i| tag ^ (i % 251) as u8).collect()
}

fn read(store: &FileStore, b: u64) -> Vec<u8> {
    let mut buf = vec![0; BS];
    store.read_image(b, &mut buf).expect("read image");
    buf
}

fn staged_meta() -> VolumeMeta {
    let mut m = VolumeMeta::new(Role::Replica, RoleGeneration { counter: 2, site: 1 });
    m.incarnation = 4;
    m.committed = 3;
    m.committed_group = 30;
    m.staged = Some(StagedRecord {
        local: 4,
        group: 40,
        manifest: vec![ManifestEntry {
            index: 5,
            seq: SendSeq {
                generation: 2,
                incarnation: 1,
                counter: 9,
            },
            hash: [7; 32],
        }],
    });
    m.resync_candidates = Some(vec![1, 2, 3]);
    m
}

/// The error's chain, for assertions on what it says.
fn chain(e: &StoreError) -> String {
    let mut out = e.to_string();
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e.source.as_ref());
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[test]
fn every_area_survives_drop_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = FileStore::create(dir.path(), "pvc-1", geo()).expect("create");
    assert_eq!(s.get_meta().expect("meta"), None, "a new volume has no metadata");
    s.write_image(0, &block(1)).expect("write");
    s.write_image(63, &block(2)).expect("write");
    s.write_image(5, &block(3)).expect("write");
    s.write_image(5, &vec![0; BS]).expect("zero write");
    s.side_put(7, &block(4)).expect("side");
    s.side_put(9, &block(5)).expect("side");
    s.stage_put(3, 1, &block(6)).expect("stage");
    s.stage_put(3, 60, &block(7)).expect("stage");
    s.stage_put(4, 2, &block(8)).expect("stage");
    s.stage_put(5, 2, &block(9)).expect("stage");
    s.stage_drop(5).expect("drop");
    s.intent_set(0, true).expect("intent");
    s.intent_set(7, true).expect("intent");
    s.intent_set(3, true).expect("intent");
    s.intent_set(3, false).expect("intent");
    let meta = staged_meta();
    s.put_meta(&meta).expect("meta");
    s.snapshot_image("snap-1").expect("snapshot");
    s.write_image(0, &block(10)).expect("write after the snapshot");
    s.snapshot_begin("snap-2").expect("begin a pending snapshot");
    s.snapshot_put("snap-2", 2, &block(11)).expect("put");
    assert!(s.snapshot_put("no-such", 2, &block(11)).is_err());
    assert!(s.snapshot_begin("snap-1").is_err(), "a name taken");
    s.snapshot_finish("snap-2").expect("finish");
    s.snapshot_begin("snap-3").expect("begin another");
    s.snapshot_put("snap-3", 1, &block(12)).expect("put");
    s.sync().expect("sync");
    drop(s);

    let s = FileStore::open(dir.path(), "pvc-1").expect("reopen");
    assert_eq!(s.geometry(), geo());
    assert_eq!(read(&s, 0), block(10));
    assert_eq!(read(&s, 63), block(2));
    assert_eq!(read(&s, 5), vec![0; BS]);
    assert_eq!(read(&s, 1), vec![0; BS], "never written reads zero");
    assert_eq!(s.side_blocks().expect("side"), vec![7, 9]);
    let mut buf = vec![0; BS];
    assert!(s.side_get(9, &mut buf).expect("side get"));
    assert_eq!(buf, block(5));
    assert!(!s.side_get(8, &mut buf).expect("side get"));
    assert_eq!(s.stage_epochs().expect("epochs"), vec![3, 4]);
    assert!(s.stage_get(3, 60, &mut buf).expect("stage get"));
    assert_eq!(buf, block(7));
    assert!(!s.stage_get(3, 2, &mut buf).expect("stage get"));
    assert!(!s.stage_get(5, 2, &mut buf).expect("dropped"));
    assert_eq!(s.intent_regions().expect("intent"), vec![0, 7]);
    assert_eq!(s.get_meta().expect("meta"), Some(meta));
    assert_eq!(
        s.snapshots().expect("snapshots"),
        vec!["snap-1".to_owned(), "snap-2".to_owned()]
    );
    s.read_snapshot("snap-1", 0, &mut buf).expect("snapshot read");
    assert_eq!(buf, block(1), "the snapshot is the image at its time");
    s.read_snapshot("snap-2", 2, &mut buf).expect("snapshot read");
    assert_eq!(buf, block(11), "a finished pending snapshot holds what was put");
    s.read_snapshot("snap-2", 0, &mut buf).expect("snapshot read");
    assert_eq!(buf, vec![0; BS], "and zeroes elsewhere");
    assert_eq!(
        s.pending_snapshots().expect("pending"),
        vec!["snap-3".to_owned()],
        "an unfinished one stays pending, unnamed"
    );
}

#[test]
fn side_clear_and_meta_updates_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = FileStore::create(dir.path(), "v", geo()).expect("create");
    s.side_put(1, &block(1)).expect("side");
    s.sync().expect("sync");
    s.side_clear().expect("clear");
    s.side_put(2, &block(2)).expect("side");
    let mut m = VolumeMeta::new(Role::Primary, RoleGeneration::default());
    for i in 1..=5 {
        m.incarnation = i;
        s.put_meta(&m).expect("meta");
        s.sync().expect("sync");
    }
    drop(s);
    let s = FileStore::open(dir.path(), "v").expect("reopen");
    assert_eq!(s.side_blocks().expect("side"), vec![2]);
    let mut buf = vec![0; BS];
    assert!(s.side_get(2, &mut buf).expect("get"));
    assert_eq!(buf, block(2));
    assert_eq!(s.get_meta().expect("meta").map(|m| m.incarnation), Some(5));
}

#[test]
fn unsynced_mutations_are_visible_before_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = FileStore::create(dir.path(), "v", geo()).expect("create");
    let m = staged_meta();
    s.put_meta(&m).expect("meta");
    s.write_image(3, &block(3)).expect("write");
    s.intent_set(2, true).expect("intent");
    assert_eq!(s.get_meta().expect("meta"), Some(m));
    assert_eq!(read(&s, 3), block(3));
    assert_eq!(s.intent_regions().expect("intent"), vec![2]);
}

#[test]
fn creating_twice_and_opening_nothing_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    FileStore::create(dir.path(), "v", geo()).expect("create");
    assert!(matches!(
        FileStore::create(dir.path(), "v", geo()),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(FileStore::open(dir.path(), "w"), Err(Error::NotAVolume(_))));
    assert!(matches!(
        FileStore::open(dir.path(), "../v"),
        Err(Error::InvalidName(_))
    ));
}

#[test]
fn out_of_range_blocks_regions_and_bad_buffers_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = FileStore::create(dir.path(), "v", geo()).expect("create");
    assert!(s.write_image(64, &block(1)).is_err());
    assert!(s.write_image(0, &[1; 10]).is_err());
    assert!(s.side_put(64, &block(1)).is_err());
    assert!(s.stage_put(1, 64, &block(1)).is_err());
    assert!(s.intent_set(8, true).is_err());
    assert!(s.snapshot_image("a/b").is_err());
    let e = s.read_image(99, &mut vec![0; BS]).expect_err("out of range");
    assert_eq!(e.op, "read image block");
    assert!(chain(&e).contains("block 99"), "{}", chain(&e));
}

/// Flip bytes in both slots of `meta` (slot B starts at the slot size).
fn corrupt_both_slots(meta: &Path, seed: u64) {
    let mut bytes = std::fs::read(meta).expect("read meta");
    let slot = 64 << 10;
    assert!(bytes.len() > slot, "both slots written");
    let mut x = seed | 1;
    for base in [0, slot] {
        // Somewhere in the 32-byte header or the first bytes of payload.
        for _ in 0..1 + seed % 3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = base + (x % 80) as usize;
            bytes[i] ^= (x >> 32) as u8 | 1;
        }
    }
    std::fs::write(meta, bytes).expect("write meta");
}

#[test]
fn corrupt_metadata_is_an_error_and_never_a_record() {
    for seed in 0..40 {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = FileStore::create(dir.path(), "v", geo()).expect("create");
        let mut m = staged_meta();
        s.put_meta(&m).expect("meta");
        s.sync().expect("sync");
        m.incarnation += 1;
        s.put_meta(&m).expect("meta");
        s.sync().expect("sync");
        drop(s);
        let path = dir.path().join("volumes/v/meta");
        corrupt_both_slots(&path, seed);
        let s = FileStore::open(dir.path(), "v").expect("the volume still opens");
        let e = s.get_meta().expect_err("corruption must be reported");
        assert_eq!(e.op, "load volume metadata");
        let text = chain(&e);
        assert!(text.contains("meta"), "{text}");
    }
}

#[test]
fn a_record_from_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = FileStore::create(dir.path(), "v", geo()).expect("create");
    s.put_meta(&staged_meta()).expect("meta");
    s.sync().expect("sync");
    drop(s);
    // Rewrite slot A's version field (bytes 8..12) and its checksum.
    let path = dir.path().join("volumes/v/meta");
    let mut bytes = std::fs::read(&path).expect("read");
    let len = u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes")) as usize;
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..32 + len]);
    bytes[32 + len..36 + len].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, bytes).expect("write");
    let s = FileStore::open(dir.path(), "v").expect("open");
    let e = s.get_meta().expect_err("unknown version");
    assert!(chain(&e).contains("version 3"), "{}", chain(&e));
}

#[test]
fn a_truncated_image_is_refused_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    FileStore::create(dir.path(), "v", geo()).expect("create");
    let image = dir.path().join("volumes/v/image");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .and_then(|f| f.set_len(100))
        .expect("truncate");
    assert!(matches!(FileStore::open(dir.path(), "v"), Err(Error::Layout { .. })));
}

#[test]
fn the_image_is_sparse() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let big = Geometry::new(BS, 1 << 16, 64).expect("geometry"); // 256 MiB
    let mut s = FileStore::create(dir.path(), "v", big).expect("create");
    s.write_image(1000, &block(1)).expect("write");
    s.sync().expect("sync");
    let md = std::fs::metadata(dir.path().join("volumes/v/image")).expect("stat");
    assert_eq!(md.len(), 256 << 20);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "image allocates {} bytes",
        md.blocks() * 512
    );
}
