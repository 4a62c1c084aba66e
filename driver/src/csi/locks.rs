//! Per-object serialisation of the CSI handlers: a map of async mutexes.
//!
//! A handler takes the guards of every object it touches before it calls
//! the node; a call that finds one taken returns `Aborted` at once (the spec's
//! "operation pending"), and the CO retries. Nothing waits on a guard, so a
//! guard held across a freeze can never deadlock another call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use crate::node::error::{Error, Result};

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
