//! The CRI service as an external kubelet sees it: everything but the
//! static pods.
//!
//! A kubelet stops and removes every sandbox it finds that it did not
//! create. On this socket the static pods (and their containers) do not
//! exist: lists leave them out, addressing one by id answers NotFound,
//! and stopping or removing one is the no-op it is for any unknown id.
//! crictl on the main socket still sees and debugs them. A kubelet cannot
//! make a pod invisible to itself either: the static-pod label is
//! reserved (see `sandbox::run`).

use std::sync::Arc;

use futures::StreamExt;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::{RuntimeService as CriRuntimeService, RuntimeServiceServer};
use tonic::{Request, Response, Status};

use super::events::EventStream;
use super::subject::WithSubject;
use super::Cri;
use crate::node::Node;

#[derive(Clone)]
pub struct KubeletView {
    /// The full service, with each request's subject in scope for logs.
    inner: WithSubject,
}

impl KubeletView {
    pub fn new(cri: Cri) -> KubeletView {
        KubeletView {
            inner: WithSubject(cri),
        }
    }

    pub fn runtime_server(&self) -> RuntimeServiceServer<KubeletView> {
        RuntimeServiceServer::new(self.clone())
    }

    /// Images are shared by every pod; the kubelet's image GC must see
    /// them all (the runtime refuses to remove an image a container uses).
    pub fn image_server(&self) -> ImageServiceServer<WithSubject> {
        self.inner.0.image_server()
    }

    fn node(&self) -> &Arc<Node> {
        &self.inner.0.node
    }

    fn hidden_pod(&self, id: &str) -> bool {
        !id.is_empty() && self.node().is_static_pod(id)
    }

    fn hidden_container(&self, id: &str) -> bool {
        !id.is_empty() && self.node().is_static_container(id)
    }

    fn pod_not_found(id: &str) -> Status {
        Status::not_found(format!("pod sandbox {id:?} not found"))
    }

