//! An independent, header-only reader of the bytes a core writes on one
//! direction of a stream: it checks every frame the core emits against the
//! wire format's rules without buffering payloads.
//!
//! Rules checked: version byte, known kind and flags, reserved byte zero;
//! every frame's payload is at most `CHUNK_SIZE` (the sender's documented
//! chunking), at most `MAX_FRAME_PAYLOAD` and at most the sender's
//! `max_block_size`; a message's total payload is at most the sender's
//! `max_block_size`; two multi-chunk messages never interleave.

use pointsub_proto::frame::{CHUNK_SIZE, FrameHeader, HEADER_LEN, MAX_FRAME_PAYLOAD};

/// One direction of one stream, as seen by the checker.
#[derive(Clone, Debug, Default)]
pub struct FrameTrack {
    hdr: [u8; HEADER_LEN],
    have: usize,
    remaining: u64,
    /// The multi-chunk message in progress: (request id, payload so far).
    current: Option<(u64, u64)>,
    /// Frames seen.
    pub frames: u64,
    /// When `Some`, every header seen is also recorded here (for logs).
    pub seen: Option<Vec<FrameHeader>>,
}

impl FrameTrack {
    /// Feeds bytes written by the sender, whose block size is `max_block`.
    pub fn feed(&mut self, mut data: &[u8], max_block: usize) -> Result<(), String> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining as usize).min(data.len());
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (HEADER_LEN - self.have).min(data.len());
            self.hdr[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have < HEADER_LEN {
                break;
            }
            self.have = 0;
            let h = FrameHeader::decode(&self.hdr)
                .map_err(|e| format!("malformed frame header {:02x?}: {e}", self.hdr))?;
            self.frames += 1;
            if let Some(seen) = self.seen.as_mut() {
                seen.push(h);
            }
            let len = h.len as u64;
            let frame_limit = CHUNK_SIZE.min(MAX_FRAME_PAYLOAD).min(max_block) as u64;
            if len > frame_limit {
                return Err(format!(
                    "frame of {len} bytes (request {}) exceeds the frame limit {frame_limit} (max block {max_block})",
                    h.request_id
                ));
            }
            let more = h.flags.contains(pointsub_proto::frame::Flags::MORE);
            let total = match self.current {
                Some((id, acc)) if id == h.request_id => {
                    let t = acc + len;
                    self.current = if more { Some((id, t)) } else { None };
                    t
                }
                Some((id, _)) if more => {
                    return Err(format!(
                        "multi-chunk message {} interleaved with unfinished message {id}",
                        h.request_id
                    ));
                }
                Some(_) => len,
                None => {
                    if more {
                        self.current = Some((h.request_id, len));
                    }
                    len
                }
            };
            if total > max_block as u64 {
                return Err(format!(
                    "message {} of at least {total} bytes exceeds the sender's max block size {max_block}",
                    h.request_id
                ));
            }
            self.remaining = len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pointsub_proto::frame::{Flags, FrameKind, OutQueue};

    #[test]
    fn accepts_what_the_core_encodes_split_anywhere() {
        let mut out = OutQueue::new();
        out.push(
            FrameKind::Request,
            1,
            Flags::empty(),
            Bytes::from(vec![1u8; 200_000]),
        );
        out.push(
            FrameKind::Request,
            2,
            Flags::empty(),
            Bytes::from(vec![2u8; 10]),
        );
        let mut all = Vec::new();
        while let Some(b) = out.poll(100_000) {
            all.extend_from_slice(&b);
        }
        let mut t = FrameTrack::default();
        for piece in all.chunks(7) {
            t.feed(piece, 1 << 20).unwrap();
        }
        assert!(t.frames >= 5);
        let mut t = FrameTrack::default();
        assert!(
            t.feed(&all, 100_000).is_err(),
            "message over the block size"
        );
    }
}
