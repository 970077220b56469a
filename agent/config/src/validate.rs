//! Validation of a parsed `agent.yaml` ([`crate::spec`]): every value checked, the secret read,
//! user and group names resolved, into a [`Config`] or the first error with its field path and
//! what to do.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::rbac::{RbacMap, RoleSubjects};
use crate::spec::*;
use crate::{Config, ConfigError, Secret, API_VERSION, KIND};

/// Checks every value of `spec`, reads the secret and resolves names.
pub(crate) fn validate(file: &Path, mut spec: AgentConfig) -> Result<Config, ConfigError> {
    let invalid = |field: &str, message: String| ConfigError::Invalid {
        file: file.to_path_buf(),
        field: field.to_string(),
        message,
    };
    let base = file.parent().unwrap_or(Path::new("/"));
    let absolute = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };

    if spec.api_version != API_VERSION {
        return Err(invalid(
            "apiVersion",
            format!(
                "{:?} is not supported: use {API_VERSION:?}",
                spec.api_version
            ),
        ));
    }
    if spec.kind != KIND {
        return Err(invalid(
            "kind",
            format!("{:?} is not supported: use {KIND:?}", spec.kind),
        ));
    }
    if let Some(addr) = spec.metrics.listen {
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(invalid(
                "metrics.listen",
                format!(
                    "{addr} is not a listen address for metrics: give one of this node's own \
                     addresses and a port (such as 198.18.0.2:{DEFAULT_METRICS_PORT}), or leave \
                     it out to use the node's mesh address"
                ),
            ));
        }
    }
    if let Some(c) = &spec.catalogue {
        if let Some(bad) = c.optional.iter().find(|n| !is_dns_label(n)) {
            return Err(invalid(
                "catalogue.optional",
                format!("{bad:?} is not a component name (a DNS label: a-z, 0-9, -)"),
            ));
        }
        if c.interval_seconds == 0 || c.health_timeout_seconds == 0 {
            return Err(invalid(
                "catalogue",
                "intervalSeconds and healthTimeoutSeconds must be at least 1".into(),
            ));
        }
    }
    if !is_dns_label(&spec.cluster.name) {
        return Err(invalid(
            "cluster.name",
            format!(
                "{:?} is not a DNS label: use 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit",
                spec.cluster.name
            ),
        ));
    }

    if !(1..=604_800).contains(&spec.cluster.secret_grace_seconds) {
        return Err(invalid(
            "cluster.secretGraceSeconds",
            format!(
                "{} is out of range: use 1 to 604800 seconds (default {DEFAULT_SECRET_GRACE_SECONDS})",
                spec.cluster.secret_grace_seconds
            ),
        ));
    }

    if let Some(cp) = &spec.cluster.control_planes {
        if ![1, 3, 5, 7].contains(&cp.expected) {
            return Err(invalid(
                "cluster.controlPlanes.expected",
                format!("{} is not a supported control-plane count: use 1, 3, 5 or 7 (an odd number keeps a majority after one loss)", cp.expected),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, m) in cp.members.iter().enumerate() {
            if !is_node_name(m) {
                return Err(invalid(
                    &format!("cluster.controlPlanes.members[{i}]"),
                    format!("{m:?} is not a valid node name"),
                ));
            }
            if !seen.insert(m) {
                return Err(invalid(
                    &format!("cluster.controlPlanes.members[{i}]"),
                    format!("{m:?} is listed twice"),
                ));
            }
        }
        if !cp.members.is_empty() && cp.members.len() != cp.expected as usize {
            return Err(invalid(
                "cluster.controlPlanes.members",
                format!(
                    "{} names listed but expected is {}: list every control plane, or none",
                    cp.members.len(),
                    cp.expected
                ),
            ));
        }
    }

    let cluster_secret = match (&spec.cluster.secret_file, &spec.cluster.secret) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "cluster",
                "both `secretFile` and `secret` are set: keep exactly one (prefer secretFile)"
                    .into(),
            ))
        }
        (None, None) => {
            return Err(invalid(
                "cluster",
                "the cluster secret is missing: set `secretFile` (a mode 0600 file) or `secret`"
                    .into(),
            ))
        }
        (Some(path), None) => {
            let path = absolute(path);
            spec.cluster.secret_file = Some(path.clone());
            let bytes = read_private_file(&path).map_err(|m| invalid("cluster.secretFile", m))?;
            // The inline secret's length was checked when it was parsed.
            Secret::new(bytes).map_err(|e| invalid("cluster.secretFile", e.to_string()))?
        }
        (None, Some(inline)) => inline.clone(),
    };

    let node_name = match &spec.node.name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
    };
    if !is_node_name(&node_name) {
        return Err(invalid(
            "node.name",
            format!(
                "{node_name:?} is not a valid node name: use 1-253 characters of a-z, 0-9, '-' and '.', starting and ending with a letter or digit{}",
                if spec.node.name.is_none() { " (it came from the host name; set node.name)" } else { "" }
            ),
        ));
    }

    if spec.discovery.port == 0 {
        return Err(invalid(
            "discovery.port",
            "0 is not a port: use 1-65535".into(),
        ));
    }
    for (i, seed) in spec.discovery.seeds.iter().enumerate() {
        check_seed(seed).map_err(|m| invalid(&format!("discovery.seeds[{i}]"), m))?;
    }
    if !spec.discovery.multicast.group.is_multicast() {
        return Err(invalid(
            "discovery.multicast.group",
            format!(
                "{} is not an IPv4 multicast address: use one in 224.0.0.0/4, e.g. 239.255.77.46",
                spec.discovery.multicast.group
            ),
        ));
    }
    if spec.discovery.multicast.port == 0 {
        return Err(invalid(
            "discovery.multicast.port",
            "0 is not a port: use 1-65535".into(),
        ));
    }

    if !(1..=60).contains(&spec.mesh.pause_tolerance_seconds) {
        return Err(invalid(
            "mesh.pauseToleranceSeconds",
            format!(
                "{} is out of range: use 1 to 60 seconds (default {DEFAULT_PAUSE_TOLERANCE_SECONDS}; a crash is seen down only after it)",
                spec.mesh.pause_tolerance_seconds
            ),
        ));
    }

    match spec.provider.kind {
        ProviderKind::None | ProviderKind::Lab => {
            if spec.provider.hetzner.is_some() {
                return Err(invalid(
                    "provider.hetzner",
                    "set only when provider.kind is hetzner".into(),
                ));
            }
        }
        ProviderKind::Hetzner => {
            let Some(h) = spec.provider.hetzner.as_mut() else {
                return Err(invalid(
                    "provider.hetzner",
                    "required when provider.kind is hetzner (at least tokenFile)".into(),
                ));
            };
            h.token_file = absolute(&h.token_file);
            read_private_file(&h.token_file)
                .map_err(|m| invalid("provider.hetzner.tokenFile", m))?;
        }
    }
    if let Some(lab) = spec.provider.lab.as_mut() {
        match (&lab.hcloud_api, &lab.token_file) {
            (None, None) => {}
            (Some(url), Some(token)) => {
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || !url.trim_end_matches('/').ends_with("/v1")
                {
                    return Err(invalid(
                        "provider.lab.hcloudApi",
                        format!("{url:?} is not an API base URL: use http://<lab gateway>:<port>/v1 as `kubedna-lab hcloud-api` prints it"),
                    ));
                }
                let token = absolute(token);
                read_private_file(&token).map_err(|m| invalid("provider.lab.tokenFile", m))?;
                lab.token_file = Some(token);
            }
            _ => {
                return Err(invalid(
                    "provider.lab",
                    "hcloudApi and tokenFile go together: set both or neither".into(),
                ))
            }
        }
    }
    if spec.provider.kind != ProviderKind::Lab && spec.provider.lab.is_some() {
        return Err(invalid(
            "provider.lab",
            "set only when provider.kind is lab".into(),
        ));
    }
    if spec.discovery.provider && spec.provider.kind == ProviderKind::None {
        return Err(invalid(
            "discovery.provider",
            "needs a provider: set provider.kind to hetzner or lab, or set this to false".into(),
        ));
    }

    crate::kubernetes::check(&spec.kubernetes).map_err(|(f, m)| invalid(f, m))?;
    crate::doctor::check(&spec).map_err(|(f, m)| invalid(f, m))?;

    let rbac = RbacMap {
        admin: resolve_subjects(&spec.rbac.admins, "rbac.admins")
            .map_err(|(f, m)| invalid(&f, m))?,
        operator: resolve_subjects(&spec.rbac.operators, "rbac.operators")
            .map_err(|(f, m)| invalid(&f, m))?,
        viewer: resolve_subjects(&spec.rbac.viewers, "rbac.viewers")
            .map_err(|(f, m)| invalid(&f, m))?,
    };

    spec.admin.socket = absolute(&spec.admin.socket);
    let socket_mode = u32::from_str_radix(spec.admin.socket_mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            invalid(
                "admin.socketMode",
                format!(
                    "{:?} is not an octal file mode: use e.g. \"0660\" (owner and group) or \"0666\"",
                    spec.admin.socket_mode
                ),
            )
        })?;
    if socket_mode & 0o600 != 0o600 {
        return Err(invalid(
            "admin.socketMode",
            format!(
                "{:?} locks the agent's own user out: keep the owner's rw bits (0600)",
                spec.admin.socket_mode
            ),
        ));
    }
    let socket_gid = match &spec.admin.socket_group {
        None => None,
        Some(g) => Some(resolve_group(g).map_err(|m| invalid("admin.socketGroup", m))?),
    };
    if spec.admin.drain_timeout_seconds == 0 || spec.admin.drain_timeout_seconds > 300 {
        return Err(invalid(
            "admin.drainTimeoutSeconds",
            format!(
                "{} is out of range: use 1 to 300",
                spec.admin.drain_timeout_seconds
            ),
        ));
    }

    spec.state.dir = absolute(&spec.state.dir);
    spec.state.runtime_dir = absolute(&spec.state.runtime_dir);
    if let Some(d) = &spec.audit.dir {
        spec.audit.dir = Some(absolute(d));
    }
    if !(1..=3650).contains(&spec.audit.retention_days) {
        return Err(invalid(
            "audit.retentionDays",
            format!(
                "{} is out of range: use 1 to 3650 (default 365)",
                spec.audit.retention_days
            ),
        ));
    }
    if !is_log_filter(&spec.log.level) {
        return Err(invalid(
            "log.level",
            format!(
                "{:?} is not a log filter: use error, warn, info, debug or trace, optionally with target=level directives separated by commas",
                spec.log.level
            ),
        ));
    }

    Ok(Config {
        file: file.to_path_buf(),
        spec,
        node_name,
        cluster_secret,
        rbac,
        socket_gid,
        socket_mode,
    })
}

