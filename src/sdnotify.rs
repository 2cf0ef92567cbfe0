//! systemd's notification protocol (`sd_notify(3)`): one datagram per
//! message to the unix socket named by `$NOTIFY_SOCKET` (a path, or an
//! abstract name written with a leading `@`). Without the variable every
//! call is a no-op, so the daemon runs the same outside systemd.
//!
//! The daemon sends `READY=1` once the CRI socket serves, `STATUS=` lines
//! as it starts and stops, `STOPPING=1` at shutdown, and `WATCHDOG=1` every
//! half `$WATCHDOG_USEC` when the unit sets `WatchdogSec=`.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::node::Node;

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; a missing, empty or unusable variable gives a
    /// notifier that sends nothing.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|v| {
            let v = v.to_string_lossy().into_owned();
            let addr = match v.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
                None if v.starts_with('/') => SocketAddr::from_pathname(&v),
                None => return None,
            };
            match (addr, UnixDatagram::unbound()) {
                (Ok(a), Ok(s)) => Some((s, a)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(socket = %v, "NOTIFY_SOCKET unusable: {e}");
                    None
                }
            }
        });
        Notifier { target }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Send one message (newline-separated `KEY=value` assignments).
    /// Failures are logged, never fatal: systemd may have gone away.
    pub fn notify(&self, message: &str) {
        let Some((sock, addr)) = &self.target else { return };
        if let Err(e) = sock.send_to_addr(message.as_bytes(), addr) {
            tracing::debug!("sd_notify {message:?}: {e}");
        }
    }

    pub fn ready(&self, status: &str) {
        self.notify(&format!(
            "READY=1\nSTATUS={}\nMAINPID={}",
            one_line(status),
            std::process::id()
        ));
    }

    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }

    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }
}

/// How often `STATUS=` is refreshed with pod and container counts.
const STATUS_EVERY: Duration = Duration::from_secs(30);

/// The CRI server is serving: say `READY=1`, then keep the watchdog fed
/// (when the unit asks for one) and the status current.
pub fn serving(n: &Arc<Notifier>, node: &Arc<Node>) {
    n.ready(&summary(node));
    if !n.enabled() {
        return;
    }
    let watchdog = watchdog_interval();
    let tick = watchdog.map_or(STATUS_EVERY, |w| w.min(STATUS_EVERY));
    let (n, node) = (Arc::clone(n), Arc::clone(node));
    tokio::spawn(async move {
        let mut last_status = Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            // Pinged from the async runtime: a wedged runtime stops the
            // pings and systemd restarts the daemon (pods keep running).
            if watchdog.is_some() {
                n.watchdog();
            }
            if last_status.elapsed() >= STATUS_EVERY {
                last_status = Instant::now();
                let node = Arc::clone(&node);
                if let Ok(s) = tokio::task::spawn_blocking(move || summary(&node)).await {
                    n.status(&s);
                }
            }
        }
    });
}

fn summary(node: &Node) -> String {
    let pods = node.runtime.pods();
    let ready = pods.iter().filter(|p| p.ready).count();
    let running = node
        .runtime
        .containers()
        .iter()
        .filter(|c| c.state == crate::runtime::ContainerState::Running)
        .count();
    format!(
        "serving CRI on {}; {ready} of {} pods ready, {running} containers running",
        node.config.socket.display(),
        pods.len()
    )
}

/// A status is one line of the protocol.
fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, if that is set
/// and `$WATCHDOG_PID` (when set) is this process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_string_lossy().trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                SocketAddr::from_pathname(&path).unwrap(),
            )),
        };
        n.ready("serving\nCRI");
        n.watchdog();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(msg.starts_with("READY=1\nSTATUS=serving CRI\nMAINPID="), "{msg}");
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        let silent = Notifier { target: None };
        assert!(!silent.enabled());
        silent.ready("x");
    }
}
