//! `cluster secret|config create|ls|inspect|rm`, and the `--secret`/`--config` syntax of
//! `service create|update`. A secret's data is never shown (the managers never return it).

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use proto::v1::control_client::ControlClient;
use proto::v1::{
    CreateSecretRequest, FileReference, GetSecretRequest, ListSecretsRequest, RemoveSecretRequest,
    Secret, SecretSpec, ServiceSpec,
};
use std::io::Read;
use tonic::transport::Channel;

use super::for_each_ref;
use super::service_view::short_id;
use crate::connect::{Target, rpc};
use crate::output::{
    Format, InspectFormat, format_time_ms, json, key_values, print, print_inspected, table,
};
use crate::parse::{filter_map, parse_label};

const FILTER_KEYS: [&str; 3] = ["id", "name", "label"];
/// The managers' limit on a secret's or config's data.
const MAX_DATA: usize = 500 * 1024;

/// Secrets or configs: the same commands on either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Secret,
    Config,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }
}

/// Manage secrets or configs.
#[derive(Debug, Subcommand)]
pub enum BlobCommand {
    /// Create from a file, or from stdin with `-`.
    Create(CreateArgs),
    /// List them.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show one or more in detail (JSON by default); a secret's data is never shown.
    Inspect(InspectArgs),
    /// Remove them (refused while a service uses them).
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Label: KEY[=VALUE] (repeatable).
    #[arg(short, long, value_name = "KEY[=VALUE]", value_parser = parse_label)]
    pub label: Vec<(String, String)>,
    /// Name (unique).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The file holding the data, or `-` for stdin.
    #[arg(value_name = "FILE|-")]
    pub file: String,
}

/// `secret ls` and `config ls` take the arguments every object list takes.
pub type LsArgs = super::ObjectLsArgs;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Print a human-readable summary instead of JSON.
    #[arg(long, conflicts_with = "format")]
    pub pretty: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = InspectFormat::Json)]
    pub format: InspectFormat,
    /// Ids, unique id prefixes or names.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Ids, unique id prefixes or names.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// `--secret`/`--config` of `service create`.
#[derive(Debug, Args, Default)]
pub struct FileArgs {
    /// Give a secret to the tasks: NAME or source=NAME[,target=FILE,uid=,gid=,mode=] (repeatable); at /run/secrets/TARGET.
    #[arg(long, value_name = "SECRET", value_parser = parse_file_reference)]
    pub secret: Vec<FileReference>,
    /// Give a config to the tasks: NAME or source=NAME[,target=PATH,uid=,gid=,mode=] (repeatable); at TARGET (default /NAME). Docker's `--config`, which here names the admin config.
    #[arg(long = "config-ref", id = "config_ref", value_name = "CONFIG", value_parser = parse_file_reference)]
    pub config: Vec<FileReference>,
}

/// `--secret-add/--secret-rm/--config-add/--config-rm` of `service update`.
#[derive(Debug, Args, Default)]
pub struct FileUpdateArgs {
    /// Add a secret: NAME or source=NAME[,target=FILE,uid=,gid=,mode=] (repeatable).
    #[arg(long = "secret-add", value_name = "SECRET", value_parser = parse_file_reference)]
    pub secret_add: Vec<FileReference>,
    /// Remove a secret: its name, id or unique id prefix (repeatable).
    #[arg(long = "secret-rm", value_name = "SECRET")]
    pub secret_rm: Vec<String>,
    /// Add a config: NAME or source=NAME[,target=PATH,uid=,gid=,mode=] (repeatable).
    #[arg(long = "config-add", value_name = "CONFIG", value_parser = parse_file_reference)]
    pub config_add: Vec<FileReference>,
    /// Remove a config: its name, id or unique id prefix (repeatable).
    #[arg(long = "config-rm", value_name = "CONFIG")]
    pub config_rm: Vec<String>,
}

impl FileUpdateArgs {
    pub fn is_empty(&self) -> bool {
        self.secret_add.is_empty()
            && self.secret_rm.is_empty()
            && self.config_add.is_empty()
            && self.config_rm.is_empty()
    }

    /// Applies the changes to `spec` (whose references hold ids), resolving the removed names.
    pub async fn apply(
        &self,
        client: &mut ControlClient<Channel>,
        service: &str,
        spec: &mut ServiceSpec,
    ) -> anyhow::Result<()> {
        for (kind, removed) in [
            (Kind::Secret, &self.secret_rm),
            (Kind::Config, &self.config_rm),
        ] {
            for reference in removed {
                let blob = get(client, kind, reference.clone()).await?;
                let refs = match kind {
                    Kind::Secret => &mut spec.secrets,
                    Kind::Config => &mut spec.configs,
                };
                let before = refs.len();
                refs.retain(|r| r.source != blob.id);
                if refs.len() == before {
                    bail!(
                        "{service}: the service does not use {} {reference}",
                        kind.as_str()
                    );
                }
            }
        }
        spec.secrets.extend(self.secret_add.iter().cloned());
        spec.configs.extend(self.config_add.iter().cloned());
        Ok(())
    }
}

