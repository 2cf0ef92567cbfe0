//! nodelet's test images, built from Debian's busybox into OCI image
//! layouts that `skopeo copy oci:<layout>:<tag> docker://…` pushes into a
//! local registry.
//!
//! Everything is deterministic (fixed mtimes, owners and PRNG seeds), so the
//! same busybox binary gives the same digests on every build. Layers are
//! written with tar-rs rather than umoci because the tests need layers umoci
//! does not make: an opaque directory, zstd and uncompressed layers,
//! multi-platform indexes, and deliberately hostile tars.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

/// Where Debian's busybox-static installs the binary.
pub const BUSYBOX: &str = "/bin/busybox";
const MTIME: u64 = 1_700_000_000;
const CREATED: &str = "2023-11-14T22:13:20Z";
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
        }
    }

    fn compress(self, tar: &[u8]) -> anyhow::Result<Vec<u8>> {
        Ok(match self {
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
                e.write_all(tar)?;
                e.finish()?
            }
            Compression::Zstd => zstd::encode_all(tar, 3)?,
            Compression::None => tar.to_vec(),
        })
    }
}

/// GOARCH of this host.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// A layer tar under construction.
pub struct Layer {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        Layer { tar }
    }

    fn header(kind: EntryType, mode: u32, uid: u64, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_size(size);
        h.set_mtime(MTIME);
        h
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = Self::header(EntryType::Directory, mode, 0, 0);
        self.tar.append_data(&mut h, path, &[][..]).expect("in-memory tar");
        self
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.file_owned(path, mode, 0, data)
    }

    pub fn file_owned(&mut self, path: &str, mode: u32, uid: u64, data: &[u8]) -> &mut Self {
        let mut h = Self::header(EntryType::Regular, mode, uid, data.len() as u64);
        self.tar.append_data(&mut h, path, data).expect("in-memory tar");
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(EntryType::Symlink, 0o777, 0, 0);
        self.tar.append_link(&mut h, path, target).expect("in-memory tar");
        self
    }

    /// A hard link. `mode` should be the target's: tar readers ignore it,
    /// but containerd's applier chmods the link, i.e. the target's inode.
    pub fn hardlink(&mut self, path: &str, target: &str, mode: u32) -> &mut Self {
        let mut h = Self::header(EntryType::Link, mode, 0, 0);
        self.tar.append_link(&mut h, path, target).expect("in-memory tar");
        self
    }

    /// An OCI whiteout for `path` (`dir/.wh.name`).
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&wh, 0o644, b"")
    }

    /// Mark `dir` opaque: lower layers' contents of it are hidden.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{}/.wh..wh..opq", dir.trim_end_matches('/')), 0o644, b"")
    }

    /// An entry whose name is written as given, bypassing tar-rs's checks
    /// (for hostile layers).
    pub fn raw(&mut self, name: &[u8], kind: EntryType, link: Option<&[u8]>, data: &[u8]) -> &mut Self {
        let mut h = Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            if let Some(l) = link {
                old.linkname[..l.len()].copy_from_slice(l);
            }
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_cksum();
        self.tar.append(&h, data).expect("in-memory tar");
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.tar.into_inner().expect("in-memory tar")
    }
}

/// The busybox root filesystem: the static binary, a hard link per applet
/// (so `/bin/ls` is a real file, see shared notes), users and groups.
pub fn busybox_rootfs(layer: &mut Layer) -> anyhow::Result<()> {
    let busybox = std::fs::read(BUSYBOX).with_context(|| format!("{BUSYBOX} (install busybox-static)"))?;
    let out = std::process::Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .context("busybox --list-full")?;
    if !out.status.success() {
        bail!("busybox --list-full failed");
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty() && l != "bin/busybox")
        .collect();
    applets.sort();
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "home", "tmp", "var", "var/run", "proc", "sys",
        "dev", "run",
    ] {
        let mode = if d == "tmp" { 0o1777 } else { 0o755 };
        layer.dir(&format!("{d}/"), mode);
    }
    layer.dir("home/app/", 0o755);
    layer.file("bin/busybox", 0o755, &busybox);
    for a in &applets {
        layer.hardlink(a, "bin/busybox", 0o755);
    }
    layer.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    layer.file(
        "etc/group",
        0o644,
        b"root:x:0:\napp:x:1000:\nextra:x:2000:app\nnogroup:x:65534:\n",
    );
    Ok(())
}

