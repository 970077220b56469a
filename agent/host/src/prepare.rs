//! Preparing a node for Kubernetes, step by step, each idempotent: kernel modules (overlay,
//! br_netfilter) and sysctls (ip_forward, bridge-nf-call) written as files that systemd's own
//! `systemd-modules-load` and `systemd-sysctl` apply; swap off (active swap units stopped,
//! `swap.target` masked); the containerd config (systemd cgroup driver, pause 3.9) rendered and
//! containerd restarted only when it changed; the node image's container images imported
//! (`kubedna-images.service`, when the image carries any); containerd and kubelet enabled. Every systemd job is
//! awaited on its result through [`Systemd`]; a second run with nothing to change restarts nothing.

use std::path::{Path, PathBuf};

use crate::atomic::{write_atomic, AtomicWriteError};
use crate::systemd::{Systemd, SystemdError};

pub const MODULES: [&str; 2] = ["overlay", "br_netfilter"];
pub const SYSCTLS: [(&str, &str); 3] = [
    ("net.ipv4.ip_forward", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
];
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.9";

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("host preparation, step {step}")]
    Systemd {
        step: &'static str,
        #[source]
        source: SystemdError,
    },
    #[error("host preparation, step {step}")]
    Write {
        step: &'static str,
        #[source]
        source: AtomicWriteError,
    },
}

/// What a run changed, for the log and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub files_written: Vec<PathBuf>,
    pub restarted: Vec<String>,
    pub stopped: Vec<String>,
    pub masked: bool,
    pub enabled: bool,
}

/// containerd's config (version 2; the same keys on containerd 1.6 and 1.7).
/// `restrict_oom_score_adj` is set on hosts whose processes cannot lower an OOM score (no
/// `CAP_SYS_RESOURCE` in PID 1's bounding set, as in some containers and sandboxes): there the
/// kubelet's -998 for pod sandboxes makes runc fail every pod, and containerd clamps it instead.
pub fn containerd_config(pause_image: &str, restrict_oom_score_adj: bool) -> String {
    let restrict = if restrict_oom_score_adj {
        "  # This host cannot lower OOM scores (no CAP_SYS_RESOURCE): see kubedna-agent's docs.\n  restrict_oom_score_adj = true\n"
    } else {
        ""
    };
    format!(
        "# Written by kubedna-agent; changes are overwritten.\nversion = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n{restrict}  sandbox_image = \"{pause_image}\"\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n"
    )
}

