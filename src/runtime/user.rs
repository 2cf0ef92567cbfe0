//! Resolving the container user and groups inside the container's rootfs.
//!
//! The user comes from the CRI security context (`run_as_user`,
//! `run_as_username`, `run_as_group`) or else from the image's `User`
//! string (`uid`, `name`, `uid:gid`, `name:group`, `uid:group`,
//! `name:gid`). Names are looked up in the image's own `/etc/passwd` and
//! `/etc/group`.
//!
//! Those files belong to an untrusted image. They are opened with
//! `openat2(RESOLVE_IN_ROOT)` relative to the rootfs, so every symlink on
//! the way (`/etc -> /host`, `/etc/passwd -> /../../etc/shadow`) resolves as
//! if the rootfs were `/`: a hostile image can never make nodelet read a
//! host file. They must also be regular files of at most
//! [`MAX_DB_FILE`] bytes, so a FIFO or a huge file cannot stall or bloat
//! the daemon.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use k8s_cri::v1 as cri;
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use std::os::fd::AsRawFd;

use super::spec::SpecError;

/// The largest `/etc/passwd` or `/etc/group` nodelet reads (1 MiB). Real
/// files are a few KiB; anything bigger is a broken or hostile image.
pub const MAX_DB_FILE: u64 = 1 << 20;

/// The user a container process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, deduplicated, without `gid`.
    pub additional_gids: Vec<u32>,
}

/// What the request asks for, lifted out of the CRI messages so `resolve`
/// can serve `CreateContainer` and `ExecSync` alike.
#[derive(Debug, Clone, Default)]
pub struct UserRequest<'a> {
    /// `linux.security_context.run_as_user`.
    pub run_as_user: Option<i64>,
    /// `linux.security_context.run_as_username` (empty: unset).
    pub run_as_username: &'a str,
    /// `linux.security_context.run_as_group`.
    pub run_as_group: Option<i64>,
    /// `linux.security_context.supplemental_groups`.
    pub supplemental_groups: &'a [i64],
    /// `supplemental_groups_policy == Strict`: only `supplemental_groups`,
    /// none of the image's `/etc/group` memberships.
    pub strict_groups: bool,
    /// The image config's `User` (empty: root).
    pub image_user: &'a str,
}

impl<'a> UserRequest<'a> {
    /// The request's user settings; `sc` absent means "all defaults".
    pub fn from_cri(sc: Option<&'a cri::LinuxContainerSecurityContext>, image_user: &'a str) -> Self {
        let Some(sc) = sc else {
            return UserRequest {
                image_user,
                ..Default::default()
            };
        };
        UserRequest {
            run_as_user: sc.run_as_user.as_ref().map(|v| v.value),
            run_as_username: &sc.run_as_username,
            run_as_group: sc.run_as_group.as_ref().map(|v| v.value),
            supplemental_groups: &sc.supplemental_groups,
            strict_groups: sc.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32,
            image_user,
        }
    }
}

/// One `/etc/passwd` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// One `/etc/group` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Parse `/etc/passwd` text. Lines that are blank, comments, NIS
/// includes (`+`/`-`) or malformed are skipped, as libc does.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    db_lines(text)
        .filter_map(|fields| {
            if fields.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_string(),
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
            })
        })
        .collect()
}

