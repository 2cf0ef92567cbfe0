//! A client for the OCI distribution / Docker registry v2 pull API.
//!
//! It does the three things a pull needs: fetch a manifest (size-capped,
//! digest-checked), fetch a small blob (same), and open a blob as a byte
//! stream. Around them: endpoint selection (mirrors first, then the
//! registry; `docker.io` means `registry-1.docker.io`; plain HTTP where
//! configured, and as a fallback for loopback registries as containerd does),
//! and authentication (anonymous or credentialed bearer tokens from the
//! `WWW-Authenticate` challenge, HTTP Basic, a given registry token, an
//! identity (refresh) token), with tokens cached per endpoint and repository.
//!
//! We do not use `oci-client` here: it reads manifests into memory with no
//! size limit, so a hostile registry could exhaust the daemon's memory, and
//! it does not report each mirror's answer separately. See
//! `docs/architecture.md`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::{Config, RegistryConfig};

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{url}: cannot reach the registry: {message}")]
    Unreachable { url: String, message: String },
    #[error("{url}: the registry sent nothing for {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("{url}: not found (HTTP 404{answer})")]
    NotFound { url: String, answer: String },
    #[error("{url}: authentication failed (HTTP {status}{answer})")]
    Unauthorized { url: String, status: u16, answer: String },
    #[error("{url}: the registry answered HTTP {status}{answer}")]
    Status { url: String, status: u16, answer: String },
    #[error("{url}: {what} is larger than the limit of {limit} bytes")]
    TooLarge {
        url: String,
        what: &'static str,
        limit: u64,
    },
    #[error("{url}: content digest is {actual}, expected {expected}")]
    DigestMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{url}: content is {actual} bytes, the descriptor says {expected}")]
    SizeMismatch { url: String, expected: u64, actual: u64 },
    #[error("{url}: {message}")]
    Protocol { url: String, message: String },
}

impl RegistryError {
    /// True when another endpoint may do better (mirror fall-through).
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::NotFound { .. })
    }
}

/// Credentials for one pull, as the CRI `AuthConfig` or the config file
/// gives them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
    /// Sent as `Authorization: Bearer` without a token exchange.
    pub registry_token: Option<String>,
    /// An OAuth2 refresh token exchanged at the token realm.
    pub identity_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("registry_token", &self.registry_token.as_ref().map(|_| "<redacted>"))
            .field("identity_token", &self.identity_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Credentials {
    pub fn is_empty(&self) -> bool {
        self.username.is_none() && self.registry_token.is_none() && self.identity_token.is_none()
    }

    fn from_config(reg: &RegistryConfig) -> Credentials {
        Credentials {
            username: reg.username.clone(),
            password: reg.password.clone(),
            registry_token: reg.token.clone(),
            identity_token: None,
        }
    }

    /// A digest of the secrets, to key caches without keeping them twice.
    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            &self.username,
            &self.password,
            &self.registry_token,
            &self.identity_token,
        ] {
            h.update(part.as_deref().unwrap_or("").as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..8])
    }

    fn basic_header(&self) -> Option<String> {
        let user = self.username.as_ref()?;
        let pass = self.password.clone().unwrap_or_default();
        let raw = format!("{user}:{pass}");
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        ))
    }
}

/// One place a repository can be fetched from.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `scheme://host[:port]`, no trailing slash.
    pub base: String,
    /// `host[:port]`: the key for tokens and config lookups.
    pub host: String,
    /// Set on mirrors: the upstream registry, sent as `?ns=` like containerd.
    pub namespace: Option<String>,
    pub insecure_tls: bool,
    pub credentials: Credentials,
}

impl Endpoint {
    fn url(&self, repo: &str, kind: &str, reference: &str) -> String {
        let mut u = format!("{}/v2/{repo}/{kind}/{reference}", self.base);
        if let Some(ns) = &self.namespace {
            u.push_str("?ns=");
            u.push_str(ns);
        }
        u
    }
}

