//! Resource usage of pods and containers: CPU, memory and processes from
//! their cgroups (v2, or v1 on hybrid hosts), the writable layer from the
//! container's overlay upper directory, network counters from the pod's
//! network namespace. The CRI stats and metrics RPCs translate these.
//!
//! - `cgroup`: one cgroup's controller files, normalised;
//! - `fs`: disk usage of a directory tree;
//! - `net`: interface counters of a network namespace;
//! - `cadvisor`: the cAdvisor-compatible metric names the kubelet expects.

pub mod cadvisor;
pub mod cgroup;
pub mod fs;
pub mod net;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use crate::runtime::{ContainerView, PodView, Runtime, RuntimeError};
use cgroup::CgroupSample;

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("pod sandbox {0} is not ready: it has no usage to report")]
    NotReady(String),
}

/// Previous CPU samples are dropped beyond this many objects (a client
/// that asks about single containers and never lists cannot grow the map
/// without bound).
const MAX_PREVIOUS: usize = 16_384;

/// One container's usage at one instant.
#[derive(Debug, Clone, Default)]
pub struct ContainerUsage {
    /// Unix nanoseconds.
    pub timestamp: i64,
    pub cgroup: CgroupSample,
    /// CPU use since the previous sample of this container, in
    /// billionths of a core; None on the first sample.
    pub nano_cores: Option<u64>,
    /// Processes (not threads) in the container's cgroup and below.
    pub processes: Option<u64>,
    pub writable_layer: fs::DiskUsage,
    /// The directory holding writable layers (the CRI's filesystem ID).
    pub writable_layer_fs: PathBuf,
}

/// One pod's usage at one instant, its containers' included.
#[derive(Debug, Clone, Default)]
pub struct PodUsage {
    pub timestamp: i64,
    pub cgroup: CgroupSample,
    pub nano_cores: Option<u64>,
    pub processes: Option<u64>,
    /// None: the pod shares the host's network, or its infra is gone.
    pub network: Option<Vec<net::InterfaceSample>>,
    pub containers: Vec<(ContainerView, ContainerUsage)>,
}

#[derive(Debug, Clone, Copy)]
struct Previous {
    at: Instant,
    usage_ns: u64,
}

/// The stats reader. It keeps each object's previous CPU sample, from
/// which `usage_nano_cores` is computed as containerd does.
#[derive(Default)]
pub struct Stats {
    previous: Mutex<HashMap<String, Previous>>,
    /// The device holding writable layers (found once).
    device: std::sync::OnceLock<String>,
}

/// The cAdvisor-style metrics of one pod and of each of its containers.
#[derive(Debug, Clone, Default)]
pub struct PodMetrics {
    pub pod_id: String,
    pub samples: Vec<cadvisor::Sample>,
    /// Container ID and its samples.
    pub containers: Vec<(String, Vec<cadvisor::Sample>)>,
}

/// CPU use between two samples in billionths of a core (1e9 = one core
/// busy all the time). None when there is no earlier sample, no time
/// passed, or the counter went back (the cgroup was recreated).
pub fn nano_cores(prev_usage_ns: u64, prev_at: Instant, usage_ns: u64, at: Instant) -> Option<u64> {
    let elapsed = at.checked_duration_since(prev_at)?.as_nanos();
    if elapsed == 0 || usage_ns < prev_usage_ns {
        return None;
    }
    Some(((usage_ns - prev_usage_ns) as u128 * 1_000_000_000 / elapsed) as u64)
}

impl Stats {
    pub fn new() -> Stats {
        Stats::default()
    }

    /// Record a CPU sample of `key` and return the rate since the previous
    /// one.
    fn rate(&self, key: &str, usage_ns: u64, at: Instant) -> Option<u64> {
        let mut prev = self.previous.lock().expect("stats");
        let rate = prev.get(key).and_then(|p| nano_cores(p.usage_ns, p.at, usage_ns, at));
        // Only a newer sample replaces the stored one (two concurrent
        // callers may finish out of order).
        if prev.get(key).is_none_or(|p| p.at < at) {
            if prev.len() >= MAX_PREVIOUS && !prev.contains_key(key) {
                prev.clear();
            }
            prev.insert(key.to_string(), Previous { at, usage_ns });
        }
        rate
    }

    /// Forget objects that no longer exist.
    pub fn retain(&self, live: &HashSet<String>) {
        self.previous.lock().expect("stats").retain(|k, _| live.contains(k));
    }

