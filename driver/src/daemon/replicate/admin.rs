//! `floe.node.v1.NodeAdmin` on the data plane's socket: pairing, the node's
//! steps of a group freeze, and the replication state of a volume.
//!
//! The freeze steps are those of `replication::freeze::group_freeze`, one
//! rpc each, so a caller anywhere runs the sequence over every node of a
//! group (`node::rpc::member::RemoteMember`). A quiesce freezes through the
//! daemon's freezer: recorded on disk, thawed by its watchdog at the
//! deadline and by a successor after a crash. A flip runs while the freezer
//! holds the freeze, so a thaw or the watchdog can never slip in between
//! the check and the flip.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use floe_engine::{Geometry, Mode, ResyncPhase, RoleGeneration, VolumeStore};
use floe_proto::node as wire;
use floe_proto::node::node_admin_server::{NodeAdmin, NodeAdminServer};
use floe_proto::replication as rwire;
use tonic::{Request, Response, Status};

use super::pairings::Side;
use super::{MemberShape, PairArgs, Replication};
use crate::dataplane::mounttable;
use crate::model::ObjectId;
use crate::node::error::{Error, Result};
use crate::node::plane::freeze::Freezer;
use crate::node::plane::types::MAX_QUIESCE_TIMEOUT;
use crate::store::MAX_RETAINED;

/// What one caller's token froze: per volume, the freezer's token of its
/// file system (none for a volume without one).
type Frozen = HashMap<String, Vec<(String, Option<String>)>>;

/// The service.
pub(crate) struct AdminService {
    hub: Arc<Replication>,
    freezer: Arc<Freezer>,
    frozen: Arc<Mutex<Frozen>>,
}

impl AdminService {
    /// The service over `hub`, freezing through `freezer`.
    pub(crate) fn server(hub: Arc<Replication>, freezer: Arc<Freezer>) -> NodeAdminServer<Self> {
        NodeAdminServer::new(AdminService {
            hub,
            freezer,
            frozen: Arc::default(),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Replication, &Freezer, &Mutex<Frozen>) -> Result<T> + Send + 'static,
    ) -> std::result::Result<T, Status> {
        let (hub, freezer, frozen) = (
            Arc::clone(&self.hub),
            Arc::clone(&self.freezer),
            Arc::clone(&self.frozen),
        );
        tokio::task::spawn_blocking(move || op(&hub, &freezer, &frozen))
            .await
            .map_err(|e| Status::internal(format!("a NodeAdmin call panicked or was cancelled: {e}")))?
            .map_err(|e| {
                let status = Status::from(e);
                tracing::warn!(code = ?status.code(), error = status.message(), "NodeAdmin call refused");
                status
            })
    }
}

fn volume_id(field: &'static str, v: &str) -> Result<String> {
    Ok(ObjectId::parse(field, v)?.to_string())
}

/// A caller's freeze token: 1 to 64 letters, digits, `-` or `_`.
fn token(v: &str) -> Result<String> {
    let ok = !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(Error::Invalid {
            field: "token",
            value: v.chars().take(80).collect(),
            expected: "1 to 64 letters, digits, - or _".into(),
        });
    }
    Ok(v.to_owned())
}

fn generation_of(g: Option<rwire::RoleGeneration>) -> Option<RoleGeneration> {
    g.map(|g| RoleGeneration {
        counter: g.counter,
        site: g.site_id,
    })
}

fn generation_to(g: RoleGeneration) -> rwire::RoleGeneration {
    rwire::RoleGeneration {
        counter: g.counter,
        site_id: g.site,
    }
}

fn mode_of(m: i32) -> Result<Mode> {
    match wire::ReplicationMode::try_from(m) {
        Ok(wire::ReplicationMode::Continuous) => Ok(Mode::Continuous),
        Ok(wire::ReplicationMode::Log) => Ok(Mode::Log),
        Ok(wire::ReplicationMode::Interval) => Ok(Mode::Interval),
        _ => Err(Error::Invalid {
            field: "members.mode",
            value: m.to_string(),
            expected: "REPLICATION_MODE_CONTINUOUS, _LOG or _INTERVAL".into(),
        }),
    }
}

