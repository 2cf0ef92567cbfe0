//! `build-test-images OUT [--big LAYERS MIB]`: write the test images' OCI
//! layouts under OUT and print what to push where.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "images/out".into()));
    let mut images = nodelet_test_images::build_standard(&out)?;
    if args.next().as_deref() == Some("--big") {
        let layers = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
        let mib = args.next().map(|s| s.parse()).transpose()?.unwrap_or(40);
        images.push(nodelet_test_images::build_big(&out, layers, mib)?);
    }
    for i in images {
        println!(
            "{}oci:{}:{} -> {}:latest",
            if i.all { "--all " } else { "" },
            i.layout.display(),
            i.tag,
            i.repo,
        );
    }
    Ok(())
}
