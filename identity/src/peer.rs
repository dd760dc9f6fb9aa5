//! Who is calling: the identity in a peer's certificate, and role checks for gRPC handlers.

use crate::{IdentityError, Role};
use std::time::{Duration, SystemTime};

/// What a verified certificate says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
    pub not_after: SystemTime,
}

/// Parses the identity out of a certificate (DER).
///
/// This does not verify the certificate: use it on certificates the TLS handshake verified,
/// or on our own.
pub fn peer_identity(cert_der: &[u8]) -> Result<PeerIdentity, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| {
        IdentityError::InvalidCertificate(format!("cannot parse the certificate: {e}"))
    })?;
    let subject = cert.subject();
    let node_id = single_attr(subject.iter_common_name(), "common name (CN, the node id)")?;
    let role = single_attr(
        subject.iter_organizational_unit(),
        "organizational unit (OU, the role)",
    )?;
    let cluster_id = single_attr(
        subject.iter_organization(),
        "organization (O, the cluster id)",
    )?;
    let role: Role = role.parse()?;
    let ts = cert.validity().not_after.timestamp();
    let not_after = if ts >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(ts.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH
            .checked_sub(Duration::from_secs(ts.unsigned_abs()))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    Ok(PeerIdentity {
        node_id,
        role,
        cluster_id,
        not_after,
    })
}

/// The one value of a subject attribute; missing, repeated, empty or non-text values are errors.
fn single_attr<'a>(
    mut values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
    what: &str,
) -> Result<String, IdentityError> {
    let first = values
        .next()
        .ok_or_else(|| IdentityError::InvalidCertificate(format!("the subject has no {what}")))?;
    if values.next().is_some() {
        return Err(IdentityError::InvalidCertificate(format!(
            "the subject has more than one {what}"
        )));
    }
    let value = first.as_str().map_err(|e| {
        IdentityError::InvalidCertificate(format!("the subject's {what} is not text: {e}"))
    })?;
    if value.is_empty() {
        return Err(IdentityError::InvalidCertificate(format!(
            "the subject's {what} is empty"
        )));
    }
    Ok(value.to_string())
}

/// The caller's identity, from the client certificate the TLS handshake verified.
/// `Unauthenticated` when the caller presented none.
pub fn peer_from_request<T>(request: &tonic::Request<T>) -> Result<PeerIdentity, tonic::Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| tonic::Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| tonic::Status::unauthenticated("a client certificate is required"))?;
    peer_identity(leaf.as_ref()).map_err(|e| {
        tonic::Status::unauthenticated(format!(
            "the client certificate is not a cluster certificate: {e}"
        ))
    })
}

/// Like [`peer_from_request`], and `PermissionDenied` unless the caller's role is in `allowed`.
pub fn require_role<T>(
    request: &tonic::Request<T>,
    allowed: &[Role],
) -> Result<PeerIdentity, tonic::Status> {
    let peer = peer_from_request(request)?;
    if allowed.contains(&peer.role) {
        Ok(peer)
    } else {
        Err(tonic::Status::permission_denied(denied_message(
            peer.role, allowed,
        )))
    }
}

/// "permission denied: this call needs an admin certificate, the caller presented a worker certificate"
fn denied_message(caller: Role, allowed: &[Role]) -> String {
    let needed = match allowed {
        [] => "a certificate of no role at all (nobody may make it)".to_string(),
        [first, rest @ ..] => {
            let mut s = format!("{} {first}", article(*first));
            for (i, role) in rest.iter().enumerate() {
                s.push_str(if i + 1 == rest.len() { " or " } else { ", " });
                s.push_str(role.as_str());
            }
            s.push_str(" certificate");
            s
        }
    };
    format!(
        "permission denied: this call needs {needed}, the caller presented {} {caller} certificate",
        article(caller)
    )
}

fn article(role: Role) -> &'static str {
    match role {
        Role::Admin => "an",
        Role::Manager | Role::Worker => "a",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denial_messages() {
        assert_eq!(
            denied_message(Role::Worker, &[Role::Admin]),
            "permission denied: this call needs an admin certificate, the caller presented a worker certificate"
        );
        assert_eq!(
            denied_message(Role::Admin, &[Role::Manager, Role::Worker]),
            "permission denied: this call needs a manager or worker certificate, the caller presented an admin certificate"
        );
    }

    #[test]
    fn no_client_cert_is_unauthenticated() {
        let req = tonic::Request::new(());
        let status = peer_from_request(&req).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), "a client certificate is required");
        let status = require_role(&req, &[Role::Admin]).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn garbage_der_is_an_error() {
        assert!(peer_identity(b"not a certificate").is_err());
        assert!(peer_identity(&[]).is_err());
    }
}
