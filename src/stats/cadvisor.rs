//! cAdvisor-compatible metrics for the CRI's `ListMetricDescriptors` and
//! `ListPodSandboxMetrics`: with the kubelet's `PodAndContainerStatsFromCRI`
//! its `/metrics/cadvisor` endpoint serves what the runtime reports here,
//! so the names, help texts and label keys are cAdvisor's (as containerd
//! and CRI-O report them).
//!
//! The CRI carries every value as an unsigned integer, so second-valued
//! counters are whole seconds, as in containerd.

use super::cgroup::CgroupSample;
use super::net::InterfaceSample;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug, Clone, Copy)]
pub struct Descriptor {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub label_keys: &'static [&'static str],
}

/// Every metric's first labels, in this order.
pub const BASE_LABELS: &[&str] = &["pod", "namespace", "container", "id", "image"];
const NET_LABELS: &[&str] = &["pod", "namespace", "container", "id", "image", "interface"];
const DISK_LABELS: &[&str] = &["pod", "namespace", "container", "id", "image", "device"];
const FAILURE_LABELS: &[&str] = &["pod", "namespace", "container", "id", "image", "failure_type", "scope"];

macro_rules! descriptors {
    ($($name:literal, $kind:ident, $labels:ident, $help:literal;)*) => {
        pub const DESCRIPTORS: &[Descriptor] = &[
            $(Descriptor { name: $name, help: $help, kind: Kind::$kind, label_keys: $labels },)*
        ];
    };
}

descriptors! {
    "container_cpu_usage_seconds_total", Counter, BASE_LABELS, "Cumulative cpu time consumed in seconds.";
    "container_cpu_user_seconds_total", Counter, BASE_LABELS, "Cumulative user cpu time consumed in seconds.";
    "container_cpu_system_seconds_total", Counter, BASE_LABELS, "Cumulative system cpu time consumed in seconds.";
    "container_cpu_cfs_periods_total", Counter, BASE_LABELS, "Number of elapsed enforcement period intervals.";
    "container_cpu_cfs_throttled_periods_total", Counter, BASE_LABELS, "Number of throttled period intervals.";
    "container_cpu_cfs_throttled_seconds_total", Counter, BASE_LABELS, "Total time duration the container has been throttled.";
    "container_memory_usage_bytes", Gauge, BASE_LABELS, "Current memory usage in bytes, including all memory regardless of when it was accessed";
    "container_memory_working_set_bytes", Gauge, BASE_LABELS, "Current working set in bytes.";
    "container_memory_rss", Gauge, BASE_LABELS, "Size of RSS in bytes.";
    "container_memory_cache", Gauge, BASE_LABELS, "Number of bytes of page cache memory.";
    "container_memory_mapped_file", Gauge, BASE_LABELS, "Size of memory mapped files in bytes.";
    "container_memory_swap", Gauge, BASE_LABELS, "Container swap usage in bytes.";
    "container_memory_kernel_usage", Gauge, BASE_LABELS, "Size of kernel memory allocated in bytes.";
    "container_memory_max_usage_bytes", Gauge, BASE_LABELS, "Maximum memory usage recorded in bytes";
    "container_memory_failcnt", Counter, BASE_LABELS, "Number of memory usage hits limits";
    "container_memory_failures_total", Counter, FAILURE_LABELS, "Cumulative count of memory allocation failures.";
    "container_memory_total_active_file_bytes", Gauge, BASE_LABELS, "Current total active file in bytes.";
    "container_memory_total_inactive_file_bytes", Gauge, BASE_LABELS, "Current total inactive file in bytes.";
    "container_oom_events_total", Counter, BASE_LABELS, "Count of out of memory events observed for the container";
    "container_network_receive_bytes_total", Counter, NET_LABELS, "Cumulative count of bytes received";
    "container_network_receive_packets_total", Counter, NET_LABELS, "Cumulative count of packets received";
    "container_network_receive_packets_dropped_total", Counter, NET_LABELS, "Cumulative count of packets dropped while receiving";
    "container_network_receive_errors_total", Counter, NET_LABELS, "Cumulative count of errors encountered while receiving";
    "container_network_transmit_bytes_total", Counter, NET_LABELS, "Cumulative count of bytes transmitted";
    "container_network_transmit_packets_total", Counter, NET_LABELS, "Cumulative count of packets transmitted";
    "container_network_transmit_packets_dropped_total", Counter, NET_LABELS, "Cumulative count of packets dropped while transmitting";
    "container_network_transmit_errors_total", Counter, NET_LABELS, "Cumulative count of errors encountered while transmitting";
    "container_fs_usage_bytes", Gauge, DISK_LABELS, "Number of bytes that are consumed by the container on this filesystem.";
    "container_fs_inodes_total", Gauge, DISK_LABELS, "Number of Inodes";
    "container_fs_inodes_free", Gauge, DISK_LABELS, "Number of available Inodes";
    "container_fs_limit_bytes", Gauge, DISK_LABELS, "Number of bytes that can be consumed by the container on this filesystem.";
    "container_processes", Gauge, BASE_LABELS, "Number of processes running inside the container.";
    "container_threads", Gauge, BASE_LABELS, "Number of threads running inside the container";
    "container_threads_max", Gauge, BASE_LABELS, "Maximum number of threads allowed inside the container, infinity if value is zero";
    "container_start_time_seconds", Gauge, BASE_LABELS, "Start time of the container since unix epoch in seconds.";
    "container_last_seen", Gauge, BASE_LABELS, "Last time a container was seen by the exporter";
    "container_spec_cpu_period", Gauge, BASE_LABELS, "CPU period of the container.";
    "container_spec_cpu_quota", Gauge, BASE_LABELS, "CPU quota of the container.";
    "container_spec_cpu_shares", Gauge, BASE_LABELS, "CPU share of the container.";
    "container_spec_memory_limit_bytes", Gauge, BASE_LABELS, "Memory limit for the container.";
    "container_spec_memory_reservation_limit_bytes", Gauge, BASE_LABELS, "Memory reservation limit for the container.";
}

