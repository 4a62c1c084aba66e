//! What the privileged data-path tests share: the prerequisite check (skip
//! outside CI, fail in CI) and scratch directories named so that
//! `scripts/check-leftovers.sh` would flag anything they leave behind.

#![allow(dead_code)] // each test binary uses its own subset

pub mod csi;
pub mod failback;
pub mod link;
pub mod netns;
pub mod plane;
pub mod proxy;
pub mod site;
pub mod sites;
pub mod split;
pub mod tls;

use std::path::Path;
use std::process::Command;

/// Whether this process may mount FUSE and attach loop devices. Outside CI a
/// missing prerequisite skips the test with a note; in CI it fails.
pub fn privileged(test: &str) -> bool {
    let ok = rustix::process::geteuid().is_root()
        && Path::new("/dev/fuse").exists()
        && Path::new("/dev/loop-control").exists();
    if !ok {
        skip_or_fail(&format!("{test}: needs root, /dev/fuse and /dev/loop-control"));
    }
    ok
}

/// Outside CI a missing prerequisite skips the test with a note; in CI
/// (`CI` set) every test must run, so it fails.
pub fn skip_or_fail(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("cannot run: {why}; CI must run every test");
    }
    eprintln!("SKIP {why}");
}

/// Whether `tool` is on the PATH.
pub fn tool_present(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A temp dir under /tmp whose name contains `floe`.
pub fn scratch(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("floe-{prefix}-"))
        .tempdir_in("/tmp")
}

/// The `p` quantile of `v` by nearest rank (with fewer than 100 samples,
/// p99 is the largest); NaN for no samples.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}
