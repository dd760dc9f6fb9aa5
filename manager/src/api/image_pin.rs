//! Pinning a service's image to a digest at `service create` / `service update`, as Swarm does:
//! the manager asks the image's registry for the digest of `repo:tag` and records
//! `repo:tag@sha256:...` in the spec, so that every node runs the same bytes even if the tag
//! moves later.
//!
//! When the registry cannot be asked (unreachable, image missing, authentication refused) the
//! service is still written, unpinned, and the call returns a warning (see [`unpinned_warning`]):
//! each node then resolves the tag itself when it pulls. The decision of what to resolve is the
//! pure [`pin_decision`]; [`ImageResolver`] does the network part, bounded by a timeout.

use registry::{ImageRef, RegistryClient, RegistryConfig, pinned_reference};
use std::time::Duration;
use tonic::Status;

/// How long a create or update waits for the registry before it goes on unpinned.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What to do with a spec's image before the spec is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinDecision {
    /// Write the image as it is.
    Keep(KeepReason),
    /// Ask the registry for this reference's digest and record it.
    Resolve(ImageRef),
}

/// Why an image is written as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepReason {
    /// The caller asked for it (`--no-resolve-image`).
    NotRequested,
    /// The reference already names a digest.
    AlreadyPinned,
    /// An update that leaves the image as the service has it (e.g. a scale): the digest recorded
    /// earlier, or the lack of one, stays.
    Unchanged,
}

/// Decides whether `image` must be resolved. `current` is the image of the service being updated
/// (`None` for a create); `no_resolve` is the request's `no_resolve_image`. A new image that is
/// not a valid reference is refused (no node could pull it), naming the field.
pub fn pin_decision(image: &str, current: Option<&str>, no_resolve: bool) -> Result<PinDecision, Status> {
    if current == Some(image) {
        return Ok(PinDecision::Keep(KeepReason::Unchanged));
    }
    let reference = ImageRef::parse(image)
        .map_err(|e| Status::invalid_argument(format!("invalid service spec: spec.image: {e}")))?;
    Ok(if no_resolve {
        PinDecision::Keep(KeepReason::NotRequested)
    } else if reference.digest.is_some() {
        PinDecision::Keep(KeepReason::AlreadyPinned)
    } else {
        PinDecision::Resolve(reference)
    })
}

/// The warning returned when `image` could not be pinned because of `error`.
pub fn unpinned_warning(image: &str, error: &str) -> String {
    format!(
        "image {image} could not be accessed on a registry to record its digest: {error}. Each node will access \
         {image} independently, possibly leading to different nodes running different versions of the image."
    )
}

/// Resolves image digests for the Control API (cheap to clone).
#[derive(Clone)]
pub struct ImageResolver {
    /// The client, or why it could not be built (then every resolution fails with that reason).
    client: Result<RegistryClient, String>,
    timeout: Duration,
}

impl ImageResolver {
    /// A resolver that reaches the registries in `insecure_registries` (`host[:port]`) over plain
    /// http and every other one over https.
    pub fn new(insecure_registries: Vec<String>, timeout: Duration) -> ImageResolver {
        let config = RegistryConfig {
            insecure_registries,
            connect_timeout: timeout,
            read_timeout: timeout,
            ..RegistryConfig::default()
        };
        let client = RegistryClient::new(config).map_err(|e| e.to_string());
        if let Err(error) = &client {
            tracing::warn!(%error, "no registry client: service images will not be pinned");
        }
        ImageResolver { client, timeout }
    }

