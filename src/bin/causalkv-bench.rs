//! `causalkv-bench`: the load generator that measures causalkv, etcd, Redis
//! and the HTTP ceiling with the same code (see docs/BENCHMARKS.md and
//! bench/run.sh).
//!
//! ```text
//! causalkv-bench --target causalkv --nodes 127.0.0.1:13800 -c 64 -d 10 --put-ratio 0.5
//! causalkv-bench --nodes NODE1 --route shard --put-ratio 1 --server-pids A=1234,B=1235
//! causalkv-bench ceiling-server --port 18080
//! causalkv-bench visibility --master A --workers B,C --rate 2000
//! causalkv-bench fsync-probe --dir /var/tmp
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[path = "../bench/mod.rs"]
mod bench;

use bench::keyspace::Dist;
use bench::load::{Pattern, RunConfig};
use bench::procstat::Watched;
use bench::route::{KeyFilter, Route};
use bench::session::TargetKind;
use bench::visibility::VisConfig;

#[derive(Parser, Debug)]
#[command(name = "causalkv-bench", version, about = "Load generator for causalkv, etcd, Redis and an HTTP ceiling")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serves a fixed small JSON body for any path and method (the HTTP ceiling).
    CeilingServer {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        /// Tokio worker threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Visibility latency: PUT ack at the master → readable without context at each worker.
    Visibility(VisArgs),
    /// Snapshot reads against sequential GETs of the same keys, and the
    /// delay of change-feed events (a running cluster; JSON report).
    Features {
        /// The cluster's nodes (the last one serves the watch).
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        #[arg(short, long, default_value_t = 16)]
        connections: usize,
        #[arg(short, long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 10)]
        keys_per_read: usize,
        #[arg(long, default_value_t = 2000)]
        watch_writes: usize,
        /// Writes per second during the watch measurement.
        #[arg(long, default_value_t = 500.0)]
        watch_rate: f64,
    },
    /// Latency of a small write + fdatasync in a directory.
    FsyncProbe {
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 200)]
        count: usize,
        #[arg(long, default_value_t = 4096)]
        block: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Args, Debug)]
struct Output {
    /// What to print on stdout.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Also write the JSON report to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// What to drive.
    #[arg(long, value_enum, default_value = "causalkv")]
    target: TargetKind,
    /// host:port of each node; connection i goes to node i mod len.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:13800")]
    nodes: Vec<String>,
    /// Concurrent sessions, one persistent connection each.
    #[arg(short, long, default_value_t = 16)]
    connections: usize,
    /// Measured seconds (after the warm-up).
    #[arg(short, long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many measured operations instead of after --duration.
    #[arg(long)]
    ops: Option<u64>,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Share of operations that are PUTs (the rest are GETs).
    #[arg(long, default_value_t = 0.5)]
    put_ratio: f64,
    #[arg(long, value_enum, default_value = "mixed")]
    pattern: Pattern,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    #[arg(long, value_enum, default_value = "uniform")]
    dist: Dist,
    #[arg(long, default_value_t = 0.99)]
    zipf_theta: f64,
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// etcd: serializable (member-local) reads.
    #[arg(long)]
    serializable: bool,
    /// causalkv: send `{}` instead of the session's last causal context.
    #[arg(long)]
    no_context: bool,
    /// Write every key once before the run.
    #[arg(long)]
    preload: bool,
    /// Only write every key once, then report how long it took.
    #[arg(long)]
    preload_only: bool,
    /// causalkv: scrape hold-back counters from every node's /metrics before and after.
    #[arg(long)]
    metrics: bool,
    /// Per-request time limit in milliseconds (then an error and a new connection).
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Name of this run in reports.
    #[arg(long)]
    label: Option<String>,
    /// causalkv: `node` sends connection i's requests to node i mod n of
    /// --nodes (other shards' keys are forwarded); `shard` sends each key to
    /// a node of its own shard (PUT to the master, GET to a replica), learnt
    /// from the first node's /kv-store/status and a served-by probe.
    #[arg(long, value_enum, default_value = "node")]
    route: Route,
    /// causalkv: draw only the keys of the shard this node is a replica of.
    #[arg(long, value_name = "NODE", conflicts_with = "only_keys_not_served_by")]
    only_keys_served_by: Option<String>,
    /// causalkv: draw only the keys of the shards this node is not a replica of.
    #[arg(long, value_name = "NODE")]
    only_keys_not_served_by: Option<String>,
    /// Processes (NAME=PID or PID, comma-separated) whose CPU time
    /// (/proc/PID/stat) is sampled at the start and end of the measured
    /// window and reported per successful operation.
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<Watched>,
    #[command(flatten)]
    output: Output,
}

