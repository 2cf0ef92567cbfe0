//! The CNI result, held in the 1.1.0 shape and written out in any supported
//! version's: 0.4.0 adds `ips[].version`; 1.0.0 lacks 1.1.0's interface
//! `mtu`/`socketPath`/`pciID` and route `mtu`/`advmss`/`priority`/`table`/
//! `scope`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("{0}")]
    Shape(#[from] serde_json::Error),
    #[error("ips[{0}].interface {1} is not an index into interfaces")]
    BadInterfaceIndex(usize, usize),
    #[error("a result must be a JSON object")]
    NotAnObject,
}

/// A CNI result (`interfaces`, `ips`, `routes`, `dns`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// Interfaces the plugins created or used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes programmed in the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings for the container.
    #[serde(default)]
    pub dns: Dns,
}

/// One entry of `interfaces`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, `aa:bb:...`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for container interfaces; absent for host ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// vhost-user socket (1.1.0).
    #[serde(default, rename = "socketPath", skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// PCI address (1.1.0).
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// One entry of `ips`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with the subnet's prefix length, e.g. `10.88.0.2/16`.
    pub address: IpNet,
    /// The subnet's gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces` of the interface holding the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route (result `routes` and `ipam.routes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop; the gateway of the destination's family when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Route MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Metric (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Scope (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

