//! The machinery the client and server drivers share: the per-core
//! bookkeeping between a core and its streams ([`Plumbing`]), one I/O task
//! per libp2p stream ([`StreamTask`]) and the timer task ([`TimerTask`]).
//!
//! A driver keeps its core behind one mutex. The data path is pulled, in
//! the manner of quinn's connection driver: a stream's task writes and
//! reads without the lock, then takes it once per round to report what it
//! wrote and read and, when its sink took everything it held, to pull the
//! next bytes the core packed for it. It holds at most that one buffer:
//! the core owns the only window and the only packing rule. Whoever else
//! has news (a user call, the timer) locks the core, feeds it, and wakes,
//! after unlocking, the stream tasks the core says have bytes to pull.
//! One exception keeps a lone request fast: a client's send that finds its
//! stream idle (no other request on it) and the stream's task asleep
//! pulls and writes the bytes itself, under that same lock
//! ([`Plumbing::write_now`]): nothing would have been batched with them,
//! and the round trip is spared two task wake-ups, which on a
//! multi-threaded runtime spill to another thread.
//!
//! What the news starts runs after the lock is released: handlers, stream
//! opens, the wake-ups of callers whose requests ended. What it produces
//! at once for the core (the answers of handlers that were ready when
//! first polled) the stream's task carries into its next round's lock,
//! with that round's bytes: one lock per round, however many requests
//! the round carried.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Instant as StdInstant;

use bytes::{Buf, Bytes, BytesMut};
use futures::io::{AsyncRead, AsyncWrite};
use libp2p::Stream;
use pointsub_proto::StreamId;
use rustc_hash::FxHashMap;

use super::behaviour::Closed;
use super::common::ConnectionInfo;
use super::host::Host;
use super::rt::{BoxSleep, Clock, Runtime};

/// Size of a stream task's read buffer. Reads land in it and are handed
/// to the core as they are (no copy); single-frame messages stay slices
/// of it.
const READ_CHUNK: usize = 32 * 1024;

/// A new read buffer is taken when less than this is left of the current
/// one, so that a large body still arrives in large reads.
const MIN_READ: usize = 8 * 1024;

/// Rounds (one write, one read, one lock) a task does before yielding to
/// the runtime.
const POLL_BUDGET: usize = 32;

pub(crate) use super::common::lock;

/// How the core asked for a stream to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Close {
    /// Write what the core still has for it, then close our write side.
    Graceful,
    /// Drop the stream at once (the muxer resets it).
    Reset,
}

/// A stream's write side as its task and the core's lock holders share
/// it: the stream itself and the task's one buffer. The task holds it
/// locked through each poll; whoever holds the core's lock only ever
/// tries it ([`Plumbing::write_now`]), so the two locks cannot deadlock.
#[derive(Default)]
pub(crate) struct Wire {
    /// `None` until the task starts, and once it finished.
    stream: Option<Stream>,
    /// The rest of the bytes pulled last, not yet taken by the stream.
    out: Option<Bytes>,
    /// Bytes were written since the stream was last flushed.
    unflushed: bool,
}

/// A [`Wire`] as the task and the plumbing share it.
pub(crate) type WireCell = Arc<Mutex<Wire>>;

struct Slot {
    close: Option<Close>,
    /// The task's waker while it sleeps (`None` while it runs).
    waker: Option<Waker>,
    wire: WireCell,
}

/// Wakers collected under the lock, woken after it is released. The
/// first is held inline: most drains wake one task (a send wakes its
/// stream's), and a heap vector for it cost an allocation per request.
#[derive(Default)]
pub(crate) struct Wakers {
    first: Option<Waker>,
    rest: Vec<Waker>,
}

impl Wakers {
    pub(crate) fn push(&mut self, w: Option<Waker>) {
        if let Some(w) = w {
            match self.first {
                None => self.first = Some(w),
                Some(_) => self.rest.push(w),
            }
        }
    }

    pub(crate) fn wake(self) {
        if let Some(w) = self.first {
            w.wake();
        }
        for w in self.rest {
            w.wake();
        }
    }
}

