//! Hostile workloads and hostile requests: what a container must not reach
//! (the host's mount namespace, the CRI socket, nodelet's directories,
//! other pods), what only a privileged container gets (host devices), what
//! the security knobs stop (setuid under `no_new_privs`, syscalls under
//! seccomp RuntimeDefault), resource abuse that must stay contained (fork
//! bomb, memory hog, log flood) and request fields that must not make
//! nodelet touch host paths it does not own.
//!
//! The pods run on the host network (`NamespaceMode::Node`) wherever the
//! network plays no part in the check (it keeps them cheap); the isolation
//! test uses pod networks (the CNI bridge) and a host-network control.

use std::time::{Duration, Instant};

use nodelet_integration::cri::{api, spec};
use nodelet_integration::hostile::{
    build_probe, cgroup_value, host_network_pod, pids_cgroup_of, pids_refused, ro_mount, Samples,
};
use nodelet_integration::pods::World;
use nodelet_integration::static_pods::StaticPods;
use tonic::Code;

fn security(f: impl FnOnce(&mut api::LinuxContainerSecurityContext)) -> Option<api::LinuxContainerConfig> {
    let mut sc = api::LinuxContainerSecurityContext::default();
    f(&mut sc);
    Some(api::LinuxContainerConfig {
        security_context: Some(sc),
        ..Default::default()
    })
}

/// Exit code and combined output of `sh -c script`.
async fn try_sh(w: &mut World, id: &str, script: &str) -> (i32, String) {
    let r = w.exec(id, &["sh", "-c", script]).await;
    (
        r.exit_code,
        format!(
            "{}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        ),
    )
}

/// The probe's answer (`ok` or an errno name) for `mode` in a container.
async fn probe(w: &mut World, id: &str, mode: &str) -> String {
    let r = w.exec(id, &["/probe/probe", mode]).await;
    String::from_utf8_lossy(&r.stdout).trim().to_string()
}

/// ContainerStatus and ExecSync latencies of `id` for `secs` seconds.
async fn measure(w: &mut World, id: &str, secs: u64) -> (Samples, Samples) {
    let (mut status, mut exec) = (Samples::default(), Samples::default());
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        let t = Instant::now();
        w.status(id).await;
        status.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(w.sh(id, "echo ok").await, "ok\n");
        exec.push(t.elapsed());
    }
    (status, exec)
}

