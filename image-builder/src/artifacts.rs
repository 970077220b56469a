//! Pinned Kubernetes artifacts: the manifest in the repository (`image-builder/artifacts.yaml`),
//! a content-addressed cache (`CACHE/sha256/<digest>`), fetching over HTTPS with reqwest (or
//! copying from a local mirror), and SHA-256 verification. Nothing leaves this module unverified:
//! a file is only ever handed out by its digest after it has been hashed and compared to the
//! pin, and a mismatch, a truncated body or an unreachable host is an error that names the
//! artifact, the expected digest and what was found.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kubedna_proto::error_chain;
use sha2::{Digest, Sha256};

/// The manifest file as written in the repository.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub name: String,
    pub version: String,
    /// Where the file is fetched from: an `https://` URL, or `mirror:FILE` for an artifact that
    /// exists only in a local mirror (`--artifacts-dir`), such as the lab's Kubernetes binaries
    /// built from source by `tests/kubernetes/build`.
    pub url: String,
    /// Where the bytes came from when that is not the URL's publisher, for the image's bill of
    /// materials (e.g. "built from k8s.io/kubernetes@v1.30.3 with go1.26.8").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub sha256: String,
    pub install: Install,
}

/// Where a verified artifact goes in the root filesystem.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Install {
    /// A single executable, installed at `path` with mode 0755.
    Binary { path: String },
    /// A gzip'd tarball whose regular files are unpacked into `dir`.
    TarGz { dir: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("cannot read artifact manifest {path}")]
    ReadManifest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("artifact manifest {path} is invalid")]
    ParseManifest {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("artifact manifest {path}: artifacts[{index}].sha256 {value:?} is not 64 lowercase hex digits")]
    BadPin {
        path: PathBuf,
        index: usize,
        value: String,
    },
    #[error(
        "artifact {name} ({origin}): SHA-256 mismatch: expected {expected}, actual {actual}; \
         nothing was installed"
    )]
    Digest {
        name: String,
        origin: String,
        expected: String,
        actual: String,
    },
    #[error(
        "artifact {name} ({origin}): truncated download: {got} of {expected_len} bytes \
         (expected SHA-256 {expected}, actual {actual}); nothing was installed"
    )]
    Truncated {
        name: String,
        origin: String,
        got: u64,
        expected_len: u64,
        expected: String,
        actual: String,
    },
    #[error(
        "artifact {name}: cannot fetch {url} (expected SHA-256 {expected}): {reason}. \
         Kubernetes artifacts cannot be downloaded from this machine (dl.k8s.io and github.com \
         are unreachable from our build machines): pass --artifacts-dir DIR with a local mirror \
         holding {file}, or --without-kubernetes to build an image without them"
    )]
    Unreachable {
        name: String,
        url: String,
        expected: String,
        file: String,
        reason: String,
    },
    #[error(
        "artifact {name}: {path} is not in the local mirror given with --artifacts-dir \
         (expected SHA-256 {expected})"
    )]
    NotInMirror {
        name: String,
        path: PathBuf,
        expected: String,
    },
    #[error(
        "artifact {name}: its manifest says it exists only in a local mirror (url mirror:{file}, \
         expected SHA-256 {expected}): pass --artifacts-dir DIR with DIR/{file}"
    )]
    MirrorOnly {
        name: String,
        file: String,
        expected: String,
    },
    #[error("artifact cache: I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self, ArtifactError> {
        let text = std::fs::read_to_string(path).map_err(|source| ArtifactError::ReadManifest {
            path: path.to_path_buf(),
            source,
        })?;
        let m: Manifest =
            serde_yaml_ng::from_str(&text).map_err(|source| ArtifactError::ParseManifest {
                path: path.to_path_buf(),
                source,
            })?;
        for (index, a) in m.artifacts.iter().enumerate() {
            let ok = a.sha256.len() == 64
                && a.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !ok {
                return Err(ArtifactError::BadPin {
                    path: path.to_path_buf(),
                    index,
                    value: a.sha256.clone(),
                });
            }
        }
        Ok(m)
    }
}

impl Artifact {
    /// The file name of an artifact that only a local mirror has (`url: mirror:FILE`).
    pub fn mirror_only(&self) -> Option<&str> {
        self.url.strip_prefix("mirror:")
    }

