//! Join tokens: `CLSTR-1-<hex sha256 of the root CA>-<secret>`.

use crate::IdentityError;

/// A parsed join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_digest: String,
    pub secret: String,
}

impl JoinToken {
    /// A fresh random secret.
    pub fn generate_secret() -> String {
        todo!()
    }
    /// The token text for a CA digest and secret.
    pub fn format(ca_digest: &str, secret: &str) -> String {
        todo!()
    }
    /// Parses token text, with an error that says what is wrong.
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        todo!()
    }
}

/// Constant-time comparison of two secrets.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    todo!()
}
