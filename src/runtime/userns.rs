//! User namespaces for pods (`hostUsers: false`, `NamespaceOption.userns_options`
//! with mode POD): which host IDs a pod gets, and whether this node can do it.
//!
//! Every such pod maps container IDs `0..65536` (UIDs and GIDs alike) to a
//! range of 65536 host IDs of its own: the kubelet's choice when it sends
//! mappings (validated here), else the first free slot of the configured
//! range (`[user_namespaces]`). The range is recorded in the pod record and
//! free again once the pod is removed. How the namespace is built is in
//! `infra/mod.rs` (the holder process) and `container.rs` (idmapped layers).

use std::path::Path;

use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};

/// Host IDs per pod: the whole 16-bit ID space a container may use, as
/// the kubelet allocates.
pub const IDS_PER_POD: u32 = 65536;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernsError {
    /// The request's mappings or namespace combination cannot be honoured.
    #[error("{0}")]
    Invalid(String),
    /// Every range of the configured span is taken.
    #[error("no free user namespace ID range: all {slots} ranges of {IDS_PER_POD} IDs from {first} are in use")]
    Exhausted { first: u32, slots: u32 },
    /// The node cannot build user-namespaced pods (kernel or filesystem).
    #[error("user namespaces are not supported on this node: {0}")]
    Unsupported(String),
}

/// A pod's host ID range: container ID `n` is host ID `start + n`, for UIDs
/// and GIDs, `n < IDS_PER_POD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub start: u32,
}

impl IdRange {
    fn end(&self) -> u64 {
        self.start as u64 + IDS_PER_POD as u64
    }

    pub fn overlaps(&self, other: &IdRange) -> bool {
        (self.start as u64) < other.end() && (other.start as u64) < self.end()
    }

    /// The line for `/proc/<pid>/uid_map` and `gid_map`.
    pub fn map_line(&self) -> String {
        format!("0 {} {IDS_PER_POD}\n", self.start)
    }

    /// The OCI `linux.uidMappings` / `gidMappings` entry.
    pub fn oci_mapping(&self) -> oci_spec::runtime::LinuxIdMapping {
        oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(self.start)
            .size(IDS_PER_POD)
            .build()
            .expect("complete id mapping")
    }

    /// Are these CRI mappings (a mount's `uid_mappings`) exactly this range?
    pub fn is(&self, mappings: &[cri::IdMapping]) -> bool {
        matches!(mappings, [m] if m.container_id == 0 && m.host_id == self.start && m.length == IDS_PER_POD)
    }
}

/// The first free slot of `slots` ranges starting at `first`.
pub fn allocate(first: u32, slots: u32, used: &[IdRange]) -> Result<IdRange, UsernsError> {
    (0..slots as u64)
        .map(|i| first as u64 + i * IDS_PER_POD as u64)
        .take_while(|s| s + IDS_PER_POD as u64 <= u32::MAX as u64)
        .map(|s| IdRange { start: s as u32 })
        .find(|r| !used.iter().any(|u| u.overlaps(r)))
        .ok_or(UsernsError::Exhausted { first, slots })
}

/// Check the mappings the kubelet chose: one mapping each for UIDs and
/// GIDs, the same host range for both, container ID 0, length 65536, not in
/// the host's own first 65536 IDs, and no overlap with another pod's.
pub fn validate(uids: &[cri::IdMapping], gids: &[cri::IdMapping], used: &[IdRange]) -> Result<IdRange, UsernsError> {
    let one = |what: &str, m: &[cri::IdMapping]| -> Result<cri::IdMapping, UsernsError> {
        let [m] = m else {
            return Err(UsernsError::Invalid(format!(
                "userns_options.{what}: exactly one mapping is supported, got {}",
                m.len()
            )));
        };
        if m.container_id != 0 || m.length != IDS_PER_POD {
            return Err(UsernsError::Invalid(format!(
                "userns_options.{what}: the mapping must map container IDs 0-{} (container_id 0, length {IDS_PER_POD}), got container_id {} length {}",
                IDS_PER_POD - 1,
                m.container_id,
                m.length
            )));
        }
        if m.host_id < IDS_PER_POD {
            return Err(UsernsError::Invalid(format!(
                "userns_options.{what}: host_id {} is below {IDS_PER_POD} (the host's own users)",
                m.host_id
            )));
        }
        if m.host_id as u64 + IDS_PER_POD as u64 > u32::MAX as u64 {
            return Err(UsernsError::Invalid(format!(
                "userns_options.{what}: host_id {} leaves no room for {IDS_PER_POD} IDs",
                m.host_id
            )));
        }
        Ok(*m)
    };
    let u = one("uids", uids)?;
    let g = one("gids", gids)?;
    if u.host_id != g.host_id {
        return Err(UsernsError::Invalid(format!(
            "userns_options: uids and gids must map to the same host range (host_id {} vs {})",
            u.host_id, g.host_id
        )));
    }
    let range = IdRange { start: u.host_id };
    if let Some(other) = used.iter().find(|o| o.overlaps(&range)) {
        return Err(UsernsError::Invalid(format!(
            "userns_options: host IDs {}-{} overlap another pod's range starting at {}",
            range.start,
            range.end() - 1,
            other.start
        )));
    }
    Ok(range)
}

/// Can this node build user-namespaced pods? Set once at start-up by
/// `probe`; read by `Status` (RuntimeHandlerFeatures.user_namespaces).
static SUPPORTED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();

