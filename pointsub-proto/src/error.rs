//! Errors of the core, one enum per layer. Every error can say whether a retry
//! may help (`is_retryable`), which is what the client's retry policy and the
//! adapters' callers decide on.

pub use crate::compress::DecompressError;
pub use crate::frame::FrameError;
pub use crate::route::RouteError;
use crate::{PeerKey, Protocol};

/// Which side of the exchange enforced a size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// This node refused to send or to accept the body.
    Local,
    /// The remote node refused it.
    Remote,
}

/// Why a request ended without a response. Exactly one outcome ends every
/// request: its response or one of these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The destination is this node itself; a client cannot send to itself.
    #[error("cannot send a request to the local node")]
    SelfSend,
    /// The client was closed, or the node it sends from shut down, before
    /// the request ended. Final: nothing this client does can succeed any
    /// more.
    #[error("client closed")]
    Closed,
    /// The caller cancelled the request.
    #[error("request cancelled")]
    Cancelled,
    /// The body is larger than the limit of the side that refused it.
    #[error("body of {size} bytes exceeds the {side:?} limit of {limit} bytes")]
    Oversize {
        /// Size of the body (or as much as was seen of it before refusing).
        size: usize,
        /// The limit that was exceeded.
        limit: usize,
        /// Which side refused it.
        side: Side,
    },
    /// Opening a stream to the peer did not finish within the connect timeout.
    #[error("connect timeout: no stream to the peer within the connect timeout")]
    ConnectTimeout,
    /// The peer could not be reached: the dial failed (refused,
    /// unreachable, handshake error) or the connection was lost while the
    /// stream was opening. The text is the transport's description.
    /// Retryable: the peer may come back.
    #[error("connect failed: {0}")]
    ConnectFailed(String),
    /// No address of the peer is known, so it could not even be dialed.
    /// Final until an address is added (e.g. `Node::add_address`).
    #[error("no known address for the peer")]
    NoAddress,
    /// Every known address of the peer answered with another identity
    /// (libp2p's "Unexpected peer ID"): the addresses are stale. They were
    /// dropped from the address book; final until a good address is added.
    #[error("the peer's addresses answer with another peer id")]
    WrongPeer {
        /// The identity the last address answered with.
        obtained: PeerKey,
    },
    /// The peer does not serve this protocol: it never did, or it stopped
    /// it. A server that has *fully* stopped a protocol looks on the wire
    /// exactly like one that never served it (negotiation answers "na"),
    /// so a request arriving after the stop ends here. Final for this peer;
    /// `send_closest` fails over to the next node. While the server is
    /// still draining, the answer is [`RequestError::ShuttingDown`] instead.
    #[error("protocol {0} not supported by the peer")]
    UnsupportedProtocol(Protocol),
    /// The protocol name is not one a transport can carry (libp2p names
    /// start with `/`); nothing was sent.
    #[error("invalid protocol name {0:?}")]
    InvalidProtocol(String),
    /// The request could not be written within the write timeout.
    #[error("write timeout")]
    WriteTimeout,
    /// No response arrived within the read timeout after the request was sent.
    #[error("read timeout: no response within the read timeout")]
    ReadTimeout,
    /// The caller's overall deadline for the request passed.
    #[error("request deadline passed")]
    Timeout,
    /// No pooled stream became free within the pool timeout.
    #[error("no stream became free in the pool within the pool timeout")]
    PoolTimeout,
    /// The stream carrying the request was reset or closed before the response.
    #[error("stream reset before the response arrived")]
    StreamReset,
    /// The server is at its admission limit and shed the request.
    #[error("server busy: {0}")]
    Busy(String),
    /// The server is shutting down (draining: it still finishes the
    /// requests it had) and refused or abandoned this one. Retryable, and
    /// `send_closest` fails over to the next node. Once the stop is
    /// complete, the same peer answers [`RequestError::UnsupportedProtocol`].
    #[error("server shutting down")]
    ShuttingDown,
    /// The server's handler returned an error; its message is carried here.
    #[error("handler error: {0}")]
    Handler(String),
    /// The server refused this peer (access control).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The server reported an error this version does not know.
    #[error("remote error (code {code}): {message}")]
    Remote {
        /// The raw error code.
        code: u8,
        /// The message that came with it.
        message: String,
    },
    /// The peer broke the wire protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Closest-node routing could not pick a node.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// `send_closest` tried nodes until none was left to try (or the retry
    /// budget ran out), and every one it tried failed. Each node appears
    /// once, in the order it was first tried, with its last failure.
    #[error("every node failed: {}", summary(.failures))]
    AllNodesFailed {
        /// Each node tried, with why it failed.
        failures: Vec<NodeFailure>,
    },
}

