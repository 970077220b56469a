//! A real network boot of blank machines (issue 15): qemu (TCG) with UEFI firmware (OVMF) and
//! the virtio NIC's iPXE option ROM (Debian's ipxe-qemu), no disk, no kernel handed to qemu.
//! The NIC's iPXE takes DHCP from qemu's user network, whose boot file (`kubedna.ipxe`, a
//! two-line site script setting `base-url`) comes over TFTP; it chains the image's own
//! `boot.ipxe` over HTTP, which checks the machine's seed, then fetches the kernel and initrd
//! over HTTP; live-boot fetches `root.squashfs` over HTTP and cloud-init reads the machine's own
//! NoCloud seed by MAC (`kubedna-image seed --pxe-dir`).
//!
//! The HTTP server is `kubedna-lab pxe-http`, one process per guest connection run by qemu's
//! user network (`guestfwd=tcp:10.0.2.100:80-cmd:`): it listens on no host socket, and the
//! network is `restrict=on`, so nothing the guest sends leaves qemu.
//!
//! Four machines, one after the other: a MAC nobody described is refused at `boot.ipxe` (the
//! server answers 403, no kernel is fetched, no seed is served); a described one boots live to
//! its agent, with figures per stage; one told to install itself (`install-disk` in the site
//! script) but served an `esp.img` one byte off its pin refuses and powers off with its blank
//! disk never written; the same machine served the real image installs to its disk (first in
//! the boot order), reboots from it without asking the PXE server for anything, and its agent
//! starts from the kept seed. Then a power cut right after its agent said ready, and its NIC
//! moves from the provisioning network to the lab bridge (the cluster's network, as a switch
//! port is moved from the provisioning VLAN): it boots its disk again, installing nothing, its
//! NIC takes the static address its seed gave that MAC, and it joins the lab cluster (`p-pxe`,
//! one nspawn control plane, 198.18.100.0/24) as a worker. Needs root, qemu-system-x86_64,
//! OVMF, ipxe-qemu and an image directory with rootfs.tar and pxe/ (`kubedna-image build
//! --outputs tar,disk,pxe`): `KUBEDNA_LAB_PXE_IMAGE`, else `KUBEDNA_LAB_IMAGE`. A TCG boot
//! takes minutes.
//! `KUBEDNA_LAB_PXE_COMPARE=1` adds the baseline of docs/benchmarks.md: the same machine
//! booted with the kernel and initrd handed to qemu, in the same run.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::{diagnose, lab_opts, poll, Down, ROOT};
use kubedna_lab::lab::{self, Lab};
use kubedna_lab::qemu::{OVMF_CODE, OVMF_VARS};
use serde_json::Value;

const IPXE_ROM: &str = "/usr/lib/ipxe/qemu/efi-virtio.rom";
/// The PXE server's address inside qemu's user network (10.0.2.0/24; 10.0.2.2 is qemu's own
/// and cannot carry a guestfwd).
const SERVER: &str = "10.0.2.100";
const KNOWN_MAC: &str = "52:54:00:64:00:0b";
const UNKNOWN_MAC: &str = "52:54:00:64:00:99";
/// The machine the site script tells to install itself (`install-disk /dev/vda`).
const INSTALL_MAC: &str = "52:54:00:64:00:0c";
const INSTALL_HEXHYP: &str = "52-54-00-64-00-0c";
/// The lab cluster the installed machine joins, and the address its seed gives it there.
const LAB: &str = "p-pxe";
const SUBNET: &str = "198.18.100.0/24";
const INSTALL_ADDRESS: &str = "198.18.100.20";
/// The installed machine's tap on the lab bridge: named like a lab port (`kdl-ID-N`), so the
/// lab's `down` removes it with the rest.
const TAP_INDEX: u32 = 99;
/// esp.img is there when the image has the disk output too: what the installer writes.
const PXE_FILES: [&str; 5] = [
    "vmlinuz",
    "initrd.img",
    "root.squashfs",
    "boot.ipxe",
    "esp.img",
];
/// TCG boot to agent ready took about 3 min idle (docs/benchmarks.md); room for a loaded host.
const BOOT: Duration = Duration::from_secs(900);

