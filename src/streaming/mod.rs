//! The streaming server: `Exec`, `Attach` and `PortForward` sessions.
//!
//! The CRI RPCs only validate and hand out a URL
//! (`http(s)://<address>/{exec,attach,portforward}/<token>`) carrying a
//! random single-use token that expires (`token_ttl_secs`). The client
//! (crictl, a kubelet's API-server proxy, kubectl) then connects here and
//! upgrades the HTTP/1.1 connection, negotiating the protocol as the
//! Kubernetes clients do:
//! - SPDY/3.1 (`spdy.rs` framing, `spdy_session.rs` streams) with the
//!   remote-command subprotocols `v5`/`v4.channel.k8s.io` (exit status as a
//!   JSON `Status` on the error stream), `v3` (resize), `v2`,
//!   `channel.k8s.io`, and `portforward.k8s.io` (a data and an error stream
//!   per forwarded connection);
//! - WebSocket (`ws.rs`) with `v5.channel.k8s.io` (close signal),
//!   `v4.channel.k8s.io`, `channel.k8s.io` and their `base64.` variants,
//!   port-forward over channels with the port prefix, and SPDY tunnelled in
//!   WebSocket (`SPDY/3.1+portforward.k8s.io`, what kubectl ≥ 1.30 uses).
//!
//! The sessions (`remotecommand.rs`, `portforward.rs`) pump bytes between
//! those streams and what the runtime gives (`runtime::streams`).

pub mod portforward;
pub mod remotecommand;
pub mod server;
pub mod spdy;
pub mod spdy_session;
pub mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::runtime::streams::ExecParams;
use crate::runtime::{Runtime, RuntimeError};

/// `[streaming]` in the daemon's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// `host:port` to listen on; port 0 picks a free one.
    pub address: String,
    /// PEM certificate chain and key: serve HTTPS when both are set.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How long a URL returned by Exec/Attach/PortForward stays valid.
    pub token_ttl_secs: u64,
    /// A session whose client takes nothing for this long is ended (and
    /// its exec killed), so a client that stops reading cannot pin a
    /// process forever.
    pub write_timeout_secs: u64,
    /// How long a client has to open all the streams a session needs.
    pub stream_creation_timeout_secs: u64,
    /// Sessions at once; more are refused with 503.
    pub max_sessions: usize,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: "127.0.0.1:0".into(),
            tls_cert: None,
            tls_key: None,
            token_ttl_secs: 60,
            write_timeout_secs: 60,
            stream_creation_timeout_secs: 30,
            max_sessions: 1000,
        }
    }
}

impl StreamingConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.address
            .parse::<SocketAddr>()
            .map_err(|e| format!("streaming.address {:?}: {e} (want ip:port)", self.address))?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("streaming.tls_cert and streaming.tls_key must be set together".into());
        }
        if self.token_ttl_secs == 0 || self.write_timeout_secs == 0 || self.stream_creation_timeout_secs == 0 {
            return Err("streaming timeouts must be at least 1 second".into());
        }
        if self.max_sessions == 0 {
            return Err("streaming.max_sessions must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("too many pending streaming requests ({0}); try again later")]
    TooManyRequests(usize),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("streaming server: {0}")]
    Setup(String),
}

/// Pending tokens at most (as the kubelet's streaming cache).
const MAX_PENDING: usize = 1000;

/// What a token was issued for.
#[derive(Debug, Clone)]
pub enum Pending {
    Exec(ExecParams),
    Attach(AttachParams),
    PortForward(PortForwardParams),
}

