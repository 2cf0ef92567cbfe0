//! The `nodelet` binary: the daemon (`nodelet serve`, the default) and the
//! small single-purpose modes the daemon re-executes itself in.

use std::process::ExitCode;

use clap::Parser;

use nodelet::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or_default() {
        Command::Serve(args) => nodelet::daemon::main(args),
        Command::Version => {
            println!("nodelet {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}
