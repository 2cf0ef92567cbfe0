//! The OCI runtime spec of a container, built from the CRI request, the pod
//! sandbox config and the image config, the way containerd builds it.
//!
//! This is a pure function of its inputs except for reading (never writing)
//! the host paths it must check: bind-mount sources, devices, a localhost
//! seccomp profile, and the image's `/etc/passwd` and `/etc/group` inside
//! the container rootfs (resolved without following links out of it, see
//! `user.rs`).
//!
//! `docs/container-spec.md` tabulates how each CRI field lands in the spec.
//! The spec targets libcontainer 0.7 (youki), which runs it; where that
//! differs from runc the code says so.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use k8s_cri::v1 as cri;
use oci_spec::image::{Config as ImageConfig, ImageConfiguration};
use oci_spec::runtime::{
    Capabilities, Capability, Linux, LinuxCapabilities, LinuxCpu, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType,
    LinuxHugepageLimit, LinuxMemory, LinuxNamespace, LinuxNamespaceType, LinuxResources, Mount, Process, Root, Spec,
    User,
};

use super::{seccomp, user};

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
    /// The pod's own user namespace (pinned path) and its host ID range;
    /// `None`: the host's.
    pub user: Option<(PathBuf, super::userns::IdRange)>,
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
    /// The capabilities nodelet itself holds (its bounding set). A
    /// container can get no others: "all capabilities" (privileged, `ALL`)
    /// means all of these, as containerd does. Empty: no limit (tests).
    pub held_capabilities: Vec<Capability>,
    /// On cgroup v1 and hybrid hosts, the controller hierarchies' mount
    /// points (`/sys/fs/cgroup/cpu`, ...): a container's `/sys/fs/cgroup`
    /// is a tmpfs with its own cgroup directory of each bind-mounted in.
    pub cgroup_v1_hierarchies: Vec<PathBuf>,
    /// The cgroup controllers a container's limits can use (v1: those
    /// mounted; v2: the root's `cgroup.controllers`). None: not checked.
    pub cgroup_controllers: Option<Vec<String>>,
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

/// `PATH` for images that set none (Docker's and containerd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's default capability set for a non-privileged container.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Keep only capabilities in `held` in every set: the kernel refuses to
/// give a process capabilities outside its parent's bounding set (here,
/// without CAP_SYS_RESOURCE, a privileged container would fail to start).
fn within(caps: LinuxCapabilities, held: &[Capability]) -> LinuxCapabilities {
    let keep = |set: &Option<Capabilities>| -> Option<Capabilities> {
        set.as_ref()
            .map(|s| s.iter().filter(|c| held.contains(c)).copied().collect())
    };
    let mut out = caps.clone();
    out.set_bounding(keep(caps.bounding()));
    out.set_effective(keep(caps.effective()));
    out.set_permitted(keep(caps.permitted()));
    out.set_inheritable(keep(caps.inheritable()));
    out.set_ambient(keep(caps.ambient()));
    out
}

/// Every capability oci-spec knows: what `ALL` and privileged mean.
pub const ALL_CAPABILITIES: [Capability; 41] = [
    Capability::AuditControl,
    Capability::AuditRead,
    Capability::AuditWrite,
    Capability::BlockSuspend,
    Capability::Bpf,
    Capability::CheckpointRestore,
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::Kill,
    Capability::Lease,
    Capability::LinuxImmutable,
    Capability::MacAdmin,
    Capability::MacOverride,
    Capability::Mknod,
    Capability::NetAdmin,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetRaw,
    Capability::Perfmon,
    Capability::Setgid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysChroot,
    Capability::SysModule,
    Capability::SysNice,
    Capability::SysPacct,
    Capability::SysPtrace,
    Capability::SysRawio,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Syslog,
    Capability::WakeAlarm,
];

/// Paths masked in a non-privileged container unless the kubelet sends its
/// own list (it does, unless `procMount: Unmasked`).
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only in a non-privileged container by default.
pub const DEFAULT_READONLY_PATHS: [&str; 5] =
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Smallest memory limit accepted (a container cannot even start its
/// runtime's init below a few MiB).
pub const MIN_MEMORY_LIMIT: i64 = 4 << 20;

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn unsupported(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Unsupported {
        field: field.into(),
        message: message.into(),
    }
}

/// Build the container's OCI spec. See the module doc and
/// `docs/container-spec.md` for the rules.
pub fn build(input: &SpecInput) -> Result<BuiltSpec, SpecError> {
    let c = input.container;
    let linux = c.linux.as_ref();
    let sc = linux.and_then(|l| l.security_context.as_ref());
    let privileged = sc.is_some_and(|s| s.privileged);
    let readonly_rootfs = sc.is_some_and(|s| s.readonly_rootfs);
    let image = input.image.config().as_ref();

    let args = process_args(c, image)?;
    let env = process_env(c, image, input)?;
    let cwd = working_dir(c, image)?;

    let image_user = image.and_then(|i| i.user().as_deref()).unwrap_or("");
    let resolved = user::resolve(input.rootfs, &user::UserRequest::from_cri(sc, image_user))?;

    let mut caps = capabilities(sc, resolved.uid)?;
    if !input.host.held_capabilities.is_empty() {
        caps = within(caps, &input.host.held_capabilities);
    }
    let bounding = caps.bounding().clone().unwrap_or_default();
    let seccomp = seccomp::for_container(sc, &bounding)?;
    let apparmor = apparmor_profile(sc, input.host)?;

    let mounts = mounts(input, privileged, readonly_rootfs)?;
    let (devices, device_rules) = devices(&c.devices, privileged, Path::new("/dev"))?;
    let mut resources = resources(linux.and_then(|l| l.resources.as_ref()), input.host)?;
    resources.set_devices(Some(device_rules));

    let (masked, readonly) = masked_and_readonly_paths(sc, privileged)?;

    // The kernel's range is -1000..=1000; the host floor is itself kept in
    // range so a misconfigured floor cannot make clamp() panic.
    let floor = input.host.oom_score_adj_min.clamp(-1000, 1000);
    let oom_score_adj = linux
        .and_then(|l| l.resources.as_ref())
        .map(|r| r.oom_score_adj.clamp(floor, 1000));

    // The spec's supplementary groups always include the primary gid, so
    // libcontainer always calls setgroups(2): with an empty list it skips
    // the call and the process would keep nodelet's own supplementary
    // groups (containerd's fix for CVE-2023-25173 does the same).
    let mut spec_gids = vec![resolved.gid];
    spec_gids.extend(&resolved.additional_gids);
    let mut process_user = User::default();
    process_user.set_uid(resolved.uid);
    process_user.set_gid(resolved.gid);
    process_user.set_additional_gids(Some(spec_gids));

    let mut process = Process::default();
    process.set_terminal(Some(c.tty));
    process.set_console_size(None);
    process.set_user(process_user);
    process.set_args(Some(args));
    process.set_command_line(None);
    process.set_env(Some(env));
    process.set_cwd(cwd);
    process.set_capabilities(Some(caps));
    // No rlimits: the container inherits nodelet's (containerd ≥ 2.0).
    process.set_rlimits(None);
    // Only `Some(true)` or absent: libcontainer 0.7 treats any `Some` as
    // "no_new_privs is set" and then loads the seccomp filter after
    // dropping capabilities, which the kernel refuses (EACCES) unless the
    // flag really is set. Absent, it loads the filter while still
    // privileged, as runc does.
    process.set_no_new_privileges(sc.is_some_and(|s| s.no_new_privs).then_some(true));
    process.set_apparmor_profile(apparmor);
    process.set_oom_score_adj(oom_score_adj.map(|v| v as i32));
    process.set_selinux_label(None);
    process.set_io_priority(None);
    process.set_scheduler(None);
    process.set_exec_cpu_affinity(None);

    let mut root = Root::default();
    root.set_path(input.rootfs.to_path_buf());
    root.set_readonly(Some(readonly_rootfs));

    let mut spec_linux = Linux::default();
    // A user-namespaced pod's containers join its user namespace (which
    // libcontainer then does not map again); the mappings say what it is.
    let id_mappings = input.namespaces.user.as_ref().map(|(_, r)| vec![r.oci_mapping()]);
    spec_linux.set_uid_mappings(id_mappings.clone());
    spec_linux.set_gid_mappings(id_mappings);
    // Namespaced sysctls belong to the pod and are set by its infra
    // process; the containers join its namespaces.
    spec_linux.set_sysctl(None);
    spec_linux.set_resources(Some(resources));
    spec_linux.set_cgroups_path(Some(PathBuf::from(input.cgroups_path)));
    spec_linux.set_namespaces(Some(namespaces(input.namespaces, input.host)));
    spec_linux.set_devices(Some(devices));
    spec_linux.set_seccomp(seccomp);
    spec_linux.set_rootfs_propagation(mounts.rootfs_propagation);
    spec_linux.set_masked_paths(Some(masked));
    spec_linux.set_readonly_paths(Some(readonly));
    spec_linux.set_mount_label(None);
    spec_linux.set_intel_rdt(None);
    spec_linux.set_personality(None);

    let mut spec = Spec::default();
    spec.set_version(oci_spec::runtime::VERSION.to_string());
    spec.set_root(Some(root));
    spec.set_mounts(Some(mounts.mounts));
    spec.set_process(Some(process));
    // Containers join the pod's UTS namespace (or the host's), where the
    // hostname is already set; libcontainer rejects a hostname without a
    // UTS namespace and ignores it when joining one.
    spec.set_hostname(None);
    spec.set_domainname(None);
    spec.set_hooks(None);
    spec.set_annotations(Some(annotations(c, input.sandbox)));
    spec.set_linux(Some(spec_linux));

    tracing::debug!(id = input.id, uid = resolved.uid, "built container spec");
    Ok(BuiltSpec {
        spec,
        volumes: mounts.volumes,
        uid: resolved.uid,
        gid: resolved.gid,
        additional_gids: resolved.additional_gids,
    })
}

/// Docker's rules for combining the image's Entrypoint/Cmd with the
/// request's command/args.
fn process_args(c: &cri::ContainerConfig, image: Option<&ImageConfig>) -> Result<Vec<String>, SpecError> {
    let argv = if c.command.is_empty() {
        let mut entrypoint = image.and_then(|i| i.entrypoint().clone()).unwrap_or_default();
        // `ENTRYPOINT [""]` is how a Dockerfile clears an inherited
        // entrypoint.
        if entrypoint.len() == 1 && entrypoint[0].is_empty() {
            entrypoint.clear();
        }
        let args = if c.args.is_empty() {
            image.and_then(|i| i.cmd().clone()).unwrap_or_default()
        } else {
            c.args.clone()
        };
        entrypoint.extend(args);
        entrypoint
    } else {
        // A request command replaces the image's entrypoint and, as in
        // Kubernetes, its Cmd too.
        let mut argv = c.command.clone();
        argv.extend(c.args.iter().cloned());
        argv
    };
    if argv.is_empty() {
        return Err(invalid(
            "command",
            "no command specified: the request has no command or args and the image has no Entrypoint or Cmd",
        ));
    }
    if argv[0].is_empty() {
        return Err(invalid("command", "the command to run is an empty string"));
    }
    if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
        return Err(invalid("args", format!("argument {i} contains a NUL byte")));
    }
    Ok(argv)
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    match env.iter().position(|e| env_key(e) == key) {
        Some(i) => env[i] = entry,
        None => env.push(entry),
    }
}

