//! Helpers shared by the integration tests (each test file uses a part).
#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::time::Duration;

use async_io::Timer;
use futures::future::{self, Either};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long any one bounded step or test may take.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Runs `f` to completion, panicking if it takes longer than [`LIMIT`].
/// Uses an `async-io` timer, so it works under async-std and smol alike.
pub async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    futures::pin_mut!(f);
    match future::select(f, Timer::after(LIMIT)).await {
        Either::Left((out, _)) => out,
        Either::Right(_) => panic!("{what}: no result within {LIMIT:?}"),
    }
}

/// [`bounded`] for a whole test.
pub async fn within<F: Future>(test: F) -> F::Output {
    bounded("test", test).await
}

/// `len` bytes of a pattern that differs per `seed` and has no short period.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

/// Writes `data` then closes the write side, while reading everything the
/// remote sends until it closes; returns what was read.
pub async fn exchange<S: AsyncRead + AsyncWrite>(conn: S, data: &[u8]) -> io::Result<Vec<u8>> {
    let (mut reader, mut writer) = conn.split();
    let send = async {
        for chunk in data.chunks(256 << 10) {
            writer.write_all(chunk).await?;
        }
        writer.close().await
    };
    let receive = async {
        let mut got = Vec::with_capacity(data.len());
        reader.read_to_end(&mut got).await?;
        Ok(got)
    };
    let (sent, got) = futures::join!(send, receive);
    sent?;
    got
}

/// The default client config with fast retries, so failover does not wait
/// for the 1 s default interval.
pub fn client_config() -> pointsub_async_std::ClientConfig {
    pointsub_async_std::ClientConfig::default().with_retry_interval(Duration::from_millis(20))
}
