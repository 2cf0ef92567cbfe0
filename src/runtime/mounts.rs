//! The mounts the daemon makes on the host: each container's overlayfs
//! root and each pod's shared `/dev/shm`, and the idmapped mounts of
//! user-namespaced pods.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// The kernel copies at most a page of mount options.
const MAX_OPTIONS: usize = 4095;

/// Mount an overlay of `lowers` (top-most first) with a writable upper
/// layer at `target`.
pub fn overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    let join = |p: &Path| p.to_string_lossy().replace(',', "\\,").replace(':', "\\:");
    let lower = if lowers.is_empty() {
        // An image without layers still needs a lower directory.
        let empty = upper.with_file_name("empty-lower");
        std::fs::create_dir_all(&empty)?;
        join(&empty)
    } else {
        lowers.iter().map(|p| join(p)).collect::<Vec<_>>().join(":")
    };
    let options = format!("lowerdir={lower},upperdir={},workdir={}", join(upper), join(work));
    if options.len() > MAX_OPTIONS {
        return Err(io::Error::other(format!(
            "overlay options for {} layers are {} bytes, over the kernel's {MAX_OPTIONS}",
            lowers.len(),
            options.len()
        )));
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(io::Error::from)
}

/// A size-limited tmpfs (the pod's `/dev/shm`).
pub fn tmpfs(target: &Path, size_bytes: u64) -> io::Result<()> {
    let options = format!("mode=1777,size={size_bytes}");
    mount(
        Some("shm"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )
    .map_err(io::Error::from)
}

/// Bind `source` (a file) onto a new empty file at `target`: used to pin a
/// process's namespace (`/proc/<pid>/ns/net`) to a stable path, as
/// `ip netns add` does.
pub fn bind_file(source: &Path, target: &Path) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(target)?;
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(io::Error::from)
}

/// Is something mounted exactly at `path`?
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    text.lines()
        .any(|l| l.split(' ').nth(4).map(crate::fsutil::unescape_mountinfo).as_deref() == Some(&*wanted))
}

/// Does the kernel have `mount_setattr(2)` (Linux 5.12), which recursive
/// read-only mounts are made with? Probed once with an invalid descriptor:
/// `EBADF` means the call exists, `ENOSYS` that it does not.
pub fn kernel_has_mount_setattr() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        // SAFETY: a null attribute pointer with size 0 and fd -1: the kernel
        // rejects the call before touching memory.
        let r = unsafe { libc::syscall(libc::SYS_mount_setattr, -1, c"".as_ptr(), 0, std::ptr::null::<u8>(), 0) };
        r == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
    })
}

/// Unmount `target` if mounted (detaching if busy). Not mounted is fine.
pub fn unmount(target: &Path) -> io::Result<()> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => umount2(target, MntFlags::MNT_DETACH).map_err(io::Error::from),
        Err(e) => Err(e.into()),
    }
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

fn c_path(p: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// A detached copy of the mount tree at `source` (recursive with
/// `recursive`) whose IDs are mapped through the user namespace `userns`:
/// a file owned by ID `n` on disk appears owned by the host ID that `n`
/// maps to in that namespace (container root's files: the pod's root).
/// Returns the mount's descriptor, not yet attached anywhere; dropping it
/// discards the mount.
pub fn idmapped_tree(source: &Path, userns: BorrowedFd<'_>, recursive: bool) -> io::Result<OwnedFd> {
    let path = c_path(source)?;
    let mut flags = (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree reads a NUL-terminated path that outlives the call
    // and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree just returned this descriptor; nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let at = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: mount_setattr reads `attr` (which outlives the call, with its
    // size) and the empty path; both descriptors are open.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            at as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// Attach an idmapped copy of `source` (see `idmapped_tree`) at `target`,
/// an existing directory (or file, for a file `source`).
pub fn idmapped_bind(source: &Path, target: &Path, userns: BorrowedFd<'_>, recursive: bool) -> io::Result<()> {
    let tree = idmapped_tree(source, userns, recursive)?;
    let to = c_path(target)?;
    // SAFETY: move_mount reads the empty source path and the
    // NUL-terminated target path, both outliving the call; `tree` is open.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
