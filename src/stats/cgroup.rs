//! Resource usage of one cgroup, read straight from its controller files on
//! cgroup v2 and on v1/hybrid hosts.
//!
//! We read the files ourselves rather than through libcgroups' `stats()`:
//! a libcgroups manager re-reads `/proc/self/mountinfo` each time one is
//! made (once per container per stats call), and its units differ between
//! versions (v1 CPU totals in ns and user/system in ticks, v2 in µs). Here
//! every value is normalised once: CPU in nanoseconds, memory in bytes.
//!
//! Memory follows cAdvisor and containerd: the working set is usage minus
//! inactive file pages (page cache the kernel can drop first), RSS is
//! `total_rss` on v1 and `anon` on v2.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::runtime::cgroups::Cgroups;

/// v1 reports "no limit" as the largest page-aligned i64; anything this
/// large is no limit.
const V1_UNLIMITED: u64 = 1 << 62;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuSample {
    /// Cumulative CPU time of every task, ns.
    pub usage_ns: u64,
    pub user_ns: Option<u64>,
    pub system_ns: Option<u64>,
    /// CFS bandwidth: enforcement periods elapsed, periods throttled and
    /// time throttled (ns). Zero when no quota is set.
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_ns: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemorySample {
    pub usage: u64,
    pub working_set: u64,
    pub rss: u64,
    pub cache: u64,
    pub mapped_file: u64,
    pub swap: Option<u64>,
    pub kernel: Option<u64>,
    pub active_file: u64,
    pub inactive_file: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// None: no limit.
    pub limit: Option<u64>,
    /// The soft limit (v1) or `memory.low` (v2); None when unset.
    pub reservation: Option<u64>,
    /// Highest usage seen (v1 always, v2 with `memory.peak`, Linux 5.19+).
    pub max_usage: Option<u64>,
    /// Times usage hit the limit (v1 `failcnt`, v2 `memory.events` max).
    pub fail_count: u64,
    pub oom_kills: u64,
}

impl MemorySample {
    /// Limit minus working set, when limited (as the CRI defines it).
    pub fn available(&self) -> Option<u64> {
        self.limit.map(|l| l.saturating_sub(self.working_set))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PidsSample {
    /// Tasks (threads included) in the cgroup and below.
    pub current: u64,
    /// None: no limit.
    pub limit: Option<u64>,
}

/// CPU limits in force, for the `container_spec_*` metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuSpec {
    pub period_us: Option<u64>,
    /// None: no quota.
    pub quota_us: Option<u64>,
    /// v1 shares; on v2 converted back from `cpu.weight` as the kubelet
    /// converts shares to weight.
    pub shares: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupSample {
    pub cpu: Option<CpuSample>,
    pub memory: Option<MemorySample>,
    pub pids: Option<PidsSample>,
    pub cpu_spec: CpuSpec,
}

/// Read everything known about cgroup `path` (absolute cgroupfs path, like
/// `/nodelet/besteffort/pod<id>`). Missing controllers or files leave their
/// part `None`; a cgroup that does not exist gives an empty sample.
pub fn read(cgroups: &Cgroups, path: &str) -> CgroupSample {
    let rel = path.trim_start_matches('/');
    if cgroups.v2 {
        let Some(h) = cgroups.hierarchies.first() else {
            return CgroupSample::default();
        };
        read_v2(&h.mount.join(rel))
    } else {
        let dir = |controller: &str| -> Option<PathBuf> {
            cgroups
                .hierarchies
                .iter()
                .find(|h| h.controllers.iter().any(|c| c == controller))
                .map(|h| h.mount.join(rel))
                .filter(|d| d.is_dir())
        };
        read_v1(
            dir("cpuacct").as_deref(),
            dir("cpu").as_deref(),
            dir("memory").as_deref(),
            dir("pids").as_deref(),
        )
    }
}

fn read_file(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok()
}

/// A file holding one number.
fn read_u64(dir: &Path, name: &str) -> Option<u64> {
    read_file(dir, name)?.trim().parse().ok()
}

/// A file holding one number or `max`: `Some(None)` is `max`.
fn read_u64_or_max(dir: &Path, name: &str) -> Option<Option<u64>> {
    parse_u64_or_max(&read_file(dir, name)?)
}

pub fn parse_u64_or_max(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "max" => Some(None),
        v => v.parse().ok().map(Some),
    }
}

/// `key value` lines (`memory.stat`, `cpu.stat`, `memory.events`).
pub fn parse_flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?.parse().ok()?))
        })
        .collect()
}

