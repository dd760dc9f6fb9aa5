//! Health check validation and conversion.

use super::*;

fn with_check(check: pb::HealthCheck) -> pb::ServiceSpec {
    pb::ServiceSpec {
        name: "web".into(),
        image: "nginx:1.27".into(),
        healthcheck: Some(check),
        ..Default::default()
    }
}

fn test(parts: &[&str]) -> pb::HealthCheck {
    pb::HealthCheck {
        test: parts.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    }
}

fn refused(check: pb::HealthCheck) -> String {
    spec_from_proto(&with_check(check))
        .expect_err("refused")
        .message()
        .to_string()
}

#[test]
fn absent_values_take_dockers_defaults_and_round_trip() {
    let valid = spec_from_proto(&with_check(test(&["CMD-SHELL", "test -f /tmp/ok"]))).unwrap();
    let check = valid.spec.healthcheck.clone().unwrap();
    assert_eq!(
        check,
        HealthCheck {
            test: vec!["CMD-SHELL".into(), "test -f /tmp/ok".into()],
            interval_ms: 30_000,
            timeout_ms: 30_000,
            retries: 3,
            start_period_ms: 0,
        }
    );
    assert!(valid.spec.has_health_check());
    let back = spec_to_proto(&valid.name, &valid.labels, &valid.spec);
    let again = spec_from_proto(&back).unwrap();
    assert_eq!(again.spec, valid.spec);
    let given = pb::HealthCheck {
        interval_ms: Some(200),
        timeout_ms: Some(1),
        retries: Some(2),
        start_period_ms: 5,
        ..test(&["CMD", "true"])
    };
    let valid = spec_from_proto(&with_check(given.clone())).unwrap();
    assert_eq!(
        spec_to_proto(&valid.name, &valid.labels, &valid.spec).healthcheck,
        Some(given)
    );
}

#[test]
fn none_and_absent_mean_no_check() {
    let none = spec_from_proto(&with_check(test(&["NONE"]))).unwrap();
    assert!(none.spec.healthcheck.is_some());
    assert!(!none.spec.has_health_check());
    let mut absent = with_check(test(&["NONE"]));
    absent.healthcheck = None;
    assert_eq!(spec_from_proto(&absent).unwrap().spec.healthcheck, None);
}

#[test]
fn invalid_checks_name_the_field() {
    for parts in [
        &[][..],
        &["CURL", "x"],
        &["CMD"],
        &["CMD", " "],
        &["CMD-SHELL"],
        &["CMD-SHELL", "a", "b"],
        &["NONE", "x"],
    ] {
        let message = refused(test(parts));
        assert!(
            message.contains("spec.healthcheck.test:"),
            "{parts:?}: {message}"
        );
    }
    let zero = |f: &dyn Fn(&mut pb::HealthCheck)| {
        let mut check = test(&["CMD", "true"]);
        f(&mut check);
        refused(check)
    };
    assert!(zero(&|c| c.interval_ms = Some(0)).contains("spec.healthcheck.interval_ms:"));
    assert!(zero(&|c| c.timeout_ms = Some(0)).contains("spec.healthcheck.timeout_ms:"));
    assert!(zero(&|c| c.retries = Some(0)).contains("spec.healthcheck.retries:"));
}
