//! Prometheus export of pointsub's statistics (feature `metrics`).
//!
//! [`Metrics::register`] puts one collector into a prometheus-client
//! [`Registry`], the same type (prometheus-client 0.25) that
//! `libp2p-metrics` 0.18 re-exports, so one registry, and one scrape,
//! holds libp2p's swarm metrics and pointsub's. Clients and servers are
//! added to it with [`Metrics::add_client`] / [`Metrics::add_server`]; the
//! collector reads their cores' statistics
//! ([`pointsub_proto::stats`]) at scrape time, so counting costs nothing
//! between scrapes. Several clients (or servers) are summed. A client or
//! server that is dropped stops being read; what it had counted until the
//! last scrape stays in the totals, so counters never go down.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use pointsub_tokio::metrics::{Metrics, Registry};
//! use pointsub_tokio::{Client, ClientConfig, Node, NodeConfig};
//!
//! let mut registry = Registry::default();
//! // libp2p's own metrics, if you use libp2p-metrics:
//! // let libp2p_metrics = libp2p::metrics::Metrics::new(&mut registry);
//! let metrics = Metrics::register(&mut registry);
//! let node = Node::new(NodeConfig::default()).await?;
//! let client = Client::new(&node, ClientConfig::default())?;
//! metrics.add_client(&client);
//! let mut text = String::new();
//! pointsub_tokio::metrics::prometheus_client::encoding::text::encode(&mut text, &registry)?;
//! # Ok(()) }
//! ```
//!
//! # Metrics
//!
//! Labels are the protocol (a client keeps at most
//! `ClientConfig::max_protocol_labels` apart, the rest are `other`), the
//! outcome (`ok` or an error kind, see `RequestError::kind`) and a
//! direction; never a peer id. In the OpenMetrics text, counters end in
//! `_total`.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `pointsub_client_requests_total` | counter | protocol, outcome |
//! | `pointsub_client_request_duration_seconds` | histogram | protocol |
//! | `pointsub_client_requests_in_flight` | gauge | protocol |
//! | `pointsub_client_retries_total`, `_failovers_total`, `_hedges_total` | counter | protocol |
//! | `pointsub_client_busy_total` (Busy answers, retried or not) | counter | protocol |
//! | `pointsub_client_cancelled_total` | counter | protocol |
//! | `pointsub_client_slow_requests_total` | counter | protocol |
//! | `pointsub_client_body_bytes_total`, `pointsub_client_wire_bytes_total` | counter | protocol, direction |
//! | `pointsub_client_pool_streams` | gauge | state (`open`, `idle`, `opening`) |
//! | `pointsub_client_pool_waiting` | gauge | |
//! | `pointsub_server_requests_total` | counter | protocol, outcome |
//! | `pointsub_server_handler_duration_seconds` | histogram | protocol |
//! | `pointsub_server_requests_in_flight` | gauge | protocol |
//! | `pointsub_server_busy_total` | counter | protocol |
//! | `pointsub_server_cancelled_total` | counter | protocol |
//! | `pointsub_server_slow_handlers_total` | counter | protocol |
//! | `pointsub_server_body_bytes_total`, `pointsub_server_wire_bytes_total` | counter | protocol, direction |
//! | `pointsub_server_admission_limit` | gauge | |
//! | `pointsub_server_streams_open` | gauge | |
//!
//! Body bytes are counted before compression (sent) or after
//! decompression (received); wire bytes are the pointsub frames on the
//! streams, after compression: their ratio is the compression's effect.

use std::fmt;
use std::sync::{Arc, Mutex};

use pointsub_proto::stats::{ClientStats, ProtocolStats, ServerStats};
/// The prometheus-client crate this module is built on (0.25), to encode
/// a registry without depending on it separately.
pub use prometheus_client;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
pub use prometheus_client::registry::Registry;

use crate::glue::driver::lock;
use crate::{Runtime, generic};

/// Reads a client's or server's statistics without keeping it alive
/// (`None` once it is gone).
pub(crate) type StatsSource<T> = Box<dyn Fn() -> Option<T> + Send + Sync>;

#[cfg(feature = "bench")]
pub mod http;

/// What a [`Metrics`] reads at scrape time.
#[derive(Default)]
struct Sources {
    clients: Vec<Source<ClientStats>>,
    servers: Vec<Source<ServerStats>>,
    /// Counts of clients that are gone.
    retired_clients: ClientStats,
    /// Counts of servers that are gone.
    retired_servers: ServerStats,
}

/// One client or server, and what it had counted at the last scrape.
struct Source<T> {
    read: StatsSource<T>,
    last: Option<T>,
}

/// Reads every live source into one total; sources that are gone leave
/// their last counts in `retired`.
fn total<T: Clone + Default>(
    sources: &mut Vec<Source<T>>,
    retired: &mut T,
    merge: fn(&mut T, &T),
    retire: fn(&T) -> T,
) -> T {
    let mut sum = retired.clone();
    sources.retain_mut(|s| match (s.read)() {
        Some(now) => {
            merge(&mut sum, &now);
            s.last = Some(now);
            true
        }
        None => {
            if let Some(last) = s.last.take() {
                let counts = retire(&last);
                merge(retired, &counts);
                merge(&mut sum, &counts);
            }
            false
        }
    });
    sum
}

