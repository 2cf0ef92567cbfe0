//! Static pod manifests: bytes as a `.yaml` or `.json` manifest file
//! (`static_pods::manifest::load`: parse, default, validate), then the
//! translation to CRI requests a pod worker makes (sandbox config, every
//! container's config, QoS, resources, /etc/hosts). The translation writes
//! termination-log files and subPath directories: those go to a scratch
//! directory per input, checked to hold everything written.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nodelet::static_pods::{manifest, translate};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let file = if kind & 1 == 0 { "pod.yaml" } else { "pod.json" };
    let Ok(m) = manifest::load(Path::new(file), bytes, "node-1") else {
        return;
    };
    let pod = &m.pod;
    let spec = pod.spec.clone().unwrap_or_default();
    let qos = translate::qos(&spec);

    let scratch = tempfile::tempdir().expect("tempdir");
    let pod_dir = scratch.path().join("pod");
    let paths = translate::pod_paths(pod, &scratch.path().join("logs"), &scratch.path().join("pods"));
    let _ = translate::sandbox_config(pod, Path::new(file), &m.hash, 0, &paths, "/kubepods");
    let _ = translate::etc_hosts(pod, "10.0.0.2");
    let _ = translate::hostname(pod);

    // Volumes as prepare_volumes would leave them, but all in the scratch
    // directory (hostPath volumes are not touched on the host).
    let mut volumes = translate::VolumePaths::new();
    for v in spec.volumes.iter().flatten() {
        let dir = scratch.path().join("volumes").join(&v.name);
        std::fs::create_dir_all(&dir).expect("volume dir");
        volumes.insert(v.name.clone(), dir);
    }
    let ctx = translate::Context {
        pod,
        hash: &m.hash,
        pod_ip: "10.0.0.2".into(),
        pod_ips: vec!["10.0.0.2".into(), "fd00::2".into()],
        host_ip: "192.168.0.1".into(),
        volumes: &volumes,
        qos,
        node_memory: 8 << 30,
        etc_hosts: Some(pod_dir.join("etc-hosts")),
        pod_dir: &pod_dir,
        seccomp_root: Path::new("/var/lib/nodelet/seccomp"),
    };
    for (attempt, c) in spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .enumerate()
    {
        if let Ok(cfg) = translate::container_config(&ctx, c, attempt as u32) {
            for mount in &cfg.mounts {
                // Every host path handed to the runtime is the scratch
                // directory's (or /etc/hosts' managed file).
                assert!(
                    Path::new(&mount.host_path).starts_with(scratch.path()),
                    "mount {:?} leaves the pod's directories",
                    mount.host_path
                );
            }
        }
        let _ = translate::container_resources(c, qos, 8 << 30);
        let env: Vec<(String, String)> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect();
        for s in c.command.iter().flatten().chain(c.args.iter().flatten()) {
            let _ = translate::expand(s, &env);
        }
    }
});
