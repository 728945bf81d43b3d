//! Client and server configuration, with the PointSub spec's defaults.
//!
//! Every option has a `with_*` builder; [`ClientConfig::validate`] and
//! [`ServerConfig::validate`] refuse zero timeouts, limits and sizes with a
//! [`ConfigError`] naming the option. The cores validate on construction.

use crate::admission::AdmissionConfig;
use crate::error::ConfigError;
use crate::pool::PoolConfig;
use crate::route::RouteConfig;
use std::time::Duration;

/// Default largest body, in either direction: 32 MiB.
pub const DEFAULT_MAX_BLOCK_SIZE: usize = 32 * 1024 * 1024;

/// Options of a [`crate::Client`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Time allowed for the response after the request was written (spec: 30 s).
    pub read_timeout: Duration,
    /// Time allowed to write a request, and for a stream's writes to make progress (30 s).
    pub write_timeout: Duration,
    /// Time allowed to open a stream to the peer, dialing included (5 s).
    pub connect_timeout: Duration,
    /// Time a request may wait for a pooled stream when the pool is full (30 s).
    pub pool_timeout: Duration,
    /// Retries after the first attempt for retryable failures (3).
    pub max_retries: u32,
    /// Base delay before the first retry; doubles per retry, with jitter (1 s).
    pub retry_interval: Duration,
    /// Cap on the delay between retries (30 s).
    pub max_backoff: Duration,
    /// Whether a read timeout is retried: only safe when handlers are idempotent (false).
    pub retry_on_read_timeout: bool,
    /// Largest request or response body accepted (32 MiB).
    pub max_block_size: usize,
    /// Compress bodies with deflate when the peer accepts it (true).
    pub compression: bool,
    /// Bodies shorter than this are never compressed (1 KiB).
    pub compression_threshold: usize,
    /// Idle pooled streams kept open (100).
    pub max_idle_conns: usize,
    /// Pooled streams open or opening at once, all peers together (100).
    pub max_total_conns: usize,
    /// An idle pooled stream is closed after this long (5 min).
    pub idle_conn_timeout: Duration,
    /// Requests in flight on one stream at once (256). Messages interleave
    /// on a stream (a small one waits behind at most one 64 KiB chunk of a
    /// large one), so sharing a stream costs little, and carrying many
    /// requests on few streams lets their frames go out in one write: at
    /// 100 in flight, one stream carried 1.3-1.5x the requests per second
    /// of 25 streams of 4 (`pointsub bench`). A default server admits 500
    /// requests from one peer at once (`ServerConfig::max_per_peer`) and
    /// answers the rest Busy, which the client retries.
    pub max_inflight_per_stream: usize,
    /// Streams to one peer (for one protocol) that share its requests
    /// before any carries more than a quarter of `max_inflight_per_stream`
    /// (2): a second stream opens at 64 requests in flight, not 256. Each
    /// stream is packed, written and read by its own task, so on a
    /// multi-core machine two streams keep two threads busy: at 100 in
    /// flight, 1.13-1.22x raw TCP with 2 against 0.93-1.11x with 1
    /// (`pointsub bench --quick`). Past that streams fill up as before.
    /// `0` or `1`: no spreading.
    pub spread_streams: usize,
    /// First cool-down of a node that failed, for send-closest (1 s).
    pub cooldown_base: Duration,
    /// Longest cool-down of a node that keeps failing (60 s).
    pub cooldown_max: Duration,
    /// Seed of the jitter RNG; give each client its own for independent jitter (0).
    pub seed: u64,
    /// A request still running this long after `send` is counted as slow,
    /// and reported once by a [`ClientEvent::SlowRequest`](crate::ClientEvent::SlowRequest)
    /// (rate-limited; see [`crate::stats`]). `None`: no alarm (the default).
    pub slow_request_threshold: Option<Duration>,
    /// Protocols the client's statistics keep apart; requests on further
    /// protocols are counted under [`OTHER`](crate::stats::OTHER) (32).
    pub max_protocol_labels: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            pool_timeout: Duration::from_secs(30),
            max_retries: 3,
            retry_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            retry_on_read_timeout: false,
            max_block_size: DEFAULT_MAX_BLOCK_SIZE,
            compression: true,
            compression_threshold: crate::compress::DEFAULT_THRESHOLD,
            max_idle_conns: 100,
            max_total_conns: 100,
            idle_conn_timeout: Duration::from_secs(300),
            max_inflight_per_stream: 256,
            spread_streams: 2,
            cooldown_base: Duration::from_secs(1),
            cooldown_max: Duration::from_secs(60),
            seed: 0,
            slow_request_threshold: None,
            max_protocol_labels: crate::stats::DEFAULT_MAX_PROTOCOL_LABELS,
        }
    }
}

