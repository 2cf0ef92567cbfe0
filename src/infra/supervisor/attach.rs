//! Attach sessions in the infra: relay a running container's stdio to the
//! daemon over the request's connection, in `protocol::attach` frames.
//!
//! The infra must never block: output to a session is queued in a bounded
//! buffer and written when the socket takes it (a session that falls
//! `OUT_MAX` behind is dropped; the CRI log still gets everything); stdin
//! the container does not take yet is held per session, and that session
//! is not read again until it is written (backpressure to the client).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{EpollEvent, EpollFlags};

use super::{error, reply, send_line, set_nonblocking, Owner, Source, Sup};
use crate::infra::log::Stream;
use crate::infra::protocol::{attach as frame, Response};

/// Output queued for one session before it is dropped as not reading.
const OUT_MAX: usize = 4 << 20;
/// After the exit frame, how long a session may take to read what is left.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Retry interval for stdin the container did not take.
const STDIN_RETRY: Duration = Duration::from_millis(20);

pub(super) struct AttachClient {
    container: String,
    pub(super) stream: UnixStream,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
    /// Bytes from the daemon not yet parsed into frames.
    inbuf: Vec<u8>,
    /// Frames for the daemon not yet written, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// Stdin the container has not taken yet.
    pending_stdin: Vec<u8>,
    stdin_ended: bool,
    /// The exit frame is queued: close when flushed or at this instant.
    closing: Option<Instant>,
    interest: EpollFlags,
}

impl AttachClient {
    fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }
}

impl Sup {
    pub(super) fn attach(&mut self, id: String, stdin: bool, stdout: bool, stderr: bool, client: UnixStream) {
        let Some(c) = self.containers.get(&id) else {
            return reply(client, &error(format!("no container {id}")));
        };
        if !c.status.running() {
            return reply(client, &error(format!("container {id} is not running")));
        }
        let tty = c.spec.tty;
        // Stdin only reaches a container created with it.
        let stdin = stdin && c.spec.stdin;
        set_nonblocking(&client);
        if !send_line(&client, &Response::Attached { tty }, None) {
            return;
        }
        let token = self.token();
        let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        if self.epoll.add(&client, EpollEvent::new(interest, token)).is_err() {
            return;
        }
        self.sources.insert(token, Source::Attach);
        self.attaches.insert(
            token,
            AttachClient {
                container: id,
                stream: client,
                stdin,
                stdout,
                stderr: stderr && !tty,
                tty,
                inbuf: Vec::new(),
                out: Vec::new(),
                out_pos: 0,
                pending_stdin: Vec::new(),
                stdin_ended: !stdin,
                closing: None,
                interest,
            },
        );
    }

    /// Container output: queue it for every session that wants it.
    pub(super) fn attach_output(&mut self, id: &str, stream: Stream, data: &[u8]) {
        if self.attaches.is_empty() {
            return;
        }
        let tokens: Vec<u64> = self
            .attaches
            .iter()
            .filter(|(_, a)| a.container == id)
            .filter(|(_, a)| match stream {
                Stream::Stdout => a.stdout,
                Stream::Stderr => a.stderr,
            })
            .map(|(t, _)| *t)
            .collect();
        let kind = match stream {
            Stream::Stdout => frame::STDOUT,
            Stream::Stderr => frame::STDERR,
        };
        for t in tokens {
            let Some(a) = self.attaches.get_mut(&t) else { continue };
            for chunk in data.chunks(frame::MAX_PAYLOAD) {
                frame::encode(kind, chunk, &mut a.out);
            }
            if a.queued() > OUT_MAX {
                // Never let one reader that does not read hold the pod's
                // output: drop it.
                self.drop_attach(t);
                continue;
            }
            self.attach_flush(t);
        }
    }

    /// The container exited: send what it wrote last, then its exit code,
    /// and close each session once that is read.
    pub(super) fn attach_exited(&mut self, id: &str, code: i32) {
        let tokens: Vec<u64> = self
            .attaches
            .iter()
            .filter(|(_, a)| a.container == id)
            .map(|(t, _)| *t)
            .collect();
        if tokens.is_empty() {
            return;
        }
        let outputs: Vec<u64> = self
            .sources
            .iter()
            .filter(|(_, s)| matches!(s, Source::Output { owner: Owner::Container(o), .. } if o == id))
            .map(|(t, _)| *t)
            .collect();
        for t in outputs {
            self.pump(t);
        }
        let deadline = Instant::now() + CLOSE_GRACE;
        for t in tokens {
            if let Some(a) = self.attaches.get_mut(&t) {
                frame::encode(frame::EXIT, &code.to_be_bytes(), &mut a.out);
                a.closing = Some(deadline);
            }
            self.attach_flush(t);
        }
    }

