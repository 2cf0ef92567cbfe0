//! Pods and containers end to end through the CRI socket: namespaces, the
//! infra process, overlay roots, logs, exec, stop/remove, failures, and the
//! daemon being killed while pods run.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nodelet_integration::cri::{api, spec};
use nodelet_integration::pods::World;
use tonic::Code;

fn sysctls(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn pod_namespaces_hostname_dns_sysctls_and_cleanup() {
    let mut w = World::new(&[], "").await;
    let mut pod = w.pod("web");
    pod.dns_config = Some(api::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    pod.linux = Some(api::LinuxPodSandboxConfig {
        sysctls: sysctls(&[
            ("net.ipv4.ip_unprivileged_port_start", "80"),
            ("kernel.shmmax", "65536"),
        ]),
        ..Default::default()
    });
    let id = w.run_pod(pod.clone()).await;
    let st = w.pod_status(&id).await;
    assert_eq!(st.state, api::PodSandboxState::SandboxReady as i32);
    assert_eq!(st.metadata.as_ref().unwrap().name, "web");
    assert!(st.created_at > 0);
    let infra = w.infra_pid(&id).await;
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{infra}/comm")).unwrap().trim(),
        "nodelet-infra"
    );

    let c = w.run(&id, &pod, w.container("app", "sleep 1000")).await;
    assert_eq!(w.sh(&c, "hostname").await, "web\n");
    assert_eq!(
        w.sh(&c, "cat /etc/resolv.conf").await,
        "nameserver 10.96.0.10\nsearch default.svc.cluster.local\noptions ndots:5\n"
    );
    assert_eq!(
        w.sh(&c, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start").await,
        "80\n"
    );
    assert_eq!(w.sh(&c, "cat /proc/sys/kernel/shmmax").await, "65536\n");
    // Its own network namespace: loopback up and the pod's eth0.
    assert_eq!(w.sh(&c, "ls /sys/class/net").await, "eth0\nlo\n");
    assert!(w.sh(&c, "cat /sys/class/net/lo/flags").await.contains("0x9"));
    // PID mode POD (the default): the infra is PID 1 of the pod.
    assert_eq!(w.sh(&c, "cat /proc/1/comm").await, "nodelet-infra\n");
    // The host's sysctl is untouched.
    assert_ne!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap(),
        "80\n"
    );
    // /etc/hostname and /etc/hosts come from the pod.
    assert_eq!(w.sh(&c, "cat /etc/hostname").await, "web\n");
    assert!(w.sh(&c, "cat /etc/hosts").await.contains("web"));
    // /dev/shm is the pod's 64 MiB tmpfs.
    assert!(w.sh(&c, "df -k /dev/shm | tail -1").await.contains("65536"));

    // ListPodSandbox filters.
    let other = w.run_pod(w.pod("other")).await;
    let list = |f: api::PodSandboxFilter| api::ListPodSandboxRequest { filter: Some(f) };
    let items =
        w.rt.list_pod_sandbox(list(Default::default()))
            .await
            .unwrap()
            .into_inner()
            .items;
    assert_eq!(items.len(), 2);
    let by_label =
        w.rt.list_pod_sandbox(list(api::PodSandboxFilter {
            label_selector: HashMap::from([("app".into(), "web".into())]),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].id, id);
    let by_prefix =
        w.rt.list_pod_sandbox(list(api::PodSandboxFilter {
            id: other[..12].to_string(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(by_prefix.len(), 1);

    w.stop_pod(&id).await;
    let st = w.pod_status(&id).await;
    assert_eq!(st.state, api::PodSandboxState::SandboxNotready as i32);
    assert_eq!(w.status(&c).await.state, api::ContainerState::ContainerExited as i32);
    assert!(
        std::fs::metadata(format!("/proc/{infra}")).is_err(),
        "infra gone after stop"
    );
    let notready =
        w.rt.list_pod_sandbox(list(api::PodSandboxFilter {
            state: Some(api::PodSandboxStateValue {
                state: api::PodSandboxState::SandboxNotready as i32,
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(notready.len(), 1);
    // Stop again: idempotent.
    w.stop_pod(&id).await;
    w.remove_pod(&id).await;
    w.remove_pod(&other).await;
    w.remove_pod(&id).await;
    let err =
        w.rt.pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    w.assert_no_leaks();
}

#[tokio::test]
async fn container_logs_exit_codes_and_status() {
    let mut w = World::new(&[], "").await;
    let pod = w.pod("logs");
    let id = w.run_pod(pod.clone()).await;
    let long = "x".repeat(40_000);
    let script = format!("echo out1; echo err1 >&2; printf '{long}\\n'; printf 'no-newline'; exit 3");
    let c = w.run(&id, &pod, w.container("app", &script)).await;
    let st = w.wait_exit(&c, Duration::from_secs(10)).await;
    assert_eq!(st.exit_code, 3);
    assert_eq!(st.reason, "Error");
    assert!(st.started_at > 0 && st.finished_at >= st.started_at);
    assert_eq!(st.image.as_ref().unwrap().image, w.busybox);
    assert!(st.image_ref.contains("@sha256:"), "{}", st.image_ref);
    assert!(st.image_id.starts_with("sha256:"));
    let log_path = w.logs_dir().join("logs/app/0.log");
    assert_eq!(st.log_path, log_path.display().to_string());
    // Give the infra a moment to drain the pipes after the exit.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    let records: Vec<(String, String, String)> = log
        .lines()
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            let ts = p.next().unwrap();
            assert!(ts.ends_with('Z') && ts.len() == 30, "timestamp {ts}");
            (
                p.next().unwrap().into(),
                p.next().unwrap().into(),
                p.next().unwrap_or("").into(),
            )
        })
        .collect();
    let stdout: Vec<_> = records.iter().filter(|r| r.0 == "stdout").collect();
    let stderr: Vec<_> = records.iter().filter(|r| r.0 == "stderr").collect();
    assert_eq!(stderr.len(), 1);
    assert_eq!((stderr[0].1.as_str(), stderr[0].2.as_str()), ("F", "err1"));
    assert_eq!((stdout[0].1.as_str(), stdout[0].2.as_str()), ("F", "out1"));
    // 40 000 bytes: two 16 KiB partial records and a full one.
    assert_eq!(stdout[1].1, "P");
    assert_eq!(stdout[1].2.len(), 16384);
    assert_eq!(stdout[2].1, "P");
    assert_eq!(stdout[3].1, "F");
    assert_eq!(stdout[1].2.len() + stdout[2].2.len() + stdout[3].2.len(), 40_000);
    assert_eq!((stdout[4].1.as_str(), stdout[4].2.as_str()), ("F", "no-newline"));

    // A clean exit.
    let ok = w.run(&id, &pod, w.container("ok", "exit 0")).await;
    let st = w.wait_exit(&ok, Duration::from_secs(10)).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"));

    // ListContainers filters.
    let list = |f: api::ContainerFilter| api::ListContainersRequest { filter: Some(f) };
    let all =
        w.rt.list_containers(list(Default::default()))
            .await
            .unwrap()
            .into_inner()
            .containers;
    assert_eq!(all.len(), 2);
    let by_label =
        w.rt.list_containers(list(api::ContainerFilter {
            label_selector: HashMap::from([("container".into(), "ok".into())]),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].id, ok);
    let by_pod =
        w.rt.list_containers(list(api::ContainerFilter {
            pod_sandbox_id: id[..10].to_string(),
            state: Some(api::ContainerStateValue {
                state: api::ContainerState::ContainerExited as i32,
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(by_pod.len(), 2);

    // Remove one container: its root is unmounted, its directory gone.
    w.rt.remove_container(api::RemoveContainerRequest {
        container_id: c.clone(),
    })
    .await
    .unwrap();
    w.rt.remove_container(api::RemoveContainerRequest {
        container_id: c.clone(),
    })
    .await
    .unwrap();
    let err =
        w.rt.container_status(api::ContainerStatusRequest {
            container_id: c.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(!w.daemon.root_dir.join("containers").join(&c).exists());
    assert!(log_path.exists(), "logs outlive the container (the kubelet owns them)");
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}

#[tokio::test]
async fn stop_with_grace_then_kill() {
    let mut w = World::new(&[], "").await;
    let pod = w.pod("stop");
    let id = w.run_pod(pod.clone()).await;
    // Exits on SIGTERM.
    let polite = w
        .run(
            &id,
            &pod,
            w.container(
                "polite",
                "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
            ),
        )
        .await;
    w.wait_log("stop/polite/0.log", "ready").await;
    let t = Instant::now();
    w.rt.stop_container(api::StopContainerRequest {
        container_id: polite.clone(),
        timeout: 30,
    })
    .await
    .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    let st = w.status(&polite).await;
    assert_eq!(
        (st.state, st.exit_code),
        (api::ContainerState::ContainerExited as i32, 0)
    );
    // Ignores SIGTERM: killed after the timeout.
    let stubborn = w
        .run(
            &id,
            &pod,
            w.container("stubborn", "trap '' TERM; echo ready; sleep 1000"),
        )
        .await;
    w.wait_log("stop/stubborn/0.log", "ready").await;
    let t = Instant::now();
    w.rt.stop_container(api::StopContainerRequest {
        container_id: stubborn.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "took {took:?}"
    );
    let st = w.status(&stubborn).await;
    assert_eq!(st.exit_code, 137, "SIGKILL");
    // Stopping a stopped container, or an unknown one, is fine.
    for c in [stubborn.as_str(), "0123456789abcdef"] {
        w.rt.stop_container(api::StopContainerRequest {
            container_id: c.to_string(),
            timeout: 1,
        })
        .await
        .unwrap();
    }
    // Removing a running container kills it.
    let running = w.run(&id, &pod, w.container("running", "sleep 1000")).await;
    w.rt.remove_container(api::RemoveContainerRequest {
        container_id: running.clone(),
    })
    .await
    .unwrap();
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}

#[tokio::test]
async fn exec_sync_output_exit_codes_and_timeouts() {
    let mut w = World::new(&[], "").await;
    let pod = w.pod("exec");
    let id = w.run_pod(pod.clone()).await;
    let c = w.run(&id, &pod, w.container("app", "sleep 1000")).await;
    let r = w.exec(&c, &["sh", "-c", "echo out; echo err >&2; exit 7"]).await;
    assert_eq!(r.stdout, b"out\n");
    assert_eq!(r.stderr, b"err\n");
    assert_eq!(r.exit_code, 7);
    // The exec runs as the container does: same root, env and namespaces.
    assert_eq!(
        w.sh(&c, "echo $PATH").await.trim(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(w.sh(&c, "hostname").await, "exec\n");
    // A timeout kills the whole tree the exec started.
    let t = Instant::now();
    let err =
        w.rt.exec_sync(api::ExecSyncRequest {
            container_id: c.clone(),
            cmd: vec!["sh".into(), "-c".into(), "sleep 300 & sleep 300".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ps = w.sh(&c, "ps -o pid,args").await;
    assert!(!ps.contains("sleep 300"), "exec children survived the timeout:\n{ps}");
    // A command that does not exist.
    let err =
        w.rt.exec_sync(api::ExecSyncRequest {
            container_id: c.clone(),
            cmd: vec!["/no/such/binary".into()],
            timeout: 5,
        })
        .await;
    match err {
        Ok(r) => assert_ne!(r.into_inner().exit_code, 0),
        Err(e) => assert!(e.message().contains("no/such/binary") || e.code() != Code::Ok),
    }
    // Exec into a container that is not running.
    let done = w.run(&id, &pod, w.container("done", "exit 0")).await;
    w.wait_exit(&done, Duration::from_secs(10)).await;
    let err =
        w.rt.exec_sync(api::ExecSyncRequest {
            container_id: done,
            cmd: vec!["true".into()],
            timeout: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}

#[tokio::test]
async fn users_security_context_and_read_only_root() {
    let mut w = World::new(&["test/nonroot"], "").await;
    let pod = w.pod("sec");
    let id = w.run_pod(pod.clone()).await;
    let mut nonroot = w.container("nonroot", "sleep 1000");
    nonroot.image = spec(&w.registry.image("test/nonroot"));
    let c = w.run(&id, &pod, nonroot).await;
    assert_eq!(w.sh(&c, "id -u; id -g").await, "1000\n1000\n");

    let mut as_user = w.container("asuser", "sleep 1000");
    as_user.linux = Some(api::LinuxContainerConfig {
        security_context: Some(api::LinuxContainerSecurityContext {
            run_as_user: Some(api::Int64Value { value: 1000 }),
            supplemental_groups: vec![3000],
            readonly_rootfs: true,
            capabilities: Some(api::Capability {
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            no_new_privs: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let c2 = w.run(&id, &pod, as_user).await;
    let ids = w.sh(&c2, "id").await;
    assert!(
        ids.contains("uid=1000") && ids.contains("3000") && ids.contains("2000"),
        "{ids}"
    );
    let r = w.exec(&c2, &["sh", "-c", "touch /newfile"]).await;
    assert_ne!(r.exit_code, 0, "read-only root");
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("Read-only"),
        "{:?}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(
        w.sh(&c2, "grep CapEff /proc/self/status")
            .await
            .split_whitespace()
            .nth(1),
        Some("0000000000000000")
    );
    assert_eq!(
        w.sh(&c2, "grep NoNewPrivs /proc/self/status")
            .await
            .split_whitespace()
            .nth(1),
        Some("1")
    );
    // The writable layer of a normal container takes writes.
    let c3 = w.run(&id, &pod, w.container("rw", "sleep 1000")).await;
    assert_eq!(w.sh(&c3, "echo hi > /data.txt; cat /data.txt").await, "hi\n");
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}

#[tokio::test]
async fn resources_cgroups_and_update() {
    let mut w = World::new(&[], "").await;
    let pod = w.pod("res");
    let id = w.run_pod(pod.clone()).await;
    let mut cfg = w.container("limited", "sleep 1000");
    cfg.linux = Some(api::LinuxContainerConfig {
        resources: Some(api::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            oom_score_adj: -900,
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = w.run(&id, &pod, cfg).await;
    let cgroup = w.daemon.cgroup_parent.clone();
    let mem = nodelet_integration::cleanup::cgroup_dirs(&cgroup)
        .into_iter()
        .flat_map(|d| glob_files(&d, &["memory.limit_in_bytes", "memory.max"]))
        .find(|p| p.to_string_lossy().contains(&c))
        .expect("container memory limit file");
    assert_eq!(std::fs::read_to_string(&mem).unwrap().trim(), (64u64 << 20).to_string());
    // The negative oom_score_adj was clamped, not refused.
    let adj: i64 = w.sh(&c, "cat /proc/self/oom_score_adj").await.trim().parse().unwrap();
    assert!(adj >= -900, "{adj}");
    // Update.
    w.rt.update_container_resources(api::UpdateContainerResourcesRequest {
        container_id: c.clone(),
        linux: Some(api::LinuxContainerResources {
            memory_limit_in_bytes: 128 << 20,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&mem).unwrap().trim(),
        (128u64 << 20).to_string()
    );
    let st = w.status(&c).await;
    assert_eq!(st.resources.unwrap().linux.unwrap().memory_limit_in_bytes, 128 << 20);
    // Invalid values are refused with the field named.
    let mut bad = w.container("bad", "true");
    bad.linux = Some(api::LinuxContainerConfig {
        resources: Some(api::LinuxContainerResources {
            cpu_shares: 1,
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = w.create(&id, &pod, bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("cpu_shares"), "{}", err.message());
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}

fn glob_files(dir: &std::path::Path, names: &[&str]) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for n in names {
        if dir.join(n).exists() {
            out.push(dir.join(n));
        }
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(glob_files(&e.path(), names));
        }
    }
    out
}

#[tokio::test]
async fn oom_kill_is_reported() {
    let mut w = World::new(&[], "").await;
    let pod = w.pod("oom");
    let id = w.run_pod(pod.clone()).await;
    let mut cfg = w.container("hog", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}");
    cfg.linux = Some(api::LinuxContainerConfig {
        resources: Some(api::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = w.run(&id, &pod, cfg).await;
    let st = w.wait_exit(&c, Duration::from_secs(30)).await;
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    assert_eq!(st.exit_code, 137);
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}

#[tokio::test]
async fn pid_namespace_modes_and_host_network() {
    let mut w = World::new(&[], "").await;
    // PID mode CONTAINER: each container is PID 1 of its own namespace.
    let mut pod = w.pod("pidc");
    pod.linux = Some(api::LinuxPodSandboxConfig {
        security_context: Some(api::LinuxSandboxSecurityContext {
            namespace_options: Some(api::NamespaceOption {
                pid: api::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = w.run_pod(pod.clone()).await;
    let mut cfg = w.container("own", "sleep 1000");
    cfg.linux = Some(api::LinuxContainerConfig {
        security_context: Some(api::LinuxContainerSecurityContext {
            namespace_options: Some(api::NamespaceOption {
                pid: api::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = w.run(&id, &pod, cfg).await;
    assert_eq!(w.sh(&c, "cat /proc/1/cmdline | tr '\\0' ' '").await, "sleep 1000 ");
    w.remove_pod(&id).await;

    // hostNetwork: the host's interfaces and host name.
    let mut pod = w.pod("hostnet");
    pod.linux = Some(api::LinuxPodSandboxConfig {
        security_context: Some(api::LinuxSandboxSecurityContext {
            namespace_options: Some(api::NamespaceOption {
                network: api::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = w.run_pod(pod.clone()).await;
    let c = w.run(&id, &pod, w.container("app", "sleep 1000")).await;
    // The node's (the daemon's namespace, the test's own).
    let host_ifaces: Vec<String> = w
        .node
        .ip(&["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect();
    let ifaces = w.sh(&c, "ls /sys/class/net").await;
    for i in &host_ifaces {
        assert!(ifaces.contains(i.as_str()), "{i} missing from {ifaces}");
    }
    let host_name = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(w.sh(&c, "hostname").await.trim(), host_name);
    // A network sysctl on the host network is refused.
    let mut bad = w.pod("badsysctl");
    bad.linux = Some(api::LinuxPodSandboxConfig {
        sysctls: sysctls(&[("net.ipv4.ip_forward", "1")]),
        security_context: pod.linux.as_ref().unwrap().security_context.clone(),
        ..Default::default()
    });
    let err =
        w.rt.run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(bad),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("net.ipv4.ip_forward"));
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}

#[tokio::test]
async fn bad_input_is_refused_and_leaves_nothing() {
    let mut w = World::new(&[], "").await;
    let pod = w.pod("bad");
    let id = w.run_pod(pod.clone()).await;
    // A duplicate pod name.
    let err =
        w.rt.run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // Unknown IDs.
    for e in [
        w.rt.start_container(api::StartContainerRequest {
            container_id: "nope".into(),
        })
        .await
        .unwrap_err(),
        w.rt.container_status(api::ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: false,
        })
        .await
        .unwrap_err(),
        w.rt.pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: "nope".into(),
            verbose: false,
        })
        .await
        .unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }
    let err = w.create("nope", &pod, w.container("x", "true")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // A missing image.
    let mut cfg = w.container("noimage", "true");
    cfg.image = spec("127.0.0.1:1/never/pulled:1");
    let err = w.create(&id, &pod, cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("never/pulled"), "{}", err.message());
    // An escaping log path.
    let mut cfg = w.container("escape", "true");
    cfg.log_path = "../../../../tmp/evil.log".into();
    let err = w.create(&id, &pod, cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("log_path"));
    // A mount source that does not exist.
    let mut cfg = w.container("mount", "true");
    cfg.mounts = vec![api::Mount {
        container_path: "/data".into(),
        host_path: "/nonexistent/nodelet/source".into(),
        ..Default::default()
    }];
    let err = w.create(&id, &pod, cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("host_path"), "{}", err.message());
    // A command that does not exist: start fails, nothing is left running.
    let mut cfg = w.container("nocmd", "true");
    cfg.command = vec!["/does/not/exist".into()];
    let c = w.create(&id, &pod, cfg).await.unwrap();
    let err = w.start(&c).await.unwrap_err();
    assert!(err.message().contains("/does/not/exist") || !err.message().is_empty());
    let st = w.status(&c).await;
    assert_eq!(st.state, api::ContainerState::ContainerExited as i32);
    assert_eq!(st.reason, "StartError");
    // A duplicate container name.
    let first = w.create(&id, &pod, w.container("dup", "sleep 1")).await.unwrap();
    let err = w.create(&id, &pod, w.container("dup", "sleep 1")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let _ = first;
    // Only the two created containers have directories: failed creates
    // left nothing.
    let dirs = std::fs::read_dir(w.daemon.root_dir.join("containers")).unwrap().count();
    assert_eq!(dirs, 2);
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}

#[tokio::test]
async fn reopen_log_after_rotation() {
    let mut w = World::new(&[], "").await;
    let pod = w.pod("rotate");
    let id = w.run_pod(pod.clone()).await;
    let c = w
        .run(
            &id,
            &pod,
            w.container(
                "ticker",
                "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done",
            ),
        )
        .await;
    let log = w.logs_dir().join("rotate/ticker/0.log");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    w.rt.reopen_container_log(api::ReopenContainerLogRequest {
        container_id: c.clone(),
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = std::fs::read_to_string(&log).expect("a new log file");
    assert!(new.lines().count() >= 2, "{new}");
    let old_len = std::fs::metadata(&rotated).unwrap().len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        std::fs::metadata(&rotated).unwrap().len(),
        old_len,
        "nothing more goes to the rotated file"
    );
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}

#[tokio::test]
async fn kill_9_with_20_pods_running() {
    const EXITS: usize = 19;
    let mut w = World::new(&[], "").await;
    let mut pods = Vec::new();
    for i in 0..20 {
        let pod = w.pod(&format!("p{i}"));
        let id = w.run_pod(pod.clone()).await;
        let script = if i == EXITS {
            // Exits while the daemon is down (started last, so that the
            // time the other pods take to start does not matter).
            "sleep 2; exit 42".to_string()
        } else {
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done".to_string()
        };
        let c = w.run(&id, &pod, w.container("app", &script)).await;
        pods.push((id, c));
    }
    let infra_before: Vec<i32> = {
        let mut v = Vec::new();
        for (id, _) in &pods {
            v.push(w.infra_pid(id).await);
        }
        v
    };
    w.daemon.kill9();
    let down_at = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.daemon.spawn().await;
    let (rt, images) = w.daemon.clients().await;
    w.rt = rt;
    w.images = images;

    let listed =
        w.rt.list_pod_sandbox(api::ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items;
    assert_eq!(listed.len(), 20, "every pod listed once");
    for (n, (id, c)) in pods.iter().enumerate() {
        let st = w.pod_status(id).await;
        assert_eq!(st.state, api::PodSandboxState::SandboxReady as i32, "pod {n}");
        assert_eq!(w.infra_pid(id).await, infra_before[n], "the same infra process");
        let cs = w.status(c).await;
        if n == EXITS {
            assert_eq!(cs.state, api::ContainerState::ContainerExited as i32);
            assert_eq!(cs.exit_code, 42);
            let finished = std::time::UNIX_EPOCH + Duration::from_nanos(cs.finished_at as u64);
            assert!(finished > down_at, "finished while the daemon was down");
        } else {
            assert_eq!(cs.state, api::ContainerState::ContainerRunning as i32, "container {n}");
        }
    }
    // Logs kept flowing while the daemon was down.
    let log = std::fs::read_to_string(w.logs_dir().join("p1/app/0.log")).unwrap();
    let down_secs = down_at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let during = log
        .lines()
        .filter(|l| {
            let ts = l.split(' ').next().unwrap_or("");
            // Compare at second granularity via the formatted prefix.
            ts > nodelet::infra::log::rfc3339_nano(std::time::UNIX_EPOCH + Duration::from_secs(down_secs + 1)).as_str()
                && ts
                    < nodelet::infra::log::rfc3339_nano(std::time::UNIX_EPOCH + Duration::from_secs(down_secs + 2))
                        .as_str()
        })
        .count();
    assert!(during >= 5, "log lines written while the daemon was down: {during}");
    assert!(nodelet_integration::cleanup::processes_named("nodelet-infra").len() >= 20);
    // A running container still answers exec after the restart.
    let c1 = pods[1].1.clone();
    assert_eq!(w.sh(&c1, "echo alive").await, "alive\n");
    for (id, _) in &pods {
        w.remove_pod(id).await;
    }
    w.assert_no_leaks();
}

#[tokio::test]
async fn tty_seccomp_apparmor_and_zombies() {
    let mut w = World::new(&[], "").await;
    let pod = w.pod("sec2");
    let id = w.run_pod(pod.clone()).await;

    // A tty container: its output reaches the log as stdout.
    let mut tty = w.container("tty", "echo hello-tty; sleep 1000");
    tty.tty = true;
    let t = w.run(&id, &pod, tty).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = std::fs::read_to_string(w.logs_dir().join("sec2/tty/0.log")).unwrap();
    assert!(log.contains(" stdout F hello-tty"), "{log}");
    assert_eq!(
        w.sh(&t, "[ -t 1 ] && echo tty || echo pipe").await,
        "pipe\n",
        "exec is not a tty"
    );

    // seccomp RuntimeDefault blocks creating a user namespace; unconfined
    // does not.
    let with = |profile: i32, localhost: &str| api::LinuxContainerConfig {
        security_context: Some(api::LinuxContainerSecurityContext {
            seccomp: Some(api::SecurityProfile {
                profile_type: profile,
                localhost_ref: localhost.to_string(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut cfg = w.container("default", "sleep 1000");
    cfg.linux = Some(with(api::security_profile::ProfileType::RuntimeDefault as i32, ""));
    let d = w.run(&id, &pod, cfg).await;
    let r = w.exec(&d, &["unshare", "-U", "true"]).await;
    assert_ne!(r.exit_code, 0, "RuntimeDefault must block unshare(CLONE_NEWUSER)");
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("not permitted"),
        "{:?}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(
        w.sh(&d, "grep Seccomp: /proc/self/status")
            .await
            .split_whitespace()
            .nth(1),
        Some("2")
    );
    let mut cfg = w.container("unconfined", "sleep 1000");
    cfg.linux = Some(with(api::security_profile::ProfileType::Unconfined as i32, ""));
    let u = w.run(&id, &pod, cfg).await;
    assert_eq!(
        w.sh(&u, "grep Seccomp: /proc/self/status")
            .await
            .split_whitespace()
            .nth(1),
        Some("0")
    );

    // A localhost profile: refuse mkdir.
    let profile = w.daemon.path("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .unwrap();
    let mut cfg = w.container("localhost", "sleep 1000");
    cfg.linux = Some(with(
        api::security_profile::ProfileType::Localhost as i32,
        profile.to_str().unwrap(),
    ));
    let l = w.run(&id, &pod, cfg).await;
    let r = w.exec(&l, &["mkdir", "/tmp/x"]).await;
    assert_ne!(r.exit_code, 0);
    assert!(String::from_utf8_lossy(&r.stderr).contains("not permitted"));
    assert_eq!(w.sh(&l, "touch /tmp/file && echo ok").await, "ok\n");

    // An AppArmor profile on a host without AppArmor.
    if !std::path::Path::new("/sys/kernel/security/apparmor").exists() {
        let mut cfg = w.container("apparmor", "true");
        cfg.linux = Some(api::LinuxContainerConfig {
            security_context: Some(api::LinuxContainerSecurityContext {
                apparmor: Some(api::SecurityProfile {
                    profile_type: api::security_profile::ProfileType::Localhost as i32,
                    localhost_ref: "my-profile".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = w.create(&id, &pod, cfg).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("AppArmor"), "{}", err.message());
    }

    // Orphans of a container are reaped by the pod's infra (PID 1 of the
    // pod), not left as zombies.
    let z = w
        .run(
            &id,
            &pod,
            w.container("orphans", "while true; do (sleep 0.05 &); sleep 0.1; done"),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let states = w.sh(&z, "ps -o stat,comm | grep -c '^Z' || true").await;
    assert_eq!(states.trim(), "0", "zombies in the pod");
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}

#[tokio::test]
async fn pod_cgroups_qos_and_pod_limits() {
    let mut w = World::new(&[], "").await;
    let parent = w.daemon.cgroup_parent.clone();
    let memory_dir = |path: &str| {
        nodelet_integration::cleanup::cgroup_dirs(path)
            .into_iter()
            .find(|d| d.join("memory.limit_in_bytes").exists() || d.join("memory.max").exists())
    };
    // No resources: best effort.
    let be = w.run_pod(w.pod("be")).await;
    let infra = w.infra_pid(&be).await;
    let be_cg = format!("{parent}/besteffort/pod{be}");
    let dir = memory_dir(&be_cg).expect("best-effort pod cgroup");
    assert!(std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap()
        .contains(&infra.to_string()));
    // Limits on both: guaranteed, directly under the parent, limits set
    // (resources plus overhead).
    let mut pod = w.pod("gu");
    pod.linux = Some(api::LinuxPodSandboxConfig {
        resources: Some(api::LinuxContainerResources {
            memory_limit_in_bytes: 128 << 20,
            cpu_quota: 100_000,
            cpu_period: 100_000,
            cpu_shares: 1024,
            ..Default::default()
        }),
        overhead: Some(api::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let gu = w.run_pod(pod.clone()).await;
    let dir = memory_dir(&format!("{parent}/pod{gu}")).expect("guaranteed pod cgroup");
    let limit = std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
        .or_else(|_| std::fs::read_to_string(dir.join("memory.max")))
        .unwrap();
    assert_eq!(limit.trim(), (144u64 << 20).to_string());
    // The container's cgroup nests in the pod's.
    let c = w.run(&gu, &pod, w.container("app", "sleep 1000")).await;
    assert!(memory_dir(&format!("{parent}/pod{gu}/{c}")).is_some());
    let inside = w
        .sh(
            &c,
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
        )
        .await;
    assert!(!inside.trim().is_empty());
    // An explicit cgroup parent (what a kubelet sends) is used as is.
    let mut pod = w.pod("explicit");
    let explicit = format!("{parent}/kubepods/burstable/podexplicit");
    pod.linux = Some(api::LinuxPodSandboxConfig {
        cgroup_parent: explicit.clone(),
        ..Default::default()
    });
    let ex = w.run_pod(pod).await;
    let infra = w.infra_pid(&ex).await;
    let dir = memory_dir(&explicit).expect("explicit cgroup");
    assert!(std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap()
        .contains(&infra.to_string()));
    for p in [be, gu, ex] {
        w.remove_pod(&p).await;
    }
    // The explicit parent's own directories belong to whoever named them
    // (the kubelet keeps its kubepods tree); nodelet removed only the pod's.
    assert!(memory_dir(&explicit).is_none(), "the pod's own cgroup is gone");
    nodelet_integration::cleanup::cgroup_tree(&format!("{parent}/kubepods"));
    w.assert_no_leaks();
}

#[tokio::test]
async fn image_volumes_and_stop_signal() {
    let mut w = World::new(&["test/volume"], "").await;
    let pod = w.pod("vol");
    let id = w.run_pod(pod.clone()).await;
    let mut cfg = w.container(
        "app",
        "trap 'echo got-usr1; exit 0' USR1; echo ready; while true; do sleep 0.1; done",
    );
    cfg.image = spec(&w.registry.image("test/volume"));
    let c = w.run(&id, &pod, cfg).await;
    w.sh(&c, "echo persisted > /data/file").await;
    w.wait_log("vol/app/0.log", "ready").await;
    let volumes = w.daemon.root_dir.join("containers").join(&c).join("volumes");
    let found: Vec<String> = nodelet_integration::daemon::list_tree(&volumes);
    assert!(
        found.iter().any(|p| p.ends_with("file")),
        "volume content on the host: {found:?}"
    );
    let upper = nodelet_integration::daemon::list_tree(&w.daemon.root_dir.join("containers").join(&c).join("upper"));
    assert!(
        !upper.iter().any(|p| p.contains("data/file")),
        "not in the writable layer: {upper:?}"
    );
    // The image's STOPSIGNAL (SIGUSR1) is what StopContainer sends first.
    let t = Instant::now();
    w.rt.stop_container(api::StopContainerRequest {
        container_id: c.clone(),
        timeout: 20,
    })
    .await
    .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(w.status(&c).await.exit_code, 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = std::fs::read_to_string(w.logs_dir().join("vol/app/0.log")).unwrap();
    assert!(log.contains("got-usr1"), "{log}");
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}

#[tokio::test]
async fn mounts_devices_privileged_and_host_namespaces() {
    let mut w = World::new(&[], "").await;
    // hostPID and hostIPC.
    let mut pod = w.pod("hostns");
    pod.linux = Some(api::LinuxPodSandboxConfig {
        security_context: Some(api::LinuxSandboxSecurityContext {
            namespace_options: Some(api::NamespaceOption {
                pid: api::NamespaceMode::Node as i32,
                ipc: api::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = w.run_pod(pod.clone()).await;
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("hello"), "from the host\n").unwrap();
    // A file system mounted below the bind-mounted directory: a plain
    // read-only bind leaves it writable, a recursive read-only one does not.
    std::fs::create_dir(host.path().join("sub")).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &host.path().join("sub"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _sub = Unmount(host.path().join("sub"));
    let mut cfg = w.container("app", "sleep 1000");
    cfg.linux = Some(api::LinuxContainerConfig {
        security_context: Some(api::LinuxContainerSecurityContext {
            namespace_options: Some(api::NamespaceOption {
                pid: api::NamespaceMode::Node as i32,
                ipc: api::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    cfg.mounts = vec![
        api::Mount {
            container_path: "/host-ro".into(),
            host_path: host.path().display().to_string(),
            readonly: true,
            ..Default::default()
        },
        api::Mount {
            container_path: "/host-rw".into(),
            host_path: host.path().display().to_string(),
            ..Default::default()
        },
        api::Mount {
            container_path: "/host-rro".into(),
            host_path: host.path().display().to_string(),
            readonly: true,
            recursive_read_only: true,
            ..Default::default()
        },
    ];
    cfg.devices = vec![api::Device {
        container_path: "/dev/myzero".into(),
        host_path: "/dev/zero".into(),
        permissions: "rwm".into(),
    }];
    let c = w.run(&id, &pod, cfg).await;
    // The host's PID namespace: the daemon is visible.
    let daemon_pid = w.daemon.pid().unwrap();
    assert_eq!(
        w.sh(&c, &format!("cat /proc/{daemon_pid}/comm")).await.trim(),
        "nodelet",
        "hostPID shows host processes"
    );
    // The host's IPC namespace.
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap();
    assert_eq!(
        w.sh(&c, "readlink /proc/self/ns/ipc").await.trim(),
        host_ipc.to_str().unwrap()
    );
    // Bind mounts, read-only and read-write.
    assert_eq!(w.sh(&c, "cat /host-ro/hello").await, "from the host\n");
    assert_ne!(w.exec(&c, &["sh", "-c", "echo x > /host-ro/new"]).await.exit_code, 0);
    w.sh(&c, "echo y > /host-rw/new").await;
    assert_eq!(std::fs::read_to_string(host.path().join("new")).unwrap(), "y\n");
    // Recursive read-only (the runtime handler says it supports it).
    let handlers =
        w.rt.status(api::StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner()
            .runtime_handlers;
    assert!(handlers[0].features.as_ref().unwrap().recursive_read_only_mounts);
    assert_eq!(w.sh(&c, "echo a > /host-ro/sub/a && cat /host-ro/sub/a").await, "a\n");
    let rro = w.exec(&c, &["sh", "-c", "echo b > /host-rro/sub/b"]).await;
    assert_ne!(rro.exit_code, 0, "a recursive read-only mount is read-only below too");
    assert!(String::from_utf8_lossy(&rro.stderr).contains("Read-only"), "{rro:?}");
    assert!(!host.path().join("sub/b").exists());
    // The device.
    assert_eq!(w.sh(&c, "head -c 4 /dev/myzero | wc -c").await.trim(), "4");
    // Unprivileged: no host devices, no CAP_SYS_ADMIN.
    assert_ne!(w.exec(&c, &["sh", "-c", "test -e /dev/kmsg"]).await.exit_code, 0);
    w.remove_pod(&id).await;

    // Privileged: every capability and the host's devices.
    let pod = w.pod("priv");
    let id = w.run_pod(pod.clone()).await;
    let mut cfg = w.container("priv", "sleep 1000");
    cfg.linux = Some(api::LinuxContainerConfig {
        security_context: Some(api::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = w.run(&id, &pod, cfg).await;
    assert_eq!(w.exec(&c, &["sh", "-c", "test -e /dev/kmsg"]).await.exit_code, 0);
    let caps = w.sh(&c, "grep CapEff /proc/self/status").await;
    let eff = u64::from_str_radix(caps.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_ne!(eff & (1 << 21), 0, "CAP_SYS_ADMIN: {caps}");
    assert_eq!(
        w.sh(&c, "grep Seccomp: /proc/self/status")
            .await
            .split_whitespace()
            .nth(1),
        Some("0")
    );
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}