macro_rules! builders {
    ($ty:ty { $($(#[$doc:meta])* $name:ident : $field:ident : $t:ty),* $(,)? }) => {
        impl $ty {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $name(mut self, value: $t) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

builders!(ClientConfig {
    /// Sets [`ClientConfig::read_timeout`].
    with_read_timeout: read_timeout: Duration,
    /// Sets [`ClientConfig::write_timeout`].
    with_write_timeout: write_timeout: Duration,
    /// Sets [`ClientConfig::connect_timeout`].
    with_connect_timeout: connect_timeout: Duration,
    /// Sets [`ClientConfig::pool_timeout`].
    with_pool_timeout: pool_timeout: Duration,
    /// Sets [`ClientConfig::max_retries`].
    with_max_retries: max_retries: u32,
    /// Sets [`ClientConfig::retry_interval`].
    with_retry_interval: retry_interval: Duration,
    /// Sets [`ClientConfig::max_backoff`].
    with_max_backoff: max_backoff: Duration,
    /// Sets [`ClientConfig::retry_on_read_timeout`].
    with_retry_on_read_timeout: retry_on_read_timeout: bool,
    /// Sets [`ClientConfig::max_block_size`].
    with_max_block_size: max_block_size: usize,
    /// Sets [`ClientConfig::compression`].
    with_compression: compression: bool,
    /// Sets [`ClientConfig::compression_threshold`].
    with_compression_threshold: compression_threshold: usize,
    /// Sets [`ClientConfig::max_idle_conns`].
    with_max_idle_conns: max_idle_conns: usize,
    /// Sets [`ClientConfig::max_total_conns`].
    with_max_total_conns: max_total_conns: usize,
    /// Sets [`ClientConfig::idle_conn_timeout`].
    with_idle_conn_timeout: idle_conn_timeout: Duration,
    /// Sets [`ClientConfig::max_inflight_per_stream`].
    with_max_inflight_per_stream: max_inflight_per_stream: usize,
    /// Sets [`ClientConfig::spread_streams`].
    with_spread_streams: spread_streams: usize,
    /// Sets [`ClientConfig::cooldown_base`].
    with_cooldown_base: cooldown_base: Duration,
    /// Sets [`ClientConfig::cooldown_max`].
    with_cooldown_max: cooldown_max: Duration,
    /// Sets [`ClientConfig::seed`].
    with_seed: seed: u64,
    /// Sets [`ClientConfig::max_protocol_labels`].
    with_max_protocol_labels: max_protocol_labels: usize,
});

impl ClientConfig {
    /// Sets [`ClientConfig::slow_request_threshold`].
    #[must_use]
    pub fn with_slow_request_threshold(mut self, threshold: Duration) -> Self {
        self.slow_request_threshold = Some(threshold);
        self
    }
}

impl ServerConfig {
    /// Sets [`ServerConfig::slow_handler_threshold`].
    #[must_use]
    pub fn with_slow_handler_threshold(mut self, threshold: Duration) -> Self {
        self.slow_handler_threshold = Some(threshold);
        self
    }
}

fn positive(option: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(ConfigError::new(option, "must be greater than zero"))
    } else {
        Ok(())
    }
}

fn nonzero(option: &'static str, n: usize) -> Result<(), ConfigError> {
    if n == 0 {
        Err(ConfigError::new(option, "must be greater than zero"))
    } else {
        Ok(())
    }
}

impl ClientConfig {
    /// Checks every option; the first bad one is named in the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("read_timeout", self.read_timeout)?;
        positive("write_timeout", self.write_timeout)?;
        positive("connect_timeout", self.connect_timeout)?;
        positive("pool_timeout", self.pool_timeout)?;
        positive("retry_interval", self.retry_interval)?;
        positive("max_backoff", self.max_backoff)?;
        positive("idle_conn_timeout", self.idle_conn_timeout)?;
        positive("cooldown_base", self.cooldown_base)?;
        positive("cooldown_max", self.cooldown_max)?;
        nonzero("max_block_size", self.max_block_size)?;
        nonzero("max_total_conns", self.max_total_conns)?;
        nonzero("max_idle_conns", self.max_idle_conns)?;
        nonzero("max_inflight_per_stream", self.max_inflight_per_stream)?;
        nonzero("max_protocol_labels", self.max_protocol_labels)?;
        if let Some(t) = self.slow_request_threshold {
            positive("slow_request_threshold", t)?;
        }
        if self.max_block_size > u32::MAX as usize {
            return Err(ConfigError::new("max_block_size", "must fit in 32 bits"));
        }
        if self.max_backoff < self.retry_interval {
            return Err(ConfigError::new(
                "max_backoff",
                "must not be shorter than retry_interval",
            ));
        }
        if self.cooldown_max < self.cooldown_base {
            return Err(ConfigError::new(
                "cooldown_max",
                "must not be shorter than cooldown_base",
            ));
        }
        Ok(())
    }

    /// Requests in flight at which a stream counts as full while a peer's
    /// requests are still being spread over `spread_streams` streams.
    pub fn spread_below(&self) -> usize {
        self.pool().spread_below()
    }

    pub(crate) fn pool(&self) -> PoolConfig {
        PoolConfig {
            max_idle: self.max_idle_conns,
            max_total: self.max_total_conns,
            idle_timeout: self.idle_conn_timeout,
            max_inflight_per_stream: self.max_inflight_per_stream,
            spread_streams: self.spread_streams,
        }
    }

    pub(crate) fn route(&self) -> RouteConfig {
        RouteConfig {
            cooldown_base: self.cooldown_base,
            cooldown_max: self.cooldown_max,
        }
    }
}

/// Options of a [`crate::Server`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Time allowed to receive a request once its first byte arrived (30 s).
    pub read_timeout: Duration,
    /// Time allowed for a stream's pending writes to make progress (30 s).
    pub write_timeout: Duration,
    /// Initial admission limit: requests handled at once (1000). The limit
    /// then adapts (see [`crate::admission`]): it grows only while requests
    /// fill it and their latency stays within `latency_tolerance` of its
    /// baseline, and shrinks when latency rises above that.
    pub max_concurrent_conns: usize,
    /// Lowest the admission limit may fall to under load (100).
    pub min_concurrent_conns: usize,
    /// Highest the admission limit may grow to (10000).
    pub max_concurrent_limit: usize,
    /// Largest fraction by which the limit moves per adjustment (0.10). It
    /// grows by `sqrt(limit)` and shrinks by the latency gradient, both
    /// capped by this.
    pub adjust_step: f64,
    /// How far the mean latency (admission to answer) may rise above its
    /// baseline before the limit shrinks (1.5: 50 % above). At least 1.
    pub latency_tolerance: f64,
    /// How often the admission limit is re-evaluated (1 s): the window over
    /// which latency and demand are measured.
    pub adjust_interval: Duration,
    /// Requests one peer may have handled at once, so no peer takes the whole limit (500).
    pub max_per_peer: usize,
    /// Inbound streams one peer may hold open (256).
    pub max_streams_per_peer: usize,
    /// Largest request or response body (32 MiB).
    pub max_block_size: usize,
    /// Read buffer size hint for adapters (4 KiB).
    pub buffer_pool_size: usize,
    /// Inbound streams idle this long are closed (5 min).
    pub cleanup_interval: Duration,
    /// Compress responses for clients that accept deflate (true).
    pub compression: bool,
    /// Bodies shorter than this are never compressed (1 KiB).
    pub compression_threshold: usize,
    /// A handler still running this long after admission is counted as
    /// slow, and reported once, when it crosses the threshold, by a
    /// [`ServerEvent::SlowHandler`](crate::ServerEvent::SlowHandler)
    /// (rate-limited; see [`crate::stats`]). `None`: no alarm (the default).
    pub slow_handler_threshold: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_concurrent_conns: 1000,
            min_concurrent_conns: 100,
            max_concurrent_limit: 10_000,
            adjust_step: 0.10,
            latency_tolerance: 1.5,
            adjust_interval: Duration::from_secs(1),
            max_per_peer: 500,
            max_streams_per_peer: 256,
            max_block_size: DEFAULT_MAX_BLOCK_SIZE,
            buffer_pool_size: 4096,
            cleanup_interval: Duration::from_secs(300),
            compression: true,
            compression_threshold: crate::compress::DEFAULT_THRESHOLD,
            slow_handler_threshold: None,
        }
    }
}

builders!(ServerConfig {
    /// Sets [`ServerConfig::read_timeout`].
    with_read_timeout: read_timeout: Duration,
    /// Sets [`ServerConfig::write_timeout`].
    with_write_timeout: write_timeout: Duration,
    /// Sets [`ServerConfig::max_concurrent_conns`].
    with_max_concurrent_conns: max_concurrent_conns: usize,
    /// Sets [`ServerConfig::min_concurrent_conns`].
    with_min_concurrent_conns: min_concurrent_conns: usize,
    /// Sets [`ServerConfig::max_concurrent_limit`].
    with_max_concurrent_limit: max_concurrent_limit: usize,
    /// Sets [`ServerConfig::adjust_step`].
    with_adjust_step: adjust_step: f64,
    /// Sets [`ServerConfig::latency_tolerance`].
    with_latency_tolerance: latency_tolerance: f64,
    /// Sets [`ServerConfig::adjust_interval`].
    with_adjust_interval: adjust_interval: Duration,
    /// Sets [`ServerConfig::max_per_peer`].
    with_max_per_peer: max_per_peer: usize,
    /// Sets [`ServerConfig::max_streams_per_peer`].
    with_max_streams_per_peer: max_streams_per_peer: usize,
    /// Sets [`ServerConfig::max_block_size`].
    with_max_block_size: max_block_size: usize,
    /// Sets [`ServerConfig::buffer_pool_size`].
    with_buffer_pool_size: buffer_pool_size: usize,
    /// Sets [`ServerConfig::cleanup_interval`].
    with_cleanup_interval: cleanup_interval: Duration,
    /// Sets [`ServerConfig::compression`].
    with_compression: compression: bool,
    /// Sets [`ServerConfig::compression_threshold`].
    with_compression_threshold: compression_threshold: usize,
});

impl ServerConfig {
    /// Checks every option; the first bad one is named in the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("read_timeout", self.read_timeout)?;
        positive("write_timeout", self.write_timeout)?;
        positive("adjust_interval", self.adjust_interval)?;
        positive("cleanup_interval", self.cleanup_interval)?;
        nonzero("max_concurrent_conns", self.max_concurrent_conns)?;
        nonzero("min_concurrent_conns", self.min_concurrent_conns)?;
        nonzero("max_concurrent_limit", self.max_concurrent_limit)?;
        nonzero("max_per_peer", self.max_per_peer)?;
        nonzero("max_streams_per_peer", self.max_streams_per_peer)?;
        nonzero("max_block_size", self.max_block_size)?;
        nonzero("buffer_pool_size", self.buffer_pool_size)?;
        if let Some(t) = self.slow_handler_threshold {
            positive("slow_handler_threshold", t)?;
        }
        if self.max_block_size > u32::MAX as usize {
            return Err(ConfigError::new("max_block_size", "must fit in 32 bits"));
        }
        if self.min_concurrent_conns > self.max_concurrent_limit {
            return Err(ConfigError::new(
                "min_concurrent_conns",
                "must not exceed max_concurrent_limit",
            ));
        }
        if !(self.latency_tolerance >= 1.0 && self.latency_tolerance.is_finite()) {
            return Err(ConfigError::new(
                "latency_tolerance",
                "must be finite and at least 1",
            ));
        }
        if !(self.adjust_step > 0.0 && self.adjust_step < 1.0) {
            return Err(ConfigError::new("adjust_step", "must be in (0, 1)"));
        }
        Ok(())
    }

    pub(crate) fn admission(&self) -> AdmissionConfig {
        AdmissionConfig {
            initial_limit: self.max_concurrent_conns,
            min_limit: self.min_concurrent_conns,
            max_limit: self.max_concurrent_limit,
            step: self.adjust_step,
            latency_tolerance: self.latency_tolerance,
            max_per_peer: self.max_per_peer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_spec() {
        let c = ClientConfig::default();
        assert_eq!(c.read_timeout, Duration::from_secs(30));
        assert_eq!(c.write_timeout, Duration::from_secs(30));
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.max_retries, 3);
        assert_eq!(c.retry_interval, Duration::from_secs(1));
        assert_eq!(c.max_block_size, 32 << 20);
        assert_eq!(c.max_idle_conns, 100);
        assert_eq!(c.max_total_conns, 100);
        assert_eq!(c.idle_conn_timeout, Duration::from_secs(300));
        assert_eq!(c.max_inflight_per_stream, 256);
        assert_eq!(c.spread_streams, 2);
        assert!(c.compression);
        c.validate().unwrap();
        let s = ServerConfig::default();
        assert_eq!(s.max_concurrent_conns, 1000);
        assert_eq!(s.min_concurrent_conns, 100);
        assert_eq!(s.max_concurrent_limit, 10_000);
        assert_eq!(s.cleanup_interval, Duration::from_secs(300));
        assert_eq!(s.buffer_pool_size, 4096);
        assert_eq!(s.adjust_step, 0.10);
        assert_eq!(s.latency_tolerance, 1.5);
        s.validate().unwrap();
    }

    #[test]
    fn zero_values_are_refused_by_name() {
        let e = ClientConfig::default()
            .with_connect_timeout(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert_eq!(e.option, "connect_timeout");
        let e = ClientConfig::default()
            .with_max_block_size(0)
            .validate()
            .unwrap_err();
        assert_eq!(e.option, "max_block_size");
        for bad in [0.9, f64::NAN, f64::INFINITY] {
            let e = ServerConfig::default()
                .with_latency_tolerance(bad)
                .validate()
                .unwrap_err();
            assert_eq!(e.option, "latency_tolerance");
        }
        ServerConfig::default()
            .with_latency_tolerance(1.0)
            .validate()
            .unwrap();
        let e = ServerConfig::default()
            .with_max_per_peer(0)
            .validate()
            .unwrap_err();
        assert_eq!(e.option, "max_per_peer");
        assert!(e.to_string().contains("max_per_peer"));
    }
}
