//! The CRI ImageService end to end: a real nodelet daemon, driven through
//! its socket as crictl or a kubelet drives it, pulling from Debian's
//! docker-registry (and a scripted registry for faults).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use nodelet_integration::cri::{api, spec};
use nodelet_integration::daemon::{list_tree, Daemon};
use nodelet_integration::fake_registry::{FakeRegistry, Fault};
use nodelet_integration::registry::Registry;
use nodelet_integration::{test_image, TestImage};
use tonic::Code;

async fn pull(
    images: &mut nodelet_integration::cri::Images,
    image: &str,
    auth: Option<api::AuthConfig>,
) -> Result<String, tonic::Status> {
    images
        .pull_image(api::PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn status(images: &mut nodelet_integration::cri::Images, image: &str) -> Option<api::Image> {
    images
        .image_status(api::ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await
        .expect("ImageStatus")
        .into_inner()
        .image
}

async fn list(images: &mut nodelet_integration::cri::Images) -> Vec<api::Image> {
    images
        .list_images(api::ListImagesRequest::default())
        .await
        .expect("ListImages")
        .into_inner()
        .images
}

async fn remove(images: &mut nodelet_integration::cri::Images, image: &str) {
    images
        .remove_image(api::RemoveImageRequest { image: spec(image) })
        .await
        .expect("RemoveImage");
}

/// The store holds no work in progress and exactly `layers` layers.
fn assert_store_clean(d: &Daemon, layers: usize) {
    let tmp = list_tree(&d.images_dir().join("tmp"));
    assert!(tmp.is_empty(), "work directories left behind: {tmp:?}");
    let n = std::fs::read_dir(d.images_dir().join("layers")).unwrap().count();
    assert_eq!(
        n,
        layers,
        "layers in the store: {:?}",
        list_tree(&d.images_dir().join("layers"))
    );
}

/// Mount the image's layers as overlayfs lowerdirs (read-only) and hand
/// the merged root to `check`.
fn with_merged_rootfs(d: &Daemon, image_id: &str, check: impl FnOnce(&Path)) {
    let records: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.images_dir().join("images.json")).unwrap()).unwrap();
    let img = records["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == image_id)
        .expect("record");
    let lowers: Vec<String> = img["layers"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|l| {
            let hex = l["diff_id"].as_str().unwrap().trim_start_matches("sha256:");
            d.images_dir().join("layers").join(hex).join("fs").display().to_string()
        })
        .collect();
    let merged = d.path("merged");
    std::fs::create_dir_all(&merged).unwrap();
    // A single lowerdir cannot be mounted alone: add an empty top.
    let empty = d.path("empty-lower");
    std::fs::create_dir_all(&empty).unwrap();
    let opts = format!("lowerdir={}:{}", empty.display(), lowers.join(":"));
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .expect("mount overlay");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&merged)));
    nix::mount::umount(&merged).expect("umount");
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

fn registry_with(images: &[&str]) -> Registry {
    let reg = Registry::start();
    for i in images {
        reg.push(&test_image(i));
    }
    reg
}