/// Parse `/etc/group` text, with the same leniency as `parse_passwd`.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    db_lines(text)
        .filter_map(|fields| {
            if fields.len() < 3 {
                return None;
            }
            let members = fields
                .get(3)
                .map(|m| {
                    m.split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            Some(GroupEntry {
                name: fields[0].to_string(),
                gid: fields[2].trim().parse().ok()?,
                members,
            })
        })
        .collect()
}

fn db_lines(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('+') && !l.starts_with('-'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| !f[0].is_empty())
}

/// Read `rel` (e.g. `etc/passwd`) inside `rootfs` with every path component,
/// symlinks included, resolved as if `rootfs` were `/`. `Ok(None)` when it
/// (or the rootfs) does not exist.
pub fn read_in_root(rootfs: &Path, rel: &str) -> io::Result<Option<String>> {
    let root = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(rootfs)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // O_NONBLOCK: opening a FIFO planted by the image must not block; the
    // regular-file check below then rejects it.
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let mut attempts = 0;
    let fd = loop {
        match openat2(root.as_raw_fd(), rel, how) {
            Ok(fd) => break fd,
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(None),
            // The kernel asks for a retry when a rename raced the lookup.
            Err(Errno::EAGAIN) if attempts < 3 => attempts += 1,
            Err(e) => return Err(io::Error::from(e)),
        }
    };
    // SAFETY: openat2 just returned this descriptor and nothing else owns
    // it; the OwnedFd closes it exactly once.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file"));
    }
    let mut buf = Vec::new();
    file.take(MAX_DB_FILE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_DB_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_DB_FILE} bytes"),
        ));
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// The image's user databases, read at most once each.
struct Db<'a> {
    rootfs: &'a Path,
    passwd: Option<Vec<PasswdEntry>>,
    group: Option<Vec<GroupEntry>>,
}

impl Db<'_> {
    fn passwd(&mut self, field: &str) -> Result<&[PasswdEntry], SpecError> {
        if self.passwd.is_none() {
            let text = read_db(self.rootfs, "etc/passwd", field)?;
            self.passwd = Some(parse_passwd(&text));
        }
        Ok(self.passwd.as_deref().unwrap_or_default())
    }

    fn group(&mut self, field: &str) -> Result<&[GroupEntry], SpecError> {
        if self.group.is_none() {
            let text = read_db(self.rootfs, "etc/group", field)?;
            self.group = Some(parse_group(&text));
        }
        Ok(self.group.as_deref().unwrap_or_default())
    }
}

fn read_db(rootfs: &Path, rel: &str, field: &str) -> Result<String, SpecError> {
    read_in_root(rootfs, rel)
        .map(Option::unwrap_or_default)
        .map_err(|e| invalid(field, format!("cannot read /{rel} in the container image: {e}")))
}

fn invalid(field: &str, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

fn id_from_i64(field: &str, v: i64) -> Result<u32, SpecError> {
    u32::try_from(v).map_err(|_| invalid(field, format!("{v} is not a valid id (0 to {})", u32::MAX)))
}

/// A purely numeric name is an id, as in Docker and containerd.
fn numeric(s: &str) -> Option<Result<u32, ()>> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        Some(s.parse::<u32>().map_err(|_| ()))
    } else {
        None
    }
}

