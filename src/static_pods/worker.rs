//! One static pod kept running the way the kubelet's pod worker does:
//! sandbox, init containers in order (each to success), sidecars
//! (`restartPolicy: Always` init containers) kept running, app containers
//! restarted per the pod's restartPolicy with CrashLoopBackOff, liveness /
//! readiness / startup probes, postStart and preStop hooks, graceful
//! termination. It drives the same runtime API the CRI server does.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use tokio::sync::watch;

use super::manifest::Manifest;
use super::probe::{self, Outcome, Target, Timing};
use super::translate::{self, Qos};
use crate::image::{Credentials, ImageService};
use crate::runtime::{ContainerState, Runtime};

/// Tunables (the kubelet's values by default).
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A container that ran this long starts its back-off afresh.
    pub backoff_reset: Duration,
    pub log_root: PathBuf,
    pub pods_root: PathBuf,
    pub seccomp_root: PathBuf,
    pub tick: Duration,
}

/// What a terminated container left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Terminated {
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub started_at: i64,
    pub finished_at: i64,
    pub container_id: String,
}

/// A container as the status endpoint shows it.
#[derive(Debug, Clone, Default)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: String,
    pub restart_count: u32,
    pub ready: bool,
    pub started: bool,
    /// `Some` while running: the start time.
    pub running_since: Option<i64>,
    pub terminated: Option<Terminated>,
    pub waiting: Option<(String, String)>,
    pub last_terminated: Option<Terminated>,
}

/// The pod as the status endpoint shows it.
#[derive(Debug, Clone, Default)]
pub struct PodView {
    pub pod: Pod,
    pub file: PathBuf,
    pub sandbox_id: String,
    pub phase: String,
    pub pod_ips: Vec<String>,
    pub host_ip: String,
    pub start_time: i64,
    pub qos: String,
    pub initialized: bool,
    pub containers_ready: bool,
    pub init: Vec<ContainerView>,
    pub containers: Vec<ContainerView>,
    pub message: String,
}

/// Probe results shared between probe tasks and the worker.
#[derive(Default)]
struct ProbeState {
    ready: AtomicBool,
    started: AtomicBool,
    /// Set when liveness (or startup) failed its threshold: restart.
    kill: AtomicBool,
    kill_reason: Mutex<String>,
    /// Bumped on every probe verdict (tests and status freshness).
    verdicts: AtomicU32,
}

struct Ctr {
    spec: Container,
    init: bool,
    sidecar: bool,
    id: Option<String>,
    /// The exited instance before `id`, kept (as the kubelet's container
    /// GC keeps one) so `crictl logs --previous`-style debugging works.
    previous: Option<String>,
    restarts: u32,
    /// Back-off step count (reset after a long clean run).
    backoff_steps: u32,
    next_start: Option<Instant>,
    started: Option<Instant>,
    last: Option<Terminated>,
    done: bool,
    waiting: Option<(String, String)>,
    probes: Option<(Arc<ProbeState>, tokio::task::JoinHandle<()>)>,
    image_id: String,
}

impl Ctr {
    fn new(spec: Container, init: bool) -> Ctr {
        let sidecar = init && spec.restart_policy.as_deref() == Some("Always");
        Ctr {
            spec,
            init,
            sidecar,
            id: None,
            previous: None,
            restarts: 0,
            backoff_steps: 0,
            next_start: None,
            started: None,
            last: None,
            done: false,
            waiting: Some(("ContainerCreating".into(), String::new())),
            probes: None,
            image_id: String::new(),
        }
    }

    fn stop_probes(&mut self) {
        if let Some((_, h)) = self.probes.take() {
            h.abort();
        }
    }
}

pub struct Worker {
    rt: Arc<Runtime>,
    images: Arc<ImageService>,
    settings: Arc<Settings>,
    m: Manifest,
    view: Arc<Mutex<PodView>>,
    sandbox: Option<String>,
    sandbox_attempt: u32,
    init: Vec<Ctr>,
    app: Vec<Ctr>,
    qos: Qos,
    restart_policy: String,
    grace: Duration,
    started_at: i64,
    volumes: translate::VolumePaths,
    terminal: bool,
}

