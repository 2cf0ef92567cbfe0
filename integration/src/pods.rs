//! Helpers for pod and container tests: CRI configs and the calls a
//! kubelet makes, with the waiting a test needs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::cri::{api, spec, Images, Runtime};
use crate::daemon::Daemon;
use crate::registry::Registry;

/// A daemon with `test/busybox` (and any `extra` images) pulled.
pub struct World {
    pub daemon: Daemon,
    pub registry: Registry,
    /// The node: the network namespace the daemon and registry run in.
    pub node: std::sync::Arc<crate::netns::NetNs>,
    pub rt: Runtime,
    pub images: Images,
    pub busybox: String,
}

impl World {
    pub async fn new(extra_images: &[&str], config: &str) -> World {
        crate::require_root();
        let node = std::sync::Arc::new(crate::netns::NetNs::new("nlt"));
        let registry = Registry::start_in(&node);
        registry.push(&crate::test_image("test/busybox"));
        for i in extra_images {
            registry.push(&crate::test_image(i));
        }
        let daemon = Daemon::start_in(config, Some(std::sync::Arc::clone(&node))).await;
        let (rt, mut images) = daemon.clients().await;
        let busybox = registry.image("test/busybox");
        for i in std::iter::once(busybox.clone()).chain(extra_images.iter().map(|i| registry.image(i))) {
            images
                .pull_image(api::PullImageRequest {
                    image: spec(&i),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("pull {i}: {e}"));
        }
        World {
            daemon,
            registry,
            node,
            rt,
            images,
            busybox,
        }
    }

    pub fn logs_dir(&self) -> std::path::PathBuf {
        self.daemon.path("logs")
    }

    /// A pod config with a log directory under the test's directory.
    pub fn pod(&self, name: &str) -> api::PodSandboxConfig {
        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: self.logs_dir().join(name).display().to_string(),
            labels: HashMap::from([("app".to_string(), name.to_string())]),
            linux: Some(api::LinuxPodSandboxConfig::default()),
            ..Default::default()
        }
    }

    pub async fn run_pod(&mut self, config: api::PodSandboxConfig) -> String {
        self.rt
            .run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id
    }

    /// A busybox container running `sh -c script`.
    pub fn container(&self, name: &str, script: &str) -> api::ContainerConfig {
        api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: spec(&self.busybox),
            command: vec!["sh".into(), "-c".into(), script.to_string()],
            log_path: format!("{name}/0.log"),
            labels: HashMap::from([("container".to_string(), name.to_string())]),
            linux: Some(api::LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    pub async fn create(
        &mut self,
        pod: &str,
        pod_config: &api::PodSandboxConfig,
        config: api::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        self.rt
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: pod.to_string(),
                config: Some(config),
                sandbox_config: Some(pod_config.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    pub async fn start(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.rt
            .start_container(api::StartContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .map(|_| ())
    }

    /// Create and start.
    pub async fn run(&mut self, pod: &str, pod_config: &api::PodSandboxConfig, config: api::ContainerConfig) -> String {
        let id = self.create(pod, pod_config, config).await.expect("CreateContainer");
        self.start(&id).await.expect("StartContainer");
        id
    }

    pub async fn status(&mut self, id: &str) -> api::ContainerStatus {
        self.rt
            .container_status(api::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("status")
    }

    /// Wait until the container has exited; its status.
    pub async fn wait_exit(&mut self, id: &str, limit: Duration) -> api::ContainerStatus {
        let deadline = Instant::now() + limit;
        loop {
            let st = self.status(id).await;
            if st.state == api::ContainerState::ContainerExited as i32 {
                return st;
            }
            assert!(Instant::now() < deadline, "container {id} still {:?}", st.state);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the container's log (under the pod's log directory)
    /// contains `needle`.
    pub async fn wait_log(&self, rel: &str, needle: &str) {
        let path = self.logs_dir().join(rel);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::fs::read_to_string(&path).is_ok_and(|l| l.contains(needle)) {
                return;
            }
            assert!(Instant::now() < deadline, "{} never showed {needle:?}", path.display());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn exec(&mut self, id: &str, cmd: &[&str]) -> api::ExecSyncResponse {
        self.rt
            .exec_sync(api::ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 10,
            })
            .await
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}"))
            .into_inner()
    }

    /// `sh -c` in the container; stdout as a string.
    pub async fn sh(&mut self, id: &str, script: &str) -> String {
        let r = self.exec(id, &["sh", "-c", script]).await;
        assert_eq!(r.exit_code, 0, "{script}: {}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8_lossy(&r.stdout).into_owned()
    }

    pub async fn pod_status(&mut self, id: &str) -> api::PodSandboxStatus {
        self.rt
            .pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: false,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner()
            .status
            .expect("status")
    }

    pub async fn stop_pod(&mut self, id: &str) {
        self.rt
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .expect("StopPodSandbox");
    }

    pub async fn remove_pod(&mut self, id: &str) {
        self.rt
            .remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .expect("RemovePodSandbox");
    }

    /// The infra PID of a pod (from verbose status).
    pub async fn infra_pid(&mut self, id: &str) -> i32 {
        let r = self
            .rt
            .pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: true,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(&r.info["info"]).expect("verbose info");
        info["pid"].as_i64().expect("pid") as i32
    }

    /// Nothing of the test's pods is left: no infra process of ours, no
    /// cgroup under the test's parent with tasks, no mount under the test
    /// directory but the ones listed in `allowed`.
    pub fn assert_no_leaks(&self) {
        self.assert_no_leaks_except(&[]);
    }

    /// [`World::assert_no_leaks`], with mounts the test made itself (a
    /// small file system under the test directory, say) allowed.
    pub fn assert_no_leaks_except(&self, allowed_mounts: &[std::path::PathBuf]) {
        let cgroups = crate::cleanup::cgroup_dirs(&self.daemon.cgroup_parent);
        let mut tasks = Vec::new();
        for d in &cgroups {
            for e in walk(d) {
                if let Ok(p) = std::fs::read_to_string(e.join("cgroup.procs")) {
                    if !p.trim().is_empty() {
                        tasks.push(format!("{}: {}", e.display(), p.trim()));
                    }
                }
            }
        }
        assert!(tasks.is_empty(), "tasks left in cgroups: {tasks:?}");
        // The QoS tier directories stay, as the kubelet keeps them.
        let leftover: Vec<_> = cgroups
            .iter()
            .flat_map(|d| {
                walk(d)
                    .into_iter()
                    .skip(1)
                    .filter(|p| {
                        !matches!(
                            p.strip_prefix(d).ok().and_then(|r| r.to_str()),
                            Some("besteffort" | "burstable")
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(leftover.is_empty(), "cgroups left: {leftover:?}");
        let mounts: Vec<_> = crate::cleanup::mounts_below(self.daemon.dir.path())
            .into_iter()
            .filter(|m| !allowed_mounts.contains(m))
            .collect();
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        let containers = std::fs::read_dir(self.daemon.root_dir.join("containers"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(containers, 0, "container directories left");
        let pods = std::fs::read_dir(self.daemon.state_dir.join("pods"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(pods, 0, "pod state directories left");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(walk(&e.path()));
        }
    }
    out
}
