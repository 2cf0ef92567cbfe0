//! Pod and container records: what the daemon knows about each, written
//! atomically (write to a temporary file, rename) so a `kill -9` at any
//! moment leaves the old or the new record, never a torn one.
//!
//! Records under `root_dir` are not fsynced: a crash of the daemon keeps
//! them in the page cache, and after a power cut the containers they
//! describe are gone anyway; start-up reconciliation handles both.

use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};

use crate::infra::protocol::ContainerStatus;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    /// The reserved name: `<name>_<namespace>_<uid>_<attempt>`.
    pub name: String,
    pub config: cri::PodSandboxConfig,
    pub runtime_handler: String,
    /// Unix nanoseconds.
    pub created_at: i64,
    /// Ready until stopped (or its infra died).
    pub ready: bool,
    pub infra_pid: i32,
    /// The infra's start time (clock ticks after boot, /proc/<pid>/stat
    /// field 22): tells a live infra from a recycled pid.
    pub infra_start_time: u64,
    /// Absolute cgroupfs path of the pod's cgroup.
    pub cgroup: String,
    pub host_network: bool,
    pub host_ipc: bool,
    /// `NamespaceOption.pid` of the pod (0 POD, 1 CONTAINER, 2 NODE, 3 TARGET).
    pub pid_mode: i32,
    /// The pod's `/dev/shm` tmpfs, when it has its own.
    pub shm: Option<PathBuf>,
    /// StopPodSandbox finished: containers killed, roots and shm
    /// unmounted, namespaces released. (Not-ready alone can also mean the
    /// infra died, which leaves that work to do.)
    #[serde(default)]
    pub stopped: bool,
    /// The pod's network attachment (none for hostNetwork).
    #[serde(default)]
    pub network: Option<crate::network::Attachment>,
    /// The host IDs of the pod's own user namespace (`hostUsers: false`);
    /// none: the host's user namespace. Free again once the record is gone.
    #[serde(default)]
    pub userns: Option<super::userns::IdRange>,
    /// RunPodSandbox has not finished: the record is written before any
    /// of the pod's resources exist, so a crash midway leaves a record
    /// that start-up recovery tears down (cgroup, infra, mounts, state
    /// directory) instead of leaking them.
    #[serde(default)]
    pub setting_up: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    /// The reserved name: `<name>_<pod name>_<namespace>_<uid>_<attempt>`.
    pub name: String,
    pub config: cri::ContainerConfig,
    /// `sha256:<config digest>`.
    pub image_id: String,
    /// A repo digest of the image when it has one, else its ID.
    pub image_ref: String,
    pub created_at: i64,
    /// Absolute path of the CRI log file, if any.
    pub log_path: Option<PathBuf>,
    pub rootfs: PathBuf,
    /// Absolute cgroupfs path.
    pub cgroup: String,
    /// The image layers the rootfs stacks (pinned against image GC).
    pub layers: Vec<String>,
    /// Resources now in force (changed by UpdateContainerResources).
    pub resources: Option<cri::LinuxContainerResources>,
    /// The image's StopSignal as a number; SIGTERM when none.
    pub stop_signal: i32,
}

pub fn save_pod(path: &Path, p: &SandboxRecord) -> std::io::Result<()> {
    crate::fsutil::write_atomic(path, &serde_json::to_vec(p).expect("pod record serializes"), false)
}

pub fn save_container(path: &Path, c: &ContainerRecord) -> std::io::Result<()> {
    crate::fsutil::write_atomic(
        path,
        &serde_json::to_vec(c).expect("container record serializes"),
        false,
    )
}

pub fn load_status(path: &Path) -> Option<ContainerStatus> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Every readable pod record; unreadable ones are reported and skipped.
pub fn load_pods(dir: &Path) -> Vec<SandboxRecord> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        // A write_atomic temporary left by a crash mid-write (the record
        // itself is the old or the new version): nothing refers to it.
        if e.file_name().to_string_lossy().starts_with('.') && e.file_name().to_string_lossy().contains(".tmp-") {
            let _ = std::fs::remove_file(&p);
            continue;
        }
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        match std::fs::read(&p).map(|b| serde_json::from_slice::<SandboxRecord>(&b)) {
            Ok(Ok(r)) => out.push(r),
            other => tracing::warn!(path = %p.display(), ?other, "skipping unreadable pod record"),
        }
    }
    out
}

pub fn load_containers(dir: &Path) -> Vec<ContainerRecord> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path().join("container.json");
        match std::fs::read(&p).map(|b| serde_json::from_slice::<ContainerRecord>(&b)) {
            Ok(Ok(r)) => out.push(r),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A directory without a record: a create that crashed before
                // recording. Nothing references it.
                tracing::warn!(dir = %e.to_string(), path = %p.display(), "removing a container directory without a record");
                let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
                let _ = super::mounts::unmount(&dir.join("rootfs"));
                let _ = crate::fsutil::remove_all(&dir);
            }
            other => tracing::warn!(path = %p.display(), ?other, "skipping unreadable container record"),
        }
    }
    out
}
