//! Exec, Attach and PortForward through nodelet's streaming server, over
//! SPDY/3.1 and WebSocket, as crictl, kubectl and the kubelet's proxy use
//! them; plus what a broken or vanished client must not leave behind.

use std::time::{Duration, Instant};

use nodelet_integration::cri::api;
use nodelet_integration::pods::World;
use nodelet_integration::streaming_client::{request, Io, SpdyClient, SpdyCommand, WsClient};
use sha2::{Digest, Sha256};
use tonic::Code;

const V4: &[&str] = &["v4.channel.k8s.io"];

async fn exec_url(w: &mut World, id: &str, cmd: &[&str], io: Io) -> Result<String, tonic::Status> {
    w.rt.exec(api::ExecRequest {
        container_id: id.to_string(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: io.tty,
        stdin: io.stdin,
        stdout: io.stdout,
        stderr: io.stderr,
    })
    .await
    .map(|r| r.into_inner().url)
}

async fn attach_url(w: &mut World, id: &str, io: Io) -> String {
    w.rt.attach(api::AttachRequest {
        container_id: id.to_string(),
        tty: io.tty,
        stdin: io.stdin,
        stdout: io.stdout,
        stderr: io.stderr,
    })
    .await
    .expect("Attach")
    .into_inner()
    .url
}

async fn pf_url(w: &mut World, pod: &str, ports: &[i32]) -> Result<String, tonic::Status> {
    w.rt.port_forward(api::PortForwardRequest {
        pod_sandbox_id: pod.to_string(),
        port: ports.to_vec(),
    })
    .await
    .map(|r| r.into_inner().url)
}

const OUT: Io = Io {
    stdin: false,
    stdout: true,
    stderr: true,
    tty: false,
};

/// Run `cmd` over SPDY v4 and return (exit code, stdout, stderr).
async fn run_v4(w: &mut World, id: &str, cmd: &[&str]) -> (i32, String, String) {
    let url = exec_url(w, id, cmd, OUT).await.expect("Exec");
    let c = SpdyCommand::start(&url, V4, OUT).await.expect("start");
    assert_eq!(c.protocol, "v4.channel.k8s.io");
    let f = c.finish(Duration::from_secs(20)).await.expect("finish");
    (
        f.exit_code().expect("v4 status"),
        String::from_utf8_lossy(&f.stdout).into_owned(),
        String::from_utf8_lossy(&f.stderr).into_owned(),
    )
}

async fn sleeper(w: &mut World, name: &str) -> (String, String, api::PodSandboxConfig) {
    let pod = w.pod(name);
    let id = w.run_pod(pod.clone()).await;
    let c = w.run(&id, &pod, w.container("app", "sleep 100000")).await;
    (id, c, pod)
}

#[tokio::test]
async fn exec_over_spdy_every_version_tty_resize_and_exit_codes() {
    let mut w = World::new(&[], "").await;
    let (_pod, c, _) = sleeper(&mut w, "ex").await;

    // v4: exit codes in the JSON status, separate stdout and stderr, the
    // container's environment.
    assert_eq!(run_v4(&mut w, &c, &["true"]).await.0, 0);
    assert_eq!(run_v4(&mut w, &c, &["sh", "-c", "exit 1"]).await.0, 1);
    assert_eq!(run_v4(&mut w, &c, &["sh", "-c", "kill -9 $$"]).await.0, 137);
    let (code, out, err) = run_v4(&mut w, &c, &["sh", "-c", "echo out; echo err >&2; echo $HOSTNAME"]).await;
    assert_eq!((code, out.as_str(), err.as_str()), (0, "out\nex\n", "err\n"));

    // stdin: cat echoes until the client half-closes.
    let io = Io {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: false,
    };
    let url = exec_url(&mut w, &c, &["cat"], io).await.unwrap();
    let cmd = SpdyCommand::start(&url, V4, io).await.unwrap();
    let stdin = cmd.stdin.as_ref().unwrap();
    stdin.write(b"hello\nworld\n").await.unwrap();
    stdin.close().await;
    let f = cmd.finish(Duration::from_secs(10)).await.unwrap();
    assert_eq!(f.stdout, b"hello\nworld\n");
    assert_eq!(f.exit_code().unwrap(), 0);

    // A tty with a resize: stty reports the size, the shell's exit code
    // comes back.
    let io = Io {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    let url = exec_url(&mut w, &c, &["sh"], io).await.unwrap();
    let mut cmd = SpdyCommand::start(&url, V4, io).await.unwrap();
    cmd.resize(123, 45).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    cmd.stdin.as_ref().unwrap().write(b"stty size; tty\n").await.unwrap();
    let seen = cmd
        .stdout
        .as_mut()
        .unwrap()
        .read_until(b"45 123", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&seen).contains("45 123"));
    cmd.resize(80, 10).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    cmd.stdin.as_ref().unwrap().write(b"stty size; exit 3\n").await.unwrap();
    let f = cmd.finish(Duration::from_secs(10)).await.unwrap();
    assert!(
        String::from_utf8_lossy(&f.stdout).contains("10 80"),
        "{:?}",
        String::from_utf8_lossy(&f.stdout)
    );
    assert_eq!(f.exit_code().unwrap(), 3);

    // Older protocols: v3 (resize, text errors), v2, channel.k8s.io and a
    // client that offers nothing (v1).
    for (offer, want) in [
        (&["v3.channel.k8s.io"][..], "v3.channel.k8s.io"),
        (&["v2.channel.k8s.io"][..], "v2.channel.k8s.io"),
        (&["channel.k8s.io"][..], "channel.k8s.io"),
        (&[][..], ""),
        (&["v5.channel.k8s.io", "v4.channel.k8s.io"][..], "v5.channel.k8s.io"),
    ] {
        let url = exec_url(&mut w, &c, &["sh", "-c", "echo hi; exit 2"], OUT)
            .await
            .unwrap();
        let cmd = SpdyCommand::start(&url, offer, OUT).await.unwrap();
        assert_eq!(cmd.protocol, want);
        let f = cmd.finish(Duration::from_secs(10)).await.unwrap();
        assert_eq!(f.stdout, b"hi\n", "{offer:?}");
        if want.starts_with("v5") {
            assert_eq!(f.exit_code().unwrap(), 2);
        } else {
            assert!(f.error.contains("exit status 2"), "{offer:?}: {}", f.error);
        }
    }
    // An offer the server does not speak: 403 with the list.
    let url = exec_url(&mut w, &c, &["true"], OUT).await.unwrap();
    let err = SpdyCommand::start(&url, &["v9.channel.k8s.io"], OUT)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("403"), "{err}");
}

