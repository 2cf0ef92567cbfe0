//! The library API as the daemon uses it: several threads of one process
//! attaching containers at once. The threads are the test's own; each
//! enters the test's node namespace first, as the daemon's node is the
//! namespace its threads run in. Needs root.

mod common;

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::path::Path;

use common::{require_root, Net, Netns};
use nodelet_cni::{Args, BridgeConf, CniResult};

fn enter(netns: &Path) {
    let f = std::fs::File::open(netns).unwrap();
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

fn thread_netns() -> std::path::PathBuf {
    std::fs::read_link("/proc/thread-self/ns/net").unwrap()
}

fn args(i: usize, pod: &Netns) -> Args {
    Args {
        container_id: format!("lib-{i}"),
        netns: pod.path(),
        ifname: "eth0".into(),
        args: vec![("K8S_POD_NAME".into(), format!("p{i}"))],
    }
}

#[test]
fn concurrent_adds_and_dels_from_threads() {
    require_root();
    const PODS: usize = 8;
    let net = Net::new("lib");
    let json = net.conf(
        "1.1.0",
        r#"[[{"subnet":"10.204.0.0/24"}],[{"subnet":"fd42:204::/64"}]]"#,
        r#""isDefaultGateway":true,"ipMasq":true,"hairpinMode":true,
           "runtimeConfig":{"portMappings":[{"hostPort":20000,"containerPort":80}]}"#,
    );
    let base: BridgeConf = nodelet_cni::parse_config(&serde_json::to_vec(&json).unwrap()).unwrap();
    let pods: Vec<Netns> = (0..PODS).map(|i| Netns::new(&format!("lib-{i}"))).collect();
    let node = net.node.path();
    let confs: Vec<BridgeConf> = (0..PODS)
        .map(|i| {
            let mut c = base.clone();
            c.port_mappings[0].host_port = 20000 + i as u16;
            c
        })
        .collect();

    let results: Vec<CniResult> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (node, conf) = (&node, &confs[i]);
                s.spawn(move || {
                    enter(node);
                    let before = thread_netns();
                    let r = nodelet_cni::add(conf, &args(i, pod));
                    assert_eq!(thread_netns(), before, "the calling thread stays in its namespace");
                    r.unwrap_or_else(|e| panic!("ADD {i}: {e}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let ips: BTreeSet<String> = results.iter().flat_map(|r| r.ips()).map(|ip| ip.to_string()).collect();
    assert_eq!(ips.len(), PODS * 2, "distinct addresses: {ips:?}");
    assert_eq!(net.allocations().len(), PODS * 2);
    assert_eq!(net.node.veths().len(), PODS);
    for (i, pod) in pods.iter().enumerate() {
        assert!(pod.ping("10.204.0.1"), "pod {i} reaches the gateway");
        assert!(pod.ping("fd42:204::1"), "pod {i} reaches the IPv6 gateway");
    }
    assert!(pods[0].ping(&results[PODS - 1].ips()[0].to_string()), "pod to pod");
    let rules = net.node.nft();
    for i in 0..PODS {
        assert!(rules.contains(&format!("lib-{i}/eth0")), "{rules}");
    }

    // CHECK through the library, from a thread in the node namespace.
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&node);
            for (i, pod) in pods.iter().enumerate() {
                let mut c = confs[i].clone();
                c.prev_result = Some(results[i].clone());
                nodelet_cni::check(&c, &args(i, pod)).unwrap_or_else(|e| panic!("CHECK {i}: {e}"));
            }
            nodelet_cni::status(&confs[0]).unwrap();
        });
    });

    std::thread::scope(|s| {
        for (i, pod) in pods.iter().enumerate() {
            let (node, conf) = (&node, &confs[i]);
            s.spawn(move || {
                enter(node);
                nodelet_cni::del(conf, &args(i, pod)).unwrap_or_else(|e| panic!("DEL {i}: {e}"));
                nodelet_cni::del(conf, &args(i, pod)).unwrap_or_else(|e| panic!("second DEL {i}: {e}"));
            });
        }
    });
    assert!(net.node.veths().is_empty());
    assert!(net.allocations().is_empty());
    let rules = net.node.nft();
    assert!(!rules.contains("lib-"), "{rules}");
}
