//! Failback between the two sites of [`super::sites`]: after a failover
//! ([`check_promoted`](super::sites::check_promoted) traded the roles), the
//! old primary site comes back, is demoted to the new primary's generation
//! and resynced by it; every figure measured independently of floe.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use floe_driver::replication::freeze::{FreezeMember, Token};
use floe_proto::node as wire;

use super::plane::PlaneClient;
use super::sites::{metric, volume, wait_until, Sites, GROUP, MEMBERS, VOLUME_BYTES};

/// Tracking block of the sites' volumes.
pub const BLOCK: usize = 4096;

/// An image read with O_DIRECT: its BLAKE3 (as `Verify` computes it) and
/// the BLAKE3 of each block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub digest: Vec<u8>,
    pub blocks: Vec<[u8; 32]>,
}

impl Image {
    /// Reads the first `total` bytes of `path` (a device or an image file;
    /// beyond its end reads as zeros).
    pub fn read(path: &Path, total: u64) -> Result<Image> {
        const CHUNK: usize = 1 << 20;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        let mut raw = vec![0u8; CHUNK + 4096];
        let offset = raw.as_ptr().align_offset(4096);
        let buf = &mut raw[offset..offset + CHUNK];
        let mut whole = blake3::Hasher::new();
        let mut blocks = Vec::new();
        let mut read = 0u64;
        while read < total {
            let want = (total - read).min(CHUNK as u64) as usize;
            let mut n = std::io::Read::read(&mut f, &mut buf[..want])?;
            if n == 0 {
                buf[..want].fill(0);
                n = want;
            }
            ensure!(
                n % BLOCK == 0,
                "{}: a read of {n} bytes, not whole blocks",
                path.display()
            );
            whole.update(&buf[..n]);
            blocks.extend(buf[..n].chunks(BLOCK).map(|b| *blake3::hash(b).as_bytes()));
            read += n as u64;
        }
        Ok(Image {
            digest: whole.finalize().as_bytes().to_vec(),
            blocks,
        })
    }

    /// The blocks where `self` and `other` differ.
    pub fn differing(&self, other: &Image) -> Vec<usize> {
        (0..self.blocks.len().max(other.blocks.len()))
            .filter(|&b| self.blocks.get(b) != other.blocks.get(b))
            .collect()
    }
}

/// What a failback did, measured.
#[derive(Clone, Debug, Default)]
pub struct Failback {
    /// The epoch the old site was checked at (the new primary's first
    /// freeze after the demotion).
    pub epoch: u64,
    /// Blocks that differed between the old site's image and the new
    /// primary's before the resync (an O_DIRECT comparison), all members.
    pub differing: usize,
    /// Blocks the new primary changed between that comparison and the
    /// scrape of its metrics.
    pub written_since: usize,
    /// Blocks the new primary's senders sent (its metrics).
    pub shipped: u64,
    /// Failback candidates the demotion reported (the old site's writes
    /// after its last committed epoch).
    pub candidates: u64,
    /// Blocks of a full copy of every member.
    pub full_copy: u64,
    /// How long from the demotion to the checked epoch committed.
    pub took: Duration,
}

/// The image file of replica `volume` on node directory `dir`.
pub fn replica_image(dir: &Path, volume: &str) -> PathBuf {
    dir.join("data/replication/dr/volumes").join(volume).join("image")
}

/// Reads every member's device of `s`'s primary with O_DIRECT.
async fn read_devices(s: &Sites) -> Result<Vec<Image>> {
    let mut out = Vec::new();
    for dev in &s.devices {
        let dev = dev.clone();
        out.push(tokio::task::spawn_blocking(move || Image::read(&dev, VOLUME_BYTES)).await??);
    }
    Ok(out)
}

/// Each member's `floe_sender_written_blocks_total` in `metrics`.
fn written_blocks(metrics: &str) -> Vec<u64> {
    (0..MEMBERS)
        .map(|m| {
            let line = format!("floe_sender_written_blocks_total{{volume=\"{}\"}}", volume(m));
            metric(metrics, &line).unwrap_or(0)
        })
        .collect()
}

/// Quiesces every member of `s`'s primary under `token`.
fn quiesce(rt: &PlaneClient, members: &[Arc<dyn FreezeMember>], token: &Token) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    for m in members {
        if let Err(e) = rt.block_on(m.quiesce(token, deadline)) {
            thaw(rt, members, token);
            return Err(anyhow::anyhow!("quiesce {}: {e}", m.name()));
        }
    }
    Ok(())
}

