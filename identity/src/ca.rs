//! The root CA: creation, reloading, and signing node certificates.

use crate::{IdentityError, Role};
use std::time::{Duration, SystemTime};

/// Who a certificate is issued to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from a minute ago (clock skew) for `duration`.
    pub fn for_duration(duration: Duration) -> Self {
        todo!()
    }
}

/// The cluster's root certificate authority (certificate and private key).
pub struct RootCa {}

impl RootCa {
    /// Creates a new self-signed root CA for `cluster_id`.
    pub fn generate(cluster_id: &str) -> Result<Self, IdentityError> {
        todo!()
    }
    /// Reloads a CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        todo!()
    }
    pub fn cert_pem(&self) -> &str {
        todo!()
    }
    /// The CA's private key in PEM. Secret: only managers hold it.
    pub fn key_pem(&self) -> &str {
        todo!()
    }
    /// Hex SHA-256 of the CA certificate's DER: what join tokens pin.
    pub fn digest(&self) -> String {
        todo!()
    }
    /// Signs `csr_pem` (only its public key is used) for `subject`. Returns the certificate PEM.
    pub fn issue(&self, csr_pem: &str, subject: &Subject, validity: Validity) -> Result<String, IdentityError> {
        todo!()
    }
    /// Generates a key pair and signs a certificate for it (the first manager's and admin's own).
    pub fn issue_keypair(&self, subject: &Subject, validity: Validity) -> Result<crate::Credentials, IdentityError> {
        todo!()
    }
}

/// Hex SHA-256 of a PEM certificate's DER.
pub fn ca_digest(cert_pem: &str) -> Result<String, IdentityError> {
    todo!()
}

/// A fresh key pair and a CSR for it: `(csr_pem, key_pem)`.
pub fn generate_csr() -> Result<(String, String), IdentityError> {
    todo!()
}