/// The per-core bookkeeping between the core and its tasks: each live
/// stream's close request and waker, and the timer.
#[derive(Default)]
pub(crate) struct Plumbing {
    slots: FxHashMap<StreamId, Slot>,
    timer_waker: Option<Waker>,
    /// The deadline the timer task sleeps until.
    timer_armed: Option<pointsub_proto::Instant>,
    /// Set once the core is finished: tasks end.
    pub(crate) stopped: bool,
}

impl Plumbing {
    /// Starts tracking a stream whose I/O task is about to be spawned;
    /// returns the wire to spawn it with.
    pub(crate) fn add_stream(&mut self, id: StreamId) -> WireCell {
        let wire = WireCell::default();
        let slot = Slot {
            close: None,
            waker: None,
            wire: wire.clone(),
        };
        self.slots.insert(id, slot);
        wire
    }

    /// Writes the next bytes the core has for `id` (`pull`) from the
    /// calling task, when the stream's task sleeps and holds nothing:
    /// returns how many the stream took, for the caller to report to the
    /// core as flushed; `None` when it could not (the caller then wakes
    /// the task as usual, [`Plumbing::writable`]). Whatever the stream did
    /// not take at once stays on the wire for the task, which is woken.
    ///
    /// This is the client's path for a request on an idle stream: it goes
    /// out from the sender's task, without waking the stream's task first,
    /// so a round trip with nothing else in flight passes through two
    /// fewer task wake-ups. (On a multi-threaded runtime a chain of more
    /// than three wake-ups spills to another thread and costs a futex
    /// wake and a context switch; at one request in flight that was most
    /// of its latency.)
    pub(crate) fn write_now(
        &mut self,
        id: StreamId,
        pull: impl FnOnce() -> Option<Bytes>,
        wakers: &mut Wakers,
    ) -> Option<usize> {
        let slot = self.slots.get_mut(&id)?;
        if slot.close.is_some() {
            return None;
        }
        let waker = slot.waker.clone()?;
        let mut wire = slot.wire.try_lock().ok()?;
        if wire.out.is_some() {
            return None;
        }
        let Wire {
            stream,
            out,
            unflushed,
        } = &mut *wire;
        let stream = stream.as_mut()?;
        let Some(mut bytes) = pull() else {
            return Some(0);
        };
        // The task's waker: if the stream cannot take it all, the muxer
        // wakes the task, which owns what is left.
        let mut cx = Context::from_waker(&waker);
        let mut written = 0;
        while !bytes.is_empty() {
            match Pin::new(&mut *stream).poll_write(&mut cx, &bytes) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    bytes.advance(n);
                    written += n;
                }
                // Not taken now, or broken: the task retries and sees it.
                _ => break,
            }
        }
        if written > 0 {
            *unflushed = !matches!(
                Pin::new(&mut *stream).poll_flush(&mut cx),
                Poll::Ready(Ok(()))
            );
        }
        if !bytes.is_empty() {
            *out = Some(bytes);
            wakers.push(slot.waker.take());
        }
        Some(written)
    }

    /// The core has bytes for `id` to pull: wakes its task (unless it is
    /// running now; it pulls before it sleeps).
    pub(crate) fn writable(&mut self, id: StreamId, wakers: &mut Wakers) {
        if let Some(slot) = self.slots.get_mut(&id) {
            wakers.push(slot.waker.take());
        }
    }

    /// Asks a stream's task to end it.
    pub(crate) fn close(&mut self, id: StreamId, how: Close, wakers: &mut Wakers) {
        if let Some(slot) = self.slots.get_mut(&id) {
            // A reset overrides a graceful close, never the other way.
            if slot.close != Some(Close::Reset) {
                slot.close = Some(how);
            }
            wakers.push(slot.waker.take());
        }
    }

    /// Ends every stream (the core is gone) and the timer.
    pub(crate) fn stop_all(&mut self, wakers: &mut Wakers) {
        self.stopped = true;
        for slot in self.slots.values_mut() {
            if slot.close.is_none() {
                slot.close = Some(Close::Graceful);
            }
            wakers.push(slot.waker.take());
        }
        wakers.push(self.timer_waker.take());
    }

    /// Forgets a stream whose task ended.
    pub(crate) fn remove(&mut self, id: StreamId) {
        self.slots.remove(&id);
    }

    /// Number of streams with a live I/O task.
    pub(crate) fn streams(&self) -> usize {
        self.slots.len()
    }

    /// A stream's task is running: news for it need not wake it.
    fn running(&mut self, id: StreamId) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.waker = None;
        }
    }

    /// A stream's task is about to sleep: registers its waker and says how
    /// the core asked it to end, if it did (`Reset` for a stream no longer
    /// tracked).
    fn park(&mut self, id: StreamId, waker: &Waker) -> Option<Close> {
        let Some(slot) = self.slots.get_mut(&id) else {
            return Some(Close::Reset);
        };
        match &slot.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => slot.waker = Some(waker.clone()),
        }
        slot.close
    }

    /// After the core was drained: wakes the timer task if the core's next
    /// deadline is earlier than the one it sleeps until.
    pub(crate) fn rearm(&mut self, next: Option<pointsub_proto::Instant>, wakers: &mut Wakers) {
        let Some(next) = next else {
            return;
        };
        if self.timer_armed.is_none_or(|armed| next < armed) {
            self.timer_armed = Some(next);
            wakers.push(self.timer_waker.take());
        }
    }

    /// Records what the timer task sleeps until, and its waker.
    pub(crate) fn arm(&mut self, next: Option<pointsub_proto::Instant>, waker: &Waker) {
        self.timer_armed = next;
        self.timer_waker = Some(waker.clone());
    }
}