impl Default for Route {
    fn default() -> Self {
        Route {
            dst: IpNet::V4(Default::default()),
            gw: None,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// The `dns` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

const V11_INTERFACE_KEYS: [&str; 3] = ["mtu", "socketPath", "pciID"];
const V11_ROUTE_KEYS: [&str; 5] = ["mtu", "advmss", "priority", "table", "scope"];

impl CniResult {
    /// Read a result in any supported version's format (a `prevResult`).
    pub fn from_json(value: &Value) -> Result<CniResult, String> {
        Self::parse(value).map_err(|e| e.to_string())
    }

    fn parse(value: &Value) -> Result<CniResult, Error> {
        if !value.is_object() {
            return Err(Error::NotAnObject);
        }
        let r: CniResult = serde_json::from_value(value.clone())?;
        for (i, ip) in r.ips.iter().enumerate() {
            if let Some(idx) = ip.interface {
                if idx >= r.interfaces.len() {
                    return Err(Error::BadInterfaceIndex(i, idx));
                }
            }
        }
        Ok(r)
    }

    /// The result as the spec's JSON for `version` (one of
    /// [`crate::SUPPORTED_VERSIONS`]), `cniVersion` included.
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_else(|_| Value::Object(Default::default()));
        let legacy = version.starts_with("0.");
        let before_11 = legacy || version == "1.0.0";
        if before_11 {
            strip(&mut v, "interfaces", &V11_INTERFACE_KEYS);
            strip(&mut v, "routes", &V11_ROUTE_KEYS);
        }
        if legacy {
            if let Some(ips) = v.get_mut("ips").and_then(Value::as_array_mut) {
                for (ip, conf) in ips.iter_mut().zip(&self.ips) {
                    let family = if conf.address.addr().is_ipv4() { "4" } else { "6" };
                    ip["version"] = Value::String(family.into());
                }
            }
        }
        let mut out = serde_json::Map::new();
        out.insert("cniVersion".into(), Value::String(version.into()));
        if let Value::Object(fields) = v {
            out.extend(fields);
        }
        Value::Object(out)
    }

    /// The addresses in `ips`, without prefix lengths.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.ips.iter().map(|ip| ip.address.addr()).collect()
    }

    /// Append `other` (this plugin's part) after `self` (a `prevResult`),
    /// shifting `other`'s interface indexes past `self`'s interfaces.
    pub(crate) fn merge(mut self, other: CniResult) -> CniResult {
        let offset = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        for route in other.routes {
            if !self.routes.contains(&route) {
                self.routes.push(route);
            }
        }
        if self.dns == Dns::default() {
            self.dns = other.dns;
        }
        self
    }
}

fn strip(v: &mut Value, list: &str, keys: &[&str]) {
    if let Some(items) = v.get_mut(list).and_then(Value::as_array_mut) {
        for item in items.iter_mut().filter_map(Value::as_object_mut) {
            for k in keys {
                item.remove(*k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    ..Default::default()
                },
                Interface {
                    name: "veth1234abcd".into(),
                    mac: "02:00:00:00:00:02".into(),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:03".into(),
                    mtu: Some(1400),
                    sandbox: Some("/var/run/netns/x".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.88.0.2/16".parse().unwrap(),
                    gateway: Some("10.88.0.1".parse().unwrap()),
                    interface: Some(2),
                },
                IpConfig {
                    address: "fd00::2/64".parse().unwrap(),
                    gateway: Some("fd00::1".parse().unwrap()),
                    interface: Some(2),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.88.0.1".parse().unwrap()),
                priority: Some(10),
                ..Default::default()
            }],
            dns: Dns {
                nameservers: vec!["10.0.0.10".into()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn to_json_1_1_0_keeps_new_fields() {
        let v = sample().to_json("1.1.0");
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][2]["mtu"], 1400);
        assert_eq!(v["interfaces"][2]["sandbox"], "/var/run/netns/x");
        assert!(v["interfaces"][0].get("sandbox").is_none());
        assert_eq!(v["ips"][0]["address"], "10.88.0.2/16");
        assert_eq!(v["ips"][0]["gateway"], "10.88.0.1");
        assert_eq!(v["ips"][0]["interface"], 2);
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["routes"][0]["priority"], 10);
        assert_eq!(v["dns"]["nameservers"], json!(["10.0.0.10"]));
    }

    #[test]
    fn to_json_1_0_0_drops_1_1_fields() {
        let v = sample().to_json("1.0.0");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["interfaces"][2].get("mtu").is_none());
        assert!(v["routes"][0].get("priority").is_none());
        assert_eq!(v["routes"][0]["gw"], "10.88.0.1");
        assert!(v["ips"][1].get("version").is_none());
    }

    #[test]
    fn to_json_0_4_0_has_ip_versions() {
        let v = sample().to_json("0.4.0");
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert_eq!(v["ips"][1]["interface"], 2);
        assert!(v["interfaces"][2].get("mtu").is_none());
    }

    #[test]
    fn empty_result_still_has_dns() {
        let v = CniResult::default().to_json("1.0.0");
        assert_eq!(v, json!({"cniVersion": "1.0.0", "dns": {}}));
    }

    #[test]
    fn round_trips_through_every_version() {
        for version in crate::SUPPORTED_VERSIONS {
            let back = CniResult::from_json(&sample().to_json(version)).unwrap();
            assert_eq!(back.ips, sample().ips, "{version}");
            assert_eq!(back.interfaces.len(), 3);
        }
        assert_eq!(CniResult::from_json(&sample().to_json("1.1.0")).unwrap(), sample());
    }

    #[test]
    fn from_json_rejects_bad_input() {
        assert!(CniResult::from_json(&json!({"ips": [{"address": "10.0.0.1"}]})).is_err());
        assert!(CniResult::from_json(&json!({"ips": [{"address": "10.0.0.1/8", "interface": 1}]})).is_err());
        assert!(CniResult::from_json(&json!({"interfaces": [{"mac": "x"}]})).is_err());
        assert!(CniResult::from_json(&json!([])).is_err());
    }

    #[test]
    fn ips_lists_addresses() {
        let ips: Vec<String> = sample().ips().iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["10.88.0.2", "fd00::2"]);
    }

    #[test]
    fn merge_keeps_previous_and_shifts_indexes() {
        let prev = CniResult {
            interfaces: vec![Interface {
                name: "lo".into(),
                ..Default::default()
            }],
            ips: vec![IpConfig {
                address: "127.0.0.1/8".parse().unwrap(),
                gateway: None,
                interface: Some(0),
            }],
            ..Default::default()
        };
        let merged = prev.merge(sample());
        assert_eq!(merged.interfaces.len(), 4);
        assert_eq!(merged.interfaces[0].name, "lo");
        assert_eq!(merged.ips.len(), 3);
        assert_eq!(merged.ips[0].interface, Some(0));
        assert_eq!(merged.ips[1].interface, Some(3));
        assert_eq!(merged.dns.nameservers, vec!["10.0.0.10"]);
    }
}
