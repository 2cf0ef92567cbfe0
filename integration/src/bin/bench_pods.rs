//! Pod and container lifecycle and memory benchmark: nodelet against
//! containerd + runc (Debian's packages), the same CRI calls in one run.
//!
//! Both daemons run side by side on fresh directories, each with busybox
//! pulled from the same local registry (and, for containerd, a busybox
//! "pause" image as its `sandbox_image`, pulled beforehand too). Pods use a
//! PID namespace shared by the pod (so `sleep` is not PID 1 and SIGTERM
//! ends it) and loopback-only networking (nodelet's built-in network;
//! containerd's CNI `loopback` plugin followed by a stub that only reports
//! an `eth0` address, which containerd 1.6 insists on, see
//! `bench::loopback_network`). Pod cgroups are passed as a kubelet does,
//! below a cgroup subtree of the run's own. Both run the same busybox layer
//! (the test images' busybox layer).
//!
//! 1. Lifecycle: per runtime one untimed warm-up, then RUNS iterations of
//!    RunPodSandbox, CreateContainer (`sleep 3600`), StartContainer,
//!    StopContainer (timeout 10), StopPodSandbox, RemovePodSandbox, each
//!    timed around its single CRI call.
//! 2. Memory: RSS and PSS (`/proc/<pid>/smaps_rollup`) of the daemon and
//!    every per-pod runtime process (nodelet: `nodelet-infra`; containerd:
//!    `containerd-shim-runc-v2` and the sandbox's pause process) with 0, 10
//!    and 30 running pods; the workload's own `sleep` is not counted.
//!
//! Usage: bench-pods [RUNS]   (default 20)

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nodelet_integration::bench::{self, median, ms, percentile, Options, Runtime, Server};
use nodelet_integration::cri::{self, api};
use nodelet_integration::registry::Registry;
use nodelet_integration::TestImage;
use nodelet_test_images::{busybox_rootfs, Compression, ImageDef, Layer, Layout, PATH_ENV};

const STEPS: [&str; 6] = [
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
];
/// No single CRI call may take longer than this.
const CALL_LIMIT: Duration = Duration::from_secs(120);
const MEMORY_LEVELS: [usize; 3] = [0, 10, 30];
const PAUSE_ARG: &str = "2147483647";

/// busybox's root filesystem layer, as the test images have it.
fn busybox_layer() -> anyhow::Result<Vec<u8>> {
    let mut layer = Layer::new();
    busybox_rootfs(&mut layer)?;
    Ok(layer.finish())
}

/// The benchmark's images, one layout: `busybox` (what the containers
/// run) and `pause`, containerd's sandbox image: the same layer whose
/// entrypoint sleeps forever (containerd runs the sandbox image's
/// entrypoint as the pod's init).
fn build_images(out: &Path) -> anyhow::Result<(TestImage, TestImage)> {
    let layer = busybox_layer()?;
    let mut l = Layout::create(&out.join("layout"))?;
    let m = l.put_image(&ImageDef::new(
        vec![(layer.clone(), Compression::Gzip)],
        serde_json::json!({"Env": [PATH_ENV], "Cmd": ["sh"], "WorkingDir": "/"}),
    ))?;
    l.tag("busybox", &m);
    let m = l.put_image(&ImageDef::new(
        vec![(layer, Compression::Gzip)],
        serde_json::json!({"Env": [PATH_ENV], "Entrypoint": ["/bin/sleep", PAUSE_ARG], "WorkingDir": "/"}),
    ))?;
    l.tag("pause", &m);
    let layout = l.finish()?;
    let image = |repo: &str, tag: &str| TestImage {
        repo: repo.into(),
        tag: tag.into(),
        layout: layout.clone(),
        all: false,
        docker_format: false,
    };
    Ok((image("bench/busybox", "busybox"), image("bench/pause", "pause")))
}

