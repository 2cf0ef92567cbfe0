//! Who each RPC is about: the pod, container or image it names, so that a
//! failed request's log line carries their IDs and names as fields.
//!
//! A thin layer in front of the CRI services: it reads the IDs from the
//! request, then runs the real handler inside a task-local scope, where
//! `traced()` finds them. Names are looked up only when a request fails.

use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService as CriImageService;
use k8s_cri::v1::runtime_service_server::RuntimeService as CriRuntimeService;
use tonic::{Request, Response, Status};

use super::Cri;
use crate::runtime::Runtime;

tokio::task_local! {
    static SUBJECT: Subject;
}

/// The objects a request names.
#[derive(Clone, Default)]
pub struct Subject {
    pub pod: Option<String>,
    pub pod_name: Option<String>,
    pub container: Option<String>,
    pub container_name: Option<String>,
    pub image: Option<String>,
    runtime: Option<Arc<Runtime>>,
}

impl Subject {
    /// The subject of the request being served, with the names of the
    /// pod and container it names filled in where they are known.
    pub fn current() -> Option<Subject> {
        let mut s = SUBJECT.try_with(Subject::clone).ok()?;
        let Some(rt) = s.runtime.take() else { return Some(s) };
        if let Some(c) = s.container.as_deref().and_then(|c| rt.container(c).ok()) {
            s.pod.get_or_insert(c.record.pod_id);
            if s.container_name.is_none() {
                s.container_name = c.record.config.metadata.map(|m| m.name);
            }
        }
        if s.pod_name.is_none() {
            s.pod_name = s
                .pod
                .as_deref()
                .and_then(|p| rt.pod(p).ok())
                .and_then(|p| p.record.config.metadata)
                .map(|m| format!("{}/{}", m.namespace, m.name));
        }
        Some(s)
    }
}

/// Reading a request's subject.
pub trait About {
    fn about(&self) -> Subject {
        Subject::default()
    }
}

fn some(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

macro_rules! about_nothing {
    ($($t:ident),* $(,)?) => { $(impl About for cri::$t {})* };
}

about_nothing!(
    VersionRequest,
    ListPodSandboxRequest,
    ListContainersRequest,
    ListContainerStatsRequest,
    ListPodSandboxStatsRequest,
    UpdateRuntimeConfigRequest,
    StatusRequest,
    GetEventsRequest,
    ListMetricDescriptorsRequest,
    ListPodSandboxMetricsRequest,
    RuntimeConfigRequest,
    ListImagesRequest,
    ImageFsInfoRequest,
);

macro_rules! about_pod {
    ($($t:ident),* $(,)?) => {
        $(impl About for cri::$t {
            fn about(&self) -> Subject {
                Subject { pod: some(&self.pod_sandbox_id), ..Default::default() }
            }
        })*
    };
}

about_pod!(
    StopPodSandboxRequest,
    RemovePodSandboxRequest,
    PodSandboxStatusRequest,
    PodSandboxStatsRequest,
    PortForwardRequest,
);

macro_rules! about_container {
    ($($t:ident),* $(,)?) => {
        $(impl About for cri::$t {
            fn about(&self) -> Subject {
                Subject { container: some(&self.container_id), ..Default::default() }
            }
        })*
    };
}

about_container!(
    StartContainerRequest,
    StopContainerRequest,
    RemoveContainerRequest,
    ContainerStatusRequest,
    UpdateContainerResourcesRequest,
    ReopenContainerLogRequest,
    ExecSyncRequest,
    ExecRequest,
    AttachRequest,
    ContainerStatsRequest,
    CheckpointContainerRequest,
);

impl About for cri::RunPodSandboxRequest {
    fn about(&self) -> Subject {
        let meta = self.config.as_ref().and_then(|c| c.metadata.as_ref());
        Subject {
            pod_name: meta.map(|m| format!("{}/{}", m.namespace, m.name)),
            ..Default::default()
        }
    }
}

impl About for cri::CreateContainerRequest {
    fn about(&self) -> Subject {
        Subject {
            pod: some(&self.pod_sandbox_id),
            container_name: self
                .config
                .as_ref()
                .and_then(|c| c.metadata.as_ref())
                .map(|m| m.name.clone()),
            image: self
                .config
                .as_ref()
                .and_then(|c| c.image.as_ref())
                .and_then(|i| some(&i.image)),
            ..Default::default()
        }
    }
}

macro_rules! about_image {
    ($($t:ident),* $(,)?) => {
        $(impl About for cri::$t {
            fn about(&self) -> Subject {
                Subject { image: self.image.as_ref().and_then(|i| some(&i.image)), ..Default::default() }
            }
        })*
    };
}

about_image!(PullImageRequest, ImageStatusRequest, RemoveImageRequest);

/// The CRI services with each request's subject in scope.
#[derive(Clone)]
pub struct WithSubject(pub Cri);

impl WithSubject {
    fn scope<R: About>(&self, req: &Request<R>) -> Subject {
        Subject {
            runtime: Some(Arc::clone(&self.0.node.runtime)),
            ..req.get_ref().about()
        }
    }
}

macro_rules! delegate {
    (
        #[$attr:meta] impl $service:ident {
            $($method:ident($req:ident) -> $resp:ty;)*
        }
        $($rest:tt)*
    ) => {
        #[$attr]
        impl $service for WithSubject {
            $(
                async fn $method(&self, req: Request<cri::$req>) -> Result<Response<$resp>, Status> {
                    let subject = self.scope(&req);
                    SUBJECT.scope(subject, <Cri as $service>::$method(&self.0, req)).await
                }
            )*
            $($rest)*
        }
    };
}

