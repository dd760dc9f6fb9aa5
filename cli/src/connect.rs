//! Credentials and connections: loads the admin config, checks the certificate, connects to the
//! first manager that answers, and turns gRPC statuses into one-line errors.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail};
use identity::AdminConfig;
use proto::v1::control_client::ControlClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::output::format_system_time;

/// Every RPC gives up after this long.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(15);

/// A guard over `identity::connect`, which has its own (shorter) timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where to find the cluster: from the global `--config` / `--host` flags.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub config: Option<std::path::PathBuf>,
    pub host: Option<String>,
}

/// An open mTLS channel to one manager.
pub struct Connection {
    pub channel: Channel,
    /// The address that answered.
    pub addr: String,
}

impl Connection {
    /// A Control API client on this connection.
    pub fn control(&self) -> ControlClient<Channel> {
        ControlClient::new(self.channel.clone())
    }
}

impl Target {
    /// Loads the credentials, checks them and connects to the first manager that answers.
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        let Some(path) = self.config.as_deref() else {
            bail!("{NO_CREDENTIALS}");
        };
        let config = load_config(path)?;
        let ident = config.credentials.identity().map_err(|e| {
            anyhow!(
                "invalid admin certificate in {}: {}",
                path.display(),
                chain(&e)
            )
        })?;
        check_not_expired(path, ident.not_after, SystemTime::now())?;
        let addrs = manager_addrs(&config, self.host.as_deref())?;
        identity::install_crypto_provider();
        connect_any(&addrs, &config).await
    }
}

/// The error when neither `--config` nor `CLUSTER_CONFIG` was given.
const NO_CREDENTIALS: &str = "no cluster credentials: pass --config or set CLUSTER_CONFIG \
                              (cluster-manager init writes admin.json into its data dir)";

/// Reads the admin config.
pub fn load_config(path: &Path) -> anyhow::Result<AdminConfig> {
    // Check readability first so a wrong path gets the operating system's plain explanation.
    std::fs::metadata(path)
        .map_err(|e| anyhow!("cannot read cluster credentials {}: {e}", path.display()))?;
    AdminConfig::load(path).map_err(|e| {
        anyhow!(
            "cannot load cluster credentials {}: {}",
            path.display(),
            chain(&e)
        )
    })
}

/// Fails with the expiry date once the admin certificate is no longer valid.
pub fn check_not_expired(
    path: &Path,
    not_after: SystemTime,
    now: SystemTime,
) -> anyhow::Result<()> {
    if now > not_after {
        bail!(
            "the admin certificate in {} expired on {}; get a new admin config from a manager",
            path.display(),
            format_system_time(not_after)
        );
    }
    Ok(())
}

/// The managers to try, in order: `--host` alone if given, else the config's list.
pub fn manager_addrs(config: &AdminConfig, host: Option<&str>) -> anyhow::Result<Vec<String>> {
    if let Some(host) = host {
        let host = host.trim();
        if host.is_empty() {
            bail!("--host is empty: expected HOST:PORT");
        }
        return Ok(vec![host.to_string()]);
    }
    if config.managers.is_empty() {
        bail!("the admin config lists no manager addresses; pass --host HOST:PORT");
    }
    Ok(config.managers.clone())
}

/// Tries each address in order; the first that connects wins.
async fn connect_any(addrs: &[String], config: &AdminConfig) -> anyhow::Result<Connection> {
    let mut failures = Vec::new();
    for addr in addrs {
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            identity::connect(addr, &config.credentials),
        )
        .await
        {
            Ok(Ok(channel)) => {
                return Ok(Connection {
                    channel,
                    addr: addr.clone(),
                });
            }
            Ok(Err(e)) => failures.push(failure(addr, &chain(&e))),
            Err(_) => failures.push(format!(
                "{addr}: timed out after {}s",
                CONNECT_TIMEOUT.as_secs()
            )),
        }
    }
    Err(anyhow!(
        "cannot connect to any manager: {}",
        failures.join("; ")
    ))
}

/// "ADDR: why", without repeating the address when the error already names it.
fn failure(addr: &str, why: &str) -> String {
    if let Some(rest) = why.strip_prefix(&format!("cannot connect to {addr}: ")) {
        format!("{addr}: {rest}")
    } else if why.contains(addr) {
        why.to_string()
    } else {
        format!("{addr}: {why}")
    }
}

