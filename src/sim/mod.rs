//! Deterministic simulation: a whole cluster in one process, driven by one
//! seed, judged by the causal checker (FoundationDB's and TigerBeetle's way
//! of testing, on the production code paths).
//!
//! A run builds N real [`Node`]s — the same `Node::serve_key`, gossip,
//! replication, anti-entropy, failure detector and view change the process
//! runs — over in-memory storage ([`MemoryDisk`]) and the simulated network
//! ([`net`]; replicas replicate over in-memory streams or by pushes, chosen
//! per seed by [`SimReplication`]), on a current-thread tokio runtime with
//! paused time: virtual time jumps to the next timer whenever every task
//! waits, so a run of minutes of cluster time takes milliseconds, and the
//! order of everything is fixed by the seed. Client sessions ([`workload`])
//! send PUT/GET/DELETE across shards to random nodes, carrying their
//! contexts; a fault schedule drops, delays, duplicates and reorders messages, partitions and heals,
//! crashes nodes (losing what was not synced) and restarts them, skews and
//! steps their clocks, and runs a view change in the middle of the traffic.
//! At the end the network heals, every node restarts, the cluster settles,
//! and the history goes through [`crate::check`]: causal violations, lost
//! acknowledged writes, and replicas of a shard that still disagree.
//!
//! Invariant: the outcome (and its digest, a SHA-256 over every history) is
//! a function of ([`SimConfig`], seed) alone.

pub mod net;
pub mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::causal::CausalContext;
use crate::check::{FinalState, History};
use crate::config::{Config, NodeArgs};
use crate::faults::{Bug, Faults};
use crate::gossip::Auth;
use crate::gossip::refusals::PeerRefusals;
use crate::metrics::Metrics;
use crate::node::kv::{KvAnswer, KvOp, KvRequest};
use crate::node::{Node, NodeParts};
use crate::shard::{ShardMap, View};
use crate::store::{DurabilityMode, MemoryDisk, Store};
use crate::time::VirtualClock;
use net::{Incarnation, NetFaults, SimNet, SimTransport};

/// Every fault the simulator can inject (`--faults`).
pub const ALL_FAULTS: [&str; 7] = ["drop", "delay", "duplicate", "partition", "crash", "skew", "viewchange"];

/// One simulation's settings (everything but the seed).
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Nodes in the first view.
    pub nodes: usize,
    pub repl_factor: usize,
    /// Client operations, over all sessions.
    pub ops: usize,
    pub sessions: usize,
    /// Distinct keys the sessions use.
    pub keys: usize,
    /// Enabled faults (names from [`ALL_FAULTS`]).
    pub faults: Vec<String>,
    /// A deliberate defect switched on in every node (to show the checker
    /// catches it).
    pub bug: Option<Bug>,
    /// Chance per message of each network fault that is on (drop there,
    /// drop back, duplicate).
    pub fault_rate: f64,
    /// Change-feed watchers following every key while the sessions run.
    pub watchers: usize,
    /// How replicas replicate: over streams, by request/response pushes (the
    /// Mycelium transport's way), or one or the other by seed.
    pub replication: SimReplication,
}

/// The replication path a run takes (`--replication`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimReplication {
    /// Replication streams over simulated pipes (the HTTP transport's way).
    Stream,
    /// Request/response pushes (the replicator; Mycelium's way).
    Push,
    /// Streams on odd seeds, pushes on even ones: both paths in every batch
    /// of seeds.
    BySeed,
}

impl SimReplication {
    pub fn streams(self, seed: u64) -> bool {
        match self {
            Self::Stream => true,
            Self::Push => false,
            Self::BySeed => seed % 2 == 1,
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "stream" => Some(Self::Stream),
            "push" => Some(Self::Push),
            "by-seed" => Some(Self::BySeed),
            _ => None,
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 4,
            repl_factor: 2,
            ops: 200,
            sessions: 4,
            keys: 8,
            faults: ALL_FAULTS.iter().map(|f| f.to_string()).collect(),
            bug: None,
            fault_rate: 0.02,
            watchers: 2,
            replication: SimReplication::BySeed,
        }
    }
}

impl SimConfig {
    fn has(&self, fault: &str) -> bool {
        self.faults.iter().any(|f| f == fault)
    }
}

