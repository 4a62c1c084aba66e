//! Replication hosted by the data plane: the sender of every paired
//! primary volume this process serves, the replicas and the group
//! coordinator of every DR group paired here, the replication listener,
//! and the node's side of the group freeze (`node.proto`'s `NodeAdmin`).
//!
//! # Layout
//!
//! - [`pairings`]: the groups this node is paired in, on disk;
//! - [`admin`]: the `NodeAdmin` service over [`Replication`];
//! - `coordinator`: the `GroupCoordinator` service, on the coordinator
//!   listener, over the coordinators this node runs;
//! - `steps`: the role-change steps as metrics, read at each scrape;
//! - here: [`Replication`], which owns the streams and the DR groups.
//!
//! # Lifecycle
//!
//! A primary volume's sender runs while the volume is attached here: it
//! starts at `Pair` (the volume must be attached), at every later attach
//! and at a successor's takeover, and stops before every detach (the plane
//! tells this module through [`AttachObserver`]), so the engine is never
//! held by a stream once its store is let go. A DR group's replicas and
//! coordinator live from `Pair` on, reopened at every start. Everything
//! runs on the API's runtime; engine calls go to its blocking pool.
//!
//! A DR group's replicas may span the site's nodes: the node named at
//! `Pair` runs the coordinator ([`Decider::Here`]) and serves it on its
//! coordinator listener (`coordinator`), the others follow it
//! ([`Decider::Away`], `replication::remote`).
//!
//! # Not yet
//!
//! Rehearse, retained points and failback of a group spanning DR nodes;
//! membership is fixed at `Pair`; a pairing starts from empty volumes on
//! both sides.

pub mod admin;
mod coordinator;
pub mod pairings;
mod steps;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use floe_engine::{Geometry, Mode, Replica, ResyncPhase, RoleGeneration, VolumeStore};
use leaky_bucket::RateLimiter;
use tokio_util::sync::CancellationToken;

use self::pairings::{GroupRecord, MemberRecord, Pairings, Side};
use crate::node::error::{chain, Error, Result};
use crate::node::local::LocalVolumes;
use crate::node::plane::volumes::{AttachObserver, Volumes};
use crate::replication::endpoint::{
    CoordinatorPort, HostedPrimary, HostedReplica, LocalCoordinator, MemberSink, ReplicaEnd,
};
use crate::replication::handshake::Pairing;
use crate::replication::link::{LinkHandle, LinkMetrics, LinkState};
use crate::replication::listener;
use crate::replication::receiver::{Paired, Receivers};
use crate::replication::remote::{RemoteConfig, RemoteCoordinator};
use crate::replication::sender::{self, SenderConfig};
use crate::replication::tls::{SiteTls, TlsSource};
use crate::store::{FileDecisionLog, FileStore};

/// How this node replicates (the `--replication-*` flags of `serve`).
#[derive(Clone, Debug, Default)]
pub struct ReplicationConfig {
    /// Where the DR side listens for streams (none: this node takes none).
    pub listen: Option<SocketAddr>,
    /// This node's replication identity and the peer site's name (needed
    /// to listen or to pair a primary group).
    pub tls: Option<SiteTls>,
    /// Bytes a second this node's senders may send together.
    pub limit_bytes_per_second: Option<u64>,
    /// This node's identity towards the other nodes of its site: its
    /// replication certificate and key, trusting this site's CA and name
    /// (needed to reach a group's coordinator on another node, or to
    /// serve one).
    pub site_tls: Option<SiteTls>,
    /// Where this node serves the coordinators it runs to the site's other
    /// nodes (none: it serves none).
    pub coordinator_listen: Option<SocketAddr>,
}

/// A running sender.
struct Stream {
    volume: String,
    cancel: CancellationToken,
    link: LinkHandle,
}

/// Where a DR group's decisions are made.
#[derive(Clone)]
enum Decider {
    /// In this process (this node runs the group's coordinator).
    Here(Arc<LocalCoordinator<FileDecisionLog>>),
    /// On another node of the site, reached over its coordinator listener.
    Away(Arc<RemoteCoordinator>),
}

impl Decider {
    /// Runs `f` on the decision record (as this node knows it) while no
    /// decision reaches this node's replicas.
    fn with_decisions_held<R>(&self, f: impl FnOnce(&floe_engine::DecisionRecord) -> R) -> R {
        match self {
            Decider::Here(c) => c.with_decisions_held(f),
            Decider::Away(c) => c.with_decisions_held(f),
        }
    }

    /// Where this node's receivers send their replicas' reports.
    fn port(&self) -> Arc<dyn CoordinatorPort> {
        match self {
            Decider::Here(c) => Arc::clone(c) as _,
            Decider::Away(c) => Arc::clone(c) as _,
        }
    }
}

/// A DR group hosted here.
struct DrGroup {
    decider: Decider,
    /// The replicas this node holds, in member order: member, volume, engine.
    replicas: Vec<(u32, String, Arc<HostedReplica<FileStore>>)>,
}

impl DrGroup {
    /// This node's replica of member `m`.
    fn replica(&self, m: u32) -> Option<&Arc<HostedReplica<FileStore>>> {
        self.replicas.iter().find(|(i, _, _)| *i == m).map(|(_, _, r)| r)
    }

    /// The group epochs every member can still be promoted at: its retained
    /// points and its last fold (a point once a decided epoch folds), ascending.
    fn retained_points(&self) -> Vec<u64> {
        let mut common: Option<BTreeSet<u64>> = None;
        for (_, _, r) in &self.replicas {
            let points: BTreeSet<u64> = r.with(|r| {
                let mut p = r.retained_points();
                p.push(r.committed_group());
                p.into_iter().filter(|&e| e > 0).collect()
            });
            common = Some(match common {
                None => points,
                Some(c) => c.intersection(&points).copied().collect(),
            });
        }
        common.unwrap_or_default().into_iter().collect()
    }
}

#[derive(Default)]
struct State {
    pairings: Pairings,
    /// Senders by store.
    streams: HashMap<String, Stream>,
    groups: HashMap<String, DrGroup>,
    /// DR groups a `Rehearse` is cloning.
    rehearsing: BTreeSet<String>,
}

/// The node's replication, hosted by the data plane.
pub struct Replication {
    dir: PathBuf,
    catalog: LocalVolumes,
    plane: Arc<Volumes>,
    tls: Option<Arc<TlsSource>>,
    site_tls: Option<Arc<TlsSource>>,
    /// Whether this node serves its coordinators to the site's other nodes.
    serves_coordinators: bool,
    limit: Option<Arc<RateLimiter>>,
    rt: tokio::runtime::Handle,
    sender_metrics: LinkMetrics,
    receivers: Receivers,
    incarnation: u64,
    state: Mutex<State>,
}

fn internal(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Internal(format!("{what}: {e}"))
}

