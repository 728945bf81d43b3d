//! The runtime-neutral glue between libp2p and the sans-IO core: no tokio,
//! no async-std, only `futures` and libp2p's poll model, parameterised by a
//! [`Runtime`](crate::Runtime). The runtime crates (this one's
//! `tokio-runtime` feature, pointsub-async-std) fill the runtime in.
//!
//! - [`behaviour`]: the libp2p [`NetworkBehaviour`](libp2p::swarm::NetworkBehaviour)
//!   and its control handle, connection handler and shared state;
//! - [`host`]: the behaviour's handle plus a runtime, what everything
//!   above it is built on; [`node`]: a swarm of its own, driven by a task;
//! - [`client`], [`server`], [`conn`]: the public APIs; `driver` moves one
//!   core's bytes between its streams and the runtime;
//! - [`discovery`]: server nodes for `send_closest` found through identify
//!   and Kademlia provider records;
//! - [`net`]: the node's composed behaviour for real networks (identify,
//!   ping, AutoNAT v2, relay, DCUtR, Kademlia, mDNS) and its events;
//! - [`coalesce`]: flushes that wait one turn of the connection task, so
//!   yamux's frames leave in fewer, larger noise messages, and reads that
//!   take a noise message in one system call;
//! - `common`: what client and server share (peer keys, connection info,
//!   the mutex helper).

pub mod behaviour;
pub mod client;
pub mod coalesce;
mod common;
pub mod conn;
pub mod discovery;
pub(crate) mod driver;
pub mod host;
pub mod net;
pub mod node;
pub mod rt;
pub mod server;
