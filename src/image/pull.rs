//! Pulling an image: manifest (or index → the host's platform) → config →
//! layers, then the record.
//!
//! Layers are fetched in parallel (up to `images.max_concurrent_downloads`
//! per pull) and unpacked while they stream in: the network side hashes the
//! compressed bytes and counts them against the descriptor's size, a
//! blocking task decompresses and unpacks into a private work directory and
//! hashes the tar (the diff_id). The layer is moved into the store only when
//! size, digest and diff_id all match, so nothing unverified is ever used.
//! A layer wanted by several pulls at once is downloaded once: the download
//! runs as its own task and every puller awaits the same shared result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest, Sha256};

use super::reference;
use super::registry::{
    self, Credentials, Endpoint, RegistryError, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
};
use super::store::{digest_hex, ImageRecord, LayerInfo, LayerRef};
use super::unpack::{unpack_layer, UnpackError};
use super::{ImageError, ImageService};

type LayerResult = Result<(), Arc<ImageError>>;

/// Layer downloads in flight, by diff_id.
#[derive(Default)]
pub struct Inflight {
    layers: Mutex<HashMap<String, Shared<BoxFuture<'static, LayerResult>>>>,
}

/// How far past an unpack failure we keep downloading to tell a corrupt
/// transfer (digest mismatch: try another endpoint) from hostile content.
const DRAIN_AFTER_FAILURE: u64 = 64 << 20;

pub async fn pull(svc: &Arc<ImageService>, image: &str, creds: &Credentials) -> Result<ImageRecord, ImageError> {
    let r = reference::parse(image)?;
    let eps = registry::endpoints(&svc.config, &r.registry, creds);
    let limits = &svc.config.images;
    let shown = r.to_string();
    let repo = r.repository.clone();

    let (first, top) = first_ok(&shown, &eps, 0, |ep| {
        svc.registry
            .fetch_manifest(ep, &repo, r.fetch_key(), limits.max_manifest_bytes)
    })
    .await?;
    let eps = Arc::new(preferring(&eps, first));

    let (manifest, index) = if is_index(&top.media_type) {
        let chosen = select_from_index(&shown, &top.bytes)?;
        let (_, m) = first_ok(&shown, &eps, 0, |ep| {
            svc.registry
                .fetch_manifest(ep, &repo, &chosen, limits.max_manifest_bytes)
        })
        .await?;
        if is_index(&m.media_type) {
            return Err(bad(&shown, "an index inside an index is not supported".into()));
        }
        (m, Some(top))
    } else {
        (top, None)
    };
    let parsed = parse_manifest(&shown, &manifest.media_type, &manifest.bytes)?;
    let config_digest = parsed.config().digest().to_string();
    let config_size = parsed.config().size();
    let config_bytes = match svc.store.read_blob(&config_digest) {
        Ok(b) => b,
        Err(_) => {
            first_ok(&shown, &eps, 0, |ep| {
                svc.registry
                    .fetch_small_blob(ep, &repo, &config_digest, config_size, limits.max_config_bytes)
            })
            .await?
            .1
        }
    };
    let layers = layer_refs(&shown, &parsed, &config_bytes)?;

    let lease = svc.store.lease(
        format!("pull:{}", crate::fsutil::random_hex(8)),
        layers.iter().map(|l| l.diff_id.clone()).collect(),
    );
    futures::stream::iter(
        layers
            .iter()
            .cloned()
            .map(|layer| fetch_layer_shared(svc, Arc::clone(&eps), repo.clone(), layer, shown.clone())),
    )
    .buffer_unordered(limits.max_concurrent_downloads)
    .try_collect::<Vec<()>>()
    .await?;

    let top_digest = index
        .as_ref()
        .map(|i| i.digest.clone())
        .unwrap_or_else(|| manifest.digest.clone());
    let record = ImageRecord {
        id: config_digest.clone(),
        repo_tags: r.tag_ref().into_iter().collect(),
        repo_digests: vec![r.digest_ref(&top_digest)],
        manifest_digest: manifest.digest.clone(),
        index_digest: index.as_ref().map(|i| i.digest.clone()),
        size: config_size + layers.iter().map(|l| l.size).sum::<u64>(),
        layers,
        pulled_at: crate::unix_nanos(),
    };
    let store = Arc::clone(&svc.store);
    let record = tokio::task::spawn_blocking(move || {
        store.put_blob(&config_digest, &config_bytes)?;
        store.put_blob(&manifest.digest, &manifest.bytes)?;
        if let Some(i) = &index {
            store.put_blob(&i.digest, &i.bytes)?;
        }
        store.add_image(record)
    })
    .await
    .map_err(|e| ImageError::Internal(format!("recording the image failed: {e}")))??;
    drop(lease);
    // Flush the new layers to disk off the request path (see
    // `Store::commit_layer`).
    let store = Arc::clone(&svc.store);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = store.sync_pending() {
            tracing::warn!("flushing pulled layers: {e}");
        }
    });
    tracing::info!(image = %shown, id = %record.id, "image pulled");
    Ok(record)
}

