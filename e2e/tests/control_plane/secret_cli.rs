//! `cluster secret|config ...` and `service create|update --secret/--config` against a real
//! three-manager cluster: create from a file and from stdin, ls, inspect never shows a
//! secret's data, rm refused while a service uses it, and the plaintext is in no file of any
//! manager's data dir (Raft log, snapshots, redb files: it is encrypted before it is proposed).

use anyhow::{Context, Result, anyhow};
use e2e::bins::{CLI_BIN, binary_in};
use e2e::{Lab, Tuning};
use std::io::Write;
use std::process::Stdio;

fn first_object(stdout: &str) -> Result<serde_json::Value> {
    let value: serde_json::Value =
        serde_json::from_str(stdout).with_context(|| format!("inspect JSON:\n{stdout}"))?;
    value
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .ok_or_else(|| anyhow!("inspect JSON is not a non-empty array: {value}"))
}

/// `cluster ARGS...` with `input` on stdin.
fn cli_with_stdin(lab: &Lab, args: &[&str], input: &[u8]) -> Result<std::process::Output> {
    let mut child = std::process::Command::new(binary_in(lab.bin_dir(), CLI_BIN)?)
        .arg("--config")
        .arg(lab.admin_path())
        .args(args)
        .env_remove("CLUSTER_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(input)?;
    Ok(child.wait_with_output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secret_cli_creates_hides_refuses_and_never_writes_plaintext() -> Result<()> {
    let lab = Lab::cluster("secret-cli", 3, Tuning::fast()).await?;
    let from_file = b"file-secret-4c1d9e0b7a";
    let from_stdin = b"stdin-secret-93f2aa51c8";
    let file = lab.root().join("pw.txt");
    std::fs::write(&file, from_file)?;

    let out = lab
        .cli(&[
            "secret",
            "create",
            "--label",
            "team=db",
            "db_pw",
            file.to_str().unwrap_or_default(),
        ])
        .await?;
    assert!(out.success, "secret create from a file: {out:?}");
    let db_pw_id = out.stdout.trim().to_string();
    assert!(!db_pw_id.is_empty(), "{out:?}");
    let out = cli_with_stdin(&lab, &["secret", "create", "api_key", "-"], from_stdin)?;
    assert!(out.status.success(), "secret create from stdin: {out:?}");
    // A joined manager holds the cluster's key too (handed over when it joined): it encrypts.
    let joined = b"joined-secret-77aa01";
    let out = cli_with_stdin(
        &lab,
        &["--host", lab.addr(2), "secret", "create", "via_m3", "-"],
        joined,
    )?;
    assert!(
        out.status.success(),
        "secret create via a joined manager: {out:?}"
    );
    for i in 0..3 {
        let key = lab.root().join(format!("m{}", i + 1)).join("secrets.key");
        assert_eq!(std::fs::metadata(&key)?.len(), 32, "{}", key.display());
    }
    let out = lab.cli(&["secret", "rm", "via_m3"]).await?;
    assert!(out.success, "secret rm via_m3: {out:?}");
    let out = lab.cli(&["secret", "create", "db_pw", "-"]).await?;
    assert!(!out.success, "a name twice: {out:?}");
    let out = lab
        .cli(&[
            "secret",
            "create",
            "bad/name",
            file.to_str().unwrap_or_default(),
        ])
        .await?;
    assert!(!out.success && out.stderr.contains("spec.name"), "{out:?}");
    let config = lab.root().join("app.conf");
    std::fs::write(&config, b"listen 8080\n")?;
    let out = lab
        .cli(&[
            "config",
            "create",
            "app.conf",
            config.to_str().unwrap_or_default(),
        ])
        .await?;
    assert!(out.success, "config create: {out:?}");

    let out = lab.cli(&["secret", "ls"]).await?;
    assert!(out.success, "secret ls: {out:?}");
    let header: Vec<&str> = out
        .stdout
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["ID", "NAME", "CREATED", "UPDATED"],
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("db_pw") && out.stdout.contains("api_key"),
        "{}",
        out.stdout
    );
    let out = lab.cli(&["secret", "ls", "-q"]).await?;
    assert_eq!(out.stdout.lines().count(), 2, "{out:?}");
    let out = lab.cli(&["secret", "ls", "--format", "json"]).await?;
    let listed: serde_json::Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    // Inspect (through another manager) never shows the data; a config's is shown.
    let out = lab
        .cli(&[
            "--host",
            lab.addr(2),
            "secret",
            "inspect",
            "db_pw",
            "api_key",
        ])
        .await?;
    assert!(out.success, "secret inspect: {out:?}");
    for secret in [from_file.as_slice(), from_stdin.as_slice()] {
        let text = String::from_utf8_lossy(secret);
        assert!(!out.stdout.contains(text.as_ref()), "{}", out.stdout);
    }
    let both: serde_json::Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(both[0]["id"], db_pw_id.as_str(), "{both}");
    assert_eq!(both[0]["spec"]["labels"]["team"], "db", "{both}");
    let out = lab.cli(&["secret", "inspect", "--pretty", "db_pw"]).await?;
    assert!(
        out.stdout.contains("db_pw") && !out.stdout.contains("file-secret"),
        "{out:?}"
    );
    let out = lab
        .cli(&["config", "inspect", "--pretty", "app.conf"])
        .await?;
    assert!(out.stdout.contains("listen 8080"), "{out:?}");

    // A service that uses them; an unknown one names the field.
    let out = lab
        .cli(&[
            "service",
            "create",
            "-d",
            "--name",
            "bad",
            "--secret",
            "nope",
            "--no-resolve-image",
            "busybox",
        ])
        .await?;
    assert!(
        !out.success && out.stderr.contains("spec.secrets[0].source"),
        "{out:?}"
    );
    let out = lab
        .cli(&[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--secret",
            "db_pw",
            "--secret",
            "source=api_key,target=key,uid=1000,mode=0400",
            "--config-ref",
            "source=app.conf,target=/etc/app.conf",
            "--no-resolve-image",
            "busybox",
        ])
        .await?;
    assert!(out.success, "service create: {out:?}");
    let web = first_object(&lab.cli(&["service", "inspect", "web"]).await?.stdout)?;
    let secrets = &web["spec"]["secrets"];
    assert_eq!(secrets[0]["source"], db_pw_id.as_str(), "{web}");
    assert_eq!(secrets[0]["target"], "db_pw", "{web}");
    assert_eq!(secrets[1]["target"], "key", "{web}");
    assert_eq!(secrets[1]["uid"], 1000, "{web}");
    assert_eq!(secrets[1]["mode"], 0o400, "{web}");
    assert_eq!(
        web["spec"]["configs"][0]["target"], "/etc/app.conf",
        "{web}"
    );

    let out = lab.cli(&["secret", "rm", "db_pw"]).await?;
    assert!(
        !out.success && out.stderr.contains("in use by service web"),
        "{out:?}"
    );
    let out = lab.cli(&["config", "rm", "app.conf"]).await?;
    assert!(
        !out.success && out.stderr.contains("in use by service web"),
        "{out:?}"
    );
    let inspected = first_object(&lab.cli(&["secret", "inspect", "db_pw"]).await?.stdout)?;
    assert_eq!(inspected["services"][0], "web", "{inspected}");

    // Detached by update, then removable.
    let out = lab
        .cli(&["service", "update", "-d", "--secret-rm", "db_pw", "web"])
        .await?;
    assert!(out.success, "service update --secret-rm: {out:?}");
    let out = lab.cli(&["secret", "rm", "db_pw"]).await?;
    assert!(out.success, "secret rm: {out:?}");
    let out = lab.cli(&["secret", "ls", "-q"]).await?;
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");

    // Neither plaintext is in any file of any manager (logs included).
    std::fs::remove_file(&file)?;
    for secret in [
        from_file.as_slice(),
        from_stdin.as_slice(),
        joined.as_slice(),
    ] {
        let found = e2e::netlab::disk::files_containing(lab.root(), secret);
        assert!(found.is_empty(), "plaintext of a secret found in {found:?}");
    }
    // The config is stored as given (a check that the scan sees the stores).
    std::fs::remove_file(&config)?;
    assert!(
        !e2e::netlab::disk::files_containing(lab.root(), b"listen 8080").is_empty(),
        "the scan found no config data: it does not read the stores"
    );
    let mut lab = lab;
    lab.passed();
    Ok(())
}
