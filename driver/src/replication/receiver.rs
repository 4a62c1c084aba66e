//! The DR's end: the `Replication` service of a node's replication listener.
//!
//! Each stream starts with the primary's `Open`. The service finds the
//! paired volume it names, compares the pairing field by field, and answers
//! `Accept` or a `Refusal`. A newer stream for a volume ends the older one
//! (the engine's sessions tell their frames apart). Then frames go to the
//! replica as they arrive, its replies back on the stream, its reports to
//! the group coordinator; replies a coordinator decision made later are
//! sent when the replica pokes. A malformed frame or an engine refusal ends
//! the stream with a `Refusal` saying why.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floe_engine::{RoleGeneration, ToCoordinator, ToReplica};
use floe_proto::replication::{self as pb, frame::Kind, replication_server::Replication};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::codec::{encode_to_primary, ReplicaInbox, MAX_FRAME_BYTES};
use super::endpoint::{CoordinatorPort, ReplicaEnd};
use super::handshake::{accept, check_open, Mismatch, Pairing};
use super::link::{blocking, LinkError, LinkMetrics, LinkStats, Reason};

/// Wire frames queued toward the primary.
const REPLY_QUEUE: usize = 64;

/// How often a receiving replica makes its stream durable (besides every
/// 64 MiB, which the engine counts): the bound on what a reconnect or a
/// restart re-sends beyond one batch.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// A volume the DR receives, with where its replica reports go.
pub struct Paired {
    /// The pairing, as this site records it.
    pub pairing: Pairing,
    /// The replica.
    pub end: Arc<dyn ReplicaEnd>,
    /// Its group's coordinator.
    pub coordinator: Arc<dyn CoordinatorPort>,
    /// The replica's incarnation, sent in `Accept`.
    pub incarnation: u64,
}

struct Entry {
    paired: Arc<Paired>,
    stats: LinkStats,
    current: Option<CancellationToken>,
}

/// The replication service of one node: the volumes it receives.
#[derive(Clone)]
pub struct Receivers {
    volumes: Arc<Mutex<HashMap<String, Entry>>>,
    /// Volumes this node is the primary of, and under which generation: a
    /// stream for one is another primary's (split brain), refused.
    primaries: Arc<Mutex<HashMap<String, RoleGeneration>>>,
    metrics: LinkMetrics,
    /// Streams refused before they named a paired volume.
    pub unknown: LinkStats,
}

impl Receivers {
    /// A service counting in `metrics` (the `receiver` end's).
    pub fn new(metrics: LinkMetrics) -> Self {
        let unknown = metrics.for_volume("-");
        Receivers {
            volumes: Arc::default(),
            primaries: Arc::default(),
            metrics,
            unknown,
        }
    }

    /// The counters of `volume`, if it is received here.
    pub fn stats(&self, volume: &str) -> Option<LinkStats> {
        self.lock().get(volume).map(|e| e.stats.clone())
    }

    /// Receives `paired.pairing.volume` from now on (replacing an older entry).
    pub fn add(&self, paired: Paired) {
        let volume = paired.pairing.volume.clone();
        let mut map = self.lock();
        if let Some(old) = map.remove(&volume).and_then(|e| e.current) {
            old.cancel();
        }
        let stats = self.metrics.for_volume(&volume);
        map.insert(
            volume,
            Entry {
                paired: Arc::new(paired),
                stats,
                current: None,
            },
        );
    }

    /// Stops receiving `volume`, ending its stream.
    pub fn remove(&self, volume: &str) {
        if let Some(token) = self.lock().remove(volume).and_then(|e| e.current) {
            token.cancel();
        }
    }

    /// The volumes this node is the primary of from now on.
    pub fn set_primaries(&self, primaries: HashMap<String, RoleGeneration>) {
        *self.primaries.lock().unwrap_or_else(|p| p.into_inner()) = primaries;
    }

    /// The tonic service, with the message limit of the codec.
    pub fn service(self) -> pb::replication_server::ReplicationServer<Self> {
        pb::replication_server::ReplicationServer::new(self)
            .max_decoding_message_size(MAX_FRAME_BYTES)
            .max_encoding_message_size(MAX_FRAME_BYTES)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.volumes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry `open` names, made the volume's current stream.
    fn claim(&self, open: &pb::Open) -> Result<Claimed, Box<(Mismatch, Reason, LinkStats)>> {
        let mut map = self.lock();
        let Some(entry) = map.get_mut(&open.volume) else {
            let ours = self
                .primaries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&open.volume)
                .copied();
            if let Some(ours) = ours {
                let theirs = open.generation.map(super::codec::generation_from_wire);
                let lower = match theirs {
                    Some(t) if t < ours => "the peer's is older",
                    Some(_) => "the peer's is not older: demote one site",
                    None => "the peer sent none",
                };
                let mismatch = Mismatch {
                    field: "generation",
                    ours: format!(
                        "this site is the primary of this volume under generation ({}, {}) (two primaries: split brain; {lower})",
                        ours.counter, ours.site
                    ),
                    theirs: theirs.map_or_else(|| "none".into(), |t| format!("({}, {})", t.counter, t.site)),
                };
                return Err(Box::new((
                    mismatch,
                    Reason::SplitBrain,
                    self.metrics.for_volume(&open.volume),
                )));
            }
            let mismatch = Mismatch {
                field: "volume",
                ours: "no paired volume of that id".into(),
                theirs: format!("{:?}", open.volume.chars().take(160).collect::<String>()),
            };
            return Err(Box::new((mismatch, Reason::Mismatch, self.unknown.clone())));
        };
        check_open(&entry.paired.pairing, open).map_err(|m| Box::new((m, Reason::Mismatch, entry.stats.clone())))?;
        let token = CancellationToken::new();
        if let Some(old) = entry.current.replace(token.clone()) {
            old.cancel();
        }
        Ok((Arc::clone(&entry.paired), entry.stats.clone(), token))
    }
}

