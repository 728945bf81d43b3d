//! `--metrics ADDR`: pointsub's Prometheus metrics at `http://ADDR/metrics`
//! (OpenMetrics text), for `serve`, `demo` and `soak`.
//!
//! The registry holds pointsub's collector ([`Metrics`]). libp2p's own
//! swarm metrics (libp2p-metrics) need the swarm's events, which a
//! [`Node`](pointsub_tokio::Node) keeps inside its task; an application
//! that runs its own swarm registers both in one registry (README,
//! "Metrics").

use std::net::SocketAddr;
use std::sync::Arc;

use pointsub_tokio::metrics::{Metrics, Registry, http};

use crate::BoxError;

/// A running endpoint.
pub struct Endpoint {
    /// Add clients and servers here (e.g. a restarted server).
    pub metrics: Metrics,
    /// The address it listens on.
    pub addr: SocketAddr,
}

/// Serves a fresh registry with pointsub's metrics on `addr` in the
/// background.
pub async fn start(addr: SocketAddr) -> Result<Endpoint, BoxError> {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let registry = Arc::new(registry);
    let listener = http::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(http::serve(listener, registry));
    Ok(Endpoint { metrics, addr })
}

impl Endpoint {
    /// The line the commands print: `metrics on http://ADDR/metrics`.
    pub fn announce(&self) -> String {
        format!("metrics on http://{}/metrics", self.addr)
    }
}
