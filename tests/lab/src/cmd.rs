//! Running the host tools the lab drives (`ip`, `nft`, `tc`, `mount`, `systemd-nspawn`, `nsenter`)
//! as child processes. Every failure names the command line and the tail of its stderr; this module
//! never interprets what a tool prints, and never waits without a deadline when one is given.

use std::io::Read;
use std::os::fd::AsFd;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How much of a failing command's stderr is kept in the error.
const STDERR_TAIL: usize = 600;

/// A command that could not be run or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("could not start `{command}` (is it installed? see scripts/deps/lab.txt)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr_tail}")]
    Failed {
        command: String,
        status: String,
        stderr_tail: String,
    },
    #[error("`{command}` did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
}

/// What a finished command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Turns a non-zero exit into [`CmdError::Failed`].
    pub fn check(self) -> Result<Output, CmdError> {
        if self.success() {
            Ok(self)
        } else {
            Err(CmdError::Failed {
                command: self.command,
                status: self.status.to_string(),
                stderr_tail: tail(&self.stderr),
            })
        }
    }
}

/// The last [`STDERR_TAIL`] bytes of `s`, trimmed, cut on a character boundary.
pub fn tail(s: &str) -> String {
    let s = s.trim();
    let mut start = s.len().saturating_sub(STDERR_TAIL);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

/// `program args...` as one printable line, for error messages.
pub fn display(program: &str, args: &[&str]) -> String {
    let mut line = program.to_string();
    for a in args {
        line.push(' ');
        line.push_str(a);
    }
    line
}

/// Runs `program args...` to completion and returns its stdout; a non-zero exit is an error.
pub fn run(program: &str, args: &[&str]) -> Result<String, CmdError> {
    Ok(output(program, args, None)?.check()?.stdout)
}

/// Runs `program args...` to completion; a non-zero exit is returned, not an error.
pub fn output(program: &str, args: &[&str], timeout: Option<Duration>) -> Result<Output, CmdError> {
    let command = display(program, args);
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CmdError::Spawn {
            command: command.clone(),
            source,
        })?;
    // Readers on their own threads, so a chatty child never blocks on a full pipe while we poll.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let status = match timeout {
        None => child.wait(),
        Some(limit) => {
            let deadline = Instant::now() + limit;
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Ok(status),
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(CmdError::Timeout {
                            command,
                            timeout: limit,
                        });
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => break Err(e),
                }
            }
        }
    }
    .map_err(|source| CmdError::Spawn {
        command: command.clone(),
        source,
    })?;
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Output {
        command,
        status,
        stdout,
        stderr,
    })
}

/// Runs `program args...` with this process's stderr (and its stdout sent to stderr), for long
/// jobs whose progress the user should see; a non-zero exit is an error.
pub fn run_visible(program: &str, args: &[&str]) -> Result<(), CmdError> {
    let command = display(program, args);
    let spawn_err = |source| CmdError::Spawn {
        command: command.clone(),
        source,
    };
    let stdout_to_stderr: Stdio = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(spawn_err)?
        .into();
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout_to_stderr)
        .status()
        .map_err(spawn_err)?;
    if status.success() {
        Ok(())
    } else {
        Err(CmdError::Failed {
            command,
            status: status.to_string(),
            stderr_tail: "see its output above".into(),
        })
    }
}

/// Whether `program` can be found on `PATH` (or is an existing path).
pub fn exists(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
        .unwrap_or(false)
}
