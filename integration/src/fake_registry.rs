//! A scripted registry for what a real one will not do: serve a corrupt,
//! short, missing or stalled blob, an endless manifest, demand a bearer
//! token, or throttle. It serves the content of an OCI layout over the
//! distribution API's GET routes and logs every request.
//!
//! It runs on its own thread and runtime so a test's blocking calls never
//! stall it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Serve the blob with its bytes flipped (same length).
    Corrupt,
    /// Serve only half the blob (with an honest Content-Length).
    Short,
    /// 404 BLOB_UNKNOWN.
    Missing,
    /// Send the headers and a little data, then nothing.
    Stall,
}

#[derive(Default)]
struct State {
    /// `repo` → tag → manifest bytes (+ media type)
    tags: HashMap<String, HashMap<String, (Vec<u8>, String)>>,
    /// digest → bytes (blobs and manifests)
    blobs: HashMap<String, (Vec<u8>, String)>,
    faults: HashMap<String, Fault>,
    /// Serve every manifest as an endless stream.
    endless_manifests: bool,
    /// Required bearer token (the token endpoint hands it out after
    /// checking `basic`).
    bearer: Option<(String, Option<(String, String)>)>,
    /// Bytes per 10 ms when throttling blobs.
    throttle: Option<usize>,
    requests: Vec<String>,
}

#[derive(Clone)]
pub struct FakeRegistry {
    state: Arc<Mutex<State>>,
    pub port: u16,
}

impl FakeRegistry {
    pub fn start() -> FakeRegistry {
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let st = Arc::clone(&state);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                tx.send(listener.local_addr().expect("addr").port()).expect("port");
                loop {
                    let Ok((sock, _)) = listener.accept().await else { break };
                    let st = Arc::clone(&st);
                    tokio::spawn(async move {
                        let _ = serve(sock, st).await;
                    });
                }
            });
        });
        let port = rx.recv().expect("fake registry port");
        FakeRegistry { state, port }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Serve `tag` of an OCI layout as `repo:latest`, with every blob.
    pub fn serve_layout(&self, layout: &Path, tag: &str, repo: &str) {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json")).expect("json");
        let mut st = self.state.lock().unwrap();
        for entry in std::fs::read_dir(layout.join("blobs/sha256")).expect("blobs").flatten() {
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            let bytes = std::fs::read(entry.path()).expect("blob");
            let media = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_string))
                .unwrap_or_else(|| "application/octet-stream".into());
            st.blobs.insert(digest, (bytes, media));
        }
        let m = index["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .expect("tag in layout");
        let digest = m["digest"].as_str().expect("digest").to_string();
        let entry = st.blobs.get(&digest).cloned().expect("manifest blob");
        st.tags
            .entry(repo.to_string())
            .or_default()
            .insert("latest".into(), entry);
    }

    pub fn fault(&self, digest: &str, fault: Fault) {
        self.state.lock().unwrap().faults.insert(digest.to_string(), fault);
    }

    pub fn endless_manifests(&self) {
        self.state.lock().unwrap().endless_manifests = true;
    }

    /// Demand a bearer token, handed out by `/token` to anyone (`basic` =
    /// None) or only to a client presenting these Basic credentials.
    pub fn require_bearer(&self, token: &str, basic: Option<(&str, &str)>) {
        self.state.lock().unwrap().bearer =
            Some((token.to_string(), basic.map(|(u, p)| (u.to_string(), p.to_string()))));
    }

    pub fn throttle(&self, bytes_per_10ms: usize) {
        self.state.lock().unwrap().throttle = Some(bytes_per_10ms);
    }

    /// `"GET /v2/..."` lines, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.requests().iter().filter(|r| r.contains(needle)).count()
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    mode: BodyMode,
}

enum BodyMode {
    Normal,
    Throttled(usize),
    Stall,
    Endless,
}

fn reply(status: u16, body: impl Into<Vec<u8>>) -> Reply {
    Reply {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.into(),
        mode: BodyMode::Normal,
    }
}

