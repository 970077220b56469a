//! Container image archives for nodes that never pull: the images kubeadm and kubelet need
//! (kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, pause) written as
//! docker archives (`manifest.json`, one config, one layer) that `ctr -n k8s.io images import`
//! takes, named exactly as kubeadm 1.30 expects (`registry.k8s.io/NAME:TAG`). This is the
//! air-gap path for datacenters without a registry; the lab uses it with binaries built from
//! source. Archives are deterministic: the same inputs and epoch give the same bytes (sorted
//! entries, fixed owner, mode and mtime, no user names), so an image build stays reproducible.
//! An `images.json` beside the archives lists each archive's SHA-256 and tags; the node checks
//! both before importing.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One file placed in the image's single layer.
#[derive(Debug, Clone)]
pub struct LayerFile {
    /// Absolute path inside the image, e.g. `/usr/local/bin/kube-apiserver`.
    pub path: String,
    pub source: PathBuf,
    pub mode: u32,
}

/// What one archive holds.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// File name of the archive, e.g. `kube-apiserver.tar`.
    pub file: String,
    /// Every name the image is known by, e.g. `registry.k8s.io/kube-apiserver:v1.30.3`.
    pub repo_tags: Vec<String>,
    pub files: Vec<LayerFile>,
    pub entrypoint: Vec<String>,
    pub env: Vec<String>,
}

/// `images.json`: what the node imports, and how it checks it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageIndex {
    pub images: Vec<ImageRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    pub file: String,
    pub repo_tags: Vec<String>,
    /// SHA-256 of the archive file.
    pub sha256: String,
    /// Where the binaries inside came from (bill of materials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("image {image}: cannot read {path}")]
    Input {
        image: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image archive: I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image archives {path}: cannot read the index: write it with `kubedna-image images`")]
    IndexMissing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image archives {path}: the index is invalid")]
    IndexInvalid {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "image archive {path}: SHA-256 mismatch: images.json says {expected}, the file is \
         {actual}; write the archives again with `kubedna-image images`"
    )]
    Mismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("image {image}: path {path:?} in the layer must be absolute and plain (no '..')")]
    BadPath { image: String, path: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OciError + '_ {
    move |source| OciError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The images kubeadm 1.30 needs with an external etcd, from a directory of binaries as
/// `tests/kubernetes/build` lays it out (`kube-apiserver`, ..., `pause`). CoreDNS is not here:
/// its image comes from the catalogue, and kubeadm's CoreDNS addon is skipped.
pub fn kubernetes_images(bin_dir: &Path, version: &str) -> Vec<ImageSpec> {
    let path_env = "PATH=/usr/local/bin:/usr/bin:/bin".to_string();
    let mut specs: Vec<ImageSpec> = [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
    ]
    .iter()
    .map(|name| ImageSpec {
        file: format!("{name}.tar"),
        repo_tags: vec![format!("registry.k8s.io/{name}:{version}")],
        files: vec![LayerFile {
            path: format!("/usr/local/bin/{name}"),
            source: bin_dir.join(name),
            mode: 0o755,
        }],
        entrypoint: vec![format!("/usr/local/bin/{name}")],
        env: vec![path_env.clone()],
    })
    .collect();
    specs.push(ImageSpec {
        file: "pause.tar".into(),
        repo_tags: vec!["registry.k8s.io/pause:3.9".into()],
        files: vec![LayerFile {
            path: "/pause".into(),
            source: bin_dir.join("pause"),
            mode: 0o755,
        }],
        entrypoint: vec!["/pause".into()],
        env: vec![path_env],
    });
    specs
}

/// Writes each archive and `images.json` into `out_dir` (created if missing); every file is
/// written to a temporary name and renamed, so a failed run leaves no half-written archive.
pub fn write_all(
    specs: &[ImageSpec],
    out_dir: &Path,
    epoch: u64,
    origin: Option<&str>,
) -> Result<ImageIndex, OciError> {
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let mut images = Vec::new();
    for spec in specs {
        let sha256 = write_archive(spec, &out_dir.join(&spec.file), epoch)?;
        images.push(ImageRecord {
            file: spec.file.clone(),
            repo_tags: spec.repo_tags.clone(),
            sha256,
            origin: origin.map(str::to_string),
        });
    }
    let index = ImageIndex { images };
    let json = serde_json::to_vec_pretty(&index).map_err(|e| OciError::Io {
        path: out_dir.join("images.json"),
        source: e.into(),
    })?;
    let path = out_dir.join("images.json");
    let tmp = out_dir.join(".images.json.tmp");
    std::fs::write(&tmp, json).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(index)
}

/// Reads `DIR/images.json` and checks every archive it lists against its SHA-256 (a missing
/// archive is an error naming it). Returns the index; nothing is trusted before this passes.
pub fn verify_dir(dir: &Path) -> Result<ImageIndex, OciError> {
    let path = dir.join("images.json");
    let bytes = std::fs::read(&path).map_err(|source| OciError::IndexMissing {
        path: path.clone(),
        source,
    })?;
    let index: ImageIndex =
        serde_json::from_slice(&bytes).map_err(|source| OciError::IndexInvalid {
            path: path.clone(),
            source,
        })?;
    for rec in &index.images {
        let archive = dir.join(&rec.file);
        if rec.file.contains('/') || rec.file.starts_with('.') {
            return Err(OciError::BadPath {
                image: rec.file.clone(),
                path: rec.file.clone(),
            });
        }
        let mut f = File::open(&archive).map_err(io(&archive))?;
        let actual = hash_reader(&mut f, &archive)?;
        if actual != rec.sha256 {
            return Err(OciError::Mismatch {
                path: archive,
                expected: rec.sha256.clone(),
                actual,
            });
        }
    }
    Ok(index)
}

/// Writes one docker archive to `out`; returns its SHA-256.
pub fn write_archive(spec: &ImageSpec, out: &Path, epoch: u64) -> Result<String, OciError> {
    let dir = out.parent().unwrap_or(Path::new("."));
    let mut layer = tempfile::tempfile_in(dir).map_err(io(dir))?;
    write_layer(spec, &mut layer, epoch)?;
    let layer_len = layer.metadata().map_err(io(dir))?.len();
    let diff_id = hash_reader(&mut rewind(layer.try_clone().map_err(io(dir))?, dir)?, dir)?;

    let config = image_config(spec, &diff_id, epoch);
    let config_bytes = serde_json::to_vec(&config).map_err(|e| OciError::Io {
        path: out.to_path_buf(),
        source: e.into(),
    })?;
    let config_id = hex::encode(Sha256::digest(&config_bytes));
    let config_name = format!("{config_id}.json");
    let layer_name = format!("{diff_id}/layer.tar");
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": spec.repo_tags,
        "Layers": [layer_name],
    }]);
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| OciError::Io {
        path: out.to_path_buf(),
        source: e.into(),
    })?;

    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    {
        let mut tar = tar::Builder::new(BufWriter::new(tmp.as_file()));
        tar.mode(tar::HeaderMode::Deterministic);
        let mut dir_header = header(tar::EntryType::Directory, 0o755, 0, epoch);
        tar.append_data(&mut dir_header, format!("{diff_id}/"), std::io::empty())
            .map_err(io(out))?;
        let mut h = header(tar::EntryType::Regular, 0o644, layer_len, epoch);
        let layer = rewind(layer, dir)?;
        tar.append_data(&mut h, &layer_name, layer)
            .map_err(io(out))?;
        for (name, bytes) in [
            (config_name.as_str(), &config_bytes),
            ("manifest.json", &manifest_bytes),
        ] {
            let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64, epoch);
            tar.append_data(&mut h, name, bytes.as_slice())
                .map_err(io(out))?;
        }
        let mut w = tar.into_inner().map_err(io(out))?;
        w.flush().map_err(io(out))?;
    }
    tmp.as_file().sync_all().map_err(io(out))?;
    let sha = hash_reader(&mut File::open(tmp.path()).map_err(io(out))?, out)?;
    tmp.persist(out).map_err(|e| OciError::Io {
        path: out.to_path_buf(),
        source: e.error,
    })?;
    Ok(sha)
}

