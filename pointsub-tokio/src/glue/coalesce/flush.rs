//! Flushes that wait one turn of the connection task, above the security
//! layer (the module docs of [`coalesce`](super) say why and what it
//! measured).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};

/// An authenticated connection whose flushes wait for one more turn of
/// the task that writes to it ([module docs](super)). Reads and closes pass
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
