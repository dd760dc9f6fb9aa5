//! `cluster node ls|inspect|ps|update|promote|demote|rm`.

use std::collections::{BTreeMap, HashMap};

use anyhow::bail;
use clap::{Args, Subcommand};
use proto::v1::control_client::ControlClient;
use proto::v1::{
    GetNodeRequest, InfoRequest, ListNodesRequest, ListServicesRequest, ListTasksRequest, Node,
    RemoveNodeRequest, UpdateNodeRequest,
};
use tonic::transport::Channel;

use super::for_each_ref;
use super::node_view::{inspect_pretty, nodes_table, sort_nodes};
use super::task_list::{self, Listing, merge};
use crate::connect::{Target, rpc};
use crate::output::{Format, InspectFormat, json, node_id, print, print_inspected};
use crate::parse::{
    NODE_FILTER_KEYS, NODE_TASK_FILTER_KEYS, filter_map, parse_availability, parse_filter,
    parse_label, parse_label_key,
};

/// The node reference that means "the manager this command talks to" (as in docker).
const SELF: &str = "self";

/// Manage the cluster's nodes.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show one or more nodes in detail (JSON by default).
    Inspect(InspectArgs),
    /// List the tasks on one or more nodes (default: the manager this command talks to).
    Ps(PsArgs),
    /// Change a node's availability or labels.
    Update(UpdateArgs),
    /// Make workers managers.
    Promote(RefsArgs),
    /// Make managers workers.
    Demote(RefsArgs),
    /// Remove nodes from the cluster.
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only print node ids.
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter: id=PREFIX, name=PREFIX, role=manager|worker, availability=..., label=K or K=V.
    #[arg(short, long, value_name = "KEY=VALUE", value_parser = parse_filter)]
    pub filter: Vec<(String, String)>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Print a human-readable summary instead of JSON.
    #[arg(long, conflicts_with = "format")]
    pub pretty: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = InspectFormat::Json)]
    pub format: InspectFormat,
    /// Node ids, unique id prefixes or hostnames.
    #[arg(required = true, value_name = "NODE")]
    pub nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Only print task ids.
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter: id=PREFIX, service=SERVICE, desired-state=STATE.
    #[arg(short, long, value_name = "KEY=VALUE", value_parser = parse_filter)]
    pub filter: Vec<(String, String)>,
    /// Do not truncate ids and errors, and show images with their pinned digest.
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Node ids, unique id prefixes or hostnames; `self` (the default) is the manager this
    /// command talks to.
    #[arg(value_name = "NODE")]
    pub nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// active, pause or drain.
    #[arg(long, value_parser = parse_availability)]
    pub availability: Option<String>,
    /// Add or change a label: KEY=VALUE, or KEY for an empty value (repeatable).
    #[arg(long = "label-add", value_name = "KEY[=VALUE]", value_parser = parse_label)]
    pub label_add: Vec<(String, String)>,
    /// Remove a label by key (repeatable).
    #[arg(long = "label-rm", value_name = "KEY", value_parser = parse_label_key)]
    pub label_rm: Vec<String>,
    /// Node id, unique id prefix or hostname.
    #[arg(value_name = "NODE")]
    pub node: String,
}

#[derive(Debug, Args)]
pub struct RefsArgs {
    /// Node ids, unique id prefixes or hostnames.
    #[arg(required = true, value_name = "NODE")]
    pub nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove the node even if it is still up (a manager must be demoted first).
    #[arg(short, long)]
    pub force: bool,
    /// Node ids, unique id prefixes or hostnames.
    #[arg(required = true, value_name = "NODE")]
    pub nodes: Vec<String>,
}

/// Runs a `node` subcommand.
pub async fn run(command: NodeCommand, target: &Target) -> anyhow::Result<()> {
    match command {
        NodeCommand::Ls(args) => ls(args, target).await,
        NodeCommand::Inspect(args) => inspect(args, target).await,
        NodeCommand::Ps(args) => ps(args, target).await,
        NodeCommand::Update(args) => update(args, target).await,
        NodeCommand::Promote(args) => promote(args, target, true).await,
        NodeCommand::Demote(args) => promote(args, target, false).await,
        NodeCommand::Rm(args) => rm(args, target).await,
    }
}

