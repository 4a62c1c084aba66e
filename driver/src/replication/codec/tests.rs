//! The codec against its two promises: whatever the engine sends arrives
//! unchanged (split into parts within the limits and joined again), and
//! whatever a hostile peer sends is either refused with a reason or yields
//! frames inside the volume's geometry — never a panic, never an allocation
//! sized by the peer.

use floe_engine::{
    Geometry, ManifestEntry, Payload, Reply, RoleGeneration, SendSeq, ShippedBlock, ToPrimary, ToReplica,
};
use floe_proto::replication::{self as pb, frame::Kind};
use proptest::prelude::*;
use prost::Message;

use super::*;

const BS: usize = 4096;

fn geometry(blocks: u64) -> Geometry {
    Geometry::new(BS, blocks, 16).expect("a valid geometry")
}

fn gen(counter: u64) -> RoleGeneration {
    RoleGeneration { counter, site: 2 }
}

fn seq(counter: u64) -> SendSeq {
    SendSeq {
        generation: 3,
        incarnation: 7,
        counter,
    }
}

fn full_seq(generation: u64, incarnation: u64, counter: u64) -> SendSeq {
    SendSeq {
        generation,
        incarnation,
        counter,
    }
}

/// Sends `msg` through the encoder and a fresh inbox; every wire frame is
/// checked against the size limits on the way.
fn through_to_replica(msg: ToReplica, g: Geometry) -> Vec<ToReplica> {
    let mut inbox = ReplicaInbox::new(g);
    let mut out = Vec::new();
    for f in encode_to_replica(msg, g.block_size()) {
        assert!(f.encoded_len() <= MAX_FRAME_BYTES, "frame of {} bytes", f.encoded_len());
        if let Some(Kind::EpochSealed(_) | Kind::ResyncHashRequest(_)) = &f.kind {
            assert!(f.encoded_len() <= MAX_PART_BYTES, "part of {} bytes", f.encoded_len());
        }
        out.extend(inbox.push(f).expect("the codec accepts what it encoded"));
    }
    out
}

fn through_to_primary(msg: ToPrimary, g: Geometry) -> Vec<ToPrimary> {
    let mut inbox = PrimaryInbox::new(g);
    let mut out = Vec::new();
    for f in encode_to_primary(msg) {
        assert!(f.encoded_len() <= MAX_PART_BYTES, "part of {} bytes", f.encoded_len());
        out.extend(inbox.push(f).expect("the codec accepts what it encoded"));
    }
    out
}

/// Block versions with their bytes, whatever the batching.
fn versions(frames: &[ToReplica], bs: usize) -> Vec<(u64, SendSeq, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    for f in frames {
        let ToReplica::Blocks { blocks, data, .. } = f else {
            panic!("not a batch: {f:?}")
        };
        for b in blocks {
            let bytes = match b.payload {
                Payload::Zero => None,
                Payload::Data { at } => Some(data[at as usize..at as usize + bs].to_vec()),
            };
            out.push((b.index, b.seq, bytes));
        }
    }
    out
}

/// An engine batch as `ship.rs` makes one: sequences rising, data packed.
fn batch(spec: &[(u64, bool)], bs: usize) -> ToReplica {
    let mut data = Vec::new();
    let blocks = spec
        .iter()
        .enumerate()
        .map(|(i, &(index, zero))| {
            let payload = if zero {
                Payload::Zero
            } else {
                let at = data.len() as u32;
                data.extend((0..bs).map(|k| (index as usize + k + i) as u8 | 1));
                Payload::Data { at }
            };
            ShippedBlock {
                index,
                seq: seq(100 + i as u64),
                payload,
            }
        })
        .collect();
    ToReplica::Blocks {
        generation: gen(3),
        session: 4,
        local: 9,
        blocks,
        data,
    }
}

fn manifest(n: u64, blocks: u64) -> Vec<ManifestEntry> {
    (0..n)
        .map(|i| ManifestEntry {
            index: (i * 7919) % blocks,
            seq: seq(i),
            hash: [(i % 251) as u8; 32],
        })
        .collect()
}

