//! Pod sandbox RPCs: translate between CRI messages and the runtime.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use tonic::Status;

use crate::runtime::{PodView, Runtime};

pub async fn run(rt: &Arc<Runtime>, req: cri::RunPodSandboxRequest) -> Result<cri::RunPodSandboxResponse, Status> {
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("RunPodSandbox: config is required"))?;
    // Only the static pod manager may mark a pod as its own.
    if crate::static_pods::is_static(&config.labels) {
        return Err(Status::invalid_argument(format!(
            "RunPodSandbox: label {:?} is reserved for nodelet's static pods",
            crate::static_pods::translate::LABEL_STATIC
        )));
    }
    let id = rt.run_pod(config, &req.runtime_handler).await?;
    Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
}

pub async fn stop(rt: &Arc<Runtime>, req: cri::StopPodSandboxRequest) -> Result<cri::StopPodSandboxResponse, Status> {
    rt.stop_pod(&req.pod_sandbox_id).await?;
    Ok(cri::StopPodSandboxResponse {})
}

pub async fn remove(
    rt: &Arc<Runtime>,
    req: cri::RemovePodSandboxRequest,
) -> Result<cri::RemovePodSandboxResponse, Status> {
    rt.remove_pod(&req.pod_sandbox_id).await?;
    Ok(cri::RemovePodSandboxResponse {})
}

fn state(p: &PodView) -> i32 {
    if p.ready {
        cri::PodSandboxState::SandboxReady as i32
    } else {
        cri::PodSandboxState::SandboxNotready as i32
    }
}

pub fn status(rt: &Runtime, req: cri::PodSandboxStatusRequest) -> Result<cri::PodSandboxStatusResponse, Status> {
    let p = rt.pod(&req.pod_sandbox_id)?;
    let rec = &p.record;
    let ns = rec
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    let mut info = HashMap::new();
    if req.verbose {
        info.insert(
            "info".to_string(),
            serde_json::json!({
                "pid": rec.infra_pid,
                "processStartTime": rec.infra_start_time,
                "cgroupParent": rec.cgroup,
                "runtimeHandler": rec.runtime_handler,
                "netns": if rec.host_network { String::new() } else { format!("/proc/{}/ns/net", rec.infra_pid) },
                "stateDir": rt.pod_state_dir(&rec.id),
                "config": rec.config,
            })
            .to_string(),
        );
    }
    Ok(cri::PodSandboxStatusResponse {
        status: Some(cri::PodSandboxStatus {
            id: rec.id.clone(),
            metadata: rec.config.metadata.clone(),
            state: state(&p),
            created_at: rec.created_at,
            network: Some(network_status(rec)),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace { options: Some(ns) }),
            }),
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
            runtime_handler: rec.runtime_handler.clone(),
        }),
        info,
        containers_statuses: Vec::new(),
        timestamp: crate::unix_nanos(),
    })
}

/// The pod's addresses (none on the host network, as containerd reports).
fn network_status(rec: &crate::runtime::SandboxRecord) -> cri::PodSandboxNetworkStatus {
    let ips: Vec<String> = rec
        .network
        .as_ref()
        .filter(|n| n.phase == "ready")
        .map(|n| n.ips.clone())
        .unwrap_or_default();
    cri::PodSandboxNetworkStatus {
        ip: ips.first().cloned().unwrap_or_default(),
        additional_ips: ips.iter().skip(1).map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
    }
}

/// Every key and value of `selector` is among `labels`.
pub fn labels_match(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub fn list(rt: &Runtime, req: cri::ListPodSandboxRequest) -> Result<cri::ListPodSandboxResponse, Status> {
    let filter = req.filter.unwrap_or_default();
    let mut items: Vec<cri::PodSandbox> = rt
        .pods()
        .into_iter()
        .filter(|p| filter.id.is_empty() || p.record.id.starts_with(&filter.id))
        .filter(|p| filter.state.as_ref().is_none_or(|s| s.state == state(p)))
        .filter(|p| labels_match(&filter.label_selector, &p.record.config.labels))
        .map(|p| cri::PodSandbox {
            id: p.record.id.clone(),
            metadata: p.record.config.metadata.clone(),
            state: state(&p),
            created_at: p.record.created_at,
            labels: p.record.config.labels.clone(),
            annotations: p.record.config.annotations.clone(),
            runtime_handler: p.record.runtime_handler.clone(),
        })
        .collect();
    items.sort_by_key(|p| std::cmp::Reverse(p.created_at));
    Ok(cri::ListPodSandboxResponse { items })
}