/// Time one CRI call (the future does nothing before it is polled).
async fn timed<T>(
    runtime: Runtime,
    what: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<(T, Duration)> {
    let start = Instant::now();
    let r = tokio::time::timeout(CALL_LIMIT, call)
        .await
        .map_err(|_| anyhow::anyhow!("{} {what}: no answer in {CALL_LIMIT:?}", runtime.name()))?
        .map_err(|e| anyhow::anyhow!("{} {what}: {e}", runtime.name()))?;
    let took = start.elapsed();
    Ok((r.into_inner(), took))
}

/// One runtime's CRI client and what its pods are made of.
struct Driver {
    runtime: Runtime,
    rt: cri::Runtime,
    busybox: String,
    logs: PathBuf,
    /// Pod cgroups go below this (as a kubelet's `kubepods/...`).
    cgroup: String,
    seq: usize,
}

struct Pod {
    id: String,
    container: String,
}

impl Driver {
    fn pod_config(&mut self) -> anyhow::Result<api::PodSandboxConfig> {
        self.seq += 1;
        let name = format!("bench-{}", self.seq);
        let uid = format!("{}-{}-{}", self.runtime.name(), std::process::id(), self.seq);
        let log_dir = self.logs.join(format!("bench_{name}_{uid}"));
        // The kubelet makes the pod's log directory and the container's.
        std::fs::create_dir_all(log_dir.join("sleep"))?;
        Ok(api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.clone(),
                uid: uid.clone(),
                namespace: "bench".into(),
                attempt: 0,
            }),
            hostname: name.clone(),
            log_directory: log_dir.display().to_string(),
            labels: HashMap::from([("app".to_string(), name)]),
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: format!("{}/pod{uid}", self.cgroup),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn container_config(&self) -> api::ContainerConfig {
        api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: "sleep".into(),
                attempt: 0,
            }),
            image: cri::spec(&self.busybox),
            command: vec!["sleep".into(), "3600".into()],
            log_path: "sleep/0.log".into(),
            linux: Some(api::LinuxContainerConfig {
                security_context: Some(api::LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox, CreateContainer, StartContainer: a running pod, and
    /// the three calls' times.
    async fn start_pod(&mut self) -> anyhow::Result<(Pod, [Duration; 3])> {
        let config = self.pod_config()?;
        let (r, t_run) = timed(
            self.runtime,
            "RunPodSandbox",
            self.rt.run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }),
        )
        .await?;
        let id = r.pod_sandbox_id;
        let (r, t_create) = timed(
            self.runtime,
            "CreateContainer",
            self.rt.create_container(api::CreateContainerRequest {
                pod_sandbox_id: id.clone(),
                config: Some(self.container_config()),
                sandbox_config: Some(config),
            }),
        )
        .await?;
        let container = r.container_id;
        let (_, t_start) = timed(
            self.runtime,
            "StartContainer",
            self.rt.start_container(api::StartContainerRequest {
                container_id: container.clone(),
            }),
        )
        .await?;
        Ok((Pod { id, container }, [t_run, t_create, t_start]))
    }

    async fn container_state(&mut self, id: &str) -> anyhow::Result<i32> {
        let (r, _) = timed(
            self.runtime,
            "ContainerStatus",
            self.rt.container_status(api::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            }),
        )
        .await?;
        Ok(r.status.context("ContainerStatus without a status")?.state)
    }

    async fn stop_container(&mut self, pod: &Pod) -> anyhow::Result<Duration> {
        let (_, t) = timed(
            self.runtime,
            "StopContainer",
            self.rt.stop_container(api::StopContainerRequest {
                container_id: pod.container.clone(),
                timeout: 10,
            }),
        )
        .await?;
        Ok(t)
    }

    /// StopPodSandbox, RemovePodSandbox.
    async fn remove_pod(&mut self, pod: &Pod) -> anyhow::Result<[Duration; 2]> {
        let (_, t_stop) = timed(
            self.runtime,
            "StopPodSandbox",
            self.rt.stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            }),
        )
        .await?;
        let (_, t_remove) = timed(
            self.runtime,
            "RemovePodSandbox",
            self.rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            }),
        )
        .await?;
        Ok([t_stop, t_remove])
    }

    /// One full lifecycle; the six calls' times in `STEPS` order. The state
    /// checks in between are not timed.
    async fn lifecycle(&mut self) -> anyhow::Result<[Duration; 6]> {
        let (pod, [run, create, start]) = self.start_pod().await?;
        let state = self.container_state(&pod.container).await?;
        if state != api::ContainerState::ContainerRunning as i32 {
            bail!(
                "{}: container not running after StartContainer ({state})",
                self.runtime.name()
            );
        }
        let stop = self.stop_container(&pod).await?;
        let state = self.container_state(&pod.container).await?;
        if state != api::ContainerState::ContainerExited as i32 {
            bail!(
                "{}: container not exited after StopContainer ({state})",
                self.runtime.name()
            );
        }
        let [stop_pod, remove_pod] = self.remove_pod(&pod).await?;
        Ok([run, create, start, stop, stop_pod, remove_pod])
    }

    /// The pod's sandbox process (nodelet's infra, containerd's pause), from
    /// verbose PodSandboxStatus.
    async fn sandbox_pid(&mut self, pod: &str) -> anyhow::Result<i32> {
        let (r, _) = timed(
            self.runtime,
            "PodSandboxStatus",
            self.rt.pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: pod.to_string(),
                verbose: true,
            }),
        )
        .await?;
        let info: serde_json::Value =
            serde_json::from_str(r.info.get("info").context("no verbose info")?).context("verbose info")?;
        info["pid"]
            .as_i64()
            .map(|p| p as i32)
            .with_context(|| format!("{}: no pid in the verbose info of pod {pod}", self.runtime.name()))
    }

    async fn pod_count(&mut self) -> anyhow::Result<usize> {
        let (r, _) = timed(
            self.runtime,
            "ListPodSandbox",
            self.rt.list_pod_sandbox(api::ListPodSandboxRequest::default()),
        )
        .await?;
        Ok(r.items.len())
    }
}

