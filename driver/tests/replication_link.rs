//! The replication link between two sites over loopback TCP with mutual
//! TLS: a group of two volumes, real engines on real `FileStore`s, the DR's
//! group coordinator on a `FileDecisionLog`, the stream through a TCP proxy
//! the test can cut. Writes go on while each epoch replicates; at every
//! commit, with decisions held, each DR image must equal its primary's image
//! at that freeze, byte for byte, and both members must stand at one cut.
//!
//! The writes come from a seeded generator; the seed is printed and
//! `FLOE_LINK_SEED` replays it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::link::{pairing, pattern, primary_image, replica_image, start, Rng, Sites, BS, GENERATION, MEMBERS};
use floe_driver::replication::endpoint::HostedPrimary;
use floe_driver::replication::freeze::group_freeze;
use floe_driver::replication::handshake::Opening;
use floe_driver::replication::link::{LinkState, LinkStats, Reason};
use floe_driver::replication::sender::{self, SenderConfig};
use floe_driver::replication::tls::{dial, TlsSource};
use floe_driver::store::FileStore;
use floe_engine::{Mode, Primary};
use floe_proto::replication::{self as pb, frame::Kind, replication_client::ReplicationClient};

const BLOCKS: u64 = 256;
const EPOCHS: u64 = 20;

/// What a run wrote, for the coalescing check.
#[derive(Default)]
struct Written {
    /// Block writes (zeroes included).
    versions: u64,
    /// Distinct blocks written in each epoch, summed.
    distinct_per_epoch: u64,
}

/// Writes `n` blocks on random members (one in eight a zero range).
fn write_some(
    sites: &Sites,
    rng: &mut Rng,
    n: usize,
    epoch_blocks: &mut [std::collections::BTreeSet<u64>],
) -> Result<u64> {
    for _ in 0..n {
        let m = rng.below(MEMBERS as u64) as usize;
        let b = rng.below(BLOCKS);
        let data = pattern(rng);
        let zero = rng.below(8) == 0;
        sites.primaries[m].with(|p| {
            if zero {
                p.zero(b * BS as u64, BS as u64)
            } else {
                p.write(b * BS as u64, &data)
            }
        })?;
        epoch_blocks[m].insert(b);
    }
    Ok(n as u64)
}

