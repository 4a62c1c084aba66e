//! Per-object serialisation, of the CSI handlers and of the catalog
//! ([`super::local`]): a map of mutexes, keyed by [`volume_key`],
//! [`snapshot_key`] and [`group_key`].
//!
//! A call takes the guards of every object it touches before it does
//! anything; a call that finds one taken returns `Aborted` at once (the
//! spec's "operation pending"), and the CO retries. Nothing waits on a
//! guard, so a guard held across a freeze can never deadlock another call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use super::error::{Error, Result};
use super::volumes::{GroupSpec, Source};

/// Guard key of a volume.
pub fn volume_key(id: &str) -> String {
    format!("volume {id}")
}

/// Guard key of a snapshot.
pub fn snapshot_key(id: &str) -> String {
    format!("snapshot {id}")
}

/// Guard key of a group snapshot.
pub fn group_key(id: &str) -> String {
    format!("group {id}")
}

/// The guards a creation of volume `id` from `source` takes.
pub fn creation_keys(id: &str, source: Option<&Source>) -> Vec<String> {
    let mut keys = vec![volume_key(id)];
    match source {
        Some(Source::Snapshot(s)) => keys.push(snapshot_key(s)),
        Some(Source::Volume(v)) => keys.push(volume_key(v)),
        None => {}
    }
    keys
}

/// The guards a group snapshot's creation takes: the group, and each
/// member snapshot with its volume.
pub fn group_keys(spec: &GroupSpec) -> Vec<String> {
    let mut keys = vec![group_key(&spec.id)];
    for m in &spec.members {
        keys.push(snapshot_key(&m.id));
        keys.push(volume_key(&m.volume));
    }
    keys
}

type Map = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

/// The lock map.
#[derive(Clone, Debug, Default)]
pub struct Locks {
    map: Map,
}

/// Guards of several objects; released on drop.
#[derive(Debug)]
pub struct Guard {
    map: Map,
    held: Vec<(String, OwnedMutexGuard<()>)>,
}

impl Locks {
    /// Takes the guards of `keys` (any order; duplicates allowed), or none
    /// and `Aborted` if one is taken.
    pub fn try_lock<S: AsRef<str>>(&self, keys: &[S]) -> Result<Guard> {
        let mut keys: Vec<String> = keys.iter().map(|k| k.as_ref().to_owned()).collect();
        keys.sort();
        keys.dedup();
        let mut guard = Guard {
            map: Arc::clone(&self.map),
            held: Vec::with_capacity(keys.len()),
        };
        for key in keys {
            let m = {
                let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
                Arc::clone(map.entry(key.clone()).or_default())
            };
            match m.try_lock_owned() {
                Ok(g) => guard.held.push((key, g)),
                Err(_) => return Err(Error::Busy(key)),
            }
        }
        Ok(guard)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let keys: Vec<String> = self.held.drain(..).map(|(k, _)| k).collect();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            if map.get(&k).is_some_and(|m| Arc::strong_count(m) == 1) {
                map.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_object_aborts_the_second_caller_and_is_free_again_after() {
        let locks = Locks::default();
        let g = locks.try_lock(&["volume a", "volume b"]).expect("free");
        let e = locks.try_lock(&["volume b", "volume c"]).expect_err("b is taken");
        assert_eq!(e.code(), tonic::Code::Aborted);
        assert!(
            locks.try_lock(&["volume c"]).is_ok(),
            "c was not kept by the failed call"
        );
        drop(g);
        assert!(locks.try_lock(&["volume b", "volume b"]).is_ok());
        assert!(locks.map.lock().expect("map").is_empty());
    }
}
