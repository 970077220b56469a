//! The host's way into a qemu node: ssh from the bridge address with the lab's key (commands
//! quoted for the remote shell, batch mode, no host-key prompts), the readiness probe
//! (`systemctl is-system-running`, the agent's state) and the wait for a booted node.

use std::io::IsTerminal;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use super::{running, QemuError, VmPaths, SSH_POLL};
use crate::cmd::{self, CmdError, Output};

/// Quotes one word for the remote shell ssh hands the command to.
pub(super) fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn ssh_args(key: &Path, addr: Ipv4Addr, tty: bool, argv: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-i".into(),
        key.to_string_lossy().into_owned(),
        "-F".into(),
        "/dev/null".into(),
    ];
    for o in [
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        // Host keys are generated on the VM's first boot and change with every reinstall; the
        // path is the lab bridge only.
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "LogLevel=ERROR",
        // Covers the banner exchange too: sshd in an emulated guest on a loaded host can take
        // many seconds to answer.
        "ConnectTimeout=30",
        "ServerAliveInterval=5",
        "ServerAliveCountMax=3",
    ] {
        args.extend(["-o".to_string(), o.to_string()]);
    }
    if tty {
        args.push("-t".into());
    }
    args.push(format!("root@{addr}"));
    args.push("--".into());
    let line: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
    args.push(line.join(" "));
    args
}

/// Runs `argv` in the VM as root over ssh, capturing output. Exit 255 is ssh's own failure.
pub fn ssh(
    key: &Path,
    addr: Ipv4Addr,
    argv: &[&str],
    timeout: Option<Duration>,
) -> Result<Output, QemuError> {
    let args = ssh_args(key, addr, false, argv);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Ok(cmd::output("ssh", &refs, timeout)?)
}

/// Runs `argv` in the VM with the caller's terminal (a pty when stdin is one).
pub fn ssh_interactive(key: &Path, addr: Ipv4Addr, argv: &[&str]) -> Result<ExitStatus, QemuError> {
    let args = ssh_args(key, addr, std::io::stdin().is_terminal(), argv);
    Command::new("ssh").args(&args).status().map_err(|source| {
        CmdError::Spawn {
            command: format!("ssh {}", args.join(" ")),
            source,
        }
        .into()
    })
}

/// One ssh round trip that reads the VM's systemd state and its agent's: every ssh connection
/// costs an emulated guest seconds, so status asks once.
const PROBE: &str = r#"echo "system=$(systemctl is-system-running)"
if systemctl cat kubedna-agent.service >/dev/null 2>&1; then
  a=$(systemctl is-active kubedna-agent.service)
  if [ "$a" = active ] && kubedna status >/dev/null 2>&1; then a=ready; fi
  echo "agent=$a"
  echo "enabled=$(systemctl is-enabled kubedna-agent.service)"
else
  echo agent=absent
fi"#;

/// What a [`PROBE`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// `systemctl is-system-running`.
    pub system: String,
    /// "absent" (no unit), systemd's active state, or "ready" (`kubedna status` answers).
    pub agent: String,
    /// `systemctl is-enabled kubedna-agent.service`.
    pub enabled: String,
}

impl Probe {
    pub(super) fn parse(out: &str) -> Option<Probe> {
        let get = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(|v| v.trim().to_string())
        };
        Some(Probe {
            system: get("system").filter(|s| !s.is_empty())?,
            agent: get("agent")?,
            enabled: get("enabled").unwrap_or_default(),
        })
    }
}

/// Reads the VM's state over ssh; `None` while ssh does not answer.
pub fn probe(key: &Path, addr: Ipv4Addr, timeout: Duration) -> Option<Probe> {
    let o = ssh(key, addr, &["sh", "-c", PROBE], Some(timeout)).ok()?;
    if o.status.code() == Some(255) {
        return None;
    }
    Probe::parse(&o.stdout)
}

/// The VM's system and agent state for `status`: ("stopped", "-") without qemu, ("starting",
/// "-") while ssh does not answer.
pub fn node_state(p: &VmPaths, key: &Path, addr: Ipv4Addr) -> (String, String) {
    if !running(p) {
        return ("stopped".into(), "-".into());
    }
    match probe(key, addr, Duration::from_secs(60)) {
        Some(pr) => (pr.system, pr.agent),
        None => ("starting".into(), "-".into()),
    }
}

/// Waits until the VM's systemd finished booting and, where the image has the agent and the
/// seed enabled it, `kubedna status` answers. Fails early when qemu exits. Returns the state.
pub fn wait_ready(
    p: &VmPaths,
    key: &Path,
    addr: Ipv4Addr,
    deadline: Instant,
    timeout: Duration,
) -> Result<String, QemuError> {
    let not_running = || QemuError::NotRunning {
        node: p.name.clone(),
        console: p.console.clone(),
        qemu_log: p.qemu_log.clone(),
    };
    let timed_out = |what, last: String| QemuError::Timeout {
        node: p.name.clone(),
        what,
        timeout,
        last,
        console: p.console.clone(),
    };
    let mut last = String::from("no answer over ssh yet");
    let state = loop {
        if !running(p) {
            return Err(not_running());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out("systemd running", last));
        }
        match ssh(
            key,
            addr,
            &["systemctl", "is-system-running", "--wait"],
            Some(deadline - now),
        ) {
            Ok(o) if o.status.code() == Some(255) => last = cmd::tail(&o.stderr),
            Ok(o) => {
                let s = o.stdout.trim().to_string();
                if s == "running" || s == "degraded" {
                    break s;
                }
                last = s;
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(SSH_POLL);
    };
    let mut last = String::from("no answer over ssh");
    loop {
        if !running(p) {
            return Err(not_running());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out(
                "kubedna-agent ready (`kubedna status` answering)",
                last,
            ));
        }
        if let Some(pr) = probe(key, addr, (deadline - now).min(Duration::from_secs(60))) {
            // Ready; or no agent in the image; or a seed that does not enable it.
            let done = pr.agent == "ready"
                || pr.agent == "absent"
                || (pr.enabled != "enabled" && pr.agent != "active");
            if done {
                return Ok(state);
            }
            last = format!("agent {}", pr.agent);
        }
        std::thread::sleep(SSH_POLL);
    }
}
