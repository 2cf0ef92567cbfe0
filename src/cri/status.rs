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
        Status::new(image_code(&e), e.to_string())
    }
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
        assert!(not_yet("Exec").message().contains("Exec"));
    }
}
