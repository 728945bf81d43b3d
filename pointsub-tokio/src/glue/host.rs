//! [`Host`]: pointsub's handle on a libp2p swarm that runs its
//! [`Behaviour`], plus the runtime its tasks run on. Clients, servers,
//! listeners and raw connections are all built on a `Host`.
//!
//! A [`Node`] is a host whose swarm pointsub builds and drives itself
//! (it dereferences to its `Host`). An application that already runs a
//! libp2p swarm puts a [`Behaviour`] in its own
//! `#[derive(NetworkBehaviour)]` struct instead, beside identify, ping,
//! Kademlia and the rest, keeps driving its swarm as before, and makes a
//! `Host` from the behaviour:
//!
//! ```no_run
//! # #[cfg(feature = "tokio-runtime")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use pointsub_tokio::libp2p::{self, identity::Keypair, swarm::NetworkBehaviour};
//! use pointsub_tokio::{Behaviour, Client, ClientConfig, TokioRuntime};
//!
//! #[derive(NetworkBehaviour)]
//! #[behaviour(prelude = "pointsub_tokio::libp2p::swarm::derive_prelude")]
//! struct MyBehaviour {
//!     pointsub: Behaviour,
//!     // identify, ping, kademlia, ...
//! }
//!
//! let keypair = Keypair::generate_ed25519();
//! let pointsub = Behaviour::new(keypair.public().to_peer_id());
//! let control = pointsub.control();
//! let host = pointsub.host(TokioRuntime::try_current()?);
//! let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
//!     .with_tokio()
//!     .with_tcp(Default::default(), pointsub_tokio::coalesce::noise, || control.yamux_config())?
//!     .with_behaviour(|_| MyBehaviour { pointsub })?
//!     .with_swarm_config(|c| control.swarm_config(c))
//!     .build();
//! // ... the application polls `swarm` in its own loop ...
//! let client = Client::new(&host, ClientConfig::default())?;
//! # drop((swarm, client)); Ok(()) }
//! ```
//!
//! [`coalesce::noise`](crate::coalesce::noise) is libp2p's noise with
//! its flushes coalesced under yamux and its reads taking noise messages
//! whole (fewer, larger encrypted messages and system calls for large
//! bodies; the same wire format); `libp2p::noise::Config::new` works as
//! well.
//!
//! Everything then works as on a [`Node`]: pooling, limits, admission,
//! `send_closest`, [`Conn`](crate::generic::Conn). Only the swarm's
//! life is the application's: listen addresses, connection limits and
//! shutdown are its business, through its own swarm.
//!
//! # When the swarm stops
//!
//! * Dropped: the behaviour goes with it, and everything built on the host
//!   ends at once: requests in flight and later ones end with
//!   [`RequestError::Closed`](pointsub_proto::RequestError::Closed),
//!   servers stop, opens and dials fail with `Shutdown`, listeners end.
//! * No longer polled: nothing can move. An open or dial that the swarm
//!   has not even looked at after [`NOT_POLLED_TIMEOUT`] fails with
//!   [`OpenStreamError::NotPolled`] (retryable: the application may resume
//!   polling), and a client request ends within its retry budget with
//!   [`RequestError::ConnectFailed`](pointsub_proto::RequestError::ConnectFailed)
//!   or a timeout. Nothing waits forever.
//!
//! [`Node`]: crate::generic::Node

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{self, Either};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};

use super::behaviour::{
    AlreadyRegistered, Behaviour, Closed, Connect, ConnectionPath, Control, DialError,
    IncomingStreams, OpenStreamError,
};
use super::rt::Runtime;

/// How long an open or dial waits for the swarm to poll the behaviour at
/// all before failing with [`OpenStreamError::NotPolled`]: 5 s. A swarm
/// that is being driven picks a request up within microseconds; one that
/// has not after this long has stopped.
pub const NOT_POLLED_TIMEOUT: Duration = Duration::from_secs(5);

/// pointsub's handle on a swarm: the [`Control`] of its [`Behaviour`] and
/// the [`Runtime`] that pointsub's own tasks (stream I/O, timers, handlers)
/// run on. See the [module docs](self).
///
/// Cheap to clone. Build one with [`Behaviour::host`] or [`Host::new`];
/// every [`Node`](crate::generic::Node) has one (`&node` works wherever a
/// `&Host` is asked for).
pub struct Host<R> {
    control: Control,
    runtime: R,
    /// What keeps the swarm running while this host is in use, when
    /// pointsub owns the swarm (a node's stop switch): clients and servers
    /// keep their node alive, as they hold a clone of its host.
    lifeline: Option<Arc<dyn Send + Sync>>,
}

impl<R: Clone> Clone for Host<R> {
    fn clone(&self) -> Self {
        Self {
            control: self.control.clone(),
            runtime: self.runtime.clone(),
            lifeline: self.lifeline.clone(),
        }
    }
}

impl<R> fmt::Debug for Host<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("peer_id", &self.control.local_peer_id())
            .field("control", &self.control)
            .finish_non_exhaustive()
    }
}

