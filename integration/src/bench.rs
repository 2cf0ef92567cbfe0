//! Shared benchmark plumbing: start nodelet or containerd (Debian's) on a
//! fresh state directory with a CRI socket of its own, and summarise timings.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cri;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Nodelet,
    Containerd,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Nodelet => "nodelet",
            Runtime::Containerd => "containerd",
        }
    }
}

/// A runtime daemon on its own directories.
pub struct Server {
    pub runtime: Runtime,
    child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    cgroup_parent: Option<String>,
    netns_before: Vec<String>,
    /// Host directories containerd makes that did not exist before it
    /// started (removed again when empty).
    new_host_dirs: Vec<PathBuf>,
}

/// What the pod benchmark needs beyond an image store.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// containerd's `sandbox_image` (nodelet needs none: its infra process
    /// is built in).
    pub sandbox_image: Option<String>,
    /// Give containerd a loopback-only CNI network, what nodelet's pods
    /// have, so it can run pods that are not on the host network (see
    /// [`loopback_network`]).
    pub cni_loopback: bool,
    /// A cgroup subtree the run's pods live in (nodelet's `[cgroups]
    /// parent`; the caller passes pod cgroups below it to both runtimes).
    /// Whatever is left in it is killed and the subtree removed when the
    /// server is dropped.
    pub cgroup_parent: Option<String>,
}

/// Where the release nodelet binary is (benchmarks measure release builds).
pub fn nodelet_release_bin() -> PathBuf {
    std::env::var_os("NODELET_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::target_dir().join("release/nodelet"))
}

impl Server {
    /// Start `runtime` with state under `dir` (wiped first). `plain_http`
    /// names a loopback registry both must reach over plain HTTP.
    pub async fn start(runtime: Runtime, dir: &Path, plain_http: &str) -> anyhow::Result<Server> {
        Self::start_with(runtime, dir, plain_http, &Options::default()).await
    }

    /// [`Server::start`] with pod settings.
    pub async fn start_with(runtime: Runtime, dir: &Path, plain_http: &str, opts: &Options) -> anyhow::Result<Server> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("cri.sock");
        let log = std::fs::File::create(dir.join("daemon.log"))?;
        let mut cmd = match runtime {
            Runtime::Nodelet => {
                let config = dir.join("nodelet.toml");
                std::fs::write(
                    &config,
                    format!(
                        "socket = {:?}\nroot_dir = {:?}\nstate_dir = {:?}\nmanifest_dir = {:?}\nlog_level = \"warn\"\n[registries.\"{plain_http}\"]\nplain_http = true\n{}",
                        socket,
                        dir.join("root"),
                        dir.join("state"),
                        dir.join("manifests"),
                        opts.cgroup_parent
                            .as_ref()
                            .map(|p| format!("[cgroups]\nparent = {p:?}\n"))
                            .unwrap_or_default(),
                    ),
                )?;
                let mut c = Command::new(nodelet_release_bin());
                c.arg("serve").arg("--config").arg(config);
                c
            }
            Runtime::Containerd => {
                let config = dir.join("containerd.toml");
                let cni = dir.join("cni");
                std::fs::create_dir_all(&cni)?;
                let cni_bin = if opts.cni_loopback {
                    loopback_network(&cni)?
                } else {
                    cni.clone()
                };
                let sandbox_image = opts
                    .sandbox_image
                    .as_ref()
                    .map(|i| format!("  sandbox_image = \"{i}\"\n"))
                    .unwrap_or_default();
                std::fs::write(
                    &config,
                    format!(
                        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{dir}/debug.sock"
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  enable_cdi = false
{sandbox_image}  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{dir}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{reg}"]
    endpoint = ["http://{reg}"]
"#,
                        root = dir.join("root").display(),
                        state = dir.join("state").display(),
                        sock = socket.display(),
                        dir = dir.display(),
                        cni = cni.display(),
                        cni_bin = cni_bin.display(),
                        sandbox_image = sandbox_image,
                        reg = plain_http,
                    ),
                )?;
                let mut c = Command::new("containerd");
                c.arg("--config").arg(config);
                c
            }
        };
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        crate::die_with_parent(&mut cmd);
        let netns_before = netns_names();
        let new_host_dirs = [NETNS_DIR, "/run/containerd/s", "/run/containerd"]
            .into_iter()
            .map(PathBuf::from)
            .filter(|d| runtime == Runtime::Containerd && !d.exists())
            .collect();
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("start {}: {e}", runtime.name()))?;
        let mut server = Server {
            runtime,
            child,
            dir: dir.to_path_buf(),
            socket,
            cgroup_parent: opts.cgroup_parent.clone(),
            netns_before,
            new_host_dirs,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((mut rt, _)) = cri::clients(&server.socket).await {
                if rt.version(cri::api::VersionRequest::default()).await.is_ok() {
                    return Ok(server);
                }
            }
            if let Ok(Some(st)) = server.child.try_wait() {
                anyhow::bail!(
                    "{} exited ({st}): {}",
                    runtime.name(),
                    std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                server.stop();
                anyhow::bail!("{} did not come up", runtime.name());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        self.clean_up();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Server {
    /// After the daemon is gone: kill what it leaves running (containerd's
    /// shims survive it, and so do the containers under them), unmount what
    /// it left under its directory and the network namespaces it pinned in
    /// `/var/run/netns`, and reap what came to us. Nothing is left of a
    /// clean run, so this only matters after an error.
    fn clean_up(&mut self) {
        for pid in shims_of(&self.socket) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(cg) = &self.cgroup_parent {
            remove_cgroup_everywhere(cg);
        }
        crate::cleanup::mounts_under(&self.dir);
        if self.runtime == Runtime::Containerd {
            for name in netns_names() {
                if name.starts_with("cni-") && !self.netns_before.contains(&name) {
                    let p = Path::new(NETNS_DIR).join(&name);
                    let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
                    let _ = std::fs::remove_file(&p);
                }
            }
            // Sockets of shims that were killed (a live shim's socket
            // accepts connections; only dead ones go).
            for e in std::fs::read_dir("/run/containerd/s").into_iter().flatten().flatten() {
                if std::os::unix::net::UnixStream::connect(e.path()).is_err() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        for d in &self.new_host_dirs {
            let _ = std::fs::remove_dir(d);
        }
        reap_zombies(&[self.child.id()]);
    }
}

/// A CNI network for containerd that gives pods nothing but loopback: the
/// real `loopback` plugin (Debian's `/usr/lib/cni/loopback`), then a stub
/// that claims an `eth0` with an address and touches nothing. containerd
/// 1.6 refuses a sandbox whose CNI result has no IP on `eth0` ("failed to
/// find network info for sandbox"), so `loopback` alone cannot run a pod;
/// the stub costs one `/bin/sh` exec per ADD and DEL and no kernel work.
/// Writes the conflist into `conf_dir` and the plugins into
/// `conf_dir/bin`; returns the plugin directory.
pub fn loopback_network(conf_dir: &Path) -> anyhow::Result<PathBuf> {
    let bin = conf_dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let _ = std::fs::remove_file(bin.join("loopback"));
    std::os::unix::fs::symlink("/usr/lib/cni/loopback", bin.join("loopback"))?;
    let stub = bin.join("eth0-stub");
    std::fs::write(
        &stub,
        r#"#!/bin/sh
# A CNI plugin that reports eth0 with an address and does nothing.
case "$CNI_COMMAND" in
ADD) printf '{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"%s"}],"ips":[{"version":"4","address":"10.254.0.2/24","interface":0}]}' "$CNI_NETNS" ;;
VERSION) printf '{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0"]}' ;;
esac
exit 0
"#,
    )?;
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::write(
        conf_dir.join("10-lo.conflist"),
        r#"{"cniVersion":"0.4.0","name":"lo","plugins":[{"type":"loopback"},{"type":"eth0-stub"}]}"#,
    )?;
    Ok(bin)
}

const NETNS_DIR: &str = "/var/run/netns";

fn netns_names() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// PIDs of live processes (not zombies), with their parent and
/// `/proc/<pid>/comm`.
pub fn processes() -> Vec<(i32, i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let mut f = stat[close + 1..].split_whitespace();
        let state = f.next().unwrap_or("");
        let ppid = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if state != "Z" && state != "X" {
            out.push((pid, ppid, comm));
        }
    }
    out
}

/// A process's arguments.
pub fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// containerd shims serving the containerd at `socket` (they run with
/// `-address <socket>` and outlive a killed containerd).
pub fn shims_of(socket: &Path) -> Vec<i32> {
    let want = socket.to_string_lossy();
    processes()
        .into_iter()
        .filter(|(_, _, comm)| comm.starts_with("containerd-shim"))
        .filter(|(pid, _, _)| {
            let args = cmdline(*pid);
            args.windows(2).any(|w| w[0] == "-address" && w[1] == want)
        })
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Every mounted cgroup hierarchy: v1 controllers, named v1 hierarchies
/// and cgroup2 (runc also makes its paths in the hybrid layout's unified
/// hierarchy).
fn all_cgroup_mounts() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let mount = left.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mount))
        })
        .collect()
}

