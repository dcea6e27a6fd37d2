//! Schema checks of the deployment files (no cluster needed): every YAML
//! document in deploy/kubernetes (StatefulSet, headless Service, PDB) and
//! docker/compose.yaml, plus the Dockerfile's essentials. They catch the
//! mistakes that would only show on a real cluster: a VIEW that does not
//! match the pods' DNS names, a PDB that selects nothing, duplicate
//! addresses, mismatched secrets or ports.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_norway::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every YAML document of a file (empty documents skipped).
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
        let mut value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{} document {i}: {e}", path.display()));
        value.apply_merge().unwrap_or_else(|e| panic!("{} document {i}: merge keys: {e}", path.display()));
        if !value.is_null() {
            docs.push(value);
        }
    }
    docs
}

/// `v[a][b]...`, panicking with the path when a step is missing.
#[track_caller]
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for (i, step) in path.iter().enumerate() {
        cur = cur.get(*step).unwrap_or_else(|| panic!("missing {} in {}", path[..=i].join("."), describe(v)));
    }
    cur
}

#[track_caller]
fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).as_str().unwrap_or_else(|| panic!("{} is not a string in {}", path.join("."), describe(v)))
}

#[track_caller]
fn list<'a>(v: &'a Value, path: &[&str]) -> &'a Vec<Value> {
    at(v, path).as_sequence().unwrap_or_else(|| panic!("{} is not a list in {}", path.join("."), describe(v)))
}

fn describe(v: &Value) -> String {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("?");
    let name = v.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("?");
    format!("{kind}/{name}")
}

/// A YAML scalar as text (compose allows numbers where strings are meant).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping().map(|m| m.iter().filter_map(|(k, v)| Some((k.as_str()?.to_string(), scalar(v)?))).collect()).unwrap_or_default()
}

/// `sub` ⊆ `labels`, and `sub` not empty.
fn selects(sub: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !sub.is_empty() && sub.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// ------------------------------------------------------------ kubernetes --

fn kubernetes_documents() -> Vec<Value> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML in {}", dir.display());
    files.iter().flat_map(|f| documents(f)).collect()
}

#[test]
fn every_kubernetes_document_has_the_common_fields() {
    let docs = kubernetes_documents();
    let mut seen = BTreeSet::new();
    for doc in &docs {
        let api = text(doc, &["apiVersion"]);
        let kind = text(doc, &["kind"]);
        let name = text(doc, &["metadata", "name"]);
        assert!(!api.is_empty() && !kind.is_empty(), "{}", describe(doc));
        assert!(
            !name.is_empty() && name.len() <= 63 && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{kind} name {name:?} is not a DNS-1123 label"
        );
        let expected_api = match kind {
            "StatefulSet" => "apps/v1",
            "Service" => "v1",
            "PodDisruptionBudget" => "policy/v1",
            other => panic!("unexpected kind {other} in deploy/kubernetes"),
        };
        assert_eq!(api, expected_api, "apiVersion of {}", describe(doc));
        assert!(seen.insert((kind.to_string(), name.to_string())), "{kind}/{name} defined twice");
        assert!(doc.get("spec").is_some_and(Value::is_mapping), "{} has no spec", describe(doc));
    }
    for kind in ["StatefulSet", "Service", "PodDisruptionBudget"] {
        assert!(seen.iter().any(|(k, _)| k == kind), "no {kind} in deploy/kubernetes");
    }
}

fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d.get("kind").and_then(Value::as_str) == Some(kind)).collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0]
}

