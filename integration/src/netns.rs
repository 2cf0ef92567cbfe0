//! Network namespaces a test owns: its "node" (where the daemon, its
//! bridge and its nftables rules live) and any "outside" hosts, so no test
//! touches the host's network or another test's.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// A fresh namespace with loopback up.
    pub fn new(prefix: &str) -> NetNs {
        let name = format!("{prefix}-{}", &crate::random_suffix()[..8]);
        crate::run(Command::new("ip").args(["netns", "add", &name])).expect("ip netns add");
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A command that runs in this namespace (only the network namespace
    /// changes: mounts, PIDs and cgroups stay the test's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        c
    }

    /// `ip ARGS` in this namespace; panics on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        crate::run(Command::new("ip").arg("-n").arg(&self.name).args(args)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Run `program args` here; stdout, or the failure.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        crate::run(self.command(program).args(args))
    }

    /// Run `f` on a thread inside this namespace (sockets it opens belong
    /// to the namespace).
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    }

    /// Is something listening on 127.0.0.1:`port` here?
    pub fn listening(&self, port: u16) -> bool {
        self.within(move || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
    }

    /// Connect two namespaces with a veth pair and addresses (CIDR
    /// strings), both ends up.
    pub fn link(&self, other: &NetNs, here: &str, there: &str) {
        let a = format!("v{}", &crate::random_suffix()[..8]);
        let b = format!("v{}", &crate::random_suffix()[..8]);
        self.ip(&[
            "link",
            "add",
            &a,
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            &other.name,
        ]);
        self.ip(&["addr", "add", here, "dev", &a]);
        self.ip(&["link", "set", &a, "up"]);
        other.ip(&["addr", "add", there, "dev", &b]);
        other.ip(&["link", "set", &b, "up"]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}
