//! A workflow's context, kept as the JSON text it is stored and sent as.
//!
//! Every event rewrites the context (its payload merges in at the top level), on every
//! replica. Built as a tree of `serde_json::Value`s, a 1 KiB context costs a parse into some
//! dozens of allocations, a clone, a serialization and a drop per event. Kept as text, an event
//! scans the top level once, splices the payload's keys in, and writes the text out: nested
//! values are copied as the bytes they are.
//!
//! The text is always canonical, as serde_json writes a [`JsonObject`]: compact, keys in
//! sorted order at every depth. A context is made only from an object (which writes it so) or
//! decoded from text an earlier one wrote, and a merge keeps it so: the stored bytes are the
//! same as when the context was a tree, and the same on every replica. Decoding scans the text
//! once, to check it and to note where each top-level value lies; a merge then writes the new
//! text from those spans without scanning again.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::JsonObject;

/// A JSON object as canonical compact text, with where each top-level value lies in it.
#[derive(Clone)]
pub struct Context {
    text: String,
    /// Each top-level key (unescaped) and the span of its value's text, in key order.
    fields: Vec<(String, Range<usize>)>,
}

impl Context {
    /// The context holding `object`.
    pub fn from_object(object: &JsonObject) -> Context {
        let text = serde_json::to_string(object).expect("a JSON object serializes");
        let fields = top_level(&text).expect("serde_json writes a JSON object");
        Context { text, fields }
    }

    /// The canonical text: a JSON object.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn into_string(self) -> String {
        self.text
    }

    /// The context as a tree (a parse of its text).
    pub fn to_object(&self) -> JsonObject {
        serde_json::from_str(&self.text).expect("a context is a JSON object")
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Sets each of `payload`'s top-level keys to its value, as `JsonObject::insert` would:
    /// the two sorted key lists are merged, the context's values copied as the text they are.
    pub fn merge(&mut self, payload: &JsonObject) {
        if payload.is_empty() {
            return;
        }
        let old_fields = std::mem::take(&mut self.fields);
        let mut text = String::with_capacity(self.text.len() + 64 * payload.len());
        let mut fields = Vec::with_capacity(old_fields.len() + payload.len());
        let mut old = old_fields.into_iter().peekable();
        let mut new = payload.iter().peekable();
        text.push('{');
        loop {
            let order = match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((o, _)), Some((n, _))) => o.as_str().cmp(n.as_str()),
            };
            if order == std::cmp::Ordering::Equal {
                // The payload's value replaces the context's.
                old.next();
            }
            let from_payload = order != std::cmp::Ordering::Less;
            if !fields.is_empty() {
                text.push(',');
            }
            let (key, value) = if from_payload {
                let (k, v) = new.next().expect("peeked");
                let value = serde_json::to_string(v).expect("a JSON value serializes");
                (k.clone(), std::borrow::Cow::Owned(value))
            } else {
                let (k, span) = old.next().expect("peeked");
                (k, std::borrow::Cow::Borrowed(&self.text[span]))
            };
            text.push_str(&serde_json::to_string(&key).expect("a key serializes"));
            text.push(':');
            let start = text.len();
            text.push_str(&value);
            fields.push((key, start..text.len()));
        }
        text.push('}');
        self.text = text;
        self.fields = fields;
    }
}

impl PartialEq for Context {
    fn eq(&self, other: &Context) -> bool {
        self.text == other.text
    }
}

impl Eq for Context {}

impl Default for Context {
    fn default() -> Self {
        Context {
            text: "{}".to_string(),
            fields: Vec::new(),
        }
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The top-level keys of the object `text`, each with the span of its value's text. Sorted as
/// a `JsonObject` sorts them; a key given twice keeps its last value, as a `JsonObject` would.
fn top_level(text: &str) -> serde_json::Result<Vec<(String, Range<usize>)>> {
    let map: BTreeMap<String, &RawValue> = serde_json::from_str(text)?;
    let base = text.as_ptr() as usize;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let start = v.get().as_ptr() as usize - base;
            (k, start..start + v.get().len())
        })
        .collect())
}

/// Stored and replicated as its text, a string: the encoding of the tree it replaced.
impl Serialize for Context {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// Decoding checks that the text is a JSON object (a damaged row fails here, not in a merge)
/// and notes where its values lie, for the merge.
impl<'de> Deserialize<'de> for Context {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Context, D::Error> {
        let text = String::deserialize(d)?;
        let fields = top_level(&text).map_err(serde::de::Error::custom)?;
        Ok(Context { text, fields })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;

    fn obj(v: Value) -> JsonObject {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    /// What the context was before it was text: a tree, with the payload inserted key by key.
    fn merged_as_tree(context: &JsonObject, payload: &JsonObject) -> String {
        let mut tree = context.clone();
        for (k, v) in payload {
            tree.insert(k.clone(), v.clone());
        }
        serde_json::to_string(&tree).unwrap()
    }

    #[test]
    fn a_merge_writes_what_the_tree_wrote() {
        let context = obj(json!({
            "order": {"z": 1, "a": [1.5, {"y": null, "b": "é\"\n"}]},
            "amount": 30, "notes": "x".repeat(500), "a\"key": true
        }));
        let payload = obj(
            json!({"amount": 31.25, "card": {"last4": "4242", "brand": "visa"},
                                 "": [], "zz": "\u{1F600}"}),
        );
        let mut c = Context::from_object(&context);
        c.merge(&payload);
        assert_eq!(c.as_str(), merged_as_tree(&context, &payload));
        assert_eq!(c.to_object()["amount"], json!(31.25));
        // An empty payload leaves the text as it was.
        let before = c.clone();
        c.merge(&JsonObject::new());
        assert_eq!(c, before);
    }

    #[test]
    fn decoding_refuses_text_that_is_not_an_object() {
        for bad in ["[1]", "3", "{\"a\":", "", "{\"a\":1} x"] {
            let encoded = serde_json::to_string(bad).unwrap();
            assert!(
                serde_json::from_str::<Context>(&encoded).is_err(),
                "{bad:?} decoded"
            );
        }
        let c: Context = serde_json::from_str("\"{\\\"a\\\":1}\"").unwrap();
        assert_eq!(c.to_object(), obj(json!({"a": 1})));
        assert!(Context::default().is_empty());
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn json_object() -> impl Strategy<Value = JsonObject> {
        prop::collection::btree_map("[a-d\"\\\\é]{0,3}", json_value(), 0..6)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        /// Merges in a row, on text, write exactly what inserts on a tree wrote.
        #[test]
        fn merges_on_text_match_inserts_on_a_tree(
            context in json_object(),
            payloads in prop::collection::vec(json_object(), 1..4),
        ) {
            let mut text = Context::from_object(&context);
            let mut tree = context;
            for (i, p) in payloads.iter().enumerate() {
                if i % 2 == 1 {
                    // As an event finds it: decoded from the stored row.
                    text = serde_json::from_value(serde_json::to_value(&text).unwrap()).unwrap();
                }
                text.merge(p);
                tree = serde_json::from_str(&merged_as_tree(&tree, p)).unwrap();
                prop_assert_eq!(text.as_str(), serde_json::to_string(&tree).unwrap());
            }
            let decoded: Context = serde_json::from_value(
                serde_json::to_value(&text).unwrap()).unwrap();
            prop_assert_eq!(decoded, text);
        }
    }
}
