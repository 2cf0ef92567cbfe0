//! Stats, metrics and events end to end: resource usage compared with what
//! the kernel says about the same processes, cAdvisor-style metrics,
//! container events in order for whole lifecycles (including a container
//! that exits on its own and a client that stops reading), and the
//! Prometheus endpoint.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use nodelet_integration::cri::{api, Runtime};
use nodelet_integration::netns::NetNs;
use nodelet_integration::pods::World;
use tonic::transport::{Endpoint, Uri};
use tonic::Code;

const MIB: u64 = 1 << 20;

fn within(actual: f64, truth: f64, tolerance: f64) -> bool {
    (actual - truth).abs() <= truth.abs() * tolerance
}

/// utime + stime of a process, in nanoseconds (from clock ticks).
fn proc_cpu_ns(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("container process stat");
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf takes an integer and returns one.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    ticks * 1_000_000_000 / hz
}

async fn container_pid(rt: &mut Runtime, id: &str) -> i32 {
    let r = rt
        .container_status(api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&r.info["info"]).unwrap();
    info["pid"].as_i64().expect("pid") as i32
}

async fn container_stats(rt: &mut Runtime, id: &str) -> api::ContainerStats {
    rt.container_stats(api::ContainerStatsRequest {
        container_id: id.to_string(),
    })
    .await
    .expect("ContainerStats")
    .into_inner()
    .stats
    .expect("stats")
}

fn val(v: &Option<api::UInt64Value>) -> u64 {
    v.as_ref().map(|v| v.value).expect("value present")
}

