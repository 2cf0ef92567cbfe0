//! Talking to a pod's infra process over its `infra.sock`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::infra::protocol::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    #[error("the pod's infra process is not reachable at {path}: {source}")]
    Unreachable { path: PathBuf, source: std::io::Error },
    #[error("the pod's infra process did not answer in time")]
    Timeout,
    #[error("the pod's infra process answered garbage: {0}")]
    Protocol(String),
    #[error("{0}")]
    Failed(String),
}

/// Send one request and read one response, within `limit`.
pub async fn call(pod_dir: &Path, request: &Request, limit: Duration) -> Result<Response, InfraError> {
    let sock = pod_dir.join(crate::infra::SOCKET);
    match tokio::time::timeout(limit, exchange(&sock, request)).await {
        Ok(r) => r,
        Err(_) => Err(InfraError::Timeout),
    }
}

async fn exchange(sock: &Path, request: &Request) -> Result<Response, InfraError> {
    let stream = connect(sock).await.map_err(|source| InfraError::Unreachable {
        path: sock.to_path_buf(),
        source,
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(|e| InfraError::Protocol(e.to_string()))?;
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .map_err(|e| InfraError::Protocol(e.to_string()))?;
    let mut reader = BufReader::new(read);
    let mut reply = Vec::new();
    reader
        .read_until(b'\n', &mut reply)
        .await
        .map_err(|e| InfraError::Protocol(e.to_string()))?;
    if reply.is_empty() {
        return Err(InfraError::Protocol("connection closed without an answer".into()));
    }
    match serde_json::from_slice(&reply).map_err(|e| InfraError::Protocol(e.to_string()))? {
        Response::Error { message } => Err(InfraError::Failed(message)),
        r => Ok(r),
    }
}

/// Connect even when the socket path is longer than sun_path allows, by
/// going through an `O_PATH` descriptor of its directory.
pub(crate) async fn connect(sock: &Path) -> std::io::Result<UnixStream> {
    if sock.as_os_str().len() < 100 {
        return UnixStream::connect(sock).await;
    }
    let dir = sock.parent().unwrap_or(Path::new("/"));
    let name = sock.file_name().unwrap_or_default();
    let fd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: `open` just returned this descriptor; OwnedFd closes it when
    // the connection attempt is over.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let short = Path::new("/proc/self/fd")
        .join(std::os::fd::AsRawFd::as_raw_fd(&owned).to_string())
        .join(name);
    let r = UnixStream::connect(&short).await;
    drop(owned);
    r
}