    /// Usage of one container by ID (blocking, as everything here).
    pub fn container_by_id(&self, rt: &Runtime, id: &str) -> Result<(ContainerView, ContainerUsage), StatsError> {
        let view = rt.container(id)?;
        let usage = self.container(rt, &view);
        Ok((view, usage))
    }

    /// Usage of every container `keep` accepts.
    pub fn containers(
        &self,
        rt: &Runtime,
        keep: impl Fn(&ContainerView) -> bool,
    ) -> Vec<(ContainerView, ContainerUsage)> {
        let all = rt.containers();
        self.prune(rt, &all);
        all.into_iter()
            .filter(|c| keep(c))
            .map(|c| {
                let u = self.container(rt, &c);
                (c, u)
            })
            .collect()
    }

    /// Usage of a ready pod and its containers.
    pub fn pod_by_id(&self, rt: &Runtime, id: &str) -> Result<(PodView, PodUsage), StatsError> {
        let pod = rt.pod(id)?;
        if !pod.ready {
            return Err(StatsError::NotReady(id.to_string()));
        }
        let mine = rt.containers().into_iter().filter(|c| c.record.pod_id == id).collect();
        let usage = self.pod(rt, &pod, mine);
        Ok((pod, usage))
    }

    /// Usage of every ready pod `keep` accepts (a stopped pod has no
    /// cgroup left to read, as containerd skips it).
    pub fn pods(&self, rt: &Runtime, keep: impl Fn(&PodView) -> bool) -> Vec<(PodView, PodUsage)> {
        let containers = rt.containers();
        self.prune(rt, &containers);
        let mut out = Vec::new();
        for p in rt.pods().into_iter().filter(|p| p.ready && keep(p)) {
            let mine: Vec<ContainerView> = containers
                .iter()
                .filter(|c| c.record.pod_id == p.record.id)
                .cloned()
                .collect();
            let u = self.pod(rt, &p, mine);
            out.push((p, u));
        }
        out
    }

    /// Forget previous samples of objects that are gone.
    fn prune(&self, rt: &Runtime, containers: &[ContainerView]) {
        let mut live: HashSet<String> = containers.iter().map(|c| c.record.id.clone()).collect();
        live.extend(rt.pods().into_iter().map(|p| p.record.id));
        self.retain(&live);
    }

    /// cAdvisor-style metrics of every ready pod.
    pub fn metrics(&self, rt: &Runtime) -> Vec<PodMetrics> {
        let mut out = Vec::new();
        for (pod, usage) in self.pods(rt, |_| true) {
            let meta = pod.record.config.metadata.clone().unwrap_or_default();
            let who = cadvisor::Subject {
                pod: meta.name.clone(),
                namespace: meta.namespace.clone(),
                container: String::new(),
                id: pod.record.id.clone(),
                image: String::new(),
            };
            let mut samples = Vec::new();
            cadvisor::cgroup_metrics(&who, &usage.cgroup, usage.processes, &mut samples);
            if let Some(net) = &usage.network {
                cadvisor::network_metrics(&who, net, &mut samples);
            }
            let containers = usage
                .containers
                .iter()
                .map(|(c, u)| {
                    let who = cadvisor::Subject {
                        container: c
                            .record
                            .config
                            .metadata
                            .as_ref()
                            .map(|m| m.name.clone())
                            .unwrap_or_default(),
                        id: c.record.id.clone(),
                        image: c
                            .record
                            .config
                            .image
                            .as_ref()
                            .map(|i| i.image.clone())
                            .unwrap_or_default(),
                        ..who.clone()
                    };
                    let mut samples = Vec::new();
                    cadvisor::cgroup_metrics(&who, &u.cgroup, u.processes, &mut samples);
                    let disk = cadvisor::Disk {
                        device: self.device(&u.writable_layer_fs).to_string(),
                        used_bytes: u.writable_layer.bytes,
                        capacity: fs::capacity(&u.writable_layer_fs),
                    };
                    cadvisor::container_extra(&who, &disk, c.status.started_at, u.timestamp, &mut samples);
                    (c.record.id.clone(), samples)
                })
                .collect();
            out.push(PodMetrics {
                pod_id: pod.record.id.clone(),
                samples,
                containers,
            });
        }
        out
    }

    /// The device of the filesystem holding `path` (the mount source with
    /// the longest mount point above it), as cAdvisor's `device` label.
    fn device(&self, path: &std::path::Path) -> &str {
        self.device.get_or_init(|| {
            let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            device_of(&text, path).unwrap_or_else(|| path.display().to_string())
        })
    }

