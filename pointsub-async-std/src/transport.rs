//! A libp2p TCP transport on [`async-io`](async_io), for async-std and smol.
//!
//! libp2p 0.56 dropped its async-std support, and the runtime abstraction
//! inside `libp2p-tcp` (its `Provider` trait) is private, so this module
//! implements [`libp2p::core::Transport`] directly over
//! [`async_io::Async`]`<`[`std::net::TcpStream`]`>`.
//!
//! async-std itself is discontinued upstream (its README points users to
//! smol). Both runtimes drive their I/O through the same `async-io` reactor,
//! so this transport serves either one: a swarm built by [`build_swarm`] runs
//! under `async_std::task::block_on` as well as under `smol::block_on`.
//!
//! # What it does
//!
//! * [`TcpTransport::listen_on`] accepts `/ip4/A/tcp/P` and `/ip6/A/tcp/P`
//!   (port 0 picks a free port; a trailing `/p2p/..` is ignored). A concrete
//!   address is reported once as [`TransportEvent::NewAddress`] with the
//!   bound port; a wildcard address (`0.0.0.0`, `::`) is expanded with an
//!   interface watcher into one `NewAddress` (later `AddressExpired`) per
//!   interface address of the same IP family.
//! * [`TcpTransport::dial`] connects to `/ip4/A/tcp/P` or `/ip6/A/tcp/P` with a
//!   non-zero port and a specified IP. Port reuse is not implemented: every
//!   dial uses a fresh ephemeral port, whatever [`DialOpts::port_use`] says.
//! * [`TcpTransport::poll`](Transport::poll) yields, in this order of
//!   preference, events queued by `listen_on` / `remove_listener`, then at most
//!   one event per listener per call, starting from a different listener each
//!   time (round robin) so a busy listener cannot starve the others.
//!
//! Any other multiaddr is refused with
//! [`TransportError::MultiaddrNotSupported`], so the transport composes with
//! others through [`Transport::or_transport`].

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_io::{Async, Timer};
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Ready};
use futures::io::{AsyncRead, AsyncWrite, IoSlice, IoSliceMut};
use if_watch::IfEvent;
use libp2p::core::multiaddr::{Multiaddr, Protocol};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::timeout::TransportTimeout;
use libp2p::core::transport::{
    Boxed, DialOpts, ListenerId, Transport, TransportError, TransportEvent,
};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{PeerId, Swarm, noise};
use pointsub_tokio::RuntimeExecutor;
use pointsub_tokio::node::{tune_swarm_config, yamux_config};

use crate::rt::AsyncStdRuntime;

/// How long a listener pauses after an accept error before accepting again,
/// so a persistent error (e.g. out of file descriptors) is not a busy loop.
const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(100);

/// Configuration of a [`TcpTransport`].
///
/// Defaults: `TCP_NODELAY` on, listen backlog 1024, no TTL override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    nodelay: bool,
    backlog: u32,
    ttl: Option<u32>,
}

impl Config {
    /// The default configuration: `TCP_NODELAY` on, listen backlog 1024, the
    /// operating system's default TTL.
    pub fn new() -> Self {
        Self {
            nodelay: true,
            backlog: 1024,
            ttl: None,
        }
    }

