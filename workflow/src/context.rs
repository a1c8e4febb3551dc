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

    /// The context whose canonical text is `text`: the text is checked to be a JSON object and
    /// its top-level values noted. `text` must be canonical (as [`Context::as_str`] or
    /// serde_json writing a [`JsonObject`] gives it); this is not checked.
    pub fn from_canonical(text: String) -> serde_json::Result<Context> {
        let fields = top_level(&text)?;
        Ok(Context { text, fields })
    }

    /// Sets each of `payload`'s top-level keys to its value, as `JsonObject::insert` would:
    /// the two sorted key lists are merged and both sides' values copied as the text they are,
    /// nothing parsed or serialized.
    pub fn merge_context(&mut self, payload: &Context) {
        let new = payload
            .fields
            .iter()
            .map(|(k, span)| (k.as_str(), &payload.text[span.clone()]));
        if new.len() == 0 {
            return;
        }
        let old_fields = std::mem::take(&mut self.fields);
        let mut text = String::with_capacity(self.text.len() + 64 * new.len());
        let mut fields = Vec::with_capacity(old_fields.len() + new.len());
        let mut old = old_fields.into_iter().peekable();
        let mut new = new.peekable();
        text.push('{');
        loop {
            let order = match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((o, _)), Some((n, _))) => o.as_str().cmp(n),
            };
            if order == std::cmp::Ordering::Equal {
                // The payload's value replaces the context's.
                old.next();
            }
            if !fields.is_empty() {
                text.push(',');
            }
            let (key, value) = if order != std::cmp::Ordering::Less {
                let (k, v) = new.next().expect("peeked");
                (k.to_string(), v)
            } else {
                let (k, span) = old.next().expect("peeked");
                (k, &self.text[span])
            };
            write_key(&mut text, &key);
            text.push(':');
            let start = text.len();
            text.push_str(value);
            fields.push((key, start..text.len()));
        }
        text.push('}');
        self.text = text;
        self.fields = fields;
    }
}

/// `key` as a JSON string, escaped as serde_json escapes it.
fn write_key(text: &mut String, key: &str) {
    let plain = key.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if plain {
        text.push('"');
        text.push_str(key);
        text.push('"');
    } else {
        text.push_str(&serde_json::to_string(key).expect("a key serializes"));
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
    match scan_canonical(text) {
        Some(fields) => Ok(fields),
        None => parsed_fields(text),
    }
}

/// [`top_level`] by a full parse: any JSON object, in any shape.
fn parsed_fields(text: &str) -> serde_json::Result<Vec<(String, Range<usize>)>> {
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

/// [`top_level`] for text in the shape serde_json writes a [`JsonObject`] in (no whitespace,
/// keys strictly sorted), or `None` for anything else, which the full parse then takes.
///
/// Every event decodes its workflow's context, on every replica, and a full parse of a 1 KiB
/// context was a sixth of an event's instructions. This scan checks the object's own grammar
/// (keys, colons, commas, the closing brace, top-level scalars) and within each nested value
/// only that strings end and brackets pair: a context is decoded only from text this code wrote
/// from a parsed object (a stored row, under RocksDB's block checksums; a log entry or a peer's
/// reply, over mutual TLS), never from a request's text, which the API parses in full.
fn scan_canonical(text: &str) -> Option<Vec<(String, Range<usize>)>> {
    let b = text.as_bytes();
    if b.first() != Some(&b'{') {
        return None;
    }
    let mut fields: Vec<(String, Range<usize>)> = Vec::new();
    let mut i = 1;
    if b.get(i) == Some(&b'}') {
        return (b.len() == 2).then_some(fields);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(b, i)?;
        // Both ends are quotes, so the slice lies on character boundaries.
        let raw = &text[i + 1..key_end - 1];
        let key = if raw.contains('\\') {
            serde_json::from_str::<String>(&text[i..key_end]).ok()?
        } else {
            raw.to_string()
        };
        if fields
            .last()
            .is_some_and(|(last, _)| last.as_str() >= key.as_str())
        {
            return None;
        }
        i = key_end;
        if b.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        let start = i;
        i = value_end(b, i)?;
        fields.push((key, start..i));
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return (i + 1 == b.len()).then_some(fields),
            _ => return None,
        }
    }
}

/// Where the string starting at `b[start]` (a quote) ends: the index after its closing quote.
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        let at = i + memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        if b[at] == b'"' {
            return Some(at + 1);
        }
        // An escape: the next byte is escaped (a `\uXXXX`'s digits hold no quote).
        i = at + 2;
    }
}

/// The bytes a bracketed value's scan stops at: quotes and brackets.
const STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'{' as usize] = true;
    t[b'}' as usize] = true;
    t[b'[' as usize] = true;
    t[b']' as usize] = true;
    t
};