pub fn supported() -> Result<(), UsernsError> {
    match SUPPORTED.get() {
        Some(Ok(())) => Ok(()),
        Some(Err(why)) => Err(UsernsError::Unsupported(why.clone())),
        None => Err(UsernsError::Unsupported("not probed yet".into())),
    }
}

/// Probe (once) whether an idmapped mount of `dir` (the layer store) works:
/// runs `nodelet userns-probe DIR`, which needs a fork the multi-threaded
/// daemon must not do itself.
pub async fn probe(dir: &Path) {
    let out = tokio::process::Command::new("/proc/self/exe")
        .arg("userns-probe")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    let result = match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Err(e) => Err(format!("run the probe: {e}")),
    };
    match &result {
        Ok(()) => tracing::info!(dir = %dir.display(), "user namespaces supported (idmapped mounts work)"),
        Err(why) => tracing::warn!("user namespaces not supported: {why}"),
    }
    let _ = SUPPORTED.set(result);
}

/// `nodelet userns-probe DIR` (single-threaded, dispatched in `main`):
/// fork a child into a new user namespace with a mapping, and make an
/// idmapped mount of DIR with it (never attached anywhere). Exit 0 when it
/// works; else print why.
pub fn probe_main(dir: &Path) -> std::process::ExitCode {
    match probe_here(dir) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            println!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn probe_here(dir: &Path) -> Result<(), String> {
    let holder = crate::infra::userns_holder::Holder::start(IdRange { start: 1 << 20 }, None)?;
    let ns = std::fs::File::open(format!("/proc/{}/ns/user", holder.pid()))
        .map_err(|e| format!("open the probe's user namespace: {e}"))?;
    super::mounts::idmapped_tree(dir, std::os::fd::AsFd::as_fd(&ns), false)
        .map(drop)
        .map_err(|e| format!("idmapped mount of {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host_id: u32, container_id: u32, length: u32) -> cri::IdMapping {
        cri::IdMapping {
            host_id,
            container_id,
            length,
        }
    }

    #[test]
    fn first_free_slot() {
        let first = 1 << 20;
        assert_eq!(allocate(first, 4, &[]).unwrap().start, first);
        let used = [
            IdRange { start: first },
            IdRange {
                start: first + 2 * IDS_PER_POD,
            },
        ];
        assert_eq!(allocate(first, 4, &used).unwrap().start, first + IDS_PER_POD);
        // A foreign range straddling slots 1 and 2 blocks both.
        let used = [
            IdRange { start: first },
            IdRange {
                start: first + IDS_PER_POD + 10,
            },
        ];
        assert_eq!(allocate(first, 4, &used).unwrap().start, first + 3 * IDS_PER_POD);
    }

    #[test]
    fn exhaustion() {
        let first = 1 << 20;
        let used: Vec<IdRange> = (0..3)
            .map(|i| IdRange {
                start: first + i * IDS_PER_POD,
            })
            .collect();
        assert_eq!(
            allocate(first, 3, &used),
            Err(UsernsError::Exhausted { first, slots: 3 })
        );
        // Slots reaching ID 2^32-1 (which means "no ID") do not exist.
        assert!(allocate(u32::MAX - IDS_PER_POD + 1, 10, &[]).is_err());
        assert_eq!(
            allocate(u32::MAX - IDS_PER_POD, 10, &[]).unwrap().start,
            u32::MAX - IDS_PER_POD
        );
    }

    #[test]
    fn kubelet_mappings() {
        let ok = validate(&[m(65536 * 5, 0, 65536)], &[m(65536 * 5, 0, 65536)], &[]).unwrap();
        assert_eq!(ok.start, 65536 * 5);
        assert_eq!(ok.map_line(), "0 327680 65536\n");
        let bad = [
            (vec![], vec![m(65536, 0, 65536)]),
            (vec![m(65536, 0, 65536), m(200000, 65536, 1)], vec![m(65536, 0, 65536)]),
            (vec![m(65536, 1, 65536)], vec![m(65536, 1, 65536)]),
            (vec![m(65536, 0, 1000)], vec![m(65536, 0, 1000)]),
            (vec![m(1000, 0, 65536)], vec![m(1000, 0, 65536)]),
            (vec![m(65536, 0, 65536)], vec![m(131072, 0, 65536)]),
            (vec![m(u32::MAX - 100, 0, 65536)], vec![m(u32::MAX - 100, 0, 65536)]),
        ];
        for (u, g) in bad {
            assert!(
                matches!(validate(&u, &g, &[]), Err(UsernsError::Invalid(_))),
                "{u:?} {g:?}"
            );
        }
        let used = [IdRange { start: 65536 * 5 + 1 }];
        let e = validate(&[m(65536 * 5, 0, 65536)], &[m(65536 * 5, 0, 65536)], &used).unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
        // Adjacent ranges do not overlap.
        let used = [IdRange { start: 65536 * 4 }, IdRange { start: 65536 * 6 }];
        assert!(validate(&[m(65536 * 5, 0, 65536)], &[m(65536 * 5, 0, 65536)], &used).is_ok());
    }

    #[test]
    fn mount_mappings_match() {
        let r = IdRange { start: 65536 * 3 };
        assert!(r.is(&[m(65536 * 3, 0, 65536)]));
        assert!(!r.is(&[m(65536 * 3, 0, 1)]));
        assert!(!r.is(&[]));
    }
}
