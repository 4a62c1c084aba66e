//! Quiesce and thaw with a token and a deadline, the watchdog that enforces
//! the deadline, and the records that let a successor thaw what a dead
//! process froze.
//!
//! A quiesce writes `<run-dir>/frozen/<token>.json` (mount point and
//! deadline) durably *before* `FIFREEZE`, and removes it only after the
//! thaw: whatever happens in between, a record names every file system this
//! data plane may have left frozen, and `serve` thaws them all at start
//! ([`thaw_leftovers`]). The watchdog thread thaws a file system whose
//! deadline passed and remembers its token, so the late `thaw` learns that
//! its cut was not consistent.
//!
//! No volume lock is ever held while a file system is frozen, nor while
//! freezing (a `syncfs` waits on the FUSE server of the same process).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::error::PlaneError;
use super::files;
use super::types::{FrozenInfo, Quiesced};
use crate::dataplane::fsfreeze::{self, FrozenFs};
use crate::dataplane::mounttable;

/// The durable record of a frozen file system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenRecord {
    /// The quiesce's token.
    pub token: String,
    /// Mount point.
    pub path: PathBuf,
    /// When it must be thawed (Unix milliseconds).
    pub deadline_unix_ms: u64,
    /// The process that froze it.
    pub pid: u32,
}

impl FrozenRecord {
    /// Where the record of `token` lives under `frozen_dir`.
    pub fn path_in(frozen_dir: &Path, token: &str) -> PathBuf {
        frozen_dir.join(format!("{token}.json"))
    }
}

/// How many expired tokens are remembered for late thaws.
const EXPIRED_MEMORY: usize = 256;

enum State {
    Freezing,
    Frozen(FrozenFs),
}

struct Entry {
    path: PathBuf,
    deadline: Instant,
    deadline_unix_ms: u64,
    state: State,
}

#[derive(Default)]
struct Table {
    entries: HashMap<String, Entry>,
    expired: VecDeque<(String, PathBuf)>,
    stop: bool,
}

impl Table {
    /// Why `token`, not in the table, cannot be thawed: the watchdog
    /// thawed it, or no quiesce returned it.
    fn gone(&self, token: &str) -> PlaneError {
        match self.expired.iter().find(|(t, _)| t == token) {
            Some((_, path)) => PlaneError::Expired {
                token: token.to_owned(),
                path: path.clone(),
            },
            None => PlaneError::UnknownToken(token.to_owned()),
        }
    }
}

/// Every frozen file system of this process.
pub(crate) struct Freezer {
    dir: PathBuf,
    table: Mutex<Table>,
    wake: Condvar,
}

