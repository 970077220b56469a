//! The `build` command end to end: check inputs, obtain and verify the pinned artifacts, get the
//! mmdebstrap base (from a cache keyed by every input that shapes it), layer our files on top,
//! scrub what must not leak from the build host, then write the outputs into a staging
//! directory that only becomes `--out` when everything succeeded. A failed build leaves no
//! output behind and never touches a previous one.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::artifacts::{self, ArtifactError, Cache, Manifest, Source};
use crate::base::{self, BaseError, BaseName, BaseSpec};
use crate::cmd::{Cmd, CmdError};
use crate::disk::{self, DiskError, DiskIds};

mod rootfs;
use rootfs::{
    copy_tree, copy_units, install_artifact, install_file, packages, scrub, set_unit_states,
};

/// Which outputs to write.
#[derive(Debug, Clone, Copy)]
pub struct Outputs {
    pub tarball: bool,
    pub disk: bool,
    pub pxe: bool,
    /// Compress disk.qcow2 (zstd).
    pub compress_qcow2: bool,
}

/// Everything a build depends on; paths are resolved by the caller.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub base: BaseName,
    pub out: PathBuf,
    pub agent_bin: PathBuf,
    pub units_dir: PathBuf,
    pub layer_dir: PathBuf,
    pub agent_config: PathBuf,
    pub artifacts_manifest: PathBuf,
    pub artifacts_dir: Option<PathBuf>,
    pub without_kubernetes: bool,
    /// Lab images only: a directory with the kubeadm and kubelet TEST DOUBLES, installed as
    /// /usr/bin/kubeadm and /usr/bin/kubelet over any real ones and recorded in image.json.
    /// Production images never set this.
    pub test_doubles: Option<PathBuf>,
    /// Container image archives (`kubedna-image images` output) to bake into
    /// `/usr/share/kubedna/images` for nodes that never pull; verified against their index.
    pub image_archives: Option<PathBuf>,
    pub cache_dir: PathBuf,
    pub work_dir: PathBuf,
    pub apt_dir: PathBuf,
    pub source_date_epoch: u64,
    pub outputs: Outputs,
    /// Run mmdebstrap even when a base for the same key is cached (to take in archive updates:
    /// the key covers the inputs, not the archive's current contents).
    pub refresh_base: bool,
}

/// The doubles `--test-doubles DIR` installs, by their binary names.
pub const TEST_DOUBLES: [&str; 2] = ["kubeadm", "kubelet"];

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("test double {path} not found: build the doubles (`cargo build -p kubeadm-double -p kubelet-double`) and pass their directory (target/debug) to --test-doubles")]
    DoubleMissing { path: PathBuf },
    #[error(transparent)]
    Base(#[from] BaseError),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Images(#[from] crate::oci::OciError),
    #[error(
        "agent binary {path} not found: build it first (`cargo build --release -p kubedna-daemon \
         -p kubedna-cli`) or pass --agent-bin DIR holding kubedna-agent and kubedna"
    )]
    AgentMissing { path: PathBuf },
    #[error("{path} is missing from the units directory; the image installs every unit from it")]
    UnitMissing { path: PathBuf },
    #[error("I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{out} exists and is not a kubedna-image output (no manifest.json): refusing to replace it"
    )]
    ForeignOut { out: PathBuf },
    #[error("build must run as root (mmdebstrap --mode=root, file ownership in the tarball)")]
    NotRoot,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The image's own record of what it carries: `/etc/kubedna/image.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ImageRecord {
    pub kubedna_image_version: String,
    pub base: String,
    pub suite: String,
    pub source_date_epoch: u64,
    pub base_key: String,
    pub agent: BTreeMap<String, String>,
    pub kubernetes: Option<Vec<ArtifactRecord>>,
    pub units: Vec<String>,
    /// Test doubles this image carries (name → sha256): set only for lab images built with
    /// `--test-doubles`; such an image must never reach production.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_doubles: Option<BTreeMap<String, String>>,
    /// Container image archives baked into /usr/share/kubedna/images (air gap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_images: Option<Vec<crate::oci::ImageRecord>>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ArtifactRecord {
    pub name: String,
    pub version: String,
    pub url: String,
    /// Set when the bytes were not published at `url` (a lab build from source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub sha256: String,
}

/// The bill of materials written beside the outputs as `manifest.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BuildManifest {
    pub image: ImageRecord,
    pub sources: Vec<String>,
    pub packages: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, OutputRecord>,
    pub disk_ids: Option<serde_json::Value>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OutputRecord {
    pub sha256: String,
    pub bytes: u64,
}

