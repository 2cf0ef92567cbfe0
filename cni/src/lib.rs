//! nodelet's CNI bridge plugin.
//!
//! PLACEHOLDER in this branch: the API the daemon integrates against. The
//! implementation is written separately and replaces this file.

use std::path::PathBuf;

pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

pub struct Args {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub args: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {}): {}", self.msg, self.code, self.details)
    }
}
impl std::error::Error for CniError {}

pub struct BridgeConf;

#[derive(Debug, Clone)]
pub struct CniResult;

impl CniResult {
    pub fn to_json(&self, _version: &str) -> serde_json::Value {
        serde_json::Value::Null
    }
    pub fn ips(&self) -> Vec<std::net::IpAddr> {
        Vec::new()
    }
}

fn na() -> CniError {
    CniError {
        code: 50,
        msg: "not built".into(),
        details: String::new(),
    }
}

pub fn parse_config(_json: &[u8]) -> Result<BridgeConf, CniError> {
    Err(na())
}
pub fn add(_conf: &BridgeConf, _args: &Args) -> Result<CniResult, CniError> {
    Err(na())
}
pub fn del(_conf: &BridgeConf, _args: &Args) -> Result<(), CniError> {
    Err(na())
}
pub fn check(_conf: &BridgeConf, _args: &Args) -> Result<(), CniError> {
    Err(na())
}
pub fn status(_conf: &BridgeConf) -> Result<(), CniError> {
    Err(na())
}
pub fn gc(_conf: &BridgeConf, _valid: &[(String, String)]) -> Result<(), CniError> {
    Err(na())
}
