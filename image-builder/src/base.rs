//! The distribution bases an image can start from: suite, mirror, components, keyring and the
//! package set per base, and where the Debian mirror comes from (the host's own apt sources,
//! never a hard-coded URL). This module decides nothing about files layered on top.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Packages every base carries, by the list. Base-specific ones are added per base.
const COMMON_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "udev",
    "cloud-init",
    "cloud-guest-utils",
    "containerd",
    "runc",
    "etcd-server",
    "iptables",
    "conntrack",
    "socat",
    "ethtool",
    "ebtables",
    "iproute2",
    "apt",
    "unattended-upgrades",
    "openssh-server",
    "systemd-boot-efi",
    "initramfs-tools",
    "e2fsprogs",
    "fdisk",
    "ca-certificates",
    "kmod",
    "procps",
    "util-linux",
    "mount",
    "netbase",
    "sudo",
    "zstd",
    "locales",
];

/// Which distribution the image starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseName {
    Debian12,
    Ubuntu2404,
}

impl FromStr for BaseName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "debian-12" => Ok(Self::Debian12),
            "ubuntu-24.04" => Ok(Self::Ubuntu2404),
            other => Err(format!(
                "unknown base {other:?}: expected debian-12 or ubuntu-24.04"
            )),
        }
    }
}

impl fmt::Display for BaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Debian12 => "debian-12",
            Self::Ubuntu2404 => "ubuntu-24.04",
        })
    }
}

/// Everything mmdebstrap needs to know about a base.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BaseSpec {
    pub name: String,
    pub suite: String,
    /// One apt source line per entry (`deb URL SUITE COMPONENTS`).
    pub sources: Vec<String>,
    pub keyring: PathBuf,
    pub packages: Vec<String>,
    /// How the PXE initrd finds its root squashfs (live-boot on Debian, casper on Ubuntu).
    pub pxe_boot_args: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("cannot read apt sources {path}")]
    ReadSources {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no Debian mirror configured on this host: none of {searched} has a `deb` source for \
         suite bookworm; add the mirror you use to /etc/apt/sources.list.d/ and retry"
    )]
    NoHostMirror { searched: String },
    #[error(
        "the ubuntu-24.04 base needs the Ubuntu archive ({mirror}) and its keyring {keyring}; \
         the keyring is not installed on this machine and the archive is not reachable from our \
         build machines. Build with --base debian-12 here, or build the Ubuntu image with the \
         templates in packer/"
    )]
    UbuntuUnavailable { mirror: String, keyring: PathBuf },
}

