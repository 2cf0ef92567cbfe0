//! Starting containers and exec'd processes with libcontainer, in a child
//! forked from the single-threaded infra process.
//!
//! Forking (without exec) is safe here because the infra has one thread;
//! doing the work in a child keeps libcontainer's code and allocations out
//! of the long-lived infra (its resident memory stays small) and lets the
//! infra's event loop keep serving logs while a container starts. The
//! container's init (and an exec'd process) is a child of this helper;
//! when the helper exits it is re-parented to the infra, the pod's child
//! subreaper, which reaps it.
//!
//! The helper reports on a `SOCK_SEQPACKET` pair: `OK <pid>` (with the pty
//! master attached for a tty container) or `ERR <message>`. The PID is in
//! the infra's PID namespace (the pod's, in PID mode POD); the infra
//! translates it to the host's for the daemon (`host_pid`).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::unistd::{ForkResult, Pid};

/// The container's stdio as the infra prepared it.
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

pub enum Job {
    /// Create and start a container's init.
    Init { id: String, bundle: PathBuf, tty: bool },
    /// Run a process (an OCI `process` JSON) in a running container, in its
    /// own sub-cgroup so the whole tree can be killed.
    Exec {
        id: String,
        process: PathBuf,
        sub_cgroup: String,
        /// The container's bundle: its seccomp profile applies to the exec.
        bundle: PathBuf,
        /// Give the process a new pty (the process JSON says `terminal`);
        /// its master is reported back like a tty container's.
        tty: bool,
    },
}

/// What the helper reported.
pub enum Outcome {
    Started { pid: i32, pty: Option<OwnedFd> },
    Failed(String),
}

/// Fork the helper. Returns its pid and the infra's end of the report
/// socket. `pod_proc`: the infra is in the pod's own PID namespace, so the
/// helper mounts a procfs of that namespace over `/proc` in a private
/// mount namespace: libcontainer looks processes up as `/proc/<pid>` with
/// PIDs of its own namespace, which the host's procfs would resolve to
/// other processes.
pub fn spawn(job: Job, runtime_root: &Path, stdio: Stdio, pod_proc: bool) -> Result<(Pid, OwnedFd), String> {
    let (ours, theirs) = socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| format!("socketpair: {e}"))?;
    // SAFETY: the infra is single-threaded, so the child may run any code.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => {
            drop(theirs);
            drop(stdio);
            Ok((child, ours))
        }
        ForkResult::Child => {
            drop(ours);
            // libcontainer reports the cause of a failure through `tracing`;
            // send it to the pod's infra log (our stderr).
            let _ = tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_max_level(tracing::Level::ERROR)
                .try_init();
            let (text, fd) = match prepare_child(pod_proc).and_then(|()| run(job, runtime_root, stdio)) {
                Ok((pid, pty)) => (format!("OK {pid}"), pty),
                Err(e) => (format!("ERR {e}"), None),
            };
            let _ = send(theirs.as_raw_fd(), text.as_bytes(), fd.as_ref().map(|f| f.as_raw_fd()));
            // SAFETY: leave without running the infra's destructors or
            // atexit handlers in this copy of its memory.
            unsafe { libc::_exit(0) }
        }
    }
}

/// Undo what the infra set for itself that a container must not inherit
/// (blocked signals, an ignored SIGPIPE) and give libcontainer a procfs of
/// our PID namespace.
fn prepare_child(pod_proc: bool) -> Result<(), String> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    SigSet::empty()
        .thread_set_mask()
        .map_err(|e| format!("unblock signals: {e}"))?;
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: restoring the default disposition; we are single-threaded.
    unsafe { sigaction(Signal::SIGPIPE, &default) }.map_err(|e| format!("reset SIGPIPE: {e}"))?;
    if pod_proc {
        use nix::mount::{mount, MsFlags};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(|e| format!("unshare mount namespace: {e}"))?;
        // Private first, or the new /proc would propagate to the host's.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| format!("make mounts private: {e}"))?;
        mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| format!("mount the pod's procfs: {e}"))?;
    }
    Ok(())
}

/// The host's PID of a process we see as `pid`: a pidfd's fdinfo reports
/// it in the PID namespace of the procfs it is read from, and the infra's
/// `/proc` is the host's.
pub fn host_pid(pid: i32) -> Result<i32, String> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return Err(format!("pidfd_open({pid}): {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the syscall just returned this descriptor; we own it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", owned.as_raw_fd()))
        .map_err(|e| format!("read pidfd fdinfo: {e}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Pid in pidfd fdinfo for {pid}"))
}

