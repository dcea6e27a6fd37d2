//! Protocol scenarios on the in-process simulator (`causalkv::sim`): each one
//! scripts a cluster — crash, cut off, heal, change the view — and checks
//! what the nodes' stores and answers show, in virtual time, with no process,
//! port or wall-clock sleep. Each runs the same way every time (one seed).

use std::sync::Arc;
use std::time::Duration;

use causalkv::causal::CausalContext;
use causalkv::node::kv::{KvAnswer, KvErrorKind, KvOp, KvOutcome};
use causalkv::shard::{ShardMap, View};
use causalkv::sim::{SimCluster, SimConfig, run_scenario};

fn config(nodes: usize, repl_factor: usize, faults: &[&str]) -> SimConfig {
    SimConfig { nodes, repl_factor, faults: faults.iter().map(|f| f.to_string()).collect(), ..SimConfig::default() }
}

/// The replicas (master first) of the shard of `key` under `view`.
fn replicas_of(view: &View, key: &str) -> Vec<String> {
    let map = ShardMap::new(view.clone(), "");
    map.replicas(map.shard_of(key)).to_vec()
}

/// A key whose shard does not contain `outside` (with `prefix`).
fn key_outside(view: &View, outside: &str, prefix: &str) -> String {
    (0..1000).map(|i| format!("{prefix}{i}")).find(|k| !replicas_of(view, k).iter().any(|r| r == outside)).expect("a key of another shard")
}

/// The value `address`'s store holds for `key` (`None`: absent or deleted).
fn stored(c: &SimCluster, address: &str, key: &str) -> Option<String> {
    let record = c.node(address)?.store.get(key).ok()??;
    let value = record.value?;
    serde_json::from_str(value.get()).ok()
}

/// Whether `address`'s store still holds a record (live or tombstone) for `key`.
fn has_record(c: &SimCluster, address: &str, key: &str) -> bool {
    c.node(address).is_some_and(|n| n.store.get(key).ok().flatten().is_some())
}