/// What one seed found.
#[derive(Debug, Clone)]
pub struct SeedOutcome {
    pub seed: u64,
    pub violations: usize,
    pub lost: usize,
    pub divergent: usize,
    /// Watch events duplicated, out of causal order, or missed.
    pub watch_problems: usize,
    /// Watch events received, and feeds that ended saying writes were gone.
    pub watch_events: usize,
    pub watch_gaps: usize,
    /// SHA-256 of the history and final state (hex).
    pub digest: String,
    /// Client operations recorded, and how many of them failed.
    pub operations: usize,
    pub failed: usize,
    /// The epoch of the view the cluster ended in (0: no view change).
    pub final_epoch: u64,
    /// Replication streams the nodes' last incarnations opened (0 when the
    /// run replicated by pushes).
    pub streams_opened: u64,
    /// One line: operations, failures, what went wrong.
    pub summary: String,
    /// Descriptions of the first few problems.
    pub problems: Vec<String>,
}

impl SeedOutcome {
    pub fn is_clean(&self) -> bool {
        self.violations == 0 && self.lost == 0 && self.divergent == 0 && self.watch_problems == 0
    }
}

/// Virtual wall-clock start of every run (2026-01-01), so HLCs look real.
const BASE_MS: u64 = 1_767_225_600_000;
/// Longest the cluster may take to settle after the faults stop, before the
/// final state is read (anti-entropy runs every 200 ms; a node that missed
/// a view change adopts it within a second or two).
const SETTLE: Duration = Duration::from_secs(20);
/// How long watchers may catch up after the cluster settled.
const WATCH_DRAIN: Duration = Duration::from_secs(8);
/// Hold-back bound of the simulated nodes (`CAUSAL_WAIT_MS`).
const CAUSAL_WAIT_MS: u64 = 1000;

/// The simulated cluster.
pub struct SimCluster {
    pub net: Arc<SimNet>,
    config: SimConfig,
    /// Every node's address, in view order (the first view's nodes first).
    pub addresses: Vec<String>,
    disks: BTreeMap<String, MemoryDisk>,
    clocks: BTreeMap<String, Arc<VirtualClock>>,
    /// The view each node starts with (its first configuration).
    first_view: View,
    running: Mutex<BTreeMap<String, Running>>,
    incarnations: Mutex<u64>,
    started: tokio::time::Instant,
}

