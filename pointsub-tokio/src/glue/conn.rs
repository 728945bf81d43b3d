//! Raw byte streams by peer and protocol: [`Listener`] and [`Conn`].
//!
//! The Rust counterpart of Go's `net.Listener` / `net.Conn` over libp2p:
//! [`Host::listen`] accepts inbound streams for one protocol name,
//! [`Host::dial`] opens one to a peer. A [`Conn`] is a plain
//! bidirectional byte stream (a yamux substream over TCP, or a QUIC
//! stream) with no framing added: it implements `futures`'
//! `AsyncRead`/`AsyncWrite` always, and tokio's with the `tokio-runtime`
//! feature.
//!
//! # Timeouts
//!
//! Each direction has an inactivity timeout, [`DEFAULT_CONN_TIMEOUT`]
//! unless changed with [`Conn::set_read_timeout`] /
//! [`Conn::set_write_timeout`] (`None` disables it). The timer starts
//! when an operation on that side (read; or write, flush, close) finds the
//! stream not ready, survives further polls, and is cleared as soon as an
//! operation on that side completes. If it expires first, the pending
//! operation fails with [`io::ErrorKind::TimedOut`]. Nothing is consumed
//! or lost by a timeout: the `Conn` stays usable and the operation may be
//! retried. A pending operation that is abandoned (its future dropped) and
//! started again later keeps the timer it had armed.
//!
//! # Closing
//!
//! Closing (`close()` in `futures`, `shutdown()` in tokio) ends only our
//! write side: the remote reads end-of-stream, and we can still read what
//! it sends until it closes its side. Writing after closing fails.
//!
//! Dropping a `Conn` without closing it also ends the remote's reads with
//! a plain end-of-stream, on both transports (yamux sends a reset, which
//! its reader reports as end-of-stream; QUIC finishes the stream), while
//! the remote's further writes fail. So a reader cannot tell an abandoned
//! stream from a complete one: a protocol on top of `Conn` must delimit
//! its own messages. Close explicitly anyway: a drop cannot report an
//! error, and its end-of-stream is a muxer detail rather than a promise.
//! Either way the end is only queued: closing returns before the remote
//! has received it.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::FutureExt;
use futures::stream::{FusedStream, StreamExt};
use futures::{AsyncRead, AsyncWrite};
use libp2p::{PeerId, Stream, StreamProtocol};

use super::behaviour::{IncomingStreams, OpenStreamError};
use super::host::Host;
use super::rt::{BoxSleep, Runtime};

/// Default read and write inactivity timeout of a [`Conn`]: 30 s (the
/// PointSub spec's read/write timeouts).
pub const DEFAULT_CONN_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times an expired-looking timer is re-armed because the
/// runtime's clock disagrees, before the timer is believed anyway (so a
/// runtime whose timers fire early cannot make a poll loop forever).
const MAX_REARMS: u32 = 3;

/// Why [`Host::listen`], [`Host::dial`] or [`Listener::accept`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// The protocol name is not valid: libp2p protocol names must start
    /// with `/` (e.g. `/chat/1.0.0`).
    #[error("invalid protocol name {0:?}: it must start with '/'")]
    InvalidProtocol(String),
    /// A [`Listener`] (or another user of the node's raw streams) is
    /// already accepting this protocol on this node.
    #[error("already listening on protocol {0}")]
    AlreadyListening(String),
    /// The stream could not be opened: the peer is unreachable, does not
    /// accept the protocol, took too long, or the node shut down.
    #[error("could not open a stream: {0}")]
    Open(#[from] OpenStreamError),
    /// The listener's node has shut down; no more connections will arrive.
    #[error("the node has shut down")]
    Closed,
}

impl ConnError {
    /// Whether trying again (later, or after fixing connectivity) may
    /// succeed. Only some [`Open`](Self::Open) failures are retryable
    /// (see [`OpenStreamError::is_retryable`]); the other variants are
    /// final.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Open(e) => e.is_retryable(),
            Self::InvalidProtocol(_) | Self::AlreadyListening(_) | Self::Closed => false,
        }
    }
}

fn parse_protocol(protocol: &str) -> Result<StreamProtocol, ConnError> {
    StreamProtocol::try_from_owned(protocol.to_owned())
        .map_err(|_| ConnError::InvalidProtocol(protocol.to_owned()))
}

