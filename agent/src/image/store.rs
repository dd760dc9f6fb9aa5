//! The on-disk image store.
//!
//! Layout under the root:
//! - `blobs/sha256/<hex>`: manifests, indexes and configs (and layer blobs until unpacked), each
//!   verified against its digest before it is renamed into place;
//! - `layers/<diff_id hex>/`: each layer unpacked once, shared by all images, renamed into place
//!   only when complete (so a present directory is a complete one);
//! - `images/<hex>`: the reference last pulled for a top-level digest;
//! - `tmp/`: downloads and unpacks in progress (cleared by [`ImageStore::gc`]).
//!
//! Concurrent pulls in one process share one download per digest (a lock per key); other
//! processes on the same root can only ever see complete files, thanks to temp + rename.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use super::manifest::{
    Descriptor, MAX_JSON_BLOB, Parsed, parse_config, parse_manifest, pick_platform, referenced,
};
use super::{
    ImageConfig, ImageError, ImageRef, RegistryClient, RegistryError, Result, digest_hex, io_err,
    unpack_layer,
};

/// How many layers of one image are downloaded and unpacked at the same time.
const PARALLEL_LAYERS: usize = 3;

/// A pulled image, ready for [`super::mount_rootfs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The pinned reference, `registry/repo[:tag]@sha256:...`.
    pub reference: String,
    /// The digest the reference is pinned to (a manifest or an index).
    pub digest: String,
    /// The platform manifest used (equals `digest` unless `digest` is an index).
    pub manifest_digest: String,
    pub config: ImageConfig,
    /// Unpacked layer directories, lowest first.
    pub layer_dirs: Vec<PathBuf>,
}

/// What [`ImageStore::gc`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    pub images_removed: usize,
    pub blobs_removed: usize,
    pub layers_removed: usize,
}

