//! Frame layer throughput: encoding (compression when asked, then
//! `OutQueue` push and poll) and decoding (`MessageDecoder` push and next,
//! inflating when compressed), for small and large bodies.
//!
//! Plain binary (`harness = false`), std only; prints a table:
//!
//! ```text
//! cargo bench -p pointsub-proto --bench frame
//! ```
//!
//! "compressed" rows use word-like text and force compression (threshold 0);
//! "uncompressed" rows use random bytes and never compress. Messages go in
//! batches (1024 small or 8 large ones) through one queue or decoder, the
//! decoder fed in 64 KiB reads, like an adapter would. GB/s counts body bytes
//! (uncompressed size), 1 GB = 10^9 bytes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pointsub_proto::compress;
use pointsub_proto::frame::{Decoded, Flags, FrameKind, MessageDecoder, OutQueue};

/// Read size used to feed the decoder.
const READ: usize = 64 * 1024;
/// Largest buffer asked from `OutQueue::poll`.
const WRITE: usize = 256 * 1024;
/// Time spent measuring each case (after a short warm-up).
const MEASURE: Duration = Duration::from_millis(900);
const BLOCK: usize = 32 << 20;

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn random_body(len: usize) -> Bytes {
    let mut s = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&xorshift(&mut s).to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// JSON-ish records with a varied vocabulary: compresses about 3-4x at level 1.
fn text_body(len: usize) -> Bytes {
    const WORDS: [&str; 24] = [
        "request", "response", "peer", "stream", "closest", "node", "protocol", "echo", "timeout",
        "retry", "block", "pool", "idle", "busy", "deadline", "route", "hash", "server", "client",
        "error", "ok", "bytes", "frame", "message",
    ];
    let mut s = 0x2545_f491_4f6c_dd1d;
    let mut v = Vec::with_capacity(len + 64);
    while v.len() < len {
        let r = xorshift(&mut s);
        let id = r % 100_000;
        let w1 = WORDS[(r >> 20) as usize % WORDS.len()];
        let w2 = WORDS[(r >> 30) as usize % WORDS.len()];
        let n = (r >> 40) % 10_000;
        v.extend_from_slice(format!("{{\"id\":{id},\"{w1}\":\"{w2}\",\"n\":{n}}}\n").as_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

struct Case {
    size_name: &'static str,
    data: &'static str,
    compressed: bool,
    threshold: usize,
    body: Bytes,
    batch: usize,
}

impl Case {
    fn encode(&self, q: &mut OutQueue) -> usize {
        for id in 0..self.batch as u64 {
            let (flags, wire_body) = if self.compressed {
                match compress::compress(&self.body, self.threshold) {
                    Some(c) => (Flags::COMPRESSED | Flags::ACCEPT_DEFLATE, c),
                    None => (Flags::ACCEPT_DEFLATE, self.body.clone()),
                }
            } else {
                (Flags::empty(), self.body.clone())
            };
            q.push(FrameKind::Response, id, flags, wire_body);
        }
        let mut wire = 0;
        while let Some(b) = q.poll(WRITE) {
            wire += b.len();
            black_box(&b);
        }
        wire
    }

    fn wire(&self) -> Vec<u8> {
        let mut q = OutQueue::new();
        let mut wire = Vec::new();
        for id in 0..self.batch as u64 {
            let (flags, wire_body) = match self.compressed {
                true => match compress::compress(&self.body, self.threshold) {
                    Some(c) => (Flags::COMPRESSED, c),
                    None => (Flags::empty(), self.body.clone()),
                },
                false => (Flags::empty(), self.body.clone()),
            };
            q.push(FrameKind::Response, id, flags, wire_body);
        }
        while let Some(b) = q.poll(WRITE) {
            wire.extend_from_slice(&b);
        }
        wire
    }

    fn decode(&self, wire: &[u8]) -> usize {
        let mut d = MessageDecoder::new(BLOCK);
        let mut n = 0;
        for read in wire.chunks(READ) {
            d.push(read);
            while let Some(m) = d.next().expect("valid stream") {
                match m {
                    Decoded::Message(m) => {
                        debug_assert_eq!(m.body.len(), self.body.len());
                        black_box(&m.body);
                        n += 1;
                    }
                    Decoded::Oversize { .. } => unreachable!(),
                }
            }
        }
        assert_eq!(n, self.batch);
        n
    }
}

/// Runs `f` (one batch) repeatedly; returns the time per batch.
fn measure(mut f: impl FnMut()) -> Duration {
    let warm = Instant::now();
    while warm.elapsed() < MEASURE / 8 {
        f();
    }
    let start = Instant::now();
    let mut iters = 0u32;
    while start.elapsed() < MEASURE {
        f();
        iters += 1;
    }
    start.elapsed() / iters
}

fn main() {
    let small = 581;
    let large = 1 << 20;
    let cases = [
        Case {
            size_name: "581 B",
            data: "compressed",
            compressed: true,
            threshold: 0,
            body: text_body(small),
            batch: 1024,
        },
        Case {
            size_name: "581 B",
            data: "uncompressed",
            compressed: false,
            threshold: 0,
            body: random_body(small),
            batch: 1024,
        },
        Case {
            size_name: "1 MiB",
            data: "compressed",
            compressed: true,
            threshold: 0,
            body: text_body(large),
            batch: 8,
        },
        Case {
            size_name: "1 MiB",
            data: "uncompressed",
            compressed: false,
            threshold: 0,
            body: random_body(large),
            batch: 8,
        },
        // The default threshold skips small bodies: costs like uncompressed.
        Case {
            size_name: "581 B text, threshold 1024",
            data: "text, skipped",
            compressed: true,
            threshold: compress::DEFAULT_THRESHOLD,
            body: text_body(small),
            batch: 1024,
        },
        // Random data offered for compression: the 16 KiB probe gives up.
        Case {
            size_name: "1 MiB random, threshold 1024",
            data: "random, probe",
            compressed: true,
            threshold: compress::DEFAULT_THRESHOLD,
            body: random_body(large),
            batch: 8,
        },
    ];

    println!(
        "{:<8} {:<30} {:<13} {:>12} {:>9} {:>11}",
        "op", "body", "data", "ns/message", "GB/s", "wire/body"
    );
    for op in ["encode", "decode"] {
        for c in &cases {
            let wire = c.wire();
            let ratio = wire.len() as f64 / (c.body.len() * c.batch) as f64;
            let per_batch = match op {
                "encode" => {
                    let mut q = OutQueue::new();
                    measure(|| {
                        black_box(c.encode(&mut q));
                    })
                }
                _ => measure(|| {
                    black_box(c.decode(&wire));
                }),
            };
            let ns = per_batch.as_nanos() as f64 / c.batch as f64;
            let gbps = c.body.len() as f64 / ns;
            println!(
                "{:<8} {:<30} {:<13} {:>12.0} {:>9.2} {:>11.3}",
                op, c.size_name, c.data, ns, gbps, ratio
            );
        }
    }
}
