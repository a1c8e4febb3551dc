//! Deliberately broken guarantees, for proving that the failure tests can fail.
//!
//! Compiled in only with the `mutants` cargo feature (never in the default build), and then
//! chosen at run time by `RAFTFLOW_MUTANT`:
//!
//! - `stale-read`: reads skip the read index and never forward: a partitioned node answers
//!   from its stale replica;
//! - `skip-dedup`: the state machine ignores `request_id`, so a retried event applies twice;
//! - `early-ack`: an event is answered with its predicted outcome before it is committed;
//! - `lease-check`: completing a task skips the lease check: any token completes an open task;
//! - `keep-replica-state`: a replica a group gives a node inherits what the node remembered of
//!   the group's earlier replica there (its ready-queue floors) instead of starting afresh;
//! - `keep-queue-order`: a slot move's import queues a ready task at the old group's log index
//!   instead of the new group's, so it sorts anywhere in the new group's queue, whose scans
//!   rely on log order (the first bug the `slot-moves` scenario found).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutant {
    None,
    StaleRead,
    SkipDedup,
    EarlyAck,
    LeaseCheck,
    KeepReplicaState,
    KeepQueueOrder,
}

/// The mutant this process runs, if any.
pub fn active() -> Mutant {
    #[cfg(feature = "mutants")]
    {
        static ACTIVE: std::sync::OnceLock<Mutant> = std::sync::OnceLock::new();
        *ACTIVE.get_or_init(|| match std::env::var("RAFTFLOW_MUTANT").as_deref() {
            Ok("stale-read") => Mutant::StaleRead,
            Ok("skip-dedup") => Mutant::SkipDedup,
            Ok("early-ack") => Mutant::EarlyAck,
            Ok("lease-check") => Mutant::LeaseCheck,
            Ok("keep-replica-state") => Mutant::KeepReplicaState,
            Ok("keep-queue-order") => Mutant::KeepQueueOrder,
            Ok(other) if !other.is_empty() => panic!("unknown RAFTFLOW_MUTANT {other:?}"),
            _ => Mutant::None,
        })
    }
    #[cfg(not(feature = "mutants"))]
    {
        Mutant::None
    }
}
