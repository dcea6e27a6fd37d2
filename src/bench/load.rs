//! The closed-loop load run: N sessions (one persistent connection each),
//! an optional preload, a warm-up, then the measured window.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::keyspace::{Dist, KeyChooser, Rng, key_into, value_bytes};
use super::procstat::{self, ServerCpu, Watched};
use super::promtext::{self, HoldbackCounters};
use super::route::{self, KeyFilter, Route, Routes};
use super::session::{Outcome, Session, Spec, TargetKind};
use super::stats::{OpStats, Summary};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// Each operation is a PUT with probability `put_ratio`, else a GET, on
    /// the session's own node.
    Mixed,
    /// Each session PUTs a key at the first node (the shard's master) and at
    /// once GETs it, with the context the PUT returned, at one of the other
    /// nodes (a worker): the read may have to wait for replication.
    WriteRead,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    pub label: String,
    pub target: TargetKind,
    pub nodes: Vec<String>,
    pub connections: usize,
    pub duration: Duration,
    pub ops: Option<u64>,
    pub warmup: Duration,
    pub pattern: Pattern,
    pub put_ratio: f64,
    pub keys: u64,
    pub dist: Dist,
    pub zipf_theta: f64,
    pub key_size: usize,
    pub value_size: usize,
    pub serializable: bool,
    pub with_context: bool,
    pub preload: bool,
    pub preload_only: bool,
    pub metrics: bool,
    pub timeout: Duration,
    pub seed: u64,
    /// causalkv: where each request goes (`node`: connection i to node i mod n).
    pub route: Route,
    /// causalkv: draw only the keys of one side of a node's shard.
    pub key_filter: Option<KeyFilter>,
    /// Processes (the nodes) whose CPU is sampled around the measured window.
    pub server_pids: Vec<Watched>,
}

#[derive(Serialize, Debug)]
pub struct Preload {
    pub keys: u64,
    pub seconds: f64,
    pub rate: f64,
    pub errors: u64,
}

#[derive(Serialize, Debug)]
pub struct Holdback {
    pub reads: f64,
    pub waits: f64,
    /// Share of reads that were held back.
    pub share: f64,
    pub unsatisfied: f64,
    /// Mean time a held-back read waited.
    pub mean_wait_ms: f64,
}

#[derive(Serialize, Debug)]
pub struct RunReport {
    pub tool: &'static str,
    pub config: RunConfig,
    /// Length of the measured window.
    pub seconds: f64,
    pub all: Summary,
    pub get: Summary,
    pub put: Summary,
    pub reconnects: u64,
    /// CPU time the load generator itself used in the measured window
    /// (user + system), and that as a share of all cores' time.
    pub client_cpu_seconds: f64,
    pub client_cpu_share: f64,
    pub error_samples: Vec<String>,
    pub preload: Option<Preload>,
    pub holdback: Option<Holdback>,
    /// The shards learnt for `--route shard` or a key filter.
    pub routing: Option<Routing>,
    /// CPU of the `--server-pids` processes in the measured window.
    pub server_cpu: Option<ServerCpu>,
}

#[derive(Serialize, Debug)]
pub struct Routing {
    pub shards: Vec<route::Shard>,
    /// Distinct keys the run draws from (after the filter).
    pub keys_used: u64,
}

impl RunReport {
    pub fn table(&self) -> String {
        let c = &self.config;
        let title = format!(
            "{} ({:?}, {} node(s), {} connection(s), {:.1} s, put ratio {}, {} keys {:?}, {} B values{})",
            c.label,
            c.target,
            c.nodes.len(),
            c.connections,
            self.seconds,
            c.put_ratio,
            c.keys,
            c.dist,
            c.value_size,
            if c.serializable { ", serializable" } else { "" }
        );
        let mut rows = Vec::new();
        if self.get.ops + self.get.errors > 0 {
            rows.push(("get".to_string(), &self.get));
        }
        if self.put.ops + self.put.errors > 0 {
            rows.push(("put".to_string(), &self.put));
        }
        rows.push(("all".to_string(), &self.all));
        let mut out = super::stats::table(&title, &rows);
        out.push_str(&format!(
            "load generator CPU: {:.2} s ({:.0}% of all cores)\n",
            self.client_cpu_seconds,
            self.client_cpu_share * 100.0
        ));
        if let Some(p) = &self.preload {
            out.push_str(&format!("preload: {} keys in {:.2} s ({:.0}/s), {} errors\n", p.keys, p.seconds, p.rate, p.errors));
        }
        if let Some(h) = &self.holdback {
            out.push_str(&format!(
                "hold-back: {:.0} of {:.0} reads waited ({:.2}%), mean wait {:.3} ms, {:.0} unsatisfied\n",
                h.waits,
                h.reads,
                h.share * 100.0,
                h.mean_wait_ms,
                h.unsatisfied
            ));
        }
        if let Some(r) = &self.routing {
            let shards: Vec<String> = r.shards.iter().map(|s| format!("shard {} (master {}): {} keys", s.id, s.master, s.keys)).collect();
            out.push_str(&format!("routing {:?}: {} keys used; {}\n", self.config.route, r.keys_used, shards.join(", ")));
        }
        if let Some(c) = &self.server_cpu {
            let each: Vec<String> = c.processes.iter().map(|p| format!("{} {:.0} µs", p.name, p.us_per_op)).collect();
            out.push_str(&format!(
                "server CPU: {:.2} s ({:.0}% of all cores), {:.1} µs per operation ({})\n",
                c.cpu_seconds,
                c.share * 100.0,
                c.us_per_op,
                each.join(", ")
            ));
        }
        for e in self.error_samples.iter().take(5) {
            out.push_str(&format!("error: {e}\n"));
        }
        out
    }
}

