//! Layer unpacking (`image::unpack::unpack_layer`): the bytes as a layer
//! stream as they come (plain tar, or gzip/zstd by magic) and gzipped (so
//! the fuzzer's tar mutations also go through the gzip path), unpacked into
//! a scratch directory nested three deep in `$TMPDIR/nodelet-fuzz-unpack`.
//! After each run nothing may exist beside the scratch directory at any
//! level above it: no entry can write outside it, whether by `..`,
//! absolute names, symlinks or hard links.
#![no_main]

use std::io::Write;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use nodelet::image::unpack::unpack_layer;

/// Small: bombs stop here quickly.
const LIMIT: u64 = 4 << 20;

fn only_child(dir: &Path, name: &str) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [name],
        "something was written beside the scratch directory in {}",
        dir.display()
    );
}

/// A fixed place (one fuzzer process at a time), so that seeds can hold
/// absolute symlinks and hard links aimed at it.
fn top() -> PathBuf {
    std::env::temp_dir().join("nodelet-fuzz-unpack")
}

fn unpack(stream: &[u8]) {
    let top = top();
    if top.exists() {
        std::fs::remove_dir_all(&top).expect("clean scratch");
    }
    let scratch = top.join("a").join("b").join("layer");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    if let Ok(summary) = unpack_layer(stream, &scratch, LIMIT) {
        assert!(summary.diff_id.starts_with("sha256:"));
        assert!(summary.tar_bytes <= LIMIT);
    }
    only_child(&top, "a");
    only_child(&top.join("a"), "b");
    only_child(&top.join("a").join("b"), "layer");
    // The scratch directory itself is still a directory, not replaced by
    // a symlink or a file.
    let meta = std::fs::symlink_metadata(&scratch).expect("scratch exists");
    assert!(meta.is_dir(), "scratch directory replaced");
}

fuzz_target!(|data: &[u8]| {
    unpack(data);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("gzip");
    unpack(&gz.finish().expect("gzip"));
});
