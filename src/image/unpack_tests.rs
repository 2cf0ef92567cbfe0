//! Layer unpacking against well-formed and hostile tars. These run as root
//! (CI does): device nodes, ownership and `trusted.*` xattrs need it.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use super::*;

const BIG: u64 = 1 << 30;

/// A tar entry with a raw name, bypassing tar-rs's own path checks so hostile
/// names can be written.
fn raw_entry(b: &mut tar::Builder<Vec<u8>>, name: &[u8], kind: EntryType, link: Option<&[u8]>, data: &[u8]) {
    let mut h = Header::new_ustar();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l);
        }
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32, uid: u64, data: &[u8]) {
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(1_600_000_000);
    b.append_data(&mut h, name, data).unwrap();
}

fn dir(b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32) {
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Directory);
    h.set_size(0);
    h.set_mode(mode);
    h.set_mtime(1_500_000_000);
    b.append_data(&mut h, name, &[][..]).unwrap();
}

fn link(b: &mut tar::Builder<Vec<u8>>, kind: EntryType, name: &str, target: &str) {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, name, target).unwrap();
}

fn unpack_bytes(tar: &[u8], limit: u64) -> (tempfile::TempDir, Result<LayerSummary, UnpackError>) {
    let outer = tempfile::tempdir().unwrap();
    let dest = outer.path().join("fs");
    std::fs::create_dir(&dest).unwrap();
    let r = unpack_layer(tar, &dest, limit);
    (outer, r)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Everything under `root` except `fs/`: where an escape would land.
fn strays(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "fs")
        .collect()
}

