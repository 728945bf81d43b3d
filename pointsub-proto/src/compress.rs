//! Per-message compression: raw deflate (RFC 1951, no zlib or gzip wrapper)
//! via `miniz_oxide`.
//!
//! [`compress`] is deliberately reluctant: it leaves small bodies alone,
//! probes large ones with a sample before spending time on them, and returns
//! `None` whenever the result would not be smaller, so a caller simply sends
//! the body as is and leaves the `COMPRESSED` flag clear.
//!
//! [`decompress`] is bounded: it never grows its output beyond the limit it is
//! given, so a deflate bomb costs at most `limit` bytes of memory and ends in
//! [`DecompressError::TooLarge`].

use bytes::Bytes;
use miniz_oxide::deflate::core::{
    CompressorOxide, TDEFLFlush, TDEFLStatus, compress as deflate,
    create_comp_flags_from_zip_params,
};
use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::{DecompressorOxide, decompress as inflate, inflate_flags};

/// Bodies shorter than this are not worth compressing (the default threshold
/// of the adapters' configs).
pub const DEFAULT_THRESHOLD: usize = 1024;

/// Deflate level: 1 is miniz's fast greedy path, several times quicker than
/// the default level for a few percent more output.
const LEVEL: i32 = 1;

/// Bodies longer than this are probed with a sample first.
const SAMPLE_ABOVE: usize = 64 * 1024;

/// Size of the probe taken from the middle of a large body.
const SAMPLE_LEN: usize = 4 * 1024;

/// Initial output estimate for inflating, as a multiple of the input length.
const INFLATE_GUESS_RATIO: usize = 4;

/// Smallest initial inflate buffer (unless the limit is smaller).
const INFLATE_MIN_BUF: usize = 4 * 1024;

/// Why [`decompress`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecompressError {
    /// The inflated data would exceed the limit; inflating stopped there.
    #[error("inflated body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit that was given to [`decompress`].
        limit: usize,
    },
    /// The data is not a valid raw deflate stream (bad block, truncated
    /// stream, or bytes after the end of the stream).
    #[error("corrupt deflate stream: {0}")]
    Corrupt(String),
}

/// Compresses `body` with raw deflate at a fast level.
///
/// Returns `None`, meaning "send it uncompressed", when
/// - `body.len() < threshold`;
/// - the body is longer than 64 KiB and a 4 KiB sample from its middle does
///   not shrink below 90 % (so incompressible megabytes, such as media or
///   already compressed data, cost one small probe instead of a full pass);
/// - the compressed form would not be strictly smaller than the body
///   (compression stops as soon as the output reaches the body's length).
pub fn compress(body: &[u8], threshold: usize) -> Option<Bytes> {
    if body.len() < threshold || body.is_empty() {
        return None;
    }
    compress_now(body)
}

thread_local! {
    /// One compressor per thread, reset between bodies: building one costs
    /// several allocations and hundreds of kilobytes of zeroing.
    static COMPRESSOR: std::cell::RefCell<Option<Box<CompressorOxide>>> =
        const { std::cell::RefCell::new(None) };
}

/// The work of [`compress`], kept out of line so the cheap early returns
/// above do not pay for this frame's large stack.
#[inline(never)]
fn compress_now(body: &[u8]) -> Option<Bytes> {
    COMPRESSOR.with(|cell| {
        // Re-entrancy cannot happen here, but never panic if it did.
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return compress_with(&mut new_compressor(), body);
        };
        let compressor = slot.get_or_insert_with(new_compressor);
        compressor.reset();
        compress_with(compressor, body)
    })
}

fn new_compressor() -> Box<CompressorOxide> {
    Box::new(CompressorOxide::new(create_comp_flags_from_zip_params(
        LEVEL, 0, 0,
    )))
}

