//! Port-forward sessions: TCP connections to `localhost:port` in the pod's
//! network namespace, carried over SPDY (`portforward.k8s.io`: a stream
//! pair per connection, matched by `requestID`, the port in a `port`
//! header) or WebSocket channels (one connection per requested port, data
//! channel `2i` and error channel `2i+1`, each opened by the port as u16
//! little-endian).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::remotecommand::Writer;
use super::{spdy_session, ws, PortForwardParams};
use crate::runtime::Runtime;

struct Pair {
    port: Option<u16>,
    data: Option<spdy_session::IncomingStream>,
    error: Option<spdy_session::IncomingStream>,
}

/// Serve a SPDY port-forward session: every data+error stream pair is one
/// connection, forwarded concurrently with the others.
pub async fn serve_spdy(rt: Arc<Runtime>, p: PortForwardParams, mut session: spdy_session::Session) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = JoinSet::new();
    loop {
        let stream = tokio::select! {
            s = session.incoming.recv() => match s {
                Some(s) => s,
                None => break,
            },
            Some(_) = forwards.join_next(), if !forwards.is_empty() => continue,
        };
        let kind = stream.header("streamtype").unwrap_or("").to_ascii_lowercase();
        let port = stream
            .header("port")
            .and_then(|v| v.trim().parse::<u16>().ok())
            .filter(|&p| p > 0);
        if port.is_none() || !matches!(kind.as_str(), "data" | "error") {
            let msg = format!(
                "stream {}: needs a port header (1..65535) and streamType data or error",
                stream.id
            );
            stream.writer.write(Bytes::from(msg)).await;
            stream.writer.close().await;
            continue;
        }
        // Old clients send no requestID: pair by stream id as the kubelet
        // does (the error stream first, the data stream two ids later).
        let request = match stream.header("requestid") {
            Some(r) => r.to_string(),
            None if kind == "error" => stream.id.to_string(),
            None => stream.id.saturating_sub(2).to_string(),
        };
        let pair = pairs.entry(request.clone()).or_insert(Pair {
            port,
            data: None,
            error: None,
        });
        let slot = if kind == "data" {
            &mut pair.data
        } else {
            &mut pair.error
        };
        if slot.is_some() {
            let msg = format!("request {request}: {kind} stream already assigned");
            stream.writer.write(Bytes::from(msg)).await;
            stream.writer.close().await;
            continue;
        }
        *slot = Some(stream);
        if pair.data.is_some() && pair.error.is_some() {
            let Some(Pair {
                port: Some(port),
                data: Some(data),
                error: Some(error),
            }) = pairs.remove(&request)
            else {
                continue;
            };
            let rt = Arc::clone(&rt);
            let pod = p.pod_id.clone();
            forwards.spawn(async move {
                let data_writer = Writer::Spdy(data.writer.clone());
                let error_writer = Writer::Spdy(error.writer.clone());
                forward(&rt, &pod, port, data.data, &data_writer, &error_writer, true).await;
                data_writer.close().await;
                error_writer.close().await;
            });
        }
    }
    // The session is over: the JoinSet aborts what still runs.
}

/// Serve a WebSocket port-forward session for `ports` (from the CRI
/// request, else the URL's `port` parameters).
pub async fn serve_ws(rt: Arc<Runtime>, p: PortForwardParams, ports: Vec<u16>, mut session: ws::Session) {
    let mut forwards = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let data_ch = (2 * i) as u8;
        let data = Writer::Ws(session.writer(data_ch));
        let error = Writer::Ws(session.writer(data_ch + 1));
        let rx = session.readers.get_mut(2 * i).and_then(Option::take);
        let rt = Arc::clone(&rt);
        let pod = p.pod_id.clone();
        forwards.push(async move {
            data.write(Bytes::copy_from_slice(&port.to_le_bytes())).await;
            error.write(Bytes::copy_from_slice(&port.to_le_bytes())).await;
            if let Some(rx) = rx {
                forward(&rt, &pod, port, rx, &data, &error, false).await;
            }
        });
    }
    futures::future::join_all(forwards).await;
}

/// One forwarded connection: client data → the pod's port and back. The
/// client finishing its data stream half-closes the connection to the pod;
/// the pod closing ends the data stream.
async fn forward(
    rt: &Runtime,
    pod: &str,
    port: u16,
    mut from_client: mpsc::Receiver<Bytes>,
    to_client: &Writer,
    error: &Writer,
    json_error: bool,
) {
    let conn = match rt.port_forward_dial(pod, port).await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod}: {e}");
            tracing::debug!("{msg}");
            let text = if json_error {
                // What current kubelets send (older clients print it).
                let mut s = serde_json::json!({"closeConnection": false, "message": msg}).to_string();
                s.push('\n');
                s
            } else {
                msg
            };
            error.write(Bytes::from(text)).await;
            return;
        }
    };
    let (mut rd, mut wr) = conn.into_split();
    let upstream = async {
        while let Some(b) = from_client.recv().await {
            if wr.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    let downstream = async {
        let mut buf = BytesMut::with_capacity(64 << 10);
        loop {
            buf.reserve(64 << 10);
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !to_client.write(buf.split().freeze()).await {
                        break;
                    }
                }
            }
        }
        // The pod closed: tell the client now (it closes its side then).
        to_client.close().await;
    };
    tokio::join!(upstream, downstream);
}
