//! The one place module errors become gRPC statuses. Each module keeps its
//! own error enum; the codes follow what the CRI expects (NotFound for
//! unknown things, InvalidArgument for bad requests, Unavailable when a
//! dependency cannot be reached).

use tonic::{Code, Status};

use crate::image::registry::RegistryError;
use crate::image::ImageError;
use crate::runtime::spec::SpecError;
use crate::runtime::RuntimeError;
use crate::stats::StatsError;
use crate::streaming::StreamingError;

impl From<ImageError> for Status {
    fn from(e: ImageError) -> Status {
        let code = if exhausted(&e) {
            Code::ResourceExhausted
        } else {
            image_code(&e)
        };
        Status::new(code, e.to_string())
    }
}

/// The node ran out of something (disk space, file descriptors, memory):
/// `RESOURCE_EXHAUSTED`, whatever module reported it, so a client can tell
/// "retry when there is room" from a bug. Found through the error's
/// sources (an `io::Error`'s OS code), or in its text where a layer below
/// kept only the message.
fn exhausted(e: &(dyn std::error::Error + 'static)) -> bool {
    const CODES: [i32; 5] = [libc::ENOSPC, libc::EDQUOT, libc::EMFILE, libc::ENFILE, libc::ENOMEM];
    const TEXTS: [&str; 5] = [
        "No space left on device",
        "Disk quota exceeded",
        "Too many open files",
        "Too many open files in system",
        "Cannot allocate memory",
    ];
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.raw_os_error().is_some_and(|c| CODES.contains(&c)) {
                return true;
            }
        }
        let text = err.to_string();
        if TEXTS.iter().any(|t| text.contains(t)) {
            return true;
        }
        cur = err.source();
    }
    false
}

fn image_code(e: &ImageError) -> Code {
    match e {
        ImageError::InvalidReference { .. } => Code::InvalidArgument,
        ImageError::Registry { last, .. } => registry_code(last),
        ImageError::BadContent { .. } | ImageError::Unpack { .. } => Code::FailedPrecondition,
        ImageError::NoPlatform { .. } | ImageError::NotFound(_) => Code::NotFound,
        ImageError::Store(_) | ImageError::Internal(_) => Code::Internal,
        ImageError::Shared(inner) => image_code(inner),
    }
}

fn registry_code(e: &RegistryError) -> Code {
    match e {
        RegistryError::NotFound { .. } => Code::NotFound,
        RegistryError::Unauthorized { status: 403, .. } => Code::PermissionDenied,
        RegistryError::Unauthorized { .. } => Code::Unauthenticated,
        RegistryError::Unreachable { .. } => Code::Unavailable,
        RegistryError::Timeout { .. } => Code::DeadlineExceeded,
        RegistryError::Status { status, .. } if *status >= 500 => Code::Unavailable,
        RegistryError::Status { .. } => Code::FailedPrecondition,
        RegistryError::TooLarge { .. }
        | RegistryError::DigestMismatch { .. }
        | RegistryError::SizeMismatch { .. }
        | RegistryError::Protocol { .. } => Code::FailedPrecondition,
    }
}

impl From<RuntimeError> for Status {
    fn from(e: RuntimeError) -> Status {
        if exhausted(&e) {
            return Status::new(Code::ResourceExhausted, e.to_string());
        }
        let code = match &e {
            RuntimeError::NotFound { .. } => Code::NotFound,
            RuntimeError::AlreadyExists(_) => Code::AlreadyExists,
            RuntimeError::InvalidArgument(_) | RuntimeError::Spec(SpecError::Invalid { .. }) => Code::InvalidArgument,
            RuntimeError::FailedPrecondition(_) | RuntimeError::Spec(SpecError::Unsupported { .. }) => {
                Code::FailedPrecondition
            }
            RuntimeError::Image(i) => image_code(i),
            RuntimeError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            RuntimeError::Infra(_) => Code::Unavailable,
            RuntimeError::Network(crate::network::NetworkError::BadCidr(_)) => Code::InvalidArgument,
            RuntimeError::Network(_) => Code::Unknown,
            RuntimeError::Userns(crate::runtime::userns::UsernsError::Invalid(_)) => Code::InvalidArgument,
            RuntimeError::Userns(crate::runtime::userns::UsernsError::Exhausted { .. }) => Code::ResourceExhausted,
            RuntimeError::Userns(crate::runtime::userns::UsernsError::Unsupported(_)) => Code::FailedPrecondition,
            RuntimeError::Cgroup(_) | RuntimeError::Io { .. } | RuntimeError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl From<crate::network::NetworkError> for Status {
    fn from(e: crate::network::NetworkError) -> Status {
        Status::from(RuntimeError::Network(e))
    }
}

impl From<StatsError> for Status {
    fn from(e: StatsError) -> Status {
        match e {
            StatsError::Runtime(r) => r.into(),
            // As containerd answers for a sandbox that is not running.
            StatsError::NotReady(_) => Status::unavailable(e.to_string()),
        }
    }
}

impl From<StreamingError> for Status {
    fn from(e: StreamingError) -> Status {
        match e {
            StreamingError::Runtime(r) => Status::from(r),
            StreamingError::InvalidArgument(m) => Status::invalid_argument(m),
            e @ StreamingError::TooManyRequests(_) => Status::resource_exhausted(e.to_string()),
            e @ StreamingError::Setup(_) => Status::internal(e.to_string()),
        }
    }
}

/// An RPC that a later part of nodelet will provide. Never a fake success.
pub fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!("nodelet does not implement {rpc} yet"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn codes() {
        let nf = ImageError::Registry {
            image: "x".into(),
            attempts: "a".into(),
            last: Box::new(RegistryError::NotFound {
                url: "u".into(),
                answer: String::new(),
            }),
        };
        assert_eq!(Status::from(nf).code(), Code::NotFound);
        let shared = ImageError::Shared(Arc::new(ImageError::Registry {
            image: "x".into(),
            attempts: "a".into(),
            last: Box::new(RegistryError::Unauthorized {
                url: "u".into(),
                status: 401,
                answer: String::new(),
            }),
        }));
        let s = Status::from(shared);
        assert_eq!(s.code(), Code::Unauthenticated);
        assert_eq!(not_yet("Exec").code(), Code::Unimplemented);
        let full = RuntimeError::Io {
            what: "write pod record".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        let s = Status::from(full);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("No space left on device"), "{}", s.message());
        let emfile = ImageError::Internal(format!("open: {}", std::io::Error::from_raw_os_error(libc::EMFILE)));
        assert_eq!(Status::from(emfile).code(), Code::ResourceExhausted);
        assert!(not_yet("Exec").message().contains("Exec"));
    }
}