/// What a stream's task did since it last took the lock.
pub(crate) struct Io<T> {
    /// Bytes handed to the stream.
    flushed: usize,
    /// Bytes read from it.
    data: Option<BytesMut>,
    /// Whether its sink took everything it held: pull the next bytes.
    pull: bool,
    /// What the work of its last round produced for the core.
    ready: Vec<T>,
}

/// What the core tells a stream's task, in one lock.
pub(crate) struct Step<T> {
    /// The next bytes to write (only when asked to pull).
    out: Option<Bytes>,
    /// How to end the stream, once `out` and what the core still has are written.
    close: Option<Close>,
    /// Whether to read more now.
    wants_read: bool,
    /// What the news of this round produced at once for the core, run
    /// after the lock was released: the task hands it in next round.
    ready: Vec<T>,
}

/// A core as seen by the tasks that serve it.
pub(crate) trait Engine: Send + Sync + 'static {
    /// The runtime the tasks run on.
    type Rt: Runtime;

    /// What work done outside the lock hands back to the core (see
    /// [`Side::Ready`]).
    type Ready: Send + Unpin + 'static;

    /// The runtime, for timers.
    fn runtime(&self) -> &Self::Rt;

    /// One round of a stream's task, under one lock: hands in what the
    /// last round's work produced, reports what it wrote and read, pulls
    /// its next bytes, registers its waker; then, unlocked, runs the work
    /// this news started. Gives `io` back untouched when another thread
    /// holds the lock: the task keeps it, yields, and tries again, so its
    /// thread runs other tasks instead of sleeping on the lock.
    fn step(
        &self,
        id: StreamId,
        io: Io<Self::Ready>,
        waker: &Waker,
    ) -> Result<Step<Self::Ready>, Io<Self::Ready>>;

    /// Hands what a task still carries to the core (waiting for the lock):
    /// its work's results, and bytes written or read and not yet reported.
    fn hand_in(&self, id: StreamId, io: Io<Self::Ready>);

    /// The remote closed its side (`reset == false`) or the stream broke.
    /// Returns whether the core may still write on it.
    fn on_end(&self, id: StreamId, reset: bool) -> bool;

    /// The stream's task ended.
    fn on_finished(&self, id: StreamId);

    /// Runs due timers; says what to sleep until next.
    fn on_timer(&self, waker: &Waker) -> TimerPoll;

    /// Completes once the host's behaviour is dropped (its swarm gone).
    fn host_closed(&self) -> Closed;

    /// The host's behaviour was dropped: nothing can reach the network
    /// any more.
    fn on_host_closed(&self);
}

/// What the timer task does next.
pub(crate) enum TimerPoll {
    /// The core is finished: the task ends.
    Stop,
    /// Sleep until this instant, or until woken when `None`.
    Sleep(Option<StdInstant>),
}

