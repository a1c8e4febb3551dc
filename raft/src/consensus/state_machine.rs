//! openraft's `RaftStateMachine` for one group: feeds committed entries to the group's
//! [`Applier`] and persists what it wrote.
//!
//! Each `apply` call writes every row it changed, the history rows, dedup records and the
//! applied log id in one RocksDB batch, and answers the proposers only after that write, so a
//! response is never ahead of what a read on this node sees.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use raftflow_storage::{codec, Batch, SnapshotFile, Store};
use serde::{Deserialize, Serialize};

use super::{LogId, SnapshotMeta, StoredMembership, TypeConfig};
use crate::apply::{Applier, At, RowCache, StateRows, Tx, Writes};
use crate::command::Outcome;
use crate::signals::Signals;
use crate::tables;

/// A snapshot's data: the file of the group's rows, or nothing in the snapshots that carry only
/// a position (what openraft builds to learn how far it may purge, and reads when it starts).
pub type SnapshotData = Option<SnapshotFile>;

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// Most deadlines of fenced slots looked past when publishing the next one.
const MAX_FENCED_DEADLINES_SKIPPED: usize = 100_000;

/// What `a` holds: how far this group's rows have applied the log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Applied {
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
}

impl Applied {
    /// The snapshot meta of rows at this position.
    fn snapshot_meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
        }
    }
}

/// The applied row of `group` as stored (nothing applied yet: the default).
fn read_applied(store: &Store, group: u64) -> io::Result<Applied> {
    Ok(match store.get_state(group, tables::APPLIED)? {
        Some(bytes) => codec::decode(&bytes)?,
        None => Applied::default(),
    })
}

pub(crate) fn applied_index(row: &[u8]) -> crate::Result<Option<u64>> {
    let a: Applied = codec::decode(row)?;
    Ok(a.last_applied.map(|l| l.index))
}

/// A group's state rows in RocksDB, as apply reads them.
struct StoredRows<'a> {
    store: &'a Store,
    group: u64,
}

impl StateRows for StoredRows<'_> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.store
            .get_state(self.group, key)
            .unwrap_or_else(|e| panic!("group {}: state read failed: {e}", self.group))
    }

    fn scan_keys(&self, prefix: &[u8], from: Option<&[u8]>, limit: usize) -> Vec<Vec<u8>> {
        self.store
            .scan_state_from(self.group, prefix, from, limit)
            .unwrap_or_else(|e| panic!("group {}: state scan failed: {e}", self.group))
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }
}

pub struct GroupStateMachine {
    group: u64,
    store: Arc<Store>,
    applied: Applied,
    applier: Applier,
    /// The workflow and task rows this group wrote last (see [`RowCache`]); lent to each
    /// apply's transaction, so `None` while one runs or after one failed (then empty again).
    cache: Option<RowCache>,
    signals: Arc<Signals>,
    /// Set once the replica's Raft has started. Before, openraft reads the current snapshot
    /// only for its position (twice, while it starts): exporting every row then would cost a
    /// copy of the group at each start.
    pub(crate) started: Arc<AtomicBool>,
}

impl GroupStateMachine {
    pub fn open(group: u64, store: Arc<Store>, signals: Arc<Signals>) -> io::Result<Self> {
        if store.resume_install(group)? {
            signals.forget_ready_floors(group);
        }
        let applied = read_applied(&store, group)?;
        let mut sm = GroupStateMachine {
            group,
            store,
            applied,
            applier: Applier::new(group, signals.clone()),
            cache: None,
            signals,
            started: Arc::new(AtomicBool::new(false)),
        };
        sm.publish_deadline()?;
        Ok(sm)
    }

    /// Tells the leader's clock when this group next needs a tick: the earliest deadline of a
    /// slot this group serves (a fenced slot's deadlines wait for the group that serves it).
    fn publish_deadline(&mut self) -> io::Result<()> {
        if self.applier.fences.is_none() {
            let fences = tables::read_fences(&self.store, self.group).map_err(io::Error::other)?;
            self.applier.fences = Some(fences);
        }
        let fences = self.applier.fences.as_ref().expect("loaded");
        let mut from = self.applier.deadline_from.clone();
        let mut skipped = 0;
        let next = loop {
            let next = tables::next_deadline(&self.store, self.group, from.as_deref())
                .map_err(io::Error::other)?;
            match &next {
                Some((_, key)) if skipped < MAX_FENCED_DEADLINES_SKIPPED => {
                    if !tables::deadline_fenced(key, fences) {
                        break next;
                    }
                    skipped += 1;
                    from = Some(raftflow_storage::key_after(key));
                }
                _ => break next,
            }
        };
        // Nothing live from here on: later scans start past every possible deadline, until a
        // new one is written.
        self.applier.deadline_from = Some(match &next {
            Some((_, key)) => key.clone(),
            None => tables::deadline_key(u64::MAX, u8::MAX, ""),
        });
        self.signals
            .set_deadline(self.group, next.map(|(due, _)| due));
        Ok(())
    }

