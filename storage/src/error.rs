/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("encode: {0}")]
    Encode(String),
}

impl StorageError {
    /// Whether the disk is full (maps to the API's 507 `storage_full`).
    pub fn is_no_space(&self) -> bool {
        match self {
            StorageError::Rocks(e) => {
                let s = e.to_string();
                s.contains("No space left") || s.contains("NoSpace")
            }
            _ => false,
        }
    }
}

impl From<StorageError> for std::io::Error {
    fn from(e: StorageError) -> Self {
        std::io::Error::other(e)
    }
}