fn mode_to(m: &str) -> wire::ReplicationMode {
    match m.parse::<Mode>() {
        Ok(Mode::Continuous) => wire::ReplicationMode::Continuous,
        Ok(Mode::Log) => wire::ReplicationMode::Log,
        Ok(Mode::Interval) => wire::ReplicationMode::Interval,
        Err(_) => wire::ReplicationMode::Unspecified,
    }
}

/// A DR listener's address: `HOST:PORT`, HOST a name or an address
/// (`[v6]` bracketed), PORT not 0.
/// A listener's address (`field` of `Pair`): HOST:PORT, the host an IP
/// address or a DNS name.
fn listener_address(field: &'static str, v: &str) -> Result<()> {
    let bad = || Error::Invalid {
        field,
        value: v.chars().take(80).collect(),
        expected: match field {
            "peer_address" | "members.peer_address" => "HOST:PORT of the DR node's replication listener",
            _ => "HOST:PORT of the coordinator node's coordinator listener",
        }
        .into(),
    };
    let (host, port) = v.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// The deadline of a quiesce: in the future, at most the longest quiesce.
fn deadline(unix_ms: u64) -> Result<Duration> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| Error::Internal(format!("the clock is before 1970: {e}")))?;
    let left = Duration::from_millis(unix_ms).saturating_sub(now);
    if left.is_zero() || left > MAX_QUIESCE_TIMEOUT {
        return Err(Error::Invalid {
            field: "deadline_unix_ms",
            value: unix_ms.to_string(),
            expected: format!("a time after now and at most {} s ahead", MAX_QUIESCE_TIMEOUT.as_secs()),
        });
    }
    Ok(left)
}

fn lock(m: &Mutex<Frozen>) -> std::sync::MutexGuard<'_, Frozen> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Freezes `volume`'s file system (if mounted) for `timeout`; the
/// freezer's token, or none when nothing is mounted on the volume.
fn quiesce_one(hub: &Replication, freezer: &Freezer, volume: &str, timeout: Duration) -> Result<Option<String>> {
    hub.primary(volume)?;
    let device = hub.device(volume)?;
    let mounts = mounttable::mount_points_of(&device)
        .map_err(|e| Error::Internal(format!("find the mounts of {}: {e}", device.display())))?;
    match mounts.first() {
        None => Ok(None),
        Some(path) => Ok(Some(freezer.quiesce(path, timeout)?.token)),
    }
}