/// Content-addressed store of images under one root directory.
pub struct ImageStore {
    root: PathBuf,
    registry: RegistryClient,
    locks: KeyLocks,
    /// Pulls hold it shared, gc exclusively.
    gc_lock: tokio::sync::RwLock<()>,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>, registry: RegistryClient) -> Result<Self> {
        let root = root.into();
        let s = root.to_string_lossy();
        if s.contains([':', ',']) {
            return Err(ImageError::Io {
                context: "image store root must not contain ':' or ',' (overlayfs options)",
                path: root.clone(),
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            });
        }
        for sub in ["blobs/sha256", "layers", "images", "tmp"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err("creating", p))?;
        }
        Ok(ImageStore {
            root,
            registry,
            locks: KeyLocks::default(),
            gc_lock: tokio::sync::RwLock::new(()),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The registry client used for pulls.
    pub fn registry(&self) -> &RegistryClient {
        &self.registry
    }

    /// Resolves `reference` to its manifest (or index) digest at the registry.
    pub async fn resolve_digest(&self, reference: &str) -> Result<String> {
        Ok(self
            .registry
            .resolve_digest(&ImageRef::parse(reference)?)
            .await?)
    }

    /// Resolves `reference` and returns it pinned: `registry/repo:tag@sha256:...`.
    pub async fn pin(&self, reference: &str) -> Result<String> {
        let r = ImageRef::parse(reference)?;
        let digest = self.registry.resolve_digest(&r).await?;
        Ok(r.with_digest(&digest).to_string())
    }

    /// Makes sure the image is present and unpacked. A reference pinned by digest whose content
    /// is all local does no network round trip; a tag is always resolved at the registry.
    pub async fn ensure_image(&self, reference: &str) -> Result<Image> {
        let r = ImageRef::parse(reference)?;
        let _shared = self.gc_lock.read().await;
        let (digest, top) = match &r.digest {
            Some(d) => (d.clone(), self.manifest_bytes(&r, d).await?),
            None => {
                let (bytes, d) = self.registry.fetch_manifest(&r).await?;
                self.put_blob(&d, &bytes).await?;
                (d, bytes)
            }
        };
        let pinned = r.with_digest(&digest);
        let name = pinned.to_string();
        let (manifest_digest, config_desc, layers) = match parse_manifest(&name, &top)? {
            Parsed::Manifest { config, layers } => (digest.clone(), config, layers),
            Parsed::Index(entries) => {
                let entry = pick_platform(&name, &entries)?;
                let bytes = self.manifest_bytes(&pinned, &entry.digest).await?;
                match parse_manifest(&name, &bytes)? {
                    Parsed::Manifest { config, layers } => (entry.digest.clone(), config, layers),
                    Parsed::Index(_) => {
                        return Err(ImageError::Unsupported {
                            image: name,
                            reason: "nested image indexes".into(),
                        });
                    }
                }
            }
        };
        let config_bytes = self.config_bytes(&pinned, &config_desc).await?;
        let (config, diff_ids) = parse_config(&name, &config_bytes)?;
        if diff_ids.len() != layers.len() {
            return Err(ImageError::Invalid {
                image: name,
                what: "config",
                reason: format!("{} diff_ids for {} layers", diff_ids.len(), layers.len()),
            });
        }
        // Owned items: borrowed ones make the future fail the `Send` check (rust#102211).
        let pinned_ref = &pinned;
        let layer_dirs: Vec<PathBuf> =
            futures::stream::iter(layers.into_iter().zip(diff_ids))
                .map(|(layer, diff_id)| async move {
                    self.ensure_layer(pinned_ref, &layer, &diff_id).await
                })
                .buffered(PARALLEL_LAYERS)
                .try_collect()
                .await?;
        self.record_image(&digest, &name).await;
        Ok(Image {
            reference: name,
            digest,
            manifest_digest,
            config,
            layer_dirs,
        })
    }

    /// Removes images, blobs and layers not reachable from `keep` (digests, or pinned references
    /// `...@sha256:...`); of an index only this host's platform is kept. Callers must keep every image
    /// a container still uses. Also clears `tmp/`.
    pub async fn gc(&self, keep: &[String]) -> Result<GcStats> {
        let _exclusive = self.gc_lock.write().await;
        let root = self.root.clone();
        let keep: Vec<String> = keep
            .iter()
            .map(|k| {
                k.rsplit_once('@')
                    .map_or(k.as_str(), |(_, d)| d)
                    .to_string()
            })
            .collect();
        tokio::task::spawn_blocking(move || gc_blocking(&root, &keep))
            .await
            .map_err(|e| ImageError::Io {
                context: "gc task",
                path: PathBuf::new(),
                source: std::io::Error::other(e),
            })?
    }

    fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        digest_hex(digest).map(|h| self.root.join("blobs/sha256").join(h))
    }

    fn tmp_path(&self, what: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}.{}.{n}", std::process::id()))
    }

    /// A manifest or index, from the store or else the registry.
    async fn manifest_bytes(&self, image: &ImageRef, digest: &str) -> Result<Vec<u8>> {
        if let Some(bytes) = self.local_json(digest).await {
            return Ok(bytes);
        }
        let (bytes, actual) = self
            .registry
            .fetch_manifest(&image.with_digest(digest))
            .await?;
        self.put_blob(&actual, &bytes).await?;
        Ok(bytes)
    }

    async fn config_bytes(&self, image: &ImageRef, desc: &Descriptor) -> Result<Vec<u8>> {
        if let Some(bytes) = self.local_json(&desc.digest).await {
            return Ok(bytes);
        }
        if desc.size as u64 > MAX_JSON_BLOB {
            return Err(ImageError::Invalid {
                image: image.to_string(),
                what: "config",
                reason: "too large".into(),
            });
        }
        let path = self.ensure_blob(image, desc).await?;
        tokio::fs::read(&path)
            .await
            .map_err(io_err("reading", path))
    }

    /// A small local blob, re-verified (a corrupt one is removed and `None` returned).
    async fn local_json(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let meta = tokio::fs::metadata(&path).await.ok()?;
        if meta.len() > MAX_JSON_BLOB {
            return None;
        }
        let bytes = tokio::fs::read(&path).await.ok()?;
        if format!("sha256:{}", hex::encode(Sha256::digest(&bytes))) == digest {
            return Some(bytes);
        }
        tracing::warn!(%digest, "local blob does not match its digest; removing it");
        let _ = tokio::fs::remove_file(&path).await;
        None
    }

    /// Stores already verified bytes under their digest.
    async fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let Some(path) = self.blob_path(digest) else {
            return Ok(());
        };
        let tmp = self.tmp_path("blob");
        let write = async {
            tokio::fs::write(&tmp, bytes)
                .await
                .map_err(io_err("writing", tmp.clone()))?;
            tokio::fs::rename(&tmp, &path)
                .await
                .map_err(io_err("renaming", tmp.clone()))
        };
        let res = write.await;
        if res.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        res
    }

    /// Downloads a blob unless present; returns its path.
    async fn ensure_blob(&self, image: &ImageRef, desc: &Descriptor) -> Result<PathBuf> {
        let path = self
            .blob_path(&desc.digest)
            .ok_or_else(|| ImageError::Invalid {
                image: image.to_string(),
                what: "manifest",
                reason: format!("bad digest {:?}", desc.digest),
            })?;
        let _key = self.locks.lock(&desc.digest).await;
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        let tmp = self.tmp_path("blob");
        self.registry
            .fetch_blob(image, &desc.digest, desc.size.max(0) as u64, &tmp)
            .await?;
        if let Err(e) = tokio::fs::rename(&tmp, &path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io_err("renaming", path)(e));
        }
        Ok(path)
    }

    /// Makes sure a layer is unpacked; returns its directory.
    async fn ensure_layer(
        &self,
        image: &ImageRef,
        desc: &Descriptor,
        diff_id: &str,
    ) -> Result<PathBuf> {
        let hex = digest_hex(diff_id).unwrap_or_default(); // checked by parse_config
        let dir = self.root.join("layers").join(hex);
        if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return Ok(dir);
        }
        let _key = self.locks.lock(&format!("layer:{hex}")).await;
        if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return Ok(dir);
        }
        let blob = self.ensure_blob(image, desc).await?;
        let tmp = self.tmp_path("layer");
        let (out, label, expected, name) = (
            dir.clone(),
            desc.digest.clone(),
            diff_id.to_string(),
            image.to_string(),
        );
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || -> Result<()> {
            std::fs::create_dir(&tmp).map_err(io_err("creating", tmp.clone()))?;
            let res = unpack_layer(&blob, &tmp, &label)
                .and_then(|actual| match actual == expected {
                    true => Ok(()),
                    false => Err(ImageError::Registry(RegistryError::DigestMismatch {
                        image: name,
                        expected,
                        actual,
                    })),
                })
                .and_then(|()| match std::fs::rename(&tmp, &out) {
                    Ok(()) => Ok(()),
                    Err(_) if out.is_dir() => Ok(()), // another process finished it first
                    Err(e) => Err(io_err("renaming", out.clone())(e)),
                });
            if tmp.exists() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            // The unpacked directory is the cache from now on (or the blob was bad).
            let _ = std::fs::remove_file(&blob);
            res
        })
        .await
        .map_err(|e| ImageError::Layer {
            digest: desc.digest.clone(),
            reason: format!("unpack task failed: {e}"),
        })??;
        tracing::debug!(layer = %desc.digest, elapsed = ?started.elapsed(), "layer unpacked");
        Ok(dir)
    }

    async fn record_image(&self, digest: &str, reference: &str) {
        if let Some(hex) = digest_hex(digest) {
            let tmp = self.tmp_path("image");
            let path = self.root.join("images").join(hex);
            if tokio::fs::write(&tmp, reference).await.is_ok()
                && tokio::fs::rename(&tmp, &path).await.is_err()
            {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
        }
    }
}

