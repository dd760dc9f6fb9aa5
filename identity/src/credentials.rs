//! A node's or admin's credentials: root CA, own certificate and key, kept in one file.

use crate::{IdentityError, PeerIdentity};
use std::path::Path;

/// Root CA certificate, own certificate and own private key, all PEM.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Credentials {
    /// The identity in our own certificate.
    pub fn identity(&self) -> Result<PeerIdentity, IdentityError> {
        todo!()
    }
    /// Loads credentials saved by [`Credentials::save`].
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        todo!()
    }
    /// Saves atomically (write to a temporary file, fsync, rename) with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        todo!()
    }
}

/// What the `cluster` CLI reads from `--config` / `CLUSTER_CONFIG`: where the managers are and
/// the admin credentials. `cluster-manager init` writes it.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct AdminConfig {
    /// Manager addresses (host:port), tried in order.
    pub managers: Vec<String>,
    pub credentials: Credentials,
}

impl AdminConfig {
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        todo!()
    }
    /// Saves atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        todo!()
    }
}
