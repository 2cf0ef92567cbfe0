//! Pod networking end to end: the built-in bridge network, port mappings,
//! masquerade, dual stack, CNI configs with Debian's reference plugins and
//! with our own binary, UpdateRuntimeConfig, and no leaks through churn and
//! daemon kills. Each test's daemon runs in a network namespace of its own
//! (the test's "node"), so nothing touches the host's network.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use nodelet_integration::cri::api;
use nodelet_integration::netns::NetNs;
use nodelet_integration::pods::World;
use tonic::Code;

/// The pod's addresses from PodSandboxStatus, IPv4 first.
async fn pod_ips(w: &mut World, pod: &str) -> Vec<String> {
    let st = w.pod_status(pod).await;
    let net = st.network.expect("network status");
    std::iter::once(net.ip)
        .chain(net.additional_ips.into_iter().map(|p| p.ip))
        .filter(|ip| !ip.is_empty())
        .collect()
}

/// GET / from `addr` inside `ns` (a tiny HTTP client on a thread there).
fn http_get(ns: &NetNs, addr: String) -> String {
    ns.within(move || {
        let mut s = match TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3)) {
            Ok(s) => s,
            Err(e) => return format!("connect {addr}: {e}"),
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

/// A pod serving `body` over HTTP on container port 80, with `host_port`
/// mapped to it.
async fn web_pod(w: &mut World, name: &str, body: &str, host_port: i32) -> (String, String) {
    let mut pod = w.pod(name);
    if host_port > 0 {
        pod.port_mappings = vec![api::PortMapping {
            protocol: api::Protocol::Tcp as i32,
            container_port: 80,
            host_port,
            host_ip: String::new(),
        }];
    }
    let id = w.run_pod(pod.clone()).await;
    let script = format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www");
    let c = w.run(&id, &pod, w.container("web", &script)).await;
    // Wait for the server.
    for _ in 0..100 {
        if w.exec(&c, &["sh", "-c", "wget -qO- http://127.0.0.1/"]).await.exit_code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (id, c)
}

#[tokio::test]
async fn pods_reach_each_other_the_node_and_the_outside() {
    let mut w = World::new(&[], "").await;
    let (a, _) = web_pod(&mut w, "a", "hello-from-a", 8080).await;
    let pod_b = w.pod("b");
    let b = w.run_pod(pod_b.clone()).await;
    let cb = w.run(&b, &pod_b, w.container("client", "sleep 1000")).await;

    let a_ips = pod_ips(&mut w, &a).await;
    let b_ips = pod_ips(&mut w, &b).await;
    let a4 = a_ips[0].clone();
    assert!(a4.starts_with("10.88."), "{a_ips:?}");
    assert!(b_ips[0].starts_with("10.88."), "{b_ips:?}");
    assert_ne!(a4, b_ips[0]);
    // The container sees the address the CRI reports.
    assert!(w.sh(&cb, "ip -4 -o addr show eth0").await.contains(&b_ips[0]));

    // Pod to pod.
    assert_eq!(w.sh(&cb, &format!("wget -qO- http://{a4}/")).await, "hello-from-a\n");
    assert_eq!(w.exec(&cb, &["ping", "-c", "1", "-W", "2", &a4]).await.exit_code, 0);
    // Pod to node (the bridge's gateway address) and node to pod.
    assert_eq!(
        w.exec(&cb, &["ping", "-c", "1", "-W", "2", "10.88.0.1"])
            .await
            .exit_code,
        0
    );
    assert!(http_get(&w.node, format!("{a4}:80")).contains("hello-from-a"));

    // hostPort: from the node on 127.0.0.1 and on its address, and from
    // another pod (through the node's address: hairpin).
    assert!(
        http_get(&w.node, "127.0.0.1:8080".into()).contains("hello-from-a"),
        "localhost hostPort"
    );
    assert!(
        http_get(&w.node, "10.88.0.1:8080".into()).contains("hello-from-a"),
        "node address hostPort"
    );
    assert_eq!(w.sh(&cb, "wget -qO- http://10.88.0.1:8080/").await, "hello-from-a\n");

    // Masquerade: a host outside the node sees the node's address.
    let outside = NetNs::new("nlo");
    w.node.link(&outside, "192.168.77.1/24", "192.168.77.2/24");
    let listener = outside.within(|| TcpListener::bind("192.168.77.2:9999").unwrap());
    let seen = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let (mut s, peer): (TcpStream, SocketAddr) = listener.accept().unwrap();
        let _ = s.write_all(b"hi\n");
        peer.ip().to_string()
    });
    assert_eq!(w.sh(&cb, "echo | nc -w 2 192.168.77.2 9999").await, "hi\n");
    assert_eq!(
        seen.join().unwrap(),
        "192.168.77.1",
        "masqueraded to the node's address"
    );
    // The node reaches a pod's hostPort from outside too.
    assert!(http_get(&outside, "192.168.77.1:8080".into()).contains("hello-from-a"));

    w.remove_pod(&a).await;
    w.remove_pod(&b).await;
    // Port mapping gone with the pod.
    assert!(!http_get(&w.node, "127.0.0.1:8080".into()).contains("hello-from-a"));
    w.assert_no_leaks();
    assert_network_clean(&w);
}

/// No veth, no IP allocation, no per-pod nftables rule left in the node.
fn assert_network_clean(w: &World) {
    let links = w.node.ip(&["-o", "link", "show"]);
    let veths: Vec<&str> = links.lines().filter(|l| l.contains("veth")).collect();
    assert!(veths.is_empty(), "veths left: {veths:?}");
    let dir = w.daemon.root_dir.join("cni/networks/nodelet");
    let ips: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(ips.is_empty(), "IP allocations left: {ips:?}");
    let rules = w.node.run("nft", &["list", "ruleset"]).unwrap_or_default();
    assert!(!rules.contains("dnat"), "DNAT rules left:\n{rules}");
}

#[tokio::test]
async fn dual_stack_when_the_node_has_ipv6() {
    let mut w = World::new(&[], "").await;
    let pod_a = w.pod("v6a");
    let a = w.run_pod(pod_a.clone()).await;
    let ca = w.run(&a, &pod_a, w.container("app", "sleep 1000")).await;
    let pod_b = w.pod("v6b");
    let b = w.run_pod(pod_b.clone()).await;
    let _cb = w.run(&b, &pod_b, w.container("app", "sleep 1000")).await;
    let a_ips = pod_ips(&mut w, &a).await;
    let b_ips = pod_ips(&mut w, &b).await;
    assert_eq!(a_ips.len(), 2, "IPv4 and IPv6: {a_ips:?}");
    assert!(a_ips[1].starts_with("fd6e:6f64:656c:"), "{a_ips:?}");
    assert_eq!(
        w.exec(&ca, &["ping", "-6", "-c", "1", "-W", "2", &b_ips[1]])
            .await
            .exit_code,
        0
    );
    w.remove_pod(&a).await;
    w.remove_pod(&b).await;
    assert_network_clean(&w);
}

#[tokio::test]
async fn update_runtime_config_and_network_ready() {
    let mut w = World::new(&[], "").await;
    let st = w.rt.status(api::StatusRequest::default()).await.unwrap().into_inner();
    let net = st
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(net.status, "built-in network ready: {net:?}");

    w.rt.update_runtime_config(api::UpdateRuntimeConfigRequest {
        runtime_config: Some(api::RuntimeConfig {
            network_config: Some(api::NetworkConfig {
                pod_cidr: "10.123.0.0/24".into(),
            }),
        }),
    })
    .await
    .unwrap();
    let pod = w.pod("cidr");
    let id = w.run_pod(pod).await;
    let ips = pod_ips(&mut w, &id).await;
    assert!(ips[0].starts_with("10.123.0."), "{ips:?}");
    let err =
        w.rt.update_runtime_config(api::UpdateRuntimeConfigRequest {
            runtime_config: Some(api::RuntimeConfig {
                network_config: Some(api::NetworkConfig {
                    pod_cidr: "not-a-cidr".into(),
                }),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    w.remove_pod(&id).await;

    // A CNI config naming a plugin that is not installed: not ready, and
    // saying why.
    std::fs::write(
        w.daemon.path("cni/net.d/10-missing.conflist"),
        r#"{"cniVersion":"1.0.0","name":"m","plugins":[{"type":"no-such-plugin"}]}"#,
    )
    .unwrap();
    let st = w.rt.status(api::StatusRequest::default()).await.unwrap().into_inner();
    let net = st
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(!net.status);
    assert!(net.message.contains("no-such-plugin"), "{net:?}");
    w.assert_no_leaks();
}

#[tokio::test]
async fn reference_plugins_from_a_conflist() {
    let conflist = r#"{"cniVersion":"1.0.0","name":"ref","plugins":[
        {"type":"bridge","bridge":"refbr0","isGateway":true,"ipMasq":true,
         "ipam":{"type":"host-local","ranges":[[{"subnet":"10.99.0.0/24"}]],"dataDir":"DATADIR"}},
        {"type":"portmap","capabilities":{"portMappings":true}},
        {"type":"loopback"}]}"#;
    let mut w = World::new(&[], "[cni]\nbin_dirs = [\"/usr/lib/cni\"]\n").await;
    let data = w.daemon.path("cni-ref-data");
    std::fs::write(
        w.daemon.path("cni/net.d/10-ref.conflist"),
        conflist.replace("DATADIR", data.to_str().unwrap()),
    )
    .unwrap();
    let (a, _) = web_pod(&mut w, "refa", "hello-ref", 8081).await;
    let pod_b = w.pod("refb");
    let b = w.run_pod(pod_b.clone()).await;
    let cb = w.run(&b, &pod_b, w.container("client", "sleep 1000")).await;
    let a4 = pod_ips(&mut w, &a).await[0].clone();
    assert!(a4.starts_with("10.99.0."), "{a4}");
    assert_eq!(w.sh(&cb, &format!("wget -qO- http://{a4}/")).await, "hello-ref\n");
    assert!(http_get(&w.node, format!("{a4}:80")).contains("hello-ref"));
    assert!(
        http_get(&w.node, "10.99.0.1:8081".into()).contains("hello-ref"),
        "portmap"
    );
    w.remove_pod(&a).await;
    w.remove_pod(&b).await;
    let left: Vec<_> = std::fs::read_dir(data.join("ref"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "host-local allocations left: {left:?}");
    w.assert_no_leaks();
}

#[tokio::test]
async fn our_plugin_binary_from_a_conflist() {
    // The standalone binary, installed under its plugin type name.
    let bin_dir = tempfile::tempdir().unwrap();
    let built = nodelet_integration::target_dir().join("debug/nodelet-cni");
    assert!(
        built.is_file(),
        "{} missing: cargo build -p nodelet-cni",
        built.display()
    );
    std::fs::copy(&built, bin_dir.path().join("nodelet-bridge")).unwrap();
    // No Debian plugin in this 1.1.0 list: Debian's speak CNI 1.0.0 at most
    // (nodelet-cni's own tests chain it with them at 1.0.0).
    let mut w = World::new(&[], &format!("[cni]\nbin_dirs = [{:?}]\n", bin_dir.path())).await;
    let data = w.daemon.path("cni-own-data");
    std::fs::write(
        w.daemon.path("cni/net.d/10-own.conflist"),
        format!(
            r#"{{"cniVersion":"1.1.0","name":"own","plugins":[
                {{"type":"nodelet-bridge","bridge":"ownbr0","isGateway":true,"isDefaultGateway":true,"ipMasq":true,
                  "capabilities":{{"portMappings":true}},
                  "ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.98.0.0/24"}}]],"dataDir":{:?}}}}}]}}"#,
            data
        ),
    )
    .unwrap();
    let (a, _) = web_pod(&mut w, "owna", "hello-own", 8082).await;
    let a4 = pod_ips(&mut w, &a).await[0].clone();
    assert!(a4.starts_with("10.98.0."), "{a4}");
    assert!(http_get(&w.node, format!("{a4}:80")).contains("hello-own"));
    assert!(http_get(&w.node, "127.0.0.1:8082".into()).contains("hello-own"));
    let st = w.rt.status(api::StatusRequest::default()).await.unwrap().into_inner();
    let net = st
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(net.status, "CNI STATUS through our binary: {net:?}");
    w.remove_pod(&a).await;
    w.assert_no_leaks();
}