fn thaw(rt: &PlaneClient, members: &[Arc<dyn FreezeMember>], token: &Token) {
    for m in members {
        if let Err(e) = rt.block_on(m.thaw(token)) {
            eprintln!("thaw {}: {e}", m.name());
        }
    }
}

/// After an unplanned failover: the old site (`s.dr` now, every process
/// killed, its uplink down) comes back: its dead mounts dropped, its
/// processes started again, its uplink up, the broken attachments of its
/// volumes cleared.
pub fn old_site_back(s: &mut Sites) -> Result<()> {
    let net = s.net.clone();
    s.dr.drop_dead_mounts();
    s.dr.start().context("restart the old primary site")?;
    if let Some(net) = &net {
        net.link_up(usize::from(!s.swapped))?;
    }
    let old = s.dr.client()?;
    for m in 0..MEMBERS {
        old.detach(&volume(m))
            .with_context(|| format!("clear the broken attachment of {} on the old site", volume(m)))?;
    }
    Ok(())
}

/// The failback of `s` after [`check_promoted`](super::sites::check_promoted)
/// (and [`old_site_back`] after a loss): the old site (`s.dr` now, its
/// members detached) is demoted (strays kept
/// unless `discard`), the two images are compared block by block, the new
/// primary streams to it again, and its first epoch after that (from
/// `epoch` on; one frozen before the comparison began is given up) must
/// reach the old site with the two images O_DIRECT-equal.
///
/// `quiet`: the new primary's file systems stay frozen from the comparison
/// to that epoch, so nothing is written meanwhile and what was shipped can
/// be held to the blocks that differed; otherwise its workload runs on and
/// only the lower bound is checked.
pub fn fail_back(s: &mut Sites, epoch: u64, discard: bool, quiet: bool, progress: impl Fn(&str)) -> Result<Failback> {
    fail_back_with(s, epoch, discard, quiet, None, progress)
}

/// Which data plane a failback kills mid-resync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kill {
    /// The new primary's `serve` (its holder keeps the volumes served).
    NewPrimary,
    /// The old site's `serve` (its replicas and their candidates on disk).
    OldSite,
}

