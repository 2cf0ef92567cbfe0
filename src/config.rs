//! Daemon configuration: embedded defaults, an optional TOML file, and flags.
//!
//! Every key is documented with its default in `docs/configuration.md`; keep
//! the two in step. Unknown keys are rejected so a typo never silently falls
//! back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::ServeArgs;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    #[default]
    Cgroupfs,
    Systemd,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// CRI socket.
    pub socket: PathBuf,
    /// A second CRI socket for an external kubelet: the same service
    /// without the static pods, so the kubelet never stops or removes
    /// them. Empty: no such socket.
    pub kubelet_socket: PathBuf,
    /// Persistent state: images, their metadata.
    pub root_dir: PathBuf,
    /// Volatile state: pods, containers, infra sockets. Lost at reboot, as
    /// are the processes it describes.
    pub state_dir: PathBuf,
    /// Static pod manifests.
    pub manifest_dir: PathBuf,
    /// Node name used for static pod names; empty means the host name.
    pub node_name: String,
    pub log_format: LogFormat,
    /// `RUST_LOG`-style filter.
    pub log_level: String,
    pub images: ImagesConfig,
    /// Per-registry settings keyed by registry host (`docker.io`,
    /// `127.0.0.1:5000`, ...).
    pub registries: BTreeMap<String, RegistryConfig>,
    pub cni: CniConfig,
    pub cgroups: CgroupsConfig,
    pub metrics: MetricsConfig,
    pub static_pods: StaticPodsConfig,
    pub streaming: crate::streaming::StreamingConfig,
    pub user_namespaces: UserNamespacesConfig,
}

/// Host IDs for pods with their own user namespace (`hostUsers: false`)
/// when the kubelet does not choose them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserNamespacesConfig {
    /// The first host ID of the first pod's range (a multiple of 65536).
    pub first_id: u32,
    /// How many pods' ranges of 65536 IDs follow it.
    pub max_pods: u32,
}