struct Running {
    inc: Arc<Incarnation>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl SimCluster {
    /// `nodes` in the first view plus one spare outside it (added by the
    /// view change, when that fault is on).
    pub fn new(config: SimConfig, seed: u64) -> Arc<Self> {
        let net = SimNet::new(seed, NetFaults::default(), config.replication.streams(seed));
        let total = config.nodes + usize::from(config.has("viewchange"));
        let addresses: Vec<String> = (0..total).map(|i| format!("10.0.0.{}:13800", i + 1)).collect();
        let first_view = View::new(addresses[..config.nodes].to_vec(), config.repl_factor, 1).expect("the simulated view is valid");
        let skew = config.has("skew");
        let clocks = addresses
            .iter()
            .map(|a| {
                let skew_ms = if skew { net.with_rng(|r| r.random_range(-150..=150)) } else { 0 };
                (a.clone(), Arc::new(VirtualClock::new(BASE_MS, skew_ms)))
            })
            .collect();
        let disks = addresses.iter().map(|a| (a.clone(), MemoryDisk::new())).collect();
        Arc::new(Self {
            net,
            config,
            addresses,
            disks,
            clocks,
            first_view,
            running: Mutex::new(BTreeMap::new()),
            incarnations: Mutex::new(0),
            started: tokio::time::Instant::now(),
        })
    }

    fn node_config(&self, address: &str) -> Config {
        let view = self.first_view.nodes.join(",");
        let args = NodeArgs::parse_for_simulation(address, &view, self.config.repl_factor, CAUSAL_WAIT_MS);
        Config::from_args(&args).expect("the simulated configuration is valid")
    }

    /// Starts (or restarts) `address` on its disk.
    pub fn start(&self, address: &str) {
        let disk = &self.disks[address];
        let wall = self.clocks[address].clone();
        let config = self.node_config(address);
        let store = Store::open_in_memory(disk, address, DurabilityMode::Fsync, wall.clone()).expect("a memory disk opens");
        let transport = SimTransport::new(address, self.net.clone());
        let faults = Arc::new(Faults::new(true));
        if let Some(bug) = self.config.bug {
            faults.inject_bug(bug);
        }
        let parts = NodeParts {
            auth: Arc::new(Auth::new(None, address)),
            config,
            store: Arc::new(store),
            transport: transport.clone(),
            forwarder: transport.clone(),
            wall,
            faults,
            metrics: Arc::new(Metrics::default()),
            refusals: Arc::new(PeerRefusals::default()),
        };
        let node = Node::new(parts).expect("a simulated node starts");
        let number = {
            let mut n = self.incarnations.lock();
            *n += 1;
            *n
        };
        let inc = Incarnation::new(node.clone(), number);
        *transport.incarnation.lock() = Some(inc.clone());
        let (shutdown, rx) = watch::channel(false);
        let tasks = node.spawn_tasks(rx);
        self.net.set_incarnation(address, Some(inc.clone()));
        self.running.lock().insert(address.to_owned(), Running { inc, shutdown, tasks });
    }

    /// Kills `address` as SIGKILL would: every task stops where it is, and
    /// what its disk had not synced is gone.
    pub fn crash(&self, address: &str) {
        let Some(run) = self.running.lock().remove(address) else { return };
        self.net.set_incarnation(address, None);
        run.inc.kill();
        let _ = run.shutdown.send(true);
        for t in run.tasks.into_iter().chain(run.inc.node.stop_epoch_tasks()) {
            t.abort();
        }
        self.disks[address].crash();
    }

    pub fn is_up(&self, address: &str) -> bool {
        self.running.lock().contains_key(address)
    }

    /// The live node at `address`.
    pub fn incarnation(&self, address: &str) -> Option<Arc<Incarnation>> {
        self.net.incarnation(address)
    }

    /// The live node at `address`, if it is up.
    pub fn node(&self, address: &str) -> Option<Arc<Node>> {
        self.incarnation(address).map(|i| i.node.clone())
    }

    /// One client request through `via` (as a client of the HTTP API sends
    /// it), run as work of that node; `None` when the node is down or the
    /// request took longer than a client waits (10 s).
    pub async fn request(&self, via: &str, op: KvOp, key: &str, value: Option<&str>, context: &CausalContext) -> Option<KvAnswer> {
        let inc = self.incarnation(via)?;
        let value = value.and_then(|v| serde_json::value::RawValue::from_string(serde_json::to_string(v).ok()?).ok());
        let req = KvRequest::client(op, key, value, context.clone(), inc.node.config.causal_wait);
        let node = inc.node.clone();
        tokio::time::timeout(Duration::from_secs(10), inc.run(async move { node.serve_key(&req).await })).await.ok().flatten()
    }

    /// Polls `cond` every 100 ms of virtual time until it holds (true) or
    /// `limit` passes (false).
    pub async fn wait_until(&self, limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if cond() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Virtual time since the cluster was made.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The highest view any live node runs.
    pub fn current_view(&self) -> View {
        let running = self.running.lock();
        running.values().map(|r| r.inc.node.current().map.view.clone()).max_by_key(|v| v.epoch).unwrap_or_else(|| self.first_view.clone())
    }
}

impl NodeArgs {
    /// The settings of a simulated node (fault switches on, no key).
    pub fn parse_for_simulation(address: &str, view: &str, repl_factor: usize, causal_wait_ms: u64) -> NodeArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            node: NodeArgs,
        }
        let rf = repl_factor.to_string();
        let wait = causal_wait_ms.to_string();
        let argv = ["causalkv", "--address", address, "--view", view, "--repl-factor", &rf, "--causal-wait-ms", &wait, "--faults"];
        Wrapper::parse_from(argv).node
    }
}

#[cfg(not(tokio_unstable))]
fn warn_not_reproducible() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| eprintln!("causalkv sim: built without --cfg tokio_unstable: runs are not reproducible (see .cargo/config.toml)"));
}

/// Runs a scripted scenario on a simulated cluster: `nodes` started (plus
/// the spare when `config` has the view-change fault), met for 3 s of
/// virtual time, then `script`. Deterministic like a seed.
pub fn run_scenario<F, Fut>(config: SimConfig, seed: u64, script: F)
where
    F: FnOnce(Arc<SimCluster>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let runtime = deterministic_runtime(seed);
    runtime.block_on(async move {
        let cluster = SimCluster::new(config, seed);
        for a in &cluster.addresses {
            cluster.start(a);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        script(cluster.clone()).await;
        for a in &cluster.addresses {
            cluster.crash(a);
        }
    });
}

/// Runs one seed to the end and judges it.
pub fn run_seed(config: &SimConfig, seed: u64) -> SeedOutcome {
    deterministic_runtime(seed).block_on(simulate(config.clone(), seed))
}

/// A current-thread runtime with paused (virtual) time and, with
/// `--cfg tokio_unstable`, tokio's own random choices seeded by `seed`.
fn deterministic_runtime(seed: u64) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_time().start_paused(true);
    // tokio's own random choices (which `select!` branch goes first) come
    // from the seed too; without `--cfg tokio_unstable` (.cargo/config.toml)
    // they do not, and runs may differ.
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
    #[cfg(not(tokio_unstable))]
    {
        let _ = seed;
        warn_not_reproducible();
    }
    builder.build().expect("a runtime starts")
}