impl Replication {
    /// Loads the pairings under `<data_dir>/replication`, reopens every DR
    /// group, starts the listener if configured and the senders of the
    /// attached paired volumes; from then on the plane tells it of
    /// attaches and detaches.
    pub(crate) fn start(
        data_dir: &std::path::Path,
        cfg: &ReplicationConfig,
        catalog: LocalVolumes,
        plane: Arc<Volumes>,
        rt: tokio::runtime::Handle,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Self>> {
        let dir = data_dir.join("replication");
        crate::dataplane::localsock::private_dir(&dir).map_err(internal("create the replication directory"))?;
        let incarnation = next_incarnation(&dir)?;
        let load = |files: &Option<SiteTls>, what: &str| {
            files
                .clone()
                .map(TlsSource::load)
                .transpose()
                .map_err(|e| Error::Internal(format!("load the {what} TLS files: {}", chain(&e))))
        };
        let tls = load(&cfg.tls, "replication")?;
        let site_tls = load(&cfg.site_tls, "site")?;
        let metrics = |side| {
            LinkMetrics::register(registry, side)
                .map_err(|e| Error::Internal(format!("register the replication metrics: {e}")))
        };
        let hub = Arc::new(Replication {
            dir: dir.clone(),
            catalog,
            plane: Arc::clone(&plane),
            tls,
            site_tls,
            serves_coordinators: cfg.coordinator_listen.is_some(),
            limit: cfg.limit_bytes_per_second.map(sender::bandwidth_limit),
            rt,
            sender_metrics: metrics("sender")?,
            receivers: Receivers::new(metrics("receiver")?),
            incarnation,
            state: Mutex::default(),
        });
        steps::StepCollector::new(Arc::downgrade(&hub))
            .and_then(|c| registry.register(Box::new(c)))
            .map_err(|e| Error::Internal(format!("register the role-change metrics: {e}")))?;
        let pairings = Pairings::load(&dir).map_err(internal("read the pairings"))?;
        let (mut promotions, mut demotions) = (Vec::new(), Vec::new());
        for (name, g) in &pairings.groups {
            match (g.side, g.promoting) {
                (Side::Dr, None) => {
                    let group = hub.open_dr_group(name, g, false)?;
                    hub.lock().groups.insert(name.clone(), group);
                }
                (Side::Dr, Some(site)) => promotions.push((name.clone(), site)),
                (Side::Primary, _) if g.demoting.is_some() => demotions.push((name.clone(), g.clone())),
                (Side::Primary, _) => {}
            }
        }
        hub.receivers.set_primaries(primaries(&pairings));
        hub.lock().pairings = pairings;
        for (name, site) in promotions {
            tracing::warn!(group = %name, "finishing a promotion the previous data plane did not");
            if let Err(e) = hub.promote(&name, site, None) {
                tracing::error!(group = %name, error = %chain(&e), "finish the promotion (call Promote again)");
            }
        }
        for (name, record) in demotions {
            tracing::warn!(group = %name, "finishing a demotion the previous data plane did not");
            if let Err(e) = hub.finish_demotion(&name, &record) {
                tracing::error!(group = %name, error = %chain(&e), "finish the demotion (call Demote again)");
            }
        }
        if let Some(addr) = cfg.listen {
            hub.listen(addr)?;
        }
        if let Some(addr) = cfg.coordinator_listen {
            hub.serve_coordinators(addr)?;
        }
        for (store, primary) in plane.hosted() {
            hub.attached(&store, &primary);
        }
        plane.observe(Arc::clone(&hub) as Arc<dyn AttachObserver>);
        Ok(hub)
    }

    /// Writes the pairings and tells the listener which volumes are
    /// primary here (a stream for one of them is a split brain).
    fn save(&self, st: &State) -> Result<()> {
        st.pairings.save(&self.dir).map_err(internal("write the pairings"))?;
        self.receivers.set_primaries(primaries(&st.pairings));
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A TCP listener on `addr` (`what` names it in errors), registered with
    /// the runtime.
    fn bind(&self, addr: SocketAddr, what: &str) -> Result<tokio::net::TcpListener> {
        let _entered = self.rt.enter();
        let fail = |step: &str| {
            let what = what.to_owned();
            let step = step.to_owned();
            move |e: std::io::Error| Error::Internal(format!("{step} {what} on {addr}: {e}"))
        };
        let std = std::net::TcpListener::bind(addr).map_err(fail("bind"))?;
        std.set_nonblocking(true).map_err(fail("make non-blocking"))?;
        tokio::net::TcpListener::from_std(std).map_err(fail("register"))
    }

    fn listen(&self, addr: SocketAddr) -> Result<()> {
        let tls = self.tls.clone().ok_or_else(|| Error::Missing {
            rpc: "--replication-listen",
            field: "--replication-cert",
            hint: "the replication listener needs this node's certificate, key, the peer site's CA and name",
        })?;
        let listener = self.bind(addr, "the replication listener")?;
        let receivers = self.receivers.clone();
        tracing::info!(%addr, "replication listener serving");
        self.rt.spawn(async move {
            if let Err(e) = listener::serve(listener, tls, receivers, std::future::pending()).await {
                tracing::error!(error = %chain(&e), "the replication listener ended");
            }
        });
        Ok(())
    }

    /// Serves the coordinators this node runs to the site's other nodes on
    /// `addr` (mutual TLS: this site's CA and name).
    fn serve_coordinators(self: &Arc<Self>, addr: SocketAddr) -> Result<()> {
        let tls = self.site_tls.clone().ok_or_else(|| Error::Missing {
            rpc: "--coordinator-listen",
            field: "--site-ca",
            hint: "the coordinator listener needs this site's CA and name (--site-ca, --site-name) besides the replication certificate",
        })?;
        let listener = self.bind(addr, "the coordinator listener")?;
        let router =
            tonic::transport::Server::builder().add_service(coordinator::CoordinatorService::server(Arc::clone(self)));
        let refused = self.receivers.unknown.clone();
        tracing::info!(%addr, "coordinator listener serving");
        self.rt.spawn(async move {
            let counted = move || refused.reject(crate::replication::link::Reason::Identity);
            if let Err(e) = listener::serve_router(listener, tls, router, counted, std::future::pending()).await {
                tracing::error!(error = %chain(&e), "the coordinator listener ended");
            }
        });
        Ok(())
    }

    /// The coordinator of DR group `group`, if this node runs it.
    fn coordinator_of(&self, group: &str) -> Option<Arc<LocalCoordinator<FileDecisionLog>>> {
        match &self.lock().groups.get(group)?.decider {
            Decider::Here(c) => Some(Arc::clone(c)),
            Decider::Away(_) => None,
        }
    }

    /// Pairs `group` on this node; the same request again is accepted.
    pub(crate) fn pair(&self, group: &str, side: Side, req: PairArgs) -> Result<GroupRecord> {
        let record = match side {
            Side::Primary => self.primary_record(&req)?,
            Side::Dr => dr_record(&req)?,
        };
        {
            let st = self.lock();
            if let Some(existing) = st.pairings.groups.get(group) {
                if *existing == record || same_primary_pairing(existing, &record) {
                    return Ok(existing.clone());
                }
                if resumes_failback(existing, &record) {
                    drop(st);
                    return self.fail_back(group, record);
                }
                return Err(Error::AlreadyExists {
                    kind: "paired group",
                    name: group.to_owned(),
                    existing: format!("{existing:?}"),
                    requested: format!("{record:?}"),
                });
            }
            for m in &record.members {
                if let Some((other, _, _)) = st.pairings.member_of(&m.volume) {
                    return Err(Error::FailedPrecondition(format!(
                        "volume {:?} is paired in group {other:?} already: a volume belongs to one group",
                        m.volume
                    )));
                }
            }
        }
        if side == Side::Dr && record.coordinator.is_some() && self.site_tls.is_none() {
            return Err(Error::FailedPrecondition(format!(
                "group {group:?} has its coordinator on another node, but this data plane has no site identity: start it with --site-ca and --site-name"
            )));
        }
        if side == Side::Dr && record.coordinator.is_none() && !record.hosted.is_empty() && !self.serves_coordinators {
            return Err(Error::FailedPrecondition(format!(
                "group {group:?} has members on other nodes and its coordinator here, but this data plane serves no coordinator listener: start it with --coordinator-listen"
            )));
        }
        let dr = match side {
            Side::Dr => Some(self.open_dr_group(group, &record, true)?),
            Side::Primary => None,
        };
        let mut st = self.lock();
        st.pairings.groups.insert(group.to_owned(), record.clone());
        self.save(&st)?;
        if let Some(dr) = dr {
            st.groups.insert(group.to_owned(), dr);
        }
        drop(st);
        if side == Side::Primary {
            self.start_streams(&record);
        }
        tracing::info!(group, ?side, members = record.members.len(), "group paired");
        Ok(record)
    }

    /// Starts the failback of promoted group `group`: its streams go to the
    /// demoted old site at `record.peer_address` from now on.
    fn fail_back(&self, group: &str, record: GroupRecord) -> Result<GroupRecord> {
        let mut st = self.lock();
        let g = st
            .pairings
            .groups
            .get_mut(group)
            .ok_or_else(|| Error::Internal(format!("group {group:?} vanished")))?;
        g.peer_address = record.peer_address.clone();
        g.member_peers = record.member_peers.clone();
        let saved = g.clone();
        self.save(&st)?;
        drop(st);
        self.start_streams(&record);
        tracing::info!(group, peer = ?record.peer_address, "failback: the group streams to its old primary site");
        Ok(saved)
    }

    /// Starts the sender of every member of primary group `record` attached here.
    fn start_streams(&self, record: &GroupRecord) {
        let hosted = self.plane.hosted();
        for m in &record.members {
            let Some(store) = self.catalog.store_of(&m.volume) else {
                continue;
            };
            if let Some((_, p)) = hosted.iter().find(|(s, _)| *s == store) {
                self.attached(&store, p);
            }
        }
    }

    /// The record of a primary group: each member's geometry, mode and
    /// generation from its engine (the volume must be attached here).
    fn primary_record(&self, req: &PairArgs) -> Result<GroupRecord> {
        let peer = req.peer_address.clone().ok_or(Error::Missing {
            rpc: "Pair",
            field: "peer_address",
            hint: "the DR node's replication listener, HOST:PORT",
        })?;
        if self.tls.is_none() {
            return Err(Error::FailedPrecondition(
                "this data plane has no replication identity: start it with --replication-cert, --replication-key, --replication-ca and --replication-peer".into(),
            ));
        }
        let hosted = self.plane.hosted();
        let mut members = Vec::new();
        let mut generation = None;
        for volume in &req.volumes {
            let store = self
                .catalog
                .store_of(volume)
                .ok_or_else(|| Error::VolumeNotFound(volume.clone()))?;
            let (_, primary) = hosted.iter().find(|(s, _)| *s == store).ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "volume {volume:?} is not attached on this node: stage it (or attach it) before pairing"
                ))
            })?;
            let (geo, mode, gen) = primary.peek(|p| (p.geometry(), p.mode(), p.generation()));
            let v = self
                .catalog
                .ready_volume(volume)
                .ok_or_else(|| Error::VolumeNotFound(volume.clone()))?;
            if generation.is_some_and(|g| g != gen) {
                return Err(Error::FailedPrecondition(format!(
                    "volume {volume:?} has role generation {gen:?}, unlike the group's other volumes"
                )));
            }
            generation = Some(gen);
            let shape = MemberShape {
                geometry: geo,
                mode,
                size_bytes: v.size_bytes,
                fs_type: v.params.fs_type.name().to_owned(),
            };
            members.push(member_record(volume, &shape));
        }
        let gen = generation.ok_or(Error::Missing {
            rpc: "Pair",
            field: "members",
            hint: "the group's volumes, in member order",
        })?;
        Ok(GroupRecord {
            side: Side::Primary,
            members,
            generation: (gen.counter, gen.site),
            peer_address: Some(peer),
            promoting: None,
            promoting_point: None,
            promoted_at: None,
            retained_points: req.retained_points,
            demoting: None,
            coordinator: None,
            hosted: Vec::new(),
            member_peers: req.member_peers.clone(),
        })
    }

    /// Opens (or, `create`, makes) the replicas of a DR group and its
    /// coordinator, and offers them to the listener.
    fn open_dr_group(&self, name: &str, g: &GroupRecord, create: bool) -> Result<DrGroup> {
        let dir = self.dir.join("dr");
        crate::dataplane::localsock::private_dir(&dir).map_err(internal("create the DR directory"))?;
        let store_err = |op: &'static str, volume: &str| {
            let volume = volume.to_owned();
            move |e: crate::store::Error| Error::Internal(format!("{op} the replica of {volume:?}: {}", chain(&e)))
        };
        let mut replicas = Vec::new();
        for (i, m) in g.members.iter().enumerate() {
            let member = i as u32;
            if !g.hosts(member) {
                continue;
            }
            let (geo, _) = m
                .shape()
                .map_err(|e| Error::Internal(format!("member {:?}: {e}", m.volume)))?;
            let engine = if create {
                let store = FileStore::create(&dir, &m.volume, geo).map_err(store_err("create", &m.volume))?;
                Replica::create(store, geo, member, g.generation())
            } else {
                let store = FileStore::open(&dir, &m.volume).map_err(store_err("open", &m.volume))?;
                Replica::open(store, geo, member)
            }
            .map_err(|e| Error::Internal(format!("the replica engine of {:?}: {e}", m.volume)))?;
            let mut engine = engine;
            engine.set_retention(g.retained_points as usize);
            replicas.push((member, m.volume.clone(), Arc::new(HostedReplica::new(engine))));
        }
        let decider = match &g.coordinator {
            None => {
                let sinks: Vec<MemberSink> = (0..g.members.len() as u32)
                    .map(|m| match replicas.iter().find(|(i, _, _)| *i == m) {
                        Some((_, _, r)) => MemberSink::Here(Arc::clone(r) as Arc<dyn ReplicaEnd>),
                        None => MemberSink::Away,
                    })
                    .collect();
                let log = FileDecisionLog::open(&dir, name)
                    .map_err(|e| Error::Internal(format!("open the decision log of {name:?}: {}", chain(&e))))?;
                Decider::Here(Arc::new(LocalCoordinator::open(log, sinks).map_err(|e| {
                    Error::Internal(format!("open the coordinator of {name:?}: {}", chain(&e)))
                })?))
            }
            Some(address) => {
                let tls = self.site_tls.clone().ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "group {name:?} has its coordinator on {address}, but this data plane has no site identity: start it with --site-ca and --site-name"
                    ))
                })?;
                let members = replicas
                    .iter()
                    .map(|(m, _, r)| (*m, Arc::clone(r) as Arc<dyn ReplicaEnd>))
                    .collect();
                Decider::Away(RemoteCoordinator::start(
                    RemoteConfig {
                        group: name.to_owned(),
                        address: address.clone(),
                        tls,
                        members,
                    },
                    &self.rt,
                ))
            }
        };
        // The redo, now: an epoch a replica staged before the restart is
        // folded (or dropped) as the record decided, not at its primary's
        // next frame. Until then the record would name an epoch whose image
        // that replica does not hold yet (Verify and Rehearse read it). A
        // coordinator on another node takes the reports when it can.
        let port = decider.port();
        for (_, volume, r) in &replicas {
            for msg in r.with(|r| r.take_to_coordinator()) {
                port.report(msg).map_err(|e| {
                    Error::Internal(format!("redo the decisions of {name:?} for {volume:?}: {}", chain(&e)))
                })?;
            }
        }
        for (member, volume, r) in &replicas {
            let (geometry, mode) = g.members[*member as usize].shape().map_err(Error::Internal)?;
            self.receivers.add(Paired {
                pairing: Pairing {
                    group: name.to_owned(),
                    volume: volume.clone(),
                    geometry,
                    mode,
                },
                end: Arc::clone(r) as Arc<dyn ReplicaEnd>,
                coordinator: Arc::clone(&port),
                incarnation: self.incarnation,
            });
        }
        Ok(DrGroup { decider, replicas })
    }

    /// Promotes DR group `group` on this node (failover): every member at
    /// the group's last committed epoch (a staged epoch the group decided
    /// is folded, any other dropped) or at retained point `point`, under a
    /// generation newer than the old primary's (`site` the promoting site's
    /// id), and made a CSI volume of this node, ready to stage. Refused
    /// before the group's first commit, and for a point not every member
    /// retains. The intent is recorded first, so a crash in the middle is
    /// finished at the next start (or by calling again); calling again
    /// after it finished answers the same epoch.
    pub(crate) fn promote(&self, group: &str, site: u64, point: Option<u64>) -> Result<u64> {
        let dr_dir = self.dir.join("dr");
        // A node that follows the group's coordinator on another node
        // promotes to the record that node was promoted at: asked first, so
        // nothing changes here before it exists.
        let away_final = self.away_final_record(group)?;
        let record = {
            let mut st = self.lock();
            let g = st
                .pairings
                .groups
                .get(group)
                .cloned()
                .ok_or_else(|| Error::FailedPrecondition(format!("group {group:?} is not paired on this node")))?;
            match (g.side, g.promoted_at) {
                (Side::Primary, Some(epoch)) if point.is_none_or(|p| p == epoch) => return Ok(epoch),
                (Side::Primary, Some(epoch)) => {
                    return Err(Error::FailedPrecondition(format!(
                        "group {group:?} was promoted at epoch {epoch} already; it cannot go back to {}",
                        point.unwrap_or(0)
                    )))
                }
                (Side::Primary, None) => {
                    return Err(Error::FailedPrecondition(format!(
                        "this node is the primary of group {group:?}: promote its DR node"
                    )))
                }
                (Side::Dr, _) => {}
            }
            if g.spans_nodes() && point.is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "group {group:?} spans DR nodes: promoting it to a retained point is not built yet (docs/replication.md); promote it at its last committed epoch"
                )));
            }
            if g.promoting.is_none() {
                let dr = st.groups.get(group);
                let committed = match &away_final {
                    Some(record) => record.committed,
                    None => dr
                        .map(|dr| dr.decider.with_decisions_held(|r| r.committed))
                        .unwrap_or(0),
                };
                if committed == 0 {
                    return Err(Error::FailedPrecondition(format!(
                        "group {group:?} has not committed a first epoch: the DR holds no consistent image to promote"
                    )));
                }
                let point = point.filter(|&p| p != committed);
                if let (Some(p), Some(dr)) = (point, dr) {
                    let points = dr.retained_points();
                    if !points.contains(&p) {
                        return Err(Error::FailedPrecondition(format!(
                                "group {group:?} cannot be promoted at epoch {p}: every member retains only {points:?} besides the last committed epoch, {committed}"
                            )));
                    }
                }
                let g = st.pairings.groups.get_mut(group).expect("looked up above");
                g.promoting = Some(site);
                g.promoting_point = point;
                self.save(&st)?;
            }
            let g = st.pairings.groups.get(group).cloned().expect("looked up above");
            let removed = st.groups.remove(group);
            let held: Vec<Weak<HostedReplica<FileStore>>> = removed
                .as_ref()
                .map(|dr| dr.replicas.iter().map(|(_, _, r)| Arc::downgrade(r)).collect())
                .unwrap_or_default();
            // The coordinator decides no more: a report of another node
            // under way is refused, so the record read below is final.
            if let Some(DrGroup {
                decider: Decider::Here(c),
                ..
            }) = &removed
            {
                c.close();
            }
            (g, held)
        };
        let (record, held) = record;
        // No stream, no coordinator: then nothing holds the replicas.
        for (i, m) in record.members.iter().enumerate() {
            if record.hosts(i as u32) {
                self.receivers.remove(&m.volume);
            }
        }
        wait_released(&held)?;
        let decision = match away_final {
            Some(record) => record,
            None => {
                let log = FileDecisionLog::open(&dr_dir, group)
                    .map_err(|e| Error::Internal(format!("open the decision log of {group:?}: {}", chain(&e))))?;
                floe_engine::Coordinator::open(log, record.members.len() as u32)
                    .map_err(|e| Error::Internal(format!("read the decisions of {group:?}: {}", chain(&e))))?
                    .record()
                    .clone()
            }
        };
        let epoch = record.promoting_point.unwrap_or(decision.committed);
        if let Some(p) = point.filter(|&p| p != epoch) {
            return Err(Error::FailedPrecondition(format!(
                "group {group:?} is being promoted at epoch {epoch} already, not {p}: call Promote with that point (or none)"
            )));
        }
        let mut generation = record.generation();
        for (i, m) in record.members.iter().enumerate() {
            if !record.hosts(i as u32) {
                continue;
            }
            let from = dr_dir.join("volumes").join(&m.volume);
            let (geo, mode) = m.shape().map_err(Error::Internal)?;
            if from.exists() {
                let store = FileStore::open(&dr_dir, &m.volume)
                    .map_err(|e| Error::Internal(format!("open the replica of {:?}: {}", m.volume, chain(&e))))?;
                let meta = store
                    .get_meta()
                    .map_err(|e| Error::Internal(format!("{:?}: {e}", m.volume)))?;
                if meta
                    .as_ref()
                    .is_some_and(|meta| meta.role == floe_engine::store::Role::Replica)
                {
                    let primary = Replica::open(store, geo, i as u32)
                        .and_then(|r| r.promote_at(&decision, site, mode, record.promoting_point))
                        .map_err(|e| Error::FailedPrecondition(format!("promote {:?}: {e}", m.volume)))?;
                    generation = primary.generation();
                } else if let Some(meta) = meta {
                    generation = meta.generation;
                }
            }
            self.catalog
                .adopt_promoted(csi_volume(&m.volume, m, geo, mode), &from, geo.bytes())?;
        }
        let mut st = self.lock();
        if let Some(g) = st.pairings.groups.get_mut(group) {
            g.side = Side::Primary;
            g.peer_address = None;
            g.member_peers.clear();
            g.generation = (generation.counter, generation.site);
            g.promoting = None;
            g.promoting_point = None;
            g.promoted_at = Some(epoch);
        }
        self.save(&st)?;
        tracing::info!(
            group,
            epoch,
            committed = decision.committed,
            ?generation,
            "group promoted: its volumes are this node's"
        );
        Ok(epoch)
    }

    /// The record a follower of `group`'s coordinator promotes to: asked of
    /// the coordinator's node, which answers once it has been promoted.
    /// None when this node runs the coordinator, or is not a DR of `group`.
    fn away_final_record(&self, group: &str) -> Result<Option<floe_engine::DecisionRecord>> {
        let address = {
            let st = self.lock();
            match st.pairings.groups.get(group) {
                Some(g) if g.side == Side::Dr => match &g.coordinator {
                    Some(address) => address.clone(),
                    None => return Ok(None),
                },
                _ => return Ok(None),
            }
        };
        let tls = self.site_tls.clone().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "group {group:?} has its coordinator on {address}, but this data plane has no site identity: start it with --site-ca and --site-name"
            ))
        })?;
        // Called from a blocking thread (an API call, or the start).
        self.rt
            .block_on(crate::replication::remote::final_record(&address, &tls, group))
            .map(Some)
            .map_err(|e| {
                Error::FailedPrecondition(format!(
                    "group {group:?} cannot be promoted on this node yet: {e}; promote the node running its coordinator ({address}) first"
                ))
            })
    }

    /// The record this node's coordinator of `group` was promoted at, for
    /// the group's other DR nodes (`GroupCoordinator.FinalRecord`).
    pub(crate) fn final_record(&self, group: &str) -> Result<floe_engine::DecisionRecord> {
        let st = self.lock();
        let g = st
            .pairings
            .groups
            .get(group)
            .ok_or_else(|| Error::FailedPrecondition(format!("group {group:?} is not paired on this node")))?;
        if g.coordinator.is_some() || !g.spans_nodes() {
            return Err(Error::FailedPrecondition(format!(
                "this node does not run the coordinator of group {group:?} for other nodes"
            )));
        }
        let closed = g.promoted_at.is_some() || (g.promoting.is_some() && !st.groups.contains_key(group));
        if !closed {
            return Err(Error::FailedPrecondition(format!(
                "group {group:?} has not been promoted on its coordinator's node"
            )));
        }
        let members = g.members.len() as u32;
        drop(st);
        let log = FileDecisionLog::open(&self.dir.join("dr"), group)
            .map_err(|e| Error::Internal(format!("open the decision log of {group:?}: {}", chain(&e))))?;
        Ok(floe_engine::Coordinator::open(log, members)
            .map_err(|e| Error::Internal(format!("read the decisions of {group:?}: {}", chain(&e))))?
            .record()
            .clone())
    }

    /// Demotes primary group `group` on this node (the first step of a
    /// failback, or of a switchover): every member, detached, becomes a
    /// replica of the new primary (`generation`, newer than this node's),
    /// its writes after the last committed epoch kept as a local snapshot
    /// unless `discard_strays` and offered as failback candidates; the
    /// group becomes a DR group of this node, waiting for the new primary's
    /// stream. The intent is recorded first, so a crash in the middle is
    /// finished at the next start (or by calling again); calling again
    /// after it finished answers the same.
    pub(crate) fn demote(&self, group: &str, generation: RoleGeneration, discard_strays: bool) -> Result<Demoted> {
        let record = {
            let mut st = self.lock();
            let g = st
                .pairings
                .groups
                .get_mut(group)
                .ok_or_else(|| Error::FailedPrecondition(format!("group {group:?} is not paired on this node")))?;
            match (g.side, g.demoting) {
                (Side::Dr, _) if g.generation() == generation => return Ok(demoted_state(st.groups.get(group), 0)),
                (Side::Dr, _) => {
                    return Err(Error::FailedPrecondition(format!(
                        "this node is the DR of group {group:?} under generation {:?}, not {generation:?}",
                        g.generation()
                    )))
                }
                (Side::Primary, Some(d)) if d.generation != (generation.counter, generation.site) => {
                    return Err(Error::FailedPrecondition(format!(
                        "group {group:?} is being demoted to generation {:?} already, not {generation:?}",
                        d.generation
                    )))
                }
                (Side::Primary, Some(_)) => {}
                (Side::Primary, None) => {
                    if generation <= g.generation() {
                        return Err(Error::FailedPrecondition(format!(
                            "generation {generation:?} is not newer than this node's {:?}: a demotion names the new primary's generation, as its Promote made it",
                            g.generation()
                        )));
                    }
                    for m in &g.members {
                        if let Some(store) = self.catalog.store_of(&m.volume) {
                            if self.plane.hosted().iter().any(|(s, _)| *s == store) {
                                return Err(Error::FailedPrecondition(format!(
                                    "volume {:?} is attached on this node: unstage it (stop its workload) before demoting; a demoted volume takes no writes",
                                    m.volume
                                )));
                            }
                        }
                    }
                    g.demoting = Some(pairings::Demoting {
                        generation: (generation.counter, generation.site),
                        discard_strays,
                    });
                    self.save(&st)?;
                }
            }
            st.pairings.groups[group].clone()
        };
        self.finish_demotion(group, &record)
    }

    /// The steps of a demotion recorded in `record.demoting`, each of which
    /// is skipped when done already.
    fn finish_demotion(&self, group: &str, record: &GroupRecord) -> Result<Demoted> {
        let demoting = record
            .demoting
            .ok_or_else(|| Error::Internal(format!("group {group:?} is not being demoted")))?;
        let data_dir = self
            .dir
            .parent()
            .ok_or_else(|| Error::Internal("the replication directory has no parent".into()))?
            .to_owned();
        let dr_dir = self.dir.join("dr");
        let volumes_dir = dr_dir.join("volumes");
        crate::dataplane::localsock::private_dir(&dr_dir).map_err(internal("create the DR directory"))?;
        crate::dataplane::localsock::private_dir(&volumes_dir).map_err(internal("create the DR directory"))?;
        let mut final_epoch = 0;
        for (i, m) in record.members.iter().enumerate() {
            let (geo, mode) = m.shape().map_err(Error::Internal)?;
            let demote = |store_name: &str| -> Result<()> {
                let fail = |e: &dyn std::fmt::Display| Error::Internal(format!("demote {:?}: {e}", m.volume));
                let store = FileStore::open(&data_dir, store_name).map_err(|e| fail(&chain(&e)))?;
                let meta = store.get_meta().map_err(|e| fail(&e))?;
                match meta {
                    Some(meta) if meta.role == floe_engine::store::Role::Replica => return Ok(()), // before a crash
                    Some(meta) => final_epoch = final_epoch.max(meta.last_sealed_group),
                    None => {}
                }
                let primary = floe_engine::Primary::open(store, geo, mode).map_err(|e| fail(&e))?;
                Replica::from_demotion(primary, i as u32, demoting.discard_strays).map_err(|e| fail(&e))?;
                Ok(())
            };
            self.catalog
                .release_demoted(&m.volume, &volumes_dir.join(&m.volume), demote)?;
        }
        // The group's coordinator starts afresh: this site's old decisions
        // (if it was ever this group's DR) belong to another primary.
        FileDecisionLog::remove(&dr_dir, group)
            .map_err(|e| Error::Internal(format!("remove the old decision log of {group:?}: {}", chain(&e))))?;
        let mut dr = record.clone();
        dr.side = Side::Dr;
        dr.generation = demoting.generation;
        dr.peer_address = None;
        dr.member_peers.clear();
        dr.promoting = None;
        dr.promoted_at = None;
        dr.demoting = None;
        let opened = self.open_dr_group(group, &dr, false)?;
        let mut st = self.lock();
        st.groups.insert(group.to_owned(), opened);
        st.pairings.groups.insert(group.to_owned(), dr.clone());
        self.save(&st)?;
        let out = demoted_state(st.groups.get(group), final_epoch);
        drop(st);
        tracing::info!(
            group,
            generation = ?dr.generation(),
            candidates = out.candidate_blocks,
            "group demoted: its volumes are replicas of the new primary"
        );
        Ok(out)
    }

    /// Test failover (a rehearsal) of DR group `group`: a writable clone of
    /// every member at the group's committed epoch, each made a CSI volume
    /// of this node named `<volume>-rehearsal-<epoch>`, ready to stage. The
    /// images are copied while no decision is delivered (one cut of the
    /// group; commits wait for the copies, which skip the images' holes);
    /// the replicas and their streams are not touched, and a clone shares
    /// nothing with its replica. Again at the same epoch answers the same
    /// clones; a clone left half made by a crash is made again.
    pub(crate) fn rehearse(&self, group: &str) -> Result<(u64, Vec<String>)> {
        let (coordinator, replicas, record) = {
            let st = self.lock();
            let g = st
                .pairings
                .groups
                .get(group)
                .filter(|g| g.side == Side::Dr)
                .ok_or_else(|| Error::FailedPrecondition(format!("group {group:?} is not a DR group of this node")))?;
            if g.spans_nodes() {
                return Err(Error::FailedPrecondition(format!(
                    "group {group:?} spans DR nodes: rehearsing such a group is not built yet (docs/replication.md)"
                )));
            }
            let dr = st
                .groups
                .get(group)
                .ok_or_else(|| Error::Internal(format!("DR group {group:?} is not open")))?;
            let Decider::Here(c) = &dr.decider else {
                return Err(Error::Internal(format!("DR group {group:?} has its coordinator away")));
            };
            let replicas: Vec<_> = dr.replicas.iter().map(|(_, v, r)| (v.clone(), Arc::clone(r))).collect();
            (Arc::clone(c), replicas, g.clone())
        };
        self.lock().rehearsing.insert(group.to_owned());
        let _rehearsing = Rehearsing { hub: self, group };
        let work = self.dir.join("rehearsal");
        for dir in [work.clone(), work.join("volumes")] {
            crate::dataplane::localsock::private_dir(&dir).map_err(internal("create the rehearsal directory"))?;
        }
        let epoch = coordinator.with_decisions_held(|decisions| -> Result<u64> {
            let epoch = decisions.committed;
            if epoch == 0 {
                return Err(Error::FailedPrecondition(format!(
                    "group {group:?} has not committed a first epoch: there is nothing consistent to clone"
                )));
            }
            // Every image must be the record's epoch before any is copied.
            for (volume, replica) in &replicas {
                let (folded, resync) = replica.with(|r| (r.committed_group(), r.resync_candidates().is_some()));
                if folded != epoch || resync {
                    return Err(Error::FailedPrecondition(format!(
                        "group {group:?} committed epoch {epoch}, but the image of {volume:?} is not that epoch's yet (folded {folded}{}): try again",
                        if resync { ", awaiting a resync" } else { "" }
                    )));
                }
            }
            for ((volume, replica), m) in replicas.iter().zip(&record.members) {
                let clone = rehearsal_id(volume, epoch);
                if self.catalog.store_of(&clone).is_some() {
                    continue;
                }
                let (geo, mode) = m.shape().map_err(Error::Internal)?;
                let fail = |e: &dyn std::fmt::Display| Error::Internal(format!("clone {volume:?} as {clone:?}: {e}"));
                let dir = work.join("volumes").join(&clone);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(|e| fail(&e))?;
                }
                replica.with(|r| -> Result<()> {
                    let src = std::fs::File::open(r.store().image_file()).map_err(|e| fail(&e))?;
                    let store = FileStore::create(&work, &clone, geo).map_err(|e| fail(&chain(&e)))?;
                    let mut primary = floe_engine::Primary::create(store, geo, mode, RoleGeneration::default())
                        .map_err(|e| fail(&e))?;
                    crate::store::for_each_data_chunk(&src, geo.bytes(), |at, chunk| {
                        primary.write(at, chunk).map_err(std::io::Error::other)
                    })
                    .map_err(|e| fail(&e))?;
                    primary.flush().map_err(|e| fail(&e))
                })?;
            }
            Ok(epoch)
        })?;
        let mut clones = Vec::new();
        for (volume, m) in record.members.iter().map(|m| (&m.volume, m)) {
            let clone = rehearsal_id(volume, epoch);
            let (geo, mode) = m.shape().map_err(Error::Internal)?;
            let from = work.join("volumes").join(&clone);
            self.catalog
                .adopt_promoted(csi_volume(&clone, m, geo, mode), &from, geo.bytes())?;
            clones.push(clone);
        }
        tracing::info!(
            group,
            epoch,
            ?clones,
            "failover rehearsal: clones of the committed epoch made"
        );
        Ok((epoch, clones))
    }

    /// Stops the sender of `store`, if any, and waits until it let go of
    /// the engine.
    fn stop_stream(&self, store: &str) {
        let Some(stream) = self.lock().streams.remove(store) else {
            return;
        };
        stream.cancel.cancel();
        let mut state = stream.link.state;
        // The sender drops its end of the watch (and the engine) as it ends.
        let ended = async move { while state.changed().await.is_ok() {} };
        // Called from a blocking thread (the plane's detach), never from a
        // task: blocking on the runtime is allowed there.
        self.rt.block_on(ended);
        tracing::info!(volume = %stream.volume, "replication sender stopped");
    }

    /// Every volume paired on this node, with its group.
    pub(crate) fn paired_volumes(&self) -> Vec<(String, String)> {
        let st = self.lock();
        st.pairings
            .groups
            .iter()
            .flat_map(|(g, r)| {
                r.members
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| r.hosts(*i as u32))
                    .map(move |(_, m)| (g.clone(), m.volume.clone()))
            })
            .collect()
    }

    /// The replication state of `volume` on this node.
    pub(crate) fn status(&self, volume: &str) -> Result<VolumeStatus> {
        let st = self.lock();
        let (group, g, member) = st
            .pairings
            .member_of(volume)
            .ok_or_else(|| Error::FailedPrecondition(format!("volume {volume:?} is not paired on this node")))?;
        let mut out = VolumeStatus {
            group: group.to_owned(),
            side: g.side,
            generation: g.generation(),
            committed: 0,
            staged: None,
            closing: None,
            pending_bytes: 0,
            link: None,
            resync: ResyncPhase::Idle,
            retained: Vec::new(),
            standoff: None,
            resent_blocks: 0,
            written_blocks: 0,
            role_change: if g.promoting.is_some() {
                Some("promoting")
            } else if g.demoting.is_some() {
                Some("demoting")
            } else if st.rehearsing.contains(group) {
                Some("rehearsing")
            } else {
                None
            },
        };
        match g.side {
            Side::Primary => {
                let store = self.catalog.store_of(volume);
                if let Some(s) = store.as_ref().and_then(|s| st.streams.get(s)) {
                    let link = s.link.state.borrow().clone();
                    // The peer's listener refused this stream because its
                    // node is this volume's primary too (its words).
                    if matches!(&link, LinkState::Down { error } if error.contains("split brain")) {
                        out.standoff = Some("split brain");
                    }
                    out.link = Some(link);
                }
                let bs = g.members[member as usize].block_size;
                if let Some((_, p)) = store.and_then(|s| self.plane.hosted().into_iter().find(|(h, _)| *h == s)) {
                    p.peek(|p| {
                        out.pending_bytes = p.dirty_blocks().saturating_mul(bs);
                        out.closing = p.closing().map(|(e, _)| e);
                        out.generation = p.generation();
                        out.resync = p.resync_phase();
                        out.resent_blocks = p.stats().blocks_resent;
                        out.written_blocks = p.stats().blocks_written;
                        if p.fenced_by().is_some() {
                            out.standoff = Some("fenced");
                        }
                    });
                }
            }
            Side::Dr => {
                if let Some(r) = st.groups.get(group).and_then(|dr| dr.replica(member)) {
                    r.with(|r| {
                        out.committed = r.committed_group();
                        out.staged = r.staged_group();
                        out.generation = r.generation();
                        out.retained = r.retained_points();
                    });
                }
            }
        }
        Ok(out)
    }

    /// The hosted primary engine of paired volume `volume` (attached here).
    pub(crate) fn primary(&self, volume: &str) -> Result<Arc<HostedPrimary<FileStore>>> {
        let store = self
            .catalog
            .store_of(volume)
            .ok_or_else(|| Error::VolumeNotFound(volume.to_owned()))?;
        self.plane
            .hosted()
            .into_iter()
            .find(|(s, _)| *s == store)
            .map(|(_, p)| p)
            .ok_or_else(|| Error::FailedPrecondition(format!("volume {volume:?} is not attached on this node")))
    }

    /// The device of attached volume `volume`.
    pub(crate) fn device(&self, volume: &str) -> Result<PathBuf> {
        let store = self
            .catalog
            .store_of(volume)
            .ok_or_else(|| Error::VolumeNotFound(volume.to_owned()))?;
        self.plane
            .list()
            .into_iter()
            .find(|v| v.volume == store)
            .and_then(|v| v.attachment)
            .map(|a| a.device)
            .ok_or_else(|| Error::FailedPrecondition(format!("volume {volume:?} is not attached on this node")))
    }

    /// Runs `f` on DR group `group`'s replica of `volume` and its decision
    /// record, with no decision delivered meanwhile (one cut of the group).
    pub(crate) fn with_replica<R>(
        &self,
        volume: &str,
        f: impl FnOnce(&mut Replica<FileStore>, &floe_engine::DecisionRecord) -> R,
    ) -> Result<R> {
        let (decider, replica) = {
            let st = self.lock();
            let (group, g, member) = st
                .pairings
                .member_of(volume)
                .filter(|(_, g, _)| g.side == Side::Dr)
                .ok_or_else(|| {
                    Error::FailedPrecondition(format!("volume {volume:?} is not a DR replica on this node"))
                })?;
            let dr = st
                .groups
                .get(group)
                .ok_or_else(|| Error::Internal(format!("DR group {group:?} of {g:?} is not open")))?;
            let replica = dr
                .replica(member)
                .ok_or_else(|| Error::Internal(format!("DR group {group:?} has no replica of member {member}")))?;
            (dr.decider.clone(), Arc::clone(replica))
        };
        Ok(decider.with_decisions_held(|record| replica.with(|r| f(r, record))))
    }
}

