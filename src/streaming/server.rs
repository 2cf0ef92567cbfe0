//! The streaming server's HTTP side: routing, token checks, protocol
//! negotiation and the upgrade to SPDY or WebSocket (hyper, HTTP/1.1;
//! optional TLS with rustls).
//!
//! `GET /stats` answers JSON counters (sessions, connections, the daemon's
//! live tokio tasks) for leak checks and monitoring.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::remotecommand::{self, Opts, Version, SPDY_PROTOCOLS, WS_PROTOCOLS};
use super::{portforward, spdy, spdy_session, ws, Counted, Pending, Streaming, StreamingConfig, StreamingError};

type Body = Full<Bytes>;

const PORT_FORWARD_SPDY: &str = "portforward.k8s.io";
const WS_TUNNEL_PREFIX: &str = "SPDY/3.1+";

pub fn tls_acceptor(cfg: &StreamingConfig) -> Result<Option<TlsAcceptor>, StreamingError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else {
        return Ok(None);
    };
    let bad = |what: &str, e: &dyn std::fmt::Display| StreamingError::Setup(format!("{what}: {e}"));
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(&format!("read {}", cert.display()), &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&format!("parse {}", cert.display()), &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(&format!("read {}", key.display()), &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("TLS certificate", &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// Accept connections until the daemon exits.
pub async fn serve(st: Arc<Streaming>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    loop {
        let (tcp, _peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                tracing::warn!("streaming accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let st = Arc::clone(&st);
        let tls = tls.clone();
        tokio::spawn(async move {
            let _live = Counted::new(&st.stats.connections);
            match tls {
                Some(acceptor) => match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => connection(st.clone(), s).await,
                    Ok(Err(e)) => tracing::debug!("streaming TLS handshake: {e}"),
                    Err(_) => tracing::debug!("streaming TLS handshake timed out"),
                },
                None => connection(st.clone(), tcp).await,
            }
        });
    }
}

async fn connection<IO>(st: Arc<Streaming>, io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let st = Arc::clone(&st);
        async move { Ok::<_, Infallible>(handle(st, req)) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Go and other clients read any case; title case reads better in
        // traces.
        .title_case_headers(true)
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut m = msg.into();
    m.push('\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(m)))
        .expect("static response parts")
}

/// Every value of a header, split at commas.
fn header_list(req: &Request<Incoming>, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

fn handle(st: Arc<Streaming>, mut req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/stats" {
        let body = serde_json::json!({
            "sessions": st.stats.sessions.load(Ordering::SeqCst),
            "connections": st.stats.connections.load(Ordering::SeqCst),
            "tasks": tokio::runtime::Handle::current().metrics().num_alive_tasks(),
        });
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("static response parts");
    }
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = match (parts.next(), parts.next()) {
        (Some(k @ ("exec" | "attach" | "portforward")), Some(t)) if !t.is_empty() && !t.contains('/') => (k, t),
        _ => return text(StatusCode::NOT_FOUND, format!("no such streaming endpoint {path}")),
    };
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let connection_upgrade = header_list(&req, "connection")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("upgrade"));
    let websocket = upgrade == "websocket";
    let spdy = upgrade.starts_with("spdy/3.1");
    if !connection_upgrade || !(websocket || spdy) {
        return text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: this endpoint needs Connection: Upgrade with Upgrade: SPDY/3.1 or websocket",
        );
    }
    let pending = match st.consume(token, kind) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::NOT_FOUND, e.to_string()),
    };
    if st.stats.sessions.load(Ordering::SeqCst) >= st.config.max_sessions {
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many streaming sessions");
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    if spdy {
        let offered = header_list(&req, "x-stream-protocol-version");
        let chosen: Option<(&str, Option<Version>)> = match &pending {
            Pending::PortForward(_) => {
                if offered.is_empty() || offered.iter().any(|o| o == PORT_FORWARD_SPDY) {
                    Some((PORT_FORWARD_SPDY, None))
                } else {
                    None
                }
            }
            _ if offered.is_empty() => Some(("", Some(Version::V1))),
            _ => offered.iter().find_map(|o| {
                SPDY_PROTOCOLS
                    .iter()
                    .find(|(name, _)| name == o)
                    .map(|(name, v)| (*name, Some(*v)))
            }),
        };
        let Some((name, version)) = chosen else {
            let ours: Vec<&str> = match &pending {
                Pending::PortForward(_) => vec![PORT_FORWARD_SPDY],
                _ => SPDY_PROTOCOLS.iter().map(|(n, _)| *n).collect(),
            };
            let mut r = text(
                StatusCode::FORBIDDEN,
                format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {ours:?}"
                ),
            );
            for p in ours {
                r.headers_mut()
                    .append("x-accepted-stream-protocol-versions", p.parse().expect("ascii"));
            }
            return r;
        };
        let st2 = Arc::clone(&st);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            let _live = Counted::new(&st2.stats.sessions);
            spdy_session(st2.clone(), TokioIo::new(upgraded), pending, version).await;
        });
        let mut r = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "SPDY/3.1");
        if !name.is_empty() {
            r = r.header("X-Stream-Protocol-Version", name);
        }
        return r.body(Full::new(Bytes::new())).expect("static response parts");
    }

    // WebSocket.
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "websocket upgrade without Sec-WebSocket-Key");
    };
    if req.headers().get("sec-websocket-version").and_then(|v| v.to_str().ok()) != Some("13") {
        let mut r = text(StatusCode::BAD_REQUEST, "websocket version 13 is required");
        r.headers_mut()
            .insert("sec-websocket-version", "13".parse().expect("ascii"));
        return r;
    }
    let offered = header_list(&req, "sec-websocket-protocol");
    let query_ports: Vec<u16> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("port="))
        .flat_map(|v| {
            v.split("%2C")
                .flat_map(|v| v.split(','))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter_map(|v| v.parse::<u16>().ok())
        .filter(|&p| p > 0)
        .collect();
    let chosen: Option<(String, WsMode)> = match &pending {
        Pending::PortForward(_) => {
            let pick = |o: &str| -> Option<WsMode> {
                match o {
                    "v4.channel.k8s.io" => Some(WsMode::Channels(ws::Framing {
                        base64: false,
                        close_signal: false,
                    })),
                    "v4.base64.channel.k8s.io" => Some(WsMode::Channels(ws::Framing {
                        base64: true,
                        close_signal: false,
                    })),
                    _ if o == format!("{WS_TUNNEL_PREFIX}{PORT_FORWARD_SPDY}") => Some(WsMode::Tunnel),
                    _ => None,
                }
            };
            if offered.is_empty() {
                Some((
                    String::new(),
                    WsMode::Channels(ws::Framing {
                        base64: false,
                        close_signal: false,
                    }),
                ))
            } else {
                offered.iter().find_map(|o| pick(o).map(|m| (o.clone(), m)))
            }
        }
        _ => {
            if offered.is_empty() {
                Some((
                    String::new(),
                    WsMode::Command(
                        Version::V1,
                        ws::Framing {
                            base64: false,
                            close_signal: false,
                        },
                    ),
                ))
            } else {
                offered.iter().find_map(|o| {
                    WS_PROTOCOLS.iter().find(|(n, _, _)| n == o).map(|(n, v, b64)| {
                        (
                            n.to_string(),
                            WsMode::Command(
                                *v,
                                ws::Framing {
                                    base64: *b64,
                                    close_signal: *v >= Version::V5,
                                },
                            ),
                        )
                    })
                })
            }
        }
    };
    let Some((name, mode)) = chosen else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("unable to upgrade: none of the websocket protocols {offered:?} is supported"),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let st2 = Arc::clone(&st);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let _live = Counted::new(&st2.stats.sessions);
        let config = WebSocketConfig::default()
            .max_message_size(Some(ws::MAX_MESSAGE))
            .max_frame_size(Some(ws::MAX_MESSAGE));
        let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        ws_session(st2.clone(), socket, pending, mode, query_ports).await;
    });
    let mut r = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header("Sec-WebSocket-Accept", accept);
    if !name.is_empty() {
        r = r.header("Sec-WebSocket-Protocol", name);
    }
    r.body(Full::new(Bytes::new())).expect("static response parts")
}