/// Where a repository of `registry` can be pulled from, in order.
pub fn endpoints(config: &Config, registry: &str, request_creds: &Credentials) -> Vec<Endpoint> {
    let reg_cfg = config.registries.get(registry).cloned().unwrap_or_default();
    let mut out = Vec::new();
    for mirror in &reg_cfg.mirrors {
        let base = mirror.trim_end_matches('/').trim_end_matches("/v2").to_string();
        let host = base
            .split_once("://")
            .map(|(_, h)| h.split('/').next().unwrap_or(h).to_string())
            .unwrap_or_default();
        let mirror_cfg = config.registries.get(&host).cloned().unwrap_or_default();
        out.push(Endpoint {
            base,
            host: host.clone(),
            namespace: Some(registry.to_string()),
            insecure_tls: mirror_cfg.insecure_skip_verify,
            credentials: Credentials::from_config(&mirror_cfg),
        });
    }
    let host = if registry == "docker.io" || registry == "index.docker.io" {
        "registry-1.docker.io".to_string()
    } else {
        registry.to_string()
    };
    let credentials = if request_creds.is_empty() {
        Credentials::from_config(&reg_cfg)
    } else {
        request_creds.clone()
    };
    let upstream = |scheme: &str| Endpoint {
        base: format!("{scheme}://{host}"),
        host: host.clone(),
        namespace: None,
        insecure_tls: reg_cfg.insecure_skip_verify,
        credentials: credentials.clone(),
    };
    if reg_cfg.plain_http {
        out.push(upstream("http"));
    } else {
        out.push(upstream("https"));
        if is_loopback_host(&host) {
            out.push(upstream("http"));
        }
    }
    out
}

fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

#[derive(Clone)]
enum AuthHeader {
    Bearer(String),
    Basic(String),
}

struct CachedAuth {
    header: AuthHeader,
    expires: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// A fetched manifest or index.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    /// From the Content-Type header, else the document's `mediaType`.
    pub media_type: String,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
}

pub struct RegistryClient {
    http: reqwest::Client,
    http_insecure: reqwest::Client,
    auth_cache: Mutex<HashMap<(String, String), CachedAuth>>,
    read_timeout: Duration,
}

