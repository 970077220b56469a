//! Running the external tools the build is made of (mmdebstrap, tar, mkfs.*, sfdisk, mtools,
//! qemu-img, mksquashfs, xorriso) as child processes. This module owns how a failed tool is
//! reported: the error names the command line and carries the tail of its stderr. It never
//! goes through a shell, so no argument is ever re-interpreted.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

/// How many bytes of a failed command's stderr an error keeps.
const STDERR_TAIL: usize = 2000;

/// A tool that could not be run or that exited with failure.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("cannot run `{command}` (is it installed? see scripts/deps/image.txt)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}); stderr ends with:\n{stderr_tail}")]
    Failed {
        command: String,
        status: String,
        stderr_tail: String,
    },
}

/// A command line being built; `run` executes it and captures stdout.
#[derive(Debug)]
pub struct Cmd {
    inner: Command,
    shown: String,
    inherit_stderr: bool,
    stdin: Option<std::path::PathBuf>,
}

impl Cmd {
    pub fn new(program: &str) -> Self {
        Self {
            inner: Command::new(program),
            shown: program.to_string(),
            inherit_stderr: false,
            stdin: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        let arg = arg.as_ref();
        self.shown.push(' ');
        self.shown.push_str(&arg.to_string_lossy());
        self.inner.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.inner.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.inner.current_dir(dir);
        self
    }

    /// Feed the file to the tool's stdin (sfdisk scripts).
    pub fn stdin_file(mut self, path: &Path) -> Self {
        self.stdin = Some(path.to_path_buf());
        self
    }

    /// Let the tool's own progress output reach our stderr (long steps such as mmdebstrap).
    /// The error then cannot quote the tail, but the user has just seen it.
    pub fn show_progress(mut self) -> Self {
        self.inherit_stderr = true;
        self
    }

    /// The command line as shown in errors and progress.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Runs to completion; returns stdout.
    pub fn run(mut self) -> Result<Vec<u8>, CmdError> {
        match &self.stdin {
            Some(p) => {
                let f = std::fs::File::open(p).map_err(|source| CmdError::Spawn {
                    command: format!("{} < {}", self.shown, p.display()),
                    source,
                })?;
                self.inner.stdin(Stdio::from(f));
            }
            None => {
                self.inner.stdin(Stdio::null());
            }
        }
        self.inner.stdout(Stdio::piped());
        self.inner.stderr(if self.inherit_stderr {
            Stdio::inherit()
        } else {
            Stdio::piped()
        });
        let out = self.inner.output().map_err(|source| CmdError::Spawn {
            command: self.shown.clone(),
            source,
        })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail = if self.inherit_stderr {
            "(shown above)".to_string()
        } else {
            tail_of(&stderr, STDERR_TAIL)
        };
        Err(CmdError::Failed {
            command: self.shown,
            status: out.status.to_string(),
            stderr_tail: tail,
        })
    }

    /// Runs and returns stdout as text.
    pub fn run_text(self) -> Result<String, CmdError> {
        Ok(String::from_utf8_lossy(&self.run()?).into_owned())
    }
}

fn tail_of(s: &str, max: usize) -> String {
    let s = s.trim_end();
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_command_and_stderr() {
        let err = Cmd::new("sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .run()
            .expect_err("must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("`sh -c echo boom >&2; exit 3` failed"),
            "{msg}"
        );
        assert!(msg.contains("boom"), "{msg}");
    }

    #[test]
    fn missing_program_is_named() {
        let err = Cmd::new("kubedna-no-such-tool")
            .run()
            .expect_err("must fail");
        assert!(err.to_string().contains("kubedna-no-such-tool"));
    }

    #[test]
    fn tail_keeps_end() {
        assert_eq!(tail_of("abcdef", 3), "...def");
    }
}
