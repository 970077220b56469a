//! The qemu provisioner: a lab node as a virtual machine booting the image's UEFI disk
//! (`disk.qcow2` of `kubedna-image build --outputs tar,disk`) under OVMF, for the full VM boot
//! path (firmware, bootloader, kernel, initrd, growpart, cloud-init from a `cidata` ISO).
//!
//! Per node, under `nodes/NODE/` of the lab directory: a qcow2 copy-on-write overlay over the
//! image's disk, its own OVMF variable store, the NoCloud seed ISO rendered by `kubedna-image
//! seed` (the production templates, with the node's static address as network-config), the
//! serial console log, the QMP socket and qemu's pid file. Its NIC is a tap device named like a
//! nspawn node's veth (`kdl-ID-N`), enslaved to the lab bridge, so partition, loss and `down`
//! treat both kinds of port alike. The MAC is derived from the lab and node names.
//!
//! The host reaches into a VM over ssh from the bridge address (never beyond the bridge): the
//! lab's own key goes into the seed's `sshAuthorizedKeys`, and a lab `vendor-data` (what a
//! cloud provider supplies beside the user's data) lets root use it. Readiness is what it is for
//! nspawn nodes: `systemctl is-system-running --wait`, then `kubedna status` answering.
//!
//! Acceleration is TCG unless `KUBEDNA_LAB_QEMU_ACCEL=kvm` and `/dev/kvm` exists: on our test
//! machines `/dev/kvm` exists but does not run a stock guest kernel (DESIGN.md), so its mere
//! presence proves nothing. Processes are found by their command line (which names the node's
//! overlay), so `down` finds them after a crash; this module never starts a VM without a tap on
//! the lab bridge and never gives one any other network.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

use crate::cmd::{self, CmdError};
use crate::node;
use crate::seed::ClusterDesc;

/// Firmware code (read-only, shared) and the template of each node's variable store.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Guest memory (MiB) and vCPUs: what the image's own boot test uses.
pub const MEMORY_MIB: u32 = 2048;
pub const CPUS: u32 = 2;
/// Set to `kvm` to use /dev/kvm (only where it runs guests; not on our test machines).
pub const ACCEL_ENV: &str = "KUBEDNA_LAB_QEMU_ACCEL";
/// How often a booting VM is asked over ssh whether it is up: each try costs the emulated guest
/// a key exchange, so not more often.
const SSH_POLL: Duration = Duration::from_secs(2);

