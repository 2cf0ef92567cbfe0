//! Static pods: the Pod manifests in a directory, run and kept running the
//! way the kubelet does, through the same runtime API the CRI server uses.
//!
//! The manager watches the directory (inotify plus a periodic resync) and
//! keeps one worker per valid manifest. A pod's identity is its content
//! (`nodelet.io/manifest-hash` on the sandbox): an edited file is a new pod
//! that replaces the old one; a deleted file stops its pod gracefully and
//! removes it. At start-up the pods a previous daemon left running are
//! adopted when their manifest is unchanged, so a daemon restart never
//! restarts them.

pub mod manifest;
pub mod probe;
pub mod status;
pub mod translate;
pub mod worker;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::node::Node;
use manifest::{Manifest, Rejected};
use worker::{PodView, Settings, Worker};

/// `(namespace, name)`: what the kubelet keys a static pod by.
type Key = (String, String);

struct Entry {
    hash: String,
    view: Arc<Mutex<PodView>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Inner {
    pods: BTreeMap<Key, Entry>,
    rejected: Vec<Rejected>,
    /// Pods being terminated (deleted or replaced manifests).
    terminating: Vec<JoinHandle<()>>,
    synced: bool,
}

/// The static pod manager.
pub struct StaticPods {
    node: Arc<Node>,
    settings: Arc<Settings>,
    dir: PathBuf,
    resync: Duration,
    inner: Mutex<Inner>,
}

/// The labels a static pod's sandbox carries.
pub fn is_static(labels: &HashMap<String, String>) -> bool {
    labels.contains_key(translate::LABEL_STATIC)
}

impl StaticPods {
    /// Start managing `dir`. Returns at once; the first sync runs in the
    /// background (`synced()` says when it is done).
    pub fn start(node: Arc<Node>) -> Arc<StaticPods> {
        let cfg = &node.config;
        let sp = &cfg.static_pods;
        let settings = Arc::new(Settings {
            node_name: node_name(&cfg.node_name),
            backoff_initial: Duration::from_millis(sp.backoff_initial_ms),
            backoff_max: Duration::from_millis(sp.backoff_max_ms),
            backoff_reset: Duration::from_secs(sp.backoff_reset_secs),
            log_root: sp.log_dir.clone(),
            pods_root: cfg.root_dir.join("static-pods"),
            seccomp_root: sp.seccomp_dir.clone(),
            tick: Duration::from_millis(sp.sync_interval_ms),
        });
        let manager = Arc::new(StaticPods {
            dir: cfg.manifest_dir.clone(),
            resync: Duration::from_secs(sp.resync_secs.max(1)),
            node,
            settings,
            inner: Mutex::new(Inner::default()),
        });
        let m = Arc::clone(&manager);
        tokio::spawn(async move { m.run().await });
        manager
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn node_name(&self) -> &str {
        &self.settings.node_name
    }

    /// Has the directory been read once (and running pods adopted)?
    pub fn synced(&self) -> bool {
        self.inner.lock().expect("static pods").synced
    }

    /// Every static pod's current view, by namespace and name.
    pub fn pods(&self) -> Vec<PodView> {
        let inner = self.inner.lock().expect("static pods");
        inner
            .pods
            .values()
            .map(|e| e.view.lock().expect("view").clone())
            .collect()
    }

    /// Manifests that did not parse or validate, with why.
    pub fn rejected(&self) -> Vec<Rejected> {
        self.inner.lock().expect("static pods").rejected.clone()
    }

    /// Stop managing without touching the pods: they keep running and the
    /// next daemon adopts them.
    pub fn shutdown(&self) {
        let mut inner = self.inner.lock().expect("static pods");
        for (_, e) in std::mem::take(&mut inner.pods) {
            e.task.abort();
        }
        for t in inner.terminating.drain(..) {
            t.abort();
        }
    }

    async fn run(self: Arc<Self>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut watcher: Option<(notify::RecommendedWatcher, Option<(u64, u64)>)> = None;
        let mut first = true;
        loop {
            // (Re-)watch the directory when it appears or was replaced.
            let id = dir_identity(&self.dir);
            if watcher.as_ref().is_none_or(|(_, watched)| *watched != id) {
                watcher = self.watch(tx.clone()).map(|w| (w, id));
            }
            let dir = self.dir.clone();
            let node_name = self.settings.node_name.clone();
            let loaded = tokio::task::spawn_blocking(move || manifest::load_dir(&dir, &node_name)).await;
            match loaded {
                Ok((ok, bad)) => {
                    if first {
                        self.adopt_and_reconcile(ok, bad).await;
                        first = false;
                    } else {
                        self.reconcile(ok, bad, HashMap::new());
                    }
                }
                Err(e) => tracing::error!("reading static pod manifests failed: {e}"),
            }
            tokio::select! {
                Some(()) = rx.recv() => {
                    // Let a burst of events (an editor's save) settle.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(self.resync) => {}
            }
        }
    }

    fn watch(&self, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let mut w = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.send(());
            }
        })
        .map_err(|e| tracing::warn!("cannot watch static pod manifests: {e}"))
        .ok()?;
        match w.watch(&self.dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::debug!(dir = %self.dir.display(), "not watching the manifest directory yet: {e}");
                None
            }
        }
    }

    /// The first sync: adopt the pods a previous daemon started from
    /// manifests that are still the same, remove the rest.
    async fn adopt_and_reconcile(self: &Arc<Self>, ok: Vec<Manifest>, bad: Vec<Rejected>) {
        let rt = Arc::clone(&self.node.runtime);
        let mut found: Vec<(String, Key, String, bool, i64)> = rt
            .pods()
            .into_iter()
            .filter(|p| is_static(&p.record.config.labels))
            .map(|p| {
                let l = &p.record.config.labels;
                let get = |k: &str| l.get(k).cloned().unwrap_or_default();
                (
                    p.record.id.clone(),
                    (get(translate::LABEL_POD_NAMESPACE), get(translate::LABEL_POD_NAME)),
                    get(translate::LABEL_HASH),
                    p.ready,
                    p.record.created_at,
                )
            })
            .collect();
        // Newest ready sandbox first: that one is adopted.
        found.sort_by_key(|(_, _, _, ready, created)| (std::cmp::Reverse(*ready), std::cmp::Reverse(*created)));
        let wanted: HashMap<Key, String> = ok.iter().map(|m| (key_of(m), m.hash.clone())).collect();
        let mut adopt: HashMap<Key, String> = HashMap::new();
        let mut stale = Vec::new();
        for (id, key, hash, _, _) in found {
            if wanted.get(&key) == Some(&hash) && !adopt.contains_key(&key) {
                adopt.insert(key, id);
            } else {
                stale.push(id);
            }
        }
        for id in stale {
            tracing::info!(sandbox = %id, "removing a static pod whose manifest is gone or changed");
            let rt = Arc::clone(&rt);
            let _ = rt.stop_pod(&id).await;
            let _ = rt.remove_pod(&id).await;
        }
        self.reconcile(ok, bad, adopt);
    }

    /// Bring the running workers in line with the manifests.
    fn reconcile(self: &Arc<Self>, ok: Vec<Manifest>, bad: Vec<Rejected>, mut adopt: HashMap<Key, String>) {
        let mut inner = self.inner.lock().expect("static pods");
        for r in &bad {
            if !inner.rejected.contains(r) {
                tracing::error!(file = %r.file.display(), "static pod manifest rejected: {}", r.reason);
            }
        }
        inner.rejected = bad;
        inner.terminating.retain(|t| !t.is_finished());
        let keys: Vec<Key> = ok.iter().map(key_of).collect();
        // Deleted (or now invalid) manifests: terminate their pods.
        let gone: Vec<Key> = inner.pods.keys().filter(|k| !keys.contains(k)).cloned().collect();
        for key in gone {
            if let Some(e) = inner.pods.remove(&key) {
                tracing::info!(pod = %key.1, namespace = %key.0, "static pod manifest removed; stopping the pod");
                let _ = e.stop.send(true);
                inner.terminating.push(e.task);
            }
        }
        for m in ok {
            let key = key_of(&m);
            let previous = match inner.pods.get(&key) {
                Some(e) if e.hash == m.hash => {
                    let mut v = e.view.lock().expect("view");
                    v.file = m.file.clone();
                    continue;
                }
                Some(_) => inner.pods.remove(&key),
                None => None,
            };
            if previous.is_some() {
                tracing::info!(pod = %key.1, namespace = %key.0, "static pod manifest changed; replacing the pod");
            } else {
                tracing::info!(pod = %key.1, namespace = %key.0, file = %m.file.display(), "starting static pod");
            }
            let view = Arc::new(Mutex::new(PodView {
                pod: m.pod.clone(),
                file: m.file.clone(),
                phase: "Pending".into(),
                host_ip: worker::host_ip(),
                ..Default::default()
            }));
            let (stop_tx, stop_rx) = watch::channel(false);
            let hash = m.hash.clone();
            let w = Worker::new(
                Arc::clone(&self.node.runtime),
                Arc::clone(&self.node.images),
                Arc::clone(&self.settings),
                m,
                Arc::clone(&view),
                adopt.remove(&key),
            );
            let task = match previous {
                // The old pod goes first (preStop, grace period), as the
                // kubelet kills the old pod before it starts the new one.
                Some(old) => {
                    let _ = old.stop.send(true);
                    let old_task = old.task;
                    tokio::spawn(async move {
                        let _ = old_task.await;
                        w.run(stop_rx).await;
                    })
                }
                None => tokio::spawn(w.run(stop_rx)),
            };
            inner.pods.insert(
                key,
                Entry {
                    hash,
                    view,
                    stop: stop_tx,
                    task,
                },
            );
        }
        inner.synced = true;
    }
}

fn key_of(m: &Manifest) -> Key {
    (
        m.pod.metadata.namespace.clone().unwrap_or_default(),
        m.pod.metadata.name.clone().unwrap_or_default(),
    )
}

fn dir_identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// The configured node name, else the host name, lower-cased as the
/// kubelet does.
pub fn node_name(configured: &str) -> String {
    let name = if configured.is_empty() {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into())
    } else {
        configured.to_string()
    };
    name.to_lowercase()
}