impl Freezer {
    pub(crate) fn new(frozen_dir: &Path) -> Result<Arc<Self>, PlaneError> {
        std::fs::create_dir_all(frozen_dir)
            .map_err(PlaneError::io("create the frozen-records directory", frozen_dir))?;
        Ok(Arc::new(Freezer {
            dir: frozen_dir.to_owned(),
            table: Mutex::default(),
            wake: Condvar::new(),
        }))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `syncfs` then `FIFREEZE` on the file system mounted at `path`, thawed
    /// by [`Freezer::thaw`] or by the watchdog after `timeout`.
    pub(crate) fn quiesce(&self, path: &Path, timeout: Duration) -> Result<Quiesced, PlaneError> {
        match mounttable::is_mount_point(path) {
            Ok(true) => {}
            Ok(false) => return Err(PlaneError::NotMounted(path.to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(PlaneError::NotMounted(path.to_owned())),
            Err(e) => return Err(PlaneError::io("look up the mount point", path)(e)),
        }
        let token = files::new_token().map_err(PlaneError::io("make a token from", "/dev/urandom"))?;
        let deadline = Instant::now() + timeout;
        let deadline_unix_ms = files::unix_ms(SystemTime::now() + timeout);
        {
            let mut t = self.table();
            if let Some((token, _)) = t.entries.iter().find(|(_, e)| e.path == path) {
                return Err(PlaneError::AlreadyFrozen {
                    path: path.to_owned(),
                    token: token.clone(),
                });
            }
            t.entries.insert(
                token.clone(),
                Entry {
                    path: path.to_owned(),
                    deadline,
                    deadline_unix_ms,
                    state: State::Freezing,
                },
            );
        }
        let forget = |e: PlaneError| {
            self.table().entries.remove(&token);
            e
        };
        let record = FrozenRecord {
            token: token.clone(),
            path: path.to_owned(),
            deadline_unix_ms,
            pid: std::process::id(),
        };
        let record_path = FrozenRecord::path_in(&self.dir, &token);
        files::write_json(&record_path, &record)
            .map_err(PlaneError::io("record the freeze in", &record_path))
            .map_err(forget)?;
        let fs = match FrozenFs::freeze(path) {
            Ok(fs) => fs,
            Err(e) => {
                let _ = files::remove_durably(&record_path);
                return Err(forget(e.into()));
            }
        };
        let late = {
            let mut t = self.table();
            if Instant::now() >= deadline {
                t.entries.remove(&token);
                Some(fs)
            } else {
                t.entries
                    .get_mut(&token)
                    .expect("only quiesce removes a freezing entry")
                    .state = State::Frozen(fs);
                None
            }
        };
        self.wake.notify_all();
        if let Some(mut fs) = late {
            fs.thaw()?;
            let _ = files::remove_durably(&record_path);
            return Err(PlaneError::FreezeTooSlow {
                path: path.to_owned(),
                timeout_ms: millis(timeout),
            });
        }
        tracing::info!(path = %path.display(), %token, timeout_ms = millis(timeout), "file system frozen");
        Ok(Quiesced {
            token,
            path: path.to_owned(),
            deadline_unix_ms,
            timeout_ms: millis(timeout),
        })
    }
}

impl Freezer {
    /// Thaws the file system frozen under `token`.
    pub(crate) fn thaw(&self, token: &str) -> Result<PathBuf, PlaneError> {
        let entry = {
            let mut t = self.table();
            match t.entries.get(token).map(|e| matches!(e.state, State::Freezing)) {
                Some(true) => return Err(PlaneError::StillFreezing(token.to_owned())),
                Some(false) => t.entries.remove(token).expect("just looked up"),
                None => return Err(t.gone(token)),
            }
        };
        let path = entry.path.clone();
        self.finish(token, entry)?;
        tracing::info!(path = %path.display(), %token, "file system thawed");
        Ok(path)
    }

    /// Thaws an entry taken out of the table and removes its record.
    fn finish(&self, token: &str, entry: Entry) -> Result<(), PlaneError> {
        if let State::Frozen(mut fs) = entry.state {
            fs.thaw()?;
        }
        let record = FrozenRecord::path_in(&self.dir, token);
        files::remove_durably(&record).map_err(PlaneError::io("remove the freeze record", &record))
    }

    /// Runs `f` if the file system of `token` is frozen now, holding the
    /// table so that neither a thaw nor the watchdog ends the freeze
    /// before `f` returns (an epoch flip must happen while frozen).
    pub(crate) fn while_frozen<R>(&self, token: &str, f: impl FnOnce() -> R) -> Result<R, PlaneError> {
        let t = self.table();
        match t.entries.get(token) {
            Some(Entry {
                state: State::Frozen(_),
                deadline,
                ..
            }) if Instant::now() < *deadline => Ok(f()),
            Some(_) => Err(PlaneError::StillFreezing(token.to_owned())),
            None => Err(t.gone(token)),
        }
    }

    /// The file systems frozen now.
    pub(crate) fn list(&self) -> Vec<FrozenInfo> {
        let mut v: Vec<FrozenInfo> = self
            .table()
            .entries
            .iter()
            .map(|(token, e)| FrozenInfo {
                token: token.clone(),
                path: e.path.clone(),
                deadline_unix_ms: e.deadline_unix_ms,
            })
            .collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }

    /// Thaws everything frozen (a process about to exit) and stops the
    /// watchdog. Entries still freezing are left to their quiesce.
    pub(crate) fn thaw_all(&self) {
        let taken: Vec<(String, Entry)> = {
            let mut t = self.table();
            t.stop = true;
            let tokens: Vec<String> = t
                .entries
                .iter()
                .filter(|(_, e)| matches!(e.state, State::Frozen(_)))
                .map(|(k, _)| k.clone())
                .collect();
            tokens
                .into_iter()
                .filter_map(|k| t.entries.remove(&k).map(|e| (k, e)))
                .collect()
        };
        self.wake.notify_all();
        for (token, entry) in taken {
            let path = entry.path.clone();
            match self.finish(&token, entry) {
                Ok(()) => tracing::info!(path = %path.display(), %token, "thawed before exit"),
                Err(e) => {
                    tracing::error!(path = %path.display(), %token, error = %super::error::chain(&e), "thaw before exit")
                }
            }
        }
    }

    /// The watchdog: thaws every file system whose deadline passed. Runs
    /// until [`Freezer::thaw_all`].
    pub(crate) fn watchdog(&self) {
        loop {
            let (due, wait) = {
                let mut t = self.table();
                if t.stop {
                    return;
                }
                let now = Instant::now();
                let tokens: Vec<String> = t
                    .entries
                    .iter()
                    .filter(|(_, e)| matches!(e.state, State::Frozen(_)) && e.deadline <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                let mut due = Vec::new();
                for k in tokens {
                    let e = t.entries.remove(&k).expect("just listed");
                    t.expired.push_back((k.clone(), e.path.clone()));
                    if t.expired.len() > EXPIRED_MEMORY {
                        t.expired.pop_front();
                    }
                    due.push((k, e));
                }
                let next = t
                    .entries
                    .values()
                    .map(|e| e.deadline.saturating_duration_since(now))
                    .min()
                    .unwrap_or(Duration::from_secs(1))
                    .min(Duration::from_secs(1));
                (due, next)
            };
            for (token, entry) in due {
                let path = entry.path.clone();
                match self.finish(&token, entry) {
                    Ok(()) => {
                        tracing::warn!(path = %path.display(), %token, "quiesce deadline passed: file system thawed by the watchdog")
                    }
                    Err(e) => {
                        tracing::error!(path = %path.display(), %token, error = %super::error::chain(&e), "watchdog thaw")
                    }
                }
            }
            let t = self.table();
            if !t.stop {
                let _ = self.wake.wait_timeout(t, wait.max(Duration::from_millis(5)));
            }
        }
    }
}

/// Thaws every file system named by a record in `frozen_dir` (left by a
/// process that died with it frozen) and removes the records. Returns the
/// mount points thawed.
pub(crate) fn thaw_leftovers(frozen_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(frozen_dir) else {
        return Vec::new();
    };
    let mut thawed = Vec::new();
    for entry in entries.flatten() {
        let file = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            // A record that was never renamed into place: no freeze followed.
            let _ = std::fs::remove_file(&file);
            continue;
        }
        let record = match files::read_json::<FrozenRecord>(&file) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(file = %file.display(), error = %e, "unreadable freeze record: removed without thawing");
                let _ = files::remove_durably(&file);
                continue;
            }
        };
        match mounttable::is_mount_point(&record.path) {
            Ok(true) => match fsfreeze::thaw(&record.path) {
                Ok(()) => {
                    tracing::warn!(path = %record.path.display(), token = %record.token, pid = record.pid, "thawed a file system left frozen by an earlier process");
                    thawed.push(record.path.clone());
                }
                Err(e) => {
                    // Keep the record: the next start tries again.
                    tracing::error!(path = %record.path.display(), error = %super::error::chain(&e), "thaw a leftover frozen file system");
                    continue;
                }
            },
            _ => {
                tracing::info!(path = %record.path.display(), "freeze record of a file system no longer mounted: removed")
            }
        }
        if let Err(e) = files::remove_durably(&file) {
            tracing::error!(file = %file.display(), error = %e, "remove a freeze record");
        }
    }
    thawed
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_name_their_token() {
        let r = FrozenRecord {
            token: "ab".into(),
            path: "/m".into(),
            deadline_unix_ms: 5,
            pid: 1,
        };
        let line = serde_json::to_string(&r).expect("encode");
        assert_eq!(serde_json::from_str::<FrozenRecord>(&line).expect("decode"), r);
        assert_eq!(
            FrozenRecord::path_in(Path::new("/run/f"), "ab"),
            Path::new("/run/f/ab.json")
        );
    }

    #[test]
    fn leftover_records_of_unmounted_paths_and_temporaries_are_removed() {
        let dir = tempfile::Builder::new()
            .prefix("floe-frozen")
            .tempdir()
            .expect("tempdir");
        let r = FrozenRecord {
            token: "cd".into(),
            path: dir.path().join("not-a-mount"),
            deadline_unix_ms: 0,
            pid: 1,
        };
        files::write_json(&FrozenRecord::path_in(dir.path(), "cd"), &r).expect("write");
        std::fs::write(dir.path().join(".ef.json.tmp"), b"{").expect("write");
        std::fs::write(dir.path().join("bad.json"), b"{").expect("write");
        assert!(thaw_leftovers(dir.path()).is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
    }

    #[test]
    fn thawing_an_unknown_token_says_so_and_quiescing_a_non_mount_is_refused() {
        let dir = tempfile::Builder::new()
            .prefix("floe-frozen")
            .tempdir()
            .expect("tempdir");
        let f = Freezer::new(&dir.path().join("frozen")).expect("freezer");
        assert!(matches!(f.thaw("00"), Err(PlaneError::UnknownToken(_))));
        let e = f.quiesce(dir.path(), Duration::from_secs(1)).expect_err("not a mount");
        assert!(matches!(e, PlaneError::NotMounted(_)), "{e}");
        assert!(f.list().is_empty());
    }
}
