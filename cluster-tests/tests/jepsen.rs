//! The Jepsen-style suite, short version: every fault scenario must pass, and every mutant
//! (a build that breaks one guarantee on purpose) must make the matching checker fail.
//!
//! Each scenario runs `raftflow-jepsen`, which puts the cluster in a private network
//! namespace, so the runs are independent of each other and of the machine's network.

use std::path::PathBuf;
use std::process::Command;

/// Seconds of faults per scenario in `make test` (`make jepsen` runs longer).
const SECONDS: &str = "30";

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

struct Outcome {
    code: i32,
    stdout: String,
    verdict: serde_json::Value,
}

fn run(fault: &str, seed: u64, mutant: Option<&str>) -> Outcome {
    let dir = target_dir();
    let out = tempfile::tempdir().unwrap().keep();
    let mut cmd = Command::new(dir.join("raftflow-jepsen"));
    cmd.args([
        "--fault",
        fault,
        "--seconds",
        SECONDS,
        "--seed",
        &seed.to_string(),
    ]);
    cmd.arg("--out").arg(&out);
    if let Some(m) = mutant {
        let bin = dir.join("raftflow-mutants");
        assert!(
            bin.exists(),
            "{} is missing: `make test` builds it with `cargo build --release --features mutants`",
            bin.display()
        );
        cmd.arg("--bin").arg(bin).args(["--mutant", m]);
    }
    let output = cmd.output().expect("run raftflow-jepsen");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    println!("{stdout}\n{stderr}");
    let verdict = std::fs::read(out.join(fault).join("verdict.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    let code = output.status.code().unwrap_or(-1);
    // A run that did not end as expected keeps its histories and logs for a look afterwards.
    let expected = if mutant.is_some() { 1 } else { 0 };
    if code == expected {
        let _ = std::fs::remove_dir_all(&out);
    } else {
        println!("kept the report of this run: {}", out.display());
    }
    Outcome {
        code,
        stdout,
        verdict,
    }
}

fn assert_valid(fault: &str, seed: u64) {
    let o = run(fault, seed, None);
    assert_eq!(
        o.code, 0,
        "scenario {fault} (seed {seed}) did not pass:\n{}",
        o.stdout
    );
    assert_eq!(o.verdict["valid"], true);
    assert!(o.verdict["faults_injected"].as_u64().unwrap_or(0) >= 1);
}

/// The mutant must make `checker` report an anomaly (exit 1, not a pass and not UNKNOWN).
fn assert_caught(fault: &str, seed: u64, mutant: &str, checkers: &[&str]) {
    let o = run(fault, seed, Some(mutant));
    assert_eq!(
        o.code, 1,
        "mutant {mutant} was not caught under {fault}:\n{}",
        o.stdout
    );
    let caught: Vec<&str> = checkers
        .iter()
        .copied()
        .filter(|c| {
            o.verdict["anomalies"][*c]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
        .collect();
    assert!(
        !caught.is_empty(),
        "mutant {mutant}: none of {checkers:?} reported it:\n{}",
        o.stdout
    );
}

#[test]
fn kill_leader_scenario_passes() {
    assert_valid("kill-leader", 101);
}

#[test]
fn kill_follower_scenario_passes() {
    assert_valid("kill-follower", 102);
}

#[test]
fn kill_all_scenario_passes() {
    assert_valid("kill-all", 103);
}

#[test]
fn paused_leader_scenario_passes() {
    assert_valid("pause-leader", 104);
}

#[test]
fn leader_in_minority_partition_scenario_passes() {
    assert_valid("partition-leader-minority", 105);
}

#[test]
fn leader_in_majority_partition_scenario_passes() {
    assert_valid("partition-leader-majority", 106);
}

#[test]
fn bridge_partition_scenario_passes() {
    assert_valid("bridge", 107);
}

#[test]
fn one_way_partition_scenario_passes() {
    assert_valid("one-way", 108);
}

#[test]
fn clock_skew_and_jump_scenario_passes() {
    assert_valid("clock", 109);
}

/// Nodes 4 and 5 join (replicas move to them), node 4 drains, node 5 is killed and
/// force-removed, all under the register, append, unique and task workloads.
#[test]
fn membership_changes_scenario_passes() {
    assert_valid("membership", 110);
}

/// The same changes, each followed by a kill of the node driving them, a partition, a pause
/// or a kill of a follower, healed before the next change.
#[test]
fn membership_changes_under_kills_and_partitions_pass() {
    assert_valid("membership-faults", 111);
}

/// Data groups are added and retired one after another, so slots move between groups all
/// through the run, under the register, append, unique and task workloads.
#[test]
fn slot_moves_scenario_passes() {
    assert_valid("slot-moves", 120);
}

/// The same, each change followed by a kill of the node driving the moves, a partition, a
/// pause or a kill of a follower, healed before the next change.
#[test]
fn slot_moves_under_kills_and_partitions_pass() {
    assert_valid("slot-moves-faults", 121);
}

/// A ready task a group receives in a slot move must join its queue in its own log order:
/// queued at the old group's index it hides later tasks from the queue's scans.
#[test]
fn mutant_keeping_the_old_groups_queue_order_is_caught() {
    assert_caught("slot-moves", 206, "keep-queue-order", &["tasks"]);
}

#[test]
fn mutant_serving_reads_without_read_index_is_caught() {
    assert_caught(
        "partition-leader-minority",
        201,
        "stale-read",
        &["linearizable-register", "append-history"],
    );
}

#[test]
fn mutant_skipping_request_id_dedup_is_caught() {
    assert_caught("kill-leader", 202, "skip-dedup", &["append-history"]);
}

#[test]
fn mutant_answering_before_commit_is_caught() {
    assert_caught(
        "kill-leader",
        203,
        "early-ack",
        &["linearizable-register", "append-history"],
    );
}

#[test]
fn mutant_skipping_the_lease_check_is_caught() {
    assert_caught("kill-leader", 204, "lease-check", &["tasks"]);
}

/// A group that comes back to a node it left must start a new replica there: one that
/// inherits the node's memory of the old one leases tasks differently from the other replicas.
#[test]
fn mutant_keeping_an_old_replicas_state_is_caught() {
    assert_caught(
        "membership",
        205,
        "keep-replica-state",
        &["whole-cluster", "tasks"],
    );
}
