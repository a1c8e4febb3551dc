//! The one codec for stored values: a format-version byte, then bincode 2 (serde mode).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Result, StorageError};

/// The format of every value written by this version.
pub const FORMAT_V1: u8 = 1;

/// The most bytes one decoded value may claim, in all its strings and containers: as much as a
/// peer frame may carry. Without a bound, bincode allocates whatever a length field claims
/// before it finds the bytes missing (the decoder fuzz found a timestamp read as a 1.7 TB
/// string abort the process); with it, such a value is refused.
pub const MAX_VALUE_BYTES: usize = 512 << 20;

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_VALUE_BYTES>,
> {
    bincode::config::standard().with_limit::<MAX_VALUE_BYTES>()
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    encode_after(0, value)
}

/// `header` zero bytes for the caller to fill in (a frame's length, say), then the encoded
/// `value`, in one allocation of the exact size.
pub fn encode_after<T: Serialize + ?Sized>(header: usize, value: &T) -> Result<Vec<u8>> {
    // bincode writes a byte or a few at a time: into a Vec that starts small, that is a
    // reallocation at every doubling (about 20 per transition on each node). Encode into this
    // thread's scratch buffer instead, which keeps its capacity, and copy the result out once,
    // at its exact size (callers keep values in caches that count their length).
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    /// A scratch buffer grown past this (a huge value) is not kept.
    const KEEP: usize = 64 << 10;
    let encode_into = |buf: &mut Vec<u8>| -> Result<Vec<u8>> {
        buf.clear();
        buf.resize(header, 0);
        buf.push(FORMAT_V1);
        bincode::serde::encode_into_std_write(value, &mut *buf, config())
            .map_err(|e| StorageError::Encode(e.to_string()))?;
        Ok(buf.as_slice().to_vec())
    };
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buf) => {
            let out = encode_into(&mut buf);
            if buf.capacity() > KEEP {
                *buf = Vec::new();
            }
            out
        }
        // A value whose serialization encodes another value on this thread: that one gets a
        // buffer of its own.
        Err(_) => encode_into(&mut Vec::new()),
    })
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => {
            let (v, used) = bincode::serde::decode_from_slice(body, config())
                .map_err(|e| StorageError::Corrupt(format!("decode: {e}")))?;
            if used != body.len() {
                return Err(StorageError::Corrupt(format!(
                    "{} trailing bytes after value",
                    body.len() - used
                )));
            }
            Ok(v)
        }
        Some((v, _)) => Err(StorageError::Corrupt(format!("unknown format version {v}"))),
        None => Err(StorageError::Corrupt("empty value".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A length field that claims more than any value may hold is refused before anything is
    /// allocated for it (unbounded, this aborted the process: found by `raft/src/fuzz.rs`).
    #[test]
    fn a_claimed_length_past_the_bound_is_an_error_not_an_allocation() {
        // Format byte, then a varint u64 (marker 253) claiming a 1.7 TB string.
        let mut bytes = vec![FORMAT_V1, 253];
        bytes.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
        assert!(decode::<String>(&bytes).is_err());
        assert!(decode::<Vec<u8>>(&bytes).is_err());
        assert!(decode::<Vec<u64>>(&bytes).is_err());
    }

    #[test]
    fn roundtrip_and_version_check() {
        let v = (7u64, "x".to_string(), Some(vec![1u8, 2]));
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(decode::<(u64, String, Option<Vec<u8>>)>(&bytes).unwrap(), v);
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(decode::<(u64, String, Option<Vec<u8>>)>(&bad).is_err());
        assert!(decode::<u64>(&[]).is_err());
    }

    #[test]
    fn the_scratch_buffer_leaks_nothing_between_values() {
        // A large value, then a small one, then the small one after a header: each result is
        // exactly its own bytes, whatever the thread's scratch buffer held before.
        let big = vec![7u8; 200 << 10];
        assert_eq!(decode::<Vec<u8>>(&encode(&big).unwrap()).unwrap(), big);
        let small = encode(&"ab").unwrap();
        assert_eq!(small, [FORMAT_V1, 2, b'a', b'b']);
        let framed = encode_after(4, &"ab").unwrap();
        assert_eq!(framed, [0, 0, 0, 0, FORMAT_V1, 2, b'a', b'b']);
        assert_eq!(decode::<String>(&framed[4..]).unwrap(), "ab");
    }

    /// Serializes as the encoding of its inner string: an encode inside an encode.
    struct Nested(&'static str);

    impl Serialize for Nested {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            s.serialize_bytes(&encode(self.0).map_err(serde::ser::Error::custom)?)
        }
    }

    #[test]
    fn an_encode_inside_an_encode_gets_its_own_buffer() {
        let outer = encode(&Nested("ab")).unwrap();
        let inner: Vec<u8> = decode(&outer).unwrap();
        assert_eq!(decode::<String>(&inner).unwrap(), "ab");
    }
}
