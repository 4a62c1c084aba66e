//! The primary's end of a volume's stream: dial, open, pump, and dial again.
//!
//! One task per paired volume. A session is one gRPC stream: `Open` and the
//! DR's `Accept`, then the engine's `Hello`, then two halves that never wait
//! for each other — a reader that hands the DR's replies to the engine, and
//! a writer that asks the engine for the next frame only when the stream's
//! queue has room. So a slow or absent link never blocks a host write: the
//! engine keeps coalescing dirty blocks until the link takes them. When a
//! session ends, the engine is told (`disconnect`) and the task dials again
//! after an exponential, jittered delay, reset once a session is accepted.
//! An optional token bucket shared by a node's senders caps their bandwidth;
//! HTTP/2 windows adapt to the bandwidth-delay product. The DR is dialled as
//! this site's TLS identity and must show the paired site's name.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use floe_engine::{Geometry, Reply, RoleGeneration, ToReplica};
use floe_proto::replication::{self as pb, frame::Kind, replication_client::ReplicationClient};
use leaky_bucket::RateLimiter;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::failpoint;

use super::codec::{encode_to_replica, PrimaryInbox, MAX_FRAME_BYTES};
use super::endpoint::PrimaryEnd;
use super::handshake::{Opening, Pairing, SALT_BYTES};
use super::link::{blocking, LinkError, LinkHandle, LinkState, LinkStats, Reason};
use super::tls::{dial, TlsSource};

/// How a sender reaches its DR and paces its stream.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// The DR node's replication listener (`host:port`).
    pub addr: String,
    /// This site's TLS identity; the DR must show the peer name it holds.
    pub tls: Arc<TlsSource>,
    /// Longest a connection (TCP and TLS) may take.
    pub connect_timeout: Duration,
    /// The pairing, as this site records it.
    pub pairing: Pairing,
    /// This primary's role generation.
    pub generation: RoleGeneration,
    /// This primary's incarnation.
    pub incarnation: u64,
    /// Most block versions the engine puts in one frame.
    pub max_blocks: usize,
    /// Wire frames queued for the stream before the engine is asked for more.
    pub queue_frames: usize,
    /// Shortest and longest delay before dialling again.
    pub retry: (Duration, Duration),
    /// The node's bandwidth limit, shared by its senders (bytes; `None`:
    /// as fast as the link goes). See [`bandwidth_limit`].
    pub limit: Option<Arc<RateLimiter>>,
}

/// A token bucket of `bytes_per_second`, refilled every 10 ms, with room for
/// a burst of 100 ms or one largest frame, whichever is more; share it
/// between the senders of a node to cap what they send together.
pub fn bandwidth_limit(bytes_per_second: u64) -> Arc<RateLimiter> {
    let per_tick = (bytes_per_second / 100).max(1) as usize;
    let burst = ((bytes_per_second / 10) as usize).max(MAX_FRAME_BYTES);
    Arc::new(
        RateLimiter::builder()
            .max(burst)
            .initial(burst)
            .refill(per_tick)
            .interval(Duration::from_millis(10))
            .build(),
    )
}

impl SenderConfig {
    /// Defaults for a stream to `addr` as `tls`: frames of 256 blocks
    /// (1 MiB at 4 KiB), 16 frames queued, connections within 5 s, retries
    /// from 50 ms to 5 s.
    pub fn new(
        addr: impl Into<String>,
        tls: Arc<TlsSource>,
        pairing: Pairing,
        generation: RoleGeneration,
        incarnation: u64,
    ) -> Self {
        SenderConfig {
            addr: addr.into(),
            tls,
            connect_timeout: Duration::from_secs(5),
            pairing,
            generation,
            incarnation,
            max_blocks: 256,
            queue_frames: 16,
            retry: (Duration::from_millis(50), Duration::from_secs(5)),
            limit: None,
        }
    }
}

/// Starts the sender of `end` under `cfg`, counting in `stats`; it runs
/// until `cancel` fires.
pub fn spawn<P: PrimaryEnd>(end: Arc<P>, cfg: SenderConfig, stats: LinkStats, cancel: CancellationToken) -> LinkHandle {
    let (state, state_rx) = watch::channel(LinkState::Connecting);
    let sender = Sender {
        end,
        cfg,
        state,
        stats: stats.clone(),
    };
    tokio::spawn(sender.run(cancel));
    LinkHandle { state: state_rx, stats }
}

struct Sender<P> {
    end: Arc<P>,
    cfg: SenderConfig,
    state: watch::Sender<LinkState>,
    stats: LinkStats,
}

