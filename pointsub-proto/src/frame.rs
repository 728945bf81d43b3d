//! Frames and messages on a stream: the wire format of the crate docs
//! ("Wire format"), its decoders and the sending queue.
//!
//! Three layers, each usable on its own:
//!
//! - [`FrameHeader`] / [`Frame`] / [`FrameDecoder`]: one frame at a time,
//!   header checks, the per-frame size limit (checked from the header alone,
//!   before any buffer is sized by it), zero-copy payloads.
//! - [`MessageDecoder`]: reassembles chunked messages, enforces the
//!   interleaving rule and the per-message limit (an oversize message is
//!   skipped without buffering and reported once as [`Decoded::Oversize`]),
//!   and inflates compressed bodies with a bounded inflater.
//! - [`OutQueue`]: the sending side: splits bodies into chunks of at most
//!   [`CHUNK_SIZE`] and schedules frames so that a small message waits behind
//!   at most one chunk of a large one.
//!
//! Errors ([`FrameError`]) are fatal for the stream: the decoders become
//! "failed", return the same error on every later call and drop further
//! input. The caller resets the stream.
//!
//! ```
//! use bytes::Bytes;
//! use pointsub_proto::frame::{Decoded, Flags, FrameKind, MessageDecoder, OutQueue};
//!
//! let mut out = OutQueue::new();
//! out.push(FrameKind::Request, 7, Flags::empty(), Bytes::from_static(b"ping"));
//! let mut rx = MessageDecoder::new(32 << 20);
//! while let Some(bytes) = out.poll(64 * 1024) {
//!     rx.push(&bytes);
//! }
//! match rx.next().unwrap() {
//!     Some(Decoded::Message(m)) => {
//!         assert_eq!((m.kind, m.request_id, &m.body[..]), (FrameKind::Request, 7, &b"ping"[..]));
//!         assert_eq!(m.wire_len, 16 + 4);
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::ops::{BitOr, BitOrAssign};

use bytes::{Buf, Bytes, BytesMut};

use crate::bodies::BodyPool;
use crate::compress::{self, DecompressError};

/// The wire format version this crate speaks (header byte 0).
pub const VERSION: u8 = 1;
/// Length of a frame header in bytes.
pub const HEADER_LEN: usize = 16;
/// The sender splits message bodies into chunks of at most this many bytes.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// Hard cap on one frame's payload a receiver accepts, whatever its block size.
pub const MAX_FRAME_PAYLOAD: usize = 1024 * 1024;

/// At most this much spare capacity is added to the receive buffer beyond
/// what the data and the current frame need (amortizes many tiny pushes).
const GROWTH_SLACK: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// Header pieces

/// What a frame (and the message it belongs to) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// A request from client to server.
    Request = 1,
    /// The successful answer to a request.
    Response = 2,
    /// A failed answer: payload is an error code and a message (see
    /// [`encode_error_body`]).
    Error = 3,
    /// The client gives up on a request; empty payload.
    Cancel = 4,
}

impl FrameKind {
    /// The kind for a header byte, `None` if unknown.
    pub const fn from_u8(b: u8) -> Option<FrameKind> {
        match b {
            1 => Some(FrameKind::Request),
            2 => Some(FrameKind::Response),
            3 => Some(FrameKind::Error),
            4 => Some(FrameKind::Cancel),
            _ => None,
        }
    }

    /// The header byte of this kind.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }
}

/// The flags byte of a frame header.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u8);

impl Flags {
    /// The message body is raw deflate (set on every chunk of the message).
    pub const COMPRESSED: Flags = Flags(0x01);
    /// Another chunk of this message follows.
    pub const MORE: Flags = Flags(0x02);
    /// The sender will inflate compressed frames sent to it.
    pub const ACCEPT_DEFLATE: Flags = Flags(0x04);
    const KNOWN: u8 = 0x07;

    /// No flag set.
    pub const fn empty() -> Flags {
        Flags(0)
    }

    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Flags from a raw byte; `None` if a bit this version does not know is set.
    pub const fn from_bits(bits: u8) -> Option<Flags> {
        if bits & !Self::KNOWN == 0 {
            Some(Flags(bits))
        } else {
            None
        }
    }

    /// Whether every flag of `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with the flags of `other` added.
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// `self` with the flags of `other` removed.
    pub const fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        self.with(rhs)
    }
}

impl BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        *self = self.with(rhs);
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(Flags, &str); 3] = [
            (Flags::COMPRESSED, "COMPRESSED"),
            (Flags::MORE, "MORE"),
            (Flags::ACCEPT_DEFLATE, "ACCEPT_DEFLATE"),
        ];
        write!(f, "Flags(")?;
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    write!(f, " | ")?;
                }
                first = false;
                f.write_str(name)?;
            }
        }
        if self.0 & !Self::KNOWN != 0 {
            if !first {
                write!(f, " | ")?;
            }
            write!(f, "{:#04x}", self.0 & !Self::KNOWN)?;
        }
        write!(f, ")")
    }
}

/// A decoded (or to be encoded) 16-byte frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame carries.
    pub kind: FrameKind,
    /// Its flags.
    pub flags: Flags,
    /// The request this frame belongs to (chosen by the client, echoed by the server).
    pub request_id: u64,
    /// Payload length of this frame.
    pub len: u32,
}

impl FrameHeader {
    /// The header's 16 bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = VERSION;
        b[1] = self.kind.as_u8();
        b[2] = self.flags.bits();
        b[3] = 0;
        b[4..12].copy_from_slice(&self.request_id.to_be_bytes());
        b[12..16].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// Appends the header's 16 bytes to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.extend_from_slice(&self.to_bytes());
    }

    /// Parses and checks a header. The payload length is not checked against
    /// any limit here (that is the decoder's job, which knows the limit).
    pub fn decode(src: &[u8; HEADER_LEN]) -> Result<Self, FrameError> {
        if src[0] != VERSION {
            return Err(FrameError::UnsupportedVersion(src[0]));
        }
        let kind = FrameKind::from_u8(src[1]).ok_or(FrameError::UnknownKind(src[1]))?;
        let flags = Flags::from_bits(src[2]).ok_or(FrameError::UnknownFlags(src[2]))?;
        if src[3] != 0 {
            return Err(FrameError::ReservedNotZero(src[3]));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&src[4..12]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&src[12..16]);
        Ok(FrameHeader {
            kind,
            flags,
            request_id: u64::from_be_bytes(id),
            len: u32::from_be_bytes(len),
        })
    }
}

/// One frame: its header and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The header (its `len` equals `payload.len()` for decoded frames).
    pub header: FrameHeader,
    /// The payload; a zero-copy slice of the decoder's receive buffer.
    pub payload: Bytes,
}

impl Frame {
    /// Appends the frame to `dst`. The length field is taken from the payload.
    ///
    /// # Panics
    /// If the payload is longer than `u32::MAX` bytes.
    pub fn encode(&self, dst: &mut BytesMut) {
        encode_frame(
            dst,
            self.header.kind,
            self.header.flags,
            self.header.request_id,
            &self.payload,
        );
    }
}

/// Appends one frame (header and payload) to `dst`.
///
/// Senders keep payloads at or below [`CHUNK_SIZE`] (see [`OutQueue`]);
/// receivers reject more than `min(max_block_size, MAX_FRAME_PAYLOAD)`.
///
/// # Panics
/// If the payload is longer than `u32::MAX` bytes.
pub fn encode_frame(
    dst: &mut BytesMut,
    kind: FrameKind,
    flags: Flags,
    request_id: u64,
    payload: &[u8],
) {
    let len = u32::try_from(payload.len()).expect("frame payload longer than u32::MAX");
    dst.reserve(HEADER_LEN + payload.len());
    FrameHeader {
        kind,
        flags,
        request_id,
        len,
    }
    .encode(dst);
    dst.extend_from_slice(payload);
}

// ---------------------------------------------------------------------------
// Errors

