//! The `nodelet` binary: the daemon (`nodelet serve`, the default) and the
//! small single-purpose modes the daemon re-executes itself in.

use std::process::ExitCode;

use clap::Parser;

use nodelet::cli::{Cli, Command};

fn main() -> ExitCode {
    // The per-pod infra mode is dispatched before anything else runs: it
    // must stay single-threaded and small (see `infra/mod.rs`).
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(std::ffi::OsStr::new("infra")) {
        return match args.next() {
            Some(dir) => nodelet::infra::main(std::path::Path::new(&dir)),
            None => {
                eprintln!("usage: nodelet infra POD_STATE_DIR");
                ExitCode::from(2)
            }
        };
    }
    // Also single-threaded: it forks (see `runtime/userns.rs`).
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new("userns-probe")) {
        return match std::env::args_os().nth(2) {
            Some(dir) => nodelet::runtime::userns::probe_main(std::path::Path::new(&dir)),
            None => ExitCode::from(2),
        };
    }
    let cli = Cli::parse();
    match cli.command.unwrap_or_default() {
        Command::Serve(args) => nodelet::daemon::main(args),
        Command::Version => {
            println!("nodelet {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}