/// Resolve the container's uid, primary gid and supplementary gids.
///
/// Precedence, as containerd: `run_as_username`, then `run_as_user`, then
/// the image `User`. `run_as_group` overrides the group of whichever user
/// was chosen (containerd rejects `run_as_group` without a user; nodelet
/// applies it to the image's user instead, as CRI-O does). The primary gid
/// is the explicit group, else the user's `/etc/passwd` gid, else 0.
pub fn resolve(rootfs: &Path, req: &UserRequest) -> Result<ResolvedUser, SpecError> {
    let mut db = Db {
        rootfs,
        passwd: None,
        group: None,
    };

    // (field to blame, user part, group part of an image string)
    let (field, uid, username, image_group): (&str, u32, Option<String>, Option<&str>) =
        if !req.run_as_username.is_empty() {
            let field = "linux.security_context.run_as_username";
            let (uid, name) = lookup_user(&mut db, field, req.run_as_username)?;
            (field, uid, name, None)
        } else if let Some(v) = req.run_as_user {
            let field = "linux.security_context.run_as_user";
            let uid = id_from_i64(field, v)?;
            let name = db.passwd(field)?.iter().find(|e| e.uid == uid).map(|e| e.name.clone());
            (field, uid, name, None)
        } else {
            let field = "image.user";
            let (user, group) = match req.image_user.split_once(':') {
                Some((u, g)) => (u, Some(g)),
                None => (req.image_user, None),
            };
            if user.is_empty() {
                if group.is_some_and(|g| !g.is_empty()) {
                    return Err(invalid(
                        field,
                        format!("{:?} names a group but no user", req.image_user),
                    ));
                }
                let name = db.passwd(field)?.iter().find(|e| e.uid == 0).map(|e| e.name.clone());
                (field, 0, name, None)
            } else {
                let (uid, name) = lookup_user(&mut db, field, user)?;
                (field, uid, name, group.filter(|g| !g.is_empty()))
            }
        };

    let gid = if let Some(g) = req.run_as_group {
        id_from_i64("linux.security_context.run_as_group", g)?
    } else if let Some(group) = image_group {
        match numeric(group) {
            Some(Ok(gid)) => gid,
            Some(Err(())) => return Err(invalid(field, format!("group {group:?} is out of range"))),
            None => db
                .group(field)?
                .iter()
                .find(|g| g.name == group)
                .map(|g| g.gid)
                .ok_or_else(|| invalid(field, format!("group {group:?} not found in the image's /etc/group")))?,
        }
    } else {
        db.passwd(field)?
            .iter()
            .find(|e| e.uid == uid)
            .map(|e| e.gid)
            .unwrap_or(0)
    };

    let mut additional = Vec::new();
    if !req.strict_groups {
        if let Some(name) = &username {
            for g in db.group(field)? {
                if g.members.iter().any(|m| m == name) {
                    additional.push(g.gid);
                }
            }
        }
    }
    for (i, g) in req.supplemental_groups.iter().enumerate() {
        additional.push(id_from_i64(
            &format!("linux.security_context.supplemental_groups[{i}]"),
            *g,
        )?);
    }
    let mut seen = std::collections::HashSet::new();
    additional.retain(|g| *g != gid && seen.insert(*g));

    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
    })
}

