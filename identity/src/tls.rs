//! mTLS for tonic: server configuration and client channels (mutual, or CA-pinned for joining).

use crate::{Credentials, IdentityError};

/// Installs rustls' ring provider as the process default. Call at the top of every `main`;
/// calling it twice is harmless.
pub fn install_crypto_provider() {
    todo!()
}

/// Server TLS: presents our certificate (with the CA in the chain, so joining nodes can pin it)
/// and verifies client certificates against the root CA when presented (optional, so that
/// joining nodes without a certificate can reach the Ca service; handlers check roles).
pub fn server_tls(creds: &Credentials) -> Result<tonic::transport::ServerTlsConfig, IdentityError> {
    todo!()
}

/// Connects with mutual TLS to a manager at `addr` (host:port), verifying its certificate
/// against our root CA and the name [`crate::MANAGER_SERVER_NAME`].
pub async fn connect(addr: &str, creds: &Credentials) -> Result<tonic::transport::Channel, IdentityError> {
    todo!()
}

/// Like [`connect`] but connects on first use and reconnects after failures.
pub fn channel_lazy(addr: &str, creds: &Credentials) -> Result<tonic::transport::Channel, IdentityError> {
    todo!()
}

/// Connects without a client certificate, trusting the server only if its chain contains a CA
/// certificate whose SHA-256 is `ca_digest` and the leaf verifies against that CA.
pub async fn connect_pinned(addr: &str, ca_digest: &str) -> Result<tonic::transport::Channel, IdentityError> {
    todo!()
}
