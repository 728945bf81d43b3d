//! Server discovery in the NAT test bed (issue 13, tests 3 and 4), with
//! real `pointsub` processes:
//!
//! 3. Servers behind the two NATs listen through the relay and announce
//!    their protocol as Kademlia provider records (after the reservation,
//!    so the records carry their circuit address). A client on the public
//!    segment that knows only the bootstrap node finds both, and
//!    `send_closest` is answered by the XOR-closest one.
//! 4. A node watching the protocol through identify (the bootstrap node,
//!    which every server connects to) sees each server appear when it
//!    starts and disappear when it stops.
//!
//! Needs root (CI runs as root); see `netbed`'s documentation.
#![cfg(feature = "cli")]

mod netbed;

use std::time::{Duration, Instant};

use netbed::{BedProcess, Host, NetBed};
use pointsub_tokio::PeerId;
use pointsub_tokio::proto::route::{distance, key_hash};

const BIN: &str = env!("CARGO_BIN_EXE_pointsub");

/// Bound on a process printing what it is expected to print.
const START: Duration = Duration::from_secs(60);

/// Bound on any one command run to its end.
const COMMAND: Duration = Duration::from_secs(90);

const PROTOCOL: &str = "/bed/discovery-echo/1";

/// Starts `BIN args` in `host` and collects its `listening on` addresses
/// until a line starting with `ready` is printed.
fn start(bed: &NetBed, host: Host, args: &[&str], ready: &str) -> (BedProcess, Vec<String>) {
    let process = bed
        .spawn(host, BIN, args)
        .unwrap_or_else(|e| panic!("start pointsub {args:?} in {host}: {e}"));
    let mut addrs = Vec::new();
    let deadline = Instant::now() + START;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = process.wait_line(left, |_| true).unwrap_or_else(|e| {
            panic!(
                "pointsub {args:?} in {host}: {e}; stderr: {}",
                process.stderr()
            )
        });
        if let Some(addr) = line.strip_prefix("listening on ") {
            addrs.push(addr.to_owned());
        }
        if line.starts_with(ready) {
            return (process, addrs);
        }
    }
}

/// The peer id at the end of `addr`.
fn peer_of(addr: &str) -> PeerId {
    addr.rsplit("/p2p/")
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no peer id in {addr}"))
}

/// The TCP address of `host`'s process among `addrs`.
fn tcp_addr(addrs: &[String], host: Host) -> String {
    let prefix = format!("/ip4/{}/tcp/", host.addr());
    addrs
        .iter()
        .find(|a| a.starts_with(&prefix) && !a.contains("p2p-circuit"))
        .unwrap_or_else(|| panic!("no {prefix} address in {addrs:?}"))
        .clone()
}

/// Starts a server behind `host`'s NAT that listens through `relay` and
/// announces [`PROTOCOL`] to `bootstrap`; returns it with its peer id.
fn nat_server(bed: &NetBed, host: Host, relay: &str, bootstrap: &str) -> (BedProcess, PeerId) {
    let (server, addrs) = start(
        bed,
        host,
        &[
            "serve",
            "--protocol",
            PROTOCOL,
            "--listen",
            "/ip4/0.0.0.0/tcp/0",
            "--relay",
            relay,
            "--bootstrap",
            bootstrap,
        ],
        "serving",
    );
    let circuit = addrs
        .iter()
        .find(|a| a.contains("/p2p-circuit/"))
        .unwrap_or_else(|| panic!("server in {host} printed no circuit address: {addrs:?}"));
    (server, peer_of(circuit))
}

/// The relay on its host, and the bootstrap node (a Kademlia server that
/// also watches [`PROTOCOL`] through identify) on its own.
fn public_nodes(bed: &NetBed) -> (BedProcess, String, BedProcess, String) {
    let relay_ip = Host::Relay.addr();
    let (relay, addrs) = start(
        bed,
        Host::Relay,
        &["relay", "--listen", &format!("/ip4/{relay_ip}/tcp/4001")],
        "relaying",
    );
    let relay_addr = tcp_addr(&addrs, Host::Relay);
    let boot_ip = Host::Bootstrap.addr();
    let (watcher, addrs) = start(
        bed,
        Host::Bootstrap,
        &[
            "discover",
            "--public",
            "--watch",
            "--protocol",
            PROTOCOL,
            "--listen",
            &format!("/ip4/{boot_ip}/tcp/4001"),
        ],
        "watching",
    );
    let boot_addr = tcp_addr(&addrs, Host::Bootstrap);
    (relay, relay_addr, watcher, boot_addr)
}