/// Runs one RPC with [`RPC_TIMEOUT`] and maps its status to a one-line error.
pub async fn rpc<T>(
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(RPC_TIMEOUT, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(anyhow!(status_message(&status))),
        Err(_) => Err(anyhow!(
            "the manager did not answer within {}s",
            RPC_TIMEOUT.as_secs()
        )),
    }
}

/// One line for a gRPC status: the server's message, prefixed where the code adds meaning.
pub fn status_message(status: &Status) -> String {
    let mut message = status.message().trim().to_string();
    if let Some(source) = std::error::Error::source(status) {
        let cause = chain(source);
        if !cause.is_empty() && !message.contains(&cause) {
            message = if message.is_empty() {
                cause
            } else {
                format!("{message}: {cause}")
            };
        }
    }
    let message = message.as_str();
    let or = |fallback: &str| {
        if message.is_empty() {
            fallback.to_string()
        } else {
            message.to_string()
        }
    };
    match status.code() {
        Code::Unavailable => or("the manager is unavailable"),
        Code::DeadlineExceeded => format!("timed out: {}", or("deadline exceeded")),
        Code::PermissionDenied => format!("permission denied: {}", or("not allowed")),
        Code::Unauthenticated => format!("not authenticated: {}", or("no valid certificate")),
        Code::Unimplemented => format!("not supported by this manager: {}", or("unimplemented")),
        Code::Internal | Code::Unknown | Code::DataLoss => {
            format!("internal error on the manager: {}", or("unknown"))
        }
        _ => or(status.code().description()),
    }
}

/// An error and its sources on one line, skipping sources its message already repeats.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !next.is_empty() && !text.contains(&next) {
            if text.is_empty() {
                text = next;
            } else {
                text = format!("{text}: {next}");
            }
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_config_explains_both_ways() {
        assert!(
            NO_CREDENTIALS.contains("pass --config or set CLUSTER_CONFIG (cluster-manager init")
        );
        let err = load_config(Path::new("/nonexistent/admin.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/admin.json"), "{err}");
    }

    #[test]
    fn expiry() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let path = Path::new("admin.json");
        assert!(check_not_expired(path, t, t - Duration::from_secs(1)).is_ok());
        let err = check_not_expired(path, t, t + Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("certificate in admin.json expired on 2023-11-14T22:13:20Z"),
            "{err}"
        );
    }

    #[test]
    fn connect_failures_name_the_address_once() {
        let a = "10.0.0.1:4242";
        assert_eq!(
            failure(a, "cannot connect to 10.0.0.1:4242: refused"),
            "10.0.0.1:4242: refused"
        );
        assert_eq!(failure(a, "timed out"), "10.0.0.1:4242: timed out");
        assert_eq!(
            failure(a, "dial 10.0.0.1:4242 failed"),
            "dial 10.0.0.1:4242 failed"
        );
    }

    #[test]
    fn host_overrides_managers() {
        let config = AdminConfig {
            managers: vec!["a:1".to_string(), "b:1".to_string()],
            credentials: identity::Credentials {
                ca_cert_pem: String::new(),
                cert_pem: String::new(),
                key_pem: String::new(),
            },
        };
        assert_eq!(manager_addrs(&config, None).unwrap(), vec!["a:1", "b:1"]);
        assert_eq!(manager_addrs(&config, Some("c:1")).unwrap(), vec!["c:1"]);
        assert!(manager_addrs(&config, Some(" ")).is_err());
        let empty = AdminConfig {
            managers: vec![],
            ..config
        };
        assert!(
            manager_addrs(&empty, None)
                .unwrap_err()
                .to_string()
                .contains("--host")
        );
    }

    #[test]
    fn statuses() {
        let s = Status::unavailable("no quorum: 1 of 3 managers reachable");
        assert_eq!(status_message(&s), "no quorum: 1 of 3 managers reachable");
        assert_eq!(
            status_message(&Status::not_found("node x not found")),
            "node x not found"
        );
        assert_eq!(
            status_message(&Status::permission_denied("")),
            "permission denied: not allowed"
        );
        assert!(status_message(&Status::internal("boom")).contains("boom"));
    }

    #[tokio::test]
    async fn rpc_maps_errors() {
        let err = rpc(async { Err::<tonic::Response<()>, _>(Status::unavailable("no leader")) })
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "no leader");
        let ok = rpc(async { Ok(tonic::Response::new(7)) }).await.unwrap();
        assert_eq!(ok, 7);
    }
}