/// An OCI image layout being written.
pub struct Layout {
    dir: PathBuf,
    refs: Vec<Value>,
}

/// A blob's descriptor.
#[derive(Debug, Clone)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Desc {
    fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// One image to write: its layers and config.
pub struct ImageDef {
    pub layers: Vec<(Vec<u8>, Compression)>,
    /// The `config` section (Env, Cmd, User, ...).
    pub config: Value,
    pub arch: String,
}

impl ImageDef {
    pub fn new(layers: Vec<(Vec<u8>, Compression)>, config: Value) -> ImageDef {
        ImageDef {
            layers,
            config,
            arch: host_arch().to_string(),
        }
    }
}

impl Layout {
    pub fn create(dir: &Path) -> anyhow::Result<Layout> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        Ok(Layout {
            dir: dir.to_path_buf(),
            refs: Vec::new(),
        })
    }

    pub fn put_blob(&mut self, media_type: &str, bytes: &[u8]) -> anyhow::Result<Desc> {
        let hex = hex::encode(Sha256::digest(bytes));
        std::fs::write(self.dir.join("blobs/sha256").join(&hex), bytes)?;
        Ok(Desc {
            media_type: media_type.to_string(),
            digest: format!("sha256:{hex}"),
            size: bytes.len() as u64,
        })
    }

    /// Write an image's layers, config and manifest; return the manifest.
    pub fn put_image(&mut self, def: &ImageDef) -> anyhow::Result<Desc> {
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        for (tar, compression) in &def.layers {
            diff_ids.push(format!("sha256:{}", hex::encode(Sha256::digest(tar))));
            let blob = compression.compress(tar)?;
            layer_descs.push(self.put_blob(compression.media_type(), &blob)?.json());
        }
        let config = json!({
            "created": CREATED,
            "architecture": def.arch,
            "os": "linux",
            "config": def.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": def.layers.iter().map(|_| json!({"created": CREATED, "created_by": "nodelet-test-images"})).collect::<Vec<_>>(),
        });
        let config_desc = self.put_blob(MEDIA_CONFIG, &serde_json::to_vec(&config)?)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": config_desc.json(),
            "layers": layer_descs,
        });
        self.put_blob(MEDIA_MANIFEST, &serde_json::to_vec(&manifest)?)
    }

    /// An index over several platform manifests.
    pub fn put_index(&mut self, manifests: &[(Desc, &str)]) -> anyhow::Result<Desc> {
        let entries: Vec<Value> = manifests
            .iter()
            .map(|(d, arch)| {
                let mut v = d.json();
                v["platform"] = json!({"os": "linux", "architecture": arch});
                v
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries});
        self.put_blob(MEDIA_INDEX, &serde_json::to_vec(&index)?)
    }

    /// Name `desc` as `tag` in the layout's index.json.
    pub fn tag(&mut self, tag: &str, desc: &Desc) {
        let mut v = desc.json();
        v["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        self.refs.push(v);
    }

    pub fn finish(self) -> anyhow::Result<PathBuf> {
        std::fs::write(self.dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let index = json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": self.refs});
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
        Ok(self.dir)
    }
}

/// One image to push: `skopeo copy [--all] [--format v2s2] oci:<layout>:<tag> docker://<reg>/<repo>:<tag>`.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub repo: String,
    pub tag: String,
    pub layout: PathBuf,
    /// The tag names an index: push every platform.
    pub all: bool,
    /// Convert to Docker schema 2 media types while pushing.
    pub docker_format: bool,
}

fn image(repo: &str, tag: &str, layout: &Path) -> TestImage {
    TestImage {
        repo: repo.into(),
        tag: tag.into(),
        layout: layout.to_path_buf(),
        all: false,
        docker_format: false,
    }
}

fn default_config() -> Value {
    json!({"Env": [PATH_ENV], "Cmd": ["sh"], "WorkingDir": "/"})
}

