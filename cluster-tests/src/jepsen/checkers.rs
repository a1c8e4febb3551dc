//! The append-history, unique-create and whole-cluster checkers. Each returns the anomalies it
//! found; an empty list means the history passed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::history::Paired;

fn values(v: &Value) -> Vec<u64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// Appends to a workflow's history and reads of it (`append` with invoke value `v`, `read` ok
/// with the list of appended values in history order). The final read of each key is the
/// reference: every read is a prefix of it, it holds no duplicate and no value nobody
/// appended, it holds every acknowledged append, and a read that began after an append was
/// acknowledged contains that append.
pub fn check_appends(ops: &[Paired]) -> Vec<String> {
    let mut anomalies = Vec::new();
    let mut by_key: BTreeMap<&str, Vec<&Paired>> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.f == "append" || o.f == "read") {
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        let reads: Vec<&&Paired> = ops.iter().filter(|o| o.f == "read" && o.is_ok()).collect();
        let Some(last) = reads.iter().max_by_key(|r| r.complete_index) else {
            continue;
        };
        let fin = values(&last.result_value);
        let invoked: BTreeSet<u64> = ops
            .iter()
            .filter(|o| o.f == "append")
            .filter_map(|o| o.invoke_value.as_u64())
            .collect();
        let mut seen = BTreeSet::new();
        for v in &fin {
            if !seen.insert(*v) {
                anomalies.push(format!(
                    "{key}: value {v} appears twice in the final history (duplicate effect)"
                ));
            }
            if !invoked.contains(v) {
                anomalies.push(format!(
                    "{key}: value {v} in the history was never appended"
                ));
            }
        }
        for r in &reads {
            let got = values(&r.result_value);
            if got.len() > fin.len() || got[..] != fin[..got.len()] {
                anomalies.push(format!(
                    "{key}: read at index {} is not a prefix of the final history: {got:?} vs {fin:?}",
                    r.invoke_index
                ));
            }
        }
        let fin_set: BTreeSet<u64> = fin.iter().copied().collect();
        for a in ops.iter().filter(|o| o.f == "append" && o.is_ok()) {
            let Some(v) = a.invoke_value.as_u64() else {
                continue;
            };
            if !fin_set.contains(&v) {
                anomalies.push(format!(
                    "{key}: acknowledged append {v} is missing (lost write)"
                ));
            }
            for r in reads.iter().filter(|r| r.invoke_index > a.complete_index) {
                if !values(&r.result_value).contains(&v) {
                    anomalies.push(format!(
                        "{key}: read at index {} began after append {v} was acknowledged but lacks it (stale read)",
                        r.invoke_index
                    ));
                }
            }
        }
    }
    anomalies
}

/// Racing creates of one id (`create` with invoke value `{"creator": p}`; ok value
/// `{"creator", "status"}`), and a final `read` ok `{"creator"}` per key. At most one request
/// may win; every ok names the winner; the final workflow came from an ok or info create.
pub fn check_unique(ops: &[Paired]) -> Vec<String> {
    let mut anomalies = Vec::new();
    let mut by_key: BTreeMap<&str, Vec<&Paired>> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.f == "create" || o.f == "read") {
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        let creator = |v: &Value| v.get("creator").and_then(Value::as_u64);
        let ok_creators: BTreeSet<u64> = ops
            .iter()
            .filter(|o| o.f == "create" && o.is_ok())
            .filter_map(|o| creator(&o.result_value))
            .collect();
        if ok_creators.len() > 1 {
            anomalies.push(format!(
                "{key}: creates by {ok_creators:?} all succeeded (split brain / duplicate create)"
            ));
        }
        for o in ops.iter().filter(|o| o.f == "create" && o.is_ok()) {
            let mine = creator(&o.invoke_value);
            let got = creator(&o.result_value);
            if o.result_value.get("status").and_then(Value::as_u64) == Some(201) && mine != got {
                anomalies.push(format!(
                    "{key}: create by {mine:?} answered 201 with a workflow by {got:?}"
                ));
            }
        }
        let possible: BTreeSet<u64> = ops
            .iter()
            .filter(|o| o.f == "create" && (o.is_ok() || o.is_info()))
            .filter_map(|o| creator(&o.invoke_value))
            .collect();
        // What the creates of `c` were told, for the report.
        let told = |c: u64| -> String {
            let answers: Vec<String> = ops
                .iter()
                .filter(|o| o.f == "create" && creator(&o.invoke_value) == Some(c))
                .map(|o| format!("{:?} {}", o.outcome, o.result_value))
                .collect();
            if answers.is_empty() {
                "no create by it was recorded".into()
            } else {
                format!("its creates were told: {}", answers.join("; "))
            }
        };
        for r in ops.iter().filter(|o| o.f == "read" && o.is_ok()) {
            match creator(&r.result_value) {
                Some(c) if !possible.contains(&c) => anomalies.push(format!(
                    "{key}: final workflow was created by {c}, whose create failed or never ran ({})",
                    told(c)
                )),
                Some(c) if !ok_creators.is_empty() && !ok_creators.contains(&c) => anomalies.push(format!(
                    "{key}: final workflow was created by {c}, but {ok_creators:?} were told they won"
                )),
                _ => {}
            }
        }
    }
    anomalies
}