#[tokio::test]
async fn churn_with_daemon_kills_leaks_nothing() {
    let mut w = World::new(&[], "").await;
    let cycles = 500;
    let mut done = 0;
    let mut kills = 0;
    let mut rng = nodelet_integration::random_suffix();
    while done < cycles {
        // A batch of pods created and removed concurrently...
        let batch = 25.min(cycles - done);
        let mut tasks = Vec::new();
        for i in 0..batch {
            let (mut rt, _) = w.daemon.clients().await;
            let pod = w.pod(&format!("churn{}", done + i));
            tasks.push(tokio::spawn(async move {
                let id = rt
                    .run_pod_sandbox(api::RunPodSandboxRequest {
                        config: Some(pod),
                        runtime_handler: String::new(),
                    })
                    .await
                    .map(|r| r.into_inner().pod_sandbox_id);
                if let Ok(id) = &id {
                    let _ = rt
                        .remove_pod_sandbox(api::RemovePodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        })
                        .await;
                }
            }));
        }
        // ...and every other batch, the daemon killed in the middle of it.
        if (done / batch) % 2 == 1 {
            if rng.len() < 2 {
                rng = nodelet_integration::random_suffix();
            }
            let delay = u64::from_str_radix(&rng[..2], 16).unwrap() % 60;
            rng.drain(..2);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            w.daemon.kill9();
            kills += 1;
            for t in tasks {
                let _ = t.await;
            }
            w.daemon.spawn().await;
            let (rt, images) = w.daemon.clients().await;
            w.rt = rt;
            w.images = images;
        } else {
            for t in tasks {
                let _ = t.await;
            }
        }
        done += batch;
    }
    // Pods created before a kill that their client never heard of are
    // still there (a kubelet would remove them): remove everything.
    let pods =
        w.rt.list_pod_sandbox(api::ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items;
    for p in pods {
        w.remove_pod(&p.id).await;
    }
    assert!(kills >= 9, "kills: {kills}");
    w.assert_no_leaks();
    assert_network_clean(&w);
    let routes: HashSet<String> = w.node.ip(&["route", "show"]).lines().map(str::to_string).collect();
    assert!(routes.iter().all(|r| !r.contains("veth")), "routes left: {routes:?}");
}