fn compress_with(compressor: &mut CompressorOxide, body: &[u8]) -> Option<Bytes> {
    if body.len() > SAMPLE_ABOVE {
        let start = (body.len() - SAMPLE_LEN) / 2;
        let sample = &body[start..start + SAMPLE_LEN];
        // Anything at or above 90 % of the sample counts as "does not shrink".
        let budget = SAMPLE_LEN * 9 / 10;
        deflate_bounded(compressor, sample, budget)?;
        compressor.reset();
    }
    deflate_bounded(compressor, body, body.len() - 1).map(Bytes::from)
}

/// Deflates `input` into at most `max_out` bytes; `None` if it does not fit.
fn deflate_bounded(c: &mut CompressorOxide, mut input: &[u8], max_out: usize) -> Option<Vec<u8>> {
    if max_out == 0 {
        return None;
    }
    let mut out = vec![0u8; max_out];
    let mut pos = 0;
    loop {
        let (status, consumed, written) = deflate(c, input, &mut out[pos..], TDEFLFlush::Finish);
        pos += written;
        match status {
            TDEFLStatus::Done => break,
            // Output full before the stream ended: not smaller than allowed.
            TDEFLStatus::Okay if pos >= out.len() => return None,
            TDEFLStatus::Okay if consumed <= input.len() && (consumed > 0 || written > 0) => {
                input = &input[consumed..];
            }
            // No progress or an internal error: treat as "do not compress".
            _ => return None,
        }
    }
    out.truncate(pos);
    // Do not keep a mostly empty allocation alive for as long as the body is queued.
    if out.capacity() - out.len() > 4096 {
        out.shrink_to_fit();
    }
    Some(out)
}