/// Wait until the container is no longer `CREATED`.
async fn wait_started(w: &mut World, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.status(id).await.state == api::ContainerState::ContainerCreated as i32 {
        assert!(Instant::now() < deadline, "{id} never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_invalid(r: Result<impl std::fmt::Debug, tonic::Status>, what: &str, needle: &str) {
    match r {
        Ok(v) => panic!("{what}: accepted ({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}");
            assert!(
                s.message().contains(needle),
                "{what}: message {:?} lacks {needle:?}",
                s.message()
            );
        }
    }
}

/// A container sees neither the host's files (directly or through the
/// infra's `/proc/1/root`), nor the CRI socket, nor nodelet's directories,
/// nor another pod's processes or root filesystem; it cannot kill its
/// pod's infra or join the host's mount namespace.
#[tokio::test]
async fn containers_cannot_reach_the_host_the_daemon_or_other_pods() {
    let mut w = World::new(&[], "").await;
    let secret = w.daemon.path("host-secret");
    std::fs::write(&secret, "top secret\n").unwrap();

    // Pods on pod networks (the CNI bridge): their own network namespaces.
    let pod_a = w.pod("pod-a");
    let a_id = w.run_pod(pod_a.clone()).await;
    let pod_b = w.pod("pod-b");
    let b_id = w.run_pod(pod_b.clone()).await;
    let a = w.run(&a_id, &pod_a, w.container("a", "sleep 1000")).await;
    let b = w
        .run(
            &b_id,
            &pod_b,
            w.container("b", "echo b-secret > /b-secret; exec sleep 7777777"),
        )
        .await;
    wait_started(&mut w, &b).await;
    // B's file exists on the host, under nodelet's root directory.
    let b_root = w.daemon.root_dir.join("containers").join(&b).join("rootfs");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b_root.join("b-secret").exists() {
        assert!(Instant::now() < deadline, "{} never appeared", b_root.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let host_paths = [
        secret.clone(),
        w.daemon.socket.clone(),
        w.daemon.root_dir.clone(),
        w.daemon.state_dir.clone(),
        b_root.join("b-secret"),
        w.daemon.log_path.clone(),
    ];
    for p in &host_paths {
        let (code, out) = try_sh(&mut w, &a, &format!("ls -d {} || cat {}", p.display(), p.display())).await;
        assert_ne!(code, 0, "{} is visible in the container: {out}", p.display());
    }

    // PID 1 of the pod is the infra, which lives in the host's mount
    // namespace: its root and cwd must not be a way out.
    assert_eq!(w.sh(&a, "cat /proc/1/comm").await, "nodelet-infra\n");
    for p in ["/proc/1/root/", "/proc/1/cwd/"] {
        let (code, out) = try_sh(&mut w, &a, &format!("ls {p}")).await;
        assert_ne!(code, 0, "{p} lists the host: {out}");
        assert!(out.contains("Permission denied"), "{p}: {out}");
    }
    let (code, out) = try_sh(&mut w, &a, &format!("cat /proc/1/root{}", secret.display())).await;
    assert_ne!(code, 0, "host file read through /proc/1/root: {out}");
    // Joining the host's mount namespace through the infra.
    let (code, out) = try_sh(&mut w, &a, "nsenter -t 1 -m -- cat /proc/self/mountinfo").await;
    assert_ne!(code, 0, "nsenter into the infra's mount namespace worked: {out}");
    // The infra ignores signals from inside its PID namespace.
    let infra_a = w.infra_pid(&a_id).await;
    for sig in ["KILL", "TERM", "INT", "HUP", "STOP", "QUIT", "USR1"] {
        let _ = try_sh(&mut w, &a, &format!("kill -{sig} 1")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stat = std::fs::read_to_string(format!("/proc/{infra_a}/stat"))
            .unwrap_or_else(|_| panic!("SIG{sig} from the container killed its infra"));
        let state = stat.rsplit(')').next().unwrap_or("").split_whitespace().next();
        assert!(matches!(state, Some("S" | "R")), "infra after SIG{sig}: {stat}");
        assert_eq!(
            w.pod_status(&a_id).await.state,
            api::PodSandboxState::SandboxReady as i32,
            "after SIG{sig}"
        );
    }
    // The infra still serves the pod (ExecSync goes through it).
    assert_eq!(w.sh(&a, "echo still").await, "still\n");

    // Pod A sees none of pod B's processes.
    let (_, procs) = try_sh(&mut w, &a, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '").await;
    assert!(!procs.contains("7777777"), "pod A sees pod B's process: {procs}");
    assert!(procs.contains("sleep 1000"), "pod A's own process list: {procs}");
    // Nor B's root through its mountinfo-derived paths.
    let (code, out) = try_sh(&mut w, &a, "find / -xdev -name b-secret 2>/dev/null | head -1").await;
    assert!(code == 0 && out.trim().is_empty(), "pod A found B's file: {out}");
    // The daemon's streaming server listens on the node's loopback: a
    // container on a pod network cannot connect to it, neither on that
    // address (its own loopback) nor through the bridge's gateway; one on
    // the host network can (the control), where only the single-use
    // tokens protect it.
    let url =
        w.rt.exec(api::ExecRequest {
            container_id: a.clone(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .expect("Exec")
        .into_inner()
        .url;
    let hostport = url.split('/').nth(2).expect("host:port in the URL").to_string();
    let (ip, port) = hostport.rsplit_once(':').unwrap();
    let gw = w
        .sh(&a, "ip route | awk '/default/ {print $3}'")
        .await
        .trim()
        .to_string();
    assert!(!gw.is_empty(), "pod A has a default route");
    for target in [ip, gw.as_str()] {
        let (_, out) = try_sh(&mut w, &a, &format!("echo | nc -w 2 {target} {port}; echo rc=$?")).await;
        assert!(
            !out.contains("rc=0"),
            "pod A reached the streaming server at {target}:{port}: {out}"
        );
    }
    let host_pod = host_network_pod(&w, "pod-host");
    let h_id = w.run_pod(host_pod.clone()).await;
    let h = w.run(&h_id, &host_pod, w.container("h", "sleep 1000")).await;
    let (_, out) = try_sh(&mut w, &h, &format!("echo | nc -w 2 {ip} {port}; echo rc=$?")).await;
    assert!(
        out.contains("rc=0"),
        "the host-network control could not connect: {out}"
    );
    w.remove_pod(&h_id).await;

    // Nothing of nodelet's socket under /run in the container either.
    let (_, out) = try_sh(&mut w, &a, "find / -type s 2>/dev/null | grep -v '^/proc' | head").await;
    assert!(!out.contains("nodelet.sock"), "{out}");

    w.remove_pod(&a_id).await;
    w.remove_pod(&b_id).await;
    w.assert_no_leaks();
}

/// A block device on the host that root can open here (this VM refuses
/// even the host's root an open of its disk, so a loop device is the
/// usual pick): its name and `major:minor`.
fn host_block_device() -> (String, String) {
    let mut names: Vec<_> = std::fs::read_dir("/sys/block")
        .expect("/sys/block")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let name = names
        .into_iter()
        .find(|n| std::fs::File::open(format!("/dev/{n}")).is_ok())
        .expect("a block device on the host that root can open");
    let dev = std::fs::read_to_string(format!("/sys/block/{name}/dev")).unwrap();
    (name, dev.trim().to_string())
}

/// An unprivileged container has only the default device nodes and cannot
/// open a block device even after `mknod`ing it; a privileged one gets the
/// host's devices.
#[tokio::test]
async fn only_a_privileged_container_gets_host_devices() {
    let mut w = World::new(&[], "").await;
    let (disk, majmin) = host_block_device();
    let (major, minor) = majmin.split_once(':').unwrap();
    let mut pod = host_network_pod(&w, "devs");
    pod.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .privileged = true;
    let id = w.run_pod(pod.clone()).await;

    let plain = w.run(&id, &pod, w.container("plain", "sleep 1000")).await;
    let devs = w.sh(&plain, "ls /dev | sort | tr '\\n' ' '").await;
    let expected = "fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero ";
    assert_eq!(devs, expected, "unprivileged /dev");
    // MKNOD is in the default capabilities and the device cgroup allows
    // `m`, so the node can be made, but not opened.
    let (code, out) = try_sh(
        &mut w,
        &plain,
        &format!("test -e /dev/{disk} && echo VISIBLE; mknod /tmp/disk b {major} {minor} && dd if=/tmp/disk bs=512 count=1 of=/dev/null"),
    )
    .await;
    assert_ne!(code, 0, "opened the host's /dev/{disk}: {out}");
    assert!(!out.contains("VISIBLE"), "/dev/{disk} is in an unprivileged container");
    assert!(out.contains("Operation not permitted"), "{out}");
    let (code, out) = try_sh(&mut w, &plain, "mknod /tmp/mem c 1 1 && head -c 16 /tmp/mem >/dev/null").await;
    assert_ne!(code, 0, "opened /dev/mem: {out}");

    let mut cfg = w.container("priv", "sleep 1000");
    cfg.linux = security(|s| s.privileged = true);
    let privileged = w.run(&id, &pod, cfg).await;
    let (code, out) = try_sh(
        &mut w,
        &privileged,
        &format!("dd if=/dev/{disk} bs=512 count=1 of=/dev/null"),
    )
    .await;
    assert!(
        code == 0 && out.contains("records in"),
        "a privileged container opens /dev/{disk}: {out}"
    );
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}

/// A setuid-root binary raises a uid-1000 process to euid 0, unless the
/// container runs with `no_new_privs`.
#[tokio::test]
async fn no_new_privs_stops_a_setuid_binary() {
    let mut w = World::new(&[], "").await;
    let dir = w.daemon.path("suid");
    let probe = build_probe(&dir);
    std::os::unix::fs::chown(&probe, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&probe, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    let pod = host_network_pod(&w, "suid");
    let id = w.run_pod(pod.clone()).await;
    let as_user = |w: &World, name: &str, nnp: bool| {
        let mut c = w.container(name, "sleep 1000");
        c.mounts = vec![ro_mount(&dir, "/probe")];
        c.linux = security(|s| {
            s.run_as_user = Some(api::Int64Value { value: 1000 });
            s.no_new_privs = nnp;
        });
        c
    };
    let cfg = as_user(&w, "setuid", false);
    let free = w.run(&id, &pod, cfg).await;
    let cfg = as_user(&w, "nnp", true);
    let nnp = w.run(&id, &pod, cfg).await;
    // Without no_new_privs the setuid bit works (the check can fail).
    assert_eq!(w.sh(&free, "/probe/probe ids").await, "1000 0\n");
    assert_eq!(w.sh(&nnp, "/probe/probe ids").await, "1000 1000\n");
    assert_eq!(
        w.sh(&nnp, "grep NoNewPrivs /proc/self/status").await,
        "NoNewPrivs:\t1\n"
    );
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}

/// RuntimeDefault denies what Docker's default profile denies to an
/// unprivileged container: new user and mount namespaces, the kernel
/// keyring, mount. Unconfined is the control: the same calls that seccomp
/// must block work there.
#[tokio::test]
async fn runtime_default_seccomp_blocks_what_dockers_profile_blocks() {
    let mut w = World::new(&[], "").await;
    let dir = w.daemon.path("probe");
    build_probe(&dir);
    let pod = host_network_pod(&w, "seccomp");
    let id = w.run_pod(pod.clone()).await;
    let with = |w: &World, name: &str, profile: api::security_profile::ProfileType| {
        let mut c = w.container(name, "sleep 1000");
        c.mounts = vec![ro_mount(&dir, "/probe")];
        c.linux = security(|s| {
            s.seccomp = Some(api::SecurityProfile {
                profile_type: profile as i32,
                localhost_ref: String::new(),
            })
        });
        c
    };
    let cfg = with(&w, "default", api::security_profile::ProfileType::RuntimeDefault);
    let confined = w.run(&id, &pod, cfg).await;
    let cfg = with(&w, "unconfined", api::security_profile::ProfileType::Unconfined);
    let free = w.run(&id, &pod, cfg).await;
    for mode in ["userns", "keyctl", "add_key"] {
        assert_eq!(probe(&mut w, &free, mode).await, "ok", "{mode} unconfined");
        assert_eq!(
            probe(&mut w, &confined, mode).await,
            "EPERM",
            "{mode} under RuntimeDefault"
        );
    }
    // Without CAP_SYS_ADMIN these fail anyway; RuntimeDefault must too.
    for mode in ["mountns", "mount"] {
        assert_eq!(
            probe(&mut w, &confined, mode).await,
            "EPERM",
            "{mode} under RuntimeDefault"
        );
    }
    let (code, out) = try_sh(&mut w, &confined, "unshare -U true").await;
    assert_ne!(code, 0, "{out}");
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}

/// A fork bomb stops at the pod's pids limit; the daemon keeps answering
/// promptly, for another pod too, and tears the bomb down.
#[tokio::test]
async fn a_fork_bomb_stops_at_the_pod_pids_limit() {
    const LIMIT: u64 = 64;
    let mut w = World::new(&[], &format!("[cgroups]\npod_pids_limit = {LIMIT}\n")).await;
    let calm_pod = host_network_pod(&w, "calm");
    let calm_id = w.run_pod(calm_pod.clone()).await;
    let calm = w.run(&calm_id, &calm_pod, w.container("calm", "sleep 1000")).await;
    let bomb_pod = host_network_pod(&w, "bomb");
    let bomb_id = w.run_pod(bomb_pod.clone()).await;
    let infra = w.infra_pid(&bomb_id).await;
    let cg = pids_cgroup_of(infra);
    assert_eq!(cgroup_value(&cg, "pids.max"), LIMIT, "{}", cg.display());

    let mut baseline = Samples::default();
    for _ in 0..10 {
        let t = Instant::now();
        w.status(&calm).await;
        baseline.push(t.elapsed());
    }
    // Half a core at most, so the bomb does not starve the 2-core machine.
    // A shell's fork bomb gives up at the first refused fork (ash exits
    // on "can't fork"); the probe's keeps retrying, in every process.
    let dir = w.daemon.path("probe");
    build_probe(&dir);
    let mut cfg = w.container("bomb", "exec /probe/probe forkbomb");
    cfg.mounts = vec![ro_mount(&dir, "/probe")];
    cfg.linux = Some(api::LinuxContainerConfig {
        resources: Some(api::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            ..Default::default()
        }),
        ..Default::default()
    });
    let bomb = w.run(&bomb_id, &bomb_pod, cfg).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids_refused(&cg) == 0 {
        assert!(
            Instant::now() < deadline,
            "the bomb never hit the limit: {} pids",
            cgroup_value(&cg, "pids.current")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (mut version, mut status, mut list, mut exec) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let t = Instant::now();
        w.rt.version(api::VersionRequest::default()).await.expect("Version");
        version.push(t.elapsed());
        let t = Instant::now();
        w.status(&calm).await;
        status.push(t.elapsed());
        let t = Instant::now();
        w.rt.list_containers(api::ListContainersRequest::default())
            .await
            .expect("ListContainers");
        list.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(w.sh(&calm, "echo ok").await, "ok\n");
        exec.push(t.elapsed());
        peak = peak.max(cgroup_value(&cg, "pids.current"));
        assert!(cgroup_value(&cg, "pids.current") <= LIMIT);
    }
    let refused = pids_refused(&cg);
    println!("fork bomb: pod pids peak {peak}/{LIMIT}, forks refused {refused}");
    println!("  ContainerStatus before the bomb: {}", baseline.summary());
    println!("  Version during:          {}", version.summary());
    println!("  ContainerStatus during:  {}", status.summary());
    println!("  ListContainers during:   {}", list.summary());
    println!("  ExecSync (calm) during:  {}", exec.summary());
    assert!(peak >= LIMIT - 8, "the bomb only reached {peak} pids");
    for (what, s, bound) in [
        ("Version", &version, 1000.0),
        ("ContainerStatus", &status, 1000.0),
        ("ListContainers", &list, 1000.0),
        ("ExecSync", &exec, 5000.0),
    ] {
        assert!(s.max() < bound, "{what} during the bomb: {}", s.summary());
    }
    // The bombed pod's own infra cannot fork a helper: ExecSync there
    // fails (or times out), promptly, and says so.
    let t = Instant::now();
    let r =
        w.rt.exec_sync(api::ExecSyncRequest {
            container_id: bomb.clone(),
            cmd: vec!["true".into()],
            timeout: 5,
        })
        .await;
    let took = t.elapsed();
    println!(
        "  ExecSync into the bombed container: {took:?}: {:?}",
        r.as_ref().map(|r| r.get_ref().exit_code)
    );
    assert!(took < Duration::from_secs(10), "ExecSync into the bomb took {took:?}");
    // The bomb's own pod is torn down promptly.
    let t = Instant::now();
    w.rt.stop_container(api::StopContainerRequest {
        container_id: bomb,
        timeout: 1,
    })
    .await
    .expect("StopContainer");
    w.remove_pod(&bomb_id).await;
    println!("  stop + remove of the bombed pod: {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(20));
    w.remove_pod(&calm_id).await;
    w.assert_no_leaks();
}

/// A container that fills its memory limit is OOM-killed and reported
/// `OOMKilled` with 137; its neighbour in the pod keeps running.
#[tokio::test]
async fn a_memory_hog_is_oom_killed_alone() {
    let mut w = World::new(&[], "").await;
    let pod = host_network_pod(&w, "hog");
    let id = w.run_pod(pod.clone()).await;
    let calm = w.run(&id, &pod, w.container("calm", "sleep 1000")).await;
    let mut cfg = w.container("hog", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}");
    cfg.linux = Some(api::LinuxContainerConfig {
        resources: Some(api::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hog = w.run(&id, &pod, cfg).await;
    let st = w.wait_exit(&hog, Duration::from_secs(30)).await;
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    assert_eq!(st.exit_code, 137);
    assert_eq!(
        w.status(&calm).await.state,
        api::ContainerState::ContainerRunning as i32
    );
    assert_eq!(w.sh(&calm, "echo alive").await, "alive\n");
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}

/// A container writing its log as fast as it can does not slow another
/// pod's RPCs.
#[tokio::test]
async fn a_log_flood_does_not_slow_other_pods() {
    let mut w = World::new(&[], "").await;
    let calm_pod = host_network_pod(&w, "calm");
    let calm_id = w.run_pod(calm_pod.clone()).await;
    let calm = w.run(&calm_id, &calm_pod, w.container("calm", "sleep 1000")).await;
    let flood_pod = host_network_pod(&w, "flood");
    let flood_id = w.run_pod(flood_pod.clone()).await;

    let (status0, exec0) = measure(&mut w, &calm, 2).await;
    let flood = w
        .run(
            &flood_id,
            &flood_pod,
            w.container("flood", "yes 'the quick brown fox jumps over the lazy dog 0123456789'"),
        )
        .await;
    let log = w.logs_dir().join("flood/flood/0.log");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let size0 = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let t0 = Instant::now();
    let (status1, exec1) = measure(&mut w, &calm, 4).await;
    let written = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) - size0;
    let rate = written as f64 / t0.elapsed().as_secs_f64() / (1 << 20) as f64;
    w.rt.stop_container(api::StopContainerRequest {
        container_id: flood,
        timeout: 0,
    })
    .await
    .expect("StopContainer");
    println!("log flood: {rate:.1} MiB/s into the flooder's log");
    println!("  calm ContainerStatus before: {}", status0.summary());
    println!("  calm ContainerStatus during: {}", status1.summary());
    println!("  calm ExecSync before:        {}", exec0.summary());
    println!("  calm ExecSync during:        {}", exec1.summary());
    assert!(rate > 1.0, "the flood wrote only {rate:.2} MiB/s");
    assert!(
        status1.max() < 1000.0,
        "ContainerStatus during the flood: {}",
        status1.summary()
    );
    assert!(
        status1.median() < status0.median().max(1.0) * 20.0,
        "ContainerStatus slowed down: {} vs {}",
        status1.summary(),
        status0.summary()
    );
    assert!(exec1.max() < 5000.0, "ExecSync during the flood: {}", exec1.summary());
    w.remove_pod(&flood_id).await;
    w.remove_pod(&calm_id).await;
    std::fs::remove_file(&log).ok();
    w.assert_no_leaks();
}

/// Names, log paths, mount paths and image references that try to leave
/// where nodelet writes are refused with InvalidArgument and leave nothing
/// on the host; a container path through a symlink in a volume stays in
/// the container.
#[tokio::test]
async fn path_escapes_are_refused_and_touch_nothing() {
    let mut w = World::new(&[], "").await;
    let sentinel = w.daemon.path("sentinel");
    std::fs::create_dir_all(&sentinel).unwrap();
    let sentinel_rel = format!("../{}", "sentinel"); // logs/<pod>/../../sentinel
    let rt_list = |dir: &std::path::Path| nodelet_integration::daemon::list_tree(dir);

    // Pod fields.
    let run = |w: &mut World, cfg: api::PodSandboxConfig| {
        let mut rt = w.rt.clone();
        async move {
            rt.run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await
            .map(|r| r.into_inner().pod_sandbox_id)
        }
    };
    let mut bad = host_network_pod(&w, "esc");
    bad.log_directory = format!("{}/../{sentinel_rel}/pod", w.logs_dir().display());
    assert_invalid(run(&mut w, bad).await, "log_directory with ..", "log_directory");
    let mut bad = host_network_pod(&w, "esc");
    bad.log_directory = "relative/logs".into();
    assert_invalid(run(&mut w, bad).await, "relative log_directory", "log_directory");
    for (field, value) in [
        ("name", "a/b"),
        ("namespace", ".."),
        ("uid", "../../sentinel"),
        ("name", "."),
    ] {
        let mut bad = host_network_pod(&w, "esc");
        let m = bad.metadata.as_mut().unwrap();
        match field {
            "name" => m.name = value.into(),
            "namespace" => m.namespace = value.into(),
            _ => m.uid = value.into(),
        }
        assert_invalid(run(&mut w, bad).await, &format!("pod {field} {value:?}"), field);
    }

    // Container fields.
    let pod = host_network_pod(&w, "esc");
    let id = w.run_pod(pod.clone()).await;
    for log_path in ["../../sentinel/x.log", "/etc/x.log", "a/../../../x.log"] {
        let mut c = w.container("c", "true");
        c.log_path = log_path.into();
        assert_invalid(
            w.create(&id, &pod, c).await,
            &format!("log_path {log_path}"),
            "log_path",
        );
    }
    for name in ["a/b", "..", "."] {
        let mut c = w.container(name, "true");
        c.log_path = "x.log".into();
        assert_invalid(
            w.create(&id, &pod, c).await,
            &format!("container name {name:?}"),
            "metadata.name",
        );
    }
    let mut c = w.container("m", "true");
    c.mounts = vec![api::Mount {
        container_path: "/../../sentinel/x".into(),
        host_path: sentinel.display().to_string(),
        ..Default::default()
    }];
    assert_invalid(w.create(&id, &pod, c).await, "container_path with ..", "container_path");
    let mut c = w.container("m2", "true");
    c.mounts = vec![api::Mount {
        container_path: "relative/x".into(),
        host_path: sentinel.display().to_string(),
        ..Default::default()
    }];
    assert_invalid(
        w.create(&id, &pod, c).await,
        "relative container_path",
        "container_path",
    );

    let mut c = w.container("dev", "true");
    c.devices = vec![api::Device {
        container_path: "/dev/../../sentinel/null".into(),
        host_path: "/dev/null".into(),
        permissions: "rwm".into(),
    }];
    assert_invalid(
        w.create(&id, &pod, c).await,
        "device container_path with ..",
        "devices[0].container_path",
    );
    let mut c = w.container("nohost", "true");
    c.mounts = vec![api::Mount {
        container_path: "/x".into(),
        host_path: sentinel.join("missing").display().to_string(),
        ..Default::default()
    }];
    let r = w.create(&id, &pod, c).await;
    assert!(r.is_err(), "a mount of a missing host path: {r:?}");
    assert!(
        !sentinel.join("missing").exists(),
        "CreateContainer made the missing host path"
    );

    // A hostPath that is itself a symlink is followed, as the kubelet's
    // hostPath volumes are (the node's admin chose it).
    let data = w.daemon.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("file"), "data\n").unwrap();
    let alias = w.daemon.path("data-alias");
    std::os::unix::fs::symlink(&data, &alias).unwrap();
    let mut c = w.container("alias", "sleep 1000");
    c.mounts = vec![ro_mount(&alias, "/alias")];
    let aliased = w.run(&id, &pod, c).await;
    assert_eq!(w.sh(&aliased, "cat /alias/file").await, "data\n");

    // A volume holding a symlink to a host directory, and a mount whose
    // container path goes through it: the symlink resolves inside the
    // container's root, never on the host.
    let vol = w.daemon.path("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::os::unix::fs::symlink(&sentinel, vol.join("link")).unwrap();
    let mut c = w.container("through", "sleep 1000");
    c.mounts = vec![
        api::Mount {
            container_path: "/vol".into(),
            host_path: vol.display().to_string(),
            ..Default::default()
        },
        api::Mount {
            container_path: "/vol/link/inner".into(),
            host_path: data.display().to_string(),
            ..Default::default()
        },
    ];
    match w.create(&id, &pod, c).await {
        Ok(c) => match w.start(&c).await {
            Ok(()) => {
                let (_, out) = try_sh(&mut w, &c, "cat /vol/link/inner/file; ls -la /vol").await;
                println!("mount through a volume symlink: started; {out}");
            }
            Err(e) => println!("mount through a volume symlink: StartContainer refused: {e}"),
        },
        Err(e) => println!("mount through a volume symlink: CreateContainer refused: {e}"),
    }
    assert!(
        rt_list(&sentinel).is_empty(),
        "a mount through a symlink created {:?} on the host",
        rt_list(&sentinel)
    );

    // Image references.
    for image in [
        "../../etc/passwd",
        "127.0.0.1:5000/../../sentinel:latest",
        "busybox@sha256:../../../../sentinel",
        "busybox:../../x",
        "/abs/path",
    ] {
        let r = w
            .images
            .pull_image(api::PullImageRequest {
                image: spec(image),
                ..Default::default()
            })
            .await;
        assert_invalid(r, &format!("PullImage {image}"), "");
        let r = w
            .images
            .remove_image(api::RemoveImageRequest { image: spec(image) })
            .await;
        assert!(
            r.as_ref()
                .is_err_and(|s| matches!(s.code(), Code::InvalidArgument | Code::NotFound))
                || r.is_ok(),
            "RemoveImage {image}: {r:?}"
        );
        let mut c = w.container("img", "true");
        c.image = spec(image);
        let r = w.create(&id, &pod, c).await;
        assert!(
            r.as_ref()
                .is_err_and(|s| matches!(s.code(), Code::InvalidArgument | Code::NotFound)),
            "CreateContainer with image {image}: {r:?}"
        );
    }
    // The image store still has the test image.
    let listed = w
        .images
        .list_images(api::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(listed.len(), 1, "{listed:?}");

    // ReopenContainerLog: an unknown ID is NotFound; a real container's
    // log is reopened at its own path only.
    let r =
        w.rt.reopen_container_log(api::ReopenContainerLogRequest {
            container_id: "../../sentinel".into(),
        })
        .await;
    assert_eq!(r.unwrap_err().code(), Code::NotFound);
    let talker = w
        .run(
            &id,
            &pod,
            w.container("talker", "while true; do echo tick; sleep 0.1; done"),
        )
        .await;
    w.wait_log("esc/talker/0.log", "tick").await;
    let log = w.logs_dir().join("esc/talker/0.log");
    std::fs::rename(&log, log.with_extension("log.1")).unwrap();
    w.rt.reopen_container_log(api::ReopenContainerLogRequest {
        container_id: talker.clone(),
    })
    .await
    .expect("ReopenContainerLog");
    w.wait_log("esc/talker/0.log", "tick").await;

    assert!(rt_list(&sentinel).is_empty(), "{:?}", rt_list(&sentinel));
    // Nothing new beside the test's own directories.
    let top: Vec<String> = rt_list(w.daemon.dir.path())
        .into_iter()
        .filter(|p| !p.contains('/'))
        .collect();
    for p in &top {
        assert!(
            [
                "cni",
                "config.toml",
                "data",
                "data-alias",
                "logs",
                "manifests",
                "nodelet.log",
                "pod-logs",
                "root",
                "run",
                "seccomp",
                "sentinel",
                "state",
                "vol"
            ]
            .contains(&p.as_str()),
            "unexpected {p} in the test directory: {top:?}"
        );
    }
    w.remove_pod(&id).await;
    w.assert_no_leaks();
}

/// A static pod whose container plants a symlink to a host directory in an
/// emptyDir, and a second container whose `subPath` goes through it: the
/// subPath is refused and nothing is created on the host.
#[tokio::test]
async fn static_pod_subpath_cannot_escape_through_a_symlink() {
    let config = "node_name = \"node1\"\n\n[static_pods]\nsync_interval_ms = 200\nbackoff_initial_ms = 500\nbackoff_max_ms = 2000\nresync_secs = 2\n";
    let mut w = World::new(&[], config).await;
    let sentinel = w.daemon.path("sentinel");
    std::fs::create_dir_all(&sentinel).unwrap();
    let sp = StaticPods::of(&w.daemon);
    sp.write(
        "esc.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: esc
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  volumes:
  - name: shared
    emptyDir: {{}}
  initContainers:
  - name: plant
    image: {image}
    command: ["sh", "-c", "ln -s {sentinel} /shared/out"]
    volumeMounts:
    - name: shared
      mountPath: /shared
  containers:
  - name: good
    image: {image}
    command: ["sh", "-c", "echo hi > /data/f; exec sleep 1000"]
    volumeMounts:
    - name: shared
      mountPath: /data
      subPath: ok
  - name: victim
    image: {image}
    command: ["sleep", "1000"]
    volumeMounts:
    - name: shared
      mountPath: /data
      subPath: out/made
"#,
            image = w.busybox,
            sentinel = sentinel.display()
        ),
    );
    let pod = sp
        .wait("esc-node1", Duration::from_secs(40), "subPath refused", |p| {
            p.to_string().contains("leaves its volume")
        })
        .await;
    println!("{}", serde_json::to_string_pretty(&pod["status"]).unwrap_or_default());
    // A subPath that stays in its volume works (through the pinned bind).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let files = nodelet_integration::daemon::list_tree(w.daemon.dir.path());
        if files.iter().any(|f| f.ends_with("volumes/shared/ok/f")) {
            assert!(
                files.iter().any(|f| f.contains("volume-subpaths/good/")),
                "no pinned subPath: {files:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the good container never wrote through its subPath"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        nodelet_integration::daemon::list_tree(&sentinel).is_empty(),
        "subPath created {:?} on the host",
        nodelet_integration::daemon::list_tree(&sentinel)
    );
    sp.remove("esc.yaml");
    sp.wait_gone("esc-node1", Duration::from_secs(30)).await;
    // The manager removes the sandbox after the status entry goes.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let pods =
            w.rt.list_pod_sandbox(api::ListPodSandboxRequest::default())
                .await
                .unwrap()
                .into_inner()
                .items;
        if pods.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{pods:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.assert_no_leaks();
    assert!(nodelet_integration::daemon::list_tree(&sentinel).is_empty());
}