    /// The file name in the URL, which is also its name in a local mirror.
    pub fn file_name(&self) -> String {
        if let Some(file) = self.mirror_only() {
            return file.to_string();
        }
        self.url
            .rsplit('/')
            .next()
            .unwrap_or(&self.name)
            .to_string()
    }
}

/// Where verified artifacts live, named by their SHA-256.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// Where an artifact may come from when it is not cached yet.
#[derive(Debug, Clone)]
pub enum Source {
    Network,
    Mirror(PathBuf),
}

impl Cache {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join("sha256").join(sha256)
    }

    /// Returns the path of a verified copy of `a`, fetching it first if needed. A cached copy
    /// is re-hashed on every use, so a corrupted cache is caught, not trusted.
    pub fn obtain(
        &self,
        a: &Artifact,
        source: &Source,
        progress: &dyn Fn(&str),
    ) -> Result<PathBuf, ArtifactError> {
        let dest = self.path_of(&a.sha256);
        if dest.exists() {
            let actual = sha256_file(&dest)?;
            if actual != a.sha256 {
                return Err(ArtifactError::Digest {
                    name: a.name.clone(),
                    origin: format!("cached copy {}; delete it to fetch again", dest.display()),
                    expected: a.sha256.clone(),
                    actual,
                });
            }
            return Ok(dest);
        }
        let dir = self.dir.join("sha256");
        std::fs::create_dir_all(&dir).map_err(|source| ArtifactError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(&dir).map_err(|source| ArtifactError::Io {
                path: dir.clone(),
                source,
            })?;
        let (origin, actual, got, expected_len) = match source {
            Source::Mirror(mirror) => {
                let from = mirror.join(a.file_name());
                progress(&format!("artifact {}: copying {}", a.name, from.display()));
                let mut f = File::open(&from).map_err(|_| ArtifactError::NotInMirror {
                    name: a.name.clone(),
                    path: from.clone(),
                    expected: a.sha256.clone(),
                })?;
                let (digest, n) = copy_hashing(&mut f, tmp.as_file_mut(), &from)?;
                (from.display().to_string(), digest, n, None)
            }
            Source::Network if a.mirror_only().is_some() => {
                return Err(ArtifactError::MirrorOnly {
                    name: a.name.clone(),
                    file: a.file_name(),
                    expected: a.sha256.clone(),
                });
            }
            Source::Network => {
                progress(&format!("artifact {}: downloading {}", a.name, a.url));
                let (digest, n, len) = download(a, tmp.as_file_mut())?;
                (a.url.clone(), digest, n, len)
            }
        };
        if let Some(expected_len) = expected_len {
            if got != expected_len {
                return Err(ArtifactError::Truncated {
                    name: a.name.clone(),
                    origin,
                    got,
                    expected_len,
                    expected: a.sha256.clone(),
                    actual,
                });
            }
        }
        if actual != a.sha256 {
            return Err(ArtifactError::Digest {
                name: a.name.clone(),
                origin,
                expected: a.sha256.clone(),
                actual,
            });
        }
        tmp.persist(&dest).map_err(|e| ArtifactError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(dest)
    }
}

fn download(a: &Artifact, out: &mut File) -> Result<(String, u64, Option<u64>), ArtifactError> {
    let unreachable = |reason: String| ArtifactError::Unreachable {
        name: a.name.clone(),
        url: a.url.clone(),
        expected: a.sha256.clone(),
        file: a.file_name(),
        reason,
    };
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| unreachable(format!("{e:#}")))?;
    let mut resp = client
        .get(&a.url)
        .send()
        .map_err(|e| unreachable(error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(unreachable(format!("HTTP status {}", resp.status())));
    }
    let len = resp.content_length();
    // A body cut short by the peer is an I/O error from the reader: report it as truncation.
    let mut hasher = Sha256::new();
    let mut n: u64 = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let k = match resp.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(_) => break,
        };
        hasher.update(&buf[..k]);
        out.write_all(&buf[..k])
            .map_err(|source| ArtifactError::Io {
                path: PathBuf::from("<artifact cache temp file>"),
                source,
            })?;
        n += k as u64;
    }
    Ok((hex::encode(hasher.finalize()), n, len))
}