pub async fn run(cfg: RunConfig) -> Result<RunReport, String> {
    if cfg.nodes.is_empty() {
        return Err("no nodes given".into());
    }
    if cfg.pattern == Pattern::WriteRead && (cfg.target != TargetKind::Causalkv || cfg.nodes.len() < 2) {
        return Err("--pattern write-read needs --target causalkv and at least 2 nodes (master first)".into());
    }
    let routed = cfg.route == Route::Shard || cfg.key_filter.is_some();
    if routed && (cfg.target != TargetKind::Causalkv || cfg.pattern != Pattern::Mixed) {
        return Err("--route shard and --only-keys-* need --target causalkv and --pattern mixed".into());
    }
    let spec = Spec::new(cfg.target, cfg.serializable, cfg.with_context, value_bytes(cfg.value_size, cfg.seed));
    let cfg = Arc::new(cfg);

    let preload = if cfg.preload || cfg.preload_only { Some(preload(&cfg, &spec).await?) } else { None };
    if cfg.preload_only {
        let empty = OpStats::default().summary(0.0);
        return Ok(RunReport {
            tool: "causalkv-bench",
            config: (*cfg).clone(),
            seconds: 0.0,
            all: empty.clone(),
            get: empty.clone(),
            put: empty,
            reconnects: 0,
            client_cpu_seconds: 0.0,
            client_cpu_share: 0.0,
            error_samples: Vec::new(),
            preload,
            holdback: None,
            routing: None,
            server_cpu: None,
        });
    }

    // Where keys live: learnt before any connection of the run is opened.
    let mut routes: Option<Arc<Routes>> = None;
    let mut keys: Option<Arc<Vec<u64>>> = None;
    if routed {
        let r = route::discover(&cfg.nodes[0], &spec, cfg.keys, cfg.key_size, cfg.connections.min(32), cfg.timeout).await?;
        if let Some(f) = &cfg.key_filter {
            keys = Some(Arc::new(r.filter(f)?));
        }
        routes = Some(Arc::new(r));
    }
    let routing =
        routes.as_ref().map(|r| Routing { shards: r.shards.clone(), keys_used: keys.as_ref().map_or(cfg.keys, |k| k.len() as u64) });

    // Every connection is opened before the clock starts.
    let mut sessions = Vec::with_capacity(cfg.connections);
    for i in 0..cfg.connections {
        if let (Route::Shard, Some(r)) = (cfg.route, &routes) {
            let (conns, plan) = shard_conns(&spec, r, i).await?;
            sessions.push((Conns::new(conns), None, Some(plan)));
            continue;
        }
        let mut main = Session::new(spec.clone(), &cfg.nodes[i % cfg.nodes.len()]);
        let mut reader = None;
        if cfg.pattern == Pattern::WriteRead {
            main = Session::new(spec.clone(), &cfg.nodes[0]);
            let workers = &cfg.nodes[1..];
            let mut r = Session::new(spec.clone(), &workers[i % workers.len()]);
            r.connect().await.map_err(|e| format!("connect {}: {e}", r.addr()))?;
            reader = Some(r);
        }
        main.connect().await.map_err(|e| format!("connect {}: {e}", main.addr()))?;
        sessions.push((Conns::new(vec![main]), reader, None));
    }

    let scrape = cfg.metrics || cfg.pattern == Pattern::WriteRead;
    let start = Instant::now();
    let measure_start = start + cfg.warmup;
    let end = if cfg.ops.is_some() { None } else { Some(measure_start + cfg.duration) };
    let counted = Arc::new(AtomicU64::new(0));
    let mut before: Option<HoldbackCounters> = None;
    let mut tasks = Vec::with_capacity(sessions.len());
    for (i, (conns, reader, plan)) in sessions.into_iter().enumerate() {
        let cfg = cfg.clone();
        let counted = counted.clone();
        let keys = keys.clone();
        let routes = routes.clone();
        let ways = Ways { keys, routes, plan };
        tasks.push(tokio::spawn(session_loop(cfg, i, conns, reader, ways, measure_start, end, counted)));
    }
    tokio::time::sleep_until(measure_start).await;
    let cpu_before = cpu_seconds();
    let servers_before = procstat::sample(&cfg.server_pids);
    if scrape {
        before = Some(promtext::scrape(&cfg.nodes).await.map_err(|e| format!("scraping /metrics: {e}"))?);
    }
    let mut get = OpStats::default();
    let mut put = OpStats::default();
    let mut reconnects = 0;
    for t in tasks {
        let (g, p, r) = t.await.map_err(|e| format!("session task failed: {e}"))?;
        get.merge(&g);
        put.merge(&p);
        reconnects += r;
    }
    let seconds = Instant::now().saturating_duration_since(measure_start).as_secs_f64();
    let client_cpu_seconds = cpu_seconds() - cpu_before;
    let servers_after = procstat::sample(&cfg.server_pids);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let holdback = match before {
        Some(before) => {
            let after = promtext::scrape(&cfg.nodes).await.map_err(|e| format!("scraping /metrics: {e}"))?;
            let d = after.delta(&before);
            Some(Holdback {
                reads: d.get_requests,
                waits: d.holdback_waits,
                share: if d.get_requests > 0.0 { d.holdback_waits / d.get_requests } else { 0.0 },
                unsatisfied: d.holdback_unsatisfied,
                mean_wait_ms: if d.holdback_seconds_count > 0.0 { d.holdback_seconds_sum / d.holdback_seconds_count * 1000.0 } else { 0.0 },
            })
        }
        None => None,
    };
    let mut all = get.clone();
    all.merge(&put);
    let server_cpu = (!cfg.server_pids.is_empty())
        .then(|| procstat::server_cpu(&cfg.server_pids, &servers_before, &servers_after, all.ok + all.misses, seconds));
    let mut error_samples = get.error_samples.clone();
    error_samples.extend(put.error_samples.iter().cloned());
    Ok(RunReport {
        tool: "causalkv-bench",
        config: (*cfg).clone(),
        seconds,
        all: all.summary(seconds),
        get: get.summary(seconds),
        put: put.summary(seconds),
        reconnects,
        client_cpu_seconds,
        client_cpu_share: if seconds > 0.0 { client_cpu_seconds / (seconds * cores) } else { 0.0 },
        error_samples,
        preload,
        holdback,
        routing,
        server_cpu,
    })
}

