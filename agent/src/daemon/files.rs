//! Secrets and configs on the node.
//!
//! The session hands over the data of the secrets and configs the node's tasks reference; it is
//! kept in memory only. When a task that uses secrets is prepared, a tmpfs is mounted at
//! `<data dir>/secrets/<task id>` (the `secrets` dir is 0700, so host users cannot reach it),
//! each secret is written there with its uid, gid and mode, and the directory is bound
//! read-only at `/run/secrets` in the container: secret data never reaches a disk. Configs are
//! written under `<data dir>/configs/<task id>/` and each bound read-only at its target.
//! Both go when the task's rootfs is released, and at agent start for tasks without a container.

use super::executor::{Collected, Images, Prepared};
use super::plan::Keep;
use crate::runtime::{ContainerSpec, MountSpec};
use proto::v1::{FileReference, SecretData, ServiceSpec, SessionMessage};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// How long a task waits for the data of a secret or config it references.
pub const WAIT_FOR_DATA: Duration = Duration::from_secs(10);
/// Where the secrets directory appears in containers.
pub const SECRETS_TARGET: &str = "/run/secrets";
/// The size of a task's secrets tmpfs.
const SECRETS_TMPFS_SIZE: u64 = 16 * 1024 * 1024;

/// The data of one secret or config.
type Data = Vec<u8>;

#[derive(Default)]
struct Received {
    secrets: HashMap<String, SecretData>,
    configs: HashMap<String, SecretData>,
}

/// The secrets and configs received from the managers, and the tasks' files.
pub struct TaskFiles {
    root: PathBuf,
    received: Mutex<Received>,
    arrived: Notify,
}

impl TaskFiles {
    /// Files under `data_dir/secrets` and `data_dir/configs`.
    pub fn new(data_dir: &Path) -> Arc<Self> {
        Arc::new(TaskFiles {
            root: data_dir.to_path_buf(),
            received: Mutex::default(),
            arrived: Notify::new(),
        })
    }

    fn secrets_dir(&self, task_id: &str) -> PathBuf {
        self.root.join("secrets").join(task_id)
    }

    fn configs_dir(&self, task_id: &str) -> PathBuf {
        self.root.join("configs").join(task_id)
    }

    /// Takes the secrets and configs of a session message: a full message replaces what was
    /// received before, a delta adds and removes.
    pub fn apply(&self, message: &mut SessionMessage) {
        let full = message.kind == "full";
        let mut received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        if full {
            received.secrets.clear();
            received.configs.clear();
        }
        for id in &message.removed_secrets {
            received.secrets.remove(id);
        }
        for id in &message.removed_configs {
            received.configs.remove(id);
        }
        let added = !message.secrets.is_empty() || !message.configs.is_empty();
        for s in std::mem::take(&mut message.secrets) {
            received.secrets.insert(s.id.clone(), s);
        }
        for c in std::mem::take(&mut message.configs) {
            received.configs.insert(c.id.clone(), c);
        }
        drop(received);
        if added {
            self.arrived.notify_waiters();
        }
    }

    /// The data of every reference, or the first missing one (`"secret NAME"`).
    fn lookup(&self, spec: &ServiceSpec) -> Result<(Vec<Data>, Vec<Data>), String> {
        let received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        let get = |table: &HashMap<String, SecretData>, r: &FileReference, kind: &str| {
            table
                .get(&r.source)
                .map(|d| d.data.clone())
                .ok_or_else(|| format!("{kind} {}", display_name(r)))
        };
        let secrets = spec
            .secrets
            .iter()
            .map(|r| get(&received.secrets, r, "secret"))
            .collect::<Result<_, _>>()?;
        let configs = spec
            .configs
            .iter()
            .map(|r| get(&received.configs, r, "config"))
            .collect::<Result<_, _>>()?;
        Ok((secrets, configs))
    }

    /// Writes the task's secrets and configs and returns the mounts that give them to its
    /// container. Waits up to [`WAIT_FOR_DATA`] for data not received yet.
    pub async fn prepare(
        self: &Arc<Self>,
        task_id: &str,
        spec: &ServiceSpec,
    ) -> Result<Vec<MountSpec>, String> {
        self.prepare_within(task_id, spec, WAIT_FOR_DATA).await
    }

