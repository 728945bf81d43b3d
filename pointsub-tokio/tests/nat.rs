//! The NAT test bed of issue 13, proven with today's `pointsub` binary.
//!
//! - A NATed host reaches a server on the public segment, and the server
//!   sees the router's WAN address, with the host's own source port.
//! - A public host cannot open a connection to a NATed host, neither to
//!   its router's address (over TCP or QUIC) nor, with a route, to its
//!   private one.
//! - The bed leaves nothing behind: after a normal run (two beds side by
//!   side), and after the process that built it is SIGKILLed.
//! - It has no way out of the machine, and says why when it cannot be
//!   built; `POINTSUB_SKIP_NETNS=1` skips it, loudly.
//! - Through a relay on the public segment (`pointsub relay`), a NATed
//!   client reaches a NATed server's echo (`serve --relay`, `send` to its
//!   `/p2p-circuit` address).
//! - DCUtR upgrades that path to a direct connection through both NATs,
//!   over TCP and over QUIC: requests sent one after another keep
//!   succeeding while the path changes from relayed to direct, and the
//!   time from the first relayed request to the first direct one is
//!   printed.
//!
//! Needs root (CI runs as root); see `netbed`'s documentation.
#![cfg(feature = "cli")]

mod netbed;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use netbed::{BedProcess, Host, Inventory, NetBed, SKIP_VAR, run_bounded};

const BIN: &str = env!("CARGO_BIN_EXE_pointsub");

// `pointsub send`'s exit statuses, as its `--help` lists them.
const CANNOT_CONNECT: i32 = 3;
const TIMED_OUT: i32 = 4;

/// Bound on a server printing its addresses.
const START: Duration = Duration::from_secs(30);

/// Bound on any one command run to its end.
const COMMAND: Duration = Duration::from_secs(60);

/// Bound on a gone bed's processes and namespaces disappearing.
const GONE: Duration = Duration::from_secs(30);

/// Starts `pointsub serve` in `host` with `args`, and returns it with the
/// addresses it printed (`…/p2p/<peer id>`).
fn serve(bed: &NetBed, host: Host, args: &[&str]) -> (BedProcess, Vec<String>) {
    let server = bed
        .spawn(host, BIN, ["serve"].iter().chain(args))
        .unwrap_or_else(|e| panic!("start pointsub serve in {host}: {e}"));
    let mut addrs = Vec::new();
    let deadline = Instant::now() + START;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = server
            .wait_line(left, |_| true)
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(addr) = line.strip_prefix("listening on ") {
            addrs.push(addr.to_owned());
        } else if line.starts_with("serving ") {
            return (server, addrs);
        }
    }
}

/// The one address of `addrs` that starts with `prefix`.
fn addr_with(addrs: &[String], prefix: &str) -> String {
    addrs
        .iter()
        .find(|a| a.starts_with(prefix))
        .unwrap_or_else(|| panic!("no address starting with {prefix} in {addrs:?}"))
        .clone()
}

/// Established TCP connections in `host`, as (local, peer).
fn tcp_connections(bed: &NetBed, host: Host) -> Vec<(SocketAddrV4, SocketAddrV4)> {
    let out = bed
        .run(host, "ss", ["-Htn", "state", "established"], COMMAND)
        .unwrap_or_else(|e| panic!("ss in {host}: {e}"));
    assert!(out.status.success(), "ss in {host}: {}", out.stderr);
    out.stdout
        .lines()
        .filter_map(|line| {
            let addrs: Vec<SocketAddrV4> = line
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            match addrs[..] {
                [local, peer] => Some((local, peer)),
                _ => None,
            }
        })
        .collect()
}

fn packets(bed: &NetBed, nat: Host, rule: &str) -> u64 {
    bed.rule_packets(nat, rule)
        .unwrap_or_else(|e| panic!("counter {rule} of {nat}: {e}"))
}

