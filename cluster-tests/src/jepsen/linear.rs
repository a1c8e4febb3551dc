//! Linearizability of a workflow's revision as a compare-and-set register: a Wing–Gong search
//! with Lowe's memoisation, as Porcupine does it, with `info` operations open to the end.
//!
//! Operations on one key (one workflow):
//! - `read` ok with value `r`: the revision was `r`;
//! - `cas` with invoke value `e`: ok with value `e+1` (the transition applied), or `fail` with
//!   `{"current": c}` (refused at revision `c`: a read of `c`), or `info` (applied or not, at
//!   any time after the invocation).
//!
//! The model state is the set of revisions the register may hold, which keeps `info` exact.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use super::history::{OpType, Paired};

/// Most search steps per key before the checker gives up with "unknown".
pub const MAX_STEPS_PER_KEY: usize = 2_000_000;

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Read(u64),
    CasOk { expected: u64, new: u64 },
    CasRefused { expected: u64, current: u64 },
    CasMaybe { expected: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable(String),
    Unknown(String),
}

fn classify(op: &Paired) -> Option<Kind> {
    match op.f.as_str() {
        "read" if op.is_ok() => op.result_value.as_u64().map(Kind::Read),
        "cas" => {
            let expected = op.invoke_value.as_u64()?;
            match op.outcome {
                Some(OpType::Ok) => Some(Kind::CasOk {
                    expected,
                    new: op.result_value.as_u64()?,
                }),
                Some(OpType::Fail) => op
                    .result_value
                    .get("current")
                    .and_then(Value::as_u64)
                    .map(|current| Kind::CasRefused { expected, current }),
                _ => Some(Kind::CasMaybe { expected }),
            }
        }
        _ => None,
    }
}

/// The possible register values after `kind`, from the possible values `state`; empty if
/// the operation cannot take effect now.
fn step(state: &[u64], kind: &Kind) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for &s in state {
        match *kind {
            Kind::Read(r) if s == r => out.push(s),
            Kind::CasOk { expected, new } if s == expected && new == expected + 1 => out.push(new),
            Kind::CasRefused { expected, current } if s == current && current != expected => {
                out.push(s)
            }
            Kind::CasMaybe { expected } => {
                out.push(s);
                if s == expected {
                    out.push(expected + 1);
                }
            }
            _ => {}
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

const NIL: usize = usize::MAX;

struct Entry {
    op: usize,
    is_call: bool,
    partner: usize,
    prev: usize,
    next: usize,
}

/// Checks one key's operations, starting from revision `initial`.
pub fn check_key(ops: &[&Paired], initial: u64) -> Verdict {
    let kinds: Vec<(Kind, u64, u64)> = ops
        .iter()
        .filter_map(|p| classify(p).map(|k| (k, p.invoke_index, p.complete_index)))
        .collect();
    if kinds.is_empty() {
        return Verdict::Linearizable;
    }
    // Entries in time order; index 0 is the list head.
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    for (i, (_, inv, comp)) in kinds.iter().enumerate() {
        events.push((*inv, true, i));
        events.push((*comp, false, i));
    }
    events.sort_by_key(|(t, is_call, _)| (*t, !*is_call));
    let mut entries = vec![Entry {
        op: NIL,
        is_call: false,
        partner: NIL,
        prev: NIL,
        next: NIL,
    }];
    let mut call_at = vec![NIL; kinds.len()];
    for (_, is_call, op) in events {
        let idx = entries.len();
        let prev = idx - 1;
        entries[prev].next = idx;
        entries.push(Entry {
            op,
            is_call,
            partner: NIL,
            prev,
            next: NIL,
        });
        if is_call {
            call_at[op] = idx;
        } else {
            let c = call_at[op];
            entries[c].partner = idx;
            entries[idx].partner = c;
        }
    }
    let words = kinds.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: Vec<u64> = vec![initial];
    let mut cache: HashSet<(Vec<u64>, Vec<u64>)> = HashSet::new();
    let mut stack: Vec<(usize, Vec<u64>)> = Vec::new();
    let mut entry = entries[0].next;
    let mut steps = 0usize;
    let mut deepest = 0usize;

    fn unlink(entries: &mut [Entry], x: usize) {
        let (p, n) = (entries[x].prev, entries[x].next);
        entries[p].next = n;
        if n != NIL {
            entries[n].prev = p;
        }
    }
    fn relink(entries: &mut [Entry], x: usize) {
        let (p, n) = (entries[x].prev, entries[x].next);
        entries[p].next = x;
        if n != NIL {
            entries[n].prev = x;
        }
    }

    while entries[0].next != NIL {
        steps += 1;
        if steps > MAX_STEPS_PER_KEY {
            return Verdict::Unknown(format!("search exceeded {MAX_STEPS_PER_KEY} steps"));
        }
        if entry != NIL && entries[entry].is_call {
            let op = entries[entry].op;
            let next_state = step(&state, &kinds[op].0);
            if !next_state.is_empty() {
                let mut lin = linearized.clone();
                lin[op / 64] |= 1 << (op % 64);
                if cache.insert((lin.clone(), next_state.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, next_state)));
                    deepest = deepest.max(stack.len());
                    linearized = lin;
                    let partner = entries[entry].partner;
                    unlink(&mut entries, entry);
                    unlink(&mut entries, partner);
                    entry = entries[0].next;
                    continue;
                }
            }
            entry = entries[entry].next;
            continue;
        }
        // A return entry (or the end) with its call not linearized: backtrack.
        let Some((e, prev_state)) = stack.pop() else {
            let ok_prefix = deepest;
            return Verdict::NotLinearizable(format!(
                "no order of the {} operations explains the results; the longest linearizable prefix has {ok_prefix} operations",
                kinds.len()
            ));
        };
        let op = entries[e].op;
        linearized[op / 64] &= !(1 << (op % 64));
        state = prev_state;
        let partner = entries[e].partner;
        relink(&mut entries, partner);
        relink(&mut entries, e);
        entry = entries[e].next;
    }
    Verdict::Linearizable
}

