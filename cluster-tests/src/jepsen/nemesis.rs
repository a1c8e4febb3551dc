//! Faults: kill -9, SIGSTOP, network partitions (iptables inside the run's private network
//! namespace) and clock changes (libfaketime). Every fault is healed by [`Nemesis::heal`].

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

use crate::Cluster;

/// The fault a scenario cycles through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    KillLeader,
    KillFollower,
    KillAll,
    PauseLeader,
    PartitionLeaderMinority,
    PartitionLeaderMajority,
    Bridge,
    OneWay,
    Clock,
    /// Nodes join, drain and are force-replaced while the workloads run (see
    /// `runner::membership_step`).
    Membership,
    /// The membership changes, each followed by a kill, partition or pause among nodes 1-3
    /// (aimed at the metadata group's leader, which drives the changes) that is healed before
    /// the next change.
    MembershipFaults,
    /// Data groups are added and retired one after another while the workloads run, so slots
    /// move between groups all the time (see `runner::slot_change`).
    SlotMoves,
    /// The slot moves, each change followed by a kill, partition or pause among nodes 1-3
    /// (aimed at the metadata group's leader, which drives the moves), healed before the next.
    SlotMovesFaults,
}

impl Fault {
    pub const ALL: [Fault; 13] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::KillAll,
        Fault::PauseLeader,
        Fault::PartitionLeaderMinority,
        Fault::PartitionLeaderMajority,
        Fault::Bridge,
        Fault::OneWay,
        Fault::Clock,
        Fault::Membership,
        Fault::MembershipFaults,
        Fault::SlotMoves,
        Fault::SlotMovesFaults,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillFollower => "kill-follower",
            Fault::KillAll => "kill-all",
            Fault::PauseLeader => "pause-leader",
            Fault::PartitionLeaderMinority => "partition-leader-minority",
            Fault::PartitionLeaderMajority => "partition-leader-majority",
            Fault::Bridge => "bridge",
            Fault::OneWay => "one-way",
            Fault::Clock => "clock",
            Fault::Membership => "membership",
            Fault::MembershipFaults => "membership-faults",
            Fault::SlotMoves => "slot-moves",
            Fault::SlotMovesFaults => "slot-moves-faults",
        }
    }

    /// Whether nodes join and leave in this scenario.
    pub fn changes_membership(self) -> bool {
        matches!(self, Fault::Membership | Fault::MembershipFaults)
    }

    /// Whether data groups are added and retired in this scenario.
    pub fn moves_slots(self) -> bool {
        matches!(self, Fault::SlotMoves | Fault::SlotMovesFaults)
    }

    /// Whether each change of the scenario is followed by a fault.
    pub fn faults_between_changes(self) -> bool {
        matches!(self, Fault::MembershipFaults | Fault::SlotMovesFaults)
    }

    pub fn parse(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// Where libfaketime lives on Debian.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

pub fn ip_of(node: u64) -> String {
    format!("127.0.0.{node}")
}

/// Drops packets from `from` to `to` (one direction).
fn cut(from: u64, to: u64) -> anyhow::Result<()> {
    let status = Command::new("iptables")
        .args([
            "-w",
            "-A",
            "INPUT",
            "-s",
            &ip_of(from),
            "-d",
            &ip_of(to),
            "-j",
            "DROP",
        ])
        .status()
        .context("running iptables")?;
    if !status.success() {
        bail!("iptables cut {from}->{to} failed");
    }
    Ok(())
}

fn cut_both(a: u64, b: u64) -> anyhow::Result<()> {
    cut(a, b)?;
    cut(b, a)
}

pub fn flush_rules() -> anyhow::Result<()> {
    let status = Command::new("iptables")
        .args(["-w", "-F", "INPUT"])
        .status()
        .context("iptables -F")?;
    if !status.success() {
        bail!("iptables -F failed");
    }
    Ok(())
}

/// The nemesis's state: what is broken right now.
#[derive(Default)]
pub struct Nemesis {
    pub killed: BTreeSet<u64>,
    pub paused: BTreeSet<u64>,
    pub partitioned: bool,
    /// The clock file of node 1, which runs under libfaketime in the clock scenario.
    pub clock_file: Option<PathBuf>,
}

impl Nemesis {
    /// Injects `fault`, aimed at `leader` (of a data group) where it needs one. Returns a
    /// description of what it did.
    pub fn inject(
        &mut self,
        cluster: &mut Cluster,
        fault: Fault,
        leader: u64,
    ) -> anyhow::Result<String> {
        let others: Vec<u64> = [1u64, 2, 3].into_iter().filter(|n| *n != leader).collect();
        Ok(match fault {
            Fault::KillLeader => {
                cluster.kill9(leader);
                self.killed.insert(leader);
                format!("kill -9 node {leader} (leader)")
            }
            Fault::KillFollower => {
                cluster.kill9(others[0]);
                self.killed.insert(others[0]);
                format!("kill -9 node {} (follower)", others[0])
            }
            Fault::KillAll => {
                for n in 1..=3 {
                    cluster.kill9(n);
                    self.killed.insert(n);
                }
                "kill -9 nodes 1, 2, 3".into()
            }
            Fault::PauseLeader => {
                cluster.pause(leader, true);
                self.paused.insert(leader);
                format!("SIGSTOP node {leader} (leader)")
            }
            Fault::PartitionLeaderMinority => {
                for o in &others {
                    cut_both(leader, *o)?;
                }
                self.partitioned = true;
                format!("isolate node {leader} (leader in the minority)")
            }
            Fault::PartitionLeaderMajority => {
                let f = others[0];
                for n in [leader, others[1]] {
                    cut_both(f, n)?;
                }
                self.partitioned = true;
                format!("isolate node {f} (leader {leader} in the majority)")
            }
            Fault::Bridge => {
                cut_both(1, 3)?;
                self.partitioned = true;
                "cut 1<->3; node 2 sees both".into()
            }
            Fault::OneWay => {
                cut(leader, others[0])?;
                self.partitioned = true;
                format!(
                    "drop packets from node {leader} (leader) to node {}",
                    others[0]
                )
            }
            Fault::Clock => {
                let file = self
                    .clock_file
                    .as_ref()
                    .context("clock scenario without a clock file")?;
                std::fs::write(file, "+3600\n")?;
                "node 1's clock jumps forward one hour".into()
            }
            Fault::Membership
            | Fault::MembershipFaults
            | Fault::SlotMoves
            | Fault::SlotMovesFaults => {
                bail!("membership changes and slot moves are made by the runner")
            }
        })
    }

    /// Heals everything: restarts killed nodes, resumes paused ones, removes every rule and
    /// puts the clock back.
    pub fn heal(&mut self, cluster: &mut Cluster) -> anyhow::Result<String> {
        let mut done = Vec::new();
        for n in std::mem::take(&mut self.paused) {
            cluster.pause(n, false);
            done.push(format!("SIGCONT node {n}"));
        }
        for n in std::mem::take(&mut self.killed) {
            cluster.restart(n);
            done.push(format!("restart node {n}"));
        }
        if std::mem::take(&mut self.partitioned) {
            flush_rules()?;
            done.push("remove all cuts".into());
        }
        if let Some(file) = &self.clock_file {
            std::fs::write(file, "+0\n")?;
        }
        Ok(done.join("; "))
    }
}