impl<R: Runtime> Host<R> {
    /// Starts accepting raw byte streams for `protocol` (e.g.
    /// `/chat/1.0.0`) from any peer.
    ///
    /// Fails if the name is not a valid protocol name or something on
    /// this node already accepts it. Dropping the [`Listener`] stops
    /// accepting: remotes then get "unsupported protocol". On a node
    /// that has shut down, the listener is closed from the start.
    pub fn listen(&self, protocol: &str) -> Result<Listener<R>, ConnError> {
        let parsed = parse_protocol(protocol)?;
        let incoming = self
            .accept(parsed.clone())
            .map_err(|_| ConnError::AlreadyListening(protocol.to_owned()))?;
        Ok(Listener {
            incoming,
            protocol: parsed,
            local_peer_id: self.peer_id(),
            runtime: self.runtime().clone(),
        })
    }

    /// Opens a raw byte stream to `peer` for `protocol`, connecting to the
    /// peer first if needed (with the addresses the node knows for it).
    ///
    /// Bounded by the node's connection and stream-open timeouts.
    pub async fn dial(&self, peer: PeerId, protocol: &str) -> Result<Conn<R>, ConnError> {
        let parsed = parse_protocol(protocol)?;
        let stream = self.open_stream(peer, parsed.clone()).await?;
        Ok(Conn::new(stream, peer, parsed, self.runtime().clone()))
    }
}

// ---------------------------------------------------------------------------
// Listener
// ---------------------------------------------------------------------------

/// Accepts inbound [`Conn`]s for one protocol, from [`Host::listen`].
///
/// Also a `futures::Stream` of `Conn`s, which ends when the node shuts
/// down. Dropping it unregisters the protocol and drops the inbound
/// streams not accepted yet.
pub struct Listener<R> {
    incoming: IncomingStreams,
    protocol: StreamProtocol,
    local_peer_id: PeerId,
    runtime: R,
}

// Nothing is ever pinned through a `Listener` (the runtime handle is only
// cloned), so it is `Unpin` whatever the runtime type.
impl<R> Unpin for Listener<R> {}

impl<R> fmt::Debug for Listener<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("protocol", &self.protocol.as_ref())
            .field("local_peer_id", &self.local_peer_id)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> Listener<R> {
    /// Waits for the next inbound connection.
    ///
    /// Returns [`ConnError::Closed`] once the node has shut down (or was
    /// dropped). Cancel-safe: dropping the future loses no connection.
    pub async fn accept(&mut self) -> Result<Conn<R>, ConnError> {
        self.next().await.ok_or(ConnError::Closed)
    }

    /// The protocol this listener accepts.
    pub fn protocol(&self) -> &str {
        self.protocol.as_ref()
    }

    /// The id of the node this listener accepts on.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }
}

impl<R: Runtime> futures::Stream for Listener<R> {
    type Item = Conn<R>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.incoming.poll_next_unpin(cx).map(|next| {
            next.map(|(peer, stream)| {
                Conn::new(stream, peer, this.protocol.clone(), this.runtime.clone())
            })
        })
    }
}

impl<R: Runtime> FusedStream for Listener<R> {
    fn is_terminated(&self) -> bool {
        self.incoming.is_terminated()
    }
}

// ---------------------------------------------------------------------------
// Conn
// ---------------------------------------------------------------------------

/// An inactivity timer for one direction of a [`Conn`].
struct Timer {
    timeout: Option<Duration>,
    /// The deadline and the sleep towards it, while an operation is
    /// pending.
    armed: Option<(Instant, BoxSleep)>,
}

impl Timer {
    fn new(timeout: Option<Duration>) -> Self {
        Self {
            timeout,
            armed: None,
        }
    }

    fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
        self.armed = None;
    }

    /// The operation made progress (or failed): the next wait starts a
    /// fresh timer.
    fn reset(&mut self) {
        self.armed = None;
    }

    /// Called when the operation is pending: arms the timer if needed and
    /// reports whether it has expired. When it returns `false`, `cx` is
    /// registered with the sleep (or there is no timeout).
    fn poll_expired<R: Runtime>(&mut self, runtime: &R, cx: &mut Context<'_>) -> bool {
        let Some(timeout) = self.timeout else {
            return false;
        };
        if self.armed.is_none() {
            let Some(deadline) = runtime.now().checked_add(timeout) else {
                // Too far away to represent: never expires.
                return false;
            };
            self.armed = Some((deadline, runtime.sleep_until(deadline)));
        }
        let Some((deadline, sleep)) = &mut self.armed else {
            return false;
        };
        let deadline = *deadline;
        let mut rearms = 0;
        let expired = loop {
            if sleep.poll_unpin(cx).is_pending() {
                break false;
            }
            // The sleep says it is over: check the clock rather than
            // trusting the timer alone.
            if runtime.now() >= deadline || rearms == MAX_REARMS {
                break true;
            }
            rearms += 1;
            *sleep = runtime.sleep_until(deadline);
        };
        if expired {
            self.armed = None;
        }
        expired
    }
}

