//! The Python client (`clients/python`): its unittest suite against a real
//! node, and the README's Python example against a real 2-node cluster.
//! Both import the package from source (`PYTHONPATH=clients/python`) and
//! need `python3`; without it they fail (a skip would read as a pass).

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// Longest a python3 run may take (the suite takes about 10 s).
const PYTHON_LIMIT: Duration = Duration::from_secs(300);

/// Runs `python3 args` in the repository with the client on PYTHONPATH and
/// the extra environment `env`; killed after `PYTHON_LIMIT`.
async fn python(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("python3");
    cmd.args(args)
        .current_dir(MANIFEST_DIR)
        .env("PYTHONPATH", format!("{MANIFEST_DIR}/clients/python"))
        // No __pycache__ in the source tree; UTF-8 output whatever the locale.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONIOENCODING", "utf-8")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    match tokio::time::timeout(PYTHON_LIMIT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("python3 is needed for the Python client tests (install it: apt-get install python3): {e}")
        }
        Ok(Err(e)) => panic!("cannot run python3: {e}"),
        Err(_) => panic!("python3 {args:?} did not finish within {PYTHON_LIMIT:?}"),
    }
}

fn report(out: &Output) -> String {
    format!("--- stdout\n{}\n--- stderr\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The README's section under `heading` (up to the next `## ` heading).
fn readme_section(heading: &str) -> String {
    let readme = std::fs::read_to_string(format!("{MANIFEST_DIR}/README.md")).expect("README.md");
    let start = readme.find(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("README has {heading:?}"));
    let rest = &readme[start + 1 + heading.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_string()
}

/// The first ```` ```lang ```` block of `section`.
fn first_block(section: &str, lang: &str) -> String {
    let fence = format!("```{lang}\n");
    let open = section.find(&fence).unwrap_or_else(|| panic!("a {fence:?} block")) + fence.len();
    let close = section[open..].find("```").expect("the block ends");
    section[open..open + close].to_string()
}

// clients/python/tests: every test passes (none skipped) against a node
// started from this build's binary.
#[tokio::test]
async fn python_client_unittests_pass_against_a_real_node() {
    let out = python(&["-m", "unittest", "discover", "-s", "clients/python/tests", "-v"], &[("CAUSALKV_BIN", common::BIN)]).await;
    let output = report(&out);
    assert!(out.status.success(), "the Python client tests failed ({}):\n{output}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ran: usize = stderr
        .lines()
        .find_map(|l| l.strip_prefix("Ran ")?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no `Ran N tests` line:\n{output}"));
    assert!(ran >= 20, "only {ran} Python tests ran:\n{output}");
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    assert_eq!(last.trim(), "OK", "the run must end in a plain OK (no skips, no expected failures):\n{output}");
    eprintln!("{output}");
}

// The README's Python example, run as written against a 2-node cluster of
// one replica per shard (2 shards), prints the README's output, and its
// writes landed in both shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_python_example_runs_as_shown() {
    let section = readme_section("## Python client");
    let example = first_block(&section, "python");
    let expected = first_block(&section, "text");
    assert!(example.contains("CAUSALKV_NODES"), "the example reads its nodes from CAUSALKV_NODES");

    let cluster = common::Cluster::start(2, 1).await;
    let nodes = format!("{},{}", cluster.addr(0), cluster.addr(1));
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("readme_example.py");
    std::fs::write(&script, &example).expect("write the example");
    let out = python(&[script.to_str().expect("UTF-8 temp path")], &[("CAUSALKV_NODES", &nodes)]).await;
    let output = report(&out);
    assert!(out.status.success(), "the README's Python example failed ({}):\n{output}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected.trim(), "the example prints what the README shows");

    let mut counts = Vec::new();
    for i in 0..2 {
        let answer = cluster.get_json(i, "/kv-store/key-count").await;
        counts.push(answer.body.get("key-count").and_then(Value::as_u64).unwrap_or_else(|| panic!("a key count: {}", answer.body)));
    }
    assert!(counts.iter().all(|&c| c > 0), "the example wrote keys in both shards: {counts:?}");
    assert_eq!(counts.iter().sum::<u64>(), 8, "8 users stay after the greeting is deleted: {counts:?}");
}
