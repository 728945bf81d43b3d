//! Outgoing bytes shared by both cores: per-stream frame queues, a flow
//! window per stream, and streams taking turns.

use crate::StreamId;
use crate::frame::{Flags, FrameKind, OutQueue};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};

/// Most bytes one [`Transmit`] carries: two full chunks with their headers,
/// so a large body goes out in 128 KiB writes with no half-empty buffers.
pub const MAX_TRANSMIT: usize = 2 * (crate::frame::CHUNK_SIZE + crate::frame::HEADER_LEN);
/// Most bytes handed out on one stream and not yet reported flushed.
pub const STREAM_WINDOW: usize = 256 * 1024;
/// Bytes waiting to go out on a server stream (queued or not yet flushed)
/// above which the adapter should stop reading it: a peer that sends
/// requests but does not read the answers then stalls on its own stream
/// (the muxer stops granting it window) instead of filling our memory.
pub const READ_PAUSE_BACKLOG: usize = 2 * STREAM_WINDOW;

/// Bytes to write on a stream, in order; report them flushed with the core's
/// `handle_flushed` once written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The stream to write on.
    pub stream: StreamId,
    /// The bytes.
    pub data: Bytes,
}

/// One stream's sending side.
pub(crate) struct Outgoing {
    pub(crate) out: OutQueue,
    /// Bytes handed out so far.
    pub(crate) emitted: u64,
    /// Bytes reported written so far.
    pub(crate) flushed: u64,
    in_ready: bool,
}

impl Outgoing {
    pub(crate) fn new() -> Self {
        Self::with_queue(OutQueue::new())
    }

    /// A sending side whose queue logs the messages it finishes
    /// ([`OutQueue::logging_done`]).
    pub(crate) fn logging_done() -> Self {
        Self::with_queue(OutQueue::logging_done())
    }

    fn with_queue(out: OutQueue) -> Self {
        Outgoing {
            out,
            emitted: 0,
            flushed: 0,
            in_ready: false,
        }
    }

    /// Bytes queued or handed out and not yet reported written.
    pub(crate) fn backlog(&self) -> usize {
        let unflushed = usize::try_from(self.emitted - self.flushed).unwrap_or(usize::MAX);
        self.out.queued_bytes().saturating_add(unflushed)
    }

    /// Whether everything queued was handed out and reported written.
    pub(crate) fn is_drained(&self) -> bool {
        self.out.is_empty() && self.emitted == self.flushed
    }

    fn mark_ready(&mut self, stream: StreamId, ready: &mut VecDeque<StreamId>) {
        if !self.in_ready && !self.out.is_empty() && self.window_open() {
            self.in_ready = true;
            ready.push_back(stream);
        }
    }

    fn window_open(&self) -> bool {
        self.emitted - self.flushed < STREAM_WINDOW as u64
    }

    /// Queues a message and puts the stream in line to send.
    pub(crate) fn push(
        &mut self,
        stream: StreamId,
        ready: &mut VecDeque<StreamId>,
        kind: FrameKind,
        request_id: u64,
        flags: Flags,
        body: Bytes,
    ) {
        self.out.push(kind, request_id, flags, body);
        self.mark_ready(stream, ready);
    }

    /// Queues a Cancel frame for `request_id` (the client gave up on it).
    pub(crate) fn push_cancel(
        &mut self,
        stream: StreamId,
        ready: &mut VecDeque<StreamId>,
        request_id: u64,
    ) {
        self.push(
            stream,
            ready,
            FrameKind::Cancel,
            request_id,
            Flags::empty(),
            Bytes::new(),
        );
    }

    /// Records `n` bytes written; returns the new flushed total.
    pub(crate) fn flushed(
        &mut self,
        stream: StreamId,
        ready: &mut VecDeque<StreamId>,
        n: usize,
    ) -> u64 {
        self.flushed = (self.flushed + n as u64).min(self.emitted);
        self.mark_ready(stream, ready);
        self.flushed
    }
}

/// A per-stream state that has a sending side.
pub(crate) trait HasOutgoing {
    fn outgoing(&mut self) -> &mut Outgoing;
}

/// Pulls the next bytes of one stream, packed by the stream's queue (at
/// most [`MAX_TRANSMIT`], or one frame's header or large payload alone),
/// if its window is open. The stream leaves the ready line only through
/// [`next_writable`]; pulling until `None` empties it.
pub(crate) fn pull<T: HasOutgoing>(
    streams: &mut BTreeMap<StreamId, T>,
    stream: StreamId,
) -> Option<Bytes> {
    let o = streams.get_mut(&stream)?.outgoing();
    if !o.window_open() {
        return None;
    }
    let data = o.out.poll(MAX_TRANSMIT)?;
    o.emitted += data.len() as u64;
    Some(data)
}

/// The next stream in line that has bytes to pull now (queued, window
/// open); each stream at most once until it gets news again.
pub(crate) fn next_writable<T: HasOutgoing>(
    ready: &mut VecDeque<StreamId>,
    streams: &mut BTreeMap<StreamId, T>,
) -> Option<StreamId> {
    while let Some(stream) = ready.pop_front() {
        let Some(o) = streams.get_mut(&stream).map(HasOutgoing::outgoing) else {
            continue;
        };
        o.in_ready = false;
        if o.window_open() && !o.out.is_empty() {
            return Some(stream);
        }
    }
    None
}

/// Takes the next turn among ready streams of `streams`.
pub(crate) fn next_transmit<T: HasOutgoing>(
    ready: &mut VecDeque<StreamId>,
    streams: &mut BTreeMap<StreamId, T>,
) -> Option<Transmit> {
    while let Some(stream) = ready.pop_front() {
        let Some(o) = streams.get_mut(&stream).map(HasOutgoing::outgoing) else {
            continue;
        };
        o.in_ready = false;
        if !o.window_open() {
            continue; // back in line when flushed
        }
        let Some(data) = o.out.poll(MAX_TRANSMIT) else {
            continue;
        };
        o.emitted += data.len() as u64;
        o.mark_ready(stream, ready);
        return Some(Transmit { stream, data });
    }
    None
}
