//! Pod sandboxes: an infra process per pod holding its namespaces, a pod
//! cgroup under the kubelet's QoS layout, the pod's /etc files and shared
//! /dev/shm.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::records::{self, SandboxRecord};
use super::{infra_client, io_err, mounts, new_id, Result, Runtime, RuntimeError};
use crate::infra::protocol::{InfraConfig, Request};

/// The pod's /dev/shm size, as containerd and the Docker default.
const SHM_SIZE: u64 = 64 << 20;
/// How long an infra process gets to come up.
const INFRA_START_TIMEOUT: Duration = Duration::from_secs(10);

const NS_POD: i32 = cri::NamespaceMode::Pod as i32;
const NS_CONTAINER: i32 = cri::NamespaceMode::Container as i32;
const NS_NODE: i32 = cri::NamespaceMode::Node as i32;

/// `/proc/<pid>/stat` field 22: when the process started.
pub fn process_start_time(pid: i32) -> Option<u64> {
    stat_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn stat_start_time(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

/// Does an error's text say the node ran out of descriptors or memory
/// (worth a retry once load drops)?
fn out_of_resources(text: &str) -> bool {
    ["Too many open files", "Cannot allocate memory"]
        .iter()
        .any(|t| text.contains(t))
}

/// Is this pod's infra process (the very one we started) alive?
pub fn infra_alive(p: &SandboxRecord) -> bool {
    if p.infra_pid <= 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{}/stat", p.infra_pid)) {
        Ok(stat) => {
            let zombie = stat.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z'));
            stat_start_time(&stat) == Some(p.infra_start_time) && !zombie
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        // Unreadable for now (out of descriptors): a pod must not turn
        // not-ready for that. Whether the PID exists needs no descriptor.
        Err(_) => {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.infra_pid), None) != Err(nix::errno::Errno::ESRCH)
        }
    }
}

fn invalid(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidArgument(msg.into())
}

/// The pod's QoS tier as the kubelet lays cgroups out, from pod-level
/// resources when the caller gives no cgroup parent.
fn qos_dir(resources: Option<&cri::LinuxContainerResources>) -> &'static str {
    match resources {
        Some(r) if r.memory_limit_in_bytes > 0 && r.cpu_quota > 0 => "",
        Some(r) if r.memory_limit_in_bytes > 0 || r.cpu_quota > 0 || r.cpu_shares > 0 => "burstable",
        _ => "besteffort",
    }
}

/// Pod-level limits: resources plus overhead.
fn pod_limits(linux: &cri::LinuxPodSandboxConfig, pids_limit: i64) -> Option<oci_spec::runtime::LinuxResources> {
    let sum = |f: fn(&cri::LinuxContainerResources) -> i64| -> i64 {
        linux.resources.as_ref().map(f).unwrap_or(0) + linux.overhead.as_ref().map(f).unwrap_or(0)
    };
    let memory = sum(|r| r.memory_limit_in_bytes);
    let quota = sum(|r| r.cpu_quota);
    let shares = sum(|r| r.cpu_shares);
    let period = linux
        .resources
        .as_ref()
        .map(|r| r.cpu_period)
        .filter(|p| *p > 0)
        .unwrap_or(100_000);
    if memory <= 0 && quota <= 0 && shares <= 0 && pids_limit <= 0 {
        return None;
    }
    let mut cpu = oci_spec::runtime::LinuxCpu::default();
    if quota > 0 {
        cpu.set_quota(Some(quota));
        cpu.set_period(Some(period as u64));
    }
    if shares > 0 {
        cpu.set_shares(Some(shares as u64));
    }
    let mut res = oci_spec::runtime::LinuxResources::default();
    if quota > 0 || shares > 0 {
        res.set_cpu(Some(cpu));
    }
    if pids_limit > 0 {
        let mut p = oci_spec::runtime::LinuxPids::default();
        p.set_limit(pids_limit);
        res.set_pids(Some(p));
    }
    if memory > 0 {
        let mut m = oci_spec::runtime::LinuxMemory::default();
        m.set_limit(Some(memory));
        res.set_memory(Some(m));
    }
    Some(res)
}