/// Errors of the qemu provisioner.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("image {dir} has no disk (disk.qcow2 or disk.raw): the qemu provisioner boots the disk image; build it with `kubedna-image build --base debian-12 --outputs tar,disk --out {dir}` (add --without-kubernetes here)")]
    NoDisk { dir: PathBuf },
    #[error("qemu provisioner: missing {what} ({path}); install it (scripts/deps/image.txt: qemu-system-x86, qemu-utils, ovmf)")]
    Missing { what: &'static str, path: PathBuf },
    #[error("the qemu provisioner renders seeds with `kubedna-image seed`, which was not found; put it on PATH, next to kubedna-lab, or in $KUBEDNA_IMAGE")]
    NoBuilder,
    #[error("could not prepare {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "VM {node} is not running (qemu exited); see its console log {console} and {qemu_log}"
    )]
    NotRunning {
        node: String,
        console: PathBuf,
        qemu_log: PathBuf,
    },
    #[error("VM {node} did not reach {what} within {timeout:?} (last: {last}); see its console log {console}")]
    Timeout {
        node: String,
        what: &'static str,
        timeout: Duration,
        last: String,
        console: PathBuf,
    },
    #[error("qemu of VM {node} still alive after SIGKILL: {pids:?}")]
    Unkillable { node: String, pids: Vec<i32> },
    #[error("QMP of VM {node} ({socket}) failed: {what}")]
    Qmp {
        node: String,
        socket: PathBuf,
        what: String,
    },
    #[error(transparent)]
    Cmd(#[from] CmdError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> QemuError + '_ {
    move |source| QemuError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A VM node's files under the lab directory (the same `nodes/NODE/` a nspawn node uses).
#[derive(Debug, Clone)]
pub struct VmPaths {
    pub name: String,
    pub dir: PathBuf,
    pub disk: PathBuf,
    pub vars: PathBuf,
    pub seed_dir: PathBuf,
    pub iso: PathBuf,
    pub console: PathBuf,
    pub qemu_log: PathBuf,
    pub pid_file: PathBuf,
    pub qmp: PathBuf,
}

impl VmPaths {
    pub fn new(lab_dir: &Path, node: &str) -> Self {
        let dir = lab_dir.join("nodes").join(node);
        VmPaths {
            name: node.to_string(),
            disk: dir.join("disk.qcow2"),
            vars: dir.join("OVMF_VARS.fd"),
            seed_dir: dir.join("seed"),
            iso: dir.join("seed.iso"),
            console: dir.join("console.log"),
            qemu_log: dir.join("qemu.log"),
            pid_file: dir.join("qemu.pid"),
            qmp: dir.join("qmp.sock"),
            dir,
        }
    }
}

/// The image's disk: `DIR/disk.qcow2`, else `DIR/disk.raw`.
pub fn find_disk(image_dir: &Path) -> Result<PathBuf, QemuError> {
    ["disk.qcow2", "disk.raw"]
        .iter()
        .map(|f| image_dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| QemuError::NoDisk {
            dir: image_dir.to_path_buf(),
        })
}

/// Checks that qemu, qemu-img and the firmware are installed.
pub fn check_host() -> Result<(), QemuError> {
    for (what, prog) in [
        ("qemu-system-x86_64", "qemu-system-x86_64"),
        ("qemu-img", "qemu-img"),
        ("xorriso", "xorriso"),
        ("ssh", "ssh"),
        ("ssh-keygen", "ssh-keygen"),
    ] {
        if !cmd::exists(prog) {
            return Err(QemuError::Missing {
                what,
                path: prog.into(),
            });
        }
    }
    for f in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(f).is_file() {
            return Err(QemuError::Missing {
                what: "OVMF firmware",
                path: f.into(),
            });
        }
    }
    Ok(())
}

/// A stable, locally administered unicast MAC for a node: `52:54:00` (qemu's prefix) and three
/// bytes of sha256("LAB/NODE").
pub fn mac(lab: &str, node: &str) -> String {
    let d = Sha256::digest(format!("{lab}/{node}").as_bytes());
    format!("52:54:00:{:02x}:{:02x}:{:02x}", d[0], d[1], d[2])
}

/// The accelerator: `tcg`, or `kvm` when asked for with [`ACCEL_ENV`] and /dev/kvm exists.
pub fn accel() -> &'static str {
    let asked = std::env::var(ACCEL_ENV).is_ok_and(|v| v == "kvm");
    if asked && Path::new("/dev/kvm").exists() {
        "kvm"
    } else {
        "tcg"
    }
}

/// The lab's ssh key pair (`LAB/ssh/id_ed25519`), made once; returns the private key's path.
pub fn ensure_ssh_key(lab_dir: &Path) -> Result<PathBuf, QemuError> {
    let dir = lab_dir.join("ssh");
    let key = dir.join("id_ed25519");
    if key.is_file() && key.with_extension("pub").is_file() {
        return Ok(key);
    }
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(&dir))?;
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(key.with_extension("pub"));
    let k = key.to_string_lossy();
    cmd::run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "kubedna-lab",
            "-f",
            &k,
        ],
    )?;
    Ok(key)
}

fn public_key(key: &Path) -> Result<String, QemuError> {
    let p = key.with_extension("pub");
    Ok(std::fs::read_to_string(&p)
        .map_err(io_err(&p))?
        .trim()
        .to_string())
}