impl AttachObserver for Replication {
    fn attached(&self, store: &str, primary: &Arc<HostedPrimary<FileStore>>) {
        let Some(volume) = self.catalog.volume_of_store(store) else {
            return;
        };
        let mut st = self.lock();
        let Some((group, g, _)) = st.pairings.member_of(&volume) else {
            return;
        };
        if g.side != Side::Primary || st.streams.contains_key(store) {
            return;
        }
        let Some(addr) = g
            .peer_address
            .as_ref()
            .map(|a| g.member_peers.get(&volume).unwrap_or(a).clone())
        else {
            tracing::info!(%volume, group, "promoted here: no stream until the old site fails back");
            return;
        };
        let Some(tls) = self.tls.clone() else {
            tracing::error!(%volume, group, "paired as primary but this data plane has no replication identity: no stream");
            return;
        };
        let (geometry, mode) = primary.peek(|p| (p.geometry(), p.mode()));
        let incarnation = primary.peek(|p| p.store().get_meta().ok().flatten().map_or(0, |m| m.incarnation));
        let mut cfg = SenderConfig::new(
            addr,
            tls,
            Pairing {
                group: group.to_owned(),
                volume: volume.clone(),
                geometry,
                mode,
            },
            primary.peek(|p| p.generation()),
            incarnation,
        );
        cfg.limit = self.limit.clone();
        let cancel = CancellationToken::new();
        let stats = self.sender_metrics.for_volume(&volume);
        let link = {
            let _entered = self.rt.enter();
            sender::spawn(Arc::clone(primary), cfg, stats, cancel.clone())
        };
        tracing::info!(%volume, group, "replication sender started");
        st.streams.insert(store.to_owned(), Stream { volume, cancel, link });
    }

