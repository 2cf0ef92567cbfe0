//! Containers: an overlayfs root over the image's layers, an OCI bundle
//! built from the CRI request, and a process started by the pod's infra
//! (which runs libcontainer).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use k8s_cri::v1 as cri;

use super::records::{self, ContainerRecord};
use super::spec::{self, PidNamespace, PodNamespaces, SpecInput};
use super::{infra_client, io_err, mounts, new_id, sandbox, ContainerState, ExecOutput, Result, Runtime, RuntimeError};
use crate::infra::protocol::{ContainerStatus, Request, Response, StartSpec};

/// ExecSync output kept per stream; more is dropped (documented in
/// docs/operations.md). The kubelet keeps only 10 KiB of probe output.
pub const EXEC_MAX_OUTPUT: usize = 4 << 20;
/// Time given to a container after SIGKILL before we stop waiting.
const KILL_WAIT: Duration = Duration::from_secs(10);

fn invalid(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidArgument(msg.into())
}

/// The root of a container of a user-namespaced pod: an overlay whose lower
/// layers are idmapped through the pod's user namespace (files owned by 0
/// in the image appear owned by the pod's root, host ID `range.start`, and
/// so by root inside). The upper layer is not idmapped (overlayfs creates
/// its work directory with the mounter's credentials, which an idmapped
/// upper would not map): it holds host IDs, as the container writes them,
/// and its root directory belongs to the pod's root. The idmapped layer
/// mounts are detached again once the overlay holds its own references.
fn idmapped_overlay(
    dir: &Path,
    lowers: &[PathBuf],
    range: super::userns::IdRange,
    userns: &std::fs::File,
) -> Result<()> {
    let layers = dir.join("layers");
    let mut mapped = Vec::with_capacity(lowers.len());
    let result = (|| {
        for (i, lower) in lowers.iter().enumerate() {
            let target = layers.join(i.to_string());
            std::fs::create_dir_all(&target).map_err(io_err(format!("create {}", target.display())))?;
            mounts::idmapped_bind(lower, &target, std::os::fd::AsFd::as_fd(userns), false)
                .map_err(io_err(format!("idmapped mount of layer {}", lower.display())))?;
            mapped.push(target);
        }
        let uid = Some(nix::unistd::Uid::from_raw(range.start));
        let gid = Some(nix::unistd::Gid::from_raw(range.start));
        nix::unistd::chown(&dir.join("upper"), uid, gid)
            .map_err(|e| io_err("chown the container's upper layer")(e.into()))?;
        mounts::overlay(&mapped, &dir.join("upper"), &dir.join("work"), &dir.join("rootfs"))
            .map_err(io_err("mount the container's overlay root"))
    })();
    for m in &mapped {
        match umount2_detach(m) {
            // Never a recursive delete here: a mount left behind would take
            // the image layer with it.
            Ok(()) => {
                let _ = std::fs::remove_dir(m);
            }
            Err(e) => tracing::warn!("detach {}: {e}", m.display()),
        }
    }
    let _ = std::fs::remove_dir(&layers);
    result
}

fn umount2_detach(p: &Path) -> nix::Result<()> {
    nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH)
}

/// `SIGTERM`, `TERM`, `15` → 15.
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok().map(|sig| sig as i32);
    }
    let name = if s.starts_with("SIG") {
        s.to_string()
    } else {
        format!("SIG{s}")
    };
    name.parse::<nix::sys::signal::Signal>().ok().map(|sig| sig as i32)
}

