//! The verbs, as sequences of IPAM, datapath and nftables steps. ADD undoes
//! what it made when a later step fails; DEL tolerates whatever is already
//! gone; GC frees what no valid attachment owns.

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{valid_container_id, valid_ifname, BridgeConf};
use crate::datapath::{self, random_bytes, random_mac, Datapath, VethSpec};
use crate::ipam::{self, Allocation, Store};
use crate::netlink::{format_mac, Link};
use crate::nft::{self, Record, Ruleset};
use crate::result::{CniResult, Interface, IpConfig, Route};
use crate::store::FileStore;
use crate::{code, Args, CniError};

/// Opens (and locks) the network's allocation store.
pub(crate) type StoreOpener<'a> = dyn Fn() -> io::Result<Box<dyn Store>> + 'a;

pub(crate) fn file_store_opener(conf: &BridgeConf) -> impl Fn() -> io::Result<Box<dyn Store>> + '_ {
    move || Ok(Box::new(FileStore::open(&conf.ipam.data_dir, &conf.name)?) as Box<dyn Store>)
}

fn store_err(conf: &BridgeConf, e: io::Error) -> CniError {
    CniError::with_details(
        code::IO,
        format!("IPAM store {}", conf.ipam.data_dir.join(&conf.name).display()),
        e.to_string(),
    )
}

fn open(open_store: &StoreOpener<'_>, conf: &BridgeConf) -> Result<Box<dyn Store>, CniError> {
    open_store().map_err(|e| store_err(conf, e))
}

fn ipam_err(conf: &BridgeConf, e: ipam::Error) -> CniError {
    match e {
        ipam::Error::Exhausted(_) => CniError::new(code::NO_FREE_IP, e.to_string()),
        ipam::Error::AlreadyAllocated { .. } => CniError::new(code::ALREADY_ALLOCATED, e.to_string()),
        ipam::Error::Store(io) => store_err(conf, io),
    }
}

fn dp_err(e: datapath::Error) -> CniError {
    use datapath::Error as E;
    let c = match &e {
        E::Nft(n) if n.is_conflict() => code::HOST_PORT_CONFLICT,
        E::Nft(_) => code::NFTABLES,
        E::Sysctl { .. } => code::SYSCTL,
        E::Exists(_) => code::INTERFACE_EXISTS,
        E::Netns(_) | E::NoNetns => code::UNKNOWN_CONTAINER,
        E::Netlink(_) | E::NotABridge(_) | E::Vanished(_) => code::NETLINK,
    };
    let msg = match c {
        code::HOST_PORT_CONFLICT => "a host port is already mapped to another container",
        code::NFTABLES => "nftables update failed",
        code::SYSCTL => "cannot write sysctl",
        code::INTERFACE_EXISTS => "interface already exists",
        code::UNKNOWN_CONTAINER => "cannot use the container's network namespace",
        _ => "network setup failed",
    };
    CniError::with_details(c, msg, e.to_string())
}

fn validate_args(args: &Args, need_netns: bool) -> Result<(), CniError> {
    if !valid_container_id(&args.container_id) {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "invalid CNI_CONTAINERID {:?}: letters, digits, '_', '.', '-'",
                args.container_id
            ),
        ));
    }
    if !valid_ifname(&args.ifname) {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("invalid CNI_IFNAME {:?}", args.ifname),
        ));
    }
    if need_netns && args.netns.as_os_str().is_empty() {
        return Err(CniError::new(code::INVALID_ENV, "CNI_NETNS is empty"));
    }
    Ok(())
}

fn ruleset(conf: &BridgeConf) -> (String, Vec<IpNet>, Vec<IpNet>) {
    let subnets: Vec<IpNet> = conf.ipam.range_sets.iter().flatten().map(|r| r.subnet).collect();
    let (v4, v6) = subnets.into_iter().partition(|n| n.addr().is_ipv4());
    (nft::table_name(&conf.name), v4, v6)
}

/// The routes of the result: `ipam.routes`, then the default routes of
/// isDefaultGateway (unless ipam already has one for that family).
fn result_routes(conf: &BridgeConf, allocs: &[Allocation]) -> Vec<Route> {
    let mut routes = conf.ipam.routes.clone();
    if conf.is_default_gateway {
        for a in allocs {
            let v4 = a.address.addr().is_ipv4();
            let dst: IpNet = if v4 { "0.0.0.0/0" } else { "::/0" }.parse().expect("literal");
            if !routes.iter().any(|r| r.dst == dst) {
                routes.push(Route {
                    dst,
                    gw: Some(a.gateway),
                    ..Default::default()
                });
            }
        }
    }
    routes
}

/// What ADD made so far, for rollback.
#[derive(Default)]
struct Made {
    allocated: bool,
    veth: Option<String>,
    record: bool,
}