    fn detaching(&self, store: &str) {
        self.stop_stream(store);
    }
}

/// What a `Pair` asks for, checked.
#[derive(Clone, Debug, Default)]
pub(crate) struct PairArgs {
    /// Member volumes in member order.
    pub volumes: Vec<String>,
    /// DR: each member's geometry, mode, size and file system.
    pub shapes: Vec<MemberShape>,
    /// Primary: the DR listener.
    pub peer_address: Option<String>,
    /// DR: the primary's generation.
    pub generation: Option<RoleGeneration>,
    /// The committed epochs kept while this node is the DR (K).
    pub retained_points: u32,
    /// DR: the coordinator listener of the node running the coordinator
    /// (none: this node).
    pub coordinator: Option<String>,
    /// DR: the members this node holds, ascending (empty: every one).
    pub hosted: Vec<u32>,
    /// Primary: the DR listener of each member that does not stream to
    /// `peer_address`, by volume.
    pub member_peers: std::collections::BTreeMap<String, String>,
}

fn member_record(volume: &str, shape: &MemberShape) -> MemberRecord {
    MemberRecord {
        volume: volume.to_owned(),
        block_size: shape.geometry.block_size() as u64,
        blocks: shape.geometry.blocks(),
        region_blocks: shape.geometry.region_blocks(),
        mode: shape.mode.name().to_owned(),
        size_bytes: shape.size_bytes,
        fs_type: shape.fs_type.clone(),
    }
}

