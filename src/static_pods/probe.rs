//! Probes and lifecycle hooks, run as the kubelet runs them: `exec` in the
//! container (the runtime's ExecSync), `httpGet` and `tcpSocket` from the
//! node to the pod's address, `grpc` health checks, `sleep`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, LifecycleHandler, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::runtime::Runtime;

/// Where the pod is reachable from the node.
#[derive(Debug, Clone)]
pub struct Target {
    pub container_id: String,
    /// The pod's address (127.0.0.1 for hostNetwork pods).
    pub host: String,
}

/// The outcome of one probe run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(String),
}

fn port_of(c: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("port {p} is out of range")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("no container port named {name:?}"))
        }
    }
}

async fn http_get(c: &Container, target: &Target, action: &HTTPGetAction, timeout: Duration) -> Outcome {
    let port = match port_of(c, &action.port) {
        Ok(p) => p,
        Err(e) => return Outcome::Failure(e),
    };
    let scheme = action.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
    let host = action
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| target.host.clone());
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let path = action.path.clone().unwrap_or_else(|| "/".into());
    let url = format!(
        "{scheme}://{host}:{port}{}",
        if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        }
    );
    let client = match reqwest::Client::builder()
        .timeout(timeout)
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::limited(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => return Outcome::Failure(e.to_string()),
    };
    let mut req = client.get(&url).header("User-Agent", "kube-probe/1.37");
    for h in action.http_headers.iter().flatten() {
        req = req.header(h.name.as_str(), h.value.as_str());
    }
    match req.send().await {
        Ok(r) if r.status().as_u16() >= 200 && r.status().as_u16() < 400 => Outcome::Success,
        Ok(r) => Outcome::Failure(format!("HTTP probe failed with statuscode: {}", r.status().as_u16())),
        Err(e) => Outcome::Failure(format!("Get {url:?}: {e}")),
    }
}

async fn tcp(host: &str, port: u16, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Outcome::Success,
        Ok(Err(e)) => Outcome::Failure(format!("dial tcp {host}:{port}: {e}")),
        Err(_) => Outcome::Failure(format!("dial tcp {host}:{port}: timed out")),
    }
}

async fn grpc(host: &str, port: u16, service: &str, timeout: Duration) -> Outcome {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let run = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let r = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(r.into_inner().status)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(1)) => Outcome::Success,
        Ok(Ok(s)) => Outcome::Failure(format!("service unhealthy (responded with {s})")),
        Ok(Err(e)) => Outcome::Failure(format!("gRPC health check: {e}")),
        Err(_) => Outcome::Failure("gRPC health check timed out".into()),
    }
}

async fn exec(rt: &Arc<Runtime>, target: &Target, command: &[String], timeout: Duration) -> Outcome {
    if command.is_empty() {
        return Outcome::Failure("exec: no command".into());
    }
    match rt.exec_sync(&target.container_id, command.to_vec(), timeout).await {
        Ok(out) if out.exit_code == 0 => Outcome::Success,
        Ok(out) => {
            let mut msg = String::from_utf8_lossy(&out.stdout).into_owned();
            msg.push_str(&String::from_utf8_lossy(&out.stderr));
            Outcome::Failure(format!(
                "command {command:?} exited with {}: {}",
                out.exit_code,
                msg.trim()
            ))
        }
        Err(e) => Outcome::Failure(e.to_string()),
    }
}

/// Run a probe once.
pub async fn run_probe(rt: &Arc<Runtime>, c: &Container, target: &Target, probe: &Probe) -> Outcome {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(e) = &probe.exec {
        return exec(rt, target, e.command.as_deref().unwrap_or_default(), timeout).await;
    }
    if let Some(h) = &probe.http_get {
        return http_get(c, target, h, timeout).await;
    }
    if let Some(t) = &probe.tcp_socket {
        return match port_of(c, &t.port) {
            Ok(port) => {
                tcp(
                    t.host.as_deref().filter(|h| !h.is_empty()).unwrap_or(&target.host),
                    port,
                    timeout,
                )
                .await
            }
            Err(e) => Outcome::Failure(e),
        };
    }
    if let Some(g) = &probe.grpc {
        return match u16::try_from(g.port) {
            Ok(port) => grpc(&target.host, port, g.service.as_deref().unwrap_or(""), timeout).await,
            Err(_) => Outcome::Failure(format!("port {} is out of range", g.port)),
        };
    }
    Outcome::Failure("probe has no handler".into())
}

/// Run a lifecycle hook, within `limit`.
pub async fn run_hook(
    rt: &Arc<Runtime>,
    c: &Container,
    target: &Target,
    hook: &LifecycleHandler,
    limit: Duration,
) -> Outcome {
    if let Some(s) = &hook.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(limit)).await;
        return Outcome::Success;
    }
    if let Some(e) = &hook.exec {
        return exec(rt, target, e.command.as_deref().unwrap_or_default(), limit).await;
    }
    if let Some(h) = &hook.http_get {
        return http_get(c, target, h, limit).await;
    }
    if let Some(t) = &hook.tcp_socket {
        return match port_of(c, &t.port) {
            Ok(port) => tcp(&target.host, port, limit).await,
            Err(e) => Outcome::Failure(e),
        };
    }
    Outcome::Failure("hook has no handler".into())
}

/// Probe timings with the Kubernetes defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(p: &Probe) -> Timing {
        Timing {
            initial_delay: Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64),
            period: Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64),
            success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_ports_and_defaults() {
        let c: Container =
            serde_json::from_str(r#"{"name":"a","ports":[{"name":"http","containerPort":8080}]}"#).unwrap();
        assert_eq!(port_of(&c, &IntOrString::String("http".into())), Ok(8080));
        assert_eq!(port_of(&c, &IntOrString::Int(9)), Ok(9));
        assert!(port_of(&c, &IntOrString::String("nope".into())).is_err());
        let t = Timing::of(&Probe::default());
        assert_eq!(
            (t.period, t.failure_threshold, t.success_threshold),
            (Duration::from_secs(10), 3, 1)
        );
    }

    #[tokio::test]
    async fn tcp_and_http_against_local_servers() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for s in l.incoming().take(2) {
                let mut s = s.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            }
        });
        assert_eq!(tcp("127.0.0.1", port, Duration::from_secs(1)).await, Outcome::Success);
        let c = Container::default();
        let target = Target {
            container_id: String::new(),
            host: "127.0.0.1".into(),
        };
        let action = HTTPGetAction {
            port: IntOrString::Int(port as i32),
            path: Some("/healthz".into()),
            ..Default::default()
        };
        assert_eq!(
            http_get(&c, &target, &action, Duration::from_secs(2)).await,
            Outcome::Success
        );
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(matches!(
            tcp("127.0.0.1", dead, Duration::from_secs(1)).await,
            Outcome::Failure(_)
        ));
    }
}