#[test]
fn statefulset_view_is_built_from_the_pods_stable_names() {
    let docs = kubernetes_documents();
    let sts = only(&docs, "StatefulSet");
    let name = text(sts, &["metadata", "name"]);
    let service_name = text(sts, &["spec", "serviceName"]);
    let replicas = at(sts, &["spec", "replicas"]).as_u64().expect("spec.replicas is an integer");
    assert!(replicas >= 2, "replicas {replicas}");

    // The governing Service exists and is headless.
    let headless = docs
        .iter()
        .find(|d| d.get("kind").and_then(Value::as_str) == Some("Service") && text(d, &["metadata", "name"]) == service_name)
        .unwrap_or_else(|| panic!("no Service named {service_name} (the StatefulSet's serviceName)"));
    assert_eq!(text(headless, &["spec", "clusterIP"]), "None", "the governing Service must be headless");
    assert_eq!(
        at(headless, &["spec", "publishNotReadyAddresses"]).as_bool(),
        Some(true),
        "peers must resolve each other before they are ready"
    );

    // Selector, pod labels, and every Service and PDB selecting the pods.
    let pod_labels = string_map(at(sts, &["spec", "template", "metadata", "labels"]));
    assert!(selects(&string_map(at(sts, &["spec", "selector", "matchLabels"])), &pod_labels), "selector vs pod labels");
    for svc in docs.iter().filter(|d| d.get("kind").and_then(Value::as_str) == Some("Service")) {
        assert!(selects(&string_map(at(svc, &["spec", "selector"])), &pod_labels), "{} selects no pod", describe(svc));
    }
    let pdb = only(&docs, "PodDisruptionBudget");
    assert!(selects(&string_map(at(pdb, &["spec", "selector", "matchLabels"])), &pod_labels), "the PDB selects no pod");
    let spec = at(pdb, &["spec"]);
    assert!(
        spec.get("maxUnavailable").is_some() != spec.get("minAvailable").is_some(),
        "the PDB sets one of maxUnavailable / minAvailable"
    );

    // The container.
    let containers = list(sts, &["spec", "template", "spec", "containers"]);
    let c = containers.iter().find(|c| c.get("name").and_then(Value::as_str) == Some("causalkv")).expect("a causalkv container");
    let image = text(c, &["image"]);
    assert!(image.starts_with("causalkv:") && image.len() > "causalkv:".len(), "image {image}");
    let ports = list(c, &["ports"]);
    let http = ports.iter().find(|p| p.get("name").and_then(Value::as_str) == Some("http")).expect("a port named http");
    let port = at(http, &["containerPort"]).as_u64().expect("containerPort is an integer");
    for svc in docs.iter().filter(|d| d.get("kind").and_then(Value::as_str) == Some("Service")) {
        for p in list(svc, &["spec", "ports"]) {
            let target = at(p, &["targetPort"]);
            assert!(target.as_str() == Some("http") || target.as_u64() == Some(port), "{} targets {target:?}", describe(svc));
        }
    }

    // Environment: every $(VAR) is defined before use; names are unique.
    let mut env: BTreeMap<String, Value> = BTreeMap::new();
    for e in list(c, &["env"]) {
        let var = text(e, &["name"]).to_string();
        if let Some(value) = e.get("value") {
            let value = value.as_str().unwrap_or_else(|| panic!("env {var}: value must be a string"));
            let mut rest = value;
            while let Some(i) = rest.find("$(") {
                let end = rest[i..].find(')').unwrap_or_else(|| panic!("env {var}: unclosed $( in {value}"));
                let used = &rest[i + 2..i + end];
                assert!(env.contains_key(used), "env {var} uses $({used}) before it is defined");
                rest = &rest[i + end..];
            }
        } else {
            assert!(e.get("valueFrom").is_some(), "env {var} has neither value nor valueFrom");
        }
        assert!(env.insert(var.clone(), e.clone()).is_none(), "env {var} defined twice");
    }
    let value = |var: &str| -> String {
        env.get(var).and_then(|e| e.get("value")).and_then(Value::as_str).unwrap_or_else(|| panic!("env {var} missing")).to_string()
    };
    assert_eq!(text(&env["POD_NAME"], &["valueFrom", "fieldRef", "fieldPath"]), "metadata.name");
    assert_eq!(text(&env["POD_NAMESPACE"], &["valueFrom", "fieldRef", "fieldPath"]), "metadata.namespace");
    let address = value("ADDRESS");
    assert!(address.starts_with("$(POD_NAME).") && address.ends_with(&format!(":{port}")), "ADDRESS {address}");
    assert!(address.contains(&format!(".{service_name}.")), "ADDRESS {address} is not under the headless Service");
    let view: Vec<String> = value("VIEW").split(',').map(str::to_string).collect();
    assert_eq!(view.len() as u64, replicas, "VIEW lists every pod");
    for (i, entry) in view.iter().enumerate() {
        assert_eq!(*entry, address.replace("$(POD_NAME)", &format!("{name}-{i}")), "VIEW entry {i} is pod {name}-{i}'s ADDRESS");
    }
    let rf: u64 = value("REPL_FACTOR").parse().expect("REPL_FACTOR is an integer");
    assert!(rf >= 1 && rf <= replicas && replicas.is_multiple_of(rf), "REPL_FACTOR {rf} for {replicas} pods");
    if let Some(p) = env.get("PORT").and_then(|e| e.get("value")).and_then(Value::as_str) {
        assert_eq!(p, port.to_string(), "PORT is the container port");
    }
    assert!(at(&env["CLUSTER_KEY"], &["valueFrom", "secretKeyRef", "name"]).is_string(), "CLUSTER_KEY comes from a Secret");

    // Storage: a claim template mounted at DATA_DIR.
    let claims = list(sts, &["spec", "volumeClaimTemplates"]);
    assert!(!claims.is_empty(), "volumeClaimTemplates");
    let mounts = list(c, &["volumeMounts"]);
    for claim in claims {
        let claim_name = text(claim, &["metadata", "name"]);
        let mount = mounts
            .iter()
            .find(|m| m.get("name").and_then(Value::as_str) == Some(claim_name))
            .unwrap_or_else(|| panic!("claim {claim_name} is not mounted"));
        assert_eq!(text(mount, &["mountPath"]), value("DATA_DIR"), "the claim is the data directory");
        assert!(text(claim, &["spec", "resources", "requests", "storage"]).ends_with('i'), "storage request");
        assert!(!list(claim, &["spec", "accessModes"]).is_empty());
    }

    // Probes on the node's own endpoints; the non-root user of the image.
    assert_eq!(text(c, &["readinessProbe", "httpGet", "path"]), "/ready");
    assert_eq!(text(c, &["livenessProbe", "httpGet", "path"]), "/health");
    let pod_security = at(sts, &["spec", "template", "spec", "securityContext"]);
    assert_eq!(at(pod_security, &["runAsUser"]).as_u64(), Some(10001));
    assert_eq!(at(pod_security, &["runAsNonRoot"]).as_bool(), Some(true));
}

