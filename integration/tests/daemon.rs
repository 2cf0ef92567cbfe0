//! The daemon itself: socket, single instance, signals, and the RPCs that
//! describe the runtime.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use nodelet_integration::cri::api;
use nodelet_integration::daemon::Daemon;
use tonic::Code;

#[tokio::test]
async fn socket_version_status_and_runtime_config() {
    let d = Daemon::start("").await;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket is root-only");
    let (mut rt, _) = d.clients().await;

    let v = rt.version(api::VersionRequest::default()).await.unwrap().into_inner();
    assert_eq!(v.runtime_name, "nodelet");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));

    let st = rt
        .status(api::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let conds = st.status.unwrap().conditions;
    let runtime = conds.iter().find(|c| c.r#type == "RuntimeReady").unwrap();
    assert!(runtime.status, "{runtime:?}");
    let network = conds.iter().find(|c| c.r#type == "NetworkReady").unwrap();
    // No CNI config: the built-in bridge network, whose STATUS is fine.
    assert!(network.status, "the built-in pod network is ready: {network:?}");
    let cfg: serde_json::Value = serde_json::from_str(&st.info["config"]).unwrap();
    assert_eq!(cfg["rootDir"], d.root_dir.display().to_string());

    let rc = rt
        .runtime_config(api::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rc.linux.unwrap().cgroup_driver, api::CgroupDriver::Cgroupfs as i32);

    // Not built: an honest UNIMPLEMENTED naming the RPC.
    let err = rt
        .checkpoint_container(api::CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("CheckpointContainer"), "{}", err.message());
    // An empty Exec request is refused, saying what is missing.
    let err = rt.exec(api::ExecRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
}

#[tokio::test]
async fn second_daemon_refused_stale_socket_replaced_sigterm_clean() {
    let mut d = Daemon::start("").await;
    // A second daemon on the same socket and root is refused, clearly.
    let out = Command::new(nodelet_integration::nodelet_bin())
        .arg("serve")
        .arg("--config")
        .arg(&d.config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another nodelet is already running"), "{stderr}");
    assert!(
        stderr.contains(&d.pid().unwrap().to_string()),
        "names the holder: {stderr}"
    );
    // ... and did not break the first one.
    let (mut rt, _) = d.clients().await;
    rt.version(api::VersionRequest::default()).await.unwrap();

    // kill -9 leaves a stale socket; the next start replaces it.
    d.kill9();
    assert!(d.socket.exists());
    d.spawn().await;
    assert!(d.log().contains("replaced a stale socket"));

    // SIGTERM: clean exit, socket gone.
    let status = d.terminate().unwrap();
    assert!(status.success(), "{status}");
    assert!(!d.socket.exists());
}

#[tokio::test]
async fn bad_config_is_a_clear_error() {
    nodelet_integration::require_root();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "sokcet = \"/x\"\n").unwrap();
    let out = Command::new(nodelet_integration::nodelet_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sokcet"), "{stderr}");
    let out = Command::new(nodelet_integration::nodelet_bin())
        .args(["serve", "--config", "/nonexistent/nodelet.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/nodelet.toml"));
}