fn copy_hashing(
    from: &mut File,
    to: &mut File,
    path: &Path,
) -> Result<(String, u64), ArtifactError> {
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let io = |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    };
    loop {
        let k = from.read(&mut buf).map_err(io)?;
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
        to.write_all(&buf[..k]).map_err(io)?;
        n += k as u64;
    }
    Ok((hex::encode(hasher.finalize()), n))
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, ArtifactError> {
    let io = |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let k = f.read(&mut buf).map_err(io)?;
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(sha: &str) -> Artifact {
        Artifact {
            name: "kubelet".into(),
            version: "v1.30.3".into(),
            url: "http://127.0.0.1:9/kubelet".into(),
            origin: None,
            sha256: sha.into(),
            install: Install::Binary {
                path: "/usr/bin/kubelet".into(),
            },
        }
    }

    #[test]
    fn repository_manifest_parses_and_pins_are_hex() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts.yaml");
        let m = Manifest::load(&path).expect("manifest");
        let names: Vec<_> = m.artifacts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            ["kubelet", "kubeadm", "kubectl", "crictl", "cni-plugins"]
        );
    }

    #[test]
    fn mirror_copy_is_verified() {
        let mirror = tempfile::tempdir().expect("tmp");
        let cache_dir = tempfile::tempdir().expect("tmp");
        std::fs::write(mirror.path().join("kubelet"), b"hello").expect("write");
        let good = hex::encode(Sha256::digest(b"hello"));
        let cache = Cache::new(cache_dir.path().to_path_buf());
        let src = Source::Mirror(mirror.path().to_path_buf());
        let p = cache.obtain(&artifact(&good), &src, &|_| {}).expect("ok");
        assert_eq!(std::fs::read(p).expect("read"), b"hello");

        let bad = "0".repeat(64);
        let err = cache
            .obtain(&artifact(&bad), &src, &|_| {})
            .expect_err("mismatch");
        let msg = err.to_string();
        assert!(msg.contains(&bad) && msg.contains(&good), "{msg}");
        assert!(!cache.path_of(&bad).exists());
    }

    #[test]
    fn corrupted_cache_entry_is_caught() {
        let cache_dir = tempfile::tempdir().expect("tmp");
        let cache = Cache::new(cache_dir.path().to_path_buf());
        let good = hex::encode(Sha256::digest(b"hello"));
        std::fs::create_dir_all(cache_dir.path().join("sha256")).expect("mkdir");
        std::fs::write(cache.path_of(&good), b"hellp").expect("write");
        let err = cache
            .obtain(&artifact(&good), &Source::Network, &|_| {})
            .expect_err("tampered");
        assert!(err.to_string().contains("SHA-256 mismatch"), "{err}");
    }

    #[test]
    fn mirror_only_artifacts_come_from_the_mirror_and_name_their_file() {
        let mirror = tempfile::tempdir().expect("tmp");
        let cache_dir = tempfile::tempdir().expect("tmp");
        let cache = Cache::new(cache_dir.path().to_path_buf());
        let good = hex::encode(Sha256::digest(b"built"));
        let mut a = artifact(&good);
        a.url = "mirror:kubelet".into();
        a.origin = Some("built from k8s.io/kubernetes@v1.30.3".into());
        assert_eq!(a.file_name(), "kubelet");

        let err = cache
            .obtain(&a, &Source::Network, &|_| {})
            .expect_err("no network source for a mirror-only artifact");
        assert!(err.to_string().contains("--artifacts-dir"), "{err}");

        let src = Source::Mirror(mirror.path().to_path_buf());
        let err = cache.obtain(&a, &src, &|_| {}).expect_err("not in mirror");
        assert!(err.to_string().contains("kubelet"), "{err}");

        std::fs::write(mirror.path().join("kubelet"), b"built but changed").expect("write");
        let err = cache.obtain(&a, &src, &|_| {}).expect_err("mismatch");
        let msg = err.to_string();
        assert!(
            msg.contains("SHA-256 mismatch") && msg.contains("kubelet"),
            "{msg}"
        );
        assert!(!cache.path_of(&good).exists(), "nothing cached on mismatch");

        std::fs::write(mirror.path().join("kubelet"), b"built").expect("write");
        cache.obtain(&a, &src, &|_| {}).expect("verified copy");
    }
}
