//! What the build does to the root tree between the base and the outputs: copy our layer's
//! files and units in, install the pinned artifacts, set which units start, scrub what must not
//! leak from the build host (machine id, host keys, logs, caches), and read back the installed
//! package list for the build record. Each step names the file it failed on.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{io, BuildError};
use crate::artifacts::{Artifact, Install};
use crate::cmd::Cmd;

/// Copies a directory tree's regular files (keeping the executable bit) into `to`.
pub(super) fn copy_tree(from: &Path, to: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let mut copied = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .map_err(io(from))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let dest = to.join(e.file_name());
        if p.is_dir() {
            if !dest.exists() {
                std::fs::create_dir_all(&dest).map_err(io(&dest))?;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
                    .map_err(io(&dest))?;
            }
            copied.extend(copy_tree(&p, &dest)?);
        } else if p.is_file() {
            let mode = std::fs::metadata(&p).map_err(io(&p))?.permissions().mode();
            install_file(&p, &dest, if mode & 0o111 != 0 { 0o755 } else { 0o644 })?;
            copied.push(dest);
        }
    }
    Ok(copied)
}

/// Copies the unit files (and `*.d` drop-in directories) from `units/` into the image.
pub(super) fn copy_units(from: &Path, to: &Path) -> Result<Vec<String>, BuildError> {
    let copied = copy_tree(from, to)?;
    let mut names: Vec<String> = copied
        .iter()
        .filter_map(|p| p.strip_prefix(to).ok())
        .map(|p| p.display().to_string())
        .collect();
    names.sort();
    Ok(names)
}

pub(super) fn install_file(from: &Path, to: &Path, mode: u32) -> Result<(), BuildError> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    // Replace, never write through, whatever was there (a symlink must not redirect us).
    let _ = std::fs::remove_file(to);
    std::fs::copy(from, to).map_err(io(to))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).map_err(io(to))?;
    Ok(())
}

pub(super) fn install_artifact(a: &Artifact, file: &Path, rootfs: &Path) -> Result<(), BuildError> {
    match &a.install {
        Install::Binary { path } => {
            install_file(file, &rootfs.join(path.trim_start_matches('/')), 0o755)
        }
        Install::TarGz { dir } => {
            let dest = rootfs.join(dir.trim_start_matches('/'));
            std::fs::create_dir_all(&dest).map_err(io(&dest))?;
            Cmd::new("tar")
                .args(["--extract", "--gzip", "--no-same-owner"])
                .arg("--file")
                .arg(file)
                .arg("--directory")
                .arg(&dest)
                .run()?;
            Ok(())
        }
    }
}

/// Which units start at boot: the layer's own script decides, so that packer and autoinstall
/// builds, which run it inside the target, get exactly the same unit states.
pub(super) fn set_unit_states(rootfs: &Path) -> Result<(), BuildError> {
    Cmd::new("sh")
        .arg(rootfs.join("usr/lib/kubedna/apply-layer-finish.sh"))
        .arg(rootfs)
        .run()?;
    Ok(())
}

/// Removes what identifies the build host or the build moment, so that the image is the
/// same on every build and every machine made from it gets its own identity on first boot.
pub(super) fn scrub(rootfs: &Path) -> Result<(), BuildError> {
    let machine_id = rootfs.join("etc/machine-id");
    // Empty (not missing): systemd treats it as first boot and generates an id.
    std::fs::write(&machine_id, b"").map_err(io(&machine_id))?;
    for rel in [
        "var/lib/dbus/machine-id",
        "var/lib/systemd/random-seed",
        "var/cache/ldconfig/aux-cache",
        "etc/resolv.conf",
    ] {
        let p = rootfs.join(rel);
        if p.symlink_metadata().is_ok() && !p.is_dir() {
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
    }
    remove_matching(&rootfs.join("etc/ssh"), |n| n.starts_with("ssh_host_"))?;
    remove_matching(&rootfs.join("var/lib/apt/lists"), |n| {
        n != "partial" && n != "lock"
    })?;
    remove_matching(&rootfs.join("var/cache/apt"), |n| n.ends_with(".bin"))?;
    remove_matching(&rootfs.join("var/cache/apt/archives"), |n| {
        n.ends_with(".deb")
    })?;
    remove_matching(&rootfs.join("var/cache/debconf"), |n| n.ends_with("-old"))?;
    remove_matching(&rootfs.join("var/lib/dpkg"), |n| n.ends_with("-old"))?;
    remove_matching(&rootfs.join("etc"), |n| {
        matches!(
            n,
            "passwd-" | "group-" | "shadow-" | "gshadow-" | "subuid-" | "subgid-"
        )
    })?;
    empty_dir_files(&rootfs.join("var/log"))?;
    for d in ["tmp", "var/tmp"] {
        let p = rootfs.join(d);
        remove_matching(&p, |_| true)?;
    }
    let hostname = rootfs.join("etc/hostname");
    std::fs::write(&hostname, "localhost\n").map_err(io(&hostname))?;
    Ok(())
}

pub(super) fn remove_matching(dir: &Path, pred: impl Fn(&str) -> bool) -> Result<(), BuildError> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !pred(&name) {
            continue;
        }
        let p = e.path();
        let is_dir = p.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false);
        if is_dir {
            std::fs::remove_dir_all(&p).map_err(io(&p))?;
        } else {
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
    }
    Ok(())
}

/// Deletes every file under `dir` but keeps the directories (packages own them).
pub(super) fn empty_dir_files(dir: &Path) -> Result<(), BuildError> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        let meta = p.symlink_metadata().map_err(io(&p))?;
        if meta.is_dir() {
            empty_dir_files(&p)?;
        } else {
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
    }
    Ok(())
}

pub(super) fn packages(rootfs: &Path) -> Result<BTreeMap<String, String>, BuildError> {
    let out = Cmd::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            rootfs.join("var/lib/dpkg").display()
        ))
        .args([
            "--show",
            "--showformat=${Package}\t${Version}\t${db:Status-Abbrev}\n",
        ])
        .run_text()?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (name, version, status) = (f.next()?, f.next()?, f.next()?);
            status
                .starts_with("ii")
                .then(|| (name.to_string(), version.to_string()))
        })
        .collect())
}
