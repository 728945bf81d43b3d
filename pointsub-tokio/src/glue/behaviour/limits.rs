//! pointsub's stream limits: what the behaviour needs of the user's swarm
//! and muxer (1,024 streams per connection, 1,024 inbound streams
//! negotiating at once), and the helpers that set them. [`Control`]'s
//! `yamux_config` / `swarm_config` apply them and record that they did.
//!
//! [`Control`]: super::Control

/// Streams allowed per connection by [`yamux_config`] and inbound streams
/// allowed to negotiate at once by [`swarm_limits`]: 1024, leaving
/// yamux room to grow the windows of fast streams (see the
/// [node module docs](crate::node)).
pub const MAX_STREAMS_PER_CONNECTION: usize = 1024;

/// Events from the behaviour to each connection that may queue before the
/// swarm pauses polling the behaviour (libp2p's default is 8).
const NOTIFY_HANDLER_BUFFER: usize = 64;

/// The yamux configuration every pointsub node uses: default, with
/// [`MAX_STREAMS_PER_CONNECTION`] streams per connection.
pub fn yamux_config() -> libp2p::yamux::Config {
    let mut config = libp2p::yamux::Config::default();
    config.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
    config
}

/// pointsub's stream limits on a swarm config, nothing else:
/// [`MAX_STREAMS_PER_CONNECTION`] concurrently negotiating inbound streams
/// (libp2p's default is 128) and a deeper behaviour-to-handler buffer (64
/// events instead of 8). [`Control::swarm_config`] applies it and records
/// that it did.
///
/// [`Control::swarm_config`]: crate::Control::swarm_config
pub fn swarm_limits(config: libp2p::swarm::Config) -> libp2p::swarm::Config {
    let buffer =
        std::num::NonZeroUsize::new(NOTIFY_HANDLER_BUFFER).unwrap_or(std::num::NonZeroUsize::MIN);
    config
        .with_max_negotiating_inbound_streams(MAX_STREAMS_PER_CONNECTION)
        .with_notify_handler_buffer_size(buffer)
}
