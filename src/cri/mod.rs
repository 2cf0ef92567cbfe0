//! The CRI v1 front door: RuntimeService and ImageService over a unix
//! socket. Each RPC family lives in its own file and only translates between
//! protobuf and the node core (`crate::node`); the bindings are the
//! `k8s-cri` crate's.

pub mod container;
pub mod events;
pub mod images;
pub mod kubelet_view;
pub mod runtime_info;
pub mod sandbox;
pub mod stats;
pub mod status;
pub mod streaming;
pub mod subject;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::{ImageService as CriImageService, ImageServiceServer};
use k8s_cri::v1::runtime_service_server::{RuntimeService as CriRuntimeService, RuntimeServiceServer};
use tonic::{Request, Response, Status};

use crate::node::Node;
use status::not_yet;

/// Both CRI services over one node core.
#[derive(Clone)]
pub struct Cri {
    node: Arc<Node>,
    events: Arc<events::Feed>,
}

impl Cri {
    pub fn new(node: Arc<Node>) -> Cri {
        let events = events::Feed::start(&node.runtime);
        Cri { node, events }
    }

    pub fn runtime_server(&self) -> RuntimeServiceServer<subject::WithSubject> {
        RuntimeServiceServer::new(subject::WithSubject(self.clone()))
    }

    pub fn image_server(&self) -> ImageServiceServer<subject::WithSubject> {
        ImageServiceServer::new(subject::WithSubject(self.clone()))
    }
}

/// RPCs being served now, so shutdown waits for them and not for idle
/// connections (a kubelet never closes its own).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

