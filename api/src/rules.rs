//! The rules the handlers hold names, ids and numbers to, written into the OpenAPI document, so
//! that a generated client or a request validator knows them before a node answers 400. The
//! handlers' own checks stay the authority; `rules_match_the_handlers` pins that the two agree.

use raftflow_workflow::task::MAX_LEASE_MS;
use utoipa::openapi::schema::{ArrayItems, Schema};
use utoipa::openapi::{OpenApi, RefOr};

use crate::tasks::{MAX_POLL_TASKS, MAX_POLL_TYPES, MAX_POLL_WAIT_MS};

/// Definition, state, event and task type names.
pub(crate) const NAME: &str = "^[A-Za-z0-9_.-]{1,64}$";
/// Workflow ids, request ids and worker names.
pub(crate) const ID: &str = "^[A-Za-z0-9_.:-]{1,128}$";
/// Task ids: `{workflow id}:{revision}`.
pub(crate) const TASK_ID: &str = "^[A-Za-z0-9_.:-]{1,128}:[0-9]+$";

#[derive(Clone, Copy)]
enum Rule {
    Pattern(&'static str),
    Range(u64, u64),
    OneOf(&'static [&'static str]),
    /// An array of `min..=max` items, each matching the pattern.
    Items(usize, usize, &'static str),
}

use Rule::*;

const CONSISTENCY: Rule = OneOf(&["linearizable", "local"]);

/// Path and query parameters: (path, or a prefix ending in `/` for every path under it;
/// parameter; rule).
const PARAMETERS: &[(&str, &str, Rule)] = &[
    ("/v1/definitions/", "name", Pattern(NAME)),
    (
        "/v1/definitions/{name}/versions/{version}",
        "version",
        Range(1, u32::MAX as u64),
    ),
    ("/v1/workflows/", "id", Pattern(ID)),
    ("/v1/workflows/", "consistency", CONSISTENCY),
    ("/v1/workflows", "limit", Range(1, 1000)),
    (
        "/v1/workflows",
        "status",
        OneOf(&["running", "succeeded", "failed", "cancelled"]),
    ),
    ("/v1/workflows", "consistency", CONSISTENCY),
    ("/v1/tasks/", "id", Pattern(TASK_ID)),
    ("/v1/tasks/", "consistency", CONSISTENCY),
];

/// Request body properties: (schema, property, rule).
const PROPERTIES: &[(&str, &str, Rule)] = &[
    ("CreateWorkflow", "id", Pattern(ID)),
    ("CreateWorkflow", "definition", Pattern(NAME)),
    ("CreateWorkflow", "version", Range(1, u32::MAX as u64)),
    ("SendEvent", "event", Pattern(NAME)),
    ("SendEvent", "request_id", Pattern(ID)),
    ("CancelWorkflow", "request_id", Pattern(ID)),
    ("PollTasks", "types", Items(1, MAX_POLL_TYPES, NAME)),
    ("PollTasks", "worker", Pattern(ID)),
    ("PollTasks", "max", Range(1, MAX_POLL_TASKS as u64)),
    ("PollTasks", "wait_ms", Range(0, MAX_POLL_WAIT_MS)),
    ("PollTasks", "lease_ms", Range(1, MAX_LEASE_MS)),
    ("HeartbeatTask", "lease_ms", Range(1, MAX_LEASE_MS)),
];

/// Writes [`PARAMETERS`] and [`PROPERTIES`] into the document.
pub(crate) struct Rules;

impl utoipa::Modify for Rules {
    fn modify(&self, doc: &mut OpenApi) {
        for (path, item) in doc.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for op in operations.into_iter().flatten() {
                for param in op.parameters.iter_mut().flatten() {
                    let rule = PARAMETERS.iter().find(|(at, name, _)| {
                        *name == param.name
                            && (path == at || (at.ends_with('/') && path.starts_with(at)))
                    });
                    if let (Some((_, _, rule)), Some(RefOr::T(schema))) =
                        (rule, param.schema.as_mut())
                    {
                        apply(schema, *rule);
                    }
                }
            }
        }
        let Some(components) = doc.components.as_mut() else {
            return;
        };
        for (schema_name, property, rule) in PROPERTIES {
            let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(*schema_name)
            else {
                panic!("the API document has no schema {schema_name}");
            };
            let Some(RefOr::T(schema)) = object.properties.get_mut(*property) else {
                panic!("schema {schema_name} has no property {property}");
            };
            apply(schema, *rule);
        }
    }
}