    /// Sets `TCP_NODELAY` (disables Nagle's algorithm when `true`) on dialed
    /// and accepted sockets.
    pub fn with_nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }

    /// Sets the backlog of pending connections of new listening sockets.
    /// The operating system may cap it.
    pub fn with_listen_backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Sets the IP TTL (IPv4) or unicast hop limit (IPv6) of new sockets;
    /// `None` keeps the operating system's default.
    pub fn with_ttl(mut self, ttl: Option<u32>) -> Self {
        self.ttl = ttl;
        self
    }

    /// Whether `TCP_NODELAY` is set on new connections.
    pub fn nodelay(&self) -> bool {
        self.nodelay
    }

    /// The listen backlog of new listening sockets.
    pub fn listen_backlog(&self) -> u32 {
        self.backlog
    }

    /// The TTL / hop limit set on new sockets, if any.
    pub fn ttl(&self) -> Option<u32> {
        self.ttl
    }

    /// A non-blocking TCP socket for `addr`'s family with the configured
    /// options applied.
    fn socket(&self, addr: SocketAddr) -> io::Result<socket2::Socket> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        if addr.is_ipv6() {
            // Keep the families apart: `::` listens on IPv6 only, so a
            // wildcard listener reports exactly the addresses it serves.
            socket.set_only_v6(true)?;
        }
        self.set_ttl(&socket, addr)?;
        socket.set_tcp_nodelay(self.nodelay)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }

    /// Applies the TTL / hop limit override, if any.
    fn set_ttl(&self, socket: &socket2::Socket, addr: SocketAddr) -> io::Result<()> {
        match self.ttl {
            None => Ok(()),
            Some(ttl) if addr.is_ipv4() => socket.set_ttl_v4(ttl),
            Some(hops) => socket.set_unicast_hops_v6(hops),
        }
    }

    /// Binds and listens on `addr`.
    fn listener(&self, addr: SocketAddr) -> io::Result<Async<std::net::TcpListener>> {
        let socket = self.socket(addr)?;
        // On Unix, SO_REUSEADDR only lets a restarted node rebind a port whose
        // old connections are in TIME_WAIT. On Windows it would let another
        // socket steal a bound port, so it is left off there.
        #[cfg(unix)]
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(i32::try_from(self.backlog).unwrap_or(i32::MAX))?;
        Async::new_nonblocking(std::net::TcpListener::from(socket))
    }

    /// Connects to `addr`, completing when the connection is established.
    ///
    /// async-io performs the non-blocking connect; the options are applied
    /// to the connected socket, so a TTL override takes effect after the
    /// TCP handshake on dialed connections.
    async fn connect(self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = Async::<std::net::TcpStream>::connect(addr).await?;
        let socket = socket2::SockRef::from(stream.get_ref());
        socket.set_tcp_nodelay(self.nodelay)?;
        self.set_ttl(&socket, addr)?;
        Ok(TcpStream { inner: stream })
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

/// A TCP connection produced by [`TcpTransport`]: an
/// [`async_io::Async`]`<`[`std::net::TcpStream`]`>` with futures'
/// [`AsyncRead`] and [`AsyncWrite`].
///
/// Closing it ([`AsyncWrite::poll_close`]) flushes and shuts down the write
/// half, so the peer reads end-of-file.
pub struct TcpStream {
    inner: Async<std::net::TcpStream>,
}

impl TcpStream {
    /// The local address of the connection.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().local_addr()
    }

    /// The remote address of the connection.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().peer_addr()
    }

    /// Whether `TCP_NODELAY` is set on the socket.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.inner.get_ref().nodelay()
    }

    /// The underlying async-io handle.
    pub fn get_ref(&self) -> &Async<std::net::TcpStream> {
        &self.inner
    }

    /// Unwraps the underlying async-io handle.
    pub fn into_inner(self) -> Async<std::net::TcpStream> {
        self.inner
    }
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("local_addr", &self.local_addr().ok())
            .field("peer_addr", &self.peer_addr().ok())
            .finish()
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read_vectored(cx, bufs)
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        match self.inner.get_ref().shutdown(Shutdown::Write) {
            // The peer may already have torn the connection down.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}

/// The event type of [`TcpTransport`].
type Event = TransportEvent<Ready<Result<TcpStream, io::Error>>, io::Error>;

/// A libp2p [`Transport`] for TCP over `async-io` (async-std and smol).
///
/// See the [module docs](self) for the addresses it accepts and the events it
/// reports.
pub struct TcpTransport {
    config: Config,
    listeners: Vec<Listener>,
    /// Index of the listener polled first on the next [`Transport::poll`].
    next: usize,
    /// Events produced outside `poll` (`listen_on`, `remove_listener`).
    pending: VecDeque<Event>,
    /// The waker of the last `poll` that returned `Pending`, woken when
    /// `listen_on` or `remove_listener` give `poll` something new to do.
    waker: Option<Waker>,
}

impl TcpTransport {
    /// A transport with the given configuration and no listeners.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            listeners: Vec::new(),
            next: 0,
            pending: VecDeque::new(),
            waker: None,
        }
    }

    /// The configuration this transport was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl Default for TcpTransport {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("config", &self.config)
            .field(
                "listeners",
                &self
                    .listeners
                    .iter()
                    .map(|l| (l.id, l.local))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Transport for TcpTransport {
    type Output = TcpStream;
    type Error = io::Error;
    type ListenerUpgrade = Ready<Result<TcpStream, io::Error>>;
    type Dial = BoxFuture<'static, Result<TcpStream, io::Error>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<io::Error>> {
        let Some(socket_addr) = multiaddr_to_socketaddr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let socket = self
            .config
            .listener(socket_addr)
            .map_err(TransportError::Other)?;
        let local = socket
            .get_ref()
            .local_addr()
            .map_err(TransportError::Other)?;
        let if_watcher = if local.ip().is_unspecified() {
            Some(if_watch::smol::IfWatcher::new().map_err(TransportError::Other)?)
        } else {
            self.pending.push_back(TransportEvent::NewAddress {
                listener_id: id,
                listen_addr: socketaddr_to_multiaddr(local),
            });
            None
        };
        tracing::debug!(%local, ?id, "listening");
        self.listeners.push(Listener {
            id,
            socket,
            local,
            if_watcher,
            pause: None,
        });
        self.wake();
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let Some(index) = self.listeners.iter().position(|l| l.id == id) else {
            return false;
        };
        // Dropping the listener closes its socket at once: no connection is
        // accepted after `remove_listener` returns.
        let listener = self.listeners.remove(index);
        if index < self.next {
            self.next -= 1;
        }
        tracing::debug!(local = %listener.local, ?id, "listener removed");
        self.pending.push_back(TransportEvent::ListenerClosed {
            listener_id: id,
            reason: Ok(()),
        });
        self.wake();
        true
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<io::Error>> {
        let socket_addr = match multiaddr_to_socketaddr(&addr) {
            Some(a) if a.port() != 0 && !a.ip().is_unspecified() => a,
            _ => return Err(TransportError::MultiaddrNotSupported(addr)),
        };
        tracing::debug!(%socket_addr, "dialing");
        // No work happens before the future is polled.
        Ok(self.config.clone().connect(socket_addr).boxed())
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Event> {
        let this = self.get_mut();
        if let Some(event) = this.pending.pop_front() {
            return Poll::Ready(event);
        }
        let count = this.listeners.len();
        for step in 0..count {
            let index = (this.next + step) % count;
            let listener = &mut this.listeners[index];
            if let Poll::Ready(event) = listener.poll(&this.config, cx) {
                this.next = (index + 1) % count;
                return Poll::Ready(event);
            }
        }
        // Every listener registered `cx`'s waker with whatever it waits on.
        this.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// One listening socket and, for a wildcard address, its interface watcher.
struct Listener {
    id: ListenerId,
    socket: Async<std::net::TcpListener>,
    /// The bound address (the IP may be unspecified).
    local: SocketAddr,
    /// Present when listening on `0.0.0.0` or `::`.
    if_watcher: Option<if_watch::smol::IfWatcher>,
    /// Set after an error: nothing is polled until it fires.
    pause: Option<Timer>,
}

impl Listener {
    /// At most one event; `Pending` means `cx` is registered with every
    /// source this listener waits on.
    fn poll(&mut self, config: &Config, cx: &mut Context<'_>) -> Poll<Event> {
        if let Some(pause) = self.pause.as_mut() {
            if pause.poll_unpin(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        if let Poll::Ready(event) = self.poll_if_watcher(cx) {
            return Poll::Ready(event);
        }
        self.poll_accept(config, cx)
    }

    fn poll_if_watcher(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        let Some(watcher) = self.if_watcher.as_mut() else {
            return Poll::Pending;
        };
        // Each iteration consumes one queued interface event, so this loop
        // is bounded by what the watcher has already buffered.
        loop {
            match watcher.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(event))) => {
                    let (up, net) = match event {
                        IfEvent::Up(net) => (true, net),
                        IfEvent::Down(net) => (false, net),
                    };
                    let ip = net.addr();
                    if ip.is_ipv4() != self.local.is_ipv4() {
                        continue;
                    }
                    let listen_addr =
                        socketaddr_to_multiaddr(SocketAddr::new(ip, self.local.port()));
                    tracing::debug!(%listen_addr, up, id = ?self.id, "interface address");
                    return Poll::Ready(if up {
                        TransportEvent::NewAddress {
                            listener_id: self.id,
                            listen_addr,
                        }
                    } else {
                        TransportEvent::AddressExpired {
                            listener_id: self.id,
                            listen_addr,
                        }
                    });
                }
                Poll::Ready(Some(Err(error))) => {
                    // if-watch's errors mean its OS channel is gone and it
                    // would fail again on every poll: report once, then keep
                    // accepting with the addresses already reported.
                    tracing::warn!(%error, id = ?self.id, "interface watcher failed; address changes are no longer reported");
                    self.if_watcher = None;
                    return Poll::Ready(TransportEvent::ListenerError {
                        listener_id: self.id,
                        error,
                    });
                }
                Poll::Ready(None) => {
                    self.if_watcher = None;
                    return Poll::Pending;
                }
            }
        }
    }

    fn poll_accept(&mut self, config: &Config, cx: &mut Context<'_>) -> Poll<Event> {
        loop {
            match self.socket.get_ref().accept() {
                Ok((stream, remote)) => {
                    return Poll::Ready(match self.incoming(config, stream, remote) {
                        Ok(event) => event,
                        Err(error) => self.error(error),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Ready means readiness arrived since the failed accept:
                    // try again. Pending registered the waker.
                    if let Err(error) = futures::ready!(self.socket.poll_readable(cx)) {
                        return Poll::Ready(self.error(error));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Poll::Ready(self.error(error)),
            }
        }
    }

    fn incoming(
        &self,
        config: &Config,
        stream: std::net::TcpStream,
        remote: SocketAddr,
    ) -> io::Result<Event> {
        stream.set_nodelay(config.nodelay)?;
        let local = stream.local_addr()?;
        let stream = Async::new(stream)?;
        tracing::debug!(%local, %remote, id = ?self.id, "incoming connection");
        Ok(TransportEvent::Incoming {
            listener_id: self.id,
            upgrade: futures::future::ready(Ok(TcpStream { inner: stream })),
            local_addr: socketaddr_to_multiaddr(local),
            send_back_addr: socketaddr_to_multiaddr(remote),
        })
    }

    /// A non-fatal listener error: reported, then the listener pauses
    /// briefly and goes on accepting.
    fn error(&mut self, error: io::Error) -> Event {
        tracing::debug!(%error, id = ?self.id, "accept failed");
        self.pause = Some(Timer::after(PAUSE_AFTER_ERROR));
        TransportEvent::ListenerError {
            listener_id: self.id,
            error,
        }
    }
}

/// `/ip4/A/tcp/P` or `/ip6/A/tcp/P`, optionally followed by `/p2p/ID`.
fn multiaddr_to_socketaddr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut parts = addr.iter();
    let ip: IpAddr = match parts.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    let Protocol::Tcp(port) = parts.next()? else {
        return None;
    };
    match (parts.next(), parts.next()) {
        (None, _) | (Some(Protocol::P2p(_)), None) => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

fn socketaddr_to_multiaddr(addr: SocketAddr) -> Multiaddr {
    Multiaddr::empty()
        .with(addr.ip().into())
        .with(Protocol::Tcp(addr.port()))
}

/// Why [`build_swarm`] or [`build_transport`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The noise configuration could not be derived from the keypair.
    #[error("noise configuration: {0}")]
    Noise(#[from] noise::Error),
}

/// The full connection stack on [`TcpTransport`] with `config`: multistream
/// select (V1Lazy), noise authentication with `keypair` (its flushes
/// coalesced and its reads taking messages whole:
/// [`pointsub_tokio::coalesce`]), yamux multiplexing with
/// `yamux`, and `connect_timeout` on establishing each connection
/// (dial or accept, TCP through yamux).
///
/// For a swarm that carries pointsub's behaviour, pass the behaviour's
/// `control.yamux_config()` (pointsub's limit of 1,024 streams per
/// connection, recorded for the start-up check); otherwise [`yamux_config`]
/// or any yamux configuration.
pub fn build_transport(
    keypair: &Keypair,
    config: Config,
    yamux: libp2p::yamux::Config,
    connect_timeout: Duration,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, BuildError> {
    let upgraded = TcpTransport::new(config)
        .upgrade(Version::V1Lazy)
        .authenticate(pointsub_tokio::coalesce::noise(keypair)?)
        .multiplex(yamux)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    Ok(TransportTimeout::new(upgraded, connect_timeout).boxed())
}

/// A swarm for `behaviour` over [`build_transport`] (default [`Config`]),
/// identified by `keypair`, with pointsub's swarm settings
/// ([`tune_swarm_config`]: `idle_connection_timeout`, stream limits) and its
/// connection tasks spawned on `runtime`.
pub fn build_swarm<B: NetworkBehaviour + Send>(
    keypair: Keypair,
    behaviour: B,
    runtime: AsyncStdRuntime,
    idle_connection_timeout: Duration,
    connect_timeout: Duration,
) -> Result<Swarm<B>, BuildError> {
    let transport = build_transport(&keypair, Config::default(), yamux_config(), connect_timeout)?;
    let peer_id = keypair.public().to_peer_id();
    let config = libp2p::swarm::Config::with_executor(RuntimeExecutor(runtime));
    Ok(Swarm::new(
        transport,
        behaviour,
        peer_id,
        tune_swarm_config(config, idle_connection_timeout),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Multiaddr {
        s.parse().expect("valid multiaddr literal")
    }

    #[test]
    fn multiaddr_conversion() {
        assert_eq!(
            multiaddr_to_socketaddr(&parse("/ip4/127.0.0.1/tcp/80")),
            Some(SocketAddr::from(([127, 0, 0, 1], 80)))
        );
        assert_eq!(
            multiaddr_to_socketaddr(&parse("/ip6/::1/tcp/0")),
            Some(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)))
        );
        let peer = PeerId::random();
        assert_eq!(
            multiaddr_to_socketaddr(&parse(&format!("/ip4/10.0.0.1/tcp/9/p2p/{peer}"))),
            Some(SocketAddr::from(([10, 0, 0, 1], 9)))
        );
        for bad in [
            "/ip4/127.0.0.1/udp/1/quic-v1",
            "/ip4/127.0.0.1",
            "/dns4/localhost/tcp/1",
            "/ip4/127.0.0.1/tcp/1/ws",
            "/ip4/127.0.0.1/tcp/1/tcp/2",
            "/p2p-circuit",
        ] {
            assert_eq!(multiaddr_to_socketaddr(&parse(bad)), None, "{bad}");
        }
        assert_eq!(
            socketaddr_to_multiaddr(SocketAddr::from(([127, 0, 0, 1], 5))),
            parse("/ip4/127.0.0.1/tcp/5")
        );
    }

    #[test]
    fn dial_refuses_port_zero_and_unspecified() {
        let mut t = TcpTransport::default();
        for bad in [
            "/ip4/127.0.0.1/tcp/0",
            "/ip4/0.0.0.0/tcp/1",
            "/ip6/::/tcp/1",
        ] {
            let opts = DialOpts {
                role: libp2p::core::Endpoint::Dialer,
                port_use: libp2p::core::transport::PortUse::New,
            };
            assert!(
                matches!(
                    t.dial(parse(bad), opts),
                    Err(TransportError::MultiaddrNotSupported(_))
                ),
                "{bad}"
            );
        }
    }
}
