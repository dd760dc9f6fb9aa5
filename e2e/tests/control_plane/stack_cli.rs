//! `cluster stack ...` against a real single-manager cluster (no agents: tasks stay pending, so
//! deployments run with `-d`; no registry: `--no-resolve-image`).

use std::collections::HashMap;

use anyhow::{Context, Result};
use e2e::{Lab, Tuning};

const LABEL: &str = "com.docker.stack.namespace";

const V1: &str = r#"
version: "3.8"
x-common: &common
  image: busybox:1.36
  deploy: {replicas: 2}
services:
  web:
    <<: *common
    command: httpd -f -p 80
    ports: ["8080:80"]
    networks:
      front:
        aliases: [www]
  api:
    <<: *common
    environment:
      - MODE=${MODE:-prod}
    networks: [front, back]
  db:
    image: busybox:1.36
    depends_on: [api]
networks:
  front:
    attachable: true
  back:
    labels: {tier: back}
"#;

/// The data rows of a table (without the header).
fn rows(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// `stack services --format json`, by service name.
async fn services(lab: &Lab, stack: &str) -> Result<HashMap<String, serde_json::Value>> {
    let out = lab
        .cli(&["stack", "services", "--format", "json", stack])
        .await?;
    assert!(out.success, "stack services --format json: {out:?}");
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&out.stdout).with_context(|| format!("JSON:\n{}", out.stdout))?;
    Ok(list
        .into_iter()
        .map(|s| {
            (
                s["spec"]["name"].as_str().unwrap_or_default().to_string(),
                s,
            )
        })
        .collect())
}

fn versions(services: &HashMap<String, serde_json::Value>) -> HashMap<String, u64> {
    services
        .iter()
        .map(|(name, s)| (name.clone(), s["version"].as_u64().unwrap_or(0)))
        .collect()
}

