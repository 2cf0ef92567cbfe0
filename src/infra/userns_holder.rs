//! The holder of a pod's user namespace.
//!
//! The infra must keep its privileges on the host (it makes cgroups and
//! mounts through libcontainer and writes host log files), so it stays in
//! the initial user namespace. A small child forked from it (single
//! threaded: safe) creates the pod's user namespace instead; the infra,
//! root of the parent namespace, writes its ID maps; then the child
//! unshares the pod's network, IPC and UTS namespaces, which the pod's user
//! namespace thus owns (containers can mount `/sys`, `/dev/mqueue` in
//! them and are root there), and sleeps until the infra dies
//! (`PR_SET_PDEATHSIG`). The infra joins those namespaces with `setns`.
//!
//! Also used (with no other namespaces) by `nodelet userns-probe`.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Pid};

use crate::runtime::userns::IdRange;

pub struct Holder {
    pid: Pid,
    /// Kill and reap the holder when dropped (the probe); the infra keeps
    /// its holder for the pod's life (`keep`).
    kill_on_drop: bool,
}

impl Holder {
    /// Fork the holder and map `range` in its new user namespace; with
    /// `flags`, it then unshares those namespaces too (owned by the new
    /// user namespace). Only call from a single-threaded process.
    pub fn start(range: IdRange, flags: Option<CloneFlags>) -> Result<Holder, String> {
        let (from_child_r, from_child_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
        let (to_child_r, to_child_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
        let parent = Pid::this();
        // SAFETY: the callers (the infra, the probe) are single-threaded, so
        // the child may run any code.
        match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork the user namespace holder: {e}"))? {
            ForkResult::Child => {
                drop(from_child_r);
                drop(to_child_w);
                holder_main(parent, flags, from_child_w, to_child_r)
            }
            ForkResult::Parent { child } => {
                drop(from_child_w);
                drop(to_child_r);
                let holder = Holder {
                    pid: child,
                    kill_on_drop: true,
                };
                let mut from_child = std::fs::File::from(from_child_r);
                let mut to_child = std::fs::File::from(to_child_w);
                expect_ok(&mut from_child, "create the pod's user namespace")?;
                for file in ["uid_map", "gid_map"] {
                    std::fs::write(format!("/proc/{child}/{file}"), range.map_line())
                        .map_err(|e| format!("write the holder's {file}: {e}"))?;
                }
                to_child
                    .write_all(b"1")
                    .map_err(|e| format!("wake the user namespace holder: {e}"))?;
                if flags.is_some() {
                    expect_ok(&mut from_child, "create the pod's namespaces in its user namespace")?;
                }
                Ok(holder)
            }
        }
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Leave the holder running: it dies with this process.
    pub fn keep(mut self) -> Pid {
        self.kill_on_drop = false;
        self.pid
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if self.kill_on_drop {
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(self.pid, None);
        }
    }
}

/// Read the child's one-line report: `1` or `E<why>`.
fn expect_ok(from_child: &mut std::fs::File, what: &str) -> Result<(), String> {
    let mut b = [0u8; 1];
    match from_child.read(&mut b) {
        Ok(1) if b[0] == b'1' => Ok(()),
        Ok(1) => {
            let mut why = String::new();
            let _ = from_child.read_to_string(&mut why);
            Err(format!("{what}: {why}"))
        }
        Ok(_) => Err(format!("{what}: the holder exited")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

fn holder_main(parent: Pid, flags: Option<CloneFlags>, report: OwnedFd, wake: OwnedFd) -> ! {
    let mut report = std::fs::File::from(report);
    let mut wake = std::fs::File::from(wake);
    let fail = |report: &mut std::fs::File, why: String| -> ! {
        let _ = report.write_all(format!("E{why}").as_bytes());
        // SAFETY: leave without running the parent's destructors in this copy.
        unsafe { libc::_exit(1) }
    };
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        fail(
            &mut report,
            format!("PR_SET_PDEATHSIG: {}", std::io::Error::last_os_error()),
        );
    }
    if nix::unistd::getppid() != parent {
        // SAFETY: as above.
        unsafe { libc::_exit(1) }
    }
    let name = c"nodelet-userns";
    // SAFETY: PR_SET_NAME reads a NUL-terminated string that outlives the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWUSER) {
        fail(&mut report, format!("unshare(CLONE_NEWUSER): {e}"));
    }
    let _ = report.write_all(b"1");
    let mut b = [0u8; 1];
    if !matches!(wake.read(&mut b), Ok(1)) {
        // SAFETY: as above.
        unsafe { libc::_exit(1) }
    }
    if let Some(flags) = flags {
        if let Err(e) = nix::sched::unshare(flags) {
            fail(&mut report, format!("unshare the pod's namespaces: {e}"));
        }
        let _ = report.write_all(b"1");
    }
    drop(report);
    drop(wake);
    // The descriptors inherited from the infra (its handshake pipe on
    // stdout included) would keep its pipes and sockets open.
    // SAFETY: close_range with integer arguments only.
    unsafe { libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) };
    loop {
        // SAFETY: pause has no arguments; it returns when a signal arrives.
        unsafe { libc::pause() };
    }
}
