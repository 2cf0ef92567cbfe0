//! Pod networks.
//!
//! With no configuration, every pod gets an address on nodelet's built-in
//! bridge network (`nodelet0`, a private IPv4 /16 and, where the host has
//! IPv6, a ULA /64), set up by the `nodelet-cni` bridge plugin called
//! in-process: no plugin binary is executed. A CNI network configuration
//! (`.conflist`, or a single-plugin `.conf`) in `cni.conf_dir` replaces the
//! built-in network; its plugins are executed from `cni.bin_dirs` exactly
//! as the CNI spec says (see `external.rs`).
//!
//! The daemon records each pod's attachment in the pod record with a phase
//! (`adding`, `ready`, `deleting`) written before the call it describes, so
//! a crash mid-ADD or mid-DEL is finished at start-up with an (idempotent)
//! DEL; a CNI `GC` then frees whatever no live pod holds.

pub mod external;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::Config;
use crate::node::Condition;

/// The interface every pod gets.
pub const IFNAME: &str = "eth0";
/// The built-in network's name (and its IPAM directory).
pub const BUILTIN_NAME: &str = "nodelet";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("CNI config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("CNI plugin {plugin} {command} failed (code {code}): {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        code: u32,
        message: String,
    },
    #[error("CNI plugin {plugin:?} not found in {dirs:?}")]
    NoPlugin { plugin: String, dirs: Vec<PathBuf> },
    #[error("pod CIDR {0:?} is not an IP network")]
    BadCidr(String),
}

/// A pod's attachment as recorded in its pod record.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Attachment {
    /// `adding`, `ready` or `deleting`.
    pub phase: String,
    /// The network's name.
    pub network: String,
    /// Addresses, IPv4 first.
    pub ips: Vec<String>,
    /// The final CNI result (the prevResult for CHECK and DEL).
    pub result: Value,
    /// Executed plugins (a conflist) rather than the built-in network.
    pub external: bool,
}

/// What a network call needs to know about the pod.
pub struct PodRef<'a> {
    pub id: &'a str,
    pub netns: &'a Path,
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    pub port_mappings: &'a [cri::PortMapping],
}

impl PodRef<'_> {
    fn cni_args(&self) -> Vec<(String, String)> {
        vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), self.namespace.into()),
            ("K8S_POD_NAME".into(), self.name.into()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), self.id.into()),
            ("K8S_POD_UID".into(), self.uid.into()),
        ]
    }

    /// The CNI `portMappings` capability argument.
    fn port_mappings_json(&self) -> Vec<Value> {
        self.port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| {
                let proto = match cri::Protocol::try_from(p.protocol).unwrap_or(cri::Protocol::Tcp) {
                    cri::Protocol::Tcp => "tcp",
                    cri::Protocol::Udp => "udp",
                    cri::Protocol::Sctp => "sctp",
                };
                let mut m = json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": proto});
                if !p.host_ip.is_empty() {
                    m["hostIP"] = json!(p.host_ip);
                }
                m
            })
            .collect()
    }
}

/// Where the pod network comes from right now.
enum Source {
    Builtin(Value),
    External(external::ConfList),
}

pub struct Network {
    config: Arc<Config>,
    /// From UpdateRuntimeConfig: replaces the built-in IPv4 range for new
    /// pods.
    pod_cidr: Mutex<Option<String>>,
}

impl Network {
    pub fn new(config: Arc<Config>) -> Network {
        Network {
            config,
            pod_cidr: Mutex::new(None),
        }
    }

    /// The IPAM directory of the built-in network.
    pub fn data_dir(&self) -> PathBuf {
        self.config.root_dir.join("cni/networks")
    }

    /// The first network config in `conf_dir` (by name, as the kubelet and
    /// containerd pick), else the built-in network. Re-read on every call so
    /// a network add-on that drops its config later is picked up.
    fn source(&self) -> Result<Source, NetworkError> {
        if let Some(list) = external::find(&self.config.cni.conf_dir)? {
            return Ok(Source::External(list));
        }
        Ok(Source::Builtin(self.builtin_conf()))
    }

    fn builtin_conf(&self) -> Value {
        let subnet = self
            .pod_cidr
            .lock()
            .expect("pod cidr")
            .clone()
            .unwrap_or_else(|| self.config.cni.subnet.clone());
        let mut ranges = vec![json!([{ "subnet": subnet }])];
        if host_has_ipv6() && !self.config.cni.subnet6.is_empty() {
            ranges.push(json!([{ "subnet": self.config.cni.subnet6 }]));
        }
        json!({
            "cniVersion": "1.1.0",
            "name": BUILTIN_NAME,
            "type": "nodelet-bridge",
            "bridge": self.config.cni.bridge,
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {"type": "host-local", "ranges": ranges, "dataDir": self.data_dir()},
            "capabilities": {"portMappings": true},
        })
    }

    fn builtin(&self, conf: &Value, pod: &PodRef) -> Result<nodelet_cni::BridgeConf, NetworkError> {
        let mut conf = conf.clone();
        conf["runtimeConfig"] = json!({ "portMappings": pod.port_mappings_json() });
        nodelet_cni::parse_config(conf.to_string().as_bytes()).map_err(|e| plugin_err("nodelet-bridge", "parse", e))
    }

    /// Attach a pod (CNI ADD). Blocking.
    pub fn setup(&self, pod: &PodRef) -> Result<Attachment, NetworkError> {
        let start = std::time::Instant::now();
        let result = self.add(pod);
        crate::metrics::cni_operation("setup", start.elapsed(), result.is_ok());
        result
    }

