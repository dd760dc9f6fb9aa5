//! How a service's changes are rolled out, as docker has the flags: `--update-parallelism`,
//! `--update-delay`, `--update-failure-action`, `--update-monitor`,
//! `--update-max-failure-ratio`, `--update-order` and the same six with `--rollback-`; and
//! what the CLI makes of a service's update status while it waits.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};
use proto::v1::{Service, UpdateConfig};

use crate::parse::{duration_ms, parse_duration};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FailureAction {
    Pause,
    Continue,
    Rollback,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Order {
    StopFirst,
    StartFirst,
}

#[derive(Debug, Default, Clone, Args)]
pub struct RolloutArgs {
    /// Tasks updated at once (0: all at once; default 1).
    #[arg(long = "update-parallelism", value_name = "N")]
    pub update_parallelism: Option<u64>,
    /// Pause after each updated task runs, e.g. 10s.
    #[arg(long = "update-delay", value_name = "DURATION", value_parser = parse_duration)]
    pub update_delay: Option<Duration>,
    /// What to do when an updated task fails (default pause).
    #[arg(long = "update-failure-action", value_enum)]
    pub update_failure_action: Option<FailureAction>,
    /// How long each updated task is watched for failure once it runs (default 5s).
    #[arg(long = "update-monitor", value_name = "DURATION", value_parser = parse_duration)]
    pub update_monitor: Option<Duration>,
    /// Fraction of updated tasks that may fail before the failure action (0 to 1; default 0).
    #[arg(long = "update-max-failure-ratio", value_name = "RATIO")]
    pub update_max_failure_ratio: Option<f32>,
    /// Stop the old task before starting the new one, or the reverse (default stop-first).
    #[arg(long = "update-order", value_enum)]
    pub update_order: Option<Order>,
    /// Tasks rolled back at once (0: all at once; default 1).
    #[arg(long = "rollback-parallelism", value_name = "N")]
    pub rollback_parallelism: Option<u64>,
    /// Pause after each rolled-back task runs.
    #[arg(long = "rollback-delay", value_name = "DURATION", value_parser = parse_duration)]
    pub rollback_delay: Option<Duration>,
    /// What to do when a rolled-back task fails (pause or continue; default pause).
    #[arg(long = "rollback-failure-action", value_enum)]
    pub rollback_failure_action: Option<FailureAction>,
    /// How long each rolled-back task is watched for failure once it runs (default 5s).
    #[arg(long = "rollback-monitor", value_name = "DURATION", value_parser = parse_duration)]
    pub rollback_monitor: Option<Duration>,
    /// Fraction of rolled-back tasks that may fail (0 to 1; default 0).
    #[arg(long = "rollback-max-failure-ratio", value_name = "RATIO")]
    pub rollback_max_failure_ratio: Option<f32>,
    /// Order of stop and start during a rollback (default stop-first).
    #[arg(long = "rollback-order", value_enum)]
    pub rollback_order: Option<Order>,
}

/// One half of the flags (update or rollback), to apply to one config.
struct Half {
    prefix: &'static str,
    parallelism: Option<u64>,
    delay: Option<Duration>,
    failure_action: Option<FailureAction>,
    monitor: Option<Duration>,
    max_failure_ratio: Option<f32>,
    order: Option<Order>,
}

impl Half {
    fn any(&self) -> bool {
        self.parallelism.is_some()
            || self.delay.is_some()
            || self.failure_action.is_some()
            || self.monitor.is_some()
            || self.max_failure_ratio.is_some()
            || self.order.is_some()
    }

    fn apply(&self, config: &mut UpdateConfig) -> anyhow::Result<()> {
        let prefix = self.prefix;
        if let Some(ratio) = self.max_failure_ratio {
            if !(0.0..=1.0).contains(&ratio) {
                bail!("--{prefix}-max-failure-ratio: {ratio} is not between 0 and 1");
            }
            config.max_failure_ratio = ratio;
        }
        if let Some(parallelism) = self.parallelism {
            config.parallelism = Some(parallelism);
        }
        if let Some(delay) = self.delay {
            config.delay_ms = duration_ms(delay);
        }
        if let Some(monitor) = self.monitor {
            config.monitor_ms = Some(duration_ms(monitor));
        }
        if let Some(action) = self.failure_action {
            config.failure_action = match action {
                FailureAction::Pause => "pause",
                FailureAction::Continue => "continue",
                FailureAction::Rollback if prefix == "rollback" => {
                    bail!("--rollback-failure-action: a rollback cannot roll back (use pause or continue)")
                }
                FailureAction::Rollback => "rollback",
            }
            .into();
        }
        if let Some(order) = self.order {
            config.order = match order {
                Order::StopFirst => "stop-first",
                Order::StartFirst => "start-first",
            }
            .into();
        }
        Ok(())
    }
}

impl RolloutArgs {
    fn halves(&self) -> [Half; 2] {
        [
            Half {
                prefix: "update",
                parallelism: self.update_parallelism,
                delay: self.update_delay,
                failure_action: self.update_failure_action,
                monitor: self.update_monitor,
                max_failure_ratio: self.update_max_failure_ratio,
                order: self.update_order,
            },
            Half {
                prefix: "rollback",
                parallelism: self.rollback_parallelism,
                delay: self.rollback_delay,
                failure_action: self.rollback_failure_action,
                monitor: self.rollback_monitor,
                max_failure_ratio: self.rollback_max_failure_ratio,
                order: self.rollback_order,
            },
        ]
    }

    /// Whether any flag was given.
    pub fn any(&self) -> bool {
        self.halves().iter().any(Half::any)
    }

    /// Applies the flags to the spec's update and rollback configs (absent ones are created
    /// with the defaults the manager would use).
    pub fn apply(
        &self,
        update: &mut Option<UpdateConfig>,
        rollback: &mut Option<UpdateConfig>,
    ) -> anyhow::Result<()> {
        let [update_flags, rollback_flags] = self.halves();
        for (flags, config) in [(update_flags, update), (rollback_flags, rollback)] {
            if flags.any() {
                flags.apply(config.get_or_insert_with(UpdateConfig::default))?;
            }
        }
        Ok(())
    }
}

/// How a rolling update the CLI waits for ended, once it did: `Ok` when it completed (or, for
/// `service rollback`, when the rollback completed), else what went wrong. `None` while it
/// goes on, or when the service has no update status.
pub fn update_outcome(service: &Service, rolling_back: bool) -> Option<Result<(), String>> {
    let status = service.update_status.as_ref()?;
    match status.state.as_str() {
        "completed" => Some(Ok(())),
        "rollback_completed" if rolling_back => Some(Ok(())),
        "rollback_completed" => Some(Err(format!("update rolled back: {}", status.message))),
        "paused" | "rollback_paused" => Some(Err(status.message.clone())),
        _ => None,
    }
}

/// The progress of an update in progress, e.g. "update: 2 of 6 tasks updated".
pub fn update_progress(service: &Service) -> Option<String> {
    let status = service.update_status.as_ref()?;
    let verb = match status.state.as_str() {
        "updating" => "update",
        "rollback_started" => "rollback",
        _ => return None,
    };
    let done = status.total.saturating_sub(status.remaining);
    Some(format!("{verb}: {done} of {} tasks replaced", status.total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::UpdateStatus;

    fn flags() -> RolloutArgs {
        RolloutArgs {
            update_parallelism: Some(2),
            update_order: Some(Order::StartFirst),
            update_failure_action: Some(FailureAction::Rollback),
            rollback_max_failure_ratio: Some(0.25),
            ..RolloutArgs::default()
        }
    }

    #[test]
    fn flags_fill_both_configs() {
        let (mut update, mut rollback) = (None, None);
        flags().apply(&mut update, &mut rollback).unwrap();
        let update = update.unwrap();
        assert_eq!(update.parallelism, Some(2));
        assert_eq!(update.order, "start-first");
        assert_eq!(update.failure_action, "rollback");
        assert_eq!(rollback.unwrap().max_failure_ratio, 0.25);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let args = RolloutArgs { update_max_failure_ratio: Some(1.5), ..RolloutArgs::default() };
        let error = args.apply(&mut None, &mut None).unwrap_err().to_string();
        assert!(error.starts_with("--update-max-failure-ratio"), "{error}");
        let args = RolloutArgs {
            rollback_failure_action: Some(FailureAction::Rollback),
            ..RolloutArgs::default()
        };
        let error = args.apply(&mut None, &mut None).unwrap_err().to_string();
        assert!(error.starts_with("--rollback-failure-action"), "{error}");
    }

    #[test]
    fn outcomes() {
        let with = |state: &str| Service {
            update_status: Some(UpdateStatus {
                state: state.into(),
                message: "m".into(),
                total: 6,
                remaining: 2,
                ..UpdateStatus::default()
            }),
            ..Service::default()
        };
        assert_eq!(update_outcome(&with("updating"), false), None);
        assert_eq!(update_progress(&with("updating")).as_deref(), Some("update: 4 of 6 tasks replaced"));
        assert_eq!(update_outcome(&with("completed"), false), Some(Ok(())));
        assert_eq!(update_outcome(&with("rollback_completed"), true), Some(Ok(())));
        assert!(update_outcome(&with("rollback_completed"), false).is_some_and(|r| r.is_err()));
        assert_eq!(update_outcome(&with("paused"), false), Some(Err("m".into())));
    }
}