/// pointsub's metrics in a prometheus-client registry: the handle to add
/// clients and servers to. Cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    sources: Arc<Mutex<Sources>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = lock(&self.sources);
        f.debug_struct("Metrics")
            .field("clients", &s.clients.len())
            .field("servers", &s.servers.len())
            .finish()
    }
}

impl Metrics {
    /// Registers pointsub's collector in `registry` and returns the handle
    /// to add clients and servers to. Register once per registry: each
    /// call adds a collector exporting the same metric names.
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
        registry.register_collector(Box::new(metrics.clone()));
        metrics
    }

    /// Exports `client`'s statistics (summed with other clients added).
    /// Does not keep the client alive.
    pub fn add_client<R: Runtime>(&self, client: &generic::Client<R>) {
        lock(&self.sources).clients.push(Source {
            read: client.stats_source(),
            last: None,
        });
    }

    /// Exports `server`'s statistics (summed with other servers added).
    /// Does not keep the server alive.
    pub fn add_server<R: Runtime>(&self, server: &generic::Server<R>) {
        lock(&self.sources).servers.push(Source {
            read: server.stats_source(),
            last: None,
        });
    }

    /// The totals now: of the clients, and of the servers (`None` for a
    /// side with nothing ever added).
    pub fn snapshot(&self) -> (Option<ClientStats>, Option<ServerStats>) {
        let mut s = lock(&self.sources);
        let s = &mut *s;
        let any_client = !s.clients.is_empty() || !s.retired_clients.protocols.is_empty();
        let any_server = !s.servers.is_empty() || !s.retired_servers.protocols.is_empty();
        let clients = any_client.then(|| {
            total(
                &mut s.clients,
                &mut s.retired_clients,
                ClientStats::merge,
                ClientStats::retired,
            )
        });
        let servers = any_server.then(|| {
            total(
                &mut s.servers,
                &mut s.retired_servers,
                ServerStats::merge,
                ServerStats::retired,
            )
        });
        (clients, servers)
    }
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let (clients, servers) = self.snapshot();
        if let Some(c) = clients {
            encode_client(&mut encoder, &c)?;
        }
        if let Some(s) = servers {
            encode_server(&mut encoder, &s)?;
        }
        Ok(())
    }
}

/// Writes one family: `name` with `help`, one sample per `(labels, value)`.
fn family<const N: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = ([(&'static str, String); N], u64)>,
) -> Result<(), fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(sample)?,
            _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(sample)?,
        }
    }
    Ok(())
}

/// A gauge without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(metric)
}

/// One counter (or gauge) per protocol, from `f`.
fn per_protocol(
    encoder: &mut DescriptorEncoder,
    protocols: &[(String, ProtocolStats)],
    name: &str,
    help: &str,
    kind: MetricType,
    f: fn(&ProtocolStats) -> u64,
) -> Result<(), fmt::Error> {
    family(
        encoder,
        name,
        help,
        kind,
        protocols
            .iter()
            .map(|(p, s)| ([("protocol", p.clone())], f(s))),
    )
}

/// Requests by protocol and outcome.
fn outcomes(
    encoder: &mut DescriptorEncoder,
    protocols: &[(String, ProtocolStats)],
    name: &str,
    help: &str,
) -> Result<(), fmt::Error> {
    family(
        encoder,
        name,
        help,
        MetricType::Counter,
        protocols.iter().flat_map(|(p, s)| {
            s.outcomes
                .iter()
                .map(move |(o, n)| ([("protocol", p.clone()), ("outcome", (*o).to_owned())], *n))
        }),
    )
}

/// Bytes by protocol and direction.
fn bytes(
    encoder: &mut DescriptorEncoder,
    protocols: &[(String, ProtocolStats)],
    name: &str,
    help: &str,
    f: fn(&ProtocolStats) -> (u64, u64),
) -> Result<(), fmt::Error> {
    family(
        encoder,
        name,
        help,
        MetricType::Counter,
        protocols.iter().flat_map(|(p, s)| {
            let (sent, received) = f(s);
            [
                (
                    [("protocol", p.clone()), ("direction", "sent".into())],
                    sent,
                ),
                (
                    [("protocol", p.clone()), ("direction", "received".into())],
                    received,
                ),
            ]
        }),
    )
}

/// A latency histogram per protocol.
fn histograms(
    encoder: &mut DescriptorEncoder,
    protocols: &[(String, ProtocolStats)],
    name: &str,
    help: &str,
) -> Result<(), fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (p, s) in protocols {
        let labels = [("protocol", p.as_str())];
        let buckets: Vec<(f64, u64)> = s
            .latency
            .buckets()
            .map(|(bound, n)| (bound.map_or(f64::INFINITY, |b| b.as_secs_f64()), n))
            .collect();
        metric
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(
                s.latency.sum().as_secs_f64(),
                s.latency.count(),
                &buckets,
                None,
            )?;
    }
    Ok(())
}