fn image() -> PathBuf {
    let dir = std::env::var_os("KUBEDNA_LAB_PXE_IMAGE")
        .or_else(|| std::env::var_os("KUBEDNA_LAB_IMAGE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/kubedna-ci/image"));
    for f in PXE_FILES {
        assert!(
            dir.join("pxe").join(f).is_file(),
            "{} has no pxe/{f}: build the image with `kubedna-image build --outputs tar,disk,pxe` \
             or set KUBEDNA_LAB_PXE_IMAGE to an image directory that has pxe/",
            dir.display()
        );
    }
    dir
}

/// A qemu VM whose serial console is read line by line; killed when dropped.
struct Vm {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: std::fs::File,
    log_path: PathBuf,
    started: Instant,
}

/// Where the machine's one NIC is plugged.
enum Wire<'a> {
    /// The provisioning network: qemu's user network with the PXE server (DHCP, TFTP, HTTP).
    Provisioning { www: &'a Path, tftp: &'a Path },
    /// The lab's bridge, through this tap: the cluster's network, where nothing answers DHCP.
    Lab { tap: &'a str },
}

impl Vm {
    /// Boots a blank UEFI machine from the virtio NIC's iPXE on the provisioning network. With
    /// a local disk, the firmware tries the disk first (bootindex 1) and the NIC second, as a
    /// datacenter machine that installs itself is set up.
    fn netboot(
        dir: &Path,
        name: &str,
        mac: &str,
        (www, tftp): (&Path, &Path),
        disk: Option<&Path>,
    ) -> Vm {
        Vm::boot(
            dir,
            name,
            mac,
            &Wire::Provisioning { www, tftp },
            None,
            disk,
        )
    }

