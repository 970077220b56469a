//! One lab node on the host: its copy-on-write overlay over the image rootfs, its network
//! namespace (a file bound under the lab directory), and the `systemd-nspawn` process that boots
//! systemd as PID 1 in it. Processes are found from the kernel (`/proc`: the namespace inode and
//! the nspawn command line), never from a pid file, so a crashed lab can still be cleaned up.
//! Waiting is always on the actual condition with a deadline.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd::{self, CmdError, Output};

/// Errors of a node's host-side machinery.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("could not prepare {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node {node} is not running")]
    NotRunning { node: String },
    #[error(
        "node {node} stopped while booting ({status}); last console lines: {tail}; see {console}"
    )]
    Exited {
        node: String,
        status: String,
        tail: String,
        console: PathBuf,
    },
    #[error("node {node} did not reach {what} within {timeout:?} (last: {last}); see its console log {console}")]
    Timeout {
        node: String,
        what: &'static str,
        timeout: Duration,
        last: String,
        console: PathBuf,
    },
    #[error("processes of node {node} still alive after SIGKILL: {pids:?}")]
    Unkillable { node: String, pids: Vec<i32> },
    #[error(transparent)]
    Cmd(#[from] CmdError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a node's files live under the lab directory.
#[derive(Debug, Clone)]
pub struct NodePaths {
    pub name: String,
    pub dir: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub root: PathBuf,
    /// The node's `/var/lib/containerd`, bound in from the host's file system: containerd's
    /// overlayfs snapshotter cannot put an overlay upper layer on the node's overlay root.
    /// Part of the node's disk: a reinstall wipes it with the upper layer.
    pub containerd: PathBuf,
    pub console: PathBuf,
    pub netns: PathBuf,
}

impl NodePaths {
    pub fn new(lab_dir: &Path, node: &str) -> Self {
        let dir = lab_dir.join("nodes").join(node);
        NodePaths {
            name: node.to_string(),
            upper: dir.join("upper"),
            work: dir.join("work"),
            root: dir.join("root"),
            containerd: dir.join("containerd"),
            console: dir.join("console.log"),
            netns: lab_dir.join("netns").join(node),
            dir,
        }
    }
}

/// Mount points (from `/proc/self/mountinfo`) at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub fn is_mount_point(path: &Path) -> bool {
    mounts_under(path).iter().any(|p| p == path)
}

/// Makes `dir` a private bind mount of itself, so namespace files can be bound inside it
/// whatever the propagation of its parent.
pub fn ensure_private_mount(dir: &Path) -> Result<(), NodeError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    if !is_mount_point(dir) {
        let d = dir.to_string_lossy();
        cmd::run("mount", &["--bind", &d, &d])?;
        cmd::run("mount", &["--make-private", &d])?;
    }
    Ok(())
}

/// Creates the node's directories and mounts its overlay (idempotent).
pub fn mount_overlay(lower: &Path, p: &NodePaths) -> Result<(), NodeError> {
    for d in [&p.upper, &p.work, &p.root, &p.containerd] {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    if is_mount_point(&p.root) {
        return Ok(());
    }
    // volatile: no syncs to the upper layer. A node's writes only ever need to survive in the
    // host's page cache (a lab node never outlives the host), and unmounting then does not wait
    // for a sync of the host filesystem.
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},volatile",
        lower.display(),
        p.upper.display(),
        p.work.display()
    );
    cmd::run(
        "mount",
        &[
            "-t",
            "overlay",
            "overlay",
            "-o",
            &opts,
            &p.root.to_string_lossy(),
        ],
    )?;
    Ok(())
}

/// Creates the node's network namespace as a file bound at `p.netns` (idempotent).
pub fn create_netns(p: &NodePaths) -> Result<(), NodeError> {
    if is_mount_point(&p.netns) {
        return Ok(());
    }
    File::create(&p.netns).map_err(io_err(&p.netns))?;
    let flag = format!("--net={}", p.netns.display());
    cmd::run("unshare", &[&flag, "true"])?;
    Ok(())
}

