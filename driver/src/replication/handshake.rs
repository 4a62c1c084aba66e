//! The first exchange of a replication stream.
//!
//! The primary opens with what it believes the pairing is ([`Opening`] →
//! `Open`); the DR compares it field by field with its own record
//! ([`check_open`]) and answers `Accept` or a `Refusal` that names the first
//! field that differs with both values ([`Mismatch`]). The role generation is
//! not checked here: an older one is the engine's to fence (its `Fenced`
//! reply tells the old primary to stop), a newer one the engine's to adopt.

use floe_engine::{Geometry, Mode, RoleGeneration};
use floe_proto::replication::{self as pb, frame::Kind};

use super::codec::{generation_from_wire, generation_to_wire};

/// Version of the wire protocol this build speaks.
pub const WIRE_VERSION: u32 = 1;
/// Feature bits this build understands (none are defined yet). A peer that
/// sets another bit relies on something this build cannot do.
pub const KNOWN_FEATURES: u64 = 0;
/// Bytes of a session salt.
pub const SALT_BYTES: usize = 32;
/// Longest peer value quoted back in a refusal.
const MAX_QUOTED: usize = 160;

/// One paired volume, as either site records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pairing {
    /// Replication group name.
    pub group: String,
    /// Volume id, the same on both sites.
    pub volume: String,
    /// Block size and count.
    pub geometry: Geometry,
    /// Replication mode.
    pub mode: Mode,
}

/// What a primary sends to open a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opening {
    /// The pairing as the primary records it.
    pub pairing: Pairing,
    /// The primary's role generation.
    pub generation: RoleGeneration,
    /// The primary's incarnation.
    pub incarnation: u64,
    /// Fresh random bytes for this stream.
    pub salt: [u8; SALT_BYTES],
}

/// A field of `Open` that differs from the DR's record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} differs: this site has {ours}, the peer sent {theirs}")]
pub struct Mismatch {
    /// The field.
    pub field: &'static str,
    /// This site's value.
    pub ours: String,
    /// The peer's value (quoted, cut to a bounded length).
    pub theirs: String,
}

impl Mismatch {
    /// The refusal frame that tells the peer.
    pub fn refusal(&self) -> pb::Frame {
        pb::Frame {
            kind: Some(Kind::Refusal(pb::Refusal {
                code: pb::refusal::Code::Mismatch.into(),
                field: self.field.to_owned(),
                ours: self.ours.clone(),
                theirs: self.theirs.clone(),
                message: self.to_string(),
            })),
        }
    }
}

fn mode_to_wire(mode: Mode) -> pb::Mode {
    match mode {
        Mode::Continuous => pb::Mode::Continuous,
        Mode::Log => pb::Mode::Log,
        Mode::Interval => pb::Mode::Interval,
    }
}

fn mode_name(wire: i32) -> String {
    match pb::Mode::try_from(wire) {
        Ok(pb::Mode::Continuous) => "continuous".into(),
        Ok(pb::Mode::Log) => "log".into(),
        Ok(pb::Mode::Interval) => "interval".into(),
        Ok(pb::Mode::Unspecified) => "unspecified".into(),
        Err(_) => format!("unknown mode {wire}"),
    }
}

/// A peer string quoted for a message: escaped, at most [`MAX_QUOTED`] characters.
fn quoted(s: &str) -> String {
    let q = format!("{s:?}");
    if q.chars().count() <= MAX_QUOTED {
        return q;
    }
    let cut: String = q.chars().take(MAX_QUOTED).collect();
    format!("{cut}… ({} bytes)", s.len())
}

impl Opening {
    /// The `Open` frame.
    pub fn frame(&self) -> pb::Frame {
        let p = &self.pairing;
        pb::Frame {
            kind: Some(Kind::Open(pb::Open {
                wire_protocol_version: WIRE_VERSION,
                feature_bits: KNOWN_FEATURES,
                group: p.group.clone(),
                volume: p.volume.clone(),
                block_size: p.geometry.block_size() as u32,
                block_count: p.geometry.blocks(),
                mode: mode_to_wire(p.mode).into(),
                generation: Some(generation_to_wire(self.generation)),
                session_salt: self.salt.to_vec(),
                incarnation: self.incarnation,
            })),
        }
    }
}

/// What the DR learns from an `Open` that matches its record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The primary's role generation.
    pub generation: RoleGeneration,
    /// The primary's incarnation.
    pub incarnation: u64,
    /// The stream's salt.
    pub salt: [u8; SALT_BYTES],
}