async fn simulate(config: SimConfig, seed: u64) -> SeedOutcome {
    let cluster = SimCluster::new(config.clone(), seed);
    for a in &cluster.addresses {
        cluster.start(a);
    }
    // Let the nodes meet (heartbeats, start-up catch-up).
    tokio::time::sleep(Duration::from_secs(3)).await;
    if config.has("drop") || config.has("delay") || config.has("duplicate") {
        cluster.net.set_faults(NetFaults {
            drop_request: if config.has("drop") { config.fault_rate } else { 0.0 },
            drop_reply: if config.has("drop") { config.fault_rate } else { 0.0 },
            duplicate: if config.has("duplicate") { config.fault_rate } else { 0.0 },
            max_delay: if config.has("delay") { Duration::from_millis(30) } else { Duration::from_millis(1) },
        });
    }
    let history = Arc::new(Mutex::new(History::new()));
    let done = Arc::new(tokio::sync::Notify::new());
    let stop_watching = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let logs: Vec<Arc<Mutex<workload::WatchLog>>> = (0..config.watchers).map(|_| Arc::default()).collect();
    let watchers: Vec<_> = logs
        .iter()
        .enumerate()
        .map(|(i, log)| tokio::spawn(workload::watcher(cluster.clone(), i, stop_watching.clone(), log.clone())))
        .collect();
    let nemesis = tokio::spawn(workload::nemesis(cluster.clone(), config.clone(), done.clone()));
    workload::run_sessions(cluster.clone(), &config, history.clone()).await;
    done.notify_one();
    let _ = nemesis.await;
    // Heal: no more faults, every node up, time to converge.
    cluster.net.set_faults(NetFaults::default());
    cluster.net.heal_all();
    for a in &cluster.addresses {
        if !cluster.is_up(a) {
            cluster.start(a);
        }
    }
    let recorded = std::mem::take(&mut *history.lock());
    settle(&cluster, &recorded).await;
    // The watchers get a while after the cluster settled to catch up, then stop.
    cluster.wait_until(WATCH_DRAIN, || logs.iter().all(|l| workload::caught_up(&l.lock(), &recorded))).await;
    stop_watching.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in watchers {
        let _ = w.await;
    }
    let logs: Vec<workload::WatchLog> = logs.iter().map(|l| std::mem::take(&mut *l.lock())).collect();
    *history.lock() = recorded;
    let view = cluster.current_view();
    let (final_state, divergent, mut problems) = read_final_state(&cluster, &view, &history.lock());
    let history = history.lock();
    let report = history.check(&final_state);
    let mut hasher = Sha256::new();
    if let Some(dir) = std::env::var_os("CAUSALKV_SIM_DUMP") {
        // Replaying a seed twice and diffing the dumps finds where two runs part.
        let _ = std::fs::write(std::path::Path::new(&dir).join(format!("seed-{seed}.txt")), history.dump());
    }
    hasher.update(history.dump().as_bytes());
    for (key, values) in &final_state.values {
        hasher.update(format!("{key}={values:?}\n").as_bytes());
    }
    let mut watch_issues = Vec::new();
    for log in &logs {
        watch_issues.extend(workload::watch_problems(log, &history));
        hasher.update(format!("watch {} {} {}\n", log.events.len(), log.reconnects, log.gaps).as_bytes());
    }
    let watch_events: usize = logs.iter().map(|l| l.events.len()).sum();
    let watch_gaps: usize = logs.iter().map(|l| l.gaps).sum();
    let digest = hex::encode(hasher.finalize());
    problems.extend(watch_issues.iter().take(5).cloned());
    problems.extend(report.violations.iter().take(5).map(|v| v.description.clone()));
    problems.extend(report.lost_writes.iter().take(5).cloned());
    let streams_opened = cluster.addresses.iter().filter_map(|a| cluster.node(a)).map(|n| n.metrics.replication_streams_opened.get()).sum();
    for a in &cluster.addresses {
        cluster.crash(a);
    }
    SeedOutcome {
        streams_opened,
        seed,
        violations: report.violations.len(),
        lost: report.lost_writes.len(),
        divergent,
        digest,
        operations: report.operations,
        failed: report.failed,
        final_epoch: view.epoch,
        watch_problems: watch_issues.len(),
        watch_events,
        watch_gaps,
        summary: format!(
            "{} divergent={divergent} epoch={} streams={streams_opened} watch: events={watch_events} problems={} gaps={watch_gaps}",
            report.summary(),
            view.epoch,
            watch_issues.len()
        ),
        problems,
    }
}