impl RegistryClient {
    pub fn new(connect_timeout: Duration, read_timeout: Duration) -> Result<Self, reqwest::Error> {
        let build = |insecure: bool| {
            reqwest::Client::builder()
                .user_agent(concat!("nodelet/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(connect_timeout)
                .read_timeout(read_timeout)
                .danger_accept_invalid_certs(insecure)
                .build()
        };
        Ok(RegistryClient {
            http: build(false)?,
            http_insecure: build(true)?,
            auth_cache: Mutex::new(HashMap::new()),
            read_timeout,
        })
    }

    fn client(&self, ep: &Endpoint) -> &reqwest::Client {
        if ep.insecure_tls {
            &self.http_insecure
        } else {
            &self.http
        }
    }

    /// GET `url` with authentication: a cached header first, then whatever
    /// the registry's challenge asks for, once.
    async fn get(&self, ep: &Endpoint, repo: &str, url: &str, accept: Option<&str>) -> Result<Response, RegistryError> {
        // Tokens are cached per credentials too: a token one client earned
        // with its password must never serve another client's request.
        let key = (ep.base.clone(), format!("{repo}#{}", ep.credentials.fingerprint()));
        let cached = {
            let cache = self.auth_cache.lock().expect("auth cache lock");
            cache
                .get(&key)
                .filter(|c| c.expires > Instant::now())
                .map(|c| c.header.clone())
        };
        let initial = match (&ep.credentials.registry_token, &cached) {
            (Some(token), _) => Some(AuthHeader::Bearer(token.clone())),
            (None, Some(h)) => Some(h.clone()),
            (None, None) => None,
        };
        let resp = self.send(ep, url, accept, initial.as_ref()).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let Some(challenge) = challenge else {
            return Err(status_error(url, resp).await);
        };
        let (scheme, params) = parse_challenge(&challenge);
        let (header, ttl) = match scheme.to_ascii_lowercase().as_str() {
            "bearer" => {
                let realm = params.get("realm").cloned().ok_or_else(|| RegistryError::Protocol {
                    url: url.to_string(),
                    message: format!("bearer challenge without realm: {challenge}"),
                })?;
                let scope = params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{repo}:pull"));
                let (token, ttl) = self
                    .fetch_token(ep, &realm, params.get("service").map(String::as_str), &scope)
                    .await?;
                (AuthHeader::Bearer(token), ttl)
            }
            "basic" => match ep.credentials.basic_header() {
                Some(h) => (AuthHeader::Basic(h), Duration::from_secs(3600)),
                None => {
                    return Err(RegistryError::Unauthorized {
                        url: url.to_string(),
                        status: 401,
                        answer: ": the registry wants HTTP Basic credentials and none were given".into(),
                    })
                }
            },
            other => {
                return Err(RegistryError::Protocol {
                    url: url.to_string(),
                    message: format!("unsupported authentication scheme {other:?}"),
                })
            }
        };
        let resp = self.send(ep, url, accept, Some(&header)).await?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(status_error(url, resp).await);
        }
        self.auth_cache.lock().expect("auth cache lock").insert(
            key,
            CachedAuth {
                header,
                expires: Instant::now() + ttl,
            },
        );
        Ok(resp)
    }

    async fn send(
        &self,
        ep: &Endpoint,
        url: &str,
        accept: Option<&str>,
        auth: Option<&AuthHeader>,
    ) -> Result<Response, RegistryError> {
        let mut headers = HeaderMap::new();
        if let Some(a) = accept {
            headers.insert(ACCEPT, HeaderValue::from_str(a).expect("static accept header"));
        }
        if let Some(a) = auth {
            let v = match a {
                AuthHeader::Bearer(t) => format!("Bearer {t}"),
                AuthHeader::Basic(b) => b.clone(),
            };
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(AUTHORIZATION, v);
            }
        }
        self.client(ep)
            .get(url)
            .headers(headers)
            .send()
            .await
            .map_err(|e| transport_error(url, e, self.read_timeout))
    }

