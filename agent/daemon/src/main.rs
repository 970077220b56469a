//! `kubedna-agent`: parses the command line and hands over to [`kubedna_agent::app`]. Exit codes:
//! 0 after a clean shutdown, 2 for bad usage, 78 (EX_CONFIG) for a bad config file, 1 for any
//! other failure.

use clap::Parser;
use kubedna_agent::app::{self, Options};

fn main() -> std::process::ExitCode {
    let opts = Options::parse();
    match app::main(opts) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            eprintln!("kubedna-agent: {:#}", anyhow::Error::from(e));
            std::process::ExitCode::from(code)
        }
    }
}
