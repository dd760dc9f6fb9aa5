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
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A bad reference, a registry that refused or could not be reached, or downloaded content
    /// that does not match its digest: the registry client's own error, as it reads.
    #[error(transparent)]
    Registry(#[from] RegistryError),
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