// --------------------------------------------------------------- compose --

struct Service {
    name: String,
    profiles: Vec<String>,
    env: BTreeMap<String, String>,
    ip: Ipv4Addr,
    host_port: u16,
    volume: String,
}

fn compose() -> (Value, Vec<Service>) {
    let docs = documents(&root().join("docker/compose.yaml"));
    assert_eq!(docs.len(), 1, "one document");
    let doc = docs.into_iter().next().expect("a document");
    let mut services = Vec::new();
    for (name, svc) in at(&doc, &["services"]).as_mapping().expect("services is a mapping") {
        let name = name.as_str().expect("service name").to_string();
        assert!(text(svc, &["image"]).starts_with("causalkv:"), "{name}: image");
        let profiles = svc.get("profiles").and_then(Value::as_sequence).map(|p| p.iter().filter_map(scalar).collect()).unwrap_or_default();
        let env = string_map(at(svc, &["environment"]));
        let networks = at(svc, &["networks"]).as_mapping().expect("networks is a mapping");
        assert_eq!(networks.len(), 1, "{name}: one network");
        let ip = text(svc, &["networks", "cluster", "ipv4_address"]).parse().unwrap_or_else(|e| panic!("{name}: ipv4_address: {e}"));
        let ports = list(svc, &["ports"]);
        assert_eq!(ports.len(), 1, "{name}: one published port");
        let spec = scalar(&ports[0]).expect("port as text");
        let parts: Vec<&str> = spec.split(':').collect();
        assert!(parts.len() >= 2, "{name}: port {spec}");
        assert_eq!(parts[parts.len() - 1], "13800", "{name}: container port");
        let host_port = parts[parts.len() - 2].parse().unwrap_or_else(|e| panic!("{name}: host port in {spec}: {e}"));
        let volumes = list(svc, &["volumes"]);
        let data: Vec<String> = volumes.iter().filter_map(scalar).filter(|v| v.ends_with(":/data")).collect();
        assert_eq!(data.len(), 1, "{name}: one volume at /data");
        let volume = data[0].trim_end_matches(":/data").to_string();
        let test = list(svc, &["healthcheck", "test"]).iter().filter_map(scalar).collect::<Vec<_>>().join(" ");
        assert!(test.contains("/causalkv probe"), "{name}: healthcheck {test}");
        services.push(Service { name, profiles, env, ip, host_port, volume });
    }
    (doc, services)
}

