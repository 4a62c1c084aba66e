//! A [`Backend`] that can lose power: an in-memory filesystem that keeps,
//! for every file and directory, its durable content and the operations
//! issued since its last fsync.
//!
//! [`CrashingBackend::cut_at`] arms a power cut: operation number `n` (every
//! mutating call counts, fsyncs included) and everything after it fail, as a
//! machine that lost power would. [`CrashingBackend::restart`] then applies a
//! seeded, arbitrary subset of each file's and directory's pending operations
//! in order — possibly tearing one write (a prefix of its bytes lands) — and
//! drops the rest, which is what a disk may hold after a power cut. Files and
//! directory entries are independent: a created file whose directory was not
//! synced may vanish, a rename may land before the data it names.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Component, Path};
use std::sync::{Arc, Mutex, MutexGuard};

use super::backend::{Backend, BackendFile};

/// The in-memory filesystem that loses power on request. Clones share it.
#[derive(Clone, Debug, Default)]
pub struct CrashingBackend {
    fs: Arc<Mutex<MemFs>>,
}

#[derive(Debug, Default)]
struct MemFs {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Bumped at every restart: handles from before fail.
    boot: u64,
    ops: u64,
    syncs: u64,
    cut_at: Option<u64>,
}

#[derive(Debug, Clone)]
enum Node {
    File(Versioned<Vec<u8>, FileOp>),
    Dir(Versioned<BTreeMap<String, u64>, DirOp>),
}

#[derive(Debug, Clone)]
struct Versioned<T, Op> {
    durable: T,
    view: T,
    pending: Vec<Op>,
}

impl<T: Default, Op> Default for Versioned<T, Op> {
    fn default() -> Self {
        Versioned {
            durable: T::default(),
            view: T::default(),
            pending: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
enum FileOp {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Clone)]
enum DirOp {
    Link(String, u64),
    Unlink(String),
    Rename(String, String),
}

const ROOT: u64 = 0;

fn power_cut() -> io::Error {
    io::Error::other("power cut")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display()))
}

impl FileOp {
    fn apply(&self, data: &mut Vec<u8>) {
        match self {
            FileOp::Write(off, bytes) => {
                let (off, end) = (*off as usize, *off as usize + bytes.len());
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[off..end].copy_from_slice(bytes);
            }
            FileOp::SetLen(len) => data.resize(*len as usize, 0),
        }
    }
}

impl DirOp {
    fn apply(&self, entries: &mut BTreeMap<String, u64>) {
        match self {
            DirOp::Link(name, ino) => {
                entries.insert(name.clone(), *ino);
            }
            DirOp::Unlink(name) => {
                entries.remove(name);
            }
            DirOp::Rename(from, to) => {
                if let Some(ino) = entries.remove(from) {
                    entries.insert(to.clone(), ino);
                }
            }
        }
    }
}

/// splitmix64: enough randomness for a replayable power cut.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

impl MemFs {
    /// Count a mutating operation; fail it if the power is (now) off.
    fn op(&mut self) -> io::Result<()> {
        if self.cut_at.is_some_and(|c| self.ops >= c) {
            return Err(power_cut());
        }
        self.ops += 1;
        Ok(())
    }

    fn dir(&mut self, ino: u64) -> io::Result<&mut Versioned<BTreeMap<String, u64>, DirOp>> {
        match self.nodes.get_mut(&ino) {
            Some(Node::Dir(d)) => Ok(d),
            _ => Err(io::Error::other("not a directory")),
        }
    }

    fn file(&mut self, ino: u64) -> io::Result<&mut Versioned<Vec<u8>, FileOp>> {
        match self.nodes.get_mut(&ino) {
            Some(Node::File(f)) => Ok(f),
            _ => Err(io::Error::other("not a file")),
        }
    }

