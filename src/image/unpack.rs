//! Apply one image layer (a tar stream, maybe compressed) to an empty
//! directory that then serves as an overlayfs lowerdir.
//!
//! Each layer is unpacked on its own, so the OCI whiteout markers are turned
//! into their overlayfs form instead of being applied to a lower layer:
//! `.wh.<name>` becomes a 0/0 character device `<name>`, `.wh..wh..opq`
//! becomes the `trusted.overlay.opaque=y` xattr on its directory.
//!
//! Nothing here follows a symlink on the host: every parent directory is
//! opened component by component with `O_NOFOLLOW` from the layer root, and
//! every file is created with `*at` calls relative to that parent. Entries
//! with absolute paths or `..`, paths or hard links that go through a
//! symlink, extension headers above a size cap and layers whose uncompressed
//! stream exceeds a cap are refused with an error naming the entry. The
//! caller unpacks into a fresh private directory and deletes it on error.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmodat, mknodat, FchmodatFlags, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use sha2::{Digest, Sha256};
use tar::EntryType;

/// Longest entry path or link target accepted (Linux PATH_MAX).
const MAX_PATH_BYTES: u64 = 4096;
/// Largest PAX extension header accepted.
const MAX_PAX_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer tar entry {entry:?}: {reason}")]
    Refused { entry: String, reason: String },
    #[error("layer is larger than the limit of {limit} bytes uncompressed (decompression bomb?)")]
    TooLarge { limit: u64 },
    #[error("layer tar entry {entry:?}: {op}: {source}")]
    Io {
        entry: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("reading layer stream: {0}")]
    Stream(io::Error),
}

fn refused(entry: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::Refused {
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

/// What unpacking found, recorded with the layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerSummary {
    /// `sha256:<hex>` of the uncompressed tar stream: the layer's diff_id.
    pub diff_id: String,
    /// Bytes of the uncompressed stream.
    pub tar_bytes: u64,
    /// Bytes of regular file content written.
    pub content_bytes: u64,
    /// Inodes created (files, directories, links, nodes, whiteouts).
    pub inodes: u64,
    /// Disk space those take, from the allocated blocks.
    pub disk_bytes: u64,
}

/// Counts and hashes what the tar reader consumes and stops at a cap.
struct MeteredReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    limit: u64,
}

impl<R: Read> Read for MeteredReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        if self.bytes > self.limit {
            return Err(io::Error::other(BombError));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[derive(Debug)]
struct BombError;
impl std::fmt::Display for BombError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("uncompressed size limit exceeded")
    }
}
impl std::error::Error for BombError {}

fn is_bomb(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<BombError>())
}

/// Unpack a layer stream into `dest`, an existing empty directory. The
/// compression (gzip, zstd or none) is detected from the stream's magic
/// bytes, as containerd does, so a mislabelled media type cannot smuggle an
/// unexpected decoder in. The whole stream is consumed so its diff_id covers
/// the tar padding too.
pub fn unpack_layer<R: Read>(stream: R, dest: &Path, max_bytes: u64) -> Result<LayerSummary, UnpackError> {
    let mut buffered = BufReader::with_capacity(128 * 1024, stream);
    let magic = buffered.fill_buf().map_err(UnpackError::Stream)?;
    let decoder: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(UnpackError::Stream)?)
    } else {
        Box::new(buffered)
    };
    let mut metered = MeteredReader {
        inner: decoder,
        hasher: Sha256::new(),
        bytes: 0,
        limit: max_bytes,
    };
    let root = open_root(dest)?;
    let mut applier = Applier {
        root,
        summary: LayerSummary::default(),
        dir_times: Vec::new(),
        parent_cache: None,
    };
    let result = applier.apply(&mut metered);
    let result = result.and_then(|()| {
        // Hash whatever follows the end-of-archive marker.
        io::copy(&mut metered, &mut io::sink()).map_err(UnpackError::Stream)?;
        Ok(())
    });
    if let Err(e) = result {
        return Err(match e {
            UnpackError::Stream(ref io) | UnpackError::Io { source: ref io, .. } if is_bomb(io) => {
                UnpackError::TooLarge { limit: max_bytes }
            }
            other => other,
        });
    }
    applier.finish_dir_times();
    let mut summary = applier.summary;
    summary.tar_bytes = metered.bytes;
    summary.diff_id = format!("sha256:{}", hex::encode(metered.hasher.finalize()));
    Ok(summary)
}