impl Runtime {
    pub async fn create_container(self: &Arc<Self>, pod_id: &str, config: cri::ContainerConfig) -> Result<String> {
        let pod = self.pod(pod_id)?;
        if !pod.ready {
            return Err(RuntimeError::FailedPrecondition(format!(
                "pod sandbox {pod_id} is not ready"
            )));
        }
        let pod = pod.record;
        let meta = config.metadata.clone().ok_or_else(|| invalid("metadata is required"))?;
        if meta.name.is_empty() || meta.name.contains(['/', '\0']) || meta.name == "." || meta.name == ".." {
            return Err(invalid(format!(
                "metadata.name {:?} must be non-empty, contain no '/' and not be '.' or '..'",
                meta.name
            )));
        }
        let image = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        if image.is_empty() {
            return Err(invalid("image.image is required"));
        }
        let log_path = if config.log_path.is_empty() {
            None
        } else {
            if !super::is_clean_relative(&config.log_path) {
                return Err(invalid(format!(
                    "log_path {:?} must be a relative path without '..'",
                    config.log_path
                )));
            }
            if pod.config.log_directory.is_empty() {
                return Err(invalid("log_path is set but the pod sandbox has no log_directory"));
            }
            Some(Path::new(&pod.config.log_directory).join(&config.log_path))
        };
        let pod_meta = pod.config.metadata.clone().unwrap_or_default();
        let name = format!(
            "{}_{}_{}_{}_{}",
            meta.name, pod_meta.name, pod_meta.namespace, pod_meta.uid, meta.attempt
        );
        let id = new_id();
        {
            let mut idx = self.index.lock().expect("index");
            if let Some(other) = idx.names.get(&format!("ctr:{name}")) {
                return Err(RuntimeError::AlreadyExists(format!(
                    "container name {name:?} is already used by {other}"
                )));
            }
            idx.names.insert(format!("ctr:{name}"), id.clone());
        }
        let _guard = self.lock(&id).await;
        let rt = Arc::clone(self);
        let id2 = id.clone();
        // One hop off the async workers for all the blocking work: image
        // lookup, overlay mount, spec, record.
        let built = tokio::task::spawn_blocking(move || {
            let rec = rt.images.resolve(&image)?.ok_or_else(|| RuntimeError::NotFound {
                kind: "image",
                id: format!("{image} (pull it first)"),
            })?;
            let details = rt.images.details(rec)?;
            let layers: Vec<String> = details.record.layers.iter().map(|l| l.diff_id.clone()).collect();
            rt.images.store().pin(&format!("container:{id2}"), layers);
            rt.prepare_container(&id2, &pod, config, details, log_path)
        })
        .await
        .map_err(|e| RuntimeError::Internal(e.to_string()));
        match built.and_then(|r| r) {
            Ok(record) => {
                self.index.lock().expect("index").containers.insert(id.clone(), record);
                self.changes.mark(&id);
                Ok(id)
            }
            Err(e) => {
                self.discard_container_dir(&id);
                self.images.store().release(&format!("container:{id}"));
                self.index.lock().expect("index").names.remove(&format!("ctr:{name}"));
                self.forget_lock(&id);
                Err(e)
            }
        }
    }

