//! Leak checks and last-resort cleanup for tests: what a test made in
//! cgroups, mounts and processes, found and undone.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every cgroup hierarchy mount (v1 controllers, or the v2 root).
pub fn hierarchies() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount = left.split(' ').nth(4).unwrap_or_default();
        let fstype = right.split(' ').next().unwrap_or_default();
        let opts = right.split(' ').nth(2).unwrap_or_default();
        if (fstype == "cgroup" && !opts.contains("name=")) || (fstype == "cgroup2" && mount == "/sys/fs/cgroup") {
            out.push(PathBuf::from(mount));
        }
    }
    out
}

/// Directories of cgroup `path` that exist, in any hierarchy.
pub fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    hierarchies()
        .into_iter()
        .map(|h| h.join(path.trim_start_matches('/')))
        .filter(|d| d.is_dir())
        .collect()
}

/// Kill every task under cgroup `path` and remove the whole subtree.
pub fn cgroup_tree(path: &str) {
    fn kill_all(dir: &Path) {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                kill_all(&e.path());
            }
        }
    }
    fn rmdir_tree(dir: &Path) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_tree(&e.path());
            }
        }
        for _ in 0..200 {
            if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for d in cgroup_dirs(path) {
        kill_all(&d);
    }
    for d in cgroup_dirs(path) {
        rmdir_tree(&d);
    }
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

pub fn mounts_under(dir: &Path) {
    for m in mounts_below(dir) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Reap zombie children (infra processes re-parented to the test when its
/// daemon died).
pub fn reap_orphans() {
    let me = std::process::id().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut f = rest.split(' ');
        let (state, ppid) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        if state == "Z" && ppid == me && stat.contains("(nodelet-infra)") {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
    }
}

/// Live (non-zombie) processes whose command name is `comm`.
pub fn processes_named(comm: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if stat.contains(&format!("({comm})")) && !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z') {
            out.push(pid);
        }
    }
    out
}
