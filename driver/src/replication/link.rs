//! What both ends of a stream share: its state, its metrics, its errors,
//! and the rule for running engine calls off the async threads.

use floe_engine::EngineError;
use floe_proto::replication as pb;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::codec::Malformed;
use super::endpoint::CoordinatorError;

/// Where a volume's stream stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Dialling the peer, or waiting to dial again.
    Connecting,
    /// The peer accepted the stream.
    Up,
    /// The last attempt failed; another follows after a delay.
    Down {
        /// Why, as the operator reads it.
        error: String,
    },
}

/// Counters of one volume's stream at one end, across reconnects: the
/// children of [`LinkMetrics`] for that volume, or free-standing ones.
#[derive(Clone)]
pub struct LinkStats {
    /// Streams that ended and were (or will be) dialled again.
    pub reconnects: IntCounter,
    /// Wire frames sent.
    pub frames_sent: IntCounter,
    /// Encoded bytes sent.
    pub bytes_sent: IntCounter,
    /// Block versions sent (zero ranges counted block by block).
    pub blocks_sent: IntCounter,
    /// Wire frames received.
    pub frames_received: IntCounter,
    /// Block versions received (zero ranges counted block by block).
    pub blocks_received: IntCounter,
    /// 1 while the peer has accepted the stream.
    pub up: IntGauge,
    rejected: IntCounterVec,
    volume: String,
}

impl LinkStats {
    /// Counters registered nowhere (a link whose metrics nobody scrapes).
    pub fn detached() -> Self {
        LinkMetrics::new("detached")
            .expect("metric names made from a fixed word are valid")
            .for_volume("-")
    }

    /// Counts a stream or frame refused, by `reason`.
    pub fn reject(&self, reason: Reason) {
        self.rejected.with_label_values(&[&self.volume, reason.label()]).inc();
    }

    /// Refusals so far for `reason`.
    pub fn rejected_for(&self, reason: Reason) -> u64 {
        self.rejected.with_label_values(&[&self.volume, reason.label()]).get()
    }

    /// Refusals so far, every reason.
    pub fn rejected(&self) -> u64 {
        Reason::ALL
            .iter()
            .map(|r| self.rejected.with_label_values(&[&self.volume, r.label()]).get())
            .sum()
    }
}

/// Why a stream or a frame was refused (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The handshake named a field that differs.
    Mismatch,
    /// A frame broke the codec's rules.
    Malformed,
    /// The engine refused a frame.
    Engine,
    /// The group coordinator could not take a report.
    Coordinator,
    /// The peer refused (counted at the end that was refused).
    Peer,
    /// The TLS handshake failed, or the certificate is for another name.
    Identity,
    /// A stream for a volume this node is the primary of: two primaries
    /// (split brain).
    SplitBrain,
}

impl Reason {
    const ALL: [Reason; 7] = [
        Reason::Mismatch,
        Reason::Malformed,
        Reason::Engine,
        Reason::Coordinator,
        Reason::Peer,
        Reason::Identity,
        Reason::SplitBrain,
    ];

    fn label(self) -> &'static str {
        match self {
            Reason::Mismatch => "mismatch",
            Reason::Malformed => "malformed",
            Reason::Engine => "engine",
            Reason::Coordinator => "coordinator",
            Reason::Peer => "peer",
            Reason::Identity => "identity",
            Reason::SplitBrain => "split_brain",
        }
    }
}

/// The replication metrics of one end (`sender` or `receiver`) of a node,
/// labelled by volume: `floe_<end>_<what>_<unit>`.
#[derive(Clone)]
pub struct LinkMetrics {
    reconnects: IntCounterVec,
    frames_sent: IntCounterVec,
    bytes_sent: IntCounterVec,
    blocks_sent: IntCounterVec,
    frames_received: IntCounterVec,
    blocks_received: IntCounterVec,
    up: IntGaugeVec,
    rejected: IntCounterVec,
}

