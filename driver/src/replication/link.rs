//! What both ends of a stream share: its state, its counters, its errors,
//! and the rule for running engine calls off the async threads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use floe_engine::EngineError;
use floe_proto::replication as pb;

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

/// Counters of one volume's stream, across reconnects.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Streams that ended and were (or will be) dialled again.
    pub reconnects: AtomicU64,
    /// Wire frames sent.
    pub frames_sent: AtomicU64,
    /// Encoded bytes sent.
    pub bytes_sent: AtomicU64,
    /// Block versions sent (zero ranges counted block by block).
    pub blocks_sent: AtomicU64,
    /// Wire frames received.
    pub frames_received: AtomicU64,
    /// Streams refused (by either side), malformed frames included.
    pub refused: AtomicU64,
}

impl LinkStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's value now.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
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
    pub stats: Arc<LinkStats>,
}
