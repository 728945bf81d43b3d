//! Test bodies shared by the integration tests (`mod bodies;`).

use bytes::Bytes;

/// `len` bytes that deflate cannot shrink (an xorshift stream from
/// `seed`), so that a body crosses the wire at its full size.
pub fn incompressible(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