/// What a member is, besides its name.
#[derive(Clone, Debug)]
pub(crate) struct MemberShape {
    /// Its store's geometry.
    pub geometry: Geometry,
    /// Replication mode.
    pub mode: Mode,
    /// The volume's size.
    pub size_bytes: u64,
    /// Its file system.
    pub fs_type: String,
}

/// Whether `requested` asks for the primary pairing `existing` is already
/// (a promoted group streaming to its old site again, say).
fn same_primary_pairing(existing: &GroupRecord, requested: &GroupRecord) -> bool {
    existing.side == Side::Primary
        && requested.side == Side::Primary
        && existing.demoting.is_none()
        && existing.members == requested.members
        && existing.generation == requested.generation
        && existing.peer_address == requested.peer_address
        && existing.member_peers == requested.member_peers
}

/// Whether pairing `requested` over `existing` starts a failback: the
/// group was promoted here and streams nowhere, and the request names the
/// same members and generation with the old site's listener.
fn resumes_failback(existing: &GroupRecord, requested: &GroupRecord) -> bool {
    existing.side == Side::Primary
        && requested.side == Side::Primary
        && existing.promoted_at.is_some()
        && existing.peer_address.is_none()
        && requested.peer_address.is_some()
        && existing.members == requested.members
        && existing.generation == requested.generation
}

