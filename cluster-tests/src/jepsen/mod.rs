//! A Jepsen-style failure suite in Rust: clients record histories against real nodes while a
//! nemesis injects faults, then checkers judge the histories.

pub mod checkers;
pub mod history;
pub mod linear;
pub mod nemesis;
pub mod plot;
pub mod runner;
pub mod tasks;
