//! Finding the node image's root filesystem for `--image DIR`. DIR is what
//! `kubedna-image build --base debian-12 --out DIR` writes (its `rootfs.tar`), or a directory
//! holding a ready rootfs (`DIR/rootfs/` or DIR itself, e.g. a development rootfs made with
//! mmdebstrap). A tarball is extracted once into a cache keyed by its size and mtime and reused;
//! the image is built only when DIR holds none of these. Nodes only ever read the result (it is
//! their overlay's lower layer).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cmd::{self, CmdError};

/// Default cache of extracted image tarballs.
pub const DEFAULT_CACHE: &str = "/var/cache/kubedna-lab/rootfs";

/// Errors finding or preparing the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no node image in {dir} (expected rootfs.tar, rootfs/ or a root filesystem) and `kubedna-image` is not installed; build one with `kubedna-image build --base debian-12 --out {dir}` or pass --image DIR")]
    Missing { dir: PathBuf },
    #[error("`kubedna-image build` finished but {dir} still holds no image")]
    StillMissing { dir: PathBuf },
    #[error("could not prepare the image cache {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cmd(#[from] CmdError),
}

/// Whether `dir` is a root filesystem with systemd.
pub fn is_rootfs(dir: &Path) -> bool {
    ["usr/lib/systemd/systemd", "lib/systemd/systemd"]
        .iter()
        .any(|p| dir.join(p).exists())
        && dir.join("etc/os-release").exists()
}

/// The `kubedna-image` binary: `$KUBEDNA_IMAGE`, else from `PATH`, else next to this executable
/// (the same cargo target directory, also from `target/*/deps` where tests run).
pub fn builder() -> Option<String> {
    if let Ok(b) = std::env::var("KUBEDNA_IMAGE") {
        return Some(b);
    }
    if cmd::exists("kubedna-image") {
        return Some("kubedna-image".to_string());
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("kubedna-image"))
        .find(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned())
}

/// Whether the image carries the agent (then its nodes get the production seed).
pub fn has_agent(rootfs: &Path) -> bool {
    ["usr/bin/kubedna-agent", "usr/local/bin/kubedna-agent"]
        .iter()
        .any(|p| rootfs.join(p).is_file())
}

/// Returns the rootfs directory to use as the nodes' lower layer, building the image when DIR
/// holds none and `kubedna-image` is available.
pub fn resolve(dir: &Path, cache: &Path) -> Result<PathBuf, ImageError> {
    if let Some(root) = find(dir, cache)? {
        return Ok(root);
    }
    let Some(builder) = builder() else {
        return Err(ImageError::Missing {
            dir: dir.to_path_buf(),
        });
    };
    let out = dir.to_string_lossy().into_owned();
    let args = build_args(&builder, &out);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cmd::run_visible(&builder, &refs)?;
    find(dir, cache)?.ok_or_else(|| ImageError::StillMissing {
        dir: dir.to_path_buf(),
    })
}

/// `build --base debian-12 --out DIR --outputs tar` (the lab only needs the rootfs tarball), with
/// `--agent-bin` when the agent binaries sit next to `kubedna-image` (one cargo target
/// directory), `--repo` when this crate was built inside the repository, then the words of
/// `$KUBEDNA_LAB_IMAGE_BUILD_ARGS` (e.g. `--without-kubernetes` where Kubernetes artifacts cannot
/// be fetched).
fn build_args(builder: &str, out: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "build",
        "--base",
        "debian-12",
        "--out",
        out,
        "--outputs",
        "tar",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let bin_dir = Path::new(builder)
        .parent()
        .filter(|d| !d.as_os_str().is_empty());
    if let Some(d) = bin_dir.filter(|d| d.join("kubedna-agent").is_file()) {
        args.extend(["--agent-bin".into(), d.to_string_lossy().into_owned()]);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if repo.join("image-builder/artifacts.yaml").is_file() {
        args.extend(["--repo".into(), repo.to_string_lossy().into_owned()]);
    }
    if let Ok(extra) = std::env::var("KUBEDNA_LAB_IMAGE_BUILD_ARGS") {
        args.extend(extra.split_whitespace().map(str::to_string));
    }
    args
}

fn find(dir: &Path, cache: &Path) -> Result<Option<PathBuf>, ImageError> {
    let tar = dir.join("rootfs.tar");
    if tar.is_file() {
        return extract_cached(&tar, cache).map(Some);
    }
    for candidate in [dir.join("rootfs"), dir.to_path_buf()] {
        if is_rootfs(&candidate) {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

/// Extracted images kept besides the one being extracted, newest first by last use...
const KEEP_CACHED: usize = 4;
/// ...and any used within this long (a lab may still run on it).
const KEEP_YOUNGER_THAN: std::time::Duration = std::time::Duration::from_secs(3600);

/// Marks a cached rootfs as just used (its directory's mtime), for [`prune_cache`].
fn touch(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Removes extracted images beyond the `keep` most recently used, unless used within `young`.
/// Best effort: an entry that cannot be removed stays.
fn prune_cache(cache: &Path, keep: usize, young: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    let now = std::time::SystemTime::now();
    for (when, dir) in dirs.into_iter().skip(keep) {
        if now.duration_since(when).is_ok_and(|age| age > young) {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

fn extract_cached(tar: &Path, cache: &Path) -> Result<PathBuf, ImageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io { path, source }
    };
    let meta = std::fs::metadata(tar).map_err(io(tar))?;
    let key = hex::encode(Sha256::digest(
        format!(
            "{}\n{}\n{}.{}",
            tar.canonicalize().map_err(io(tar))?.display(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec()
        )
        .as_bytes(),
    ));
    let dest = cache.join(&key[..16]);
    if is_rootfs(&dest) {
        touch(&dest);
        return Ok(dest);
    }
    // Every image build is a new key: without pruning the cache grew to 29 GiB in a day.
    prune_cache(cache, KEEP_CACHED, KEEP_YOUNGER_THAN);
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    // Unique per extraction, not only per process: labs brought up by two threads of one test
    // binary extract the same new image at once (they collided in one directory before).
    static EXTRACTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = EXTRACTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = cache.join(format!(".{}.tmp-{}-{n}", &key[..16], std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    cmd::run(
        "tar",
        &[
            "--extract",
            "--file",
            &tar.to_string_lossy(),
            "--directory",
            &tmp.to_string_lossy(),
            "--numeric-owner",
            "--same-permissions",
            "--xattrs",
            "--xattrs-include=*",
        ],
    )?;
    // Rename last: a half-extracted tree is never taken for an image.
    if let Err(e) = std::fs::rename(&tmp, &dest) {
        // Another lab extracted the same tarball meanwhile: use theirs.
        if is_rootfs(&dest) {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        } else {
            return Err(io(&dest)(e));
        }
    }
    touch(&dest);
    Ok(dest)
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_newest_and_the_recently_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            let p = dir.path().join(name);
            std::fs::create_dir(&p).expect("mkdir");
            let f = std::fs::File::open(&p).expect("open");
            // a is the oldest; d the newest; all two hours old but d.
            let t = old + std::time::Duration::from_secs(i as u64);
            f.set_modified(if *name == "d" {
                std::time::SystemTime::now()
            } else {
                t
            })
            .expect("mtime");
        }
        std::fs::create_dir(dir.path().join(".x.tmp-1")).expect("mkdir");
        prune_cache(dir.path(), 2, std::time::Duration::from_secs(3600));
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // d (newest) and c (next) are kept; a and b are old and beyond 2: gone; a temp stays.
        assert_eq!(left, [".x.tmp-1", "c", "d"]);
    }
}
