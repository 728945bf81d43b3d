//! Property tests for the wire format: messages pushed through [`OutQueue`]
//! and fed to [`MessageDecoder`] at arbitrary split points come out intact;
//! arbitrary and mutated bytes produce errors, never panics, and never make
//! the decoder hold or allocate more than the input and the limits allow.
//!
//! A per-thread counting allocator measures the peak heap use of each case.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use pointsub_proto::compress;
use pointsub_proto::frame::{
    CHUNK_SIZE, Decoded, Flags, FrameDecoder, FrameError, FrameHeader, FrameKind, HEADER_LEN,
    MAX_FRAME_PAYLOAD, Message, MessageDecoder, OutQueue, encode_frame,
};
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------------------
// Counting allocator (per thread: proptest runs each case on the test's thread)

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the bookkeeping
// touches only const-initialized thread-locals without destructors.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Count the moment both blocks may exist.
        account(new_size as isize);
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            account(-(new_size as isize));
        } else {
            account(-(layout.size() as isize));
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Starts measuring; returns the baseline.
fn start_measuring() -> isize {
    let live = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(live));
    live
}

/// Peak heap growth above the baseline since `start_measuring`.
fn peak_since(baseline: isize) -> usize {
    (PEAK.with(Cell::get) - baseline).max(0) as usize
}

// ---------------------------------------------------------------------------
// Inputs

/// Body bytes: word-like text (compressible) or xorshift noise.
fn make_body(len: usize, seed: u64, text: bool) -> Bytes {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut v = Vec::with_capacity(len + 16);
    if text {
        const WORDS: [&str; 8] = [
            "peer ", "stream ", "request ", "the ", "of ", "closest ", "node ", "id=",
        ];
        while v.len() < len {
            v.extend_from_slice(WORDS[(next() % 8) as usize].as_bytes());
        }
    } else {
        while v.len() < len {
            v.extend_from_slice(&next().to_le_bytes());
        }
    }
    v.truncate(len);
    Bytes::from(v)
}

#[derive(Clone, Debug)]
struct Spec {
    kind: FrameKind,
    id: u64,
    len: usize,
    text: bool,
    compress: bool,
    accept: bool,
    seed: u64,
}

fn kind() -> impl Strategy<Value = FrameKind> {
    prop_oneof![
        Just(FrameKind::Request),
        Just(FrameKind::Response),
        Just(FrameKind::Error),
        Just(FrameKind::Cancel),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        kind(),
        0u64..6,
        prop_oneof![0usize..200, 0usize..5000, 0usize..300 * 1024],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(kind, id, len, text, compress, accept, seed)| Spec {
            kind,
            id,
            len,
            text,
            compress,
            accept,
            seed,
        })
}

/// Piece sizes to feed the decoder with (cycled); `[1]` is byte by byte.
fn pieces() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(vec![1]),
        prop::collection::vec(1usize..=17, 1..16),
        prop::collection::vec(1usize..=4096, 1..16),
        prop::collection::vec(1usize..=300_000, 1..8),
    ]
}

/// What the receiver should see for one spec, and what the sender queues.
struct Prepared {
    expected: Message,
    flags: Flags,
    wire_body: Bytes,
}

fn prepare(s: &Spec) -> Prepared {
    let body = make_body(s.len, s.seed, s.text);
    let compressed = if s.compress {
        compress::compress(&body, 0)
    } else {
        None
    };
    let mut flags = Flags::empty();
    if s.accept {
        flags |= Flags::ACCEPT_DEFLATE;
    }
    if compressed.is_some() {
        flags |= Flags::COMPRESSED;
    }
    let wire_body = compressed.unwrap_or_else(|| body.clone());
    let frames = wire_body.len().div_ceil(CHUNK_SIZE).max(1);
    Prepared {
        expected: Message {
            kind: s.kind,
            request_id: s.id,
            accept_deflate: s.accept,
            compressed: flags.contains(Flags::COMPRESSED),
            deflated: false,
            body,
            wire_len: wire_body.len() + frames * HEADER_LEN,
        },
        flags,
        wire_body,
    }
}

