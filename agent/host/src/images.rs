//! Container images for nodes that never pull (air gap): the image builder bakes docker
//! archives and their index (`/usr/share/kubedna/images/images.json`, written by
//! `kubedna-image images`) into the node image; `kubedna-agent import-images`, run by the
//! oneshot unit `kubedna-images.service` after containerd and before kubelet, checks each
//! archive's SHA-256 against the index and imports what containerd's `k8s.io` namespace lacks,
//! with `ctr`. Nothing is imported unless every listed archive verifies, and the run fails
//! naming each image kubeadm needs that is still missing and where it looked.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub const IMAGES_DIR: &str = "/usr/share/kubedna/images";
pub const UNIT: &str = "kubedna-images.service";
pub const NAMESPACE: &str = "k8s.io";

/// `images.json`, as `kubedna-image images` writes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub images: Vec<Record>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub file: String,
    pub repo_tags: Vec<String>,
    pub sha256: String,
    #[serde(default)]
    pub origin: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("container images: cannot read {path}; the node image should carry it (kubedna-image build --image-archives)")]
    Index {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container images: {path} is invalid")]
    IndexInvalid {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("container images: {path} has a bad file name {file:?}")]
    BadName { path: PathBuf, file: String },
    #[error("container image archive {path} (for {tags}): cannot read it")]
    Archive {
        path: PathBuf,
        tags: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "container image archive {path} (for {tags}): SHA-256 mismatch: images.json says \
         {expected}, the file is {actual}; nothing was imported: rebuild the node image"
    )]
    Mismatch {
        path: PathBuf,
        tags: String,
        expected: String,
        actual: String,
    },
    #[error("`{command}` failed: {detail}; is containerd running (systemctl status containerd)?")]
    Ctr { command: String, detail: String },
    #[error(
        "container images still missing from containerd (namespace {NAMESPACE}) after the import: \
         {missing}; kubeadm needs them and this node never pulls; looked in {dir}"
    )]
    Missing { missing: String, dir: PathBuf },
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub imported: Vec<String>,
    pub already_present: Vec<String>,
}

/// Reads the index and checks every archive it lists; nothing is trusted before this passes.
pub fn verify(dir: &Path) -> Result<Index, ImagesError> {
    let path = dir.join("images.json");
    let bytes = std::fs::read(&path).map_err(|source| ImagesError::Index {
        path: path.clone(),
        source,
    })?;
    let index: Index =
        serde_json::from_slice(&bytes).map_err(|source| ImagesError::IndexInvalid {
            path: path.clone(),
            source,
        })?;
    for r in &index.images {
        if r.file.is_empty() || r.file.contains('/') || r.file.starts_with('.') {
            return Err(ImagesError::BadName {
                path: path.clone(),
                file: r.file.clone(),
            });
        }
        let archive = dir.join(&r.file);
        let actual = sha256_file(&archive).map_err(|source| ImagesError::Archive {
            path: archive.clone(),
            tags: r.repo_tags.join(", "),
            source,
        })?;
        if actual != r.sha256 {
            return Err(ImagesError::Mismatch {
                path: archive,
                tags: r.repo_tags.join(", "),
                expected: r.sha256.clone(),
                actual,
            });
        }
    }
    Ok(index)
}

/// Which archives to import: those with a tag containerd does not have yet. Pure.
pub fn to_import<'a>(index: &'a Index, present: &BTreeSet<String>) -> Vec<&'a Record> {
    index
        .images
        .iter()
        .filter(|r| r.repo_tags.iter().any(|t| !present.contains(t)))
        .collect()
}

/// The tags of `index` that `present` lacks. Pure.
pub fn missing(index: &Index, present: &BTreeSet<String>) -> Vec<String> {
    index
        .images
        .iter()
        .flat_map(|r| r.repo_tags.iter())
        .filter(|t| !present.contains(*t))
        .cloned()
        .collect()
}

