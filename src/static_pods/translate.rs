//! A Pod spec in CRI terms, as the kubelet translates it: the sandbox
//! config (namespaces, DNS, ports, cgroup parent by QoS class, labels and
//! annotations crictl shows), and per container the container config
//! (command, environment with field and resource references, mounts of the
//! pod's volumes, resources, security context).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
pub const ANN_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
/// Marks what nodelet runs from its manifest directory (the manifest file).
pub const LABEL_STATIC: &str = "nodelet.io/static-pod";
/// The manifest's content hash: unchanged across a daemon restart means
/// the running pod is adopted, not restarted.
pub const LABEL_HASH: &str = "nodelet.io/manifest-hash";

/// The kubelet's quality-of-service classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn as_str(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }
}

/// A Kubernetes quantity as a number: CPU in millicores (`cpu`), other
/// resources in bytes or units.
pub fn quantity(q: &Quantity, cpu: bool) -> Option<i64> {
    let s = q.0.trim();
    let (num, suffix) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.parse().ok()?;
    let scale: f64 = match suffix {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with('e') || s.starts_with('E') => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    let v = n * scale;
    // Resources are never negative (the API server refuses them); NaN and
    // infinities are no quantity either.
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    // `as` saturates: absurdly large values become i64::MAX, and every
    // computation below saturates too.
    Some(if cpu {
        (v * 1000.0).ceil() as i64
    } else {
        v.ceil() as i64
    })
}

fn res(c: &Container, kind: &str, name: &str) -> Option<i64> {
    let r = c.resources.as_ref()?;
    let map = if kind == "limits" {
        r.limits.as_ref()?
    } else {
        r.requests.as_ref()?
    };
    quantity(map.get(name)?, name == "cpu")
}

/// A container's request, defaulting to its limit as the API server does.
fn request(c: &Container, name: &str) -> Option<i64> {
    res(c, "requests", name).or_else(|| res(c, "limits", name))
}

pub fn qos(spec: &PodSpec) -> Qos {
    let all: Vec<&Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect();
    let any = all.iter().any(|c| {
        ["cpu", "memory"]
            .iter()
            .any(|r| request(c, r).is_some() || res(c, "limits", r).is_some())
    });
    if !any {
        return Qos::BestEffort;
    }
    let guaranteed = all.iter().all(|c| {
        ["cpu", "memory"]
            .iter()
            .all(|r| res(c, "limits", r).is_some() && request(c, r) == res(c, "limits", r))
    });
    if guaranteed {
        Qos::Guaranteed
    } else {
        Qos::Burstable
    }
}

/// CRI resources of a container (cgroup values the kubelet derives).
pub fn container_resources(c: &Container, qos: Qos, node_memory: i64) -> cri::LinuxContainerResources {
    let cpu_req = request(c, "cpu");
    let cpu_lim = res(c, "limits", "cpu");
    let mem_lim = res(c, "limits", "memory").unwrap_or(0);
    let mem_req = request(c, "memory").unwrap_or(0);
    let shares = cpu_req.map(|m| (m.saturating_mul(1024) / 1000).max(2)).unwrap_or(2);
    let (quota, period) = match cpu_lim {
        Some(m) => (m.saturating_mul(100).max(1000), 100_000),
        None => (0, 0),
    };
    let oom_score_adj = match qos {
        Qos::Guaranteed => -997,
        Qos::BestEffort => 1000,
        Qos::Burstable if node_memory > 0 => {
            (1000 - (mem_req.saturating_mul(1000) / node_memory).min(1000)).clamp(2, 999)
        }
        Qos::Burstable => 999,
    };
    cri::LinuxContainerResources {
        cpu_shares: shares,
        cpu_quota: quota,
        cpu_period: period,
        memory_limit_in_bytes: mem_lim,
        oom_score_adj,
        ..Default::default()
    }
}

/// The sandbox's pod-level limits: the sum of the containers' limits when
/// every container has one (the pod cgroup caps the whole pod).
fn pod_resources(spec: &PodSpec) -> Option<cri::LinuxContainerResources> {
    let sum = |name: &str| -> Option<i64> {
        let mut total = 0;
        for c in &spec.containers {
            total = res(c, "limits", name)?.saturating_add(total);
        }
        Some(total)
    };
    // Limits count only when every container has one (else unbounded).
    let memory = sum("memory");
    let cpu = sum("cpu");
    // CPU weight from the requests, at least the minimum for any pod that
    // is not BestEffort (which places it in the burstable tier).
    let cpu_request: i64 = spec
        .containers
        .iter()
        .filter_map(|c| request(c, "cpu"))
        .fold(0, i64::saturating_add);
    let shares = if cpu_request > 0 {
        (cpu_request.saturating_mul(1024) / 1000).max(2)
    } else if qos(spec) != Qos::BestEffort {
        2
    } else {
        0
    };
    if memory.is_none() && cpu.is_none() && shares == 0 {
        return None;
    }
    Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: memory.unwrap_or(0),
        cpu_quota: cpu.map(|m| m.saturating_mul(100).max(1000)).unwrap_or(0),
        cpu_period: if cpu.is_some() { 100_000 } else { 0 },
        cpu_shares: shares,
        ..Default::default()
    })
}

/// Where a static pod lives on the node.
pub struct Paths {
    /// `<log root>/<namespace>_<name>_<uid>`, the kubelet's layout.
    pub log_dir: PathBuf,
    /// The pod's own directory (volumes, managed files).
    pub pod_dir: PathBuf,
}

