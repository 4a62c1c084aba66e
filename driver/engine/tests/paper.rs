//! Directed scenarios, one per patent step or invariant they prove, read in
//! order like the paper. The random schedules of `model.rs` cover the
//! interleavings; these pin the behaviours down by name.

mod sim;

use floe_engine::{
    ClosingState, Coordinator, EngineError, Geometry, Mode, Payload, Primary, PrimaryEvent, Replica, Reply,
    RoleGeneration, ToPrimary, ToReplica,
};
use sim::store::{SimLog, SimStore};

const BS: usize = 16;
const GEN1: RoleGeneration = RoleGeneration { counter: 1, site: 1 };

fn geo() -> Geometry {
    Geometry::new(BS, 16, 4).expect("geometry")
}

fn block(byte: u8) -> Vec<u8> {
    vec![byte; BS]
}

/// A replication group of `n` members over a lossless, in-order link, with
/// the frames in flight visible to the test.
struct Group {
    p: Vec<Primary<SimStore>>,
    r: Vec<Replica<SimStore>>,
    c: Coordinator<SimLog>,
    /// Frames sent and not yet delivered, per member.
    wire: Vec<Vec<ToReplica>>,
}

impl Group {
    fn new(n: usize, mode: Mode) -> Self {
        let p = (0..n)
            .map(|_| Primary::create(SimStore::new(BS), geo(), mode, GEN1).expect("primary"))
            .collect();
        let r = (0..n as u32)
            .map(|m| Replica::create(SimStore::new(BS), geo(), m, GEN1).expect("replica"))
            .collect();
        let c = Coordinator::open(SimLog::default(), n as u32).expect("coordinator");
        let mut g = Group {
            p,
            r,
            c,
            wire: vec![Vec::new(); n],
        };
        for m in 0..n {
            let hello = g.p[m].connect();
            g.deliver(m, hello);
        }
        g
    }

    /// Deliver one frame to member `m`'s replica and everything it causes.
    fn deliver(&mut self, m: usize, f: ToReplica) {
        self.r[m].on_frame(f).expect("replica accepts");
        self.settle_dr();
    }

    fn settle_dr(&mut self) {
        loop {
            let mut quiet = true;
            for m in 0..self.r.len() {
                for f in self.r[m].take_to_primary() {
                    self.p[m].on_frame(f).expect("primary accepts");
                    quiet = false;
                }
                for msg in self.r[m].take_to_coordinator() {
                    self.c.on_message(msg).expect("coordinator");
                    quiet = false;
                }
            }
            for (m, d) in self.c.take_out() {
                self.r[m as usize].on_coordinator(d).expect("replica applies decision");
                quiet = false;
            }
            if quiet {
                return;
            }
        }
    }

    /// Let member `m` send everything it has into the wire.
    fn send_all(&mut self, m: usize) {
        while let Some(f) = self.p[m].poll_send(64).expect("send") {
            self.wire[m].push(f);
        }
    }

    fn deliver_all(&mut self, m: usize) {
        for f in std::mem::take(&mut self.wire[m]) {
            self.deliver(m, f);
        }
    }

    fn sync(&mut self, m: usize) {
        loop {
            self.send_all(m);
            if self.wire[m].is_empty() {
                return;
            }
            self.deliver_all(m);
        }
    }

    fn freeze(&mut self, group: u64) {
        for p in &mut self.p {
            p.flush().expect("syncfs");
            p.freeze(group).expect("freeze");
        }
    }

    fn dr_block(&self, m: usize, b: u64) -> Vec<u8> {
        self.r[m].store().image_bytes(16)[b as usize * BS..(b as usize + 1) * BS].to_vec()
    }
}

