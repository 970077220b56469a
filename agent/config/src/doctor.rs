//! `doctor:` in agent.yaml: whether the leader replaces dead nodes through the provider, and the
//! thresholds and guards it judges by (docs/doctor.md). Defaults are documented beside each
//! field; [`check`] refuses a doctor without a provider and thresholds that would let a
//! partition look like a death sooner than a plain outage.

use serde::Deserialize;

use crate::spec::{AgentConfig, ProviderKind};

/// The doctor (docs/doctor.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DoctorSpec {
    /// Replace dead nodes. Default false. Needs `provider.kind` hetzner or lab.
    #[serde(default)]
    pub enabled: bool,
    /// The mesh says down for this long (seconds; 0 switches the signal off). Default 300.
    #[serde(default = "d300")]
    pub mesh_down_seconds: u64,
    /// The Node is NotReady or Unknown for this long (0: off). Default 300.
    #[serde(default = "d300")]
    pub not_ready_seconds: u64,
    /// The provider says the VM is off, missing or failed for this long (0: off). Default 30.
    #[serde(default = "d30")]
    pub provider_off_seconds: u64,
    /// A VM the provider reports running, silent on the mesh and its Node for this long, is
    /// hung (0: never). Default 900; at least the mesh and Node thresholds, because a
    /// partition looks exactly like this while it lasts.
    #[serde(default = "d900")]
    pub hung_seconds: u64,
    /// Do nothing while more than this percentage of the nodes (rounded down) looks unhealthy.
    /// 0 to 100; default 40.
    #[serde(default = "d40")]
    pub max_unhealthy_percent: u8,
    /// After a replacement of a node ends, leave that node alone this long, doubled per
    /// consecutive failure up to an hour. 60 to 86400; default 600.
    #[serde(default = "d600")]
    pub backoff_seconds: u64,
    /// How long a new VM has to join and become Ready before the replacement is abandoned.
    /// 60 to 7200; default 600.
    #[serde(default = "d600")]
    pub node_startup_seconds: u64,
}

fn d30() -> u64 {
    30
}
fn d300() -> u64 {
    300
}
fn d600() -> u64 {
    600
}
fn d900() -> u64 {
    900
}
fn d40() -> u8 {
    40
}

impl Default for DoctorSpec {
    fn default() -> Self {
        DoctorSpec {
            enabled: false,
            mesh_down_seconds: d300(),
            not_ready_seconds: d300(),
            provider_off_seconds: d30(),
            hung_seconds: d900(),
            max_unhealthy_percent: d40(),
            backoff_seconds: d600(),
            node_startup_seconds: d600(),
        }
    }
}

