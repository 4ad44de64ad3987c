//! `gatekeeper`: parses the command line and hands each subcommand to the library
//! (`gatekeeper::cli`, `gatekeeper::node`). Nothing else lives here.

#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::Parser;
use gatekeeper::cli::{Cli, Command};
use gatekeeper::{cli, config, node};
use std::time::Duration;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn main() {
    let result = match Cli::parse().command {
        Command::Keygen { out, force } => cli::keygen::run(&out, force),
        Command::Certs { command } => cli::certs::run(command),
        Command::Audit { command } => cli::audit(command),
        Command::Snapshot { command } => cli::snapshot(command),
        Command::Restore { config, from } => {
            runtime().and_then(|rt| rt.block_on(cli::restore(&config, &from)))
        }
        Command::Node { config } => config::NodeConfig::load_from_process(config.as_deref())
            .and_then(|c| {
                runtime()?.block_on(async {
                    // The OTLP exporter is made inside the runtime (its tonic client needs one).
                    let traces = match &c.otlp_endpoint {
                        Some(e) => Some(gatekeeper::traces::provider(e, c.node_id)?),
                        None => None,
                    };
                    use opentelemetry::trace::TracerProvider as _;
                    node::init_logging(
                        c.log_format,
                        traces.as_ref().map(|p| p.tracer("gatekeeper")),
                    );
                    let r = node::run(c).await;
                    if let Some(p) = traces {
                        // Exports what is still buffered.
                        let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
                    }
                    r
                })
            }),
        Command::Miner { command } => {
            runtime().and_then(|rt| rt.block_on(cli::miner::run(command)))
        }
        Command::Health(args) => runtime().and_then(|rt| rt.block_on(cli::health::run(args))),
        Command::Devnet(args) => runtime().and_then(|rt| rt.block_on(cli::devnet::run(args))),
        Command::Admin {
            endpoint,
            tls,
            timeout_secs,
            command,
        } => runtime().and_then(|rt| {
            rt.block_on(cli::admin::run(
                &endpoint,
                &tls,
                Duration::from_secs(timeout_secs),
                command,
            ))
        }),
    };
    if let Err(e) = result {
        if let Some(x) = e.downcast_ref::<cli::ExitWith>() {
            if !x.message.is_empty() {
                eprintln!("{}", x.message);
            }
            std::process::exit(x.code);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