impl Default for UserNamespacesConfig {
    fn default() -> Self {
        UserNamespacesConfig {
            first_id: 1 << 20,
            max_pods: 4096,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StaticPodsConfig {
    /// Run the manifests in `manifest_dir`.
    pub enabled: bool,
    /// Re-read the directory this often even without inotify events.
    pub resync_secs: u64,
    /// How often each pod's worker checks its containers.
    pub sync_interval_ms: u64,
    /// CrashLoopBackOff: first delay, doubled per restart up to the max.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// A container that ran cleanly this long starts its back-off afresh.
    pub backoff_reset_secs: u64,
    /// Container logs, `<log_dir>/<namespace>_<name>_<uid>/<container>/<n>.log`.
    pub log_dir: PathBuf,
    /// Where `localhostProfile` seccomp profiles are looked up.
    pub seccomp_dir: PathBuf,
    /// The status endpoint's unix socket; empty: none.
    pub status_socket: PathBuf,
    /// The status endpoint's TCP address (keep it on loopback), e.g.
    /// `127.0.0.1:10255`; empty: none.
    pub status_address: String,
}

impl Default for StaticPodsConfig {
    fn default() -> Self {
        StaticPodsConfig {
            enabled: true,
            resync_secs: 20,
            sync_interval_ms: 1000,
            backoff_initial_ms: 10_000,
            backoff_max_ms: 300_000,
            backoff_reset_secs: 600,
            log_dir: PathBuf::from("/var/log/pods"),
            seccomp_dir: PathBuf::from("/var/lib/kubelet/seccomp"),
            status_socket: PathBuf::from("/run/nodelet/pods.sock"),
            status_address: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Layers downloaded at once per pull.
    pub max_concurrent_downloads: usize,
    /// Largest manifest or index accepted from a registry.
    pub max_manifest_bytes: u64,
    /// Largest image config accepted.
    pub max_config_bytes: u64,
    /// Largest uncompressed size of one layer: stops decompression bombs.
    pub max_layer_bytes: u64,
    /// Give up a connection attempt after this many seconds.
    pub connect_timeout_secs: u64,
    /// Give up when a registry sends nothing for this many seconds.
    pub read_timeout_secs: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Endpoints tried in order before the registry itself, e.g.
    /// `https://mirror.example.com` or `http://127.0.0.1:5001`.
    pub mirrors: Vec<String>,
    /// Talk plain HTTP to this registry.
    pub plain_http: bool,
    /// Accept any TLS certificate from this registry.
    pub insecure_skip_verify: bool,
    /// Basic-auth credentials used when the pull request carries none.
    pub username: Option<String>,
    pub password: Option<String>,
    /// A bearer token sent as is (`registry_token` in CRI terms).
    pub token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Directory searched for a `.conflist`/`.conf` that replaces the
    /// built-in network.
    pub conf_dir: PathBuf,
    /// Directories searched for CNI plugin binaries.
    pub bin_dirs: Vec<PathBuf>,
    /// The built-in network's bridge.
    pub bridge: String,
    /// The built-in network's IPv4 range (UpdateRuntimeConfig's pod CIDR
    /// replaces it).
    pub subnet: String,
    /// The built-in network's IPv6 range, used when the host has IPv6;
    /// empty turns IPv6 off.
    pub subnet6: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupsConfig {
    pub driver: CgroupDriver,
    /// Parent cgroup for every pod (cgroupfs path).
    pub parent: String,
    /// The most processes (threads included) one pod may hold, set on the
    /// pod cgroup's `pids.max` (the kubelet's `podPidsLimit`); -1 or 0:
    /// unlimited.
    pub pod_pids_limit: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `/metrics` and `/healthz` are served over HTTP; none: off.
    pub address: Option<std::net::SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: PathBuf::from("/run/nodelet/nodelet.sock"),
            kubelet_socket: PathBuf::from("/run/nodelet/kubelet.sock"),
            root_dir: PathBuf::from("/var/lib/nodelet"),
            state_dir: PathBuf::from("/run/nodelet"),
            manifest_dir: PathBuf::from("/etc/kubernetes/manifests"),
            node_name: String::new(),
            log_format: LogFormat::Text,
            log_level: "info".to_string(),
            images: ImagesConfig::default(),
            registries: BTreeMap::new(),
            cni: CniConfig::default(),
            cgroups: CgroupsConfig::default(),
            static_pods: StaticPodsConfig::default(),
            metrics: MetricsConfig::default(),
            streaming: Default::default(),
            user_namespaces: UserNamespacesConfig::default(),
        }
    }
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            max_concurrent_downloads: 3,
            max_manifest_bytes: 4 << 20,
            max_config_bytes: 8 << 20,
            max_layer_bytes: 32 << 30,
            connect_timeout_secs: 10,
            read_timeout_secs: 60,
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            bridge: "nodelet0".to_string(),
            subnet: "10.88.0.0/16".to_string(),
            subnet6: "fd6e:6f64:656c::/64".to_string(),
        }
    }
}

impl Default for CgroupsConfig {
    fn default() -> Self {
        CgroupsConfig {
            driver: CgroupDriver::Cgroupfs,
            parent: "/nodelet".to_string(),
            pod_pids_limit: -1,
        }
    }
}

impl ImagesConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.read_timeout_secs)
    }
}