/// The VM's NIC as the lab (the hypervisor) set it up.
#[derive(Debug, Clone)]
pub struct Nic {
    pub mac: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

impl Nic {
    /// network-config v2 for this NIC, matched by its MAC: cloud-init 22.4 with Debian's ifupdown
    /// (eni) renderer ignores `match: name` globs and names the interface after the YAML key, so
    /// the seed's own `name: "e*"` config configures nothing there; a MAC match works with every
    /// renderer. The default route goes to the bridge address, which forwards nowhere; it is
    /// `gateway4`, because eni renders `routes:` as `post-up route add ...` and the image has no
    /// `route` (net-tools), so such a route would silently be missing.
    pub fn network_config(&self) -> String {
        format!(
            "version: 2\nethernets:\n  lab0:\n    match:\n      macaddress: \"{}\"\n    \
             addresses: [{}/{}]\n    gateway4: {}\n",
            self.mac, self.address, self.prefix, self.gateway
        )
    }
}

/// Vendor-data the lab adds to every VM's seed, as a cloud provider does: root may log in with
/// the keys of the user-data (the lab's own key), which is how the host reaches into a VM.
const VENDOR_DATA: &str = "#cloud-config\n# kubedna-lab: the host reaches into the VM as root over ssh with the lab's key.\ndisable_root: false\n";

/// What a VM's seed is rendered from.
#[derive(Debug)]
pub struct VmSeed<'a> {
    /// The `kubedna-image` binary.
    pub builder: &'a str,
    /// The lab's root-only seed directory.
    pub work: &'a Path,
    pub desc: &'a ClusterDesc,
    pub secret: &'a str,
    /// The lab's private key (its `.pub` goes into the seed).
    pub ssh_key: &'a Path,
    /// Replaces the rendered user-data when given (the node provider's caller).
    pub user_data: Option<&'a str>,
    pub nic: &'a Nic,
}

/// Renders the node's seed with `builder seed` (the production templates) from the cluster
/// description plus the lab's ssh key, replaces its network-config by [`Nic::network_config`],
/// adds [`VENDOR_DATA`], and writes the `cidata` ISO at `p.iso`.
pub fn render_seed_iso(p: &VmPaths, seed: &VmSeed<'_>) -> Result<(), QemuError> {
    let VmSeed {
        builder,
        work,
        desc,
        secret,
        ssh_key,
        user_data,
        nic,
    } = *seed;
    let private = |path: &Path, content: &str| -> Result<(), QemuError> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, content).map_err(io_err(path))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(path))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    };
    std::fs::create_dir_all(work).map_err(io_err(work))?;
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o700)).map_err(io_err(work))?;
    private(&work.join("cluster-secret"), secret)?;
    let key = public_key(ssh_key)?;
    let yaml = format!(
        "{}sshAuthorizedKeys: [{}]\n",
        desc.to_yaml(),
        serde_json::Value::String(key)
    );
    let cluster = work.join("cluster-qemu.yaml");
    private(&cluster, &yaml)?;
    if p.seed_dir.exists() {
        std::fs::remove_dir_all(&p.seed_dir).map_err(io_err(&p.seed_dir))?;
    }
    let (c, o) = (cluster.to_string_lossy(), p.seed_dir.to_string_lossy());
    cmd::run(
        builder,
        &["seed", "--cluster", &c, "--node", &p.name, "--out", &o],
    )?;
    if let Some(ud) = user_data {
        private(&p.seed_dir.join("user-data"), ud)?;
    }
    private(&p.seed_dir.join("network-config"), &nic.network_config())?;
    private(&p.seed_dir.join("vendor-data"), VENDOR_DATA)?;
    let mut args: Vec<String> = [
        "-as",
        "genisoimage",
        "-quiet",
        "-volid",
        "cidata",
        "-joliet",
        "-rock",
        "-output",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let partial = p.iso.with_extension("iso.partial");
    args.push(partial.to_string_lossy().into_owned());
    for f in ["user-data", "meta-data", "network-config", "vendor-data"] {
        let path = p.seed_dir.join(f);
        if path.is_file() {
            args.push(path.to_string_lossy().into_owned());
        }
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cmd::run("xorriso", &refs)?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(&partial))?;
    std::fs::rename(&partial, &p.iso).map_err(io_err(&p.iso))?;
    Ok(())
}

/// Creates the node's tap `tap` (persistent, so qemu needs no helper) and enslaves it to the
/// lab bridge (idempotent).
pub fn create_tap(tap: &str, bridge: &str) -> Result<(), QemuError> {
    if !crate::net::link_exists(tap) {
        cmd::run("ip", &["tuntap", "add", "dev", tap, "mode", "tap"])?;
    }
    // Lab traffic is IPv4 on the lab subnet; the port itself carries no address.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{tap}/disable_ipv6"), "1");
    cmd::run("ip", &["link", "set", tap, "master", bridge, "up"])?;
    Ok(())
}

