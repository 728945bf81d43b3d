//! Reads below noise that fetch the rest of a noise message in one system
//! call: [`FrameReads`], and [`NoiseFrameReads`] to put it under noise.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::UpgradeInfo;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};

/// The largest noise message: its length is a `u16`.
const MAX_MESSAGE: usize = u16::MAX as usize;

/// The length prefix of a noise message.
const LEN_PREFIX: usize = 2;

/// Where the bytes read so far stand in noise's framing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Framing {
    /// Bytes of the current message not read from the socket yet.
    left: usize,
    /// The first byte of a length prefix whose second is still to come.
    half_len: Option<u8>,
}

impl Framing {
    /// Follows the framing through `bytes`, the next bytes read.
    fn scan(&mut self, mut bytes: &[u8]) {
        loop {
            if self.left > 0 {
                let n = self.left.min(bytes.len());
                self.left -= n;
                bytes = &bytes[n..];
            }
            let [byte, rest @ ..] = bytes else {
                return;
            };
            bytes = rest;
            match self.half_len.take() {
                None => self.half_len = Some(*byte),
                Some(high) => self.left = usize::from(u16::from_be_bytes([high, *byte])),
            }
        }
    }
}

/// A connection, below noise, whose reads fetch the rest of a noise
/// message in one system call. Writes pass through.
///
/// libp2p-noise reads its socket through asynchronous-codec, 8 KiB at a
/// time, so a full noise message (up to 64 KiB, the size a large body
/// travels in) costs eight `recvfrom` calls. [`FrameReads`] sits between
/// the socket and noise. It follows noise's framing in the bytes it reads
/// (every noise message, in the handshake as in transport mode, is a 2-byte
/// big-endian length and that many bytes), and when noise asks for less
/// than what remains of the current message, it reads that remainder, and
/// the next message's length, into a buffer of its own in one call and
/// hands it to noise from there; so while large messages follow each other,
/// each takes one call.
///
/// It never reads beyond the end of the message noise is decoding (but for
/// the next one's 2-byte length), which noise needs whole before it can
/// decrypt anything: so no more data enters the process than noise would
/// hold anyway (a plain 64 KiB read-ahead, which also reads the next
/// messages, raised peak RSS at 10,000 requests in flight by 2 MiB). Reads
/// at a message boundary, and reads whose buffer can take what remains of
/// the message, go straight into noise's buffer as without the wrapper,
/// with no extra copy. The buffer (64 KiB) is allocated when a message
/// larger than noise's reads arrives, and freed when the connection has
/// nothing to read between two messages twice without a large message in
/// between: kept through the short gaps of a stream of large messages, not
/// kept by a connection that carried one large body long ago.
///
/// Correctness never depends on the framing being followed right: it only
/// decides how many bytes to ask the socket for, and every byte read is
/// handed on once, in order.
#[derive(Debug)]
pub struct FrameReads<S> {
    inner: S,
    /// Bytes read ahead of the caller: `ahead[start..end]`.
    ahead: Vec<u8>,
    start: usize,
    end: usize,
    /// Whether `ahead` was read into since the last gap between messages.
    ahead_used: bool,
    framing: Framing,
}

impl<S> FrameReads<S> {
    /// Wraps `inner`, a connection whose first byte read starts a noise
    /// message.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            ahead: Vec::new(),
            start: 0,
            end: 0,
            ahead_used: false,
            framing: Framing::default(),
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Copies what is read ahead into `buf`, as much as fits.
    fn hand_out(&mut self, buf: &mut [u8]) -> usize {
        let n = (self.end - self.start).min(buf.len());
        buf[..n].copy_from_slice(&self.ahead[self.start..self.start + n]);
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        n
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameReads<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.start < this.end {
            return Poll::Ready(Ok(this.hand_out(buf)));
        }
        let left = this.framing.left;
        if left <= buf.len() || buf.is_empty() {
            // At a boundary, or the caller takes the rest: straight in.
            let read = Pin::new(&mut this.inner).poll_read(cx, buf);
            match &read {
                Poll::Ready(Ok(n)) => this.framing.scan(buf.get(..*n).unwrap_or(buf)),
                Poll::Pending if this.framing == Framing::default() => {
                    // Idle between messages: give the buffer back, unless
                    // a large message came since the last such gap.
                    let used_since = std::mem::take(&mut this.ahead_used);
                    if !used_since {
                        this.ahead = Vec::new();
                    }
                }
                _ => {}
            }
            return read;
        }
        // The rest of this message and the next one's length, so that the
        // next read can take that message whole too. `left` came from a
        // u16: the buffer holds it.
        let want = left + LEN_PREFIX;
        if this.ahead.len() < want {
            this.ahead.resize(MAX_MESSAGE + LEN_PREFIX, 0);
        }
        this.ahead_used = true;
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut this.ahead[..want]))?;
        let n = n.min(want);
        this.framing.scan(&this.ahead[..n]);
        this.start = 0;
        this.end = n;
        Poll::Ready(Ok(this.hand_out(buf)))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameReads<S> {
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
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A noise upgrade that reads its connections through [`FrameReads`]:
/// the same protocol names, handshake and output as the upgrade it wraps.
/// Meant for noise only: another security layer's framing differs, and
/// while its bytes would still pass intact, the reads would not fit its
/// records.
#[derive(Debug, Clone)]
pub struct NoiseFrameReads<U>(pub U);

impl<U: UpgradeInfo> UpgradeInfo for NoiseFrameReads<U> {
    type Info = U::Info;
    type InfoIter = U::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.protocol_info()
    }
}