/// Progress on stderr with the time since the build started.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
}

impl Progress {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }
    pub fn step(&self, msg: &str) {
        eprintln!(
            "kubedna-image [{:6.1}s] {msg}",
            self.start.elapsed().as_secs_f64()
        );
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

pub fn build(opts: &BuildOptions, progress: &Progress) -> Result<BuildManifest, BuildError> {
    progress.step(&format!("resolving base {}", opts.base));
    let spec = base::resolve(opts.base, &opts.apt_dir)?;

    let agent_files = ["kubedna-agent", "kubedna"].map(|n| opts.agent_bin.join(n));
    for p in &agent_files {
        if !p.is_file() {
            return Err(BuildError::AgentMissing { path: p.clone() });
        }
    }
    let agent_unit = opts.units_dir.join("kubedna-agent.service");
    if !agent_unit.is_file() {
        return Err(BuildError::UnitMissing { path: agent_unit });
    }
    let doubles: Option<Vec<PathBuf>> = opts
        .test_doubles
        .as_ref()
        .map(|d| TEST_DOUBLES.iter().map(|n| d.join(n)).collect());
    for p in doubles.iter().flatten() {
        if !p.is_file() {
            return Err(BuildError::DoubleMissing { path: p.clone() });
        }
    }
    if let Some(parent) = opts.out.parent() {
        if opts.out.exists() && !opts.out.join("manifest.json").is_file() {
            return Err(BuildError::ForeignOut {
                out: opts.out.clone(),
            });
        }
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }

    // Every artifact is verified before anything is assembled: a bad one stops the build here.
    let manifest = Manifest::load(&opts.artifacts_manifest)?;
    let images = match &opts.image_archives {
        Some(dir) => {
            let index = crate::oci::verify_dir(dir)?;
            progress.step(&format!(
                "container image archives in {}: {} verified",
                dir.display(),
                index.images.len()
            ));
            Some((dir.clone(), index))
        }
        None => None,
    };
    let kube = if opts.without_kubernetes {
        progress.step("building without Kubernetes artifacts (--without-kubernetes)");
        None
    } else {
        let cache = Cache::new(opts.cache_dir.join("artifacts"));
        let source = match &opts.artifacts_dir {
            Some(d) => Source::Mirror(d.clone()),
            None => Source::Network,
        };
        let mut got = Vec::new();
        for a in &manifest.artifacts {
            let p = cache.obtain(a, &source, &|m| progress.step(m))?;
            progress.step(&format!(
                "artifact {}: sha256 {} verified",
                a.name, a.sha256
            ));
            got.push((a.clone(), p));
        }
        Some(got)
    };

    if !is_root() {
        return Err(BuildError::NotRoot);
    }
    let base_tar = base_tarball(&spec, opts, progress)?;
    let base_key = base_key(&spec, opts.source_date_epoch)?;

    std::fs::create_dir_all(&opts.work_dir).map_err(io(&opts.work_dir))?;
    let work = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(&opts.work_dir)
        .map_err(io(&opts.work_dir))?;
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir(&rootfs).map_err(io(&rootfs))?;
    // The base tree is extracted once per base key and kept; each build mounts an overlay on
    // it, so a rebuild copies only what it changes. Where overlay cannot be mounted the base
    // is extracted into the work directory instead (slower, same result).
    let base_dir = base_tree(&base_tar, progress)?;
    let _overlay = match Overlay::mount(&base_dir, work.path(), &rootfs) {
        Ok(o) => {
            progress.step("base mounted as the lower layer of an overlay");
            Some(o)
        }
        Err(e) => {
            progress.step(&format!(
                "overlay not available ({e}); extracting the base instead"
            ));
            extract(&base_tar, &rootfs)?;
            None
        }
    };

    // Our files are assembled in their own tree first: it is both what goes on top of the
    // base and the `layer.tar` output that packer and autoinstall apply to Ubuntu's images.
    progress.step("assembling the layer: agent, units, configuration, artifacts");
    let layer = work.path().join("layer");
    std::fs::create_dir(&layer).map_err(io(&layer))?;
    copy_tree(&opts.layer_dir, &layer)?;
    let unit_dir = layer.join("usr/lib/systemd/system");
    let units = copy_units(&opts.units_dir, &unit_dir)?;
    install_file(
        &opts.agent_config,
        &layer.join("etc/kubedna/agent.yaml"),
        0o644,
    )?;
    let mut agent = BTreeMap::new();
    for p in &agent_files {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        install_file(p, &layer.join("usr/bin").join(&name), 0o755)?;
        agent.insert(name, artifacts::sha256_file(p)?);
    }
    let mut kube_records = None;
    if let Some(got) = &kube {
        let mut recs = Vec::new();
        for (a, p) in got {
            install_artifact(a, p, &layer)?;
            recs.push(ArtifactRecord {
                name: a.name.clone(),
                version: a.version.clone(),
                url: a.url.clone(),
                origin: a.origin.clone(),
                sha256: a.sha256.clone(),
            });
        }
        kube_records = Some(recs);
    }
    let mut double_records = None;
    if let Some(paths) = &doubles {
        progress
            .step("installing TEST DOUBLES (kubeadm, kubelet) for a lab image (--test-doubles)");
        let mut recs = BTreeMap::new();
        for p in paths {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.unwrap_or_default();
            install_file(p, &layer.join("usr/bin").join(&name), 0o755)?;
            recs.insert(name, artifacts::sha256_file(p)?);
        }
        double_records = Some(recs);
    }
    let mut image_records = None;
    if let Some((dir, index)) = &images {
        let dest = layer.join("usr/share/kubedna/images");
        for rec in &index.images {
            install_file(&dir.join(&rec.file), &dest.join(&rec.file), 0o644)?;
        }
        install_file(&dir.join("images.json"), &dest.join("images.json"), 0o644)?;
        image_records = Some(index.images.clone());
    }
    let record = ImageRecord {
        kubedna_image_version: env!("CARGO_PKG_VERSION").to_string(),
        base: spec.name.clone(),
        suite: spec.suite.clone(),
        source_date_epoch: opts.source_date_epoch,
        base_key: base_key.clone(),
        agent,
        kubernetes: kube_records,
        units,
        test_doubles: double_records,
        container_images: image_records,
    };
    write_json(&layer.join("etc/kubedna/image.json"), &record)?;
    let record_path = rootfs.join("etc/kubedna/image.json");

    progress.step("layering onto the base and scrubbing host traces");
    let mut layer_dot = layer.clone().into_os_string();
    layer_dot.push("/.");
    Cmd::new("cp")
        .args(["--archive", "--no-target-directory"])
        .arg(&layer_dot)
        .arg(&rootfs)
        .run()?;
    set_unit_states(&rootfs)?;
    scrub(&rootfs)?;
    let packages = packages(&rootfs)?;

    // Outputs are staged beside --out and renamed into place only at the end.
    let out_name = opts
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let out_parent = opts
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{out_name}.partial-"))
        .tempdir_in(out_parent)
        .map_err(io(out_parent))?;
    let stage = staging.path();
    let mut outputs = BTreeMap::new();
    let mut disk_ids = None;

    disk::write_tarball(&layer, &stage.join("layer.tar"), opts.source_date_epoch)?;
    if opts.outputs.tarball {
        progress.step("writing rootfs.tar");
        disk::write_tarball(&rootfs, &stage.join("rootfs.tar"), opts.source_date_epoch)?;
    }
    if opts.outputs.disk || opts.outputs.pxe {
        let (kernel, initrd) = disk::kernel_and_initrd(&rootfs)?;
        if opts.outputs.disk {
            let ids = DiskIds::derive(&format!("{base_key}/{}", opts.source_date_epoch));
            progress.step("writing disk.raw (GPT, ESP with systemd-boot, ext4 root)");
            let sdboot = rootfs.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi");
            disk::write_disk(
                &disk::DiskInput {
                    rootfs: &rootfs,
                    kernel: &kernel,
                    initrd: &initrd,
                    systemd_boot: &sdboot,
                    ids: &ids,
                    title: &format!("KubeDNA node ({})", spec.name),
                    epoch: opts.source_date_epoch,
                    work: work.path(),
                },
                &stage.join("disk.raw"),
            )?;
            progress.step("writing disk.qcow2");
            disk::write_qcow2(
                &stage.join("disk.raw"),
                &stage.join("disk.qcow2"),
                opts.outputs.compress_qcow2,
            )?;
            disk_ids = Some(serde_json::to_value(&ids).unwrap_or_default());
        }
        if opts.outputs.pxe {
            progress.step("writing pxe/ (kernel, initrd, root.squashfs, boot.ipxe)");
            // With the disk output, pxe/ also carries its ESP so a machine can install itself.
            let esp = work.path().join("esp.img");
            let root_partuuid = disk_ids
                .as_ref()
                .and_then(|v| v.get("root_partuuid"))
                .and_then(|v| v.as_str())
                .map(str::to_string);
            let install = root_partuuid.as_deref().map(|u| disk::PxeInstall {
                esp: &esp,
                root_partuuid: u,
            });
            disk::write_pxe(
                &rootfs,
                &kernel,
                &initrd,
                &stage.join("pxe"),
                &spec.pxe_boot_args,
                opts.source_date_epoch,
                install.as_ref(),
            )?;
        }
    }
    std::fs::copy(&record_path, stage.join("image.json")).map_err(io(&record_path))?;
    progress.step("hashing outputs");
    let present: Vec<&str> = [
        "rootfs.tar",
        "layer.tar",
        "disk.raw",
        "disk.qcow2",
        "pxe/vmlinuz",
        "pxe/initrd.img",
        "pxe/root.squashfs",
        "pxe/boot.ipxe",
        "pxe/esp.img",
        "image.json",
    ]
    .into_iter()
    .filter(|rel| stage.join(rel).is_file())
    .collect();
    // One hasher per file, in parallel: the big outputs are gigabytes.
    let hashed: Vec<Result<(String, OutputRecord), BuildError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = present
            .iter()
            .map(|rel| {
                let p = stage.join(rel);
                scope.spawn(move || {
                    let bytes = std::fs::metadata(&p).map_err(io(&p))?.len();
                    let sha256 = sha256sum(&p)?;
                    Ok((rel.to_string(), OutputRecord { sha256, bytes }))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BuildError::Io {
                        path: stage.to_path_buf(),
                        source: std::io::Error::other("hashing thread panicked"),
                    })
                })
            })
            .collect()
    });
    for h in hashed {
        let (rel, rec) = h?;
        outputs.insert(rel, rec);
    }
    let manifest = BuildManifest {
        image: record,
        sources: spec.sources.clone(),
        packages,
        outputs,
        disk_ids,
    };
    write_json(&stage.join("manifest.json"), &manifest)?;
    let sums: String = manifest
        .outputs
        .iter()
        .map(|(k, v)| format!("{}  {k}\n", v.sha256))
        .collect();
    let sums_path = stage.join("SHA256SUMS");
    std::fs::write(&sums_path, sums).map_err(io(&sums_path))?;

    // Swap into place: the old output (if any) is removed only after the new one is complete.
    let staged = staging.keep();
    if opts.out.exists() {
        let old = out_parent.join(format!(".{out_name}.old-{}", std::process::id()));
        std::fs::rename(&opts.out, &old).map_err(io(&opts.out))?;
        std::fs::rename(&staged, &opts.out).map_err(io(&opts.out))?;
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        std::fs::rename(&staged, &opts.out).map_err(io(&opts.out))?;
    }
    progress.step(&format!("done: {}", opts.out.display()));
    Ok(manifest)
}

