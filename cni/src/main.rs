//! `nodelet-cni`: the bridge plugin as a CNI binary. The verb comes from
//! `CNI_COMMAND`, the attachment from `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME` and `CNI_ARGS`, the network config from stdin; results and
//! errors go to stdout as the spec's JSON (errors with a non-zero exit).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use nodelet_cni::{code, Args, CniError, SUPPORTED_VERSIONS};
use serde_json::{json, Value};

const LATEST: &str = "1.1.0";

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    // Errors are reported in the config's version when it is one we speak.
    let version = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(String::from))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST.to_string());
    let outcome = match read {
        Ok(_) => run(&stdin),
        Err(e) => Err(CniError::with_details(
            code::IO,
            "cannot read the network config from stdin",
            e.to_string(),
        )),
    };
    let (out, status) = match outcome {
        Ok(Some(v)) => (Some(v), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(e) => (Some(e.to_json(&version)), ExitCode::FAILURE),
    };
    if let Some(v) = out {
        let mut stdout = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut stdout, &v);
        let _ = stdout.write_all(b"\n");
        let _ = stdout.flush();
    }
    status
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn required(name: &str) -> Result<String, CniError> {
    env(name).ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            format!("required environment variable {name} is missing"),
        )
    })
}

/// `CNI_ARGS`: `K1=V1;K2=V2`.
fn cni_args() -> Result<Vec<(String, String)>, CniError> {
    let Some(raw) = env("CNI_ARGS") else {
        return Ok(Vec::new());
    };
    raw.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| CniError::new(code::INVALID_ENV, format!("CNI_ARGS: {kv:?} is not KEY=VALUE")))
        })
        .collect()
}

fn args(need_netns: bool) -> Result<Args, CniError> {
    let netns = if need_netns {
        Some(required("CNI_NETNS")?)
    } else {
        env("CNI_NETNS")
    };
    Ok(Args {
        container_id: required("CNI_CONTAINERID")?,
        netns: netns.map(PathBuf::from).unwrap_or_default(),
        ifname: required("CNI_IFNAME")?,
        args: cni_args()?,
    })
}

/// STATUS and GC are 1.1.0 verbs.
fn needs_1_1(command: &str, version: &str) -> Result<(), CniError> {
    if version.starts_with("0.") || version == "1.0.0" {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("config version {version} does not allow {command} (needs 1.1.0)"),
        ));
    }
    Ok(())
}

fn run(stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let command = required("CNI_COMMAND")?;
    if command == "VERSION" {
        return Ok(Some(
            json!({ "cniVersion": LATEST, "supportedVersions": SUPPORTED_VERSIONS }),
        ));
    }
    let conf = nodelet_cni::parse_config(stdin)?;
    match command.as_str() {
        "ADD" => {
            let result = nodelet_cni::add(&conf, &args(true)?)?;
            Ok(Some(result.to_json(&conf.cni_version)))
        }
        "DEL" => nodelet_cni::del(&conf, &args(false)?).map(|()| None),
        "CHECK" => nodelet_cni::check(&conf, &args(true)?).map(|()| None),
        "STATUS" => {
            needs_1_1(&command, &conf.cni_version)?;
            nodelet_cni::status(&conf).map(|()| None)
        }
        "GC" => {
            needs_1_1(&command, &conf.cni_version)?;
            let valid = conf.valid_attachments.clone().ok_or_else(|| {
                CniError::new(code::INVALID_CONFIG, "GC needs cni.dev/valid-attachments in the config")
            })?;
            nodelet_cni::gc(&conf, &valid).map(|()| None)
        }
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
        )),
    }
}
