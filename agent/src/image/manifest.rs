//! Lenient parsing of manifests, indexes and image configs (OCI and Docker v2 schema 2).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ImageError, Result, digest_hex};

/// Largest manifest or config we read into memory.
pub(crate) const MAX_JSON_BLOB: u64 = 32 * 1024 * 1024;

const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];
const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// A content descriptor (digest checked to be sha256).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// A parsed top-level document.
pub(crate) enum Parsed {
    Index(Vec<Descriptor>),
    Manifest {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

/// Parses a manifest or an index, checking digests and media types.
pub(crate) fn parse_manifest(image: &str, bytes: &[u8]) -> Result<Parsed> {
    let invalid = |reason: String| ImageError::Invalid {
        image: image.to_string(),
        what: "manifest",
        reason,
    };
    let raw: RawManifest = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    if raw.schema_version == Some(1) {
        return Err(ImageError::Unsupported {
            image: image.to_string(),
            reason: "Docker schema 1 manifests are not supported; push the image again with a current client".into(),
        });
    }
    let is_index = raw.manifests.is_some()
        || raw
            .media_type
            .as_deref()
            .is_some_and(|m| INDEX_TYPES.contains(&m));
    if is_index {
        let entries = raw.manifests.unwrap_or_default();
        for e in &entries {
            check_digest(&e.digest).map_err(invalid)?;
        }
        return Ok(Parsed::Index(entries));
    }
    let (Some(config), Some(layers)) = (raw.config, raw.layers) else {
        return Err(invalid(
            "neither an image manifest nor an index (no config/layers)".into(),
        ));
    };
    check_digest(&config.digest).map_err(invalid)?;
    if !config.media_type.is_empty() && !CONFIG_TYPES.contains(&config.media_type.as_str()) {
        return Err(ImageError::Unsupported {
            image: image.to_string(),
            reason: format!(
                "not a container image (config media type {})",
                config.media_type
            ),
        });
    }
    for l in &layers {
        check_digest(&l.digest).map_err(invalid)?;
        if l.size < 0 {
            return Err(invalid(format!("layer {} has a negative size", l.digest)));
        }
        if !l.media_type.is_empty() && !LAYER_TYPES.contains(&l.media_type.as_str()) {
            return Err(ImageError::Unsupported {
                image: image.to_string(),
                reason: format!(
                    "layer {} has unsupported media type {}",
                    l.digest, l.media_type
                ),
            });
        }
    }
    Ok(Parsed::Manifest { config, layers })
}

/// Picks the entry of an index for linux on this host's architecture.
pub(crate) fn pick_platform<'a>(image: &str, entries: &'a [Descriptor]) -> Result<&'a Descriptor> {
    let arch = host_arch();
    entries
        .iter()
        .find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .ok_or_else(|| {
            let found: Vec<String> = entries
                .iter()
                .filter_map(|e| {
                    e.platform
                        .as_ref()
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                })
                .collect();
            ImageError::Unsupported {
                image: image.to_string(),
                reason: format!(
                    "no linux/{arch} image in the index (has: {})",
                    found.join(", ")
                ),
            }
        })
}

/// The OCI name of this host's architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn check_digest(d: &str) -> std::result::Result<(), String> {
    digest_hex(d)
        .map(|_| ())
        .ok_or_else(|| format!("unsupported or malformed digest {d:?}"))
}

/// What a container needs from the image config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// Working directory; `None` means `/`.
    pub workdir: Option<String>,
    /// `user[:group]`, names or ids; `None` means root.
    pub user: Option<String>,
    /// Signal name or number for stopping, e.g. `SIGTERM`.
    pub stop_signal: Option<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    config: Option<RawRunConfig>,
    #[serde(default)]
    rootfs: Option<RawRootfs>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    stop_signal: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Parses an image config into the run settings and the layers' diff_ids.
pub(crate) fn parse_config(image: &str, bytes: &[u8]) -> Result<(ImageConfig, Vec<String>)> {
    let invalid = |reason: String| ImageError::Invalid {
        image: image.to_string(),
        what: "config",
        reason,
    };
    let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let diff_ids = raw.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    for d in &diff_ids {
        check_digest(d).map_err(invalid)?;
    }
    let c = raw.config.unwrap_or_default();
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let config = ImageConfig {
        env: c.env.unwrap_or_default(),
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        workdir: non_empty(c.working_dir),
        user: non_empty(c.user),
        stop_signal: non_empty(c.stop_signal),
        labels: c.labels.unwrap_or_default(),
    };
    Ok((config, diff_ids))
}

/// The digests a manifest or index references (for garbage collection).
pub(crate) fn referenced(bytes: &[u8]) -> Vec<String> {
    match parse_manifest("", bytes) {
        Ok(Parsed::Index(entries)) => entries.into_iter().map(|e| e.digest).collect(),
        Ok(Parsed::Manifest { config, layers }) => std::iter::once(config.digest)
            .chain(layers.into_iter().map(|l| l.digest))
            .collect(),
        Err(_) => Vec::new(),
    }
}