async fn network_names(lab: &Lab) -> Result<Vec<String>> {
    let out = lab.cli(&["network", "ls"]).await?;
    assert!(out.success, "network ls: {out:?}");
    Ok(rows(&out.stdout)
        .iter()
        .filter_map(|r| r.split_whitespace().nth(1).map(str::to_string))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stack_cli_deploys_updates_prunes_and_removes() -> Result<()> {
    let mut lab = Lab::cluster("stack-cli", 1, Tuning::fast()).await?;
    let dir = lab.root().join("stack");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("docker-stack.yml");
    let file_arg = file.display().to_string();
    std::fs::write(&file, V1)?;
    let deploy = ["stack", "deploy", "-d", "--no-resolve-image", "-c"];

    // Deploy: three services, the two declared networks and shop_default (db has none).
    let mut args = deploy.to_vec();
    args.extend([file_arg.as_str(), "shop"]);
    let out = lab.cli(&args).await?;
    assert!(out.success, "stack deploy: {out:?}");
    println!("{}{}", out.stdout, out.stderr);
    for line in [
        "Creating network shop_front",
        "Creating network shop_back",
        "Creating network shop_default",
        "Creating service shop_web",
        "Creating service shop_api",
        "Creating service shop_db",
    ] {
        assert!(out.stdout.contains(line), "no {line:?}: {out:?}");
    }
    assert!(
        out.stderr.contains("depends_on: ignored"),
        "no warning for depends_on: {out:?}"
    );

    let out = lab.cli(&["stack", "services", "shop"]).await?;
    assert!(out.success, "stack services: {out:?}");
    println!("{}", out.stdout);
    let names: Vec<&str> = rows(&out.stdout)
        .iter()
        .filter_map(|r| r.split_whitespace().nth(1))
        .collect();
    assert_eq!(names, ["shop_api", "shop_db", "shop_web"], "{}", out.stdout);
    assert!(out.stdout.contains("*:8080->80/tcp"), "{}", out.stdout);

    let listed = services(&lab, "shop").await?;
    for (name, service) in &listed {
        assert_eq!(
            service["spec"]["labels"][LABEL], "shop",
            "{name}: {service}"
        );
    }
    let web = &listed["shop_web"]["spec"];
    assert_eq!(web["mode"]["replicas"], 2, "{web}");
    assert_eq!(web["networks"][0]["aliases"][0], "www", "{web}");
    assert_eq!(listed["shop_api"]["spec"]["env"][0], "MODE=prod");
    let before = versions(&listed);

    let networks = network_names(&lab).await?;
    for name in ["shop_front", "shop_back", "shop_default"] {
        assert!(
            networks.iter().any(|n| n == name),
            "no {name}: {networks:?}"
        );
    }
    let out = lab.cli(&["stack", "ls"]).await?;
    assert!(out.success, "stack ls: {out:?}");
    let cols: Vec<Vec<&str>> = rows(&out.stdout)
        .iter()
        .map(|r| r.split_whitespace().collect())
        .collect();
    assert_eq!(cols, [vec!["shop", "3"]], "{}", out.stdout);
    let out = lab.cli(&["stack", "ps", "shop"]).await?;
    assert!(out.success, "stack ps: {out:?}");
    assert_eq!(rows(&out.stdout).len(), 5, "{}", out.stdout);

    // Re-deploy with one change: only web is updated.
    std::fs::write(
        &file,
        V1.replace("command: httpd -f -p 80", "command: httpd -f -p 81"),
    )?;
    let out = lab.cli(&args).await?;
    assert!(out.success, "stack deploy (update): {out:?}");
    println!("{}", out.stdout);
    assert!(out.stdout.contains("Updating service shop_web"), "{out:?}");
    assert!(
        out.stdout.contains("Service shop_api is unchanged"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("Service shop_db is unchanged"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("Creating"), "{out:?}");
    let after = versions(&services(&lab, "shop").await?);
    assert!(
        after["shop_web"] > before["shop_web"],
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        after["shop_api"], before["shop_api"],
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        after["shop_db"], before["shop_db"],
        "{before:?} -> {after:?}"
    );

    // --prune removes the service the file no longer has.
    let without_db = V1
        .replace("command: httpd -f -p 80", "command: httpd -f -p 81")
        .replace(
            "  db:\n    image: busybox:1.36\n    depends_on: [api]\n",
            "",
        );
    std::fs::write(&file, without_db)?;
    let mut pruning = args.clone();
    pruning.insert(2, "--prune");
    let out = lab.cli(&pruning).await?;
    assert!(out.success, "stack deploy --prune: {out:?}");
    assert!(out.stdout.contains("Removing service shop_db"), "{out:?}");
    let left = services(&lab, "shop").await?;
    let mut names: Vec<&String> = left.keys().collect();
    names.sort();
    assert_eq!(names, ["shop_api", "shop_web"]);
    assert_eq!(versions(&left)["shop_web"], after["shop_web"]);

    // A malformed file names file:line:column and creates nothing.
    let bad = dir.join("bad.yml");
    let bad_arg = bad.display().to_string();
    std::fs::write(
        &bad,
        "services:\n  one:\n    image: busybox\n  two:\n    image: busybox\n    deploy:\n      replicas: many\n",
    )?;
    let mut bad_args = deploy.to_vec();
    bad_args.extend([bad_arg.as_str(), "bad"]);
    let out = lab.cli(&bad_args).await?;
    assert!(!out.success, "the malformed file was accepted: {out:?}");
    let place = format!("{bad_arg}:7:17: services.two.deploy.replicas");
    assert!(out.stderr.contains(&place), "no {place:?}: {out:?}");
    std::fs::write(&bad, "services:\n  one:\n    image: [busybox\n")?;
    let out = lab.cli(&bad_args).await?;
    assert!(!out.success, "the YAML syntax error was accepted: {out:?}");
    assert!(out.stderr.contains(&format!("{bad_arg}:")), "{out:?}");
    let out = lab.cli(&["stack", "ls"]).await?;
    assert!(!out.stdout.contains("bad"), "{out:?}");
    let networks = network_names(&lab).await?;
    assert!(
        !networks.iter().any(|n| n.starts_with("bad_")),
        "{networks:?}"
    );

    // Two files merged in order, with a variable from the .env file next to the first.
    std::fs::write(dir.join(".env"), "APP_PORT=9090\n")?;
    let base = dir.join("base.yml");
    let over = dir.join("override.yml");
    std::fs::write(
        &base,
        "services:\n  app:\n    image: busybox:1.36\n    ports: [\"${APP_PORT}:80\"]\n",
    )?;
    std::fs::write(&over, "services:\n  app:\n    deploy:\n      replicas: 3\n")?;
    let (base_arg, over_arg) = (base.display().to_string(), over.display().to_string());
    let out = lab
        .cli(&["stack", "config", "-c", &base_arg, "-c", &over_arg])
        .await?;
    assert!(out.success, "stack config: {out:?}");
    assert!(
        out.stdout.contains("9090:80") && out.stdout.contains("replicas: 3"),
        "{out:?}"
    );
    let mut two = deploy.to_vec();
    two.extend([base_arg.as_str(), "-c", over_arg.as_str(), "two"]);
    let out = lab.cli(&two).await?;
    assert!(out.success, "stack deploy two: {out:?}");
    let app = &services(&lab, "two").await?["two_app"]["spec"];
    assert_eq!(app["mode"]["replicas"], 3, "{app}");
    assert_eq!(app["endpoint"]["ports"][0]["published"], 9090, "{app}");

    // A port another stack publishes is refused before anything is created.
    std::fs::write(
        &bad,
        "services:\n  one:\n    image: busybox\n    ports: [\"9090:80\"]\n",
    )?;
    let out = lab.cli(&bad_args).await?;
    assert!(!out.success, "the port clash was accepted: {out:?}");
    assert!(
        out.stderr
            .contains("port 9090/tcp is already published by service two_app"),
        "{out:?}"
    );
    let networks = network_names(&lab).await?;
    assert!(
        !networks.iter().any(|n| n.starts_with("bad_")),
        "{networks:?}"
    );
    let out = lab.cli(&["stack", "ls"]).await?;
    let cols: Vec<Vec<&str>> = rows(&out.stdout)
        .iter()
        .map(|r| r.split_whitespace().collect())
        .collect();
    assert_eq!(
        cols,
        [vec!["shop", "2"], vec!["two", "1"]],
        "{}",
        out.stdout
    );

    // rm: the services, then the networks.
    let out = lab.cli(&["stack", "rm", "shop", "two"]).await?;
    assert!(out.success, "stack rm: {out:?}");
    println!("{}", out.stdout);
    let out = lab.cli(&["service", "ls", "-q"]).await?;
    assert!(out.stdout.trim().is_empty(), "services left: {out:?}");
    let networks = network_names(&lab).await?;
    assert!(
        !networks.iter().any(|n| n.starts_with("shop_")),
        "{networks:?}"
    );
    let out = lab.cli(&["stack", "ls"]).await?;
    assert!(rows(&out.stdout).is_empty(), "{out:?}");

    lab.passed();
    Ok(())
}

const VAULT: &str = r#"
services:
  app:
    image: busybox:1.36
    secrets:
      - source: db_pw
        target: db_password
        mode: 0440
      - ext
    configs:
      - source: conf
        target: /etc/app.conf
    healthcheck:
      test: ["CMD", "/bin/true"]
      interval: 5s
      retries: 2
    deploy:
      update_config:
        parallelism: 2
        delay: 1s
        failure_action: rollback
        order: start-first
      rollback_config:
        failure_action: continue
secrets:
  db_pw:
    file: ./db_pw.txt
  ext:
    external: true
    name: shared_pw
configs:
  conf:
    file: ./app.conf
"#;

/// The id of secret or config `name` (`kind` is "secret" or "config").
async fn blob_id(lab: &Lab, kind: &str, name: &str) -> Result<String> {
    let out = lab.cli(&[kind, "inspect", name]).await?;
    assert!(out.success, "{kind} inspect {name}: {out:?}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&out.stdout)?;
    Ok(list[0]["id"].as_str().unwrap_or_default().to_string())
}

/// The names `secret ls` or `config ls` prints.
async fn blob_names(lab: &Lab, kind: &str) -> Result<Vec<String>> {
    let out = lab.cli(&[kind, "ls"]).await?;
    assert!(out.success, "{kind} ls: {out:?}");
    Ok(rows(&out.stdout)
        .iter()
        .filter_map(|r| r.split_whitespace().nth(1).map(str::to_string))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stack_cli_applies_secrets_configs_healthcheck_and_update_config() -> Result<()> {
    let mut lab = Lab::cluster("stack-files", 1, Tuning::fast()).await?;
    let dir = lab.root().join("vault");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("db_pw.txt"), "hunter2\n")?;
    std::fs::write(dir.join("app.conf"), "level=debug\n")?;
    std::fs::write(dir.join("shared.txt"), "shared\n")?;
    let file = dir.join("docker-stack.yml");
    let file_arg = file.display().to_string();
    std::fs::write(&file, VAULT)?;
    let args = [
        "stack",
        "deploy",
        "-d",
        "--no-resolve-image",
        "-c",
        &file_arg,
        "vault",
    ];

    // The external secret must exist: refused, naming its declaration, and nothing created.
    let out = lab.cli(&args).await?;
    assert!(
        !out.success,
        "a missing external secret was accepted: {out:?}"
    );
    let place =
        format!("{file_arg}:28:3: secrets.ext: secret \"shared_pw\" is declared as external");
    assert!(out.stderr.contains(&place), "no {place:?}: {out:?}");
    assert!(blob_names(&lab, "secret").await?.is_empty());
    assert!(blob_names(&lab, "config").await?.is_empty());

    let shared = dir.join("shared.txt").display().to_string();
    let out = lab.cli(&["secret", "create", "shared_pw", &shared]).await?;
    assert!(out.success, "secret create: {out:?}");
    let out = lab.cli(&args).await?;
    assert!(out.success, "stack deploy: {out:?}");
    println!("{}{}", out.stdout, out.stderr);
    for line in [
        "Creating secret vault_db_pw",
        "Creating config vault_conf",
        "Creating service vault_app",
    ] {
        assert!(out.stdout.contains(line), "no {line:?}: {out:?}");
    }
    assert!(!out.stderr.contains("not applied yet"), "{out:?}");

    // service inspect shows what the file says, the references by id.
    let out = lab.cli(&["service", "inspect", "vault_app"]).await?;
    assert!(out.success, "service inspect: {out:?}");
    let inspected: Vec<serde_json::Value> = serde_json::from_str(&out.stdout)?;
    let spec = &inspected[0]["spec"];
    let db_pw = blob_id(&lab, "secret", "vault_db_pw").await?;
    let shared_id = blob_id(&lab, "secret", "shared_pw").await?;
    let conf = blob_id(&lab, "config", "vault_conf").await?;
    let secrets = &spec["secrets"];
    assert_eq!(secrets[0]["source"], db_pw.as_str(), "{spec}");
    assert_eq!(secrets[0]["target"], "db_password", "{spec}");
    assert_eq!(secrets[0]["mode"], 0o440, "{spec}");
    assert_eq!(secrets[1]["source"], shared_id.as_str(), "{spec}");
    assert_eq!(secrets[1]["target"], "ext", "{spec}");
    assert_eq!(spec["configs"][0]["source"], conf.as_str(), "{spec}");
    assert_eq!(spec["configs"][0]["target"], "/etc/app.conf", "{spec}");
    let health = &spec["healthcheck"];
    assert_eq!(
        health["test"],
        serde_json::json!(["CMD", "/bin/true"]),
        "{spec}"
    );
    assert_eq!(health["interval_ms"], 5000, "{spec}");
    assert_eq!(health["retries"], 2, "{spec}");
    let update = &spec["update_config"];
    assert_eq!(update["parallelism"], 2, "{spec}");
    assert_eq!(update["delay_ms"], 1000, "{spec}");
    assert_eq!(update["failure_action"], "rollback", "{spec}");
    assert_eq!(update["order"], "start-first", "{spec}");
    assert_eq!(
        spec["rollback_config"]["failure_action"], "continue",
        "{spec}"
    );
    let version = inspected[0]["version"].as_u64();

    // The same files again: the secret and config are reused, the service unchanged.
    let out = lab.cli(&args).await?;
    assert!(out.success, "stack deploy (again): {out:?}");
    assert!(!out.stdout.contains("Creating"), "{out:?}");
    assert!(
        out.stdout.contains("Service vault_app is unchanged"),
        "{out:?}"
    );

    // New secret data under the same name is refused before anything is created.
    std::fs::write(dir.join("db_pw.txt"), "hunter3\n")?;
    std::fs::write(
        &file,
        VAULT
            .replace(
                "configs:\n  conf:",
                "configs:\n  more:\n    file: ./app.conf\n  conf:",
            )
            .replace(
                "secrets:\n  db_pw:",
                "  other:\n    image: busybox:1.36\n    configs: [more]\nsecrets:\n  db_pw:",
            ),
    )?;
    let out = lab.cli(&args).await?;
    assert!(!out.success, "changed secret data was accepted: {out:?}");
    let place = format!(
        "{file_arg}:29:3: secrets.db_pw: secret \"vault_db_pw\" already exists with other data"
    );
    assert!(out.stderr.contains(&place), "no {place:?}: {out:?}");
    assert_eq!(blob_names(&lab, "config").await?, ["vault_conf"]);
    let listed = services(&lab, "vault").await?;
    assert_eq!(listed.keys().collect::<Vec<_>>(), ["vault_app"]);
    assert_eq!(listed["vault_app"]["version"].as_u64(), version);

    // rm: the service, then the stack's secret and config; the external one stays.
    let out = lab.cli(&["stack", "rm", "vault"]).await?;
    assert!(out.success, "stack rm: {out:?}");
    println!("{}", out.stdout);
    assert!(
        out.stdout.contains("Removing secret vault_db_pw"),
        "{out:?}"
    );
    assert!(out.stdout.contains("Removing config vault_conf"), "{out:?}");
    assert_eq!(blob_names(&lab, "secret").await?, ["shared_pw"]);
    assert!(blob_names(&lab, "config").await?.is_empty());

    lab.passed();
    Ok(())
}
