//! Seccomp profiles: nodelet's RuntimeDefault and Localhost profile loading.
//!
//! # RuntimeDefault
//!
//! nodelet's own profile, written for nodelet (not a copy of Docker's or
//! containerd's files). Where those profiles allow a long list of syscalls
//! and deny the rest, this one **allows by default and denies a fixed list**
//! with `EPERM`: the syscalls Docker's default profile withholds from an
//! unprivileged container. The reasons:
//!
//! - The deny list is short and reviewable; an allow list is ~350 names
//!   that must track every kernel release (a new syscall such as
//!   `futex_waitv` or `cachestat` would otherwise fail in every container
//!   until the list is updated).
//! - The effective policy for every syscall that matters is the same:
//!   what the allow-list profiles leave out is exactly this deny list, and
//!   new kernel interfaces that need privilege are gated by capabilities,
//!   which containers do not have by default.
//!
//! A deny entry is lifted when the container holds the capability the
//! syscall needs anyway (Docker's `includes.caps`): e.g. with `SYS_ADMIN`
//! in the bounding set, `mount`, `unshare`, `setns` and namespace-creating
//! `clone` are allowed, since the capability check in the kernel then
//! decides. `clone3` fails with `ENOSYS` (not `EPERM`) unless `SYS_ADMIN`
//! is held, because its flags live in memory that seccomp cannot inspect:
//! libc then falls back to `clone`, whose flags are filtered.
//!
//! # Argument comparisons and libcontainer
//!
//! For `SCMP_CMP_MASKED_EQ`, runc reads `value` as the mask and `valueTwo`
//! as the datum; libcontainer 0.7 (what runs nodelet's specs) reads them
//! the other way round. [`masked_eq`] writes the spelling libcontainer
//! needs, and Localhost profiles (written for runc/Docker) are converted to
//! it, so a profile means the same thing here as under Docker. The test
//! `loaded_filter_behaves_in_a_child_process` loads real filters through
//! libcontainer and pins this down.
//!
//! Several conditions on the same argument index in one rule are ORed by
//! both runc and libcontainer (libseccomp itself accepts one comparison per
//! argument); nodelet's own profile relies on that for `clone` and
//! `personality`.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use k8s_cri::v1 as cri;
use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};
use serde::Deserialize;

use super::spec::SpecError;

/// The largest Localhost profile nodelet reads (1 MiB; Docker's full
/// default profile is ~20 KiB).
pub const MAX_PROFILE_SIZE: u64 = 1 << 20;

/// Which seccomp profile the request selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Unconfined,
    RuntimeDefault,
    /// An absolute host path, and the CRI field it came from.
    Localhost {
        path: String,
        field: &'static str,
    },
}

/// Read the profile selection from `security_context.seccomp`, else the
/// deprecated `seccomp_profile_path` (`runtime/default`, `docker/default`,
/// `unconfined`, `localhost/<abs path>`, empty = unconfined). Privilege is
/// not considered here.
pub fn choice(sc: Option<&cri::LinuxContainerSecurityContext>) -> Result<Choice, SpecError> {
    let Some(sc) = sc else {
        return Ok(Choice::Unconfined);
    };
    if let Some(p) = &sc.seccomp {
        let field = "linux.security_context.seccomp.localhost_ref";
        return match cri::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => Ok(Choice::RuntimeDefault),
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok(Choice::Unconfined),
            Ok(cri::security_profile::ProfileType::Localhost) => localhost(&p.localhost_ref, field),
            Err(_) => Err(invalid(
                "linux.security_context.seccomp.profile_type",
                format!("unknown profile type {}", p.profile_type),
            )),
        };
    }
    let field = "linux.security_context.seccomp_profile_path";
    // Deprecated, but older kubelets still send only this.
    #[allow(deprecated)]
    let path = sc.seccomp_profile_path.as_str();
    match path {
        "" | "unconfined" => Ok(Choice::Unconfined),
        "runtime/default" | "docker/default" => Ok(Choice::RuntimeDefault),
        other => match other.strip_prefix("localhost/") {
            Some(path) => localhost(path, field),
            None => Err(invalid(field, format!("unknown seccomp profile {other:?}"))),
        },
    }
}

fn localhost(path: &str, field: &'static str) -> Result<Choice, SpecError> {
    if !path.starts_with('/') {
        return Err(invalid(
            field,
            format!("localhost seccomp profile path {path:?} must be absolute"),
        ));
    }
    Ok(Choice::Localhost {
        path: path.to_string(),
        field,
    })
}

/// The seccomp filter for a container: `None` when unconfined or
/// privileged. `bounding` is the container's bounding capability set (it
/// lifts RuntimeDefault rules and evaluates a profile's `includes.caps`).
pub fn for_container(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    bounding: &Capabilities,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    let choice = choice(sc)?;
    if sc.is_some_and(|sc| sc.privileged) {
        return Ok(None);
    }
    match choice {
        Choice::Unconfined => Ok(None),
        Choice::RuntimeDefault => Ok(Some(runtime_default(bounding))),
        Choice::Localhost { path, field } => load_localhost(Path::new(&path), field, bounding).map(Some),
    }
}

