//! The pod's infra process: `nodelet infra <pod state dir>`.
//!
//! The daemon re-executes its own binary in this small single-threaded
//! mode, once per pod. The process
//! - joins the pod's cgroup and unshares the pod's network, IPC, UTS (and,
//!   for PID mode POD, PID) namespaces, holding them for the pod's
//!   lifetime, so no pause image is ever pulled;
//! - brings loopback up, sets the hostname and the pod's sysctls;
//! - is the child subreaper of the pod's containers: it starts them with
//!   libcontainer (in a short-lived forked child, see `launch.rs`), owns
//!   their stdio, writes their CRI log files, reaps them and records their
//!   exit codes in `status.json`;
//! - keeps doing all of that while the daemon is down or restarting.
//!
//! With a user namespace of the pod's own (`hostUsers: false`) the
//! network, IPC and UTS namespaces are made by a holder child inside that
//! user namespace and joined (`userns_holder.rs`); the infra keeps its
//! host privileges.
//!
//! Start-up handshake on stdout: `PID <host pid>` from the first process
//! (which forks, so the infra can be PID 1 of a new PID namespace, and
//! exits), then `READY` or `ERROR <why>` from the infra itself.

pub mod log;
pub mod protocol;

pub mod userns_holder;

mod launch;
mod supervisor;

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::ExitCode;

use nix::sched::CloneFlags;
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::unistd::ForkResult;

use protocol::InfraConfig;

/// The control socket's name in the pod's state directory.
pub const SOCKET: &str = "infra.sock";
/// The set-up file's name in the pod's state directory.
pub const CONFIG: &str = "infra.json";
/// The infra's own diagnostics.
pub const LOG: &str = "infra.log";

/// Entry point of `nodelet infra DIR`. Must run before any thread exists.
pub fn main(dir: &Path) -> ExitCode {
    match setup(dir) {
        Ok(listener) => {
            let code = supervisor::run(dir, listener);
            ExitCode::from(code)
        }
        Err(e) => {
            say(&format!("ERROR {e}\n"));
            ExitCode::FAILURE
        }
    }
}

/// Write a handshake line to stdout, unbuffered (we fork around it).
fn say(line: &str) {
    // SAFETY: fd 1 is our stdout for the whole call; ManuallyDrop keeps the
    // File from closing it.
    let mut out = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
    let _ = out.write_all(line.as_bytes());
}

