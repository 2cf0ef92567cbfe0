//! A nodelet daemon of the test's own: socket, root and state directories
//! under a temporary directory, stopped and cleaned up on drop.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cri::{self, api};

pub struct Daemon {
    child: Option<Child>,
    /// The network namespace the daemon runs in (the test's "node"), if
    /// not the host's.
    pub netns: Option<std::sync::Arc<crate::netns::NetNs>>,
    /// Extra environment for the daemon process (e.g. `NOTIFY_SOCKET`).
    env: Vec<(String, String)>,
    /// The test's own cgroup parent (`[cgroups] parent`), torn down on drop.
    pub cgroup_parent: String,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub root_dir: PathBuf,
    pub state_dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

impl Daemon {
    /// Start a daemon with `extra` appended to its TOML config, in the
    /// host's network namespace (for tests that create no pod networks).
    pub async fn start(extra: &str) -> Daemon {
        Self::start_full(extra, &[], None).await
    }

    /// Start a daemon inside `netns`: its bridge, addresses and nftables
    /// rules stay in that namespace, the test's node.
    pub async fn start_in(extra: &str, netns: Option<std::sync::Arc<crate::netns::NetNs>>) -> Daemon {
        Self::start_full(extra, &[], netns).await
    }

    /// Start a daemon with `extra` config and extra environment variables.
    pub async fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Daemon {
        Self::start_full(extra, env, None).await
    }

    pub async fn start_full(
        extra: &str,
        env: &[(&str, &str)],
        netns: Option<std::sync::Arc<crate::netns::NetNs>>,
    ) -> Daemon {
        crate::require_root();
        let dir = tempfile::Builder::new()
            .prefix("nodelet-it-")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("run/nodelet.sock");
        std::fs::create_dir_all(dir.path().join("cni/net.d")).expect("cni dir");
        let root_dir = dir.path().join("root");
        let state_dir = dir.path().join("state");
        let config_path = dir.path().join("config.toml");
        let log_path = dir.path().join("nodelet.log");
        let cgroup_parent = format!(
            "/nodelet-test-{}",
            &dir.path().file_name().unwrap().to_string_lossy()[11..]
        );
        // The daemon re-parents pod infra processes to itself; if it dies
        // they come to us (not to this VM's PID 1, which never reaps).
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let config = format!(
            "socket = {:?}\nkubelet_socket = {:?}\nroot_dir = {:?}\nstate_dir = {:?}\nmanifest_dir = {:?}\nlog_level = \"nodelet=debug,info\"\n{}\n",
            socket,
            dir.path().join("run/kubelet.sock"),
            root_dir,
            state_dir,
            dir.path().join("manifests"),
            with_streaming_address(
                &with_static_pods(
                    &with_cgroup_parent(&with_cni_dir(extra, &dir.path().join("cni/net.d")), &cgroup_parent),
                    dir.path()
                ),
                netns.as_deref()
            ),
        );
        std::fs::write(&config_path, config).expect("write config");
        let mut d = Daemon {
            child: None,
            netns,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            cgroup_parent,
            dir,
            socket,
            root_dir,
            state_dir,
            config_path,
            log_path,
        };
        d.spawn().await;
        d
    }

    /// Start (again) on the same directories.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let mut cmd = match &self.netns {
            Some(ns) => ns.command(crate::nodelet_bin()),
            None => Command::new(crate::nodelet_bin()),
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        crate::die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().expect("spawn nodelet"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("nodelet exited at start ({status}):\n{}", self.log());
            }
            if let Ok((mut rt, _)) = cri::clients(&self.socket).await {
                if rt.version(api::VersionRequest::default()).await.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "nodelet did not come up:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn clients(&self) -> (cri::Runtime, cri::Images) {
        cri::clients(&self.socket).await.expect("connect to nodelet")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `kill -9` the daemon.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn images_dir(&self) -> PathBuf {
        self.root_dir.join("images")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
        if std::thread::panicking() {
            eprintln!("---- nodelet log ({}) ----\n{}", self.log_path.display(), self.log());
            for e in std::fs::read_dir(self.state_dir.join("pods"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let log = std::fs::read_to_string(e.path().join("infra.log")).unwrap_or_default();
                if !log.is_empty() {
                    eprintln!("---- infra log of pod {} ----\n{log}", e.file_name().to_string_lossy());
                }
            }
            for f in list_tree(&self.dir.path().join("logs"))
                .iter()
                .filter(|f| f.ends_with(".log"))
            {
                let text = std::fs::read_to_string(self.dir.path().join("logs").join(f)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                eprintln!("---- container log {f} (last lines) ----");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        // Whatever the test left running: kill it through the test's cgroup
        // subtree, unmount what is mounted under the test directory, reap
        // infra processes that came to us.
        crate::cleanup::cgroup_tree(&self.cgroup_parent);
        crate::cleanup::mounts_under(self.dir.path());
        crate::cleanup::reap_orphans();
    }
}

/// Point `[cni] conf_dir` at the test's own directory (empty: the
/// built-in network) unless the test set it.
fn with_cni_dir(extra: &str, dir: &Path) -> String {
    if extra.contains("conf_dir") {
        extra.to_string()
    } else if extra.contains("[cni]") {
        extra.replace("[cni]", &format!("[cni]\nconf_dir = {dir:?}"))
    } else {
        format!("{extra}\n[cni]\nconf_dir = {dir:?}\n")
    }
}

/// Keep the static pod manager's files (logs, status socket, seccomp
/// profiles) in the test's directory.
fn with_static_pods(extra: &str, dir: &Path) -> String {
    let keys = format!(
        "log_dir = {:?}\nstatus_socket = {:?}\nseccomp_dir = {:?}",
        dir.join("pod-logs"),
        dir.join("run/pods.sock"),
        dir.join("seccomp")
    );
    if extra.contains("[static_pods]") {
        extra.replace("[static_pods]", &format!("[static_pods]\n{keys}"))
    } else {
        format!("{extra}\n[static_pods]\n{keys}\n")
    }
}

/// A daemon in a node namespace serves streaming on a loopback address of
/// its own, which the test client knows to reach inside that namespace.
fn with_streaming_address(extra: &str, netns: Option<&crate::netns::NetNs>) -> String {
    let Some(ns) = netns else {
        return extra.to_string();
    };
    if extra.contains("[streaming]") && extra.contains("address") {
        return extra.to_string();
    }
    let key = format!("address = \"{}:0\"", crate::node_loopback(ns));
    if extra.contains("[streaming]") {
        extra.replace("[streaming]", &format!("[streaming]\n{key}"))
    } else {
        format!("{extra}\n[streaming]\n{key}\n")
    }
}

/// Add `parent = ...` to the config's `[cgroups]` table (creating it).
fn with_cgroup_parent(extra: &str, parent: &str) -> String {
    if extra.contains("[cgroups]") {
        extra.replace("[cgroups]", &format!("[cgroups]\nparent = {parent:?}"))
    } else {
        format!("{extra}\n[cgroups]\nparent = {parent:?}\n")
    }
}

/// Files under `dir` (recursively), relative, for leak checks.
pub fn list_tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, p: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let path = e.path();
                out.push(path.strip_prefix(base).unwrap_or(&path).display().to_string());
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(base, &path, out);
                }
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}