/// A fatal problem with the bytes of a stream. The stream cannot be used
/// any more: the peer and we disagree about where frames start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Header byte 0 is not [`VERSION`].
    #[error("unsupported wire format version {0} (this side speaks version {v})", v = VERSION)]
    UnsupportedVersion(u8),
    /// Header byte 1 is not a known [`FrameKind`].
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// Header byte 2 (shown whole) has a bit set that this version does not know.
    #[error("unknown frame flag bits in {0:#04x}")]
    UnknownFlags(u8),
    /// Header byte 3 must be 0.
    #[error("reserved header byte is {0}, must be 0")]
    ReservedNotZero(u8),
    /// A frame declares a payload longer than the receiver accepts; detected
    /// from the header alone, nothing was allocated for it.
    #[error("frame declares a payload of {declared} bytes, more than the limit of {limit}")]
    FrameTooLarge {
        /// The length in the header.
        declared: u64,
        /// `min(max_block_size, MAX_FRAME_PAYLOAD)` of the receiver.
        limit: usize,
    },
    /// A second multi-chunk message started while one was in progress.
    #[error(
        "multi-chunk message {got} started while multi-chunk message {in_progress} is unfinished"
    )]
    InterleavedMessage {
        /// Request id of the unfinished message.
        in_progress: u64,
        /// Request id of the frame that tried to start another one.
        got: u64,
    },
    /// A chunk changed the kind or the `COMPRESSED` flag of its message.
    #[error("chunk of message {request_id} changes the message's kind or COMPRESSED flag")]
    InconsistentChunk {
        /// The message's request id.
        request_id: u64,
    },
    /// A compressed body is not valid deflate data.
    #[error("corrupt compressed body: {0}")]
    Decompress(String),
}

impl FrameError {
    /// Always `false`: a broken stream is not cured by resending the same
    /// bytes. (A request that was on the stream may still be retried on a
    /// fresh one; that is the client's decision.)
    pub fn is_retryable(&self) -> bool {
        false
    }
}

// ---------------------------------------------------------------------------
// Error bodies

/// The code in the first payload byte of an [`FrameKind::Error`] message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 1: the server is at its concurrency limit; try later or elsewhere.
    Busy,
    /// 2: the handler failed.
    Handler,
    /// 3: the request (or its inflated body) exceeds the server's block size.
    Oversize,
    /// 4: no handler for the protocol.
    UnsupportedProtocol,
    /// 5: the request broke the protocol.
    Protocol,
    /// 6: the server is stopping.
    ShuttingDown,
    /// 7: the server refuses this peer or request.
    Forbidden,
    /// 8: the handler did not answer in time.
    Timeout,
    /// Any other code (not an error to receive: newer peers may add codes).
    Unknown(u8),
}

impl ErrorCode {
    /// The code for a byte; unassigned bytes become [`ErrorCode::Unknown`].
    pub const fn from_u8(b: u8) -> ErrorCode {
        match b {
            1 => ErrorCode::Busy,
            2 => ErrorCode::Handler,
            3 => ErrorCode::Oversize,
            4 => ErrorCode::UnsupportedProtocol,
            5 => ErrorCode::Protocol,
            6 => ErrorCode::ShuttingDown,
            7 => ErrorCode::Forbidden,
            8 => ErrorCode::Timeout,
            other => ErrorCode::Unknown(other),
        }
    }

    /// The byte on the wire.
    pub const fn to_u8(self) -> u8 {
        match self {
            ErrorCode::Busy => 1,
            ErrorCode::Handler => 2,
            ErrorCode::Oversize => 3,
            ErrorCode::UnsupportedProtocol => 4,
            ErrorCode::Protocol => 5,
            ErrorCode::ShuttingDown => 6,
            ErrorCode::Forbidden => 7,
            ErrorCode::Timeout => 8,
            ErrorCode::Unknown(b) => b,
        }
    }
}

impl From<u8> for ErrorCode {
    fn from(b: u8) -> Self {
        ErrorCode::from_u8(b)
    }
}

impl From<ErrorCode> for u8 {
    fn from(c: ErrorCode) -> u8 {
        c.to_u8()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Busy => f.write_str("busy"),
            ErrorCode::Handler => f.write_str("handler error"),
            ErrorCode::Oversize => f.write_str("oversize"),
            ErrorCode::UnsupportedProtocol => f.write_str("unsupported protocol"),
            ErrorCode::Protocol => f.write_str("protocol error"),
            ErrorCode::ShuttingDown => f.write_str("shutting down"),
            ErrorCode::Forbidden => f.write_str("forbidden"),
            ErrorCode::Timeout => f.write_str("timeout"),
            ErrorCode::Unknown(b) => write!(f, "unknown error code {b}"),
        }
    }
}

/// The payload of an error message: the code byte, then `msg` in UTF-8.
pub fn encode_error_body(code: ErrorCode, msg: &str) -> Bytes {
    let mut b = Vec::with_capacity(1 + msg.len());
    b.push(code.to_u8());
    b.extend_from_slice(msg.as_bytes());
    Bytes::from(b)
}

/// Splits an error payload into its code and message (invalid UTF-8 is
/// replaced, never an error). An empty payload is `(Unknown(0), "")`.
pub fn decode_error_body(payload: &[u8]) -> (ErrorCode, String) {
    match payload.split_first() {
        None => (ErrorCode::Unknown(0), String::new()),
        Some((&code, msg)) => (
            ErrorCode::from_u8(code),
            String::from_utf8_lossy(msg).into_owned(),
        ),
    }
}

// ---------------------------------------------------------------------------
// Frame decoder