fn namespaces() -> api::NamespaceOption {
    api::NamespaceOption {
        network: api::NamespaceMode::Pod as i32,
        pid: api::NamespaceMode::Pod as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// Memory of a runtime's processes, KiB.
#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    rss: u64,
    pss: u64,
    daemon_rss: u64,
    daemon_pss: u64,
    processes: usize,
}

/// The runtime's per-pod processes, checked against the pods' sandbox PIDs.
fn pod_processes(server: &Server, sandboxes: &[i32]) -> anyhow::Result<Vec<i32>> {
    let daemon = server.pid() as i32;
    let name = server.runtime.name();
    let mut sorted = sandboxes.to_vec();
    sorted.sort();
    match server.runtime {
        Runtime::Nodelet => {
            let mut infras: Vec<i32> = bench::processes()
                .into_iter()
                .filter(|(_, ppid, comm)| *ppid == daemon && comm == "nodelet-infra")
                .map(|(pid, _, _)| pid)
                .collect();
            infras.sort();
            if infras != sorted {
                bail!("{name}: nodelet-infra processes {infras:?}, pods' sandbox PIDs {sorted:?}");
            }
            Ok(infras)
        }
        Runtime::Containerd => {
            let shims = bench::shims_of(&server.socket);
            if shims.len() != sandboxes.len() {
                bail!("{name}: {} shims for {} pods", shims.len(), sandboxes.len());
            }
            for &pid in sandboxes {
                let args = bench::cmdline(pid);
                if args.last().map(String::as_str) != Some(PAUSE_ARG) {
                    bail!("{name}: sandbox process {pid} runs {args:?}, not the pause image");
                }
            }
            Ok(shims.into_iter().chain(sorted).collect())
        }
    }
}

fn measure(server: &Server, sandboxes: &[i32]) -> anyhow::Result<Mem> {
    let procs = pod_processes(server, sandboxes)?;
    let (daemon_rss, daemon_pss) =
        bench::rss_pss_kib(server.pid() as i32).with_context(|| format!("{} smaps_rollup", server.runtime.name()))?;
    let mut m = Mem {
        rss: daemon_rss,
        pss: daemon_pss,
        daemon_rss,
        daemon_pss,
        processes: 1 + procs.len(),
    };
    for pid in procs {
        let (rss, pss) = bench::rss_pss_kib(pid).with_context(|| format!("smaps_rollup of {pid}"))?;
        m.rss += rss;
        m.pss += pss;
    }
    Ok(m)
}

/// Let the daemons settle (Go's GC, freed pages), then the median of three
/// samples by total PSS.
async fn settle_and_measure(server: &Server, sandboxes: &[i32]) -> anyhow::Result<Mem> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut samples = Vec::new();
    for _ in 0..3 {
        samples.push(measure(server, sandboxes)?);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    samples.sort_by_key(|m| m.pss);
    Ok(samples[1])
}

/// Memory with 0, 10 and 30 running pods, then every pod removed again.
async fn memory(server: &Server, d: &mut Driver) -> anyhow::Result<Vec<Mem>> {
    let mut pods: Vec<Pod> = Vec::new();
    let mut sandboxes = Vec::new();
    let mut out = Vec::new();
    for level in MEMORY_LEVELS {
        while pods.len() < level {
            let (pod, _) = d.start_pod().await?;
            sandboxes.push(d.sandbox_pid(&pod.id).await?);
            pods.push(pod);
        }
        bench::reap_zombies(&[server.pid()]);
        out.push(settle_and_measure(server, &sandboxes).await?);
    }
    for pod in &pods {
        d.remove_pod(pod).await?;
    }
    bench::reap_zombies(&[server.pid()]);
    Ok(out)
}

/// What is left of the runtime's pods once all were removed: processes,
/// cgroup tasks, pods it still lists.
async fn leftovers(server: &Server, d: &mut Driver) -> anyhow::Result<Vec<String>> {
    let mut left = Vec::new();
    // Processes go away asynchronously after the calls return.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        left.clear();
        let daemon = server.pid() as i32;
        let infras: Vec<i32> = bench::processes()
            .into_iter()
            .filter(|(_, ppid, comm)| *ppid == daemon && comm == "nodelet-infra")
            .map(|(pid, _, _)| pid)
            .collect();
        if !infras.is_empty() {
            left.push(format!("nodelet-infra processes {infras:?}"));
        }
        let shims = bench::shims_of(&server.socket);
        if !shims.is_empty() {
            left.push(format!("shims {shims:?}"));
        }
        let tasks = bench::cgroup_tasks(&d.cgroup);
        if !tasks.is_empty() {
            left.push(format!("tasks in {}: {tasks:?}", d.cgroup));
        }
        if left.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = d.pod_count().await?;
    if n != 0 {
        left.push(format!("{n} pods still listed"));
    }
    Ok(left)
}

/// Removes the run's cgroup subtree at the end, even on error (declared
/// before the servers, so dropped after them).
struct CgroupRoot(String);

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        bench::remove_cgroup_everywhere(&self.0);
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 {
        format!("{:.2}x", b / a)
    } else {
        "-".into()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let t_total = Instant::now();
    let runs: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(20);
    if runs == 0 {
        bail!("RUNS must be at least 1");
    }
    nodelet_integration::require_root();
    // containerd's shims double-fork away from containerd; as a subreaper
    // we get them (this VM's PID 1 never reaps) and reap them as they exit.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };

    let (busybox_image, pause_image) = nodelet_integration::with_build_lock(
        &nodelet_integration::target_dir().join("test-images/bench-pods"),
        build_images,
    )?;
    let reg = Registry::start();
    reg.push(&busybox_image);
    reg.push(&pause_image);
    let busybox = reg.image(&busybox_image.repo);
    let pause = reg.image(&pause_image.repo);

    let work = tempfile::Builder::new().prefix("nodelet-bench-pods-").tempdir()?;
    let cg_root = CgroupRoot(format!("/nodelet-bench-{}", std::process::id()));
    let mut servers = Vec::new();
    let mut drivers = Vec::new();
    for runtime in [Runtime::Nodelet, Runtime::Containerd] {
        let cgroup = format!("{}/{}", cg_root.0, runtime.name());
        let opts = Options {
            sandbox_image: (runtime == Runtime::Containerd).then(|| pause.clone()),
            cni_loopback: runtime == Runtime::Containerd,
            cgroup_parent: Some(cgroup.clone()),
        };
        let server = Server::start_with(runtime, &work.path().join(runtime.name()), &reg.host(), &opts).await?;
        let (mut rt, mut images) = cri::clients(&server.socket).await?;
        let mut pulls = vec![busybox.clone()];
        if runtime == Runtime::Containerd {
            pulls.push(pause.clone());
        }
        for image in pulls {
            images
                .pull_image(api::PullImageRequest {
                    image: cri::spec(&image),
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("{} pull {image}: {e}", runtime.name()))?;
        }
        let v = rt.version(api::VersionRequest::default()).await?.into_inner();
        println!(
            "{:<10} {} {} (pid {})",
            runtime.name(),
            v.runtime_name,
            v.runtime_version,
            server.pid()
        );
        drivers.push(Driver {
            runtime,
            rt,
            busybox: busybox.clone(),
            logs: work.path().join("logs").join(runtime.name()),
            cgroup,
            seq: 0,
        });
        servers.push(server);
    }
    println!(
        "pods: busybox `sleep 3600`, PID namespace POD, loopback only (containerd: CNI loopback + eth0 stub), runc, sandbox image {pause}; state on {}",
        work.path().display()
    );

    // 1. Lifecycle.
    let mut samples: Vec<Vec<Vec<Duration>>> = Vec::new(); // [runtime][step][run]
    let t_lifecycle = Instant::now();
    for (d, server) in drivers.iter_mut().zip(&servers) {
        d.lifecycle().await.context("warm-up")?;
        let mut per_step = vec![Vec::with_capacity(runs); STEPS.len() + 1];
        for _ in 0..runs {
            let t = d.lifecycle().await?;
            for (i, took) in t.iter().enumerate() {
                per_step[i].push(*took);
            }
            per_step[STEPS.len()].push(t.iter().sum());
            bench::reap_zombies(&[server.pid()]);
        }
        samples.push(per_step);
    }
    let lifecycle_secs = t_lifecycle.elapsed().as_secs_f64();
    println!();
    println!(
        "{:<22} {:>12} {:>8} {:>14} {:>8} {:>8}",
        format!("lifecycle ({runs} runs)"),
        "nodelet med",
        "p90",
        "containerd med",
        "p90",
        "ratio"
    );
    for (i, step) in STEPS.iter().copied().chain(["full lifecycle"]).enumerate() {
        let n_med = ms(median(&mut samples[0][i]));
        let n_p90 = ms(percentile(&mut samples[0][i], 90));
        let c_med = ms(median(&mut samples[1][i]));
        let c_p90 = ms(percentile(&mut samples[1][i], 90));
        println!(
            "{:<22} {:>12.2} {:>8.2} {:>14.2} {:>8.2} {:>8}",
            step,
            n_med,
            n_p90,
            c_med,
            c_p90,
            ratio(n_med, c_med)
        );
    }
    println!(
        "times in ms around each CRI call; ratio = containerd median / nodelet median (higher is better for nodelet)"
    );

    // 2. Memory.
    let mut mem = Vec::new();
    for (d, server) in drivers.iter_mut().zip(&servers) {
        mem.push(memory(server, d).await?);
    }
    println!();
    println!(
        "{:<22} {:>12} {:>10} {:>14} {:>10}   processes counted (nodelet / containerd)",
        "memory (MiB)", "nodelet RSS", "PSS", "containerd RSS", "PSS"
    );
    for (i, level) in MEMORY_LEVELS.iter().enumerate() {
        let (n, c) = (mem[0][i], mem[1][i]);
        println!(
            "{:<22} {:>12.1} {:>10.1} {:>14.1} {:>10.1}   {} / {}",
            format!("{level} pods"),
            mib(n.rss),
            mib(n.pss),
            mib(c.rss),
            mib(c.pss),
            n.processes,
            c.processes
        );
    }
    let last = MEMORY_LEVELS.len() - 1;
    let per_pod = |m: &[Mem], f: fn(&Mem) -> u64| -> f64 {
        (f(&m[last]) as f64 - f(&m[0]) as f64) / 1024.0 / MEMORY_LEVELS[last] as f64
    };
    let (n_rss, n_pss) = (per_pod(&mem[0], |m| m.rss), per_pod(&mem[0], |m| m.pss));
    let (c_rss, c_pss) = (per_pod(&mem[1], |m| m.rss), per_pod(&mem[1], |m| m.pss));
    println!(
        "{:<22} {:>12.2} {:>10.2} {:>14.2} {:>10.2}",
        "per pod ((30-0)/30)", n_rss, n_pss, c_rss, c_pss
    );
    println!(
        "{:<22} {:>12.1} {:>10.1} {:>14.1} {:>10.1}",
        "  daemon alone @0",
        mib(mem[0][0].daemon_rss),
        mib(mem[0][0].daemon_pss),
        mib(mem[1][0].daemon_rss),
        mib(mem[1][0].daemon_pss)
    );
    println!(
        "{:<22} {:>12.1} {:>10.1} {:>14.1} {:>10.1}",
        "  daemon alone @30",
        mib(mem[0][last].daemon_rss),
        mib(mem[0][last].daemon_pss),
        mib(mem[1][last].daemon_rss),
        mib(mem[1][last].daemon_pss)
    );
    println!(
        "ratios (containerd / nodelet): per pod RSS {}, PSS {}; total @30 pods RSS {}, PSS {}",
        ratio(n_rss, c_rss),
        ratio(n_pss, c_pss),
        ratio(mem[0][last].rss as f64, mem[1][last].rss as f64),
        ratio(mem[0][last].pss as f64, mem[1][last].pss as f64)
    );
    println!("counted: nodelet = daemon + nodelet-infra per pod; containerd = containerd + shim + pause per pod (not the workload's sleep)");

    // 3. Tear-down checks, then stop the daemons and check the host.
    let mut problems = Vec::new();
    for (d, server) in drivers.iter_mut().zip(&servers) {
        for l in leftovers(server, d).await? {
            problems.push(format!("{}: {l}", d.runtime.name()));
        }
    }
    let sockets: Vec<PathBuf> = servers.iter().map(|s| s.socket.clone()).collect();
    drop(drivers);
    drop(servers);
    for s in &sockets {
        let shims = bench::shims_of(s);
        if !shims.is_empty() {
            problems.push(format!("shims left after containerd stopped: {shims:?}"));
        }
    }
    let mounts = nodelet_integration::cleanup::mounts_below(work.path());
    if !mounts.is_empty() {
        problems.push(format!("mounts left: {mounts:?}"));
    }
    let tasks = bench::cgroup_tasks(&cg_root.0);
    if !tasks.is_empty() {
        problems.push(format!("tasks left in {}: {tasks:?}", cg_root.0));
    }
    bench::reap_zombies(&[]);
    println!();
    if problems.is_empty() {
        println!(
            "clean: all pods removed, no nodelet-infra/shim/pause process, cgroup task or mount left; lifecycle phase {:.1} s, whole run {:.1} s",
            lifecycle_secs,
            t_total.elapsed().as_secs_f64()
        );
        Ok(())
    } else {
        for p in &problems {
            println!("LEFT OVER: {p}");
        }
        bail!("{} leftovers after tear-down (cleaned up by force)", problems.len())
    }
}