pub fn pod_paths(pod: &Pod, log_root: &Path, pods_root: &Path) -> Paths {
    let m = &pod.metadata;
    let uid = m.uid.clone().unwrap_or_default();
    Paths {
        log_dir: log_root.join(format!(
            "{}_{}_{}",
            m.namespace.as_deref().unwrap_or("default"),
            m.name.as_deref().unwrap_or(""),
            uid
        )),
        pod_dir: pods_root.join(uid),
    }
}

fn host_resolv() -> (Vec<String>, Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let (mut ns, mut search, mut opts) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => ns.extend(f.map(str::to_string)),
            Some("search") => search = f.map(str::to_string).collect(),
            Some("options") => opts.extend(f.map(str::to_string)),
            _ => {}
        }
    }
    (ns, search, opts)
}

/// The pod's DNS as the kubelet computes it without cluster DNS:
/// `ClusterFirst` falls back to `Default` (the node's resolv.conf), `None`
/// takes only `dnsConfig`, `dnsConfig` is appended otherwise.
fn dns(spec: &PodSpec) -> Option<cri::DnsConfig> {
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cfg = spec.dns_config.as_ref();
    let extra_ns: Vec<String> = cfg.and_then(|c| c.nameservers.clone()).unwrap_or_default();
    let extra_search: Vec<String> = cfg.and_then(|c| c.searches.clone()).unwrap_or_default();
    let extra_opts: Vec<String> = cfg
        .and_then(|c| c.options.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|o| match o.value {
            Some(v) => format!("{}:{v}", o.name.unwrap_or_default()),
            None => o.name.unwrap_or_default(),
        })
        .collect();
    if policy == "None" {
        return Some(cri::DnsConfig {
            servers: extra_ns,
            searches: extra_search,
            options: extra_opts,
        });
    }
    // No dnsConfig: the runtime's default (the node's, minus loopback
    // resolvers).
    cfg?;
    let (mut servers, mut searches, mut options) = host_resolv();
    servers.retain(|s| {
        s.parse::<std::net::IpAddr>()
            .map(|ip| !ip.is_loopback())
            .unwrap_or(true)
    });
    servers.extend(extra_ns);
    searches.extend(extra_search);
    options.extend(extra_opts);
    Some(cri::DnsConfig {
        servers,
        searches,
        options,
    })
}

fn port_mappings(spec: &PodSpec) -> Vec<cri::PortMapping> {
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| cri::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => cri::Protocol::Udp,
                Some("SCTP") => cri::Protocol::Sctp,
                _ => cri::Protocol::Tcp,
            } as i32,
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect()
}

fn ns_mode(b: Option<bool>, yes: cri::NamespaceMode, no: cri::NamespaceMode) -> i32 {
    if b.unwrap_or(false) {
        yes as i32
    } else {
        no as i32
    }
}

/// The pod's namespace options.
fn namespaces(spec: &PodSpec) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: ns_mode(spec.host_network, cri::NamespaceMode::Node, cri::NamespaceMode::Pod),
        ipc: ns_mode(spec.host_ipc, cri::NamespaceMode::Node, cri::NamespaceMode::Pod),
        pid: if spec.host_pid.unwrap_or(false) {
            cri::NamespaceMode::Node as i32
        } else if spec.share_process_namespace.unwrap_or(false) {
            cri::NamespaceMode::Pod as i32
        } else {
            cri::NamespaceMode::Container as i32
        },
        ..Default::default()
    }
}

/// The pod's host name: `spec.hostname` or the pod name, at most 63
/// characters (the kubelet truncates).
pub fn hostname(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    let h = spec
        .and_then(|s| s.hostname.clone())
        .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
    let mut h: String = h.chars().take(63).collect();
    while h.ends_with(['-', '.']) {
        h.pop();
    }
    h
}

/// The sandbox config.
pub fn sandbox_config(
    pod: &Pod,
    file: &Path,
    hash: &str,
    attempt: u32,
    paths: &Paths,
    cgroup_parent: &str,
) -> cri::PodSandboxConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let m = &pod.metadata;
    let mut labels: HashMap<String, String> = m.labels.clone().unwrap_or_default().into_iter().collect();
    labels.insert(LABEL_POD_NAME.into(), m.name.clone().unwrap_or_default());
    labels.insert(LABEL_POD_NAMESPACE.into(), m.namespace.clone().unwrap_or_default());
    labels.insert(LABEL_POD_UID.into(), m.uid.clone().unwrap_or_default());
    labels.insert(
        LABEL_STATIC.into(),
        file.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    labels.insert(LABEL_HASH.into(), hash.into());
    let mut annotations: HashMap<String, String> = m.annotations.clone().unwrap_or_default().into_iter().collect();
    annotations.insert("kubernetes.io/config.source".into(), "file".into());
    annotations.insert("kubernetes.io/config.hash".into(), hash.into());
    let sc = spec.security_context.clone().unwrap_or_default();
    let sysctls: HashMap<String, String> = sc
        .sysctls
        .iter()
        .flatten()
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
            namespace: m.namespace.clone().unwrap_or_default(),
            attempt,
        }),
        hostname: if spec.host_network.unwrap_or(false) {
            String::new()
        } else {
            hostname(pod)
        },
        log_directory: paths.log_dir.display().to_string(),
        dns_config: dns(&spec),
        port_mappings: port_mappings(&spec),
        labels,
        annotations,
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.to_string(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(&spec)),
                run_as_user: sc.run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: sc.run_as_group.map(|value| cri::Int64Value { value }),
                supplemental_groups: sc.supplemental_groups.clone().unwrap_or_default(),
                ..Default::default()
            }),
            sysctls,
            resources: pod_resources(&spec),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where each volume is on the host: a directory (or, for a single-file
/// hostPath, a file).
pub type VolumePaths = HashMap<String, PathBuf>;

/// Everything the container config needs that depends on the running pod.
pub struct Context<'a> {
    pub pod: &'a Pod,
    pub hash: &'a str,
    pub pod_ip: String,
    pub pod_ips: Vec<String>,
    pub host_ip: String,
    pub volumes: &'a VolumePaths,
    pub qos: Qos,
    pub node_memory: i64,
    /// `<pod dir>/etc-hosts`, the managed /etc/hosts, if any.
    pub etc_hosts: Option<PathBuf>,
    /// Where a container's termination-log file is put.
    pub pod_dir: &'a Path,
    /// Seccomp profiles named `localhostProfile` are relative to this.
    pub seccomp_root: &'a Path,
}

