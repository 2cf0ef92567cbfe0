//! The infra process's event loop: one thread, one epoll set.
//!
//! Sources: the control socket and its connections, a signalfd (SIGCHLD,
//! SIGTERM, SIGINT), every container's and exec's output pipes, and the
//! report sockets of start helpers. Deadlines (waits, helpers, exec
//! timeouts) become the epoll timeout.
//!
//! Streaming (`attach.rs` for attach): a streaming exec keeps its request's
//! connection, watched for the daemon hanging up (which kills the exec's
//! tree); an attach connection is relayed without ever blocking the loop.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::launch::{self, Job, Outcome};
use super::log::{LogFile, LogNote, Stream};
use super::protocol::{ContainerStatus, InfraConfig, Request, Response, StartSpec};

mod attach;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_SIGNALS: u64 = 1;
/// A start helper that takes longer than this is killed.
const HELPER_TIMEOUT: Duration = Duration::from_secs(120);
/// After an exec'd process exits, how long to wait for output from
/// children that still hold its pipes.
const EXEC_DRAIN: Duration = Duration::from_secs(1);
/// Unknown exits remembered (an init can exit before its helper reports
/// its pid); orphans of containers also land here, so it is bounded.
const EARLY_EXITS_MAX: usize = 4096;

enum Source {
    Client(Client),
    Output {
        owner: Owner,
        stream: Stream,
        fd: OwnedFd,
    },
    Helper(u64),
    /// The kept connection of a streaming exec (the job's token).
    ExecClient(u64),
    /// An attach connection (state in `Sup::attaches`, same token).
    Attach,
}

#[derive(Clone, PartialEq, Eq)]
enum Owner {
    Container(String),
    Exec(u64),
}

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Descriptors received with the request (SCM_RIGHTS).
    fds: Vec<OwnedFd>,
}

/// Descriptors accepted with one request; more are closed.
const MAX_REQUEST_FDS: usize = 4;

struct Ctr {
    spec: StartSpec,
    status: ContainerStatus,
    log: Option<LogFile>,
    /// Write end of the container's stdin, kept for attach (non-blocking).
    stdin: Option<OwnedFd>,
    /// A duplicate of a tty container's pty master: attach writes its
    /// stdin there and resizes it.
    pty: Option<OwnedFd>,
    /// OOM kills counted in the container's cgroup before it started.
    oom_baseline: u64,
}

enum HelperKind {
    Start { id: String },
    Exec { exec: u64 },
}

struct Helper {
    pid: Pid,
    sock: OwnedFd,
    kind: HelperKind,
    client: Option<UnixStream>,
    deadline: Instant,
}

struct ExecJob {
    client: Option<UnixStream>,
    pid: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    max: usize,
    open_streams: u8,
    exit: Option<i32>,
    exited_at: Option<Instant>,
    deadline: Option<Instant>,
    timed_out: bool,
    sub_cgroups: Vec<PathBuf>,
    /// A streaming exec: the daemon holds the stdio; the connection stays
    /// open and gets `ExecStarted`, then `ExecExited`.
    stream: bool,
    /// Token watching the streaming exec's connection.
    client_token: Option<u64>,
    /// The daemon hung up: kill the tree.
    killed: bool,
}

/// What an exec request asks for (collected or streamed).
struct ExecSpec {
    id: String,
    process: PathBuf,
    bundle: PathBuf,
    timeout_ms: Option<u64>,
    max_output: usize,
    /// The daemon's descriptors for a streaming exec (none: collect the
    /// output here, as `ExecSync` wants).
    stdio: Option<launch::Stdio>,
    tty: bool,
}

#[derive(Clone)]
enum PidRole {
    Container(String),
    Exec(u64),
    Helper,
}

struct Waiter {
    id: String,
    client: UnixStream,
    deadline: Instant,
}

struct Sup {
    runtime_root: PathBuf,
    /// The infra is PID 1 of the pod's own PID namespace.
    pod_pid_ns: bool,
    epoll: Epoll,
    listener: UnixListener,
    sigfd: SignalFd,
    sources: HashMap<u64, Source>,
    next_token: u64,
    containers: HashMap<String, Ctr>,
    pids: HashMap<i32, PidRole>,
    early_exits: HashMap<i32, i32>,
    helpers: HashMap<u64, Helper>,
    execs: HashMap<u64, ExecJob>,
    waiters: Vec<Waiter>,
    shutdown: Option<Option<UnixStream>>,
    exec_seq: u64,
    attaches: HashMap<u64, attach::AttachClient>,
}

