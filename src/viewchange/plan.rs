//! Pure parts of a view change: reading the requested view, and deciding
//! which nodes must receive a key (only nodes that gain the key).

use serde_json::Value;

use crate::shard::{ShardMap, View, ViewError};

/// Reads `view` given as a JSON array of addresses or one comma-separated
/// string, and `repl-factor` (absent: `current_repl_factor`, as clients of
/// the course API expect).
pub fn requested_view(
    view: Option<&Value>,
    repl_factor: Option<&Value>,
    current_repl_factor: usize,
    epoch: u64,
) -> Result<View, ViewError> {
    let nodes: Vec<String> = match view {
        Some(Value::Array(items)) => {
            let mut nodes = Vec::with_capacity(items.len());
            for item in items {
                let s = item.as_str().ok_or_else(|| ViewError::BadAddress(item.to_string()))?;
                nodes.push(s.to_owned());
            }
            nodes
        }
        Some(Value::String(s)) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
        Some(other) => return Err(ViewError::BadAddress(other.to_string())),
        None => Vec::new(),
    };
    let rf = match repl_factor {
        Some(v) => v.as_u64().ok_or(ViewError::ReplFactorZero)? as usize,
        None => current_repl_factor,
    };
    View::new(nodes, rf, epoch)
}

/// The nodes that must be sent `key` when moving from `old` to `new`: the
/// key's new replicas that were not replicas of its old shard (those hold
/// the shard's union already).
pub fn gaining_nodes<'a>(old: &ShardMap, new: &'a ShardMap, key: &str) -> Vec<&'a String> {
    let had = old.replicas(old.shard_of(key));
    new.replicas(new.shard_of(key)).iter().filter(|n| !had.contains(n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(n: usize, rf: usize) -> View {
        View::new((0..n).map(|i| format!("10.0.0.{i}:13800")).collect(), rf, 0).unwrap()
    }

    #[test]
    fn view_as_array_or_string() {
        let a = requested_view(Some(&json!(["a:1", "b:1"])), Some(&json!(1)), 1, 3).unwrap();
        let b = requested_view(Some(&json!("a:1, b:1")), Some(&json!(1)), 1, 3).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.epoch, 3);
        assert_eq!(requested_view(Some(&json!([])), Some(&json!(1)), 1, 0), Err(ViewError::Empty));
        assert_eq!(requested_view(Some(&json!("")), Some(&json!(1)), 1, 0), Err(ViewError::Empty));
        assert_eq!(requested_view(Some(&json!(["a:1"])), Some(&json!(0)), 1, 0), Err(ViewError::ReplFactorZero));
        // Without repl-factor the current one stays.
        assert_eq!(requested_view(Some(&json!(["a:1", "b:1"])), None, 2, 0).map(|v| v.repl_factor), Ok(2));
        assert_eq!(requested_view(Some(&json!(["a:1"])), Some(&json!(0)), 1, 0), Err(ViewError::ReplFactorZero));
        assert!(matches!(requested_view(Some(&json!(["a:1"])), Some(&json!(2)), 1, 0), Err(ViewError::ReplFactorTooLarge { .. })));
        assert!(matches!(requested_view(Some(&json!(["a:1", "a:1"])), Some(&json!(1)), 1, 0), Err(ViewError::Duplicate(_))));
        assert!(requested_view(Some(&json!([1])), Some(&json!(1)), 1, 0).is_err());
        assert!(requested_view(Some(&json!(["a:1"])), Some(&json!("1")), 1, 0).is_err());
    }

    #[test]
    fn only_nodes_that_gain_a_key_receive_it() {
        let old = ShardMap::new(view(2, 2), "x");
        let new = ShardMap::new(view(4, 2), "x");
        for k in 0..200 {
            let key = format!("k{k}");
            let gain = gaining_nodes(&old, &new, &key);
            if new.shard_of(&key) == 1 {
                assert!(gain.is_empty(), "shard 1 keeps nodes 0 and 1, who have every key");
            } else {
                assert_eq!(gain.len(), 2);
            }
        }
    }

    #[test]
    fn growing_by_one_shard_moves_at_most_a_fair_share() {
        for n in 1..6usize {
            let old = ShardMap::new(view(n, 1), "x");
            let new = ShardMap::new(view(n + 1, 1), "x");
            let keys = 20_000;
            let moved = (0..keys).filter(|k| !gaining_nodes(&old, &new, &format!("key{k}")).is_empty()).count();
            let share = moved as f64 / keys as f64;
            assert!(share <= 1.0 / (n as f64 + 1.0) + 0.05, "{n} -> {}: moved {:.1}%", n + 1, share * 100.0);
        }
    }
}