#[test]
fn compose_runs_six_nodes_in_three_shards_named_in_view() {
    let (doc, services) = compose();
    let default: Vec<&Service> = services.iter().filter(|s| s.profiles.is_empty()).collect();
    assert_eq!(default.len(), 6, "6 services start by default");

    // One VIEW everywhere, listing the 6 default services by name, in order.
    let view = &default[0].env["VIEW"];
    let expected: Vec<String> = default.iter().map(|s| format!("{}:13800", s.name)).collect();
    assert_eq!(view.split(',').collect::<Vec<_>>(), expected, "VIEW names the services");
    for s in &services {
        assert_eq!(&s.env["VIEW"], view, "{}: VIEW", s.name);
        assert_eq!(s.env["ADDRESS"], format!("{}:13800", s.name), "{}: ADDRESS is its own name", s.name);
        assert_eq!(s.env["REPL_FACTOR"], "2", "{}: REPL_FACTOR", s.name);
        assert_eq!(s.env.get("CLUSTER_KEY"), default[0].env.get("CLUSTER_KEY"), "{}: the same CLUSTER_KEY", s.name);
    }
    assert!(default[0].env.get("CLUSTER_KEY").is_some_and(|k| !k.is_empty()), "a CLUSTER_KEY is set");
    assert_eq!(default.len() / 2, 3, "3 shards of 2");

    // Fixed addresses: unique, inside the subnet, not its network, gateway or broadcast address.
    let subnets = list(&doc, &["networks", "cluster", "ipam", "config"]);
    let subnet = text(&subnets[0], &["subnet"]);
    let (base, bits) = subnet.split_once('/').expect("subnet a.b.c.d/n");
    let base: Ipv4Addr = base.parse().expect("subnet address");
    let bits: u32 = bits.parse().expect("prefix length");
    assert!((8..=30).contains(&bits), "prefix /{bits}");
    let mask = u32::MAX << (32 - bits);
    assert_eq!(u32::from(base) & !mask, 0, "subnet {subnet} is a network address");
    let mut ips = BTreeSet::new();
    for s in &services {
        let ip = u32::from(s.ip);
        assert_eq!(ip & mask, u32::from(base), "{}: {} outside {subnet}", s.name, s.ip);
        let host = ip & !mask;
        assert!(host > 1 && host < !mask, "{}: {} is the network, gateway or broadcast address", s.name, s.ip);
        assert!(ips.insert(s.ip), "{}: address {} used twice", s.name, s.ip);
    }

    // Host ports 13800-13805 for the default services (13806+ for the others).
    let ports: BTreeSet<u16> = default.iter().map(|s| s.host_port).collect();
    assert_eq!(ports, (13800..=13805).collect(), "host ports");
    let all_ports: BTreeSet<u16> = services.iter().map(|s| s.host_port).collect();
    assert_eq!(all_ports.len(), services.len(), "host ports are unique");

    // Named volumes, one per service, all declared.
    let declared: BTreeSet<String> =
        at(&doc, &["volumes"]).as_mapping().expect("volumes").keys().filter_map(|k| k.as_str().map(String::from)).collect();
    let used: BTreeSet<String> = services.iter().map(|s| s.volume.clone()).collect();
    assert_eq!(used.len(), services.len(), "one volume per service");
    assert!(used.is_subset(&declared), "volumes {used:?} declared in {declared:?}");
}

#[test]
fn dockerfile_is_scratch_non_root_and_self_probing() {
    let dockerfile = std::fs::read_to_string(root().join("docker/Dockerfile")).expect("docker/Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    assert!(lines.contains(&"FROM scratch"), "FROM scratch (no registry to pull a base from)");
    for needed in
        ["USER 10001:10001", "EXPOSE 13800", "STOPSIGNAL SIGTERM", "VOLUME", "HEALTHCHECK", "ENTRYPOINT", "COPY --chown=10001:10001"]
    {
        assert!(has(needed), "Dockerfile lacks {needed}");
    }
    assert!(dockerfile.contains("probe"), "the HEALTHCHECK uses the binary's own probe");
    let passwd = std::fs::read_to_string(root().join("docker/passwd")).expect("docker/passwd");
    assert!(passwd.lines().any(|l| l.split(':').nth(2) == Some("10001")), "the user 10001 exists");
    let group = std::fs::read_to_string(root().join("docker/group")).expect("docker/group");
    assert!(group.lines().any(|l| l.split(':').nth(2) == Some("10001")), "the group 10001 exists");
}
