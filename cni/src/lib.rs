//! nodelet's CNI bridge plugin (type `nodelet-bridge`).
//!
//! The same code serves two callers:
//! - the daemon, in-process, through [`parse_config`], [`add`], [`del`],
//!   [`check`], [`status`] and [`gc`] (no fork/exec of plugin binaries on the
//!   pod start path);
//! - any CNI runtime, through the `nodelet-cni` binary (`src/main.rs`), which
//!   speaks the CNI protocol (environment + stdin, JSON on stdout).
//!
//! What it does matches the reference `bridge` plugin chained with
//! `host-local` IPAM and `portmap`: a Linux bridge, one veth pair per
//! attachment, addresses and routes in the container's network namespace,
//! IP allocations on disk in host-local's layout, and nftables rules for
//! masquerading and host port mappings, kept in one table per network.
//!
//! Every call is blocking and safe from any thread of a multi-threaded
//! process: the calling thread never changes namespace. Work inside a
//! container's netns goes through a netlink socket opened by a short-lived
//! thread that enters the netns (a netlink socket stays bound to the netns it
//! was created in), see `netns.rs`.

mod config;
mod datapath;
mod ipam;
mod netlink;
mod netns;
mod nft;
mod plugin;
mod result;
mod store;

use std::path::PathBuf;

pub use config::{BridgeConf, IpamConf, PortMapping, Protocol, Range};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};

/// CNI specification versions the plugin accepts in network configs.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// The plugin's type name in network configs.
pub const PLUGIN_TYPE: &str = "nodelet-bridge";

/// CNI error codes: the spec's well-known ones (0–99) and this plugin's own
/// (100 and up).
pub mod code {
    /// The config's `cniVersion` is not one this plugin speaks.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A field the plugin knows but does not implement.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container (its network namespace) does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A required `CNI_*` variable is missing or malformed.
    pub const INVALID_ENV: u32 = 4;
    /// Reading stdin or the IPAM data directory failed.
    pub const IO: u32 = 5;
    /// The config is not valid JSON.
    pub const DECODE: u32 = 6;
    /// The config is JSON but its content is wrong.
    pub const INVALID_CONFIG: u32 = 7;
    /// A transient condition; the runtime should retry.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Every address of a range set is taken.
    pub const NO_FREE_IP: u32 = 100;
    /// `CNI_IFNAME` already exists in the container's netns.
    pub const INTERFACE_EXISTS: u32 = 101;
    /// The attachment already holds an address in this network.
    pub const ALREADY_ALLOCATED: u32 = 102;
    /// The kernel refused a netlink request.
    pub const NETLINK: u32 = 103;
    /// `nft` failed.
    pub const NFTABLES: u32 = 104;
    /// A host port is already mapped to another attachment.
    pub const HOST_PORT_CONFLICT: u32 = 105;
    /// CHECK found the attachment not as ADD left it.
    pub const CHECK_FAILED: u32 = 106;
    /// A sysctl could not be written.
    pub const SYSCTL: u32 = 107;
}

/// The runtime's side of a CNI call (what the `CNI_*` variables carry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: path of the container's network namespace (may be empty
    /// for DEL).
    pub netns: PathBuf,
    /// `CNI_IFNAME`: the interface name inside the container.
    pub ifname: String,
    /// `CNI_ARGS`, split into key/value pairs.
    pub args: Vec<(String, String)>,
}

/// A CNI error: the spec's `{code, msg, details}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// Spec error code (see [`code`]).
    pub code: u32,
    /// Short description.
    pub msg: String,
    /// Longer detail (the underlying error), possibly empty.
    pub details: String,
}

impl CniError {
    /// An error with no details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// An error with details.
    pub fn with_details(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The spec's error JSON for `version`.
    pub fn to_json(&self, version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({ "cniVersion": version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = serde_json::Value::String(self.details.clone());
        }
        v
    }
}

/// Parse a single plugin config (the bridge plugin's), JSON as on stdin; it
/// may carry `runtimeConfig` (port mappings) and `prevResult`.
pub fn parse_config(json: &[u8]) -> Result<BridgeConf, CniError> {
    config::parse(json)
}

/// Attach the container to the network. Returns the result in the config's
/// `cniVersion` format (see [`CniResult::to_json`]); merged with
/// `conf.prev_result` when one is given. On error nothing this call made is
/// left behind.
pub fn add(conf: &BridgeConf, args: &Args) -> Result<CniResult, CniError> {
    plugin::add(
        &mut datapath::Kernel::new(),
        &plugin::file_store_opener(conf),
        conf,
        args,
    )
}

/// Detach the container: its interface, allocations and port mappings.
/// Idempotent: a missing netns, interface or allocation is not an error.
pub fn del(conf: &BridgeConf, args: &Args) -> Result<(), CniError> {
    plugin::del(
        &mut datapath::Kernel::new(),
        &plugin::file_store_opener(conf),
        conf,
        args,
    )
}

/// Verify the attachment described by `conf.prev_result` is still in place.
pub fn check(conf: &BridgeConf, args: &Args) -> Result<(), CniError> {
    plugin::check(
        &mut datapath::Kernel::new(),
        &plugin::file_store_opener(conf),
        conf,
        args,
    )
}

/// Whether ADD can work now: error [`code::NOT_AVAILABLE`] when the IPAM
/// data directory is unusable, a range set is exhausted or `nft` is missing
/// where it is needed.
pub fn status(conf: &BridgeConf) -> Result<(), CniError> {
    plugin::status(&mut datapath::Kernel::new(), &plugin::file_store_opener(conf), conf)
}

/// Free every allocation (and port mapping) of this network whose
/// attachment (container id, ifname) is not in `valid`.
pub fn gc(conf: &BridgeConf, valid: &[(String, String)]) -> Result<(), CniError> {
    plugin::gc(
        &mut datapath::Kernel::new(),
        &plugin::file_store_opener(conf),
        conf,
        valid,
    )
}
