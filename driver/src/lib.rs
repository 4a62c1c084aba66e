//! floe-driver: the shells around `floe-engine` on a node and in the CSI
//! controller — the on-disk store, the FUSE+loop data path, the node's
//! volumes, the data-plane daemon, the CSI services and the replication
//! stream.
//!
//! # Layout
//!
//! Each module below names what it may import; the arrows point down only,
//! so the crate has no import cycle (`farm-studio look driver` draws it).
//!
//! - [`csi`]: the CSI services of `floe-csi` (Identity, Controller,
//!   GroupController, Node), their request parsing, and split mode's
//!   mutual-TLS client and server of `node.proto` (`csi::remote`).
//!   Imports `node` (the node's operations and their gRPC client),
//!   `daemon` (the client of its `DataPlane` service), `dataplane`
//!   (mount helpers), `model`, `cli`.
//! - [`daemon`]: `floe-dataplane serve`, the long-lived process that owns
//!   the node's volumes at run time: its gRPC API on a unix socket
//!   (`node.proto`'s `NodeVolumes`, `DataPlane` and `NodeAdmin`), the
//!   node's replication (`daemon::replicate`: senders, DR groups, the
//!   listener, the node's steps of a group freeze), the freeze watchdog,
//!   restarts through the fd holder. Imports `node`, `replication`,
//!   `dataplane`.
//! - [`node`]: the node's volumes, whoever serves them. The one trait of
//!   the node's operations (`node::volumes::NodeVolumes`) and its domain
//!   types, the node's error and its one mapping to `tonic::Status`, the
//!   one gRPC server and client of those operations (`node::rpc`), the
//!   catalog (names, parameters, snapshots, groups, cuts) and the plane
//!   under it (`node::plane`: stores, engines, attach, freeze). Imports
//!   `dataplane`, `store`, `model`.
//! - [`dataplane`]: a volume as a block device — the FUSE server, loop
//!   devices, mkfs and mount, freeze ioctls, fd handover, private sockets;
//!   a hosted volume as a replication sender's end and a group-freeze
//!   member. Imports `store`, `replication`.
//! - [`replication`]: the site-to-site stream — the codec of
//!   `replication.proto`, the handshake, a sender per primary volume, the
//!   DR's `Replication` service, the group freeze, the link's metrics.
//!   Imports `failpoint` only of this crate (and `floe-engine`,
//!   `floe-proto`).
//! - [`store`]: the engine's store on files. Imports `failpoint` and
//!   `floe-engine` only.
//! - [`failpoint`]: named points where a test build kills itself. Imports
//!   nothing of this crate; any module may call it.
//! - [`model`]: validated values from outside (ids, host paths, peer
//!   names). Imports nothing of this crate.
//! - [`cli`]: the binaries' flags. Imports `model`.
//!
//! The binaries (`src/bin/`) sit on top: `floe-csi` wires `csi` to a
//! daemon's socket or to remote nodes, `floe-dataplane` runs `daemon` and
//! the fd holder.

#![warn(missing_docs)]

pub mod cli;
pub mod csi;
pub mod daemon;
pub mod dataplane;
pub mod failpoint;
pub mod model;
pub mod node;
pub mod replication;
pub mod store;
