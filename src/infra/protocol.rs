//! What the daemon and a pod's infra process say to each other: one JSON
//! request line per connection on the pod's `infra.sock`, one JSON
//! response line back. One connection per request keeps long waits (a
//! container's exit, an exec) from blocking other requests.

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
    Error {
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

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
