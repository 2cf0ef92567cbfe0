//! The daemon's own Prometheus metrics and the HTTP endpoint that serves
//! them (`/metrics`, classic text format 0.0.4) with `/healthz`.
//!
//! The registry is process-wide so any module can count with one line
//! (`crate::metrics::cni_operation("setup", elapsed, ok)`), without being
//! handed a registry. The endpoint is off unless `[metrics] address` is set.
//!
//! Series:
//! - `nodelet_cri_request_duration_seconds{rpc}` (histogram; its `_count`
//!   is the number of requests) and `nodelet_cri_request_errors_total{rpc,code}`;
//! - `nodelet_pods{state}`, `nodelet_containers{state}` (read at scrape);
//! - `nodelet_image_pulls_total{result}`, `nodelet_image_pull_duration_seconds`,
//!   `nodelet_image_pull_bytes_total` (compressed bytes received);
//! - `nodelet_cni_operations_total{op,result}`, `nodelet_cni_operation_duration_seconds{op}`;
//! - `nodelet_infra_starts_total`, `nodelet_infra_deaths_total` (an infra
//!   process that died on its own; the pod became not ready);
//! - `nodelet_container_events_total{type}`, `nodelet_event_subscribers`,
//!   `nodelet_event_subscribers_dropped_total`;
//! - `nodelet_build_info{version}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::node::Node;
use crate::runtime::ContainerState;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

pub struct Metrics {
    registry: Registry,
    rpc_duration: HistogramVec,
    rpc_errors: IntCounterVec,
    pods: IntGaugeVec,
    containers: IntGaugeVec,
    pulls: IntCounterVec,
    pull_duration: Histogram,
    pull_bytes: IntCounter,
    cni_ops: IntCounterVec,
    cni_duration: HistogramVec,
    infra_starts: IntCounter,
    infra_deaths: IntCounter,
    events: IntCounterVec,
    subscribers: IntGauge,
    subscribers_dropped: IntCounter,
}

/// Latency buckets for RPCs and CNI calls: 250 µs to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Image pulls take longer: 10 ms to 10 min.
const PULL_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    macro_rules! reg {
        ($m:expr) => {{
            let m = $m;
            registry.register(Box::new(m.clone()))?;
            m
        }};
    }
    let hist = |name: &str, help: &str, buckets: &[f64]| HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let m = Metrics {
        rpc_duration: reg!(HistogramVec::new(
            hist(
                "nodelet_cri_request_duration_seconds",
                "Time to answer a CRI request, by RPC.",
                LATENCY_BUCKETS
            ),
            &["rpc"]
        )?),
        rpc_errors: reg!(IntCounterVec::new(
            Opts::new(
                "nodelet_cri_request_errors_total",
                "CRI requests that failed, by RPC and gRPC code."
            ),
            &["rpc", "code"]
        )?),
        pods: reg!(IntGaugeVec::new(
            Opts::new("nodelet_pods", "Pod sandboxes by state."),
            &["state"]
        )?),
        containers: reg!(IntGaugeVec::new(
            Opts::new("nodelet_containers", "Containers by state."),
            &["state"]
        )?),
        pulls: reg!(IntCounterVec::new(
            Opts::new("nodelet_image_pulls_total", "Image pulls by result."),
            &["result"]
        )?),
        pull_duration: reg!(Histogram::with_opts(hist(
            "nodelet_image_pull_duration_seconds",
            "Time an image pull took (successful or not).",
            PULL_BUCKETS
        ))?),
        pull_bytes: reg!(IntCounter::new(
            "nodelet_image_pull_bytes_total",
            "Compressed layer bytes received from registries."
        )?),
        cni_ops: reg!(IntCounterVec::new(
            Opts::new(
                "nodelet_cni_operations_total",
                "CNI operations by operation and result."
            ),
            &["op", "result"]
        )?),
        cni_duration: reg!(HistogramVec::new(
            hist(
                "nodelet_cni_operation_duration_seconds",
                "Time a CNI operation took.",
                LATENCY_BUCKETS
            ),
            &["op"]
        )?),
        infra_starts: reg!(IntCounter::new(
            "nodelet_infra_starts_total",
            "Pod infra processes started."
        )?),
        infra_deaths: reg!(IntCounter::new(
            "nodelet_infra_deaths_total",
            "Pod infra processes that died without being asked to (their pods became not ready)."
        )?),
        events: reg!(IntCounterVec::new(
            Opts::new(
                "nodelet_container_events_total",
                "Container and sandbox lifecycle events (GetContainerEvents), by type."
            ),
            &["type"]
        )?),
        subscribers: reg!(IntGauge::new(
            "nodelet_event_subscribers",
            "GetContainerEvents streams open now."
        )?),
        subscribers_dropped: reg!(IntCounter::new(
            "nodelet_event_subscribers_dropped_total",
            "GetContainerEvents streams closed because the client fell too far behind."
        )?),
        registry,
    };
    let info = IntGaugeVec::new(
        Opts::new("nodelet_build_info", "The running nodelet's version (always 1)."),
        &["version"],
    )?;
    m.registry.register(Box::new(info.clone()))?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    // Series that exist from the start, at zero, so rates and alerts work
    // before the first event.
    for result in ["success", "failure"] {
        m.pulls.with_label_values(&[result]);
        for op in ["setup", "teardown"] {
            m.cni_ops.with_label_values(&[op, result]);
        }
    }
    Ok(m)
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| build().expect("metric definitions are valid and unique"));

