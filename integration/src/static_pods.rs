//! Helpers for static pod tests: the manifest directory and the status
//! endpoint (plain HTTP/1.0 over the daemon's unix socket, no client
//! library between the test and what a user would `curl`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::daemon::Daemon;

/// `GET path` on a unix socket: status code and body.
pub async fn http_get(socket: &Path, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::UnixStream::connect(socket).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_string()))
}

/// The static pod side of a test daemon (its paths; the daemon may be
/// restarted underneath).
pub struct StaticPods {
    dir: PathBuf,
    daemon_log: PathBuf,
}

impl StaticPods {
    pub fn of(daemon: &Daemon) -> StaticPods {
        StaticPods {
            dir: daemon.dir.path().to_path_buf(),
            daemon_log: daemon.log_path.clone(),
        }
    }

    pub fn manifest_dir(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    pub fn status_socket(&self) -> PathBuf {
        self.dir.join("run/pods.sock")
    }

    pub fn kubelet_socket(&self) -> PathBuf {
        self.dir.join("run/kubelet.sock")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("pod-logs")
    }

    /// Write a manifest atomically (as config tools do: a hidden temporary
    /// file renamed into place).
    pub fn write(&self, file: &str, text: &str) {
        let dir = self.manifest_dir();
        std::fs::create_dir_all(&dir).expect("manifest dir");
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("write manifest");
        std::fs::rename(&tmp, dir.join(file)).expect("rename manifest");
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.manifest_dir().join(file)).expect("remove manifest");
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.status_socket(), path).await.expect("status endpoint")
    }

    /// `GET /pods` items.
    pub async fn pods(&self) -> Vec<Value> {
        let (code, body) = self.get("/pods").await;
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("PodList JSON");
        assert_eq!(v["kind"], "PodList");
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// The pod named `name` from `/pods`, if listed.
    pub async fn pod(&self, name: &str) -> Option<Value> {
        self.pods().await.into_iter().find(|p| p["metadata"]["name"] == name)
    }

    /// Poll `/pods` until `pred` holds for pod `name`; the pod.
    pub async fn wait(&self, name: &str, limit: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        let mut last = None;
        loop {
            if let Some(p) = self.pod(name).await {
                if pred(&p) {
                    return p;
                }
                last = Some(p);
            }
            if Instant::now() > deadline {
                panic!(
                    "pod {name}: {what} did not happen within {limit:?}; last status:\n{}\ndaemon log:\n{}",
                    serde_json::to_string_pretty(&last).unwrap_or_default(),
                    tail(&std::fs::read_to_string(&self.daemon_log).unwrap_or_default(), 60)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Poll until `/pods` no longer lists `name`.
    pub async fn wait_gone(&self, name: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.pod(name).await.is_some() {
            assert!(Instant::now() < deadline, "pod {name} still listed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The pod's condition `kind` is "True".
pub fn condition(pod: &Value, kind: &str) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

/// The status of container `name` (app or init).
pub fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(pod["status"]["initContainerStatuses"].as_array().into_iter().flatten())
        .find(|c| c["name"] == name)
        .unwrap_or(&Value::Null)
}

pub fn running(pod: &Value, name: &str) -> bool {
    container(pod, name)["state"]["running"].is_object()
}

pub fn restarts(pod: &Value, name: &str) -> i64 {
    container(pod, name)["restartCount"].as_i64().unwrap_or(-1)
}

/// The container's id without the `nodelet://` scheme.
pub fn container_id(pod: &Value, name: &str) -> String {
    container(pod, name)["containerID"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("nodelet://")
        .to_string()
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
