//! openraft's `RaftStateMachine` for one group: applies workflow commands to the group's rows.
//!
//! Each `apply` call writes every row it changed, the history rows, dedup records and the
//! applied log id in one RocksDB batch, and answers the proposers only after that write, so a
//! response is never ahead of what a read on this node sees.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use raftflow_storage::{codec, Store};
use raftflow_workflow::{self as workflow, Definition, EventOrigin, JsonObject};
use serde::{Deserialize, Serialize};

use super::engine::At;
use super::tx::{RowCache, Tx};
use super::{LogId, SnapshotMeta, StoredMembership, TypeConfig};
use crate::command::{Command, DefinitionVersion, Outcome, Refusal, Stamped};
use crate::signals::Signals;
use crate::tables::{self, WorkflowRecord};

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>;

/// What `a` holds: how far this group's rows have applied the log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership,
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

pub struct GroupStateMachine {
    pub(super) group: u64,
    store: Arc<Store>,
    applied: Applied,
    /// Parsed pinned definitions: `(name, version)` -> definition. Versions are immutable.
    definitions: HashMap<(String, u32), Arc<Definition>>,
    /// The workflow and task rows this group wrote last (see [`RowCache`]); lent to each
    /// apply's transaction, so `None` while one runs or after one failed (then empty again).
    cache: Option<RowCache>,
    pub(super) signals: Arc<Signals>,
    /// Where scans of the deadline index start: no live deadline sorts before it. Handled
    /// deadlines are deleted from the front of the index, and RocksDB's iterator steps over
    /// each deletion marker until compaction; this skips them. A write of an earlier
    /// deadline moves it back. `None`: from the start.
    pub(super) deadline_from: Option<Vec<u8>>,
}

impl GroupStateMachine {
    pub fn open(group: u64, store: Arc<Store>, signals: Arc<Signals>) -> io::Result<Self> {
        let applied = read_applied(&store, group)?;
        let mut sm = GroupStateMachine {
            group,
            store,
            applied,
            definitions: HashMap::new(),
            cache: None,
            signals,
            deadline_from: None,
        };
        sm.publish_deadline()?;
        Ok(sm)
    }

    /// Tells the leader's clock when this group next needs a tick.
    fn publish_deadline(&mut self) -> io::Result<()> {
        let next = tables::next_deadline(&self.store, self.group, self.deadline_from.as_deref())
            .map_err(io::Error::other)?;
        // Nothing live from here on: later scans start past every possible deadline, until a
        // new one is written.
        self.deadline_from = Some(match &next {
            Some((_, key)) => key.clone(),
            None => tables::deadline_key(u64::MAX, u8::MAX, ""),
        });
        self.signals
            .set_deadline(self.group, next.map(|(due, _)| due));
        Ok(())
    }

    pub(super) fn definition(&mut self, tx: &Tx, name: &str, version: u32) -> Arc<Definition> {
        let key = (name.to_string(), version);
        if let Some(d) = self.definitions.get(&key) {
            return d.clone();
        }
        let bytes = tx
            .get(&tables::pinned_key(name, version))
            .unwrap_or_else(|| {
                panic!(
                    "group {}: definition {name} v{version} of a stored workflow is missing",
                    self.group
                )
            });
        let json: String = codec::decode(&bytes).expect("pinned definition decodes");
        let def: Definition = serde_json::from_str(&json).expect("pinned definition parses");
        let def = Arc::new(def);
        self.definitions.insert(key, def.clone());
        def
    }

    fn execute(&mut self, tx: &mut Tx, index: u64, stamped: &Stamped) -> Outcome {
        let at = At {
            now_ms: stamped.at_ms,
            index,
        };
        self.run(tx, at, &stamped.command)
    }

