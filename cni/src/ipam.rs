//! host-local's allocation logic, separate from where allocations are kept
//! (the [`Store`]): the on-disk store in `store.rs` for real use, an
//! in-memory one for tests of the logic.
//!
//! Like host-local, each range set hands out addresses round-robin: the
//! search starts after the last address reserved in that set and wraps
//! around, so a released address is not reused at once. The network
//! address, the IPv4 broadcast, the gateways and `exclude` are never handed
//! out.

#[cfg(test)]
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
#[cfg(test)]
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

use crate::config::{IpamConf, Range};

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("no free IP in {0}")]
    Exhausted(String),
    #[error("container {id} interface {ifname} already has {ip} in this network")]
    AlreadyAllocated { id: String, ifname: String, ip: IpAddr },
    #[error("IPAM store: {0}")]
    Store(#[from] io::Error),
}

/// One reserved address and whom it belongs to, as the store has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The address.
    pub ip: IpAddr,
    /// Owner's container id; `None` when the record is unreadable (e.g.
    /// half-written by a crash), which makes it garbage for GC.
    pub container_id: Option<String>,
    /// Owner's interface; `None` in host-local's old one-line format.
    pub ifname: Option<String>,
}

impl Reservation {
    pub(crate) fn owned_by(&self, id: &str, ifname: &str) -> bool {
        self.container_id.as_deref() == Some(id) && self.ifname.as_deref().is_none_or(|i| i == ifname)
    }
}

