//! `cluster stack deploy|ls|services|ps|config|rm`: compose files (docker-stack.yml) deployed
//! as services, networks, secrets and configs named `STACK_NAME` and labelled
//! `com.docker.stack.namespace=STACK`.
//! Loading and checking the files is `crate::compose`; the decisions are `compose::plan`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};
use proto::v1::control_client::ControlClient;
use proto::v1::{
    CreateNetworkRequest, CreateSecretRequest, CreateServiceRequest, GetServiceRequest,
    ListNetworksRequest, ListSecretsRequest, ListServicesRequest, ListTasksRequest,
    RemoveNetworkRequest, RemoveSecretRequest, RemoveServiceRequest, Secret, Service,
    UpdateServiceRequest,
};
use serde::Serialize;
use tonic::transport::Channel;

use super::service::WaitArgs;
use super::service_view::{converged, progress, services_table, sort_services};
use super::task_list::{self, Listing, merge};
use crate::compose::files::FileKind;
use crate::compose::model::Ids;
use crate::compose::plan::{ServiceStep, check_name, plan_files, plan_networks, plan_services};
use crate::compose::{LoadError, Loaded, STACK_LABEL, load_files};
use crate::connect::{Target, rpc};
use crate::output::{Format, Reported, json, print, table};
use crate::parse::{TASK_FILTER_KEYS, filter_map, parse_filter};

/// Manage stacks: services and networks deployed together from compose files.
#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// Deploy a new stack or update an existing one from compose files.
    #[command(visible_alias = "up")]
    Deploy(DeployArgs),
    /// List stacks.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// List the services of a stack.
    Services(ServicesArgs),
    /// List the tasks of a stack.
    Ps(PsArgs),
    /// Print the merged, interpolated compose files.
    Config(ConfigArgs),
    /// Remove stacks: their services, then their secrets, configs and networks.
    #[command(visible_alias = "remove", visible_alias = "down")]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Compose file (repeatable: later files override earlier ones).
    #[arg(
        short = 'c',
        long = "compose-file",
        required = true,
        value_name = "FILE"
    )]
    pub files: Vec<PathBuf>,
    /// Remove the stack's services that the files no longer have.
    #[arg(long)]
    pub prune: bool,
    /// Do not ask registries for image digests: each node resolves the tags itself.
    #[arg(long = "no-resolve-image")]
    pub no_resolve_image: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Stack name.
    #[arg(value_name = "STACK")]
    pub stack: String,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// Only print service ids.
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Stack name.
    #[arg(value_name = "STACK")]
    pub stack: String,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Only print task ids.
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter: id=PREFIX, node=NODE, desired-state=STATE.
    #[arg(short, long, value_name = "KEY=VALUE", value_parser = parse_filter)]
    pub filter: Vec<(String, String)>,
    /// Do not truncate ids and errors, and show images with their pinned digest.
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Stack name.
    #[arg(value_name = "STACK")]
    pub stack: String,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Compose file (repeatable: later files override earlier ones).
    #[arg(
        short = 'c',
        long = "compose-file",
        required = true,
        value_name = "FILE"
    )]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Stack names.
    #[arg(required = true, value_name = "STACK")]
    pub stacks: Vec<String>,
}

/// Runs a `stack` subcommand.
pub async fn run(command: StackCommand, target: &Target) -> anyhow::Result<()> {
    match command {
        StackCommand::Deploy(args) => deploy(args, target).await,
        StackCommand::Ls(args) => ls(args, target).await,
        StackCommand::Services(args) => services(args, target).await,
        StackCommand::Ps(args) => ps(args, target).await,
        StackCommand::Config(args) => config(args),
        StackCommand::Rm(args) => rm(args, target).await,
    }
}

/// Loads the files, printing the warnings; on errors prints them all (`error: ` each).
fn load(files: &[PathBuf]) -> anyhow::Result<Loaded> {
    match load_files(files) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            Ok(loaded)
        }
        Err(LoadError { errors, warnings }) => {
            for warning in &warnings {
                eprintln!("warning: {warning}");
            }
            for error in &errors {
                eprintln!("error: {error}");
            }
            Err(Reported.into())
        }
    }
}

fn report(errors: &[String]) -> anyhow::Error {
    for error in errors {
        eprintln!("error: {error}");
    }
    Reported.into()
}

