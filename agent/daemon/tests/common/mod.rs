//! A harness that runs the real `kubedna-agent` binary the way systemd does: its own config,
//! state and socket in a temp dir, `$NOTIFY_SOCKET` pointing at a datagram socket the test reads,
//! so tests await READY=1 and STOPPING=1 instead of sleeping.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "0123456789abcdef0123456789abcdef";

pub struct Agent {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub notify: UnixDatagram,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub audit_dir: PathBuf,
    pub state_dir: PathBuf,
    pub cli: PathBuf,
}

/// A config for `dir` with `extra` YAML appended (top-level sections).
pub fn config_text(dir: &Path, extra: &str, admin: &str) -> String {
    format!(
        "apiVersion: kubedna.io/v1alpha1\nkind: AgentConfig\ncluster:\n  name: test\n  secretFile: {dir}/cluster.secret\nnode:\n  name: n1\n  role: control-plane\nstate:\n  dir: {dir}/state\n  runtimeDir: {dir}/run\nadmin:\n  socket: {dir}/agent.sock\n{admin}{extra}",
        dir = dir.display()
    )
}

impl Agent {
    /// A temp dir with secret and config, not yet started.
    pub fn prepare(extra: &str, admin: &str) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        // Other uids must reach the socket and the CLI copy inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let secret = dir.path().join("cluster.secret");
        std::fs::write(&secret, SECRET).expect("secret");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let config = dir.path().join("agent.yaml");
        std::fs::write(&config, config_text(dir.path(), extra, admin)).expect("config");
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
        let cli = dir.path().join("kubedna");
        // Copied by a `cp` process, never through a file this process opens for writing: tests
        // run in parallel threads, and a child another test forks in that moment inherits the
        // write descriptor until its exec, so exec'ing the copy fails with ETXTBSY ("Text file
        // busy"; seen once in CI). `cp` holds the only write descriptor and has exited here.
        let cp = Command::new("cp")
            .arg("--")
            .arg(cli_binary())
            .arg(&cli)
            .status()
            .expect("run cp");
        assert!(
            cp.success(),
            "cp {} {}: {cp}",
            cli_binary().display(),
            cli.display()
        );
        std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Agent {
            socket: dir.path().join("agent.sock"),
            audit_dir: dir.path().join("state/audit"),
            state_dir: dir.path().join("state"),
            config,
            dir,
            child: None,
            notify,
            cli,
        }
    }

    /// Starts the agent and waits for READY=1.
    pub fn start(extra: &str, admin: &str) -> Agent {
        let mut a = Agent::prepare(extra, admin);
        a.spawn();
        a.wait_notify("READY=1", Duration::from_secs(30));
        a
    }

    pub fn spawn(&mut self) {
        self.spawn_with(&[], &[]);
    }

    /// Spawns with extra arguments and environment variables.
    pub fn spawn_with(&mut self, args: &[&str], env: &[(&str, &str)]) {
        let child = Command::new(env!("CARGO_BIN_EXE_kubedna-agent"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .envs(env.iter().copied())
            .env("NOTIFY_SOCKET", self.dir.path().join("notify.sock"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubedna-agent");
        self.child = Some(child);
    }

    /// Reads notify datagrams until one contains `needle`; panics at the deadline.
    pub fn wait_notify(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {needle:?} from the agent within {within:?}"
            );
            self.notify.set_read_timeout(Some(left)).expect("timeout");
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if msg.lines().any(|l| l == needle) {
                        return msg;
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    panic!("no {needle:?} from the agent within {within:?}")
                }
                Err(e) => panic!("notify socket: {e}"),
            }
        }
    }

    /// The CLI, pointed at this agent.
    pub fn kubedna(&self) -> Command {
        let mut c = Command::new(&self.cli);
        c.arg("--socket").arg(&self.socket);
        c.env_remove("KUBEDNA_SOCKET");
        c
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().expect("running").id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("kill");
    }

    /// SIGTERM, then waits for exit; returns the status and stderr.
    pub fn stop(&mut self) -> (ExitStatus, String) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait()
    }

    pub fn wait(&mut self) -> (ExitStatus, String) {
        let child = self.child.take().expect("running");
        let out = child.wait_with_output().expect("wait");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn records(&self) -> Vec<kubedna_proto::AuditRecord> {
        kubedna_audit::list(
            &self.audit_dir,
            &kubedna_audit::ListFilter {
                limit: 100_000,
                ..Default::default()
            },
        )
        .expect("list")
        .0
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `kubedna` binary built beside `kubedna-agent` (cargo test --workspace builds both).
pub fn cli_binary() -> PathBuf {
    let agent = Path::new(env!("CARGO_BIN_EXE_kubedna-agent"));
    let cli = agent.with_file_name("kubedna");
    assert!(
        cli.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or build it: cargo build -p kubedna-cli)",
        cli.display()
    );
    cli
}
