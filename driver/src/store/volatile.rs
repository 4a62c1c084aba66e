//! A [`Backend`] over the real filesystem that keeps what a power cut would
//! lose in process memory: every write, hole and length change of a file
//! stays in this process until that file's fsync, so a SIGKILL of the
//! process loses exactly the file data a power cut loses. Compiled only with
//! the `test-hooks` feature; `serve` takes it when `FLOE_POWER_CUT=1` is in
//! its environment ([`super::default_backend`]).
//!
//! What it does not model: directory entries (create, rename, unlink) reach
//! the real directory at once, which is one of the outcomes a power cut may
//! leave, not every one. The in-memory [`super::CrashingBackend`] of the
//! model and store tests covers lost and reordered entries.
//!
//! A graceful exit keeps the page cache, not only what was synced:
//! [`spill`] writes what is held to the real files (without fsync) and
//! makes every later operation pass straight through.
//!
//! Memory: held data is kept per 4 KiB page, so a read costs one real read
//! plus a lookup per page; holes and truncations are kept as ranges.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::backend::{Backend, BackendFile, RealBackend};

const PAGE: u64 = 4096;

/// The environment variable that makes `serve` keep unsynced writes in
/// memory (any value but `0`).
pub const ENV: &str = "FLOE_POWER_CUT";

/// The real filesystem, with unsynced file data held in memory.
#[derive(Debug, Default)]
pub struct VolatileBackend {
    real: RealBackend,
    /// Held state of each file by (device, inode), shared by its handles.
    files: Mutex<HashMap<(u64, u64), Arc<Shared>>>,
    /// Set by [`spill`]: everything passes through from then on.
    spilled: Arc<AtomicBool>,
}

#[derive(Debug)]
struct Shared {
    real: Box<dyn BackendFile>,
    held: Mutex<Held>,
    spilled: Arc<AtomicBool>,
}

/// What a file's view holds beyond its real content.
#[derive(Debug, Default, Clone)]
struct Held {
    /// The view's length, when changed since the last sync.
    len: Option<u64>,
    /// Real bytes at or past this offset read as zeroes (a truncation).
    cut: Option<u64>,
    /// Ranges punched (real bytes there read as zeroes).
    holes: Vec<(u64, u64)>,
    /// Pages written, each the view's whole page; they win over `cut` and
    /// `holes`.
    pages: BTreeMap<u64, Vec<u8>>,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.len.is_none() && self.cut.is_none() && self.holes.is_empty() && self.pages.is_empty()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn zero(buf: &mut [u8], offset: u64, from: u64, to: u64) {
    let end = offset + buf.len() as u64;
    let (s, e) = (from.max(offset), to.min(end));
    if s < e {
        buf[(s - offset) as usize..(e - offset) as usize].fill(0);
    }
}

impl Shared {
    fn view_len(&self, held: &Held) -> io::Result<u64> {
        match held.len {
            Some(l) => Ok(l),
            None => self.real.size(),
        }
    }

    /// The view of `buf.len()` bytes at `offset`.
    fn read_view(&self, held: &Held, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.real.read_at(buf, offset)?;
        let end = offset + buf.len() as u64;
        if let Some(c) = held.cut {
            zero(buf, offset, c, u64::MAX);
        }
        for &(s, e) in &held.holes {
            zero(buf, offset, s, e);
        }
        if buf.is_empty() {
            return Ok(());
        }
        for (&p, data) in held.pages.range(offset / PAGE..=(end - 1) / PAGE) {
            let start = p * PAGE;
            let (s, e) = (start.max(offset), (start + PAGE).min(end));
            buf[(s - offset) as usize..(e - offset) as usize]
                .copy_from_slice(&data[(s - start) as usize..(e - start) as usize]);
        }
        if let Some(l) = held.len {
            zero(buf, offset, l, u64::MAX);
        }
        Ok(())
    }