fn apply(schema: &mut Schema, rule: Rule) {
    match (schema, rule) {
        (Schema::Object(o), Pattern(p)) => o.pattern = Some(p.into()),
        (Schema::Object(o), Range(min, max)) => {
            o.minimum = Some(utoipa::Number::UInt(min as usize));
            o.maximum = Some(utoipa::Number::UInt(max as usize));
        }
        (Schema::Object(o), OneOf(values)) => {
            o.enum_values = Some(values.iter().map(|v| (*v).into()).collect());
        }
        (Schema::Array(a), Items(min, max, p)) => {
            a.min_items = Some(min);
            a.max_items = Some(max);
            if let ArrayItems::RefOrSchema(items) = &mut a.items {
                if let RefOr::T(item) = items.as_mut() {
                    apply(item, Pattern(p));
                }
            }
        }
        (_, _) => panic!("an API rule does not fit its schema's kind"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, s: &str) -> bool {
        regex::Regex::new(pattern).unwrap().is_match(s)
    }

    /// The patterns say what the handlers' checks say, on names and ids at and past their
    /// bounds.
    #[test]
    fn rules_match_the_handlers() {
        let long = |n: usize| "a".repeat(n);
        for s in [
            "a".to_string(),
            "order_v2.1-x".into(),
            long(64),
            long(65),
            long(128),
            long(129),
            "a:b".into(),
            "".into(),
            "a b".into(),
            "é".into(),
            "a/b".into(),
        ] {
            assert_eq!(
                matches(NAME, &s),
                raftflow_workflow::is_valid_name(&s),
                "{s:?}"
            );
            assert_eq!(matches(ID, &s), raftflow_workflow::is_valid_id(&s), "{s:?}");
        }
        for t in ["o-1:2", "o:1:22", "o-1:", ":2", "o-1:x", "o-1"] {
            let handler = raftflow_workflow::task::workflow_of_task(t)
                .is_some_and(raftflow_workflow::is_valid_id);
            assert_eq!(matches(TASK_ID, t), handler, "{t:?}");
        }
    }

    /// Every rule finds its place in the document (a renamed field or route would leave one
    /// behind silently otherwise).
    #[test]
    fn every_rule_lands_in_the_document() {
        let doc = serde_json::to_value(<crate::ApiDoc as utoipa::OpenApi>::openapi()).unwrap();
        let text = doc.to_string();
        for pattern in [NAME, ID, TASK_ID] {
            let json = serde_json::to_string(pattern).unwrap();
            assert!(text.contains(&json), "{pattern} is nowhere in the document");
        }
        for (path, name, _) in PARAMETERS {
            let found = doc["paths"].as_object().unwrap().iter().any(|(p, item)| {
                (p == path || (path.ends_with('/') && p.starts_with(path)))
                    && item.as_object().unwrap().values().any(|op| {
                        op["parameters"].as_array().is_some_and(|ps| {
                            ps.iter().any(|p| {
                                p["name"] == *name
                                    && ["pattern", "minimum", "enum"]
                                        .iter()
                                        .any(|k| p["schema"].get(k).is_some())
                            })
                        })
                    })
            });
            assert!(found, "no rule on parameter {name} under {path}");
        }
        let created = &doc["components"]["schemas"]["CreateWorkflow"]["properties"];
        assert_eq!(created["id"]["pattern"], ID);
        assert_eq!(created["version"]["minimum"], 1);
        let poll = &doc["components"]["schemas"]["PollTasks"]["properties"];
        assert_eq!(poll["types"]["maxItems"], MAX_POLL_TYPES);
        assert_eq!(poll["types"]["items"]["pattern"], NAME);
    }
}
