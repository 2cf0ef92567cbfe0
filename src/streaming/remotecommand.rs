//! Exec and attach sessions: the Kubernetes remote-command protocol on top
//! of SPDY streams or WebSocket channels.
//!
//! Streams (SPDY: a `streamType` header; WebSocket: channel numbers):
//! `error` (3) carries the outcome, `stdin` (0), `stdout` (1), `stderr`
//! (2), `resize` (4, JSON `{"Width":w,"Height":h}` objects). Versions:
//! `channel.k8s.io` (v1) and `v2` report only failures as text on the
//! error stream; `v3` adds resize; `v4` reports the outcome as a JSON
//! `Status` (`NonZeroExitCode` with an `ExitCode` cause); `v5` is v4 plus
//! the WebSocket close signal.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{spdy_session, ws, AttachParams};
use crate::infra::protocol::attach as frame;
use crate::runtime::streams::{ExecParams, FdIo};
use crate::runtime::Runtime;

/// The remote-command protocol versions, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V1,
    V2,
    V3,
    V4,
    V5,
}

/// SPDY subprotocols we speak, in our order of preference.
pub const SPDY_PROTOCOLS: &[(&str, Version)] = &[
    ("v5.channel.k8s.io", Version::V5),
    ("v4.channel.k8s.io", Version::V4),
    ("v3.channel.k8s.io", Version::V3),
    ("v2.channel.k8s.io", Version::V2),
    ("channel.k8s.io", Version::V1),
];

/// WebSocket subprotocols: (name, version, base64).
pub const WS_PROTOCOLS: &[(&str, Version, bool)] = &[
    ("v5.channel.k8s.io", Version::V5, false),
    ("v4.channel.k8s.io", Version::V4, false),
    ("v4.base64.channel.k8s.io", Version::V4, true),
    ("channel.k8s.io", Version::V1, false),
    ("base64.channel.k8s.io", Version::V1, true),
];

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;

/// Our half of one output stream.
pub enum Writer {
    Spdy(spdy_session::StreamWriter),
    Ws(ws::ChannelWriter),
}

impl Writer {
    pub async fn write(&self, data: Bytes) -> bool {
        match self {
            Writer::Spdy(w) => w.write(data).await,
            Writer::Ws(w) => w.write(data).await,
        }
    }

    /// End of this output (SPDY FIN; WebSocket channels have none).
    pub async fn close(&self) {
        if let Writer::Spdy(w) = self {
            w.close().await;
        }
    }
}

/// The streams of one remote-command session.
pub struct Streams {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<Writer>,
    pub stderr: Option<Writer>,
    pub resize: Option<mpsc::Receiver<Bytes>>,
    pub error: Option<Writer>,
    pub version: Version,
}

/// What the client asked for.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Wait for the streams a SPDY client opens (as many as the kubelet
/// expects: error, each requested stdio, resize for a tty from v3 on).
pub async fn spdy_streams(
    session: &mut spdy_session::Session,
    opts: Opts,
    version: Version,
    limit: Duration,
) -> Result<Streams, String> {
    let resize = opts.tty && version >= Version::V3;
    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr && !opts.tty)
        + usize::from(resize);
    let mut s = Streams {
        stdin: None,
        stdout: None,
        stderr: None,
        resize: None,
        error: None,
        version,
    };
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + limit;
    while got < expected {
        let stream = match tokio::time::timeout_at(deadline, session.incoming.recv()).await {
            Err(_) => return Err("timed out waiting for the client to create streams".into()),
            Ok(None) => return Err("the client went away while creating streams".into()),
            Ok(Some(st)) => st,
        };
        let kind = stream.header("streamtype").unwrap_or("").to_ascii_lowercase();
        let w = Writer::Spdy(stream.writer.clone());
        let slot_taken = match kind.as_str() {
            "error" => s.error.replace(w).is_some(),
            "stdin" => s.stdin.replace(stream.data).is_some(),
            "stdout" => s.stdout.replace(w).is_some(),
            "stderr" => s.stderr.replace(w).is_some(),
            "resize" => s.resize.replace(stream.data).is_some(),
            _ => {
                stream.writer.reset().await;
                continue;
            }
        };
        if !slot_taken {
            got += 1;
        }
    }
    Ok(s)
}

/// The channels of a WebSocket session.
pub async fn ws_streams(session: &mut ws::Session, opts: Opts, version: Version) -> Streams {
    let take = |session: &mut ws::Session, ch: u8| session.readers.get_mut(usize::from(ch)).and_then(Option::take);
    let s = Streams {
        stdin: if opts.stdin { take(session, STDIN) } else { None },
        stdout: opts.stdout.then(|| Writer::Ws(session.writer(STDOUT))),
        stderr: (opts.stderr && !opts.tty).then(|| Writer::Ws(session.writer(STDERR))),
        resize: take(session, RESIZE),
        error: Some(Writer::Ws(session.writer(ERROR))),
        version,
    };
    // An empty message on the lowest writable channel tells the client the
    // session is up (the kubelet does the same).
    let first = if opts.stdout {
        STDOUT
    } else if opts.stderr && !opts.tty {
        STDERR
    } else {
        ERROR
    };
    let _ = session.writer(first).write_empty().await;
    s
}

