//! A CRI client over nodelet's unix socket, as crictl or a kubelet connects.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1 as api;

pub type Runtime = RuntimeServiceClient<Channel>;
pub type Images = ImageServiceClient<Channel>;

/// Connect to a CRI socket. The URI is ignored; the connector dials the
/// socket.
pub async fn channel(socket: &Path) -> anyhow::Result<Channel> {
    let socket: PathBuf = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::1]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        }))
        .await?;
    Ok(channel)
}

pub async fn clients(socket: &Path) -> anyhow::Result<(Runtime, Images)> {
    let ch = channel(socket).await?;
    Ok((
        RuntimeServiceClient::new(ch.clone()).max_decoding_message_size(64 << 20),
        ImageServiceClient::new(ch).max_decoding_message_size(64 << 20),
    ))
}

/// `ImageSpec` for a reference.
pub fn spec(image: &str) -> Option<api::ImageSpec> {
    Some(api::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}
