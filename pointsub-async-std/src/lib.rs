//! pointsub on async-std / smol.
//!
//! This crate runs pointsub over a real libp2p swarm on the `async-io`
//! reactor that async-std and smol share. async-std is discontinued upstream
//! (its README points to smol); everything here works under either runtime.
//!
//! For now it provides the [`transport`] module: a libp2p TCP transport on
//! `async-io` (libp2p itself no longer ships one) and [`build_swarm`], which
//! stacks noise and yamux on it.
#![deny(missing_docs)]

pub mod transport;

pub use transport::{BuildError, TcpTransport, build_swarm};
