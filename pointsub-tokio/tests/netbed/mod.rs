//! A NAT test bed in Linux network namespaces (issue 13).
//!
//! # Layout
//!
//! ```text
//!                    public segment 203.0.113.0/24 (a bridge)
//!     relay .10      bootstrap .11      nat-a WAN .101      nat-b WAN .102
//!                                            |                    |
//!                                  masquerade, filtered   masquerade, filtered
//!                                            |                    |
//!                              198.51.100.0/24 (LAN a)     192.0.2.0/24 (LAN b)
//!                              nat-a .1, host-a .2         nat-b .1, host-b .2
//! ```
//!
//! Only the documentation ranges are used, and no namespace has a link to
//! the machine's own namespace: nothing can leave the machine. Each router
//! masquerades what leaves its WAN side (Linux keeps the source port when
//! it can: endpoint-independent mapping; never `random-fully`) and drops
//! new connections arriving on its WAN side, in its input and its forward
//! chains (filtered inbound; a dropped SYN is retransmitted, where a
//! rejected one would end a simultaneous open).
//!
//! # Lifetime
//!
//! Nothing is named, so nothing is global: the namespaces are anonymous
//! (no `ip netns` entries), interface names are local to their namespace,
//! and veth pairs are created inside the bed's namespaces, never in the
//! machine's. Two beds can run side by side.
//!
//! Everything dies with the process that built the bed, however it dies:
//! - each namespace is held by a `sh` that reads its stdin, a pipe whose
//!   only writer is this process: when this process exits (or is
//!   SIGKILLed) the pipe closes and the holder exits;
//! - every command run in the bed runs in the bed's own PID namespace,
//!   whose init is such a holder too; when the init exits, the kernel
//!   kills every process in that PID namespace.
//!
//! [`NetBed`]'s `Drop` closes those pipes and waits (bounded) for the
//! holders, so a normal run ends with nothing left either.
//!
//! # Requirements
//!
//! Root (or CAP_SYS_ADMIN and CAP_NET_ADMIN), and the tools `unshare`,
//! `nsenter`, `setpriv` (util-linux), `ip`, `ss` (iproute2) and `nft`
//! (nftables); `.ci/run` installs them when missing. Where namespaces
//! cannot be made, [`NetBed::new`] fails with a message saying so.
//! `POINTSUB_SKIP_NETNS=1` skips the bed's tests explicitly, with a line on
//! stderr ([`NetBed::new_or_skip`]).
#![allow(dead_code)] // Each test file uses its own part of the bed.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// The environment variable that skips the bed's tests when set to `1`.
pub const SKIP_VAR: &str = "POINTSUB_SKIP_NETNS";

/// Bound on each set-up step (one `ip`, `nft` or holder start).
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// Bound on the holders exiting when the bed is dropped.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// The public segment.
pub const PUBLIC_NET: &str = "203.0.113.0/24";
/// Private segment a, behind [`Host::NatA`].
pub const LAN_A_NET: &str = "198.51.100.0/24";
/// Private segment b, behind [`Host::NatB`].
pub const LAN_B_NET: &str = "192.0.2.0/24";

/// A machine of the bed, each in its own network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    /// On the public segment: where a relay node runs.
    Relay,
    /// On the public segment: where a bootstrap node runs.
    Bootstrap,
    /// The router (NAT) of private segment a.
    NatA,
    /// The one host of private segment a, behind [`Host::NatA`].
    HostA,
    /// The router (NAT) of private segment b.
    NatB,
    /// The one host of private segment b, behind [`Host::NatB`].
    HostB,
}

impl Host {
    /// Every host, in set-up order.
    pub const ALL: [Host; 6] = [
        Host::Relay,
        Host::Bootstrap,
        Host::NatA,
        Host::HostA,
        Host::NatB,
        Host::HostB,
    ];

