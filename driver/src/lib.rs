//! floe-driver: the shells around `floe-engine` on a node and in the CSI
//! controller. This crate grows by issue: the on-disk store and the FUSE+loop
//! data path, the CSI services, then the replication transport. Today it only
//! holds the command-line surface shared by its binaries.

#![warn(missing_docs)]

pub mod cli;
pub mod csi;
pub mod daemon;
pub mod dataplane;
pub mod model;
pub mod node;
pub mod store;