#[tokio::test]
async fn pull_list_inspect_and_remove() {
    let reg = registry_with(&["test/busybox"]);
    let d = Daemon::start("").await;
    let (_, mut images) = d.clients().await;
    let name = reg.image("test/busybox");

    let id = pull(&mut images, &name, None)
        .await
        .expect("pull over the loopback HTTP fallback");
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let all = list(&mut images).await;
    assert_eq!(all.len(), 1);
    let img = &all[0];
    assert_eq!(img.id, id);
    assert_eq!(img.repo_tags, vec![name.clone()]);
    assert_eq!(img.repo_digests.len(), 1);
    assert!(img.repo_digests[0].starts_with(&format!("{}/test/busybox@sha256:", reg.host())));
    assert!(img.size > 900_000 && img.size < 2_000_000, "size {}", img.size);
    assert_eq!(img.uid, None);
    assert_eq!(img.username, "");

    // Verbose status carries the image config.
    let st = images
        .image_status(api::ImageStatusRequest {
            image: spec(&name),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["Cmd"][0], "sh");
    assert_eq!(info["imageSpec"]["os"], "linux");

    // By ID, bare hex ID and repo digest too.
    assert_eq!(status(&mut images, &id).await.unwrap().id, id);
    assert_eq!(
        status(&mut images, id.trim_start_matches("sha256:")).await.unwrap().id,
        id
    );
    assert_eq!(status(&mut images, &img.repo_digests[0]).await.unwrap().id, id);
    // ListImages with a filter.
    let filtered = images
        .list_images(api::ListImagesRequest {
            filter: Some(api::ImageFilter { image: spec(&name) }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);

    let fs = images
        .image_fs_info(api::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let usage = &fs.image_filesystems[0];
    assert_eq!(
        usage.fs_id.as_ref().unwrap().mountpoint,
        d.images_dir().display().to_string()
    );
    assert!(usage.used_bytes.as_ref().unwrap().value > 1_900_000);
    // 16 directories, busybox (its 268 applets are hard links to it), passwd,
    // group, and the config and manifest blobs.
    assert_eq!(usage.inodes_used.as_ref().unwrap().value, 21, "{usage:?}");

    // Pulling again is cheap and changes nothing.
    assert_eq!(pull(&mut images, &name, None).await.unwrap(), id);
    assert_eq!(list(&mut images).await.len(), 1);

    remove(&mut images, &name).await;
    assert!(
        status(&mut images, &name).await.is_none(),
        "ImageStatus of a gone image is empty"
    );
    assert!(list(&mut images).await.is_empty());
    assert_store_clean(&d, 0);
    assert!(list_tree(&d.images_dir().join("blobs")).iter().all(|p| p == "sha256"));
    // Idempotent.
    remove(&mut images, &name).await;
}

#[tokio::test]
async fn docker_schema2_digest_references_and_short_names() {
    let reg = registry_with(&["test/busybox", "test/busybox-docker"]);
    let d = Daemon::start(&format!("[registries.\"{}\"]\nplain_http = true\n", reg.host())).await;
    let (_, mut images) = d.clients().await;

    let docker = reg.image("test/busybox-docker");
    let id = pull(&mut images, &docker, None).await.expect("Docker schema 2 pull");
    let img = status(&mut images, &docker).await.unwrap();
    let digest_ref = img.repo_digests[0].clone();
    let digest = digest_ref.split('@').nth(1).unwrap().to_string();
    // The registry kept the Docker media type.
    let manifest = std::fs::read(
        d.images_dir()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    assert!(String::from_utf8_lossy(&manifest).contains("application/vnd.docker.distribution.manifest.v2+json"));

    // By digest, and by tag+digest.
    remove(&mut images, &id).await;
    let by_digest = format!("{}/test/busybox-docker@{digest}", reg.host());
    assert_eq!(pull(&mut images, &by_digest, None).await.unwrap(), id);
    let img = status(&mut images, &by_digest).await.unwrap();
    assert!(
        img.repo_tags.is_empty(),
        "a digest pull adds no tag: {:?}",
        img.repo_tags
    );
    let tag_and_digest = format!("{}/test/busybox-docker:latest@{digest}", reg.host());
    assert_eq!(pull(&mut images, &tag_and_digest, None).await.unwrap(), id);
    assert_eq!(status(&mut images, &docker).await.unwrap().id, id);

    // A digest that is not the tag's content is refused.
    let wrong = format!("{}/test/busybox-docker@sha256:{}", reg.host(), "0".repeat(64));
    let err = pull(&mut images, &wrong, None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn multi_layer_image_becomes_working_lowerdirs() {
    let reg = registry_with(&["test/layers"]);
    let d = Daemon::start("").await;
    let (_, mut images) = d.clients().await;
    let id = pull(&mut images, &reg.image("test/layers"), None).await.unwrap();
    assert_store_clean(&d, 3);
    with_merged_rootfs(&d, &id, |root| {
        assert!(!root.join("etc/gone").exists(), "whiteout hides the lower file");
        let odir: HashSet<String> = std::fs::read_dir(root.join("etc/odir"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            odir,
            HashSet::from(["fresh".to_string()]),
            "opaque dir hides the lower content"
        );
        assert_eq!(std::fs::read_to_string(root.join("etc/motd")).unwrap(), "two\n");
        assert_eq!(
            std::fs::metadata(root.join("etc/motd.hard")).unwrap().ino(),
            std::fs::metadata(root.join("etc/motd")).unwrap().ino(),
            "hard link kept"
        );
        let data = std::fs::metadata(root.join("data/file")).unwrap();
        assert_eq!((data.uid(), data.mode() & 0o777), (1000, 0o640));
        assert_eq!(
            std::fs::metadata(root.join("bin/ls")).unwrap().ino(),
            std::fs::metadata(root.join("bin/busybox")).unwrap().ino()
        );
        let out = std::process::Command::new("chroot")
            .arg(root)
            .args(["/bin/sh", "-c", "cat /etc/motd; ls /etc/odir"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "two\nfresh\n",
            "the merged rootfs runs busybox"
        );
    });
}

#[tokio::test]
async fn multi_arch_index_resolves_to_the_host_platform() {
    let reg = registry_with(&["test/multiarch"]);
    let d = Daemon::start("").await;
    let (_, mut images) = d.clients().await;
    let id = pull(&mut images, &reg.image("test/multiarch"), None).await.unwrap();
    let img = status(&mut images, &id).await.unwrap();
    with_merged_rootfs(&d, &id, |root| {
        let arch = std::fs::read_to_string(root.join("etc/arch")).unwrap();
        assert_eq!(arch.trim(), nodelet_test_images::host_arch());
    });
    // The repo digest names the index, as containerd records it.
    let digest = img.repo_digests[0].split('@').nth(1).unwrap();
    let top = std::fs::read(
        d.images_dir()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    assert!(String::from_utf8_lossy(&top).contains("\"manifests\""));
}

#[tokio::test]
async fn image_users_are_reported() {
    let reg = registry_with(&["test/nonroot", "test/named-user"]);
    let d = Daemon::start("").await;
    let (_, mut images) = d.clients().await;
    pull(&mut images, &reg.image("test/nonroot"), None).await.unwrap();
    pull(&mut images, &reg.image("test/named-user"), None).await.unwrap();
    let nonroot = status(&mut images, &reg.image("test/nonroot")).await.unwrap();
    assert_eq!(nonroot.uid.map(|u| u.value), Some(1000));
    let named = status(&mut images, &reg.image("test/named-user")).await.unwrap();
    assert_eq!((named.uid, named.username.as_str()), (None, "app"));
}

#[tokio::test]
async fn tags_and_shared_layers_are_kept_while_used() {
    let reg = Registry::start();
    let busybox = test_image("test/busybox");
    reg.push_as(&busybox, "test/a");
    reg.push_as(&busybox, "test/b");
    reg.push(&test_image("test/nonroot"));
    let d = Daemon::start("").await;
    let (_, mut images) = d.clients().await;
    let a = pull(&mut images, &reg.image("test/a"), None).await.unwrap();
    let b = pull(&mut images, &reg.image("test/b"), None).await.unwrap();
    assert_eq!(a, b, "same content, one image");
    let img = status(&mut images, &a).await.unwrap();
    assert_eq!(img.repo_tags.len(), 2, "{:?}", img.repo_tags);
    let nonroot = pull(&mut images, &reg.image("test/nonroot"), None).await.unwrap();
    assert_ne!(nonroot, a);
    assert_store_clean(&d, 1);

    // Removing one tag keeps the image under the other.
    remove(&mut images, &reg.image("test/a")).await;
    let img = status(&mut images, &b).await.expect("still there");
    assert_eq!(img.repo_tags, vec![reg.image("test/b")]);
    // Removing the image keeps the layer nonroot shares.
    remove(&mut images, &reg.image("test/b")).await;
    assert!(status(&mut images, &a).await.is_none());
    assert_store_clean(&d, 1);
    remove(&mut images, &nonroot).await;
    assert_store_clean(&d, 0);
}

#[tokio::test]
async fn basic_auth_from_request_or_config() {
    let reg = Registry::start_with_auth("alice", "s3cret");
    reg.push(&test_image("test/busybox"));
    let name = reg.image("test/busybox");

    let d = Daemon::start("").await;
    let (_, mut images) = d.clients().await;
    let err = pull(&mut images, &name, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("401"), "{}", err.message());
    let bad = api::AuthConfig {
        username: "alice".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    assert_eq!(
        pull(&mut images, &name, Some(bad)).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let good = api::AuthConfig {
        username: "alice".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    let id = pull(&mut images, &name, Some(good))
        .await
        .expect("pull with credentials");
    remove(&mut images, &id).await;
    use base64::Engine;
    let encoded = api::AuthConfig {
        auth: base64::engine::general_purpose::STANDARD.encode("alice:s3cret"),
        ..Default::default()
    };
    pull(&mut images, &name, Some(encoded))
        .await
        .expect("pull with auth=base64(user:pass)");
    drop(images);
    drop(d);

    let d = Daemon::start(&format!(
        "[registries.\"{}\"]\nusername = \"alice\"\npassword = \"s3cret\"\n",
        reg.host()
    ))
    .await;
    let (_, mut images) = d.clients().await;
    pull(&mut images, &name, None)
        .await
        .expect("credentials from the config file");
}

#[tokio::test]
async fn bearer_token_flows() {
    let busybox = test_image("test/busybox");
    let fake = FakeRegistry::start();
    fake.serve_layout(&busybox.layout, &busybox.tag, "test/busybox");
    let name = format!("{}/test/busybox:latest", fake.host());
    let d = Daemon::start(&format!("[registries.\"{}\"]\nplain_http = true\n", fake.host())).await;
    let (_, mut images) = d.clients().await;

    // Anonymous token.
    fake.require_bearer("anon-token", None);
    let id = pull(&mut images, &name, None).await.expect("anonymous bearer token");
    assert!(fake.count("GET /token") >= 1);
    remove(&mut images, &id).await;

    // A token service that wants credentials.
    fake.require_bearer("user-token", Some(("bob", "pw")));
    let err = pull(&mut images, &name, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("token service"), "{}", err.message());
    let creds = api::AuthConfig {
        username: "bob".into(),
        password: "pw".into(),
        ..Default::default()
    };
    pull(&mut images, &name, Some(creds))
        .await
        .expect("token with credentials");
    remove(&mut images, &id).await;

    // A registry token from the request is used as is.
    fake.require_bearer("given-token", Some(("nobody", "never")));
    let before = fake.count("GET /token");
    let token = api::AuthConfig {
        registry_token: "given-token".into(),
        ..Default::default()
    };
    pull(&mut images, &name, Some(token)).await.expect("registry_token");
    assert_eq!(fake.count("GET /token"), before, "no token exchange");
}

#[tokio::test]
async fn mirrors_serve_docker_hub_names() {
    let reg = registry_with(&["library/busybox"]);
    let dead = nodelet_integration::free_port();
    let d = Daemon::start(&format!(
        "[registries.\"docker.io\"]\nmirrors = [\"http://127.0.0.1:{dead}\", \"http://{}\"]\n",
        reg.host()
    ))
    .await;
    let (_, mut images) = d.clients().await;
    let id = pull(&mut images, "busybox", None)
        .await
        .expect("busybox through the mirror");
    let img = status(&mut images, "busybox").await.unwrap();
    assert_eq!(img.id, id);
    assert_eq!(img.repo_tags, vec!["docker.io/library/busybox:latest"]);
    assert!(img.repo_digests[0].starts_with("docker.io/library/busybox@sha256:"));
    assert_eq!(
        status(&mut images, "docker.io/library/busybox:latest")
            .await
            .unwrap()
            .id,
        id
    );
    assert_eq!(status(&mut images, "library/busybox").await.unwrap().id, id);
}

#[tokio::test]
async fn concurrent_pulls_share_one_download() {
    let busybox = test_image("test/busybox");
    let fake = FakeRegistry::start();
    fake.serve_layout(&busybox.layout, &busybox.tag, "test/one");
    fake.serve_layout(&busybox.layout, &busybox.tag, "test/two");
    fake.throttle(64 * 1024);
    let d = Daemon::start(&format!("[registries.\"{}\"]\nplain_http = true\n", fake.host())).await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (_, mut images) = d.clients().await;
        let name = format!("{}/test/{}:latest", fake.host(), if i % 2 == 0 { "one" } else { "two" });
        tasks.push(tokio::spawn(async move { pull(&mut images, &name, None).await }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().expect("concurrent pull"));
    }
    assert_eq!(ids.len(), 1);
    let layer_gets: Vec<String> = fake.requests().into_iter().filter(|r| r.contains("/blobs/")).collect();
    // One config blob fetch per distinct config read is fine; the layer
    // (the only large blob) must be fetched exactly once.
    let records: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.images_dir().join("images.json")).unwrap()).unwrap();
    let layer = records["images"][0]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let n = layer_gets.iter().filter(|r| r.contains(&layer)).count();
    assert_eq!(n, 1, "layer downloaded {n} times: {layer_gets:?}");
    let (_, mut images) = d.clients().await;
    assert_eq!(
        status(&mut images, &format!("{}/test/two:latest", fake.host()))
            .await
            .unwrap()
            .repo_tags
            .len(),
        2
    );
}

/// The busybox layout's only layer digest.
fn busybox_layer_digest(image: &TestImage) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == image.tag.as_str())
        .unwrap();
    let hex = m["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.layout.join("blobs/sha256").join(hex)).unwrap()).unwrap();
    manifest["layers"][0]["digest"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn corrupt_short_missing_and_stalled_blobs_leave_nothing() {
    let busybox = test_image("test/busybox");
    let layer = busybox_layer_digest(&busybox);
    let cases = [
        (Fault::Corrupt, Code::FailedPrecondition, "expected"),
        (Fault::Short, Code::FailedPrecondition, "bytes"),
        (Fault::Missing, Code::NotFound, "BLOB_UNKNOWN"),
        (Fault::Stall, Code::DeadlineExceeded, "sent nothing"),
    ];
    for (fault, code, words) in cases {
        let fake = FakeRegistry::start();
        fake.serve_layout(&busybox.layout, &busybox.tag, "test/busybox");
        fake.fault(&layer, fault.clone());
        let d = Daemon::start(&format!(
            "[images]\nread_timeout_secs = 2\n[registries.\"{}\"]\nplain_http = true\n",
            fake.host()
        ))
        .await;
        let (_, mut images) = d.clients().await;
        let err = pull(&mut images, &format!("{}/test/busybox:latest", fake.host()), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{fault:?}: {err:?}");
        assert!(err.message().contains(words), "{fault:?}: {}", err.message());
        assert!(
            err.message().contains(&layer) || fault == Fault::Stall,
            "{}",
            err.message()
        );
        assert!(list(&mut images).await.is_empty());
        assert_store_clean(&d, 0);
    }
}

#[tokio::test]
async fn oversized_manifests_and_configs_are_refused() {
    let busybox = test_image("test/busybox");
    let fake = FakeRegistry::start();
    fake.serve_layout(&busybox.layout, &busybox.tag, "test/busybox");
    let name = format!("{}/test/busybox:latest", fake.host());
    let d = Daemon::start(&format!(
        "[images]\nmax_config_bytes = 100\n[registries.\"{}\"]\nplain_http = true\n",
        fake.host()
    ))
    .await;
    let (_, mut images) = d.clients().await;
    let err = pull(&mut images, &name, None).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("image config is larger than the limit of 100 bytes"),
        "{}",
        err.message()
    );

    fake.endless_manifests();
    let err = pull(&mut images, &name, None).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("manifest is larger than the limit"),
        "{}",
        err.message()
    );
    assert_store_clean(&d, 0);
    // The daemon is fine afterwards.
    let (mut rt, _) = d.clients().await;
    rt.version(api::VersionRequest::default()).await.unwrap();
}

#[tokio::test]
async fn hostile_layers_are_refused_and_write_nothing_outside() {
    let target = tempfile::tempdir().unwrap();
    let out = nodelet_integration::target_dir().join(format!("test-images/evil-{}", std::process::id()));
    let evil = nodelet_test_images::build_hostile(&out, target.path()).unwrap();
    let reg = Registry::start();
    for i in &evil {
        reg.push(i);
    }
    let d = Daemon::start("[images]\nmax_layer_bytes = 67108864\n").await;
    let (_, mut images) = d.clients().await;
    let expect = [
        ("evil/dotdot", "'..'"),
        ("evil/absolute", "absolute path"),
        ("evil/symlink", "symlink"),
        ("evil/hardlink", "'..'"),
        ("evil/bomb", "decompression bomb"),
    ];
    for (repo, words) in expect {
        let err = pull(&mut images, &reg.image(repo), None).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{repo}: {err:?}");
        assert!(err.message().contains(words), "{repo}: {}", err.message());
        assert!(list(&mut images).await.is_empty(), "{repo}");
        assert_store_clean(&d, 0);
    }
    assert!(
        list_tree(target.path()).is_empty(),
        "escaped: {:?}",
        list_tree(target.path())
    );
    for p in ["escape-dotdot", "../escape-dotdot"] {
        assert!(!d.images_dir().join("tmp").join(p).exists());
    }
    let _ = std::fs::remove_dir_all(out);
}

#[tokio::test]
async fn bad_references_and_unreachable_registries() {
    let reg = registry_with(&["test/busybox"]);
    let d = Daemon::start("[images]\nconnect_timeout_secs = 2\n").await;
    let (_, mut images) = d.clients().await;

    let err = pull(&mut images, &format!("{}/test/nope:latest", reg.host()), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("MANIFEST_UNKNOWN"), "{}", err.message());

    for bad in ["UPPER/Case", "busybox@sha256:123", "a b c", ""] {
        let err = pull(&mut images, bad, None).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
    }

    let dead = nodelet_integration::free_port();
    let err = pull(&mut images, &format!("127.0.0.1:{dead}/x:1"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("cannot reach"), "{}", err.message());

    assert!(status(&mut images, "never/pulled:1").await.is_none());
    remove(&mut images, "never/pulled:1").await;
    assert_store_clean(&d, 0);
}

#[tokio::test]
async fn images_survive_restart_and_kill9_mid_pull_leaves_nothing() {
    let reg = registry_with(&["test/busybox"]);
    let layers = test_image("test/layers");
    let fake = FakeRegistry::start();
    fake.serve_layout(&layers.layout, &layers.tag, "test/layers");
    fake.throttle(16 * 1024);
    let mut d = Daemon::start(&format!("[registries.\"{}\"]\nplain_http = true\n", fake.host())).await;
    let (_, mut images) = d.clients().await;
    let id = pull(&mut images, &reg.image("test/busybox"), None).await.unwrap();

    // Start a slow pull and kill the daemon in the middle of it.
    let slow = format!("{}/test/layers:latest", fake.host());
    let (_, mut images2) = d.clients().await;
    let pulling = tokio::spawn(async move { pull(&mut images2, &slow, None).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while fake.count("/blobs/") < 2 {
        assert!(std::time::Instant::now() < deadline, "pull never reached the blobs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.kill9();
    assert!(pulling.await.unwrap().is_err());
    assert!(d.socket.exists(), "kill -9 leaves the socket file");

    d.spawn().await;
    let (_, mut images) = d.clients().await;
    let all = list(&mut images).await;
    assert_eq!(all.len(), 1, "only the finished image: {all:?}");
    assert_eq!(all[0].id, id);
    assert_store_clean(&d, 1);

    // The interrupted pull works now.
    fake.throttle(1 << 30);
    pull(&mut images, &format!("{}/test/layers:latest", fake.host()), None)
        .await
        .expect("pull after the crash");
    assert_store_clean(&d, 4);
}