    /// A short name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Host::Relay => "relay",
            Host::Bootstrap => "bootstrap",
            Host::NatA => "nat-a",
            Host::HostA => "host-a",
            Host::NatB => "nat-b",
            Host::HostB => "host-b",
        }
    }

    /// The host's address: on the public segment for the relay, the
    /// bootstrap host and the routers (their WAN side), on its private
    /// segment for a NATed host.
    pub fn addr(self) -> Ipv4Addr {
        match self {
            Host::Relay => Ipv4Addr::new(203, 0, 113, 10),
            Host::Bootstrap => Ipv4Addr::new(203, 0, 113, 11),
            Host::NatA => Ipv4Addr::new(203, 0, 113, 101),
            Host::NatB => Ipv4Addr::new(203, 0, 113, 102),
            Host::HostA => Ipv4Addr::new(198, 51, 100, 2),
            Host::HostB => Ipv4Addr::new(192, 0, 2, 2),
        }
    }

    /// For a NATed host, its router: the address its traffic leaves with.
    pub fn nat(self) -> Option<Host> {
        match self {
            Host::HostA => Some(Host::NatA),
            Host::HostB => Some(Host::NatB),
            _ => None,
        }
    }

    /// The address others on the public segment see this host's traffic
    /// come from: its router's WAN address if it is NATed, else its own.
    pub fn public_addr(self) -> Ipv4Addr {
        self.nat().unwrap_or(self).addr()
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the bed could not be built or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BedError {
    /// The kernel refused a new namespace: not root, no CAP_SYS_ADMIN, or
    /// user namespaces / namespaces disabled.
    #[error(
        "cannot create Linux namespaces ({detail}); the NAT test bed needs root \
         (or CAP_SYS_ADMIN and CAP_NET_ADMIN), as CI has; set {SKIP_VAR}=1 to skip \
         these tests explicitly"
    )]
    NoNamespaces {
        /// What the kernel or the tool said.
        detail: String,
    },
    /// A tool the bed runs is not installed.
    #[error(
        "`{tool}` not found: install Debian's `{package}` package (.ci/run does), \
         or set {SKIP_VAR}=1 to skip these tests explicitly"
    )]
    MissingTool {
        /// The program.
        tool: String,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// A command failed.
    #[error("{what} failed ({status}): {stderr}")]
    Failed {
        /// The command, as run.
        what: String,
        /// How it ended.
        status: ExitStatus,
        /// Its stderr.
        stderr: String,
    },
    /// A command did not end in time, and was killed.
    #[error("{what} did not end within {limit:?}")]
    Timeout {
        /// The command, as run.
        what: String,
        /// Its bound.
        limit: Duration,
    },
    /// Any other I/O error.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

impl BedError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BedError {
        let what = what.into();
        move |source| BedError::Io { what, source }
    }
}

/// The Debian package holding `tool`, for messages.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "ip" | "ss" => "iproute2",
        "nft" => "nftables",
        _ => "util-linux",
    }
}

/// Spawns `cmd`, naming the package when the program is missing.
fn spawn(cmd: &mut Command) -> Result<Child, BedError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    cmd.spawn().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            BedError::MissingTool {
                package: package_of(&tool),
                tool,
            }
        } else {
            BedError::Io {
                what: format!("spawn {tool}"),
                source,
            }
        }
    })
}

/// `cmd` as one line, for messages.
fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// What a finished command left.
#[derive(Debug)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Its stdout, as text.
    pub stdout: String,
    /// Its stderr, as text.
    pub stderr: String,
}

/// Runs `cmd` to its end with `input` on stdin, killing it (and failing)
/// after `limit`. A non-zero exit is not an error here.
pub fn run_bounded(cmd: &mut Command, input: &[u8], limit: Duration) -> Result<Output, BedError> {
    let what = describe(cmd);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(cmd)?;
    let mut stdin = child.stdin.take();
    let input = input.to_vec();
    let feeder = thread::spawn(move || {
        if let Some(pipe) = stdin.as_mut() {
            let _ = pipe.write_all(&input);
        }
        // Dropping the pipe is the end of file.
    });
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BedError::Timeout { what, limit });
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(BedError::io(format!("wait for {what}"))(e)),
        }
    };
    let _ = feeder.join();
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Reads all of `pipe` as text on a thread.
fn read_all(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Like [`run_bounded`], but a non-zero exit is an error.
fn run_ok(cmd: &mut Command, input: &[u8]) -> Result<Output, BedError> {
    let what = describe(cmd);
    let out = run_bounded(cmd, input, STEP_TIMEOUT)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(BedError::Failed {
            what,
            status: out.status,
            stderr: out.stderr.trim().to_owned(),
        })
    }
}