/// Verifies, imports what is missing with `ctr`, and checks that every tag is then present.
pub fn import(dir: &Path, ctr: &Path) -> Result<Report, ImagesError> {
    let index = verify(dir)?;
    let before = list(ctr)?;
    let mut report = Report::default();
    for r in to_import(&index, &before) {
        let archive = dir.join(&r.file);
        let args = [
            "-n".to_string(),
            NAMESPACE.into(),
            "images".into(),
            "import".into(),
            archive.display().to_string(),
        ];
        run(ctr, &args)?;
        report.imported.extend(r.repo_tags.iter().cloned());
    }
    let after = list(ctr)?;
    let left = missing(&index, &after);
    if !left.is_empty() {
        return Err(ImagesError::Missing {
            missing: left.join(", "),
            dir: dir.to_path_buf(),
        });
    }
    report.already_present = index
        .images
        .iter()
        .flat_map(|r| r.repo_tags.iter())
        .filter(|t| before.contains(*t))
        .cloned()
        .collect();
    Ok(report)
}

fn list(ctr: &Path) -> Result<BTreeSet<String>, ImagesError> {
    let args = ["-n", NAMESPACE, "images", "ls", "-q"].map(String::from);
    let out = run(ctr, &args)?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

fn run(ctr: &Path, args: &[String]) -> Result<String, ImagesError> {
    let command = format!("{} {}", ctr.display(), args.join(" "));
    let out = Command::new(ctr)
        .args(args)
        .output()
        .map_err(|e| ImagesError::Ctr {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(ImagesError::Ctr {
            command,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> Index {
        serde_json::from_str(
            r#"{"images":[
                {"file":"kube-apiserver.tar","repo_tags":["registry.k8s.io/kube-apiserver:v1.30.3"],"sha256":"x"},
                {"file":"pause.tar","repo_tags":["registry.k8s.io/pause:3.9"],"sha256":"y","origin":"built"}
            ]}"#,
        )
        .expect("index")
    }

    #[test]
    fn only_archives_with_a_missing_tag_are_imported() {
        let idx = index();
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        for (present, want_import, want_missing) in [
            (set(&[]), vec!["kube-apiserver.tar", "pause.tar"], 2),
            (
                set(&["registry.k8s.io/pause:3.9"]),
                vec!["kube-apiserver.tar"],
                1,
            ),
            (
                set(&[
                    "registry.k8s.io/pause:3.9",
                    "registry.k8s.io/kube-apiserver:v1.30.3",
                    "docker.io/library/other:1",
                ]),
                vec![],
                0,
            ),
        ] {
            let got: Vec<_> = to_import(&idx, &present)
                .iter()
                .map(|r| r.file.as_str())
                .collect();
            assert_eq!(got, want_import, "{present:?}");
            assert_eq!(missing(&idx, &present).len(), want_missing, "{present:?}");
        }
    }

    #[test]
    fn verify_names_the_archive_and_its_tags_and_refuses_path_tricks() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join("pause.tar"), b"archive").expect("write");
        let good = hex::encode(Sha256::digest(b"archive"));
        let write_index = |file: &str, sha: &str| {
            let json = format!(
                r#"{{"images":[{{"file":"{file}","repo_tags":["registry.k8s.io/pause:3.9"],"sha256":"{sha}"}}]}}"#
            );
            std::fs::write(d.path().join("images.json"), json).expect("write");
        };
        write_index("pause.tar", &good);
        assert_eq!(verify(d.path()).expect("ok").images.len(), 1);

        write_index("pause.tar", &"0".repeat(64));
        let err = verify(d.path()).expect_err("mismatch").to_string();
        assert!(
            err.contains("pause.tar") && err.contains("registry.k8s.io/pause:3.9"),
            "{err}"
        );

        write_index("../etc/passwd", &good);
        assert!(matches!(verify(d.path()), Err(ImagesError::BadName { .. })));

        write_index("gone.tar", &good);
        let err = verify(d.path()).expect_err("missing").to_string();
        assert!(err.contains("gone.tar"), "{err}");

        std::fs::remove_file(d.path().join("images.json")).expect("rm");
        let err = verify(d.path()).expect_err("no index").to_string();
        assert!(err.contains("images.json"), "{err}");
    }
}
