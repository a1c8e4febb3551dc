//! Fuzzing of what a node decodes from bytes it did not write itself: peer frames (anyone who
//! reaches the peer port), and stored values (a disk that returns other bytes than were
//! written). Every input must come back as a value or an error: no panic, no abort, no
//! allocation of what a length field merely claims.
//!
//! The engine is proptest, on the stable toolchain `make test` builds with (cargo-fuzz needs a
//! nightly one). Its corpus is the repository's pinned encodings, `raft/golden/encodings.txt`:
//! one valid sample of every stored value, log entry and peer frame, which the strategies below
//! mutate the way a coverage-guided fuzzer's havoc stage does (bit flips, overwritten bytes,
//! bincode's length and variant markers, cuts, splices) besides feeding plain random bytes.
//! `RAFTFLOW_FUZZ_CASES` sets the cases per property (default 100,000).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use raftflow_storage::codec;

use crate::command::{DefinitionVersion, Outcome, Stamped};
use crate::consensus::state_machine::Applied;
use crate::consensus::{Entry, LogId, Vote};
use crate::tables::{
    GroupRecord, MoveStep, NodeRecord, Placement, SlotFence, SlotMove, TaskRecord, WorkflowRecord,
};
use crate::transport::frames::{read_frame, Envelope};

fn cases() -> u32 {
    std::env::var("RAFTFLOW_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// The pinned encodings, without their names.
fn corpus() -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(crate::golden::FILE).expect("the pinned encodings");
    let corpus: Vec<Vec<u8>> = crate::golden::parse(&text)
        .into_values()
        .map(|h| unhex(&h))
        .collect();
    assert!(corpus.len() > 100, "only {} samples", corpus.len());
    corpus
}

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Decodes `bytes` as every type a node reads back from its disk or from a peer. Returns how
/// many decoded, so that a run can tell it reached past the first byte.
fn decode_as_everything(bytes: &[u8]) -> usize {
    let ok = [
        codec::decode::<Stamped>(bytes).is_ok(),
        codec::decode::<Outcome>(bytes).is_ok(),
        codec::decode::<WorkflowRecord>(bytes).is_ok(),
        codec::decode::<TaskRecord>(bytes).is_ok(),
        codec::decode::<raftflow_workflow::HistoryRow>(bytes).is_ok(),
        codec::decode::<NodeRecord>(bytes).is_ok(),
        codec::decode::<Placement>(bytes).is_ok(),
        codec::decode::<MoveStep>(bytes).is_ok(),
        codec::decode::<SlotFence>(bytes).is_ok(),
        codec::decode::<GroupRecord>(bytes).is_ok(),
        codec::decode::<SlotMove>(bytes).is_ok(),
        codec::decode::<crate::ring::SlotTable>(bytes).is_ok(),
        codec::decode::<DefinitionVersion>(bytes).is_ok(),
        codec::decode::<Entry>(bytes).is_ok(),
        codec::decode::<Vote>(bytes).is_ok(),
        codec::decode::<Option<LogId>>(bytes).is_ok(),
        codec::decode::<Applied>(bytes).is_ok(),
        codec::decode::<Envelope>(bytes).is_ok(),
        // Counters, versions and pinned definitions' JSON text.
        codec::decode::<u64>(bytes).is_ok(),
        codec::decode::<u32>(bytes).is_ok(),
        codec::decode::<String>(bytes).is_ok(),
        codec::decode::<()>(bytes).is_ok(),
        codec::decode::<Vec<(Vec<u8>, Vec<u8>)>>(bytes).is_ok(),
        // A frame as the peer port reads it: length prefix, then the envelope.
        futures::executor::block_on(read_frame(&mut &bytes[..])).is_ok(),
        // And the same bytes behind a length prefix that tells the truth.
        futures::executor::block_on(read_frame(
            &mut &[&(bytes.len() as u32).to_be_bytes()[..], bytes].concat()[..],
        ))
        .is_ok(),
    ];
    ok.iter().filter(|d| **d).count()
}

/// One havoc step on `input`.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    /// bincode's varint markers (u16, u32, u64, u128 follow) and extremes: where a length or a
    /// variant index stands, these claim huge containers or unknown variants.
    Marker(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
    /// Copies a run of the input over another place (splicing one field into another).
    Splice(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::FlipBit(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, v)| Mutation::SetByte(p, v)),
        (
            any::<usize>(),
            prop::sample::select(vec![
                0u8, 1, 2, 0x7f, 0x80, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff
            ])
        )
            .prop_map(|(p, v)| Mutation::Marker(p, v)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(p, b)| Mutation::Insert(p, b)),
        (any::<usize>(), 1usize..16).prop_map(|(p, n)| Mutation::Remove(p, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>(), 1usize..32)
            .prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
    ]
}

fn apply(input: &mut Vec<u8>, m: &Mutation) {
    let len = input.len();
    let at = |p: usize| if len == 0 { 0 } else { p % len };
    match m {
        Mutation::FlipBit(p, b) if len > 0 => input[at(*p)] ^= 1 << b,
        Mutation::SetByte(p, v) | Mutation::Marker(p, v) if len > 0 => input[at(*p)] = *v,
        Mutation::Insert(p, bytes) => {
            let p = if len == 0 { 0 } else { p % (len + 1) };
            input.splice(p..p, bytes.iter().copied());
        }
        Mutation::Remove(p, n) if len > 0 => {
            let p = at(*p);
            input.drain(p..(p + n).min(len));
        }
        Mutation::Truncate(p) => input.truncate(if len == 0 { 0 } else { p % len }),
        Mutation::Splice(a, b, n) if len > 0 => {
            let (a, b) = (at(*a), at(*b));
            let n = (*n).min(len - a).min(len - b);
            let run: Vec<u8> = input[a..a + n].to_vec();
            input[b..b + n].copy_from_slice(&run);
        }
        _ => {}
    }
}

/// Each pinned sample, havocked by one to eight mutations, decodes or is refused.
#[test]
fn mutated_samples_decode_or_are_refused() {
    let corpus = corpus();
    let n = corpus.len();
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let decoded = std::cell::Cell::new(0usize);
    runner
        .run(
            &(0..n, prop::collection::vec(mutation(), 1..8)),
            |(i, mutations)| {
                let mut input = corpus[i].clone();
                for m in &mutations {
                    apply(&mut input, m);
                }
                decoded.set(decoded.get() + decode_as_everything(&input));
                Ok(())
            },
        )
        .unwrap();
    // Havoc leaves many inputs valid (a flipped bit in a string, a changed number): a run in
    // which nothing decoded would have tested only the first byte's check.
    assert!(decoded.get() > 0);
    eprintln!(
        "fuzz: {} mutated samples of {n}, {} decodes",
        cases(),
        decoded.get()
    );
}

/// Bytes from nowhere: after the format byte, and after a frame's length, anything at all.
#[test]
fn random_bytes_decode_or_are_refused() {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(prop::collection::vec(any::<u8>(), 0..512), any::<bool>()),
            |(mut bytes, versioned)| {
                if versioned && !bytes.is_empty() {
                    bytes[0] = codec::FORMAT_V1;
                }
                decode_as_everything(&bytes);
                Ok(())
            },
        )
        .unwrap();
}

/// The corpus is what the tests above take it for: every pinned value and frame (all but the
/// raw keys) decodes as one of the types they try.
#[test]
fn every_pinned_value_and_frame_decodes() {
    let text = std::fs::read_to_string(crate::golden::FILE).unwrap();
    let mut values = 0;
    for (name, hex) in crate::golden::parse(&text) {
        if name.starts_with("key/") {
            continue;
        }
        let bytes = unhex(&hex);
        assert!(
            decode_as_everything(&bytes) > 0,
            "{name} decodes as nothing"
        );
        values += 1;
    }
    assert!(values > 100, "{values}");
}