/// The first problem with `doctor:`, as (field, message).
pub(crate) fn check(spec: &AgentConfig) -> Result<(), (&'static str, String)> {
    let d = &spec.doctor;
    if d.enabled && spec.provider.kind == ProviderKind::None {
        return Err((
            "doctor.enabled",
            "the doctor replaces nodes through a provider: set provider.kind to hetzner or lab, or set this to false".into(),
        ));
    }
    for (field, v) in [
        ("doctor.meshDownSeconds", d.mesh_down_seconds),
        ("doctor.notReadySeconds", d.not_ready_seconds),
        ("doctor.providerOffSeconds", d.provider_off_seconds),
        ("doctor.hungSeconds", d.hung_seconds),
    ] {
        if v > 86_400 {
            return Err((
                field,
                format!("{v} is out of range: use 0 (off) to 86400 seconds"),
            ));
        }
    }
    if d.hung_seconds != 0 && d.hung_seconds < d.mesh_down_seconds.max(d.not_ready_seconds) {
        return Err((
            "doctor.hungSeconds",
            format!(
                "{} is below meshDownSeconds or notReadySeconds: a running VM cut off by a partition would be replaced sooner than a powered-off one; use at least {} (or 0)",
                d.hung_seconds,
                d.mesh_down_seconds.max(d.not_ready_seconds)
            ),
        ));
    }
    if d.max_unhealthy_percent > 100 {
        return Err((
            "doctor.maxUnhealthyPercent",
            format!(
                "{} is not a percentage: use 0 to 100 (default 40)",
                d.max_unhealthy_percent
            ),
        ));
    }
    if !(60..=86_400).contains(&d.backoff_seconds) {
        return Err((
            "doctor.backoffSeconds",
            format!(
                "{} is out of range: use 60 to 86400 (default 600)",
                d.backoff_seconds
            ),
        ));
    }
    if !(60..=7200).contains(&d.node_startup_seconds) {
        return Err((
            "doctor.nodeStartupSeconds",
            format!(
                "{} is out of range: use 60 to 7200 (default 600)",
                d.node_startup_seconds
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::test_support::parse;

    #[test]
    fn defaults_and_a_lab_doctor() {
        let c = parse("").expect("no doctor section");
        assert_eq!(c.spec.doctor, super::DoctorSpec::default());
        assert!(!c.spec.doctor.enabled);
        let c =
            parse("provider:\n  kind: lab\ndoctor:\n  enabled: true\n  providerOffSeconds: 10\n")
                .expect("lab doctor");
        assert!(c.spec.doctor.enabled);
        assert_eq!(c.spec.doctor.provider_off_seconds, 10);
        assert_eq!(c.spec.doctor.hung_seconds, 900);
    }

    #[test]
    fn the_lab_api_needs_a_url_and_a_private_token() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let token = dir.path().join("token");
        std::fs::write(&token, "t").expect("write");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let lab = |url: &str, file: &std::path::Path| {
            format!(
                "provider:\n  kind: lab\n  lab:\n    name: p-doc\n    hcloudApi: {url}\n    tokenFile: {}\ndoctor:\n  enabled: true\n",
                file.display()
            )
        };
        let c = parse(&lab("http://198.18.80.1:8089/v1", &token)).expect("lab API");
        let l = c.spec.provider.lab.expect("lab");
        assert_eq!(l.hcloud_api.as_deref(), Some("http://198.18.80.1:8089/v1"));
        let e = parse(&lab("198.18.80.1:8089", &token)).expect_err("no scheme");
        assert_eq!(e.field(), Some("provider.lab.hcloudApi"));
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = parse(&lab("http://198.18.80.1:8089/v1", &token)).expect_err("loose token");
        assert_eq!(e.field(), Some("provider.lab.tokenFile"));
        let e =
            parse("provider:\n  kind: lab\n  lab:\n    name: p-doc\n    hcloudApi: http://x/v1\n")
                .expect_err("no token file");
        assert_eq!(e.field(), Some("provider.lab"));
    }

    #[test]
    fn bad_doctor_sections_name_their_field() {
        for (name, extra, field, words) in [
            (
                "no provider",
                "doctor:\n  enabled: true\n",
                "doctor.enabled",
                "provider.kind",
            ),
            (
                "hung below",
                "doctor:\n  hungSeconds: 60\n",
                "doctor.hungSeconds",
                "partition",
            ),
            (
                "percent",
                "doctor:\n  maxUnhealthyPercent: 140\n",
                "doctor.maxUnhealthyPercent",
                "0 to 100",
            ),
            (
                "backoff",
                "doctor:\n  backoffSeconds: 5\n",
                "doctor.backoffSeconds",
                "60 to 86400",
            ),
            (
                "startup",
                "doctor:\n  nodeStartupSeconds: 9000\n",
                "doctor.nodeStartupSeconds",
                "60 to 7200",
            ),
            (
                "too long",
                "doctor:\n  meshDownSeconds: 99999\n  hungSeconds: 0\n",
                "doctor.meshDownSeconds",
                "86400",
            ),
            (
                "unknown field",
                "doctor:\n  maxUnhealthy: 2\n",
                "doctor",
                "maxUnhealthyPercent",
            ),
        ] {
            let e = parse(extra).expect_err(name);
            assert!(
                e.field().is_some_and(|f| f.starts_with(field)),
                "{name}: {e}"
            );
            assert!(e.to_string().contains(words), "{name}: {e}");
        }
    }
}
