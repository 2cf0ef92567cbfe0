//! Disk usage of a directory tree (a container's writable layer), counted
//! the way `du` does: allocated blocks, each inode once however many hard
//! links it has, without crossing into other filesystems.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub bytes: u64,
    pub inodes: u64,
}

/// Walk `root`. A missing root is empty; entries that vanish during the
/// walk (the container is writing) are skipped.
pub fn usage(root: &Path) -> DiskUsage {
    let Ok(top) = std::fs::symlink_metadata(root) else {
        return DiskUsage::default();
    };
    let dev = top.dev();
    let mut seen = HashSet::new();
    let mut out = DiskUsage::default();
    let mut count = |md: &std::fs::Metadata, out: &mut DiskUsage| {
        if md.nlink() > 1 && !md.is_dir() && !seen.insert(md.ino()) {
            return;
        }
        out.bytes += md.blocks() * 512;
        out.inodes += 1;
    };
    count(&top, &mut out);
    // An explicit stack: a deep tree must not exhaust the thread's stack.
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.dev() != dev {
                continue;
            }
            count(&md, &mut out);
            if md.is_dir() {
                dirs.push(e.path());
            }
        }
    }
    out
}

/// Size and free space of the filesystem holding `path`, for the
/// `container_fs_*` metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsCapacity {
    pub bytes: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

pub fn capacity(path: &Path) -> Option<FsCapacity> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some(FsCapacity {
        bytes: st.blocks() as u64 * st.fragment_size() as u64,
        inodes: st.files() as u64,
        inodes_free: st.files_free() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_blocks_and_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let empty = usage(dir.path());
        assert_eq!(empty.inodes, 1);
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), vec![7u8; 1 << 20]).unwrap();
        std::fs::hard_link(dir.path().join("d/f"), dir.path().join("g")).unwrap();
        std::os::unix::fs::symlink("d/f", dir.path().join("l")).unwrap();
        let u = usage(dir.path());
        // root, d, f (once for two links), the symlink.
        assert_eq!(u.inodes, 4);
        assert!(u.bytes >= 1 << 20 && u.bytes < (1 << 20) + 64 * 1024, "{u:?}");
        assert_eq!(usage(&dir.path().join("missing")), DiskUsage::default());
        assert!(capacity(dir.path()).unwrap().bytes > 0);
    }
}