/// Waits for a one-shot `pointsub send` to end, and returns its exit code
/// and stdout.
fn finish(mut send: BedProcess) -> (Option<i32>, Vec<String>) {
    let status = send
        .wait(COMMAND)
        .unwrap_or_else(|| panic!("pointsub send still runs after {COMMAND:?}"));
    // The reader thread may still be delivering the last lines.
    let mut lines = Vec::new();
    while let Some(line) = send.next_line(Duration::from_secs(5)) {
        lines.push(line);
    }
    (status.code(), lines)
}

#[test]
fn nat_host_reaches_public_server_through_masquerade() {
    let Some(bed) = NetBed::new_or_skip("nat_host_reaches_public_server_through_masquerade") else {
        return;
    };
    let relay = Host::Relay.addr();
    // Slow answers keep the connection open long enough to look at it.
    let (_server, addrs) = serve(
        &bed,
        Host::Relay,
        &[
            "--listen",
            &format!("/ip4/{relay}/tcp/4001"),
            "--listen",
            &format!("/ip4/{relay}/udp/4001/quic-v1"),
            "--delay-ms",
            "2000",
        ],
    );
    let tcp = addr_with(&addrs, &format!("/ip4/{relay}/tcp/4001/p2p/"));
    let quic = addr_with(&addrs, &format!("/ip4/{relay}/udp/4001/quic-v1/p2p/"));
    let masqueraded = packets(&bed, Host::NatA, "masquerade");

    // TCP from host-a: while the request waits in the handler, both ends
    // of its connection are visible.
    let mut send = bed
        .spawn(
            Host::HostA,
            BIN,
            ["send", &tcp, "through nat-a", "--timeout", "60"],
        )
        .expect("start pointsub send");
    let server_end = SocketAddrV4::new(relay, 4001);
    let deadline = Instant::now() + COMMAND;
    let (mut seen_by_server, mut seen_by_client) = (None, None);
    while (seen_by_server.is_none() || seen_by_client.is_none())
        && send.try_status().is_none()
        && Instant::now() < deadline
    {
        if seen_by_server.is_none() {
            seen_by_server = tcp_connections(&bed, Host::Relay)
                .into_iter()
                .find(|(local, _)| *local == server_end)
                .map(|(_, peer)| peer);
        }
        if seen_by_client.is_none() {
            seen_by_client = tcp_connections(&bed, Host::HostA)
                .into_iter()
                .find(|(_, peer)| *peer == server_end)
                .map(|(local, _)| local);
        }
        thread::sleep(Duration::from_millis(50));
    }
    let (code, stdout) = finish(send);
    assert_eq!(code, Some(0), "send through nat-a: {stdout:?}");
    assert_eq!(stdout, ["through nat-a"]);
    let remote = seen_by_server.expect("the server's end of the connection, seen with ss");
    let local = seen_by_client.expect("the client's end of the connection, seen with ss");
    assert_eq!(*local.ip(), Host::HostA.addr(), "client end {local}");
    assert_eq!(
        *remote.ip(),
        Host::NatA.addr(),
        "the server must see nat-a's WAN address, not {remote}"
    );
    assert_eq!(
        remote.port(),
        local.port(),
        "masquerade keeps the source port"
    );
    assert!(packets(&bed, Host::NatA, "masquerade") > masqueraded);

    // QUIC (UDP) from host-b, through the other router.
    let masqueraded = packets(&bed, Host::NatB, "masquerade");
    let send = bed
        .spawn(
            Host::HostB,
            BIN,
            ["send", &quic, "through nat-b", "--timeout", "60"],
        )
        .expect("start pointsub send");
    let (code, stdout) = finish(send);
    assert_eq!(code, Some(0), "send over QUIC through nat-b: {stdout:?}");
    assert_eq!(stdout, ["through nat-b"]);
    assert!(packets(&bed, Host::NatB, "masquerade") > masqueraded);
}

