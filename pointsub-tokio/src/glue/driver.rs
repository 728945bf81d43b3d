//! The machinery the client and server drivers share: the write queues
//! between a core and its streams ([`Plumbing`]), one I/O task per libp2p
//! stream ([`StreamTask`]) and the timer task ([`TimerTask`]).
//!
//! A driver keeps its core behind one mutex. Whoever has news (a user call,
//! a stream's I/O task, the timer) locks it, feeds the core, drains the
//! core's outputs into [`Plumbing`] and wakes, after unlocking, the tasks
//! that have work. The core decides; these tasks only move bytes and time.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Instant as StdInstant;

use bytes::{Buf, Bytes, BytesMut};
use futures::io::{AsyncRead, AsyncWrite};
use libp2p::Stream;
use pointsub_proto::{StreamId, Transmit};

use super::behaviour::Closed;
use super::common::ConnectionInfo;
use super::host::Host;
use super::rt::{BoxSleep, Clock, Runtime};

/// Bytes read from a stream per read call.
const READ_CHUNK: usize = 64 * 1024;

/// Queued transmits smaller than this are merged into one write (up to
/// [`COALESCE_LIMIT`] bytes), so a burst of small frames becomes one muxer
/// frame and one encrypted record; larger ones are written as they are,
/// without a copy.
const COALESCE_BELOW: usize = 16 * 1024;

/// Largest merged write.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Reads and writes one I/O task does before yielding to the runtime.
const POLL_BUDGET: usize = 32;

pub(crate) use super::common::lock;

/// How the core asked for a stream to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Close {
    /// Flush what is queued, then close our write side.
    Graceful,
    /// Drop the stream at once (the muxer resets it).
    Reset,
}

#[derive(Default)]
struct Slot {
    pending: VecDeque<Bytes>,
    close: Option<Close>,
    waker: Option<Waker>,
}

/// What a stream's I/O task should do next.
pub(crate) enum Output {
    /// Write these bytes.
    Data(Bytes),
    /// Nothing queued; end the stream this way.
    Close(Close),
    /// Nothing to do until woken.
    Idle,
}

/// Wakers collected under the lock, woken after it is released.
#[derive(Default)]
pub(crate) struct Wakers(Vec<Waker>);

impl Wakers {
    pub(crate) fn push(&mut self, w: Option<Waker>) {
        if let Some(w) = w {
            self.0.push(w);
        }
    }

    pub(crate) fn wake(self) {
        for w in self.0 {
            w.wake();
        }
    }
}

/// The per-core bookkeeping between the core and its tasks: each live
/// stream's queue of bytes to write and close request, and the timer.
#[derive(Default)]
pub(crate) struct Plumbing {
    slots: HashMap<StreamId, Slot>,
    timer_waker: Option<Waker>,
    /// The deadline the timer task sleeps until.
    timer_armed: Option<pointsub_proto::Instant>,
    /// Set once the core is finished: tasks end.
    pub(crate) stopped: bool,
}

impl Plumbing {
    /// Starts tracking a stream whose I/O task is about to be spawned.
    pub(crate) fn add_stream(&mut self, id: StreamId) {
        self.slots.insert(id, Slot::default());
    }