/// A `metadata.labels['x']`-style field path's value.
fn field(ctx: &Context, path: &str) -> Result<String, String> {
    let m = &ctx.pod.metadata;
    let spec = ctx.pod.spec.as_ref();
    let keyed = |map: &Option<BTreeMap<String, String>>, prefix: &str| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_prefix("['")?.strip_suffix("']")?;
        Some(map.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.podIP" => ctx.pod_ip.clone(),
        "status.podIPs" => ctx.pod_ips.join(","),
        "status.hostIP" | "status.hostIPs" => ctx.host_ip.clone(),
        "metadata.labels" => format_map(&m.labels),
        "metadata.annotations" => format_map(&m.annotations),
        p => keyed(&m.labels, "metadata.labels")
            .or_else(|| keyed(&m.annotations, "metadata.annotations"))
            .ok_or_else(|| format!("fieldRef {p:?} is not supported"))?,
    })
}

/// `key="value"` lines, as the downward API writes maps.
fn format_map(map: &Option<BTreeMap<String, String>>) -> String {
    map.iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A resourceFieldRef value (`limits.cpu`, `requests.memory`, ...) in
/// units of `divisor`, rounded up; limits default to the node's capacity.
fn resource_field(
    ctx: &Context,
    own: &Container,
    sel: &k8s_openapi::api::core::v1::ResourceFieldSelector,
) -> Result<String, String> {
    let c = match &sel.container_name {
        Some(n) if !n.is_empty() => ctx
            .pod
            .spec
            .as_ref()
            .and_then(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
                    .find(|c| &c.name == n)
            })
            .ok_or_else(|| format!("resourceFieldRef names no container {n:?}"))?,
        _ => own,
    };
    let (kind, name) = sel
        .resource
        .split_once('.')
        .ok_or_else(|| format!("resourceFieldRef {:?} is not kind.resource", sel.resource))?;
    let cpu = name == "cpu";
    let value = match kind {
        "limits" => res(c, "limits", name).unwrap_or(if cpu {
            std::thread::available_parallelism()
                .map(|n| n.get() as i64 * 1000)
                .unwrap_or(1000)
        } else {
            ctx.node_memory
        }),
        "requests" => request(c, name).unwrap_or(0),
        _ => {
            return Err(format!(
                "resourceFieldRef {:?} is not limits.* or requests.*",
                sel.resource
            ))
        }
    };
    let divisor = sel
        .divisor
        .as_ref()
        .and_then(|d| quantity(d, cpu))
        .filter(|d| *d > 0)
        .unwrap_or(if cpu { 1000 } else { 1 });
    // Rounded up; both are non-negative (`quantity` refuses negatives).
    Ok((value / divisor + i64::from(value % divisor != 0)).to_string())
}

/// Expand `$(VAR)` references the way the kubelet does (`$$` escapes;
/// unknown references stay as written).
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    if let Some((_, v)) = env.iter().rev().find(|(k, _)| k == name) {
                        out.push_str(v);
                        i += end + 3;
                        continue;
                    }
                }
            }
        }
        let ch = s[i..].chars().next().expect("char boundary");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn propagation(p: Option<&str>) -> i32 {
    match p {
        Some("HostToContainer") => cri::MountPropagation::PropagationHostToContainer as i32,
        Some("Bidirectional") => cri::MountPropagation::PropagationBidirectional as i32,
        _ => cri::MountPropagation::PropagationPrivate as i32,
    }
}

