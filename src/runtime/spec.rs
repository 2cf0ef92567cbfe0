//! The OCI runtime spec of a container, built from the CRI request, the pod
//! sandbox config and the image config, the way containerd builds it.
//!
//! This is a pure function of its inputs except for reading (never writing)
//! the host paths it must check: bind-mount sources, devices, a localhost
//! seccomp profile, and the image's `/etc/passwd` and `/etc/group` inside
//! the container rootfs (resolved without following links out of it, see
//! `user.rs`).

use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::Spec;

/// Why a spec cannot be built. Every message names the CRI field at fault.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The request is wrong (maps to `InvalidArgument`).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The request is fine but this host cannot honour it (maps to
    /// `FailedPrecondition`), e.g. an AppArmor profile on a host without
    /// AppArmor.
    #[error("{field}: {message}")]
    Unsupported { field: String, message: String },
}

/// How the container's PID namespace is set up, resolved by the caller
/// from the container's (or else the pod's) `NamespaceOption.pid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidNamespace {
    /// `CONTAINER`: a new PID namespace of its own.
    Container,
    /// `POD`: join the infra process's namespace (this path).
    Pod(PathBuf),
    /// `NODE`: the host's.
    Node,
    /// `TARGET`: join another container's namespace (this path).
    Target(PathBuf),
}

/// The pod's namespaces, held by its infra process. `None` means the host's
/// (hostNetwork, hostIPC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNamespaces {
    pub network: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    /// UTS follows the network: shared with the host when hostNetwork.
    pub uts: Option<PathBuf>,
    pub pid: PidNamespace,
}

/// Files the pod provides to every container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFiles {
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname: PathBuf,
    /// The pod's shared `/dev/shm` (a tmpfs the runtime mounted), bind
    /// mounted at `/dev/shm`. `None`: the container gets a private tmpfs.
    pub shm: Option<PathBuf>,
}

/// What this host can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFeatures {
    /// The lowest `oom_score_adj` the runtime may set: 0 without
    /// CAP_SYS_RESOURCE (as on the development VM), -1000 with it. Lower
    /// requested values are clamped to this, never an error.
    pub oom_score_adj_min: i64,
    /// AppArmor is enabled (`/sys/module/apparmor/parameters/enabled` = Y).
    pub apparmor: bool,
    /// cgroup v2 only (unified hierarchy): gives containers a private
    /// cgroup namespace, and `unified` resources are allowed.
    pub cgroup_v2: bool,
}

/// Everything `build` needs.
pub struct SpecInput<'a> {
    /// The container ID (64 hex chars).
    pub id: &'a str,
    pub container: &'a cri::ContainerConfig,
    pub sandbox: &'a cri::PodSandboxConfig,
    pub image: &'a ImageConfiguration,
    /// The container's root filesystem (the merged overlay), absolute.
    pub rootfs: &'a Path,
    /// Absolute cgroupfs path for the container, e.g.
    /// `/nodelet/besteffort/pod<id>/<container id>`.
    pub cgroups_path: &'a str,
    pub namespaces: &'a PodNamespaces,
    pub pod_files: &'a PodFiles,
    /// Where anonymous volumes for the image's `VOLUME`s live; `build`
    /// names one directory per volume under it (see `BuiltSpec::volumes`).
    pub volumes_dir: &'a Path,
    pub host: &'a HostFeatures,
}

/// A built spec and the host directories the caller must create before
/// the container starts.
#[derive(Debug)]
pub struct BuiltSpec {
    pub spec: Spec,
    /// Directories for image volumes not covered by a CRI mount, each under
    /// `SpecInput::volumes_dir`; the spec bind-mounts them.
    pub volumes: Vec<PathBuf>,
    /// The resolved user, for the record and for `ExecSync`.
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Build the container's OCI spec. See the module doc and `docs/architecture.md`
/// ("Container spec") for the rules.
pub fn build(input: &SpecInput) -> Result<BuiltSpec, SpecError> {
    let _ = input;
    Err(SpecError::Unsupported {
        field: "spec".into(),
        message: "spec building is not written yet".into(),
    })
}

/// CRI resources → OCI resources, validated (UpdateContainerResources).
pub fn linux_resources(
    resources: &cri::LinuxContainerResources,
    host: &HostFeatures,
) -> Result<oci_spec::runtime::LinuxResources, SpecError> {
    let _ = (resources, host);
    Err(SpecError::Unsupported {
        field: "linux".into(),
        message: "not written yet".into(),
    })
}
