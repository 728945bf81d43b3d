//! A tokio node and an async-std node in one process, each on its own
//! runtime, talking over loopback TCP: requests both ways, `send_closest`
//! over a set holding both kinds, and a raw `Conn` carrying 16 MiB each
//! way.
//!
//! The async-std side runs under `async_std::task::block_on` on the test
//! thread. Everything on the tokio side (creating its nodes, its servers'
//! handlers, its client calls, its end of the `Conn`) runs as tasks on a
//! separate multi-threaded tokio runtime, awaited from async-std through
//! their join handles.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use bytes::Bytes;
use common::{client_config, exchange, pattern};
use futures::future;
use pointsub_async_std::libp2p::multiaddr::Protocol;
use pointsub_async_std::{
    Client, ClosestOptions, Multiaddr, Node, NodeConfig, PeerId, RequestError, Server, ServerConfig,
};

/// Bytes sent each way over the raw stream.
const CONN_BYTES: usize = 16 << 20;

/// Runs `test` on async-std, bounded by [`common::within`].
fn run_on_async_std<F: Future>(test: F) -> F::Output {
    async_std::task::block_on(common::within(test))
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `task` on the tokio runtime; the returned future (awaited from
/// async-std) yields its output.
fn on_tokio<F>(rt: &tokio::runtime::Runtime, task: F) -> impl Future<Output = F::Output> + use<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = rt.spawn(task);
    async move { handle.await.expect("tokio task panicked") }
}

fn tcp_loopback() -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4(Ipv4Addr::LOCALHOST))
        .with(Protocol::Tcp(0))
}

/// A tokio node listening on loopback TCP only, created on `rt`.
async fn tokio_node(rt: &tokio::runtime::Runtime) -> pointsub_tokio::Node {
    let config = pointsub_tokio::NodeConfig::default().with_listen_addrs([tcp_loopback()]);
    on_tokio(rt, pointsub_tokio::Node::new(config))
        .await
        .expect("tokio node")
}

async fn async_std_node() -> Node {
    Node::new(NodeConfig::default())
        .await
        .expect("async-std node")
}

/// The peer id and listen addresses of a node, of either kind.
type Addressed = (PeerId, Vec<Multiaddr>);

fn addressed_tokio(node: &pointsub_tokio::Node) -> Addressed {
    (node.peer_id(), node.listen_addrs())
}

fn addressed(node: &Node) -> Addressed {
    (node.peer_id(), node.listen_addrs())
}

#[test]
fn requests_both_ways() {
    let rt = tokio_runtime();
    run_on_async_std(async {
        const PROTOCOL: &str = "/interop/echo/1";
        let t = tokio_node(&rt).await;
        let a = async_std_node().await;
        let (t_id, t_addrs) = addressed_tokio(&t);
        let (a_id, a_addrs) = addressed(&a);
        for addr in t_addrs {
            a.add_address(t_id, addr);
        }
        for addr in a_addrs {
            t.add_address(a_id, addr);
        }

        // A server on each side tags its answers with its runtime.
        let t_server = pointsub_tokio::Server::new(&t, ServerConfig::default()).expect("server");
        t_server
            .start(PROTOCOL, |_peer, body: Bytes| async move {
                // A tokio timer: this handler really runs on tokio.
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok::<_, String>(Bytes::from([b"tokio:", &body[..]].concat()))
            })
            .expect("start");
        t_server
            .start("/interop/fail/1", |peer, _body| async move {
                Err::<Bytes, _>(format!("tokio refuses {peer}"))
            })
            .expect("start");
        let a_server = Server::new(&a, ServerConfig::default()).expect("server");
        a_server
            .start(PROTOCOL, |_peer, body: Bytes| async move {
                Ok::<_, String>(Bytes::from([b"async-std:", &body[..]].concat()))
            })
            .expect("start");

        // async-std -> tokio, 50 requests in flight.
        let a_client = Client::new(&a, client_config()).expect("client");
        let replies = future::join_all((0..50u32).map(|i| {
            let client = a_client.clone();
            async move {
                (
                    i,
                    client
                        .send(t_id, PROTOCOL, Bytes::from(i.to_string()))
                        .await,
                )
            }
        }))
        .await;
        for (i, reply) in replies {
            assert_eq!(reply.expect("a -> t"), format!("tokio:{i}").as_bytes());
        }

        // tokio -> async-std, 50 requests in flight, sent from tokio tasks.
        let t_client = pointsub_tokio::Client::new(&t, client_config()).expect("client");
        let sends = (0..50u32).map(|i| {
            let client = t_client.clone();
            on_tokio(&rt, async move {
                (
                    i,
                    client
                        .send(a_id, PROTOCOL, Bytes::from(i.to_string()))
                        .await,
                )
            })
        });
        for (i, reply) in future::join_all(sends).await {
            assert_eq!(reply.expect("t -> a"), format!("async-std:{i}").as_bytes());
        }

        // A handler error on tokio reaches the async-std caller verbatim.
        let err = a_client
            .send(t_id, "/interop/fail/1", Bytes::from_static(b"x"))
            .await
            .expect_err("handler error");
        assert_eq!(err, RequestError::Handler(format!("tokio refuses {a_id}")));

        assert_eq!(a_client.metrics().succeeded, 50);
        assert_eq!(t_client.metrics().succeeded, 50);
        assert_eq!(a_server.metrics().succeeded, 50);
        assert_eq!(t_server.metrics().succeeded, 50);
        assert!(a_client.connections_info().iter().all(|c| c.peer == t_id));
        assert!(t_client.connections_info().iter().all(|c| c.peer == a_id));

        let stopped = t_server.clone();
        on_tokio(&rt, async move { stopped.stop().await }).await;
        a_server.stop().await;
    });
}