#[derive(Args, Debug)]
struct VisArgs {
    /// The shard's master (where the writes go).
    #[arg(long)]
    master: String,
    /// The shard's workers (where the reads go).
    #[arg(long, value_delimiter = ',', required = true)]
    workers: Vec<String>,
    /// Background PUTs per second at the master.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Connections for the background writes.
    #[arg(short, long, default_value_t = 16)]
    connections: usize,
    #[arg(short, long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Milliseconds between two probes.
    #[arg(long, default_value_t = 2.0)]
    probe_interval_ms: f64,
    #[arg(long, default_value_t = 5_000)]
    probe_timeout_ms: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    output: Output,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CeilingServer { port, bind, threads }) => {
            let rt = runtime(threads);
            match rt.block_on(bench::ceiling::serve(&bind, port)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&format!("ceiling server: {e}")),
            }
        }
        Some(Command::FsyncProbe { dir, count, block }) => match bench::probe::fsync_probe(&dir, count.max(1), block.max(1)) {
            Ok(report) => {
                println!("{}", serde_json::to_string_pretty(&report).expect("serialisable report"));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("fsync probe in {}: {e}", dir.display())),
        },
        Some(Command::Features { nodes, connections, duration, keys_per_read, watch_writes, watch_rate }) => {
            let args = bench::features::FeatureArgs {
                nodes,
                connections: connections.max(1),
                seconds: duration.max(0.5),
                keys_per_read: keys_per_read.clamp(1, 1000),
                watch_writes: watch_writes.max(1),
                watch_rate,
            };
            match runtime(None).block_on(bench::features::run(args)) {
                Ok(report) => {
                    println!("{}", serde_json::to_string_pretty(&report).expect("serialisable report"));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Some(Command::Visibility(a)) => {
            let cfg = VisConfig {
                master: a.master,
                workers: a.workers,
                rate: a.rate,
                connections: a.connections,
                duration: secs(a.duration),
                warmup: secs(a.warmup),
                keys: a.keys,
                key_size: a.key_size,
                value_size: a.value_size,
                probe_interval: secs(a.probe_interval_ms / 1000.0),
                probe_timeout: Duration::from_millis(a.probe_timeout_ms),
                seed: a.seed,
            };
            let rt = runtime(a.output.threads);
            match rt.block_on(bench::visibility::run(cfg)) {
                Ok(report) => emit(&a.output, &report, &report.table()),
                Err(e) => fail(&e),
            }
        }
        None => {
            let a = cli.run;
            let cfg = RunConfig {
                label: a.label.unwrap_or_else(|| format!("{:?}", a.target).to_lowercase()),
                target: a.target,
                nodes: a.nodes,
                connections: a.connections.max(1),
                duration: secs(a.duration),
                ops: a.ops,
                warmup: secs(a.warmup),
                pattern: a.pattern,
                put_ratio: a.put_ratio.clamp(0.0, 1.0),
                keys: a.keys.max(1),
                dist: a.dist,
                zipf_theta: a.zipf_theta,
                key_size: a.key_size,
                value_size: a.value_size,
                serializable: a.serializable,
                with_context: !a.no_context,
                preload: a.preload,
                preload_only: a.preload_only,
                metrics: a.metrics,
                timeout: Duration::from_millis(a.timeout_ms.max(1)),
                seed: a.seed,
                route: a.route,
                key_filter: match (a.only_keys_served_by, a.only_keys_not_served_by) {
                    (Some(n), _) => Some(KeyFilter::ServedBy(n)),
                    (None, Some(n)) => Some(KeyFilter::NotServedBy(n)),
                    (None, None) => None,
                },
                server_pids: a.server_pids,
            };
            let rt = runtime(a.output.threads);
            match rt.block_on(bench::load::run(cfg)) {
                Ok(report) => emit(&a.output, &report, &report.table()),
                Err(e) => fail(&e),
            }
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn runtime(threads: Option<usize>) -> tokio::runtime::Runtime {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        b.worker_threads(n.max(1));
    }
    b.enable_all().build().expect("tokio runtime")
}

fn emit<T: serde::Serialize>(out: &Output, report: &T, table: &str) -> ExitCode {
    let json = serde_json::to_string_pretty(report).expect("serialisable report");
    if let Some(path) = &out.json
        && let Err(e) = std::fs::write(path, format!("{json}\n"))
    {
        return fail(&format!("writing {}: {e}", path.display()));
    }
    match out.format {
        Format::Table => print!("{table}"),
        Format::Json => println!("{json}"),
    }
    ExitCode::SUCCESS
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("causalkv-bench: {msg}");
    ExitCode::FAILURE
}
