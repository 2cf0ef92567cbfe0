//! Reading static pod manifests: one Pod per file, YAML or JSON, hidden
//! files ignored, validated as far as a node can validate a Pod without an
//! API server.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use sha2::{Digest, Sha256};

/// A manifest that parsed and validated.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub file: PathBuf,
    pub pod: Pod,
    /// Identity of the content: a changed file is a different pod, as the
    /// kubelet derives a static pod's UID from its content.
    pub hash: String,
}

/// A manifest that did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub file: PathBuf,
    pub reason: String,
}

/// Files the manifest source reads: `*.yaml`, `*.yml`, `*.json`, not
/// hidden (editors' temporaries, the atomic-write dance of config tools).
pub fn is_manifest(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

/// Every manifest in `dir`, in file-name order.
pub fn load_dir(dir: &Path, node_name: &str) -> (Vec<Manifest>, Vec<Rejected>) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_manifest(p) && p.is_file())
        .collect();
    files.sort();
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    let mut names = HashSet::new();
    for file in files {
        let result = std::fs::read(&file)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|bytes| load(&file, &bytes, node_name));
        match result {
            Ok(m) => {
                let key = (
                    m.pod.metadata.namespace.clone().unwrap_or_default(),
                    m.pod.metadata.name.clone().unwrap_or_default(),
                );
                if names.insert(key.clone()) {
                    ok.push(m);
                } else {
                    bad.push(Rejected {
                        file,
                        reason: format!("pod {}/{} is already defined by another file", key.0, key.1),
                    });
                }
            }
            Err(reason) => bad.push(Rejected { file, reason }),
        }
    }
    (ok, bad)
}

/// Parse, default and validate one manifest.
pub fn load(file: &Path, bytes: &[u8], node_name: &str) -> Result<Manifest, String> {
    let mut pod: Pod = if file.extension().and_then(|e| e.to_str()) == Some("json") {
        serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
        serde_saphyr::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?
    };
    let hash = hex::encode(&Sha256::digest(bytes)[..8]);
    default_pod(&mut pod, node_name, &hash);
    validate(&pod)?;
    Ok(Manifest {
        file: file.to_path_buf(),
        pod,
        hash,
    })
}

/// What the kubelet fills in for a static pod: the node-suffixed name, the
/// default namespace, a UID from the content, the node name.
fn default_pod(pod: &mut Pod, node_name: &str, hash: &str) {
    let meta = &mut pod.metadata;
    if let Some(name) = &meta.name {
        meta.name = Some(format!("{name}-{node_name}"));
    }
    if meta.namespace.as_deref().unwrap_or("").is_empty() {
        meta.namespace = Some("default".into());
    }
    // A UUID-shaped ID from the content hash and the node.
    let digest = hex::encode(Sha256::digest(format!("{hash}/{node_name}/{:?}", meta.name)));
    meta.uid = Some(format!(
        "{}-{}-{}-{}-{}",
        &digest[0..8],
        &digest[8..12],
        &digest[12..16],
        &digest[16..20],
        &digest[20..32]
    ));
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node_name.to_string());
    }
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(dns_label)
}

