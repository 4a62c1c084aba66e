//! The simulation harness shared by the model tests: a seeded schedule of
//! host I/O, freezes, network faults, crashes, failover and failback over one
//! replication group, checked against an independent reference model; and
//! (`snapshots`) local snapshots copied after their mark under host I/O,
//! freeze windows and power cuts.

#![allow(dead_code)]

pub mod reference;
pub mod rng;
pub mod snapshots;
pub mod store;
pub mod world;

#[allow(unused_imports)] // not every test binary uses the schedule runner
pub use world::{Config, RunStats, World};
