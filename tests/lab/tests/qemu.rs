//! The lab's qemu provisioner end to end: one VM booted from the image's UEFI disk under
//! software emulation (TCG, OVMF) on the lab bridge, configured by its NoCloud seed ISO. It
//! comes up with its agent answering, is reachable on the lab subnet, answers `exec` over ssh,
//! goes away on `kill` (power cut); `down` leaves nothing. With `KUBEDNA_LAB_QEMU_RESTART=1` it
//! also boots again after the power cut (`start`) and powers off by ACPI (`stop`).
//!
//! Needs root, qemu-system-x86_64, qemu-img, OVMF, xorriso, ssh and an image directory with a
//! disk (`kubedna-image build --outputs tar,disk`): `KUBEDNA_LAB_QEMU_IMAGE`, else
//! `KUBEDNA_LAB_IMAGE` (scripts/test builds that one with the disk). One node only: a TCG boot
//! takes minutes on our 2-core machines (docs/benchmarks.md). Lab `q-vm` on 198.18.50.0/24.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kubedna_lab::lab::{self, Discovery, Lab, UpOptions};
use kubedna_lab::qemu::{self, VmPaths};
use kubedna_lab::Provisioner;

const ROOT: &str = "/var/lib/kubedna-lab";
const NAME: &str = "q-vm";
/// TCG boot to agent ready measured about 2 min idle, 5 min under load (docs/benchmarks.md).
const BOOT: Duration = Duration::from_secs(600);

fn image() -> PathBuf {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: it creates a bridge, taps and VMs"
    );
    let dir = std::env::var_os("KUBEDNA_LAB_QEMU_IMAGE")
        .or_else(|| std::env::var_os("KUBEDNA_LAB_IMAGE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/kubedna-ci/image"));
    if let Err(e) = qemu::find_disk(&dir) {
        panic!("{e} (or set KUBEDNA_LAB_QEMU_IMAGE to an image directory with disk.qcow2)");
    }
    dir
}

/// Takes the lab down when the test ends, even by panic (unless `KUBEDNA_LAB_KEEP_FAILED` is
/// set), and checks that nothing is left.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("KUBEDNA_LAB_KEEP_FAILED").is_some() {
            eprintln!("lab {NAME} kept for inspection (KUBEDNA_LAB_KEEP_FAILED)");
            return;
        }
        let res = lab::down(ROOT.as_ref(), NAME);
        if !std::thread::panicking() {
            if let Err(e) = res {
                panic!("down {NAME}: {e}");
            }
            let left = lab::leftovers(ROOT.as_ref(), NAME);
            assert!(left.is_empty(), "lab {NAME} left {left:?}");
        }
    }
}

/// Whether the host (the bridge address) gets an answer from `addr` within 1 s.
fn host_reaches(addr: std::net::Ipv4Addr) -> bool {
    Command::new("ping")
        .args(["-n", "-q", "-c", "1", "-W", "1"])
        .arg(addr.to_string())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn qemu_node_boots_the_disk_answers_dies_on_kill_and_down_leaves_nothing() {
    let image = image();
    let opts = UpOptions {
        root: ROOT.into(),
        name: NAME.into(),
        control_planes: 1,
        workers: 0,
        image,
        image_cache: kubedna_lab::image::DEFAULT_CACHE.into(),
        subnet: "198.18.50.0/24".parse().unwrap_or_else(|e| panic!("{e}")),
        timeout: BOOT,
    };
    lab::down(ROOT.as_ref(), NAME).unwrap_or_else(|e| panic!("pre-clean {NAME}: {e}"));
    let _down = Down;
    let started = Instant::now();
    let mut lab = Lab::up_provisioned(&opts, Discovery::Seeds, Provisioner::Qemu)
        .unwrap_or_else(|e| panic!("up {NAME}: {e}"));
    let up = started.elapsed();
    let vm = VmPaths::new(&lab.dir, "cp-1");
    eprintln!(
        "QEMU FIGURE up -> agent ready, 1 VM: {:.1} s; host memory of the VM (qemu PSS): {} MiB",
        up.as_secs_f64(),
        qemu::memory_pss_kib(&vm) / 1024
    );

    // Status: the node's systemd and its agent, read over ssh.
    let status = lab.status();
    assert_eq!(status.len(), 1, "{status:?}");
    assert!(
        matches!(status[0].state.as_str(), "running" | "degraded"),
        "{status:?}"
    );
    assert_eq!(status[0].agent, "ready", "{status:?}");

    // exec reaches into the VM: its hostname came from the seed, its address from network-config.
    let o = lab
        .exec("cp-1", &["hostname"], Some(Duration::from_secs(30)))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.stdout.trim(), "cp-1", "{o:?}");
    let o = lab
        .exec(
            "cp-1",
            &["ip", "-4", "-o", "addr", "show"],
            Some(Duration::from_secs(30)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(o.stdout.contains("198.18.50.2/24"), "{o:?}");
    let o = lab
        .exec(
            "cp-1",
            &["kubedna", "status"],
            Some(Duration::from_secs(30)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(o.success(), "{o:?}");
    let problems = lab.check_isolation();
    assert!(problems.is_empty(), "{problems:?}");

    // kill: a power cut. The VM is gone and its address answers nothing.
    let addr = lab.node("cp-1").unwrap_or_else(|e| panic!("{e}")).address;
    assert!(
        host_reaches(addr),
        "cp-1 ({addr}) does not answer before kill"
    );
    lab.kill("cp-1").unwrap_or_else(|e| panic!("{e}"));
    assert!(!qemu::running(&vm), "qemu of cp-1 survived kill");
    assert!(
        !host_reaches(addr),
        "cp-1 ({addr}) still answers after kill"
    );
    assert_eq!(lab.status()[0].state, "stopped");

    // A second boot doubles the test's time under TCG: CI runs the above only, and
    // KUBEDNA_LAB_QEMU_RESTART=1 adds start after the power cut and a clean stop (ACPI).
    if std::env::var_os("KUBEDNA_LAB_QEMU_RESTART").is_some() {
        // start: the same disk boots again (cloud-init does not run twice), the agent answers.
        let restarted = Instant::now();
        lab.start(&[], BOOT)
            .unwrap_or_else(|e| panic!("start: {e}"));
        eprintln!(
            "QEMU FIGURE start after kill -> agent ready: {:.1} s",
            restarted.elapsed().as_secs_f64()
        );
        assert!(host_reaches(addr), "cp-1 does not answer after start");
        // stop: the ACPI power button; the guest powers off well before the grace would kill it.
        let grace = Duration::from_secs(120);
        let stopping = Instant::now();
        lab.stop(&[], grace).unwrap_or_else(|e| panic!("stop: {e}"));
        let took = stopping.elapsed();
        eprintln!(
            "QEMU FIGURE stop (ACPI powerdown): {:.1} s",
            took.as_secs_f64()
        );
        assert!(
            took < grace,
            "cp-1 did not power off; it was killed after {took:?}"
        );
        assert!(!qemu::running(&vm), "qemu of cp-1 survived stop");
        assert_eq!(lab.status()[0].state, "stopped");
    }
    drop(lab);

    // down (by the guard) must leave no qemu, tap, overlay or directory behind.
}
