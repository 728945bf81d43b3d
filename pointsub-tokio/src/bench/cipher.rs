//! The cipher's limit, L: no network at all, only the AEAD that both noise
//! and libp2p-tls use between Rust peers (ChaCha20-Poly1305), run as
//! libp2p-noise runs it (snow with its ring resolver: ring's
//! ChaCha20-Poly1305) on the bytes of one round trip.
//!
//! A "request" seals the request's wire bytes (the body in pointsub frames)
//! as the client's noise session would, in transport messages of at most
//! [`NOISE_MAX_PLAINTEXT`] bytes with a 16-byte tag each, and opens them as
//! the server's would; then the same for the response, the other way.
//!
//! The row is not driven through the harness's closed loop of tasks (whose
//! own cost per request would then be part of L): [`measure`] runs one
//! plain loop per CPU on threads of its own for the same warm-up and
//! window, so the row uses every core and nothing but the cipher. Its QPS
//! is L in requests per second; with raw TCP's QPS at the same size, R
//! (the kernel's share), the harness prints the bound `1 / (1/L + 1/R)` and
//! each system's ratio to it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use super::report::Row;
use super::stats::Recorder;
use super::{Case, Instance, System};
use crate::proto::frame::{CHUNK_SIZE, HEADER_LEN};

/// The registry entry. Its start function refuses: the harness calls
/// [`measure`] for this row instead (see the module docs).
pub const SYSTEM: System = System {
    name: NAME,
    describe,
    start: |_case| {
        async {
            Err::<Arc<dyn Instance>, _>(
                "the cipher row is measured by its own loop (bench::cipher::measure)".into(),
            )
        }
        .boxed()
    },
};

/// The cipher row's name.
pub const NAME: &str = "cipher";

/// Largest plaintext of one noise transport message (65535 bytes with its
/// 16-byte tag).
pub const NOISE_MAX_PLAINTEXT: usize = 65535 - 16;

fn describe() -> String {
    format!(
        "no network: ChaCha20-Poly1305 (ring, as snow runs it for libp2p-noise) seals and opens \
         the wire bytes of each round trip (request and response bodies in pointsub frames, in \
         noise messages of up to {NOISE_MAX_PLAINTEXT} bytes), one plain loop per CPU on threads \
         of its own: the cipher's limit L."
    )
}

/// The wire bytes of a message whose body is `body` bytes: pointsub frames
/// of at most [`CHUNK_SIZE`], each with its header.
pub fn wire_len(body: usize) -> usize {
    body + HEADER_LEN * body.div_ceil(CHUNK_SIZE).max(1)
}

/// One direction of a noise session: a key and its message counter.
struct Session {
    key: LessSafeKey,
    counter: u64,
}

impl Session {
    fn new(key: [u8; 32]) -> Self {
        // A 32-byte key is always accepted for ChaCha20-Poly1305.
        let key = UnboundKey::new(&CHACHA20_POLY1305, &key).map_or_else(
            |_| unreachable!("ChaCha20-Poly1305 takes 32-byte keys"),
            LessSafeKey::new,
        );
        Session { key, counter: 0 }
    }

    /// Noise's nonce for ChaCha20-Poly1305: 4 zero bytes, then the counter
    /// little-endian.
    fn nonce(n: u64) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_le_bytes());
        Nonce::assume_unique_for_key(nonce)
    }

    /// Seals `buf` in noise messages, then opens them again (the peer's
    /// side of the same session), in place. False if a tag did not verify.
    fn seal_open(&mut self, buf: &mut [u8]) -> bool {
        for msg in buf.chunks_mut(NOISE_MAX_PLAINTEXT) {
            let n = self.counter;
            self.counter += 1;
            let Ok(tag) = self
                .key
                .seal_in_place_separate_tag(Self::nonce(n), Aad::empty(), msg)
            else {
                return false;
            };
            if self
                .key
                .open_in_place_separate_tag(Self::nonce(n), Aad::empty(), tag, msg, 0..)
                .is_err()
            {
                return false;
            }
        }
        true
    }
}

/// One loop's round trips: the request's wire bytes sealed and opened
/// client to server, then the response's server to client.
struct RoundTrips {
    to_server: Session,
    to_client: Session,
    buf: Vec<u8>,
}

impl RoundTrips {
    fn new(body: &[u8]) -> Self {
        let mut buf = vec![0u8; wire_len(body.len())];
        buf[..body.len()].copy_from_slice(body);
        RoundTrips {
            to_server: Session::new([7; 32]),
            to_client: Session::new([9; 32]),
            buf,
        }
    }

    fn one(&mut self) -> bool {
        self.to_server.seal_open(&mut self.buf) && self.to_client.seal_open(&mut self.buf)
    }
}

/// Measures the row for `case`: one loop per CPU (on threads of its own,
/// off the runtime) runs round trips for `warmup`, then for `window`; the
/// row counts those that ended inside the window, with their latencies.
pub async fn measure(case: Case, body: bytes::Bytes, warmup: Duration, window: Duration) -> Row {
    let mut row = Row::new(NAME, case, window);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let run = move || {
        let start = Instant::now() + warmup;
        let end = start + window;
        std::thread::scope(|scope| {
            let loops: Vec<_> = (0..threads)
                .map(|_| {
                    let body = &body;
                    scope.spawn(move || {
                        let mut rt = RoundTrips::new(body);
                        let mut rec = Recorder::default();
                        loop {
                            let t = Instant::now();
                            if t >= end {
                                break;
                            }
                            if !rt.one() {
                                rec.failure("tag did not verify".into());
                                continue;
                            }
                            if t >= start {
                                rec.success(t.elapsed());
                            }
                        }
                        rec
                    })
                })
                .collect();
            let mut all = Recorder::default();
            for l in loops {
                match l.join() {
                    Ok(rec) => all.merge(rec),
                    Err(_) => all.failure("cipher loop panicked".into()),
                }
            }
            all
        })
    };
    match tokio::task::spawn_blocking(run).await {
        Ok(all) => row.summary = all.summarize(),
        Err(e) => row.setup_error = Some(format!("cipher loop failed: {e}")),
    }
    row.peak_rss_kib = super::report::peak_rss_kib();
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_bytes_count_frame_headers() {
        assert_eq!(wire_len(581), 581 + HEADER_LEN);
        assert_eq!(wire_len(1 << 20), (1 << 20) + 16 * HEADER_LEN);
        assert_eq!(wire_len(0), HEADER_LEN);
    }

    #[test]
    fn seal_then_open_restores_the_bytes() {
        let mut s = Session::new([1; 32]);
        let mut buf: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let orig = buf.clone();
        assert!(s.seal_open(&mut buf));
        assert_eq!(buf, orig);
        // One nonce per noise message: 200,000 bytes take 4.
        assert_eq!(s.counter, 4);
    }

    #[tokio::test]
    async fn measure_counts_round_trips_in_the_window() {
        let case = Case {
            body: 581,
            in_flight: 1,
        };
        let row = measure(
            case,
            bytes::Bytes::from(vec![3u8; 581]),
            Duration::from_millis(10),
            Duration::from_millis(50),
        )
        .await;
        assert!(row.setup_error.is_none());
        assert_eq!(row.summary.failed(), 0);
        assert!(row.summary.ok > 0, "no round trip in the window");
    }
}