impl Config {
    /// Parse a TOML document.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Defaults, then the file named by `--config` (if any), then flags.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let mut config = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Config::from_toml(&text, path)?
            }
            None => Config::default(),
        };
        config.apply_flags(args);
        config.validate()?;
        Ok(config)
    }

    fn apply_flags(&mut self, args: &ServeArgs) {
        if let Some(v) = &args.socket {
            self.socket = v.clone();
        }
        if let Some(v) = &args.root_dir {
            self.root_dir = v.clone();
        }
        if let Some(v) = &args.state_dir {
            self.state_dir = v.clone();
        }
        if let Some(v) = &args.manifest_dir {
            self.manifest_dir = v.clone();
        }
        if let Some(v) = &args.log_level {
            self.log_level = v.clone();
        }
        if let Some(v) = &args.log_format {
            self.log_format = match v.as_str() {
                "json" => LogFormat::Json,
                _ => LogFormat::Text,
            };
        }
        for host in &args.plain_http_registries {
            self.registries.entry(host.clone()).or_default().plain_http = true;
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let u = &self.user_namespaces;
        if u.first_id < 65536
            || u.first_id % 65536 != 0
            || u.max_pods == 0
            || u.first_id as u64 + u.max_pods as u64 * 65536 > u32::MAX as u64
        {
            return Err(ConfigError::Invalid(format!(
                "user_namespaces: first_id must be a non-zero multiple of 65536 and first_id + max_pods * 65536 below 2^32 (got first_id {}, max_pods {})",
                u.first_id, u.max_pods
            )));
        }
        for (name, path) in [
            ("socket", &self.socket),
            ("root_dir", &self.root_dir),
            ("state_dir", &self.state_dir),
            ("manifest_dir", &self.manifest_dir),
        ] {
            if !path.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be an absolute path, got {}",
                    path.display()
                )));
            }
        }
        if self.cgroups.pod_pids_limit < -1 {
            return Err(ConfigError::Invalid(format!(
                "cgroups.pod_pids_limit must be -1 (unlimited) or more, got {}",
                self.cgroups.pod_pids_limit
            )));
        }
        // A unix socket path must fit sockaddr_un.sun_path (108 bytes with NUL).
        if self.socket.as_os_str().len() > 107 {
            return Err(ConfigError::Invalid(format!(
                "socket path {} is longer than 107 bytes",
                self.socket.display()
            )));
        }
        for (name, path) in [
            ("kubelet_socket", &self.kubelet_socket),
            ("static_pods.status_socket", &self.static_pods.status_socket),
        ] {
            if !path.as_os_str().is_empty() && (!path.is_absolute() || path.as_os_str().len() > 107) {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be empty or an absolute path of at most 107 bytes, got {}",
                    path.display()
                )));
            }
        }
        if !self.kubelet_socket.as_os_str().is_empty() && self.kubelet_socket == self.socket {
            return Err(ConfigError::Invalid("kubelet_socket must differ from socket".into()));
        }
        for (name, path) in [
            ("static_pods.log_dir", &self.static_pods.log_dir),
            ("static_pods.seccomp_dir", &self.static_pods.seccomp_dir),
        ] {
            if !path.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be an absolute path, got {}",
                    path.display()
                )));
            }
        }
        let sp = &self.static_pods;
        if !sp.status_address.is_empty() && sp.status_address.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "static_pods.status_address {:?} is not an ip:port address",
                sp.status_address
            )));
        }
        if sp.backoff_initial_ms == 0 || sp.backoff_max_ms < sp.backoff_initial_ms || sp.sync_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "static_pods: backoff_initial_ms and sync_interval_ms must be positive and backoff_max_ms at least backoff_initial_ms".into(),
            ));
        }
        if self.images.max_concurrent_downloads == 0 {
            return Err(ConfigError::Invalid(
                "images.max_concurrent_downloads must be at least 1".into(),
            ));
        }
        if self.cni.subnet.parse::<ipnet::Ipv4Net>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "cni.subnet {:?} is not an IPv4 network",
                self.cni.subnet
            )));
        }
        if !self.cni.subnet6.is_empty() && self.cni.subnet6.parse::<ipnet::Ipv6Net>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "cni.subnet6 {:?} is not an IPv6 network",
                self.cni.subnet6
            )));
        }
        if self.cni.bridge.is_empty() || self.cni.bridge.len() > 15 || self.cni.bridge.contains(['/', ' ']) {
            return Err(ConfigError::Invalid(format!(
                "cni.bridge {:?} is not an interface name",
                self.cni.bridge
            )));
        }
        if !self.cgroups.parent.starts_with('/') {
            return Err(ConfigError::Invalid(format!(
                "cgroups.parent must start with '/', got {:?}",
                self.cgroups.parent
            )));
        }
        self.streaming.validate().map_err(ConfigError::Invalid)?;
        for (host, reg) in &self.registries {
            if host.is_empty() || host.contains('/') {
                return Err(ConfigError::Invalid(format!(
                    "registries: {host:?} is not a registry host (host[:port])"
                )));
            }
            for m in &reg.mirrors {
                if !(m.starts_with("http://") || m.starts_with("https://")) {
                    return Err(ConfigError::Invalid(format!(
                        "registries.{host:?}.mirrors: {m:?} must start with http:// or https://"
                    )));
                }
            }
            if reg.password.is_some() && reg.username.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "registries.{host:?}: password given without username"
                )));
            }
        }
        Ok(())
    }

    /// Where images live.
    pub fn image_root(&self) -> PathBuf {
        self.root_dir.join("images")
    }

    /// The node name: configured, else the kernel's host name.
    pub fn node_name(&self) -> String {
        if !self.node_name.is_empty() {
            return self.node_name.clone();
        }
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_string())
            .to_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(c.socket, PathBuf::from("/run/nodelet/nodelet.sock"));
        assert_eq!(c.root_dir, PathBuf::from("/var/lib/nodelet"));
        assert_eq!(c.state_dir, PathBuf::from("/run/nodelet"));
        assert_eq!(c.cgroups.driver, CgroupDriver::Cgroupfs);
        assert_eq!(c.metrics.address, None);
    }

    #[test]
    fn file_then_flags() {
        let text = r#"
            socket = "/tmp/a.sock"
            root_dir = "/tmp/root"
            [images]
            max_concurrent_downloads = 5
            [registries."127.0.0.1:5000"]
            plain_http = true
            [registries."docker.io"]
            mirrors = ["http://127.0.0.1:5001"]
            username = "u"
            password = "p"
            [metrics]
            address = "127.0.0.1:9595"
        "#;
        let mut c = Config::from_toml(text, Path::new("x.toml")).unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(c.images.max_concurrent_downloads, 5);
        assert_eq!(c.images.max_manifest_bytes, 4 << 20);
        assert_eq!(c.metrics.address, Some("127.0.0.1:9595".parse().unwrap()));
        assert!(c.registries["127.0.0.1:5000"].plain_http);
        assert_eq!(c.registries["docker.io"].mirrors, vec!["http://127.0.0.1:5001"]);
        let args = ServeArgs {
            socket: Some("/tmp/b.sock".into()),
            plain_http_registries: vec!["reg:1".into()],
            ..Default::default()
        };
        c.apply_flags(&args);
        c.validate().unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/b.sock"));
        assert!(c.registries["reg:1"].plain_http);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let err = Config::from_toml("sokcet = \"/x\"", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("sokcet"), "{err}");
        let c = Config::from_toml("root_dir = \"relative\"", Path::new("c.toml")).unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("root_dir"), "{err}");
        let c = Config::from_toml(
            "[registries.\"docker.io\"]\nmirrors = [\"mirror.local\"]",
            Path::new("c.toml"),
        )
        .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("mirrors"));
        let c = Config::from_toml("[cgroups]\npod_pids_limit = -5", Path::new("c.toml")).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("pod_pids_limit"));
        let c = Config::from_toml("[cgroups]\npod_pids_limit = 4096", Path::new("c.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.cgroups.pod_pids_limit, 4096);
        assert_eq!(Config::default().cgroups.pod_pids_limit, -1);
    }

    #[test]
    fn user_namespace_ranges() {
        let ok = Config::from_toml(
            "[user_namespaces]
first_id = 131072
max_pods = 10",
            Path::new("c.toml"),
        )
        .unwrap();
        ok.validate().unwrap();
        assert_eq!((ok.user_namespaces.first_id, ok.user_namespaces.max_pods), (131072, 10));
        for bad in [
            "first_id = 0",
            "first_id = 100000",
            "max_pods = 0",
            "first_id = 4294901760\nmax_pods = 1",
            "first_id = 65536\nmax_pods = 65536",
        ] {
            let c = Config::from_toml(&format!("[user_namespaces]\n{bad}"), Path::new("c.toml")).unwrap();
            assert!(
                c.validate().unwrap_err().to_string().contains("user_namespaces"),
                "{bad}"
            );
        }
    }
}
