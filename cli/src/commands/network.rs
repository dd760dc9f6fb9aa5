//! `cluster network create|ls|inspect|rm`, and the `--network` syntax of `service create|update`.

use clap::{Args, Subcommand};
use proto::v1::{
    CreateNetworkRequest, GetNetworkRequest, ListNetworksRequest, Network, NetworkAttachment,
    NetworkSpec, RemoveNetworkRequest,
};

use super::for_each_ref;
use super::service_view::short_id;
use crate::connect::{Target, rpc};
use crate::output::{
    Format, InspectFormat, format_time_ms, json, key_values, print, print_inspected, table,
};
use crate::parse::{filter_map, parse_label};

/// The filters `network ls` accepts.
const NETWORK_FILTER_KEYS: [&str; 3] = ["id", "name", "label"];

/// Manage overlay networks.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create an overlay network.
    Create(CreateArgs),
    /// List networks.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show one or more networks in detail, with their per-host subnets (JSON by default).
    Inspect(InspectArgs),
    /// Remove networks (refused while a service uses them).
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Driver: only overlay.
    #[arg(short, long, default_value = "overlay")]
    pub driver: String,
    /// Subnet in CIDR form, at least a /23: per-host /24s plus a /24 of service VIPs (default: the next free one of the cluster's pool).
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// Let standalone containers attach.
    #[arg(long)]
    pub attachable: bool,
    /// Network label: KEY[=VALUE] (repeatable).
    #[arg(short, long, value_name = "KEY[=VALUE]", value_parser = parse_label)]
    pub label: Vec<(String, String)>,
    /// Network name (unique).
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// `network ls` takes the arguments every object list takes.
pub type LsArgs = super::ObjectLsArgs;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Print a human-readable summary instead of JSON.
    #[arg(long, conflicts_with = "format")]
    pub pretty: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = InspectFormat::Json)]
    pub format: InspectFormat,
    /// Network ids, unique id prefixes or names.
    #[arg(required = true, value_name = "NETWORK")]
    pub networks: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Network ids, unique id prefixes or names.
    #[arg(required = true, value_name = "NETWORK")]
    pub networks: Vec<String>,
}

/// Parses docker's `--network` value: `NAME` or `name=NAME[,alias=ALIAS...]` (`target=` is
/// accepted for `name=`).
pub fn parse_network_attachment(text: &str) -> Result<NetworkAttachment, String> {
    if !text.contains('=') {
        let name = text.trim();
        if name.is_empty() {
            return Err("invalid network: it is empty".to_string());
        }
        return Ok(NetworkAttachment {
            target: name.to_string(),
            aliases: Vec::new(),
        });
    }
    let mut attachment = NetworkAttachment::default();
    for field in text.split(',') {
        let Some((key, value)) = field.split_once('=') else {
            return Err(format!(
                "invalid network {text:?}: {field:?} is not KEY=VALUE (expected name=NAME[,alias=ALIAS])"
            ));
        };
        let value = value.trim();
        match key.trim().to_ascii_lowercase().as_str() {
            "name" | "target" => attachment.target = value.to_string(),
            "alias" => {
                if value.is_empty() {
                    return Err(format!("invalid network {text:?}: empty alias"));
                }
                attachment.aliases.push(value.to_string());
            }
            other => {
                return Err(format!(
                    "invalid network {text:?}: unknown field {other:?} (expected name, alias)"
                ));
            }
        }
    }
    if attachment.target.is_empty() {
        return Err(format!("invalid network {text:?}: name is required"));
    }
    Ok(attachment)
}

/// Runs a `network` subcommand.
pub async fn run(command: NetworkCommand, target: &Target) -> anyhow::Result<()> {
    match command {
        NetworkCommand::Create(args) => create(args, target).await,
        NetworkCommand::Ls(args) => ls(args, target).await,
        NetworkCommand::Inspect(args) => inspect(args, target).await,
        NetworkCommand::Rm(args) => rm(args, target).await,
    }
}

async fn create(args: CreateArgs, target: &Target) -> anyhow::Result<()> {
    let spec = NetworkSpec {
        name: args.name,
        labels: args.label.into_iter().collect(),
        subnet: args.subnet.unwrap_or_default(),
        attachable: args.attachable,
        driver: args.driver,
    };
    let mut client = target.connect().await?.control();
    let network = rpc(client.create_network(CreateNetworkRequest { spec: Some(spec) })).await?;
    print(&format!("{}\n", network.id))?;
    Ok(())
}

