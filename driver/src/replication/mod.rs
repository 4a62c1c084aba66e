//! Site-to-site replication: the engine's frames on a network stream.
//!
//! # Layout
//!
//! - [`codec`]: engine frames ↔ `replication.proto` messages, pure
//!   conversions. Encoding splits what could grow with the volume into parts
//!   of at most 1 MiB; decoding validates every field against the volume's
//!   geometry before it allocates, and joins parts back into one engine frame.
//! - [`handshake`]: the stream's first exchange (`Open` → `Accept` or
//!   `Refusal`): wire version, features, pairing, geometry and mode checked
//!   field by field, a mismatch named with both values.
//! - [`endpoint`]: what a stream needs from the volume at each end
//!   ([`endpoint::PrimaryEnd`], [`endpoint::ReplicaEnd`]) and from the
//!   group coordinator ([`endpoint::CoordinatorPort`]), with engines hosted
//!   behind their locks and a coordinator whose members share its process.
//! - [`link`]: a stream's state, counters and errors.
//! - [`sender`]: the primary's end, one task per volume: dial, open, pump
//!   with backpressure into the engine, reconnect with backoff.
//! - [`receiver`]: the DR's end, the `Replication` service of a node.
//! - [`remote`]: a group coordinator on another node of the site, as its
//!   member nodes reach it (`node.proto`'s `GroupCoordinator`): the wire
//!   form of reports, decisions and records, and the member's client.
//! - [`tls`]: mutual TLS from files reloaded when they change, the peer
//!   authorised by name; [`listener`]: the DR node's listener on it.
//! - [`freeze`]: the group freeze (ready, quiesce, flip, thaw, abort on any
//!   failure) over [`freeze::FreezeMember`]s.
//!
//! Dependencies point one way: `codec` and `handshake` use only
//! `floe-engine`'s types and `floe-proto`'s messages; `sender` and
//! `receiver` use them through `endpoint` and `link`; `tls` uses
//! `crate::model` (the peer's name); nothing here imports the CSI services,
//! the node or the data plane (they host it). The
//! sealing layer (I6) will sit between `codec` and the stream.

pub mod codec;
pub mod endpoint;
pub mod freeze;
pub mod handshake;
pub mod link;
pub mod listener;
pub mod receiver;
pub mod remote;
pub mod sender;
pub mod tls;

pub(crate) use crate::model::error_chain as chain;