impl Pending {
    fn kind(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AttachParams {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

#[derive(Debug, Clone)]
pub struct PortForwardParams {
    pub pod_id: String,
    pub ports: Vec<u16>,
}

enum Slot {
    Live {
        what: Pending,
        expires: Instant,
    },
    /// Used or expired, remembered until `forget` for a precise message.
    Spent {
        why: &'static str,
        forget: Instant,
    },
}

/// Why a token was refused (the HTTP answer says it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Unknown,
    Used,
    Expired,
    WrongKind { issued_for: &'static str },
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Unknown => write!(f, "unknown streaming token"),
            TokenError::Used => write!(f, "streaming token already used (tokens are single-use)"),
            TokenError::Expired => write!(f, "streaming token expired"),
            TokenError::WrongKind { issued_for } => write!(f, "streaming token was issued for {issued_for}"),
        }
    }
}

/// Counters for leak checks and operations (`GET /stats`).
#[derive(Default)]
pub struct Stats {
    pub sessions: AtomicUsize,
    pub connections: AtomicUsize,
}

/// Keeps a counter up while alive.
pub(crate) struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    pub(crate) fn new(c: &'a AtomicUsize) -> Counted<'a> {
        c.fetch_add(1, Ordering::SeqCst);
        Counted(c)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Streaming {
    pub config: StreamingConfig,
    pub runtime: Arc<Runtime>,
    /// `http://127.0.0.1:12345`: what URLs start with.
    base_url: String,
    tokens: Mutex<HashMap<String, Slot>>,
    pub stats: Stats,
}

impl Streaming {
    /// Bind the listener and start serving in the background.
    pub async fn start(config: StreamingConfig, runtime: Arc<Runtime>) -> Result<Arc<Streaming>, StreamingError> {
        let tls = server::tls_acceptor(&config)?;
        let listener = tokio::net::TcpListener::bind(&config.address)
            .await
            .map_err(|e| StreamingError::Setup(format!("listen on {}: {e}", config.address)))?;
        let local = listener
            .local_addr()
            .map_err(|e| StreamingError::Setup(format!("local address: {e}")))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let streaming = Arc::new(Streaming {
            base_url: format!("{scheme}://{local}"),
            config,
            runtime,
            tokens: Mutex::new(HashMap::new()),
            stats: Stats::default(),
        });
        tracing::info!(url = %streaming.base_url, "streaming server listening");
        tokio::spawn(server::serve(Arc::clone(&streaming), listener, tls));
        Ok(streaming)
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Validate an exec and return its URL.
    pub fn exec_url(&self, p: ExecParams) -> Result<String, StreamingError> {
        if p.cmd.is_empty() {
            return Err(StreamingError::InvalidArgument("cmd is required".into()));
        }
        check_stdio(p.stdin, p.stdout, p.stderr, p.tty)?;
        self.runtime.check_running(&p.container_id)?;
        self.issue(Pending::Exec(p))
    }

    pub fn attach_url(&self, p: AttachParams) -> Result<String, StreamingError> {
        check_stdio(p.stdin, p.stdout, p.stderr, p.tty)?;
        self.runtime.check_running(&p.container_id)?;
        self.issue(Pending::Attach(p))
    }

    pub fn port_forward_url(&self, pod_id: &str, ports: &[i32]) -> Result<String, StreamingError> {
        let ports = ports
            .iter()
            .map(|&p| {
                u16::try_from(p)
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| StreamingError::InvalidArgument(format!("port {p} is not in 1..65535")))
            })
            .collect::<Result<Vec<u16>, _>>()?;
        self.runtime.check_pod_ready(pod_id)?;
        self.issue(Pending::PortForward(PortForwardParams {
            pod_id: pod_id.to_string(),
            ports,
        }))
    }

    fn issue(&self, what: Pending) -> Result<String, StreamingError> {
        let now = Instant::now();
        let ttl = Duration::from_secs(self.config.token_ttl_secs);
        let mut tokens = self.tokens.lock().expect("tokens");
        // Sweep: expired tokens become tombstones, old tombstones go.
        tokens.retain(|_, s| match s {
            Slot::Spent { forget, .. } => *forget > now,
            Slot::Live { .. } => true,
        });
        for s in tokens.values_mut() {
            if matches!(s, Slot::Live { expires, .. } if *expires <= now) {
                *s = Slot::Spent {
                    why: "expired",
                    forget: now + ttl,
                };
            }
        }
        let live = tokens.values().filter(|s| matches!(s, Slot::Live { .. })).count();
        if live >= MAX_PENDING {
            return Err(StreamingError::TooManyRequests(live));
        }
        let kind = what.kind();
        // 128 random bits, URL-safe.
        let token = crate::fsutil::random_hex(16);
        tokens.insert(
            token.clone(),
            Slot::Live {
                what,
                expires: now + ttl,
            },
        );
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }

    /// Take the request a token stands for; it can never be used again.
    pub fn consume(&self, token: &str, kind: &str) -> Result<Pending, TokenError> {
        let now = Instant::now();
        let forget = now + Duration::from_secs(self.config.token_ttl_secs);
        let mut tokens = self.tokens.lock().expect("tokens");
        let slot = tokens.get_mut(token).ok_or(TokenError::Unknown)?;
        match std::mem::replace(slot, Slot::Spent { why: "used", forget }) {
            Slot::Spent { why, forget } => {
                *slot = Slot::Spent { why, forget };
                Err(if why == "expired" {
                    TokenError::Expired
                } else {
                    TokenError::Used
                })
            }
            Slot::Live { expires, .. } if expires <= now => {
                *slot = Slot::Spent { why: "expired", forget };
                Err(TokenError::Expired)
            }
            Slot::Live { what, .. } if what.kind() != kind => Err(TokenError::WrongKind {
                issued_for: what.kind(),
            }),
            Slot::Live { what, .. } => Ok(what),
        }
    }
}

fn check_stdio(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<(), StreamingError> {
    if !stdin && !stdout && !stderr {
        return Err(StreamingError::InvalidArgument(
            "one of stdin, stdout and stderr must be set".into(),
        ));
    }
    if tty && stderr {
        return Err(StreamingError::InvalidArgument(
            "tty and stderr cannot both be set (a terminal has one output)".into(),
        ));
    }
    Ok(())
}