impl<C, U> InboundConnectionUpgrade<C> for NoiseFrameReads<U>
where
    U: InboundConnectionUpgrade<FrameReads<C>>,
{
    type Output = U::Output;
    type Error = U::Error;
    type Future = U::Future;

    fn upgrade_inbound(self, socket: C, info: Self::Info) -> Self::Future {
        self.0.upgrade_inbound(FrameReads::new(socket), info)
    }
}

impl<C, U> OutboundConnectionUpgrade<C> for NoiseFrameReads<U>
where
    U: OutboundConnectionUpgrade<FrameReads<C>>,
{
    type Output = U::Output;
    type Error = U::Error;
    type Future = U::Future;

    fn upgrade_outbound(self, socket: C, info: Self::Info) -> Self::Future {
        self.0.upgrade_outbound(FrameReads::new(socket), info)
    }
}

#[cfg(test)]
mod tests {
    use futures::task::noop_waker;
    use proptest::prelude::*;

    use super::*;

    /// A socket that has `data` to give, at most `chunk` bytes a read, and
    /// records the size of every read asked of it.
    struct Source {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
        asked: Vec<usize>,
        /// At the end of `data`, answer `Pending` (more may come) rather
        /// than end of stream.
        pending_at_end: bool,
    }

    impl Source {
        fn new(data: Vec<u8>, chunk: usize) -> Self {
            Self {
                data,
                pos: 0,
                chunk,
                asked: Vec::new(),
                pending_at_end: false,
            }
        }
    }