fn open_root(dest: &Path) -> Result<OwnedFd, UnpackError> {
    let fd = nix::fcntl::open(
        dest,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Io {
        entry: dest.display().to_string(),
        op: "open layer directory",
        source: e.into(),
    })?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open `name` under `dir` without following a symlink in its last
/// component.
fn open_at(dir: RawFd, name: &OsStr, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let fd = openat(Some(dir), name, flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, mode)?;
    // SAFETY: `openat` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Metadata of one entry collected from its headers.
struct EntryMeta {
    path: Vec<OsString>,
    display: String,
    link: Option<OsString>,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Option<TimeSpec>,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Pending GNU/PAX extension data for the next real entry.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

struct Applier {
    root: OwnedFd,
    summary: LayerSummary,
    dir_times: Vec<(Vec<OsString>, TimeSpec)>,
    /// The parent directory of the previous entry, reused while entries stay
    /// in one directory (the common order in layer tars).
    parent_cache: Option<(Vec<OsString>, OwnedFd)>,
}

impl Applier {
    fn apply<R: Read>(&mut self, reader: &mut R) -> Result<(), UnpackError> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(UnpackError::Stream)?.raw(true);
        let mut pending = Pending::default();
        for entry in entries {
            let mut entry = entry.map_err(UnpackError::Stream)?;
            let kind = entry.header().entry_type();
            let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let size = entry.header().entry_size().map_err(UnpackError::Stream)?;
            match kind {
                EntryType::GNULongName | EntryType::GNULongLink => {
                    if size > MAX_PATH_BYTES {
                        return Err(refused(
                            &raw_name,
                            format!("GNU long name header of {size} bytes exceeds {MAX_PATH_BYTES}"),
                        ));
                    }
                    let mut data = read_small(&mut entry, size)?;
                    while data.last() == Some(&0) {
                        data.pop();
                    }
                    if kind == EntryType::GNULongName {
                        pending.long_name = Some(data);
                    } else {
                        pending.long_link = Some(data);
                    }
                    continue;
                }
                EntryType::XHeader | EntryType::XGlobalHeader => {
                    if size > MAX_PAX_BYTES {
                        return Err(refused(
                            &raw_name,
                            format!("PAX header of {size} bytes exceeds {MAX_PAX_BYTES}"),
                        ));
                    }
                    let data = read_small(&mut entry, size)?;
                    // Global headers carry nothing layers rely on.
                    if kind == EntryType::XHeader {
                        pending.pax = Some(data);
                    }
                    continue;
                }
                _ => {}
            }
            let taken = std::mem::take(&mut pending);
            let meta = self.entry_meta(&entry, taken, size)?;
            self.apply_entry(&mut entry, kind, meta)?;
        }
        Ok(())
    }

    fn entry_meta<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        pending: Pending,
        size: u64,
    ) -> Result<EntryMeta, UnpackError> {
        let header = entry.header();
        let mut path_bytes = pending.long_name.unwrap_or_else(|| entry.path_bytes().into_owned());
        let mut link_bytes = pending
            .long_link
            .or_else(|| entry.link_name_bytes().map(|l| l.into_owned()));
        let mut uid = header.uid().unwrap_or(0);
        let mut gid = header.gid().unwrap_or(0);
        let mut mtime = header.mtime().ok().map(|s| TimeSpec::new(s as i64, 0));
        let mut xattrs = Vec::new();
        let display = String::from_utf8_lossy(&path_bytes).into_owned();
        if let Some(pax) = &pending.pax {
            for ext in tar::PaxExtensions::new(pax) {
                let ext = ext.map_err(|e| refused(&display, format!("malformed PAX header: {e}")))?;
                let key = ext.key().map_err(|_| refused(&display, "PAX key is not UTF-8"))?;
                let value = ext.value_bytes();
                match key {
                    "path" => path_bytes = value.to_vec(),
                    "linkpath" => link_bytes = Some(value.to_vec()),
                    "uid" => uid = parse_pax_u64(value).unwrap_or(uid),
                    "gid" => gid = parse_pax_u64(value).unwrap_or(gid),
                    "mtime" => {
                        if let Some(ts) = parse_pax_time(value) {
                            mtime = Some(ts);
                        }
                    }
                    "size" if parse_pax_u64(value) != Some(size) => {
                        return Err(refused(
                            &display,
                            "PAX size override differs from the header size (unsupported)",
                        ));
                    }
                    k if k.starts_with("GNU.sparse") => {
                        return Err(refused(&display, "sparse files are not supported"));
                    }
                    k if k.starts_with("SCHILY.xattr.") => {
                        let name = &k["SCHILY.xattr.".len()..];
                        xattrs.push((OsString::from(name), value.to_vec()));
                    }
                    _ => {}
                }
            }
        }
        let display = String::from_utf8_lossy(&path_bytes).into_owned();
        if path_bytes.len() as u64 > MAX_PATH_BYTES {
            return Err(refused(&display, "path longer than 4096 bytes"));
        }
        let path = clean_path(&path_bytes).map_err(|why| refused(&display, why))?;
        let link = link_bytes.map(std::os::unix::ffi::OsStringExt::from_vec);
        Ok(EntryMeta {
            path,
            display,
            link,
            mode: header.mode().unwrap_or(0o644) & 0o7777,
            uid: u32::try_from(uid).map_err(|_| refused("", "uid out of range"))?,
            gid: u32::try_from(gid).map_err(|_| refused("", "gid out of range"))?,
            mtime,
            xattrs,
        })
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: EntryType,
        meta: EntryMeta,
    ) -> Result<(), UnpackError> {
        let Some((name, parents)) = meta.path.split_last() else {
            // The layer root itself ("./"): its attributes come from the
            // container's upper dir, nothing to do.
            return Ok(());
        };
        let name = name.clone();
        let parents = parents.to_vec();
        let parent = self.open_parent(&parents, &meta.display)?;
        let name_bytes = name.as_bytes();

        if let Some(target) = name_bytes.strip_prefix(b".wh.") {
            if target == b".wh..opq" {
                let dir = File::from(
                    open_at(
                        parent,
                        OsStr::new("."),
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                        Mode::empty(),
                    )
                    .map_err(|e| io_err(&meta.display, "open opaque dir", e.into()))?,
                );
                xattr::FileExt::set_xattr(&dir, "trusted.overlay.opaque", b"y")
                    .map_err(|e| io_err(&meta.display, "mark directory opaque", e))?;
                return Ok(());
            }
            if target.starts_with(b".wh.") || target.is_empty() {
                // aufs metadata (.wh..wh.plnk and friends): meaningless here.
                return Ok(());
            }
            let target = OsStr::from_bytes(target);
            self.clear(parent, target, false, &meta.display)?;
            mknodat(Some(parent), target, SFlag::S_IFCHR, Mode::from_bits_truncate(0o000), 0)
                .map_err(|e| io_err(&meta.display, "create whiteout", e.into()))?;
            self.summary.inodes += 1;
            return Ok(());
        }

        let name = name.as_os_str();
        match kind {
            EntryType::Directory => {
                self.clear(parent, name, true, &meta.display)?;
                match nix::sys::stat::mkdirat(Some(parent), name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) => {
                        self.summary.inodes += 1;
                        self.summary.disk_bytes += 4096;
                    }
                    Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io_err(&meta.display, "mkdir", e.into())),
                }
                let dir = open_at(parent, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
                    .map_err(|e| io_err(&meta.display, "open directory", e.into()))?;
                self.set_owner_mode(&dir, &meta)?;
                if let Some(t) = meta.mtime {
                    self.dir_times.push((meta.path.clone(), t));
                }
            }
            EntryType::Regular | EntryType::Continuous => {
                self.clear(parent, name, false, &meta.display)?;
                let fd = open_at(
                    parent,
                    name,
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| io_err(&meta.display, "create file", e.into()))?;
                let mut file = File::from(fd);
                let n = io::copy(entry, &mut file).map_err(|e| io_err(&meta.display, "write file", e))?;
                file.flush().map_err(|e| io_err(&meta.display, "write file", e))?;
                self.summary.content_bytes += n;
                self.summary.inodes += 1;
                let fd: OwnedFd = file.into();
                if let Ok(st) = nix::sys::stat::fstat(fd.as_raw_fd()) {
                    self.summary.disk_bytes += st.st_blocks as u64 * 512;
                }
                self.set_owner_mode(&fd, &meta)?;
                if let Some(t) = meta.mtime {
                    nix::sys::stat::futimens(fd.as_raw_fd(), &t, &t)
                        .map_err(|e| io_err(&meta.display, "set mtime", e.into()))?;
                }
            }
            EntryType::Symlink => {
                let target = meta
                    .link
                    .as_ref()
                    .ok_or_else(|| refused(&meta.display, "symlink without target"))?;
                if target.len() as u64 > MAX_PATH_BYTES {
                    return Err(refused(&meta.display, "symlink target longer than 4096 bytes"));
                }
                self.clear(parent, name, false, &meta.display)?;
                // The target is stored verbatim: it is only ever resolved
                // inside the container's root, never by nodelet on the host.
                symlinkat(target.as_os_str(), Some(parent), name)
                    .map_err(|e| io_err(&meta.display, "create symlink", e.into()))?;
                self.summary.inodes += 1;
                fchownat(
                    Some(parent),
                    name,
                    Some(Uid::from_raw(meta.uid)),
                    Some(Gid::from_raw(meta.gid)),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io_err(&meta.display, "chown symlink", e.into()))?;
                if let Some(t) = meta.mtime {
                    nix::sys::stat::utimensat(
                        Some(parent),
                        name,
                        &t,
                        &t,
                        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                    )
                    .map_err(|e| io_err(&meta.display, "set symlink mtime", e.into()))?;
                }
            }
            EntryType::Link => {
                let target = meta
                    .link
                    .as_ref()
                    .ok_or_else(|| refused(&meta.display, "hard link without target"))?;
                let target_path = clean_path(target.as_bytes())
                    .map_err(|why| refused(&meta.display, format!("hard link target {target:?}: {why}")))?;
                let Some((target_name, target_parents)) = target_path.split_last() else {
                    return Err(refused(&meta.display, "hard link to the layer root"));
                };
                let target_parents = target_parents.to_vec();
                let target_name = target_name.clone();
                // A second walk: the cache holds the entry's own parent.
                let target_dir = self.walk(&target_parents, &meta.display, false)?;
                self.clear(parent, name, false, &meta.display)?;
                match linkat(
                    Some(target_dir.as_raw_fd()),
                    target_name.as_os_str(),
                    Some(parent),
                    name,
                    nix::fcntl::AtFlags::empty(),
                ) {
                    Ok(()) => {}
                    Err(Errno::ENOENT) => {
                        return Err(refused(
                            &meta.display,
                            format!("hard link target {target:?} is not in this layer"),
                        ))
                    }
                    Err(e) => return Err(io_err(&meta.display, "create hard link", e.into())),
                }
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    EntryType::Char | EntryType::Block => {
                        let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                        let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                        let flag = if kind == EntryType::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (flag, libc::makedev(major, minor))
                    }
                    _ => (SFlag::S_IFIFO, 0),
                };
                self.clear(parent, name, false, &meta.display)?;
                mknodat(Some(parent), name, sflag, Mode::from_bits_truncate(0o600), dev)
                    .map_err(|e| io_err(&meta.display, "create device node", e.into()))?;
                self.summary.inodes += 1;
                fchownat(
                    Some(parent),
                    name,
                    Some(Uid::from_raw(meta.uid)),
                    Some(Gid::from_raw(meta.gid)),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io_err(&meta.display, "chown node", e.into()))?;
                // mknod's mode is masked by the umask: set it explicitly.
                fchmodat(
                    Some(parent),
                    name,
                    Mode::from_bits_truncate(meta.mode),
                    FchmodatFlags::FollowSymlink,
                )
                .map_err(|e| io_err(&meta.display, "chmod node", e.into()))?;
            }
            EntryType::GNUSparse => {
                return Err(refused(&meta.display, "sparse files are not supported"));
            }
            other => {
                return Err(refused(
                    &meta.display,
                    format!("unsupported tar entry type {:?}", other.as_byte() as char),
                ));
            }
        }
        Ok(())
    }

    /// Owner before mode: chown clears setuid/setgid bits.
    fn set_owner_mode(&self, fd: &OwnedFd, meta: &EntryMeta) -> Result<(), UnpackError> {
        nix::unistd::fchown(
            fd.as_raw_fd(),
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(|e| io_err(&meta.display, "chown", e.into()))?;
        nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(meta.mode))
            .map_err(|e| io_err(&meta.display, "chmod", e.into()))?;
        if !meta.xattrs.is_empty() {
            // SAFETY: the descriptor stays open for the whole borrow; the
            // File is forgotten below so it is not closed twice.
            let file = unsafe { File::from_raw_fd(fd.as_raw_fd()) };
            let file = std::mem::ManuallyDrop::new(file);
            for (name, value) in &meta.xattrs {
                if !xattr_allowed(name) {
                    tracing::debug!(entry = %meta.display, xattr = ?name, "skipping xattr");
                    continue;
                }
                xattr::FileExt::set_xattr(&*file, name, value).map_err(|e| io_err(&meta.display, "set xattr", e))?;
            }
        }
        Ok(())
    }

    /// Make room for a new entry called `name` in `parent`. An existing
    /// directory is kept when the new entry is a directory too.
    fn clear(&mut self, parent: RawFd, name: &OsStr, keep_dir: bool, display: &str) -> Result<(), UnpackError> {
        match nix::sys::stat::fstatat(Some(parent), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io_err(display, "stat", e.into())),
            Ok(st) => {
                let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                if is_dir && keep_dir {
                    return Ok(());
                }
                if is_dir {
                    let dir = open_at(parent, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
                        .map_err(|e| io_err(display, "open directory to replace", e.into()))?;
                    remove_dir_contents(&dir).map_err(|e| io_err(display, "replace directory", e))?;
                    unlinkat(Some(parent), name, UnlinkatFlags::RemoveDir)
                        .map_err(|e| io_err(display, "replace directory", e.into()))?;
                    self.parent_cache = None;
                } else {
                    unlinkat(Some(parent), name, UnlinkatFlags::NoRemoveDir)
                        .map_err(|e| io_err(display, "replace file", e.into()))?;
                }
                Ok(())
            }
        }
    }

    /// The descriptor of the entry's parent directory, created as needed.
    fn open_parent(&mut self, parents: &[OsString], display: &str) -> Result<RawFd, UnpackError> {
        let hit = matches!(&self.parent_cache, Some((p, _)) if p.as_slice() == parents);
        if !hit {
            let fd = self.walk(parents, display, true)?;
            self.parent_cache = Some((parents.to_vec(), fd));
        }
        Ok(self.parent_cache.as_ref().map(|(_, fd)| fd.as_raw_fd()).unwrap_or(-1))
    }

    /// Open `components` below the root one at a time with `O_NOFOLLOW`,
    /// creating missing directories when `create`.
    fn walk(&self, components: &[OsString], display: &str, create: bool) -> Result<OwnedFd, UnpackError> {
        let mut current = open_at(
            self.root.as_raw_fd(),
            OsStr::new("."),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| io_err(display, "open layer root", e.into()))?;
        for (i, comp) in components.iter().enumerate() {
            let next = match open_at(
                current.as_raw_fd(),
                comp,
                OFlag::O_PATH | OFlag::O_DIRECTORY,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    match nix::sys::stat::mkdirat(
                        Some(current.as_raw_fd()),
                        comp.as_os_str(),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(io_err(display, "create parent directory", e.into())),
                    }
                    open_at(
                        current.as_raw_fd(),
                        comp,
                        OFlag::O_PATH | OFlag::O_DIRECTORY,
                        Mode::empty(),
                    )
                    .map_err(|e| io_err(display, "open parent directory", e.into()))?
                }
                Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                    let so_far: PathBuf = components[..=i].iter().collect();
                    return Err(refused(
                        display,
                        format!(
                            "path goes through {} which is not a directory (a symlink would lead outside the layer)",
                            so_far.display()
                        ),
                    ));
                }
                Err(e) => return Err(io_err(display, "open parent directory", e.into())),
            };
            current = next;
        }
        Ok(current)
    }

    fn finish_dir_times(&mut self) {
        // Children were created after their directory's header: restore the
        // directories' mtimes last, deepest first.
        self.dir_times.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        for (path, t) in std::mem::take(&mut self.dir_times) {
            let rel: PathBuf = path.iter().collect();
            let _ = nix::sys::stat::utimensat(
                Some(self.root.as_raw_fd()),
                &rel,
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            );
        }
    }
}

