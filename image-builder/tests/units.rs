//! Every unit and drop-in in `units/` passes `systemd-analyze verify` with no warning. The
//! binaries they start (kubelet, etcd, containerd) are not on the build host, so each check runs
//! against a temporary root: the host's own systemd units (for the targets they reference),
//! our units, a stub containerd.service for the drop-in to attach to, and empty executables.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{copy_dir, repo_root};

fn verify_root(root: &Path) {
    let units = root.join("usr/lib/systemd/system");
    copy_dir(Path::new("/usr/lib/systemd/system"), &units);
    copy_dir(&repo_root().join("units"), &units);
    std::fs::write(
        units.join("containerd.service"),
        "[Unit]\nDescription=stub of the distribution's containerd unit\n\n\
         [Service]\nExecStart=/usr/bin/containerd\n\n[Install]\nWantedBy=multi-user.target\n",
    )
    .expect("stub");
    std::fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).expect("bin symlink");
    // The layer's own programs that units run.
    let lib = root.join("usr/lib/kubedna");
    std::fs::create_dir_all(&lib).expect("mkdir");
    std::fs::copy(
        repo_root().join("image-builder/layer/usr/lib/kubedna/kubedna-install"),
        lib.join("kubedna-install"),
    )
    .expect("kubedna-install");
    for b in ["kubelet", "etcd", "containerd", "kubedna-agent", "kill"] {
        let p = root.join("usr/bin").join(b);
        std::fs::write(&p, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("tmp");
    verify_root(dir.path());
    let mut checked = Vec::new();
    for e in std::fs::read_dir(repo_root().join("units")).expect("units/") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        // A drop-in directory is verified through the unit it extends.
        let unit = name.strip_suffix(".d").unwrap_or(&name).to_string();
        if !unit.ends_with(".service") {
            continue;
        }
        let o = Command::new("systemd-analyze")
            .arg("verify")
            .arg("--man=no")
            .arg(format!("--root={}", dir.path().display()))
            .arg(&unit)
            .output()
            .expect("systemd-analyze");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() && err.trim().is_empty(), "{unit}: {err}");
        checked.push(unit);
    }
    checked.sort();
    checked.dedup();
    for required in [
        "containerd.service",
        "kubedna-etcd.service",
        "kubelet.service",
    ] {
        assert!(
            checked.iter().any(|u| u == required),
            "{required} not checked: {checked:?}"
        );
    }
}

#[test]
fn verify_catches_a_bad_drop_in() {
    let dir = tempfile::tempdir().expect("tmp");
    verify_root(dir.path());
    let d = dir.path().join("usr/lib/systemd/system/kubelet.service.d");
    std::fs::write(d.join("99-bad.conf"), "[Service]\nRestartSecc=3\n").expect("write");
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", dir.path().display()))
        .arg("kubelet.service")
        .output()
        .expect("systemd-analyze");
    assert!(String::from_utf8_lossy(&o.stderr).contains("RestartSecc"));
}

#[test]
fn kubelet_unit_matches_upstream_shape() {
    let unit = std::fs::read_to_string(repo_root().join("units/kubelet.service")).expect("read");
    assert!(unit.contains("ExecStart=/usr/bin/kubelet\n"));
    assert!(unit.contains("Restart=always"));
    let dropin =
        std::fs::read_to_string(repo_root().join("units/kubelet.service.d/10-kubeadm.conf"))
            .expect("read");
    assert!(dropin.contains("EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env"));
    assert!(dropin.contains(
        "ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS"
    ));
}

#[test]
fn layer_config_files_parse() {
    let layer = repo_root().join("image-builder/layer/etc");
    let agent = std::fs::read_to_string(layer.join("kubedna/agent.yaml")).expect("agent.yaml");
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&agent).expect("yaml");
    assert_eq!(v["apiVersion"], "kubedna.io/v1alpha1");
    assert_eq!(v["kind"], "AgentConfig");
    let cc = std::fs::read_to_string(layer.join("cloud/cloud.cfg.d/90_kubedna.cfg")).expect("cfg");
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&cc).expect("yaml");
    assert_eq!(v["datasource_list"][0], "NoCloud");
    let containerd = std::fs::read_to_string(layer.join("containerd/config.toml")).expect("toml");
    assert!(containerd.contains("SystemdCgroup = true"));
    assert!(containerd.contains("sandbox_image = \"registry.k8s.io/pause:3.9\""));
    let periodic =
        std::fs::read_to_string(layer.join("apt/apt.conf.d/20auto-upgrades")).expect("apt");
    assert!(periodic.contains("APT::Periodic::Unattended-Upgrade \"0\";"));
}