/// A user string to (uid, name as in /etc/passwd if known).
fn lookup_user(db: &mut Db, field: &str, user: &str) -> Result<(u32, Option<String>), SpecError> {
    match numeric(user) {
        Some(Ok(uid)) => {
            let name = db.passwd(field)?.iter().find(|e| e.uid == uid).map(|e| e.name.clone());
            Ok((uid, name))
        }
        Some(Err(())) => Err(invalid(field, format!("user id {user:?} is out of range"))),
        None => db
            .passwd(field)?
            .iter()
            .find(|e| e.name == user)
            .map(|e| (e.uid, Some(e.name.clone())))
            .ok_or_else(|| invalid(field, format!("user {user:?} not found in the image's /etc/passwd"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1::/:/sbin/nologin
app:x:1000:1000:App:/home/app:/bin/sh
web:x:1001:2000::/:/bin/sh
broken:x:notanumber:1::/:/bin/sh
";
    const GROUP: &str = "\
root:x:0:
daemon:x:1:app
app:x:1000:
staff:x:50:app,web
audio:x:63: web , app
web:x:2000:
";

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        dir
    }

    fn image(user: &str) -> UserRequest<'_> {
        UserRequest {
            image_user: user,
            ..Default::default()
        }
    }

    fn ok(root: &Path, req: &UserRequest) -> (u32, u32, Vec<u32>) {
        let u = resolve(root, req).unwrap();
        (u.uid, u.gid, u.additional_gids)
    }

    fn err_field(root: &Path, req: &UserRequest) -> (String, String) {
        match resolve(root, req).unwrap_err() {
            SpecError::Invalid { field, message } => (field, message),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parses_passwd_and_group_leniently() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 4, "comment and malformed line skipped: {p:?}");
        assert_eq!(
            p[2],
            PasswdEntry {
                name: "app".into(),
                uid: 1000,
                gid: 1000
            }
        );
        let g = parse_group(GROUP);
        assert_eq!(
            g.iter().find(|g| g.name == "audio").unwrap().members,
            vec!["web", "app"]
        );
        assert!(g.iter().find(|g| g.name == "root").unwrap().members.is_empty());
    }

    #[test]
    fn empty_image_user_is_root() {
        let r = rootfs();
        assert_eq!(ok(r.path(), &image("")), (0, 0, vec![]));
    }

    #[test]
    fn image_user_forms() {
        let r = rootfs();
        let p = r.path();
        // name: passwd gid, plus memberships (daemon 1, staff 50, audio 63).
        assert_eq!(ok(p, &image("app")), (1000, 1000, vec![1, 50, 63]));
        // uid: same user found by id.
        assert_eq!(ok(p, &image("1000")), (1000, 1000, vec![1, 50, 63]));
        // uid:gid
        assert_eq!(ok(p, &image("1000:7")), (1000, 7, vec![1, 50, 63]));
        // name:group
        assert_eq!(ok(p, &image("app:staff")), (1000, 50, vec![1, 63]));
        // uid:group
        assert_eq!(ok(p, &image("1001:audio")), (1001, 63, vec![50]));
        // name:gid
        assert_eq!(ok(p, &image("web:0")), (1001, 0, vec![50, 63]));
        // unknown numeric uid: fine, gid 0, no memberships.
        assert_eq!(ok(p, &image("4242")), (4242, 0, vec![]));
    }

    #[test]
    fn numeric_users_need_no_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ok(dir.path(), &image("123:456")), (123, 456, vec![]));
        assert_eq!(ok(&dir.path().join("missing"), &image("5")), (5, 0, vec![]));
    }

    #[test]
    fn unknown_names_are_invalid() {
        let r = rootfs();
        let (field, msg) = err_field(r.path(), &image("nobody"));
        assert_eq!(field, "image.user");
        assert!(msg.contains("\"nobody\" not found"), "{msg}");
        let (field, msg) = err_field(r.path(), &image("app:wheel"));
        assert_eq!(field, "image.user");
        assert!(msg.contains("group \"wheel\""), "{msg}");
        let req = UserRequest {
            run_as_username: "ghost",
            ..Default::default()
        };
        assert_eq!(err_field(r.path(), &req).0, "linux.security_context.run_as_username");
        let (field, _) = err_field(r.path(), &image("99999999999"));
        assert_eq!(field, "image.user");
        assert_eq!(err_field(r.path(), &image(":staff")).0, "image.user");
    }

    #[test]
    fn security_context_wins_over_image() {
        let r = rootfs();
        let p = r.path();
        let req = UserRequest {
            run_as_user: Some(1001),
            image_user: "app",
            ..Default::default()
        };
        assert_eq!(ok(p, &req), (1001, 2000, vec![50, 63]));
        let req = UserRequest {
            run_as_username: "app",
            run_as_user: Some(1001),
            run_as_group: Some(3000),
            ..Default::default()
        };
        assert_eq!(ok(p, &req), (1000, 3000, vec![1, 50, 63]));
        // run_as_group alone overrides the image user's group.
        let req = UserRequest {
            run_as_group: Some(5),
            image_user: "app:staff",
            ..Default::default()
        };
        assert_eq!(ok(p, &req), (1000, 5, vec![1, 50, 63]));
        let req = UserRequest {
            run_as_user: Some(-1),
            ..Default::default()
        };
        assert_eq!(err_field(p, &req).0, "linux.security_context.run_as_user");
        let req = UserRequest {
            run_as_user: Some(1),
            run_as_group: Some(1 << 40),
            ..Default::default()
        };
        assert_eq!(err_field(p, &req).0, "linux.security_context.run_as_group");
    }

    #[test]
    fn supplemental_groups_merge_and_strict() {
        let r = rootfs();
        let p = r.path();
        let sup = [50, 9000, 9000, 1000];
        let merge = UserRequest {
            run_as_user: Some(1000),
            supplemental_groups: &sup,
            ..Default::default()
        };
        // Memberships first, then the requested groups; deduped, primary
        // gid (1000) excluded.
        assert_eq!(ok(p, &merge), (1000, 1000, vec![1, 50, 63, 9000]));
        let strict = UserRequest {
            strict_groups: true,
            ..merge.clone()
        };
        assert_eq!(ok(p, &strict), (1000, 1000, vec![50, 9000]));
        let bad = [1, -5];
        let req = UserRequest {
            supplemental_groups: &bad,
            ..Default::default()
        };
        assert_eq!(err_field(p, &req).0, "linux.security_context.supplemental_groups[1]");
    }

    #[test]
    fn from_cri_reads_policy() {
        let sc = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 7 }),
            supplemental_groups: vec![3],
            supplemental_groups_policy: cri::SupplementalGroupsPolicy::Strict as i32,
            ..Default::default()
        };
        let req = UserRequest::from_cri(Some(&sc), "app");
        assert_eq!(req.run_as_user, Some(7));
        assert!(req.strict_groups);
        assert_eq!(req.supplemental_groups, &[3]);
        let req = UserRequest::from_cri(None, "app");
        assert_eq!(req.image_user, "app");
        assert!(!req.strict_groups);
    }

    #[test]
    fn hostile_absolute_symlink_stays_in_root() {
        // A "host" file the image points at; it names a user the image's
        // own database does not have.
        let host = tempfile::tempdir().unwrap();
        let host_passwd = host.path().join("passwd");
        fs::write(&host_passwd, "evil:x:4242:4242::/:/bin/sh\n").unwrap();

        let r = tempfile::tempdir().unwrap();
        fs::create_dir_all(r.path().join("etc")).unwrap();
        symlink(&host_passwd, r.path().join("etc/passwd")).unwrap();
        let (field, msg) = err_field(r.path(), &image("evil"));
        assert_eq!(field, "image.user");
        assert!(msg.contains("not found"), "{msg}");

        // Relative escapes are clamped at the root too.
        fs::remove_file(r.path().join("etc/passwd")).unwrap();
        let depth = host_passwd.components().count() + 5;
        let escape = format!("{}{}", "../".repeat(depth), host_passwd.display());
        symlink(&escape, r.path().join("etc/passwd")).unwrap();
        assert!(resolve(r.path(), &image("evil")).is_err());

        // A symlink that stays inside the rootfs is followed inside it.
        fs::remove_file(r.path().join("etc/passwd")).unwrap();
        fs::create_dir_all(r.path().join("usr/lib")).unwrap();
        fs::write(r.path().join("usr/lib/passwd"), "svc:x:77:78::/:/bin/sh\n").unwrap();
        symlink("/usr/lib/passwd", r.path().join("etc/passwd")).unwrap();
        assert_eq!(ok(r.path(), &image("svc")), (77, 78, vec![]));
    }

    #[test]
    fn hostile_etc_directory_symlink_stays_in_root() {
        let host = tempfile::tempdir().unwrap();
        fs::write(host.path().join("passwd"), "evil:x:4242:4242::/:/bin/sh\n").unwrap();
        let r = tempfile::tempdir().unwrap();
        symlink(host.path(), r.path().join("etc")).unwrap();
        assert!(resolve(r.path(), &image("evil")).is_err());
        assert_eq!(ok(r.path(), &image("4242")), (4242, 0, vec![]));
    }

    #[test]
    fn non_regular_and_oversized_files_are_rejected() {
        let r = tempfile::tempdir().unwrap();
        fs::create_dir_all(r.path().join("etc/passwd")).unwrap();
        let (field, msg) = err_field(r.path(), &image("app"));
        assert_eq!(field, "image.user");
        assert!(msg.contains("/etc/passwd"), "{msg}");

        let r = tempfile::tempdir().unwrap();
        fs::create_dir_all(r.path().join("etc")).unwrap();
        nix::unistd::mkfifo(
            &r.path().join("etc/passwd"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        // Must return (not block on the FIFO) and refuse it.
        assert!(resolve(r.path(), &image("app")).is_err());

        let r = tempfile::tempdir().unwrap();
        fs::create_dir_all(r.path().join("etc")).unwrap();
        let mut big = String::from("big:x:5:5::/:/bin/sh\n");
        while (big.len() as u64) <= MAX_DB_FILE {
            big.push_str("# padding padding padding padding padding padding padding\n");
        }
        fs::write(r.path().join("etc/passwd"), big).unwrap();
        let (_, msg) = err_field(r.path(), &image("big"));
        assert!(msg.contains("larger than"), "{msg}");
    }
}