#[test]
fn public_host_cannot_reach_nat_host() {
    let Some(bed) = NetBed::new_or_skip("public_host_cannot_reach_nat_host") else {
        return;
    };
    let (_server, addrs) = serve(
        &bed,
        Host::HostA,
        &[
            "--listen",
            "/ip4/0.0.0.0/tcp/4001",
            "--listen",
            "/ip4/0.0.0.0/udp/4001/quic-v1",
        ],
    );
    let private = addr_with(
        &addrs,
        &format!("/ip4/{}/tcp/4001/p2p/", Host::HostA.addr()),
    );
    let peer = private
        .rsplit_once("/p2p/")
        .map(|(_, peer)| peer.to_owned())
        .expect("a /p2p/ suffix");

    // The server answers on its own segment.
    let out = bed
        .run(Host::HostA, BIN, ["send", &private, "inside"], COMMAND)
        .expect("run send");
    assert!(out.status.success(), "send inside lan a: {}", out.stderr);
    assert_eq!(out.stdout.trim_end(), "inside");

    let refused = |target: &str, what: &str| {
        let out = bed
            .run(
                Host::Relay,
                BIN,
                ["send", target, "from outside", "--timeout", "5"],
                COMMAND,
            )
            .expect("run send");
        assert!(
            matches!(out.status.code(), Some(CANNOT_CONNECT | TIMED_OUT)),
            "{what}: {:?}: {}",
            out.status,
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{what}: stdout {}", out.stdout);
    };

    // To the router's WAN address: nothing listens there, and the new
    // connection is dropped at the router's input.
    let dropped = packets(&bed, Host::NatA, "wan-input-drop");
    refused(
        &format!("/ip4/{}/tcp/4001/p2p/{peer}", Host::NatA.addr()),
        "to nat-a's address",
    );
    assert!(
        packets(&bed, Host::NatA, "wan-input-drop") > dropped,
        "nat-a's input drop counted nothing"
    );
    // The same for UDP (QUIC): unsolicited datagrams are dropped too.
    let dropped = packets(&bed, Host::NatA, "wan-input-drop");
    refused(
        &format!("/ip4/{}/udp/4001/quic-v1/p2p/{peer}", Host::NatA.addr()),
        "over QUIC to nat-a's address",
    );
    assert!(
        packets(&bed, Host::NatA, "wan-input-drop") > dropped,
        "nat-a's input drop counted no datagram"
    );

    // Even with a route to the private segment, the router does not
    // forward a new connection in.
    let out = bed
        .run(
            Host::Relay,
            "ip",
            [
                "route",
                "add",
                netbed::LAN_A_NET,
                "via",
                &Host::NatA.addr().to_string(),
            ],
            COMMAND,
        )
        .expect("run ip route");
    assert!(out.status.success(), "ip route add: {}", out.stderr);
    let dropped = packets(&bed, Host::NatA, "wan-forward-drop");
    refused(&private, "to host-a's private address, routed");
    assert!(
        packets(&bed, Host::NatA, "wan-forward-drop") > dropped,
        "nat-a's forward drop counted nothing"
    );
    assert!(
        tcp_connections(&bed, Host::HostA)
            .iter()
            .all(|(_, peer)| *peer.ip() == Host::HostA.addr()),
        "a connection from outside reached host-a"
    );
}

/// Interface names of the machine's own network namespace.
fn root_links() -> BTreeSet<String> {
    let out = run_bounded(
        Command::new("ip").args(["-o", "link", "show"]),
        &[],
        COMMAND,
    )
    .expect("ip link");
    assert!(out.status.success(), "ip link: {}", out.stderr);
    out.stdout
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|name| name.trim().to_owned())
        .collect()
}

/// `ip netns list`'s entries.
fn named_netns() -> BTreeSet<String> {
    let out =
        run_bounded(Command::new("ip").args(["netns", "list"]), &[], COMMAND).expect("ip netns");
    assert!(out.status.success(), "ip netns list: {}", out.stderr);
    out.stdout.lines().map(str::to_owned).collect()
}

