//! Apply: what a committed command does to its group's rows. Pure of IO but for the rows it
//! reads and writes through a [`Tx`], and of time but for the entry's stamp: every replica that
//! applies the same entries to the same rows writes the same rows and answers the same
//! outcomes. The Raft state machine (`consensus::state_machine`) feeds it entries and persists
//! what it wrote; the unit tests here drive it over rows in memory, without RocksDB or openraft.

mod slots;
mod tasks;
#[cfg(test)]
mod tests;
pub(crate) mod tx;

use std::collections::HashMap;
use std::sync::Arc;

use raftflow_storage::codec;
use raftflow_workflow::{self as workflow, Definition, EventOrigin, JsonObject};

use crate::command::{Command, DefinitionVersion, Outcome, Refusal};
use crate::signals::Signals;
use crate::tables::{self, WorkflowRecord};

mod meta;

pub(crate) use tasks::At;
pub(crate) use tx::{RowCache, StateRows, Tx, Writes};

/// One group's apply logic and what it remembers between entries.
pub(crate) struct Applier {
    pub(crate) group: u64,
    /// Parsed pinned definitions: `(name, version)` -> definition. Versions are immutable.
    definitions: HashMap<(String, u32), Arc<Definition>>,
    pub(crate) signals: Arc<Signals>,
    /// Where scans of the deadline index start: no live deadline sorts before it. Handled
    /// deadlines are deleted from the front of the index, and RocksDB's iterator steps over
    /// each deletion marker until compaction; this skips them. A write of an earlier
    /// deadline moves it back. `None`: from the start.
    pub(crate) deadline_from: Option<Vec<u8>>,
    /// The group's slot fences (`x/` rows), loaded at first use.
    pub(crate) fences: Option<std::collections::BTreeMap<u32, tables::SlotFence>>,
    /// The lease token base (`k`), loaded at first use.
    pub(crate) token_base: Option<u64>,
    /// Who sent the command being applied (see [`Command::By`]): the history rows it writes
    /// name them.
    caller: Option<String>,
}

impl Applier {
    pub(crate) fn new(group: u64, signals: Arc<Signals>) -> Self {
        Applier {
            group,
            definitions: HashMap::new(),
            signals,
            deadline_from: None,
            fences: None,
            token_base: None,
            caller: None,
        }
    }

    /// Forgets what it remembered of the rows (after a snapshot replaced them).
    pub(crate) fn reset(&mut self) {
        self.definitions.clear();
        self.deadline_from = None;
        self.fences = None;
        self.token_base = None;
    }

    fn definition(&mut self, tx: &Tx, name: &str, version: u32) -> Arc<Definition> {
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

    /// Applies one command at `at`: the entry's stamp and index. A batch's commands apply in order, each reading what the
    /// ones before it wrote, exactly as if each had an entry of its own at the same time.
    pub(crate) fn run(&mut self, tx: &mut Tx, at: At, command: &Command) -> Outcome {
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
                if let Some(moved) = self.moved(tx, id) {
                    return moved;
                }
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
                self.put_history(tx, id, &row);
                let mut rec = WorkflowRecord {
                    workflow: wf,
                    fingerprint: fingerprint.clone(),
                    step: None,
                };
                tasks::open_step(tx, &mut rec, &def, at);
                tx.put_workflow(tables::workflow_key(id), &rec);
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
                let payload = payload_json.as_deref().map(|p| logged_object("payload", p));
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
            Command::RegisterNode { id, addr } => register_node(tx, *id, addr, now),
            Command::SetNode { id, addr, state } => set_node(tx, *id, addr, *state, now),
            Command::SetPlacement {
                placement,
                expected,
            } => {
                let key = tables::placement_key(placement.group);
                let current: Option<tables::Placement> = tx.get_decoded(&key);
                if current != *expected {
                    return Outcome::Refused(Refusal::PlacementChanged {
                        group: placement.group,
                    });
                }
                tx.put_encoded(key, placement);
                Outcome::Nothing
            }
            Command::AddGroup { placement } => meta::add_group(tx, placement, now),
            Command::SetGroupState { group, state } => {
                meta::set_group_state(tx, *group, *state, now)
            }
            Command::InitSlotTable { table } => {
                if tx.get(tables::SLOT_TABLE).is_none() {
                    tx.put_encoded(tables::SLOT_TABLE.to_vec(), table);
                }
                Outcome::Nothing
            }
            Command::StartSlotMove { slot_move } => meta::start_slot_move(tx, slot_move, now),
            Command::CommitSlotMove { move_id } => meta::commit_slot_move(tx, *move_id),
            Command::EndSlotMove { move_id } => meta::end_slot_move(tx, *move_id),
            Command::FreezeSlots { move_id, to, slots } => {
                self.freeze_slots(tx, *move_id, *to, slots)
            }
            Command::ReceiveSlots {
                move_id,
                from,
                slots,
            } => self.receive_slots(tx, *move_id, *from, slots),
            Command::ImportRows {
                move_id,
                rows,
                token_floor,
            } => self.import_rows(tx, at, *move_id, rows, *token_floor),
            Command::ActivateSlots { move_id } => self.activate_slots(tx, *move_id),
            Command::DropSlotRows {
                move_id,
                after,
                limit,
            } => self.drop_slot_rows(tx, *move_id, after.as_deref(), *limit),
            Command::By { caller, command } => {
                let outer = self.caller.replace(caller.clone());
                let outcome = self.run(tx, at, command);
                self.caller = outer;
                outcome
            }
        }
    }