/// [`fail_back`], with `kill`'s `serve` SIGKILLed once the comparison has
/// begun (and before the epoch that carries the resync), then started
/// again: the resync must resume.
pub fn fail_back_with(
    s: &mut Sites,
    epoch: u64,
    discard: bool,
    quiet: bool,
    kill: Option<Kill>,
    progress: impl Fn(&str),
) -> Result<Failback> {
    ensure!(
        !(quiet && kill == Some(Kill::NewPrimary)),
        "a quiet failback holds the new primary's freeze: its data plane cannot be killed meanwhile"
    );
    let t0 = Instant::now();
    let old = s.dr.client()?;
    let new_admin = s.primary.admin();
    let old_admin = s.dr.admin();
    let generation = old
        .block_on(new_admin.status(&volume(0)))?
        .generation
        .context("the new primary's generation")?;
    let demoted = old.block_on(old_admin.demote(GROUP, generation, discard))?;
    let again = old.block_on(old_admin.demote(GROUP, generation, discard))?;
    ensure!(
        again.candidate_blocks == demoted.candidate_blocks && again.strays_snapshots == demoted.strays_snapshots,
        "a second Demote answers differently: {again:?} vs {demoted:?}"
    );
    progress(&format!(
        "old site demoted to generation ({}, {}): last epoch it sealed {}, {} candidate blocks",
        generation.counter, generation.site_id, demoted.final_epoch, demoted.candidate_blocks
    ));

    let members = s.members();
    let token = Token::fresh()?;
    quiesce(&old, &members, &token)?;
    let checked = (|s: &mut Sites| {
        let before = old.block_on(read_devices(s))?;
        // The host's block writes so far, by the new primary's count: each
        // write from now on may ship its block once more.
        let written_before = written_blocks(&s.scrape(0)?);
        if !quiet {
            thaw(&old, &members, &token);
        }
        let mut differing = Vec::new();
        let mut old_images = Vec::new();
        for (m, image_now) in before.iter().enumerate() {
            let image = Image::read(&replica_image(&s.dr.dir, &volume(m)), VOLUME_BYTES)?;
            differing.push(image.differing(image_now));
            check_strays(s, &demoted.strays_snapshots, m, &image, discard)?;
            old_images.push(image);
        }
        let paired = old.block_on(new_admin.pair(stream_to_old_site(s)))?;
        ensure!(paired.generation == Some(generation), "failback pair: {paired:?}");
        let comparing = || {
            wait_until("the failback comparison begun", Duration::from_secs(120), || {
                Ok((0..MEMBERS).all(|m| {
                    old.block_on(new_admin.status(&volume(m)))
                        .is_ok_and(|st| st.step.starts_with("comparing"))
                }))
            })
        };
        comparing()?;
        // The step is a metric too, read from the same status.
        let text = s.scrape(0)?;
        for m in 0..MEMBERS {
            let step = format!(
                "floe_replication_step{{group=\"{GROUP}\",step=\"comparing\",volume=\"{}\"}}",
                volume(m)
            );
            ensure!(metric(&text, &step) == Some(1), "no {step} 1 while comparing:\n{text}");
            let left = format!(
                "floe_replication_resync_candidates_left_blocks{{volume=\"{}\"}}",
                volume(m)
            );
            ensure!(metric(&text, &left).is_some(), "no {left} while comparing");
        }
        if let Some(kill) = kill {
            let node = match kill {
                Kill::NewPrimary => &mut s.primary,
                Kill::OldSite => &mut s.dr,
            };
            node.stop_serve(rustix::process::Signal::KILL)?;
            node.start_serve()?;
            progress(&format!("{kill:?}: serve SIGKILLed mid-resync and started again"));
            // Until the resync folds, the old site keeps the image it had.
            for (m, image) in old_images.iter().enumerate() {
                ensure!(
                    Image::read(&replica_image(&s.dr.dir, &volume(m)), VOLUME_BYTES)? == *image,
                    "{}: the old site's image changed before the resync folded",
                    volume(m)
                );
            }
            comparing()?;
        }
        progress("the new primary streams to the old site: candidates hashed, compared, the differing ones sent");
        let (epoch, after) = first_epoch(s, &old, &members, &token, epoch, quiet)?;
        anyhow::Ok((before, differing, epoch, after, written_before))
    })(s);
    if quiet || checked.is_err() {
        thaw(&old, &members, &token);
    }
    let (before, differing, epoch, after, written_before) = checked?;
    if quiet {
        ensure!(
            before == after,
            "the new primary changed while its file systems were frozen"
        );
    }

    let mut out = Failback {
        epoch,
        took: t0.elapsed(),
        candidates: demoted.candidate_blocks,
        full_copy: MEMBERS as u64 * VOLUME_BYTES / BLOCK as u64,
        ..Failback::default()
    };
    // What the new primary wrote after `epoch` and sent before this scrape
    // (a thaw rewrites the ext4 superblock) differs between `after` and a
    // read made after the scrape.
    let metrics = s.scrape(0)?;
    let now = old.block_on(read_devices(s))?;
    for m in 0..MEMBERS {
        let verified = old.block_on(old_admin.verify(&volume(m), epoch, VOLUME_BYTES))?;
        ensure!(
            verified.hash == after[m].digest,
            "{}: the old site's image at epoch {epoch} is not the new primary's",
            volume(m)
        );
        let image = Image::read(&replica_image(&s.dr.dir, &volume(m)), VOLUME_BYTES)?;
        let left = image.differing(&after[m]);
        ensure!(
            left.is_empty(),
            "{}: {} blocks still differ after the failback (first {:?})",
            volume(m),
            left.len(),
            &left[..left.len().min(8)]
        );
        let mut since = before[m].differing(&after[m]);
        since.extend(after[m].differing(&now[m]));
        since.sort_unstable();
        since.dedup();
        out.differing += differing[m].len();
        out.written_since += since.len();
        let shipped_m = metric(
            &metrics,
            &format!("floe_sender_sent_blocks_total{{volume=\"{}\"}}", volume(m)),
        )
        .unwrap_or(0);
        out.shipped += shipped_m;
    }
    // A new primary killed mid-resync counts afresh from its restart.
    if kill != Some(Kill::NewPrimary) {
        ensure!(
            out.shipped >= out.differing as u64,
            "the resync shipped {} blocks, fewer than the {} that differed",
            out.shipped,
            out.differing
        );
    }
    if quiet {
        // Each differing block once, and a block written since (in quiet
        // mode: the superblock and what else a freeze or a thaw rewrites)
        // once more per write, counted by the new primary (a restarted one
        // counts afresh); an old site killed mid-resync loses what it had
        // not made durable, compares again and takes each differing block
        // at most once more.
        let resent = if kill == Some(Kill::OldSite) { out.differing } else { 0 };
        let written: u64 = written_blocks(&metrics)
            .iter()
            .zip(&written_before)
            .map(|(now, then)| if now >= then { now - then } else { *now })
            .sum();
        let bound = (out.differing + resent) as u64 + written;
        ensure!(
            out.shipped <= bound,
            "the resync shipped {} blocks, more than the {} that differed (+{resent} re-sent after a kill) plus {written} block writes since ({} distinct blocks)",
            out.shipped,
            out.differing,
            out.written_since
        );
    }
    Ok(out)
}