fn read_v1(cpuacct: Option<&Path>, cpu: Option<&Path>, memory: Option<&Path>, pids: Option<&Path>) -> CgroupSample {
    let mut out = CgroupSample::default();
    if let Some(dir) = cpuacct {
        if let Some(usage_ns) = read_u64(dir, "cpuacct.usage") {
            // cpuacct.usage_user/_sys are ns (Linux 4.6+); cpuacct.stat is
            // in USER_HZ ticks, the fallback.
            let ticks = read_file(dir, "cpuacct.stat").unwrap_or_default();
            let ticks = parse_flat_keyed(&ticks);
            let tick_ns = 1_000_000_000 / clock_ticks();
            let mut s = CpuSample {
                usage_ns,
                user_ns: read_u64(dir, "cpuacct.usage_user").or(ticks.get("user").map(|t| t * tick_ns)),
                system_ns: read_u64(dir, "cpuacct.usage_sys").or(ticks.get("system").map(|t| t * tick_ns)),
                ..Default::default()
            };
            if let Some(stat) = cpu.and_then(|d| read_file(d, "cpu.stat")) {
                let st = parse_flat_keyed(&stat);
                s.periods = st.get("nr_periods").copied().unwrap_or(0);
                s.throttled_periods = st.get("nr_throttled").copied().unwrap_or(0);
                s.throttled_ns = st.get("throttled_time").copied().unwrap_or(0);
            }
            out.cpu = Some(s);
        }
    }
    if let Some(dir) = cpu {
        let quota = read_file(dir, "cpu.cfs_quota_us").and_then(|q| q.trim().parse::<i64>().ok());
        out.cpu_spec = CpuSpec {
            period_us: read_u64(dir, "cpu.cfs_period_us"),
            quota_us: quota.filter(|q| *q > 0).map(|q| q as u64),
            shares: read_u64(dir, "cpu.shares"),
        };
    }
    if let Some(dir) = memory {
        if let Some(usage) = read_u64(dir, "memory.usage_in_bytes") {
            let text = read_file(dir, "memory.stat").unwrap_or_default();
            let st = parse_flat_keyed(&text);
            // The total_ keys include child cgroups (a pod's containers).
            let get = |k: &str| {
                st.get(format!("total_{k}").as_str())
                    .or(st.get(k))
                    .copied()
                    .unwrap_or(0)
            };
            let inactive_file = get("inactive_file");
            let limited = |v: Option<u64>| v.filter(|l| *l < V1_UNLIMITED);
            let oom = read_file(dir, "memory.oom_control").unwrap_or_default();
            out.memory = Some(MemorySample {
                usage,
                working_set: usage.saturating_sub(inactive_file),
                rss: get("rss"),
                cache: get("cache"),
                mapped_file: get("mapped_file"),
                swap: st.get("total_swap").or(st.get("swap")).copied(),
                kernel: read_u64(dir, "memory.kmem.usage_in_bytes"),
                active_file: get("active_file"),
                inactive_file,
                page_faults: get("pgfault"),
                major_page_faults: get("pgmajfault"),
                limit: limited(read_u64(dir, "memory.limit_in_bytes")),
                reservation: limited(read_u64(dir, "memory.soft_limit_in_bytes")),
                max_usage: read_u64(dir, "memory.max_usage_in_bytes"),
                fail_count: read_u64(dir, "memory.failcnt").unwrap_or(0),
                oom_kills: parse_flat_keyed(&oom).get("oom_kill").copied().unwrap_or(0),
            });
        }
    }
    if let Some(dir) = pids {
        if let Some(current) = read_u64(dir, "pids.current") {
            out.pids = Some(PidsSample {
                current,
                limit: read_u64_or_max(dir, "pids.max").flatten(),
            });
        }
    }
    out
}

