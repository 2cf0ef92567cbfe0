//! Networks from a CNI configuration file, whose plugins are executed as
//! the CNI spec describes: `CNI_*` environment variables, the plugin's
//! config (with `name`, `cniVersion`, `prevResult` and the `runtimeConfig`
//! of the capabilities it declares) on stdin, a result or an error JSON on
//! stdout. ADD runs the plugins in order, each getting the previous one's
//! result; DEL runs them in reverse with the recorded result; GC and STATUS
//! (CNI 1.1) go to every plugin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::{NetworkError, PodRef, IFNAME};

/// Longest a plugin may run.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A network config list (a single-plugin `.conf` becomes a list of one).
#[derive(Debug, Clone)]
pub struct ConfList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    pub path: PathBuf,
    pub disable_gc: bool,
}

fn config_err(path: &Path, message: impl Into<String>) -> NetworkError {
    NetworkError::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Parse one file as a conflist or a single-plugin conf.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<ConfList, NetworkError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| config_err(path, format!("not JSON: {e}")))?;
    let name = v["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| config_err(path, "no \"name\""))?;
    let cni_version = v["cniVersion"].as_str().unwrap_or("0.4.0").to_string();
    let plugins = match v.get("plugins") {
        Some(Value::Array(p)) if !p.is_empty() => p.clone(),
        Some(_) => return Err(config_err(path, "\"plugins\" must be a non-empty list")),
        None if v.get("type").is_some() => vec![v.clone()],
        None => return Err(config_err(path, "neither \"plugins\" nor \"type\"")),
    };
    for (i, p) in plugins.iter().enumerate() {
        let ty = p["type"].as_str().unwrap_or_default();
        if ty.is_empty() || ty.contains('/') || ty.starts_with('.') {
            return Err(config_err(
                path,
                format!("plugins[{i}].type {ty:?} is not a plugin name"),
            ));
        }
    }
    Ok(ConfList {
        name: name.to_string(),
        cni_version,
        plugins,
        path: path.to_path_buf(),
        disable_gc: v["disableGC"].as_bool().unwrap_or(false),
    })
}

/// The first valid config in `dir`, by file name (`.conflist`, `.conf`,
/// `.json`), as the kubelet and containerd choose. Invalid files are
/// reported and skipped.
pub fn find(dir: &Path) -> Result<Option<ConfList>, NetworkError> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
            })
            .collect(),
        Err(_) => return Ok(None),
    };
    files.sort();
    for f in files {
        match std::fs::read(&f)
            .map_err(|e| config_err(&f, e.to_string()))
            .and_then(|b| parse(&f, &b))
        {
            Ok(list) => return Ok(Some(list)),
            Err(e) => tracing::warn!("skipping CNI config: {e}"),
        }
    }
    Ok(None)
}

fn version_at_least(v: &str, major: u32, minor: u32) -> bool {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

fn find_plugin(bin_dirs: &[PathBuf], ty: &str) -> Result<PathBuf, NetworkError> {
    use std::os::unix::fs::PermissionsExt;
    bin_dirs
        .iter()
        .map(|d| d.join(ty))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| NetworkError::NoPlugin {
            plugin: ty.to_string(),
            dirs: bin_dirs.to_vec(),
        })
}

/// What one plugin invocation is about.
struct Call<'a> {
    command: &'static str,
    pod: Option<&'a PodRef<'a>>,
    prev: Option<&'a Value>,
    /// Extra top-level keys for stdin (GC's valid attachments).
    extra: Option<(&'static str, Value)>,
}

