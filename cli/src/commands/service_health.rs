//! The health check flags of `service create` and `service update`, as docker has them:
//! `--health-cmd`, `--health-interval`, `--health-timeout`, `--health-retries`,
//! `--health-start-period` and `--no-healthcheck`.

use std::time::Duration;

use anyhow::bail;
use clap::Args;
use proto::v1::HealthCheck;

use crate::parse::{duration_ms, parse_duration};

#[derive(Debug, Default, Clone, Args)]
pub struct HealthArgs {
    /// Command run inside the containers to check their health (by /bin/sh -c; exit 0:
    /// healthy).
    #[arg(id = "health_cmd", long = "health-cmd", value_name = "CMD")]
    pub cmd: Option<String>,
    /// Time between two checks, e.g. 30s (0: the default, 30s).
    #[arg(id = "health_interval", long = "health-interval", value_name = "DURATION", value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Longest time a check may run before it counts as failed (0: the default, 30s).
    #[arg(id = "health_timeout", long = "health-timeout", value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Consecutive failures that make a container unhealthy (0: the default, 3).
    #[arg(id = "health_retries", long = "health-retries", value_name = "N")]
    pub retries: Option<u32>,
    /// Time after the start during which failures do not count while the container has not
    /// been healthy yet (0: none).
    #[arg(
        id = "health_start_period", long = "health-start-period",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub start_period: Option<Duration>,
    /// Disable any health check.
    #[arg(long = "no-healthcheck")]
    pub no_healthcheck: bool,
}

impl HealthArgs {
    /// Whether any health flag was given.
    pub fn any(&self) -> bool {
        self.no_healthcheck || self.cmd.is_some() || self.values_given()
    }

    fn values_given(&self) -> bool {
        self.interval.is_some()
            || self.timeout.is_some()
            || self.retries.is_some()
            || self.start_period.is_some()
    }

    fn check_flags(&self) -> anyhow::Result<()> {
        if self.no_healthcheck && (self.cmd.is_some() || self.values_given()) {
            bail!("--no-healthcheck conflicts with the --health-* options");
        }
        if self.cmd.as_deref().is_some_and(|c| c.trim().is_empty()) {
            bail!("--health-cmd: the command is empty");
        }
        for (flag, value) in [
            ("--health-interval", self.interval),
            ("--health-timeout", self.timeout),
            ("--health-start-period", self.start_period),
        ] {
            if value.is_some_and(|d| !d.is_zero() && d < Duration::from_millis(1)) {
                bail!("{flag}: must be 0 or at least 1ms");
            }
        }
        Ok(())
    }

    /// Sets the given values on `check` (0 means the default again).
    fn apply_values(&self, check: &mut HealthCheck) {
        let ms = |d: Duration| (!d.is_zero()).then(|| duration_ms(d));
        if let Some(d) = self.interval {
            check.interval_ms = ms(d);
        }
        if let Some(d) = self.timeout {
            check.timeout_ms = ms(d);
        }
        if let Some(r) = self.retries {
            check.retries = (r != 0).then_some(r);
        }
        if let Some(d) = self.start_period {
            check.start_period_ms = duration_ms(d);
        }
    }

    /// The health check of `service create` (`None`: no flag given).
    pub fn for_create(&self) -> anyhow::Result<Option<HealthCheck>> {
        self.check_flags()?;
        if self.no_healthcheck {
            return Ok(Some(none()));
        }
        let Some(cmd) = &self.cmd else {
            if self.values_given() {
                bail!(
                    "the --health-* options need --health-cmd (the image's HEALTHCHECK is not read)"
                );
            }
            return Ok(None);
        };
        let mut check = shell(cmd);
        self.apply_values(&mut check);
        Ok(Some(check))
    }

    /// Applies the flags of `service update` to the current check.
    pub fn update(&self, current: &mut Option<HealthCheck>) -> anyhow::Result<()> {
        self.check_flags()?;
        if self.no_healthcheck {
            *current = Some(none());
            return Ok(());
        }
        if let Some(cmd) = &self.cmd {
            let check = current.get_or_insert_with(HealthCheck::default);
            check.test = shell(cmd).test;
        }
        if self.values_given() {
            match current.as_mut() {
                Some(check) if check.test.first().is_some_and(|t| t != "NONE") => {
                    self.apply_values(check)
                }
                _ => bail!(
                    "the service has no health check: the --health-* options need --health-cmd"
                ),
            }
        }
        Ok(())
    }
}