    fn add(&self, pod: &PodRef) -> Result<Attachment, NetworkError> {
        match self.source()? {
            Source::Builtin(conf) => {
                let bridge = self.builtin(&conf, pod)?;
                let result =
                    nodelet_cni::add(&bridge, &args(pod)).map_err(|e| plugin_err("nodelet-bridge", "ADD", e))?;
                let mut ips: Vec<String> = result.ips().iter().map(|ip| ip.to_string()).collect();
                ips.sort_by_key(|ip| ip.contains(':'));
                Ok(Attachment {
                    phase: "ready".into(),
                    network: BUILTIN_NAME.into(),
                    ips,
                    result: result.to_json("1.1.0"),
                    external: false,
                })
            }
            Source::External(list) => {
                tracing::debug!(pod = pod.id, config = %list.path.display(), "pod network from a CNI config");
                let result = external::add(&list, &self.config.cni.bin_dirs, pod)?;
                Ok(Attachment {
                    phase: "ready".into(),
                    network: list.name.clone(),
                    ips: external::result_ips(&result),
                    result,
                    external: true,
                })
            }
        }
    }

    /// Detach a pod (CNI DEL). Idempotent: a pod that was never (fully)
    /// attached, or whose namespace is gone, is fine.
    pub fn teardown(&self, pod: &PodRef, att: &Attachment) -> Result<(), NetworkError> {
        let start = std::time::Instant::now();
        let result = self.del(pod, att);
        crate::metrics::cni_operation("teardown", start.elapsed(), result.is_ok());
        result
    }

    fn del(&self, pod: &PodRef, att: &Attachment) -> Result<(), NetworkError> {
        if att.external {
            return match external::find(&self.config.cni.conf_dir)? {
                Some(list) => external::del(&list, &self.config.cni.bin_dirs, pod, &att.result),
                None => {
                    tracing::warn!(pod = pod.id, network = %att.network, "the pod's CNI config is gone; cannot run DEL");
                    Ok(())
                }
            };
        }
        let bridge = self.builtin(&self.builtin_conf(), pod)?;
        nodelet_cni::del(&bridge, &args(pod)).map_err(|e| plugin_err("nodelet-bridge", "DEL", e))
    }

    /// NetworkReady for the CRI Status.
    pub fn condition(&self) -> Condition {
        let ready = |ok: bool, reason: &str, message: String| Condition {
            ready: ok,
            reason: if ok { String::new() } else { reason.to_string() },
            message,
        };
        match self.source() {
            Err(e) => ready(false, "NetworkPluginNotReady", e.to_string()),
            Ok(Source::External(list)) => match external::status(&list, &self.config.cni.bin_dirs) {
                Ok(()) => ready(true, "", String::new()),
                Err(e) => ready(false, "NetworkPluginNotReady", e.to_string()),
            },
            Ok(Source::Builtin(conf)) => {
                let pod = PodRef {
                    id: "",
                    netns: Path::new(""),
                    name: "",
                    namespace: "",
                    uid: "",
                    port_mappings: &[],
                };
                match self
                    .builtin(&conf, &pod)
                    .and_then(|b| nodelet_cni::status(&b).map_err(|e| plugin_err("nodelet-bridge", "STATUS", e)))
                {
                    Ok(()) => ready(true, "", String::new()),
                    Err(e) => ready(false, "NetworkPluginNotReady", e.to_string()),
                }
            }
        }
    }

    /// Free what no live pod holds (CNI GC). `valid` lists the pods that
    /// keep their attachment.
    pub fn gc(&self, valid: &[String]) {
        let attachments: Vec<(String, String)> = valid.iter().map(|id| (id.clone(), IFNAME.to_string())).collect();
        let result = match self.source() {
            Ok(Source::Builtin(conf)) => {
                let pod = PodRef {
                    id: "",
                    netns: Path::new(""),
                    name: "",
                    namespace: "",
                    uid: "",
                    port_mappings: &[],
                };
                self.builtin(&conf, &pod)
                    .and_then(|b| nodelet_cni::gc(&b, &attachments).map_err(|e| plugin_err("nodelet-bridge", "GC", e)))
            }
            Ok(Source::External(list)) => external::gc(&list, &self.config.cni.bin_dirs, &attachments),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!("network garbage collection: {e}");
        }
    }

    /// UpdateRuntimeConfig's pod CIDR: the built-in network's IPv4 range
    /// for pods created from now on.
    pub fn set_pod_cidr(&self, cidr: &str) -> Result<(), NetworkError> {
        if cidr.is_empty() {
            return Ok(());
        }
        let first = cidr.split(',').next().unwrap_or(cidr).trim();
        if first.parse::<ipnet::IpNet>().is_err() {
            return Err(NetworkError::BadCidr(cidr.to_string()));
        }
        *self.pod_cidr.lock().expect("pod cidr") = Some(first.to_string());
        tracing::info!(pod_cidr = first, "pod CIDR set");
        Ok(())
    }
}

fn args(pod: &PodRef) -> nodelet_cni::Args {
    nodelet_cni::Args {
        container_id: pod.id.to_string(),
        netns: pod.netns.to_path_buf(),
        ifname: IFNAME.to_string(),
        args: pod.cni_args(),
    }
}

fn plugin_err(plugin: &str, command: &'static str, e: nodelet_cni::CniError) -> NetworkError {
    NetworkError::Plugin {
        plugin: plugin.to_string(),
        command,
        code: e.code,
        message: if e.details.is_empty() {
            e.msg
        } else {
            format!("{}: {}", e.msg, e.details)
        },
    }
}

/// Does the host do IPv6 at all?
fn host_has_ipv6() -> bool {
    Path::new("/proc/net/if_inet6").exists()
        && std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
            .map(|s| s.trim() == "0")
            .unwrap_or(false)
}
