//! The doctor's part of a cluster description (`doctor:` in `cluster.yaml`, docs/doctor.md):
//! which control planes may replace dead nodes through the provider, with which token and
//! settings. For a control plane it adds to the seed the provider's settings and `doctor:` in
//! agent.yaml, the provider token (`/etc/kubedna/provider-token`, mode 0600), and the two role
//! templates the doctor renders a replacement's seed from (`/etc/kubedna/doctor/`), each the
//! seed of a node of that role with `{{node_name}}` left in place. Workers get none of it: only
//! control planes lead. The token and the templates (which hold the cluster secret) are
//! base64-encoded into the user-data and never printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a control plane keeps the provider token.
pub const TOKEN_PATH: &str = "/etc/kubedna/provider-token";

/// The `doctor.settings` keys, as agent.yaml's `doctor:` names them (the agent checks values).
pub const SETTINGS: [&str; 7] = [
    "meshDownSeconds",
    "notReadySeconds",
    "providerOffSeconds",
    "hungSeconds",
    "maxUnhealthyPercent",
    "backoffSeconds",
    "nodeStartupSeconds",
];

/// `doctor:` in `cluster.yaml`. Present means on.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DoctorSeed {
    /// File holding the provider's API token, relative to cluster.yaml.
    pub token_file: PathBuf,
    /// `provider: lab` only: the lab's API subset (`kubedna-lab hcloud-api`), `http://...:port/v1`.
    #[serde(default)]
    pub hcloud_api: Option<String>,
    /// agent.yaml `doctor:` values by name (see [`SETTINGS`]); the agent's defaults otherwise.
    #[serde(default)]
    pub settings: BTreeMap<String, u64>,
}

/// Checks `doctor` against the cluster's provider; `(field, message)` on error.
pub fn validate(doctor: &DoctorSeed, provider: &str) -> Result<(), (String, String)> {
    match (provider, &doctor.hcloud_api) {
        ("hetzner", None) => {}
        ("hetzner", Some(_)) => {
            return Err((
                "doctor.hcloudApi".into(),
                "only for provider lab; Hetzner's own API is used with provider hetzner".into(),
            ))
        }
        ("lab", Some(url)) => {
            let ok = url.starts_with("http://") && url.trim_end_matches('/').ends_with("/v1");
            if !ok || url.contains(['"', '\n', ' ']) {
                return Err((
                    "doctor.hcloudApi".into(),
                    format!("{url:?} is not an API base URL: use http://<lab gateway>:<port>/v1 as `kubedna-lab hcloud-api` prints it"),
                ));
            }
        }
        ("lab", None) => {
            return Err((
                "doctor.hcloudApi".into(),
                "required with provider lab: the address `kubedna-lab hcloud-api` serves".into(),
            ))
        }
        (p, _) => {
            return Err((
                "doctor".into(),
                format!("needs a provider to replace nodes through: set provider to hetzner or lab, not {p:?}"),
            ))
        }
    }
    if let Some(k) = doctor
        .settings
        .keys()
        .find(|k| !SETTINGS.contains(&k.as_str()))
    {
        return Err((
            format!("doctor.settings.{k}"),
            format!("unknown setting; use one of {}", SETTINGS.join(", ")),
        ));
    }
    Ok(())
}

/// The lines after agent.yaml's `provider: kind:` line (6 spaces in, as in the templates):
/// the provider's token and API, then `doctor:`.
pub fn agent_yaml(doctor: &DoctorSeed, provider: &str, cluster: &str) -> String {
    let mut y = match &doctor.hcloud_api {
        Some(url) => format!(
            "        lab:\n          name: \"{cluster}\"\n          hcloudApi: \"{url}\"\n          tokenFile: {TOKEN_PATH}\n"
        ),
        None if provider == "hetzner" => format!("        hetzner:\n          tokenFile: {TOKEN_PATH}\n"),
        None => String::new(),
    };
    y.push_str("      doctor:\n        enabled: true\n");
    for (k, v) in &doctor.settings {
        y.push_str(&format!("        {k}: {v}\n"));
    }
    y
}

/// Reads the token file named relative to `cluster_path`; `(field, message)` on error.
pub fn read_token(doctor: &DoctorSeed, cluster_path: &Path) -> Result<Vec<u8>, (String, String)> {
    let path = cluster_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(&doctor.token_file);
    let token = std::fs::read(&path).map_err(|e| {
        (
            "doctor.tokenFile".to_string(),
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let t = String::from_utf8_lossy(&token);
    if t.trim().is_empty() || t.trim().contains(char::is_whitespace) {
        return Err((
            "doctor.tokenFile".into(),
            format!("{} must hold one token on one line", path.display()),
        ));
    }
    Ok(t.trim().as_bytes().to_vec())
}