/// Creates the node's disk (a qcow2 overlay over the image's disk, 1 GiB larger so growpart has
/// room) and firmware variable store, unless they exist (a power-cut VM keeps its disk).
pub fn prepare_disk(p: &VmPaths, base: &Path) -> Result<(), QemuError> {
    std::fs::create_dir_all(&p.dir).map_err(io_err(&p.dir))?;
    if !p.disk.is_file() {
        let fmt = if base.extension().is_some_and(|e| e == "raw") {
            "raw"
        } else {
            "qcow2"
        };
        let base_abs = base.canonicalize().map_err(io_err(base))?;
        let info = cmd::run(
            "qemu-img",
            &["info", "--output=json", &base_abs.to_string_lossy()],
        )?;
        let size = serde_json::from_str::<serde_json::Value>(&info)
            .ok()
            .and_then(|v| v["virtual-size"].as_u64())
            .unwrap_or(0)
            + (1 << 30);
        let partial = p.disk.with_extension("qcow2.partial");
        cmd::run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                fmt,
                "-b",
                &base_abs.to_string_lossy(),
                &partial.to_string_lossy(),
                &size.to_string(),
            ],
        )?;
        std::fs::rename(&partial, &p.disk).map_err(io_err(&p.disk))?;
    }
    if !p.vars.is_file() {
        std::fs::copy(OVMF_VARS, &p.vars).map_err(io_err(&p.vars))?;
    }
    Ok(())
}

/// Removes the node's disk and firmware variables (a wiped machine), keeping its logs.
pub fn wipe_disk(p: &VmPaths) -> Result<(), QemuError> {
    for f in [&p.disk, &p.vars] {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(f)(e)),
        }
    }
    Ok(())
}

/// Starts qemu for the node, daemonized, and returns once qemu has initialised (its pid file is
/// written). `name` is shown in `ps` as the process name.
pub fn spawn(p: &VmPaths, process_name: &str, tap: &str, mac: &str) -> Result<i32, QemuError> {
    let _ = std::fs::remove_file(&p.qmp);
    let _ = std::fs::remove_file(&p.pid_file);
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&p.qemu_log)
        .map_err(io_err(&p.qemu_log))?;
    let log2 = log.try_clone().map_err(io_err(&p.qemu_log))?;
    let args: Vec<String> = vec![
        "-name".into(),
        format!("{process_name},process={process_name}"),
        "-machine".into(),
        "q35".into(),
        "-accel".into(),
        accel().into(),
        "-m".into(),
        MEMORY_MIB.to_string(),
        "-smp".into(),
        CPUS.to_string(),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", p.vars.display()),
        "-drive".into(),
        format!("file={},if=virtio,format=qcow2", p.disk.display()),
        "-drive".into(),
        format!("file={},media=cdrom,readonly=on", p.iso.display()),
        // The only NIC: the tap on the lab bridge (no user-mode network, nothing else).
        "-nic".into(),
        format!("tap,ifname={tap},script=no,downscript=no,model=virtio-net-pci,mac={mac}"),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-chardev".into(),
        format!("file,id=console,path={},append=on", p.console.display()),
        "-serial".into(),
        "chardev:console".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", p.qmp.display()),
        "-pidfile".into(),
        p.pid_file.to_string_lossy().into_owned(),
        "-daemonize".into(),
    ];
    let command = format!("qemu-system-x86_64 {}", args.join(" "));
    let mut child = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .current_dir("/")
        .spawn()
        .map_err(|source| CmdError::Spawn {
            command: command.clone(),
            source,
        })?;
    // With -daemonize the first process exits once the VM is set up (or failed to be).
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CmdError::Timeout {
                    command,
                    timeout: Duration::from_secs(60),
                }
                .into());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(source) => return Err(CmdError::Spawn { command, source }.into()),
        }
    };
    if !status.success() {
        let log = std::fs::read_to_string(&p.qemu_log).unwrap_or_default();
        return Err(CmdError::Failed {
            command,
            status: status.to_string(),
            stderr_tail: cmd::tail(&log),
        }
        .into());
    }
    pids(p)
        .first()
        .copied()
        .ok_or_else(|| QemuError::NotRunning {
            node: p.name.clone(),
            console: p.console.clone(),
            qemu_log: p.qemu_log.clone(),
        })
}