/// Builds a bed, runs servers on three hosts and one exchange, and returns
/// its inventory with the bed dropped (the servers still running then).
fn use_and_drop_a_bed() -> Inventory {
    let bed = NetBed::new().unwrap_or_else(|e| panic!("{e}"));
    let relay = Host::Relay.addr();
    let (_relay_server, addrs) = serve(
        &bed,
        Host::Relay,
        &["--listen", &format!("/ip4/{relay}/tcp/4001")],
    );
    let (_a, _) = serve(&bed, Host::HostA, &["--listen", "/ip4/0.0.0.0/tcp/4001"]);
    let (_b, _) = serve(&bed, Host::HostB, &["--listen", "/ip4/0.0.0.0/tcp/4001"]);
    let out = bed
        .run(Host::HostB, BIN, ["send", &addrs[0], "hi"], COMMAND)
        .expect("run send");
    assert!(out.status.success(), "send: {}", out.stderr);
    let inventory = bed.inventory();
    // unshare + its PID 1, the switch, six hosts, three server wrappers.
    assert!(inventory.procs.len() >= 12, "{inventory:?}");
    // One PID namespace, seven network namespaces, all distinct.
    let distinct: BTreeSet<_> = inventory.namespaces.iter().collect();
    assert_eq!(distinct.len(), 8, "{inventory:?}");
    assert!(inventory.leftovers().len() >= 12, "the bed is not visible");
    drop(bed);
    inventory
}

#[test]
fn bed_leaves_nothing_behind() {
    if NetBed::skipped("bed_leaves_nothing_behind") {
        return;
    }
    let (links, netns) = (root_links(), named_netns());
    // Two beds side by side: the same names inside, nothing shared.
    let beds: Vec<_> = (0..2).map(|_| thread::spawn(use_and_drop_a_bed)).collect();
    for bed in beds {
        let inventory = bed.join().expect("a bed's thread panicked");
        let left = inventory.wait_gone(GONE);
        assert!(left.is_empty(), "left behind: {left:?}");
    }
    assert_eq!(root_links(), links, "the machine's interfaces changed");
    assert_eq!(named_netns(), netns, "`ip netns list` changed");
}

/// Kills (SIGKILL) and reaps the child when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the SIGKILLed child of [`bed_leaves_nothing_behind_after_sigkill`]
/// does: build a bed, start a server in it, print the inventory, wait.
const ROLE_VAR: &str = "POINTSUB_NETBED_ROLE";

#[test]
fn bed_leaves_nothing_behind_after_sigkill() {
    if std::env::var(ROLE_VAR).as_deref() == Ok("hold") {
        // The child: killed by the parent while it waits.
        let bed = NetBed::new().unwrap_or_else(|e| panic!("{e}"));
        let (_server, _) = serve(&bed, Host::HostA, &["--listen", "/ip4/0.0.0.0/tcp/4001"]);
        // libtest's `test … ` has no newline yet: start a line of our own.
        println!();
        for line in bed.inventory().to_lines() {
            println!("{line}");
        }
        println!("inventory-end");
        thread::sleep(COMMAND);
        panic!("not killed within {COMMAND:?}");
    }
    if NetBed::skipped("bed_leaves_nothing_behind_after_sigkill") {
        return;
    }
    let links = root_links();
    let exe = std::env::current_exe().expect("this test binary");
    let mut child = Command::new(exe)
        .args([
            "bed_leaves_nothing_behind_after_sigkill",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_VAR, "hold")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the holding child");
    let stdout = child.stdout.take().expect("stdout piped");
    // Killed on any failure below too: it must not outlive this test.
    let mut child = KillOnDrop(child);
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + COMMAND;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line == "inventory-end" => break,
            Ok(line) => lines.push(line),
            Err(_) => panic!("the child printed no inventory; it printed {lines:?}"),
        }
    }
    let inventory = Inventory::parse(lines.iter().map(String::as_str));
    assert!(inventory.procs.len() >= 10, "{inventory:?} from {lines:?}");
    assert_eq!(inventory.namespaces.len(), 8, "{inventory:?}");
    assert!(inventory.leftovers().len() >= 10, "the bed is not visible");

    child.0.kill().expect("SIGKILL the child");
    let status = child.0.wait().expect("reap the child");
    assert!(!status.success(), "{status:?}");
    let left = inventory.wait_gone(GONE);
    assert!(left.is_empty(), "left behind after SIGKILL: {left:?}");
    assert_eq!(root_links(), links, "the machine's interfaces changed");
}

