//! The admin CLI as a library: [`cli`] defines the command line, [`client`] speaks the admin API
//! over the agent's Unix socket, [`output`] renders answers as tables, JSON or YAML, and
//! [`commands`] ties them together ([`cluster_output`] renders the cluster-wide views). It depends on the protocol crate, never on the daemon.

#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod cluster_output;
pub mod commands;
pub mod output;

/// Exit codes, stable for scripts.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// A failure not listed below (the agent answered 5xx, an I/O error, ...).
    pub const FAILURE: u8 = 1;
    /// Bad usage: unknown command, flag or value.
    pub const USAGE: u8 = 2;
    /// The agent is not running or its socket cannot be reached.
    pub const UNREACHABLE: u8 = 3;
    /// Permission denied: the caller's role is not enough, or the socket refused the user.
    pub const DENIED: u8 = 4;
    /// `audit verify` found the chain broken.
    pub const AUDIT_BROKEN: u8 = 5;
    /// The agent rejected the request (4xx other than 403): bad argument or refused change.
    pub const REJECTED: u8 = 6;
}

/// Parses the command line, runs the command, prints errors, returns the exit code.
pub fn main() -> std::process::ExitCode {
    use clap::Parser;
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return std::process::ExitCode::from(code);
        }
    };
    match commands::run(args) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            let code = if e.downcast_ref::<commands::UsageError>().is_some() {
                exit::USAGE
            } else {
                e.downcast_ref::<client::ClientError>()
                    .map_or(exit::FAILURE, client::ClientError::exit_code)
            };
            eprintln!("kubedna: {e:#}");
            std::process::ExitCode::from(code)
        }
    }
}
