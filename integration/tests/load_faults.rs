//! Load and faults: many pods at once, concurrent ExecSync, the daemon
//! killed during churn, a full disk, too few file descriptors and a missing
//! cgroup controller. Counts and waits are bounded; every test ends with a
//! leak check. The load figures are printed (run with `--nocapture`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodelet_integration::cri::{api, spec, Runtime};
use nodelet_integration::pods::World;
use tonic::Code;

/// Pods run on pod networks (the built-in bridge: a veth and an IP each,
/// checked for leaks); false runs them on the node's network.
const POD_NETWORK: bool = true;

/// The tests in this file load the whole machine: run them one at a time
/// even when the harness runs tests in parallel.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A pod config: on the node's network unless [`POD_NETWORK`].
fn pod_config(w: &World, name: &str) -> api::PodSandboxConfig {
    let mut pod = w.pod(name);
    if !POD_NETWORK {
        pod.linux = Some(api::LinuxPodSandboxConfig {
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: api::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    pod
}

fn container_config(busybox: &str, name: &str, script: &str) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: spec(busybox),
        command: vec!["sh".into(), "-c".into(), script.to_string()],
        log_path: format!("{name}/0.log"),
        linux: Some(api::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// RunPodSandbox, CreateContainer, StartContainer; the pod's ID as soon as
/// it has one.
async fn start_pod(
    rt: &mut Runtime,
    pod: api::PodSandboxConfig,
    ctr: api::ContainerConfig,
    id_out: Option<&Mutex<Option<String>>>,
) -> Result<(String, String), tonic::Status> {
    let id = rt
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    if let Some(out) = id_out {
        *out.lock().unwrap() = Some(id.clone());
    }
    let c = rt
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(ctr),
            sandbox_config: Some(pod),
        })
        .await?
        .into_inner()
        .container_id;
    rt.start_container(api::StartContainerRequest {
        container_id: c.clone(),
    })
    .await?;
    Ok((id, c))
}

async fn stop_and_remove(rt: &mut Runtime, id: &str) -> Result<(), tonic::Status> {
    rt.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    })
    .await?;
    rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    })
    .await?;
    Ok(())
}