/// The manifest an index points to for this host's platform (its digest).
/// Pure parsing of registry content: the fuzzing entry point for indexes.
pub fn select_from_index(image: &str, bytes: &[u8]) -> Result<String, ImageError> {
    let index: ImageIndex =
        serde_json::from_slice(bytes).map_err(|e| bad(image, format!("image index does not parse: {e}")))?;
    choose_platform(image, &index)
}

/// An image manifest of `media_type`, parsed, its config digest checked.
/// Pure parsing of registry content: the fuzzing entry point for manifests.
pub fn parse_manifest(image: &str, media_type: &str, bytes: &[u8]) -> Result<ImageManifest, ImageError> {
    if media_type != MEDIA_OCI_MANIFEST && media_type != MEDIA_DOCKER_MANIFEST {
        return Err(bad(
            image,
            format!("unsupported manifest media type {media_type:?} (Docker schema 2 and OCI manifests are)"),
        ));
    }
    let parsed: ImageManifest =
        serde_json::from_slice(bytes).map_err(|e| bad(image, format!("image manifest does not parse: {e}")))?;
    digest_hex(parsed.config().digest().as_ref()).map_err(|e| bad(image, format!("config: {e}")))?;
    Ok(parsed)
}

/// The layers of `manifest` paired with the diff_ids of its image config,
/// every media type and digest checked. Pure parsing of registry content:
/// the fuzzing entry point for image configs.
pub fn layer_refs(image: &str, manifest: &ImageManifest, config_bytes: &[u8]) -> Result<Vec<LayerRef>, ImageError> {
    let config: ImageConfiguration =
        serde_json::from_slice(config_bytes).map_err(|e| bad(image, format!("image config does not parse: {e}")))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(bad(
            image,
            format!(
                "manifest has {} layers but the config lists {} diff_ids",
                manifest.layers().len(),
                diff_ids.len()
            ),
        ));
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (desc, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let media_type = desc.media_type().to_string();
        check_layer_media_type(image, &media_type)?;
        let digest = desc.digest().to_string();
        digest_hex(&digest).map_err(|e| bad(image, format!("layer: {e}")))?;
        digest_hex(diff_id).map_err(|e| bad(image, format!("layer diff_id: {e}")))?;
        layers.push(LayerRef {
            diff_id: diff_id.clone(),
            digest,
            size: desc.size(),
            media_type,
        });
    }
    Ok(layers)
}

fn bad(image: &str, message: String) -> ImageError {
    ImageError::BadContent {
        image: image.to_string(),
        message,
    }
}

fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

fn check_layer_media_type(image: &str, media_type: &str) -> Result<(), ImageError> {
    const OK: [&str; 5] = [
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar",
    ];
    if OK.contains(&media_type) {
        return Ok(());
    }
    let why = if media_type.contains("foreign") || media_type.contains("nondistributable") {
        "foreign (non-distributable) layers are not supported"
    } else {
        "unsupported layer media type"
    };
    Err(bad(image, format!("{why}: {media_type}")))
}

