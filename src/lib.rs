//! nodelet: one privileged daemon per node that is both the kubelet and the
//! container runtime. See `docs/architecture.md` for the layers.

pub mod cli;
pub mod config;
pub mod cri;
pub mod daemon;
pub mod fsutil;
pub mod image;
pub mod infra;
pub mod logging;
pub mod node;
pub mod runtime;