impl Worker {
    pub fn new(
        rt: Arc<Runtime>,
        images: Arc<ImageService>,
        settings: Arc<Settings>,
        m: Manifest,
        view: Arc<Mutex<PodView>>,
        adopt: Option<String>,
    ) -> Worker {
        let spec = m.pod.spec.clone().unwrap_or_default();
        let qos = translate::qos(&spec);
        Worker {
            init: spec
                .init_containers
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|c| Ctr::new(c, true))
                .collect(),
            app: spec
                .containers
                .clone()
                .into_iter()
                .map(|c| Ctr::new(c, false))
                .collect(),
            restart_policy: spec.restart_policy.clone().unwrap_or_else(|| "Always".into()),
            grace: Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64),
            qos,
            rt,
            images,
            settings,
            m,
            view,
            sandbox: adopt,
            sandbox_attempt: 0,
            started_at: 0,
            volumes: HashMap::new(),
            terminal: false,
        }
    }

    fn pod_name(&self) -> String {
        self.m.pod.metadata.name.clone().unwrap_or_default()
    }

    fn paths(&self) -> translate::Paths {
        translate::pod_paths(&self.m.pod, &self.settings.log_root, &self.settings.pods_root)
    }

    /// Keep the pod running until `stop` says otherwise, then terminate it.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        if let Some(id) = self.sandbox.clone() {
            self.adopt(&id);
        }
        loop {
            if *stop.borrow() {
                break;
            }
            if let Err(e) = self.sync().await {
                tracing::warn!(pod = %self.pod_name(), "{e}");
                self.view.lock().expect("view").message = e;
            }
            self.publish();
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(self.settings.tick) => {}
            }
        }
        self.terminate().await;
    }

    /// Take over a pod a previous daemon started from the same manifest:
    /// its containers and restart counts.
    fn adopt(&mut self, sandbox: &str) {
        let containers = self.rt.containers();
        for c in self.init.iter_mut().chain(self.app.iter_mut()) {
            let mut mine: Vec<_> = containers
                .iter()
                .filter(|v| v.record.pod_id == sandbox)
                .filter(|v| v.record.config.metadata.as_ref().map(|m| m.name.as_str()) == Some(c.spec.name.as_str()))
                .collect();
            mine.sort_by_key(|v| std::cmp::Reverse(v.record.config.metadata.as_ref().map(|m| m.attempt).unwrap_or(0)));
            let latest = mine.first();
            c.previous = mine.get(1).map(|v| v.record.id.clone());
            if let Some(v) = latest {
                c.restarts = v.record.config.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
                c.id = Some(v.record.id.clone());
                c.image_id = v.record.image_id.clone();
                if v.state == ContainerState::Exited && c.init && !c.sidecar && v.status.exit_code == Some(0) {
                    c.done = true;
                }
                if v.state == ContainerState::Running {
                    c.started = Some(Instant::now());
                }
            }
        }
        if let Ok(p) = self.rt.pod(sandbox) {
            self.view.lock().expect("view").pod_ips = p.record.network.clone().map(|n| n.ips).unwrap_or_default();
            self.started_at = p.record.created_at;
            self.sandbox_attempt = p.record.config.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
        }
        tracing::info!(pod = %self.pod_name(), sandbox, "adopted a running static pod");
    }

    fn backoff(&self, steps: u32) -> Duration {
        let d = self
            .settings
            .backoff_initial
            .saturating_mul(1u32 << steps.min(16).saturating_sub(1));
        d.min(self.settings.backoff_max)
    }

    async fn sync(&mut self) -> Result<(), String> {
        if self.terminal {
            return Ok(());
        }
        self.ensure_sandbox().await?;
        let sandbox = self.sandbox.clone().ok_or("no sandbox")?;

        // Init containers, in order. Sidecars count as done once started.
        let mut initialized = true;
        for i in 0..self.init.len() {
            if self.init[i].done && !self.init[i].sidecar {
                continue;
            }
            self.step(true, i, &sandbox).await;
            let c = &self.init[i];
            let sidecar_up =
                c.sidecar && c.id.is_some() && c.probes.as_ref().is_none_or(|(p, _)| p.started.load(Ordering::SeqCst));
            if !(c.done || sidecar_up) {
                initialized = false;
                break;
            }
        }
        if initialized {
            for i in 0..self.app.len() {
                self.step(false, i, &sandbox).await;
            }
        }
        // restartPolicy Never/OnFailure: the pod can finish.
        if self.restart_policy != "Always" && initialized {
            let finished: Vec<Option<i32>> = self
                .app
                .iter()
                .map(|c| {
                    if c.id.is_none() {
                        None
                    } else {
                        c.last.as_ref().map(|t| t.exit_code)
                    }
                })
                .collect();
            let all_done = self
                .app
                .iter()
                .all(|c| c.next_start.is_none() && c.last.is_some() && self.exited(c));
            if all_done && finished.iter().all(|f| f.is_some()) {
                self.terminal = true;
            }
        }
        Ok(())
    }

    fn exited(&self, c: &Ctr) -> bool {
        c.id.as_ref()
            .and_then(|id| self.rt.container(id).ok())
            .is_none_or(|v| v.state == ContainerState::Exited)
    }

    /// Drive one container one step: start it, notice it exited, restart
    /// it when due, act on probe verdicts.
    async fn step(&mut self, init: bool, i: usize, sandbox: &str) {
        let policy = self.restart_policy.clone();
        let view = {
            let c = if init { &self.init[i] } else { &self.app[i] };
            c.id.as_ref().and_then(|id| self.rt.container(id).ok())
        };
        let now = Instant::now();
        match view {
            Some(v) if v.state == ContainerState::Running => {
                let kill = {
                    let c = if init { &self.init[i] } else { &self.app[i] };
                    c.probes
                        .as_ref()
                        .filter(|(p, _)| p.kill.swap(false, Ordering::SeqCst))
                        .map(|(p, _)| p.kill_reason.lock().expect("reason").clone())
                };
                if let Some(reason) = kill {
                    let id = v.record.id.clone();
                    tracing::info!(pod = %self.pod_name(), container = %v.record.id, "{reason}; restarting");
                    let c = if init { &mut self.init[i] } else { &mut self.app[i] };
                    c.waiting = Some(("Killing".into(), reason));
                    let spec = c.spec.clone();
                    self.stop_container(&spec, &id, self.grace).await;
                }
                let c = if init { &mut self.init[i] } else { &mut self.app[i] };
                c.waiting = None;
                c.last = c.last.take();
            }
            Some(v) if v.state == ContainerState::Created => {}
            Some(v) => {
                // Exited: record it once, then decide.
                let t = Terminated {
                    exit_code: v.status.exit_code.unwrap_or(-1),
                    reason: v.status.reason.clone(),
                    message: v.status.message.clone(),
                    started_at: v.status.started_at,
                    finished_at: v.status.finished_at,
                    container_id: v.record.id.clone(),
                };
                let backoff_reset = self.settings.backoff_reset;
                let c = if init { &mut self.init[i] } else { &mut self.app[i] };
                if c.probes.is_some() {
                    c.stop_probes();
                }
                let fresh = c.last.as_ref().map(|l| &l.container_id) != Some(&t.container_id);
                if fresh {
                    if c.started.is_some_and(|s| now.duration_since(s) >= backoff_reset) {
                        c.backoff_steps = 0;
                    }
                    c.last = Some(t.clone());
                }
                let succeeded = t.exit_code == 0;
                if c.init && !c.sidecar {
                    if succeeded {
                        c.done = true;
                        return;
                    }
                    if policy == "Never" {
                        self.terminal = true;
                        return;
                    }
                } else if !c.sidecar && (policy == "Never" || (policy == "OnFailure" && succeeded)) {
                    return;
                }
                if fresh {
                    c.backoff_steps += 1;
                    let steps = c.backoff_steps;
                    let delay = self.backoff(steps);
                    let c = if init { &mut self.init[i] } else { &mut self.app[i] };
                    c.next_start = Some(now + delay);
                    c.waiting = Some((
                        "CrashLoopBackOff".into(),
                        format!(
                            "back-off {}s restarting failed container={} pod={}",
                            delay.as_secs(),
                            c.spec.name,
                            self.m.pod.metadata.name.clone().unwrap_or_default()
                        ),
                    ));
                }
                let c = if init { &self.init[i] } else { &self.app[i] };
                if c.next_start.is_some_and(|t| now >= t) {
                    self.start(init, i, sandbox, true).await;
                }
            }
            None => {
                let c = if init { &self.init[i] } else { &self.app[i] };
                if c.next_start.is_none_or(|t| now >= t) {
                    self.start(init, i, sandbox, c.id.is_some()).await;
                }
            }
        }
    }

    /// Create and start the container (a restart bumps the count), run its
    /// postStart hook, start its probes.
    async fn start(&mut self, init: bool, i: usize, sandbox: &str, restart: bool) {
        let pod_ips = self.view.lock().expect("view").pod_ips.clone();
        let host_network = self.m.pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
        let host_ip = host_ip();
        let paths = self.paths();
        let etc_hosts = paths.pod_dir.join("etc-hosts");
        let (spec, attempt, doomed) = {
            let c = if init { &mut self.init[i] } else { &mut self.app[i] };
            if restart && c.id.is_some() {
                c.restarts += 1;
            }
            // Keep only the latest exited container per name, as the
            // kubelet's container GC does: the one being replaced stays,
            // the one before it goes.
            let doomed = match c.id.clone() {
                Some(old) if c.previous.as_ref() != Some(&old) => c.previous.replace(old),
                _ => None,
            };
            (c.spec.clone(), c.restarts, doomed)
        };
        if let Some(doomed) = doomed {
            let _ = self.rt.remove_container(&doomed).await;
        }
        let result = async {
            let image = spec.image.clone().unwrap_or_default();
            self.ensure_image(&spec, &image).await?;
            let ctx = translate::Context {
                pod: &self.m.pod,
                hash: &self.m.hash,
                pod_ip: pod_ips.first().cloned().unwrap_or_else(|| {
                    if host_network {
                        host_ip.clone()
                    } else {
                        String::new()
                    }
                }),
                pod_ips: pod_ips.clone(),
                host_ip: host_ip.clone(),
                volumes: &self.volumes,
                qos: self.qos,
                node_memory: translate::node_memory(),
                etc_hosts: (!host_network).then(|| etc_hosts.clone()),
                pod_dir: &paths.pod_dir,
                seccomp_root: &self.settings.seccomp_root,
            };
            let config =
                translate::container_config(&ctx, &spec, attempt).map_err(|e| ("CreateContainerConfigError", e))?;
            let id = self
                .rt
                .create_container(sandbox, config)
                .await
                .map_err(|e| ("CreateContainerError", e.to_string()))?;
            let view = self.rt.container(&id).ok();
            if let Err(e) = self.rt.start_container(&id).await {
                return Err::<(String, String), _>(("RunContainerError", format!("{id}: {e}")));
            }
            Ok((id, view.map(|v| v.record.image_id).unwrap_or_default()))
        }
        .await;
        let target_host = if host_network {
            "127.0.0.1".to_string()
        } else {
            pod_ips.first().cloned().unwrap_or_default()
        };
        let (delay, now) = (self.backoff(1), Instant::now());
        let c = if init { &mut self.init[i] } else { &mut self.app[i] };
        match result {
            Ok((id, image_id)) => {
                c.id = Some(id.clone());
                c.image_id = image_id;
                c.next_start = None;
                c.started = Some(now);
                c.waiting = None;
                let target = Target {
                    container_id: id.clone(),
                    host: target_host,
                };
                c.probes = Some(spawn_probes(Arc::clone(&self.rt), c.spec.clone(), target.clone()));
                if let Some(hook) = c.spec.lifecycle.as_ref().and_then(|l| l.post_start.clone()) {
                    let spec = c.spec.clone();
                    if let Outcome::Failure(why) = probe::run_hook(&self.rt, &spec, &target, &hook, self.grace).await {
                        tracing::warn!(pod = %self.pod_name(), container = %spec.name, "postStart hook failed: {why}");
                        let c = if init { &mut self.init[i] } else { &mut self.app[i] };
                        c.waiting = Some(("FailedPostStartHook".into(), why));
                        let _ = self.rt.stop_container(&id, 0).await;
                    }
                }
            }
            Err((reason, message)) => {
                tracing::warn!(pod = ?self.m.pod.metadata.name, container = %c.spec.name, "{reason}: {message}");
                c.backoff_steps += 1;
                c.next_start = Some(
                    now + delay
                        .saturating_mul(1u32 << c.backoff_steps.min(16).saturating_sub(1))
                        .min(self.settings.backoff_max),
                );
                c.waiting = Some((reason.to_string(), message));
            }
        }
    }

    /// Pull per `imagePullPolicy` (default: `Always` for `:latest` or no
    /// tag, else `IfNotPresent`).
    async fn ensure_image(&self, spec: &Container, image: &str) -> Result<(), (&'static str, String)> {
        let tagless = !image.rsplit('/').next().unwrap_or(image).contains(':') && !image.contains('@');
        let default = if tagless || image.ends_with(":latest") {
            "Always"
        } else {
            "IfNotPresent"
        };
        let policy = spec.image_pull_policy.as_deref().unwrap_or(default);
        let present = self.images.resolve(image).map(|r| r.is_some()).unwrap_or(false);
        match policy {
            "Never" if !present => Err((
                "ErrImageNeverPull",
                format!("image {image} is not present and imagePullPolicy is Never"),
            )),
            "Never" => Ok(()),
            "IfNotPresent" if present => Ok(()),
            _ => self
                .images
                .pull(image, &Credentials::default())
                .await
                .map(|_| ())
                .map_err(|e| ("ErrImagePull", e.to_string())),
        }
    }

    /// Make sure a ready sandbox exists; a sandbox that died takes its
    /// containers with it and is recreated, as the kubelet does.
    async fn ensure_sandbox(&mut self) -> Result<(), String> {
        if let Some(id) = &self.sandbox {
            if self.rt.pod(id).map(|p| p.ready).unwrap_or(false) {
                return Ok(());
            }
            tracing::warn!(pod = %self.pod_name(), sandbox = %id, "the pod sandbox is gone; recreating it");
            let _ = self.rt.remove_pod(id).await;
            self.sandbox = None;
            self.sandbox_attempt += 1;
            for c in self.init.iter_mut().chain(self.app.iter_mut()) {
                c.stop_probes();
                c.id = None;
                c.done = false;
                c.restarts += 1;
            }
        }
        let paths = self.paths();
        let pod = self.m.pod.clone();
        let pod_dir = paths.pod_dir.clone();
        self.volumes = tokio::task::spawn_blocking(move || translate::prepare_volumes(&pod, &pod_dir))
            .await
            .map_err(|e| e.to_string())??;
        let config = translate::sandbox_config(
            &self.m.pod,
            &self.m.file,
            &self.m.hash,
            self.sandbox_attempt,
            &paths,
            // The runtime places it under the node's QoS tier from the
            // pod-level resources, as it does for CRI pods.
            "",
        );
        for dir in [&paths.log_dir, &paths.pod_dir] {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        let id = match self.rt.run_pod(config, "").await {
            Ok(id) => id,
            Err(e) => {
                // The next try uses a fresh attempt number, so a sandbox
                // half-made by this one cannot block it by name.
                self.sandbox_attempt += 1;
                return Err(format!("creating the pod sandbox: {e}"));
            }
        };
        self.sandbox = Some(id.clone());
        self.started_at = crate::unix_nanos();
        let ips = self
            .rt
            .pod(&id)
            .ok()
            .and_then(|p| p.record.network.map(|n| n.ips))
            .unwrap_or_default();
        self.view.lock().expect("view").pod_ips = ips.clone();
        let hosts = translate::etc_hosts(&self.m.pod, ips.first().map(String::as_str).unwrap_or(""));
        crate::fsutil::write_atomic(&paths.pod_dir.join("etc-hosts"), hosts.as_bytes(), false)
            .map_err(|e| format!("write etc-hosts: {e}"))?;
        Ok(())
    }

    /// preStop, then the stop signal, then SIGKILL after what is left of the
    /// grace period.
    async fn stop_container(&self, spec: &Container, id: &str, grace: Duration) {
        let start = Instant::now();
        if let Some(hook) = spec.lifecycle.as_ref().and_then(|l| l.pre_stop.clone()) {
            let host_network = self.m.pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
            let host = if host_network {
                "127.0.0.1".to_string()
            } else {
                self.view
                    .lock()
                    .expect("view")
                    .pod_ips
                    .first()
                    .cloned()
                    .unwrap_or_default()
            };
            let target = Target {
                container_id: id.to_string(),
                host,
            };
            if let Outcome::Failure(why) = probe::run_hook(&self.rt, spec, &target, &hook, grace).await {
                tracing::warn!(pod = %self.pod_name(), container = %spec.name, "preStop hook failed: {why}");
            }
        }
        let left = grace.saturating_sub(start.elapsed());
        let _ = self
            .rt
            .stop_container(id, left.as_secs().max(if grace.is_zero() { 0 } else { 1 }) as i64)
            .await;
    }

    /// Graceful termination: app containers (preStop, signal, grace), then
    /// sidecars in reverse order, then the sandbox and the pod's volumes.
    async fn terminate(&mut self) {
        tracing::info!(pod = %self.pod_name(), "terminating static pod");
        let running = |rt: &Runtime, c: &Ctr| {
            c.id.as_ref()
                .filter(|id| rt.container(id).is_ok_and(|v| v.state == ContainerState::Running))
                .cloned()
        };
        let mut stops = Vec::new();
        for c in self.app.iter_mut() {
            c.stop_probes();
        }
        for c in &self.app {
            if let Some(id) = running(&self.rt, c) {
                stops.push((c.spec.clone(), id));
            }
        }
        let grace = self.grace;
        futures::future::join_all(stops.iter().map(|(spec, id)| self.stop_container(spec, id, grace))).await;
        for c in self.init.iter_mut().rev() {
            c.stop_probes();
        }
        let sidecars: Vec<(Container, String)> = self
            .init
            .iter()
            .rev()
            .filter_map(|c| running(&self.rt, c).map(|id| (c.spec.clone(), id)))
            .collect();
        for (spec, id) in sidecars {
            self.stop_container(&spec, &id, grace).await;
        }
        if let Some(id) = self.sandbox.take() {
            let _ = self.rt.stop_pod(&id).await;
            let _ = self.rt.remove_pod(&id).await;
        }
        let pod_dir = self.paths().pod_dir;
        let _ = tokio::task::spawn_blocking(move || {
            if !translate::unpin_sub_paths(&pod_dir) {
                // Deleting through a bind that is still mounted would
                // delete the volume's files: keep the directory.
                return;
            }
            for e in std::fs::read_dir(pod_dir.join("volumes"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = crate::runtime::mounts::unmount(&e.path());
            }
            let _ = crate::fsutil::remove_all(&pod_dir);
        })
        .await;
    }

    /// Publish the pod's state for the status endpoint.
    fn publish(&self) {
        let view_of = |c: &Ctr| -> ContainerView {
            let v = c.id.as_ref().and_then(|id| self.rt.container(id).ok());
            let running = v.as_ref().filter(|v| v.state == ContainerState::Running);
            let probes = c.probes.as_ref().map(|(p, _)| p);
            let started = running.is_some() && probes.is_none_or(|p| p.started.load(Ordering::SeqCst));
            let exited = v.as_ref().filter(|v| v.state == ContainerState::Exited);
            // Waiting to be restarted (CrashLoopBackOff): as the kubelet
            // shows it, the state is `waiting` and the exit is `lastState`.
            let backing_off = exited.is_some() && c.waiting.is_some();
            ContainerView {
                name: c.spec.name.clone(),
                image: c.spec.image.clone().unwrap_or_default(),
                image_id: c.image_id.clone(),
                container_id: c.id.clone().map(|id| format!("nodelet://{id}")).unwrap_or_default(),
                restart_count: c.restarts,
                ready: started && probes.is_none_or(|p| p.ready.load(Ordering::SeqCst)),
                started,
                running_since: running.map(|v| v.status.started_at),
                terminated: exited.filter(|_| !backing_off).map(|v| Terminated {
                    exit_code: v.status.exit_code.unwrap_or(-1),
                    reason: v.status.reason.clone(),
                    message: v.status.message.clone(),
                    started_at: v.status.started_at,
                    finished_at: v.status.finished_at,
                    container_id: v.record.id.clone(),
                }),
                waiting: if running.is_some() { None } else { c.waiting.clone() },
                last_terminated: c
                    .last
                    .clone()
                    .filter(|l| backing_off || Some(&l.container_id) != c.id.as_ref() || running.is_some()),
            }
        };
        let init: Vec<ContainerView> = self.init.iter().map(view_of).collect();
        let containers: Vec<ContainerView> = self.app.iter().map(view_of).collect();
        let initialized = self.init.iter().all(|c| c.done || c.sidecar && c.id.is_some());
        let containers_ready = initialized && containers.iter().all(|c| c.ready);
        let any_running = containers.iter().any(|c| c.running_since.is_some());
        let phase = if self.terminal {
            let failed = self
                .app
                .iter()
                .any(|c| c.last.as_ref().is_some_and(|t| t.exit_code != 0))
                || self
                    .init
                    .iter()
                    .any(|c| !c.done && !c.sidecar && c.last.as_ref().is_some_and(|t| t.exit_code != 0));
            if failed {
                "Failed"
            } else {
                "Succeeded"
            }
        } else if initialized
            && (any_running
                || containers
                    .iter()
                    .all(|c| c.terminated.is_some() || c.last_terminated.is_some()))
        {
            // As the kubelet counts: a container waiting to restart after an
            // exit has run; only one that never ran keeps the pod Pending.
            "Running"
        } else {
            "Pending"
        };
        let mut v = self.view.lock().expect("view");
        v.pod = self.m.pod.clone();
        v.file = self.m.file.clone();
        v.sandbox_id = self.sandbox.clone().unwrap_or_default();
        v.phase = phase.into();
        v.host_ip = host_ip();
        v.start_time = self.started_at;
        v.qos = self.qos.as_str().into();
        v.initialized = initialized;
        v.containers_ready = containers_ready;
        v.init = init;
        v.containers = containers;
    }
}

/// Run a container's probes until the task is aborted.
fn spawn_probes(rt: Arc<Runtime>, spec: Container, target: Target) -> (Arc<ProbeState>, tokio::task::JoinHandle<()>) {
    let state = Arc::new(ProbeState::default());
    state.started.store(spec.startup_probe.is_none(), Ordering::SeqCst);
    state.ready.store(spec.readiness_probe.is_none(), Ordering::SeqCst);
    let s = Arc::clone(&state);
    let handle = tokio::spawn(async move {
        let mut tasks = Vec::new();
        if let Some(p) = spec.startup_probe.clone() {
            let (rt, spec, target, s) = (Arc::clone(&rt), spec.clone(), target.clone(), Arc::clone(&s));
            tasks.push(tokio::spawn(async move {
                let t = Timing::of(&p);
                tokio::time::sleep(t.initial_delay).await;
                let mut fails = 0;
                loop {
                    match probe::run_probe(&rt, &spec, &target, &p).await {
                        Outcome::Success => {
                            s.started.store(true, Ordering::SeqCst);
                            s.verdicts.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Outcome::Failure(why) => {
                            fails += 1;
                            s.verdicts.fetch_add(1, Ordering::SeqCst);
                            if fails >= t.failure_threshold {
                                *s.kill_reason.lock().expect("reason") = format!("Startup probe failed: {why}");
                                s.kill.store(true, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                    tokio::time::sleep(t.period).await;
                }
            }));
        }
        for (kind, probe) in [
            ("Liveness", spec.liveness_probe.clone()),
            ("Readiness", spec.readiness_probe.clone()),
        ] {
            let Some(p) = probe else { continue };
            let (rt, spec, target, s) = (Arc::clone(&rt), spec.clone(), target.clone(), Arc::clone(&s));
            tasks.push(tokio::spawn(async move {
                // Liveness and readiness wait for the startup probe.
                while !s.started.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let t = Timing::of(&p);
                tokio::time::sleep(t.initial_delay).await;
                let (mut fails, mut oks) = (0u32, 0u32);
                loop {
                    let outcome = probe::run_probe(&rt, &spec, &target, &p).await;
                    s.verdicts.fetch_add(1, Ordering::SeqCst);
                    match outcome {
                        Outcome::Success => {
                            fails = 0;
                            oks += 1;
                            if kind == "Readiness" && oks >= t.success_threshold {
                                s.ready.store(true, Ordering::SeqCst);
                            }
                        }
                        Outcome::Failure(why) => {
                            oks = 0;
                            fails += 1;
                            if fails >= t.failure_threshold {
                                if kind == "Liveness" {
                                    *s.kill_reason.lock().expect("reason") = format!("Liveness probe failed: {why}");
                                    s.kill.store(true, Ordering::SeqCst);
                                    return;
                                }
                                s.ready.store(false, Ordering::SeqCst);
                            }
                        }
                    }
                    tokio::time::sleep(t.period).await;
                }
            }));
        }
        // Dropping this task (abort) must stop the probes with it.
        let guard = AbortOnDrop(tasks);
        futures::future::pending::<()>().await;
        drop(guard);
    });
    (state, handle)
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The node's address: the first global IPv4 address of an interface
/// that is up (what the kubelet reports as hostIP).
pub fn host_ip() -> String {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return String::new();
    };
    let mut candidates: Vec<std::net::Ipv4Addr> = addrs
        .filter(|a| a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP))
        .filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|sin| sin.ip())))
        .filter(|ip| !ip.is_loopback())
        .collect();
    candidates.sort_by_key(|ip| ip.is_private());
    candidates
        .first()
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "127.0.0.1".into())
}