fn host_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// `/etc/resolv.conf` for the pod: from DNSConfig, else the host's (for a
/// pod network without the loopback resolvers it cannot reach, as the
/// kubelet filters them).
pub fn resolv_conf(dns: Option<&cri::DnsConfig>, host_network: bool, host: &str) -> String {
    if let Some(d) = dns.filter(|d| !d.servers.is_empty() || !d.searches.is_empty() || !d.options.is_empty()) {
        let mut s = String::new();
        for n in &d.servers {
            s.push_str(&format!("nameserver {n}\n"));
        }
        if !d.searches.is_empty() {
            s.push_str(&format!("search {}\n", d.searches.join(" ")));
        }
        if !d.options.is_empty() {
            s.push_str(&format!("options {}\n", d.options.join(" ")));
        }
        return s;
    }
    if host_network {
        return host.to_string();
    }
    host.lines()
        .filter(|l| {
            let mut f = l.split_whitespace();
            !(f.next() == Some("nameserver")
                && f.next()
                    .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
                    .is_some_and(|ip| ip.is_loopback()))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
    )
}

/// Check a hostname the way sethostname(2) and RFC 1123 allow.
fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl Runtime {
    pub async fn run_pod(self: &Arc<Self>, config: cri::PodSandboxConfig, runtime_handler: &str) -> Result<String> {
        if !runtime_handler.is_empty() && runtime_handler != "nodelet" && runtime_handler != "runc" {
            return Err(RuntimeError::NotFound {
                kind: "runtime handler",
                id: runtime_handler.to_string(),
            });
        }
        let meta = config.metadata.clone().ok_or_else(|| invalid("metadata is required"))?;
        if meta.name.is_empty() || meta.namespace.is_empty() || meta.uid.is_empty() {
            return Err(invalid(
                "metadata.name, metadata.namespace and metadata.uid are required",
            ));
        }
        for (what, v) in [("name", &meta.name), ("namespace", &meta.namespace), ("uid", &meta.uid)] {
            if v.contains(['/', '\0']) || v == "." || v == ".." {
                return Err(invalid(format!(
                    "metadata.{what} {v:?} must not contain '/' or NUL, nor be '.' or '..'"
                )));
            }
        }
        let linux = config.linux.clone().unwrap_or_default();
        let ns = linux
            .security_context
            .as_ref()
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let host_network = ns.network == NS_NODE;
        let host_ipc = ns.ipc == NS_NODE;
        if ns.network == NS_CONTAINER || ns.ipc == NS_CONTAINER {
            return Err(invalid("namespace_options: network and ipc must be POD or NODE"));
        }
        if ns.pid == cri::NamespaceMode::Target as i32 {
            return Err(invalid("namespace_options.pid: TARGET is only valid for containers"));
        }
        let userns = match ns.userns_options.as_ref() {
            Some(u) if u.mode == NS_POD => {
                userns_combination(&ns)?;
                super::userns::supported()?;
                Some(u)
            }
            Some(u) if u.mode == NS_NODE => None,
            Some(u) => {
                return Err(invalid(format!(
                    "namespace_options.userns_options.mode: {} is not supported for a pod (POD or NODE)",
                    cri::NamespaceMode::try_from(u.mode)
                        .map(|m| m.as_str_name())
                        .unwrap_or("unknown")
                )))
            }
            None => None,
        };
        let mut sysctls = BTreeMap::new();
        for (k, v) in &linux.sysctls {
            match crate::infra::sysctl_namespace(k) {
                Some("network") if host_network => {
                    return Err(invalid(format!(
                        "sysctl {k}: a pod on the host network cannot set network sysctls"
                    )))
                }
                Some("ipc") if host_ipc => {
                    return Err(invalid(format!(
                        "sysctl {k}: a pod on the host IPC namespace cannot set IPC sysctls"
                    )))
                }
                Some(_) if k.contains("..") || k.contains('/') => {
                    return Err(invalid(format!("sysctl {k}: invalid name")))
                }
                Some(_) => {
                    sysctls.insert(k.clone(), v.clone());
                }
                None => return Err(invalid(format!("sysctl {k} is not namespaced; a pod may not set it"))),
            }
        }
        let hostname = if host_network {
            host_hostname()
        } else if !config.hostname.is_empty() {
            config.hostname.clone()
        } else {
            meta.name.chars().take(63).collect()
        };
        if !host_network && !valid_hostname(&hostname) {
            return Err(invalid(format!("hostname {hostname:?} is not a valid host name")));
        }
        if !config.log_directory.is_empty() && !super::is_clean_absolute(&config.log_directory) {
            return Err(invalid(format!(
                "log_directory {:?} must be an absolute path without '..'",
                config.log_directory
            )));
        }
        let cgroup = if linux.cgroup_parent.is_empty() {
            let qos = qos_dir(linux.resources.as_ref());
            let parent = self.config.cgroups.parent.trim_end_matches('/');
            format!("{parent}/{}{}pod{}", qos, if qos.is_empty() { "" } else { "/" }, "{id}")
        } else {
            if !linux.cgroup_parent.starts_with('/') || linux.cgroup_parent.contains("..") {
                return Err(invalid(format!(
                    "linux.cgroup_parent {:?} must be an absolute cgroupfs path (the systemd driver is not supported)",
                    linux.cgroup_parent
                )));
            }
            linux.cgroup_parent.clone()
        };

        let name = format!("{}_{}_{}_{}", meta.name, meta.namespace, meta.uid, meta.attempt);
        let id = new_id();
        let cgroup = cgroup.replace("{id}", &id);
        {
            let mut idx = self.index.lock().expect("index");
            if let Some(other) = idx.names.get(&format!("pod:{name}")) {
                return Err(RuntimeError::AlreadyExists(format!(
                    "pod sandbox name {name:?} is already used by {other}"
                )));
            }
            idx.names.insert(format!("pod:{name}"), id.clone());
        }
        let userns = match userns.map(|u| self.reserve_userns(&id, u)).transpose() {
            Ok(r) => r,
            Err(e) => {
                self.index.lock().expect("index").names.remove(&format!("pod:{name}"));
                return Err(e);
            }
        };
        let _guard = self.lock(&id).await;
        let record = SandboxRecord {
            id: id.clone(),
            name: name.clone(),
            config: config.clone(),
            runtime_handler: runtime_handler.to_string(),
            created_at: crate::unix_nanos(),
            ready: true,
            infra_pid: 0,
            infra_start_time: 0,
            cgroup: cgroup.clone(),
            host_network,
            host_ipc,
            pid_mode: ns.pid,
            shm: None,
            stopped: false,
            network: None,
            userns,
            setting_up: true,
        };
        // Recorded before anything exists, so that a crash from here on is
        // undone at the next start (`abandon_setup`).
        if let Err(e) = records::save_pod(&self.pod_record_path(&id), &record) {
            let mut idx = self.index.lock().expect("index");
            idx.names.remove(&format!("pod:{name}"));
            idx.userns.remove(&id);
            return Err(io_err("write pod record")(e));
        }
        let setup = self
            .setup_pod(record, &hostname, sysctls, host_network, host_ipc, ns.pid, &linux)
            .await;
        match setup {
            Ok(record) => {
                self.index.lock().expect("index").pods.insert(id.clone(), record);
                self.changes.mark(&id);
                tracing::info!(pod = %id, name = %name, "pod sandbox running");
                Ok(id)
            }
            Err((e, record)) => {
                self.teardown_pod_resources(&record).await;
                let mut idx = self.index.lock().expect("index");
                idx.names.remove(&format!("pod:{name}"));
                idx.userns.remove(&id);
                Err(e)
            }
        }
    }

    /// Reserve the pod's host ID range: the kubelet's mappings when it
    /// sent some (validated), else the first free one of the configured
    /// span. Held in the index until the pod is removed (or its set-up
    /// fails), and recorded in the pod record.
    fn reserve_userns(&self, id: &str, u: &cri::UserNamespace) -> Result<super::userns::IdRange> {
        let cfg = &self.config.user_namespaces;
        let mut idx = self.index.lock().expect("index");
        let used: Vec<super::userns::IdRange> = idx.userns.values().copied().collect();
        let range = if u.uids.is_empty() && u.gids.is_empty() {
            super::userns::allocate(cfg.first_id, cfg.max_pods, &used)?
        } else {
            super::userns::validate(&u.uids, &u.gids, &used)?
        };
        idx.userns.insert(id.to_string(), range);
        Ok(range)
    }

    /// Everything a pod needs on the host. On error the partial record is
    /// returned so the caller can undo what was done.
    #[allow(clippy::too_many_arguments)]
    async fn setup_pod(
        self: &Arc<Self>,
        mut record: SandboxRecord,
        hostname: &str,
        sysctls: BTreeMap<String, String>,
        host_network: bool,
        host_ipc: bool,
        pid_mode: i32,
        linux: &cri::LinuxPodSandboxConfig,
    ) -> std::result::Result<SandboxRecord, (RuntimeError, SandboxRecord)> {
        macro_rules! tri {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Err((e.into(), record)),
                }
            };
        }
        let dir = self.pod_state_dir(&record.id);
        tri!(crate::fsutil::ensure_dir(&dir.join("runc"), 0o711).map_err(io_err(format!("create {}", dir.display()))));
        if record.userns.is_some() {
            // The container's init opens the pod's files, namespaces and its
            // root as the pod's root, nobody on the host: it needs search
            // permission on the way there.
            for d in [&dir, &self.config.root_dir.join("containers")] {
                tri!(crate::fsutil::ensure_traversable(d).map_err(io_err(format!("make {} traversable", d.display()))));
            }
        }
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let resolv = resolv_conf(record.config.dns_config.as_ref(), host_network, &host_resolv);
        let hosts = if host_network {
            std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| hosts_file(hostname))
        } else {
            hosts_file(hostname)
        };
        for (file, text) in [
            ("hostname", format!("{hostname}\n")),
            ("hosts", hosts),
            ("resolv.conf", resolv),
        ] {
            tri!(std::fs::write(dir.join(file), text).map_err(io_err(format!("write pod {file}"))));
        }
        if !host_ipc {
            let shm = dir.join("shm");
            tri!(std::fs::create_dir_all(&shm).map_err(io_err("create pod shm dir")));
            tri!(mounts::tmpfs(&shm, SHM_SIZE).map_err(io_err("mount the pod's /dev/shm")));
            record.shm = Some(shm);
        }
        let cg = record.cgroup.clone();
        let limits = pod_limits(linux, self.config.cgroups.pod_pids_limit);
        let rt = Arc::clone(self);
        let cg_result = tokio::task::spawn_blocking(move || {
            rt.cgroups.create(&cg)?;
            if let Some(l) = limits {
                rt.cgroups.apply(&cg, &l)?;
            }
            Ok::<_, RuntimeError>(())
        })
        .await
        .map_err(|e| RuntimeError::Internal(e.to_string()));
        tri!(tri!(cg_result));

        let infra = InfraConfig {
            pod_id: record.id.clone(),
            new_net: !host_network,
            new_ipc: !host_ipc,
            new_uts: !host_network,
            new_pid: pid_mode == NS_POD,
            hostname: hostname.to_string(),
            sysctls,
            cgroup_procs: self.cgroups.procs_files(&record.cgroup),
            runtime_root: dir.join("runc"),
            userns: record.userns,
        };
        tri!(std::fs::write(
            dir.join(crate::infra::CONFIG),
            serde_json::to_vec(&infra).expect("infra config")
        )
        .map_err(io_err("write infra.json")));
        let (pid, start_time) = tri!(spawn_infra(&dir).await);
        crate::metrics::infra_started();
        record.infra_pid = pid;
        record.infra_start_time = start_time;
        // Pin the pod's namespaces to paths under its state directory.
        // Container specs join these paths, which mean the same thing in
        // the host's view and in the infra's helpers (whose /proc is the
        // pod's), and a network plugin gets a netns path.
        tri!(std::fs::create_dir_all(dir.join("ns")).map_err(io_err("create the pod's ns directory")));
        for ns in pod_namespaces(host_network, host_ipc, pid_mode) {
            tri!(
                mounts::bind_file(&PathBuf::from(format!("/proc/{pid}/ns/{ns}")), &dir.join("ns").join(ns))
                    .map_err(io_err(format!("pin the pod's {ns} namespace")))
            );
        }
        self.watch_infra(record.id.clone(), pid);
        if !host_network {
            // Recorded before the ADD, so a crash during it is undone at
            // start-up rather than leaking an address.
            record.network = Some(crate::network::Attachment {
                phase: "adding".into(),
                ..Default::default()
            });
            tri!(records::save_pod(&self.pod_record_path(&record.id), &record).map_err(io_err("write pod record")));
            let rt = Arc::clone(self);
            let rec = record.clone();
            let attached = tokio::task::spawn_blocking(move || {
                let netns = rt.pod_state_dir(&rec.id).join("ns/net");
                rt.network.setup(&pod_ref(&rec, &netns))
            })
            .await
            .map_err(|e| RuntimeError::Internal(e.to_string()));
            let attachment = tri!(tri!(attached).map_err(RuntimeError::from));
            record.network = Some(attachment);
        }
        record.setting_up = false;
        tri!(records::save_pod(&self.pod_record_path(&record.id), &record).map_err(io_err("write pod record")));
        Ok(record)
    }

    /// Undo what `setup_pod` did (also the end of RemovePodSandbox).
    async fn teardown_pod_resources(self: &Arc<Self>, record: &SandboxRecord) {
        if record.network.is_some() {
            // A DEL that failed for want of descriptors or memory (a setup
            // that failed for the same reason, say) is retried for a few
            // seconds: giving up would leak the pod's addresses until the
            // next start.
            let mut delay = Duration::from_millis(100);
            let rec = record.clone();
            for attempt in 0.. {
                let rt = Arc::clone(self);
                let mut r = rec.clone();
                let result = tokio::task::spawn_blocking(move || rt.release_network(&mut r).map(|()| r)).await;
                match result {
                    Ok(Ok(_)) | Err(_) => break,
                    Ok(Err(e)) if attempt < 5 && out_of_resources(&e.to_string()) => {
                        tracing::warn!(pod = %rec.id, "releasing the pod's network: {e}; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(pod = %rec.id, "releasing the pod's network: {e}");
                        break;
                    }
                }
            }
        }
        if record.infra_pid > 0 && infra_alive(record) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(record.infra_pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let dir = self.pod_state_dir(&record.id);
        let _ = mounts::unmount(&dir.join("shm"));
        // A pod that failed half-way still has its namespaces pinned;
        // a bind mount left there would keep the directory busy for ever.
        unpin_namespaces(&dir);
        let rt = Arc::clone(self);
        let cg = record.cgroup.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = rt.cgroups.remove(&cg) {
                tracing::warn!("removing pod cgroup {cg}: {e}");
            }
        })
        .await;
        let _ = crate::fsutil::remove_all(&self.pod_record_path(&record.id));
        self.trash(&dir, &self.config.state_dir);
    }

    /// Reap and account for an infra process when it exits.
    pub(crate) fn watch_infra(self: &Arc<Self>, pod: String, pid: i32) {
        let rt = Arc::clone(self);
        tokio::spawn(async move {
            wait_for_exit(pid).await;
            rt.infra_exited(&pod, pid).await;
        });
    }

    async fn infra_exited(self: &Arc<Self>, pod: &str, pid: i32) {
        let _guard = self.lock(pod).await;
        let record = {
            let mut idx = self.index.lock().expect("index");
            match idx.pods.get_mut(pod) {
                Some(p) if p.infra_pid == pid && p.ready => {
                    p.ready = false;
                    Some(p.clone())
                }
                _ => None,
            }
        };
        let Some(record) = record else { return };
        tracing::warn!(pod = %pod, pid, "the pod's infra process died; the pod is not ready");
        crate::metrics::infra_died();
        let _ = records::save_pod(&self.pod_record_path(pod), &record);
        for c in self.pod_containers(pod) {
            self.settle_dead(&c);
        }
        self.changes.mark(pod);
    }

    pub(crate) fn pod_containers(&self, pod: &str) -> Vec<super::ContainerRecord> {
        self.index
            .lock()
            .expect("index")
            .containers
            .values()
            .filter(|c| c.pod_id == pod)
            .cloned()
            .collect()
    }

    /// Stop every container (forcibly) and the infra; the pod becomes not
    /// ready. Idempotent; an unknown pod is fine.
    pub async fn stop_pod(self: &Arc<Self>, id: &str) -> Result<()> {
        let _guard = self.lock(id).await;
        let Some(record) = self.index.lock().expect("index").pods.get(id).cloned() else {
            return Ok(());
        };
        self.stop_pod_locked(record).await
    }

    async fn stop_pod_locked(self: &Arc<Self>, mut record: SandboxRecord) -> Result<()> {
        if record.stopped && !infra_alive(&record) {
            return Ok(());
        }
        let dir = self.pod_state_dir(&record.id);
        if infra_alive(&record) {
            // The infra kills every container, waits for them and exits.
            match infra_client::call(&dir, &Request::Shutdown, Duration::from_secs(30)).await {
                Ok(_) => wait_gone(&record, Duration::from_secs(10)).await,
                Err(e) => tracing::warn!(pod = %record.id, "infra shutdown: {e}; killing it"),
            }
            if infra_alive(&record) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(record.infra_pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                wait_gone(&record, Duration::from_secs(10)).await;
            }
        }
        // Whatever escaped its container's PID namespace is killed through
        // the cgroup.
        let containers = self.pod_containers(&record.id);
        for c in &containers {
            self.settle_dead(c);
        }
        let rt = Arc::clone(self);
        let cgroups: Vec<String> = containers.iter().map(|c| c.cgroup.clone()).collect();
        // A stopped pod's containers can never run again (the CRI creates
        // new ones), so their roots are unmounted now rather than at removal.
        let roots: Vec<PathBuf> = containers.iter().map(|c| c.rootfs.clone()).collect();
        let _ = tokio::task::spawn_blocking(move || {
            for cg in cgroups {
                rt.cgroups.kill(&cg);
            }
            for root in roots {
                if let Err(e) = mounts::unmount(&root) {
                    tracing::warn!("unmount {}: {e}", root.display());
                }
            }
        })
        .await;
        if let Some(shm) = &record.shm {
            mounts::unmount(shm).map_err(io_err("unmount the pod's /dev/shm"))?;
        }
        if record.network.is_some() {
            let rt = Arc::clone(self);
            let mut rec = record.clone();
            record = tokio::task::spawn_blocking(move || rt.release_network(&mut rec).map(|()| rec))
                .await
                .map_err(|e| RuntimeError::Internal(e.to_string()))??;
        }
        unpin_namespaces(&dir);
        if record.ready {
            record.ready = false;
            records::save_pod(&self.pod_record_path(&record.id), &record).map_err(io_err("write pod record"))?;
            self.index
                .lock()
                .expect("index")
                .pods
                .insert(record.id.clone(), record.clone());
            self.changes.mark(&record.id);
            tracing::info!(pod = %record.id, "pod sandbox stopped");
        }
        Ok(())
    }

    /// Stop the pod if needed, remove its containers and everything it
    /// had. Idempotent.
    pub async fn remove_pod(self: &Arc<Self>, id: &str) -> Result<()> {
        let _guard = self.lock(id).await;
        let Some(record) = self.index.lock().expect("index").pods.get(id).cloned() else {
            return Ok(());
        };
        self.stop_pod_locked(record.clone()).await?;
        for c in self.pod_containers(id) {
            self.remove_container(&c.id).await?;
        }
        self.teardown_pod_resources(&record).await;
        {
            let mut idx = self.index.lock().expect("index");
            idx.pods.remove(id);
            idx.names.remove(&format!("pod:{}", record.name));
            idx.userns.remove(id);
        }
        self.forget_lock(id);
        self.changes.mark(id);
        tracing::info!(pod = %id, "pod sandbox removed");
        Ok(())
    }
}

