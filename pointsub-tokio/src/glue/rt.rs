//! The async runtime behind a node, as a small object-safe trait.
//!
//! Everything in this crate that is not tokio-specific spawns and sleeps
//! through [`Runtime`], so the same glue runs on tokio ([`TokioRuntime`],
//! feature `tokio-runtime`) and on async-std (implemented by the
//! `pointsub-async-std` crate).
//!
//! [`TokioRuntime`]: crate::TokioRuntime

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// A boxed, sendable future with no output, as spawned by a [`Runtime`].
pub type BoxTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A boxed, sendable timer future, as returned by [`Runtime::sleep`].
pub type BoxSleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The few runtime services a node needs: spawning a task, a timer, a clock.
///
/// Implementations are cheap handles (clone is a reference-count bump at
/// most). The methods are object-safe in shape (boxed futures, no generic
/// methods), but the `Clone` supertrait, which generic code relies on to
/// move the runtime into tasks, means the trait is used as a generic
/// parameter, not as `dyn Runtime`.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// Runs `task` in the background until it completes. The task is
    /// detached: nothing waits for it.
    fn spawn(&self, task: BoxTask);

    /// A future that completes once `duration` has elapsed.
    fn sleep(&self, duration: Duration) -> BoxSleep;

    /// The runtime's current time.
    ///
    /// Runtimes with a controllable clock (tokio's paused time in tests)
    /// return their virtual time here, so deadlines computed from it match
    /// [`Runtime::sleep`].
    fn now(&self) -> Instant {
        Instant::now()
    }

    /// A future that completes once [`Runtime::now`] reaches `deadline`
    /// (immediately if it already has).
    fn sleep_until(&self, deadline: Instant) -> BoxSleep {
        self.sleep(deadline.saturating_duration_since(self.now()))
    }
}

/// Adapts any [`Runtime`] into a libp2p swarm [`Executor`], so a swarm's
/// connection tasks run on the same runtime as the node:
/// `libp2p::swarm::Config::with_executor(RuntimeExecutor(runtime))`.
///
/// [`Executor`]: libp2p::swarm::Executor
#[derive(Clone)]
pub struct RuntimeExecutor<R>(pub R);

impl<R> fmt::Debug for RuntimeExecutor<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeExecutor").finish_non_exhaustive()
    }
}

impl<R: Runtime> libp2p::swarm::Executor for RuntimeExecutor<R> {
    fn exec(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.0.spawn(future);
    }
}

/// Converts between a runtime's clock and the core's [`pointsub_proto::Instant`]
/// (nanoseconds since the clock was made).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    base: Instant,
}

impl Clock {
    /// A clock whose zero is `runtime`'s now.
    pub(crate) fn new<R: Runtime>(runtime: &R) -> Self {
        Self {
            base: runtime.now(),
        }
    }

    /// The core's time for the runtime's `now`.
    pub(crate) fn core_time(&self, now: Instant) -> pointsub_proto::Instant {
        let nanos = now.saturating_duration_since(self.base).as_nanos();
        pointsub_proto::Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The runtime's instant for a core time.
    pub(crate) fn runtime_time(&self, t: pointsub_proto::Instant) -> Instant {
        self.base
            .checked_add(Duration::from_nanos(t.as_nanos()))
            .unwrap_or_else(|| self.base + Duration::from_secs(365 * 24 * 3600))
    }

    /// The core's time for a duration from now, saturating.
    pub(crate) fn after<R: Runtime>(&self, runtime: &R, d: Duration) -> pointsub_proto::Instant {
        self.core_time(runtime.now()) + d
    }
}
