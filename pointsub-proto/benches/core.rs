//! Criterion micro-benches of the sans-IO core's hot paths:
//!
//! - `frame`: a request body through `OutQueue` (push, then poll in
//!   `MAX_TRANSMIT` buffers, as the cores hand them out) and back through a
//!   `MessageDecoder` (push in `MAX_TRANSMIT` reads, then next). 581 B,
//!   64 KiB (exactly `CHUNK_SIZE`: one frame) and 1 MiB (16 chunks) of
//!   random bytes, plus a compressible 64 KiB body sent raw and deflated
//!   (the compressed rows include `compress::compress` / inflating).
//! - `pool`: one `StreamPool::acquire` + `release` of a request in steady
//!   state, with 100 idle streams for one peer, and with 100 peers of one
//!   stream each (the client's key type, peer and protocol).
//! - `admission`: `Admission::try_admit` + `release` at the spec's limit of
//!   1000, with one peer, and with 999 of 1000 peers holding a request each;
//!   plus the "busy" answer when the limit is reached.
//! - `roundtrip`: `Client::send` → `poll_transmit` → `Server::handle_data` →
//!   `ServerEvent::Request` → `respond` → `poll_transmit` →
//!   `Client::handle_data` → `Completed`, both cores in memory, on streams
//!   already opened and pooled; one 581 B request, and 100 in flight.
//!
//! ```text
//! cargo bench -p pointsub-proto --bench core
//! ```
//!
//! Warm-up and measurement are short so the whole run takes about a minute.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use pointsub_proto::admission::{Admission, AdmissionConfig};
use pointsub_proto::compress;
use pointsub_proto::frame::{Decoded, Flags, FrameKind, MessageDecoder, OutQueue};
use pointsub_proto::pool::{Acquire, PoolConfig, StreamPool};
use pointsub_proto::{Instant, MAX_TRANSMIT, PeerKey, Protocol};

/// The request size the spec's benchmark uses.
const SMALL: usize = 581;
const KIB64: usize = 64 * 1024;
const MIB: usize = 1024 * 1024;
/// The default block size (32 MiB).
const BLOCK: usize = 32 << 20;
const PROTO: &str = "/bench/1";

/// Short runs: about 2 s per bench.
fn short(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(400))
        .measurement_time(Duration::from_millis(1500));
}

// ---------------------------------------------------------------------------
// Data

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Incompressible bytes.
fn random_body(len: usize) -> Bytes {
    let mut s = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&xorshift(&mut s).to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// JSON-ish records: deflates about 3-4x at level 1.
fn text_body(len: usize) -> Bytes {
    const WORDS: [&str; 12] = [
        "request", "response", "peer", "stream", "closest", "node", "protocol", "timeout", "retry",
        "block", "pool", "server",
    ];
    let mut s = 0x2545_f491_4f6c_dd1d;
    let mut v = Vec::with_capacity(len + 64);
    while v.len() < len {
        let r = xorshift(&mut s);
        let w1 = WORDS[(r >> 20) as usize % WORDS.len()];
        let w2 = WORDS[(r >> 30) as usize % WORDS.len()];
        let line = format!(
            "{{\"id\":{},\"{w1}\":\"{w2}\",\"n\":{}}}\n",
            r % 100_000,
            (r >> 40) % 10_000
        );
        v.extend_from_slice(line.as_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

// ---------------------------------------------------------------------------
// Frame encode / decode

/// Queues one request and drains the queue as the cores do; returns the
/// wire bytes produced. `deflate` compresses first, as `Client` does above
/// its threshold.
fn encode(q: &mut OutQueue, body: &Bytes, deflate: bool, out: &mut Vec<Bytes>) {
    let (flags, wire_body) = if deflate {
        let c = compress::compress(body, compress::DEFAULT_THRESHOLD).expect("compressible");
        (Flags::ACCEPT_DEFLATE | Flags::COMPRESSED, c)
    } else {
        (Flags::ACCEPT_DEFLATE, body.clone())
    };
    q.push(FrameKind::Request, 7, flags, wire_body);
    while let Some(b) = q.poll(MAX_TRANSMIT) {
        out.push(b);
    }
}

/// Feeds one message's wire bytes to `d` and returns its body.
fn decode(d: &mut MessageDecoder, wire: &[Bytes]) -> Bytes {
    let mut body = None;
    for read in wire {
        d.push(read);
        while let Some(m) = d.next().expect("valid stream") {
            match m {
                Decoded::Message(m) => body = Some(m.body),
                Decoded::Oversize { .. } => unreachable!("within the block size"),
            }
        }
    }
    body.expect("one message")
}

fn bench_frame(c: &mut Criterion) {
    let cases = [
        ("581B", random_body(SMALL), false),
        ("64KiB", random_body(KIB64), false),
        ("1MiB", random_body(MIB), false),
        ("64KiB_text_raw", text_body(KIB64), false),
        ("64KiB_text_deflate", text_body(KIB64), true),
    ];
    let mut g = c.benchmark_group("frame");
    short(&mut g);
    for (name, body, deflate) in &cases {
        g.throughput(Throughput::Bytes(body.len() as u64));
        let mut q = OutQueue::new();
        let mut wire = Vec::new();
        encode(&mut q, body, *deflate, &mut wire);
        // Sanity: the wire form decodes back to the body.
        let mut d = MessageDecoder::new(BLOCK);
        assert_eq!(decode(&mut d, &wire), *body);

        let mut out = Vec::with_capacity(wire.len());
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                out.clear();
                encode(&mut q, black_box(body), *deflate, &mut out);
                black_box(&out);
            })
        });
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| black_box(decode(&mut d, black_box(&wire))))
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------
// Stream pool

type PoolKey = (PeerKey, Protocol);

fn peer(i: usize) -> PeerKey {
    // Like a PeerId: a constant multihash prefix, then the varying part.
    let mut v = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    v.extend_from_slice(&(i as u64).to_be_bytes());
    v.resize(38, 0xab);
    PeerKey::from(v)
}

/// A pool whose `streams` streams, spread over `keys`, are all open and idle.
fn filled_pool(keys: &[PoolKey], streams: usize, now: Instant) -> StreamPool<PoolKey> {
    let mut pool = StreamPool::new(PoolConfig::default());
    let mut held = Vec::new();
    let mut waiter = 0;
    // Keep slots taken so each key's streams fill up and new ones open.
    while pool.stats().total < streams {
        for k in keys {
            waiter += 1;
            match pool.acquire(k, waiter, now) {
                Acquire::Open(s) => {
                    pool.opened(s, now);
                    held.push(s);
                }
                Acquire::Ready(s) | Acquire::Pending(s) => held.push(s),
                Acquire::Queued => panic!("pool full while filling"),
            }
        }
    }
    for s in held {
        pool.release(s, now);
    }
    let st = pool.stats();
    assert_eq!((st.open, st.idle, st.in_flight), (streams, streams, 0));
    pool
}

fn bench_pool(c: &mut Criterion) {
    let proto = Protocol::from(PROTO);
    let mut g = c.benchmark_group("pool");
    short(&mut g);
    for (name, peers) in [
        ("acquire_release/100_streams_1_peer", 1),
        ("acquire_release/100_peers", 100),
    ] {
        let keys: Vec<PoolKey> = (0..peers).map(|i| (peer(i), proto.clone())).collect();
        let mut now = Instant::from_millis(1);
        let mut pool = filled_pool(&keys, 100, now);
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                let key = &keys[i % keys.len()];
                i = i.wrapping_add(1);
                now = now + Duration::from_nanos(100);
                let Acquire::Ready(s) = pool.acquire(black_box(key), i as u64, now) else {
                    panic!("an idle stream is ready");
                };
                pool.release(s, now);
                while let Some(grant) = pool.poll_grant() {
                    black_box(grant);
                }
                while let Some(s) = pool.poll_close() {
                    black_box(s);
                }
            })
        });
        assert_eq!(pool.stats().idle, 100);
    }
    g.finish();
}

