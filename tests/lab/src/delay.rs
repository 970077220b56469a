//! Link delay where the kernel has no netem qdisc (ours: `CONFIG_NET_SCH_NETEM` is not set).
//!
//! In the node's network namespace, iptables (nf_tables with the xt `NFQUEUE` target, which such
//! kernels still have) sends every IPv4 packet the node receives on `eth0` (mangle PREROUTING) or
//! sends out of it (mangle OUTPUT) to netfilter queue 0 of that namespace. A helper process,
//! `kubedna-lab delay-helper --netns=PATH --ms=MS`, holds each queued packet's verdict for MS
//! milliseconds and then accepts it, in arrival order: the same fixed delay in each direction as
//! `tc netem delay`, no loss, no reordering. The helper enters the node's namespace only to open
//! its netlink socket and then lives in the host's, so it outlives node kills and restarts like
//! the namespace and its rules do. The rules carry `--queue-bypass` and the queue is fail-open: a
//! helper that is gone, or a full queue, means no delay rather than a blackhole. The helper names
//! the lab directory on its command line, so `down` finds and kills it with the lab's processes.
//! Only IPv4 is delayed (the lab is IPv4; ARP is not IP and passes at once).

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::fd::AsFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};

use crate::cmd::{self, CmdError};
use crate::node;

/// The iptables chain (mangle table, node namespace) that queues the node's packets.
pub const CHAIN: &str = "KUBEDNA-LAB-DELAY";
/// The queue number; queues are per network namespace, so every node uses the same one.
pub const QUEUE: u16 = 0;
/// The helper's subcommand name in `kubedna-lab`.
pub const HELPER_COMMAND: &str = "delay-helper";
/// The longest delay accepted (netem's practical range for a lab).
pub const MAX_MS: u32 = 10_000;

/// Errors of the delay helper and its rules.
#[derive(Debug, thiserror::Error)]
pub enum DelayError {
    #[error(
        "cannot find the kubedna-lab binary to run the delay helper ({tried}); set \
         KUBEDNA_LAB_BIN to its path"
    )]
    NoBinary { tried: String },
    #[error(
        "the delay helper for {netns} did not start: {reason}; see {log}. Without netem, `delay` \
         needs a kernel with nfnetlink_queue (CONFIG_NETFILTER_NETLINK_QUEUE) and the xt NFQUEUE \
         target, and iptables on the host (scripts/setup installs it)"
    )]
    HelperFailed {
        netns: PathBuf,
        reason: String,
        log: PathBuf,
    },
    #[error("the delay helper for {netns} is still alive after SIGKILL: {pids:?}")]
    Unkillable { netns: PathBuf, pids: Vec<i32> },
    #[error("netfilter queue {QUEUE} in {netns}: {step}")]
    Queue {
        netns: PathBuf,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {netns}: {step}")]
    Namespace {
        netns: PathBuf,
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("could not open {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cmd(#[from] CmdError),
}

fn netns_arg(netns: &Path) -> String {
    format!("--netns={}", netns.display())
}

/// Live helper processes for this namespace (matched on their exact `--netns=` argument).
pub fn helper_pids(netns: &Path) -> Vec<i32> {
    node::pids_with_arg(&netns_arg(netns))
}

/// The kubedna-lab binary that runs the helper: `$KUBEDNA_LAB_BIN`, this program if it is
/// kubedna-lab, or the kubedna-lab beside it or one directory up (how cargo lays out test
/// binaries under `target/<profile>/deps`).
fn lab_binary() -> Result<PathBuf, DelayError> {
    if let Some(p) = std::env::var_os("KUBEDNA_LAB_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| DelayError::NoBinary {
        tried: format!("the current executable: {e}"),
    })?;
    if exe.file_name().is_some_and(|n| n == "kubedna-lab") {
        return Ok(exe);
    }
    let mut tried = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("kubedna-lab");
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
    }
    Err(DelayError::NoBinary {
        tried: tried.join(", "),
    })
}

fn iptables(netns: &Path, args: &[&str]) -> Result<cmd::Output, CmdError> {
    let ns = format!("--net={}", netns.display());
    let mut full = vec![ns.as_str(), "--", "iptables", "-w", "-t", "mangle"];
    full.extend_from_slice(args);
    cmd::output("nsenter", &full, None)
}

/// The two jumps into [`CHAIN`]: packets received on, and sent out of, the node's `eth0`.
const JUMPS: [[&str; 3]; 2] = [["PREROUTING", "-i", "eth0"], ["OUTPUT", "-o", "eth0"]];

fn install_rules(netns: &Path) -> Result<(), CmdError> {
    // -N fails when the chain exists (a helper restarted with a new delay): then it is flushed.
    let _ = iptables(netns, &["-N", CHAIN])?;
    iptables(netns, &["-F", CHAIN])?.check()?;
    let queue = QUEUE.to_string();
    iptables(
        netns,
        &[
            "-A",
            CHAIN,
            "-j",
            "NFQUEUE",
            "--queue-num",
            &queue,
            "--queue-bypass",
        ],
    )?
    .check()?;
    for [hook, dir, dev] in JUMPS {
        if !iptables(netns, &["-C", hook, dir, dev, "-j", CHAIN])?.success() {
            iptables(netns, &["-A", hook, dir, dev, "-j", CHAIN])?.check()?;
        }
    }
    Ok(())
}