fn config(args: ConfigArgs) -> anyhow::Result<()> {
    let loaded = load(&args.files)?;
    print(&serde_norway::to_string(&loaded.merged)?)?;
    Ok(())
}

/// The secrets or configs matching `filters`, by name.
async fn list_files(
    client: &mut ControlClient<Channel>,
    kind: FileKind,
    filters: HashMap<String, String>,
) -> anyhow::Result<Vec<Secret>> {
    let request = ListSecretsRequest { filters };
    let mut list = match kind {
        FileKind::Secret => rpc(client.list_secrets(request)).await?,
        FileKind::Config => rpc(client.list_configs(request)).await?,
    }
    .secrets;
    list.sort_by(|a, b| {
        a.spec
            .as_ref()
            .map(|s| &s.name)
            .cmp(&b.spec.as_ref().map(|s| &s.name))
    });
    Ok(list)
}

/// The label filter that selects one stack's objects.
fn stack_filter(stack: &str) -> HashMap<String, String> {
    HashMap::from([("label".to_string(), format!("{STACK_LABEL}={stack}"))])
}

async fn stack_services(
    client: &mut ControlClient<Channel>,
    stack: &str,
) -> anyhow::Result<Vec<Service>> {
    let mut services = rpc(client.list_services(ListServicesRequest {
        filters: stack_filter(stack),
    }))
    .await?
    .services;
    sort_services(&mut services);
    Ok(services)
}

