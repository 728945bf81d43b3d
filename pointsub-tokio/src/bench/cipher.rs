//! The cipher's limit, L: no network at all, only the AEAD that both noise
//! and libp2p-tls use between Rust peers (ChaCha20-Poly1305), applied as
//! noise applies it to the bytes of one round trip.
//!
//! A "request" seals the request's wire bytes (the body in pointsub frames)
//! as the client's noise session would, in transport messages of at most
//! [`NOISE_MAX_PLAINTEXT`] bytes with a 16-byte tag each, and opens them as
//! the server's would; then the same for the response, the other way. The
//! in-flight tasks run on the harness's worker threads, so the row uses
//! both cores as the other systems do. Its QPS is L in requests per
//! second; with raw TCP's QPS at the same size, R (the kernel's share),
//! the harness prints the bound `1 / (1/L + 1/R)` and each system's ratio
//! to it.

use bytes::Bytes;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use futures::FutureExt;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::stats::Failure;
use super::{Case, Instance, System};
use crate::proto::frame::{CHUNK_SIZE, HEADER_LEN};

/// The registry entry.
pub const SYSTEM: System = System {
    name: NAME,
    describe,
    start: |case| start(case).boxed(),
};

/// The cipher row's name.
pub const NAME: &str = "cipher";

/// Largest plaintext of one noise transport message (65535 bytes with its
/// 16-byte tag).
pub const NOISE_MAX_PLAINTEXT: usize = 65535 - 16;

fn describe() -> String {
    "no network: ChaCha20-Poly1305 (RustCrypto, as snow runs it for libp2p-noise) seals and \
     opens the wire bytes of each round trip (request and response bodies in pointsub frames, \
     in noise messages of up to 65519 bytes), on the harness's worker threads: the cipher's \
     limit L."
        .to_owned()
}

/// The wire bytes of a message whose body is `body` bytes: pointsub frames
/// of at most [`CHUNK_SIZE`], each with its header.
pub fn wire_len(body: usize) -> usize {
    body + HEADER_LEN * body.div_ceil(CHUNK_SIZE).max(1)
}

/// One direction of a noise session: a key and its message counter.
struct Session {
    aead: ChaCha20Poly1305,
    counter: AtomicU64,
}

impl Session {
    fn new(key: [u8; 32]) -> Self {
        Session {
            aead: ChaCha20Poly1305::new(Key::from_slice(&key)),
            counter: AtomicU64::new(0),
        }
    }

    /// Noise's nonce: 4 zero bytes, then the counter little-endian.
    fn nonce(n: u64) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_le_bytes());
        *Nonce::from_slice(&nonce)
    }

    /// Seals `buf` in noise messages, then opens them again (the peer's
    /// side of the same session), in place. False if a tag did not verify.
    fn seal_open(&self, buf: &mut [u8]) -> bool {
        for msg in buf.chunks_mut(NOISE_MAX_PLAINTEXT) {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let nonce = Self::nonce(n);
            let Ok(tag) = self.aead.encrypt_in_place_detached(&nonce, &[], msg) else {
                return false;
            };
            let tag: Tag = tag;
            if self
                .aead
                .decrypt_in_place_detached(&nonce, &[], msg, &tag)
                .is_err()
            {
                return false;
            }
        }
        true
    }
}

struct Cipher {
    to_server: Session,
    to_client: Session,
}

async fn start(_case: Case) -> Result<Arc<dyn Instance>, super::BoxError> {
    Ok(Arc::new(Cipher {
        to_server: Session::new([7; 32]),
        to_client: Session::new([9; 32]),
    }) as Arc<dyn Instance>)
}

impl Instance for Cipher {
    fn request(&self, _slot: usize, body: Bytes) -> BoxFuture<'_, Result<Bytes, Failure>> {
        async move {
            let mut buf = vec![0u8; wire_len(body.len())];
            buf[..body.len()].copy_from_slice(&body);
            if !self.to_server.seal_open(&mut buf) || !self.to_client.seal_open(&mut buf) {
                return Err(Failure::from("tag did not verify"));
            }
            buf.truncate(body.len());
            // Let the other tasks of this worker run, as a socket would.
            tokio::task::yield_now().await;
            Ok(Bytes::from(buf))
        }
        .boxed()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }
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
        let s = Session::new([1; 32]);
        let mut buf: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let orig = buf.clone();
        assert!(s.seal_open(&mut buf));
        assert_eq!(buf, orig);
        // One nonce per noise message: 200,000 bytes take 4.
        assert_eq!(s.counter.load(Ordering::Relaxed), 4);
    }
}