/// The container config for `attempt` (= restart count).
pub fn container_config(ctx: &Context, c: &Container, attempt: u32) -> Result<cri::ContainerConfig, String> {
    let pod = ctx.pod;
    let spec = pod.spec.clone().unwrap_or_default();
    let m = &pod.metadata;
    // Environment, in order, each able to refer to the ones before it.
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => expand(v, &env),
            (None, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    field(ctx, &f.field_path)?
                } else if let Some(r) = &from.resource_field_ref {
                    resource_field(ctx, c, r)?
                } else {
                    return Err(format!(
                        "env {:?}: only value, fieldRef and resourceFieldRef are supported without an API server",
                        e.name
                    ));
                }
            }
            (None, None) => String::new(),
        };
        env.push((e.name.clone(), value));
    }
    if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(format!(
            "container {:?}: envFrom needs an API server (ConfigMaps, Secrets)",
            c.name
        ));
    }
    let command: Vec<String> = c.command.iter().flatten().map(|s| expand(s, &env)).collect();
    let args: Vec<String> = c.args.iter().flatten().map(|s| expand(s, &env)).collect();

    let mut mounts = Vec::new();
    for vm in c.volume_mounts.iter().flatten() {
        let base = ctx
            .volumes
            .get(&vm.name)
            .ok_or_else(|| format!("volumeMount {:?}: volume not prepared", vm.name))?;
        let host = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let real = sub_path(base, Path::new(sub))?;
                let pin = ctx
                    .pod_dir
                    .join(SUBPATH_DIR)
                    .join(&c.name)
                    .join(mounts.len().to_string());
                pin_sub_path(base, &real, &pin)?
            }
            None => base.clone(),
        };
        mounts.push(cri::Mount {
            container_path: vm.mount_path.clone(),
            host_path: host.display().to_string(),
            readonly: vm.read_only.unwrap_or(false),
            propagation: propagation(vm.mount_propagation.as_deref()),
            ..Default::default()
        });
    }
    if let Some(h) = &ctx.etc_hosts {
        if !mounts.iter().any(|m| m.container_path == "/etc/hosts") {
            mounts.push(cri::Mount {
                container_path: "/etc/hosts".into(),
                host_path: h.display().to_string(),
                ..Default::default()
            });
        }
    }
    // The termination message file, bind-mounted as the kubelet does.
    let term_path = c
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".into());
    let term_host = termination_log(ctx.pod_dir, &c.name, attempt);
    if let Some(dir) = term_host.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    std::fs::write(&term_host, b"").map_err(|e| format!("create {}: {e}", term_host.display()))?;
    mounts.push(cri::Mount {
        container_path: term_path,
        host_path: term_host.display().to_string(),
        ..Default::default()
    });

    let pod_sc = spec.security_context.clone().unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    let seccomp = sc
        .seccomp_profile
        .clone()
        .or(pod_sc.seccomp_profile.clone())
        .map(|p| cri::SecurityProfile {
            profile_type: match p.type_.as_str() {
                "RuntimeDefault" => cri::security_profile::ProfileType::RuntimeDefault,
                "Localhost" => cri::security_profile::ProfileType::Localhost,
                _ => cri::security_profile::ProfileType::Unconfined,
            } as i32,
            localhost_ref: p
                .localhost_profile
                .map(|l| ctx.seccomp_root.join(l).display().to_string())
                .unwrap_or_default(),
        });
    let mut supplemental = pod_sc.supplemental_groups.clone().unwrap_or_default();
    if let Some(fs_group) = pod_sc.fs_group {
        supplemental.push(fs_group);
    }
    let security = cri::LinuxContainerSecurityContext {
        capabilities: sc.capabilities.as_ref().map(|caps| cri::Capability {
            add_capabilities: caps.add.clone().unwrap_or_default(),
            drop_capabilities: caps.drop.clone().unwrap_or_default(),
            ..Default::default()
        }),
        privileged: sc.privileged.unwrap_or(false),
        namespace_options: Some(namespaces(&spec)),
        run_as_user: sc
            .run_as_user
            .or(pod_sc.run_as_user)
            .map(|value| cri::Int64Value { value }),
        run_as_group: sc
            .run_as_group
            .or(pod_sc.run_as_group)
            .map(|value| cri::Int64Value { value }),
        readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
        supplemental_groups: supplemental,
        no_new_privs: sc.allow_privilege_escalation == Some(false),
        seccomp,
        ..Default::default()
    };

    let mut labels = HashMap::new();
    labels.insert(LABEL_CONTAINER_NAME.to_string(), c.name.clone());
    labels.insert(LABEL_POD_NAME.to_string(), m.name.clone().unwrap_or_default());
    labels.insert(LABEL_POD_NAMESPACE.to_string(), m.namespace.clone().unwrap_or_default());
    labels.insert(LABEL_POD_UID.to_string(), m.uid.clone().unwrap_or_default());
    labels.insert(LABEL_HASH.to_string(), ctx.hash.to_string());
    let mut annotations = HashMap::new();
    annotations.insert(ANN_RESTART_COUNT.to_string(), attempt.to_string());
    annotations.insert(
        "io.kubernetes.container.terminationMessagePath".to_string(),
        c.termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into()),
    );
    annotations.insert(
        "io.kubernetes.pod.terminationGracePeriod".to_string(),
        spec.termination_grace_period_seconds.unwrap_or(30).to_string(),
    );
    if let Some(ports) = &c.ports {
        annotations.insert(
            "io.kubernetes.container.ports".to_string(),
            serde_json::to_string(ports).unwrap_or_default(),
        );
    }

    Ok(cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command,
        args,
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: env
            .into_iter()
            .map(|(key, value)| cri::KeyValue { key, value })
            .collect(),
        mounts,
        labels,
        annotations,
        log_path: format!("{}/{attempt}.log", c.name),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(container_resources(c, ctx.qos, ctx.node_memory)),
            security_context: Some(security),
        }),
        ..Default::default()
    })
}

