//! How kubeadm runs on a node, and how a restarted agent knows what an earlier run did.
//!
//! Every run belongs to a [`KubeadmOp`]. Node operations (`init`, `join`, `reset`) change the
//! node and take minutes with the real binary: they run to their end whatever happens to the
//! agent (a transient systemd unit in production, a detached process in tests), hold the
//! operation's lock file for as long as they run (`flock(1)`), and write the operation's success
//! marker themselves when kubeadm exits 0, so neither "is one still running?" nor "did it
//! succeed?" depends on a flag the agent may not have written before it died. Leader duties
//! (`token create`, `init phase upload-certs`) are stopped when their caller drops them: a
//! deposed leader's call must not complete. This module never decides whether to run kubeadm;
//! the engine does, from the evidence [`OpRecords`] gives.

use std::future::Future;
use std::path::{Path, PathBuf};

/// What a kubeadm run is for; one lock and one success marker per operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeadmOp {
    Init,
    Join,
    Reset,
    TokenCreate,
    UploadCerts,
}

impl KubeadmOp {
    pub fn name(self) -> &'static str {
        match self {
            KubeadmOp::Init => "init",
            KubeadmOp::Join => "join",
            KubeadmOp::Reset => "reset",
            KubeadmOp::TokenCreate => "token-create",
            KubeadmOp::UploadCerts => "upload-certs",
        }
    }

    /// Node operations outlive the agent and record their own success; the others are leader
    /// duties, stopped with their caller.
    pub fn is_node_operation(self) -> bool {
        matches!(self, KubeadmOp::Init | KubeadmOp::Join | KubeadmOp::Reset)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeadmError {
    #[error("cannot run `{command}`: is kubeadm installed at that path?")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed with exit code {code:?}; its last output:\n{stderr}\nsee kubeadm's messages above, fix the cause, and the agent retries")]
    Failed {
        command: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error("cannot wait for an earlier `kubeadm {op}` to end: lock file {path}")]
    Lock {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs kubeadm; returns its standard output.
pub trait Kubeadm: Send + Sync + 'static {
    /// Runs kubeadm for `op`. A node operation runs under `records().wrap(..)`, so it holds the
    /// operation's lock while it runs and writes its marker on success; the caller settles and
    /// reads the marker first. A duty is stopped when the returned future is dropped.
    fn run(
        &self,
        op: KubeadmOp,
        args: &[String],
    ) -> impl Future<Output = Result<String, KubeadmError>> + Send;
    /// Where this node's operation locks and markers live.
    fn records(&self) -> &OpRecords;
}

/// Per-operation lock files and success markers in one directory
/// (`<state dir>/kubeadm/<op>.lock`, `<op>.ok`).
#[derive(Debug, Clone)]
pub struct OpRecords {
    pub dir: PathBuf,
}

impl OpRecords {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        OpRecords { dir: dir.into() }
    }

    pub fn lock_path(&self, op: KubeadmOp) -> PathBuf {
        self.dir.join(format!("{}.lock", op.name()))
    }

    pub fn marker_path(&self, op: KubeadmOp) -> PathBuf {
        self.dir.join(format!("{}.ok", op.name()))
    }

    /// Whether the last run of `op` exited 0 (its marker exists).
    pub fn succeeded(&self, op: KubeadmOp) -> bool {
        self.marker_path(op).exists()
    }

    /// Waits until no run of `op` holds its lock: a run an earlier agent started included.
    pub async fn settle(&self, op: KubeadmOp) -> Result<(), KubeadmError> {
        let path = self.lock_path(op);
        let dir = self.dir.clone();
        let err = |source| KubeadmError::Lock {
            op: op.name(),
            path: self.lock_path(op),
            source,
        };
        let waited = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            // Blocks until the running holder, if any, exits; dropping unlocks at once.
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map(drop)
                .map_err(|(_, e)| std::io::Error::from(e))
        })
        .await
        .map_err(|e| err(std::io::Error::other(e.to_string())))?;
        waited.map_err(err)?;
        // Output a run left behind when its agent died: kubeadm prints tokens and keys.
        for ext in ["out", "err"] {
            let _ = std::fs::remove_file(self.dir.join(format!("{}.{ext}", op.name())));
        }
        Ok(())
    }

    /// Prepares a run of node operation `op`: removes its old marker and returns the command
    /// line that runs `argv` holding the lock and writes the marker when `argv` exits 0.
    pub fn wrap(&self, op: KubeadmOp, argv: &[String]) -> std::io::Result<Vec<String>> {
        std::fs::create_dir_all(&self.dir)?;
        match std::fs::remove_file(self.marker_path(op)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut out = vec![
            "/usr/bin/flock".to_string(),
            path_str(&self.lock_path(op)),
            "/bin/sh".into(),
            "-c".into(),
            "mark=\"$1\"; shift; \"$@\"; rc=$?; if [ \"$rc\" -eq 0 ]; then : > \"$mark\"; fi; exit \"$rc\"".into(),
            "kubedna-kubeadm".into(),
            path_str(&self.marker_path(op)),
        ];
        out.extend(argv.iter().cloned());
        Ok(out)
    }
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// The real kubeadm run as a child process (tests run the double this way), or any binary with
/// its interface. Production uses the daemon's transient systemd units instead.
#[derive(Debug, Clone)]
pub struct KubeadmCommand {
    pub binary: PathBuf,
    pub env: Vec<(String, String)>,
    pub records: OpRecords,
}

impl KubeadmCommand {
    pub fn system() -> Self {
        KubeadmCommand {
            binary: "/usr/bin/kubeadm".into(),
            env: Vec::new(),
            records: OpRecords::new("/var/lib/kubedna/kubeadm"),
        }
    }
}

/// The command line with tokens and keys replaced, for errors and logs.
pub fn redact_args(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let secret = a.len() == 64 && a.bytes().all(|b| b.is_ascii_hexdigit())
                || matches!(a.split_once('.'), Some((x, y)) if x.len() == 6 && y.len() == 16);
            if secret {
                "[redacted]"
            } else {
                a.as_str()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Kubeadm for KubeadmCommand {
    async fn run(&self, op: KubeadmOp, args: &[String]) -> Result<String, KubeadmError> {
        let command = format!("{} {}", self.binary.display(), redact_args(args));
        let spawn_err = |source| KubeadmError::Spawn {
            command: command.clone(),
            source,
        };
        let mut argv = vec![path_str(&self.binary)];
        argv.extend(args.iter().cloned());
        let argv = if op.is_node_operation() {
            self.records.wrap(op, &argv).map_err(spawn_err)?
        } else {
            argv
        };
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            // A node operation outlives the agent, as its transient unit does in production.
            .kill_on_drop(!op.is_node_operation());
        let (status, stdout, stderr) = if op.is_node_operation() {
            // Its output goes to files, as a unit's does: a pipe would close with the agent
            // and kill the run with it.
            // kubeadm prints tokens and keys: the files are the owner's only, and removed
            // once read.
            let out_path = self.records.dir.join(format!("{}.out", op.name()));
            let err_path = self.records.dir.join(format!("{}.err", op.name()));
            let create = |p: &Path| {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .mode(0o600)
                    .open(p)
            };
            let status = cmd
                .stdout(create(&out_path).map_err(spawn_err)?)
                .stderr(create(&err_path).map_err(spawn_err)?)
                .status()
                .await
                .map_err(spawn_err)?;
            let read = |p: &Path| {
                let b = std::fs::read(p).unwrap_or_default();
                let _ = std::fs::remove_file(p);
                b
            };
            (status, read(&out_path), read(&err_path))
        } else {
            let out = cmd.output().await.map_err(spawn_err)?;
            (out.status, out.stdout, out.stderr)
        };
        if status.success() {
            return Ok(String::from_utf8_lossy(&stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(KubeadmError::Failed {
            command,
            code: status.code(),
            stderr: redact_args(
                &tail
                    .join("\n")
                    .split(' ')
                    .map(String::from)
                    .collect::<Vec<_>>(),
            ),
        })
    }

    fn records(&self) -> &OpRecords {
        &self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_node_operation_holds_its_lock_while_it_runs_and_marks_only_success() {
        let dir = tempfile::tempdir().expect("tempdir");
        let k = KubeadmCommand {
            binary: "/bin/sh".into(),
            env: Vec::new(),
            records: OpRecords::new(dir.path()),
        };
        let r = k.records().clone();
        let args = |s: &str| vec!["-c".to_string(), s.to_string()];
        assert!(k.run(KubeadmOp::Reset, &args("exit 3")).await.is_err());
        assert!(!r.succeeded(KubeadmOp::Reset));
        k.run(KubeadmOp::Reset, &args("exit 0")).await.expect("ok");
        assert!(r.succeeded(KubeadmOp::Reset));
        // A run whose caller is dropped keeps running and holding the lock; settle waits.
        let started = std::time::Instant::now();
        let slow = args("sleep 0.6");
        let run = k.run(KubeadmOp::Init, &slow);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(200), run).await;
        r.settle(KubeadmOp::Init).await.expect("settle");
        assert!(started.elapsed() >= std::time::Duration::from_millis(550));
        assert!(r.succeeded(KubeadmOp::Init));
    }
}
