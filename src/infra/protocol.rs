//! What the daemon and a pod's infra process say to each other: one JSON
//! request line per connection on the pod's `infra.sock`, one JSON
//! response line back. One connection per request keeps long waits (a
//! container's exit, an exec) from blocking other requests.
//!
//! Two requests keep their connection open for streaming:
//! - `ExecStream` carries the process's stdio as descriptors (SCM_RIGHTS on
//!   the request): the infra answers `ExecStarted` (with the pty master
//!   attached for a tty exec), then `ExecExited`. The daemon closing the
//!   connection first kills the exec's process tree.
//! - `Attach` is answered with `Attached`, then both sides exchange binary
//!   frames `[kind u8][length u32 BE][payload]` (see `AttachFrame`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How the infra process sets the pod up (written by the daemon to
/// `infra.json` in the pod's state directory before it starts the infra).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InfraConfig {
    pub pod_id: String,
    /// New network namespace (not hostNetwork). Loopback is brought up.
    pub new_net: bool,
    /// New IPC namespace (not hostIPC).
    pub new_ipc: bool,
    /// New UTS namespace (follows the network: not hostNetwork).
    pub new_uts: bool,
    /// New PID namespace with the infra as its PID 1 (PID mode POD).
    pub new_pid: bool,
    pub hostname: String,
    /// Namespaced sysctls, already validated by the daemon.
    pub sysctls: BTreeMap<String, String>,
    /// `cgroup.procs` files the infra joins before forking (the pod's
    /// cgroup in every hierarchy), so it and its containers count there.
    pub cgroup_procs: Vec<PathBuf>,
    /// libcontainer's state root for this pod's containers.
    pub runtime_root: PathBuf,
    /// The pod's own user namespace (`hostUsers: false`): its host ID
    /// range. The network, IPC and UTS namespaces are then created by a
    /// holder process inside it (see `userns_holder.rs`) and its user
    /// namespace is pinned at `ns/user`.
    #[serde(default)]
    pub userns: Option<crate::runtime::userns::IdRange>,
}

/// One container's stdio wiring and where its status goes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StartSpec {
    pub id: String,
    /// OCI bundle (holds `config.json`).
    pub bundle: PathBuf,
    /// CRI log file; none: output is discarded.
    pub log_path: Option<PathBuf>,
    pub tty: bool,
    pub stdin: bool,
    pub stdin_once: bool,
    /// Where the infra records pid, start, exit (`status.json`).
    pub status_path: PathBuf,
    /// The container's cgroup directories, read at exit for OOM kills.
    pub cgroup_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create and start a container with libcontainer.
    Start(StartSpec),
    /// Send a signal to the container's init.
    Signal { id: String, signal: i32 },
    /// Answer when the container has exited, or after `timeout_ms`.
    Wait { id: String, timeout_ms: u64 },
    /// Run a process in the container and collect its output.
    Exec {
        id: String,
        /// An OCI `process` JSON file for libcontainer's tenant builder.
        process: PathBuf,
        /// The container's bundle (for its seccomp profile).
        bundle: PathBuf,
        timeout_ms: Option<u64>,
        /// Output beyond this many bytes per stream is dropped.
        max_output: usize,
    },
    /// Run a process in the container with the daemon's descriptors as its
    /// stdio: three (stdin, stdout, stderr) attached to the request unless
    /// `tty`, in which case the process gets a new pty whose master comes
    /// back with `ExecStarted`.
    ExecStream {
        id: String,
        process: PathBuf,
        bundle: PathBuf,
        tty: bool,
    },
    /// Relay the container's stdio on this connection (framed, after the
    /// `Attached` answer) until it exits or the daemon hangs up.
    Attach {
        id: String,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    /// Reopen the container's log file (after rotation).
    ReopenLog { id: String },
    /// Drop a container (killing it first if it still runs).
    Forget { id: String },
    /// Every container the infra knows.
    List,
    /// Kill every container, wait for them, and exit.
    Shutdown,
}