async fn ls(args: LsArgs, target: &Target) -> anyhow::Result<()> {
    let filters = filter_map(&args.filter, &NODE_FILTER_KEYS).map_err(anyhow::Error::msg)?;
    let mut client = target.connect().await?.control();
    let response = rpc(client.list_nodes(ListNodesRequest { filters })).await?;
    let mut nodes = response.nodes;
    sort_nodes(&mut nodes);
    let text = if args.quiet {
        nodes.iter().map(|n| format!("{}\n", n.id)).collect()
    } else {
        match args.format {
            Format::Table => nodes_table(&nodes),
            Format::Json => json(&nodes)?,
        }
    };
    print(&text)?;
    Ok(())
}

async fn inspect(args: InspectArgs, target: &Target) -> anyhow::Result<()> {
    let client = target.connect().await?.control();
    let (nodes, failed) = for_each_ref(&args.nodes, |reference| {
        let mut client = client.clone();
        async move { rpc(client.get_node(GetNodeRequest { reference })).await }
    })
    .await;
    let pretty = args.pretty || args.format == InspectFormat::Pretty;
    print_inspected(&nodes, pretty, inspect_pretty)?;
    failed.map_or(Ok(()), |r| Err(r.into()))
}

/// The node `reference` names; [`SELF`] is the manager answering on `client`.
async fn find_node(client: &mut ControlClient<Channel>, reference: &str) -> anyhow::Result<Node> {
    let reference = if reference == SELF {
        let answered_by = rpc(client.info(InfoRequest {})).await?.answered_by;
        if answered_by == 0 {
            bail!("the manager did not say which node it is");
        }
        node_id(answered_by)
    } else {
        reference.to_string()
    };
    rpc(client.get_node(GetNodeRequest { reference })).await
}

/// The references `node ps` lists: the arguments, or [`SELF`] when there are none.
fn ps_references(nodes: &[String]) -> Vec<String> {
    if nodes.is_empty() {
        vec![SELF.to_string()]
    } else {
        nodes.to_vec()
    }
}

async fn ps(args: PsArgs, target: &Target) -> anyhow::Result<()> {
    let filters = filter_map(&args.filter, &NODE_TASK_FILTER_KEYS).map_err(anyhow::Error::msg)?;
    let mut client = target.connect().await?.control();
    let (found, failed) = for_each_ref(&ps_references(&args.nodes), |reference| {
        let mut client = client.clone();
        let mut filters = filters.clone();
        async move {
            let node = find_node(&mut client, &reference).await?;
            filters.insert("node".to_string(), node.id);
            Ok(rpc(client.list_tasks(ListTasksRequest { filters }))
                .await?
                .tasks)
        }
    })
    .await;
    let tasks = merge(found);
    let listing = Listing {
        quiet: args.quiet,
        format: args.format,
        no_trunc: args.no_trunc,
    };
    // The IMAGE column shows each task's service image.
    let images = if !tasks.is_empty() && !args.quiet && args.format == Format::Table {
        rpc(client.list_services(ListServicesRequest::default()))
            .await?
            .services
            .into_iter()
            .map(|s| (s.id, s.spec.map(|spec| spec.image).unwrap_or_default()))
            .collect()
    } else {
        HashMap::new()
    };
    let text = task_list::render(&mut client, tasks, &images, listing).await?;
    print(&text)?;
    failed.map_or(Ok(()), |r| Err(r.into()))
}

/// The request for `node update`, validated before anything is sent.
fn update_request(args: &UpdateArgs) -> anyhow::Result<UpdateNodeRequest> {
    if args.availability.is_none() && args.label_add.is_empty() && args.label_rm.is_empty() {
        bail!("nothing to update: pass --availability, --label-add or --label-rm");
    }
    // Later --label-add flags win over earlier ones with the same key.
    let labels_add: BTreeMap<String, String> = args.label_add.iter().cloned().collect();
    if let Some(key) = args.label_rm.iter().find(|k| labels_add.contains_key(*k)) {
        bail!("label {key:?} is both added and removed");
    }
    Ok(UpdateNodeRequest {
        reference: args.node.clone(),
        availability: args.availability.clone().unwrap_or_default(),
        labels_add: labels_add.into_iter().collect::<HashMap<_, _>>(),
        labels_remove: args.label_rm.clone(),
    })
}