fn dr_record(req: &PairArgs) -> Result<GroupRecord> {
    let generation = req.generation.ok_or(Error::Missing {
        rpc: "Pair",
        field: "generation",
        hint: "the primary's role generation, as its Pair answered",
    })?;
    if req.volumes.is_empty() || req.shapes.len() != req.volumes.len() {
        return Err(Error::Missing {
            rpc: "Pair",
            field: "members",
            hint: "every member's volume and geometry, as the primary's Pair answered",
        });
    }
    Ok(GroupRecord {
        side: Side::Dr,
        members: req
            .volumes
            .iter()
            .zip(&req.shapes)
            .map(|(v, shape)| member_record(v, shape))
            .collect(),
        generation: (generation.counter, generation.site),
        peer_address: None,
        promoting: None,
        promoting_point: None,
        promoted_at: None,
        retained_points: req.retained_points,
        demoting: None,
        coordinator: req.coordinator.clone(),
        // Every member held is the same as none named.
        hosted: if req.hosted.len() == req.volumes.len() {
            Vec::new()
        } else {
            req.hosted.clone()
        },
        member_peers: std::collections::BTreeMap::new(),
    })
}

/// A volume's replication state.
#[derive(Clone, Debug)]
pub(crate) struct VolumeStatus {
    pub group: String,
    pub side: Side,
    pub generation: RoleGeneration,
    pub committed: u64,
    pub staged: Option<u64>,
    pub closing: Option<u64>,
    pub pending_bytes: u64,
    pub link: Option<LinkState>,
    /// Primary: where a failback comparison stands.
    pub resync: ResyncPhase,
    /// A role change under way (`promoting`, `demoting`, `rehearsing`).
    pub role_change: Option<&'static str>,
    /// DR: the retained points, oldest first.
    pub retained: Vec<u64>,
    /// Primary: `fenced` (a replica answered with a newer generation) or
    /// `split brain` (the peer is this volume's primary too).
    pub standoff: Option<&'static str>,
    /// Primary: block versions shipped again after a reconnect
    /// (`PrimaryStats::blocks_resent`, since this process started).
    pub resent_blocks: u64,
    /// Primary: block writes of the host (`PrimaryStats::blocks_written`,
    /// since this process started).
    pub written_blocks: u64,
}

