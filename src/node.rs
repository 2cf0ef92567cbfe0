//! The node core: the one internal API both front doors drive (the CRI
//! server now, the static-pod manager later). CRI handlers only translate
//! between protobuf and these calls.

use std::sync::Arc;

use crate::config::Config;
use crate::image::ImageService;
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
        let runtime = Runtime::open(Arc::clone(&config), Arc::clone(&images)).await?;
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

    /// Is pod networking available? Not until the networking component
    /// exists; say so rather than pretend.
    pub fn network_condition(&self) -> Condition {
        Condition {
            ready: false,
            reason: "NetworkPluginNotReady".into(),
            message: "nodelet has no pod network yet: pods get a network namespace with loopback only".into(),
        }
    }
}