    /// Boots with `direct = Some(kernel command line)`: qemu is handed `www/kubedna/vmlinuz`
    /// and `initrd.img` (the way PXE was tested before), same network and server.
    fn boot(
        dir: &Path,
        name: &str,
        mac: &str,
        wire: &Wire<'_>,
        direct: Option<&str>,
        disk: Option<&Path>,
    ) -> Vm {
        // A machine with a disk keeps its firmware variables with its disk (a power cycle is
        // the same machine); a diskless one gets fresh ones.
        let vars = match disk {
            Some(d) => d.with_extension("OVMF_VARS.fd"),
            None => dir.join(format!("{name}-OVMF_VARS.fd")),
        };
        if disk.is_none() || !vars.exists() {
            std::fs::copy(OVMF_VARS, &vars).expect("OVMF vars");
        }
        let server = env!("CARGO_BIN_EXE_kubedna-lab");
        let netdev = match wire {
            Wire::Provisioning { www, tftp } => format!(
                "user,id=n0,restrict=on,tftp={},bootfile=kubedna.ipxe,\
                 guestfwd=tcp:{SERVER}:80-cmd:{server} pxe-http --root {} --log {}",
                tftp.display(),
                www.display(),
                dir.join(format!("{name}-server.log")).display()
            ),
            Wire::Lab { tap } => format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
        };
        let stderr = std::fs::File::create(dir.join(format!("{name}-qemu.log"))).expect("log");
        let mut qemu = Command::new("qemu-system-x86_64");
        let mut nic_boot = String::new();
        if let Some(disk) = disk {
            qemu.arg("-drive")
                .arg(format!(
                    "if=none,id=d0,format=qcow2,file={}",
                    disk.display()
                ))
                .args(["-device", "virtio-blk-pci,drive=d0,bootindex=1"]);
            nic_boot = ",bootindex=2".into();
        }
        if let (Some(append), Wire::Provisioning { www, .. }) = (direct, wire) {
            qemu.arg("-kernel")
                .arg(www.join("kubedna/vmlinuz"))
                .arg("-initrd")
                .arg(www.join("kubedna/initrd.img"))
                .args(["-append", append]);
        }
        let mut child = qemu
            .args([
                "-machine", "q35", "-accel", "tcg", "-m", "2048", "-smp", "2",
            ])
            .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ))
            .args(["-netdev", &netdev])
            .arg("-device")
            .arg(format!(
                "virtio-net-pci,netdev=n0,mac={mac},romfile={IPXE_ROM}{nic_boot}"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("qemu-system-x86_64");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n') {
                let Ok(line) = line else { break };
                if tx
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    break;
                }
            }
        });
        let log_path = dir.join(format!("{name}-console.log"));
        Vm {
            child,
            lines,
            log: std::fs::File::create(&log_path).expect("console log"),
            log_path,
            started: Instant::now(),
        }
    }

    /// Reads the console until every needle was seen (in any order) or the deadline; returns
    /// the wall time since start at which each was first seen.
    fn wait_for(&mut self, wanted: &[(&str, &str)], within: Duration) -> Vec<Duration> {
        let deadline = self.started + within;
        let mut seen: Vec<Option<Duration>> = vec![None; wanted.len()];
        while seen.iter().any(Option::is_none) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let Ok(line) = self.lines.recv_timeout(deadline - now) else {
                break;
            };
            let line = strip_ansi(&line);
            for (i, (_, needle)) in wanted.iter().enumerate() {
                if seen[i].is_none() && line.contains(needle) {
                    seen[i] = Some(self.started.elapsed());
                }
            }
            // Written as it comes, so a running test can be watched (tail -f).
            writeln!(self.log, "{line}").expect("console log");
        }
        wanted
            .iter()
            .zip(seen)
            .map(|((what, needle), t)| {
                t.unwrap_or_else(|| {
                    panic!(
                        "{what} ({needle:?}) not on the serial console within {} s; console log \
                         in {}",
                        within.as_secs(),
                        self.log_path.display()
                    )
                })
            })
            .collect()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The console carries colours and carriage returns; match on the plain text.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c == '\u{8}' {
            // iPXE draws its download progress ("79%") and erases it with backspaces before
            // "ok": the line a reader sees is what is left.
            out.pop();
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

#[test]
fn console_lines_are_read_as_a_terminal_shows_them() {
    let cases = [
        ("plain", "plain"),
        (
            "\u{1b}[0;32m  OK  \u{1b}[0m] Started x.service\r",
            "  OK  ] Started x.service",
        ),
        // iPXE's progress, erased before "ok" (seen in a run: the stage was missed).
        (
            "http://10.0.2.100/kubedna/initrd.img... 79%\u{8}\u{8}\u{8}\u{8}    \u{8}\u{8}\u{8}\u{8} ok",
            "http://10.0.2.100/kubedna/initrd.img... ok",
        ),
        ("\u{8}\u{8}at the start", "at the start"),
    ];
    for (raw, shown) in cases {
        assert_eq!(strip_ansi(raw), shown, "{raw:?}");
    }
}

/// Hard-links (or copies, across filesystems) the PXE artifacts into the served tree.
fn link_or_copy(from: &Path, to: &Path) {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}

#[test]
fn blank_machines_network_boot_install_to_disk_and_only_a_described_mac_gets_a_seed() {
    let image = image();
    for f in [IPXE_ROM, OVMF_CODE, OVMF_VARS] {
        assert!(
            Path::new(f).is_file(),
            "{f} missing: install ipxe-qemu and ovmf (scripts/deps/lab.txt)"
        );
    }
    let builder = kubedna_lab::image::builder()
        .expect("kubedna-image not found: `cargo build -p kubedna-image` or set KUBEDNA_IMAGE");
    std::fs::create_dir_all("/var/tmp").expect("/var/tmp");
    let tmp = tempfile::Builder::new()
        .prefix("kubedna-lab-pxe-")
        .tempdir_in("/var/tmp")
        .expect("tmp");
    let dir = tmp.path();
    // Dropped before `tmp`: on a failure the consoles and server logs outlive the run.
    let _logs = KeepLogsOnFailure(dir.to_path_buf());
    let www = dir.join("www");
    let served = www.join("kubedna");
    std::fs::create_dir_all(&served).expect("mkdir");
    for f in PXE_FILES {
        link_or_copy(&image.join("pxe").join(f), &served.join(f));
    }
    // The site's boot file (DHCP option 67, over TFTP): where this site serves KubeDNA, and
    // which machine installs itself to its disk.
    let tftp = dir.join("tftp");
    std::fs::create_dir_all(&tftp).expect("mkdir");
    std::fs::write(
        tftp.join("kubedna.ipxe"),
        format!(
            "#!ipxe\nset base-url http://{SERVER}/kubedna\n\
             iseq ${{mac:hexhyp}} {INSTALL_HEXHYP} || goto chain\nset install-disk /dev/vda\n\
             :chain\nchain ${{base-url}}/boot.ipxe\n"
        ),
    )
    .expect("kubedna.ipxe");
    // The lab cluster the installed machine joins: one control plane (a nspawn node) on the lab
    // bridge. The installed machine's NIC moves from the provisioning network to this bridge
    // after its install, as a datacenter switch port is moved from the provisioning VLAN to the
    // cluster's (what OpenStack Ironic does with its provisioning network).
    let _down = Down(LAB);
    let lab = lab_cluster(&image);
    let cp = lab.node("cp-1").unwrap_or_else(|e| panic!("{e}")).address;
    // Seeds for the whole cluster, by MAC: the lab's cluster, its secret and its control plane.
    // pxe-w2 (the machine that installs itself) has a static address on the lab subnet, given
    // to the NIC with its MAC.
    let cluster = dir.join("cluster.yaml");
    std::fs::write(
        &cluster,
        format!(
            "apiVersion: kubedna.io/v1alpha1\nkind: ClusterSeed\nname: {LAB}\n\
             secretFile: cluster-secret\nprovider: lab\nnetwork:\n  prefixLength: 24\n  \
             gateway: {gw}\nnodes:\n  \
             - name: cp-1\n    role: control-plane\n    address: {cp}\n    \
             mac: 52:54:00:64:00:0a\n  \
             - name: pxe-w1\n    role: worker\n    mac: {KNOWN_MAC}\n  \
             - name: pxe-w2\n    role: worker\n    mac: {INSTALL_MAC}\n    \
             address: {INSTALL_ADDRESS}\n",
            gw = lab.gateway(),
        ),
    )
    .expect("cluster.yaml");
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("cluster-secret"))
            .and_then(|mut f| f.write_all(lab.cluster_secret().as_bytes()))
            .expect("secret");
    }
    let o = Command::new(&builder)
        .args(["seed", "--cluster"])
        .arg(&cluster)
        .arg("--pxe-dir")
        .arg(served.join("seed"))
        .output()
        .expect("kubedna-image seed");
    assert!(
        o.status.success(),
        "kubedna-image seed --pxe-dir: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for mac in ["52-54-00-64-00-0a", "52-54-00-64-00-0b", INSTALL_HEXHYP] {
        assert!(
            served.join("seed").join(mac).join("user-data").is_file(),
            "{mac}"
        );
    }

    // A machine nobody described: refused before any kernel is fetched.
    let refusal = "KubeDNA: no seed for MAC 52-54-00-64-00-99";
    {
        let mut vm = Vm::netboot(dir, "unknown", UNKNOWN_MAC, (&www, &tftp), None);
        let t = vm.wait_for(&[("refusal on the console", refusal)], BOOT);
        eprintln!(
            "FIGURE unknown MAC refused at boot.ipxe after {:.1} s wall",
            t[0].as_secs_f64()
        );
    }
    let log = std::fs::read_to_string(dir.join("unknown-server.log")).expect("server log");
    assert!(
        log.contains("GET /kubedna/seed/52-54-00-64-00-99/meta-data -> 403"),
        "the server did not refuse the unknown MAC: {log}"
    );
    for never in ["vmlinuz", "user-data"] {
        assert!(!log.contains(never), "unknown MAC got {never:?}: {log}");
    }

    // The described machine: network boot to its agent.
    let mut vm = Vm::netboot(dir, "pxe-w1", KNOWN_MAC, (&www, &tftp), None);
    let stages = [
        ("DHCP and the boot file over TFTP", "kubedna.ipxe : "),
        ("boot.ipxe over HTTP", "/kubedna/boot.ipxe... ok"),
        ("kernel over HTTP", "/kubedna/vmlinuz... ok"),
        ("initrd over HTTP", "/kubedna/initrd.img... ok"),
        ("root over HTTP", "root.squashfs' saved"),
        (
            "cloud-init finished on its own seed by MAC",
            "seed=cmdline,http://10.0.2.100/kubedna/seed/52-54-00-64-00-0b/",
        ),
        // kubedna-agent.service is Type=notify: systemd says Started only after READY=1.
        ("agent ready", "Started kubedna-agent.service"),
    ];
    let times = vm.wait_for(&stages, BOOT);
    for ((what, _), t) in stages.iter().zip(&times) {
        eprintln!(
            "FIGURE pxe network boot: {what} after {:.1} s wall",
            t.as_secs_f64()
        );
    }
    drop(vm);
    if std::env::var_os("KUBEDNA_LAB_PXE_COMPARE").is_some() {
        compare_with_direct_kernel_boot(dir, &www, &tftp, times[times.len() - 1]);
    }
    let log = std::fs::read_to_string(dir.join("pxe-w1-server.log")).expect("server log");
    for want in [
        "GET /kubedna/boot.ipxe -> 200",
        "GET /kubedna/seed/52-54-00-64-00-0b/meta-data -> 200",
        "GET /kubedna/vmlinuz -> 200",
        "/kubedna/root.squashfs -> 200",
        "GET /kubedna/seed/52-54-00-64-00-0b/user-data -> 200",
    ] {
        assert!(log.contains(want), "server log lacks {want:?}: {log}");
    }
    assert!(
        !log.contains("52-54-00-64-00-0a"),
        "a machine read another machine's seed: {log}"
    );

    tampered_image_stops_the_install_before_the_disk_is_touched(dir, &www, &tftp);
    installs_to_disk_and_boots_from_it(dir, &www, &tftp, &lab);
}