impl Runtime {
    /// Undo a RunPodSandbox that a crash interrupted (its record still
    /// says `setting_up`): release the network, kill the infra and
    /// whatever joined the pod's cgroup, unmount, delete the record and
    /// the state directory. Blocking; used by start-up recovery.
    pub(crate) fn abandon_setup(&self, record: &mut SandboxRecord) {
        tracing::warn!(pod = %record.id, "removing a pod whose RunPodSandbox was interrupted");
        if let Err(e) = self.release_network(record) {
            tracing::warn!(pod = %record.id, "releasing the pod's network: {e}");
        }
        if record.infra_pid > 0 && infra_alive(record) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(record.infra_pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let dir = self.pod_state_dir(&record.id);
        unpin_namespaces(&dir);
        if let Err(e) = mounts::unmount(&dir.join("shm")) {
            tracing::warn!(pod = %record.id, "unmount the pod's /dev/shm: {e}");
        }
        // Removing the cgroup kills what runs in it: the infra (it joins
        // the cgroup first thing) even when its PID was never recorded.
        if let Err(e) = self.cgroups.remove(&record.cgroup) {
            tracing::warn!(pod = %record.id, "removing pod cgroup {}: {e}", record.cgroup);
        }
        if let Err(e) = crate::fsutil::remove_all(&dir) {
            tracing::warn!(pod = %record.id, "removing {}: {e}", dir.display());
        }
        if let Err(e) = crate::fsutil::remove_all(&self.pod_record_path(&record.id)) {
            tracing::warn!(pod = %record.id, "removing the pod record: {e}");
        }
    }

    /// CNI DEL for a pod, recorded as `deleting` first so a crash midway
    /// is finished at the next start. Idempotent. Blocking.
    pub(crate) fn release_network(&self, record: &mut SandboxRecord) -> Result<()> {
        let Some(att) = record.network.clone() else {
            return Ok(());
        };
        record.network = Some(crate::network::Attachment {
            phase: "deleting".into(),
            ..att.clone()
        });
        records::save_pod(&self.pod_record_path(&record.id), record).map_err(io_err("write pod record"))?;
        let netns = self.pod_state_dir(&record.id).join("ns/net");
        self.network.teardown(&pod_ref(record, &netns), &att)?;
        record.network = None;
        records::save_pod(&self.pod_record_path(&record.id), record).map_err(io_err("write pod record"))?;
        Ok(())
    }
}

/// The network's view of a pod.
fn pod_ref<'a>(record: &'a SandboxRecord, netns: &'a Path) -> crate::network::PodRef<'a> {
    let meta = record.config.metadata.as_ref();
    crate::network::PodRef {
        id: &record.id,
        netns,
        name: meta.map(|m| m.name.as_str()).unwrap_or_default(),
        namespace: meta.map(|m| m.namespace.as_str()).unwrap_or_default(),
        uid: meta.map(|m| m.uid.as_str()).unwrap_or_default(),
        port_mappings: &record.config.port_mappings,
    }
}

/// Start `nodelet infra DIR` and wait for its handshake. Returns the
/// infra's host PID and start time.
async fn spawn_infra(dir: &Path) -> Result<(i32, u64)> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(crate::infra::LOG))
        .map_err(io_err("open infra log"))?;
    let mut child = tokio::process::Command::new("/proc/self/exe")
        .arg("infra")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(io_err("start the infra process"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| RuntimeError::Internal("infra stdout".into()))?;
    // "PID" comes from the first process and "READY" from the infra it
    // forked: either may arrive first.
    let handshake = async {
        let mut lines = BufReader::new(stdout).lines();
        let (mut pid, mut ready) = (None, false);
        while let Some(line) = lines.next_line().await.map_err(io_err("read the infra handshake"))? {
            if let Some(p) = line.strip_prefix("PID ") {
                pid = p.trim().parse::<i32>().ok();
            } else if line == "READY" {
                ready = true;
            } else if let Some(why) = line.strip_prefix("ERROR ") {
                return Err(RuntimeError::FailedPrecondition(format!(
                    "setting up the pod failed: {why}"
                )));
            }
            if let (Some(p), true) = (pid, ready) {
                return Ok(p);
            }
        }
        Err(RuntimeError::Internal("the infra process exited during set-up".into()))
    };
    let pid = match tokio::time::timeout(INFRA_START_TIMEOUT, handshake).await {
        Ok(r) => r,
        Err(_) => Err(RuntimeError::DeadlineExceeded(
            "the infra process did not come up in time".into(),
        )),
    };
    // The first process exits right after forking the infra proper.
    let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
    let pid = match pid {
        Ok(p) => p,
        Err(e) => {
            // A half-started infra must not survive: it is our child's
            // child, found through the handshake if it got that far.
            return Err(e);
        }
    };
    let start = process_start_time(pid).ok_or_else(|| RuntimeError::Internal("the infra process vanished".into()))?;
    Ok((pid, start))
}