    /// Page `p` of the view, held from now on.
    fn page<'h>(&self, held: &'h mut Held, p: u64) -> io::Result<&'h mut Vec<u8>> {
        if !held.pages.contains_key(&p) {
            let mut data = vec![0u8; PAGE as usize];
            self.read_view(held, &mut data, p * PAGE)?;
            held.pages.insert(p, data);
        }
        Ok(held.pages.get_mut(&p).expect("inserted above"))
    }

    fn write(&self, held: &mut Held, data: &[u8], offset: u64) -> io::Result<()> {
        let len = self.view_len(held)?;
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let p = at / PAGE;
            let (s, e) = (at - p * PAGE, (end - p * PAGE).min(PAGE));
            let src = &data[(at - offset) as usize..(at - offset + e - s) as usize];
            if s == 0 && e == PAGE {
                held.pages.insert(p, src.to_vec());
            } else {
                self.page(held, p)?[s as usize..e as usize].copy_from_slice(src);
            }
            at = p * PAGE + e;
        }
        held.len = Some(len.max(end));
        Ok(())
    }

    fn set_len(&self, held: &mut Held, len: u64) -> io::Result<()> {
        if len < self.view_len(held)? {
            if !len.is_multiple_of(PAGE) {
                let p = len / PAGE;
                let page = self.page(held, p)?;
                page[(len % PAGE) as usize..].fill(0);
            }
            held.pages.retain(|&p, _| p * PAGE < len);
            held.cut = Some(held.cut.map_or(len, |c| c.min(len)));
            held.holes.retain(|&(s, _)| s < len);
        }
        held.len = Some(len);
        Ok(())
    }

    fn punch(&self, held: &mut Held, offset: u64, len: u64) {
        let end = offset + len;
        held.holes.push((offset, end));
        held.pages
            .retain(|&p, _| !(p * PAGE >= offset && (p + 1) * PAGE <= end));
        if len > 0 {
            for (&p, data) in held.pages.range_mut(offset / PAGE..=(end - 1) / PAGE) {
                let start = p * PAGE;
                let (s, e) = (start.max(offset), (start + PAGE).min(end));
                if s < e {
                    data[(s - start) as usize..(e - start) as usize].fill(0);
                }
            }
        }
    }

    /// Writes what is held to the real file (the page cache), then fsyncs
    /// it if `durable`.
    fn apply(&self, held: &mut Held, durable: bool) -> io::Result<()> {
        if !held.is_empty() {
            let len = self.view_len(held)?;
            if let Some(c) = held.cut {
                self.real.set_len(c)?;
            }
            for &(s, e) in &held.holes {
                if s < e {
                    self.real.punch_hole(s, e - s)?;
                }
            }
            for (&p, data) in &held.pages {
                let n = len.saturating_sub(p * PAGE).min(PAGE) as usize;
                self.real.write_at(&data[..n], p * PAGE)?;
            }
            self.real.set_len(len)?;
            *held = Held::default();
        }
        if durable {
            self.real.sync()?;
        }
        Ok(())
    }

    fn passing_through(&self) -> bool {
        self.spilled.load(Ordering::SeqCst)
    }
}

/// One handle of a file.
#[derive(Debug)]
struct VolatileFile(Arc<Shared>);

impl BackendFile for VolatileFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let held = lock(&self.0.held);
        self.0.read_view(&held, buf, offset)
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut held = lock(&self.0.held);
        if self.0.passing_through() {
            return self.0.real.write_at(data, offset);
        }
        self.0.write(&mut held, data, offset)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut held = lock(&self.0.held);
        if self.0.passing_through() {
            return self.0.real.punch_hole(offset, len);
        }
        self.0.punch(&mut held, offset, len);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut held = lock(&self.0.held);
        if self.0.passing_through() {
            return self.0.real.set_len(len);
        }
        self.0.set_len(&mut held, len)
    }

    fn size(&self) -> io::Result<u64> {
        let held = lock(&self.0.held);
        self.0.view_len(&held)
    }

    fn sync(&self) -> io::Result<()> {
        let mut held = lock(&self.0.held);
        self.0.apply(&mut held, true)
    }

    fn data_from(&self, offset: u64) -> io::Result<Option<(u64, u64)>> {
        let held = lock(&self.0.held);
        if held.is_empty() {
            self.0.real.data_from(offset)
        } else {
            Ok(Some((offset, u64::MAX)))
        }
    }
}

fn file_id(path: &Path) -> io::Result<(u64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

impl VolatileBackend {
    fn files(&self) -> MutexGuard<'_, HashMap<(u64, u64), Arc<Shared>>> {
        lock(&self.files)
    }

    /// The handle of the file at `path`, opened by `real`'s `open` if this
    /// backend holds nothing for it yet.
    fn handle(&self, path: &Path, fresh: bool) -> io::Result<Box<dyn BackendFile>> {
        let id = file_id(path)?;
        let mut files = self.files();
        if fresh {
            files.remove(&id);
        }
        let shared = match files.get(&id) {
            Some(s) => Arc::clone(s),
            None => {
                let s = Arc::new(Shared {
                    real: self.real.open(path)?,
                    held: Mutex::default(),
                    spilled: Arc::clone(&self.spilled),
                });
                files.insert(id, Arc::clone(&s));
                s
            }
        };
        Ok(Box::new(VolatileFile(shared)))
    }

    /// Writes everything held to the real files without fsync (what a
    /// graceful exit leaves in the page cache) and passes every later
    /// operation straight through.
    pub fn spill(&self) -> io::Result<()> {
        let files = self.files();
        self.spilled.store(true, Ordering::SeqCst);
        for shared in files.values() {
            let mut held = lock(&shared.held);
            shared.apply(&mut held, false)?;
        }
        Ok(())
    }
}

