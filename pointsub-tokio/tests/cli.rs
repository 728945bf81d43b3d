//! The `pointsub` binary, run as separate processes.
#![cfg(feature = "cli")]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pointsub");

// `pointsub send`'s exit statuses, as its `--help` lists them.
const USAGE: i32 = 2;
const CANNOT_CONNECT: i32 = 3;
const TIMED_OUT: i32 = 4;
const REFUSED: i32 = 5;
const HANDLER_FAILED: i32 = 6;

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
    /// Stdout as bytes: `send --out -` writes binary replies there.
    stdout: Vec<u8>,
    stderr: String,
}

impl Outcome {
    /// Stdout as text (invalid UTF-8 replaced).
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Reads all of `pipe` on a thread.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Runs `pointsub args…` to completion with nothing on stdin, killing it
/// (and failing) after [`TIMEOUT`].
fn run(args: &[&str]) -> Outcome {
    run_with_stdin(args, None)
}

/// Runs `pointsub args…` to completion, feeding it `stdin` (then end of
/// file) when given, else nothing; kills it (and fails) after [`TIMEOUT`].
fn run_with_stdin(args: &[&str], stdin: Option<Vec<u8>>) -> Outcome {
    let child = Command::new(BIN)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pointsub");
    let mut child = KillOnDrop(child);
    let feeder = stdin.map(|input| {
        let mut pipe = child.0.stdin.take().expect("stdin piped");
        // On a thread: a large input may fill the pipe before it is read.
        // Dropping the pipe at the end is the end of file.
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
        })
    });
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
    if let Some(feeder) = feeder {
        feeder.join().expect("stdin writer");
    }
    Outcome {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: String::from_utf8_lossy(&stderr.join().expect("stderr reader")).into_owned(),
    }
}

/// Starts `pointsub serve extra…` and returns it with its first TCP address.
fn start_server(extra: &[&str]) -> (KillOnDrop, String) {
    let child = Command::new(BIN)
        .arg("serve")
        .args(extra)
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
    let (_server, addr) = start_server(&[]);

    let out = run(&["send", &addr, "hello pointsub"]);
    assert!(
        out.status.success(),
        "send failed: {:?}\n{}",
        out.status,
        out.stderr
    );
    assert_eq!(out.stdout_text().trim_end(), "hello pointsub");

    let out = run(&["send", &addr, "hello", "--protocol", "/nope/1"]);
    assert_eq!(out.status.code(), Some(REFUSED), "stderr: {}", out.stderr);
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
    assert!(out.stdout.is_empty(), "stdout: {}", out.stdout_text());
}

#[test]
fn demo_runs_clean() {
    let out = run(&["demo", "--requests", "3", "--burst", "500"]);
    assert!(
        out.status.success(),
        "demo failed: {:?}\n{}\n{}",
        out.status,
        out.stdout_text(),
        out.stderr
    );
    let stdout = out.stdout_text();
    for label in [
        "server peer id: 12D3Koo",
        "client peer id: 12D3Koo",
        "QPS: ",
    ] {
        assert!(stdout.contains(label), "no {label:?} in:\n{stdout}");
    }
    assert!(stdout.contains("failures: 0"), "{stdout}");
}

#[test]
fn send_needs_a_peer_id() {
    let out = run(&["send", "/ip4/127.0.0.1/tcp/4001", "hello"]);
    assert_eq!(out.status.code(), Some(USAGE), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("/p2p/"), "stderr: {}", out.stderr);
    assert!(out.stdout.is_empty(), "stdout: {}", out.stdout_text());
}

/// A fresh path under Cargo's scratch directory for this test target.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    let path = dir.join(format!("{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// 256 KiB that are not UTF-8 and do not compress, then 64 KiB of zeros
/// that do: both of the core's body paths, every byte value.
fn binary_body() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut body: Vec<u8> = (0..=255u8).collect();
    while body.len() < 256 << 10 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        body.extend_from_slice(&x.to_le_bytes());
    }
    body.extend(std::iter::repeat_n(0u8, 64 << 10));
    assert!(std::str::from_utf8(&body).is_err());
    body
}

