//! The `causalkv` binary: runs one node (the default) or a local dev cluster
//! of node processes (`causalkv cluster`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use causalkv::{Config, NodeArgs};

mod cli;
mod cluster;
mod probe;

/// Request handling allocates many small, short-lived objects (headers,
/// bodies, records, contexts) and sled copies tree nodes on every write;
/// mimalloc serves them in a fraction of glibc malloc's instructions
/// (bench/callgrind-get.sh, docs/BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "causalkv", version, about = "A causally consistent, sharded, replicated key-value store")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Starts a local cluster: N node processes on consecutive ports.
    Cluster(cluster::ClusterArgs),
    /// Health probe for container HEALTHCHECKs (exit 0 when the node answers 2xx).
    #[command(hide = true)]
    Probe(probe::ProbeArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand)
            {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            eprintln!("causalkv: configuration error: {line}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Some(Command::Cluster(args)) => cluster::run(args),
        Some(Command::Probe(args)) => probe::run(&args),
        Some(Command::Client(command)) => cli::run(command),
        None => run_node(&cli.node),
    }
}

fn run_node(args: &NodeArgs) -> ExitCode {
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("causalkv: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("causalkv: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Before the node serves: a SIGTERM right after it reports ready
        // must shut it down cleanly, not kill it.
        let signals = causalkv::server::ShutdownSignals::install();
        match causalkv::server::start(config).await {
            Ok(handle) => {
                handle.run_until_signal(signals).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("causalkv: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
