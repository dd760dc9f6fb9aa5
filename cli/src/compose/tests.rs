//! Loading whole stack files: positions of errors, interpolation, merging, anchors, the fields
//! and the warnings.

use std::collections::HashMap;
use std::path::Path as FsPath;

use super::interpolate::Vars;
use super::*;

fn vars() -> Vars {
    Vars {
        vars: HashMap::from([
            ("TAG".to_string(), "1.25".to_string()),
            ("REPLICAS".to_string(), "3".to_string()),
            ("FROM_SHELL".to_string(), "yes".to_string()),
        ]),
    }
}

fn sources(files: &[(&str, &str)]) -> Vec<Source> {
    files
        .iter()
        .map(|(name, text)| Source {
            name: name.to_string(),
            text: text.to_string(),
        })
        .collect()
}

fn load_all(files: &[(&str, &str)]) -> Result<Loaded, LoadError> {
    load(&sources(files), &vars(), FsPath::new("/srv/app"))
}

fn ok(text: &str) -> Loaded {
    load_all(&[("stack.yml", text)]).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(text: &str) -> Vec<String> {
    match load_all(&[("stack.yml", text)]) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.errors,
    }
}

const FULL: &str = r#"
version: "3.8"
x-defaults: &defaults
  restart: always
  labels:
    team: shop
services:
  web:
    <<: *defaults
    image: "nginx:${TAG}"
    command: nginx -g 'daemon off;'
    entrypoint: ["/docker-entrypoint.sh"]
    environment:
      - MODE=prod
      - FROM_SHELL
      - NOT_SET_ANYWHERE
    ports:
      - "8080:80"
      - "5353:53/udp"
      - target: 443
        published: 8443
        protocol: tcp
        mode: host
    networks:
      front:
        aliases: [www]
      back:
    volumes:
      - data:/var/lib/data
      - /etc/ssl:/etc/ssl:ro
      - ./conf:/conf
      - type: tmpfs
        target: /cache
        tmpfs:
          size: 64M
    hostname: web-host
    user: "1000:1000"
    working_dir: /srv
    stop_grace_period: 1m30s
    stop_signal: SIGQUIT
    deploy:
      mode: replicated
      replicas: ${REPLICAS}
      labels: [tier=front]
      resources:
        limits: {cpus: "0.5", memory: 128M}
        reservations: {cpus: 0.25, memory: 64M}
      restart_policy:
        condition: on-failure
        delay: 5s
        max_attempts: 3
        window: 2m
      placement:
        constraints: [node.role == worker]
        preferences:
          - spread: node.labels.zone
        max_replicas_per_node: 2
      endpoint_mode: vip
  agent:
    image: agent
    environment:
      A: 1
      B:
    deploy:
      mode: global
networks:
  front:
    driver: overlay
    attachable: true
    labels: {a: b}
    ipam:
      config:
        - subnet: 10.20.0.0/16
  back: {}
volumes:
  data:
"#;