/// The connections of one session: one, or (with `--route shard`) one per
/// node the session sends to. The causal context moves with the session from
/// connection to connection, as one client's would.
struct Conns {
    list: Vec<Session>,
    last: usize,
}

impl Conns {
    fn new(list: Vec<Session>) -> Conns {
        Conns { list, last: 0 }
    }

    fn pick(&mut self, i: usize) -> &mut Session {
        if i != self.last {
            let ctx = std::mem::take(&mut self.list[self.last].ctx);
            self.list[i].ctx = ctx;
            self.last = i;
        }
        &mut self.list[i]
    }

    fn reconnects(&self) -> u64 {
        self.list.iter().map(|s| s.reconnects).sum()
    }
}

/// For `--route shard`: index into the session's connections of each shard's
/// master (PUT) and of the replica this session reads from (GET).
struct Plan {
    put: Vec<usize>,
    get: Vec<usize>,
}

/// Opens session `i`'s connections for `--route shard`.
async fn shard_conns(spec: &Arc<Spec>, routes: &Routes, i: usize) -> Result<(Vec<Session>, Plan), String> {
    let mut addrs: Vec<String> = Vec::new();
    let mut index = |addr: &str| match addrs.iter().position(|a| a == addr) {
        Some(p) => p,
        None => {
            addrs.push(addr.to_string());
            addrs.len() - 1
        }
    };
    let mut plan = Plan { put: Vec::new(), get: Vec::new() };
    for s in &routes.shards {
        plan.put.push(index(&s.master));
        let reader = if s.replicas.is_empty() { &s.master } else { &s.replicas[i % s.replicas.len()] };
        plan.get.push(index(reader));
    }
    let mut conns = Vec::with_capacity(addrs.len());
    for a in &addrs {
        let mut s = Session::new(spec.clone(), a);
        s.connect().await.map_err(|e| format!("connect {a}: {e}"))?;
        conns.push(s);
    }
    Ok((conns, plan))
}

