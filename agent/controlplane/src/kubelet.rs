//! kubelet under systemd: the upstream unit and kubeadm's `10-kubeadm.conf` drop-in (the text
//! kubeadm's packaging ships, kept in `units/`), written under `/etc/systemd/system`, enabled and
//! reloaded before the join; started over D-Bus only after `kubeadm init`/`join` wrote
//! `/var/lib/kubelet/config.yaml` and the kubeconfig, because kubelet cannot run without them.

use std::path::{Path, PathBuf};

use kubedna_host::atomic::{write_atomic, AtomicWriteError};
use kubedna_host::systemd::{Systemd, SystemdError};

pub const UNIT: &str = "kubelet.service";
/// kubernetes/release `cmd/krel/templates/latest/kubelet/kubelet.service`.
pub const UNIT_TEXT: &str = include_str!("../../../units/kubelet.service");
/// kubernetes/release `cmd/krel/templates/latest/kubeadm/10-kubeadm.conf`.
pub const DROP_IN_TEXT: &str = include_str!("../../../units/kubelet.service.d/10-kubeadm.conf");

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("{UNIT}: cannot write {}; check that /etc/systemd/system is writable", .0.path.display())]
    Write(#[source] AtomicWriteError),
    #[error("{UNIT}: {step}")]
    Systemd {
        step: &'static str,
        #[source]
        source: SystemdError,
    },
}

pub fn unit_path(root: &Path) -> PathBuf {
    root.join("etc/systemd/system").join(UNIT)
}

pub fn drop_in_path(root: &Path) -> PathBuf {
    root.join("etc/systemd/system/kubelet.service.d/10-kubeadm.conf")
}

fn write_if_changed(path: &Path, text: &str) -> Result<bool, KubeletError> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| {
            KubeletError::Write(AtomicWriteError {
                path: dir.to_path_buf(),
                step: "creating the directory",
                source,
            })
        })?;
    }
    write_atomic(path, text.as_bytes(), 0o644).map_err(KubeletError::Write)?;
    Ok(true)
}

/// Writes the unit and drop-in if they changed, enables the unit and reloads systemd when
/// anything changed. Returns whether anything changed. Does not start kubelet.
pub async fn install<S: Systemd>(sd: &S, root: &Path) -> Result<bool, KubeletError> {
    let sys = |step| move |source| KubeletError::Systemd { step, source };
    let mut changed = write_if_changed(&unit_path(root), UNIT_TEXT)?;
    changed |= write_if_changed(&drop_in_path(root), DROP_IN_TEXT)?;
    if changed {
        sd.daemon_reload().await.map_err(sys("daemon-reload"))?;
    }
    changed |= sd.enable(&[UNIT]).await.map_err(sys("enable"))?;
    Ok(changed)
}

/// Starts kubelet (after the join), awaiting the job.
pub async fn start<S: Systemd>(sd: &S) -> Result<(), KubeletError> {
    sd.start(UNIT)
        .await
        .map_err(|source| KubeletError::Systemd {
            step: "start",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_in_is_kubeadms() {
        for needle in [
            "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf",
            "--config=/var/lib/kubelet/config.yaml",
            "EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env",
            "ExecStart=\nExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS",
        ] {
            assert!(DROP_IN_TEXT.contains(needle), "{needle}");
        }
        assert!(UNIT_TEXT.contains("ExecStart=/usr/bin/kubelet\n"));
    }
}