/// The lab the installed machine joins (`LAB` on `SUBNET`): one control plane, no workers.
fn lab_cluster(image: &Path) -> Lab {
    let mut opts = lab_opts(LAB, SUBNET, (1, 0), image.to_path_buf());
    opts.timeout = Duration::from_secs(300);
    lab::down(ROOT.as_ref(), LAB).unwrap_or_else(|e| panic!("pre-clean {LAB}: {e}"));
    Lab::up(&opts).unwrap_or_else(|e| panic!("lab up {LAB}: {e}"))
}

/// A blank 8 GiB disk image.
fn blank_disk(path: &Path) {
    let o = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg("8G")
        .output()
        .expect("qemu-img");
    assert!(
        o.status.success(),
        "qemu-img create: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Whether nothing was ever written to the disk image (every extent unallocated).
fn never_written(path: &Path) -> bool {
    let o = Command::new("qemu-img")
        .args(["map", "--output=json"])
        .arg(path)
        .output()
        .expect("qemu-img map");
    let map: serde_json::Value = serde_json::from_slice(&o.stdout).expect("qemu-img map json");
    map.as_array()
        .expect("extents")
        .iter()
        .all(|e| e["data"] == serde_json::Value::Bool(false))
}

/// The served ESP differs by one byte from the one boot.ipxe pins: the installer refuses, the
/// machine powers off, the disk was never written.
fn tampered_image_stops_the_install_before_the_disk_is_touched(
    dir: &Path,
    www: &Path,
    tftp: &Path,
) {
    let bad = dir.join("www-tampered");
    let served = bad.join("kubedna");
    std::fs::create_dir_all(&served).expect("mkdir");
    for f in PXE_FILES {
        if f != "esp.img" {
            link_or_copy(&www.join("kubedna").join(f), &served.join(f));
        }
    }
    let mut esp = std::fs::read(www.join("kubedna/esp.img")).expect("esp.img");
    esp[4096] ^= 0x01;
    std::fs::write(served.join("esp.img"), esp).expect("tampered esp.img");
    let seed = served.join("seed").join(INSTALL_HEXHYP);
    std::fs::create_dir_all(&seed).expect("mkdir");
    for f in ["meta-data", "user-data"] {
        std::fs::copy(
            www.join("kubedna/seed").join(INSTALL_HEXHYP).join(f),
            seed.join(f),
        )
        .expect("seed");
    }
    let disk = dir.join("tampered-disk.qcow2");
    blank_disk(&disk);
    let mut vm = Vm::netboot(dir, "tampered", INSTALL_MAC, (&bad, tftp), Some(&disk));
    let t = vm.wait_for(
        &[
            (
                "root.squashfs checked",
                "kubedna-install: root.squashfs: SHA-256 matches its pin",
            ),
            ("refusal", "kubedna-install: REFUSED: esp.img: SHA-256"),
            ("power off", "reboot: Power down"),
        ],
        BOOT,
    );
    eprintln!(
        "FIGURE tampered esp.img refused after {:.1} s wall, powered off at {:.1} s",
        t[1].as_secs_f64(),
        t[2].as_secs_f64()
    );
    drop(vm);
    assert!(
        never_written(&disk),
        "the tampered install wrote to {}",
        disk.display()
    );
}

/// The described machine with `install-disk`: network boot, install, reboot, and from then on
/// its disk (first in the boot order) boots it; the PXE server sees no request after the
/// reboot. The second boot reaches the agent without installing again.
fn installs_to_disk_and_boots_from_it(dir: &Path, www: &Path, tftp: &Path, lab: &Lab) {
    let disk = dir.join("pxe-w2-disk.qcow2");
    blank_disk(&disk);
    let mut vm = Vm::netboot(dir, "pxe-w2", INSTALL_MAC, (www, tftp), Some(&disk));
    let install = [
        ("network boot: kernel over HTTP", "/kubedna/vmlinuz... ok"),
        (
            "pins checked",
            "kubedna-install: esp.img: SHA-256 matches its pin",
        ),
        ("install started", "kubedna-install: installing to /dev/vda"),
        (
            "installed, rebooting",
            "kubedna-install: installed to /dev/vda; rebooting from it",
        ),
    ];
    let t1 = vm.wait_for(&install, BOOT);
    let requests_at_reboot = std::fs::read_to_string(dir.join("pxe-w2-server.log"))
        .expect("server log")
        .lines()
        .count();
    let from_disk = [
        ("booted from its disk", "root=PARTUUID="),
        // The login prompt is not a reliable line on a loaded host (seen missing); cloud-init's
        // own summary names the seed it used.
        (
            "cloud-init finished on its kept seed",
            "DataSourceNoCloud [seed=/var/lib/cloud/seed/nocloud]",
        ),
        ("agent ready", "Started kubedna-agent.service"),
    ];
    let t2 = vm.wait_for(&from_disk, 2 * BOOT);
    drop(vm);
    let console = std::fs::read_to_string(dir.join("pxe-w2-console.log")).expect("console");
    let after = &console[console.find("rebooting from it").expect("reboot line")..];
    assert!(
        !after.contains("kubedna-install: installing"),
        "installed twice"
    );
    assert!(
        !after.contains("boot=live"),
        "the second boot was a network boot"
    );
    let requests = std::fs::read_to_string(dir.join("pxe-w2-server.log")).expect("server log");
    assert_eq!(
        requests.lines().count(),
        requests_at_reboot,
        "the PXE server was asked for something after the install: {requests}"
    );
    let (network, installed) = (t1[0], t1[3]);
    let ready = t2[2];
    eprintln!(
        "FIGURE install: network boot (kernel fetched) {:.1} s, install done {:.1} s (install \
         {:.1} s after the pins were checked at {:.1} s), agent ready from disk {:.1} s (first \
         disk boot {:.1} s)",
        network.as_secs_f64(),
        installed.as_secs_f64(),
        (installed - t1[1]).as_secs_f64(),
        t1[1].as_secs_f64(),
        ready.as_secs_f64(),
        (ready - installed).as_secs_f64()
    );

    // A power cycle: the same disk and firmware variables, a new qemu, the old one killed right
    // after its agent said ready (a power cut, not a shutdown). Its NIC is now on the lab bridge
    // (the cluster's network, no PXE server there). It boots its disk again; nothing is
    // installed, and the agent starts: its config and secret were made durable before it said
    // ready (cloud-init writes them without an fsync; before that fix a cut here left a 0-byte
    // secret and an agent that never started again). Then it joins the lab's cluster as a
    // worker, on the address its seed gave the NIC with its MAC.
    let tap = kubedna_lab::names::veth(LAB, TAP_INDEX);
    kubedna_lab::qemu::create_tap(&tap, &lab.state.bridge).unwrap_or_else(|e| panic!("{e}"));
    let wire = Wire::Lab { tap: &tap };
    let mut vm = Vm::boot(dir, "pxe-w2-again", INSTALL_MAC, &wire, None, Some(&disk));
    let t = vm.wait_for(
        &[
            ("booted from its disk", "root=PARTUUID="),
            ("agent ready", "Started kubedna-agent.service"),
        ],
        BOOT,
    );
    eprintln!(
        "FIGURE second boot (power cycle) from its disk: agent ready after {:.1} s wall",
        t[1].as_secs_f64()
    );
    let joined = Instant::now();
    let row = poll(
        "pxe-w2 a member of the lab's cluster, as cp-1's `kubedna status --cluster` shows",
        BOOT,
        || worker_row(lab, "pxe-w2"),
        || diagnose(lab, "cp-1"),
    );
    eprintln!(
        "FIGURE installed machine joined the lab cluster as a worker {:.1} s after its agent \
         was ready ({:.1} s wall)",
        joined.elapsed().as_secs_f64(),
        vm.started.elapsed().as_secs_f64()
    );
    assert_eq!(
        row["address"].as_str().and_then(|a| a.split(':').next()),
        Some(INSTALL_ADDRESS),
        "pxe-w2 is not on the address its seed gave its NIC: {row:#}"
    );
    assert_eq!(row["status"]["leader"]["name"], "cp-1", "{row:#}");
    drop(vm);
    let console = std::fs::read_to_string(dir.join("pxe-w2-again-console.log")).expect("console");
    assert!(
        !console.contains("kubedna-install:"),
        "the installer ran on the second boot"
    );
    assert!(
        !console.contains("boot=live"),
        "the second boot was a network boot"
    );
}

/// cp-1's `kubedna status --cluster` row of `node` once it answers as a worker member.
fn worker_row(lab: &Lab, node: &str) -> Option<Value> {
    let out = lab
        .exec(
            "cp-1",
            &["kubedna", "-o", "json", "status", "--cluster"],
            Some(Duration::from_secs(60)),
        )
        .ok()?;
    let v: Value = serde_json::from_str(&out.stdout).ok()?;
    v["nodes"]
        .as_array()?
        .iter()
        .find(|r| {
            r["node"] == node
                && r["answer"] == "ok"
                && r["status"]["role"] == "worker"
                && r["status"]["phase"] == "member"
        })
        .cloned()
}

/// The baseline of docs/benchmarks.md: the same machine booted the old way, qemu handed the
/// kernel and initrd with boot.ipxe's arguments filled in, in the same run.
fn compare_with_direct_kernel_boot(dir: &Path, www: &Path, tftp: &Path, netboot: Duration) {
    let script = std::fs::read_to_string(www.join("kubedna/boot.ipxe")).expect("boot.ipxe");
    let kernel_line = script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .expect("kernel line");
    let base = format!("http://{SERVER}/kubedna");
    let append = kernel_line
        .split_whitespace()
        .skip(2)
        .filter(|a| !a.starts_with("initrd="))
        .collect::<Vec<_>>()
        .join(" ")
        .replace("${seed-url}", &format!("{base}/seed/52-54-00-64-00-0b/"))
        .replace("${base-url}", &base);
    let wire = Wire::Provisioning { www, tftp };
    let mut vm = Vm::boot(dir, "direct", KNOWN_MAC, &wire, Some(&append), None);
    let t = vm.wait_for(&[("agent ready", "Started kubedna-agent.service")], BOOT)[0];
    eprintln!(
        "FIGURE direct kernel boot (baseline): agent ready after {:.1} s wall; network boot / \
         direct = {:.2}",
        t.as_secs_f64(),
        netboot.as_secs_f64() / t.as_secs_f64()
    );
}

/// Copies the run's `*.log` files (serial consoles, the PXE server's request logs) to
/// /var/tmp/kubedna-lab-pxe-failed when the test fails, before its work directory goes.
struct KeepLogsOnFailure(PathBuf);

impl Drop for KeepLogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let to = Path::new("/var/tmp/kubedna-lab-pxe-failed");
        let _ = std::fs::create_dir_all(to);
        for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let _ = std::fs::copy(e.path(), to.join(e.file_name()));
            }
        }
        eprintln!(
            "the run's console and server logs are kept in {}",
            to.display()
        );
    }
}
