//! etcd as an agent-managed systemd service: this member's TLS files (see [`crate::pki`]) and the
//! unit `kubedna-etcd.service`, whose `ExecStart` carries every flag (member name, data dir, peer
//! and client TLS with client-certificate authentication, listen/advertise URLs, the initial
//! cluster, its state and token). The unit is written atomically under `/etc/systemd/system`,
//! systemd reloaded and the unit started through [`Systemd`], each job awaited on its result. An
//! unchanged unit is only started (a no-op on a running unit), never restarted; a changed one is
//! restarted. This module never decides *whether* etcd starts as `new` or `existing`: the engine
//! does, from [`crate::bootstrap`].

use std::path::{Path, PathBuf};

use kubedna_host::atomic::{write_atomic, AtomicWriteError};
use kubedna_host::systemd::{Systemd, SystemdError};

use crate::pki::MemberFiles;

pub const UNIT: &str = "kubedna-etcd.service";

/// Where etcd listens and what it advertises for one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberUrls {
    pub peer: String,
    pub client: String,
}

/// Everything the unit says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSpec {
    pub binary: PathBuf,
    pub name: String,
    pub data_dir: PathBuf,
    pub files: MemberFiles,
    /// What this member binds (production: `https://0.0.0.0:2380` and `:2379`).
    pub listen: MemberUrls,
    /// What this member advertises (production: its name-based URLs).
    pub advertise: MemberUrls,
    /// `name=peer_url,...`.
    pub initial_cluster: String,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    New,
    Existing,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdUnitError {
    #[error("{UNIT}: cannot write the unit file; check that /etc/systemd/system is writable")]
    Write(#[source] AtomicWriteError),
    #[error("{UNIT}: {step}")]
    Systemd {
        step: &'static str,
        #[source]
        source: SystemdError,
    },
}

/// What [`install_and_start`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The unit was new or changed: written, systemd reloaded, unit (re)started.
    Restarted,
    /// The unit was unchanged: only a start job, which leaves a running etcd alone.
    Started,
}

fn flag(out: &mut String, name: &str, value: impl AsRef<str>) {
    out.push_str(" \\\n  --");
    out.push_str(name);
    out.push('=');
    out.push_str(value.as_ref());
}

/// The unit text. Values never contain spaces (names, URLs and paths the agent chose), so the
/// command line needs no quoting.
pub fn render(spec: &EtcdSpec) -> String {
    let f = &spec.files;
    let p = |p: &Path| p.display().to_string();
    let mut exec = p(&spec.binary);
    flag(&mut exec, "name", &spec.name);
    flag(&mut exec, "data-dir", p(&spec.data_dir));
    flag(&mut exec, "listen-peer-urls", &spec.listen.peer);
    flag(
        &mut exec,
        "initial-advertise-peer-urls",
        &spec.advertise.peer,
    );
    flag(&mut exec, "listen-client-urls", &spec.listen.client);
    flag(&mut exec, "advertise-client-urls", &spec.advertise.client);
    flag(&mut exec, "initial-cluster", &spec.initial_cluster);
    flag(
        &mut exec,
        "initial-cluster-state",
        spec.initial_cluster_state.as_str(),
    );
    flag(
        &mut exec,
        "initial-cluster-token",
        &spec.initial_cluster_token,
    );
    flag(&mut exec, "client-cert-auth", "true");
    flag(&mut exec, "trusted-ca-file", p(&f.ca));
    flag(&mut exec, "cert-file", p(&f.server_cert));
    flag(&mut exec, "key-file", p(&f.server_key));
    flag(&mut exec, "peer-client-cert-auth", "true");
    flag(&mut exec, "peer-trusted-ca-file", p(&f.ca));
    flag(&mut exec, "peer-cert-file", p(&f.peer_cert));
    flag(&mut exec, "peer-key-file", p(&f.peer_key));
    format!(
        "# Written by kubedna-agent for member {name}; changes are overwritten.\n\
         # The agent decides when etcd starts (docs/control-plane.md); do not enable this unit.\n\
         [Unit]\n\
         Description=etcd member {name} of the KubeDNA control plane (managed by kubedna-agent)\n\
         Documentation=https://etcd.io/docs/\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=notify\n\
         ExecStart={exec}\n\
         Restart=always\n\
         RestartSec=5\n\
         LimitNOFILE=65536\n\
         TimeoutStartSec=120\n",
        name = spec.name,
    )
}

/// The unit file's path under `root` (`/` in production).
pub fn unit_path(root: &Path) -> PathBuf {
    root.join("etc/systemd/system").join(UNIT)
}

/// Writes the unit if it changed and starts etcd, awaiting the job. A member of a new cluster
/// becomes ready (and its start job done) only once a quorum of the initial cluster runs.
pub async fn install_and_start<S: Systemd>(
    sd: &S,
    root: &Path,
    spec: &EtcdSpec,
) -> Result<Outcome, EtcdUnitError> {
    let path = unit_path(root);
    let text = render(spec);
    let changed = std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str());
    let sys = |step| move |source| EtcdUnitError::Systemd { step, source };
    if changed {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| {
                EtcdUnitError::Write(AtomicWriteError {
                    path: dir.to_path_buf(),
                    step: "creating the directory",
                    source,
                })
            })?;
        }
        write_atomic(&path, text.as_bytes(), 0o644).map_err(EtcdUnitError::Write)?;
        sd.daemon_reload().await.map_err(sys("daemon-reload"))?;
        sd.restart(UNIT).await.map_err(sys("restart"))?;
        Ok(Outcome::Restarted)
    } else {
        sd.start(UNIT).await.map_err(sys("start"))?;
        Ok(Outcome::Started)
    }
}