/// Removes the rules; missing ones (never delayed, namespace already gone) are fine.
fn remove_rules(netns: &Path) -> Result<(), CmdError> {
    if !netns.exists() {
        return Ok(());
    }
    for [hook, dir, dev] in JUMPS {
        while iptables(netns, &["-D", hook, dir, dev, "-j", CHAIN])?.success() {}
    }
    if iptables(netns, &["-F", CHAIN])?.success() {
        iptables(netns, &["-X", CHAIN])?.check()?;
    }
    Ok(())
}

/// Kills this namespace's helper, if any, and waits until it is gone.
pub fn kill_helpers(netns: &Path) -> Result<(), DelayError> {
    for pid in helper_pids(netns) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = helper_pids(netns);
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DelayError::Unkillable {
                netns: netns.to_path_buf(),
                pids: left,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Delays the namespace's `eth0` by `ms` in each direction (0 removes the delay): replaces any
/// helper of this namespace with one for `ms`, waits until its queue is bound, then puts the
/// rules in place. The helper's messages go to `log`.
pub fn set(netns: &Path, ms: u32, log: &Path) -> Result<(), DelayError> {
    if ms == 0 {
        remove_rules(netns)?;
        return kill_helpers(netns);
    }
    kill_helpers(netns)?;
    let bin = lab_binary()?;
    let log_file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|source| DelayError::Io {
            path: log.to_path_buf(),
            source,
        })?;
    let failed = |reason: String| DelayError::HelperFailed {
        netns: netns.to_path_buf(),
        reason,
        log: log.to_path_buf(),
    };
    let mut child = Command::new(&bin)
        .arg(HELPER_COMMAND)
        .arg(netns_arg(netns))
        .arg(format!("--ms={ms}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .current_dir("/")
        // Its own process group: a Ctrl-C of the command that started it does not stop it.
        .process_group(0)
        .spawn()
        .map_err(|e| failed(format!("{}: {e}", bin.display())))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| failed("no pipe".into()))?;
    // The helper prints one line once its queue is bound, or exits; read it off this thread so a
    // helper that hangs cannot hang us.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    if line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        let tail = std::fs::read_to_string(log).unwrap_or_default();
        return Err(failed(cmd::tail(&tail)));
    }
    // Reap it whenever it ends (when this process lives on, as tests do).
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    install_rules(netns)?;
    Ok(())
}

/// The helper itself (`kubedna-lab delay-helper`): binds the namespace's queue, says `ready` on
/// stdout, then accepts every queued packet `ms` after it arrived, in order. Runs until killed.
pub fn run_helper(netns: &Path, ms: u32) -> Result<(), DelayError> {
    let delay = Duration::from_millis(u64::from(ms.min(MAX_MS)));
    let queue_err = |step: &'static str| {
        let netns = netns.to_path_buf();
        move |source: std::io::Error| DelayError::Queue {
            netns,
            step,
            source,
        }
    };
    let ns_err = |step: &'static str| {
        let netns = netns.to_path_buf();
        move |source: nix::Error| DelayError::Namespace {
            netns,
            step,
            source,
        }
    };
    // Enter the node's namespace for the socket only; the socket stays bound to it.
    let home = std::fs::File::open("/proc/self/ns/net").map_err(|source| DelayError::Io {
        path: "/proc/self/ns/net".into(),
        source,
    })?;
    let target = std::fs::File::open(netns).map_err(|source| DelayError::Io {
        path: netns.to_path_buf(),
        source,
    })?;
    setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(ns_err("enter"))?;
    let opened = nfq::Queue::open();
    setns(home.as_fd(), CloneFlags::CLONE_NEWNET).map_err(ns_err("return to the host's"))?;
    let mut queue = opened.map_err(queue_err("open a netlink socket"))?;
    queue.bind(QUEUE).map_err(queue_err("bind"))?;
    // Metadata only: the verdict needs the packet id, never the packet.
    queue
        .set_copy_range(QUEUE, 0)
        .map_err(queue_err("set the copy range"))?;
    queue
        .set_queue_max_len(QUEUE, 8192)
        .map_err(queue_err("set the queue length"))?;
    queue
        .set_fail_open(QUEUE, true)
        .map_err(queue_err("make the queue fail open"))?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    loop {
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, mut msg)) = held.pop_front() {
                msg.set_verdict(nfq::Verdict::Accept);
                queue.verdict(msg).map_err(queue_err("verdict"))?;
            }
        }
        // Nothing held: wait for the next packet as long as it takes. Packets held: look for new
        // ones without blocking, and look again within a millisecond, or at the next release if
        // that is sooner. (The queue's socket is not exposed for poll(2); this bounds the added
        // error to about 1 ms.)
        let next_due = held.front().map(|(due, _)| *due);
        queue.set_nonblocking(next_due.is_some());
        match queue.recv() {
            Ok(msg) => held.push_back((Instant::now() + delay, msg)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let nap = next_due
                    .map(|d| d.saturating_duration_since(Instant::now()))
                    .unwrap_or_default()
                    .min(Duration::from_millis(1));
                std::thread::sleep(nap);
            }
            // The kernel's answer to a verdict for a packet it already let go (its device went
            // down, say): nothing to do.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => {}
            Err(e) => return Err(queue_err("receive")(e)),
        }
    }
}
