/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(rocksdb::Error),
    /// The disk is full (the API's 507 `storage_full`).
    #[error("no space left on the data disk: {0}")]
    NoSpace(rocksdb::Error),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("encode: {0}")]
    Encode(String),
    /// A snapshot file could not be read or written.
    #[error("snapshot file: {0}")]
    Io(String),
}

/// The text of RocksDB's `Status::SubCode::kNoSpace`. RocksDB's C API hands an error over as its
/// `Status::ToString()` only: the code (`IOError`) comes back as [`rocksdb::ErrorKind`], the
/// subcode only as this fixed text after it.
const NO_SPACE_SUBCODE: &str = "No space left on device";

impl From<rocksdb::Error> for StorageError {
    fn from(e: rocksdb::Error) -> Self {
        if e.kind() == rocksdb::ErrorKind::IOError && e.as_ref().contains(NO_SPACE_SUBCODE) {
            StorageError::NoSpace(e)
        } else {
            StorageError::Rocks(e)
        }
    }
}

impl StorageError {
    /// Whether the disk is full (maps to the API's 507 `storage_full`).
    pub fn is_no_space(&self) -> bool {
        matches!(self, StorageError::NoSpace(_))
    }
}

impl From<StorageError> for std::io::Error {
    fn from(e: StorageError) -> Self {
        std::io::Error::other(e)
    }
}
