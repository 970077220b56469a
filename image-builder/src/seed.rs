//! The `seed` command: one cluster description (`cluster.yaml`) in, one node's NoCloud seed out
//! (`user-data`, `meta-data`, optional `network-config`, as a directory or a `cidata` ISO made
//! with xorriso). The user-data comes from the templates in `cloud-init/`, compiled in, with
//! every placeholder replaced by a value validated here first, so nothing a user writes can
//! change the YAML's structure. Errors name the field (`nodes[2].address`); the cluster secret
//! is read, base64-encoded into the seed, and never printed.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cmd::{Cmd, CmdError};

pub const CONTROL_PLANE_TEMPLATE: &str =
    include_str!("../../cloud-init/user-data.control-plane.yaml");
pub const WORKER_TEMPLATE: &str = include_str!("../../cloud-init/user-data.worker.yaml");

/// `cluster.yaml`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSeed {
    pub api_version: String,
    pub kind: String,
    /// DNS label.
    pub name: String,
    /// File holding the cluster secret (≥ 32 bytes), relative to cluster.yaml.
    pub secret_file: PathBuf,
    /// `none` (default), `hetzner` or `lab`.
    #[serde(default = "default_provider")]
    pub provider: String,
    /// Same-L2 multicast discovery (datacenter PXE installs). Default false.
    #[serde(default)]
    pub multicast: bool,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    #[serde(default)]
    pub network: Option<NetworkDefaults>,
    pub nodes: Vec<NodeSeed>,
    /// The doctor on the control planes (docs/doctor.md); off when absent.
    #[serde(default)]
    pub doctor: Option<crate::seed_doctor::DoctorSeed>,
}

