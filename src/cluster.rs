//! `causalkv cluster`: a local development cluster of real node processes on
//! consecutive ports of one host. Prints the view and shard map; Ctrl-C (or
//! SIGTERM) stops every node gracefully.
//!
//! It never starts nodes over data folders that would give the cluster two
//! views at one epoch (say `./data/127.0.0.1_13800` of a node first run
//! alone, which keeps its stored one-node view): it names the folder and
//! exits 2; `--fresh` deletes the nodes' folders first. Folders that hold
//! this cluster's view, or a later view a view change committed, are used
//! as they are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Args;

use causalkv::shard::{ShardMap, View};
use causalkv::store::{DurabilityMode, Store};

/// How long to wait for every node to answer /health.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Number of node processes.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Replicas per shard.
    #[arg(long, default_value_t = 2)]
    repl_factor: usize,
    /// Host the nodes listen on and are addressed by.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port of the first node; the others follow.
    #[arg(long, default_value_t = 13800)]
    base_port: u16,
    /// Parent directory of the nodes' data directories.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Delete the nodes' data directories first (a fresh cluster; their
    /// keys are lost).
    #[arg(long)]
    fresh: bool,
}

pub fn run(args: ClusterArgs) -> ExitCode {
    if args.nodes == 0 || usize::from(args.base_port) + args.nodes > 65536 {
        eprintln!("causalkv: configuration error: --nodes must be at least 1 and the ports must fit below 65536");
        return ExitCode::from(2);
    }
    let addrs: Vec<String> = (0..args.nodes).map(|i| format!("{}:{}", args.host, args.base_port as usize + i)).collect();
    let view = match View::new(addrs.clone(), args.repl_factor, 0) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("causalkv: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("causalkv: cannot find my own binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dirs: Vec<(String, PathBuf)> =
        view.nodes.iter().map(|addr| (addr.clone(), args.data_dir.join(addr.replace([':', '[', ']'], "_")))).collect();
    let prepared = if args.fresh { clear_data(&dirs) } else { check_stored_views(&view, &dirs) };
    if let Err(e) = prepared {
        eprintln!("causalkv: {e}");
        return ExitCode::from(2);
    }
    install_stop_handlers();
    let mut children: Vec<Child> = Vec::new();
    for (addr, dir) in &dirs {
        let spawned = Command::new(&exe)
            .env("ADDRESS", addr)
            .env("VIEW", view.nodes.join(","))
            .env("REPL_FACTOR", args.repl_factor.to_string())
            .env("DATA_DIR", dir)
            .env_remove("PORT")
            .spawn();
        match spawned {
            Ok(c) => children.push(c),
            Err(e) => {
                eprintln!("causalkv: cannot start node {addr}: {e}");
                stop(&mut children);
                return ExitCode::FAILURE;
            }
        }
    }
    if let Err(e) = wait_healthy(&view.nodes, &mut children) {
        eprintln!("causalkv: {e}");
        stop(&mut children);
        return ExitCode::FAILURE;
    }
    let map = ShardMap::new(view.clone(), &view.nodes[0]);
    println!("causalkv cluster: {} nodes, repl-factor {}", view.nodes.len(), view.repl_factor);
    println!("VIEW={}", view.nodes.join(","));
    for id in map.shard_ids() {
        let replicas = map.replicas(id);
        println!("shard {id}: master {} workers [{}]", replicas[0], replicas[1..].join(", "));
    }
    println!("Ctrl-C stops every node.");
    wait_for_stop(&mut children);
    stop(&mut children);
    ExitCode::SUCCESS
}

/// Refuses data folders that would make two views at one epoch: each node
/// runs the view stored in its folder if there is one, else `view`.
/// A folder whose stored view differs from `view` at the same epoch comes
/// from another cluster (or other `--nodes`/`--repl-factor`).
fn check_stored_views(view: &View, dirs: &[(String, PathBuf)]) -> Result<(), String> {
    let mut runs: Vec<(&Path, View, bool)> = Vec::new();
    for (addr, dir) in dirs {
        match stored_view(addr, dir)? {
            Some(stored) => runs.push((dir, stored, true)),
            None => runs.push((dir, view.clone(), false)),
        }
    }
    let mut by_epoch: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (_, v, _) in &runs {
        let ids = by_epoch.entry(v.epoch).or_default();
        let id = v.id();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let stray: Vec<String> = runs
        .iter()
        .filter(|(_, v, stored)| {
            // A stored view other than the one asked for at its epoch, or two
            // stored views at one later epoch; a later view a change
            // committed everywhere is this cluster's own.
            *stored && v != view && (v.epoch == view.epoch || by_epoch.get(&v.epoch).is_some_and(|ids| ids.len() > 1))
        })
        .map(|(dir, v, _)| {
            format!("  {} holds the view {} (repl-factor {}, epoch {})", dir.display(), v.nodes.join(","), v.repl_factor, v.epoch)
        })
        .collect();
    if stray.is_empty() {
        return Ok(());
    }
    Err(format!(
        "refusing to start: data folders hold another cluster's view\n{}\nwhile this cluster starts {} (repl-factor {}, epoch {}). \
         Two views at one epoch would split the cluster (writes acknowledged by one node and never found by the others).\n\
         Run again with --fresh to delete the data folders of this cluster's nodes first (their keys are lost), \
         or choose another --data-dir.",
        stray.join("\n"),
        view.nodes.join(","),
        view.repl_factor,
        view.epoch
    ))
}

/// The view stored in a node's data folder, if the folder exists and has
/// one. Opens the store (no node may hold it) and closes it again.
fn stored_view(addr: &str, dir: &Path) -> Result<Option<View>, String> {
    if !dir.exists() {
        return Ok(None);
    }
    let store = Store::open(dir, addr, DurabilityMode::Fsync)
        .map_err(|e| format!("cannot read the data folder {}: {e} (is a node still running on it?)", dir.display()))?;
    let bytes = store.stored_view().map_err(|e| format!("cannot read the view stored in {}: {e}", dir.display()))?;
    drop(store);
    match bytes {
        Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| format!("the view stored in {} is unreadable: {e}", dir.display())),
        None => Ok(None),
    }
}

/// `--fresh`: deletes the nodes' data folders, unless a node still answers
/// at its address (its folder is in use).
fn clear_data(dirs: &[(String, PathBuf)]) -> Result<(), String> {
    for (addr, dir) in dirs {
        if !dir.exists() {
            continue;
        }
        if std::net::TcpStream::connect_timeout(&addr_of(addr)?, Duration::from_millis(200)).is_ok() {
            return Err(format!("a process listens at {addr}: stop the running node before deleting {} (--fresh)", dir.display()));
        }
        std::fs::remove_dir_all(dir).map_err(|e| format!("cannot delete the data folder {}: {e}", dir.display()))?;
        eprintln!("causalkv cluster: deleted {} (--fresh)", dir.display());
    }
    Ok(())
}

fn addr_of(addr: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs().ok().and_then(|mut a| a.next()).ok_or_else(|| format!("cannot resolve {addr}"))
}

fn wait_healthy(addrs: &[String], children: &mut [Child]) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    for (addr, child) in addrs.iter().zip(children.iter_mut()) {
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("node {addr} exited during start-up ({status})"));
            }
            if health_ok(addr) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("node {addr} did not become healthy within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// A minimal blocking `GET /health` (no async runtime needed here).
fn health_ok(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(stream.read(&mut buf), Ok(n) if n >= 12 && &buf[9..12] == b"200")
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Installs the SIGINT/SIGTERM handlers. Called before any node is
/// spawned: a signal that came before them would kill this process and
/// leave its nodes running.
fn install_stop_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Blocks until SIGINT/SIGTERM or until a node exits on its own.
fn wait_for_stop(children: &mut [Child]) {
    while !STOP.load(std::sync::atomic::Ordering::SeqCst) {
        for child in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("causalkv: node process {} exited ({status}); stopping the cluster", child.id());
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM to every node, then wait for them (SIGKILL after 10 s).
fn stop(children: &mut [Child]) {
    for child in children.iter() {
        // SAFETY: plain kill(2) on a pid we spawned.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for child in children.iter_mut() {
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_view(dir: &Path, addr: &str, view: &View) {
        let store = Store::open(dir, addr, DurabilityMode::Fsync).expect("open a store");
        store.store_view(&serde_json::to_vec(view).expect("a view serialises")).expect("store the view");
    }

    #[test]
    fn only_folders_of_another_view_at_the_same_epoch_are_refused() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let start = View::parse("127.0.0.1:1,127.0.0.1:2", 2, 0).expect("view");
        let dirs: Vec<(String, PathBuf)> =
            start.nodes.iter().enumerate().map(|(i, a)| (a.clone(), tmp.path().join(format!("n{i}")))).collect();
        assert_eq!(check_stored_views(&start, &dirs), Ok(()), "no folders yet");
        store_view(&dirs[0].1, &dirs[0].0, &start);
        assert_eq!(check_stored_views(&start, &dirs), Ok(()), "this cluster's own folder");
        // A view change committed everywhere: restarting keeps it.
        let changed = View { repl_factor: 1, epoch: 1, ..start.clone() };
        for (addr, dir) in &dirs {
            store_view(dir, addr, &changed);
        }
        assert_eq!(check_stored_views(&start, &dirs), Ok(()), "a later committed view");
        // Two views at epoch 1.
        store_view(&dirs[1].1, &dirs[1].0, &View { epoch: 1, ..start.clone() });
        let err = check_stored_views(&start, &dirs).expect_err("two views at epoch 1");
        assert!(err.contains(&dirs[0].1.display().to_string()) && err.contains(&dirs[1].1.display().to_string()), "{err}");
        // The README in order: a node first run alone.
        std::fs::remove_dir_all(&dirs[1].1).expect("remove");
        let alone = View::parse("127.0.0.1:1", 1, 0).expect("view");
        store_view(&dirs[0].1, &dirs[0].0, &alone);
        let err = check_stored_views(&start, &dirs).expect_err("a one-node view at epoch 0");
        assert!(err.contains(&dirs[0].1.display().to_string()) && err.contains("--fresh"), "{err}");
        assert!(!err.contains(&dirs[1].1.display().to_string()), "only the stray folder is named: {err}");
        assert_eq!(clear_data(&dirs), Ok(()));
        assert!(!dirs[0].1.exists());
        assert_eq!(check_stored_views(&start, &dirs), Ok(()), "fresh");
    }
}