/// The unit that makes a node's cgroup controllers writable inside it: nspawn mounts the v1
/// controllers read-only, but the node lives in a cgroup namespace rooted at its own directory
/// (see [`cgroup_hierarchies`]), so a writable bind of them reaches only its own subtree. It
/// also makes `/` a shared mount, as kubelet's volume mounts expect (kind's entrypoint does both).
const CGROUPS_UNIT: &str = "\
# Written by kubedna-lab: lab nodes only.
[Unit]
Description=kubedna-lab: writable cgroup controllers and shared mounts for containers
DefaultDependencies=no
Before=sysinit.target containerd.service kubelet.service
ConditionVirtualization=container

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for c in /sys/fs/cgroup/*/; do mount -o remount,bind,rw \"$c\"; done; mount --make-rshared /'

[Install]
WantedBy=sysinit.target
";

/// The kubelet flags every lab node gets (`/etc/default/kubelet`, read by kubeadm's drop-in).
const KUBELET_LAB_ARGS: &str = "\
# Written by kubedna-lab: lab nodes share the host's disk; no disk-based eviction.
KUBELET_EXTRA_ARGS=--eviction-hard=memory.available<100Mi,nodefs.available<0%,imagefs.available<0% --image-gc-high-threshold=100
";

/// Writes hostname and (once) a fresh machine id into the node's overlay, an empty
/// `/etc/resolv.conf` where the image has none (the lab has no DNS; the kubelet refuses to start
/// pods without the file), the lab's kubelet flags and the lab's cgroup unit.
pub fn write_identity(p: &NodePaths, hostname: &str) -> Result<String, NodeError> {
    let etc = p.root.join("etc");
    let resolv = etc.join("resolv.conf");
    if resolv.symlink_metadata().is_err() {
        std::fs::write(&resolv, "# kubedna-lab: no DNS server in the lab\n")
            .map_err(io_err(&resolv))?;
    }
    // Every node's disk is the host's: the kubelet would judge the host's free space against
    // its eviction thresholds (15 % for images) and evict every pod on a busy host. kind turns
    // disk eviction off for its nodes the same way; the kubeadm drop-in reads this file.
    let default_dir = etc.join("default");
    std::fs::create_dir_all(&default_dir).map_err(io_err(&default_dir))?;
    let kubelet_env = default_dir.join("kubelet");
    std::fs::write(&kubelet_env, KUBELET_LAB_ARGS).map_err(io_err(&kubelet_env))?;
    let unit_dir = etc.join("systemd/system");
    let wants = unit_dir.join("sysinit.target.wants");
    std::fs::create_dir_all(&wants).map_err(io_err(&wants))?;
    let unit = unit_dir.join("kubedna-lab-cgroups.service");
    std::fs::write(&unit, CGROUPS_UNIT).map_err(io_err(&unit))?;
    let link = wants.join("kubedna-lab-cgroups.service");
    if link.symlink_metadata().is_err() {
        std::os::unix::fs::symlink("../kubedna-lab-cgroups.service", &link)
            .map_err(io_err(&link))?;
    }
    let hn = etc.join("hostname");
    std::fs::write(&hn, format!("{hostname}\n")).map_err(io_err(&hn))?;
    let mid = etc.join("machine-id");
    let current = std::fs::read_to_string(&mid).unwrap_or_default();
    let current = current.trim();
    if current.len() == 32 && current.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(current.to_string());
    }
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(io_err(Path::new("/dev/urandom")))?;
    let id = hex::encode(bytes);
    std::fs::write(&mid, format!("{id}\n")).map_err(io_err(&mid))?;
    Ok(id)
}

/// The cgroup hierarchies nodes get their own directory in: the unified one and, on a hybrid
/// host, the named `systemd` one (which a container's systemd uses to track its units) and every
/// v1 controller (cpu, memory, pids, ...), so that the kubelet and runc in a node create their
/// cgroups under the node's own directory, never beside another node's.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.procs").exists() {
        return vec![root.to_path_buf()];
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|h| h.join("cgroup.procs").exists())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// Creates a cgroup directory; in a v1 cpuset hierarchy a new cgroup has no CPUs or memory
/// nodes until they are copied from its parent, and no task can join it before.
fn create_cgroup(dir: &Path) -> Result<(), NodeError> {
    let mut missing = Vec::new();
    let mut d = dir.to_path_buf();
    while !d.exists() {
        missing.push(d.clone());
        if !d.pop() {
            break;
        }
    }
    for d in missing.into_iter().rev() {
        std::fs::create_dir(&d).map_err(io_err(&d))?;
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let parent = d.parent().map(|p| p.join(f));
            if let Some(parent) = parent.filter(|p| p.exists()) {
                let v = std::fs::read_to_string(&parent).map_err(io_err(&parent))?;
                let own = d.join(f);
                std::fs::write(&own, v.trim()).map_err(io_err(&own))?;
            }
        }
    }
    Ok(())
}

/// The lab's cgroup directories, one per hierarchy: `HIERARCHY/kubedna-lab/LAB`.
pub fn lab_cgroups(lab: &str) -> Vec<PathBuf> {
    cgroup_hierarchies()
        .into_iter()
        .map(|h| h.join("kubedna-lab").join(lab))
        .collect()
}

/// Removes a cgroup tree (a killed node's systemd leaves its empty unit cgroups behind),
/// deepest first. Only directories can and need be removed in cgroupfs.
pub fn remove_cgroup_tree(dir: &Path) -> Result<(), NodeError> {
    if !dir.is_dir() {
        return Ok(());
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(|e| e.ok()) {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path())?;
            }
        }
    }
    // Freshly killed tasks leave the cgroup a moment after they die (EBUSY until then).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(io_err(dir)(e)),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Live processes anywhere in a cgroup tree.
pub fn cgroup_pids(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|&pid| alive(pid))
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(|e| e.ok()) {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                pids.extend(cgroup_pids(&e.path()));
            }
        }
    }
    pids
}

/// SIGKILLs every process in a cgroup tree (`cgroup.kill` where the kernel has it, and each
/// listed process in any case), then waits until the tree is empty.
pub fn kill_cgroup_tree(dir: &Path, deadline: Instant) -> Result<(), NodeError> {
    if !dir.is_dir() {
        return Ok(());
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for pid in cgroup_pids(dir) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let left = wait_gone(|| cgroup_pids(dir), deadline);
    if left.is_empty() {
        Ok(())
    } else {
        Err(NodeError::Unkillable {
            node: dir.display().to_string(),
            pids: left,
        })
    }
}

/// Starts `systemd-nspawn` booting the node, detached in its own process group, console to
/// `p.console`, in cgroups of its own (`HIERARCHY/kubedna-lab/LAB/NODE`): without them every
/// node's systemd would share the host's root cgroup and they would remove each other's unit
/// cgroups. Returns its pid; a thread reaps it when it exits.
pub fn spawn(p: &NodePaths, lab: &str, machine: &str, hostname: &str) -> Result<u32, NodeError> {
    let mut cgroups = Vec::new();
    for dir in lab_cgroups(lab) {
        let node_cg = dir.join(&p.name);
        if node_cg.exists() {
            // Left by an earlier boot of this node (killed): start from a clean tree.
            remove_cgroup_tree(&node_cg)?;
        }
        create_cgroup(&node_cg)?;
        cgroups.push(node_cg.to_string_lossy().into_owned());
    }
    let console = File::options()
        .create(true)
        .append(true)
        .open(&p.console)
        .map_err(io_err(&p.console))?;
    let console2 = console.try_clone().map_err(io_err(&p.console))?;
    let args = [
        "--quiet".to_string(),
        "--boot".to_string(),
        format!("--directory={}", p.root.display()),
        format!("--machine={machine}"),
        format!("--hostname={hostname}"),
        // The host may run without systemd/machined; the lab tracks nodes itself.
        "--register=no".to_string(),
        "--keep-unit".to_string(),
        format!("--network-namespace-path={}", p.netns.display()),
        "--console=read-only".to_string(),
        "--link-journal=no".to_string(),
        "--resolv-conf=off".to_string(),
        "--timezone=off".to_string(),
        // What a node needs to run containers itself (containerd, runc, a real kubelet; the
        // settings kube-spawn and kind's node entrypoint use): every capability the host has,
        // the kernel log for the kubelet's OOM watcher. Seccomp is off (SYSTEMD_SECCOMP=0
        // below): runc needs system calls nspawn's filter refuses (keyctl, ...). The node's
        // cgroup controllers are made writable inside it by `kubedna-lab-cgroups.service`.
        "--capability=all".to_string(),
        "--bind=/dev/kmsg".to_string(),
        format!("--bind={}:/var/lib/containerd", p.containerd.display()),
    ];
    // The shell joins the cgroups, then becomes nspawn: no window where nspawn runs elsewhere.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"for cg in $KUBEDNA_LAB_CGROUPS; do echo $$ > "$cg/cgroup.procs" || exit 125; done; exec systemd-nspawn "$@""#)
        .arg("sh")
        .env("KUBEDNA_LAB_CGROUPS", cgroups.join(" "))
        .env("SYSTEMD_SECCOMP", "0")
        // The node has a network namespace of its own, so its /proc/sys/net is its own: make it
        // writable (nspawn mounts /proc/sys read-only), so the agent's sysctls (ip_forward) apply.
        .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "network")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(console2)
        .current_dir("/")
        .process_group(0)
        .spawn()
        .map_err(|source| CmdError::Spawn {
            command: format!("systemd-nspawn {}", args.join(" ")),
            source,
        })?;
    let pid = child.id();
    // `spawn` returns once `sh` runs; wait until it has become nspawn (or failed), so that nobody
    // looks for the node's nspawn process in the moment of that exec, when its command line can
    // read empty, and so that a start that fails at once says why.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(exited(p, status.to_string()));
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe.file_name().is_some_and(|n| n == "systemd-nspawn") || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(pid)
}

/// Text without terminal escape sequences (`ESC [ ... letter`), as systemd colours its console.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The error for a node whose nspawn exited: its status and the end of its console log.
fn exited(p: &NodePaths, status: String) -> NodeError {
    let console = std::fs::read_to_string(&p.console).unwrap_or_default();
    let lines: Vec<&str> = console.lines().rev().take(8).collect();
    let tail = strip_ansi(&lines.into_iter().rev().collect::<Vec<_>>().join(" | "));
    NodeError::Exited {
        node: p.name.clone(),
        status,
        tail: cmd::tail(&tail),
        console: p.console.clone(),
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// The inode of a bound network namespace, if `path` is one.
pub fn netns_inode(path: &Path) -> Option<u64> {
    if !is_mount_point(path) {
        return None;
    }
    std::fs::metadata(path).ok().map(|m| m.ino())
}

fn pid_netns(pid: i32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// Live processes inside the network namespace with that inode.
pub fn pids_in_netns(ino: u64) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| pid_netns(pid) == Some(ino) && alive(pid))
        .collect()
}

/// Live processes whose command line mentions `needle` (nspawn names the node root there).
pub fn pids_with_arg_prefix(needle: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    c.split(|b| *b == 0)
                        .any(|arg| String::from_utf8_lossy(arg).contains(needle))
                })
                .unwrap_or(false)
                && alive(pid)
        })
        .collect()
}

/// Live processes with exactly `arg` among their arguments.
pub fn pids_with_arg(arg: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
                .unwrap_or(false)
                && alive(pid)
        })
        .collect()
}

/// How many PID namespaces deep a process is (the entries of `NSpid:` in its status).
fn pid_ns_depth(status: &str) -> Option<usize> {
    status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .map(|l| l.split_whitespace().count() - 1)
}

/// The node's PID 1 (systemd) as a host pid: the process in the node's network namespace that is
/// PID 1 of a PID namespace exactly one below the lab's own. Containers a node runs with the
/// host network (static pods) are PID 1 of namespaces one level deeper, and are not the node.
pub fn leader(p: &NodePaths) -> Option<i32> {
    let ino = netns_inode(&p.netns)?;
    let own = pid_ns_depth(&std::fs::read_to_string("/proc/self/status").ok()?)?;
    pids_in_netns(ino).into_iter().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .is_some_and(|s| {
                pid_ns_depth(&s) == Some(own + 1)
                    && s.lines()
                        .find(|l| l.starts_with("NSpid:"))
                        .and_then(|l| l.split_whitespace().last())
                        == Some("1")
            })
    })
}

/// The nspawn processes of this node.
pub fn nspawn_pids(p: &NodePaths) -> Vec<i32> {
    pids_with_arg_prefix(&format!("--directory={}", p.root.display()))
}

/// Every host process belonging to this node (nspawn and everything in its namespace).
pub fn node_pids(p: &NodePaths) -> Vec<i32> {
    let mut set: BTreeSet<i32> = nspawn_pids(p).into_iter().collect();
    if let Some(ino) = netns_inode(&p.netns) {
        set.extend(pids_in_netns(ino));
    }
    set.into_iter().collect()
}

const EXEC_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn nsenter_args(leader: i32, argv: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--target".to_string(),
        leader.to_string(),
        "--mount".into(),
        "--uts".into(),
        "--ipc".into(),
        "--net".into(),
        "--pid".into(),
        "--root".into(),
        "--wd".into(),
        "--".into(),
        "env".into(),
        "-i".into(),
        EXEC_PATH.into(),
        "HOME=/root".into(),
        "LANG=C.UTF-8".into(),
        "SYSTEMD_PAGER=".into(),
    ]
    .to_vec();
    if let Ok(term) = std::env::var("TERM") {
        args.insert(args.len() - 1, format!("TERM={term}"));
    }
    args.extend(argv.iter().map(|s| s.to_string()));
    args
}

/// Runs `argv` inside the node (all its namespaces), capturing output.
pub fn exec(p: &NodePaths, argv: &[&str], timeout: Option<Duration>) -> Result<Output, NodeError> {
    let leader = leader(p).ok_or_else(|| NodeError::NotRunning {
        node: p.name.clone(),
    })?;
    let args = nsenter_args(leader, argv);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Ok(cmd::output("nsenter", &refs, timeout)?)
}

/// Runs `argv` inside the node with the caller's stdin/stdout/stderr.
pub fn exec_interactive(p: &NodePaths, argv: &[&str]) -> Result<ExitStatus, NodeError> {
    let leader = leader(p).ok_or_else(|| NodeError::NotRunning {
        node: p.name.clone(),
    })?;
    let args = nsenter_args(leader, argv);
    Command::new("nsenter")
        .args(&args)
        .status()
        .map_err(|source| {
            NodeError::Cmd(CmdError::Spawn {
                command: format!("nsenter {}", args.join(" ")),
                source,
            })
        })
}

/// What `systemctl is-system-running` says inside the node, or "stopped"/"starting".
pub fn system_state(p: &NodePaths) -> String {
    if leader(p).is_none() {
        return if nspawn_pids(p).is_empty() {
            "stopped".into()
        } else {
            "starting".into()
        };
    }
    match exec(
        p,
        &["systemctl", "is-system-running"],
        Some(Duration::from_secs(5)),
    ) {
        Ok(o) if !o.stdout.trim().is_empty() => o.stdout.trim().to_string(),
        _ => "starting".into(),
    }
}

/// Waits until systemd in the node finished booting ("running" or "degraded"), returning the
/// state. Uses `systemctl is-system-running --wait`, re-tried only while systemd is not yet
/// reachable.
pub fn wait_booted(
    p: &NodePaths,
    deadline: Instant,
    timeout: Duration,
) -> Result<String, NodeError> {
    let mut last = String::from("no PID 1 yet");
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(NodeError::Timeout {
                node: p.name.clone(),
                what: "systemd running",
                timeout,
                last,
                console: p.console.clone(),
            });
        }
        if leader(p).is_some() {
            match exec(
                p,
                &["systemctl", "is-system-running", "--wait"],
                Some(deadline - now),
            ) {
                Ok(o) => {
                    let state = o.stdout.trim().to_string();
                    if state == "running" || state == "degraded" {
                        return Ok(state);
                    }
                    last = format!("{state} {}", cmd::tail(&o.stderr));
                }
                Err(NodeError::Cmd(CmdError::Timeout { .. })) => continue,
                Err(e) => last = e.to_string(),
            }
        } else if nspawn_pids(p).is_empty() {
            // Looked at twice, apart: a process read in the middle of a fork or exec can show an
            // empty command line for an instant.
            std::thread::sleep(Duration::from_millis(100));
            if leader(p).is_none() && nspawn_pids(p).is_empty() {
                return Err(exited(p, "nspawn is gone".to_string()));
            }
        }
        // Not reachable yet (no PID 1 or no manager socket): poll again shortly.
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn wait_gone(pids: impl Fn() -> Vec<i32>, deadline: Instant) -> Vec<i32> {
    loop {
        let left = pids();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Power cut: SIGKILL the node's PID 1 (the kernel kills its whole PID namespace) and nspawn,
/// then wait until none of its processes is left.
pub fn kill_node(p: &NodePaths) -> Result<(), NodeError> {
    send_kill(p);
    wait_killed(p, Instant::now() + Duration::from_secs(10))
}

/// Sends SIGKILL to the node's PID 1 and to all its processes, without waiting.
pub fn send_kill(p: &NodePaths) {
    if let Some(l) = leader(p) {
        let _ = kill(Pid::from_raw(l), Signal::SIGKILL);
    }
    for pid in node_pids(p) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Waits until none of the node's processes is left.
pub fn wait_killed(p: &NodePaths, deadline: Instant) -> Result<(), NodeError> {
    let left = wait_gone(|| node_pids(p), deadline);
    if left.is_empty() {
        Ok(())
    } else {
        Err(NodeError::Unkillable {
            node: p.name.clone(),
            pids: left,
        })
    }
}

/// Clean shutdown: SIGTERM to nspawn makes it power the container off; after `grace` the node is
/// killed.
pub fn stop_node(p: &NodePaths, grace: Duration) -> Result<(), NodeError> {
    for pid in nspawn_pids(p) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let left = wait_gone(|| node_pids(p), Instant::now() + grace);
    if left.is_empty() {
        Ok(())
    } else {
        kill_node(p)
    }
}

/// Sum of the proportional set size (PSS) of all the node's processes, in KiB.
pub fn memory_pss_kib(p: &NodePaths) -> u64 {
    crate::procfs::pss_kib(node_pids(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_colours_are_stripped_from_error_text() {
        let line =
            "[\u{1b}[0;32m  OK  \u{1b}[0m] Started \u{1b}[0;1;39mcontainerd.service\u{1b}[0m.";
        assert_eq!(strip_ansi(line), "[  OK  ] Started containerd.service.");
    }
}