/// The node's live qemu processes, found by the overlay named on their command line.
pub fn pids(p: &VmPaths) -> Vec<i32> {
    node::pids_with_arg_prefix(&format!("file={},", p.disk.display()))
}

/// Whether the node's qemu runs.
pub fn running(p: &VmPaths) -> bool {
    !pids(p).is_empty()
}

fn wait_gone(p: &VmPaths, deadline: Instant) -> Vec<i32> {
    loop {
        let left = pids(p);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Power cut: SIGKILL qemu and wait until it is gone.
pub fn kill_vm(p: &VmPaths) -> Result<(), QemuError> {
    for pid in pids(p) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let left = wait_gone(p, Instant::now() + Duration::from_secs(10));
    let _ = std::fs::remove_file(&p.pid_file);
    if left.is_empty() {
        Ok(())
    } else {
        Err(QemuError::Unkillable {
            node: p.name.clone(),
            pids: left,
        })
    }
}

/// SIGKILLs every process whose command line names the lab directory `dir` (qemu of every VM,
/// even when the node directories are gone) and waits until they are gone.
pub fn kill_all_under(dir: &Path, deadline: Instant) -> Vec<i32> {
    let needle = format!("{}/", dir.display());
    let me = std::process::id() as i32;
    let found = || -> Vec<i32> {
        node::pids_with_arg_prefix(&needle)
            .into_iter()
            .filter(|&pid| pid != me)
            .collect()
    };
    let killed = found();
    for &pid in &killed {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    loop {
        if found().is_empty() || Instant::now() >= deadline {
            return killed;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One QMP exchange: capabilities, then `command`; returns qemu's answer to it.
fn qmp(p: &VmPaths, command: &str) -> Result<String, QemuError> {
    let err = |what: String| QemuError::Qmp {
        node: p.name.clone(),
        socket: p.qmp.clone(),
        what,
    };
    let stream = UnixStream::connect(&p.qmp).map_err(|e| err(format!("connect: {e}")))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| err(e.to_string()))?;
    let mut writer = stream.try_clone().map_err(|e| err(e.to_string()))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut next = |reader: &mut BufReader<UnixStream>| -> Result<String, QemuError> {
        // Skip asynchronous events; the answer is the next "return" or "error".
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| err(format!("read: {e}")))?;
            if n == 0 {
                return Err(err("qemu closed the socket".into()));
            }
            if !line.contains("\"event\"") {
                return Ok(line.trim().to_string());
            }
        }
    };
    let greeting = next(&mut reader)?;
    if !greeting.contains("QMP") {
        return Err(err(format!("unexpected greeting {greeting}")));
    }
    for c in ["qmp_capabilities", command] {
        writeln!(writer, "{{\"execute\":\"{c}\"}}").map_err(|e| err(format!("write: {e}")))?;
        let answer = next(&mut reader)?;
        if !answer.contains("\"return\"") {
            return Err(err(format!("{c}: {answer}")));
        }
        if c == command {
            return Ok(answer);
        }
    }
    Ok(String::new())
}

/// Clean shutdown: ACPI power button over QMP, then wait until qemu exits (it does when the
/// guest powers off); killed after `grace`.
pub fn powerdown(p: &VmPaths, grace: Duration) -> Result<(), QemuError> {
    if !running(p) {
        return Ok(());
    }
    if let Err(e) = qmp(p, "system_powerdown") {
        eprintln!("kubedna-lab: {e}; killing VM {} instead", p.name);
        return kill_vm(p);
    }
    if wait_gone(p, Instant::now() + grace).is_empty() {
        let _ = std::fs::remove_file(&p.pid_file);
        Ok(())
    } else {
        eprintln!(
            "kubedna-lab: VM {} did not power off within {grace:?}; killing it",
            p.name
        );
        kill_vm(p)
    }
}

/// Proportional set size of the node's qemu, in KiB (the VM's memory as the host pays for it).
pub fn memory_pss_kib(p: &VmPaths) -> u64 {
    crate::procfs::pss_kib(pids(p))
}

mod ssh;
pub use ssh::{node_state, probe, ssh, ssh_interactive, wait_ready, Probe};

#[cfg(test)]
mod tests;
