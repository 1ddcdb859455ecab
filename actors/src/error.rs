//! The one error type of the actors crate. Its variants are what the front
//! door maps to gRPC status codes, so each says who is at fault: the caller
//! (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition), the moment
//! (Unavailable, DeadlineExceeded) or berth itself (Internal).

use crate::journal::JournalError;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The actor that should answer is restarting or gone; the caller may retry.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A bound is reached (streaming URLs waiting); the caller may retry
    /// later.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The caller's credentials were refused (by a registry).
    #[error("{0}")]
    Unauthenticated(String),
    /// Content is corrupt: a digest does not match, a stream is truncated.
    #[error("{0}")]
    DataLoss(String),
    #[error("{0}")]
    Internal(String),
    /// The journal failed a read or write: the actor's state may no longer
    /// match the disk, so the actor is restarted to rebuild it. The cause
    /// is kept whole, down to the gRPC mapping.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
}

impl Error {
    /// Whether an I/O error says the disk (or a quota) is full.
    pub fn disk_full(e: &std::io::Error) -> bool {
        matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ) || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
    }

    /// `e` and its causes, one after another ("failed to unpack x: No
    /// space left on device").
    pub fn chain(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            let more = s.to_string();
            if !text.contains(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            source = s.source();
        }
        text
    }

    /// A failure to store something (`message` says what): a full disk is
    /// ResourceExhausted, anything else what `otherwise` makes of it.
    pub fn storing(e: &std::io::Error, message: String, otherwise: fn(String) -> Error) -> Error {
        if Error::disk_full(e) {
            Error::ResourceExhausted(message)
        } else {
            otherwise(message)
        }
    }
}