fn gc_blocking(root: &Path, keep: &[String]) -> Result<GcStats> {
    let blobs = root.join("blobs/sha256");
    let mut keep_blobs: HashSet<String> = HashSet::new();
    let mut keep_layers: HashSet<String> = HashSet::new();
    let read_small = |hex: &str| -> Option<Vec<u8>> {
        let p = blobs.join(hex);
        let m = std::fs::metadata(&p).ok()?;
        if m.len() > MAX_JSON_BLOB {
            None
        } else {
            std::fs::read(p).ok()
        }
    };
    let mut stack: Vec<(String, u8)> = keep.iter().map(|d| (d.clone(), 0)).collect();
    while let Some((digest, depth)) = stack.pop() {
        let Some(hex) = digest_hex(&digest) else {
            continue;
        };
        if !keep_blobs.insert(hex.to_string()) {
            continue;
        }
        let Some(bytes) = read_small(hex) else {
            continue;
        };
        match parse_manifest("", &bytes) {
            // Of an index, only the platform this host runs is kept.
            Ok(Parsed::Index(entries)) if depth == 0 => {
                if let Ok(e) = pick_platform("", &entries) {
                    stack.push((e.digest.clone(), 1));
                }
            }
            Ok(Parsed::Manifest { config, .. }) => {
                for d in referenced(&bytes) {
                    if let Some(h) = digest_hex(&d) {
                        keep_blobs.insert(h.to_string());
                    }
                }
                let cfg = digest_hex(&config.digest).and_then(&read_small);
                if let Some(Ok((_, diff_ids))) = cfg.map(|c| parse_config("", &c)) {
                    keep_layers.extend(
                        diff_ids
                            .iter()
                            .filter_map(|d| digest_hex(d))
                            .map(str::to_string),
                    );
                }
            }
            _ => {}
        }
    }
    let mut stats = GcStats::default();
    let sweep = |dir: PathBuf, keep: &HashSet<String>, count: &mut usize| -> Result<()> {
        for entry in std::fs::read_dir(&dir)
            .map_err(io_err("listing", dir.clone()))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            let path = entry.path();
            let res = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            res.map_err(io_err("removing", path))?;
            *count += 1;
        }
        Ok(())
    };
    let keep_images: HashSet<String> = keep
        .iter()
        .filter_map(|d| digest_hex(d))
        .map(str::to_string)
        .collect();
    sweep(root.join("images"), &keep_images, &mut stats.images_removed)?;
    sweep(blobs.clone(), &keep_blobs, &mut stats.blobs_removed)?;
    sweep(root.join("layers"), &keep_layers, &mut stats.layers_removed)?;
    sweep(root.join("tmp"), &HashSet::new(), &mut 0)?;
    Ok(stats)
}

/// One async mutex per key, dropped from the map when nobody holds or waits for it.
#[derive(Default)]
struct KeyLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyLocks {
    async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let m = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key.to_string()).or_default().clone()
        };
        KeyGuard {
            locks: self,
            key: key.to_string(),
            guard: Some(m.lock_owned().await),
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.locks.0.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}