    async fn prepare_within(
        self: &Arc<Self>,
        task_id: &str,
        spec: &ServiceSpec,
        wait: Duration,
    ) -> Result<Vec<MountSpec>, String> {
        if spec.secrets.is_empty() && spec.configs.is_empty() {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + wait;
        let (secrets, configs) = loop {
            let arrived = self.arrived.notified();
            match self.lookup(spec) {
                Ok(data) => break data,
                Err(missing) => {
                    if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                        return Err(format!(
                            "{missing} was not received from the managers within {wait:?}"
                        ));
                    }
                }
            }
        };
        let this = self.clone();
        let (task, spec) = (task_id.to_string(), spec.clone());
        let written =
            tokio::task::spawn_blocking(move || this.write(&task, &spec, &secrets, &configs))
                .await
                .map_err(|e| format!("writing secrets and configs: {e}"))?;
        if written.is_err() {
            self.release(task_id).await;
        }
        written
    }

    fn write(
        &self,
        task_id: &str,
        spec: &ServiceSpec,
        secrets: &[Vec<u8>],
        configs: &[Vec<u8>],
    ) -> Result<Vec<MountSpec>, String> {
        let mut mounts = Vec::new();
        if !spec.secrets.is_empty() {
            let parent = self.root.join("secrets");
            create_private_dir(&parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
            let dir = self.secrets_dir(task_id);
            mount_tmpfs(&dir)
                .map_err(|e| format!("mounting the secrets tmpfs at {}: {e}", dir.display()))?;
            for (r, data) in spec.secrets.iter().zip(secrets) {
                let target = if r.target.is_empty() {
                    display_name(r)
                } else {
                    r.target.clone()
                };
                write_file(&dir.join(&target), data, r)
                    .map_err(|e| format!("writing secret {}: {e}", display_name(r)))?;
            }
            // Container users other than root must reach their files; host users cannot pass
            // the 0700 parent.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
            mounts.push(MountSpec::Bind {
                source: dir,
                target: SECRETS_TARGET.into(),
                readonly: true,
            });
        }
        if !spec.configs.is_empty() {
            let dir = self.configs_dir(task_id);
            create_private_dir(&self.root.join("configs")).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            for (i, (r, data)) in spec.configs.iter().zip(configs).enumerate() {
                let file = dir.join(i.to_string());
                write_file(&file, data, r)
                    .map_err(|e| format!("writing config {}: {e}", display_name(r)))?;
                let target = if r.target.is_empty() {
                    format!("/{}", display_name(r))
                } else {
                    r.target.clone()
                };
                mounts.push(MountSpec::Bind {
                    source: file,
                    target: target.into(),
                    readonly: true,
                });
            }
        }
        Ok(mounts)
    }

    /// Unmounts and removes the task's secrets and configs.
    pub async fn release(&self, task_id: &str) {
        let (secrets, configs) = (self.secrets_dir(task_id), self.configs_dir(task_id));
        let task = task_id.to_string();
        let _ =
            tokio::task::spawn_blocking(move || remove_task_dirs(&task, &secrets, &configs)).await;
    }

    /// At agent start: removes the files of tasks that have no container any more.
    pub fn cleanup(&self, containers: &HashSet<String>) {
        for kind in ["secrets", "configs"] {
            let Ok(entries) = std::fs::read_dir(self.root.join(kind)) else {
                continue;
            };
            for entry in entries.flatten() {
                let task = entry.file_name().to_string_lossy().into_owned();
                if !containers.contains(&task) {
                    remove_task_dirs(&task, &self.secrets_dir(&task), &self.configs_dir(&task));
                }
            }
        }
    }
}

fn display_name(r: &FileReference) -> String {
    r.source.clone()
}

fn remove_task_dirs(task: &str, secrets: &Path, configs: &Path) {
    if secrets.exists() {
        if let Err(e) = nix::mount::umount2(secrets, nix::mount::MntFlags::MNT_DETACH)
            && e != nix::errno::Errno::EINVAL
        {
            tracing::warn!(task, error = %e, "cannot unmount the secrets tmpfs");
        }
        if let Err(e) = std::fs::remove_dir_all(secrets) {
            tracing::warn!(task, error = %e, "cannot remove the secrets dir");
        }
    }
    if configs.exists()
        && let Err(e) = std::fs::remove_dir_all(configs)
    {
        tracing::warn!(task, error = %e, "cannot remove the configs dir");
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn mount_tmpfs(dir: &Path) -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    let options = format!("mode=0700,size={SECRETS_TMPFS_SIZE}");
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )
    .map_err(|e| e.to_string())
}

fn write_file(path: &Path, data: &[u8], r: &FileReference) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(data)?;
    std::os::unix::fs::fchown(&file, Some(r.uid), Some(r.gid))?;
    file.set_permissions(std::fs::Permissions::from_mode(r.mode.unwrap_or(0o444)))?;
    Ok(())
}

