//! nodelet-cni chained with Debian's reference plugins
//! (containernetworking-plugins, which speak CNI 1.0.0 at most) as a runtime
//! runs a conflist: ADD in order, each given the previous result; CHECK with
//! the final result; DEL in reverse. Needs root and /usr/lib/cni.

mod common;

use std::path::Path;

use common::{ip4, require_root, Net, Netns};
use serde_json::{json, Value};

const REF: &str = "/usr/lib/cni";

fn reference(name: &str) -> String {
    format!("{REF}/{name}")
}

fn with_prev(conf: &Value, prev: Option<&Value>) -> Value {
    let mut c = conf.clone();
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c
}

#[test]
fn loopback_before_and_tuning_portmap_after_ours() {
    require_root();
    if !Path::new(&reference("loopback")).is_file() {
        eprintln!("skipped: Debian's containernetworking-plugins are not installed");
        return;
    }
    let net = Net::new("chain");
    let pod = Netns::new("chain-p");
    // Loopback down first, so that the loopback plugin has work to do.
    pod.ok(&["ip", "link", "set", "lo", "down"]);
    let ours = net.conf(
        "1.0.0",
        r#"[[{"subnet":"10.205.0.0/24"}]]"#,
        r#""isDefaultGateway":true,"ipMasq":true"#,
    );
    let loopback = json!({"cniVersion": "1.0.0", "name": net.name, "type": "loopback"});
    let tuning = json!({"cniVersion": "1.0.0", "name": net.name, "type": "tuning",
        "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}});
    let portmap = json!({"cniVersion": "1.0.0", "name": net.name, "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 8383, "containerPort": 83, "protocol": "tcp"}]}});
    let id = "chained";
    let path = pod.path();

    // ADD: loopback, ours, tuning, portmap.
    let r0 = net.plugin(&reference("loopback"), "ADD", &loopback, id, &path);
    assert!(r0.ok, "loopback ADD: {}", r0.raw);
    let r1 = net.cni("ADD", &with_prev(&ours, Some(&r0.json)), id, Some(&path), "eth0");
    assert!(r1.ok, "ours after loopback: {}", r1.raw);
    let names: Vec<&str> = r1.json["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(
        names.first(),
        Some(&"lo"),
        "loopback's interface kept first: {}",
        r1.raw
    );
    assert!(names.contains(&"eth0"));
    let eth0 = names.iter().position(|n| *n == "eth0").unwrap();
    let ours_ip = r1.json["ips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ip| ip["address"].as_str().unwrap().starts_with("10.205."))
        .unwrap_or_else(|| panic!("our address in {}", r1.raw));
    assert_eq!(ours_ip["interface"], eth0, "index shifted past the previous interfaces");
    let r2 = net.plugin(
        &reference("tuning"),
        "ADD",
        &with_prev(&tuning, Some(&r1.json)),
        id,
        &path,
    );
    assert!(r2.ok, "tuning after ours: {}", r2.raw);
    assert_eq!(ip4(&r2.json), ip4(&r1.json), "tuning passes our result on");
    let r3 = net.plugin(
        &reference("portmap"),
        "ADD",
        &with_prev(&portmap, Some(&r2.json)),
        id,
        &path,
    );
    assert!(r3.ok, "portmap after ours: {}", r3.raw);
    let result = r3.json.clone();

    // The pod works: loopback up, eth0 tuned, the gateway reachable, and
    // portmap's DNAT (iptables) reaching it through the bridge's address.
    assert!(pod.ok(&["ip", "-o", "link", "show", "lo"]).contains("UP"));
    assert_eq!(pod.ok(&["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"]).trim(), "1");
    assert!(pod.ping("10.205.0.1"));
    {
        let _srv = pod.serve(83, "chained83");
        assert_eq!(net.node.tcp("10.205.0.1", 8383).as_deref(), Some("chained83"));
    }

    // CHECK with the final result, ours and the reference plugins.
    let c = net.cni("CHECK", &with_prev(&ours, Some(&result)), id, Some(&path), "eth0");
    assert!(c.ok, "our CHECK in a chain: {}", c.raw);
    for (plugin, conf) in [("loopback", &loopback), ("tuning", &tuning)] {
        let c = net.plugin(&reference(plugin), "CHECK", &with_prev(conf, Some(&result)), id, &path);
        assert!(c.ok, "{plugin} CHECK: {}", c.raw);
    }

    // DEL in reverse, each with the final result; twice.
    for _ in 0..2 {
        let d = net.plugin(
            &reference("portmap"),
            "DEL",
            &with_prev(&portmap, Some(&result)),
            id,
            &path,
        );
        assert!(d.ok, "portmap DEL: {}", d.raw);
        let d = net.plugin(
            &reference("tuning"),
            "DEL",
            &with_prev(&tuning, Some(&result)),
            id,
            &path,
        );
        assert!(d.ok, "tuning DEL: {}", d.raw);
        net.del(&with_prev(&ours, Some(&result)), id, Some(&pod));
        let d = net.plugin(
            &reference("loopback"),
            "DEL",
            &with_prev(&loopback, Some(&result)),
            id,
            &path,
        );
        assert!(d.ok, "loopback DEL: {}", d.raw);
    }
    assert!(net.allocations().is_empty());
    assert!(net.node.veths().is_empty());
    assert!(!net.node.nft().contains("nodelet_"), "{}", net.node.nft());
}
