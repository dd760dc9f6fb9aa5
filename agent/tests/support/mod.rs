//! Test support for the image store: a real `docker-registry` on a random port, test images
//! built from /bin/busybox, and requirement checks (fail under CI=true, skip otherwise).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use sha2::{Digest, Sha256};

pub const REGISTRY_BIN: &str = "docker-registry";
pub const BUSYBOX: &str = "/bin/busybox";

/// Whether the test may run: with CI=true a missing requirement is a failure, otherwise the
/// test is skipped with a printed reason.
pub fn require(test: &str, what: &str, ok: bool) -> bool {
    if ok {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: requirement missing under CI=true: {what}");
    }
    eprintln!("SKIPPED {test}: requires {what}");
    false
}

pub fn have_binary(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Registry + busybox present.
pub fn require_registry(test: &str) -> bool {
    require(
        test,
        "the docker-registry binary (Debian package docker-registry)",
        have_binary(REGISTRY_BIN),
    ) && require(
        test,
        "/bin/busybox (Debian package busybox-static)",
        Path::new(BUSYBOX).exists(),
    )
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `docker-registry serve` child process with its own storage; killed on drop.
pub struct Registry {
    child: Option<Child>,
    pub addr: String,
    pub dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry and waits (bounded) until `GET /v2/` answers.
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                storage.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let mut reg = Registry {
            child: Some(child),
            addr,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if reg.v2_answers() {
                return reg;
            }
            if let Some(status) = reg.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("docker-registry exited ({status}): {}", reg.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer GET /v2/ within 20s: {}",
                reg.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn v2_answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(&self.addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).as_bytes())
            .is_err()
        {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(s.read(&mut buf), Ok(n) if n >= 12 && buf.starts_with(b"HTTP/1.") && &buf[9..12] == b"200")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Where the registry keeps blob `digest`.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir.path().join(format!(
            "storage/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }

    /// Kills the registry (idempotent); its port then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An entry of a test layer.
pub enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// Builds an uncompressed tar from entries.
pub fn tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Symlink(p, target) | E::Hardlink(p, target) => {
                let ty = if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                h.set_entry_type(ty);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The busybox applets linked in the test image.
pub const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "httpd", "ls", "cat", "env", "id", "true", "wget", "nc",
];

/// An uncompressed layer: bin/busybox plus applet symlinks, etc/passwd, tmp.
pub fn busybox_tar() -> Vec<u8> {
    let busybox = std::fs::read(BUSYBOX).unwrap();
    let links: Vec<String> = APPLETS.iter().map(|a| format!("bin/{a}")).collect();
    let mut entries = vec![
        E::Dir("bin/"),
        E::File("bin/busybox", &busybox, 0o755),
        E::Dir("etc/"),
        E::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
            0o644,
        ),
        E::Dir("tmp/"),
    ];
    entries.extend(links.iter().map(|l| E::Symlink(l, "busybox")));
    tar(&entries)
}

/// An image config for layers with the given diff_ids.
pub fn config_json(
    diff_ids: &[String],
    entrypoint: &[&str],
    cmd: &[&str],
    env: &[&str],
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": entrypoint, "Cmd": cmd, "Env": env, "WorkingDir": "/tmp", "User": "0:0" },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .unwrap()
}

pub fn push_client() -> oci_client::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
}

/// A layer to push: blob bytes, media type, diff_id.
pub struct Layer {
    pub blob: Vec<u8>,
    pub media_type: &'static str,
    pub diff_id: String,
}

impl Layer {
    pub fn gz(tar: Vec<u8>, docker: bool) -> Layer {
        let media_type = if docker {
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        };
        Layer {
            diff_id: sha256(&tar),
            blob: gzip(&tar),
            media_type,
        }
    }
    pub fn plain(tar: Vec<u8>, docker: bool) -> Layer {
        let media_type = if docker {
            "application/vnd.docker.image.rootfs.diff.tar"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        Layer {
            diff_id: sha256(&tar),
            blob: tar,
            media_type,
        }
    }
}

/// Pushes blobs and a raw manifest (OCI or Docker v2 schema 2); returns the manifest digest.
pub async fn push_image(
    addr: &str,
    repo_tag: &str,
    layers: &[Layer],
    config: &[u8],
    docker: bool,
) -> String {
    let client = push_client();
    let reference: oci_client::Reference = format!("{addr}/{repo_tag}").parse().unwrap();
    let _ = client
        .auth(
            &reference,
            &RegistryAuth::Anonymous,
            oci_client::RegistryOperation::Push,
        )
        .await;
    for l in layers {
        client
            .push_blob(&reference, l.blob.clone(), &sha256(&l.blob))
            .await
            .unwrap();
    }
    client
        .push_blob(&reference, config.to_vec(), &sha256(config))
        .await
        .unwrap();
    let (manifest_type, config_type) = if docker {
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
        )
    } else {
        (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
        )
    };
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": { "mediaType": config_type, "digest": sha256(config), "size": config.len() },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type, "digest": sha256(&l.blob), "size": l.blob.len() })).collect::<Vec<_>>(),
    }))
    .unwrap();
    push_manifest(addr, repo_tag, &manifest, manifest_type).await
}

/// Pushes raw manifest bytes; returns their digest.
pub async fn push_manifest(
    addr: &str,
    repo_tag: &str,
    manifest: &[u8],
    media_type: &str,
) -> String {
    let client = push_client();
    let reference: oci_client::Reference = format!("{addr}/{repo_tag}").parse().unwrap();
    client
        .push_manifest_raw(
            &reference,
            manifest.to_vec(),
            http::HeaderValue::from_str(media_type).unwrap(),
        )
        .await
        .unwrap();
    sha256(manifest)
}

/// Pushes the busybox test image with oci-client's high-level `push`; returns its digest.
pub async fn push_busybox(addr: &str, repo_tag: &str) -> String {
    let tar = busybox_tar();
    let diff_id = sha256(&tar);
    let config = config_json(
        &[diff_id],
        &["/bin/sh", "-c"],
        &["echo hello"],
        &["PATH=/bin", "GREETING=hi"],
    );
    let client = push_client();
    let reference: oci_client::Reference = format!("{addr}/{repo_tag}").parse().unwrap();
    let layers = vec![oci_client::client::ImageLayer::oci_v1_gzip(
        gzip(&tar),
        None,
    )];
    let config = oci_client::client::Config::oci_v1(config, None);
    client
        .push(&reference, &layers, config, &RegistryAuth::Anonymous, None)
        .await
        .unwrap();
    client
        .fetch_manifest_digest(&reference, &RegistryAuth::Anonymous)
        .await
        .unwrap()
}

/// A store pointing at `addr` as an insecure (plain http) registry.
pub fn store(root: &Path, addr: &str) -> agent::image::ImageStore {
    let config = agent::image::RegistryConfig {
        insecure_registries: vec![addr.to_string()],
        connect_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    agent::image::ImageStore::open(root, agent::image::RegistryClient::new(config).unwrap())
        .unwrap()
}

/// Every file below `dir`, relative, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The size of manifest `digest` in `repo`.
pub async fn manifest_size(addr: &str, repo: &str, digest: &str) -> usize {
    let reference: oci_client::Reference = format!("{addr}/{repo}@{digest}").parse().unwrap();
    let types = [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ];
    push_client()
        .pull_manifest_raw(&reference, &RegistryAuth::Anonymous, &types)
        .await
        .unwrap()
        .0
        .len()
}