#[test]
fn reads_every_supported_field() {
    let loaded = ok(FULL);
    let stack = &loaded.stack;
    let web = &stack.services["web"];
    let spec = &web.spec;
    assert_eq!(spec.image, "nginx:1.25");
    assert_eq!(spec.command, ["nginx", "-g", "daemon off;"]);
    assert_eq!(spec.entrypoint, ["/docker-entrypoint.sh"]);
    assert_eq!(spec.env, ["MODE=prod", "FROM_SHELL=yes"]);
    let ports = &spec.endpoint.as_ref().unwrap().ports;
    assert_eq!(ports.len(), 3);
    assert_eq!((ports[0].published, ports[0].target), (8080, 80));
    assert_eq!((ports[1].target, ports[1].protocol.as_str()), (53, "udp"));
    assert_eq!(
        (ports[2].published, ports[2].target, ports[2].mode.as_str()),
        (8443, 443, "host")
    );
    assert_eq!(spec.endpoint.as_ref().unwrap().mode, "vip");
    assert_eq!(
        web.networks,
        Some(vec![
            ("front".to_string(), vec!["www".to_string()]),
            ("back".to_string(), vec![])
        ])
    );
    let mounts: Vec<_> = spec
        .mounts
        .iter()
        .map(|m| {
            (
                m.r#type.as_str(),
                m.source.as_str(),
                m.target.as_str(),
                m.readonly,
            )
        })
        .collect();
    assert_eq!(
        mounts,
        [
            ("volume", "data", "/var/lib/data", false),
            ("bind", "/etc/ssl", "/etc/ssl", true),
            ("bind", "/srv/app/conf", "/conf", false),
            ("tmpfs", "", "/cache", false),
        ]
    );
    assert_eq!(spec.mounts[3].tmpfs_size_bytes, 64 << 20);
    assert_eq!(spec.hostname, "web-host");
    assert_eq!(spec.user, "1000:1000");
    assert_eq!(spec.workdir, "/srv");
    assert_eq!(spec.stop_grace_period_ms, Some(90_000));
    assert_eq!(spec.stop_signal, "SIGQUIT");
    assert_eq!(spec.container_labels["team"], "shop");
    assert_eq!(spec.labels["tier"], "front");
    let mode = spec.mode.as_ref().unwrap();
    assert_eq!((mode.kind.as_str(), mode.replicas), ("replicated", Some(3)));
    let resources = spec.resources.as_ref().unwrap();
    let limits = resources.limits.as_ref().unwrap();
    assert_eq!(
        (limits.nano_cpus, limits.memory_bytes),
        (500_000_000, 128 << 20)
    );
    let reservations = resources.reservations.as_ref().unwrap();
    assert_eq!(reservations.nano_cpus, 250_000_000);
    let restart = spec.restart.as_ref().unwrap();
    assert_eq!(restart.condition, "on-failure");
    assert_eq!(
        (restart.delay_ms, restart.max_attempts, restart.window_ms),
        (Some(5000), 3, 120_000)
    );
    let placement = spec.placement.as_ref().unwrap();
    assert_eq!(placement.constraints, ["node.role == worker"]);
    assert_eq!(placement.preferences, ["spread=node.labels.zone"]);
    assert_eq!(placement.max_replicas_per_node, 2);

    let agent = &stack.services["agent"].spec;
    assert_eq!(agent.env, ["A=1"]);
    assert_eq!(agent.mode.as_ref().unwrap().kind, "global");

    let front = &stack.networks["front"].spec;
    assert!(front.attachable);
    assert_eq!(front.subnet, "10.20.0.0/16");
    assert_eq!(front.labels["a"], "b");

    // `restart` came in through the merge key: a warning placed where the anchor has it.
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.starts_with("stack.yml:4:12: services.web.restart: ignored")),
        "{:?}",
        loaded.warnings
    );
    // NOT_SET_ANYWHERE is left out of the environment, like docker does.
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
}

#[test]
fn specs_are_namespaced_under_the_stack() {
    let stack = ok(FULL).stack;
    let networks = stack.network_specs("shop");
    let names: Vec<&str> = networks.iter().map(|(_, s)| s.name.as_str()).collect();
    // agent has no networks: it joins shop_default.
    assert_eq!(names, ["shop_back", "shop_default", "shop_front"]);
    assert!(
        networks
            .iter()
            .all(|(_, s)| s.labels[STACK_LABEL] == "shop" && s.driver == "overlay")
    );
    let ids = model::Ids {
        networks: HashMap::from([("front".to_string(), "n1".to_string())]),
        ..Default::default()
    };
    let web = stack.service_spec("shop", "web", &ids).unwrap();
    assert_eq!(web.name, "shop_web");
    assert_eq!(web.labels[STACK_LABEL], "shop");
    assert_eq!(web.container_labels[STACK_LABEL], "shop");
    let targets: Vec<&str> = web.networks.iter().map(|n| n.target.as_str()).collect();
    assert_eq!(targets, ["n1", "shop_back"]);
    assert_eq!(web.mounts[0].source, "shop_data");
    let agent = stack.service_spec("shop", "agent", &ids).unwrap();
    assert_eq!(agent.networks[0].target, "shop_default");
}