    fn container_not_found(id: &str) -> Status {
        Status::not_found(format!("container {id:?} not found"))
    }
}

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl CriRuntimeService for KubeletView {
    async fn version(&self, req: Request<cri::VersionRequest>) -> R<cri::VersionResponse> {
        self.inner.version(req).await
    }

    async fn status(&self, req: Request<cri::StatusRequest>) -> R<cri::StatusResponse> {
        self.inner.status(req).await
    }

    async fn runtime_config(&self, req: Request<cri::RuntimeConfigRequest>) -> R<cri::RuntimeConfigResponse> {
        self.inner.runtime_config(req).await
    }

    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> R<cri::UpdateRuntimeConfigResponse> {
        self.inner.update_runtime_config(req).await
    }

    async fn run_pod_sandbox(&self, req: Request<cri::RunPodSandboxRequest>) -> R<cri::RunPodSandboxResponse> {
        self.inner.run_pod_sandbox(req).await
    }

    async fn stop_pod_sandbox(&self, req: Request<cri::StopPodSandboxRequest>) -> R<cri::StopPodSandboxResponse> {
        if self.hidden_pod(&req.get_ref().pod_sandbox_id) {
            return Ok(Response::new(cri::StopPodSandboxResponse {}));
        }
        self.inner.stop_pod_sandbox(req).await
    }

    async fn remove_pod_sandbox(&self, req: Request<cri::RemovePodSandboxRequest>) -> R<cri::RemovePodSandboxResponse> {
        if self.hidden_pod(&req.get_ref().pod_sandbox_id) {
            return Ok(Response::new(cri::RemovePodSandboxResponse {}));
        }
        self.inner.remove_pod_sandbox(req).await
    }

    async fn pod_sandbox_status(&self, req: Request<cri::PodSandboxStatusRequest>) -> R<cri::PodSandboxStatusResponse> {
        let id = &req.get_ref().pod_sandbox_id;
        if self.hidden_pod(id) {
            return Err(Self::pod_not_found(id));
        }
        self.inner.pod_sandbox_status(req).await
    }

    async fn list_pod_sandbox(&self, req: Request<cri::ListPodSandboxRequest>) -> R<cri::ListPodSandboxResponse> {
        let mut resp = self.inner.list_pod_sandbox(req).await?;
        resp.get_mut()
            .items
            .retain(|p| !crate::static_pods::is_static(&p.labels));
        Ok(resp)
    }

    async fn create_container(&self, req: Request<cri::CreateContainerRequest>) -> R<cri::CreateContainerResponse> {
        let id = &req.get_ref().pod_sandbox_id;
        if self.hidden_pod(id) {
            return Err(Self::pod_not_found(id));
        }
        self.inner.create_container(req).await
    }

    async fn start_container(&self, req: Request<cri::StartContainerRequest>) -> R<cri::StartContainerResponse> {
        let id = &req.get_ref().container_id;
        if self.hidden_container(id) {
            return Err(Self::container_not_found(id));
        }
        self.inner.start_container(req).await
    }

    async fn stop_container(&self, req: Request<cri::StopContainerRequest>) -> R<cri::StopContainerResponse> {
        if self.hidden_container(&req.get_ref().container_id) {
            return Ok(Response::new(cri::StopContainerResponse {}));
        }
        self.inner.stop_container(req).await
    }

    async fn remove_container(&self, req: Request<cri::RemoveContainerRequest>) -> R<cri::RemoveContainerResponse> {
        if self.hidden_container(&req.get_ref().container_id) {
            return Ok(Response::new(cri::RemoveContainerResponse {}));
        }
        self.inner.remove_container(req).await
    }

    async fn list_containers(&self, req: Request<cri::ListContainersRequest>) -> R<cri::ListContainersResponse> {
        let mut resp = self.inner.list_containers(req).await?;
        let node = Arc::clone(self.node());
        resp.get_mut()
            .containers
            .retain(|c| !node.is_static_pod(&c.pod_sandbox_id));
        Ok(resp)
    }

    async fn container_status(&self, req: Request<cri::ContainerStatusRequest>) -> R<cri::ContainerStatusResponse> {
        let id = &req.get_ref().container_id;
        if self.hidden_container(id) {
            return Err(Self::container_not_found(id));
        }
        self.inner.container_status(req).await
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> R<cri::UpdateContainerResourcesResponse> {
        let id = &req.get_ref().container_id;
        if self.hidden_container(id) {
            return Err(Self::container_not_found(id));
        }
        self.inner.update_container_resources(req).await
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> R<cri::ReopenContainerLogResponse> {
        let id = &req.get_ref().container_id;
        if self.hidden_container(id) {
            return Err(Self::container_not_found(id));
        }
        self.inner.reopen_container_log(req).await
    }

    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> R<cri::ExecSyncResponse> {
        let id = &req.get_ref().container_id;
        if self.hidden_container(id) {
            return Err(Self::container_not_found(id));
        }
        self.inner.exec_sync(req).await
    }

    async fn exec(&self, req: Request<cri::ExecRequest>) -> R<cri::ExecResponse> {
        let id = &req.get_ref().container_id;
        if self.hidden_container(id) {
            return Err(Self::container_not_found(id));
        }
        self.inner.exec(req).await
    }

    async fn attach(&self, req: Request<cri::AttachRequest>) -> R<cri::AttachResponse> {
        let id = &req.get_ref().container_id;
        if self.hidden_container(id) {
            return Err(Self::container_not_found(id));
        }
        self.inner.attach(req).await
    }

    async fn port_forward(&self, req: Request<cri::PortForwardRequest>) -> R<cri::PortForwardResponse> {
        let id = &req.get_ref().pod_sandbox_id;
        if self.hidden_pod(id) {
            return Err(Self::pod_not_found(id));
        }
        self.inner.port_forward(req).await
    }

    async fn container_stats(&self, req: Request<cri::ContainerStatsRequest>) -> R<cri::ContainerStatsResponse> {
        let id = &req.get_ref().container_id;
        if self.hidden_container(id) {
            return Err(Self::container_not_found(id));
        }
        self.inner.container_stats(req).await
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> R<cri::ListContainerStatsResponse> {
        let mut resp = self.inner.list_container_stats(req).await?;
        let node = Arc::clone(self.node());
        resp.get_mut()
            .stats
            .retain(|s| !s.attributes.as_ref().is_some_and(|a| node.is_static_container(&a.id)));
        Ok(resp)
    }

    async fn pod_sandbox_stats(&self, req: Request<cri::PodSandboxStatsRequest>) -> R<cri::PodSandboxStatsResponse> {
        let id = &req.get_ref().pod_sandbox_id;
        if self.hidden_pod(id) {
            return Err(Self::pod_not_found(id));
        }
        self.inner.pod_sandbox_stats(req).await
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> R<cri::ListPodSandboxStatsResponse> {
        let mut resp = self.inner.list_pod_sandbox_stats(req).await?;
        let node = Arc::clone(self.node());
        resp.get_mut()
            .stats
            .retain(|s| !s.attributes.as_ref().is_some_and(|a| node.is_static_pod(&a.id)));
        Ok(resp)
    }

    async fn checkpoint_container(
        &self,
        req: Request<cri::CheckpointContainerRequest>,
    ) -> R<cri::CheckpointContainerResponse> {
        let id = &req.get_ref().container_id;
        if self.hidden_container(id) {
            return Err(Self::container_not_found(id));
        }
        self.inner.checkpoint_container(req).await
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(&self, req: Request<cri::GetEventsRequest>) -> R<Self::GetContainerEventsStream> {
        let stream = self.inner.get_container_events(req).await?.into_inner();
        let visible = stream.filter(|ev| {
            let hide = ev.as_ref().is_ok_and(|ev| {
                ev.pod_sandbox_status
                    .as_ref()
                    .is_some_and(|s| crate::static_pods::is_static(&s.labels))
            });
            futures::future::ready(!hide)
        });
        Ok(Response::new(Box::pin(visible) as EventStream))
    }

    async fn list_metric_descriptors(
        &self,
        req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> R<cri::ListMetricDescriptorsResponse> {
        self.inner.list_metric_descriptors(req).await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> R<cri::ListPodSandboxMetricsResponse> {
        let mut resp = self.inner.list_pod_sandbox_metrics(req).await?;
        let node = Arc::clone(self.node());
        resp.get_mut()
            .pod_metrics
            .retain(|m| !node.is_static_pod(&m.pod_sandbox_id));
        Ok(resp)
    }
}