/// Leader samples (`leader-sample` with value `{"group", "term", "leader"}`) show at most one
/// leader per term per group; the digests read after the heal (`digest` with value
/// `{"group", "node", "applied", "digest"}`) agree across replicas at the same applied index,
/// and every replica of a group reached the same index.
pub fn check_cluster(ops: &[Paired]) -> Vec<String> {
    let mut anomalies = Vec::new();
    let mut leaders: HashMap<(u64, u64), BTreeSet<u64>> = HashMap::new();
    for o in ops.iter().filter(|o| o.f == "leader-sample" && o.is_ok()) {
        let v = &o.result_value;
        if let (Some(g), Some(t), Some(l)) = (
            v["group"].as_u64(),
            v["term"].as_u64(),
            v["leader"].as_u64(),
        ) {
            leaders.entry((g, t)).or_default().insert(l);
        }
    }
    let mut split: Vec<_> = leaders.into_iter().filter(|(_, ls)| ls.len() > 1).collect();
    split.sort();
    for ((g, t), ls) in split {
        anomalies.push(format!(
            "group {g} term {t}: leaders {ls:?} (two leaders in one term)"
        ));
    }
    let mut digests: BTreeMap<u64, BTreeMap<u64, (Option<u64>, String)>> = BTreeMap::new();
    for o in ops.iter().filter(|o| o.f == "digest" && o.is_ok()) {
        let v = &o.result_value;
        if let (Some(g), Some(n)) = (v["group"].as_u64(), v["node"].as_u64()) {
            let d = (
                v["applied"].as_u64(),
                v["digest"].as_str().unwrap_or_default().to_string(),
            );
            digests.entry(g).or_default().insert(n, d);
        }
    }
    for (g, per_node) in digests {
        let distinct: BTreeSet<_> = per_node.values().collect();
        if distinct.len() > 1 {
            anomalies.push(format!(
                "group {g}: replicas differ after the heal: {per_node:?}"
            ));
        }
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::jepsen::history::{history_of, OpType, OpType::*};

    fn h(rows: &[(u64, OpType, &str, &str, Value)]) -> Vec<Paired> {
        history_of(rows)
    }

    #[test]
    fn clean_append_history_passes() {
        let ops = h(&[
            (0, Invoke, "append", "a", json!(1)),
            (0, Ok, "append", "a", json!(1)),
            (1, Invoke, "read", "a", Value::Null),
            (1, Ok, "read", "a", json!([1])),
            (0, Invoke, "append", "a", json!(2)),
            (0, Info, "append", "a", Value::Null),
            (2, Invoke, "read", "a", Value::Null),
            (2, Ok, "read", "a", json!([1, 2])),
        ]);
        assert_eq!(check_appends(&ops), Vec::<String>::new());
    }

    #[test]
    fn lost_duplicate_unknown_and_stale_appends_are_reported() {
        let ops = h(&[
            (0, Invoke, "append", "a", json!(1)),
            (0, Ok, "append", "a", json!(1)),
            (0, Invoke, "append", "a", json!(2)),
            (0, Ok, "append", "a", json!(2)),
            (1, Invoke, "read", "a", Value::Null),
            (1, Ok, "read", "a", json!([2])),
            (2, Invoke, "read", "a", Value::Null),
            (2, Ok, "read", "a", json!([2, 2, 9])),
        ]);
        let a = check_appends(&ops).join("\n");
        assert!(a.contains("appears twice"), "{a}");
        assert!(a.contains("never appended"), "{a}");
        assert!(a.contains("acknowledged append 1 is missing"), "{a}");
        assert!(a.contains("lacks it"), "{a}");
    }

    #[test]
    fn read_that_is_not_a_prefix_is_reported() {
        let ops = h(&[
            (0, Invoke, "append", "a", json!(1)),
            (0, Ok, "append", "a", json!(1)),
            (0, Invoke, "append", "a", json!(2)),
            (0, Ok, "append", "a", json!(2)),
            (1, Invoke, "read", "a", Value::Null),
            (1, Ok, "read", "a", json!([2, 1])),
            (2, Invoke, "read", "a", Value::Null),
            (2, Ok, "read", "a", json!([1, 2])),
        ]);
        assert!(check_appends(&ops)
            .iter()
            .any(|a| a.contains("not a prefix")));
    }

    #[test]
    fn unique_create_passes_with_one_winner() {
        let ops = h(&[
            (0, Invoke, "create", "u", json!({"creator": 0})),
            (1, Invoke, "create", "u", json!({"creator": 1})),
            (0, Ok, "create", "u", json!({"creator": 0, "status": 201})),
            (1, Fail, "create", "u", json!({"code": "workflow_exists"})),
            (0, Invoke, "create", "u", json!({"creator": 0})),
            (0, Ok, "create", "u", json!({"creator": 0, "status": 200})),
            (2, Invoke, "read", "u", Value::Null),
            (2, Ok, "read", "u", json!({"creator": 0})),
        ]);
        assert_eq!(check_unique(&ops), Vec::<String>::new());
    }

    #[test]
    fn two_winners_and_a_foreign_final_creator_are_reported() {
        let ops = h(&[
            (0, Invoke, "create", "u", json!({"creator": 0})),
            (1, Invoke, "create", "u", json!({"creator": 1})),
            (2, Invoke, "create", "u", json!({"creator": 2})),
            (0, Ok, "create", "u", json!({"creator": 0, "status": 201})),
            (1, Ok, "create", "u", json!({"creator": 1, "status": 201})),
            (2, Fail, "create", "u", json!({"code": "workflow_exists"})),
            (3, Invoke, "read", "u", Value::Null),
            (3, Ok, "read", "u", json!({"creator": 2})),
        ]);
        let a = check_unique(&ops).join("\n");
        assert!(a.contains("all succeeded"), "{a}");
        assert!(a.contains("failed or never ran"), "{a}");
    }

    #[test]
    fn two_leaders_in_a_term_and_diverged_replicas_are_reported() {
        let ops = h(&[
            (9, Invoke, "leader-sample", "", Value::Null),
            (
                9,
                Ok,
                "leader-sample",
                "",
                json!({"group": 1, "term": 4, "leader": 1}),
            ),
            (9, Invoke, "leader-sample", "", Value::Null),
            (
                9,
                Ok,
                "leader-sample",
                "",
                json!({"group": 1, "term": 4, "leader": 2}),
            ),
            (9, Invoke, "leader-sample", "", Value::Null),
            (
                9,
                Ok,
                "leader-sample",
                "",
                json!({"group": 2, "term": 4, "leader": 2}),
            ),
            (9, Invoke, "digest", "", Value::Null),
            (
                9,
                Ok,
                "digest",
                "",
                json!({"group": 1, "node": 1, "applied": 10, "digest": "aa"}),
            ),
            (9, Invoke, "digest", "", Value::Null),
            (
                9,
                Ok,
                "digest",
                "",
                json!({"group": 1, "node": 2, "applied": 10, "digest": "bb"}),
            ),
        ]);
        let a = check_cluster(&ops);
        assert_eq!(a.len(), 2, "{a:?}");
        assert!(a[0].contains("two leaders"));
        assert!(a[1].contains("differ"));
    }
}