/// A process identity that survives PID reuse: its PID and its start time
/// (in clock ticks since boot, `/proc/PID/stat` field 22).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcId {
    /// The PID, in the machine's PID namespace.
    pub pid: u32,
    /// When it started.
    pub start: u64,
}

impl ProcId {
    /// The identity of live process `pid`, if it is there.
    pub fn of(pid: u32) -> Option<ProcId> {
        let (start, _) = stat_of(pid)?;
        Some(ProcId { pid, start })
    }

    /// Whether this very process still runs (a zombie does not: it holds
    /// nothing but its PID, until its parent or init reaps it).
    pub fn is_alive(self) -> bool {
        matches!(stat_of(self.pid), Some((start, state)) if start == self.start && state != 'Z')
    }
}

/// Start time and state of `pid`, from `/proc/PID/stat`.
fn stat_of(pid: u32) -> Option<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields
    // count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is starttime.
    let state = fields.first()?.chars().next()?;
    let start = fields.get(22 - 3)?.parse().ok()?;
    Some((start, state))
}

/// The namespace `/proc/PID/ns/KIND` names, e.g. `net:[4026532301]`.
fn ns_of(pid: u32, kind: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// What a bed consists of, to check later that none of it is left.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Every process the bed started: holders, PID-namespace init, and
    /// the wrappers of the commands run in it.
    pub procs: Vec<ProcId>,
    /// Its namespaces, as `/proc/PID/ns/*` names them (`net:[…]`,
    /// `pid:[…]`).
    pub namespaces: Vec<String>,
}

