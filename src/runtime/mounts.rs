//! The mounts the daemon makes on the host: each container's overlayfs
//! root and each pod's shared `/dev/shm`.

use std::io;
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
