//! The manager's optional tuning flags.

use std::time::Duration;

/// Flags given to `cluster-manager` at every start; `None` keeps the manager's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tuning {
    pub heartbeat_ms: Option<u64>,
    pub election_min_ms: Option<u64>,
    pub election_max_ms: Option<u64>,
    pub snapshot_logs: Option<u64>,
    pub logs_kept: Option<u64>,
    pub quorum_timeout_ms: Option<u64>,
}

/// The manager's own default for `--quorum-timeout-ms`.
pub const DEFAULT_QUORUM_TIMEOUT_MS: u64 = 5000;

impl Tuning {
    /// Small timeouts for tests: a failed quorum shows within 2 s.
    pub fn fast() -> Self {
        Tuning {
            quorum_timeout_ms: Some(2000),
            ..Tuning::default()
        }
    }

    pub fn quorum_timeout_ms(mut self, ms: u64) -> Self {
        self.quorum_timeout_ms = Some(ms);
        self
    }

    /// Snapshot every `every` entries and keep `kept` entries behind each snapshot.
    pub fn snapshots(mut self, every: u64, kept: u64) -> Self {
        self.snapshot_logs = Some(every);
        self.logs_kept = Some(kept);
        self
    }

    /// The quorum timeout the manager will use.
    pub fn quorum_timeout(&self) -> Duration {
        Duration::from_millis(self.quorum_timeout_ms.unwrap_or(DEFAULT_QUORUM_TIMEOUT_MS))
    }

    /// The command-line flags.
    pub fn args(&self) -> Vec<String> {
        let flags = [
            ("--heartbeat-ms", self.heartbeat_ms),
            ("--election-min-ms", self.election_min_ms),
            ("--election-max-ms", self.election_max_ms),
            ("--snapshot-logs", self.snapshot_logs),
            ("--logs-kept", self.logs_kept),
            ("--quorum-timeout-ms", self.quorum_timeout_ms),
        ];
        flags
            .into_iter()
            .filter_map(|(flag, value)| value.map(|v| [flag.to_string(), v.to_string()]))
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_only_for_set_values() {
        assert!(Tuning::default().args().is_empty());
        let t = Tuning::fast().snapshots(50, 0);
        assert_eq!(
            t.args(),
            [
                "--snapshot-logs",
                "50",
                "--logs-kept",
                "0",
                "--quorum-timeout-ms",
                "2000"
            ]
        );
        assert_eq!(t.quorum_timeout(), Duration::from_secs(2));
    }
}