fn run(job: Job, runtime_root: &Path, stdio: Stdio) -> Result<(i32, Option<OwnedFd>), String> {
    match job {
        Job::Init { id, bundle, tty } => {
            let mut builder = ContainerBuilder::new(id.clone(), SyscallType::default())
                .with_root_path(runtime_root)
                .map_err(|e| format!("runtime root: {e}"))?;
            builder = with_stdio(builder, stdio);
            let console = if tty {
                // Bind with a short relative name: sun_path is 108 bytes and
                // the runtime root can be long. We are the only thread, so
                // changing directory is harmless.
                std::env::set_current_dir(runtime_root).map_err(|e| format!("chdir: {e}"))?;
                let name = format!("console-{}.sock", &id[..id.len().min(12)]);
                let _ = std::fs::remove_file(&name);
                let listener = UnixListener::bind(&name).map_err(|e| format!("console socket: {e}"))?;
                let path = runtime_root.join(&name);
                builder = builder.with_console_socket(Some(&path));
                Some((listener, path))
            } else {
                None
            };
            let mut container = builder
                .as_init(&bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| format!("create: {e}"))?;
            container.start().map_err(|e| format!("start: {e}"))?;
            let pid = container.pid().ok_or("the started container has no pid")?.as_raw();
            let pty = match console {
                Some((listener, path)) => {
                    let master = receive_pty(&listener);
                    let _ = std::fs::remove_file(path);
                    Some(master?)
                }
                None => None,
            };
            Ok((pid, pty))
        }
        Job::Exec {
            id,
            process,
            sub_cgroup,
            bundle,
            tty,
        } => {
            let spec: oci_spec::runtime::Spec = serde_json::from_slice(
                &std::fs::read(bundle.join("config.json")).map_err(|e| format!("read the container's spec: {e}"))?,
            )
            .map_err(|e| format!("parse the container's spec: {e}"))?;
            let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
            let mut builder = ContainerBuilder::new(id, SyscallType::default())
                .with_root_path(runtime_root)
                .map_err(|e| format!("runtime root: {e}"))?
                .with_executor(ExecWithSeccomp { seccomp });
            let console = if tty {
                // As for a tty container, with a name unique to this helper
                // (several execs of one container may start at once).
                std::env::set_current_dir(runtime_root).map_err(|e| format!("chdir: {e}"))?;
                let name = format!("exec-console-{}.sock", std::process::id());
                let _ = std::fs::remove_file(&name);
                let listener = UnixListener::bind(&name).map_err(|e| format!("console socket: {e}"))?;
                let path = runtime_root.join(&name);
                builder = builder.with_console_socket(Some(&path));
                Some((listener, path))
            } else {
                None
            };
            let built = with_stdio(builder, stdio)
                .as_tenant()
                .with_process(Some(&process))
                .with_sub_cgroup(Some(sub_cgroup))
                .with_detach(true)
                .build()
                .map_err(|e| format!("exec: {e}"));
            let pty = match console {
                Some((listener, path)) => {
                    let master = built.as_ref().ok().map(|_| receive_pty(&listener));
                    let _ = std::fs::remove_file(path);
                    master.transpose()?
                }
                None => None,
            };
            Ok((built?.as_raw(), pty))
        }
    }
}

/// libcontainer 0.7's exec (tenant) rebuilds the spec's `linux` section
/// without the container's seccomp profile, so an exec'd process would run
/// unfiltered. This executor loads the container's profile as the last step
/// before `execve`. Capabilities are already dropped by then, so the kernel
/// requires no_new_privs to load a filter: exec'd processes of a container
/// with a seccomp profile always run with no_new_privs (stricter than
/// runc, never looser).
#[derive(Clone)]
struct ExecWithSeccomp {
    seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
}

impl libcontainer::workload::Executor for ExecWithSeccomp {
    fn exec(&self, spec: &oci_spec::runtime::Spec) -> Result<(), libcontainer::workload::ExecutorError> {
        use libcontainer::workload::ExecutorError;
        if let Some(profile) = &self.seccomp {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(ExecutorError::Other(format!(
                    "no_new_privs: {}",
                    std::io::Error::last_os_error()
                )));
            }
            libcontainer::seccomp::initialize_seccomp(profile)
                .map_err(|e| ExecutorError::Other(format!("load the container's seccomp profile: {e}")))?;
        }
        libcontainer::workload::default::DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &oci_spec::runtime::Spec) -> Result<(), libcontainer::workload::ExecutorValidationError> {
        libcontainer::workload::default::DefaultExecutor {}.validate(spec)
    }
}

fn with_stdio(mut b: ContainerBuilder, stdio: Stdio) -> ContainerBuilder {
    if let Some(fd) = stdio.stdin {
        b = b.with_stdin(fd);
    }
    if let Some(fd) = stdio.stdout {
        b = b.with_stdout(fd);
    }
    if let Some(fd) = stdio.stderr {
        b = b.with_stderr(fd);
    }
    b
}

/// The container sends its pty master over the console socket.
fn receive_pty(listener: &UnixListener) -> Result<OwnedFd, String> {
    let (conn, _) = listener.accept().map_err(|e| format!("console accept: {e}"))?;
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = socket::recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| format!("console recvmsg: {e}"))?;
    for c in msg.cmsgs().map_err(|e| format!("console cmsg: {e}"))? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: SCM_RIGHTS just installed this descriptor in our
                // table; nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err("the container sent no pty".into())
}

fn send(sock: RawFd, text: &[u8], fd: Option<RawFd>) -> nix::Result<usize> {
    let iov = [IoSlice::new(text)];
    match fd {
        Some(fd) => {
            let fds = [fd];
            socket::sendmsg::<()>(sock, &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
        }
        None => socket::sendmsg::<()>(sock, &iov, &[], MsgFlags::empty(), None),
    }
}

/// Read the helper's report (non-blocking socket, called when readable).
pub fn read_outcome(sock: &OwnedFd) -> Option<Outcome> {
    let mut buf = [0u8; 8192];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = match socket::recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
        Ok(m) => m,
        Err(nix::errno::Errno::EAGAIN) => return None,
        Err(e) => return Some(Outcome::Failed(format!("reading the start helper's report: {e}"))),
    };
    let mut pty = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: SCM_RIGHTS installed these descriptors for us.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    if pty.is_none() {
                        pty = Some(owned);
                    }
                }
            }
        }
    }
    let n = msg.bytes;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    if n == 0 {
        return Some(Outcome::Failed("the start helper died without a report".into()));
    }
    Some(match text.split_once(' ') {
        Some(("OK", pid)) => match pid.trim().parse() {
            Ok(pid) => Outcome::Started { pid, pty },
            Err(_) => Outcome::Failed(format!("bad helper report {text:?}")),
        },
        Some(("ERR", why)) => Outcome::Failed(why.to_string()),
        _ => Outcome::Failed(format!("bad helper report {text:?}")),
    })
}
