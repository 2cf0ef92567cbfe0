//! `nodelet serve`: directories, single-instance locks, the CRI socket,
//! signals and graceful shutdown.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;

use crate::cli::ServeArgs;
use crate::config::{CgroupDriver, Config};
use crate::cri::kubelet_view::KubeletView;
use crate::cri::Cri;
use crate::fsutil;
use crate::node::Node;
use crate::static_pods::StaticPods;

/// How long in-flight RPCs get to finish after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub fn main(args: ServeArgs) -> ExitCode {
    let config = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nodelet: {e}");
            return ExitCode::from(2);
        }
    };
    crate::logging::init(config.log_format, &config.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nodelet")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(Arc::new(config))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("nodelet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// An exclusive `flock` on a file that also records our pid, held for the
/// daemon's lifetime.
struct InstanceLock {
    _lock: Flock<File>,
    path: PathBuf,
}

fn take_lock(path: &Path, what: &str) -> anyhow::Result<InstanceLock> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    let mut holder = String::new();
    let _ = file.read_to_string(&mut holder);
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let holder = holder.trim();
            bail!(
                "another nodelet is already running on {what} (lock {} held{})",
                path.display(),
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(" by pid {holder}")
                }
            );
        }
        Err((_, e)) => bail!("cannot lock {}: {e}", path.display()),
    };
    lock.set_len(0)?;
    lock.rewind()?;
    writeln!(*lock, "{}", std::process::id())?;
    Ok(InstanceLock {
        _lock: lock,
        path: path.to_path_buf(),
    })
}

