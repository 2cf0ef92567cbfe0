//! CNI ADD/DEL latency: nodelet's bridge plugin called in-process
//! (`nodelet_cni::add`/`del`, what the daemon does) against Debian's
//! reference plugins executed as a runtime executes a conflist
//! (`bridge` with `host-local` IPAM, then `portmap`; ADD in order with
//! `prevResult` chaining, DEL in reverse with the final result as
//! `prevResult`).
//!
//! Both get the same network shape: a /16 subnet, `isGateway`, `ipMasq`,
//! one TCP port mapping. Every iteration attaches a fresh network
//! namespace (created and removed outside the timed calls); the two are
//! interleaved run by run so background noise hits both alike, after one
//! untimed warm-up each.
//!
//! The whole benchmark runs in a private "node" network namespace: the
//! process re-executes itself under `unshare --net`, so the bridges,
//! veths, sysctls, iptables and nft rules all vanish with it and the host
//! is never touched.
//!
//! Usage: bench-cni [RUNS]   (default 50)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nodelet_integration::bench::{median, ms, percentile};
use serde_json::{json, Value};

const INNER: &str = "NODELET_BENCH_CNI_INNER";
const REFERENCE_DIR: &str = "/usr/lib/cni";

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(50);
    nodelet_integration::require_root();
    if std::env::var_os(INNER).is_none() {
        // Re-run ourselves in a network namespace of our own (the "node").
        let status = Command::new("unshare")
            .args(["--net", "--"])
            .arg(std::env::current_exe()?)
            .arg(runs.to_string())
            .env(INNER, "1")
            .status()
            .context("unshare --net")?;
        std::process::exit(status.code().unwrap_or(1));
    }
    run(runs)
}

/// A named netns for one attachment, removed on drop.
struct Pod {
    name: String,
}

