//! The network config: the reference `bridge` plugin's keys, host-local IPAM
//! under `ipam`, the `portMappings` capability, `prevResult` and GC's valid
//! attachments. Parsing validates everything ADD relies on, so the verbs
//! never meet a half-checked config.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::result::{CniResult, Dns, Route};
use crate::{code, CniError, SUPPORTED_VERSIONS};

/// Where host-local keeps its allocations unless `ipam.dataDir` says.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
/// The reference plugin's default bridge name.
pub const DEFAULT_BRIDGE: &str = "cni0";

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("malformed JSON: {0}")]
    Syntax(serde_json::Error),
    #[error("invalid network config: {0}")]
    Shape(serde_json::Error),
    #[error("missing cniVersion")]
    NoVersion,
    #[error("incompatible CNI version {0}")]
    Version(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unsupported(String),
}

impl From<Error> for CniError {
    fn from(e: Error) -> Self {
        match e {
            Error::Syntax(_) => CniError::with_details(code::DECODE, "cannot decode the network config", e.to_string()),
            Error::NoVersion | Error::Version(_) => CniError::with_details(
                code::INCOMPATIBLE_VERSION,
                e.to_string(),
                format!("plugin supports {}", SUPPORTED_VERSIONS.join(", ")),
            ),
            Error::Unsupported(_) => CniError::new(code::UNSUPPORTED_FIELD, e.to_string()),
            Error::Shape(_) | Error::Invalid(_) => CniError::new(code::INVALID_CONFIG, e.to_string()),
        }
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// The parsed, validated config of one `nodelet-bridge` network.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeConf {
    /// `cniVersion`: one of [`SUPPORTED_VERSIONS`]; results use its format.
    pub cni_version: String,
    /// `name`: the network name (IPAM directory and nft table derive from it).
    pub name: String,
    /// `type` as given (normally `nodelet-bridge`).
    pub plugin_type: String,
    /// `bridge`: the Linux bridge (default `cni0`).
    pub bridge: String,
    /// `isGateway`: give the bridge the ranges' gateway addresses.
    pub is_gateway: bool,
    /// `isDefaultGateway`: default route via the gateway (implies isGateway).
    pub is_default_gateway: bool,
    /// `ipMasq`: masquerade traffic from the ranges leaving the ranges.
    pub ip_masq: bool,
    /// `hairpinMode`: let frames go back out the port they came in on.
    pub hairpin_mode: bool,
    /// `promiscMode`: put the bridge in promiscuous mode.
    pub promisc_mode: bool,
    /// `mtu` of the bridge and veth pairs; kernel default when absent.
    pub mtu: Option<u32>,
    /// Built-in host-local IPAM.
    pub ipam: IpamConf,
    /// `dns`, passed through to the result.
    pub dns: Dns,
    /// `runtimeConfig.portMappings`.
    pub port_mappings: Vec<PortMapping>,
    /// `prevResult`, converted from whatever version it was in.
    pub prev_result: Option<CniResult>,
    /// `cni.dev/valid-attachments` (GC), as (container id, ifname).
    pub valid_attachments: Option<Vec<(String, String)>>,
}

/// host-local's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct IpamConf {
    /// Range sets; each attachment gets one address from every set.
    pub range_sets: Vec<Vec<Range>>,
    /// Routes to program in the container (`gw` defaults to the gateway).
    pub routes: Vec<Route>,
    /// Allocation store root; the network's files live in `<dataDir>/<name>`.
    pub data_dir: PathBuf,
    /// Addresses (or blocks) never handed out.
    pub exclude: Vec<IpNet>,
}

/// One allocation range, canonicalised as host-local does: start and end
/// default to the first and last usable host, the gateway to the first host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet (network address, prefix).
    pub subnet: IpNet,
    /// First address that may be handed out.
    pub range_start: IpAddr,
    /// Last address that may be handed out.
    pub range_end: IpAddr,
    /// The gateway (never handed out).
    pub gateway: IpAddr,
}

/// Transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// nft's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One entry of the `portMappings` capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// Port on the node.
    pub host_port: u16,
    /// Port in the container.
    pub container_port: u16,
    /// tcp (default), udp or sctp.
    pub protocol: Protocol,
    /// Only this node address; `None` for every local address.
    pub host_ip: Option<IpAddr>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    bridge: Option<String>,
    #[serde(default)]
    is_gateway: bool,
    #[serde(default)]
    is_default_gateway: bool,
    #[serde(default)]
    ip_masq: bool,
    #[serde(default)]
    hairpin_mode: bool,
    #[serde(default)]
    promisc_mode: bool,
    mtu: Option<u32>,
    ipam: Option<RawIpam>,
    #[serde(default)]
    dns: Dns,
    #[serde(default)]
    runtime_config: RawRuntimeConfig,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<RawAttachment>>,
    // libcni also sends the misspelt key an early draft of the spec used.
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<RawAttachment>>,
    // Reference bridge features this plugin does not implement: refused
    // when asked for rather than silently ignored.
    vlan: Option<u32>,
    vlan_trunk: Option<Value>,
    macspoofchk: Option<bool>,
    disable_container_interface: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawRuntimeConfig {
    #[serde(default)]
    port_mappings: Vec<RawPortMapping>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPortMapping {
    host_port: u32,
    container_port: u32,
    protocol: Option<String>,
    #[serde(rename = "hostIP")]
    host_ip: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    #[serde(default)]
    ifname: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(rename = "type")]
    ipam_type: Option<String>,
    ranges: Option<Vec<Vec<RawRange>>>,
    subnet: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    data_dir: Option<String>,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
}

#[derive(Deserialize)]
struct RawRoute {
    dst: Option<String>,
    gw: Option<String>,
}

/// Parse and validate one plugin config.
pub(crate) fn parse(json: &[u8]) -> Result<BridgeConf, CniError> {
    Ok(parse_inner(json)?)
}

fn parse_inner(json: &[u8]) -> Result<BridgeConf, Error> {
    let value: Value = serde_json::from_slice(json).map_err(Error::Syntax)?;
    if !value.is_object() {
        return Err(invalid("the network config must be a JSON object"));
    }
    let version = match value.get("cniVersion") {
        None | Some(Value::Null) => return Err(Error::NoVersion),
        Some(Value::String(v)) => v.clone(),
        Some(other) => return Err(Error::Version(other.to_string())),
    };
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(Error::Version(version));
    }
    let raw: RawConf = serde_json::from_value(value).map_err(Error::Shape)?;

    let name = raw.name.ok_or_else(|| invalid("missing network name"))?;
    if !valid_network_name(&name) {
        return Err(invalid(format!(
            "invalid network name {name:?}: letters, digits, '_', '.', '-', starting with a letter or digit"
        )));
    }
    let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
    if !valid_bridge_name(&bridge) {
        return Err(invalid(format!(
            "invalid bridge name {bridge:?}: 1 to 15 of letters, digits, '_', '.', '-'"
        )));
    }
    if let Some(mtu) = raw.mtu {
        if !(68..=65535).contains(&mtu) {
            return Err(invalid(format!("invalid mtu {mtu}: must be 68 to 65535")));
        }
    }
    if raw.vlan.unwrap_or(0) != 0 || raw.vlan_trunk.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(Error::Unsupported(
            "vlan and vlanTrunk are not supported by nodelet-bridge".into(),
        ));
    }
    if raw.macspoofchk == Some(true) {
        return Err(Error::Unsupported(
            "macspoofchk is not supported by nodelet-bridge".into(),
        ));
    }
    if raw.disable_container_interface == Some(true) {
        return Err(Error::Unsupported(
            "disableContainerInterface is not supported by nodelet-bridge".into(),
        ));
    }

    let ipam = parse_ipam(
        raw.ipam
            .ok_or_else(|| invalid("missing ipam: nodelet-bridge needs ipam type host-local"))?,
    )?;
    let port_mappings = raw
        .runtime_config
        .port_mappings
        .iter()
        .enumerate()
        .map(|(i, pm)| parse_port_mapping(i, pm))
        .collect::<Result<Vec<_>, _>>()?;
    let prev_result = match raw.prev_result {
        None | Some(Value::Null) => None,
        Some(v) => Some(CniResult::from_json(&v).map_err(|e| invalid(format!("invalid prevResult: {e}")))?),
    };
    let valid_attachments = raw
        .valid_attachments
        .or(raw.attachments)
        .map(|list| list.into_iter().map(|a| (a.container_id, a.ifname)).collect());

    Ok(BridgeConf {
        cni_version: version,
        name,
        plugin_type: raw.plugin_type.unwrap_or_default(),
        bridge,
        is_gateway: raw.is_gateway || raw.is_default_gateway,
        is_default_gateway: raw.is_default_gateway,
        ip_masq: raw.ip_masq,
        hairpin_mode: raw.hairpin_mode,
        promisc_mode: raw.promisc_mode,
        mtu: raw.mtu,
        ipam,
        dns: raw.dns,
        port_mappings,
        prev_result,
        valid_attachments,
    })
}

