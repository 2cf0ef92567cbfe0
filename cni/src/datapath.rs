//! The kernel operations of ADD, DEL, CHECK, STATUS and GC, behind a trait
//! so the orchestration in `plugin.rs` (ordering, rollback, idempotence)
//! can be tested without privileges against a fake.
//!
//! "Host" means the network namespace of the calling thread (the node);
//! "container" the namespace entered with [`Datapath::enter_netns`].

use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::Path;

use ipnet::IpNet;

use crate::netlink::{self, KernelRoute, Link, Netlink, VethRequest};
use crate::netns::{self, Netns};
use crate::nft;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error(transparent)]
    Nft(#[from] nft::Error),
    #[error("sysctl {key}: {source}")]
    Sysctl { key: String, source: io::Error },
    #[error("{0} exists and is not a bridge")]
    NotABridge(String),
    #[error("an interface named {0} already exists")]
    Exists(String),
    #[error("no container netns entered")]
    NoNetns,
    #[error("link {0} disappeared")]
    Vanished(String),
}

/// What [`Datapath::create_veth`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VethSpec {
    pub host_name: String,
    pub host_mac: [u8; 6],
    pub ifname: String,
    pub container_mac: [u8; 6],
    pub bridge: u32,
    pub mtu: Option<u32>,
    pub hairpin: bool,
}

/// Kernel operations the verbs are made of.
pub(crate) trait Datapath {
    /// Open the container's netns; `Ok(false)` when it does not exist.
    fn enter_netns(&mut self, path: &Path) -> Result<bool, Error>;
    /// Link `name` in the container netns.
    fn container_link(&mut self, name: &str) -> Result<Option<Link>, Error>;
    /// Create the bridge if needed; MTU, promiscuity, up.
    fn ensure_bridge(&mut self, name: &str, mtu: Option<u32>, promisc: bool) -> Result<Link, Error>;
    /// Add an address to a host link (present already is fine).
    fn add_host_address(&mut self, index: u32, addr: IpNet) -> Result<(), Error>;
    /// Host link by name.
    fn host_link(&mut self, name: &str) -> Result<Option<Link>, Error>;
    /// Host link by index.
    fn host_link_by_index(&mut self, index: u32) -> Result<Option<Link>, Error>;
    /// Write a host sysctl (`net/ipv4/ip_forward` style path) if it differs.
    fn sysctl(&mut self, key: &str, value: &str) -> Result<(), Error>;
    /// Create the veth pair (container end in the entered netns), attach
    /// the host end to the bridge and bring it up. [`Error::Exists`] when
    /// a name is taken; nothing is left behind on error.
    fn create_veth(&mut self, spec: &VethSpec) -> Result<(), Error>;
    /// Delete a host link by name (its veth peer goes with it).
    fn delete_host_link(&mut self, name: &str) -> Result<(), Error>;
    /// Addresses, up, loopback up, routes in the container.
    fn configure_container(
        &mut self,
        ifname: &str,
        addrs: &[IpNet],
        routes: &[(IpNet, Option<IpAddr>)],
    ) -> Result<Link, Error>;
    /// Delete a link in the container netns.
    fn delete_container_link(&mut self, index: u32) -> Result<(), Error>;
    /// Addresses of a container link.
    fn container_addresses(&mut self, index: u32) -> Result<Vec<IpNet>, Error>;
    /// The container's main routing table.
    fn container_routes(&mut self) -> Result<Vec<KernelRoute>, Error>;
    /// Run one nft transaction.
    fn nft(&mut self, script: &str) -> Result<(), Error>;
    /// `nft -j list table inet <table>`; `None` when absent.
    fn nft_list(&mut self, table: &str) -> Result<Option<String>, Error>;
    /// Whether the `nft` binary exists.
    fn nft_available(&mut self) -> bool;
}

/// The real kernel.
pub(crate) struct Kernel {
    host: Option<Netlink>,
    netns: Option<Netns>,
}

impl Kernel {
    pub(crate) fn new() -> Kernel {
        Kernel {
            host: None,
            netns: None,
        }
    }

    fn host(&mut self) -> Result<&mut Netlink, Error> {
        if self.host.is_none() {
            self.host = Some(Netlink::open()?);
        }
        Ok(self.host.as_mut().expect("just opened"))
    }

    fn ns(&mut self) -> Result<&mut Netns, Error> {
        self.netns.as_mut().ok_or(Error::NoNetns)
    }
}