/// The layer: parent directories, then files, sorted by path, owned by root.
fn write_layer(spec: &ImageSpec, w: &mut File, epoch: u64) -> Result<(), OciError> {
    let mut entries: BTreeMap<String, Option<&LayerFile>> = BTreeMap::new();
    for f in &spec.files {
        let rel = f.path.strip_prefix('/').unwrap_or("");
        if rel.is_empty()
            || !f.path.starts_with('/')
            || rel.split('/').any(|c| c == ".." || c.is_empty())
        {
            return Err(OciError::BadPath {
                image: spec.file.clone(),
                path: f.path.clone(),
            });
        }
        let mut parent = String::new();
        let comps: Vec<&str> = rel.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            parent.push_str(c);
            parent.push('/');
            entries.entry(parent.clone()).or_insert(None);
        }
        entries.insert(rel.to_string(), Some(f));
    }
    let path = PathBuf::from(&spec.file);
    let mut tar = tar::Builder::new(BufWriter::new(w));
    tar.mode(tar::HeaderMode::Deterministic);
    for (name, file) in entries {
        match file {
            None => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0, epoch);
                tar.append_data(&mut h, &name, std::io::empty())
                    .map_err(io(&path))?;
            }
            Some(f) => {
                let input = |source| OciError::Input {
                    image: spec.file.clone(),
                    path: f.source.clone(),
                    source,
                };
                let src = File::open(&f.source).map_err(input)?;
                let len = src.metadata().map_err(input)?.len();
                let mut h = header(tar::EntryType::Regular, f.mode, len, epoch);
                tar.append_data(&mut h, &name, src).map_err(input)?;
            }
        }
    }
    let mut w = tar.into_inner().map_err(io(&path))?;
    w.flush().map_err(io(&path))?;
    Ok(())
}

fn header(kind: tar::EntryType, mode: u32, size: u64, epoch: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(epoch);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// The image config: what containerd needs to unpack and run it (os, architecture, the
/// layer's uncompressed digest, the entrypoint and PATH).
fn image_config(spec: &ImageSpec, diff_id: &str, epoch: u64) -> serde_json::Value {
    serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": rfc3339(epoch),
        "config": {
            "Entrypoint": spec.entrypoint,
            "Env": spec.env,
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
        "history": [{ "created": rfc3339(epoch), "created_by": "kubedna-image images" }],
    })
}

fn rewind(mut f: File, dir: &Path) -> Result<File, OciError> {
    use std::io::Seek;
    f.rewind().map_err(io(dir))?;
    Ok(f)
}

fn hash_reader(r: &mut dyn Read, path: &Path) -> Result<String, OciError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Seconds since the epoch as an RFC 3339 UTC time (days to civil date, Howard Hinnant's method).
fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests;
