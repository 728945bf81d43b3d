//! The async-io TCP transport on real loopback sockets, raw and under a
//! noise + yamux swarm. Every test is bounded by [`common::bounded`].

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Context;
use std::time::Duration;

use common::bounded;
use futures::StreamExt;
use futures::future::poll_fn;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::task::ArcWake;
use libp2p::core::transport::{
    DialOpts, ListenerId, PortUse, Transport, TransportError, TransportEvent,
};
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::identity::Keypair;
use libp2p::multiaddr::{Multiaddr, Protocol};
use libp2p::swarm::{SwarmEvent, dummy};
use pointsub_async_std::AsyncStdRuntime;
use pointsub_async_std::transport::{Config, TcpStream, TcpTransport, build_swarm};

type Event = TransportEvent<<TcpTransport as Transport>::ListenerUpgrade, std::io::Error>;

async fn next_event(t: &mut TcpTransport) -> Event {
    poll_fn(|cx| Pin::new(&mut *t).poll(cx)).await
}

fn opts() -> DialOpts {
    DialOpts {
        role: Endpoint::Dialer,
        port_use: PortUse::New,
    }
}

fn ma(s: &str) -> Multiaddr {
    s.parse().expect("valid multiaddr literal")
}

fn to_ma(addr: std::net::SocketAddr) -> Multiaddr {
    Multiaddr::empty()
        .with(addr.ip().into())
        .with(Protocol::Tcp(addr.port()))
}

fn tcp_port(addr: &Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        Protocol::Tcp(port) => Some(port),
        _ => None,
    })
}

/// Expects `NewAddress` for `id` next and returns the address.
async fn new_address(t: &mut TcpTransport, id: ListenerId) -> Multiaddr {
    match bounded("NewAddress", next_event(t)).await {
        TransportEvent::NewAddress {
            listener_id,
            listen_addr,
        } => {
            assert_eq!(listener_id, id);
            listen_addr
        }
        other => panic!("expected NewAddress, got {other:?}"),
    }
}

/// Dials `addr` while accepting on `listener`; returns (dialed, accepted).
async fn connect(
    listener: &mut TcpTransport,
    id: ListenerId,
    addr: &Multiaddr,
) -> (TcpStream, TcpStream) {
    let mut dialer = TcpTransport::default();
    let dial = dialer
        .dial(addr.clone(), opts())
        .expect("tcp address is dialable");
    // A wildcard listener may still be reporting interface addresses.
    let accept = async {
        loop {
            match next_event(listener).await {
                TransportEvent::NewAddress { listener_id, .. } if listener_id == id => {}
                other => break other,
            }
        }
    };
    let (event, dialed) = bounded("dial + accept", async { futures::join!(accept, dial) }).await;
    let dialed = dialed.expect("dial succeeds");
    let TransportEvent::Incoming {
        listener_id,
        upgrade,
        local_addr,
        send_back_addr,
    } = event
    else {
        panic!("expected Incoming, got {event:?}");
    };
    assert_eq!(listener_id, id);
    assert_eq!(local_addr, to_ma(dialed.peer_addr().expect("peer addr")));
    assert_eq!(
        send_back_addr,
        to_ma(dialed.local_addr().expect("local addr"))
    );
    let accepted = upgrade.await.expect("listener upgrade is ready");
    (dialed, accepted)
}

/// Bytes both ways, then a close that the peer sees as end-of-file.
async fn exchange(mut dialed: TcpStream, mut accepted: TcpStream) {
    assert!(
        dialed.nodelay().expect("nodelay"),
        "dialed socket has TCP_NODELAY"
    );
    assert!(
        accepted.nodelay().expect("nodelay"),
        "accepted socket has TCP_NODELAY"
    );
    bounded("exchange", async {
        dialed.write_all(b"ping from dialer").await.expect("write");
        let mut buf = [0u8; 16];
        accepted.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping from dialer");

        accepted.write_all(b"pong").await.expect("write");
        let mut buf = [0u8; 4];
        dialed.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"pong");

        dialed.close().await.expect("close");
        let mut rest = Vec::new();
        accepted.read_to_end(&mut rest).await.expect("read to eof");
        assert!(rest.is_empty(), "nothing after the ping: {rest:?}");
    })
    .await;
}