/// Parses docker's `--secret`/`--config` value: `NAME` or
/// `source=NAME[,target=T][,uid=N][,gid=N][,mode=OCTAL]` (`src`, `dst`/`destination` too).
pub fn parse_file_reference(text: &str) -> Result<FileReference, String> {
    if !text.contains('=') {
        let name = text.trim();
        if name.is_empty() {
            return Err("invalid reference: it is empty".to_string());
        }
        return Ok(FileReference {
            source: name.to_string(),
            ..Default::default()
        });
    }
    let mut reference = FileReference::default();
    for field in text.split(',') {
        let Some((key, value)) = field.split_once('=') else {
            return Err(format!(
                "invalid reference {text:?}: {field:?} is not KEY=VALUE (expected source=NAME[,target=T,uid=N,gid=N,mode=OCTAL])"
            ));
        };
        let value = value.trim();
        let number = |what: &str, radix: u32| {
            u32::from_str_radix(value, radix).map_err(|_| {
                format!("invalid reference {text:?}: {what} {value:?} is not a number")
            })
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "source" | "src" => reference.source = value.to_string(),
            "target" | "dst" | "destination" => reference.target = value.to_string(),
            "uid" => reference.uid = number("uid", 10)?,
            "gid" => reference.gid = number("gid", 10)?,
            "mode" => reference.mode = Some(number("mode", 8)?),
            other => {
                return Err(format!(
                    "invalid reference {text:?}: unknown field {other:?} (expected source, target, uid, gid, mode)"
                ));
            }
        }
    }
    if reference.source.is_empty() {
        return Err(format!("invalid reference {text:?}: source is required"));
    }
    Ok(reference)
}

/// Runs a `secret` or `config` subcommand.
pub async fn run(kind: Kind, command: BlobCommand, target: &Target) -> anyhow::Result<()> {
    match command {
        BlobCommand::Create(args) => create(kind, args, target).await,
        BlobCommand::Ls(args) => ls(kind, args, target).await,
        BlobCommand::Inspect(args) => inspect(kind, args, target).await,
        BlobCommand::Rm(args) => rm(kind, args, target).await,
    }
}

fn read_data(file: &str) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    if file == "-" {
        std::io::stdin()
            .take(MAX_DATA as u64 + 1)
            .read_to_end(&mut data)
            .context("cannot read stdin")?;
    } else {
        std::fs::File::open(file)
            .with_context(|| format!("cannot open {file}"))?
            .take(MAX_DATA as u64 + 1)
            .read_to_end(&mut data)
            .with_context(|| format!("cannot read {file}"))?;
    }
    if data.len() > MAX_DATA {
        bail!("{file}: more than {MAX_DATA} bytes (500 KiB), the limit");
    }
    Ok(data)
}

async fn create(kind: Kind, args: CreateArgs, target: &Target) -> anyhow::Result<()> {
    let data = read_data(&args.file)?;
    let request = CreateSecretRequest {
        spec: Some(SecretSpec {
            name: args.name,
            labels: args.label.into_iter().collect(),
            data,
        }),
    };
    let mut client = target.connect().await?.control();
    let created = match kind {
        Kind::Secret => rpc(client.create_secret(request)).await?,
        Kind::Config => rpc(client.create_config(request)).await?,
    };
    print(&format!("{}\n", created.id))?;
    Ok(())
}

async fn get(
    client: &mut ControlClient<Channel>,
    kind: Kind,
    reference: String,
) -> anyhow::Result<Secret> {
    let request = GetSecretRequest { reference };
    Ok(match kind {
        Kind::Secret => rpc(client.get_secret(request)).await?,
        Kind::Config => rpc(client.get_config(request)).await?,
    })
}

/// Docker's `secret ls` columns.
pub fn blobs_table(blobs: &[Secret], no_trunc: bool) -> String {
    let headers = ["ID", "NAME", "CREATED", "UPDATED"];
    let rows = blobs.iter().map(|b| {
        vec![
            if no_trunc {
                b.id.clone()
            } else {
                short_id(&b.id).to_string()
            },
            name_of(b),
            format_time_ms(b.created_at_ms),
            format_time_ms(b.updated_at_ms),
        ]
    });
    table(&headers, rows)
}

fn name_of(blob: &Secret) -> String {
    blob.spec
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default()
}

/// What `ls --format json` and `inspect` print: never a secret's data.
fn shown(kind: Kind, mut blob: Secret) -> Secret {
    if kind == Kind::Secret
        && let Some(spec) = blob.spec.as_mut()
    {
        spec.data.clear();
    }
    blob
}

async fn ls(kind: Kind, args: LsArgs, target: &Target) -> anyhow::Result<()> {
    let filters = filter_map(&args.filter, &FILTER_KEYS).map_err(anyhow::Error::msg)?;
    let mut client = target.connect().await?.control();
    let request = ListSecretsRequest { filters };
    let list = match kind {
        Kind::Secret => rpc(client.list_secrets(request)).await?,
        Kind::Config => rpc(client.list_configs(request)).await?,
    };
    let mut blobs: Vec<Secret> = list.secrets.into_iter().map(|b| shown(kind, b)).collect();
    blobs.sort_by_key(name_of);
    let text = if args.quiet {
        blobs.iter().map(|b| format!("{}\n", b.id)).collect()
    } else {
        match args.format {
            Format::Table => blobs_table(&blobs, args.no_trunc),
            Format::Json => json(&blobs)?,
        }
    };
    print(&text)?;
    Ok(())
}

