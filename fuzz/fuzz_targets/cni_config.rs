//! CNI configuration: the bridge plugin's config as it reads it from stdin
//! (`nodelet_cni::parse_config`), and the daemon's external network config
//! files (`network::external::parse`, as a `.conflist` and as a `.conf`)
//! and the plugin results it reads back (`network::external::result_ips`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nodelet::network::external;

fuzz_target!(|data: &[u8]| {
    let _ = nodelet_cni::parse_config(data);
    for file in ["/etc/cni/net.d/10-fuzz.conflist", "/etc/cni/net.d/10-fuzz.conf"] {
        if let Ok(list) = external::parse(Path::new(file), data) {
            assert!(!list.name.is_empty());
            assert!(!list.plugins.is_empty());
            for p in &list.plugins {
                // Plugin types become executable names in the bin dirs.
                let ty = p["type"].as_str().expect("validated type");
                assert!(!ty.is_empty() && !ty.contains('/') && !ty.starts_with('.'));
            }
        }
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        for ip in external::result_ips(&v) {
            assert!(!ip.contains('/'));
        }
    }
});