/// Inflates raw deflate `data`, producing at most `limit` bytes.
///
/// The output buffer starts at a guess (a few times the input, capped by the
/// limit) and doubles up to the limit, never beyond: a bomb of any ratio
/// costs at most `limit` bytes before it is rejected with
/// [`DecompressError::TooLarge`]. Truncated or malformed data, and trailing
/// bytes after the final deflate block, are [`DecompressError::Corrupt`].
pub fn decompress(data: &[u8], limit: usize) -> Result<Bytes, DecompressError> {
    let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
    let guess = data
        .len()
        .saturating_mul(INFLATE_GUESS_RATIO)
        .max(INFLATE_MIN_BUF)
        .min(limit);
    let mut out = vec![0u8; guess];
    let mut inflater = Box::<DecompressorOxide>::default();
    let mut input = data;
    let mut pos = 0;
    loop {
        let (status, consumed, written) = inflate(&mut inflater, input, &mut out, pos, flags);
        pos += written;
        input = input.get(consumed..).unwrap_or_default();
        match status {
            TINFLStatus::Done => {
                if !input.is_empty() {
                    return Err(DecompressError::Corrupt(format!(
                        "{} bytes after the end of the deflate stream",
                        input.len()
                    )));
                }
                out.truncate(pos);
                return Ok(Bytes::from(out));
            }
            TINFLStatus::HasMoreOutput => {
                if out.len() >= limit {
                    return Err(DecompressError::TooLarge { limit });
                }
                let grown = out.len().saturating_mul(2).max(INFLATE_MIN_BUF).min(limit);
                out.resize(grown, 0);
            }
            TINFLStatus::FailedCannotMakeProgress | TINFLStatus::NeedsMoreInput => {
                return Err(DecompressError::Corrupt("truncated deflate stream".into()));
            }
            other => {
                return Err(DecompressError::Corrupt(format!("{other:?}")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic PRNG (xorshift64*), enough for test data.
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            v.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        v.truncate(len);
        v
    }

    fn text(len: usize) -> Vec<u8> {
        let words = [
            "alpha ",
            "beta ",
            "gamma ",
            "delta ",
            "request ",
            "response ",
            "peer ",
        ];
        let mut v = Vec::with_capacity(len + 16);
        let mut i = 7usize;
        while v.len() < len {
            i = i.wrapping_mul(31).wrapping_add(17) % 1_000_003;
            v.extend_from_slice(words[i % words.len()].as_bytes());
        }
        v.truncate(len);
        v
    }

    #[test]
    fn round_trip_text() {
        for len in [1024, 5000, 64 * 1024, 64 * 1024 + 1, 300 * 1024, 1 << 20] {
            let body = text(len);
            let c = compress(&body, DEFAULT_THRESHOLD).expect("text compresses");
            assert!(c.len() < body.len() / 2, "{len}: {} bytes", c.len());
            let d = decompress(&c, body.len()).unwrap();
            assert_eq!(&d[..], &body[..]);
        }
    }

    #[test]
    fn skips_small_bodies() {
        let body = text(DEFAULT_THRESHOLD - 1);
        assert_eq!(compress(&body, DEFAULT_THRESHOLD), None);
        assert_eq!(compress(b"", 0), None);
        // Forced with threshold 0, a tiny but repetitive body still compresses.
        let body = vec![b'a'; 200];
        let c = compress(&body, 0).unwrap();
        assert_eq!(&decompress(&c, 200).unwrap()[..], &body[..]);
    }

    #[test]
    fn skips_incompressible_data() {
        for len in [2000, 64 * 1024, 1 << 20] {
            assert_eq!(compress(&noise(len, 42), 0), None, "{len}");
        }
        // Large body whose middle is random: the sample says no.
        let mut body = text(1 << 20);
        let mid = body.len() / 2;
        body[mid - 20_000..mid + 20_000].copy_from_slice(&noise(40_000, 7));
        assert_eq!(compress(&body, 0), None);
    }

    #[test]
    fn exact_limit_is_accepted_and_one_less_is_too_large() {
        let body = text(100_000);
        let c = compress(&body, 0).unwrap();
        assert_eq!(decompress(&c, 100_000).unwrap().len(), 100_000);
        assert_eq!(
            decompress(&c, 99_999),
            Err(DecompressError::TooLarge { limit: 99_999 })
        );
    }

    #[test]
    fn deflate_bomb_is_bounded() {
        // 100 MiB of zeros deflates to about 100 KiB at the best level
        // (our fast level gets about 220:1).
        let zeros = vec![0u8; 100 << 20];
        let bomb = miniz_oxide::deflate::compress_to_vec(&zeros, 9);
        assert!(compress(&zeros, 0).unwrap().len() < 1 << 20);
        drop(zeros);
        assert!(bomb.len() < 200 * 1024, "{}", bomb.len());
        assert_eq!(
            decompress(&bomb, 1 << 20),
            Err(DecompressError::TooLarge { limit: 1 << 20 })
        );
    }

    #[test]
    fn corrupt_data_is_an_error() {
        let c = compress(&text(10_000), 0).unwrap();
        // Truncated.
        assert!(matches!(
            decompress(&c[..c.len() / 2], 1 << 20),
            Err(DecompressError::Corrupt(_))
        ));
        // Trailing garbage.
        let mut t = c.to_vec();
        t.extend_from_slice(b"xyz");
        assert!(matches!(
            decompress(&t, 1 << 20),
            Err(DecompressError::Corrupt(_))
        ));
        // Invalid block type (BTYPE = 11).
        assert!(matches!(
            decompress(&[0x07, 0, 0], 1 << 20),
            Err(DecompressError::Corrupt(_))
        ));
        // Empty input.
        assert!(matches!(
            decompress(&[], 1 << 20),
            Err(DecompressError::Corrupt(_))
        ));
    }

    #[test]
    fn empty_stream_inflates_to_nothing() {
        // Final fixed-Huffman block holding only end-of-block.
        assert_eq!(decompress(&[0x03, 0x00], 0).unwrap().len(), 0);
        assert_eq!(decompress(&[0x03, 0x00], 10).unwrap().len(), 0);
    }
}