    /// Stores workflow `id`'s history row `row`, and who caused it when a caller sent the
    /// command being applied.
    pub(crate) fn put_history(&self, tx: &mut Tx, id: &str, row: &workflow::HistoryRow) {
        tx.put_encoded(tables::history_key(id, row.revision), row);
        if let Some(caller) = &self.caller {
            tx.put_encoded(tables::history_caller_key(id, row.revision), caller);
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
        if let Some(moved) = self.moved(tx, id) {
            return moved;
        }
        let Some(mut rec) = tx.take_workflow(&tables::workflow_key(id)) else {
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

/// An event's payload or a task's output as the log carries it: the canonical text of a JSON
/// object, as the API wrote it from the request's object (`object_text`).
pub(crate) fn logged_object(what: &str, text: &str) -> workflow::Context {
    workflow::Context::from_canonical(text.to_string())
        .unwrap_or_else(|e| panic!("the leader logs an object as the {what}: {e}"))
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

fn register_node(tx: &mut Tx, id: u64, addr: &crate::NodeAddr, now: u64) -> Outcome {
    if let Some(node) = tx.get_decoded::<tables::NodeRecord>(&tables::node_key(id)) {
        return if node.state != tables::NodeState::Removed && node.addr == *addr {
            Outcome::Node {
                node,
                created: false,
            }
        } else if node.state == tables::NodeState::Removed {
            Outcome::Refused(Refusal::NodeExists {
                id,
                reason: "was removed; a removed id is never used again".into(),
            })
        } else {
            Outcome::Refused(Refusal::NodeExists {
                id,
                reason: format!(
                    "is already a member with client address {} and peer address {}",
                    node.addr.client, node.addr.peer
                ),
            })
        };
    }
    let node = tables::NodeRecord {
        id,
        addr: addr.clone(),
        state: tables::NodeState::Joining,
        since_ms: now,
    };
    tx.put_encoded(tables::node_key(id), &node);
    Outcome::Node {
        node,
        created: true,
    }
}

fn set_node(
    tx: &mut Tx,
    id: u64,
    addr: &crate::NodeAddr,
    state: tables::NodeState,
    now: u64,
) -> Outcome {
    let old = tx.get_decoded::<tables::NodeRecord>(&tables::node_key(id));
    if let Some(old) = &old {
        if old.state == tables::NodeState::Removed || (old.state == state && old.addr == *addr) {
            return Outcome::Node {
                node: old.clone(),
                created: false,
            };
        }
    }
    let node = tables::NodeRecord {
        id,
        addr: addr.clone(),
        state,
        since_ms: now,
    };
    tx.put_encoded(tables::node_key(id), &node);
    Outcome::Node {
        node,
        created: false,
    }
}
