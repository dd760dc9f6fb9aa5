//! `cluster network ...` and `service create|update --network` against a real three-manager
//! cluster. No agents run here, so tasks stay pending and no per-host lease is taken: the lease
//! loop is covered in the manager's tests (`ipam::tests`, `api::networks::tests`).

use anyhow::{Context, Result, anyhow};
use e2e::{Lab, Tuning};

/// The data rows of a table (without the header).
fn rows(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

fn first_object(stdout: &str) -> Result<serde_json::Value> {
    let value: serde_json::Value =
        serde_json::from_str(stdout).with_context(|| format!("inspect JSON:\n{stdout}"))?;
    value
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .ok_or_else(|| anyhow!("inspect JSON is not a non-empty array: {value}"))
}

/// The first and last addresses of an IPv4 CIDR.
fn range(cidr: &str) -> (u32, u32) {
    let (addr, prefix) = cidr.split_once('/').expect("a CIDR");
    let addr: u32 = addr
        .parse::<std::net::Ipv4Addr>()
        .expect("an address")
        .into();
    let prefix: u32 = prefix.parse().expect("a prefix");
    let size = if prefix == 0 {
        u32::MAX
    } else {
        (1u32 << (32 - prefix)) - 1
    };
    (addr, addr + size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn network_cli_creates_inspects_attaches_and_removes() -> Result<()> {
    let lab = Lab::cluster("network-cli", 3, Tuning::fast()).await?;

    let out = lab.cli(&["info"]).await?;
    assert!(
        out.stdout.contains("10.0.0.0/8 (networks of /16)"),
        "the default pool is not in info: {out:?}"
    );

    let out = lab
        .cli(&["network", "create", "--label", "tier=front", "front"])
        .await?;
    assert!(out.success, "network create front: {out:?}");
    let front_id = out.stdout.trim().to_string();
    assert!(!front_id.is_empty(), "create printed {:?}", out.stdout);
    let out = lab
        .cli(&[
            "network",
            "create",
            "--subnet",
            "10.200.0.0/20",
            "--attachable",
            "back",
        ])
        .await?;
    assert!(out.success, "network create back: {out:?}");

    // Refusals name the field and write nothing.
    for (subnet, why) in [
        ("10.200.8.0/23", "overlaps network back"),
        ("10.201.0.1/16", "did you mean 10.201.0.0/16"),
        ("10.202.0.0/26", "too small"),
        ("banana", "not a CIDR"),
    ] {
        let out = lab
            .cli(&["network", "create", "--subnet", subnet, "bad"])
            .await?;
        assert!(!out.success, "--subnet {subnet} was accepted: {out:?}");
        assert!(
            out.stderr.contains("spec.subnet"),
            "{subnet}: {}",
            out.stderr
        );
        assert!(out.stderr.contains(why), "{subnet}: {}", out.stderr);
    }
    let out = lab.cli(&["network", "create", "front"]).await?;
    assert!(
        !out.success && out.stderr.contains("already in use"),
        "{out:?}"
    );

    let out = lab.cli(&["network", "ls"]).await?;
    assert!(out.success, "network ls: {out:?}");
    println!("{}", out.stdout);
    let header: Vec<&str> = out
        .stdout
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"],
        "{}",
        out.stdout
    );
    // back, front and the ingress network init created.
    let listed = rows(&out.stdout);
    assert_eq!(listed.len(), 3, "{}", out.stdout);
    let cols: Vec<&str> = listed[1].split_whitespace().collect();
    assert_eq!(cols[1..], ["front", "overlay", "swarm"], "{}", out.stdout);
    assert!(front_id.starts_with(cols[0]), "{}", out.stdout);
    let out = lab.cli(&["network", "ls", "-q"]).await?;
    assert_eq!(out.stdout.lines().count(), 3, "{out:?}");
    let cols: Vec<&str> = listed[2].split_whitespace().collect();
    assert_eq!(cols[1..], ["ingress", "overlay", "swarm"], "{}", out.stdout);

    // The routing mesh: first from the default pool, flagged ingress.
    let ingress = first_object(&lab.cli(&["network", "inspect", "ingress"]).await?.stdout)?;
    assert_eq!(ingress["ingress"], true, "{ingress}");
    assert_eq!(ingress["subnet"], "10.0.0.0/16", "{ingress}");
    let ingress_id = ingress["id"].as_str().unwrap_or("").to_string();

    // Inspect through another manager: the networks are in every replica's store.
    let out = lab
        .cli(&["--host", lab.addr(2), "network", "inspect", "front", "back"])
        .await?;
    assert!(out.success, "network inspect: {out:?}");
    let both: serde_json::Value = serde_json::from_str(&out.stdout)?;
    let (front, back) = (&both[0], &both[1]);
    assert_eq!(front["id"], front_id.as_str(), "{both}");
    assert_eq!(front["labels"]["tier"], "front", "{both}");
    assert_eq!(front["subnet"], "10.1.0.0/16", "{both}");
    assert_ne!(front["ingress"], true, "{both}");
    assert_eq!(back["subnet"], "10.200.0.0/20", "{both}");
    assert_eq!(back["attachable"], true, "{both}");
    let (front_subnet, back_subnet) = (
        front["subnet"].as_str().unwrap_or(""),
        back["subnet"].as_str().unwrap_or(""),
    );
    let (a, b) = (range(front_subnet), range(back_subnet));
    assert!(
        a.1 < b.0 || b.1 < a.0,
        "{front_subnet} overlaps {back_subnet}"
    );
    let (front_vni, back_vni) = (
        front["vni"].as_u64().unwrap_or(0),
        back["vni"].as_u64().unwrap_or(0),
    );
    assert!(
        front_vni >= 4096 && back_vni >= 4096 && front_vni != back_vni,
        "{both}"
    );
    let out = lab.cli(&["network", "inspect", "--pretty", "back"]).await?;
    assert!(
        out.stdout.contains("10.200.0.0/20") && out.stdout.contains(&back_vni.to_string()),
        "{out:?}"
    );

    // A service on both networks (docker's two syntaxes); a missing network names the field.
    let out = lab
        .cli(&[
            "service",
            "create",
            "-d",
            "--name",
            "bad",
            "--network",
            "nope",
            "--no-resolve-image",
            "busybox",
        ])
        .await?;
    assert!(
        !out.success && out.stderr.contains("spec.networks[0]"),
        "{out:?}"
    );
    let out = lab
        .cli(&[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--network",
            "front",
            "--network",
            "name=back,alias=api",
            "--no-resolve-image",
            "busybox",
            "httpd",
        ])
        .await?;
    assert!(out.success, "service create: {out:?}");
    let web = first_object(&lab.cli(&["service", "inspect", "web"]).await?.stdout)?;
    assert_eq!(
        web["spec"]["networks"][0]["target"],
        front_id.as_str(),
        "{web}"
    );
    assert_eq!(web["spec"]["networks"][1]["aliases"][0], "api", "{web}");
    let front = first_object(&lab.cli(&["network", "inspect", "front"]).await?.stdout)?;
    assert_eq!(front["services"][0], "web", "{front}");

    // In use: refused, naming the service.
    let out = lab.cli(&["network", "rm", "front"]).await?;
    assert!(!out.success, "network rm of a used network: {out:?}");
    assert!(
        out.stderr.contains("in use") && out.stderr.contains("web"),
        "{}",
        out.stderr
    );

    // Detach from back, and back can go; front goes once the service is removed.
    let out = lab
        .cli(&["service", "update", "-d", "--network-rm", "back", "web"])
        .await?;
    assert!(out.success, "service update --network-rm: {out:?}");
    let web = first_object(&lab.cli(&["service", "inspect", "web"]).await?.stdout)?;
    assert_eq!(
        web["spec"]["networks"].as_array().map(Vec::len),
        Some(1),
        "{web}"
    );
    let out = lab.cli(&["network", "rm", "back"]).await?;
    assert!(out.success, "network rm back: {out:?}");
    let out = lab
        .cli(&[
            "service",
            "update",
            "-d",
            "--network-add",
            "name=front,alias=x",
            "web",
        ])
        .await?;
    assert!(
        !out.success && out.stderr.contains("already attached"),
        "{out:?}"
    );
    let out = lab.cli(&["service", "rm", "web"]).await?;
    assert!(out.success, "service rm: {out:?}");
    let out = lab.cli(&["network", "rm", "front"]).await?;
    assert!(out.success, "network rm front: {out:?}");
    let out = lab.cli(&["network", "ls", "-q"]).await?;
    assert!(
        out.success && out.stdout.trim() == ingress_id,
        "only the ingress network is left: {out:?}"
    );

    // The ingress network stays while a service publishes ports.
    let out = lab
        .cli(&[
            "service",
            "create",
            "-d",
            "--name",
            "pub",
            "--publish",
            "published=8080,target=80",
            "--no-resolve-image",
            "busybox",
            "httpd",
        ])
        .await?;
    assert!(out.success, "service create --publish: {out:?}");
    let out = lab.cli(&["network", "rm", "ingress"]).await?;
    assert!(
        !out.success && out.stderr.contains("routing mesh is in use by service pub"),
        "{out:?}"
    );
    let out = lab.cli(&["service", "rm", "pub"]).await?;
    assert!(out.success, "service rm pub: {out:?}");
    let out = lab.cli(&["network", "inspect", "front"]).await?;
    assert!(!out.success && out.stderr.contains("not found"), "{out:?}");

    let mut lab = lab;
    lab.passed();
    Ok(())
}

/// `cluster-manager init` refuses a default address pool it could not carve networks from,
/// before it writes anything.
#[test]
fn init_refuses_a_bad_default_address_pool() -> Result<()> {
    let bin = e2e::bins::binary("cluster-manager")?;
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("m");
    for (pool, mask, why) in [
        ("10.0.0.0/16", "8", "mask length"),
        ("10.0.0.0/16", "25", "mask length"),
        ("10.0.0.1/8", "16", "host bits"),
    ] {
        let out = std::process::Command::new(&bin)
            .args(["init", "--listen-addr", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args([
                "--default-addr-pool",
                pool,
                "--default-addr-pool-mask-length",
                mask,
            ])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{pool} /{mask} was accepted: {stderr}"
        );
        assert!(stderr.contains(why), "{pool} /{mask}: {stderr}");
        assert!(
            !data_dir.exists(),
            "{pool} /{mask}: the data dir was written"
        );
    }
    Ok(())
}
