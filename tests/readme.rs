//! The README's local-cluster command and curl session, run as written
//! (ports shifted to free ones) against a fresh cluster: same output.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn readme_block(after: &str, lang: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let start = readme.find(after).unwrap_or_else(|| panic!("README has {after:?}"));
    let rest = &readme[start..];
    let open = rest.find(&format!("```{lang}\n")).expect("block start") + 4 + lang.len();
    let close = rest[open..].find("```").expect("block end");
    rest[open..open + close].to_string()
}

fn shift_ports(text: &str, base: u16) -> String {
    let mut out = text.to_string();
    for i in 0..4u16 {
        out = out.replace(&format!("127.0.0.1:{}", 13800 + i), &format!("127.0.0.1:{}", base + i));
    }
    out
}

// `causalkv cluster --nodes 4 --repl-factor 2` prints the README's shard map,
// answers the README's curl session exactly, and stops cleanly on Ctrl-C.
#[test]
fn the_readme_cluster_and_curl_session_work_as_shown() {
    assert!(Command::new("curl").arg("--version").output().is_ok(), "curl is needed to run the README session");
    let base = common::free_port_run(4);
    let data = tempfile::tempdir().unwrap();
    let (cluster, printed) = start_cluster(base, data.path());
    let command = readme_block("## A local cluster in one command", "sh");
    assert_eq!(command.trim(), "cargo run --release -- cluster --nodes 4 --repl-factor 2", "the README command is the one tested");
    let map_block = shift_ports(&readme_block("spawns 4 node processes", ""), base);
    assert_eq!(printed.join("\n").trim(), map_block.trim());

    let steps = console_steps(&readme_block("### A curl session", "console"));
    assert!(steps.len() >= 8, "the session has its steps");
    for (cmd, expected) in &steps {
        let cmd = shift_ports(cmd, base);
        let out = Command::new("bash").arg("-c").arg(&cmd).output().expect("run curl");
        let got = String::from_utf8_lossy(&out.stdout).to_string();
        let got_json: Value = serde_json::from_str(&got).unwrap_or_else(|_| panic!("{cmd}\nanswered non-JSON: {got}"));
        let want_json: Value = serde_json::from_str(&shift_ports(expected, base)).expect("README output is JSON");
        assert_eq!(got_json, want_json, "\n$ {cmd}");
    }

    stop_cluster(cluster, base);
}

/// `causalkv cluster --nodes 4 --repl-factor 2` on ports from `base`, once
/// it printed its map (the channel keeps reading its output). The caller
/// stops it with [`stop_cluster`], which waits for it.
#[allow(clippy::zombie_processes)]
fn start_cluster(base: u16, data: &std::path::Path) -> (std::process::Child, Vec<String>) {
    let mut cluster = Command::new(common::BIN)
        .args(["cluster", "--nodes", "4", "--repl-factor", "2", "--base-port", &base.to_string()])
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the cluster command");
    let stdout = cluster.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut printed: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !printed.last().is_some_and(|l| l.starts_with("Ctrl-C")) {
        let left = deadline.saturating_duration_since(Instant::now());
        printed.push(rx.recv_timeout(left).expect("the cluster command printed its map"));
    }
    (cluster, printed)
}

/// Ctrl-C: every node stops gracefully and no port is left listening.
fn stop_cluster(mut cluster: std::process::Child, base: u16) {
    unsafe {
        libc::kill(cluster.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = cluster.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the cluster did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "cluster exited with {status}");
    for i in 0..4 {
        assert!(std::net::TcpStream::connect(("127.0.0.1", base + i)).is_err(), "node {i} still listening after Ctrl-C");
    }
}

/// The `$ command` lines of a console block, each with the lines it printed.
fn console_steps(block: &str) -> Vec<(String, String)> {
    let mut steps: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        if let Some(cmd) = line.strip_prefix("$ ") {
            steps.push((cmd.to_string(), String::new()));
        } else if let Some(last) = steps.last_mut() {
            last.1.push_str(line);
            last.1.push('\n');
        }
    }
    steps
}

/// Runs the README console block after `heading` line by line (ports
/// shifted, `causalkv` on the PATH, `export` lines kept for the next ones)
/// and compares what each prints (stdout and stderr) with the README.
/// `shards` and `status` show replication as it stands, so they are asked
/// again (with a deadline) until the workers have caught up.
fn run_console_block(heading: &str, base: u16, min_steps: usize) {
    let work = tempfile::tempdir().unwrap();
    let bin_dir = std::path::Path::new(common::BIN).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let steps = console_steps(&readme_block(heading, "console"));
    assert!(steps.len() >= min_steps, "the session has its steps");
    let mut env: Vec<(String, String)> = Vec::new();
    for (cmd, expected) in &steps {
        let cmd = shift_ports(cmd, base);
        if let Some(assignment) = cmd.strip_prefix("export ") {
            let (name, value) = assignment.split_once('=').expect("NAME=VALUE");
            env.push((name.to_string(), value.to_string()));
            continue;
        }
        let expected = shift_ports(expected, base);
        let read_only = cmd.starts_with("causalkv shards") || cmd.starts_with("causalkv status");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("bash")
                .arg("-c")
                .arg(format!("exec 2>&1\n{cmd}"))
                .current_dir(work.path())
                .env("PATH", &path)
                .env("RUST_LOG", "warn")
                .envs(env.iter().cloned())
                .output()
                .expect("run bash");
            let got = String::from_utf8_lossy(&out.stdout).to_string();
            if got.trim_end() == expected.trim_end() {
                break;
            }
            assert!(read_only && Instant::now() < deadline, "\n$ {cmd}\nprinted:\n{got}\nREADME says:\n{expected}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

// The README's command-line session, run as written (ports shifted) against
// a fresh `causalkv cluster --nodes 4 --repl-factor 2`: same output.
#[test]
fn the_readme_cli_session_works_as_shown() {
    let base = common::free_port_run(4);
    let data = tempfile::tempdir().unwrap();
    let (cluster, _) = start_cluster(base, data.path());
    run_console_block("## Command-line client", base, 10);
    stop_cluster(cluster, base);
}

// The README's snapshot read and change feed, with curl and the CLI, against
// a fresh cluster: same output.
#[test]
fn the_readme_snapshot_read_and_watch_work_as_shown() {
    let base = common::free_port_run(4);
    let data = tempfile::tempdir().unwrap();
    let (cluster, _) = start_cluster(base, data.path());
    run_console_block("## Snapshot reads and change feeds", base, 5);
    stop_cluster(cluster, base);
}

// `cargo run --release` (the README's first command) must start a node even
// though the package has more than one binary.
#[test]
fn cargo_run_starts_the_node_binary() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let has_other_bins = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src/bin")).exists() || manifest.contains("[[bin]]");
    if has_other_bins {
        assert!(manifest.lines().any(|l| l.replace(' ', "") == "default-run=\"causalkv\""), "Cargo.toml needs default-run = \"causalkv\"");
    }
    assert!(std::path::Path::new(common::BIN).exists());
}
