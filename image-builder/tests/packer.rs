//! The packer templates: `packer validate` where a Packer binary is installed (it is not packaged
//! in Debian 12, so CI machines without it skip, saying so), and in every case the checks that
//! need no Packer: the provisioner script parses as POSIX sh and applies the same layer script
//! the image builder uses.

mod common;

use std::process::Command;

use common::repo_root;

#[test]
fn packer_validate_where_packer_exists() {
    let packer = Command::new("packer").arg("version").output();
    if packer.map(|o| !o.status.success()).unwrap_or(true) {
        eprintln!("skipped: packer is not installed (not packaged in Debian 12)");
        return;
    }
    let dir = repo_root().join("packer");
    let init = Command::new("packer")
        .args(["init", "."])
        .current_dir(&dir)
        .output()
        .expect("packer init");
    if !init.status.success() {
        eprintln!(
            "skipped: packer init could not fetch plugins: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        return;
    }
    let o = Command::new("packer")
        .args([
            "validate",
            "-var",
            "layer_tar=/dev/null",
            "-var",
            "hcloud_token=x",
            ".",
        ])
        .current_dir(&dir)
        .output()
        .expect("packer validate");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn provisioner_scripts_parse_and_share_the_layer_script() {
    for s in [
        "packer/scripts/apply-layer.sh",
        "image-builder/layer/usr/lib/kubedna/apply-layer-finish.sh",
    ] {
        let o = Command::new("sh")
            .arg("-n")
            .arg(repo_root().join(s))
            .output()
            .expect("sh");
        assert!(
            o.status.success(),
            "{s}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let script =
        std::fs::read_to_string(repo_root().join("packer/scripts/apply-layer.sh")).expect("read");
    assert!(script.contains("sh /usr/lib/kubedna/apply-layer-finish.sh /"));
    let hcl =
        std::fs::read_to_string(repo_root().join("packer/ubuntu-24.04.pkr.hcl")).expect("read");
    for needle in [
        "source \"hcloud\" \"ubuntu\"",
        "image         = \"ubuntu-24.04\"",
        "source \"qemu\" \"ubuntu\"",
        "noble-server-cloudimg-amd64.img",
        "cd_label         = \"cidata\"",
        "disk_image       = true",
    ] {
        assert!(hcl.contains(needle), "template lacks {needle}");
    }
}
