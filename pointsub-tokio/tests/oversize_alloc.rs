//! An oversize body is refused on either side without the refusing side
//! ever allocating room for it. A counting allocator watches the largest
//! single allocation the process makes while the oversize request runs
//! (this file is its own test binary, so no other test allocates then):
//! it may reach the limit, never the body's size.
#![cfg(feature = "tokio-runtime")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use pointsub_tokio::libp2p::multiaddr::Protocol;
use pointsub_tokio::proto::error::Side;
use pointsub_tokio::{
    Client, ClientConfig, Multiaddr, Node, NodeConfig, RequestError, Server, ServerConfig,
};

struct Watch;

static ARMED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Watch = Watch;

const LIMIT: usize = 1024 * 1024;
const HUGE: usize = 16 * 1024 * 1024;

/// Runs `f` with the watch armed; returns its output and the largest
/// allocation seen.
async fn watched<F: std::future::Future>(f: F) -> (F::Output, usize) {
    LARGEST.store(0, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
    let out = f.await;
    ARMED.store(false, Ordering::SeqCst);
    (out, LARGEST.load(Ordering::SeqCst))
}

fn tcp() -> NodeConfig {
    let addr = Multiaddr::empty()
        .with(Protocol::Ip4(Ipv4Addr::LOCALHOST))
        .with(Protocol::Tcp(0));
    NodeConfig::default().with_listen_addrs([addr])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_are_refused_without_allocating_them() {
    let test = async {
        let a = Node::new(tcp()).await.expect("node a");
        let b = Node::new(tcp()).await.expect("node b");
        for addr in b.listen_addrs() {
            a.add_address(b.peer_id(), addr);
        }
        // Incompressible and allocated before the watch starts; handlers
        // hand out clones (no allocation).
        let huge: Bytes = (0..HUGE as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect::<Vec<u8>>()
            .into();
        let server = Server::new(
            &b,
            ServerConfig::default()
                .with_max_block_size(LIMIT)
                .with_compression(false),
        )
        .expect("server");
        server
            .start("/sink", |_p, _b: Bytes| async move {
                Ok::<_, String>(Bytes::new())
            })
            .expect("start");
        let big = huge.clone();
        let unlimited =
            Server::new(&b, ServerConfig::default().with_compression(false)).expect("server");
        unlimited
            .start("/source", move |_p, _b: Bytes| {
                let big = big.clone();
                async move { Ok::<_, String>(big) }
            })
            .expect("start");
        let client = Client::new(
            &a,
            ClientConfig::default()
                .with_max_block_size(LIMIT)
                .with_compression(false)
                .with_max_retries(0),
        )
        .expect("client");
        let sender = Client::new(
            &a,
            ClientConfig::default()
                .with_compression(false)
                .with_max_retries(0),
        )
        .expect("client");
        // Warm up connection and streams so their buffers exist already.
        sender
            .send(b.peer_id(), "/sink", Bytes::from("warm"))
            .await
            .expect("warm");
        client
            .send(b.peer_id(), "/sink", Bytes::from("warm"))
            .await
            .expect("warm");

        // Request larger than the server's limit.
        let (result, largest) = watched(sender.send(b.peer_id(), "/sink", huge.clone())).await;
        let err = result.expect_err("server refuses");
        assert!(
            matches!(
                err,
                RequestError::Oversize {
                    side: Side::Remote,
                    limit: LIMIT,
                    ..
                }
            ),
            "{err:?}"
        );
        // Reassembly may grow to the limit (the wire does not announce a
        // chunked message's total size), never past it.
        assert!(
            largest <= LIMIT,
            "largest allocation {largest} B while refusing a {HUGE} B request"
        );

        // Response larger than the client's limit.
        let (result, largest) =
            watched(client.send(b.peer_id(), "/source", Bytes::from("give"))).await;
        let err = result.expect_err("client refuses");
        assert!(
            matches!(
                err,
                RequestError::Oversize {
                    side: Side::Local,
                    limit: LIMIT,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            largest <= LIMIT,
            "largest allocation {largest} B while refusing a {HUGE} B response"
        );
    };
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("test timed out");
}
