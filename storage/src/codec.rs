//! The one codec for stored values: a format-version byte, then bincode 2 (serde mode).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Result, StorageError};

/// The format of every value written by this version.
pub const FORMAT_V1: u8 = 1;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut out = vec![FORMAT_V1];
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| StorageError::Encode(e.to_string()))?;
    Ok(out)
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
}
