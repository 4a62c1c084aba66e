//! The node data path: a volume as a block device.
//!
//! On kernels without ublk or NBD (DESIGN §4, "Data path"), a volume is a
//! single-file FUSE file system whose one file is the volume, with a loop
//! device on that file in direct-I/O mode, and ext4 or XFS on the loop
//! device. Every read and write of the file system reaches a
//! [`backend::BlockBackend`] as a FUSE request; fsync and discard reach it
//! too (as `flush` and `zero_range`), because there is no FUA on this path
//! and fsync is the durability point.
//!
//! Layout:
//! - [`backend`]: the trait the FUSE server calls, and a plain-file backend;
//! - [`engine_backend`]: the replicated volume: I/O through `floe_engine::Primary`;
//! - [`fuse`]: the FUSE server (our own request loop over `/dev/fuse`);
//! - [`loopdev`]: loop devices with verified direct I/O;
//! - [`mount`]: probe, mkfs, mount, grow, check, trim;
//! - [`fsfreeze`]: `syncfs`, `FIFREEZE`, `FITHAW`;
//! - [`freeze_member`]: a hosted volume as a member of a group freeze;
//! - [`volume`]: [`AttachedVolume`], tying FUSE and loop together;
//! - [`localsock`]: sockets 0600 and directories 0700 whatever the umask, peer credentials;
//! - [`handover`]: passing a live connection's fds to a successor process;
//! - [`process`]: `PR_SET_IO_FLUSHER` and `mlockall` for a data-plane `main`;
//! - `sys`: the only `unsafe` code (ioctls), each block justified.

pub mod backend;
pub(crate) mod cmd;
pub mod engine_backend;
pub mod freeze_member;
pub mod fsfreeze;
pub mod fuse;
pub mod handover;
pub mod localsock;
pub mod loopdev;
pub mod mount;
pub mod mounttable;
pub mod process;
pub mod sized;
mod sys;
pub mod volume;

pub use backend::{BackendError, BlockBackend, FileBackend};
pub use cmd::CommandError;
pub use engine_backend::EngineBackend;
pub use sized::SizedBackend;
pub use volume::{AttachError, AttachedVolume};
