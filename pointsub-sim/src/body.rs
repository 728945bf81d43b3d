//! Self-describing request bodies and what the simulated handlers answer.
//!
//! A body of 16 bytes or more starts with a header: the request's unique
//! tag (8 bytes, little endian), a flags byte (bit 0: the handler must fail
//! this request) and 7 reserved bytes; the rest is filler sliced from a
//! pre-drawn pool (random bytes, or compressible text). Shorter bodies are
//! filler only. Handlers answer by protocol:
//!
//! - echo protocols return the body unchanged;
//! - digest protocols return 24 bytes: the tag, a 64-bit hash of the whole
//!   body, the answering node's index and the body length;
//! - a failing handler returns the error message `fail <tag as 16 hex digits>`.
//!
//! So a response given to the wrong request, or computed by the wrong node,
//! is detected by the client-side check.

use bytes::{BufMut, Bytes, BytesMut};

/// Header length of a tagged body.
pub const HEADER: usize = 16;
/// Flag bit: the handler must fail this request.
pub const FLAG_FAIL: u8 = 1;
/// Length of a digest response.
pub const DIGEST_LEN: usize = 24;

/// What a protocol's handler does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandlerKind {
    /// Returns the request body.
    Echo,
    /// Returns a 24-byte digest of the request.
    Digest,
}

/// A 64-bit hash of `data`: 8 bytes at a time, multiply-rotate (FxHash
/// style) from the FNV offset basis, the length folded in last.
pub fn body_hash(data: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    for &b in chunks.remainder() {
        h = (h.rotate_left(5) ^ b as u64).wrapping_mul(K);
    }
    (h.rotate_left(5) ^ data.len() as u64).wrapping_mul(K)
}

/// Builds a body of `len` bytes: header (when it fits) then filler from `pool` at `offset`.
pub fn make(tag: u64, fail: bool, len: usize, pool: &Bytes, offset: usize) -> Bytes {
    if len < HEADER {
        return pool.slice(offset..offset + len);
    }
    let mut b = BytesMut::with_capacity(len);
    b.put_u64_le(tag);
    b.put_u8(if fail { FLAG_FAIL } else { 0 });
    b.put_bytes(0, 7);
    b.extend_from_slice(&pool[offset..offset + len - HEADER]);
    b.freeze()
}

/// The tag of a body (0 for untagged short bodies).
pub fn tag(body: &[u8]) -> u64 {
    if body.len() < HEADER {
        return 0;
    }
    u64::from_le_bytes(body[..8].try_into().expect("8 bytes"))
}

/// Whether the body asks its handler to fail.
pub fn wants_failure(body: &[u8]) -> bool {
    body.len() >= HEADER && body[8] & FLAG_FAIL != 0
}

/// The handler error message for a failed request.
pub fn failure_message(body: &[u8]) -> String {
    format!("fail {:016x}", tag(body))
}

/// The digest response of `node` to `body`.
pub fn digest(body: &[u8], node: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(DIGEST_LEN);
    b.put_u64_le(tag(body));
    b.put_u64_le(body_hash(body));
    b.put_u32_le(node);
    b.put_u32_le(body.len() as u32);
    b.freeze()
}

/// Whether `resp` is the right answer of `kind`, computed by `node`, to `req`.
pub fn response_matches(kind: HandlerKind, req: &[u8], resp: &[u8], node: u32) -> bool {
    match kind {
        HandlerKind::Echo => req == resp,
        HandlerKind::Digest => resp == &digest(req, node)[..],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_bodies_round_trip() {
        let pool = Bytes::from(vec![7u8; 100]);
        let b = make(0xabcd, true, 40, &pool, 3);
        assert_eq!(b.len(), 40);
        assert_eq!(tag(&b), 0xabcd);
        assert!(wants_failure(&b));
        assert_eq!(failure_message(&b), "fail 000000000000abcd");
        let short = make(9, false, 5, &pool, 0);
        assert_eq!(tag(&short), 0);
        assert!(!wants_failure(&short));
        let d = digest(&b, 3);
        assert!(response_matches(HandlerKind::Digest, &b, &d, 3));
        assert!(!response_matches(HandlerKind::Digest, &b, &d, 4));
        assert!(response_matches(HandlerKind::Echo, &b, &b, 0));
        let other = make(0xabce, true, 40, &pool, 3);
        assert!(!response_matches(HandlerKind::Echo, &b, &other, 0));
    }
}