impl Inventory {
    /// One line per process, then one per namespace: `proc PID START`,
    /// `ns NAME`. [`Inventory::parse`] reads it back.
    pub fn to_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .procs
            .iter()
            .map(|p| format!("proc {} {}", p.pid, p.start))
            .collect();
        lines.extend(self.namespaces.iter().map(|ns| format!("ns {ns}")));
        lines
    }

    /// Reads [`Inventory::to_lines`]'s lines back, skipping others.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Inventory {
        let mut inv = Inventory::default();
        for line in lines {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("proc"), Some(pid), Some(start)) => {
                    if let (Ok(pid), Ok(start)) = (pid.parse(), start.parse()) {
                        inv.procs.push(ProcId { pid, start });
                    }
                }
                (Some("ns"), Some(ns), None) => inv.namespaces.push(ns.to_owned()),
                _ => {}
            }
        }
        inv
    }

    /// What of this bed is still there: live processes, and processes of
    /// the machine still in one of its namespaces. Empty when all is gone.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .procs
            .iter()
            .filter(|p| p.is_alive())
            .map(|p| format!("process {} still runs", p.pid))
            .collect();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            left.push("cannot read /proc".into());
            return left;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            for kind in ["net", "pid", "pid_for_children"] {
                if let Some(ns) = ns_of(pid, kind)
                    && self.namespaces.contains(&ns)
                {
                    left.push(format!("process {pid} is in the bed's {ns}"));
                }
            }
        }
        left
    }

    /// Waits up to `limit` for [`Inventory::leftovers`] to be empty;
    /// returns what is left then.
    pub fn wait_gone(&self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = self.leftovers();
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A process holding a namespace until its stdin closes.
struct Holder {
    child: Child,
    /// Its identity, taken when it started.
    id: Option<ProcId>,
    /// The write end of its stdin: dropping it ends the holder.
    stdin: Option<ChildStdin>,
}

impl Holder {
    /// Starts `unshare FLAGS -- sh -c 'echo ready; read _'` and waits for
    /// its `ready` (the namespaces exist then).
    fn start(flags: &[&str]) -> Result<Holder, BedError> {
        let mut cmd = Command::new("unshare");
        cmd.args(flags)
            .args(["--", "sh", "-c", "echo ready; read _"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = describe(&cmd);
        let mut child = spawn(&mut cmd)?;
        let stdin = child.stdin.take();
        let id = ProcId::of(child.id());
        let mut holder = Holder { child, id, stdin };
        let stdout = holder.child.stdout.take();
        let stderr = read_all(holder.child.stderr.take());
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            if let Some(out) = stdout {
                let _ = BufReader::new(out).read_line(&mut line);
            }
            let _ = tx.send(line);
        });
        match rx.recv_timeout(STEP_TIMEOUT) {
            Ok(line) if line.trim() == "ready" => Ok(holder),
            Ok(_) => {
                // It exited without a word: unshare failed.
                holder.stop();
                let detail = stderr.join().unwrap_or_default().trim().to_owned();
                Err(BedError::NoNamespaces {
                    detail: format!("{what}: {detail}"),
                })
            }
            Err(_) => {
                holder.stop();
                Err(BedError::Timeout {
                    what,
                    limit: STEP_TIMEOUT,
                })
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes its stdin, and waits (bounded) for it to end; kills it if
    /// it does not.
    fn stop(&mut self) {
        self.stdin = None;
        let deadline = Instant::now() + TEARDOWN_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
                Ok(None) => thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

/// The bed: six hosts and the public switch, each a network namespace.
pub struct NetBed {
    /// Init of the bed's PID namespace (the `unshare --pid --fork`
    /// process; its child is the namespace's PID 1).
    pid_init: Holder,
    /// The public segment's bridge.
    switch: Holder,
    hosts: BTreeMap<Host, Holder>,
    /// Wrappers of the commands started in the bed, for the inventory.
    started: Arc<Mutex<Vec<ProcId>>>,
}

impl NetBed {
    /// Builds the bed, or, with `POINTSUB_SKIP_NETNS=1`, says on stderr
    /// that `test` is skipped and returns `None`. Panics with
    /// [`BedError`]'s message when the bed cannot be built.
    pub fn new_or_skip(test: &str) -> Option<NetBed> {
        if NetBed::skipped(test) {
            return None;
        }
        match NetBed::new() {
            Ok(bed) => Some(bed),
            Err(e) => panic!("{test}: the NAT test bed cannot be built: {e}"),
        }
    }

    /// Whether `POINTSUB_SKIP_NETNS=1` skips the bed's tests; if so, says
    /// on stderr that `test` is skipped.
    pub fn skipped(test: &str) -> bool {
        let skip = std::env::var_os(SKIP_VAR).is_some_and(|v| v == "1");
        if skip {
            // Straight to stderr: the test harness captures `eprintln!`
            // of passing tests, and a skip must not be silent.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: {SKIP_VAR}=1, the NAT test bed was not built"
            );
        }
        skip
    }

    /// Builds the bed (see the module's documentation).
    pub fn new() -> Result<NetBed, BedError> {
        let pid_init = Holder::start(&["--pid", "--fork", "--kill-child"])?;
        let switch = Holder::start(&["--net"])?;
        let mut bed = NetBed {
            pid_init,
            switch,
            hosts: BTreeMap::new(),
            started: Arc::new(Mutex::new(Vec::new())),
        };
        for host in Host::ALL {
            let holder = Holder::start(&["--net"])?;
            bed.hosts.insert(host, holder);
        }
        bed.wire()?;
        Ok(bed)
    }

    /// Links, addresses, routes, forwarding and the routers' rules.
    fn wire(&self) -> Result<(), BedError> {
        // The switch: a bridge, and one veth per public host. Each pair is
        // made inside the switch's namespace with its peer placed straight
        // in the host's, so no device ever exists in the machine's own.
        let mut switch =
            String::from("link set lo up\nlink add br0 type bridge\nlink set br0 up\n");
        for (port, host, dev) in [
            ("p-relay", Host::Relay, "eth0"),
            ("p-boot", Host::Bootstrap, "eth0"),
            ("p-nat-a", Host::NatA, "wan"),
            ("p-nat-b", Host::NatB, "wan"),
        ] {
            let pid = self.holder(host).pid();
            switch.push_str(&format!(
                "link add {port} type veth peer name {dev} netns {pid}\n\
                 link set {port} master br0\nlink set {port} up\n"
            ));
        }
        self.ip_batch(&self.switch, &switch)?;
        // Each router's LAN side, with its host's end placed in the host.
        for (nat, host) in [(Host::NatA, Host::HostA), (Host::NatB, Host::HostB)] {
            let pid = self.holder(host).pid();
            self.ip_batch(
                self.holder(nat),
                &format!("link add lan type veth peer name eth0 netns {pid}\n"),
            )?;
        }
        let public = |host: Host, dev: &str| {
            format!(
                "link set lo up\naddr add {}/24 dev {dev}\nlink set {dev} up\n",
                host.addr()
            )
        };
        self.ip_batch(self.holder(Host::Relay), &public(Host::Relay, "eth0"))?;
        self.ip_batch(
            self.holder(Host::Bootstrap),
            &public(Host::Bootstrap, "eth0"),
        )?;
        for (nat, host, gateway) in [
            (Host::NatA, Host::HostA, Ipv4Addr::new(198, 51, 100, 1)),
            (Host::NatB, Host::HostB, Ipv4Addr::new(192, 0, 2, 1)),
        ] {
            let router = self.holder(nat);
            self.ip_batch(
                router,
                &format!(
                    "{}addr add {gateway}/24 dev lan\nlink set lan up\n",
                    public(nat, "wan")
                ),
            )?;
            self.in_ns(router, "sh")
                .args(["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
                .output_ok()?;
            self.in_ns(router, "nft")
                .args(["-f", "-"])
                .input(NAT_RULES.as_bytes())
                .output_ok()?;
            self.ip_batch(
                self.holder(host),
                &format!(
                    "link set lo up\naddr add {}/24 dev eth0\nlink set eth0 up\n\
                     route add default via {gateway}\n",
                    host.addr()
                ),
            )?;
        }
        Ok(())
    }

    /// Runs `ip -batch -` with `script` in `ns`'s network namespace.
    fn ip_batch(&self, ns: &Holder, script: &str) -> Result<(), BedError> {
        self.in_ns(ns, "ip")
            .args(["-batch", "-"])
            .input(script.as_bytes())
            .output_ok()
            .map(|_| ())
    }

    fn holder(&self, host: Host) -> &Holder {
        // Every host is inserted by `new`.
        &self.hosts[&host]
    }

    /// A command in `ns`'s network namespace only (not in the bed's PID
    /// namespace): for short set-up and inspection tools.
    fn in_ns(&self, ns: &Holder, program: impl AsRef<OsStr>) -> BedCommand {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/proc/{}/ns/net", ns.pid()))
            .arg("--")
            .arg(program);
        BedCommand {
            cmd,
            input: Vec::new(),
        }
    }

    /// Runs `program args…` in `host`'s network namespace to its end,
    /// bounded by `limit` (killed then, and an error). For tools (`ip`,
    /// `ss`, `nft`) and one-shot commands such as `pointsub send`; a
    /// non-zero exit is not an error here: see [`Output::status`].
    pub fn run<I, S>(
        &self,
        host: Host,
        program: impl AsRef<OsStr>,
        args: I,
        limit: Duration,
    ) -> Result<Output, BedError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.in_bed(host, program, args);
        run_bounded(&mut cmd, &[], limit)
    }

    /// Starts `program args…` in `host`'s network namespace and the bed's
    /// PID namespace; its stdout comes line by line from
    /// [`BedProcess::next_line`]. It is killed when the [`BedProcess`]
    /// drops, and in any case when the bed goes.
    pub fn spawn<I, S>(
        &self,
        host: Host,
        program: impl AsRef<OsStr>,
        args: I,
    ) -> Result<BedProcess, BedError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.in_bed(host, program, args);
        let what = describe(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn(&mut cmd)?;
        if let Some(id) = ProcId::of(child.id()) {
            lock(&self.started).push(id);
        }
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take();
        thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take();
        thread::spawn(move || {
            let Some(pipe) = pipe else { return };
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = lock(&sink);
                s.push_str(&line);
                s.push('\n');
            }
        });
        Ok(BedProcess {
            what,
            host,
            child,
            lines,
            stderr,
        })
    }

    /// `nsenter` into the bed's PID namespace and `host`'s network
    /// namespace, then `setpriv --pdeathsig KILL`, so that killing the
    /// `nsenter` (our child; it forks to enter the PID namespace) kills
    /// the command too.
    fn in_bed<I, S>(&self, host: Host, program: impl AsRef<OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!(
            "--pid=/proc/{}/ns/pid_for_children",
            self.pid_init.pid()
        ))
        .arg(format!("--net=/proc/{}/ns/net", self.holder(host).pid()))
        .args(["--", "setpriv", "--pdeathsig", "KILL", "--"])
        .arg(program)
        .args(args);
        cmd
    }

    /// Everything the bed consists of now, for [`Inventory::leftovers`].
    pub fn inventory(&self) -> Inventory {
        let mut inv = Inventory::default();
        let holders = std::iter::once(&self.pid_init)
            .chain(std::iter::once(&self.switch))
            .chain(self.hosts.values());
        for holder in holders {
            inv.procs.extend(holder.id);
        }
        inv.procs.extend(lock(&self.started).iter().copied());
        let init = self.pid_init.pid();
        // The PID namespace's own PID 1, child of the unshare.
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
        {
            for pid in children.split_whitespace().filter_map(|p| p.parse().ok()) {
                inv.procs.extend(ProcId::of(pid));
            }
        }
        inv.namespaces.extend(ns_of(init, "pid_for_children"));
        inv.namespaces.extend(ns_of(self.switch.pid(), "net"));
        for holder in self.hosts.values() {
            inv.namespaces.extend(ns_of(holder.pid(), "net"));
        }
        inv
    }

    /// The packet count of the rule with `comment` in `nat`'s ruleset (see
    /// [`NAT_RULES`]: `wan-input-drop`, `wan-forward-drop`, `masquerade`).
    pub fn rule_packets(&self, nat: Host, comment: &str) -> Result<u64, BedError> {
        let out = self
            .in_ns(self.holder(nat), "nft")
            .args(["list", "ruleset"])
            .output_ok()?;
        let needle = format!("comment \"{comment}\"");
        out.stdout
            .lines()
            .find(|l| l.contains(&needle))
            .and_then(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == "packets")?;
                words.next()?.parse().ok()
            })
            .ok_or_else(|| BedError::Failed {
                what: format!("nft list ruleset in {nat}"),
                status: out.status,
                stderr: format!("no counter for rule {comment:?} in:\n{}", out.stdout),
            })
    }
}

impl Drop for NetBed {
    fn drop(&mut self) {
        // The PID namespace first: its init's exit kills every command.
        self.pid_init.stop();
        for holder in self.hosts.values_mut() {
            holder.stop();
        }
        self.switch.stop();
    }
}

/// The routers' ruleset: masquerade out of the WAN side (keeping source
/// ports: no `random`, no `random-fully`), and drop new connections coming
/// in on it, to the router itself (input) or through it (forward). Each
/// rule counts, for [`NetBed::rule_packets`].
pub const NAT_RULES: &str = r#"
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" counter masquerade comment "masquerade"
    }
}
table inet filter {
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state new counter drop comment "wan-input-drop"
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname "wan" ct state new counter drop comment "wan-forward-drop"
    }
}
"#;