async fn roundtrip(listen: &str) -> Result<(), TransportError<std::io::Error>> {
    let mut listener = TcpTransport::default();
    let id = ListenerId::next();
    listener.listen_on(id, ma(listen))?;
    let addr = new_address(&mut listener, id).await;
    let port = tcp_port(&addr).expect("tcp address");
    assert_ne!(port, 0, "the real bound port is reported: {addr}");
    assert_eq!(
        addr.iter().next(),
        ma(listen).iter().next(),
        "same IP as asked"
    );
    let (dialed, accepted) = connect(&mut listener, id, &addr).await;
    exchange(dialed, accepted).await;
    Ok(())
}

#[test]
fn ipv4_loopback_roundtrip() {
    smol::block_on(roundtrip("/ip4/127.0.0.1/tcp/0")).expect("listen on 127.0.0.1");
}

#[test]
fn ipv6_loopback_roundtrip() {
    match smol::block_on(roundtrip("/ip6/::1/tcp/0")) {
        Ok(()) => {}
        Err(TransportError::Other(e)) => {
            println!("note: skipping ipv6_loopback_roundtrip, ::1 is unavailable: {e}");
        }
        Err(e) => panic!("unexpected error: {e:?}"),
    }
}

#[test]
fn listen_with_trailing_p2p_is_accepted() {
    smol::block_on(async {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let mut t = TcpTransport::default();
        let id = ListenerId::next();
        t.listen_on(id, ma(&format!("/ip4/127.0.0.1/tcp/0/p2p/{peer}")))
            .expect("p2p suffix ignored");
        let addr = new_address(&mut t, id).await;
        assert_eq!(
            addr.iter().count(),
            2,
            "reported without the suffix: {addr}"
        );
        // Dialing with the suffix works too.
        let (dialed, accepted) = connect(&mut t, id, &addr.clone().with(Protocol::P2p(peer))).await;
        exchange(dialed, accepted).await;
    });
}

#[test]
fn unsupported_multiaddrs_are_refused() {
    let mut t = TcpTransport::default();
    for bad in [
        "/ip4/127.0.0.1/udp/1/quic-v1",
        "/dns4/localhost/tcp/1",
        "/ip4/127.0.0.1/tcp/1/ws",
        "/ip6/::1/udp/1",
    ] {
        match t.listen_on(ListenerId::next(), ma(bad)) {
            Err(TransportError::MultiaddrNotSupported(a)) => assert_eq!(a, ma(bad)),
            other => panic!("listen_on {bad}: expected MultiaddrNotSupported, got {other:?}"),
        }
        match t.dial(ma(bad), opts()) {
            Err(TransportError::MultiaddrNotSupported(a)) => assert_eq!(a, ma(bad)),
            Err(other) => panic!("dial {bad}: expected MultiaddrNotSupported, got {other:?}"),
            Ok(_) => panic!("dial {bad}: expected MultiaddrNotSupported, got a dial"),
        }
    }
    // Nothing was queued by the refused calls.
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    assert!(Pin::new(&mut t).poll(&mut cx).is_pending());
}

/// Counts wake-ups.
struct CountingWaker(AtomicUsize);

impl ArcWake for CountingWaker {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn remove_listener_yields_listener_closed() {
    smol::block_on(async {
        let mut t = TcpTransport::default();
        let id = ListenerId::next();
        t.listen_on(id, ma("/ip4/127.0.0.1/tcp/0")).expect("listen");
        let addr = new_address(&mut t, id).await;

        // Park a poll, so we can see that removal wakes it.
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = futures::task::waker(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut t).poll(&mut cx).is_pending());
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);

