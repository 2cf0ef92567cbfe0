//! Image pull benchmark: nodelet against containerd (Debian's package), same
//! registry, same images, one run. Each sample pulls into a freshly started
//! daemon with an empty store, so every pull is cold for both.
//!
//! Usage: bench-images [SMALL_RUNS] [BIG_RUNS]   (defaults 10 and 5)

use std::time::{Duration, Instant};

use nodelet_integration::bench::{median, ms, Runtime, Server};
use nodelet_integration::cri::{self, api};
use nodelet_integration::registry::Registry;

async fn pull_once(runtime: Runtime, image: &str, registry: &str, dir: &std::path::Path) -> anyhow::Result<Duration> {
    let server = Server::start(runtime, dir, registry).await?;
    let (_, mut images) = cri::clients(&server.socket).await?;
    let start = Instant::now();
    images
        .pull_image(api::PullImageRequest {
            image: cri::spec(image),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("{} pull {image}: {e}", runtime.name()))?;
    let took = start.elapsed();
    drop(server);
    Ok(took)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let small_runs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let big_runs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    nodelet_integration::require_root();

    let out = nodelet_integration::target_dir().join("test-images/bench");
    let (small, big) = nodelet_integration::with_build_lock(&out, |d| {
        let small = nodelet_test_images::build_standard(d)?
            .into_iter()
            .find(|i| i.repo == "test/busybox")
            .expect("busybox");
        let big = nodelet_test_images::build_big(d, 5, 40)?;
        Ok((small, big))
    })?;
    let reg = Registry::start();
    reg.push(&small);
    reg.push(&big);
    let size = |repo: &str| -> u64 {
        let dir = reg.data_dir().join("docker/registry/v2/blobs");
        let _ = repo;
        nodelet_integration::daemon::list_tree(&dir)
            .iter()
            .filter(|p| p.ends_with("/data"))
            .map(|p| std::fs::metadata(dir.join(p)).map(|m| m.len()).unwrap_or(0))
            .sum()
    };
    println!(
        "registry 127.0.0.1:{} holds {:.1} MiB of blobs (busybox ~1 MiB; big: busybox + 5 layers of 40 MiB uncompressed)",
        reg.port,
        size("") as f64 / (1 << 20) as f64
    );
    let work = tempfile::Builder::new().prefix("nodelet-bench-").tempdir()?;
    println!(
        "{:<34} {:>14} {:>14} {:>8}",
        "pull (median, cold store)", "nodelet ms", "containerd ms", "ratio"
    );
    for (label, image, runs) in [
        ("busybox (~1 MB, 1 layer)", reg.image("test/busybox"), small_runs),
        ("big (~200 MB, 6 layers)", reg.image("test/big"), big_runs),
    ] {
        let mut results = Vec::new();
        for runtime in [Runtime::Nodelet, Runtime::Containerd] {
            // One warm-up pull per runtime (page cache of binaries, registry).
            pull_once(runtime, &image, &reg.host(), &work.path().join("warm")).await?;
            let mut samples = Vec::new();
            for i in 0..runs {
                samples.push(
                    pull_once(
                        runtime,
                        &image,
                        &reg.host(),
                        &work.path().join(format!("{}-{i}", runtime.name())),
                    )
                    .await?,
                );
            }
            results.push(median(&mut samples));
        }
        println!(
            "{:<34} {:>14.1} {:>14.1} {:>7.2}x",
            label,
            ms(results[0]),
            ms(results[1]),
            ms(results[1]) / ms(results[0])
        );
    }
    println!("ratio = containerd time / nodelet time (higher is better for nodelet)");
    Ok(())
}
