//! Images: the internal API behind the CRI ImageService (and, later, the
//! static-pod manager and container creation).
//!
//! - `reference`: parsing and Docker-Hub normalisation of image names;
//! - `registry`: the distribution-API client;
//! - `pull`: manifest → platform → config → layers, streamed, verified,
//!   unpacked, shared between concurrent pulls;
//! - `unpack`: one layer tar into an overlayfs lowerdir;
//! - `store`: the content-addressed store and the image records.

pub mod pull;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

use std::sync::Arc;

use oci_spec::image::ImageConfiguration;

use crate::config::Config;
pub use registry::Credentials;
use registry::{RegistryClient, RegistryError};
pub use store::{ImageRecord, Removed, Store, StoreError};
use unpack::UnpackError;

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {image:?}: {reason}")]
    InvalidReference { image: String, reason: String },
    #[error("pulling {image}: {attempts}")]
    Registry {
        image: String,
        /// Every endpoint's answer, mirrors first.
        attempts: String,
        /// The answer of the last endpoint tried (the registry itself).
        last: Box<RegistryError>,
    },
    #[error("pulling {image}: {message}")]
    BadContent { image: String, message: String },
    #[error("pulling {image}: no manifest for {platform} in the index (it has: {available})")]
    NoPlatform {
        image: String,
        platform: String,
        available: String,
    },
    #[error("pulling {image}: layer {digest}: {source}")]
    Unpack {
        image: String,
        digest: String,
        source: UnpackError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("image {0:?} not found")]
    NotFound(String),
    /// The same failure seen by several concurrent pulls of one layer.
    #[error(transparent)]
    Shared(Arc<ImageError>),
    #[error("{0}")]
    Internal(String),
}

/// A resolved image with its parsed config, for container creation and
/// status.
#[derive(Debug, Clone)]
pub struct ImageDetails {
    pub record: ImageRecord,
    pub config: ImageConfiguration,
}

pub struct ImageService {
    config: Arc<Config>,
    store: Arc<Store>,
    registry: RegistryClient,
    inflight: pull::Inflight,
}

impl ImageService {
    /// Open the store under the configured root.
    pub fn new(config: Arc<Config>) -> Result<Arc<ImageService>, ImageError> {
        let store = Arc::new(Store::open(&config.image_root())?);
        let registry = RegistryClient::new(config.images.connect_timeout(), config.images.read_timeout())
            .map_err(|e| ImageError::Internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(Arc::new(ImageService {
            config,
            store,
            registry,
            inflight: pull::Inflight::default(),
        }))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Pull `image` (any reference form) and return its record.
    pub async fn pull(self: &Arc<Self>, image: &str, creds: &Credentials) -> Result<ImageRecord, ImageError> {
        let start = std::time::Instant::now();
        let result = pull::pull(self, image, creds).await;
        crate::metrics::image_pull_done(start.elapsed(), result.is_ok());
        result
    }

    /// Find an image by ID (`sha256:<hex>` or bare hex), tag reference
    /// (`busybox`, `docker.io/library/busybox:1.36`), or digest reference.
    pub fn resolve(&self, query: &str) -> Result<Option<ImageRecord>, ImageError> {
        let images = self.store.list();
        let query = query.trim();
        if query.is_empty() {
            return Err(ImageError::InvalidReference {
                image: String::new(),
                reason: "empty image reference".into(),
            });
        }
        let as_id = if query.len() == 64 && query.bytes().all(|b| b.is_ascii_hexdigit()) {
            Some(format!("sha256:{query}"))
        } else if query.starts_with("sha256:") {
            Some(query.to_string())
        } else {
            None
        };
        if let Some(id) = as_id {
            return Ok(images.into_iter().find(|i| i.id == id));
        }
        let r = reference::parse(query)?;
        if let Some(digest) = &r.digest {
            let name = r.name();
            let wanted = format!("{name}@{digest}");
            return Ok(images.into_iter().find(|i| {
                i.repo_digests.contains(&wanted)
                    || (i.manifest_digest == *digest
                        && i.repo_digests
                            .iter()
                            .any(|d| d.split('@').next() == Some(name.as_str())))
            }));
        }
        let tag = r.tag_ref().expect("a reference without digest has a tag");
        Ok(images.into_iter().find(|i| i.repo_tags.contains(&tag)))
    }

    /// The record with its parsed config.
    pub fn details(&self, record: ImageRecord) -> Result<ImageDetails, ImageError> {
        let bytes = self.store.read_blob(&record.id)?;
        let config: ImageConfiguration = serde_json::from_slice(&bytes).map_err(|e| ImageError::BadContent {
            image: record.id.clone(),
            message: format!("stored image config does not parse: {e}"),
        })?;
        Ok(ImageDetails { record, config })
    }

    /// The image config exactly as stored (for verbose status).
    pub fn config_json(&self, record: &ImageRecord) -> Result<serde_json::Value, ImageError> {
        let bytes = self.store.read_blob(&record.id)?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        self.store.list()
    }

    /// Remove by ID (the whole image), digest reference (the whole image) or
    /// tag (that tag; the image goes with its last tag). Idempotent.
    pub fn remove(&self, query: &str) -> Result<Removed, ImageError> {
        let Some(found) = self.resolve(query)? else {
            return Ok(Removed::Nothing);
        };
        let by_tag = {
            let q = query.trim();
            !(q.starts_with("sha256:") || q.len() == 64 && q.bytes().all(|b| b.is_ascii_hexdigit()))
                && reference::parse(q).map(|r| r.digest.is_none()).unwrap_or(false)
        };
        let tag = if by_tag {
            reference::parse(query)?.tag_ref()
        } else {
            None
        };
        let removed = self.store.update(|images| {
            let Some(pos) = images.iter().position(|i| i.id == found.id) else {
                return (Removed::Nothing, false);
            };
            if let Some(tag) = &tag {
                let img = &mut images[pos];
                img.repo_tags.retain(|t| t != tag);
                if !img.repo_tags.is_empty() {
                    return (Removed::Untagged(tag.clone()), true);
                }
            }
            let img = images.remove(pos);
            (Removed::Image(img.id), true)
        })?;
        if let Removed::Image(id) = &removed {
            let (layers, blobs) = self.store.gc()?;
            tracing::info!(image = %id, layers, blobs, "image removed");
        }
        Ok(removed)
    }

    /// Bytes and inodes used by the image store, and where it lives.
    pub fn fs_usage(&self) -> (u64, u64, std::path::PathBuf) {
        let (bytes, inodes) = self.store.usage();
        (bytes, inodes, self.store.root().to_path_buf())
    }

    /// Drop unreferenced content (at start, after leases are re-taken).
    pub fn collect_garbage(&self) -> Result<(), ImageError> {
        let (layers, blobs) = self.store.gc()?;
        if layers + blobs > 0 {
            tracing::info!(layers, blobs, "removed unreferenced image content");
        }
        Ok(())
    }
}