/// Splits a byte stream into frames.
///
/// Feed it with [`push`](Self::push), then call
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)`. Payloads are
/// zero-copy slices of the receive buffer. The buffer is sized by the data
/// pushed and by the current frame's declared length, and only after that
/// length has been checked against the limit.
pub struct FrameDecoder {
    buf: BytesMut,
    limit: usize,
    /// Header of the current frame, already consumed from `buf`.
    pending: Option<FrameHeader>,
    /// Payload bytes still to drop (of a frame being skipped); while
    /// non-zero, `buf` is empty.
    skip: usize,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder accepting frame payloads up to
    /// `min(max_payload, MAX_FRAME_PAYLOAD)` bytes.
    pub fn new(max_payload: usize) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            limit: max_payload.min(MAX_FRAME_PAYLOAD),
            pending: None,
            skip: 0,
            failed: None,
        }
    }

    /// The largest frame payload accepted.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Appends bytes read from the stream. Ignored once the decoder failed.
    pub fn push(&mut self, mut data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.skip > 0 {
            debug_assert!(self.buf.is_empty());
            let n = self.skip.min(data.len());
            self.skip -= n;
            data = &data[n..];
        }
        if data.is_empty() {
            return;
        }
        self.reserve(data.len());
        self.buf.extend_from_slice(data);
    }

    /// Appends a buffer read from the stream, taking it over: when
    /// nothing is buffered (the common case between whole frames) it
    /// becomes the receive buffer, and the payloads returned are slices of
    /// it, without a copy. Ignored once the decoder failed.
    pub fn push_owned(&mut self, mut data: BytesMut) {
        if self.failed.is_some() {
            return;
        }
        if self.skip > 0 {
            debug_assert!(self.buf.is_empty());
            let n = self.skip.min(data.len());
            self.skip -= n;
            data.advance(n);
        }
        if data.is_empty() {
            return;
        }
        if self.buf.is_empty() {
            self.buf = data;
        } else {
            self.reserve(data.len());
            self.buf.extend_from_slice(&data);
        }
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(header) = self.poll_header()? else {
            return Ok(None);
        };
        Ok(self.take_payload().map(|payload| Frame { header, payload }))
    }

    /// Bytes received and not yet returned (or skipped), excluding the
    /// header of a frame whose payload is incomplete.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Capacity of the receive buffer (for memory accounting and tests).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Nothing buffered, no frame in progress, not failed.
    fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.pending.is_none() && self.skip == 0 && self.failed.is_none()
    }

    /// Whether a frame is partially received.
    pub fn mid_frame(&self) -> bool {
        self.pending.is_some() || self.skip > 0 || !self.buf.is_empty()
    }

    /// The error the decoder failed with, if any.
    pub fn error(&self) -> Option<&FrameError> {
        self.failed.as_ref()
    }

    /// Makes room for `additional` more bytes. Room for the current frame
    /// is reserved exactly (its declared length is already limit-checked);
    /// beyond that, the buffer grows by what is needed plus a doubling of
    /// the buffered length capped at [`GROWTH_SLACK`], so many tiny pushes
    /// stay amortized. Capacity stays within `max(frame, pushed + slack)`.
    fn reserve(&mut self, additional: usize) {
        if self.buf.capacity() - self.buf.len() >= additional || self.buf.try_reclaim(additional) {
            return;
        }
        let len = self.buf.len();
        let required = len + additional;
        let frame_need = self.pending.map_or(0, |h| h.len as usize);
        let target = if required <= frame_need {
            frame_need
        } else {
            required.max((2 * len).min(required + GROWTH_SLACK))
        };
        let mut fresh = BytesMut::with_capacity(target);
        fresh.extend_from_slice(&self.buf);
        self.buf = fresh;
    }

    fn fail(&mut self, e: FrameError) -> FrameError {
        self.failed = Some(e.clone());
        self.buf = BytesMut::new();
        self.pending = None;
        self.skip = 0;
        e
    }

    /// Header of the current frame once its 16 bytes are in.
    fn poll_header(&mut self) -> Result<Option<FrameHeader>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.pending.is_some() {
            return Ok(self.pending);
        }
        if self.skip > 0 || self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&self.buf[..HEADER_LEN]);
        let header = match FrameHeader::decode(&raw) {
            Ok(h) if h.len as usize > self.limit => {
                return Err(self.fail(FrameError::FrameTooLarge {
                    declared: u64::from(h.len),
                    limit: self.limit,
                }));
            }
            Ok(h) => h,
            Err(e) => return Err(self.fail(e)),
        };
        self.buf.advance(HEADER_LEN);
        self.pending = Some(header);
        Ok(Some(header))
    }

    /// The current frame's payload, if complete.
    fn take_payload(&mut self) -> Option<Bytes> {
        let len = self.pending?.len as usize;
        if self.buf.len() < len {
            // Size the buffer for the rest of the frame now (len is limit-checked).
            self.reserve(len - self.buf.len());
            return None;
        }
        self.pending = None;
        if len == 0 {
            return Some(Bytes::new());
        }
        Some(self.buf.split_to(len).freeze())
    }

    /// Moves the current frame's payload bytes received so far into `out`
    /// and returns how many are still to come (the caller takes those
    /// directly from the stream; the frame is finished for this decoder).
    fn drain_payload_into(&mut self, out: &mut Vec<u8>) -> usize {
        let Some(h) = self.pending.take() else {
            return 0;
        };
        let len = h.len as usize;
        let n = len.min(self.buf.len());
        out.extend_from_slice(&self.buf[..n]);
        self.buf.advance(n);
        len - n
    }

    /// Drops the current frame's payload, including bytes not yet received.
    fn skip_payload(&mut self) {
        let Some(h) = self.pending.take() else {
            return;
        };
        let len = h.len as usize;
        let n = len.min(self.buf.len());
        self.buf.advance(n);
        self.skip = len - n;
    }
}

impl fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("buffered", &self.buf.len())
            .field("capacity", &self.buf.capacity())
            .field("limit", &self.limit)
            .field("pending", &self.pending)
            .field("skip", &self.skip)
            .field("failed", &self.failed)
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Message decoder

/// A complete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Request, response, error or cancel.
    pub kind: FrameKind,
    /// The request it belongs to.
    pub request_id: u64,
    /// The peer set `ACCEPT_DEFLATE`: it will inflate compressed frames.
    pub accept_deflate: bool,
    /// The body travelled compressed.
    pub compressed: bool,
    /// The body is still deflated: the decoder defers inflating
    /// ([`MessageDecoder::defer_inflate`]) and the receiver inflates it
    /// with [`compress::decompress`] and the block size, outside its lock.
    /// Always false when the decoder inflates.
    pub deflated: bool,
    /// The body: inflated, unless `deflated`.
    pub body: Bytes,
    /// Bytes this message took on the wire, headers included.
    pub wire_len: usize,
}

/// What [`MessageDecoder::next`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete message.
    Message(Message),
    /// A message exceeded the block size (on the wire or inflated). Its
    /// remaining chunks are dropped unbuffered; the stream stays usable.
    /// Yielded once per such message.
    Oversize {
        /// The oversize message's kind.
        kind: FrameKind,
        /// Its request id.
        request_id: u64,
        /// The block size it exceeded.
        limit: usize,
    },
}

/// A multi-chunk message being received.
struct Assembly {
    kind: FrameKind,
    request_id: u64,
    compressed: bool,
    accept_deflate: bool,
    /// Payload so far (compressed if `compressed`); empty once discarding.
    body: Vec<u8>,
    /// Payload bytes declared by the chunks accepted so far.
    payload_len: usize,
    wire_len: usize,
    /// Bytes of the current chunk's payload still to come: `push` copies
    /// them straight into `body` (one copy instead of two).
    direct: usize,
    /// The current chunk is the message's last.
    last: bool,
    /// Oversize already reported: drop the rest.
    discarding: bool,
}

impl Assembly {
    /// Accounts for an accepted chunk of `len` payload bytes (the payload
    /// itself is copied in by the caller).
    fn accept_chunk(&mut self, len: usize, more: bool, max: usize) {
        self.reserve_chunk(len, max);
        self.payload_len += len;
        self.wire_len += HEADER_LEN + len;
        self.last = !more;
    }

    /// Makes room in `body` for a chunk of `len` bytes (`payload_len + len`
    /// is at most `max`): exact for the first chunk, then growing fourfold
    /// (fewer reallocations and copies of a large body than doubling),
    /// capped at `max`.
    fn reserve_chunk(&mut self, len: usize, max: usize) {
        let required = self.body.len() + len;
        if self.body.capacity() < required {
            let target = if self.body.capacity() == 0 {
                required
            } else {
                required.max((4 * self.body.capacity()).min(max))
            };
            self.body.reserve_exact(target - self.body.len());
        }
    }
}

/// Turns a byte stream into messages: reassembles chunks, checks the
/// interleaving rule and the block size, inflates compressed bodies.
///
/// Feed it with [`push`](Self::push), then call [`next`](Self::next) until it
/// returns `Ok(None)`. An `Err` is fatal for the stream and sticky.
///
/// Single-frame messages are zero-copy slices of the receive buffer. The
/// chunks of a multi-chunk message are copied once, from the pushed bytes
/// straight into the reassembly buffer; with a [`BodyPool`]
/// ([`use_pool`](Self::use_pool)) that buffer is one a dropped body gave
/// back, whose pages are already mapped.
///
/// Memory is bounded by the block size: the receive buffer holds at most
/// what was pushed plus one frame (`min(max_block_size, MAX_FRAME_PAYLOAD)`),
/// a chunked message's payload is at most `max_block_size` (in a buffer of
/// at most that, or of at most [`MAX_POOLED_BUFFER`](crate::bodies::MAX_POOLED_BUFFER)
/// when it came from a pool), and inflating stops at `max_block_size`.
pub struct MessageDecoder {
    frames: FrameDecoder,
    max_block_size: usize,
    current: Option<Assembly>,
    /// Hand compressed bodies on deflated (see [`Message::deflated`]).
    defer_inflate: bool,
    /// Where reassembly buffers come from and go back to, if shared.
    pool: Option<BodyPool>,
}

impl MessageDecoder {
    /// A decoder for messages of at most `max_block_size` bytes, both on the
    /// wire and inflated.
    pub fn new(max_block_size: usize) -> Self {
        MessageDecoder {
            frames: FrameDecoder::new(max_block_size),
            max_block_size,
            current: None,
            defer_inflate: false,
            pool: None,
        }
    }

    /// Reassembles chunked messages into buffers from `pool`, and hands
    /// their bodies out so that each buffer goes back to it when the body
    /// is dropped ([`BodyPool`]). Without a pool every message gets a new
    /// buffer.
    pub fn use_pool(&mut self, pool: BodyPool) {
        self.pool = Some(pool);
    }

    /// Hands compressed bodies on as they came ([`Message::deflated`]
    /// set) instead of inflating them here: a core whose adapter holds a
    /// lock around it has them inflated outside, after the lock is
    /// released. Their size on the wire is still checked here.
    pub fn defer_inflate(&mut self, on: bool) {
        self.defer_inflate = on;
    }

    /// The block size this decoder enforces.
    pub fn max_block_size(&self) -> usize {
        self.max_block_size
    }

    /// Appends bytes read from the stream. Payload bytes of a chunked
    /// message go straight to its reassembly buffer; those of a message
    /// being discarded as oversize are dropped without being copied.
    pub fn push(&mut self, mut data: &[u8]) {
        if let Some(a) = self.current.as_mut() {
            loop {
                if a.direct > 0 {
                    let n = a.direct.min(data.len());
                    a.body.extend_from_slice(&data[..n]);
                    a.direct -= n;
                    data = &data[n..];
                    if a.direct > 0 {
                        return;
                    }
                }
                // Fast path: the header of the message's next chunk is right
                // here. Accept it as `next` would; anything else (another
                // message, an error, an oversize) is left to `next`.
                if a.last || a.discarding || data.len() < HEADER_LEN || !self.frames.is_idle() {
                    break;
                }
                let mut raw = [0u8; HEADER_LEN];
                raw.copy_from_slice(&data[..HEADER_LEN]);
                let Ok(h) = FrameHeader::decode(&raw) else {
                    break;
                };
                let len = h.len as usize;
                if h.request_id != a.request_id
                    || h.kind != a.kind
                    || h.flags.contains(Flags::COMPRESSED) != a.compressed
                    || len > self.frames.limit
                    || a.payload_len + len > self.max_block_size
                {
                    break;
                }
                data = &data[HEADER_LEN..];
                a.accept_chunk(len, h.flags.contains(Flags::MORE), self.max_block_size);
                a.direct = len;
            }
        }
        self.frames.push(data);
    }

    /// Appends a buffer read from the stream, taking it over (see
    /// [`FrameDecoder::push_owned`]): single-frame messages are then slices
    /// of the caller's buffer. The chunks of a message being reassembled
    /// are copied into it, as with [`push`](Self::push).
    pub fn push_owned(&mut self, data: BytesMut) {
        if self.current.is_some() {
            self.push(&data);
        } else {
            self.frames.push_owned(data);
        }
    }

    /// The next message (or oversize notice); `Ok(None)` if more bytes are needed.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Decoded>, FrameError> {
        loop {
            if let Some(a) = &self.current {
                if a.direct > 0 {
                    return Ok(None);
                }
                if a.last {
                    let a = self.current.take().expect("message in progress");
                    let body = match &self.pool {
                        Some(pool) => pool.freeze(a.body),
                        None => Bytes::from(a.body),
                    };
                    return self
                        .finish(
                            a.kind,
                            a.request_id,
                            a.accept_deflate,
                            a.compressed,
                            body,
                            a.wire_len,
                        )
                        .map(Some);
                }
            }
            let h = match self.frames.poll_header() {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(None),
                Err(e) => {
                    // Failed now or earlier: drop any partial message too.
                    self.current = None;
                    return Err(e);
                }
            };
            let more = h.flags.contains(Flags::MORE);
            let compressed = h.flags.contains(Flags::COMPRESSED);
            let len = h.len as usize;
            let accept_deflate = h.flags.contains(Flags::ACCEPT_DEFLATE);
            let single = match &self.current {
                None => !more,
                Some(a) if a.request_id != h.request_id => {
                    if more {
                        let e = FrameError::InterleavedMessage {
                            in_progress: a.request_id,
                            got: h.request_id,
                        };
                        return Err(self.fail(e));
                    }
                    // A single-frame message between chunks: fine.
                    true
                }
                Some(_) => false,
            };
            if single {
                let Some(payload) = self.frames.take_payload() else {
                    return Ok(None);
                };
                return self
                    .finish(
                        h.kind,
                        h.request_id,
                        accept_deflate,
                        compressed,
                        payload,
                        HEADER_LEN + len,
                    )
                    .map(Some);
            }
            let a = match self.current.as_mut() {
                // First chunk of a multi-chunk message (fits: len <= frame limit).
                None => self.current.insert(Assembly {
                    kind: h.kind,
                    request_id: h.request_id,
                    compressed,
                    accept_deflate,
                    body: self.pool.as_ref().map(BodyPool::take).unwrap_or_default(),
                    payload_len: 0,
                    wire_len: 0,
                    direct: 0,
                    last: false,
                    discarding: false,
                }),
                // A further chunk of the message in progress.
                Some(a) => {
                    if a.kind != h.kind || a.compressed != compressed {
                        let e = FrameError::InconsistentChunk {
                            request_id: h.request_id,
                        };
                        return Err(self.fail(e));
                    }
                    a
                }
            };
            if a.discarding {
                self.frames.skip_payload();
                if !more {
                    self.current = None;
                }
                continue;
            }
            if a.payload_len + len > self.max_block_size {
                self.frames.skip_payload();
                let (kind, request_id) = (a.kind, a.request_id);
                if more {
                    a.discarding = true;
                    a.body = Vec::new();
                } else {
                    self.current = None;
                }
                return Ok(Some(Decoded::Oversize {
                    kind,
                    request_id,
                    limit: self.max_block_size,
                }));
            }
            a.accept_chunk(len, more, self.max_block_size);
            a.direct = self.frames.drain_payload_into(&mut a.body);
        }
    }

    /// Whether a frame or a chunked message is partially received (a server
    /// applies its read timeout then).
    pub fn mid_message(&self) -> bool {
        self.current.is_some() || self.frames.mid_frame()
    }

    /// Bytes received and held: the receive buffer plus the payload of a
    /// chunked message so far. Never more than was pushed.
    pub fn buffered(&self) -> usize {
        self.frames.buffered() + self.current.as_ref().map_or(0, |a| a.body.len())
    }

    /// Buffer memory currently reserved (receive buffer plus reassembly).
    pub fn capacity(&self) -> usize {
        self.frames.capacity() + self.current.as_ref().map_or(0, |a| a.body.capacity())
    }

    /// The error the decoder failed with, if any.
    pub fn error(&self) -> Option<&FrameError> {
        self.frames.error()
    }

    fn fail(&mut self, e: FrameError) -> FrameError {
        self.current = None;
        self.frames.fail(e)
    }

    fn finish(
        &mut self,
        kind: FrameKind,
        request_id: u64,
        accept_deflate: bool,
        compressed: bool,
        payload: Bytes,
        wire_len: usize,
    ) -> Result<Decoded, FrameError> {
        let deflated = compressed && self.defer_inflate;
        let body = if compressed && !deflated {
            match compress::decompress(&payload, self.max_block_size) {
                Ok(body) => body,
                Err(DecompressError::TooLarge { .. }) => {
                    return Ok(Decoded::Oversize {
                        kind,
                        request_id,
                        limit: self.max_block_size,
                    });
                }
                Err(DecompressError::Corrupt(m)) => {
                    return Err(self.fail(FrameError::Decompress(m)));
                }
            }
        } else {
            payload
        };
        Ok(Decoded::Message(Message {
            kind,
            request_id,
            accept_deflate,
            compressed,
            deflated,
            body,
            wire_len,
        }))
    }
}

impl fmt::Debug for MessageDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageDecoder")
            .field("frames", &self.frames)
            .field("max_block_size", &self.max_block_size)
            .field("in_progress", &self.current.as_ref().map(|a| a.request_id))
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Sending queue

/// A message waiting in an [`OutQueue`].
struct Queued {
    kind: FrameKind,
    request_id: u64,
    /// Flags of every chunk, without `MORE`.
    flags: Flags,
    body: Bytes,
    /// Body bytes already encoded (non-zero: the message is started).
    sent: usize,
    /// Push order, for keeping messages of one id in order.
    seq: u64,
}

impl Queued {
    fn next_chunk_len(&self) -> usize {
        (self.body.len() - self.sent).min(CHUNK_SIZE)
    }
}

/// Number of frames a body of `len` bytes takes.
fn frames_for(len: usize) -> usize {
    len.div_ceil(CHUNK_SIZE).max(1)
}

/// The sending side of one stream direction: chunking and the interleaving
/// rule.
///
/// Messages whose body fits one frame (at most [`CHUNK_SIZE`]) go out FIFO.
/// Larger messages are split into chunks and go out one message at a time,
/// FIFO; single-frame messages queued meanwhile go between the chunks, so a
/// small message waits behind at most one chunk. To keep large messages
/// moving, at most [`CHUNK_SIZE`] bytes of small messages go between two
/// chunks when both are waiting. Messages with the same request id stay in
/// push order (a small message pushed after a large one of the same id waits
/// until that one is sent).
#[derive(Default)]
pub struct OutQueue {
    singles: VecDeque<Queued>,
    multis: VecDeque<Queued>,
    queued_bytes: usize,
    /// Bytes of single-frame messages sent since the last chunk.
    singles_since_chunk: usize,
    seq: u64,
    /// The payload of a large frame whose header [`OutQueue::poll`] just
    /// returned alone: a slice of the body, returned by the next poll, and
    /// whether it is its message's last.
    split: Option<(u64, Bytes, bool)>,
    /// Whether [`OutQueue::poll`] logs the messages it finishes.
    log_done: bool,
    /// Request ids of the messages whose last frame was returned, when
    /// logged, until taken with [`OutQueue::take_done`].
    done: Vec<u64>,
}

/// Frames with a payload at least this large are returned as their header
/// and then their payload, a slice of the body: no copy of large bodies.
pub const ZERO_COPY_ABOVE: usize = 16 * 1024;

enum Pick {
    Single(usize),
    Chunk,
}

impl OutQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty queue that logs the request id of each message whose last
    /// frame [`poll`](Self::poll) returns, for [`take_done`](Self::take_done):
    /// a sender learns which messages went out in O(1) per message, not
    /// by asking [`contains`](Self::contains) of each.
    pub fn logging_done() -> Self {
        Self {
            log_done: true,
            ..Self::default()
        }
    }

    /// Takes the request ids logged since the last call (see
    /// [`logging_done`](Self::logging_done)), in the order their messages
    /// finished.
    pub fn take_done(&mut self) -> std::vec::Drain<'_, u64> {
        self.done.drain(..)
    }

    fn finished(&mut self, request_id: u64) {
        if self.log_done {
            self.done.push(request_id);
        }
    }

    /// Queues a message. `flags` may hold `COMPRESSED` (then `body` is
    /// already deflated) and `ACCEPT_DEFLATE`; `MORE` is ignored, the queue
    /// sets it.
    pub fn push(&mut self, kind: FrameKind, request_id: u64, flags: Flags, body: Bytes) {
        self.queued_bytes += body.len() + HEADER_LEN * frames_for(body.len());
        let q = Queued {
            kind,
            request_id,
            flags: flags.without(Flags::MORE),
            sent: 0,
            seq: self.seq,
            body,
        };
        self.seq += 1;
        if q.body.len() <= CHUNK_SIZE {
            self.singles.push_back(q);
        } else {
            self.multis.push_back(q);
        }
    }

    /// Encodes the next frames into one buffer of at most `max_bytes` (or
    /// one frame if that alone is larger). `None` when the queue is empty.
    ///
    /// A frame whose payload is at least [`ZERO_COPY_ABOVE`] bytes comes
    /// out as two results: its 16-byte header, then its payload as a slice
    /// of the queued body (no copy). Smaller frames are packed together.
    pub fn poll(&mut self, max_bytes: usize) -> Option<Bytes> {
        if let Some((id, payload, last)) = self.split.take() {
            self.queued_bytes -= payload.len();
            if last {
                self.finished(id);
            }
            return Some(payload);
        }
        let first = self.pick()?;
        if self.frame_len(&first) - HEADER_LEN >= ZERO_COPY_ABOVE {
            return Some(self.emit_split(first));
        }
        let cap = self.frame_len(&first).max(max_bytes).min(self.queued_bytes);
        let mut out = BytesMut::with_capacity(cap);
        let mut pick = Some(first);
        while let Some(p) = pick {
            let len = self.frame_len(&p);
            if !out.is_empty()
                && (out.len() + len > max_bytes || len - HEADER_LEN >= ZERO_COPY_ABOVE)
            {
                break;
            }
            self.emit(p, &mut out);
            pick = self.pick();
        }
        Some(out.freeze())
    }

    /// Takes the picked frame off the queue as its header (returned) and
    /// its payload (kept in `split` for the next poll).
    fn emit_split(&mut self, p: Pick) -> Bytes {
        let (kind, flags, request_id, payload, last) = match p {
            Pick::Single(i) => {
                let q = self.singles.remove(i).expect("picked single");
                self.singles_since_chunk = if self.multis.is_empty() {
                    0
                } else {
                    self.singles_since_chunk + HEADER_LEN + q.body.len()
                };
                (q.kind, q.flags, q.request_id, q.body, true)
            }
            Pick::Chunk => {
                let m = self.multis.front_mut().expect("picked chunk");
                let end = m.sent + m.next_chunk_len();
                let more = end < m.body.len();
                let flags = if more {
                    m.flags.with(Flags::MORE)
                } else {
                    m.flags
                };
                let payload = m.body.slice(m.sent..end);
                let out = (m.kind, flags, m.request_id, payload, !more);
                m.sent = end;
                if !more {
                    self.multis.pop_front();
                }
                self.singles_since_chunk = 0;
                out
            }
        };
        let len = u32::try_from(payload.len()).expect("frame payload longer than u32::MAX");
        let header = FrameHeader {
            kind,
            flags,
            request_id,
            len,
        };
        self.queued_bytes -= HEADER_LEN;
        self.split = Some((request_id, payload, last));
        Bytes::copy_from_slice(&header.to_bytes())
    }

    /// Drops the queued messages of `request_id` that have not started;
    /// a multi-chunk message already started is finished, never truncated.
    /// Returns whether anything was dropped.
    pub fn cancel(&mut self, request_id: u64) -> bool {
        let mut dropped = 0;
        let mut keep = |q: &Queued| {
            let drop = q.request_id == request_id && q.sent == 0;
            if drop {
                dropped += q.body.len() + HEADER_LEN * frames_for(q.body.len());
            }
            !drop
        };
        let before = self.singles.len() + self.multis.len();
        self.singles.retain(&mut keep);
        self.multis.retain(&mut keep);
        self.queued_bytes -= dropped;
        self.singles.len() + self.multis.len() != before
    }

    /// Whether any bytes of a message with this request id are still queued
    /// (`false` once its last frame has been returned by [`poll`](Self::poll)).
    pub fn contains(&self, request_id: u64) -> bool {
        self.split
            .as_ref()
            .is_some_and(|(id, ..)| *id == request_id)
            || self
                .singles
                .iter()
                .chain(self.multis.iter())
                .any(|q| q.request_id == request_id)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.split.is_none() && self.singles.is_empty() && self.multis.is_empty()
    }

    /// Wire bytes (headers included) still to be produced by [`poll`](Self::poll).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Number of messages queued (a started one included; a message whose
    /// last payload is still to come counts).
    pub fn len(&self) -> usize {
        let tail = self.split.as_ref().is_some_and(|(id, ..)| {
            self.multis
                .front()
                .is_none_or(|m| m.request_id != *id || m.sent == 0)
        });
        self.singles.len() + self.multis.len() + usize::from(tail)
    }

    /// Whether a multi-chunk message is partly sent: the stream must not be
    /// closed or handed to another user before it is finished.
    pub fn mid_message(&self) -> bool {
        self.split.is_some() || self.multis.front().is_some_and(|m| m.sent > 0)
    }

    /// The first single-frame message not held behind an earlier large
    /// message of the same id.
    fn ready_single(&self) -> Option<usize> {
        if self.multis.is_empty() {
            return (!self.singles.is_empty()).then_some(0);
        }
        self.singles.iter().position(|s| {
            !self
                .multis
                .iter()
                .any(|m| m.request_id == s.request_id && m.seq < s.seq)
        })
    }

    fn pick(&self) -> Option<Pick> {
        let ready = self.ready_single();
        if let Some(i) = ready
            && (self.multis.is_empty() || self.singles_since_chunk < CHUNK_SIZE)
        {
            return Some(Pick::Single(i));
        }
        let m = self.multis.front()?;
        if m.sent == 0 {
            // A small message of the same id pushed before the large one must
            // go first: once the large one starts, a frame of its id continues it.
            let earlier = self
                .singles
                .iter()
                .position(|s| s.request_id == m.request_id && s.seq < m.seq);
            if let Some(i) = earlier {
                return Some(Pick::Single(i));
            }
        }
        Some(Pick::Chunk)
    }

    fn frame_len(&self, p: &Pick) -> usize {
        HEADER_LEN
            + match p {
                Pick::Single(i) => self.singles[*i].body.len(),
                Pick::Chunk => self.multis[0].next_chunk_len(),
            }
    }

    fn emit(&mut self, p: Pick, out: &mut BytesMut) {
        match p {
            Pick::Single(i) => {
                let q = self.singles.remove(i).expect("picked single");
                encode_frame(out, q.kind, q.flags, q.request_id, &q.body);
                self.finished(q.request_id);
                let n = HEADER_LEN + q.body.len();
                self.queued_bytes -= n;
                self.singles_since_chunk = if self.multis.is_empty() {
                    0
                } else {
                    self.singles_since_chunk + n
                };
            }
            Pick::Chunk => {
                let m = self.multis.front_mut().expect("picked chunk");
                let n = m.next_chunk_len();
                let end = m.sent + n;
                let more = end < m.body.len();
                let flags = if more {
                    m.flags.with(Flags::MORE)
                } else {
                    m.flags
                };
                encode_frame(out, m.kind, flags, m.request_id, &m.body[m.sent..end]);
                m.sent = end;
                let id = m.request_id;
                if !more {
                    self.multis.pop_front();
                    self.finished(id);
                }
                self.queued_bytes -= HEADER_LEN + n;
                self.singles_since_chunk = 0;
            }
        }
    }
}

impl fmt::Debug for OutQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutQueue")
            .field("singles", &self.singles.len())
            .field("multis", &self.multis.len())
            .field("queued_bytes", &self.queued_bytes)
            .finish()
    }
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: FrameKind, flags: Flags, id: u64, len: u32) -> [u8; HEADER_LEN] {
        FrameHeader {
            kind,
            flags,
            request_id: id,
            len,
        }
        .to_bytes()
    }

    fn frame(kind: FrameKind, flags: Flags, id: u64, payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode_frame(&mut b, kind, flags, id, payload);
        b.to_vec()
    }

    fn drain(q: &mut OutQueue, max: usize) -> Vec<u8> {
        let mut v = Vec::new();
        while let Some(b) = q.poll(max) {
            v.extend_from_slice(&b);
        }
        v
    }

    fn all_frames(bytes: &[u8]) -> Vec<Frame> {
        let mut d = FrameDecoder::new(MAX_FRAME_PAYLOAD);
        d.push(bytes);
        let mut v = Vec::new();
        while let Some(f) = d.next_frame().unwrap() {
            v.push(f);
        }
        assert_eq!(d.buffered(), 0);
        v
    }

    fn decode_all(d: &mut MessageDecoder) -> Result<Vec<Decoded>, FrameError> {
        let mut v = Vec::new();
        while let Some(m) = d.next()? {
            v.push(m);
        }
        Ok(v)
    }

    fn message(d: Decoded) -> Message {
        match d {
            Decoded::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    fn pattern(len: usize) -> Bytes {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn header_round_trip() {
        let h = FrameHeader {
            kind: FrameKind::Response,
            flags: Flags::COMPRESSED | Flags::MORE | Flags::ACCEPT_DEFLATE,
            request_id: 0x0102_0304_0506_0708,
            len: 0x0a0b_0c0d,
        };
        let mut b = BytesMut::new();
        h.encode(&mut b);
        assert_eq!(
            &b[..],
            &[1, 2, 7, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0x0a, 0x0b, 0x0c, 0x0d]
        );
        let raw: [u8; HEADER_LEN] = b[..].try_into().unwrap();
        assert_eq!(FrameHeader::decode(&raw), Ok(h));
        for kind in [
            FrameKind::Request,
            FrameKind::Response,
            FrameKind::Error,
            FrameKind::Cancel,
        ] {
            for bits in 0..8 {
                let h = FrameHeader {
                    kind,
                    flags: Flags::from_bits(bits).unwrap(),
                    request_id: u64::MAX - bits as u64,
                    len: u32::MAX,
                };
                assert_eq!(FrameHeader::decode(&h.to_bytes()), Ok(h));
            }
        }
    }

    #[test]
    fn flags_api() {
        let f = Flags::empty().with(Flags::COMPRESSED);
        assert!(f.contains(Flags::COMPRESSED));
        assert!(!f.contains(Flags::MORE));
        assert!(f.contains(Flags::empty()));
        let mut g = f;
        g |= Flags::MORE;
        assert_eq!(g.bits(), 0x03);
        assert_eq!(g.without(Flags::MORE), f);
        assert_eq!(Flags::from_bits(0x08), None);
        assert_eq!(format!("{g:?}"), "Flags(COMPRESSED | MORE)");
        assert_eq!(format!("{:?}", Flags::empty()), "Flags()");
    }

    #[test]
    fn each_header_error() {
        let good = header(FrameKind::Request, Flags::empty(), 1, 0);
        let cases: [(usize, u8, FrameError); 6] = [
            (0, 2, FrameError::UnsupportedVersion(2)),
            (0, 0, FrameError::UnsupportedVersion(0)),
            (1, 0, FrameError::UnknownKind(0)),
            (1, 5, FrameError::UnknownKind(5)),
            (2, 0x09, FrameError::UnknownFlags(0x09)),
            (3, 1, FrameError::ReservedNotZero(1)),
        ];
        for (at, byte, want) in cases {
            let mut raw = good;
            raw[at] = byte;
            assert_eq!(FrameHeader::decode(&raw), Err(want.clone()));
            // Through the decoders too, and sticky.
            let mut d = MessageDecoder::new(1 << 20);
            d.push(&raw);
            assert_eq!(d.next(), Err(want.clone()));
            d.push(&good);
            assert_eq!(d.next(), Err(want.clone()));
            assert_eq!(d.buffered(), 0);
            assert!(!want.is_retryable());
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn frame_too_large_from_header_alone() {
        let mut d = FrameDecoder::new(4096);
        d.push(&header(FrameKind::Request, Flags::empty(), 9, 4097));
        assert_eq!(
            d.next_frame(),
            Err(FrameError::FrameTooLarge {
                declared: 4097,
                limit: 4096
            })
        );
        assert!(d.capacity() < 1024, "{}", d.capacity());
        // The global cap applies even with a larger block size.
        let mut d = MessageDecoder::new(usize::MAX);
        d.push(&header(FrameKind::Request, Flags::empty(), 9, u32::MAX));
        assert_eq!(
            d.next(),
            Err(FrameError::FrameTooLarge {
                declared: u64::from(u32::MAX),
                limit: MAX_FRAME_PAYLOAD
            })
        );
        assert!(d.capacity() < 1024);
        // Exactly at the limit is fine.
        let mut d = FrameDecoder::new(4096);
        d.push(&frame(FrameKind::Request, Flags::empty(), 9, &[7; 4096]));
        assert_eq!(d.next_frame().unwrap().unwrap().payload.len(), 4096);
    }

    #[test]
    fn interleaved_message_error() {
        let mut d = MessageDecoder::new(1 << 20);
        d.push(&frame(FrameKind::Request, Flags::MORE, 1, b"a"));
        // A single frame of another id is fine between chunks.
        d.push(&frame(FrameKind::Request, Flags::empty(), 2, b"b"));
        let got = decode_all(&mut d).unwrap();
        assert_eq!(message(got[0].clone()).request_id, 2);
        assert!(d.mid_message());
        // A second multi-chunk message is not.
        d.push(&frame(FrameKind::Request, Flags::MORE, 3, b"c"));
        assert_eq!(
            d.next(),
            Err(FrameError::InterleavedMessage {
                in_progress: 1,
                got: 3
            })
        );
    }

    #[test]
    fn inconsistent_chunk_error() {
        for second in [
            frame(FrameKind::Request, Flags::COMPRESSED, 1, b"x"),
            frame(FrameKind::Response, Flags::empty(), 1, b"x"),
        ] {
            let mut d = MessageDecoder::new(1 << 20);
            d.push(&frame(FrameKind::Request, Flags::MORE, 1, b"a"));
            d.push(&second);
            assert_eq!(
                d.next(),
                Err(FrameError::InconsistentChunk { request_id: 1 })
            );
        }
    }

    #[test]
    fn decompress_error() {
        let mut d = MessageDecoder::new(1 << 20);
        d.push(&frame(
            FrameKind::Response,
            Flags::COMPRESSED,
            4,
            &[0x07, 1, 2],
        ));
        assert!(matches!(d.next(), Err(FrameError::Decompress(_))));
        assert!(matches!(d.error(), Some(FrameError::Decompress(_))));
    }

    #[test]
    fn a_pooled_decoder_reuses_the_buffer_of_a_dropped_body() {
        let pool = BodyPool::new();
        let mut d = MessageDecoder::new(1 << 20);
        d.use_pool(pool.clone());
        let mut q = OutQueue::new();
        let first = pattern(200 * 1024);
        q.push(FrameKind::Request, 1, Flags::empty(), first.clone());
        d.push(&drain(&mut q, 1 << 20));
        let m = message(d.next().unwrap().unwrap());
        assert_eq!(m.body, first);
        let at = m.body.as_ptr();
        assert_eq!(pool.held().0, 0, "the body holds the buffer");
        drop(m);
        assert_eq!(pool.held().0, 1, "dropping the body returned it");
        // The next chunked body is reassembled in the same buffer, intact.
        let second = pattern(150 * 1024).slice(1..);
        q.push(FrameKind::Request, 2, Flags::empty(), second.clone());
        d.push(&drain(&mut q, 1 << 20));
        let m = message(d.next().unwrap().unwrap());
        assert_eq!(m.body, second);
        assert_eq!(m.body.as_ptr(), at);
        assert_eq!(pool.held().0, 0);
        // A single-frame message is a slice of what was pushed: no pooling.
        q.push(FrameKind::Request, 3, Flags::empty(), pattern(100));
        d.push(&drain(&mut q, 1 << 20));
        let small = message(d.next().unwrap().unwrap());
        drop(small);
        assert_eq!(pool.held().0, 0);
    }

    #[test]
    fn chunking_200k() {
        let body = pattern(200 * 1024);
        let mut q = OutQueue::new();
        q.push(FrameKind::Response, 5, Flags::ACCEPT_DEFLATE, body.clone());
        let expected_wire = body.len() + 4 * HEADER_LEN;
        assert_eq!(q.queued_bytes(), expected_wire);
        let wire = drain(&mut q, 1 << 20);
        assert!(q.is_empty());
        assert_eq!(q.queued_bytes(), 0);
        assert_eq!(wire.len(), expected_wire);
        let frames = all_frames(&wire);
        assert_eq!(frames.len(), 4);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.header.flags.contains(Flags::MORE), i < 3, "chunk {i}");
            assert!(f.header.flags.contains(Flags::ACCEPT_DEFLATE));
            assert_eq!(f.header.request_id, 5);
        }
        let lens: Vec<usize> = frames.iter().map(|f| f.payload.len()).collect();
        assert_eq!(lens, [CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE, 8 * 1024]);
        let mut d = MessageDecoder::new(1 << 20);
        d.push(&wire);
        let m = message(d.next().unwrap().unwrap());
        assert_eq!(m.body, body);
        assert_eq!(m.wire_len, expected_wire);
        assert!(m.accept_deflate && !m.compressed);
        assert!(!d.mid_message());
    }

    #[test]
    fn exact_multiple_of_chunk_has_no_empty_tail() {
        let mut q = OutQueue::new();
        q.push(
            FrameKind::Request,
            1,
            Flags::empty(),
            pattern(2 * CHUNK_SIZE),
        );
        q.push(FrameKind::Request, 2, Flags::empty(), pattern(CHUNK_SIZE));
        q.push(FrameKind::Cancel, 3, Flags::empty(), Bytes::new());
        let frames = all_frames(&drain(&mut q, usize::MAX));
        let shape: Vec<(u64, usize, bool)> = frames
            .iter()
            .map(|f| {
                (
                    f.header.request_id,
                    f.payload.len(),
                    f.header.flags.contains(Flags::MORE),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                (2, CHUNK_SIZE, false),
                // CHUNK_SIZE bytes of small messages went since the last
                // chunk: the large message gets its turn first.
                (1, CHUNK_SIZE, true),
                (3, 0, false),
                (1, CHUNK_SIZE, false)
            ]
        );
    }

    #[test]
    fn small_message_overtakes_large_one() {
        let mut q = OutQueue::new();
        q.push(FrameKind::Response, 1, Flags::empty(), pattern(1 << 20));
        // The large message starts going out (its header, then its
        // payload uncopied)...
        let header = q.poll(1).unwrap();
        assert_eq!(header.len(), HEADER_LEN);
        let mut first = header.to_vec();
        first.extend_from_slice(&q.poll(1).unwrap());
        assert_eq!(first.len(), HEADER_LEN + CHUNK_SIZE);
        // ...then a small one is queued: it goes before the 2nd chunk.
        q.push(
            FrameKind::Response,
            2,
            Flags::empty(),
            Bytes::from_static(b"small"),
        );
        let mut wire = first.to_vec();
        wire.extend(drain(&mut q, 256 * 1024));
        let frames = all_frames(&wire);
        assert_eq!(frames.len(), 17);
        assert_eq!(frames[1].header.request_id, 2);
        assert_eq!(frames[2].header.request_id, 1);
        // The decoder yields the small message first, then the large one whole.
        let mut d = MessageDecoder::new(2 << 20);
        d.push(&wire);
        let got = decode_all(&mut d).unwrap();
        assert_eq!(message(got[0].clone()).body, Bytes::from_static(b"small"));
        assert_eq!(message(got[1].clone()).body, pattern(1 << 20));
    }

    #[test]
    fn small_messages_pushed_first_go_first_and_fairness_holds() {
        let mut q = OutQueue::new();
        q.push(FrameKind::Request, 1, Flags::empty(), pattern(300 * 1024));
        for id in 10..200u64 {
            q.push(FrameKind::Request, id, Flags::empty(), pattern(1000));
        }
        let frames = all_frames(&drain(&mut q, 8 * 1024));
        // Between two chunks of message 1 at most CHUNK_SIZE bytes of small messages.
        let mut since = 0;
        let mut chunks_seen = 0;
        for f in &frames {
            if f.header.request_id == 1 {
                chunks_seen += 1;
                since = 0;
            } else {
                since += HEADER_LEN + f.payload.len();
                assert!(since < CHUNK_SIZE + HEADER_LEN + 1000);
            }
        }
        assert_eq!(chunks_seen, 5);
        // Small ones in FIFO order.
        let ids: Vec<u64> = frames
            .iter()
            .map(|f| f.header.request_id)
            .filter(|&i| i != 1)
            .collect();
        assert_eq!(ids, (10..200).collect::<Vec<_>>());
    }

    #[test]
    fn same_id_keeps_order() {
        let mut q = OutQueue::new();
        q.push(FrameKind::Request, 1, Flags::empty(), pattern(100 * 1024));
        q.push(FrameKind::Cancel, 1, Flags::empty(), Bytes::new());
        q.push(FrameKind::Request, 2, Flags::empty(), pattern(10));
        let frames = all_frames(&drain(&mut q, 1));
        let shape: Vec<(u64, FrameKind)> = frames
            .iter()
            .map(|f| (f.header.request_id, f.header.kind))
            .collect();
        assert_eq!(
            shape,
            [
                (2, FrameKind::Request),
                (1, FrameKind::Request),
                (1, FrameKind::Request),
                (1, FrameKind::Cancel)
            ]
        );
    }

    #[test]
    fn earlier_small_message_of_same_id_goes_before_large_one_starts() {
        let mut q = OutQueue::new();
        // Uses up the small-message budget, so the large message is due next...
        q.push(FrameKind::Request, 5, Flags::empty(), pattern(CHUNK_SIZE));
        q.push(FrameKind::Request, 1, Flags::empty(), pattern(10));
        q.push(
            FrameKind::Request,
            1,
            Flags::empty(),
            pattern(CHUNK_SIZE + 1),
        );
        let frames = all_frames(&drain(&mut q, 1));
        let shape: Vec<(u64, usize)> = frames
            .iter()
            .map(|f| (f.header.request_id, f.payload.len()))
            .collect();
        // ...but the small message of its id, pushed before it, goes first.
        assert_eq!(shape, [(5, CHUNK_SIZE), (1, 10), (1, CHUNK_SIZE), (1, 1)]);
        let mut d = MessageDecoder::new(1 << 20);
        d.push(&drain_frames(&frames));
        let got = decode_all(&mut d).unwrap();
        assert_eq!(got.len(), 3);
    }

    fn drain_frames(frames: &[Frame]) -> Vec<u8> {
        let mut b = BytesMut::new();
        for f in frames {
            f.encode(&mut b);
        }
        b.to_vec()
    }

    #[test]
    fn poll_respects_max_bytes() {
        let mut q = OutQueue::new();
        for id in 0..10 {
            q.push(FrameKind::Request, id, Flags::empty(), pattern(100));
        }
        let b = q.poll(3 * 116 + 50).unwrap();
        assert_eq!(b.len(), 3 * 116);
        let b = q.poll(0).unwrap();
        assert_eq!(b.len(), 116);
        assert_eq!(q.len(), 6);
        assert_eq!(q.queued_bytes(), 6 * 116);
    }

    #[test]
    fn cancel_drops_unstarted_only() {
        let mut q = OutQueue::new();
        q.push(FrameKind::Request, 1, Flags::empty(), pattern(200 * 1024));
        q.push(FrameKind::Request, 2, Flags::empty(), pattern(200 * 1024));
        q.push(FrameKind::Request, 3, Flags::empty(), pattern(10));
        assert!(q.contains(3));
        assert!(q.cancel(3));
        assert!(!q.contains(3));
        assert!(!q.cancel(3));
        assert!(!q.cancel(99));
        // Start message 1, then cancel it and 2.
        let mut wire = q.poll(1).unwrap().to_vec();
        assert!(q.mid_message(), "its header is out");
        assert!(q.contains(1));
        wire.extend_from_slice(&q.poll(1).unwrap());
        assert!(q.mid_message());
        assert!(!q.cancel(1));
        assert!(q.cancel(2));
        assert_eq!(q.queued_bytes(), 200 * 1024 - CHUNK_SIZE + 3 * HEADER_LEN);
        assert!(q.contains(1));
        wire.extend(drain(&mut q, usize::MAX));
        assert!(!q.mid_message());
        assert!(!q.contains(1));
        let mut d = MessageDecoder::new(1 << 20);
        d.push(&wire);
        let got = decode_all(&mut d).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(message(got[0].clone()).body, pattern(200 * 1024));
    }

    #[test]
    fn oversize_by_chunks_is_discarded_then_stream_continues() {
        let limit = 150 * 1024;
        let mut q = OutQueue::new();
        q.push(FrameKind::Request, 1, Flags::empty(), pattern(1 << 20));
        q.push(FrameKind::Request, 2, Flags::empty(), pattern(100 * 1024));
        let wire = drain(&mut q, usize::MAX);
        let mut d = MessageDecoder::new(limit);
        let mut got = Vec::new();
        let mut max_cap = 0;
        for piece in wire.chunks(4096) {
            d.push(piece);
            while let Some(m) = d.next().unwrap() {
                got.push(m);
            }
            max_cap = max_cap.max(d.capacity());
        }
        assert_eq!(
            got[0],
            Decoded::Oversize {
                kind: FrameKind::Request,
                request_id: 1,
                limit
            }
        );
        assert_eq!(got.len(), 2);
        assert_eq!(message(got[1].clone()).body, pattern(100 * 1024));
        // Never more than one block plus one frame plus slack.
        assert!(
            max_cap <= limit + 2 * (HEADER_LEN + CHUNK_SIZE) + GROWTH_SLACK,
            "{max_cap}"
        );
        assert!(!d.mid_message());
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn deflate_bomb_is_oversize_with_small_memory() {
        // 100 MiB of zeros at the best ratio deflate offers (about 1000:1).
        let zeros = vec![0u8; 100 << 20];
        let bomb = Bytes::from(miniz_oxide::deflate::compress_to_vec(&zeros, 9));
        drop(zeros);
        assert!(bomb.len() > CHUNK_SIZE && bomb.len() < 2 * CHUNK_SIZE);
        let limit = 1 << 20;
        let mut q = OutQueue::new();
        q.push(FrameKind::Request, 1, Flags::COMPRESSED, bomb.clone());
        q.push(
            FrameKind::Request,
            2,
            Flags::empty(),
            Bytes::from_static(b"after"),
        );
        let wire = drain(&mut q, 64 * 1024);
        let mut d = MessageDecoder::new(limit);
        let mut got = Vec::new();
        let mut max_cap = 0;
        for piece in wire.chunks(16 * 1024) {
            d.push(piece);
            while let Some(m) = d.next().unwrap() {
                got.push(m);
            }
            max_cap = max_cap.max(d.capacity());
        }
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.contains(&Decoded::Oversize {
            kind: FrameKind::Request,
            request_id: 1,
            limit
        }));
        assert!(max_cap <= bomb.len() * 2 + 2 * GROWTH_SLACK, "{max_cap}");
        assert_eq!(d.capacity(), d.frames.capacity());
    }

    #[test]
    fn compressed_round_trip_byte_by_byte() {
        // Pseudo-random words: compresses about 3x, still several chunks.
        let words = [
            "peer ", "stream ", "request ", "a ", "of ", "closest ", "node ",
        ];
        let mut x = 1u64;
        let mut text = Vec::new();
        while text.len() < 600_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.extend_from_slice(words[(x >> 33) as usize % words.len()].as_bytes());
        }
        let c = compress::compress(&text, compress::DEFAULT_THRESHOLD).unwrap();
        assert!(c.len() > CHUNK_SIZE, "{}", c.len());
        let mut q = OutQueue::new();
        q.push(FrameKind::Response, 8, Flags::COMPRESSED, c.clone());
        q.push(
            FrameKind::Request,
            9,
            Flags::COMPRESSED,
            compress::compress(&text[..2000], 0).unwrap(),
        );
        let wire = drain(&mut q, 100_000);
        let mut d = MessageDecoder::new(1 << 20);
        let mut got = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(m) = d.next().unwrap() {
                got.push(message(m));
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].request_id, &got[0].body[..]), (9, &text[..2000]));
        let m = &got[1];
        assert!(m.compressed && m.request_id == 8);
        assert_eq!(&m.body[..], &text[..]);
        assert_eq!(m.wire_len, HEADER_LEN * frames_for(c.len()) + c.len());
    }

    #[test]
    fn single_frame_payload_is_zero_copy() {
        let wire = [
            frame(FrameKind::Request, Flags::empty(), 1, b"hello"),
            frame(FrameKind::Request, Flags::empty(), 2, b"world"),
        ]
        .concat();
        let mut d = MessageDecoder::new(1 << 20);
        d.push(&wire);
        let base = d.frames.buf.as_ptr() as usize;
        let a = message(d.next().unwrap().unwrap());
        let b = message(d.next().unwrap().unwrap());
        assert_eq!(a.body.as_ptr() as usize, base + HEADER_LEN);
        assert_eq!(b.body.as_ptr() as usize, base + 2 * HEADER_LEN + 5);
        assert_eq!(d.next(), Ok(None));
        assert!(!d.mid_message());
    }

    #[test]
    fn mid_message_and_buffered() {
        let wire = frame(FrameKind::Request, Flags::empty(), 1, &[1; 100]);
        let mut d = MessageDecoder::new(1 << 20);
        assert!(!d.mid_message());
        d.push(&wire[..3]);
        assert_eq!(d.next(), Ok(None));
        assert!(d.mid_message());
        assert_eq!(d.buffered(), 3);
        d.push(&wire[3..50]);
        assert_eq!(d.next(), Ok(None));
        assert_eq!(d.buffered(), 50 - HEADER_LEN);
        // The rest of the frame was reserved exactly once the header was known.
        assert!(d.capacity() >= 100);
        d.push(&wire[50..]);
        assert!(d.next().unwrap().is_some());
        assert!(!d.mid_message());
    }

    #[test]
    fn cancel_payload_and_empty_bodies() {
        let mut d = MessageDecoder::new(16);
        d.push(&frame(FrameKind::Cancel, Flags::empty(), 3, b""));
        d.push(&frame(FrameKind::Cancel, Flags::empty(), 4, b"ignored"));
        let got = decode_all(&mut d).unwrap();
        assert_eq!(message(got[0].clone()).body.len(), 0);
        assert_eq!(message(got[1].clone()).kind, FrameKind::Cancel);
    }

    #[test]
    fn error_bodies() {
        let b = encode_error_body(ErrorCode::Busy, "try later");
        assert_eq!(&b[..], b"\x01try later");
        assert_eq!(
            decode_error_body(&b),
            (ErrorCode::Busy, "try later".to_string())
        );
        assert_eq!(
            decode_error_body(&[]),
            (ErrorCode::Unknown(0), String::new())
        );
        assert_eq!(
            decode_error_body(&[200, 0xff, b'x']),
            (ErrorCode::Unknown(200), "\u{fffd}x".to_string())
        );
        for b in 0..=255u8 {
            assert_eq!(ErrorCode::from_u8(b).to_u8(), b);
        }
        assert_eq!(u8::from(ErrorCode::Timeout), 8);
        assert_eq!(ErrorCode::from(7), ErrorCode::Forbidden);
    }

    #[test]
    fn frame_buffer_is_sized_exactly_for_the_frame() {
        // Found by proptest: a push just short of a frame used to double the buffer.
        let wire = frame(FrameKind::Request, Flags::empty(), 0, &pattern(66_805));
        let mut d = FrameDecoder::new(70_000);
        d.push(&wire[..65_569]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.capacity(), 66_805);
        d.push(&wire[65_569..]);
        assert_eq!(d.next_frame().unwrap().unwrap().payload, pattern(66_805));
    }

    #[test]
    fn frame_decoder_skip_drops_bytes_without_buffering() {
        let mut d = FrameDecoder::new(1 << 20);
        d.push(&header(FrameKind::Request, Flags::empty(), 1, 100_000));
        assert!(d.poll_header().unwrap().is_some());
        d.skip_payload();
        d.push(&[0; 60_000]);
        assert_eq!(d.buffered(), 0);
        let next = frame(FrameKind::Request, Flags::empty(), 2, b"x");
        let mut tail = vec![0; 40_000];
        tail.extend_from_slice(&next);
        d.push(&tail);
        assert_eq!(d.buffered(), next.len());
        assert_eq!(d.next_frame().unwrap().unwrap().header.request_id, 2);
    }
}
