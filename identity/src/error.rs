//! Errors of the identity crate.

use std::path::PathBuf;

/// Everything that can go wrong with certificates, tokens and TLS set-up.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid role {0:?}: expected manager, worker or admin")]
    InvalidRole(String),

    /// A certificate (PEM or DER) could not be read or does not say what a cluster certificate says.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),

    /// A private key could not be read or does not belong to its certificate.
    #[error("invalid private key: {0}")]
    InvalidKey(String),

    /// A certificate signing request could not be parsed or its signature does not verify.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),

    /// Generating a key or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Generation(String),

    /// A join token that does not have the expected shape.
    #[error("join token is malformed: {0}")]
    MalformedToken(String),

    /// A CA digest (as pinned by join tokens) that is not 64 hex digits.
    #[error("invalid CA digest {0:?}: expected 64 hex digits (SHA-256)")]
    InvalidDigest(String),

    /// Reading or writing a credentials or config file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A credentials or config file that is not the JSON we expect.
    #[error("{path}: not a valid file of this kind: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// Building a TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(String),

    /// An address that is not `host:port`.
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress { addr: String, reason: String },

    /// Connecting to a manager failed (the message carries the whole cause chain, for example
    /// a certificate that does not verify or a CA that does not match the join token).
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
}
