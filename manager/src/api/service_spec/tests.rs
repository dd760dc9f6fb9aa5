use super::*;

fn base() -> pb::ServiceSpec {
    pb::ServiceSpec { name: "web".into(), image: "nginx:1.27".into(), ..Default::default() }
}

fn refused(spec: pb::ServiceSpec) -> String {
    spec_from_proto(&spec).expect_err("refused").message().to_string()
}

#[test]
fn defaults_fill_absent_fields() {
    let valid = spec_from_proto(&base()).unwrap();
    assert_eq!(valid.name, "web");
    assert_eq!(valid.spec, ServiceSpec { image: "nginx:1.27".into(), ..ServiceSpec::default() });
    assert_eq!(valid.spec.mode, ServiceMode::Replicated { replicas: 1 });
}

#[test]
fn a_full_spec_survives_the_round_trip() {
    let spec = pb::ServiceSpec {
        name: "api.v2_x-1".into(),
        labels: [("team".to_string(), "core".to_string())].into(),
        image: "registry:5000/api@sha256:abc".into(),
        entrypoint: vec!["/bin/sh".into()],
        command: vec!["-c".into(), "serve".into()],
        env: vec!["A=1".into(), "B".into()],
        container_labels: [("x".to_string(), "y".to_string())].into(),
        hostname: "h".into(),
        user: "1000".into(),
        workdir: "/srv".into(),
        mounts: vec![
            pb::Mount { r#type: "bind".into(), source: "/data".into(), target: "/data".into(), readonly: true, tmpfs_size_bytes: 0 },
            pb::Mount { r#type: "tmpfs".into(), source: String::new(), target: "/tmp".into(), readonly: false, tmpfs_size_bytes: 1 << 20 },
            pb::Mount { r#type: "volume".into(), source: "cache".into(), target: "/cache".into(), readonly: false, tmpfs_size_bytes: 0 },
        ],
        resources: Some(pb::Resources {
            reservations: Some(pb::ResourceAmounts { nano_cpus: 500_000_000, memory_bytes: 64 << 20, pids: 0 }),
            limits: Some(pb::ResourceAmounts { nano_cpus: 1_000_000_000, memory_bytes: 128 << 20, pids: 100 }),
        }),
        restart: Some(pb::RestartPolicy { condition: "on-failure".into(), delay_ms: Some(0), max_attempts: 3, window_ms: 60_000 }),
        placement: Some(pb::Placement {
            constraints: vec!["node.labels.zone==a".into()],
            preferences: vec!["spread=node.labels.rack".into()],
            max_replicas_per_node: 2,
        }),
        mode: Some(pb::ServiceMode { kind: "replicated-job".into(), replicas: Some(10), max_concurrent: 2 }),
        endpoint: Some(pb::EndpointSpec {
            mode: "vip".into(),
            ports: vec![
                pb::PortConfig { target: 80, published: 8080, protocol: "tcp".into(), mode: "ingress".into() },
                pb::PortConfig { target: 53, published: 8080, protocol: "udp".into(), mode: "host".into() },
            ],
        }),
        stop_grace_period_ms: Some(3_000),
        task_history_limit: Some(2),
        networks: vec![pb::NetworkAttachment { target: "n1".into(), aliases: vec!["web".into()] }],
        update_config: Some(pb::UpdateConfig {
            parallelism: Some(2),
            delay_ms: 1_500,
            failure_action: "rollback".into(),
            monitor_ms: Some(10_000),
            max_failure_ratio: 0.25,
            order: "start-first".into(),
        }),
        rollback_config: Some(pb::UpdateConfig {
            parallelism: Some(0),
            delay_ms: 0,
            failure_action: "continue".into(),
            monitor_ms: Some(5_000),
            max_failure_ratio: 0.0,
            order: "stop-first".into(),
        }),
        force_update: 3,
        stop_signal: "SIGQUIT".into(),
        ..Default::default()
    };
    let valid = spec_from_proto(&spec).unwrap();
    assert_eq!(valid.spec.mode, ServiceMode::ReplicatedJob { max_concurrent: 2, total_completions: 10 });
    assert_eq!(spec_to_proto(&valid.name, &valid.labels, &valid.spec), spec);
}

#[test]
fn update_configs_are_checked_field_by_field() {
    let with = |config: pb::UpdateConfig| pb::ServiceSpec { update_config: Some(config), ..base() };
    let bad_ratio = pb::UpdateConfig { max_failure_ratio: 1.5, ..Default::default() };
    assert!(refused(with(bad_ratio)).contains("spec.update_config.max_failure_ratio"));
    let bad_order = pb::UpdateConfig { order: "sideways".into(), ..Default::default() };
    assert!(refused(with(bad_order)).contains("spec.update_config.order"));
    let rollback_of_rollback = pb::ServiceSpec {
        rollback_config: Some(pb::UpdateConfig { failure_action: "rollback".into(), ..Default::default() }),
        ..base()
    };
    assert!(refused(rollback_of_rollback).contains("spec.rollback_config.failure_action"));
    let defaults = spec_from_proto(&with(pb::UpdateConfig::default())).unwrap().spec.update_config;
    assert_eq!(defaults, UpdateConfig::default());
}

#[test]
fn stop_signals_are_names_or_numbers() {
    for signal in ["SIGTERM", "term", "QUIT", "15", ""] {
        let spec = pb::ServiceSpec { stop_signal: signal.into(), ..base() };
        assert_eq!(spec_from_proto(&spec).unwrap().spec.stop_signal, signal);
    }
    for signal in ["SIGNOPE", "0", "99", "TERM 2"] {
        let message = refused(pb::ServiceSpec { stop_signal: signal.into(), ..base() });
        assert!(message.contains("spec.stop_signal"), "{message}");
    }
}

#[test]
fn service_names_follow_swarm_rules() {
    for name in ["a", "web", "Web-1", "a.b_c-d", &"x".repeat(63)] {
        assert!(valid_service_name(name), "{name}");
    }
    for name in ["", "-web", ".web", "_web", "we b", "web/1", "wéb", &"x".repeat(64)] {
        assert!(!valid_service_name(name), "{name}");
    }
}

#[test]
fn invalid_specs_are_refused_naming_the_field() {
    let mut cases: Vec<(pb::ServiceSpec, &str)> = Vec::new();
    let mut add = |field: &str, change: &dyn Fn(&mut pb::ServiceSpec)| {
        let mut spec = base();
        change(&mut spec);
        cases.push((spec, Box::leak(field.to_string().into_boxed_str())));
    };
    add("spec.name", &|s| s.name = "-bad".into());
    add("spec.networks[0].target", &|s| s.networks = vec![pb::NetworkAttachment { target: " ".into(), aliases: vec![] }]);
    add("spec.networks[0].aliases[1]", &|s| {
        s.networks = vec![pb::NetworkAttachment { target: "n".into(), aliases: vec!["ok".into(), "not ok".into()] }]
    });
    add("spec.image", &|s| s.image = String::new());
    add("spec.env[0]", &|s| s.env = vec!["=x".into()]);
    add("spec.labels", &|s| s.labels = [(String::new(), "x".to_string())].into());
    add("spec.mode.replicas", &|s| {
        s.mode = Some(pb::ServiceMode { kind: "global".into(), replicas: Some(3), max_concurrent: 0 })
    });
    add("spec.mode.max_concurrent", &|s| {
        s.mode = Some(pb::ServiceMode { kind: "replicated".into(), replicas: Some(3), max_concurrent: 1 })
    });
    add("spec.mode.kind", &|s| s.mode = Some(pb::ServiceMode { kind: "daemonset".into(), ..Default::default() }));
    add("spec.placement.constraints[1]", &|s| {
        s.placement = Some(pb::Placement { constraints: vec!["node.role==worker".into(), "node.zone==a".into()], ..Default::default() })
    });
    add("spec.placement.preferences[0]", &|s| {
        s.placement = Some(pb::Placement { preferences: vec!["binpack=node.labels.x".into()], ..Default::default() })
    });
    add("spec.mounts[0].type", &|s| s.mounts = vec![pb::Mount { r#type: "nfs".into(), target: "/x".into(), ..Default::default() }]);
    add("spec.mounts[0].target", &|s| s.mounts = vec![pb::Mount { target: "data".into(), ..Default::default() }]);
    add("spec.mounts[1].target", &|s| {
        s.mounts = vec![pb::Mount { target: "/d".into(), ..Default::default() }, pb::Mount { target: "/d".into(), ..Default::default() }]
    });
    add("spec.mounts[0].source", &|s| {
        s.mounts = vec![pb::Mount { r#type: "bind".into(), source: "rel".into(), target: "/d".into(), ..Default::default() }]
    });
    add("spec.resources.limits.memory_bytes", &|s| {
        s.resources = Some(pb::Resources {
            limits: Some(pb::ResourceAmounts { memory_bytes: 1 << 20, ..Default::default() }),
            ..Default::default()
        })
    });
    add("spec.restart.condition", &|s| s.restart = Some(pb::RestartPolicy { condition: "always".into(), ..Default::default() }));
    add("spec.endpoint.ports[0].target", &|s| {
        s.endpoint = Some(pb::EndpointSpec { ports: vec![pb::PortConfig { target: 70_000, ..Default::default() }], ..Default::default() })
    });
    add("spec.endpoint.ports[0].published", &|s| {
        s.endpoint = Some(pb::EndpointSpec {
            ports: vec![pb::PortConfig { target: 80, published: 65_536, ..Default::default() }],
            ..Default::default()
        })
    });
    add("spec.endpoint.ports[1].published", &|s| {
        let port = pb::PortConfig { target: 80, published: 8080, ..Default::default() };
        s.endpoint = Some(pb::EndpointSpec { ports: vec![port.clone(), pb::PortConfig { target: 81, ..port }], ..Default::default() })
    });
    add("spec.endpoint.ports[0].mode", &|s| {
        s.endpoint = Some(pb::EndpointSpec {
            mode: "dnsrr".into(),
            ports: vec![pb::PortConfig { target: 80, published: 80, ..Default::default() }],
        })
    });
    for (spec, field) in cases {
        let message = refused(spec);
        assert!(message.contains(&format!("{field}:")), "expected {field} in {message:?}");
    }
}

#[test]
fn memory_limit_of_exactly_4_mib_is_fine() {
    let mut spec = base();
    spec.resources = Some(pb::Resources {
        limits: Some(pb::ResourceAmounts { memory_bytes: MIN_MEMORY_LIMIT, ..Default::default() }),
        ..Default::default()
    });
    assert!(spec_from_proto(&spec).is_ok());
}