/// Spawns the I/O task of a stream the engine already tracks, whose
/// wire [`Plumbing::add_stream`] made.
pub(crate) fn spawn_stream<E: Engine>(
    engine: &Arc<E>,
    id: StreamId,
    wire: WireCell,
    stream: Stream,
    span: tracing::Span,
) {
    lock(&wire).stream = Some(stream);
    let task = StreamTask {
        engine: engine.clone(),
        id,
        wire,
        ready: Vec::new(),
        flushed: 0,
        data: None,
        eof: false,
        read_open: true,
        wants_read: true,
        deferred: false,
        closing: None,
        buf: BytesMut::new(),
        span,
    };
    engine.runtime().spawn(Box::pin(task));
}

/// Moves one stream's bytes: writes what it pulled from the core, reads
/// what the remote sent, and reports both (and the stream's end) to the core.
struct StreamTask<E: Engine> {
    engine: Arc<E>,
    id: StreamId,
    /// The stream and the bytes held for it, locked for the whole of each
    /// poll (a sender writes through it only while the task sleeps).
    wire: WireCell,
    /// What its last round's work produced, for the core's next lock.
    ready: Vec<E::Ready>,
    /// Bytes written and not yet reported.
    flushed: usize,
    /// Bytes read and not yet reported (no more is read meanwhile).
    data: Option<BytesMut>,
    /// The remote closed its side; not yet reported.
    eof: bool,
    read_open: bool,
    /// What the core said last about reading.
    wants_read: bool,
    /// This wake-up was put off once already (see `poll_wire`).
    deferred: bool,
    closing: Option<Close>,
    /// The read buffer; what is read is split off it and handed over.
    buf: BytesMut,
    span: tracing::Span,
}

impl<E: Engine> StreamTask<E> {
    fn finish(&mut self, wire: &mut Wire) -> Poll<()> {
        self.hand_in();
        if wire.stream.take().is_some() {
            wire.out = None;
            self.engine.on_finished(self.id);
        }
        Poll::Ready(())
    }

    /// Gives the core what the task still carries, so nothing is lost
    /// when it ends between rounds.
    fn hand_in(&mut self) {
        if !self.ready.is_empty() || self.flushed > 0 || self.data.is_some() {
            let io = Io {
                flushed: std::mem::take(&mut self.flushed),
                data: self.data.take(),
                pull: false,
                ready: std::mem::take(&mut self.ready),
            };
            self.engine.hand_in(self.id, io);
        }
    }

    fn broken(&mut self, wire: &mut Wire, error: std::io::Error) -> Poll<()> {
        tracing::debug!(stream = %self.id, %error, "stream broke");
        self.hand_in();
        self.engine.on_end(self.id, true);
        self.finish(wire)
    }