/// SHA-256 of a (multi-gigabyte) output through coreutils, which is fast in every build
/// profile; pinned artifacts are verified in-process with sha2 instead.
fn sha256sum(path: &Path) -> Result<String, BuildError> {
    let out = Cmd::new("sha256sum").arg(path).run_text()?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn is_root() -> bool {
    Cmd::new("id")
        .arg("-u")
        .run_text()
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

/// The cache key of a base tarball: every input that changes what mmdebstrap produces.
fn base_key(spec: &BaseSpec, epoch: u64) -> Result<String, BuildError> {
    use sha2::{Digest, Sha256};
    let mmdebstrap = Cmd::new("mmdebstrap").arg("--version").run_text()?;
    let keyring = std::fs::read(&spec.keyring).map_err(io(&spec.keyring))?;
    let input = serde_json::json!({
        "spec": spec,
        "epoch": epoch,
        "mmdebstrap": mmdebstrap.trim(),
        "keyring_sha256": hex::encode(Sha256::digest(&keyring)),
        "variant": "minbase",
    });
    Ok(hex::encode(Sha256::digest(input.to_string().as_bytes())))
}

/// Returns the cached base tarball for `spec`, running mmdebstrap when there is none.
fn base_tarball(
    spec: &BaseSpec,
    opts: &BuildOptions,
    progress: &Progress,
) -> Result<PathBuf, BuildError> {
    let key = base_key(spec, opts.source_date_epoch)?;
    let dir = opts.cache_dir.join("base");
    let tar = dir.join(format!("{}-{key}.tar", spec.name));
    if opts.refresh_base {
        for stale in [tar.with_extension("d.complete"), tar.clone()] {
            if stale.exists() {
                std::fs::remove_file(&stale).map_err(io(&stale))?;
            }
        }
        let tree = tar.with_extension("d");
        if tree.exists() {
            std::fs::remove_dir_all(&tree).map_err(io(&tree))?;
        }
    }
    if tar.is_file() {
        progress.step(&format!("base {} cached ({})", spec.name, tar.display()));
        return Ok(tar);
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let tmp = tempfile::Builder::new()
        .prefix(".mmdebstrap-")
        .suffix(".tar")
        .tempfile_in(&dir)
        .map_err(io(&dir))?;
    progress.step(&format!(
        "mmdebstrap {} from {} (a few minutes; mmdebstrap's progress follows)",
        spec.suite,
        spec.sources.join(" | ")
    ));
    Cmd::new("mmdebstrap")
        .args(["--mode=root", "--format=tar", "--variant=minbase"])
        .arg(format!("--keyring={}", spec.keyring.display()))
        .arg(format!("--include={}", spec.packages.join(",")))
        // Nothing of the host's apt state ends up in the image; no recommends keeps it small.
        .arg("--aptopt=APT::Install-Recommends \"false\"")
        .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
        .arg("--dpkgopt=path-include=/usr/share/doc/*/copyright")
        .arg("--dpkgopt=path-exclude=/usr/share/man/*")
        .arg("--dpkgopt=path-exclude=/usr/share/locale/*")
        .arg(&spec.suite)
        .arg(tmp.path())
        .args(&spec.sources)
        .env("SOURCE_DATE_EPOCH", opts.source_date_epoch.to_string())
        .show_progress()
        .run()?;
    tmp.persist(&tar).map_err(|e| BuildError::Io {
        path: tar.clone(),
        source: e.error,
    })?;
    Ok(tar)
}

fn extract(tar: &Path, into: &Path) -> Result<(), BuildError> {
    Cmd::new("tar")
        .args([
            "--extract",
            "--numeric-owner",
            "--same-permissions",
            "--xattrs",
            "--xattrs-include=*",
        ])
        .arg("--file")
        .arg(tar)
        .arg("--directory")
        .arg(into)
        .run()?;
    Ok(())
}

/// The base tarball extracted beside itself (`<tar>.d`), once; `<tar>.d.complete` marks a
/// finished extraction, so an interrupted one is redone rather than used.
fn base_tree(tar: &Path, progress: &Progress) -> Result<PathBuf, BuildError> {
    let dir = tar.with_extension("d");
    let done = tar.with_extension("d.complete");
    if done.is_file() && dir.is_dir() {
        return Ok(dir);
    }
    progress.step(&format!("extracting base tree {}", dir.display()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    let parent = tar.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".tree-")
        .tempdir_in(parent)
        .map_err(io(parent))?;
    extract(tar, tmp.path())?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(io(tmp.path()))?;
    let kept = tmp.keep();
    std::fs::rename(&kept, &dir).map_err(io(&dir))?;
    std::fs::write(&done, b"").map_err(io(&done))?;
    Ok(dir)
}

/// An overlay mount of the cached base tree (read-only lower) with an upper directory in the
/// build's work directory; unmounted when dropped, before the work directory is removed.
#[derive(Debug)]
struct Overlay {
    target: PathBuf,
}

impl Overlay {
    fn mount(lower: &Path, work: &Path, target: &Path) -> Result<Self, BuildError> {
        let upper = work.join("upper");
        let ovl = work.join("overlay-work");
        for d in [&upper, &ovl] {
            std::fs::create_dir(d).map_err(io(d))?;
        }
        std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(0o755))
            .map_err(io(&upper))?;
        Cmd::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                ovl.display()
            ))
            .arg(target)
            .run()?;
        Ok(Self {
            target: target.to_path_buf(),
        })
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if let Err(e) = Cmd::new("umount").arg(&self.target).run() {
            eprintln!("kubedna-image: warning: {e}");
        }
    }
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), BuildError> {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::write(path, text).map_err(io(path))
}

/// Reads a JSON build manifest back (tests and `inspect`).
pub fn read_manifest(path: &Path) -> Result<BuildManifest, BuildError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| BuildError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}