    /// Writes an apply's rows and the applied position in one batch (not synced: the log is).
    fn persist(&self, writes: &Writes) -> io::Result<()> {
        let mut batch = Batch::default();
        for (key, value) in writes {
            match value {
                Some(v) => self.store.put_state(&mut batch, self.group, key, v),
                None => self.store.delete_state(&mut batch, self.group, key),
            }
        }
        let applied = codec::encode(&self.applied)?;
        self.store
            .put_state(&mut batch, self.group, tables::APPLIED, &applied);
        Ok(self.store.write(batch)?)
    }
}

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = GroupSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let store = self.store.clone();
        // An error below leaves no cache, so the next apply starts an empty one: always correct.
        let cache = self.cache.take().unwrap_or_default();
        let rows = StoredRows {
            store: &store,
            group: self.group,
        };
        let mut tx = Tx::new(self.group, &rows, cache);
        let mut replies = Vec::new();
        let mut last_stamp = None;
        while let Some((entry, responder)) = entries.try_next().await? {
            if let Some(prev) = &self.applied.last_applied {
                // openraft applies in log order; a replayed or reordered entry would apply a
                // transition twice.
                assert!(
                    entry.log_id.index > prev.index,
                    "group {}: entry {} applied after {}",
                    self.group,
                    entry.log_id.index,
                    prev.index
                );
            }
            let outcome = match &entry.payload {
                EntryPayload::Blank => Outcome::Nothing,
                EntryPayload::Normal(stamped) => {
                    last_stamp = Some(stamped.at_ms);
                    let at = At {
                        now_ms: stamped.at_ms,
                        index: entry.log_id.index,
                    };
                    self.applier.run(&mut tx, at, &stamped.command)
                }
                EntryPayload::Membership(m) => {
                    self.applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Outcome::Nothing
                }
            };
            self.applied.last_applied = Some(entry.log_id);
            if let Some(r) = responder {
                replies.push((r, outcome));
            }
        }
        let (made_ready, deadlines_touched) = (tx.made_ready, tx.deadlines_touched);
        if let Some(low) = tx.lowest_deadline.take() {
            if self
                .applier
                .deadline_from
                .as_ref()
                .is_some_and(|from| low < *from)
            {
                self.applier.deadline_from = Some(low);
            }
        }
        let (writes, mut cache) = tx.finish();
        self.persist(&writes)?;
        cache.absorb(writes);
        self.cache = Some(cache);
        if let Some(stamp) = last_stamp {
            self.signals.observe_stamp(self.group, stamp);
        }
        if self.group == crate::META_GROUP {
            self.signals.meta_changed();
        }
        if made_ready {
            self.signals.task_ready();
        }
        if deadlines_touched {
            self.publish_deadline()?;
        }
        for (responder, outcome) in replies {
            responder.send(outcome);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        GroupSnapshotBuilder {
            group: self.group,
            store: self.store.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let Some(file) = snapshot else {
            return Err(io::Error::other(format!(
                "group {}: a snapshot without rows cannot be installed",
                self.group
            )));
        };
        self.cache = None;
        self.signals.forget_ready_floors(self.group);
        let (store, group) = (self.store.clone(), self.group);
        tokio::task::spawn_blocking(move || store.install_group_file(group, file))
            .await
            .map_err(io::Error::other)??;
        let reopened =
            GroupStateMachine::open(self.group, self.store.clone(), self.signals.clone())?;
        self.signals.task_ready();
        if reopened.applied.last_applied != meta.last_log_id {
            return Err(io::Error::other(format!(
                "group {}: snapshot rows applied {:?} but meta says {:?}",
                self.group, reopened.applied.last_applied, meta.last_log_id
            )));
        }
        self.applied = reopened.applied;
        self.applier.reset();
        if self.group == crate::META_GROUP {
            self.signals.meta_changed();
        }
        self.applier.deadline_from = reopened.applier.deadline_from;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        if self.applied.last_applied.is_none() {
            return Ok(None);
        }
        if !self.started.load(Ordering::Acquire) {
            return Ok(Some(Snapshot {
                meta: self.applied.snapshot_meta(),
                snapshot: None,
            }));
        }
        // Built fresh from the rows: always at or after any purge point, never stored twice.
        Ok(Some(export_snapshot(self.group, self.store.clone()).await?))
    }
}