/// A container's lifecycle as the infra records it (also `status.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerStatus {
    pub id: String,
    /// Host PID of the container's init while it runs.
    pub pid: Option<i32>,
    /// The same process as the infra sees it (its PID namespace may be the
    /// pod's); only the infra uses it.
    #[serde(default)]
    pub local_pid: Option<i32>,
    /// Unix nanoseconds.
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled`, ... once exited.
    pub reason: String,
    pub message: String,
}

impl ContainerStatus {
    pub fn running(&self) -> bool {
        self.started_at != 0 && self.exit_code.is_none()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok,
    Status(ContainerStatus),
    /// `Wait` timed out with the container still running.
    Running,
    Exec {
        exit_code: i32,
        /// Base64.
        stdout: String,
        stderr: String,
        timed_out: bool,
    },
    Containers {
        containers: Vec<ContainerStatus>,
    },
    /// A streaming exec runs (its pid in the infra's PID namespace).
    ExecStarted {
        pid: i32,
    },
    /// A streaming exec's process exited (128 + signal when killed).
    ExecExited {
        exit_code: i32,
    },
    /// Attach frames follow. `tty`: the container has a terminal (its
    /// output is all on stdout, resize applies).
    Attached {
        tty: bool,
    },
    Error {
        message: String,
    },
}

/// Attach frame kinds.
pub mod attach {
    /// daemon → infra: bytes for the container's stdin.
    pub const STDIN: u8 = 0;
    /// infra → daemon: container output.
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    /// infra → daemon: the container exited; payload: exit code, i32 BE.
    pub const EXIT: u8 = 3;
    /// daemon → infra: terminal size, width then height, u16 BE each.
    pub const RESIZE: u8 = 4;
    /// daemon → infra: the client's stdin ended.
    pub const STDIN_CLOSE: u8 = 5;
    /// Largest payload either side sends or accepts in one frame.
    pub const MAX_PAYLOAD: usize = 64 << 10;
    pub const HEADER: usize = 5;

    /// Append one frame to `out`.
    pub fn encode(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// The first complete frame in `buf`: `(kind, payload range, total
    /// length)`; `Ok(None)` when more bytes are needed, `Err` for a frame
    /// larger than `MAX_PAYLOAD`.
    pub fn decode(buf: &[u8]) -> Result<Option<(u8, std::ops::Range<usize>, usize)>, usize> {
        if buf.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(len);
        }
        if buf.len() < HEADER + len {
            return Ok(None);
        }
        Ok(Some((buf[0], HEADER..HEADER + len, HEADER + len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_frames() {
        let mut out = Vec::new();
        attach::encode(attach::STDOUT, b"hi", &mut out);
        attach::encode(attach::EXIT, &7i32.to_be_bytes(), &mut out);
        assert_eq!(&out[..7], &[1, 0, 0, 0, 2, b'h', b'i']);
        let (kind, range, used) = attach::decode(&out).unwrap().unwrap();
        assert_eq!((kind, &out[range], used), (attach::STDOUT, &b"hi"[..], 7));
        let (kind, range, _) = attach::decode(&out[7..]).unwrap().unwrap();
        assert_eq!(kind, attach::EXIT);
        assert_eq!(&out[7..][range], &7i32.to_be_bytes());
        assert_eq!(attach::decode(&out[..6]), Ok(None));
        assert_eq!(attach::decode(&[0, 0xff, 0, 0, 0]), Err(0xff00_0000));
    }

    #[test]
    fn wire_format_is_tagged_json() {
        let r = Request::Wait {
            id: "c1".into(),
            timeout_ms: 5,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"wait","id":"c1","timeout_ms":5}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let resp = Response::Error { message: "x".into() };
        assert_eq!(
            serde_json::to_string(&resp).unwrap(),
            r#"{"result":"error","message":"x"}"#
        );
    }
}