/// A command being built for a namespace.
struct BedCommand {
    cmd: Command,
    input: Vec<u8>,
}

impl BedCommand {
    fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    fn input(mut self, input: &[u8]) -> Self {
        self.input = input.to_vec();
        self
    }

    /// Runs it to its end (bounded); non-zero exit is an error.
    fn output_ok(mut self) -> Result<Output, BedError> {
        run_ok(&mut self.cmd, &self.input)
    }
}

/// A command running in the bed; killed when dropped.
pub struct BedProcess {
    what: String,
    host: Host,
    /// The `nsenter` wrapper; the command dies with it.
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl BedProcess {
    /// The next line of its stdout, waiting up to `limit`; `None` at the
    /// end of its output or after `limit`.
    pub fn next_line(&self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }

    /// Waits up to `limit` for a stdout line that `want` accepts, and
    /// returns it; an error with what it printed otherwise.
    pub fn wait_line(
        &self,
        limit: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if want(&line) => return Ok(line),
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{} in {}: no expected line within {limit:?}; stdout: {seen:?}; stderr: {}",
                        self.what,
                        self.host,
                        self.stderr()
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "{} in {}: exited without the expected line; stdout: {seen:?}; stderr: {}",
                        self.what,
                        self.host,
                        self.stderr()
                    ));
                }
            }
        }
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// Whether it has exited, and how.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `limit` for it to exit; `None` if it still runs.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The rest of its stdout, once it has exited.
    pub fn rest_of_stdout(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BedProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Locks `m`, recovering from a panic elsewhere (the data are plain).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