/// Docker's `network ls` columns.
pub fn networks_table(networks: &[Network], no_trunc: bool) -> String {
    let headers = ["NETWORK ID", "NAME", "DRIVER", "SCOPE"];
    let rows = networks.iter().map(|n| {
        vec![
            if no_trunc {
                n.id.clone()
            } else {
                short_id(&n.id).to_string()
            },
            n.name.clone(),
            n.driver.clone(),
            n.scope.clone(),
        ]
    });
    table(&headers, rows)
}

async fn ls(args: LsArgs, target: &Target) -> anyhow::Result<()> {
    let filters = filter_map(&args.filter, &NETWORK_FILTER_KEYS).map_err(anyhow::Error::msg)?;
    let mut client = target.connect().await?.control();
    let mut networks = rpc(client.list_networks(ListNetworksRequest { filters }))
        .await?
        .networks;
    networks.sort_by(|a, b| a.name.cmp(&b.name));
    let text = if args.quiet {
        networks.iter().map(|n| format!("{}\n", n.id)).collect()
    } else {
        match args.format {
            Format::Table => networks_table(&networks, args.no_trunc),
            Format::Json => json(&networks)?,
        }
    };
    print(&text)?;
    Ok(())
}

/// `network inspect --pretty`.
pub fn inspect_pretty(network: &Network) -> String {
    let mut labels: Vec<String> = network
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    labels.sort();
    let mut entries = vec![
        ("ID", network.id.clone()),
        ("Name", network.name.clone()),
        ("Driver", network.driver.clone()),
        ("Scope", network.scope.clone()),
        ("Subnet", network.subnet.clone()),
        ("VNI", network.vni.to_string()),
        ("Attachable", network.attachable.to_string()),
        ("Labels", labels.join(", ")),
        ("Created", format_time_ms(network.created_at_ms)),
        ("Services", network.services.join(", ")),
    ];
    let mut text = key_values(&entries);
    entries.clear();
    if !network.leases.is_empty() {
        let rows = network
            .leases
            .iter()
            .map(|l| vec![l.node_hostname.clone(), l.node_id.clone(), l.subnet.clone()]);
        text.push_str("Per-host subnets:\n");
        text.push_str(&table(&["NODE", "NODE ID", "SUBNET"], rows));
    }
    text
}

async fn inspect(args: InspectArgs, target: &Target) -> anyhow::Result<()> {
    let client = target.connect().await?.control();
    let (networks, failed) = for_each_ref(&args.networks, |reference| {
        let mut client = client.clone();
        async move { rpc(client.get_network(GetNetworkRequest { reference })).await }
    })
    .await;
    let pretty = args.pretty || args.format == InspectFormat::Pretty;
    print_inspected(&networks, pretty, inspect_pretty)?;
    failed.map_or(Ok(()), |r| Err(r.into()))
}

async fn rm(args: RmArgs, target: &Target) -> anyhow::Result<()> {
    let client = target.connect().await?.control();
    let (_, failed) = for_each_ref(&args.networks, |reference| {
        let mut client = client.clone();
        async move {
            rpc(client.remove_network(RemoveNetworkRequest {
                reference: reference.clone(),
            }))
            .await?;
            print(&format!("{reference}\n"))?;
            Ok(())
        }
    })
    .await;
    failed.map_or(Ok(()), |r| Err(r.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_flags_follow_docker() {
        let plain = parse_network_attachment("front").unwrap();
        assert_eq!((plain.target.as_str(), plain.aliases.len()), ("front", 0));
        let long = parse_network_attachment("name=front,alias=web,alias=www").unwrap();
        assert_eq!(long.target, "front");
        assert_eq!(long.aliases, ["web", "www"]);
        assert!(
            parse_network_attachment("alias=web")
                .unwrap_err()
                .contains("name is required")
        );
        assert!(
            parse_network_attachment("name=a,colour=red")
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(parse_network_attachment("").is_err());
    }

    #[test]
    fn ls_table_has_docker_columns() {
        let network = Network {
            id: "abcdefghijklmnopqrstuvwxy".into(),
            name: "front".into(),
            driver: "overlay".into(),
            scope: "swarm".into(),
            ..Default::default()
        };
        let text = networks_table(&[network], false);
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
            ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
        );
        assert_eq!(
            lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
            ["abcdefghijkl", "front", "overlay", "swarm"]
        );
    }
}
