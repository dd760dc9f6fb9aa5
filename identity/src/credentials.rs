//! A node's or admin's credentials: root CA, own certificate and key, kept in one file.

use crate::{IdentityError, PeerIdentity};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Root CA certificate, own certificate and own private key, all PEM.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Credentials {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = self.identity().ok();
        f.debug_struct("Credentials")
            .field("identity", &id)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The identity in our own certificate.
    pub fn identity(&self) -> Result<PeerIdentity, IdentityError> {
        let der = crate::ca::first_cert_der(&self.cert_pem)?;
        crate::peer_identity(der.as_ref())
    }
    /// Hex SHA-256 of our root CA certificate (what join tokens pin).
    pub fn ca_digest(&self) -> Result<String, IdentityError> {
        crate::ca_digest(&self.ca_cert_pem)
    }
    /// Loads credentials saved by [`Credentials::save`].
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        load_json(path)
    }
    /// Saves atomically (write to a temporary file, fsync, rename) with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        save_json(path, self)
    }
}

/// What the `cluster` CLI reads from `--config` / `CLUSTER_CONFIG`: where the managers are and
/// the admin credentials. `cluster-manager init` writes it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AdminConfig {
    /// Manager addresses (host:port), tried in order.
    pub managers: Vec<String>,
    pub credentials: Credentials,
}

impl AdminConfig {
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        load_json(path)
    }
    /// Saves atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        save_json(path, self)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn load_json<T: DeserializeOwned>(path: &Path) -> Result<T, IdentityError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|source| IdentityError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `value` as JSON to a temporary file beside `path` (mode 0600), fsyncs it, renames it
/// over `path` and fsyncs the directory, so a crash leaves either the old or the new file.
fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<(), IdentityError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let json = serde_json::to_vec_pretty(value).map_err(|source| IdentityError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let file_name = path.file_name().ok_or_else(|| IdentityError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
    })?;
    let dir: PathBuf = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;

    let suffix: u64 = rand::random();
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}-{suffix:016x}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        // The umask can only remove bits, but make the mode exact all the same.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(&tmp))?;
        file.write_all(&json).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Role, RootCa, Subject, Validity};
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn creds() -> Credentials {
        let ca = RootCa::generate("c1").unwrap();
        let subject = Subject {
            node_id: "admin-1".into(),
            role: Role::Admin,
            cluster_id: "c1".into(),
        };
        ca.issue_keypair(&subject, Validity::for_duration(Duration::from_secs(3600)))
            .unwrap()
    }

    #[test]
    fn save_load_round_trip_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("creds.json");
        let c = creds();
        c.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = Credentials::load(&path).unwrap();
        assert_eq!(back.ca_cert_pem, c.ca_cert_pem);
        assert_eq!(back.cert_pem, c.cert_pem);
        assert_eq!(back.key_pem, c.key_pem);
        assert_eq!(back.identity().unwrap().node_id, "admin-1");

        // Overwriting a world-readable file leaves a 0600 file and no temporary files.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        c.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1);

        // The Debug form never shows the key.
        assert!(!format!("{c:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn admin_config_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let cfg = AdminConfig {
            managers: vec!["127.0.0.1:4242".into(), "m2:4242".into()],
            credentials: creds(),
        };
        cfg.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = AdminConfig::load(&path).unwrap();
        assert_eq!(back.managers, cfg.managers);
        assert_eq!(back.credentials.cert_pem, cfg.credentials.cert_pem);
    }

    #[test]
    fn load_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let e = Credentials::load(&missing).unwrap_err().to_string();
        assert!(e.contains("missing.json"), "{e}");
        let garbage = dir.path().join("garbage.json");
        std::fs::write(&garbage, "{ not json").unwrap();
        let e = AdminConfig::load(&garbage).unwrap_err().to_string();
        assert!(e.contains("garbage.json"), "{e}");
    }
}
