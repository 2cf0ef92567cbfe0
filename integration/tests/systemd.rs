//! Running under systemd: the notification protocol on a socket the test
//! binds, and the shipped unit files as `systemd-analyze verify` sees them.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use nodelet_integration::daemon::Daemon;

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn sd_notify_ready_status_watchdog_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let notify = path.display().to_string();
    let mut d = Daemon::start_with_env("", &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "400000")]).await;
    let pid = d.pid().unwrap();

    let mut messages = Vec::new();
    // Start-up status, then readiness (the harness saw the socket serve).
    let first = recv(&sock);
    assert_eq!(first, "STATUS=opening state");
    let ready = recv(&sock);
    let lines: Vec<&str> = ready.lines().collect();
    assert_eq!(lines[0], "READY=1", "{ready}");
    assert!(lines[1].starts_with("STATUS=serving CRI on "), "{ready}");
    assert_eq!(lines[2], format!("MAINPID={pid}"));
    // Watchdog pings every WATCHDOG_USEC / 2.
    let t = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        let m = recv(&sock);
        if m == "WATCHDOG=1" {
            pings += 1;
        }
        messages.push(m);
    }
    let every = t.elapsed() / 3;
    assert!(
        every >= Duration::from_millis(150) && every < Duration::from_millis(1000),
        "{every:?}"
    );

    d.terminate().expect("daemon exits");
    let stopping = loop {
        let m = recv(&sock);
        if m.starts_with("STOPPING=1") {
            break m;
        }
        assert_eq!(m, "WATCHDOG=1");
    };
    assert!(stopping.contains("\nSTATUS=SIGTERM: shutting down"), "{stopping}");
    eprintln!("{first:?} {ready:?} {messages:?} {stopping:?}");
}

#[tokio::test]
async fn sd_notify_to_an_abstract_socket_and_a_foreign_watchdog_pid() {
    let name = format!("nodelet-test-{}", std::process::id());
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name.as_bytes())
            .unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    // WATCHDOG_PID names another process: this daemon must not ping.
    let mut d = Daemon::start_with_env(
        "",
        &[
            ("NOTIFY_SOCKET", &format!("@{name}")),
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
    )
    .await;
    assert_eq!(recv(&sock), "STATUS=opening state");
    assert!(recv(&sock).starts_with("READY=1\n"));
    let mut buf = [0u8; 64];
    assert!(sock.recv(&mut buf).is_err(), "no watchdog pings for another pid");
    d.terminate();
    assert!(recv(&sock).starts_with("STOPPING=1\n"));
}

/// `systemd-analyze verify` on each shipped unit. It insists that
/// `ExecStart`'s binary exists, so the unit is checked as installed with
/// the binary under test in place of `/usr/local/bin/nodelet`.
#[test]
fn unit_files_pass_systemd_analyze_verify() {
    let units = nodelet_integration::workspace_root().join("systemd");
    let bin = nodelet_integration::nodelet_bin();
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for e in std::fs::read_dir(&units).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.ends_with(".service") || name.ends_with(".socket") || name.ends_with(".slice")) {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        if name == "nodelet.service" {
            for needed in [
                "Type=notify",
                "KillMode=process",
                "Delegate=yes",
                "Restart=always",
                "WatchdogSec=",
                "ExecStart=/usr/local/bin/nodelet serve",
            ] {
                assert!(text.lines().any(|l| l.starts_with(needed)), "{name} lacks {needed}");
            }
        }
        let copy = dir.path().join(&name);
        std::fs::write(
            &copy,
            text.replace("/usr/local/bin/nodelet", &bin.display().to_string()),
        )
        .unwrap();
        // Drop-ins shipped beside the unit travel with it.
        let dropins = units.join(format!("{name}.d"));
        if dropins.is_dir() {
            let to = dir.path().join(format!("{name}.d"));
            std::fs::create_dir_all(&to).unwrap();
            for d in std::fs::read_dir(&dropins).unwrap().flatten() {
                std::fs::copy(d.path(), to.join(d.file_name())).unwrap();
            }
        }
        verify(&copy);
        checked += 1;
    }
    assert!(checked >= 1, "no unit files under {}", units.display());
}

fn verify(unit: &Path) {
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("systemd-analyze (Debian's systemd package; scripts/install-deps.sh test installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", unit.display());
    // Warnings about our unit fail the test too (other units' noise, like
    // a missing system unit in a container, is not ours to fix).
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(unit.file_name().unwrap().to_str().unwrap()))
        .collect();
    assert!(ours.is_empty(), "{}: {ours:?}", unit.display());
}
