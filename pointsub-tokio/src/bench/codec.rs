//! The plain bytes codec the request-response anchor uses: each request and
//! each response is one frame, a `u32` big-endian body length followed by
//! the body. A length over the limit is refused before anything is
//! allocated, on read and on write.

use std::io;

use crate::StreamProtocol;
use crate::libp2p::request_response;
use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bodies up to this size are written with their header in one write (one
/// copy, one muxer frame); larger ones are written as header then body.
const COALESCE_UP_TO: usize = 64 * 1024;

/// A `u32` BE length-prefixed bytes codec with a body size limit.
#[derive(Debug, Clone, Copy)]
pub struct LengthPrefixed {
    max_body: usize,
}

impl LengthPrefixed {
    /// A codec refusing bodies longer than `max_body` bytes.
    pub fn new(max_body: usize) -> Self {
        Self { max_body }
    }
}

/// `InvalidData` for a body of `len` bytes over `max`.
fn oversize(len: usize, max: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("body of {len} bytes exceeds the {max}-byte limit"),
    )
}

/// Checks `len` against `max` and that it fits the `u32` header.
pub fn check_len(len: usize, max: usize) -> io::Result<u32> {
    match u32::try_from(len) {
        Ok(n) if len <= max => Ok(n),
        _ => Err(oversize(len, max)),
    }
}

/// Reads one frame's body.
pub async fn read_frame<T>(io: &mut T, max_body: usize) -> io::Result<Bytes>
where
    T: AsyncRead + Unpin + Send,
{
    let mut header = [0u8; 4];
    io.read_exact(&mut header).await?;
    let len = u32::from_be_bytes(header) as usize;
    if len > max_body {
        return Err(oversize(len, max_body));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    Ok(Bytes::from(body))
}

/// Writes one frame and flushes it.
pub async fn write_frame<T>(io: &mut T, body: &[u8], max_body: usize) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let header = check_len(body.len(), max_body)?.to_be_bytes();
    if body.len() <= COALESCE_UP_TO {
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&header);
        frame.extend_from_slice(body);
        io.write_all(&frame).await?;
    } else {
        io.write_all(&header).await?;
        io.write_all(body).await?;
    }
    io.flush().await
}

impl request_response::Codec for LengthPrefixed {
    type Protocol = StreamProtocol;
    type Request = Bytes;
    type Response = Bytes;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Bytes>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_body).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Bytes>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_body).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Bytes,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req, self.max_body).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Bytes,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res, self.max_body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;
    use request_response::Codec;

    fn proto() -> StreamProtocol {
        StreamProtocol::new("/test/1")
    }

    #[test]
    fn round_trip_small_and_large() {
        block_on(async {
            let mut codec = LengthPrefixed::new(1 << 20);
            for len in [0, 1, 581, COALESCE_UP_TO, COALESCE_UP_TO + 1, 1 << 20] {
                let body = Bytes::from((0..len).map(|i| (i * 7) as u8).collect::<Vec<_>>());
                let mut wire = Cursor::new(Vec::new());
                codec
                    .write_request(&proto(), &mut wire, body.clone())
                    .await
                    .unwrap();
                let wire = wire.into_inner();
                assert_eq!(wire.len(), 4 + len);
                assert_eq!(&wire[..4], &(len as u32).to_be_bytes());
                let read = codec
                    .read_response(&proto(), &mut Cursor::new(wire))
                    .await
                    .unwrap();
                assert_eq!(read, body);
            }
        });
    }

    #[test]
    fn oversize_is_refused_both_ways() {
        block_on(async {
            let mut codec = LengthPrefixed::new(100);
            let mut wire = Cursor::new(Vec::new());
            let err = codec
                .write_response(&proto(), &mut wire, Bytes::from(vec![0; 101]))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(wire.into_inner().is_empty(), "nothing written");

            // A header claiming 4 GiB is refused without reading (or
            // allocating) the body.
            let mut wire = Cursor::new(u32::MAX.to_be_bytes().to_vec());
            let err = codec.read_request(&proto(), &mut wire).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains("exceeds"));
            assert_eq!(wire.position(), 4);

            // Exactly the limit is fine.
            let mut wire = Cursor::new(Vec::new());
            write_frame(&mut wire, &[1; 100], 100).await.unwrap();
            assert_eq!(
                read_frame(&mut Cursor::new(wire.into_inner()), 100)
                    .await
                    .unwrap()
                    .len(),
                100
            );
        });
    }

    #[test]
    fn truncated_frame_is_an_error() {
        block_on(async {
            let mut wire = Cursor::new(vec![0, 0, 0, 10, 1, 2, 3]);
            let err = read_frame(&mut wire, 100).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        });
    }
}