    /// The digest of `image`'s manifest (or index) at its registry, or why it is not known.
    pub async fn resolve(&self, image: &ImageRef) -> Result<String, String> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        match tokio::time::timeout(self.timeout, client.resolve_digest(image)).await {
            Ok(Ok(digest)) => Ok(digest),
            Ok(Err(error)) => Err(error.detail()),
            Err(_) => Err(format!("registry {}: no answer within {:?}", image.registry, self.timeout)),
        }
    }

    /// Applies [`pin_decision`] to `image` and, if asked to, resolves it: on success `image`
    /// becomes `image:tag@sha256:...`; on failure it is left as it is and the warning for the
    /// caller is returned.
    pub async fn pin(
        &self,
        image: &mut String,
        current: Option<&str>,
        no_resolve: bool,
    ) -> Result<Option<String>, Status> {
        let reference = match pin_decision(image, current, no_resolve)? {
            PinDecision::Keep(_) => return Ok(None),
            PinDecision::Resolve(reference) => reference,
        };
        match self.resolve(&reference).await {
            Ok(digest) => {
                let pinned = pinned_reference(image, &digest);
                tracing::info!(image = %image, %pinned, "image pinned to its digest");
                *image = pinned;
                Ok(None)
            }
            Err(error) => {
                tracing::warn!(image = %image, %error, "cannot pin the image to a digest");
                Ok(Some(unpinned_warning(image, &error)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn resolves(decision: PinDecision) -> Option<String> {
        match decision {
            PinDecision::Resolve(r) => Some(r.to_string()),
            PinDecision::Keep(_) => None,
        }
    }

    #[test]
    fn create_resolves_tags_and_keeps_digests() {
        let d = pin_decision("busybox", None, false).unwrap();
        assert_eq!(resolves(d).as_deref(), Some("docker.io/library/busybox:latest"));
        let d = pin_decision("127.0.0.1:5000/a/b:1", None, false).unwrap();
        assert_eq!(resolves(d).as_deref(), Some("127.0.0.1:5000/a/b:1"));
        let pinned = format!("127.0.0.1:5000/a/b:1@{D}");
        assert_eq!(pin_decision(&pinned, None, false).unwrap(), PinDecision::Keep(KeepReason::AlreadyPinned));
        assert_eq!(pin_decision(&format!("a@{D}"), None, false).unwrap(), PinDecision::Keep(KeepReason::AlreadyPinned));
    }

    #[test]
    fn no_resolve_keeps_the_image() {
        assert_eq!(pin_decision("busybox", None, true).unwrap(), PinDecision::Keep(KeepReason::NotRequested));
        assert_eq!(
            pin_decision("busybox:2", Some("busybox:1"), true).unwrap(),
            PinDecision::Keep(KeepReason::NotRequested)
        );
    }

    #[test]
    fn update_resolves_only_a_changed_image() {
        let pinned = format!("busybox:1@{D}");
        // A scale sends the stored spec back: pinned or not, nothing is resolved again.
        assert_eq!(pin_decision(&pinned, Some(&pinned), false).unwrap(), PinDecision::Keep(KeepReason::Unchanged));
        assert_eq!(
            pin_decision("busybox:1", Some("busybox:1"), false).unwrap(),
            PinDecision::Keep(KeepReason::Unchanged)
        );
        // A new tag, or the same tag without the digest (`--image busybox:1`: pull it again).
        assert!(resolves(pin_decision("busybox:2", Some(&pinned), false).unwrap()).is_some());
        assert!(resolves(pin_decision("busybox:1", Some(&pinned), false).unwrap()).is_some());
    }

    #[test]
    fn invalid_new_images_name_the_field() {
        for bad in ["Busybox", "busybox@sha256:abc", "a//b"] {
            let status = pin_decision(bad, None, false).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(
                status.message().starts_with("invalid service spec: spec.image: invalid image reference"),
                "{}",
                status.message()
            );
            assert!(pin_decision(bad, None, true).is_err(), "{bad} with no_resolve");
        }
        // An unchanged image is not judged again.
        assert!(pin_decision("Busybox", Some("Busybox"), false).is_ok());
    }

    #[test]
    fn warning_names_the_image_and_the_error() {
        let w = unpinned_warning("reg:5000/x:1", "registry reg:5000: not found: MANIFEST_UNKNOWN: manifest unknown");
        assert_eq!(
            w,
            "image reg:5000/x:1 could not be accessed on a registry to record its digest: registry reg:5000: not found: \
             MANIFEST_UNKNOWN: manifest unknown. Each node will access reg:5000/x:1 independently, possibly leading to \
             different nodes running different versions of the image."
        );
    }

    #[tokio::test]
    async fn unreachable_registry_leaves_the_image_and_warns() {
        let port = crate::testing::free_port();
        let resolver = ImageResolver::new(vec![format!("127.0.0.1:{port}")], Duration::from_secs(2));
        let mut image = format!("127.0.0.1:{port}/a/b:1");
        let warning = resolver.pin(&mut image, None, false).await.unwrap().expect("a warning");
        assert_eq!(image, format!("127.0.0.1:{port}/a/b:1"));
        assert!(warning.contains("connection refused") && warning.contains(&image), "{warning}");
        let mut image = format!("127.0.0.1:{port}/a/b:1@{D}");
        assert_eq!(resolver.pin(&mut image, None, false).await.unwrap(), None);
    }
}