pub const UBUNTU_MIRROR: &str = "http://archive.ubuntu.com/ubuntu";
pub const UBUNTU_KEYRING: &str = "/usr/share/keyrings/ubuntu-archive-keyring.gpg";
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Resolves a base against the host: Debian takes its mirrors from `apt_dir`
/// (normally `/etc/apt`), Ubuntu checks that its keyring exists.
pub fn resolve(name: BaseName, apt_dir: &Path) -> Result<BaseSpec, BaseError> {
    match name {
        BaseName::Debian12 => {
            let mirrors = host_debian_mirrors(apt_dir)?;
            let mut sources = Vec::new();
            if let Some(m) = &mirrors.main {
                sources.push(format!("deb {m} bookworm main"));
                sources.push(format!("deb {m} bookworm-updates main"));
            }
            if let Some(s) = &mirrors.security {
                sources.push(format!("deb {s} bookworm-security main"));
            }
            let mut packages: Vec<String> = COMMON_PACKAGES.iter().map(|s| s.to_string()).collect();
            packages.extend(
                [
                    "linux-image-amd64",
                    "live-boot",
                    "ifupdown",
                    "isc-dhcp-client",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            packages.sort();
            Ok(BaseSpec {
                name: name.to_string(),
                suite: "bookworm".into(),
                sources,
                keyring: DEBIAN_KEYRING.into(),
                packages,
                pxe_boot_args: "boot=live components fetch=${base-url}/root.squashfs".into(),
            })
        }
        BaseName::Ubuntu2404 => {
            let keyring = PathBuf::from(UBUNTU_KEYRING);
            if !keyring.exists() {
                return Err(BaseError::UbuntuUnavailable {
                    mirror: UBUNTU_MIRROR.into(),
                    keyring,
                });
            }
            let mut packages: Vec<String> = COMMON_PACKAGES.iter().map(|s| s.to_string()).collect();
            packages.extend(
                ["linux-image-generic", "casper", "netplan.io"]
                    .iter()
                    .map(|s| s.to_string()),
            );
            packages.sort();
            Ok(BaseSpec {
                name: name.to_string(),
                suite: "noble".into(),
                sources: ["noble", "noble-updates", "noble-security"]
                    .iter()
                    .map(|s| format!("deb {UBUNTU_MIRROR} {s} main universe"))
                    .collect(),
                keyring,
                packages,
                pxe_boot_args: "boot=casper url=${base-url}/root.squashfs".into(),
            })
        }
    }
}

/// The Debian mirrors the host's apt is configured with.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HostMirrors {
    pub main: Option<String>,
    pub security: Option<String>,
}

/// Reads `sources.list` and `sources.list.d/*.list|*.sources` (one-line and deb822 formats)
/// and picks the first `deb` URI serving `bookworm` and the first serving `bookworm-security`.
pub fn host_debian_mirrors(apt_dir: &Path) -> Result<HostMirrors, BaseError> {
    let mut files = vec![apt_dir.join("sources.list")];
    let d = apt_dir.join("sources.list.d");
    if let Ok(rd) = std::fs::read_dir(&d) {
        let mut more: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("list") | Some("sources")
                )
            })
            .collect();
        more.sort();
        files.extend(more);
    }
    let mut found = HostMirrors::default();
    for f in &files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(BaseError::ReadSources {
                    path: f.clone(),
                    source,
                })
            }
        };
        let entries = if f.extension().and_then(|e| e.to_str()) == Some("sources") {
            parse_deb822(&text)
        } else {
            parse_one_line(&text)
        };
        for (uri, suite) in entries {
            let uri = uri.trim_end_matches('/').to_string();
            if suite == "bookworm" && found.main.is_none() {
                found.main = Some(uri);
            } else if suite == "bookworm-security" && found.security.is_none() {
                found.security = Some(uri);
            }
        }
    }
    if found.main.is_none() {
        return Err(BaseError::NoHostMirror {
            searched: files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(found)
}

/// `deb [opts] URI SUITE COMPONENT...` lines → (URI, SUITE).
fn parse_one_line(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            // Options may span several words: drop through the closing bracket.
            let end = rest.iter().position(|w| w.ends_with(']')).unwrap_or(0);
            rest.drain(..=end);
        }
        if let [uri, suite, ..] = rest.as_slice() {
            out.push((uri.to_string(), suite.to_string()));
        }
    }
    out
}

/// deb822 stanzas with `Types: deb`, `URIs:` and `Suites:` → (URI, SUITE) pairs.
fn parse_deb822(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut types = Vec::new();
        let mut uris = Vec::new();
        let mut suites = Vec::new();
        let mut enabled = true;
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let values: Vec<String> = value.split_whitespace().map(str::to_string).collect();
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => types = values,
                "uris" => uris = values,
                "suites" => suites = values,
                "enabled" => enabled = value.trim() != "no",
                _ => {}
            }
        }
        if !enabled || !types.iter().any(|t| t == "deb") {
            continue;
        }
        for u in &uris {
            for s in &suites {
                out.push((u.clone(), s.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_deb822_and_one_line_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sources.list.d")).expect("mkdir");
        std::fs::write(
            dir.path().join("sources.list.d/debian.sources"),
            "Types: deb\n# comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n\
             Components: main\n\nTypes: deb\nURIs: http://sec.example/debian-security\n\
             Suites: bookworm-security\nComponents: main\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("sources.list.d/other.list"),
            "deb [arch=amd64 signed-by=/x] https://elsewhere.example/apt bookworm main\n",
        )
        .expect("write");
        let m = host_debian_mirrors(dir.path()).expect("mirrors");
        assert_eq!(m.main.as_deref(), Some("http://mirror.example/debian"));
        assert_eq!(
            m.security.as_deref(),
            Some("http://sec.example/debian-security")
        );
    }

    #[test]
    fn one_line_with_options() {
        let v = parse_one_line("deb [ arch=amd64 ] http://m/debian bookworm main # x\n");
        assert_eq!(v, vec![("http://m/debian".into(), "bookworm".into())]);
    }

    #[test]
    fn no_mirror_is_a_plain_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = host_debian_mirrors(dir.path()).expect_err("no sources");
        assert!(err.to_string().contains("no Debian mirror configured"));
    }

    #[test]
    fn ubuntu_base_is_defined_but_says_why_it_cannot_be_built() {
        if Path::new(UBUNTU_KEYRING).exists() {
            return;
        }
        let err = resolve(BaseName::Ubuntu2404, Path::new("/etc/apt")).expect_err("no keyring");
        let msg = err.to_string();
        assert!(
            msg.contains(UBUNTU_MIRROR) && msg.contains("not reachable"),
            "{msg}"
        );
    }
}
