//! nftables state of a network: one `inet` table per network holding
//! - NAT chains on prerouting (traffic to a local address from outside or
//!   from pods), output (locally originated, 127.0.0.1 included) and
//!   postrouting (masquerading);
//! - four maps from host port to container address and port (IPv4/IPv6,
//!   any host address or one `hostIP`), whose elements are the per-attachment
//!   state: each carries a comment naming its attachment, so DEL and GC
//!   remove exactly an attachment's own.
//!
//! The chains' rules depend only on the network config; every ADD rewrites
//! them (flush and re-add in the same transaction, so no packet sees a
//! partial ruleset) together with its elements: one `nft -f -` per ADD, and
//! the network's table heals itself if someone flushed it.
//!
//! `nft` is executed (Debian's `nftables` package) rather than spoken to
//! over netlink: its transaction handling is what makes the above atomic.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::PortMapping;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("nft not found (install Debian's nftables package)")]
    Missing,
    #[error("running nft: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft failed: {0}")]
    Failed(String),
    #[error("cannot read nft's listing: {0}")]
    Listing(String),
}

impl Error {
    /// An element with the same key but another target exists: the host
    /// port belongs to another attachment.
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(self, Error::Failed(msg) if msg.contains("File exists") && msg.contains("add element"))
    }
}

/// The network's table: `nodelet_<name>`, with characters nft identifiers
/// cannot hold replaced and a hash of the real name appended when that
/// happened (so "a-b" and "a_b" stay apart).
pub(crate) fn table_name(network: &str) -> String {
    let clean: String = network
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect();
    if clean == network {
        format!("nodelet_{network}")
    } else {
        format!("nodelet_{clean}_{:08x}", fnv1a(network.as_bytes()) as u32)
    }
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The comment marking an attachment's elements. nft comments are limited
/// to 128 bytes: very long container ids are hashed.
pub(crate) fn comment(container_id: &str, ifname: &str) -> String {
    if container_id.len() + ifname.len() < 100 {
        format!("{container_id}/{ifname}")
    } else {
        format!("h:{:016x}/{ifname}", fnv1a(container_id.as_bytes()))
    }
}

/// The config-derived part of the table.
#[derive(Debug, Clone)]
pub(crate) struct Ruleset<'a> {
    pub table: &'a str,
    pub bridge: &'a str,
    pub v4: Vec<IpNet>,
    pub v6: Vec<IpNet>,
    pub masquerade: bool,
}

/// One map element: `key : value` in map `map`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Element {
    pub map: String,
    pub key: String,
    pub value: String,
}

/// What DEL needs to undo an attachment's port mappings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub container_id: String,
    pub ifname: String,
    pub table: String,
    pub elements: Vec<Element>,
}

/// A stored record, if it is whole and holds only what we write.
pub(crate) fn parse_record(data: &str) -> Option<Record> {
    let r: Record = serde_json::from_str(data).ok()?;
    let safe = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | ' ' | '_'))
    };
    let ok = safe(&r.table)
        && r.elements
            .iter()
            .all(|e| safe(&e.map) && safe(&e.key) && safe(&e.value));
    ok.then_some(r)
}

/// The map elements for `mappings` to the container's addresses (its
/// first address of each family).
pub(crate) fn elements(mappings: &[PortMapping], ips: &[IpAddr]) -> Vec<Element> {
    let v4 = ips.iter().find(|ip| ip.is_ipv4());
    let v6 = ips.iter().find(|ip| ip.is_ipv6());
    let mut out: Vec<Element> = Vec::new();
    for pm in mappings {
        for target in [v4, v6].into_iter().flatten() {
            let fam = if target.is_ipv4() { "4" } else { "6" };
            let (map, key) = match pm.host_ip {
                Some(h) if h.is_ipv4() != target.is_ipv4() => continue,
                Some(h) => (
                    format!("hp{fam}ip"),
                    format!("{h} . {} . {}", pm.protocol.as_str(), pm.host_port),
                ),
                None => (
                    format!("hp{fam}"),
                    format!("{} . {}", pm.protocol.as_str(), pm.host_port),
                ),
            };
            let e = Element {
                map,
                key,
                value: format!("{target} . {}", pm.container_port),
            };
            if !out.contains(&e) {
                out.push(e);
            }
        }
    }
    out
}

fn set_of(nets: &[IpNet], extra: &[&str]) -> String {
    let items: Vec<String> = extra
        .iter()
        .map(|s| s.to_string())
        .chain(nets.iter().map(|n| n.to_string()))
        .collect();
    format!("{{ {} }}", items.join(", "))
}