async fn update(args: UpdateArgs, target: &Target) -> anyhow::Result<()> {
    let request = update_request(&args)?;
    let mut client = target.connect().await?.control();
    let node: Node = rpc(client.update_node(request)).await?;
    print(&format!("{}\n", node.id))?;
    Ok(())
}

async fn promote(args: RefsArgs, target: &Target, up: bool) -> anyhow::Result<()> {
    let client = target.connect().await?.control();
    let (_, failed) = for_each_ref(&args.nodes, |reference| {
        let mut client = client.clone();
        async move {
            let request = GetNodeRequest {
                reference: reference.clone(),
            };
            if up {
                rpc(client.promote_node(request)).await?;
                print(&format!(
                    "Node {reference} promoted to a manager in the cluster.\n"
                ))?;
            } else {
                rpc(client.demote_node(request)).await?;
                print(&format!("Manager {reference} demoted in the cluster.\n"))?;
            }
            Ok(())
        }
    })
    .await;
    failed.map_or(Ok(()), |r| Err(r.into()))
}

async fn rm(args: RmArgs, target: &Target) -> anyhow::Result<()> {
    let client = target.connect().await?.control();
    let force = args.force;
    let (_, failed) = for_each_ref(&args.nodes, |reference| {
        let mut client = client.clone();
        async move {
            let removed = rpc(client.remove_node(RemoveNodeRequest { reference, force })).await?;
            print(&format!("{}\n", removed.id))?;
            Ok(())
        }
    })
    .await;
    failed.map_or(Ok(()), |r| Err(r.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(availability: Option<&str>, add: &[(&str, &str)], rm: &[&str]) -> UpdateArgs {
        UpdateArgs {
            availability: availability.map(str::to_string),
            label_add: add
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            label_rm: rm.iter().map(|k| k.to_string()).collect(),
            node: "n1".to_string(),
        }
    }

    #[test]
    fn update_requests() {
        let req = update_request(&args(
            Some("drain"),
            &[("a", "1"), ("a", "2"), ("b", "")],
            &["c"],
        ))
        .unwrap();
        assert_eq!(req.reference, "n1");
        assert_eq!(req.availability, "drain");
        assert_eq!(req.labels_add.get("a").map(String::as_str), Some("2"));
        assert_eq!(req.labels_add.get("b").map(String::as_str), Some(""));
        assert_eq!(req.labels_remove, vec!["c".to_string()]);
        let unchanged = update_request(&args(None, &[("a", "1")], &[])).unwrap();
        assert_eq!(unchanged.availability, "");
    }

    #[derive(Debug, clap::Parser)]
    struct Wrap {
        #[command(subcommand)]
        command: NodeCommand,
    }

    fn ps_args(args: &[&str]) -> PsArgs {
        let all = ["node", "ps"].iter().chain(args);
        match <Wrap as clap::Parser>::try_parse_from(all).unwrap().command {
            NodeCommand::Ps(args) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ps_defaults_to_self_and_takes_the_listing_flags() {
        let args = ps_args(&[]);
        assert_eq!(ps_references(&args.nodes), ["self"]);
        assert!(!args.quiet && !args.no_trunc && args.format == Format::Table);
        let args = ps_args(&[
            "-q",
            "--no-trunc",
            "--format",
            "json",
            "-f",
            "desired-state=running",
            "h1",
            "self",
        ]);
        assert_eq!(ps_references(&args.nodes), ["h1", "self"]);
        assert!(args.quiet && args.no_trunc && args.format == Format::Json);
        let filters = filter_map(&args.filter, &NODE_TASK_FILTER_KEYS).unwrap();
        assert_eq!(filters["desired-state"], "running");
        let err = filter_map(&[("node".into(), "h1".into())], &NODE_TASK_FILTER_KEYS).unwrap_err();
        assert!(err.contains("unknown filter \"node\""), "{err}");
    }

    #[test]
    fn update_rejects_nothing_and_conflicts() {
        let err = update_request(&args(None, &[], &[]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("nothing to update"), "{err}");
        let err = update_request(&args(None, &[("a", "1")], &["a"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("both added and removed"), "{err}");
    }
}
