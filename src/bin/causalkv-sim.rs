//! `causalkv-sim`: runs seeded simulations of a whole cluster (see
//! `causalkv::sim`) and reports every seed that breaks causal consistency,
//! loses an acknowledged write, or leaves replicas apart.
//!
//! The last line is always
//! `sim: <N> seeds, <V> violations, <L> lost, <D> divergent, <W> watch problems
//! (<E> events, <G> announced gaps), digest <hex>`;
//! the same arguments print the same digest. Exit status 1 when any seed
//! failed, 2 on bad arguments.

use std::process::ExitCode;

use clap::Parser;

use causalkv::sim::{ALL_FAULTS, SimConfig, SimReplication, combined_digest, run_seeds};

#[derive(Parser, Debug)]
#[command(name = "causalkv-sim", about = "Deterministic simulation of a causalkv cluster under faults")]
struct Args {
    /// How many seeds to run (from --first-seed on).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// Run only this seed (replays a failure exactly).
    #[arg(long)]
    seed: Option<u64>,
    /// First seed of a --seeds run.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Nodes in the first view (one spare more joins in the view change).
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    #[arg(long, default_value_t = 2)]
    repl_factor: usize,
    /// Client operations per seed.
    #[arg(long, default_value_t = 200)]
    ops: usize,
    /// Client sessions per seed.
    #[arg(long, default_value_t = 4)]
    sessions: usize,
    /// Comma-separated faults to inject (default: all of them): drop, delay,
    /// duplicate, partition, crash, skew, viewchange; `none` for none.
    #[arg(long)]
    faults: Option<String>,
    /// Chance per message of each network fault (drop there, drop back, duplicate).
    #[arg(long, default_value_t = 0.02)]
    fault_rate: f64,
    /// Change-feed watchers that follow every key during the run (their
    /// events are checked: none missed, duplicated or out of causal order).
    #[arg(long, default_value_t = 2)]
    watchers: usize,
    /// Threads running seeds (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Switch on a deliberate protocol bug in every node (shows the checker
    /// catches it): `skip-hold-back` answers before the causal gate,
    /// `snapshot-one-round` answers snapshot reads after their first round,
    /// `feed-ignores-deps` sends feed events without their cross-shard deps.
    #[arg(long)]
    bug: Option<String>,
    /// Replication path: `stream` (replication streams over simulated pipes),
    /// `push` (request/response batches, as over Mycelium), or `by-seed`
    /// (streams on odd seeds, pushes on even ones).
    #[arg(long, default_value = "by-seed")]
    replication: String,
    /// Print every seed's summary, not only failures.
    #[arg(long)]
    verbose: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // RUST_LOG=causalkv=debug shows what the nodes of a replayed seed do.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    }
    let faults: Vec<String> = match args.faults.as_deref() {
        None => ALL_FAULTS.iter().map(|f| f.to_string()).collect(),
        Some("none") => Vec::new(),
        Some(list) => list.split(',').map(|f| f.trim().to_owned()).filter(|f| !f.is_empty()).collect(),
    };
    if let Some(bad) = faults.iter().find(|f| !ALL_FAULTS.contains(&f.as_str())) {
        eprintln!("causalkv-sim: unknown fault {bad:?} (known: {})", ALL_FAULTS.join(", "));
        return ExitCode::from(2);
    }
    if !(0.0..=1.0).contains(&args.fault_rate) {
        eprintln!("causalkv-sim: --fault-rate must be between 0 and 1");
        return ExitCode::from(2);
    }
    if args.nodes == 0 || args.nodes > 200 || args.repl_factor == 0 || args.repl_factor > args.nodes || args.sessions == 0 {
        eprintln!("causalkv-sim: need 1 <= --repl-factor <= --nodes <= 200 and --sessions >= 1");
        return ExitCode::from(2);
    }
    let bug = match args.bug.as_deref() {
        None => None,
        Some("skip-hold-back") => Some(causalkv::faults::Bug::SkipHoldBack),
        Some("snapshot-one-round") => Some(causalkv::faults::Bug::SnapshotOneRound),
        Some("feed-ignores-deps") => Some(causalkv::faults::Bug::FeedIgnoresDeps),
        Some(other) => {
            eprintln!("causalkv-sim: unknown bug {other:?} (known: skip-hold-back, snapshot-one-round, feed-ignores-deps)");
            return ExitCode::from(2);
        }
    };
    let Some(replication) = SimReplication::parse(&args.replication) else {
        eprintln!("causalkv-sim: --replication must be stream, push or by-seed");
        return ExitCode::from(2);
    };
    let config = SimConfig {
        replication,
        nodes: args.nodes,
        repl_factor: args.repl_factor,
        ops: args.ops,
        sessions: args.sessions,
        faults: faults.clone(),
        bug,
        fault_rate: args.fault_rate,
        watchers: args.watchers.min(16),
        ..SimConfig::default()
    };
    let (first, count) = match args.seed {
        Some(s) => (s, 1),
        None => (args.first_seed, args.seeds),
    };
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let replay = |seed: u64| {
        format!(
            "causalkv-sim --seed {seed} --replication {} --nodes {} --repl-factor {} --ops {} --sessions {} --watchers {} --fault-rate {} --faults {}",
            args.replication,
            args.nodes,
            args.repl_factor,
            args.ops,
            args.sessions,
            args.watchers,
            args.fault_rate,
            if faults.is_empty() { "none".to_owned() } else { faults.join(",") }
        )
    };
    let outcomes = run_seeds(&config, first, count, threads, |o| {
        if !o.is_clean() {
            println!("seed {} FAILED: {} — replay: {}", o.seed, o.summary, replay(o.seed));
            for p in &o.problems {
                println!("  {p}");
            }
        } else if args.verbose {
            println!("seed {} ok: {}", o.seed, o.summary);
        }
    });
    let violations: usize = outcomes.iter().map(|o| o.violations).sum();
    let lost: usize = outcomes.iter().map(|o| o.lost).sum();
    let divergent: usize = outcomes.iter().map(|o| o.divergent).sum();
    let watch_problems: usize = outcomes.iter().map(|o| o.watch_problems).sum();
    let watch_events: usize = outcomes.iter().map(|o| o.watch_events).sum();
    let watch_gaps: usize = outcomes.iter().map(|o| o.watch_gaps).sum();
    println!(
        "sim: {} seeds, {violations} violations, {lost} lost, {divergent} divergent, {watch_problems} watch problems \
         ({watch_events} events, {watch_gaps} announced gaps), digest {}",
        outcomes.len(),
        combined_digest(&outcomes)
    );
    if outcomes.iter().all(|o| o.is_clean()) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