impl Behaviour {
    /// A [`Host`] for this behaviour, whose tasks run on `runtime`: what
    /// clients, servers, listeners and dials are built from.
    pub fn host<R: Runtime>(&self, runtime: R) -> Host<R> {
        Host::new(self.control(), runtime)
    }
}

impl<R: Runtime> Host<R> {
    /// A host from a behaviour's `control`, running pointsub's tasks on
    /// `runtime`.
    pub fn new(control: Control, runtime: R) -> Self {
        Self {
            control,
            runtime,
            lifeline: None,
        }
    }

    /// This host, keeping `lifeline` alive as long as any clone of it.
    pub(crate) fn with_lifeline(mut self, lifeline: Arc<dyn Send + Sync>) -> Self {
        self.lifeline = Some(lifeline);
        self
    }

    /// The swarm's identity (as given to [`Behaviour::new`]).
    pub fn peer_id(&self) -> PeerId {
        self.control.local_peer_id()
    }

    /// The handle to the [`Behaviour`].
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// The runtime pointsub's tasks run on.
    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    /// Remembers `addr` as an address of `peer` for later dials.
    pub fn add_address(&self, peer: PeerId, addr: Multiaddr) {
        self.control.add_address(peer, addr);
    }

    /// Connects to `peer` (see [`Control::dial`]); fails with
    /// [`DialError::NotPolled`] if the swarm does not pick the dial up.
    ///
    /// The dial is queued at once; the returned future is `Send + 'static`.
    pub fn connect(
        &self,
        peer: PeerId,
    ) -> impl Future<Output = Result<(), DialError>> + Send + 'static {
        let mark = self.control.poll_count();
        let dial = self.control.dial(peer);
        self.unless_stalled(mark, dial, |waited| DialError::NotPolled { waited })
    }

    /// Connects to the peer at `addr`, resolving to its id (see
    /// [`Control::dial_addr`]); fails with [`DialError::NotPolled`] if the
    /// swarm does not pick the dial up.
    ///
    /// The dial is queued at once; the returned future is `Send + 'static`.
    pub fn connect_addr(
        &self,
        addr: Multiaddr,
    ) -> impl Future<Output = Result<PeerId, DialError>> + Send + 'static {
        let mark = self.control.poll_count();
        let dial: Connect<PeerId> = self.control.dial_addr(addr);
        self.unless_stalled(mark, dial, |waited| DialError::NotPolled { waited })
    }

    /// Opens a raw stream to `peer` for `protocol` (see
    /// [`Control::open_stream`]); fails with
    /// [`OpenStreamError::NotPolled`] if the swarm does not pick the
    /// request up.
    ///
    /// The request is queued at once; the returned future is
    /// `Send + 'static`, and dropping it cancels the request.
    pub fn open_stream(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> impl Future<Output = Result<Stream, OpenStreamError>> + Send + 'static {
        let mark = self.control.poll_count();
        let open = self.control.open_stream(peer, protocol);
        self.unless_stalled(mark, open, |waited| OpenStreamError::NotPolled { waited })
    }

    /// [`Host::open_stream`], also telling which connection the stream
    /// went on (see [`Control::open_stream_with_path`]).
    pub fn open_stream_with_path(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> impl Future<Output = Result<(Stream, ConnectionPath), OpenStreamError>> + Send + 'static
    {
        let mark = self.control.poll_count();
        let open = self.control.open_stream_with_path(peer, protocol);
        self.unless_stalled(mark, open, |waited| OpenStreamError::NotPolled { waited })
    }

    /// Accepts inbound raw streams for `protocol` (see [`Control::accept`]).
    pub fn accept(&self, protocol: StreamProtocol) -> Result<IncomingStreams, AlreadyRegistered> {
        self.control.accept(protocol)
    }

    /// Completes once the behaviour has been dropped with its swarm.
    pub fn closed(&self) -> Closed {
        self.control.closed()
    }

    /// Waits for `request`, but fails with `stalled` if the behaviour has
    /// not been polled once within [`NOT_POLLED_TIMEOUT`] since `mark`.
    /// Once the swarm is seen running, the request's own timeouts bound
    /// it (the transport's connection timeout, the open timeout).
    fn unless_stalled<T, E, F>(
        &self,
        mark: u64,
        request: F,
        stalled: fn(Duration) -> E,
    ) -> impl Future<Output = Result<T, E>> + Send + 'static
    where
        F: Future<Output = Result<T, E>> + Send + Unpin + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let control = self.control.clone();
        let runtime = self.runtime.clone();
        async move {
            let watch = runtime.sleep(NOT_POLLED_TIMEOUT);
            match future::select(request, watch).await {
                Either::Left((result, _)) => result,
                Either::Right(((), request)) => {
                    if control.poll_count() == mark && !control.is_shut_down() {
                        tracing::warn!(
                            local = %control.local_peer_id(),
                            "pointsub: the swarm has not polled its behaviour for \
                             {NOT_POLLED_TIMEOUT:?}; is the application's swarm loop still running?"
                        );
                        Err(stalled(NOT_POLLED_TIMEOUT))
                    } else {
                        request.await
                    }
                }
            }
        }
    }
}