fn io_err(entry: &str, op: &'static str, source: io::Error) -> UnpackError {
    UnpackError::Io {
        entry: entry.to_string(),
        op,
        source,
    }
}

fn read_small<R: Read>(entry: &mut tar::Entry<'_, R>, size: u64) -> Result<Vec<u8>, UnpackError> {
    let mut data = Vec::with_capacity(size as usize);
    entry.take(size).read_to_end(&mut data).map_err(UnpackError::Stream)?;
    Ok(data)
}

/// Split a tar path into its normal components. `.` components and a
/// trailing slash are dropped; an absolute path or a `..` is refused.
fn clean_path(bytes: &[u8]) -> Result<Vec<OsString>, String> {
    if bytes.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    let path = Path::new(OsStr::from_bytes(bytes));
    let mut out = Vec::new();
    for comp in path.components() {
        match comp {
            Component::Normal(c) => out.push(c.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err("path contains '..'".into()),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path".into()),
        }
    }
    Ok(out)
}

/// Xattrs a layer may set. `trusted.*` is refused: `trusted.overlay.*`
/// would let an image steer overlayfs (redirects, metacopy, opaque).
fn xattr_allowed(name: &OsStr) -> bool {
    let n = name.as_bytes();
    n.starts_with(b"user.") || n == b"security.capability"
}

fn parse_pax_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

fn parse_pax_time(v: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos = 0i64;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        let scale = 10i64.pow(9 - digits.len() as u32);
        nanos = digits.parse::<i64>().ok()? * scale;
    }
    Some(TimeSpec::new(secs, nanos))
}

