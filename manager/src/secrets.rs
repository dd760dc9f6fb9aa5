//! Encryption at rest of secret data.
//!
//! The Raft log, its snapshots and the redb files replicate everything the store holds, so the
//! key that protects secret data must not travel through them. As Swarm does without autolock,
//! each manager keeps the cluster's data-encryption key (DEK) in its data dir, beside its node
//! key (`secrets.key`, mode 0600):
//!
//! - `init` generates a random 256-bit key and writes it before Raft starts;
//! - a joining manager receives it in the answer to its `JoinRaft` call, which is made over mTLS
//!   with the manager certificate the CA just issued to it (so only an admitted manager gets it),
//!   and writes it before its config says `ready`. Until then it cannot encrypt nor decrypt;
//! - a manager restarted from a data dir made before secrets existed, and lacking the file,
//!   generates one (a lone manager; in a group, copy the file from another manager).
//!
//! Secret data is sealed with ChaCha20-Poly1305 (`ring`) before it is proposed: a random 96-bit
//! nonce per secret, stored in front of the ciphertext, and the secret's id as associated data so
//! that a ciphertext cannot be moved to another secret. Only the leader's Control service
//! (create) and Dispatcher (delivery to agents) ever see the plaintext, in memory.

use anyhow::{Context, Result, bail};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tonic::Status;

/// The length of the data-encryption key.
pub const KEY_LEN: usize = 32;

/// The cluster's data-encryption key, shared by the manager's services; empty until a joining
/// manager received it.
#[derive(Clone, Default)]
pub struct DataKey {
    key: Arc<RwLock<Option<[u8; KEY_LEN]>>>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({})", if self.is_set() { "set" } else { "unset" })
    }
}

fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets.key")
}

impl DataKey {
    /// A key of the given bytes (tests, joins).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        DataKey { key: Arc::new(RwLock::new(Some(bytes))) }
    }

    /// A new random key.
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut bytes).map_err(|_| anyhow::anyhow!("no randomness for the secrets key"))?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key saved in `data_dir`, or an unset key when there is none.
    pub fn load(data_dir: &Path) -> Result<Self> {
        let path = key_path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let Ok(bytes) = <[u8; KEY_LEN]>::try_from(bytes.as_slice()) else {
                    bail!("{} is not a {KEY_LEN}-byte key", path.display());
                };
                Ok(Self::from_bytes(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the key to `data_dir` (mode 0600, atomically).
    pub fn save(&self, data_dir: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let Some(bytes) = self.bytes() else { bail!("no secrets key to save") };
        let tmp = data_dir.join("secrets.key.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, key_path(data_dir))?;
        std::fs::File::open(data_dir)?.sync_all()?;
        Ok(())
    }

    pub fn is_set(&self) -> bool {
        self.key.read().map(|k| k.is_some()).unwrap_or(false)
    }

    /// The raw key, to hand to a joining manager.
    pub fn bytes(&self) -> Option<[u8; KEY_LEN]> {
        self.key.read().ok().and_then(|k| *k)
    }

    /// Sets the key received when joining.
    pub fn set(&self, bytes: [u8; KEY_LEN]) {
        if let Ok(mut key) = self.key.write() {
            *key = Some(bytes);
        }
    }

    fn sealing_key(&self) -> Result<LessSafeKey, Status> {
        let bytes = self
            .bytes()
            .ok_or_else(|| Status::unavailable("this manager has not received the cluster's secrets key yet"))?;
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| Status::internal("invalid secrets key"))?;
        Ok(LessSafeKey::new(unbound))
    }

    /// `nonce || ciphertext || tag` of `plaintext`, bound to the secret `id`.
    pub fn encrypt(&self, id: &str, plaintext: &[u8]) -> Result<Vec<u8>, Status> {
        let key = self.sealing_key()?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| Status::internal("no randomness for a nonce"))?;
        let mut sealed = plaintext.to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(id.as_bytes()), &mut sealed)
            .map_err(|_| Status::internal("cannot encrypt the secret"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plaintext of what [`DataKey::encrypt`] returned for the secret `id`.
    pub fn decrypt(&self, id: &str, sealed: &[u8]) -> Result<Vec<u8>, Status> {
        let key = self.sealing_key()?;
        if sealed.len() < NONCE_LEN {
            return Err(Status::data_loss(format!("secret {id}: the stored data is truncated")));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Status::internal("bad nonce"))?;
        let mut buffer = ciphertext.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(id.as_bytes()), &mut buffer)
            .map_err(|_| Status::data_loss(format!("secret {id}: cannot decrypt (wrong cluster key or altered data)")))?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding_to_the_id() {
        let key = DataKey::generate().unwrap();
        let sealed = key.encrypt("s1", b"hunter2-plaintext").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(key.decrypt("s1", &sealed).unwrap(), b"hunter2-plaintext");
        assert!(key.decrypt("s2", &sealed).is_err(), "bound to its id");
        let other = DataKey::generate().unwrap();
        assert!(other.decrypt("s1", &sealed).is_err());
        // A fresh nonce each time.
        assert_ne!(key.encrypt("s1", b"x").unwrap(), key.encrypt("s1", b"x").unwrap());
    }

    #[test]
    fn saved_and_loaded_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(!DataKey::load(dir.path()).unwrap().is_set());
        let key = DataKey::generate().unwrap();
        key.save(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("secrets.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(DataKey::load(dir.path()).unwrap().bytes(), key.bytes());
        assert!(DataKey::default().encrypt("x", b"y").is_err());
    }
}