impl Datapath for Kernel {
    fn enter_netns(&mut self, path: &Path) -> Result<bool, Error> {
        match Netns::open(path) {
            Ok(ns) => {
                self.netns = Some(ns);
                Ok(true)
            }
            Err(e) if e.is_missing() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn container_link(&mut self, name: &str) -> Result<Option<Link>, Error> {
        Ok(self.ns()?.nl.link_by_name(name)?)
    }

    fn ensure_bridge(&mut self, name: &str, mtu: Option<u32>, promisc: bool) -> Result<Link, Error> {
        let nl = self.host()?;
        let link = match nl.link_by_name(name)? {
            Some(link) => link,
            None => {
                match nl.create_bridge(name, random_mac(), mtu) {
                    Ok(()) => {}
                    // Another ADD created it in the meantime.
                    Err(e) if e.errno() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                nl.link_by_name(name)?.ok_or_else(|| Error::Vanished(name.into()))?
            }
        };
        if link.kind.as_deref() != Some("bridge") {
            return Err(Error::NotABridge(name.into()));
        }
        let set_mtu = mtu.filter(|m| *m != link.mtu);
        let set_promisc = (promisc && !link.promisc).then_some(true);
        if !link.up || set_mtu.is_some() || set_promisc.is_some() {
            nl.set_link(link.index, Some(true), set_promisc, set_mtu)?;
        }
        Ok(link)
    }

    fn add_host_address(&mut self, index: u32, addr: IpNet) -> Result<(), Error> {
        self.host()?.add_address(index, addr)?;
        Ok(())
    }

    fn host_link(&mut self, name: &str) -> Result<Option<Link>, Error> {
        Ok(self.host()?.link_by_name(name)?)
    }

    fn host_link_by_index(&mut self, index: u32) -> Result<Option<Link>, Error> {
        Ok(self.host()?.link_by_index(index)?)
    }

    fn sysctl(&mut self, key: &str, value: &str) -> Result<(), Error> {
        // /proc/sys/net resolves against the namespace of the thread doing
        // the lookup: the caller's, i.e. the node's.
        let path = format!("/proc/sys/{key}");
        let err = |source| Error::Sysctl {
            key: key.replace('/', "."),
            source,
        };
        if std::fs::read_to_string(&path).map_err(err)?.trim() == value {
            return Ok(());
        }
        std::fs::write(&path, value).map_err(err)
    }

    fn create_veth(&mut self, spec: &VethSpec) -> Result<(), Error> {
        self.host()?;
        let ns = self.netns.as_ref().ok_or(Error::NoNetns)?;
        let netns_fd = ns.file.as_fd();
        let nl = self.host.as_mut().expect("opened above");
        let req = VethRequest {
            host_name: &spec.host_name,
            host_mac: spec.host_mac,
            peer_name: &spec.ifname,
            peer_mac: spec.container_mac,
            peer_netns: netns_fd,
            master: spec.bridge,
            mtu: spec.mtu,
        };
        match nl.create_veth(&req) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EEXIST) => return Err(Error::Exists(spec.host_name.clone())),
            Err(e) => return Err(e.into()),
        }
        let up = (|| {
            let link = nl
                .link_by_name(&spec.host_name)?
                .ok_or_else(|| Error::Vanished(spec.host_name.clone()))?;
            nl.set_port_up(link.index, spec.hairpin)?;
            Ok::<u32, Error>(link.index)
        })();
        if let Err(e) = up {
            if let Ok(Some(link)) = nl.link_by_name(&spec.host_name) {
                let _ = nl.delete_link(link.index);
            }
            return Err(e);
        }
        Ok(())
    }

    fn delete_host_link(&mut self, name: &str) -> Result<(), Error> {
        let nl = self.host()?;
        if let Some(link) = nl.link_by_name(name)? {
            match nl.delete_link(link.index) {
                Err(e) if e.errno() != Some(libc::ENODEV) => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    fn configure_container(
        &mut self,
        ifname: &str,
        addrs: &[IpNet],
        routes: &[(IpNet, Option<IpAddr>)],
    ) -> Result<Link, Error> {
        let nl = &mut self.ns()?.nl;
        let link = nl.link_by_name(ifname)?.ok_or_else(|| Error::Vanished(ifname.into()))?;
        for addr in addrs {
            nl.add_address(link.index, *addr)?;
        }
        nl.set_link(link.index, Some(true), None, None)?;
        // The loopback device is index 1 in every network namespace.
        nl.set_link(1, Some(true), None, None)?;
        // Routes through a gateway need the link up (and its prefix route).
        for (dst, gw) in routes {
            nl.add_route(*dst, *gw, link.index)?;
        }
        Ok(link)
    }

    fn delete_container_link(&mut self, index: u32) -> Result<(), Error> {
        match self.ns()?.nl.delete_link(index) {
            Err(e) if e.errno() != Some(libc::ENODEV) => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn container_addresses(&mut self, index: u32) -> Result<Vec<IpNet>, Error> {
        Ok(self.ns()?.nl.addresses(index)?)
    }

    fn container_routes(&mut self) -> Result<Vec<KernelRoute>, Error> {
        Ok(self.ns()?.nl.routes()?)
    }

    fn nft(&mut self, script: &str) -> Result<(), Error> {
        Ok(nft::run(script)?)
    }

    fn nft_list(&mut self, table: &str) -> Result<Option<String>, Error> {
        Ok(nft::list(table)?)
    }

    fn nft_available(&mut self) -> bool {
        nft::available()
    }
}

/// Random bytes from the kernel.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: the pointer and length describe the unfilled tail of
        // `buf`, which lives for the whole call.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // getrandom cannot fail on a kernel this recent once the pool is
            // initialised; fall back to something unique enough for names.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let seed = t.as_nanos() ^ (u128::from(std::process::id()) << 64);
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (seed >> ((i % 16) * 8)) as u8;
            }
            break;
        }
    }
    buf
}

/// A random unicast, locally administered MAC address.
pub(crate) fn random_mac() -> [u8; 6] {
    let mut mac = random_bytes::<6>();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}