/// The host file behind a container's termination-message path.
pub fn termination_log(pod_dir: &Path, container: &str, attempt: u32) -> PathBuf {
    pod_dir
        .join("containers")
        .join(container)
        .join(format!("{attempt}.termination-log"))
}

/// `base/sub` without leaving `base` through a symlink (the kubelet's
/// subPath check): every component is resolved and must stay inside, and
/// a missing directory is created only once its parent has been resolved
/// inside the volume, so a symlink that a container planted in the volume
/// can neither be followed out nor make nodelet create directories
/// elsewhere on the host.
pub fn sub_path(base: &Path, sub: &Path) -> Result<PathBuf, String> {
    use std::path::Component;
    let real_base = base
        .canonicalize()
        .map_err(|e| format!("volume {}: {e}", base.display()))?;
    let mut cur = real_base.clone();
    for comp in sub.components() {
        let name = match comp {
            Component::Normal(n) => n,
            Component::CurDir => continue,
            _ => return Err(format!("subPath {} must be relative without '..'", sub.display())),
        };
        let next = cur.join(name);
        match std::fs::symlink_metadata(&next) {
            Ok(_) => {
                let real = next
                    .canonicalize()
                    .map_err(|e| format!("subPath {}: {e}", sub.display()))?;
                if !real.starts_with(&real_base) {
                    return Err(format!(
                        "subPath {} leaves its volume (through a symlink)",
                        sub.display()
                    ));
                }
                cur = real;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // `cur` is resolved and inside: mkdir does not follow a
                // symlink in the last component (it fails with EEXIST).
                match std::fs::create_dir(&next) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(format!("subPath {}: {e}", next.display())),
                }
                let real = next
                    .canonicalize()
                    .map_err(|e| format!("subPath {}: {e}", sub.display()))?;
                if !real.starts_with(&real_base) {
                    return Err(format!(
                        "subPath {} leaves its volume (through a symlink)",
                        sub.display()
                    ));
                }
                cur = real;
            }
            Err(e) => return Err(format!("subPath {}: {e}", next.display())),
        }
    }
    Ok(cur)
}

/// Where a static pod's subPath binds live, under its pod directory:
/// `<pod dir>/volume-subpaths/<container>/<mount index>`.
pub const SUBPATH_DIR: &str = "volume-subpaths";

/// Pin a resolved subPath so that the container mounts exactly the
/// directory (or file) that was checked, whatever a process with the
/// volume mounted renames or swaps for a symlink afterwards: `real` is
/// opened beneath the volume with `openat2(RESOLVE_BENEATH |
/// RESOLVE_NO_MAGICLINKS)` (a symlink that leaves the volume fails the
/// open) and that descriptor is bind-mounted onto `pin`, which becomes the
/// CRI mount's host path (the kubelet's `volume-subpaths` technique). A
/// previous bind at `pin` (an earlier attempt of the container) is
/// replaced. Blocking.
pub fn pin_sub_path(base: &Path, real: &Path, pin: &Path) -> Result<PathBuf, String> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let real_base = base
        .canonicalize()
        .map_err(|e| format!("volume {}: {e}", base.display()))?;
    let rel = real
        .strip_prefix(&real_base)
        .map_err(|_| format!("subPath {} leaves its volume", real.display()))?;
    let root = std::fs::File::open(&real_base).map_err(|e| format!("open volume {}: {e}", real_base.display()))?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let fd = openat2(root.as_raw_fd(), rel, how).map_err(|e| match e {
        nix::errno::Errno::EXDEV | nix::errno::Errno::ELOOP => {
            format!("subPath {} leaves its volume (through a symlink)", rel.display())
        }
        e => format!("subPath {}: {e}", rel.display()),
    })?;
    // SAFETY: openat2 just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let source = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let is_dir = std::fs::metadata(&source)
        .map_err(|e| format!("subPath {}: {e}", rel.display()))?
        .is_dir();
    crate::runtime::mounts::unmount(pin).map_err(|e| format!("unmount {}: {e}", pin.display()))?;
    if let Some(parent) = pin.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    let made = if is_dir {
        std::fs::create_dir_all(pin)
    } else {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(pin)
            .map(|_| ())
    };
    made.map_err(|e| format!("create {}: {e}", pin.display()))?;
    nix::mount::mount(
        Some(&source),
        pin,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind subPath {} onto {}: {e}", rel.display(), pin.display()))?;
    Ok(pin.to_path_buf())
}

/// Unmount every subPath bind of a static pod (before its directory is
/// deleted: deleting through a bind would delete the volume's, or a
/// hostPath's, files). False if one could not be unmounted.
pub fn unpin_sub_paths(pod_dir: &Path) -> bool {
    let mut ok = true;
    for c in std::fs::read_dir(pod_dir.join(SUBPATH_DIR))
        .into_iter()
        .flatten()
        .flatten()
    {
        for m in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
            if let Err(e) = crate::runtime::mounts::unmount(&m.path()) {
                tracing::warn!("unmount {}: {e}", m.path().display());
                ok = false;
            }
        }
    }
    ok
}

/// Make every volume exist on the host (`emptyDir` directories and tmpfs,
/// `hostPath` per its type, downward-API files). Blocking.
pub fn prepare_volumes(pod: &Pod, pod_dir: &Path) -> Result<VolumePaths, String> {
    let mut out = VolumePaths::new();
    for v in pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default() {
        out.insert(v.name.clone(), prepare_volume(pod, &v, pod_dir)?);
    }
    Ok(out)
}