/// Compares the primary's `Open` with the DR's record of the pairing.
pub fn check_open(ours: &Pairing, open: &pb::Open) -> Result<Opened, Mismatch> {
    let differ = |field, ours: String, theirs: String| Err(Mismatch { field, ours, theirs });
    if open.wire_protocol_version != WIRE_VERSION {
        return differ(
            "wire_protocol_version",
            WIRE_VERSION.to_string(),
            open.wire_protocol_version.to_string(),
        );
    }
    if open.feature_bits & !KNOWN_FEATURES != 0 {
        return differ(
            "feature_bits",
            format!("{KNOWN_FEATURES:#x}"),
            format!("{:#x}", open.feature_bits),
        );
    }
    if open.group != ours.group {
        return differ("group", quoted(&ours.group), quoted(&open.group));
    }
    if open.volume != ours.volume {
        return differ("volume", quoted(&ours.volume), quoted(&open.volume));
    }
    if u64::from(open.block_size) != ours.geometry.block_size() as u64 {
        return differ(
            "block_size",
            ours.geometry.block_size().to_string(),
            open.block_size.to_string(),
        );
    }
    if open.block_count != ours.geometry.blocks() {
        return differ(
            "block_count",
            ours.geometry.blocks().to_string(),
            open.block_count.to_string(),
        );
    }
    if open.mode != i32::from(mode_to_wire(ours.mode)) {
        return differ("mode", ours.mode.name().to_owned(), mode_name(open.mode));
    }
    let Some(generation) = open.generation else {
        return differ("generation", "a role generation".into(), "none".into());
    };
    let Ok(salt) = <[u8; SALT_BYTES]>::try_from(open.session_salt.as_slice()) else {
        return differ(
            "session_salt",
            format!("{SALT_BYTES} bytes"),
            format!("{} bytes", open.session_salt.len()),
        );
    };
    Ok(Opened {
        generation: generation_from_wire(generation),
        incarnation: open.incarnation,
        salt,
    })
}

/// The DR's `Accept`.
pub fn accept(dr_incarnation: u64) -> pb::Frame {
    pb::Frame {
        kind: Some(Kind::Accept(pb::Accept {
            wire_protocol_version: WIRE_VERSION,
            feature_bits: KNOWN_FEATURES,
            dr_incarnation,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairing() -> Pairing {
        Pairing {
            group: "orders".into(),
            volume: "pvc-1".into(),
            geometry: Geometry::new(4096, 1 << 18, 1024).expect("a valid geometry"),
            mode: Mode::Log,
        }
    }

    fn opening() -> Opening {
        Opening {
            pairing: pairing(),
            generation: RoleGeneration { counter: 4, site: 1 },
            incarnation: 9,
            salt: [7; SALT_BYTES],
        }
    }

    fn open_of(frame: pb::Frame) -> pb::Open {
        match frame.kind {
            Some(Kind::Open(o)) => o,
            other => panic!("not an Open: {other:?}"),
        }
    }

    #[test]
    fn a_matching_open_is_accepted_with_what_the_primary_said() {
        let got = check_open(&pairing(), &open_of(opening().frame()));
        assert_eq!(
            got,
            Ok(Opened {
                generation: RoleGeneration { counter: 4, site: 1 },
                incarnation: 9,
                salt: [7; SALT_BYTES],
            })
        );
    }

    #[test]
    fn each_differing_field_is_named_with_both_values() {
        let base = open_of(opening().frame());
        type Edit = fn(&mut pb::Open);
        let cases: [(Edit, &str, &str, &str); 9] = [
            (|o| o.wire_protocol_version = 2, "wire_protocol_version", "1", "2"),
            (|o| o.feature_bits = 0x10, "feature_bits", "0x0", "0x10"),
            (|o| o.group = "billing".into(), "group", "\"orders\"", "\"billing\""),
            (|o| o.volume = "../etc".into(), "volume", "\"pvc-1\"", "\"../etc\""),
            (|o| o.block_size = 8192, "block_size", "4096", "8192"),
            (|o| o.block_count = 1, "block_count", "262144", "1"),
            (|o| o.mode = 3, "mode", "log", "interval"),
            (|o| o.generation = None, "generation", "a role generation", "none"),
            (|o| o.session_salt = vec![1; 5], "session_salt", "32 bytes", "5 bytes"),
        ];
        for (edit, field, ours, theirs) in cases {
            let mut open = base.clone();
            edit(&mut open);
            let m = check_open(&pairing(), &open).expect_err("a differing field is refused");
            assert_eq!((m.field, m.ours.as_str(), m.theirs.as_str()), (field, ours, theirs));
            let Some(Kind::Refusal(r)) = m.refusal().kind else {
                panic!("a refusal frame")
            };
            assert_eq!(r.code, i32::from(pb::refusal::Code::Mismatch));
            assert!(r.message.contains(field) && r.message.contains(theirs), "{}", r.message);
        }
    }

    #[test]
    fn a_hostile_value_is_quoted_escaped_and_cut() {
        let mut open = open_of(opening().frame());
        open.volume = format!("\u{1b}[2J{}", "x".repeat(100_000));
        open.mode = 77;
        let m = check_open(&pairing(), &open).expect_err("refused");
        assert!(m.theirs.len() < 400, "{} bytes quoted", m.theirs.len());
        assert!(m.theirs.starts_with("\"\\u{1b}[2J"), "{}", m.theirs);
        assert!(m.theirs.ends_with("(100004 bytes)"), "{}", m.theirs);
        open.volume = "pvc-1".into();
        let m = check_open(&pairing(), &open).expect_err("refused");
        assert_eq!(m.theirs, "unknown mode 77");
    }
}