fn invalid(field: &str, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

/// `(arg[index] & mask) == datum`, spelled for libcontainer 0.7, which
/// passes `valueTwo` as libseccomp's mask and `value` as the datum (see the
/// module doc).
pub fn masked_eq(index: usize, mask: u64, datum: u64) -> LinuxSeccompArg {
    seccomp_arg(index, LinuxSeccompOperator::ScmpCmpMaskedEq, datum, Some(mask))
}

fn seccomp_arg(index: usize, op: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> LinuxSeccompArg {
    let mut b = LinuxSeccompArgBuilder::default().index(index).op(op).value(value);
    if let Some(v) = value_two {
        b = b.value_two(v);
    }
    // Every field is set (and all have defaults), so the builder cannot fail.
    b.build().expect("a fully set LinuxSeccompArg builds")
}

/// The seccomp architectures of this host: the native ABI and the 32-bit
/// ABIs its kernel also runs, so a 32-bit binary cannot bypass the filter.
pub fn native_architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else if cfg!(target_arch = "s390x") {
        vec![Arch::ScmpArchS390x, Arch::ScmpArchS390]
    } else {
        vec![Arch::ScmpArchNative]
    }
}

/// Syscalls denied by RuntimeDefault, each group lifted by holding any one
/// of `lifted_by` (empty: always denied).
struct Deny {
    names: &'static [&'static str],
    lifted_by: &'static [Capability],
}

const DENY: &[Deny] = &[
    // The kernel keyring is not namespaced.
    Deny {
        names: &["add_key", "keyctl", "request_key"],
        lifted_by: &[],
    },
    // Obsolete or host-global interfaces with no container use.
    Deny {
        names: &[
            "create_module",
            "get_kernel_syms",
            "query_module",
            "nfsservctl",
            "sysfs",
            "_sysctl",
            "ustat",
            "uselib",
            "vm86",
            "vm86old",
            "swapon",
            "swapoff",
        ],
        lifted_by: &[],
    },
    // io_uring bypasses syscall filtering for the operations it performs
    // and has been a steady source of kernel exploits.
    Deny {
        names: &["io_uring_setup", "io_uring_enter", "io_uring_register"],
        lifted_by: &[],
    },
    // Mounts and namespaces: the kernel would check SYS_ADMIN anyway, but
    // these are the first step of most container escapes.
    Deny {
        names: &[
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "umount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "quotactl",
            "quotactl_fd",
            "lookup_dcookie",
        ],
        lifted_by: &[Capability::SysAdmin],
    },
    Deny {
        names: &["bpf"],
        lifted_by: &[Capability::Bpf, Capability::SysAdmin],
    },
    Deny {
        names: &["perf_event_open"],
        lifted_by: &[Capability::Perfmon, Capability::SysAdmin],
    },
    Deny {
        names: &["name_to_handle_at"],
        lifted_by: &[Capability::DacReadSearch, Capability::SysAdmin],
    },
    Deny {
        names: &["open_by_handle_at"],
        lifted_by: &[Capability::DacReadSearch],
    },
    Deny {
        names: &["ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "userfaultfd"],
        lifted_by: &[Capability::SysPtrace],
    },
    Deny {
        names: &["init_module", "finit_module", "delete_module"],
        lifted_by: &[Capability::SysModule],
    },
    Deny {
        names: &["settimeofday", "stime", "clock_settime", "clock_adjtime"],
        lifted_by: &[Capability::SysTime],
    },
    Deny {
        names: &["reboot", "kexec_load", "kexec_file_load"],
        lifted_by: &[Capability::SysBoot],
    },
    Deny {
        names: &["syslog"],
        lifted_by: &[Capability::Syslog, Capability::SysAdmin],
    },
    Deny {
        names: &["mbind", "set_mempolicy", "get_mempolicy", "move_pages"],
        lifted_by: &[Capability::SysNice],
    },
    Deny {
        names: &["acct"],
        lifted_by: &[Capability::SysPacct],
    },
    Deny {
        names: &["ioperm", "iopl"],
        lifted_by: &[Capability::SysRawio],
    },
];

/// `personality` values a container may pass: PER_LINUX (0), PER_LINUX32
/// (8), UNAME26 (0x20000), both (0x20008), and the 0xffffffff query.
pub const PERSONALITY_ALLOWED: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `CLONE_NEW*` flags that `clone` may not carry without SYS_ADMIN.
/// (CLONE_NEWTIME shares its bit with the exit signal in `clone` and can
/// only be requested through `clone3` and `unshare`, both denied.)
pub const CLONE_NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// Conditions on `personality`'s argument, ORed, that match exactly the
/// values *not* in [`PERSONALITY_ALLOWED`] (looking at the low 32 bits, as
/// the kernel does: it takes an `unsigned int`).
///
/// An allow-by-default filter must deny the complement of the allowed set,
/// and a seccomp rule can only test one masked value per argument. The
/// complement is covered by 32 "bit a is 0 and bit b is 1" tests:
/// - over the 30 bits outside 0x20008, taken cyclically, each bit being 0
///   while the next is 1: matches every value whose bits outside 0x20008
///   are neither all 0 nor all 1;
/// - "bit 3 is 0 and bit 0 is 1" and "bit 17 is 0 and bit 0 is 1": the
///   values whose bits outside 0x20008 are all 1 but which are not
///   0xffffffff.
///
/// Values whose bits outside 0x20008 are all 0 are exactly the four
/// allowed personas, and 0xffffffff matches no test. 32 is also the
/// minimum: each of the 32 values with a single 0 bit needs its own test.
pub fn personality_deny_args() -> Vec<LinuxSeccompArg> {
    let free: Vec<u32> = (0..32).filter(|b| *b != 3 && *b != 17).collect();
    let mut args = Vec::with_capacity(32);
    for (i, zero) in free.iter().enumerate() {
        let one = free[(i + 1) % free.len()];
        args.push(masked_eq(0, (1 << zero) | (1 << one), 1 << one));
    }
    for zero in [3u32, 17] {
        args.push(masked_eq(0, (1 << zero) | 1, 1));
    }
    args
}

fn errno_rule(names: Vec<String>, errno: i32, args: Option<Vec<LinuxSeccompArg>>) -> LinuxSyscall {
    let mut rule = LinuxSyscall::default();
    rule.set_names(names);
    rule.set_action(LinuxSeccompAction::ScmpActErrno);
    rule.set_errno_ret(Some(errno as u32));
    rule.set_args(args);
    rule
}

/// nodelet's RuntimeDefault profile for a container with this bounding
/// set (see the module doc).
pub fn runtime_default(bounding: &Capabilities) -> LinuxSeccomp {
    let held = |caps: &[Capability]| caps.iter().any(|c| bounding.contains(c));
    let mut denied: Vec<String> = DENY
        .iter()
        .filter(|d| !held(d.lifted_by))
        .flat_map(|d| d.names.iter().map(|n| n.to_string()))
        .collect();
    denied.sort();

    let mut syscalls = vec![errno_rule(denied, libc::EPERM, None)];
    syscalls.push(errno_rule(
        vec!["personality".into()],
        libc::EPERM,
        Some(personality_deny_args()),
    ));
    if !held(&[Capability::SysAdmin]) {
        // s390x swaps clone's first two arguments.
        let flags_index = if cfg!(target_arch = "s390x") { 1 } else { 0 };
        let args = CLONE_NAMESPACE_FLAGS
            .iter()
            .map(|f| masked_eq(flags_index, *f, *f))
            .collect();
        syscalls.push(errno_rule(vec!["clone".into()], libc::EPERM, Some(args)));
        syscalls.push(errno_rule(vec!["clone3".into()], libc::ENOSYS, None));
    }

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActAllow);
    profile.set_architectures(Some(native_architectures()));
    profile.set_syscalls(Some(syscalls));
    profile
}