#[test]
fn every_small_frame_arrives_unchanged() {
    let g = geometry(1 << 20);
    let to_replica = [
        ToReplica::Hello {
            generation: gen(1),
            incarnation: 2,
            session: 3,
        },
        ToReplica::EpochAborted {
            generation: gen(1),
            incarnation: 2,
            local: None,
            group: 5,
        },
        ToReplica::EpochAborted {
            generation: gen(1),
            incarnation: 2,
            local: Some(4),
            group: 5,
        },
        ToReplica::Sealed {
            generation: gen(1),
            incarnation: 2,
            session: 3,
            local: 4,
            group: 5,
            manifest: Vec::new(),
            covers_resync: true,
        },
        ToReplica::ResyncHashRequest {
            generation: gen(1),
            blocks: vec![0, 5, (1 << 20) - 1],
        },
    ];
    for msg in to_replica {
        assert_eq!(through_to_replica(msg.clone(), g), vec![msg]);
    }
    let replies = [
        Reply::Welcome {
            for_incarnation: 1,
            for_session: 2,
            incarnation: 3,
            committed: 4,
            committed_group: 5,
            staged: Some((6, 7)),
            resync_candidates: None,
            held: Vec::new(),
        },
        Reply::Welcome {
            for_incarnation: 1,
            for_session: 2,
            incarnation: 3,
            committed: 4,
            committed_group: 5,
            staged: None,
            resync_candidates: Some(vec![3, 9]),
            held: vec![
                (5, 0, full_seq(1, 2, 3)),
                (5, 7, full_seq(1, 2, 4)),
                (6, 0, full_seq(1, 2, 9)),
            ],
        },
        Reply::Welcome {
            for_incarnation: 1,
            for_session: 2,
            incarnation: 3,
            committed: 4,
            committed_group: 5,
            staged: None,
            resync_candidates: Some(Vec::new()),
            held: Vec::new(),
        },
        Reply::StagedAck { local: 9 },
        Reply::Consistent { local: 9, group: 10 },
        Reply::Aborted { group: 11 },
        Reply::Fenced { generation: gen(12) },
        Reply::ResyncHashes {
            entries: vec![(1, [1; 32]), (2, [2; 32])],
        },
    ];
    for reply in replies {
        let msg = ToPrimary {
            generation: gen(8),
            reply,
        };
        assert_eq!(through_to_primary(msg.clone(), g), vec![msg]);
    }
}

#[test]
fn long_lists_travel_in_parts_under_one_mebibyte_and_join_unchanged() {
    let blocks = 1 << 28; // 1 TiB of 4 KiB blocks
    let g = geometry(blocks);
    let sealed = ToReplica::Sealed {
        generation: gen(u64::MAX),
        incarnation: u64::MAX,
        session: u64::MAX,
        local: u64::MAX,
        group: u64::MAX,
        manifest: (0..30_000)
            .map(|i| ManifestEntry {
                index: blocks - 1 - i,
                seq: SendSeq {
                    generation: u64::MAX,
                    incarnation: u64::MAX,
                    counter: u64::MAX - i,
                },
                hash: [0xFF; 32],
            })
            .collect(),
        covers_resync: false,
    };
    assert_eq!(encode_to_replica(sealed.clone(), BS).len(), 3);
    assert_eq!(through_to_replica(sealed.clone(), g), vec![sealed]);

    let request = ToReplica::ResyncHashRequest {
        generation: gen(1),
        blocks: (0..250_000).map(|i| blocks - 1 - i).collect(),
    };
    assert_eq!(encode_to_replica(request.clone(), BS).len(), 3);
    assert_eq!(through_to_replica(request.clone(), g), vec![request]);

    let welcome = ToPrimary {
        generation: gen(1),
        reply: Reply::Welcome {
            for_incarnation: 1,
            for_session: 2,
            incarnation: 3,
            committed: 4,
            committed_group: 5,
            staged: None,
            resync_candidates: Some((0..250_000).map(|i| blocks - 1 - i).collect()),
            held: (0..50_000)
                .map(|i| (7, i, full_seq(u64::MAX, u64::MAX, u64::MAX - i)))
                .collect(),
        },
    };
    let parts = encode_to_primary(welcome.clone());
    assert_eq!(parts.len(), 6);
    assert!(parts.iter().all(|f| f.encoded_len() < MAX_PART_BYTES));
    assert_eq!(through_to_primary(welcome.clone(), g), vec![welcome]);

    let hashes = ToPrimary {
        generation: gen(1),
        reply: Reply::ResyncHashes {
            entries: (0..50_000).map(|i| (blocks - 1 - i, [0xEE; 32])).collect(),
        },
    };
    assert_eq!(encode_to_primary(hashes.clone()).len(), 3);
    assert_eq!(through_to_primary(hashes.clone(), g), vec![hashes]);
}

