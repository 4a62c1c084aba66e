//! The plane: the node's volumes as the kernel and the disks see them —
//! stores, engines, FUSE connections and loop devices, attach and detach
//! through the fd holder, growth, local snapshots and restores, the cut
//! across volumes, and the file systems frozen for a quiesce.
//!
//! - [`types`]: the plane's validated values (volume ids and snapshot
//!   names, shapes, tokens) and what it reports;
//! - `volumes`: `Volumes`, every volume of the node, one slot lock each;
//! - [`attachment`]: one attached volume and the record of attachments;
//! - `freeze`: quiesce and thaw with a watchdog;
//! - [`files`]: the run directory's paths and durable JSON records;
//! - [`error`]: the plane's error.
//!
//! The plane knows nothing of CSI or of the daemon's API: the catalog
//! ([`super::local`]) and the daemon ([`crate::daemon`]) call it.

pub mod attachment;
pub mod error;
pub mod files;
pub(crate) mod freeze;
pub mod types;
pub(crate) mod volumes;

pub use error::{chain, PlaneError};
