//! Helpers for the hostile-workload tests: a static probe binary that makes
//! single syscalls and prints what the kernel said, host-network pods,
//! latency samples and the pod cgroup's pids counters.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cri::api;
use crate::pods::World;

/// The probe's source. Each mode makes one syscall and prints `ok` or the
/// errno's name, exiting 0 or 1, so a test can tell seccomp's `EPERM` from
/// a missing capability or file.
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>

static int report(long r) {
    if (r >= 0) { printf("ok\n"); return 0; }
    switch (errno) {
    case EPERM: printf("EPERM\n"); break;
    case EACCES: printf("EACCES\n"); break;
    case ENOENT: printf("ENOENT\n"); break;
    case ENOSYS: printf("ENOSYS\n"); break;
    case EINVAL: printf("EINVAL\n"); break;
    default: printf("errno %d %s\n", errno, strerror(errno));
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *m = argv[1];
    /* The classic fork bomb: every process forks forever, retrying when
       the kernel refuses. */
    if (!strcmp(m, "forkbomb")) { for (;;) fork(); }
    if (!strcmp(m, "ids")) { printf("%d %d\n", (int)getuid(), (int)geteuid()); return 0; }
    if (!strcmp(m, "userns")) return report(unshare(CLONE_NEWUSER));
    if (!strcmp(m, "mountns")) return report(unshare(CLONE_NEWNS));
    /* KEYCTL_JOIN_SESSION_KEYRING (1) with no name: a new anonymous keyring. */
    if (!strcmp(m, "keyctl")) return report(syscall(SYS_keyctl, 1, 0, 0, 0, 0));
    if (!strcmp(m, "add_key")) return report(syscall(SYS_add_key, "user", "nodelet-probe", "x", 1, -2 /* KEY_SPEC_PROCESS_KEYRING */));
    if (!strcmp(m, "mount")) return report(mount("none", "/mnt", "tmpfs", 0, ""));
    if (!strcmp(m, "read") && argc > 2) {
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0) return report(-1);
        char buf[512];
        long n = read(fd, buf, sizeof buf);
        if (n < 0) return report(-1);
        printf("read %ld\n", n);
        return 0;
    }
    return 2;
}
"#;

/// A static probe binary built with the host's `gcc -static` into `dir`
/// (`dir/probe`), owned by root with mode 0755.
pub fn build_probe(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("probe dir");
    let src = dir.join("probe.c");
    std::fs::write(&src, PROBE_C).expect("write probe.c");
    let out = dir.join("probe");
    crate::run(
        std::process::Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&out)
            .arg(&src),
    )
    .expect("gcc -static (the hostile tests need gcc and libc6-dev)");
    std::fs::remove_file(&src).ok();
    out
}

/// A pod on the host network (the network plays no part in the check).
pub fn host_network_pod(w: &World, name: &str) -> api::PodSandboxConfig {
    let mut pod = w.pod(name);
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
    pod
}

/// A read-only bind of a host directory.
pub fn ro_mount(host: &Path, container: &str) -> api::Mount {
    api::Mount {
        container_path: container.to_string(),
        host_path: host.display().to_string(),
        readonly: true,
        ..Default::default()
    }
}

/// Latency samples of one RPC, in milliseconds.
#[derive(Default, Debug, Clone)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1000.0);
    }

    pub fn time<T>(&mut self, start: Instant, v: T) -> T {
        self.push(start.elapsed());
        v
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        v
    }

    pub fn median(&self) -> f64 {
        let v = self.sorted();
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(0.0)
    }

    pub fn p95(&self) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return 0.0;
        }
        v[((v.len() as f64 * 0.95) as usize).min(v.len() - 1)]
    }

    pub fn summary(&self) -> String {
        format!(
            "n={} median={:.1}ms p95={:.1}ms max={:.1}ms",
            self.0.len(),
            self.median(),
            self.p95(),
            self.max()
        )
    }
}

/// The pids controller's directory of the cgroup a process is in (v1:
/// the `pids` hierarchy; v2: the unified one).
pub fn pids_cgroup_of(pid: i32) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/<pid>/cgroup");
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if ctrls.split(',').any(|c| c == "pids") {
            return PathBuf::from(format!("/sys/fs/cgroup/pids{path}"));
        }
    }
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("0::") {
            return PathBuf::from(format!("/sys/fs/cgroup{path}"));
        }
    }
    panic!("no pids cgroup for {pid}: {text}");
}

/// A number from a cgroup file (`max` → u64::MAX).
pub fn cgroup_value(dir: &Path, file: &str) -> u64 {
    let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()));
    let t = text.trim();
    if t == "max" {
        u64::MAX
    } else {
        t.parse().unwrap_or_else(|_| panic!("{}/{file}: {t:?}", dir.display()))
    }
}

/// The `max` counters of `pids.events` in `dir` and below: forks the
/// limit refused (v1 counts them in the forking task's own cgroup).
pub fn pids_refused(dir: &Path) -> u64 {
    let own = std::fs::read_to_string(dir.join("pids.events"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let below: u64 = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| pids_refused(&e.path()))
        .sum();
    own + below
}