#[test]
fn a_well_formed_layer_becomes_an_overlay_lowerdir() {
    let mut b = tar::Builder::new(Vec::new());
    dir(&mut b, "etc/", 0o755);
    file(&mut b, "etc/motd", 0o644, 0, b"hello\n");
    file(&mut b, "bin/su", 0o4755, 0, b"#!/bin/sh\n");
    file(&mut b, "home/u/owned", 0o600, 1000, b"mine");
    link(&mut b, EntryType::Symlink, "bin/sh", "/bin/busybox");
    link(&mut b, EntryType::Link, "etc/motd.hard", "etc/motd");
    raw_entry(&mut b, b"etc/.wh.gone", EntryType::Regular, None, b"");
    dir(&mut b, "var/opq/", 0o755);
    raw_entry(&mut b, b"var/opq/.wh..wh..opq", EntryType::Regular, None, b"");
    raw_entry(&mut b, b"run/fifo", EntryType::Fifo, None, b"");
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::Char);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_mode(0o666);
    h.set_size(0);
    b.append_data(&mut h, "dev/null", &[][..]).unwrap();
    // PAX xattrs: user.* is applied, trusted.overlay.* never is.
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(1);
    b.append_pax_extensions([
        ("SCHILY.xattr.user.note", &b"kept"[..]),
        ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
    ])
    .unwrap();
    b.append_data(&mut h, "etc/xattr", &b"x"[..]).unwrap();
    let tar = b.into_inner().unwrap();

    let (outer, r) = unpack_bytes(&gzip(&tar), BIG);
    let summary = r.unwrap();
    assert_eq!(summary.diff_id, format!("sha256:{}", hex::encode(Sha256::digest(&tar))));
    assert_eq!(summary.tar_bytes, tar.len() as u64);
    let fs = outer.path().join("fs");
    assert_eq!(std::fs::read(fs.join("etc/motd")).unwrap(), b"hello\n");
    let su = std::fs::metadata(fs.join("bin/su")).unwrap();
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755, "setuid survives");
    let owned = std::fs::metadata(fs.join("home/u/owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1000, 1000));
    assert_eq!(owned.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::read_link(fs.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        std::fs::metadata(fs.join("etc/motd.hard")).unwrap().ino(),
        std::fs::metadata(fs.join("etc/motd")).unwrap().ino()
    );
    let wh = std::fs::symlink_metadata(fs.join("etc/gone")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout is a 0/0 char device"
    );
    assert!(!fs.join("etc/.wh.gone").exists());
    assert_eq!(
        xattr::get(fs.join("var/opq"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(!fs.join("var/opq/.wh..wh..opq").exists());
    assert!(std::fs::symlink_metadata(fs.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let null = std::fs::symlink_metadata(fs.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert_eq!(
        null.permissions().mode() & 0o777,
        0o666,
        "mknod mode not masked by umask"
    );
    assert_eq!(
        xattr::get(fs.join("etc/xattr"), "user.note").unwrap().as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(
        xattr::get(fs.join("etc/xattr"), "trusted.overlay.redirect").unwrap(),
        None
    );
    let etc = std::fs::metadata(fs.join("etc")).unwrap();
    assert_eq!(
        etc.mtime(),
        1_500_000_000,
        "directory mtime restored after its children"
    );
    assert!(summary.inodes >= 10 && summary.disk_bytes > 0);
}

#[test]
fn zstd_and_plain_tar_are_detected_by_magic() {
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "a", 0o644, 0, b"abc");
    let tar = b.into_inner().unwrap();
    let z = zstd::encode_all(&tar[..], 3).unwrap();
    for stream in [z, tar.clone()] {
        let (outer, r) = unpack_bytes(&stream, BIG);
        assert_eq!(
            r.unwrap().diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
        );
        assert_eq!(std::fs::read(outer.path().join("fs/a")).unwrap(), b"abc");
    }
}

#[test]
fn parent_dir_entries_are_refused() {
    for name in [&b"../escape"[..], b"a/../../escape", b"./../escape"] {
        let mut b = tar::Builder::new(Vec::new());
        raw_entry(&mut b, name, EntryType::Regular, None, b"x");
        let (outer, r) = unpack_bytes(&b.into_inner().unwrap(), BIG);
        let err = r.unwrap_err().to_string();
        assert!(err.contains("'..'"), "{err}");
        assert!(strays(outer.path()).is_empty(), "nothing outside the layer");
    }
}

#[test]
fn absolute_entries_are_refused() {
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, b"/tmp/nodelet-abs-escape", EntryType::Regular, None, b"x");
    let (_outer, r) = unpack_bytes(&b.into_inner().unwrap(), BIG);
    assert!(r.unwrap_err().to_string().contains("absolute path"));
    assert!(!Path::new("/tmp/nodelet-abs-escape").exists());
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let target = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    link(&mut b, EntryType::Symlink, "evil", target.path().to_str().unwrap());
    raw_entry(&mut b, b"evil/planted", EntryType::Regular, None, b"x");
    let (_outer, r) = unpack_bytes(&b.into_inner().unwrap(), BIG);
    let err = r.unwrap_err().to_string();
    assert!(err.contains("symlink"), "{err}");
    assert!(
        !target.path().join("planted").exists(),
        "nothing written through the link"
    );
    // Relative links that climb out are the same.
    let mut b = tar::Builder::new(Vec::new());
    link(&mut b, EntryType::Symlink, "up", "../..");
    raw_entry(&mut b, b"up/planted", EntryType::Regular, None, b"x");
    let (outer, r) = unpack_bytes(&b.into_inner().unwrap(), BIG);
    assert!(r.is_err());
    assert!(strays(outer.path()).is_empty());
}

#[test]
fn hard_links_out_of_the_layer_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"s").unwrap();
    let cases: Vec<Vec<u8>> = vec![
        b"../../etc/passwd".to_vec(),
        secret.to_str().unwrap().as_bytes().to_vec(),
        b"missing/file".to_vec(),
    ];
    for target in cases {
        let mut b = tar::Builder::new(Vec::new());
        raw_entry(&mut b, b"stolen", EntryType::Link, Some(&target), b"");
        let (outer, r) = unpack_bytes(&b.into_inner().unwrap(), BIG);
        assert!(r.is_err(), "link to {:?} accepted", String::from_utf8_lossy(&target));
        assert!(!outer.path().join("fs/stolen").exists());
    }
    // Through a symlinked directory.
    let mut b = tar::Builder::new(Vec::new());
    link(&mut b, EntryType::Symlink, "dir", outside.path().to_str().unwrap());
    raw_entry(&mut b, b"stolen", EntryType::Link, Some(b"dir/secret"), b"");
    let (outer, r) = unpack_bytes(&b.into_inner().unwrap(), BIG);
    assert!(r.unwrap_err().to_string().contains("symlink"));
    assert!(!outer.path().join("fs/stolen").exists());
    assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1);
}

#[test]
fn oversized_extension_headers_are_refused() {
    // A GNU long name claiming 16 MiB: refused before it is read into memory.
    let mut h = Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(EntryType::GNULongName);
    h.set_size(16 << 20);
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend(std::iter::repeat_n(b'a', 16 << 20));
    let (_outer, r) = unpack_bytes(&tar, BIG);
    let err = r.unwrap_err().to_string();
    assert!(err.contains("GNU long name"), "{err}");

    let mut b = tar::Builder::new(Vec::new());
    let big = vec![b'x'; 2 << 20];
    b.append_pax_extensions([("comment", &big[..])]).unwrap();
    file(&mut b, "f", 0o644, 0, b"");
    let (_outer, r) = unpack_bytes(&b.into_inner().unwrap(), BIG);
    assert!(r.unwrap_err().to_string().contains("PAX header"));
}

#[test]
fn decompression_bombs_stop_at_the_limit() {
    let mut b = tar::Builder::new(Vec::new());
    let zeros = vec![0u8; 8 << 20];
    file(&mut b, "zeros", 0o644, 0, &zeros);
    // Level 9: zlib-rs's fast level (deflate_quick) squeezes zeros less
    // than miniz did, and this test needs a real bomb.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&b.into_inner().unwrap()).unwrap();
    let compressed = e.finish().unwrap();
    assert!(compressed.len() < 64 << 10, "a real bomb: {} bytes", compressed.len());
    let (outer, r) = unpack_bytes(&compressed, 1 << 20);
    match r {
        Err(UnpackError::TooLarge { limit }) => assert_eq!(limit, 1 << 20),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let written = std::fs::metadata(outer.path().join("fs/zeros"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(written <= 1 << 20, "wrote {written} bytes past the limit");
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for junk in [
        vec![0x1f, 0x8b, 0, 1, 2, 3],
        vec![0x28, 0xb5, 0x2f, 0xfd, 9, 9],
        vec![7u8; 1500],
    ] {
        let (_outer, r) = unpack_bytes(&junk, BIG);
        assert!(r.is_err());
    }
}