pub(crate) fn add(
    dp: &mut dyn Datapath,
    open_store: &StoreOpener<'_>,
    conf: &BridgeConf,
    args: &Args,
) -> Result<CniResult, CniError> {
    validate_args(args, true)?;
    if !dp.enter_netns(&args.netns).map_err(dp_err)? {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!(
                "network namespace {} does not exist (or is not a netns)",
                args.netns.display()
            ),
        ));
    }
    if dp.container_link(&args.ifname).map_err(dp_err)?.is_some() {
        return Err(exists(args));
    }
    let allocs = {
        let mut store = open(open_store, conf)?;
        ipam::allocate(&conf.ipam, &mut *store, &args.container_id, &args.ifname).map_err(|e| ipam_err(conf, e))?
    };
    let mut made = Made {
        allocated: true,
        ..Default::default()
    };
    match add_attached(dp, open_store, conf, args, &allocs, &mut made) {
        Ok(result) => Ok(result),
        Err(e) => {
            rollback(dp, open_store, args, &made);
            Err(e)
        }
    }
}

fn exists(args: &Args) -> CniError {
    CniError::new(
        code::INTERFACE_EXISTS,
        format!("interface {} already exists in {}", args.ifname, args.netns.display()),
    )
}

fn add_attached(
    dp: &mut dyn Datapath,
    open_store: &StoreOpener<'_>,
    conf: &BridgeConf,
    args: &Args,
    allocs: &[Allocation],
    made: &mut Made,
) -> Result<CniResult, CniError> {
    let bridge = dp
        .ensure_bridge(&conf.bridge, conf.mtu, conf.promisc_mode)
        .map_err(dp_err)?;
    if conf.is_gateway {
        for a in allocs {
            let gw = IpNet::new(a.gateway, a.address.prefix_len()).expect("prefix of a parsed subnet");
            dp.add_host_address(bridge.index, gw).map_err(dp_err)?;
        }
    }
    let has_v4 = allocs.iter().any(|a| a.address.addr().is_ipv4());
    let has_v6 = allocs.iter().any(|a| a.address.addr().is_ipv6());
    if has_v4 {
        dp.sysctl("net/ipv4/ip_forward", "1").map_err(dp_err)?;
    }
    if has_v6 {
        dp.sysctl("net/ipv6/conf/all/forwarding", "1").map_err(dp_err)?;
    }
    if has_v4 && !conf.port_mappings.is_empty() {
        // 127.0.0.1:hostPort is DNAT'ed to the pod: a packet with a loopback
        // source leaving through the bridge is a martian unless the bridge
        // allows it (masquerading then gives it the bridge's address).
        dp.sysctl(&format!("net/ipv4/conf/{}/route_localnet", conf.bridge), "1")
            .map_err(dp_err)?;
    }

    let container_mac = random_mac();
    let host_mac = random_mac();
    let mut attempts = 0;
    let host_name = loop {
        let name = format!("veth{}", hex(&random_bytes::<4>()));
        let spec = VethSpec {
            host_name: name.clone(),
            host_mac,
            ifname: args.ifname.clone(),
            container_mac,
            bridge: bridge.index,
            mtu: conf.mtu,
            hairpin: conf.hairpin_mode,
        };
        match dp.create_veth(&spec) {
            Ok(()) => break name,
            Err(datapath::Error::Exists(_)) => {
                // Either end's name may be the one taken.
                if dp.container_link(&args.ifname).map_err(dp_err)?.is_some() {
                    return Err(exists(args));
                }
                attempts += 1;
                if attempts == 5 {
                    return Err(CniError::new(
                        code::NETLINK,
                        "no free host-side veth name after 5 tries",
                    ));
                }
            }
            Err(e) => return Err(dp_err(e)),
        }
    };
    made.veth = Some(host_name.clone());

    let addrs: Vec<IpNet> = allocs.iter().map(|a| a.address).collect();
    let routes = result_routes(conf, allocs);
    let programmed: Vec<(IpNet, Option<IpAddr>)> = routes
        .iter()
        .map(|r| {
            let gw = r.gw.or_else(|| {
                allocs
                    .iter()
                    .find(|a| a.address.addr().is_ipv4() == r.dst.addr().is_ipv4())
                    .map(|a| a.gateway)
            });
            (r.dst, gw)
        })
        .collect();
    let container = dp
        .configure_container(&args.ifname, &addrs, &programmed)
        .map_err(dp_err)?;

    let ips: Vec<IpAddr> = addrs.iter().map(IpNet::addr).collect();
    if conf.ip_masq || !conf.port_mappings.is_empty() {
        let (table, v4, v6) = ruleset(conf);
        let elements = nft::elements(&conf.port_mappings, &ips);
        let comment = nft::comment(&args.container_id, &args.ifname);
        if !elements.is_empty() {
            // Written before the rules exist, so a crash in between leaves
            // a record DEL or GC can act on, never rules without one.
            let record = Record {
                container_id: args.container_id.clone(),
                ifname: args.ifname.clone(),
                table: table.clone(),
                elements: elements.clone(),
            };
            let data = serde_json::to_string(&record).expect("plain data serialises");
            open(open_store, conf)?
                .put_record(&args.container_id, &args.ifname, &data)
                .map_err(|e| store_err(conf, e))?;
            made.record = true;
        }
        let rs = Ruleset {
            table: &table,
            bridge: &conf.bridge,
            v4,
            v6,
            masquerade: conf.ip_masq,
        };
        dp.nft(&nft::render_add(&rs, &elements, &comment)).map_err(dp_err)?;
    }

    let ours = CniResult {
        interfaces: vec![
            Interface {
                name: conf.bridge.clone(),
                mac: bridge.mac.clone(),
                ..Default::default()
            },
            Interface {
                name: host_name,
                mac: format_mac(&host_mac),
                ..Default::default()
            },
            Interface {
                name: args.ifname.clone(),
                mac: format_mac(&container_mac),
                mtu: Some(conf.mtu.unwrap_or(container.mtu)).filter(|m| *m != 0),
                sandbox: Some(args.netns.display().to_string()),
                ..Default::default()
            },
        ],
        ips: allocs
            .iter()
            .map(|a| IpConfig {
                address: a.address,
                gateway: Some(a.gateway),
                interface: Some(2),
            })
            .collect(),
        routes,
        dns: conf.dns.clone(),
    };
    Ok(match &conf.prev_result {
        Some(prev) => prev.clone().merge(ours),
        None => ours,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Undo a failed ADD; best effort (each step is also what DEL/GC would do).
fn rollback(dp: &mut dyn Datapath, open_store: &StoreOpener<'_>, args: &Args, made: &Made) {
    if let Some(name) = &made.veth {
        let _ = dp.delete_host_link(name);
    }
    if let Ok(mut store) = open_store() {
        if made.record {
            let _ = store.remove_record(&args.container_id, &args.ifname);
        }
        if made.allocated {
            let _ = ipam::release(&mut *store, &args.container_id, &args.ifname);
        }
    }
}

/// Whether `link` (in the container) is a veth whose host end is a port of
/// our bridge: DEL must not delete an interface another plugin made. The
/// two ends must point at each other (indexes are per namespace, so one
/// direction alone could match an unrelated link).
fn ours(dp: &mut dyn Datapath, conf: &BridgeConf, link: &Link) -> Result<bool, CniError> {
    Ok(host_end(dp, conf, link)?.is_some())
}

/// The host end of container link `link` if it is attached to our bridge.
fn host_end(dp: &mut dyn Datapath, conf: &BridgeConf, link: &Link) -> Result<Option<Link>, CniError> {
    if link.kind.as_deref() != Some("veth") || link.peer_netnsid.is_none() {
        return Ok(None);
    }
    let (Some(peer), Some(bridge)) = (link.peer, dp.host_link(&conf.bridge).map_err(dp_err)?) else {
        return Ok(None);
    };
    Ok(dp
        .host_link_by_index(peer)
        .map_err(dp_err)?
        .filter(|h| h.master == Some(bridge.index) && h.peer == Some(link.index)))
}

pub(crate) fn del(
    dp: &mut dyn Datapath,
    open_store: &StoreOpener<'_>,
    conf: &BridgeConf,
    args: &Args,
) -> Result<(), CniError> {
    validate_args(args, false)?;
    if !args.netns.as_os_str().is_empty() && dp.enter_netns(&args.netns).map_err(dp_err)? {
        if let Some(link) = dp.container_link(&args.ifname).map_err(dp_err)? {
            if ours(dp, conf, &link)? {
                dp.delete_container_link(link.index).map_err(dp_err)?;
            }
        }
    }
    // One open store (the network's lock) for the rest: nft updates of
    // DELs are serialised, and "last attachment" stays true until done.
    let (id, ifname) = (&args.container_id, &args.ifname);
    let mut store = open(open_store, conf)?;
    let record = store.get_record(id, ifname).map_err(|e| store_err(conf, e))?;
    let others = store
        .list()
        .map_err(|e| store_err(conf, e))?
        .iter()
        .any(|r| !r.owned_by(id, ifname));
    if !others && dp.nft_available() {
        // The last attachment: dropping the table takes its elements along.
        dp.nft(&nft::render_drop_table(&nft::table_name(&conf.name)))
            .map_err(dp_err)?;
    } else if let Some(data) = &record {
        remove_port_mappings(dp, conf, data, id, ifname)?;
    }
    if record.is_some() {
        store.remove_record(id, ifname).map_err(|e| store_err(conf, e))?;
    }
    ipam::release(&mut *store, id, ifname).map_err(|e| ipam_err(conf, e))?;
    Ok(())
}

/// With no attachment left in the network, remove its nft table: its
/// chains (masquerade, DNAT through the port maps) serve no one, and a node
/// without pods keeps no rules. Called with the store open, i.e. the
/// network's lock held, so no ADD allocates meanwhile; the next ADD makes
/// the table again.
fn drop_table_if_unused(dp: &mut dyn Datapath, store: &mut dyn Store, conf: &BridgeConf) -> Result<(), CniError> {
    if !store.list().map_err(|e| store_err(conf, e))?.is_empty() || !dp.nft_available() {
        return Ok(());
    }
    let table = nft::table_name(&conf.name);
    dp.nft(&nft::render_drop_table(&table)).map_err(dp_err)
}

/// Remove an attachment's map elements: from its record in one nft run,
/// or, if that fails (record damaged, elements changed), by listing the
/// table and deleting what carries the attachment's comment.
fn remove_port_mappings(
    dp: &mut dyn Datapath,
    conf: &BridgeConf,
    record: &str,
    id: &str,
    ifname: &str,
) -> Result<(), CniError> {
    let comment = nft::comment(id, ifname);
    if let Some(rec) = nft::parse_record(record) {
        if dp.nft(&nft::render_remove(&rec, &comment)).is_ok() {
            return Ok(());
        }
    }
    let table = nft::table_name(&conf.name);
    sweep(dp, &table, |c| c == comment)
}

/// Delete the table's elements whose comment matches `stale`.
fn sweep(dp: &mut dyn Datapath, table: &str, stale: impl Fn(&str) -> bool) -> Result<(), CniError> {
    let Some(listing) = dp.nft_list(table).map_err(dp_err)? else {
        return Ok(());
    };
    let doomed: Vec<nft::Listed> = nft::parse_listing(&listing)
        .map_err(|e| dp_err(e.into()))?
        .into_iter()
        .filter(|e| e.comment.as_deref().is_some_and(&stale))
        .collect();
    if doomed.is_empty() {
        return Ok(());
    }
    dp.nft(&nft::render_delete(table, &doomed)).map_err(dp_err)
}

pub(crate) fn check(
    dp: &mut dyn Datapath,
    open_store: &StoreOpener<'_>,
    conf: &BridgeConf,
    args: &Args,
) -> Result<(), CniError> {
    validate_args(args, true)?;
    let failed = |msg: String| CniError::new(code::CHECK_FAILED, msg);
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs prevResult in the config"))?;
    if !dp.enter_netns(&args.netns).map_err(dp_err)? {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!(
                "network namespace {} does not exist (or is not a netns)",
                args.netns.display()
            ),
        ));
    }
    let idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == args.ifname && i.sandbox.is_some())
        .ok_or_else(|| failed(format!("prevResult has no container interface {}", args.ifname)))?;
    let link = dp.container_link(&args.ifname).map_err(dp_err)?.ok_or_else(|| {
        failed(format!(
            "interface {} is missing from {}",
            args.ifname,
            args.netns.display()
        ))
    })?;
    if link.kind.as_deref() != Some("veth") {
        return Err(failed(format!("interface {} is not a veth", args.ifname)));
    }
    if !link.up {
        return Err(failed(format!("interface {} is down", args.ifname)));
    }
    let want_mac = &prev.interfaces[idx].mac;
    if !want_mac.is_empty() && !want_mac.eq_ignore_ascii_case(&link.mac) {
        return Err(failed(format!(
            "interface {} has MAC {}, not {want_mac}",
            args.ifname, link.mac
        )));
    }
    let expected: Vec<IpNet> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(idx))
        .map(|ip| ip.address)
        .collect();
    let actual = dp.container_addresses(link.index).map_err(dp_err)?;
    for addr in &expected {
        if !actual.contains(addr) {
            return Err(failed(format!("address {addr} is missing from {}", args.ifname)));
        }
    }
    let routes = dp.container_routes().map_err(dp_err)?;
    for r in &prev.routes {
        let dst = r.dst.trunc();
        if !routes.iter().any(|k| k.dst == dst && (r.gw.is_none() || k.gw == r.gw)) {
            return Err(failed(format!("route to {dst} is missing")));
        }
    }
    if dp
        .host_link(&conf.bridge)
        .map_err(dp_err)?
        .is_none_or(|b| b.kind.as_deref() != Some("bridge"))
    {
        return Err(failed(format!("bridge {} is missing", conf.bridge)));
    }
    if host_end(dp, conf, &link)?.is_none() {
        return Err(failed(format!(
            "the host end of {} is not attached to {}",
            args.ifname, conf.bridge
        )));
    }
    let held = {
        let mut store = open(open_store, conf)?;
        ipam::find(&mut *store, &args.container_id, &args.ifname).map_err(|e| ipam_err(conf, e))?
    };
    let ranges: Vec<IpNet> = conf.ipam.range_sets.iter().flatten().map(|r| r.subnet).collect();
    for addr in expected.iter().filter(|a| ranges.iter().any(|r| r.contains(&a.addr()))) {
        if !held.contains(&addr.addr()) {
            return Err(failed(format!("{} is not allocated to this container", addr.addr())));
        }
    }
    if !conf.port_mappings.is_empty() {
        let ips: Vec<IpAddr> = expected.iter().map(IpNet::addr).collect();
        let want = nft::elements(&conf.port_mappings, &ips).len();
        let comment = nft::comment(&args.container_id, &args.ifname);
        let table = nft::table_name(&conf.name);
        let listing = dp.nft_list(&table).map_err(dp_err)?.unwrap_or_default();
        let have = if listing.is_empty() {
            0
        } else {
            nft::parse_listing(&listing)
                .map_err(|e| dp_err(e.into()))?
                .iter()
                .filter(|e| e.comment.as_deref() == Some(comment.as_str()))
                .count()
        };
        if have != want {
            return Err(failed(format!("{have} of {want} port mappings are in place")));
        }
    }
    Ok(())
}