struct InFlightGuard;
impl InFlightGuard {
    fn new() -> InFlightGuard {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlightGuard
    }
}
impl Drop for InFlightGuard {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wait until no RPC is being served.
pub async fn drained() {
    while IN_FLIGHT.load(Ordering::SeqCst) > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Run one RPC body, logging its name, duration and outcome at debug level
/// (errors that mean a bug at error level), with the pod, container and
/// image it concerns as fields, and counting it in the metrics.
async fn traced<T>(rpc: &'static str, body: impl Future<Output = Result<T, Status>>) -> Result<Response<T>, Status> {
    let _guard = InFlightGuard::new();
    let start = Instant::now();
    let result = body.await;
    let elapsed = start.elapsed();
    let micros = elapsed.as_micros() as u64;
    crate::metrics::rpc_done(rpc, elapsed, result.as_ref().err().map(|s| s.code()));
    match &result {
        Ok(_) => tracing::debug!(rpc, micros, "ok"),
        Err(s) => {
            let who = subject::Subject::current().unwrap_or_default();
            macro_rules! failed {
                ($level:ident) => {
                    tracing::$level!(
                        rpc,
                        micros,
                        code = ?s.code(),
                        error = s.message(),
                        pod = who.pod.as_deref(),
                        pod_name = who.pod_name.as_deref(),
                        container = who.container.as_deref(),
                        container_name = who.container_name.as_deref(),
                        image = who.image.as_deref(),
                        "failed"
                    )
                };
            }
            if s.code() == tonic::Code::Internal {
                failed!(error)
            } else {
                failed!(debug)
            }
        }
    }
    result.map(Response::new)
}

/// Run blocking store work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Status> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

#[tonic::async_trait]
impl CriRuntimeService for Cri {
    async fn version(&self, _req: Request<cri::VersionRequest>) -> Result<Response<cri::VersionResponse>, Status> {
        traced("Version", async { Ok(runtime_info::version()) }).await
    }

    async fn status(&self, req: Request<cri::StatusRequest>) -> Result<Response<cri::StatusResponse>, Status> {
        traced("Status", async {
            Ok(runtime_info::status(&self.node, req.into_inner()))
        })
        .await
    }

    async fn runtime_config(
        &self,
        _req: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        traced("RuntimeConfig", async { Ok(runtime_info::runtime_config(&self.node)) }).await
    }

    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        let network = Arc::clone(&self.node.network);
        traced(
            "UpdateRuntimeConfig",
            blocking(move || {
                let cidr = req
                    .into_inner()
                    .runtime_config
                    .and_then(|c| c.network_config)
                    .map(|n| n.pod_cidr)
                    .unwrap_or_default();
                network.set_pod_cidr(&cidr)?;
                Ok(cri::UpdateRuntimeConfigResponse {})
            }),
        )
        .await
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        traced("RunPodSandbox", sandbox::run(&self.node.runtime, req.into_inner())).await
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        traced("StopPodSandbox", sandbox::stop(&self.node.runtime, req.into_inner())).await
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        traced(
            "RemovePodSandbox",
            sandbox::remove(&self.node.runtime, req.into_inner()),
        )
        .await
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let rt = Arc::clone(&self.node.runtime);
        traced(
            "PodSandboxStatus",
            blocking(move || sandbox::status(&rt, req.into_inner())),
        )
        .await
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let rt = Arc::clone(&self.node.runtime);
        traced("ListPodSandbox", blocking(move || sandbox::list(&rt, req.into_inner()))).await
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        traced(
            "CreateContainer",
            container::create(&self.node.runtime, req.into_inner()),
        )
        .await
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        traced("StartContainer", container::start(&self.node.runtime, req.into_inner())).await
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        traced("StopContainer", container::stop(&self.node.runtime, req.into_inner())).await
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        traced(
            "RemoveContainer",
            container::remove(&self.node.runtime, req.into_inner()),
        )
        .await
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let rt = Arc::clone(&self.node.runtime);
        traced(
            "ListContainers",
            blocking(move || container::list(&rt, req.into_inner())),
        )
        .await
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let rt = Arc::clone(&self.node.runtime);
        traced(
            "ContainerStatus",
            blocking(move || container::status(&rt, req.into_inner())),
        )
        .await
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        traced(
            "UpdateContainerResources",
            container::update_resources(&self.node.runtime, req.into_inner()),
        )
        .await
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        traced(
            "ReopenContainerLog",
            container::reopen_log(&self.node.runtime, req.into_inner()),
        )
        .await
    }

    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> Result<Response<cri::ExecSyncResponse>, Status> {
        traced("ExecSync", container::exec_sync(&self.node.runtime, req.into_inner())).await
    }

    async fn exec(&self, req: Request<cri::ExecRequest>) -> Result<Response<cri::ExecResponse>, Status> {
        traced("Exec", async {
            streaming::exec(&self.node.streaming, req.into_inner())
        })
        .await
    }

    async fn attach(&self, req: Request<cri::AttachRequest>) -> Result<Response<cri::AttachResponse>, Status> {
        traced("Attach", async {
            streaming::attach(&self.node.streaming, req.into_inner())
        })
        .await
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        traced("PortForward", async {
            streaming::port_forward(&self.node.streaming, req.into_inner())
        })
        .await
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let node = Arc::clone(&self.node);
        traced(
            "ContainerStats",
            blocking(move || stats::container(&node, req.into_inner())),
        )
        .await
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let node = Arc::clone(&self.node);
        traced(
            "ListContainerStats",
            blocking(move || stats::list_containers(&node, req.into_inner())),
        )
        .await
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let node = Arc::clone(&self.node);
        traced("PodSandboxStats", blocking(move || stats::pod(&node, req.into_inner()))).await
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let node = Arc::clone(&self.node);
        traced(
            "ListPodSandboxStats",
            blocking(move || stats::list_pods(&node, req.into_inner())),
        )
        .await
    }

    async fn checkpoint_container(
        &self,
        _req: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        traced("CheckpointContainer", async { Err(not_yet("CheckpointContainer")) }).await
    }

    type GetContainerEventsStream = events::EventStream;

    async fn get_container_events(
        &self,
        _req: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        traced("GetContainerEvents", async { Ok(self.events.subscribe()) }).await
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        traced("ListMetricDescriptors", async { Ok(stats::metric_descriptors()) }).await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        let node = Arc::clone(&self.node);
        traced(
            "ListPodSandboxMetrics",
            blocking(move || Ok(stats::pod_sandbox_metrics(&node))),
        )
        .await
    }
}

#[tonic::async_trait]
impl CriImageService for Cri {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let images = Arc::clone(&self.node.images);
        traced(
            "ListImages",
            blocking(move || images::list_images(&images, req.into_inner())),
        )
        .await
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let images = Arc::clone(&self.node.images);
        traced(
            "ImageStatus",
            blocking(move || images::image_status(&images, req.into_inner())),
        )
        .await
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        traced("PullImage", images::pull_image(&self.node.images, req.into_inner())).await
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let images = Arc::clone(&self.node.images);
        traced(
            "RemoveImage",
            blocking(move || images::remove_image(&images, req.into_inner())),
        )
        .await
    }

    async fn image_fs_info(
        &self,
        _req: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let images = Arc::clone(&self.node.images);
        traced("ImageFsInfo", blocking(move || images::image_fs_info(&images))).await
    }
}