    async fn fetch_token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Duration), RegistryError> {
        let creds = &ep.credentials;
        let client = self.client(ep);
        let req = if let Some(refresh) = &creds.identity_token {
            let mut form = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
                ("client_id", "nodelet"),
                ("scope", scope),
            ];
            if let Some(s) = service {
                form.push(("service", s));
            }
            client.post(realm).form(&form)
        } else {
            let mut query = vec![("scope", scope)];
            if let Some(s) = service {
                query.push(("service", s));
            }
            let mut req = client.get(realm).query(&query);
            if let Some(basic) = creds.basic_header() {
                req = req.header(AUTHORIZATION, basic);
            }
            req
        };
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(realm, e, self.read_timeout))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let answer = answer_text(resp).await;
            return Err(RegistryError::Unauthorized {
                url: realm.to_string(),
                status,
                answer: format!(" from the token service{answer}"),
            });
        }
        let body = read_capped(realm, resp, 1 << 20, "token response").await?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
            url: realm.to_string(),
            message: format!("token response is not JSON: {e}"),
        })?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RegistryError::Protocol {
                url: realm.to_string(),
                message: "token response carries no token".into(),
            })?;
        // Renew a little early; the spec's default lifetime is 60 s.
        let secs = parsed.expires_in.unwrap_or(60).max(10);
        Ok((token, Duration::from_secs(secs - secs / 10)))
    }

    /// Fetch a manifest or index by tag or digest. When `reference` is a
    /// digest the body must hash to it.
    pub async fn fetch_manifest(
        &self,
        ep: &Endpoint,
        repo: &str,
        reference: &str,
        limit: u64,
    ) -> Result<FetchedManifest, RegistryError> {
        let url = ep.url(repo, "manifests", reference);
        let resp = self.get(ep, repo, &url, Some(ACCEPT_MANIFESTS)).await?;
        if !resp.status().is_success() {
            return Err(status_error(&url, resp).await);
        }
        let header_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        let bytes = read_capped(&url, resp, limit, "manifest").await?;
        let digest = sha256_digest(&bytes);
        if reference.contains(':') && reference != digest {
            return Err(RegistryError::DigestMismatch {
                url,
                expected: reference.to_string(),
                actual: digest,
            });
        }
        let media_type = sniff_manifest_type(&bytes, header_type.as_deref());
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Fetch a small blob whole (an image config), checking size and digest.
    pub async fn fetch_small_blob(
        &self,
        ep: &Endpoint,
        repo: &str,
        digest: &str,
        size: u64,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let url = ep.url(repo, "blobs", digest);
        if size > limit {
            return Err(RegistryError::TooLarge {
                url,
                what: "image config",
                limit,
            });
        }
        let resp = self.get(ep, repo, &url, None).await?;
        if !resp.status().is_success() {
            return Err(status_error(&url, resp).await);
        }
        let bytes = read_capped(&url, resp, limit, "image config").await?;
        if bytes.len() as u64 != size {
            return Err(RegistryError::SizeMismatch {
                url,
                expected: size,
                actual: bytes.len() as u64,
            });
        }
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(RegistryError::DigestMismatch {
                url,
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Open a blob for streaming. The caller verifies size and digest as the
    /// bytes pass (see `pull.rs`).
    pub async fn open_blob(
        &self,
        ep: &Endpoint,
        repo: &str,
        digest: &str,
    ) -> Result<(Response, String), RegistryError> {
        let url = ep.url(repo, "blobs", digest);
        let resp = self.get(ep, repo, &url, None).await?;
        if !resp.status().is_success() {
            return Err(status_error(&url, resp).await);
        }
        Ok((resp, url))
    }

    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The media type of a manifest document: the Content-Type when it is one
/// we know, else the document's own `mediaType`, else by shape. Public as
/// a parsing entry point for fuzzing.
pub fn sniff_manifest_type(bytes: &[u8], header: Option<&str>) -> String {
    const KNOWN: [&str; 4] = [
        MEDIA_OCI_INDEX,
        MEDIA_OCI_MANIFEST,
        MEDIA_DOCKER_LIST,
        MEDIA_DOCKER_MANIFEST,
    ];
    if let Some(h) = header.filter(|h| KNOWN.contains(h)) {
        return h.to_string();
    }
    #[derive(Deserialize)]
    struct Shape {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
    }
    match serde_json::from_slice::<Shape>(bytes) {
        Ok(s) => match (s.media_type, s.manifests, s.schema_version) {
            (Some(m), _, _) => m,
            (None, Some(_), _) => MEDIA_OCI_INDEX.to_string(),
            (None, None, Some(1)) => "application/vnd.docker.distribution.manifest.v1+json".into(),
            _ => MEDIA_OCI_MANIFEST.to_string(),
        },
        Err(_) => header.unwrap_or("unknown").to_string(),
    }
}

async fn read_capped(url: &str, resp: Response, limit: u64, what: &'static str) -> Result<Vec<u8>, RegistryError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(RegistryError::TooLarge {
            url: url.to_string(),
            what,
            limit,
        });
    }
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| transport_error(url, e, Duration::ZERO))?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(RegistryError::TooLarge {
                url: url.to_string(),
                what,
                limit,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

pub fn transport_error(url: &str, e: reqwest::Error, read_timeout: Duration) -> RegistryError {
    if e.is_timeout() {
        return RegistryError::Timeout {
            url: url.to_string(),
            secs: read_timeout.as_secs(),
        };
    }
    // reqwest's Display hides the cause ("error sending request"): walk it.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    RegistryError::Unreachable {
        url: url.to_string(),
        message,
    }
}

/// The registry's own words for an error: the distribution spec's
/// `{"errors":[{"code","message"}]}` when present, else the start of the
/// body.
async fn answer_text(resp: Response) -> String {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() > 64 * 1024 {
            break;
        }
    }
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(Deserialize)]
    struct ErrorItem {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(&body) {
        let parts: Vec<String> = e
            .errors
            .iter()
            .map(|i| {
                format!(
                    "{}: {}",
                    i.code.as_deref().unwrap_or("UNKNOWN"),
                    i.message.as_deref().unwrap_or("")
                )
            })
            .collect();
        if !parts.is_empty() {
            return format!(", {}", parts.join("; "));
        }
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        let short: String = text.chars().take(300).collect();
        format!(", {short}")
    }
}

async fn status_error(url: &str, resp: Response) -> RegistryError {
    let status = resp.status().as_u16();
    let answer = answer_text(resp).await;
    let url = url.to_string();
    match status {
        404 => RegistryError::NotFound { url, answer },
        401 | 403 => RegistryError::Unauthorized { url, status, answer },
        _ => RegistryError::Status { url, status, answer },
    }
}

/// Parse `Bearer realm="...",service="...",scope="..."`. Public as a
/// parsing entry point for fuzzing.
pub fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n)
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(s, "Basic");
        assert_eq!(p["realm"], "Registry Realm");
    }

    #[test]
    fn endpoint_order_mirrors_then_registry() {
        let mut cfg = Config::default();
        cfg.registries.insert(
            "docker.io".into(),
            RegistryConfig {
                mirrors: vec!["http://127.0.0.1:5001/".into()],
                ..Default::default()
            },
        );
        let eps = endpoints(&cfg, "docker.io", &Credentials::default());
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].base, "http://127.0.0.1:5001");
        assert_eq!(eps[0].namespace.as_deref(), Some("docker.io"));
        assert_eq!(
            eps[0].url("library/busybox", "manifests", "latest"),
            "http://127.0.0.1:5001/v2/library/busybox/manifests/latest?ns=docker.io"
        );
        assert_eq!(eps[1].base, "https://registry-1.docker.io");
        // Loopback registries fall back to plain HTTP, others do not.
        let eps = endpoints(&cfg, "127.0.0.1:5000", &Credentials::default());
        assert_eq!(
            eps.iter().map(|e| e.base.as_str()).collect::<Vec<_>>(),
            vec!["https://127.0.0.1:5000", "http://127.0.0.1:5000"]
        );
        let eps = endpoints(&cfg, "quay.io", &Credentials::default());
        assert_eq!(eps.len(), 1);
        cfg.registries.insert(
            "reg.local:5000".into(),
            RegistryConfig {
                plain_http: true,
                username: Some("u".into()),
                password: Some("p".into()),
                ..Default::default()
            },
        );
        let eps = endpoints(&cfg, "reg.local:5000", &Credentials::default());
        assert_eq!(eps[0].base, "http://reg.local:5000");
        assert_eq!(eps[0].credentials.username.as_deref(), Some("u"));
        // Credentials in the request win over the config's.
        let req = Credentials {
            username: Some("other".into()),
            ..Default::default()
        };
        let eps = endpoints(&cfg, "reg.local:5000", &req);
        assert_eq!(eps[0].credentials.username.as_deref(), Some("other"));
    }

    #[test]
    fn manifest_type_sniffing() {
        assert_eq!(sniff_manifest_type(br#"{"manifests":[]}"#, None), MEDIA_OCI_INDEX);
        assert_eq!(
            sniff_manifest_type(
                br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#,
                Some("text/plain")
            ),
            MEDIA_DOCKER_MANIFEST
        );
        assert_eq!(sniff_manifest_type(b"{}", Some(MEDIA_DOCKER_LIST)), MEDIA_DOCKER_LIST);
    }

    #[test]
    fn credentials_debug_redacts_secrets() {
        let c = Credentials {
            username: Some("u".into()),
            password: Some("hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