#[test]
fn a_large_batch_splits_within_the_limits_and_runs_of_zeroes_become_ranges() {
    let g = geometry(1 << 20);
    // 600 data blocks (2.3 MiB) and a run of 5,000 zero blocks.
    let mut spec: Vec<(u64, bool)> = (0..600).map(|i| (i * 3, false)).collect();
    spec.extend((0..5_000).map(|i| (10_000 + i, true)));
    let msg = batch(&spec, BS);
    let wire = encode_to_replica(msg.clone(), BS);
    assert_eq!(wire.len(), 3, "600 blocks of 4 KiB need three batches of at most 1 MiB");
    let ranges: usize = wire
        .iter()
        .map(|f| match &f.kind {
            Some(Kind::BlockBatch(b)) => b.zero_ranges.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(ranges, 1, "consecutive zero blocks travel as one range");
    let got = through_to_replica(msg.clone(), g);
    assert_eq!(versions(&got, BS), versions(&[msg], BS));
}

#[test]
fn a_block_of_one_mebibyte_travels_alone() {
    let bs = 1 << 20;
    let g = Geometry::new(bs, 64, 1).expect("a valid geometry");
    let msg = batch(&[(1, false), (2, false), (3, true)], bs);
    let wire = encode_to_replica(msg.clone(), bs);
    assert_eq!(wire.len(), 2);
    let mut inbox = ReplicaInbox::new(g);
    let mut got = Vec::new();
    for f in wire {
        assert!(f.encoded_len() <= MAX_FRAME_BYTES);
        got.extend(inbox.push(f).expect("accepted"));
    }
    assert_eq!(versions(&got, bs), versions(&[msg], bs));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_engine_batch_arrives_with_every_version_and_its_bytes(
        spec in proptest::collection::vec((0u64..512, any::<bool>()), 1..700),
    ) {
        let g = geometry(512);
        let msg = batch(&spec, BS);
        let got = through_to_replica(msg.clone(), g);
        prop_assert_eq!(versions(&got, BS), versions(&[msg], BS));
    }

    #[test]
    fn any_manifest_arrives_unchanged(n in 0u64..40_000, blocks in 1u64..1 << 30) {
        let g = geometry(blocks);
        let msg = ToReplica::Sealed {
            generation: gen(1),
            incarnation: 2,
            session: 3,
            local: 4,
            group: 5,
            manifest: manifest(n, blocks),
            covers_resync: n % 2 == 0,
        };
        prop_assert_eq!(through_to_replica(msg.clone(), g), vec![msg]);
    }

    /// Random bytes that happen to parse as a frame, and valid frames with
    /// bytes flipped: the inboxes never panic, and whatever they accept lies
    /// inside the geometry.
    #[test]
    fn hostile_bytes_never_panic_and_never_escape_the_geometry(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        noise in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let g = geometry(4096);
        let mut wire: Vec<Vec<u8>> = encode_to_replica(batch(&[(1, false), (2, true), (3, true), (4, false)], BS), BS)
            .into_iter()
            .chain(encode_to_replica(
                ToReplica::Sealed {
                    generation: gen(1),
                    incarnation: 2,
                    session: 3,
                    local: 4,
                    group: 5,
                    manifest: manifest(3, 4096),
                    covers_resync: false,
                },
                BS,
            ))
            .map(|f| f.encode_to_vec())
            .collect();
        wire.push(noise);
        for bytes in &mut wire {
            for (at, x) in &flips {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] ^= x;
                }
            }
        }
        let mut to_replica = ReplicaInbox::new(g);
        let mut to_primary = PrimaryInbox::new(g);
        for bytes in wire {
            let Ok(frame) = pb::Frame::decode(bytes.as_slice()) else { continue };
            if let Ok(Some(ToReplica::Blocks { blocks, data, .. })) = to_replica.push(frame.clone()) {
                for b in &blocks {
                    prop_assert!(b.index < 4096);
                    if let Payload::Data { at } = b.payload {
                        prop_assert!(at as usize + BS <= data.len());
                    }
                }
            }
            if let Ok(Some(ToPrimary { reply: Reply::ResyncHashes { entries }, .. })) = to_primary.push(frame) {
                prop_assert!(entries.iter().all(|(b, _)| *b < 4096));
            }
        }
    }
}

fn push_one(inbox: &mut ReplicaInbox, kind: Kind) -> Result<Option<ToReplica>, Malformed> {
    inbox.push(pb::Frame { kind: Some(kind) })
}

fn wire_batch(blocks: Vec<pb::Block>, zero_ranges: Vec<pb::ZeroRange>, data: Vec<u8>) -> Kind {
    Kind::BlockBatch(pb::BlockBatch {
        generation: Some(pb::RoleGeneration { counter: 1, site_id: 1 }),
        session: 1,
        local_epoch: 1,
        blocks,
        zero_ranges,
        data,
    })
}

