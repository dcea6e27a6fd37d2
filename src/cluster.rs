//! `causalkv cluster`: a local development cluster of real node processes on
//! consecutive ports of one host. Prints the view and shard map; Ctrl-C (or
//! SIGTERM) stops every node gracefully.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Args;

use causalkv::shard::{ShardMap, View};

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
    let mut children: Vec<Child> = Vec::new();
    for addr in &view.nodes {
        let dir = args.data_dir.join(addr.replace([':', '[', ']'], "_"));
        let spawned = Command::new(&exe)
            .env("ADDRESS", addr)
            .env("VIEW", view.nodes.join(","))
            .env("REPL_FACTOR", args.repl_factor.to_string())
            .env("DATA_DIR", &dir)
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

/// Blocks until SIGINT/SIGTERM or until a node exits on its own.
fn wait_for_stop(children: &mut [Child]) {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
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