fn setup(dir: &Path) -> Result<UnixListener, String> {
    let cfg_path = dir.join(CONFIG);
    let cfg: InfraConfig =
        serde_json::from_slice(&std::fs::read(&cfg_path).map_err(|e| format!("read {}: {e}", cfg_path.display()))?)
            .map_err(|e| format!("parse {}: {e}", cfg_path.display()))?;

    // Leave the daemon's session so its signals and its death do not reach
    // the pod.
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    // SAFETY: installing SIG_IGN for SIGPIPE is async-signal-safe and we
    // are single-threaded; a closed pipe must give EPIPE, not kill the pod.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) }.map_err(|e| format!("ignore SIGPIPE: {e}"))?;

    for procs in &cfg.cgroup_procs {
        std::fs::write(procs, b"0").map_err(|e| format!("join cgroup {}: {e}", procs.display()))?;
    }

    let mut flags = CloneFlags::empty();
    if cfg.new_net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if cfg.new_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if cfg.new_uts {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    // With a user namespace of the pod's own, the holder creates the
    // network, IPC and UTS namespaces (below), so that the pod's user
    // namespace owns them.
    let holder_flags = if cfg.userns.is_some() {
        std::mem::replace(&mut flags, CloneFlags::empty())
    } else {
        CloneFlags::empty()
    };
    if cfg.new_pid {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    nix::sched::unshare(flags).map_err(|e| format!("unshare namespaces: {e}"))?;

    // SAFETY: this process is single-threaded (nothing has spawned a
    // thread yet), so the child may run arbitrary code after fork.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => {
            say(&format!("PID {child}\n"));
            // SAFETY: _exit skips destructors and atexit handlers the child
            // now owns copies of; nothing of ours needs flushing.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Child => {}
    }

    // The infra proper: PID 1 of the pod's PID namespace when it has one.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(format!("PR_SET_CHILD_SUBREAPER: {}", std::io::Error::last_os_error()));
    }
    let name = CString::new("nodelet-infra").expect("static name");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string that outlives the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
    // Like the pause container: the last process of the pod the OOM killer
    // picks. Without CAP_SYS_RESOURCE a negative value is refused; that is
    // fine.
    let _ = std::fs::write("/proc/self/oom_score_adj", b"-998");

    if let Some(range) = cfg.userns {
        join_pod_userns(dir, range, holder_flags)?;
    }

    if cfg.new_net {
        loopback_up().map_err(|e| format!("bring loopback up: {e}"))?;
    }
    if cfg.new_uts && !cfg.hostname.is_empty() {
        nix::unistd::sethostname(&cfg.hostname).map_err(|e| format!("sethostname {:?}: {e}", cfg.hostname))?;
    }
    for (key, value) in &cfg.sysctls {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value.as_bytes()).map_err(|e| format!("sysctl {key}={value}: {e}"))?;
    }

    // Bind by a relative name from inside the directory: sun_path holds
    // only 108 bytes and state directories can be long. We are the only
    // thread, so changing directory affects nothing else.
    std::env::set_current_dir(dir).map_err(|e| format!("chdir {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(SOCKET);
    let listener = UnixListener::bind(SOCKET).map_err(|e| format!("listen on {}/{SOCKET}: {e}", dir.display()))?;
    std::fs::set_permissions(SOCKET, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| format!("chmod {SOCKET}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("nonblocking listener: {e}"))?;

    say("READY\n");
    // From now on stdout/stderr go to the pod's infra log; the daemon's
    // pipe is closed so it sees EOF.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(LOG))
        .map_err(|e| format!("open infra log: {e}"))?;
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?;
    for (from, to) in [(null.as_raw_fd(), 0), (log.as_raw_fd(), 1), (log.as_raw_fd(), 2)] {
        nix::unistd::dup2(from, to).map_err(|e| format!("dup2: {e}"))?;
    }
    Ok(listener)
}

/// Start the pod's user namespace holder (it dies with us), join the
/// namespaces it made (`flags`: network, IPC, UTS) and pin its user
/// namespace at `<dir>/ns/user` for container specs and idmapped mounts.
/// The infra itself stays in the host's user namespace.
fn join_pod_userns(dir: &Path, range: crate::runtime::userns::IdRange, flags: CloneFlags) -> Result<(), String> {
    let holder = userns_holder::Holder::start(range, Some(flags))?;
    let pid = holder.pid();
    for (flag, name) in [
        (CloneFlags::CLONE_NEWNET, "net"),
        (CloneFlags::CLONE_NEWIPC, "ipc"),
        (CloneFlags::CLONE_NEWUTS, "uts"),
    ] {
        if flags.contains(flag) {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/{name}"))
                .map_err(|e| format!("open the pod's {name} namespace: {e}"))?;
            nix::sched::setns(ns, flag).map_err(|e| format!("join the pod's {name} namespace: {e}"))?;
        }
    }
    let ns_dir = dir.join("ns");
    std::fs::create_dir_all(&ns_dir).map_err(|e| format!("create {}: {e}", ns_dir.display()))?;
    crate::runtime::mounts::bind_file(Path::new(&format!("/proc/{pid}/ns/user")), &ns_dir.join("user"))
        .map_err(|e| format!("pin the pod's user namespace: {e}"))?;
    holder.keep();
    Ok(())
}

/// `ip link set lo up` with two ioctls: no netlink, no extra thread.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifr_flags in `req`,
    // which lives across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ifr_ifru is a union; SIOCGIFFLAGS filled its flags member.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `TIOCSWINSZ` on a pty master: the terminal's foreground process gets
/// SIGWINCH. Used by the infra (attach) and the daemon (exec).
pub fn resize_pty(fd: std::os::fd::RawFd, width: u16, height: u16) {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize that lives across the call; a bad
    // descriptor only makes it fail.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// The namespaced sysctls a pod may set (as the kubelet defines them):
/// `kernel.shm*`, `kernel.msg*`, `kernel.sem` and `fs.mqueue.*` follow the
/// IPC namespace; `net.*` the network namespace.
pub fn sysctl_namespace(key: &str) -> Option<&'static str> {
    if key.starts_with("net.") {
        Some("network")
    } else if key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key == "kernel.sem"
        || key.starts_with("fs.mqueue.")
    {
        Some("ipc")
    } else {
        None
    }
}
