//! `GET /dashboard`: the page's headers and self-containment (always run),
//! and what headless Chromium renders from a real 4-node cluster, before,
//! during and after a worker freezes (ignored: needs Chromium; `.ci/run`
//! installs it and runs `cargo test --test dashboard -- --ignored`).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Cluster, send};
use serde_json::{Value, json};

/// The endpoints the page may call.
const ALLOWED_FETCHES: [&str; 2] = ["/kv-store/cluster-status", "/metrics"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_one_self_contained_page() {
    let c = Cluster::start(1, 1).await;
    let resp = c.client.get(c.nodes[0].url("/dashboard")).send().await.expect("the node answers /dashboard");
    assert_eq!(resp.status(), 200);
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned).unwrap_or_default();
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert_eq!(header("cache-control"), "no-store");
    let csp = header("content-security-policy");
    for directive in
        ["default-src 'none'", "script-src 'unsafe-inline'", "style-src 'unsafe-inline'", "connect-src 'self'", "img-src data:"]
    {
        assert!(csp.split(';').any(|d| d.trim() == directive), "CSP lacks {directive:?}: {csp}");
    }
    assert!(!csp.contains("http") && !csp.contains('*'), "the CSP allows another origin: {csp}");
    let page = resp.text().await.expect("a body");
    let file = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/dashboard.html")).expect("dashboard.html");
    assert_eq!(page, file, "the node serves src/api/dashboard.html as it is");

    // Nothing from another origin: no absolute URL at all, no imports, no url() but data:.
    let lower = page.to_ascii_lowercase();
    for attr in ["src=", "href="] {
        for (at, _) in lower.match_indices(attr) {
            let value = lower[at + attr.len()..].trim_start_matches(['"', '\'']);
            assert!(!value.starts_with("http") && !value.starts_with("//"), "external {attr}: {}", &page[at..(at + 80).min(page.len())]);
        }
    }
    assert!(!lower.contains("://"), "the page holds an absolute URL");
    assert!(!lower.contains("@import"), "the page imports a stylesheet");
    for (at, _) in lower.match_indices("url(") {
        assert!(
            lower[at + 4..].trim_start_matches(['"', '\'']).starts_with("data:"),
            "url() not data: {}",
            &page[at..(at + 60).min(page.len())]
        );
    }
    // Only the endpoints above, by fetch; no other way out; no HTML parsing of strings.
    let fetches: Vec<&str> = page.match_indices("fetch(").map(|(at, _)| &page[at + 6..]).collect();
    assert_eq!(fetches.len(), ALLOWED_FETCHES.len(), "one fetch per endpoint");
    for call in fetches {
        assert!(
            ALLOWED_FETCHES.iter().any(|e| call.starts_with(&format!("'{e}'"))),
            "fetch of something else: {}",
            &call[..60.min(call.len())]
        );
    }
    for path in page.match_indices("/kv-store/").map(|(at, _)| &page[at..]) {
        assert!(path.starts_with("/kv-store/cluster-status"), "another endpoint: {}", &path[..40.min(path.len())]);
    }
    for banned in [
        "XMLHttpRequest",
        "WebSocket",
        "EventSource",
        "sendBeacon",
        "import(",
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!page.contains(banned), "the page uses {banned}");
    }
    for tag in ["<img", "<iframe", "<form", "<object", "<embed", "<script src", "<link rel=\"stylesheet\""] {
        assert!(!lower.contains(tag), "the page has {tag}");
    }

    // Like every route, other methods get the JSON 405.
    assert_eq!(send(c.client.post(c.nodes[0].url("/dashboard"))).await.status, 405);
}

// ---- the browser test -------------------------------------------------------

/// Chromium (Debian `chromium`), or another name it goes by, from PATH.
fn browser() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "no headless browser: none of chromium, chromium-browser, google-chrome is on PATH. \
         Install it (Debian: apt-get install -y chromium; .ci/run does) to run this test"
    );
}

/// How long one Chromium run may take.
const CHROMIUM_LIMIT: Duration = Duration::from_secs(60);