/// Read and convert a Localhost profile (Docker/Kubernetes JSON format).
/// `field` names the CRI field the path came from, for errors.
pub fn load_localhost(path: &Path, field: &str, bounding: &Capabilities) -> Result<LinuxSeccomp, SpecError> {
    let fail = |what: String| invalid(field, format!("seccomp profile {}: {what}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PROFILE_SIZE + 1).read_to_end(&mut data))
        .map_err(|e| fail(format!("cannot read it: {e}")))?;
    if data.len() as u64 > MAX_PROFILE_SIZE {
        return Err(fail(format!("larger than {MAX_PROFILE_SIZE} bytes")));
    }
    convert_profile(&data, &Host::current(bounding)).map_err(fail)
}

/// Convert a profile in the Docker/Kubernetes JSON format for a container
/// with this bounding set on this host.
pub fn parse_profile(json: &[u8], bounding: &Capabilities) -> Result<LinuxSeccomp, String> {
    convert_profile(json, &Host::current(bounding))
}

/// What `includes`/`excludes` filters are evaluated against.
struct Host<'a> {
    caps: &'a Capabilities,
    /// Go's name for this architecture, as Docker profiles spell it.
    go_arch: &'static str,
    native: Arch,
    kernel: Option<(u32, u32)>,
}

impl<'a> Host<'a> {
    fn current(caps: &'a Capabilities) -> Self {
        let (go_arch, native) = if cfg!(target_arch = "x86_64") {
            ("amd64", Arch::ScmpArchX86_64)
        } else if cfg!(target_arch = "aarch64") {
            ("arm64", Arch::ScmpArchAarch64)
        } else if cfg!(target_arch = "s390x") {
            ("s390x", Arch::ScmpArchS390x)
        } else if cfg!(target_arch = "riscv64") {
            ("riscv64", Arch::ScmpArchRiscv64)
        } else {
            ("", Arch::ScmpArchNative)
        };
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|r| parse_kernel_version(r.trim()));
        Host {
            caps,
            go_arch,
            native,
            kernel,
        }
    }
}

