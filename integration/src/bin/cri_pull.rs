//! `cri-pull SOCKET IMAGE`: one PullImage through a CRI socket, timed (a
//! debugging aid for the benchmarks).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let socket = args.next().expect("socket");
    let image = args.next().expect("image");
    let (_, mut images) = nodelet_integration::cri::clients(std::path::Path::new(&socket)).await?;
    let start = std::time::Instant::now();
    let r = images
        .pull_image(nodelet_integration::cri::api::PullImageRequest {
            image: nodelet_integration::cri::spec(&image),
            ..Default::default()
        })
        .await?;
    println!("{} in {:?}", r.into_inner().image_ref, start.elapsed());
    Ok(())
}