/// `eps` with `first` moved to the front: once an endpoint has served the
/// manifest, the blobs come from it too unless it fails.
fn preferring(eps: &[Endpoint], first: usize) -> Vec<Endpoint> {
    let mut v = Vec::with_capacity(eps.len());
    v.push(eps[first].clone());
    v.extend(
        eps.iter()
            .enumerate()
            .filter(|(i, _)| *i != first)
            .map(|(_, e)| e.clone()),
    );
    v
}

/// Try `f` on each endpoint from `start` until one succeeds. The error
/// lists every endpoint's answer.
async fn first_ok<'a, T, F, Fut>(
    image: &str,
    eps: &'a [Endpoint],
    start: usize,
    mut f: F,
) -> Result<(usize, T), ImageError>
where
    F: FnMut(&'a Endpoint) -> Fut,
    Fut: std::future::Future<Output = Result<T, RegistryError>>,
{
    let mut attempts: Vec<RegistryError> = Vec::new();
    for (i, ep) in eps.iter().enumerate().skip(start) {
        match f(ep).await {
            Ok(v) => return Ok((i, v)),
            Err(e) => {
                tracing::debug!(endpoint = %ep.base, error = %e, "registry endpoint failed");
                attempts.push(e)
            }
        }
    }
    Err(registry_failure(image, attempts))
}

fn registry_failure(image: &str, mut attempts: Vec<RegistryError>) -> ImageError {
    let text = attempts.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
    let last = attempts.pop().unwrap_or(RegistryError::Protocol {
        url: String::new(),
        message: "no registry endpoint to try".into(),
    });
    ImageError::Registry {
        image: image.to_string(),
        attempts: text,
        last: Box::new(last),
    }
}

/// GOARCH names for this host.
pub fn host_platform() -> (&'static str, &'static str, Option<&'static str>) {
    let (arch, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "powerpc64" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        other => (other, None),
    };
    ("linux", arch, variant)
}

fn choose_platform(image: &str, index: &ImageIndex) -> Result<String, ImageError> {
    let (os, arch, variant) = host_platform();
    let mut fallback = None;
    let mut available = Vec::new();
    for m in index.manifests() {
        let Some(p) = m.platform() else {
            if index.manifests().len() == 1 {
                fallback = Some(m.digest().to_string());
            }
            continue;
        };
        let (p_os, p_arch, p_variant) = (p.os().to_string(), p.architecture().to_string(), p.variant().clone());
        available.push(match &p_variant {
            Some(v) => format!("{p_os}/{p_arch}/{v}"),
            None => format!("{p_os}/{p_arch}"),
        });
        if p_os != os || p_arch != arch {
            continue;
        }
        match (&p_variant, variant) {
            (Some(pv), Some(hv)) if pv == hv => return Ok(m.digest().to_string()),
            (Some(_), Some(_)) => {}
            _ => {
                if fallback.is_none() {
                    fallback = Some(m.digest().to_string())
                }
            }
        }
    }
    fallback.ok_or_else(|| ImageError::NoPlatform {
        image: image.to_string(),
        platform: match variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        },
        available: if available.is_empty() {
            "no platforms".into()
        } else {
            available.join(", ")
        },
    })
}

async fn fetch_layer_shared(
    svc: &Arc<ImageService>,
    eps: Arc<Vec<Endpoint>>,
    repo: String,
    layer: LayerRef,
    image: String,
) -> Result<(), ImageError> {
    if svc.store.has_layer(&layer.diff_id) {
        return Ok(());
    }
    let shared = {
        let mut map = svc.inflight.layers.lock().expect("inflight lock");
        match map.get(&layer.diff_id) {
            Some(f) => f.clone(),
            None => {
                let key = layer.diff_id.clone();
                let task_svc = Arc::clone(svc);
                // The map lock is held until the entry is in, so the task's
                // removal below always finds it.
                let handle = tokio::spawn(async move {
                    let result = fetch_layer(&task_svc, &eps, &repo, &layer, &image)
                        .await
                        .map_err(Arc::new);
                    task_svc
                        .inflight
                        .layers
                        .lock()
                        .expect("inflight lock")
                        .remove(&layer.diff_id);
                    result
                });
                let fut = async move {
                    handle
                        .await
                        .unwrap_or_else(|e| Err(Arc::new(ImageError::Internal(format!("layer task failed: {e}")))))
                }
                .boxed()
                .shared();
                map.insert(key, fut.clone());
                fut
            }
        }
    };
    shared.await.map_err(|e| match Arc::try_unwrap(e) {
        Ok(e) => e,
        Err(shared) => ImageError::Shared(shared),
    })
}