/// "6.1.0-18-amd64" → (6, 1).
fn parse_kernel_version(s: &str) -> Option<(u32, u32)> {
    let mut parts = s.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    arch_map: Option<Vec<ArchMap>>,
    #[serde(default)]
    flags: Option<Vec<String>>,
    #[serde(default)]
    listener_path: Option<String>,
    #[serde(default)]
    listener_metadata: Option<String>,
    #[serde(default)]
    syscalls: Option<Vec<Rule>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    names: Option<Vec<String>>,
    /// The pre-`names` format: one syscall per rule.
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<Arg>>,
    #[serde(default)]
    includes: Option<Filter>,
    #[serde(default)]
    excludes: Option<Filter>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: usize,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Option<Vec<String>>,
    #[serde(default)]
    arches: Option<Vec<String>>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// Parse a libseccomp constant name with oci-spec's own spelling, so what
/// is accepted is exactly what the spec can carry.
fn constant<T: serde::de::DeserializeOwned>(kind: &str, name: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).map_err(|_| format!("unknown {kind} {name:?}"))
}

/// Parse a capability name as a profile's `includes.caps` spells it.
fn profile_cap(name: &str) -> Result<Capability, String> {
    super::spec::parse_capability(name).ok_or_else(|| format!("unknown capability {name:?}"))
}