fn process_env(
    c: &cri::ContainerConfig,
    image: Option<&ImageConfig>,
    input: &SpecInput,
) -> Result<Vec<String>, SpecError> {
    let mut env: Vec<String> = Vec::new();
    for e in image.and_then(|i| i.env().as_deref()).unwrap_or_default() {
        let key = env_key(e);
        if key.is_empty() || e.contains('\0') {
            continue;
        }
        match e.split_once('=') {
            Some((k, v)) => set_env(&mut env, k, v),
            None => {
                if !env.iter().any(|x| env_key(x) == key) {
                    env.push(e.clone());
                }
            }
        }
    }
    for (i, kv) in c.envs.iter().enumerate() {
        if kv.key.is_empty() || kv.key.contains('=') || kv.key.contains('\0') {
            return Err(invalid(
                format!("envs[{i}]"),
                format!(
                    "invalid variable name {:?}: it must be non-empty and contain no '='",
                    kv.key
                ),
            ));
        }
        if kv.value.contains('\0') {
            return Err(invalid(
                format!("envs[{i}]"),
                format!("the value of {} contains a NUL byte", kv.key),
            ));
        }
        set_env(&mut env, &kv.key, &kv.value);
    }
    if !env.iter().any(|e| env_key(e) == "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if !c.envs.iter().any(|kv| kv.key == "HOSTNAME") {
        let mut hostname = input.sandbox.hostname.clone();
        if hostname.is_empty() && input.namespaces.uts.is_none() {
            // hostNetwork pods see the node's hostname.
            hostname = nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        if !hostname.is_empty() {
            set_env(&mut env, "HOSTNAME", &hostname);
        }
    }
    if c.tty && !env.iter().any(|e| env_key(e) == "TERM") {
        env.push("TERM=xterm".into());
    }
    Ok(env)
}

fn working_dir(c: &cri::ContainerConfig, image: Option<&ImageConfig>) -> Result<PathBuf, SpecError> {
    let (field, dir) = if !c.working_dir.is_empty() {
        ("working_dir", c.working_dir.as_str())
    } else {
        match image.and_then(|i| i.working_dir().as_deref()).filter(|d| !d.is_empty()) {
            Some(d) => ("image.working_dir", d),
            None => return Ok(PathBuf::from("/")),
        }
    };
    if !dir.starts_with('/') {
        return Err(invalid(
            field,
            format!("working directory {dir:?} must be an absolute path"),
        ));
    }
    Ok(PathBuf::from(dir))
}

/// Parse a CRI capability name: `SYS_ADMIN`, `CAP_SYS_ADMIN`, any case.
/// `ALL` is not a capability and gives `None`.
pub fn parse_capability(name: &str) -> Option<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare.parse().ok()
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// The container's capability sets (containerd ≥ 1.7 rules):
/// - privileged: every capability; otherwise the default set, then `ALL`
///   in add (start from all), `ALL` in drop (start from none), then the
///   individual adds, then the individual drops;
/// - ambient capabilities join every set (the kernel needs them in
///   permitted and inheritable; bounding so they survive);
/// - root gets bounding = effective = permitted; any other uid gets only
///   the ambient capabilities in effective and permitted (file
///   capabilities or setuid binaries raise the rest up to bounding);
/// - inheritable holds only the ambient capabilities.
pub fn capabilities(sc: Option<&cri::LinuxContainerSecurityContext>, uid: u32) -> Result<LinuxCapabilities, SpecError> {
    let requested = sc.and_then(|s| s.capabilities.as_ref());
    let add = requested.map(|r| r.add_capabilities.as_slice()).unwrap_or_default();
    let drop = requested.map(|r| r.drop_capabilities.as_slice()).unwrap_or_default();
    let ambient_names = requested
        .map(|r| r.add_ambient_capabilities.as_slice())
        .unwrap_or_default();
    let field = "linux.security_context.capabilities";

    let parse_list = |list: &[String], name: &str, allow_all: bool| -> Result<Vec<Capability>, SpecError> {
        let mut out = Vec::new();
        for (i, c) in list.iter().enumerate() {
            if allow_all && is_all(c) {
                continue;
            }
            out.push(
                parse_capability(c)
                    .ok_or_else(|| invalid(format!("{field}.{name}[{i}]"), format!("unknown capability {c:?}")))?,
            );
        }
        Ok(out)
    };
    let adds = parse_list(add, "add_capabilities", true)?;
    let drops = parse_list(drop, "drop_capabilities", true)?;
    let ambient: Capabilities = parse_list(ambient_names, "add_ambient_capabilities", false)?
        .into_iter()
        .collect();

    let mut set: Capabilities = if sc.is_some_and(|s| s.privileged) {
        ALL_CAPABILITIES.into_iter().collect()
    } else {
        let mut set: Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
        if add.iter().any(|c| is_all(c)) {
            set = ALL_CAPABILITIES.into_iter().collect();
        }
        if drop.iter().any(|c| is_all(c)) {
            set.clear();
        }
        set.extend(adds);
        for d in drops {
            set.remove(&d);
        }
        set
    };
    set.extend(ambient.iter().copied());

    let (effective, permitted) = if uid == 0 {
        (set.clone(), set.clone())
    } else {
        (ambient.clone(), ambient.clone())
    };
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set));
    caps.set_effective(Some(effective));
    caps.set_permitted(Some(permitted));
    caps.set_inheritable(Some(ambient.clone()));
    caps.set_ambient(Some(ambient));
    Ok(caps)
}

/// The AppArmor profile for the process, if any.
///
/// nodelet ships no default AppArmor profile, so RuntimeDefault and
/// Unconfined both leave the process unconfined (on a host without
/// AppArmor there is nothing to apply anyway); a Localhost profile needs
/// AppArmor on the host.
fn apparmor_profile(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    host: &HostFeatures,
) -> Result<Option<String>, SpecError> {
    use cri::security_profile::ProfileType;
    let Some(sc) = sc else {
        return Ok(None);
    };
    let field = "linux.security_context.apparmor";
    let localhost = if let Some(p) = &sc.apparmor {
        match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) | Ok(ProfileType::Unconfined) => None,
            Ok(ProfileType::Localhost) => Some((
                p.localhost_ref.as_str(),
                "linux.security_context.apparmor.localhost_ref",
            )),
            Err(_) => {
                return Err(invalid(
                    "linux.security_context.apparmor.profile_type",
                    format!("unknown profile type {}", p.profile_type),
                ))
            }
        }
    } else {
        let old = "linux.security_context.apparmor_profile";
        // Deprecated, but older kubelets still send only this.
        #[allow(deprecated)]
        let profile = sc.apparmor_profile.as_str();
        match profile {
            "" | "runtime/default" | "unconfined" => None,
            other => match other.strip_prefix("localhost/") {
                Some(name) => Some((name, old)),
                None => return Err(invalid(old, format!("unknown AppArmor profile {other:?}"))),
            },
        }
    };
    let Some((name, name_field)) = localhost else {
        return Ok(None);
    };
    if name.is_empty() {
        return Err(invalid(name_field, "a Localhost AppArmor profile needs a profile name"));
    }
    if !host.apparmor {
        return Err(unsupported(field, "AppArmor is not enabled on this host"));
    }
    Ok(Some(name.to_string()))
}

/// Mounts and what they imply.
struct Mounts {
    mounts: Vec<Mount>,
    volumes: Vec<PathBuf>,
    rootfs_propagation: Option<String>,
}

fn mount(dest: &str, typ: &str, source: &Path, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest));
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(source.to_path_buf()));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

fn ro_rw(readonly: bool) -> &'static str {
    if readonly {
        "ro"
    } else {
        "rw"
    }
}

/// `/sys/fs/cgroup` in the container. On v2 a `cgroup2` mount (in the
/// container's cgroup namespace). On v1 we build it ourselves: a tmpfs
/// with the container's directory of each hierarchy bind-mounted in.
/// libcontainer's own v1 emulation looks up `/proc/<parent pid>/cgroup`
/// with a PID from the pod's PID namespace in the host's procfs, which
/// names the wrong process (or none) when the pod's infra is PID 1 of the
/// pod; plain bind mounts have no such lookup.
fn cgroup_mounts(host: &HostFeatures, cgroups_path: &str, sys: &'static str) -> Vec<Mount> {
    if host.cgroup_v2 || host.cgroup_v1_hierarchies.is_empty() {
        return vec![mount(
            "/sys/fs/cgroup",
            "cgroup",
            Path::new("cgroup"),
            &["nosuid", "noexec", "nodev", "relatime", sys],
        )];
    }
    let mut out = vec![mount(
        "/sys/fs/cgroup",
        "tmpfs",
        Path::new("tmpfs"),
        &["nosuid", "noexec", "nodev", "mode=755"],
    )];
    for h in &host.cgroup_v1_hierarchies {
        let Some(name) = h.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        out.push(mount(
            &format!("/sys/fs/cgroup/{name}"),
            "bind",
            &h.join(cgroups_path.trim_start_matches('/')),
            &["rbind", "rprivate", "nosuid", "noexec", "nodev", sys],
        ));
    }
    out
}

/// The mounts every container gets, in mount order (parents first).
fn default_mounts(
    files: &PodFiles,
    privileged: bool,
    readonly_rootfs: bool,
    host: &HostFeatures,
    cgroups_path: &str,
) -> Vec<Mount> {
    // Privileged containers may write to sysfs and cgroupfs (as in
    // containerd); everyone else sees them read-only.
    let sys = ro_rw(!privileged);
    let etc = ro_rw(readonly_rootfs);
    let shm = match &files.shm {
        Some(path) => mount(
            "/dev/shm",
            "bind",
            path,
            &["rbind", "rprivate", "nosuid", "nodev", "noexec", "rw"],
        ),
        None => mount(
            "/dev/shm",
            "tmpfs",
            Path::new("shm"),
            &["nosuid", "noexec", "nodev", "mode=1777", "size=64m"],
        ),
    };
    let mut mounts = vec![
        mount("/proc", "proc", Path::new("proc"), &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            Path::new("mqueue"),
            &["nosuid", "noexec", "nodev"],
        ),
        mount("/sys", "sysfs", Path::new("sysfs"), &["nosuid", "noexec", "nodev", sys]),
    ];
    mounts.extend(cgroup_mounts(host, cgroups_path, sys));
    mounts.extend([
        shm,
        mount("/etc/hostname", "bind", &files.hostname, &["rbind", "rprivate", etc]),
        mount("/etc/hosts", "bind", &files.hosts, &["rbind", "rprivate", etc]),
        mount(
            "/etc/resolv.conf",
            "bind",
            &files.resolv_conf,
            &["rbind", "rprivate", etc],
        ),
    ]);
    mounts
}

/// A container path, checked and normalised (no `.`, no doubled or
/// trailing slashes).
fn container_path(field: &str, path: &str) -> Result<PathBuf, SpecError> {
    if path.is_empty() {
        return Err(invalid(field, "the path is empty"));
    }
    if !path.starts_with('/') {
        return Err(invalid(field, format!("{path:?} must be an absolute path")));
    }
    if path.contains('\0') {
        return Err(invalid(field, format!("{path:?} contains a NUL byte")));
    }
    let mut clean = PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => clean.push(n),
            Component::ParentDir => return Err(invalid(field, format!("{path:?} must not contain '..'"))),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(clean)
}

fn depth(p: &Path) -> usize {
    p.components().count()
}