impl LinkMetrics {
    fn new(end: &str) -> prometheus::Result<Self> {
        let counter =
            |what: &str, help: &str| IntCounterVec::new(Opts::new(format!("floe_{end}_{what}"), help), &["volume"]);
        Ok(LinkMetrics {
            reconnects: counter("reconnects_total", "Streams that ended and were dialled again.")?,
            frames_sent: counter("sent_frames_total", "Wire frames sent.")?,
            bytes_sent: counter("sent_bytes_total", "Encoded bytes sent.")?,
            blocks_sent: counter("sent_blocks_total", "Block versions sent.")?,
            frames_received: counter("received_frames_total", "Wire frames received.")?,
            blocks_received: counter("received_blocks_total", "Block versions received.")?,
            up: IntGaugeVec::new(
                Opts::new(
                    format!("floe_{end}_link_up"),
                    "1 while the peer has accepted the stream.",
                ),
                &["volume"],
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    format!("floe_{end}_rejected_total"),
                    "Streams or frames refused, by reason.",
                ),
                &["volume", "reason"],
            )?,
        })
    }

    /// The metrics of `end` (`sender` or `receiver`), registered in `registry`.
    pub fn register(registry: &Registry, end: &str) -> prometheus::Result<Self> {
        let m = LinkMetrics::new(end)?;
        registry.register(Box::new(m.reconnects.clone()))?;
        registry.register(Box::new(m.frames_sent.clone()))?;
        registry.register(Box::new(m.bytes_sent.clone()))?;
        registry.register(Box::new(m.blocks_sent.clone()))?;
        registry.register(Box::new(m.frames_received.clone()))?;
        registry.register(Box::new(m.blocks_received.clone()))?;
        registry.register(Box::new(m.up.clone()))?;
        registry.register(Box::new(m.rejected.clone()))?;
        Ok(m)
    }

    /// The counters of `volume` (a paired volume's id: labels never come
    /// from a peer's unchecked input).
    pub fn for_volume(&self, volume: &str) -> LinkStats {
        let v = [volume];
        LinkStats {
            reconnects: self.reconnects.with_label_values(&v),
            frames_sent: self.frames_sent.with_label_values(&v),
            bytes_sent: self.bytes_sent.with_label_values(&v),
            blocks_sent: self.blocks_sent.with_label_values(&v),
            frames_received: self.frames_received.with_label_values(&v),
            blocks_received: self.blocks_received.with_label_values(&v),
            up: self.up.with_label_values(&v),
            rejected: self.rejected.clone(),
            volume: volume.to_owned(),
        }
    }
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The connection could not be made.
    #[error("connect to the peer")]
    Connect(#[source] tonic::transport::Error),
    /// The peer answered the call with an error, or the stream broke.
    #[error("the stream failed")]
    Stream(#[source] Box<tonic::Status>),
    /// The peer ended the stream.
    #[error("the peer closed the stream")]
    Closed,
    /// The peer refused the stream.
    #[error("the peer refused the stream: {message}")]
    Refused {
        /// Refusal code (`pb::refusal::Code`).
        code: i32,
        /// The peer's explanation.
        message: String,
    },
    /// A frame broke the codec's rules.
    #[error("a malformed frame")]
    Malformed(#[source] Malformed),
    /// A frame came out of order (before the handshake ended).
    #[error("{0} arrived before the stream was accepted")]
    Unexpected(&'static str),
    /// The engine refused a call.
    #[error("the engine refused")]
    Engine(#[source] EngineError),
    /// The coordinator could not take a report.
    #[error("report to the group coordinator")]
    Coordinator(#[source] CoordinatorError),
    /// No randomness for the session salt.
    #[error("draw the session salt")]
    Salt(#[source] std::io::Error),
    /// An engine call's thread died.
    #[error("an engine call panicked")]
    Task(#[source] tokio::task::JoinError),
}

impl LinkError {
    /// The refusal that tells the peer why this side ends the stream.
    pub fn refusal(&self) -> pb::Frame {
        use pb::refusal::Code;
        let code = match self {
            LinkError::Malformed(_) | LinkError::Unexpected(_) => Code::Malformed,
            LinkError::Engine(EngineError::Fenced { .. }) => Code::StaleGeneration,
            _ => Code::Internal,
        };
        pb::Frame {
            kind: Some(pb::frame::Kind::Refusal(pb::Refusal {
                code: code.into(),
                message: crate::replication::chain(self),
                ..Default::default()
            })),
        }
    }
}

impl From<tonic::Status> for LinkError {
    fn from(status: tonic::Status) -> Self {
        LinkError::Stream(Box::new(status))
    }
}

/// Runs one engine call on a blocking thread (engine calls touch the store).
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, LinkError> {
    tokio::task::spawn_blocking(f).await.map_err(LinkError::Task)
}

/// Shared handles of a running stream.
#[derive(Clone)]
pub struct LinkHandle {
    /// The stream's state.
    pub state: tokio::sync::watch::Receiver<LinkState>,
    /// Its counters.
    pub stats: LinkStats,
}