impl Filter {
    /// Whether everything this `includes` asks for holds.
    fn all_hold(&self, host: &Host) -> Result<bool, String> {
        for c in self.caps.iter().flatten() {
            if !host.caps.contains(&profile_cap(c)?) {
                return Ok(false);
            }
        }
        if let Some(arches) = &self.arches {
            if !arches.is_empty() && !arches.iter().any(|a| a == host.go_arch) {
                return Ok(false);
            }
        }
        if let Some(min) = &self.min_kernel {
            let want = parse_kernel_version(min).ok_or_else(|| format!("bad minKernel {min:?}"))?;
            if host.kernel.is_some_and(|k| k < want) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether anything this `excludes` names holds.
    fn any_holds(&self, host: &Host) -> Result<bool, String> {
        for c in self.caps.iter().flatten() {
            if host.caps.contains(&profile_cap(c)?) {
                return Ok(true);
            }
        }
        if self.arches.iter().flatten().any(|a| a == host.go_arch) {
            return Ok(true);
        }
        if let Some(min) = &self.min_kernel {
            let want = parse_kernel_version(min).ok_or_else(|| format!("bad minKernel {min:?}"))?;
            if host.kernel.is_some_and(|k| k >= want) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn convert_profile(json: &[u8], host: &Host) -> Result<LinuxSeccomp, String> {
    let p: Profile = serde_json::from_slice(json).map_err(|e| format!("not a valid seccomp profile: {e}"))?;
    let mut out = LinuxSeccomp::default();
    out.set_default_action(constant("action", &p.default_action).map_err(|e| format!("defaultAction: {e}"))?);
    out.set_default_errno_ret(p.default_errno_ret);

    let arches = p.architectures.unwrap_or_default();
    let arch_map = p.arch_map.unwrap_or_default();
    if !arches.is_empty() && !arch_map.is_empty() {
        return Err("both architectures and archMap are set; use one".into());
    }
    let mut archs: Vec<Arch> = Vec::new();
    for a in &arches {
        archs.push(constant("architecture", a)?);
    }
    for m in &arch_map {
        let arch: Arch = constant("architecture", &m.architecture)?;
        if arch == host.native {
            archs.push(arch);
            for sub in m.sub_architectures.iter().flatten() {
                archs.push(constant("architecture", sub)?);
            }
        }
    }
    if !archs.is_empty() {
        out.set_architectures(Some(archs));
    }

    if let Some(flags) = p.flags.filter(|f| !f.is_empty()) {
        let flags: Result<Vec<LinuxSeccompFilterFlag>, String> = flags.iter().map(|f| constant("flag", f)).collect();
        out.set_flags(Some(flags?));
    }
    out.set_listener_path(p.listener_path.filter(|l| !l.is_empty()).map(Into::into));
    out.set_listener_metadata(p.listener_metadata.filter(|l| !l.is_empty()));

    let mut syscalls = Vec::new();
    for (i, r) in p.syscalls.unwrap_or_default().into_iter().enumerate() {
        let at = |e: String| format!("syscalls[{i}]: {e}");
        if let Some(inc) = &r.includes {
            if !inc.all_hold(host).map_err(at)? {
                continue;
            }
        }
        if let Some(exc) = &r.excludes {
            if exc.any_holds(host).map_err(at)? {
                continue;
            }
        }
        let mut names = r.names.unwrap_or_default();
        if let Some(n) = r.name.filter(|n| !n.is_empty()) {
            names.push(n);
        }
        if names.is_empty() || names.iter().any(|n| n.is_empty()) {
            return Err(at("a rule needs syscall names".into()));
        }
        let action: LinuxSeccompAction = constant("action", &r.action).map_err(at)?;
        let mut args = Vec::new();
        for (j, a) in r.args.unwrap_or_default().iter().enumerate() {
            let at = |e: String| format!("syscalls[{i}].args[{j}]: {e}");
            if a.index >= 6 {
                return Err(at(format!("argument index {} is out of range (0-5)", a.index)));
            }
            let op: LinuxSeccompOperator = constant("operator", &a.op).map_err(at)?;
            if op == LinuxSeccompOperator::ScmpCmpMaskedEq {
                // Docker/runc spelling: value is the mask.
                args.push(masked_eq(a.index, a.value, a.value_two));
            } else {
                args.push(seccomp_arg(
                    a.index,
                    op,
                    a.value,
                    (a.value_two != 0).then_some(a.value_two),
                ));
            }
        }
        let mut rule = LinuxSyscall::default();
        rule.set_names(names);
        rule.set_action(action);
        rule.set_errno_ret(r.errno_ret);
        rule.set_args((!args.is_empty()).then_some(args));
        syscalls.push(rule);
    }
    out.set_syscalls(Some(syscalls));
    Ok(out)
}

/// Every syscall name a profile denies unconditionally (no argument
/// filter) with a non-allow action. For tests and diagnostics.
pub fn unconditionally_denied(profile: &LinuxSeccomp) -> HashMap<String, LinuxSeccompAction> {
    let mut out = HashMap::new();
    for rule in profile.syscalls().iter().flatten() {
        if rule.action() != LinuxSeccompAction::ScmpActAllow && rule.args().as_ref().is_none_or(|a| a.is_empty()) {
            for n in rule.names() {
                out.insert(n.clone(), rule.action());
            }
        }
    }
    out
}

#[cfg(test)]
// The tests also cover the deprecated fields older kubelets send.
#[allow(deprecated)]
mod tests {
    use super::*;

    fn caps(list: &[Capability]) -> Capabilities {
        list.iter().copied().collect()
    }

    fn sc_with(seccomp: Option<cri::SecurityProfile>, path: &str) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            seccomp,
            seccomp_profile_path: path.into(),
            ..Default::default()
        }
    }

    fn profile(t: cri::security_profile::ProfileType, r: &str) -> Option<cri::SecurityProfile> {
        Some(cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        })
    }

    /// Evaluate a rule's ORed masked-equality conditions on a value, with
    /// libcontainer's reading of value/valueTwo.
    fn matches(args: &[LinuxSeccompArg], x: u64) -> bool {
        args.iter().any(|a| {
            assert_eq!(a.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
            x & a.value_two().unwrap() == a.value()
        })
    }

    fn rule<'a>(p: &'a LinuxSeccomp, name: &str) -> &'a LinuxSyscall {
        p.syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .find(|r| r.names().iter().any(|n| n == name))
            .unwrap_or_else(|| panic!("no rule for {name}"))
    }

    #[test]
    fn runtime_default_denies_the_dangerous_syscalls() {
        let p = runtime_default(&caps(&[Capability::Chown, Capability::NetBindService]));
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        let denied = unconditionally_denied(&p);
        for name in [
            "keyctl",
            "add_key",
            "mount",
            "umount2",
            "unshare",
            "setns",
            "ptrace",
            "bpf",
            "perf_event_open",
            "init_module",
            "reboot",
            "kexec_load",
            "io_uring_setup",
            "open_by_handle_at",
            "clone3",
            "userfaultfd",
            "syslog",
            "acct",
            "pivot_root",
            "fsopen",
            "move_mount",
        ] {
            assert!(denied.contains_key(name), "{name} should be denied");
        }
        for name in ["read", "clone", "personality", "write", "execve"] {
            assert!(!denied.contains_key(name), "{name} must not be denied outright");
        }
        assert_eq!(rule(&p, "keyctl").errno_ret(), Some(libc::EPERM as u32));
        assert_eq!(rule(&p, "clone3").errno_ret(), Some(libc::ENOSYS as u32));
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                p.architectures().as_deref(),
                Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
            );
        }
    }

    #[test]
    fn clone_namespace_flags_are_filtered() {
        let p = runtime_default(&Capabilities::new());
        let clone = rule(&p, "clone");
        assert_eq!(clone.action(), LinuxSeccompAction::ScmpActErrno);
        let args = clone.args().as_ref().unwrap();
        let index = if cfg!(target_arch = "s390x") { 1 } else { 0 };
        assert!(args.iter().all(|a| a.index() == index));
        for flag in CLONE_NAMESPACE_FLAGS {
            assert!(matches(args, flag | libc::SIGCHLD as u64), "{flag:#x}");
        }
        // A plain fork or a thread creation is untouched.
        assert!(!matches(args, libc::SIGCHLD as u64));
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        assert!(!matches(args, thread));
    }

    #[test]
    fn capabilities_lift_rules() {
        let p = runtime_default(&caps(&[Capability::SysAdmin]));
        let denied = unconditionally_denied(&p);
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "pivot_root",
            "bpf",
            "perf_event_open",
            "clone3",
        ] {
            assert!(!denied.contains_key(name), "{name} lifted by SYS_ADMIN");
        }
        assert!(p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .all(|r| !r.names().contains(&"clone".to_string())));
        assert!(denied.contains_key("keyctl") && denied.contains_key("ptrace"));

        let p = runtime_default(&caps(&[Capability::SysPtrace, Capability::SysTime, Capability::Bpf]));
        let denied = unconditionally_denied(&p);
        for name in [
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "settimeofday",
            "clock_settime",
            "bpf",
        ] {
            assert!(!denied.contains_key(name), "{name} lifted");
        }
        assert!(denied.contains_key("mount") && denied.contains_key("perf_event_open"));

        let p = runtime_default(&caps(&[
            Capability::SysModule,
            Capability::SysBoot,
            Capability::Syslog,
            Capability::SysNice,
            Capability::SysPacct,
            Capability::Perfmon,
        ]));
        let denied = unconditionally_denied(&p);
        for name in [
            "init_module",
            "finit_module",
            "delete_module",
            "reboot",
            "syslog",
            "mbind",
            "set_mempolicy",
            "get_mempolicy",
            "move_pages",
            "acct",
            "perf_event_open",
        ] {
            assert!(!denied.contains_key(name), "{name} lifted");
        }
    }

    #[test]
    fn personality_rule_denies_exactly_the_disallowed_values() {
        let args = personality_deny_args();
        assert_eq!(args.len(), 32);
        for v in PERSONALITY_ALLOWED {
            assert!(!matches(&args, v), "{v:#x} must be allowed");
        }
        // Exhaustive over the low 18 bits, then every value with one bit
        // set or one bit clear, then pseudo-random 32-bit values.
        let allowed = |x: u64| PERSONALITY_ALLOWED.contains(&(x & 0xffff_ffff));
        for x in 0..(1u64 << 18) {
            assert_eq!(matches(&args, x), !allowed(x), "{x:#x}");
        }
        for b in 0..32 {
            for x in [1u64 << b, 0xffff_ffff ^ (1 << b)] {
                assert_eq!(matches(&args, x), !allowed(x), "{x:#x}");
            }
        }
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let x = seed >> 32;
            assert_eq!(matches(&args, x), !allowed(x), "{x:#x}");
        }
        // The kernel only sees the low 32 bits; so does the filter.
        assert!(!matches(&args, 0x1_0000_0008));
        // ADDR_NO_RANDOMIZE and READ_IMPLIES_EXEC are refused.
        assert!(matches(&args, 0x0040000) && matches(&args, 0x0400000));
    }

    #[test]
    fn choice_reads_profile_and_deprecated_path() {
        use cri::security_profile::ProfileType as T;
        assert_eq!(choice(None).unwrap(), Choice::Unconfined);
        assert_eq!(
            choice(Some(&sc_with(profile(T::RuntimeDefault, ""), ""))).unwrap(),
            Choice::RuntimeDefault
        );
        assert_eq!(
            choice(Some(&sc_with(profile(T::Unconfined, ""), "runtime/default"))).unwrap(),
            Choice::Unconfined
        );
        assert_eq!(
            choice(Some(&sc_with(profile(T::Localhost, "/p.json"), ""))).unwrap(),
            Choice::Localhost {
                path: "/p.json".into(),
                field: "linux.security_context.seccomp.localhost_ref"
            }
        );
        for (path, want) in [
            ("", Choice::Unconfined),
            ("unconfined", Choice::Unconfined),
            ("runtime/default", Choice::RuntimeDefault),
            ("docker/default", Choice::RuntimeDefault),
        ] {
            assert_eq!(choice(Some(&sc_with(None, path))).unwrap(), want);
        }
        assert!(matches!(
            choice(Some(&sc_with(None, "localhost//etc/x.json"))).unwrap(),
            Choice::Localhost { ref path, field: "linux.security_context.seccomp_profile_path" } if path == "/etc/x.json"
        ));
        let err = choice(Some(&sc_with(None, "bogus"))).unwrap_err();
        assert!(
            matches!(err, SpecError::Invalid { ref field, .. } if field == "linux.security_context.seccomp_profile_path")
        );
        let bad_type = cri::SecurityProfile {
            profile_type: 9,
            localhost_ref: String::new(),
        };
        assert!(choice(Some(&sc_with(Some(bad_type), ""))).is_err());
    }

    #[test]
    fn localhost_relative_path_is_invalid() {
        use cri::security_profile::ProfileType as T;
        for sc in [
            sc_with(profile(T::Localhost, "profiles/audit.json"), ""),
            sc_with(profile(T::Localhost, ""), ""),
            sc_with(None, "localhost/profiles/audit.json"),
        ] {
            match for_container(Some(&sc), &Capabilities::new()).unwrap_err() {
                SpecError::Invalid { field, message } => {
                    assert!(field.starts_with("linux.security_context.seccomp"), "{field}");
                    assert!(message.contains("absolute"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn unconfined_and_privileged_get_no_filter() {
        use cri::security_profile::ProfileType as T;
        let none = Capabilities::new();
        assert!(for_container(None, &none).unwrap().is_none());
        assert!(for_container(Some(&sc_with(profile(T::Unconfined, ""), "")), &none)
            .unwrap()
            .is_none());
        let mut sc = sc_with(profile(T::RuntimeDefault, ""), "");
        assert!(for_container(Some(&sc), &none).unwrap().is_some());
        sc.privileged = true;
        assert!(for_container(Some(&sc), &none).unwrap().is_none());
    }

    const DOCKER_STYLE: &str = r#"{
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}
        ],
        "syscalls": [
            {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW", "args": null, "comment": ""},
            {"name": "getpid", "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
             "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["kexec_load"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
        ]
    }"#;

    #[test]
    fn docker_format_profile_converts() {
        let p = parse_profile(DOCKER_STYLE.as_bytes(), &Capabilities::new()).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                p.architectures().as_deref(),
                Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
            );
        }
        let rules = p.syscalls().as_ref().unwrap();
        assert_eq!(rules.len(), 5, "the SYS_ADMIN-only mount rule is dropped");
        assert_eq!(rules[0].names(), &["read", "write", "exit_group"]);
        assert!(rules[0].args().is_none());
        assert_eq!(rules[1].names(), &["getpid"]);
        // Docker's mask (value) becomes libcontainer's valueTwo.
        let clone = &rules[2].args().as_ref().unwrap()[0];
        assert_eq!(clone.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(clone.value_two(), Some(2114060288));
        assert_eq!(clone.value(), 0);
        let pers = &rules[3].args().as_ref().unwrap()[0];
        assert_eq!(
            (pers.op(), pers.value(), pers.value_two()),
            (LinuxSeccompOperator::ScmpCmpEq, 8, None)
        );
        assert_eq!(rules[4].errno_ret(), Some(38));

        // With SYS_ADMIN the clone filter goes and mount comes in.
        let p = parse_profile(DOCKER_STYLE.as_bytes(), &caps(&[Capability::SysAdmin])).unwrap();
        let names: Vec<_> = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .flat_map(|r| r.names().clone())
            .collect();
        assert!(names.contains(&"mount".to_string()) && !names.contains(&"clone".to_string()));

        // The converted profile is a valid OCI document.
        let json = serde_json::to_string(&p).unwrap();
        let back: LinuxSeccomp = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn profile_errors_are_specific() {
        let none = Capabilities::new();
        let cases = [
            (r#"{"defaultAction": "SCMP_ACT_NOPE"}"#, "unknown action"),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "BAD"}]}"#,
                "syscalls[0]",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LIKE"}]}]}"#,
                "unknown operator",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
                "out of range",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}"#,
                "architecture",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"],
                    "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}"#,
                "archMap",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}"#,
                "names",
            ),
            (r#"not json"#, "not a valid seccomp profile"),
        ];
        for (json, want) in cases {
            let err = parse_profile(json.as_bytes(), &none).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    #[test]
    fn localhost_profile_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profile.json");
        std::fs::write(&path, DOCKER_STYLE).unwrap();
        let sc = sc_with(
            Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::Localhost as i32,
                localhost_ref: path.display().to_string(),
            }),
            "",
        );
        let p = for_container(Some(&sc), &Capabilities::new()).unwrap().unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);

        // Missing file: the field and the path are named.
        let missing = dir.path().join("missing.json");
        let err = load_localhost(
            &missing,
            "linux.security_context.seccomp.localhost_ref",
            &Capabilities::new(),
        );
        match err.unwrap_err() {
            SpecError::Invalid { field, message } => {
                assert_eq!(field, "linux.security_context.seccomp.localhost_ref");
                assert!(message.contains("missing.json"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // A directory and an oversized file are refused.
        assert!(load_localhost(dir.path(), "f", &Capabilities::new()).is_err());
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; MAX_PROFILE_SIZE as usize + 1]).unwrap();
        let err = load_localhost(&big, "f", &Capabilities::new()).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(parse_kernel_version("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel_version("5"), Some((5, 0)));
        assert_eq!(parse_kernel_version("x"), None);
    }

    #[test]
    fn includes_min_kernel_and_arches() {
        let none = Capabilities::new();
        let host = Host {
            caps: &none,
            go_arch: "amd64",
            native: Arch::ScmpArchX86_64,
            kernel: Some((5, 4)),
        };
        let json = r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["a"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
            {"names": ["b"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "6.2"}},
            {"names": ["c"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
            {"names": ["d"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
            {"names": ["e"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["amd64"]}},
            {"names": ["f"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "5.0"}}
        ]}"#;
        let p = convert_profile(json.as_bytes(), &host).unwrap();
        let names: Vec<_> = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .flat_map(|r| r.names().clone())
            .collect();
        assert_eq!(names, vec!["a", "d"]);
    }

    /// When run as the probe child (see below), load the filter named by
    /// the environment through libcontainer and report how syscalls fare.
    #[test]
    fn seccomp_probe_child() {
        let Ok(kind) = std::env::var("NODELET_SECCOMP_PROBE") else {
            return;
        };
        let profile = match kind.as_str() {
            "default" => runtime_default(&Capabilities::new()),
            "docker" => {
                let json = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                    {"names": ["getpgid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 33,
                     "args": [{"index": 0, "value": 65280, "valueTwo": 256, "op": "SCMP_CMP_MASKED_EQ"}]}
                ]}"#;
                parse_profile(json.as_bytes(), &Capabilities::new()).unwrap()
            }
            _ => return,
        };
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) only sets a flag on this thread.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        libcontainer::seccomp::initialize_seccomp(&profile).expect("filter loads");
        // Read errno right after each call, before anything else can set it.
        let errno = |r: libc::c_long| {
            if r == -1 {
                std::io::Error::last_os_error().raw_os_error().unwrap()
            } else {
                0
            }
        };
        let mut report = Vec::new();
        if kind == "default" {
            // SAFETY: personality() only changes this process's execution
            // domain; 0xffffffff merely queries it and 0x0040000 would set
            // ADDR_NO_RANDOMIZE, harmless for a process that exits soon.
            let query = errno(unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu64) });
            // SAFETY: as above.
            let no_aslr = errno(unsafe { libc::syscall(libc::SYS_personality, 0x0040000u64) });
            // SAFETY: keyctl with an invalid operation number touches nothing.
            let keyctl = errno(unsafe { libc::syscall(libc::SYS_keyctl, 9999, 0, 0, 0, 0) });
            // SAFETY: a raw fork-style clone; should it ever succeed, the
            // child exits at once without touching shared state.
            let clone = errno(unsafe {
                let r = libc::syscall(
                    libc::SYS_clone,
                    (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
                    0,
                    0,
                    0,
                    0,
                );
                if r == 0 {
                    libc::_exit(0);
                }
                r
            });
            // SAFETY: clone3 with a null argument only validates it.
            let clone3 = errno(unsafe { libc::syscall(libc::SYS_clone3, 0, 0) });
            report.push(format!("personality_query={}", query));
            report.push(format!("personality_no_aslr={}", no_aslr));
            report.push(format!("keyctl={}", keyctl));
            report.push(format!("clone_newuser={}", clone));
            report.push(format!("clone3={}", clone3));
        } else {
            // SAFETY: getpgid only reads process state.
            let hit = errno(unsafe { libc::syscall(libc::SYS_getpgid, 0x0100) });
            // SAFETY: as above.
            let miss = errno(unsafe { libc::syscall(libc::SYS_getpgid, 0x0200) });
            report.push(format!("getpgid_256={}", hit));
            report.push(format!("getpgid_512={}", miss));
        }
        println!("PROBE {}", report.join(" "));
    }

    fn run_probe(kind: &str) -> String {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "runtime::seccomp::tests::seccomp_probe_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NODELET_SECCOMP_PROBE", kind)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "probe failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .find_map(|l| l.split_once("PROBE ").map(|(_, r)| r.to_string()))
            .unwrap_or_else(|| panic!("no probe report in {stdout}"))
    }

    /// Load the generated filters into a real kernel through libcontainer
    /// (in a child test process, since a filter cannot be removed) and
    /// check what they do, which pins libcontainer's reading of
    /// `value`/`valueTwo` for masked comparisons.
    #[test]
    fn loaded_filter_behaves_in_a_child_process() {
        if std::env::var("NODELET_SECCOMP_PROBE").is_ok() {
            return;
        }
        let report = run_probe("default");
        let field = |k: &str| -> i32 {
            report
                .split(' ')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")).map(|v| v.parse().unwrap()))
                .unwrap()
        };
        assert_eq!(field("personality_query"), 0, "{report}");
        assert_eq!(field("personality_no_aslr"), libc::EPERM, "{report}");
        assert_eq!(field("keyctl"), libc::EPERM, "{report}");
        assert_eq!(field("clone_newuser"), libc::EPERM, "{report}");
        assert_eq!(field("clone3"), libc::ENOSYS, "{report}");

        let report = run_probe("docker");
        // Docker's {value: mask 0xff00, valueTwo: datum 0x100}: pid 256
        // matches and gets EDOM; pid 512 does not (ESRCH or found).
        assert!(report.contains(&format!("getpgid_256={}", libc::EDOM)), "{report}");
        assert!(!report.contains(&format!("getpgid_512={}", libc::EDOM)), "{report}");
    }
}