/// The ADD transaction: (re)create the table's chains, maps and rules,
/// then add the attachment's elements.
pub(crate) fn render_add(rs: &Ruleset<'_>, elements: &[Element], comment: &str) -> String {
    let t = format!("inet {}", rs.table);
    let mut s = String::with_capacity(2048);
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!("add table {t}"));
    line(format!(
        "add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}"
    ));
    line(format!(
        "add chain {t} output {{ type nat hook output priority -100; policy accept; }}"
    ));
    line(format!(
        "add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}"
    ));
    line(format!("add chain {t} hostports"));
    for (name, key, addr) in [
        ("hp4", "inet_proto . inet_service", "ipv4_addr"),
        ("hp4ip", "ipv4_addr . inet_proto . inet_service", "ipv4_addr"),
        ("hp6", "inet_proto . inet_service", "ipv6_addr"),
        ("hp6ip", "ipv6_addr . inet_proto . inet_service", "ipv6_addr"),
    ] {
        line(format!("add map {t} {name} {{ type {key} : {addr} . inet_service; }}"));
    }
    for chain in ["prerouting", "output", "postrouting", "hostports"] {
        line(format!("flush chain {t} {chain}"));
    }
    line(format!("add rule {t} prerouting fib daddr type local jump hostports"));
    line(format!("add rule {t} output fib daddr type local jump hostports"));
    for (fam, ip) in [("4", "ip"), ("6", "ip6")] {
        let nfproto = if fam == "4" { "ipv4" } else { "ipv6" };
        line(format!(
            "add rule {t} hostports meta nfproto {nfproto} dnat {ip} to {ip} daddr . meta l4proto . th dport map @hp{fam}ip"
        ));
        line(format!(
            "add rule {t} hostports meta nfproto {nfproto} dnat {ip} to meta l4proto . th dport map @hp{fam}"
        ));
    }
    let br = rs.bridge;
    // Port-mapped connections from the node itself (127.0.0.1, with
    // route_localnet) or from pods (hairpin) must come back through the
    // node to be un-NATed: give them the bridge's address as source.
    if !rs.v4.is_empty() {
        line(format!(
            "add rule {t} postrouting oifname \"{br}\" ct status dnat ip saddr {} masquerade",
            set_of(&rs.v4, &["127.0.0.0/8"])
        ));
    }
    if !rs.v6.is_empty() {
        line(format!(
            "add rule {t} postrouting oifname \"{br}\" ct status dnat ip6 saddr {} masquerade",
            set_of(&rs.v6, &[])
        ));
    }
    if rs.masquerade {
        if !rs.v4.is_empty() {
            let set = set_of(&rs.v4, &[]);
            line(format!(
                "add rule {t} postrouting ip saddr {set} ip daddr != {set} ip daddr != 224.0.0.0/4 masquerade"
            ));
        }
        if !rs.v6.is_empty() {
            let set = set_of(&rs.v6, &[]);
            line(format!(
                "add rule {t} postrouting ip6 saddr {set} ip6 daddr != {set} ip6 daddr != ff00::/8 masquerade"
            ));
        }
    }
    for e in elements {
        line(format!(
            "add element {t} {} {{ {} comment \"{comment}\" : {} }}",
            e.map, e.key, e.value
        ));
    }
    s
}

/// Remove a record's elements in one transaction. Each is added (a no-op
/// when present) before it is deleted, so elements already gone do not
/// fail the whole transaction.
pub(crate) fn render_remove(rec: &Record, comment: &str) -> String {
    let t = format!("inet {}", rec.table);
    let mut s = String::new();
    for e in &rec.elements {
        s.push_str(&format!(
            "add element {t} {} {{ {} comment \"{comment}\" : {} }}\n",
            e.map, e.key, e.value
        ));
        s.push_str(&format!("delete element {t} {} {{ {} }}\n", e.map, e.key));
    }
    s
}

/// Remove the network's table, whether or not it exists (adding an
/// existing table is a no-op, so the transaction never fails on absence).
pub(crate) fn render_drop_table(table: &str) -> String {
    format!("add table inet {table}\ndelete table inet {table}\n")
}

/// An element as listed by `nft -j`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub map: String,
    pub key: String,
    pub comment: Option<String>,
}