async fn deploy(args: DeployArgs, target: &Target) -> anyhow::Result<()> {
    check_name("stack", &args.stack).map_err(anyhow::Error::msg)?;
    let loaded = load(&args.files)?;
    let def = loaded.stack;
    let stack = args.stack.as_str();
    let mut client = target.connect().await?.control();
    let networks = rpc(client.list_networks(ListNetworksRequest::default()))
        .await?
        .networks;
    let services = rpc(client.list_services(ListServicesRequest::default()))
        .await?
        .services;
    let secrets = list_files(&mut client, FileKind::Secret, HashMap::new()).await?;
    let configs = list_files(&mut client, FileKind::Config, HashMap::new()).await?;
    // Everything is decided (and refused) before the first write.
    let mut errors = Vec::new();
    let network_plan = plan_networks(&def, stack, &networks).unwrap_or_else(|e| {
        errors.extend(e);
        Default::default()
    });
    let mut file_plans = Vec::new();
    for (kind, existing) in [(FileKind::Secret, &secrets), (FileKind::Config, &configs)] {
        match plan_files(&def, stack, kind, existing) {
            Ok(plan) => file_plans.push((kind, plan)),
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(report(&errors));
    }
    let mut ids = Ids {
        networks: network_plan.ids.clone(),
        ..Default::default()
    };
    for (kind, plan) in &file_plans {
        match kind {
            FileKind::Secret => ids.secrets = plan.ids.clone(),
            FileKind::Config => ids.configs = plan.ids.clone(),
        }
    }
    plan_services(&def, stack, &ids, &services, args.prune).map_err(|e| report(&e))?;

    for (kind, plan) in file_plans {
        for (key, spec) in plan.create {
            print(&format!("Creating {} {}\n", kind.word(), spec.name))?;
            let request = CreateSecretRequest { spec: Some(spec) };
            let created = match kind {
                FileKind::Secret => rpc(client.create_secret(request)).await?,
                FileKind::Config => rpc(client.create_config(request)).await?,
            };
            match kind {
                FileKind::Secret => ids.secrets.insert(key, created.id),
                FileKind::Config => ids.configs.insert(key, created.id),
            };
        }
    }
    for (key, spec) in network_plan.create {
        print(&format!("Creating network {}\n", spec.name))?;
        let network = rpc(client.create_network(CreateNetworkRequest { spec: Some(spec) })).await?;
        ids.networks.insert(key, network.id);
    }
    // Again, with the new objects' ids: the specs now compare with what the cluster stores.
    let steps = plan_services(&def, stack, &ids, &services, args.prune).map_err(|e| report(&e))?;
    let mut changed = Vec::new();
    for step in steps {
        match step {
            ServiceStep::Create(spec) => {
                print(&format!("Creating service {}\n", spec.name))?;
                let service = rpc(client.create_service(CreateServiceRequest {
                    spec: Some(spec),
                    no_resolve_image: args.no_resolve_image,
                }))
                .await?;
                print_warnings(&service);
                changed.push(service.id);
            }
            ServiceStep::Update { id, version, spec } => {
                print(&format!("Updating service {} (id: {id})\n", spec.name))?;
                let service = rpc(client.update_service(UpdateServiceRequest {
                    reference: id,
                    version,
                    spec: Some(spec),
                    force: false,
                    no_resolve_image: args.no_resolve_image,
                    rollback: false,
                }))
                .await?;
                print_warnings(&service);
                changed.push(service.id);
            }
            ServiceStep::Unchanged { name } => {
                print(&format!("Service {name} is unchanged\n"))?;
            }
            ServiceStep::Remove { id, name } => {
                print(&format!("Removing service {name}\n"))?;
                rpc(client.remove_service(RemoveServiceRequest { reference: id })).await?;
            }
        }
    }
    if !args.wait.detach && !changed.is_empty() {
        wait_all(&mut client, &changed, args.wait.timeout).await?;
    }
    Ok(())
}

fn print_warnings(service: &Service) {
    for warning in &service.warnings {
        eprintln!("{warning}");
    }
}

/// Polls the changed services until all converge, printing each one's progress when it moves.
async fn wait_all(
    client: &mut ControlClient<Channel>,
    ids: &[String],
    timeout: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last: HashMap<String, String> = HashMap::new();
    loop {
        let mut pending = 0;
        for id in ids {
            let service = rpc(client.get_service(GetServiceRequest {
                reference: id.clone(),
            }))
            .await?;
            let line = progress(&service);
            if last.get(id) != Some(&line) {
                eprintln!("{line}");
                last.insert(id.clone(), line);
            }
            if !converged(&service) {
                pending += 1;
            }
        }
        if pending == 0 {
            eprintln!("stack converged");
            return Ok(());
        }
        if start.elapsed() >= timeout {
            eprintln!(
                "{pending} service(s) not converged after {}s; the cluster keeps converging in \
                 the background (see `cluster stack ps`; pass -d to return at once)",
                timeout.as_secs_f64()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Debug, Serialize, PartialEq)]
struct StackRow {
    name: String,
    services: usize,
}

/// Stacks are the distinct values of the stack label over the services.
fn stack_rows(services: &[Service]) -> Vec<StackRow> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for service in services {
        if let Some(stack) = service
            .spec
            .as_ref()
            .and_then(|s| s.labels.get(STACK_LABEL))
        {
            *counts.entry(stack.clone()).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|(name, services)| StackRow { name, services })
        .collect()
}

async fn ls(args: LsArgs, target: &Target) -> anyhow::Result<()> {
    let mut client = target.connect().await?.control();
    let services = rpc(client.list_services(ListServicesRequest {
        filters: HashMap::from([("label".to_string(), STACK_LABEL.to_string())]),
    }))
    .await?
    .services;
    let rows = stack_rows(&services);
    let text = match args.format {
        Format::Json => json(&rows)?,
        Format::Table => table(
            &["NAME", "SERVICES"],
            rows.iter()
                .map(|r| vec![r.name.clone(), r.services.to_string()]),
        ),
    };
    print(&text)?;
    Ok(())
}

async fn services(args: ServicesArgs, target: &Target) -> anyhow::Result<()> {
    let mut client = target.connect().await?.control();
    let services = stack_services(&mut client, &args.stack).await?;
    if services.is_empty() && args.format == Format::Table && !args.quiet {
        eprintln!("Nothing found in stack: {}", args.stack);
        return Ok(());
    }
    let text = if args.quiet {
        services.iter().map(|s| format!("{}\n", s.id)).collect()
    } else {
        match args.format {
            Format::Table => services_table(&services),
            Format::Json => json(&services)?,
        }
    };
    print(&text)?;
    Ok(())
}

async fn ps(args: PsArgs, target: &Target) -> anyhow::Result<()> {
    let filters = filter_map(&args.filter, &TASK_FILTER_KEYS).map_err(anyhow::Error::msg)?;
    let mut client = target.connect().await?.control();
    let services = stack_services(&mut client, &args.stack).await?;
    if services.is_empty() {
        bail!("nothing found in stack: {}", args.stack);
    }
    let mut images = HashMap::new();
    let mut lists = Vec::new();
    for service in &services {
        let mut filters = filters.clone();
        filters.insert("service".to_string(), service.id.clone());
        lists.push(
            rpc(client.list_tasks(ListTasksRequest { filters }))
                .await?
                .tasks,
        );
        images.insert(
            service.id.clone(),
            service
                .spec
                .as_ref()
                .map(|s| s.image.clone())
                .unwrap_or_default(),
        );
    }
    let listing = Listing {
        quiet: args.quiet,
        format: args.format,
        no_trunc: args.no_trunc,
    };
    let text = task_list::render(&mut client, merge(lists), &images, listing).await?;
    print(&text)?;
    Ok(())
}

async fn rm(args: RmArgs, target: &Target) -> anyhow::Result<()> {
    let mut client = target.connect().await?.control();
    let mut failed = false;
    for stack in &args.stacks {
        let services = stack_services(&mut client, stack).await?;
        let mut networks = rpc(client.list_networks(ListNetworksRequest {
            filters: stack_filter(stack),
        }))
        .await?
        .networks;
        networks.sort_by(|a, b| a.name.cmp(&b.name));
        let secrets = list_files(&mut client, FileKind::Secret, stack_filter(stack)).await?;
        let configs = list_files(&mut client, FileKind::Config, stack_filter(stack)).await?;
        if services.is_empty() && networks.is_empty() && secrets.is_empty() && configs.is_empty() {
            eprintln!("Nothing found in stack: {stack}");
            continue;
        }
        for service in services {
            let name = service.spec.map(|s| s.name).unwrap_or_default();
            print(&format!("Removing service {name}\n"))?;
            if let Err(e) = rpc(client.remove_service(RemoveServiceRequest {
                reference: service.id,
            }))
            .await
            {
                eprintln!("error: {name}: {e:#}");
                failed = true;
            }
        }
        // After the services: a secret or config in use cannot be removed.
        for (kind, list) in [(FileKind::Secret, secrets), (FileKind::Config, configs)] {
            for file in list {
                let name = file.spec.map(|s| s.name).unwrap_or_default();
                print(&format!("Removing {} {name}\n", kind.word()))?;
                let request = RemoveSecretRequest { reference: file.id };
                let removed = match kind {
                    FileKind::Secret => rpc(client.remove_secret(request)).await.map(drop),
                    FileKind::Config => rpc(client.remove_config(request)).await.map(drop),
                };
                if let Err(e) = removed {
                    eprintln!("error: {name}: {e:#}");
                    failed = true;
                }
            }
        }
        for network in networks {
            print(&format!("Removing network {}\n", network.name))?;
            if let Err(e) = rpc(client.remove_network(RemoveNetworkRequest {
                reference: network.id,
            }))
            .await
            {
                eprintln!("error: {}: {e:#}", network.name);
                failed = true;
            }
        }
    }
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use proto::v1::ServiceSpec;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(subcommand)]
        command: StackCommand,
    }

    #[test]
    fn parses_deploy() {
        let wrap = Wrap::try_parse_from([
            "stack", "deploy", "-c", "a.yml", "-c", "b.yml", "--prune", "-d", "shop",
        ])
        .unwrap();
        match wrap.command {
            StackCommand::Deploy(args) => {
                assert_eq!(args.files, [PathBuf::from("a.yml"), PathBuf::from("b.yml")]);
                assert!(args.prune && args.wait.detach);
                assert_eq!(args.stack, "shop");
            }
            other => panic!("{other:?}"),
        }
        assert!(Wrap::try_parse_from(["stack", "deploy", "shop"]).is_err());
        assert!(Wrap::try_parse_from(["stack", "rm"]).is_err());
    }

    #[test]
    fn stacks_are_counted_by_label() {
        let service = |stack: Option<&str>| Service {
            spec: Some(ServiceSpec {
                labels: stack
                    .map(|s| HashMap::from([(STACK_LABEL.to_string(), s.to_string())]))
                    .unwrap_or_default(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let rows = stack_rows(&[
            service(Some("b")),
            service(Some("a")),
            service(None),
            service(Some("b")),
        ]);
        assert_eq!(
            rows,
            [
                StackRow {
                    name: "a".to_string(),
                    services: 1
                },
                StackRow {
                    name: "b".to_string(),
                    services: 2
                }
            ]
        );
    }
}