impl Pod {
    fn new(i: usize) -> anyhow::Result<Pod> {
        let name = format!("bench-cni-{}-{i}", std::process::id());
        sh(&["ip", "netns", "add", &name])?;
        Ok(Pod { name })
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("{args:?}"))?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Execute a reference plugin as libcni does: env + config on stdin.
fn exec_plugin(plugin: &str, command: &str, conf: &Value, id: &str, netns: &Path) -> anyhow::Result<Value> {
    let mut child = Command::new(Path::new(REFERENCE_DIR).join(plugin))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", REFERENCE_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{plugin} (install containernetworking-plugins)"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(&serde_json::to_vec(conf)?)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{plugin} {command}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The reference conflist, one entry per plugin, as libcni builds each
/// plugin's config (name and cniVersion from the list; runtimeConfig only
/// for the plugin declaring the capability).
struct Reference {
    bridge: Value,
    portmap: Value,
}

impl Reference {
    fn add(&self, id: &str, netns: &Path) -> anyhow::Result<Value> {
        let result = exec_plugin("bridge", "ADD", &self.bridge, id, netns)?;
        let mut pm = self.portmap.clone();
        pm["prevResult"] = result;
        exec_plugin("portmap", "ADD", &pm, id, netns)
    }

    fn del(&self, id: &str, netns: &Path, result: &Value) -> anyhow::Result<()> {
        for conf in [&self.portmap, &self.bridge] {
            let mut c = conf.clone();
            c["prevResult"] = result.clone();
            let plugin = c["type"].as_str().unwrap_or_default().to_string();
            exec_plugin(&plugin, "DEL", &c, id, netns)?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    del: Vec<Duration>,
    both: Vec<Duration>,
}

impl Samples {
    fn push(&mut self, add: Duration, del: Duration) {
        self.add.push(add);
        self.del.push(del);
        self.both.push(add + del);
    }
}

fn run(runs: usize) -> anyhow::Result<()> {
    sh(&["ip", "link", "set", "lo", "up"])?;
    let dir = tempfile::tempdir()?;
    let port = json!([{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]);

    let ours = nodelet_cni::parse_config(&serde_json::to_vec(&json!({
        "cniVersion": "1.1.0", "name": "bench-nodelet", "type": "nodelet-bridge", "bridge": "nlbr0",
        "isGateway": true, "ipMasq": true,
        "ipam": {"type": "host-local", "subnet": "10.251.0.0/16", "dataDir": dir.path().join("nodelet")},
        "runtimeConfig": {"portMappings": port},
    }))?)
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let reference = Reference {
        bridge: json!({
            "cniVersion": "1.0.0", "name": "bench-reference", "type": "bridge", "bridge": "refbr0",
            "isGateway": true, "ipMasq": true,
            "ipam": {"type": "host-local", "subnet": "10.250.0.0/16", "dataDir": dir.path().join("reference")},
        }),
        portmap: json!({
            "cniVersion": "1.0.0", "name": "bench-reference", "type": "portmap",
            "capabilities": {"portMappings": true}, "snat": true,
            "runtimeConfig": {"portMappings": [{"hostPort": 28080, "containerPort": 80, "protocol": "tcp"}]},
        }),
    };

    let nodelet_once = |i: usize| -> anyhow::Result<(Duration, Duration)> {
        let pod = Pod::new(i)?;
        let args = nodelet_cni::Args {
            container_id: format!("nodelet-{i}"),
            netns: pod.path(),
            ifname: "eth0".into(),
            args: vec![],
        };
        let t = Instant::now();
        let result = nodelet_cni::add(&ours, &args).map_err(|e| anyhow::anyhow!("nodelet ADD: {e}"))?;
        let add = t.elapsed();
        if result.ips().is_empty() {
            bail!("nodelet ADD returned no address");
        }
        let t = Instant::now();
        nodelet_cni::del(&ours, &args).map_err(|e| anyhow::anyhow!("nodelet DEL: {e}"))?;
        Ok((add, t.elapsed()))
    };
    let reference_once = |i: usize| -> anyhow::Result<(Duration, Duration)> {
        let pod = Pod::new(i)?;
        let id = format!("reference-{i}");
        let t = Instant::now();
        let result = reference.add(&id, &pod.path())?;
        let add = t.elapsed();
        if result["ips"].as_array().is_none_or(Vec::is_empty) {
            bail!("reference ADD returned no address: {result}");
        }
        let t = Instant::now();
        reference.del(&id, &pod.path(), &result)?;
        Ok((add, t.elapsed()))
    };

    // Warm-up: page cache, first bridge creation, nft/iptables tables.
    nodelet_once(runs)?;
    reference_once(runs + 1)?;
    let (mut n, mut r) = (Samples::default(), Samples::default());
    for i in 0..runs {
        let (a, d) = nodelet_once(i)?;
        n.push(a, d);
        let (a, d) = reference_once(i)?;
        r.push(a, d);
    }

    println!(
        "CNI attach/detach, {runs} runs each, a fresh netns per run, in a private node netns \
         (/16, isGateway, ipMasq, one port mapping)"
    );
    println!("  nodelet:   nodelet_cni::add/del in-process (nodelet-bridge, built-in host-local IPAM, nftables)");
    println!("  reference: {REFERENCE_DIR}/bridge (+ host-local) then portmap, executed with env + stdin\n");
    println!("{:<22}{:>12}{:>12}", "", "median ms", "p90 ms");
    let mut ratios = Vec::new();
    for (what, ns, rs) in [
        ("ADD", &mut n.add, &mut r.add),
        ("DEL", &mut n.del, &mut r.del),
        ("ADD+DEL", &mut n.both, &mut r.both),
    ] {
        let (nm, np) = (median(ns), percentile(ns, 90));
        let (rm, rp) = (median(rs), percentile(rs, 90));
        println!("{:<22}{:>12.2}{:>12.2}", format!("nodelet {what}"), ms(nm), ms(np));
        println!("{:<22}{:>12.2}{:>12.2}", format!("reference {what}"), ms(rm), ms(rp));
        ratios.push(format!("{what} {:.1}x", rm.as_secs_f64() / nm.as_secs_f64()));
    }
    println!("\nreference / nodelet (medians): {}", ratios.join(", "));
    Ok(())
}