// ---------------------------------------------------------------------------
// Admission

fn bench_admission(c: &mut Criterion) {
    let cfg = AdmissionConfig::default();
    assert_eq!(cfg.initial_limit, 1000);
    let peers: Vec<PeerKey> = (0..1000).map(peer).collect();
    let mut g = c.benchmark_group("admission");
    short(&mut g);

    let mut adm = Admission::new(cfg.clone());
    g.bench_function("admit_release/1_peer", |b| {
        b.iter(|| {
            adm.try_admit(black_box(&peers[0])).expect("room");
            adm.release(black_box(&peers[0]));
        })
    });

    // 999 peers hold one request each (load 0.999); each iteration admits
    // and releases one more request of the next peer in turn, so the
    // per-peer table has ~1000 entries and 1 in 1000 is new.
    let mut adm = Admission::new(cfg.clone());
    for p in &peers[..999] {
        adm.try_admit(p).expect("room");
    }
    let mut i = 0usize;
    g.bench_function("admit_release/1000_peers", |b| {
        b.iter(|| {
            let p = &peers[i % peers.len()];
            i = i.wrapping_add(1);
            adm.try_admit(black_box(p)).expect("room");
            adm.release(black_box(p));
        })
    });

    // At the limit: the typed "busy" answer.
    adm.try_admit(&peers[999]).expect("room");
    assert_eq!(adm.active(), adm.limit());
    g.bench_function("reject_busy/1000_peers", |b| {
        b.iter(|| black_box(adm.try_admit(black_box(&peers[500]))).unwrap_err())
    });
    g.finish();
}

// ---------------------------------------------------------------------------
// Client <-> server round trip

#[path = "support/pair.rs"]
mod pair;
use pair::Pair;

fn bench_roundtrip(c: &mut Criterion) {
    let body = random_body(SMALL);
    let mut g = c.benchmark_group("roundtrip");
    short(&mut g);
    for n in [1usize, 100] {
        let mut pair = Pair::new();
        // Opens and pools the streams this batch size needs (steady state:
        // no stream is opened while measuring).
        pair.batch(&body, n);
        pair.batch(&body, n);
        let opened = pair.opened;
        assert!(opened >= 1);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("581B/{n}_in_flight"), |b| {
            b.iter(|| pair.batch(black_box(&body), n))
        });
        assert_eq!(pair.opened, opened, "streams opened while measuring");
        assert_eq!(pair.client.in_flight(), 0);
        assert_eq!(pair.server.active(), 0);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = bench_frame, bench_pool, bench_admission, bench_roundtrip
}
criterion_main!(benches);
