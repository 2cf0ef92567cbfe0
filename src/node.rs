//! The node core: the one internal API both front doors drive (the CRI
//! server now, the static-pod manager later). CRI handlers only translate
//! between protobuf and these calls.

use std::sync::Arc;

use crate::config::Config;
use crate::image::ImageService;
use crate::network::Network;
use crate::runtime::{Runtime, RuntimeError};
use crate::streaming::Streaming;

/// A readiness condition as the CRI `Status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

pub struct Node {
    pub config: Arc<Config>,
    pub images: Arc<ImageService>,
    pub runtime: Arc<Runtime>,
    pub network: Arc<Network>,
    pub stats: Arc<crate::stats::Stats>,
    pub streaming: Arc<Streaming>,
}

impl Node {
    /// Open every store. Unreferenced image content is collected once the
    /// runtime has re-pinned the layers its containers use.
    pub async fn open(config: Arc<Config>) -> Result<Arc<Node>, RuntimeError> {
        let cfg = Arc::clone(&config);
        let images = tokio::task::spawn_blocking(move || ImageService::new(cfg))
            .await
            .map_err(|e| RuntimeError::Internal(e.to_string()))??;
        let network = Arc::new(Network::new(Arc::clone(&config)));
        let runtime = Runtime::open(Arc::clone(&config), Arc::clone(&images), Arc::clone(&network)).await?;
        let im = Arc::clone(&images);
        tokio::task::spawn_blocking(move || im.collect_garbage())
            .await
            .map_err(|e| RuntimeError::Internal(e.to_string()))??;
        let streaming = Streaming::start(config.streaming.clone(), Arc::clone(&runtime))
            .await
            .map_err(|e| RuntimeError::Internal(e.to_string()))?;
        Ok(Arc::new(Node {
            config,
            images,
            runtime,
            network,
            stats: Arc::new(crate::stats::Stats::new()),
            streaming,
        }))
    }

    /// Flush what must reach the disk before the daemon exits.
    pub fn shutdown(&self) {
        if let Err(e) = self.images.store().sync_pending() {
            tracing::warn!("flushing image layers at shutdown: {e}");
        }
    }

    /// Can the runtime create containers? It can once its state
    /// directories are usable.
    pub fn runtime_condition(&self) -> Condition {
        let probe = self.config.state_dir.join(".ready-probe");
        match crate::fsutil::write_atomic(&probe, b"ok", false) {
            Ok(()) => {
                let _ = std::fs::remove_file(&probe);
                Condition {
                    ready: true,
                    reason: String::new(),
                    message: String::new(),
                }
            }
            Err(e) => Condition {
                ready: false,
                reason: "StateDirUnwritable".into(),
                message: format!("cannot write to {}: {e}", self.config.state_dir.display()),
            },
        }
    }

    /// Is this sandbox one the static pod manager runs? (Unknown ids are
    /// not.) An id prefix is resolved as the runtime resolves it.
    pub fn is_static_pod(&self, pod_id: &str) -> bool {
        self.runtime
            .pod(pod_id)
            .is_ok_and(|p| crate::static_pods::is_static(&p.record.config.labels))
    }

    /// Does this container belong to a static pod?
    pub fn is_static_container(&self, container_id: &str) -> bool {
        self.runtime
            .container(container_id)
            .is_ok_and(|c| self.is_static_pod(&c.record.pod_id))
    }

    /// Is pod networking available? What the network (built-in or a
    /// CNI config's plugins) says.
    pub fn network_condition(&self) -> Condition {
        self.network.condition()
    }
}