/// Whether the capability bounding set in a `/proc/PID/status` text holds `CAP_SYS_RESOURCE`
/// (bit 24), which lowering an OOM score below 0 needs. Unreadable means yes (the usual host).
pub fn can_lower_oom_score(status: &str) -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_none_or(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

fn write_if_changed(
    root: &Path,
    path: &str,
    content: &str,
    report: &mut Report,
    step: &'static str,
) -> Result<bool, PrepareError> {
    let p = root.join(path.trim_start_matches('/'));
    if std::fs::read_to_string(&p).ok().as_deref() == Some(content) {
        return Ok(false);
    }
    if let Some(dir) = p.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    write_atomic(&p, content.as_bytes(), 0o644)
        .map_err(|source| PrepareError::Write { step, source })?;
    report.files_written.push(p);
    Ok(true)
}

/// Runs every step against the host whose file system is at `root` (`/` in production).
pub async fn prepare<S: Systemd>(sd: &S, root: &Path) -> Result<Report, PrepareError> {
    let mut report = Report::default();
    let sys = |step| move |source| PrepareError::Systemd { step, source };

    let modules = format!("# Written by kubedna-agent.\n{}\n", MODULES.join("\n"));
    if write_if_changed(
        root,
        "/etc/modules-load.d/kubedna.conf",
        &modules,
        &mut report,
        "kernel modules",
    )? {
        sd.restart("systemd-modules-load.service")
            .await
            .map_err(sys("kernel modules"))?;
        report.restarted.push("systemd-modules-load.service".into());
    }

    let sysctls: String = SYSCTLS
        .iter()
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect();
    let sysctls = format!("# Written by kubedna-agent.\n{sysctls}");
    if write_if_changed(
        root,
        "/etc/sysctl.d/90-kubedna.conf",
        &sysctls,
        &mut report,
        "sysctls",
    )? {
        sd.restart("systemd-sysctl.service")
            .await
            .map_err(sys("sysctls"))?;
        report.restarted.push("systemd-sysctl.service".into());
    }

    for unit in sd
        .units("active", "*.swap")
        .await
        .map_err(sys("swap off"))?
    {
        sd.stop(&unit).await.map_err(sys("swap off"))?;
        report.stopped.push(unit);
    }
    report.masked = sd.mask(&["swap.target"]).await.map_err(sys("swap off"))?;

    let pid1 = std::fs::read_to_string(root.join("proc/1/status")).unwrap_or_default();
    let containerd = containerd_config(PAUSE_IMAGE, !can_lower_oom_score(&pid1));
    if write_if_changed(
        root,
        "/etc/containerd/config.toml",
        &containerd,
        &mut report,
        "containerd config",
    )? {
        sd.restart("containerd.service")
            .await
            .map_err(sys("containerd"))?;
        report.restarted.push("containerd.service".into());
    } else {
        sd.start("containerd.service")
            .await
            .map_err(sys("containerd"))?;
    }

    // Baked container images (air gap) are imported before kubelet or kubeadm can want them.
    if root
        .join(crate::images::IMAGES_DIR.trim_start_matches('/'))
        .join("images.json")
        .is_file()
    {
        sd.start(crate::images::UNIT)
            .await
            .map_err(sys("container images"))?;
        report.restarted.push(crate::images::UNIT.into());
    }

    report.enabled = sd
        .enable(&["containerd.service", "kubelet.service"])
        .await
        .map_err(sys("enable units"))?;
    if report.enabled || report.masked {
        sd.daemon_reload().await.map_err(sys("daemon-reload"))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #[test]
    fn oom_score_restriction_follows_cap_sys_resource() {
        for (status, can) in [
            ("Name:\tsystemd\nCapBnd:\t000001ffffffffff\n", true),
            ("CapBnd:\t000001fffeffffff\n", false),
            ("CapBnd:\t0000000001000000\n", true),
            ("CapBnd:\tzz\n", true),
            ("", true),
        ] {
            assert_eq!(super::can_lower_oom_score(status), can, "{status:?}");
        }
        assert!(super::containerd_config("p:1", true).contains("restrict_oom_score_adj = true"));
        assert!(!super::containerd_config("p:1", false).contains("restrict_oom_score_adj"));
    }

    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use super::*;

    /// A systemd of units in memory, implementing the same trait as [`crate::systemd::DbusSystemd`].
    #[derive(Default)]
    struct FakeSystemd {
        calls: Mutex<Vec<String>>,
        active: Mutex<BTreeSet<String>>,
        enabled: Mutex<BTreeSet<String>>,
        masked: Mutex<BTreeSet<String>>,
        failing: Option<String>,
    }

    impl FakeSystemd {
        fn job(&self, verb: &'static str, unit: &str, up: bool) -> Result<(), SystemdError> {
            self.calls
                .lock()
                .expect("lock")
                .push(format!("{verb} {unit}"));
            if self.failing.as_deref() == Some(unit) {
                return Err(SystemdError::JobFailed {
                    unit: unit.into(),
                    verb,
                    result: "failed".into(),
                    journal: "containerd: invalid config".into(),
                });
            }
            let mut a = self.active.lock().expect("lock");
            if up {
                a.insert(unit.into());
            } else {
                a.remove(unit);
            }
            Ok(())
        }
    }

    impl Systemd for FakeSystemd {
        async fn start(&self, unit: &str) -> Result<(), SystemdError> {
            self.job("start", unit, true)
        }
        async fn restart(&self, unit: &str) -> Result<(), SystemdError> {
            self.job("restart", unit, true)
        }
        async fn stop(&self, unit: &str) -> Result<(), SystemdError> {
            self.job("stop", unit, false)
        }
        async fn enable(&self, units: &[&str]) -> Result<bool, SystemdError> {
            let mut e = self.enabled.lock().expect("lock");
            let before = e.len();
            e.extend(units.iter().map(|u| u.to_string()));
            Ok(e.len() != before)
        }
        async fn mask(&self, units: &[&str]) -> Result<bool, SystemdError> {
            let mut m = self.masked.lock().expect("lock");
            let before = m.len();
            m.extend(units.iter().map(|u| u.to_string()));
            Ok(m.len() != before)
        }
        async fn daemon_reload(&self) -> Result<(), SystemdError> {
            self.calls
                .lock()
                .expect("lock")
                .push("daemon-reload".into());
            Ok(())
        }
        async fn units(&self, state: &str, pattern: &str) -> Result<Vec<String>, SystemdError> {
            assert_eq!((state, pattern), ("active", "*.swap"));
            Ok(self
                .active
                .lock()
                .expect("lock")
                .iter()
                .filter(|u| u.ends_with(".swap"))
                .cloned()
                .collect())
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    #[test]
    fn first_run_does_everything_and_second_run_restarts_nothing() {
        let root = tempfile::tempdir().expect("tempdir");
        let sd = FakeSystemd::default();
        sd.active
            .lock()
            .expect("lock")
            .insert("dev-vda2.swap".into());
        let first = rt().block_on(prepare(&sd, root.path())).expect("prepare");
        assert_eq!(first.files_written.len(), 3);
        assert_eq!(
            first.restarted,
            [
                "systemd-modules-load.service",
                "systemd-sysctl.service",
                "containerd.service"
            ]
        );
        assert_eq!(first.stopped, ["dev-vda2.swap"]);
        assert!(first.masked && first.enabled);
        let toml = std::fs::read_to_string(root.path().join("etc/containerd/config.toml"))
            .expect("config");
        assert!(
            toml.contains("SystemdCgroup = true") && toml.contains("registry.k8s.io/pause:3.9")
        );
        let sysctl = std::fs::read_to_string(root.path().join("etc/sysctl.d/90-kubedna.conf"))
            .expect("sysctl");
        assert!(sysctl.contains("net.ipv4.ip_forward = 1"));

        sd.calls.lock().expect("lock").clear();
        let second = rt().block_on(prepare(&sd, root.path())).expect("prepare");
        assert_eq!(second, Report::default(), "a second run changed something");
        assert_eq!(
            *sd.calls.lock().expect("lock"),
            ["start containerd.service"],
            "only an idempotent start"
        );
    }

    #[test]
    fn a_failed_job_names_the_step_unit_result_and_journal() {
        let root = tempfile::tempdir().expect("tempdir");
        let sd = FakeSystemd {
            failing: Some("containerd.service".into()),
            ..Default::default()
        };
        let err = rt()
            .block_on(prepare(&sd, root.path()))
            .expect_err("must fail");
        let text = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        for needle in ["containerd", "failed", "invalid config"] {
            assert!(text.contains(needle), "{text}");
        }
    }
}
