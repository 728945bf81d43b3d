//! `--metrics ADDR`: pointsub's Prometheus metrics at `http://ADDR/metrics`
//! (OpenMetrics text), for `serve`, `demo` and `soak`.
//!
//! The registry holds pointsub's collector ([`Metrics`]) and libp2p's own
//! metrics (libp2p-metrics: swarm, identify, ping, relay, DCUtR,
//! Kademlia), which a node records through the [`SwarmObserver`] that
//! [`Endpoint::observer`] gives (`serve`); one scrape shows both.

use std::net::SocketAddr;
use std::sync::Arc;

use libp2p::metrics::Recorder;
use pointsub_tokio::SwarmObserver;
use pointsub_tokio::metrics::{Metrics, Registry, http};
use pointsub_tokio::net::NetBehaviourEvent;

use crate::BoxError;

/// A running endpoint.
pub struct Endpoint {
    /// Add clients and servers here (e.g. a restarted server).
    pub metrics: Metrics,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// libp2p's metrics, in the same registry.
    libp2p: Arc<libp2p::metrics::Metrics>,
}

/// Serves a fresh registry with pointsub's metrics on `addr` in the
/// background.
pub async fn start(addr: SocketAddr) -> Result<Endpoint, BoxError> {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let libp2p = Arc::new(libp2p::metrics::Metrics::new(&mut registry));
    let registry = Arc::new(registry);
    let listener = http::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(http::serve(listener, registry));
    Ok(Endpoint {
        metrics,
        addr,
        libp2p,
    })
}

impl Endpoint {
    /// Records a node's swarm events into libp2p's metrics here: give it
    /// to `NodeConfig::with_swarm_observer`.
    pub fn observer(&self) -> SwarmObserver {
        let metrics = self.libp2p.clone();
        SwarmObserver::new(move |event| {
            metrics.record(event);
            if let libp2p::swarm::SwarmEvent::Behaviour(event) = event {
                match event {
                    NetBehaviourEvent::Identify(e) => metrics.record(e),
                    NetBehaviourEvent::Ping(e) => metrics.record(e),
                    NetBehaviourEvent::RelayServer(e) => metrics.record(e),
                    NetBehaviourEvent::Dcutr(e) => metrics.record(e),
                    NetBehaviourEvent::Kad(e) => metrics.record(e),
                    _ => {}
                }
            }
        })
    }

    /// The line the commands print: `metrics on http://ADDR/metrics`.
    pub fn announce(&self) -> String {
        format!("metrics on http://{}/metrics", self.addr)
    }
}