/// Where the value starting at `b[start]` ends: a string, a bracketed value (strings skipped,
/// brackets paired), or a scalar up to the next `,` or `}`, which must be a literal or a number.
fn value_end(b: &[u8], start: usize) -> Option<usize> {
    match *b.get(start)? {
        b'"' => string_end(b, start),
        open @ (b'{' | b'[') => {
            let mut stack = vec![open];
            let mut i = start + 1;
            loop {
                i += b.get(i..)?.iter().position(|&c| STRUCTURAL[c as usize])?;
                let c = b[i];
                match c {
                    b'"' => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => stack.push(c),
                    b'}' | b']' => {
                        let opened = stack.pop()?;
                        if (opened == b'{') != (c == b'}') {
                            return None;
                        }
                        if stack.is_empty() {
                            return Some(i + 1);
                        }
                    }
                    _ => unreachable!("a structural byte"),
                }
                i += 1;
            }
        }
        _ => {
            let len = b[start..].iter().position(|&c| c == b',' || c == b'}')?;
            let scalar = &b[start..start + len];
            let number = |s: &[u8]| {
                !s.is_empty()
                    && (s[0] == b'-' || s[0].is_ascii_digit())
                    && s.iter().all(|c| c.is_ascii_digit() || b"+-.eE".contains(c))
            };
            (matches!(scalar, b"true" | b"false" | b"null") || number(scalar))
                .then_some(start + len)
        }
    }
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
        Context::from_canonical(String::deserialize(d)?).map_err(serde::de::Error::custom)
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
        c.merge_context(&Context::from_object(&payload));
        assert_eq!(c.as_str(), merged_as_tree(&context, &payload));
        // A payload given as its text merges to the same bytes.
        let mut t = Context::from_object(&context);
        t.merge_context(
            &Context::from_canonical(serde_json::to_string(&payload).unwrap()).unwrap(),
        );
        assert_eq!(t, c);
        assert_eq!(c.to_object()["amount"], json!(31.25));
        // An empty payload leaves the text as it was.
        let before = c.clone();
        c.merge_context(&Context::default());
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
        for bad in ["[1]", "null", "{\"a\"}"] {
            assert!(Context::from_canonical(bad.to_string()).is_err(), "{bad:?}");
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

    #[test]
    fn the_scan_takes_only_what_serde_json_writes() {
        let canonical = serde_json::to_string(&obj(json!({
            "a\"b": {"x": [1, "]}\\\"", {"y": "{"}]}, "n": -1.5e3, "t": true, "z": null, "é": "\u{1}"
        })))
        .unwrap();
        assert_eq!(scan_canonical(&canonical), parsed_fields(&canonical).ok());
        assert!(scan_canonical("{}").is_some_and(|f| f.is_empty()));
        // Valid JSON in another shape goes to the full parse, which still reads it.
        for other in [
            r#"{"b":1,"a":2}"#,
            r#"{"a":1,"a":2}"#,
            r#"{ "a":1}"#,
            r#"{"a": 1}"#,
        ] {
            assert_eq!(scan_canonical(other), None, "{other}");
            assert!(top_level(other).is_ok(), "{other}");
        }
        assert_eq!(top_level(r#"{"b":1,"a":2,"a":3}"#).unwrap()[0].1, 17..18);
        // Broken objects: refused by the scan and by the parse.
        for bad in [
            "{",
            "{\"a\"",
            "{\"a\":}",
            "{\"a\":tru}",
            "{\"a\":1,}",
            "{\"a\":[1}",
            "{\"a\":{]}",
            "{\"a\":\"x}",
            "{\"a\":1}}",
            "{\"a\":1,\"b\"}",
            "{\"a\":1e}x",
        ] {
            assert_eq!(scan_canonical(bad), None, "{bad}");
            assert!(top_level(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        /// On what serde_json writes, the scan finds exactly what the full parse finds.
        #[test]
        fn the_scan_finds_the_fields_the_parse_finds(object in json_object()) {
            let text = serde_json::to_string(&object).unwrap();
            prop_assert_eq!(scan_canonical(&text), parsed_fields(&text).ok());
        }

        /// On damaged text the scan never panics, and what it accepts the parse reads alike
        /// wherever the parse accepts it too.
        #[test]
        fn the_scan_survives_damaged_text(
            object in json_object(),
            cuts in prop::collection::vec(
                (any::<prop::sample::Index>(), prop::sample::select(b"{}[]\",:\\0a1-e ".to_vec())),
                1..4,
            ),
        ) {
            let mut bytes = serde_json::to_string(&object).unwrap().into_bytes();
            for (at, byte) in cuts {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            if let Ok(text) = String::from_utf8(bytes) {
                let scanned = scan_canonical(&text);
                if let (Some(scanned), Ok(parsed)) = (&scanned, parsed_fields(&text)) {
                    prop_assert_eq!(scanned, &parsed);
                }
            }
        }

        /// Merges in a row, on text, write exactly what inserts on a tree wrote.
        #[test]
        fn merges_on_text_match_inserts_on_a_tree(
            context in json_object(),
            payloads in prop::collection::vec(json_object(), 1..5),
        ) {
            let mut text = Context::from_object(&context);
            let mut tree = context;
            for (i, p) in payloads.iter().enumerate() {
                if i % 2 == 1 {
                    // As an event finds it: decoded from the stored row.
                    text = serde_json::from_value(serde_json::to_value(&text).unwrap()).unwrap();
                }
                if i % 3 == 2 {
                    // As an event's payload comes through the log: its canonical text.
                    let payload = Context::from_canonical(serde_json::to_string(p).unwrap()).unwrap();
                    text.merge_context(&payload);
                } else {
                    text.merge_context(&Context::from_object(p));
                }
                tree = serde_json::from_str(&merged_as_tree(&tree, p)).unwrap();
                prop_assert_eq!(text.as_str(), serde_json::to_string(&tree).unwrap());
            }
            let decoded: Context = serde_json::from_value(
                serde_json::to_value(&text).unwrap()).unwrap();
            prop_assert_eq!(decoded, text);
        }
    }
}
