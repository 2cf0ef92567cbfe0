//! nodelet: one privileged daemon per node that is both the kubelet and the
//! container runtime. See `docs/architecture.md` for the layers.

pub mod cli;
pub mod config;
pub mod cri;
pub mod daemon;
pub mod events;
pub mod fsutil;
pub mod image;
pub mod infra;
pub mod logging;
pub mod metrics;
pub mod network;
pub mod node;
pub mod runtime;
pub mod sdnotify;
pub mod static_pods;
pub mod stats;
pub mod streaming;

/// Now, as Unix nanoseconds (the CRI's timestamps).
pub fn unix_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
