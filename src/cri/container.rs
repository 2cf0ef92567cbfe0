//! Container RPCs: translate between CRI messages and the runtime.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use tonic::Status;

use super::sandbox::labels_match;
use crate::runtime::{ContainerState, ContainerView, Runtime};

pub async fn create(
    rt: &Arc<Runtime>,
    req: cri::CreateContainerRequest,
) -> Result<cri::CreateContainerResponse, Status> {
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("CreateContainer: config is required"))?;
    let id = rt.create_container(&req.pod_sandbox_id, config).await?;
    Ok(cri::CreateContainerResponse { container_id: id })
}

pub async fn start(rt: &Arc<Runtime>, req: cri::StartContainerRequest) -> Result<cri::StartContainerResponse, Status> {
    rt.start_container(&req.container_id).await?;
    Ok(cri::StartContainerResponse {})
}

pub async fn stop(rt: &Arc<Runtime>, req: cri::StopContainerRequest) -> Result<cri::StopContainerResponse, Status> {
    rt.stop_container(&req.container_id, req.timeout).await?;
    Ok(cri::StopContainerResponse {})
}

pub async fn remove(
    rt: &Arc<Runtime>,
    req: cri::RemoveContainerRequest,
) -> Result<cri::RemoveContainerResponse, Status> {
    rt.remove_container(&req.container_id).await?;
    Ok(cri::RemoveContainerResponse {})
}

fn state(v: &ContainerView) -> i32 {
    match v.state {
        ContainerState::Created => cri::ContainerState::ContainerCreated as i32,
        ContainerState::Running => cri::ContainerState::ContainerRunning as i32,
        ContainerState::Exited => cri::ContainerState::ContainerExited as i32,
    }
}

pub fn list(rt: &Runtime, req: cri::ListContainersRequest) -> Result<cri::ListContainersResponse, Status> {
    let filter = req.filter.unwrap_or_default();
    let mut containers: Vec<cri::Container> = rt
        .containers()
        .into_iter()
        .filter(|c| filter.id.is_empty() || c.record.id.starts_with(&filter.id))
        .filter(|c| filter.pod_sandbox_id.is_empty() || c.record.pod_id.starts_with(&filter.pod_sandbox_id))
        .filter(|c| filter.state.as_ref().is_none_or(|s| s.state == state(c)))
        .filter(|c| labels_match(&filter.label_selector, &c.record.config.labels))
        .map(|c| cri::Container {
            id: c.record.id.clone(),
            pod_sandbox_id: c.record.pod_id.clone(),
            metadata: c.record.config.metadata.clone(),
            image: c.record.config.image.clone(),
            image_ref: c.record.image_ref.clone(),
            state: state(&c),
            created_at: c.record.created_at,
            labels: c.record.config.labels.clone(),
            annotations: c.record.config.annotations.clone(),
            image_id: c.record.image_id.clone(),
        })
        .collect();
    containers.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    Ok(cri::ListContainersResponse { containers })
}

pub fn status(rt: &Runtime, req: cri::ContainerStatusRequest) -> Result<cri::ContainerStatusResponse, Status> {
    let c = rt.container(&req.container_id)?;
    let rec = &c.record;
    let spec: Option<serde_json::Value> = std::fs::read(rt.container_dir(&rec.id).join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let user = spec
        .as_ref()
        .and_then(|s| s.get("process"))
        .and_then(|p| p.get("user"))
        .map(|u| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: u.get("uid").and_then(|v| v.as_i64()).unwrap_or(0),
                gid: u.get("gid").and_then(|v| v.as_i64()).unwrap_or(0),
                supplemental_groups: u
                    .get("additionalGids")
                    .and_then(|v| v.as_array())
                    .map(|a| a.iter().filter_map(|g| g.as_i64()).collect())
                    .unwrap_or_default(),
            }),
        });
    let mut info = HashMap::new();
    if req.verbose {
        info.insert(
            "info".to_string(),
            serde_json::json!({
                "sandboxID": rec.pod_id,
                "pid": c.status.pid,
                "rootfs": rec.rootfs,
                "cgroup": rec.cgroup,
                "runtimeSpec": spec,
                "config": rec.config,
            })
            .to_string(),
        );
    }
    Ok(cri::ContainerStatusResponse {
        status: Some(cri::ContainerStatus {
            id: rec.id.clone(),
            metadata: rec.config.metadata.clone(),
            state: state(&c),
            created_at: rec.created_at,
            started_at: c.status.started_at,
            finished_at: c.status.finished_at,
            exit_code: c.status.exit_code.unwrap_or(0),
            image: rec.config.image.clone(),
            image_ref: rec.image_ref.clone(),
            reason: c.status.reason.clone(),
            message: c.status.message.clone(),
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
            mounts: rec.config.mounts.clone(),
            log_path: rec
                .log_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            resources: rec.resources.clone().map(|r| cri::ContainerResources {
                linux: Some(r),
                windows: None,
            }),
            image_id: rec.image_id.clone(),
            user,
        }),
        info,
    })
}

pub async fn update_resources(
    rt: &Arc<Runtime>,
    req: cri::UpdateContainerResourcesRequest,
) -> Result<cri::UpdateContainerResourcesResponse, Status> {
    let linux = req
        .linux
        .ok_or_else(|| Status::invalid_argument("UpdateContainerResources: linux resources are required"))?;
    rt.update_container_resources(&req.container_id, linux).await?;
    Ok(cri::UpdateContainerResourcesResponse {})
}

pub async fn reopen_log(
    rt: &Arc<Runtime>,
    req: cri::ReopenContainerLogRequest,
) -> Result<cri::ReopenContainerLogResponse, Status> {
    rt.reopen_container_log(&req.container_id).await?;
    Ok(cri::ReopenContainerLogResponse {})
}

pub async fn exec_sync(rt: &Arc<Runtime>, req: cri::ExecSyncRequest) -> Result<cri::ExecSyncResponse, Status> {
    if req.timeout < 0 {
        return Err(Status::invalid_argument("ExecSync: timeout must not be negative"));
    }
    let out = rt
        .exec_sync(
            &req.container_id,
            req.cmd,
            std::time::Duration::from_secs(req.timeout as u64),
        )
        .await?;
    Ok(cri::ExecSyncResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit_code,
    })
}