fn shipped_payload(frames: &[ToReplica], b: u64) -> Vec<Vec<u8>> {
    frames
        .iter()
        .flat_map(|f| match f {
            ToReplica::Blocks { blocks, data, .. } => blocks
                .iter()
                .filter(|sb| sb.index == b)
                .map(|sb| match sb.payload {
                    Payload::Data { at } => data[at as usize..at as usize + BS].to_vec(),
                    Payload::Zero => vec![0; BS],
                })
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn fig4_a_write_after_the_freeze_does_not_travel_in_the_frozen_epoch() {
    // Patent FIG. 4, step 2060→2030 would re-mark the block in the main
    // bitmap and ship the post-freeze data as part of the frozen epoch.
    for mode in Mode::ALL {
        let mut g = Group::new(1, mode);
        g.p[0].write(0, &block(b'A')).expect("write");
        g.freeze(1);
        g.p[0].write(0, &block(b'B')).expect("write after freeze");
        let mut read = block(0);
        g.p[0].read(0, &mut read).expect("read");
        assert_eq!(read, block(b'B'), "{mode:?}: the host sees its own post-freeze write");
        g.send_all(0);
        assert_eq!(
            shipped_payload(&g.wire[0], 0).first(),
            Some(&block(b'A')),
            "{mode:?}: epoch 1 carries the pre-freeze version"
        );
        g.deliver_all(0);
        assert_eq!(g.dr_block(0, 0), block(b'A'), "{mode:?}: DR image is freeze point 1");
        g.freeze(2);
        g.sync(0);
        assert_eq!(g.dr_block(0, 0), block(b'B'), "{mode:?}: DR image is freeze point 2");
    }
}

#[test]
fn third_embodiment_copies_a_pending_block_aside_before_the_overwrite() {
    let mut g = Group::new(1, Mode::Interval);
    g.p[0].write(0, &block(b'A')).expect("write");
    g.freeze(1);
    g.p[0].write(0, &block(b'B')).expect("overwrite");
    g.p[0].write(0, &block(b'C')).expect("overwrite again");
    assert_eq!(g.p[0].stats().cow_copies, 1, "one copy per block per epoch");
}

#[test]
fn first_embodiment_redirects_freeze_window_writes_into_the_log_and_merges_after() {
    let mut g = Group::new(1, Mode::Log);
    g.p[0].write(0, &block(b'A')).expect("write");
    g.freeze(1);
    g.p[0].write(0, &block(b'B')).expect("write in the window");
    assert_eq!(g.p[0].stats().redirected_writes, 1);
    assert_eq!(g.p[0].stats().cow_copies, 0, "log mode copies nothing aside");
    g.sync(0);
    assert!(g.p[0].closing().is_none(), "epoch committed");
    let mut read = block(0);
    g.p[0].read(0, &mut read).expect("read");
    assert_eq!(read, block(b'B'), "the freeze log was merged back");
}

#[test]
fn second_embodiment_ships_nothing_between_freezes_and_each_block_once() {
    let mut g = Group::new(1, Mode::Interval);
    for i in 0..10u8 {
        g.p[0].write(0, &block(i)).expect("write");
    }
    assert!(
        g.p[0].poll_send(64).expect("send").is_none(),
        "link idle between freezes"
    );
    g.freeze(1);
    g.send_all(0);
    assert_eq!(
        shipped_payload(&g.wire[0], 0),
        vec![block(9)],
        "ten writes, one shipment"
    );
}

#[test]
fn zeroed_ranges_travel_as_zero_records_not_data() {
    let mut g = Group::new(1, Mode::Continuous);
    g.p[0].write(0, &block(b'A')).expect("write");
    g.p[0].zero(0, BS as u64 * 4).expect("discard");
    g.freeze(1);
    g.send_all(0);
    let zero_records = g.wire[0]
        .iter()
        .flat_map(|f| match f {
            ToReplica::Blocks { blocks, .. } => blocks.clone(),
            _ => Vec::new(),
        })
        .filter(|sb| sb.payload == Payload::Zero)
        .count();
    assert_eq!(zero_records, 4);
    assert_eq!(g.p[0].stats().bytes_shipped, 0, "no payload bytes for zeroes");
}

#[test]
fn group_commit_folds_no_member_until_every_member_staged_the_epoch() {
    let mut g = Group::new(2, Mode::Continuous);
    g.p[0].write(0, &block(b'A')).expect("write");
    g.p[1].write(0, &block(b'X')).expect("write");
    g.freeze(1);
    g.sync(0);
    assert_eq!(g.r[0].staged_group(), Some(1), "member 0 staged");
    assert_eq!(g.dr_block(0, 0), block(0), "but not folded: member 1 has not staged");
    assert_eq!(
        (g.c.record().committed, g.c.record().aborted.len()),
        (0, 0),
        "nothing decided"
    );
    g.sync(1);
    assert_eq!(g.c.record().committed, 1);
    assert_eq!((g.dr_block(0, 0), g.dr_block(1, 0)), (block(b'A'), block(b'X')));
    assert!(g
        .p
        .iter_mut()
        .all(|p| p.take_events().contains(&PrimaryEvent::Consistent(1))));
}

#[test]
fn fig9_promote_finishes_a_decided_epoch_and_drops_an_undecided_one() {
    let mut g = Group::new(2, Mode::Continuous);
    g.p[0].write(0, &block(b'A')).expect("write");
    g.p[1].write(0, &block(b'X')).expect("write");
    g.freeze(1);
    g.sync(0);
    g.sync(1);
    g.p[0].write(0, &block(b'B')).expect("write");
    g.freeze(2);
    g.sync(0); // member 0 stages epoch 2; member 1 never does: the primary site dies
    let record = g.c.record().clone();
    let images: Vec<Vec<u8>> =
        g.r.into_iter()
            .map(|r| {
                let mut p = r.promote(&record, 2, Mode::Continuous).expect("promote");
                let mut img = block(0);
                p.read(0, &mut img).expect("read");
                img
            })
            .collect();
    assert_eq!(
        images,
        vec![block(b'A'), block(b'X')],
        "both at group epoch 1, never one at 2"
    );
}

#[test]
fn a_retried_older_version_never_overwrites_a_newer_staged_one() {
    let mut g = Group::new(1, Mode::Continuous);
    g.p[0].write(0, &block(b'A')).expect("write");
    g.send_all(0);
    g.p[0].write(0, &block(b'B')).expect("write");
    g.send_all(0);
    let frames = std::mem::take(&mut g.wire[0]);
    // The newer version arrives first, the older one late.
    for f in frames.iter().rev() {
        g.deliver(0, f.clone());
    }
    g.freeze(1);
    g.sync(0);
    assert_eq!(g.dr_block(0, 0), block(b'B'));
    assert_eq!(g.r[0].stats().stale_dropped, 1);
}

#[test]
fn a_primary_of_an_older_generation_is_fenced() {
    let mut g = Group::new(1, Mode::Continuous);
    let newer = GEN1.promoted_by(2);
    let mut usurper = Primary::create(SimStore::new(BS), geo(), Mode::Continuous, newer).expect("primary");
    let hello = usurper.connect();
    g.r[0].on_frame(hello).expect("hello");
    let _welcome = g.r[0].take_to_primary();
    // The old primary speaks up again.
    let hello = g.p[0].connect();
    g.r[0].on_frame(hello).expect("hello");
    let replies = g.r[0].take_to_primary();
    assert!(
        matches!(replies.as_slice(), [ToPrimary { reply: Reply::Fenced { generation }, .. }] if *generation == newer)
    );
    for f in replies {
        g.p[0].on_frame(f).expect("fenced");
    }
    assert_eq!(g.p[0].fenced_by(), Some(newer));
    assert!(matches!(g.p[0].freeze(5), Err(EngineError::Fenced { .. })));
}

#[test]
fn i4_a_broken_link_resumes_without_resending_a_staged_epoch() {
    let mut g = Group::new(2, Mode::Continuous);
    g.p[0].write(0, &block(b'A')).expect("write");
    g.freeze(1);
    g.sync(0);
    assert_eq!(g.p[0].closing(), Some((1, ClosingState::Staged)));
    g.p[0].disconnect();
    let hello = g.p[0].connect();
    g.deliver(0, hello);
    g.send_all(0);
    assert!(
        g.wire[0].is_empty(),
        "nothing to resend: the replica holds epoch 1 durably"
    );
    g.sync(1);
    assert_eq!(g.dr_block(0, 0), block(b'A'));
}

#[test]
fn i5_failback_ships_only_the_candidates_that_differ() {
    let mut g = Group::new(1, Mode::Continuous);
    for b in 0..8u64 {
        g.p[0].write(b * BS as u64, &block(b as u8 + 1)).expect("write");
    }
    g.freeze(1);
    g.sync(0);
    // Unplanned failover: the old primary keeps writing (strays) while the
    // DR promotes and takes writes of its own.
    g.p[0].write(0, &block(b'S')).expect("stray");
    g.p[0].write(BS as u64, &block(b'T')).expect("stray");
    let record = g.c.record().clone();
    let Group { p, r, .. } = g;
    let old = p.into_iter().next().expect("member");
    let mut new = r
        .into_iter()
        .next()
        .expect("member")
        .promote(&record, 2, Mode::Continuous)
        .expect("promote");
    new.write(BS as u64, &block(b'T'))
        .expect("same bytes as the old site's stray");
    new.write(5 * BS as u64, &block(b'N'))
        .expect("write on the new primary");
    // Failback: the old primary becomes the replica.
    let mut old = Replica::from_demotion(old, 0, false).expect("demote");
    assert_eq!(old.store().snapshots(), 1, "stray writes kept as a snapshot");
    let mut c = Coordinator::open(SimLog::default(), 1).expect("coordinator");
    let mut to_replica = vec![new.connect()];
    let mut shipped = Vec::new();
    while !to_replica.is_empty() {
        for f in std::mem::take(&mut to_replica) {
            if let ToReplica::Blocks { blocks, .. } = &f {
                shipped.extend(blocks.iter().map(|b| b.index));
            }
            old.on_frame(f).expect("replica");
            for msg in old.take_to_coordinator() {
                c.on_message(msg).expect("coordinator");
                for (_, d) in c.take_out() {
                    old.on_coordinator(d).expect("decision");
                }
            }
            for reply in old.take_to_primary() {
                new.on_frame(reply).expect("primary");
            }
        }
        while let Some(f) = new.poll_send(64).expect("send") {
            to_replica.push(f);
        }
        if to_replica.is_empty() && new.closing().is_none() && c.record().committed == 0 {
            new.freeze(10).expect("freeze the failback epoch");
            while let Some(f) = new.poll_send(64).expect("send") {
                to_replica.push(f);
            }
        }
    }
    shipped.sort_unstable();
    // Block 0: stray S vs 1 on the new primary → ships. Block 1: T on both →
    // skipped. Block 5: N vs 6 → ships. Others: never candidates or equal.
    assert_eq!(shipped, vec![0, 5]);
    let img = old.store().image_bytes(16);
    let mut want = vec![0u8; 16 * BS];
    new.read(0, &mut want).expect("read");
    assert_eq!(img, want, "the old site now holds the new primary's freeze point");
}

#[test]
fn a_local_snapshot_is_the_host_view_in_every_mode_even_inside_the_freeze_window() {
    for mode in Mode::ALL {
        let mut g = Group::new(1, mode);
        g.p[0].write(0, &block(b'A')).expect("write");
        g.p[0].write(BS as u64, &block(b'B')).expect("write");
        g.freeze(1);
        g.p[0].write(0, &block(b'C')).expect("write in the window");
        let mark = g.p[0].snapshot("snap-1").expect("snapshot");
        assert_eq!(mark.last_frozen_group, 1);
        g.p[0].write(0, &block(b'D')).expect("write after the snapshot");
        let snap = g.p[0].store().snapshot_bytes("snap-1", 16).expect("snapshot exists");
        assert_eq!(
            &snap[..BS],
            &block(b'C')[..],
            "{mode:?}: the snapshot holds the host view"
        );
        assert_eq!(&snap[BS..2 * BS], &block(b'B')[..], "{mode:?}");
    }
}

#[test]
fn a_late_seal_of_a_dropped_epoch_never_displaces_the_next_epochs_seal() {
    // Model seed 777779431652 (continuous): the seal of an epoch the group
    // had already dropped arrived after the next epoch's seal, took its
    // place, was staged, dropped again, and the next epoch never resolved.
    let mut g = Group::new(2, Mode::Continuous);
    g.p[0].write(0, &block(b'A')).expect("write");
    g.p[1].write(0, &block(b'X')).expect("write");
    g.freeze(1);
    g.sync(0);
    g.sync(1);
    assert_eq!(g.c.record().committed, 1);

    // Epoch 2: member 0 ships and seals it, and the network holds it back.
    g.p[0].write(0, &block(b'B')).expect("write");
    g.p[1].write(0, &block(b'Y')).expect("write");
    g.freeze(2);
    g.send_all(0);
    let late = std::mem::take(&mut g.wire[0]);
    assert!(matches!(late.last(), Some(ToReplica::Sealed { local: 2, .. })));
    // Member 1 gives epoch 2 up: the coordinator drops it on both members,
    // and member 0's primary folds its blocks into the open epoch.
    g.p[1].abort(2).expect("abort");
    g.sync(1);
    assert!(g.p[0].take_events().contains(&PrimaryEvent::Aborted(2)));

    // Epoch 3: its seal overtakes its blocks, then the late epoch 2 arrives.
    g.p[0].write(0, &block(b'C')).expect("write");
    g.freeze(3);
    g.send_all(0);
    let mut next = std::mem::take(&mut g.wire[0]);
    let seal = next.pop().expect("a seal");
    assert!(matches!(seal, ToReplica::Sealed { local: 3, .. }));
    g.deliver(0, seal);
    for f in late.into_iter().chain(next) {
        g.deliver(0, f);
    }
    g.sync(0);
    g.sync(1);

    assert_eq!(
        g.c.record().committed,
        3,
        "epoch 3 resolves once every frame is delivered"
    );
    assert_eq!((g.dr_block(0, 0), g.dr_block(1, 0)), (block(b'C'), block(b'Y')));
}

/// The block indexes of every `Blocks` frame in `frames`, in order.
fn shipped_blocks(frames: &[ToReplica]) -> Vec<u64> {
    frames
        .iter()
        .flat_map(|f| match f {
            ToReplica::Blocks { blocks, .. } => blocks.iter().map(|sb| sb.index).collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn i4_a_cut_mid_epoch_resends_only_what_the_dr_did_not_receive() {
    let mut g = Group::new(1, Mode::Continuous);
    for b in 0..8 {
        g.p[0].write(b * BS as u64, &block(b'a' + b as u8)).expect("write");
    }
    g.freeze(1);
    let mut frames = Vec::new();
    while let Some(f) = g.p[0].poll_send(2).expect("send") {
        frames.push(f);
    }
    // Blocks 0..4 arrive; the cut loses the rest and the seal.
    for f in frames.drain(..2) {
        g.deliver(0, f);
    }
    g.p[0].disconnect();
    let hello = g.p[0].connect();
    g.deliver(0, hello);
    g.send_all(0);
    assert_eq!(shipped_blocks(&g.wire[0]), vec![4, 5, 6, 7]);
    g.sync(0);
    assert_eq!(g.p[0].closing(), None, "the epoch committed");
    for b in 0..8 {
        assert_eq!(g.dr_block(0, b), block(b'a' + b as u8));
    }
}

#[test]
fn i4_a_dr_restart_keeps_what_a_checkpoint_made_durable() {
    let mut g = Group::new(1, Mode::Continuous);
    for b in 0..8 {
        g.p[0].write(b * BS as u64, &block(b'a' + b as u8)).expect("write");
    }
    g.freeze(1);
    let mut frames = Vec::new();
    while let Some(f) = g.p[0].poll_send(2).expect("send") {
        frames.push(f);
    }
    let mut frames = frames.into_iter();
    for f in frames.by_ref().take(2) {
        g.deliver(0, f);
    }
    g.r[0].checkpoint().expect("checkpoint");
    // Blocks 4 and 5 arrive but are never synced: the power goes.
    let unsynced = frames.next().expect("a third batch");
    g.deliver(0, unsynced);
    let store = g.r.remove(0).into_store().durable_copy();
    g.r.insert(0, Replica::open(store, geo(), 0).expect("reopen"));
    g.settle_dr();
    g.p[0].disconnect();
    let hello = g.p[0].connect();
    g.deliver(0, hello);
    g.send_all(0);
    assert_eq!(shipped_blocks(&g.wire[0]), vec![4, 5, 6, 7]);
    g.sync(0);
    for b in 0..8 {
        assert_eq!(g.dr_block(0, b), block(b'a' + b as u8));
    }
}

#[test]
fn i4_the_replica_checkpoints_on_its_own_every_64_mib() {
    const MIB: usize = 1 << 20;
    let geo = Geometry::new(MIB, 80, 8).expect("geometry");
    let mut p = Primary::create(SimStore::new(MIB), geo, Mode::Continuous, GEN1).expect("primary");
    let mut r = Replica::create(SimStore::new(MIB), geo, 0, GEN1).expect("replica");
    r.on_frame(p.connect()).expect("hello");
    for f in r.take_to_primary() {
        p.on_frame(f).expect("welcome");
    }
    let after_hello = r.stats().checkpoints;
    for b in 0..70u64 {
        p.write(b * MIB as u64, &vec![1 + b as u8; MIB]).expect("write");
        while let Some(f) = p.poll_send(1).expect("send") {
            r.on_frame(f).expect("blocks");
        }
        let expected = after_hello + (b + 1) / 64;
        assert_eq!(r.stats().checkpoints, expected, "after {} MiB", b + 1);
    }
}
