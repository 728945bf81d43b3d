//! Fewer, larger encrypted messages under yamux: a flush that waits for
//! one more turn of the connection task.
//!
//! yamux (0.14, behind libp2p-yamux 0.48) flushes its socket after every
//! frame it writes, and it cuts writes into frames of 16 KiB. Under noise,
//! each flush seals what is buffered into its own noise message and writes
//! it with its own `sendto`: a 1 MiB body goes out as 64 messages and 64
//! system calls per direction, where noise could carry it in 16 (a noise
//! message holds up to 64 KiB) and the kernel take it in fewer writes.
//! The frame size is not configurable through libp2p-yamux.
//!
//! [`CoalescedFlush`] sits between the security layer and the muxer.
//! When the muxer asks it to flush after writing at least a full frame
//! ([`DEFER_FLUSH_FROM`]) since its previous flush, it answers "not yet",
//! wakes the task at once, and lets the muxer go on: the muxer writes the
//! frames its streams have queued meanwhile, and the flush reaches the
//! security layer once a turn of the task wrote less than a full frame
//! (or nothing). So a large body's frames leave in as few noise messages
//! as fit, and the last of them one task wake-up later. Smaller writes
//! (requests and responses that fit in a frame, window updates, pings)
//! flush at once, exactly as without the wrapper, so latency at low load
//! does not change. Nothing waits for a timer or for more data: a flush
//! is put off only while the muxer keeps writing full frames, and noise
//! sends a full 64 KiB message as soon as it has one.
//!
//! Measured on the 2-core VM, 1 MiB x 4 in flight (`pointsub bench
//! --large --systems pointsub-tokio`, ten alternations of fresh
//! processes): 322 -> 359 requests/s (medians; pair by pair 0.84-1.34x,
//! median 1.07x); per 3 s, `sendto` calls 91k -> 28k and context switches
//! 37k -> 7.5k. With two such processes sharing the two cores there is no
//! gain (seven runs favoured the build without it by about 5 %, three more
//! were even). Small messages (581 B x 1, x 100, x 10,000): unchanged.
//!
//! The wire format is unchanged (the same noise protocol, negotiated under
//! the same name): a peer that does not coalesce talks to one that does.
//!
//! [`Coalesced`] wraps a security upgrade (noise, TLS) so that its
//! connections come out wrapped; [`noise`] is noise wrapped, a drop-in
//! for `libp2p::noise::Config::new` in `SwarmBuilder::with_tcp` and
//! `with_relay_client`:
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use pointsub_tokio::libp2p::{tcp, SwarmBuilder};
//! use pointsub_tokio::{behaviour::yamux_config, coalesce};
//! let swarm = SwarmBuilder::with_new_identity()
//!     .with_tokio()
//!     .with_tcp(tcp::Config::default(), coalesce::noise, yamux_config)?
//! #   .with_behaviour(|_| pointsub_tokio::libp2p::swarm::dummy::Behaviour)?
//! #   .build();
//! # Ok(()) }
//! ```

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::{MapOk, TryFutureExt};
use futures::{AsyncRead, AsyncWrite};
use libp2p::PeerId;
use libp2p::core::UpgradeInfo;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
use libp2p::identity::Keypair;

/// An authenticated connection whose flushes wait for one more turn of
/// the task that writes to it (module docs). Reads and closes pass
/// through.
#[derive(Debug)]
pub struct CoalescedFlush<S> {
    inner: S,
    /// Bytes written since the last call to `poll_flush`.
    written: usize,
}

/// A flush waits a turn only after a write of at least this many bytes
/// since the previous flush: a full yamux frame (16 KiB of body), the
/// sign of a large body whose next frames are likely queued already.
/// Smaller writes (requests, responses, window updates) flush at once,
/// as without the wrapper.
pub const DEFER_FLUSH_FROM: usize = 16 * 1024;

impl<S> CoalescedFlush<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner, written: 0 }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped connection, taken out.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CoalescedFlush<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CoalescedFlush<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            this.written = this.written.saturating_add(n);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if std::mem::take(&mut this.written) >= DEFER_FLUSH_FROM {
            // Not yet: the caller may have more to write this turn. The
            // wake-up guarantees it polls again, and flushes then unless
            // it wrote more.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.written = 0;
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A security upgrade whose connections come out as
/// [`CoalescedFlush`]: the same protocol names and handshake as the
/// upgrade it wraps.
#[derive(Debug, Clone)]
pub struct Coalesced<U>(pub U);

impl<U: UpgradeInfo> UpgradeInfo for Coalesced<U> {
    type Info = U::Info;
    type InfoIter = U::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.protocol_info()
    }
}

/// Wraps the connection of an authenticated `(peer, connection)` pair.
type Wrap<S> = fn((PeerId, S)) -> (PeerId, CoalescedFlush<S>);

fn wrap<S>((peer, io): (PeerId, S)) -> (PeerId, CoalescedFlush<S>) {
    (peer, CoalescedFlush::new(io))
}