/// Marks a DR group as rehearsing (its `Status.step`) while it lives.
struct Rehearsing<'a> {
    hub: &'a Replication,
    group: &'a str,
}

impl Drop for Rehearsing<'_> {
    fn drop(&mut self) {
        self.hub.lock().rehearsing.remove(self.group);
    }
}

impl VolumeStatus {
    /// The step of a role change under way, as `Status.step` says it:
    /// `promoting`, `demoting`, `rehearsing`, on a promoted primary failing
    /// back `awaiting hashes` then `comparing: N candidates left`, and on a
    /// primary that may not stream `fenced` or `split brain`; empty when none.
    pub(crate) fn step(&self) -> String {
        match (self.role_change, self.resync) {
            (Some(step), _) => step.into(),
            (None, ResyncPhase::Idle) => self.standoff.unwrap_or_default().into(),
            (None, ResyncPhase::AwaitingHashes) => "awaiting hashes".into(),
            (None, ResyncPhase::Comparing { left }) => format!("comparing: {left} candidates left"),
        }
    }
}

/// The CSI volume `id` of this node with member `m`'s shape.
fn csi_volume(id: &str, m: &MemberRecord, geo: Geometry, mode: Mode) -> crate::node::volumes::Volume {
    let fs_type = crate::dataplane::mount::FsType::parse(&m.fs_type).unwrap_or(crate::dataplane::mount::FsType::Ext4);
    crate::node::volumes::Volume {
        id: id.to_owned(),
        name: id.to_owned(),
        size_bytes: if m.size_bytes == 0 { geo.bytes() } else { m.size_bytes },
        params: crate::node::params::VolumeParams {
            fs_type,
            block_size: m.block_size,
            mode,
        },
        source: None,
        attachment: None,
    }
}