/// Parses the `ExecStart=` command line of a unit this module rendered (for fakes and checks).
pub fn exec_start(unit: &str) -> Option<Vec<String>> {
    let start = unit.find("\nExecStart=")? + "\nExecStart=".len();
    let mut words = Vec::new();
    for line in unit[start..].lines() {
        let (body, more) = match line.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (line, false),
        };
        words.extend(body.split_whitespace().map(String::from));
        if !more {
            break;
        }
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Recorder {
        fn push(&self, s: String) -> Result<(), SystemdError> {
            self.0.lock().expect("lock").push(s);
            Ok(())
        }
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().expect("lock"))
        }
    }

    impl Systemd for Recorder {
        async fn start(&self, unit: &str) -> Result<(), SystemdError> {
            self.push(format!("start {unit}"))
        }
        async fn restart(&self, unit: &str) -> Result<(), SystemdError> {
            self.push(format!("restart {unit}"))
        }
        async fn stop(&self, unit: &str) -> Result<(), SystemdError> {
            self.push(format!("stop {unit}"))
        }
        async fn enable(&self, _: &[&str]) -> Result<bool, SystemdError> {
            Ok(false)
        }
        async fn mask(&self, _: &[&str]) -> Result<bool, SystemdError> {
            Ok(false)
        }
        async fn daemon_reload(&self) -> Result<(), SystemdError> {
            self.push("daemon-reload".into())
        }
        async fn units(&self, _: &str, _: &str) -> Result<Vec<String>, SystemdError> {
            Ok(vec![])
        }
    }

    fn spec(state: ClusterState) -> EtcdSpec {
        EtcdSpec {
            binary: "/usr/bin/etcd".into(),
            name: "cp-1".into(),
            data_dir: "/var/lib/etcd".into(),
            files: MemberFiles::in_dir(Path::new("/etc/kubedna/pki/etcd")),
            listen: MemberUrls {
                peer: "https://0.0.0.0:2380".into(),
                client: "https://0.0.0.0:2379".into(),
            },
            advertise: MemberUrls {
                peer: "https://cp-1.lab.kubedna:2380".into(),
                client: "https://cp-1.lab.kubedna:2379".into(),
            },
            initial_cluster: "cp-1=https://cp-1.lab.kubedna:2380".into(),
            initial_cluster_state: state,
            initial_cluster_token: "kubedna-lab".into(),
        }
    }

    #[test]
    fn the_unit_carries_every_flag_and_parses_back() {
        let text = render(&spec(ClusterState::New));
        let args = exec_start(&text).expect("ExecStart");
        assert_eq!(args[0], "/usr/bin/etcd");
        for want in [
            "--name=cp-1",
            "--data-dir=/var/lib/etcd",
            "--initial-cluster-state=new",
            "--initial-cluster-token=kubedna-lab",
            "--client-cert-auth=true",
            "--peer-client-cert-auth=true",
            "--trusted-ca-file=/etc/kubedna/pki/etcd/ca.crt",
            "--peer-cert-file=/etc/kubedna/pki/etcd/peer.crt",
            "--key-file=/etc/kubedna/pki/etcd/server.key",
            "--listen-client-urls=https://0.0.0.0:2379",
            "--advertise-client-urls=https://cp-1.lab.kubedna:2379",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} missing: {args:?}");
        }
        assert!(text.contains("Type=notify") && text.contains("Restart=always"));
    }

    #[test]
    fn unchanged_unit_is_not_restarted_and_a_change_is() {
        let root = tempfile::tempdir().expect("tempdir");
        let sd = Recorder::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        let first = rt
            .block_on(install_and_start(
                &sd,
                root.path(),
                &spec(ClusterState::New),
            ))
            .expect("install");
        assert_eq!(first, Outcome::Restarted);
        assert_eq!(sd.take(), ["daemon-reload", "restart kubedna-etcd.service"]);
        let again = rt
            .block_on(install_and_start(
                &sd,
                root.path(),
                &spec(ClusterState::New),
            ))
            .expect("install");
        assert_eq!(again, Outcome::Started);
        assert_eq!(sd.take(), ["start kubedna-etcd.service"]);
        let changed = rt
            .block_on(install_and_start(
                &sd,
                root.path(),
                &spec(ClusterState::Existing),
            ))
            .expect("install");
        assert_eq!(changed, Outcome::Restarted);
        assert_eq!(sd.take(), ["daemon-reload", "restart kubedna-etcd.service"]);
        assert!(std::fs::read_to_string(unit_path(root.path()))
            .expect("unit")
            .contains("--initial-cluster-state=existing"));
    }
}