/// `inspect --pretty`.
fn inspect_pretty(kind: Kind, blob: &Secret) -> String {
    let mut labels: Vec<String> = blob
        .spec
        .iter()
        .flat_map(|s| s.labels.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    labels.sort();
    let mut entries = vec![
        ("ID", blob.id.clone()),
        ("Name", name_of(blob)),
        ("Labels", labels.join(", ")),
        ("Created", format_time_ms(blob.created_at_ms)),
        ("Updated", format_time_ms(blob.updated_at_ms)),
        ("Services", blob.services.join(", ")),
    ];
    if kind == Kind::Config {
        let data = blob
            .spec
            .as_ref()
            .map(|s| s.data.clone())
            .unwrap_or_default();
        entries.push(("Data", String::from_utf8_lossy(&data).into_owned()));
    }
    key_values(&entries)
}

async fn inspect(kind: Kind, args: InspectArgs, target: &Target) -> anyhow::Result<()> {
    let client = target.connect().await?.control();
    let (blobs, failed) = for_each_ref(&args.names, |reference| {
        let mut client = client.clone();
        async move {
            get(&mut client, kind, reference)
                .await
                .map(|b| shown(kind, b))
        }
    })
    .await;
    let pretty = args.pretty || args.format == InspectFormat::Pretty;
    print_inspected(&blobs, pretty, |b| inspect_pretty(kind, b))?;
    failed.map_or(Ok(()), |r| Err(r.into()))
}

async fn rm(kind: Kind, args: RmArgs, target: &Target) -> anyhow::Result<()> {
    let client = target.connect().await?.control();
    let (_, failed) = for_each_ref(&args.names, |reference| {
        let mut client = client.clone();
        async move {
            let request = RemoveSecretRequest {
                reference: reference.clone(),
            };
            match kind {
                Kind::Secret => rpc(client.remove_secret(request)).await?,
                Kind::Config => rpc(client.remove_config(request)).await?,
            };
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
    fn references_follow_docker() {
        let plain = parse_file_reference("db_pw").unwrap();
        assert_eq!(
            (plain.source.as_str(), plain.target.as_str(), plain.mode),
            ("db_pw", "", None)
        );
        let long = parse_file_reference("source=db_pw,target=password,uid=1000,gid=100,mode=0400")
            .unwrap();
        assert_eq!(long.source, "db_pw");
        assert_eq!(long.target, "password");
        assert_eq!((long.uid, long.gid, long.mode), (1000, 100, Some(0o400)));
        assert!(
            parse_file_reference("target=x")
                .unwrap_err()
                .contains("source is required")
        );
        assert!(
            parse_file_reference("source=a,colour=red")
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(
            parse_file_reference("source=a,mode=999")
                .unwrap_err()
                .contains("mode")
        );
        assert!(parse_file_reference("").is_err());
    }

    #[test]
    fn service_flags_parse_beside_the_global_config() {
        use clap::{CommandFactory, Parser};
        crate::Cli::command().debug_assert();
        let cli = crate::Cli::try_parse_from([
            "cluster",
            "--config",
            "admin.json",
            "service",
            "create",
            "--secret",
            "pw",
            "--config-ref",
            "source=app.conf,target=/etc/app.conf",
            "busybox",
        ])
        .unwrap();
        assert_eq!(
            cli.config.as_deref(),
            Some(std::path::Path::new("admin.json"))
        );
        let crate::Command::Service(super::super::service::ServiceCommand::Create(args)) =
            cli.command
        else {
            panic!("not service create");
        };
        assert_eq!(args.files.secret[0].source, "pw");
        assert_eq!(args.files.config[0].target, "/etc/app.conf");
        let cli = crate::Cli::try_parse_from([
            "cluster",
            "service",
            "update",
            "--secret-rm",
            "old",
            "--secret-add",
            "new",
            "--config-add",
            "c",
            "--config-rm",
            "d",
            "web",
        ])
        .unwrap();
        let crate::Command::Service(super::super::service::ServiceCommand::Update(args)) =
            cli.command
        else {
            panic!("not service update");
        };
        assert!(!args.files.is_empty());
        assert_eq!(args.files.secret_rm, ["old"]);
        assert_eq!(args.files.config_add[0].source, "c");
    }

    #[test]
    fn secret_data_is_never_shown() {
        let blob = Secret {
            id: "abcdefghijklmnop".into(),
            spec: Some(SecretSpec {
                name: "pw".into(),
                data: b"leak".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(
            shown(Kind::Secret, blob.clone())
                .spec
                .unwrap()
                .data
                .is_empty()
        );
        assert_eq!(
            shown(Kind::Config, blob.clone()).spec.unwrap().data,
            b"leak"
        );
        let text = blobs_table(&[blob], false);
        assert!(text.contains("pw") && !text.contains("leak"));
    }
}