        assert!(t.remove_listener(id), "the listener existed");
        assert!(
            counter.0.load(Ordering::SeqCst) > 0,
            "removal wakes the parked poll"
        );
        assert!(!t.remove_listener(id), "it is gone now");
        assert!(!t.remove_listener(ListenerId::next()), "never existed");

        match bounded("ListenerClosed", next_event(&mut t)).await {
            TransportEvent::ListenerClosed {
                listener_id,
                reason,
            } => {
                assert_eq!(listener_id, id);
                assert!(reason.is_ok(), "closed on request: {reason:?}");
            }
            other => panic!("expected ListenerClosed, got {other:?}"),
        }
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        assert!(
            Pin::new(&mut t).poll(&mut cx).is_pending(),
            "nothing after close"
        );

        // The socket is closed: the port no longer accepts.
        let mut dialer = TcpTransport::default();
        let dial = dialer.dial(addr, opts()).expect("dialable address");
        assert!(bounded("dial closed port", dial).await.is_err());
    });
}

#[test]
fn listeners_are_polled_round_robin() {
    smol::block_on(async {
        let mut t = TcpTransport::default();
        let ids = [ListenerId::next(), ListenerId::next()];
        let mut addrs = Vec::new();
        for id in ids {
            t.listen_on(id, ma("/ip4/127.0.0.1/tcp/0")).expect("listen");
        }
        for id in ids {
            addrs.push(new_address(&mut t, id).await);
        }
        // Three connections wait in each backlog before anything is accepted.
        let mut dialer = TcpTransport::default();
        let mut dials = Vec::new();
        for addr in &addrs {
            for _ in 0..3 {
                dials.push(dialer.dial(addr.clone(), opts()).expect("dialable"));
            }
        }
        let dialed = bounded("dials", futures::future::join_all(dials)).await;
        let dialed: Vec<TcpStream> = dialed
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("all dials succeed");

        let mut order = Vec::new();
        for _ in 0..6 {
            match bounded("Incoming", next_event(&mut t)).await {
                TransportEvent::Incoming { listener_id, .. } => order.push(listener_id),
                other => panic!("expected Incoming, got {other:?}"),
            }
        }
        for pair in order.windows(2) {
            assert_ne!(pair[0], pair[1], "listeners alternate: {order:?}");
        }
        drop(dialed);
    });
}

#[test]
fn wildcard_listen_reports_loopback() {
    smol::block_on(async {
        let mut t = TcpTransport::default();
        let id = ListenerId::next();
        t.listen_on(id, ma("/ip4/0.0.0.0/tcp/0"))
            .expect("listen on 0.0.0.0");
        let mut seen = Vec::new();
        let loopback = loop {
            let addr = new_address(&mut t, id).await;
            let port = tcp_port(&addr).expect("tcp address");
            assert_ne!(port, 0, "{addr}");
            assert!(
                matches!(addr.iter().next(), Some(Protocol::Ip4(_))),
                "only IPv4 addresses for 0.0.0.0: {addr}"
            );
            if let Some(first) = seen.first() {
                assert_eq!(tcp_port(first), Some(port), "one port for all interfaces");
            }
            seen.push(addr.clone());
            if addr.iter().next() == Some(Protocol::Ip4([127, 0, 0, 1].into())) {
                break addr;
            }
        };
        // The wildcard socket accepts on the reported loopback address.
        let (dialed, accepted) = connect(&mut t, id, &loopback).await;
        exchange(dialed, accepted).await;
    });
}

#[test]
fn config_builders() {
    let c = Config::default();
    assert!(c.nodelay());
    assert_eq!(c.listen_backlog(), 1024);
    assert_eq!(c.ttl(), None);
    let c = c
        .with_nodelay(false)
        .with_listen_backlog(8)
        .with_ttl(Some(33));
    assert!(!c.nodelay());
    assert_eq!(c.listen_backlog(), 8);
    assert_eq!(c.ttl(), Some(33));
}

