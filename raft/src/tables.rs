//! The state-machine tables inside a group's key range, and typed reads of them.
//!
//! | key                          | value                         | group        |
//! |------------------------------|-------------------------------|--------------|
//! | `a`                          | applied log id + membership   | every group  |
//! | `w/{id}`                     | [`WorkflowRecord`]            | data groups  |
//! | `h/{id}\0{revision u64 BE}`  | [`HistoryRow`]                | data groups  |
//! | `r/{id}\0{request_id}`       | the first [`Outcome`]         | data groups  |
//! | `p/{name}\0{version u32 BE}` | pinned definition JSON        | data groups  |
//! | `d/{name}\0{version u32 BE}` | [`DefinitionVersion`]         | meta group   |
//! | `l/{name}`                   | latest version (u32)          | meta group   |
//!
//! Ids and names never contain `\0` (their alphabets exclude it), so `\0` ends them safely.

use serde::{Deserialize, Serialize};

use raftflow_storage::{codec, Store};
use raftflow_workflow::{HistoryRow, Workflow};

use crate::command::DefinitionVersion;
use crate::Result;

pub const APPLIED: &[u8] = b"a";
pub const WORKFLOWS: &[u8] = b"w/";
const HISTORY: &[u8] = b"h/";
const DEDUP: &[u8] = b"r/";
const PINNED: &[u8] = b"p/";
pub const DEFINITIONS: &[u8] = b"d/";
pub const LATEST: &[u8] = b"l/";

/// A workflow as stored: the workflow and the fingerprint of the request that created it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    pub workflow: Workflow,
    pub fingerprint: String,
}

fn join(table: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = table.to_vec();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

pub fn workflow_key(id: &str) -> Vec<u8> {
    join(WORKFLOWS, &[id.as_bytes()])
}

pub fn history_key(id: &str, revision: u64) -> Vec<u8> {
    join(HISTORY, &[id.as_bytes(), &revision.to_be_bytes()])
}

pub fn history_prefix(id: &str) -> Vec<u8> {
    let mut k = join(HISTORY, &[id.as_bytes()]);
    k.push(0);
    k
}

pub fn dedup_key(id: &str, request_id: &str) -> Vec<u8> {
    join(DEDUP, &[id.as_bytes(), request_id.as_bytes()])
}

pub fn pinned_key(name: &str, version: u32) -> Vec<u8> {
    join(PINNED, &[name.as_bytes(), &version.to_be_bytes()])
}

pub fn definition_key(name: &str, version: u32) -> Vec<u8> {
    join(DEFINITIONS, &[name.as_bytes(), &version.to_be_bytes()])
}

pub fn latest_key(name: &str) -> Vec<u8> {
    join(LATEST, &[name.as_bytes()])
}

fn get<T: serde::de::DeserializeOwned>(store: &Store, group: u64, key: &[u8]) -> Result<Option<T>> {
    match store.get_state(group, key)? {
        Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
        None => Ok(None),
    }
}

pub fn read_workflow(store: &Store, group: u64, id: &str) -> Result<Option<WorkflowRecord>> {
    get(store, group, &workflow_key(id))
}

pub fn read_history(store: &Store, group: u64, id: &str, limit: usize) -> Result<Vec<HistoryRow>> {
    store
        .scan_state(group, &history_prefix(id), None, limit)?
        .into_iter()
        .map(|(_, v)| Ok(codec::decode(&v)?))
        .collect()
}

/// Up to `limit` workflows of `group` with ids after `after`, in id order.
pub fn scan_workflows(
    store: &Store,
    group: u64,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<WorkflowRecord>> {
    let after_key = after.map(workflow_key);
    store
        .scan_state(group, WORKFLOWS, after_key.as_deref(), limit)?
        .into_iter()
        .map(|(_, v)| Ok(codec::decode(&v)?))
        .collect()
}

/// The definition a data group pinned for its workflows of `name` v`version`.
pub fn read_pinned(
    store: &Store,
    group: u64,
    name: &str,
    version: u32,
) -> Result<Option<raftflow_workflow::Definition>> {
    let json: Option<String> = get(store, group, &pinned_key(name, version))?;
    Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
}

pub fn read_latest_version(store: &Store, group: u64, name: &str) -> Result<Option<u32>> {
    get(store, group, &latest_key(name))
}

pub fn read_definition(
    store: &Store,
    group: u64,
    name: &str,
    version: u32,
) -> Result<Option<DefinitionVersion>> {
    get(store, group, &definition_key(name, version))
}

/// Every definition name with its latest version, in name order.
pub fn list_definitions(store: &Store, group: u64) -> Result<Vec<(String, u32)>> {
    store
        .scan_state(group, LATEST, None, usize::MAX)?
        .into_iter()
        .map(|(k, v)| {
            let name = String::from_utf8_lossy(&k[LATEST.len()..]).into_owned();
            Ok((name, codec::decode(&v)?))
        })
        .collect()
}
