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
                        "socket = {:?}\nroot_dir = {:?}\nstate_dir = {:?}\nmanifest_dir = {:?}\nlog_level = \"warn\"\n[registries.\"{plain_http}\"]\nplain_http = true\n",
                        socket,
                        dir.join("root"),
                        dir.join("state"),
                        dir.join("manifests"),
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
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{reg}"]
    endpoint = ["http://{reg}"]
"#,
                        root = dir.join("root").display(),
                        state = dir.join("state").display(),
                        sock = socket.display(),
                        dir = dir.display(),
                        cni = cni.display(),
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
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("start {}: {e}", runtime.name()))?;
        let mut server = Server {
            runtime,
            child,
            dir: dir.to_path_buf(),
            socket,
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
        // containerd leaves overlay mounts of its snapshots only for running
        // containers; none are left here, so the tree can go.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
