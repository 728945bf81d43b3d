//! # pointsub-proto: the sans-IO core of pointsub
//!
//! This crate contains no networking code, no async runtime, no threads and
//! reads no clock. It decides everything about point-to-point messaging
//! between peers (framing, compression, size limits, retries and backoff,
//! stream pooling, server admission, closest-node routing, connection info)
//! while the embedding application moves bytes and tells it the time.
//!
//! The two state machines are [`Client`] and [`Server`]. Both follow the same
//! polling discipline:
//!
//! 1. feed what happened with `handle_*(…, now)` (bytes read from a stream, a
//!    stream opened or reset, a flush completed) or a user call
//!    ([`Client::send`], [`Server::respond`], …);
//! 2. drain what must be done: `poll_event()` until `None`, and
//!    `poll_transmit()` until `None` (bytes to write on a stream);
//! 3. sleep until `poll_timeout()` and then call `handle_timeout(now)`.
//!
//! After every call of step 1, run step 2 before sleeping: outputs are only
//! produced by polling. Time is [`Instant`], a plain value the caller makes.
//!
//! Peers are opaque [`PeerKey`]s (the bytes of a libp2p `PeerId`), so the core
//! can be embedded in any event loop over any transport; see
//! `examples/std_net.rs` for one over plain `std::net` TCP.
#![doc = include_str!("wire.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod admission;
pub mod bodies;
pub mod check;
pub mod client;
pub mod compress;
pub mod config;
pub mod error;
pub mod frame;
mod ids;
pub mod metrics;
pub mod pool;
pub mod retry;
pub mod route;
pub mod server;
pub mod stats;
mod time;
mod timer;
mod transmit;

pub use client::{Client, ClientEvent, ClosestOptions, OpenFailure, Response, SendOptions};
pub use config::{ClientConfig, ServerConfig};
pub use error::{ConfigError, NodeFailure, RequestError, ServerError};
pub use ids::{PeerKey, Protocol, RequestId, StreamId};
pub use metrics::{ClientMetrics, ConnectionInfo, ServerMetrics};
pub use route::NodeSource;
pub use server::{Server, ServerEvent};
pub use stats::{ClientStats, ProtocolStats, ServerStats};
pub use time::Instant;
pub use transmit::{MAX_TRANSMIT, READ_PAUSE_BACKLOG, STREAM_WINDOW, Transmit};