#[tokio::test]
async fn stats_of_a_busy_container_match_the_kernel() {
    let mut w = World::new(&[], "").await;
    let pod = w.pod("busy");
    let pod_id = w.run_pod(pod.clone()).await;
    // Half a core at most, 48 MiB in the pod's /dev/shm (a tmpfs: charged
    // to the container and never reclaimable as cache), then a busy loop.
    let mut cfg = w.container(
        "burn",
        "dd if=/dev/zero of=/dev/shm/fill bs=1M count=48 2>/dev/null; while :; do :; done",
    );
    let limit = 256 * MIB;
    cfg.linux = Some(api::LinuxContainerConfig {
        resources: Some(api::LinuxContainerResources {
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: limit as i64,
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = w.run(&pod_id, &pod, cfg).await;
    let pid = container_pid(&mut w.rt, &c).await;

    // Memory: the working set is the 48 MiB written (plus the shell).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mem = loop {
        let s = container_stats(&mut w.rt, &c).await;
        let m = s.memory.expect("memory stats");
        if val(&m.working_set_bytes) >= 48 * MIB {
            break m;
        }
        assert!(Instant::now() < deadline, "working set never reached 48 MiB: {m:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ws = val(&mem.working_set_bytes);
    eprintln!(
        "memory: working set {ws} B for 48 MiB allocated ({:+.2} %), usage {}, rss {}, available {}",
        (ws as f64 / (48 * MIB) as f64 - 1.0) * 100.0,
        val(&mem.usage_bytes),
        val(&mem.rss_bytes),
        val(&mem.available_bytes)
    );
    assert!(within(ws as f64, (48 * MIB) as f64, 0.10), "working set {ws}");
    assert!(val(&mem.usage_bytes) >= ws);
    assert_eq!(val(&mem.available_bytes), limit - ws);
    assert!(val(&mem.page_faults) > 0);

    // CPU: the cgroup's count over 3 s against the kernel's count for the
    // looping shell over the same interval.
    let s1 = container_stats(&mut w.rt, &c).await;
    let p1 = proc_cpu_ns(pid);
    let t1 = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s2 = container_stats(&mut w.rt, &c).await;
    let p2 = proc_cpu_ns(pid);
    let wall = t1.elapsed().as_nanos() as f64;
    let (c1, c2) = (s1.cpu.unwrap(), s2.cpu.unwrap());
    let cgroup_cores = (val(&c2.usage_core_nano_seconds) - val(&c1.usage_core_nano_seconds)) as f64
        / (c2.timestamp - c1.timestamp) as f64;
    let kernel_cores = (p2 - p1) as f64 / wall;
    let nano_cores = val(&c2.usage_nano_cores) as f64 / 1e9;
    eprintln!(
        "cpu: cgroup {cgroup_cores:.4} cores, usage_nano_cores {nano_cores:.4}, kernel (utime+stime) {kernel_cores:.4} cores, quota 0.5"
    );
    assert!(
        within(cgroup_cores, kernel_cores, 0.10),
        "{cgroup_cores} vs {kernel_cores}"
    );
    assert!(within(nano_cores, kernel_cores, 0.10), "{nano_cores} vs {kernel_cores}");
    // The quota holds (CFS bandwidth is exact to a period).
    assert!(cgroup_cores <= 0.55, "{cgroup_cores}");

    // Writable layer: 8 MiB written into the container's root.
    let before = container_stats(&mut w.rt, &c).await.writable_layer.unwrap();
    w.sh(&c, "dd if=/dev/zero of=/blob bs=1M count=8 2>/dev/null && sync")
        .await;
    let after = container_stats(&mut w.rt, &c).await.writable_layer.unwrap();
    let grown = val(&after.used_bytes) - val(&before.used_bytes);
    eprintln!(
        "writable layer: +{grown} B, +{} inodes for an 8 MiB file",
        val(&after.inodes_used) - val(&before.inodes_used)
    );
    assert!(within(grown as f64, (8 * MIB) as f64, 0.10), "{grown}");
    assert_eq!(val(&after.inodes_used), val(&before.inodes_used) + 1);
    assert!(after.fs_id.unwrap().mountpoint.ends_with("/containers"));

    // Network counters of the pod's namespace.
    let infra = w.infra_pid(&pod_id).await;
    // Traffic from the node to the pod's address on its pod network (the
    // UDP port is closed: the pod answers with ICMP, which counts as
    // transmitted). Send until the pod's side has counted 20 kB.
    let pod_ip = w.pod_status(&pod_id).await.network.expect("pod network").ip;
    let sock = w.node.within(|| std::net::UdpSocket::bind("0.0.0.0:0").unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let rx_now = |pid: i32| -> u64 {
        let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
        dev.lines()
            .find_map(|l| l.trim_start().strip_prefix("eth0:"))
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    while rx_now(infra) < 20 * 1000 {
        assert!(Instant::now() < deadline, "no traffic reached the pod");
        for _ in 0..5 {
            let _ = sock.send_to(&[7u8; 1000], format!("{pod_ip}:9"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let truth_rx = rx_now(infra);

    // The pod's stats: its cgroup holds the container and the infra.
    let ps =
        w.rt.pod_sandbox_stats(api::PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(ps.attributes.as_ref().unwrap().id, pod_id);
    let linux = ps.linux.unwrap();
    assert!(val(&linux.memory.as_ref().unwrap().working_set_bytes) >= 48 * MIB);
    assert!(
        val(&linux.cpu.as_ref().unwrap().usage_core_nano_seconds)
            >= val(&s2.cpu.as_ref().unwrap().usage_core_nano_seconds)
    );
    assert!(
        val(&linux.process.as_ref().unwrap().process_count) >= 2,
        "infra and shell"
    );
    assert_eq!(linux.containers.len(), 1);
    assert_eq!(linux.containers[0].attributes.as_ref().unwrap().id, c);
    let net = linux.network.expect("network stats");
    let eth0 = net.default_interface.expect("default interface");
    assert_eq!(eth0.name, "eth0");
    eprintln!(
        "network: eth0 rx {} B, tx {} B",
        val(&eth0.rx_bytes),
        val(&eth0.tx_bytes)
    );
    // The kernel's own counter, read before the RPC: nothing else sends.
    assert!(val(&eth0.rx_bytes) >= truth_rx, "{eth0:?} vs {truth_rx}");
    assert!(val(&eth0.rx_bytes) < truth_rx + 2000, "{eth0:?} vs {truth_rx}");
    assert!(val(&eth0.tx_bytes) > 0, "{eth0:?}");
    assert!(net.interfaces.iter().all(|i| i.name != "lo"));

    // Lists and their filters.
    let other = w.run_pod(w.pod("idle")).await;
    let list = |f: api::PodSandboxStatsFilter| api::ListPodSandboxStatsRequest { filter: Some(f) };
    let all =
        w.rt.list_pod_sandbox_stats(list(Default::default()))
            .await
            .unwrap()
            .into_inner()
            .stats;
    assert_eq!(all.len(), 2);
    let by_label =
        w.rt.list_pod_sandbox_stats(list(api::PodSandboxStatsFilter {
            label_selector: HashMap::from([("app".into(), "busy".into())]),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].attributes.as_ref().unwrap().id, pod_id);
    let by_id =
        w.rt.list_pod_sandbox_stats(list(api::PodSandboxStatsFilter {
            id: other.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(by_id.len(), 1);
    let clist = |f: api::ContainerStatsFilter| api::ListContainerStatsRequest { filter: Some(f) };
    let by_pod =
        w.rt.list_container_stats(clist(api::ContainerStatsFilter {
            pod_sandbox_id: pod_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(by_pod.len(), 1);
    let none =
        w.rt.list_container_stats(clist(api::ContainerStatsFilter {
            label_selector: HashMap::from([("container".into(), "nope".into())]),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert!(none.is_empty());
    let err =
        w.rt.container_stats(api::ContainerStatsRequest {
            container_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // cAdvisor-style metrics for the kubelet.
    let descriptors =
        w.rt.list_metric_descriptors(api::ListMetricDescriptorsRequest {})
            .await
            .unwrap()
            .into_inner()
            .descriptors;
    let keys: HashMap<String, Vec<String>> = descriptors.into_iter().map(|d| (d.name, d.label_keys)).collect();
    for name in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_memory_usage_bytes",
        "container_memory_rss",
        "container_spec_memory_limit_bytes",
        "container_network_receive_bytes_total",
        "container_network_transmit_bytes_total",
        "container_fs_usage_bytes",
        "container_processes",
    ] {
        assert!(keys.contains_key(name), "{name} not described");
    }
    let metrics =
        w.rt.list_pod_sandbox_metrics(api::ListPodSandboxMetricsRequest {})
            .await
            .unwrap()
            .into_inner()
            .pod_metrics;
    let pm = metrics
        .iter()
        .find(|m| m.pod_sandbox_id == pod_id)
        .expect("pod metrics");
    let labelled = |m: &api::Metric| -> BTreeMap<String, String> {
        let k = &keys[&m.name];
        assert_eq!(k.len(), m.label_values.len(), "{}", m.name);
        k.iter().cloned().zip(m.label_values.iter().cloned()).collect()
    };
    let rx = pm
        .metrics
        .iter()
        .find(|m| m.name == "container_network_receive_bytes_total")
        .expect("network metric");
    let l = labelled(rx);
    assert_eq!(l["interface"], "eth0");
    assert_eq!(l["pod"], "busy");
    assert!(rx.value.as_ref().unwrap().value >= 20_000);
    let cm = &pm
        .container_metrics
        .iter()
        .find(|m| m.container_id == c)
        .expect("container metrics")
        .metrics;
    let get = |name: &str| {
        cm.iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    let wsm = get("container_memory_working_set_bytes");
    let l = labelled(wsm);
    assert_eq!(
        (l["pod"].as_str(), l["namespace"].as_str(), l["container"].as_str()),
        ("busy", "default", "burn")
    );
    assert_eq!(l["id"], c);
    assert!(within(
        wsm.value.as_ref().unwrap().value as f64,
        (48 * MIB) as f64,
        0.10
    ));
    // Whole seconds (the CRI carries integers) of the cgroup's count.
    let cpu_s = get("container_cpu_usage_seconds_total").value.as_ref().unwrap().value;
    let later = val(&container_stats(&mut w.rt, &c)
        .await
        .cpu
        .unwrap()
        .usage_core_nano_seconds);
    let earlier = val(&s2.cpu.as_ref().unwrap().usage_core_nano_seconds);
    assert!(
        (earlier / 1_000_000_000..=later / 1_000_000_000).contains(&cpu_s),
        "{cpu_s} s vs {earlier}..{later} ns"
    );
    assert_eq!(
        get("container_spec_memory_limit_bytes").value.as_ref().unwrap().value,
        limit
    );
    assert_eq!(get("container_spec_cpu_quota").value.as_ref().unwrap().value, 50_000);
    assert_eq!(
        get("container_cpu_usage_seconds_total").metric_type,
        api::MetricType::Counter as i32
    );
    for m in cm.iter().chain(&pm.metrics) {
        labelled(m);
    }

    // A stopped pod has no stats left to give.
    w.stop_pod(&other).await;
    let err =
        w.rt.pod_sandbox_stats(api::PodSandboxStatsRequest {
            pod_sandbox_id: other.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    w.remove_pod(&other).await;
    w.remove_pod(&pod_id).await;
    w.assert_no_leaks();
}

type Events = tonic::Streaming<api::ContainerEventResponse>;

async fn subscribe(rt: &mut Runtime) -> Events {
    rt.get_container_events(api::GetEventsRequest {})
        .await
        .expect("GetContainerEvents")
        .into_inner()
}

fn kind(e: &api::ContainerEventResponse) -> api::ContainerEventType {
    api::ContainerEventType::try_from(e.container_event_type).unwrap()
}

/// Read the next events and check they are exactly `want` (id, type), in
/// order.
async fn expect_events(
    events: &mut Events,
    want: &[(&str, api::ContainerEventType)],
) -> Vec<api::ContainerEventResponse> {
    let mut got = Vec::new();
    for (id, k) in want {
        let e = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .unwrap_or_else(|_| panic!("no event after {got:?}; wanted {k:?} for {id}"))
            .expect("event stream")
            .expect("event stream open");
        assert_eq!(
            (e.container_id.as_str(), kind(&e)),
            (*id, *k),
            "events so far: {:?}",
            got.iter()
                .map(|e: &api::ContainerEventResponse| (&e.container_id, kind(e)))
                .collect::<Vec<_>>()
        );
        got.push(e);
    }
    got
}

#[tokio::test]
async fn events_follow_lifecycles_in_order() {
    use api::ContainerEventType::*;
    let mut w = World::new(&[], "").await;
    let mut events = subscribe(&mut w.rt).await;

    let pod = w.pod("evt");
    let pod_id = w.run_pod(pod.clone()).await;
    let got = expect_events(
        &mut events,
        &[(&pod_id, ContainerCreatedEvent), (&pod_id, ContainerStartedEvent)],
    )
    .await;
    for e in &got {
        let st = e.pod_sandbox_status.as_ref().expect("pod status attached");
        assert_eq!(st.id, pod_id);
        assert_eq!(st.metadata.as_ref().unwrap().uid, "uid-evt");
        assert_eq!(st.state, api::PodSandboxState::SandboxReady as i32);
        assert!(e.created_at > 0);
    }

    // A container taken through its whole life by the client.
    let c1 = w.create(&pod_id, &pod, w.container("one", "sleep 1000")).await.unwrap();
    let got = expect_events(&mut events, &[(&c1, ContainerCreatedEvent)]).await;
    assert_eq!(got[0].containers_statuses.len(), 1);
    assert_eq!(got[0].containers_statuses[0].id, c1);
    assert_eq!(
        got[0].containers_statuses[0].state,
        api::ContainerState::ContainerCreated as i32
    );
    w.start(&c1).await.unwrap();
    let got = expect_events(&mut events, &[(&c1, ContainerStartedEvent)]).await;
    assert_eq!(
        got[0].containers_statuses[0].state,
        api::ContainerState::ContainerRunning as i32
    );
    w.rt.stop_container(api::StopContainerRequest {
        container_id: c1.clone(),
        timeout: 5,
    })
    .await
    .unwrap();
    let got = expect_events(&mut events, &[(&c1, ContainerStoppedEvent)]).await;
    assert_eq!(
        got[0].containers_statuses[0].state,
        api::ContainerState::ContainerExited as i32
    );
    w.rt.remove_container(api::RemoveContainerRequest {
        container_id: c1.clone(),
    })
    .await
    .unwrap();
    let got = expect_events(&mut events, &[(&c1, ContainerDeletedEvent)]).await;
    assert!(
        got[0].containers_statuses.is_empty(),
        "{:?}",
        got[0].containers_statuses
    );
    assert_eq!(got[0].pod_sandbox_status.as_ref().unwrap().id, pod_id);

    // A container that exits on its own, a second after it started: only
    // the infra's status.json write tells the daemon.
    let c2 = w.run(&pod_id, &pod, w.container("two", "sleep 1; exit 3")).await;
    expect_events(
        &mut events,
        &[(&c2, ContainerCreatedEvent), (&c2, ContainerStartedEvent)],
    )
    .await;
    let got = expect_events(&mut events, &[(&c2, ContainerStoppedEvent)]).await;
    let st = got[0]
        .containers_statuses
        .iter()
        .find(|s| s.id == c2)
        .expect("status of c2");
    assert_eq!(st.state, api::ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 3);
    let lag = Duration::from_nanos((got[0].created_at - st.finished_at).max(0) as u64);
    eprintln!("exit noticed {lag:?} after the container finished");
    assert!(lag < Duration::from_secs(2), "the exit was noticed {lag:?} late");

    // A failed request's log line names what it was about.
    let err =
        w.rt.exec_sync(api::ExecSyncRequest {
            container_id: c2.clone(),
            cmd: vec!["true".into()],
            timeout: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let log = w.daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("ExecSync") && l.contains("failed"))
        .expect("a log line for the failed ExecSync");
    eprintln!("{line}");
    for field in [
        format!("container=\"{c2}\""),
        "container_name=\"two\"".to_string(),
        format!("pod=\"{pod_id}\""),
        "pod_name=\"default/evt\"".to_string(),
        "code=FailedPrecondition".to_string(),
    ] {
        assert!(line.contains(&field), "{field} not in {line}");
    }

    // The pod's end: stop, then removal takes its container with it.
    w.stop_pod(&pod_id).await;
    let got = expect_events(&mut events, &[(&pod_id, ContainerStoppedEvent)]).await;
    assert_eq!(
        got[0].pod_sandbox_status.as_ref().unwrap().state,
        api::PodSandboxState::SandboxNotready as i32
    );
    w.remove_pod(&pod_id).await;
    let got = expect_events(
        &mut events,
        &[(&c2, ContainerDeletedEvent), (&pod_id, ContainerDeletedEvent)],
    )
    .await;
    // Even after it is gone, the pod's identity comes with the event.
    assert_eq!(
        got[1]
            .pod_sandbox_status
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .uid,
        "uid-evt"
    );

    // Nothing more.
    assert!(tokio::time::timeout(Duration::from_millis(500), events.message())
        .await
        .is_err());
    w.assert_no_leaks();
}

/// A CRI channel whose HTTP/2 stream window is tiny: a client that does not
/// read stops the server from sending after a few KiB.
async fn small_window_client(socket: &Path) -> Runtime {
    let socket: PathBuf = socket.to_path_buf();
    let ch = Endpoint::try_from("http://[::1]:50051")
        .unwrap()
        .initial_stream_window_size(Some(4096))
        .initial_connection_window_size(Some(65_535))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        }))
        .await
        .unwrap();
    RuntimeServiceClient::new(ch)
}

#[tokio::test]
async fn a_client_that_stops_reading_events_blocks_nothing() {
    use api::ContainerEventType::*;
    let mut w = World::new(&[], "").await;
    let mut stalled_client = small_window_client(&w.daemon.socket).await;
    let mut stalled = subscribe(&mut stalled_client).await;

    let pod = w.pod("flood");
    let pod_id = w.run_pod(pod.clone()).await;
    // Well over the daemon's 1024-event buffer: create and remove a
    // container 600 times (two events each), timing every call.
    let mut slowest = Duration::ZERO;
    let start = Instant::now();
    for i in 0..600 {
        let mut cfg = w.container("c", "true");
        cfg.metadata.as_mut().unwrap().attempt = i;
        let t = Instant::now();
        let c = w.create(&pod_id, &pod, cfg).await.unwrap();
        w.rt.remove_container(api::RemoveContainerRequest { container_id: c })
            .await
            .unwrap();
        slowest = slowest.max(t.elapsed());
    }
    eprintln!(
        "600 create+remove with a stalled subscriber: {:?}, slowest pair {slowest:?}",
        start.elapsed()
    );
    assert!(slowest < Duration::from_secs(5), "{slowest:?}");

    // A new subscriber is served at once (after the tail of the flood,
    // which may still be on its way).
    let mut fresh = subscribe(&mut w.rt).await;
    let c = w.create(&pod_id, &pod, w.container("last", "true")).await.unwrap();
    let t = Instant::now();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), fresh.message())
            .await
            .expect("no event for the new container")
            .unwrap()
            .unwrap();
        if e.container_id == c {
            assert_eq!(kind(&e), ContainerCreatedEvent);
            break;
        }
        assert_eq!(
            kind(&e),
            ContainerDeletedEvent,
            "only the flood's last deletions come first"
        );
    }
    eprintln!("fresh subscriber got its event {:?} after the create", t.elapsed());

    // The stalled one gets what fitted in its window, then is told it fell
    // behind and its stream ends.
    let mut received = 0;
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), stalled.message())
            .await
            .expect("the stalled stream neither delivered nor ended")
        {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("stream ended without an error after {received} events"),
            Err(e) => break e,
        }
    };
    eprintln!(
        "stalled subscriber: {received} events, then {:?}: {}",
        err.code(),
        err.message()
    );
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(received < 1200);
    w.remove_pod(&pod_id).await;
    w.assert_no_leaks();
}

/// `GET path` over HTTP/1.0 from inside the node's network namespace
/// (where the daemon runs): (status, body).
fn http_get(node: &NetNs, addr: &str, path: &str) -> (u16, String) {
    let (addr, path) = (addr.to_string(), path.to_string());
    node.within(move || http_get_here(&addr, &path))
}

fn http_get_here(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("HTTP answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
struct PromSample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parse the Prometheus text exposition format (0.0.4) strictly: HELP and
/// TYPE comments, and `name{label="value",...} value [timestamp]` lines
/// whose family has been declared.
fn parse_prometheus(text: &str) -> Vec<PromSample> {
    fn valid_name(n: &str) -> bool {
        !n.is_empty()
            && n.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    }
    let mut types: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(c) = line.strip_prefix("# ") {
            let mut f = c.splitn(3, ' ');
            match (f.next(), f.next(), f.next()) {
                (Some("HELP"), Some(n), _) => assert!(valid_name(n), "{line}"),
                (Some("TYPE"), Some(n), Some(t)) => {
                    assert!(valid_name(n), "{line}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "{line}"
                    );
                    assert!(
                        types.insert(n.to_string(), t.to_string()).is_none(),
                        "second TYPE: {line}"
                    );
                }
                _ => panic!("bad comment line {line:?}"),
            }
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("bad sample line {line:?}"),
        };
        assert!(valid_name(name), "{line}");
        let mut labels = BTreeMap::new();
        let rest = if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let end;
            loop {
                let (i, c) = chars.next().unwrap_or_else(|| panic!("unterminated labels: {line}"));
                if c == '}' {
                    end = i;
                    break;
                }
                if c == ',' {
                    continue;
                }
                let key_start = i;
                let mut key_end = i;
                for (j, c) in chars.by_ref() {
                    if c == '=' {
                        key_end = j;
                        break;
                    }
                }
                let key = &r[key_start..key_end];
                assert!(valid_name(key), "label {key:?} in {line}");
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                let mut value = String::new();
                loop {
                    match chars.next().unwrap_or_else(|| panic!("unterminated value: {line}")) {
                        (_, '\\') => match chars.next().unwrap().1 {
                            'n' => value.push('\n'),
                            c => value.push(c),
                        },
                        (_, '"') => break,
                        (_, c) => value.push(c),
                    }
                }
                labels.insert(key.to_string(), value);
            }
            &r[end + 1..]
        } else {
            rest
        };
        let mut f = rest.split_whitespace();
        let value = match f.next().unwrap_or_else(|| panic!("no value: {line}")) {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        if let Some(ts) = f.next() {
            ts.parse::<i64>().unwrap_or_else(|_| panic!("bad timestamp in {line}"));
        }
        assert!(f.next().is_none(), "{line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        out.push(PromSample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

fn value(samples: &[PromSample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[tokio::test]
async fn prometheus_endpoint_and_healthz() {
    let port = nodelet_integration::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut w = World::new(&[], &format!("[metrics]\naddress = {addr:?}\n")).await;

    let (status, body) = http_get(&w.node, &addr, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(http_get(&w.node, &addr, "/nope").0, 404);

    let before = parse_prometheus(&http_get(&w.node, &addr, "/metrics").1);
    let runs = |s: &[PromSample]| {
        value(
            s,
            "nodelet_cri_request_duration_seconds_count",
            &[("rpc", "RunPodSandbox")],
        )
        .unwrap_or(0.0)
    };
    let not_found = |s: &[PromSample]| {
        value(
            s,
            "nodelet_cri_request_errors_total",
            &[("rpc", "ContainerStatus"), ("code", "NotFound")],
        )
        .unwrap_or(0.0)
    };
    // World pulled busybox.
    assert!(value(&before, "nodelet_image_pulls_total", &[("result", "success")]).unwrap() >= 1.0);
    assert!(value(&before, "nodelet_image_pull_bytes_total", &[]).unwrap() > 0.0);
    assert!(value(&before, "nodelet_image_pull_duration_seconds_count", &[]).unwrap() >= 1.0);
    assert_eq!(value(&before, "nodelet_pods", &[("state", "ready")]), Some(0.0));

    let pod = w.pod("scraped");
    let pod_id = w.run_pod(pod.clone()).await;
    let c = w.run(&pod_id, &pod, w.container("app", "sleep 1000")).await;
    let err =
        w.rt.container_status(api::ContainerStatusRequest {
            container_id: "missing".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let after = parse_prometheus(&http_get(&w.node, &addr, "/metrics").1);
    assert_eq!(runs(&after), runs(&before) + 1.0);
    assert_eq!(not_found(&after), not_found(&before) + 1.0);
    assert_eq!(value(&after, "nodelet_pods", &[("state", "ready")]), Some(1.0));
    assert_eq!(value(&after, "nodelet_containers", &[("state", "running")]), Some(1.0));
    assert!(value(&after, "nodelet_infra_starts_total", &[]).unwrap() >= 1.0);
    assert_eq!(value(&after, "nodelet_infra_deaths_total", &[]), Some(0.0));
    // The pod's network attachment went through the CNI path.
    assert!(
        value(
            &after,
            "nodelet_cni_operations_total",
            &[("op", "setup"), ("result", "success")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        value(
            &after,
            "nodelet_cni_operation_duration_seconds_count",
            &[("op", "setup")]
        )
        .unwrap()
            >= 1.0
    );
    // Histogram buckets are cumulative and end with +Inf = count.
    let buckets: Vec<&PromSample> = after
        .iter()
        .filter(|s| {
            s.name == "nodelet_cri_request_duration_seconds_bucket"
                && s.labels.get("rpc").map(String::as_str) == Some("RunPodSandbox")
        })
        .collect();
    assert!(buckets.windows(2).all(|b| b[0].value <= b[1].value));
    assert_eq!(buckets.last().unwrap().labels["le"], "+Inf");
    assert_eq!(buckets.last().unwrap().value, runs(&after));

    // An infra process killed from outside is counted as a death.
    let infra = w.infra_pid(&pod_id).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(infra), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = parse_prometheus(&http_get(&w.node, &addr, "/metrics").1);
        if value(&s, "nodelet_infra_deaths_total", &[]) == Some(1.0) {
            assert_eq!(value(&s, "nodelet_pods", &[("state", "notready")]), Some(1.0));
            break;
        }
        assert!(Instant::now() < deadline, "infra death not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = c;
    w.remove_pod(&pod_id).await;
    w.assert_no_leaks();

    // After SIGTERM the endpoint goes away with the daemon.
    w.daemon.terminate();
    let gone = addr.clone();
    assert!(w.node.within(move || std::net::TcpStream::connect(&gone).is_err()));
}