fn busybox_layer() -> anyhow::Result<Vec<u8>> {
    let mut l = Layer::new();
    busybox_rootfs(&mut l)?;
    Ok(l.finish())
}

/// The images the functional tests use.
///
/// - `test/busybox`, `library/busybox`: busybox, one gzip layer (~1 MB);
/// - `test/busybox-docker`: the same in Docker schema 2 media types;
/// - `test/layers`: gzip + zstd + uncompressed layers with a whiteout, an
///   opaque directory and a hard link;
/// - `test/multiarch`: an index with this host's platform and two others;
/// - `test/nonroot` (`User: 1000:1000`), `test/named-user` (`User: app`);
/// - `test/volume`: a `VOLUME /data` and `STOPSIGNAL SIGUSR1`.
pub fn build_standard(out: &Path) -> anyhow::Result<Vec<TestImage>> {
    let base = busybox_layer()?;
    let mut images = Vec::new();

    let dir = out.join("busybox");
    let mut l = Layout::create(&dir)?;
    let m = l.put_image(&ImageDef::new(
        vec![(base.clone(), Compression::Gzip)],
        default_config(),
    ))?;
    l.tag("latest", &m);
    let mut cfg = default_config();
    cfg["User"] = json!("1000:1000");
    let m = l.put_image(&ImageDef::new(vec![(base.clone(), Compression::Gzip)], cfg))?;
    l.tag("nonroot", &m);
    let mut cfg = default_config();
    cfg["User"] = json!("app");
    let m = l.put_image(&ImageDef::new(vec![(base.clone(), Compression::Gzip)], cfg))?;
    l.tag("named-user", &m);
    let mut cfg = default_config();
    cfg["Volumes"] = json!({"/data": {}});
    cfg["StopSignal"] = json!("SIGUSR1");
    let m = l.put_image(&ImageDef::new(vec![(base.clone(), Compression::Gzip)], cfg))?;
    l.tag("volume", &m);
    let layout = l.finish()?;
    images.push(image("test/busybox", "latest", &layout));
    images.push(image("library/busybox", "latest", &layout));
    images.push(TestImage {
        docker_format: true,
        ..image("test/busybox-docker", "latest", &layout)
    });
    images.push(TestImage {
        tag: "nonroot".into(),
        ..image("test/nonroot", "latest", &layout)
    });
    images.push(TestImage {
        tag: "named-user".into(),
        ..image("test/named-user", "latest", &layout)
    });
    images.push(TestImage {
        tag: "volume".into(),
        ..image("test/volume", "latest", &layout)
    });

    let dir = out.join("layers");
    let mut l = Layout::create(&dir)?;
    let mut one = Layer::new();
    busybox_rootfs(&mut one)?;
    one.file("etc/gone", 0o644, b"gone\n")
        .dir("etc/odir/", 0o755)
        .file("etc/odir/a", 0o644, b"a\n")
        .file("etc/motd", 0o644, b"one\n");
    let mut two = Layer::new();
    two.whiteout("etc/gone")
        .dir("etc/odir/", 0o755)
        .opaque("etc/odir")
        .file("etc/odir/fresh", 0o644, b"fresh\n")
        .file("etc/motd", 0o644, b"two\n")
        .hardlink("etc/motd.hard", "etc/motd", 0o644);
    let mut three = Layer::new();
    three
        .dir("data/", 0o755)
        .file_owned("data/file", 0o640, 1000, b"data\n");
    let m = l.put_image(&ImageDef::new(
        vec![
            (one.finish(), Compression::Gzip),
            (two.finish(), Compression::Zstd),
            (three.finish(), Compression::None),
        ],
        default_config(),
    ))?;
    l.tag("latest", &m);
    images.push(image("test/layers", "latest", &l.finish()?));

    let dir = out.join("multiarch");
    let mut l = Layout::create(&dir)?;
    let mut entries = Vec::new();
    let host = host_arch();
    let others: Vec<&str> = ["amd64", "arm64", "s390x"].into_iter().filter(|a| *a != host).collect();
    for arch in std::iter::once(host).chain(others.iter().copied()) {
        let mut marker = Layer::new();
        marker
            .dir("etc/", 0o755)
            .file("etc/arch", 0o644, format!("{arch}\n").as_bytes());
        let def = ImageDef {
            layers: vec![(base.clone(), Compression::Gzip), (marker.finish(), Compression::Gzip)],
            config: default_config(),
            arch: arch.to_string(),
        };
        entries.push((l.put_image(&def)?, arch));
    }
    // The host's entry last, so picking the first entry would be wrong.
    entries.rotate_left(1);
    let idx = l.put_index(&entries)?;
    l.tag("latest", &idx);
    images.push(TestImage {
        all: true,
        ..image("test/multiarch", "latest", &l.finish()?)
    });
    Ok(images)
}

