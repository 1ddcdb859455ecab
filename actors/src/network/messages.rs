//! Messages the NetworkActor answers.

use crate::Result;
use actix::Message;

/// Is the pod network ready? Answers [`NetworkReadiness`]; asked by CRI
/// `Status` on every call, so a CNI configuration that appears is noticed
/// without a restart.
#[derive(Debug, Clone, Default)]
pub struct NetworkStatus;

impl Message for NetworkStatus {
    type Result = Result<NetworkReadiness>;
}

/// The CRI `NetworkReady` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkReadiness {
    pub ready: bool,
    /// CamelCase reason when not ready (empty when ready).
    pub reason: String,
    /// What a person can act on.
    pub message: String,
}