/// Where allocations (and per-attachment records) live. An open store
/// holds the network's lock, so a sequence of calls on one is atomic with
/// respect to other processes.
pub trait Store {
    /// Record `ip` for the attachment; `false` when someone holds it.
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, range_set: usize) -> io::Result<bool>;
    /// The address last reserved in `range_set` (where round-robin resumes).
    fn last_reserved(&mut self, range_set: usize) -> io::Result<Option<IpAddr>>;
    /// Whether `ip` is held.
    fn is_reserved(&mut self, ip: IpAddr) -> io::Result<bool>;
    /// Free `ip` (no error when it was free).
    fn release(&mut self, ip: IpAddr) -> io::Result<()>;
    /// Every reservation.
    fn list(&mut self) -> io::Result<Vec<Reservation>>;
    /// Store `data` for an attachment (port mappings), replacing any.
    fn put_record(&mut self, id: &str, ifname: &str, data: &str) -> io::Result<()>;
    /// The attachment's record, if any.
    fn get_record(&mut self, id: &str, ifname: &str) -> io::Result<Option<String>>;
    /// Remove the attachment's record (no error when absent).
    fn remove_record(&mut self, id: &str, ifname: &str) -> io::Result<()>;
    /// Attachments that have a record.
    fn list_records(&mut self) -> io::Result<Vec<(String, String)>>;
    /// Fails when the store cannot take new allocations (STATUS).
    fn check_writable(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One address handed out by [`allocate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// Index of the range set it came from.
    pub range_set: usize,
    /// The address with its subnet's prefix length.
    pub address: IpNet,
    /// Its range's gateway.
    pub gateway: IpAddr,
}

/// The address as a number (IPv4 in the low 32 bits).
pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// `ip + delta`, wrapping within the family.
pub(crate) fn add(ip: IpAddr, delta: i128) -> IpAddr {
    let n = to_u128(ip).wrapping_add(delta as u128);
    match ip {
        IpAddr::V4(_) => from_u128(n & 0xffff_ffff, true),
        IpAddr::V6(_) => from_u128(n, false),
    }
}

fn in_range(r: &Range, ip: IpAddr) -> bool {
    ip.is_ipv4() == r.subnet.addr().is_ipv4() && (to_u128(r.range_start)..=to_u128(r.range_end)).contains(&to_u128(ip))
}

/// Addresses no attachment may get: network, IPv4 broadcast, any gateway,
/// `exclude`.
fn never_handed_out(conf: &IpamConf, r: &Range, ip: IpAddr) -> bool {
    ip == r.subnet.network()
        || (ip.is_ipv4() && ip == r.subnet.broadcast())
        || conf.range_sets.iter().flatten().any(|other| other.gateway == ip)
        || conf.exclude.iter().any(|e| e.contains(&ip))
}

/// Every address of the set once, starting after `last` (host-local's
/// `RangeIter`): (range index, address).
fn candidates(set: &[Range], last: Option<IpAddr>) -> impl Iterator<Item = (usize, IpAddr)> + '_ {
    let total: u128 = set
        .iter()
        .map(|r| to_u128(r.range_end) - to_u128(r.range_start) + 1)
        .sum();
    let (mut ri, mut cur) = match last.and_then(|l| set.iter().position(|r| in_range(r, l)).map(|i| (i, l))) {
        Some((i, l)) if l == set[i].range_end => ((i + 1) % set.len(), to_u128(set[(i + 1) % set.len()].range_start)),
        Some((i, l)) => (i, to_u128(l) + 1),
        None => (0, to_u128(set[0].range_start)),
    };
    let mut left = total;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        left -= 1;
        let r = &set[ri];
        let out = (ri, from_u128(cur, r.subnet.addr().is_ipv4()));
        if cur == to_u128(r.range_end) {
            ri = (ri + 1) % set.len();
            cur = to_u128(set[ri].range_start);
        } else {
            cur += 1;
        }
        Some(out)
    })
}

fn set_name(set: &[Range]) -> String {
    set.iter().map(|r| r.subnet.to_string()).collect::<Vec<_>>().join(", ")
}

fn allocate_in_set(
    conf: &IpamConf,
    index: usize,
    store: &mut dyn Store,
    id: &str,
    ifname: &str,
) -> Result<Allocation, Error> {
    let set = &conf.range_sets[index];
    let last = store.last_reserved(index)?;
    for (ri, ip) in candidates(set, last) {
        let r = &set[ri];
        if never_handed_out(conf, r, ip) || store.is_reserved(ip)? {
            continue;
        }
        if store.reserve(id, ifname, ip, index)? {
            let address = IpNet::new(ip, r.subnet.prefix_len()).expect("prefix comes from a parsed subnet");
            return Ok(Allocation {
                range_set: index,
                address,
                gateway: r.gateway,
            });
        }
    }
    Err(Error::Exhausted(set_name(set)))
}

/// Reserve one address from every range set for the attachment. All or
/// nothing: on error, what this call reserved is released again.
pub(crate) fn allocate(
    conf: &IpamConf,
    store: &mut dyn Store,
    id: &str,
    ifname: &str,
) -> Result<Vec<Allocation>, Error> {
    if let Some(r) = store.list()?.into_iter().find(|r| r.owned_by(id, ifname)) {
        return Err(Error::AlreadyAllocated {
            id: id.into(),
            ifname: ifname.into(),
            ip: r.ip,
        });
    }
    let mut done: Vec<Allocation> = Vec::with_capacity(conf.range_sets.len());
    for index in 0..conf.range_sets.len() {
        match allocate_in_set(conf, index, store, id, ifname) {
            Ok(a) => done.push(a),
            Err(e) => {
                for a in &done {
                    let _ = store.release(a.address.addr());
                }
                return Err(e);
            }
        }
    }
    Ok(done)
}

/// The attachment's addresses.
pub(crate) fn find(store: &mut dyn Store, id: &str, ifname: &str) -> Result<Vec<IpAddr>, Error> {
    Ok(store
        .list()?
        .into_iter()
        .filter(|r| r.owned_by(id, ifname))
        .map(|r| r.ip)
        .collect())
}

/// Free the attachment's addresses; returns them.
pub(crate) fn release(store: &mut dyn Store, id: &str, ifname: &str) -> Result<Vec<IpAddr>, Error> {
    let ips = find(store, id, ifname)?;
    for ip in &ips {
        store.release(*ip)?;
    }
    Ok(ips)
}

/// Free every address whose owner is not in `valid` (and every unreadable
/// record); returns them.
pub(crate) fn gc(store: &mut dyn Store, valid: &[(String, String)]) -> Result<Vec<IpAddr>, Error> {
    let mut freed = Vec::new();
    for r in store.list()? {
        let keep = valid.iter().any(|(id, ifname)| r.owned_by(id, ifname));
        if !keep {
            store.release(r.ip)?;
            freed.push(r.ip);
        }
    }
    Ok(freed)
}

/// For STATUS: the sets with no address left, as "no free IP in ..." text.
pub(crate) fn exhausted_sets(conf: &IpamConf, store: &mut dyn Store) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for (index, set) in conf.range_sets.iter().enumerate() {
        let last = store.last_reserved(index)?;
        let mut free = false;
        for (ri, ip) in candidates(set, last) {
            if !never_handed_out(conf, &set[ri], ip) && !store.is_reserved(ip)? {
                free = true;
                break;
            }
        }
        if !free {
            out.push(Error::Exhausted(set_name(set)).to_string());
        }
    }
    Ok(out)
}

/// A [`Store`] in memory; clones share their content.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub struct MemStore(Arc<Mutex<MemInner>>);

#[cfg(test)]
#[derive(Debug, Default)]
struct MemInner {
    ips: BTreeMap<IpAddr, (String, String)>,
    last: HashMap<usize, IpAddr>,
    records: BTreeMap<(String, String), String>,
}

#[cfg(test)]
impl MemStore {
    fn inner(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
impl Store for MemStore {
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, range_set: usize) -> io::Result<bool> {
        let mut m = self.inner();
        if m.ips.contains_key(&ip) {
            return Ok(false);
        }
        m.ips.insert(ip, (id.into(), ifname.into()));
        m.last.insert(range_set, ip);
        Ok(true)
    }

    fn last_reserved(&mut self, range_set: usize) -> io::Result<Option<IpAddr>> {
        Ok(self.inner().last.get(&range_set).copied())
    }

    fn is_reserved(&mut self, ip: IpAddr) -> io::Result<bool> {
        Ok(self.inner().ips.contains_key(&ip))
    }

    fn release(&mut self, ip: IpAddr) -> io::Result<()> {
        self.inner().ips.remove(&ip);
        Ok(())
    }

    fn list(&mut self) -> io::Result<Vec<Reservation>> {
        Ok(self
            .inner()
            .ips
            .iter()
            .map(|(ip, (id, ifname))| Reservation {
                ip: *ip,
                container_id: Some(id.clone()),
                ifname: Some(ifname.clone()),
            })
            .collect())
    }

    fn put_record(&mut self, id: &str, ifname: &str, data: &str) -> io::Result<()> {
        self.inner().records.insert((id.into(), ifname.into()), data.into());
        Ok(())
    }

    fn get_record(&mut self, id: &str, ifname: &str) -> io::Result<Option<String>> {
        Ok(self.inner().records.get(&(id.into(), ifname.into())).cloned())
    }

    fn remove_record(&mut self, id: &str, ifname: &str) -> io::Result<()> {
        self.inner().records.remove(&(id.into(), ifname.into()));
        Ok(())
    }

    fn list_records(&mut self) -> io::Result<Vec<(String, String)>> {
        Ok(self.inner().records.keys().cloned().collect())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config;

    pub(crate) fn ipam(ranges: &str, extra: &str) -> IpamConf {
        let json =
            format!(r#"{{"cniVersion":"1.0.0","name":"t","ipam":{{"type":"host-local","ranges":{ranges}{extra}}}}}"#);
        config::parse(json.as_bytes()).unwrap().ipam
    }

    fn alloc(conf: &IpamConf, store: &mut dyn Store, id: &str) -> Vec<String> {
        allocate(conf, store, id, "eth0")
            .unwrap()
            .iter()
            .map(|a| a.address.to_string())
            .collect()
    }

    /// The allocator's behaviour, run against any store.
    pub(crate) fn exercise(store: &mut dyn Store) {
        let conf = ipam(r#"[[{"subnet":"10.0.0.0/29"}]]"#, "");
        // .0 network, .1 gateway, .7 broadcast: .2 to .6 are handed out in order.
        for (i, want) in ["10.0.0.2/29", "10.0.0.3/29", "10.0.0.4/29"].iter().enumerate() {
            assert_eq!(alloc(&conf, store, &format!("c{i}")), [*want]);
        }
        assert!(allocate(&conf, store, "c0", "eth0")
            .unwrap_err()
            .to_string()
            .contains("already has"));
        // Round-robin: a freed address is not reused before the others.
        assert_eq!(
            release(store, "c1", "eth0").unwrap(),
            ["10.0.0.3".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(alloc(&conf, store, "c3"), ["10.0.0.5/29"]);
        assert_eq!(alloc(&conf, store, "c4"), ["10.0.0.6/29"]);
        assert_eq!(alloc(&conf, store, "c5"), ["10.0.0.3/29"], "wraps to the freed address");
        let e = allocate(&conf, store, "c6", "eth0").unwrap_err();
        assert!(matches!(e, Error::Exhausted(_)));
        assert_eq!(e.to_string(), "no free IP in 10.0.0.0/29");
        assert_eq!(exhausted_sets(&conf, store).unwrap(), ["no free IP in 10.0.0.0/29"]);
        // Same container, another interface: a separate attachment.
        release(store, "c4", "eth0").unwrap();
        assert_eq!(
            allocate(&conf, store, "c0", "net1").unwrap()[0].address.to_string(),
            "10.0.0.6/29"
        );
        assert_eq!(
            find(store, "c0", "net1").unwrap(),
            ["10.0.0.6".parse::<IpAddr>().unwrap()]
        );
        assert!(exhausted_sets(&conf, store).unwrap().len() == 1);
        // GC keeps the valid ones only.
        let valid = vec![
            ("c0".to_string(), "eth0".to_string()),
            ("c5".to_string(), "eth0".to_string()),
        ];
        let mut freed = gc(store, &valid).unwrap();
        freed.sort();
        let freed: Vec<String> = freed.iter().map(|i| i.to_string()).collect();
        assert_eq!(freed, ["10.0.0.4", "10.0.0.5", "10.0.0.6"]);
        let mut left: Vec<String> = store.list().unwrap().iter().map(|r| r.ip.to_string()).collect();
        left.sort();
        assert_eq!(left, ["10.0.0.2", "10.0.0.3"]);
        assert!(exhausted_sets(&conf, store).unwrap().is_empty());
        // Records.
        store.put_record("c0", "eth0", "x").unwrap();
        store.put_record("c0", "eth0", "y").unwrap();
        assert_eq!(store.get_record("c0", "eth0").unwrap().as_deref(), Some("y"));
        assert_eq!(store.list_records().unwrap(), [("c0".to_string(), "eth0".to_string())]);
        store.remove_record("c0", "eth0").unwrap();
        store.remove_record("c0", "eth0").unwrap();
        assert_eq!(store.get_record("c0", "eth0").unwrap(), None);
    }

    #[test]
    fn allocator_against_memory_store() {
        exercise(&mut MemStore::default());
    }

    #[test]
    fn range_start_end_and_gateway() {
        let conf = ipam(
            r#"[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.100","rangeEnd":"10.1.0.102","gateway":"10.1.0.101"}]]"#,
            "",
        );
        let mut s = MemStore::default();
        assert_eq!(alloc(&conf, &mut s, "a"), ["10.1.0.100/24"]);
        assert_eq!(alloc(&conf, &mut s, "b"), ["10.1.0.102/24"], "the gateway is skipped");
        assert!(matches!(allocate(&conf, &mut s, "c", "eth0"), Err(Error::Exhausted(_))));
    }

    #[test]
    fn exclude_list() {
        let conf = ipam(
            r#"[[{"subnet":"10.1.0.0/24"}]]"#,
            r#","exclude":["10.1.0.2","10.1.0.4/31"]"#,
        );
        let mut s = MemStore::default();
        assert_eq!(alloc(&conf, &mut s, "a"), ["10.1.0.3/24"]);
        assert_eq!(alloc(&conf, &mut s, "b"), ["10.1.0.6/24"]);
    }

    #[test]
    fn multiple_ranges_in_a_set_are_used_in_turn() {
        let conf = ipam(r#"[[{"subnet":"10.1.0.0/30"},{"subnet":"10.2.0.0/30"}]]"#, "");
        let mut s = MemStore::default();
        // A /30 has .1 (gateway) and .2 usable: one address per range.
        assert_eq!(alloc(&conf, &mut s, "a"), ["10.1.0.2/30"]);
        assert_eq!(alloc(&conf, &mut s, "b"), ["10.2.0.2/30"]);
        let e = allocate(&conf, &mut s, "c", "eth0").unwrap_err();
        assert_eq!(e.to_string(), "no free IP in 10.1.0.0/30, 10.2.0.0/30");
    }

    #[test]
    fn dual_stack_gives_one_address_per_set() {
        let conf = ipam(r#"[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00:10::/64"}]]"#, "");
        let mut s = MemStore::default();
        let a = allocate(&conf, &mut s, "a", "eth0").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].address.to_string(), "10.1.0.2/24");
        assert_eq!(a[0].gateway.to_string(), "10.1.0.1");
        assert_eq!(a[1].address.to_string(), "fd00:10::2/64");
        assert_eq!(a[1].gateway.to_string(), "fd00:10::1");
        assert_eq!(a[1].range_set, 1);
        assert_eq!(alloc(&conf, &mut s, "b"), ["10.1.0.3/24", "fd00:10::3/64"]);
    }

    #[test]
    fn ipv6_last_address_is_usable() {
        let conf = ipam(r#"[[{"subnet":"fd00::/126"}]]"#, "");
        let mut s = MemStore::default();
        assert_eq!(alloc(&conf, &mut s, "a"), ["fd00::2/126"]);
        assert_eq!(alloc(&conf, &mut s, "b"), ["fd00::3/126"], "no broadcast in IPv6");
        assert!(allocate(&conf, &mut s, "c", "eth0").is_err());
    }

    #[test]
    fn a_failing_set_releases_the_earlier_ones() {
        let conf = ipam(r#"[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/126"}]]"#, "");
        let mut s = MemStore::default();
        alloc(&conf, &mut s, "a");
        alloc(&conf, &mut s, "b");
        let e = allocate(&conf, &mut s, "c", "eth0").unwrap_err();
        assert_eq!(e.to_string(), "no free IP in fd00::/126");
        assert_eq!(s.list().unwrap().len(), 4, "c's IPv4 address was given back");
        assert!(find(&mut s, "c", "eth0").unwrap().is_empty());
    }

    #[test]
    fn resumes_after_last_reserved_even_if_out_of_range() {
        let conf = ipam(
            r#"[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.10","rangeEnd":"10.1.0.12"}]]"#,
            "",
        );
        let mut s = MemStore::default();
        // A last-reserved address outside the (changed) range restarts at the beginning.
        s.reserve("old", "eth0", "10.1.0.200".parse().unwrap(), 0).unwrap();
        assert_eq!(alloc(&conf, &mut s, "a"), ["10.1.0.10/24"]);
        // The end of the range wraps to the start.
        s.reserve("x", "eth0", "10.1.0.12".parse().unwrap(), 0).unwrap();
        assert_eq!(alloc(&conf, &mut s, "b"), ["10.1.0.11/24"]);
    }

    #[test]
    fn gc_frees_unreadable_records_and_honours_legacy_owner_format() {
        struct Legacy(MemStore, Vec<Reservation>);
        impl Store for Legacy {
            fn reserve(&mut self, i: &str, f: &str, ip: IpAddr, s: usize) -> io::Result<bool> {
                self.0.reserve(i, f, ip, s)
            }
            fn last_reserved(&mut self, s: usize) -> io::Result<Option<IpAddr>> {
                self.0.last_reserved(s)
            }
            fn is_reserved(&mut self, ip: IpAddr) -> io::Result<bool> {
                self.0.is_reserved(ip)
            }
            fn release(&mut self, ip: IpAddr) -> io::Result<()> {
                self.1.retain(|r| r.ip != ip);
                Ok(())
            }
            fn list(&mut self) -> io::Result<Vec<Reservation>> {
                Ok(self.1.clone())
            }
            fn put_record(&mut self, _: &str, _: &str, _: &str) -> io::Result<()> {
                Ok(())
            }
            fn get_record(&mut self, _: &str, _: &str) -> io::Result<Option<String>> {
                Ok(None)
            }
            fn remove_record(&mut self, _: &str, _: &str) -> io::Result<()> {
                Ok(())
            }
            fn list_records(&mut self) -> io::Result<Vec<(String, String)>> {
                Ok(vec![])
            }
        }
        let r = |ip: &str, id: Option<&str>, ifname: Option<&str>| Reservation {
            ip: ip.parse().unwrap(),
            container_id: id.map(Into::into),
            ifname: ifname.map(Into::into),
        };
        let mut s = Legacy(
            MemStore::default(),
            vec![
                r("10.0.0.2", Some("a"), None),
                r("10.0.0.3", None, None),
                r("10.0.0.4", Some("b"), Some("eth0")),
            ],
        );
        let freed = gc(&mut s, &[("a".into(), "eth0".into())]).unwrap();
        let freed: Vec<String> = freed.iter().map(|i| i.to_string()).collect();
        assert_eq!(freed, ["10.0.0.3", "10.0.0.4"]);
    }

    #[test]
    fn address_arithmetic() {
        assert_eq!(add("10.0.0.255".parse().unwrap(), 1).to_string(), "10.0.1.0");
        assert_eq!(add("10.0.0.0".parse().unwrap(), -1).to_string(), "9.255.255.255");
        assert_eq!(add("fd00::ffff".parse().unwrap(), 1).to_string(), "fd00::1:0");
        assert_eq!(add("255.255.255.255".parse().unwrap(), 1).to_string(), "0.0.0.0");
    }
}