fn encode_all(specs: &[Spec], poll_max: usize) -> (Vec<Message>, Vec<u8>) {
    let mut q = OutQueue::new();
    let mut expected = Vec::new();
    for s in specs {
        let p = prepare(s);
        q.push(s.kind, s.id, p.flags, p.wire_body);
        expected.push(p.expected);
    }
    let total = q.queued_bytes();
    let mut wire = Vec::with_capacity(total);
    while let Some(b) = q.poll(poll_max) {
        assert!(!b.is_empty());
        wire.extend_from_slice(&b);
    }
    assert!(q.is_empty());
    assert_eq!(q.queued_bytes(), 0);
    assert_eq!(wire.len(), total);
    (expected, wire)
}

/// Upper bound on `MessageDecoder::capacity()` after `pushed` bytes: the
/// receive buffer (what was pushed, or one frame, plus 64 KiB growth slack)
/// plus the reassembly buffer (at most the block size, at most twice the
/// payload received).
fn capacity_bound(pushed: usize, max_block: usize) -> usize {
    let frame_limit = max_block.min(MAX_FRAME_PAYLOAD);
    (pushed + 64 * 1024).max(frame_limit) + max_block.min(2 * pushed)
}

/// Upper bound on the heap growth while decoding `pushed` bytes: the buffers
/// above (twice: old and new while growing), one inflated body (at most the
/// block size) and fixed small overheads (inflater state, output vectors).
fn heap_bound(pushed: usize, max_block: usize) -> usize {
    2 * capacity_bound(pushed, max_block) + max_block.min(64 << 20) + 512 * 1024
}

/// Feeds `wire` in pieces, draining after each push. Checks the buffering
/// and capacity invariants all along, and that errors are sticky.
fn feed(d: &mut MessageDecoder, wire: &[u8], pieces: &[usize]) -> Result<Vec<Decoded>, FrameError> {
    let max_block = d.max_block_size();
    let mut out = Vec::new();
    let mut pushed = 0;
    let mut at = 0;
    let mut i = 0;
    while at < wire.len() {
        let n = pieces[i % pieces.len()].max(1).min(wire.len() - at);
        i += 1;
        d.push(&wire[at..at + n]);
        at += n;
        pushed += n;
        assert!(d.buffered() <= pushed);
        loop {
            match d.next() {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => {
                    // Sticky, and further input is dropped.
                    assert_eq!(d.next(), Err(e.clone()));
                    d.push(&wire[at..]);
                    assert_eq!(d.buffered(), 0);
                    assert_eq!(d.error(), Some(&e));
                    return Err(e);
                }
            }
            assert!(d.buffered() <= pushed);
        }
        assert!(
            d.capacity() <= capacity_bound(pushed, max_block),
            "capacity {} after {pushed} bytes, block {max_block}",
            d.capacity()
        );
    }
    Ok(out)
}

fn by_id(msgs: impl IntoIterator<Item = Message>) -> BTreeMap<u64, Vec<Message>> {
    let mut m: BTreeMap<u64, Vec<Message>> = BTreeMap::new();
    for msg in msgs {
        m.entry(msg.request_id).or_default().push(msg);
    }
    m
}

// ---------------------------------------------------------------------------
// Properties