#[test]
fn syntax_errors_name_file_line_and_column() {
    let errs = errors("services:\n  web:\n    image: [a\n    ports: x\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("stack.yml:4:"), "{errs:?}");
    let errs = errors("services:\n  web:\n   image: a\n  bad\n");
    assert!(errs[0].starts_with("stack.yml:"), "{errs:?}");
    assert!(!errs[0].contains(" at line "), "{errs:?}");
}

#[test]
fn invalid_values_and_unknown_keys_are_placed() {
    let errs = errors(
        "services:
  web:
    image: nginx
    deploy:
      replicas: many
      restart_policy:
        condition: sometimes
    imagee: typo
    ports:
      - 80:99999
      - target: 0
  db:
    environment: [A=1]
networks:
  front:
    driver: bridge
",
    );
    let expect = [
        "stack.yml:5:17: services.web.deploy.replicas: invalid value \"many\": expected a \
         non-negative integer",
        "stack.yml:7:20: services.web.deploy.restart_policy.condition: invalid value \
         \"sometimes\": expected one of none, on-failure, any",
        "stack.yml:8:5: services.web.imagee: unknown key: did you mean \"image\"?",
        "stack.yml:10:9: services.web.ports[0]: invalid port",
        "stack.yml:11:17: services.web.ports[1].target: invalid value 0",
        "stack.yml:12:3: services.db: image is required",
        "stack.yml:16:13: networks.front.driver: invalid value \"bridge\"",
    ];
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    for want in expect {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errs:#?}"
        );
    }
}