async fn run(mode: Mode, cut: bool) -> Result<()> {
    let seed = common::link::seed("FLOE_LINK_SEED");
    println!(
        "mode {} cut {cut}: seed {seed} (FLOE_LINK_SEED={seed} replays it)",
        mode.name()
    );
    let mut rng = Rng(seed);
    let dir = tempfile::Builder::new().prefix("floe-link-").tempdir()?;
    let sites = start(dir.path(), mode, BLOCKS).await?;
    let members = sites.engine_members();
    let mut written = Written::default();
    let mut epoch_blocks = vec![std::collections::BTreeSet::new(); MEMBERS];
    let mut cuts = 0;
    for epoch in 1..=EPOCHS {
        written.versions += write_some(&sites, &mut rng, 40, &mut epoch_blocks)?;
        if cut && rng.below(2) == 0 {
            cuts += sites.proxy.cut();
        }
        sites.wait_resolved().await?;
        // The group freeze: every member flips at the same group epoch; the
        // image each holds then (nothing writes during the freeze) is what
        // the DR must show.
        let report = group_freeze(&members, epoch, Duration::from_secs(30)).await;
        assert!(report.committed_to_flip, "epoch {epoch}: {report:?}");
        let frozen = sites
            .primaries
            .iter()
            .map(|p| p.with(primary_image))
            .collect::<Result<Vec<_>>>()?;
        written.distinct_per_epoch += epoch_blocks.iter().map(|s| s.len() as u64).sum::<u64>();
        epoch_blocks.iter_mut().for_each(|s| s.clear());
        // Writes of the next epoch go on while this one replicates.
        written.versions += write_some(&sites, &mut rng, 20, &mut epoch_blocks)?;
        if cut && rng.below(2) == 0 {
            cuts += sites.proxy.cut();
        }
        sites.wait_committed(epoch).await?;
        sites.coordinator.with_decisions_held(|record| -> Result<()> {
            assert_eq!(record.committed, epoch, "no later epoch was frozen");
            for (m, r) in sites.replicas.iter().enumerate() {
                r.with(|r| -> Result<()> {
                    assert_eq!(r.committed_group(), epoch, "member {m} stands at the group's cut");
                    let image = replica_image(r, sites.geometry)?;
                    if image != frozen[m] {
                        let first = image.chunks(BS).zip(frozen[m].chunks(BS)).position(|(a, b)| a != b);
                        bail!("member {m} at epoch {epoch}: DR image differs from the frozen primary from block {first:?}");
                    }
                    Ok(())
                })?;
            }
            Ok(())
        })?;
    }
    let sent: u64 = sites.links.iter().map(|l| l.stats.blocks_sent.get()).sum();
    let reconnects: u64 = sites.links.iter().map(|l| l.stats.reconnects.get()).sum();
    println!(
        "mode {}: {EPOCHS} epochs committed, {} block writes, {} distinct per epoch, {sent} block versions sent, {cuts} connections cut, {reconnects} reconnects",
        mode.name(),
        written.versions,
        written.distinct_per_epoch
    );
    for m in 0..MEMBERS {
        let stats = sites.receivers.stats(&format!("pvc-{m}")).context("a paired volume")?;
        assert_eq!(stats.rejected(), 0, "no stream of pvc-{m} was refused");
        assert!(stats.frames_received.get() > 0);
    }
    // The same figures as Prometheus exposes them.
    let text = prometheus::TextEncoder::new().encode_to_string(&sites.registry.gather())?;
    let exposed: u64 = text
        .lines()
        .filter(|l| l.starts_with("floe_sender_sent_blocks_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(exposed, sent, "{text}");
    if !cut {
        assert_eq!(reconnects, 0, "an uncut link never reconnects");
        // Coalescing: never more versions than writes; interval mode ships
        // each block at most once per epoch.
        assert!(
            sent <= written.versions,
            "{sent} versions sent for {} writes",
            written.versions
        );
        if mode == Mode::Interval {
            assert!(
                sent <= written.distinct_per_epoch,
                "{sent} sent > {} distinct",
                written.distinct_per_epoch
            );
        }
    } else {
        assert!(cuts > 0, "the run cut the link at least once");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_replicates_over_mutual_tls_to_one_cut_in_every_mode() -> Result<()> {
    for mode in Mode::ALL {
        run(mode, false).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_the_link_mid_epoch_loses_nothing_and_the_stream_resumes() -> Result<()> {
    for mode in Mode::ALL {
        run(mode, true).await?;
    }
    Ok(())
}

async fn hostile_stream(sites: &Sites, frames: Vec<pb::Frame>) -> Result<Vec<pb::Frame>, tonic::Status> {
    let channel = dial(&sites.target, &sites.primary_tls, Duration::from_secs(5))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = ReplicationClient::new(channel);
    let mut inbound = client.replicate(tokio_stream::iter(frames)).await?.into_inner();
    let mut got = Vec::new();
    while let Some(f) = inbound.message().await? {
        got.push(f);
    }
    Ok(got)
}

fn refusal(frames: &[pb::Frame]) -> Option<&pb::Refusal> {
    frames.iter().find_map(|f| match &f.kind {
        Some(Kind::Refusal(r)) => Some(r),
        _ => None,
    })
}

/// A peer with a certificate of the right CA that sends what it likes: each
/// bad stream is refused with the reason named, counted, and the replicas
/// keep their images.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_peer_is_refused_with_a_reason_and_changes_nothing() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("floe-link-").tempdir()?;
    let sites = start(dir.path(), Mode::Continuous, BLOCKS).await?;
    // The real senders stop, so only the hostile peer talks.
    sites.cancel.cancel();
    let open = |edit: &dyn Fn(&mut pb::Open)| {
        let mut frame = Opening {
            pairing: pairing(0, Mode::Continuous, sites.geometry),
            generation: GENERATION,
            incarnation: 1,
            salt: [9; 32],
        }
        .frame();
        if let Some(Kind::Open(o)) = &mut frame.kind {
            edit(o);
        }
        frame
    };

    // Not an Open first.
    let hello = pb::Frame {
        kind: Some(Kind::Hello(pb::Hello::default())),
    };
    let status = hostile_stream(&sites, vec![hello]).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // A volume that is not paired here (a path, even).
    let got = hostile_stream(&sites, vec![open(&|o| o.volume = "../../etc/passwd".into())]).await?;
    let r = refusal(&got).context("a refusal")?;
    assert_eq!(
        (r.field.as_str(), r.theirs.as_str()),
        ("volume", "\"../../etc/passwd\"")
    );
    assert_eq!(sites.receivers.unknown.rejected_for(Reason::Mismatch), 1);

    // Another geometry: named with both values.
    let got = hostile_stream(&sites, vec![open(&|o| o.block_count = 1 << 40)]).await?;
    let r = refusal(&got).context("a refusal")?;
    assert_eq!(
        (r.field.as_str(), r.ours.as_str(), r.theirs.as_str()),
        ("block_count", "256", "1099511627776")
    );

    // Accepted, then a batch outside the volume: refused as malformed.
    let batch = pb::Frame {
        kind: Some(Kind::BlockBatch(pb::BlockBatch {
            generation: Some(pb::RoleGeneration { counter: 1, site_id: 1 }),
            blocks: vec![pb::Block {
                index: BLOCKS,
                seq: Some(pb::SendSeq::default()),
                zero: false,
            }],
            data: vec![0xEE; BS],
            ..Default::default()
        })),
    };
    let got = hostile_stream(&sites, vec![open(&|_| {}), batch]).await?;
    assert!(
        matches!(got.first().and_then(|f| f.kind.as_ref()), Some(Kind::Accept(_))),
        "{got:?}"
    );
    let r = refusal(&got).context("a refusal")?;
    assert_eq!(r.code, i32::from(pb::refusal::Code::Malformed));
    assert!(r.message.contains("outside the volume"), "{}", r.message);
    let stats = sites.receivers.stats("pvc-0").context("paired")?;
    assert_eq!(stats.rejected(), 2, "the geometry mismatch and the malformed batch");

    // Nothing reached the replicas.
    for r in &sites.replicas {
        let image = r.with(|r| replica_image(r, sites.geometry))?;
        assert!(image.iter().all(|&b| b == 0), "a replica changed");
    }
    Ok(())
}

/// A sender whose record of the pairing differs is refused with the field
/// named, keeps dialling (with backoff) and moves no data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_with_another_geometry_is_refused_and_keeps_retrying() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("floe-link-").tempdir()?;
    let sites = start(dir.path(), Mode::Log, BLOCKS).await?;
    let mut wrong = pairing(1, Mode::Log, sites.geometry);
    wrong.geometry = floe_engine::Geometry::new(BS, BLOCKS * 2, 16)?;
    let mut cfg = SenderConfig::new(
        sites.target.clone(),
        Arc::clone(&sites.primary_tls),
        wrong,
        GENERATION,
        1,
    );
    cfg.retry = (Duration::from_millis(5), Duration::from_millis(50));
    let cancel = sites.cancel.child_token();
    let link = sender::spawn(Arc::clone(&sites.primaries[1]), cfg, LinkStats::detached(), cancel);
    let mut state = link.state.clone();
    let down = tokio::time::timeout(
        Duration::from_secs(30),
        // The guard `wait_for` returns would hold the state's lock: dropped here.
        async {
            state
                .wait_for(|s| matches!(s, LinkState::Down { error } if error.contains("block_count")))
                .await
                .map(|_| ())
        },
    )
    .await;
    assert!(matches!(down, Ok(Ok(_))), "state {:?}", *link.state.borrow());
    let error = match &*link.state.borrow() {
        LinkState::Down { error } => error.clone(),
        other => bail!("not down: {other:?}"),
    };
    assert!(error.contains("256") && error.contains("512"), "{error}");
    // It dials again: wait for a second refusal.
    let mut state = link.state.clone();
    let again = tokio::time::timeout(Duration::from_secs(30), async {
        while link.stats.reconnects.get() < 2 {
            if state.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(again.is_ok(), "reconnects {}", link.stats.reconnects.get());
    assert!(link.stats.rejected() >= 2);
    assert_eq!(link.stats.blocks_sent.get(), 0, "nothing was sent on a refused stream");
    Ok(())
}

/// Senders sharing a bandwidth limit still bring every epoch to the DR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bandwidth_limited_link_still_commits_every_epoch() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("floe-link-").tempdir()?;
    let geo = common::link::geometry(BLOCKS);
    std::fs::create_dir_all(dir.path().join("primary"))?;
    let mut primaries = Vec::new();
    for m in 0..MEMBERS {
        let store = FileStore::create(&dir.path().join("primary"), &format!("pvc-{m}"), geo)?;
        primaries.push(Arc::new(HostedPrimary::new(Primary::create(
            store,
            geo,
            Mode::Continuous,
            GENERATION,
        )?)));
    }
    let sites = common::link::start_with(dir.path(), Mode::Continuous, geo, primaries, Some(4 << 20)).await?;
    let members = sites.engine_members();
    let mut rng = Rng(7);
    for epoch in 1..=3 {
        for _ in 0..200 {
            let m = rng.below(MEMBERS as u64) as usize;
            let b = rng.below(BLOCKS);
            let data = pattern(&mut rng);
            sites.primaries[m].with(|p| p.write(b * BS as u64, &data))?;
        }
        sites.wait_resolved().await?;
        let report = group_freeze(&members, epoch, Duration::from_secs(30)).await;
        assert!(report.committed_to_flip, "{report:?}");
        sites.wait_committed(epoch).await?;
    }
    Ok(())
}

/// Certificates the DR must turn away at the handshake: another CA, and the
/// right CA for another name. Neither reaches the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_paired_sites_certificate_gets_through() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("floe-link-").tempdir()?;
    let sites = start(dir.path(), Mode::Continuous, BLOCKS).await?;
    sites.cancel.cancel();
    let hello = || {
        vec![pb::Frame {
            kind: Some(Kind::Hello(pb::Hello::default())),
        }]
    };
    for (who, files) in [
        ("another CA", &sites.pki.rogue_controller),
        ("another name", &sites.pki.intruder),
    ] {
        let tls = TlsSource::load(common::link::site_tls(files, common::tls::NODE_DNS)?)?;
        let outcome = match dial(&sites.target, &tls, Duration::from_secs(5)).await {
            Err(e) => Err(e.to_string()),
            Ok(channel) => ReplicationClient::new(channel)
                .replicate(tokio_stream::iter(hello()))
                .await
                .map(|_| ())
                .map_err(|s| s.to_string()),
        };
        assert!(outcome.is_err(), "{who}: the DR served it");
    }
    // (The cancelled senders' last handshakes may be counted too.)
    let identity = sites.receivers.unknown.rejected_for(Reason::Identity);
    assert!(identity >= 2, "both counted as identity refusals, {identity}");
    assert_eq!(sites.receivers.unknown.rejected_for(Reason::Mismatch), 0);
    // And the primary side refuses a DR that shows the right CA but another name.
    let tls = TlsSource::load(common::link::site_tls(&sites.pki.controller, "someone-else.floe.test")?)?;
    assert!(dial(&sites.target, &tls, Duration::from_secs(5)).await.is_err());
    Ok(())
}

/// A rotated Secret takes effect at the next connection: the DR's files are
/// replaced by a certificate for another name (the primary refuses it and
/// its stream stays down), then by good ones again (the stream comes back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dr_reloads_its_certificate_when_the_files_change() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("floe-link-").tempdir()?;
    let sites = start(dir.path(), Mode::Continuous, BLOCKS).await?;
    let link = &sites.links[0];
    let up = |l: &floe_driver::replication::link::LinkHandle| {
        let mut state = l.state.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(30), async {
                state.wait_for(|s| *s == LinkState::Up).await.map(|_| ())
            })
            .await
        }
    };
    assert!(matches!(up(link).await, Ok(Ok(()))), "the stream comes up");
    let node = &sites.pki.node;
    let good = (std::fs::read(&node.cert)?, std::fs::read(&node.key)?);
    // Replace in place, as a Secret's atomic symlink swap does: new inode.
    let swap = |cert: &[u8], key: &[u8]| -> Result<()> {
        for (path, bytes) in [(&node.cert, cert), (&node.key, key)] {
            let tmp = path.with_extension("new");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, path)?;
        }
        Ok(())
    };
    let other = &sites.pki.other_node;
    swap(&std::fs::read(&other.cert)?, &std::fs::read(&other.key)?)?;
    let before = link.stats.reconnects.get();
    sites.proxy.cut();
    let mut state = link.state.clone();
    let refused = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let down_again = state
                .wait_for(|s| matches!(s, LinkState::Down { .. }))
                .await
                .map(|s| format!("{:?}", *s));
            match down_again {
                Ok(text) if link.stats.reconnects.get() >= before + 2 => break Ok(text),
                Ok(_) => {
                    if state.changed().await.is_err() {
                        break Err(());
                    }
                }
                Err(_) => break Err(()),
            }
        }
    })
    .await;
    let text = match refused {
        Ok(Ok(text)) => text,
        other => bail!(
            "the stream did not stay down: {other:?}, state {:?}",
            *link.state.borrow()
        ),
    };
    assert!(text.contains("certificate") || text.contains("connect"), "{text}");
    swap(&good.0, &good.1)?;
    assert!(
        matches!(up(link).await, Ok(Ok(()))),
        "the stream is back with the good files"
    );
    Ok(())
}