fn none() -> HealthCheck {
    HealthCheck {
        test: vec!["NONE".into()],
        ..Default::default()
    }
}

fn shell(cmd: &str) -> HealthCheck {
    HealthCheck {
        test: vec!["CMD-SHELL".into(), cmd.to_string()],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        health: HealthArgs,
    }

    fn args(flags: &[&str]) -> HealthArgs {
        let mut argv = vec!["x"];
        argv.extend_from_slice(flags);
        Wrap::try_parse_from(argv).unwrap().health
    }

    #[test]
    fn create_builds_a_shell_check() {
        assert_eq!(args(&[]).for_create().unwrap(), None);
        assert!(!args(&[]).any());
        let check = args(&[
            "--health-cmd",
            "test -f /tmp/ok",
            "--health-interval",
            "200ms",
            "--health-timeout",
            "1s",
            "--health-retries",
            "2",
            "--health-start-period",
            "5s",
        ])
        .for_create()
        .unwrap()
        .unwrap();
        assert_eq!(
            check,
            HealthCheck {
                test: vec!["CMD-SHELL".into(), "test -f /tmp/ok".into()],
                interval_ms: Some(200),
                timeout_ms: Some(1000),
                retries: Some(2),
                start_period_ms: 5000,
            }
        );
        let zero = args(&[
            "--health-cmd",
            "true",
            "--health-interval",
            "0",
            "--health-retries",
            "0",
        ]);
        let check = zero.for_create().unwrap().unwrap();
        assert_eq!(
            (check.interval_ms, check.retries),
            (None, None),
            "0: the defaults"
        );
        assert_eq!(
            args(&["--no-healthcheck"])
                .for_create()
                .unwrap()
                .unwrap()
                .test,
            ["NONE"]
        );
    }

    #[test]
    fn conflicting_or_incomplete_flags_are_refused() {
        let err = |flags: &[&str]| args(flags).for_create().unwrap_err().to_string();
        assert!(err(&["--no-healthcheck", "--health-cmd", "true"]).contains("--no-healthcheck"));
        assert!(err(&["--health-interval", "1s"]).contains("--health-cmd"));
        assert!(err(&["--health-cmd", " "]).contains("--health-cmd"));
        assert!(
            err(&["--health-cmd", "true", "--health-timeout", "10us"]).contains("--health-timeout")
        );
    }

    #[test]
    fn update_changes_only_what_is_given() {
        let mut current = None;
        let err = args(&["--health-retries", "5"])
            .update(&mut current)
            .unwrap_err();
        assert!(err.to_string().contains("no health check"));
        args(&["--health-cmd", "true"])
            .update(&mut current)
            .unwrap();
        assert_eq!(current, Some(shell("true")));
        args(&["--health-retries", "5"])
            .update(&mut current)
            .unwrap();
        args(&["--health-cmd", "false"])
            .update(&mut current)
            .unwrap();
        let check = current.clone().unwrap();
        assert_eq!((check.test, check.retries), (shell("false").test, Some(5)));
        args(&["--no-healthcheck"]).update(&mut current).unwrap();
        assert_eq!(current, Some(none()));
        assert!(
            args(&["--health-interval", "1s"])
                .update(&mut current)
                .is_err()
        );
    }

    #[test]
    fn ps_shows_the_health_of_running_tasks() {
        use super::super::service_view::current_state;
        let task = |state: &str, health: &str| proto::v1::Task {
            state: state.into(),
            health: health.into(),
            timestamp_ms: 1_000,
            ..Default::default()
        };
        assert_eq!(
            current_state(&task("running", "healthy"), 6_000),
            "Running 5 seconds ago (healthy)"
        );
        assert_eq!(
            current_state(&task("running", "starting"), 1_000),
            "Running Less than a second ago (starting)"
        );
        assert_eq!(
            current_state(&task("running", ""), 6_000),
            "Running 5 seconds ago"
        );
        assert_eq!(
            current_state(&task("failed", "unhealthy"), 6_000),
            "Failed 5 seconds ago"
        );
    }
}