fn default_provider() -> String {
    "none".into()
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkDefaults {
    /// Prefix length of node addresses. Default 24.
    #[serde(default = "default_prefix")]
    pub prefix_length: u8,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub nameservers: Vec<Ipv4Addr>,
}

fn default_prefix() -> u8 {
    24
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSeed {
    pub name: String,
    /// `control-plane` or `worker`.
    pub role: String,
    /// Static IPv4 address; without it the node uses DHCP and gets no network-config.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// The MAC of the NIC the machine PXE-boots from (`52:54:00:12:34:56`); names its seed
    /// directory in a PXE seed layout (`kubedna-image seed --pxe-dir`, crate::seed_pxe).
    #[serde(default)]
    pub mac: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {field}: {message}")]
    Parse {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: nodes: no node named {node:?} (nodes: {known})")]
    NoSuchNode {
        path: PathBuf,
        node: String,
        known: String,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cmd(#[from] CmdError),
}

/// A rendered seed, file name → content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub files: Vec<(String, String)>,
}

/// Parses and validates `cluster.yaml`.
pub fn load_cluster(path: &Path) -> Result<ClusterSeed, SeedError> {
    let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let de = serde_yaml_ng::Deserializer::from_str(&text);
    let c: ClusterSeed = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        SeedError::Parse {
            path: path.to_path_buf(),
            field: if field == "." {
                "(document)".into()
            } else {
                field
            },
            message: e.into_inner().to_string(),
        }
    })?;
    validate(&c, path)?;
    Ok(c)
}

fn validate(c: &ClusterSeed, path: &Path) -> Result<(), SeedError> {
    let bad = |field: &str, message: String| SeedError::Invalid {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    };
    if c.api_version != "kubedna.io/v1alpha1" {
        return Err(bad(
            "apiVersion",
            format!("must be kubedna.io/v1alpha1, got {:?}", c.api_version),
        ));
    }
    if c.kind != "ClusterSeed" {
        return Err(bad(
            "kind",
            format!("must be ClusterSeed, got {:?}", c.kind),
        ));
    }
    if !is_dns_label(&c.name) {
        return Err(bad(
            "name",
            format!(
                "{:?} is not a DNS label (1-63 of a-z0-9-, alphanumeric at both ends)",
                c.name
            ),
        ));
    }
    if !matches!(c.provider.as_str(), "none" | "hetzner" | "lab") {
        return Err(bad(
            "provider",
            format!("must be none, hetzner or lab, got {:?}", c.provider),
        ));
    }
    for (i, k) in c.ssh_authorized_keys.iter().enumerate() {
        let ok = k.starts_with("ssh-") || k.starts_with("ecdsa-") || k.starts_with("sk-");
        if !ok || k.contains('\n') {
            return Err(bad(
                &format!("sshAuthorizedKeys[{i}]"),
                "must be one OpenSSH public key line (ssh-ed25519 AAAA...)".into(),
            ));
        }
    }
    if let Some(n) = &c.network {
        if n.prefix_length == 0 || n.prefix_length > 32 {
            return Err(bad(
                "network.prefixLength",
                format!("must be 1-32, got {}", n.prefix_length),
            ));
        }
    }
    if let Some(d) = &c.doctor {
        crate::seed_doctor::validate(d, &c.provider).map_err(|(f, m)| bad(&f, m))?;
    }
    if c.nodes.is_empty() {
        return Err(bad("nodes", "at least one node is required".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, n) in c.nodes.iter().enumerate() {
        if !is_dns_label(&n.name) {
            return Err(bad(
                &format!("nodes[{i}].name"),
                format!("{:?} is not a DNS label", n.name),
            ));
        }
        if !seen.insert(n.name.as_str()) {
            return Err(bad(
                &format!("nodes[{i}].name"),
                format!("{:?} appears twice", n.name),
            ));
        }
        if !matches!(n.role.as_str(), "control-plane" | "worker") {
            return Err(bad(
                &format!("nodes[{i}].role"),
                format!("must be control-plane or worker, got {:?}", n.role),
            ));
        }
    }
    crate::seed_pxe::validate_macs(c).map_err(|(f, m)| bad(&f, m))?;
    let control_planes = c.nodes.iter().filter(|n| n.role == "control-plane").count();
    if ![1, 3, 5, 7].contains(&control_planes) {
        return Err(bad(
            "nodes",
            format!(
                "{control_planes} nodes have role control-plane; use 1, 3, 5 or 7 (an odd \
                 number keeps an etcd majority after one loss)"
            ),
        ));
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Renders the seed of `node` from `cluster` (read from `cluster_path`, which anchors
/// `secretFile`).
pub fn render(cluster: &ClusterSeed, cluster_path: &Path, node: &str) -> Result<Seed, SeedError> {
    let Some(n) = cluster.nodes.iter().find(|n| n.name == node) else {
        return Err(SeedError::NoSuchNode {
            path: cluster_path.to_path_buf(),
            node: node.to_string(),
            known: cluster
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let secret_path = cluster_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(&cluster.secret_file);
    let secret = std::fs::read(&secret_path).map_err(|source| SeedError::Read {
        path: secret_path.clone(),
        source,
    })?;
    if secret.len() < 32 {
        return Err(SeedError::Invalid {
            path: cluster_path.to_path_buf(),
            field: "secretFile".into(),
            message: format!(
                "{} holds {} bytes; the cluster secret needs at least 32",
                secret_path.display(),
                secret.len()
            ),
        });
    }
    let token = match &cluster.doctor {
        Some(d) if n.role == "control-plane" => Some(
            crate::seed_doctor::read_token(d, cluster_path).map_err(|(field, message)| {
                SeedError::Invalid {
                    path: cluster_path.to_path_buf(),
                    field,
                    message,
                }
            })?,
        ),
        _ => None,
    };
    let user_data =
        render_user_data(cluster, n, &secret, token.as_deref(), true).map_err(|message| {
            SeedError::Invalid {
                path: cluster_path.to_path_buf(),
                field: "doctor".into(),
                message,
            }
        })?;
    let digest = hex::encode(Sha256::digest(user_data.as_bytes()));
    let meta_data = format!(
        "instance-id: iid-kubedna-{}-{}-{}\nlocal-hostname: {}\n",
        cluster.name,
        n.name,
        &digest[..12],
        n.name
    );
    let mut files = vec![
        ("user-data".to_string(), user_data),
        ("meta-data".to_string(), meta_data),
    ];
    if let Some(addr) = n.address {
        let net = cluster.network.clone().unwrap_or(NetworkDefaults {
            prefix_length: 24,
            gateway: None,
            nameservers: Vec::new(),
        });
        // Validated with the cluster (`seed_pxe::validate_macs`).
        let mac = n
            .mac
            .as_deref()
            .and_then(|m| crate::seed_pxe::Mac::parse(m).ok());
        files.push((
            "network-config".to_string(),
            network_config(addr, mac, &net),
        ));
    }
    Ok(Seed { files })
}

/// The network-config (v2) giving a node its static address. A node that names its NIC's MAC
/// gets that NIC matched by `macaddress`, which every cloud-init renderer honours; without a
/// MAC it falls back to `name: "e*"`, which netplan (Ubuntu) honours but cloud-init 22.4's
/// ifupdown renderer (Debian 12) ignores, naming the interface after the key instead.
pub(crate) fn network_config(
    addr: Ipv4Addr,
    mac: Option<crate::seed_pxe::Mac>,
    net: &NetworkDefaults,
) -> String {
    let matched = match mac {
        Some(m) => format!("macaddress: \"{}\"", m.colon()),
        None => "name: \"e*\"".to_string(),
    };
    let mut nc = format!(
        "version: 2\nethernets:\n  primary:\n    match:\n      {matched}\n    \
         addresses: [{addr}/{}]\n",
        net.prefix_length
    );
    if let Some(gw) = net.gateway {
        // `0.0.0.0/0`, not `default`: cloud-init 22.4 (Debian 12) refuses "default" as an
        // address and then applies no network config at all (found by the lab's qemu nodes).
        nc.push_str(&format!(
            "    routes:\n      - to: 0.0.0.0/0\n        via: {gw}\n"
        ));
    }
    if !net.nameservers.is_empty() {
        let ns: Vec<String> = net.nameservers.iter().map(|a| a.to_string()).collect();
        nc.push_str(&format!(
            "    nameservers:\n      addresses: [{}]\n",
            ns.join(", ")
        ));
    }
    nc
}

/// The user-data of node `n`. A control plane of a cluster with `doctor:` also gets the
/// provider token and, with `templates`, the two role templates: the user-data of a node of
/// each role named `{{node_name}}`, rendered the same way without templates of their own (the
/// doctor adds them to a control plane's replacement seed, `kubedna_doctor::seeds`).
fn render_user_data(
    cluster: &ClusterSeed,
    n: &NodeSeed,
    secret: &[u8],
    token: Option<&[u8]>,
    templates: bool,
) -> Result<String, String> {
    // Discovery seeds: every control-plane node with a static address other than this one.
    let seeds: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|o| o.role == "control-plane" && o.name != n.name)
        .filter_map(|o| o.address.map(|a| a.to_string()))
        .collect();
    let control_plane_members: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|o| o.role == "control-plane")
        .map(|o| o.name.clone())
        .collect();
    let template = if n.role == "control-plane" {
        CONTROL_PLANE_TEMPLATE
    } else {
        WORKER_TEMPLATE
    };
    let json_list = |v: &[String]| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
    // cloud-init's schema refuses an empty key list: no keys, no line.
    let keys_line = "ssh_authorized_keys: [\"{{ssh_authorized_keys}}\"]\n";
    let template = if cluster.ssh_authorized_keys.is_empty() {
        template.replace(keys_line, "")
    } else {
        template.replace(
            keys_line,
            &format!(
                "ssh_authorized_keys: {}\n",
                json_list(&cluster.ssh_authorized_keys)
            ),
        )
    };
    let mut user_data = template
        .replace("[\"{{seeds}}\"]", &json_list(&seeds))
        .replace(
            "[\"{{control_plane_members}}\"]",
            &json_list(&control_plane_members),
        )
        .replace(
            "\"{{control_plane_count}}\"",
            &control_plane_members.len().to_string(),
        )
        .replace("\"{{multicast}}\"", &cluster.multicast.to_string())
        .replace("{{node_name}}", &n.name)
        .replace("{{cluster_name}}", &cluster.name)
        .replace("{{provider}}", &cluster.provider)
        .replace("{{cluster_secret_b64}}", &base64(secret));
    let (Some(doctor), Some(token), true) = (&cluster.doctor, token, n.role == "control-plane")
    else {
        return Ok(user_data);
    };
    let kind_line = format!("        kind: \"{}\"\n", cluster.provider);
    user_data = user_data.replacen(
        &kind_line,
        &format!(
            "{kind_line}{}",
            crate::seed_doctor::agent_yaml(doctor, &cluster.provider, &cluster.name)
        ),
        1,
    );
    let mut files = vec![(crate::seed_doctor::TOKEN_PATH.to_string(), token.to_vec())];
    if templates {
        for role in ["control-plane", "worker"] {
            let generic = NodeSeed {
                name: "{{node_name}}".into(),
                role: role.into(),
                address: None,
                mac: None,
            };
            let t = render_user_data(cluster, &generic, secret, Some(token), false)?;
            files.push((
                format!(
                    "{}/user-data.{role}.tmpl",
                    kubedna_doctor::seeds::TEMPLATE_DIR
                ),
                t.into_bytes(),
            ));
        }
    }
    kubedna_doctor::seeds::embed_files(&user_data, &files)
}

/// Writes the seed files into `dir` (user-data mode 0600: it carries the secret).
pub fn write_dir(seed: &Seed, dir: &Path) -> Result<(), SeedError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|source| SeedError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    for (name, content) in &seed.files {
        let p = dir.join(name);
        std::fs::write(&p, content).map_err(|source| SeedError::Write {
            path: p.clone(),
            source,
        })?;
        let mode = if name == "user-data" { 0o600 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(|source| {
            SeedError::Write {
                path: p.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

/// Writes the seed as an ISO 9660 volume labelled `cidata` (xorriso, never mounted).
pub fn write_iso(seed: &Seed, iso: &Path, epoch: Option<u64>) -> Result<(), SeedError> {
    let parent = iso
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::tempdir_in(parent).map_err(|source| SeedError::Write {
        path: parent.to_path_buf(),
        source,
    })?;
    let files_dir = tmp.path().join("seed");
    write_dir(seed, &files_dir)?;
    let partial = tmp.path().join("seed.iso");
    let mut cmd = Cmd::new("xorriso")
        .args([
            "-as",
            "genisoimage",
            "-quiet",
            "-volid",
            "cidata",
            "-joliet",
            "-rock",
        ])
        .arg("-output")
        .arg(&partial);
    for (name, _) in &seed.files {
        cmd = cmd.arg(files_dir.join(name));
    }
    if let Some(e) = epoch {
        cmd = cmd.env("SOURCE_DATE_EPOCH", e.to_string());
    }
    cmd.run()?;
    std::fs::rename(&partial, iso).map_err(|source| SeedError::Write {
        path: iso.to_path_buf(),
        source,
    })?;
    Ok(())
}

use kubedna_doctor::seeds::base64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("cp-1"));
        assert!(!is_dns_label("CP"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(""));
    }

    #[test]
    fn network_config_matches_the_nic_by_mac_when_the_node_names_one() {
        let mac = crate::seed_pxe::Mac::parse("52-54-00-64-00-0C").ok();
        let net = |gateway: Option<&str>| NetworkDefaults {
            prefix_length: 24,
            gateway: gateway.map(|g| g.parse().expect("gw")),
            nameservers: Vec::new(),
        };
        let addr = "198.18.0.20".parse().expect("addr");
        // (mac, gateway, wanted match line, route wanted)
        let table = [
            (mac, None, "macaddress: \"52:54:00:64:00:0c\"", false),
            (None, None, "name: \"e*\"", false),
            (
                mac,
                Some("198.18.0.1"),
                "macaddress: \"52:54:00:64:00:0c\"",
                true,
            ),
        ];
        for (mac, gw, wanted, route) in table {
            let nc = network_config(addr, mac, &net(gw));
            let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&nc).expect(&nc);
            assert!(nc.contains(wanted), "{nc}");
            assert_eq!(v["ethernets"]["primary"]["addresses"][0], "198.18.0.20/24");
            assert_eq!(
                v["ethernets"]["primary"]["routes"][0]["via"].as_str(),
                route.then_some("198.18.0.1"),
                "{nc}"
            );
        }
    }
}
