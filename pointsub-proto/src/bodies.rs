//! Reassembly buffers kept for reuse.
//!
//! A body that arrives in several chunks is copied into one buffer (see
//! [`MessageDecoder`](crate::frame::MessageDecoder)). Allocated afresh for
//! every message, a large buffer comes from memory the allocator had just
//! given back to the system, and each of its pages faults on first touch:
//! at 1 MiB x 4 in flight those faults were 2.5 % of all CPU, as much as
//! the copy itself. A [`BodyPool`] hands the buffer of a body the
//! application has dropped to the next message instead.
//!
//! A body is handed out as [`Bytes`] that own their buffer; when the last
//! reference goes (on whatever thread), the buffer returns to its pool if
//! the pool still exists and has room: at most [`MAX_POOLED_BYTES`] in
//! all, buffers of at most [`MAX_POOLED_BUFFER`] each. The pool never
//! holds a buffer still in use, so it adds at most that much memory to
//! what the bodies in flight use anyway.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

/// Most bytes (of capacity) a pool keeps.
pub const MAX_POOLED_BYTES: usize = 8 << 20;

/// Largest buffer a pool keeps: a rare larger body's buffer is freed.
pub const MAX_POOLED_BUFFER: usize = 4 << 20;

/// Reassembly buffers of one core's streams (cloning shares the pool).
#[derive(Clone, Debug, Default)]
pub struct BodyPool {
    free: Arc<Mutex<Free>>,
}

#[derive(Debug, Default)]
struct Free {
    buffers: Vec<Vec<u8>>,
    /// Capacity of `buffers`, in bytes.
    bytes: usize,
}

impl BodyPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// A buffer to reassemble a message into: the one returned last (its
    /// memory is the likeliest still cached), or a new, empty one.
    pub(crate) fn take(&self) -> Vec<u8> {
        let mut free = lock(&self.free);
        match free.buffers.pop() {
            Some(buf) => {
                free.bytes -= buf.capacity();
                buf
            }
            None => Vec::new(),
        }
    }

    /// `buf` as a body: it comes back to this pool when the body's last
    /// reference is dropped.
    pub(crate) fn freeze(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: Arc::downgrade(&self.free),
        })
    }

    /// Buffers and bytes held now, for tests and statistics.
    pub fn held(&self) -> (usize, usize) {
        let free = lock(&self.free);
        (free.buffers.len(), free.bytes)
    }
}

/// Locks the free list; a panic elsewhere cannot leave it inconsistent
/// (each critical section is one push or pop with its count).
fn lock(m: &Mutex<Free>) -> std::sync::MutexGuard<'_, Free> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The owner of a pooled body's buffer.
struct Pooled {
    buf: Vec<u8>,
    pool: Weak<Mutex<Free>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let cap = self.buf.capacity();
        if cap == 0 || cap > MAX_POOLED_BUFFER {
            return;
        }
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let mut free = lock(&pool);
        if free.bytes + cap <= MAX_POOLED_BYTES {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            free.bytes += cap;
            free.buffers.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_body_returns_its_buffer_and_the_next_take_reuses_it() {
        let pool = BodyPool::new();
        let mut buf = pool.take();
        assert_eq!(buf.capacity(), 0);
        buf.extend_from_slice(&[7u8; 1000]);
        let ptr = buf.as_ptr();
        let cap = buf.capacity();
        let body = pool.freeze(buf);
        let clone = body.slice(10..20);
        assert_eq!(&body[..3], &[7, 7, 7]);
        drop(body);
        assert_eq!(pool.held(), (0, 0), "a slice still holds it");
        drop(clone);
        assert_eq!(pool.held(), (1, cap));
        let again = pool.take();
        assert_eq!((again.as_ptr(), again.len()), (ptr, 0));
        assert_eq!(pool.held(), (0, 0));
    }

    #[test]
    fn the_pool_keeps_at_most_its_bytes_and_no_huge_buffer() {
        let pool = BodyPool::new();
        let bodies: Vec<Bytes> = (0..3)
            .map(|_| pool.freeze(vec![1u8; MAX_POOLED_BUFFER]))
            .collect();
        drop(bodies);
        let (n, bytes) = pool.held();
        assert_eq!(n, MAX_POOLED_BYTES / MAX_POOLED_BUFFER);
        assert!(bytes <= MAX_POOLED_BYTES);
        let huge = pool.freeze(vec![0u8; MAX_POOLED_BUFFER + 1]);
        while pool.held().0 > 0 {
            pool.take();
        }
        drop(huge);
        assert_eq!(pool.held(), (0, 0), "a buffer past the limit is freed");
    }

    #[test]
    fn a_body_outliving_its_pool_is_freed() {
        let pool = BodyPool::new();
        let body = pool.freeze(vec![3u8; 64]);
        drop(pool);
        assert_eq!(body.len(), 64);
        drop(body);
    }
}
