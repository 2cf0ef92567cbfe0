//! The read-only status endpoint, like the kubelet's: `GET /pods` (a
//! `PodList` of the static pods with their status, in Kubernetes JSON),
//! `GET /pods/<namespace>/<name>`, `GET /manifests` (every manifest file,
//! accepted or rejected with why) and `GET /healthz`. Served on a unix
//! socket and, when configured, a loopback TCP address.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::worker::{ContainerView, PodView, Terminated};
use super::StaticPods;

fn time(nanos: i64) -> Option<Time> {
    if nanos <= 0 {
        return None;
    }
    k8s_openapi::jiff::Timestamp::from_nanosecond(nanos as i128)
        .ok()
        .map(Time)
}

fn terminated(t: &Terminated) -> k8s::ContainerStateTerminated {
    k8s::ContainerStateTerminated {
        exit_code: t.exit_code,
        reason: (!t.reason.is_empty())
            .then(|| t.reason.clone())
            .or_else(|| Some(if t.exit_code == 0 { "Completed" } else { "Error" }.to_string())),
        message: (!t.message.is_empty()).then(|| t.message.clone()),
        started_at: time(t.started_at),
        finished_at: time(t.finished_at),
        container_id: Some(format!("nodelet://{}", t.container_id)),
        signal: None,
    }
}

fn container_status(c: &ContainerView) -> k8s::ContainerStatus {
    let state = if let Some(since) = c.running_since {
        k8s::ContainerState {
            running: Some(k8s::ContainerStateRunning {
                started_at: time(since),
            }),
            ..Default::default()
        }
    } else if let Some(t) = &c.terminated {
        k8s::ContainerState {
            terminated: Some(terminated(t)),
            ..Default::default()
        }
    } else {
        let (reason, message) = c
            .waiting
            .clone()
            .unwrap_or_else(|| ("ContainerCreating".into(), String::new()));
        k8s::ContainerState {
            waiting: Some(k8s::ContainerStateWaiting {
                reason: Some(reason),
                message: (!message.is_empty()).then_some(message),
            }),
            ..Default::default()
        }
    };
    k8s::ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone(),
        container_id: (!c.container_id.is_empty()).then(|| c.container_id.clone()),
        ready: c.ready,
        started: Some(c.started),
        restart_count: c.restart_count as i32,
        state: Some(state),
        last_state: Some(k8s::ContainerState {
            terminated: c.last_terminated.as_ref().map(terminated),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn condition(kind: &str, ok: bool, since: i64) -> k8s::PodCondition {
    k8s::PodCondition {
        type_: kind.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        last_transition_time: time(since),
        ..Default::default()
    }
}

/// A static pod as the kubelet's `/pods` shows it.
pub fn pod_object(v: &PodView) -> k8s::Pod {
    let mut pod = v.pod.clone();
    let annotations = pod.metadata.annotations.get_or_insert_with(Default::default);
    annotations.insert("kubernetes.io/config.source".into(), "file".into());
    annotations.insert("kubernetes.io/config.seen".into(), "true".into());
    annotations.insert("nodelet.io/manifest-file".into(), v.file.display().to_string());
    pod.metadata.creation_timestamp = time(v.start_time);
    let ready = v.phase == "Running" && v.containers_ready;
    pod.status = Some(k8s::PodStatus {
        phase: Some(v.phase.clone()),
        conditions: Some(vec![
            condition("PodScheduled", true, v.start_time),
            condition("Initialized", v.initialized, v.start_time),
            condition("ContainersReady", v.containers_ready, v.start_time),
            condition("Ready", ready, v.start_time),
        ]),
        message: (!v.message.is_empty()).then(|| v.message.clone()),
        host_ip: (!v.host_ip.is_empty()).then(|| v.host_ip.clone()),
        host_ips: (!v.host_ip.is_empty()).then(|| vec![k8s::HostIP { ip: v.host_ip.clone() }]),
        pod_ip: v.pod_ips.first().cloned(),
        pod_ips: (!v.pod_ips.is_empty()).then(|| v.pod_ips.iter().map(|ip| k8s::PodIP { ip: ip.clone() }).collect()),
        start_time: time(v.start_time),
        qos_class: (!v.qos.is_empty()).then(|| v.qos.clone()),
        container_statuses: Some(v.containers.iter().map(container_status).collect()),
        init_container_statuses: (!v.init.is_empty()).then(|| v.init.iter().map(container_status).collect()),
        ..Default::default()
    });
    pod
}

/// `GET /pods`.
pub fn pod_list(pods: &[PodView]) -> serde_json::Value {
    serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": pods.iter().map(pod_object).collect::<Vec<_>>(),
    })
}

async fn pods(State(m): State<Arc<StaticPods>>) -> Json<serde_json::Value> {
    Json(pod_list(&m.pods()))
}

async fn one_pod(State(m): State<Arc<StaticPods>>, UrlPath((ns, name)): UrlPath<(String, String)>) -> Response {
    let found = m.pods().into_iter().find(|v| {
        v.pod.metadata.namespace.as_deref() == Some(ns.as_str())
            && v.pod.metadata.name.as_deref() == Some(name.as_str())
    });
    match found {
        Some(v) => {
            let mut obj = serde_json::to_value(pod_object(&v)).unwrap_or_default();
            if let Some(map) = obj.as_object_mut() {
                map.insert("kind".into(), "Pod".into());
                map.insert("apiVersion".into(), "v1".into());
            }
            Json(obj).into_response()
        }
        None => (StatusCode::NOT_FOUND, format!("no static pod {ns}/{name}\n")).into_response(),
    }
}

async fn manifests(State(m): State<Arc<StaticPods>>) -> Json<serde_json::Value> {
    let accepted: Vec<serde_json::Value> = m
        .pods()
        .iter()
        .map(|v| {
            serde_json::json!({
                "file": v.file,
                "pod": format!(
                    "{}/{}",
                    v.pod.metadata.namespace.clone().unwrap_or_default(),
                    v.pod.metadata.name.clone().unwrap_or_default()
                ),
                "accepted": true,
            })
        })
        .collect();
    let rejected: Vec<serde_json::Value> = m
        .rejected()
        .iter()
        .map(|r| serde_json::json!({ "file": r.file, "accepted": false, "reason": r.reason }))
        .collect();
    Json(serde_json::json!({
        "directory": m.dir(),
        "nodeName": m.node_name(),
        "synced": m.synced(),
        "manifests": accepted.into_iter().chain(rejected).collect::<Vec<_>>(),
    }))
}

async fn healthz() -> &'static str {
    "ok"
}

pub fn router(m: Arc<StaticPods>) -> Router {
    Router::new()
        .route("/pods", get(pods))
        .route("/pods/", get(pods))
        .route("/pods/{namespace}/{name}", get(one_pod))
        .route("/manifests", get(manifests))
        .route("/healthz", get(healthz))
        .with_state(m)
}

/// Serve the endpoint on `socket` (mode 0660) and, if not empty, `address`.
pub async fn serve(
    m: Arc<StaticPods>,
    socket: &Path,
    address: &str,
) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
    use std::os::unix::fs::PermissionsExt;
    let mut tasks = Vec::new();
    if !socket.as_os_str().is_empty() {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = tokio::net::UnixListener::bind(socket)?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
        let app = router(Arc::clone(&m));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("status endpoint (unix socket) ended: {e}");
            }
        }));
    }
    if !address.is_empty() {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let app = router(m);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("status endpoint (TCP) ended: {e}");
            }
        }));
    }
    Ok(tasks)
}
