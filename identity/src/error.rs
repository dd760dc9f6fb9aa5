//! Errors of the identity crate.

/// Everything that can go wrong with certificates, tokens and TLS set-up.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid role {0:?}: expected manager, worker or admin")]
    InvalidRole(String),
}