enum WsMode {
    Command(Version, ws::Framing),
    Channels(ws::Framing),
    Tunnel,
}

fn opts_of(p: &Pending) -> Opts {
    match p {
        Pending::Exec(e) => Opts {
            stdin: e.stdin,
            stdout: e.stdout,
            stderr: e.stderr,
            tty: e.tty,
        },
        Pending::Attach(a) => Opts {
            stdin: a.stdin,
            stdout: a.stdout,
            stderr: a.stderr,
            tty: a.tty,
        },
        Pending::PortForward(_) => Opts {
            stdin: false,
            stdout: false,
            stderr: false,
            tty: false,
        },
    }
}

async fn spdy_session<IO>(st: Arc<Streaming>, io: IO, pending: Pending, version: Option<Version>)
where
    IO: AsyncRead + AsyncWrite + Send,
{
    let write_timeout = Duration::from_secs(st.config.write_timeout_secs);
    let creation = Duration::from_secs(st.config.stream_creation_timeout_secs);
    let rt = Arc::clone(&st.runtime);
    let kind = pending.kind();
    let end = spdy_session::serve(io, spdy::Limits::default(), write_timeout, |mut session| async move {
        match pending {
            Pending::PortForward(p) => portforward::serve_spdy(rt, p, session).await,
            other => {
                let opts = opts_of(&other);
                let version = version.unwrap_or(Version::V1);
                match remotecommand::spdy_streams(&mut session, opts, version, creation).await {
                    Ok(streams) => match other {
                        Pending::Exec(p) => remotecommand::run_exec(&rt, &p, streams).await,
                        Pending::Attach(p) => remotecommand::run_attach(&rt, &p, streams).await,
                        Pending::PortForward(_) => {}
                    },
                    Err(e) => tracing::debug!("streaming {kind}: {e}"),
                }
            }
        }
    })
    .await;
    tracing::debug!(kind, ?end, "SPDY streaming session ended");
}

