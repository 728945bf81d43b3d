//! The `pointsub` binary, run as separate processes.
#![cfg(feature = "cli")]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pointsub");

/// Bound on any one process of these tests.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Kills the child when dropped, so a failing test leaves no server behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a finished process left.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Reads all of `pipe` on a thread.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `pointsub args…` to completion, killing it (and failing) after
/// [`TIMEOUT`].
fn run(args: &[&str]) -> Outcome {
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pointsub");
    let mut child = KillOnDrop(child);
    let stdout = drain(child.0.stdout.take().expect("stdout piped"));
    let stderr = drain(child.0.stderr.take().expect("stderr piped"));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for pointsub") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "pointsub {args:?} still running after {TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Starts `pointsub serve` and returns it with its first TCP address.
fn start_server() -> (KillOnDrop, String) {
    let child = Command::new(BIN)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn pointsub serve");
    let mut server = KillOnDrop(child);
    let stdout = server.0.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("`pointsub serve` printed no TCP address in time");
        if let Some(addr) = line.strip_prefix("listening on ")
            && addr.starts_with("/ip4/127.0.0.1/tcp/")
            && addr.contains("/p2p/")
        {
            return (server, addr.to_owned());
        }
    }
}

#[test]
fn serve_and_send() {
    let (_server, addr) = start_server();

    let out = run(&["send", &addr, "hello pointsub"]);
    assert!(
        out.status.success(),
        "send failed: {:?}\n{}",
        out.status,
        out.stderr
    );
    assert_eq!(out.stdout.trim_end(), "hello pointsub");

    let out = run(&["send", &addr, "hello", "--protocol", "/nope/1"]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("/nope/1") && out.stderr.contains("not supported"),
        "stderr: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("retryable: false"),
        "stderr: {}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "stdout: {}", out.stdout);
}

#[test]
fn demo_runs_clean() {
    let out = run(&["demo", "--requests", "3", "--burst", "500"]);
    assert!(
        out.status.success(),
        "demo failed: {:?}\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    for label in [
        "server peer id: 12D3Koo",
        "client peer id: 12D3Koo",
        "QPS: ",
    ] {
        assert!(
            out.stdout.contains(label),
            "no {label:?} in:\n{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("failures: 0"), "{}", out.stdout);
}

#[test]
fn send_needs_a_peer_id() {
    let out = run(&["send", "/ip4/127.0.0.1/tcp/4001", "hello"]);
    assert!(!out.status.success(), "send without /p2p succeeded");
    assert!(out.stderr.contains("/p2p/"), "stderr: {}", out.stderr);
    assert!(out.stdout.is_empty(), "stdout: {}", out.stdout);
}
