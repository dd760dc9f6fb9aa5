//! Cluster identity: the root CA, node and admin certificates that carry a role, join tokens that
//! pin the root CA, and the mTLS configurations every gRPC connection uses.
//!
//! Certificates name the node in the subject CN, the role in the OU (`manager`, `worker`, `admin`)
//! and the cluster id in the O. Managers' certificates also carry the DNS name
//! [`MANAGER_SERVER_NAME`], which clients verify whatever address they dial.

mod ca;
mod credentials;
mod error;
mod peer;
mod tls;
mod token;

pub use ca::{RootCa, Subject, Validity, ca_digest, generate_csr};
pub use credentials::{AdminConfig, Credentials};
pub use error::IdentityError;
pub use peer::{PeerIdentity, peer_from_request, peer_identity, require_role};
pub use tls::{channel_lazy, connect, connect_pinned, install_crypto_provider, server_tls};
pub use token::{JoinToken, secrets_equal};

/// The DNS name in every manager certificate; clients verify it instead of the dialled address.
pub const MANAGER_SERVER_NAME: &str = "manager.cluster.internal";

/// What a certificate allows its holder to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs Raft and serves every API.
    Manager,
    /// Runs an agent: may call the Dispatcher only.
    Worker,
    /// The operator's CLI: may call the Control API only.
    Admin,
}

impl Role {
    /// The lowercase name used in certificates, tokens and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "manager" => Ok(Role::Manager),
            "worker" => Ok(Role::Worker),
            "admin" => Ok(Role::Admin),
            other => Err(IdentityError::InvalidRole(other.to_string())),
        }
    }
}
