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
//!
//! Dependencies point one way: `handshake` and `codec` use `floe-engine`'s
//! types and `floe-proto`'s messages, and nothing else of this crate; the
//! stream (transport, sealing layer, reconnects) sits above them.

pub mod codec;
pub mod endpoint;
pub mod handshake;
pub mod link;
pub mod receiver;
pub mod sender;

/// An error and its causes on one line, for logs and refusals.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
