//! Privileged test plumbing. Every test builds its own little world of
//! network namespaces: a "node" (where the plugin runs, so the bridge, the
//! host veths, sysctls and nft tables all land there and never on the
//! host), containers, and optionally an "outside" reached from the node
//! through a veth. Dropping a namespace removes everything in it.

#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the nodelet-cni integration tests need root (they create network namespaces)"
    );
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nodelet-cni")
}

/// Run a command; panics with its output when it cannot be started.
pub fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Run a command that must succeed; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("ncni-{tag}-{}", std::process::id());
        let _ = sh(&["ip", "netns", "del", &name]);
        ok(&["ip", "netns", "add", &name]);
        // Loopback up: 127.0.0.1 must work inside (port-mapping tests).
        ok(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Run a command inside; returns the output.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        ok(&full)
    }

    pub fn ping(&self, ip: &str) -> bool {
        let applet = if ip.contains(':') { "ping6" } else { "ping" };
        // The first packet may wait for ARP/ND; allow a couple of tries.
        self.run(&["busybox", applet, "-c", "2", "-W", "2", ip])
            .status
            .success()
    }

    /// Link names in this namespace.
    pub fn links(&self) -> Vec<String> {
        let out = ok(&["ip", "-n", &self.name, "-o", "link", "show"]);
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    pub fn veths(&self) -> Vec<String> {
        self.links().into_iter().filter(|l| l.starts_with("veth")).collect()
    }

    /// The nft ruleset of this namespace.
    pub fn nft(&self) -> String {
        self.ok(&["nft", "list", "ruleset"])
    }

    /// TCP connect to `addr:port` from inside; what the server sent.
    pub fn tcp(&self, addr: &str, port: u16) -> Option<String> {
        let out = self.run(&["busybox", "nc", "-w", "3", addr, &port.to_string()]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// A busybox TCP server answering `reply` to every connection on
    /// `port` (all addresses, both families), stopped on drop.
    pub fn serve(&self, port: u16, reply: &str) -> Server {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "busybox",
                "nc",
                "-ll",
                "-p",
                &port.to_string(),
                "-e",
                "echo",
                reply,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start busybox nc");
        // Wait until it listens.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let out = self.run(&["busybox", "netstat", "-ltn"]);
            if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child }
    }

    /// Accept one TCP connection on `port` in this namespace from a thread
    /// of our own that entered it; returns the peer address seen.
    pub fn accept_one(&self, port: u16, client: impl FnOnce()) -> Option<SocketAddr> {
        let path = self.path();
        let (tx, rx) = mpsc::channel();
        let server = std::thread::spawn(move || {
            let ns = std::fs::File::open(path).unwrap();
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let listener = TcpListener::bind(("0.0.0.0", port)).unwrap();
            listener.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok((mut conn, peer)) = listener.accept() {
                    let _ = conn.write_all(b"seen\n");
                    return Some(peer);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        });
        rx.recv().unwrap();
        client();
        server.join().unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

pub struct Server {
    child: std::process::Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A network: config template, a node netns to run the plugin in, and a
/// data directory of its own.
pub struct Net {
    pub node: Netns,
    pub data: tempfile::TempDir,
    pub name: String,
    pub bridge: String,
}

/// What one plugin run returned.
#[derive(Debug)]
pub struct Reply {
    pub ok: bool,
    pub json: Value,
    pub raw: String,
}

impl Reply {
    pub fn code(&self) -> u64 {
        self.json["code"].as_u64().unwrap_or(0)
    }
}

impl Net {
    pub fn new(tag: &str) -> Net {
        Net {
            node: Netns::new(&format!("{tag}-n")),
            data: tempfile::tempdir().unwrap(),
            name: format!("net-{tag}"),
            bridge: format!("nbr-{}", &tag[..tag.len().min(10)]),
        }
    }

    /// The network directory of the IPAM store.
    pub fn ipam_dir(&self) -> PathBuf {
        self.data.path().join(&self.name)
    }

    /// Allocation files (IP names) in the store.
    pub fn allocations(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.ipam_dir())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// A config: `version`, the given `ipam.ranges` and extra top-level
    /// keys (JSON fragment without braces, may be empty).
    pub fn conf(&self, version: &str, ranges: &str, extra: &str) -> Value {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(",{extra}")
        };
        let text = format!(
            r#"{{"cniVersion":"{version}","name":"{}","type":"nodelet-bridge","bridge":"{}",
                "ipam":{{"type":"host-local","ranges":{ranges},"dataDir":"{}"}}{extra}}}"#,
            self.name,
            self.bridge,
            self.data.path().display()
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// Run the plugin binary in the node netns as a runtime does.
    pub fn cni(&self, command: &str, conf: &Value, id: &str, netns: Option<&Path>, ifname: &str) -> Reply {
        self.cni_env(
            command,
            &serde_json::to_vec(conf).unwrap(),
            &[
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", &netns.map(|p| p.display().to_string()).unwrap_or_default()),
                ("CNI_IFNAME", ifname),
                ("CNI_PATH", "/usr/lib/cni"),
                ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"),
            ],
        )
    }

    /// Run the plugin with exactly `env` (plus CNI_COMMAND and PATH).
    pub fn cni_env(&self, command: &str, stdin: &[u8], env: &[(&str, &str)]) -> Reply {
        self.plugin_env(bin(), command, stdin, env)
    }

    /// Run another plugin binary (e.g. one of Debian's) as a runtime does,
    /// in the node netns.
    pub fn plugin(&self, path: &str, command: &str, conf: &Value, id: &str, netns: &Path) -> Reply {
        self.plugin_env(
            path,
            command,
            &serde_json::to_vec(conf).unwrap(),
            &[
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", &netns.display().to_string()),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/usr/lib/cni"),
            ],
        )
    }

    fn plugin_env(&self, path: &str, command: &str, stdin: &[u8], env: &[(&str, &str)]) -> Reply {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node.name, path])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            if !v.is_empty() {
                cmd.env(k, v);
            }
        }
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        let raw = String::from_utf8_lossy(&out.stdout).into_owned();
        let json = if raw.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&raw).unwrap_or(Value::Null)
        };
        if !out.status.success() {
            assert!(
                json.is_object(),
                "a failing plugin prints an error object: {raw:?} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                json["code"].as_u64().is_some() && json["msg"].is_string(),
                "error shape: {raw}"
            );
            assert!(json["cniVersion"].is_string(), "error shape: {raw}");
        }
        Reply {
            ok: out.status.success(),
            json,
            raw,
        }
    }

    /// ADD that must succeed.
    pub fn add(&self, conf: &Value, id: &str, c: &Netns) -> Value {
        let r = self.cni("ADD", conf, id, Some(&c.path()), "eth0");
        assert!(r.ok, "ADD {id} failed: {}", r.raw);
        r.json
    }

    /// DEL that must succeed and print nothing.
    pub fn del(&self, conf: &Value, id: &str, c: Option<&Netns>) {
        let path = c.map(Netns::path);
        let r = self.cni("DEL", conf, id, path.as_deref(), "eth0");
        assert!(r.ok, "DEL {id} failed: {}", r.raw);
        assert!(r.raw.trim().is_empty(), "DEL prints nothing: {}", r.raw);
    }

    /// `conf` with `prevResult` set (what a runtime passes to CHECK).
    pub fn with_prev(conf: &Value, result: &Value) -> Value {
        let mut c = conf.clone();
        c["prevResult"] = result.clone();
        c
    }
}

/// The container's first IPv4 address from a result.
pub fn ip4(result: &Value) -> String {
    addr_of(result, false)
}

pub fn ip6(result: &Value) -> String {
    addr_of(result, true)
}

fn addr_of(result: &Value, v6: bool) -> String {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .map(|a| a.split('/').next().unwrap().to_string())
        .find(|a| a.contains(':') == v6)
        .unwrap_or_else(|| panic!("no address in {result}"))
}