    /// Rootfs, spec and record of a new container (blocking work).
    fn prepare_container(
        &self,
        id: &str,
        pod: &super::SandboxRecord,
        config: cri::ContainerConfig,
        details: crate::image::ImageDetails,
        log_path: Option<PathBuf>,
    ) -> Result<ContainerRecord> {
        let dir = self.container_dir(id);
        let rootfs = dir.join("rootfs");
        for d in ["rootfs", "upper", "work", "volumes"] {
            std::fs::create_dir_all(dir.join(d)).map_err(io_err(format!("create {}", dir.join(d).display())))?;
        }
        let lowers: Vec<PathBuf> = details
            .record
            .layers
            .iter()
            .rev()
            .map(|l| self.images.store().layer_fs(&l.diff_id))
            .collect::<std::result::Result<_, _>>()
            .map_err(crate::image::ImageError::from)?;
        let pod_dir = self.pod_state_dir(&pod.id);
        let userns = match pod.userns {
            Some(range) => {
                let path = pod_dir.join("ns").join("user");
                let fd = std::fs::File::open(&path).map_err(io_err("open the pod's user namespace"))?;
                Some((path, range, fd))
            }
            None => None,
        };
        match &userns {
            None => mounts::overlay(&lowers, &dir.join("upper"), &dir.join("work"), &rootfs)
                .map_err(io_err("mount the container's overlay root"))?,
            Some((_, range, fd)) => idmapped_overlay(&dir, &lowers, *range, fd)?,
        }
        // CRI mounts the kubelet asks to be idmapped (the pod's volumes):
        // libcontainer 0.7 cannot, so each is cloned here through the
        // pod's user namespace under `idmapped/<i>` and bound from there.
        let mut spec_config = config.clone();
        for (i, m) in spec_config.mounts.iter_mut().enumerate() {
            if m.uid_mappings.is_empty() && m.gid_mappings.is_empty() {
                continue;
            }
            let Some((_, range, fd)) = &userns else { continue };
            if !range.is(&m.uid_mappings) || !range.is(&m.gid_mappings) {
                return Err(invalid(format!(
                    "mounts[{i}].uidMappings/gidMappings: only the pod's own mapping (0 {} {}) is supported",
                    range.start,
                    super::userns::IDS_PER_POD
                )));
            }
            let src = Path::new(&m.host_path);
            let meta = std::fs::metadata(src).map_err(|e| {
                invalid(format!(
                    "mounts[{i}].host_path: {} cannot be accessed: {e}",
                    m.host_path
                ))
            })?;
            let target = dir.join("idmapped").join(i.to_string());
            std::fs::create_dir_all(dir.join("idmapped")).map_err(io_err("create the idmapped mounts directory"))?;
            if meta.is_dir() {
                std::fs::create_dir(&target).map_err(io_err(format!("create {}", target.display())))?;
            } else {
                std::fs::File::create(&target).map_err(io_err(format!("create {}", target.display())))?;
            }
            mounts::idmapped_bind(src, &target, std::os::fd::AsFd::as_fd(fd), true).map_err(io_err(format!(
                "idmapped mount of mounts[{i}].host_path {}",
                m.host_path
            )))?;
            m.host_path = target.to_string_lossy().into_owned();
            m.uid_mappings.clear();
            m.gid_mappings.clear();
        }

        let infra_ns = |ns: &str| pod_dir.join("ns").join(ns);
        let ctr_ns = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let pid = match cri::NamespaceMode::try_from(ctr_ns.pid).unwrap_or(cri::NamespaceMode::Pod) {
            cri::NamespaceMode::Node => PidNamespace::Node,
            cri::NamespaceMode::Container => PidNamespace::Container,
            cri::NamespaceMode::Pod if pod.pid_mode == cri::NamespaceMode::Pod as i32 => {
                PidNamespace::Pod(infra_ns("pid"))
            }
            cri::NamespaceMode::Pod => PidNamespace::Container,
            cri::NamespaceMode::Target => {
                let target = self.container(&ctr_ns.target_id).map_err(|_| {
                    invalid(format!(
                        "namespace_options.target_id {:?} is not a container",
                        ctr_ns.target_id
                    ))
                })?;
                let tpid = target
                    .status
                    .pid
                    .filter(|_| target.state == ContainerState::Running)
                    .ok_or_else(|| {
                        RuntimeError::FailedPrecondition(format!(
                            "target container {} is not running",
                            ctr_ns.target_id
                        ))
                    })?;
                // Pinned like the pod's, for the same reason.
                let pinned = dir.join("target-pid-ns");
                mounts::bind_file(&PathBuf::from(format!("/proc/{tpid}/ns/pid")), &pinned)
                    .map_err(io_err("pin the target container's PID namespace"))?;
                PidNamespace::Target(pinned)
            }
        };
        let namespaces = PodNamespaces {
            network: (!pod.host_network).then(|| infra_ns("net")),
            ipc: (!pod.host_ipc).then(|| infra_ns("ipc")),
            uts: (!pod.host_network).then(|| infra_ns("uts")),
            pid,
            user: userns.as_ref().map(|(path, range, _)| (path.clone(), *range)),
        };
        let pod_files = sandbox::pod_files(&pod_dir, pod.shm.as_ref());
        let cgroup = format!("{}/{}", pod.cgroup.trim_end_matches('/'), id);
        let built = spec::build(&SpecInput {
            id,
            container: &spec_config,
            sandbox: &pod.config,
            image: &details.config,
            rootfs: &rootfs,
            cgroups_path: &cgroup,
            namespaces: &namespaces,
            pod_files: &pod_files,
            volumes_dir: &dir.join("volumes"),
            host: &self.host,
        })?;
        for v in &built.volumes {
            std::fs::create_dir_all(v).map_err(io_err(format!("create volume {}", v.display())))?;
        }
        let spec_json = serde_json::to_vec(&built.spec).map_err(|e| RuntimeError::Internal(e.to_string()))?;
        crate::fsutil::write_atomic(&dir.join("config.json"), &spec_json, false)
            .map_err(io_err("write config.json"))?;

        let stop_signal = details
            .config
            .config()
            .as_ref()
            .and_then(|c| c.stop_signal().clone())
            .and_then(|s| parse_signal(&s))
            .unwrap_or(libc::SIGTERM);
        let image_ref = details
            .record
            .repo_digests
            .first()
            .cloned()
            .unwrap_or_else(|| details.record.id.clone());
        let pod_meta = pod.config.metadata.clone().unwrap_or_default();
        let meta = config.metadata.clone().unwrap_or_default();
        let record = ContainerRecord {
            id: id.to_string(),
            pod_id: pod.id.clone(),
            name: format!(
                "{}_{}_{}_{}_{}",
                meta.name, pod_meta.name, pod_meta.namespace, pod_meta.uid, meta.attempt
            ),
            resources: config.linux.as_ref().and_then(|l| l.resources.clone()),
            config,
            image_id: details.record.id.clone(),
            image_ref,
            created_at: crate::unix_nanos(),
            log_path,
            rootfs,
            cgroup,
            layers: details.record.layers.iter().map(|l| l.diff_id.clone()).collect(),
            stop_signal,
        };
        records::save_container(&dir.join("container.json"), &record).map_err(io_err("write container record"))?;
        Ok(record)
    }