fn prepare_volume(pod: &Pod, v: &Volume, pod_dir: &Path) -> Result<PathBuf, String> {
    let err = |what: String| format!("volume {:?}: {what}", v.name);
    if let Some(h) = &v.host_path {
        let path = PathBuf::from(&h.path);
        let meta = std::fs::metadata(&path);
        use std::os::unix::fs::FileTypeExt;
        match h.type_.as_deref().unwrap_or("") {
            "" => {}
            "DirectoryOrCreate" => {
                if meta.is_err() {
                    std::fs::create_dir_all(&path).map_err(|e| err(format!("create {}: {e}", path.display())))?;
                    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                        .map_err(|e| err(e.to_string()))?;
                } else if !meta.as_ref().is_ok_and(|m| m.is_dir()) {
                    return Err(err(format!("{} exists and is not a directory", path.display())));
                }
            }
            "FileOrCreate" => {
                if meta.is_err() {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&path)
                        .map_err(|e| err(format!("create {}: {e}", path.display())))?;
                    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                        .map_err(|e| err(e.to_string()))?;
                } else if !meta.as_ref().is_ok_and(|m| m.is_file()) {
                    return Err(err(format!("{} exists and is not a file", path.display())));
                }
            }
            t => {
                let m = meta.map_err(|_| err(format!("hostPath {} (type {t}) does not exist", path.display())))?;
                let ft = m.file_type();
                let ok = match t {
                    "Directory" => ft.is_dir(),
                    "File" => ft.is_file(),
                    "Socket" => ft.is_socket(),
                    "CharDevice" => ft.is_char_device(),
                    "BlockDevice" => ft.is_block_device(),
                    other => return Err(err(format!("unknown hostPath type {other:?}"))),
                };
                if !ok {
                    return Err(err(format!("{} is not a {t}", path.display())));
                }
            }
        }
        return Ok(path);
    }
    let dir = pod_dir.join("volumes").join(&v.name);
    if let Some(e) = &v.empty_dir {
        std::fs::create_dir_all(&dir).map_err(|e2| err(format!("create {}: {e2}", dir.display())))?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .map_err(|e| err(e.to_string()))?;
        if e.medium.as_deref() == Some("Memory") && !crate::runtime::mounts::is_mountpoint(&dir) {
            let size = e
                .size_limit
                .as_ref()
                .and_then(|q| quantity(q, false))
                .unwrap_or_else(|| node_memory() / 2);
            crate::runtime::mounts::tmpfs(&dir, size.max(4096) as u64).map_err(|e| err(format!("mount tmpfs: {e}")))?;
        }
        return Ok(dir);
    }
    // downwardAPI (directly or as a projected source): files of pod fields.
    let items: Vec<k8s_openapi::api::core::v1::DownwardAPIVolumeFile> = match (&v.downward_api, &v.projected) {
        (Some(d), _) => d.items.clone().unwrap_or_default(),
        (None, Some(p)) => p
            .sources
            .iter()
            .flatten()
            .filter_map(|s| s.downward_api.as_ref())
            .flat_map(|d| d.items.clone().unwrap_or_default())
            .collect(),
        _ => return Err(err("unsupported volume type".into())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| err(format!("create {}: {e}", dir.display())))?;
    let volumes = VolumePaths::new();
    let ctx = Context {
        pod,
        hash: "",
        pod_ip: String::new(),
        pod_ips: Vec::new(),
        host_ip: String::new(),
        volumes: &volumes,
        qos: Qos::BestEffort,
        node_memory: node_memory(),
        etc_hosts: None,
        pod_dir,
        seccomp_root: Path::new("/"),
    };
    for item in items {
        if item.path.starts_with('/') || item.path.split('/').any(|c| c == "..") {
            return Err(err(format!("item path {:?} must be relative without '..'", item.path)));
        }
        let value = if let Some(f) = &item.field_ref {
            field(&ctx, &f.field_path).map_err(err)?
        } else if let Some(r) = &item.resource_field_ref {
            let c = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .cloned()
                .unwrap_or_default();
            resource_field(&ctx, &c, r).map_err(err)?
        } else {
            String::new()
        };
        let file = dir.join(&item.path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
        }
        crate::fsutil::write_atomic(&file, value.as_bytes(), false)
            .map_err(|e| err(format!("write {}: {e}", file.display())))?;
        std::fs::set_permissions(
            &file,
            std::os::unix::fs::PermissionsExt::from_mode(item.mode.unwrap_or(0o644) as u32),
        )
        .map_err(|e| err(e.to_string()))?;
    }
    Ok(dir)
}