impl<P: PrimaryEnd> Sender<P> {
    async fn run(self, cancel: CancellationToken) {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.cfg.retry.0)
            .with_max_delay(self.cfg.retry.1)
            .with_jitter()
            .without_max_times();
        let mut delays = backoff.build();
        loop {
            self.state.send_replace(LinkState::Connecting);
            let mut accepted = false;
            let ended = tokio::select! {
                r = self.session(&mut accepted) => r,
                () = cancel.cancelled() => Ok(()),
            };
            let end = Arc::clone(&self.end);
            // The engine forgets the session whatever ended it.
            let _ = blocking(move || end.disconnect()).await;
            if cancel.is_cancelled() {
                return;
            }
            let error = match ended {
                Ok(()) => LinkError::Closed,
                Err(e) => e,
            };
            self.stats.up.set(0);
            match error {
                LinkError::Refused { .. } => self.stats.reject(Reason::Peer),
                LinkError::Malformed(_) | LinkError::Unexpected(_) => self.stats.reject(Reason::Malformed),
                LinkError::Engine(_) => self.stats.reject(Reason::Engine),
                _ => {}
            }
            let text = super::chain(&error);
            tracing::warn!(volume = %self.cfg.pairing.volume, error = %text, "replication stream ended");
            self.state.send_replace(LinkState::Down { error: text });
            self.stats.reconnects.inc();
            if accepted {
                delays = backoff.build();
            }
            let delay = delays.next().unwrap_or(self.cfg.retry.1);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    /// One stream, from dialling to its end.
    async fn session(&self, accepted: &mut bool) -> Result<(), LinkError> {
        let channel = dial(&self.cfg.addr, &self.cfg.tls, self.cfg.connect_timeout)
            .await
            .map_err(LinkError::Connect)?;
        let mut client = ReplicationClient::new(channel)
            .max_decoding_message_size(MAX_FRAME_BYTES)
            .max_encoding_message_size(MAX_FRAME_BYTES);
        let (tx, rx) = mpsc::channel::<pb::Frame>(self.cfg.queue_frames.max(1));
        let mut salt = [0u8; SALT_BYTES];
        rustix::rand::getrandom(&mut salt, rustix::rand::GetRandomFlags::empty())
            .map_err(|e| LinkError::Salt(e.into()))?;
        let opening = Opening {
            pairing: self.cfg.pairing.clone(),
            generation: self.cfg.generation,
            incarnation: self.cfg.incarnation,
            salt,
        };
        tx.send(opening.frame()).await.map_err(|_| LinkError::Closed)?;
        let mut inbound = client
            .replicate(ReceiverStream::new(rx))
            .await
            .map_err(LinkError::from)?
            .into_inner();
        match inbound.message().await.map_err(LinkError::from)? {
            Some(pb::Frame {
                kind: Some(Kind::Accept(_)),
            }) => {}
            Some(pb::Frame {
                kind: Some(Kind::Refusal(r)),
            }) => {
                return Err(LinkError::Refused {
                    code: r.code,
                    message: r.message,
                })
            }
            Some(_) => return Err(LinkError::Unexpected("a frame other than accept")),
            None => return Err(LinkError::Closed),
        }
        *accepted = true;
        self.state.send_replace(LinkState::Up);
        self.stats.up.set(1);
        tracing::info!(volume = %self.cfg.pairing.volume, "replication stream up");

        let end = Arc::clone(&self.end);
        let hello = blocking(move || end.connect()).await?;
        self.send(&tx, hello).await?;
        let reader = read_replies(
            Arc::clone(&self.end),
            inbound,
            self.cfg.pairing.geometry,
            self.stats.clone(),
        );
        tokio::select! {
            r = reader => r,
            r = self.write(&tx) => r,
        }
    }

    /// Sends what the engine has whenever the queue has room.
    async fn write(&self, tx: &mpsc::Sender<pb::Frame>) -> Result<(), LinkError> {
        loop {
            // Registered before asking, so a poke during the call is kept.
            let changed = self.end.changed().notified();
            let permit = tx.reserve().await.map_err(|_| LinkError::Closed)?;
            drop(permit);
            let end = Arc::clone(&self.end);
            let max = self.cfg.max_blocks;
            match blocking(move || end.poll_send(max)).await?.map_err(LinkError::Engine)? {
                Some(frame @ ToReplica::Blocks { .. }) => {
                    failpoint::hit(failpoint::BATCH_IN_FLIGHT);
                    self.send(tx, frame).await?;
                }
                Some(frame @ ToReplica::Sealed { .. }) => {
                    self.send(tx, frame).await?;
                    failpoint::hit(failpoint::SEALED);
                }
                Some(frame) => self.send(tx, frame).await?,
                None => changed.await,
            }
        }
    }

    async fn send(&self, tx: &mpsc::Sender<pb::Frame>, frame: ToReplica) -> Result<(), LinkError> {
        if let ToReplica::Blocks { blocks, .. } = &frame {
            self.stats.blocks_sent.inc_by(blocks.len() as u64);
        }
        for f in encode_to_replica(frame, self.cfg.pairing.geometry.block_size()) {
            let len = prost::Message::encoded_len(&f);
            if let Some(limit) = &self.cfg.limit {
                limit.acquire(len.min(limit.max())).await;
            }
            self.stats.bytes_sent.inc_by(len as u64);
            self.stats.frames_sent.inc();
            tx.send(f).await.map_err(|_| LinkError::Closed)?;
        }
        Ok(())
    }
}

/// Hands the DR's replies to the engine until the stream ends.
async fn read_replies<P: PrimaryEnd>(
    end: Arc<P>,
    mut inbound: tonic::Streaming<pb::Frame>,
    geometry: Geometry,
    stats: LinkStats,
) -> Result<(), LinkError> {
    let mut inbox = PrimaryInbox::new(geometry);
    loop {
        let frame = inbound
            .message()
            .await
            .map_err(LinkError::from)?
            .ok_or(LinkError::Closed)?;
        stats.frames_received.inc();
        if let Some(Kind::Refusal(r)) = frame.kind {
            return Err(LinkError::Refused {
                code: r.code,
                message: r.message,
            });
        }
        if let Some(reply) = inbox.push(frame).map_err(LinkError::Malformed)? {
            let point = match reply.reply {
                Reply::StagedAck { .. } => Some(failpoint::STAGED_ACKED),
                Reply::Consistent { .. } => Some(failpoint::CONSISTENT),
                _ => None,
            };
            let e = Arc::clone(&end);
            blocking(move || e.on_frame(reply)).await?.map_err(LinkError::Engine)?;
            if let Some(point) = point {
                failpoint::hit(point);
            }
            // A reply may let the engine send more (an ack frees a seal).
            end.changed().notify_one();
        }
    }
}