/// Images whose layers nodelet must refuse.
///
/// - `evil/dotdot`: an entry `../../escape`;
/// - `evil/absolute`: an entry `/tmp/...`;
/// - `evil/symlink`: a symlink to `/tmp/...` then a file written through it;
/// - `evil/hardlink`: a hard link to `../../../etc/shadow`;
/// - `evil/bomb`: 512 MiB of zeros in one gzip layer of well under 1 MiB.
pub fn build_hostile(out: &Path, escape_target: &Path) -> anyhow::Result<Vec<TestImage>> {
    let dir = out.join("evil");
    let mut l = Layout::create(&dir)?;
    let target = escape_target.to_str().context("escape target path")?;
    let cases: Vec<(&str, Layer)> = vec![
        ("dotdot", {
            let mut x = Layer::new();
            x.dir("etc/", 0o755)
                .raw(b"../../escape-dotdot", EntryType::Regular, None, b"pwned");
            x
        }),
        ("absolute", {
            let mut x = Layer::new();
            let name = format!("{target}/escape-absolute");
            x.raw(name.as_bytes(), EntryType::Regular, None, b"pwned");
            x
        }),
        ("symlink", {
            let mut x = Layer::new();
            x.symlink("link", target)
                .raw(b"link/escape-symlink", EntryType::Regular, None, b"pwned");
            x
        }),
        ("hardlink", {
            let mut x = Layer::new();
            x.raw(b"shadow", EntryType::Link, Some(b"../../../etc/shadow"), b"");
            x
        }),
    ];
    let mut images = Vec::new();
    for (name, layer) in cases {
        let m = l.put_image(&ImageDef::new(
            vec![(layer.finish(), Compression::Gzip)],
            default_config(),
        ))?;
        l.tag(name, &m);
        images.push(TestImage {
            tag: name.into(),
            ..image(&format!("evil/{name}"), "latest", &dir)
        });
    }
    // The bomb: one big file of zeros, streamed through the encoder so the
    // builder never holds 512 MiB.
    let bomb_size: u64 = 512 << 20;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut hasher = Sha256::new();
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(bomb_size);
    h.set_mtime(MTIME);
    h.set_path("zeros")?;
    h.set_cksum();
    let zeros = vec![0u8; 1 << 20];
    let mut feed = |bytes: &[u8]| -> anyhow::Result<()> {
        hasher.update(bytes);
        enc.write_all(bytes)?;
        Ok(())
    };
    feed(h.as_bytes())?;
    for _ in 0..(bomb_size >> 20) {
        feed(&zeros)?;
    }
    feed(&[0u8; 1024])?;
    let blob = enc.finish()?;
    let diff_id = format!("sha256:{}", hex::encode(hasher.finalize()));
    let layer = l.put_blob(Compression::Gzip.media_type(), &blob)?;
    let config = json!({
        "architecture": host_arch(), "os": "linux", "config": default_config(),
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let config_desc = l.put_blob(MEDIA_CONFIG, &serde_json::to_vec(&config)?)?;
    let manifest = json!({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": config_desc.json(), "layers": [layer.json()]});
    let m = l.put_blob(MEDIA_MANIFEST, &serde_json::to_vec(&manifest)?)?;
    l.tag("bomb", &m);
    images.push(TestImage {
        tag: "bomb".into(),
        ..image("evil/bomb", "latest", &dir)
    });
    l.finish()?;
    Ok(images)
}

/// xorshift64*: deterministic filler.
struct Prng(u64);
impl Prng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The benchmark's large image: busybox plus `layers` layers of about
/// `layer_mib` MiB each, half incompressible (like binaries), half text
/// (like sources and configs), in files of 4 KiB to 256 KiB.
pub fn build_big(out: &Path, layers: usize, layer_mib: usize) -> anyhow::Result<TestImage> {
    let dir = out.join("big");
    let mut l = Layout::create(&dir)?;
    let mut defs = vec![(busybox_layer()?, Compression::Gzip)];
    let words: Vec<&str> = "the quick brown fox jumps over lazy dog container runtime kubelet node pod image layer overlay cgroup namespace socket"
        .split(' ')
        .collect();
    let mut rng = Prng(0x9E37_79B9_7F4A_7C15);
    for n in 0..layers {
        let mut layer = Layer::new();
        let target = (layer_mib as u64) << 20;
        let mut written = 0u64;
        let mut i = 0;
        layer.dir(&format!("opt/big{n}/"), 0o755);
        while written < target {
            let size = 4096 + (rng.next() % (252 * 1024)) as usize;
            let mut data = Vec::with_capacity(size);
            if i % 2 == 0 {
                while data.len() < size {
                    data.extend_from_slice(&rng.next().to_le_bytes());
                }
            } else {
                while data.len() < size {
                    data.extend_from_slice(words[(rng.next() % words.len() as u64) as usize].as_bytes());
                    data.push(if rng.next() % 12 == 0 { b'\n' } else { b' ' });
                }
            }
            data.truncate(size);
            layer.file(&format!("opt/big{n}/d{}/f{i}", i % 16), 0o644, &data);
            written += size as u64;
            i += 1;
        }
        defs.push((layer.finish(), Compression::Gzip));
    }
    let m = l.put_image(&ImageDef::new(defs, default_config()))?;
    l.tag("latest", &m);
    Ok(image("test/big", "latest", &l.finish()?))
}

/// `test/etcd`: busybox plus Debian's `etcd` and `etcdctl` (from
/// `etcd-server` / `etcd-client`) and the shared libraries they load, for
/// the static-pod tests that bootstrap etcd as a kubelet would.
pub fn build_etcd(out: &Path) -> anyhow::Result<TestImage> {
    let mut l = Layer::new();
    busybox_rootfs(&mut l)?;
    let mut libs = std::collections::BTreeSet::new();
    l.dir("usr/local/", 0o755)
        .dir("usr/local/bin/", 0o755)
        .dir("var/lib/", 0o755);
    for bin in ["/usr/bin/etcd", "/usr/bin/etcdctl"] {
        let data = std::fs::read(bin).with_context(|| format!("{bin} (install etcd-server and etcd-client)"))?;
        l.file(&format!("usr/local/bin/{}", &bin[9..]), 0o755, &data);
        let ldd = std::process::Command::new("ldd").arg(bin).output().context("ldd")?;
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = line
                .split("=>")
                .last()
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("");
            if path.starts_with('/') {
                libs.insert(path.to_string());
            }
        }
    }
    let mut dirs = std::collections::BTreeSet::new();
    for lib in &libs {
        let mut acc = String::new();
        let parent = Path::new(lib)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        for part in parent.trim_start_matches('/').split('/').filter(|p| !p.is_empty()) {
            acc.push_str(part);
            acc.push('/');
            if dirs.insert(acc.clone()) && !matches!(acc.as_str(), "usr/" | "usr/bin/" | "bin/" | "sbin/" | "usr/sbin/")
            {
                l.dir(&acc, 0o755);
            }
        }
        let data = std::fs::read(lib).with_context(|| format!("read {lib}"))?;
        l.file(lib.trim_start_matches('/'), 0o755, &data);
    }
    let dir = out.join("etcd");
    let mut layout = Layout::create(&dir)?;
    let mut cfg = default_config();
    cfg["Cmd"] = json!(["etcd"]);
    let m = layout.put_image(&ImageDef::new(vec![(l.finish(), Compression::Gzip)], cfg))?;
    layout.tag("latest", &m);
    Ok(image("test/etcd", "latest", &layout.finish()?))
}