fn encode_client(e: &mut DescriptorEncoder, c: &ClientStats) -> Result<(), fmt::Error> {
    use MetricType::{Counter, Gauge};
    let p = &c.protocols;
    outcomes(
        e,
        p,
        "pointsub_client_requests",
        "Requests sent by pointsub clients that ended, by protocol and outcome (ok or the error kind).",
    )?;
    histograms(
        e,
        p,
        "pointsub_client_request_duration_seconds",
        "Time from send to outcome of the client requests that ended, retries included.",
    )?;
    per_protocol(
        e,
        p,
        "pointsub_client_requests_in_flight",
        "Client requests not ended yet.",
        Gauge,
        |s| s.in_flight,
    )?;
    per_protocol(
        e,
        p,
        "pointsub_client_retries",
        "Client attempts that retried the same node after a failure.",
        Counter,
        |s| s.retries,
    )?;
    per_protocol(
        e,
        p,
        "pointsub_client_failovers",
        "Client attempts that moved to another node after a failure (send-closest).",
        Counter,
        |s| s.failovers,
    )?;
    per_protocol(
        e,
        p,
        "pointsub_client_hedges",
        "Extra client attempts started at once by hedged send-closest requests.",
        Counter,
        |s| s.hedges,
    )?;
    per_protocol(
        e,
        p,
        "pointsub_client_busy",
        "Busy answers received by clients (admission shed the attempt), retried or not.",
        Counter,
        |s| s.busy,
    )?;
    per_protocol(
        e,
        p,
        "pointsub_client_cancelled",
        "Client requests cancelled by their caller.",
        Counter,
        |s| s.cancelled,
    )?;
    per_protocol(
        e,
        p,
        "pointsub_client_slow_requests",
        "Client requests that ran past the slow-request threshold.",
        Counter,
        |s| s.slow,
    )?;
    bytes(
        e,
        p,
        "pointsub_client_body_bytes",
        "Client body bytes: requests sent before compression, responses received after decompression.",
        |s| (s.body_bytes_sent, s.body_bytes_received),
    )?;
    bytes(
        e,
        p,
        "pointsub_client_wire_bytes",
        "Bytes of pointsub frames on client streams (after compression).",
        |s| (s.wire_bytes_sent, s.wire_bytes_received),
    )?;
    family(
        e,
        "pointsub_client_pool_streams",
        "Pooled client streams, by state.",
        Gauge,
        [
            ([("state", "open".to_owned())], c.pool_open),
            ([("state", "idle".to_owned())], c.pool_idle),
            ([("state", "opening".to_owned())], c.pool_opening),
        ],
    )?;
    single(
        e,
        "pointsub_client_pool_waiting",
        "Client attempts waiting for a pooled stream.",
        c.pool_waiting,
    )
}

fn encode_server(e: &mut DescriptorEncoder, s: &ServerStats) -> Result<(), fmt::Error> {
    use MetricType::{Counter, Gauge};
    let p = &s.protocols;
    outcomes(
        e,
        p,
        "pointsub_server_requests",
        "Requests answered by pointsub servers, by protocol and outcome (ok, busy, handler, ...).",
    )?;
    histograms(
        e,
        p,
        "pointsub_server_handler_duration_seconds",
        "Time from admission to the handler's answer of admitted server requests.",
    )?;
    per_protocol(
        e,
        p,
        "pointsub_server_requests_in_flight",
        "Server requests admitted and not answered yet.",
        Gauge,
        |s| s.in_flight,
    )?;
    per_protocol(
        e,
        p,
        "pointsub_server_busy",
        "Busy answers sent by server admission.",
        Counter,
        |s| s.busy,
    )?;
    per_protocol(
        e,
        p,
        "pointsub_server_cancelled",
        "Cancellations received for requests being handled.",
        Counter,
        |s| s.cancelled,
    )?;
    per_protocol(
        e,
        p,
        "pointsub_server_slow_handlers",
        "Handlers that ran past the slow-handler threshold.",
        Counter,
        |s| s.slow,
    )?;
    bytes(
        e,
        p,
        "pointsub_server_body_bytes",
        "Server body bytes: responses sent before compression, requests received after decompression.",
        |s| (s.body_bytes_sent, s.body_bytes_received),
    )?;
    bytes(
        e,
        p,
        "pointsub_server_wire_bytes",
        "Bytes of pointsub frames on server streams (after compression).",
        |s| (s.wire_bytes_sent, s.wire_bytes_received),
    )?;
    single(
        e,
        "pointsub_server_admission_limit",
        "The adaptive admission limit in force (summed over servers).",
        s.admission_limit,
    )?;
    single(
        e,
        "pointsub_server_streams_open",
        "Inbound pointsub streams open.",
        s.streams_open,
    )
}