impl ws::ChannelWriter {
    async fn write_empty(&self) -> bool {
        self.write(Bytes::new()).await
    }
}

/// How a command ended.
pub enum Outcome {
    Exited(i32),
    Failed(String),
}

/// The error stream's content for an outcome, or nothing.
pub fn status_message(version: Version, outcome: &Outcome) -> Option<String> {
    if version >= Version::V4 {
        let v = match outcome {
            Outcome::Exited(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
            Outcome::Exited(code) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Outcome::Failed(why) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("Internal error occurred: {why}"),
                "reason": "InternalError",
                "details": {"causes": [{"message": why}]},
                "code": 500,
            }),
        };
        return Some(v.to_string());
    }
    match outcome {
        Outcome::Exited(0) => None,
        Outcome::Exited(code) => Some(format!(
            "command terminated with non-zero exit code: exit status {code}"
        )),
        Outcome::Failed(why) => Some(format!("Internal error occurred: {why}")),
    }
}

/// Report the outcome and close every output.
async fn finish(s: &Streams, outcome: Outcome) {
    for w in [&s.stdout, &s.stderr].into_iter().flatten() {
        w.close().await;
    }
    if let Some(err) = &s.error {
        if let Some(msg) = status_message(s.version, &outcome) {
            err.write(Bytes::from(msg)).await;
        }
        err.close().await;
    }
}

/// Run an interactive exec over `s`.
pub async fn run_exec(rt: &Arc<Runtime>, p: &ExecParams, mut s: Streams) {
    let mut session = match rt.exec_stream(p).await {
        Ok(x) => x,
        Err(e) => return finish(&s, Outcome::Failed(e.to_string())).await,
    };
    let resizer = session.resizer();
    let input = pump_in(s.stdin.take(), session.stdin.take());
    let mut resize_rx = s.resize.take();
    let resize = async {
        let mut parser = SizeParser::default();
        if let Some(rx) = resize_rx.as_mut() {
            while let Some(b) = rx.recv().await {
                for (w, h) in parser.feed(&b) {
                    resizer.resize(w, h);
                }
            }
        }
    };
    let sides = async {
        tokio::join!(input, resize);
        std::future::pending::<()>().await
    };
    let (stdout, stderr) = (session.stdout.take(), session.stderr.take());
    let main = async {
        let (code, (), ()) = tokio::join!(
            session.wait(),
            pump_out(stdout, s.stdout.as_ref()),
            pump_out(stderr, s.stderr.as_ref())
        );
        code
    };
    let code = tokio::select! {
        c = main => c,
        () = sides => unreachable!("pending never completes"),
    };
    let outcome = match code {
        Ok(c) => Outcome::Exited(c),
        Err(e) => Outcome::Failed(e.to_string()),
    };
    finish(&s, outcome).await;
}

/// Client stdin → the process. Ending (EOF, v5 close signal) closes the
/// process's stdin.
async fn pump_in(rx: Option<mpsc::Receiver<Bytes>>, dst: Option<FdIo>) {
    let (Some(mut rx), Some(mut dst)) = (rx, dst) else {
        return;
    };
    while let Some(b) = rx.recv().await {
        if dst.write_all(&b).await.is_err() {
            break;
        }
    }
}

/// The process's output → the client, to EOF. Output nobody asked for is
/// read and dropped so the process never blocks on it.
async fn pump_out(src: Option<FdIo>, dst: Option<&Writer>) {
    let Some(mut src) = src else { return };
    let mut buf = BytesMut::with_capacity(64 << 10);
    loop {
        buf.reserve(64 << 10);
        match src.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let chunk = buf.split().freeze();
                if let Some(d) = dst {
                    if !d.write(chunk).await {
                        break;
                    }
                }
            }
        }
    }
}

/// Terminal sizes from a stream of JSON objects (Go's `json.Encoder`
/// output: objects separated by newlines, possibly split anywhere).
#[derive(Default)]
pub struct SizeParser {
    buf: Vec<u8>,
}

#[derive(Deserialize)]
struct Size {
    #[serde(rename = "Width", alias = "width")]
    width: u16,
    #[serde(rename = "Height", alias = "height")]
    height: u16,
}