async fn list_pods(rt: &mut Runtime) -> Vec<api::PodSandbox> {
    rt.list_pod_sandbox(api::ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
}

async fn list_containers(rt: &mut Runtime) -> Vec<api::Container> {
    rt.list_containers(api::ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn fd_list(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default()
        })
        .collect();
    v.sort();
    v
}

/// Wait (bounded) for the daemon's descriptors to come back to `baseline`
/// plus `slack`.
async fn assert_fds_settle(pid: u32, baseline: usize, slack: usize, what: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = fd_count(pid);
        if n <= baseline + slack {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the daemon holds {n} descriptors, baseline {baseline} (+{slack}): {:#?}",
            fd_list(pid)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Live processes started for this test's daemon (infra processes name
/// the daemon's state directory on their command line), the daemon itself
/// excepted.
fn processes_of(dir: &Path, daemon: Option<u32>) -> Vec<String> {
    nodelet_integration::cleanup::reap_orphans();
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if Some(pid) == daemon || pid == std::process::id() {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z') {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) && !cmdline.contains(" serve ") {
            out.push(format!("{pid}: {cmdline}"));
        }
    }
    out
}

/// Everything the daemon made for pods is gone (cgroups, mounts, records,
/// processes; with pod networks also veths and IP allocations).
async fn assert_clean(w: &World) {
    assert_clean_except(w, &[]).await
}

async fn assert_clean_except(w: &World, allowed_mounts: &[PathBuf]) {
    // Processes exit asynchronously after a removal; give them a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = processes_of(w.daemon.dir.path(), w.daemon.pid());
        let trash: Vec<String> = [w.daemon.root_dir.join("trash"), w.daemon.state_dir.join("trash")]
            .iter()
            .flat_map(|d| nodelet_integration::daemon::list_tree(d))
            .collect();
        if procs.is_empty() && trash.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes left: {procs:#?}; not deleted: {trash:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.assert_no_leaks_except(allowed_mounts);
    let records = nodelet_integration::daemon::list_tree(&w.daemon.root_dir.join("pods"));
    assert!(records.is_empty(), "pod records left: {records:?}");
    if POD_NETWORK {
        let links = w.node.ip(&["-o", "link", "show"]);
        let veths: Vec<&str> = links.lines().filter(|l| l.contains("veth")).collect();
        assert!(veths.is_empty(), "veths left in the node: {veths:?}");
        let ipam: Vec<String> = nodelet_integration::daemon::list_tree(&w.daemon.root_dir.join("cni/networks"))
            .into_iter()
            .filter(|p| {
                Path::new(p)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
            })
            .collect();
        assert!(ipam.is_empty(), "IP allocations left: {ipam:?}");
    }
}

/// The daemon log has no panic.
fn assert_no_panic(w: &World) {
    let log = w.daemon.log();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}

/// Samples the daemon's RSS and descriptors until dropped.
struct Sampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    peak: Arc<Mutex<(u64, usize)>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let peak = Arc::new(Mutex::new((0u64, 0usize)));
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peak));
        let task = tokio::spawn(async move {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let (rss, _) = rss_kib(pid);
                let fds = fd_count(pid);
                {
                    let mut g = p.lock().unwrap();
                    g.0 = g.0.max(rss);
                    g.1 = g.1.max(fds);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        Sampler {
            stop,
            peak,
            task: Some(task),
        }
    }

    /// Peak RSS (KiB) and descriptors seen.
    async fn finish(mut self) -> (u64, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        *self.peak.lock().unwrap()
    }
}

const PODS: usize = 110;
const ROUNDS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_110_in_parallel_started_and_removed_twice() {
    let _serial = serial().await;
    let w = World::new(&[], "").await;
    let pid = w.daemon.pid().expect("daemon pid");
    // Warm up once (first-use allocations, lazily opened files).
    {
        let mut rt = w.rt.clone();
        let (id, _) = start_pod(
            &mut rt,
            pod_config(&w, "warm"),
            container_config(&w.busybox, "app", "sleep 1000"),
            None,
        )
        .await
        .expect("warm-up pod");
        stop_and_remove(&mut rt, &id).await.expect("remove warm-up pod");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline_fds = fd_count(pid);
    let (baseline_rss, _) = rss_kib(pid);
    println!("baseline: daemon RSS {baseline_rss} KiB, {baseline_fds} fds");
    let mut figures = Vec::new();
    for round in 0..ROUNDS {
        let sampler = Sampler::start(pid);
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..PODS {
            let mut rt = w.rt.clone();
            let pod = pod_config(&w, &format!("r{round}-p{i}"));
            let ctr = container_config(&w.busybox, "app", "exec sleep 1000");
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = start_pod(&mut rt, pod, ctr, None).await;
                (r, t.elapsed())
            }));
        }
        let mut started = Vec::new();
        let mut errors = Vec::new();
        let mut latencies = Vec::new();
        for t in tasks {
            let (r, lat) = tokio::time::timeout(Duration::from_secs(180), t)
                .await
                .expect("110 pods did not start within 180 s")
                .expect("task");
            latencies.push(lat);
            match r {
                Ok(ids) => started.push(ids),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let start_secs = t0.elapsed().as_secs_f64();
        assert!(
            errors.is_empty(),
            "round {round}: {} starts failed: {errors:#?}",
            errors.len()
        );
        assert_eq!(started.len(), PODS);
        // Every pod ready, every container running.
        let mut rt = w.rt.clone();
        let pods = list_pods(&mut rt).await;
        assert_eq!(pods.len(), PODS, "round {round}: pods listed");
        assert!(pods
            .iter()
            .all(|p| p.state == api::PodSandboxState::SandboxReady as i32));
        let ctrs = list_containers(&mut rt).await;
        assert_eq!(ctrs.len(), PODS);
        assert!(
            ctrs.iter()
                .all(|c| c.state == api::ContainerState::ContainerRunning as i32),
            "round {round}: not all containers running: {:?}",
            ctrs.iter()
                .filter(|c| c.state != api::ContainerState::ContainerRunning as i32)
                .count()
        );
        let running_fds = fd_count(pid);

        let t1 = Instant::now();
        let mut tasks = Vec::new();
        for (id, _) in started {
            let mut rt = w.rt.clone();
            tasks.push(tokio::spawn(async move { stop_and_remove(&mut rt, &id).await }));
        }
        let mut errors = Vec::new();
        for t in tasks {
            if let Err(e) = tokio::time::timeout(Duration::from_secs(180), t)
                .await
                .expect("110 pods were not removed within 180 s")
                .expect("task")
            {
                errors.push(e.to_string());
            }
        }
        let remove_secs = t1.elapsed().as_secs_f64();
        assert!(errors.is_empty(), "round {round}: removals failed: {errors:#?}");
        let (peak_rss, peak_fds) = sampler.finish().await;
        let (_, hwm) = rss_kib(pid);
        latencies.sort();
        let p50 = latencies[latencies.len() / 2];
        let p99 = latencies[latencies.len() * 99 / 100];
        assert!(list_pods(&mut rt).await.is_empty(), "round {round}: pods left listed");
        assert_clean(&w).await;
        let settled = assert_fds_settle(pid, baseline_fds, 4, &format!("round {round}")).await;
        let (rss_after, _) = rss_kib(pid);
        let line = format!(
            "round {round}: {PODS} pods started in {start_secs:.2} s ({:.1} pods/s; per pod p50 {p50:?}, p99 {p99:?}), \
             removed in {remove_secs:.2} s ({:.1} pods/s); daemon peak RSS {peak_rss} KiB (VmHWM {hwm} KiB, \
             {rss_after} KiB after), peak fds {peak_fds} ({running_fds} with {PODS} pods running, {settled} after, \
             baseline {baseline_fds})",
            PODS as f64 / start_secs,
            PODS as f64 / remove_secs,
        );
        println!("{line}");
        figures.push(line);
    }
    assert_no_panic(&w);
    for f in figures {
        println!("LOAD {f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_100_concurrent() {
    let _serial = serial().await;
    let w = World::new(&[], "").await;
    let pid = w.daemon.pid().expect("daemon pid");
    let mut rt = w.rt.clone();
    let mut pods = Vec::new();
    let mut ctrs = Vec::new();
    for i in 0..4 {
        let (p, c) = start_pod(
            &mut rt,
            pod_config(&w, &format!("exec{i}")),
            container_config(&w.busybox, "app", "exec sleep 1000"),
            None,
        )
        .await
        .expect("start pod");
        pods.push(p);
        ctrs.push(c);
    }
    let baseline_fds = fd_count(pid);
    for round in 0..2 {
        let sampler = Sampler::start(pid);
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..100 {
            let mut rt = w.rt.clone();
            let c = ctrs[i % ctrs.len()].clone();
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = rt
                    .exec_sync(api::ExecSyncRequest {
                        container_id: c,
                        cmd: vec![
                            "sh".into(),
                            "-c".into(),
                            format!("echo out-{i}; echo err-{i} >&2; exit {}", i % 7),
                        ],
                        timeout: 60,
                    })
                    .await;
                (i, r, t.elapsed())
            }));
        }
        let mut latencies = Vec::new();
        for t in tasks {
            let (i, r, lat) = tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .expect("100 ExecSync calls did not finish within 120 s")
                .expect("task");
            let r = r
                .unwrap_or_else(|e| panic!("round {round}: ExecSync {i}: {e}"))
                .into_inner();
            assert_eq!(
                String::from_utf8_lossy(&r.stdout),
                format!("out-{i}\n"),
                "exec {i} stdout"
            );
            assert_eq!(
                String::from_utf8_lossy(&r.stderr),
                format!("err-{i}\n"),
                "exec {i} stderr"
            );
            assert_eq!(r.exit_code, (i % 7) as i32, "exec {i} exit code");
            latencies.push(lat);
        }
        let total = t0.elapsed();
        let (peak_rss, peak_fds) = sampler.finish().await;
        latencies.sort();
        println!(
            "LOAD exec round {round}: 100 concurrent ExecSync on {} containers in {:.2} s ({:.1}/s); latency p50 {:?}, \
             p90 {:?}, max {:?}; daemon peak RSS {peak_rss} KiB, peak fds {peak_fds}",
            ctrs.len(),
            total.as_secs_f64(),
            100.0 / total.as_secs_f64(),
            latencies[50],
            latencies[90],
            latencies[99]
        );
        // Each exec's sub-cgroup is gone.
        for c in &ctrs {
            let subs: Vec<PathBuf> = nodelet_integration::cleanup::cgroup_dirs(&w.daemon.cgroup_parent)
                .into_iter()
                .flat_map(|d| walk(&d))
                .filter(|p| p.display().to_string().contains(&format!("{c}/")))
                .collect();
            assert!(subs.is_empty(), "exec cgroups left under {c}: {subs:?}");
        }
        assert_fds_settle(pid, baseline_fds, 4, &format!("exec round {round}")).await;
    }
    for p in &pods {
        stop_and_remove(&mut rt, p).await.expect("remove");
    }
    assert_clean(&w).await;
    assert_no_panic(&w);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(walk(&e.path()));
        }
    }
    out
}