/// A CRI request finished; `code` is None on success.
pub fn rpc_done(rpc: &str, elapsed: Duration, code: Option<tonic::Code>) {
    let m = &*METRICS;
    m.rpc_duration.with_label_values(&[rpc]).observe(elapsed.as_secs_f64());
    if let Some(code) = code {
        m.rpc_errors.with_label_values(&[rpc, &format!("{code:?}")]).inc();
    }
}

/// An image pull finished.
pub fn image_pull_done(elapsed: Duration, ok: bool) {
    let m = &*METRICS;
    m.pulls
        .with_label_values(&[if ok { "success" } else { "failure" }])
        .inc();
    m.pull_duration.observe(elapsed.as_secs_f64());
}

/// Compressed bytes received for a layer.
pub fn image_pull_bytes(n: usize) {
    METRICS.pull_bytes.inc_by(n as u64);
}

/// A CNI operation (`setup`, `teardown`, `check`, ...) finished.
pub fn cni_operation(op: &str, elapsed: Duration, ok: bool) {
    let m = &*METRICS;
    m.cni_ops
        .with_label_values(&[op, if ok { "success" } else { "failure" }])
        .inc();
    m.cni_duration.with_label_values(&[op]).observe(elapsed.as_secs_f64());
}

pub fn infra_started() {
    METRICS.infra_starts.inc();
}

pub fn infra_died() {
    METRICS.infra_deaths.inc();
}

pub fn container_event(kind: &str) {
    METRICS.events.with_label_values(&[kind]).inc();
}

pub fn event_subscribers(delta: i64) {
    METRICS.subscribers.add(delta);
}

pub fn event_subscriber_dropped() {
    METRICS.subscribers_dropped.inc();
}

/// Set the pod and container gauges from the runtime (blocking).
fn refresh_state_gauges(node: &Node) {
    let m = &*METRICS;
    let pods = node.runtime.pods();
    let ready = pods.iter().filter(|p| p.ready).count() as i64;
    m.pods.with_label_values(&["ready"]).set(ready);
    m.pods.with_label_values(&["notready"]).set(pods.len() as i64 - ready);
    let containers = node.runtime.containers();
    for (state, name) in [
        (ContainerState::Created, "created"),
        (ContainerState::Running, "running"),
        (ContainerState::Exited, "exited"),
    ] {
        let n = containers.iter().filter(|c| c.state == state).count() as i64;
        m.containers.with_label_values(&[name]).set(n);
    }
}

/// The text exposition of every metric.
pub fn encode() -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&METRICS.registry.gather(), &mut buf) {
        tracing::warn!("encoding metrics: {e}");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// Is the CRI server serving? True between `set_serving(true)` (the server
/// is listening) and shutdown, while its socket accepts connections.
pub struct Health {
    serving: AtomicBool,
    socket: PathBuf,
}

impl Health {
    pub fn new(socket: PathBuf) -> Arc<Health> {
        Arc::new(Health {
            serving: AtomicBool::new(false),
            socket,
        })
    }

    pub fn set_serving(&self, on: bool) {
        self.serving.store(on, Ordering::SeqCst);
    }

    pub async fn healthy(&self) -> Result<(), String> {
        if !self.serving.load(Ordering::SeqCst) {
            return Err("the CRI server is not serving".into());
        }
        match tokio::time::timeout(Duration::from_secs(2), tokio::net::UnixStream::connect(&self.socket)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot connect to {}: {e}", self.socket.display())),
            Err(_) => Err(format!("connecting to {} timed out", self.socket.display())),
        }
    }
}

/// Serve `/metrics` and `/healthz` on `addr` until the process exits.
/// Binding happens before this returns, so a bad address fails start-up.
pub async fn serve(addr: SocketAddr, node: Arc<Node>, health: Arc<Health>) -> Result<SocketAddr, MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(address = %local, "serving /metrics and /healthz");
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors and the like: back off, keep going.
                    tracing::warn!("metrics endpoint accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let node = Arc::clone(&node);
            let health = Arc::clone(&health);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let node = Arc::clone(&node);
                    let health = Arc::clone(&health);
                    async move { Ok::<_, Infallible>(answer(req, node, health).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!("metrics connection: {e}");
                }
            });
        }
    });
    Ok(local)
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn answer(req: Request<hyper::body::Incoming>, node: Arc<Node>, health: Arc<Health>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let n = Arc::clone(&node);
            let _ = tokio::task::spawn_blocking(move || refresh_state_gauges(&n)).await;
            reply(StatusCode::OK, prometheus::TEXT_FORMAT, encode())
        }
        "/healthz" => match health.healthy().await {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{why}\n")),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /healthz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_in_the_exposition() {
        rpc_done("Version", Duration::from_millis(3), None);
        rpc_done("StopPodSandbox", Duration::from_millis(3), Some(tonic::Code::NotFound));
        cni_operation("setup", Duration::from_millis(20), true);
        image_pull_bytes(10);
        let text = encode();
        assert!(
            text.contains("# TYPE nodelet_cri_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("nodelet_cri_request_duration_seconds_count{rpc=\"Version\"}"));
        assert!(text.contains("nodelet_cri_request_errors_total{code=\"NotFound\",rpc=\"StopPodSandbox\"} "));
        assert!(text.contains("nodelet_cni_operations_total{op=\"setup\",result=\"success\"}"));
        assert!(text.contains("nodelet_build_info{version="));
    }
}