pub(crate) fn status(dp: &mut dyn Datapath, open_store: &StoreOpener<'_>, conf: &BridgeConf) -> Result<(), CniError> {
    let unavailable = |msg: String| CniError::new(code::NOT_AVAILABLE, msg);
    let dir = conf.ipam.data_dir.join(&conf.name);
    let mut store = open_store()
        .and_then(|mut s| s.check_writable().map(|()| s))
        .map_err(|e| unavailable(format!("IPAM data directory {} is not usable: {e}", dir.display())))?;
    let exhausted = ipam::exhausted_sets(&conf.ipam, &mut *store).map_err(|e| unavailable(e.to_string()))?;
    if !exhausted.is_empty() {
        return Err(unavailable(exhausted.join("; ")));
    }
    if conf.ip_masq && !dp.nft_available() {
        return Err(unavailable("ipMasq needs nft, which is not installed".into()));
    }
    Ok(())
}

pub(crate) fn gc(
    dp: &mut dyn Datapath,
    open_store: &StoreOpener<'_>,
    conf: &BridgeConf,
    valid: &[(String, String)],
) -> Result<(), CniError> {
    {
        let mut store = open(open_store, conf)?;
        ipam::gc(&mut *store, valid).map_err(|e| ipam_err(conf, e))?;
        for (id, ifname) in store.list_records().map_err(|e| store_err(conf, e))? {
            if !valid.iter().any(|(v_id, v_if)| *v_id == id && *v_if == ifname) {
                store.remove_record(&id, &ifname).map_err(|e| store_err(conf, e))?;
            }
        }
    }
    if dp.nft_available() {
        let keep: Vec<String> = valid.iter().map(|(id, ifname)| nft::comment(id, ifname)).collect();
        sweep(dp, &nft::table_name(&conf.name), |c| !keep.iter().any(|k| k == c))?;
    }
    let mut store = open(open_store, conf)?;
    drop_table_if_unused(dp, &mut *store, conf)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::config;
    use crate::ipam::MemStore;
    use crate::netlink::KernelRoute;

    /// A kernel in memory: links per namespace, nft elements by comment,
    /// and a step that fails on demand.
    #[derive(Default)]
    struct Fake {
        netns_exists: bool,
        host: BTreeMap<String, Link>,
        container: BTreeMap<String, Link>,
        addrs: Vec<IpNet>,
        routes: Vec<KernelRoute>,
        sysctls: BTreeMap<String, String>,
        /// (map, key, comment) of elements in the table.
        elements: Vec<(String, String, String)>,
        scripts: Vec<String>,
        fail: Option<&'static str>,
        next_index: u32,
        calls: Vec<String>,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                netns_exists: true,
                next_index: 10,
                ..Default::default()
            }
        }

        fn step(&mut self, name: &'static str) -> Result<(), datapath::Error> {
            self.calls.push(name.into());
            if self.fail == Some(name) {
                Err(datapath::Error::Sysctl {
                    key: name.into(),
                    source: io::Error::other("injected"),
                })
            } else {
                Ok(())
            }
        }

        fn link(&mut self, name: &str, kind: &str) -> Link {
            self.next_index += 1;
            Link {
                index: self.next_index,
                name: name.into(),
                kind: Some(kind.into()),
                up: true,
                ..Default::default()
            }
        }
    }

    impl Datapath for Fake {
        fn enter_netns(&mut self, _: &Path) -> Result<bool, datapath::Error> {
            self.step("enter_netns")?;
            Ok(self.netns_exists)
        }
        fn container_link(&mut self, name: &str) -> Result<Option<Link>, datapath::Error> {
            Ok(self.container.get(name).cloned())
        }
        fn ensure_bridge(&mut self, name: &str, _: Option<u32>, _: bool) -> Result<Link, datapath::Error> {
            self.step("ensure_bridge")?;
            if !self.host.contains_key(name) {
                let l = self.link(name, "bridge");
                self.host.insert(name.into(), l);
            }
            Ok(self.host[name].clone())
        }
        fn add_host_address(&mut self, _: u32, _: IpNet) -> Result<(), datapath::Error> {
            self.step("add_host_address")
        }
        fn host_link(&mut self, name: &str) -> Result<Option<Link>, datapath::Error> {
            Ok(self.host.get(name).cloned())
        }
        fn host_link_by_index(&mut self, index: u32) -> Result<Option<Link>, datapath::Error> {
            Ok(self.host.values().find(|l| l.index == index).cloned())
        }
        fn sysctl(&mut self, key: &str, value: &str) -> Result<(), datapath::Error> {
            self.step("sysctl")?;
            self.sysctls.insert(key.into(), value.into());
            Ok(())
        }
        fn create_veth(&mut self, spec: &VethSpec) -> Result<(), datapath::Error> {
            self.step("create_veth")?;
            if self.container.contains_key(&spec.ifname) {
                return Err(datapath::Error::Exists(spec.ifname.clone()));
            }
            let mut host = self.link(&spec.host_name, "veth");
            host.master = Some(spec.bridge);
            let mut peer = self.link(&spec.ifname, "veth");
            peer.peer = Some(host.index);
            peer.peer_netnsid = Some(0);
            host.peer = Some(peer.index);
            peer.mac = format_mac(&spec.container_mac);
            self.host.insert(spec.host_name.clone(), host);
            self.container.insert(spec.ifname.clone(), peer);
            Ok(())
        }
        fn delete_host_link(&mut self, name: &str) -> Result<(), datapath::Error> {
            if let Some(h) = self.host.remove(name) {
                self.container.retain(|_, l| l.peer != Some(h.index));
            }
            Ok(())
        }
        fn configure_container(
            &mut self,
            ifname: &str,
            addrs: &[IpNet],
            routes: &[(IpNet, Option<IpAddr>)],
        ) -> Result<Link, datapath::Error> {
            self.step("configure_container")?;
            self.addrs.extend_from_slice(addrs);
            self.routes.extend(routes.iter().map(|(dst, gw)| KernelRoute {
                dst: *dst,
                gw: *gw,
                oif: None,
            }));
            Ok(self.container[ifname].clone())
        }
        fn delete_container_link(&mut self, index: u32) -> Result<(), datapath::Error> {
            let peer = self.container.values().find(|l| l.index == index).and_then(|l| l.peer);
            self.container.retain(|_, l| l.index != index);
            self.host.retain(|_, l| Some(l.index) != peer);
            Ok(())
        }
        fn container_addresses(&mut self, _: u32) -> Result<Vec<IpNet>, datapath::Error> {
            Ok(self.addrs.clone())
        }
        fn container_routes(&mut self) -> Result<Vec<KernelRoute>, datapath::Error> {
            Ok(self.routes.clone())
        }
        fn nft(&mut self, script: &str) -> Result<(), datapath::Error> {
            self.step("nft")?;
            self.scripts.push(script.into());
            for l in script.lines() {
                let words: Vec<&str> = l.split_whitespace().collect();
                if l.starts_with("add element") {
                    let key = l.split(" { ").nth(1).unwrap().split(" comment").next().unwrap();
                    let comment = l.split('"').nth(1).unwrap();
                    let e = (words[4].to_string(), key.to_string(), comment.to_string());
                    if !self.elements.contains(&e) {
                        self.elements.push(e);
                    }
                } else if l.starts_with("delete table") {
                    self.elements.clear();
                } else if l.starts_with("delete element") {
                    let key = l.split(" { ").nth(1).unwrap().trim_end_matches(" }");
                    self.elements.retain(|(m, k, _)| !(m == words[4] && k == key));
                }
            }
            Ok(())
        }
        fn nft_list(&mut self, table: &str) -> Result<Option<String>, datapath::Error> {
            let elem: Vec<serde_json::Value> = self
                .elements
                .iter()
                .map(|(m, k, c)| {
                    let parts: Vec<serde_json::Value> = k.split(" . ").map(|p| serde_json::json!(p)).collect();
                    serde_json::json!({"map": {"name": m, "table": table,
                        "elem": [[{"elem": {"val": {"concat": parts}, "comment": c}}, "x"]]}})
                })
                .collect();
            Ok(Some(serde_json::json!({ "nftables": elem }).to_string()))
        }
        fn nft_available(&mut self) -> bool {
            true
        }
    }

    fn conf(extra: &str) -> BridgeConf {
        config::parse(
            format!(
                r#"{{"cniVersion":"1.0.0","name":"n","type":"nodelet-bridge","bridge":"br0","isDefaultGateway":true,
                "ipMasq":true,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.1.0.0/24"}}],[{{"subnet":"fd00::/64"}}]]}},
                "runtimeConfig":{{"portMappings":[{{"hostPort":8080,"containerPort":80}}]}}{extra}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn args(id: &str) -> Args {
        Args {
            container_id: id.into(),
            netns: PathBuf::from("/run/netns/x"),
            ifname: "eth0".into(),
            args: vec![],
        }
    }

    fn opener(store: &MemStore) -> impl Fn() -> io::Result<Box<dyn Store>> + '_ {
        move || Ok(Box::new(store.clone()) as Box<dyn Store>)
    }

    #[test]
    fn add_builds_the_result_and_state() {
        let (mut dp, store) = (Fake::new(), MemStore::default());
        let c = conf("");
        let r = add(&mut dp, &opener(&store), &c, &args("c1")).unwrap();
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.interfaces[0].name, "br0");
        assert!(r.interfaces[1].name.starts_with("veth") && r.interfaces[1].name.len() == 12);
        assert_eq!(r.interfaces[2].sandbox.as_deref(), Some("/run/netns/x"));
        let ips: Vec<String> = r.ips.iter().map(|i| i.address.to_string()).collect();
        assert_eq!(ips, ["10.1.0.2/24", "fd00::2/64"]);
        assert!(r.ips.iter().all(|i| i.interface == Some(2)));
        let routes: Vec<String> = r.routes.iter().map(|r| format!("{} {:?}", r.dst, r.gw)).collect();
        assert_eq!(routes, ["0.0.0.0/0 Some(10.1.0.1)", "::/0 Some(fd00::1)"]);
        assert_eq!(dp.sysctls.get("net/ipv4/ip_forward").map(String::as_str), Some("1"));
        assert_eq!(
            dp.sysctls.get("net/ipv6/conf/all/forwarding").map(String::as_str),
            Some("1")
        );
        assert_eq!(
            dp.sysctls.get("net/ipv4/conf/br0/route_localnet").map(String::as_str),
            Some("1")
        );
        assert_eq!(dp.elements.len(), 2, "one element per family");
        assert!(dp.elements.iter().all(|(_, _, c)| c == "c1/eth0"));
        assert!(store.clone().get_record("c1", "eth0").unwrap().is_some());
        assert_eq!(dp.calls.iter().filter(|c| *c == "add_host_address").count(), 2);
        // CHECK agrees with what ADD made.
        let mut c2 = c.clone();
        c2.prev_result = Some(r.clone());
        check(&mut dp, &opener(&store), &c2, &args("c1")).unwrap();
    }

    #[test]
    fn add_merges_prev_result() {
        let (mut dp, store) = (Fake::new(), MemStore::default());
        let c = conf(
            r#","prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"lo0"}],"ips":[{"address":"192.168.0.9/32","interface":0}]}"#,
        );
        let r = add(&mut dp, &opener(&store), &c, &args("c1")).unwrap();
        assert_eq!(r.interfaces[0].name, "lo0");
        assert_eq!(r.interfaces.len(), 4);
        assert_eq!(r.ips[0].address.to_string(), "192.168.0.9/32");
        assert_eq!(r.ips[1].interface, Some(3));
    }

    #[test]
    fn every_failing_step_is_rolled_back() {
        for step in [
            "ensure_bridge",
            "add_host_address",
            "sysctl",
            "create_veth",
            "configure_container",
            "nft",
        ] {
            let (mut dp, store) = (Fake::new(), MemStore::default());
            dp.fail = Some(step);
            let e = add(&mut dp, &opener(&store), &conf(""), &args("c1")).unwrap_err();
            assert!(e.code >= 100 || e.code == code::UNKNOWN_CONTAINER, "{step}: {e:?}");
            assert!(store.clone().list().unwrap().is_empty(), "{step}: allocation left");
            assert!(store.clone().list_records().unwrap().is_empty(), "{step}: record left");
            assert!(dp.container.is_empty(), "{step}: container link left");
            assert!(
                dp.host.values().all(|l| l.kind.as_deref() == Some("bridge")),
                "{step}: veth left"
            );
            assert!(dp.elements.is_empty(), "{step}: nft element left");
        }
    }

    #[test]
    fn add_errors() {
        let (mut dp, store) = (Fake::new(), MemStore::default());
        dp.netns_exists = false;
        assert_eq!(
            add(&mut dp, &opener(&store), &conf(""), &args("c1")).unwrap_err().code,
            code::UNKNOWN_CONTAINER
        );

        let mut dp = Fake::new();
        let l = dp.link("eth0", "dummy");
        dp.container.insert("eth0".into(), l);
        let e = add(&mut dp, &opener(&store), &conf(""), &args("c1")).unwrap_err();
        assert_eq!(e.code, code::INTERFACE_EXISTS);
        assert!(store.clone().list().unwrap().is_empty());

        let mut bad = args("c/1");
        assert_eq!(
            add(&mut Fake::new(), &opener(&store), &conf(""), &bad)
                .unwrap_err()
                .code,
            code::INVALID_ENV
        );
        bad = args("c1");
        bad.netns = PathBuf::new();
        assert_eq!(
            add(&mut Fake::new(), &opener(&store), &conf(""), &bad)
                .unwrap_err()
                .code,
            code::INVALID_ENV
        );
        bad = args("c1");
        bad.ifname = "a/b".into();
        assert_eq!(
            add(&mut Fake::new(), &opener(&store), &conf(""), &bad)
                .unwrap_err()
                .code,
            code::INVALID_ENV
        );
    }

    #[test]
    fn exhausted_range_leaves_nothing() {
        let (mut dp, store) = (Fake::new(), MemStore::default());
        let c = config::parse(
            br#"{"cniVersion":"1.1.0","name":"n","bridge":"br0","ipam":{"type":"host-local","subnet":"10.1.0.0/30"}}"#,
        )
        .unwrap();
        add(&mut dp, &opener(&store), &c, &args("c1")).unwrap();
        let mut a2 = args("c2");
        a2.ifname = "eth1".into();
        let e = add(&mut dp, &opener(&store), &c, &a2).unwrap_err();
        assert_eq!(e.code, code::NO_FREE_IP);
        assert_eq!(e.msg, "no free IP in 10.1.0.0/30");
        assert_eq!(dp.container.len(), 1);
        assert_eq!(
            status(&mut dp, &opener(&store), &c).unwrap_err().code,
            code::NOT_AVAILABLE
        );
        del(&mut dp, &opener(&store), &c, &args("c1")).unwrap();
        status(&mut dp, &opener(&store), &c).unwrap();
    }

    #[test]
    fn del_is_complete_and_idempotent() {
        let (mut dp, store) = (Fake::new(), MemStore::default());
        let c = conf("");
        add(&mut dp, &opener(&store), &c, &args("c1")).unwrap();
        for _ in 0..2 {
            del(&mut dp, &opener(&store), &c, &args("c1")).unwrap();
            assert!(dp.container.is_empty());
            assert!(store
                .clone()
                .list()
                .unwrap()
                .iter()
                .all(|r| r.container_id.as_deref() != Some("c1")));
            assert!(dp.elements.is_empty());
            assert!(store.clone().get_record("c1", "eth0").unwrap().is_none());
        }
        // A missing netns or an empty CNI_NETNS is fine.
        dp.netns_exists = false;
        del(&mut dp, &opener(&store), &c, &args("c1")).unwrap();
        del(
            &mut dp,
            &opener(&store),
            &c,
            &Args {
                netns: PathBuf::new(),
                ..args("c1")
            },
        )
        .unwrap();
    }

    #[test]
    fn del_leaves_foreign_interfaces_alone() {
        let (mut dp, store) = (Fake::new(), MemStore::default());
        let l = dp.link("eth0", "macvlan");
        dp.container.insert("eth0".into(), l);
        del(&mut dp, &opener(&store), &conf(""), &args("c1")).unwrap();
        assert!(dp.container.contains_key("eth0"));
    }

    #[test]
    fn del_needs_both_veth_ends_to_agree() {
        let (mut dp, store) = (Fake::new(), MemStore::default());
        add(&mut dp, &opener(&store), &conf(""), &args("c1")).unwrap();
        dp.container.clear(); // c1 lives in another netns; this one has a veth of its own
        let host_veth = dp.host.values().find(|l| l.master.is_some()).unwrap().index;
        let mut foreign = dp.link("eth0", "veth");
        foreign.peer = Some(host_veth); // the same index, in some other namespace
        foreign.peer_netnsid = Some(3);
        dp.container.insert("eth0".into(), foreign);
        del(&mut dp, &opener(&store), &conf(""), &args("c2")).unwrap();
        assert!(dp.container.contains_key("eth0"));
        assert!(dp.host.values().any(|l| l.index == host_veth));
    }

    #[test]
    fn del_falls_back_to_comments_when_the_record_is_damaged() {
        let (mut dp, store) = (Fake::new(), MemStore::default());
        let c = conf("");
        add(&mut dp, &opener(&store), &c, &args("c1")).unwrap();
        // Another attachment keeps the table (and so the element path) in use.
        dp.container.clear();
        let c2 = conf(r#","runtimeConfig":{"portMappings":[{"hostPort":8081,"containerPort":80}]}"#);
        add(&mut dp, &opener(&store), &c2, &args("c2")).unwrap();
        store.clone().put_record("c1", "eth0", "{garbage").unwrap();
        del(&mut dp, &opener(&store), &c, &args("c1")).unwrap();
        assert!(dp.elements.iter().all(|e| e.2 == "c2/eth0") && dp.elements.len() == 2);
        assert!(!dp.scripts.iter().any(|s| s.contains("delete table")));
        // The last DEL drops the table, elements and all.
        del(&mut dp, &opener(&store), &c2, &args("c2")).unwrap();
        assert!(dp.elements.is_empty());
        assert!(dp.scripts.last().unwrap().contains("delete table inet nodelet_n"));
    }

    #[test]
    fn gc_frees_what_is_not_valid() {
        let (mut dp, store) = (Fake::new(), MemStore::default());
        let c = conf("");
        for (id, port) in [("c1", 8080), ("c2", 8081), ("c3", 8082)] {
            let ci = conf(&format!(
                r#","runtimeConfig":{{"portMappings":[{{"hostPort":{port},"containerPort":80}}]}}"#
            ));
            add(&mut dp, &opener(&store), &ci, &args(id)).unwrap();
            dp.container.clear(); // the next container has a netns of its own
        }
        assert_eq!(dp.elements.len(), 6);
        gc(&mut dp, &opener(&store), &c, &[("c2".into(), "eth0".into())]).unwrap();
        let owners: Vec<String> = store
            .clone()
            .list()
            .unwrap()
            .iter()
            .filter_map(|r| r.container_id.clone())
            .collect();
        assert_eq!(owners, ["c2", "c2"]);
        assert_eq!(
            store.clone().list_records().unwrap(),
            [("c2".to_string(), "eth0".to_string())]
        );
        assert!(dp.elements.iter().all(|e| e.2 == "c2/eth0") && dp.elements.len() == 2);
    }

    #[test]
    fn check_detects_drift() {
        let (mut dp, store) = (Fake::new(), MemStore::default());
        let mut c = conf("");
        c.prev_result = Some(add(&mut dp, &opener(&store), &c, &args("c1")).unwrap());
        check(&mut dp, &opener(&store), &c, &args("c1")).unwrap();

        let no_prev = conf("");
        assert_eq!(
            check(&mut dp, &opener(&store), &no_prev, &args("c1")).unwrap_err().code,
            code::INVALID_CONFIG
        );

        dp.routes.clear();
        assert!(check(&mut dp, &opener(&store), &c, &args("c1"))
            .unwrap_err()
            .msg
            .contains("route"));
        dp.routes = vec![];
        let saved = dp.addrs.clone();
        dp.addrs.clear();
        assert!(check(&mut dp, &opener(&store), &c, &args("c1"))
            .unwrap_err()
            .msg
            .contains("address"));
        dp.addrs = saved;
        ipam::release(&mut store.clone(), "c1", "eth0").unwrap();
        dp.routes = c
            .prev_result
            .as_ref()
            .unwrap()
            .routes
            .iter()
            .map(|r| KernelRoute {
                dst: r.dst,
                gw: r.gw,
                oif: None,
            })
            .collect();
        assert!(check(&mut dp, &opener(&store), &c, &args("c1"))
            .unwrap_err()
            .msg
            .contains("not allocated"));
        dp.container.clear();
        assert_eq!(
            check(&mut dp, &opener(&store), &c, &args("c1")).unwrap_err().code,
            code::CHECK_FAILED
        );
    }

    #[test]
    fn status_reports_an_unusable_store() {
        let mut dp = Fake::new();
        let failing = || -> io::Result<Box<dyn Store>> { Err(io::Error::other("read-only")) };
        let e = status(&mut dp, &failing, &conf("")).unwrap_err();
        assert_eq!(e.code, code::NOT_AVAILABLE);
        assert!(e.msg.contains("read-only"));
    }
}