/// The checks an API server would make that matter on the node.
pub fn validate(pod: &Pod) -> Result<(), String> {
    let name = pod.metadata.name.as_deref().ok_or("metadata.name is required")?;
    if !dns_subdomain(name) {
        return Err(format!("metadata.name {name:?} is not a valid DNS subdomain"));
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    if !dns_label(ns) {
        return Err(format!("metadata.namespace {ns:?} is not a valid DNS label"));
    }
    let spec = pod.spec.as_ref().ok_or("spec is required")?;
    if spec.containers.is_empty() {
        return Err("spec.containers must not be empty".into());
    }
    let volumes: HashSet<&str> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    for v in spec.volumes.iter().flatten() {
        if !dns_label(&v.name) {
            return Err(format!("volume name {:?} is not a valid DNS label", v.name));
        }
        let kinds = [
            v.host_path.is_some(),
            v.empty_dir.is_some(),
            v.downward_api.is_some(),
            v.projected.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(format!(
                "volume {:?}: only hostPath, emptyDir, downwardAPI and projected (downwardAPI) volumes are supported",
                v.name
            ));
        }
        if let Some(p) = &v.projected {
            if p.sources.iter().flatten().any(|s| s.downward_api.is_none()) {
                return Err(format!(
                    "volume {:?}: projected volumes may only hold downwardAPI sources",
                    v.name
                ));
            }
        }
        if let Some(h) = &v.host_path {
            if !h.path.starts_with('/') {
                return Err(format!("volume {:?}: hostPath.path must be absolute", v.name));
            }
        }
    }
    let mut seen = HashSet::new();
    let all = spec.init_containers.iter().flatten().chain(spec.containers.iter());
    let mut host_ports = HashSet::new();
    for c in all {
        if !dns_label(&c.name) {
            return Err(format!("container name {:?} is not a valid DNS label", c.name));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(format!("container name {:?} is used twice", c.name));
        }
        if c.image.as_deref().unwrap_or("").is_empty() {
            return Err(format!("container {:?}: image is required", c.name));
        }
        for p in c.ports.iter().flatten() {
            if !(1..=65535).contains(&p.container_port) {
                return Err(format!(
                    "container {:?}: containerPort {} is out of range",
                    c.name, p.container_port
                ));
            }
            if let Some(hp) = p.host_port {
                if !(1..=65535).contains(&hp) {
                    return Err(format!("container {:?}: hostPort {hp} is out of range", c.name));
                }
                let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                if !host_ports.insert((hp, proto.clone())) {
                    return Err(format!("hostPort {hp}/{proto} is used twice"));
                }
            }
            if let Some(proto) = &p.protocol {
                if !matches!(proto.as_str(), "TCP" | "UDP" | "SCTP") {
                    return Err(format!(
                        "container {:?}: protocol {proto:?} is not TCP, UDP or SCTP",
                        c.name
                    ));
                }
            }
        }
        for m in c.volume_mounts.iter().flatten() {
            if !volumes.contains(m.name.as_str()) {
                return Err(format!(
                    "container {:?}: volumeMount {:?} names no volume",
                    c.name, m.name
                ));
            }
            if !m.mount_path.starts_with('/') {
                return Err(format!(
                    "container {:?}: mountPath {:?} must be absolute",
                    c.name, m.mount_path
                ));
            }
            if let Some(sub) = &m.sub_path {
                if sub.starts_with('/') || sub.split('/').any(|c| c == "..") {
                    return Err(format!(
                        "container {:?}: subPath {sub:?} must be relative without '..'",
                        c.name
                    ));
                }
            }
        }
    }
    // A Localhost seccomp profile is a file under the static pod
    // manager's seccomp directory, named relative to it (the API server's
    // rule): never a path that climbs out of it.
    let pod_profile = spec.security_context.as_ref().and_then(|s| s.seccomp_profile.as_ref());
    let profiles = std::iter::once(("pod", pod_profile)).chain(
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .map(|c| {
                (
                    c.name.as_str(),
                    c.security_context.as_ref().and_then(|s| s.seccomp_profile.as_ref()),
                )
            }),
    );
    for (who, p) in profiles {
        if let Some(l) = p.and_then(|p| p.localhost_profile.as_deref()) {
            if l.is_empty() || l.starts_with('/') || l.split('/').any(|c| c == "..") {
                return Err(format!(
                    "{who}: seccompProfile.localhostProfile {l:?} must be a relative path without '..'"
                ));
            }
        }
    }
    if let Some(rp) = &spec.restart_policy {
        if !matches!(rp.as_str(), "Always" | "OnFailure" | "Never") {
            return Err(format!("restartPolicy {rp:?} is not Always, OnFailure or Never"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETCD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: etcd
  labels: {component: etcd}
spec:
  hostNetwork: true
  containers:
  - name: etcd
    image: registry.local/etcd:3.4
    command: [etcd, --data-dir=/var/lib/etcd]
    ports: [{containerPort: 2379, hostPort: 2379}]
    volumeMounts: [{name: data, mountPath: /var/lib/etcd}]
  volumes:
  - name: data
    hostPath: {path: /var/lib/etcd, type: DirectoryOrCreate}
"#;

    #[test]
    fn yaml_and_json_with_kubelet_defaults() {
        let m = load(Path::new("etcd.yaml"), ETCD.as_bytes(), "node1").unwrap();
        assert_eq!(m.pod.metadata.name.as_deref(), Some("etcd-node1"));
        assert_eq!(m.pod.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(m.pod.spec.as_ref().unwrap().node_name.as_deref(), Some("node1"));
        let uid = m.pod.metadata.uid.clone().unwrap();
        assert_eq!(uid.len(), 36);
        // Same content, same identity; other content, other identity.
        let again = load(Path::new("etcd.yaml"), ETCD.as_bytes(), "node1").unwrap();
        assert_eq!(
            (again.hash, again.pod.metadata.uid),
            (m.hash.clone(), Some(uid.clone()))
        );
        let changed = load(Path::new("etcd.yaml"), ETCD.replace("3.4", "3.5").as_bytes(), "node1").unwrap();
        assert_ne!(changed.pod.metadata.uid, Some(uid));
        let json = serde_json::to_vec(&m.pod).unwrap();
        assert!(load(Path::new("etcd.json"), &json, "n").is_ok());
    }

    #[test]
    fn invalid_manifests_say_why() {
        let cases = [
            (ETCD.replace("image: registry.local/etcd:3.4", ""), "image is required"),
            (
                ETCD.replace("name: etcd\n    image", "name: Etcd\n    image"),
                "not a valid DNS label",
            ),
            (
                ETCD.replace("containerPort: 2379, hostPort: 2379", "containerPort: 70000"),
                "out of range",
            ),
            (
                ETCD.replace(
                    "hostPath: {path: /var/lib/etcd, type: DirectoryOrCreate}",
                    "configMap: {name: x}",
                ),
                "only hostPath",
            ),
            (
                ETCD.replace("name: data, mountPath", "name: nope, mountPath"),
                "names no volume",
            ),
            (
                "kind: Pod\nmetadata: {name: x}\nspec: {containers: [}".to_string(),
                "invalid YAML",
            ),
            (
                ETCD.replace(
                    "    command: [etcd",
                    "    securityContext: {seccompProfile: {type: Localhost, localhostProfile: ../../etc/shadow}}\n    command: [etcd",
                ),
                "localhostProfile",
            ),
            (
                ETCD.replace(
                    "  hostNetwork: true",
                    "  hostNetwork: true\n  securityContext: {seccompProfile: {type: Localhost, localhostProfile: /etc/x.json}}",
                ),
                "must be a relative path",
            ),
            (
                ETCD.replace("mountPath: /var/lib/etcd}", "mountPath: /var/lib/etcd, subPath: a/../../b}"),
                "subPath",
            ),
        ];
        for (text, want) in cases {
            let err = load(Path::new("x.yaml"), text.as_bytes(), "n").unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
        let dup = ETCD.replace("  volumes:", "  - name: etcd\n    image: x\n  volumes:");
        assert!(load(Path::new("x.yaml"), dup.as_bytes(), "n")
            .unwrap_err()
            .contains("used twice"));
    }

    #[test]
    fn directory_scan() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("etcd.yaml"), ETCD).unwrap();
        std::fs::write(dir.path().join(".etcd.yaml.swp"), "junk").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "junk").unwrap();
        std::fs::write(dir.path().join("bad.yml"), "kind: Pod\n").unwrap();
        let (ok, bad) = load_dir(dir.path(), "n");
        assert_eq!(ok.len(), 1);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].file.ends_with("bad.yml"));
        assert!(!is_manifest(Path::new("/x/.hidden.yaml")));
    }
}