/// Wait until `pid` exits, reaping it if it is our child (the daemon is a
/// subreaper, so infra processes it started are re-parented to it).
async fn wait_for_exit(pid: i32) {
    // Out of descriptors (EMFILE) is not an exit: a live pod must not be
    // marked dead because the daemon could not open a pidfd for a while.
    // Poll (waitid, kill: no descriptor needed) until one can be opened.
    let mut delay = Duration::from_millis(50);
    let mut warned = false;
    loop {
        match pidfd(pid) {
            Ok(None) => return,
            Ok(Some(owned)) => {
                // SAFETY: the AsyncFd owns `owned` (an OwnedFd), so the
                // descriptor stays open and the same for the AsyncFd's
                // whole life.
                match unsafe { tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
                {
                    Ok(afd) => {
                        let _ = afd.readable().await;
                        let mut info: libc::siginfo_t =
                            // SAFETY: siginfo_t is plain data; zeroed is valid.
                            unsafe { std::mem::zeroed() };
                        // SAFETY: P_PIDFD with our descriptor; `info`
                        // outlives the call. ECHILD (not our child: it came
                        // from a previous daemon) is fine.
                        unsafe {
                            libc::waitid(
                                libc::P_PIDFD,
                                std::os::fd::AsRawFd::as_raw_fd(afd.get_ref()) as libc::id_t,
                                &mut info,
                                libc::WEXITED | libc::WNOHANG,
                            )
                        };
                        return;
                    }
                    Err(e) => {
                        if !warned {
                            tracing::warn!(pid, "cannot watch the infra process: {e}; polling");
                            warned = true;
                        }
                    }
                }
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(pid, "cannot watch the infra process: {e}; polling");
                    warned = true;
                }
            }
        }
        if exited_without_fd(pid) {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// Has `pid` exited? Reaps it when it is our child; needs no descriptor.
fn exited_without_fd(pid: i32) -> bool {
    let mut info: libc::siginfo_t =
        // SAFETY: siginfo_t is plain data; zeroed is valid.
        unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall; `info` outlives it.
    let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG) };
    if rc == 0 {
        // SAFETY: waitid filled `info` (si_pid 0: still running).
        return unsafe { info.si_pid() } == pid;
    }
    // Not our child: does it still exist?
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH)
}

