//! The ceiling: echo of `u32` BE length-prefixed frames over plain tokio
//! TCP (nodelay), no encryption, no multiplexing, over up to
//! [`CONNECTIONS`] connections.
//!
//! In-flight task `slot` uses connection `slot % min(in_flight, 100)`. Up
//! to 100 in flight each task has a connection to itself and sends one
//! request at a time on it; above 100, the tasks sharing a connection
//! pipeline their requests on it (one writer task batching frames, one
//! reader task matching responses in order). The server echoes each frame,
//! flushing once it has no further request buffered.

use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::codec::check_len;
use super::stats::Failure;
use super::{Case, Instance, MAX_BODY, System};
use crate::bench::BoxError;

/// The registry entry.
pub const SYSTEM: System = System {
    name: "raw-tcp",
    describe,
    start: |case| start(case).boxed(),
};

/// Most connections the client opens.
pub const CONNECTIONS: usize = 100;

/// Socket buffers in user space, both sides.
const BUF: usize = 64 * 1024;

fn describe() -> String {
    format!(
        "tokio TcpStream (nodelay), u32 BE length-prefixed echo, no encryption, \
         min(in_flight, {CONNECTIONS}) connections: one request at a time per connection \
         up to {CONNECTIONS} in flight, pipelined above."
    )
}

/// Reads one frame's body into `buf` (resized to it).
async fn read_frame_into<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<()> {
    let len = r.read_u32().await? as usize;
    check_len(len, MAX_BODY)?;
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(())
}

/// Buffers one frame into `w` (not flushed).
async fn write_frame<W: AsyncWrite + Unpin>(w: &mut BufWriter<W>, body: &[u8]) -> io::Result<()> {
    w.write_u32(check_len(body.len(), MAX_BODY)?).await?;
    w.write_all(body).await
}

async fn read_reply<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Bytes> {
    let mut buf = Vec::new();
    read_frame_into(r, &mut buf).await?;
    Ok(buf.into())
}

/// One connection of the server: echo until the client goes away.
async fn echo(stream: TcpStream) -> io::Result<()> {
    let (r, w) = stream.into_split();
    let mut r = BufReader::with_capacity(BUF, r);
    let mut w = BufWriter::with_capacity(BUF, w);
    let mut body = Vec::new();
    loop {
        match read_frame_into(&mut r, &mut body).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        write_frame(&mut w, &body).await?;
        if r.buffer().is_empty() {
            w.flush().await?;
        }
    }
}

async fn accept_loop(listener: TcpListener) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(echo(stream));
                }
                Err(e) => {
                    eprintln!("raw-tcp: accept failed: {e}");
                    return;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Dropping `conns` (when this task is aborted) aborts every connection.
}

/// A connection owned by one task at a time.
struct Exclusive {
    r: BufReader<OwnedReadHalf>,
    w: BufWriter<OwnedWriteHalf>,
}

/// A connection shared by several tasks, pipelined.
struct Pipelined {
    requests: mpsc::UnboundedSender<(Bytes, Reply)>,
}

type Reply = oneshot::Sender<io::Result<Bytes>>;

enum Conns {
    Exclusive(Vec<tokio::sync::Mutex<Exclusive>>),
    Pipelined(Vec<Pipelined>),
}

struct RawTcp {
    conns: Conns,
    /// The server's accept loop and, when pipelined, the client's
    /// connection tasks; dropped (aborted) on shutdown.
    tasks: Mutex<JoinSet<()>>,
}

async fn start(case: Case) -> Result<Arc<dyn Instance>, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut tasks = JoinSet::new();
    tasks.spawn(accept_loop(listener));
    let n = case.in_flight.clamp(1, CONNECTIONS);
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        streams.push(stream);
    }
    let conns = if case.in_flight <= CONNECTIONS {
        Conns::Exclusive(
            streams
                .into_iter()
                .map(|s| {
                    let (r, w) = s.into_split();
                    tokio::sync::Mutex::new(Exclusive {
                        r: BufReader::with_capacity(BUF, r),
                        w: BufWriter::with_capacity(BUF, w),
                    })
                })
                .collect(),
        )
    } else {
        Conns::Pipelined(
            streams
                .into_iter()
                .map(|s| {
                    let (r, w) = s.into_split();
                    let (requests, rx) = mpsc::unbounded_channel();
                    let (replies_tx, replies_rx) = mpsc::unbounded_channel();
                    tasks.spawn(pipeline_writer(w, rx, replies_tx));
                    tasks.spawn(pipeline_reader(r, replies_rx));
                    Pipelined { requests }
                })
                .collect(),
        )
    };
    Ok(Arc::new(RawTcp {
        conns,
        tasks: Mutex::new(tasks),
    }))
}

/// Writes queued requests, a batch per flush; hands each reply slot to the
/// reader before its request goes out.
async fn pipeline_writer(
    w: OwnedWriteHalf,
    mut requests: mpsc::UnboundedReceiver<(Bytes, Reply)>,
    replies: mpsc::UnboundedSender<Reply>,
) {
    let mut w = BufWriter::with_capacity(BUF, w);
    while let Some(mut next) = requests.recv().await {
        loop {
            let (body, reply) = next;
            if replies.send(reply).is_err() {
                return;
            }
            if write_frame(&mut w, &body).await.is_err() {
                return;
            }
            match requests.try_recv() {
                Ok(more) => next = more,
                Err(_) => break,
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
}

/// Reads responses in order and answers the reply slots in the same order.
async fn pipeline_reader(r: OwnedReadHalf, mut replies: mpsc::UnboundedReceiver<Reply>) {
    let mut r = BufReader::with_capacity(BUF, r);
    while let Some(reply) = replies.recv().await {
        let result = read_reply(&mut r).await;
        let failed = result.is_err();
        let _ = reply.send(result);
        if failed {
            return;
        }
    }
}

impl Instance for RawTcp {
    fn request(&self, slot: usize, body: Bytes) -> BoxFuture<'_, Result<Bytes, Failure>> {
        let fail = |e: io::Error| Failure::from(format!("{:?}", e.kind()));
        match &self.conns {
            Conns::Exclusive(conns) => async move {
                let mut conn = conns[slot % conns.len()].lock().await;
                let Exclusive { r, w } = &mut *conn;
                write_frame(w, &body).await.map_err(fail)?;
                w.flush().await.map_err(fail)?;
                read_reply(r).await.map_err(fail)
            }
            .boxed(),
            Conns::Pipelined(conns) => async move {
                let (reply, response) = oneshot::channel();
                conns[slot % conns.len()]
                    .requests
                    .send((body, reply))
                    .map_err(|_| Failure::from("connection closed"))?;
                match response.await {
                    Ok(result) => result.map_err(fail),
                    Err(_) => Err(Failure::from("connection closed")),
                }
            }
            .boxed(),
        }
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        async move {
            let mut tasks = tasks;
            tasks.shutdown().await;
        }
        .boxed()
    }
}
