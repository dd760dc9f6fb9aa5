//! Image references: `[registry[:port]/]repository[:tag][@sha256:<hex>]`, with Docker Hub defaults
//! (`busybox` is `docker.io/library/busybox:latest`).

use std::fmt;
use std::str::FromStr;

use crate::{RegistryError, Result, digest_hex};

/// The registry used when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host with optional port, e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// `sha256:<hex>` when pinned.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses a reference string.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason: &str| RegistryError::InvalidReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(bad("empty reference"));
        }
        if s.len() > 512 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("too long or contains whitespace"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                if !d.starts_with("sha256:") {
                    return Err(bad("only sha256 digests are supported"));
                }
                if digest_hex(d).is_none() {
                    return Err(bad(
                        "digest must be sha256: followed by 64 lowercase hex digits",
                    ));
                }
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].find(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(bad(
                "tag must be 1-128 characters of [A-Za-z0-9_.-], not starting with . or -",
            ));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                if !valid_host(first) {
                    return Err(bad("invalid registry host (expected host[:port])"));
                }
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            DEFAULT_REGISTRY.to_string()
        } else {
            registry
        };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty() || !repository.split('/').all(valid_component) {
            return Err(bad(
                "repository must be lowercase path components of [a-z0-9] separated by '.', '_', '__' or '-'",
            ));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The same image pinned to `digest` (the tag is kept for readability).
    pub fn with_digest(&self, digest: &str) -> ImageRef {
        ImageRef {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// The reference as oci-client expects it.
    pub fn to_oci(&self) -> oci_client::Reference {
        let (registry, repository) = (self.registry.clone(), self.repository.clone());
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => oci_client::Reference::with_tag_and_digest(
                registry,
                repository,
                t.clone(),
                d.clone(),
            ),
            (_, Some(d)) => oci_client::Reference::with_digest(registry, repository, d.clone()),
            (Some(t), None) => oci_client::Reference::with_tag(registry, repository, t.clone()),
            (None, None) => {
                oci_client::Reference::with_tag(registry, repository, "latest".to_string())
            }
        }
    }
}

impl FromStr for ImageRef {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self> {
        ImageRef::parse(s)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `original` pinned to `digest`, keeping the user's spelling: `busybox` becomes
/// `busybox:latest@sha256:...` (as Swarm records it), `reg:5000/a/b:1` becomes
/// `reg:5000/a/b:1@sha256:...`. An `original` that already carries a digest has it replaced.
pub fn pinned_reference(original: &str, digest: &str) -> String {
    let name_tag = original.split_once('@').map_or(original, |(n, _)| n);
    let last = name_tag.rfind('/').map_or(0, |i| i + 1);
    if name_tag[last..].contains(':') {
        format!("{name_tag}@{digest}")
    } else {
        format!("{name_tag}:latest@{digest}")
    }
}

/// Checks a registry address as given to `--insecure-registry`: `host[:port]`.
pub fn validate_registry_host(host: &str) -> std::result::Result<(), String> {
    if valid_host(host) {
        Ok(())
    } else {
        Err(format!(
            "{host:?} is not a registry address: expected host[:port], e.g. registry.local:5000"
        ))
    }
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && !t.starts_with(['.', '-'])
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok
        && !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    // Separators: one '.', one or two '_', or any number of '-'.
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults_to_docker_hub() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let r = ImageRef::parse("grafana/grafana:10.1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "grafana/grafana", Some("10.1"))
        );
        assert_eq!(
            ImageRef::parse("index.docker.io/busybox")
                .unwrap()
                .repository,
            "library/busybox"
        );
    }

    #[test]
    fn registry_port_tag_digest() {
        let r = ImageRef::parse(&format!("127.0.0.1:5000/test/busybox:1.0@{D}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "test/busybox");
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        assert_eq!(r.digest.as_deref(), Some(D));
        let r = ImageRef::parse(&format!("localhost/x@{D}")).unwrap();
        assert_eq!((r.registry.as_str(), r.tag.clone()), ("localhost", None));
        assert_eq!(r.to_string(), format!("localhost/x@{D}"));
        let r = ImageRef::parse("localhost:5000/a/b").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("localhost:5000", "a/b", Some("latest"))
        );
        let o = ImageRef::parse("localhost:5000/a/b:v1").unwrap().to_oci();
        assert_eq!(
            (o.registry(), o.repository(), o.tag()),
            ("localhost:5000", "a/b", Some("v1"))
        );
    }

    #[test]
    fn pinned_reference_keeps_the_spelling() {
        assert_eq!(
            pinned_reference("busybox", D),
            format!("busybox:latest@{D}")
        );
        assert_eq!(
            pinned_reference("127.0.0.1:5000/a/b:1", D),
            format!("127.0.0.1:5000/a/b:1@{D}")
        );
        assert_eq!(
            pinned_reference("127.0.0.1:5000/a/b", D),
            format!("127.0.0.1:5000/a/b:latest@{D}")
        );
        let pinned = pinned_reference("localhost:5000/x", D);
        assert_eq!(ImageRef::parse(&pinned).unwrap().digest.as_deref(), Some(D));
    }

    #[test]
    fn registry_hosts() {
        for ok in [
            "registry.local:5000",
            "10.0.0.1:5000",
            "localhost",
            "docker.io",
        ] {
            assert!(validate_registry_host(ok).is_ok(), "{ok}");
        }
        for bad in ["", "http://reg:5000", "reg:port", "reg:5000/x", "a b"] {
            let e = validate_registry_host(bad).unwrap_err();
            assert!(e.contains("host[:port]"), "{bad}: {e}");
        }
    }

    #[test]
    fn clear_errors() {
        for (s, want) in [
            ("", "empty"),
            ("Busybox", "lowercase"),
            ("busybox:", "tag"),
            ("busybox@sha512:abc", "only sha256"),
            ("busybox@sha256:abc", "64"),
            ("a//b", "lowercase"),
            ("bad host:5000x/a", "whitespace"),
            ("reg.io:port/a", "registry host"),
            ("a/b:-x", "tag"),
        ] {
            let e = ImageRef::parse(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s:?}: {e}");
            assert!(e.contains(&format!("{s:?}")), "{e}");
        }
    }
}
