//! The `nodelet-cni` binary driven exactly as a CNI runtime drives it
//! (environment + stdin, JSON on stdout), in namespaces of each test's own.
//! Needs root.

mod common;

use std::net::IpAddr;
use std::path::Path;

use common::{ip4, ip6, ok, require_root, Net, Netns};
use serde_json::json;

const V4_24: &str = r#"[[{"subnet":"10.201.0.0/24"}]]"#;

#[test]
fn every_verb_at_every_version() {
    require_root();
    for (i, version) in ["0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let tag = format!("v{i}");
        let net = Net::new(&tag);
        let ranges = format!(r#"[[{{"subnet":"10.21{i}.0.0/24"}}]]"#);
        let conf = net.conf(version, &ranges, r#""isDefaultGateway":true,"ipMasq":true"#);
        let (c1, c2) = (Netns::new(&format!("{tag}-a")), Netns::new(&format!("{tag}-b")));

        let r1 = net.add(&conf, "ctr-one", &c1);
        let r2 = net.add(&conf, "ctr-two", &c2);
        // The result in the config's version.
        assert_eq!(r1["cniVersion"], version);
        let ip = &r1["ips"][0];
        assert_eq!(ip["address"], format!("10.21{i}.0.2/24"));
        assert_eq!(ip["gateway"], format!("10.21{i}.0.1"));
        assert_eq!(ip["interface"], 2);
        assert_eq!(ip.get("version").is_some(), version == "0.4.0", "{r1}");
        let ifs = r1["interfaces"].as_array().unwrap();
        assert_eq!(ifs[0]["name"], net.bridge.as_str());
        assert!(ifs[1]["name"].as_str().unwrap().starts_with("veth"));
        assert_eq!(ifs[2]["name"], "eth0");
        assert_eq!(ifs[2]["sandbox"], c1.path().display().to_string());
        assert_eq!(ifs[2].get("mtu").is_some(), version == "1.1.0");
        assert_eq!(
            r1["routes"][0],
            json!({"dst": "0.0.0.0/0", "gw": format!("10.21{i}.0.1")})
        );
        assert_eq!(ip4(&r2), format!("10.21{i}.0.3"));

        // A working interface: gateway and the other container.
        assert!(c1.ping(&format!("10.21{i}.0.1")), "{version}: gateway");
        assert!(c1.ping(&ip4(&r2)), "{version}: pod to pod");
        assert_eq!(net.node.veths().len(), 2);
        let mac = c1.ok(&["cat", "/sys/class/net/eth0/address"]);
        assert_eq!(mac.trim(), ifs[2]["mac"].as_str().unwrap());

        // CHECK with the result as prevResult.
        let check = net.cni(
            "CHECK",
            &Net::with_prev(&conf, &r1),
            "ctr-one",
            Some(&c1.path()),
            "eth0",
        );
        assert!(check.ok, "{version}: CHECK {}", check.raw);
        assert!(check.raw.trim().is_empty());

        // STATUS and GC are 1.1.0 verbs.
        let status = net.cni("STATUS", &conf, "", None, "");
        if version == "1.1.0" {
            assert!(status.ok, "{}", status.raw);
        } else {
            assert_eq!(status.code(), 1, "{}", status.raw);
        }

        // DEL removes the veth and the allocation; twice is fine.
        net.del(&conf, "ctr-one", Some(&c1));
        assert!(!c1.links().contains(&"eth0".to_string()));
        assert_eq!(net.node.veths().len(), 1);
        assert_eq!(net.allocations(), [format!("10.21{i}.0.3")]);
        net.del(&conf, "ctr-one", Some(&c1));
        // CHECK now fails.
        let check = net.cni(
            "CHECK",
            &Net::with_prev(&conf, &r1),
            "ctr-one",
            Some(&c1.path()),
            "eth0",
        );
        assert!(!check.ok);
        assert_eq!(check.json["cniVersion"], version);

        net.del(&conf, "ctr-two", Some(&c2));
        assert!(net.node.veths().is_empty());
        assert!(net.allocations().is_empty());
    }
}

#[test]
fn version_verb() {
    require_root();
    let net = Net::new("ver");
    for stdin in [&br#"{"cniVersion":"1.0.0"}"#[..], b"", b"{}"] {
        let r = net.cni_env("VERSION", stdin, &[]);
        assert!(r.ok);
        assert_eq!(
            r.json,
            json!({"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
        );
    }
}

#[test]
fn gc_frees_leaked_allocations_and_port_mappings() {
    require_root();
    let net = Net::new("gc");
    let (c1, c2) = (Netns::new("gc-a"), Netns::new("gc-b"));
    let with_port = |port: u16| {
        net.conf(
            "1.1.0",
            V4_24,
            &format!(
                r#""isGateway":true,"runtimeConfig":{{"portMappings":[{{"hostPort":{port},"containerPort":80}}]}}"#
            ),
        )
    };
    let r1 = net.add(&with_port(18080), "leaked", &c1);
    let r2 = net.add(&with_port(18081), "alive", &c2);
    // A reservation file left half-written by a crash.
    std::fs::write(net.ipam_dir().join("10.201.0.77"), "").unwrap();
    assert_eq!(net.allocations().len(), 3);
    assert!(net.node.nft().contains("leaked/eth0"));

    let mut gc = net.conf("1.1.0", V4_24, "");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "alive", "ifname": "eth0"}]);
    let r = net.cni("GC", &gc, "", None, "");
    assert!(r.ok, "{}", r.raw);
    assert_eq!(net.allocations(), [ip4(&r2)]);
    let rules = net.node.nft();
    assert!(!rules.contains("leaked/eth0"), "{rules}");
    assert!(rules.contains("alive/eth0"), "{rules}");
    assert!(!rules.contains(&ip4(&r1)));

    // GC without the list is refused rather than freeing everything.
    let r = net.cni("GC", &net.conf("1.1.0", V4_24, ""), "", None, "");
    assert_eq!(r.code(), 7, "{}", r.raw);
    assert_eq!(net.allocations().len(), 1);
}

/// The node with an uplink to an "outside" namespace: node 192.168.250.1,
/// outside 192.168.250.2, and no route back from outside to the pods.
fn uplink(net: &Net, outside: &Netns) {
    let (n, o) = (&net.node.name, &outside.name);
    ok(&[
        "ip", "-n", n, "link", "add", "uplink", "type", "veth", "peer", "name", "wire", "netns", o,
    ]);
    ok(&["ip", "-n", n, "addr", "add", "192.168.250.1/24", "dev", "uplink"]);
    ok(&["ip", "-n", n, "link", "set", "uplink", "up"]);
    ok(&["ip", "-n", o, "addr", "add", "192.168.250.2/24", "dev", "wire"]);
    ok(&["ip", "-n", o, "link", "set", "wire", "up"]);
    ok(&["ip", "-n", o, "route", "add", "default", "via", "192.168.250.1"]);
}

#[test]
fn masquerade_towards_outside() {
    require_root();
    let net = Net::new("masq");
    let outside = Netns::new("masq-o");
    uplink(&net, &outside);
    let conf = net.conf("1.0.0", V4_24, r#""isDefaultGateway":true,"ipMasq":true"#);
    let pod = Netns::new("masq-p");
    net.add(&conf, "pod", &pod);
    let seen = outside.accept_one(9000, || {
        assert_eq!(pod.tcp("192.168.250.2", 9000).as_deref(), Some("seen"));
    });
    assert_eq!(
        seen.map(|s| s.ip()),
        Some("192.168.250.1".parse::<IpAddr>().unwrap()),
        "the node's address"
    );
    // The masquerade rule belongs to the network: it lasts while a pod
    // does, and goes with the last one.
    let second = Netns::new("masq-q");
    net.add(&conf, "second", &second);
    net.del(&conf, "pod", Some(&pod));
    assert!(net.node.nft().contains("masquerade"));
    net.del(&conf, "second", Some(&second));
    assert!(!net.node.nft().contains("nodelet_"), "{}", net.node.nft());
}

#[test]
fn port_mappings() {
    require_root();
    let net = Net::new("ports");
    let outside = Netns::new("ports-o");
    uplink(&net, &outside);
    let maps = r#""runtimeConfig":{"portMappings":[
        {"hostPort":8080,"containerPort":80,"protocol":"tcp"},
        {"hostPort":9090,"containerPort":90,"protocol":"tcp","hostIP":"192.168.250.1"}]}"#;
    let conf = net.conf(
        "1.1.0",
        V4_24,
        &format!(r#""isDefaultGateway":true,"ipMasq":true,"hairpinMode":true,{maps}"#),
    );
    let plain = net.conf(
        "1.1.0",
        V4_24,
        r#""isDefaultGateway":true,"ipMasq":true,"hairpinMode":true"#,
    );
    let (web, other) = (Netns::new("ports-w"), Netns::new("ports-x"));
    let r = net.add(&conf, "web", &web);
    net.add(&plain, "other", &other);
    let _s80 = web.serve(80, "port80");
    let _s90 = web.serve(90, "port90");

    // From the node: localhost and the node's address.
    assert_eq!(net.node.tcp("127.0.0.1", 8080).as_deref(), Some("port80"));
    assert_eq!(net.node.tcp("192.168.250.1", 8080).as_deref(), Some("port80"));
    assert_eq!(net.node.tcp("10.201.0.1", 8080).as_deref(), Some("port80"));
    // From outside, through the node's address.
    assert_eq!(outside.tcp("192.168.250.1", 8080).as_deref(), Some("port80"));
    // From another pod, and hairpin from the pod itself.
    assert_eq!(other.tcp("192.168.250.1", 8080).as_deref(), Some("port80"));
    assert_eq!(other.tcp("10.201.0.1", 8080).as_deref(), Some("port80"));
    assert_eq!(web.tcp("10.201.0.1", 8080).as_deref(), Some("port80"));
    // hostIP is honoured: 9090 only on 192.168.250.1.
    assert_eq!(outside.tcp("192.168.250.1", 9090).as_deref(), Some("port90"));
    assert_eq!(net.node.tcp("192.168.250.1", 9090).as_deref(), Some("port90"));
    assert_eq!(net.node.tcp("127.0.0.1", 9090), None);
    assert_eq!(other.tcp("10.201.0.1", 9090), None);
    assert_eq!(
        net.node
            .ok(&["cat", &format!("/proc/sys/net/ipv4/conf/{}/route_localnet", net.bridge)])
            .trim(),
        "1"
    );

    // CHECK sees the mappings; another container cannot take the port.
    let check = net.cni("CHECK", &Net::with_prev(&conf, &r), "web", Some(&web.path()), "eth0");
    assert!(check.ok, "{}", check.raw);
    let thief = Netns::new("ports-t");
    let before = (net.node.veths().len(), net.allocations().len());
    let e = net.cni("ADD", &conf, "thief", Some(&thief.path()), "eth0");
    assert_eq!(e.code(), 105, "{}", e.raw);
    assert_eq!(
        (net.node.veths().len(), net.allocations().len()),
        before,
        "nothing left by the failed ADD"
    );
    assert!(!net.node.nft().contains("thief"));

    // DEL removes exactly web's elements.
    net.del(&conf, "web", Some(&web));
    let rules = net.node.nft();
    assert!(!rules.contains("web/eth0") && !rules.contains(&ip4(&r)), "{rules}");
    assert_eq!(net.node.tcp("127.0.0.1", 8080), None);
    net.del(&conf, "web", Some(&web));
    // The port is free again.
    net.add(&conf, "thief", &thief);
    assert!(net.node.nft().contains("thief/eth0"));
    net.del(&conf, "thief", Some(&thief));
    net.del(&plain, "other", Some(&other));
    assert!(net.allocations().is_empty());
}

#[test]
fn dual_stack() {
    require_root();
    let net = Net::new("dual");
    let ranges = r#"[[{"subnet":"10.202.0.0/24"}],[{"subnet":"fd42:202::/64"}]]"#;
    let maps = r#""runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80}]}"#;
    let conf = net.conf(
        "1.1.0",
        ranges,
        &format!(r#""isDefaultGateway":true,"ipMasq":true,{maps}"#),
    );
    let plain = net.conf("1.1.0", ranges, r#""isDefaultGateway":true,"ipMasq":true"#);
    let (a, b) = (Netns::new("dual-a"), Netns::new("dual-b"));
    let ra = net.add(&conf, "a", &a);
    let rb = net.add(&plain, "b", &b);
    assert_eq!(ip6(&ra), "fd42:202::2");
    assert_eq!(ip6(&rb), "fd42:202::3");
    assert_eq!(ra["ips"].as_array().unwrap().len(), 2);
    assert!(a.ping("fd42:202::1"), "IPv6 gateway");
    assert!(a.ping(&ip6(&rb)), "IPv6 pod to pod");
    assert!(a.ping(&ip4(&rb)), "IPv4 pod to pod");
    assert_eq!(
        net.node.ok(&["cat", "/proc/sys/net/ipv6/conf/all/forwarding"]).trim(),
        "1"
    );
    let routes = a.ok(&["ip", "-6", "route", "show", "default"]);
    assert!(routes.contains("via fd42:202::1"), "{routes}");
    // IPv6 port mapping: b reaches a's port 80 through the bridge's address.
    let _s = a.serve(80, "v6");
    assert_eq!(b.tcp("fd42:202::1", 8080).as_deref(), Some("v6"));
    let check = net.cni("CHECK", &Net::with_prev(&conf, &ra), "a", Some(&a.path()), "eth0");
    assert!(check.ok, "{}", check.raw);
    net.del(&conf, "a", Some(&a));
    net.del(&plain, "b", Some(&b));
    assert!(net.allocations().is_empty());
    let rules = net.node.nft();
    assert!(!rules.contains("fd42:202::2 . 80"), "{rules}");
}

#[test]
fn errors_leave_nothing_behind() {
    require_root();
    let net = Net::new("err");
    let conf = net.conf(
        "1.0.0",
        r#"[[{"subnet":"10.203.0.0/30"}]]"#,
        r#""isGateway":true,"ipMasq":true"#,
    );
    let (a, b) = (Netns::new("err-a"), Netns::new("err-b"));
    let ra = net.add(&conf, "a", &a);
    assert_eq!(ip4(&ra), "10.203.0.2");
    let state = |net: &Net| (net.node.veths(), net.allocations(), net.node.nft());

    // Exhausted range.
    let before = state(&net);
    let r = net.cni("ADD", &conf, "b", Some(&b.path()), "eth0");
    assert_eq!(r.code(), 100, "{}", r.raw);
    assert_eq!(r.json["msg"], "no free IP in 10.203.0.0/30");
    assert_eq!(r.json["cniVersion"], "1.0.0");
    assert_eq!(state(&net), before);
    assert!(!b.links().contains(&"eth0".to_string()));
    let status = net.cni(
        "STATUS",
        &{
            let mut c = conf.clone();
            c["cniVersion"] = json!("1.1.0");
            c
        },
        "",
        None,
        "",
    );
    assert_eq!(status.code(), 50, "{}", status.raw);
    net.del(&conf, "a", Some(&a));

    // The interface name exists in the container.
    ok(&[
        "ip", "-n", &b.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    let before = state(&net);
    let r = net.cni("ADD", &conf, "b", Some(&b.path()), "eth0");
    assert_eq!(r.code(), 101, "{}", r.raw);
    assert_eq!(state(&net), before);
    // ... and DEL of that attachment leaves the foreign interface alone.
    net.del(&conf, "b", Some(&b));
    assert!(b.links().contains(&"eth0".to_string()));

    // A missing netns: an error for ADD, fine for DEL.
    let gone = Path::new("/run/netns/ncni-does-not-exist");
    let r = net.cni("ADD", &conf, "c", Some(gone), "eth0");
    assert_eq!(r.code(), 3, "{}", r.raw);
    assert_eq!(state(&net), before);
    assert!(net.cni("DEL", &conf, "c", Some(gone), "eth0").ok);
    assert!(net.cni("DEL", &conf, "c", None, "eth0").ok);

    // Bad configs and environments.
    let env = |id: &str| {
        vec![
            ("CNI_CONTAINERID", id.to_string()),
            ("CNI_NETNS", a.path().display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
        ]
    };
    let run = |stdin: &[u8], env: Vec<(&str, String)>| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        net.cni_env("ADD", stdin, &env)
    };
    assert_eq!(run(b"{not json", env("x")).code(), 6);
    let r = run(br#"{"cniVersion":"0.3.1","name":"n","type":"nodelet-bridge","ipam":{"type":"host-local","subnet":"10.9.0.0/24"}}"#, env("x"));
    assert_eq!(r.code(), 1);
    assert!(
        r.json["details"].as_str().unwrap().contains("0.4.0, 1.0.0, 1.1.0"),
        "{}",
        r.raw
    );
    let mut bad = conf.clone();
    bad["ipam"]["ranges"] = json!([[{"subnet": "10.9.0.0/33"}]]);
    assert_eq!(run(&serde_json::to_vec(&bad).unwrap(), env("x")).code(), 7);
    bad["ipam"] = json!({"type": "dhcp"});
    assert_eq!(run(&serde_json::to_vec(&bad).unwrap(), env("x")).code(), 7);
    let good = serde_json::to_vec(&conf).unwrap();
    assert_eq!(
        run(&good, vec![("CNI_CONTAINERID", "x".into())]).code(),
        4,
        "missing CNI_NETNS"
    );
    assert_eq!(run(&good, env("bad/id")).code(), 4);
    let r = net.cni_env("FROB", &good, &[]);
    assert_eq!(r.code(), 4);
    assert_eq!(state(&net), before);
}