/// Wait until the infra is gone (or `limit` passes), woken by its pidfd.
async fn wait_gone(p: &SandboxRecord, limit: Duration) {
    if !infra_alive(p) {
        return;
    }
    let deadline = tokio::time::Instant::now() + limit;
    if let Ok(Some(fd)) = pidfd(p.infra_pid) {
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the
        // same for the AsyncFd's whole life.
        if let Ok(afd) = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        {
            let _ = tokio::time::timeout(limit, afd.readable()).await;
            return;
        }
    }
    // No descriptor to wait on (EMFILE): poll.
    while tokio::time::Instant::now() < deadline && infra_alive(p) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A pidfd for `pid`; `None` when the process is gone, an error when one
/// cannot be opened now (out of descriptors).
fn pidfd(pid: i32) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: the syscall just returned this descriptor; we own it.
    Ok(Some(unsafe {
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
    }))
}

/// What a pod with its own user namespace may not also ask for. The
/// kubelet refuses `hostUsers: false` with hostNetwork, hostPID and hostIPC;
/// a PID namespace shared by the pod would need the infra (its PID 1) inside
/// the pod's user namespace, which it cannot be (it keeps host privileges).
fn userns_combination(ns: &cri::NamespaceOption) -> Result<()> {
    for (what, mode) in [("network", ns.network), ("ipc", ns.ipc), ("pid", ns.pid)] {
        if mode == NS_NODE {
            return Err(invalid(format!(
                "namespace_options.{what}: NODE cannot be combined with a pod user namespace (userns_options.mode POD)"
            )));
        }
    }
    if ns.pid == NS_POD {
        return Err(invalid(
            "namespace_options.pid: POD (a shared process namespace) cannot be combined with a pod user namespace (userns_options.mode POD) in nodelet; use CONTAINER",
        ));
    }
    Ok(())
}

