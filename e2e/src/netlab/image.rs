//! The lab's busybox image: `/bin/busybox` (busybox-static) plus applet symlinks, pushed with
//! oci-client to the lab's registry (the approach of agent/tests/support, copied here because
//! test support is not importable).

use anyhow::{Context, Result};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use sha2::{Digest, Sha256};
use std::io::Write;

pub const BUSYBOX: &str = "/bin/busybox";

/// The applets linked in /bin of the image.
pub const APPLETS: &[&str] = &[
    "sh", "httpd", "sleep", "echo", "cat", "wget", "nslookup", "hostname", "ls", "true", "env",
];

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An uncompressed layer: bin/busybox plus applet symlinks, etc/passwd, tmp, www.
pub fn busybox_tar() -> Result<Vec<u8>> {
    busybox_tar_with(&[])
}

/// [`busybox_tar`] plus `files` (path in the image under an existing directory, content).
pub fn busybox_tar_with(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let busybox = std::fs::read(BUSYBOX).with_context(|| format!("cannot read {BUSYBOX}"))?;
    let mut b = tar::Builder::new(Vec::new());
    let header = |ty: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_size(size);
        h
    };
    for dir in ["bin/", "etc/", "tmp/", "www/"] {
        b.append_data(
            &mut header(tar::EntryType::Directory, 0o755, 0),
            dir,
            std::io::empty(),
        )?;
    }
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o755, busybox.len() as u64),
        "bin/busybox",
        busybox.as_slice(),
    )?;
    let passwd: &[u8] =
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o644, passwd.len() as u64),
        "etc/passwd",
        passwd,
    )?;
    for applet in APPLETS {
        b.append_link(
            &mut header(tar::EntryType::Symlink, 0o777, 0),
            format!("bin/{applet}"),
            "busybox",
        )?;
    }
    for (path, content) in files {
        b.append_data(
            &mut header(tar::EntryType::Regular, 0o644, content.len() as u64),
            path,
            *content,
        )?;
    }
    Ok(b.into_inner()?)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data)?;
    Ok(e.finish()?)
}

/// Pushes `<addr>/<repo_tag>` (busybox, no Entrypoint, Cmd ["sh"]) over plain HTTP; returns
/// the manifest digest. Must run where `addr` is reachable (inside the lab: see
/// [`super::NetLab::in_host`]).
pub async fn push_busybox(addr: &str, repo_tag: &str) -> Result<String> {
    push_busybox_with(addr, repo_tag, &[]).await
}

/// [`push_busybox`] of an image with extra `files` (see [`busybox_tar_with`]).
pub async fn push_busybox_with(addr: &str, repo_tag: &str, files: &[(&str, &[u8])]) -> Result<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tar = busybox_tar_with(files)?;
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["sh"], "Env": ["PATH=/bin"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [sha256(&tar)] },
    }))?;
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let reference: oci_client::Reference = format!("{addr}/{repo_tag}").parse()?;
    let layers = vec![oci_client::client::ImageLayer::oci_v1_gzip(
        gzip(&tar)?,
        None,
    )];
    let config = oci_client::client::Config::oci_v1(config, None);
    client
        .push(&reference, &layers, config, &RegistryAuth::Anonymous, None)
        .await
        .with_context(|| format!("pushing {reference}"))?;
    Ok(client
        .fetch_manifest_digest(&reference, &RegistryAuth::Anonymous)
        .await?)
}

/// The docker-registry config: storage under `storage`, listening on `addr`.
pub fn registry_config(storage: &std::path::Path, addr: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
        storage.display()
    )
}
