//! The daemon's side of streaming: interactive exec, attach and
//! port-forward connections, handed to the streaming server
//! (`crate::streaming`) as plain async byte streams.
//!
//! - Exec: the daemon creates the process's pipes and passes their far ends
//!   to the pod's infra with SCM_RIGHTS (for a tty the infra's helper gets a
//!   pty from libcontainer and the master comes back the same way). The
//!   request's connection stays open: the infra answers once the process
//!   runs and again when it exits; dropping the session closes it, and the
//!   infra then kills the exec's process tree.
//! - Attach: the infra relays the container's stdio on the request's
//!   connection in `protocol::attach` frames.
//! - Port-forward: a TCP connection to `localhost:port` in the pod's network
//!   namespace. The socket is created on a short-lived thread that enters
//!   that namespace (a socket belongs to the namespace it was created in),
//!   then connected from tokio; no tokio worker ever changes namespace.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpSocket, TcpStream, UnixStream};

use super::{infra_client, io_err, ContainerState, Result, Runtime, RuntimeError};
use crate::infra::protocol::{Request, Response};

/// How long the infra may take to start an exec's process.
const START_LIMIT: Duration = Duration::from_secs(130);
/// How long connecting to a pod's port may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// A non-blocking descriptor (pipe end or pty master) as an async stream.
/// A pty master reads `EIO` once the last slave closes: that is its EOF.
pub struct FdIo {
    fd: AsyncFd<OwnedFd>,
}

impl FdIo {
    pub fn new(fd: OwnedFd) -> io::Result<FdIo> {
        set_nonblocking(fd.as_raw_fd())?;
        // SAFETY: the AsyncFd owns `fd` (an OwnedFd), so the descriptor
        // stays open and the same for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))?;
        Ok(FdIo { fd })
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )?;
    Ok(())
}