/// One node's failure within a `send_closest` request, in
/// [`RequestError::AllNodesFailed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFailure {
    /// The node.
    pub node: PeerKey,
    /// Its last failure.
    pub error: RequestError,
}

fn summary(failures: &[NodeFailure]) -> String {
    let parts: Vec<String> = failures
        .iter()
        .map(|f| format!("{:?}: {}", f.node, f.error))
        .collect();
    parts.join("; ")
}

impl RequestError {
    /// Whether sending the same request again (later, or to another node) may succeed.
    ///
    /// [`RequestError::AllNodesFailed`] is retryable when at least one of
    /// its nodes failed in a retryable way.
    pub fn is_retryable(&self) -> bool {
        match self {
            RequestError::AllNodesFailed { failures } => {
                failures.iter().any(|f| f.error.is_retryable())
            }
            _ => matches!(
                self,
                RequestError::ConnectTimeout
                    | RequestError::ConnectFailed(_)
                    | RequestError::WriteTimeout
                    | RequestError::ReadTimeout
                    | RequestError::StreamReset
                    | RequestError::Busy(_)
                    | RequestError::ShuttingDown
                    | RequestError::PoolTimeout
            ),
        }
    }

    /// Whether this failure rules the node out for the rest of a
    /// `send_closest` request, though another node may well succeed: it
    /// does not serve the protocol, has no address, or its addresses belong
    /// to someone else.
    pub fn is_final_for_node(&self) -> bool {
        matches!(
            self,
            RequestError::UnsupportedProtocol(_)
                | RequestError::NoAddress
                | RequestError::WrongPeer { .. }
        )
    }

    /// A short stable name for the error's kind, for metrics and summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            RequestError::SelfSend => "self_send",
            RequestError::Closed => "closed",
            RequestError::Cancelled => "cancelled",
            RequestError::Oversize { .. } => "oversize",
            RequestError::ConnectTimeout => "connect_timeout",
            RequestError::ConnectFailed(_) => "connect_failed",
            RequestError::NoAddress => "no_address",
            RequestError::WrongPeer { .. } => "wrong_peer",
            RequestError::UnsupportedProtocol(_) => "unsupported_protocol",
            RequestError::InvalidProtocol(_) => "invalid_protocol",
            RequestError::WriteTimeout => "write_timeout",
            RequestError::ReadTimeout => "read_timeout",
            RequestError::Timeout => "timeout",
            RequestError::PoolTimeout => "pool_timeout",
            RequestError::StreamReset => "stream_reset",
            RequestError::Busy(_) => "busy",
            RequestError::ShuttingDown => "shutting_down",
            RequestError::Handler(_) => "handler",
            RequestError::Forbidden(_) => "forbidden",
            RequestError::Remote { .. } => "remote",
            RequestError::Protocol(_) => "protocol",
            RequestError::Route(_) => "route",
            RequestError::AllNodesFailed { .. } => "all_nodes_failed",
        }
    }
}

/// Why the server core refused an inbound stream or a call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// No handler is registered for this protocol.
    #[error("protocol {0} not served here")]
    UnsupportedProtocol(Protocol),
    /// The protocol already has a handler.
    #[error("protocol {0} already registered")]
    AlreadyRegistered(Protocol),
    /// The peer already has as many inbound streams as allowed.
    #[error("peer has {open} inbound streams, the limit is {limit}")]
    TooManyStreams {
        /// Streams the peer has open.
        open: usize,
        /// The per-peer limit.
        limit: usize,
    },
    /// The peer is not on the protocol's allow-list.
    #[error("peer not allowed on protocol {0}")]
    Forbidden(Protocol),
    /// The server is stopping and accepts no new streams.
    #[error("server shutting down")]
    ShuttingDown,
}

impl ServerError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ServerError::TooManyStreams { .. } | ServerError::ShuttingDown
        )
    }
}

/// A configuration value that cannot work, named by its option.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error("invalid configuration: {option} {reason}")]
pub struct ConfigError {
    /// The option's name, as in its `with_*` builder (without the prefix).
    pub option: &'static str,
    /// What is wrong with its value.
    pub reason: &'static str,
}

impl ConfigError {
    pub(crate) fn new(option: &'static str, reason: &'static str) -> Self {
        ConfigError { option, reason }
    }

    /// Never: a configuration does not fix itself.
    pub fn is_retryable(&self) -> bool {
        false
    }
}
