//! `raftflow-client`: what a Rust program needs to talk to a raftflow cluster. The request and
//! response bodies of the HTTP API ([`types`]), its error codes ([`ErrorCode`]), a typed client
//! of one node ([`Client`]) and the task worker loop ([`run_worker`]).
//!
//! The server uses these same types, so a field or code cannot drift between the two. The crate
//! depends on neither axum, openraft nor RocksDB: a worker builds in seconds.

pub mod client;
mod error_code;
pub mod types;
pub mod worker;

pub use client::{Client, ClientError, ClientResult};
pub use error_code::ErrorCode;
pub use worker::{run as run_worker, TaskFailure, WorkerOptions, WorkerStats};
