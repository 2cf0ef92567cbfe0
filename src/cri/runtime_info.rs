//! Version, Status, RuntimeConfig: what the runtime is and whether it is
//! ready.

use std::collections::HashMap;

use k8s_cri::v1 as cri;

use crate::config::CgroupDriver;
use crate::node::{Condition, Node};

/// The CRI API version this server speaks.
pub const CRI_API_VERSION: &str = "v1";

pub fn version() -> cri::VersionResponse {
    cri::VersionResponse {
        // The kubelet API version of the VersionRequest's reply: fixed "0.1.0"
        // in every runtime (containerd, CRI-O).
        version: "0.1.0".into(),
        runtime_name: "nodelet".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: CRI_API_VERSION.into(),
    }
}

fn condition(kind: &str, c: Condition) -> cri::RuntimeCondition {
    cri::RuntimeCondition {
        r#type: kind.into(),
        status: c.ready,
        reason: c.reason,
        message: c.message,
    }
}

pub fn status(node: &Node, req: cri::StatusRequest) -> cri::StatusResponse {
    let mut info = HashMap::new();
    if req.verbose {
        let c = &node.config;
        info.insert(
            "config".to_string(),
            serde_json::json!({
                "socket": c.socket,
                "rootDir": c.root_dir,
                "stateDir": c.state_dir,
                "manifestDir": c.manifest_dir,
                "cgroupDriver": format!("{:?}", c.cgroups.driver).to_lowercase(),
                "cgroupParent": c.cgroups.parent,
                "registries": c.registries.keys().collect::<Vec<_>>(),
            })
            .to_string(),
        );
    }
    cri::StatusResponse {
        status: Some(cri::RuntimeStatus {
            conditions: vec![
                condition("RuntimeReady", node.runtime_condition()),
                condition("NetworkReady", node.network_condition()),
            ],
        }),
        info,
        // The default handler. Recursive read-only mounts need the
        // kernel's mount_setattr (5.12); user namespaces are not offered
        // yet (a pod asking for one is refused).
        runtime_handlers: vec![cri::RuntimeHandler {
            name: String::new(),
            features: Some(cri::RuntimeHandlerFeatures {
                recursive_read_only_mounts: crate::runtime::mounts::kernel_has_mount_setattr(),
                user_namespaces: false,
            }),
        }],
        features: Some(cri::RuntimeFeatures {
            supplemental_groups_policy: false,
        }),
    }
}

pub fn runtime_config(node: &Node) -> cri::RuntimeConfigResponse {
    let driver = match node.config.cgroups.driver {
        CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
        CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
    };
    cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    }
}
