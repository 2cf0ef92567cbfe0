//! Stats and metrics RPCs: translate `crate::stats` readings into CRI
//! messages. Every function here blocks (cgroup files, writable-layer
//! walks); the service runs them off the async workers.

use k8s_cri::v1 as cri;
use tonic::Status;

use super::sandbox::labels_match;
use crate::node::Node;
use crate::runtime::{ContainerView, PodView};
use crate::stats::cadvisor::{self, Kind};
use crate::stats::cgroup::CgroupSample;
use crate::stats::{net, ContainerUsage, PodUsage};

fn u(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

fn cpu(timestamp: i64, s: &CgroupSample, nano_cores: Option<u64>) -> Option<cri::CpuUsage> {
    let c = s.cpu.as_ref()?;
    Some(cri::CpuUsage {
        timestamp,
        usage_core_nano_seconds: u(c.usage_ns),
        usage_nano_cores: nano_cores.and_then(u),
    })
}

fn memory(timestamp: i64, s: &CgroupSample) -> Option<cri::MemoryUsage> {
    let m = s.memory.as_ref()?;
    Some(cri::MemoryUsage {
        timestamp,
        working_set_bytes: u(m.working_set),
        available_bytes: m.available().and_then(u),
        usage_bytes: u(m.usage),
        rss_bytes: u(m.rss),
        page_faults: u(m.page_faults),
        major_page_faults: u(m.major_page_faults),
    })
}

fn processes(timestamp: i64, s: &CgroupSample, counted: Option<u64>) -> Option<cri::ProcessUsage> {
    // pids.current counts tasks, as containerd reports; without the pids
    // controller, the processes found in cgroup.procs.
    let count = s.pids.as_ref().map(|p| p.current).or(counted)?;
    Some(cri::ProcessUsage {
        timestamp,
        process_count: u(count),
    })
}

fn container_stats(c: &ContainerView, usage: &ContainerUsage) -> cri::ContainerStats {
    let ts = usage.timestamp;
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.record.id.clone(),
            metadata: c.record.config.metadata.clone(),
            labels: c.record.config.labels.clone(),
            annotations: c.record.config.annotations.clone(),
        }),
        cpu: cpu(ts, &usage.cgroup, usage.nano_cores),
        memory: memory(ts, &usage.cgroup),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: ts,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: usage.writable_layer_fs.display().to_string(),
            }),
            used_bytes: u(usage.writable_layer.bytes),
            inodes_used: u(usage.writable_layer.inodes),
        }),
        swap: usage
            .cgroup
            .memory
            .as_ref()
            .and_then(|m| m.swap)
            .map(|swap| cri::SwapUsage {
                timestamp: ts,
                swap_available_bytes: None,
                swap_usage_bytes: u(swap),
            }),
    }
}

fn interface(i: &net::InterfaceSample) -> cri::NetworkInterfaceUsage {
    cri::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: u(i.rx_bytes),
        rx_errors: u(i.rx_errors),
        tx_bytes: u(i.tx_bytes),
        tx_errors: u(i.tx_errors),
    }
}

fn pod_stats(p: &PodView, usage: &PodUsage) -> cri::PodSandboxStats {
    let ts = usage.timestamp;
    let network = usage.network.as_ref().map(|ifaces| cri::NetworkUsage {
        timestamp: ts,
        default_interface: ifaces
            .iter()
            .find(|i| i.name == net::DEFAULT_INTERFACE)
            .or(ifaces.first())
            .map(interface),
        interfaces: ifaces.iter().map(interface).collect(),
    });
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: p.record.id.clone(),
            metadata: p.record.config.metadata.clone(),
            labels: p.record.config.labels.clone(),
            annotations: p.record.config.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: cpu(ts, &usage.cgroup, usage.nano_cores),
            memory: memory(ts, &usage.cgroup),
            network,
            process: processes(ts, &usage.cgroup, usage.processes),
            containers: usage.containers.iter().map(|(c, u)| container_stats(c, u)).collect(),
        }),
        windows: None,
    }
}

pub fn container(node: &Node, req: cri::ContainerStatsRequest) -> Result<cri::ContainerStatsResponse, Status> {
    let (c, usage) = node.stats.container_by_id(&node.runtime, &req.container_id)?;
    Ok(cri::ContainerStatsResponse {
        stats: Some(container_stats(&c, &usage)),
    })
}

pub fn list_containers(
    node: &Node,
    req: cri::ListContainerStatsRequest,
) -> Result<cri::ListContainerStatsResponse, Status> {
    let f = req.filter.unwrap_or_default();
    let stats = node
        .stats
        .containers(&node.runtime, |c| {
            c.record.id.starts_with(&f.id)
                && c.record.pod_id.starts_with(&f.pod_sandbox_id)
                && labels_match(&f.label_selector, &c.record.config.labels)
        })
        .iter()
        .map(|(c, u)| container_stats(c, u))
        .collect();
    Ok(cri::ListContainerStatsResponse { stats })
}

pub fn pod(node: &Node, req: cri::PodSandboxStatsRequest) -> Result<cri::PodSandboxStatsResponse, Status> {
    let (p, usage) = node.stats.pod_by_id(&node.runtime, &req.pod_sandbox_id)?;
    Ok(cri::PodSandboxStatsResponse {
        stats: Some(pod_stats(&p, &usage)),
    })
}

pub fn list_pods(
    node: &Node,
    req: cri::ListPodSandboxStatsRequest,
) -> Result<cri::ListPodSandboxStatsResponse, Status> {
    let f = req.filter.unwrap_or_default();
    let stats = node
        .stats
        .pods(&node.runtime, |p| {
            p.record.id.starts_with(&f.id) && labels_match(&f.label_selector, &p.record.config.labels)
        })
        .iter()
        .map(|(p, u)| pod_stats(p, u))
        .collect();
    Ok(cri::ListPodSandboxStatsResponse { stats })
}

fn metric_type(k: Kind) -> i32 {
    match k {
        Kind::Counter => cri::MetricType::Counter as i32,
        Kind::Gauge => cri::MetricType::Gauge as i32,
    }
}

pub fn metric_descriptors() -> cri::ListMetricDescriptorsResponse {
    cri::ListMetricDescriptorsResponse {
        descriptors: cadvisor::DESCRIPTORS
            .iter()
            .map(|d| cri::MetricDescriptor {
                name: d.name.to_string(),
                help: d.help.to_string(),
                label_keys: d.label_keys.iter().map(|k| k.to_string()).collect(),
            })
            .collect(),
    }
}

fn metrics(samples: Vec<cadvisor::Sample>) -> Vec<cri::Metric> {
    samples
        .into_iter()
        .map(|s| cri::Metric {
            name: s.name.to_string(),
            // Zero: read on demand, not cached (the kubelet then stamps
            // the scrape itself).
            timestamp: 0,
            metric_type: metric_type(s.kind),
            label_values: s.labels,
            value: u(s.value),
        })
        .collect()
}

pub fn pod_sandbox_metrics(node: &Node) -> cri::ListPodSandboxMetricsResponse {
    let pod_metrics = node
        .stats
        .metrics(&node.runtime)
        .into_iter()
        .map(|p| cri::PodSandboxMetrics {
            pod_sandbox_id: p.pod_id,
            metrics: metrics(p.samples),
            container_metrics: p
                .containers
                .into_iter()
                .map(|(id, samples)| cri::ContainerMetrics {
                    container_id: id,
                    metrics: metrics(samples),
                })
                .collect(),
        })
        .collect();
    cri::ListPodSandboxMetricsResponse { pod_metrics }
}
