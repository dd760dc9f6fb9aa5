//! `cluster join-token [--rotate] [-q] worker|manager`.

use clap::{Args, ValueEnum};
use proto::v1::{GetJoinTokenRequest, JoinTokenResponse};

use crate::connect::{Target, rpc};
use crate::output::{Format, json, print};

/// Which token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TokenRole {
    Worker,
    Manager,
}

impl TokenRole {
    fn as_str(self) -> &'static str {
        match self {
            TokenRole::Worker => "worker",
            TokenRole::Manager => "manager",
        }
    }
}

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    /// Replace the token with a new one; the old one stops working.
    #[arg(long)]
    pub rotate: bool,
    /// Only print the token.
    #[arg(short, long, conflicts_with = "format")]
    pub quiet: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Which token: worker or manager.
    #[arg(value_enum)]
    pub role: TokenRole,
}

/// Shows (and optionally rotates) a join token.
pub async fn run(args: JoinTokenArgs, target: &Target) -> anyhow::Result<()> {
    let connection = target.connect().await?;
    let mut client = connection.control();
    let request = GetJoinTokenRequest {
        role: args.role.as_str().to_string(),
        rotate: args.rotate,
    };
    let response = rpc(client.get_join_token(request)).await?;
    let text = if args.quiet {
        format!("{}\n", response.token)
    } else if args.format == Format::Json {
        json(&response)?
    } else {
        let mut text = String::new();
        if args.rotate {
            text.push_str(&format!(
                "Successfully rotated {} join token.\n\n",
                args.role.as_str()
            ));
        }
        text.push_str(&join_instructions(args.role, &response, &connection.addr));
        text
    };
    print(&text)?;
    Ok(())
}

/// The docker-like "To add a worker ..." text. Uses the first advertised manager address, or
/// the one we are connected to when the manager lists none.
pub fn join_instructions(role: TokenRole, response: &JoinTokenResponse, connected: &str) -> String {
    let addr = response
        .manager_addrs
        .first()
        .map_or(connected, String::as_str);
    let token = &response.token;
    let command = match role {
        TokenRole::Worker => format!(
            "cluster-agent join --token {token} --join-addr {addr} \
             --advertise-addr <THIS_HOST> --data-dir /var/lib/cluster/agent"
        ),
        TokenRole::Manager => format!(
            "cluster-manager join --token {token} --join-addr {addr} \
             --listen-addr <THIS_HOST>:4242 --data-dir /var/lib/cluster/manager"
        ),
    };
    format!(
        "To add a {} to this cluster, run the following command:\n\n    {command}\n",
        role.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(addrs: &[&str]) -> JoinTokenResponse {
        JoinTokenResponse {
            role: "worker".to_string(),
            token: "CLTKN-1-abc-def".to_string(),
            manager_addrs: addrs.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn worker_instructions() {
        let text = join_instructions(
            TokenRole::Worker,
            &response(&["10.0.0.1:4242", "10.0.0.2:4242"]),
            "x:1",
        );
        assert_eq!(
            text,
            "To add a worker to this cluster, run the following command:\n\n    \
             cluster-agent join --token CLTKN-1-abc-def --join-addr 10.0.0.1:4242 \
             --advertise-addr <THIS_HOST> --data-dir /var/lib/cluster/agent\n"
        );
    }

    #[test]
    fn manager_instructions_fall_back_to_connected_addr() {
        let text = join_instructions(TokenRole::Manager, &response(&[]), "10.0.0.9:4242");
        assert!(
            text.starts_with("To add a manager to this cluster"),
            "{text}"
        );
        assert!(
            text.contains(
                "    cluster-manager join --token CLTKN-1-abc-def --join-addr 10.0.0.9:4242 \
                 --listen-addr <THIS_HOST>:4242 --data-dir /var/lib/cluster/manager\n"
            ),
            "{text}"
        );
    }
}