/// The namespaces a pod has of its own (and pins under `ns/`).
pub fn pod_namespaces(host_network: bool, host_ipc: bool, pid_mode: i32) -> Vec<&'static str> {
    let mut v = Vec::new();
    if !host_network {
        v.extend(["net", "uts"]);
    }
    if !host_ipc {
        v.push("ipc");
    }
    if pid_mode == NS_POD {
        v.push("pid");
    }
    v
}

/// Release the pod's pinned namespaces (the last reference to its network
/// namespace once the infra is gone).
fn unpin_namespaces(dir: &Path) {
    for e in std::fs::read_dir(dir.join("ns")).into_iter().flatten().flatten() {
        if let Err(e2) = mounts::unmount(&e.path()) {
            tracing::warn!("unmount {}: {e2}", e.path().display());
        }
        let _ = std::fs::remove_file(e.path());
    }
}

/// The pod's /etc files and shm, for container specs.
pub fn pod_files(dir: &Path, shm: Option<&PathBuf>) -> super::spec::PodFiles {
    super::spec::PodFiles {
        hosts: dir.join("hosts"),
        resolv_conf: dir.join("resolv.conf"),
        hostname: dir.join("hostname"),
        shm: shm.cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_pids_limit_and_log_directory() {
        let none = cri::LinuxPodSandboxConfig::default();
        assert!(pod_limits(&none, -1).is_none());
        assert!(pod_limits(&none, 0).is_none());
        let l = pod_limits(&none, 64).expect("a pids limit alone is a limit");
        assert_eq!(l.pids().as_ref().map(|p| p.limit()), Some(64));
        assert!(l.cpu().is_none() && l.memory().is_none());
        assert!(super::super::is_clean_absolute("/var/log/pods/ns_name_uid"));
        assert!(super::super::is_clean_absolute("/var/log/./pods//x"));
        assert!(!super::super::is_clean_absolute("/var/log/pods/../../etc"));
        assert!(!super::super::is_clean_absolute("var/log"));
        assert!(!super::super::is_clean_absolute("/var/log\0x"));
    }

    #[test]
    fn resolv_conf_sources() {
        let host = "nameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch corp\n";
        assert_eq!(resolv_conf(None, false, host), "nameserver 10.0.0.2\nsearch corp\n");
        assert_eq!(resolv_conf(None, true, host), host);
        let dns = cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&dns), false, host),
            "nameserver 10.96.0.10\nsearch ns.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
    }

    #[test]
    fn qos_tiers() {
        assert_eq!(qos_dir(None), "besteffort");
        let burst = cri::LinuxContainerResources {
            cpu_shares: 512,
            ..Default::default()
        };
        assert_eq!(qos_dir(Some(&burst)), "burstable");
        let guaranteed = cri::LinuxContainerResources {
            cpu_quota: 50_000,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        };
        assert_eq!(qos_dir(Some(&guaranteed)), "");
    }

    #[test]
    fn hostnames() {
        assert!(valid_hostname("web-0"));
        assert!(valid_hostname("a.b.c"));
        for bad in ["", "-x", "x-", "a_b", "a..b", &"x".repeat(65)] {
            assert!(!valid_hostname(bad), "{bad}");
        }
    }

    #[test]
    fn start_time_of_self() {
        assert!(process_start_time(std::process::id() as i32).is_some());
        assert!(process_start_time(i32::MAX).is_none());
    }
}