/// Waits until every node runs the same view and the replicas of every
/// shard have applied the same writes and agree on every key, or until
/// [`SETTLE`] has passed (then the final check reports what is apart).
async fn settle(cluster: &SimCluster, history: &History) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    // At least a few anti-entropy rounds and heartbeats after the heal.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while tokio::time::Instant::now() < deadline {
        let view = cluster.current_view();
        let same_view = cluster.addresses.iter().all(|a| cluster.incarnation(a).is_some_and(|i| i.node.epoch() == view.epoch));
        if same_view && read_final_state(cluster, &view, history).1 == 0 && shards_applied_alike(cluster, &view) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether the replicas of every shard report the same applied clock.
fn shards_applied_alike(cluster: &SimCluster, view: &View) -> bool {
    let map = ShardMap::new(view.clone(), "");
    map.shard_ids().into_iter().all(|shard| {
        let clocks: Vec<_> = map.replicas(shard).iter().map(|r| cluster.incarnation(r).map(|i| i.node.store.applied())).collect();
        clocks.windows(2).all(|w| w[0] == w[1])
    })
}

/// Every key's value at every replica of its shard (from the stores), and
/// how many keys the replicas disagree on.
fn read_final_state(cluster: &SimCluster, view: &View, history: &History) -> (FinalState, usize, Vec<String>) {
    let map = ShardMap::new(view.clone(), "");
    let mut values = BTreeMap::new();
    let mut divergent = 0;
    let mut problems = Vec::new();
    let keys: std::collections::BTreeSet<String> = history.ops().iter().map(|o| o.key().to_owned()).collect();
    for key in keys {
        let shard = map.shard_of(&key);
        let mut at_replicas = Vec::new();
        for replica in map.replicas(shard) {
            let value =
                cluster.incarnation(replica).and_then(|inc| inc.node.store.get(&key).ok().flatten()).and_then(|r| r.value).map(|v| {
                    // Values are JSON strings the sessions wrote.
                    serde_json::from_str::<String>(v.get()).unwrap_or_else(|_| v.get().to_owned())
                });
            at_replicas.push(value);
        }
        if at_replicas.windows(2).any(|w| w[0] != w[1]) {
            divergent += 1;
            if problems.len() < 5 {
                let epochs: Vec<String> = map
                    .replicas(shard)
                    .iter()
                    .map(|r| {
                        cluster
                            .incarnation(r)
                            .map_or("down".to_owned(), |i| format!("epoch {} applied {:?}", i.node.epoch(), i.node.store.applied()))
                    })
                    .collect();
                problems.push(format!("replicas of {key} disagree: {at_replicas:?} at {:?} ({epochs:?})", map.replicas(shard)));
            }
        }
        values.insert(key, at_replicas);
    }
    (FinalState { values }, divergent, problems)
}

/// Runs seeds `first..first + count` on `threads` threads; calls `report`
/// for each outcome in seed order.
pub fn run_seeds(config: &SimConfig, first: u64, count: u64, threads: usize, mut report: impl FnMut(&SeedOutcome)) -> Vec<SeedOutcome> {
    let next = std::sync::atomic::AtomicU64::new(first);
    let results = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= first + count {
                        break;
                    }
                    let outcome = run_seed(config, seed);
                    results.lock().insert(seed, outcome);
                }
            });
        }
    });
    let results: Vec<SeedOutcome> = results.into_inner().into_values().collect();
    for r in &results {
        report(r);
    }
    results
}

/// The digest of many seeds: SHA-256 over their digests in seed order.
pub fn combined_digest(outcomes: &[SeedOutcome]) -> String {
    let mut hasher = Sha256::new();
    for o in outcomes {
        hasher.update(o.digest.as_bytes());
    }
    hex::encode(hasher.finalize())
}