/// Runs headless Chromium on `url` with `args`; its stdout.
async fn chromium(args: &[&str], url: &str) -> String {
    let profile = tempfile::tempdir().expect("temp dir");
    let mut cmd = tokio::process::Command::new(browser());
    cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-extensions"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn().expect("Chromium starts");
    let pid = child.id().expect("Chromium's pid") as i32;
    let out = tokio::time::timeout(CHROMIUM_LIMIT, child.wait_with_output()).await;
    // Chromium's helpers (zygotes, crash handler) are in its process group:
    // none outlives the run, also when it hung.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    let out = out.unwrap_or_else(|_| panic!("Chromium did not finish within {CHROMIUM_LIMIT:?}: {args:?} {url}")).expect("Chromium ran");
    assert!(out.status.success(), "Chromium failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM of `url` once the page's script ran for ~3 s (several polls).
async fn dump_dom(url: &str) -> String {
    chromium(&["--dump-dom", "--virtual-time-budget=3000"], url).await
}

/// One start tag of the dumped DOM.
#[derive(Debug)]
struct Tag {
    name: String,
    attrs: HashMap<String, String>,
}

impl Tag {
    fn get(&self, attr: &str) -> Option<&str> {
        self.attrs.get(attr).map(String::as_str)
    }
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Every start tag of `html` with its attributes (skipping script and style text).
fn tags(html: &str) -> Vec<Tag> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        if !rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        let name_end = rest.find(|c: char| c.is_whitespace() || c == '>' || c == '/').unwrap_or(rest.len());
        let name = rest[..name_end].to_ascii_lowercase();
        let mut attrs = HashMap::new();
        let mut s = &rest[name_end..];
        loop {
            s = s.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
            if s.is_empty() || s.starts_with('>') {
                break;
            }
            let key_end = s.find(|c: char| c.is_whitespace() || c == '=' || c == '>').unwrap_or(s.len());
            let key = s[..key_end].to_ascii_lowercase();
            s = &s[key_end..];
            let mut value = String::new();
            if let Some(after) = s.strip_prefix('=') {
                let quote = after.chars().next().filter(|c| *c == '"' || *c == '\'');
                let (v, next) = match quote {
                    Some(q) => {
                        let end = after[1..].find(q).map(|e| e + 1).unwrap_or(after.len());
                        (&after[1..end], &after[(end + 1).min(after.len())..])
                    }
                    None => {
                        let end = after.find(|c: char| c.is_whitespace() || c == '>').unwrap_or(after.len());
                        (&after[..end], &after[end..])
                    }
                };
                value = unescape(v);
                s = next;
            }
            attrs.insert(key, value);
        }
        rest = s;
        if name == "script" || name == "style" {
            rest = rest.find(&format!("</{name}")).map(|e| &rest[e..]).unwrap_or("");
        }
        out.push(Tag { name, attrs });
    }
    out
}

/// The text of the element whose start tag holds `marker`, up to its first child tag.
fn text_after<'a>(html: &'a str, marker: &str) -> &'a str {
    let Some(at) = html.find(marker) else { return "" };
    let rest = &html[at..];
    let start = rest.find('>').map(|e| e + 1).unwrap_or(rest.len());
    let end = rest[start..].find('<').map(|e| start + e).unwrap_or(rest.len());
    &rest[start..end]
}

/// The rendered replica element of `node` (`li.replica`), if any.
fn replica<'a>(tags: &'a [Tag], node: &str) -> Option<&'a Tag> {
    tags.iter().find(|t| {
        t.name == "li" && t.get("class").is_some_and(|c| c.split(' ').any(|c| c == "replica")) && t.get("data-node") == Some(node)
    })
}

fn state_of(dom: &str, node: &str) -> String {
    replica(&tags(dom), node).and_then(|t| t.get("data-state")).unwrap_or("(not rendered)").to_owned()
}