pub fn descriptor(name: &str) -> Option<&'static Descriptor> {
    DESCRIPTORS.iter().find(|d| d.name == name)
}

/// One metric value with its label values (in its descriptor's key order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: Vec<String>,
    pub value: u64,
}

/// Who a set of samples is about: the base label values.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub pod: String,
    pub namespace: String,
    /// Empty for the pod as a whole (as cAdvisor labels pod cgroups).
    pub container: String,
    pub id: String,
    pub image: String,
}

/// The filesystem holding writable layers, for the `container_fs_*` metrics.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    pub device: String,
    pub used_bytes: u64,
    pub capacity: Option<super::fs::FsCapacity>,
}

struct Out<'a> {
    base: Vec<String>,
    samples: &'a mut Vec<Sample>,
}

impl<'a> Out<'a> {
    /// Samples of `who`: every one starts with its identifying labels.
    fn new(who: &Subject, samples: &'a mut Vec<Sample>) -> Out<'a> {
        Out {
            base: vec![
                who.pod.clone(),
                who.namespace.clone(),
                who.container.clone(),
                who.id.clone(),
                who.image.clone(),
            ],
            samples,
        }
    }

    fn push(&mut self, name: &'static str, value: u64, extra: &[&str]) {
        let d = descriptor(name).expect("every emitted metric has a descriptor");
        let mut labels = self.base.clone();
        labels.extend(extra.iter().map(|s| s.to_string()));
        debug_assert_eq!(labels.len(), d.label_keys.len(), "{name}");
        self.samples.push(Sample {
            name,
            kind: d.kind,
            labels,
            value,
        });
    }
}

const NS_PER_S: u64 = 1_000_000_000;

/// CPU, memory, process and limit metrics of one cgroup.
pub fn cgroup_metrics(who: &Subject, s: &CgroupSample, processes: Option<u64>, out: &mut Vec<Sample>) {
    let mut o = Out::new(who, out);
    if let Some(c) = &s.cpu {
        o.push("container_cpu_usage_seconds_total", c.usage_ns / NS_PER_S, &[]);
        if let Some(u) = c.user_ns {
            o.push("container_cpu_user_seconds_total", u / NS_PER_S, &[]);
        }
        if let Some(u) = c.system_ns {
            o.push("container_cpu_system_seconds_total", u / NS_PER_S, &[]);
        }
        o.push("container_cpu_cfs_periods_total", c.periods, &[]);
        o.push("container_cpu_cfs_throttled_periods_total", c.throttled_periods, &[]);
        o.push(
            "container_cpu_cfs_throttled_seconds_total",
            c.throttled_ns / NS_PER_S,
            &[],
        );
    }
    if let Some(m) = &s.memory {
        o.push("container_memory_usage_bytes", m.usage, &[]);
        o.push("container_memory_working_set_bytes", m.working_set, &[]);
        o.push("container_memory_rss", m.rss, &[]);
        o.push("container_memory_cache", m.cache, &[]);
        o.push("container_memory_mapped_file", m.mapped_file, &[]);
        if let Some(v) = m.swap {
            o.push("container_memory_swap", v, &[]);
        }
        if let Some(v) = m.kernel {
            o.push("container_memory_kernel_usage", v, &[]);
        }
        if let Some(v) = m.max_usage {
            o.push("container_memory_max_usage_bytes", v, &[]);
        }
        o.push("container_memory_failcnt", m.fail_count, &[]);
        for (kind, value) in [("pgfault", m.page_faults), ("pgmajfault", m.major_page_faults)] {
            // The cgroup's counters cover its children too: cAdvisor's
            // "hierarchy" scope.
            o.push("container_memory_failures_total", value, &[kind, "hierarchy"]);
        }
        o.push("container_memory_total_active_file_bytes", m.active_file, &[]);
        o.push("container_memory_total_inactive_file_bytes", m.inactive_file, &[]);
        o.push("container_oom_events_total", m.oom_kills, &[]);
        o.push("container_spec_memory_limit_bytes", m.limit.unwrap_or(0), &[]);
        o.push(
            "container_spec_memory_reservation_limit_bytes",
            m.reservation.unwrap_or(0),
            &[],
        );
    }
    if let Some(p) = processes {
        o.push("container_processes", p, &[]);
    }
    if let Some(p) = &s.pids {
        o.push("container_threads", p.current, &[]);
        o.push("container_threads_max", p.limit.unwrap_or(0), &[]);
    }
    if let Some(v) = s.cpu_spec.period_us {
        o.push("container_spec_cpu_period", v, &[]);
    }
    if let Some(v) = s.cpu_spec.quota_us {
        o.push("container_spec_cpu_quota", v, &[]);
    }
    if let Some(v) = s.cpu_spec.shares {
        o.push("container_spec_cpu_shares", v, &[]);
    }
}

/// Writable-layer, start-time and last-seen metrics of a container.
pub fn container_extra(who: &Subject, disk: &Disk, started_at_ns: i64, now_ns: i64, out: &mut Vec<Sample>) {
    let mut o = Out::new(who, out);
    let dev = [disk.device.as_str()];
    o.push("container_fs_usage_bytes", disk.used_bytes, &dev);
    if let Some(c) = disk.capacity {
        o.push("container_fs_limit_bytes", c.bytes, &dev);
        o.push("container_fs_inodes_total", c.inodes, &dev);
        o.push("container_fs_inodes_free", c.inodes_free, &dev);
    }
    if started_at_ns > 0 {
        o.push(
            "container_start_time_seconds",
            (started_at_ns / NS_PER_S as i64) as u64,
            &[],
        );
    }
    o.push("container_last_seen", (now_ns.max(0) / NS_PER_S as i64) as u64, &[]);
}

/// A pod's network counters (cAdvisor reports them for the pod).
pub fn network_metrics(who: &Subject, interfaces: &[InterfaceSample], out: &mut Vec<Sample>) {
    let mut o = Out::new(who, out);
    for i in interfaces {
        let n = [i.name.as_str()];
        o.push("container_network_receive_bytes_total", i.rx_bytes, &n);
        o.push("container_network_receive_packets_total", i.rx_packets, &n);
        o.push("container_network_receive_packets_dropped_total", i.rx_dropped, &n);
        o.push("container_network_receive_errors_total", i.rx_errors, &n);
        o.push("container_network_transmit_bytes_total", i.tx_bytes, &n);
        o.push("container_network_transmit_packets_total", i.tx_packets, &n);
        o.push("container_network_transmit_packets_dropped_total", i.tx_dropped, &n);
        o.push("container_network_transmit_errors_total", i.tx_errors, &n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::cgroup::{CpuSample, MemorySample, PidsSample};

    #[test]
    fn descriptors_are_unique_and_cadvisor_named() {
        let mut names: Vec<_> = DESCRIPTORS.iter().map(|d| d.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DESCRIPTORS.len());
        for d in DESCRIPTORS {
            assert!(d.name.starts_with("container_"), "{}", d.name);
            // cAdvisor's one gauge named *_total counts a filesystem's inodes.
            let counter_name =
                (d.name.ends_with("_total") && d.name != "container_fs_inodes_total") || d.name.ends_with("failcnt");
            assert_eq!(d.kind == Kind::Counter, counter_name, "{}", d.name);
            assert_eq!(&d.label_keys[..5], BASE_LABELS);
        }
    }

    #[test]
    fn samples_match_their_descriptors() {
        let who = Subject {
            pod: "web".into(),
            namespace: "default".into(),
            container: "app".into(),
            id: "c1".into(),
            image: "busybox".into(),
        };
        let s = CgroupSample {
            cpu: Some(CpuSample {
                usage_ns: 2_700_000_000,
                ..Default::default()
            }),
            memory: Some(MemorySample {
                usage: 100,
                working_set: 80,
                limit: None,
                ..Default::default()
            }),
            pids: Some(PidsSample {
                current: 2,
                limit: None,
            }),
            ..Default::default()
        };
        let mut out = Vec::new();
        cgroup_metrics(&who, &s, Some(1), &mut out);
        network_metrics(&who, &[InterfaceSample::default()], &mut out);
        container_extra(&who, &Disk::default(), 5_000_000_000, 9_000_000_000, &mut out);
        for m in &out {
            assert_eq!(
                m.labels.len(),
                descriptor(m.name).unwrap().label_keys.len(),
                "{}",
                m.name
            );
        }
        let get = |n: &str| out.iter().find(|m| m.name == n).unwrap();
        assert_eq!(get("container_cpu_usage_seconds_total").value, 2);
        assert_eq!(get("container_memory_working_set_bytes").value, 80);
        assert_eq!(get("container_spec_memory_limit_bytes").value, 0);
        assert_eq!(get("container_threads").value, 2);
        assert_eq!(get("container_start_time_seconds").value, 5);
        assert_eq!(
            get("container_memory_rss").labels,
            ["web", "default", "app", "c1", "busybox"]
        );
    }
}