    /// Applies one command at `at`. A batch's commands apply in order, each reading what the
    /// ones before it wrote, exactly as if each had an entry of its own at the same time.
    fn run(&mut self, tx: &mut Tx, at: At, command: &Command) -> Outcome {
        let now = at.now_ms;
        match command {
            Command::PutDefinition { name, json } => put_definition(tx, name, json, now),
            Command::CreateWorkflow {
                id,
                definition,
                version,
                definition_json,
                context_json,
                fingerprint,
            } => {
                if let Some(rec) = tx.get_decoded::<WorkflowRecord>(&tables::workflow_key(id)) {
                    return if &rec.fingerprint == fingerprint {
                        Outcome::Workflow {
                            workflow: rec.workflow,
                            created: false,
                        }
                    } else {
                        Outcome::Refused(Refusal::WorkflowExists { id: id.clone() })
                    };
                }
                let pinned = tables::pinned_key(definition, *version);
                if tx.get(&pinned).is_none() {
                    tx.put_encoded(pinned, definition_json);
                }
                let def = self.definition(tx, definition, *version);
                let context: JsonObject =
                    serde_json::from_str(context_json).expect("leader sends an object context");
                let (wf, row) = workflow::create(&def, *version, id, context, now);
                tx.put_encoded(tables::history_key(id, row.revision), &row);
                let mut rec = WorkflowRecord {
                    workflow: wf,
                    fingerprint: fingerprint.clone(),
                    step: None,
                };
                super::engine::open_step(tx, &mut rec, &def, at);
                tx.put_encoded(tables::workflow_key(id), &rec);
                Outcome::Workflow {
                    workflow: rec.workflow,
                    created: true,
                }
            }
            Command::Event {
                id,
                event,
                payload_json,
                expected_revision,
                request_id,
            } => self.transition(tx, at, id, request_id.as_deref(), |def, wf| {
                let payload = payload_json
                    .as_deref()
                    .map(|p| serde_json::from_str(p).expect("leader sends an object payload"));
                workflow::fire_event(
                    def,
                    wf,
                    event,
                    payload,
                    *expected_revision,
                    EventOrigin::Client,
                    now,
                )
            }),
            Command::Cancel {
                id,
                reason,
                request_id,
            } => self.transition(tx, at, id, request_id.as_deref(), |_, wf| {
                workflow::cancel(wf, reason.clone(), now)
            }),
            Command::LeaseTasks {
                types,
                worker,
                max,
                lease_ms,
            } => self.lease_tasks(tx, types, worker, *max, *lease_ms, at),
            Command::CompleteTask {
                task_id,
                token,
                output_json,
            } => self.complete_task(tx, task_id, *token, output_json.as_deref(), at),
            Command::FailTask {
                task_id,
                token,
                error,
                retryable,
            } => self.fail_task(tx, task_id, *token, error, *retryable, at),
            Command::HeartbeatTask {
                task_id,
                token,
                lease_ms,
            } => self.heartbeat_task(tx, task_id, *token, *lease_ms, at),
            Command::Tick => self.tick(tx, at),
            Command::Batch(commands) => Outcome::Batch(
                commands
                    .iter()
                    .map(|command| {
                        assert!(
                            command.batchable(),
                            "group {}: entry {} batches a {} command",
                            self.group,
                            at.index,
                            command.kind()
                        );
                        self.run(tx, at, command)
                    })
                    .collect(),
            ),
        }
    }

    /// Loads workflow `id`, answers a repeated `request_id` with its first outcome, else runs
    /// `step` and stores the result.
    fn transition(
        &mut self,
        tx: &mut Tx,
        at: At,
        id: &str,
        request_id: Option<&str>,
        step: impl FnOnce(
            &Definition,
            &workflow::Workflow,
        )
            -> Result<(workflow::Workflow, workflow::HistoryRow), workflow::Rejection>,
    ) -> Outcome {
        let Some(mut rec) = tx.get_decoded::<WorkflowRecord>(&tables::workflow_key(id)) else {
            return Outcome::Refused(Refusal::WorkflowNotFound { id: id.to_string() });
        };
        let dedup = request_id
            .filter(|_| crate::mutant::active() != crate::mutant::Mutant::SkipDedup)
            .map(|r| tables::dedup_key(id, r));
        if let Some(key) = &dedup {
            if let Some(first) = tx.get_decoded::<Outcome>(key) {
                return first;
            }
        }
        let def = self.definition(tx, &rec.workflow.definition, rec.workflow.version);
        let outcome = match step(&def, &rec.workflow) {
            Ok((next, row)) => {
                self.advance_workflow(tx, &mut rec, &def, next, row, true, at);
                Outcome::Workflow {
                    workflow: rec.workflow,
                    created: false,
                }
            }
            Err(rejection) => Outcome::Refused(rejection.into()),
        };
        if let Some(key) = dedup {
            tx.put_encoded(key, &outcome);
        }
        outcome
    }
}