fn ok(answer: Option<KvAnswer>) -> (KvOutcome, CausalContext, Option<String>) {
    match answer {
        Some(KvAnswer::Reply(r)) => (r.outcome, r.context, r.served_by),
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn a_crashed_master_hands_its_writes_to_the_worker() {
    run_scenario(config(4, 2, &[]), 1, |c: Arc<SimCluster>| async move {
        let view = c.current_view();
        let entry = c.addresses[0].clone();
        let key = key_outside(&view, &entry, "fo");
        let (master, worker) = {
            let r = replicas_of(&view, &key);
            (r[0].clone(), r[1].clone())
        };
        let (_, ctx, served) = ok(c.request(&entry, KvOp::Put, &key, Some("v0"), &CausalContext::default()).await);
        assert_eq!(served.as_deref(), Some(master.as_str()), "the master takes writes while it is up");
        c.crash(&master);
        // The failure detector suspects a silent peer after 1 s.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (outcome, ctx, served) = ok(c.request(&entry, KvOp::Put, &key, Some("v1"), &ctx).await);
        assert!(matches!(outcome, KvOutcome::Updated), "{outcome:?}");
        assert_eq!(served.as_deref(), Some(worker.as_str()), "the worker took the write");
        c.start(&master);
        let caught_up = c.wait_until(Duration::from_secs(10), || stored(&c, &master, &key).as_deref() == Some("v1")).await;
        assert!(caught_up, "the restarted master never got the write its worker took");
        let (outcome, _, _) = ok(c.request(&entry, KvOp::Get, &key, None, &ctx).await);
        assert!(matches!(&outcome, KvOutcome::Found(v) if v.get() == "\"v1\""), "{outcome:?}");
    });
}

#[test]
fn anti_entropy_relays_the_writes_of_a_dead_origin() {
    run_scenario(config(3, 3, &[]), 2, |c: Arc<SimCluster>| async move {
        let view = c.current_view();
        let r = replicas_of(&view, "relay");
        let (master, w1, w2) = (r[0].clone(), r[1].clone(), r[2].clone());
        // w2 hears nothing from the master; w1 does.
        c.net.cut(&master, &w2);
        let (_, _, served) = ok(c.request(&master, KvOp::Put, "relay", Some("r1"), &CausalContext::default()).await);
        assert_eq!(served.as_deref(), Some(master.as_str()), "served by the node asked");
        assert!(c.wait_until(Duration::from_secs(5), || stored(&c, &w1, "relay").as_deref() == Some("r1")).await);
        assert_eq!(stored(&c, &w2, "relay"), None, "w2 cannot have it yet: it is cut off from the origin");
        // The origin dies before w2 ever hears from it.
        c.crash(&master);
        c.net.heal_all();
        let relayed = c.wait_until(Duration::from_secs(10), || stored(&c, &w2, "relay").as_deref() == Some("r1")).await;
        assert!(relayed, "anti-entropy did not bring the dead origin's write from w1 to w2");
    });
}

#[test]
fn a_deleted_key_is_purged_only_once_every_replica_has_the_delete() {
    run_scenario(config(2, 2, &[]), 3, |c: Arc<SimCluster>| async move {
        let (a, b) = (c.addresses[0].clone(), c.addresses[1].clone());
        let (_, ctx, _) = ok(c.request(&a, KvOp::Put, "gone", Some("v"), &CausalContext::default()).await);
        assert!(c.wait_until(Duration::from_secs(5), || stored(&c, &b, "gone").is_some()).await);
        c.net.cut(&a, &b);
        let master = replicas_of(&c.current_view(), "gone")[0].clone();
        let (outcome, _, _) = ok(c.request(&master, KvOp::Delete, "gone", None, &ctx).await);
        assert!(matches!(outcome, KvOutcome::Deleted), "{outcome:?}");
        // Several compaction rounds while the other replica is away: the
        // tombstone must stay, or the away replica would bring the key back.
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(has_record(&c, &master, "gone"), "the tombstone was purged before every replica applied it");
        c.net.heal_all();
        let other = if master == a { b.clone() } else { a.clone() };
        assert!(
            c.wait_until(Duration::from_secs(10), || stored(&c, &other, "gone").is_none()).await,
            "the delete never reached the other replica"
        );
        let purged = c.wait_until(Duration::from_secs(20), || !has_record(&c, &a, "gone") && !has_record(&c, &b, "gone")).await;
        assert!(purged, "the tombstone was never purged once both replicas had it");
        for node in [&a, &b] {
            let answer = c.request(node, KvOp::Get, "gone", None, &CausalContext::default()).await;
            assert!(matches!(answer, Some(KvAnswer::Error(ref e)) if matches!(e.kind, KvErrorKind::NotFound)), "{answer:?}");
        }
    });
}

#[test]
fn a_view_change_adds_a_node_and_moves_its_keys_to_it() {
    // Three nodes in the view, RF 1, and a spare outside it.
    run_scenario(config(3, 1, &["viewchange"]), 4, |c: Arc<SimCluster>| async move {
        let spare = c.addresses[3].clone();
        let old = c.current_view();
        let keys: Vec<String> = (0..40).map(|i| format!("vc{i}")).collect();
        let mut ctx = CausalContext::default();
        for (i, key) in keys.iter().enumerate() {
            let via = &c.addresses[i % 4];
            let (_, next, _) = ok(c.request(via, KvOp::Put, key, Some(&format!("val-{i}")), &ctx).await);
            ctx = next;
        }
        let new = View::new(c.addresses.clone(), 1, old.epoch + 1).expect("a view");
        let coordinator = c.node(&c.addresses[0]).expect("up");
        let result = coordinator.change_view(new.clone()).await;
        assert!(result.is_ok(), "the view change failed: {:?}", result.err());
        let all_moved =
            c.wait_until(Duration::from_secs(10), || c.addresses.iter().all(|a| c.node(a).is_some_and(|n| n.epoch() == new.epoch))).await;
        assert!(all_moved, "not every node entered the new epoch");
        let gained: Vec<&String> = keys.iter().filter(|k| replicas_of(&new, k) == [spare.clone()]).collect();
        assert!(!gained.is_empty(), "the new node owns none of 40 keys");
        for (i, key) in keys.iter().enumerate() {
            let owner = &replicas_of(&new, key)[0];
            assert_eq!(stored(&c, owner, key), Some(format!("val-{i}")), "{key} at its new owner {owner}");
            let (outcome, _, _) = ok(c.request(&c.addresses[(i + 1) % 4], KvOp::Get, key, None, &ctx).await);
            assert!(matches!(&outcome, KvOutcome::Found(v) if v.get() == format!("\"val-{i}\"")), "{key}: {outcome:?}");
        }
        // Nodes keep only what they own under the new view.
        for key in &gained {
            for other in c.addresses.iter().filter(|a| **a != spare) {
                assert!(!has_record(&c, other, key), "{other} kept {key}, which moved to {spare}");
            }
        }
    });
}

/// A node takes a replication stream only from a replica of its own shard
/// that the fault switches do not cut off; a newer stream from the same
/// sender replaces the older one (the master then opens a new one, which
/// carries its next write to the worker).
#[test]
fn streams_are_admitted_only_from_the_shard_and_carry_the_writes() {
    use causalkv::faults::FaultSet;
    use causalkv::node::StreamRefusal;
    use causalkv::sim::SimReplication;
    let config = SimConfig { replication: SimReplication::Stream, ..config(4, 2, &[]) };
    run_scenario(config, 3, |c: Arc<SimCluster>| async move {
        let view = c.current_view();
        let key = "streamed";
        let (master, worker) = {
            let r = replicas_of(&view, key);
            (r[0].clone(), r[1].clone())
        };
        let outsider = c.addresses[..4].iter().find(|a| **a != master && **a != worker).expect("a node of the other shard").clone();
        let node = c.node(&worker).expect("the worker is up");
        assert_eq!(node.admit_stream(&outsider), Err(StreamRefusal::NotInShard));
        let older = node.admit_stream(&master).expect("the master may stream to its worker");
        let newer = node.admit_stream(&master).expect("and again");
        assert!(!node.streams.is_current(&master, older) && node.streams.is_current(&master, newer), "the newer stream replaces the older");
        node.faults.replace(FaultSet { blocked: [master.clone()].into(), ..FaultSet::default() });
        assert_eq!(node.admit_stream(&master), Err(StreamRefusal::Blocked));
        node.faults.replace(FaultSet::default());

        // The stream the master opened at start is no longer the current
        // one: the worker refuses its next frame, and the master opens anew.
        let opened = || c.node(&master).map_or(0, |n| n.metrics.replication_streams_opened.get());
        assert_eq!(opened(), 1, "one stream from the master to its only peer");
        let reopened = c.wait_until(Duration::from_secs(5), || opened() >= 2).await;
        assert!(reopened, "the master kept a stream its worker no longer takes");
        ok(c.request(&master, KvOp::Put, key, Some("v1"), &CausalContext::default()).await);
        let arrived = c.wait_until(Duration::from_secs(5), || stored(&c, &worker, key).as_deref() == Some("v1")).await;
        assert!(arrived, "the write never reached the worker");
    });
}