delegate! {
    #[tonic::async_trait] impl CriRuntimeService {
        version(VersionRequest) -> cri::VersionResponse;
        run_pod_sandbox(RunPodSandboxRequest) -> cri::RunPodSandboxResponse;
        stop_pod_sandbox(StopPodSandboxRequest) -> cri::StopPodSandboxResponse;
        remove_pod_sandbox(RemovePodSandboxRequest) -> cri::RemovePodSandboxResponse;
        pod_sandbox_status(PodSandboxStatusRequest) -> cri::PodSandboxStatusResponse;
        list_pod_sandbox(ListPodSandboxRequest) -> cri::ListPodSandboxResponse;
        create_container(CreateContainerRequest) -> cri::CreateContainerResponse;
        start_container(StartContainerRequest) -> cri::StartContainerResponse;
        stop_container(StopContainerRequest) -> cri::StopContainerResponse;
        remove_container(RemoveContainerRequest) -> cri::RemoveContainerResponse;
        list_containers(ListContainersRequest) -> cri::ListContainersResponse;
        container_status(ContainerStatusRequest) -> cri::ContainerStatusResponse;
        update_container_resources(UpdateContainerResourcesRequest) -> cri::UpdateContainerResourcesResponse;
        reopen_container_log(ReopenContainerLogRequest) -> cri::ReopenContainerLogResponse;
        exec_sync(ExecSyncRequest) -> cri::ExecSyncResponse;
        exec(ExecRequest) -> cri::ExecResponse;
        attach(AttachRequest) -> cri::AttachResponse;
        port_forward(PortForwardRequest) -> cri::PortForwardResponse;
        container_stats(ContainerStatsRequest) -> cri::ContainerStatsResponse;
        list_container_stats(ListContainerStatsRequest) -> cri::ListContainerStatsResponse;
        pod_sandbox_stats(PodSandboxStatsRequest) -> cri::PodSandboxStatsResponse;
        list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> cri::ListPodSandboxStatsResponse;
        update_runtime_config(UpdateRuntimeConfigRequest) -> cri::UpdateRuntimeConfigResponse;
        status(StatusRequest) -> cri::StatusResponse;
        checkpoint_container(CheckpointContainerRequest) -> cri::CheckpointContainerResponse;
        get_container_events(GetEventsRequest) -> <Cri as CriRuntimeService>::GetContainerEventsStream;
        list_metric_descriptors(ListMetricDescriptorsRequest) -> cri::ListMetricDescriptorsResponse;
        list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> cri::ListPodSandboxMetricsResponse;
        runtime_config(RuntimeConfigRequest) -> cri::RuntimeConfigResponse;
    }
    type GetContainerEventsStream = <Cri as CriRuntimeService>::GetContainerEventsStream;
}

delegate! {
    #[tonic::async_trait] impl CriImageService {
        list_images(ListImagesRequest) -> cri::ListImagesResponse;
        image_status(ImageStatusRequest) -> cri::ImageStatusResponse;
        pull_image(PullImageRequest) -> cri::PullImageResponse;
        remove_image(RemoveImageRequest) -> cri::RemoveImageResponse;
        image_fs_info(ImageFsInfoRequest) -> cri::ImageFsInfoResponse;
    }
}