/// Turn an image volume path into a single, collision-free directory name:
/// `/` becomes `_`; `%`, `_` and anything outside `[A-Za-z0-9.-]` become
/// `%XX`, so distinct paths never share a directory.
pub fn volume_dir_name(path: &Path) -> String {
    let s = path.to_string_lossy();
    let mut out = String::new();
    for b in s.trim_start_matches('/').bytes() {
        match b {
            b'/' => out.push('_'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02x}")),
        }
    }
    out
}

fn mounts(input: &SpecInput, privileged: bool, readonly_rootfs: bool) -> Result<Mounts, SpecError> {
    use cri::MountPropagation as P;
    let mut extra: Vec<Mount> = Vec::new();
    let mut seen: HashMap<PathBuf, usize> = HashMap::new();
    let mut propagation = None;

    for (i, m) in input.container.mounts.iter().enumerate() {
        let field = |f: &str| format!("mounts[{i}].{f}");
        if m.image.as_ref().is_some_and(|img| !img.image.is_empty()) {
            return Err(unsupported(
                field("image"),
                "image volume mounts are not supported by nodelet",
            ));
        }
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(invalid(
                field("uidMappings"),
                "ID-mapped mounts need a pod with its own user namespace (userns_options.mode POD) and its mappings",
            ));
        }
        let dest = container_path(&field("container_path"), &m.container_path)?;
        if dest == Path::new("/") {
            return Err(invalid(
                field("container_path"),
                "cannot mount over the container's root directory",
            ));
        }
        if let Some(first) = seen.insert(dest.clone(), i) {
            return Err(invalid(
                field("container_path"),
                format!("{} is also the target of mounts[{first}]", dest.display()),
            ));
        }
        if m.host_path.is_empty() {
            return Err(invalid(field("host_path"), "the path is empty"));
        }
        if let Err(e) = std::fs::metadata(&m.host_path) {
            let msg = if e.kind() == std::io::ErrorKind::NotFound {
                format!("{} does not exist", m.host_path)
            } else {
                format!("{} cannot be accessed: {e}", m.host_path)
            };
            return Err(invalid(field("host_path"), msg));
        }
        let prop = P::try_from(m.propagation)
            .map_err(|_| invalid(field("propagation"), format!("unknown propagation {}", m.propagation)))?;
        let mut options = vec!["rbind"];
        options.push(match prop {
            P::PropagationPrivate => "rprivate",
            P::PropagationHostToContainer => "rslave",
            P::PropagationBidirectional => "rshared",
        });
        options.push(ro_rw(m.readonly));
        if m.recursive_read_only {
            if !m.readonly {
                return Err(invalid(
                    field("recursive_read_only"),
                    "a recursive read-only mount must also be read-only",
                ));
            }
            if prop != P::PropagationPrivate {
                return Err(invalid(
                    field("recursive_read_only"),
                    "a recursive read-only mount needs private propagation",
                ));
            }
            options.push("rro");
        }
        // libcontainer accepts "shared" and "slave" (not runc's
        // "rshared"/"rslave") and applies them recursively.
        match prop {
            P::PropagationBidirectional => propagation = Some("shared"),
            P::PropagationHostToContainer if propagation.is_none() => propagation = Some("slave"),
            _ => {}
        }
        extra.push(mount(
            &dest.to_string_lossy(),
            "bind",
            Path::new(&m.host_path),
            &options,
        ));
    }

    let mut defaults = default_mounts(
        input.pod_files,
        privileged,
        readonly_rootfs,
        input.host,
        input.cgroups_path,
    );
    // A CRI mount on a default path takes its place; one on /dev replaces
    // everything containerd would have put under it.
    let dev_replaced = seen.contains_key(Path::new("/dev"));
    defaults.retain(|d| !(dev_replaced && d.destination().starts_with("/dev") && d.destination() != Path::new("/dev")));
    for d in defaults.iter_mut() {
        if let Some(pos) = extra.iter().position(|m| m.destination() == d.destination()) {
            *d = extra.remove(pos);
        }
    }

    // Image VOLUMEs with no CRI mount at or above them get an anonymous
    // volume directory, as in containerd.
    let mut volumes = Vec::new();
    let mut volume_dests = HashSet::new();
    let mut image_volumes: Vec<String> = input
        .image
        .config()
        .as_ref()
        .and_then(|c| c.volumes().clone())
        .unwrap_or_default();
    image_volumes.sort();
    image_volumes.dedup();
    for v in image_volumes {
        let abs = if v.starts_with('/') { v.clone() } else { format!("/{v}") };
        let dest = container_path("image.volumes", &abs)?;
        if dest == Path::new("/") {
            return Err(invalid("image.volumes", "a volume cannot be the root directory"));
        }
        let covered = seen.keys().any(|m| dest.starts_with(m)) || defaults.iter().any(|d| d.destination() == &dest);
        // `/data` and `/data/` are one volume.
        if covered || !volume_dests.insert(dest.clone()) {
            continue;
        }
        let name = volume_dir_name(&dest);
        if name.len() > 240 {
            return Err(invalid("image.volumes", format!("volume path {v:?} is too long")));
        }
        let host = input.volumes_dir.join(name);
        extra.push(mount(
            &dest.to_string_lossy(),
            "bind",
            &host,
            &["rbind", "rprivate", "rw"],
        ));
        volumes.push(host);
    }

    // Parents before children, whatever order the kubelet sent.
    extra.sort_by_key(|m| depth(m.destination()));
    defaults.extend(extra);
    Ok(Mounts {
        mounts: defaults,
        volumes,
        rootfs_propagation: propagation.map(String::from),
    })
}

fn masked_and_readonly_paths(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
) -> Result<(Vec<String>, Vec<String>), SpecError> {
    if privileged {
        return Ok((Vec::new(), Vec::new()));
    }
    let pick = |given: Option<&Vec<String>>, name: &str, defaults: &[&str]| -> Result<Vec<String>, SpecError> {
        match given.filter(|g| !g.is_empty()) {
            Some(list) => {
                for (i, p) in list.iter().enumerate() {
                    if !p.starts_with('/') {
                        return Err(invalid(
                            format!("linux.security_context.{name}[{i}]"),
                            format!("{p:?} must be an absolute path"),
                        ));
                    }
                }
                Ok(list.clone())
            }
            None => Ok(defaults.iter().map(|p| p.to_string()).collect()),
        }
    };
    Ok((
        pick(sc.map(|s| &s.masked_paths), "masked_paths", &DEFAULT_MASKED_PATHS)?,
        pick(sc.map(|s| &s.readonly_paths), "readonly_paths", &DEFAULT_READONLY_PATHS)?,
    ))
}

fn cgroup_rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow);
    r.set_typ(Some(typ));
    r.set_major(major);
    r.set_minor(minor);
    r.set_access(Some(access.to_string()));
    r
}

/// Device cgroup rules of a non-privileged container before its own
/// devices: deny everything, then allow the devices every container has
/// (libcontainer creates the nodes) and `mknod` of any node (using a node
/// still needs an allow rule).
pub fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{B, C};
    vec![
        cgroup_rule(false, LinuxDeviceType::A, None, None, "rwm"),
        cgroup_rule(true, C, None, None, "m"),
        cgroup_rule(true, B, None, None, "m"),
        cgroup_rule(true, C, Some(1), Some(3), "rwm"),
        cgroup_rule(true, C, Some(1), Some(5), "rwm"),
        cgroup_rule(true, C, Some(1), Some(7), "rwm"),
        cgroup_rule(true, C, Some(1), Some(8), "rwm"),
        cgroup_rule(true, C, Some(1), Some(9), "rwm"),
        cgroup_rule(true, C, Some(5), Some(0), "rwm"),
        cgroup_rule(true, C, Some(5), Some(1), "rwm"),
        cgroup_rule(true, C, Some(5), Some(2), "rwm"),
        cgroup_rule(true, C, Some(136), None, "rwm"),
    ]
}

/// A `LinuxDevice` for a host device node at `container_path`, or `None`
/// when `meta` is not a character or block device.
fn linux_device(container_path: &Path, meta: &std::fs::Metadata) -> Option<LinuxDevice> {
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return None;
    };
    let rdev = meta.rdev();
    let mut d = LinuxDevice::default();
    d.set_path(container_path.to_path_buf());
    d.set_typ(typ);
    d.set_major(nix::sys::stat::major(rdev) as i64);
    d.set_minor(nix::sys::stat::minor(rdev) as i64);
    d.set_file_mode(Some(meta.mode() & 0o7777));
    d.set_uid(Some(0));
    d.set_gid(Some(0));
    Some(d)
}

/// Every character and block device under the host's `dev` directory, as
/// containerd gives a privileged container: symlinks and the directories
/// of per-container filesystems (`pts`, `shm`, `mqueue`, `fd`) skipped,
/// and `console`, which the runtime sets up itself.
pub fn host_devices(dev: &Path) -> Vec<LinuxDevice> {
    const SKIP_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];
    let mut out = Vec::new();
    let mut stack = vec![(dev.to_path_buf(), 0usize)];
    while let Some((dir, level)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let name = entry.file_name();
            if meta.is_dir() {
                if level < 8 && !SKIP_DIRS.iter().any(|s| name == *s) {
                    stack.push((path, level + 1));
                }
                continue;
            }
            if name == "console" && level == 0 {
                continue;
            }
            let Ok(rel) = path.strip_prefix(dev) else {
                continue;
            };
            if let Some(d) = linux_device(&Path::new("/dev").join(rel), &meta) {
                out.push(d);
            }
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

/// The container's device nodes and device cgroup rules. `host_dev` is the
/// host's `/dev` (a parameter for tests).
fn devices(
    requested: &[cri::Device],
    privileged: bool,
    host_dev: &Path,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    let mut nodes = Vec::new();
    let mut rules = if privileged {
        vec![cgroup_rule(true, LinuxDeviceType::A, None, None, "rwm")]
    } else {
        default_device_rules()
    };
    for (i, d) in requested.iter().enumerate() {
        let field = |f: &str| format!("devices[{i}].{f}");
        if d.host_path.is_empty() {
            return Err(invalid(field("host_path"), "the path is empty"));
        }
        let target = if d.container_path.is_empty() {
            d.host_path.as_str()
        } else {
            d.container_path.as_str()
        };
        let target = container_path(&field("container_path"), target)?;
        // libcontainer only creates device nodes under /dev.
        if !target.starts_with("/dev") || target == Path::new("/dev") {
            return Err(invalid(
                field("container_path"),
                format!("{} must be a path under /dev", target.display()),
            ));
        }
        let meta = std::fs::metadata(&d.host_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                invalid(field("host_path"), format!("{} does not exist", d.host_path))
            } else {
                invalid(field("host_path"), format!("{} cannot be accessed: {e}", d.host_path))
            }
        })?;
        let node = linux_device(&target, &meta).ok_or_else(|| {
            invalid(
                field("host_path"),
                format!("{} is not a character or block device", d.host_path),
            )
        })?;
        let access = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        let mut seen = HashSet::new();
        if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm') && seen.insert(c)) {
            return Err(invalid(
                field("permissions"),
                format!("{:?} is not a combination of r, w and m", d.permissions),
            ));
        }
        if !privileged {
            rules.push(cgroup_rule(
                true,
                node.typ(),
                Some(node.major()),
                Some(node.minor()),
                access,
            ));
        }
        nodes.retain(|n: &LinuxDevice| n.path() != node.path());
        nodes.push(node);
    }
    if privileged {
        for d in host_devices(host_dev) {
            if !nodes.iter().any(|n| n.path() == d.path()) {
                nodes.push(d);
            }
        }
    }
    Ok((nodes, rules))
}

