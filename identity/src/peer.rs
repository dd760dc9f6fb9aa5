//! Who is calling: the identity in a peer's certificate, and role checks for gRPC handlers.

use crate::{IdentityError, Role};
use std::time::SystemTime;

/// What a verified certificate says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
    pub not_after: SystemTime,
}

/// Parses the identity out of a certificate (DER).
pub fn peer_identity(cert_der: &[u8]) -> Result<PeerIdentity, IdentityError> {
    todo!()
}

/// The caller's identity, from the client certificate the TLS handshake verified.
/// `Unauthenticated` when the caller presented none.
pub fn peer_from_request<T>(request: &tonic::Request<T>) -> Result<PeerIdentity, tonic::Status> {
    todo!()
}

/// Like [`peer_from_request`], and `PermissionDenied` unless the caller's role is in `allowed`.
pub fn require_role<T>(request: &tonic::Request<T>, allowed: &[Role]) -> Result<PeerIdentity, tonic::Status> {
    todo!()
}