    pub(super) fn drop_attaches_of(&mut self, id: &str) {
        let tokens: Vec<u64> = self
            .attaches
            .iter()
            .filter(|(_, a)| a.container == id)
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            self.drop_attach(t);
        }
    }

    /// The earliest attach deadline (stdin retry, close grace).
    pub(super) fn attach_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        self.attaches
            .values()
            .filter_map(|a| {
                if !a.pending_stdin.is_empty() {
                    Some(now + STDIN_RETRY)
                } else {
                    a.closing
                }
            })
            .min()
    }

    pub(super) fn attach_timers(&mut self, now: Instant) {
        let tokens: Vec<u64> = self.attaches.keys().copied().collect();
        for t in tokens {
            let Some(a) = self.attaches.get(&t) else { continue };
            if a.closing.is_some_and(|d| d <= now) {
                self.drop_attach(t);
                continue;
            }
            if !a.pending_stdin.is_empty() {
                self.attach_process(t);
            }
        }
    }

    /// The session's socket is ready: read frames, write queued output.
    pub(super) fn attach_io(&mut self, token: u64) {
        let mut gone = false;
        if let Some(a) = self.attaches.get_mut(&token) {
            if a.interest.contains(EpollFlags::EPOLLIN) {
                let mut buf = [0u8; 16 << 10];
                loop {
                    match a.stream.read(&mut buf) {
                        Ok(0) => {
                            gone = true;
                            break;
                        }
                        Ok(n) => {
                            a.inbuf.extend_from_slice(&buf[..n]);
                            if a.inbuf.len() > 2 * (frame::MAX_PAYLOAD + frame::HEADER) {
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            gone = true;
                            break;
                        }
                    }
                }
            }
        } else {
            return;
        }
        self.attach_process(token);
        if gone {
            self.drop_attach(token);
            return;
        }
        self.attach_flush(token);
    }

    /// Act on the complete frames received, stopping at stdin the
    /// container does not take yet.
    fn attach_process(&mut self, token: u64) {
        loop {
            let Some(a) = self.attaches.get_mut(&token) else { return };
            // Stdin first: nothing behind it may overtake it.
            if !a.pending_stdin.is_empty() {
                let pending = std::mem::take(&mut a.pending_stdin);
                let id = a.container.clone();
                let rest = self.write_stdin(&id, &pending);
                let Some(a) = self.attaches.get_mut(&token) else { return };
                a.pending_stdin = rest;
                if !a.pending_stdin.is_empty() {
                    break;
                }
            }
            let Some(a) = self.attaches.get_mut(&token) else { return };
            let (kind, range, used) = match frame::decode(&a.inbuf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => {
                    // The daemon never sends these: a protocol error.
                    self.drop_attach(token);
                    return;
                }
            };
            let payload: Vec<u8> = a.inbuf[range].to_vec();
            a.inbuf.drain(..used);
            let id = a.container.clone();
            match kind {
                frame::STDIN if a.stdin && !a.stdin_ended => a.pending_stdin = payload,
                frame::STDIN => {}
                frame::STDIN_CLOSE => {
                    let first = !a.stdin_ended;
                    a.stdin_ended = true;
                    if first {
                        self.stdin_ended(&id);
                    }
                }
                frame::RESIZE if payload.len() == 4 && a.tty => {
                    let width = u16::from_be_bytes([payload[0], payload[1]]);
                    let height = u16::from_be_bytes([payload[2], payload[3]]);
                    if let Some(pty) = self.containers.get(&id).and_then(|c| c.pty.as_ref()) {
                        crate::infra::resize_pty(pty.as_raw_fd(), width, height);
                    }
                }
                _ => {}
            }
        }
        self.attach_interest(token);
    }

    /// Write to the container's stdin (pipe or pty master) without
    /// blocking; returns what it did not take.
    fn write_stdin(&mut self, id: &str, data: &[u8]) -> Vec<u8> {
        let Some(c) = self.containers.get(id) else {
            return Vec::new();
        };
        let Some(fd) = c.pty.as_ref().or(c.stdin.as_ref()) else {
            return Vec::new();
        };
        let mut off = 0;
        while off < data.len() {
            match nix::unistd::write(fd, &data[off..]) {
                Ok(n) => off += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return data[off..].to_vec(),
                // EPIPE: the container closed its stdin; drop the rest.
                Err(_) => return Vec::new(),
            }
        }
        Vec::new()
    }

    /// A session's stdin ended: with `stdin_once`, the container's stdin
    /// closes (it reads EOF), as the CRI defines it.
    fn stdin_ended(&mut self, id: &str) {
        if let Some(c) = self.containers.get_mut(id) {
            if c.spec.stdin_once && !c.spec.tty {
                c.stdin = None;
            }
        }
    }

    fn attach_flush(&mut self, token: u64) {
        let Some(a) = self.attaches.get_mut(&token) else { return };
        let mut failed = false;
        while a.out_pos < a.out.len() {
            match a.stream.write(&a.out[a.out_pos..]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => a.out_pos += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if a.out_pos == a.out.len() {
            a.out.clear();
            a.out_pos = 0;
        } else if a.out_pos > (1 << 20) {
            a.out.drain(..a.out_pos);
            a.out_pos = 0;
        }
        if failed || (a.closing.is_some() && a.queued() == 0) {
            self.drop_attach(token);
            return;
        }
        self.attach_interest(token);
    }

    /// Readable unless stdin is held up; writable while output is queued.
    fn attach_interest(&mut self, token: u64) {
        let Some(a) = self.attaches.get_mut(&token) else { return };
        let mut want = EpollFlags::EPOLLRDHUP;
        if a.pending_stdin.is_empty() && a.closing.is_none() {
            want |= EpollFlags::EPOLLIN;
        }
        if a.queued() > 0 {
            want |= EpollFlags::EPOLLOUT;
        }
        if want != a.interest {
            let mut ev = EpollEvent::new(want, token);
            if self.epoll.modify(&a.stream, &mut ev).is_ok() {
                a.interest = want;
            }
        }
    }

    pub(super) fn drop_attach(&mut self, token: u64) {
        self.unwatch(token);
        if let Some(a) = self.attaches.remove(&token) {
            if !a.stdin_ended {
                self.stdin_ended(&a.container);
            }
        }
    }
}