#[test]
fn send_binary_body_from_file_and_stdin() {
    let (_server, addr) = start_server(&[]);
    let body = binary_body();

    // --file PATH, --out PATH: the echo comes back byte for byte.
    let input = scratch("body.bin");
    let output = scratch("reply-file.bin");
    std::fs::write(&input, &body).expect("write body");
    let (input_s, output_s) = (
        input.to_str().expect("utf-8"),
        output.to_str().expect("utf-8"),
    );
    let out = run(&["send", &addr, "--file", input_s, "--out", output_s]);
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    assert!(out.stdout.is_empty(), "stdout: {}", out.stdout_text());
    assert!(
        std::fs::read(&output).expect("reply written") == body,
        "reply differs"
    );

    // --file - (stdin), --out PATH.
    let output = scratch("reply-stdin.bin");
    let output_s = output.to_str().expect("utf-8");
    let out = run_with_stdin(
        &["send", &addr, "--file", "-", "--out", output_s],
        Some(body.clone()),
    );
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    assert!(
        std::fs::read(&output).expect("reply written") == body,
        "reply differs"
    );

    // --file - (stdin), --out - (stdout, nothing added).
    let out = run_with_stdin(
        &["send", &addr, "--file", "-", "--out", "-"],
        Some(body.clone()),
    );
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    assert!(
        out.stdout == body,
        "stdout differs ({} bytes)",
        out.stdout.len()
    );

    // An empty stdin is an empty body, and an empty reply.
    let out = run_with_stdin(
        &["send", &addr, "--file", "-", "--out", "-"],
        Some(Vec::new()),
    );
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    assert!(out.stdout.is_empty(), "stdout: {}", out.stdout_text());
}

#[test]
fn send_takes_exactly_one_body() {
    let peer = pointsub_tokio::PeerId::random();
    let addr = format!("/ip4/127.0.0.1/tcp/9/p2p/{peer}");
    // Both, or neither: clap's usage error, before any network use.
    for args in [
        vec!["send", &addr, "text", "--file", "-"],
        vec!["send", &addr],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(USAGE), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("Usage"), "{args:?}: {}", out.stderr);
    }
    // A file that is not there: a local failure, named.
    let missing = scratch("missing.bin");
    let out = run(&["send", &addr, "--file", missing.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("cannot read the body"),
        "{}",
        out.stderr
    );
}

#[test]
fn send_help_lists_exit_statuses() {
    let out = run(&["send", "--help"]);
    assert!(out.status.success(), "{}", out.stderr);
    let help = out.stdout_text();
    assert!(help.contains("Exit status"), "{help}");
    for code in [
        0,
        1,
        USAGE,
        CANNOT_CONNECT,
        TIMED_OUT,
        REFUSED,
        HANDLER_FAILED,
    ] {
        assert!(
            help.contains(&format!("\n  {code}  ")),
            "no status {code} in:\n{help}"
        );
    }
}

#[test]
fn send_exit_status_says_how_it_failed() {
    let (_server, addr) = start_server(&["--fail-protocol", "/fail/1"]);

    // The handler ran and failed: its message is shown.
    let out = run(&["send", &addr, "x", "--protocol", "/fail/1"]);
    assert_eq!(
        out.status.code(),
        Some(HANDLER_FAILED),
        "stderr: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("always fails"),
        "stderr: {}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "stdout: {}", out.stdout_text());

    // Not served: refused.
    let out = run(&["send", &addr, "x", "--protocol", "/nope/1"]);
    assert_eq!(out.status.code(), Some(REFUSED), "stderr: {}", out.stderr);

    // The echo protocol still answers beside the failing one.
    let out = run(&["send", &addr, "still here"]);
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    assert_eq!(out.stdout_text().trim_end(), "still here");
}

#[test]
fn send_exit_status_cannot_connect() {
    // A loopback port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port();
    let peer = pointsub_tokio::PeerId::random();
    let addr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}");
    // A generous deadline, so the retries end it and not the deadline.
    let out = run(&["send", &addr, "x", "--timeout", "40"]);
    assert_eq!(
        out.status.code(),
        Some(CANNOT_CONNECT),
        "stderr: {}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "stdout: {}", out.stdout_text());
}

#[test]
fn send_exit_status_timed_out() {
    // Each answer takes 20 s; the request may take 1 s.
    let (_server, addr) = start_server(&["--delay-ms", "20000"]);
    let out = run(&["send", &addr, "x", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(TIMED_OUT), "stderr: {}", out.stderr);
}

/// `bench --rounds 2` measures each system twice, taking turns, then
/// reports each case's median round and the ratios from those; `--rounds
/// 0` is refused.
#[test]
fn bench_rounds_take_turns_and_report_the_median() {
    let out = run(&[
        "bench",
        "--quick",
        "--rounds",
        "2",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--systems",
        "pointsub-tokio,raw-tcp",
    ]);
    let text = out.stdout_text();
    assert!(
        out.status.success(),
        "stderr: {}\nstdout: {text}",
        out.stderr
    );
    let round2 = text.find("round 2 of 2").expect("a second round");
    let tokio_rows: Vec<usize> = text
        .match_indices("\npointsub-tokio ")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(tokio_rows.len(), 3, "two rounds and the median: {text}");
    assert!(tokio_rows[0] < round2 && round2 < tokio_rows[1], "{text}");
    assert!(text.contains("median round of 2 per case"), "{text}");
    assert!(text.contains("  raw-tcp 581 B x 100: "), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ratio vs-request-response n/a vs-raw-tcp "),
        "{last}"
    );

    let out = run(&["bench", "--quick", "--rounds", "0"]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("--rounds"), "stderr: {}", out.stderr);
}