    /// Unmount and delete a container's directory.
    fn discard_container_dir(&self, id: &str) {
        let dir = self.container_dir(id);
        let _ = mounts::unmount(&dir.join("target-pid-ns"));
        for e in std::fs::read_dir(dir.join("idmapped")).into_iter().flatten().flatten() {
            let _ = mounts::unmount(&e.path());
        }
        if let Err(e) = mounts::unmount(&dir.join("rootfs")) {
            tracing::warn!(container = %id, "unmount rootfs: {e}");
        }
        // Deleted in the background, retried if the daemon is out of
        // descriptors.
        self.trash(&dir, &self.config.root_dir);
    }

    fn status_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("status.json")
    }

    pub async fn start_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let _guard = self.lock(id).await;
        let view = self.container(id)?;
        match view.state {
            ContainerState::Created => {}
            ContainerState::Running => {
                return Err(RuntimeError::FailedPrecondition(format!(
                    "container {id} is already running"
                )))
            }
            ContainerState::Exited => {
                return Err(RuntimeError::FailedPrecondition(format!(
                    "container {id} has exited; create a new one"
                )))
            }
        }
        let rec = view.record;
        let pod = self.pod(&rec.pod_id)?;
        if !pod.ready {
            return Err(RuntimeError::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                rec.pod_id
            )));
        }
        if let Some(log) = &rec.log_path {
            if let Some(parent) = log.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(io_err(format!("create log directory {}", parent.display())))?;
            }
        }
        let start = StartSpec {
            id: id.to_string(),
            bundle: self.container_dir(id),
            log_path: rec.log_path.clone(),
            tty: rec.config.tty,
            stdin: rec.config.stdin,
            stdin_once: rec.config.stdin_once,
            status_path: self.status_path(id),
            cgroup_dirs: self.cgroups.dirs(&rec.cgroup),
        };
        let pod_dir = self.pod_state_dir(&rec.pod_id);
        match infra_client::call(&pod_dir, &Request::Start(start), Duration::from_secs(130)).await {
            Ok(_) => {
                self.changes.mark(id);
                tracing::info!(container = %id, pod = %rec.pod_id, "container started");
                Ok(())
            }
            Err(e) => {
                // The container is done: record why, and leave no process,
                // cgroup or runtime state behind.
                let st = ContainerStatus {
                    id: id.to_string(),
                    started_at: 0,
                    finished_at: crate::unix_nanos(),
                    exit_code: Some(128),
                    reason: "StartError".into(),
                    message: e.to_string(),
                    pid: None,
                    local_pid: None,
                };
                let _ = crate::fsutil::write_atomic(
                    &self.status_path(id),
                    &serde_json::to_vec(&st).unwrap_or_default(),
                    false,
                );
                self.changes.mark(id);
                let rt = Arc::clone(self);
                let cg = rec.cgroup.clone();
                let state = pod_dir.join("runc").join(id);
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = rt.cgroups.remove(&cg);
                    let _ = crate::fsutil::remove_all(&state);
                })
                .await;
                Err(RuntimeError::FailedPrecondition(format!(
                    "starting container {id}: {e}"
                )))
            }
        }
    }

    /// Stop: the image's stop signal (SIGTERM by default), then SIGKILL
    /// after `timeout` seconds. Idempotent; an unknown container is fine.
    pub async fn stop_container(self: &Arc<Self>, id: &str, timeout_secs: i64) -> Result<()> {
        let _guard = self.lock(id).await;
        let Ok(view) = self.container(id) else { return Ok(()) };
        if view.state != ContainerState::Running {
            return Ok(());
        }
        self.stop_running(&view.record, timeout_secs.max(0) as u64).await
    }

    async fn stop_running(self: &Arc<Self>, rec: &ContainerRecord, timeout_secs: u64) -> Result<()> {
        let pod_dir = self.pod_state_dir(&rec.pod_id);
        let alive = self.pod(&rec.pod_id).map(|p| p.ready).unwrap_or(false);
        if !alive {
            self.settle_dead(rec);
            return Ok(());
        }
        let wait = |secs: u64| Request::Wait {
            id: rec.id.clone(),
            timeout_ms: secs * 1000,
        };
        if timeout_secs > 0 {
            infra_client::call(
                &pod_dir,
                &Request::Signal {
                    id: rec.id.clone(),
                    signal: rec.stop_signal,
                },
                Duration::from_secs(10),
            )
            .await?;
            let r = infra_client::call(&pod_dir, &wait(timeout_secs), Duration::from_secs(timeout_secs + 10)).await?;
            if matches!(r, Response::Status(_)) {
                return Ok(());
            }
        }
        infra_client::call(
            &pod_dir,
            &Request::Signal {
                id: rec.id.clone(),
                signal: libc::SIGKILL,
            },
            Duration::from_secs(10),
        )
        .await?;
        match infra_client::call(&pod_dir, &wait(KILL_WAIT.as_secs()), KILL_WAIT + Duration::from_secs(5)).await? {
            Response::Status(_) => Ok(()),
            _ => Err(RuntimeError::Internal(format!(
                "container {} did not exit {} s after SIGKILL",
                rec.id,
                KILL_WAIT.as_secs()
            ))),
        }
    }

    /// Remove a container, killing it first if it runs. Idempotent.
    pub async fn remove_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let _guard = self.lock(id).await;
        let Ok(view) = self.container(id) else { return Ok(()) };
        let rec = view.record;
        if view.state == ContainerState::Running {
            self.stop_running(&rec, 0).await?;
        }
        let pod_dir = self.pod_state_dir(&rec.pod_id);
        if self.pod(&rec.pod_id).map(|p| p.ready).unwrap_or(false) {
            let _ = infra_client::call(
                &pod_dir,
                &Request::Forget { id: id.to_string() },
                Duration::from_secs(10),
            )
            .await;
        }
        let rt = Arc::clone(self);
        let rec2 = rec.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            rt.cgroups.remove(&rec2.cgroup)?;
            crate::fsutil::remove_all(&rt.pod_state_dir(&rec2.pod_id).join("runc").join(&rec2.id))
                .map_err(io_err("remove the container's runtime state"))?;
            let dir = rt.container_dir(&rec2.id);
            mounts::unmount(&dir.join("rootfs")).map_err(io_err("unmount the container's root"))?;
            mounts::unmount(&dir.join("target-pid-ns")).map_err(io_err("unmount the target PID namespace"))?;
            // The record goes now; the writable layer's files are deleted
            // in the background (see `Runtime::trash`).
            crate::fsutil::remove_all(&dir.join("container.json")).map_err(io_err("remove the container record"))?;
            Ok(())
        })
        .await
        .map_err(|e| RuntimeError::Internal(e.to_string()))??;
        self.trash(&self.container_dir(id), &self.config.root_dir);
        self.images.store().release(&format!("container:{id}"));
        {
            let mut idx = self.index.lock().expect("index");
            idx.containers.remove(id);
            idx.names.remove(&format!("ctr:{}", rec.name));
        }
        self.forget_lock(id);
        self.changes.mark(id);
        tracing::info!(container = %id, "container removed");
        Ok(())
    }

    pub async fn update_container_resources(
        self: &Arc<Self>,
        id: &str,
        resources: cri::LinuxContainerResources,
    ) -> Result<()> {
        let _guard = self.lock(id).await;
        let view = self.container(id)?;
        if view.state == ContainerState::Exited {
            return Err(RuntimeError::FailedPrecondition(format!("container {id} has exited")));
        }
        let oci = spec::linux_resources(&resources, &self.host)?;
        let mut rec = view.record;
        if view.state == ContainerState::Running {
            let rt = Arc::clone(self);
            let cg = rec.cgroup.clone();
            let oci2 = oci.clone();
            tokio::task::spawn_blocking(move || rt.cgroups.apply(&cg, &oci2))
                .await
                .map_err(|e| RuntimeError::Internal(e.to_string()))??;
        }
        // Keep the bundle in step so the spec on disk says what is in force.
        let bundle = self.container_dir(id).join("config.json");
        let mut spec: oci_spec::runtime::Spec =
            serde_json::from_slice(&std::fs::read(&bundle).map_err(io_err("read config.json"))?)
                .map_err(|e| RuntimeError::Internal(format!("config.json: {e}")))?;
        if let Some(linux) = spec.linux_mut() {
            linux.set_resources(Some(merge_resources(linux.resources().clone(), oci)));
        }
        crate::fsutil::write_atomic(&bundle, &serde_json::to_vec_pretty(&spec).unwrap_or_default(), false)
            .map_err(io_err("write config.json"))?;
        rec.resources = Some(resources);
        records::save_container(&self.container_dir(id).join("container.json"), &rec)
            .map_err(io_err("write container record"))?;
        self.index.lock().expect("index").containers.insert(id.to_string(), rec);
        Ok(())
    }

    pub async fn reopen_container_log(self: &Arc<Self>, id: &str) -> Result<()> {
        let view = self.container(id)?;
        if view.state != ContainerState::Running {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        infra_client::call(
            &self.pod_state_dir(&view.record.pod_id),
            &Request::ReopenLog { id: id.to_string() },
            Duration::from_secs(10),
        )
        .await?;
        Ok(())
    }

    /// Run `cmd` in the container; a `timeout` of zero means none.
    pub async fn exec_sync(self: &Arc<Self>, id: &str, cmd: Vec<String>, timeout: Duration) -> Result<ExecOutput> {
        if cmd.is_empty() {
            return Err(invalid("cmd is required"));
        }
        let view = self.container(id)?;
        if view.state != ContainerState::Running {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let dir = self.container_dir(id);
        let spec: oci_spec::runtime::Spec =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).map_err(io_err("read config.json"))?)
                .map_err(|e| RuntimeError::Internal(format!("config.json: {e}")))?;
        let mut process = spec
            .process()
            .clone()
            .ok_or_else(|| RuntimeError::Internal("spec without process".into()))?;
        process.set_args(Some(cmd.clone()));
        process.set_terminal(Some(false));
        let process_file = dir.join(format!("exec-{}.json", crate::fsutil::random_hex(6)));
        crate::fsutil::write_atomic(&process_file, &serde_json::to_vec(&process).unwrap_or_default(), false)
            .map_err(io_err("write the exec process"))?;
        let timeout_ms = (!timeout.is_zero()).then_some(timeout.as_millis() as u64);
        let limit = if timeout.is_zero() {
            Duration::from_secs(365 * 86400)
        } else {
            timeout + Duration::from_secs(30)
        };
        let result = infra_client::call(
            &self.pod_state_dir(&view.record.pod_id),
            &Request::Exec {
                id: id.to_string(),
                process: process_file.clone(),
                bundle: dir.clone(),
                timeout_ms,
                max_output: EXEC_MAX_OUTPUT,
            },
            limit,
        )
        .await;
        let _ = std::fs::remove_file(&process_file);
        match result? {
            Response::Exec {
                exit_code,
                stdout,
                stderr,
                timed_out,
            } => {
                if timed_out {
                    return Err(RuntimeError::DeadlineExceeded(format!(
                        "command {cmd:?} timed out after {} s and was killed",
                        timeout.as_secs_f64()
                    )));
                }
                let b64 = base64::engine::general_purpose::STANDARD;
                Ok(ExecOutput {
                    stdout: b64.decode(stdout).unwrap_or_default(),
                    stderr: b64.decode(stderr).unwrap_or_default(),
                    exit_code,
                })
            }
            other => Err(RuntimeError::Internal(format!("unexpected answer to exec: {other:?}"))),
        }
    }
}

/// New values replace old ones; absent new values keep the old.
fn merge_resources(
    old: Option<oci_spec::runtime::LinuxResources>,
    new: oci_spec::runtime::LinuxResources,
) -> oci_spec::runtime::LinuxResources {
    let Some(mut merged) = old else { return new };
    if new.cpu().is_some() {
        merged.set_cpu(new.cpu().clone());
    }
    if new.memory().is_some() {
        merged.set_memory(*new.memory());
    }
    if new.hugepage_limits().is_some() {
        merged.set_hugepage_limits(new.hugepage_limits().clone());
    }
    if new.unified().is_some() {
        merged.set_unified(new.unified().clone());
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals() {
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("QUIT"), Some(3));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGRTMIN+3"), None);
        assert_eq!(parse_signal("nope"), None);
    }
}