enum LayerFailure {
    /// This endpoint failed; another may do better.
    Endpoint(RegistryError),
    /// The content itself is refused or the store failed.
    Fatal(ImageError),
}

async fn fetch_layer(
    svc: &Arc<ImageService>,
    eps: &[Endpoint],
    repo: &str,
    layer: &LayerRef,
    image: &str,
) -> Result<(), ImageError> {
    if svc.store.has_layer(&layer.diff_id) {
        return Ok(());
    }
    let mut attempts = Vec::new();
    for ep in eps {
        match download_and_unpack(svc, ep, repo, layer, image).await {
            Ok(()) => return Ok(()),
            Err(LayerFailure::Endpoint(e)) => {
                tracing::debug!(endpoint = %ep.base, layer = %layer.digest, error = %e, "layer download failed");
                attempts.push(e)
            }
            Err(LayerFailure::Fatal(e)) => return Err(e),
        }
    }
    Err(registry_failure(image, attempts))
}

/// Feeds the blocking unpacker from the download.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    buf: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.buf = b,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        Ok(n)
    }
}

async fn download_and_unpack(
    svc: &Arc<ImageService>,
    ep: &Endpoint,
    repo: &str,
    layer: &LayerRef,
    image: &str,
) -> Result<(), LayerFailure> {
    let (resp, url) = svc
        .registry
        .open_blob(ep, repo, &layer.digest)
        .await
        .map_err(LayerFailure::Endpoint)?;
    if let Some(len) = resp.content_length() {
        if len != layer.size {
            return Err(LayerFailure::Endpoint(RegistryError::SizeMismatch {
                url,
                expected: layer.size,
                actual: len,
            }));
        }
    }
    let store = Arc::clone(&svc.store);
    let work = tokio::task::spawn_blocking(move || store.new_work_dir())
        .await
        .map_err(|e| LayerFailure::Fatal(ImageError::Internal(e.to_string())))?
        .map_err(|e| LayerFailure::Fatal(e.into()))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(32);
    let fs_dir = work.join("fs");
    let max = svc.config.images.max_layer_bytes;
    let unpacker =
        tokio::task::spawn_blocking(move || unpack_layer(ChannelReader { rx, buf: Bytes::new() }, &fs_dir, max));

    let read_timeout = svc.registry.read_timeout();
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut tx = Some(tx);
    let mut drained: u64 = 0;
    let mut gave_up = false;
    let mut transfer_error = None;
    let mut stream = resp.bytes_stream();
    loop {
        let chunk = match tokio::time::timeout(read_timeout, stream.next()).await {
            Err(_) => {
                transfer_error = Some(RegistryError::Timeout {
                    url: url.clone(),
                    secs: read_timeout.as_secs(),
                });
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                transfer_error = Some(registry::transport_error(&url, e, read_timeout));
                break;
            }
            Ok(Some(Ok(c))) => c,
        };
        received += chunk.len() as u64;
        crate::metrics::image_pull_bytes(chunk.len());
        if received > layer.size {
            transfer_error = Some(RegistryError::SizeMismatch {
                url: url.clone(),
                expected: layer.size,
                actual: received,
            });
            break;
        }
        hasher.update(&chunk);
        match &tx {
            Some(t) => {
                if t.send(chunk).await.is_err() {
                    // The unpacker stopped: keep reading a while to learn
                    // whether the transfer or the content is to blame.
                    tx = None;
                }
            }
            None => {
                drained += chunk.len() as u64;
                if drained > DRAIN_AFTER_FAILURE {
                    gave_up = true;
                    break;
                }
            }
        }
    }
    drop(tx);
    let unpacked = unpacker.await;
    let fail = |f: LayerFailure| {
        let work = work.clone();
        async move {
            let _ = tokio::task::spawn_blocking(move || crate::fsutil::remove_all(&work)).await;
            Err(f)
        }
    };
    let unpacked = match unpacked {
        Ok(r) => r,
        Err(e) => {
            return fail(LayerFailure::Fatal(ImageError::Internal(format!(
                "unpack task failed: {e}"
            ))))
            .await
        }
    };
    if let Some(e) = transfer_error {
        return fail(LayerFailure::Endpoint(e)).await;
    }
    if !gave_up {
        if received != layer.size {
            return fail(LayerFailure::Endpoint(RegistryError::SizeMismatch {
                url,
                expected: layer.size,
                actual: received,
            }))
            .await;
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != layer.digest {
            return fail(LayerFailure::Endpoint(RegistryError::DigestMismatch {
                url,
                expected: layer.digest.clone(),
                actual,
            }))
            .await;
        }
    }
    let summary = match unpacked {
        Ok(s) => s,
        Err(e) => {
            return fail(LayerFailure::Fatal(ImageError::Unpack {
                image: image.to_string(),
                digest: layer.digest.clone(),
                source: e,
            }))
            .await
        }
    };
    if summary.diff_id != layer.diff_id {
        return fail(LayerFailure::Fatal(ImageError::Unpack {
            image: image.to_string(),
            digest: layer.digest.clone(),
            source: UnpackError::Refused {
                entry: String::new(),
                reason: format!(
                    "uncompressed content hashes to {}, the image config says {}",
                    summary.diff_id, layer.diff_id
                ),
            },
        }))
        .await;
    }
    let info = LayerInfo {
        diff_id: summary.diff_id,
        digest: layer.digest.clone(),
        tar_bytes: summary.tar_bytes,
        disk_bytes: summary.disk_bytes,
        inodes: summary.inodes,
    };
    let store = Arc::clone(&svc.store);
    let work2 = work.clone();
    match tokio::task::spawn_blocking(move || store.commit_layer(&work2, &info)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => fail(LayerFailure::Fatal(e.into())).await,
        Err(e) => fail(LayerFailure::Fatal(ImageError::Internal(e.to_string()))).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(json: &str) -> ImageIndex {
        serde_json::from_str(json).unwrap()
    }

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn platform_choice_prefers_the_host() {
        let (_, arch, _) = host_platform();
        let other = if arch == "amd64" { "arm64" } else { "amd64" };
        let idx = index(&format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_OCI_INDEX}","manifests":[
              {{"mediaType":"{MEDIA_OCI_MANIFEST}","digest":"{D1}","size":1,"platform":{{"os":"linux","architecture":"{other}"}}}},
              {{"mediaType":"{MEDIA_OCI_MANIFEST}","digest":"{D2}","size":1,"platform":{{"os":"linux","architecture":"{arch}"}}}}]}}"#
        ));
        assert_eq!(choose_platform("x", &idx).unwrap(), D2);
        let idx = index(&format!(
            r#"{{"schemaVersion":2,"manifests":[
              {{"mediaType":"{MEDIA_OCI_MANIFEST}","digest":"{D1}","size":1,"platform":{{"os":"linux","architecture":"{other}"}}}}]}}"#
        ));
        let err = choose_platform("x", &idx).unwrap_err().to_string();
        assert!(
            err.contains(&format!("linux/{other}")) && err.contains(&format!("linux/{arch}")),
            "{err}"
        );
    }

    #[test]
    fn layer_media_types() {
        assert!(check_layer_media_type("x", "application/vnd.docker.image.rootfs.diff.tar.gzip").is_ok());
        assert!(check_layer_media_type("x", "application/vnd.oci.image.layer.v1.tar+zstd").is_ok());
        let e = check_layer_media_type("x", "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip").unwrap_err();
        assert!(e.to_string().contains("foreign"));
        assert!(check_layer_media_type("x", "text/html").is_err());
    }
}
