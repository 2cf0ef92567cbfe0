//! Image references: `busybox` → `docker.io/library/busybox:latest`, as the
//! Docker CLI, containerd and the kubelet normalise them. Parsing is
//! oci-spec's; this adds the names nodelet stores and matches on.

use oci_spec::distribution::Reference;

use super::ImageError;

/// A normalised reference. At least one of `tag` and `digest` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, if there is a tag.
    pub fn tag_ref(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `registry/repository@digest`.
    pub fn digest_ref(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }

    /// What to ask the registry for: the digest when given (a tag next to a
    /// digest is informational, as in containerd), else the tag.
    pub fn fetch_key(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

pub fn parse(image: &str) -> Result<ImageRef, ImageError> {
    let invalid = |reason: String| ImageError::InvalidReference {
        image: image.to_string(),
        reason,
    };
    if image.is_empty() {
        return Err(invalid("empty image reference".into()));
    }
    let r: Reference = image.parse().map_err(|e| invalid(format!("{e}")))?;
    if r.repository().bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(invalid("repository name must be lowercase".into()));
    }
    if let Some(d) = r.digest() {
        if !d.starts_with("sha256:") {
            return Err(invalid(format!("digest {d}: only sha256 is supported")));
        }
    }
    Ok(ImageRef {
        registry: r.registry().to_string(),
        repository: r.repository().to_string(),
        tag: r.tag().map(str::to_string),
        digest: r.digest().map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:9ae97d36d26566ff84e8893c64a6dc4fe8ca6d1144bf5b87b2b85a32def253c7";

    #[test]
    fn docker_hub_normalisation() {
        let r = parse("busybox").unwrap();
        assert_eq!(r.tag_ref().unwrap(), "docker.io/library/busybox:latest");
        let r = parse("docker.io/busybox:1.36").unwrap();
        assert_eq!(r.tag_ref().unwrap(), "docker.io/library/busybox:1.36");
        let r = parse("index.docker.io/user/app").unwrap();
        assert_eq!(r.tag_ref().unwrap(), "docker.io/user/app:latest");
        let r = parse("127.0.0.1:5000/test/busybox:v1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "test/busybox");
        assert_eq!(r.fetch_key(), "v1");
        let r = parse("localhost/x").unwrap();
        assert_eq!(r.registry, "localhost");
    }

    #[test]
    fn digests_and_tag_plus_digest() {
        let r = parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.fetch_key(), D);
        assert_eq!(r.digest_ref(D), format!("docker.io/library/busybox@{D}"));
        let r = parse(&format!("busybox:1.36@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("1.36"));
        assert_eq!(r.fetch_key(), D);
    }

    #[test]
    fn malformed_references_say_why() {
        for bad in ["", "UPPER/case", "busybox@sha256:abc", "a b", "busybox:"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("invalid image reference"), "{bad}: {err}");
        }
    }
}
