//! nodelet's CNI bridge plugin.
//!
//! This crate is where the built-in bridge plugin, its IPAM and port mapping
//! live, used in-process by the daemon and shipped as a standalone CNI binary.
//! It is built by the networking issue; until then it only names the CNI spec
//! versions nodelet targets, so the workspace layout is in place.

/// CNI specification versions the plugin will accept in network configs.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];