#[tokio::test]
async fn exec_over_websocket_v5_v4_base64_and_v1() {
    let mut w = World::new(&[], "").await;
    let (_pod, c, _) = sleeper(&mut w, "ws").await;
    let io = Io {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    // v5: stdin ends with the close signal.
    let url = exec_url(&mut w, &c, &["sh", "-c", "cat; echo err >&2; exit 4"], io)
        .await
        .unwrap();
    let mut ws = WsClient::connect(&url, &["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(ws.protocol, "v5.channel.k8s.io");
    ws.send(0, b"from-stdin\n").await.unwrap();
    ws.close_channel(0).await.unwrap();
    let by = ws.collect(Duration::from_secs(10)).await.unwrap();
    assert_eq!(by.get(&1).map(Vec::as_slice), Some(&b"from-stdin\n"[..]));
    assert_eq!(by.get(&2).map(Vec::as_slice), Some(&b"err\n"[..]));
    let status = String::from_utf8_lossy(&by[&3]).into_owned();
    assert_eq!(
        nodelet_integration::streaming_client::status_exit_code(&status).unwrap(),
        4
    );
    // Exit codes and output over each protocol without stdin.
    for proto in [
        "v4.channel.k8s.io",
        "v4.base64.channel.k8s.io",
        "channel.k8s.io",
        "base64.channel.k8s.io",
    ] {
        let url = exec_url(&mut w, &c, &["sh", "-c", "echo out; echo err >&2; exit 6"], OUT)
            .await
            .unwrap();
        let mut ws = WsClient::connect(&url, &[proto]).await.unwrap();
        let by = ws.collect(Duration::from_secs(10)).await.unwrap();
        assert_eq!(by.get(&1).map(Vec::as_slice), Some(&b"out\n"[..]), "{proto}");
        assert_eq!(by.get(&2).map(Vec::as_slice), Some(&b"err\n"[..]), "{proto}");
        let status = String::from_utf8_lossy(&by[&3]).into_owned();
        if proto.starts_with("v4") {
            assert_eq!(
                nodelet_integration::streaming_client::status_exit_code(&status).unwrap(),
                6
            );
        } else {
            assert!(status.contains("exit status 6"), "{proto}: {status}");
        }
    }
    // A tty over v5 with a resize on channel 4.
    let io = Io {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    let url = exec_url(&mut w, &c, &["sh"], io).await.unwrap();
    let mut ws = WsClient::connect(&url, &["v5.channel.k8s.io"]).await.unwrap();
    ws.send(4, br#"{"Width":77,"Height":33}"#).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    ws.send(0, b"stty size; exit 0\n").await.unwrap();
    let by = ws.collect(Duration::from_secs(10)).await.unwrap();
    assert!(String::from_utf8_lossy(&by[&1]).contains("33 77"));
    assert_eq!(
        nodelet_integration::streaming_client::status_exit_code(&String::from_utf8_lossy(&by[&3])).unwrap(),
        0
    );
}

#[tokio::test]
async fn attach_to_a_container_reading_stdin_and_to_a_tty() {
    let mut w = World::new(&[], "").await;
    let pod = w.pod("att");
    let id = w.run_pod(pod.clone()).await;
    let mut cfg = w.container("echo", "cat");
    cfg.stdin = true;
    let c = w.run(&id, &pod, cfg).await;
    let io = Io {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    // SPDY: what goes in comes back on stdout and lands in the log.
    let url = attach_url(&mut w, &c, io).await;
    let mut a = SpdyCommand::start(&url, V4, io).await.unwrap();
    a.stdin.as_ref().unwrap().write(b"ping-spdy\n").await.unwrap();
    a.stdout
        .as_mut()
        .unwrap()
        .read_until(b"ping-spdy\n", Duration::from_secs(10))
        .await
        .unwrap();
    w.wait_log("att/echo/0.log", "stdout F ping-spdy").await;
    // Detaching leaves the container running.
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.status(&c).await.state, api::ContainerState::ContainerRunning as i32);
    // WebSocket v5, and two sessions at once both see the output.
    let url = attach_url(&mut w, &c, io).await;
    let mut ws = WsClient::connect(&url, &["v5.channel.k8s.io"]).await.unwrap();
    let url2 = attach_url(&mut w, &c, OUT).await;
    let mut watcher = SpdyCommand::start(&url2, V4, OUT).await.unwrap();
    ws.send(0, b"ping-ws\n").await.unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("ping-ws") {
        let (ch, data) = tokio::time::timeout(Duration::from_secs(10), ws.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if ch == 1 {
            got.extend(data);
        }
    }
    // The second session sees output written once it is attached (its
    // attachment to the container's stream may land just after the
    // upgrade answer, so keep writing until it shows).
    let mut seen = false;
    for _ in 0..20 {
        ws.send(0, b"ping-spdy\n").await.unwrap();
        let out = watcher.stdout.as_mut().unwrap();
        if out.read_until(b"ping-spdy", Duration::from_millis(500)).await.is_ok() {
            seen = true;
            break;
        }
    }
    assert!(seen, "the second attach session never saw the output");
    // The container exits (stdin closed by stopping it): the session ends
    // with its status.
    drop(ws);
    w.rt.stop_container(api::StopContainerRequest {
        container_id: c.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let f = watcher.finish(Duration::from_secs(10)).await.unwrap();
    assert_eq!(f.exit_code().unwrap(), 137, "{}", f.error);

    // stdin_once: the container reads EOF when the first session's stdin
    // ends, and exits.
    let mut cfg = w.container("once", "cat; echo done");
    cfg.stdin = true;
    cfg.stdin_once = true;
    let once = w.run(&id, &pod, cfg).await;
    let url = attach_url(&mut w, &once, io).await;
    let a = SpdyCommand::start(&url, V4, io).await.unwrap();
    a.stdin.as_ref().unwrap().write(b"last\n").await.unwrap();
    a.stdin.as_ref().unwrap().close().await;
    let f = a.finish(Duration::from_secs(10)).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&f.stdout), "last\ndone\n");
    assert_eq!(f.exit_code().unwrap(), 0);

    // A tty container: resize, then the shell's exit code.
    let mut cfg = w.container("tty", "sh");
    cfg.stdin = true;
    cfg.tty = true;
    let t = w.run(&id, &pod, cfg).await;
    let io = Io {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    let url = attach_url(&mut w, &t, io).await;
    let mut a = SpdyCommand::start(&url, V4, io).await.unwrap();
    a.resize(99, 11).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.stdin.as_ref().unwrap().write(b"stty size\n").await.unwrap();
    a.stdout
        .as_mut()
        .unwrap()
        .read_until(b"11 99", Duration::from_secs(10))
        .await
        .unwrap();
    a.stdin.as_ref().unwrap().write(b"exit 5\n").await.unwrap();
    let f = a.finish(Duration::from_secs(10)).await.unwrap();
    assert_eq!(f.exit_code().unwrap(), 5, "{}", f.error);
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}

/// A pseudo-random stream (xorshift), fast enough not to be the bottleneck.
fn fill(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let b = state.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

#[tokio::test]
async fn port_forward_1gib_checksum_concurrency_websocket_and_host_network() {
    let mut w = World::new(&[], "").await;
    let pod = w.pod("pf");
    let id = w.run_pod(pod.clone()).await;
    // An echo server and a source of zeros.
    w.run(&id, &pod, w.container("echo", "nc -ll -p 8080 -e cat")).await;
    w.run(
        &id,
        &pod,
        w.container("zeros", "nc -ll -p 8081 -e dd if=/dev/zero bs=1M count=1024"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 1 GiB through the echo server over SPDY: both directions, checked.
    let url = pf_url(&mut w, &id, &[8080]).await.unwrap();
    let (mut session, proto) = SpdyClient::connect(&url, &["portforward.k8s.io"]).await.unwrap();
    assert_eq!(proto, "portforward.k8s.io");
    let error = session
        .open(&[("streamType", "error"), ("port", "8080"), ("requestID", "0")])
        .await
        .unwrap();
    error.close().await;
    let mut data = session
        .open(&[("streamType", "data"), ("port", "8080"), ("requestID", "0")])
        .await
        .unwrap();
    const TOTAL: usize = 1 << 30;
    let start = Instant::now();
    let upload = data.writer();
    let (sent, received) = tokio::join!(
        async {
            let mut h = Sha256::new();
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            let mut buf = vec![0u8; 32 << 10];
            let mut left = TOTAL;
            while left > 0 {
                fill(&mut state, &mut buf);
                let n = left.min(buf.len());
                h.update(&buf[..n]);
                upload.write(&buf[..n]).await.unwrap();
                left -= n;
            }
            h.finalize()
        },
        async {
            let mut h = Sha256::new();
            let mut n = 0usize;
            while n < TOTAL {
                let b = data_read(&mut data).await.expect("echo ended early");
                n += b.len();
                h.update(&b);
            }
            h.finalize()
        }
    );
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(sent, received, "checksums");
    eprintln!(
        "port-forward SPDY echo: 1 GiB each way in {secs:.1} s = {:.0} MB/s per direction",
        TOTAL as f64 / 1e6 / secs
    );
    data.close().await;

    // Download only: 1 GiB of zeros.
    let e = session
        .open(&[("streamType", "error"), ("port", "8081"), ("requestID", "1")])
        .await
        .unwrap();
    e.close().await;
    let mut d = session
        .open(&[("streamType", "data"), ("port", "8081"), ("requestID", "1")])
        .await
        .unwrap();
    let start = Instant::now();
    let mut n = 0usize;
    while let Some(b) = d.read().await {
        assert!(b.iter().all(|&x| x == 0));
        n += b.len();
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(n, TOTAL);
    eprintln!(
        "port-forward SPDY download: 1 GiB in {secs:.1} s = {:.0} MB/s",
        TOTAL as f64 / 1e6 / secs
    );

    // 20 concurrent connections on one session, 1 MiB each, from busybox
    // httpd (nc serves one connection at a time).
    let web = w
        .run(
            &id,
            &pod,
            w.container(
                "web",
                "mkdir -p /www && head -c 1048576 /dev/urandom > /www/f && exec httpd -f -p 8082 -h /www",
            ),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let want = w.sh(&web, "sha256sum /www/f").await;
    let want = want.split_whitespace().next().unwrap().to_string();
    let mut conns = Vec::new();
    for i in 0..20 {
        let req = format!("c{i}");
        let e = session
            .open(&[("streamType", "error"), ("port", "8082"), ("requestID", &req)])
            .await
            .unwrap();
        e.close().await;
        let d = session
            .open(&[("streamType", "data"), ("port", "8082"), ("requestID", &req)])
            .await
            .unwrap();
        conns.push(d);
    }
    let results = futures::future::join_all(conns.into_iter().map(|mut d| async move {
        d.write(b"GET /f HTTP/1.0\r\n\r\n").await.unwrap();
        let all = d.read_to_end().await;
        let body = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| all[i + 4..].to_vec())
            .unwrap_or_default();
        hex::encode(Sha256::digest(&body))
    }))
    .await;
    assert!(results.iter().all(|h| *h == want), "{results:?} != {want}");

    // A port nobody listens on: an error on the error stream.
    let mut e = session
        .open(&[("streamType", "error"), ("port", "9"), ("requestID", "x")])
        .await
        .unwrap();
    let _d = session
        .open(&[("streamType", "data"), ("port", "9"), ("requestID", "x")])
        .await
        .unwrap();
    let msg = String::from_utf8_lossy(&e.read_to_end().await).into_owned();
    assert!(msg.contains("error forwarding port 9"), "{msg}");
    drop(session);

    // WebSocket: two ports, each channel opened by its port number.
    let url = pf_url(&mut w, &id, &[8080, 8081]).await.unwrap();
    let mut ws = WsClient::connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    ws.send(0, b"over-ws\n").await.unwrap();
    let mut seen: std::collections::HashMap<u8, Vec<u8>> = Default::default();
    let mut zeros = 0usize;
    let start = Instant::now();
    while !(seen.get(&0).is_some_and(|v| v.len() >= 2 + 8) && zeros >= TOTAL) {
        let (ch, data) = tokio::time::timeout(Duration::from_secs(60), ws.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v = seen.entry(ch).or_default();
        if ch == 2 && v.len() >= 2 {
            zeros += data.len();
        }
        v.extend_from_slice(&data);
    }
    eprintln!(
        "port-forward WebSocket download: 1 GiB in {:.1} s = {:.0} MB/s",
        start.elapsed().as_secs_f64(),
        TOTAL as f64 / 1e6 / start.elapsed().as_secs_f64()
    );
    assert_eq!(&seen[&0][..2], &8080u16.to_le_bytes());
    assert_eq!(&seen[&0][2..], b"over-ws\n");
    assert_eq!(&seen[&1][..2], &8080u16.to_le_bytes());
    assert_eq!(&seen[&3][..2], &8081u16.to_le_bytes());
    drop(ws);

    // A hostNetwork pod forwards to the host's own loopback.
    let mut hpod = w.pod("pfhost");
    hpod.linux = Some(api::LinuxPodSandboxConfig {
        security_context: Some(api::LinuxSandboxSecurityContext {
            namespace_options: Some(api::NamespaceOption {
                network: api::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let hid = w.run_pod(hpod.clone()).await;
    let port = nodelet_integration::free_port();
    w.run(
        &hid,
        &hpod,
        w.container("srv", &format!("nc -ll -p {port} -e echo host-net")),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = pf_url(&mut w, &hid, &[port as i32]).await.unwrap();
    let (mut session, _) = SpdyClient::connect(&url, &["portforward.k8s.io"]).await.unwrap();
    let p = port.to_string();
    let e = session
        .open(&[("streamType", "error"), ("port", &p), ("requestID", "0")])
        .await
        .unwrap();
    e.close().await;
    let mut d = session
        .open(&[("streamType", "data"), ("port", &p), ("requestID", "0")])
        .await
        .unwrap();
    assert_eq!(d.read_to_end().await, b"host-net\n");
    drop(session);
    w.remove_pod(&hid).await;
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}

async fn data_read(d: &mut nodelet_integration::streaming_client::ClientStream) -> Option<bytes::Bytes> {
    d.read().await
}

#[tokio::test]
async fn fifty_concurrent_execs_and_exec_output_throughput() {
    let mut w = World::new(&[], "").await;
    let (_pod, c, _) = sleeper(&mut w, "many").await;
    let mut urls = Vec::new();
    for i in 0..50 {
        let cmd = format!("echo exec-{i}; echo err-{i} >&2; exit {}", i % 7);
        urls.push(exec_url(&mut w, &c, &["sh", "-c", &cmd], OUT).await.unwrap());
    }
    let start = Instant::now();
    let results = futures::future::join_all(urls.into_iter().enumerate().map(|(i, url)| async move {
        // Half over SPDY, half over WebSocket.
        if i % 2 == 0 {
            let f = SpdyCommand::start(&url, V4, OUT)
                .await
                .unwrap()
                .finish(Duration::from_secs(60))
                .await
                .unwrap();
            (
                i,
                String::from_utf8_lossy(&f.stdout).into_owned(),
                f.exit_code().unwrap(),
            )
        } else {
            let mut ws = WsClient::connect(&url, &["v5.channel.k8s.io"]).await.unwrap();
            let by = ws.collect(Duration::from_secs(60)).await.unwrap();
            let code =
                nodelet_integration::streaming_client::status_exit_code(&String::from_utf8_lossy(&by[&3])).unwrap();
            (i, String::from_utf8_lossy(&by[&1]).into_owned(), code)
        }
    }))
    .await;
    for (i, out, code) in results {
        assert_eq!(out, format!("exec-{i}\n"));
        assert_eq!(code, (i % 7) as i32);
    }
    eprintln!("50 concurrent execs in {:.2} s", start.elapsed().as_secs_f64());

    // Exec output throughput.
    const SIZE: usize = 512 << 20;
    let cmd = format!("head -c {SIZE} /dev/zero");
    let io = Io {
        stdin: false,
        stdout: true,
        stderr: false,
        tty: false,
    };
    let url = exec_url(&mut w, &c, &["sh", "-c", &cmd], io).await.unwrap();
    let mut x = SpdyCommand::start(&url, V4, io).await.unwrap();
    let start = Instant::now();
    let mut n = 0;
    while let Some(b) = x.stdout.as_mut().unwrap().read().await {
        n += b.len();
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(n, SIZE);
    eprintln!("exec stdout over SPDY: {:.0} MB/s", SIZE as f64 / 1e6 / secs);
    let url = exec_url(&mut w, &c, &["sh", "-c", &cmd], io).await.unwrap();
    let mut ws = WsClient::connect(&url, &["v5.channel.k8s.io"]).await.unwrap();
    let start = Instant::now();
    let mut n = 0;
    while let Some((ch, data)) = ws.recv().await.unwrap() {
        if ch == 1 {
            n += data.len();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(n, SIZE);
    eprintln!("exec stdout over WebSocket: {:.0} MB/s", SIZE as f64 / 1e6 / secs);
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Host processes whose command line contains `needle`.
fn procs_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

async fn stats(base: &str) -> serde_json::Value {
    let (head, _, _) = request(&format!("{base}/stats"), &[]).await.unwrap();
    serde_json::from_str(&head.body).unwrap()
}

async fn until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn killed_or_stalled_clients_leave_nothing_behind() {
    let mut w = World::new(&[], "[streaming]\nwrite_timeout_secs = 2\n").await;
    let (pod, c, _) = sleeper(&mut w, "leak").await;
    let daemon = w.daemon.pid().unwrap();
    let infra = w.infra_pid(&pod).await as u32;
    // Warm up (first exec, first session) so lazily created state is there.
    assert_eq!(run_v4(&mut w, &c, &["true"]).await.0, 0);
    let url = exec_url(&mut w, &c, &["true"], OUT).await.unwrap();
    let base = url[..url.find("/exec/").unwrap()].to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fds0 = fd_count(daemon);
    let infra_fds0 = fd_count(infra);
    let tasks0 = stats(&base).await["tasks"].as_u64().unwrap();

    // Interactive execs with a background child, over SPDY and WebSocket,
    // tty and not; the clients vanish mid-session.
    for (i, tty) in [false, true, false, true].into_iter().enumerate() {
        let io = Io {
            stdin: true,
            stdout: true,
            stderr: !tty,
            tty,
        };
        let marker = format!("4{i}42");
        let cmd = format!("sleep {marker} & sleep {marker}1; echo never");
        let url = exec_url(&mut w, &c, &["sh", "-c", &cmd], io).await.unwrap();
        if i < 2 {
            let x = SpdyCommand::start(&url, V4, io).await.unwrap();
            until("exec started", Duration::from_secs(10), || {
                procs_with(&marker).len() >= 2
            })
            .await;
            drop(x);
        } else {
            let ws = WsClient::connect(&url, &["v5.channel.k8s.io"]).await.unwrap();
            until("exec started", Duration::from_secs(10), || {
                procs_with(&marker).len() >= 2
            })
            .await;
            drop(ws);
        }
        until(
            &format!("exec {i} killed: {:?}", procs_with(&marker)),
            Duration::from_secs(10),
            || procs_with(&marker).is_empty(),
        )
        .await;
    }
    // An attach client vanishing leaves the container alone.
    let io = Io {
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let url = attach_url(&mut w, &c, io).await;
    drop(SpdyCommand::start(&url, V4, io).await.unwrap());

    // A client that never reads: the session ends after the write timeout
    // and the command is killed.
    let io = Io {
        stdin: false,
        stdout: true,
        stderr: false,
        tty: false,
    };
    let url = exec_url(&mut w, &c, &["head", "-c", "99999999999", "/dev/zero"], io)
        .await
        .unwrap();
    let stalled = SpdyCommand::start(&url, V4, io).await.unwrap();
    stalled.session.stop_reading();
    until("stalled exec started", Duration::from_secs(10), || {
        !procs_with("99999999999").is_empty()
    })
    .await;
    until("stalled exec killed", Duration::from_secs(20), || {
        procs_with("99999999999").is_empty()
    })
    .await;
    drop(stalled);

    // Everything back to where it was.
    until(
        &format!("daemon fds back to {fds0}: {}", fd_count(daemon)),
        Duration::from_secs(10),
        || fd_count(daemon) == fds0,
    )
    .await;
    until(
        &format!("infra fds back to {infra_fds0}: {}", fd_count(infra)),
        Duration::from_secs(10),
        || fd_count(infra) == infra_fds0,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = stats(&base).await;
        if s["tasks"].as_u64() == Some(tasks0) && s["sessions"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "tasks/sessions not back: {s} (was {tasks0})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The container is still fine.
    assert_eq!(run_v4(&mut w, &c, &["echo", "ok"]).await.1, "ok\n");
    let ps = w.sh(&c, "ps -o comm | grep -c sleep || true").await;
    assert_eq!(ps.trim(), "1", "only the container's own sleep");
}

#[tokio::test]
async fn bad_tokens_requests_and_malformed_frames() {
    let mut w = World::new(&[], "[streaming]\ntoken_ttl_secs = 1\n").await;
    let (pod, c, pod_cfg) = sleeper(&mut w, "bad").await;

    // CRI validation.
    let none = Io::default();
    assert_eq!(
        exec_url(&mut w, &c, &["true"], none).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let tty_err = Io {
        stdout: true,
        stderr: true,
        tty: true,
        stdin: false,
    };
    assert_eq!(
        exec_url(&mut w, &c, &["true"], tty_err).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        exec_url(&mut w, &c, &[], OUT).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        exec_url(&mut w, "nope", &["true"], OUT).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        pf_url(&mut w, &pod, &[70000]).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(pf_url(&mut w, "nope", &[80]).await.unwrap_err().code(), Code::NotFound);
    let done = w.run(&pod, &pod_cfg, w.container("done", "true")).await;
    w.wait_exit(&done, Duration::from_secs(10)).await;
    assert_eq!(
        exec_url(&mut w, &done, &["true"], OUT).await.unwrap_err().code(),
        Code::FailedPrecondition
    );

    // Tokens: unknown, reused, expired, for another endpoint.
    let url = exec_url(&mut w, &c, &["true"], OUT).await.unwrap();
    let base = url[..url.find("/exec/").unwrap()].to_string();
    let upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "SPDY/3.1"),
        ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
    ];
    let (h, _, _) = request(&format!("{base}/exec/0123456789abcdef"), &upgrade)
        .await
        .unwrap();
    assert_eq!(h.status, 404);
    assert!(h.body.contains("unknown"), "{}", h.body);
    let (h, _, _) = request(&url, &[]).await.unwrap();
    assert_eq!(h.status, 400, "no upgrade: {}", h.body);
    SpdyCommand::start(&url, V4, OUT)
        .await
        .unwrap()
        .finish(Duration::from_secs(10))
        .await
        .unwrap();
    let (h, _, _) = request(&url, &upgrade).await.unwrap();
    assert_eq!(h.status, 404);
    assert!(h.body.contains("already used"), "{}", h.body);
    let url = exec_url(&mut w, &c, &["true"], OUT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (h, _, _) = request(&url, &upgrade).await.unwrap();
    assert_eq!(h.status, 404);
    assert!(h.body.contains("expired"), "{}", h.body);
    let url = exec_url(&mut w, &c, &["true"], OUT).await.unwrap();
    let (h, _, _) = request(&url.replace("/exec/", "/attach/"), &upgrade).await.unwrap();
    assert_eq!(h.status, 404);
    assert!(h.body.contains("issued for exec"), "{}", h.body);
    let (h, _, _) = request(&format!("{base}/elsewhere"), &upgrade).await.unwrap();
    assert_eq!(h.status, 404);

    // Malformed SPDY: a control frame of version 2, then an oversize data
    // frame on a fresh session: the server answers GOAWAY and closes.
    for garbage in [
        vec![0x80u8, 0x02, 0, 1, 0, 0, 0, 0],
        vec![0, 0, 0, 1, 0, 0x7f, 0xff, 0xff],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ] {
        let url = exec_url(&mut w, &c, &["sleep", "7777"], OUT).await.unwrap();
        let back = SpdyClient::raw(&url, V4, &garbage).await.unwrap();
        // GOAWAY: control frame type 7.
        assert!(
            back.windows(4).any(|w| w == [0x80, 0x03, 0x00, 0x07]),
            "no GOAWAY for {garbage:?}: {back:?}"
        );
    }
    // Malformed WebSocket: text on a binary protocol, an oversize message.
    let url = exec_url(&mut w, &c, &["sleep", "7777"], OUT).await.unwrap();
    let mut ws = WsClient::connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    use futures::SinkExt;
    ws.socket
        .send(tokio_tungstenite::tungstenite::Message::text("0aGk="))
        .await
        .unwrap();
    // The server closes (1002): the read ends one way or another, in time.
    let r = ws.collect(Duration::from_secs(10)).await;
    assert!(!matches!(&r, Err(e) if e.to_string().contains("did not end")), "{r:?}");
    let url = exec_url(&mut w, &c, &["sleep", "7777"], OUT).await.unwrap();
    let mut ws = WsClient::connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    let _ = ws.send(0, &vec![7u8; 5 << 20]).await;
    let r = ws.collect(Duration::from_secs(10)).await;
    assert!(!matches!(&r, Err(e) if e.to_string().contains("did not end")), "{r:?}");
    // No sleep 1000 left from those sessions, and the daemon still serves.
    until("malformed sessions' execs killed", Duration::from_secs(10), || {
        procs_with("sleep 7777").is_empty()
    })
    .await;
    assert_eq!(run_v4(&mut w, &c, &["echo", "fine"]).await.1, "fine\n");
}
