//! Image references and registry access, shared by the manager (which pins `service create`'s
//! image to a digest) and the agent (which pulls what it runs).
//!
//! - [`ImageRef`]: `[registry[:port]/]repository[:tag][@sha256:<hex>]` with Docker Hub defaults.
//! - [`RegistryClient`]: digest resolution, manifests and verified blob downloads over
//!   oci-client; plain http only for the registries listed in
//!   [`RegistryConfig::insecure_registries`].

pub mod client;
pub mod reference;

pub use client::{MANIFEST_MEDIA_TYPES, RegistryClient, RegistryConfig};
pub use reference::{DEFAULT_REGISTRY, ImageRef, pinned_reference, validate_registry_host};

use std::path::PathBuf;

/// What can go wrong when parsing a reference or talking to a registry. Messages are meant for
/// users (`service ps`, the warning of `service create`): they name the image and the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference string cannot be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// The registry answered with an error or could not be reached.
    #[error("image {image}: registry {registry}: {reason}")]
    Registry {
        image: String,
        registry: String,
        reason: String,
    },
    /// Downloaded content does not match its digest; it has been discarded.
    #[error(
        "image {image}: content of {expected} does not match its digest (got {actual}); discarded"
    )]
    DigestMismatch {
        image: String,
        expected: String,
        actual: String,
    },
    /// The registry returned something this client does not handle.
    #[error("image {image}: {reason}")]
    Unsupported { image: String, reason: String },
    /// Writing a downloaded blob to a local file failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl RegistryError {
    /// The message without the leading `image X: ` (for callers that name the image themselves).
    pub fn detail(&self) -> String {
        match self {
            RegistryError::Registry {
                registry, reason, ..
            } => format!("registry {registry}: {reason}"),
            RegistryError::Unsupported { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }
}

/// Result with [`RegistryError`].
pub type Result<T> = std::result::Result<T, RegistryError>;

/// Checks that `digest` is `sha256:<64 lowercase hex>` and returns the hex part.
pub fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

pub(crate) fn io_err(
    context: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> RegistryError {
    let path = path.into();
    move |source| RegistryError::Io {
        context,
        path,
        source,
    }
}
