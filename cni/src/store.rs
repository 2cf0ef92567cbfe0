//! The on-disk IPAM store, in host-local's layout so either can read the
//! other's state: `<dataDir>/<network>/` holds one file per reserved address
//! (named by the address, containing `<container id>\r\n<ifname>`),
//! `last_reserved_ip.<range set>` and a `lock` file that is flock'ed for the
//! whole time a store is open. Reservations are created with O_EXCL, so a
//! crash can at worst leave a file that is empty or cut short: GC frees it.
//!
//! Per-attachment records (the port mappings DEL must remove) live in
//! `nodelet-portmap/` below the network's directory, written by rename so
//! they are whole or absent.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::ipam::{Reservation, Store};

const LOCK: &str = "lock";
const LAST_RESERVED: &str = "last_reserved_ip.";
const RECORDS: &str = "nodelet-portmap";

/// A network's allocations on disk; holds the network's lock while alive.
pub struct FileStore {
    dir: PathBuf,
    _lock: Flock<File>,
    /// Reserved addresses, read once per open (the lock keeps it current).
    reserved: Option<HashSet<IpAddr>>,
}

impl FileStore {
    /// Open (creating the directory if needed) and lock the store of
    /// `network` under `data_dir`. Blocks while another process holds it.
    pub fn open(data_dir: &Path, network: &str) -> io::Result<FileStore> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
        Ok(FileStore {
            dir,
            _lock: lock,
            reserved: None,
        })
    }

    fn reserved(&mut self) -> io::Result<&mut HashSet<IpAddr>> {
        if self.reserved.is_none() {
            let mut set = HashSet::new();
            for entry in fs::read_dir(&self.dir)? {
                if let Some(ip) = entry?.file_name().to_str().and_then(|n| n.parse::<IpAddr>().ok()) {
                    set.insert(ip);
                }
            }
            self.reserved = Some(set);
        }
        Ok(self.reserved.get_or_insert_with(HashSet::new))
    }

    fn record_path(&self, id: &str, ifname: &str) -> PathBuf {
        // Neither a valid container id nor an accepted ifname has a ':'.
        self.dir.join(RECORDS).join(format!("{id}:{ifname}"))
    }
}

/// Parse a reservation file: host-local writes `id\r\nifname` (older
/// versions only `id`).
fn parse_owner(content: &str) -> (Option<String>, Option<String>) {
    let mut lines = content.split(['\r', '\n']).map(str::trim).filter(|l| !l.is_empty());
    let id = lines.next().map(String::from);
    let ifname = lines.next().map(String::from);
    (id, ifname)
}