/// Adds the mounts of the task's secrets and configs to `cspec` (the executor's prepare step).
pub async fn mount_into(
    files: Option<Arc<TaskFiles>>,
    task_id: &str,
    spec: &ServiceSpec,
    cspec: &mut ContainerSpec,
) -> Result<(), String> {
    if spec.secrets.is_empty() && spec.configs.is_empty() {
        return Ok(());
    }
    let files =
        files.ok_or_else(|| "secrets and configs are not supported by this agent".to_string())?;
    cspec.mounts.extend(files.prepare(task_id, spec).await?);
    Ok(())
}

/// [`Images`] that also releases a task's secrets and configs with its rootfs.
pub struct WithFiles<I> {
    pub images: Arc<I>,
    pub files: Arc<TaskFiles>,
}

impl<I: Images> Images for WithFiles<I> {
    async fn prepare(&self, reference: &str, task_id: &str) -> Result<Prepared, String> {
        self.images.prepare(reference, task_id).await
    }

    async fn release(&self, task_id: &str) {
        self.files.release(task_id).await;
        self.images.release(task_id).await;
    }

    async fn collect(&self, keep: &Keep) -> Result<Option<Collected>, String> {
        self.images.collect(keep).await
    }

    fn files(&self) -> Option<Arc<TaskFiles>> {
        Some(self.files.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(id: &str, bytes: &[u8]) -> SecretData {
        SecretData {
            id: id.into(),
            name: format!("n-{id}"),
            data: bytes.to_vec(),
        }
    }

    #[test]
    fn full_messages_replace_deltas_add_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let files = TaskFiles::new(dir.path());
        let mut full = SessionMessage {
            kind: "full".into(),
            secrets: vec![data("s1", b"a")],
            configs: vec![data("c1", b"b")],
            ..Default::default()
        };
        files.apply(&mut full);
        let spec = |s: &str, c: &str| ServiceSpec {
            secrets: vec![FileReference {
                source: s.into(),
                ..Default::default()
            }],
            configs: vec![FileReference {
                source: c.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(files.lookup(&spec("s1", "c1")).is_ok());
        let mut delta = SessionMessage {
            kind: "delta".into(),
            secrets: vec![data("s2", b"x")],
            removed_secrets: vec!["s1".into()],
            ..Default::default()
        };
        files.apply(&mut delta);
        assert_eq!(files.lookup(&spec("s1", "c1")).unwrap_err(), "secret s1");
        assert!(files.lookup(&spec("s2", "c1")).is_ok());
        let mut empty_full = SessionMessage {
            kind: "full".into(),
            ..Default::default()
        };
        files.apply(&mut empty_full);
        assert_eq!(files.lookup(&spec("s2", "c1")).unwrap_err(), "secret s2");
    }

    #[tokio::test]
    async fn a_missing_secret_is_waited_for_then_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = TaskFiles::new(dir.path());
        let spec = ServiceSpec {
            secrets: vec![FileReference {
                source: "gone".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = files
            .prepare_within("t1", &spec, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            err.contains("secret gone") && err.contains("100ms"),
            "{err}"
        );
        // Configs need no tmpfs: written and bound once their data arrives.
        let spec = ServiceSpec {
            configs: vec![FileReference {
                source: "c1".into(),
                target: "/etc/app.conf".into(),
                mode: Some(0o440),
                ..Default::default()
            }],
            ..Default::default()
        };
        let waiting = {
            let files = files.clone();
            tokio::spawn(async move { files.prepare("t2", &spec).await })
        };
        tokio::task::yield_now().await;
        files.apply(&mut SessionMessage {
            kind: "delta".into(),
            configs: vec![data("c1", b"conf")],
            ..Default::default()
        });
        let mounts = waiting.await.unwrap();
        if nix::unistd::geteuid().is_root() {
            let mounts = mounts.unwrap();
            let MountSpec::Bind {
                source,
                target,
                readonly,
            } = &mounts[0]
            else {
                panic!()
            };
            assert_eq!(
                (target.as_path(), *readonly),
                (Path::new("/etc/app.conf"), true)
            );
            assert_eq!(std::fs::read(source).unwrap(), b"conf");
            assert_eq!(
                std::fs::metadata(source).unwrap().permissions().mode() & 0o7777,
                0o440
            );
            files.release("t2").await;
            assert!(!source.exists());
        }
    }
}