fn put_definition(tx: &mut Tx, name: &str, json: &str, now: u64) -> Outcome {
    let latest: Option<u32> = tx.get_decoded(&tables::latest_key(name));
    if let Some(v) = latest {
        let stored: DefinitionVersion = tx
            .get_decoded(&tables::definition_key(name, v))
            .expect("latest definition version is stored");
        if stored.json == json {
            return Outcome::Definition {
                stored,
                created: false,
            };
        }
    }
    let stored = DefinitionVersion {
        name: name.to_string(),
        version: latest.unwrap_or(0) + 1,
        created_at_ms: now,
        json: json.to_string(),
    };
    tx.put_encoded(tables::definition_key(name, stored.version), &stored);
    tx.put_encoded(tables::latest_key(name), &stored.version);
    Outcome::Definition {
        stored,
        created: true,
    }
}

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotData = Vec<u8>;
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
        let mut tx = Tx::new(self.group, &store, cache);
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
                    self.execute(&mut tx, entry.log_id.index, stamped)
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
        let applied = codec::encode(&self.applied)?;
        store.put_state(&mut tx.batch, self.group, tables::APPLIED, &applied);
        let (made_ready, deadlines_touched) = (tx.made_ready, tx.deadlines_touched);
        if let Some(low) = tx.lowest_deadline.take() {
            if self.deadline_from.as_ref().is_some_and(|from| low < *from) {
                self.deadline_from = Some(low);
            }
        }
        self.cache = Some(tx.commit()?);
        if let Some(stamp) = last_stamp {
            self.signals.observe_stamp(self.group, stamp);
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
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let rows: Vec<(Vec<u8>, Vec<u8>)> = codec::decode(&snapshot)?;
        self.cache = None;
        self.signals.forget_ready_floors(self.group);
        self.store.replace_group_state(self.group, &rows)?;
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
        self.deadline_from = reopened.deadline_from;
        self.definitions.clear();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        if self.applied.last_applied.is_none() {
            return Ok(None);
        }
        // Built fresh from the rows: always at or after any purge point, never stored twice.
        Ok(Some(export_snapshot(self.group, self.store.clone()).await?))
    }
}

/// Every row of `group` from one consistent RocksDB view (taken while apply goes on), with
/// the applied position the rows are at: what a follower installs.
async fn export_snapshot(group: u64, store: Arc<Store>) -> Result<Snapshot, io::Error> {
    let rows = tokio::task::spawn_blocking(move || store.export_group_state(group))
        .await
        .map_err(io::Error::other)??;
    let applied: Applied = match rows.iter().find(|(k, _)| k.as_slice() == tables::APPLIED) {
        Some((_, v)) => codec::decode(v)?,
        None => Applied::default(),
    };
    Ok(Snapshot {
        meta: SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
        },
        snapshot: codec::encode(&rows)?,
    })
}

/// openraft's snapshot builder. openraft builds a snapshot every `snapshot_every` entries
/// only to learn how far it may purge the log: it keeps the meta and drops the data, and a
/// follower that needs a snapshot gets [`RaftStateMachine::get_current_snapshot`], built fresh
/// from the rows. The rows in RocksDB are the snapshot, so this reads just the applied row
/// instead of copying the group's whole state each time. Its empty data does not decode, so
/// it could never be installed by mistake.
pub struct GroupSnapshotBuilder {
    group: u64,
    store: Arc<Store>,
}

impl RaftSnapshotBuilder<TypeConfig> for GroupSnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let applied = read_applied(&self.store, self.group)?;
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership,
            },
            snapshot: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::stream;
    use openraft::storage::RaftStateMachine;

    use super::*;

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
        let from = sm.deadline_from.as_deref().expect("a deadline scan ran");
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
        let mut tx = Tx::new(GROUP, &store, RowCache::default());
        let Outcome::Batch(outcomes) = sm.execute(&mut tx, 1, stamped) else {
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
        let at_1 = sm.get_current_snapshot().await.unwrap().unwrap();

        apply(&mut sm, vec![flip(2, 1)]).await;
        assert_eq!(revision(&store), 2);
        // The cached row is what the next command reads: hide the stored one to prove it.
        let mut batch = raftflow_storage::Batch::default();
        store.delete_state(&mut batch, GROUP, &tables::workflow_key("wf"));
        store.write(batch).unwrap();
        let tx = Tx::new(GROUP, &store, sm.cache.take().unwrap());
        let rec: WorkflowRecord = tx.get_decoded(&tables::workflow_key("wf")).unwrap();
        assert_eq!(rec.workflow.revision, 2);
        sm.cache = Some(tx.commit().unwrap());

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