/// Waits for the watcher to print `line`.
fn expect_line(watcher: &BedProcess, line: &str) {
    watcher.wait_line(START, |l| l == line).unwrap_or_else(|e| {
        panic!(
            "watcher never printed {line:?}: {e}; stderr: {}",
            watcher.stderr()
        )
    });
}

#[test]
fn kademlia_finds_nat_servers_and_send_closest_picks_the_xor_closest() {
    let Some(bed) =
        NetBed::new_or_skip("kademlia_finds_nat_servers_and_send_closest_picks_the_xor_closest")
    else {
        return;
    };
    let (_relay, relay_addr, _boot, boot_addr) = public_nodes(&bed);
    let (_a, peer_a) = nat_server(&bed, Host::HostA, &relay_addr, &boot_addr);
    let (_b, peer_b) = nat_server(&bed, Host::HostB, &relay_addr, &boot_addr);
    let servers = [peer_a, peer_b];

    // The client, on the public segment, knows only the bootstrap node.
    for body in ["first key", "second key", "third key", "fourth key"] {
        let mut client = bed
            .spawn(
                Host::Relay,
                BIN,
                [
                    "discover",
                    "--protocol",
                    PROTOCOL,
                    "--listen",
                    &format!("/ip4/{}/tcp/0", Host::Relay.addr()),
                    "--bootstrap",
                    &boot_addr,
                    "--expect",
                    "2",
                    "--timeout",
                    "60",
                    "--send",
                    body,
                ],
            )
            .expect("start pointsub discover");
        let status = client
            .wait(COMMAND)
            .unwrap_or_else(|| panic!("pointsub discover still runs after {COMMAND:?}"));
        let mut lines = Vec::new();
        while let Some(line) = client.next_line(Duration::from_secs(5)) {
            lines.push(line);
        }
        assert_eq!(
            status.code(),
            Some(0),
            "discover --send {body:?}: {lines:?}; stderr: {}",
            client.stderr()
        );
        let mut found: Vec<PeerId> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("provider "))
            .map(|p| p.parse().expect("a peer id"))
            .collect();
        found.sort();
        let mut want = servers.to_vec();
        want.sort();
        assert_eq!(found, want, "providers found: {lines:?}");
        let answered: PeerId = lines
            .iter()
            .find_map(|l| l.strip_prefix("answered by "))
            .unwrap_or_else(|| panic!("no answer in {lines:?}"))
            .parse()
            .expect("a peer id");
        let target = key_hash(body.as_bytes());
        let closest = *servers
            .iter()
            .min_by_key(|p| distance(&target, &key_hash(&p.to_bytes())))
            .expect("servers");
        assert_eq!(answered, closest, "body {body:?}: {lines:?}");
        assert_eq!(lines.last().map(String::as_str), Some(body));
    }
}

#[test]
fn identify_adds_and_removes_servers_as_they_start_and_stop() {
    let Some(bed) = NetBed::new_or_skip("identify_adds_and_removes_servers_as_they_start_and_stop")
    else {
        return;
    };
    let (_relay, relay_addr, watcher, boot_addr) = public_nodes(&bed);
    let (mut a, peer_a) = nat_server(&bed, Host::HostA, &relay_addr, &boot_addr);
    expect_line(&watcher, &format!("node + {peer_a}"));
    let (mut b, peer_b) = nat_server(&bed, Host::HostB, &relay_addr, &boot_addr);
    expect_line(&watcher, &format!("node + {peer_b}"));
    // a stops: it leaves; b stays.
    a.kill();
    expect_line(&watcher, &format!("node - {peer_a}"));
    // a server starts again (a new identity): it appears.
    let (_a2, peer_a2) = nat_server(&bed, Host::HostA, &relay_addr, &boot_addr);
    expect_line(&watcher, &format!("node + {peer_a2}"));
    b.kill();
    expect_line(&watcher, &format!("node - {peer_b}"));
    let rest = watcher.rest_of_stdout();
    assert!(
        !rest.iter().any(|l| l == &format!("node - {peer_a2}")),
        "the running server must stay: {rest:?}"
    );
}