impl<C, U, S> InboundConnectionUpgrade<C> for Coalesced<U>
where
    U: InboundConnectionUpgrade<C, Output = (PeerId, S)>,
{
    type Output = (PeerId, CoalescedFlush<S>);
    type Error = U::Error;
    type Future = MapOk<U::Future, Wrap<S>>;

    fn upgrade_inbound(self, socket: C, info: Self::Info) -> Self::Future {
        self.0.upgrade_inbound(socket, info).map_ok(wrap as Wrap<S>)
    }
}

impl<C, U, S> OutboundConnectionUpgrade<C> for Coalesced<U>
where
    U: OutboundConnectionUpgrade<C, Output = (PeerId, S)>,
{
    type Output = (PeerId, CoalescedFlush<S>);
    type Error = U::Error;
    type Future = MapOk<U::Future, Wrap<S>>;

    fn upgrade_outbound(self, socket: C, info: Self::Info) -> Self::Future {
        self.0
            .upgrade_outbound(socket, info)
            .map_ok(wrap as Wrap<S>)
    }
}

/// libp2p's noise for `keypair`, its connections coalescing flushes: a
/// drop-in for `libp2p::noise::Config::new` (module docs).
pub fn noise(keypair: &Keypair) -> Result<Coalesced<libp2p::noise::Config>, libp2p::noise::Error> {
    libp2p::noise::Config::new(keypair).map(Coalesced)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::task::{ArcWake, waker};

    use super::*;

    /// A connection that records what reaches it.
    #[derive(Default)]
    struct Recorder {
        bytes: usize,
        flushes: usize,
        closes: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.bytes += buf.len();
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.closes += 1;
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl ArcWake for Wakes {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    struct Harness {
        io: CoalescedFlush<Recorder>,
        wakes: Arc<Wakes>,
    }

    impl Harness {
        fn new() -> Self {
            Self {
                io: CoalescedFlush::new(Recorder::default()),
                wakes: Arc::default(),
            }
        }

        fn write(&mut self, len: usize) {
            let waker = waker(self.wakes.clone());
            let mut cx = Context::from_waker(&waker);
            let buf = vec![7u8; len];
            let written = Pin::new(&mut self.io).poll_write(&mut cx, &buf);
            assert!(matches!(written, Poll::Ready(Ok(n)) if n == len));
        }

        /// Whether the flush completed.
        fn flush(&mut self) -> bool {
            let waker = waker(self.wakes.clone());
            let mut cx = Context::from_waker(&waker);
            match Pin::new(&mut self.io).poll_flush(&mut cx) {
                Poll::Ready(result) => {
                    assert!(result.is_ok());
                    true
                }
                Poll::Pending => false,
            }
        }

        fn wakes(&self) -> usize {
            self.wakes.0.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn a_small_write_is_flushed_at_once() {
        let mut h = Harness::new();
        h.write(DEFER_FLUSH_FROM - 1);
        assert!(h.flush());
        assert_eq!(h.io.get_ref().flushes, 1);
        assert_eq!(h.wakes(), 0);
        // A flush with nothing written passes through too.
        assert!(h.flush());
        assert_eq!(h.io.get_ref().flushes, 2);
    }

    #[test]
    fn a_full_frame_waits_one_turn_and_wakes_the_task() {
        let mut h = Harness::new();
        h.write(DEFER_FLUSH_FROM + 12);
        assert!(!h.flush(), "the first flush after a large write waits");
        assert_eq!(h.io.get_ref().flushes, 0);
        assert_eq!(h.wakes(), 1, "and wakes the task so that it polls again");
        assert!(h.flush(), "nothing written since: the flush goes through");
        assert_eq!(h.io.get_ref().flushes, 1);
        assert_eq!(h.io.get_ref().bytes, DEFER_FLUSH_FROM + 12);
    }

    #[test]
    fn frames_written_while_waiting_leave_in_one_flush() {
        let mut h = Harness::new();
        for _ in 0..8 {
            h.write(DEFER_FLUSH_FROM);
            assert!(!h.flush());
        }
        // A small frame after the burst: flushed at once, and everything
        // written before it with it.
        h.write(100);
        assert!(h.flush());
        assert_eq!(h.io.get_ref().flushes, 1);
        assert_eq!(h.wakes(), 8);
        assert_eq!(h.io.get_ref().bytes, 8 * DEFER_FLUSH_FROM + 100);
    }

    #[test]
    fn writes_add_up_to_the_threshold() {
        let mut h = Harness::new();
        h.write(DEFER_FLUSH_FROM / 2);
        h.write(DEFER_FLUSH_FROM / 2);
        assert!(!h.flush());
        assert!(h.flush());
    }

    #[test]
    fn close_passes_through_and_forgets_pending_writes() {
        let mut h = Harness::new();
        h.write(DEFER_FLUSH_FROM);
        let waker = waker(h.wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(
            Pin::new(&mut h.io).poll_close(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(h.io.get_ref().closes, 1);
        assert!(h.flush());
    }
}