impl Backend for VolatileBackend {
    fn open(&self, path: &Path) -> io::Result<Box<dyn BackendFile>> {
        self.handle(path, false)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn BackendFile>> {
        if self.real.exists(path)? {
            // Truncating an existing file is a length change like any other.
            let f = self.handle(path, false)?;
            f.set_len(0)?;
            return Ok(f);
        }
        drop(self.real.create(path)?);
        self.handle(path, true)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.real.exists(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.real.create_dir(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.real.list_dir(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let id = file_id(path)?;
        self.real.remove_file(path)?;
        self.files().remove(&id);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let replaced = file_id(to).ok().filter(|t| file_id(from).ok() != Some(*t));
        self.real.rename(from, to)?;
        if let Some(id) = replaced {
            self.files().remove(&id);
        }
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.real.sync_dir(path)
    }

    fn clone_file(&self, src: &Path, dst: &Path) -> io::Result<Box<dyn BackendFile>> {
        let held = match self.files().get(&file_id(src)?) {
            Some(s) => lock(&s.held).clone(),
            None => Held::default(),
        };
        drop(self.real.clone_file(src, dst)?);
        let f = self.handle(dst, true)?;
        if !held.is_empty() {
            if let Some(shared) = self.files().get(&file_id(dst)?) {
                *lock(&shared.held) = held;
            }
        }
        Ok(f)
    }
}

/// The process's volatile backend, when `FLOE_POWER_CUT` asks for it.
pub(crate) fn from_env() -> Option<Arc<VolatileBackend>> {
    static BACKEND: OnceLock<Option<Arc<VolatileBackend>>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let on = std::env::var_os(ENV).is_some_and(|v| v != "0" && !v.is_empty());
            on.then(|| {
                tracing::warn!("test build: unsynced store writes are held in memory ({ENV})");
                Arc::new(VolatileBackend::default())
            })
        })
        .clone()
}

/// At a graceful exit: the held writes go to the page cache
/// ([`VolatileBackend::spill`]). Does nothing without `FLOE_POWER_CUT`.
pub fn spill() {
    if let Some(b) = from_env() {
        if let Err(e) = b.spill() {
            tracing::error!(error = %e, "spill the held store writes at exit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        SetLen(u64),
        Punch(u64, u64),
        Sync,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..40_000, proptest::collection::vec(any::<u8>(), 1..9000)).prop_map(|(o, d)| Op::Write(o, d)),
            1 => (0u64..40_000).prop_map(Op::SetLen),
            1 => (0u64..40_000, 0u64..12_000).prop_map(|(o, l)| Op::Punch(o, l)),
            1 => Just(Op::Sync),
        ]
    }

    /// A plain vector does each operation; the file must read the same,
    /// and after the held state is dropped (a kill), the real file must be
    /// the vector as of the last sync.
    fn check(ops: &[Op]) -> Result<(), TestCaseError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let backend = VolatileBackend::default();
        let f = backend.create(&path).expect("create");
        let mut model: Vec<u8> = Vec::new();
        let mut synced: Vec<u8> = Vec::new();
        for op in ops {
            match op {
                Op::Write(o, d) => {
                    f.write_at(d, *o).expect("write");
                    let end = *o as usize + d.len();
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[*o as usize..end].copy_from_slice(d);
                }
                Op::SetLen(l) => {
                    f.set_len(*l).expect("set_len");
                    model.resize(*l as usize, 0);
                }
                Op::Punch(o, l) => {
                    f.punch_hole(*o, *l).expect("punch");
                    let (s, e) = ((*o as usize).min(model.len()), ((o + l) as usize).min(model.len()));
                    model[s..e].fill(0);
                }
                Op::Sync => {
                    f.sync().expect("sync");
                    synced.clone_from(&model);
                }
            }
            prop_assert_eq!(f.size().expect("size"), model.len() as u64);
            let mut buf = vec![7u8; model.len() + 100];
            f.read_at(&mut buf, 0).expect("read");
            prop_assert_eq!(&buf[..model.len()], &model[..]);
            prop_assert!(buf[model.len()..].iter().all(|&b| b == 0));
        }
        drop(f);
        drop(backend);
        let on_disk = std::fs::read(&path).expect("read the real file");
        prop_assert_eq!(on_disk, synced);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn reads_the_view_and_keeps_only_what_was_synced(ops in proptest::collection::vec(op(), 1..40)) {
            check(&ops)?;
        }
    }

    #[test]
    fn a_spill_leaves_the_view_in_the_real_file_and_passes_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let backend = VolatileBackend::default();
        let f = backend.create(&path).expect("create");
        f.write_at(b"held", 10).expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"");
        backend.spill().expect("spill");
        assert_eq!(&std::fs::read(&path).expect("read")[10..], b"held");
        f.write_at(b"more", 0).expect("write");
        assert_eq!(&std::fs::read(&path).expect("read")[..4], b"more");
    }

    #[test]
    fn handles_of_one_file_share_what_is_held_and_a_rename_keeps_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let backend = VolatileBackend::default();
        let f = backend.create(&a).expect("create");
        f.write_at(b"abc", 0).expect("write");
        backend.rename(&a, &b).expect("rename");
        let g = backend.open(&b).expect("open");
        let mut buf = [0u8; 3];
        g.read_at(&mut buf, 0).expect("read");
        assert_eq!(&buf, b"abc");
        g.sync().expect("sync");
        assert_eq!(std::fs::read(&b).expect("read"), b"abc");
    }
}