/// Delete listed elements (known to exist).
pub(crate) fn render_delete(table: &str, elements: &[Listed]) -> String {
    elements
        .iter()
        .map(|e| format!("delete element inet {table} {} {{ {} }}\n", e.map, e.key))
        .collect()
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn key_text(v: &Value) -> Option<String> {
    match v.get("concat") {
        Some(Value::Array(parts)) => parts
            .iter()
            .map(scalar)
            .collect::<Option<Vec<_>>>()
            .map(|p| p.join(" . ")),
        _ => scalar(v),
    }
}

/// The map elements in `nft -j list table` output.
pub(crate) fn parse_listing(json: &str) -> Result<Vec<Listed>, Error> {
    let v: Value = serde_json::from_str(json).map_err(|e| Error::Listing(e.to_string()))?;
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Listing("no nftables array".into()))?;
    let mut out = Vec::new();
    for item in items {
        let Some(map) = item.get("map") else { continue };
        let name = map.get("name").and_then(Value::as_str).unwrap_or_default();
        for pair in map.get("elem").and_then(Value::as_array).into_iter().flatten() {
            // A map element is [key, value]; a key with a comment is
            // wrapped as {"elem": {"val": key, "comment": ...}}.
            let Some(k) = pair.as_array().and_then(|p| p.first()) else {
                continue;
            };
            let (key, comment) = match k.get("elem") {
                Some(e) => (e.get("val"), e.get("comment").and_then(Value::as_str).map(String::from)),
                None => (Some(k), None),
            };
            if let Some(key) = key.and_then(key_text) {
                out.push(Listed {
                    map: name.to_string(),
                    key,
                    comment,
                });
            }
        }
    }
    Ok(out)
}

fn nft_path() -> Option<&'static PathBuf> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
            .map(|d| d.join("nft"))
            .find(|p| p.is_file())
    })
    .as_ref()
}

pub(crate) fn available() -> bool {
    nft_path().is_some()
}

