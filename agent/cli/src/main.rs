//! `kubedna`: the admin CLI. All logic is in the library; see [`kubedna_cli::exit`] for the exit
//! codes scripts can branch on.

fn main() -> std::process::ExitCode {
    kubedna_cli::main()
}