    /// One poll, with the wire locked.
    fn poll_wire(&mut self, wire: &mut Wire, cx: &mut Context<'_>) -> Poll<()> {
        for round in 0..POLL_BUDGET {
            let Wire {
                stream,
                out,
                unflushed,
            } = wire;
            let Some(stream) = stream.as_mut() else {
                return Poll::Ready(());
            };
            // Write what we hold, without the lock.
            while let Some(rest) = out.as_mut() {
                match Pin::new(&mut *stream).poll_write(cx, rest) {
                    Poll::Ready(Ok(0)) => {
                        return self.broken(wire, std::io::ErrorKind::WriteZero.into());
                    }
                    Poll::Ready(Ok(n)) => {
                        rest.advance(n);
                        self.flushed += n;
                        *unflushed = true;
                        if rest.is_empty() {
                            *out = None;
                        }
                    }
                    Poll::Ready(Err(e)) => return self.broken(wire, e),
                    Poll::Pending => break,
                }
            }
            // Read, unless what was read is not reported yet, or the core
            // asks to wait until its answers drain (the writes above, woken
            // by the muxer, make that progress).
            if self.data.is_none() && self.read_open && self.wants_read {
                if self.buf.len() < MIN_READ {
                    self.buf = BytesMut::zeroed(READ_CHUNK);
                }
                match Pin::new(&mut *stream).poll_read(cx, &mut self.buf) {
                    Poll::Ready(Ok(0)) => {
                        self.read_open = false;
                        self.eof = true;
                    }
                    Poll::Ready(Ok(n)) => self.data = Some(self.buf.split_to(n)),
                    Poll::Ready(Err(e)) => return self.broken(wire, e),
                    Poll::Pending => {}
                }
            }
            if round == 0
                && !self.deferred
                && out.is_none()
                && self.data.is_none()
                && self.flushed == 0
                && self.ready.is_empty()
                && !self.eof
            {
                // Woken with nothing read and nothing held: a sender
                // queued bytes for it. Let the other tasks ready now run
                // first (waking itself puts the task at the back of the
                // run queue), so that the pull takes what they all queued
                // in one write, one muxer frame, one encrypted message.
                self.deferred = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.deferred = false;
            let pull = out.is_none();
            let news =
                self.flushed > 0 || self.data.is_some() || !self.ready.is_empty() || self.eof;
            // One lock: report, pull, hear about closes. Skipped when
            // there is nothing to say or take (a full sink, nothing read)
            // after the first round of this wake-up.
            let mut pulled = false;
            if round == 0 || news || pull {
                let io = Io {
                    flushed: std::mem::take(&mut self.flushed),
                    data: self.data.take(),
                    pull,
                    ready: std::mem::take(&mut self.ready),
                };
                let step = match self.engine.step(self.id, io, cx.waker()) {
                    Ok(step) => step,
                    Err(io) => {
                        // The core is busy on another thread: keep what
                        // there is to report and come back after the
                        // runtime ran other tasks.
                        self.flushed = io.flushed;
                        self.data = io.data;
                        self.ready = io.ready;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                };
                self.wants_read = step.wants_read;
                self.closing = step.close;
                if !step.ready.is_empty() {
                    // Answers to hand in: another round, at once.
                    self.ready = step.ready;
                    pulled = true;
                }
                if let Some(bytes) = step.out {
                    *out = Some(bytes);
                    pulled = true;
                }
            }
            if self.eof {
                self.eof = false;
                self.hand_in();
                if !self.engine.on_end(self.id, false) {
                    return self.finish(wire);
                }
                continue;
            }
            if pulled {
                continue;
            }
            if *unflushed && out.is_none() {
                match Pin::new(&mut *stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => *unflushed = false,
                    Poll::Ready(Err(e)) => return self.broken(wire, e),
                    Poll::Pending => {}
                }
            }
            match self.closing {
                Some(Close::Reset) => return self.finish(wire),
                Some(Close::Graceful) if out.is_none() => {
                    return match Pin::new(&mut *stream).poll_close(cx) {
                        Poll::Ready(_) => self.finish(wire),
                        Poll::Pending => Poll::Pending,
                    };
                }
                _ => {}
            }
            if !news {
                return Poll::Pending;
            }
        }
        // Out of budget with work left: let other tasks run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<E: Engine> Future for StreamTask<E> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let span = this.span.clone();
        let _entered = span.enter();
        let cell = this.wire.clone();
        let mut wire = lock(&cell);
        this.poll_wire(&mut wire, cx)
    }
}

impl<E: Engine> Drop for StreamTask<E> {
    fn drop(&mut self) {
        // Dropped unfinished (the runtime shut down): the core must learn
        // the stream is gone so its requests end.
        self.hand_in();
        let cell = self.wire.clone();
        let mut wire = lock(&cell);
        if wire.stream.take().is_some() {
            wire.out = None;
            self.engine.on_end(self.id, true);
            self.engine.on_finished(self.id);
        }
    }
}

/// Spawns the task that runs the core's timers.
pub(crate) fn spawn_timer<E: Engine>(engine: &Arc<E>) {
    let task = TimerTask {
        engine: engine.clone(),
        sleep: None,
        host_closed: Some(engine.host_closed()),
    };
    engine.runtime().spawn(Box::pin(task));
}

/// Sleeps until the core's next deadline and runs its timers; woken early
/// when an earlier deadline appears. Also watches the host: when its
/// behaviour is dropped (the swarm is gone) the side is told at once.
struct TimerTask<E: Engine> {
    engine: Arc<E>,
    sleep: Option<(StdInstant, BoxSleep)>,
    /// `None` once the host has closed.
    host_closed: Option<Closed>,
}

impl<E: Engine> Future for TimerTask<E> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some(closed) = this.host_closed.as_mut()
            && Pin::new(closed).poll(cx).is_ready()
        {
            this.host_closed = None;
            this.engine.on_host_closed();
        }
        loop {
            let deadline = match this.engine.on_timer(cx.waker()) {
                TimerPoll::Stop => return Poll::Ready(()),
                TimerPoll::Sleep(d) => d,
            };
            let Some(deadline) = deadline else {
                this.sleep = None;
                return Poll::Pending;
            };
            if this.sleep.as_ref().is_none_or(|(at, _)| *at != deadline) {
                this.sleep = Some((deadline, this.engine.runtime().sleep_until(deadline)));
            }
            let Some((_, sleep)) = this.sleep.as_mut() else {
                return Poll::Pending;
            };
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => this.sleep = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// One side (client or server) as the shared [`Driver`] sees it: its core
/// and what the driver keeps beside it, all behind the driver's lock.
pub(crate) trait Side<R: Runtime>: Send + Sized + 'static {
    /// What a drain asks to be done once the lock is released.
    type Work: Send;

    /// What doing the work produces at once for the core (a server's
    /// answers of handlers ready when first polled), handed in under the
    /// next lock by [`Side::hand_in`].
    type Ready: Send + Unpin + 'static;

    /// The write queues and timer bookkeeping.
    fn plumbing(&mut self) -> &mut Plumbing;

    /// Moves the core's outputs to where they go (called after every call
    /// into the core, under the lock).
    fn drain(
        &mut self,
        now: pointsub_proto::Instant,
        wakers: &mut Wakers,
        work: &mut Vec<Self::Work>,
    );

    /// Carries out the work of one drain, outside the lock; returns what
    /// it produced at once for the core.
    fn run_all(driver: &Arc<Driver<R, Self>>, work: Vec<Self::Work>) -> Vec<Self::Ready>;

    /// Gives the core what work produced (under the lock; drained after).
    fn hand_in(&mut self, ready: Vec<Self::Ready>, now: pointsub_proto::Instant);

    /// Whether the core wants more bytes from the stream now (false while
    /// its answers on it back up: the remote then stalls on its own writes).
    fn wants_read(&self, id: StreamId) -> bool;

    /// Bytes arrived on a stream (the buffer is handed over).
    fn handle_data(&mut self, id: StreamId, data: BytesMut, now: pointsub_proto::Instant);

    /// The next bytes the core has for a stream, if any.
    fn pull(&mut self, id: StreamId) -> Option<Bytes>;

    /// Bytes were handed to a stream.
    fn handle_flushed(&mut self, id: StreamId, n: usize, now: pointsub_proto::Instant);

    /// See [`Engine::on_end`].
    fn handle_end(&mut self, id: StreamId, reset: bool, now: pointsub_proto::Instant) -> bool;

    /// The core's next deadline.
    fn poll_timeout(&self) -> Option<pointsub_proto::Instant>;

    /// Runs the core's due timers.
    fn handle_timeout(&mut self, now: pointsub_proto::Instant);

    /// The core's view of the streams open now.
    fn connections(&self, now: pointsub_proto::Instant) -> Vec<pointsub_proto::ConnectionInfo>;

    /// The connection a stream rides on, if the side knows it (a client
    /// learns it when the stream opens); otherwise its peer's best one.
    fn stream_path(&self, _id: StreamId) -> Option<super::behaviour::ConnectionPath> {
        None
    }

    /// A stream's task ended.
    fn stream_finished(&mut self, id: StreamId) {
        self.plumbing().remove(id);
    }

    /// The last user handle is gone: close (client) or stop (server).
    fn last_handle_dropped(driver: &Driver<R, Self>);

    /// The host's swarm is gone: by default, as when the last handle is
    /// dropped.
    fn host_closed(driver: &Driver<R, Self>) {
        Self::last_handle_dropped(driver);
    }
}

/// What the user-facing clones share: dropping the last one tells the side
/// (the tasks hold the [`Driver`] itself, not this).
pub(crate) struct UserHandle<R: Runtime, S: Side<R>> {
    pub(crate) driver: Arc<Driver<R, S>>,
}

impl<R: Runtime, S: Side<R>> Drop for UserHandle<R, S> {
    fn drop(&mut self) {
        S::last_handle_dropped(&self.driver);
    }
}

/// A core behind one lock, with its host, clock and tasks: what a
/// [`Client`](crate::generic::Client) or [`Server`](crate::generic::Server)
/// handle points to.
pub(crate) struct Driver<R: Runtime, S> {
    /// The host the side runs on: a node's, or one an application made
    /// from the behaviour in its own swarm.
    pub(crate) node: Host<R>,
    pub(crate) clock: Clock,
    pub(crate) state: Mutex<S>,
    this: Weak<Self>,
}

impl<R: Runtime, S: Side<R>> Driver<R, S> {
    /// Puts `state` behind a driver on `node` and starts its timer task.
    pub(crate) fn start(node: &Host<R>, state: S) -> Arc<Self> {
        let driver = Arc::new_cyclic(|this| Driver {
            node: node.clone(),
            clock: Clock::new(node.runtime()),
            state: Mutex::new(state),
            this: this.clone(),
        });
        spawn_timer(&driver);
        driver
    }

    /// The core's time now.
    pub(crate) fn now(&self) -> pointsub_proto::Instant {
        self.clock.core_time(self.node.runtime().now())
    }

    /// The streams open now, with their peer's address and traffic.
    pub(crate) fn connections_info(&self) -> Vec<ConnectionInfo> {
        let (infos, paths) = {
            let state = self.lock();
            let infos = state.connections(self.now());
            let paths: HashMap<StreamId, _> = infos
                .iter()
                .filter_map(|c| Some((c.stream, state.stream_path(c.stream)?)))
                .collect();
            (infos, paths)
        };
        ConnectionInfo::from_core(
            self.node.runtime().now(),
            |peer, stream| {
                paths
                    .get(&stream)
                    .cloned()
                    .or_else(|| self.node.control().best_path(peer))
            },
            infos,
        )
    }

    /// The side's state, locked (for reads and calls that need no drain).
    pub(crate) fn lock(&self) -> MutexGuard<'_, S> {
        lock(&self.state)
    }

    /// A strong handle, for tasks (none once the driver is being dropped).
    pub(crate) fn handle(&self) -> Option<Arc<Self>> {
        self.this.upgrade()
    }

    /// Runs `f` on the side's state, drains the core, then wakes the tasks
    /// with work and carries out the rest after releasing the lock.
    pub(crate) fn with_core<T>(&self, f: impl FnOnce(&mut S, pointsub_proto::Instant) -> T) -> T {
        self.with_locked(lock(&self.state), f)
    }

    /// [`Driver::with_core`] if the lock is free now; `f` back otherwise.
    pub(crate) fn try_with_core<T, F: FnOnce(&mut S, pointsub_proto::Instant) -> T>(
        &self,
        f: F,
    ) -> Result<T, F> {
        match self.state.try_lock() {
            Ok(state) => Ok(self.with_locked(state, f)),
            Err(std::sync::TryLockError::Poisoned(e)) => Ok(self.with_locked(e.into_inner(), f)),
            Err(std::sync::TryLockError::WouldBlock) => Err(f),
        }
    }

    /// [`Driver::with_core`] for a task: while another thread holds the
    /// lock, the task yields to the runtime and tries again instead of
    /// putting its thread to sleep on the lock, so the thread runs other
    /// tasks meanwhile (a user call such as a send, contending with a
    /// stream task's round).
    pub(crate) async fn with_core_yielding<T>(
        &self,
        f: impl FnOnce(&mut S, pointsub_proto::Instant) -> T,
    ) -> T {
        let state = std::future::poll_fn(|cx| match self.state.try_lock() {
            Ok(guard) => Poll::Ready(guard),
            Err(std::sync::TryLockError::Poisoned(e)) => Poll::Ready(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await;
        self.with_locked(state, f)
    }

    /// Runs `f` on the locked state and drains the core; then, with the
    /// lock released, wakes the tasks with work and carries out the rest.
    fn with_locked<T>(
        &self,
        mut state: MutexGuard<'_, S>,
        f: impl FnOnce(&mut S, pointsub_proto::Instant) -> T,
    ) -> T {
        let mut wakers = Wakers::default();
        let mut work = Vec::new();
        let now = self.now();
        let out = f(&mut state, now);
        state.drain(now, &mut wakers, &mut work);
        drop(state);
        wakers.wake();
        self.run_work(work);
        out
    }

    /// Carries out a drain's work outside the lock, handing what it
    /// produced back to the core (one lock per pass) until none is left.
    fn run_work(&self, mut work: Vec<S::Work>) {
        while !work.is_empty() {
            let Some(this) = self.handle() else {
                return;
            };
            let ready = S::run_all(&this, std::mem::take(&mut work));
            if ready.is_empty() {
                return;
            }
            let mut wakers = Wakers::default();
            {
                let mut state = lock(&self.state);
                let now = self.now();
                state.hand_in(ready, now);
                state.drain(now, &mut wakers, &mut work);
            }
            wakers.wake();
        }
    }
}

/// Gives the core what a stream's task reports: what its work produced,
/// the bytes it wrote, the bytes it read (in that order).
fn report<R: Runtime, S: Side<R>>(
    state: &mut S,
    id: StreamId,
    io: Io<S::Ready>,
    now: pointsub_proto::Instant,
) {
    if !io.ready.is_empty() {
        state.hand_in(io.ready, now);
    }
    if io.flushed > 0 {
        state.handle_flushed(id, io.flushed, now);
    }
    if let Some(data) = io.data {
        state.handle_data(id, data, now);
    }
}

impl<R: Runtime, S: Side<R>> Engine for Driver<R, S> {
    type Rt = R;
    type Ready = S::Ready;

    fn runtime(&self) -> &R {
        self.node.runtime()
    }

    fn step(
        &self,
        id: StreamId,
        io: Io<S::Ready>,
        waker: &Waker,
    ) -> Result<Step<S::Ready>, Io<S::Ready>> {
        let mut wakers = Wakers::default();
        let mut work = Vec::new();
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(io),
        };
        state.plumbing().running(id);
        let pull = io.pull;
        if io.flushed > 0 || io.data.is_some() || !io.ready.is_empty() {
            let now = self.now();
            report(&mut *state, id, io, now);
            state.drain(now, &mut wakers, &mut work);
        }
        let out = if pull { state.pull(id) } else { None };
        let close = state.plumbing().park(id, waker);
        let wants_read = state.wants_read(id);
        drop(state);
        wakers.wake();
        // What the news started (handlers, stream opens, callers to tell)
        // runs outside the lock; what it produced at once goes back to the
        // task, for its next round's lock.
        let ready = match self.handle() {
            Some(this) if !work.is_empty() => S::run_all(&this, work),
            _ => Vec::new(),
        };
        Ok(Step {
            out,
            close,
            wants_read,
            ready,
        })
    }

    fn hand_in(&self, id: StreamId, io: Io<S::Ready>) {
        self.with_core(|state, now| report(state, id, io, now));
    }

    fn on_end(&self, id: StreamId, reset: bool) -> bool {
        self.with_core(|state, now| state.handle_end(id, reset, now))
    }

    fn on_finished(&self, id: StreamId) {
        lock(&self.state).stream_finished(id);
    }

    fn on_timer(&self, waker: &Waker) -> TimerPoll {
        self.with_core(|state, now| {
            if state.poll_timeout().is_some_and(|t| t <= now) {
                state.handle_timeout(now);
            }
        });
        let mut state = lock(&self.state);
        if state.plumbing().stopped {
            return TimerPoll::Stop;
        }
        let next = state.poll_timeout();
        state.plumbing().arm(next, waker);
        TimerPoll::Sleep(next.map(|t| self.clock.runtime_time(t)))
    }

    fn host_closed(&self) -> Closed {
        self.node.closed()
    }

    fn on_host_closed(&self) {
        tracing::debug!(local = %self.node.peer_id(), "the host's swarm is gone");
        S::host_closed(self);
    }
}
