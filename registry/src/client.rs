//! Registry access over oci-client: digest resolution, manifests and verified blob downloads.
//!
//! Plain http is used only for registries listed in [`RegistryConfig::insecure_registries`];
//! everything else is https (rustls with the ring provider). Token auth (the `WWW-Authenticate:
//! Bearer` dance) is done by oci-client, anonymously or with per-registry basic credentials.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{ImageRef, RegistryError, Result, io_err};

/// Manifest media types we accept (image manifests and indexes, OCI and Docker v2).
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Registry settings of a client (an agent's pulls, a manager's digest resolution).
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`) that may be reached over plain http.
    pub insecure_registries: Vec<String>,
    /// Basic credentials per registry (`host[:port]` -> (user, password)); others are anonymous.
    pub credentials: HashMap<String, (String, String)>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Read timeout for each chunk of a response.
    pub read_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure_registries: Vec::new(),
            credentials: HashMap::new(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// A registry client shared by all pulls of an agent or resolutions of a manager (cheap to clone).
#[derive(Clone)]
pub struct RegistryClient {
    client: oci_client::Client,
    config: Arc<RegistryConfig>,
}

impl RegistryClient {
    /// Builds a client; installs rustls' ring provider if no provider is installed yet.
    pub fn new(config: RegistryConfig) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut insecure = config.insecure_registries.clone();
        // oci-client names Docker Hub by its legacy host.
        if insecure.iter().any(|r| r == "docker.io") {
            insecure.push("index.docker.io".to_string());
        }
        let oci_config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure),
            platform_resolver: None,
            connect_timeout: Some(config.connect_timeout),
            read_timeout: Some(config.read_timeout),
            ..Default::default()
        };
        let client =
            oci_client::Client::try_from(oci_config).map_err(|e| RegistryError::Registry {
                image: String::new(),
                registry: String::new(),
                reason: format!("cannot build http client: {}", chain(&e)),
            })?;
        Ok(RegistryClient {
            client,
            config: Arc::new(config),
        })
    }

    /// The settings this client was built with.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    fn auth(&self, image: &ImageRef) -> RegistryAuth {
        match self.config.credentials.get(&image.registry) {
            Some((user, pass)) => RegistryAuth::Basic(user.clone(), pass.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// Resolves a reference to the digest of its manifest (or image index) without downloading
    /// layers: this is what `service create` pins. A pinned reference is still checked remotely.
    pub async fn resolve_digest(&self, image: &ImageRef) -> Result<String> {
        let digest = self
            .client
            .fetch_manifest_digest(&image.to_oci(), &self.auth(image))
            .await
            .map_err(|e| self.error(image, e))?;
        if crate::digest_hex(&digest).is_none() {
            return Err(RegistryError::Unsupported {
                image: image.to_string(),
                reason: format!("registry returned unsupported digest {digest:?}"),
            });
        }
        Ok(digest)
    }

    /// Fetches a manifest or index; returns its raw bytes and verified `sha256:` digest.
    pub async fn fetch_manifest(&self, image: &ImageRef) -> Result<(Vec<u8>, String)> {
        let (body, _) = self
            .client
            .pull_manifest_raw(&image.to_oci(), &self.auth(image), MANIFEST_MEDIA_TYPES)
            .await
            .map_err(|e| self.error(image, e))?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if let Some(expected) = &image.digest
            && *expected != actual
        {
            return Err(RegistryError::DigestMismatch {
                image: image.to_string(),
                expected: expected.clone(),
                actual,
            });
        }
        Ok((body.to_vec(), actual))
    }

    /// Downloads blob `digest` of `image` into `dest` (created or truncated), checking its size
    /// and digest. On any error `dest` is removed.
    pub async fn fetch_blob(
        &self,
        image: &ImageRef,
        digest: &str,
        size: u64,
        dest: &Path,
    ) -> Result<()> {
        let res = self.fetch_blob_inner(image, digest, size, dest).await;
        if res.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        res
    }

    async fn fetch_blob_inner(
        &self,
        image: &ImageRef,
        digest: &str,
        size: u64,
        dest: &Path,
    ) -> Result<()> {
        let oci_ref = image.to_oci();
        self.client
            .store_auth_if_needed(oci_ref.resolve_registry(), &self.auth(image))
            .await;
        let desc = OciDescriptor {
            digest: digest.to_string(),
            size: size as i64,
            ..Default::default()
        };
        let mut stream = self
            .client
            .pull_blob_stream(&oci_ref, &desc)
            .await
            .map_err(|e| self.error(image, e))?;
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(io_err("creating", dest))?;
        let mut hasher = Sha256::new();
        let mut written: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.stream_error(image, digest, e))?;
            written += chunk.len() as u64;
            if size > 0 && written > size {
                return Err(RegistryError::Registry {
                    image: image.to_string(),
                    registry: image.registry.clone(),
                    reason: format!("blob {digest} is larger than its declared size {size}"),
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(io_err("writing", dest))?;
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            return Err(RegistryError::DigestMismatch {
                image: image.to_string(),
                expected: digest.to_string(),
                actual,
            });
        }
        file.sync_all().await.map_err(io_err("syncing", dest))?;
        Ok(())
    }

    fn stream_error(&self, image: &ImageRef, digest: &str, e: std::io::Error) -> RegistryError {
        if let Some(DigestError::VerificationError { actual, .. }) =
            e.get_ref().and_then(|i| i.downcast_ref::<DigestError>())
        {
            return RegistryError::DigestMismatch {
                image: image.to_string(),
                expected: digest.to_string(),
                actual: actual.clone(),
            };
        }
        RegistryError::Registry {
            image: image.to_string(),
            registry: image.registry.clone(),
            reason: format!("downloading {digest}: {}", chain(&e)),
        }
    }

    /// Turns an oci-client error into a message naming the image and the registry's reason.
    fn error(&self, image: &ImageRef, e: OciDistributionError) -> RegistryError {
        let registry = image.registry.clone();
        let reason = match &e {
            OciDistributionError::DigestError(DigestError::VerificationError {
                expected,
                actual,
            }) => {
                return RegistryError::DigestMismatch {
                    image: image.to_string(),
                    expected: expected.clone(),
                    actual: actual.clone(),
                };
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let not_found = envelope.errors.iter().any(|o| {
                    matches!(
                        o.code,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                });
                let unauthorized = envelope
                    .errors
                    .iter()
                    .any(|o| matches!(o.code, OciErrorCode::Unauthorized | OciErrorCode::Denied));
                let codes: Vec<String> = envelope
                    .errors
                    .iter()
                    .map(|o| {
                        let code = serde_json::to_string(&o.code).unwrap_or_default();
                        format!("{}: {}", code.trim_matches('"'), o.message)
                    })
                    .collect();
                let prefix = if not_found {
                    "not found: "
                } else if unauthorized {
                    "unauthorized: "
                } else {
                    ""
                };
                format!("{prefix}{}", codes.join("; "))
            }
            OciDistributionError::UnauthorizedError { .. } => {
                "unauthorized: authentication required or access denied (HTTP 401)".to_string()
            }
            OciDistributionError::AuthenticationFailure(msg) => {
                format!("unauthorized: token request failed: {}", short(msg))
            }
            OciDistributionError::ServerError { code, message, .. } => {
                let kind = match code {
                    404 => "not found ",
                    401 | 403 => "unauthorized ",
                    429 => "rate limited ",
                    _ => "",
                };
                match short(message) {
                    m if m.is_empty() => format!("{kind}(HTTP {code})"),
                    m => format!("{kind}(HTTP {code}): {m}"),
                }
            }
            OciDistributionError::RequestError(_) => {
                let mut reason = chain(&e);
                if has_io_kind(&e, std::io::ErrorKind::ConnectionRefused) {
                    reason = format!("connection refused ({reason})");
                } else if !self.is_insecure(image) && looks_like_tls(&reason) {
                    reason = format!(
                        "{reason} (https failed; if this registry serves plain http, list it in insecure_registries)"
                    );
                }
                reason
            }
            _ => chain(&e),
        };
        RegistryError::Registry {
            image: image.to_string(),
            registry,
            reason,
        }
    }

    fn is_insecure(&self, image: &ImageRef) -> bool {
        self.config.insecure_registries.contains(&image.registry)
    }
}

/// Cuts long registry bodies (HTML error pages) down to a readable size.
fn short(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// The error and its sources, joined with ": ", skipping repeats.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        let msg = err.to_string();
        if !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        cur = err.source();
    }
    parts.join(": ")
}

fn looks_like_tls(reason: &str) -> bool {
    let r = reason.to_lowercase();
    [
        "tls",
        "certificate",
        "handshake",
        "corrupt message",
        "invalidcontenttype",
    ]
    .iter()
    .any(|k| r.contains(k))
}

fn has_io_kind(e: &(dyn StdError + 'static), kind: std::io::ErrorKind) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return true;
        }
        cur = err.source();
    }
    false
}