/// Every row of `group` written to a file from one consistent RocksDB view (taken while apply
/// goes on), with the applied position the rows are at: what a follower installs.
async fn export_snapshot(group: u64, store: Arc<Store>) -> Result<Snapshot, io::Error> {
    let (file, applied) =
        tokio::task::spawn_blocking(move || store.export_group_file(group, tables::APPLIED))
            .await
            .map_err(io::Error::other)??;
    let applied: Applied = match applied {
        Some(v) => codec::decode(&v)?,
        None => Applied::default(),
    };
    tracing::info!(
        group,
        bytes = file.len(),
        at = ?applied.last_applied,
        "exported a snapshot to send"
    );
    Ok(Snapshot {
        meta: applied.snapshot_meta(),
        snapshot: Some(file),
    })
}

/// openraft's snapshot builder. openraft builds a snapshot every `snapshot_every` entries
/// only to learn how far it may purge the log: it keeps the meta and drops the data, and a
/// follower that needs a snapshot gets [`RaftStateMachine::get_current_snapshot`], built fresh
/// from the rows. The rows in RocksDB are the snapshot, so this reads just the applied row
/// instead of copying the group's whole state each time. It has no rows, so it could never be
/// installed by mistake.
pub struct GroupSnapshotBuilder {
    group: u64,
    store: Arc<Store>,
}