/// splitmix64: a small seeded generator, so a failing run can be replayed
/// with `LOAD_FAULTS_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the test knows about one pod it tried to make.
#[derive(Debug, Default, Clone)]
struct Attempt {
    name: String,
    /// The ID RunPodSandbox returned (None: it never answered OK).
    id: Option<String>,
    /// RemovePodSandbox was sent (the pod may be gone even when the
    /// daemon died before it answered).
    removing: bool,
    /// RemovePodSandbox answered OK.
    removed: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_churn_every_pod_accounted_for() {
    let _serial = serial().await;
    let seed = std::env::var("LOAD_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("LOAD_FAULTS_SEED={seed}");
    let mut rng = Rng(seed);
    let mut w = World::new(&[], "").await;
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    const WORKERS: usize = 6;
    const KILLS: usize = 4;
    for cycle in 0..KILLS {
        let mut tasks = Vec::new();
        for k in 0..WORKERS {
            let mut rt = w.rt.clone();
            let attempts = Arc::clone(&attempts);
            let busybox = w.busybox.clone();
            let base = pod_config(&w, "x");
            let logs = w.logs_dir();
            let mut wrng = Rng(rng.next());
            tasks.push(tokio::spawn(async move {
                for n in 0.. {
                    let name = format!("c{cycle}-w{k}-{n}");
                    let mut pod = base.clone();
                    pod.metadata = Some(api::PodSandboxMetadata {
                        name: name.clone(),
                        uid: format!("uid-{name}"),
                        namespace: "default".into(),
                        attempt: 0,
                    });
                    pod.log_directory = logs.join(&name).display().to_string();
                    let slot = {
                        let mut a = attempts.lock().unwrap();
                        a.push(Attempt {
                            name: name.clone(),
                            ..Default::default()
                        });
                        a.len() - 1
                    };
                    let id_cell = Mutex::new(None);
                    let r = start_pod(
                        &mut rt,
                        pod,
                        container_config(&busybox, "app", "exec sleep 1000"),
                        Some(&id_cell),
                    )
                    .await;
                    let id = id_cell.lock().unwrap().clone();
                    attempts.lock().unwrap()[slot].id = id.clone();
                    if r.is_err() {
                        return;
                    }
                    let id = id.expect("an ID after a start");
                    // Leave some pods running, stop some, remove most.
                    match wrng.below(4) {
                        0 => {}
                        1 => {
                            if rt
                                .stop_pod_sandbox(api::StopPodSandboxRequest {
                                    pod_sandbox_id: id.clone(),
                                })
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        _ => {
                            attempts.lock().unwrap()[slot].removing = true;
                            if stop_and_remove(&mut rt, &id).await.is_err() {
                                return;
                            }
                            attempts.lock().unwrap()[slot].removed = true;
                        }
                    }
                }
            }));
        }
        let delay = Duration::from_millis(200 + rng.below(1800));
        tokio::time::sleep(delay).await;
        w.daemon.kill9();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("a churn worker did not stop after the daemon died")
                .expect("worker");
        }
        let tried = attempts.lock().unwrap().len();
        println!("kill {cycle}: after {delay:?}, {tried} pods tried so far");
        w.daemon.spawn().await;
        let (rt, images) = w.daemon.clients().await;
        w.rt = rt;
        w.images = images;
        let snapshot = attempts.lock().unwrap().clone();
        check_accounted(&mut w, &snapshot, cycle).await;
    }
    // Remove everything that is left; nothing may remain.
    let mut rt = w.rt.clone();
    for p in list_pods(&mut rt).await {
        stop_and_remove(&mut rt, &p.id)
            .await
            .unwrap_or_else(|e| panic!("remove {}: {e}", p.id));
    }
    assert!(list_pods(&mut rt).await.is_empty());
    assert!(list_containers(&mut rt).await.is_empty());
    assert_clean(&w).await;
    assert_no_panic(&w);
}

/// Every pod listed is one the test tried, in a consistent state; every pod
/// whose RunPodSandbox answered OK and that the test did not ask to remove
/// is listed; none whose removal answered OK is.
async fn check_accounted(w: &mut World, attempts: &[Attempt], cycle: usize) {
    let ctx = |m: String| format!("after kill {cycle}: {m}");
    let listed = list_pods(&mut w.rt).await;
    let by_name: HashMap<&str, &Attempt> = attempts.iter().map(|a| (a.name.as_str(), a)).collect();
    let mut seen = HashSet::new();
    let mut listed_ids = HashSet::new();
    for p in &listed {
        let name = p.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
        let a = by_name
            .get(name)
            .unwrap_or_else(|| panic!("{}", ctx(format!("unknown pod listed: {p:?}"))));
        assert!(seen.insert(name), "{}", ctx(format!("pod {name} listed twice")));
        listed_ids.insert(p.id.clone());
        if let Some(id) = &a.id {
            assert_eq!(&p.id, id, "{}", ctx(format!("pod {name} has another ID")));
        }
        assert!(!a.removed, "{}", ctx(format!("removed pod {name} listed again")));
        let st = w.pod_status(&p.id).await;
        // Ready may turn not ready (an infra dying); never the reverse.
        assert!(
            st.state == p.state || st.state == api::PodSandboxState::SandboxNotready as i32,
            "{}",
            ctx(format!("pod {name}: listed {} but status {}", p.state, st.state))
        );
        if p.state == api::PodSandboxState::SandboxReady as i32 {
            let infra = w.infra_pid(&p.id).await;
            assert!(
                Path::new(&format!("/proc/{infra}")).exists(),
                "{}",
                ctx(format!("ready pod {name}: infra {infra} is gone"))
            );
        }
    }
    for a in attempts {
        if let (Some(id), false) = (&a.id, a.removing) {
            assert!(
                listed_ids.contains(id),
                "{}",
                ctx(format!("pod {} ({id}) was created but is not listed", a.name))
            );
        }
    }
    for c in list_containers(&mut w.rt).await {
        assert!(
            listed_ids.contains(&c.pod_sandbox_id),
            "{}",
            ctx(format!("container {} of an unlisted pod {}", c.id, c.pod_sandbox_id))
        );
        // A start the infra received before the crash may finish after
        // the listing: states only move forward (created, running, exited).
        let st = w.status(&c.id).await;
        let forward = st.state == c.state || matches!((c.state, st.state), (0, 1) | (0, 2) | (1, 2));
        assert!(
            forward,
            "{}",
            ctx(format!(
                "container {}: listed {} but status {}",
                c.id, c.state, st.state
            ))
        );
    }
    println!(
        "after kill {cycle}: {} pods listed ({} ready), {} tried, {} removed",
        listed.len(),
        listed
            .iter()
            .filter(|p| p.state == api::PodSandboxState::SandboxReady as i32)
            .count(),
        attempts.len(),
        attempts.iter().filter(|a| a.removed).count()
    );
}

/// A tmpfs of `size` mounted at `dir` (created), unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(dir).expect("mount point");
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0755").as_str()),
        )
        .unwrap_or_else(|e| panic!("mount a {size} tmpfs on {}: {e}", dir.display()));
        SmallFs(dir.to_path_buf())
    }

    fn avail(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.0).expect("statvfs");
        st.blocks_available() as u64 * st.fragment_size() as u64
    }

    /// Fill it up but `leave` bytes.
    fn fill(&self, leave: u64) -> PathBuf {
        let filler = self.0.join("filler");
        let n = self.avail().saturating_sub(leave);
        let f = std::fs::File::create(&filler).expect("filler");
        // Real pages (tmpfs does not count holes).
        let chunk = vec![0x5au8; 64 << 10];
        let mut w = std::io::BufWriter::new(f);
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len() as u64) as usize;
            if std::io::Write::write_all(&mut w, &chunk[..k]).is_err() {
                break;
            }
            left -= k as u64;
        }
        let _ = std::io::Write::flush(&mut w);
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

