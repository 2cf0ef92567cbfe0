//! Command-line surface. Flags override the TOML config file, which overrides
//! the embedded defaults (see `config.rs`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "nodelet", version, about = "kubelet and container runtime in one daemon")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Print the version and exit.
    Version,
}

impl Default for Command {
    fn default() -> Self {
        Command::Serve(ServeArgs::default())
    }
}

#[derive(Debug, Default, Clone, Args)]
pub struct ServeArgs {
    /// TOML config file. Without it the embedded defaults apply; a missing
    /// file named here is an error.
    #[arg(long, short = 'c', env = "NODELET_CONFIG")]
    pub config: Option<PathBuf>,
    /// CRI socket path.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Persistent state directory (images, metadata).
    #[arg(long)]
    pub root_dir: Option<PathBuf>,
    /// Volatile state directory (pods, containers, sockets).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Static pod manifest directory.
    #[arg(long)]
    pub manifest_dir: Option<PathBuf>,
    /// Log format: `text` or `json`.
    #[arg(long)]
    pub log_format: Option<String>,
    /// Log filter, e.g. `info` or `nodelet=debug` (RUST_LOG syntax).
    #[arg(long)]
    pub log_level: Option<String>,
    /// Registry host (`host[:port]`) to reach over plain HTTP; repeatable.
    #[arg(long = "plain-http-registry")]
    pub plain_http_registries: Vec<String>,
}
