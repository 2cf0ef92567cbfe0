//! Debian's `docker-registry` on a free loopback port, optionally behind
//! HTTP Basic auth, with images pushed into it by `skopeo`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TestImage;

pub struct Registry {
    child: Child,
    /// The network namespace it serves in (None: the host's).
    netns: Option<PathBuf>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// `user:password` when the registry wants Basic auth.
    pub creds: Option<(String, String)>,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with(None, None)
    }

    /// A registry inside `ns` (where a test's node daemon runs).
    pub fn start_in(ns: &crate::netns::NetNs) -> Registry {
        Self::start_with(None, Some(ns))
    }

    /// A registry that wants `user`/`password` over Basic auth.
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Self::start_with(Some((user.to_string(), password.to_string())), None)
    }

    fn start_with(creds: Option<(String, String)>, ns: Option<&crate::netns::NetNs>) -> Registry {
        crate::require_root();
        let dir = tempfile::Builder::new()
            .prefix("nodelet-reg-")
            .tempdir()
            .expect("tempdir");
        for attempt in 0..5 {
            let port = crate::free_port();
            let mut config = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            );
            if let Some((user, pass)) = &creds {
                let hash = bcrypt::hash(pass, 4).expect("bcrypt");
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("htpasswd");
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: nodelet-test\n    path: {}\n",
                    htpasswd.display()
                ));
            }
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).expect("registry config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
            let mut cmd = match ns {
                Some(ns) => ns.command("docker-registry"),
                None => Command::new("docker-registry"),
            };
            cmd.arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("fd"))
                .stderr(log);
            crate::die_with_parent(&mut cmd);
            let mut child = cmd
                .spawn()
                .expect("docker-registry (install the docker-registry package)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                let up = match ns {
                    Some(ns) => ns.listening(port),
                    None => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
                };
                if up {
                    return Registry {
                        child,
                        netns: ns.map(|n| n.path()),
                        dir,
                        port,
                        creds,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("registry attempt {attempt} on port {port} failed; retrying");
        }
        panic!("docker-registry did not start");
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>/<repo>:latest`.
    pub fn image(&self, repo: &str) -> String {
        format!("{}/{repo}:latest", self.host())
    }

    /// Push `image` as `<repo>:latest` with skopeo.
    pub fn push(&self, image: &TestImage) {
        self.push_as(image, &image.repo)
    }

    pub fn push_as(&self, image: &TestImage, repo: &str) {
        let policy = self.dir.path().join("policy.json");
        std::fs::write(&policy, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).expect("policy");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("--").arg("skopeo");
                c
            }
            None => Command::new("skopeo"),
        };
        cmd.arg("--policy")
            .arg(&policy)
            .arg("copy")
            .arg("--dest-tls-verify=false");
        if image.all {
            cmd.arg("--all");
        }
        if image.docker_format {
            cmd.args(["--format", "v2s2"]);
        }
        if let Some((u, p)) = &self.creds {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        cmd.arg(format!("oci:{}:{}", image.layout.display(), image.tag))
            .arg(format!("docker://{}/{repo}:latest", self.host()));
        crate::run(&mut cmd).expect("skopeo copy");
    }

    /// The registry's log (one line per request, among others).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many GETs of blob `digest` the registry served.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let needle = format!("/blobs/{digest}");
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET ") && l.contains(&needle))
            .count()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