impl SizeParser {
    pub fn feed(&mut self, data: &[u8]) -> Vec<(u16, u16)> {
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut consumed = 0;
        {
            let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Size>();
            loop {
                match it.next() {
                    Some(Ok(s)) => {
                        sizes.push((s.width, s.height));
                        consumed = it.byte_offset();
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(_)) => {
                        // Garbage: drop what we have, as a decoder would
                        // give up on it.
                        consumed = self.buf.len();
                        break;
                    }
                    None => {
                        consumed = self.buf.len();
                        break;
                    }
                }
            }
        }
        self.buf.drain(..consumed);
        if self.buf.len() > 4096 {
            self.buf.clear();
        }
        sizes
    }
}

/// Attach to a container's stdio over `s`.
pub async fn run_attach(rt: &Arc<Runtime>, p: &AttachParams, mut s: Streams) {
    let a = match rt.attach_stream(&p.container_id, p.stdin, p.stdout, p.stderr).await {
        Ok(a) => a,
        Err(e) => return finish(&s, Outcome::Failed(e.to_string())).await,
    };
    let (mut rd, mut wr) = a.stream.into_split();
    let mut inbuf = a.pending;
    let (stdout, stderr) = (&s.stdout, &s.stderr);
    let from_infra = async {
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            loop {
                match frame::decode(&inbuf) {
                    Ok(Some((kind, range, used))) => {
                        let payload = Bytes::copy_from_slice(&inbuf[range]);
                        inbuf.drain(..used);
                        match kind {
                            frame::STDOUT => {
                                if let Some(w) = stdout {
                                    w.write(payload).await;
                                }
                            }
                            frame::STDERR => {
                                if let Some(w) = stderr {
                                    w.write(payload).await;
                                }
                            }
                            frame::EXIT if payload.len() == 4 => {
                                return Outcome::Exited(i32::from_be_bytes([
                                    payload[0], payload[1], payload[2], payload[3],
                                ]))
                            }
                            _ => {}
                        }
                    }
                    Ok(None) => break,
                    Err(len) => return Outcome::Failed(format!("the infra sent a frame of {len} bytes")),
                }
            }
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    return Outcome::Failed("the pod's infra ended the attach session (client too slow?)".into())
                }
                Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let mut stdin = s.stdin.take();
    let mut resize = s.resize.take();
    let to_infra = async {
        enum Ev {
            Stdin(Option<Bytes>),
            Resize(Option<Bytes>),
            Idle,
        }
        let mut parser = SizeParser::default();
        let mut out = Vec::new();
        loop {
            out.clear();
            let ev = tokio::select! {
                d = recv(&mut stdin), if stdin.is_some() => Ev::Stdin(d),
                r = recv(&mut resize), if resize.is_some() => Ev::Resize(r),
                else => Ev::Idle,
            };
            match ev {
                Ev::Stdin(Some(b)) => {
                    for c in b.chunks(frame::MAX_PAYLOAD) {
                        frame::encode(frame::STDIN, c, &mut out);
                    }
                }
                Ev::Stdin(None) => {
                    stdin = None;
                    frame::encode(frame::STDIN_CLOSE, &[], &mut out);
                }
                Ev::Resize(Some(b)) => {
                    for (w, h) in parser.feed(&b) {
                        let mut p = [0u8; 4];
                        p[..2].copy_from_slice(&w.to_be_bytes());
                        p[2..].copy_from_slice(&h.to_be_bytes());
                        frame::encode(frame::RESIZE, &p, &mut out);
                    }
                }
                Ev::Resize(None) => resize = None,
                Ev::Idle => std::future::pending::<()>().await,
            }
            if !out.is_empty() && wr.write_all(&out).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let outcome = tokio::select! {
        o = from_infra => o,
        () = to_infra => unreachable!("the input side never ends by itself"),
    };
    finish(&s, outcome).await;
}

async fn recv(rx: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_from_split_json() {
        let mut p = SizeParser::default();
        assert_eq!(p.feed(b"{\"Width\":80,\"Hei"), vec![]);
        assert_eq!(
            p.feed(b"ght\":24}\n{\"Width\":100,\"Height\":50}\n"),
            vec![(80, 24), (100, 50)]
        );
        assert_eq!(p.feed(b"garbage"), vec![]);
        assert_eq!(p.feed(b"{\"width\":1,\"height\":2}"), vec![(1, 2)]);
    }

    #[test]
    fn v4_status_carries_the_exit_code() {
        let s = status_message(Version::V4, &Outcome::Exited(137)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "137");
        assert_eq!(
            status_message(Version::V5, &Outcome::Exited(0)).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        assert_eq!(status_message(Version::V2, &Outcome::Exited(0)), None);
        assert!(status_message(Version::V3, &Outcome::Exited(1))
            .unwrap()
            .contains("exit status 1"));
    }
}
