//! One module per top-level command; each owns its clap arguments and its `run`.

pub mod info;
pub mod join_token;
pub mod lab;
pub mod network;
pub mod node;
mod node_view;
pub mod secret;
pub mod service;
mod service_health;
mod service_logs;
mod service_rollout;
mod service_view;
pub mod stack;
mod task_list;

use std::future::Future;

use crate::output::Reported;

/// Runs `op` for every reference in turn, printing each failure as `error: REF: MESSAGE` on
/// stderr and going on with the rest (like docker). Returns the successes, or [`Reported`] once
/// all are done if any failed.
pub async fn for_each_ref<T, F, Fut>(refs: &[String], mut op: F) -> (Vec<T>, Option<Reported>)
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut done = Vec::new();
    let mut failed = None;
    for reference in refs {
        match op(reference.clone()).await {
            Ok(value) => done.push(value),
            Err(e) => {
                eprintln!("error: {reference}: {e:#}");
                failed = Some(Reported);
            }
        }
    }
    (done, failed)
}

/// The arguments of `network ls`, `secret ls` and `config ls`.
#[derive(Debug, clap::Args)]
pub struct ObjectLsArgs {
    /// Only print ids.
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter: id=PREFIX, name=PREFIX, label=K or K=V.
    #[arg(short, long, value_name = "KEY=VALUE", value_parser = crate::parse::parse_filter)]
    pub filter: Vec<(String, String)>,
    /// Do not truncate ids.
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = crate::output::Format::Table)]
    pub format: crate::output::Format,
}
