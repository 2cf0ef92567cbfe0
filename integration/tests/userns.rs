//! Pods with their own user namespace (`hostUsers: false`): root in the pod
//! is an unprivileged ID range on the host, the image and the kubelet's
//! volumes are idmapped, ranges are disjoint and reused, nothing leaks.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use nodelet_integration::cri::api;
use nodelet_integration::pods::World;
use tonic::Code;

const IDS: u32 = 65536;

fn userns_pod(w: &World, name: &str, mappings: Option<u32>) -> api::PodSandboxConfig {
    let mut pod = w.pod(name);
    let m = |start: u32| {
        vec![api::IdMapping {
            host_id: start,
            container_id: 0,
            length: IDS,
        }]
    };
    pod.linux = Some(api::LinuxPodSandboxConfig {
        security_context: Some(api::LinuxSandboxSecurityContext {
            namespace_options: Some(api::NamespaceOption {
                network: api::NamespaceMode::Pod as i32,
                ipc: api::NamespaceMode::Pod as i32,
                pid: api::NamespaceMode::Container as i32,
                userns_options: Some(api::UserNamespace {
                    mode: api::NamespaceMode::Pod as i32,
                    uids: mappings.map(m).unwrap_or_default(),
                    gids: mappings.map(m).unwrap_or_default(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    pod
}

/// The host PID of the one process whose command line is `needle` (a
/// container just started may not have exec'd it yet).
fn host_pid_of(needle: &str) -> i32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).replace('\0', " ").trim() == needle {
                return pid;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no process {needle:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `Uid:` of /proc/<pid>/status: real, effective, saved, fs.
fn host_uids(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect()
}

/// The host ID range the daemon recorded for a pod.
fn recorded_range(w: &World, pod: &str) -> u32 {
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.daemon.root_dir.join("pods").join(format!("{pod}.json"))).unwrap())
            .unwrap();
    rec["userns"]["start"].as_u64().expect("userns range in the pod record") as u32
}

fn bind(host: &std::path::Path, ctr: &str, mappings: Option<u32>) -> api::Mount {
    let m = |start: u32| {
        vec![api::IdMapping {
            host_id: start,
            container_id: 0,
            length: IDS,
        }]
    };
    api::Mount {
        container_path: ctr.into(),
        host_path: host.display().to_string(),
        uid_mappings: mappings.map(m).unwrap_or_default(),
        gid_mappings: mappings.map(m).unwrap_or_default(),
        ..Default::default()
    }
}

#[tokio::test]
async fn userns_pod_root_is_nobody_on_the_host() {
    let mut w = World::new(&[], "").await;
    let status =
        w.rt.status(api::StatusRequest { verbose: false })
            .await
            .expect("Status")
            .into_inner();
    assert!(
        status.runtime_handlers[0].features.as_ref().unwrap().user_namespaces,
        "Status must report user namespaces on this kernel"
    );

    // A root-only host file and a root-only file in a volume.
    let secret = w.daemon.path("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let vol = w.daemon.path("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("owned"), "mapped\n").unwrap();
    std::fs::set_permissions(vol.join("owned"), std::fs::Permissions::from_mode(0o600)).unwrap();

    // Pod A: nodelet picks the range.
    let pod_a = userns_pod(&w, "ua", None);
    let a = w.run_pod(pod_a.clone()).await;
    let start_a = recorded_range(&w, &a);
    assert!(start_a >= IDS && start_a % IDS == 0, "{start_a}");
    let mut ctr = w.container("app", "sleep 1001");
    ctr.mounts = vec![bind(&secret, "/secret", None)];
    let ca = w.run(&a, &pod_a, ctr).await;

    assert_eq!(w.sh(&ca, "id -u; id -g").await, "0\n0\n");
    let pid = host_pid_of("sleep 1001");
    assert_eq!(
        host_uids(pid),
        vec![start_a; 4],
        "root in the pod is the range's first ID on the host"
    );
    // The image is idmapped: its root-owned files are root's inside.
    assert_eq!(w.sh(&ca, "stat -c %u:%g /bin/busybox /").await, "0:0\n0:0\n");
    // The pod's files and /dev/shm are usable.
    assert!(w.sh(&ca, "cat /etc/hosts").await.contains("ua"));
    w.sh(&ca, "cat /etc/resolv.conf /etc/hostname >/dev/null; touch /dev/shm/x")
        .await;
    // The rootfs is writable, and what root writes is the range's first ID
    // in the upper layer on the host.
    w.sh(&ca, "mkdir -p /root && echo hi > /root/written && echo hi > /tmp/t")
        .await;
    assert_eq!(w.sh(&ca, "stat -c %u /root/written").await, "0\n");
    let upper = w.daemon.root_dir.join("containers").join(&ca).join("upper");
    assert_eq!(std::fs::metadata(upper.join("root/written")).unwrap().uid(), start_a);
    // A root-only host file is out of reach: it belongs to nobody here.
    let r = w.exec(&ca, &["cat", "/secret"]).await;
    assert_ne!(r.exit_code, 0, "root in a user namespace read a host root 0600 file");
    assert_eq!(w.sh(&ca, "stat -c %u /secret").await, "65534\n");
    // It cannot become more than root of its own namespace.
    let r = w.exec(&ca, &["sh", "-c", "echo 1 > /proc/sys/kernel/panic"]).await;
    assert_ne!(r.exit_code, 0);

    // Another pod while A runs: nodelet picks a different range.
    let f = w.run_pod(userns_pod(&w, "uf", None)).await;
    let start_f = recorded_range(&w, &f);
    assert!(
        start_f + IDS <= start_a || start_a + IDS <= start_f,
        "{start_a} {start_f}"
    );
    w.stop_pod(&f).await;
    w.remove_pod(&f).await;

    // Pod B: the kubelet's mappings, and an idmapped volume.
    let start_b = 300 * IDS;
    let pod_b = userns_pod(&w, "ub", Some(start_b));
    let b = w.run_pod(pod_b.clone()).await;
    assert_eq!(recorded_range(&w, &b), start_b);
    assert!(start_b + IDS <= start_a || start_a + IDS <= start_b, "ranges overlap");
    let mut ctr = w.container("app", "sleep 1002");
    ctr.mounts = vec![bind(&vol, "/vol", Some(start_b))];
    let cb = w.run(&b, &pod_b, ctr).await;
    let st = w.status(&cb).await;
    assert_eq!(st.state, api::ContainerState::ContainerRunning as i32, "{st:?}");
    assert_eq!(host_uids(host_pid_of("sleep 1002")), vec![start_b; 4]);
    assert_eq!(w.sh(&cb, "stat -c %u /vol/owned; cat /vol/owned").await, "0\nmapped\n");
    w.sh(&cb, "echo new > /vol/fromctr").await;
    assert_eq!(std::fs::metadata(vol.join("fromctr")).unwrap().uid(), 0);
    // A volume with another pod's mappings is refused.
    let mut ctr = w.container("bad", "true");
    ctr.mounts = vec![bind(&vol, "/vol", Some(start_a))];
    let e = w.create(&b, &pod_b, ctr).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    // The same mappings again overlap pod B's.
    let e =
        w.rt.run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(userns_pod(&w, "uc", Some(start_b + IDS / 2))),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    // After a crash of the daemon the ranges are still taken (rebuilt from
    // the pod records) and exec still lands in the pod's user namespace.
    w.daemon.kill9();
    w.daemon.spawn().await;
    let (rt, images) = w.daemon.clients().await;
    w.rt = rt;
    w.images = images;
    let e =
        w.rt.run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(userns_pod(&w, "ue", Some(start_a))),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert_eq!(w.sh(&ca, "id -u; stat -c %u /bin/busybox").await, "0\n0\n");
    // A new container in the running pod gets the same treatment.
    let c2 = w.run(&a, &pod_a, w.container("again", "sleep 1004")).await;
    assert_eq!(host_uids(host_pid_of("sleep 1004")), vec![start_a; 4]);
    assert_eq!(w.sh(&c2, "stat -c %u /").await, "0\n");

    for p in [&a, &b] {
        w.stop_pod(p).await;
        w.remove_pod(p).await;
    }
    let still: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| host_uids_opt(*p).is_some_and(|u| u[0] == start_a || u[0] == start_b))
        .collect();
    assert!(still.is_empty(), "processes of the pods' ranges left: {still:?}");
    w.assert_no_leaks();

    // The range is free again: the next pod gets it.
    let pod_c = userns_pod(&w, "ud", None);
    let c = w.run_pod(pod_c).await;
    assert_eq!(recorded_range(&w, &c), start_a);
    w.stop_pod(&c).await;
    w.remove_pod(&c).await;
    w.assert_no_leaks();
}

fn host_uids_opt(pid: i32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    Some(line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect())
}

#[tokio::test]
async fn userns_refuses_host_namespaces_and_a_shared_pid_namespace() {
    let mut w = World::new(&[], "").await;
    type Change = fn(&mut api::NamespaceOption);
    let cases: [(&str, Change); 4] = [
        ("network", |n| n.network = api::NamespaceMode::Node as i32),
        ("ipc", |n| n.ipc = api::NamespaceMode::Node as i32),
        ("pid", |n| n.pid = api::NamespaceMode::Node as i32),
        ("pid", |n| n.pid = api::NamespaceMode::Pod as i32),
    ];
    for (i, (field, change)) in cases.into_iter().enumerate() {
        let mut pod = userns_pod(&w, &format!("bad{i}"), None);
        change(
            pod.linux
                .as_mut()
                .unwrap()
                .security_context
                .as_mut()
                .unwrap()
                .namespace_options
                .as_mut()
                .unwrap(),
        );
        let e =
            w.rt.run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(pod),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains(field), "{e}");
    }
    // Bad kubelet mappings: below 65536, wrong length.
    for start in [0, 1000] {
        let e =
            w.rt.run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(userns_pod(&w, "low", Some(start))),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    }
    w.assert_no_leaks();
}
