//! Host preparation against a real systemd 252 and D-Bus, on a lab node booted from our image:
//! `kubedna-agent prepare-host` writes the module, sysctl and containerd files, starts and enables
//! units through systemd's D-Bus API awaiting each job, changes nothing on a second run, and a
//! unit that fails to start is reported with its name, job result and journal. Needs root and an
//! image that carries the agent (`KUBEDNA_LAB_IMAGE`, as `scripts/test` sets it).

use std::path::PathBuf;
use std::time::Duration;

use kubedna_lab::lab::{self, Lab, UpOptions};

const ROOT: &str = "/var/lib/kubedna-lab";
const NAME: &str = "t-prep";

struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let res = lab::down(ROOT.as_ref(), NAME);
        if !std::thread::panicking() {
            res.unwrap_or_else(|e| panic!("down {NAME}: {e}"));
        }
    }
}

fn sh(lab: &Lab, node: &str, script: &str) -> (bool, String, String) {
    let out = lab
        .exec(node, &["sh", "-c", script], Some(Duration::from_secs(120)))
        .unwrap_or_else(|e| panic!("exec on {node}: {e}"));
    (out.status.success(), out.stdout.clone(), out.stderr.clone())
}

#[test]
fn prepare_host_over_dbus_is_idempotent_and_reports_failed_jobs() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test boots a lab node: run it as root (CI does)"
    );
    let image = std::env::var_os("KUBEDNA_LAB_IMAGE")
        .map(PathBuf::from)
        .expect("set KUBEDNA_LAB_IMAGE to an image built by kubedna-image (scripts/test does)");
    lab::down(ROOT.as_ref(), NAME).unwrap_or_else(|e| panic!("pre-clean: {e}"));
    let opts = UpOptions {
        root: ROOT.into(),
        name: NAME.into(),
        control_planes: 1,
        workers: 0,
        image,
        image_cache: kubedna_lab::image::DEFAULT_CACHE.into(),
        subnet: "198.18.6.0/24".parse().unwrap_or_else(|e| panic!("{e}")),
        timeout: Duration::from_secs(180),
    };
    // Declared first so it drops last: `down` takes the lab lock that `lab` holds.
    let _down = Down;
    let lab = Lab::up(&opts).unwrap_or_else(|e| panic!("up: {e}"));
    let node = lab
        .status()
        .first()
        .map(|s| s.name.clone())
        .expect("a node");
    assert!(
        lab.status().iter().all(|s| s.agent != "absent"),
        "the image has no kubedna-agent; build it with kubedna-image (scripts/test does)"
    );

    // The node's agent prepares the host itself at boot (the control-plane engine's first step).
    // Stop it and remove what it wrote, so the first run below starts from an unprepared host.
    let (ok, _, err) = sh(
        &lab,
        &node,
        "systemctl stop kubedna-agent && rm -f /etc/containerd/config.toml /etc/modules-load.d/kubedna.conf /etc/sysctl.d/90-kubedna.conf",
    );
    assert!(ok, "could not stop the agent and reset the host: {err}");
    let (ok, out, err) = sh(&lab, &node, "kubedna-agent prepare-host");
    assert!(ok, "prepare-host failed:\n{out}\n{err}");
    assert!(
        !out.contains("files written: []"),
        "the first run on an unprepared host wrote nothing:\n{out}"
    );
    assert!(out.contains("containerd.service"), "{out}");
    let (_, state, _) = sh(
        &lab,
        &node,
        "grep -c 'SystemdCgroup = true' /etc/containerd/config.toml; cat /etc/modules-load.d/kubedna.conf /etc/sysctl.d/90-kubedna.conf; \
         systemctl is-active containerd; systemctl is-enabled containerd kubelet swap.target",
    );
    for needle in [
        "1\n",
        "br_netfilter",
        "net.ipv4.ip_forward = 1",
        "active\n",
        "enabled\nenabled\nmasked",
    ] {
        assert!(
            state.contains(needle),
            "{needle:?} missing from the node's state:\n{state}"
        );
    }

    let (ok, again, err) = sh(&lab, &node, "kubedna-agent prepare-host");
    assert!(ok, "second run failed: {err}");
    assert!(
        again.contains("files written: []") && again.contains("restarted: []"),
        "second run changed things:\n{again}"
    );

    // Break containerd, then force a restart by changing its config: the failed job is reported.
    let (_, _, _) = sh(
        &lab,
        &node,
        "mkdir -p /etc/systemd/system/containerd.service.d && printf '[Service]\\nExecStartPre=/bin/false\\n' > /etc/systemd/system/containerd.service.d/99-broken.conf && systemctl daemon-reload && echo '# drift' >> /etc/containerd/config.toml",
    );
    let (ok, out, err) = sh(&lab, &node, "kubedna-agent prepare-host");
    assert!(!ok, "a failed containerd restart was not reported:\n{out}");
    for needle in ["containerd.service", "\"failed\"", "containerd"] {
        assert!(
            err.contains(needle),
            "{needle:?} missing from the error:\n{err}"
        );
    }
}