/// Dumps the page's DOM until `ok` holds for it or `limit` passes; the last DOM and whether it held.
async fn dump_until(url: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> (String, bool) {
    let deadline = Instant::now() + limit;
    loop {
        let dom = dump_dom(url).await;
        if ok(&dom) {
            return (dom, true);
        }
        if Instant::now() > deadline {
            return (dom, false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn cluster_status(c: &Cluster, i: usize) -> Value {
    let a = c.get_json(i, "/kv-store/cluster-status").await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs headless Chromium (Debian package chromium); .ci/run runs it"]
async fn chromium_renders_the_cluster_and_a_lagging_worker() {
    browser(); // fail at once, with the message, when there is none
    let c = Cluster::start(4, 2).await;
    assert_eq!(c.node_count(), 4);
    let mut ctx = json!({});
    for k in 0..8 {
        let a = c.put(0, &format!("key{k}"), json!(k), &ctx).await;
        assert!(a.status.is_success(), "{}", a.body);
        ctx = a.ctx();
    }
    let status = cluster_status(&c, 0).await;
    let shards = status["shards"].as_array().expect("shards").clone();
    assert_eq!(shards.len(), 2, "{status}");
    let url = c.nodes[0].url("/dashboard");

    // Every shard, every node with its role, all ok; the header and the tables.
    let all_ok = |dom: &str| {
        let tags = tags(dom);
        (0..c.node_count()).all(|i| replica(&tags, c.addr(i)).and_then(|t| t.get("data-state")) == Some("ok"))
    };
    let (dom, ok) = dump_until(&url, Duration::from_secs(30), all_ok).await;
    let t = tags(&dom);
    assert!(ok, "not every replica rendered ok:\n{dom}");
    let body = t.iter().find(|t| t.name == "body").expect("a body");
    assert_eq!(body.get("data-ready"), Some("true"), "the page rendered an answer");
    assert_eq!(body.get("data-stale"), Some("false"));
    for shard in &shards {
        let id = shard["shard-id"].to_string();
        assert!(t.iter().any(|t| t.name == "section" && t.get("data-shard") == Some(&id)), "no card for shard {id}");
        assert!(dom.contains(&format!(">Shard {id}<")), "shard {id} is not named");
        for r in shard["replicas"].as_array().expect("replicas") {
            let node = r["node"].as_str().expect("node");
            let row = replica(&t, node).unwrap_or_else(|| panic!("{node} not rendered"));
            assert_eq!(row.get("data-shard"), Some(id.as_str()), "{node}");
            assert_eq!(row.get("data-role"), r["role"].as_str(), "{node}");
        }
        let master = shard["master"].as_str().expect("master");
        assert_eq!(replica(&t, master).and_then(|r| r.get("data-role")), Some("master"));
    }
    for i in 0..c.node_count() {
        let node = c.addr(i);
        assert!(t.iter().any(|t| t.get("data-view-node") == Some(node)), "{node} missing from the view");
        assert!(t.iter().any(|t| t.get("data-node-rates") == Some(node)), "{node} missing from the request rates");
    }
    assert_eq!(text_after(&dom, "id=\"asked\""), c.addr(0));
    assert_eq!(text_after(&dom, "id=\"epoch\""), "0");
    assert_eq!(text_after(&dom, "id=\"rf\""), "2");
    assert!(t.iter().any(|t| t.get("data-view-change").is_some() && t.get("data-epoch") == Some("0")), "the installed view is not listed");
    assert!(t.iter().any(|t| t.get("data-op") == Some("put")), "node 0's answers from /metrics are not listed");
    for word in [">master<", ">worker<"] {
        assert!(dom.contains(word), "no {word} label");
    }

    // Freeze the worker of a shard the page's node does not serve, write to
    // that shard through its master: the worker is shown lagging.
    let shard = shards
        .iter()
        .find(|s| s["master"] != json!(c.addr(0)) && s["replicas"].as_array().unwrap().iter().all(|r| r["node"] != json!(c.addr(0))));
    let shard = shard.expect("a shard without node 0");
    let master = c.index_of(shard["master"].as_str().unwrap());
    let worker_addr =
        shard["replicas"].as_array().unwrap().iter().find(|r| r["role"] == "worker").expect("a worker")["node"].as_str().unwrap();
    let worker = c.index_of(worker_addr);
    c.nodes[worker].signal(libc::SIGSTOP);
    let mut landed = 0;
    for k in 0..200 {
        let a = c.put(master, &format!("lag{k}"), json!(k), &ctx).await;
        assert!(a.status.is_success(), "write through the master: {}", a.body);
        ctx = a.ctx();
        // No `address`: the master served it, so the key is of its shard.
        if a.address().is_none() {
            landed += 1;
            if landed == 10 {
                break;
            }
        }
    }
    assert_eq!(landed, 10, "10 of the writes went to the frozen worker's shard");
    let frozen_at = Instant::now();
    let (dom, lagging) = dump_until(&url, Duration::from_secs(15), |dom| state_of(dom, worker_addr) == "behind").await;
    let elapsed = frozen_at.elapsed();
    if !lagging {
        panic!(
            "{worker_addr} not shown behind within 15 s (state {}); cluster-status: {}",
            state_of(&dom, worker_addr),
            cluster_status(&c, 0).await
        );
    }
    eprintln!("frozen worker {worker_addr} shown as lagging {:.1} s after the writes", elapsed.as_secs_f64());
    let t = tags(&dom);
    let row = replica(&t, worker_addr).expect("the frozen worker's row");
    assert_eq!(row.get("data-lagging"), Some("true"));
    assert_eq!(row.get("data-role"), Some("worker"));
    assert!(dom.contains("lagging: "), "no visible lagging mark");
    let lag = t
        .iter()
        .find(|t| t.get("class") == Some("lag") && t.get("data-behind-writes").is_some_and(|w| w.parse::<u64>().is_ok_and(|w| w > 0)));
    assert!(lag.is_some(), "no positive lag in writes rendered");
    // Everything else stays ok.
    for i in (0..c.node_count()).filter(|i| *i != worker) {
        assert_eq!(state_of(&dom, c.addr(i)), "ok", "{}", c.addr(i));
    }

    let shot = target_dir().join("dashboard.png");
    let _ = std::fs::create_dir_all(target_dir());
    let _ = std::fs::remove_file(&shot);
    chromium(
        &["--hide-scrollbars", "--window-size=1280,1000", "--virtual-time-budget=3000", &format!("--screenshot={}", shot.display())],
        &url,
    )
    .await;
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} is not a screenshot", shot.display());
    eprintln!("screenshot of the lagging worker: {}", shot.display());

    // Resumed, it catches up and is shown ok again.
    c.nodes[worker].signal(libc::SIGCONT);
    let (dom, ok) = dump_until(&url, Duration::from_secs(30), all_ok).await;
    assert!(ok, "{worker_addr} did not return to ok (state {}): {}", state_of(&dom, worker_addr), cluster_status(&c, 0).await);
}
