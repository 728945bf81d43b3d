//! Connection info and counters: pure bookkeeping the cores keep up to date.

use crate::{Instant, PeerKey, Protocol, StreamId};
use std::time::Duration;

/// What is known about one stream (the spec's "connection"): who is on the
/// other end, since when, how busy it has been.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The stream.
    pub stream: StreamId,
    /// The remote peer.
    pub remote: PeerKey,
    /// The protocol the stream speaks.
    pub protocol: Protocol,
    /// When the stream was opened (client) or accepted (server).
    pub opened_at: Instant,
    /// Last time bytes moved in either direction.
    pub last_active: Instant,
    /// Time since `last_active`, at the instant the info was taken.
    pub idle: Duration,
    /// Bytes received on the stream, frame headers included.
    pub bytes_in: u64,
    /// Bytes handed out for writing on the stream, frame headers included.
    pub bytes_out: u64,
    /// Requests carried (client) or served (server) on this stream.
    pub requests: u64,
    /// Requests on this stream that have not ended yet.
    pub in_flight: usize,
}

/// Counters of a [`crate::Client`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientMetrics {
    /// Requests accepted by `send`/`send_closest`.
    pub requests: u64,
    /// Requests that ended with a response.
    pub succeeded: u64,
    /// Requests that ended with an error (cancellations included).
    pub failed: u64,
    /// Requests not ended yet.
    pub active: u64,
    /// Attempts started (first tries, retries and hedges).
    pub attempts: u64,
    /// Attempts that were retries or failovers.
    pub retries: u64,
    /// Bytes handed out for writing.
    pub bytes_written: u64,
    /// Bytes received.
    pub bytes_read: u64,
    /// Streams the client asked to open.
    pub streams_opened: u64,
    /// Frames for requests that had already ended (late or cancelled), ignored.
    pub late_frames: u64,
}

/// Counters of a [`crate::Server`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerMetrics {
    /// Requests received completely.
    pub requests: u64,
    /// Requests answered with the handler's response.
    pub succeeded: u64,
    /// Requests answered with an error (handler error, oversize, shutdown).
    pub failed: u64,
    /// Requests shed with a Busy answer by admission.
    pub rejected_busy: u64,
    /// Requests handed to handlers and not answered yet.
    pub active: u64,
    /// The admission limit in force: requests handled at once before the
    /// next one gets Busy. It adapts to latency and demand (see
    /// [`crate::admission`]).
    pub admission_limit: u64,
    /// The latency baseline admission compares with (admission to answer);
    /// `None` until a request was answered.
    pub latency_baseline: Option<std::time::Duration>,
    /// Bytes received.
    pub bytes_read: u64,
    /// Bytes handed out for writing.
    pub bytes_written: u64,
    /// Inbound streams accepted.
    pub streams_accepted: u64,
    /// Inbound streams refused (unknown protocol, per-peer limit, shutdown).
    pub streams_refused: u64,
    /// Streams closed for breaking the wire protocol.
    pub protocol_errors: u64,
}