impl Store for FileStore {
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, range_set: usize) -> io::Result<bool> {
        let path = self.dir.join(ip.to_string());
        let mut f = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.reserved()?.insert(ip);
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        if let Err(e) = f.write_all(format!("{id}\r\n{ifname}").as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        self.reserved()?.insert(ip);
        // Where the next search starts; losing it only changes the order.
        fs::write(self.dir.join(format!("{LAST_RESERVED}{range_set}")), ip.to_string())?;
        Ok(true)
    }

    fn last_reserved(&mut self, range_set: usize) -> io::Result<Option<IpAddr>> {
        match fs::read_to_string(self.dir.join(format!("{LAST_RESERVED}{range_set}"))) {
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn is_reserved(&mut self, ip: IpAddr) -> io::Result<bool> {
        Ok(self.reserved()?.contains(&ip))
    }

    fn release(&mut self, ip: IpAddr) -> io::Result<()> {
        match fs::remove_file(self.dir.join(ip.to_string())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(set) = self.reserved.as_mut() {
            set.remove(&ip);
        }
        Ok(())
    }

    fn list(&mut self) -> io::Result<Vec<Reservation>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let (container_id, ifname) = match fs::read(entry.path()) {
                Ok(bytes) => parse_owner(&String::from_utf8_lossy(&bytes)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            out.push(Reservation {
                ip,
                container_id,
                ifname,
            });
        }
        out.sort_by_key(|r| r.ip);
        Ok(out)
    }

    fn put_record(&mut self, id: &str, ifname: &str, data: &str) -> io::Result<()> {
        let path = self.record_path(id, ifname);
        fs::create_dir_all(self.dir.join(RECORDS))?;
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        fs::write(&tmp, data)?;
        fs::rename(&tmp, &path)
    }

    fn get_record(&mut self, id: &str, ifname: &str) -> io::Result<Option<String>> {
        match fs::read_to_string(self.record_path(id, ifname)) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn remove_record(&mut self, id: &str, ifname: &str) -> io::Result<()> {
        match fs::remove_file(self.record_path(id, ifname)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn list_records(&mut self) -> io::Result<Vec<(String, String)>> {
        let entries = match fs::read_dir(self.dir.join(RECORDS)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                continue;
            }
            if let Some((id, ifname)) = name.split_once(':') {
                out.push((id.to_string(), ifname.to_string()));
            }
        }
        out.sort();
        Ok(out)
    }

    fn check_writable(&mut self) -> io::Result<()> {
        let probe = self.dir.join(format!(".probe-{}", std::process::id()));
        fs::write(&probe, b"")?;
        fs::remove_file(&probe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::{self, tests::exercise};

    #[test]
    fn allocator_against_file_store() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = FileStore::open(tmp.path(), "net").unwrap();
        exercise(&mut s);
        drop(s);
        // host-local's layout.
        let dir = tmp.path().join("net");
        assert_eq!(fs::read_to_string(dir.join("10.0.0.2")).unwrap(), "c0\r\neth0");
        assert_eq!(fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(), "10.0.0.6");
        assert!(dir.join("lock").exists());
    }

    #[test]
    fn reads_host_local_files_and_frees_half_written_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("10.0.0.2"), "abc\r\neth0\r\n").unwrap();
        fs::write(dir.join("10.0.0.3"), "legacy").unwrap();
        fs::write(dir.join("10.0.0.4"), "").unwrap();
        fs::write(dir.join("fd00::5"), "v6\r\nnet1").unwrap();
        fs::write(dir.join("not-an-ip"), "x").unwrap();
        let mut s = FileStore::open(tmp.path(), "net").unwrap();
        let list = s.list().unwrap();
        assert_eq!(list.len(), 4);
        assert_eq!(list[0].container_id.as_deref(), Some("abc"));
        assert_eq!(list[0].ifname.as_deref(), Some("eth0"));
        assert_eq!(list[1].ifname, None);
        assert_eq!(list[2].container_id, None);
        assert_eq!(list[3].ip.to_string(), "fd00::5");
        let freed = ipam::gc(
            &mut s,
            &[("abc".into(), "eth0".into()), ("legacy".into(), "eth0".into())],
        )
        .unwrap();
        let freed: Vec<String> = freed.iter().map(|i| i.to_string()).collect();
        assert_eq!(freed, ["10.0.0.4", "fd00::5"]);
        assert!(!dir.join("10.0.0.4").exists());
        assert!(dir.join("not-an-ip").exists(), "foreign files are left alone");
    }

    #[test]
    fn lock_serialises_processes() {
        let tmp = tempfile::tempdir().unwrap();
        let s = FileStore::open(tmp.path(), "net").unwrap();
        let path = tmp.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let _s2 = FileStore::open(&path, "net").unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200)).is_err(),
            "second open waits"
        );
        drop(s);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn unwritable_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(FileStore::open(&file, "net").is_err());
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let tmp = tempfile::tempdir().unwrap();
        let conf = ipam::tests::ipam(r#"[[{"subnet":"10.0.0.0/24"}]]"#, "");
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (path, conf) = (tmp.path().to_path_buf(), conf.clone());
                std::thread::spawn(move || {
                    (0..10)
                        .map(|i| {
                            let mut s = FileStore::open(&path, "net").unwrap();
                            ipam::allocate(&conf, &mut s, &format!("c{t}-{i}"), "eth0").unwrap()[0]
                                .address
                                .addr()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<IpAddr> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 80);
    }
}