fn timed_out(what: &str, timeout: Option<Duration>) -> io::Error {
    let after = timeout.unwrap_or_default();
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} timed out after {after:?} without progress"),
    )
}

/// A raw, bidirectional byte stream to a peer for one protocol, from
/// [`Host::dial`] or [`Listener::accept`].
///
/// Reads and writes go straight to the libp2p stream, with the read and
/// write inactivity timeouts described in the [module docs](self).
/// Closing ends only our write side; the remote sees end-of-stream (see
/// the module docs for what dropping without closing does).
pub struct Conn<R> {
    stream: Stream,
    peer: PeerId,
    protocol: StreamProtocol,
    runtime: R,
    read: Timer,
    write: Timer,
}

// Nothing is ever pinned through a `Conn` (the stream is `Unpin` and the
// runtime handle is only borrowed), so it is `Unpin` whatever the runtime
// type.
impl<R> Unpin for Conn<R> {}

impl<R> fmt::Debug for Conn<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.peer)
            .field("protocol", &self.protocol.as_ref())
            .field("read_timeout", &self.read.timeout)
            .field("write_timeout", &self.write.timeout)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> Conn<R> {
    fn new(stream: Stream, peer: PeerId, protocol: StreamProtocol, runtime: R) -> Self {
        Self {
            stream,
            peer,
            protocol,
            runtime,
            read: Timer::new(Some(DEFAULT_CONN_TIMEOUT)),
            write: Timer::new(Some(DEFAULT_CONN_TIMEOUT)),
        }
    }

    /// The remote peer.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The protocol this stream was negotiated for.
    pub fn protocol(&self) -> &str {
        self.protocol.as_ref()
    }

    /// How long a read may wait for data; `None` means forever.
    pub fn read_timeout(&self) -> Option<Duration> {
        self.read.timeout
    }

    /// Sets how long a read may wait for data (`None`: forever). Applies
    /// from the next poll of a read, restarting any timer in progress.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read.set_timeout(timeout);
    }

    /// How long a write, flush or close may wait; `None` means forever.
    pub fn write_timeout(&self) -> Option<Duration> {
        self.write.timeout
    }

    /// Sets how long a write, flush or close may wait (`None`: forever).
    /// Applies from the next poll, restarting any timer in progress.
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write.set_timeout(timeout);
    }

    /// The underlying libp2p stream, without the timeouts.
    pub fn into_inner(self) -> Stream {
        self.stream
    }

    fn poll_read_inner(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                self.read.reset();
                Poll::Ready(result)
            }
            Poll::Pending if self.read.poll_expired(&self.runtime, cx) => {
                Poll::Ready(Err(timed_out("read", self.read.timeout)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Runs one write-side operation under the write timer.
    fn poll_write_side<T>(
        &mut self,
        cx: &mut Context<'_>,
        what: &str,
        op: impl FnOnce(Pin<&mut Stream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match op(Pin::new(&mut self.stream), cx) {
            Poll::Ready(result) => {
                self.write.reset();
                Poll::Ready(result)
            }
            Poll::Pending if self.write.poll_expired(&self.runtime, cx) => {
                Poll::Ready(Err(timed_out(what, self.write.timeout)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<R: Runtime> AsyncRead for Conn<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_read_inner(cx, buf)
    }
}

impl<R: Runtime> AsyncWrite for Conn<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_side(cx, "write", |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_side(cx, "write", |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_write_side(cx, "flush", |s, cx| s.poll_flush(cx))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_write_side(cx, "close", |s, cx| s.poll_close(cx))
    }
}

#[cfg(feature = "tokio-runtime")]
impl<R: Runtime> tokio::io::AsyncRead for Conn<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let unfilled = buf.initialize_unfilled();
        let room = unfilled.len();
        match self.get_mut().poll_read_inner(cx, unfilled) {
            Poll::Ready(Ok(n)) => {
                // A well-behaved stream never reports more than it was
                // given room for; clamp rather than let `advance` panic.
                buf.advance(n.min(room));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(feature = "tokio-runtime")]
impl<R: Runtime> tokio::io::AsyncWrite for Conn<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(self, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(self, cx)
    }

    /// Ends our write side only (the remote reads end-of-stream); reading
    /// continues to work.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_close(self, cx)
    }
}
