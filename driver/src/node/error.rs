//! The node's error — what the catalog, the CSI services and the remote
//! client return — and the one place it becomes a `tonic::Status`.
//!
//! The plane's own error ([`super::plane::error::PlaneError`]) is wrapped
//! one way only ([`Error::DataPlane`]), keeping its message and its code.
//!
//! Every variant names what went wrong in words a cluster operator can act
//! on; the gRPC code is the one the CSI spec gives for that situation.
//! Handlers return `Result<_, Error>` and convert with `?`; none of them
//! builds a `Status` by hand.

use std::path::PathBuf;

use tonic::Code;

use crate::dataplane::mount::MountError;

/// Why a node or CSI call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A required field is empty.
    #[error("{rpc}: {field} is required: {hint}")]
    Missing {
        /// The RPC.
        rpc: &'static str,
        /// The field, as the spec names it.
        field: &'static str,
        /// What to put there.
        hint: &'static str,
    },
    /// A field holds a value this driver cannot take.
    #[error("{field} {value:?} is not valid: {expected}")]
    Invalid {
        /// The field or parameter.
        field: &'static str,
        /// The value found.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// A parameter this driver does not know (refused, not ignored, so a
    /// misspelt key is noticed).
    #[error("unknown parameter {key:?}: {accepted}")]
    UnknownParameter {
        /// The key.
        key: String,
        /// What is accepted.
        accepted: &'static str,
    },
    /// The request contradicts itself or the object it names.
    #[error("{0}")]
    Contradiction(String),
    /// The capacity range cannot be met.
    #[error("{0}")]
    OutOfRange(String),
    /// No such volume.
    #[error("volume {0:?} does not exist")]
    VolumeNotFound(String),
    /// No such snapshot.
    #[error("snapshot {0:?} does not exist")]
    SnapshotNotFound(String),
    /// No such group snapshot.
    #[error("group snapshot {0:?} does not exist")]
    GroupNotFound(String),
    /// Nothing of this volume at the path.
    #[error("volume {volume:?} is not at {path}: {why}")]
    NotAtPath {
        /// The volume.
        volume: String,
        /// The path asked about.
        path: PathBuf,
        /// What is there instead.
        why: String,
    },
    /// The object exists with other properties.
    #[error("{kind} {name:?} exists already with {existing}, which is not compatible with this request ({requested})")]
    AlreadyExists {
        /// volume, snapshot, group snapshot, mount.
        kind: &'static str,
        /// Its name or path.
        name: String,
        /// What it has.
        existing: String,
        /// What was asked.
        requested: String,
    },
    /// The object is in a state that does not allow the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The node cannot hold more.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Another operation on the same object is in progress.
    #[error("an operation on {0} is in progress: retry when it has finished")]
    Busy(String),
    /// A paging token this driver did not hand out.
    #[error("starting_token {0:?} was not returned by this driver: start again without one")]
    BadToken(String),
    /// Something this build does not do.
    #[error("{0}")]
    Unimplemented(&'static str),
    /// A catalog, file or directory operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done, as a verb phrase.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A file system operation failed.
    #[error("{op}")]
    Mount {
        /// What was being done.
        op: &'static str,
        /// The failure.
        #[source]
        source: MountError,
    },
    /// The plane refused or failed (its message is the error's own).
    #[error(transparent)]
    DataPlane(#[from] crate::node::plane::error::PlaneError),
    /// A mutual-TLS peer whose certificate the CA signed, but for another
    /// name than the one this side serves or trusts.
    #[error("{0}")]
    PermissionDenied(String),
    /// A blocking task died.
    #[error("{0}")]
    Internal(String),
    /// A node plugin refused or could not be reached (split mode): its code
    /// and message, passed on as they are.
    #[error("{message}")]
    Remote {
        /// The code the node answered with (`Unavailable` when unreachable).
        code: Code,
        /// The node's message, or why it could not be reached.
        message: String,
    },
}

/// Shorthand for results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error with context.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    /// The gRPC code the CSI spec gives for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::Missing { .. }
            | Error::Invalid { .. }
            | Error::UnknownParameter { .. }
            | Error::Contradiction(_) => Code::InvalidArgument,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::VolumeNotFound(_)
            | Error::SnapshotNotFound(_)
            | Error::GroupNotFound(_)
            | Error::NotAtPath { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Busy(_) | Error::BadToken(_) => Code::Aborted,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Io { source, .. } if is_no_space(source) => Code::ResourceExhausted,
            Error::DataPlane(e) => e.code(),
            Error::Io { .. } | Error::Mount { .. } | Error::Internal(_) => Code::Internal,
            Error::Remote { code, .. } => *code,
        }
    }
}

fn is_no_space(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
}

pub use crate::model::error_chain as chain;

impl From<crate::model::Invalid> for Error {
    fn from(e: crate::model::Invalid) -> Self {
        Error::Invalid {
            field: e.field,
            value: e.value,
            expected: e.expected,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let code = e.code();
        let message = chain(&e);
        if matches!(code, Code::Internal) {
            tracing::error!(error = %message, "CSI call failed");
        } else {
            tracing::debug!(code = ?code, error = %message, "CSI call refused");
        }
        tonic::Status::new(code, message)
    }
}

/// Implements the tonic service trait `$service` (a name in scope) for `$ty`
/// as a table of its rpcs: each one unwraps its request, calls the method
/// of `$ty` named after `=>` (which takes the message and returns
/// `Result<response>`), and maps a refusal to a `Status` through the one
/// `From<Error>` above.
macro_rules! grpc_service {
    ($service:ident for $ty:ty { $($rpc:ident($request:ty) -> $response:ty => $method:ident;)* }) => {
        #[tonic::async_trait]
        impl $service for $ty {
            $(
                async fn $rpc(
                    &self,
                    request: tonic::Request<$request>,
                ) -> std::result::Result<tonic::Response<$response>, tonic::Status> {
                    Ok(tonic::Response::new(self.$method(request.into_inner()).await?))
                }
            )*
        }
    };
}
pub(crate) use grpc_service;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_maps_to_the_code_the_spec_names() {
        let cases = [
            (
                Error::Missing {
                    rpc: "CreateVolume",
                    field: "name",
                    hint: "x",
                },
                Code::InvalidArgument,
            ),
            (Error::OutOfRange("x".into()), Code::OutOfRange),
            (Error::VolumeNotFound("v".into()), Code::NotFound),
            (Error::Busy("v".into()), Code::Aborted),
            (Error::BadToken("t".into()), Code::Aborted),
            (Error::ResourceExhausted("full".into()), Code::ResourceExhausted),
            (Error::FailedPrecondition("staged".into()), Code::FailedPrecondition),
        ];
        for (e, code) in cases {
            assert_eq!(tonic::Status::from(e).code(), code);
        }
    }

    #[test]
    fn the_message_carries_the_causes() {
        let e = Error::Io {
            op: "write the catalog",
            path: "/x".into(),
            source: std::io::Error::other("disk on fire"),
        };
        assert_eq!(tonic::Status::from(e).message(), "write the catalog /x: disk on fire");
    }
}