/// Kill every task under cgroup `path` in every hierarchy and remove the
/// subtree.
pub fn remove_cgroup_everywhere(path: &str) {
    let dirs: Vec<PathBuf> = all_cgroup_mounts()
        .into_iter()
        .map(|m| m.join(path.trim_start_matches('/')))
        .filter(|d| d.is_dir())
        .collect();
    fn subtree(d: &Path, out: &mut Vec<PathBuf>) {
        out.push(d.to_path_buf());
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                subtree(&e.path(), out);
            }
        }
    }
    let mut all = Vec::new();
    for d in &dirs {
        subtree(d, &mut all);
    }
    for d in &all {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    // Deepest first.
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for d in &all {
        for _ in 0..200 {
            if std::fs::remove_dir(d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Tasks left in cgroup `path` (any hierarchy) and its subtree.
pub fn cgroup_tasks(path: &str) -> Vec<i32> {
    let mut out = Vec::new();
    fn walk(d: &Path, out: &mut Vec<i32>) {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&e.path(), out);
            }
        }
    }
    for m in all_cgroup_mounts() {
        walk(&m.join(path.trim_start_matches('/')), &mut out);
    }
    out.sort();
    out.dedup();
    out
}

/// Reap zombies that are our children, except `keep` (children whose
/// `std::process::Child` still waits for them). A benchmark that is
/// `PR_SET_CHILD_SUBREAPER` inherits containerd's shims, which exit when
/// their pod is removed.
pub fn reap_zombies(keep: &[u32]) {
    let me = std::process::id() as i32;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if keep.contains(&(pid as u32)) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next().unwrap_or(""), f.next().and_then(|p| p.parse::<i32>().ok()));
        if state == "Z" && ppid == Some(me) {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
    }
}

/// `Rss` and `Pss` of a process in KiB, from `/proc/<pid>/smaps_rollup`.
pub fn rss_pss_kib(pid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l[name.len()..].split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some((field("Rss:")?, field("Pss:")?))
}

pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The `p`th percentile (nearest rank), `p` in 0..=100.
pub fn percentile(v: &mut [Duration], p: u32) -> Duration {
    v.sort();
    let rank = (v.len() * p as usize).div_ceil(100).max(1);
    v[rank.min(v.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
