//! The client subcommands of `causalkv` (`get`, `put`, `delete`, `shards`,
//! `status`, `view-change`, `join`) on top of [`causalkv::client`].
//!
//! `--session FILE` keeps the causal context between invocations (read
//! before, written after, atomically), so a shell user reads their own
//! writes across commands. Exit codes: 0 ok, 1 not found, 2 usage (bad
//! arguments or a request the cluster refused as invalid), 3 unavailable.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use causalkv::causal::CausalContext;
use causalkv::client::{Client, ClientTls, Error, Session};

pub const NOT_FOUND: u8 = 1;
pub const USAGE: u8 = 2;
pub const UNAVAILABLE: u8 = 3;

/// How to reach the cluster (every client subcommand takes these).
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Nodes to start from (`host:port` or URL), comma-separated; the rest is learned.
    #[arg(long, env = "CAUSALKV_NODES", default_value = "127.0.0.1:13800", value_name = "NODES")]
    nodes: String,
    /// File that keeps this shell's causal context between commands.
    #[arg(long, env = "CAUSALKV_SESSION", value_name = "FILE")]
    session: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Bearer token for view-change and join.
    #[arg(long, env = "CAUSALKV_ADMIN_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// CA certificate (PEM) of a cluster that speaks TLS.
    #[arg(long, env = "CAUSALKV_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for nodes that require one.
    #[arg(long, env = "CAUSALKV_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "CAUSALKV_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How long to keep retrying an unavailable cluster, in seconds.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    retry_for: f64,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Prints a key's value (JSON); several keys are read from one causally
    /// consistent cut (`key: value` lines, absent keys as `key: (absent)`).
    Get {
        #[arg(required = true, num_args = 1..)]
        keys: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Writes a key: VALUE is JSON (`'"text"'`, `42`, `'{"a": 1}'`), or text with --string.
    Put {
        key: String,
        value: String,
        /// Store VALUE as a JSON string, as it is.
        #[arg(long)]
        string: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deletes a key.
    Delete {
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lists the shards: master, replicas, key count.
    Shards {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every node: shard, role, state, epoch, replication lag, key count.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Changes the view (all-or-nothing): `--view a:1,b:2,...` and optionally `--repl-factor`.
    ViewChange {
        #[arg(long, value_delimiter = ',', required = true)]
        view: Vec<String>,
        #[arg(long)]
        repl_factor: Option<usize>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Adds one node to the view.
    Join {
        #[arg(long)]
        node_id: String,
        #[arg(long)]
        node_addr: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

impl ClientCommand {
    fn client_args(&self) -> &ClientArgs {
        match self {
            ClientCommand::Get { client, .. }
            | ClientCommand::Put { client, .. }
            | ClientCommand::Delete { client, .. }
            | ClientCommand::Shards { client }
            | ClientCommand::Status { client }
            | ClientCommand::ViewChange { client, .. }
            | ClientCommand::Join { client, .. } => client,
        }
    }
}

pub fn run(command: ClientCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("causalkv: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(&command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("causalkv: {e}");
            ExitCode::from(match e {
                Error::Config(_) | Error::Rejected { .. } | Error::Unauthorized { .. } | Error::Value(_) | Error::Tls(_) => USAGE,
                _ => UNAVAILABLE,
            })
        }
    }
}

fn connect(args: &ClientArgs) -> Result<Client, Error> {
    if !(args.retry_for.is_finite() && args.retry_for >= 0.0 && args.retry_for <= 3600.0) {
        return Err(Error::Config("--retry-for takes 0 to 3600 seconds".into()));
    }
    let mut builder = Client::builder([args.nodes.as_str()]).retry_budget(Duration::from_secs_f64(args.retry_for));
    if let Some(token) = &args.admin_token {
        builder = builder.admin_token(token);
    }
    if let Some(ca) = &args.tls_ca {
        let identity = args.tls_cert.clone().zip(args.tls_key.clone());
        builder = builder.tls(ClientTls { ca: ca.clone(), identity });
    }
    builder.build()
}

fn load_session(client: &Client, file: Option<&Path>) -> Result<Session, Error> {
    let Some(file) = file else { return Ok(client.session()) };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(client.session()),
        Err(e) => return Err(Error::Config(format!("session file {}: {e}", file.display()))),
    };
    let value: Value = serde_json::from_str(&text).map_err(|e| Error::Config(format!("session file {}: {e}", file.display())))?;
    let ctx = CausalContext::from_json(&value).map_err(|e| Error::Config(format!("session file {}: {e}", file.display())))?;
    Ok(client.session_from(ctx))
}

/// Writes the session's context next to `file`, then renames it over it.
fn save_session(session: &Session, file: Option<&Path>) -> Result<(), Error> {
    let Some(file) = file else { return Ok(()) };
    let text = serde_json::to_string(&session.context().to_json())?;
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, file))
        .map_err(|e| Error::Config(format!("session file {}: {e}", file.display())))
}

async fn execute(command: &ClientCommand) -> Result<u8, Error> {
    let args = command.client_args();
    let client = connect(args)?;
    let session_file = args.session.as_deref();
    let session = load_session(&client, session_file)?;
    let code = match command {
        ClientCommand::Get { keys, .. } if keys.len() > 1 => {
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let values = session.get_many(&refs).await?;
            if args.json {
                let mut map = serde_json::Map::new();
                for (key, value) in &values {
                    let v = match value {
                        Some(raw) => serde_json::from_str::<Value>(raw.get())?,
                        None => Value::Null,
                    };
                    map.insert(key.clone(), v);
                }
                println!("{}", json!({"values": map}));
            } else {
                for (key, value) in &values {
                    println!("{key}: {}", value.as_ref().map_or("(absent)", |v| v.get()));
                }
            }
            0
        }
        ClientCommand::Get { keys, .. } => match session.get_raw(&keys[0]).await? {
            Some(v) if args.json => {
                println!("{}", json!({"key": keys[0], "found": true, "value": serde_json::from_str::<Value>(v.get())?}));
                0
            }
            Some(v) => {
                println!("{}", v.get());
                0
            }
            None if args.json => {
                println!("{}", json!({"key": keys[0], "found": false}));
                NOT_FOUND
            }
            None => {
                eprintln!("not found: {}", keys[0]);
                NOT_FOUND
            }
        },
        ClientCommand::Put { key, value, string, .. } => {
            let raw = if *string {
                serde_json::value::to_raw_value(value)?
            } else {
                serde_json::value::RawValue::from_string(value.clone())
                    .map_err(|e| Error::Config(format!("VALUE is not JSON ({e}); use --string to store it as text")))?
            };
            let written = session.put_raw(key, &raw).await?;
            if args.json {
                println!("{}", json!({"key": key, "created": written.created, "served-by": written.served_by}));
            } else {
                println!("{} {key}", if written.created { "created" } else { "updated" });
            }
            0
        }
        ClientCommand::Delete { key, .. } => {
            let deleted = session.delete(key).await?;
            match (deleted, args.json) {
                (d, true) => println!("{}", json!({"key": key, "deleted": d})),
                (true, false) => println!("deleted {key}"),
                (false, false) => eprintln!("not found: {key}"),
            }
            if deleted { 0 } else { NOT_FOUND }
        }
        ClientCommand::Shards { .. } => {
            let shards = client.shards().await?;
            if args.json {
                let list: Vec<Value> = shards
                    .iter()
                    .map(|s| json!({"shard-id": s.id, "master": s.master, "replicas": s.replicas, "key-count": s.key_count}))
                    .collect();
                println!("{}", Value::from(list));
            } else {
                let rows =
                    shards.iter().map(|s| vec![s.id.to_string(), s.master.clone(), s.replicas.join(","), count(s.key_count)]).collect();
                print_table(&["SHARD", "MASTER", "REPLICAS", "KEYS"], rows);
            }
            0
        }
        ClientCommand::Status { .. } => {
            let status = client.status().await?;
            if args.json {
                println!("{}", serde_json::to_value(&status)?);
            } else {
                let mut rows = Vec::new();
                for shard in &status.shards {
                    for r in &shard.replicas {
                        let behind = match (r.role.as_str(), r.behind_writes, r.behind_ms) {
                            ("master", _, _) => "-".to_owned(),
                            (_, Some(w), Some(ms)) => format!("{w} writes / {ms} ms"),
                            (_, Some(w), None) => format!("{w} writes"),
                            _ => "?".to_owned(),
                        };
                        let epoch = r.epoch.map(|e| e.to_string()).unwrap_or_else(|| "?".into());
                        rows.push(vec![
                            r.node.clone(),
                            shard.shard_id.to_string(),
                            r.role.clone(),
                            r.state.clone(),
                            epoch,
                            behind,
                            count(r.key_count),
                        ]);
                    }
                }
                print_table(&["NODE", "SHARD", "ROLE", "STATE", "EPOCH", "BEHIND", "KEYS"], rows);
            }
            0
        }
        ClientCommand::ViewChange { view, repl_factor, .. } => {
            let shards = client.view_change(view, *repl_factor).await?;
            if args.json {
                println!("{shards}");
            } else {
                println!("view changed: {} nodes", view.len());
                for shard in shards.as_array().into_iter().flatten() {
                    let replicas: Vec<&str> = shard["replicas"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    println!("shard {}: {} ({} keys)", shard["shard-id"], replicas.join(","), shard["key-count"]);
                }
            }
            0
        }
        ClientCommand::Join { node_id, node_addr, .. } => {
            let answer = client.join(node_id, node_addr).await?;
            if args.json {
                println!("{answer}");
            } else {
                println!("{node_addr} joined");
            }
            0
        }
    };
    save_session(&session, session_file)?;
    Ok(code)
}

fn count(n: Option<u64>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "?".into())
}

/// Left-aligned columns, two spaces apart.
fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}
