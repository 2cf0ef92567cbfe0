//! Pod and container cgroups on the host's hierarchies: cgroup v2 (pure
//! unified, first-class), and v1 or hybrid (every v1 controller hierarchy;
//! the hybrid layout's empty `unified` mount is left alone, and its root
//! `cgroup.subtree_control` never written).
//!
//! Directories are created here (so a pod's infra process can join its
//! cgroup before it forks); limits are applied with libcgroups, which knows
//! every controller file's format on both versions.

use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupManager, ControllerOpt};
use oci_spec::runtime::LinuxResources;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("cgroup {path}: {message}")]
    Apply { path: String, message: String },
    #[error("no cgroup hierarchy is mounted under /sys/fs/cgroup")]
    NoHierarchy,
}

fn io(path: &Path, op: &'static str, source: std::io::Error) -> CgroupError {
    CgroupError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    /// v1 controllers bound to it (empty for v2).
    pub controllers: Vec<String>,
}

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroups {
    pub v2: bool,
    pub hierarchies: Vec<Hierarchy>,
}

impl Cgroups {
    /// Read the layout from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Cgroups, CgroupError> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| io(Path::new("/proc/self/mountinfo"), "read", e))?;
        Self::from_mountinfo(&text)
    }

    pub fn from_mountinfo(text: &str) -> Result<Cgroups, CgroupError> {
        let mut v1 = Vec::new();
        let mut unified_root = None;
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let fields: Vec<&str> = left.split(' ').collect();
            let rfields: Vec<&str> = right.split(' ').collect();
            if fields.len() < 5 || rfields.len() < 3 {
                continue;
            }
            let mount = PathBuf::from(fields[4]);
            match rfields[0] {
                "cgroup2" if mount == Path::new("/sys/fs/cgroup") => unified_root = Some(mount),
                "cgroup" => {
                    let controllers: Vec<String> = rfields[2]
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.starts_with("name=") && !o.contains('='))
                        .filter(|o| {
                            !matches!(
                                *o,
                                "relatime" | "nosuid" | "nodev" | "noexec" | "clone_children" | "noprefix" | "xattr"
                            )
                        })
                        .map(str::to_string)
                        .collect();
                    // Named hierarchies (name=systemd) carry no controller.
                    if !controllers.is_empty() && mount.starts_with("/sys/fs/cgroup") {
                        v1.push(Hierarchy { mount, controllers });
                    }
                }
                _ => {}
            }
        }
        if let Some(mount) = unified_root {
            return Ok(Cgroups {
                v2: true,
                hierarchies: vec![Hierarchy {
                    mount,
                    controllers: Vec::new(),
                }],
            });
        }
        if v1.is_empty() {
            return Err(CgroupError::NoHierarchy);
        }
        Ok(Cgroups {
            v2: false,
            hierarchies: v1,
        })
    }

    /// The controllers limits can use: v1, every mounted hierarchy's; v2,
    /// the root's `cgroup.controllers`.
    pub fn controllers(&self) -> Vec<String> {
        let mut out: Vec<String> = if self.v2 {
            self.hierarchies
                .iter()
                .flat_map(|h| {
                    std::fs::read_to_string(h.mount.join("cgroup.controllers"))
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect()
        } else {
            self.hierarchies.iter().flat_map(|h| h.controllers.clone()).collect()
        };
        out.sort();
        out.dedup();
        out
    }

    /// The directories of cgroup `path` (absolute, like `/nodelet/pod1`) in
    /// every hierarchy.
    pub fn dirs(&self, path: &str) -> Vec<PathBuf> {
        let rel = path.trim_start_matches('/');
        self.hierarchies.iter().map(|h| h.mount.join(rel)).collect()
    }

    /// `cgroup.procs` of `path` in every hierarchy.
    pub fn procs_files(&self, path: &str) -> Vec<PathBuf> {
        self.dirs(path).into_iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Create `path` (and its parents) in every hierarchy, ready for tasks.
    pub fn create(&self, path: &str) -> Result<(), CgroupError> {
        let rel = Path::new(path.trim_start_matches('/'));
        for h in &self.hierarchies {
            let mut dir = h.mount.clone();
            for comp in rel.components() {
                let parent = dir.clone();
                dir.push(comp);
                if dir.is_dir() {
                    continue;
                }
                if self.v2 {
                    enable_controllers(&parent)?;
                }
                match std::fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io(&dir, "create", e)),
                }
                // A new v1 cpuset cgroup starts with no CPUs or memory nodes
                // and refuses tasks: inherit the parent's.
                if h.controllers.iter().any(|c| c == "cpuset") {
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        let value = std::fs::read(parent.join(file)).map_err(|e| io(&parent, "read cpuset", e))?;
                        std::fs::write(dir.join(file), value).map_err(|e| io(&dir, "write cpuset", e))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Apply limits to an existing cgroup.
    pub fn apply(&self, path: &str, resources: &LinuxResources) -> Result<(), CgroupError> {
        let apply_err = |message: String| CgroupError::Apply {
            path: path.to_string(),
            message,
        };
        let manager = libcgroups::common::create_cgroup_manager(libcgroups::common::CgroupConfig {
            cgroup_path: PathBuf::from(path),
            systemd_cgroup: false,
            container_name: String::new(),
        })
        .map_err(|e| apply_err(e.to_string()))?;
        manager
            .apply(&ControllerOpt {
                resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| apply_err(e.to_string()))
    }

    /// SIGKILL every task in `path` and its children, in every hierarchy.
    pub fn kill(&self, path: &str) {
        fn walk(dir: &Path) {
            kill_tasks(dir);
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path());
                }
            }
        }
        for dir in self.dirs(path) {
            walk(&dir);
        }
    }

    /// Kill whatever still runs in `path` (and below) and remove it from
    /// every hierarchy. A missing cgroup is not an error.
    pub fn remove(&self, path: &str) -> Result<(), CgroupError> {
        for dir in self.dirs(path) {
            remove_tree(&dir)?;
        }
        Ok(())
    }
}

/// On v2, children only get the controllers their parent delegates.
fn enable_controllers(parent: &Path) -> Result<(), CgroupError> {
    let available = std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
    let enabled = std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    let want: Vec<String> = available
        .split_whitespace()
        .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if want.is_empty() {
        return Ok(());
    }
    std::fs::write(parent.join("cgroup.subtree_control"), want.join(" "))
        .map_err(|e| io(parent, "enable controllers", e))
}

fn kill_tasks(dir: &Path) {
    use nix::sys::signal::{kill, Signal};
    if std::fs::write(dir.join("cgroup.kill"), b"1").is_ok() {
        return;
    }
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Remove a cgroup directory and its children, deepest first. Tasks are
/// killed and the removal retried while they exit (rmdir says EBUSY).
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    if !dir.is_dir() {
        return Ok(());
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path())?;
            }
        }
    }
    for attempt in 0..200 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 199 => {
                kill_tasks(dir);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(io(dir, "remove", e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";

    const UNIFIED: &str = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot";

    const SYSTEMD_V1: &str = "25 20 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct";

    #[test]
    fn hybrid_uses_v1_controllers_only() {
        let c = Cgroups::from_mountinfo(HYBRID).unwrap();
        assert!(!c.v2);
        let mounts: Vec<_> = c.hierarchies.iter().map(|h| h.mount.display().to_string()).collect();
        assert_eq!(
            mounts,
            [
                "/sys/fs/cgroup/cpu",
                "/sys/fs/cgroup/cpuacct",
                "/sys/fs/cgroup/cpuset",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/pids"
            ]
        );
        assert_eq!(
            c.dirs("/nodelet/pod1")[3],
            PathBuf::from("/sys/fs/cgroup/memory/nodelet/pod1")
        );
    }

    #[test]
    fn unified_is_one_hierarchy() {
        let c = Cgroups::from_mountinfo(UNIFIED).unwrap();
        assert!(c.v2);
        assert_eq!(
            c.procs_files("/a/b"),
            vec![PathBuf::from("/sys/fs/cgroup/a/b/cgroup.procs")]
        );
    }

    #[test]
    fn combined_v1_controllers() {
        let c = Cgroups::from_mountinfo(SYSTEMD_V1).unwrap();
        assert_eq!(c.hierarchies[0].controllers, vec!["cpu", "cpuacct"]);
        assert!(Cgroups::from_mountinfo("").is_err());
    }
}