fn read_v2(dir: &Path) -> CgroupSample {
    let mut out = CgroupSample::default();
    if !dir.is_dir() {
        return out;
    }
    if let Some(text) = read_file(dir, "cpu.stat") {
        let st = parse_flat_keyed(&text);
        if let Some(usage) = st.get("usage_usec") {
            out.cpu = Some(CpuSample {
                usage_ns: usage * 1000,
                user_ns: st.get("user_usec").map(|v| v * 1000),
                system_ns: st.get("system_usec").map(|v| v * 1000),
                periods: st.get("nr_periods").copied().unwrap_or(0),
                throttled_periods: st.get("nr_throttled").copied().unwrap_or(0),
                throttled_ns: st.get("throttled_usec").copied().unwrap_or(0) * 1000,
            });
        }
    }
    if let Some(max) = read_file(dir, "cpu.max") {
        let mut f = max.split_whitespace();
        let quota = f.next().and_then(|q| q.parse().ok());
        let period = f.next().and_then(|p| p.parse().ok());
        out.cpu_spec = CpuSpec {
            period_us: period,
            quota_us: quota,
            shares: read_u64(dir, "cpu.weight").map(weight_to_shares),
        };
    }
    if let Some(usage) = read_u64(dir, "memory.current") {
        let text = read_file(dir, "memory.stat").unwrap_or_default();
        let st = parse_flat_keyed(&text);
        let get = |k: &str| st.get(k).copied().unwrap_or(0);
        let inactive_file = get("inactive_file");
        let events = read_file(dir, "memory.events").unwrap_or_default();
        let events = parse_flat_keyed(&events);
        out.memory = Some(MemorySample {
            usage,
            working_set: usage.saturating_sub(inactive_file),
            rss: get("anon"),
            cache: get("file"),
            mapped_file: get("file_mapped"),
            swap: read_u64(dir, "memory.swap.current"),
            kernel: st.get("kernel").copied().or_else(|| {
                // Before Linux 6.1 there is no "kernel" key: sum its parts.
                let parts = ["kernel_stack", "pagetables", "percpu", "sock", "vmalloc", "slab"];
                parts
                    .iter()
                    .any(|k| st.contains_key(k))
                    .then(|| parts.iter().map(|k| get(k)).sum())
            }),
            active_file: get("active_file"),
            inactive_file,
            page_faults: get("pgfault"),
            major_page_faults: get("pgmajfault"),
            limit: read_u64_or_max(dir, "memory.max").flatten(),
            reservation: read_u64(dir, "memory.low").filter(|l| *l > 0),
            max_usage: read_u64(dir, "memory.peak"),
            fail_count: events.get("max").copied().unwrap_or(0),
            oom_kills: events.get("oom_kill").copied().unwrap_or(0),
        });
    }
    if let Some(current) = read_u64(dir, "pids.current") {
        out.pids = Some(PidsSample {
            current,
            limit: read_u64_or_max(dir, "pids.max").flatten(),
        });
    }
    out
}

/// The inverse of the kubelet's shares→weight conversion
/// (`weight = 1 + (shares - 2) * 9999 / 262142`), rounded to the nearest.
pub fn weight_to_shares(weight: u64) -> u64 {
    if weight == 0 {
        return 0;
    }
    2 + ((weight - 1) * 262_142 + 9_999 / 2) / 9_999
}