pub fn run(dir: &Path, listener: UnixListener) -> u8 {
    let cfg: InfraConfig = match std::fs::read(dir.join(super::CONFIG))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(c) => c,
        None => return 1,
    };
    let mut mask = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        mask.add(s);
    }
    if mask.thread_block().is_err() {
        return 1;
    }
    let Ok(sigfd) = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) else {
        return 1;
    };
    let Ok(epoll) = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) else {
        return 1;
    };
    if epoll
        .add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_LISTENER))
        .is_err()
        || epoll
            .add(&sigfd, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_SIGNALS))
            .is_err()
    {
        return 1;
    }
    let mut sup = Sup {
        runtime_root: cfg.runtime_root,
        pod_pid_ns: cfg.new_pid,
        epoll,
        listener,
        sigfd,
        sources: HashMap::new(),
        next_token: 2,
        containers: HashMap::new(),
        pids: HashMap::new(),
        early_exits: HashMap::new(),
        helpers: HashMap::new(),
        execs: HashMap::new(),
        waiters: Vec::new(),
        shutdown: None,
        exec_seq: 0,
        attaches: HashMap::new(),
    };
    sup.run()
}

fn set_nonblocking(fd: &impl AsRawFd) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    if let Ok(flags) = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL) {
        let _ = fcntl(
            fd.as_raw_fd(),
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        );
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

fn reply(mut stream: UnixStream, response: &Response) {
    let mut line =
        serde_json::to_vec(response).unwrap_or_else(|_| b"{\"result\":\"error\",\"message\":\"encode\"}".to_vec());
    line.push(b'\n');
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let _ = stream.write_all(&line);
}

/// Write one response line on a non-blocking connection that stays open,
/// with `fd` attached (SCM_RIGHTS). A line this small fits the empty
/// socket buffer of a fresh connection; failing that, the daemon is
/// treated as gone.
fn send_line(stream: &UnixStream, response: &Response, fd: Option<RawFd>) -> bool {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let mut line = serde_json::to_vec(response).unwrap_or_default();
    line.push(b'\n');
    let iov = [std::io::IoSlice::new(&line)];
    let fds: Vec<RawFd> = fd.into_iter().collect();
    let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    matches!(
        sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None),
        Ok(n) if n == line.len()
    )
}

/// `recvmsg` that keeps the descriptors sent along (closing any beyond
/// `MAX_REQUEST_FDS`).
fn recv_with_fds(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> nix::Result<usize> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_REQUEST_FDS]);
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(received) = c {
                for raw in received {
                    // SAFETY: SCM_RIGHTS just installed this descriptor in
                    // our table; nothing else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    if fds.len() < MAX_REQUEST_FDS {
                        fds.push(owned);
                    }
                }
            }
        }
    }
    Ok(msg.bytes)
}

fn error(message: impl Into<String>) -> Response {
    Response::Error {
        message: message.into(),
    }
}

/// OOM kills recorded in a cgroup (v2 `memory.events`, v1
/// `memory.oom_control`).
fn oom_kills(dirs: &[PathBuf]) -> u64 {
    for d in dirs {
        for file in ["memory.events", "memory.oom_control"] {
            if let Ok(text) = std::fs::read_to_string(d.join(file)) {
                for line in text.lines() {
                    if let Some(n) = line.strip_prefix("oom_kill ") {
                        return n.trim().parse().unwrap_or(0);
                    }
                }
            }
        }
    }
    0
}

fn exit_code(status: WaitStatus) -> Option<(i32, i32)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), code)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), 128 + sig as i32)),
        _ => None,
    }
}

impl Sup {
    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Watch a start helper's report socket and reap it when it exits.
    fn track_helper(&mut self, pid: Pid, sock: OwnedFd, kind: HelperKind) -> u64 {
        self.pids.insert(pid.as_raw(), PidRole::Helper);
        set_nonblocking(&sock);
        let token = self.token();
        let _ = self.epoll.add(&sock, EpollEvent::new(EpollFlags::EPOLLIN, token));
        self.sources.insert(token, Source::Helper(token));
        self.helpers.insert(
            token,
            Helper {
                pid,
                sock,
                kind,
                client: None,
                deadline: Instant::now() + HELPER_TIMEOUT,
            },
        );
        token
    }

