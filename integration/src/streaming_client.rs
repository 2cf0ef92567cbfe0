//! A streaming client for tests: the HTTP upgrade, SPDY/3.1 with the
//! Kubernetes remote-command and port-forward stream conventions, and
//! WebSocket with the channel framing (binary and base64), as kubectl,
//! crictl and the kubelet's proxy speak them.
//!
//! SPDY frames are encoded with nodelet's own codec (`nodelet::streaming::
//! spdy`), whose layouts and compression are checked against the spec and
//! another zlib in its unit tests; everything above the frames (stream
//! ids, replies, FIN, channel conventions) is written here independently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use nodelet::streaming::spdy::{self, Decoder, Encoder, Frame, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::WebSocketStream;

/// `http://host:port/path` → (`host:port`, `/path`).
pub fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("not an http:// URL: {url}"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    Ok((
        host.to_string(),
        if path.is_empty() { "/".into() } else { path.to_string() },
    ))
}

/// An HTTP response head.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Send a request with `headers` and read the response head (and, for a
/// non-101 answer, its body). Returns the socket and bytes read past the
/// head.
pub async fn request(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<(Head, TcpStream, BytesMut)> {
    let (host, path) = split_url(url)?;
    let mut tcp = crate::tcp_connect(&host)
        .await
        .with_context(|| format!("connect {host}"))?;
    tcp.set_nodelay(true)?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(4096);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if tcp.read_buf(&mut buf).await? == 0 {
            bail!(
                "connection closed before the response head: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
    };
    let head_text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let _ = buf.split_to(end + 4);
    let mut lines = head_text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line in {head_text:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut head = Head {
        status,
        headers,
        body: String::new(),
    };
    if status != 101 {
        let len: usize = head.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        while buf.len() < len {
            if tcp.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        head.body = String::from_utf8_lossy(&buf).into_owned();
    }
    Ok((head, tcp, buf))
}

enum Event {
    Data(Bytes),
    End,
}

/// A SPDY/3.1 client session.
pub struct SpdyClient {
    out: mpsc::Sender<Frame>,
    streams: Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Event>>>>,
    replies: Arc<Mutex<HashMap<u32, tokio::sync::oneshot::Sender<bool>>>>,
    next_id: u32,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The server sent GOAWAY or closed.
    pub closed: Arc<tokio::sync::Notify>,
    paused: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for SpdyClient {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One client-opened stream.
pub struct ClientStream {
    pub id: u32,
    out: mpsc::Sender<Frame>,
    rx: mpsc::UnboundedReceiver<Event>,
    ended: bool,
}

/// The writing half of a client stream (to write while reading).
#[derive(Clone)]
pub struct ClientWriter {
    id: u32,
    out: mpsc::Sender<Frame>,
}

impl ClientWriter {
    pub async fn write(&self, data: &[u8]) -> anyhow::Result<()> {
        for chunk in data.chunks(32 << 10) {
            self.out
                .send(Frame::Data {
                    stream_id: self.id,
                    flags: 0,
                    data: Bytes::copy_from_slice(chunk),
                })
                .await
                .map_err(|_| anyhow!("session closed"))?;
        }
        Ok(())
    }
}

impl ClientStream {
    pub fn writer(&self) -> ClientWriter {
        ClientWriter {
            id: self.id,
            out: self.out.clone(),
        }
    }

    pub async fn write(&self, data: &[u8]) -> anyhow::Result<()> {
        for chunk in data.chunks(32 << 10) {
            self.out
                .send(Frame::Data {
                    stream_id: self.id,
                    flags: 0,
                    data: Bytes::copy_from_slice(chunk),
                })
                .await
                .map_err(|_| anyhow!("session closed"))?;
        }
        Ok(())
    }

    /// Half-close (FIN).
    pub async fn close(&self) {
        let _ = self
            .out
            .send(Frame::Data {
                stream_id: self.id,
                flags: spdy::FLAG_FIN,
                data: Bytes::new(),
            })
            .await;
    }

    /// The next chunk; `None` at FIN, reset or session end.
    pub async fn read(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        match self.rx.recv().await {
            Some(Event::Data(b)) => Some(b),
            _ => {
                self.ended = true;
                None
            }
        }
    }

    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(b) = self.read().await {
            all.extend_from_slice(&b);
        }
        all
    }

    /// Read until `needle` shows up (or the stream ends); all read so far.
    pub async fn read_until(&mut self, needle: &[u8], limit: Duration) -> anyhow::Result<Vec<u8>> {
        let mut all = Vec::new();
        tokio::time::timeout(limit, async {
            while !all.windows(needle.len()).any(|w| w == needle) {
                match self.read().await {
                    Some(b) => all.extend_from_slice(&b),
                    None => break,
                }
            }
        })
        .await
        .map_err(|_| {
            anyhow!(
                "timed out waiting for {:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&all)
            )
        })?;
        Ok(all)
    }
}

impl SpdyClient {
    /// Upgrade `url` to SPDY/3.1 offering `protocols`; returns the session
    /// and the protocol the server chose (empty if none).
    pub async fn connect(url: &str, protocols: &[&str]) -> anyhow::Result<(SpdyClient, String)> {
        let mut headers = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
        for p in protocols {
            headers.push(("X-Stream-Protocol-Version", p));
        }
        let (head, tcp, leftover) = request(url, &headers).await?;
        if head.status != 101 {
            bail!("upgrade refused: {} {}", head.status, head.body.trim());
        }
        let chosen = head.header("x-stream-protocol-version").unwrap_or("").to_string();
        Ok((SpdyClient::over(tcp, leftover), chosen))
    }

    fn over(tcp: TcpStream, leftover: BytesMut) -> SpdyClient {
        let (mut rd, mut wr) = tcp.into_split();
        let (out_tx, mut out_rx) = mpsc::channel::<Frame>(256);
        let streams: Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Event>>>> = Arc::default();
        let replies: Arc<Mutex<HashMap<u32, tokio::sync::oneshot::Sender<bool>>>> = Arc::default();
        let closed = Arc::new(tokio::sync::Notify::new());
        let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let p2 = Arc::clone(&paused);
        let writer = tokio::spawn(async move {
            let mut enc = Encoder::new();
            let mut buf = BytesMut::new();
            while let Some(f) = out_rx.recv().await {
                enc.encode(&f, &mut buf).expect("encode");
                while let Ok(f) = out_rx.try_recv() {
                    enc.encode(&f, &mut buf).expect("encode");
                    if buf.len() > 256 << 10 {
                        break;
                    }
                }
                if wr.write_all(&buf).await.is_err() {
                    return;
                }
                buf.clear();
            }
        });
        let (s2, r2, c2, ping_out) = (
            Arc::clone(&streams),
            Arc::clone(&replies),
            Arc::clone(&closed),
            out_tx.clone(),
        );
        let reader = tokio::spawn(async move {
            let mut dec = Decoder::new(Limits {
                max_data: 16 << 20,
                ..Limits::default()
            });
            let mut buf = leftover;
            'outer: loop {
                loop {
                    let frame = match dec.decode(&mut buf) {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(_) => break 'outer,
                    };
                    match frame {
                        Frame::SynReply { stream_id, flags, .. } => {
                            if let Some(tx) = r2.lock().unwrap().remove(&stream_id) {
                                let _ = tx.send(true);
                            }
                            if flags & spdy::FLAG_FIN != 0 {
                                if let Some(tx) = s2.lock().unwrap().remove(&stream_id) {
                                    let _ = tx.send(Event::End);
                                }
                            }
                        }
                        Frame::Data { stream_id, flags, data } => {
                            let mut map = s2.lock().unwrap();
                            if let Some(tx) = map.get(&stream_id) {
                                if !data.is_empty() {
                                    let _ = tx.send(Event::Data(data));
                                }
                                if flags & spdy::FLAG_FIN != 0 {
                                    let _ = tx.send(Event::End);
                                    map.remove(&stream_id);
                                }
                            }
                        }
                        Frame::RstStream { stream_id, .. } => {
                            if let Some(tx) = s2.lock().unwrap().remove(&stream_id) {
                                let _ = tx.send(Event::End);
                            }
                            if let Some(tx) = r2.lock().unwrap().remove(&stream_id) {
                                let _ = tx.send(false);
                            }
                        }
                        Frame::Ping { id } => {
                            let _ = ping_out.send(Frame::Ping { id }).await;
                        }
                        Frame::GoAway { .. } => break 'outer,
                        _ => {}
                    }
                }
                // A client that stops reading (stalled-client tests).
                while p2.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            for (_, tx) in s2.lock().unwrap().drain() {
                let _ = tx.send(Event::End);
            }
            r2.lock().unwrap().clear();
            c2.notify_waiters();
            c2.notify_one();
        });
        SpdyClient {
            out: out_tx,
            streams,
            replies,
            next_id: 1,
            tasks: vec![writer, reader],
            closed,
            paused,
        }
    }

    /// Stop reading from the socket, as a client that hangs would.
    pub fn stop_reading(&self) {
        self.paused.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Open a stream with `headers` and wait for the server's reply.
    pub async fn open(&mut self, headers: &[(&str, &str)]) -> anyhow::Result<ClientStream> {
        let id = self.next_id;
        self.next_id += 2;
        let (tx, rx) = mpsc::unbounded_channel();
        let (rtx, rrx) = tokio::sync::oneshot::channel();
        self.streams.lock().unwrap().insert(id, tx);
        self.replies.lock().unwrap().insert(id, rtx);
        self.out
            .send(Frame::SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                    .collect(),
            })
            .await
            .map_err(|_| anyhow!("session closed"))?;
        match tokio::time::timeout(Duration::from_secs(10), rrx).await {
            Ok(Ok(true)) => Ok(ClientStream {
                id,
                out: self.out.clone(),
                rx,
                ended: false,
            }),
            _ => bail!("stream {id} was not accepted"),
        }
    }

    /// Send raw bytes on the connection (malformed-input tests).
    pub async fn raw(url: &str, protocols: &[&str], bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut headers = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
        for p in protocols {
            headers.push(("X-Stream-Protocol-Version", p));
        }
        let (head, mut tcp, mut leftover) = request(url, &headers).await?;
        if head.status != 101 {
            bail!("upgrade refused: {} {}", head.status, head.body.trim());
        }
        tcp.write_all(bytes).await?;
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(n) = tcp.read_buf(&mut leftover).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        Ok(leftover.to_vec())
    }
}

/// The streams of a remote command over SPDY.
pub struct SpdyCommand {
    pub session: SpdyClient,
    pub protocol: String,
    pub error: ClientStream,
    pub stdin: Option<ClientStream>,
    pub stdout: Option<ClientStream>,
    pub stderr: Option<ClientStream>,
    pub resize: Option<ClientStream>,
}

/// What a remote command client asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Io {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl SpdyCommand {
    /// Connect and open the streams as client-go does: error first, then
    /// stdin, stdout, stderr, resize (v3+ with a tty).
    pub async fn start(url: &str, protocols: &[&str], io: Io) -> anyhow::Result<SpdyCommand> {
        let (mut session, protocol) = SpdyClient::connect(url, protocols).await?;
        let error = session.open(&[("streamType", "error")]).await?;
        let stdin = if io.stdin {
            Some(session.open(&[("streamType", "stdin")]).await?)
        } else {
            None
        };
        let stdout = if io.stdout {
            Some(session.open(&[("streamType", "stdout")]).await?)
        } else {
            None
        };
        let stderr = if io.stderr && !io.tty {
            Some(session.open(&[("streamType", "stderr")]).await?)
        } else {
            None
        };
        let resize_ok = matches!(
            protocol.as_str(),
            "v3.channel.k8s.io" | "v4.channel.k8s.io" | "v5.channel.k8s.io"
        );
        let resize = if io.tty && resize_ok {
            Some(session.open(&[("streamType", "resize")]).await?)
        } else {
            None
        };
        // The client never writes on the error stream.
        error.close().await;
        Ok(SpdyCommand {
            session,
            protocol,
            error,
            stdin,
            stdout,
            stderr,
            resize,
        })
    }

    pub async fn resize(&self, width: u16, height: u16) -> anyhow::Result<()> {
        let r = self.resize.as_ref().ok_or_else(|| anyhow!("no resize stream"))?;
        r.write(format!("{{\"Width\":{width},\"Height\":{height}}}\n").as_bytes())
            .await
    }

    /// Read stdout, stderr and the error stream to their ends.
    pub async fn finish(mut self, limit: Duration) -> anyhow::Result<Finished> {
        tokio::time::timeout(limit, async {
            let out = async {
                match self.stdout.as_mut() {
                    Some(s) => s.read_to_end().await,
                    None => Vec::new(),
                }
            };
            let err = async {
                match self.stderr.as_mut() {
                    Some(s) => s.read_to_end().await,
                    None => Vec::new(),
                }
            };
            let (stdout, stderr, error) = tokio::join!(out, err, self.error.read_to_end());
            Finished {
                stdout,
                stderr,
                error: String::from_utf8_lossy(&error).into_owned(),
            }
        })
        .await
        .map_err(|_| anyhow!("the command did not finish within {limit:?}"))
    }
}

/// The outcome of a remote command.
#[derive(Debug)]
pub struct Finished {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// What the error stream carried (a v4 JSON Status, or text).
    pub error: String,
}

impl Finished {
    /// The exit code a v4 status reports (0 for Success).
    pub fn exit_code(&self) -> anyhow::Result<i32> {
        let v: serde_json::Value =
            serde_json::from_str(&self.error).with_context(|| format!("error stream {:?}", self.error))?;
        match v["status"].as_str() {
            Some("Success") => Ok(0),
            Some("Failure") if v["reason"] == "NonZeroExitCode" => v["details"]["causes"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["reason"] == "ExitCode"))
                .and_then(|c| c["message"].as_str())
                .and_then(|m| m.parse().ok())
                .ok_or_else(|| anyhow!("no ExitCode cause in {}", self.error)),
            _ => bail!("failure status: {}", self.error),
        }
    }
}

/// A WebSocket channel client.
pub struct WsClient {
    pub socket: WebSocketStream<TcpStream>,
    pub protocol: String,
    pub base64: bool,
}

impl WsClient {
    pub async fn connect(url: &str, protocols: &[&str]) -> anyhow::Result<WsClient> {
        let (host, _) = split_url(url)?;
        let ws_url = url.replacen("http://", "ws://", 1);
        let mut req = ws_url.into_client_request()?;
        if !protocols.is_empty() {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", protocols.join(", ").parse()?);
        }
        let tcp = crate::tcp_connect(&host).await?;
        tcp.set_nodelay(true)?;
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        let (socket, resp) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config))
            .await
            .map_err(|e| anyhow!("websocket upgrade: {e}"))?;
        let protocol = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let base64 = protocol.contains("base64");
        Ok(WsClient {
            socket,
            protocol,
            base64,
        })
    }

    pub async fn send(&mut self, channel: u8, data: &[u8]) -> anyhow::Result<()> {
        use base64::Engine;
        let msg = if self.base64 {
            Message::text(format!(
                "{}{}",
                char::from(b'0' + channel),
                base64::engine::general_purpose::STANDARD.encode(data)
            ))
        } else {
            let mut b = vec![channel];
            b.extend_from_slice(data);
            Message::binary(b)
        };
        self.socket.send(msg).await?;
        Ok(())
    }

    /// v5 close signal: the client's side of `channel` ended.
    pub async fn close_channel(&mut self, channel: u8) -> anyhow::Result<()> {
        self.socket.send(Message::binary(vec![255, channel])).await?;
        Ok(())
    }

    /// The next channel message; `None` when the connection closes.
    pub async fn recv(&mut self) -> anyhow::Result<Option<(u8, Vec<u8>)>> {
        use base64::Engine;
        loop {
            match self.socket.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Err(e)) => return Err(anyhow!("websocket: {e}")),
                Some(Ok(Message::Binary(b))) => {
                    if b.is_empty() {
                        continue;
                    }
                    return Ok(Some((b[0], b[1..].to_vec())));
                }
                Some(Ok(Message::Text(t))) => {
                    let s = t.as_str();
                    if s.is_empty() {
                        continue;
                    }
                    let ch = s.as_bytes()[0] - b'0';
                    let data = base64::engine::general_purpose::STANDARD.decode(&s[1..])?;
                    return Ok(Some((ch, data)));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Read until the connection closes: bytes per channel.
    pub async fn collect(&mut self, limit: Duration) -> anyhow::Result<HashMap<u8, Vec<u8>>> {
        let mut by: HashMap<u8, Vec<u8>> = HashMap::new();
        tokio::time::timeout(limit, async {
            while let Some((ch, data)) = self.recv().await? {
                by.entry(ch).or_default().extend_from_slice(&data);
            }
            anyhow::Ok(())
        })
        .await
        .map_err(|_| anyhow!("websocket session did not end within {limit:?}"))??;
        Ok(by)
    }
}

/// The exit code in a v4 Status JSON (0 for Success).
pub fn status_exit_code(status: &str) -> anyhow::Result<i32> {
    Finished {
        stdout: Vec::new(),
        stderr: Vec::new(),
        error: status.to_string(),
    }
    .exit_code()
}