#[test]
fn send_closest_across_both() {
    const PROTOCOL: &str = "/interop/closest/1";
    const KEYS: u32 = 16;
    let rt = tokio_runtime();
    run_on_async_std(async {
        // Two server nodes, one of each kind, answering with their own id.
        let t = tokio_node(&rt).await;
        let a = async_std_node().await;
        let t_server = pointsub_tokio::Server::new(&t, ServerConfig::default()).expect("server");
        let t_id = t.peer_id();
        t_server
            .start(PROTOCOL, move |_peer, _body| async move {
                Ok::<_, String>(Bytes::from(t_id.to_bytes()))
            })
            .expect("start");
        let a_server = Server::new(&a, ServerConfig::default()).expect("server");
        let a_id = a.peer_id();
        a_server
            .start(PROTOCOL, move |_peer, _body| async move {
                Ok::<_, String>(Bytes::from(a_id.to_bytes()))
            })
            .expect("start");
        let servers = [addressed_tokio(&t), addressed(&a)];

        // A client of each kind, both routing over {t, a}.
        let ca = async_std_node().await;
        let ct = tokio_node(&rt).await;
        for (id, addrs) in &servers {
            for addr in addrs {
                ca.add_address(*id, addr.clone());
                ct.add_address(*id, addr.clone());
            }
        }
        let a_client = Client::new(&ca, client_config()).expect("client");
        let t_client = pointsub_tokio::Client::new(&ct, client_config()).expect("client");
        for (id, _) in &servers {
            a_client.add_server_node(PROTOCOL, *id).expect("add");
            t_client.add_server_node(PROTOCOL, *id).expect("add");
        }

        let mut answered = BTreeSet::new();
        let mut routed_to_t = None;
        for i in 0..KEYS {
            let key = Bytes::from(format!("key-{i}"));
            let from_a = a_client
                .send_closest(PROTOCOL, key.clone())
                .await
                .expect("closest");
            let client = t_client.clone();
            let k = key.clone();
            let from_t = on_tokio(&rt, async move { client.send_closest(PROTOCOL, k).await })
                .await
                .expect("closest");
            // Same core, same routing, whatever the runtime.
            assert_eq!(from_a.peer, from_t.peer, "{key:?}");
            assert_eq!(from_a.body, from_a.peer.to_bytes());
            assert_eq!(from_t.body, from_t.peer.to_bytes());
            answered.insert(from_a.peer);
            if from_a.peer == t_id {
                routed_to_t = Some(key);
            }
        }
        assert_eq!(
            answered,
            BTreeSet::from([t_id, a_id]),
            "keys reach both kinds"
        );

        // The tokio server stops: its keys fail over to the async-std node.
        let key = routed_to_t.expect("some key routes to the tokio node");
        let stopped = t_server.clone();
        on_tokio(&rt, async move { stopped.stop().await }).await;
        let after = a_client
            .send_closest_with(
                PROTOCOL,
                key,
                ClosestOptions::default().with_timeout(Duration::from_secs(10)),
            )
            .await
            .expect("failover");
        assert_eq!(after.peer, a_id);
    });
}

#[test]
fn conn_16_mib_each_way() {
    const PROTOCOL: &str = "/interop/conn/1";
    let rt = tokio_runtime();
    run_on_async_std(async {
        let t = tokio_node(&rt).await;
        let a = async_std_node().await;
        let (t_id, t_addrs) = addressed_tokio(&t);
        for addr in t_addrs {
            a.add_address(t_id, addr);
        }
        let a_id = a.peer_id();

        // The tokio end: accept one Conn, send 16 MiB, read 16 MiB.
        let mut listener = t.listen(PROTOCOL).expect("listen");
        let tokio_end = on_tokio(&rt, async move {
            let conn = listener.accept().await.expect("accept");
            assert_eq!(conn.peer(), a_id);
            exchange(conn, &pattern(1, CONN_BYTES)).await
        });

        // The async-std end dials and does the same.
        let conn = a.dial(t_id, PROTOCOL).await.expect("dial");
        assert_eq!(conn.peer(), t_id);
        let data = pattern(2, CONN_BYTES);
        let async_std_end = exchange(conn, &data);

        let (at_tokio, at_async_std) = futures::join!(tokio_end, async_std_end);
        let at_tokio = at_tokio.expect("tokio end");
        let at_async_std = at_async_std.expect("async-std end");
        assert_eq!(at_tokio.len(), CONN_BYTES);
        assert_eq!(at_async_std.len(), CONN_BYTES);
        assert!(
            at_tokio == pattern(2, CONN_BYTES),
            "tokio read corrupted bytes"
        );
        assert!(
            at_async_std == pattern(1, CONN_BYTES),
            "async-std read corrupted bytes"
        );
        drop(t);
    });
}
