//! The container runtime: pods and containers on namespaces, cgroups and
//! overlayfs, driven by the node core.

pub mod seccomp;
pub mod spec;
pub mod user;