#[test]
fn bed_has_no_way_out() {
    let Some(bed) = NetBed::new_or_skip("bed_has_no_way_out") else {
        return;
    };
    let documentation: [(Ipv4Addr, u8); 3] = [
        (Ipv4Addr::new(192, 0, 2, 0), 24),
        (Ipv4Addr::new(198, 51, 100, 0), 24),
        (Ipv4Addr::new(203, 0, 113, 0), 24),
    ];
    let in_docs = |ip: Ipv4Addr| {
        ip.is_loopback()
            || documentation
                .iter()
                .any(|(net, len)| u32::from(ip) >> (32 - len) == u32::from(*net) >> (32 - len))
    };
    for host in Host::ALL {
        // Only loopback, veths (and no bridge outside the switch).
        let out = bed
            .run(host, "ip", ["-o", "-d", "link", "show"], COMMAND)
            .expect("ip link");
        assert!(out.status.success(), "{host}: {}", out.stderr);
        for line in out.stdout.lines() {
            assert!(
                line.contains("link/loopback") || line.contains(" veth "),
                "{host}: unexpected link {line}"
            );
        }
        // Only documentation addresses.
        let out = bed
            .run(host, "ip", ["-o", "-4", "addr", "show"], COMMAND)
            .expect("ip addr");
        for line in out.stdout.lines() {
            let cidr = line
                .split_whitespace()
                .skip_while(|w| *w != "inet")
                .nth(1)
                .expect("an inet address");
            let ip: Ipv4Addr = cidr
                .split('/')
                .next()
                .and_then(|ip| ip.parse().ok())
                .expect("an IPv4 address");
            assert!(in_docs(ip), "{host}: address {ip} outside the ranges");
        }
        // No route to anywhere else: a private host's default route ends
        // at its router, which has none.
        let out = bed
            .run(host, "ip", ["route", "get", "9.9.9.9"], COMMAND)
            .expect("ip route get");
        match host.nat() {
            Some(_) => assert!(
                out.status.success() && out.stdout.contains(" via "),
                "{host}: {}{}",
                out.stdout,
                out.stderr
            ),
            None => assert!(
                !out.status.success(),
                "{host} has a route out: {}",
                out.stdout
            ),
        }
    }
    // And every host reaches the relay (the bed is wired at all).
    for host in [Host::Bootstrap, Host::HostA, Host::HostB] {
        let out = bed
            .run(
                host,
                "ip",
                ["route", "get", &Host::Relay.addr().to_string()],
                COMMAND,
            )
            .expect("ip route get");
        assert!(out.status.success(), "{host}: {}", out.stderr);
    }
}

#[test]
fn skipping_is_explicit_and_loud() {
    let exe = std::env::current_exe().expect("this test binary");
    let out = run_bounded(
        Command::new(exe)
            .args(["bed_has_no_way_out", "--exact"])
            .env(SKIP_VAR, "1"),
        &[],
        COMMAND,
    )
    .expect("run the test binary");
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("SKIPPED bed_has_no_way_out: POINTSUB_SKIP_NETNS=1"),
        "stderr: {}",
        out.stderr
    );
}

