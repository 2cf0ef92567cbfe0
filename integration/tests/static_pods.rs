//! Static pods end to end: manifests in the daemon's manifest directory,
//! watched and kept running; the status endpoint a user would curl; the
//! CRI view crictl shows; the kubelet socket that hides them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nodelet_integration::cri::{api, clients};
use nodelet_integration::pods::World;
use nodelet_integration::static_pods::{condition, container, container_id, restarts, running, StaticPods};
use serde_json::Value;
use tonic::Code;

const NODE: &str = "node1";

fn config(extra: &str) -> String {
    format!(
        "node_name = \"{NODE}\"\n\n[static_pods]\nsync_interval_ms = 200\nbackoff_initial_ms = 1000\nbackoff_max_ms = 4000\nresync_secs = 2\n{extra}"
    )
}

/// CRI sandboxes whose pod name is `name`.
async fn sandboxes(w: &mut World, name: &str) -> Vec<api::PodSandbox> {
    let mut sel = HashMap::new();
    sel.insert("io.kubernetes.pod.name".to_string(), name.to_string());
    w.rt.list_pod_sandbox(api::ListPodSandboxRequest {
        filter: Some(api::PodSandboxFilter {
            label_selector: sel,
            ..Default::default()
        }),
    })
    .await
    .expect("ListPodSandbox")
    .into_inner()
    .items
}

