//! The node's volumes: the one owner of every volume a node holds, below
//! both the CSI services ([`crate::csi`]) and the data-plane daemon
//! ([`crate::daemon`]), which only call it.
//!
//! # Layout
//!
//! - [`volumes`]: [`volumes::NodeVolumes`], the one trait of the node's
//!   operations, and its domain types;
//! - [`params`]: [`params::VolumeParams`], what a volume is made with;
//! - [`error`]: [`error::Error`], the node's error, and the one place it
//!   becomes a `tonic::Status`;
//! - [`local`], [`catalog`], [`cut`]: the catalog — names, parameters,
//!   content sources, snapshots, group snapshots and the cut — over the
//!   plane, run by the daemon;
//! - [`locks`]: per-object guards, of the CSI handlers and of the catalog;
//! - [`mounts`]: the mount table, mounts, bind mounts, statvfs;
//! - [`rpc`]: the node's operations over gRPC (`node.proto`'s
//!   `NodeVolumes`): its one server, its one client, the conversions;
//! - [`plane`]: stores, engines, attach, freeze.
//!
//! Dependencies point down: `volumes` → `params` → `error` → `plane` →
//! `crate::dataplane`, `crate::store`, `crate::model`.

pub mod catalog;
pub mod cut;
pub mod error;
pub mod local;
pub mod locks;
pub mod mounts;
pub mod params;
pub mod plane;
pub mod rpc;
pub mod volumes;