#[test]
fn references_must_be_declared() {
    let errs = errors(
        "services:
  web:
    image: a
    networks: [front, nope]
    volumes: [data:/data]
networks:
  front:
",
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(errs[0].starts_with("stack.yml:4:23: services.web.networks[1]: network \"nope\""));
    assert!(
        errs[1].contains("volume \"data\" is not defined"),
        "{errs:#?}"
    );
}

#[test]
fn required_variables_fail_with_their_place() {
    let errs = errors(
        "services:\n  web:\n    image: \"app:${TAG:?}\"\n    user: \"${WHO:?who runs it}\"\n",
    );
    assert_eq!(
        errs,
        ["stack.yml:4:11: services.web.user: required variable WHO is not set: who runs it"]
    );
    let errs = errors("services:\n  web:\n    image: app$\n");
    assert!(errs[0].starts_with("stack.yml:3:12: services.web.image: invalid interpolation"));
    // Defaults, empty-vs-unset, and $$.
    let loaded = ok("services:
  web:
    image: ${IMAGE:-busybox}
    command: [echo, $$HOME, '${MISSING-x}']
");
    let spec = &loaded.stack.services["web"].spec;
    assert_eq!(spec.image, "busybox");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let loaded = ok("services:\n  web:\n    image: a\n    hostname: h${NOPE}\n");
    assert_eq!(
        loaded.warnings,
        ["stack.yml:4:15: services.web.hostname: variable NOPE is not set: using an empty string"]
    );
    assert_eq!(spec.command, ["echo", "$HOME", "x"]);
}

#[test]
fn later_files_override_earlier_ones() {
    let base = "services:
  web:
    image: web:1
    environment: [A=1, B=2]
    ports: ['80:80']
    deploy: {replicas: 2}
  db:
    image: db
";
    let over = "services:
  web:
    image: web:2
    environment: {B: '3'}
    deploy: {replicas: many}
";
    let errs = load_all(&[("base.yml", base), ("prod.yml", over)])
        .unwrap_err()
        .errors;
    // The bad value is placed in the file that set it.
    assert!(
        errs[0].starts_with("prod.yml:5:24: services.web.deploy.replicas"),
        "{errs:?}"
    );
    let over = over.replace("many", "5");
    let loaded = load_all(&[("base.yml", base), ("prod.yml", &over)]).unwrap();
    let web = &loaded.stack.services["web"].spec;
    assert_eq!(web.image, "web:2");
    assert_eq!(web.env, ["A=1", "B=3"]);
    assert_eq!(web.endpoint.as_ref().unwrap().ports.len(), 1);
    assert_eq!(web.mode.as_ref().unwrap().replicas, Some(5));
    assert!(loaded.stack.services.contains_key("db"));
}

#[test]
fn anchors_and_merge_keys() {
    let loaded = ok("x-common: &common
  image: app:1
  deploy: &deploy
    replicas: 2
services:
  a:
    <<: *common
  b:
    <<: *common
    image: app:2
    deploy:
      <<: *deploy
      mode: replicated
x-unused: {anything: [1, 2]}
");
    let a = &loaded.stack.services["a"].spec;
    let b = &loaded.stack.services["b"].spec;
    assert_eq!((a.image.as_str(), b.image.as_str()), ("app:1", "app:2"));
    assert_eq!(a.mode.as_ref().unwrap().replicas, Some(2));
    assert_eq!(b.mode.as_ref().unwrap().replicas, Some(2));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    // An error in a merged-in value points at the anchor's text.
    let errs = errors(
        "x-d: &d
  replicas: lots
services:
  a:
    image: x
    deploy:
      <<: *d
",
    );
    assert_eq!(
        errs,
        [
            "stack.yml:2:13: services.a.deploy.replicas: invalid value \"lots\": expected a \
          non-negative integer"
        ]
    );
}

#[test]
fn ignored_and_unsupported_fields_warn() {
    let loaded = ok("services:
  web:
    image: a
    build: .
    depends_on: [db]
    container_name: web
    links: [db]
    tty: true
  db:
    image: b
    restart: always
");
    let w = &loaded.warnings;
    for (place, what) in [
        ("stack.yml:4:12: services.web.build", "ignored"),
        ("stack.yml:5:17: services.web.depends_on", "ignored"),
        ("stack.yml:6:21: services.web.container_name", "ignored"),
        ("stack.yml:7:12: services.web.links", "ignored"),
        ("stack.yml:8:10: services.web.tty", "not applied yet"),
        ("stack.yml:11:14: services.db.restart", "ignored"),
    ] {
        assert!(
            w.iter().any(|l| l.starts_with(place) && l.contains(what)),
            "no {place}: {what} in {w:#?}"
        );
    }
    assert_eq!(w.len(), 6, "{w:#?}");
}

/// Loads `text` as `stack.yml` in a directory holding `files`.
fn load_in_dir(
    text: &str,
    files: &[(&str, &str)],
) -> (tempfile::TempDir, Result<Loaded, LoadError>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in files {
        std::fs::write(dir.path().join(name), data).unwrap();
    }
    let result = load(&sources(&[("stack.yml", text)]), &vars(), dir.path());
    (dir, result)
}

/// Every expected `(prefix, part)` is one of `lines`, and there are no others.
fn assert_lines(lines: &[String], expect: &[(&str, &str)]) {
    for (prefix, part) in expect {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(prefix) && l.contains(part)),
            "missing {prefix:?} ... {part:?} in {lines:#?}"
        );
    }
    assert_eq!(lines.len(), expect.len(), "{lines:#?}");
}

#[test]
fn secrets_and_configs_come_from_files() {
    let text = "services:
  web:
    image: a
    secrets:
      - pw
      - source: pw
        target: db_password
        uid: \"1000\"
        gid: 1000
        mode: 0440
    configs:
      - conf
      - source: conf
        target: /etc/app.conf
        mode: \"0600\"
secrets:
  pw:
    file: ./pw.txt
    labels: [k=v]
  ext:
    external: true
    name: real_ext
  old:
    external: {name: older}
configs:
  conf:
    file: ./conf.txt
    name: my-conf
    template_driver: golang
";
    let (_dir, loaded) = load_in_dir(text, &[("pw.txt", "s3cret\n"), ("conf.txt", "a=1")]);
    let loaded = loaded.unwrap_or_else(|e| panic!("{e}"));
    assert_lines(
        &loaded.warnings,
        &[(
            "stack.yml:29:22: configs.conf.template_driver",
            "not applied yet",
        )],
    );
    let stack = &loaded.stack;
    let pw = &stack.secrets["pw"];
    assert_eq!(pw.data, b"s3cret\n");
    assert_eq!(pw.labels["k"], "v");
    assert!(!pw.external);
    assert!(pw.at.starts_with("stack.yml:17:3: secrets.pw"), "{}", pw.at);
    assert_eq!(stack.configs["conf"].data, b"a=1");

    let spec = &stack.services["web"].spec;
    let secrets: Vec<_> = spec
        .secrets
        .iter()
        .map(|r| (r.source.as_str(), r.target.as_str(), r.uid, r.gid, r.mode))
        .collect();
    assert_eq!(
        secrets,
        [
            ("pw", "pw", 0, 0, None),
            ("pw", "db_password", 1000, 1000, Some(0o440))
        ]
    );
    let configs: Vec<_> = spec
        .configs
        .iter()
        .map(|r| (r.source.as_str(), r.target.as_str(), r.mode))
        .collect();
    assert_eq!(
        configs,
        [
            ("conf", "/conf", None),
            ("conf", "/etc/app.conf", Some(0o600))
        ]
    );

    // Under a stack: created names, explicit names, external names, or ids once known.
    use files::FileKind::{Config, Secret};
    assert_eq!(stack.file_name(Secret, "st", "pw"), "st_pw");
    assert_eq!(stack.file_name(Secret, "st", "ext"), "real_ext");
    assert_eq!(stack.file_name(Secret, "st", "old"), "older");
    assert_eq!(stack.file_name(Config, "st", "conf"), "my-conf");
    assert_eq!(stack.used_files(Secret), ["pw"]);
    let web = stack
        .service_spec("st", "web", &model::Ids::default())
        .unwrap();
    assert_eq!(web.secrets[1].source, "st_pw");
    assert_eq!(web.configs[0].source, "my-conf");
    let ids = model::Ids {
        secrets: HashMap::from([("pw".to_string(), "S1".to_string())]),
        ..Default::default()
    };
    let web = stack.service_spec("st", "web", &ids).unwrap();
    assert_eq!(web.secrets[0].source, "S1");
    assert_eq!(web.secrets[0].target, "pw");
}

#[test]
fn secret_and_config_errors_are_placed() {
    let text = "services:
  web:
    image: a
    secrets:
      - nope
      - source: pw
        mode: \"0899\"
        target: a/b
      - {target: x}
    configs:
      - source: conf
        target: relative
        uid: -1
      - conf
      - source: conf
        target: /conf
secrets:
  pw:
    file: ./missing.txt
    environment: X
  both:
    external: true
    file: ./pw.txt
  none: {}
configs:
  conf:
    file: ./conf.txt
";
    let (dir, result) = load_in_dir(text, &[("pw.txt", "x"), ("conf.txt", "c")]);
    let errs = result.unwrap_err().errors;
    let missing = format!("cannot read {}", dir.path().join("missing.txt").display());
    assert_lines(
        &errs,
        &[
            (
                "stack.yml:5:9: services.web.secrets[0]",
                "secret \"nope\" is not defined in the top-level secrets",
            ),
            (
                "stack.yml:7:15: services.web.secrets[1].mode",
                "a file mode such as 0440",
            ),
            (
                "stack.yml:6:9: services.web.secrets[1]",
                "invalid target \"a/b\"",
            ),
            (
                "stack.yml:9:9: services.web.secrets[2]",
                "source is required",
            ),
            (
                "stack.yml:11:9: services.web.configs[0]",
                "invalid target \"relative\"",
            ),
            (
                "stack.yml:13:14: services.web.configs[0].uid",
                "non-negative integer",
            ),
            (
                "stack.yml:15:9: services.web.configs[2]",
                "/conf is the target of another config",
            ),
            ("stack.yml:19:11: secrets.pw.file", &missing),
            ("stack.yml:20:5: secrets.pw.environment", "unknown key"),
            (
                "stack.yml:23:11: secrets.both.file",
                "an external one has no file",
            ),
            (
                "stack.yml:24:9: secrets.none",
                "file is required (or external: true)",
            ),
        ],
    );
}

#[test]
fn healthchecks() {
    let stack = ok("services:
  a:
    image: a
    healthcheck:
      test: curl -f http://localhost || exit 1
      interval: 1m30s
      timeout: 10s
      retries: 5
      start_period: 500ms
  b:
    image: b
    healthcheck:
      test: [CMD, /bin/check, --quick]
  c:
    image: c
    healthcheck: {disable: true}
")
    .stack;
    let a = stack.services["a"].spec.healthcheck.clone().unwrap();
    assert_eq!(a.test, ["CMD-SHELL", "curl -f http://localhost || exit 1"]);
    assert_eq!(
        (a.interval_ms, a.timeout_ms, a.retries, a.start_period_ms),
        (Some(90_000), Some(10_000), Some(5), 500)
    );
    let b = stack.services["b"].spec.healthcheck.clone().unwrap();
    assert_eq!(b.test, ["CMD", "/bin/check", "--quick"]);
    assert_eq!((b.interval_ms, b.retries), (None, None));
    let c = stack.services["c"].spec.healthcheck.clone().unwrap();
    assert_eq!(c.test, ["NONE"]);

    let errs = errors(
        "services:
  a:
    image: a
    healthcheck:
      test: [CMD-SHELL]
      interval: 0s
      retries: 0
  b:
    image: b
    healthcheck:
      interval: 10s
  c:
    image: c
    healthcheck:
      test: [BOGUS, x]
      timeout: soon
      intervall: 1s
  d:
    image: d
    healthcheck:
      test: [CMD, x]
      disable: true
",
    );
    assert_lines(
        &errs,
        &[
            (
                "stack.yml:5:13: services.a.healthcheck.test",
                "CMD-SHELL needs exactly one",
            ),
            (
                "stack.yml:6:17: services.a.healthcheck.interval",
                "at least 1ms",
            ),
            (
                "stack.yml:7:16: services.a.healthcheck.retries",
                "at least 1",
            ),
            ("stack.yml:10:5: services.b.healthcheck", "test is required"),
            (
                "stack.yml:15:13: services.c.healthcheck.test",
                "starts with NONE, CMD or CMD-SHELL",
            ),
            (
                "stack.yml:16:16: services.c.healthcheck.timeout",
                "invalid duration \"soon\"",
            ),
            (
                "stack.yml:17:7: services.c.healthcheck.intervall",
                "did you mean \"interval\"",
            ),
            (
                "stack.yml:21:13: services.d.healthcheck.test",
                "cannot be combined with disable",
            ),
        ],
    );
}

#[test]
fn update_and_rollback_configs() {
    let stack = ok("services:
  web:
    image: a
    deploy:
      update_config:
        parallelism: 2
        delay: 10s
        failure_action: rollback
        monitor: 1m
        max_failure_ratio: 0.25
        order: start-first
      rollback_config:
        parallelism: 0
        failure_action: continue
")
    .stack;
    let spec = &stack.services["web"].spec;
    let update = spec.update_config.clone().unwrap();
    assert_eq!(update.parallelism, Some(2));
    assert_eq!(update.delay_ms, 10_000);
    assert_eq!(update.failure_action, "rollback");
    assert_eq!(update.monitor_ms, Some(60_000));
    assert_eq!(update.max_failure_ratio, 0.25);
    assert_eq!(update.order, "start-first");
    let rollback = spec.rollback_config.clone().unwrap();
    assert_eq!(
        (
            rollback.parallelism,
            rollback.failure_action.as_str(),
            rollback.monitor_ms
        ),
        (Some(0), "continue", None)
    );

    let errs = errors(
        "services:
  web:
    image: a
    deploy:
      update_config:
        paralelism: 2
        max_failure_ratio: 1.5
        order: random
        monitor: 5
      rollback_config:
        failure_action: rollback
        parallelism: -1
",
    );
    assert_lines(
        &errs,
        &[
            (
                "stack.yml:6:9: services.web.deploy.update_config.paralelism",
                "did you mean \"parallelism\"",
            ),
            (
                "stack.yml:7:28: services.web.deploy.update_config.max_failure_ratio",
                "a fraction from 0 to 1",
            ),
            (
                "stack.yml:8:16: services.web.deploy.update_config.order",
                "one of stop-first, start-first",
            ),
            (
                "stack.yml:9:18: services.web.deploy.update_config.monitor",
                "missing unit",
            ),
            (
                "stack.yml:11:25: services.web.deploy.rollback_config.failure_action",
                "one of pause, continue",
            ),
            (
                "stack.yml:12:22: services.web.deploy.rollback_config.parallelism",
                "non-negative integer",
            ),
        ],
    );
}

#[test]
fn long_and_short_ports() {
    let loaded = ok("services:
  web:
    image: a
    ports:
      - 80
      - '8080:80'
      - 8081:81/udp
      - {target: 82, published: '8082', protocol: udp, mode: ingress}
      - {target: 83}
      - 127.0.0.1:8084:84
");
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].starts_with("stack.yml:10:9: services.web.ports[5]: the host IP"));
    let ports = &loaded.stack.services["web"]
        .spec
        .endpoint
        .as_ref()
        .unwrap()
        .ports;
    let got: Vec<_> = ports
        .iter()
        .map(|p| (p.published, p.target, p.protocol.as_str(), p.mode.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (0, 80, "", ""),
            (8080, 80, "", ""),
            (8081, 81, "udp", ""),
            (8082, 82, "udp", "ingress"),
            (0, 83, "", ""),
            (8084, 84, "", ""),
        ]
    );
    let errs = errors(
        "services:\n  web:\n    image: a\n    ports:\n      - {published: 80}\n      - {target: 80, mode: bridge}\n",
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(errs[0].starts_with("stack.yml:5:9: services.web.ports[0]: target is required"));
    assert!(
        errs[1].starts_with("stack.yml:6:28: services.web.ports[1].mode"),
        "{errs:?}"
    );
}

#[test]
fn entrypoint_and_environment_forms() {
    let loaded = ok("services:
  web:
    image: a
    entrypoint: /bin/sh -c
    command: ['echo hi']
    environment: {X: 'a=b', N: 5}
    labels: [a=1, b]
");
    let spec = &loaded.stack.services["web"].spec;
    assert_eq!(spec.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(spec.command, ["echo hi"]);
    assert_eq!(spec.env, ["X=a=b", "N=5"]);
    assert_eq!(spec.container_labels["b"], "");
}

#[test]
fn global_mode_refuses_replicas_and_empty_files_fail() {
    let errs = errors("services:\n  a:\n    image: x\n    deploy: {mode: global, replicas: 2}\n");
    assert!(
        errs[0].contains("replicas cannot be used with mode global"),
        "{errs:?}"
    );
    assert!(errors("")[0].contains("no services"));
    assert!(errors("- a\n")[0].starts_with("stack.yml:1:1: the file is not a mapping"));
}

#[test]
fn values_the_manager_would_refuse_are_refused_here() {
    let errs = errors(
        "services:
  web:
    image: a
    ports: ['80:80', '80:81', '80:82/udp']
    volumes: ['/a:/data', 'v:/data', 'w:/']
    networks:
      front: {aliases: ['bad alias']}
    deploy:
      endpoint_mode: dnsrr
      resources:
        limits: {memory: 1M, cpus: '0.5'}
        reservations: {cpus: '1'}
      placement:
        constraints: [node.role=worker]
        preferences: [{spread: zone}]
    wat: 1
networks:
  front:
volumes:
  v:
  w:
",
    );
    let expect = [
        "stack.yml:4:22: services.web.ports[1]: port 80/tcp is published twice",
        "stack.yml:5:27: services.web.volumes[1]: /data is the target of another volume",
        "stack.yml:5:38: services.web.volumes[2]: the target \"/\" is not an absolute path other than /",
        "stack.yml:7:25: services.web.networks.front.aliases[0]: invalid alias",
        "stack.yml:9:22: services.web.deploy.endpoint_mode: dnsrr has no virtual IP",
        "stack.yml:11:26: services.web.deploy.resources.limits.memory: 1048576 bytes is too small",
        "stack.yml:12:30: services.web.deploy.resources.reservations.cpus: the reservation exceeds",
        "stack.yml:14:23: services.web.deploy.placement.constraints[0]: invalid constraint",
        "stack.yml:15:32: services.web.deploy.placement.preferences[0].spread: invalid value \"zone\"",
        "stack.yml:16:5: services.web.wat: unknown key (expected one of: image,",
    ];
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    for want in expect {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errs:#?}"
        );
    }
}

#[test]
fn the_quick_start_example_is_valid() {
    let text = include_str!("../../../examples/stack.yml");
    let vars = Vars { vars: HashMap::from([("IMAGE".to_string(), "registry:5000/busybox:latest".to_string())]) };
    let loaded = load(&sources(&[("stack.yml", text)]), &vars, FsPath::new("/srv/app")).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let web = &loaded.stack.services["web"].spec;
    assert_eq!(web.image, "registry:5000/busybox:latest");
    assert_eq!(web.update_config.as_ref().map(|u| u.order.as_str()), Some("start-first"));
}