/// What `crictl pods` and `crictl ps -a` show for a pod, for the record.
async fn crictl_view(w: &mut World, name: &str, step: &str) {
    println!("-- {step}: crictl pods --name {name}; crictl ps -a --pod <id>");
    for p in sandboxes(w, name).await {
        let m = p.metadata.clone().unwrap_or_default();
        println!(
            "POD ID {}  NAME {}  NAMESPACE {}  ATTEMPT {}  STATE {:?}",
            &p.id[..13],
            m.name,
            m.namespace,
            m.attempt,
            api::PodSandboxState::try_from(p.state).unwrap()
        );
        let cs =
            w.rt.list_containers(api::ListContainersRequest {
                filter: Some(api::ContainerFilter {
                    pod_sandbox_id: p.id.clone(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .containers;
        for c in cs {
            let st = w.status(&c.id).await;
            println!(
                "  CONTAINER {}  NAME {}  ATTEMPT {}  STATE {:?}  EXIT {}  REASON {:?}",
                &c.id[..13],
                c.metadata.unwrap_or_default().name,
                st.annotations
                    .get("io.kubernetes.container.restartCount")
                    .cloned()
                    .unwrap_or_default(),
                api::ContainerState::try_from(st.state).unwrap(),
                st.exit_code,
                st.reason
            );
        }
    }
}

/// The container statuses of the status endpoint's pod, compactly.
fn print_statuses(step: &str, p: &serde_json::Value) {
    println!(
        "-- {step}: GET /pods/kube-system/{}: phase {} uid {}\n{}",
        p["metadata"]["name"],
        p["status"]["phase"],
        p["metadata"]["uid"],
        serde_json::to_string_pretty(&p["status"]["containerStatuses"]).unwrap()
    );
}

async fn container_pid(w: &mut World, id: &str) -> i32 {
    let r =
        w.rt.container_status(api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: true,
        })
        .await
        .expect("ContainerStatus")
        .into_inner();
    let info: Value = serde_json::from_str(&r.info["info"]).expect("info JSON");
    info["pid"].as_i64().expect("pid") as i32
}

fn etcd_manifest(image: &str, data: &std::path::Path, extra_flag: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: etcd
  namespace: kube-system
  labels:
    component: etcd
    tier: control-plane
spec:
  hostNetwork: true
  priorityClassName: system-node-critical
  containers:
  - name: etcd
    image: {image}
    imagePullPolicy: IfNotPresent
    command:
    - etcd
    - --name=node1
    - --data-dir=/var/lib/etcd
    - --listen-client-urls=http://127.0.0.1:2379
    - --advertise-client-urls=http://127.0.0.1:2379
    - --listen-peer-urls=http://127.0.0.1:2380
    - --initial-advertise-peer-urls=http://127.0.0.1:2380
    - --initial-cluster=node1=http://127.0.0.1:2380
    - --listen-metrics-urls=http://127.0.0.1:2381{extra_flag}
    resources:
      requests:
        cpu: 100m
        memory: 100Mi
    startupProbe:
      httpGet: {{host: 127.0.0.1, path: /health, port: 2381}}
      periodSeconds: 1
      failureThreshold: 30
    livenessProbe:
      httpGet: {{host: 127.0.0.1, path: /health, port: 2381}}
      periodSeconds: 2
      failureThreshold: 8
    readinessProbe:
      httpGet: {{host: 127.0.0.1, path: /health, port: 2381}}
      periodSeconds: 1
    volumeMounts:
    - name: etcd-data
      mountPath: /var/lib/etcd
  volumes:
  - name: etcd-data
    hostPath:
      path: {data}
      type: DirectoryOrCreate
"#,
        data = data.display()
    )
}

/// `etcdctl` (the host's binary) against the pod, from the node's network.
fn etcdctl(w: &World, args: &[&str]) -> std::process::Output {
    w.node
        .command("/usr/bin/etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints=http://127.0.0.1:2379")
        .arg("--command-timeout=5s")
        .args(args)
        .output()
        .expect("run etcdctl")
}

fn ok_stdout(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "etcdctl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The kubelet's control-plane bootstrap: etcd from a manifest, with a
/// hostPath data dir, on the host network; killed, edited, deleted.
#[tokio::test]
async fn etcd_as_a_static_pod() {
    let mut w = World::new(&[], &config("")).await;
    w.registry.push(&nodelet_integration::etcd_image());
    let image = w.registry.image("test/etcd");
    let data = w.daemon.dir.path().join("etcd-data");
    let name = format!("etcd-{NODE}");
    let sp = StaticPods::of(&w.daemon);
    sp.write("etcd.yaml", &etcd_manifest(&image, &data, ""));

    let pod = sp
        .wait(&name, Duration::from_secs(60), "Running and Ready", |p| {
            p["status"]["phase"] == "Running" && condition(p, "Ready")
        })
        .await;
    println!(
        "GET /pods (etcd running):\n{}",
        serde_json::to_string_pretty(&pod).unwrap()
    );
    assert_eq!(pod["metadata"]["namespace"], "kube-system");
    assert_eq!(pod["spec"]["nodeName"], NODE);
    assert_eq!(pod["status"]["qosClass"], "Burstable");
    assert!(condition(&pod, "Initialized") && condition(&pod, "ContainersReady") && condition(&pod, "PodScheduled"));
    assert!(pod["status"]["hostIP"].is_string());
    assert!(pod["status"]["startTime"].is_string());
    let c = container(&pod, "etcd");
    assert_eq!(c["ready"], true);
    assert_eq!(c["started"], true);
    assert_eq!(c["restartCount"], 0);
    assert!(c["imageID"].as_str().unwrap().contains("sha256:"), "{c}");
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();

    // It answers its health endpoint and a put/get.
    let (code, _) = {
        let out = w
            .node
            .command("busybox")
            .args(["wget", "-q", "-O-", "http://127.0.0.1:2381/health"])
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    assert_eq!(code, Some(0));
    ok_stdout(etcdctl(&w, &["put", "bootstrap", "done"]));
    assert_eq!(
        ok_stdout(etcdctl(&w, &["get", "bootstrap", "--print-value-only"])),
        "done\n"
    );
    assert!(data.join("member").is_dir(), "etcd writes its data to the hostPath");

    // crictl's view: the pod and container by their kubelet names.
    let pods = sandboxes(&mut w, &name).await;
    assert_eq!(pods.len(), 1);
    let sandbox = pods[0].id.clone();
    assert_eq!(pods[0].labels["io.kubernetes.pod.namespace"], "kube-system");
    assert_eq!(pods[0].labels["io.kubernetes.pod.uid"], uid);
    assert_eq!(pods[0].labels["component"], "etcd");
    assert_eq!(pods[0].annotations["kubernetes.io/config.source"], "file");
    let cid = container_id(&pod, "etcd");
    let st = w.status(&cid).await;
    assert_eq!(st.labels["io.kubernetes.container.name"], "etcd");
    assert_eq!(st.labels["io.kubernetes.pod.name"], name);
    assert_eq!(st.annotations["io.kubernetes.container.restartCount"], "0");
    // Its log is where the kubelet puts it.
    let log = sp.log_dir().join(format!("kube-system_{name}_{uid}/etcd/0.log"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("ready to serve client requests")) {
        assert!(Instant::now() < deadline, "no etcd log at {}", log.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    crictl_view(&mut w, &name, "running").await;

    // Killed from outside: restarted, data intact.
    let pid = container_pid(&mut w, &cid).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let pod = sp
        .wait(&name, Duration::from_secs(60), "restarted after SIGKILL", |p| {
            restarts(p, "etcd") == 1 && running(p, "etcd") && condition(p, "Ready")
        })
        .await;
    print_statuses("after SIGKILL", &pod);
    crictl_view(&mut w, &name, "after SIGKILL").await;
    let c = container(&pod, "etcd");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 137, "{c}");
    assert_ne!(container_id(&pod, "etcd"), cid);
    assert_eq!(sandboxes(&mut w, &name).await[0].id, sandbox, "same sandbox");
    // The killed instance is kept (one per container name, as the
    // kubelet's container GC keeps it) for debugging its last run.
    let previous = w.status(&cid).await;
    assert_eq!(previous.state, api::ContainerState::ContainerExited as i32);
    assert_eq!(previous.exit_code, 137);
    assert_eq!(
        ok_stdout(etcdctl(&w, &["get", "bootstrap", "--print-value-only"])),
        "done\n"
    );
    let cid = container_id(&pod, "etcd");
    assert_eq!(
        w.status(&cid).await.annotations["io.kubernetes.container.restartCount"],
        "1"
    );

    // An edited manifest (a new flag) replaces the pod.
    sp.write(
        "etcd.yaml",
        &etcd_manifest(&image, &data, "\n    - --snapshot-count=5000"),
    );
    let pod = sp
        .wait(&name, Duration::from_secs(60), "replaced and Ready", |p| {
            p["metadata"]["uid"] != uid.as_str() && condition(p, "Ready")
        })
        .await;
    print_statuses("after the edit", &pod);
    crictl_view(&mut w, &name, "after the edit").await;
    let new_cid = container_id(&pod, "etcd");
    let pid = container_pid(&mut w, &new_cid).await;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains("--snapshot-count=5000"));
    let pods = sandboxes(&mut w, &name).await;
    assert_eq!(pods.len(), 1, "the old sandbox is gone: {pods:?}");
    assert_ne!(pods[0].id, sandbox);
    assert_eq!(
        container(&pod, "etcd")["restartCount"],
        0,
        "a new pod starts counting afresh"
    );
    assert_eq!(
        ok_stdout(etcdctl(&w, &["get", "bootstrap", "--print-value-only"])),
        "done\n"
    );

    // Deleting the file stops the pod and removes it.
    sp.remove("etcd.yaml");
    sp.wait_gone(&name, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sandboxes(&mut w, &name).await.is_empty() {
        assert!(Instant::now() < deadline, "sandbox not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crictl_view(&mut w, &name, "after deleting the file (nothing listed)").await;
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "etcd still runs"
    );
    assert!(
        !etcdctl(&w, &["get", "bootstrap"]).status.success(),
        "etcd still answers"
    );
    assert!(data.join("member").is_dir(), "a hostPath outlives its pod");
    let pods_root = w.daemon.root_dir.join("static-pods");
    assert_eq!(std::fs::read_dir(&pods_root).map(|d| d.count()).unwrap_or(0), 0);
    w.assert_no_leaks();
}

fn busybox_pod(image: &str, name: &str, body: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 2
{body}"#
    )
    .replace("IMAGE", image)
}

/// CrashLoopBackOff: the back-off doubles up to its cap, the status shows
/// the waiting reason, the last exit and the restart count; a daemon
/// restart neither resets the count nor restarts healthy pods.
#[tokio::test]
async fn crash_loop_back_off_and_restart_counts_survive_a_daemon_restart() {
    let mut w = World::new(&[], &config("")).await;
    let sp = StaticPods::of(&w.daemon);
    let image = w.busybox.clone();
    sp.write(
        "crash.yaml",
        &busybox_pod(
            &image,
            "crash",
            "  containers:\n  - name: app\n    image: IMAGE\n    command: [sh, -c, 'echo boom; exit 3']\n",
        ),
    );
    sp.write(
        "steady.yaml",
        &busybox_pod(
            &image,
            "steady",
            "  containers:\n  - name: app\n    image: IMAGE\n    command: [sleep, '100000']\n",
        ),
    );
    let crash = format!("crash-{NODE}");
    let steady = format!("steady-{NODE}");

    // Record each restart's time: the gaps follow 1s, 2s, 4s, 4s.
    let mut seen: Vec<(i64, Instant)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut backoff_status = None;
    while seen.len() < 5 {
        assert!(Instant::now() < deadline, "restarts seen: {seen:?}");
        if let Some(p) = sp.pod(&crash).await {
            let n = restarts(&p, "app");
            if n >= 0 && seen.last().is_none_or(|(last, _)| n > *last) {
                seen.push((n, Instant::now()));
            }
            let c = container(&p, "app");
            if c["state"]["waiting"]["reason"] == "CrashLoopBackOff" && n >= 2 {
                backoff_status = Some(p.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gaps: Vec<f64> = seen.windows(2).map(|p| (p[1].1 - p[0].1).as_secs_f64()).collect();
    println!(
        "restart counts {:?}, gaps {gaps:?}",
        seen.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    for (n, want) in [(0usize, 2.0), (1, 4.0), (2, 4.0)] {
        // gaps[0] is restart 1→2 (after a 2 s back-off), and so on.
        assert!(
            gaps[n + 1] >= want - 0.6,
            "gap {} was {:.2}s, back-off {want}s",
            n + 1,
            gaps[n + 1]
        );
        assert!(
            gaps[n + 1] <= want + 2.5,
            "gap {} was {:.2}s, back-off {want}s",
            n + 1,
            gaps[n + 1]
        );
    }
    // Four restarts later only the newest two instances exist.
    let crash_sandbox = sandboxes(&mut w, &crash).await[0].id.clone();
    let instances =
        w.rt.list_containers(api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                pod_sandbox_id: crash_sandbox,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!((1..=2).contains(&instances.len()), "{instances:?}");
    let p = backoff_status.expect("a CrashLoopBackOff status");
    println!(
        "GET /pods (crash looping):\n{}",
        serde_json::to_string_pretty(&p).unwrap()
    );
    let c = container(&p, "app");
    assert!(
        c["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .starts_with("back-off "),
        "{c}"
    );
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(c["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(c["ready"], false);
    assert!(!condition(&p, "Ready"));
    assert_eq!(p["status"]["phase"], "Running");

    // Daemon restart (kill -9): counts continue, the steady pod is adopted
    // with the same container.
    let before = sp.pod(&steady).await.unwrap();
    let steady_cid = container_id(&before, "app");
    let crash_count = restarts(&sp.pod(&crash).await.unwrap(), "app");
    w.daemon.kill9();
    w.daemon.spawn().await;
    let (rt, _) = w.daemon.clients().await;
    w.rt = rt;
    let sp = StaticPods::of(&w.daemon);
    let after = sp
        .wait(&steady, Duration::from_secs(20), "adopted", |p| running(p, "app"))
        .await;
    assert_eq!(
        container_id(&after, "app"),
        steady_cid,
        "the steady container was not restarted"
    );
    assert_eq!(restarts(&after, "app"), 0);
    let p = sp
        .wait(&crash, Duration::from_secs(30), "keeps counting", |p| {
            restarts(p, "app") > crash_count
        })
        .await;
    assert!(restarts(&p, "app") <= crash_count + 2, "{p}");
    assert_eq!(sandboxes(&mut w, &steady).await.len(), 1);
    assert_eq!(sandboxes(&mut w, &crash).await.len(), 1);
}

/// Init containers in order, then the app; readiness flips Ready; a
/// failing liveness probe restarts the container.
#[tokio::test]
async fn init_containers_readiness_and_liveness() {
    let mut w = World::new(&[], &config("")).await;
    let sp = StaticPods::of(&w.daemon);
    let image = w.busybox.clone();
    let body = r#"  initContainers:
  - name: first
    image: IMAGE
    command: [sh, -c, 'sleep 1; echo first >> /work/order']
    volumeMounts: [{name: work, mountPath: /work}]
  - name: second
    image: IMAGE
    command: [sh, -c, 'echo second >> /work/order']
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: app
    image: IMAGE
    command: [sh, -c, 'echo app >> /work/order; exec sleep 100000']
    volumeMounts: [{name: work, mountPath: /work}]
    env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: GREETING
      value: hello-$(POD_NAME)
    readinessProbe:
      exec: {command: [test, -f, /tmp/ready]}
      periodSeconds: 1
    livenessProbe:
      exec: {command: [sh, -c, 'test ! -f /tmp/die']}
      periodSeconds: 1
      failureThreshold: 2
  volumes:
  - name: work
    emptyDir: {}
"#;
    sp.write("probes.yaml", &busybox_pod(&image, "probes", body));
    let name = format!("probes-{NODE}");
    let p = sp
        .wait(&name, Duration::from_secs(30), "app running", |p| running(p, "app"))
        .await;
    assert!(condition(&p, "Initialized"));
    assert!(!condition(&p, "Ready"), "not ready before the probe passes");
    for init in ["first", "second"] {
        let c = container(&p, init);
        assert_eq!(c["state"]["terminated"]["exitCode"], 0, "{c}");
        assert_eq!(c["state"]["terminated"]["reason"], "Completed");
    }
    let app = container_id(&p, "app");
    assert_eq!(w.sh(&app, "cat /work/order").await, "first\nsecond\napp\n");
    assert_eq!(w.sh(&app, "echo $GREETING").await, format!("hello-{name}\n"));

    w.sh(&app, "touch /tmp/ready").await;
    sp.wait(&name, Duration::from_secs(10), "Ready", |p| condition(p, "Ready"))
        .await;
    w.sh(&app, "rm /tmp/ready").await;
    sp.wait(&name, Duration::from_secs(10), "not Ready", |p| !condition(p, "Ready"))
        .await;

    w.sh(&app, "touch /tmp/die").await;
    let p = sp
        .wait(&name, Duration::from_secs(30), "restarted by liveness", |p| {
            restarts(p, "app") == 1 && running(p, "app")
        })
        .await;
    let c = container(&p, "app");
    assert!(c["lastState"]["terminated"].is_object(), "{c}");
    assert_ne!(container_id(&p, "app"), app);
    // The init containers did not run again (the sandbox survived).
    let new_app = container_id(&p, "app");
    assert_eq!(w.sh(&new_app, "cat /work/order").await, "first\nsecond\napp\napp\n");
}

/// What a kubelet does to sandboxes it does not know, through the kubelet
/// socket, leaves the static pods alone; crictl on the main socket still
/// sees them.
#[tokio::test]
async fn static_pods_survive_an_external_kubelet() {
    let mut w = World::new(&[], &config("")).await;
    let sp = StaticPods::of(&w.daemon);
    let image = w.busybox.clone();
    sp.write(
        "keep.yaml",
        &busybox_pod(
            &image,
            "keep",
            "  containers:\n  - name: app\n    image: IMAGE\n    command: [sleep, '100000']\n",
        ),
    );
    let name = format!("keep-{NODE}");
    let p = sp
        .wait(&name, Duration::from_secs(30), "running", |p| running(p, "app"))
        .await;
    let cid = container_id(&p, "app");
    let static_sandbox = sandboxes(&mut w, &name).await[0].id.clone();

    // The kubelet's own pod, through its socket.
    let (mut kubelet, _) = clients(&sp.kubelet_socket()).await.expect("kubelet socket");
    let own = kubelet
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(w.pod("kubelet-pod")),
            ..Default::default()
        })
        .await
        .expect("RunPodSandbox via the kubelet socket")
        .into_inner()
        .pod_sandbox_id;

    // The kubelet's view: only its own pod.
    let listed = kubelet
        .list_pod_sandbox(api::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(
        listed.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        vec![own.as_str()]
    );
    let containers = kubelet
        .list_containers(api::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(containers.is_empty(), "{containers:?}");
    let err = kubelet
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: static_sandbox.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = kubelet
        .container_status(api::ContainerStatusRequest {
            container_id: cid.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = kubelet
        .exec_sync(api::ExecSyncRequest {
            container_id: cid.clone(),
            cmd: vec!["true".into()],
            timeout: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A kubelet cleaning up everything it did not create, including ids
    // it learnt elsewhere.
    for id in [own.clone(), static_sandbox.clone()] {
        kubelet
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .expect("StopPodSandbox");
        kubelet
            .remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .expect("RemovePodSandbox");
    }
    kubelet
        .stop_container(api::StopContainerRequest {
            container_id: cid.clone(),
            timeout: 0,
        })
        .await
        .expect("StopContainer");
    kubelet
        .remove_container(api::RemoveContainerRequest {
            container_id: cid.clone(),
        })
        .await
        .expect("RemoveContainer");
    // Nor can it make a pod of its own look static.
    let mut cfg = w.pod("sneaky");
    cfg.labels.insert("nodelet.io/static-pod".into(), "x.yaml".into());
    let err = kubelet
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(cfg),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("reserved"), "{}", err.message());

    // The kubelet's pod is gone; the static pod runs on, untouched.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all =
        w.rt.list_pod_sandbox(api::ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].id, static_sandbox);
    assert_eq!(all[0].state, api::PodSandboxState::SandboxReady as i32);
    let st = w.status(&cid).await;
    assert_eq!(st.state, api::ContainerState::ContainerRunning as i32);
    let p = sp.pod(&name).await.unwrap();
    assert_eq!(restarts(&p, "app"), 0);
    assert_eq!(container_id(&p, "app"), cid);
    // crictl exec still works on the main socket.
    assert_eq!(w.sh(&cid, "echo debug").await, "debug\n");
}

/// Bad manifests are reported with their file and reason; the other pods
/// keep running; fixing a file starts its pod.
#[tokio::test]
async fn bad_manifests_are_reported_and_fixing_one_starts_it() {
    let w = World::new(&[], &config("")).await;
    let sp = StaticPods::of(&w.daemon);
    let image = w.busybox.clone();
    let good = "  containers:\n  - name: app\n    image: IMAGE\n    command: [sleep, '100000']\n";
    sp.write("good.yaml", &busybox_pod(&image, "good", good));
    sp.write(
        "noimage.yaml",
        &busybox_pod(&image, "noimage", "  containers:\n  - name: app\n"),
    );
    sp.write(
        "dup.yaml",
        &busybox_pod(
            &image,
            "dup",
            "  containers:\n  - name: a\n    image: IMAGE\n  - name: a\n    image: IMAGE\n",
        ),
    );
    sp.write(
        "volume.yaml",
        &busybox_pod(
            &image,
            "volume",
            "  containers:\n  - name: a\n    image: IMAGE\n  volumes:\n  - name: v\n    nfs: {server: x, path: /}\n",
        ),
    );
    sp.write(
        "port.yaml",
        &busybox_pod(
            &image,
            "port",
            "  containers:\n  - name: a\n    image: IMAGE\n    ports: [{containerPort: 70000}]\n",
        ),
    );
    sp.write("broken.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n");
    sp.write(".hidden.yaml", "this is not even yaml: [");
    sp.write("notes.txt", "not a manifest");

    sp.wait(&format!("good-{NODE}"), Duration::from_secs(30), "running", |p| {
        running(p, "app")
    })
    .await;
    let (code, body) = sp.get("/manifests").await;
    assert_eq!(code, 200);
    println!("GET /manifests:\n{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let entries = v["manifests"].as_array().unwrap();
    let reason = |file: &str| -> String {
        entries
            .iter()
            .find(|e| e["file"].as_str().unwrap().ends_with(&format!("/{file}")))
            .map(|e| e["reason"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("{file} not reported: {body}"))
    };
    assert!(reason("noimage.yaml").contains("image"), "{}", reason("noimage.yaml"));
    assert!(reason("dup.yaml").contains("twice"), "{}", reason("dup.yaml"));
    assert!(reason("volume.yaml").contains("volume"), "{}", reason("volume.yaml"));
    assert!(reason("port.yaml").contains("70000"), "{}", reason("port.yaml"));
    assert!(reason("broken.yaml").contains("YAML"), "{}", reason("broken.yaml"));
    assert_eq!(reason("good.yaml"), "");
    assert_eq!(
        entries.len(),
        6,
        "hidden files and other extensions are ignored: {body}"
    );
    assert!(w.daemon.log().contains("dup.yaml"), "the daemon log names the file");
    assert_eq!(sp.pods().await.len(), 1);

    // Fixing a file starts its pod.
    sp.write("noimage.yaml", &busybox_pod(&image, "noimage", good));
    sp.wait(
        &format!("noimage-{NODE}"),
        Duration::from_secs(30),
        "running after the fix",
        |p| running(p, "app"),
    )
    .await;
    let (code, body) = sp.get("/pods/default/nope").await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = sp.get(&format!("/pods/default/good-{NODE}")).await;
    assert_eq!(code, 200);
    let p: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(p["kind"], "Pod");
    assert_eq!(sp.get("/healthz").await, (200, "ok".to_string()));
}