/// Checks every key of a history of `read` and `cas` operations; each workflow starts at
/// revision `initial`. Returns the verdict per key.
pub fn check(ops: &[Paired], initial: u64) -> BTreeMap<String, Verdict> {
    let mut by_key: BTreeMap<String, Vec<&Paired>> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.f == "read" || o.f == "cas") {
        by_key.entry(op.key.clone()).or_default().push(op);
    }
    by_key
        .into_iter()
        .map(|(k, ops)| (k, check_key(&ops, initial)))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::jepsen::history::history_of;

    /// Builds a one-key history from (process, type, f, value) tuples in order.
    fn h(rows: &[(u64, OpType, &str, Value)]) -> Vec<Paired> {
        let rows: Vec<_> = rows
            .iter()
            .map(|(p, t, f, v)| (*p, *t, *f, "w", v.clone()))
            .collect();
        history_of(&rows)
    }

    use OpType::*;

    fn verdict(rows: &[(u64, OpType, &str, Value)]) -> Verdict {
        check(&h(rows), 1).remove("w").unwrap()
    }

    #[test]
    fn sequential_cas_and_reads_are_linearizable() {
        let v = verdict(&[
            (0, Invoke, "cas", json!(1)),
            (0, Ok, "cas", json!(2)),
            (1, Invoke, "read", Value::Null),
            (1, Ok, "read", json!(2)),
            (0, Invoke, "cas", json!(1)),
            (0, Fail, "cas", json!({"current": 2})),
        ]);
        assert_eq!(v, Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_acknowledged_cas_is_caught() {
        let v = verdict(&[
            (0, Invoke, "cas", json!(1)),
            (0, Ok, "cas", json!(2)),
            (1, Invoke, "read", Value::Null),
            (1, Ok, "read", json!(1)),
        ]);
        assert!(matches!(v, Verdict::NotLinearizable(_)), "{v:?}");
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        let v = verdict(&[
            (0, Invoke, "cas", json!(1)),
            (1, Invoke, "read", Value::Null),
            (1, Ok, "read", json!(2)),
            (2, Invoke, "read", Value::Null),
            (2, Ok, "read", json!(2)),
            (0, Ok, "cas", json!(2)),
        ]);
        assert_eq!(v, Verdict::Linearizable);
    }

    #[test]
    fn value_going_back_is_caught_even_with_concurrency() {
        // Once a read saw 2, a later read may not see 1.
        let v = verdict(&[
            (0, Invoke, "cas", json!(1)),
            (1, Invoke, "read", Value::Null),
            (1, Ok, "read", json!(2)),
            (1, Invoke, "read", Value::Null),
            (1, Ok, "read", json!(1)),
            (0, Ok, "cas", json!(2)),
        ]);
        assert!(matches!(v, Verdict::NotLinearizable(_)), "{v:?}");
    }

    #[test]
    fn info_cas_may_apply_late_or_never() {
        let late = verdict(&[
            (0, Invoke, "cas", json!(1)),
            (0, Info, "cas", Value::Null),
            (1, Invoke, "read", Value::Null),
            (1, Ok, "read", json!(1)),
            (1, Invoke, "read", Value::Null),
            (1, Ok, "read", json!(2)),
        ]);
        assert_eq!(late, Verdict::Linearizable);
        let never = verdict(&[
            (0, Invoke, "cas", json!(1)),
            (0, Info, "cas", Value::Null),
            (1, Invoke, "read", Value::Null),
            (1, Ok, "read", json!(1)),
        ]);
        assert_eq!(never, Verdict::Linearizable);
    }

    #[test]
    fn two_successful_cas_from_the_same_revision_are_caught() {
        // A lost update / duplicate apply: both clients were told their CAS from 1 won.
        let v = verdict(&[
            (0, Invoke, "cas", json!(1)),
            (1, Invoke, "cas", json!(1)),
            (0, Ok, "cas", json!(2)),
            (1, Ok, "cas", json!(2)),
        ]);
        assert!(matches!(v, Verdict::NotLinearizable(_)), "{v:?}");
    }

    #[test]
    fn refusal_reporting_an_impossible_revision_is_caught() {
        let v = verdict(&[
            (0, Invoke, "cas", json!(1)),
            (0, Ok, "cas", json!(2)),
            (0, Invoke, "cas", json!(2)),
            (0, Fail, "cas", json!({"current": 1})),
        ]);
        assert!(matches!(v, Verdict::NotLinearizable(_)), "{v:?}");
    }
}
