//! ImageService RPCs: translate CRI messages to `ImageService` calls.

use std::collections::HashMap;

use base64::Engine;
use k8s_cri::v1 as cri;
use tonic::Status;

use crate::image::{Credentials, ImageDetails, ImageService};

pub async fn pull_image(
    images: &std::sync::Arc<ImageService>,
    req: cri::PullImageRequest,
) -> Result<cri::PullImageResponse, Status> {
    let image = req.image.map(|s| s.image).unwrap_or_default();
    if image.is_empty() {
        return Err(Status::invalid_argument("PullImage: image.image is empty"));
    }
    let creds = credentials(req.auth)?;
    let record = images.pull(&image, &creds).await?;
    Ok(cri::PullImageResponse { image_ref: record.id })
}

/// CRI `AuthConfig` → credentials. `auth` is base64 `user:password`, as in
/// a docker config.json.
fn credentials(auth: Option<cri::AuthConfig>) -> Result<Credentials, Status> {
    let Some(a) = auth else {
        return Ok(Credentials::default());
    };
    let non_empty = |s: String| if s.is_empty() { None } else { Some(s) };
    let mut creds = Credentials {
        username: non_empty(a.username),
        password: non_empty(a.password),
        registry_token: non_empty(a.registry_token),
        identity_token: non_empty(a.identity_token),
    };
    if !a.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|e| Status::invalid_argument(format!("auth.auth is not base64: {e}")))?;
        let text = String::from_utf8(decoded).map_err(|_| Status::invalid_argument("auth.auth is not UTF-8"))?;
        let (user, pass) = text
            .split_once(':')
            .ok_or_else(|| Status::invalid_argument("auth.auth must encode user:password"))?;
        creds.username = Some(user.to_string());
        creds.password = Some(pass.to_string());
    }
    Ok(creds)
}

pub fn list_images(images: &ImageService, req: cri::ListImagesRequest) -> Result<cri::ListImagesResponse, Status> {
    let wanted = req.filter.and_then(|f| f.image).map(|s| s.image).unwrap_or_default();
    let records = if wanted.is_empty() {
        images.list()
    } else {
        images.resolve(&wanted)?.into_iter().collect()
    };
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        out.push(to_cri_image(&images.details(r)?));
    }
    Ok(cri::ListImagesResponse { images: out })
}

pub fn image_status(images: &ImageService, req: cri::ImageStatusRequest) -> Result<cri::ImageStatusResponse, Status> {
    let wanted = req.image.map(|s| s.image).unwrap_or_default();
    if wanted.is_empty() {
        return Err(Status::invalid_argument("ImageStatus: image.image is empty"));
    }
    // An unknown image is not an error: the CRI wants an empty response.
    let Some(record) = images.resolve(&wanted)? else {
        return Ok(cri::ImageStatusResponse::default());
    };
    let details = images.details(record)?;
    let mut info = HashMap::new();
    if req.verbose {
        let verbose = serde_json::json!({
            "imageSpec": images.config_json(&details.record)?,
            "manifestDigest": details.record.manifest_digest,
            "indexDigest": details.record.index_digest,
            "layers": details.record.layers,
            "pulledAt": details.record.pulled_at,
        });
        info.insert("info".to_string(), verbose.to_string());
    }
    Ok(cri::ImageStatusResponse {
        image: Some(to_cri_image(&details)),
        info,
    })
}

pub fn remove_image(images: &ImageService, req: cri::RemoveImageRequest) -> Result<cri::RemoveImageResponse, Status> {
    let wanted = req.image.map(|s| s.image).unwrap_or_default();
    if wanted.is_empty() {
        return Err(Status::invalid_argument("RemoveImage: image.image is empty"));
    }
    images.remove(&wanted)?;
    Ok(cri::RemoveImageResponse {})
}

pub fn image_fs_info(images: &ImageService) -> Result<cri::ImageFsInfoResponse, Status> {
    let (bytes, inodes, mountpoint) = images.fs_usage();
    let usage = cri::FilesystemUsage {
        timestamp: crate::unix_nanos(),
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: mountpoint.display().to_string(),
        }),
        used_bytes: Some(cri::UInt64Value { value: bytes }),
        inodes_used: Some(cri::UInt64Value { value: inodes }),
    };
    Ok(cri::ImageFsInfoResponse {
        image_filesystems: vec![usage],
        container_filesystems: Vec::new(),
    })
}

fn to_cri_image(d: &ImageDetails) -> cri::Image {
    let user = d
        .config
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .unwrap_or_default();
    let (uid, username) = user_from_image(&user);
    cri::Image {
        id: d.record.id.clone(),
        repo_tags: d.record.repo_tags.clone(),
        repo_digests: d.record.repo_digests.clone(),
        size: d.record.size,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec {
            image: d.record.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

/// The image's `User` as the CRI reports it: a numeric user is a uid, any
/// other a user name; a group part is dropped (containerd does the same).
fn user_from_image(user: &str) -> (Option<i64>, String) {
    if user.is_empty() {
        return (None, String::new());
    }
    let user = user.split(':').next().unwrap_or(user);
    match user.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, user.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_user() {
        assert_eq!(user_from_image(""), (None, String::new()));
        assert_eq!(user_from_image("1000"), (Some(1000), String::new()));
        assert_eq!(user_from_image("1000:1000"), (Some(1000), String::new()));
        assert_eq!(user_from_image("nobody:nogroup"), (None, "nobody".into()));
    }

    #[test]
    fn auth_config_forms() {
        let c = credentials(Some(cri::AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("alice:s3cret"),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(c.username.as_deref(), Some("alice"));
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        let c = credentials(Some(cri::AuthConfig {
            registry_token: "tok".into(),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(c.registry_token.as_deref(), Some("tok"));
        let e = credentials(Some(cri::AuthConfig {
            auth: "%%%".into(),
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}