    /// The directory holding `path` and the last component's name.
    fn parent(&mut self, path: &Path) -> io::Result<(u64, String)> {
        let mut names = Vec::new();
        for c in path.components() {
            match c {
                Component::Normal(n) => names.push(n.to_str().ok_or_else(|| not_found(path))?.to_owned()),
                Component::RootDir | Component::CurDir => {}
                _ => return Err(io::Error::other("unsupported path")),
            }
        }
        let last = names.pop().ok_or_else(|| not_found(path))?;
        let mut at = ROOT;
        for n in names {
            at = *self.dir(at)?.view.get(&n).ok_or_else(|| not_found(path))?;
        }
        self.dir(at)?;
        Ok((at, last))
    }

    fn lookup(&mut self, path: &Path) -> io::Result<Option<u64>> {
        if path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::CurDir))
        {
            return Ok(Some(ROOT));
        }
        match self.parent(path) {
            Ok((dir, name)) => Ok(self.dir(dir)?.view.get(&name).copied()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn link_new(&mut self, path: &Path, node: Node) -> io::Result<u64> {
        let (dir, name) = self.parent(path)?;
        self.next_ino += 1;
        let ino = self.next_ino;
        self.nodes.insert(ino, node);
        let op = DirOp::Link(name, ino);
        let d = self.dir(dir)?;
        op.apply(&mut d.view);
        d.pending.push(op);
        Ok(ino)
    }

    fn write(&mut self, ino: u64, op: FileOp) -> io::Result<()> {
        self.op()?;
        let f = self.file(ino)?;
        op.apply(&mut f.view);
        f.pending.push(op);
        Ok(())
    }

    /// Keep a random subset of every pending operation, tear at most one write per file.
    fn lose_power(&mut self, rng: &mut Rng) {
        // 0: nothing lands, 1: everything lands, otherwise each op with probability 1/2.
        let mode = rng.below(4);
        let keep = |rng: &mut Rng| match mode {
            0 => false,
            1 => true,
            _ => rng.below(2) == 0,
        };
        let mut inos: Vec<u64> = self.nodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            match self.nodes.get_mut(&ino) {
                Some(Node::File(f)) => {
                    let tear = if rng.below(3) == 0 {
                        Some(rng.below(f.pending.len() as u64) as usize)
                    } else {
                        None
                    };
                    for (i, op) in std::mem::take(&mut f.pending).into_iter().enumerate() {
                        if !keep(rng) {
                            continue;
                        }
                        match op {
                            FileOp::Write(off, mut bytes) if tear == Some(i) => {
                                bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize);
                                FileOp::Write(off, bytes).apply(&mut f.durable);
                            }
                            op => op.apply(&mut f.durable),
                        }
                    }
                    f.view = f.durable.clone();
                }
                Some(Node::Dir(d)) => {
                    for op in std::mem::take(&mut d.pending) {
                        if keep(rng) {
                            op.apply(&mut d.durable);
                        }
                    }
                    d.view = d.durable.clone();
                }
                None => {}
            }
        }
        self.collect_garbage();
    }

    /// Drop nodes no durable directory reaches any more.
    fn collect_garbage(&mut self) {
        let mut live = vec![ROOT];
        let mut seen = std::collections::HashSet::new();
        while let Some(ino) = live.pop() {
            if seen.insert(ino) {
                if let Some(Node::Dir(d)) = self.nodes.get(&ino) {
                    live.extend(d.durable.values().copied());
                }
            }
        }
        self.nodes.retain(|ino, _| seen.contains(ino));
    }
}