type Answer<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl NodeAdmin for AdminService {
    async fn pair(&self, request: Request<wire::PairRequest>) -> Answer<wire::PairResponse> {
        let req = request.into_inner();
        let group = volume_id("group", &req.group)?;
        let side = match wire::Role::try_from(req.role) {
            Ok(wire::Role::Primary) => Side::Primary,
            Ok(wire::Role::Secondary) => Side::Dr,
            _ => {
                return Err(Error::Invalid {
                    field: "role",
                    value: req.role.to_string(),
                    expected: "ROLE_PRIMARY or ROLE_SECONDARY".into(),
                }
                .into())
            }
        };
        if !req.peer_address.is_empty() {
            listener_address("peer_address", &req.peer_address)?;
        }
        if !req.coordinator_address.is_empty() {
            listener_address("coordinator_address", &req.coordinator_address)?;
        }
        let spanning = !req.coordinator_address.is_empty() || !req.hosted_members.is_empty();
        if spanning && side != Side::Dr {
            return Err(Error::Invalid {
                field: "coordinator_address",
                value: req.coordinator_address.clone(),
                expected: "empty on a primary: a coordinator and hosted members are the DR's".into(),
            }
            .into());
        }
        let ascending = req.hosted_members.windows(2).all(|w| w[0] < w[1]);
        let inside = req.hosted_members.iter().all(|&m| (m as usize) < req.members.len());
        if !ascending || !inside {
            return Err(Error::Invalid {
                field: "hosted_members",
                value: format!("{:?}", req.hosted_members.iter().take(16).collect::<Vec<_>>()),
                expected: format!("member indexes below {}, ascending, each once", req.members.len()),
            }
            .into());
        }
        if u64::from(req.retained_points) > MAX_RETAINED {
            return Err(Error::Invalid {
                field: "retained_points",
                value: req.retained_points.to_string(),
                expected: format!("at most {MAX_RETAINED} committed epochs kept"),
            }
            .into());
        }
        let mut args = PairArgs {
            peer_address: (!req.peer_address.is_empty()).then_some(req.peer_address),
            generation: generation_of(req.generation),
            retained_points: req.retained_points,
            coordinator: (!req.coordinator_address.is_empty()).then_some(req.coordinator_address),
            hosted: req.hosted_members,
            ..PairArgs::default()
        };
        for m in req.members {
            let volume = volume_id("members.volume", &m.volume)?;
            if !m.peer_address.is_empty() {
                if side != Side::Primary {
                    return Err(Error::Invalid {
                        field: "members.peer_address",
                        value: m.peer_address,
                        expected: "empty on a DR: a member's DR listener is the primary's to name".into(),
                    }
                    .into());
                }
                listener_address("members.peer_address", &m.peer_address)?;
                args.member_peers.insert(volume.clone(), m.peer_address.clone());
            }
            args.volumes.push(volume);
            if side == Side::Dr {
                let bs = usize::try_from(m.block_size).unwrap_or(usize::MAX);
                let geo = Geometry::new(bs, m.blocks, m.region_blocks).map_err(|e| Error::Invalid {
                    field: "members",
                    value: format!(
                        "block size {}, {} blocks, regions of {}",
                        m.block_size, m.blocks, m.region_blocks
                    ),
                    expected: format!("a geometry the engine takes ({e})"),
                })?;
                let fs_type = match wire::FsType::try_from(m.fs_type) {
                    Ok(wire::FsType::Xfs) => "xfs",
                    _ => "ext4",
                };
                args.shapes.push(MemberShape {
                    geometry: geo,
                    mode: mode_of(m.mode)?,
                    size_bytes: m.size_bytes,
                    fs_type: fs_type.into(),
                });
            }
        }
        let record = self.blocking(move |hub, _, _| hub.pair(&group, side, args)).await?;
        Ok(Response::new(wire::PairResponse {
            members: record
                .members
                .iter()
                .map(|m| wire::GroupMember {
                    volume: m.volume.clone(),
                    block_size: m.block_size,
                    blocks: m.blocks,
                    region_blocks: m.region_blocks,
                    mode: mode_to(&m.mode).into(),
                    size_bytes: m.size_bytes,
                    fs_type: match m.fs_type.as_str() {
                        "xfs" => wire::FsType::Xfs,
                        _ => wire::FsType::Ext4,
                    }
                    .into(),
                    // The answer is what the DR's Pair takes: no listener.
                    peer_address: String::new(),
                })
                .collect(),
            generation: Some(generation_to(record.generation())),
        }))
    }

    async fn ready(&self, request: Request<wire::ReadyRequest>) -> Answer<wire::ReadyResponse> {
        let req = request.into_inner();
        let volume = volume_id("volume", &req.volume)?;
        self.blocking(move |hub, _, _| {
            let (closing, resync) = hub
                .primary(&volume)?
                .peek(|p| (p.closing().map(|(e, _)| e), p.resync_phase()));
            match (closing, resync) {
                (Some(e), _) => Err(Error::FailedPrecondition(format!(
                    "volume {volume:?}: epoch {e} is still being replicated; epoch {} would be refused",
                    req.epoch
                ))),
                (None, ResyncPhase::AwaitingHashes) => Err(Error::FailedPrecondition(format!(
                    "volume {volume:?} is failing back and its old site's hashes are not here yet: epoch {} would not carry the resync",
                    req.epoch
                ))),
                (None, _) => Ok(()),
            }
        })
        .await?;
        Ok(Response::new(wire::ReadyResponse {}))
    }

    async fn quiesce(&self, request: Request<wire::QuiesceRequest>) -> Answer<wire::QuiesceResponse> {
        let req = request.into_inner();
        let tok = token(&req.token)?;
        let timeout = deadline(req.deadline_unix_ms)?;
        let volumes = req
            .volumes
            .iter()
            .map(|v| volume_id("volumes", v))
            .collect::<Result<Vec<_>>>()?;
        let t = tok.clone();
        self.blocking(move |hub, freezer, frozen| {
            let mut done: Vec<(String, Option<String>)> = Vec::new();
            for v in &volumes {
                match quiesce_one(hub, freezer, v, timeout) {
                    Ok(f) => done.push((v.clone(), f)),
                    Err(e) => {
                        for (_, f) in done.iter().filter_map(|(v, f)| f.as_ref().map(|f| (v, f))) {
                            let _ = freezer.thaw(f);
                        }
                        return Err(e);
                    }
                }
            }
            lock(frozen).entry(t).or_default().extend(done);
            Ok(())
        })
        .await?;
        Ok(Response::new(wire::QuiesceResponse {
            token: tok,
            deadline_unix_ms: req.deadline_unix_ms,
        }))
    }

    async fn freeze(&self, request: Request<wire::FreezeRequest>) -> Answer<wire::FreezeResponse> {
        let req = request.into_inner();
        let volume = volume_id("volume", &req.volume)?;
        let tok = token(&req.token)?;
        self.blocking(move |hub, freezer, frozen| {
            let entry = lock(frozen)
                .get(&tok)
                .and_then(|vs| vs.iter().find(|(v, _)| *v == volume).map(|(_, f)| f.clone()))
                .ok_or_else(|| {
                    Error::FailedPrecondition(format!("volume {volume:?} is not quiesced under token {tok:?}"))
                })?;
            let primary = hub.primary(&volume)?;
            let flip = || {
                primary
                    .with(|p| p.freeze(req.epoch))
                    .map(drop)
                    .map_err(|e| Error::FailedPrecondition(format!("flip {volume:?} to epoch {}: {e}", req.epoch)))
            };
            match entry {
                Some(f) => freezer.while_frozen(&f, flip)?,
                None => flip(),
            }
        })
        .await?;
        Ok(Response::new(wire::FreezeResponse {}))
    }

    async fn thaw(&self, request: Request<wire::ThawRequest>) -> Answer<wire::ThawResponse> {
        let tok = token(&request.into_inner().token)?;
        let volumes = self
            .blocking(move |_, freezer, frozen| {
                let taken = lock(frozen).remove(&tok).unwrap_or_default();
                let mut first_error = None;
                for (v, f) in &taken {
                    if let Some(f) = f {
                        // Thawed already by the watchdog is not an error.
                        if let Err(e) = freezer.thaw(f) {
                            let e = Error::from(e);
                            if e.code() != tonic::Code::NotFound && e.code() != tonic::Code::DeadlineExceeded {
                                tracing::error!(volume = %v, error = %e, "thaw");
                                first_error.get_or_insert(e);
                            }
                        }
                    }
                }
                match first_error {
                    Some(e) => Err(e),
                    None => Ok(taken.into_iter().map(|(v, _)| v).collect()),
                }
            })
            .await?;
        Ok(Response::new(wire::ThawResponse { volumes }))
    }

    async fn abort(&self, request: Request<wire::AbortRequest>) -> Answer<wire::AbortResponse> {
        let req = request.into_inner();
        let volume = volume_id("volume", &req.volume)?;
        self.blocking(move |hub, _, _| {
            hub.primary(&volume)?
                .with(|p| p.abort(req.epoch))
                .map(drop)
                .map_err(|e| Error::FailedPrecondition(format!("abort epoch {} of {volume:?}: {e}", req.epoch)))
        })
        .await?;
        Ok(Response::new(wire::AbortResponse {}))
    }

    async fn status(&self, request: Request<wire::StatusRequest>) -> Answer<wire::StatusResponse> {
        let volume = volume_id("volume", &request.into_inner().volume)?;
        let s = self.blocking(move |hub, _, _| hub.status(&volume)).await?;
        let link = match &s.link {
            None => String::new(),
            Some(crate::replication::link::LinkState::Up) => "up".into(),
            Some(crate::replication::link::LinkState::Connecting) => "connecting".into(),
            Some(crate::replication::link::LinkState::Down { error }) => format!("down: {error}"),
        };
        let step = s.step();
        Ok(Response::new(wire::StatusResponse {
            step,
            role: match s.side {
                Side::Primary => wire::Role::Primary,
                Side::Dr => wire::Role::Secondary,
            }
            .into(),
            generation: Some(generation_to(s.generation)),
            open_epoch: 0,
            staged_epoch: s.staged.unwrap_or(0),
            committed_epoch: s.committed,
            pending_bytes: s.pending_bytes,
            oldest_unsent_write_unix_ms: 0,
            group: s.group,
            link,
            closing_epoch: s.closing.unwrap_or(0),
            retained_epochs: s.retained,
        }))
    }

    async fn commit(&self, _: Request<wire::CommitRequest>) -> Answer<wire::CommitResponse> {
        Err(Error::Unimplemented("Commit: the DR's coordinator commits by itself once every member staged").into())
    }

    /// Failover: this DR node's group becomes the primary, its volumes
    /// this node's, at the group's last committed epoch or at the retained
    /// point `point` names. `generation` names the promoting site (its
    /// `site_id`); the counter is the old one plus one.
    async fn promote(&self, request: Request<wire::PromoteRequest>) -> Answer<wire::PromoteResponse> {
        let req = request.into_inner();
        let group = volume_id("group", &req.group)?;
        let site = req
            .generation
            .map(|g| g.site_id)
            .filter(|s| *s != 0)
            .ok_or(Error::Missing {
                rpc: "Promote",
                field: "generation.site_id",
                hint: "the id of the site taking the primary role (not 0)",
            })?;
        let point = (req.point != 0).then_some(req.point);
        let epoch = self.blocking(move |hub, _, _| hub.promote(&group, site, point)).await?;
        Ok(Response::new(wire::PromoteResponse {
            consistent_epoch: epoch,
        }))
    }

    /// Failback, first step: this node's primary group becomes a DR group
    /// of the new primary (`generation`, as its Promote made it), every
    /// member detached first. The new primary's `Pair` naming this node's
    /// listener then resyncs it by comparing hashes.
    async fn demote(&self, request: Request<wire::DemoteRequest>) -> Answer<wire::DemoteResponse> {
        let req = request.into_inner();
        let group = volume_id("group", &req.group)?;
        let generation = generation_of(req.generation)
            .filter(|g| g.site != 0)
            .ok_or(Error::Missing {
                rpc: "Demote",
                field: "generation",
                hint: "the new primary's role generation, as its Promote made it",
            })?;
        let out = self
            .blocking(move |hub, _, _| hub.demote(&group, generation, req.discard_strays))
            .await?;
        Ok(Response::new(wire::DemoteResponse {
            final_epoch: out.final_epoch,
            candidate_blocks: out.candidate_blocks,
            strays_snapshots: out.strays_snapshots,
        }))
    }

    /// Test failover: clones of a DR group's members at its committed epoch.
    async fn rehearse(&self, request: Request<wire::RehearseRequest>) -> Answer<wire::RehearseResponse> {
        let group = volume_id("group", &request.into_inner().group)?;
        let (epoch, clones) = self.blocking(move |hub, _, _| hub.rehearse(&group)).await?;
        Ok(Response::new(wire::RehearseResponse { epoch, clones }))
    }

    /// The BLAKE3 digest of a DR replica's consistent image at its committed
    /// epoch (`epoch` 0: whatever it is), read at one cut of the group.
    async fn verify(&self, request: Request<wire::VerifyRequest>) -> Answer<wire::VerifyResponse> {
        let req = request.into_inner();
        let volume = volume_id("volume", &req.volume)?;
        let (epoch, hash) = self
            .blocking(move |hub, _, _| {
                hub.with_replica(&volume, |r, record| {
                    if req.epoch != 0 && record.committed != req.epoch {
                        return Err(Error::FailedPrecondition(format!(
                            "the group stands at epoch {}, not {}",
                            record.committed, req.epoch
                        )));
                    }
                    // The image read below must be the record's epoch.
                    if r.committed_group() != record.committed || r.resync_candidates().is_some() {
                        return Err(Error::FailedPrecondition(format!(
                            "the group committed epoch {}, but this member's image is not that epoch's yet (folded {}{})",
                            record.committed,
                            r.committed_group(),
                            if r.resync_candidates().is_some() { ", awaiting a resync" } else { "" }
                        )));
                    }
                    let geo = r.store().geometry();
                    let bs = geo.block_size() as u64;
                    let blocks = match req.bytes {
                        0 => geo.blocks(),
                        n if n % bs == 0 && n / bs <= geo.blocks() => n / bs,
                        n => {
                            return Err(Error::Invalid {
                                field: "bytes",
                                value: n.to_string(),
                                expected: format!("a multiple of {bs} up to {}", geo.bytes()),
                            })
                        }
                    };
                    let mut hasher = blake3::Hasher::new();
                    let mut block = vec![0u8; geo.block_size()];
                    for b in 0..blocks {
                        r.store()
                            .read_image(b, &mut block)
                            .map_err(|e| Error::Internal(format!("read block {b} of the replica: {e}")))?;
                        hasher.update(&block);
                    }
                    Ok((record.committed, hasher.finalize().as_bytes().to_vec()))
                })?
            })
            .await?;
        Ok(Response::new(wire::VerifyResponse { epoch, hash }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_short_words_of_letters_digits_dashes() {
        assert!(token("0123abcd-ef_G").is_ok());
        for bad in ["", "../x", "a b", &"x".repeat(65), "tok\n"] {
            assert!(token(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quiesce_deadlines_are_ahead_and_bounded() {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970");
        let ms = |d: Duration| u64::try_from(d.as_millis()).expect("fits");
        assert!(deadline(ms(now + Duration::from_secs(5))).is_ok());
        for bad in [
            0,
            ms(now) - 1000,
            ms(now + MAX_QUIESCE_TIMEOUT + Duration::from_secs(60)),
        ] {
            let e = deadline(bad).expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn peer_addresses_are_host_and_port() {
        for ok in ["198.18.2.1:7443", "dr-0.floe.example:7443", "[fd00::1]:7443"] {
            assert!(listener_address("peer_address", ok).is_ok(), "{ok}");
        }
        for bad in ["", "198.18.2.1", "host:0", "host:99999", ":7443", "a b:1", "h/../x:1"] {
            assert!(listener_address("coordinator_address", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn modes_travel_both_ways_and_unknown_ones_are_refused() {
        for m in [Mode::Continuous, Mode::Log, Mode::Interval] {
            assert_eq!(mode_of(mode_to(m.name()).into()).expect("known"), m);
        }
        assert!(mode_of(0).is_err());
        assert!(mode_of(99).is_err());
    }
}