async fn reconnect(w: &mut World) {
    let (rt, images) = w.daemon.clients().await;
    w.rt = rt;
    w.images = images;
}

async fn image_names(w: &mut World) -> Vec<String> {
    w.images
        .list_images(api::ListImagesRequest::default())
        .await
        .expect("ListImages")
        .into_inner()
        .images
        .into_iter()
        .flat_map(|i| i.repo_tags)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_during_pull_and_log_write() {
    let _serial = serial().await;
    let mut w = World::new(&[], "").await;
    // The daemon's root directory on a 16 MiB tmpfs, nearly full.
    w.daemon.terminate();
    let root = SmallFs::mount(&w.daemon.root_dir, "16m");
    w.daemon.spawn().await;
    reconnect(&mut w).await;
    let filler = root.fill(128 << 10);
    let pull = w
        .images
        .pull_image(api::PullImageRequest {
            image: spec(&w.busybox),
            ..Default::default()
        })
        .await;
    let err = pull.expect_err("a pull into a full root directory must fail");
    println!("FAULT full disk pull: {:?}: {}", err.code(), err.message());
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(
        err.message().contains("No space left on device"),
        "the error names the cause: {}",
        err.message()
    );
    assert!(image_names(&mut w).await.is_empty(), "a failed pull lists no image");
    let tmp = nodelet_integration::daemon::list_tree(&w.daemon.images_dir().join("tmp"));
    assert!(tmp.is_empty(), "pull leftovers in images/tmp: {tmp:?}");
    // The store still loads after a crash with the disk full.
    w.daemon.kill9();
    w.daemon.spawn().await;
    reconnect(&mut w).await;
    assert!(image_names(&mut w).await.is_empty());
    // Room again: the same pull works and the image runs.
    std::fs::remove_file(&filler).expect("free space");
    w.images
        .pull_image(api::PullImageRequest {
            image: spec(&w.busybox),
            ..Default::default()
        })
        .await
        .expect("pull after freeing space");
    assert_eq!(image_names(&mut w).await, vec![w.busybox.clone()]);
    let mut rt = w.rt.clone();
    let (pod, c) = start_pod(
        &mut rt,
        pod_config(&w, "afterfull"),
        container_config(&w.busybox, "app", "exec sleep 1000"),
        None,
    )
    .await
    .expect("a pod from the image pulled after the disk was full");
    assert_eq!(w.sh(&c, "echo ok").await, "ok\n");
    stop_and_remove(&mut rt, &pod).await.expect("remove");

    // A container whose log file system fills up.
    let logs = SmallFs::mount(&w.logs_dir().join("chatty"), "1m");
    let (pod, c) = start_pod(
        &mut rt,
        pod_config(&w, "chatty"),
        container_config(
            &w.busybox,
            "app",
            "while true; do head -c 30000 /dev/zero | tr '\\0' x; echo; sleep 0.02; done",
        ),
        None,
    )
    .await
    .expect("start the chatty container");
    let deadline = Instant::now() + Duration::from_secs(20);
    let st = loop {
        let st = w.status(&c).await;
        if st.message.contains("No space left on device") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "ContainerStatus never reported the full log file system: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "FAULT full log file system: state {:?}, message {:?}",
        st.state, st.message
    );
    assert_eq!(
        st.state,
        api::ContainerState::ContainerRunning as i32,
        "the container keeps running"
    );
    let infra_log =
        std::fs::read_to_string(w.daemon.state_dir.join(format!("pods/{pod}/infra.log"))).unwrap_or_default();
    assert!(
        infra_log.contains("No space left on device"),
        "the infra's log says why output is lost: {infra_log}"
    );
    // Rotated away (as the kubelet does) and reopened: logging resumes
    // and the message clears.
    std::fs::remove_file(logs.0.join("app/0.log")).expect("rotate");
    w.rt.reopen_container_log(api::ReopenContainerLogRequest {
        container_id: c.clone(),
    })
    .await
    .expect("ReopenContainerLog");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = w.status(&c).await;
        let text = std::fs::read_to_string(logs.0.join("app/0.log")).unwrap_or_default();
        if st.message.is_empty() && text.contains(" F x") {
            break;
        }
        assert!(Instant::now() < deadline, "logging did not resume: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(w.status(&c).await.state, api::ContainerState::ContainerRunning as i32);
    stop_and_remove(&mut rt, &pod).await.expect("remove");
    w.rt.version(api::VersionRequest::default())
        .await
        .expect("the daemon answers");
    drop(logs);
    assert_clean_except(&w, std::slice::from_ref(&root.0)).await;
    assert_no_panic(&w);
    w.daemon.terminate();
    drop(root);
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Set the soft RLIMIT_NOFILE of a process (the hard one stays, so the
/// limit can be raised again).
fn set_nofile(pid: u32, n: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reading into a valid rlimit.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let lim = libc::rlimit {
        rlim_cur: n.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: prlimit with a valid rlimit and no old-value pointer.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Is a cgroup controller available to containers on this host?
fn controller_available(name: &str) -> bool {
    nodelet::runtime::cgroups::Cgroups::detect()
        .map(|c| c.controllers().iter().any(|x| x == name))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_descriptors_and_a_missing_cgroup_controller() {
    let _serial = serial().await;
    let mut w = World::new(&[], "").await;
    let pid = w.daemon.pid().expect("daemon pid");
    let baseline = fd_count(pid);
    // Room for the daemon's own descriptors and a few pods, not for 40.
    let limit = baseline as u64 + 48;
    set_nofile(pid, limit);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut rt = w.rt.clone();
        let pod = pod_config(&w, &format!("fd{i}"));
        let ctr = container_config(&w.busybox, "app", "exec sleep 1000");
        let id_cell = Arc::new(Mutex::new(None));
        let cell = Arc::clone(&id_cell);
        tasks.push(tokio::spawn(async move {
            let r = start_pod(&mut rt, pod, ctr, Some(&cell)).await;
            let id = cell.lock().unwrap().clone();
            (r, id)
        }));
    }
    let mut ok = 0;
    let mut failures = Vec::new();
    let mut pods = Vec::new();
    for t in tasks {
        let (r, id) = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("40 pod starts under a low descriptor limit did not finish within 120 s")
            .expect("task");
        pods.extend(id);
        match r {
            Ok(_) => ok += 1,
            Err(e) => failures.push(e),
        }
    }
    println!(
        "FAULT RLIMIT_NOFILE={limit} (baseline {baseline} fds): {ok} of 40 pods started, {} failed",
        failures.len()
    );
    let mut codes: HashMap<String, usize> = HashMap::new();
    for f in &failures {
        *codes.entry(format!("{:?}: {}", f.code(), f.message())).or_default() += 1;
    }
    for (m, n) in &codes {
        println!("  {n} × {m}");
    }
    assert!(!failures.is_empty(), "the low descriptor limit was never reached");
    for f in &failures {
        assert!(
            f.message().contains("Too many open files") && f.code() == Code::ResourceExhausted,
            "a failure under EMFILE names it: {:?}: {}",
            f.code(),
            f.message()
        );
    }
    // The daemon survives, accepts new connections once load drops, and
    // works again.
    assert!(w
        .daemon
        .pid()
        .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()));
    let mut rt = w.rt.clone();
    for p in &pods {
        // Some were never listed (their start failed and was undone).
        let _ = stop_and_remove(&mut rt, p).await;
    }
    for p in list_pods(&mut rt).await {
        stop_and_remove(&mut rt, &p.id).await.expect("remove after the load");
    }
    assert_fds_settle(pid, baseline, 4, "after the descriptor exhaustion").await;
    reconnect(&mut w).await;
    let mut rt = w.rt.clone();
    let (pod, c) = start_pod(
        &mut rt,
        pod_config(&w, "fd-after"),
        container_config(&w.busybox, "app", "exec sleep 1000"),
        None,
    )
    .await
    .expect("a pod starts once descriptors are free again");
    assert_eq!(w.sh(&c, "echo ok").await, "ok\n");

    // Descriptors exhausted by connections: a new client waits (the
    // daemon does not spin on accept meanwhile) and is served once other
    // clients go.
    let held_limit = fd_count(pid) as u64 + 4;
    set_nofile(pid, held_limit);
    let mut held = Vec::new();
    // Connect until a client is not served: that one waits.
    let mut waiting = loop {
        assert!(held.len() < 12, "the descriptor limit {held_limit} was never reached");
        let socket = w.daemon.socket.clone();
        let mut t = tokio::spawn(async move {
            let (mut r, i) = nodelet_integration::cri::clients(&socket).await.expect("connect");
            let v = r.version(api::VersionRequest::default()).await;
            (r, i, v)
        });
        match tokio::time::timeout(Duration::from_secs(1), &mut t).await {
            Ok(done) => {
                let (r, i, v) = done.expect("task");
                v.expect("Version while descriptors last");
                held.push((r, i));
            }
            Err(_) => break t,
        }
    };
    let cpu0 = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy = (cpu_ticks(pid) - cpu0) as f64 / (2.0 * clock_ticks());
    println!(
        "FAULT descriptors exhausted by connections: daemon CPU while a client waits {:.0}%",
        busy * 100.0
    );
    if waiting.is_finished() {
        let r = (&mut waiting).await.expect("task").2;
        panic!(
            "a connection was served beyond the descriptor limit ({held_limit}, {} open): {r:?}",
            fd_count(pid)
        );
    }
    assert!(
        busy < 0.3,
        "the daemon spins while it cannot accept: {:.0}% CPU",
        busy * 100.0
    );
    let held_n = held.len();
    drop(held);
    // Back to the first low limit, with room for the rest.
    set_nofile(pid, limit);
    tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiting client was not served after other clients left")
        .expect("task")
        .2
        .expect("Version once descriptors are free");
    println!(
        "FAULT descriptors exhausted by connections: {} clients held, the next one served once they left",
        held_n
    );

    // A limit whose controller this host lacks: refused with the reason
    // instead of silently not applied. (hugetlb is not mounted on the
    // hybrid v1 development and CI hosts.)
    if controller_available("hugetlb") {
        println!("FAULT missing controller: hugetlb is available here; nothing to refuse");
    } else {
        let pod_cfg = pod_config(&w, "fd-after");
        let mut cfg = container_config(&w.busybox, "huge", "exec sleep 1000");
        cfg.linux = Some(api::LinuxContainerConfig {
            resources: Some(api::LinuxContainerResources {
                hugepage_limits: vec![api::HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 4 << 20,
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = w
            .create(&pod, &pod_cfg, cfg)
            .await
            .expect_err("a hugetlb limit without hugetlb");
        println!("FAULT missing controller: {:?}: {}", err.code(), err.message());
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(
            err.message().contains("hugetlb cgroup controller is not available"),
            "{}",
            err.message()
        );
        // And on an update of a running container.
        let err =
            w.rt.update_container_resources(api::UpdateContainerResourcesRequest {
                container_id: c.clone(),
                linux: Some(api::LinuxContainerResources {
                    hugepage_limits: vec![api::HugepageLimit {
                        page_size: "2MB".into(),
                        limit: 4 << 20,
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect_err("an update with a hugetlb limit without hugetlb");
        assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
        assert_eq!(w.status(&c).await.state, api::ContainerState::ContainerRunning as i32);
    }
    stop_and_remove(&mut rt, &pod).await.expect("remove");
    assert_clean(&w).await;
    assert_no_panic(&w);
}