    /// Queues a transmit on its stream; a transmit for a stream without a
    /// task (already ended) is dropped: the core has been told it ended.
    pub(crate) fn push(&mut self, t: Transmit, wakers: &mut Wakers) {
        if let Some(slot) = self.slots.get_mut(&t.stream) {
            slot.pending.push_back(t.data);
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
            if how == Close::Reset {
                slot.pending.clear();
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

    /// The next thing a stream's task should do; registers its waker.
    pub(crate) fn take_output(&mut self, id: StreamId, waker: &Waker) -> Output {
        let Some(slot) = self.slots.get_mut(&id) else {
            return Output::Close(Close::Reset);
        };
        if let Some(first) = slot.pending.pop_front() {
            let small = |b: &Bytes| b.len() < COALESCE_BELOW;
            if !small(&first) || slot.pending.front().is_none_or(|b| !small(b)) {
                return Output::Data(first);
            }
            let mut total = first.len();
            for b in slot.pending.iter() {
                if !small(b) || total + b.len() > COALESCE_LIMIT {
                    break;
                }
                total += b.len();
            }
            let mut merged = BytesMut::with_capacity(total);
            merged.extend_from_slice(&first);
            while let Some(next) = slot.pending.front() {
                if !small(next) || merged.len() + next.len() > COALESCE_LIMIT {
                    break;
                }
                merged.extend_from_slice(next);
                slot.pending.pop_front();
            }
            return Output::Data(merged.freeze());
        }
        if let Some(close) = slot.close {
            return Output::Close(close);
        }
        match &slot.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => slot.waker = Some(waker.clone()),
        }
        Output::Idle
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

/// A core as seen by the tasks that serve it.
pub(crate) trait Engine: Send + Sync + 'static {
    /// The runtime the tasks run on.
    type Rt: Runtime;

    /// The runtime, for timers.
    fn runtime(&self) -> &Self::Rt;

    /// The next thing the stream's task should do (see [`Plumbing::take_output`]).
    fn take_output(&self, id: StreamId, waker: &Waker) -> Output;

    /// Whether the core wants more bytes from the stream now (false while
    /// its answers on it back up: the remote then stalls on its own writes).
    fn wants_read(&self, id: StreamId) -> bool;

    /// Bytes arrived on a stream.
    fn on_data(&self, id: StreamId, data: &[u8]);

    /// Bytes were handed to the stream.
    fn on_flushed(&self, id: StreamId, n: usize);

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

/// Spawns the I/O task of a stream the engine already tracks.
pub(crate) fn spawn_stream<E: Engine>(
    engine: &Arc<E>,
    id: StreamId,
    stream: Stream,
    span: tracing::Span,
) {
    let task = StreamTask {
        engine: engine.clone(),
        id,
        stream: Some(stream),
        out: None,
        unflushed: false,
        read_open: true,
        closing: None,
        buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
        span,
    };
    engine.runtime().spawn(Box::pin(task));
}

/// Moves one stream's bytes: writes what the core queued, reads what the
/// remote sent, and reports both (and the stream's end) to the core.
struct StreamTask<E: Engine> {
    engine: Arc<E>,
    id: StreamId,
    /// `None` once finished.
    stream: Option<Stream>,
    /// The rest of the write in progress.
    out: Option<Bytes>,
    unflushed: bool,
    read_open: bool,
    closing: Option<Close>,
    buf: Box<[u8]>,
    span: tracing::Span,
}

impl<E: Engine> StreamTask<E> {
    fn finish(&mut self) -> Poll<()> {
        if self.stream.take().is_some() {
            self.engine.on_finished(self.id);
        }
        Poll::Ready(())
    }

    fn broken(&mut self, error: std::io::Error) -> Poll<()> {
        tracing::debug!(stream = %self.id, %error, "stream broke");
        self.engine.on_end(self.id, true);
        self.finish()
    }
}

impl<E: Engine> Future for StreamTask<E> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let span = this.span.clone();
        let _entered = span.enter();
        for _ in 0..POLL_BUDGET {
            let mut progressed = false;
            // Writes: everything the core queued, in order.
            loop {
                let Some(stream) = this.stream.as_mut() else {
                    return Poll::Ready(());
                };
                if this.out.is_none() {
                    match this.engine.take_output(this.id, cx.waker()) {
                        Output::Data(b) => this.out = Some(b),
                        Output::Close(c) => {
                            this.closing = Some(c);
                            break;
                        }
                        Output::Idle => break,
                    }
                }
                let Some(out) = this.out.as_mut() else {
                    break;
                };
                match Pin::new(&mut *stream).poll_write(cx, out) {
                    Poll::Ready(Ok(0)) => {
                        return this.broken(std::io::ErrorKind::WriteZero.into());
                    }
                    Poll::Ready(Ok(n)) => {
                        out.advance(n);
                        if out.is_empty() {
                            this.out = None;
                        }
                        this.unflushed = true;
                        progressed = true;
                        this.engine.on_flushed(this.id, n);
                    }
                    Poll::Ready(Err(e)) => return this.broken(e),
                    Poll::Pending => break,
                }
            }
            let Some(stream) = this.stream.as_mut() else {
                return Poll::Ready(());
            };
            if this.unflushed && this.out.is_none() {
                match Pin::new(&mut *stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => this.unflushed = false,
                    Poll::Ready(Err(e)) => return this.broken(e),
                    Poll::Pending => {}
                }
            }
            match this.closing {
                Some(Close::Reset) => return this.finish(),
                Some(Close::Graceful) if this.out.is_none() => {
                    return match Pin::new(&mut *stream).poll_close(cx) {
                        Poll::Ready(_) => this.finish(),
                        Poll::Pending => Poll::Pending,
                    };
                }
                _ => {}
            }
            // Reads, unless the core asks to wait until its answers drain
            // (the writes above, woken by the muxer, make that progress).
            if this.read_open && this.engine.wants_read(this.id) {
                match Pin::new(&mut *stream).poll_read(cx, &mut this.buf) {
                    Poll::Ready(Ok(0)) => {
                        this.read_open = false;
                        progressed = true;
                        if !this.engine.on_end(this.id, false) {
                            return this.finish();
                        }
                    }
                    Poll::Ready(Ok(n)) => {
                        progressed = true;
                        this.engine.on_data(this.id, &this.buf[..n]);
                    }
                    Poll::Ready(Err(e)) => return this.broken(e),
                    Poll::Pending => {}
                }
            }
            if !progressed {
                return Poll::Pending;
            }
        }
        // Out of budget with work left: let other tasks run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<E: Engine> Drop for StreamTask<E> {
    fn drop(&mut self) {
        // Dropped unfinished (the runtime shut down): the core must learn
        // the stream is gone so its requests end.
        if self.stream.is_some() {
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

    /// Carries out one piece of work, outside the lock (spawns a task).
    fn run(driver: &Arc<Driver<R, Self>>, work: Self::Work);

    /// See [`Engine::wants_read`].
    fn wants_read(&self, id: StreamId) -> bool;

    /// Bytes arrived on a stream.
    fn handle_data(&mut self, id: StreamId, data: &[u8], now: pointsub_proto::Instant);

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
        let mut wakers = Wakers::default();
        let mut work = Vec::new();
        let out = {
            let mut state = lock(&self.state);
            let now = self.now();
            let out = f(&mut state, now);
            state.drain(now, &mut wakers, &mut work);
            out
        };
        wakers.wake();
        if !work.is_empty()
            && let Some(this) = self.handle()
        {
            for w in work {
                S::run(&this, w);
            }
        }
        out
    }
}

impl<R: Runtime, S: Side<R>> Engine for Driver<R, S> {
    type Rt = R;

    fn runtime(&self) -> &R {
        self.node.runtime()
    }

    fn take_output(&self, id: StreamId, waker: &Waker) -> Output {
        lock(&self.state).plumbing().take_output(id, waker)
    }

    fn wants_read(&self, id: StreamId) -> bool {
        lock(&self.state).wants_read(id)
    }

    fn on_data(&self, id: StreamId, data: &[u8]) {
        self.with_core(|state, now| state.handle_data(id, data, now));
    }

    fn on_flushed(&self, id: StreamId, n: usize) {
        self.with_core(|state, now| state.handle_flushed(id, n, now));
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