/// The volumes of the groups this node is the primary of, with their
/// generation.
fn primaries(p: &Pairings) -> HashMap<String, RoleGeneration> {
    p.groups
        .values()
        .filter(|g| g.side == Side::Primary)
        .flat_map(|g| g.members.iter().map(|m| (m.volume.clone(), g.generation())))
        .collect()
}

/// The id of `volume`'s rehearsal clone at `epoch`.
fn rehearsal_id(volume: &str, epoch: u64) -> String {
    format!("{volume}-rehearsal-{epoch}")
}

/// What a demotion answers.
#[derive(Clone, Debug, Default)]
pub(crate) struct Demoted {
    /// The last group epoch the demoted primary sealed (0: not known,
    /// asked again after the demotion).
    pub final_epoch: u64,
    /// Failback candidates of all members together.
    pub candidate_blocks: u64,
    /// `<volume>/<snapshot>` of every strays snapshot.
    pub strays_snapshots: Vec<String>,
}

/// What demoted group `dr`'s replicas hold: their failback candidates and
/// their strays snapshots.
fn demoted_state(dr: Option<&DrGroup>, final_epoch: u64) -> Demoted {
    let mut out = Demoted {
        final_epoch,
        ..Demoted::default()
    };
    for (_, volume, r) in dr.map(|d| d.replicas.as_slice()).unwrap_or_default() {
        r.with(|r| {
            out.candidate_blocks += r.resync_candidates().map_or(0, |c| c.len() as u64);
            let names = r.store().snapshots().unwrap_or_default();
            out.strays_snapshots.extend(
                names
                    .into_iter()
                    .filter(|n| n.starts_with("pre-failback-"))
                    .map(|n| format!("{volume}/{n}")),
            );
        });
    }
    out
}

/// Waits until the replica engines `held` are gone: the streams and the
/// coordinator that held them end after `Receivers::remove` (their tasks
/// run on the runtime, this on a blocking thread).
fn wait_released(held: &[Weak<HostedReplica<FileStore>>]) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while held.iter().any(|w| w.strong_count() > 0) {
        if std::time::Instant::now() > deadline {
            return Err(Error::Internal(
                "a replica's stream did not end within 30 s: call Promote again".into(),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

/// Bumps and returns the count of starts under `dir`: the DR's incarnation
/// in its handshakes.
fn next_incarnation(dir: &std::path::Path) -> Result<u64> {
    let path = dir.join("incarnation");
    let last = match std::fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(Error::Internal(format!("read {}: {e}", path.display()))),
    };
    let next = last + 1;
    crate::node::plane::files::write_json(&path, &next).map_err(internal("write the incarnation"))?;
    Ok(next)
}