/// Run `script` as one nft transaction.
pub(crate) fn run(script: &str) -> Result<(), Error> {
    let nft = nft_path().ok_or(Error::Missing)?;
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(Error::Spawn)?;
    }
    let out = child.wait_with_output().map_err(Error::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Failed(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// `nft -j list table inet <table>`; `None` when there is no such table.
pub(crate) fn list(table: &str) -> Result<Option<String>, Error> {
    let nft = nft_path().ok_or(Error::Missing)?;
    let out = Command::new(nft)
        .args(["-j", "list", "table", "inet", table])
        .stdin(Stdio::null())
        .output()
        .map_err(Error::Spawn)?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file or directory") {
        Ok(None)
    } else {
        Err(Error::Failed(err.trim().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    fn pm(host: u16, ctr: u16, proto: Protocol, host_ip: Option<&str>) -> PortMapping {
        PortMapping {
            host_port: host,
            container_port: ctr,
            protocol: proto,
            host_ip: host_ip.map(|h| h.parse().unwrap()),
        }
    }

    #[test]
    fn table_names() {
        assert_eq!(table_name("pods"), "nodelet_pods");
        assert_eq!(table_name("my_net2"), "nodelet_my_net2");
        let a = table_name("a-b");
        let b = table_name("a.b");
        assert!(a.starts_with("nodelet_a_b_") && b.starts_with("nodelet_a_b_"));
        assert_ne!(a, b);
        assert_eq!(a, table_name("a-b"), "stable");
    }

    #[test]
    fn comments() {
        assert_eq!(comment("abc", "eth0"), "abc/eth0");
        let long = "f".repeat(120);
        let c = comment(&long, "eth0");
        assert!(c.starts_with("h:") && c.ends_with("/eth0") && c.len() < 40);
    }

    #[test]
    fn elements_per_family_and_host_ip() {
        let ips: Vec<IpAddr> = vec!["10.1.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let els = elements(
            &[
                pm(8080, 80, Protocol::Tcp, None),
                pm(53, 5353, Protocol::Udp, Some("192.168.1.1")),
                pm(443, 443, Protocol::Tcp, Some("fd01::1")),
                pm(8080, 80, Protocol::Tcp, None),
            ],
            &ips,
        );
        let got: Vec<(String, String, String)> = els.into_iter().map(|e| (e.map, e.key, e.value)).collect();
        let want = [
            ("hp4", "tcp . 8080", "10.1.0.5 . 80"),
            ("hp6", "tcp . 8080", "fd00::5 . 80"),
            ("hp4ip", "192.168.1.1 . udp . 53", "10.1.0.5 . 5353"),
            ("hp6ip", "fd01::1 . tcp . 443", "fd00::5 . 443"),
        ];
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        assert_eq!(got, want);
        // A v6 host address with a v4-only container maps nothing.
        assert!(elements(&[pm(1, 1, Protocol::Sctp, Some("fd01::1"))], &ips[..1]).is_empty());
    }

    #[test]
    fn add_script() {
        let rs = Ruleset {
            table: "nodelet_n",
            bridge: "br0",
            v4: vec!["10.1.0.0/16".parse().unwrap()],
            v6: vec![],
            masquerade: true,
        };
        let els = elements(&[pm(8080, 80, Protocol::Tcp, None)], &["10.1.0.5".parse().unwrap()]);
        let s = render_add(&rs, &els, "c1/eth0");
        assert!(s.starts_with("add table inet nodelet_n\n"));
        assert!(s.contains("flush chain inet nodelet_n postrouting\n"));
        assert!(s.contains(
            "add rule inet nodelet_n postrouting oifname \"br0\" ct status dnat ip saddr { 127.0.0.0/8, 10.1.0.0/16 } masquerade\n"
        ));
        assert!(s.contains("add rule inet nodelet_n postrouting ip saddr { 10.1.0.0/16 } ip daddr != { 10.1.0.0/16 } ip daddr != 224.0.0.0/4 masquerade\n"));
        assert!(!s.contains("ip6 saddr"), "no IPv6 range, no IPv6 rules");
        assert!(s.ends_with("add element inet nodelet_n hp4 { tcp . 8080 comment \"c1/eth0\" : 10.1.0.5 . 80 }\n"));
        let no_masq = render_add(
            &Ruleset {
                masquerade: false,
                ..rs
            },
            &[],
            "c",
        );
        assert!(!no_masq.contains("224.0.0.0/4"));
    }

    #[test]
    fn remove_script_and_records() {
        let rec = Record {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            table: "nodelet_n".into(),
            elements: vec![Element {
                map: "hp4".into(),
                key: "tcp . 80".into(),
                value: "10.1.0.5 . 80".into(),
            }],
        };
        assert_eq!(
            render_remove(&rec, "c1/eth0"),
            "add element inet nodelet_n hp4 { tcp . 80 comment \"c1/eth0\" : 10.1.0.5 . 80 }\ndelete element inet nodelet_n hp4 { tcp . 80 }\n"
        );
        let json = serde_json::to_string(&rec).unwrap();
        assert_eq!(parse_record(&json), Some(rec.clone()));
        let evil = json.replace("tcp . 80", "tcp . 80 }; flush ruleset; {");
        assert_eq!(parse_record(&evil), None);
        assert_eq!(parse_record("{\"container_id\":"), None);
    }

    #[test]
    fn listing() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "nodelet_n", "handle": 1}},
            {"map": {"family": "inet", "name": "hp4", "table": "nodelet_n", "type": ["inet_proto", "inet_service"], "handle": 5,
                     "map": ["ipv4_addr", "inet_service"],
                     "elem": [[{"elem": {"val": {"concat": ["tcp", 8080]}, "comment": "c1/eth0"}}, {"concat": ["10.77.0.2", 80]}],
                              [{"concat": ["udp", 53]}, {"concat": ["10.77.0.3", 53]}]]}},
            {"map": {"family": "inet", "name": "hp6ip", "table": "nodelet_n", "handle": 6,
                     "elem": [[{"elem": {"val": {"concat": ["fd00::1", "tcp", 443]}, "comment": "c2/eth0"}}, {"concat": ["fd00::5", 443]}]]}},
            {"map": {"family": "inet", "name": "hp6", "table": "nodelet_n", "handle": 7}}]}"#;
        let got = parse_listing(json).unwrap();
        assert_eq!(
            got,
            vec![
                Listed {
                    map: "hp4".into(),
                    key: "tcp . 8080".into(),
                    comment: Some("c1/eth0".into())
                },
                Listed {
                    map: "hp4".into(),
                    key: "udp . 53".into(),
                    comment: None
                },
                Listed {
                    map: "hp6ip".into(),
                    key: "fd00::1 . tcp . 443".into(),
                    comment: Some("c2/eth0".into())
                },
            ]
        );
        assert_eq!(
            render_delete("nodelet_n", &got[..1]),
            "delete element inet nodelet_n hp4 { tcp . 8080 }\n"
        );
        assert!(parse_listing("nope").is_err());
    }

    #[test]
    fn conflict_detection() {
        let e = Error::Failed("Error: Could not process rule: File exists\nadd element inet t hp4 { tcp . 1 }".into());
        assert!(e.is_conflict());
        assert!(!Error::Failed("Error: syntax error".into()).is_conflict());
    }
}