/// A stream's volume, its counters, and the token that ends the stream.
type Claimed = (Arc<Paired>, LinkStats, CancellationToken);

type FrameStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Frame, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Replication for Receivers {
    type ReplicateStream = FrameStream;

    async fn replicate(
        &self,
        request: tonic::Request<tonic::Streaming<pb::Frame>>,
    ) -> Result<tonic::Response<Self::ReplicateStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        let first = inbound.message().await?;
        let open = match first.and_then(|f| f.kind) {
            Some(Kind::Open(open)) => open,
            _ => {
                return Err(tonic::Status::invalid_argument(
                    "the first frame of a stream must be Open",
                ))
            }
        };
        match self.claim(&open) {
            Err(refused) => {
                let (mismatch, reason, stats) = *refused;
                stats.reject(reason);
                tracing::warn!(volume = %mismatch.theirs, error = %mismatch, "replication stream refused");
                let _ = tx.send(Ok(mismatch.refusal())).await;
            }
            Ok((paired, stats, token)) => {
                let _ = tx.send(Ok(accept(paired.incarnation))).await;
                tokio::spawn(async move {
                    let volume = paired.pairing.volume.clone();
                    let ended = tokio::select! {
                        r = pump(Arc::clone(&paired), inbound, tx.clone(), stats.clone()) => r,
                        r = forward_replies(Arc::clone(&paired), tx.clone(), stats.clone()) => r,
                        r = checkpoints(Arc::clone(&paired)) => r,
                        () = token.cancelled() => Ok(()),
                    };
                    if let Err(e) = ended {
                        match e {
                            LinkError::Malformed(_) => stats.reject(Reason::Malformed),
                            LinkError::Engine(_) => stats.reject(Reason::Engine),
                            LinkError::Coordinator(_) => stats.reject(Reason::Coordinator),
                            _ => {}
                        }
                        tracing::warn!(volume = %volume, error = %super::chain(&e), "replication stream ended");
                        let _ = tx.send(Ok(e.refusal())).await;
                    }
                });
            }
        }
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

type Replies = mpsc::Sender<Result<pb::Frame, tonic::Status>>;

async fn send_all(tx: &Replies, frames: Vec<pb::Frame>, stats: &LinkStats) -> Result<(), LinkError> {
    for f in frames {
        stats.frames_sent.inc();
        stats.bytes_sent.inc_by(prost::Message::encoded_len(&f) as u64);
        tx.send(Ok(f)).await.map_err(|_| LinkError::Closed)?;
    }
    Ok(())
}

/// Feeds the replica the primary's frames and sends back what it says.
async fn pump(
    paired: Arc<Paired>,
    mut inbound: tonic::Streaming<pb::Frame>,
    tx: Replies,
    stats: LinkStats,
) -> Result<(), LinkError> {
    let mut inbox = ReplicaInbox::new(paired.pairing.geometry);
    loop {
        let Some(frame) = inbound.message().await.map_err(LinkError::from)? else {
            return Ok(());
        };
        stats.frames_received.inc();
        let Some(msg) = inbox.push(frame).map_err(LinkError::Malformed)? else {
            continue;
        };
        if let ToReplica::Blocks { blocks, .. } = &msg {
            stats.blocks_received.inc_by(blocks.len() as u64);
        }
        let p = Arc::clone(&paired);
        let effects = blocking(move || {
            let effects = p.end.on_frame(msg).map_err(LinkError::Engine)?;
            if effects
                .to_coordinator
                .iter()
                .any(|r| matches!(r, ToCoordinator::Staged { .. }))
            {
                crate::failpoint::hit(crate::failpoint::STAGED_UNREPORTED);
            }
            for report in &effects.to_coordinator {
                p.coordinator.report(report.clone()).map_err(LinkError::Coordinator)?;
            }
            Ok::<_, LinkError>(effects)
        })
        .await??;
        for reply in effects.to_primary {
            send_all(&tx, encode_to_primary(reply), &stats).await?;
        }
        if effects.reset {
            // The replica closed the session: the primary opens a new stream.
            return Err(LinkError::Closed);
        }
    }
}

/// Makes the replica's received stream durable every [`CHECKPOINT_EVERY`]
/// while the stream lives (a checkpoint with nothing new costs nothing).
async fn checkpoints(paired: Arc<Paired>) -> Result<(), LinkError> {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let p = Arc::clone(&paired);
        blocking(move || p.end.checkpoint().map_err(LinkError::Engine)).await??;
    }
}

/// Sends the replies coordinator decisions made, when the replica pokes.
async fn forward_replies(paired: Arc<Paired>, tx: Replies, stats: LinkStats) -> Result<(), LinkError> {
    loop {
        paired.end.replies().notified().await;
        let p = Arc::clone(&paired);
        for reply in blocking(move || p.end.take_to_primary()).await? {
            send_all(&tx, encode_to_primary(reply), &stats).await?;
        }
    }
}
