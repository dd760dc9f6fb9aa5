//! Images on the agent: references, registry access, the on-disk store of verified blobs and
//! unpacked layers, and overlayfs root filesystems built from them.
//!
//! References and the registry client live in the `registry` crate (the manager uses them too)
//! and are re-exported here.
//!
//! The usual flow: the manager pins `service create`'s image with [`RegistryClient::resolve_digest`]
//! (or [`ImageStore::pin`]); the agent calls [`ImageStore::ensure_image`] with the pinned reference
//! (warm images need no network) and [`mount_rootfs`] for each container.

mod layer;
mod manifest;
pub mod rootfs;
pub mod store;

pub use layer::unpack_layer;
pub use manifest::{ImageConfig, host_arch};
pub use registry::{ImageRef, RegistryClient, RegistryConfig, RegistryError, digest_hex};
pub use rootfs::{Rootfs, mount_rootfs};
pub use store::{GcStats, Image, ImageStore};

use std::path::PathBuf;

/// Everything that can go wrong with images. Messages are meant for users (`service ps`).
///
/// The first four variants mirror [`RegistryError`]'s (see the `From` conversion), so a registry
/// failure reads and matches the same whether it comes from the client or from the store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
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
    /// The image uses a format or platform this agent does not handle.
    #[error("image {image}: {reason}")]
    Unsupported { image: String, reason: String },
    /// A manifest or config is malformed.
    #[error("image {image}: invalid {what}: {reason}")]
    Invalid {
        image: String,
        what: &'static str,
        reason: String,
    },
    /// A layer could not be unpacked.
    #[error("layer {digest}: {reason}")]
    Layer { digest: String, reason: String },
    /// A local file operation failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// Mounting or unmounting a root filesystem failed.
    #[error("rootfs {}: {reason}", path.display())]
    Mount { path: PathBuf, reason: String },
}

impl From<RegistryError> for ImageError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::InvalidReference { reference, reason } => {
                ImageError::InvalidReference { reference, reason }
            }
            RegistryError::Registry {
                image,
                registry,
                reason,
            } => ImageError::Registry {
                image,
                registry,
                reason,
            },
            RegistryError::DigestMismatch {
                image,
                expected,
                actual,
            } => ImageError::DigestMismatch {
                image,
                expected,
                actual,
            },
            RegistryError::Unsupported { image, reason } => {
                ImageError::Unsupported { image, reason }
            }
            RegistryError::Io {
                context,
                path,
                source,
            } => ImageError::Io {
                context,
                path,
                source,
            },
        }
    }
}

/// Result with [`ImageError`].
pub type Result<T> = std::result::Result<T, ImageError>;

pub(crate) fn io_err(
    context: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io {
        context,
        path,
        source,
    }
}