/// Reads a file that must not be readable by group or others; trims one trailing newline.
fn read_private_file(path: &Path) -> Result<Vec<u8>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} has mode {mode:04o}: it holds a secret and must be mode 0600 (run `chmod 600 {}`)",
            path.display(),
            path.display()
        ));
    }
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(bytes)
}

fn resolve_subjects(s: &SubjectsSpec, at: &str) -> Result<RoleSubjects, (String, String)> {
    let mut out = RoleSubjects {
        uids: s.uids.iter().copied().collect(),
        gids: s.gids.iter().copied().collect(),
    };
    for (i, name) in s.users.iter().enumerate() {
        let user = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| {
                (
                    format!("{at}.users[{i}]"),
                    format!("user {name:?} does not exist on this host: create it, or list its uid under uids"),
                )
            })?;
        out.uids.insert(user.uid.as_raw());
    }
    for (i, name) in s.groups.iter().enumerate() {
        let gid = resolve_group(name).map_err(|m| (format!("{at}.groups[{i}]"), m))?;
        out.gids.insert(gid);
    }
    Ok(out)
}

fn resolve_group(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
        .ok_or_else(|| {
            format!("group {name:?} does not exist on this host: create it (groupadd {name}) or give a numeric gid")
        })
}

fn check_seed(seed: &str) -> Result<(), String> {
    let bad = || {
        format!("{seed:?} is not a seed: use host or host:port, e.g. 198.18.0.11:7946 or cp-1.example.net")
    };
    let (host, port) = match seed.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => (h, Some(p)),
        _ => (seed, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().ok().filter(|p| *p != 0).is_none() {
            return Err(bad());
        }
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    if host.parse::<std::net::IpAddr>().is_ok() || host.split('.').all(is_dns_label_ci) {
        Ok(())
    } else {
        Err(bad())
    }
}

pub(crate) fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_label_ci(s: &str) -> bool {
    is_dns_label(&s.to_ascii_lowercase())
}

fn is_node_name(s: &str) -> bool {
    (1..=253).contains(&s.len()) && s.split('.').all(is_dns_label)
}

fn is_log_filter(s: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    !s.is_empty()
        && s.split(',').all(|d| {
            let level = d.rsplit_once('=').map_or(
                d,
                |(target, level)| {
                    if target.is_empty() {
                        ""
                    } else {
                        level
                    }
                },
            );
            LEVELS.contains(&level.trim())
        })
}