fn parse_ip(what: &str, s: &str) -> Result<IpAddr, Error> {
    s.trim()
        .parse()
        .map_err(|_| invalid(format!("{what}: {s:?} is not an IP address")))
}

fn parse_cidr(what: &str, s: &str) -> Result<IpNet, Error> {
    s.trim()
        .parse()
        .map_err(|_| invalid(format!("{what}: {s:?} is not a CIDR (address/prefix)")))
}

fn parse_ipam(raw: RawIpam) -> Result<IpamConf, Error> {
    match raw.ipam_type.as_deref() {
        Some("host-local") => {}
        Some(other) => {
            return Err(invalid(format!(
                "unsupported ipam type {other:?}: nodelet-bridge has built-in host-local IPAM only"
            )))
        }
        None => return Err(invalid("missing ipam type (host-local)")),
    }
    let mut raw_sets: Vec<Vec<RawRange>> = Vec::new();
    // host-local's legacy single range comes first, then `ranges`.
    if raw.subnet.is_some() {
        raw_sets.push(vec![RawRange {
            subnet: raw.subnet,
            range_start: raw.range_start,
            range_end: raw.range_end,
            gateway: raw.gateway,
        }]);
    } else if raw.range_start.is_some() || raw.range_end.is_some() || raw.gateway.is_some() {
        return Err(invalid("ipam rangeStart/rangeEnd/gateway given without ipam.subnet"));
    }
    raw_sets.extend(raw.ranges.unwrap_or_default());
    if raw_sets.is_empty() {
        return Err(invalid("ipam has no ranges (ipam.ranges or ipam.subnet)"));
    }
    let mut range_sets = Vec::with_capacity(raw_sets.len());
    for (i, set) in raw_sets.into_iter().enumerate() {
        if set.is_empty() {
            return Err(invalid(format!("ipam range set {i} is empty")));
        }
        let ranges = set
            .into_iter()
            .enumerate()
            .map(|(j, r)| parse_range(&format!("ipam range {i}.{j}"), r))
            .collect::<Result<Vec<_>, _>>()?;
        let v4 = ranges[0].subnet.addr().is_ipv4();
        if ranges.iter().any(|r| r.subnet.addr().is_ipv4() != v4) {
            return Err(invalid(format!("ipam range set {i} mixes IPv4 and IPv6")));
        }
        range_sets.push(ranges);
    }
    // Overlapping ranges would hand out one address twice.
    let all: Vec<&Range> = range_sets.iter().flatten().collect();
    for (a, ra) in all.iter().enumerate() {
        for rb in &all[a + 1..] {
            if overlaps(ra, rb) {
                return Err(invalid(format!("ipam ranges {} and {} overlap", ra.subnet, rb.subnet)));
            }
        }
    }
    let routes = raw
        .routes
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let what = format!("ipam.routes[{i}]");
            let dst = parse_cidr(
                &format!("{what}.dst"),
                r.dst
                    .as_deref()
                    .ok_or_else(|| invalid(format!("{what}: missing dst")))?,
            )?;
            let gw =
                r.gw.as_deref()
                    .map(|g| parse_ip(&format!("{what}.gw"), g))
                    .transpose()?;
            if gw.is_some_and(|g| g.is_ipv4() != dst.addr().is_ipv4()) {
                return Err(invalid(format!("{what}: dst and gw are of different families")));
            }
            Ok(Route {
                dst: dst.trunc(),
                gw,
                ..Default::default()
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let exclude = raw
        .exclude
        .iter()
        .map(|e| {
            if e.contains('/') {
                parse_cidr("ipam.exclude", e)
            } else {
                parse_ip("ipam.exclude", e).map(IpNet::from)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let data_dir = PathBuf::from(raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.to_string()));
    if !data_dir.is_absolute() {
        return Err(invalid(format!(
            "ipam.dataDir {} must be an absolute path",
            data_dir.display()
        )));
    }
    Ok(IpamConf {
        range_sets,
        routes,
        data_dir,
        exclude,
    })
}

fn overlaps(a: &Range, b: &Range) -> bool {
    a.subnet.contains(&b.subnet.network()) || b.subnet.contains(&a.subnet.network())
}

/// host-local's `Range.Canonicalize`.
fn parse_range(what: &str, raw: RawRange) -> Result<Range, Error> {
    let subnet_s = raw.subnet.ok_or_else(|| invalid(format!("{what}: missing subnet")))?;
    let subnet = parse_cidr(&format!("{what}.subnet"), &subnet_s)?;
    if subnet.addr() != subnet.network() {
        return Err(invalid(format!(
            "{what}: subnet {subnet} has host bits set (network address is {}/{})",
            subnet.network(),
            subnet.prefix_len()
        )));
    }
    // A /31 or /32 (/127, /128) has no address left once the network and
    // gateway are taken.
    if subnet.prefix_len() + 2 > subnet.max_prefix_len() {
        return Err(invalid(format!(
            "{what}: subnet {subnet} is too small to allocate from"
        )));
    }
    let inside = |field: &str, ip: IpAddr| {
        if subnet.contains(&ip) {
            Ok(ip)
        } else {
            Err(invalid(format!("{what}.{field}: {ip} is not in {subnet}")))
        }
    };
    let first_host = crate::ipam::add(subnet.network(), 1);
    let last_usable = match subnet {
        IpNet::V4(n) => crate::ipam::add(IpAddr::V4(n.broadcast()), -1),
        IpNet::V6(n) => IpAddr::V6(n.broadcast()),
    };
    let gateway = match raw.gateway {
        Some(g) => inside("gateway", parse_ip(&format!("{what}.gateway"), &g)?)?,
        None => first_host,
    };
    let range_start = match raw.range_start {
        Some(s) => inside("rangeStart", parse_ip(&format!("{what}.rangeStart"), &s)?)?,
        None => first_host,
    };
    let range_end = match raw.range_end {
        Some(s) => inside("rangeEnd", parse_ip(&format!("{what}.rangeEnd"), &s)?)?,
        None => last_usable,
    };
    if crate::ipam::to_u128(range_start) > crate::ipam::to_u128(range_end) {
        return Err(invalid(format!(
            "{what}: rangeStart {range_start} is after rangeEnd {range_end}"
        )));
    }
    Ok(Range {
        subnet,
        range_start,
        range_end,
        gateway,
    })
}

fn parse_port_mapping(i: usize, raw: &RawPortMapping) -> Result<PortMapping, Error> {
    let what = format!("runtimeConfig.portMappings[{i}]");
    let port = |field: &str, p: u32| {
        u16::try_from(p)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(format!("{what}.{field}: {p} is not a port (1 to 65535)")))
    };
    let protocol = match raw.protocol.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("tcp") => Protocol::Tcp,
        Some("udp") => Protocol::Udp,
        Some("sctp") => Protocol::Sctp,
        Some(other) => return Err(invalid(format!("{what}.protocol: unknown protocol {other:?}"))),
    };
    let host_ip = match raw.host_ip.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(parse_ip(&format!("{what}.hostIP"), s)?).filter(|ip| !ip.is_unspecified()),
    };
    Ok(PortMapping {
        host_port: port("hostPort", raw.host_port)?,
        container_port: port("containerPort", raw.container_port)?,
        protocol,
        host_ip,
    })
}

/// The spec's network name rule: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub(crate) fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A kernel interface name, narrowed to characters that need no quoting in
/// nft rules.
fn valid_bridge_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The spec's container id rule (alphanumerics, '_', '.', '-').
pub(crate) fn valid_container_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The kernel's interface name rule (1 to 15 bytes, no '/', ':' or space,
/// not "." or ".."), narrowed to printable ASCII without quotes so names can
/// go into nft comments and file names verbatim.
pub(crate) fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | ':' | '"' | '\\' | '\''))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(version: &str) -> String {
        format!(
            r#"{{"cniVersion":"{version}","name":"net1","type":"nodelet-bridge","bridge":"br9","isGateway":true,
                "ipMasq":true,"ipam":{{"type":"host-local","subnet":"10.88.0.0/16","routes":[{{"dst":"0.0.0.0/0"}}]}}}}"#
        )
    }

    fn err(json: &str) -> CniError {
        parse(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_every_supported_version() {
        for v in SUPPORTED_VERSIONS {
            let c = parse(conf(v).as_bytes()).unwrap();
            assert_eq!(c.cni_version, *v);
            assert_eq!(c.name, "net1");
            assert_eq!(c.bridge, "br9");
            assert!(c.is_gateway && c.ip_masq && !c.is_default_gateway);
            let r = &c.ipam.range_sets[0][0];
            assert_eq!(r.subnet.to_string(), "10.88.0.0/16");
            assert_eq!(r.gateway.to_string(), "10.88.0.1");
            assert_eq!(r.range_start.to_string(), "10.88.0.1");
            assert_eq!(r.range_end.to_string(), "10.88.255.254");
            assert_eq!(c.ipam.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
            assert_eq!(c.ipam.routes[0].dst.to_string(), "0.0.0.0/0");
        }
    }

    #[test]
    fn defaults() {
        let c = parse(br#"{"cniVersion":"1.0.0","name":"n","type":"nodelet-bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"fd00:1::/64"}]]}}"#).unwrap();
        assert_eq!(c.bridge, "cni0");
        assert!(!c.is_gateway && !c.ip_masq && !c.hairpin_mode && !c.promisc_mode);
        assert_eq!(c.mtu, None);
        let r = &c.ipam.range_sets[0][0];
        assert_eq!(r.range_end.to_string(), "fd00:1::ffff:ffff:ffff:ffff");
        assert_eq!(r.gateway.to_string(), "fd00:1::1");
    }

    #[test]
    fn is_default_gateway_implies_is_gateway() {
        let c = parse(br#"{"cniVersion":"1.1.0","name":"n","isDefaultGateway":true,"ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}"#).unwrap();
        assert!(c.is_gateway && c.is_default_gateway);
    }

    #[test]
    fn full_config() {
        let c = parse(
            br#"{"cniVersion":"1.1.0","name":"dual","type":"nodelet-bridge","bridge":"nbr0","mtu":1400,"hairpinMode":true,
            "promiscMode":true,"dns":{"nameservers":["10.0.0.10"],"search":["svc"]},
            "ipam":{"type":"host-local","dataDir":"/tmp/x","exclude":["10.2.0.5","10.2.0.8/30"],
              "ranges":[[{"subnet":"10.2.0.0/24","rangeStart":"10.2.0.10","rangeEnd":"10.2.0.20","gateway":"10.2.0.254"},
                         {"subnet":"10.3.0.0/24"}],[{"subnet":"fd00::/120"}]],
              "routes":[{"dst":"192.168.0.0/16","gw":"10.2.0.254"}]},
            "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"TCP"},
                                              {"hostPort":53,"containerPort":53,"protocol":"udp","hostIP":"127.0.0.1"},
                                              {"hostPort":9,"containerPort":9,"hostIP":"0.0.0.0"}],"other":1},
            "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],
            "prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"lo"}],"ips":[{"address":"10.9.0.2/24","interface":0}]}}"#,
        )
        .unwrap();
        assert_eq!(c.mtu, Some(1400));
        assert!(c.hairpin_mode && c.promisc_mode);
        assert_eq!(c.dns.nameservers, vec!["10.0.0.10"]);
        assert_eq!(c.ipam.range_sets.len(), 2);
        assert_eq!(c.ipam.range_sets[0].len(), 2);
        assert_eq!(c.ipam.range_sets[0][0].range_start.to_string(), "10.2.0.10");
        assert_eq!(c.ipam.range_sets[0][0].gateway.to_string(), "10.2.0.254");
        assert_eq!(c.ipam.range_sets[1][0].range_end.to_string(), "fd00::ff");
        assert_eq!(c.ipam.exclude.len(), 2);
        assert_eq!(c.ipam.routes[0].gw.unwrap().to_string(), "10.2.0.254");
        assert_eq!(c.port_mappings.len(), 3);
        assert_eq!(c.port_mappings[0].protocol, Protocol::Tcp);
        assert_eq!(c.port_mappings[1].protocol, Protocol::Udp);
        assert_eq!(c.port_mappings[1].host_ip.unwrap().to_string(), "127.0.0.1");
        assert_eq!(c.port_mappings[2].host_ip, None, "0.0.0.0 means every address");
        assert_eq!(c.valid_attachments, Some(vec![("a".to_string(), "eth0".to_string())]));
        let prev = c.prev_result.unwrap();
        assert_eq!(prev.ips[0].address.to_string(), "10.9.0.2/24");
    }

    #[test]
    fn old_spelling_of_valid_attachments() {
        let c = parse(
            br#"{"cniVersion":"1.1.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/24"},
            "cni.dev/attachments":[{"containerID":"b","ifname":"net1"}]}"#,
        )
        .unwrap();
        assert_eq!(c.valid_attachments, Some(vec![("b".to_string(), "net1".to_string())]));
    }

    #[test]
    fn version_errors() {
        for bad in ["0.3.1", "0.1.0", "2.0.0", ""] {
            let e = err(&conf(bad));
            assert_eq!(e.code, code::INCOMPATIBLE_VERSION, "{bad}");
            assert!(e.details.contains("0.4.0, 1.0.0, 1.1.0"), "{e:?}");
        }
        let e = err(r#"{"name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}"#);
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert_eq!(err(r#"{"cniVersion":1,"name":"n"}"#).code, code::INCOMPATIBLE_VERSION);
    }

    #[test]
    fn malformed_json_is_a_decode_error() {
        assert_eq!(err("{").code, code::DECODE);
        assert_eq!(err("").code, code::DECODE);
        assert_eq!(err(r#"{"cniVersion":"1.0.0",}"#).code, code::DECODE);
        assert_eq!(err("[1]").code, code::INVALID_CONFIG);
    }

    #[test]
    fn invalid_configs() {
        let cases = [
            (
                r#"{"cniVersion":"1.0.0","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}"#,
                "name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"-x","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}"#,
                "network name",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, "missing ipam"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"dhcp"}}"#,
                "unsupported ipam type",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.1.0.0/24"}}"#,
                "missing ipam type",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"}}"#,
                "no ranges",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0"}}"#,
                "not a CIDR",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.300/24"}}"#,
                "not a CIDR",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.5/24"}}"#,
                "host bits",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/31"}}"#,
                "too small",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/24","gateway":"10.2.0.1"}}"#,
                "not in",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/24","rangeStart":"10.1.0.9","rangeEnd":"10.1.0.3"}}"#,
                "after rangeEnd",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","rangeStart":"10.1.0.9"}}"#,
                "without ipam.subnet",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","ranges":[[]]}}"#,
                "empty",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"fd00::/64"}]]}}"#,
                "mixes",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/16"}],[{"subnet":"10.1.2.0/24"}]]}}"#,
                "overlap",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","ranges":[[{"gateway":"10.1.0.1"}]]}}"#,
                "missing subnet",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/24","routes":[{"gw":"10.1.0.1"}]}}"#,
                "missing dst",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/24","routes":[{"dst":"::/0","gw":"10.1.0.1"}]}}"#,
                "different families",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/24","dataDir":"rel"}}"#,
                "absolute",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/24","exclude":["x"]}}"#,
                "not an IP",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","bridge":"a-very-long-bridge-name","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}"#,
                "bridge name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","bridge":"br\"0","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}"#,
                "bridge name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","mtu":20,"ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}"#,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","mtu":"big","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}"#,
                "expected u32",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","isGateway":"yes","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}"#,
                "expected a boolean",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/24"},"runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":80}]}}"#,
                "hostPort",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/24"},"runtimeConfig":{"portMappings":[{"hostPort":70000,"containerPort":80}]}}"#,
                "hostPort",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/24"},"runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":80,"protocol":"icmp"}]}}"#,
                "protocol",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/24"},"runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":80,"hostIP":"nope"}]}}"#,
                "hostIP",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/24"},"runtimeConfig":{"portMappings":[{"containerPort":80}]}}"#,
                "hostPort",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/24"},"prevResult":{"ips":[{"address":"bad"}]}}"#,
                "prevResult",
            ),
        ];
        for (json, needle) in cases {
            let e = err(json);
            assert_eq!(e.code, code::INVALID_CONFIG, "{json}: {e:?}");
            assert!(e.msg.contains(needle), "{json}: {:?} lacks {needle:?}", e.msg);
        }
    }

    #[test]
    fn unsupported_reference_features() {
        for extra in [
            r#""vlan":100"#,
            r#""vlanTrunk":[{"id":5}]"#,
            r#""macspoofchk":true"#,
            r#""disableContainerInterface":true"#,
        ] {
            let json = format!(
                r#"{{"cniVersion":"1.0.0","name":"n",{extra},"ipam":{{"type":"host-local","subnet":"10.1.0.0/24"}}}}"#
            );
            assert_eq!(err(&json).code, code::UNSUPPORTED_FIELD, "{extra}");
        }
        // Their defaults are fine.
        parse(br#"{"cniVersion":"1.0.0","name":"n","vlan":0,"macspoofchk":false,"ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}"#).unwrap();
    }

    #[test]
    fn name_rules() {
        assert!(valid_network_name("a.b-c_1"));
        assert!(!valid_network_name(""));
        assert!(!valid_network_name("a b"));
        assert!(valid_container_id("abc-123_x.y"));
        assert!(!valid_container_id("a/b"));
        assert!(!valid_container_id(""));
        assert!(valid_ifname("eth0"));
        assert!(valid_ifname("net-1.a"));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
        assert!(!valid_ifname("0123456789abcdef"));
        assert!(!valid_ifname(".."));
        assert!(!valid_ifname("a\"b"));
    }
}