/// Check a cpuset list such as `0-3,5`.
fn check_cpuset(field: &str, list: &str) -> Result<(), SpecError> {
    let bad = || invalid(field, format!("{list:?} is not a CPU/node list such as 0-3,5"));
    let number = |s: &str| -> Result<u32, SpecError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    for item in list.split(',') {
        match item.split_once('-') {
            Some((a, b)) => {
                if number(a)? > number(b)? {
                    return Err(bad());
                }
            }
            None => {
                number(item)?;
            }
        }
    }
    Ok(())
}

/// Check a hugepage size such as `2MB` or `1GB`.
fn check_page_size(field: &str, size: &str) -> Result<(), SpecError> {
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &size[digits.len()..];
    let ok = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.parse::<u64>().is_ok_and(|n| n > 0)
        && matches!(unit, "KB" | "MB" | "GB" | "TB" | "PB");
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{size:?} is not a page size such as 2MB or 1GB"),
        ))
    }
}

/// `linux.resources` from the CRI resources (device rules are added by
/// the caller).
/// CRI resources → OCI resources, validated (also for
/// UpdateContainerResources).
pub fn linux_resources(r: &cri::LinuxContainerResources, host: &HostFeatures) -> Result<LinuxResources, SpecError> {
    resources(Some(r), host)
}

fn resources(r: Option<&cri::LinuxContainerResources>, host: &HostFeatures) -> Result<LinuxResources, SpecError> {
    let mut out = LinuxResources::default();
    let Some(r) = r else {
        return Ok(out);
    };
    let f = |name: &str| format!("linux.resources.{name}");
    let non_negative = |name: &str, v: i64| {
        if v < 0 {
            Err(invalid(f(name), format!("{v} must not be negative")))
        } else {
            Ok(v)
        }
    };

    let mut cpu = LinuxCpu::default();
    let mut cpu_set = false;
    let shares = non_negative("cpu_shares", r.cpu_shares)?;
    if shares != 0 {
        if !(2..=262_144).contains(&shares) {
            return Err(invalid(f("cpu_shares"), format!("{shares} is outside 2..=262144")));
        }
        cpu.set_shares(Some(shares as u64));
        cpu_set = true;
    }
    let quota = non_negative("cpu_quota", r.cpu_quota)?;
    if quota != 0 {
        if quota < 1000 {
            return Err(invalid(
                f("cpu_quota"),
                format!("{quota} is below the minimum of 1000 microseconds"),
            ));
        }
        cpu.set_quota(Some(quota));
        cpu_set = true;
    }
    let period = non_negative("cpu_period", r.cpu_period)?;
    if period != 0 {
        if !(1000..=1_000_000).contains(&period) {
            return Err(invalid(
                f("cpu_period"),
                format!("{period} is outside 1000..=1000000 microseconds"),
            ));
        }
        cpu.set_period(Some(period as u64));
        cpu_set = true;
    }
    if !r.cpuset_cpus.is_empty() {
        check_cpuset(&f("cpuset_cpus"), &r.cpuset_cpus)?;
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
        cpu_set = true;
    }
    if !r.cpuset_mems.is_empty() {
        check_cpuset(&f("cpuset_mems"), &r.cpuset_mems)?;
        cpu.set_mems(Some(r.cpuset_mems.clone()));
        cpu_set = true;
    }
    if cpu_set {
        out.set_cpu(Some(cpu));
    }

    let limit = non_negative("memory_limit_in_bytes", r.memory_limit_in_bytes)?;
    if limit != 0 && limit < MIN_MEMORY_LIMIT {
        return Err(invalid(
            f("memory_limit_in_bytes"),
            format!("{limit} is below the minimum of {MIN_MEMORY_LIMIT} bytes"),
        ));
    }
    let swap = r.memory_swap_limit_in_bytes;
    if swap < -1 {
        return Err(invalid(
            f("memory_swap_limit_in_bytes"),
            format!("{swap} must not be negative (except -1, unlimited)"),
        ));
    }
    if swap > 0 {
        if limit == 0 {
            return Err(invalid(
                f("memory_swap_limit_in_bytes"),
                "a memory+swap limit needs memory_limit_in_bytes",
            ));
        }
        if swap < limit {
            return Err(invalid(
                f("memory_swap_limit_in_bytes"),
                format!("{swap} is below memory_limit_in_bytes ({limit}); it limits memory plus swap"),
            ));
        }
    }
    if limit != 0 || swap != 0 {
        let mut mem = LinuxMemory::default();
        mem.set_limit((limit != 0).then_some(limit));
        mem.set_swap((swap != 0).then_some(swap));
        out.set_memory(Some(mem));
    }

    if !r.hugepage_limits.is_empty() {
        let mut limits = Vec::new();
        for (i, h) in r.hugepage_limits.iter().enumerate() {
            let field = f(&format!("hugepage_limits[{i}]"));
            check_page_size(&format!("{field}.page_size"), &h.page_size)?;
            let limit = i64::try_from(h.limit)
                .map_err(|_| invalid(format!("{field}.limit"), format!("{} is too large", h.limit)))?;
            let mut l = LinuxHugepageLimit::default();
            l.set_page_size(h.page_size.clone());
            l.set_limit(limit);
            limits.push(l);
        }
        out.set_hugepage_limits(Some(limits));
    }

    if !r.unified.is_empty() {
        if !host.cgroup_v2 {
            return Err(unsupported(
                f("unified"),
                "unified (cgroup v2) resources need a cgroup v2 host",
            ));
        }
        for key in r.unified.keys() {
            // Each key names a file in the container's cgroup directory.
            if key.is_empty() || key.contains('/') || key.contains('\0') || key.starts_with('.') || !key.contains('.') {
                return Err(invalid(
                    f(&format!("unified[{key:?}]")),
                    "not a cgroup v2 interface file name",
                ));
            }
        }
        out.set_unified(Some(r.unified.clone()));
    }
    check_controllers(&out, host)?;
    Ok(out)
}

