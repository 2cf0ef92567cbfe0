//! The container runtime: pods and containers on namespaces, cgroups and
//! overlayfs, driven by the node core. This is the internal API both front
//! doors use (the CRI server now, the static-pod manager later).
//!
//! Who owns what:
//! - the daemon (this module) owns the records under `root_dir` (pods,
//!   containers), the overlay mounts, the cgroup directories, and the pod
//!   state directories under `state_dir`;
//! - each pod's infra process (`crate::infra`) owns its namespaces, its
//!   containers' processes, stdio and log files, and writes each
//!   container's `status.json` (pid, start, exit). It outlives the daemon.
//!
//! Layout:
//! ```text
//! root_dir/pods/<pod>.json                  pod record
//! root_dir/containers/<id>/container.json   container record
//! root_dir/containers/<id>/status.json      written by the infra
//! root_dir/containers/<id>/config.json      OCI bundle spec
//! root_dir/containers/<id>/{rootfs,upper,work,volumes}
//! state_dir/pods/<pod>/{infra.json,infra.sock,infra.log,hosts,hostname,resolv.conf,shm/,runc/}
//! ```

pub mod cgroups;
pub mod container;
pub mod infra_client;
pub mod mounts;
pub mod records;
pub mod sandbox;
pub mod seccomp;
pub mod spec;
pub mod streams;
pub mod user;
pub mod userns;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::image::ImageService;
use crate::infra::protocol::ContainerStatus;
use cgroups::{CgroupError, Cgroups};
use infra_client::InfraError;
pub use records::{ContainerRecord, SandboxRecord};
use spec::{HostFeatures, SpecError};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Infra(#[from] InfraError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error(transparent)]
    Userns(#[from] userns::UsernsError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

/// A container's lifecycle state, derived from its record and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
}

/// A container as callers see it.
#[derive(Debug, Clone)]
pub struct ContainerView {
    pub record: ContainerRecord,
    pub status: ContainerStatus,
    pub state: ContainerState,
}

/// A pod as callers see it.
#[derive(Debug, Clone)]
pub struct PodView {
    pub record: SandboxRecord,
    /// Ready and its infra process alive.
    pub ready: bool,
}

/// The output of `exec_sync`.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

#[derive(Default)]
struct Index {
    pods: HashMap<String, SandboxRecord>,
    containers: HashMap<String, ContainerRecord>,
    /// Reserved names (`pod:<name>` / `ctr:<name>`) → ID.
    names: HashMap<String, String>,
    /// Host ID ranges of user-namespaced pods (pod ID → range), including
    /// pods still being set up.
    userns: HashMap<String, userns::IdRange>,
}

pub struct Runtime {
    pub(crate) config: Arc<Config>,
    pub(crate) images: Arc<ImageService>,
    pub(crate) network: Arc<crate::network::Network>,
    pub(crate) cgroups: Cgroups,
    pub(crate) host: HostFeatures,
    index: Mutex<Index>,
    /// One async lock per pod or container ID: operations on one object
    /// are serialised, different objects proceed in parallel.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Objects changed since the event watcher last looked.
    pub changes: crate::events::Changes,
}

impl Runtime {
    /// Open the runtime's state: load records, settle what changed while
    /// the daemon was down, re-pin image layers in use.
    pub async fn open(
        config: Arc<Config>,
        images: Arc<ImageService>,
        network: Arc<crate::network::Network>,
    ) -> Result<Arc<Runtime>> {
        let cgroups = Cgroups::detect()?;
        let host = HostFeatures {
            oom_score_adj_min: oom_score_adj_min(),
            apparmor: std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
                .map(|s| s.trim() == "Y")
                .unwrap_or(false),
            cgroup_v2: cgroups.v2,
            held_capabilities: caps::read(None, caps::CapSet::Bounding)
                .map(|set| {
                    set.iter()
                        .filter_map(|c| spec::parse_capability(&c.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            cgroup_controllers: Some(cgroups.controllers()),
            cgroup_v1_hierarchies: if cgroups.v2 {
                Vec::new()
            } else {
                cgroups.hierarchies.iter().map(|h| h.mount.clone()).collect()
            },
        };
        for dir in [
            config.root_dir.join("pods"),
            config.root_dir.join("containers"),
            config.state_dir.join("pods"),
            config.root_dir.join("trash"),
            config.state_dir.join("trash"),
        ] {
            crate::fsutil::ensure_dir(&dir, 0o711).map_err(io_err(format!("create {}", dir.display())))?;
        }
        let layers = config.root_dir.join("images");
        userns::probe(if layers.is_dir() { &layers } else { &config.root_dir }).await;
        let rt = Arc::new(Runtime {
            config,
            images,
            network,
            cgroups,
            host,
            index: Mutex::new(Index::default()),
            locks: Mutex::new(HashMap::new()),
            changes: crate::events::Changes::new(),
        });
        let rt2 = Arc::clone(&rt);
        tokio::task::spawn_blocking(move || rt2.recover())
            .await
            .map_err(|e| RuntimeError::Internal(format!("recovery panicked: {e}")))??;
        Ok(rt)
    }

    pub fn pod_state_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("pods").join(id)
    }

    pub(crate) fn pod_record_path(&self, id: &str) -> PathBuf {
        self.config.root_dir.join("pods").join(format!("{id}.json"))
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.config.root_dir.join("containers").join(id)
    }

    async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.locks.lock().expect("locks");
            Arc::clone(locks.entry(id.to_string()).or_default())
        };
        m.lock_owned().await
    }

    fn forget_lock(&self, id: &str) {
        self.locks.lock().expect("locks").remove(id);
    }

    /// Move a directory out of the way at once (one rename) and delete it
    /// in the background: removing a container's writable layer can take
    /// many milliseconds and the CRI call need not wait for it. A crash
    /// before the deletion ends is settled by `recover`, which empties the
    /// trash.
    pub(crate) fn trash(&self, dir: &Path, base: &Path) {
        let doomed = base.join("trash").join(new_id());
        let _ = crate::fsutil::ensure_dir(&base.join("trash"), 0o700);
        let target = match std::fs::rename(dir, &doomed) {
            Ok(()) => doomed,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!("moving {} to the trash: {e}; deleting in place", dir.display());
                dir.to_path_buf()
            }
        };
        tokio::spawn(async move {
            // Out of descriptors or memory is retried for a while (the
            // directory would otherwise stay until the next start).
            let mut delay = std::time::Duration::from_millis(50);
            for attempt in 0.. {
                let t = target.clone();
                let result = tokio::task::spawn_blocking(move || crate::fsutil::remove_all(&t)).await;
                let Ok(Err(e)) = result else { return };
                let transient = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM));
                if !transient || attempt >= 40 {
                    tracing::warn!("removing {}: {e}", target.display());
                    return;
                }
                if attempt == 0 {
                    tracing::warn!("removing {}: {e}; retrying", target.display());
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
        });
    }

    /// Load every record, then bring them in line with reality.
    fn recover(&self) -> Result<()> {
        for base in [&self.config.root_dir, &self.config.state_dir] {
            for e in std::fs::read_dir(base.join("trash")).into_iter().flatten().flatten() {
                let _ = crate::fsutil::remove_all(&e.path());
            }
        }
        let pods = records::load_pods(&self.config.root_dir.join("pods"));
        let containers = records::load_containers(&self.config.root_dir.join("containers"));
        let (mut interrupted, pods): (Vec<_>, Vec<_>) = pods.into_iter().partition(|p| p.setting_up);
        for p in &mut interrupted {
            self.abandon_setup(p);
        }
        let mut idx = self.index.lock().expect("index");
        for mut p in pods {
            if p.ready && !sandbox::infra_alive(&p) {
                tracing::warn!(pod = %p.id, "the pod's infra process is gone; marking the pod not ready");
                crate::metrics::infra_died();
                p.ready = false;
                let _ = records::save_pod(&self.pod_record_path(&p.id), &p);
            }
            idx.names.insert(format!("pod:{}", p.name), p.id.clone());
            if let Some(r) = p.userns {
                idx.userns.insert(p.id.clone(), r);
            }
            idx.pods.insert(p.id.clone(), p);
        }
        for c in containers {
            if !idx.pods.contains_key(&c.pod_id) {
                tracing::warn!(container = %c.id, pod = %c.pod_id, "container of an unknown pod; it will be listed until removed");
            }
            self.images
                .store()
                .pin(&format!("container:{}", c.id), c.layers.clone());
            idx.names.insert(format!("ctr:{}", c.name), c.id.clone());
            idx.containers.insert(c.id.clone(), c);
        }
        // Containers whose pod's infra died while we were away cannot be
        // running: record that once, with what is known.
        let dead_pods: Vec<String> = idx.pods.values().filter(|p| !p.ready).map(|p| p.id.clone()).collect();
        let orphans: Vec<ContainerRecord> = idx
            .containers
            .values()
            .filter(|c| dead_pods.contains(&c.pod_id) || !idx.pods.contains_key(&c.pod_id))
            .cloned()
            .collect();
        // Network attachments: finish any ADD or DEL a crash interrupted,
        // release those of pods that are no longer ready, then let the
        // network free whatever no ready pod holds.
        let unfinished: Vec<SandboxRecord> = idx
            .pods
            .values()
            .filter(|p| p.network.as_ref().is_some_and(|n| n.phase != "ready" || !p.ready))
            .cloned()
            .collect();
        let valid: Vec<String> = idx
            .pods
            .values()
            .filter(|p| p.ready && p.network.as_ref().is_some_and(|n| n.phase == "ready"))
            .map(|p| p.id.clone())
            .collect();
        drop(idx);
        for c in orphans {
            self.settle_dead(&c);
        }
        for mut p in unfinished {
            tracing::info!(pod = %p.id, "releasing the network of a pod that is not running");
            match self.release_network(&mut p) {
                Ok(()) => {
                    self.index.lock().expect("index").pods.insert(p.id.clone(), p);
                }
                Err(e) => tracing::warn!(pod = %p.id, "releasing the pod's network: {e}"),
            }
        }
        self.network.gc(&valid);
        Ok(())
    }

    /// A container whose infra is gone: if its status still says running,
    /// it was killed with its pod; record an unknown exit.
    pub(crate) fn settle_dead(&self, c: &ContainerRecord) {
        let path = self.container_dir(&c.id).join("status.json");
        let mut st = records::load_status(&path).unwrap_or_else(|| ContainerStatus {
            id: c.id.clone(),
            ..Default::default()
        });
        if st.running() {
            st.exit_code = Some(255);
            st.finished_at = crate::unix_nanos();
            st.reason = "Unknown".into();
            st.message = "the pod's infra process exited while the container ran".into();
            st.pid = None;
            let _ = crate::fsutil::write_atomic(&path, &serde_json::to_vec(&st).unwrap_or_default(), false);
        }
    }

    /// The current status of a container record.
    pub(crate) fn view(&self, record: ContainerRecord) -> ContainerView {
        let status = records::load_status(&self.container_dir(&record.id).join("status.json")).unwrap_or_else(|| {
            ContainerStatus {
                id: record.id.clone(),
                ..Default::default()
            }
        });
        let state = if status.exit_code.is_some() {
            ContainerState::Exited
        } else if status.started_at != 0 {
            ContainerState::Running
        } else {
            ContainerState::Created
        };
        ContainerView { record, status, state }
    }

    pub fn pods(&self) -> Vec<PodView> {
        let idx = self.index.lock().expect("index");
        idx.pods.values().cloned().map(|p| self.pod_view(p)).collect()
    }

    pub fn pod(&self, id: &str) -> Result<PodView> {
        let idx = self.index.lock().expect("index");
        let p = idx.pods.get(id).cloned().ok_or_else(|| RuntimeError::NotFound {
            kind: "pod sandbox",
            id: id.to_string(),
        })?;
        Ok(self.pod_view(p))
    }

    fn pod_view(&self, record: SandboxRecord) -> PodView {
        let ready = record.ready && sandbox::infra_alive(&record);
        PodView { record, ready }
    }

    pub fn containers(&self) -> Vec<ContainerView> {
        let records: Vec<ContainerRecord> = self.index.lock().expect("index").containers.values().cloned().collect();
        records.into_iter().map(|r| self.view(r)).collect()
    }

    pub fn container(&self, id: &str) -> Result<ContainerView> {
        let record = self
            .index
            .lock()
            .expect("index")
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound {
                kind: "container",
                id: id.to_string(),
            })?;
        Ok(self.view(record))
    }

    /// Flush state at daemon shutdown (pods keep running).
    pub fn shutdown(&self) {}
}

/// Without CAP_SYS_RESOURCE a process may not go below the score it
/// started with; with it, anything down to -1000.
fn oom_score_adj_min() -> i64 {
    let caps = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = caps
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_RESOURCE: u64 = 24;
    if eff & (1 << CAP_SYS_RESOURCE) != 0 {
        -1000
    } else {
        std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A new random 64-hex-digit ID, as containerd makes them.
pub fn new_id() -> String {
    crate::fsutil::random_hex(32)
}

/// Does `path` stay inside its base when joined (no absolute part, no
/// `..`)? For client-supplied relative paths.
/// An absolute path with no `..` component (`.` and repeated slashes are
/// harmless).
pub fn is_clean_absolute(path: &str) -> bool {
    let p = Path::new(path);
    p.is_absolute() && !path.contains('\0') && p.components().all(|c| c != std::path::Component::ParentDir)
}

pub fn is_clean_relative(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty()
        && p.is_relative()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir))
}