/// How a session picks keys and connections: the filtered keys (else
/// `0..keys`), and with `--route shard` the shard of each key and the plan.
struct Ways {
    keys: Option<Arc<Vec<u64>>>,
    routes: Option<Arc<Routes>>,
    plan: Option<Plan>,
}

#[allow(clippy::too_many_arguments)]
async fn session_loop(
    cfg: Arc<RunConfig>,
    index: usize,
    mut conns: Conns,
    mut reader: Option<Session>,
    ways: Ways,
    measure_start: Instant,
    end: Option<Instant>,
    counted: Arc<AtomicU64>,
) -> (OpStats, OpStats, u64) {
    let n = ways.keys.as_ref().map_or(cfg.keys, |k| k.len() as u64);
    let chooser = KeyChooser::new(cfg.dist, n, cfg.zipf_theta);
    let mut rng = Rng::new(cfg.seed.wrapping_mul(1_000_003).wrapping_add(index as u64));
    let mut get = OpStats::default();
    let mut put = OpStats::default();
    let mut key = Vec::with_capacity(cfg.key_size + 8);
    loop {
        let now = Instant::now();
        let measuring = now >= measure_start;
        if let Some(end) = end
            && now >= end
        {
            break;
        }
        if measuring
            && let Some(limit) = cfg.ops
            && counted.fetch_add(1, Ordering::Relaxed) >= limit
        {
            break;
        }
        let drawn = chooser.next(&mut rng);
        let k = ways.keys.as_ref().map_or(drawn, |keys| keys[drawn as usize]);
        key_into(&mut key, "k", k, cfg.key_size);
        match reader.as_mut() {
            None => {
                let is_put = cfg.put_ratio >= 1.0 || (cfg.put_ratio > 0.0 && rng.f64() < cfg.put_ratio);
                let conn = match (&ways.plan, &ways.routes) {
                    (Some(plan), Some(routes)) => {
                        let shard = routes.key_shard[k as usize] as usize;
                        if is_put { plan.put[shard] } else { plan.get[shard] }
                    }
                    _ => 0,
                };
                let main = conns.pick(conn);
                let t0 = Instant::now();
                let outcome = if is_put { timed(cfg.timeout, main.put(&key)).await } else { timed(cfg.timeout, main.get(&key)).await };
                let latency = t0.elapsed();
                if measuring {
                    if is_put { &mut put } else { &mut get }.record(&outcome, latency);
                }
            }
            Some(reader) => {
                let main = conns.pick(0);
                let t0 = Instant::now();
                let outcome = timed(cfg.timeout, main.put(&key)).await;
                let t1 = Instant::now();
                if measuring {
                    put.record(&outcome, t1 - t0);
                }
                if outcome != Outcome::Ok {
                    continue;
                }
                // The reader continues the writer's causal history.
                reader.ctx.clone_from(&main.ctx);
                let outcome = timed(cfg.timeout, reader.get(&key)).await;
                if measuring {
                    get.record(&outcome, t1.elapsed());
                }
                main.ctx.clone_from(&reader.ctx);
            }
        }
    }
    let reconnects = conns.reconnects() + reader.map_or(0, |r| r.reconnects);
    (get, put, reconnects)
}

/// User + system CPU seconds of this process so far.
pub fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: initialised by the successful call above.
    let u = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

async fn timed(limit: Duration, fut: impl std::future::Future<Output = Outcome>) -> Outcome {
    match tokio::time::timeout(limit, fut).await {
        Ok(o) => o,
        Err(_) => Outcome::Error(format!("timed out after {limit:?}")),
    }
}

/// Writes every key once, spread over the sessions (`min(connections, keys)`).
async fn preload(cfg: &Arc<RunConfig>, spec: &Arc<Spec>) -> Result<Preload, String> {
    let workers = (cfg.connections.max(1) as u64).min(cfg.keys.max(1));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let cfg = cfg.clone();
        let mut s = Session::new(spec.clone(), &cfg.nodes[w as usize % cfg.nodes.len()]);
        tasks.push(tokio::spawn(async move {
            let mut errors = 0u64;
            let mut key = Vec::new();
            let mut i = w;
            while i < cfg.keys {
                key_into(&mut key, "k", i, cfg.key_size);
                let mut tries = 0;
                loop {
                    match timed(cfg.timeout, s.put(&key)).await {
                        Outcome::Ok => break,
                        _ if tries < 3 => tries += 1,
                        _ => {
                            errors += 1;
                            break;
                        }
                    }
                }
                i += workers;
            }
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await.map_err(|e| format!("preload task failed: {e}"))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Preload { keys: cfg.keys, seconds, rate: cfg.keys as f64 / seconds.max(1e-9), errors })
}