/// Remove everything inside an open directory without following symlinks.
fn remove_dir_contents(dir: &OwnedFd) -> io::Result<()> {
    let dup = nix::unistd::dup(dir.as_raw_fd())?;
    let mut d = nix::dir::Dir::from_fd(dup)?;
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        names.push((OsStr::from_bytes(n).to_os_string(), e.file_type()));
    }
    for (name, ty) in names {
        if ty == Some(nix::dir::Type::Directory) {
            let sub = open_at(
                dir.as_raw_fd(),
                &name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            )?;
            remove_dir_contents(&sub)?;
            unlinkat(Some(dir.as_raw_fd()), name.as_os_str(), UnlinkatFlags::RemoveDir)?;
        } else {
            unlinkat(Some(dir.as_raw_fd()), name.as_os_str(), UnlinkatFlags::NoRemoveDir)?;
        }
    }
    Ok(())
}

/// Count inodes and bytes of a tree (used for stores written before the
/// summary existed and in tests).
pub fn tree_usage(path: &Path) -> (u64, u64) {
    fn walk(p: &Path, acc: &mut (u64, u64), seen: &mut HashMap<(u64, u64), ()>) {
        use std::os::unix::fs::MetadataExt;
        let Ok(md) = std::fs::symlink_metadata(p) else { return };
        if md.nlink() > 1 && !md.is_dir() && seen.insert((md.dev(), md.ino()), ()).is_some() {
            return;
        }
        acc.0 += md.blocks() * 512;
        acc.1 += 1;
        if md.is_dir() {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    walk(&e.path(), acc, seen);
                }
            }
        }
    }
    let mut acc = (0, 0);
    walk(path, &mut acc, &mut HashMap::new());
    acc
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