    impl AsyncRead for Source {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            self.asked.push(buf.len());
            if self.pending_at_end && self.pos == self.data.len() {
                return Poll::Pending;
            }
            let n = buf.len().min(self.chunk).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Poll::Ready(Ok(n))
        }
    }

    /// `bodies` as noise frames them: each a u16 length and its bytes.
    fn framed(bodies: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for body in bodies {
            out.extend_from_slice(&(body.len() as u16).to_be_bytes());
            out.extend_from_slice(body);
        }
        out
    }

    /// Reads through `reads` with buffers of `buf_len` until the socket
    /// ends (a plain [`Source`]) or has nothing more for now (one with
    /// `pending_at_end`).
    fn read_through(reads: &mut FrameReads<Source>, buf_len: usize) -> Vec<u8> {
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        let mut buf = vec![0u8; buf_len];
        loop {
            match Pin::new(&mut *reads).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(0)) | Poll::Pending => return out,
                Poll::Ready(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Poll::Ready(Err(e)) => panic!("unexpected {e}"),
            }
        }
    }

    #[test]
    fn full_messages_take_one_or_two_reads_instead_of_eight() {
        let bodies = vec![vec![5u8; MAX_MESSAGE], vec![6u8; MAX_MESSAGE]];
        let wire = framed(&bodies);
        let mut reads = FrameReads::new(Source::new(wire.clone(), usize::MAX));
        assert_eq!(read_through(&mut reads, 8 * 1024), wire);
        // The first message: noise's 8 KiB at the boundary, then the rest
        // of it and the next length; the second whole in one read (and
        // the next length, which is not there); then the read that finds
        // the end.
        let asked = &reads.get_ref().asked;
        assert_eq!(
            asked,
            &[
                8 * 1024,
                MAX_MESSAGE + 2 - 8 * 1024 + 2,
                MAX_MESSAGE + 2,
                8 * 1024
            ]
        );
    }

    #[test]
    fn a_run_of_large_messages_takes_one_read_each() {
        let bodies: Vec<Vec<u8>> = (0..16).map(|i| vec![i as u8; 60_000]).collect();
        let wire = framed(&bodies);
        let mut reads = FrameReads::new(Source::new(wire.clone(), usize::MAX));
        assert_eq!(read_through(&mut reads, 8 * 1024), wire);
        // 16 messages: one boundary read, 16 reads ahead, the end.
        assert_eq!(reads.get_ref().asked.len(), 18);
    }

    #[test]
    fn never_reads_past_the_message_being_decoded() {
        let bodies = vec![vec![1u8; 20_000], vec![2u8; 100], vec![3u8; 40_000]];
        let wire = framed(&bodies);
        let ends = [20_002, 20_104, 60_106];
        let mut reads = FrameReads::new(Source::new(wire.clone(), usize::MAX));
        assert_eq!(read_through(&mut reads, 8 * 1024), wire);
        let mut pos = 0;
        for asked in reads.get_ref().asked.iter().copied() {
            let end = ends
                .iter()
                .copied()
                .find(|&e| e > pos)
                .unwrap_or(wire.len());
            if asked > 8 * 1024 {
                // The rest of the message and the next one's length.
                assert!(
                    pos + asked <= end + 2,
                    "a read ahead of {asked} at {pos} crosses {end}"
                );
            }
            pos = (pos + asked).min(wire.len());
        }
    }

    #[test]
    fn the_buffer_is_given_back_when_idle_between_messages() {
        let first = framed(&[vec![8u8; 50_000]]);
        let mut source = Source::new(first.clone(), usize::MAX);
        source.pending_at_end = true;
        let mut reads = FrameReads::new(source);
        assert_eq!(read_through(&mut reads, 8 * 1024), first);
        assert!(
            reads.ahead.capacity() > 0,
            "the first gap after a large message keeps it"
        );
        // The next large message reuses it.
        let second = framed(&[vec![9u8; 60_000]]);
        reads.inner.data.extend_from_slice(&second);
        assert_eq!(read_through(&mut reads, 8 * 1024), second);
        assert!(reads.ahead.capacity() > 0);
        // Small messages only: the second gap frees it.
        let small = framed(&[vec![1u8; 300]]);
        reads.inner.data.extend_from_slice(&small);
        assert_eq!(read_through(&mut reads, 8 * 1024), small);
        assert_eq!(reads.ahead.capacity(), 0, "idle twice: freed");
        // And a large message gets one again.
        let third = framed(&[vec![7u8; 40_000]]);
        reads.inner.data.extend_from_slice(&third);
        assert_eq!(read_through(&mut reads, 8 * 1024), third);
        assert!(reads.ahead.capacity() > 0);
        assert_eq!(read_through(&mut reads, 8 * 1024), b"");
        assert_eq!(reads.ahead.capacity(), 0);
    }

    #[test]
    fn the_buffer_is_kept_while_a_message_is_unfinished() {
        let wire = framed(&[vec![8u8; 50_000]]);
        let mut source = Source::new(wire[..30_000].to_vec(), usize::MAX);
        source.pending_at_end = true;
        let mut reads = FrameReads::new(source);
        assert_eq!(read_through(&mut reads, 8 * 1024), &wire[..30_000]);
        assert!(reads.ahead.capacity() > 0, "mid-message: kept");
        reads.inner.data.extend_from_slice(&wire[30_000..]);
        assert_eq!(read_through(&mut reads, 8 * 1024), &wire[30_000..]);
        assert!(reads.ahead.capacity() > 0, "one gap after it: kept");
        assert_eq!(read_through(&mut reads, 8 * 1024), b"");
        assert_eq!(reads.ahead.capacity(), 0, "two: freed");
    }

    #[test]
    fn small_messages_are_read_straight_into_the_callers_buffer() {
        let bodies: Vec<Vec<u8>> = (0..50).map(|i| vec![i as u8; 600]).collect();
        let wire = framed(&bodies);
        let mut reads = FrameReads::new(Source::new(wire.clone(), usize::MAX));
        assert_eq!(read_through(&mut reads, 8 * 1024), wire);
        assert!(reads.get_ref().asked.iter().all(|&n| n == 8 * 1024));
        assert!(reads.ahead.is_empty(), "no buffer of its own was needed");
    }

    proptest! {
        /// Whatever the bytes (noise frames or not), the caller's buffer
        /// sizes and the socket's chunking, every byte comes out once and
        /// in order.
        #[test]
        fn bytes_pass_intact(
            bodies in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..70_000), 0..4),
            junk in proptest::collection::vec(any::<u8>(), 0..3000),
            buf_len in 1usize..20_000,
            chunk in 1usize..100_000,
        ) {
            let bodies: Vec<Vec<u8>> =
                bodies.into_iter().map(|mut b| { b.truncate(MAX_MESSAGE); b }).collect();
            for wire in [framed(&bodies), junk] {
                let mut reads = FrameReads::new(Source::new(wire.clone(), chunk));
                prop_assert_eq!(read_through(&mut reads, buf_len), wire);
            }
        }
    }
}
