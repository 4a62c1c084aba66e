//! The codec of [`VolumeMeta`], format version 2 (version 1 had no resume
//! point). The retained points are an optional trailer: a record written
//! before they existed ends after `resume` and reads as retaining none.
//!
//! ```text
//! role u8 (0 primary, 1 replica) | generation.counter u64 | generation.site u64
//! incarnation u64 | last_sealed u64 | last_sealed_group u64 | committed u64 | committed_group u64
//! staged: tag u8 (0 none, 1 some) [local u64 | group u64 | n u64 | n × entry]
//!     entry: index u64 | seq.generation u64 | seq.incarnation u64 | seq.counter u64 | hash [u8; 32]
//! peer_incarnation u64
//! resync_candidates: tag u8 [n u64 | n × block u64]
//! resume: n u64 | n × (local u64 | block u64 | seq.generation u64 | seq.incarnation u64 | seq.counter u64)
//! [retained: n u64 | n × (local u64 | group u64 | undo u64)
//!  undo_captured: tag u8 [local u64]]
//! ```
//! All integers little endian; the record around it carries the version and
//! the checksum ([`super::record`]).

use floe_engine::{ManifestEntry, RetainedPoint, Role, RoleGeneration, SendSeq, StagedRecord, VolumeMeta};

use super::codec::{DecodeError, Reader, Writer};

/// Format version of the encoding below.
pub(crate) const META_VERSION: u32 = 2;

const ENTRY_BYTES: usize = 8 + 3 * 8 + 32;
const HELD_BYTES: usize = 5 * 8;
const FIXED_BYTES: u64 = 136 + 17;
const POINT_BYTES: u64 = 3 * 8;

/// The most retained points a replica keeps (K of a pairing is at most this).
pub const MAX_RETAINED: u64 = 64;

/// The largest encoding of a record for a volume of `blocks` blocks: a
/// manifest and a candidate list name each block at most once, the resume
/// point each block at most once in each of two epochs.
pub(crate) fn max_encoded_len(blocks: u64) -> u64 {
    FIXED_BYTES + MAX_RETAINED * POINT_BYTES + blocks.saturating_mul(ENTRY_BYTES as u64 + 8 + 2 * HELD_BYTES as u64)
}

pub(crate) fn encode(m: &VolumeMeta) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(match m.role {
        Role::Primary => 0,
        Role::Replica => 1,
    })
    .u64(m.generation.counter)
    .u64(m.generation.site)
    .u64(m.incarnation)
    .u64(m.last_sealed)
    .u64(m.last_sealed_group)
    .u64(m.committed)
    .u64(m.committed_group);
    match &m.staged {
        None => {
            w.u8(0);
        }
        Some(st) => {
            w.u8(1).u64(st.local).u64(st.group).count(st.manifest.len());
            for e in &st.manifest {
                w.u64(e.index)
                    .u64(e.seq.generation)
                    .u64(e.seq.incarnation)
                    .u64(e.seq.counter)
                    .bytes(&e.hash);
            }
        }
    }
    w.u64(m.peer_incarnation);
    match &m.resync_candidates {
        None => {
            w.u8(0);
        }
        Some(blocks) => {
            w.u8(1).count(blocks.len());
            for &b in blocks {
                w.u64(b);
            }
        }
    }
    w.count(m.resume.len());
    for &(local, b, seq) in &m.resume {
        w.u64(local)
            .u64(b)
            .u64(seq.generation)
            .u64(seq.incarnation)
            .u64(seq.counter);
    }
    w.count(m.retained.len());
    for p in &m.retained {
        w.u64(p.local).u64(p.group).u64(p.undo);
    }
    match m.undo_captured {
        None => {
            w.u8(0);
        }
        Some(local) => {
            w.u8(1).u64(local);
        }
    }
    w.finish()
}