/// 64 cases per property by default (they are heavy in debug builds);
/// `PROPTEST_CASES=n` runs more.
fn config() -> ProptestConfig {
    if std::env::var_os("PROPTEST_CASES").is_some() {
        ProptestConfig::default()
    } else {
        ProptestConfig::with_cases(64)
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any messages, any split points: the same messages come out, in push
    /// order per request id.
    #[test]
    fn round_trip_any_split(
        specs in prop::collection::vec(spec(), 0..8),
        pieces in pieces(),
        poll_max in prop_oneof![Just(1usize), 1usize..100_000, Just(usize::MAX)],
    ) {
        let (expected, wire) = encode_all(&specs, poll_max);
        let mut d = MessageDecoder::new(1 << 20);
        let base = start_measuring();
        let got = feed(&mut d, &wire, &pieces).expect("valid stream");
        prop_assert!(peak_since(base) <= heap_bound(wire.len(), 1 << 20));
        prop_assert!(!d.mid_message());
        prop_assert_eq!(d.buffered(), 0);
        let got: Vec<Message> = got
            .into_iter()
            .map(|g| match g {
                Decoded::Message(m) => m,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        prop_assert_eq!(got.len(), expected.len());
        let (got, expected) = (by_id(got), by_id(expected));
        prop_assert_eq!(got, expected);
    }

    /// A decoder that defers inflating hands on compressed bodies as they
    /// travelled, flagged `deflated`; inflating them gives the same
    /// messages a decoder that inflates gives.
    #[test]
    fn deferred_inflate_gives_the_same_bodies(
        specs in prop::collection::vec(spec(), 0..8),
        pieces in pieces(),
    ) {
        let (expected, wire) = encode_all(&specs, usize::MAX);
        let mut d = MessageDecoder::new(1 << 20);
        d.defer_inflate(true);
        let got = feed(&mut d, &wire, &pieces).expect("valid stream");
        let got: Vec<Message> = got
            .into_iter()
            .map(|g| match g {
                Decoded::Message(mut m) => {
                    assert_eq!(m.deflated, m.compressed);
                    if m.deflated {
                        m.body = compress::decompress(&m.body, 1 << 20).expect("inflates");
                        m.deflated = false;
                    }
                    m
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        prop_assert_eq!(by_id(got), by_id(expected));
    }

    /// Frame level: frames of any sizes up to the limit, any split points,
    /// come back with the same headers and payloads.
    #[test]
    fn frames_round_trip(
        frames in prop::collection::vec((kind(), 0u8..8, any::<u64>(), 0usize..70_000), 0..10),
        pieces in pieces(),
    ) {
        let mut wire = BytesMut::new();
        let mut want = Vec::new();
        for (i, (k, bits, id, len)) in frames.iter().enumerate() {
            let payload = make_body(*len, i as u64, false);
            let flags = Flags::from_bits(*bits).unwrap();
            encode_frame(&mut wire, *k, flags, *id, &payload);
            want.push((FrameHeader { kind: *k, flags, request_id: *id, len: *len as u32 }, payload));
        }
        let mut d = FrameDecoder::new(70_000);
        let mut got = Vec::new();
        let (mut at, mut i) = (0, 0);
        while at < wire.len() {
            let n = pieces[i % pieces.len()].min(wire.len() - at);
            i += 1;
            d.push(&wire[at..at + n]);
            at += n;
            while let Some(f) = d.next_frame().unwrap() {
                got.push((f.header, f.payload));
            }
            prop_assert!(d.capacity() <= (at + 64 * 1024).max(70_000));
        }
        prop_assert!(!d.mid_frame());
        prop_assert_eq!(got, want);
    }

    /// Arbitrary bytes (random garbage, or frames with plausible but wrong
    /// headers and payloads) never panic the decoder, never make it hold more
    /// than was pushed, and never make it allocate beyond the limits.
    #[test]
    fn arbitrary_input_is_safe(
        segments in prop::collection::vec(segment(), 0..12),
        pieces in pieces(),
        max_block in prop_oneof![
            Just(0usize), Just(1), Just(100), Just(4096), Just(100_000),
            Just(1 << 20), Just(32 << 20)
        ],
    ) {
        let wire: Vec<u8> = segments.concat();
        let mut d = MessageDecoder::new(max_block);
        let base = start_measuring();
        let _ = feed(&mut d, &wire, &pieces);
        let peak = peak_since(base);
        prop_assert!(peak <= heap_bound(wire.len(), max_block), "peak {peak}");
    }

    /// Mutating bytes of a valid stream gives errors or other messages,
    /// never a panic, and memory stays bounded.
    #[test]
    fn mutated_streams_are_safe(
        specs in prop::collection::vec(spec(), 1..5),
        mutations in prop::collection::vec((any::<Index>(), any::<u8>()), 1..8),
        cut in prop::option::of(any::<Index>()),
        pieces in pieces(),
    ) {
        let (_, mut wire) = encode_all(&specs, 64 * 1024);
        if wire.is_empty() {
            return Ok(());
        }
        for (at, byte) in &mutations {
            let i = at.index(wire.len());
            wire[i] = *byte;
        }
        if let Some(c) = cut {
            let at = c.index(wire.len());
            wire.drain(at..(at + 37).min(wire.len()));
        }
        let mut d = MessageDecoder::new(1 << 20);
        let base = start_measuring();
        let _ = feed(&mut d, &wire, &pieces);
        prop_assert!(peak_since(base) <= heap_bound(wire.len(), 1 << 20));
    }

    /// Breaking one header field of one frame of a valid stream is always
    /// detected, with the matching error.
    #[test]
    fn broken_header_is_detected(
        specs in prop::collection::vec(spec(), 1..5),
        which in any::<Index>(),
        field in 0usize..4,
        value in any::<u8>(),
        pieces in pieces(),
    ) {
        let (_, mut wire) = encode_all(&specs, 64 * 1024);
        let offsets = frame_offsets(&wire);
        let at = offsets[which.index(offsets.len())];
        let (pos, value, want) = match field {
            0 => {
                let v = if value == 1 { 2 } else { value };
                (0, v, FrameError::UnsupportedVersion(v))
            }
            1 => {
                let v = if (1..=4).contains(&value) { value + 4 } else { value };
                (1, v, FrameError::UnknownKind(v))
            }
            2 => {
                let v = wire[at + 2] | (value | 0x08);
                (2, v, FrameError::UnknownFlags(v))
            }
            _ => {
                let v = value.max(1);
                (3, v, FrameError::ReservedNotZero(v))
            }
        };
        wire[at + pos] = value;
        let mut d = MessageDecoder::new(1 << 20);
        prop_assert_eq!(feed(&mut d, &wire, &pieces).unwrap_err(), want);
    }
}

/// Start offsets of the frames of a valid stream.
fn frame_offsets(wire: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        v.push(at);
        let len = u32::from_be_bytes(wire[at + 12..at + 16].try_into().unwrap()) as usize;
        at += HEADER_LEN + len;
    }
    v
}

/// One piece of hostile input: raw garbage, or a header with plausible but
/// possibly inconsistent fields followed by a payload of arbitrary length
/// (sometimes a deflate bomb or corrupt deflate data).
fn segment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (
            prop_oneof![4 => Just(1u8), 1 => any::<u8>()],
            prop_oneof![4 => 1u8..=4, 1 => any::<u8>()],
            prop_oneof![4 => 0u8..8, 1 => any::<u8>()],
            prop_oneof![9 => Just(0u8), 1 => any::<u8>()],
            0u64..3,
            prop_oneof![
                0u32..300,
                Just(MAX_FRAME_PAYLOAD as u32),
                Just(MAX_FRAME_PAYLOAD as u32 + 1),
                any::<u32>()
            ],
            payload(),
        )
            .prop_map(|(ver, kind, flags, reserved, id, len, payload)| {
                let mut v = vec![ver, kind, flags, reserved];
                v.extend_from_slice(&id.to_be_bytes());
                v.extend_from_slice(&len.to_be_bytes());
                v.extend_from_slice(&payload);
                v
            }),
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..400),
        // A small deflate bomb: 4 MiB of zeros.
        Just(miniz_oxide::deflate::compress_to_vec(
            &vec![0u8; 4 << 20],
            9
        )),
        // Valid deflate of some text, possibly cut.
        (0usize..3000).prop_map(|n| {
            let c = miniz_oxide::deflate::compress_to_vec(&make_body(5000, 9, true), 1);
            c[..n.min(c.len())].to_vec()
        }),
    ]
}
