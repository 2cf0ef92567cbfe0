//! The CRI v1 front door: RuntimeService and ImageService over a unix
//! socket. Each RPC family lives in its own file and only translates between
//! protobuf and the node core (`crate::node`); the bindings are the
//! `k8s-cri` crate's.

pub mod container;
pub mod images;
pub mod runtime_info;
pub mod sandbox;
pub mod status;
pub mod streaming;

use std::future::Future;
use std::pin::Pin;
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
}

impl Cri {
    pub fn new(node: Arc<Node>) -> Cri {
        Cri { node }
    }

    pub fn runtime_server(&self) -> RuntimeServiceServer<Cri> {
        RuntimeServiceServer::new(self.clone())
    }

    pub fn image_server(&self) -> ImageServiceServer<Cri> {
        ImageServiceServer::new(self.clone())
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
/// (errors that mean a bug at error level).
async fn traced<T>(rpc: &'static str, body: impl Future<Output = Result<T, Status>>) -> Result<Response<T>, Status> {
    let _guard = InFlightGuard::new();
    let start = Instant::now();
    let result = body.await;
    let micros = start.elapsed().as_micros() as u64;
    match &result {
        Ok(_) => tracing::debug!(rpc, micros, "ok"),
        Err(s) if s.code() == tonic::Code::Internal => {
            tracing::error!(rpc, micros, code = ?s.code(), error = s.message(), "failed")
        }
        Err(s) => tracing::debug!(rpc, micros, code = ?s.code(), error = s.message(), "failed"),
    }
    result.map(Response::new)
}

/// Run blocking store work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Status> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

type EventStream = Pin<Box<dyn futures::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

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
        _req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        traced("UpdateRuntimeConfig", async { Err(not_yet("UpdateRuntimeConfig")) }).await
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
        _req: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        traced("ContainerStats", async { Err(not_yet("ContainerStats")) }).await
    }

    async fn list_container_stats(
        &self,
        _req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        traced("ListContainerStats", async { Err(not_yet("ListContainerStats")) }).await
    }

    async fn pod_sandbox_stats(
        &self,
        _req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        traced("PodSandboxStats", async { Err(not_yet("PodSandboxStats")) }).await
    }

    async fn list_pod_sandbox_stats(
        &self,
        _req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        traced("ListPodSandboxStats", async { Err(not_yet("ListPodSandboxStats")) }).await
    }

    async fn checkpoint_container(
        &self,
        _req: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        traced("CheckpointContainer", async { Err(not_yet("CheckpointContainer")) }).await
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _req: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        traced("GetContainerEvents", async { Err(not_yet("GetContainerEvents")) }).await
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        traced("ListMetricDescriptors", async { Err(not_yet("ListMetricDescriptors")) }).await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        traced("ListPodSandboxMetrics", async { Err(not_yet("ListPodSandboxMetrics")) }).await
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