#[test]
fn without_privileges_the_bed_says_why() {
    // Dropping capabilities takes root too.
    if NetBed::skipped("without_privileges_the_bed_says_why") {
        return;
    }
    let exe = std::env::current_exe().expect("this test binary");
    // Root without CAP_SYS_ADMIN (nor any capability): no namespaces.
    let out = run_bounded(
        Command::new("setpriv")
            .args(["--bounding-set", "-all", "--inh-caps", "-all", "--"])
            .arg(exe)
            .args(["bed_has_no_way_out", "--exact"])
            .env_remove(SKIP_VAR),
        &[],
        COMMAND,
    )
    .expect("run the test binary without capabilities");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("cannot create Linux namespaces"), "{all}");
    assert!(all.contains(SKIP_VAR), "{all}");
}

/// Starts `pointsub relay` in the relay host, on TCP and QUIC port 4001,
/// and returns it with its addresses: (TCP, QUIC), each `…/p2p/<id>`.
fn start_relay(bed: &NetBed) -> (BedProcess, String, String) {
    let ip = Host::Relay.addr();
    let relay = bed
        .spawn(
            Host::Relay,
            BIN,
            [
                "relay",
                "--listen",
                &format!("/ip4/{ip}/tcp/4001"),
                "--listen",
                &format!("/ip4/{ip}/udp/4001/quic-v1"),
            ],
        )
        .unwrap_or_else(|e| panic!("start pointsub relay: {e}"));
    let mut addrs = Vec::new();
    let deadline = Instant::now() + START;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = relay
            .wait_line(left, |_| true)
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(addr) = line.strip_prefix("listening on ") {
            addrs.push(addr.to_owned());
        } else if line == "relaying" {
            break;
        }
    }
    let tcp = addr_with(&addrs, &format!("/ip4/{ip}/tcp/4001/p2p/"));
    let quic = addr_with(&addrs, &format!("/ip4/{ip}/udp/4001/quic-v1/p2p/"));
    (relay, tcp, quic)
}

/// The server's `/p2p-circuit` address through the relay at `relay`
/// among its printed addresses (the relay client also lists the circuit
/// addresses through the relay's other addresses).
fn circuit_addr(addrs: &[String], relay: &str) -> String {
    addrs
        .iter()
        .find(|a| a.starts_with(&format!("{relay}/p2p-circuit/p2p/")))
        .unwrap_or_else(|| panic!("no /p2p-circuit address through {relay} in {addrs:?}"))
        .clone()
}

/// Writes a line to stderr past the test harness's capture, for figures
/// the run should show even when the test passes.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[test]
fn nat_client_reaches_nat_server_through_the_relay() {
    let Some(bed) = NetBed::new_or_skip("nat_client_reaches_nat_server_through_the_relay") else {
        return;
    };
    let (_relay, relay_tcp, _) = start_relay(&bed);
    let (_server, addrs) = serve(
        &bed,
        Host::HostB,
        &["--listen", "/ip4/0.0.0.0/tcp/4001", "--relay", &relay_tcp],
    );
    let circuit = circuit_addr(&addrs, &relay_tcp);
    // The client listens on loopback only: no address a hole punch could
    // use, so the request must take the relay.
    let out = bed
        .run(
            Host::HostA,
            BIN,
            [
                "send",
                &circuit,
                "through the relay",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--upgrade-wait",
                "0",
                "--timeout",
                "30",
            ],
            COMMAND,
        )
        .expect("run send");
    assert!(
        out.status.success(),
        "send through the relay: {:?}: {}",
        out.status,
        out.stderr
    );
    assert_eq!(out.stdout.trim_end(), "through the relay");
    let path = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("path: "))
        .unwrap_or_else(|| panic!("send did not say its path: {}", out.stderr));
    assert!(
        path.starts_with("relayed ") && path.contains("/p2p-circuit"),
        "path {path}"
    );
    // Neither NATed host ever had a connection to the other's router.
    for (host, other) in [(Host::HostA, Host::NatB), (Host::HostB, Host::NatA)] {
        assert!(
            tcp_connections(&bed, host)
                .iter()
                .all(|(_, peer)| *peer.ip() != other.addr()),
            "{host} is connected to {other} directly"
        );
    }
}