/// Every limit asked for needs its cgroup controller on this host: a
/// controller that is not mounted (v1) or not available (v2) would make
/// the limit silently do nothing, so it is refused with the reason.
fn check_controllers(out: &LinuxResources, host: &HostFeatures) -> Result<(), SpecError> {
    let Some(available) = &host.cgroup_controllers else {
        return Ok(());
    };
    let cpu = out.cpu().as_ref();
    let needs = [
        ("memory", "memory", out.memory().is_some()),
        (
            "cpu_shares, cpu_quota, cpu_period",
            "cpu",
            cpu.is_some_and(|c| c.shares().is_some() || c.quota().is_some() || c.period().is_some()),
        ),
        (
            "cpuset_cpus, cpuset_mems",
            "cpuset",
            cpu.is_some_and(|c| c.cpus().is_some() || c.mems().is_some()),
        ),
        (
            "hugepage_limits",
            "hugetlb",
            out.hugepage_limits()
                .as_ref()
                .is_some_and(|h| h.iter().any(|l| l.limit() > 0)),
        ),
    ];
    for (field, controller, wanted) in needs {
        if wanted && !available.iter().any(|c| c == controller) {
            return Err(unsupported(
                format!("linux.resources.{field}"),
                format!(
                    "the {controller} cgroup controller is not available on this host (available: {})",
                    available.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns.set_path(path.map(Path::to_path_buf));
    ns
}

/// The pod's user namespace when it has one; a new mount namespace; the
/// pod's (or host's) network, IPC and UTS; PID per the request; a private
/// cgroup namespace on cgroup v2.
fn namespaces(ns: &PodNamespaces, host: &HostFeatures) -> Vec<LinuxNamespace> {
    let mut out = Vec::new();
    if let Some((path, _)) = &ns.user {
        out.push(namespace(LinuxNamespaceType::User, Some(path)));
    }
    out.push(namespace(LinuxNamespaceType::Mount, None));
    match &ns.pid {
        PidNamespace::Container => out.push(namespace(LinuxNamespaceType::Pid, None)),
        PidNamespace::Pod(p) | PidNamespace::Target(p) => out.push(namespace(LinuxNamespaceType::Pid, Some(p))),
        PidNamespace::Node => {}
    }
    for (typ, path) in [
        (LinuxNamespaceType::Network, &ns.network),
        (LinuxNamespaceType::Ipc, &ns.ipc),
        (LinuxNamespaceType::Uts, &ns.uts),
    ] {
        if let Some(p) = path {
            out.push(namespace(typ, Some(p)));
        }
    }
    if host.cgroup_v2 {
        out.push(namespace(LinuxNamespaceType::Cgroup, None));
    }
    out
}

fn annotations(c: &cri::ContainerConfig, sandbox: &cri::PodSandboxConfig) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = c.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    out.insert("io.kubernetes.cri.container-type".into(), "container".into());
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            out.insert(k.to_string(), v.to_string());
        }
    };
    if let Some(m) = &c.metadata {
        put("io.kubernetes.cri.container-name", &m.name);
    }
    if let Some(i) = &c.image {
        put("io.kubernetes.cri.image-name", &i.image);
    }
    if let Some(m) = &sandbox.metadata {
        put("io.kubernetes.cri.sandbox-name", &m.name);
        put("io.kubernetes.cri.sandbox-namespace", &m.namespace);
        put("io.kubernetes.cri.sandbox-uid", &m.uid);
    }
    out
}

#[cfg(test)]
// The tests also cover the deprecated fields older kubelets send.
#[allow(deprecated)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxSeccompAction, LinuxSeccompOperator};
    use serde_json::json;
    use std::fs;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nvideo:x:44:app\n";

    /// A request, sandbox and image with everything a test may tweak, plus
    /// a fake rootfs and pod files in a tempdir.
    struct Fixture {
        dir: tempfile::TempDir,
        container: cri::ContainerConfig,
        sandbox: cri::PodSandboxConfig,
        image: ImageConfiguration,
        namespaces: PodNamespaces,
        files: PodFiles,
        host: HostFeatures,
    }

    fn image(config: serde_json::Value) -> ImageConfiguration {
        serde_json::from_value(json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": config,
        }))
        .unwrap()
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let rootfs = dir.path().join("rootfs");
            fs::create_dir_all(rootfs.join("etc")).unwrap();
            fs::write(rootfs.join("etc/passwd"), PASSWD).unwrap();
            fs::write(rootfs.join("etc/group"), GROUP).unwrap();
            let pod = dir.path().join("pod");
            fs::create_dir_all(&pod).unwrap();
            for f in ["hosts", "resolv.conf", "hostname"] {
                fs::write(pod.join(f), "").unwrap();
            }
            fs::create_dir_all(dir.path().join("data")).unwrap();
            Fixture {
                container: cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "web".into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: "docker.io/library/nginx:1.27".into(),
                        ..Default::default()
                    }),
                    linux: Some(cri::LinuxContainerConfig {
                        resources: Some(cri::LinuxContainerResources::default()),
                        security_context: Some(cri::LinuxContainerSecurityContext::default()),
                    }),
                    ..Default::default()
                },
                sandbox: cri::PodSandboxConfig {
                    metadata: Some(cri::PodSandboxMetadata {
                        name: "web-0".into(),
                        uid: "uid-1".into(),
                        namespace: "default".into(),
                        attempt: 0,
                    }),
                    hostname: "web-0".into(),
                    ..Default::default()
                },
                image: image(json!({
                    "Entrypoint": ["/docker-entrypoint.sh"],
                    "Cmd": ["nginx", "-g", "daemon off;"],
                    "Env": ["PATH=/usr/local/bin:/usr/bin", "NGINX_VERSION=1.27"],
                })),
                namespaces: PodNamespaces {
                    network: Some("/run/nodelet/ns/net-1".into()),
                    ipc: Some("/run/nodelet/ns/ipc-1".into()),
                    uts: Some("/run/nodelet/ns/uts-1".into()),
                    pid: PidNamespace::Container,
                    user: None,
                },
                files: PodFiles {
                    hosts: pod.join("hosts"),
                    resolv_conf: pod.join("resolv.conf"),
                    hostname: pod.join("hostname"),
                    shm: None,
                },
                host: HostFeatures {
                    oom_score_adj_min: 0,
                    apparmor: false,
                    cgroup_v2: false,
                    held_capabilities: Vec::new(),
                    cgroup_v1_hierarchies: Vec::new(),
                    cgroup_controllers: None,
                },
                dir,
            }
        }

        fn rootfs(&self) -> PathBuf {
            self.dir.path().join("rootfs")
        }

        fn data(&self) -> String {
            self.dir.path().join("data").display().to_string()
        }

        fn build(&self) -> Result<BuiltSpec, SpecError> {
            let rootfs = self.rootfs();
            let volumes = self.dir.path().join("volumes");
            build(&SpecInput {
                id: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                container: &self.container,
                sandbox: &self.sandbox,
                image: &self.image,
                rootfs: &rootfs,
                cgroups_path: "/nodelet/besteffort/pod1/0123",
                namespaces: &self.namespaces,
                pod_files: &self.files,
                volumes_dir: &volumes,
                host: &self.host,
            })
        }

        fn ok(&self) -> BuiltSpec {
            self.build().unwrap_or_else(|e| panic!("build failed: {e}"))
        }

        fn sc(&mut self) -> &mut cri::LinuxContainerSecurityContext {
            self.container
                .linux
                .get_or_insert_with(Default::default)
                .security_context
                .get_or_insert_with(Default::default)
        }

        fn res(&mut self) -> &mut cri::LinuxContainerResources {
            self.container
                .linux
                .get_or_insert_with(Default::default)
                .resources
                .get_or_insert_with(Default::default)
        }

        fn cri_mount(&mut self, container_path: &str, host_path: &str) -> &mut cri::Mount {
            self.container.mounts.push(cri::Mount {
                container_path: container_path.into(),
                host_path: host_path.into(),
                ..Default::default()
            });
            self.container.mounts.last_mut().unwrap()
        }
    }

    fn invalid_field(r: Result<BuiltSpec, SpecError>) -> (String, String) {
        match r {
            Err(SpecError::Invalid { field, message }) => (field, message),
            Err(e) => panic!("expected Invalid, got {e:?}"),
            Ok(_) => panic!("expected an error"),
        }
    }

    fn process(b: &BuiltSpec) -> &Process {
        b.spec.process().as_ref().unwrap()
    }

    fn linux(b: &BuiltSpec) -> &Linux {
        b.spec.linux().as_ref().unwrap()
    }

    fn args(b: &BuiltSpec) -> Vec<String> {
        process(b).args().clone().unwrap()
    }

    fn env(b: &BuiltSpec) -> Vec<String> {
        process(b).env().clone().unwrap()
    }

    fn mount_at<'a>(b: &'a BuiltSpec, dest: &str) -> &'a Mount {
        b.spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new(dest))
            .unwrap_or_else(|| panic!("no mount at {dest}"))
    }

    fn options(m: &Mount) -> Vec<String> {
        m.options().clone().unwrap_or_default()
    }

    fn caps(c: &Option<Capabilities>) -> Vec<Capability> {
        let mut v: Vec<_> = c.clone().unwrap_or_default().into_iter().collect();
        v.sort_by_key(|c| c.to_string());
        v
    }

    fn sorted(list: &[Capability]) -> Vec<Capability> {
        let mut v = list.to_vec();
        v.sort_by_key(|c| c.to_string());
        v
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn args_from_image_only() {
        let f = Fixture::new();
        assert_eq!(
            args(&f.ok()),
            strs(&["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"])
        );
    }

    #[test]
    fn request_command_replaces_entrypoint_and_cmd() {
        let mut f = Fixture::new();
        f.container.command = strs(&["/bin/sh"]);
        assert_eq!(args(&f.ok()), strs(&["/bin/sh"]));
        f.container.args = strs(&["-c", "true"]);
        assert_eq!(args(&f.ok()), strs(&["/bin/sh", "-c", "true"]));
    }

    #[test]
    fn request_args_replace_cmd_only() {
        let mut f = Fixture::new();
        f.container.args = strs(&["nginx", "-T"]);
        assert_eq!(args(&f.ok()), strs(&["/docker-entrypoint.sh", "nginx", "-T"]));
    }

    #[test]
    fn empty_entrypoint_is_cleared() {
        let mut f = Fixture::new();
        f.image = image(json!({"Entrypoint": [""], "Cmd": ["/app"]}));
        assert_eq!(args(&f.ok()), strs(&["/app"]));
        f.container.args = strs(&["/other", "x"]);
        assert_eq!(args(&f.ok()), strs(&["/other", "x"]));
    }

    #[test]
    fn no_command_anywhere_is_invalid() {
        let mut f = Fixture::new();
        f.image = image(json!({}));
        let (field, msg) = invalid_field(f.build());
        assert_eq!(field, "command");
        assert!(msg.contains("no command specified"), "{msg}");
        f.image = image(json!({"Entrypoint": [""]}));
        assert_eq!(invalid_field(f.build()).0, "command");
        f.image = image(json!({"Cmd": [""]}));
        assert_eq!(invalid_field(f.build()).0, "command");
    }

    #[test]
    fn env_merges_image_and_request() {
        let mut f = Fixture::new();
        f.container.envs = vec![
            cri::KeyValue {
                key: "NGINX_VERSION".into(),
                value: "2".into(),
            },
            cri::KeyValue {
                key: "EXTRA".into(),
                value: "a=b".into(),
            },
            cri::KeyValue {
                key: "EXTRA".into(),
                value: "last".into(),
            },
        ];
        assert_eq!(
            env(&f.ok()),
            strs(&[
                "PATH=/usr/local/bin:/usr/bin",
                "NGINX_VERSION=2",
                "EXTRA=last",
                "HOSTNAME=web-0"
            ])
        );
    }

    #[test]
    fn env_defaults_path_and_keeps_request_hostname() {
        let mut f = Fixture::new();
        f.image = image(json!({"Cmd": ["/app"], "Env": ["HOSTNAME=build-box", "A=1"]}));
        let e = env(&f.ok());
        assert_eq!(e[0], format!("PATH={DEFAULT_PATH}"));
        assert!(e.contains(&"HOSTNAME=web-0".to_string()), "{e:?}");
        assert!(!e.contains(&"HOSTNAME=build-box".to_string()), "{e:?}");

        f.container.envs = vec![cri::KeyValue {
            key: "HOSTNAME".into(),
            value: "mine".into(),
        }];
        f.container.tty = true;
        let e = env(&f.ok());
        assert!(
            e.contains(&"HOSTNAME=mine".to_string()) && !e.iter().any(|v| v == "HOSTNAME=web-0"),
            "{e:?}"
        );
        assert!(e.contains(&"TERM=xterm".to_string()), "{e:?}");
        assert_eq!(process(&f.ok()).terminal(), Some(true));
    }

    #[test]
    fn bad_env_names_are_invalid() {
        for key in ["", "A=B"] {
            let mut f = Fixture::new();
            f.container.envs = vec![
                cri::KeyValue {
                    key: "OK".into(),
                    value: "1".into(),
                },
                cri::KeyValue {
                    key: key.into(),
                    value: "x".into(),
                },
            ];
            assert_eq!(invalid_field(f.build()).0, "envs[1]");
        }
    }

    #[test]
    fn working_dir_sources_and_validation() {
        let mut f = Fixture::new();
        assert_eq!(process(&f.ok()).cwd(), Path::new("/"));
        f.image = image(json!({"Cmd": ["/app"], "WorkingDir": "/srv"}));
        assert_eq!(process(&f.ok()).cwd(), Path::new("/srv"));
        f.container.working_dir = "/work".into();
        assert_eq!(process(&f.ok()).cwd(), Path::new("/work"));
        f.container.working_dir = "work".into();
        assert_eq!(invalid_field(f.build()).0, "working_dir");
        f.container.working_dir.clear();
        f.image = image(json!({"Cmd": ["/app"], "WorkingDir": "srv"}));
        assert_eq!(invalid_field(f.build()).0, "image.working_dir");
    }

    #[test]
    fn user_from_image_and_security_context() {
        let mut f = Fixture::new();
        let b = f.ok();
        assert_eq!((b.uid, b.gid), (0, 0));
        assert_eq!(process(&b).user().additional_gids().as_deref(), Some(&[0u32][..]));

        f.image = image(json!({"Cmd": ["/app"], "User": "app"}));
        let b = f.ok();
        assert_eq!((b.uid, b.gid, b.additional_gids.clone()), (1000, 1000, vec![44]));
        let u = process(&b).user();
        assert_eq!((u.uid(), u.gid()), (1000, 1000));
        // The spec's list starts with the primary gid so setgroups(2) runs.
        assert_eq!(u.additional_gids().as_deref(), Some(&[1000u32, 44][..]));

        f.sc().run_as_user = Some(cri::Int64Value { value: 2000 });
        f.sc().supplemental_groups = vec![5, 44];
        let b = f.ok();
        assert_eq!((b.uid, b.gid, b.additional_gids), (2000, 0, vec![5, 44]));

        f.sc().run_as_user = None;
        f.sc().run_as_username = "nobody".into();
        assert_eq!(invalid_field(f.build()).0, "linux.security_context.run_as_username");
    }

    #[test]
    fn default_capabilities_for_root() {
        let f = Fixture::new();
        let b = f.ok();
        let c = process(&b).capabilities().as_ref().unwrap();
        let want = sorted(&DEFAULT_CAPABILITIES);
        assert_eq!(caps(c.bounding()), want);
        assert_eq!(caps(c.effective()), want);
        assert_eq!(caps(c.permitted()), want);
        assert!(caps(c.inheritable()).is_empty());
        assert!(caps(c.ambient()).is_empty());
    }

    fn cap_request(add: &[&str], drop: &[&str]) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: strs(add),
                drop_capabilities: strs(drop),
                add_ambient_capabilities: vec![],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn capability_add_drop_and_all() {
        let bounding =
            |add: &[&str], drop: &[&str]| caps(capabilities(Some(&cap_request(add, drop)), 0).unwrap().bounding());
        let mut want: Vec<_> = DEFAULT_CAPABILITIES
            .iter()
            .copied()
            .filter(|c| *c != Capability::Chown)
            .chain([Capability::NetAdmin, Capability::SysTime])
            .collect();
        want = sorted(&want);
        assert_eq!(bounding(&["NET_ADMIN", "cap_sys_time"], &["CHOWN"]), want);
        assert_eq!(
            bounding(&["NET_BIND_SERVICE"], &["ALL"]),
            vec![Capability::NetBindService]
        );
        let mut all_but_admin: Vec<_> = ALL_CAPABILITIES
            .iter()
            .copied()
            .filter(|c| *c != Capability::SysAdmin)
            .collect();
        all_but_admin = sorted(&all_but_admin);
        assert_eq!(bounding(&["ALL"], &["SYS_ADMIN"]), all_but_admin);
        assert_eq!(bounding(&["ALL"], &["ALL"]), vec![]);
        assert_eq!(bounding(&["all", "KILL"], &["ALL"]), vec![Capability::Kill]);
    }

    #[test]
    fn unknown_capability_is_invalid() {
        let mut f = Fixture::new();
        *f.sc() = cap_request(&["NET_ADMIN", "CHOWN", "SYS_WIZARD"], &[]);
        let (field, msg) = invalid_field(f.build());
        assert_eq!(field, "linux.security_context.capabilities.add_capabilities[2]");
        assert!(msg.contains("SYS_WIZARD"), "{msg}");
        *f.sc() = cap_request(&[], &["BOGUS"]);
        assert_eq!(
            invalid_field(f.build()).0,
            "linux.security_context.capabilities.drop_capabilities[0]"
        );
    }

    #[test]
    fn non_root_gets_only_ambient_capabilities_in_effect() {
        let c = capabilities(Some(&cap_request(&["NET_ADMIN"], &[])), 1000).unwrap();
        assert!(caps(c.bounding()).contains(&Capability::NetAdmin));
        assert!(caps(c.effective()).is_empty() && caps(c.permitted()).is_empty());

        let mut sc = cap_request(&[], &["ALL"]);
        sc.capabilities.as_mut().unwrap().add_ambient_capabilities = strs(&["NET_BIND_SERVICE"]);
        let c = capabilities(Some(&sc), 1000).unwrap();
        let nbs = vec![Capability::NetBindService];
        for set in [c.bounding(), c.effective(), c.permitted(), c.inheritable(), c.ambient()] {
            assert_eq!(caps(set), nbs);
        }
        sc.capabilities.as_mut().unwrap().add_ambient_capabilities = strs(&["NOPE"]);
        assert!(capabilities(Some(&sc), 1000).is_err());
    }

    #[test]
    fn privileged_gets_everything() {
        let mut f = Fixture::new();
        f.sc().privileged = true;
        let b = f.ok();
        let c = process(&b).capabilities().as_ref().unwrap();
        assert_eq!(caps(c.bounding()), sorted(&ALL_CAPABILITIES));
        assert_eq!(caps(c.effective()), sorted(&ALL_CAPABILITIES));
        let l = linux(&b);
        assert!(l.masked_paths().as_ref().unwrap().is_empty());
        assert!(l.readonly_paths().as_ref().unwrap().is_empty());
        assert!(l.seccomp().is_none());
        assert!(options(mount_at(&b, "/sys")).contains(&"rw".to_string()));
        assert!(options(mount_at(&b, "/sys/fs/cgroup")).contains(&"rw".to_string()));
        let rules = l.resources().as_ref().unwrap().devices().as_ref().unwrap();
        assert_eq!(rules.len(), 1);
        assert!(rules[0].allow() && rules[0].typ() == Some(LinuxDeviceType::A));
        let devices = l.devices().as_ref().unwrap();
        assert!(
            devices.iter().any(|d| d.path() == Path::new("/dev/null")),
            "host devices are added"
        );
        assert!(!devices.iter().any(|d| d.path().starts_with("/dev/pts")));
    }

    #[test]
    fn process_flags_and_oom_clamping() {
        let mut f = Fixture::new();
        f.sc().no_new_privs = true;
        f.res().oom_score_adj = -998;
        let b = f.ok();
        assert_eq!(process(&b).no_new_privileges(), Some(true));
        assert_eq!(process(&b).oom_score_adj(), Some(0));
        assert_eq!(process(&b).terminal(), Some(false));
        assert!(process(&b).rlimits().is_none());
        f.host.oom_score_adj_min = -1000;
        assert_eq!(process(&f.ok()).oom_score_adj(), Some(-998));
        f.res().oom_score_adj = 5000;
        assert_eq!(process(&f.ok()).oom_score_adj(), Some(1000));
        f.res().oom_score_adj = i64::MIN;
        assert_eq!(process(&f.ok()).oom_score_adj(), Some(-1000));
        f.host.oom_score_adj_min = 5000;
        assert_eq!(process(&f.ok()).oom_score_adj(), Some(1000));
        f.container.linux.as_mut().unwrap().resources = None;
        assert_eq!(process(&f.ok()).oom_score_adj(), None);
    }

    #[test]
    fn default_mounts_in_order() {
        let f = Fixture::new();
        let b = f.ok();
        let dests: Vec<_> = b
            .spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert_eq!(
            dests,
            strs(&[
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/dev/shm",
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf"
            ])
        );
        assert!(options(mount_at(&b, "/sys")).contains(&"ro".to_string()));
        assert!(options(mount_at(&b, "/sys/fs/cgroup")).contains(&"ro".to_string()));
        let shm = mount_at(&b, "/dev/shm");
        assert_eq!(shm.typ().as_deref(), Some("tmpfs"));
        assert!(options(shm).contains(&"size=64m".to_string()));
        let dev = mount_at(&b, "/dev");
        assert_eq!(
            options(dev),
            strs(&["nosuid", "strictatime", "mode=755", "size=65536k"])
        );
        let pts = options(mount_at(&b, "/dev/pts"));
        for o in ["newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] {
            assert!(pts.contains(&o.to_string()), "{pts:?}");
        }
        let hosts = mount_at(&b, "/etc/hosts");
        assert_eq!(hosts.source().as_deref(), Some(f.files.hosts.as_path()));
        assert_eq!(options(hosts), strs(&["rbind", "rprivate", "rw"]));
        assert!(b.volumes.is_empty());
    }

    #[test]
    fn readonly_rootfs_and_pod_shm() {
        let mut f = Fixture::new();
        f.sc().readonly_rootfs = true;
        f.files.shm = Some(f.dir.path().join("pod/shm"));
        let b = f.ok();
        assert_eq!(b.spec.root().as_ref().unwrap().readonly(), Some(true));
        assert_eq!(b.spec.root().as_ref().unwrap().path(), &f.rootfs());
        for p in ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"] {
            assert!(options(mount_at(&b, p)).contains(&"ro".to_string()), "{p}");
        }
        let shm = mount_at(&b, "/dev/shm");
        assert_eq!(shm.typ().as_deref(), Some("bind"));
        assert_eq!(shm.source().as_deref(), f.files.shm.as_deref());
        assert!(options(shm).contains(&"rw".to_string()));
    }

    #[test]
    fn cri_mount_replaces_default() {
        let mut f = Fixture::new();
        let custom = f.dir.path().join("my-hosts");
        fs::write(&custom, "").unwrap();
        f.cri_mount("/etc/hosts", &custom.display().to_string()).readonly = true;
        let b = f.ok();
        let all: Vec<_> = b
            .spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination() == Path::new("/etc/hosts"))
            .collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].source().as_deref(), Some(custom.as_path()));
        assert_eq!(options(all[0]), strs(&["rbind", "rprivate", "ro"]));
        // Same slot as the default it replaced.
        let dests: Vec<_> = b
            .spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().clone())
            .collect();
        assert_eq!(dests[8], PathBuf::from("/etc/hosts"));
    }

    #[test]
    fn cri_mount_on_dev_replaces_dev_children() {
        let mut f = Fixture::new();
        let data = f.data();
        f.cri_mount("/dev", &data);
        let b = f.ok();
        let under_dev = b
            .spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination().starts_with("/dev"))
            .count();
        assert_eq!(under_dev, 1);
        assert_eq!(mount_at(&b, "/dev").typ().as_deref(), Some("bind"));
    }

    #[test]
    fn cri_mount_validation() {
        let mut f = Fixture::new();
        let data = f.data();
        f.cri_mount("/ok", &data);
        f.cri_mount("/data", "/nonexistent/nodelet/test/path");
        let (field, msg) = invalid_field(f.build());
        assert_eq!(field, "mounts[1].host_path");
        assert!(msg.contains("does not exist"), "{msg}");

        for bad in ["relative/path", "/a/../etc", "", "/", "//"] {
            let mut f = Fixture::new();
            let data = f.data();
            f.cri_mount(bad, &data);
            assert_eq!(invalid_field(f.build()).0, "mounts[0].container_path", "{bad}");
        }

        let mut f = Fixture::new();
        let data = f.data();
        f.cri_mount("/x", &data);
        f.cri_mount("/x/", &data);
        assert_eq!(invalid_field(f.build()).0, "mounts[1].container_path");

        let mut f = Fixture::new();
        let data = f.data();
        f.cri_mount("/x", &data).image = Some(cri::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        });
        match f.build() {
            Err(SpecError::Unsupported { field, .. }) => assert_eq!(field, "mounts[0].image"),
            other => panic!("{other:?}"),
        }

        let mut f = Fixture::new();
        let data = f.data();
        f.cri_mount("/x", &data).propagation = 42;
        assert_eq!(invalid_field(f.build()).0, "mounts[0].propagation");
    }

    #[test]
    fn mount_propagation_and_recursive_read_only() {
        use cri::MountPropagation as P;
        let mut f = Fixture::new();
        let data = f.data();
        f.cri_mount("/private", &data);
        f.cri_mount("/slave", &data).propagation = P::PropagationHostToContainer as i32;
        let b = f.ok();
        assert_eq!(options(mount_at(&b, "/private")), strs(&["rbind", "rprivate", "rw"]));
        assert_eq!(options(mount_at(&b, "/slave")), strs(&["rbind", "rslave", "rw"]));
        assert_eq!(linux(&b).rootfs_propagation().as_deref(), Some("slave"));
        f.cri_mount("/shared", &data).propagation = P::PropagationBidirectional as i32;
        let b = f.ok();
        assert_eq!(options(mount_at(&b, "/shared")), strs(&["rbind", "rshared", "rw"]));
        assert_eq!(linux(&b).rootfs_propagation().as_deref(), Some("shared"));

        let mut f = Fixture::new();
        let m = f.cri_mount("/rro", &data);
        m.readonly = true;
        m.recursive_read_only = true;
        assert_eq!(
            options(mount_at(&f.ok(), "/rro")),
            strs(&["rbind", "rprivate", "ro", "rro"])
        );
        f.container.mounts[0].readonly = false;
        assert_eq!(invalid_field(f.build()).0, "mounts[0].recursive_read_only");
        f.container.mounts[0].readonly = true;
        f.container.mounts[0].propagation = P::PropagationHostToContainer as i32;
        assert_eq!(invalid_field(f.build()).0, "mounts[0].recursive_read_only");
    }

    #[test]
    fn cri_mounts_are_ordered_parents_first() {
        let mut f = Fixture::new();
        let data = f.data();
        f.cri_mount("/var/lib/app/cache", &data);
        f.cri_mount("/var", &data);
        f.cri_mount("/var/lib", &data);
        let b = f.ok();
        let tail: Vec<_> = b.spec.mounts().as_ref().unwrap()[10..]
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert_eq!(tail, strs(&["/var", "/var/lib", "/var/lib/app/cache"]));
    }

    #[test]
    fn image_volumes_get_anonymous_directories() {
        let mut f = Fixture::new();
        f.image = image(json!({
            "Cmd": ["/app"],
            "Volumes": {"/var/lib/mysql": {}, "/var/lib/mysql/": {}, "/data/sub": {}, "/cache": {}, "/etc/hosts": {}, "/a_b": {}},
        }));
        let data = f.data();
        f.cri_mount("/data", &data);
        f.cri_mount("/cache", &data);
        let b = f.ok();
        let vols = f.dir.path().join("volumes");
        assert_eq!(b.volumes, vec![vols.join("a%5fb"), vols.join("var_lib_mysql")]);
        let m = mount_at(&b, "/var/lib/mysql");
        assert_eq!(m.source().as_deref(), Some(vols.join("var_lib_mysql").as_path()));
        assert_eq!(options(m), strs(&["rbind", "rprivate", "rw"]));
        assert!(!vols.exists(), "build must not create the directories");
        assert_eq!(mount_at(&b, "/cache").source().as_deref(), Some(Path::new(&data)));
        assert!(!b
            .spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.destination() == Path::new("/data/sub")));

        f.image = image(json!({"Cmd": ["/app"], "Volumes": {"/x/../y": {}}}));
        assert_eq!(invalid_field(f.build()).0, "image.volumes");
    }

    #[test]
    fn volume_dir_names_do_not_collide() {
        let names: HashSet<_> = ["/a/b", "/a_b", "/a%5fb", "/a b", "/a/b/"]
            .iter()
            .map(|p| volume_dir_name(Path::new(p)))
            .collect();
        // "/a/b/" is the same volume as "/a/b" once cleaned; the raw
        // function only sees cleaned paths.
        assert_eq!(names.len(), 5);
        assert_eq!(volume_dir_name(Path::new("/var/lib/mysql")), "var_lib_mysql");
    }

    #[test]
    fn masked_and_readonly_paths() {
        let mut f = Fixture::new();
        let b = f.ok();
        assert_eq!(linux(&b).masked_paths().clone().unwrap(), strs(&DEFAULT_MASKED_PATHS));
        assert_eq!(
            linux(&b).readonly_paths().clone().unwrap(),
            strs(&DEFAULT_READONLY_PATHS)
        );
        f.sc().masked_paths = strs(&["/proc/kcore"]);
        f.sc().readonly_paths = strs(&["/proc/sys", "/proc/bus"]);
        let b = f.ok();
        assert_eq!(linux(&b).masked_paths().clone().unwrap(), strs(&["/proc/kcore"]));
        assert_eq!(
            linux(&b).readonly_paths().clone().unwrap(),
            strs(&["/proc/sys", "/proc/bus"])
        );
        f.sc().masked_paths = strs(&["proc/kcore"]);
        assert_eq!(invalid_field(f.build()).0, "linux.security_context.masked_paths[0]");
    }

    #[test]
    fn devices_and_cgroup_rules() {
        let mut f = Fixture::new();
        f.container.devices = vec![cri::Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        }];
        let b = f.ok();
        let l = linux(&b);
        let d = &l.devices().as_ref().unwrap()[0];
        assert_eq!(d.path(), Path::new("/dev/mynull"));
        assert_eq!((d.typ(), d.major(), d.minor()), (LinuxDeviceType::C, 1, 3));
        assert_eq!((d.uid(), d.gid()), (Some(0), Some(0)));
        assert_eq!(d.file_mode().map(|m| m & 0o777), Some(0o666));
        let rules = l.resources().as_ref().unwrap().devices().as_ref().unwrap();
        assert!(
            !rules[0].allow() && rules[0].typ() == Some(LinuxDeviceType::A),
            "deny all first"
        );
        let last = rules.last().unwrap();
        assert!(last.allow());
        assert_eq!(
            (last.major(), last.minor(), last.access().as_deref()),
            (Some(1), Some(3), Some("rw"))
        );
        for (maj, min) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2)] {
            assert!(rules
                .iter()
                .any(|r| r.allow() && r.major() == Some(maj) && r.minor() == Some(min)));
        }
        assert!(rules.iter().any(|r| r.major() == Some(136) && r.minor().is_none()));
        assert!(!rules.iter().any(|r| r.major() == Some(10) && r.minor() == Some(200)));
    }

    #[test]
    fn device_errors() {
        let mut f = Fixture::new();
        let file = f.dir.path().join("pod/hosts").display().to_string();
        let case = |f: &mut Fixture, host: &str, ctr: &str, perms: &str| {
            f.container.devices = vec![cri::Device {
                container_path: ctr.into(),
                host_path: host.into(),
                permissions: perms.into(),
            }];
            invalid_field(f.build())
        };
        let (field, msg) = case(&mut f, &file, "/dev/x", "rwm");
        assert_eq!(field, "devices[0].host_path");
        assert!(msg.contains("not a character or block device"), "{msg}");
        assert_eq!(
            case(&mut f, "/dev/nodelet-missing", "/dev/x", "rwm").0,
            "devices[0].host_path"
        );
        assert_eq!(
            case(&mut f, "/dev/null", "/tmp/null", "rwm").0,
            "devices[0].container_path"
        );
        assert_eq!(case(&mut f, "/dev/null", "/dev/x", "rwx").0, "devices[0].permissions");
        assert_eq!(case(&mut f, "/dev/null", "/dev/x", "rr").0, "devices[0].permissions");
        // An empty container path means "same as on the host".
        f.container.devices[0] = cri::Device {
            container_path: String::new(),
            host_path: "/dev/null".into(),
            permissions: String::new(),
        };
        let b = f.ok();
        assert_eq!(linux(&b).devices().as_ref().unwrap()[0].path(), Path::new("/dev/null"));
    }

    #[test]
    fn host_device_walk_skips_links_and_pts() {
        let devs = host_devices(Path::new("/dev"));
        assert!(devs.iter().any(|d| d.path() == Path::new("/dev/null")));
        assert!(!devs
            .iter()
            .any(|d| d.path().starts_with("/dev/pts") || d.path() == Path::new("/dev/console")));
        // /dev/stdin etc. are symlinks.
        assert!(!devs.iter().any(|d| d.path() == Path::new("/dev/stdin")));
        assert!(host_devices(Path::new("/nonexistent")).is_empty());
    }

    #[test]
    fn limits_without_their_controller_are_refused() {
        let mut f = Fixture::new();
        f.host.cgroup_controllers = Some(vec!["cpu".into(), "memory".into(), "pids".into()]);
        *f.res() = cri::LinuxContainerResources {
            memory_limit_in_bytes: 256 << 20,
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 0,
            }],
            ..Default::default()
        };
        f.ok();
        f.res().hugepage_limits[0].limit = 4 << 20;
        match f.build().map(|_| ()) {
            Err(SpecError::Unsupported { field, message }) => {
                assert_eq!(field, "linux.resources.hugepage_limits");
                assert!(
                    message.contains("hugetlb cgroup controller is not available"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        f.res().hugepage_limits.clear();
        f.res().cpuset_cpus = "0".into();
        assert!(matches!(f.build().map(|_| ()), Err(SpecError::Unsupported { field, .. }) if field.contains("cpuset")));
    }

    #[test]
    fn resources_map_to_the_spec() {
        let mut f = Fixture::new();
        *f.res() = cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 256 << 20,
            memory_swap_limit_in_bytes: 512 << 20,
            cpuset_cpus: "0-3,5".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 1 << 30,
            }],
            ..Default::default()
        };
        let b = f.ok();
        let r = linux(&b).resources().as_ref().unwrap();
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(
            (cpu.shares(), cpu.quota(), cpu.period()),
            (Some(512), Some(50_000), Some(100_000))
        );
        assert_eq!(
            (cpu.cpus().as_deref(), cpu.mems().as_deref()),
            (Some("0-3,5"), Some("0"))
        );
        let mem = r.memory().as_ref().unwrap();
        assert_eq!((mem.limit(), mem.swap()), (Some(256 << 20), Some(512 << 20)));
        let h = &r.hugepage_limits().as_ref().unwrap()[0];
        assert_eq!((h.page_size().as_str(), h.limit()), ("2MB", 1 << 30));
        assert_eq!(
            linux(&b).cgroups_path().as_deref(),
            Some(Path::new("/nodelet/besteffort/pod1/0123"))
        );

        f.res().memory_swap_limit_in_bytes = -1;
        assert_eq!(
            linux(&f.ok()).resources().as_ref().unwrap().memory().unwrap().swap(),
            Some(-1)
        );

        // Nothing set: no cpu or memory sections at all.
        *f.res() = Default::default();
        let b = f.ok();
        let r = linux(&b).resources().as_ref().unwrap();
        assert!(r.cpu().is_none() && r.memory().is_none());
    }

    #[test]
    fn resource_validation_errors() {
        type Tweak = fn(&mut cri::LinuxContainerResources);
        let cases: Vec<(Tweak, &str)> = vec![
            (|r| r.cpu_shares = 1, "linux.resources.cpu_shares"),
            (|r| r.cpu_shares = 300_000, "linux.resources.cpu_shares"),
            (|r| r.cpu_shares = -2, "linux.resources.cpu_shares"),
            (|r| r.cpu_quota = 999, "linux.resources.cpu_quota"),
            (|r| r.cpu_quota = -1, "linux.resources.cpu_quota"),
            (|r| r.cpu_period = 999, "linux.resources.cpu_period"),
            (|r| r.cpu_period = 1_000_001, "linux.resources.cpu_period"),
            (|r| r.cpuset_cpus = "0-".into(), "linux.resources.cpuset_cpus"),
            (|r| r.cpuset_cpus = "3-1".into(), "linux.resources.cpuset_cpus"),
            (|r| r.cpuset_cpus = "0,,1".into(), "linux.resources.cpuset_cpus"),
            (|r| r.cpuset_mems = "a".into(), "linux.resources.cpuset_mems"),
            (
                |r| r.memory_limit_in_bytes = -1,
                "linux.resources.memory_limit_in_bytes",
            ),
            (
                |r| r.memory_limit_in_bytes = 1 << 20,
                "linux.resources.memory_limit_in_bytes",
            ),
            (
                |r| {
                    r.memory_limit_in_bytes = 64 << 20;
                    r.memory_swap_limit_in_bytes = 32 << 20;
                },
                "linux.resources.memory_swap_limit_in_bytes",
            ),
            (
                |r| r.memory_swap_limit_in_bytes = -2,
                "linux.resources.memory_swap_limit_in_bytes",
            ),
            (
                |r| r.memory_swap_limit_in_bytes = 64 << 20,
                "linux.resources.memory_swap_limit_in_bytes",
            ),
            (
                |r| {
                    r.hugepage_limits = vec![cri::HugepageLimit {
                        page_size: "2M".into(),
                        limit: 1,
                    }]
                },
                "linux.resources.hugepage_limits[0].page_size",
            ),
            (
                |r| {
                    r.hugepage_limits = vec![cri::HugepageLimit {
                        page_size: "1GB".into(),
                        limit: u64::MAX,
                    }]
                },
                "linux.resources.hugepage_limits[0].limit",
            ),
        ];
        for (tweak, want) in cases {
            let mut f = Fixture::new();
            tweak(f.res());
            assert_eq!(invalid_field(f.build()).0, want);
        }
    }

    #[test]
    fn unified_resources_need_cgroup_v2() {
        let mut f = Fixture::new();
        f.res().unified.insert("memory.high".into(), "1G".into());
        match f.build() {
            Err(SpecError::Unsupported { field, .. }) => assert_eq!(field, "linux.resources.unified"),
            other => panic!("{other:?}"),
        }
        f.host.cgroup_v2 = true;
        let b = f.ok();
        let unified = linux(&b).resources().as_ref().unwrap().unified().clone().unwrap();
        assert_eq!(unified.get("memory.high").map(String::as_str), Some("1G"));
        f.res().unified.insert("../../cgroup.procs".into(), "1".into());
        assert!(invalid_field(f.build()).0.starts_with("linux.resources.unified"));
    }

    fn ns_list(b: &BuiltSpec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        linux(b)
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect()
    }

    #[test]
    fn namespaces_per_pid_mode() {
        use LinuxNamespaceType as T;
        let mut f = Fixture::new();
        let pod = |p: &str| Some(PathBuf::from(p));
        let b = f.ok();
        assert_eq!(
            ns_list(&b),
            vec![
                (T::Mount, None),
                (T::Pid, None),
                (T::Network, pod("/run/nodelet/ns/net-1")),
                (T::Ipc, pod("/run/nodelet/ns/ipc-1")),
                (T::Uts, pod("/run/nodelet/ns/uts-1")),
            ]
        );
        assert!(b.spec.hostname().is_none(), "joined UTS: no hostname");

        f.namespaces.pid = PidNamespace::Pod("/proc/42/ns/pid".into());
        assert!(ns_list(&f.ok()).contains(&(T::Pid, pod("/proc/42/ns/pid"))));
        f.namespaces.pid = PidNamespace::Target("/proc/43/ns/pid".into());
        assert!(ns_list(&f.ok()).contains(&(T::Pid, pod("/proc/43/ns/pid"))));
        f.namespaces.pid = PidNamespace::Node;
        assert!(!ns_list(&f.ok()).iter().any(|(t, _)| *t == T::Pid));

        // hostNetwork: no network or UTS namespace entries.
        f.namespaces.network = None;
        f.namespaces.uts = None;
        let b = f.ok();
        let types: Vec<_> = ns_list(&b).into_iter().map(|(t, _)| t).collect();
        assert_eq!(types, vec![T::Mount, T::Ipc]);
        assert!(b.spec.hostname().is_none());
        assert!(env(&b).contains(&"HOSTNAME=web-0".to_string()));

        f.host.cgroup_v2 = true;
        assert!(ns_list(&f.ok()).contains(&(T::Cgroup, None)));
    }

    #[test]
    fn pod_user_namespace() {
        use LinuxNamespaceType as T;
        let mut f = Fixture::new();
        let b = f.ok();
        assert!(linux(&b).uid_mappings().is_none() && linux(&b).gid_mappings().is_none());
        let range = crate::runtime::userns::IdRange { start: 5 * 65536 };
        f.namespaces.user = Some(("/run/nodelet/pods/1/ns/user".into(), range));
        let b = f.ok();
        // Joined first, by path: libcontainer writes no maps for it.
        assert_eq!(
            ns_list(&b)[0],
            (T::User, Some(PathBuf::from("/run/nodelet/pods/1/ns/user")))
        );
        for maps in [linux(&b).uid_mappings(), linux(&b).gid_mappings()] {
            let m = &maps.as_ref().unwrap()[..];
            assert_eq!(m.len(), 1);
            assert_eq!(
                (m[0].container_id(), m[0].host_id(), m[0].size()),
                (0, 5 * 65536, 65536)
            );
        }
        // Idmapped CRI mounts reach the spec only as the daemon's clones.
        f.container.mounts.push(cri::Mount {
            container_path: "/data".into(),
            host_path: "/".into(),
            uid_mappings: vec![cri::IdMapping {
                host_id: 5 * 65536,
                container_id: 0,
                length: 65536,
            }],
            ..Default::default()
        });
        assert!(invalid_field(f.build()).0.starts_with("mounts[0].uidMappings"));
    }

    #[test]
    fn seccomp_through_build() {
        use cri::security_profile::ProfileType as T;
        let mut f = Fixture::new();
        assert!(linux(&f.ok()).seccomp().is_none(), "no profile requested: unconfined");
        f.sc().seccomp = Some(cri::SecurityProfile {
            profile_type: T::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
        let b = f.ok();
        let p = linux(&b).seccomp().as_ref().unwrap();
        let denied = seccomp::unconditionally_denied(p);
        assert!(denied.contains_key("mount") && denied.contains_key("keyctl"));
        assert_eq!(denied["keyctl"], LinuxSeccompAction::ScmpActErrno);
        let clone = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .find(|r| r.names() == &["clone"])
            .expect("clone filter");
        assert!(clone
            .args()
            .as_ref()
            .unwrap()
            .iter()
            .all(|a| a.op() == LinuxSeccompOperator::ScmpCmpMaskedEq));

        // Adding SYS_ADMIN lifts the mount rules.
        f.sc().capabilities = Some(cri::Capability {
            add_capabilities: strs(&["SYS_ADMIN"]),
            ..Default::default()
        });
        let b = f.ok();
        let denied = seccomp::unconditionally_denied(linux(&b).seccomp().as_ref().unwrap());
        assert!(!denied.contains_key("mount") && !denied.contains_key("unshare"));
        assert!(denied.contains_key("keyctl"));

        f.sc().seccomp = Some(cri::SecurityProfile {
            profile_type: T::Localhost as i32,
            localhost_ref: "relative.json".into(),
        });
        assert_eq!(
            invalid_field(f.build()).0,
            "linux.security_context.seccomp.localhost_ref"
        );
    }

    #[test]
    fn apparmor_localhost_needs_apparmor() {
        use cri::security_profile::ProfileType as T;
        let mut f = Fixture::new();
        f.sc().apparmor = Some(cri::SecurityProfile {
            profile_type: T::Localhost as i32,
            localhost_ref: "k8s-deny-write".into(),
        });
        match f.build() {
            Err(SpecError::Unsupported { field, message }) => {
                assert_eq!(field, "linux.security_context.apparmor");
                assert_eq!(message, "AppArmor is not enabled on this host");
            }
            other => panic!("{other:?}"),
        }
        f.host.apparmor = true;
        assert_eq!(process(&f.ok()).apparmor_profile().as_deref(), Some("k8s-deny-write"));

        for t in [T::RuntimeDefault, T::Unconfined] {
            f.host.apparmor = false;
            f.sc().apparmor = Some(cri::SecurityProfile {
                profile_type: t as i32,
                localhost_ref: String::new(),
            });
            assert!(process(&f.ok()).apparmor_profile().is_none());
            f.host.apparmor = true;
            assert!(process(&f.ok()).apparmor_profile().is_none());
        }

        f.sc().apparmor = None;
        f.sc().apparmor_profile = "localhost/legacy".into();
        assert_eq!(process(&f.ok()).apparmor_profile().as_deref(), Some("legacy"));
        f.host.apparmor = false;
        assert!(matches!(f.build(), Err(SpecError::Unsupported { .. })));
        f.sc().apparmor_profile = "weird".into();
        assert_eq!(invalid_field(f.build()).0, "linux.security_context.apparmor_profile");
    }

    #[test]
    fn annotations_are_merged() {
        let mut f = Fixture::new();
        f.container.annotations.insert("team".into(), "blue".into());
        f.container
            .annotations
            .insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
        let b = f.ok();
        let a = b.spec.annotations().as_ref().unwrap();
        assert_eq!(a["team"], "blue");
        assert_eq!(a["io.kubernetes.cri.container-type"], "container");
        assert_eq!(a["io.kubernetes.cri.container-name"], "web");
        assert_eq!(a["io.kubernetes.cri.image-name"], "docker.io/library/nginx:1.27");
        assert_eq!(a["io.kubernetes.cri.sandbox-namespace"], "default");
    }

    #[test]
    fn missing_linux_section_uses_defaults() {
        let mut f = Fixture::new();
        f.container.linux = None;
        let b = f.ok();
        assert_eq!((b.uid, b.gid), (0, 0));
        assert_eq!(b.spec.root().as_ref().unwrap().readonly(), Some(false));
        assert!(linux(&b).seccomp().is_none());
        assert_eq!(linux(&b).masked_paths().clone().unwrap(), strs(&DEFAULT_MASKED_PATHS));
        let c = process(&b).capabilities().as_ref().unwrap();
        assert_eq!(caps(c.bounding()), sorted(&DEFAULT_CAPABILITIES));
        assert_eq!(process(&b).no_new_privileges(), None);
    }

    /// The full spec survives a JSON round trip and passes the checks
    /// libcontainer makes before running it.
    #[test]
    fn full_spec_round_trips_and_passes_libcontainer_checks() {
        use cri::security_profile::ProfileType as T;
        let mut f = Fixture::new();
        f.image = image(json!({
            "Cmd": ["/app"],
            "User": "app",
            "Env": ["A=1"],
            "WorkingDir": "/srv",
            "Volumes": {"/var/lib/app": {}},
        }));
        f.sc().seccomp = Some(cri::SecurityProfile {
            profile_type: T::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
        f.sc().no_new_privs = true;
        f.sc().capabilities = Some(cri::Capability {
            add_capabilities: strs(&["NET_ADMIN"]),
            drop_capabilities: strs(&["MKNOD"]),
            add_ambient_capabilities: strs(&["NET_BIND_SERVICE"]),
        });
        *f.res() = cri::LinuxContainerResources {
            cpu_shares: 256,
            memory_limit_in_bytes: 128 << 20,
            oom_score_adj: 500,
            ..Default::default()
        };
        let data = f.data();
        f.cri_mount("/data", &data).readonly = true;
        f.container.devices = vec![cri::Device {
            container_path: "/dev/zero2".into(),
            host_path: "/dev/zero".into(),
            permissions: "rwm".into(),
        }];
        let b = f.ok();

        let json = serde_json::to_string_pretty(&b.spec).unwrap();
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, b.spec);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["ociVersion"], oci_spec::runtime::VERSION);
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert!(v.get("hostname").is_none());

        libcontainer::validator::Validator::validate_spec(&b.spec).expect("libcontainer accepts the spec");
        for m in b.spec.mounts().as_ref().unwrap() {
            libcontainer::rootfs::utils::parse_mount(m).unwrap_or_else(|e| panic!("{m:?}: {e}"));
        }

        // The same through a file, as the runtime loads it.
        let path = f.dir.path().join("config.json");
        b.spec.save(&path).unwrap();
        assert_eq!(Spec::load(&path).unwrap(), b.spec);
    }

    /// Garbage in never panics: every field gets odd values.
    #[test]
    fn odd_requests_do_not_panic() {
        let weird = [
            "",
            "/",
            "..",
            "\0",
            "ALL",
            "-1",
            "/dev/../..",
            "x:y:z",
            "🦀",
            "CAP_",
            ":",
        ];
        for w in weird {
            let mut f = Fixture::new();
            f.container.command = vec![w.into()];
            f.container.working_dir = w.into();
            f.container.envs = vec![cri::KeyValue {
                key: w.into(),
                value: w.into(),
            }];
            let _ = f.build();

            let mut f = Fixture::new();
            f.image = image(json!({"Cmd": ["/app"], "User": w, "Volumes": {w: {}}}));
            let _ = f.build();

            let mut f = Fixture::new();
            f.sc().run_as_username = w.into();
            f.sc().capabilities = Some(cri::Capability {
                add_capabilities: vec![w.into()],
                drop_capabilities: vec![w.into()],
                add_ambient_capabilities: vec![w.into()],
            });
            f.sc().seccomp_profile_path = w.into();
            f.sc().apparmor_profile = w.into();
            f.sc().masked_paths = vec![w.into()];
            let _ = f.build();

            let mut f = Fixture::new();
            f.cri_mount(w, w).propagation = -7;
            f.container.devices = vec![cri::Device {
                container_path: w.into(),
                host_path: w.into(),
                permissions: w.into(),
            }];
            f.res().cpuset_cpus = w.into();
            f.res().hugepage_limits = vec![cri::HugepageLimit {
                page_size: w.into(),
                limit: 0,
            }];
            f.res().unified.insert(w.into(), w.into());
            let _ = f.build();
        }
    }
}