fn exec(list: &ConfList, bin_dirs: &[PathBuf], plugin: &Value, call: Call) -> Result<Option<Value>, NetworkError> {
    let ty = plugin["type"].as_str().unwrap_or_default();
    let bin = find_plugin(bin_dirs, ty)?;
    let mut conf = plugin.clone();
    conf["name"] = json!(list.name);
    conf["cniVersion"] = json!(list.cni_version);
    if let Some(prev) = call.prev.filter(|p| !p.is_null()) {
        conf["prevResult"] = prev.clone();
    }
    if let Some(pod) = call.pod {
        if plugin["capabilities"]["portMappings"].as_bool() == Some(true) {
            conf["runtimeConfig"] = json!({ "portMappings": pod.port_mappings_json() });
        }
    }
    if let Some((k, v)) = call.extra {
        conf[k] = v;
    }
    let cni_path = std::env::join_paths(bin_dirs).unwrap_or_default();
    let mut cmd = Command::new(&bin);
    cmd.env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", call.command)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(pod) = call.pod {
        let args: Vec<String> = pod.cni_args().iter().map(|(k, v)| format!("{k}={v}")).collect();
        cmd.env("CNI_CONTAINERID", pod.id)
            .env("CNI_NETNS", pod.netns)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_ARGS", args.join(";"));
    }
    let plugin_err = |code: u32, message: String| NetworkError::Plugin {
        plugin: ty.to_string(),
        command: call.command,
        code,
        message,
    };
    let mut child = cmd
        .spawn()
        .map_err(|e| plugin_err(5, format!("cannot run {}: {e}", bin.display())))?;
    let input = conf.to_string();
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    // Wait with a deadline: a hung plugin must not hang the pod forever.
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(PLUGIN_TIMEOUT) {
        Ok(r) => r.map_err(|e| plugin_err(5, e.to_string()))?,
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(plugin_err(5, format!("timed out after {} s", PLUGIN_TIMEOUT.as_secs())));
        }
    };
    let _ = writer.join();
    let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() {
        let code = stdout["code"].as_u64().unwrap_or(999) as u32;
        let mut message = stdout["msg"].as_str().unwrap_or("").to_string();
        if let Some(d) = stdout["details"].as_str().filter(|d| !d.is_empty()) {
            message = format!("{message}: {d}");
        }
        if message.is_empty() {
            message = format!("{}; {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        return Err(plugin_err(code, message));
    }
    Ok((!stdout.is_null()).then_some(stdout))
}

pub fn add(list: &ConfList, bin_dirs: &[PathBuf], pod: &PodRef) -> Result<Value, NetworkError> {
    let mut prev: Option<Value> = None;
    for (i, plugin) in list.plugins.iter().enumerate() {
        let call = Call {
            command: "ADD",
            pod: Some(pod),
            prev: prev.as_ref(),
            extra: None,
        };
        match exec(list, bin_dirs, plugin, call) {
            Ok(Some(r)) => prev = Some(r),
            Ok(None) => {}
            Err(e) => {
                // Undo the plugins that ran, as a runtime must.
                let done = ConfList {
                    plugins: list.plugins[..=i].to_vec(),
                    ..list.clone()
                };
                if let Err(undo) = del(&done, bin_dirs, pod, prev.as_ref().unwrap_or(&Value::Null)) {
                    tracing::warn!(pod = pod.id, "undoing a failed CNI ADD: {undo}");
                }
                return Err(e);
            }
        }
    }
    Ok(prev.unwrap_or(Value::Null))
}

pub fn del(list: &ConfList, bin_dirs: &[PathBuf], pod: &PodRef, result: &Value) -> Result<(), NetworkError> {
    let mut first_err = None;
    for plugin in list.plugins.iter().rev() {
        let call = Call {
            command: "DEL",
            pod: Some(pod),
            prev: Some(result),
            extra: None,
        };
        if let Err(e) = exec(list, bin_dirs, plugin, call) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

pub fn status(list: &ConfList, bin_dirs: &[PathBuf]) -> Result<(), NetworkError> {
    for plugin in &list.plugins {
        find_plugin(bin_dirs, plugin["type"].as_str().unwrap_or_default())?;
        if version_at_least(&list.cni_version, 1, 1) {
            let call = Call {
                command: "STATUS",
                pod: None,
                prev: None,
                extra: None,
            };
            exec(list, bin_dirs, plugin, call)?;
        }
    }
    Ok(())
}

pub fn gc(list: &ConfList, bin_dirs: &[PathBuf], valid: &[(String, String)]) -> Result<(), NetworkError> {
    if !version_at_least(&list.cni_version, 1, 1) || list.disable_gc {
        return Ok(());
    }
    let attachments: Vec<Value> = valid
        .iter()
        .map(|(id, ifname)| json!({"containerID": id, "ifname": ifname}))
        .collect();
    for plugin in &list.plugins {
        let call = Call {
            command: "GC",
            pod: None,
            prev: None,
            extra: Some(("cni.dev/valid-attachments", json!(attachments))),
        };
        exec(list, bin_dirs, plugin, call)?;
    }
    Ok(())
}

/// Addresses in a CNI result, IPv4 first, without prefix lengths.
pub fn result_ips(result: &Value) -> Vec<String> {
    let mut ips: Vec<String> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
        .collect();
    ips.sort_by_key(|ip| ip.contains(':'));
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflists_and_single_confs() {
        let p = Path::new("10-x.conflist");
        let l = parse(p, br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#).unwrap();
        assert_eq!(
            (l.name.as_str(), l.plugins.len(), l.cni_version.as_str()),
            ("n", 2, "1.0.0")
        );
        let l = parse(
            p,
            br#"{"cniVersion":"0.4.0","name":"one","type":"bridge","bridge":"b0"}"#,
        )
        .unwrap();
        assert_eq!(l.plugins[0]["bridge"], "b0");
        for bad in [
            &br#"{"name":"x"}"#[..],
            br#"{"plugins":[]}"#,
            b"nope",
            br#"{"name":"x","plugins":[{"type":"../evil"}]}"#,
        ] {
            assert!(parse(p, bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn first_valid_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00-broken.conflist"), b"{").unwrap();
        std::fs::write(
            dir.path().join("10-a.conflist"),
            br#"{"name":"a","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("20-b.conf"), br#"{"name":"b","type":"bridge"}"#).unwrap();
        std::fs::write(dir.path().join("readme.txt"), b"x").unwrap();
        assert_eq!(find(dir.path()).unwrap().unwrap().name, "a");
        assert!(find(&dir.path().join("missing")).unwrap().is_none());
    }

    #[test]
    fn versions_and_ips() {
        assert!(version_at_least("1.1.0", 1, 1));
        assert!(!version_at_least("1.0.0", 1, 1));
        assert!(!version_at_least("0.4.0", 1, 1));
        let r = json!({"ips":[{"address":"fd00::5/64"},{"address":"10.88.0.5/16"}]});
        assert_eq!(result_ips(&r), vec!["10.88.0.5", "fd00::5"]);
    }
}