/// Runs the relay → direct upgrade over `transport` ("tcp" or "quic"):
/// requests one after another from host-a to host-b's circuit address,
/// each answered, the first through the relay, the later ones directly.
fn upgrade_to_direct(test: &str, transport: &str) {
    let Some(bed) = NetBed::new_or_skip(test) else {
        return;
    };
    let (_relay, relay_tcp, relay_quic) = start_relay(&bed);
    let (listen, relay_addr) = match transport {
        "tcp" => ("/ip4/0.0.0.0/tcp/4001", relay_tcp),
        _ => ("/ip4/0.0.0.0/udp/4001/quic-v1", relay_quic),
    };
    let (_server, addrs) = serve(
        &bed,
        Host::HostB,
        &["--listen", listen, "--relay", &relay_addr],
    );
    let circuit = circuit_addr(&addrs, &relay_addr);
    const REQUESTS: usize = 40;
    let count = REQUESTS.to_string();
    let out = bed
        .run(
            Host::HostA,
            BIN,
            [
                "send",
                &circuit,
                "across the upgrade",
                "--listen",
                listen,
                "--upgrade-wait",
                "0",
                "--count",
                &count,
                "--interval-ms",
                "100",
                "--timeout",
                "30",
            ],
            COMMAND,
        )
        .expect("run send");
    assert!(
        out.status.success(),
        "send over {transport}: {:?}: {}",
        out.status,
        out.stderr
    );
    let replies: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        replies,
        vec!["across the upgrade"; REQUESTS],
        "{}",
        out.stderr
    );
    let paths: Vec<&str> = out
        .stderr
        .lines()
        .filter_map(|l| l.split_once(": path: ").map(|(_, path)| path))
        .collect();
    assert_eq!(
        paths.len(),
        REQUESTS,
        "one path per request: {}",
        out.stderr
    );
    assert!(
        paths[0].starts_with("relayed ") && paths[0].contains("/p2p-circuit"),
        "the first request must go through the relay: {}",
        out.stderr
    );
    let first_direct = paths
        .iter()
        .position(|p| p.starts_with("direct "))
        .unwrap_or_else(|| panic!("no request went direct over {transport}: {}", out.stderr));
    // Once direct, always direct; and direct means to host-b's router,
    // not through the relay.
    for path in &paths[first_direct..] {
        assert!(path.starts_with("direct "), "{}", out.stderr);
        assert!(
            path.contains(&format!("/ip4/{}/", Host::NatB.addr())) && !path.contains("p2p-circuit"),
            "direct path {path} is not to nat-b's address"
        );
    }
    let line = |prefix: &str| {
        out.stderr
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("send did not say {prefix:?}: {}", out.stderr))
            .to_owned()
    };
    let upgrade = line("upgrade: ");
    let punch = line("hole punch: ");
    report(&format!(
        "{test}: relay -> direct over {transport}: requests 1..={first_direct} relayed, \
         {} direct (one every 100 ms); {upgrade}; hole punch: {punch}",
        REQUESTS - first_direct
    ));
}

#[test]
fn dcutr_upgrades_the_relayed_path_to_direct_over_tcp() {
    upgrade_to_direct("dcutr_upgrades_the_relayed_path_to_direct_over_tcp", "tcp");
}

#[test]
fn dcutr_upgrades_the_relayed_path_to_direct_over_quic() {
    upgrade_to_direct(
        "dcutr_upgrades_the_relayed_path_to_direct_over_quic",
        "quic",
    );
}