/// The node's memory, bytes.
pub fn node_memory() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The managed /etc/hosts: localhost entries, the pod's address and name,
/// and `hostAliases`.
pub fn etc_hosts(pod: &Pod, pod_ip: &str) -> String {
    let mut s = String::from("# Kubernetes-managed hosts file (nodelet).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n");
    let spec = pod.spec.clone().unwrap_or_default();
    if !pod_ip.is_empty() {
        let host = hostname(pod);
        match (&spec.subdomain, pod.metadata.namespace.as_deref()) {
            (Some(sub), Some(ns)) if !sub.is_empty() => {
                s.push_str(&format!("{pod_ip}\t{host}.{sub}.{ns}.svc.cluster.local\t{host}\n"));
            }
            _ => s.push_str(&format!("{pod_ip}\t{host}\n")),
        }
    }
    for a in spec.host_aliases.iter().flatten() {
        let names = a.hostnames.clone().unwrap_or_default();
        if !names.is_empty() {
            s.push_str(&format!(
                "\n# Entries added by HostAliases.\n{}\t{}\n",
                a.ip,
                names.join("\t")
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity(&Quantity("250m".into()), true), Some(250));
        assert_eq!(quantity(&Quantity("1.5".into()), true), Some(1500));
        assert_eq!(quantity(&Quantity("64Mi".into()), false), Some(64 << 20));
        assert_eq!(quantity(&Quantity("1G".into()), false), Some(1_000_000_000));
        assert_eq!(quantity(&Quantity("1e3".into()), false), Some(1000));
        assert_eq!(quantity(&Quantity("12x".into()), false), None);
    }

    /// Found by fuzzing (fuzz/ static_pod): huge quantities overflowed the
    /// cgroup arithmetic (`cpu: 1e18` in `pod_resources`, `memory: 9e18` in
    /// the OOM score and a resourceFieldRef), a panic in debug builds and
    /// nonsense limits in release ones; negative ones gave negative limits.
    #[test]
    fn huge_and_negative_quantities_saturate() {
        assert_eq!(quantity(&Quantity("-1".into()), false), None);
        assert_eq!(quantity(&Quantity("-100m".into()), true), None);
        assert_eq!(quantity(&Quantity("1e400".into()), false), None);
        assert_eq!(quantity(&Quantity("1e18".into()), true), Some(i64::MAX));
        let p = pod(r#"
metadata: {name: big, namespace: default, uid: u1}
spec:
  containers:
  - name: a
    image: x
    resources: {limits: {cpu: "1e18", memory: "9e18"}, requests: {cpu: "9e18", memory: "9e18"}}
    env:
    - {name: MEM, valueFrom: {resourceFieldRef: {resource: requests.memory}}}
    - {name: CPU, valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}}
  - name: b
    image: x
    resources: {limits: {cpu: "1e18", memory: "9e18"}, requests: {memory: "-5"}}
"#);
        let spec = p.spec.as_ref().unwrap();
        for q in [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort] {
            for c in &spec.containers {
                let r = container_resources(c, q, 8 << 30);
                assert!(r.cpu_shares >= 2 && r.cpu_quota >= 1000 && r.memory_limit_in_bytes >= 0);
                assert!((-997..=1000).contains(&r.oom_score_adj));
            }
        }
        let r = pod_resources(spec).unwrap();
        assert_eq!((r.cpu_quota, r.memory_limit_in_bytes), (i64::MAX, i64::MAX));
        let dir = tempfile::tempdir().unwrap();
        let vols = VolumePaths::new();
        let ctx = Context {
            pod: &p,
            hash: "h",
            pod_ip: String::new(),
            pod_ips: Vec::new(),
            host_ip: String::new(),
            volumes: &vols,
            qos: qos(spec),
            node_memory: 8 << 30,
            etc_hosts: None,
            pod_dir: dir.path(),
            seccomp_root: Path::new("/var/lib/nodelet/seccomp"),
        };
        let c = container_config(&ctx, &spec.containers[0], 0).unwrap();
        let env: HashMap<_, _> = c.envs.iter().map(|kv| (kv.key.as_str(), kv.value.as_str())).collect();
        assert_eq!(env["MEM"], "9000000000000000000");
        assert_eq!(env["CPU"], i64::MAX.to_string());
    }

    #[test]
    fn qos_classes_and_resources() {
        let be = pod("spec: {containers: [{name: a, image: x}]}");
        assert_eq!(qos(be.spec.as_ref().unwrap()), Qos::BestEffort);
        let g = pod("spec: {containers: [{name: a, image: x, resources: {limits: {cpu: 500m, memory: 64Mi}}}]}");
        assert_eq!(qos(g.spec.as_ref().unwrap()), Qos::Guaranteed);
        let b = pod("spec: {containers: [{name: a, image: x, resources: {requests: {cpu: 100m}}}]}");
        assert_eq!(qos(b.spec.as_ref().unwrap()), Qos::Burstable);
        let c = &g.spec.as_ref().unwrap().containers[0];
        let r = container_resources(c, Qos::Guaranteed, 8 << 30);
        assert_eq!(
            (r.cpu_shares, r.cpu_quota, r.cpu_period, r.memory_limit_in_bytes),
            (512, 50_000, 100_000, 64 << 20)
        );
        assert_eq!(r.oom_score_adj, -997);
    }

    #[test]
    fn env_field_refs_and_expansion() {
        let p = pod(r#"
metadata: {name: web-n1, namespace: prod, uid: u1, labels: {app: web}}
spec:
  nodeName: n1
  containers:
  - name: a
    image: x
    resources: {limits: {memory: 128Mi, cpu: 250m}}
    command: [sh, -c, "echo $(GREETING) $$(NOT)"]
    env:
    - {name: NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
    - {name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: MEM, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: CPU, valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}}
    - {name: GREETING, value: "hi $(NAME)"}
"#);
        let dir = tempfile::tempdir().unwrap();
        let vols = VolumePaths::new();
        let ctx = Context {
            pod: &p,
            hash: "h",
            pod_ip: "10.88.0.5".into(),
            pod_ips: vec!["10.88.0.5".into()],
            host_ip: "192.0.2.1".into(),
            volumes: &vols,
            qos: Qos::Burstable,
            node_memory: 8 << 30,
            etc_hosts: None,
            pod_dir: dir.path(),
            seccomp_root: Path::new("/var/lib/nodelet/seccomp"),
        };
        let c = container_config(&ctx, &p.spec.as_ref().unwrap().containers[0], 3).unwrap();
        let env: HashMap<_, _> = c.envs.iter().map(|kv| (kv.key.as_str(), kv.value.as_str())).collect();
        assert_eq!(env["NAME"], "web-n1");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["IP"], "10.88.0.5");
        assert_eq!(env["MEM"], "128");
        assert_eq!(env["CPU"], "250");
        assert_eq!(env["GREETING"], "hi web-n1");
        assert_eq!(c.command[2], "echo hi web-n1 $(NOT)");
        assert_eq!(c.log_path, "a/3.log");
        assert_eq!(c.metadata.unwrap().attempt, 3);
        assert_eq!(c.labels[LABEL_CONTAINER_NAME], "a");
        assert_eq!(c.annotations[ANN_RESTART_COUNT], "3");
    }

    #[test]
    fn a_pinned_sub_path_survives_a_swap_for_a_symlink() {
        if !nix::unistd::geteuid().is_root() {
            return; // bind mounts need root
        }
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(vol.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(vol.join("sub/mine"), "mine").unwrap();
        std::fs::write(outside.join("theirs"), "theirs").unwrap();
        let real = sub_path(&vol, Path::new("sub")).unwrap();
        let pin = dir.path().join("pod").join(SUBPATH_DIR).join("c").join("0");
        assert_eq!(pin_sub_path(&vol, &real, &pin).unwrap(), pin);
        // The container swaps the checked directory for a symlink out.
        std::fs::rename(vol.join("sub"), vol.join("old")).unwrap();
        std::os::unix::fs::symlink(&outside, vol.join("sub")).unwrap();
        assert!(pin.join("mine").exists() && !pin.join("theirs").exists());
        // Pinning again now refuses the symlink.
        let err = pin_sub_path(&vol, &vol.join("sub"), &pin).unwrap_err();
        assert!(err.contains("leaves its volume") || err.contains("subPath"), "{err}");
        assert!(unpin_sub_paths(&dir.path().join("pod")));
        assert!(!crate::runtime::mounts::is_mountpoint(&pin));
    }

    #[test]
    fn volumes_are_prepared_on_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host/data");
        let p = pod(&format!(
            r#"
metadata: {{name: v, namespace: d, labels: {{a: b}}, annotations: {{x: y}}}}
spec:
  containers: [{{name: a, image: x}}]
  volumes:
  - {{name: hp, hostPath: {{path: {}, type: DirectoryOrCreate}}}}
  - {{name: ed, emptyDir: {{}}}}
  - {{name: info, downwardAPI: {{items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]}}}}
  - {{name: proj, projected: {{sources: [{{downwardAPI: {{items: [{{path: ns, fieldRef: {{fieldPath: metadata.namespace}}}}]}}}}]}}}}
"#,
            host.display()
        ));
        let vols = prepare_volumes(&p, &dir.path().join("pod")).unwrap();
        assert!(host.is_dir());
        assert!(vols["ed"].is_dir());
        assert_eq!(std::fs::read_to_string(vols["info"].join("labels")).unwrap(), "a=\"b\"");
        assert_eq!(std::fs::read_to_string(vols["proj"].join("ns")).unwrap(), "d");
        // A subPath that escapes through a symlink is refused.
        std::os::unix::fs::symlink("/etc", vols["ed"].join("escape")).unwrap();
        assert!(sub_path(&vols["ed"], Path::new("escape")).is_err());
        // Nor may a missing directory below such a symlink be created on
        // the host.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), vols["ed"].join("out")).unwrap();
        assert!(sub_path(&vols["ed"], Path::new("out/made/here")).is_err());
        assert!(!outside.path().join("made").exists());
        assert!(sub_path(&vols["ed"], Path::new("../x")).is_err());
        // A symlink that stays inside is followed.
        std::fs::create_dir_all(vols["ed"].join("inner")).unwrap();
        std::os::unix::fs::symlink("inner", vols["ed"].join("alias")).unwrap();
        assert_eq!(
            sub_path(&vols["ed"], Path::new("alias/dir")).unwrap(),
            vols["ed"].canonicalize().unwrap().join("inner/dir")
        );
        assert!(sub_path(&vols["ed"], Path::new("inner/dir")).is_ok());
        let bad = pod("spec: {containers: [{name: a, image: x}], volumes: [{name: s, hostPath: {path: /nonexistent/x, type: Socket}}]}");
        assert!(prepare_volumes(&bad, dir.path())
            .unwrap_err()
            .contains("does not exist"));
    }

    #[test]
    fn hosts_file_with_aliases() {
        let p = pod("metadata: {name: web, namespace: ns}\nspec: {subdomain: sub, containers: [], hostAliases: [{ip: 10.1.2.3, hostnames: [foo, bar]}]}");
        let h = etc_hosts(&p, "10.88.0.9");
        assert!(h.contains("10.88.0.9\tweb.sub.ns.svc.cluster.local\tweb"));
        assert!(h.contains("10.1.2.3\tfoo\tbar"));
    }
}