#[test]
fn config_is_applied_to_sockets() {
    smol::block_on(async {
        let config = Config::default().with_nodelay(false).with_ttl(Some(33));
        let mut t = TcpTransport::new(config.clone());
        let id = ListenerId::next();
        t.listen_on(id, ma("/ip4/127.0.0.1/tcp/0")).expect("listen");
        let addr = new_address(&mut t, id).await;
        let mut dialer = TcpTransport::new(config);
        let dial = dialer.dial(addr, opts()).expect("dialable");
        let (event, dialed) = bounded("dial + accept", async {
            futures::join!(next_event(&mut t), dial)
        })
        .await;
        let dialed = dialed.expect("dial succeeds");
        let accepted = match event {
            TransportEvent::Incoming { upgrade, .. } => upgrade.await.expect("ready"),
            other => panic!("expected Incoming, got {other:?}"),
        };
        for s in [&dialed, &accepted] {
            assert!(
                !s.nodelay().expect("nodelay"),
                "TCP_NODELAY off as configured"
            );
            assert_eq!(s.get_ref().get_ref().ttl().expect("ttl"), 33);
        }
    });
}

/// Two swarms on the transport connect over noise + yamux and see each
/// other's PeerIds.
async fn swarms_connect() {
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let (ida, idb) = (ka.public().to_peer_id(), kb.public().to_peer_id());
    let idle = Duration::from_secs(60);
    let rt = AsyncStdRuntime::new();
    let connect = Duration::from_secs(5);
    let mut a = build_swarm(ka, dummy::Behaviour, rt.clone(), idle, connect).expect("swarm a");
    let mut b = build_swarm(kb, dummy::Behaviour, rt, idle, connect).expect("swarm b");
    assert_eq!(*a.local_peer_id(), ida);

    a.listen_on(ma("/ip4/127.0.0.1/tcp/0")).expect("listen");
    let addr = bounded("NewListenAddr", async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = a.select_next_some().await {
                break address;
            }
        }
    })
    .await;
    b.dial(addr.clone().with(Protocol::P2p(ida))).expect("dial");

    let (mut at_a, mut at_b) = (None, None);
    bounded("ConnectionEstablished on both sides", async {
        while at_a.is_none() || at_b.is_none() {
            futures::select! {
                event = a.select_next_some() => {
                    if let SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } = event {
                        assert!(matches!(endpoint, ConnectedPoint::Listener { .. }), "{endpoint:?}");
                        at_a = Some(peer_id);
                    }
                }
                event = b.select_next_some() => {
                    match event {
                        SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                            match endpoint {
                                ConnectedPoint::Dialer { address, .. } => {
                                    assert_eq!(address.iter().next(), addr.iter().next());
                                }
                                other => panic!("b dialed, got {other:?}"),
                            }
                            at_b = Some(peer_id);
                        }
                        SwarmEvent::OutgoingConnectionError { error, .. } => {
                            panic!("dial failed: {error}");
                        }
                        _ => {}
                    }
                }
            }
        }
    })
    .await;
    assert_eq!(at_a, Some(idb), "a sees b's PeerId");
    assert_eq!(at_b, Some(ida), "b sees a's PeerId");
    assert!(a.is_connected(&idb) && b.is_connected(&ida));
}

#[test]
fn swarms_connect_on_async_std() {
    async_std::task::block_on(swarms_connect());
}

#[test]
fn swarms_connect_on_smol() {
    smol::block_on(swarms_connect());
}

#[test]
fn dial_to_closed_port_fails() {
    smol::block_on(async {
        // Bind then drop to get a port that (almost surely) nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let mut t = TcpTransport::default();
        let dial = t
            .dial(ma(&format!("/ip4/127.0.0.1/tcp/{port}")), opts())
            .expect("dialable");
        let err = bounded("refused dial", dial)
            .await
            .expect_err("nobody listens");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    });
}