/// `sysconf(_SC_CLK_TCK)`, the unit of `cpuacct.stat`.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf takes an integer and returns one.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::cgroups::Hierarchy;

    fn testdata(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/stats/testdata")
            .join(rel)
    }

    /// The v1 fixture was captured on the hybrid development host: a cgroup
    /// with a 0.5-core quota that ran a busy loop for a second and wrote
    /// 16 MiB to a tmpfs.
    #[test]
    fn v1_files() {
        let v1 = |c: &str| Hierarchy {
            mount: testdata(&format!("v1/{c}")),
            controllers: vec![c.to_string()],
        };
        let cgroups = Cgroups {
            v2: false,
            hierarchies: vec![v1("cpu"), v1("cpuacct"), v1("memory"), v1("pids")],
        };
        let s = read(&cgroups, "/");
        let cpu = s.cpu.unwrap();
        assert_eq!(cpu.usage_ns, 536_315_883);
        assert_eq!(cpu.user_ns, Some(511_967_051));
        assert_eq!(cpu.system_ns, Some(12_000_000));
        assert_eq!((cpu.periods, cpu.throttled_periods), (12, 9));
        assert_eq!(cpu.throttled_ns, 247_710_032);
        assert_eq!(
            s.cpu_spec,
            CpuSpec {
                period_us: Some(100_000),
                quota_us: Some(50_000),
                shares: Some(1024)
            }
        );
        let m = s.memory.unwrap();
        assert_eq!(m.usage, 17_108_992);
        assert_eq!(m.inactive_file, 110_592);
        assert_eq!(m.working_set, 17_108_992 - 110_592);
        assert_eq!(m.rss, 0);
        assert_eq!(m.cache, 17_055_744);
        assert_eq!(m.page_faults, 692);
        assert_eq!(m.major_page_faults, 4);
        assert_eq!(m.limit, Some(134_217_728));
        assert_eq!(m.available(), Some(134_217_728 - (17_108_992 - 110_592)));
        // The default soft limit is "none".
        assert_eq!(m.reservation, None);
        assert_eq!(m.oom_kills, 0);
        assert_eq!(
            s.pids,
            Some(PidsSample {
                current: 0,
                limit: None
            })
        );
    }

    #[test]
    fn v2_files() {
        let cgroups = Cgroups {
            v2: true,
            hierarchies: vec![Hierarchy {
                mount: testdata("v2"),
                controllers: Vec::new(),
            }],
        };
        let s = read(&cgroups, "/");
        let cpu = s.cpu.unwrap();
        // µs in the file, ns here.
        assert_eq!(cpu.usage_ns, 2_500_000_000);
        assert_eq!(cpu.user_ns, Some(2_000_000_000));
        assert_eq!(cpu.system_ns, Some(500_000_000));
        assert_eq!((cpu.periods, cpu.throttled_periods), (50, 20));
        assert_eq!(cpu.throttled_ns, 1_000_000_000);
        assert_eq!(
            s.cpu_spec,
            CpuSpec {
                period_us: Some(100_000),
                quota_us: Some(50_000),
                shares: Some(weight_to_shares(79))
            }
        );
        let m = s.memory.unwrap();
        assert_eq!(m.usage, 52_428_800);
        assert_eq!(m.working_set, 52_428_800 - 4_194_304);
        assert_eq!(m.rss, 41_943_040);
        assert_eq!(m.cache, 10_485_760);
        assert_eq!(m.mapped_file, 2_097_152);
        assert_eq!(m.kernel, Some(1_048_576));
        assert_eq!((m.page_faults, m.major_page_faults), (12345, 67));
        assert_eq!(m.limit, Some(134_217_728));
        assert_eq!(m.available(), Some(134_217_728 - (52_428_800 - 4_194_304)));
        assert_eq!(m.max_usage, Some(60_000_000));
        assert_eq!((m.fail_count, m.oom_kills), (3, 1));
        assert_eq!(m.swap, Some(0));
        assert_eq!(
            s.pids,
            Some(PidsSample {
                current: 3,
                limit: None
            })
        );
    }

    #[test]
    fn missing_cgroup_is_empty() {
        let cgroups = Cgroups {
            v2: true,
            hierarchies: vec![Hierarchy {
                mount: testdata("v2"),
                controllers: Vec::new(),
            }],
        };
        assert_eq!(read(&cgroups, "/no/such/cgroup"), CgroupSample::default());
    }

    #[test]
    fn unlimited_and_weights() {
        assert_eq!(parse_u64_or_max("max\n"), Some(None));
        assert_eq!(parse_u64_or_max("42\n"), Some(Some(42)));
        assert_eq!(parse_u64_or_max("x"), None);
        // The kubelet's conversion; one weight step is ~26 shares.
        let to_weight = |shares: u64| 1 + ((shares - 2) * 9_999) / 262_142;
        for shares in [2, 512, 1024, 2048, 262_144] {
            let back = weight_to_shares(to_weight(shares));
            assert!(back.abs_diff(shares) <= 27, "{shares} -> {back}");
        }
        assert_eq!(weight_to_shares(1), 2);
        assert_eq!(weight_to_shares(10_000), 262_144);
    }
}
