//! Registry content: the same bytes as a manifest's media type sniffing
//! (`registry::sniff_manifest_type`), an image index (platform choice,
//! `pull::select_from_index`), an OCI and a Docker manifest
//! (`pull::parse_manifest`), and, split at the first 0xff byte (never in
//! UTF-8 JSON), a manifest and its image config (`pull::layer_refs`: the
//! layers, their media types, digests and diff_ids). The text is also an
//! image reference (`reference::parse`) and a `WWW-Authenticate` challenge
//! (`registry::parse_challenge`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodelet::image::registry::{MEDIA_DOCKER_MANIFEST, MEDIA_OCI_MANIFEST};
use nodelet::image::{pull, reference, registry, store};

const IMAGE: &str = "registry.local/fuzz:latest";

fuzz_target!(|data: &[u8]| {
    let _ = registry::sniff_manifest_type(data, None);
    let _ = registry::sniff_manifest_type(data, Some("application/json"));
    if let Ok(digest) = pull::select_from_index(IMAGE, data) {
        assert!(!digest.is_empty());
    }
    for media_type in [MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST] {
        let _ = pull::parse_manifest(IMAGE, media_type, data);
    }
    let (manifest, config) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"{}"[..]),
    };
    if let Ok(m) = pull::parse_manifest(IMAGE, MEDIA_OCI_MANIFEST, manifest) {
        if let Ok(layers) = pull::layer_refs(IMAGE, &m, config) {
            assert_eq!(layers.len(), m.layers().len());
            for l in &layers {
                // What the store turns into file names must be safe ones.
                let hex = store::digest_hex(&l.digest).expect("checked digest");
                assert!(!hex.contains('/') && hex != "." && hex != "..");
                store::digest_hex(&l.diff_id).expect("checked diff_id");
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(r) = reference::parse(text) {
            let _ = r.to_string();
            let _ = r.name();
            let _ = r.tag_ref();
            let _ = r.fetch_key();
            // A parsed reference parses again to itself.
            let again = reference::parse(&r.to_string()).expect("a reference's own text parses");
            assert_eq!(again, r);
        }
        let _ = registry::parse_challenge(text);
    }
});