/// The `Pair` that makes the new primary (`s.primary`) stream its group
/// to the old site's listener.
pub fn stream_to_old_site(s: &Sites) -> wire::PairRequest {
    wire::PairRequest {
        retained_points: 0,
        group: GROUP.into(),
        role: wire::Role::Primary.into(),
        members: (0..MEMBERS)
            .map(|m| wire::GroupMember {
                volume: volume(m),
                ..Default::default()
            })
            .collect(),
        peer_address: s.listen[1].to_string(),
        generation: None,
        ..Default::default()
    }
}

/// Member `m`'s strays snapshot on the old site holds `image` (or none
/// was kept, with `discard`).
fn check_strays(s: &Sites, strays: &[String], m: usize, image: &Image, discard: bool) -> Result<()> {
    let mine: Vec<&str> = strays
        .iter()
        .filter_map(|n| n.strip_prefix(&format!("{}/", volume(m))))
        .collect();
    if discard {
        ensure!(
            mine.is_empty(),
            "strays of {} kept although discarded: {mine:?}",
            volume(m)
        );
        return Ok(());
    }
    let [name] = mine[..] else {
        anyhow::bail!("{}: strays snapshots {mine:?}, not one", volume(m));
    };
    let path = replica_image(&s.dr.dir, &volume(m)).with_file_name(format!("snapshots/{name}.img"));
    ensure!(
        Image::read(&path, VOLUME_BYTES)? == *image,
        "the strays snapshot {} is not the old site's image",
        path.display()
    );
    Ok(())
}

/// Freezes the new primary's group from `epoch` on until one epoch
/// commits at the old site (an epoch frozen before the failback comparison
/// began is given up by the engine: the next one is tried); the epoch and
/// the new primary's images at it. `quiet`: the file systems are frozen
/// under `token` already.
fn first_epoch(
    s: &Sites,
    rt: &PlaneClient,
    members: &[Arc<dyn FreezeMember>],
    token: &Token,
    mut epoch: u64,
    quiet: bool,
) -> Result<(u64, Vec<Image>)> {
    let new_admin = s.primary.admin();
    let old_admin = s.dr.admin();
    loop {
        wait_until(
            &format!("the members ready for epoch {epoch}"),
            Duration::from_secs(120),
            || Ok(members.iter().all(|m| rt.block_on(m.ready(epoch)).is_ok())),
        )?;
        if !quiet {
            quiesce(rt, members, token)?;
        }
        let flipped = (|| {
            for m in members {
                rt.block_on(m.freeze(epoch, token))
                    .map_err(|e| anyhow::anyhow!("freeze {}: {e}", m.name()))?;
            }
            rt.block_on(read_devices(s))
        })();
        if !quiet {
            thaw(rt, members, token);
        }
        let images = match flipped {
            Ok(images) => images,
            Err(e) => {
                for m in members {
                    let _ = rt.block_on(m.abort(epoch));
                }
                return Err(e);
            }
        };
        let mut aborted = false;
        wait_until(
            &format!("epoch {epoch} committed at the old site or given up"),
            Duration::from_secs(120),
            || {
                if rt.block_on(old_admin.verify(&volume(0), epoch, VOLUME_BYTES)).is_ok() {
                    return Ok(true);
                }
                let closing = (0..MEMBERS)
                    .map(|m| rt.block_on(new_admin.status(&volume(m))).map(|st| st.closing_epoch))
                    .collect::<floe_driver::node::error::Result<Vec<u64>>>()?;
                aborted = closing.iter().all(|c| *c != epoch)
                    && rt.block_on(old_admin.verify(&volume(0), epoch, VOLUME_BYTES)).is_err();
                Ok(aborted)
            },
        )?;
        if !aborted {
            return Ok((epoch, images));
        }
        eprintln!("failback: epoch {epoch} was frozen before the comparison began and given up; the next one");
        epoch += 1;
    }
}
