//! The engine's records as the API shows them: the one place that turns `raftflow_workflow`'s
//! types into `raftflow_client`'s wire types (times in milliseconds become RFC 3339 strings).

use serde_json::Value;

use raftflow_client::types::{ClusterNode, HistoryEvent, TaskView, WorkflowView};
use raftflow_raft::rfc3339;
use raftflow_raft::HistoryEntry;
use raftflow_workflow::{Phase, Task, Workflow};

/// A workflow as a response body's JSON text: the fields of [`WorkflowView`], in its order,
/// with the context copied as the text it is stored as. That text is JSON this engine wrote
/// from a parsed object ([`raftflow_workflow::Context`]), so it is neither parsed into a tree
/// to be written again nor checked a second time.
pub fn workflow_body(wf: &Workflow, group: u64) -> String {
    use std::fmt::Write;
    let context = wf.context.as_str();
    let mut out = String::with_capacity(context.len() + 256);
    let string = |out: &mut String, s: &str| {
        out.push_str(&serde_json::to_string(s).expect("a string serializes"));
    };
    out.push_str("{\"id\":");
    string(&mut out, &wf.id);
    out.push_str(",\"definition\":");
    string(&mut out, &wf.definition);
    let _ = write!(out, ",\"version\":{},\"state\":", wf.version);
    string(&mut out, &wf.state);
    let _ = write!(
        out,
        ",\"status\":\"{}\",\"revision\":{},\"context\":{context},\"created_at\":\"{}\",\"updated_at\":\"{}\",\"group\":{group}}}",
        wf.status.as_str(),
        wf.revision,
        rfc3339(wf.created_at_ms),
        rfc3339(wf.updated_at_ms),
    );
    out
}

pub fn workflow_view(wf: Workflow, group: u64) -> WorkflowView {
    WorkflowView {
        status: wf.status.as_str().to_string(),
        context: serde_json::from_str(wf.context.as_str()).expect("a context is a JSON object"),
        created_at: rfc3339(wf.created_at_ms),
        updated_at: rfc3339(wf.updated_at_ms),
        id: wf.id,
        definition: wf.definition,
        version: wf.version,
        state: wf.state,
        revision: wf.revision,
        group,
    }
}

pub fn history_event(entry: HistoryEntry) -> HistoryEvent {
    let HistoryEntry { row: r, by } = entry;
    HistoryEvent {
        revision: r.revision,
        event: r.event,
        from: r.from,
        to: r.to,
        payload: r.payload.map(|p| Value::Object(p.to_object())),
        at: rfc3339(r.at_ms),
        by,
    }
}

pub fn task_view(t: Task) -> TaskView {
    let (worker, lease_expires_at, retry_at) = match &t.phase {
        Phase::Leased {
            worker,
            expires_at_ms,
        } => (Some(worker.clone()), Some(rfc3339(*expires_at_ms)), None),
        Phase::Backoff { until_ms } => (None, None, Some(rfc3339(*until_ms))),
        _ => (None, None, None),
    };
    TaskView {
        status: t.phase.name().to_string(),
        id: t.id,
        workflow_id: t.workflow_id,
        task_type: t.task_type,
        attempt: t.attempt,
        max_attempts: t.max_attempts,
        lease_token: t.token,
        worker,
        lease_expires_at,
        retry_at,
        last_error: t.last_error,
    }
}

/// A node as the meta group records it.
pub fn cluster_node(node: raftflow_raft::tables::NodeRecord) -> ClusterNode {
    ClusterNode {
        id: node.id,
        client_addr: node.addr.client,
        peer_addr: node.addr.peer,
        state: node.state.as_str().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use raftflow_workflow::{Context, Status};

    use super::*;

    #[test]
    fn a_workflow_body_is_written_as_its_view() {
        let context = serde_json::json!({"z": [1, {"b": "é\"", "a": null}], "amount": 12.5});
        let wf = Workflow {
            id: "order-1".into(),
            definition: "order".into(),
            version: 3,
            state: "paid".into(),
            status: Status::Running,
            revision: 7,
            context: Context::from_object(context.as_object().unwrap()),
            created_at_ms: 1_700_000_000_123,
            updated_at_ms: 1_700_000_001_456,
        };
        let body = workflow_body(&wf, 4);
        assert_eq!(body, serde_json::to_string(&workflow_view(wf, 4)).unwrap());
        let view: WorkflowView = serde_json::from_str(&body).unwrap();
        assert_eq!(view.context, context);
    }
}