fn wire_seq() -> Option<pb::SendSeq> {
    Some(pb::SendSeq {
        generation_counter: 1,
        incarnation: 1,
        counter: 1,
    })
}

#[test]
fn hostile_batches_are_refused_with_the_field_named() {
    let g = geometry(100);
    let mut inbox = ReplicaInbox::new(g);
    let block = |index, zero| pb::Block {
        index,
        seq: wire_seq(),
        zero,
    };
    let range = |first_block, count| pb::ZeroRange {
        first_block,
        count,
        seq: wire_seq(),
    };
    let cases: Vec<(Kind, Malformed)> = vec![
        (
            wire_batch(vec![block(100, true)], vec![], vec![]),
            Malformed::OutOfRange {
                field: "block_batch.blocks.index",
                index: 100,
                blocks: 100,
            },
        ),
        (
            wire_batch(vec![block(1, false)], vec![], vec![0; BS - 1]),
            Malformed::DataLength {
                got: BS - 1,
                data_blocks: 1,
                block_size: BS,
            },
        ),
        (
            wire_batch(vec![block(1, true)], vec![], vec![0; BS]),
            Malformed::DataLength {
                got: BS,
                data_blocks: 0,
                block_size: BS,
            },
        ),
        (
            wire_batch(vec![], vec![range(u64::MAX - 1, 5)], vec![]),
            Malformed::ZeroRange {
                first: u64::MAX - 1,
                count: 5,
                blocks: 100,
            },
        ),
        (
            wire_batch(vec![], vec![range(0, 0)], vec![]),
            Malformed::ZeroRange {
                first: 0,
                count: 0,
                blocks: 100,
            },
        ),
        (wire_batch(vec![], vec![], vec![]), Malformed::EmptyBatch),
        (
            wire_batch(
                vec![pb::Block {
                    index: 1,
                    seq: None,
                    zero: true,
                }],
                vec![],
                vec![],
            ),
            Malformed::Missing("block_batch.blocks.seq"),
        ),
        (
            Kind::BlockBatch(pb::BlockBatch {
                generation: None,
                ..Default::default()
            }),
            Malformed::Missing("block_batch.generation"),
        ),
    ];
    for (kind, want) in cases {
        assert_eq!(push_one(&mut inbox, kind.clone()), Err(want), "{kind:?}");
    }
    // A range of 2^40 blocks is refused by count, before any allocation.
    let big = geometry(1 << 41);
    let mut inbox = ReplicaInbox::new(big);
    assert_eq!(
        push_one(&mut inbox, wire_batch(vec![], vec![range(0, 1 << 40)], vec![])),
        Err(Malformed::TooMany {
            what: "block_batch versions",
            got: 1 << 40,
            limit: MAX_BATCH_BLOCKS as u64,
        })
    );
    // Ten thousand records are refused by count.
    let many = (0..10_000).map(|i| block(i % 100, true)).collect();
    assert!(matches!(
        push_one(&mut ReplicaInbox::new(g), wire_batch(many, vec![], vec![])),
        Err(Malformed::TooMany { .. })
    ));
}

