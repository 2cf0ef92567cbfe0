//! The on-disk image store under `<root_dir>/images`:
//!
//! ```text
//! images.json              every image record (atomic, fsynced rewrite)
//! blobs/sha256/<hex>       manifests, indexes and configs, by digest
//! layers/<hex>/fs/         one unpacked layer (an overlayfs lowerdir), by diff_id
//! layers/<hex>/layer.json  what unpacking measured
//! tmp/                     work in progress; wiped at start
//! ```
//!
//! Crash safety comes from ordering: a layer is unpacked under `tmp/` and
//! renamed into `layers/` only once verified; blobs are written atomically;
//! an image record is written only after every layer and blob it names is in
//! place. A crash at any point leaves at worst unreferenced layers or blobs,
//! which garbage collection removes.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("image store metadata {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("invalid digest {0:?}: only sha256:<64 lowercase hex> is supported")]
    BadDigest(String),
}

fn io(path: &Path, op: &'static str, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// The hex part of a `sha256:<hex>` digest, validated so it is safe to use
/// as a file name.
pub fn digest_hex(digest: &str) -> Result<&str, StoreError> {
    match digest.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => Err(StoreError::BadDigest(digest.to_string())),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRef {
    /// Digest of the uncompressed tar: names the unpacked directory.
    pub diff_id: String,
    /// Digest of the blob as the registry serves it.
    pub digest: String,
    /// Size of that blob.
    pub size: u64,
    pub media_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// `sha256:<config digest>`, the image ID as containerd reports it.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// The platform manifest.
    pub manifest_digest: String,
    /// The index or manifest list it was chosen from, if any.
    pub index_digest: Option<String>,
    /// Bottom layer first.
    pub layers: Vec<LayerRef>,
    /// Config plus compressed layers, bytes.
    pub size: u64,
    /// Unix time of the pull, nanoseconds.
    pub pulled_at: i64,
}

impl ImageRecord {
    /// Every blob the record depends on.
    fn blobs(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.id.as_str())
            .chain(std::iter::once(self.manifest_digest.as_str()))
            .chain(self.index_digest.as_deref())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerInfo {
    pub diff_id: String,
    pub digest: String,
    pub tar_bytes: u64,
    pub disk_bytes: u64,
    pub inodes: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Db {
    version: u32,
    images: Vec<ImageRecord>,
}

/// What a removal did.
#[derive(Debug, PartialEq, Eq)]
pub enum Removed {
    /// Nothing matched: removal is idempotent.
    Nothing,
    /// One tag went; the image stays under its other names.
    Untagged(String),
    /// The whole image went.
    Image(String),
}

pub struct Store {
    root: PathBuf,
    db: Mutex<Db>,
    /// Layers that must survive garbage collection although no image record
    /// names them yet (pulls in flight) or any more (containers using them),
    /// by owner.
    leases: Mutex<HashMap<String, Vec<String>>>,
    /// Layers committed but not yet flushed to disk (see `commit_layer`).
    unsynced: Mutex<HashSet<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    boot_id: String,
    layers: Vec<String>,
}

/// This boot's ID: it changes at every boot, so a journal from another boot
/// means the machine went down before the layers reached the disk.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Holds a lease until dropped.
pub struct Lease {
    store: Arc<Store>,
    owner: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.store.release(&self.owner);
    }
}

impl Store {
    /// Open (creating) the store, wipe `tmp/`, load the records and drop any
    /// whose layers are gone.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for sub in ["", "blobs/sha256", "layers", "tmp"] {
            let p = root.join(sub);
            fsutil::ensure_dir(&p, 0o700).map_err(|e| io(&p, "create directory", e))?;
        }
        let tmp = root.join("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(|e| io(&tmp, "list", e))? {
            let entry = entry.map_err(|e| io(&tmp, "list", e))?;
            fsutil::remove_all(&entry.path()).map_err(|e| io(&entry.path(), "clean up", e))?;
        }
        Self::recover_journal(root)?;
        let db_path = root.join("images.json");
        let mut db: Db = match std::fs::read(&db_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: db_path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Db::default(),
            Err(e) => return Err(io(&db_path, "read", e)),
        };
        db.version = 1;
        let before = db.images.len();
        db.images.retain(|img| {
            let complete = img.layers.iter().all(|l| {
                digest_hex(&l.diff_id)
                    .map(|h| root.join("layers").join(h).join("fs").is_dir())
                    .unwrap_or(false)
            }) && img.blobs().all(|b| {
                digest_hex(b)
                    .map(|h| root.join("blobs/sha256").join(h).is_file())
                    .unwrap_or(false)
            });
            if !complete {
                tracing::warn!(image = %img.id, tags = ?img.repo_tags, "dropping image record whose content is missing; pull it again");
            }
            complete
        });
        let store = Store {
            root: root.to_path_buf(),
            db: Mutex::new(db),
            leases: Mutex::new(HashMap::new()),
            unsynced: Mutex::new(HashSet::new()),
        };
        if store.db.lock().expect("db lock").images.len() != before {
            store.save(&store.db.lock().expect("db lock"))?;
        }
        Ok(store)
    }

    /// Settle a journal left by the previous run: same boot, the page cache
    /// still holds the layers, flush it; another boot, the listed layers may
    /// be torn, delete them (their images are dropped next and pulled again).
    fn recover_journal(root: &Path) -> Result<(), StoreError> {
        let path = root.join("unsynced.json");
        let journal: Journal = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(j) => j,
                Err(e) => {
                    tracing::warn!("ignoring unreadable {}: {e}", path.display());
                    return fsutil::remove_all(&path).map_err(|e| io(&path, "remove", e));
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&path, "read", e)),
        };
        if journal.boot_id == boot_id() {
            let f = std::fs::File::open(root).map_err(|e| io(root, "open", e))?;
            use std::os::fd::AsRawFd;
            nix::unistd::syncfs(f.as_raw_fd()).map_err(|e| io(root, "syncfs", e.into()))?;
        } else {
            for diff_id in &journal.layers {
                let Ok(hex) = digest_hex(diff_id) else { continue };
                let dir = root.join("layers").join(hex);
                tracing::warn!(layer = %diff_id, "layer was not on disk before the machine went down; deleting it");
                let doomed = root.join("tmp").join(format!("torn-{hex}"));
                if std::fs::rename(&dir, &doomed).is_ok() {
                    fsutil::remove_all(&doomed).map_err(|e| io(&doomed, "remove torn layer", e))?;
                }
            }
        }
        fsutil::remove_all(&path).map_err(|e| io(&path, "remove", e))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn save(&self, db: &Db) -> Result<(), StoreError> {
        let path = self.root.join("images.json");
        let bytes = serde_json::to_vec_pretty(db).expect("image records serialize");
        fsutil::write_atomic(&path, &bytes, true).map_err(|e| io(&path, "write", e))
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.blob_path(digest)?;
        if path.is_file() {
            return Ok(());
        }
        fsutil::write_atomic(&path, bytes, true).map_err(|e| io(&path, "write blob", e))
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest)?;
        std::fs::read(&path).map_err(|e| io(&path, "read blob", e))
    }

    pub fn layer_dir(&self, diff_id: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("layers").join(digest_hex(diff_id)?))
    }

    /// The overlayfs lowerdir of a layer.
    pub fn layer_fs(&self, diff_id: &str) -> Result<PathBuf, StoreError> {
        Ok(self.layer_dir(diff_id)?.join("fs"))
    }

    pub fn has_layer(&self, diff_id: &str) -> bool {
        self.layer_fs(diff_id).map(|p| p.is_dir()).unwrap_or(false)
    }

    /// A fresh private work directory under `tmp/` with an empty `fs/`.
    pub fn new_work_dir(&self) -> Result<PathBuf, StoreError> {
        let dir = self.root.join("tmp").join(fsutil::random_hex(8));
        let fs = dir.join("fs");
        fsutil::ensure_dir(&fs, 0o755).map_err(|e| io(&fs, "create work directory", e))?;
        // The layer root is world-traversable like any rootfs; `tmp/` itself
        // stays 0700.
        std::fs::set_permissions(&fs, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| io(&fs, "chmod", e))?;
        Ok(dir)
    }

    /// Move a verified, unpacked layer from its work directory into place.
    /// Another pull may have committed the same layer meanwhile: then the
    /// work directory is discarded.
    ///
    /// The layer's files are not fsynced here (a `syncfs` costs tens of ms
    /// per pull). Instead the layer is first listed, durably, in the
    /// `unsynced.json` journal with the current boot ID; `sync_pending`
    /// (run right after the pull, off the request path) flushes the file
    /// system and empties the journal. A `kill -9` loses nothing (the page
    /// cache survives it); after a power cut, `open` finds the journal from
    /// an older boot and deletes the listed layers so they are pulled again
    /// instead of being used half-written.
    pub fn commit_layer(&self, work: &Path, info: &LayerInfo) -> Result<(), StoreError> {
        let dest = self.layer_dir(&info.diff_id)?;
        if self.has_layer(&info.diff_id) {
            return fsutil::remove_all(work).map_err(|e| io(work, "discard duplicate layer", e));
        }
        let meta = work.join("layer.json");
        let bytes = serde_json::to_vec_pretty(info).expect("layer info serializes");
        fsutil::write_atomic(&meta, &bytes, false).map_err(|e| io(&meta, "write", e))?;
        self.journal_add(&info.diff_id)?;
        match std::fs::rename(work, &dest) {
            Ok(()) => {
                let layers = self.root.join("layers");
                fsutil::sync_dir(&layers).map_err(|e| io(&layers, "sync", e))?;
                Ok(())
            }
            Err(_) if self.has_layer(&info.diff_id) => {
                fsutil::remove_all(work).map_err(|e| io(work, "discard duplicate layer", e))
            }
            Err(e) => Err(io(&dest, "commit layer", e)),
        }
    }

    fn journal_path(&self) -> PathBuf {
        self.root.join("unsynced.json")
    }

    fn journal_add(&self, diff_id: &str) -> Result<(), StoreError> {
        let mut pending = self.unsynced.lock().expect("journal lock");
        if pending.contains(diff_id) {
            return Ok(());
        }
        pending.insert(diff_id.to_string());
        self.journal_write(&pending)
    }

    fn journal_write(&self, pending: &HashSet<String>) -> Result<(), StoreError> {
        let path = self.journal_path();
        if pending.is_empty() {
            return fsutil::remove_all(&path).map_err(|e| io(&path, "remove", e));
        }
        let journal = Journal {
            boot_id: boot_id(),
            layers: pending.iter().cloned().collect(),
        };
        let bytes = serde_json::to_vec(&journal).expect("journal serializes");
        fsutil::write_atomic(&path, &bytes, true).map_err(|e| io(&path, "write", e))
    }

    /// Flush the file system holding the store and empty the journal of the
    /// layers that were pending when the flush began.
    pub fn sync_pending(&self) -> Result<(), StoreError> {
        let snapshot: HashSet<String> = self.unsynced.lock().expect("journal lock").clone();
        if snapshot.is_empty() {
            return Ok(());
        }
        let f = std::fs::File::open(&self.root).map_err(|e| io(&self.root, "open", e))?;
        {
            use std::os::fd::AsRawFd;
            nix::unistd::syncfs(f.as_raw_fd()).map_err(|e| io(&self.root, "syncfs", e.into()))?;
        }
        let mut pending = self.unsynced.lock().expect("journal lock");
        pending.retain(|d| !snapshot.contains(d));
        self.journal_write(&pending)
    }

    pub fn layer_info(&self, diff_id: &str) -> Option<LayerInfo> {
        let path = self.layer_dir(diff_id).ok()?.join("layer.json");
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Keep `diff_ids` from garbage collection until the lease is dropped.
    pub fn lease(self: &Arc<Self>, owner: String, diff_ids: Vec<String>) -> Lease {
        self.leases.lock().expect("lease lock").insert(owner.clone(), diff_ids);
        Lease {
            store: Arc::clone(self),
            owner,
        }
    }

    /// A lease that outlives any guard (a container's), released by owner.
    pub fn pin(&self, owner: &str, diff_ids: Vec<String>) {
        self.leases
            .lock()
            .expect("lease lock")
            .insert(owner.to_string(), diff_ids);
    }

    pub fn release(&self, owner: &str) {
        self.leases.lock().expect("lease lock").remove(owner);
    }

    /// Record a pulled image under `tag` (if any) and `repo_digest`. A tag
    /// that named another image moves here; that image stays, untagged, as
    /// containerd keeps it.
    pub fn add_image(&self, mut record: ImageRecord) -> Result<ImageRecord, StoreError> {
        let mut db = self.db.lock().expect("db lock");
        for other in db.images.iter_mut().filter(|i| i.id != record.id) {
            other.repo_tags.retain(|t| !record.repo_tags.contains(t));
        }
        let result = match db.images.iter_mut().find(|i| i.id == record.id) {
            Some(existing) => {
                for t in record.repo_tags.drain(..) {
                    if !existing.repo_tags.contains(&t) {
                        existing.repo_tags.push(t);
                    }
                }
                for d in record.repo_digests.drain(..) {
                    if !existing.repo_digests.contains(&d) {
                        existing.repo_digests.push(d);
                    }
                }
                existing.pulled_at = record.pulled_at;
                existing.clone()
            }
            None => {
                db.images.push(record.clone());
                record
            }
        };
        self.save(&db)?;
        Ok(result)
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        self.db.lock().expect("db lock").images.clone()
    }

    pub fn get(&self, id: &str) -> Option<ImageRecord> {
        self.db
            .lock()
            .expect("db lock")
            .images
            .iter()
            .find(|i| i.id == id)
            .cloned()
    }

    /// Apply `f` to the records under the lock and persist when it says so.
    pub fn update<T>(&self, f: impl FnOnce(&mut Vec<ImageRecord>) -> (T, bool)) -> Result<T, StoreError> {
        let mut db = self.db.lock().expect("db lock");
        let (out, changed) = f(&mut db.images);
        if changed {
            self.save(&db)?;
        }
        Ok(out)
    }

    /// Delete layers and blobs no image names and no lease holds.
    /// Returns how many layers and blobs went.
    pub fn gc(&self) -> Result<(usize, usize), StoreError> {
        let db = self.db.lock().expect("db lock");
        let leases = self.leases.lock().expect("lease lock");
        let mut keep_layers: HashSet<String> = HashSet::new();
        let mut keep_blobs: HashSet<String> = HashSet::new();
        for img in &db.images {
            for l in &img.layers {
                if let Ok(h) = digest_hex(&l.diff_id) {
                    keep_layers.insert(h.to_string());
                }
            }
            for b in img.blobs() {
                if let Ok(h) = digest_hex(b) {
                    keep_blobs.insert(h.to_string());
                }
            }
        }
        for ids in leases.values() {
            for id in ids {
                if let Ok(h) = digest_hex(id) {
                    keep_layers.insert(h.to_string());
                }
            }
        }
        let mut removed = (0, 0);
        let layers = self.root.join("layers");
        for entry in std::fs::read_dir(&layers)
            .map_err(|e| io(&layers, "list", e))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep_layers.contains(&name) {
                // Rename first so a crash mid-delete never leaves a
                // half-deleted layer under a valid name.
                let doomed = self.root.join("tmp").join(format!("gc-{name}"));
                std::fs::rename(entry.path(), &doomed).map_err(|e| io(&entry.path(), "gc layer", e))?;
                fsutil::remove_all(&doomed).map_err(|e| io(&doomed, "gc layer", e))?;
                removed.0 += 1;
            }
        }
        let blobs = self.root.join("blobs/sha256");
        for entry in std::fs::read_dir(&blobs).map_err(|e| io(&blobs, "list", e))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep_blobs.contains(&name) {
                fsutil::remove_all(&entry.path()).map_err(|e| io(&entry.path(), "gc blob", e))?;
                removed.1 += 1;
            }
        }
        Ok(removed)
    }

    /// Bytes and inodes the store uses, from what unpacking measured plus the
    /// blob files.
    pub fn usage(&self) -> (u64, u64) {
        let mut bytes = 0;
        let mut inodes = 0;
        let layers = self.root.join("layers");
        if let Ok(rd) = std::fs::read_dir(&layers) {
            for entry in rd.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(info) = self.layer_info(&format!("sha256:{name}")) {
                    bytes += info.disk_bytes;
                    inodes += info.inodes;
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.root.join("blobs/sha256")) {
            for entry in rd.flatten() {
                if let Ok(md) = entry.metadata() {
                    bytes += md.len();
                    inodes += 1;
                }
            }
        }
        (bytes, inodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
    const M: &str = "sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";

    fn put_layer(store: &Store, diff_id: &str) {
        let work = store.new_work_dir().unwrap();
        std::fs::write(work.join("fs/file"), b"x").unwrap();
        store
            .commit_layer(
                &work,
                &LayerInfo {
                    diff_id: diff_id.into(),
                    digest: diff_id.into(),
                    tar_bytes: 1,
                    disk_bytes: 4096,
                    inodes: 2,
                },
            )
            .unwrap();
    }

    fn record(id: &str, layers: &[&str], tag: &str) -> ImageRecord {
        ImageRecord {
            id: id.into(),
            repo_tags: vec![tag.into()],
            repo_digests: vec![],
            manifest_digest: M.into(),
            index_digest: None,
            layers: layers
                .iter()
                .map(|l| LayerRef {
                    diff_id: (*l).into(),
                    digest: (*l).into(),
                    size: 1,
                    media_type: String::new(),
                })
                .collect(),
            size: 2,
            pulled_at: 0,
        }
    }

    #[test]
    fn digests_are_validated_before_becoming_paths() {
        assert!(digest_hex(A).is_ok());
        for bad in ["sha256:../../etc", "sha512:aa", "sha256:AAAA", "nope", &A[..70]] {
            assert!(digest_hex(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn records_survive_reopen_and_gc_keeps_referenced_and_leased() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        put_layer(&store, A);
        put_layer(&store, B);
        put_layer(&store, C);
        store.put_blob(M, b"manifest").unwrap();
        store
            .put_blob(&format!("sha256:{}", "e".repeat(64)), b"config")
            .unwrap();
        let id = format!("sha256:{}", "e".repeat(64));
        store.add_image(record(&id, &[A], "r/x:1")).unwrap();
        let lease = store.lease("pull".into(), vec![B.into()]);
        assert_eq!(store.gc().unwrap(), (1, 0), "only C is unreferenced");
        assert!(store.has_layer(A) && store.has_layer(B) && !store.has_layer(C));
        drop(lease);
        assert_eq!(store.gc().unwrap(), (1, 0));
        assert!(!store.has_layer(B));
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.list().len(), 1);
        assert_eq!(store.list()[0].repo_tags, vec!["r/x:1"]);
        let (bytes, inodes) = store.usage();
        assert!(bytes >= 4096 && inodes >= 2, "{bytes} {inodes}");
    }

    #[test]
    fn records_with_missing_layers_are_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        put_layer(&store, A);
        store.put_blob(M, b"m").unwrap();
        let id = format!("sha256:{}", "e".repeat(64));
        store.put_blob(&id, b"c").unwrap();
        store.add_image(record(&id, &[A], "r/x:1")).unwrap();
        std::fs::remove_dir_all(store.layer_dir(A).unwrap()).unwrap();
        // A leftover work directory from a crashed pull.
        let work = store.new_work_dir().unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(store.list().is_empty());
        assert!(!work.exists(), "tmp/ is wiped at open");
    }

    #[test]
    fn unsynced_layers_survive_a_crash_but_not_a_power_cut() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        put_layer(&store, A);
        put_layer(&store, B);
        store.sync_pending().unwrap();
        assert!(!dir.path().join("unsynced.json").exists());
        put_layer(&store, C);
        let journal = dir.path().join("unsynced.json");
        assert!(journal.exists(), "C is journaled until flushed");
        drop(store);
        // Same boot (a kill -9): the layer stays, the journal is settled.
        let store = Store::open(dir.path()).unwrap();
        assert!(store.has_layer(C));
        assert!(!journal.exists());
        put_layer(&store, C);
        put_layer(&store, &format!("sha256:{}", "f".repeat(64)));
        drop(store);
        // Another boot: the journaled layer may be torn and is deleted.
        let mut j: Journal = serde_json::from_slice(&std::fs::read(&journal).unwrap()).unwrap();
        assert_eq!(j.layers.len(), 1, "C was already on disk: {:?}", j.layers);
        j.boot_id = "another-boot".into();
        std::fs::write(&journal, serde_json::to_vec(&j).unwrap()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!store.has_layer(&format!("sha256:{}", "f".repeat(64))));
        assert!(store.has_layer(A) && store.has_layer(C));
    }

    #[test]
    fn a_tag_moves_to_the_newer_image() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id1 = format!("sha256:{}", "1".repeat(64));
        let id2 = format!("sha256:{}", "2".repeat(64));
        store.add_image(record(&id1, &[], "r/x:latest")).unwrap();
        store.add_image(record(&id2, &[], "r/x:latest")).unwrap();
        assert!(store.get(&id1).unwrap().repo_tags.is_empty());
        assert_eq!(store.get(&id2).unwrap().repo_tags, vec!["r/x:latest"]);
    }
}