impl RaftSnapshotBuilder<TypeConfig> for GroupSnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        Ok(Snapshot {
            meta: read_applied(&self.store, self.group)?.snapshot_meta(),
            snapshot: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::stream;
    use openraft::storage::RaftStateMachine;

    use super::*;
    use crate::command::{Command, Stamped};
    use crate::ring::slot_of;

    const GROUP: u64 = 3;
    const DEF: &str = r#"{"name": "pp", "initial": "ping", "states": {"ping": {"on": {"flip": "pong"}}, "pong": {"on": {"flop": "ping"}}}}"#;

    fn entry(index: u64, command: Command) -> super::super::Entry {
        openraft::Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(Stamped {
                at_ms: 1_000 + index,
                command,
            }),
        }
    }

    /// Creates workflow `id` of the definition `json` (named `name`).
    fn create_of(index: u64, id: &str, name: &str, json: &str) -> super::super::Entry {
        entry(
            index,
            Command::CreateWorkflow {
                id: id.into(),
                definition: name.into(),
                version: 1,
                definition_json: json.into(),
                context_json: "{}".into(),
                fingerprint: id.into(),
            },
        )
    }

    fn create(index: u64) -> super::super::Entry {
        create_of(index, "wf", "pp", DEF)
    }

    fn flip(index: u64, expected: u64) -> super::super::Entry {
        entry(
            index,
            Command::Event {
                id: "wf".into(),
                event: "flip".into(),
                payload_json: None,
                expected_revision: Some(expected),
                request_id: None,
            },
        )
    }

    async fn apply(sm: &mut GroupStateMachine, entries: Vec<super::super::Entry>) {
        let s = stream::iter(entries.into_iter().map(|e| Ok((e, None))));
        sm.apply(s).await.unwrap();
    }

    fn revision(store: &Store) -> u64 {
        tables::read_workflow(store, GROUP, "wf")
            .unwrap()
            .unwrap()
            .workflow
            .revision
    }

    const TASK_DEF: &str = r#"{"name": "job", "initial": "work", "states": {"work": {"task": {"type": "t"}, "on": {"task.completed": "done"}}, "done": {"terminal": "succeeded"}}}"#;

    fn create_job(index: u64, id: &str) -> super::super::Entry {
        create_of(index, id, "job", TASK_DEF)
    }

    fn lease(index: u64, max: u32, lease_ms: u64) -> super::super::Entry {
        entry(
            index,
            Command::LeaseTasks {
                types: vec!["t".into()],
                worker: "w".into(),
                max,
                lease_ms: Some(lease_ms),
            },
        )
    }

    /// The workflows whose tasks wait in the ready queue, in queue order (read from the store,
    /// without any floor).
    fn queued(store: &Store) -> Vec<String> {
        store
            .scan_state(GROUP, &tables::ready_prefix("t"), None, 100)
            .unwrap()
            .into_iter()
            .map(|(k, _)| tables::task_of_ready_key(&k, "t"))
            .map(|task| {
                raftflow_workflow::task::workflow_of_task(&task)
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    fn ready(sm: &GroupStateMachine) -> bool {
        tables::has_ready(&sm.store, &sm.signals, GROUP, &["t".to_string()]).unwrap()
    }

    fn published_deadline(sm: &GroupStateMachine) -> Option<u64> {
        let d = sm.signals.deadlines();
        d.iter().find(|(g, _)| *g == GROUP).map(|(_, due)| *due)
    }

    /// Scans of the ready queue and of the deadline index start past what was taken or
    /// handled, and still see every task queued and every deadline written later, an earlier
    /// deadline included. (Entry `i` is stamped `1000 + i` ms.)
    #[tokio::test]
    async fn queue_and_deadline_scans_skip_what_is_gone_and_see_what_comes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sm = GroupStateMachine::open(GROUP, store.clone(), Default::default()).unwrap();
        apply(
            &mut sm,
            vec![
                create_job(1, "j1"),
                create_job(2, "j2"),
                create_job(3, "j3"),
            ],
        )
        .await;
        assert_eq!(queued(&store), ["j1", "j2", "j3"]);
        assert!(ready(&sm));

        // Oldest first; the floor moves past the taken key.
        apply(&mut sm, vec![lease(4, 1, 60_000)]).await;
        assert_eq!(queued(&store), ["j2", "j3"]);
        assert!(sm.signals.ready_floor(GROUP, "t").is_some());
        assert_eq!(published_deadline(&sm), Some(1004 + 60_000));

        // A lease that ends before every deadline so far: the deadline scan must find it.
        apply(&mut sm, vec![lease(5, 1, 1)]).await;
        assert_eq!(queued(&store), ["j3"]);
        assert_eq!(published_deadline(&sm), Some(1005 + 1));

        apply(&mut sm, vec![lease(6, 10, 60_000)]).await;
        assert!(queued(&store).is_empty());
        assert!(!ready(&sm));
        // The poll check reads from the floor on: a queue row planted before it (which the
        // floor's reasoning says cannot be live) is not read.
        let planted = tables::ready_key("t", 0, "j0/task");
        let mut batch = raftflow_storage::Batch::default();
        store.put_state(&mut batch, GROUP, &planted, b"");
        store.write(batch).unwrap();
        assert!(!ready(&sm), "the scan started before the floor");
        let mut batch = raftflow_storage::Batch::default();
        store.delete_state(&mut batch, GROUP, &planted);
        store.write(batch).unwrap();
        // The deadline scans start at the first live deadline, j2's lease.
        let from = sm
            .applier
            .deadline_from
            .as_deref()
            .expect("a deadline scan ran");
        assert_eq!(tables::parse_deadline_key(from).0, 1005 + 1);

        // A task queued after the floor is seen by the poll check and by the next lease.
        apply(&mut sm, vec![create_job(7, "j4")]).await;
        assert!(ready(&sm));
        apply(&mut sm, vec![lease(8, 10, 60_000)]).await;
        assert!(queued(&store).is_empty());
        assert!(!ready(&sm));

        // j2's lease expires: its task is queued again, after the floor, and leased again.
        apply(&mut sm, vec![entry(20, Command::Tick)]).await;
        assert_eq!(queued(&store), ["j2"]);
        assert!(ready(&sm));
        assert_eq!(published_deadline(&sm), Some(1004 + 60_000));
        apply(&mut sm, vec![lease(21, 10, 60_000)]).await;
        assert!(queued(&store).is_empty());
        assert_eq!(published_deadline(&sm), Some(1004 + 60_000));
    }

    /// Every row of `group` but the applied position.
    fn rows_of(store: &Store, group: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        store
            .scan_state(group, b"", None, usize::MAX >> 1)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.as_slice() != tables::APPLIED)
            .collect()
    }

    /// What a slot move carries of workflows `ids` from `store`'s `group`.
    fn moved_rows(store: &Store, group: u64, ids: &[&str]) -> Vec<(Vec<u8>, Vec<u8>)> {
        rows_of(store, group)
            .into_iter()
            .filter(|(k, _)| {
                k.starts_with(b"p/")
                    || tables::workflow_of_key(k).is_some_and(|id| ids.contains(&id.as_str()))
            })
            .collect()
    }

    /// Apply is a function of the rows and the entries alone: however the entries are split
    /// into apply calls, and whether the replica restarted in between (losing the scan hints it
    /// keeps in memory), the rows come out the same. Here a lease steps over a fenced task and
    /// a deadline scan over a fenced deadline, so the hints go past them; the entry that lifts
    /// the fences is followed by a lease and a tick that must find them, in the same batch or
    /// not. (Before, a batch holding the lift leased and ticked from the stale hints: the
    /// restarted node 1 of a failure test leased other tasks than its peers did.)
    #[tokio::test]
    async fn replicas_reach_the_same_rows_however_entries_are_batched() {
        // The source group: m2's task leased for 5 ms, m1's ready.
        let src_dir = tempfile::tempdir().unwrap();
        let src_store = Store::open(src_dir.path()).unwrap();
        let mut src = GroupStateMachine::open(9, src_store.clone(), Default::default()).unwrap();
        apply(&mut src, vec![create_job(1, "m2")]).await;
        apply(&mut src, vec![lease(2, 1, 5)]).await;
        apply(&mut src, vec![create_job(3, "m1")]).await;
        let rows = moved_rows(&src_store, 9, &["m1", "m2"]);
        let slots = vec![slot_of("m1"), slot_of("m2")];
        assert!(!slots.contains(&slot_of("j1")), "j1 is served all along");

        let entries = || {
            vec![
                entry(
                    1,
                    Command::ReceiveSlots {
                        move_id: 1,
                        from: 9,
                        slots: slots.clone(),
                    },
                ),
                entry(
                    2,
                    Command::ImportRows {
                        move_id: 1,
                        rows: rows.clone(),
                        token_floor: 100,
                    },
                ),
                create_job(3, "j1"),
                // Steps over m1 (fenced) to take j1; the deadline hint goes past m2's lease.
                lease(4, 1, 60_000),
                entry(5, Command::ActivateSlots { move_id: 1 }),
                // m1 is ready and served now.
                lease(6, 1, 60_000),
                // m2's lease (due at 1007) expires: its task is ready again.
                entry(7, Command::Tick),
                lease(8, 10, 60_000),
            ]
        };
        let leased = |store: &Store| -> Vec<String> {
            ["m1", "m2", "j1"]
                .iter()
                .filter(|id| {
                    let t = tables::read_task(store, GROUP, &format!("{id}:1")).unwrap();
                    // Tokens issued here are above the floor the move set.
                    t.unwrap().task.token > 100
                })
                .map(|id| id.to_string())
                .collect()
        };

        let one_dir = tempfile::tempdir().unwrap();
        let one = Store::open(one_dir.path()).unwrap();
        let mut sm = GroupStateMachine::open(GROUP, one.clone(), Default::default()).unwrap();
        apply(&mut sm, entries()).await;

        let each_dir = tempfile::tempdir().unwrap();
        let each = Store::open(each_dir.path()).unwrap();
        let mut sm = GroupStateMachine::open(GROUP, each.clone(), Default::default()).unwrap();
        for e in entries() {
            apply(&mut sm, vec![e]).await;
        }

        let restarted_dir = tempfile::tempdir().unwrap();
        let restarted = Store::open(restarted_dir.path()).unwrap();
        for e in entries() {
            let mut sm =
                GroupStateMachine::open(GROUP, restarted.clone(), Default::default()).unwrap();
            apply(&mut sm, vec![e]).await;
        }

        assert_eq!(leased(&each), ["m1", "m2", "j1"], "every task was leased");
        assert!(queued(&each).is_empty());
        assert_eq!(
            rows_of(&one, GROUP),
            rows_of(&each, GROUP),
            "one batch vs one each"
        );
        assert_eq!(
            rows_of(&restarted, GROUP),
            rows_of(&each, GROUP),
            "restarted between entries vs not"
        );
    }

    fn command_of(e: super::super::Entry) -> Command {
        match e.payload {
            EntryPayload::Normal(stamped) => stamped.command,
            _ => unreachable!("a normal entry"),
        }
    }

    #[tokio::test]
    async fn a_batch_applies_its_commands_in_order_each_with_its_own_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sm = GroupStateMachine::open(GROUP, store.clone(), Default::default()).unwrap();
        let missing = Command::Cancel {
            id: "nobody".into(),
            reason: None,
            request_id: None,
        };
        let commands = vec![
            command_of(create(1)),
            command_of(flip(1, 1)),
            // Expects the revision the previous command of the entry already moved on from.
            command_of(flip(1, 1)),
            missing,
        ];
        let batch = entry(1, Command::Batch(commands));
        let EntryPayload::Normal(stamped) = &batch.payload else {
            unreachable!()
        };
        let rows = StoredRows {
            store: &store,
            group: GROUP,
        };
        let mut tx = Tx::new(GROUP, &rows, RowCache::default());
        let at = At {
            now_ms: stamped.at_ms,
            index: 1,
        };
        let Outcome::Batch(outcomes) = sm.applier.run(&mut tx, at, &stamped.command) else {
            panic!("a batch has a batch of outcomes");
        };
        drop(tx);
        let states: Vec<String> = outcomes
            .iter()
            .map(|o| match o {
                Outcome::Workflow { workflow, created } => {
                    format!("{} r{} {created}", workflow.state, workflow.revision)
                }
                other => other.to_string(),
            })
            .collect();
        assert_eq!(
            states,
            [
                "ping r1 true",
                "pong r2 false",
                "refused: expected revision 1, workflow is at 2",
                "refused: workflow \"nobody\" not found",
            ]
        );

        // Through `apply`, the entry stores what its commands wrote, in one write.
        apply(&mut sm, vec![batch]).await;
        assert_eq!(revision(&store), 2);
        assert_eq!(
            read_applied(&store, GROUP)
                .unwrap()
                .last_applied
                .map(|l| l.index),
            Some(1)
        );
        // The next entry reads what the batch stored: pong at revision 2.
        let mut flop = flip(2, 2);
        if let EntryPayload::Normal(Stamped {
            command: Command::Event { event, .. },
            ..
        }) = &mut flop.payload
        {
            *event = "flop".into();
        }
        apply(&mut sm, vec![flop]).await;
        assert_eq!(revision(&store), 3);
    }

    #[tokio::test]
    #[should_panic(expected = "batches a lease_tasks command")]
    async fn a_lease_never_shares_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sm = GroupStateMachine::open(GROUP, store.clone(), Default::default()).unwrap();
        let lease = command_of(lease(1, 1, 1_000));
        assert!(!lease.batchable());
        apply(&mut sm, vec![entry(1, Command::Batch(vec![lease]))]).await;
    }

    /// Applies read the workflow rows they wrote from the cache, and an installed snapshot
    /// empties it: the next command sees the snapshot's row, not the cached later one.
    #[tokio::test]
    async fn the_row_cache_serves_written_rows_and_an_installed_snapshot_empties_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sm = GroupStateMachine::open(GROUP, store.clone(), Default::default()).unwrap();
        apply(&mut sm, vec![create(1)]).await;
        let cached = |sm: &GroupStateMachine| sm.cache.as_ref().map_or(0, |c| c.len());
        assert_eq!(cached(&sm), 1, "the new workflow row is cached");
        let at_start = sm.get_current_snapshot().await.unwrap().unwrap();
        assert!(
            at_start.snapshot.is_none(),
            "only the position while Raft starts"
        );
        assert!(sm.install_snapshot(&at_start.meta, None).await.is_err());
        sm.started.store(true, Ordering::Release);
        let at_1 = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(at_1.meta.last_log_id, at_start.meta.last_log_id);

        apply(&mut sm, vec![flip(2, 1)]).await;
        assert_eq!(revision(&store), 2);
        // The cached row is what the next command reads: hide the stored one to prove it.
        let mut batch = raftflow_storage::Batch::default();
        store.delete_state(&mut batch, GROUP, &tables::workflow_key("wf"));
        store.write(batch).unwrap();
        let rows = StoredRows {
            store: &store,
            group: GROUP,
        };
        let tx = Tx::new(GROUP, &rows, sm.cache.take().unwrap());
        let rec: tables::WorkflowRecord = tx.get_decoded(&tables::workflow_key("wf")).unwrap();
        assert_eq!(rec.workflow.revision, 2);
        sm.cache = Some(tx.finish().1);

        sm.install_snapshot(&at_1.meta, at_1.snapshot)
            .await
            .unwrap();
        assert_eq!(cached(&sm), 0);
        assert_eq!(revision(&store), 1);
        // From revision 1 again: a stale cached revision 2 would refuse this event.
        apply(&mut sm, vec![flip(2, 1)]).await;
        assert_eq!(revision(&store), 2);
    }
}
