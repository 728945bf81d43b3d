//! # pointsub-tokio: pointsub over real libp2p
//!
//! Point-to-point raw streams (and, on top of them, request/response)
//! addressed by `PeerId` and protocol, over a libp2p swarm.
//!
//! The glue is runtime-neutral: [`behaviour`] (the libp2p plumbing),
//! [`node`] (a swarm driven by a task) and [`rt`] (the [`Runtime`] trait)
//! compile without tokio (`default-features = false`), which is how
//! `pointsub-async-std` reuses them. The `tokio-runtime` feature (on by
//! default) adds [`TokioRuntime`], [`NodeConfig`] and [`TokioNode`]
//! (TCP + noise + yamux, and QUIC).
#![deny(missing_docs)]

pub mod behaviour;
pub mod node;
pub mod rt;
#[cfg(feature = "tokio-runtime")]
mod tokio_rt;

pub use behaviour::{
    AlreadyRegistered, Connect, Control, DialError, IncomingStreams, OpenStream, OpenStreamError,
    StreamBehaviour,
};
pub use libp2p::{self, Multiaddr, PeerId, Stream, StreamProtocol};
pub use node::{Node, NodeError};
pub use rt::{Runtime, RuntimeExecutor};
#[cfg(feature = "tokio-runtime")]
pub use tokio_rt::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_CONNECTION_TIMEOUT, NodeConfig, TokioNode, TokioRuntime,
};