    /// Usage of one container (blocking: reads cgroup files and walks the
    /// writable layer).
    pub fn container(&self, rt: &Runtime, view: &ContainerView) -> ContainerUsage {
        let (cgroup, at, timestamp) = sample(rt, &view.record.cgroup);
        let nano_cores = cgroup
            .cpu
            .as_ref()
            .and_then(|c| self.rate(&view.record.id, c.usage_ns, at));
        let containers_dir = rt.config.root_dir.join("containers");
        ContainerUsage {
            timestamp,
            nano_cores,
            processes: count_processes(rt, &view.record.cgroup),
            writable_layer: fs::usage(&containers_dir.join(&view.record.id).join("upper")),
            writable_layer_fs: containers_dir,
            cgroup,
        }
    }

    /// Usage of a pod and the given containers of it (blocking).
    pub fn pod(&self, rt: &Runtime, pod: &PodView, containers: Vec<ContainerView>) -> PodUsage {
        let (cgroup, at, timestamp) = sample(rt, &pod.record.cgroup);
        let nano_cores = cgroup
            .cpu
            .as_ref()
            .and_then(|c| self.rate(&pod.record.id, c.usage_ns, at));
        let network = if pod.record.host_network || !pod.ready {
            None
        } else {
            net::read(pod.record.infra_pid)
        };
        PodUsage {
            timestamp,
            nano_cores,
            processes: count_processes(rt, &pod.record.cgroup),
            network,
            containers: containers
                .into_iter()
                .map(|c| {
                    let u = self.container(rt, &c);
                    (c, u)
                })
                .collect(),
            cgroup,
        }
    }
}

/// The source of the deepest mount containing `path`, from mountinfo.
pub fn device_of(mountinfo: &str, path: &std::path::Path) -> Option<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount = left.split(' ').nth(4)?;
            let source = right.split(' ').nth(1)?;
            path.starts_with(mount).then(|| (mount.len(), source.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, s)| s)
}

/// Read a cgroup and note when (monotonic for rates, wall clock for the
/// CRI's timestamps).
fn sample(rt: &Runtime, cgroup: &str) -> (CgroupSample, Instant, i64) {
    let s = cgroup::read(&rt.cgroups, cgroup);
    (s, Instant::now(), crate::unix_nanos())
}

/// Processes in a cgroup and its children (exec'd processes run in a
/// child of the container's cgroup).
fn count_processes(rt: &Runtime, cgroup: &str) -> Option<u64> {
    // Every v1 hierarchy has every task; any one will do.
    let dir = rt.cgroups.dirs(cgroup).into_iter().find(|d| d.is_dir())?;
    let mut total = 0;
    let mut dirs = vec![dir];
    while let Some(d) = dirs.pop() {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            total += procs.lines().filter(|l| !l.trim().is_empty()).count() as u64;
        }
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn nano_cores_from_deltas() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        // One second of CPU in two seconds: half a core.
        assert_eq!(nano_cores(5_000_000_000, t0, 6_000_000_000, t1), Some(500_000_000));
        // Two cores busy.
        assert_eq!(nano_cores(0, t0, 4_000_000_000, t1), Some(2_000_000_000));
        assert_eq!(nano_cores(10, t0, 10, t1), Some(0));
        // No time passed, time went back, counter reset.
        assert_eq!(nano_cores(0, t0, 5, t0), None);
        assert_eq!(nano_cores(0, t1, 5, t0), None);
        assert_eq!(nano_cores(10, t0, 5, t1), None);
    }

    #[test]
    fn device_of_deepest_mount() {
        let mi = "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                  30 22 0:25 / /var/lib/nodelet rw - xfs /dev/vdb1 rw\n\
                  31 22 0:26 / /var/lib/nodelet-other rw - tmpfs tmpfs rw\n";
        let p = std::path::Path::new("/var/lib/nodelet/containers");
        assert_eq!(device_of(mi, p).as_deref(), Some("/dev/vdb1"));
        assert_eq!(device_of(mi, std::path::Path::new("/srv")).as_deref(), Some("/dev/vda"));
    }

    #[test]
    fn rate_keeps_the_newest_sample() {
        let s = Stats::new();
        let t0 = Instant::now();
        assert_eq!(s.rate("c", 1_000_000_000, t0), None);
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(s.rate("c", 1_250_000_000, t1), Some(500_000_000));
        // An older sample arriving late is answered but does not replace.
        let late = t0 + Duration::from_millis(250);
        assert_eq!(s.rate("c", 1_100_000_000, late), None);
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(s.rate("c", 2_250_000_000, t2), Some(1_000_000_000));
        s.retain(&HashSet::new());
        assert_eq!(s.rate("c", 3_000_000_000, t2 + Duration::from_secs(1)), None);
    }
}
