//! Harness for nodelet's privileged end-to-end tests and benchmarks.
//!
//! Every test builds its own world: a nodelet daemon with its own socket,
//! root and state directories under a temporary directory, a local
//! `docker-registry` (Debian's) on a free loopback port with the images the
//! test needs pushed by `skopeo`, and, for fault injection, a scripted fake
//! registry. Everything is torn down when the handles drop, and every child
//! process is started with `PR_SET_PDEATHSIG` so a panicking test cannot
//! leak one.

pub mod bench;
pub mod cleanup;
pub mod cri;
pub mod daemon;
pub mod fake_registry;
pub mod hostile;
pub mod netns;
pub mod pods;
pub mod registry;
pub mod static_pods;
pub mod streaming_client;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use nodelet_test_images::TestImage;

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ sits in the workspace")
        .to_path_buf()
}

/// Cargo's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The nodelet binary under test: `$NODELET_BIN`, else the debug build.
pub fn nodelet_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NODELET_BIN") {
        return PathBuf::from(p);
    }
    let p = target_dir().join("debug/nodelet");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --bin nodelet` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// These tests need root (namespaces, mounts, device nodes, ownership).
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "nodelet's integration tests must run as root (scripts/test.sh runs them under sudo)"
    );
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Make a child die with the thread that started it (test cleanup even on
/// panic).
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only
    // makes one async-signal-safe syscall.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The standard test images' layouts, built once into the target directory
/// (and rebuilt when the builder or busybox changes).
pub fn standard_images() -> &'static [TestImage] {
    static IMAGES: OnceLock<Vec<TestImage>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = target_dir().join("test-images/standard");
        with_build_lock(&dir, nodelet_test_images::build_standard).expect("building the test images")
    })
}

/// One standard image by repository name.
pub fn test_image(repo: &str) -> TestImage {
    standard_images()
        .iter()
        .find(|i| i.repo == repo)
        .unwrap_or_else(|| panic!("no test image {repo}"))
        .clone()
}

/// Serialise builds of one layout directory across test processes.
pub fn with_build_lock<T>(dir: &Path, build: impl FnOnce(&Path) -> anyhow::Result<T>) -> anyhow::Result<T> {
    std::fs::create_dir_all(dir)?;
    let lock = std::fs::File::create(dir.with_extension("lock"))?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("lock {}: {e}", dir.display()))?;
    build(dir)
}

/// Run a command, failing with its output when it fails.
pub fn run(cmd: &mut std::process::Command) -> anyhow::Result<String> {
    let out = cmd.output().map_err(|e| anyhow::anyhow!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Random lowercase hex (16 characters).
pub fn random_suffix() -> String {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("urandom");
    hex::encode(b)
}

/// `test/etcd` (Debian's etcd in a busybox image), built once per target
/// directory.
pub fn etcd_image() -> TestImage {
    static IMAGE: OnceLock<TestImage> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let dir = target_dir().join("test-images/etcd");
            with_build_lock(&dir, nodelet_test_images::build_etcd).expect("building the etcd image")
        })
        .clone()
}

/// Loopback addresses handed to daemons that run in a node network
/// namespace, and that namespace: a test connects to such an address (a
/// streaming URL, say) from inside the namespace. 127.0.0.0/8 is all
/// loopback, so each daemon gets an address of its own and two daemons'
/// ports can never be confused.
static NODE_LOOPBACKS: std::sync::Mutex<Vec<(std::net::Ipv4Addr, std::path::PathBuf)>> =
    std::sync::Mutex::new(Vec::new());

/// A fresh loopback address (127.64.x.y) that belongs to `ns`.
pub fn node_loopback(ns: &netns::NetNs) -> std::net::Ipv4Addr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ip = std::net::Ipv4Addr::new(127, 64, (n >> 8) as u8, n as u8);
    NODE_LOOPBACKS.lock().unwrap().push((ip, ns.path()));
    ip
}

/// Connect to `host` ("ip:port"), from inside the node namespace that owns
/// the address when it is one of [`node_loopback`]'s.
pub async fn tcp_connect(host: &str) -> std::io::Result<tokio::net::TcpStream> {
    let addr: Option<std::net::SocketAddr> = host.parse().ok();
    let ns = addr.and_then(|a| match a.ip() {
        std::net::IpAddr::V4(ip) => NODE_LOOPBACKS
            .lock()
            .unwrap()
            .iter()
            .find(|(l, _)| *l == ip)
            .map(|(_, p)| p.clone()),
        _ => None,
    });
    let (Some(addr), Some(ns)) = (addr, ns) else {
        return tokio::net::TcpStream::connect(host).await;
    };
    let std_stream = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || -> std::io::Result<std::net::TcpStream> {
            let f = std::fs::File::open(&ns)?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            std::net::TcpStream::connect(addr)
        })
        .join()
        .expect("connect thread")
    })
    .await
    .expect("connect task")?;
    std_stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(std_stream)
}
