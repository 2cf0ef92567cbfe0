//! Reaching into a container's network namespace without moving the caller.
//!
//! `setns` changes the namespace of the calling *thread* only, and the
//! daemon's threads are not ours to move (a tokio worker that changed netns
//! would run every later task there). A netlink socket stays bound to the
//! netns of the thread that created it, so a short-lived thread of our own
//! enters the netns, opens the socket and exits; the caller then uses the
//! socket from wherever it runs.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use crate::netlink::{self, Netlink};

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("netns {path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("{path} is not a network namespace: {source}")]
    NotNetns { path: String, source: nix::Error },
    #[error("netlink socket in netns {path}: {source}")]
    Socket { path: String, source: io::Error },
    #[error("netns helper thread: {0}")]
    Thread(String),
}

impl Error {
    /// The namespace is gone (or never was): what DEL tolerates.
    pub(crate) fn is_missing(&self) -> bool {
        match self {
            Error::Open { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
            }
            // A bind-mount point whose namespace was unmounted is a plain
            // (empty) file: setns refuses it with EINVAL.
            Error::NotNetns { source, .. } => *source == nix::Error::EINVAL,
            _ => false,
        }
    }
}

/// An open network namespace and a netlink socket inside it.
pub(crate) struct Netns {
    pub file: File,
    pub nl: Netlink,
}

impl Netns {
    /// Open the namespace at `path` and a netlink socket in it.
    pub(crate) fn open(path: &Path) -> Result<Netns, Error> {
        let shown = || path.display().to_string();
        let file = File::open(path).map_err(|source| Error::Open { path: shown(), source })?;
        let sock = std::thread::scope(|s| {
            s.spawn(|| -> Result<netlink_sys::Socket, Error> {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|source| Error::NotNetns { path: shown(), source })?;
                netlink::new_socket().map_err(|source| Error::Socket { path: shown(), source })
                // The thread ends here, taking its namespace switch with it.
            })
            .join()
            .map_err(|_| Error::Thread("panicked".into()))?
        })?;
        Ok(Netns {
            file,
            nl: Netlink::from_socket(sock),
        })
    }
}