    /// Watch an output pipe (or pty master), taking ownership of it.
    fn watch_output(&mut self, fd: OwnedFd, owner: Owner, stream: Stream) -> u64 {
        set_nonblocking(&fd);
        let token = self.token();
        let _ = self.epoll.add(&fd, EpollEvent::new(EpollFlags::EPOLLIN, token));
        self.sources.insert(token, Source::Output { owner, stream, fd });
        token
    }

    fn unwatch(&mut self, token: u64) -> Option<Source> {
        let source = self.sources.remove(&token)?;
        match &source {
            Source::Client(c) => {
                let _ = self.epoll.delete(&c.stream);
            }
            Source::Output { fd, .. } => {
                let _ = self.epoll.delete(fd);
            }
            Source::Helper(_) => {}
            Source::ExecClient(exec) => {
                if let Some(c) = self.execs.get(exec).and_then(|j| j.client.as_ref()) {
                    let _ = self.epoll.delete(c);
                }
            }
            Source::Attach => {
                if let Some(a) = self.attaches.get(&token) {
                    let _ = self.epoll.delete(&a.stream);
                }
            }
        }
        Some(source)
    }

    fn run(&mut self) -> u8 {
        let mut events = vec![EpollEvent::empty(); 64];
        loop {
            let timeout = self.next_timeout();
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(_) => return 1,
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_LISTENER => self.accept(),
                    TOKEN_SIGNALS => self.signals(),
                    token => self.ready(token),
                }
            }
            self.timers();
            if self.shutdown_complete() {
                return 0;
            }
        }
    }

    fn next_timeout(&self) -> EpollTimeout {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for w in &self.waiters {
            consider(w.deadline);
        }
        for h in self.helpers.values() {
            consider(h.deadline);
        }
        for e in self.execs.values() {
            if let Some(d) = e.deadline {
                consider(d);
            }
            if let Some(t) = e.exited_at {
                consider(t + EXEC_DRAIN);
            }
            if (e.timed_out || e.killed) && e.exit.is_none() {
                consider(now + Duration::from_millis(50));
            }
        }
        if let Some(t) = self.attach_deadline() {
            consider(t);
        }
        match next {
            None => EpollTimeout::NONE,
            Some(t) => {
                let ms = t.saturating_duration_since(now).as_millis().min(60_000) as i32 + 1;
                EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::NONE)
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    set_nonblocking(&stream);
                    let token = self.token();
                    let _ = self.epoll.add(&stream, EpollEvent::new(EpollFlags::EPOLLIN, token));
                    self.sources.insert(
                        token,
                        Source::Client(Client {
                            stream,
                            buf: Vec::new(),
                            fds: Vec::new(),
                        }),
                    );
                }
                Err(_) => return,
            }
        }
    }

    fn signals(&mut self) {
        while let Ok(Some(info)) = self.sigfd.read_signal() {
            match info.ssi_signo as i32 {
                libc::SIGCHLD => self.reap(),
                libc::SIGTERM | libc::SIGINT if self.pod_pid_ns && info.ssi_pid != 0 => {
                    // As PID 1 of the pod's PID namespace the infra sees a
                    // sender's PID only when that sender lives in the pod:
                    // a container must not be able to tear its pod down
                    // (the daemon and the host's init have no PID here).
                    // SIGKILL from inside is dropped by the kernel for a
                    // namespace's init; these two arrive because they are
                    // blocked for the signalfd.
                    eprintln!("ignoring signal {} from pod process {}", info.ssi_signo, info.ssi_pid);
                }
                libc::SIGTERM | libc::SIGINT => self.begin_shutdown(None),
                _ => {}
            }
        }
        // Signals coalesce: reap anyway.
        self.reap();
    }

    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => {
                    let Some((pid, code)) = exit_code(status) else { continue };
                    match self.pids.remove(&pid) {
                        Some(PidRole::Container(id)) => self.container_exited(&id, code),
                        Some(PidRole::Exec(token)) => {
                            if let Some(e) = self.execs.get_mut(&token) {
                                e.exit = Some(code);
                                e.exited_at = Some(Instant::now());
                            }
                        }
                        Some(PidRole::Helper) => {}
                        None => {
                            if self.early_exits.len() >= EARLY_EXITS_MAX {
                                self.early_exits.clear();
                            }
                            self.early_exits.insert(pid, code);
                        }
                    }
                }
            }
        }
    }

    fn container_exited(&mut self, id: &str, code: i32) {
        let Some(c) = self.containers.get_mut(id) else { return };
        c.status.exit_code = Some(code);
        c.status.finished_at = crate::unix_nanos();
        c.status.pid = None;
        c.status.local_pid = None;
        c.status.reason = if oom_kills(&c.spec.cgroup_dirs) > c.oom_baseline {
            "OOMKilled".into()
        } else if code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        };
        c.stdin = None;
        c.pty = None;
        let _ = crate::fsutil::write_atomic(
            &c.spec.status_path,
            &serde_json::to_vec(&c.status).unwrap_or_default(),
            false,
        );
        let status = c.status.clone();
        let (done, rest): (Vec<Waiter>, Vec<Waiter>) =
            std::mem::take(&mut self.waiters).into_iter().partition(|w| w.id == id);
        self.waiters = rest;
        for w in done {
            reply(w.client, &Response::Status(status.clone()));
        }
        self.attach_exited(id, code);
    }

    fn ready(&mut self, token: u64) {
        let Some(source) = self.sources.get_mut(&token) else {
            return;
        };
        match source {
            Source::Client(client) => {
                let mut buf = [0u8; 4096];
                loop {
                    match recv_with_fds(client.stream.as_raw_fd(), &mut buf, &mut client.fds) {
                        Ok(0) => {
                            self.unwatch(token);
                            return;
                        }
                        Ok(n) => {
                            client.buf.extend_from_slice(&buf[..n]);
                            if client.buf.len() > 1 << 20 {
                                self.unwatch(token);
                                return;
                            }
                        }
                        Err(Errno::EAGAIN) => break,
                        Err(Errno::EINTR) => continue,
                        Err(_) => {
                            self.unwatch(token);
                            return;
                        }
                    }
                }
                if let Some(pos) = client.buf.iter().position(|&b| b == b'\n') {
                    let line = client.buf[..pos].to_vec();
                    let Some(Source::Client(client)) = self.unwatch(token) else {
                        return;
                    };
                    match serde_json::from_slice::<Request>(&line) {
                        Ok(req) => self.request(req, client.stream, client.fds),
                        Err(e) => reply(client.stream, &error(format!("bad request: {e}"))),
                    }
                }
            }
            Source::ExecClient(exec) => {
                let exec = *exec;
                self.exec_client_io(token, exec);
            }
            Source::Attach => self.attach_io(token),
            Source::Output { .. } => self.pump(token),
            Source::Helper(id) => {
                let id = *id;
                self.helper_report(token, id);
            }
        }
    }

    /// Move available output to its log or exec buffer; EOF ends the stream.
    fn pump(&mut self, token: u64) {
        let mut buf = vec![0u8; 64 * 1024];
        // Bounded per wake-up so one chatty container cannot starve the rest.
        for _ in 0..16 {
            let Some(Source::Output { owner, stream, fd }) = self.sources.get(&token) else {
                return;
            };
            let (owner, stream) = (owner.clone(), *stream);
            let n = match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                Ok(n) => n,
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => continue,
                // EIO on a pty master: the other side is gone.
                Err(_) => 0,
            };
            if n == 0 {
                self.unwatch(token);
                match owner {
                    Owner::Container(id) => {
                        if let Some(log) = self.containers.get_mut(&id).and_then(|c| c.log.as_mut()) {
                            log.finish(stream);
                            if stream == Stream::Stdout {
                                log.finish(Stream::Stderr);
                            }
                        }
                    }
                    Owner::Exec(e) => {
                        if let Some(job) = self.execs.get_mut(&e) {
                            job.open_streams = job.open_streams.saturating_sub(1);
                        }
                    }
                }
                return;
            }
            let data = &buf[..n];
            match owner {
                Owner::Container(id) => {
                    if let Some(c) = self.containers.get_mut(&id) {
                        if let Some(log) = c.log.as_mut() {
                            log.write(stream, data);
                            if let Some(note) = log.take_note() {
                                // Visible in the infra's log and in the
                                // container's status message.
                                let (text, message) = match note {
                                    LogNote::Failing(m) => (m.clone(), m),
                                    LogNote::Recovered(m) => (m, String::new()),
                                };
                                eprintln!("container {id}: {text}");
                                c.status.message = message;
                                let _ = crate::fsutil::write_atomic(
                                    &c.spec.status_path,
                                    &serde_json::to_vec(&c.status).unwrap_or_default(),
                                    false,
                                );
                            }
                        }
                    }
                    self.attach_output(&id, stream, data);
                }
                Owner::Exec(e) => {
                    if let Some(job) = self.execs.get_mut(&e) {
                        let max = job.max;
                        let out = if stream == Stream::Stdout {
                            &mut job.stdout
                        } else {
                            &mut job.stderr
                        };
                        let room = max.saturating_sub(out.len());
                        out.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
            }
        }
    }

    fn request(&mut self, req: Request, client: UnixStream, fds: Vec<OwnedFd>) {
        if self.shutdown.is_some() && !matches!(req, Request::List | Request::Wait { .. }) {
            return reply(client, &error("the pod is shutting down"));
        }
        match req {
            Request::ExecStream {
                id,
                process,
                bundle,
                tty,
            } => self.exec_stream(id, process, bundle, tty, fds, client),
            Request::Attach {
                id,
                stdin,
                stdout,
                stderr,
            } => self.attach(id, stdin, stdout, stderr, client),
            Request::Start(spec) => self.start(spec, client),
            Request::Signal { id, signal } => {
                let resp = match self.containers.get(&id) {
                    None => error(format!("no container {id}")),
                    Some(c) => match c.status.local_pid {
                        Some(pid) => match Signal::try_from(signal) {
                            Ok(sig) => match nix::sys::signal::kill(Pid::from_raw(pid), sig) {
                                Ok(()) | Err(Errno::ESRCH) => Response::Ok,
                                Err(e) => error(format!("kill: {e}")),
                            },
                            Err(_) => error(format!("invalid signal {signal}")),
                        },
                        None => Response::Ok,
                    },
                };
                reply(client, &resp);
            }
            Request::Wait { id, timeout_ms } => match self.containers.get(&id) {
                None => reply(client, &error(format!("no container {id}"))),
                Some(c) if c.status.exit_code.is_some() => reply(client, &Response::Status(c.status.clone())),
                Some(_) => self.waiters.push(Waiter {
                    id,
                    client,
                    deadline: Instant::now() + Duration::from_millis(timeout_ms),
                }),
            },
            Request::Exec {
                id,
                process,
                bundle,
                timeout_ms,
                max_output,
            } => {
                let job = ExecSpec {
                    id,
                    process,
                    bundle,
                    timeout_ms,
                    max_output,
                    stdio: None,
                    tty: false,
                };
                self.exec(job, client)
            }
            Request::ReopenLog { id } => {
                let resp = match self.containers.get_mut(&id) {
                    None => error(format!("no container {id}")),
                    Some(c) => match c.log.as_mut() {
                        Some(log) => match log.reopen() {
                            Ok(()) => Response::Ok,
                            Err(e) => error(format!("reopen {}: {e}", log.path().display())),
                        },
                        None => Response::Ok,
                    },
                };
                reply(client, &resp);
            }
            Request::Forget { id } => {
                self.drop_attaches_of(&id);
                if let Some(c) = self.containers.remove(&id) {
                    if let Some(pid) = c.status.local_pid {
                        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                    let tokens: Vec<u64> = self
                        .sources
                        .iter()
                        .filter(|(_, s)| matches!(s, Source::Output { owner: Owner::Container(o), .. } if *o == id))
                        .map(|(t, _)| *t)
                        .collect();
                    for t in tokens {
                        self.unwatch(t);
                    }
                }
                reply(client, &Response::Ok);
            }
            Request::List => {
                let containers = self.containers.values().map(|c| c.status.clone()).collect();
                reply(client, &Response::Containers { containers });
            }
            Request::Shutdown => self.begin_shutdown(Some(client)),
        }
    }

    fn start(&mut self, spec: StartSpec, client: UnixStream) {
        if self
            .containers
            .get(&spec.id)
            .is_some_and(|c| c.status.started_at != 0 || c.status.exit_code.is_some())
        {
            return reply(client, &error(format!("container {} was already started", spec.id)));
        }
        let result = (|| -> Result<u64, String> {
            let log = match &spec.log_path {
                Some(p) => Some(LogFile::open(p).map_err(|e| format!("open log {}: {e}", p.display()))?),
                None => None,
            };
            let mut stdio = launch::Stdio {
                stdin: None,
                stdout: None,
                stderr: None,
            };
            let mut stdin_keep = None;
            if spec.stdin {
                let (r, w) = pipe()?;
                // Attach writes here from the event loop: never block it.
                set_nonblocking(&w);
                stdio.stdin = Some(r);
                stdin_keep = Some(w);
            } else {
                stdio.stdin = Some(
                    std::fs::File::open("/dev/null")
                        .map_err(|e| format!("open /dev/null: {e}"))?
                        .into(),
                );
            }
            if !spec.tty {
                let (out_r, out_w) = pipe()?;
                let (err_r, err_w) = pipe()?;
                stdio.stdout = Some(out_w);
                stdio.stderr = Some(err_w);
                self.watch_output(out_r, Owner::Container(spec.id.clone()), Stream::Stdout);
                self.watch_output(err_r, Owner::Container(spec.id.clone()), Stream::Stderr);
            }
            let job = Job::Init {
                id: spec.id.clone(),
                bundle: spec.bundle.clone(),
                tty: spec.tty,
            };
            let (pid, sock) = launch::spawn(job, &self.runtime_root, stdio, self.pod_pid_ns)?;
            let helper_token = self.track_helper(pid, sock, HelperKind::Start { id: spec.id.clone() });
            let oom_baseline = oom_kills(&spec.cgroup_dirs);
            self.containers.insert(
                spec.id.clone(),
                Ctr {
                    status: ContainerStatus {
                        id: spec.id.clone(),
                        ..Default::default()
                    },
                    spec,
                    log,
                    stdin: stdin_keep,
                    pty: None,
                    oom_baseline,
                },
            );
            Ok(helper_token)
        })();
        match result {
            Ok(token) => {
                if let Some(h) = self.helpers.get_mut(&token) {
                    h.client = Some(client);
                }
            }
            Err(e) => reply(client, &error(e)),
        }
    }

    /// A streaming exec: the daemon's descriptors as stdio (or a new pty).
    fn exec_stream(
        &mut self,
        id: String,
        process: PathBuf,
        bundle: PathBuf,
        tty: bool,
        mut fds: Vec<OwnedFd>,
        client: UnixStream,
    ) {
        let stdio = if tty {
            launch::Stdio {
                stdin: None,
                stdout: None,
                stderr: None,
            }
        } else {
            if fds.len() != 3 {
                return reply(
                    client,
                    &error(format!("a streaming exec needs 3 descriptors, got {}", fds.len())),
                );
            }
            let stderr = fds.pop();
            let stdout = fds.pop();
            let stdin = fds.pop();
            launch::Stdio { stdin, stdout, stderr }
        };
        let job = ExecSpec {
            id,
            process,
            bundle,
            timeout_ms: None,
            max_output: 0,
            stdio: Some(stdio),
            tty,
        };
        self.exec(job, client)
    }

    fn exec(&mut self, job: ExecSpec, client: UnixStream) {
        let ExecSpec {
            id,
            process,
            bundle,
            timeout_ms,
            max_output: max,
            stdio: given,
            tty,
        } = job;
        let Some(c) = self.containers.get(&id) else {
            return reply(client, &error(format!("no container {id}")));
        };
        if !c.status.running() {
            return reply(client, &error(format!("container {id} is not running")));
        }
        self.exec_seq += 1;
        let sub = format!("nodelet-exec-{}", self.exec_seq);
        let sub_cgroups: Vec<PathBuf> = c.spec.cgroup_dirs.iter().map(|d| d.join(&sub)).collect();
        let exec_token = self.token();
        let stream = given.is_some();
        let result = (|| -> Result<(), String> {
            let stdio = match given {
                Some(stdio) => stdio,
                None => {
                    let (out_r, out_w) = pipe()?;
                    let (err_r, err_w) = pipe()?;
                    let stdin: OwnedFd = std::fs::File::open("/dev/null")
                        .map_err(|e| format!("open /dev/null: {e}"))?
                        .into();
                    self.watch_output(out_r, Owner::Exec(exec_token), Stream::Stdout);
                    self.watch_output(err_r, Owner::Exec(exec_token), Stream::Stderr);
                    launch::Stdio {
                        stdin: Some(stdin),
                        stdout: Some(out_w),
                        stderr: Some(err_w),
                    }
                }
            };
            let (pid, sock) = launch::spawn(
                Job::Exec {
                    id: id.clone(),
                    process,
                    sub_cgroup: sub.clone(),
                    bundle,
                    tty,
                },
                &self.runtime_root,
                stdio,
                self.pod_pid_ns,
            )?;
            self.track_helper(pid, sock, HelperKind::Exec { exec: exec_token });
            Ok(())
        })();
        match result {
            Ok(()) => {
                let client_token = stream.then(|| {
                    // Watch the kept connection: the daemon hanging up
                    // means its client went away.
                    let t = self.token();
                    let _ = self.epoll.add(
                        &client,
                        EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, t),
                    );
                    self.sources.insert(t, Source::ExecClient(exec_token));
                    t
                });
                self.execs.insert(
                    exec_token,
                    ExecJob {
                        client: Some(client),
                        pid: None,
                        stdout: Vec::new(),
                        stderr: Vec::new(),
                        max,
                        open_streams: if stream { 0 } else { 2 },
                        exit: None,
                        exited_at: None,
                        deadline: timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms)),
                        timed_out: false,
                        sub_cgroups,
                        stream,
                        client_token,
                        killed: false,
                    },
                );
            }
            Err(e) => {
                self.drop_exec_outputs(exec_token);
                reply(client, &error(e));
            }
        }
    }

    /// The streaming exec's connection is readable: the daemon only ever
    /// hangs up on it (or sends nothing), which kills the exec.
    fn exec_client_io(&mut self, token: u64, exec: u64) {
        let mut gone = false;
        if let Some(c) = self.execs.get(&exec).and_then(|j| j.client.as_ref()) {
            let mut buf = [0u8; 256];
            loop {
                match (&*c).read(&mut buf) {
                    Ok(0) => {
                        gone = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        gone = true;
                        break;
                    }
                }
            }
        } else {
            gone = true;
        }
        if gone {
            self.unwatch(token);
            if let Some(job) = self.execs.get_mut(&exec) {
                job.client = None;
                job.client_token = None;
                job.killed = true;
            }
        }
    }

    fn drop_exec_outputs(&mut self, exec: u64) {
        let tokens: Vec<u64> = self
            .sources
            .iter()
            .filter(|(_, s)| matches!(s, Source::Output { owner: Owner::Exec(e), .. } if *e == exec))
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            self.unwatch(t);
        }
    }

    fn helper_report(&mut self, token: u64, helper_id: u64) {
        let Some(helper) = self.helpers.get(&helper_id) else {
            self.unwatch(token);
            return;
        };
        let Some(outcome) = launch::read_outcome(&helper.sock) else {
            return;
        };
        self.unwatch(token);
        let Some(helper) = self.helpers.remove(&helper_id) else {
            return;
        };
        let _ = self.epoll.delete(&helper.sock);
        match (helper.kind, outcome) {
            (HelperKind::Start { id }, Outcome::Started { pid, pty }) => {
                let host_pid = launch::host_pid(pid).unwrap_or(pid);
                self.pids.insert(pid, PidRole::Container(id.clone()));
                if let Some(pty) = pty {
                    let dup = pty.try_clone().ok();
                    if let (Some(c), Some(d)) = (self.containers.get_mut(&id), dup) {
                        c.pty = Some(d);
                    }
                    self.watch_output(pty, Owner::Container(id.clone()), Stream::Stdout);
                }
                if let Some(c) = self.containers.get_mut(&id) {
                    c.status.pid = Some(host_pid);
                    c.status.local_pid = Some(pid);
                    c.status.started_at = crate::unix_nanos();
                    let _ = crate::fsutil::write_atomic(
                        &c.spec.status_path,
                        &serde_json::to_vec(&c.status).unwrap_or_default(),
                        false,
                    );
                    let status = c.status.clone();
                    if let Some(client) = helper.client {
                        reply(client, &Response::Status(status));
                    }
                }
                if let Some(code) = self.early_exits.remove(&pid) {
                    self.pids.remove(&pid);
                    self.container_exited(&id, code);
                }
            }
            (HelperKind::Start { id }, Outcome::Failed(why)) => {
                self.containers.remove(&id);
                let tokens: Vec<u64> = self
                    .sources
                    .iter()
                    .filter(|(_, s)| matches!(s, Source::Output { owner: Owner::Container(o), .. } if *o == id))
                    .map(|(t, _)| *t)
                    .collect();
                for t in tokens {
                    self.unwatch(t);
                }
                if let Some(client) = helper.client {
                    reply(client, &error(why));
                }
            }
            (HelperKind::Exec { exec }, Outcome::Started { pid, pty }) => {
                if let Some(job) = self.execs.get_mut(&exec) {
                    job.pid = Some(pid);
                    if job.stream {
                        let sent = job.client.as_ref().is_some_and(|c| {
                            send_line(c, &Response::ExecStarted { pid }, pty.as_ref().map(|p| p.as_raw_fd()))
                        });
                        if !sent {
                            job.killed = true;
                        }
                    }
                }
                // The daemon has its copy of the pty master now.
                drop(pty);
                self.pids.insert(pid, PidRole::Exec(exec));
                if let Some(code) = self.early_exits.remove(&pid) {
                    self.pids.remove(&pid);
                    if let Some(job) = self.execs.get_mut(&exec) {
                        job.exit = Some(code);
                        job.exited_at = Some(Instant::now());
                    }
                }
            }
            (HelperKind::Exec { exec }, Outcome::Failed(why)) => {
                self.drop_exec_outputs(exec);
                if let Some(t) = self.execs.get(&exec).and_then(|j| j.client_token) {
                    self.unwatch(t);
                }
                if let Some(mut job) = self.execs.remove(&exec) {
                    kill_cgroup(&job.sub_cgroups);
                    remove_sub_cgroups(&job.sub_cgroups);
                    if let Some(client) = job.client.take() {
                        reply(client, &error(why));
                    }
                }
            }
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        let (expired, waiting): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| w.deadline <= now);
        self.waiters = waiting;
        for w in expired {
            reply(w.client, &Response::Running);
        }
        self.attach_timers(now);
        let late: Vec<u64> = self
            .helpers
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in late {
            if let Some(h) = self.helpers.get(&t) {
                // Its report socket then reads EOF and the request fails.
                let _ = nix::sys::signal::kill(h.pid, Signal::SIGKILL);
            }
        }
        let mut finished = Vec::new();
        for (token, job) in self.execs.iter_mut() {
            if job.exit.is_none() && job.deadline.is_some_and(|d| d <= now) {
                job.timed_out = true;
            }
            if (job.timed_out || job.killed) && job.exit.is_none() {
                // Kill the whole tree: everything in the exec's sub-cgroup.
                kill_cgroup(&job.sub_cgroups);
                if let Some(pid) = job.pid {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            let drained = job.open_streams == 0 || job.exited_at.is_some_and(|t| now >= t + EXEC_DRAIN);
            if job.exit.is_some() && drained {
                finished.push(*token);
            }
        }
        for token in finished {
            self.drop_exec_outputs(token);
            if let Some(t) = self.execs.get(&token).and_then(|j| j.client_token) {
                self.unwatch(t);
            }
            if let Some(mut job) = self.execs.remove(&token) {
                kill_cgroup(&job.sub_cgroups);
                remove_sub_cgroups(&job.sub_cgroups);
                if job.stream {
                    if let Some(client) = job.client.take() {
                        reply(
                            client,
                            &Response::ExecExited {
                                exit_code: job.exit.unwrap_or(-1),
                            },
                        );
                    }
                    continue;
                }
                let b64 = base64::engine::general_purpose::STANDARD;
                let resp = Response::Exec {
                    exit_code: job.exit.unwrap_or(-1),
                    stdout: b64.encode(&job.stdout),
                    stderr: b64.encode(&job.stderr),
                    timed_out: job.timed_out,
                };
                if let Some(client) = job.client.take() {
                    reply(client, &resp);
                }
            }
        }
    }

    fn begin_shutdown(&mut self, client: Option<UnixStream>) {
        if let Some(Some(_)) = &self.shutdown {
            if let Some(c) = client {
                reply(c, &Response::Ok);
            }
            return;
        }
        self.shutdown = Some(client);
        for c in self.containers.values() {
            if let Some(pid) = c.status.local_pid {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        for h in self.helpers.values() {
            let _ = nix::sys::signal::kill(h.pid, Signal::SIGKILL);
        }
        for job in self.execs.values() {
            kill_cgroup(&job.sub_cgroups);
        }
    }

    fn shutdown_complete(&mut self) -> bool {
        if self.shutdown.is_none() {
            return false;
        }
        // Keep reaping until every container has exited, then answer.
        let running = self.containers.values().any(|c| c.status.running());
        if running || !self.helpers.is_empty() {
            for c in self.containers.values() {
                if let Some(pid) = c.status.local_pid {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            return false;
        }
        let _ = self.epoll.delete(&self.listener);
        if let Some(Some(client)) = self.shutdown.take() {
            reply(client, &Response::Ok);
        }
        true
    }
}

/// SIGKILL every process in the given cgroup directories.
fn kill_cgroup(dirs: &[PathBuf]) {
    for d in dirs {
        if std::fs::write(d.join("cgroup.kill"), b"1").is_ok() {
            return;
        }
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

fn remove_sub_cgroups(dirs: &[PathBuf]) {
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}