impl AsyncRead for FdIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Ready(r) => r?,
                Poll::Pending => return Poll::Pending,
            };
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| nix::unistd::read(fd.as_raw_fd(), unfilled).map_err(io::Error::from)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = match self.fd.poll_write_ready(cx) {
                Poll::Ready(r) => r?,
                Poll::Pending => return Poll::Pending,
            };
            match guard.try_io(|fd| nix::unistd::write(fd, data).map_err(io::Error::from)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What an interactive exec asks for (validated by the caller).
#[derive(Debug, Clone)]
pub struct ExecParams {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A running interactive exec. Dropping it hangs up on the infra, which
/// kills the process and everything it started.
pub struct ExecSession {
    /// Where the client's stdin goes (pipe, or the pty master).
    pub stdin: Option<FdIo>,
    /// The process's output (pipe, or the pty master for both).
    pub stdout: Option<FdIo>,
    pub stderr: Option<FdIo>,
    pty: Option<Arc<OwnedFd>>,
    control: Control,
}

/// Resizes a tty exec's terminal (does nothing for others).
#[derive(Clone)]
pub struct Resizer(Option<Arc<OwnedFd>>);

impl Resizer {
    pub fn resize(&self, width: u16, height: u16) {
        if let Some(pty) = &self.0 {
            crate::infra::resize_pty(pty.as_raw_fd(), width, height);
        }
    }
}

impl ExecSession {
    pub fn resizer(&self) -> Resizer {
        Resizer(self.pty.clone())
    }

    /// Wait for the process to exit: its exit code (128 + signal when a
    /// signal killed it).
    pub async fn wait(&mut self) -> Result<i32> {
        match self.control.next().await? {
            Response::ExecExited { exit_code } => Ok(exit_code),
            Response::Error { message } => Err(RuntimeError::Internal(message)),
            other => Err(RuntimeError::Internal(format!(
                "unexpected answer from the infra: {other:?}"
            ))),
        }
    }
}

/// A kept infra connection that answers in lines, possibly with a
/// descriptor attached.
struct Control {
    stream: UnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Control {
    async fn connect(pod_dir: &Path) -> Result<Control> {
        let stream = infra_client::connect(&pod_dir.join(crate::infra::SOCKET))
            .await
            .map_err(|source| infra_client::InfraError::Unreachable {
                path: pod_dir.join(crate::infra::SOCKET),
                source,
            })?;
        Ok(Control {
            stream,
            buf: Vec::new(),
            fds: Vec::new(),
        })
    }

    /// Send one request line with `fds` attached.
    async fn send(&self, request: &Request, fds: &[RawFd]) -> Result<()> {
        let mut line = serde_json::to_vec(request).map_err(|e| RuntimeError::Internal(e.to_string()))?;
        line.push(b'\n');
        let mut off = 0;
        while off < line.len() {
            let n = self
                .stream
                .async_io(Interest::WRITABLE, || {
                    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
                    let iov = [io::IoSlice::new(&line[off..])];
                    // Descriptors ride on the first bytes only.
                    let cmsgs: Vec<ControlMessage> = if off == 0 && !fds.is_empty() {
                        vec![ControlMessage::ScmRights(fds)]
                    } else {
                        Vec::new()
                    };
                    sendmsg::<()>(self.stream.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                        .map_err(io::Error::from)
                })
                .await
                .map_err(io_err("send a request to the pod's infra"))?;
            off += n;
        }
        Ok(())
    }

    /// The next response line (descriptors that came with it are kept in
    /// `fds`).
    async fn next(&mut self) -> Result<Response> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return serde_json::from_slice(&line)
                    .map_err(|e| RuntimeError::Internal(format!("bad answer from the infra: {e}")));
            }
            if self.buf.len() > 1 << 20 {
                return Err(RuntimeError::Internal("oversized answer from the infra".into()));
            }
            let mut chunk = [0u8; 4096];
            let mut got: Vec<OwnedFd> = Vec::new();
            let n = self
                .stream
                .async_io(Interest::READABLE, || {
                    recv_with_fds(self.stream.as_raw_fd(), &mut chunk, &mut got).map_err(io::Error::from)
                })
                .await
                .map_err(io_err("read from the pod's infra"))?;
            self.fds.extend(got);
            if n == 0 {
                return Err(RuntimeError::Internal(
                    "the pod's infra closed the connection without an answer".into(),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn recv_with_fds(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> nix::Result<usize> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 2]);
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(received) = c {
                for raw in received {
                    // SAFETY: SCM_RIGHTS just installed this descriptor in
                    // our table; nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
    }
    Ok(msg.bytes)
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RuntimeError::Internal(format!("pipe: {e}")))
}

fn dev_null(write: bool) -> Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(io_err("open /dev/null"))
}

/// An attach session: frames to and from the infra (see
/// `protocol::attach`).
pub struct AttachSession {
    pub stream: UnixStream,
    /// The container has a terminal: all output is stdout, resize applies.
    pub tty: bool,
    /// Bytes read past the `Attached` line (the first frames).
    pub pending: Vec<u8>,
}

impl Runtime {
    /// Check that an exec or attach may start: the container exists and
    /// runs.
    pub fn check_running(&self, container_id: &str) -> Result<super::ContainerView> {
        let view = self.container(container_id)?;
        if view.state != ContainerState::Running {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {container_id} is not running"
            )));
        }
        Ok(view)
    }

    /// Start an interactive exec.
    pub async fn exec_stream(self: &Arc<Self>, p: &ExecParams) -> Result<ExecSession> {
        let view = self.check_running(&p.container_id)?;
        let dir = self.container_dir(&p.container_id);
        let spec: oci_spec::runtime::Spec =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).map_err(io_err("read config.json"))?)
                .map_err(|e| RuntimeError::Internal(format!("config.json: {e}")))?;
        // The container's environment, user and working directory; the
        // client's command.
        let mut process = spec
            .process()
            .clone()
            .ok_or_else(|| RuntimeError::Internal("spec without process".into()))?;
        process.set_args(Some(p.cmd.clone()));
        process.set_terminal(Some(p.tty));
        let process_file = dir.join(format!("exec-{}.json", crate::fsutil::random_hex(6)));
        crate::fsutil::write_atomic(&process_file, &serde_json::to_vec(&process).unwrap_or_default(), false)
            .map_err(io_err("write the exec process"))?;
        let result = self.start_exec(p, &view.record.pod_id, &process_file, &dir).await;
        let _ = std::fs::remove_file(&process_file);
        result
    }

    async fn start_exec(
        &self,
        p: &ExecParams,
        pod_id: &str,
        process_file: &Path,
        bundle: &Path,
    ) -> Result<ExecSession> {
        let mut control = Control::connect(&self.pod_state_dir(pod_id)).await?;
        let request = Request::ExecStream {
            id: p.container_id.clone(),
            process: process_file.to_path_buf(),
            bundle: bundle.to_path_buf(),
            tty: p.tty,
        };
        let (mut stdin, mut stdout, mut stderr) = (None, None, None);
        if p.tty {
            control.send(&request, &[]).await?;
        } else {
            // Ours and theirs: the process's ends go to the infra and are
            // closed here once sent, so EOF follows the process's exit.
            let (in_theirs, out_theirs, err_theirs) = (
                if p.stdin {
                    let (r, w) = pipe()?;
                    stdin = Some(w);
                    r
                } else {
                    dev_null(false)?
                },
                if p.stdout {
                    let (r, w) = pipe()?;
                    stdout = Some(r);
                    w
                } else {
                    dev_null(true)?
                },
                if p.stderr {
                    let (r, w) = pipe()?;
                    stderr = Some(r);
                    w
                } else {
                    dev_null(true)?
                },
            );
            control
                .send(
                    &request,
                    &[in_theirs.as_raw_fd(), out_theirs.as_raw_fd(), err_theirs.as_raw_fd()],
                )
                .await?;
        }
        match tokio::time::timeout(START_LIMIT, control.next()).await {
            Err(_) => return Err(RuntimeError::Infra(infra_client::InfraError::Timeout)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(Response::ExecStarted { .. })) => {}
            Ok(Ok(Response::Error { message })) => {
                return Err(RuntimeError::Infra(infra_client::InfraError::Failed(message)))
            }
            Ok(Ok(other)) => {
                return Err(RuntimeError::Internal(format!(
                    "unexpected answer from the infra: {other:?}"
                )))
            }
        }
        let mut pty = None;
        if p.tty {
            let master = control
                .fds
                .pop()
                .ok_or_else(|| RuntimeError::Internal("the infra sent no pty for a tty exec".into()))?;
            let out = master.try_clone().map_err(io_err("dup the pty"))?;
            if p.stdin {
                stdin = Some(master.try_clone().map_err(io_err("dup the pty"))?);
            }
            // Even without stdout something must drain a terminal's output
            // or the process blocks on a full pty: the caller reads it.
            stdout = Some(out);
            pty = Some(Arc::new(master));
        }
        control.fds.clear();
        Ok(ExecSession {
            stdin: stdin.map(FdIo::new).transpose().map_err(io_err("watch stdin"))?,
            stdout: stdout.map(FdIo::new).transpose().map_err(io_err("watch stdout"))?,
            stderr: stderr.map(FdIo::new).transpose().map_err(io_err("watch stderr"))?,
            pty,
            control,
        })
    }

    /// Attach to a running container's stdio.
    pub async fn attach_stream(
        self: &Arc<Self>,
        id: &str,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<AttachSession> {
        let view = self.check_running(id)?;
        let mut control = Control::connect(&self.pod_state_dir(&view.record.pod_id)).await?;
        control
            .send(
                &Request::Attach {
                    id: id.to_string(),
                    stdin,
                    stdout,
                    stderr,
                },
                &[],
            )
            .await?;
        match tokio::time::timeout(Duration::from_secs(10), control.next()).await {
            Err(_) => Err(RuntimeError::Infra(infra_client::InfraError::Timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Response::Attached { tty })) => Ok(AttachSession {
                stream: control.stream,
                tty,
                pending: control.buf,
            }),
            Ok(Ok(Response::Error { message })) => Err(RuntimeError::Infra(infra_client::InfraError::Failed(message))),
            Ok(Ok(other)) => Err(RuntimeError::Internal(format!(
                "unexpected answer from the infra: {other:?}"
            ))),
        }
    }

    /// Check that a port-forward may start: the pod exists and is ready.
    pub fn check_pod_ready(&self, pod_id: &str) -> Result<()> {
        if !self.pod(pod_id)?.ready {
            return Err(RuntimeError::FailedPrecondition(format!(
                "pod sandbox {pod_id} is not ready"
            )));
        }
        Ok(())
    }

    /// A TCP connection to `localhost:port` in the pod's network namespace
    /// (the daemon's own for a hostNetwork pod): IPv4 first, then IPv6.
    pub async fn port_forward_dial(&self, pod_id: &str, port: u16) -> Result<TcpStream> {
        let pod = self.pod(pod_id)?;
        if !pod.ready {
            return Err(RuntimeError::FailedPrecondition(format!(
                "pod sandbox {pod_id} is not ready"
            )));
        }
        let netns = (!pod.record.host_network).then(|| self.pod_state_dir(pod_id).join("ns").join("net"));
        let mut last = None;
        for addr in [
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        ] {
            let socket = match &netns {
                None if addr.is_ipv4() => TcpSocket::new_v4().map_err(io_err("create a socket"))?,
                None => TcpSocket::new_v6().map_err(io_err("create a socket"))?,
                Some(ns) => socket_in_netns(ns, addr.is_ipv4()).await?,
            };
            match tokio::time::timeout(CONNECT_LIMIT, socket.connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
            }
        }
        Err(RuntimeError::Io {
            what: format!("connect to localhost:{port} in pod {pod_id}"),
            source: last.unwrap_or_else(|| io::Error::other("no address")),
        })
    }
}

/// A TCP socket created inside the network namespace at `ns`, on a thread
/// of its own: `setns` changes only the calling thread, which then exits,
/// and the socket stays in the namespace it was created in.
async fn socket_in_netns(ns: &Path, v4: bool) -> Result<TcpSocket> {
    let ns = ns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("nodelet-netns".into())
        .spawn(move || {
            let made = (|| -> io::Result<OwnedFd> {
                let f = std::fs::File::open(&ns)?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
                let domain = if v4 { libc::AF_INET } else { libc::AF_INET6 };
                // SAFETY: plain socket(2); the result is checked and owned.
                let fd =
                    unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: socket(2) just returned this descriptor.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            })();
            let _ = tx.send(made);
        })
        .map_err(io_err("start a thread for the pod's network namespace"))?;
    let fd = rx
        .await
        .map_err(|_| RuntimeError::Internal("the network namespace thread died".into()))?
        .map_err(io_err("create a socket in the pod's network namespace"))?;
    Ok(TcpSocket::from_std_stream(std::net::TcpStream::from(fd)))
}
