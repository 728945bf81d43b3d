//! [`Runtime`] on async-std and smol.
//!
//! async-std and smol share their I/O and timer machinery: both drive
//! sockets and timers through the [`async_io`] reactor, and neither keeps
//! a per-thread "current runtime" the way tokio does. So one runtime
//! serves both: timers are [`async_io::Timer`]s, and tasks are spawned on
//! async-std's global executor, which runs on its own pool of threads
//! (`ASYNC_STD_THREAD_COUNT`, default one per CPU) and therefore makes
//! progress whether the caller blocks in `async_std::task::block_on`,
//! `smol::block_on`, or anything else.
//!
//! An application that wants the node's tasks on an executor of its own
//! (a `smol::Executor`, say) passes a spawner to
//! [`AsyncStdRuntime::with_spawner`]; whoever owns that executor must then
//! keep it running.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::Timer;
use futures::FutureExt;
use pointsub_tokio::rt::{BoxSleep, BoxTask, Runtime};

type Spawner = Arc<dyn Fn(BoxTask) + Send + Sync>;

/// A [`Runtime`] for async-std and smol: [`async_io::Timer`] timers, tasks
/// on async-std's global executor (or on the spawner given to
/// [`AsyncStdRuntime::with_spawner`]).
///
/// Cheap to clone. See the [module docs](self) for why one runtime serves
/// both async-std and smol.
#[derive(Clone, Default)]
pub struct AsyncStdRuntime {
    /// `None`: async-std's global executor.
    spawner: Option<Spawner>,
}

impl AsyncStdRuntime {
    /// Spawns on async-std's global executor (works under smol too).
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns every task with `spawner` instead, e.g.
    /// `move |task| executor.spawn(task).detach()` for a shared
    /// `smol::Executor` that the application keeps running. The spawner
    /// must run the task to completion (detached) and must not block.
    pub fn with_spawner(spawner: impl Fn(BoxTask) + Send + Sync + 'static) -> Self {
        Self {
            spawner: Some(Arc::new(spawner)),
        }
    }
}

impl fmt::Debug for AsyncStdRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let executor = match self.spawner {
            None => "async-std global executor",
            Some(_) => "custom spawner",
        };
        f.debug_struct("AsyncStdRuntime")
            .field("executor", &executor)
            .finish()
    }
}

impl Runtime for AsyncStdRuntime {
    fn spawn(&self, task: BoxTask) {
        match &self.spawner {
            Some(spawn) => spawn(task),
            // Dropping async-std's JoinHandle detaches the task.
            None => drop(async_std::task::spawn(task)),
        }
    }

    fn sleep(&self, duration: Duration) -> BoxSleep {
        // `Timer::after` saturates: a duration past the end of time never fires.
        Timer::after(duration).map(drop).boxed()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxSleep {
        Timer::at(deadline).map(drop).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::oneshot;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Spawning and sleeping work from both block_on flavours.
    async fn spawn_and_sleep(rt: AsyncStdRuntime) {
        let (tx, rx) = oneshot::channel();
        let sleeper = rt.clone();
        // Before the spawn: the task may start its sleep at once, on
        // another thread.
        let started = Instant::now();
        rt.spawn(Box::pin(async move {
            sleeper.sleep(Duration::from_millis(20)).await;
            let _ = tx.send(());
        }));
        rx.await.expect("task ran");
        assert!(started.elapsed() >= Duration::from_millis(20));
        let deadline = Instant::now() + Duration::from_millis(10);
        rt.sleep_until(deadline).await;
        assert!(Instant::now() >= deadline);
        // A deadline in the past completes at once.
        rt.sleep_until(Instant::now() - Duration::from_secs(1))
            .await;
    }

    #[test]
    fn runs_under_async_std() {
        async_std::task::block_on(spawn_and_sleep(AsyncStdRuntime::new()));
    }

    #[test]
    fn runs_under_smol() {
        smol::block_on(spawn_and_sleep(AsyncStdRuntime::new()));
    }

    #[test]
    fn custom_spawner_is_used() {
        let spawned = Arc::new(AtomicUsize::new(0));
        let count = spawned.clone();
        let executor = Arc::new(smol::Executor::new());
        let ex = executor.clone();
        let rt = AsyncStdRuntime::with_spawner(move |task| {
            count.fetch_add(1, Ordering::SeqCst);
            ex.spawn(task).detach();
        });
        assert!(format!("{rt:?}").contains("custom"));
        smol::block_on(executor.run(spawn_and_sleep(rt)));
        assert_eq!(spawned.load(Ordering::SeqCst), 1);
    }
}