async fn ws_session<IO>(
    st: Arc<Streaming>,
    socket: WebSocketStream<IO>,
    pending: Pending,
    mode: WsMode,
    query_ports: Vec<u16>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let write_timeout = Duration::from_secs(st.config.write_timeout_secs);
    let rt = Arc::clone(&st.runtime);
    let kind = pending.kind();
    let end = match (mode, pending) {
        (WsMode::Command(version, framing), pending) => {
            let opts = opts_of(&pending);
            let readable = [opts.stdin, false, false, false, true];
            ws::serve(socket, framing, &readable, write_timeout, |mut session| async move {
                let streams = remotecommand::ws_streams(&mut session, opts, version).await;
                match pending {
                    Pending::Exec(p) => remotecommand::run_exec(&rt, &p, streams).await,
                    Pending::Attach(p) => remotecommand::run_attach(&rt, &p, streams).await,
                    Pending::PortForward(_) => {}
                }
            })
            .await
        }
        (WsMode::Channels(framing), Pending::PortForward(p)) => {
            let ports = if p.ports.is_empty() {
                query_ports
            } else {
                p.ports.clone()
            };
            // Two channels per port: more ports than the framing can
            // address would wrap channel numbers onto other ports'.
            let refused = if ports.is_empty() {
                Some("no port to forward: give ports in the request or ?port=".to_string())
            } else if ports.len() * 2 > framing.channels() {
                Some(format!(
                    "{} ports to forward; this protocol carries at most {}",
                    ports.len(),
                    framing.channels() / 2
                ))
            } else {
                None
            };
            if let Some(reason) = refused {
                let mut socket = socket;
                let _ = socket
                    .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                        code: 1008.into(),
                        reason: reason.into(),
                    }))
                    .await;
                return;
            }
            let readable: Vec<bool> = ports.iter().flat_map(|_| [true, false]).collect();
            ws::serve(socket, framing, &readable, write_timeout, |session| async move {
                portforward::serve_ws(rt, p, ports, session).await
            })
            .await
        }
        (WsMode::Tunnel, Pending::PortForward(p)) => {
            tunnel(socket, write_timeout, |io| async move {
                let end = spdy_session::serve(io, spdy::Limits::default(), write_timeout, |session| async move {
                    portforward::serve_spdy(rt, p, session).await
                })
                .await;
                tracing::debug!(?end, "tunnelled SPDY session ended");
            })
            .await;
            ws::End::Done
        }
        _ => ws::End::Protocol("protocol does not fit the request".into()),
    };
    tracing::debug!(kind, ?end, "WebSocket streaming session ended");
}

/// SPDY inside WebSocket binary messages (client-go's tunnelling dialer):
/// the SPDY session runs on one end of an in-memory pipe, this pumps the
/// other end to and from the socket.
async fn tunnel<IO, F, Fut>(socket: WebSocketStream<IO>, write_timeout: Duration, inner: F)
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(tokio::io::DuplexStream) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (ours, theirs) = tokio::io::duplex(256 << 10);
    let (mut sink, mut stream) = socket.split();
    let (mut rd, mut wr) = tokio::io::split(ours);
    let up = async {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let msg = Message::binary(Bytes::copy_from_slice(&buf[..n]));
                    match tokio::time::timeout(write_timeout, sink.send(msg)).await {
                        Ok(Ok(())) => {}
                        _ => break,
                    }
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), sink.close()).await;
    };
    let pumps = async {
        tokio::select! {
            () = up => {}
            () = down => {}
        }
    };
    tokio::join!(inner(theirs), pumps);
}