impl CrashingBackend {
    /// An empty filesystem with power on.
    pub fn new() -> Self {
        let mut fs = MemFs::default();
        fs.nodes.insert(ROOT, Node::Dir(Versioned::default()));
        CrashingBackend {
            fs: Arc::new(Mutex::new(fs)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MemFs> {
        // A panicking test thread leaves a usable filesystem behind.
        self.fs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mutating operations issued so far (the power-cut clock).
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// File and directory fsyncs issued so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Lose power at mutating operation number `n`: it and every later one fail.
    pub fn cut_at(&self, n: u64) {
        self.lock().cut_at = Some(n);
    }

    /// Lose power now (if not lost already) and boot again: every file and
    /// directory keeps what it synced plus a `seed`-chosen subset of what it
    /// did not, possibly with one torn write. Handles opened before fail.
    pub fn restart(&self, seed: u64) {
        let mut fs = self.lock();
        fs.lose_power(&mut Rng(seed));
        fs.boot += 1;
        fs.cut_at = None;
    }

    fn handle(&self, ino: u64) -> Box<dyn BackendFile> {
        let boot = self.lock().boot;
        Box::new(MemFile {
            fs: self.clone(),
            ino,
            boot,
        })
    }
}

#[derive(Debug)]
struct MemFile {
    fs: CrashingBackend,
    ino: u64,
    boot: u64,
}

impl MemFile {
    fn with<T>(&self, f: impl FnOnce(&mut MemFs) -> io::Result<T>) -> io::Result<T> {
        let mut fs = self.fs.lock();
        if fs.boot != self.boot {
            return Err(io::Error::other("file handle from before a power cut"));
        }
        f(&mut fs)
    }
}

impl BackendFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|fs| {
            let data = &fs.file(self.ino)?.view;
            let start = (offset as usize).min(data.len());
            let n = (data.len() - start).min(buf.len());
            buf[..n].copy_from_slice(&data[start..start + n]);
            buf[n..].fill(0);
            Ok(())
        })
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.with(|fs| fs.write(self.ino, FileOp::Write(offset, data.to_vec())))
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.with(|fs| {
            let size = fs.file(self.ino)?.view.len() as u64;
            let end = (offset + len).min(size);
            let zeroes = vec![0; end.saturating_sub(offset) as usize];
            fs.write(self.ino, FileOp::Write(offset, zeroes))
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|fs| fs.write(self.ino, FileOp::SetLen(len)))
    }

    fn size(&self) -> io::Result<u64> {
        self.with(|fs| Ok(fs.file(self.ino)?.view.len() as u64))
    }

    fn sync(&self) -> io::Result<()> {
        self.with(|fs| {
            fs.op()?;
            fs.syncs += 1;
            let f = fs.file(self.ino)?;
            f.durable = f.view.clone();
            f.pending.clear();
            Ok(())
        })
    }
}

impl Backend for CrashingBackend {
    fn open(&self, path: &Path) -> io::Result<Box<dyn BackendFile>> {
        let ino = {
            let mut fs = self.lock();
            let ino = fs.lookup(path)?.ok_or_else(|| not_found(path))?;
            fs.file(ino)?;
            ino
        };
        Ok(self.handle(ino))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn BackendFile>> {
        let ino = {
            let mut fs = self.lock();
            fs.op()?;
            match fs.lookup(path)? {
                Some(ino) => {
                    let f = fs.file(ino)?;
                    FileOp::SetLen(0).apply(&mut f.view);
                    f.pending.push(FileOp::SetLen(0));
                    ino
                }
                None => fs.link_new(path, Node::File(Versioned::default()))?,
            }
        };
        Ok(self.handle(ino))
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        Ok(self.lock().lookup(path)?.is_some())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        fs.op()?;
        match fs.lookup(path)? {
            Some(ino) => fs.dir(ino).map(|_| ()),
            None => fs.link_new(path, Node::Dir(Versioned::default())).map(|_| ()),
        }
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut fs = self.lock();
        let ino = fs.lookup(path)?.ok_or_else(|| not_found(path))?;
        Ok(fs.dir(ino)?.view.keys().cloned().collect())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        fs.op()?;
        let (dir, name) = fs.parent(path)?;
        let d = fs.dir(dir)?;
        if !d.view.contains_key(&name) {
            return Err(not_found(path));
        }
        let op = DirOp::Unlink(name);
        op.apply(&mut d.view);
        d.pending.push(op);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        fs.op()?;
        let (dir, a) = fs.parent(from)?;
        let (dir_to, b) = fs.parent(to)?;
        if dir != dir_to {
            return Err(io::Error::other("rename across directories"));
        }
        let d = fs.dir(dir)?;
        if !d.view.contains_key(&a) {
            return Err(not_found(from));
        }
        let op = DirOp::Rename(a, b);
        op.apply(&mut d.view);
        d.pending.push(op);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        fs.op()?;
        fs.syncs += 1;
        let ino = fs.lookup(path)?.ok_or_else(|| not_found(path))?;
        let d = fs.dir(ino)?;
        d.durable = d.view.clone();
        d.pending.clear();
        Ok(())
    }

    fn clone_file(&self, src: &Path, dst: &Path) -> io::Result<Box<dyn BackendFile>> {
        let data = {
            let mut fs = self.lock();
            let ino = fs.lookup(src)?.ok_or_else(|| not_found(src))?;
            fs.file(ino)?.view.clone()
        };
        let f = self.create(dst)?;
        f.set_len(data.len() as u64)?;
        // Written in 4 KiB pieces, so a cut can leave a partial copy.
        for (i, chunk) in data.chunks(4096).enumerate() {
            if chunk.iter().any(|&b| b != 0) {
                f.write_at(chunk, i as u64 * 4096)?;
            }
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(f: &dyn BackendFile) -> Vec<u8> {
        let mut buf = vec![0; f.size().expect("len") as usize];
        f.read_at(&mut buf, 0).expect("read");
        buf
    }

    #[test]
    fn synced_data_and_entries_survive_every_power_cut() {
        for seed in 0..50 {
            let fs = CrashingBackend::new();
            fs.create_dir(Path::new("/d")).expect("mkdir");
            fs.sync_dir(Path::new("/")).expect("sync root");
            let f = fs.create(Path::new("/d/f")).expect("create");
            f.write_at(b"durable", 0).expect("write");
            f.sync().expect("fsync");
            fs.sync_dir(Path::new("/d")).expect("sync dir");
            f.write_at(b"DURABLE", 0).expect("write");
            fs.create(Path::new("/d/g")).expect("create g");
            fs.restart(seed);
            assert!(f.read_at(&mut [0; 1], 0).is_err(), "stale handle must fail");
            let f = fs.open(Path::new("/d/f")).expect("f survives");
            let got = read_all(f.as_ref());
            // Each byte is old or new: the unsynced write may be torn.
            assert!(got
                .iter()
                .zip(b"durable")
                .all(|(g, o)| g == o || *g == o.to_ascii_uppercase()));
            assert!(got.eq_ignore_ascii_case(b"durable"));
        }
    }

    #[test]
    fn a_cut_fails_that_operation_and_every_later_one() {
        let fs = CrashingBackend::new();
        let f = fs.create(Path::new("/f")).expect("create");
        let start = fs.ops();
        fs.cut_at(start + 1);
        f.write_at(b"a", 0).expect("before the cut");
        assert!(f.write_at(b"b", 1).is_err());
        assert!(f.sync().is_err());
        assert_eq!(fs.ops(), start + 1);
        fs.restart(1);
        assert!(fs.create(Path::new("/f2")).is_ok(), "power is back");
    }

    #[test]
    fn unsynced_entries_may_vanish_and_synced_ones_stay() {
        let mut vanished = 0;
        for seed in 0..64 {
            let fs = CrashingBackend::new();
            let f = fs.create(Path::new("/a")).expect("create");
            f.sync().expect("fsync");
            fs.restart(seed);
            if !fs.exists(Path::new("/a")).expect("exists") {
                vanished += 1;
            }
            let fs = CrashingBackend::new();
            fs.create(Path::new("/b")).expect("create");
            fs.sync_dir(Path::new("/")).expect("sync dir");
            fs.restart(seed);
            assert!(fs.exists(Path::new("/b")).expect("exists"));
        }
        assert!(vanished > 0 && vanished < 64, "{vanished}");
    }
}