async fn serve(mut sock: TcpStream, st: Arc<Mutex<State>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: HashMap<String, String> = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let r = route(&st, &method, &target, &headers);
    let reason = match r.status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Error",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\nConnection: close\r\n", r.status);
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match r.mode {
        BodyMode::Endless => {
            head.push_str("\r\n");
            sock.write_all(head.as_bytes()).await?;
            let filler = vec![b' '; 64 * 1024];
            sock.write_all(b"{\"schemaVersion\":2,\"x\":\"").await?;
            loop {
                sock.write_all(&filler).await?;
            }
        }
        BodyMode::Stall => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", r.body.len()));
            sock.write_all(head.as_bytes()).await?;
            sock.write_all(&r.body[..r.body.len().min(100)]).await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        BodyMode::Throttled(rate) => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", r.body.len()));
            sock.write_all(head.as_bytes()).await?;
            for piece in r.body.chunks(rate.max(1)) {
                sock.write_all(piece).await?;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        BodyMode::Normal => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", r.body.len()));
            sock.write_all(head.as_bytes()).await?;
            sock.write_all(&r.body).await?;
        }
    }
    sock.shutdown().await
}

fn route(st: &Arc<Mutex<State>>, method: &str, target: &str, headers: &HashMap<String, String>) -> Reply {
    let mut s = st.lock().unwrap();
    s.requests.push(format!("{method} {target}"));
    let path = target.split('?').next().unwrap_or(target);
    if path == "/token" {
        let Some((token, basic)) = s.bearer.clone() else {
            return reply(404, "no token service");
        };
        if let Some((u, p)) = basic {
            use base64::Engine;
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            );
            if headers.get("authorization") != Some(&want) {
                return reply(401, r#"{"details":"wrong credentials for the token service"}"#);
            }
        }
        return reply(200, format!(r#"{{"token":"{token}","expires_in":300}}"#));
    }
    if let Some((token, _)) = &s.bearer {
        if headers.get("authorization") != Some(&format!("Bearer {token}")) {
            let mut r = reply(
                401,
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            );
            r.headers.push((
                "WWW-Authenticate".into(),
                format!(
                    "Bearer realm=\"http://127.0.0.1:{}/token\",service=\"fake\",scope=\"repository:x:pull\"",
                    headers.get("host").and_then(|h| h.rsplit(':').next()).unwrap_or("0")
                ),
            ));
            return r;
        }
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return reply(404, "");
    };
    if rest.is_empty() {
        return reply(200, "{}");
    }
    let (repo, kind, reference) = match rest.rsplitn(3, '/').collect::<Vec<_>>().as_slice() {
        [reference, kind, repo] => (repo.to_string(), kind.to_string(), reference.to_string()),
        _ => return reply(404, ""),
    };
    if kind == "manifests" {
        if s.endless_manifests {
            let mut r = reply(200, Vec::new());
            r.mode = BodyMode::Endless;
            r.headers = vec![(
                "Content-Type".into(),
                "application/vnd.oci.image.manifest.v1+json".into(),
            )];
            return r;
        }
        let found = if reference.starts_with("sha256:") {
            s.blobs.get(&reference).cloned()
        } else {
            s.tags.get(&repo).and_then(|t| t.get(&reference)).cloned()
        };
        return match found {
            Some((bytes, media)) => Reply {
                status: 200,
                headers: vec![("Content-Type".into(), media)],
                body: bytes,
                mode: BodyMode::Normal,
            },
            None => reply(
                404,
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            ),
        };
    }
    if kind == "blobs" {
        let fault = s.faults.get(&reference).cloned();
        let Some((mut bytes, _)) = s.blobs.get(&reference).cloned() else {
            return reply(
                404,
                r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#,
            );
        };
        let mut mode = match s.throttle {
            Some(rate) => BodyMode::Throttled(rate),
            None => BodyMode::Normal,
        };
        match fault {
            Some(Fault::Missing) => {
                return reply(
                    404,
                    r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#,
                )
            }
            Some(Fault::Corrupt) => {
                let half = bytes.len() / 2;
                for b in bytes.iter_mut().skip(half).take(64) {
                    *b ^= 0xff;
                }
            }
            Some(Fault::Short) => bytes.truncate(bytes.len() / 2),
            Some(Fault::Stall) => mode = BodyMode::Stall,
            None => {}
        }
        return Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/octet-stream".into())],
            body: bytes,
            mode,
        };
    }
    reply(404, "")
}