pub(crate) fn decode(payload: &[u8]) -> Result<VolumeMeta, DecodeError> {
    let mut r = Reader::new(payload);
    let at = 0;
    let role = match r.u8()? {
        0 => Role::Primary,
        1 => Role::Replica,
        tag => return Err(DecodeError::BadTag { what: "role", tag, at }),
    };
    let generation = RoleGeneration {
        counter: r.u64()?,
        site: r.u64()?,
    };
    let incarnation = r.u64()?;
    let last_sealed = r.u64()?;
    let last_sealed_group = r.u64()?;
    let committed = r.u64()?;
    let committed_group = r.u64()?;
    let staged = if r.option("staged")? {
        let local = r.u64()?;
        let group = r.u64()?;
        let n = r.count("manifest entries", ENTRY_BYTES)?;
        let mut manifest = Vec::with_capacity(n);
        for _ in 0..n {
            manifest.push(ManifestEntry {
                index: r.u64()?,
                seq: SendSeq {
                    generation: r.u64()?,
                    incarnation: r.u64()?,
                    counter: r.u64()?,
                },
                hash: r.array()?,
            });
        }
        Some(StagedRecord { local, group, manifest })
    } else {
        None
    };
    let peer_incarnation = r.u64()?;
    let resync_candidates = if r.option("resync candidates")? {
        let n = r.count("resync candidates", 8)?;
        let mut blocks = Vec::with_capacity(n);
        for _ in 0..n {
            blocks.push(r.u64()?);
        }
        Some(blocks)
    } else {
        None
    };
    let n = r.count("resume point", HELD_BYTES)?;
    let mut resume = Vec::with_capacity(n);
    for _ in 0..n {
        resume.push((
            r.u64()?,
            r.u64()?,
            SendSeq {
                generation: r.u64()?,
                incarnation: r.u64()?,
                counter: r.u64()?,
            },
        ));
    }
    let mut retained = Vec::new();
    let mut undo_captured = None;
    if !r.at_end() {
        let n = r.count("retained points", POINT_BYTES as usize)?;
        for _ in 0..n {
            retained.push(RetainedPoint {
                local: r.u64()?,
                group: r.u64()?,
                undo: r.u64()?,
            });
        }
        if r.option("undo captured")? {
            undo_captured = Some(r.u64()?);
        }
    }
    r.finish()?;
    Ok(VolumeMeta {
        role,
        generation,
        incarnation,
        last_sealed,
        last_sealed_group,
        committed,
        committed_group,
        staged,
        peer_incarnation,
        resync_candidates,
        resume,
        retained,
        undo_captured,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn full(blocks: u64) -> VolumeMeta {
        let mut m = VolumeMeta::new(Role::Replica, RoleGeneration { counter: 3, site: 2 });
        m.incarnation = 7;
        m.last_sealed = 4;
        m.last_sealed_group = 40;
        m.committed = 3;
        m.committed_group = 30;
        m.peer_incarnation = 5;
        m.staged = Some(StagedRecord {
            local: 4,
            group: 40,
            manifest: (0..blocks)
                .map(|b| ManifestEntry {
                    index: b,
                    seq: SendSeq {
                        generation: u64::MAX,
                        incarnation: u64::MAX,
                        counter: u64::MAX,
                    },
                    hash: [b as u8; 32],
                })
                .collect(),
        });
        m.resync_candidates = Some((0..blocks).map(|b| u64::MAX - b).collect());
        let seq = SendSeq {
            generation: u64::MAX,
            incarnation: u64::MAX,
            counter: u64::MAX,
        };
        m.resume = (0..2 * blocks).map(|i| (u64::MAX - i % 2, i / 2, seq)).collect();
        m.retained = (0..MAX_RETAINED)
            .map(|i| RetainedPoint {
                local: u64::MAX - i,
                group: u64::MAX - i,
                undo: u64::MAX - i,
            })
            .collect();
        m.undo_captured = Some(u64::MAX);
        m
    }

    #[test]
    fn every_field_round_trips() {
        let m = full(5);
        assert_eq!(decode(&encode(&m)), Ok(m));
        let m = VolumeMeta::new(Role::Primary, RoleGeneration::default());
        assert_eq!(decode(&encode(&m)), Ok(m));
    }

    #[test]
    fn the_largest_record_fits_the_bound() {
        for blocks in [0, 1, 100] {
            assert!(encode(&full(blocks)).len() as u64 <= max_encoded_len(blocks));
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let m = full(3);
        let bytes = encode(&m);
        let mut without_points = m.clone();
        without_points.retained.clear();
        without_points.undo_captured = None;
        // The record as written before retained points existed: the one
        // prefix that decodes, as retaining none.
        let trailer = 8 + m.retained.len() * 24 + 9;
        for n in 0..bytes.len() {
            if n == bytes.len() - trailer {
                assert_eq!(decode(&bytes[..n]), Ok(without_points.clone()));
            } else {
                assert!(decode(&bytes[..n]).is_err(), "prefix of {n} bytes decoded");
            }
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(DecodeError::Trailing(1)));
    }

    fn arb_meta() -> impl Strategy<Value = VolumeMeta> {
        let entry = (any::<u64>(), any::<[u64; 3]>(), any::<[u8; 32]>()).prop_map(|(index, s, hash)| ManifestEntry {
            index,
            seq: SendSeq {
                generation: s[0],
                incarnation: s[1],
                counter: s[2],
            },
            hash,
        });
        let staged = proptest::option::of((any::<u64>(), any::<u64>(), proptest::collection::vec(entry, 0..8)))
            .prop_map(|o| o.map(|(local, group, manifest)| StagedRecord { local, group, manifest }));
        (
            any::<bool>(),
            any::<[u64; 9]>(),
            staged,
            proptest::option::of(proptest::collection::vec(any::<u64>(), 0..8)),
            proptest::collection::vec(any::<[u64; 5]>(), 0..8),
            proptest::collection::vec(any::<[u64; 3]>(), 0..4),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(
                |(primary, n, staged, resync_candidates, resume, points, undo_captured)| VolumeMeta {
                    role: if primary { Role::Primary } else { Role::Replica },
                    generation: RoleGeneration {
                        counter: n[0],
                        site: n[1],
                    },
                    incarnation: n[2],
                    last_sealed: n[3],
                    last_sealed_group: n[4],
                    committed: n[5],
                    committed_group: n[6],
                    staged,
                    peer_incarnation: n[7],
                    resync_candidates,
                    resume: resume
                        .into_iter()
                        .map(|v| {
                            let seq = SendSeq {
                                generation: v[2],
                                incarnation: v[3],
                                counter: v[4],
                            };
                            (v[0], v[1], seq)
                        })
                        .collect(),
                    retained: points
                        .into_iter()
                        .map(|p| RetainedPoint {
                            local: p[0],
                            group: p[1],
                            undo: p[2],
                        })
                        .collect(),
                    undo_captured,
                },
            )
    }

    proptest! {
        #[test]
        fn any_record_round_trips(m in arb_meta()) {
            prop_assert_eq!(decode(&encode(&m)), Ok(m));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn a_flipped_byte_never_panics(m in arb_meta(), at in any::<usize>(), x in 1u8..) {
            let mut bytes = encode(&m);
            let i = at % bytes.len();
            bytes[i] ^= x;
            let _ = decode(&bytes);
        }
    }
}