#[test]
fn a_tampered_or_mixed_up_seal_is_refused() {
    let g = geometry(1 << 20);
    let sealed = |n| ToReplica::Sealed {
        generation: gen(1),
        incarnation: 2,
        session: 3,
        local: 4,
        group: 5,
        manifest: manifest(n, 1 << 20),
        covers_resync: false,
    };
    let parts = encode_to_replica(sealed(20_000), BS);
    assert_eq!(parts.len(), 2);
    let as_seal = |f: &pb::Frame| match &f.kind {
        Some(Kind::EpochSealed(s)) => s.clone(),
        other => panic!("not a seal: {other:?}"),
    };

    // A hash changed in flight: the digest no longer matches.
    let mut last = as_seal(&parts[1]);
    last.manifest[0].hash[0] ^= 1;
    let mut inbox = ReplicaInbox::new(g);
    assert_eq!(inbox.push(parts[0].clone()), Ok(None));
    assert_eq!(
        push_one(&mut inbox, Kind::EpochSealed(last)),
        Err(Malformed::ManifestDigest)
    );

    // A part dropped: the length no longer matches.
    let mut inbox = ReplicaInbox::new(g);
    assert_eq!(
        inbox.push(parts[1].clone()),
        Err(Malformed::ManifestLength {
            declared: 20_000,
            got: 8_000,
        })
    );

    // A batch between two parts.
    let mut inbox = ReplicaInbox::new(g);
    assert_eq!(inbox.push(parts[0].clone()), Ok(None));
    let batch = encode_to_replica(batch(&[(1, true)], BS), BS).remove(0);
    assert_eq!(
        inbox.push(batch),
        Err(Malformed::Interleaved {
            pending: "epoch_sealed",
            got: "block_batch",
        })
    );

    // The second part claims another epoch.
    let mut other = as_seal(&parts[1]);
    other.local_epoch = 99;
    let mut inbox = ReplicaInbox::new(g);
    assert_eq!(inbox.push(parts[0].clone()), Ok(None));
    assert_eq!(
        push_one(&mut inbox, Kind::EpochSealed(other)),
        Err(Malformed::PartsDisagree("epoch_sealed"))
    );

    // A short hash.
    let mut short = as_seal(&encode_to_replica(sealed(1), BS)[0]);
    short.manifest[0].hash.pop();
    assert_eq!(
        push_one(&mut ReplicaInbox::new(g), Kind::EpochSealed(short)),
        Err(Malformed::HashLength {
            field: "epoch_sealed.manifest.hash",
            got: 31,
        })
    );

    // More parts than the volume has blocks.
    let tiny = geometry(10);
    let mut inbox = ReplicaInbox::new(tiny);
    let mut part = as_seal(&encode_to_replica(sealed(0), BS)[0]);
    part.more = true;
    part.manifest = (0..10)
        .map(|i| pb::ManifestEntry {
            index: i,
            seq: wire_seq(),
            hash: vec![0; 32],
        })
        .collect();
    assert_eq!(push_one(&mut inbox, Kind::EpochSealed(part.clone())), Ok(None));
    assert_eq!(
        push_one(&mut inbox, Kind::EpochSealed(part)),
        Err(Malformed::TooMany {
            what: "epoch_sealed",
            got: 20,
            limit: 10,
        })
    );
}

#[test]
fn frames_of_the_wrong_direction_or_phase_are_refused() {
    let g = geometry(10);
    let mut to_replica = ReplicaInbox::new(g);
    let mut to_primary = PrimaryInbox::new(g);
    assert_eq!(to_replica.push(pb::Frame { kind: None }), Err(Malformed::Empty));
    for kind in [
        Kind::Open(pb::Open::default()),
        Kind::Accept(pb::Accept::default()),
        Kind::StagedAck(pb::StagedAck::default()),
    ] {
        assert!(matches!(
            to_replica.push(pb::Frame { kind: Some(kind) }),
            Err(Malformed::Unexpected(_))
        ));
    }
    for kind in [
        Kind::Hello(pb::Hello::default()),
        Kind::BlockBatch(pb::BlockBatch::default()),
    ] {
        assert!(matches!(
            to_primary.push(pb::Frame { kind: Some(kind) }),
            Err(Malformed::Unexpected(_))
        ));
    }
    // Candidates without the flag that says the list is meant.
    let welcome = pb::Welcome {
        generation: Some(pb::RoleGeneration::default()),
        resync_candidates: vec![1],
        ..Default::default()
    };
    assert!(matches!(
        to_primary.push(pb::Frame {
            kind: Some(Kind::Welcome(welcome))
        }),
        Err(Malformed::Unexpected(_))
    ));
    // A resume point out of order, or naming a block past the end.
    let held = |index| pb::HeldVersion {
        local_epoch: 3,
        index,
        seq: Some(pb::SendSeq::default()),
    };
    for (list, refusal) in [
        (vec![held(2), held(1)], Malformed::Unordered("welcome.held")),
        (vec![held(2), held(2)], Malformed::Unordered("welcome.held")),
    ] {
        let mut inbox = PrimaryInbox::new(geometry(16));
        let welcome = pb::Welcome {
            generation: Some(pb::RoleGeneration::default()),
            held: list,
            ..Default::default()
        };
        assert_eq!(
            inbox.push(pb::Frame {
                kind: Some(Kind::Welcome(welcome))
            }),
            Err(refusal)
        );
    }
    let mut inbox = PrimaryInbox::new(geometry(16));
    let welcome = pb::Welcome {
        generation: Some(pb::RoleGeneration::default()),
        held: vec![held(16)],
        ..Default::default()
    };
    assert!(matches!(
        inbox.push(pb::Frame {
            kind: Some(Kind::Welcome(welcome))
        }),
        Err(Malformed::OutOfRange { .. })
    ));
    // A fence without the newer generation.
    assert_eq!(
        to_primary.push(pb::Frame {
            kind: Some(Kind::Fenced(pb::Fenced {
                generation: Some(pb::RoleGeneration::default()),
                newer: None,
            }))
        }),
        Err(Malformed::Missing("fenced.newer"))
    );
}