async fn serve(config: Arc<Config>) -> anyhow::Result<()> {
    if config.cgroups.driver == CgroupDriver::Systemd {
        bail!("cgroups.driver = \"systemd\" is not supported yet; use \"cgroupfs\"");
    }
    let notify = Arc::new(crate::sdnotify::Notifier::from_env());
    notify.status("opening state");
    fsutil::ensure_dir(&config.root_dir, 0o711)
        .with_context(|| format!("cannot create root_dir {}", config.root_dir.display()))?;
    fsutil::ensure_dir(&config.state_dir, 0o711)
        .with_context(|| format!("cannot create state_dir {}", config.state_dir.display()))?;
    let socket_dir = config.socket.parent().context("socket path has no parent directory")?;
    fsutil::ensure_dir(socket_dir, 0o755)
        .with_context(|| format!("cannot create socket directory {}", socket_dir.display()))?;

    // Two locks: one per socket (two daemons must not fight over it) and one
    // per root dir (two daemons must never share a store, whatever their
    // sockets).
    let socket_lock_path = PathBuf::from(format!("{}.lock", config.socket.display()));
    let socket_lock = take_lock(&socket_lock_path, &format!("socket {}", config.socket.display()))?;
    let _root_lock = take_lock(
        &config.root_dir.join("nodelet.lock"),
        &format!("root_dir {}", config.root_dir.display()),
    )?;

    // Pod infra processes are our grandchildren; as a subreaper we inherit
    // them when their first process exits, and reap them ourselves (by
    // pidfd, never with a blanket waitpid(-1)).
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!("PR_SET_CHILD_SUBREAPER: {}", std::io::Error::last_os_error());
    }
    let node = Node::open(Arc::clone(&config))
        .await
        .context("cannot open nodelet's state")?;

    let listener = bind_socket(&config.socket)?;

    let health = crate::metrics::Health::new(config.socket.clone());
    if let Some(addr) = config.metrics.address {
        crate::metrics::serve(addr, Arc::clone(&node), Arc::clone(&health)).await?;
    }
    let cri = Cri::new(Arc::clone(&node));

    // Static pods, their status endpoint, and the kubelet's view of CRI.
    let static_pods = config.static_pods.enabled.then(|| StaticPods::start(Arc::clone(&node)));
    let mut side_tasks = Vec::new();
    if let Some(sp) = &static_pods {
        let tasks = crate::static_pods::status::serve(
            Arc::clone(sp),
            &config.static_pods.status_socket,
            &config.static_pods.status_address,
        )
        .await
        .context("cannot serve the static pod status endpoint")?;
        side_tasks.extend(tasks);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if !config.kubelet_socket.as_os_str().is_empty() {
        let kubelet_listener = bind_socket(&config.kubelet_socket)?;
        let view = KubeletView::new(cri.clone());
        let mut stop = stop_rx.clone();
        side_tasks.push(tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(view.runtime_server())
                .add_service(view.image_server())
                .serve_with_incoming_shutdown(connections(kubelet_listener), async move {
                    let _ = stop.changed().await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!("kubelet socket server ended with an error: {e}");
            }
        }));
    }
    tracing::info!(
        socket = %config.socket.display(),
        kubelet_socket = %config.kubelet_socket.display(),
        root_dir = %config.root_dir.display(),
        state_dir = %config.state_dir.display(),
        manifest_dir = %config.manifest_dir.display(),
        static_pods = config.static_pods.enabled,
        version = env!("CARGO_PKG_VERSION"),
        "nodelet serving CRI v1"
    );

    let mut main_stop = stop_rx.clone();
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(cri.runtime_server())
            .add_service(cri.image_server())
            .serve_with_incoming_shutdown(connections(listener), async move {
                let _ = main_stop.changed().await;
            }),
    );
    health.set_serving(true);
    crate::sdnotify::serving(&notify, &node);
    let signal = wait_for_signal().await?;
    tracing::info!(signal, "shutting down");
    health.set_serving(false);
    notify.stopping(&format!("{signal}: shutting down; pods keep running"));
    let _ = stop_tx.send(true);
    // Static pods keep running: the next daemon adopts them.
    if let Some(sp) = &static_pods {
        sp.shutdown();
    }
    // New connections stop now; RPCs already running get SHUTDOWN_GRACE.
    // Idle connections are not waited for.
    let finished = tokio::time::timeout(SHUTDOWN_GRACE, async {
        tokio::select! {
            r = &mut server => match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("server ended with an error: {e}"),
                Err(e) => tracing::warn!("server task failed: {e}"),
            },
            () = crate::cri::drained() => {}
        }
    })
    .await;
    if finished.is_err() {
        tracing::warn!("in-flight requests did not finish within {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    server.abort();
    for t in side_tasks {
        t.abort();
    }
    let _ = tokio::task::spawn_blocking(move || node.shutdown()).await;
    let _ = std::fs::remove_file(&config.socket);
    for path in [&config.kubelet_socket, &config.static_pods.status_socket] {
        if !path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(path);
        }
    }
    drop(socket_lock.path);
    Ok(())
}

/// Listen on a unix socket (mode 0660). The caller holds the lock that
/// makes a socket file already there stale.
fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fsutil::ensure_dir(dir, 0o755).with_context(|| format!("cannot create socket directory {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "replaced a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove stale socket {}", path.display())),
    }
    let listener = UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    Ok(listener)
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Connections from a CRI socket. An accept error (EMFILE or ENFILE when
/// the daemon is out of descriptors) is logged once and retried after a
/// growing pause, not at once: the waiting connection keeps the listener
/// readable, so an immediate retry (what the server does with an error
/// from its stream) spins a core until a descriptor frees up.
fn connections(
    listener: UnixListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::UnixStream>> + Send + 'static {
    const FIRST: Duration = Duration::from_millis(10);
    futures::stream::unfold((listener, Duration::ZERO), |(listener, mut backoff)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    if !backoff.is_zero() {
                        tracing::info!("accepting CRI connections again");
                    }
                    return Some((Ok(stream), (listener, Duration::ZERO)));
                }
                Err(e) => {
                    if backoff.is_zero() {
                        tracing::warn!("cannot accept a CRI connection: {e}; retrying until it works");
                        backoff = FIRST;
                    } else {
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    })
}
